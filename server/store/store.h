// server/store: the sharded store of live graphs.
//
// Every state change of a graph or task is ONE transition: it runs under the
// lock of the graph's shard, changes the in-memory state, assigns the events'
// per-graph sequence numbers, decides readiness by pending-dependency counts
// (in the same critical section as the finishing dependency: no scans, no
// polling), and RETURNS an Effects value. In durable mode it also commits its
// journal records (queued for the journal's writer: no I/O under the lock)
// and the Effects carry the promise of their durability. The caller (the
// engine) applies the effects after the lock is released, once durable:
// event bus, queues, timers, cancels, waiters.
//
// LOCK ORDER (Forge-wide; keep it):
//   Store::requests_mu_  ->  Shard::mu  ->  the journal's queue mutex (leaf)
//                                       ->  Durability::mu_ (leaf)
//   Shard locks never nest in each other. The only locks taken while a
//   shard lock is held are the journal's leaf mutexes, to commit the
//   transition's records (durable mode) so that the journal's order is the
//   store's. The engine never holds a store lock while it calls
//   the scheduler, the event bus, an executor or the journal.
//
// Thread-safe: every public method may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "forge/v1/orchestrator.pb.h"
#include "forge/v1/types.pb.h"
#include "forge/journal/v1/records.pb.h"
#include "forge/v1/worker.pb.h"
#include "server/graph/compiled_graph.h"
#include "server/graph/rules.h"
#include "server/persist/durability.h"
#include "server/persist/journal.h"

namespace forge::store {

// A task that became READY and must enter its queue.
struct ReadyTask {
  std::string graph_id;
  int32_t index = 0;
  std::string queue;
  int32_t priority = 0;
  std::string ordering_key;
  // Store-wide order in which tasks became READY: FIFO among equal
  // priorities, whatever order the effects are applied in.
  uint64_t ready_seq = 0;
  // First READY period of the task (not a retry): how long it waited for
  // its dependencies since the graph was submitted.
  bool first_ready = false;
  absl::Duration dependency_wait;
};

// An attempt that ended in this transition (metrics and traces).
struct FinishedAttempt {
  std::string queue;
  // task, worker_id, error_*: only with Store::SetAttemptDetails(true).
  std::string task;
  int32_t index = 0;
  int32_t attempt = 0;
  std::string worker_id;
  absl::Time ready_at;       // its READY period began
  absl::Time dispatched_at;  // leased to the executor
  // The executor reported it began (InfinitePast: not reported).
  absl::Time picked_up_at = absl::InfinitePast();
  // The pickup was reported with the result itself (a task that finished
  // before its executor flushed its "started"): observe it now.
  bool picked_up_with_result = false;
  absl::Time finished_at;
  // SUCCEEDED, FAILED (retried or not) or CANCELLED.
  forge::v1::TaskState outcome = forge::v1::TASK_STATE_UNSPECIFIED;
  bool retrying = false;
  std::string error_code;
  std::string error_message;
};

// A failed attempt that will be retried once its backoff has passed.
struct RetryTimer {
  std::string graph_id;
  int32_t index = 0;
  int32_t attempt = 0;  // the attempt that failed
  absl::Time due;
};

// The schedule-to-start deadline of one READY period, armed on the timer
// service. Fenced when it fires: a timer of a READY period that is over does
// nothing. (Run timeouts and heartbeat expiry live in the shard's deadline
// index instead; see Store::ExpireDeadlines.)
struct AttemptTimer {
  std::string graph_id;
  int32_t index = 0;
  uint64_t ready_seq = 0;  // the READY period it guards
  absl::Time due;
};

// A running attempt whose executor must be told to stop.
struct CancelOrder {
  forge::v1::Lease lease;
  std::string worker_id;
  std::string reason;
};

// Called once when a graph becomes terminal (or at once if it already is).
using TerminalWaiter = absl::AnyInvocable<void(const forge::v1::Graph&)>;

// What a transition asks the world to do, in this order, once its journal
// records are durable.
struct Effects {
  std::string graph_id;
  // Durable mode: the promise of the transition's journal records (its
  // events, the tasks and graph state it changed; see records.h), committed
  // under the shard lock so the journal's order is the store's. Apply the
  // rest only once it is resolved OK. Null when nothing was journaled (or
  // ephemeral): apply at once.
  std::shared_ptr<persist::Durability> durable;
  // Records being gathered by the transition (empty once committed).
  persist::Batch batch;
  std::vector<forge::v1::Event> events;  // dense seqs, in order
  std::vector<ReadyTask> ready;
  std::vector<RetryTimer> retries;
  std::vector<AttemptTimer> attempt_timers;
  std::vector<CancelOrder> cancels;
  // Set when the graph became terminal in this transition.
  std::optional<forge::v1::Graph> terminal_graph;
  std::vector<TerminalWaiter> waiters;
  // Counters for metrics.
  int32_t tasks_finished = 0;
  // The shard's earliest attempt deadline moved earlier: arm a timer for
  // `deadline_due` that calls Store::ExpireDeadlines(deadline_shard, ...).
  // Arm it at once (not after durability): an expiry is a transition of its
  // own, ordered after this one anyway.
  int deadline_shard = -1;
  absl::Time deadline_due;
  std::vector<FinishedAttempt> finished_attempts;
  // The graph's trace context; set when finished_attempts or
  // terminal_graph are (the spans of what ended).
  std::string trace_id;
  std::string trace_parent_span_id;
  bool trace_sampled = true;

