#include "server/store/store.h"

#include <algorithm>
#include <cassert>
#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "absl/strings/str_format.h"
#include "common/ids.h"
#include "common/status.h"
#include "common/proto_time.h"
#include "common/trace_context.h"
#include "server/store/records.h"

namespace forge::store {

namespace v1 = ::forge::v1;

// What a task's attempts leave behind, allocated when it first starts or
// ends: a PENDING or READY task of a big graph costs only TaskRuntime's own
// ~56 bytes, not these ~290.
struct TaskRun {
  uint64_t epoch = 0;
  int32_t exit_code = 0;
  // Attempts ended by a server restart (not counted by the retry policy).
  int32_t restarts = 0;
  // Last sign of life of the running attempt (start, heartbeat, progress).
  absl::Time last_heartbeat = absl::InfinitePast();
  std::string worker_id;
  std::string output;
  std::unique_ptr<v1::TaskError> error;
  std::unique_ptr<v1::Progress> progress;
  // Live output published by the current attempt (TASK_OUTPUT bytes).
  int64_t output_published = 0;
  // When the backoff of a READY, backing-off task ends.
  absl::Time retry_at = absl::InfinitePast();
  // Entries of the running attempt in the shard's deadline index
  // (InfiniteFuture: none).
  absl::Time run_due = absl::InfiniteFuture();
  absl::Time heartbeat_due = absl::InfiniteFuture();
  // Latest checkpoint of any attempt; handed to the next attempt.
  std::string checkpoint;
  absl::Time started_at = absl::InfinitePast();
  // The executor reported the current attempt began (InfinitePast: not yet).
  absl::Time picked_up_at = absl::InfinitePast();
  absl::Time finished_at = absl::InfinitePast();
  std::vector<v1::Attempt> attempts;
};

struct Store::TaskRuntime {
  v1::TaskState state = v1::PENDING;
  // READY but waiting for a retry backoff to end (not in a queue).
  bool backing_off = false;
  // Changed by the current transition: its record is written at Seal().
  bool dirty = false;
  // Dependencies not yet terminal / that ended unsuccessful / that FAILED.
  int32_t pending = 0;
  int32_t unsuccessful = 0;
  int32_t failed = 0;
  int32_t attempt = 0;
  // ready_seq of the current READY period (fences schedule-to-start timers).
  uint64_t ready_seq = 0;
  absl::Time ready_at = absl::InfinitePast();
  std::unique_ptr<TaskRun> run;

  // The attempts' part, made on first use.
  TaskRun& R() {
    if (!run) run = std::make_unique<TaskRun>();
    return *run;
  }
  // Reading it makes nothing: a task that never ran reads the defaults.
  const TaskRun& R() const {
    static const TaskRun* const kNone = new TaskRun();
    return run ? *run : *kNone;
  }
};

namespace {

const std::string& QueueOf(const std::string& queue) {
  static const std::string* kDefault = new std::string("default");
  return queue.empty() ? *kDefault : queue;
}

}  // namespace

// What the store keeps of a task's spec. A plain task (a name, a queue, a
// priority, a trigger and its dependencies, which the compiled graph holds
// as indices) costs a TaskDef alone, ~48 bytes where its v1::TaskSpec took
// ~500 (three map fields); a task with any other field set (input, params,
// labels, env, an ordering key, a retry policy, timeouts) also keeps the
// rest of its spec.
struct TaskDef {
  std::string name;
  int32_t queue = 0;     // GraphRecord::queues
  int32_t priority = 0;
  int32_t rest = -1;     // GraphRecord::rests, or none
  v1::Trigger trigger = v1::TRIGGER_UNSPECIFIED;
};

struct Store::GraphRecord {
  std::string id;
  std::string request_id;
  // The graph's own fields (name, labels, fail_fast); its tasks are `defs`.
  v1::GraphSpec spec;
  std::vector<TaskDef> defs;
  // The queue names tasks gave, as given ("" for the default queue).
  std::vector<std::string> queues;
  // The other fields of tasks that set any (TaskDef::rest): the spec of
  // the task without its name, queue, priority, trigger and dependencies
  // (those stay when the list named a dependency twice: the compiled graph
  // holds it once).
  std::vector<v1::TaskSpec> rests;
  graph::CompiledGraph compiled;
  std::vector<TaskRuntime> tasks;
  // Keys view the names inside `defs`, which never change after insert.
  absl::flat_hash_map<absl::string_view, int32_t> by_name;

  const std::string& Name(int32_t i) const { return defs[i].name; }
  // The task's queue, "default" when it named none.
  const std::string& Queue(int32_t i) const { return QueueOf(queues[defs[i].queue]); }
  const v1::TaskSpec& Rest(int32_t i) const {
    return defs[i].rest < 0 ? v1::TaskSpec::default_instance() : rests[defs[i].rest];
  }
  // Takes the tasks out of `spec` (moved, not copied), leaving the graph's
  // own fields; builds by_name.
  void SetTasks(v1::GraphSpec&& spec);
  v1::GraphState state = v1::GRAPH_STATE_RUNNING;
  int64_t seq = 0;
  bool cancel_requested = false;
  bool fail_fast_fired = false;
  // Graph-level state changed by the current transition (see Seal()).
  bool state_dirty = false;
  int32_t terminal = 0;
  v1::TaskCounts counts;
  absl::Time created_at;
  absl::Time finished_at = absl::InfinitePast();
  std::vector<TerminalWaiter> waiters;
  // W3C trace context (hex): the graph's trace and the submitter's span.
  std::string trace_id;
  std::string parent_span_id;
  // The submitter's traceparent did not say "not sampled".
  bool sampled = true;
  // Left memory (Store::Archive): defs, queues, rests, compiled, tasks and
  // by_name are empty; `spec` and the summary fields stay. The rest is in
  // the journal.
  bool archived = false;
};

void Store::GraphRecord::SetTasks(v1::GraphSpec&& from) {
  const int32_t n = from.tasks_size();
  defs.resize(n);
  absl::flat_hash_map<std::string, int32_t> queue_index;
  for (int32_t i = 0; i < n; ++i) {
    v1::TaskSpec& t = *from.mutable_tasks(i);
    TaskDef& d = defs[i];
    d.name = std::move(*t.mutable_name());
    t.clear_name();
    auto [it, added] =
        queue_index.try_emplace(t.queue(), static_cast<int32_t>(queues.size()));
    if (added) queues.push_back(t.queue());
    d.queue = it->second;
    t.clear_queue();
    d.priority = t.priority();
    t.clear_priority();
    d.trigger = t.trigger();
    t.clear_trigger();
    if (t.depends_on_size() == static_cast<int>(compiled.deps[i].size())) {
      // Clear() would keep the strings for reuse: swapped out, they go.
      google::protobuf::RepeatedPtrField<std::string>().Swap(t.mutable_depends_on());
    }
    if (t.ByteSizeLong() > 0) {
      d.rest = static_cast<int32_t>(rests.size());
      rests.push_back(std::move(t));
    }
  }
  rests.shrink_to_fit();
  std::vector<int32_t>().swap(compiled.topo_order);  // nothing runs on it
  google::protobuf::RepeatedPtrField<v1::TaskSpec>().Swap(from.mutable_tasks());
  spec = std::move(from);
  by_name.reserve(n);
  for (int32_t i = 0; i < n; ++i) by_name.emplace(defs[i].name, i);
}

struct Store::Rebuilt {
  std::unique_ptr<GraphRecord> graph;
  uint64_t max_epoch = 0;
  uint64_t max_ready_seq = 0;
};

namespace {

void Bump(v1::TaskCounts& c, v1::TaskState s, int delta) {
  switch (s) {
    case v1::PENDING: c.set_pending(c.pending() + delta); break;
    case v1::READY: c.set_ready(c.ready() + delta); break;
    case v1::RUNNING: c.set_running(c.running() + delta); break;
    case v1::SUCCEEDED: c.set_succeeded(c.succeeded() + delta); break;
    case v1::FAILED: c.set_failed(c.failed() + delta); break;
    case v1::CANCELLED: c.set_cancelled(c.cancelled() + delta); break;
    case v1::SKIPPED: c.set_skipped(c.skipped() + delta); break;
    default: break;
  }
}


v1::EventType EventFor(v1::TaskState s) {
  switch (s) {
    case v1::SUCCEEDED: return v1::TASK_SUCCEEDED;
    case v1::FAILED: return v1::TASK_FAILED;
    case v1::CANCELLED: return v1::TASK_CANCELLED;
    case v1::SKIPPED: return v1::TASK_SKIPPED;
    case v1::READY: return v1::TASK_READY;
    case v1::RUNNING: return v1::TASK_STARTED;
    default: return v1::EVENT_TYPE_UNSPECIFIED;
  }
}

v1::EventType EventFor(v1::GraphState s) {
  switch (s) {
    case v1::GRAPH_STATE_SUCCEEDED: return v1::GRAPH_SUCCEEDED;
    case v1::GRAPH_STATE_FAILED: return v1::GRAPH_FAILED;
    case v1::GRAPH_STATE_CANCELLED: return v1::GRAPH_CANCELLED;
    default: return v1::EVENT_TYPE_UNSPECIFIED;
  }
}

// A hash of the spec's deterministic serialization: protobuf map order is
// randomized per map, so plain SerializeAsString differs between two equal
// specs with maps of two or more entries.
uint64_t Fingerprint(const v1::GraphSpec& spec) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream out(&bytes);
    google::protobuf::io::CodedOutputStream coded(&out);
    coded.SetSerializationDeterministic(true);
    spec.SerializeToCodedStream(&coded);
  }
  return std::hash<std::string>{}(bytes);
}

