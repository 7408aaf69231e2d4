// forgectl: the command-line client of the Orchestrator.
//
//   forgectl [--server HOST:PORT] [-o table|json|yaml] COMMAND [ARGS]
//
// Exit codes: 0 success; 1 the graph ended FAILED or CANCELLED (submit
// --wait, wait); 2 usage errors, unreadable graph files and RPC errors,
// reported on stderr as "forgectl: <CODE>: <message>", e.g.
//   forgectl: INVALID_ARGUMENT: tasks: cycle a -> b -> a

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/forgectl/args.h"
#include "client/forgectl/format.h"
#include "client/lib/client.h"
#include "common/graph_file.h"
#include "common/status.h"

namespace forge {
namespace forgectl {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitGraphFailed = 1;
constexpr int kExitError = 2;

constexpr char kDefaultServer[] = "127.0.0.1:7070";

enum class Output { kTable, kJson, kYaml };

// What every command gets: its parsed arguments, the output format, and a
// lazily made client.
struct Context {
  ParsedArgs args;
  Output output = Output::kTable;
  std::string server;

  absl::StatusOr<Client*> client() {
    if (client_ == nullptr) {
      ASSIGN_OR_RETURN(client_, Client::Connect(server));
    }
    return client_.get();
  }

 private:
  std::unique_ptr<Client> client_;
};

// A command's outcome: a status for errors (exit 2), else an exit code.
using CommandResult = absl::StatusOr<int>;

struct Command {
  std::string name;
  std::string synopsis;     // After "forgectl NAME".
  std::string description;  // One line, for the command list.
  std::vector<FlagSpec> flags;
  size_t min_args = 0;
  size_t max_args = 0;
  std::function<CommandResult(Context&)> run;
};

// ---------------------------------------------------------------------------
// Output helpers
// ---------------------------------------------------------------------------

void Print(const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

// The message as JSON or YAML (never called for table output).
void PrintMessage(const Context& ctx, const google::protobuf::Message& m) {
  Print(ctx.output == Output::kYaml ? ToYaml(m) : ToJson(m, /*pretty=*/true));
}

bool IsFailure(forge::v1::GraphState state) {
  return state == forge::v1::GRAPH_STATE_FAILED ||
         state == forge::v1::GRAPH_STATE_CANCELLED;
}

// "<id> SUCCEEDED succeeded=4", then one line per failed task.
std::string FinalStateLines(const forge::v1::Graph& graph) {
  std::string out = absl::StrCat(graph.id(), " ", GraphStateName(graph.state()),
                                 " ", CountsSummary(graph.counts()), "\n");
  for (const forge::v1::Task& task : graph.tasks()) {
    if (task.state() != forge::v1::FAILED) continue;
    absl::StrAppend(&out, "  ", task.spec().name(),
                    ": FAILED attempt=", task.attempt());
    if (!task.error().code().empty()) {
      absl::StrAppend(&out, " ", task.error().code());
    }
    if (!task.error().message().empty()) {
      absl::StrAppend(&out, " ", ShowBytes(task.error().message(), 100));
    }
    out += "\n";
  }
  return out;
}

absl::StatusOr<absl::Duration> ParseDurationFlag(const std::string& flag,
                                                 const std::string& text) {
  absl::Duration d;
  if (!absl::ParseDuration(text, &d) || d < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, ": expected a duration such as 30s or 5m, got \"", text,
        "\""));
  }
  return d;
}

absl::StatusOr<int64_t> ParseIntFlag(const std::string& flag,
                                     const std::string& text, int64_t min) {
  int64_t n;
  if (!absl::SimpleAtoi(text, &n) || n < min) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, ": expected an integer >= ", min, ", got \"", text, "\""));
  }
  return n;
}

