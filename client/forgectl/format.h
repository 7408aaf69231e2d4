// Human-readable renderings for forgectl's table output and `dot`: pure
// functions of the protos, so the command code stays about RPCs and flags.
#pragma once

#include <string>
#include <vector>

#include "forge/v1/types.pb.h"
#include "google/protobuf/timestamp.pb.h"

namespace forge {
namespace forgectl {

// Left-aligned columns separated by two spaces; the last column is not
// padded. With an empty header the table has no header line.
class Table {
 public:
  explicit Table(std::vector<std::string> header = {})
      : header_(std::move(header)) {}
  void AddRow(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string Render() const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

// "SUCCEEDED" for GRAPH_STATE_SUCCEEDED ("-" for unspecified).
std::string GraphStateName(forge::v1::GraphState state);
// "RUNNING", ... ("-" for unspecified).
std::string TaskStateName(forge::v1::TaskState state);
// Parses "running", "SUCCEEDED" or "GRAPH_STATE_FAILED" (any case); false if
// none matches.
bool ParseGraphState(const std::string& text, forge::v1::GraphState* state);

// "2024-05-01T10:00:00Z" (UTC, seconds), or "-" when unset.
std::string FormatTime(const google::protobuf::Timestamp& ts);

// Non-zero counts in lifecycle order: "running=1 succeeded=3 failed=1", or
// "-" when every count is zero.
std::string CountsSummary(const forge::v1::TaskCounts& counts);

// "key=value,key=value" sorted by key, or "-".
std::string LabelsSummary(
    const google::protobuf::Map<std::string, std::string>& labels);

// `bytes` as text for a table: printable UTF-8 is quoted and escaped, other
// data shown as "<N bytes>"; longer than `max` characters is cut with "...".
std::string ShowBytes(const std::string& bytes, size_t max);

// The graph header (id, name, state, counts, times, labels) as aligned
// "KEY  value" lines.
std::string GraphHeader(const forge::v1::Graph& graph);

// One row per task: NAME QUEUE STATE ATTEMPT DEPS, plus ERROR when some
// task has an error.
std::string TaskRows(const forge::v1::Graph& graph);

// Every field of a task worth reading, then its attempts as a table.
std::string TaskDetails(const forge::v1::Task& task);

// One line per event, e.g. "seq=3 TASK_STARTED b attempt=1 worker=w-1";
// with `with_graph`, prefixed by "graph=<id> " (global watches).
std::string EventLine(const forge::v1::Event& event, bool with_graph);

// A Graphviz digraph: one node per task filled by its state, one edge per
// dependency (dep -> task), dashed for ALL_DONE and red for ONE_FAILED.
std::string GraphToDot(const forge::v1::Graph& graph);

}  // namespace forgectl
}  // namespace forge
