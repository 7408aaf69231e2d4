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
#include "server/graph/compiled_graph.h"
#include "server/sched/scheduler.h"
#include "server/sched/timer_service.h"
#include "server/store/store.h"

namespace forge {

struct EngineOptions {
  graph::Limits limits;
  store::StoreOptions store;
  sched::QueueConfig default_queue;
  int64_t max_request_id_bytes = 128;
};

// Counters read by metrics and tests.
struct EngineCounters {
  int64_t graphs_submitted = 0;
  int64_t tasks_submitted = 0;
  int64_t tasks_dispatched = 0;
  int64_t leases_lost = 0;
  int64_t stale_results = 0;
};

class Engine {
 public:
  template <typename T>
  using Done = absl::AnyInvocable<void(absl::StatusOr<T>)>;

  Engine(EngineOptions options, Clock* clock, TimerService* timers,
         events::EventBus* bus);
  ~Engine();

  // --- Clients -------------------------------------------------------------

  // Validates and inserts a graph; `done` gets the reply once it is durable
  // and its roots are queued. INVALID_ARGUMENT (field and reason) on a bad
  // spec; nothing is created then.
  void Submit(const forge::v1::SubmitGraphRequest& request,
              Done<forge::v1::SubmitGraphResponse> done);
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
  // reservation is released whatever the outcome. Returns the ack status:
  // OK, ABORTED for a stale attempt or lease (nothing changed), NOT_FOUND.
  absl::Status OnResult(const std::string& executor_id, uint64_t ticket,
                        const forge::v1::TaskResult& result);
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

  // --- Introspection ---------------------------------------------------------
  sched::Scheduler& scheduler() { return scheduler_; }
  store::Store& store() { return store_; }
  events::EventBus& bus() { return bus_; }
  EngineCounters counters() const;

 private:
  // Applies a transition's effects; no lock held by the caller.
  void Apply(store::Effects effects);
  // Matches READY tasks of `queue` with executor slots until one runs out,
  // then hands each executor its batch.
  void Pump(const std::string& queue);
  void PumpExecutorQueues(const std::string& executor_id);
  std::shared_ptr<sched::Executor> FindExecutor(const std::string& id) const;
  // Fails an attempt that could not be delivered or whose executor left.
  void LoseLease(const forge::v1::Lease& lease, const std::string& why);

  const EngineOptions options_;
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
  std::atomic<int64_t> graphs_submitted_{0};
  std::atomic<int64_t> tasks_submitted_{0};
  std::atomic<int64_t> tasks_dispatched_{0};
  std::atomic<int64_t> leases_lost_{0};
  std::atomic<int64_t> stale_results_{0};
};

}  // namespace forge
