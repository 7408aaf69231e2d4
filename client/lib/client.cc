// forge::Client over gRPC's callback API: each method starts a callback RPC
// and waits for it on the calling thread. gRPC's threads only record results
// and signal; they never run user code.

#include "client/lib/client.h"

#include <chrono>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/proto_time.h"
#include "common/tsan.h"
#include "forge/v1/orchestrator.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace forge {
namespace {

using forge::v1::Orchestrator;

// gRPC and absl share the canonical status codes, number for number.
absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

// Sets the call's deadline `timeout` from now; none if infinite.
void SetTimeout(grpc::ClientContext* context, absl::Duration timeout) {
  if (timeout == absl::InfiniteDuration()) return;
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

// Runs one unary callback RPC and blocks until it completes. `start` is
// called as start(context, request, response, done) and must start the call
// (stub->async()->Method(...)).
template <typename Request, typename Response, typename Start>
absl::StatusOr<Response> CallUnary(const Request& request,
                                   absl::Duration timeout, Start start) {
  grpc::ClientContext context;
  SetTimeout(&context, timeout);
  Response response;
  // Set once by the callback, on a gRPC thread; read after `done`. (A mutex
  // rather than absl::Notification: the waiting side always takes the lock,
  // so the hand-off is visible to ThreadSanitizer, whose view of Debian's
  // Abseil covers Mutex but not Notification's lock-free fast path.)
  absl::Mutex mu;
  grpc::Status status;
  bool done = false;
  // The callback stores and signals, nothing more.
  start(&context, &request, &response,
        std::function<void(grpc::Status)>([&](grpc::Status s) {
          absl::MutexLock lock(&mu);
          status = std::move(s);
          done = true;
        }));
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(&done));
  }
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

// Reads a Watch stream one message at a time on behalf of a thread blocked
// in Client::Watch. The reactions (gRPC threads) only record what happened
// under mu_; the waiting thread does the rest: it hands each message to the
// user's callback, then asks for the next one. At most one read is in
// flight, and `response_` is touched by gRPC only while one is.
//
// Reads are started from outside the reactions, so the reader holds the
// call open (AddHold) until it will start no more of them (Release);
// without the hold gRPC may end the call, and run OnDone, between a read
// and the next StartRead.
class WatchReader final
    : public grpc::ClientReadReactor<forge::v1::WatchResponse> {
 public:
  // Starts the call. The reader must outlive it: call Release() then
  // WaitDone() before destroying the reader.
  void Start(Orchestrator::Stub* stub, grpc::ClientContext* context,
             const forge::v1::WatchRequest* request) {
    stub->async()->Watch(context, request, this);
    AddHold();
    FORGE_TSAN_HANDOFF(&response_);
    StartRead(&response_);
    StartCall();
  }

  // Blocks until the pending read ends: returns the message read (valid
  // until Next()), or null once the stream is over.
  const forge::v1::WatchResponse* Await() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](WatchReader* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->mu_) {
          return r->has_message_ || r->read_ended_;
        },
        this));
    if (has_message_) {
      has_message_ = false;
      return &response_;
    }
    return nullptr;
  }

  // Reads the next message; the previous one must no longer be used.
  void Next() {
    FORGE_TSAN_HANDOFF(&response_);
    StartRead(&response_);
  }

  // No more reads will be started: lets the call end. Once, with no read
  // in flight (after Await returned).
  void Release() { RemoveHold(); }

  // Waits for the end of the call (OnDone) and returns its status.
  grpc::Status WaitDone() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
    return status_;
  }

  // grpc::ClientReadReactor<WatchResponse>:
  void OnReadDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    FORGE_TSAN_RECEIVE(&response_);
    absl::MutexLock lock(&mu_);
    if (ok) {
      has_message_ = true;
    } else {
      read_ended_ = true;  // OnDone follows with the status.
    }
  }
  void OnDone(const grpc::Status& status) override ABSL_LOCKS_EXCLUDED(mu_) {
    // The last reaction: once done_ is set the waiting thread may destroy
    // this object, so nothing touches it after the lock is released.
    absl::MutexLock lock(&mu_);
    status_ = status;
    done_ = true;
  }

 private:
  forge::v1::WatchResponse response_;  // Written by gRPC during a read.
  absl::Mutex mu_;
  bool has_message_ ABSL_GUARDED_BY(mu_) = false;
  bool read_ended_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

