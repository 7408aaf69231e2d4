// The command runner end to end: profiles from the YAML config, real
// processes (the fake CLIs in fake_cli/), results, retries, timeouts,
// cancels and shutdown through the real gRPC API on loopback.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/graph_file.h"
#include "server/server_config.h"
#include "common/trace_context.h"
#include "tests/integration/fixture.h"

namespace forge::testing {
namespace {

namespace fs = std::filesystem;

std::string Script(const std::string& name) {
  return absl::StrCat(FORGE_FAKE_CLI_DIR, "/", name);
}

// Alive and not a zombie (an orphan re-parented to a PID 1 that does not
// reap stays a zombie, which is dead for our purpose).
bool Alive(pid_t pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  if (!stat) return false;
  std::string line;
  std::getline(stat, line);
  const size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() &&
         line[paren + 2] != 'Z';
}

// SIGKILL is delivered asynchronously: a killed process may still show for a
// moment. Waits (test side) up to 5 s for `pid` to be gone.
bool Dies(pid_t pid) {
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (Alive(pid) && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(2));
  return !Alive(pid);
}

std::vector<pid_t> ReadPids(const std::string& path) {
  std::ifstream in(path);
  std::vector<pid_t> pids;
  pid_t p;
  while (in >> p) pids.push_back(p);
  return pids;
}

class RunnerTest : public ForgeTest {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "projects");
    ForgeTest::SetUp();
  }

  void Configure(ServerOptions& o) override {
    const std::string config = absl::StrCat(R"(
queues:
  agents: {concurrency: 5, ordering: per_key}
runner:
  work_root: )", (dir_ / "runs").string(), R"(
  kill_grace: 300ms
profiles:
  agent:
    queues: [agents]
    command: [/bin/sh, )", Script("fake_agent.sh"), R"(, "{secs}", "{code}"]
    env_allow: [PATH]
    slots: 5
  cat:
    command: [cat]
    env_allow: [PATH]
    output_cap: 2097152
  failing:
    command: [/bin/sh, )", Script("fail_until.sh"), R"(, "{n}"]
    env_allow: [PATH]
  hang:
    command: [/bin/sh, )", Script("hang.sh"), R"(, "{pidfile}.{attempt}"]
    env_allow: [PATH]
  leave:
    command: [/bin/sh, )", Script("leave_child.sh"), R"(, "{pidfile}"]
    env_allow: [PATH]
  flood:
    command: [/bin/sh, )", Script("flood.sh"), R"(, "{bytes}"]
    env_allow: [PATH]
    output_cap: 65536
  env:
    command: [/usr/bin/env]
    env: {FIXED: one}
    task_env: true
  nocmd:
    command: [no-such-forge-command-xyz]
  ptimeout:
    command: [/bin/sh, )", Script("hang.sh"), R"(, "{pidfile}.{attempt}"]
    env_allow: [PATH]
    timeout: 400ms
  upstream:
    command: [/bin/sh, -c, 'cat; echo; ls "$FORGE_UPSTREAM_DIR"; cat "$FORGE_UPSTREAM_DIR/a"']
    stdin: input_with_upstream
    env_allow: [PATH]
  dir:
    command: [/bin/pwd]
    workdir: "{project}"
    root: )", (dir_ / "projects").string(), R"(
)");
    absl::Status s = ParseServerConfig(config, &o);
    ASSERT_TRUE(s.ok()) << s;
  }

  // One-task graph on `queue` (the profile of the same name serves it).
  v1::GraphSpec One(const std::string& queue,
                    std::map<std::string, std::string> params = {},
                    int max_attempts = 1) {
    v1::GraphSpec g;
    v1::TaskSpec* t = AddTask(g, "t", {}, queue);
    for (auto& [k, v] : params) (*t->mutable_params())[k] = v;
    t->mutable_retry()->set_max_attempts(max_attempts);
    t->mutable_retry()->mutable_initial_backoff()->set_nanos(50'000'000);
    return g;
  }

