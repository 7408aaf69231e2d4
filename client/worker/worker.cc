// Worker internals.
//
// WorkerCore holds all shared state under one mutex (mu_). There is at most
// one stream at a time: a Stream (the gRPC reactor) is created by the control
// thread, and destroyed by it only after OnDone; the next one is created only
// after that. Per-stream state (outbox, write/hold flags) therefore lives in
// WorkerCore and is reset for each stream; tasks are tagged with the
// generation of the stream that assigned them, which fences their results.
//
// Writes and the hold. Operations on the stream are started from outside
// reactions (handler threads push results, the control thread heartbeats), so
// the stream carries one hold from before StartCall. The hold is removed once
// the stream is closing (a read or write failed, or Stop cancelled it) and no
// write is in flight. The decision "start this write" / "remove the hold" is
// taken under mu_ (NextOpLocked) and carried out after mu_ is released
// (Perform): no gRPC call is made with mu_ held. This is safe because:
//   - a decided write sets write_in_flight_, which keeps the hold in place
//     until its OnWriteDone, so the stream cannot reach OnDone (and be
//     destroyed) before the deciding thread calls StartWrite;
//   - only one thread ever decides to remove the hold (hold_released_), and it
//     touches the stream no more after RemoveHold.
//
// Lock order: mu_, then a Task's mu (a leaf). Callbacks to user code
// (handler, on_welcome, on_disconnect) run with no lock held.

#include "client/worker/worker.h"
#include "common/otlp.h"
#include "common/trace_context.h"
#include "common/tsan.h"

#include <algorithm>
#include <deque>
#include <exception>
#include <optional>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "forge/v1/worker.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace forge::client {
namespace internal {
namespace {

namespace v1 = ::forge::v1;

// Results are batched until a message reaches this many bytes (one result is
// always sent, whatever its size), to stay well below gRPC's default 4 MiB
// receive limit on the server.
constexpr size_t kMaxBatchBytes = 1 << 20;
// Assignments may carry large inputs and upstream outputs.
constexpr int kMaxReceiveMessageBytes = 64 << 20;

std::string LeaseKey(const v1::Lease& lease) {
  return absl::StrCat(lease.graph_id(), "\x1f", lease.task_index(), "\x1f",
                      lease.attempt(), "\x1f", lease.epoch());
}

absl::Status ToAbslStatus(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

}  // namespace

class WorkerCore;

// One attempt, from its assignment until its handler returns. Shared by the
// core's maps (while live on its stream) and the handler thread running it.
struct Task {
  Task(WorkerCore* core, uint64_t generation, v1::Assignment assignment)
      : core(core),
        generation(generation),
        key(LeaseKey(assignment.lease())),
        assignment(std::move(assignment)),
        parent(ParseTraceparent(this->assignment.traceparent())),
        context(this) {
    if (parent) {
      span_id = NewSpanId();
      traceparent = FormatTraceparent(TraceContext{parent->trace_id, span_id, parent->sampled});
    }
  }

  // Sets the cancelled flag (first reason wins).
  void Cancel(const std::string& reason) ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    if (!cancelled) {
      cancelled = true;
      cancel_reason = reason;
    }
  }

  WorkerCore* const core;
  // Generation of the stream that assigned it.
  const uint64_t generation;
  const std::string key;
  const v1::Assignment assignment;
  // The attempt's span (from the assignment) and this handler's own span.
  const std::optional<TraceContext> parent;
  std::string span_id;
  std::string traceparent;

  mutable absl::Mutex mu;
  bool cancelled ABSL_GUARDED_BY(mu) = false;
  std::string cancel_reason ABSL_GUARDED_BY(mu);

