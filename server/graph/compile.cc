// Compile(): validation of a GraphSpec and its index form (see
// compiled_graph.h for the contract).
//
// Edge direction: everything here follows depends_on edges. In a reported
// cycle "tasks: cycle a -> b -> c -> a", "a -> b" means task a depends on
// task b; the path starts at the cycle's task of smallest spec index, so the
// message is a function of the spec alone.
//
// Cost: O(tasks + edges + bytes of the spec), with no recursion anywhere: a
// 1,000,000-task chain or ring needs neither a deep stack nor per-task
// hash sets (one name map, flat vectors, and the output's own vectors).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status.h"
#include "server/graph/compiled_graph.h"

namespace forge::graph {
namespace {

using forge::v1::GraphSpec;
using forge::v1::TaskSpec;
using StringMap = google::protobuf::Map<std::string, std::string>;

constexpr int32_t kMaxRetryAttempts = 100;
// A status message travels back in gRPC trailers (8 KiB of metadata by
// default), so a long cycle path is cut to about this many bytes.
constexpr size_t kMaxCycleMessageBytes = 1024;
// Client-chosen text quoted in a message is cut to this many bytes, so a
// hostile 1 MiB key does not become a 1 MiB error.
constexpr size_t kMaxQuotedBytes = 64;

template <typename... Args>
absl::Status Invalid(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}

// Field path of `field` in task `task`, or of a graph field when task < 0.
// Built only on the error path: a million tasks must not cost a million
// string allocations.
std::string FieldPath(int task, absl::string_view field) {
  if (task < 0) return std::string(field);
  return absl::StrCat("tasks[", task, "].", field);
}

// Client text (a dependency name, a map key) quoted for a message: escaped
// and cut at kMaxQuotedBytes.
std::string Quote(absl::string_view s) {
  std::string out =
      absl::StrCat("\"", absl::CHexEscape(s.substr(0, kMaxQuotedBytes)));
  if (s.size() > kMaxQuotedBytes) out += "...";
  out += '"';
  return out;
}

absl::Status TooMany(int task, absl::string_view field, int64_t n,
                     absl::string_view unit, int64_t limit) {
  return Invalid(FieldPath(task, field), ": ", n, " ", unit,
                 " exceeds the limit of ", limit);
}

bool IsNameChar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_' || c == '.' || c == ':' || c == '-';
}

// Task and queue names: [A-Za-z0-9_.:-]+, at most limits.max_name_bytes.
// Names appear in metrics labels, logs and cycle messages unquoted, hence
// the narrow charset.
absl::Status CheckName(int task, absl::string_view field,
                       absl::string_view name, const Limits& limits) {
  if (static_cast<int64_t>(name.size()) > limits.max_name_bytes) {
    return TooMany(task, field, name.size(), "bytes", limits.max_name_bytes);
  }
  for (unsigned char c : name) {
    if (!IsNameChar(c)) {
      return Invalid(FieldPath(task, field), ": ", Quote(name),
                     " has a character outside [A-Za-z0-9_.:-]");
    }
  }
  return absl::OkStatus();
}

// Proto map iteration order is unspecified, so when several entries are bad
// the one with the smallest key is reported: the error stays a function of
// the spec.
absl::Status CheckLabels(int task, const StringMap& labels,
                         const Limits& limits) {
  if (static_cast<int64_t>(labels.size()) > limits.max_labels) {
    return TooMany(task, "labels", labels.size(), "labels", limits.max_labels);
  }
  const std::string* bad = nullptr;
  for (const auto& kv : labels) {
    if ((static_cast<int64_t>(kv.first.size()) > limits.max_label_key_bytes ||
         static_cast<int64_t>(kv.second.size()) >
             limits.max_label_value_bytes) &&
        (bad == nullptr || kv.first < *bad)) {
      bad = &kv.first;
    }
  }
  if (bad == nullptr) return absl::OkStatus();
  const std::string path =
      FieldPath(task, absl::StrCat("labels[", Quote(*bad), "]"));
  if (static_cast<int64_t>(bad->size()) > limits.max_label_key_bytes) {
    return Invalid(path, ": key of ", bad->size(),
                   " bytes exceeds the limit of ", limits.max_label_key_bytes);
  }
  return Invalid(path, ": value of ", labels.at(*bad).size(),
                 " bytes exceeds the limit of ", limits.max_label_value_bytes);
}

// Same ordering rule as CheckLabels; a param's size is key + value.
absl::Status CheckParams(int task, const StringMap& params,
                         const Limits& limits) {
  if (static_cast<int64_t>(params.size()) > limits.max_params) {
    return TooMany(task, "params", params.size(), "params", limits.max_params);
  }
  const std::string* bad = nullptr;
  for (const auto& kv : params) {
    if (static_cast<int64_t>(kv.first.size() + kv.second.size()) >
            limits.max_param_bytes &&
        (bad == nullptr || kv.first < *bad)) {
      bad = &kv.first;
    }
  }
  if (bad == nullptr) return absl::OkStatus();
  return TooMany(task, absl::StrCat("params[", Quote(*bad), "]"),
                 bad->size() + params.at(*bad).size(), "bytes",
                 limits.max_param_bytes);
}

absl::Status CheckDuration(int task, absl::string_view field,
                           const google::protobuf::Duration& d) {
  if (d.seconds() < 0 || d.nanos() < 0) {
    return Invalid(FieldPath(task, field),
                   ": negative duration (seconds=", d.seconds(),
                   ", nanos=", d.nanos(), ")");
  }
  if (d.nanos() > 999999999) {
    return Invalid(FieldPath(task, field), ": nanos ", d.nanos(),
                   " is outside [0, 999999999]");
  }
  return absl::OkStatus();
}

absl::Status CheckRetry(int task, const forge::v1::RetryPolicy& r) {
  if (r.max_attempts() < 0) {
    return Invalid(FieldPath(task, "retry.max_attempts"), ": ",
                   r.max_attempts(), " is negative");
  }
  if (r.max_attempts() > kMaxRetryAttempts) {
    return TooMany(task, "retry.max_attempts", r.max_attempts(), "attempts",
                   kMaxRetryAttempts);
  }
  // Written so that NaN fails too; an infinite multiplier is refused as well
  // since every later delay would be the maximum at once.
  const double m = r.backoff_multiplier();
  if (!(m == 0 || (m >= 1 && std::isfinite(m)))) {
    return Invalid(FieldPath(task, "retry.backoff_multiplier"), ": ", m,
                   " must be 0 (the default) or a finite number >= 1");
  }
  const double j = r.jitter();
  if (!(j >= 0 && j <= 1)) {
    return Invalid(FieldPath(task, "retry.jitter"), ": ", j,
                   " is outside [0, 1]");
  }
  RETURN_IF_ERROR(
      CheckDuration(task, "retry.initial_backoff", r.initial_backoff()));
  return CheckDuration(task, "retry.max_backoff", r.max_backoff());
}

// Every check of one task that needs no other task.
absl::Status CheckTask(int i, const TaskSpec& t, const Limits& limits) {
  if (t.name().empty())
    return Invalid(FieldPath(i, "name"), ": a task needs a name");
  RETURN_IF_ERROR(CheckName(i, "name", t.name(), limits));
  RETURN_IF_ERROR(CheckName(i, "queue", t.queue(), limits));  // "" = default
  // Counted as sent, before deduplication: the bound is on the work a
  // client can make us do.
  if (t.depends_on_size() > limits.max_dependencies) {
    return TooMany(i, "depends_on", t.depends_on_size(), "dependencies",
                   limits.max_dependencies);
  }
  if (!forge::v1::Trigger_IsValid(t.trigger())) {
    return Invalid(FieldPath(i, "trigger"), ": unknown value ",
                   static_cast<int>(t.trigger()));
  }
  // int64: |INT32_MIN| does not fit an int32.
  const int64_t priority = t.priority();
  if (std::abs(priority) > limits.max_priority) {
    return Invalid(FieldPath(i, "priority"), ": |", priority,
                   "| exceeds the limit of ", limits.max_priority);
  }
  if (static_cast<int64_t>(t.input().size()) > limits.max_input_bytes) {
    return TooMany(i, "input", t.input().size(), "bytes",
                   limits.max_input_bytes);
  }
  RETURN_IF_ERROR(CheckParams(i, t.params(), limits));
  RETURN_IF_ERROR(CheckLabels(i, t.labels(), limits));
  if (t.has_retry()) RETURN_IF_ERROR(CheckRetry(i, t.retry()));
  if (t.has_timeouts()) {
    RETURN_IF_ERROR(CheckDuration(i, "timeouts.run", t.timeouts().run()));
    RETURN_IF_ERROR(CheckDuration(i, "timeouts.schedule_to_start",
                                  t.timeouts().schedule_to_start()));
    RETURN_IF_ERROR(
        CheckDuration(i, "timeouts.heartbeat", t.timeouts().heartbeat()));
  }
  return absl::OkStatus();
}

// Called when Kahn's algorithm left some tasks out of the order; pending[i]
// is the number of task i's dependencies that never got into it. A task left
// out (pending > 0) waits for at least one dependency that was left out too,
// so walking from one along such dependencies must revisit a task within n
// steps, and the walk from that task's first visit on is a cycle.
absl::Status CycleError(const GraphSpec& spec, const CompiledGraph& g,
                        const std::vector<int32_t>& pending) {
  const int32_t n = static_cast<int32_t>(g.deps.size());
  int32_t u = 0;
  while (pending[u] == 0) ++u;
  std::vector<int32_t> path;
  std::vector<int32_t> pos(n, -1);  // index of a task in `path`, or -1
  while (pos[u] < 0) {
    pos[u] = static_cast<int32_t>(path.size());
    path.push_back(u);
    for (int32_t d : g.deps[u]) {
      if (pending[d] > 0) {
        u = d;
        break;
      }
    }
  }
  path.erase(path.begin(), path.begin() + pos[u]);
  std::rotate(path.begin(), std::min_element(path.begin(), path.end()),
              path.end());
  const size_t k = path.size();  // distinct tasks on the cycle
  path.push_back(path.front());

  // Names are validated by now ([A-Za-z0-9_.:-]), so they need no quoting.
  size_t full_bytes = 0;
  for (int32_t t : path) full_bytes += spec.tasks(t).name().size() + 4;
  std::string msg = "tasks: cycle ";
  if (full_bytes <= kMaxCycleMessageBytes) {
    for (size_t i = 0; i < path.size(); ++i) {
      if (i > 0) msg += " -> ";
      msg += spec.tasks(path[i]).name();
    }
    return absl::InvalidArgumentError(msg);
  }
  // Too long: the head of the path, then its closing edge; every "X -> Y"
  // shown is still a real edge, "..." stands for the tasks left out.
  size_t head = 0;
  while (head + 2 < k && msg.size() < kMaxCycleMessageBytes) {
    absl::StrAppend(&msg, spec.tasks(path[head]).name(), " -> ");
    ++head;
  }
  absl::StrAppend(&msg, "... -> ", spec.tasks(path[k - 1]).name(), " -> ",
                  spec.tasks(path[k]).name(), " (a cycle of ", k, " tasks, ",
                  k - head - 1, " not shown)");
  return absl::InvalidArgumentError(msg);
}

}  // namespace