// Appends a length-delimited protobuf field (wire type 2) to `out`.
void AppendLengthDelimited(std::string* out, int field, const std::string& bytes) {
  auto varint = [out](uint64_t v) {
    while (v >= 0x80) {
      out->push_back(static_cast<char>(v | 0x80));
      v >>= 7;
    }
    out->push_back(static_cast<char>(v));
  };
  varint(static_cast<uint64_t>(field) << 3 | 2);
  varint(bytes.size());
  out->append(bytes);
}

std::string SkipReason(v1::Trigger trigger) {
  const v1::Trigger t =
      trigger == v1::TRIGGER_UNSPECIFIED ? v1::ALL_SUCCESS : trigger;
  return absl::StrCat("trigger ", v1::Trigger_Name(t), " cannot hold");
}

absl::Status StaleLease(const v1::Lease& lease, v1::TaskState state,
                        int32_t attempt) {
  return absl::AbortedError(absl::StrFormat(
      "stale lease: task %d of graph %s is at attempt %d (%s); attempt %d "
      "epoch %d is no longer current",
      lease.task_index(), lease.graph_id(), attempt,
      v1::TaskState_Name(state), lease.attempt(), lease.epoch()));
}

}  // namespace

// One transition on one graph, under its shard lock. Collects the effects.
class Store::Transition {
 public:
  Transition(Store& store, GraphRecord& g, absl::BitGen& rng,
             DeadlineIndex& deadlines, absl::Time now, Effects& fx)
      : store_(store), g_(g), rng_(rng), deadlines_(deadlines), now_(now), fx_(fx) {
    fx_.graph_id = g.id;
  }
  // Every path that changes something ends with Seal() (durable mode would
  // otherwise lose the records).
  ~Transition() {
    assert(sealed_ || !store_.journal_ ||
           (fx_.events.empty() && dirty_.empty() && !g_.state_dirty));
  }

  void MarkDirty(int32_t i) {
    if (!store_.journal_ || g_.tasks[i].dirty) return;
    g_.tasks[i].dirty = true;
    dirty_.push_back(i);
  }
  void MarkGraphDirty() {
    if (store_.journal_ != nullptr) g_.state_dirty = true;
  }

  // Commits the journal records of what this transition changed (with any
  // already in the effects' batch): its events, the tasks it touched, the
  // graph's state. Called under the shard lock, so the journal's order is
  // the store's.
  void Seal() {
    sealed_ = true;
    if (!fx_.finished_attempts.empty() || fx_.terminal_graph.has_value()) {
      fx_.trace_id = g_.trace_id;
      fx_.trace_parent_span_id = g_.parent_span_id;
      fx_.trace_sampled = g_.sampled;
    }
    if (store_.journal_ == nullptr) return;
    persist::Batch& b = fx_.batch;
    b.Reserve(b.size() + fx_.events.size() + dirty_.size() + 1);
    for (const v1::Event& e : fx_.events) {
      forge::journal::v1::EventRecord r;
      r.set_version(kRecordVersion);
      *r.mutable_event() = e;
      r.mutable_event()->clear_graph_id();  // the key names it (28 bytes an event)
      b.Put(EventKey(g_.id, e.seq()), r.SerializeAsString());
    }
    for (int32_t i : dirty_) {
      g_.tasks[i].dirty = false;
      b.Put(TaskKey(g_.id, i), Store::TaskRecordOf(g_.tasks[i]).SerializeAsString());
    }
    dirty_.clear();
    if (g_.state_dirty) {
      g_.state_dirty = false;
      forge::journal::v1::GraphStateRecord r;
      r.set_version(kRecordVersion);
      r.set_state(g_.state);
      r.set_cancel_requested(g_.cancel_requested);
      r.set_fail_fast_fired(g_.fail_fast_fired);
      if (g_.finished_at != absl::InfinitePast()) {
        ToProto(g_.finished_at, r.mutable_finished_at());
      }
      b.Put(StateKey(g_.id), r.SerializeAsString());
    }
    if (!b.empty()) {
      fx_.durable = persist::Durability::Commit(*store_.journal_, std::move(b));
      b = persist::Batch();
    }
  }

  // Recovery: the attempt that was running when the server stopped is over
  // (a late result of it is refused); the task is READY again at once, for
  // an attempt that does not count against its retry policy.
  void RestartAttempt(int32_t i) {
    TaskRuntime& t = g_.tasks[i];
    t.R().error = std::make_unique<v1::TaskError>();
    t.R().error->set_code("LEASE_LOST");
    t.R().error->set_message("the server restarted while the attempt ran");
    if (!t.R().attempts.empty()) {
      v1::Attempt& a = t.R().attempts.back();
      a.set_state(v1::FAILED);
      *a.mutable_error() = *t.R().error;
      ToProto(now_, a.mutable_finished_at());
    }
    ++t.R().restarts;
    v1::Event& e = EmitTask(v1::TASK_RETRY_SCHEDULED, i);
    *e.mutable_error() = *t.R().error;
    ToProto(now_, e.mutable_retry_at());
    MakeReady(i);
  }

  v1::Event& Emit(v1::EventType type) {
    v1::Event& e = fx_.events.emplace_back();
    e.set_graph_id(g_.id);
    e.set_seq(++g_.seq);
    e.set_type(type);
    ToProto(now_, e.mutable_time());
    return e;
  }

  v1::Event& EmitTask(v1::EventType type, int32_t i) {
    // Every visible change of a task emits an event: its record follows
    // (live output changes nothing the record holds).
    if (type != v1::TASK_OUTPUT) MarkDirty(i);
    v1::Event& e = Emit(type);
    e.set_task(g_.Name(i));
    e.set_attempt(g_.tasks[i].attempt);
    e.set_queue(g_.Queue(i));
    return e;
  }

  void SetState(int32_t i, v1::TaskState s) {
    TaskRuntime& t = g_.tasks[i];
    if (t.state == v1::RUNNING && s != v1::RUNNING) ClearDeadlines(i);
    Bump(g_.counts, t.state, -1);
    Bump(g_.counts, s, +1);
    t.state = s;
  }

  // Adds a deadline of task i's running attempt; asks for a timer if it is
  // now the shard's earliest.
  void AddDeadline(int32_t i, Deadline::Kind kind, absl::Time due) {
    TaskRuntime& t = g_.tasks[i];
    (kind == Deadline::kRun ? t.R().run_due : t.R().heartbeat_due) = due;
    deadlines_.set.insert(Deadline{due, &g_, i, kind});
    if (due < deadlines_.armed) {
      deadlines_.armed = due;
      fx_.deadline_shard = deadlines_.shard;
      fx_.deadline_due = due;
    }
  }

  // The attempt of task i is over: its deadlines go.
  void ClearDeadlines(int32_t i) { EraseDeadlines(deadlines_, g_, i); }

  // PENDING (or a finished backoff) -> READY, queued.
  void MakeReady(int32_t i) {
    TaskRuntime& t = g_.tasks[i];
    SetState(i, v1::READY);
    t.backing_off = false;
    t.ready_at = now_;
    EmitTask(v1::TASK_READY, i);
    t.ready_seq = store_.next_ready_seq_.fetch_add(1, std::memory_order_relaxed);
    ReadyTask& r = Enqueue(i);
    if (t.attempt == 0) {
      r.first_ready = true;
      r.dependency_wait = now_ - g_.created_at;
    }
  }

  // Hands READY task i (its ready_seq and ready_at set) to the queues, and
  // arms its schedule-to-start timer if it has one.
  ReadyTask& Enqueue(int32_t i) {
    const TaskRuntime& t = g_.tasks[i];
    const v1::TaskSpec& spec = g_.Rest(i);
    ReadyTask& r = fx_.ready.emplace_back();
    r.graph_id = g_.id;
    r.index = i;
    r.queue = g_.Queue(i);
    r.priority = g_.defs[i].priority;
    r.ordering_key = spec.ordering_key();
    r.ready_seq = t.ready_seq;
    if (spec.timeouts().has_schedule_to_start()) {
      AttemptTimer& timer = fx_.attempt_timers.emplace_back();
      timer.graph_id = g_.id;
      timer.index = i;
      timer.ready_seq = t.ready_seq;
      timer.due = t.ready_at + FromProto(spec.timeouts().schedule_to_start());
    }
    return r;
  }

  // Arms the run-timeout and (if `heartbeat`) heartbeat timers of task i's
  // new attempt.
  void ArmAttemptTimers(int32_t i, bool heartbeat) {
    const v1::Timeouts& to = g_.Rest(i).timeouts();
    const graph::PolicyDefaults& d = store_.options_.defaults;
    const absl::Duration run = to.has_run() ? FromProto(to.run()) : d.run_timeout;
    const absl::Duration hb =
        to.has_heartbeat() ? FromProto(to.heartbeat()) : d.heartbeat_timeout;
    if (run > absl::ZeroDuration()) AddDeadline(i, Deadline::kRun, now_ + run);  // 0 = none
    if (heartbeat && hb > absl::ZeroDuration()) {
      AddDeadline(i, Deadline::kHeartbeat, now_ + hb);
    }
  }