  bool empty() const {
    return batch.empty() && events.empty() && ready.empty() && retries.empty() &&
           attempt_timers.empty() && cancels.empty() && waiters.empty();
  }
};

struct StoreOptions {
  int shards = 16;
  // How long a request_id keeps returning the graph it created.
  absl::Duration request_window = absl::Hours(24);
  graph::PolicyDefaults defaults;
  // Upstream outputs handed to an assignment: per dependency and in total.
  int64_t max_upstream_output_bytes = 64 << 10;
  int64_t max_total_upstream_bytes = 1 << 20;
  // Largest output kept for a task (bigger outputs are refused with
  // INVALID_ARGUMENT at completion).
  int64_t max_output_bytes = 4 << 20;
  // Live output (TASK_OUTPUT): largest chunk, and most bytes one attempt may
  // publish (a safety net for the event log's memory; the command runner caps
  // its own output well below it).
  int64_t max_output_chunk_bytes = 64 << 10;
  int64_t max_attempt_output_bytes = 8 << 20;
  // Largest checkpoint an attempt may report.
  int64_t max_checkpoint_bytes = 1 << 20;
  // Outputs up to this size are also carried by the TASK_SUCCEEDED event.
  int64_t max_event_output_bytes = 4 << 10;
};

// Result of Store::Insert.
struct InsertResult {
  std::string graph_id;
  bool created = false;
  Effects effects;
};

// A graph read back from the journal (Store::Restore).
struct RecoveredGraph {
  forge::journal::v1::GraphSpecRecord spec;
  forge::journal::v1::GraphStateRecord state;  // default: RUNNING
  // A deque: a big graph's records are not moved as more are read.
  std::deque<std::pair<int32_t, forge::journal::v1::TaskRecord>> tasks;
  int64_t last_seq = 0;  // its last journaled event
};

// Result of Store::StartAttempt.
struct StartResult {
  forge::v1::Assignment assignment;
  Effects effects;
  std::string queue;
  absl::Duration queue_wait;  // READY -> dispatched
};

// Result of Store::PickedUp.
struct PickupResult {
  std::string queue;
  absl::Duration pickup;  // dispatched -> the executor began
};

class Store {
 public:
  // `journal`: durable mode, every transition commits its records to it
  // (under the shard lock). Null: ephemeral, nothing is serialized.
  explicit Store(StoreOptions options, persist::Journal* journal = nullptr);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Inserts a validated graph under `graph_id`. If `request_id` is not empty
  // and an earlier insert used it, nothing is created and the earlier graph's
  // id is returned with created=false (ALREADY_EXISTS if that earlier graph
  // was submitted with a different spec). The effects hold GRAPH_SUBMITTED,
  // then TASK_READY for each root, and the roots as ready tasks.
  // `trace_id`/`parent_span_id`: the submitter's trace context (W3C hex);
  // an empty trace_id starts a trace whose id derives from the graph id.
  // `sampled` false: the caller's trace is not sampled; nothing of the graph
  // is exported and its assignments say so.
  absl::StatusOr<InsertResult> Insert(const std::string& graph_id,
                                      const std::string& request_id,
                                      forge::v1::GraphSpec spec,
                                      graph::CompiledGraph compiled,
                                      absl::Time now,
                                      std::string trace_id = "",
                                      std::string parent_span_id = "",
                                      bool sampled = true);