  TaskContext context;
};

// The reactor of one Connect stream: a thin shell that forwards every
// reaction to WorkerCore, which owns all the state. Created and destroyed by
// the control thread (destroyed only after OnDone).
class Stream final
    : public grpc::ClientBidiReactor<v1::WorkerMessage, v1::ServerMessage> {
 public:
  explicit Stream(WorkerCore* core) : core_(core) {}

  // Starts the call: hold, hello write, first read. `hello` must outlive the
  // stream. Control thread only, once.
  void Begin(v1::WorkerService::Stub* stub, const v1::WorkerMessage* hello) {
    stub->async()->Connect(&context_, this);
    AddHold();
    StartWrite(hello);
    StartRead(&read_msg_);
    FORGE_TSAN_HANDOFF(this);
    StartCall();
  }

  // Ends the call at once. Any thread, while the stream is alive.
  void Cancel() { context_.TryCancel(); }

  // The message a write in flight points at; written only by the thread that
  // decided that write, under WorkerCore::mu_, while no write is in flight.
  v1::WorkerMessage* write_msg() { return &write_msg_; }

  // grpc::ClientBidiReactor:
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  WorkerCore* const core_;
  grpc::ClientContext context_;
  v1::ServerMessage read_msg_;
  v1::WorkerMessage write_msg_;
};

class WorkerCore {
 public:
  WorkerCore(WorkerOptions options, Handler handler)
      : options_(std::move(options)), handler_(std::move(handler)) {}
  ~WorkerCore() { Stop(); }

  absl::Status Start() ABSL_LOCKS_EXCLUDED(lifecycle_mu_, mu_);
  void Stop() ABSL_LOCKS_EXCLUDED(lifecycle_mu_, mu_);
  absl::Status Wait() ABSL_LOCKS_EXCLUDED(mu_);
  std::string worker_id() const ABSL_LOCKS_EXCLUDED(mu_);
  WorkerStats stats() const ABSL_LOCKS_EXCLUDED(mu_);

  // From TaskContext (handler threads).
  void ReportCheckpoint(Task* task, std::string checkpoint)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The pending progress entry of a live task's attempt (lease set), or
  // nullptr if the attempt is over.
  v1::TaskProgress* PendingProgressLocked(Task* task)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReportProgress(Task* task, int64_t step, int64_t total,
                      std::string message) ABSL_LOCKS_EXCLUDED(mu_);

  // Reactions of the current stream (gRPC threads; never block).
  void OnServerMessage(v1::ServerMessage* message) ABSL_LOCKS_EXCLUDED(mu_);
  void OnReadFailed() ABSL_LOCKS_EXCLUDED(mu_);
  void OnWriteDone(Stream* stream, bool ok) ABSL_LOCKS_EXCLUDED(mu_);
  void OnStreamDone(const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // A stream operation decided under mu_, carried out after releasing it.
  struct StreamOp {
    Stream* stream = nullptr;
    const v1::WorkerMessage* write = nullptr;
    bool remove_hold = false;
  };
  StreamOp NextOpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void Perform(const StreamOp& op);

  // This worker's span of one attempt (handler threads).
  void ExportSpan(const Task& task, const TaskOutcome& outcome, absl::Time start)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Fills `msg` from the outbox; false when there is nothing to send.
  bool BuildMessageLocked(v1::WorkerMessage* msg)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets the current stream's state: its tasks (their leases are lost:
  // running ones are cancelled, queued ones dropped), its outbox, its id.
  void ForgetStreamLocked(const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Hands a finished task's result to the outbox (or discards it).
  void Finish(const std::shared_ptr<Task>& task, TaskOutcome outcome)
      ABSL_LOCKS_EXCLUDED(mu_);
  TaskOutcome RunHandler(Task& task);

  void HandlerLoop() ABSL_LOCKS_EXCLUDED(mu_);
  void ControlLoop() ABSL_LOCKS_EXCLUDED(mu_);

  bool HandlerHasWorkLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || !queue_.empty();
  }
  bool ControlHasWorkLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || (stream_ != nullptr && stream_done_) || started_recheck_;
  }

  const WorkerOptions options_;
  const Handler handler_;

