// ForgeServer: the composition root. Builds the timer service, event bus,
// engine and gRPC services in an explicit order, serves them, and tears them
// down in reverse. forged's main() and the in-process integration tests both
// use it.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "server/api/orchestrator_service.h"
#include "server/engine/engine.h"
#include "server/events/event_bus.h"
#include "server/exec/runner.h"
#include "server/sched/timer_service.h"

namespace grpc {
class Server;
}

namespace forge {

namespace api {
class WorkerServiceImpl;
}  // namespace api
namespace obs {
class MetricsServer;
class RpcMetrics;
}  // namespace obs
namespace otlp {
class SpanExporter;
}  // namespace otlp

struct ServerOptions {
  // host:port; port 0 picks a free port (see ForgeServer::port()).
  std::string listen = "127.0.0.1:7070";
  // The embedded durable journal's directory (RocksDB); state is recovered
  // from it at start. Empty: ephemeral (memory only).
  std::string data_dir;
  // Durable mode: fsync every group commit (false: survives a crash of the
  // process, not of the machine; benchmarks).
  bool sync = true;
  EngineOptions engine;
  events::BusOptions bus;
  api::WatchOptions watch;
  // Per-queue configuration (others get engine.default_queue).
  std::map<std::string, sched::QueueConfig> queues;
  // The built-in command runner; off unless it has profiles.
  exec::RunnerConfig runner;
  // Prometheus /metrics address; empty = no metrics endpoint.
  std::string metrics_listen;
  // OTLP/HTTP collector (http://host:4318) for traces; empty = none.
  std::string otlp_endpoint;
  // Largest gRPC message accepted or sent (a 1,000,000-task graph is ~40 MB).
  int max_message_bytes = 256 << 20;
};

class ForgeServer {
 public:
  // Builds and starts serving. Errors: the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<ForgeServer>> Start(
      ServerOptions options, Clock* clock = Clock::Real());
  ~ForgeServer();

  int port() const { return port_; }
  // Port of the metrics endpoint (0 when disabled).
  int metrics_port() const;
  std::string address() const;

  // Graceful stop: health goes NOT_SERVING, submits get UNAVAILABLE, nothing
  // new is dispatched, running attempts get up to `grace` to report, then
  // every call ends. Blocks (not for reactor threads). Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(5));
  // Blocks until Shutdown() completes.
  void Wait();

  Engine& engine() { return *engine_; }
  // What recovery found at start (durable mode).
  const RecoveryStats& recovery() const { return recovery_; }
  // The journal (null when ephemeral).
  persist::Journal* journal() { return journal_.get(); }
  // The span exporter, or null when --otlp-endpoint is not set.
  otlp::SpanExporter* spans() { return spans_.get(); }
  // The command runner, or null when no profile is configured.
  exec::CommandRunner* runner() { return runner_.get(); }

 private:
  ForgeServer() = default;

  ServerOptions options_;
  int port_ = 0;
  std::unique_ptr<TimerService> timers_;
  std::unique_ptr<events::EventBus> bus_;
  // Outlives the engine's last transition: stopped explicitly in the
  // destructor, after the server, the runner and the timers.
  std::unique_ptr<persist::Journal> journal_;
  RecoveryStats recovery_;
  // Outlive the engine and the server (which use them).
  std::unique_ptr<otlp::SpanExporter> spans_;
  std::unique_ptr<obs::RpcMetrics> rpc_metrics_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<exec::CommandRunner> runner_;
  std::unique_ptr<api::OrchestratorService> orchestrator_;
  std::unique_ptr<api::WorkerServiceImpl> workers_;
  std::unique_ptr<grpc::Server> server_;
  // Read by the journal-failure callback (another thread) once serving.
  std::atomic<grpc::Server*> serving_{nullptr};
  std::unique_ptr<obs::MetricsServer> metrics_;
  absl::Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace forge