  // A timer found the running attempt over its limit: the attempt fails with
  // `code` (retried per policy) and its executor is told to stop.
  void ExpireAttempt(int32_t i, const std::string& code,
                     const std::string& message) {
    TaskRuntime& t = g_.tasks[i];
    CancelOrder& c = fx_.cancels.emplace_back();
    FillLease(i, &c.lease);
    c.worker_id = t.R().worker_id;
    c.reason = message;
    v1::TaskResult failed;
    FillLease(i, failed.mutable_lease());
    failed.mutable_error()->set_code(code);
    failed.mutable_error()->set_message(message);
    FinishAttempt(i, failed);
  }

  // Any non-terminal state -> terminal `s`; dependents are settled by Drain().
  void Terminate(int32_t i, v1::TaskState s, const std::string& message) {
    TaskRuntime& t = g_.tasks[i];
    if (t.state == v1::RUNNING && s == v1::CANCELLED) {
      CancelOrder& c = fx_.cancels.emplace_back();
      FillLease(i, &c.lease);
      c.worker_id = t.R().worker_id;
      c.reason = message;
      if (!t.R().attempts.empty()) {
        v1::Attempt& a = t.R().attempts.back();
        a.set_state(v1::CANCELLED);
        ToProto(now_, a.mutable_finished_at());
      }
      NoteFinished(i, v1::CANCELLED, false, message);
    }
    SetState(i, s);
    t.backing_off = false;
    t.R().finished_at = now_;
    ++g_.terminal;
    ++fx_.tasks_finished;
    v1::Event& e = EmitTask(EventFor(s), i);
    if (!message.empty()) e.set_message(message);
    if (s == v1::FAILED && t.R().error) *e.mutable_error() = *t.R().error;
    if (s == v1::SUCCEEDED) {
      e.set_exit_code(t.R().exit_code);
      if (static_cast<int64_t>(t.R().output.size()) <=
          store_.options_.max_event_output_bytes) {
        e.set_data(t.R().output);
      }
    }
    worklist_.push_back(i);
    if (s == v1::FAILED && g_.spec.fail_fast() && !g_.fail_fast_fired) {
      g_.fail_fast_fired = true;
      MarkGraphDirty();
      const std::string why =
          absl::StrCat("fail_fast: task ", g_.Name(i), " failed");
      for (int32_t k = 0; k < static_cast<int32_t>(g_.tasks.size()); ++k) {
        const v1::TaskState ks = g_.tasks[k].state;
        const v1::Trigger trig = g_.defs[k].trigger;
        const bool wants_failures =
            trig == v1::ALL_DONE || trig == v1::ONE_FAILED;
        if ((ks == v1::PENDING || ks == v1::READY) && !wants_failures) {
          Terminate(k, v1::CANCELLED, why);
        }
      }
    }
  }

  // Settles the dependents of every task terminated so far (iteratively, so
  // a cascade over a million-task chain uses no stack), then finishes the
  // graph if every task is terminal.
  void Drain() {
    while (!worklist_.empty()) {
      const int32_t j = worklist_.back();
      worklist_.pop_back();
      const v1::TaskState outcome = g_.tasks[j].state;
      for (int32_t d : g_.compiled.dependents[j]) {
        TaskRuntime& td = g_.tasks[d];
        if (td.state != v1::PENDING) continue;
        --td.pending;
        if (outcome != v1::SUCCEEDED) ++td.unsuccessful;
        if (outcome == v1::FAILED) ++td.failed;
        switch (graph::Decide(g_.defs[d].trigger, td.pending,
                              td.unsuccessful, td.failed)) {
          case graph::Decision::kReady:
            MakeReady(d);
            break;
          case graph::Decision::kSkip:
            Terminate(d, v1::SKIPPED, SkipReason(g_.defs[d].trigger));
            break;
          case graph::Decision::kWait:
            break;
        }
      }
    }
    if (g_.state == v1::GRAPH_STATE_RUNNING &&
        g_.terminal == static_cast<int32_t>(g_.tasks.size())) {
      g_.state = graph::Outcome(g_.cancel_requested, g_.counts.failed(),
                                g_.counts.cancelled());
      g_.finished_at = now_;
      MarkGraphDirty();
      v1::Event& e = Emit(EventFor(g_.state));
      *e.mutable_labels() = g_.spec.labels();
      fx_.terminal_graph.emplace();
      store_.FillGraph(g_, v1::BASIC, &*fx_.terminal_graph);
      for (TerminalWaiter& w : g_.waiters) fx_.waiters.push_back(std::move(w));
      g_.waiters.clear();
    }
  }

  // Records the outcome of task i's running attempt (already fenced):
  // success, a retry after backoff, or failure.
  // Notes the end of task i's current attempt for metrics and traces.
  void NoteFinished(int32_t i, v1::TaskState outcome, bool retrying,
                    const std::string& cancel_reason) {
    const TaskRuntime& t = g_.tasks[i];
    FinishedAttempt& f = fx_.finished_attempts.emplace_back();
    f.queue = g_.Queue(i);
    f.index = i;
    f.attempt = t.attempt;
    f.ready_at = t.ready_at;
    f.dispatched_at = t.R().started_at;
    f.picked_up_at = t.R().picked_up_at;
    f.finished_at = now_;
    f.outcome = outcome;
    f.retrying = retrying;
    // Names and messages are for spans only: not copied on the hot path
    // when nothing traces.
    if (!store_.attempt_details_.load(std::memory_order_relaxed)) return;
    f.task = g_.Name(i);
    f.worker_id = t.R().worker_id;
    if (outcome == v1::CANCELLED) {
      f.error_message = cancel_reason;
    } else if (outcome != v1::SUCCEEDED && t.R().error) {
      f.error_code = t.R().error->code();
      f.error_message = t.R().error->message();
    }
  }

  void FinishAttempt(int32_t i, const v1::TaskResult& result,
                     bool picked_up_now = false) {
    TaskRuntime& t = g_.tasks[i];
    v1::Attempt& a = t.R().attempts.back();
    ToProto(now_, a.mutable_finished_at());
    if (picked_up_now && t.R().picked_up_at == absl::InfinitePast()) {
      t.R().picked_up_at = now_;
      ToProto(now_, a.mutable_picked_up_at());
    } else {
      picked_up_now = false;
    }
    a.set_exit_code(result.exit_code());
    t.R().exit_code = result.exit_code();
    const v1::TaskSpec& spec = g_.Rest(i);
    const int64_t max_output = store_.options_.max_output_bytes;
    if (result.success() &&
        static_cast<int64_t>(result.output().size()) > max_output) {
      t.R().error = std::make_unique<v1::TaskError>();
      t.R().error->set_code("OUTPUT_TOO_LARGE");
      t.R().error->set_message(absl::StrCat("output of ", result.output().size(),
                                        " bytes exceeds the limit of ",
                                        max_output));
      t.R().error->set_non_retryable(true);
    } else if (result.success()) {
      a.set_state(v1::SUCCEEDED);
      t.R().output = result.output();
      t.R().error.reset();
      NoteFinished(i, v1::SUCCEEDED, false, "");
      fx_.finished_attempts.back().picked_up_with_result = picked_up_now;
      Terminate(i, v1::SUCCEEDED, "");
      Drain();
      return;
    } else {
      t.R().error = std::make_unique<v1::TaskError>(result.error());
      if (t.R().error->code().empty()) t.R().error->set_code("FAILED");
    }
    a.set_state(v1::FAILED);
    *a.mutable_error() = *t.R().error;
    const bool retry = graph::ShouldRetry(spec, store_.options_.defaults,
                                          t.attempt - t.R().restarts, *t.R().error);
    NoteFinished(i, v1::FAILED, retry, "");
    fx_.finished_attempts.back().picked_up_with_result = picked_up_now;
    if (retry) {
      const absl::Duration delay =
          graph::Backoff(spec, store_.options_.defaults, t.attempt,
                         absl::Uniform<double>(rng_, 0.0, 1.0));
      SetState(i, v1::READY);
      t.backing_off = true;
      t.R().retry_at = now_ + delay;
      v1::Event& e = EmitTask(v1::TASK_RETRY_SCHEDULED, i);
      *e.mutable_error() = *t.R().error;
      ToProto(now_ + delay, e.mutable_retry_at());
      fx_.retries.push_back(RetryTimer{g_.id, i, t.attempt, now_ + delay});
    } else {
      Terminate(i, v1::FAILED, "");
      Drain();
    }
  }

  void FillLease(int32_t i, v1::Lease* lease) {
    lease->set_graph_id(g_.id);
    lease->set_task_index(i);
    lease->set_attempt(g_.tasks[i].attempt);
    lease->set_epoch(g_.tasks[i].R().epoch);
  }

  absl::BitGen& rng() { return rng_; }
  absl::Time now() const { return now_; }

 private:
  Store& store_;
  GraphRecord& g_;
  absl::BitGen& rng_;
  DeadlineIndex& deadlines_;
  const absl::Time now_;
  Effects& fx_;
  std::vector<int32_t> worklist_;
  std::vector<int32_t> dirty_;
  bool sealed_ = false;
};