// k=v flags into `labels`.
absl::Status ParseLabels(const std::vector<std::string>& values,
                         google::protobuf::Map<std::string, std::string>* out) {
  for (const std::string& kv : values) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--label: expected key=value, got \"", kv, "\""));
    }
    (*out)[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

// Waits for the graph with no deadline and prints its final state.
CommandResult WaitAndReport(Context& ctx, Client* client,
                            const std::string& graph_id,
                            absl::Duration timeout) {
  ASSIGN_OR_RETURN(forge::v1::WaitGraphResponse response,
                   client->WaitGraph(graph_id, timeout));
  if (ctx.output == Output::kTable) {
    if (response.terminal()) Print(FinalStateLines(response.graph()));
  } else {
    PrintMessage(ctx, response);
  }
  if (!response.terminal()) {
    return absl::DeadlineExceededError(
        absl::StrCat("graph ", graph_id, " is still ",
                     GraphStateName(response.graph().state()), " after ",
                     absl::FormatDuration(timeout)));
  }
  return IsFailure(response.graph().state()) ? kExitGraphFailed : kExitOk;
}

CommandResult RunSubmit(Context& ctx) {
  if (!ctx.args.Has("file")) {
    return absl::InvalidArgumentError("submit needs -f FILE");
  }
  // The file is read and checked before any RPC: a bad file never reaches
  // the server.
  ASSIGN_OR_RETURN(forge::v1::GraphSpec spec,
                   LoadGraphFile(ctx.args.Get("file")));
  ASSIGN_OR_RETURN(Client * client, ctx.client());
  ASSIGN_OR_RETURN(forge::v1::SubmitGraphResponse response,
                   client->Submit(spec, ctx.args.Get("request-id")));
  const bool wait = ctx.args.Has("wait");
  if (ctx.output == Output::kTable) {
    Print(absl::StrCat(response.graph_id(), "\n"));
  } else if (!wait) {
    PrintMessage(ctx, response);
  }
  if (!wait) return kExitOk;
  return WaitAndReport(ctx, client, response.graph_id(),
                       absl::InfiniteDuration());
}

CommandResult RunGet(Context& ctx) {
  ASSIGN_OR_RETURN(Client * client, ctx.client());
  ASSIGN_OR_RETURN(forge::v1::Graph graph,
                   client->GetGraph(ctx.args.positional()[0]));
  if (ctx.output != Output::kTable) {
    PrintMessage(ctx, graph);
  } else {
    Print(absl::StrCat(GraphHeader(graph), "\n", TaskRows(graph)));
  }
  return kExitOk;
}

CommandResult RunTasks(Context& ctx) {
  ASSIGN_OR_RETURN(Client * client, ctx.client());
  ASSIGN_OR_RETURN(forge::v1::Graph graph,
                   client->GetGraph(ctx.args.positional()[0]));
  switch (ctx.output) {
    case Output::kTable:
      Print(TaskRows(graph));
      break;
    case Output::kJson: {
      std::vector<std::string> tasks;
      for (const forge::v1::Task& task : graph.tasks()) {
        tasks.push_back(ToJson(task, /*pretty=*/false));
      }
      Print(absl::StrCat("[", absl::StrJoin(tasks, ",\n "), "]\n"));
      break;
    }
    case Output::kYaml:
      // A YAML stream: one document per task.
      for (const forge::v1::Task& task : graph.tasks()) {
        Print(absl::StrCat("---\n", ToYaml(task)));
      }
      break;
  }
  return kExitOk;
}

CommandResult RunTask(Context& ctx) {
  ASSIGN_OR_RETURN(Client * client, ctx.client());
  ASSIGN_OR_RETURN(
      forge::v1::Task task,
      client->GetTask(ctx.args.positional()[0], ctx.args.positional()[1]));
  if (ctx.output != Output::kTable) {
    PrintMessage(ctx, task);
  } else {
    Print(TaskDetails(task));
  }
  return kExitOk;
}

CommandResult RunList(Context& ctx) {
  forge::v1::ListGraphsRequest request;
  for (const std::string& value : ctx.args.GetAll("state")) {
    for (absl::string_view part : absl::StrSplit(value, ',')) {
      forge::v1::GraphState state;
      if (!ParseGraphState(std::string(part), &state)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--state: expected RUNNING, SUCCEEDED, FAILED or CANCELLED, got \"",
            part, "\""));
      }
      request.add_states(state);
    }
  }
  RETURN_IF_ERROR(
      ParseLabels(ctx.args.GetAll("label"), request.mutable_labels()));
  ASSIGN_OR_RETURN(const int64_t limit,
                   ParseIntFlag("limit", ctx.args.Get("limit", "100"), 1));
  ASSIGN_OR_RETURN(Client * client, ctx.client());
  // Page until `limit` graphs or the last page.
  forge::v1::ListGraphsResponse all;
  while (all.graphs_size() < limit) {
    request.set_page_size(static_cast<int32_t>(
        std::min<int64_t>(limit - all.graphs_size(), 1000)));
    ASSIGN_OR_RETURN(forge::v1::ListGraphsResponse page,
                     client->ListGraphs(request));
    for (forge::v1::Graph& graph : *page.mutable_graphs()) {
      if (all.graphs_size() == limit) break;
      *all.add_graphs() = std::move(graph);
    }
    all.set_next_page_token(page.next_page_token());
    if (page.next_page_token().empty() || page.graphs().empty()) break;
    request.set_page_token(page.next_page_token());
  }
  if (ctx.output != Output::kTable) {
    PrintMessage(ctx, all);
    return kExitOk;
  }
  Table table({"ID", "NAME", "STATE", "TASKS", "CREATED"});
  for (const forge::v1::Graph& graph : all.graphs()) {
    table.AddRow({graph.id(), graph.name().empty() ? "-" : graph.name(),
                  GraphStateName(graph.state()), CountsSummary(graph.counts()),
                  FormatTime(graph.created_at())});
  }
  Print(table.Render());
  return kExitOk;
}

