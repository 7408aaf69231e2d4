#include "server/api/orchestrator_service.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/proto_time.h"
#include "common/tsan.h"
#include "server/api/status.h"

namespace forge::api {

namespace v1 = ::forge::v1;

namespace {

// Finishes a unary call with the status of `s`.
grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                    const absl::Status& s) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  FORGE_TSAN_HANDOFF(reactor);
  reactor->Finish(ToGrpc(s));
  return reactor;
}

// WaitGraph: finishes when the graph is terminal, when the request's timeout
// elapses (with the graph as it is), or when the call is cancelled (its
// deadline passed or the client left). Exactly one of them finishes it.
class WaitReactor final : public grpc::ServerUnaryReactor {
 public:
  WaitReactor(Engine& engine, TimerService& timers,
              const v1::WaitGraphRequest& request,
              v1::WaitGraphResponse* response)
      : engine_(engine),
        timers_(timers),
        state_(std::make_shared<State>()),
        view_(request.view() == v1::GRAPH_VIEW_UNSPECIFIED ? v1::FULL
                                                           : request.view()),
        graph_id_(request.graph_id()) {
    state_->reactor = this;
    state_->response = response;
    if (graph_id_.empty()) {
      Complete(state_, absl::InvalidArgumentError("graph_id: required"));
      return;
    }
    if (request.has_timeout()) {
      const absl::Duration timeout = FromProto(request.timeout());
      if (timeout < absl::ZeroDuration()) {
        Complete(state_, absl::InvalidArgumentError("timeout: must not be negative"));
        return;
      }
      std::shared_ptr<State> state = state_;
      Engine* eng = &engine_;
      const std::string id = graph_id_;
      const v1::GraphView view = view_;
      timer_ = timers_.ScheduleAfter(timeout, [state, eng, id, view]() {
        Complete(state, eng->GetGraph(id, view));
      });
    }
    std::shared_ptr<State> state = state_;
    Engine* eng = &engine_;
    const std::string id = graph_id_;
    const v1::GraphView view = view_;
    absl::Status s = engine_.WhenTerminal(
        graph_id_, [state, eng, id, view](const v1::Graph& g) {
          if (view == v1::BASIC) {
            Complete(state, g);
          } else {
            Complete(state, eng->GetGraph(id, view));
          }
        });
    if (!s.ok()) Complete(state_, s);
  }

  void OnCancel() override {
    FORGE_TSAN_RECEIVE(this);
    Complete(state_, absl::CancelledError("call cancelled"));
  }

  void OnDone() override {
    FORGE_TSAN_RECEIVE(this);
    {
      absl::MutexLock lock(&state_->mu);
      state_->done = true;
      state_->reactor = nullptr;
    }
    if (timer_ != 0) timers_.Cancel(timer_);
    delete this;
  }

 private:
  struct State {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    WaitReactor* reactor ABSL_GUARDED_BY(mu) = nullptr;
    v1::WaitGraphResponse* response ABSL_GUARDED_BY(mu) = nullptr;
  };

  static void Complete(const std::shared_ptr<State>& state,
                       absl::StatusOr<v1::Graph> graph) {
    WaitReactor* reactor;
    {
      absl::MutexLock lock(&state->mu);
      if (state->done) return;
      state->done = true;
      reactor = state->reactor;
      if (graph.ok()) {
        state->response->set_terminal(graph::IsTerminal(graph->state()));
        *state->response->mutable_graph() = *std::move(graph);
      }
    }
    // Finish is called once, outside the lock; the reactor lives until
    // OnDone, which cannot run before Finish.
    FORGE_TSAN_HANDOFF(reactor);
    reactor->Finish(ToGrpc(graph.status()));
  }

  Engine& engine_;
  TimerService& timers_;
  std::shared_ptr<State> state_;
  const v1::GraphView view_;
  const std::string graph_id_;
  TimerService::TimerId timer_ = 0;
};

