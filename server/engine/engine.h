// server/engine: the one place that wires store, event bus, scheduler, timer
// service and executors together.
//
// The transition pipeline, for every change of state:
//   validate -> ONE store transition (under one shard lock) -> Effects
//   -> journal (durable; immediate in ephemeral mode) -> apply the effects
//   with no lock held: events become visible, READY tasks enter their queues
//   and are matched with executors, retries are armed on the timer service,
//   cancels are pushed to executors, graph waiters are answered.
//
// Thread contract: every public method may be called from any thread,
// including gRPC reactor threads. None blocks: a method takes short mutexes
// only and returns; completion callbacks (`done`) are called exactly once, on
// the calling thread in ephemeral mode (or the journal's thread once
// durable), with no engine lock held.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "forge/v1/orchestrator.pb.h"
#include "forge/v1/types.pb.h"
#include "forge/v1/worker.pb.h"
#include "server/events/event_bus.h"
#include "common/otlp.h"
#include "server/graph/compiled_graph.h"
#include "server/obs/task_metrics.h"
#include "server/persist/journal.h"
#include "server/sched/scheduler.h"
#include "server/sched/timer_service.h"
#include "server/store/store.h"

namespace forge {

struct EngineOptions {
  graph::Limits limits;
  store::StoreOptions store;
  sched::QueueConfig default_queue;
  int64_t max_request_id_bytes = 128;
  // Finished graphs stay readable this long, then are deleted (memory and
  // journal) by the timer service.
  absl::Duration retention = absl::Hours(24);
  // Durable mode: a finished graph leaves memory this long after it
  // finished (all but its summary, see Store::Archive); until its retention
  // ends it is read from the journal. Memory holds live work, not history.
  // Not less than retention: finished graphs stay in memory.
  absl::Duration memory_retention = absl::Seconds(10);
  // Durable mode: new submits and cancels get RESOURCE_EXHAUSTED while more
  // than this many journal bytes wait to be written (the journal's own hard
  // limit is far above it, so transitions already admitted never fail).
  size_t max_journal_backlog_bytes = 64 << 20;
  // Keep the task metrics (stage histograms, outcome counters). Off when
  // nothing serves them (forged without --metrics-listen).
  bool observe = true;
  // Called once when the journal fails for good (durable mode): the server
  // stops accepting writes and turns NOT_SERVING.
  std::function<void(const absl::Status&)> on_journal_failure;
};

// What Engine::Recover() found.
struct RecoveryStats {
  int64_t graphs = 0;
  int64_t live_graphs = 0;  // not terminal: they resume
  int64_t archived_graphs = 0;  // finished past memory_retention: left on disk
  int64_t tasks = 0;
  int64_t events = 0;
  int64_t restarted_attempts = 0;  // RUNNING at the crash: re-dispatched
  absl::Duration took;
};

// Counters read by metrics and tests.
struct EngineCounters {
  int64_t graphs_submitted = 0;
  int64_t graphs_succeeded = 0;
  int64_t graphs_failed = 0;
  int64_t graphs_cancelled = 0;
  int64_t tasks_submitted = 0;
  int64_t tasks_dispatched = 0;
  int64_t leases_lost = 0;
  int64_t stale_results = 0;
};

class Engine {
 public:
  template <typename T>
  using Done = absl::AnyInvocable<void(absl::StatusOr<T>)>;

  // `journal`: durable mode (every transition's records are committed to
  // it, and what they make visible waits until they are durable); null for
  // ephemeral. It must outlive the engine's last transition.
  Engine(EngineOptions options, Clock* clock, TimerService* timers,
         events::EventBus* bus, persist::Journal* journal = nullptr);
  ~Engine();

  // Durable mode, before serving: reads the journal back. Graphs resume
  // where they were (their events replayed into the bus, seqs continuing),
  // RUNNING attempts are re-dispatched as new attempts (fenced), request_ids
  // keep their graphs, retention timers are re-armed. DATA_LOSS for records
  // that are damaged or have gaps (never skipped silently),
  // FAILED_PRECONDITION for records of a newer version.
  absl::StatusOr<RecoveryStats> Recover();

  // --- Clients -------------------------------------------------------------