Limits NoSizeLimits() {
  Limits l;
  l.max_tasks = std::numeric_limits<int32_t>::max();
  l.max_input_bytes = l.max_total_input_bytes = std::numeric_limits<int64_t>::max();
  return l;
}

absl::StatusOr<CompiledGraph> Compile(const GraphSpec& spec,
                                      const Limits& limits) {
  const int n = spec.tasks_size();
  if (n == 0) return Invalid("tasks: a graph needs at least one task");
  if (n > limits.max_tasks) {
    return TooMany(-1, "tasks", n, "tasks", limits.max_tasks);
  }
  if (static_cast<int64_t>(spec.name().size()) > limits.max_graph_name_bytes) {
    return TooMany(-1, "name", spec.name().size(), "bytes",
                   limits.max_graph_name_bytes);
  }
  RETURN_IF_ERROR(CheckLabels(-1, spec.labels(), limits));

  // Keys view the spec's own strings, which outlive this call.
  absl::flat_hash_map<absl::string_view, int32_t> index;
  index.reserve(n);
  int64_t total_input = 0;
  // A big graph's name table is far larger than the cache, and each name
  // lands at a random place in it: the slot of a name kAhead tasks on is
  // fetched while this one is handled (here and for the dependencies).
  constexpr int kAhead = 16;
  for (int i = 0; i < n; ++i) {
    if (i + kAhead < n) index.prefetch(spec.tasks(i + kAhead).name());
    const TaskSpec& t = spec.tasks(i);
    RETURN_IF_ERROR(CheckTask(i, t, limits));
    total_input += static_cast<int64_t>(t.input().size());
    auto [it, inserted] = index.try_emplace(t.name(), i);
    if (!inserted) {
      return Invalid(FieldPath(i, "name"), ": duplicate task name ",
                     Quote(t.name()), " (first at tasks[", it->second, "])");
    }
  }
  if (total_input > limits.max_total_input_bytes) {
    return Invalid("tasks: total input of ", total_input,
                   " bytes exceeds the limit of ",
                   limits.max_total_input_bytes);
  }

  // Dependencies, deduplicated, in one array. seen_by[j] == i: j is
  // already among task i's. One stamp per task dedupes depends_on in O(1)
  // per entry without a set per task.
  std::vector<uint32_t> dep_offsets(n + 1, 0);
  std::vector<int32_t> dep_items;
  {
    int64_t entries = 0;
    for (int i = 0; i < n; ++i) entries += spec.tasks(i).depends_on_size();
    if (entries > std::numeric_limits<int32_t>::max()) {
      return Invalid("tasks: ", entries, " dependencies exceed the limit of ",
                     std::numeric_limits<int32_t>::max());
    }
    dep_items.reserve(static_cast<size_t>(entries));
  }
  CompiledGraph g;
  std::vector<int32_t> seen_by(n, -1);
  std::vector<uint32_t> fan_out(n + 1, 0);  // dependents per task
  for (int32_t i = 0; i < n; ++i) {
    if (i + kAhead < n) {
      for (const std::string& name : spec.tasks(i + kAhead).depends_on()) {
        index.prefetch(absl::string_view(name));
      }
    }
    const auto& names = spec.tasks(i).depends_on();
    for (int k = 0; k < names.size(); ++k) {
      auto it = index.find(absl::string_view(names[k]));
      if (it == index.end()) {
        return Invalid(FieldPath(i, absl::StrCat("depends_on[", k, "]")),
                       ": unknown task ", Quote(names[k]));
      }
      const int32_t j = it->second;
      if (j == i) {
        return Invalid(FieldPath(i, absl::StrCat("depends_on[", k, "]")),
                       ": task ", Quote(names[k]), " depends on itself");
      }
      if (seen_by[j] == i) continue;
      seen_by[j] = i;
      dep_items.push_back(j);
      ++fan_out[j];
    }
    dep_offsets[i + 1] = static_cast<uint32_t>(dep_items.size());
    if (dep_offsets[i + 1] == dep_offsets[i]) g.roots.push_back(i);
  }
  dep_items.shrink_to_fit();  // duplicates dropped
  // Dependents: the reverse edges, each list in index order (counting sort).
  std::vector<uint32_t> rev_offsets(n + 1, 0);
  for (int32_t j = 0; j < n; ++j) rev_offsets[j + 1] = rev_offsets[j] + fan_out[j];
  std::vector<int32_t> rev_items(dep_items.size());
  std::vector<uint32_t>& cursor = fan_out;  // reused: next free slot per task
  std::copy(rev_offsets.begin(), rev_offsets.end(), cursor.begin());
  for (int32_t i = 0; i < n; ++i) {
    for (uint32_t e = dep_offsets[i]; e < dep_offsets[i + 1]; ++e) {
      rev_items[cursor[dep_items[e]]++] = i;
    }
  }
  g.deps = IndexLists(std::move(dep_offsets), std::move(dep_items));
  g.dependents = IndexLists(std::move(rev_offsets), std::move(rev_items));

  // Kahn's algorithm, with topo_order as its FIFO queue: roots in spec order,
  // then each task once its last dependency is placed.
  std::vector<int32_t>& pending = seen_by;  // reused: deps not yet placed
  for (int32_t i = 0; i < n; ++i) {
    pending[i] = static_cast<int32_t>(g.deps[i].size());
  }
  g.topo_order.reserve(n);
  g.topo_order.insert(g.topo_order.end(), g.roots.begin(), g.roots.end());
  for (size_t head = 0; head < g.topo_order.size(); ++head) {
    for (int32_t v : g.dependents[g.topo_order[head]]) {
      if (--pending[v] == 0) g.topo_order.push_back(v);
    }
  }
  if (static_cast<int>(g.topo_order.size()) < n) {
    return CycleError(spec, g, pending);
  }
  return g;
}

}  // namespace forge::graph