  // Recovery: puts back a graph read from the journal (compiled from its
  // spec by the caller), with pending counts recomputed from its tasks'
  // states. The effects resume it: READY tasks queued again in their old
  // order, backoffs and schedule-to-start deadlines re-armed, and every
  // attempt that was RUNNING ended by the restart (LEASE_LOST "server
  // restarted", fenced: a late result of it is refused) and its task READY at
  // once for a new attempt that does not count against its retry policy;
  // those changes carry their own events and records. Lease epochs and the
  // READY order continue past the journal's. FAILED_PRECONDITION for records
  // that do not fit the spec (a task index out of range).
  absl::StatusOr<Effects> Restore(RecoveredGraph recovered,
                                  graph::CompiledGraph compiled, absl::Time now);
  // Retention: forgets a graph, in memory and (durable mode) in the journal
  // (its whole key range, and its request_id). NOT_FOUND if unknown.
  absl::StatusOr<Effects> Erase(const std::string& graph_id);

  // Memory retention (durable mode): a finished graph leaves memory but for
  // its summary (the BASIC view, which List, WaitGraph and a BASIC Get
  // need). Reads that need more (a FULL view, a task, the task a cancel
  // names) are then served from the journal, outside the shard lock; its
  // events are read with ReadEvents. Does nothing to a graph that is not
  // terminal or already archived (returns false then); NOT_FOUND if unknown.
  absl::StatusOr<bool> Archive(const std::string& graph_id);
  // Recovery: a finished graph put back archived (nothing compiled, no
  // task held), with its counts from its task records.
  absl::Status RestoreArchived(const RecoveredGraph& recovered);
  bool IsArchived(const std::string& graph_id) const;
  // Up to `max` journaled events of graph `graph_id` after `after_seq`, in
  // order, appended to `out` (durable mode; for archived graphs).
  absl::Status ReadEvents(const std::string& graph_id, int64_t after_seq,
                          size_t max, std::vector<forge::v1::Event>* out) const;

  // Recovery: an idempotency key read from the journal.
  void RestoreRequest(const std::string& request_id,
                      const forge::journal::v1::RequestRecord& record);

  // READY -> RUNNING: leases task `index` of `graph_id` to `worker_id` as a
  // new attempt. FAILED_PRECONDITION if the task is no longer READY (it was
  // cancelled, or is waiting for a retry backoff), NOT_FOUND if the graph is
  // gone. The assignment carries the input, params and upstream outputs.
  // `heartbeat`: arm the heartbeat lease timer (false for executors that
  // supervise the attempt themselves, such as the in-process command runner;
  // the run timeout still applies).
  absl::StatusOr<StartResult> StartAttempt(const std::string& graph_id,
                                           int32_t index,
                                           const std::string& worker_id,
                                           absl::Time now,
                                           bool heartbeat = true);

  // Records the outcome of the attempt named by result.lease(). Fenced: a
  // result whose (attempt, epoch) is not the task's current running one is
  // refused with ABORTED and changes nothing; NOT_FOUND for an unknown graph
  // or task index.
  // `picked_up_now`: the executor reported, with this result, that it began
  // the attempt (it finished before a separate report went out).
  absl::StatusOr<Effects> Complete(const forge::v1::TaskResult& result,
                                   absl::Time now, bool picked_up_now = false);