CommandResult RunWait(Context& ctx) {
  absl::Duration timeout = absl::InfiniteDuration();
  if (ctx.args.Has("timeout")) {
    ASSIGN_OR_RETURN(timeout,
                     ParseDurationFlag("timeout", ctx.args.Get("timeout")));
  }
  ASSIGN_OR_RETURN(Client * client, ctx.client());
  return WaitAndReport(ctx, client, ctx.args.positional()[0], timeout);
}

// Runs a watch; when the server cuts the subscriber off for falling behind
// (RESOURCE_EXHAUSTED), resumes where the last delivered message left off, a
// few times at most.
absl::Status WatchResuming(
    Client* client, forge::v1::WatchRequest request,
    const std::function<bool(const forge::v1::WatchResponse&)>& on_message) {
  const bool graph = request.has_graph();
  int64_t last_seq = graph ? request.graph().after_seq() : 0;
  std::string last_token = graph ? "" : request.all().resume_token();
  const auto track = [&](const forge::v1::WatchResponse& response) {
    if (response.has_snapshot()) {
      last_seq = std::max(last_seq, response.snapshot().last_seq());
    }
    for (const forge::v1::Event& event : response.events()) {
      if (graph) last_seq = std::max(last_seq, event.seq());
    }
    if (!response.resume_token().empty()) last_token = response.resume_token();
    return on_message(response);
  };
  constexpr int kMaxResumes = 10;
  for (int resumes = 0;; ++resumes) {
    absl::Status status = client->Watch(request, track);
    if (status.code() != absl::StatusCode::kResourceExhausted ||
        resumes == kMaxResumes) {
      return status;
    }
    if (graph) {
      request.mutable_graph()->set_after_seq(last_seq);
      request.mutable_graph()->set_replay(false);
    } else {
      request.mutable_all()->set_resume_token(last_token);
    }
  }
}

