// WorkerService: one session per Connect stream. A session is the executor of
// its worker: the engine hands it batches of assignments (never more than the
// worker's free slots) and cancels; it writes them on the stream one message
// at a time, coalescing whatever accumulates while a write is in flight.
#pragma once

#include <atomic>

#include "forge/v1/worker.grpc.pb.h"
#include "server/engine/engine.h"

namespace forge::api {

struct WorkerServiceOptions {
  int32_t max_slots = 10000;
  int64_t max_queues = 64;
};

class WorkerServiceImpl final : public forge::v1::WorkerService::CallbackService {
 public:
  explicit WorkerServiceImpl(Engine* engine, WorkerServiceOptions options = {})
      : engine_(*engine), options_(options) {}

  grpc::ServerBidiReactor<forge::v1::WorkerMessage, forge::v1::ServerMessage>*
  Connect(grpc::CallbackServerContext* context) override;

 private:
  Engine& engine_;
  const WorkerServiceOptions options_;
  std::atomic<uint64_t> next_session_{1};
};

}  // namespace forge::api