// Watch: a cursor on the event bus feeding one write at a time.
class WatchReactor final : public grpc::ServerWriteReactor<v1::WatchResponse> {
 public:
  WatchReactor(Engine& engine, TimerService& timers,
               const WatchOptions& options, grpc::CallbackServerContext* context,
               const v1::WatchRequest& request)
      : timers_(timers),
        options_(options),
        cancel_handle_(std::make_shared<CancelHandle>()) {
    cancel_handle_->context = context;
    absl::Status s = Subscribe(engine, request);
    if (!s.ok()) {
      {
        absl::MutexLock lock(&mu_);
        finished_ = true;
      }
      FORGE_TSAN_HANDOFF(this);
      Finish(ToGrpc(s));
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      started_ = true;
    }
    Pump();
  }

  void OnWriteDone(bool ok) override {
    FORGE_TSAN_RECEIVE(this);
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      // A write may complete (ok) after OnCancel ran while it was in flight:
      // OnCancel left the Finish to this callback, so the call ends here
      // either way (else it would never end and the server's shutdown would
      // wait for it forever).
      if (!ok || cancelled_) {
        if (finished_) return;
        finished_ = true;
        ok = false;
      }
    }
    if (!ok) {
      FORGE_TSAN_HANDOFF(this);
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client gone"));
      return;
    }
    Pump();
  }

  void OnCancel() override {
    FORGE_TSAN_RECEIVE(this);
    bool finish = false;
    {
      absl::MutexLock lock(&mu_);
      if (!finished_ && !writing_) {
        finished_ = true;
        finish = true;
      }
      cancelled_ = true;
    }
    if (finish) {
      FORGE_TSAN_HANDOFF(this);
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
    }
  }

  void OnDone() override {
    FORGE_TSAN_RECEIVE(this);
    // Close waits for a notify running on another thread; no lock is held.
    if (sub_) sub_->Close();
    {
      absl::MutexLock lock(&cancel_handle_->mu);
      cancel_handle_->context = nullptr;
    }
    TimerService::TimerId timer;
    {
      absl::MutexLock lock(&mu_);
      timer = stuck_timer_;
    }
    if (timer != 0) timers_.Cancel(timer);
    delete this;
  }

 private:
  absl::Status Subscribe(Engine& engine, const v1::WatchRequest& request) {
    auto notify = [this]() { Pump(); };
    if (request.has_all()) {
      const v1::GlobalWatch& all = request.all();
      events::GlobalFilter filter;
      filter.labels.insert(all.labels().begin(), all.labels().end());
      filter.queues.assign(all.queues().begin(), all.queues().end());
      for (int t : all.types()) {
        filter.types.push_back(static_cast<v1::EventType>(t));
      }
      absl::StatusOr<std::shared_ptr<events::Subscription>> sub =
          engine.bus().SubscribeAll(all.resume_token(), std::move(filter),
                                    notify);
      if (!sub.ok()) return sub.status();
      sub_ = *std::move(sub);
      return absl::OkStatus();
    }
    if (!request.has_graph()) {
      return absl::InvalidArgumentError("target: set graph or all");
    }
    const v1::GraphWatch& gw = request.graph();
    if (gw.graph_id().empty()) {
      return absl::InvalidArgumentError("graph.graph_id: required");
    }
    if (gw.after_seq() < 0) {
      return absl::InvalidArgumentError("graph.after_seq: must not be negative");
    }
    int64_t after = gw.after_seq();
    if (after == 0 && !gw.replay()) {
      absl::StatusOr<v1::Graph> snap =
          engine.GetGraph(gw.graph_id(), v1::FULL);
      if (!snap.ok()) return snap.status();
      after = snap->last_seq();
      absl::MutexLock lock(&mu_);
      *pending_.mutable_snapshot() = *std::move(snap);
      has_pending_ = true;
    }
    absl::StatusOr<std::shared_ptr<events::Subscription>> sub =
        engine.SubscribeGraph(gw.graph_id(), after, notify);
    if (!sub.ok()) return sub.status();
    sub_ = *std::move(sub);
    return absl::OkStatus();
  }

  // Starts the next write if none is in flight and there is something to
  // send; ends the call when the subscription ends. Called from the
  // constructor, OnWriteDone and the bus's notify (any thread).
  void Pump() {
    enum { kNothing, kWrite, kWriteAndFinish, kFinish, kCancelLater } action =
        kNothing;
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      if (finished_ || !started_ || cancelled_) return;
      if (writing_) {
        // A cut-off subscriber whose write does not complete (the client
        // stopped reading) is cancelled after a grace period.
        if (sub_->Overflowed() && !stuck_armed_) action = kCancelLater;
      } else {
        events::Subscription::Batch b;
        if (!has_pending_ || pending_.events_size() == 0) {
          b = sub_->Next(options_.max_batch);
        }
        if (!b.error.ok()) {
          finished_ = true;
          status = ToGrpc(b.error);
          action = kFinish;
        } else {
          for (v1::Event& e : b.events) *pending_.add_events() = std::move(e);
          if (!b.resume_token.empty()) pending_.set_resume_token(b.resume_token);
          if (!b.events.empty()) has_pending_ = true;
          if (b.end) {
            finished_ = true;
            action = has_pending_ ? kWriteAndFinish : kFinish;
          } else if (has_pending_) {
            action = kWrite;
          }
          if (action == kWrite || action == kWriteAndFinish) {
            writing_ = true;
            writing_msg_.Swap(&pending_);
            pending_.Clear();
            has_pending_ = false;
          }
        }
      }
      if (action == kCancelLater) stuck_armed_ = true;
    }
    switch (action) {
      case kNothing:
        return;
      case kWrite:
        FORGE_TSAN_HANDOFF(this);
        StartWrite(&writing_msg_);
        return;
      case kWriteAndFinish:
        FORGE_TSAN_HANDOFF(this);
        StartWriteAndFinish(&writing_msg_, grpc::WriteOptions(),
                            grpc::Status::OK);
        return;
      case kFinish:
        FORGE_TSAN_HANDOFF(this);
        Finish(status);
        return;
      case kCancelLater: {
        // The timer may outlive this reactor: it holds only the handle.
        std::shared_ptr<CancelHandle> handle = cancel_handle_;
        const TimerService::TimerId id =
            timers_.ScheduleAfter(options_.stuck_write_grace, [handle]() {
              absl::MutexLock lock(&handle->mu);
              if (handle->context != nullptr) handle->context->TryCancel();
            });
        absl::MutexLock lock(&mu_);
        stuck_timer_ = id;
        return;
      }
    }
  }

  // Lets a timer cancel the call while the call lives (context is cleared in
  // OnDone).
  struct CancelHandle {
    absl::Mutex mu;
    grpc::CallbackServerContext* context ABSL_GUARDED_BY(mu) = nullptr;
  };

  TimerService& timers_;
  const WatchOptions options_;
  std::shared_ptr<events::Subscription> sub_;
  const std::shared_ptr<CancelHandle> cancel_handle_;

  absl::Mutex mu_;
  // Set once sub_ is assigned (a notify may run before that).
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool has_pending_ ABSL_GUARDED_BY(mu_) = false;
  v1::WatchResponse pending_ ABSL_GUARDED_BY(mu_);
  // Owned by gRPC between StartWrite and OnWriteDone.
  v1::WatchResponse writing_msg_;
  bool stuck_armed_ ABSL_GUARDED_BY(mu_) = false;
  TimerService::TimerId stuck_timer_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