void Store::EraseDeadlines(DeadlineIndex& index, GraphRecord& g, int32_t i) {
  if (!g.tasks[i].run) return;  // never ran: no entries
  TaskRun& run = *g.tasks[i].run;
  if (run.run_due != absl::InfiniteFuture()) {
    index.set.erase(Deadline{run.run_due, &g, i, Deadline::kRun});
    run.run_due = absl::InfiniteFuture();
  }
  if (run.heartbeat_due != absl::InfiniteFuture()) {
    index.set.erase(Deadline{run.heartbeat_due, &g, i, Deadline::kHeartbeat});
    run.heartbeat_due = absl::InfiniteFuture();
  }
}

Store::Store(StoreOptions options, persist::Journal* journal)
    : options_(std::move(options)), journal_(journal) {
  const int n = std::max(1, options_.shards);
  shards_.reserve(n);
  for (int i = 0; i < n; ++i) {
    shards_.push_back(std::make_unique<Shard>());
    absl::MutexLock lock(&shards_.back()->mu);
    shards_.back()->deadlines.shard = i;
  }
}

Store::~Store() = default;

Store::Shard& Store::ShardFor(const std::string& graph_id) const {
  const size_t h = std::hash<std::string>{}(graph_id);
  return *shards_[h % shards_.size()];
}

// Under shard.mu: the graph, or NOT_FOUND.
absl::StatusOr<Store::GraphRecord*> Store::FindLocked(
    const Shard& shard, const std::string& graph_id) {
  auto it = shard.graphs.find(graph_id);
  if (it == shard.graphs.end()) {
    return absl::NotFoundError(absl::StrCat("graph ", graph_id, " not found"));
  }
  return it->second.get();
}

// Under the graph's shard lock: the task `lease` names if that lease is the
// task's current running attempt; NOT_FOUND or ABORTED otherwise.
absl::StatusOr<Store::TaskRuntime*> Store::FenceLocked(GraphRecord& g,
                                                       const v1::Lease& lease) {
  const int32_t i = lease.task_index();
  if (g.archived) {
    return absl::AbortedError(absl::StrCat("graph ", g.id, " has finished"));
  }
  if (i < 0 || i >= static_cast<int32_t>(g.tasks.size())) {
    return absl::NotFoundError(absl::StrCat("task index ", i, " not found"));
  }
  TaskRuntime& t = g.tasks[i];
  if (t.state != v1::RUNNING || t.attempt != lease.attempt() ||
      t.R().epoch != lease.epoch()) {
    return StaleLease(lease, t.state, t.attempt);
  }
  return &t;
}

int64_t Store::graph_count() const {
  return graph_count_.load(std::memory_order_relaxed);
}

int64_t Store::archived_count() const {
  return archived_count_.load(std::memory_order_relaxed);
}

absl::StatusOr<InsertResult> Store::Insert(const std::string& graph_id,
                                           const std::string& request_id,
                                           v1::GraphSpec spec,
                                           graph::CompiledGraph compiled,
                                           absl::Time now,
                                           std::string trace_id,
                                           std::string parent_span_id,
                                           bool sampled) {
  InsertResult result;
  if (trace_id.empty()) {
    trace_id = GraphTraceId(graph_id);
    parent_span_id.clear();
    sampled = true;
  }
  const uint64_t fingerprint = request_id.empty() ? 0 : Fingerprint(spec);
  auto insert = [&]() {
    std::string spec_bytes;
    if (journal_ != nullptr) {
      // The spec is written once, as submitted; it is by far the largest
      // record (a 1,000,000-task graph is ~40 MB), so it is encoded straight
      // from the spec rather than copied into a record first, and before
      // the shard lock.
      forge::journal::v1::GraphSpecRecord r;
      r.set_version(kRecordVersion);
      r.set_id(graph_id);
      r.set_request_id(request_id);
      ToProto(now, r.mutable_created_at());
      r.set_trace_id(trace_id);
      r.set_parent_span_id(parent_span_id);
      r.set_not_sampled(!sampled);
      spec_bytes = r.SerializeAsString();
      AppendLengthDelimited(&spec_bytes,
                            forge::journal::v1::GraphSpecRecord::kSpecFieldNumber,
                            spec.SerializeAsString());
    }
    auto g = std::make_unique<GraphRecord>();
    g->id = graph_id;
    g->request_id = request_id;
    g->compiled = std::move(compiled);
    g->SetTasks(std::move(spec));
    g->created_at = now;
    g->trace_id = std::move(trace_id);
    g->parent_span_id = std::move(parent_span_id);
    g->sampled = sampled;
    const int32_t n = static_cast<int32_t>(g->defs.size());
    g->tasks.resize(n);
    for (int32_t i = 0; i < n; ++i) {
      g->tasks[i].pending = static_cast<int32_t>(g->compiled.deps[i].size());
    }
    g->counts.set_pending(n);
    Shard& shard = ShardFor(graph_id);
    absl::MutexLock lock(&shard.mu);
    GraphRecord& rec = *g;
    Transition tx(*this, rec, shard.rng, shard.deadlines, now, result.effects);
    v1::Event& e = tx.Emit(v1::GRAPH_SUBMITTED);
    *e.mutable_labels() = rec.spec.labels();
    e.set_message(rec.spec.name());
    for (int32_t root : rec.compiled.roots) tx.MakeReady(root);
    if (journal_ != nullptr) {
      result.effects.batch.Put(SpecKey(rec.id), std::move(spec_bytes));
      if (!rec.request_id.empty()) {
        forge::journal::v1::RequestRecord q;
        q.set_version(kRecordVersion);
        q.set_graph_id(rec.id);
        q.set_fingerprint(fingerprint);
        ToProto(now, q.mutable_created_at());
        result.effects.batch.Put(RequestKey(rec.request_id), q.SerializeAsString());
      }
    }
    tx.Seal();
    shard.graphs.emplace(graph_id, std::move(g));
    graph_count_.fetch_add(1, std::memory_order_relaxed);
  };
  result.graph_id = graph_id;
  if (request_id.empty()) {
    insert();
    result.created = true;
    return result;
  }
  absl::MutexLock lock(&requests_mu_);
  auto it = requests_.find(request_id);
  if (it != requests_.end() &&
      now - it->second.created_at > options_.request_window) {
    requests_.erase(it);  // past the idempotency window: a new request
    it = requests_.end();
  }
  if (it != requests_.end()) {
    if (it->second.fingerprint != fingerprint) {
      return absl::AlreadyExistsError(absl::StrCat(
          "request_id: \"", request_id, "\" was already used for graph ",
          it->second.graph_id, " with a different spec"));
    }
    result.graph_id = it->second.graph_id;
    result.created = false;
    // The graph it names may still be on its way to disk: the reply waits
    // behind an empty commit, done only after every earlier one.
    if (journal_ != nullptr) {
      result.effects.durable = persist::Durability::Commit(*journal_, {});
    }
    return result;
  }
  insert();
  requests_.emplace(request_id, RequestEntry{graph_id, fingerprint, now});
  result.created = true;
  return result;
}

namespace {

void SetTime(absl::Time t, google::protobuf::Timestamp* out) {
  if (t != absl::InfinitePast()) ToProto(t, out);
}

absl::Time GetTime(const google::protobuf::Timestamp& t) {
  return t.seconds() == 0 && t.nanos() == 0 ? absl::InfinitePast() : FromProto(t);
}

}  // namespace

forge::journal::v1::TaskRecord Store::TaskRecordOf(const TaskRuntime& t) {
  forge::journal::v1::TaskRecord r;
  r.set_version(kRecordVersion);
  r.set_state(t.state);
  r.set_backing_off(t.backing_off);
  if (t.backing_off) SetTime(t.R().retry_at, r.mutable_retry_at());
  r.set_attempt(t.attempt);
  r.set_epoch(t.R().epoch);
  r.set_exit_code(t.R().exit_code);
  r.set_ready_seq(t.ready_seq);
  r.set_worker_id(t.R().worker_id);
  r.set_output(t.R().output);
  if (t.R().error) *r.mutable_error() = *t.R().error;
  if (t.R().progress) *r.mutable_progress() = *t.R().progress;
  r.set_checkpoint(t.R().checkpoint);
  SetTime(t.ready_at, r.mutable_ready_at());
  SetTime(t.R().started_at, r.mutable_started_at());
  SetTime(t.R().finished_at, r.mutable_finished_at());
  for (const v1::Attempt& a : t.R().attempts) *r.add_attempts() = a;
  r.set_restarts(t.R().restarts);
  return r;
}

absl::StatusOr<Effects> Store::Erase(const std::string& graph_id) {
  // Lock order: requests_mu_ before the shard lock.
  absl::MutexLock requests(&requests_mu_);
  Shard& shard = ShardFor(graph_id);
  absl::MutexLock lock(&shard.mu);
  auto it = shard.graphs.find(graph_id);
  if (it == shard.graphs.end()) {
    return absl::NotFoundError(absl::StrCat("graph ", graph_id, " not found"));
  }
  Effects fx;
  fx.graph_id = graph_id;
  const std::string& request_id = it->second->request_id;
  if (journal_ != nullptr) {
    persist::Batch b;
    b.DeleteRange(GraphPrefix(graph_id), GraphEnd(graph_id));
    if (!request_id.empty()) b.Delete(RequestKey(request_id));
    fx.durable = persist::Durability::Commit(*journal_, std::move(b));
  }
  if (!request_id.empty()) {
    auto r = requests_.find(request_id);
    if (r != requests_.end() && r->second.graph_id == graph_id) requests_.erase(r);
  }
  // A graph erased with attempts still running (a submit that never became
  // durable cannot have any; this is for safety): their deadlines go too.
  GraphRecord& g = *it->second;
  for (int32_t i = 0; i < static_cast<int32_t>(g.tasks.size()); ++i) {
    EraseDeadlines(shard.deadlines, g, i);
  }
  if (g.archived) archived_count_.fetch_sub(1, std::memory_order_relaxed);
  shard.graphs.erase(it);
  graph_count_.fetch_sub(1, std::memory_order_relaxed);
  return fx;
}

