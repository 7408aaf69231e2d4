#include "client/forgectl/format.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "common/proto_time.h"

namespace forge {
namespace forgectl {

std::string Table::Render() const {
  std::vector<size_t> widths;
  auto measure = [&widths](const std::vector<std::string>& row) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  };
  measure(header_);
  for (const auto& row : rows_) measure(row);
  std::string out;
  auto render = [&out, &widths](const std::vector<std::string>& row) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) {
        line.append(widths[i] - row[i].size() + 2, ' ');
      }
    }
    absl::StrAppend(&out, absl::StripTrailingAsciiWhitespace(line), "\n");
  };
  if (!header_.empty()) render(header_);
  for (const auto& row : rows_) render(row);
  return out;
}

std::string GraphStateName(forge::v1::GraphState state) {
  if (state == forge::v1::GRAPH_STATE_UNSPECIFIED) return "-";
  std::string name = forge::v1::GraphState_Name(state);
  if (name.empty()) return absl::StrCat(static_cast<int>(state));
  return std::string(absl::StripPrefix(name, "GRAPH_STATE_"));
}

std::string TaskStateName(forge::v1::TaskState state) {
  if (state == forge::v1::TASK_STATE_UNSPECIFIED) return "-";
  std::string name = forge::v1::TaskState_Name(state);
  return name.empty() ? absl::StrCat(static_cast<int>(state)) : name;
}

bool ParseGraphState(const std::string& text, forge::v1::GraphState* state) {
  std::string upper = absl::AsciiStrToUpper(text);
  if (!absl::StartsWith(upper, "GRAPH_STATE_")) {
    upper = absl::StrCat("GRAPH_STATE_", upper);
  }
  return forge::v1::GraphState_Parse(upper, state) &&
         *state != forge::v1::GRAPH_STATE_UNSPECIFIED;
}

std::string FormatTime(const google::protobuf::Timestamp& ts) {
  if (ts.seconds() == 0 && ts.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", FromProto(ts),
                          absl::UTCTimeZone());
}

std::string CountsSummary(const forge::v1::TaskCounts& c) {
  std::vector<std::string> parts;
  const std::pair<const char*, int> counts[] = {
      {"pending", c.pending()}, {"ready", c.ready()},
      {"running", c.running()}, {"succeeded", c.succeeded()},
      {"failed", c.failed()},   {"cancelled", c.cancelled()},
      {"skipped", c.skipped()}};
  for (const auto& [name, n] : counts) {
    if (n != 0) parts.push_back(absl::StrCat(name, "=", n));
  }
  return parts.empty() ? "-" : absl::StrJoin(parts, " ");
}

std::string LabelsSummary(
    const google::protobuf::Map<std::string, std::string>& labels) {
  std::vector<std::pair<std::string, std::string>> sorted(labels.begin(),
                                                          labels.end());
  std::sort(sorted.begin(), sorted.end());
  if (sorted.empty()) return "-";
  return absl::StrJoin(sorted, ",", absl::PairFormatter("="));
}

std::string ShowBytes(const std::string& bytes, size_t max) {
  const bool text = std::all_of(bytes.begin(), bytes.end(), [](char ch) {
    const unsigned char c = ch;
    return c >= 0x20 || c == '\n' || c == '\t' || c == '\r';
  });
  if (!text) return absl::StrCat("<", bytes.size(), " bytes>");
  std::string shown = absl::Utf8SafeCEscape(bytes);
  if (shown.size() > max) {
    shown.resize(max);
    shown += "...";
  }
  return absl::StrCat("\"", shown, "\"");
}

std::string GraphHeader(const forge::v1::Graph& graph) {
  Table table;
  table.AddRow({"GRAPH", graph.id()});
  table.AddRow({"NAME", graph.name().empty() ? "-" : graph.name()});
  std::string state = GraphStateName(graph.state());
  if (graph.cancel_requested() &&
      graph.state() == forge::v1::GRAPH_STATE_RUNNING) {
    state += " (cancel requested)";
  }
  table.AddRow({"STATE", state});
  table.AddRow({"TASKS", CountsSummary(graph.counts())});
  table.AddRow({"CREATED", FormatTime(graph.created_at())});
  table.AddRow({"FINISHED", FormatTime(graph.finished_at())});
  table.AddRow({"LABELS", LabelsSummary(graph.labels())});
  if (!graph.request_id().empty()) {
    table.AddRow({"REQUEST", graph.request_id()});
  }
  if (graph.fail_fast()) table.AddRow({"FAIL FAST", "true"});
  table.AddRow({"LAST SEQ", absl::StrCat(graph.last_seq())});
  return table.Render();
}