CommandResult RunWatch(Context& ctx) {
  const bool all = ctx.args.Has("all");
  forge::v1::WatchRequest request;
  if (all) {
    if (!ctx.args.positional().empty()) {
      return absl::InvalidArgumentError("watch --all takes no graph id");
    }
    forge::v1::GlobalWatch* global = request.mutable_all();
    global->set_resume_token(ctx.args.Get("resume-token"));
    RETURN_IF_ERROR(
        ParseLabels(ctx.args.GetAll("label"), global->mutable_labels()));
    for (const std::string& queue : ctx.args.GetAll("queue")) {
      global->add_queues(queue);
    }
    for (const std::string& value : ctx.args.GetAll("type")) {
      for (absl::string_view part : absl::StrSplit(value, ',')) {
        forge::v1::EventType type;
        if (!forge::v1::EventType_Parse(std::string(part), &type)) {
          return absl::InvalidArgumentError(
              absl::StrCat("--type: unknown event type \"", part, "\""));
        }
        global->add_types(type);
      }
    }
  } else {
    if (ctx.args.positional().size() != 1) {
      return absl::InvalidArgumentError("watch needs a graph id (or --all)");
    }
    for (const char* flag : {"label", "queue", "type", "resume-token"}) {
      if (ctx.args.Has(flag)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", flag, " needs --all"));
      }
    }
    forge::v1::GraphWatch* graph = request.mutable_graph();
    graph->set_graph_id(ctx.args.positional()[0]);
    if (ctx.args.Has("after-seq")) {
      ASSIGN_OR_RETURN(const int64_t after,
                       ParseIntFlag("after-seq", ctx.args.Get("after-seq"), 0));
      graph->set_after_seq(after);
    }
    // The whole history, then live events.
    graph->set_replay(graph->after_seq() == 0);
  }
  ASSIGN_OR_RETURN(Client * client, ctx.client());

  const auto on_message = [&](const forge::v1::WatchResponse& response) {
    std::string out;
    if (response.has_snapshot()) {
      if (ctx.output == Output::kTable) {
        const forge::v1::Graph& g = response.snapshot();
        absl::StrAppend(&out, "snapshot graph=", g.id(),
                        " state=", GraphStateName(g.state()),
                        " last_seq=", g.last_seq(), " ",
                        CountsSummary(g.counts()), "\n");
      } else if (ctx.output == Output::kJson) {
        forge::v1::WatchResponse only_snapshot;
        *only_snapshot.mutable_snapshot() = response.snapshot();
        absl::StrAppend(&out, ToJson(only_snapshot, /*pretty=*/false), "\n");
      }
    }
    for (const forge::v1::Event& event : response.events()) {
      switch (ctx.output) {
        case Output::kTable:
          absl::StrAppend(&out, EventLine(event, all), "\n");
          break;
        case Output::kJson:  // JSON lines: one event per line.
          absl::StrAppend(&out, ToJson(event, /*pretty=*/false), "\n");
          break;
        case Output::kYaml:
          absl::StrAppend(&out, "---\n", ToYaml(event));
          break;
      }
    }
    Print(out);
    return true;
  };
  RETURN_IF_ERROR(WatchResuming(client, std::move(request), on_message));
  return kExitOk;
}

bool TaskEnded(forge::v1::EventType type) {
  return type == forge::v1::TASK_SUCCEEDED || type == forge::v1::TASK_FAILED ||
         type == forge::v1::TASK_CANCELLED || type == forge::v1::TASK_SKIPPED;
}

// The kept output of a task is the TASK_OUTPUT events of its graph's log:
// replayed from seq 1, up to the graph's last event (or, with -f, live until
// the task ends). stdout chunks go to stdout, stderr chunks to stderr.
CommandResult RunLogs(Context& ctx) {
  const std::string& graph_id = ctx.args.positional()[0];
  const std::string& task_name = ctx.args.positional()[1];
  const bool follow = ctx.args.Has("follow");
  int64_t attempt = 0;
  if (ctx.args.Has("attempt")) {
    ASSIGN_OR_RETURN(attempt, ParseIntFlag("attempt", ctx.args.Get("attempt"), 1));
  }
  ASSIGN_OR_RETURN(Client * client, ctx.client());
  // NOT_FOUND for an unknown graph or task, before anything is streamed.
  RETURN_IF_ERROR(client->GetTask(graph_id, task_name).status());
  int64_t stop_at = 0;
  if (!follow) {
    ASSIGN_OR_RETURN(forge::v1::Graph g, client->GetGraph(graph_id, forge::v1::BASIC));
    stop_at = g.last_seq();
  }
  forge::v1::WatchRequest request;
  request.mutable_graph()->set_graph_id(graph_id);
  request.mutable_graph()->set_replay(true);
  int32_t shown_attempt = 0;
  const auto on_message = [&](const forge::v1::WatchResponse& response) {
    for (const forge::v1::Event& e : response.events()) {
      if (!follow && e.seq() > stop_at) return false;
      if (e.task() != task_name) continue;
      if (e.type() == forge::v1::TASK_OUTPUT &&
          (attempt == 0 || e.attempt() == attempt)) {
        if (ctx.output == Output::kJson) {
          Print(absl::StrCat(ToJson(e, /*pretty=*/false), "\n"));
        } else {
          if (shown_attempt != 0 && e.attempt() != shown_attempt) {
            const std::string note =
                absl::StrCat("[forgectl: attempt ", e.attempt(), "]\n");
            std::fwrite(note.data(), 1, note.size(), stderr);
          }
          shown_attempt = e.attempt();
          std::FILE* to = e.stream() == forge::v1::STDERR ? stderr : stdout;
          std::fwrite(e.data().data(), 1, e.data().size(), to);
          std::fflush(to);
        }
      }
      if (follow && TaskEnded(e.type())) return false;
      if (!follow && e.seq() >= stop_at) return false;
    }
    return true;
  };
  RETURN_IF_ERROR(WatchResuming(client, std::move(request), on_message));
  return kExitOk;
}

