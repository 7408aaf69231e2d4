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
#include "absl/synchronization/mutex.h"
#include "common/flag_names.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "server/forge_server.h"
#include "server/server_config.h"

#ifdef FORGE_JEMALLOC
// jemalloc's options, read at start (MALLOC_CONF in the environment still
// overrides them). Its own background threads give freed memory back to the
// system about a second after it was last used, so a server whose big graph
// finished (or left memory) shrinks even when idle; without them an idle
// process keeps every page it ever freed.
extern "C" const char* malloc_conf;
const char* malloc_conf = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";
#endif

ABSL_FLAG(std::string, listen, "127.0.0.1:7070",
          "gRPC listen address HOST:PORT (port 0 = any free port)");
ABSL_FLAG(bool, ephemeral, false,
          "Keep state in memory only, nothing on disk (tests, benchmarks)");
ABSL_FLAG(std::string, data_dir, "forge-data",
          "Directory of the embedded durable journal (created if missing); "
          "state is recovered from it at start");
ABSL_FLAG(absl::Duration, retention, absl::Hours(24),
          "How long finished graphs stay readable before they are deleted");
ABSL_FLAG(absl::Duration, memory_retention, absl::Seconds(10),
          "How long finished graphs stay in memory (durable store); after it "
          "they are read from the data directory until --retention ends");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Prometheus /metrics address HOST:PORT (empty = none)");
ABSL_FLAG(std::string, otlp_endpoint, "",
          "OTLP/HTTP collector for traces, e.g. http://127.0.0.1:4318 (empty = "
          "no tracing)");
ABSL_FLAG(int, shards, 16, "Store shards (each one mutex)");
ABSL_FLAG(int64_t, max_tasks, 1000000, "Most tasks in one graph");
ABSL_FLAG(int64_t, max_input_bytes, 1 << 20, "Largest task input");
ABSL_FLAG(std::string, config, "",
          "YAML config file: queues (concurrency, ordering) and command runner profiles (see README)");
ABSL_FLAG(std::vector<std::string>, queue_concurrency, {},
          "Per-queue concurrency limits, QUEUE=N[,QUEUE=N...] (default: none)");
ABSL_FLAG(double, shutdown_grace_seconds, 10,
          "On SIGTERM, how long in-flight calls get before they are cancelled");
ABSL_FLAG(std::string, log_format, "text",
          "Log line format on stderr: text (key=value) or json (one object a line)");
ABSL_FLAG(std::string, log_level, "info",
          "Lowest level logged: debug, info, warn or error (debug adds lines per "
          "task and per worker message)");