namespace {

std::string ErrorSummary(const forge::v1::TaskError& error) {
  if (error.code().empty() && error.message().empty()) return "";
  if (error.message().empty()) return error.code();
  return absl::StrCat(error.code().empty() ? "ERROR" : error.code(), ": ",
                      ShowBytes(error.message(), 60));
}

}  // namespace

std::string TaskRows(const forge::v1::Graph& graph) {
  const bool any_error = std::any_of(graph.tasks().begin(), graph.tasks().end(),
                                     [](const forge::v1::Task& t) {
                                       return !ErrorSummary(t.error()).empty();
                                     });
  std::vector<std::string> header = {"NAME", "QUEUE", "STATE", "ATTEMPT",
                                     "DEPS"};
  if (any_error) header.push_back("ERROR");
  Table table(std::move(header));
  for (const forge::v1::Task& task : graph.tasks()) {
    const forge::v1::TaskSpec& spec = task.spec();
    std::vector<std::string> row = {
        spec.name(), spec.queue().empty() ? "default" : spec.queue(),
        TaskStateName(task.state()), absl::StrCat(task.attempt()),
        spec.depends_on().empty() ? "-"
                                  : absl::StrJoin(spec.depends_on(), ",")};
    if (any_error) row.push_back(ErrorSummary(task.error()));
    table.AddRow(std::move(row));
  }
  return table.Render();
}

std::string TaskDetails(const forge::v1::Task& task) {
  const forge::v1::TaskSpec& spec = task.spec();
  Table table;
  table.AddRow({"TASK", spec.name()});
  table.AddRow({"GRAPH", task.graph_id()});
  table.AddRow({"QUEUE", spec.queue().empty() ? "default" : spec.queue()});
  table.AddRow({"STATE", TaskStateName(task.state())});
  table.AddRow({"ATTEMPT", absl::StrCat(task.attempt())});
  table.AddRow({"DEPS", spec.depends_on().empty()
                            ? "-"
                            : absl::StrJoin(spec.depends_on(), ",")});
  table.AddRow({"TRIGGER", spec.trigger() == forge::v1::TRIGGER_UNSPECIFIED
                               ? "ALL_SUCCESS"
                               : forge::v1::Trigger_Name(spec.trigger())});
  table.AddRow({"PRIORITY", absl::StrCat(spec.priority())});
  if (!spec.ordering_key().empty()) {
    table.AddRow({"ORDERING KEY", spec.ordering_key()});
  }
  if (!spec.params().empty()) {
    table.AddRow({"PARAMS", LabelsSummary(spec.params())});
  }
  if (!spec.labels().empty()) {
    table.AddRow({"LABELS", LabelsSummary(spec.labels())});
  }
  if (!spec.input().empty())
    table.AddRow({"INPUT", ShowBytes(spec.input(), 80)});
  if (task.has_progress()) {
    const forge::v1::Progress& p = task.progress();
    table.AddRow({"PROGRESS",
                  absl::StrCat(p.step(), "/", p.total(),
                               p.message().empty() ? "" : " ", p.message())});
  }
  if (task.exit_code() != 0) {
    table.AddRow({"EXIT CODE", absl::StrCat(task.exit_code())});
  }
  const std::string error = ErrorSummary(task.error());
  if (!error.empty()) table.AddRow({"ERROR", error});
  if (!task.output().empty()) {
    table.AddRow({"OUTPUT", ShowBytes(task.output(), 80)});
  }
  table.AddRow({"CREATED", FormatTime(task.created_at())});
  table.AddRow({"READY", FormatTime(task.ready_at())});
  table.AddRow({"STARTED", FormatTime(task.started_at())});
  table.AddRow({"FINISHED", FormatTime(task.finished_at())});
  std::string out = table.Render();
  if (!task.attempts().empty()) {
    Table attempts(
        {"ATTEMPT", "WORKER", "STATE", "STARTED", "FINISHED", "EXIT", "ERROR"});
    for (const forge::v1::Attempt& a : task.attempts()) {
      attempts.AddRow({absl::StrCat(a.number()),
                       a.worker_id().empty() ? "-" : a.worker_id(),
                       TaskStateName(a.state()), FormatTime(a.started_at()),
                       FormatTime(a.finished_at()), absl::StrCat(a.exit_code()),
                       ErrorSummary(a.error())});
    }
    absl::StrAppend(&out, "\n", attempts.Render());
  }
  return out;
}