  // Serializes Start and Stop (held while Stop joins threads, which never
  // take it).
  absl::Mutex lifecycle_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  bool started_ ABSL_GUARDED_BY(lifecycle_mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(lifecycle_mu_) = false;
  std::thread control_thread_ ABSL_GUARDED_BY(lifecycle_mu_);
  std::vector<std::thread> handler_threads_ ABSL_GUARDED_BY(lifecycle_mu_);

  // Set in Start before any thread or stream exists; constant afterwards.
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  v1::WorkerMessage hello_;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Wait() returns once set, with final_status_.
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
  WorkerStats stats_ ABSL_GUARDED_BY(mu_);

  // The current stream (null between streams) and its state.
  std::unique_ptr<Stream> stream_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::string worker_id_ ABSL_GUARDED_BY(mu_);
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool hold_released_ ABSL_GUARDED_BY(mu_) = false;
  bool stream_done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status stream_status_ ABSL_GUARDED_BY(mu_);
  absl::Duration backoff_ ABSL_GUARDED_BY(mu_);

  // Tasks of the current stream, queued or running, by lease key. Bounded by
  // the server's credit (slots).
  absl::flat_hash_map<std::string, std::shared_ptr<Task>> live_tasks_
      ABSL_GUARDED_BY(mu_);
  // Assigned, not yet picked by a handler thread.
  std::deque<std::shared_ptr<Task>> queue_ ABSL_GUARDED_BY(mu_);

  // Outbox, coalesced into the next write. Bounded: one result per live task,
  // the latest progress per live task, one heartbeat.
  std::vector<v1::TaskResult> pending_results_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::Lease> pending_started_ ABSL_GUARDED_BY(mu_);
  // When the control thread sends pending_started_ if no other write took
  // them first (InfiniteFuture: nothing waits); started_recheck_ makes it
  // look at that deadline.
  absl::Time started_flush_at_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  bool started_recheck_ ABSL_GUARDED_BY(mu_) = false;
  // This worker's spans (options_.otlp_endpoint); set by Start().
  std::unique_ptr<otlp::SpanExporter> spans_;
  absl::flat_hash_map<std::string, v1::TaskProgress> pending_progress_
      ABSL_GUARDED_BY(mu_);
  bool heartbeat_due_ ABSL_GUARDED_BY(mu_) = false;
};

// ---------------------------------------------------------------------------
// Stream

void Stream::OnReadDone(bool ok) {
  FORGE_TSAN_RECEIVE(this);
  if (!ok) {
    core_->OnReadFailed();
    return;
  }
  core_->OnServerMessage(&read_msg_);
  read_msg_.Clear();
  FORGE_TSAN_HANDOFF(this);
  StartRead(&read_msg_);
}

void Stream::OnWriteDone(bool ok) {
  FORGE_TSAN_RECEIVE(this);
  core_->OnWriteDone(this, ok);
}

void Stream::OnDone(const grpc::Status& status) {
  FORGE_TSAN_RECEIVE(this);
  // The control thread may destroy this object as soon as the core has seen
  // the status: nothing may touch `this` afterwards.
  core_->OnStreamDone(status);
}

// ---------------------------------------------------------------------------
// WorkerCore: lifecycle

absl::Status WorkerCore::Start() {
  absl::MutexLock life(&lifecycle_mu_);
  if (started_ || stopped_) {
    return absl::FailedPreconditionError(
        stopped_ ? "worker stopped" : "worker already started");
  }
  if (!handler_) return absl::InvalidArgumentError("no handler");
  if (options_.server.empty()) {
    return absl::InvalidArgumentError("no server address");
  }
  if (options_.queues.empty()) {
    return absl::InvalidArgumentError("at least one queue is required");
  }
  for (const std::string& queue : options_.queues) {
    if (queue.empty()) return absl::InvalidArgumentError("empty queue name");
  }
  if (options_.slots < 1 || options_.slots > 10000) {
    return absl::InvalidArgumentError(
        absl::StrCat("slots must be in 1..10000, got ", options_.slots));
  }
  if (options_.heartbeat_interval <= absl::ZeroDuration() ||
      options_.reconnect_backoff < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "heartbeat_interval must be positive, reconnect_backoff not negative");
  }

  if (!options_.otlp_endpoint.empty()) {
    otlp::ExporterOptions eo;
    eo.endpoint = options_.otlp_endpoint;
    eo.service_name = absl::StrCat("forge-worker:", options_.name);
    absl::StatusOr<std::unique_ptr<otlp::SpanExporter>> spans =
        otlp::SpanExporter::Start(std::move(eo));
    if (!spans.ok()) return spans.status();
    spans_ = *std::move(spans);
  }

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxReceiveMessageBytes);
  stub_ = v1::WorkerService::NewStub(grpc::CreateCustomChannel(
      options_.server, grpc::InsecureChannelCredentials(), args));
  v1::WorkerHello* hello = hello_.mutable_hello();
  hello->set_name(options_.name);
  for (const std::string& queue : options_.queues) hello->add_queues(queue);
  hello->set_slots(options_.slots);
  hello->mutable_labels()->insert(options_.labels.begin(),
                                  options_.labels.end());
  {
    absl::MutexLock lock(&mu_);
    backoff_ = options_.reconnect_backoff;
  }

