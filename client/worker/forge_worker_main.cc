// forge-worker: a ready worker for demos and tests. Serves the given queues
// with one of three behaviours (echo, sleep, fail at a rate) until SIGTERM or
// SIGINT, then stops cleanly and exits 0. Bad usage exits 2.

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/strip.h"
#include "absl/strings/string_view.h"
#include "client/worker/worker.h"

namespace {

constexpr char kUsage[] =
    "usage: forge-worker [--server HOST:PORT] [--queue Q]... [--slots N]\n"
    "                    [--mode echo|sleep:MS|fail:RATE] [--name NAME]\n"
    "  --server  WorkerService address (default: $FORGE_SERVER, else "
    "127.0.0.1:7070)\n"
    "  --queue   queue to serve; repeatable (default: default)\n"
    "  --slots   tasks run at once, 1..10000 (default: 1)\n"
    "  --mode    echo        succeed with the input as output (the task name "
    "if\n"
    "                        the input is empty) (default)\n"
    "            sleep:MS    sleep MS milliseconds (cancellable), then succeed "
    "like echo\n"
    "            fail:RATE   fail with probability RATE in [0,1] (error "
    "INJECTED,\n"
    "                        retryable), else succeed like echo\n"
    "  --name    worker name shown by the server (default: forge-worker)\n"
    "  --otlp-endpoint  OTLP/HTTP collector for this worker's spans, e.g.\n"
    "            http://127.0.0.1:4318 (default: $FORGE_OTLP_ENDPOINT, else none)\n"
    "Flags take `--flag value` or `--flag=value`. Stops cleanly on SIGTERM or "
    "SIGINT.\n";

enum class Mode { kEcho, kSleep, kFail };

struct Flags {
  std::string server;
  std::vector<std::string> queues;
  int slots = 1;
  Mode mode = Mode::kEcho;
  int64_t sleep_ms = 0;
  std::string otlp_endpoint;
  double fail_rate = 0;
  std::string name = "forge-worker";
  bool help = false;
};

bool ParseMode(absl::string_view text, Flags* flags, std::string* error) {
  if (text == "echo") {
    flags->mode = Mode::kEcho;
    return true;
  }
  if (absl::ConsumePrefix(&text, "sleep:")) {
    int64_t ms = 0;
    if (!absl::SimpleAtoi(text, &ms) || ms < 0) {
      *error = absl::StrCat("--mode sleep:MS needs MS >= 0, got '", text, "'");
      return false;
    }
    flags->mode = Mode::kSleep;
    flags->sleep_ms = ms;
    return true;
  }
  if (absl::ConsumePrefix(&text, "fail:")) {
    double rate = 0;
    if (!absl::SimpleAtod(text, &rate) || !std::isfinite(rate) || rate < 0 ||
        rate > 1) {
      *error =
          absl::StrCat("--mode fail:RATE needs RATE in [0,1], got '", text, "'");
      return false;
    }
    flags->mode = Mode::kFail;
    flags->fail_rate = rate;
    return true;
  }
  *error = absl::StrCat("unknown --mode '", text, "'");
  return false;
}

// Parses argv by hand: `--flag value` and `--flag=value`.
bool ParseFlags(int argc, char** argv, Flags* flags, std::string* error) {
  const char* env_server = std::getenv("FORGE_SERVER");
  flags->server =
      env_server != nullptr && *env_server != '\0' ? env_server
                                                   : "127.0.0.1:7070";
  if (const char* env_otlp = std::getenv("FORGE_OTLP_ENDPOINT")) {
    flags->otlp_endpoint = env_otlp;
  }
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      flags->help = true;
      return true;
    }
    if (!absl::ConsumePrefix(&arg, "--")) {
      *error = absl::StrCat("unexpected argument '", arg, "'");
      return false;
    }
    absl::string_view name = arg;
    std::string value;
    const size_t eq = arg.find('=');
    if (eq != absl::string_view::npos) {
      name = arg.substr(0, eq);
      value = std::string(arg.substr(eq + 1));
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      *error = absl::StrCat("--", name, " needs a value");
      return false;
    }
    if (name == "server") {
      if (value.empty()) {
        *error = "--server needs a non-empty HOST:PORT";
        return false;
      }
      flags->server = value;
    } else if (name == "queue") {
      if (value.empty()) {
        *error = "--queue needs a non-empty name";
        return false;
      }
      flags->queues.push_back(value);
    } else if (name == "slots") {
      if (!absl::SimpleAtoi(value, &flags->slots) || flags->slots < 1 ||
          flags->slots > 10000) {
        *error = absl::StrCat("--slots needs an integer in 1..10000, got '",
                              value, "'");
        return false;
      }
    } else if (name == "mode") {
      if (!ParseMode(value, flags, error)) return false;
    } else if (name == "name") {
      if (value.empty()) {
        *error = "--name needs a non-empty value";
        return false;
      }
      flags->name = value;
    } else if (name == "otlp-endpoint") {
      flags->otlp_endpoint = value;
    } else {
      *error = absl::StrCat("unknown flag --", name);
      return false;
    }
  }
  if (flags->queues.empty()) flags->queues.push_back("default");
  return true;
}