CommandResult RunCancel(Context& ctx) {
  const std::string& graph_id = ctx.args.positional()[0];
  const std::string reason = ctx.args.Get("reason");
  ASSIGN_OR_RETURN(Client * client, ctx.client());
  if (ctx.args.Has("task")) {
    const std::string task = ctx.args.Get("task");
    ASSIGN_OR_RETURN(forge::v1::CancelTaskResponse response,
                     client->CancelTask(graph_id, task, reason));
    if (ctx.output != Output::kTable) {
      PrintMessage(ctx, response);
    } else {
      Print(absl::StrCat(graph_id, "/", task, " ",
                         TaskStateName(response.state()), "\n"));
    }
    return kExitOk;
  }
  ASSIGN_OR_RETURN(forge::v1::CancelGraphResponse response,
                   client->CancelGraph(graph_id, reason));
  if (ctx.output != Output::kTable) {
    PrintMessage(ctx, response);
  } else {
    Print(absl::StrCat(graph_id, " ", GraphStateName(response.state()), "\n"));
  }
  return kExitOk;
}

CommandResult RunQueues(Context& ctx) {
  ASSIGN_OR_RETURN(Client * client, ctx.client());
  ASSIGN_OR_RETURN(forge::v1::ListQueuesResponse response, client->ListQueues());
  if (ctx.output != Output::kTable) {
    PrintMessage(ctx, response);
    return kExitOk;
  }
  Table table({"QUEUE", "DEPTH", "RUNNING", "LIMIT", "ORDERING", "WORKERS"});
  for (const forge::v1::QueueInfo& q : response.queues()) {
    std::string ordering = q.ordering();
    if (ordering == "per_key") {
      absl::StrAppend(&ordering, " (", q.per_key_concurrency(), "/key)");
    }
    table.AddRow({q.name(), absl::StrCat(q.depth()), absl::StrCat(q.running()),
                  q.concurrency() == 0 ? "-" : absl::StrCat(q.concurrency()),
                  ordering, absl::StrCat(q.workers())});
  }
  Print(table.Render());
  return kExitOk;
}

CommandResult RunWorkers(Context& ctx) {
  ASSIGN_OR_RETURN(Client * client, ctx.client());
  ASSIGN_OR_RETURN(forge::v1::ListWorkersResponse response, client->ListWorkers());
  if (ctx.output != Output::kTable) {
    PrintMessage(ctx, response);
    return kExitOk;
  }
  Table table({"WORKER", "QUEUES", "SLOTS", "IN FLIGHT"});
  for (const forge::v1::WorkerInfo& w : response.workers()) {
    table.AddRow({w.worker_id(), absl::StrJoin(w.queues(), ","),
                  absl::StrCat(w.slots()), absl::StrCat(w.in_flight())});
  }
  Print(table.Render());
  return kExitOk;
}

CommandResult RunDot(Context& ctx) {
  ASSIGN_OR_RETURN(Client * client, ctx.client());
  ASSIGN_OR_RETURN(forge::v1::Graph graph,
                   client->GetGraph(ctx.args.positional()[0]));
  Print(GraphToDot(graph));
  return kExitOk;
}

// ---------------------------------------------------------------------------
// Command table, usage, main
// ---------------------------------------------------------------------------

const std::vector<FlagSpec>& GlobalFlags() {
  static const auto* const kFlags = new std::vector<FlagSpec>{
      {"server", "s", true, "HOST:PORT",
       absl::StrCat("Orchestrator address (default $FORGE_SERVER or ",
                    kDefaultServer, ")")},
      {"output", "o", true, "FORMAT", "table, json or yaml (default table)"},
      {"help", "h", false, "", "show help"},
  };
  return *kFlags;
}