  started_ = true;
  handler_threads_.reserve(options_.slots);
  for (int i = 0; i < options_.slots; ++i) {
    handler_threads_.emplace_back([this] { HandlerLoop(); });
  }
  control_thread_ = std::thread([this] { ControlLoop(); });
  return absl::OkStatus();
}

void WorkerCore::Stop() {
  absl::MutexLock life(&lifecycle_mu_);
  if (stopped_) return;
  stopped_ = true;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& [key, task] : live_tasks_) task->Cancel("worker stopping");
    queue_.clear();
  }
  // The control thread cancels the stream and waits for its OnDone.
  if (control_thread_.joinable()) control_thread_.join();
  for (std::thread& thread : handler_threads_) thread.join();
  handler_threads_.clear();
  // The handlers' last spans go out before Stop returns.
  if (spans_ != nullptr) spans_->Flush();

  absl::MutexLock lock(&mu_);
  live_tasks_.clear();
  pending_results_.clear();
  pending_started_.clear();
  pending_progress_.clear();
  if (!ended_) {
    ended_ = true;
    final_status_ = absl::OkStatus();
  }
}

absl::Status WorkerCore::Wait() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(&ended_));
  return final_status_;
}

std::string WorkerCore::worker_id() const {
  absl::MutexLock lock(&mu_);
  return worker_id_;
}

WorkerStats WorkerCore::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

// ---------------------------------------------------------------------------
// WorkerCore: control thread (stream lifecycle, heartbeats, reconnects)

void WorkerCore::ControlLoop() {
  absl::Time reconnect_at = absl::InfinitePast();
  absl::Time next_heartbeat = absl::InfiniteFuture();
  for (;;) {
    mu_.Lock();
    started_recheck_ = false;
    const absl::Time deadline =
        stream_ == nullptr ? reconnect_at : std::min(next_heartbeat, started_flush_at_);
    mu_.AwaitWithDeadline(
        absl::Condition(this, &WorkerCore::ControlHasWorkLocked), deadline);
    started_recheck_ = false;

    if (stopping_) {
      Stream* stream = stream_.get();
      mu_.Unlock();
      if (stream == nullptr) return;
      stream->Cancel();  // Alive: only this thread destroys streams.
      std::unique_ptr<Stream> done;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(&stream_done_));
        done = std::move(stream_);
        ForgetStreamLocked("worker stopping");
      }
      return;  // `done` is destroyed after its OnDone, with no lock held.
    }

    if (stream_ != nullptr && stream_done_) {
      std::unique_ptr<Stream> done = std::move(stream_);
      const absl::Status status = ToAbslStatus(stream_status_);
      ForgetStreamLocked(absl::StrCat("stream lost: ", status.ToString()));
      const bool final = !options_.reconnect;
      if (final) {
        ended_ = true;
        final_status_ = status;
      } else {
        reconnect_at = absl::Now() + backoff_;
        backoff_ = std::min(backoff_ * 2,
                            std::max(options_.max_reconnect_backoff,
                                     options_.reconnect_backoff));
      }
      mu_.Unlock();
      done.reset();
      if (options_.on_disconnect) options_.on_disconnect(status);
      if (final) return;
      continue;
    }

    const absl::Time now = absl::Now();
    if (stream_ == nullptr && now >= reconnect_at) {
      ++generation_;
      ++stats_.streams_opened;
      write_in_flight_ = true;  // The hello, written by Begin.
      closing_ = false;
      hold_released_ = false;
      stream_done_ = false;
      stream_status_ = grpc::Status();
      heartbeat_due_ = false;
      stream_ = std::make_unique<Stream>(this);
      Stream* stream = stream_.get();
      mu_.Unlock();
      // Nobody else touches the stream before the hello's OnWriteDone (the
      // write in flight), and only this thread destroys it.
      stream->Begin(stub_.get(), &hello_);
      next_heartbeat = absl::Now() + options_.heartbeat_interval;
      continue;
    }

    if (stream_ != nullptr && now >= started_flush_at_) {
      // Starts nobody sent yet. A write in flight takes them when it is
      // done (OnWriteDone builds the next message), so nothing waits here.
      started_flush_at_ = absl::InfiniteFuture();
      const StreamOp op = NextOpLocked();
      mu_.Unlock();
      Perform(op);
      continue;
    }

    if (stream_ != nullptr && now >= next_heartbeat) {
      heartbeat_due_ = true;
      const StreamOp op = NextOpLocked();
      mu_.Unlock();
      Perform(op);
      next_heartbeat = now + options_.heartbeat_interval;
      continue;
    }
    mu_.Unlock();
  }
}