void Store::RestoreRequest(const std::string& request_id,
                           const forge::journal::v1::RequestRecord& record) {
  absl::MutexLock lock(&requests_mu_);
  requests_[request_id] = RequestEntry{record.graph_id(), record.fingerprint(),
                                       GetTime(record.created_at())};
}

absl::StatusOr<Store::Rebuilt> Store::Rebuild(RecoveredGraph& rec,
                                              graph::CompiledGraph compiled) {
  auto g = std::make_unique<GraphRecord>();
  g->id = rec.spec.id();
  g->request_id = rec.spec.request_id();
  g->compiled = std::move(compiled);
  g->SetTasks(std::move(*rec.spec.mutable_spec()));
  g->created_at = GetTime(rec.spec.created_at());
  g->trace_id = rec.spec.trace_id().empty() ? GraphTraceId(g->id) : rec.spec.trace_id();
  g->parent_span_id = rec.spec.parent_span_id();
  g->sampled = !rec.spec.not_sampled();
  const int32_t n = static_cast<int32_t>(g->defs.size());
  g->tasks.resize(n);
  g->state = rec.state.state() == v1::GRAPH_STATE_UNSPECIFIED
                 ? v1::GRAPH_STATE_RUNNING
                 : rec.state.state();
  g->cancel_requested = rec.state.cancel_requested();
  g->fail_fast_fired = rec.state.fail_fast_fired();
  g->finished_at = GetTime(rec.state.finished_at());
  g->seq = rec.last_seq;
  uint64_t max_epoch = 0, max_ready_seq = 0;
  for (auto& [i, r] : rec.tasks) {
    if (i < 0 || i >= n) {
      return absl::FailedPreconditionError(absl::StrCat(
          "graph ", g->id, ": journal has task index ", i, " of ", n));
    }
    TaskRuntime& t = g->tasks[i];
    t.state = r.state();
    t.backing_off = r.backing_off();
    t.attempt = r.attempt();
    t.ready_seq = r.ready_seq();
    t.ready_at = GetTime(r.ready_at());
    // A task that never ran nor ended (READY) has no attempts' part.
    if (r.attempt() > 0 || graph::IsTerminal(r.state()) || r.has_error()) {
      TaskRun& run = t.R();
      run.retry_at = GetTime(r.retry_at());
      run.epoch = r.epoch();
      run.exit_code = r.exit_code();
      run.worker_id = r.worker_id();
      run.output = std::move(*r.mutable_output());
      if (r.has_error()) run.error = std::make_unique<v1::TaskError>(r.error());
      if (r.has_progress()) run.progress = std::make_unique<v1::Progress>(r.progress());
      run.checkpoint = std::move(*r.mutable_checkpoint());
      run.started_at = GetTime(r.started_at());
      run.finished_at = GetTime(r.finished_at());
      run.attempts.assign(r.attempts().begin(), r.attempts().end());
      run.restarts = r.restarts();
      max_epoch = std::max(max_epoch, run.epoch);
    }
    max_ready_seq = std::max(max_ready_seq, t.ready_seq);
  }
  // What Insert and the transitions keep incrementally, from the states.
  for (int32_t i = 0; i < n; ++i) {
    TaskRuntime& t = g->tasks[i];
    Bump(g->counts, t.state, +1);
    if (graph::IsTerminal(t.state)) ++g->terminal;
    t.pending = static_cast<int32_t>(g->compiled.deps[i].size());
    for (int32_t d : g->compiled.deps[i]) {
      const v1::TaskState ds = g->tasks[d].state;
      if (!graph::IsTerminal(ds)) continue;
      --t.pending;
      if (ds != v1::SUCCEEDED) ++t.unsuccessful;
      if (ds == v1::FAILED) ++t.failed;
    }
  }
  return Rebuilt{std::move(g), max_epoch, max_ready_seq};
}

namespace {
// Lease epochs and the READY order continue past everything journaled.
void RaiseTo(std::atomic<uint64_t>& next, uint64_t floor) {
  uint64_t cur = next.load();
  while (cur < floor && !next.compare_exchange_weak(cur, floor)) {
  }
}
}  // namespace

absl::StatusOr<Effects> Store::Restore(RecoveredGraph rec,
                                       graph::CompiledGraph compiled,
                                       absl::Time now) {
  ASSIGN_OR_RETURN(Rebuilt rebuilt, Rebuild(rec, std::move(compiled)));
  std::unique_ptr<GraphRecord> g = std::move(rebuilt.graph);
  const int32_t n = static_cast<int32_t>(g->defs.size());
  RaiseTo(next_epoch_, rebuilt.max_epoch + 1);
  RaiseTo(next_ready_seq_, rebuilt.max_ready_seq + 1);

  Effects fx;
  const std::string id = g->id;
  Shard& shard = ShardFor(id);
  absl::MutexLock lock(&shard.mu);
  if (shard.graphs.count(id)) {
    return absl::FailedPreconditionError(absl::StrCat("graph ", id, " restored twice"));
  }
  GraphRecord& rg = *g;
  shard.graphs.emplace(id, std::move(g));
  graph_count_.fetch_add(1, std::memory_order_relaxed);
  Transition tx(*this, rg, shard.rng, shard.deadlines, now, fx);
  fx.ready.reserve(rg.counts.ready());
  for (int32_t i = 0; i < n; ++i) {
    TaskRuntime& t = rg.tasks[i];
    if (t.state == v1::RUNNING) {
      tx.RestartAttempt(i);
    } else if (t.state == v1::READY && t.backing_off) {
      fx.retries.push_back(RetryTimer{id, i, t.attempt, t.R().retry_at});
    } else if (t.state == v1::READY) {
      tx.Enqueue(i);
    }
  }
  // The queues take the restored READY tasks in their old order (already
  // so, usually: a graph's tasks become READY mostly in index order).
  auto by_seq = [](const ReadyTask& a, const ReadyTask& b) { return a.ready_seq < b.ready_seq; };
  if (!std::is_sorted(fx.ready.begin(), fx.ready.end(), by_seq)) {
    std::sort(fx.ready.begin(), fx.ready.end(), by_seq);
  }
  tx.Drain();  // finishes a graph whose last transition was its last task's
  tx.Seal();
  return fx;
}

namespace {

// The part of a spec an archived graph keeps (its BASIC view's fields).
v1::GraphSpec SummaryOf(const v1::GraphSpec& spec) {
  v1::GraphSpec out;
  out.set_name(spec.name());
  *out.mutable_labels() = spec.labels();
  out.set_fail_fast(spec.fail_fast());
  return out;
}

}  // namespace