  // Validates and inserts a graph; `done` gets the reply once it is durable
  // and its roots are queued. INVALID_ARGUMENT (field and reason) on a bad
  // spec; nothing is created then.
  // `traceparent`: the caller's W3C trace context (gRPC metadata); the
  // graph joins that trace (else it starts one). Ignored if malformed.
  // `request` is taken by value: a caller that can give it up (the RPC
  // handler) moves it in, and a 1,000,000-task spec is not copied.
  void Submit(forge::v1::SubmitGraphRequest request,
              Done<forge::v1::SubmitGraphResponse> done,
              const std::string& traceparent = "");
  void CancelGraph(const forge::v1::CancelGraphRequest& request,
                   Done<forge::v1::CancelGraphResponse> done);
  void CancelTask(const forge::v1::CancelTaskRequest& request,
                  Done<forge::v1::CancelTaskResponse> done);

  absl::StatusOr<forge::v1::Graph> GetGraph(const std::string& graph_id,
                                            forge::v1::GraphView view) const;
  absl::StatusOr<forge::v1::Task> GetTask(const std::string& graph_id,
                                          const std::string& task) const;
  absl::StatusOr<forge::v1::ListGraphsResponse> ListGraphs(
      const forge::v1::ListGraphsRequest& request) const;

  // Calls `waiter` once the graph is terminal (at once if it is).
  absl::Status WhenTerminal(const std::string& graph_id,
                            store::TerminalWaiter waiter);

  // A graph's events after `after_seq` (events::EventBus::SubscribeGraph),
  // read from the journal once the graph has left memory.
  absl::StatusOr<std::shared_ptr<events::Subscription>> SubscribeGraph(
      const std::string& graph_id, int64_t after_seq,
      absl::AnyInvocable<void()> notify);
  // Open graph subscriptions served from the journal (the bus counts the
  // others).
  int64_t archived_watchers() const {
    return archived_watchers_->load(std::memory_order_relaxed);
  }

  // Extra validation of submitted specs beyond graph::Compile (the command
  // runner checks that tasks on its queues carry the params its profiles
  // need). Set before the server serves; INVALID_ARGUMENT with the field.
  using SpecValidator =
      std::function<absl::Status(const forge::v1::GraphSpec& spec)>;
  void SetSpecValidator(SpecValidator validator) {
    validator_ = std::move(validator);
  }

  // --- Executors -----------------------------------------------------------

  // Registers an executor; tasks of its queues start flowing to it.
  void AttachExecutor(std::shared_ptr<sched::Executor> executor,
                      std::vector<std::string> queues, int32_t slots,
                      const std::string& display_name);

  // The executor is gone (stream ended): its running attempts fail with
  // LEASE_LOST and are retried per policy. `in_flight` are the leases it
  // held, with their queues.
  struct HeldLease {
    forge::v1::Lease lease;
    uint64_t ticket = 0;  // from the Dispatch that carried it
  };
  void DetachExecutor(const std::string& executor_id,
                      std::vector<HeldLease> in_flight);

  // A result from an executor for a lease it held under `ticket`. The
  // reservation is released whatever the outcome. `ack` gets the status to
  // acknowledge with, once the result is durable: OK, ABORTED for a stale
  // attempt or lease (nothing changed), NOT_FOUND; UNAVAILABLE if the
  // journal failed.
  using Ack = absl::AnyInvocable<void(absl::Status)>;
  // `started_too`: the executor also reported, with this result, that the
  // attempt began (it finished before a separate report went out).
  void OnResult(const std::string& executor_id, uint64_t ticket,
                const forge::v1::TaskResult& result, Ack ack,
                bool started_too = false);
  // The executor began running an attempt (pickup). Fenced; best effort.
  absl::Status OnStarted(const forge::v1::Lease& lease);
  absl::Status OnProgress(const forge::v1::TaskProgress& progress);
  // A chunk of live output of a running attempt -> TASK_OUTPUT (fenced).
  absl::Status OnOutput(const forge::v1::TaskOutput& output);
  // Keeps a running attempt's lease alive. ABORTED/NOT_FOUND: the lease is no
  // longer current (the caller tells the worker to stop).
  absl::Status OnHeartbeat(const forge::v1::Lease& lease);