// ---------------------------------------------------------------------------
// WorkerCore: the outbox

WorkerCore::StreamOp WorkerCore::NextOpLocked() {
  StreamOp op;
  if (stream_ == nullptr || write_in_flight_ || hold_released_) return op;
  if (closing_) {
    hold_released_ = true;
    op.stream = stream_.get();
    op.remove_hold = true;
    return op;
  }
  v1::WorkerMessage* msg = stream_->write_msg();
  if (!BuildMessageLocked(msg)) return op;
  write_in_flight_ = true;
  op.stream = stream_.get();
  op.write = msg;
  return op;
}

void WorkerCore::Perform(const StreamOp& op) {
  if (op.write != nullptr) {
    FORGE_TSAN_HANDOFF(op.stream);
    op.stream->StartWrite(op.write);
  }
  if (op.remove_hold) op.stream->RemoveHold();
}

bool WorkerCore::BuildMessageLocked(v1::WorkerMessage* msg) {
  if (pending_results_.empty() && pending_progress_.empty() &&
      pending_started_.empty() && !heartbeat_due_) {
    return false;
  }
  msg->Clear();
  for (v1::Lease& lease : pending_started_) *msg->add_started() = std::move(lease);
  pending_started_.clear();
  started_flush_at_ = absl::InfiniteFuture();
  size_t bytes = 0;
  size_t taken = 0;
  for (; taken < pending_results_.size(); ++taken) {
    const size_t size = pending_results_[taken].ByteSizeLong();
    if (taken > 0 && bytes + size > kMaxBatchBytes) break;
    bytes += size;
    *msg->add_results() = std::move(pending_results_[taken]);
  }
  pending_results_.erase(pending_results_.begin(),
                         pending_results_.begin() + taken);
  for (auto& [key, progress] : pending_progress_) {
    *msg->add_progress() = std::move(progress);
  }
  pending_progress_.clear();
  if (heartbeat_due_) {
    heartbeat_due_ = false;
    v1::Heartbeat* heartbeat = msg->mutable_heartbeat();
    for (const auto& [key, task] : live_tasks_) {
      *heartbeat->add_leases() = task->assignment.lease();
    }
  }
  return true;
}

void WorkerCore::ForgetStreamLocked(const std::string& reason) {
  for (auto& [key, task] : live_tasks_) task->Cancel(reason);
  live_tasks_.clear();
  queue_.clear();
  pending_results_.clear();
  pending_started_.clear();
  started_flush_at_ = absl::InfiniteFuture();
  pending_progress_.clear();
  heartbeat_due_ = false;
  worker_id_.clear();
}

// ---------------------------------------------------------------------------
// WorkerCore: reactions

void WorkerCore::OnServerMessage(v1::ServerMessage* message) {
  std::string welcomed_id;
  {
    absl::MutexLock lock(&mu_);
    if (message->has_welcome()) {
      worker_id_ = message->welcome().worker_id();
      welcomed_id = worker_id_;
      ++stats_.welcomes;
      backoff_ = options_.reconnect_backoff;
    }
    for (const v1::ResultAck& ack : message->acks()) {
      if (ack.code() == 0) {
        ++stats_.acks_accepted;
      } else {
        ++stats_.acks_refused;
      }
    }
    for (const v1::CancelAssignment& cancel : message->cancels()) {
      ++stats_.cancels_received;
      auto it = live_tasks_.find(LeaseKey(cancel.lease()));
      if (it != live_tasks_.end()) {
        it->second->Cancel(cancel.reason().empty() ? "cancelled by server"
                                                   : cancel.reason());
      }
    }
    if (!stopping_ && !closing_) {
      for (v1::Assignment& assignment : *message->mutable_assignments()) {
        auto task = std::make_shared<Task>(this, generation_,
                                           std::move(assignment));
        // A duplicate lease is the same attempt: run it once.
        if (live_tasks_.emplace(task->key, task).second) {
          queue_.push_back(std::move(task));
        }
      }
    }
  }
  if (!welcomed_id.empty() && options_.on_welcome) {
    options_.on_welcome(welcomed_id);
  }
}