  // Reads the graph's events (replayed from seq 1) until `pred` holds.
  void WaitForEvent(const std::string& graph_id,
                    const std::function<bool(const v1::Event&)>& pred) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    v1::WatchRequest req;
    req.mutable_graph()->set_graph_id(graph_id);
    req.mutable_graph()->set_replay(true);
    auto reader = stub().Watch(&ctx, req);
    v1::WatchResponse msg;
    while (reader->Read(&msg)) {
      for (const v1::Event& e : msg.events()) {
        if (pred(e)) {
          ctx.TryCancel();
          reader->Finish().IgnoreError();
          return;
        }
      }
    }
    ADD_FAILURE() << "event not seen: " << reader->Finish().error_message();
  }

  // Every runner process has been reaped and its result reported
  // (test-side wait).
  void WaitNoProcesses() {
    auto done = [this] {
      const exec::RunnerStats st = server().runner()->stats();
      return st.running == 0 && st.finished == st.started;
    };
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (!done() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
    EXPECT_TRUE(done());
  }

  std::string Output(const std::vector<v1::Event>& events, v1::OutputStream s) {
    std::string out;
    for (const v1::Event& e : events) {
      if (e.type() == v1::TASK_OUTPUT && e.stream() == s) out += e.data();
    }
    return out;
  }

  ScopedTempDir tmp_{"forge-runner-test"};
  const fs::path dir_ = tmp_.path();
};

TEST_F(RunnerTest, InputGoesToStdinAndStdoutIsTheOutputPublishedLive) {
  v1::GraphSpec g = One("cat");
  g.mutable_tasks(0)->set_input("a prompt that never touches argv\n");
  const std::string id = Submit(g);
  const v1::Graph done = WaitTerminal(id);
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  const v1::Task& t = TaskOf(done, "t");
  EXPECT_EQ(t.output(), "a prompt that never touches argv\n");
  EXPECT_EQ(t.attempts(0).worker_id(), "runner:cat");
  EXPECT_EQ(Output(Replay(id), v1::STDOUT), "a prompt that never touches argv\n");
}

TEST_F(RunnerTest, UpstreamOutputsFollowTheInputOnStdinAndAreFiles) {
  v1::GraphSpec g;
  AddTask(g, "a", {}, "cat")->set_input("from a\n");
  v1::TaskSpec* b = AddTask(g, "b", {"a"}, "upstream");
  b->set_input("prompt b");
  const v1::Graph done = WaitTerminal(Submit(g));
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(TaskOf(done, "b").output(),
            "prompt b\n\n--- upstream: a ---\nfrom a\n"  // stdin
            "\n"                                          // echo
            "a\n"                                         // ls
            "from a\n");                                  // the file
}

TEST_F(RunnerTest, LargeInputIsWrittenWithoutBlockingTheLoop) {
  std::string input(512 << 10, 'p');
  for (size_t i = 0; i < input.size(); i += 1000) input[i] = '\n';
  v1::GraphSpec g = One("cat");
  g.mutable_tasks(0)->set_input(input);
  // A second task runs alongside: one loop serves both.
  v1::TaskSpec* other = AddTask(g, "other", {}, "cat");
  other->set_input("small\n");
  const v1::Graph done = WaitTerminal(Submit(g));
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(TaskOf(done, "t").output(), input);
  EXPECT_EQ(TaskOf(done, "other").output(), "small\n");
}

TEST_F(RunnerTest, NonZeroExitFailsWithTheExitCodeAndTheOutputTail) {
  const v1::Graph done =
      WaitTerminal(Submit(One("agents", {{"secs", "0"}, {"code", "7"}})));
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_FAILED);
  const v1::Task& t = TaskOf(done, "t");
  EXPECT_EQ(t.state(), v1::FAILED);
  EXPECT_EQ(t.exit_code(), 7);
  EXPECT_EQ(t.error().code(), "EXIT_CODE");
  EXPECT_TRUE(absl::StrContains(t.error().message(), "exited with code 7"))
      << t.error().message();
  EXPECT_TRUE(absl::StrContains(t.error().message(), "worked in"))
      << t.error().message();
}

