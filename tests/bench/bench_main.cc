// forge-bench: Forge's benchmark suite. Starts its own forged (ephemeral, or
// durable with --durable) and workers for each run, or uses --server; runs
// each workload --repeat times and prints median, min and max (a table, or
// JSON with --json). See tests/bench/README.md.
#include <sys/utsname.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/flag_names.h"
#include "tests/bench/child_process.h"
#include "tests/bench/report.h"
#include "tests/bench/workloads.h"

ABSL_FLAG(std::string, server, "",
          "Use this running forged (HOST:PORT) instead of starting one per run "
          "(W4, W5's memory figure and W8 still start their own)");
ABSL_FLAG(bool, durable, false, "Run forged on its embedded durable journal");
ABSL_FLAG(bool, metrics, true, "forged serves /metrics (off: --metrics=false)");
ABSL_FLAG(int, repeat, 5, "Runs of each workload");
ABSL_FLAG(bool, json, false, "Print JSON instead of a table");
ABSL_FLAG(std::string, workloads, "W1,W2,W3,W4,W5,W6,W7,W8,LIMIT",
          "Comma-separated workloads to run");
ABSL_FLAG(int64_t, tasks, 100000, "W1: independent tasks per run");
ABSL_FLAG(int, graph_tasks, 1000, "W1: tasks per submitted graph");
ABSL_FLAG(int, workers, 2, "Workers per run");
ABSL_FLAG(int, slots, 256, "Slots per worker");
ABSL_FLAG(bool, report_started, true,
          "In-process workers report when they begin an attempt (the pickup stage)");
ABSL_FLAG(int, worker_procs, 0,
          "Non-zero: workers are forge-worker processes, not in-process workers");
ABSL_FLAG(double, rate, 1000, "W6: submits per second");
ABSL_FLAG(int, watchers, 1000, "W7: watchers");
ABSL_FLAG(int64_t, big_tasks, 1000000, "W5: tasks in the big graph");
ABSL_FLAG(int64_t, restart_tasks, 1000000, "W8: journaled tasks");
ABSL_FLAG(bool, smoke, false,
          "Every workload once at tiny sizes (a test that the benchmark runs; "
          "its figures mean nothing)");

namespace {

std::string MachineNote() {
  utsname u{};
  uname(&u);
  std::string cpu;
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  }
  return absl::StrCat(std::thread::hardware_concurrency(), " cores, ", cpu, ", ",
                      u.sysname, " ", u.release);
}

}  // namespace

int main(int argc, char** argv) {
  // As in forged: no global lock-graph walk on every Mutex lock (Debian's
  // Abseil has deadlock detection on); the tests keep it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::SetProgramUsageMessage("forge-bench [--workloads W1,...] [--repeat N] [--json]");
  std::vector<std::string> storage;
  std::vector<char*> args = forge::NormalizeFlagNames(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  using forge::bench::BenchOptions;
  BenchOptions o;
  o.server = absl::GetFlag(FLAGS_server);
  o.durable = absl::GetFlag(FLAGS_durable);
  o.metrics = absl::GetFlag(FLAGS_metrics);
  o.tasks = absl::GetFlag(FLAGS_tasks);
  o.graph_tasks = absl::GetFlag(FLAGS_graph_tasks);
  o.workers = absl::GetFlag(FLAGS_workers);
  o.slots = absl::GetFlag(FLAGS_slots);
  o.worker_procs = absl::GetFlag(FLAGS_worker_procs);
  o.report_started = absl::GetFlag(FLAGS_report_started);
  o.rate = absl::GetFlag(FLAGS_rate);
  o.watchers = absl::GetFlag(FLAGS_watchers);
  o.big_tasks = absl::GetFlag(FLAGS_big_tasks);
  o.restart_tasks = absl::GetFlag(FLAGS_restart_tasks);
  int repeat = absl::GetFlag(FLAGS_repeat);
  if (absl::GetFlag(FLAGS_smoke)) {
    repeat = 1;
    o.tasks = 2000;
    o.graph_tasks = 500;
    o.slots = 16;
    o.chain = 50;
    o.fan = 200;
    o.spawn_tasks = 20;
    o.big_tasks = 20000;
    o.big_width = 100;
    o.rate = 200;
    o.w6_duration = absl::Milliseconds(500);
    o.watchers = 20;
    o.watch_tasks = 200;
    o.restart_tasks = 20000;
    o.pings = 200;
    o.stream_messages = 20;
    o.spawns = 20;
  }
  const std::string dir = forge::bench::ExecutableDir();
  o.forged_path = dir + "/forged";
  o.worker_path = dir + "/forge-worker";
  char tmpl[] = "/tmp/forge-bench-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    std::perror("forge-bench: mkdtemp");
    return 1;
  }
  o.work_dir = tmpl;

  const std::vector<std::string> wanted = absl::StrSplit(absl::GetFlag(FLAGS_workloads), ',');
  forge::bench::Report report;
  report.Note("machine", MachineNote());
  report.Note("mode", absl::StrCat(o.durable ? "durable" : "ephemeral",
                                   o.metrics ? ", metrics on" : ", metrics off",
                                   o.worker_procs > 0 ? ", forge-worker processes"
                                                      : ", in-process workers",
                                   ", ", o.workers, "x", o.slots, " slots"));
  report.Note("repeat", absl::StrCat(repeat));
  int failures = 0;
  for (const std::string& name : wanted) {
    const forge::bench::WorkloadInfo* w = nullptr;
    for (const auto& info : forge::bench::Workloads()) {
      if (name == info.name) w = &info;
    }
    if (w == nullptr) {
      std::fprintf(stderr, "forge-bench: unknown workload %s\n", name.c_str());
      return 2;
    }
    for (int i = 0; i < repeat; ++i) {
      std::vector<forge::bench::Figure> figures;
      const absl::Status s = w->run(o, &figures);
      if (!s.ok()) {
        std::fprintf(stderr, "forge-bench: %s run %d: %s\n", w->name, i + 1,
                     s.ToString().c_str());
        ++failures;
        break;
      }
      for (const auto& f : figures) {
        report.Add(f);
        if (!absl::GetFlag(FLAGS_json)) {
          std::fprintf(stderr, "  %s %s = %.4g %s\n", f.workload.c_str(), f.metric.c_str(),
                       f.value, f.unit.c_str());
        }
      }
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(o.work_dir, ec);
  std::fputs(absl::GetFlag(FLAGS_json) ? report.Json().c_str() : report.Table().c_str(),
             stdout);
  return failures == 0 ? 0 : 1;
}