void WorkerCore::OnReadFailed() {
  StreamOp op;
  {
    absl::MutexLock lock(&mu_);
    closing_ = true;
    op = NextOpLocked();
  }
  Perform(op);
}

void WorkerCore::OnWriteDone(Stream* stream, bool ok) {
  if (!ok) {
    // The call is broken; make sure it ends (reads then fail too). Safe: we
    // are inside a reaction, so the stream is alive.
    stream->Cancel();
  }
  StreamOp op;
  {
    absl::MutexLock lock(&mu_);
    write_in_flight_ = false;
    if (!ok) closing_ = true;
    op = NextOpLocked();
  }
  Perform(op);
}

void WorkerCore::OnStreamDone(const grpc::Status& status) {
  absl::MutexLock lock(&mu_);
  stream_done_ = true;
  stream_status_ = status;
}

// ---------------------------------------------------------------------------
// WorkerCore: handler threads

void WorkerCore::HandlerLoop() {
  for (;;) {
    std::shared_ptr<Task> task;
    StreamOp op;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &WorkerCore::HandlerHasWorkLocked));
      if (stopping_) return;
      task = std::move(queue_.front());
      queue_.pop_front();
      if (options_.report_started && task->generation == generation_ && !closing_) {
        pending_started_.push_back(task->assignment.lease());
        if (options_.started_report_delay <= absl::ZeroDuration()) {
          op = NextOpLocked();
        } else if (started_flush_at_ == absl::InfiniteFuture()) {
          // A handler that ends sooner sends its start with its result (one
          // message, no write to wait for); a longer one's start goes out
          // from the control thread at the deadline.
          started_flush_at_ = absl::Now() + options_.started_report_delay;
          started_recheck_ = true;
        }
      }
    }
    Perform(op);
    const absl::Time start = absl::Now();
    TaskOutcome outcome = RunHandler(*task);
    // Not sampled (the trace's flags say so): the span is not recorded.
    if (spans_ != nullptr && task->parent && task->parent->sampled) ExportSpan(*task, outcome, start);
    Finish(task, std::move(outcome));
  }
}

TaskOutcome WorkerCore::RunHandler(Task& task) {
  if (task.context.cancelled()) return TaskOutcome();  // Replaced by Finish.
  try {
    return handler_(task.context);
  } catch (const std::exception& e) {
    TaskOutcome outcome;
    outcome.success = false;
    outcome.error_code = "HANDLER_EXCEPTION";
    outcome.error_message = e.what();
    return outcome;
  } catch (...) {
    TaskOutcome outcome;
    outcome.success = false;
    outcome.error_code = "HANDLER_EXCEPTION";
    outcome.error_message = "unknown exception";
    return outcome;
  }
}

void WorkerCore::Finish(const std::shared_ptr<Task>& task,
                        TaskOutcome outcome) {
  v1::TaskResult result;
  *result.mutable_lease() = task->assignment.lease();
  {
    absl::MutexLock lock(&task->mu);
    if (task->cancelled) {
      outcome.success = false;
      outcome.error_code = "CANCELLED";
      outcome.error_message = task->cancel_reason;
      outcome.retryable = true;  // The server knows why it cancelled.
    }
  }
  result.set_success(outcome.success);
  result.set_exit_code(outcome.exit_code);
  if (outcome.success) {
    result.set_output(std::move(outcome.output));
  } else {
    v1::TaskError* error = result.mutable_error();
    error->set_code(std::move(outcome.error_code));
    error->set_message(std::move(outcome.error_message));
    error->set_non_retryable(!outcome.retryable);
  }

  StreamOp op;
  {
    absl::MutexLock lock(&mu_);
    ++stats_.tasks_completed;
    auto it = live_tasks_.find(task->key);
    const bool current = task->generation == generation_ &&
                         stream_ != nullptr && !closing_ &&
                         it != live_tasks_.end() && it->second == task;
    if (!current) {
      ++stats_.results_discarded;
      return;
    }
    live_tasks_.erase(it);
    // Progress still waiting for the wire is moot now, but a checkpoint is
    // not: the next attempt needs it, and it goes out before the result
    // (progress precedes results in a message, and the server reads them in
    // that order).
    if (auto p = pending_progress_.find(task->key); p != pending_progress_.end()) {
      if (p->second.checkpoint().empty()) {
        pending_progress_.erase(p);
      } else {
        p->second.clear_progress();
      }
    }
    pending_results_.push_back(std::move(result));
    op = NextOpLocked();
  }
  Perform(op);
}