const std::vector<Command>& Commands() {
  static const auto* const kCommands = new std::vector<Command>{
      {"submit",
       "-f FILE [--wait] [--request-id ID]",
       "submit a graph file (YAML or JSON); print its id",
       {{"file", "f", true, "FILE",
         "graph file: .yaml/.yml, .json, else by content; - = stdin"},
        {"wait", "", false, "",
         "wait until the graph ends and print its final state (-o json/yaml: "
         "the WaitGraphResponse); exit 1 if it FAILED or was CANCELLED"},
        {"request-id", "", true, "ID",
         "idempotency key: a retry with the same id returns the same graph"}},
       0,
       0,
       RunSubmit},
      {"get", "ID", "show a graph and its tasks", {}, 1, 1, RunGet},
      {"tasks", "ID", "list a graph's tasks", {}, 1, 1, RunTasks},
      {"task", "ID NAME", "show one task with its attempts", {}, 2, 2, RunTask},
      {"list",
       "[--state S] [--label k=v] [--limit N]",
       "list graphs, newest first",
       {{"state", "", true, "STATE",
         "RUNNING, SUCCEEDED, FAILED or CANCELLED (repeatable, or "
         "comma-separated)"},
        {"label", "l", true, "KEY=VALUE",
         "only graphs with this label (repeatable)"},
        {"limit", "", true, "N", "at most N graphs (default 100)"}},
       0,
       0,
       RunList},
      {"wait",
       "ID [--timeout 30s]",
       "wait until a graph ends; exit 1 if it FAILED or was CANCELLED",
       {{"timeout", "", true, "DURATION",
         "give up after this long (DEADLINE_EXCEEDED, exit 2); default: "
         "wait for ever"}},
       1,
       1,
       RunWait},
      {"watch",
       "ID [--after-seq N] | --all [filters]",
       "stream a graph's events (from seq 1) until it ends, or every graph's",
       {{"after-seq", "", true, "N",
         "resume after this sequence number instead of replaying from 1"},
        {"all", "", false, "", "watch every graph (runs until interrupted)"},
        {"label", "l", true, "KEY=VALUE",
         "--all: only graphs with this label (repeatable)"},
        {"queue", "q", true, "QUEUE",
         "--all: only task events of this queue (repeatable)"},
        {"type", "t", true, "TYPE",
         "--all: only these event types, e.g. TASK_FAILED (repeatable)"},
        {"resume-token", "", true, "TOKEN",
         "--all: continue after a previous watch's token"}},
       0,
       1,
       RunWatch},
      {"logs",
       "ID TASK [-f] [--attempt N]",
       "print a task's output (stdout to stdout, stderr to stderr); -f follows "
       "it live until the task ends",
       {{"follow", "f", false, "", "keep streaming until the task ends"},
        {"attempt", "", true, "N", "only this attempt's output"}},
       2,
       2,
       RunLogs},
      {"cancel",
       "ID [--task NAME] [--reason R]",
       "cancel a graph, or one task of it",
       {{"task", "", true, "NAME", "cancel only this task"},
        {"reason", "", true, "TEXT", "recorded in the cancel events"}},
       1,
       1,
       RunCancel},
      {"queues", "", "show each queue's depth, running tasks, limits and mode",
       {}, 0, 0, RunQueues},
      {"workers", "", "show connected workers, their queues, slots and tasks",
       {}, 0, 0, RunWorkers},
      {"dot",
       "ID",
       "print the graph as Graphviz (forgectl dot ID | dot -Tsvg)",
       {},
       1,
       1,
       RunDot},
  };
  return *kCommands;
}

std::string MainUsage() {
  std::string out =
      "forgectl: command-line client of the Forge orchestrator.\n\n"
      "Usage: forgectl [global flags] COMMAND [ARGS] [flags]\n\nCommands:\n";
  Table table;
  for (const Command& c : Commands()) {
    table.AddRow({absl::StrCat("  ", c.name), c.description});
  }
  absl::StrAppend(&out, table.Render(), "\nGlobal flags:\n",
                  FlagsUsage(GlobalFlags()),
                  "\nRun 'forgectl COMMAND --help' for a command's flags.\n"
                  "Exit codes: 0 ok; 1 graph FAILED or CANCELLED (submit "
                  "--wait, wait); 2 usage or RPC error.\n");
  return out;
}