absl::Status Store::RestoreArchived(const RecoveredGraph& rec) {
  auto g = std::make_unique<GraphRecord>();
  g->id = rec.spec.id();
  g->request_id = rec.spec.request_id();
  g->spec = SummaryOf(rec.spec.spec());
  g->created_at = GetTime(rec.spec.created_at());
  g->trace_id = rec.spec.trace_id().empty() ? GraphTraceId(g->id) : rec.spec.trace_id();
  g->parent_span_id = rec.spec.parent_span_id();
  g->sampled = !rec.spec.not_sampled();
  g->state = rec.state.state();
  g->cancel_requested = rec.state.cancel_requested();
  g->fail_fast_fired = rec.state.fail_fast_fired();
  g->finished_at = GetTime(rec.state.finished_at());
  g->seq = rec.last_seq;
  g->archived = true;
  const int32_t n = rec.spec.spec().tasks_size();
  uint64_t max_epoch = 0, max_ready_seq = 0;
  for (const auto& [i, r] : rec.tasks) {
    if (i < 0 || i >= n) {
      return absl::FailedPreconditionError(absl::StrCat(
          "graph ", g->id, ": journal has task index ", i, " of ", n));
    }
    Bump(g->counts, r.state(), +1);
    if (graph::IsTerminal(r.state())) ++g->terminal;
    max_epoch = std::max(max_epoch, r.epoch());
    max_ready_seq = std::max(max_ready_seq, r.ready_seq());
  }
  // Tasks that never left PENDING have no record.
  Bump(g->counts, v1::PENDING, n - static_cast<int32_t>(rec.tasks.size()));
  RaiseTo(next_epoch_, max_epoch + 1);
  RaiseTo(next_ready_seq_, max_ready_seq + 1);
  const std::string id = g->id;
  Shard& shard = ShardFor(id);
  absl::MutexLock lock(&shard.mu);
  if (shard.graphs.count(id)) {
    return absl::FailedPreconditionError(absl::StrCat("graph ", id, " restored twice"));
  }
  shard.graphs.emplace(id, std::move(g));
  graph_count_.fetch_add(1, std::memory_order_relaxed);
  archived_count_.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::StatusOr<bool> Store::Archive(const std::string& graph_id) {
  if (journal_ == nullptr) return false;  // nowhere to read it back from
  // What leaves memory is destroyed after the lock is released (a big
  // graph's tasks take a while to free).
  // (g.spec holds only the graph's own fields already: it stays.)
  std::vector<TaskDef> defs;
  std::vector<std::string> queues;
  std::vector<v1::TaskSpec> rests;
  graph::CompiledGraph compiled;
  std::vector<TaskRuntime> tasks;
  absl::flat_hash_map<absl::string_view, int32_t> by_name;
  {
    Shard& shard = ShardFor(graph_id);
    absl::MutexLock lock(&shard.mu);
    ASSIGN_OR_RETURN(GraphRecord* const found, FindLocked(shard, graph_id));
    GraphRecord& g = *found;
    if (g.archived || !graph::IsTerminal(g.state)) return false;
    by_name.swap(g.by_name);  // views into defs: goes with them
    defs.swap(g.defs);
    queues.swap(g.queues);
    rests.swap(g.rests);
    std::swap(compiled, g.compiled);
    tasks.swap(g.tasks);
    g.archived = true;
  }
  archived_count_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

bool Store::IsArchived(const std::string& graph_id) const {
  Shard& shard = ShardFor(graph_id);
  absl::MutexLock lock(&shard.mu);
  auto it = shard.graphs.find(graph_id);
  return it != shard.graphs.end() && it->second->archived;
}

absl::StatusOr<std::unique_ptr<Store::GraphRecord>> Store::LoadArchived(
    const std::string& graph_id, int64_t last_seq) const {
  if (journal_ == nullptr) {
    return absl::InternalError(absl::StrCat("graph ", graph_id, " is archived without a journal"));
  }
  RecoveredGraph rec;
  bool have_spec = false;
  absl::Status failed;
  // The spec, state and task records follow the events ("e/" < "spec"):
  // the scan starts past them.
  RETURN_IF_ERROR(journal_->Scan(
      SpecKey(graph_id), GraphEnd(graph_id),
      [&](absl::string_view key, absl::string_view value) {
        const GraphKey k = ParseGraphKey(key);
        switch (k.kind) {
          case GraphKey::kSpec:
            failed = ParseRecord(key, value, &rec.spec);
            have_spec = failed.ok();
            break;
          case GraphKey::kState:
            failed = ParseRecord(key, value, &rec.state);
            break;
          case GraphKey::kTask: {
            auto& [index, r] = rec.tasks.emplace_back();
            index = k.index;
            failed = ParseRecord(key, value, &r);
            break;
          }
          default:
            break;
        }
        return failed.ok();
      }));
  RETURN_IF_ERROR(failed);
  if (!have_spec) {
    return absl::NotFoundError(absl::StrCat("graph ", graph_id, " not found"));
  }
  rec.last_seq = last_seq;
  absl::StatusOr<graph::CompiledGraph> compiled =
      graph::Compile(rec.spec.spec(), graph::NoSizeLimits());
  if (!compiled.ok()) {
    return absl::DataLossError(absl::StrCat("journal: graph ", graph_id, ": ",
                                            compiled.status().message()));
  }
  ASSIGN_OR_RETURN(Rebuilt rebuilt, Rebuild(rec, *std::move(compiled)));
  return std::move(rebuilt.graph);
}

absl::Status Store::ReadEvents(const std::string& graph_id, int64_t after_seq,
                               size_t max, std::vector<v1::Event>* out) const {
  if (journal_ == nullptr || max == 0) return absl::OkStatus();
  absl::Status failed;
  size_t taken = 0;
  RETURN_IF_ERROR(journal_->Scan(
      EventKey(graph_id, after_seq + 1), SpecKey(graph_id),
      [&](absl::string_view key, absl::string_view value) {
        forge::journal::v1::EventRecord r;
        failed = ParseRecord(key, value, &r);
        if (!failed.ok()) return false;
        if (r.event().seq() != after_seq + 1 + static_cast<int64_t>(taken)) {
          failed = absl::DataLossError(absl::StrCat(
              "journal: graph ", graph_id, ": event ", r.event().seq(),
              " where ", after_seq + 1 + static_cast<int64_t>(taken), " belongs"));
          return false;
        }
        out->push_back(std::move(*r.mutable_event()));
        if (out->back().graph_id().empty()) out->back().set_graph_id(graph_id);
        return ++taken < max;
      }));
  return failed;
}

absl::StatusOr<StartResult> Store::StartAttempt(const std::string& graph_id,
                                                int32_t index,
                                                const std::string& worker_id,
                                                absl::Time now,
                                                bool heartbeat) {
  Shard& shard = ShardFor(graph_id);
  absl::MutexLock lock(&shard.mu);
  ASSIGN_OR_RETURN(GraphRecord* const found, FindLocked(shard, graph_id));
  GraphRecord& g = *found;
  if (index < 0 || index >= static_cast<int32_t>(g.tasks.size())) {
    return absl::NotFoundError(absl::StrCat("task index ", index, " not found"));
  }
  TaskRuntime& t = g.tasks[index];
  if (t.state != v1::READY || t.backing_off) {
    return absl::FailedPreconditionError(
        absl::StrCat("task ", g.Name(index), " is ",
                     v1::TaskState_Name(t.state),
                     t.backing_off ? " (backing off)" : ""));
  }
  StartResult result;
  Transition tx(*this, g, shard.rng, shard.deadlines, now, result.effects);
  ++t.attempt;
  t.R().epoch = next_epoch_.fetch_add(1, std::memory_order_relaxed);
  t.R().worker_id = worker_id;
  result.queue = g.Queue(index);
  result.queue_wait = now - t.ready_at;
  t.R().started_at = now;
  t.R().picked_up_at = absl::InfinitePast();
  t.R().last_heartbeat = now;
  t.R().output_published = 0;
  t.R().progress.reset();
  tx.SetState(index, v1::RUNNING);
  v1::Attempt& a = t.R().attempts.emplace_back();
  a.set_number(t.attempt);
  a.set_worker_id(worker_id);
  a.set_state(v1::RUNNING);
  ToProto(now, a.mutable_started_at());
  tx.EmitTask(v1::TASK_STARTED, index).set_worker_id(worker_id);
  tx.ArmAttemptTimers(index, heartbeat);
  tx.Seal();

  const v1::TaskSpec& spec = g.Rest(index);
  v1::Assignment& as = result.assignment;
  tx.FillLease(index, as.mutable_lease());
  as.set_task(g.Name(index));
  as.set_queue(g.Queue(index));
  if (g.defs[index].rest >= 0) {
    as.set_input(spec.input());
    *as.mutable_params() = spec.params();
    *as.mutable_labels() = spec.labels();
    *as.mutable_env() = spec.env();
  }
  const absl::Duration run_timeout =
      spec.timeouts().has_run() ? FromProto(spec.timeouts().run())
                                : options_.defaults.run_timeout;
  as.set_run_timeout_ms(absl::ToInt64Milliseconds(run_timeout));
  as.set_checkpoint(t.R().checkpoint);
  as.set_traceparent(FormatTraceparent(
      TraceContext{g.trace_id, AttemptSpanId(g.id, index, t.attempt), g.sampled}));
  int64_t budget = options_.max_total_upstream_bytes;
  for (int32_t d : g.compiled.deps[index]) {
    const TaskRuntime& td = g.tasks[d];
    if (td.state != v1::SUCCEEDED) continue;
    const std::string& name = g.Name(d);
    const int64_t size = static_cast<int64_t>(td.R().output.size());
    if (size > options_.max_upstream_output_bytes || size > budget) {
      as.add_truncated_upstream(name);
      continue;
    }
    budget -= size;
    (*as.mutable_upstream_outputs())[name] = td.R().output;
  }
  return result;
}

template <typename Fn>
absl::StatusOr<Effects> Store::OnRunning(const v1::Lease& lease, absl::Time now,
                                         Fn fn) {
  Shard& shard = ShardFor(lease.graph_id());
  absl::MutexLock lock(&shard.mu);
  ASSIGN_OR_RETURN(GraphRecord* const g, FindLocked(shard, lease.graph_id()));
  ASSIGN_OR_RETURN(TaskRuntime* const t, FenceLocked(*g, lease));
  Effects fx;
  Transition tx(*this, *g, shard.rng, shard.deadlines, now, fx);
  RETURN_IF_ERROR(fn(*t, tx));
  tx.Seal();
  return fx;
}

absl::StatusOr<Effects> Store::Complete(const v1::TaskResult& result,
                                        absl::Time now, bool picked_up_now) {
  return OnRunning(result.lease(), now, [&](TaskRuntime&, Transition& tx) {
    tx.FinishAttempt(result.lease().task_index(), result, picked_up_now);
    return absl::OkStatus();
  });
}

absl::StatusOr<PickupResult> Store::PickedUp(const v1::Lease& lease,
                                             absl::Time now) {
  Shard& shard = ShardFor(lease.graph_id());
  absl::MutexLock lock(&shard.mu);
  ASSIGN_OR_RETURN(GraphRecord* const g, FindLocked(shard, lease.graph_id()));
  ASSIGN_OR_RETURN(TaskRuntime* const t, FenceLocked(*g, lease));
  if (t->R().picked_up_at != absl::InfinitePast()) {
    return absl::FailedPreconditionError("attempt already reported as started");
  }
  t->R().picked_up_at = now;
  t->R().last_heartbeat = now;
  if (!t->R().attempts.empty()) ToProto(now, t->R().attempts.back().mutable_picked_up_at());
  return PickupResult{g->Queue(lease.task_index()),
                      now - t->R().started_at};
}

absl::StatusOr<Effects> Store::Progress(const v1::TaskProgress& progress,
                                        absl::Time now) {
  return OnRunning(progress.lease(), now, [&](TaskRuntime& t, Transition& tx) {
    t.R().last_heartbeat = now;
    if (!progress.checkpoint().empty()) {
      if (static_cast<int64_t>(progress.checkpoint().size()) >
          options_.max_checkpoint_bytes) {
        return absl::InvalidArgumentError(absl::StrCat(
            "checkpoint: ", progress.checkpoint().size(),
            " bytes exceeds the limit of ", options_.max_checkpoint_bytes));
      }
      t.R().checkpoint = progress.checkpoint();
      tx.MarkDirty(progress.lease().task_index());
    }
    if (!progress.has_progress()) return absl::OkStatus();  // checkpoint alone
    t.R().progress = std::make_unique<v1::Progress>(progress.progress());
    *tx.EmitTask(v1::TASK_PROGRESS, progress.lease().task_index())
         .mutable_progress() = progress.progress();
    return absl::OkStatus();
  });
}

absl::StatusOr<Effects> Store::Output(const v1::TaskOutput& output,
                                      absl::Time now) {
  if (output.stream() != v1::STDOUT && output.stream() != v1::STDERR) {
    return absl::InvalidArgumentError("output.stream: must be STDOUT or STDERR");
  }
  const int64_t size = static_cast<int64_t>(output.data().size());
  if (size > options_.max_output_chunk_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("output.data: ", size, " bytes exceeds the chunk limit of ",
                     options_.max_output_chunk_bytes));
  }
  const v1::Lease& lease = output.lease();
  return OnRunning(lease, now, [&](TaskRuntime& t, Transition& tx) {
    t.R().last_heartbeat = now;
    if (t.R().output_published + size > options_.max_attempt_output_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "output: attempt ", lease.attempt(), " has published ",
          t.R().output_published, " bytes; the limit is ",
          options_.max_attempt_output_bytes));
    }
    t.R().output_published += size;
    if (size == 0) return absl::OkStatus();
    v1::Event& e = tx.EmitTask(v1::TASK_OUTPUT, lease.task_index());
    e.set_stream(output.stream());
    e.set_data(output.data());
    return absl::OkStatus();
  });
}

