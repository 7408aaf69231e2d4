// forge::Client: the C++ client of the Orchestrator service, a synchronous
// facade over gRPC's callback API.
//
// Every method blocks the calling thread until the RPC ends and returns the
// server's status as an absl::Status with the same code and message
// (INVALID_ARGUMENT naming the field, NOT_FOUND naming the graph...).
// Transport failures come back as UNAVAILABLE, deadlines as
// DEADLINE_EXCEEDED.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<forge::Client> client,
//                    forge::Client::Connect("127.0.0.1:7070"));
//   ASSIGN_OR_RETURN(forge::v1::GraphSpec spec,
//                    forge::LoadGraphFile("diamond.yaml"));
//   ASSIGN_OR_RETURN(auto submitted, client->Submit(spec, "my-request-id"));
//   ASSIGN_OR_RETURN(auto done, client->WaitGraph(submitted.graph_id()));
//
// Thread contract: a Client is thread-safe; any number of threads may call
// it at once (each call has its own gRPC context on one shared channel).
// Calls block, so never make them from a gRPC callback thread.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "forge/v1/orchestrator.pb.h"
#include "forge/v1/types.pb.h"

namespace grpc {
class Channel;
class ChannelCredentials;
}  // namespace grpc

namespace forge {

struct ClientOptions {
  // Deadline of each unary call (all but WaitGraph and Watch).
  // absl::InfiniteDuration() = no deadline.
  absl::Duration rpc_timeout = absl::Seconds(30);
  // Transport security; null = plaintext (grpc::InsecureChannelCredentials).
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Largest response accepted: a FULL view of a large graph can pass gRPC's
  // 4 MiB default.
  int max_receive_message_bytes = 64 << 20;
  // > 0: Connect waits up to this long for the channel to be ready and fails
  // with UNAVAILABLE if it is not. 0: connect lazily; the first call fails
  // with UNAVAILABLE if the server cannot be reached.
  absl::Duration connect_timeout = absl::ZeroDuration();
};

class Client {
 public:
  // A client of the Orchestrator at `target` ("host:port", or any gRPC
  // target URI such as "dns:///forge.example:7070" or "unix:/run/forge.sock").
  // InvalidArgument if `target` is empty; Unavailable if
  // options.connect_timeout > 0 and the server is not reachable in time.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      const std::string& target, ClientOptions options = {});

  // A client over an existing channel (custom channel arguments, in-process
  // channels in tests). options.credentials and max_receive_message_bytes
  // are ignored: they are the channel's.
  static std::unique_ptr<Client> FromChannel(
      std::shared_ptr<grpc::Channel> channel, ClientOptions options = {});

  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Submits a graph. With a non-empty `request_id` the call is idempotent:
  // retrying it (after UNAVAILABLE or DEADLINE_EXCEEDED, say) returns the
  // graph the first call created, with created() = false.
  absl::StatusOr<forge::v1::SubmitGraphResponse> Submit(
      const forge::v1::GraphSpec& graph, const std::string& request_id = "");

  // The graph `graph_id`; FULL (with its tasks) unless `view` says BASIC.
  absl::StatusOr<forge::v1::Graph> GetGraph(
      const std::string& graph_id, forge::v1::GraphView view = forge::v1::FULL);

  // One page of graphs, newest first; pass next_page_token back as
  // page_token for the next page.
  absl::StatusOr<forge::v1::ListGraphsResponse> ListGraphs(
      const forge::v1::ListGraphsRequest& request);
  // The scheduler's queues and the connected workers (forgectl queues/workers).
  absl::StatusOr<forge::v1::ListQueuesResponse> ListQueues();
  absl::StatusOr<forge::v1::ListWorkersResponse> ListWorkers();

  // One task of a graph, with its attempt history.
  absl::StatusOr<forge::v1::Task> GetTask(const std::string& graph_id,
                                          const std::string& task);

  // Blocks until the graph is terminal or `timeout` has passed; in the
  // latter case the graph is returned as it is then, with terminal() =
  // false. absl::InfiniteDuration() (the default) waits until terminal with
  // no deadline at all; a finite timeout bounds the call by timeout +
  // ClientOptions::rpc_timeout.
  absl::StatusOr<forge::v1::WaitGraphResponse> WaitGraph(
      const std::string& graph_id,
      absl::Duration timeout = absl::InfiniteDuration(),
      forge::v1::GraphView view = forge::v1::GRAPH_VIEW_UNSPECIFIED);

  // Cancels every unfinished task of the graph. Idempotent. `reason` is
  // recorded in the cancel events.
  absl::StatusOr<forge::v1::CancelGraphResponse> CancelGraph(
      const std::string& graph_id, const std::string& reason = "");

  // Cancels one task; its dependents then follow their triggers. Idempotent.
  absl::StatusOr<forge::v1::CancelTaskResponse> CancelTask(
      const std::string& graph_id, const std::string& task,
      const std::string& reason = "");

  // Streams the events `request` selects, calling `on_message` for each
  // message in order, on the calling thread, one at a time (the next message
  // is read only once `on_message` has returned, so a slow callback slows the
  // stream, never buffers it). Returns:
  //   - OK when `on_message` returns false (the call is then cancelled) or
  //     when the server ends the stream OK (a graph watch ends once the graph
  //     is terminal);
  //   - the server's status otherwise, e.g. RESOURCE_EXHAUSTED "resume
  //     after_seq=N" for a subscriber that fell behind, OUT_OF_RANGE for a
  //     resume token that is too old, DEADLINE_EXCEEDED past `deadline`.
  // No deadline unless one is given.
  absl::Status Watch(
      const forge::v1::WatchRequest& request,
      const std::function<bool(const forge::v1::WatchResponse&)>& on_message,
      absl::Duration deadline = absl::InfiniteDuration());

 private:
  class Impl;  // Holds the channel and the stub (keeps gRPC headers out).
  explicit Client(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace forge