TEST_F(RunnerTest, FailuresAreRetriedPerPolicyUntilSuccess) {
  const std::string id = Submit(One("failing", {{"n", "3"}}, /*max_attempts=*/3));
  const v1::Graph done = WaitTerminal(id);
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  const v1::Task& t = TaskOf(done, "t");
  EXPECT_EQ(t.attempt(), 3);
  EXPECT_EQ(t.output(), "ok on attempt 3\n");
  ASSERT_EQ(t.attempts_size(), 3);
  EXPECT_EQ(t.attempts(0).exit_code(), 3);
  EXPECT_EQ(t.attempts(0).error().code(), "EXIT_CODE");
  int retries = 0;
  for (const v1::Event& e : Replay(id)) retries += e.type() == v1::TASK_RETRY_SCHEDULED;
  EXPECT_EQ(retries, 2);
}

TEST_F(RunnerTest, HungCliIsKilledWithItsChildrenAtItsTimeoutAndRetried) {
  const std::string pidfile = (dir_ / "hang").string();
  v1::GraphSpec g = One("hang", {{"pidfile", pidfile}}, /*max_attempts=*/2);
  g.mutable_tasks(0)->mutable_timeouts()->mutable_run()->set_nanos(400'000'000);
  const std::string id = Submit(g);
  const v1::Graph done = WaitTerminal(id);
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_FAILED);
  const v1::Task& t = TaskOf(done, "t");
  ASSERT_EQ(t.attempts_size(), 2);
  EXPECT_EQ(t.attempts(0).error().code(), "TIMEOUT");
  EXPECT_EQ(t.attempts(1).error().code(), "TIMEOUT");
  WaitNoProcesses();
  // The shell ignores SIGTERM: both groups needed the SIGKILL.
  EXPECT_GE(server().runner()->stats().killed, 2);
  for (int attempt : {1, 2}) {
    const std::vector<pid_t> pids = ReadPids(absl::StrCat(pidfile, ".", attempt));
    ASSERT_EQ(pids.size(), 2u) << "attempt " << attempt;
    for (pid_t p : pids) EXPECT_TRUE(Dies(p)) << "pid " << p << " survived";
  }
  // The killed attempts' late results were refused: one result per attempt.
  EXPECT_GE(server().engine().counters().stale_results, 2);
}

TEST_F(RunnerTest, CancelKillsTheWholeProcessGroup) {
  const std::string pidfile = (dir_ / "cancel").string();
  const std::string id = Submit(One("hang", {{"pidfile", pidfile}}));
  WaitForEvent(id, [](const v1::Event& e) {
    return e.type() == v1::TASK_OUTPUT && absl::StrContains(e.data(), "hanging");
  });
  grpc::ClientContext ctx;
  v1::CancelTaskRequest req;
  req.set_graph_id(id);
  req.set_task("t");
  v1::CancelTaskResponse resp;
  ASSERT_TRUE(stub().CancelTask(&ctx, req, &resp).ok());
  EXPECT_EQ(WaitTerminal(id).state(), v1::GRAPH_STATE_CANCELLED);
  WaitNoProcesses();
  const std::vector<pid_t> pids = ReadPids(pidfile + ".1");
  ASSERT_EQ(pids.size(), 2u);
  for (pid_t p : pids) EXPECT_TRUE(Dies(p)) << "pid " << p << " survived";
}

TEST_F(RunnerTest, ChildrenLeftBehindByASuccessfulRunAreKilled) {
  const std::string pidfile = (dir_ / "leave").string();
  const v1::Graph done = WaitTerminal(Submit(One("leave", {{"pidfile", pidfile}})));
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(TaskOf(done, "t").output(), "left a child\n");
  WaitNoProcesses();
  const std::vector<pid_t> pids = ReadPids(pidfile);
  ASSERT_EQ(pids.size(), 1u);
  EXPECT_TRUE(Dies(pids[0]));
}

TEST_F(RunnerTest, OutputPastTheCapIsDroppedAndTheTruncationMarked) {
  const std::string id = Submit(One("flood", {{"bytes", "3000000"}}));
  const v1::Graph done = WaitTerminal(id);
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  const std::string& out = TaskOf(done, "t").output();
  const std::string marker = "\n[forge: stdout truncated after 65536 bytes]\n";
  ASSERT_EQ(out.size(), 65536 + marker.size());
  EXPECT_EQ(out.substr(0, 65536), std::string(65536, 'x'));
  EXPECT_EQ(out.substr(65536), marker);
  const std::vector<v1::Event> events = Replay(id);
  EXPECT_EQ(Output(events, v1::STDOUT), out);  // the live chunks are the kept output
  EXPECT_EQ(Output(events, v1::STDERR), "flood done\n");
  for (const v1::Event& e : events) EXPECT_LE(e.data().size(), 16u << 10);
}

