// server/api: the gRPC face of Forge. Services translate and validate
// requests, call the engine, and map absl::Status to gRPC codes; they keep
// no state of their own beyond the RPCs in flight.
#pragma once

#include "forge/v1/orchestrator.grpc.pb.h"
#include "server/engine/engine.h"
#include "server/sched/timer_service.h"

namespace forge::api {

struct WatchOptions {
  // Most events per WatchResponse message.
  size_t max_batch = 512;
  // How long a cut-off subscriber whose write is stuck (a client that stopped
  // reading) is given before its call is cancelled.
  absl::Duration stuck_write_grace = absl::Seconds(5);
};

// Orchestrator over the callback API. Every handler returns at once; long
// calls (WaitGraph, Watch) are reactors woken by engine callbacks and the
// event bus, never by polling.
class OrchestratorService final : public forge::v1::Orchestrator::CallbackService {
 public:
  OrchestratorService(Engine* engine, TimerService* timers,
                      WatchOptions options = {})
      : engine_(*engine), timers_(*timers), options_(options) {}

  grpc::ServerUnaryReactor* SubmitGraph(
      grpc::CallbackServerContext* context,
      const forge::v1::SubmitGraphRequest* request,
      forge::v1::SubmitGraphResponse* response) override;
  grpc::ServerUnaryReactor* GetGraph(
      grpc::CallbackServerContext* context,
      const forge::v1::GetGraphRequest* request,
      forge::v1::GetGraphResponse* response) override;
  grpc::ServerUnaryReactor* ListGraphs(
      grpc::CallbackServerContext* context,
      const forge::v1::ListGraphsRequest* request,
      forge::v1::ListGraphsResponse* response) override;
  grpc::ServerUnaryReactor* GetTask(
      grpc::CallbackServerContext* context,
      const forge::v1::GetTaskRequest* request,
      forge::v1::GetTaskResponse* response) override;
  grpc::ServerUnaryReactor* WaitGraph(
      grpc::CallbackServerContext* context,
      const forge::v1::WaitGraphRequest* request,
      forge::v1::WaitGraphResponse* response) override;
  grpc::ServerWriteReactor<forge::v1::WatchResponse>* Watch(
      grpc::CallbackServerContext* context,
      const forge::v1::WatchRequest* request) override;
  grpc::ServerUnaryReactor* CancelGraph(
      grpc::CallbackServerContext* context,
      const forge::v1::CancelGraphRequest* request,
      forge::v1::CancelGraphResponse* response) override;
  grpc::ServerUnaryReactor* CancelTask(
      grpc::CallbackServerContext* context,
      const forge::v1::CancelTaskRequest* request,
      forge::v1::CancelTaskResponse* response) override;
  grpc::ServerUnaryReactor* ListQueues(
      grpc::CallbackServerContext* context,
      const forge::v1::ListQueuesRequest* request,
      forge::v1::ListQueuesResponse* response) override;
  grpc::ServerUnaryReactor* ListWorkers(
      grpc::CallbackServerContext* context,
      const forge::v1::ListWorkersRequest* request,
      forge::v1::ListWorkersResponse* response) override;

 private:
  Engine& engine_;
  TimerService& timers_;
  const WatchOptions options_;
};

}  // namespace forge::api
