#include "server/api/worker_service.h"

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/tsan.h"
#include "server/api/status.h"

namespace forge::api {

namespace v1 = ::forge::v1;

namespace {

bool ValidName(const std::string& s, size_t max) {
  if (s.empty() || s.size() > max) return false;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '_' || c == '-' ||
                    c == '.' || c == ':';
    if (!ok) return false;
  }
  return true;
}

class Reactor;

// The executor side of a session; shared with the scheduler, which may hold
// it after the stream ended (Assign then returns false).
class Session final : public sched::Executor,
                      public std::enable_shared_from_this<Session> {
 public:
  Session(std::string id, Reactor* reactor) : id_(std::move(id)), reactor_(reactor) {}

  const std::string& id() const override { return id_; }
  bool Assign(std::vector<sched::Dispatch> batch) override;
  void Cancel(const v1::Lease& lease, const std::string& reason) override;

  // Stream ended: no more assignments or writes; returns the leases still
  // held. If a write is in flight, `finish` is kept and handed back by
  // WriteDone (a call may not be finished with a write outstanding) and
  // *finish_now is false.
  std::vector<Engine::HeldLease> Close(grpc::Status finish, bool* finish_now);
  // Removes a lease the worker answered; returns its scheduler ticket, or
  // nullopt if this session does not hold it.
  std::optional<uint64_t> Forget(const v1::Lease& lease);
  void Ack(const v1::Lease& lease, const absl::Status& status);
  // Reactor side: takes the pending message if any (and marks a write in
  // flight), or returns false.
  bool TakeOutbox(v1::ServerMessage* out);
  // A write completed; returns the status to finish the call with if the
  // stream was closed while it was in flight.
  std::optional<grpc::Status> WriteDone();
  // OnDone: forget the reactor, after any thread still calling into it.
  void Detach();

  void Send(v1::ServerMessage msg);

 private:
  static std::string Key(const v1::Lease& l) {
    return absl::StrCat(l.graph_id(), "/", l.task_index());
  }
  void MaybeWrite() ABSL_LOCKS_EXCLUDED(mu_);

  const std::string id_;
  absl::Mutex mu_;
  Reactor* reactor_ ABSL_GUARDED_BY(mu_);
  // Threads between reading reactor_ and returning from its method.
  int callers_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<grpc::Status> pending_finish_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool has_outbox_ ABSL_GUARDED_BY(mu_) = false;
  v1::ServerMessage outbox_ ABSL_GUARDED_BY(mu_);
  struct Held {
    v1::Lease lease;
    uint64_t ticket = 0;
  };
  absl::flat_hash_map<std::string, Held> held_ ABSL_GUARDED_BY(mu_);
};

class Reactor final
    : public grpc::ServerBidiReactor<v1::WorkerMessage, v1::ServerMessage> {
 public:
  Reactor(Engine& engine, const WorkerServiceOptions& options, uint64_t serial)
      : engine_(engine), options_(options), serial_(serial) {
    FORGE_TSAN_HANDOFF(this);
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    FORGE_TSAN_RECEIVE(this);
    if (!ok) {
      End(grpc::Status::OK);
      return;
    }
    if (!session_) {
      absl::Status s = Hello(in_);
      if (!s.ok()) {
        FORGE_LOG(INFO, "worker hello refused").WithStatus(s);
        End(ToGrpc(s));
        return;
      }
    } else {
      Handle(in_);
    }
    in_.Clear();
    FORGE_TSAN_HANDOFF(this);
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    FORGE_TSAN_RECEIVE(this);
    if (std::optional<grpc::Status> finish = session_->WriteDone()) {
      FORGE_TSAN_HANDOFF(this);
      Finish(*finish);
      return;
    }
    // On !ok the peer is gone; the read side sees it too and ends the call.
    if (ok) WriteNext();
  }

  void OnCancel() override { FORGE_TSAN_RECEIVE(this); }

  void OnDone() override {
    FORGE_TSAN_RECEIVE(this);
    if (session_) session_->Detach();
    delete this;
  }

  // Called by the session (no session lock held) when a write can start.
  void WriteNext() {
    if (session_->TakeOutbox(&out_)) {
      FORGE_TSAN_HANDOFF(this);
      StartWrite(&out_);
    }
  }

  // Ends the stream once: leases are lost, then Finish is called when no
  // write is in flight (at once, or from the session when it completes).
  void End(grpc::Status status) {
    {
      absl::MutexLock lock(&end_mu_);
      if (ended_) return;
      ended_ = true;
    }
    if (!session_) {
      FORGE_TSAN_HANDOFF(this);
      Finish(status);  // no write was ever started
      return;
    }
    bool finish_now = false;
    std::vector<Engine::HeldLease> held = session_->Close(status, &finish_now);
    FORGE_LOG(INFO, "worker disconnected")
        .With("worker_id", session_->id())
        .With("leases_lost", held.size())
        .WithStatus(absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                                 status.error_message()));
    engine_.DetachExecutor(session_->id(), std::move(held));
    if (finish_now) {
      FORGE_TSAN_HANDOFF(this);
      Finish(status);
    }
  }