std::string EventLine(const forge::v1::Event& event, bool with_graph) {
  std::string line;
  if (with_graph) absl::StrAppend(&line, "graph=", event.graph_id(), " ");
  const std::string type = forge::v1::EventType_Name(event.type());
  absl::StrAppend(
      &line, "seq=", event.seq(), " ",
      type.empty() ? absl::StrCat(static_cast<int>(event.type())) : type);
  if (!event.task().empty()) absl::StrAppend(&line, " ", event.task());
  if (event.attempt() != 0) {
    absl::StrAppend(&line, " attempt=", event.attempt());
  }
  if (!event.worker_id().empty()) {
    absl::StrAppend(&line, " worker=", event.worker_id());
  }
  if (event.has_progress()) {
    const forge::v1::Progress& p = event.progress();
    absl::StrAppend(&line, " progress=", p.step(), "/", p.total());
    if (!p.message().empty()) {
      absl::StrAppend(&line, " ", ShowBytes(p.message(), 60));
    }
  }
  if (event.exit_code() != 0) {
    absl::StrAppend(&line, " exit=", event.exit_code());
  }
  const std::string error = ErrorSummary(event.error());
  if (!error.empty()) absl::StrAppend(&line, " error=", error);
  if (event.has_retry_at()) {
    absl::StrAppend(&line, " retry_at=", FormatTime(event.retry_at()));
  }
  if (!event.message().empty()) {
    absl::StrAppend(&line, " message=", ShowBytes(event.message(), 80));
  }
  if (event.stream() != forge::v1::OUTPUT_STREAM_UNSPECIFIED) {
    absl::StrAppend(&line, " ", event.stream() == forge::v1::STDERR ? "stderr" : "stdout",
                    " bytes=", event.data().size());
  }
  if (!event.data().empty()) {
    absl::StrAppend(&line, " data=", ShowBytes(event.data(), 60));
  }
  return line;
}

namespace {

// A Graphviz ID: quoted, with quotes and backslashes escaped.
std::string DotId(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

const char* StateColor(forge::v1::TaskState state) {
  switch (state) {
    case forge::v1::PENDING:
      return "#e0e0e0";
    case forge::v1::READY:
      return "#aecbfa";
    case forge::v1::RUNNING:
      return "#fdd663";
    case forge::v1::SUCCEEDED:
      return "#81c995";
    case forge::v1::FAILED:
      return "#f28b82";
    case forge::v1::CANCELLED:
      return "#d7aefb";
    case forge::v1::SKIPPED:
      return "#f5f5f5";
    default:
      return "#ffffff";
  }
}

}  // namespace

std::string GraphToDot(const forge::v1::Graph& graph) {
  std::string out = absl::StrCat(
      "digraph ", DotId(graph.name().empty() ? graph.id() : graph.name()),
      " {\n", "  label=",
      DotId(absl::StrCat(graph.name(), " ", graph.id(), " ",
                         GraphStateName(graph.state()))),
      ";\n  labelloc=t;\n  rankdir=LR;\n",
      "  node [shape=box, style=\"rounded,filled\", "
      "fontname=\"Helvetica\"];\n");
  for (const forge::v1::Task& task : graph.tasks()) {
    std::string style;
    if (task.state() == forge::v1::SKIPPED) {
      style = ", style=\"rounded,filled,dashed\"";
    }
    absl::StrAppend(&out, "  ", DotId(task.spec().name()), " [label=",
                    DotId(absl::StrCat(task.spec().name(), "\n",
                                       TaskStateName(task.state()))),
                    ", fillcolor=\"", StateColor(task.state()), "\"", style,
                    "];\n");
  }
  for (const forge::v1::Task& task : graph.tasks()) {
    std::string attributes;
    switch (task.spec().trigger()) {
      case forge::v1::ALL_DONE:
        attributes = " [style=dashed]";
        break;
      case forge::v1::ONE_FAILED:
        attributes = " [style=dashed, color=\"#d93025\"]";
        break;
      default:
        break;
    }
    for (const std::string& dep : task.spec().depends_on()) {
      absl::StrAppend(&out, "  ", DotId(dep), " -> ", DotId(task.spec().name()),
                      attributes, ";\n");
    }
  }
  out += "}\n";
  return out;
}

}  // namespace forgectl
}  // namespace forge