TEST_F(RunnerTest, EnvironmentIsTheAllowlistTheProfileAndTheTaskOnly) {
  ::setenv("FORGE_TEST_SECRET", "must-not-leak", 1);
  v1::GraphSpec g = One("env");
  (*g.mutable_tasks(0)->mutable_env())["MY_VAR"] = "from the task";
  const v1::Graph done = WaitTerminal(Submit(g));
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  std::map<std::string, std::string> env;
  for (absl::string_view line : absl::StrSplit(TaskOf(done, "t").output(), '\n')) {
    if (line.empty()) continue;
    std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    env.insert(kv);
  }
  EXPECT_EQ(env["FIXED"], "one");
  EXPECT_EQ(env["MY_VAR"], "from the task");
  EXPECT_EQ(env["FORGE_GRAPH_ID"], done.id());
  EXPECT_EQ(env["FORGE_TASK"], "t");
  EXPECT_EQ(env["FORGE_ATTEMPT"], "1");
  EXPECT_EQ(env.count("FORGE_TEST_SECRET"), 0u);
  EXPECT_EQ(env.count("HOME"), 0u);
  EXPECT_EQ(env.count("PATH"), 0u);  // not in this profile's allowlist
  // The attempt's trace context, so a CLI that speaks W3C joins the trace.
  EXPECT_EQ(env["TRACEPARENT"],
            FormatTraceparent({GraphTraceId(done.id()), AttemptSpanId(done.id(), 0, 1), true}));
  EXPECT_EQ(env.size(), 7u) << TaskOf(done, "t").output();  // + FORGE_WORKDIR
  // The fresh working directory was removed after the run.
  EXPECT_TRUE(absl::StartsWith(env["FORGE_WORKDIR"], (dir_ / "runs").string()));
  EXPECT_FALSE(fs::exists(env["FORGE_WORKDIR"]));
}

TEST_F(RunnerTest, WorkdirTemplateResolvesInsideTheRoot) {
  const v1::Graph done = WaitTerminal(Submit(One("dir", {{"project", "repo/sub"}})));
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(TaskOf(done, "t").output(),
            (dir_ / "projects" / "repo" / "sub").string() + "\n");
}

TEST_F(RunnerTest, SymlinkOutOfTheRootIsRefused) {
  fs::create_directory_symlink("/tmp", dir_ / "projects" / "escape");
  const v1::Graph done =
      WaitTerminal(Submit(One("dir", {{"project", "escape/x"}}, /*max_attempts=*/3)));
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_FAILED);
  const v1::Task& t = TaskOf(done, "t");
  EXPECT_EQ(t.error().code(), "WORKDIR");
  EXPECT_EQ(t.attempt(), 1);  // not retryable
}

TEST_F(RunnerTest, BadTasksAreRefusedAtSubmitWithTheFieldAndNothingIsCreated) {
  struct Case {
    v1::GraphSpec spec;
    std::string message;
  };
  std::vector<Case> cases;
  cases.push_back({One("agents", {{"secs", "1"}}),
                   "graph.tasks[0].params: profile \"agent\" needs param \"code\""});
  cases.push_back({One("dir", {{"project", "../outside"}}),
                   "graph.tasks[0].params: profile \"dir\": workdir \"../outside\" "
                   "is not inside the root"});
  cases.push_back({One("dir", {{"project", "/etc"}}), "is not inside the root"});
  v1::GraphSpec env_not_allowed = One("cat");
  (*env_not_allowed.mutable_tasks(0)->mutable_env())["X"] = "1";
  cases.push_back({env_not_allowed,
                   "graph.tasks[0].env: profile \"cat\" does not take task "
                   "environment variables"});
  v1::GraphSpec preload = One("env");
  (*preload.mutable_tasks(0)->mutable_env())["LD_PRELOAD"] = "/tmp/x.so";
  cases.push_back({preload, "graph.tasks[0].env: \"LD_PRELOAD\" is not a name"});
  for (const Case& c : cases) {
    v1::SubmitGraphResponse resp;
    grpc::Status s = TrySubmit(c.spec, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.message;
    EXPECT_TRUE(absl::StrContains(s.error_message(), c.message)) << s.error_message();
  }
  EXPECT_EQ(GraphCount(), 0);
}

TEST_F(RunnerTest, MissingProgramFailsAtOnceWithoutRetrying) {
  const v1::Graph done = WaitTerminal(Submit(One("nocmd", {}, /*max_attempts=*/3)));
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_FAILED);
  const v1::Task& t = TaskOf(done, "t");
  EXPECT_EQ(t.attempt(), 1);
  EXPECT_EQ(t.error().code(), "COMMAND_NOT_FOUND");
  EXPECT_EQ(t.exit_code(), 127);
  EXPECT_EQ(server().runner()->stats().spawn_failures, 1);
}