 private:
  absl::Status Hello(const v1::WorkerMessage& msg) {
    if (!msg.has_hello()) {
      return absl::InvalidArgumentError(
          "hello: the first message of a stream must be a hello");
    }
    const v1::WorkerHello& h = msg.hello();
    if (h.queues_size() == 0) {
      return absl::InvalidArgumentError("hello.queues: at least one queue");
    }
    if (h.queues_size() > options_.max_queues) {
      return absl::InvalidArgumentError(absl::StrCat(
          "hello.queues: ", h.queues_size(), " exceeds the limit of ",
          options_.max_queues));
    }
    for (int i = 0; i < h.queues_size(); ++i) {
      if (!ValidName(h.queues(i), 128)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "hello.queues[", i, "]: \"", h.queues(i),
            "\" is not a valid queue name ([A-Za-z0-9_.:-], 1..128 bytes)"));
      }
    }
    if (h.slots() < 1 || h.slots() > options_.max_slots) {
      return absl::InvalidArgumentError(absl::StrCat(
          "hello.slots: ", h.slots(), " is outside 1..", options_.max_slots));
    }
    std::string name = h.name().empty() ? std::string("worker") : h.name();
    if (!ValidName(name, 128)) {
      return absl::InvalidArgumentError(
          "hello.name: must match [A-Za-z0-9_.:-], 1..128 bytes");
    }
    session_ = std::make_shared<Session>(absl::StrCat(name, "-", serial_), this);
    v1::ServerMessage welcome;
    welcome.mutable_welcome()->set_worker_id(session_->id());
    session_->Send(std::move(welcome));
    std::vector<std::string> queues(h.queues().begin(), h.queues().end());
    std::sort(queues.begin(), queues.end());
    queues.erase(std::unique(queues.begin(), queues.end()), queues.end());
    FORGE_LOG(INFO, "worker connected")
        .With("worker_id", session_->id())
        .With("name", name)
        .With("queues", absl::StrJoin(queues, ","))
        .With("slots", h.slots());
    engine_.AttachExecutor(session_, std::move(queues), h.slots(), name);
    return absl::OkStatus();
  }

  // Progress and heartbeats first: a worker's progress (and checkpoint) for
  // an attempt precedes its result even when one message carries both.
  void Handle(const v1::WorkerMessage& msg) {
    // Pickups first. One that rides with its own result is recorded by the
    // result's transition (one shard lock, not two).
    using Key = std::tuple<std::string_view, int32_t, int32_t>;
    auto key = [](const v1::Lease& l) {
      return Key(l.graph_id(), l.task_index(), l.attempt());
    };
    absl::flat_hash_set<Key> started_with_result;
    if (msg.started_size() > 0) {
      absl::flat_hash_set<Key> results;
      results.reserve(msg.results_size());
      for (const v1::TaskResult& r : msg.results()) results.insert(key(r.lease()));
      for (const v1::Lease& lease : msg.started()) {
        if (results.contains(key(lease))) {
          started_with_result.insert(key(lease));
        } else {
          engine_.OnStarted(lease).IgnoreError();  // best effort; fenced
        }
      }
    }
    for (const v1::TaskProgress& p : msg.progress()) {
      engine_.OnProgress(p).IgnoreError();  // best effort; fenced by the store
    }
    for (const v1::TaskOutput& o : msg.output()) {
      engine_.OnOutput(o).IgnoreError();  // best effort; fenced and capped
    }
    for (const v1::Lease& lease : msg.heartbeat().leases()) {
      if (absl::Status s = engine_.OnHeartbeat(lease); !s.ok()) {
        // The server no longer considers this attempt current (timed out,
        // cancelled, lease lost): tell the worker to stop working on it.
        FORGE_LOG(DEBUG, "heartbeat for an attempt no longer current")
            .With("graph_id", lease.graph_id())
            .With("task", lease.task_index())
            .With("attempt", lease.attempt())
            .With("worker_id", session_->id())
            .WithStatus(s);
        session_->Cancel(lease, "lease is no longer current");
      }
    }
    for (const v1::TaskResult& r : msg.results()) {
      std::optional<uint64_t> ticket = session_->Forget(r.lease());
      if (!ticket) {
        FORGE_LOG(DEBUG, "stale result refused: lease not held by this session")
            .With("graph_id", r.lease().graph_id())
            .With("task", r.lease().task_index())
            .With("attempt", r.lease().attempt())
            .With("worker_id", session_->id());
        session_->Ack(r.lease(), absl::AbortedError(
                                     "lease not held by this worker session"));
        continue;
      }
      // Acknowledged once the result is durable (the journal's thread).
      const bool started_too =
          !started_with_result.empty() && started_with_result.contains(key(r.lease()));
      engine_.OnResult(session_->id(), *ticket, r,
                       [session = session_, lease = r.lease()](absl::Status s) {
                         if (!s.ok()) {
                           FORGE_LOG(DEBUG, "result refused")
                               .With("graph_id", lease.graph_id())
                               .With("task", lease.task_index())
                               .With("attempt", lease.attempt())
                               .With("worker_id", session->id())
                               .WithStatus(s);
                         }
                         session->Ack(lease, s);
                       },
                       started_too);
    }
  }

  Engine& engine_;
  const WorkerServiceOptions& options_;
  const uint64_t serial_;
  std::shared_ptr<Session> session_;  // set by the hello, on the read path
  v1::WorkerMessage in_;
  v1::ServerMessage out_;  // owned by gRPC between StartWrite and OnWriteDone
  absl::Mutex end_mu_;
  bool ended_ ABSL_GUARDED_BY(end_mu_) = false;
};