  // The executor began running the attempt (fenced like Complete; once per
  // attempt: FAILED_PRECONDITION for a second report). Counts as a sign of
  // life. Journals nothing by itself (the time rides along with the task's
  // next record).
  absl::StatusOr<PickupResult> PickedUp(const forge::v1::Lease& lease,
                                        absl::Time now);

  // Records progress of the running attempt (fenced like Complete).
  absl::StatusOr<Effects> Progress(const forge::v1::TaskProgress& progress,
                                   absl::Time now);

  // Publishes a chunk of the running attempt's live output as a TASK_OUTPUT
  // event (fenced like Complete; counts as a sign of life). INVALID_ARGUMENT
  // for a chunk over max_output_chunk_bytes or an unknown stream,
  // RESOURCE_EXHAUSTED once the attempt has published
  // max_attempt_output_bytes.
  absl::StatusOr<Effects> Output(const forge::v1::TaskOutput& output,
                                 absl::Time now);

  // Keeps the lease of a running attempt alive (fenced like Complete).
  absl::Status Heartbeat(const forge::v1::Lease& lease, absl::Time now);

  // A schedule-to-start timer fired: a task still waiting in the same READY
  // period fails with SCHEDULE_TIMEOUT (not retried). No effect if that
  // READY period is over.
  Effects AttemptTimerDue(const AttemptTimer& timer, absl::Time now);

  // A shard's deadline timer (Effects::deadline_shard) fired for `armed`:
  // attempts past their run timeout fail with TIMEOUT, those with no
  // heartbeat within the heartbeat timeout with LEASE_LOST (both push a
  // cancel to the executor and follow the retry policy); one Effects per
  // expired attempt. `rearm`: the next timer to arm (InfiniteFuture: none).
  struct DeadlineSweep {
    std::vector<Effects> effects;
    absl::Time rearm = absl::InfiniteFuture();
  };
  DeadlineSweep ExpireDeadlines(int shard, absl::Time armed, absl::Time now);
  // Attempt deadlines held (tests: they do not outlive their attempts).
  size_t deadlines_held() const;

  // A retry backoff ended: READY (backing off) -> queued again, with a
  // TASK_READY event. No effect if the task moved on since.
  Effects RetryDue(const RetryTimer& timer, absl::Time now);

  // Cancels every non-terminal task. Idempotent (a terminal graph: no
  // effects). NOT_FOUND for an unknown graph.
  absl::StatusOr<Effects> CancelGraph(const std::string& graph_id,
                                      const std::string& reason,
                                      absl::Time now);

  // Cancels one task; dependents follow their triggers. Idempotent.
  // NOT_FOUND for an unknown graph or task.
  absl::StatusOr<Effects> CancelTask(const std::string& graph_id,
                                     const std::string& task,
                                     const std::string& reason,
                                     absl::Time now);

  // Registers `waiter` to be called when the graph is terminal. Returns
  // effects holding the waiter itself if the graph already is (so it is
  // called by the caller, with no lock held). NOT_FOUND for an unknown graph.
  absl::StatusOr<Effects> AddTerminalWaiter(const std::string& graph_id,
                                            TerminalWaiter waiter);

  // Reads. Views: BASIC (no tasks) or FULL.
  absl::StatusOr<forge::v1::Graph> GetGraph(const std::string& graph_id,
                                            forge::v1::GraphView view) const;
  absl::StatusOr<forge::v1::Task> GetTask(const std::string& graph_id,
                                          const std::string& task) const;
  // Newest first; page token = the last id of the previous page.
  absl::StatusOr<forge::v1::ListGraphsResponse> ListGraphs(
      const forge::v1::ListGraphsRequest& request) const;

  // Number of graphs held (all states), and how many of them are archived.
  int64_t graph_count() const;
  int64_t archived_count() const;

  // FinishedAttempt carries its task name, worker id and error (for spans)
  // only when asked for (the engine does when it traces).
  void SetAttemptDetails(bool on) { attempt_details_.store(on, std::memory_order_relaxed); }