TEST_F(RunnerTest, ProfileTimeoutFailsTheAttemptWithTimeout) {
  const std::string pidfile = (dir_ / "ptimeout").string();
  const v1::Graph done = WaitTerminal(Submit(One("ptimeout", {{"pidfile", pidfile}})));
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_FAILED);
  const v1::Task& t = TaskOf(done, "t");
  EXPECT_EQ(t.error().code(), "TIMEOUT");
  EXPECT_TRUE(absl::StrContains(t.error().message(), "profile ptimeout timeout"))
      << t.error().message();
  WaitNoProcesses();
  for (pid_t p : ReadPids(pidfile + ".1")) EXPECT_TRUE(Dies(p));
}

// The seed watcher's scenario, shortened: tasks of 3 agents in a per_key
// queue with 5 slots run one at a time per agent, in submission order, with
// the agents in parallel.
TEST_F(RunnerTest, AgentsRunInParallelEachInSubmissionOrder) {
  v1::GraphSpec g;
  std::map<std::string, std::vector<std::string>> submitted;
  const std::vector<std::string> agents = {"claude", "gemini", "cursor"};
  for (int i = 0; i < 15; ++i) {
    const std::string& agent = agents[i % 3];
    const std::string name = absl::StrCat(agent, "-", i);
    v1::TaskSpec* t = AddTask(g, name, {}, "agents");
    t->set_ordering_key(agent);
    t->set_input(absl::StrCat("prompt ", i));
    (*t->mutable_params())["secs"] = "0.2";
    (*t->mutable_params())["code"] = "0";
    submitted[agent].push_back(name);
  }
  const absl::Time start = absl::Now();
  const std::string id = Submit(g);
  const v1::Graph done = WaitTerminal(id);
  const absl::Duration took = absl::Now() - start;
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  std::map<std::string, std::string> key_of;
  for (const auto& [agent, names] : submitted) {
    for (const std::string& n : names) key_of[n] = agent;
  }
  std::map<std::string, std::vector<std::string>> started;
  std::map<std::string, int> running;
  int parallel = 0, peak = 0;
  for (const v1::Event& e : Replay(id)) {
    const std::string& key = key_of[e.task()];
    if (e.type() == v1::TASK_STARTED) {
      started[key].push_back(e.task());
      EXPECT_EQ(++running[key], 1) << "two tasks of " << key << " at once";
      peak = std::max(peak, ++parallel);
    } else if (e.type() == v1::TASK_SUCCEEDED) {
      --running[key];
      --parallel;
    }
  }
  EXPECT_EQ(started, submitted);
  EXPECT_EQ(peak, 3);  // the three agents ran side by side
  for (const v1::Task& t : done.tasks()) {
    EXPECT_TRUE(absl::StartsWith(t.output(), absl::StrCat("agent ", t.spec().name())))
        << t.output();
  }
  std::cerr << "15 tasks of 0.2 s on 3 agents took " << took << "\n";
}

TEST_F(RunnerTest, ShutdownKillsRunningProcessesAndReportsThem) {
  const std::string pidfile = (dir_ / "shutdown").string();
  const std::string id = Submit(One("hang", {{"pidfile", pidfile}}));
  WaitForEvent(id, [](const v1::Event& e) {
    return e.type() == v1::TASK_OUTPUT && absl::StrContains(e.data(), "hanging");
  });
  server().Shutdown(absl::Milliseconds(100));
  EXPECT_EQ(server().runner()->stats().running, 0);
  const std::vector<pid_t> pids = ReadPids(pidfile + ".1");
  ASSERT_EQ(pids.size(), 2u);
  for (pid_t p : pids) EXPECT_TRUE(Dies(p)) << "pid " << p << " survived";
}