absl::Status Store::Heartbeat(const v1::Lease& lease, absl::Time now) {
  Shard& shard = ShardFor(lease.graph_id());
  absl::MutexLock lock(&shard.mu);
  ASSIGN_OR_RETURN(GraphRecord* const g, FindLocked(shard, lease.graph_id()));
  ASSIGN_OR_RETURN(TaskRuntime* const t, FenceLocked(*g, lease));
  t->R().last_heartbeat = now;
  return absl::OkStatus();
}

Effects Store::AttemptTimerDue(const AttemptTimer& timer, absl::Time now) {
  Effects fx;
  Shard& shard = ShardFor(timer.graph_id);
  absl::MutexLock lock(&shard.mu);
  absl::StatusOr<GraphRecord*> found = FindLocked(shard, timer.graph_id);
  if (!found.ok()) return fx;
  GraphRecord& g = **found;
  if (timer.index < 0 || timer.index >= static_cast<int32_t>(g.tasks.size())) {
    return fx;
  }
  const int32_t i = timer.index;
  TaskRuntime& t = g.tasks[i];
  const v1::TaskSpec& spec = g.Rest(i);
  if (t.state != v1::READY || t.backing_off || t.ready_seq != timer.ready_seq) {
    return fx;  // started (or finished) in time
  }
  Transition tx(*this, g, shard.rng, shard.deadlines, now, fx);
  t.R().error = std::make_unique<v1::TaskError>();
  t.R().error->set_code("SCHEDULE_TIMEOUT");
  t.R().error->set_message(absl::StrCat(
      "no executor took the task within ",
      absl::FormatDuration(FromProto(spec.timeouts().schedule_to_start()))));
  t.R().error->set_non_retryable(true);
  tx.Terminate(i, v1::FAILED, t.R().error->message());
  tx.Drain();
  tx.Seal();
  return fx;
}

Store::DeadlineSweep Store::ExpireDeadlines(int shard_index, absl::Time armed,
                                            absl::Time now) {
  DeadlineSweep sweep;
  Shard& shard = *shards_[shard_index];
  absl::MutexLock lock(&shard.mu);
  DeadlineIndex& index = shard.deadlines;
  const graph::PolicyDefaults& d = options_.defaults;
  while (!index.set.empty() && index.set.begin()->due <= now) {
    const Deadline e = *index.set.begin();
    index.set.erase(index.set.begin());
    // Entries exist only while their attempt runs (SetState clears them).
    GraphRecord& g = *const_cast<GraphRecord*>(e.graph);
    TaskRuntime& t = g.tasks[e.index];
    const v1::TaskSpec& spec = g.Rest(e.index);
    if (e.kind == Deadline::kRun) {
      t.R().run_due = absl::InfiniteFuture();
    } else {
      t.R().heartbeat_due = absl::InfiniteFuture();
    }
    if (t.state != v1::RUNNING) continue;
    std::string code, message;
    if (e.kind == Deadline::kHeartbeat) {
      const absl::Duration hb = spec.timeouts().has_heartbeat()
                                    ? FromProto(spec.timeouts().heartbeat())
                                    : d.heartbeat_timeout;
      const absl::Time expires = t.R().last_heartbeat + hb;
      if (expires > now) {
        // A heartbeat came since: look again then.
        t.R().heartbeat_due = expires;
        index.set.insert(Deadline{expires, &g, e.index, Deadline::kHeartbeat});
        continue;
      }
      code = "LEASE_LOST";
      message = absl::StrCat("no heartbeat from ", t.R().worker_id, " for ",
                             absl::FormatDuration(hb));
    } else {
      const absl::Duration run = spec.timeouts().has_run()
                                     ? FromProto(spec.timeouts().run())
                                     : d.run_timeout;
      code = "TIMEOUT";
      message = absl::StrCat("run timeout of ", absl::FormatDuration(run), " exceeded");
    }
    Effects& fx = sweep.effects.emplace_back();
    Transition tx(*this, g, shard.rng, shard.deadlines, now, fx);
    tx.ExpireAttempt(e.index, code, message);
    tx.Seal();
  }
  // The transitions above may have asked for timers of their own (a retry
  // starting is not one of them: it starts later, from the engine): the one
  // timer the shard needs is decided here.
  for (Effects& fx : sweep.effects) fx.deadline_shard = -1;
  const absl::Time next =
      index.set.empty() ? absl::InfiniteFuture() : index.set.begin()->due;
  if (armed == index.armed || next < index.armed) {
    // This was the shard's armed timer (or a later one is needed sooner).
    index.armed = next;
    sweep.rearm = next;
  }
  return sweep;
}

size_t Store::deadlines_held() const {
  size_t n = 0;
  for (const auto& shard : shards_) {
    absl::MutexLock lock(&shard->mu);
    n += shard->deadlines.set.size();
  }
  return n;
}

Effects Store::RetryDue(const RetryTimer& timer, absl::Time now) {
  Effects fx;
  Shard& shard = ShardFor(timer.graph_id);
  absl::MutexLock lock(&shard.mu);
  auto it = shard.graphs.find(timer.graph_id);
  if (it == shard.graphs.end()) return fx;
  GraphRecord& g = *it->second;
  if (timer.index < 0 || timer.index >= static_cast<int32_t>(g.tasks.size())) {
    return fx;
  }
  TaskRuntime& t = g.tasks[timer.index];
  if (t.state != v1::READY || !t.backing_off || t.attempt != timer.attempt) {
    return fx;
  }
  Transition tx(*this, g, shard.rng, shard.deadlines, now, fx);
  tx.MakeReady(timer.index);
  tx.Seal();
  return fx;
}

absl::StatusOr<Effects> Store::CancelGraph(const std::string& graph_id,
                                           const std::string& reason,
                                           absl::Time now) {
  Shard& shard = ShardFor(graph_id);
  absl::MutexLock lock(&shard.mu);
  ASSIGN_OR_RETURN(GraphRecord* const found, FindLocked(shard, graph_id));
  GraphRecord& g = *found;
  Effects fx;
  if (graph::IsTerminal(g.state)) return fx;
  g.cancel_requested = true;
  Transition tx(*this, g, shard.rng, shard.deadlines, now, fx);
  tx.MarkGraphDirty();
  const std::string why =
      reason.empty() ? std::string("graph cancelled") : reason;
  for (int32_t k = 0; k < static_cast<int32_t>(g.tasks.size()); ++k) {
    if (!graph::IsTerminal(g.tasks[k].state)) {
      tx.Terminate(k, v1::CANCELLED, why);
    }
  }
  tx.Drain();
  tx.Seal();
  return fx;
}

