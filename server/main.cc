// forged: the Forge server. Flags, wiring, signals (SIGTERM/SIGINT = stop
// intake and drain), health and reflection.
#include <csignal>
#include <cstdio>
#include <pthread.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "server/forge_server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7070",
          "gRPC listen address HOST:PORT (port 0 = any free port)");
ABSL_FLAG(bool, ephemeral, false,
          "Keep state in memory only (tests, benchmarks). Until the durable "
          "journal lands, every mode is memory-only.");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Prometheus /metrics address HOST:PORT (empty = none)");
ABSL_FLAG(int, shards, 16, "Store shards (each one mutex)");
ABSL_FLAG(int64_t, max_tasks, 1000000, "Most tasks in one graph");
ABSL_FLAG(int64_t, max_input_bytes, 1 << 20, "Largest task input");
ABSL_FLAG(double, shutdown_grace_seconds, 10,
          "On SIGTERM, how long in-flight calls get before they are cancelled");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "forged: the Forge task-graph server.\n  forged [--listen HOST:PORT] "
      "[--ephemeral] [--metrics-listen HOST:PORT]");
  absl::ParseCommandLine(argc, argv);

  // Signals are taken by one thread with sigwait, never by a handler.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  forge::ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.engine.store.shards = absl::GetFlag(FLAGS_shards);
  options.engine.limits.max_tasks = absl::GetFlag(FLAGS_max_tasks);
  options.engine.limits.max_input_bytes = absl::GetFlag(FLAGS_max_input_bytes);
  absl::StatusOr<std::unique_ptr<forge::ForgeServer>> server =
      forge::ForgeServer::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "forged: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "forged: listening on %s (store: memory)\n",
               (*server)->address().c_str());
  if ((*server)->metrics_port() != 0) {
    std::fprintf(stderr, "forged: metrics on port %d at /metrics\n",
                 (*server)->metrics_port());
  }
  std::fflush(stderr);

  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "forged: signal %d, shutting down\n", sig);
  (*server)->Shutdown(
      absl::Seconds(absl::GetFlag(FLAGS_shutdown_grace_seconds)));
  (*server)->Wait();
  server->reset();
  std::fprintf(stderr, "forged: stopped\n");
  return 0;
}
