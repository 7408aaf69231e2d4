// server/graph: the PURE model of a task graph. Validation (references,
// duplicates, cycles with their path, limits), the compiled form the store
// runs on (dependency indices, dependents adjacency, pending counts) and the
// trigger rules. No locks, no I/O, no gRPC: every function here is a
// deterministic function of its arguments, safe to call from any thread on
// distinct objects.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "forge/v1/types.pb.h"

namespace forge::graph {

// Configurable bounds on a submitted graph. A spec past a bound is refused
// with INVALID_ARGUMENT naming the field and the bound.
struct Limits {
  int64_t max_tasks = 1000000;
  int64_t max_input_bytes = 1 << 20;          // per task
  int64_t max_total_input_bytes = 256 << 20;  // per graph
  int64_t max_name_bytes = 128;               // task and queue names
  int64_t max_graph_name_bytes = 256;
  int64_t max_labels = 64;                    // per graph or task
  int64_t max_label_key_bytes = 63;
  int64_t max_label_value_bytes = 256;
  int64_t max_params = 256;                   // per task
  int64_t max_param_bytes = 64 << 10;         // key + value
  int64_t max_dependencies = 10000;           // per task
  int64_t max_priority = 1000000;             // |priority|
};

// One list of task indices per task, all in one array (compressed rows):
// 4 bytes a task plus 4 an entry, where a vector per task took 24 plus an
// allocation. Built by Compile.
class IndexLists {
 public:
  IndexLists() = default;
  // List i is items[offsets[i], offsets[i+1]); offsets has one entry more
  // than there are lists, the first 0 and the last items.size().
  IndexLists(std::vector<uint32_t> offsets, std::vector<int32_t> items)
      : offsets_(std::move(offsets)), items_(std::move(items)) {}

  absl::Span<const int32_t> operator[](int32_t i) const {
    return absl::MakeConstSpan(items_.data() + offsets_[i],
                               offsets_[i + 1] - offsets_[i]);
  }
  // Lists (tasks), not entries.
  size_t size() const { return offsets_.empty() ? 0 : offsets_.size() - 1; }
  size_t entries() const { return items_.size(); }

 private:
  std::vector<uint32_t> offsets_;
  std::vector<int32_t> items_;
};

// A validated graph in index form. Task i is spec.tasks(i).
struct CompiledGraph {
  // deps[i]: indices of task i's dependencies (deduplicated order of
  // depends_on).
  IndexLists deps;
  // dependents[i]: indices of the tasks that depend on task i, in index
  // order.
  IndexLists dependents;
  // Indices of the tasks with no dependency, in spec order.
  std::vector<int32_t> roots;
  // A topological order of all tasks (dependencies first).
  std::vector<int32_t> topo_order;
};

// Limits that let every graph through (sizes and counts only; a graph must
// still be well formed): a graph once accepted is read back from the
// journal whatever today's limits are.
Limits NoSizeLimits();

// Validates `spec` against `limits` and compiles it. Iterative (no
// recursion): a 1,000,000-task chain is checked in linear time and constant
// stack. Errors are INVALID_ARGUMENT with a message that starts with the
// field path, for example:
//   "tasks: a graph needs at least one task"
//   "tasks[2].name: duplicate task name \"b\" (first at tasks[0])"
//   "tasks[3].depends_on[1]: unknown task \"x\""
//   "tasks[1].depends_on[0]: task \"b\" depends on itself"
//   "tasks: cycle a -> b -> c -> a"
//   "tasks[0].input: 2097152 bytes exceeds the limit of 1048576"
// Names must match [A-Za-z0-9_.:-]+ (queue names too; an empty queue means
// "default").
// In a cycle message "a -> b" means task a depends on task b; the path starts
// at the cycle's task of smallest index. A path past ~1 KiB is cut (it must
// fit gRPC trailers): "tasks: cycle a -> b -> ... -> y -> a (a cycle of N
// tasks, M not shown)".
absl::StatusOr<CompiledGraph> Compile(const forge::v1::GraphSpec& spec,
                                      const Limits& limits);

}  // namespace forge::graph