v1::TaskProgress* WorkerCore::PendingProgressLocked(Task* task) {
  auto it = live_tasks_.find(task->key);
  if (task->generation != generation_ || closing_ || it == live_tasks_.end() ||
      it->second.get() != task) {
    return nullptr;  // the attempt is over or its stream is gone
  }
  v1::TaskProgress& progress = pending_progress_[task->key];
  *progress.mutable_lease() = task->assignment.lease();
  return &progress;
}

void WorkerCore::ReportProgress(Task* task, int64_t step, int64_t total,
                                std::string message) {
  StreamOp op;
  {
    absl::MutexLock lock(&mu_);
    v1::TaskProgress* progress = PendingProgressLocked(task);
    if (progress == nullptr) return;
    progress->mutable_progress()->set_step(step);
    progress->mutable_progress()->set_total(total);
    progress->mutable_progress()->set_message(std::move(message));
    op = NextOpLocked();
  }
  Perform(op);
}

void WorkerCore::ReportCheckpoint(Task* task, std::string checkpoint) {
  StreamOp op;
  {
    absl::MutexLock lock(&mu_);
    v1::TaskProgress* progress = PendingProgressLocked(task);
    if (progress == nullptr) return;
    progress->set_checkpoint(std::move(checkpoint));
    op = NextOpLocked();
  }
  Perform(op);
}

}  // namespace internal

// ---------------------------------------------------------------------------
// TaskContext

const forge::v1::Assignment& TaskContext::assignment() const {
  return task_->assignment;
}

const std::string& TaskContext::traceparent() const { return task_->traceparent; }

void internal::WorkerCore::ExportSpan(const internal::Task& task, const TaskOutcome& outcome,
                            absl::Time start) {
  const v1::Assignment& a = task.assignment;
  otlp::Span span;
  span.trace_id = task.parent->trace_id;
  span.span_id = task.span_id;
  span.parent_span_id = task.parent->span_id;
  span.name = "forge.worker.handle";
  span.kind = otlp::SpanKind::kConsumer;
  span.start = start;
  span.end = absl::Now();
  span.attributes.push_back({"forge.graph.id", a.lease().graph_id()});
  span.attributes.push_back({"forge.task.name", a.task()});
  span.attributes.push_back({"forge.task.attempt", static_cast<int64_t>(a.lease().attempt())});
  span.attributes.push_back({"forge.queue", a.queue()});
  span.attributes.push_back({"forge.worker.id", worker_id()});
  if (outcome.success && !task.context.cancelled()) {
    span.status = otlp::StatusCode::kOk;
  } else {
    span.status = otlp::StatusCode::kError;
    span.status_message = outcome.error_message;
    if (!outcome.error_code.empty()) {
      span.attributes.push_back({"error.type", outcome.error_code});
    }
  }
  spans_->Export(std::move(span));
}

bool TaskContext::cancelled() const {
  absl::MutexLock lock(&task_->mu);
  return task_->cancelled;
}

bool TaskContext::WaitCancelled(absl::Duration d) {
  absl::MutexLock lock(&task_->mu);
  return task_->mu.AwaitWithTimeout(absl::Condition(&task_->cancelled), d);
}

void TaskContext::ReportProgress(int64_t step, int64_t total,
                                 std::string message) {
  task_->core->ReportProgress(task_, step, total, std::move(message));
}

void TaskContext::Checkpoint(std::string checkpoint) {
  task_->core->ReportCheckpoint(task_, std::move(checkpoint));
}

// ---------------------------------------------------------------------------
// Worker

Worker::Worker(WorkerOptions options, Handler handler)
    : core_(std::make_unique<internal::WorkerCore>(std::move(options),
                                                   std::move(handler))) {}

Worker::~Worker() { core_->Stop(); }

absl::Status Worker::Start() { return core_->Start(); }
void Worker::Stop() { core_->Stop(); }
absl::Status Worker::Wait() { return core_->Wait(); }
std::string Worker::worker_id() const { return core_->worker_id(); }
WorkerStats Worker::stats() const { return core_->stats(); }

}  // namespace forge::client