grpc::ServerUnaryReactor* OrchestratorService::SubmitGraph(
    grpc::CallbackServerContext* context, const v1::SubmitGraphRequest* request,
    v1::SubmitGraphResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // W3C trace context: the graph joins the caller's trace.
  std::string traceparent;
  const auto& md = context->client_metadata();
  if (auto it = md.find("traceparent"); it != md.end()) {
    traceparent.assign(it->second.data(), it->second.size());
  }
  // The request is gRPC's until Finish, but nothing reads it after this:
  // moved into the engine, the spec (40 MB for 1,000,000 tasks) is not copied.
  engine_.Submit(
      std::move(*const_cast<v1::SubmitGraphRequest*>(request)),
      [reactor, response](absl::StatusOr<v1::SubmitGraphResponse> r) {
        if (r.ok()) *response = *std::move(r);
        FORGE_TSAN_HANDOFF(reactor);
        reactor->Finish(ToGrpc(r.status()));
      },
      traceparent);
  return reactor;
}

grpc::ServerUnaryReactor* OrchestratorService::GetGraph(
    grpc::CallbackServerContext* context, const v1::GetGraphRequest* request,
    v1::GetGraphResponse* response) {
  absl::StatusOr<v1::Graph> g =
      engine_.GetGraph(request->graph_id(), request->view());
  if (g.ok()) *response->mutable_graph() = *std::move(g);
  return FinishNow(context, g.status());
}

