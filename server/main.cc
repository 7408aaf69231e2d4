// forged: the Forge server. Flags, wiring, signals (SIGTERM/SIGINT = stop
// intake and drain), health and reflection.
#include <csignal>
#include <cstdio>
#include <pthread.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/forge_server.h"
#include "server/server_config.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7070",
          "gRPC listen address HOST:PORT (port 0 = any free port)");
ABSL_FLAG(bool, ephemeral, false,
          "Keep state in memory only, nothing on disk (tests, benchmarks)");
ABSL_FLAG(std::string, data_dir, "forge-data",
          "Directory of the embedded durable journal (created if missing); "
          "state is recovered from it at start");
ABSL_FLAG(absl::Duration, retention, absl::Hours(24),
          "How long finished graphs stay readable before they are deleted");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Prometheus /metrics address HOST:PORT (empty = none)");
ABSL_FLAG(int, shards, 16, "Store shards (each one mutex)");
ABSL_FLAG(int64_t, max_tasks, 1000000, "Most tasks in one graph");
ABSL_FLAG(int64_t, max_input_bytes, 1 << 20, "Largest task input");
ABSL_FLAG(std::string, config, "",
          "YAML config file: queues (concurrency, ordering) and command runner profiles (see README)");
ABSL_FLAG(std::vector<std::string>, queue_concurrency, {},
          "Per-queue concurrency limits, QUEUE=N[,QUEUE=N...] (default: none)");
ABSL_FLAG(double, shutdown_grace_seconds, 10,
          "On SIGTERM, how long in-flight calls get before they are cancelled");

namespace {

// Flags are spelled with dashes (--metrics-listen); absl's names use
// underscores. Both spellings are accepted.
std::vector<char*> NormalizeFlags(int argc, char** argv,
                                  std::vector<std::string>& storage) {
  storage.reserve(argc);
  std::vector<char*> out;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (i > 0 && arg.rfind("--", 0) == 0) {
      const size_t end = std::min(arg.find('='), arg.size());
      std::replace(arg.begin() + 2, arg.begin() + end, '-', '_');
    }
    storage.push_back(std::move(arg));
  }
  for (std::string& a : storage) out.push_back(a.data());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "forged: the Forge task-graph server.\n  forged [--listen HOST:PORT] "
      "[--data-dir DIR | --ephemeral] [--retention 24h] [--metrics-listen HOST:PORT] [--queue-concurrency Q=N,...] [--config FILE]\n"
      "Flags may be spelled with dashes or underscores.");
  std::vector<std::string> storage;
  std::vector<char*> args = NormalizeFlags(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());

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
  options.engine.retention = absl::GetFlag(FLAGS_retention);
  if (!absl::GetFlag(FLAGS_ephemeral)) options.data_dir = absl::GetFlag(FLAGS_data_dir);
  if (const std::string config = absl::GetFlag(FLAGS_config); !config.empty()) {
    if (absl::Status s = forge::LoadServerConfig(config, &options); !s.ok()) {
      std::fprintf(stderr, "forged: %s\n", s.ToString().c_str());
      return 2;
    }
  }
  std::vector<std::pair<std::string, int>> limits;
  for (const std::string& item : absl::GetFlag(FLAGS_queue_concurrency)) {
    const size_t eq = item.find('=');
    int n = 0;
    if (eq == std::string::npos || eq == 0 ||
        !absl::SimpleAtoi(item.substr(eq + 1), &n) || n < 0) {
      std::fprintf(stderr, "forged: --queue-concurrency: \"%s\" is not QUEUE=N\n",
                   item.c_str());
      return 2;
    }
    limits.emplace_back(item.substr(0, eq), n);
  }
  absl::StatusOr<std::unique_ptr<forge::ForgeServer>> server =
      forge::ForgeServer::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "forged: %s\n", server.status().ToString().c_str());
    return 1;
  }
  for (const auto& [queue, n] : limits) {
    forge::sched::QueueConfig q = options.queues.count(queue)
                                      ? options.queues[queue]
                                      : options.engine.default_queue;
    q.concurrency = n;
    (*server)->engine().scheduler().Configure(queue, q);
  }
  if (options.data_dir.empty()) {
    std::fprintf(stderr, "forged: listening on %s (store: memory)\n",
                 (*server)->address().c_str());
  } else {
    const forge::RecoveryStats& r = (*server)->recovery();
    std::fprintf(stderr,
                 "forged: listening on %s (store: %s; recovered %lld graphs, "
                 "%lld live, %lld tasks, %lld events, %lld attempts restarted, "
                 "in %.3f s)\n",
                 (*server)->address().c_str(), options.data_dir.c_str(),
                 static_cast<long long>(r.graphs), static_cast<long long>(r.live_graphs),
                 static_cast<long long>(r.tasks), static_cast<long long>(r.events),
                 static_cast<long long>(r.restarted_attempts),
                 absl::ToDoubleSeconds(r.took));
  }
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