namespace {

// Configures logging from --log-format and --log-level; false (after saying
// why on stderr, naming the flag) if one is not valid.
bool ConfigureLogging() {
  forge::log::Options options;
  absl::StatusOr<forge::log::Format> format =
      forge::log::ParseFormat(absl::GetFlag(FLAGS_log_format));
  if (!format.ok()) {
    std::fprintf(stderr, "forged: --log-format: %s\n",
                 std::string(format.status().message()).c_str());
    return false;
  }
  absl::StatusOr<forge::log::Level> level =
      forge::log::ParseLevel(absl::GetFlag(FLAGS_log_level));
  if (!level.ok()) {
    std::fprintf(stderr, "forged: --log-level: %s\n",
                 std::string(level.status().message()).c_str());
    return false;
  }
  options.format = *format;
  options.level = *level;
  forge::log::Configure(std::move(options));
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "forged: the Forge task-graph server.\n  forged [--listen HOST:PORT] "
      "[--data-dir DIR | --ephemeral] [--retention 24h] [--memory-retention 10s] [--metrics-listen HOST:PORT] [--otlp-endpoint URL] [--queue-concurrency Q=N,...] [--config FILE]\n"
      "  [--log-format text|json] [--log-level debug|info|warn|error]\n"
      "Flags may be spelled with dashes or underscores.");
  // Debian's Abseil is built with Mutex deadlock detection on: every lock
  // of every mutex walks a global lock graph (a few percent of forged's CPU
  // under load, and a global lock of its own). The tests keep it (they run
  // the same code in-process, and under TSan); the server does without.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  std::vector<std::string> storage;
  std::vector<char*> args = forge::NormalizeFlagNames(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (!ConfigureLogging()) return 2;

  // A log write to a stderr nobody reads any more (a closed pipe) must fail
  // with EPIPE, which the logger drops, not kill the server. Children get
  // default dispositions back (server/exec/process.h).
  std::signal(SIGPIPE, SIG_IGN);

  // Signals are taken by one thread with sigwait, never by a handler.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  forge::ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.otlp_endpoint = absl::GetFlag(FLAGS_otlp_endpoint);
  options.engine.store.shards = absl::GetFlag(FLAGS_shards);
  options.engine.limits.max_tasks = absl::GetFlag(FLAGS_max_tasks);
  options.engine.limits.max_input_bytes = absl::GetFlag(FLAGS_max_input_bytes);
  options.engine.retention = absl::GetFlag(FLAGS_retention);
  options.engine.memory_retention = absl::GetFlag(FLAGS_memory_retention);
  for (const auto& [flag, d] : {std::pair<const char*, absl::Duration>{"--retention", options.engine.retention},
                                {"--memory-retention", options.engine.memory_retention}}) {
    if (d < absl::ZeroDuration()) {
      FORGE_LOG(ERROR, absl::StrCat(flag, ": must not be negative")).With("flag", flag);
      return 2;
    }
  }
  if (!absl::GetFlag(FLAGS_ephemeral)) options.data_dir = absl::GetFlag(FLAGS_data_dir);
  if (const std::string config = absl::GetFlag(FLAGS_config); !config.empty()) {
    if (absl::Status s = forge::LoadServerConfig(config, &options); !s.ok()) {
      FORGE_LOG(ERROR, absl::StrCat("--config ", config, ": ", s.message()))
          .With("flag", "--config")
          .WithStatus(s);
      return 2;
    }
  }
  std::vector<std::pair<std::string, int>> limits;
  for (const std::string& item : absl::GetFlag(FLAGS_queue_concurrency)) {
    const size_t eq = item.find('=');
    int n = 0;
    if (eq == std::string::npos || eq == 0 ||
        !absl::SimpleAtoi(item.substr(eq + 1), &n) || n < 0) {
      FORGE_LOG(ERROR, absl::StrCat("--queue-concurrency: \"", item, "\" is not QUEUE=N"))
          .With("flag", "--queue-concurrency")
          .With("value", item);
      return 2;
    }
    limits.emplace_back(item.substr(0, eq), n);
  }
  absl::StatusOr<std::unique_ptr<forge::ForgeServer>> server =
      forge::ForgeServer::Start(options);
  if (!server.ok()) {
    FORGE_LOG(ERROR, "cannot start").WithStatus(server.status());
    return 1;
  }
  for (const auto& [queue, n] : limits) {
    forge::sched::QueueConfig q = options.queues.count(queue)
                                      ? options.queues[queue]
                                      : options.engine.default_queue;
    q.concurrency = n;
    (*server)->engine().scheduler().Configure(queue, q);
  }
  // Tests and scripts wait for "listening on HOST:PORT" in this, the first
  // line at info (recovery logs nothing above debug before it).
  {
    const std::string& address = (*server)->address();
    if (options.data_dir.empty()) {
      FORGE_LOG(INFO, absl::StrCat("listening on ", address))
          .With("address", address)
          .With("store", "memory");
    } else {
      const forge::RecoveryStats& r = (*server)->recovery();
      FORGE_LOG(INFO, absl::StrCat("listening on ", address))
          .With("address", address)
          .With("store", options.data_dir)
          .With("recovered_graphs", r.graphs)
          .With("live_graphs", r.live_graphs)
          .With("archived_graphs", r.archived_graphs)
          .With("recovered_tasks", r.tasks)
          .With("recovered_events", r.events)
          .With("restarted_attempts", r.restarted_attempts)
          .With("recovery_seconds", absl::ToDoubleSeconds(r.took));
    }
  }
  if ((*server)->metrics_port() != 0) {
    FORGE_LOG(INFO, absl::StrCat("metrics on port ", (*server)->metrics_port(), " at /metrics"))
        .With("port", (*server)->metrics_port());
  }

  int sig = 0;
  sigwait(&signals, &sig);
  FORGE_LOG(INFO, "shutting down").With("signal", sig);
  (*server)->Shutdown(
      absl::Seconds(absl::GetFlag(FLAGS_shutdown_grace_seconds)));
  (*server)->Wait();
  server->reset();
  FORGE_LOG(INFO, "stopped");
  return 0;
}