std::string EchoOutput(const forge::v1::Assignment& assignment) {
  return assignment.input().empty() ? assignment.task() : assignment.input();
}

forge::client::Handler MakeHandler(const Flags& flags) {
  using forge::client::TaskContext;
  using forge::client::TaskOutcome;
  switch (flags.mode) {
    case Mode::kEcho:
      return [](TaskContext& ctx) {
        TaskOutcome outcome;
        outcome.output = EchoOutput(ctx.assignment());
        return outcome;
      };
    case Mode::kSleep:
      return [ms = flags.sleep_ms](TaskContext& ctx) {
        TaskOutcome outcome;
        if (ctx.WaitCancelled(absl::Milliseconds(ms))) {
          outcome.success = false;  // Reported as CANCELLED by the library.
          return outcome;
        }
        outcome.output = EchoOutput(ctx.assignment());
        return outcome;
      };
    case Mode::kFail:
      return [rate = flags.fail_rate](TaskContext& ctx) {
        thread_local absl::BitGen bitgen;
        TaskOutcome outcome;
        if (absl::Bernoulli(bitgen, rate)) {
          outcome.success = false;
          outcome.error_code = "INJECTED";
          outcome.error_message = "failure injected by forge-worker --mode fail";
          outcome.retryable = true;
          outcome.exit_code = 1;
          return outcome;
        }
        outcome.output = EchoOutput(ctx.assignment());
        return outcome;
      };
  }
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  // As in forged: no global lock-graph walk on every Mutex lock (Debian's
  // Abseil has deadlock detection on); the tests keep it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  Flags flags;
  std::string error;
  if (!ParseFlags(argc, argv, &flags, &error)) {
    std::fprintf(stderr, "forge-worker: %s\n%s", error.c_str(), kUsage);
    return 2;
  }
  if (flags.help) {
    std::fputs(kUsage, stdout);
    return 0;
  }

  // Block the stop signals before any thread exists (threads inherit the
  // mask), then take them synchronously with sigwait on this thread.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  forge::client::WorkerOptions options;
  options.server = flags.server;
  options.name = flags.name;
  options.queues = flags.queues;
  options.slots = flags.slots;
  options.otlp_endpoint = flags.otlp_endpoint;
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) == 0) options.labels["host"] = host;
  options.on_welcome = [](const std::string& worker_id) {
    std::fprintf(stderr, "forge-worker: connected as %s\n", worker_id.c_str());
  };
  options.on_disconnect = [](const absl::Status& status) {
    std::fprintf(stderr, "forge-worker: disconnected (%s), reconnecting\n",
                 status.ToString().c_str());
  };

  forge::client::Worker worker(std::move(options), MakeHandler(flags));
  if (absl::Status status = worker.Start(); !status.ok()) {
    std::fprintf(stderr, "forge-worker: %s\n", status.ToString().c_str());
    return 1;
  }
  int signal_number = 0;
  while (sigwait(&stop_signals, &signal_number) != 0) {
  }
  worker.Stop();
  return 0;
}