absl::StatusOr<Effects> Store::CancelTask(const std::string& graph_id,
                                          const std::string& task,
                                          const std::string& reason,
                                          absl::Time now) {
  Shard& shard = ShardFor(graph_id);
  absl::ReleasableMutexLock lock(&shard.mu);
  ASSIGN_OR_RETURN(GraphRecord* const found, FindLocked(shard, graph_id));
  GraphRecord& g = *found;
  if (g.archived) {
    // Finished: nothing to cancel, but the task must exist.
    lock.Release();
    RETURN_IF_ERROR(GetTask(graph_id, task).status());
    return Effects();
  }
  auto t = g.by_name.find(task);
  if (t == g.by_name.end()) {
    return absl::NotFoundError(
        absl::StrCat("task \"", task, "\" not found in graph ", graph_id));
  }
  Effects fx;
  if (graph::IsTerminal(g.tasks[t->second].state)) return fx;
  Transition tx(*this, g, shard.rng, shard.deadlines, now, fx);
  tx.Terminate(t->second, v1::CANCELLED,
               reason.empty() ? std::string("task cancelled") : reason);
  tx.Drain();
  tx.Seal();
  return fx;
}

absl::StatusOr<Effects> Store::AddTerminalWaiter(const std::string& graph_id,
                                                 TerminalWaiter waiter) {
  Shard& shard = ShardFor(graph_id);
  absl::MutexLock lock(&shard.mu);
  ASSIGN_OR_RETURN(GraphRecord* const found, FindLocked(shard, graph_id));
  GraphRecord& g = *found;
  Effects fx;
  if (graph::IsTerminal(g.state)) {
    // The terminal transition's records may still be in flight: an empty
    // commit is done only after every earlier one (a barrier).
    if (journal_ != nullptr) fx.durable = persist::Durability::Commit(*journal_, {});
    fx.graph_id = graph_id;
    fx.terminal_graph.emplace();
    FillGraph(g, v1::BASIC, &*fx.terminal_graph);
    fx.waiters.push_back(std::move(waiter));
  } else {
    g.waiters.push_back(std::move(waiter));
  }
  return fx;
}

void Store::FillTask(const GraphRecord& g, int32_t i, v1::Task* out) {
  const TaskRuntime& t = g.tasks[i];
  out->set_graph_id(g.id);
  v1::TaskSpec& spec = *out->mutable_spec();
  const TaskDef& def = g.defs[i];
  if (def.rest >= 0) spec = g.rests[def.rest];
  spec.set_name(def.name);
  spec.set_queue(g.queues[def.queue]);
  spec.set_priority(def.priority);
  spec.set_trigger(def.trigger);
  if (spec.depends_on_size() == 0) {  // kept as indices (SetTasks)
    for (int32_t d : g.compiled.deps[i]) spec.add_depends_on(g.Name(d));
  }
  out->set_index(i);
  out->set_state(t.state);
  out->set_attempt(t.attempt);
  for (const v1::Attempt& a : t.R().attempts) *out->add_attempts() = a;
  if (t.R().progress) *out->mutable_progress() = *t.R().progress;
  out->set_output(t.R().output);
  if (t.R().error) *out->mutable_error() = *t.R().error;
  out->set_exit_code(t.R().exit_code);
  ToProto(g.created_at, out->mutable_created_at());
  if (t.ready_at != absl::InfinitePast()) ToProto(t.ready_at, out->mutable_ready_at());
  if (t.R().started_at != absl::InfinitePast()) {
    ToProto(t.R().started_at, out->mutable_started_at());
  }
  if (t.R().finished_at != absl::InfinitePast()) {
    ToProto(t.R().finished_at, out->mutable_finished_at());
  }
}

void Store::FillGraph(const GraphRecord& g, v1::GraphView view,
                      v1::Graph* out) {
  out->set_id(g.id);
  out->set_name(g.spec.name());
  *out->mutable_labels() = g.spec.labels();
  out->set_state(g.state);
  out->set_request_id(g.request_id);
  out->set_fail_fast(g.spec.fail_fast());
  *out->mutable_counts() = g.counts;
  ToProto(g.created_at, out->mutable_created_at());
  if (g.finished_at != absl::InfinitePast()) {
    ToProto(g.finished_at, out->mutable_finished_at());
  }
  out->set_last_seq(g.seq);
  out->set_cancel_requested(g.cancel_requested);
  if (view == v1::FULL) {
    out->mutable_tasks()->Reserve(static_cast<int>(g.tasks.size()));
    for (int32_t i = 0; i < static_cast<int32_t>(g.tasks.size()); ++i) {
      FillTask(g, i, out->add_tasks());
    }
  }
}

absl::StatusOr<v1::Graph> Store::GetGraph(const std::string& graph_id,
                                          v1::GraphView view) const {
  if (view == v1::GRAPH_VIEW_UNSPECIFIED) view = v1::FULL;
  int64_t last_seq = 0;
  {
    Shard& shard = ShardFor(graph_id);
    absl::MutexLock lock(&shard.mu);
    ASSIGN_OR_RETURN(const GraphRecord* const g, FindLocked(shard, graph_id));
    if (!g->archived || view == v1::BASIC) {
      v1::Graph out;
      FillGraph(*g, view, &out);
      return out;
    }
    last_seq = g->seq;
  }
  ASSIGN_OR_RETURN(std::unique_ptr<GraphRecord> cold, LoadArchived(graph_id, last_seq));
  v1::Graph out;
  FillGraph(*cold, view, &out);
  return out;
}

absl::StatusOr<v1::Task> Store::GetTask(const std::string& graph_id,
                                        const std::string& task) const {
  std::unique_ptr<GraphRecord> cold;
  Shard& shard = ShardFor(graph_id);
  absl::ReleasableMutexLock lock(&shard.mu);
  ASSIGN_OR_RETURN(GraphRecord* found, FindLocked(shard, graph_id));
  if (found->archived) {
    const int64_t last_seq = found->seq;
    lock.Release();
    ASSIGN_OR_RETURN(cold, LoadArchived(graph_id, last_seq));
    found = cold.get();
  }
  const GraphRecord& g = *found;
  auto t = g.by_name.find(task);
  if (t == g.by_name.end()) {
    return absl::NotFoundError(
        absl::StrCat("task \"", task, "\" not found in graph ", graph_id));
  }
  v1::Task out;
  FillTask(g, t->second, &out);
  return out;
}

absl::StatusOr<v1::ListGraphsResponse> Store::ListGraphs(
    const v1::ListGraphsRequest& request) const {
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError("page_size: must not be negative");
  }
  if (request.page_size() > 1000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page_size: ", request.page_size(), " exceeds the maximum of 1000"));
  }
  if (!request.page_token().empty() && !IsUlid(request.page_token())) {
    return absl::InvalidArgumentError("page_token: malformed token");
  }
  const size_t page_size = request.page_size() == 0 ? 100 : request.page_size();
  const v1::GraphView view = request.view() == v1::GRAPH_VIEW_UNSPECIFIED
                                 ? v1::BASIC
                                 : request.view();
  auto matches = [&](const GraphRecord& g) {
    if (request.states_size() > 0 &&
        std::find(request.states().begin(), request.states().end(),
                  g.state) == request.states().end()) {
      return false;
    }
    for (const auto& [k, v] : request.labels()) {
      auto it = g.spec.labels().find(k);
      if (it == g.spec.labels().end() || it->second != v) return false;
    }
    return true;
  };
  // Newest first: walk each shard backwards from the token, take up to
  // page_size + 1 matches from each, then merge.
  std::vector<v1::Graph> found;
  // FULL views of archived graphs are read from the journal afterwards,
  // with no lock held (their BASIC view is filled meanwhile).
  absl::flat_hash_map<std::string, int64_t> cold;
  for (const auto& shard : shards_) {
    absl::MutexLock lock(&shard->mu);
    auto it = request.page_token().empty()
                  ? shard->graphs.end()
                  : shard->graphs.lower_bound(request.page_token());
    size_t taken = 0;
    while (it != shard->graphs.begin() && taken <= page_size) {
      --it;
      const GraphRecord& g = *it->second;
      if (!matches(g)) continue;
      const bool full_from_disk = view == v1::FULL && g.archived;
      FillGraph(g, full_from_disk ? v1::BASIC : view, &found.emplace_back());
      if (full_from_disk) cold.emplace(g.id, g.seq);
      ++taken;
    }
  }
  std::sort(found.begin(), found.end(),
            [](const v1::Graph& a, const v1::Graph& b) { return a.id() > b.id(); });
  v1::ListGraphsResponse response;
  const size_t n = std::min(found.size(), page_size);
  for (size_t i = 0; i < n; ++i) {
    auto c = cold.find(found[i].id());
    if (c != cold.end()) {
      absl::StatusOr<std::unique_ptr<GraphRecord>> g = LoadArchived(c->first, c->second);
      if (g.ok()) {
        found[i].Clear();
        FillGraph(**g, v1::FULL, &found[i]);
      } else if (!absl::IsNotFound(g.status())) {
        return g.status();
      }  // else erased meanwhile (retention): its summary is what there was
    }
    *response.add_graphs() = std::move(found[i]);
  }
  if (found.size() > page_size) {
    response.set_next_page_token(response.graphs(n - 1).id());
  }
  return response;
}

}  // namespace forge::store