 private:
  struct TaskRuntime;
  struct GraphRecord;
  // The run-timeout and heartbeat deadlines of the shard's running
  // attempts, in due order: an entry is added when an attempt starts and
  // removed when it ends, so only live attempts cost anything (a timer per
  // attempt would linger until its 600 s default ran out). The engine keeps
  // one timer-service timer per shard, for the earliest entry.
  struct Deadline {
    enum Kind : int32_t { kRun = 0, kHeartbeat = 1 };
    absl::Time due;
    const GraphRecord* graph = nullptr;
    int32_t index = 0;
    int32_t kind = kRun;
    bool operator<(const Deadline& o) const {
      return std::tie(due, graph, index, kind) < std::tie(o.due, o.graph, o.index, o.kind);
    }
  };
  struct DeadlineIndex {
    int shard = 0;
    absl::btree_set<Deadline> set;
    // Due time of the earliest timer the engine was asked to arm and that
    // has not fired yet (InfiniteFuture: none).
    absl::Time armed = absl::InfiniteFuture();
  };
  struct Shard {
    mutable absl::Mutex mu;
    absl::btree_map<std::string, std::unique_ptr<GraphRecord>> graphs
        ABSL_GUARDED_BY(mu);
    absl::BitGen rng ABSL_GUARDED_BY(mu);
    DeadlineIndex deadlines ABSL_GUARDED_BY(mu);
  };
  struct RequestEntry {
    std::string graph_id;
    uint64_t fingerprint = 0;
    absl::Time created_at;
  };

  Shard& ShardFor(const std::string& graph_id) const;
  // Removes the deadline entries of task i's attempt (its shard lock held).
  static void EraseDeadlines(DeadlineIndex& index, GraphRecord& g, int32_t i);
  static absl::StatusOr<GraphRecord*> FindLocked(const Shard& shard,
                                                 const std::string& graph_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  static absl::StatusOr<TaskRuntime*> FenceLocked(GraphRecord& g,
                                                  const forge::v1::Lease& lease);
  // Fill API views of a record; callers hold its shard lock.
  static void FillGraph(const GraphRecord& g, forge::v1::GraphView view,
                        forge::v1::Graph* out);
  static void FillTask(const GraphRecord& g, int32_t index,
                       forge::v1::Task* out);

  // A graph record from its journal records (recovery, cold reads), with
  // the largest lease epoch and READY order it holds. FAILED_PRECONDITION
  // for a task index outside the spec.
  struct Rebuilt;
  static absl::StatusOr<Rebuilt> Rebuild(RecoveredGraph& rec,
                                         graph::CompiledGraph compiled);
  // An archived graph read back whole from the journal (no lock held).
  // NOT_FOUND if it is no longer there (retention).
  absl::StatusOr<std::unique_ptr<GraphRecord>> LoadArchived(
      const std::string& graph_id, int64_t last_seq) const;

  // A task's journal record (durable mode).
  static forge::journal::v1::TaskRecord TaskRecordOf(const TaskRuntime& t);

  // Transition helpers; all run under the graph's shard lock.
  class Transition;
  // Runs `fn(task, transition)` under the shard lock once `lease` is fenced
  // as its task's current running attempt; returns the transition's effects,
  // or fn's error (nothing is published then).
  template <typename Fn>
  absl::StatusOr<Effects> OnRunning(const forge::v1::Lease& lease,
                                    absl::Time now, Fn fn);

  const StoreOptions options_;
  persist::Journal* const journal_;
  std::vector<std::unique_ptr<Shard>> shards_;

  // Held across an insert that carries a request_id, so two concurrent
  // submits with the same request_id create one graph. Taken before a shard
  // lock, never after.
  absl::Mutex requests_mu_;
  absl::flat_hash_map<std::string, RequestEntry> requests_
      ABSL_GUARDED_BY(requests_mu_);

  std::atomic<uint64_t> next_ready_seq_{1};
  std::atomic<uint64_t> next_epoch_{1};
  std::atomic<int64_t> graph_count_{0};
  std::atomic<int64_t> archived_count_{0};
  std::atomic<bool> attempt_details_{false};
};

}  // namespace forge::store