TEST(RunnerConfigTest, ErrorsNameTheKeyAndLine) {
  struct Case {
    const char* yaml;
    const char* message;
  };
  const Case cases[] = {
      {"profiles:\n  p:\n    queues: [q]\n", "profiles.p.command: required"},
      {"profiles:\n  p:\n    command: [x]\n    bogus: 1\n",
       "profiles.p.bogus (line 4): unknown key"},
      {"profiles:\n  p:\n    command: [x]\n    timeout: soon\n",
       "profiles.p.timeout (line 4): \"soon\" is not a duration"},
      {"profiles:\n  a:\n    queues: [q]\n    command: [x]\n  b:\n    queues: [q]\n"
       "    command: [y]\n",
       "queue \"q\" is already served by profile \"a\""},
      {"profiles:\n  p:\n    command: [\"{unclosed\"]\n", "must open {name}"},
      {"profiles:\n  p:\n    command: [a, b]\n    shell: true\n",
       "a shell profile takes exactly one element"},
      {"profiles:\n  p:\n    command: [x]\n    workdir: \"{w}\"\n",
       "profiles.p.root: an absolute directory is required"},
      {"profiles:\n  p:\n    command: [x]\n    slots: 0\n", "profiles.p.slots: 0"},
      {"profiles:\n  p:\n    command: [x]\n    stdin: file\n", "is not input, input_with_upstream or none"},
      {"runner:\n  kill_grace: -1s\n", "runner.kill_grace"},
  };
  for (const Case& c : cases) {
    ServerOptions o;
    absl::Status s = ParseServerConfig(c.yaml, &o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.yaml;
    EXPECT_TRUE(absl::StrContains(s.message(), c.message))
        << c.yaml << " -> " << s.message();
  }
}

// The shipped example profiles load, and the example agent pipeline passes
// their submit-time checks.
TEST(RunnerConfigTest, ExampleAgentProfilesAndPipelineAgree) {
  ServerOptions o;
  absl::Status s =
      LoadServerConfig(absl::StrCat(FORGE_SOURCE_DIR, "/deploy/runner/agents.yaml"), &o);
  ASSERT_TRUE(s.ok()) << s;
  std::map<std::string, const exec::CommandProfile*> by_queue;
  for (const exec::CommandProfile& p : o.runner.profiles) {
    for (const std::string& q : p.queues) by_queue[q] = &p;
  }
  EXPECT_EQ(by_queue.count("claude"), 1u);
  EXPECT_EQ(by_queue.count("gemini"), 1u);
  EXPECT_EQ(by_queue.count("cursor"), 1u);
  EXPECT_EQ(by_queue.count("shell"), 0u);  // off unless uncommented
  absl::StatusOr<v1::GraphSpec> g =
      LoadGraphFile(absl::StrCat(FORGE_SOURCE_DIR, "/client/examples/agents.yaml"));
  ASSERT_TRUE(g.ok()) << g.status();
  for (int i = 0; i < g->tasks_size(); ++i) {
    const v1::TaskSpec& t = g->tasks(i);
    ASSERT_EQ(by_queue.count(t.queue()), 1u) << t.queue();
    EXPECT_TRUE(exec::ValidateTask(*by_queue[t.queue()], t, "t").ok()) << t.name();
  }
}

TEST(RunnerConfigTest, AProfileWithoutQueuesServesTheQueueOfItsName) {
  ServerOptions o;
  ASSERT_TRUE(ParseServerConfig("profiles:\n  claude:\n    command: [claude, --print]\n", &o).ok());
  ASSERT_EQ(o.runner.profiles.size(), 1u);
  EXPECT_EQ(o.runner.profiles[0].queues, std::vector<std::string>{"claude"});
  EXPECT_EQ(o.runner.profiles[0].command,
            (std::vector<std::string>{"claude", "--print"}));
}

}  // namespace
}  // namespace forge::testing