  // Graceful shutdown: new submits get UNAVAILABLE, nothing new is
  // dispatched, and the call blocks until every running attempt has ended
  // or `deadline` passes; true if they all ended. Not for reactor threads.
  bool Drain(absl::Time deadline);
  bool draining() const { return draining_.load(std::memory_order_acquire); }
  // After the drain grace: the attempts still running are abandoned to the
  // next start. In durable mode their losses are not recorded (no LEASE_LOST
  // from streams ending, no failure from a runner killing its process), so
  // they stay RUNNING in the journal and the next start re-dispatches them
  // without counting them against their retry policy.
  void Abandon() { abandoning_.store(true, std::memory_order_release); }

  // Traces: spans of graphs, attempts (queue wait, run) and submits go to
  // `exporter` (null: none). Set before serving; it must outlive the engine.
  void SetSpanExporter(otlp::SpanExporter* exporter) {
    spans_ = exporter;
    store_.SetAttemptDetails(exporter != nullptr);
  }

  // --- Introspection ---------------------------------------------------------
  const obs::TaskMetrics& task_metrics() const { return task_metrics_; }
  sched::Scheduler& scheduler() { return scheduler_; }
  store::Store& store() { return store_; }
  events::EventBus& bus() { return bus_; }
  EngineCounters counters() const;

 private:
  // Applies a transition's effects once its records are durable (at once in
  // ephemeral mode); no lock held by the caller. `then` (optional) gets the
  // journal's status after they were applied (or dropped, on a failure).
  void Apply(store::Effects effects, Ack then = nullptr);
  void ApplyNow(store::Effects effects);
  // Metrics and spans of what a transition made visible.
  void Observe(const store::Effects& effects);
  void ExportSpans(const store::Effects& effects);
  // Arms the timer of a shard's attempt deadlines (Store::ExpireDeadlines).
  void ArmDeadline(int shard, absl::Time due);
  // A commit failed: nothing of that transition became visible.
  void NotDurable(const absl::Status& status);
  // New client writes (submit, cancel): UNAVAILABLE once the journal failed,
  // RESOURCE_EXHAUSTED while the disk is full or the backlog too long.
  absl::Status Admit() const;
  // Memory retention: archives a finished graph at finished_at +
  // memory_retention (durable mode).
  void ScheduleArchive(const std::string& graph_id, absl::Time finished_at);
  // Retention: deletes a finished graph at finished_at + retention.
  void ScheduleExpiry(const std::string& graph_id, absl::Time finished_at);
  // Matches READY tasks of `queue` with executor slots until one runs out,
  // then hands each executor its batch.
  void Pump(const std::string& queue);
  void PumpExecutorQueues(const std::string& executor_id);
  // Gives an executor its batch; if it closed meanwhile, the attempts fail
  // with LEASE_LOST.
  void HandOver(const std::string& executor_id,
                std::shared_ptr<sched::Executor> executor,
                std::vector<sched::Dispatch> dispatches);
  std::shared_ptr<sched::Executor> FindExecutor(const std::string& id) const;
  // Fails an attempt that could not be delivered or whose executor left.
  void LoseLease(const forge::v1::Lease& lease, const std::string& why);

  const EngineOptions options_;
  persist::Journal* const journal_;
  std::atomic<bool> journal_failed_{false};
  Clock* const clock_;
  TimerService* const timers_;
  events::EventBus& bus_;
  store::Store store_;
  sched::Scheduler scheduler_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<sched::Executor>> executors_
      ABSL_GUARDED_BY(mu_);
  // Set once before serving (SetSpecValidator), read-only afterwards.
  SpecValidator validator_;
  std::atomic<bool> draining_{false};
  std::atomic<bool> abandoning_{false};
  // Shared with the subscriptions it counts (they hold it while open).
  const std::shared_ptr<std::atomic<int64_t>> archived_watchers_ =
      std::make_shared<std::atomic<int64_t>>(0);
  std::atomic<int64_t> graphs_submitted_{0};
  std::atomic<int64_t> tasks_submitted_{0};
  std::atomic<int64_t> tasks_dispatched_{0};
  std::atomic<int64_t> leases_lost_{0};
  std::atomic<int64_t> stale_results_{0};
  std::atomic<int64_t> graphs_succeeded_{0};
  std::atomic<int64_t> graphs_failed_{0};
  std::atomic<int64_t> graphs_cancelled_{0};
  obs::TaskMetrics task_metrics_;
  otlp::SpanExporter* spans_ = nullptr;  // set before serving
};

}  // namespace forge