grpc::ServerUnaryReactor* OrchestratorService::ListGraphs(
    grpc::CallbackServerContext* context, const v1::ListGraphsRequest* request,
    v1::ListGraphsResponse* response) {
  absl::StatusOr<v1::ListGraphsResponse> r = engine_.ListGraphs(*request);
  if (r.ok()) *response = *std::move(r);
  return FinishNow(context, r.status());
}

grpc::ServerUnaryReactor* OrchestratorService::GetTask(
    grpc::CallbackServerContext* context, const v1::GetTaskRequest* request,
    v1::GetTaskResponse* response) {
  absl::StatusOr<v1::Task> t = engine_.GetTask(request->graph_id(), request->task());
  if (t.ok()) *response->mutable_task() = *std::move(t);
  return FinishNow(context, t.status());
}

grpc::ServerUnaryReactor* OrchestratorService::WaitGraph(
    grpc::CallbackServerContext* context, const v1::WaitGraphRequest* request,
    v1::WaitGraphResponse* response) {
  return new WaitReactor(engine_, timers_, *request, response);
}

grpc::ServerWriteReactor<v1::WatchResponse>* OrchestratorService::Watch(
    grpc::CallbackServerContext* context, const v1::WatchRequest* request) {
  return new WatchReactor(engine_, timers_, options_, context, *request);
}

grpc::ServerUnaryReactor* OrchestratorService::CancelGraph(
    grpc::CallbackServerContext* context, const v1::CancelGraphRequest* request,
    v1::CancelGraphResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  engine_.CancelGraph(*request, [reactor, response](
                                    absl::StatusOr<v1::CancelGraphResponse> r) {
    if (r.ok()) *response = *std::move(r);
    FORGE_TSAN_HANDOFF(reactor);
    reactor->Finish(ToGrpc(r.status()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* OrchestratorService::CancelTask(
    grpc::CallbackServerContext* context, const v1::CancelTaskRequest* request,
    v1::CancelTaskResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  engine_.CancelTask(*request, [reactor, response](
                                   absl::StatusOr<v1::CancelTaskResponse> r) {
    if (r.ok()) *response = *std::move(r);
    FORGE_TSAN_HANDOFF(reactor);
    reactor->Finish(ToGrpc(r.status()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* OrchestratorService::ListQueues(
    grpc::CallbackServerContext* context, const v1::ListQueuesRequest* request,
    v1::ListQueuesResponse* response) {
  for (const sched::QueueStats& q : engine_.scheduler().Queues()) {
    v1::QueueInfo* out = response->add_queues();
    out->set_name(q.name);
    out->set_depth(q.depth);
    out->set_running(q.running);
    out->set_concurrency(q.concurrency);
    out->set_ordering(sched::OrderingModeName(q.mode));
    out->set_per_key_concurrency(q.per_key_concurrency);
    out->set_workers(q.executors);
  }
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* OrchestratorService::ListWorkers(
    grpc::CallbackServerContext* context, const v1::ListWorkersRequest* request,
    v1::ListWorkersResponse* response) {
  for (const sched::ExecutorStats& e : engine_.scheduler().Executors()) {
    v1::WorkerInfo* out = response->add_workers();
    out->set_worker_id(e.id);
    for (const std::string& q : e.queues) out->add_queues(q);
    out->set_slots(e.slots);
    out->set_in_flight(e.in_use);
  }
  return FinishNow(context, absl::OkStatus());
}

}  // namespace forge::api
