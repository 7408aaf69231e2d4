// The workloads of forge-bench (see README.md in this folder). Each run
// starts what it needs (a fresh forged unless --server names one, workers),
// measures, and appends its figures.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "tests/bench/report.h"

namespace forge::bench {

struct BenchOptions {
  std::string server;  // a running forged; empty: start one per run
  bool durable = false;
  bool metrics = true;  // forged's /metrics endpoint on
  std::string forged_path;
  std::string worker_path;
  int worker_procs = 0;  // > 0: forge-worker processes instead of in-process
  int workers = 2;
  int slots = 256;
  bool report_started = true;  // in-process workers send WorkerMessage.started
  std::string work_dir;
  // Sizes.
  int64_t tasks = 100000;  // W1
  int graph_tasks = 1000;  // W1: tasks per submitted graph
  int submitters = 4;      // W1: client threads submitting
  int chain = 1000;        // W2
  int fan = 5000;          // W3
  int spawn_tasks = 2000;  // W4
  int spawn_slots = 4;     // W4: runner slots
  int64_t big_tasks = 1000000;  // W5
  int big_width = 1000;
  double rate = 1000;  // W6: submits per second
  absl::Duration w6_duration = absl::Seconds(3);
  int watchers = 1000;  // W7
  int watch_tasks = 2000;
  int64_t restart_tasks = 1000000;  // W8
  int pings = 10000;                // LIMIT
  int stream_messages = 2000;
  int stream_batch = 512;
  int spawns = 2000;
};

using Workload = absl::Status (*)(const BenchOptions&, std::vector<Figure>*);

struct WorkloadInfo {
  const char* name;
  const char* what;
  Workload run;
  bool durable_only = false;
};

const std::vector<WorkloadInfo>& Workloads();

}  // namespace forge::bench