std::string CommandUsage(const Command& c) {
  std::string out = absl::StrCat("Usage: forgectl ", c.name, " ", c.synopsis,
                                 "\n\n", c.description, "\n");
  if (!c.flags.empty()) {
    absl::StrAppend(&out, "\nFlags:\n", FlagsUsage(c.flags));
  }
  absl::StrAppend(&out, "\nGlobal flags:\n", FlagsUsage(GlobalFlags()));
  return out;
}

void PrintError(const absl::Status& status) {
  const std::string line =
      absl::StrCat("forgectl: ", absl::StatusCodeToString(status.code()), ": ",
                   status.message(), "\n");
  std::fwrite(line.data(), 1, line.size(), stderr);
}

int UsageError(const std::string& message, const Command* command) {
  PrintError(absl::InvalidArgumentError(message));
  const std::string hint = command == nullptr
                               ? "Run 'forgectl --help' for usage.\n"
                               : absl::StrCat("Run 'forgectl ", command->name,
                                              " --help' for usage.\n");
  std::fwrite(hint.data(), 1, hint.size(), stderr);
  return kExitError;
}

int Main(const std::vector<std::string>& args) {
  // Find the command: the first argument that is neither a global flag nor
  // a global flag's value.
  const Command* command = nullptr;
  size_t command_index = 0;
  for (size_t i = 0; i < args.size() && command == nullptr; ++i) {
    const std::string& arg = args[i];
    if (arg == "--") break;
    if (arg == "-s" || arg == "--server" || arg == "-o" || arg == "--output") {
      ++i;  // Skip the value.
      continue;
    }
    if (absl::StartsWith(arg, "-") && arg.size() > 1) continue;
    for (const Command& c : Commands()) {
      if (c.name == arg) {
        command = &c;
        command_index = i;
      }
    }
    if (command == nullptr) {
      if (arg == "help") {
        Print(MainUsage());
        return kExitOk;
      }
      return UsageError(absl::StrCat("unknown command \"", arg, "\""), nullptr);
    }
  }

  std::vector<FlagSpec> specs = GlobalFlags();
  std::vector<std::string> rest = args;
  if (command != nullptr) {
    specs.insert(specs.end(), command->flags.begin(), command->flags.end());
    rest.erase(rest.begin() + command_index);
  }
  absl::StatusOr<ParsedArgs> parsed = ParseArgs(rest, specs);
  if (!parsed.ok()) {
    return UsageError(std::string(parsed.status().message()), command);
  }
  if (parsed->Has("help")) {
    Print(command == nullptr ? MainUsage() : CommandUsage(*command));
    return kExitOk;
  }
  if (command == nullptr) {
    return UsageError("no command given", nullptr);
  }
  const std::vector<std::string>& positional = parsed->positional();
  if (positional.size() < command->min_args) {
    return UsageError(absl::StrCat(command->name, ": missing arguments (",
                                   command->name, " ", command->synopsis, ")"),
                      command);
  }
  if (positional.size() > command->max_args) {
    return UsageError(absl::StrCat(command->name, ": unexpected argument \"",
                                   positional[command->max_args], "\""),
                      command);
  }

  Context ctx;
  ctx.args = std::move(*parsed);
  const std::string output = ctx.args.Get("output", "table");
  if (output == "table") {
    ctx.output = Output::kTable;
  } else if (output == "json") {
    ctx.output = Output::kJson;
  } else if (output == "yaml") {
    ctx.output = Output::kYaml;
  } else {
    return UsageError(
        absl::StrCat("-o: expected table, json or yaml, got \"", output, "\""),
        command);
  }
  const char* env_server = std::getenv("FORGE_SERVER");
  ctx.server =
      ctx.args.Get("server", env_server != nullptr && env_server[0] != '\0'
                                 ? env_server
                                 : kDefaultServer);

  CommandResult result = command->run(ctx);
  if (!result.ok()) {
    PrintError(result.status());
    return kExitError;
  }
  return *result;
}

}  // namespace
}  // namespace forgectl
}  // namespace forge

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return forge::forgectl::Main(args);
}
