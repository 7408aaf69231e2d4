#include "server/engine/engine.h"

#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/ids.h"
#include "common/proto_time.h"

namespace forge {


Engine::Engine(EngineOptions options, Clock* clock, TimerService* timers,
               events::EventBus* bus)
    : options_(std::move(options)),
      clock_(clock),
      timers_(timers),
      bus_(*bus),
      store_(options_.store),
      scheduler_(options_.default_queue) {}

Engine::~Engine() = default;

EngineCounters Engine::counters() const {
  EngineCounters c;
  c.graphs_submitted = graphs_submitted_.load();
  c.tasks_submitted = tasks_submitted_.load();
  c.tasks_dispatched = tasks_dispatched_.load();
  c.leases_lost = leases_lost_.load();
  c.stale_results = stale_results_.load();
  return c;
}

// --- Clients -----------------------------------------------------------------

void Engine::Submit(const v1::SubmitGraphRequest& request,
                    Done<v1::SubmitGraphResponse> done) {
  if (draining()) {
    done(absl::UnavailableError("server is shutting down; retry elsewhere"));
    return;
  }
  if (static_cast<int64_t>(request.request_id().size()) >
      options_.max_request_id_bytes) {
    done(absl::InvalidArgumentError(absl::StrCat(
        "request_id: ", request.request_id().size(),
        " bytes exceeds the limit of ", options_.max_request_id_bytes)));
    return;
  }
  if (!request.has_graph()) {
    done(absl::InvalidArgumentError("graph: required"));
    return;
  }
  absl::StatusOr<graph::CompiledGraph> compiled =
      graph::Compile(request.graph(), options_.limits);
  if (!compiled.ok()) {
    done(absl::Status(compiled.status().code(),
                      absl::StrCat("graph.", compiled.status().message())));
    return;
  }
  if (validator_) {
    if (absl::Status s = validator_(request.graph()); !s.ok()) {
      done(absl::Status(s.code(), absl::StrCat("graph.", s.message())));
      return;
    }
  }
  const absl::Time now = clock_->Now();
  const std::string id = NewUlid(now);
  const int32_t tasks = request.graph().tasks_size();
  // The event log exists before the graph can be seen, so a Watch opened
  // right after the reply never finds the graph without its log.
  // A fresh ULID cannot collide; the bus's status only flags misuse.
  bus_.CreateGraph(id, {request.graph().labels().begin(),
                        request.graph().labels().end()})
      .IgnoreError();
  absl::StatusOr<store::InsertResult> inserted =
      store_.Insert(id, request.request_id(), request.graph(),
                    *std::move(compiled), now);
  if (!inserted.ok() || !inserted->created) bus_.DropGraph(id);
  if (!inserted.ok()) {
    done(inserted.status());
    return;
  }
  v1::SubmitGraphResponse response;
  response.set_graph_id(inserted->graph_id);
  response.set_created(inserted->created);
  if (inserted->created) {
    graphs_submitted_.fetch_add(1, std::memory_order_relaxed);
    tasks_submitted_.fetch_add(tasks, std::memory_order_relaxed);
    Apply(std::move(inserted->effects));
  }
  done(std::move(response));
}

void Engine::CancelGraph(const v1::CancelGraphRequest& request,
                         Done<v1::CancelGraphResponse> done) {
  if (request.graph_id().empty()) {
    done(absl::InvalidArgumentError("graph_id: required"));
    return;
  }
  absl::StatusOr<store::Effects> fx = store_.CancelGraph(
      request.graph_id(), request.reason(), clock_->Now());
  if (!fx.ok()) {
    done(fx.status());
    return;
  }
  Apply(*std::move(fx));
  absl::StatusOr<v1::Graph> g = store_.GetGraph(request.graph_id(), v1::BASIC);
  if (!g.ok()) {
    done(g.status());
    return;
  }
  v1::CancelGraphResponse response;
  response.set_state(g->state());
  done(std::move(response));
}

void Engine::CancelTask(const v1::CancelTaskRequest& request,
                        Done<v1::CancelTaskResponse> done) {
  if (request.graph_id().empty()) {
    done(absl::InvalidArgumentError("graph_id: required"));
    return;
  }
  if (request.task().empty()) {
    done(absl::InvalidArgumentError("task: required"));
    return;
  }
  absl::StatusOr<store::Effects> fx = store_.CancelTask(
      request.graph_id(), request.task(), request.reason(), clock_->Now());
  if (!fx.ok()) {
    done(fx.status());
    return;
  }
  Apply(*std::move(fx));
  absl::StatusOr<v1::Task> t = store_.GetTask(request.graph_id(), request.task());
  if (!t.ok()) {
    done(t.status());
    return;
  }
  v1::CancelTaskResponse response;
  response.set_state(t->state());
  done(std::move(response));
}

absl::StatusOr<v1::Graph> Engine::GetGraph(const std::string& graph_id,
                                           v1::GraphView view) const {
  if (graph_id.empty()) return absl::InvalidArgumentError("graph_id: required");
  return store_.GetGraph(graph_id, view);
}

absl::StatusOr<v1::Task> Engine::GetTask(const std::string& graph_id,
                                         const std::string& task) const {
  if (graph_id.empty()) return absl::InvalidArgumentError("graph_id: required");
  if (task.empty()) return absl::InvalidArgumentError("task: required");
  return store_.GetTask(graph_id, task);
}

absl::StatusOr<v1::ListGraphsResponse> Engine::ListGraphs(
    const v1::ListGraphsRequest& request) const {
  return store_.ListGraphs(request);
}

absl::Status Engine::WhenTerminal(const std::string& graph_id,
                                  store::TerminalWaiter waiter) {
  if (graph_id.empty()) return absl::InvalidArgumentError("graph_id: required");
  absl::StatusOr<store::Effects> fx =
      store_.AddTerminalWaiter(graph_id, std::move(waiter));
  if (!fx.ok()) return fx.status();
  Apply(*std::move(fx));
  return absl::OkStatus();
}

bool Engine::Drain(absl::Time deadline) {
  draining_.store(true, std::memory_order_release);
  scheduler_.SetPaused(true);
  return scheduler_.AwaitIdle(deadline);
}

// --- Effects -----------------------------------------------------------------

void Engine::Apply(store::Effects fx) {
  if (!fx.events.empty()) {
    // The store assigned dense seqs; a log the bus declared broken already
    // ends its subscribers with DATA_LOSS, so there is nothing more to do.
    bus_.Publish(fx.graph_id, std::move(fx.events)).IgnoreError();
  }
  if (!fx.ready.empty()) {
    std::vector<std::string> queues;
    for (store::ReadyTask& r : fx.ready) {
      if (queues.empty() || queues.back() != r.queue) queues.push_back(r.queue);
      scheduler_.Enqueue(r.queue, sched::QueuedTask{std::move(r.graph_id),
                                                    r.index, r.priority,
                                                    r.ready_seq,
                                                    std::move(r.ordering_key)});
    }
    std::sort(queues.begin(), queues.end());
    queues.erase(std::unique(queues.begin(), queues.end()), queues.end());
    for (const std::string& q : queues) Pump(q);
  }
  for (const store::RetryTimer& rt : fx.retries) {
    timers_->Schedule(rt.due, [this, rt]() {
      Apply(store_.RetryDue(rt, clock_->Now()));
    });
  }
  for (store::AttemptTimer& at : fx.attempt_timers) {
    const absl::Time due = at.due;
    timers_->Schedule(due, [this, at = std::move(at)]() {
      Apply(store_.AttemptTimerDue(at, clock_->Now()));
    });
  }
  for (const store::CancelOrder& c : fx.cancels) {
    if (std::shared_ptr<sched::Executor> e = FindExecutor(c.worker_id)) {
      e->Cancel(c.lease, c.reason);
    }
  }
  if (!fx.waiters.empty() && fx.terminal_graph.has_value()) {
    for (store::TerminalWaiter& w : fx.waiters) w(*fx.terminal_graph);
  }
}

void Engine::Pump(const std::string& queue) {
  // Batches per executor, so several assignments share one stream write.
  std::map<std::string, std::pair<std::shared_ptr<sched::Executor>,
                                  std::vector<sched::Dispatch>>>
      batches;
  while (std::optional<sched::Match> m = scheduler_.Take(queue)) {
    const std::string& executor_id = m->executor->id();
    absl::StatusOr<store::StartResult> started = store_.StartAttempt(
        m->task.graph_id, m->task.index, executor_id, clock_->Now(),
        m->executor->needs_heartbeat());
    if (!started.ok()) {
      // Cancelled or gone since it was queued: give the reservation back.
      scheduler_.Release(m->ticket);
      continue;
    }
    tasks_dispatched_.fetch_add(1, std::memory_order_relaxed);
    auto& batch = batches[executor_id];
    if (!batch.first) batch.first = m->executor;
    batch.second.push_back(
        sched::Dispatch{std::move(started->assignment), m->ticket});
    Apply(std::move(started->effects));
  }
  for (auto& [id, batch] : batches) {
    std::vector<HeldLease> held;
    held.reserve(batch.second.size());
    for (const sched::Dispatch& d : batch.second) {
      held.push_back(HeldLease{d.assignment.lease(), d.ticket});
    }
    if (!batch.first->Assign(std::move(batch.second))) {
      // The executor closed between the match and the hand-over.
      for (const HeldLease& h : held) {
        scheduler_.Release(h.ticket);
        LoseLease(h.lease, absl::StrCat("executor ", id, " closed"));
      }
    }
  }
}

void Engine::PumpExecutorQueues(const std::string& executor_id) {
  for (const std::string& q : scheduler_.QueuesOf(executor_id)) Pump(q);
}

std::shared_ptr<sched::Executor> Engine::FindExecutor(
    const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = executors_.find(id);
  return it == executors_.end() ? nullptr : it->second;
}

void Engine::LoseLease(const v1::Lease& lease, const std::string& why) {
  v1::TaskResult lost;
  *lost.mutable_lease() = lease;
  lost.set_success(false);
  lost.mutable_error()->set_code("LEASE_LOST");
  lost.mutable_error()->set_message(why);
  absl::StatusOr<store::Effects> fx = store_.Complete(lost, clock_->Now());
  if (fx.ok()) {
    leases_lost_.fetch_add(1, std::memory_order_relaxed);
    Apply(*std::move(fx));
  }
}

// --- Executors ---------------------------------------------------------------

void Engine::AttachExecutor(std::shared_ptr<sched::Executor> executor,
                            std::vector<std::string> queues, int32_t slots,
                            const std::string& display_name) {
  const std::string id = executor->id();
  {
    absl::MutexLock lock(&mu_);
    executors_[id] = executor;
  }
  v1::Event e;
  e.set_type(v1::WORKER_CONNECTED);
  e.set_worker_id(id);
  ToProto(clock_->Now(), e.mutable_time());
  e.set_message(display_name);
  bus_.PublishGlobal(std::move(e)).IgnoreError();  // names no graph: never refused
  scheduler_.AddExecutor(std::move(executor), std::move(queues), slots);
  PumpExecutorQueues(id);
}

void Engine::DetachExecutor(const std::string& executor_id,
                            std::vector<HeldLease> in_flight) {
  scheduler_.RemoveExecutor(executor_id);
  {
    absl::MutexLock lock(&mu_);
    executors_.erase(executor_id);
  }
  std::vector<std::string> queues;
  for (const HeldLease& held : in_flight) {
    queues.push_back(scheduler_.Release(held.ticket));
    LoseLease(held.lease,
              absl::StrCat("worker ", executor_id, " disconnected"));
  }
  v1::Event e;
  e.set_type(v1::WORKER_LOST);
  e.set_worker_id(executor_id);
  ToProto(clock_->Now(), e.mutable_time());
  bus_.PublishGlobal(std::move(e)).IgnoreError();  // names no graph: never refused
  // Queue concurrency freed by the lost leases may let other executors run.
  std::sort(queues.begin(), queues.end());
  queues.erase(std::unique(queues.begin(), queues.end()), queues.end());
  for (const std::string& q : queues) Pump(q);
}

absl::Status Engine::OnResult(const std::string& executor_id, uint64_t ticket,
                              const v1::TaskResult& result) {
  absl::StatusOr<store::Effects> fx = store_.Complete(result, clock_->Now());
  const std::string queue = scheduler_.Release(ticket);
  if (fx.ok()) {
    Apply(*std::move(fx));
  } else {
    stale_results_.fetch_add(1, std::memory_order_relaxed);
  }
  // The freed slot (and queue concurrency) may take the next task.
  if (!queue.empty()) Pump(queue);
  PumpExecutorQueues(executor_id);
  return fx.status();
}

absl::Status Engine::OnHeartbeat(const v1::Lease& lease) {
  return store_.Heartbeat(lease, clock_->Now());
}

absl::Status Engine::OnProgress(const v1::TaskProgress& progress) {
  absl::StatusOr<store::Effects> fx = store_.Progress(progress, clock_->Now());
  if (!fx.ok()) return fx.status();
  Apply(*std::move(fx));
  return absl::OkStatus();
}

absl::Status Engine::OnOutput(const v1::TaskOutput& output) {
  absl::StatusOr<store::Effects> fx = store_.Output(output, clock_->Now());
  if (!fx.ok()) return fx.status();
  Apply(*std::move(fx));
  return absl::OkStatus();
}

}  // namespace forge