class Client::Impl {
 public:
  Impl(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
      : channel_(std::move(channel)),
        stub_(Orchestrator::NewStub(channel_)),
        options_(std::move(options)) {}

  grpc::Channel* channel() { return channel_.get(); }
  Orchestrator::Stub* stub() { return stub_.get(); }
  const ClientOptions& options() const { return options_; }

 private:
  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<Orchestrator::Stub> stub_;  // Thread-safe.
  const ClientOptions options_;
};

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    const std::string& target, ClientOptions options) {
  if (target.empty()) {
    return absl::InvalidArgumentError("empty server address");
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      options.credentials != nullptr ? options.credentials
                                     : grpc::InsecureChannelCredentials();
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(target, credentials, args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create a channel to \"", target, "\""));
  }
  if (options.connect_timeout > absl::ZeroDuration()) {
    const bool connected = channel->WaitForConnected(
        absl::ToChronoTime(absl::Now() + options.connect_timeout));
    if (!connected) {
      return absl::UnavailableError(
          absl::StrCat("cannot connect to ", target, " within ",
                       absl::FormatDuration(options.connect_timeout)));
    }
  }
  return FromChannel(std::move(channel), std::move(options));
}

std::unique_ptr<Client> Client::FromChannel(
    std::shared_ptr<grpc::Channel> channel, ClientOptions options) {
  return std::unique_ptr<Client>(new Client(
      std::make_unique<Impl>(std::move(channel), std::move(options))));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

absl::StatusOr<forge::v1::SubmitGraphResponse> Client::Submit(
    const forge::v1::GraphSpec& graph, const std::string& request_id) {
  forge::v1::SubmitGraphRequest request;
  request.set_request_id(request_id);
  *request.mutable_graph() = graph;
  return CallUnary<forge::v1::SubmitGraphRequest,
                   forge::v1::SubmitGraphResponse>(
      request, impl_->options().rpc_timeout,
      [this](auto* context, auto* req, auto* resp, auto done) {
        impl_->stub()->async()->SubmitGraph(context, req, resp,
                                            std::move(done));
      });
}

absl::StatusOr<forge::v1::Graph> Client::GetGraph(const std::string& graph_id,
                                                  forge::v1::GraphView view) {
  forge::v1::GetGraphRequest request;
  request.set_graph_id(graph_id);
  request.set_view(view);
  absl::StatusOr<forge::v1::GetGraphResponse> response =
      CallUnary<forge::v1::GetGraphRequest, forge::v1::GetGraphResponse>(
          request, impl_->options().rpc_timeout,
          [this](auto* context, auto* req, auto* resp, auto done) {
            impl_->stub()->async()->GetGraph(context, req, resp,
                                             std::move(done));
          });
  if (!response.ok()) return response.status();
  return std::move(*response->mutable_graph());
}

absl::StatusOr<forge::v1::ListGraphsResponse> Client::ListGraphs(
    const forge::v1::ListGraphsRequest& request) {
  return CallUnary<forge::v1::ListGraphsRequest, forge::v1::ListGraphsResponse>(
      request, impl_->options().rpc_timeout,
      [this](auto* context, auto* req, auto* resp, auto done) {
        impl_->stub()->async()->ListGraphs(context, req, resp, std::move(done));
      });
}

absl::StatusOr<forge::v1::ListQueuesResponse> Client::ListQueues() {
  return CallUnary<forge::v1::ListQueuesRequest, forge::v1::ListQueuesResponse>(
      forge::v1::ListQueuesRequest(), impl_->options().rpc_timeout,
      [this](auto* context, auto* req, auto* resp, auto done) {
        impl_->stub()->async()->ListQueues(context, req, resp, std::move(done));
      });
}

absl::StatusOr<forge::v1::ListWorkersResponse> Client::ListWorkers() {
  return CallUnary<forge::v1::ListWorkersRequest, forge::v1::ListWorkersResponse>(
      forge::v1::ListWorkersRequest(), impl_->options().rpc_timeout,
      [this](auto* context, auto* req, auto* resp, auto done) {
        impl_->stub()->async()->ListWorkers(context, req, resp, std::move(done));
      });
}

absl::StatusOr<forge::v1::Task> Client::GetTask(const std::string& graph_id,
                                                const std::string& task) {
  forge::v1::GetTaskRequest request;
  request.set_graph_id(graph_id);
  request.set_task(task);
  absl::StatusOr<forge::v1::GetTaskResponse> response =
      CallUnary<forge::v1::GetTaskRequest, forge::v1::GetTaskResponse>(
          request, impl_->options().rpc_timeout,
          [this](auto* context, auto* req, auto* resp, auto done) {
            impl_->stub()->async()->GetTask(context, req, resp,
                                            std::move(done));
          });
  if (!response.ok()) return response.status();
  return std::move(*response->mutable_task());
}

absl::StatusOr<forge::v1::WaitGraphResponse> Client::WaitGraph(
    const std::string& graph_id, absl::Duration timeout,
    forge::v1::GraphView view) {
  forge::v1::WaitGraphRequest request;
  request.set_graph_id(graph_id);
  request.set_view(view);
  absl::Duration call_timeout = absl::InfiniteDuration();
  if (timeout != absl::InfiniteDuration()) {
    if (timeout < absl::ZeroDuration()) timeout = absl::ZeroDuration();
    ToProto(timeout, request.mutable_timeout());
    // The server answers at `timeout`; the deadline leaves it time to.
    call_timeout = timeout + impl_->options().rpc_timeout;
  }
  return CallUnary<forge::v1::WaitGraphRequest, forge::v1::WaitGraphResponse>(
      request, call_timeout,
      [this](auto* context, auto* req, auto* resp, auto done) {
        impl_->stub()->async()->WaitGraph(context, req, resp, std::move(done));
      });
}

absl::StatusOr<forge::v1::CancelGraphResponse> Client::CancelGraph(
    const std::string& graph_id, const std::string& reason) {
  forge::v1::CancelGraphRequest request;
  request.set_graph_id(graph_id);
  request.set_reason(reason);
  return CallUnary<forge::v1::CancelGraphRequest,
                   forge::v1::CancelGraphResponse>(
      request, impl_->options().rpc_timeout,
      [this](auto* context, auto* req, auto* resp, auto done) {
        impl_->stub()->async()->CancelGraph(context, req, resp,
                                            std::move(done));
      });
}

absl::StatusOr<forge::v1::CancelTaskResponse> Client::CancelTask(
    const std::string& graph_id, const std::string& task,
    const std::string& reason) {
  forge::v1::CancelTaskRequest request;
  request.set_graph_id(graph_id);
  request.set_task(task);
  request.set_reason(reason);
  return CallUnary<forge::v1::CancelTaskRequest, forge::v1::CancelTaskResponse>(
      request, impl_->options().rpc_timeout,
      [this](auto* context, auto* req, auto* resp, auto done) {
        impl_->stub()->async()->CancelTask(context, req, resp, std::move(done));
      });
}

absl::Status Client::Watch(
    const forge::v1::WatchRequest& request,
    const std::function<bool(const forge::v1::WatchResponse&)>& on_message,
    absl::Duration deadline) {
  grpc::ClientContext context;
  SetTimeout(&context, deadline);
  WatchReader reader;
  reader.Start(impl_->stub(), &context, &request);
  while (const forge::v1::WatchResponse* message = reader.Await()) {
    // User code runs here, on the caller's thread, with no lock held.
    if (!on_message(*message)) {
      context.TryCancel();
      reader.Release();
      reader.WaitDone();  // CANCELLED, or OK if the stream ended meanwhile.
      return absl::OkStatus();
    }
    reader.Next();
  }
  reader.Release();
  return FromGrpcStatus(reader.WaitDone());
}

}  // namespace forge