bool Session::Assign(std::vector<sched::Dispatch> batch) {
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return false;
    for (sched::Dispatch& d : batch) {
      held_[Key(d.assignment.lease())] = Held{d.assignment.lease(), d.ticket};
      *outbox_.add_assignments() = std::move(d.assignment);
    }
    has_outbox_ = true;
  }
  MaybeWrite();
  return true;
}

void Session::Cancel(const v1::Lease& lease, const std::string& reason) {
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    v1::CancelAssignment* c = outbox_.add_cancels();
    *c->mutable_lease() = lease;
    c->set_reason(reason);
    has_outbox_ = true;
  }
  MaybeWrite();
}

void Session::Ack(const v1::Lease& lease, const absl::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    v1::ResultAck* ack = outbox_.add_acks();
    *ack->mutable_lease() = lease;
    ack->set_code(static_cast<int32_t>(status.code()));
    ack->set_message(std::string(status.message()));
    has_outbox_ = true;
  }
  MaybeWrite();
}

void Session::Send(v1::ServerMessage msg) {
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    outbox_.MergeFrom(msg);
    has_outbox_ = true;
  }
  MaybeWrite();
}

void Session::MaybeWrite() {
  Reactor* reactor;
  {
    absl::MutexLock lock(&mu_);
    if (writing_ || !has_outbox_ || reactor_ == nullptr || closed_) return;
    reactor = reactor_;
    ++callers_;  // keeps the reactor from being deleted (see Detach)
  }
  reactor->WriteNext();
  absl::MutexLock lock(&mu_);
  --callers_;
}

bool Session::TakeOutbox(v1::ServerMessage* out) {
  absl::MutexLock lock(&mu_);
  if (writing_ || !has_outbox_ || closed_) return false;
  writing_ = true;
  out->Clear();
  out->Swap(&outbox_);
  has_outbox_ = false;
  return true;
}

std::optional<grpc::Status> Session::WriteDone() {
  absl::MutexLock lock(&mu_);
  writing_ = false;
  std::optional<grpc::Status> finish = std::move(pending_finish_);
  pending_finish_.reset();
  return finish;
}

std::vector<Engine::HeldLease> Session::Close(grpc::Status finish,
                                              bool* finish_now) {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  *finish_now = !writing_;
  if (writing_) pending_finish_ = std::move(finish);
  std::vector<Engine::HeldLease> out;
  out.reserve(held_.size());
  for (auto& [key, h] : held_) out.push_back(Engine::HeldLease{h.lease, h.ticket});
  held_.clear();
  return out;
}

std::optional<uint64_t> Session::Forget(const v1::Lease& lease) {
  absl::MutexLock lock(&mu_);
  auto it = held_.find(Key(lease));
  if (it == held_.end() || it->second.lease.attempt() != lease.attempt() ||
      it->second.lease.epoch() != lease.epoch()) {
    return std::nullopt;
  }
  const uint64_t ticket = it->second.ticket;
  held_.erase(it);
  return ticket;
}

void Session::Detach() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  // A thread in MaybeWrite may still be inside the reactor's WriteNext (it
  // takes nothing once closed): wait for it before the reactor is deleted.
  mu_.Await(absl::Condition(
      +[](int* callers) { return *callers == 0; }, &callers_));
  reactor_ = nullptr;
}

}  // namespace

grpc::ServerBidiReactor<v1::WorkerMessage, v1::ServerMessage>*
WorkerServiceImpl::Connect(grpc::CallbackServerContext* context) {
  return new Reactor(engine_, options_,
                     next_session_.fetch_add(1, std::memory_order_relaxed));
}

}  // namespace forge::api
