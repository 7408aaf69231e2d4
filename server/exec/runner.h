// server/exec: the built-in command runner, an in-process executor.
//
// Each profile (profile.h) is one sched::Executor serving its queues with its
// slots. An assignment becomes a process (process.h) in its own process
// group: argv from the profile's template, the task input written to stdin,
// stdout and stderr read as they come. Exit 0 = SUCCEEDED with stdout as the
// task's output; otherwise FAILED with the exit code (or signal) and the
// output's tail, and the retry policy decides. Output up to the profile's
// cap is published live (TASK_OUTPUT events, `forgectl logs -f`); past it
// the rest is drained and dropped and the truncation is marked.
//
// Cancel, the task's run timeout (pushed by the engine as a cancel), the
// profile's timeout and shutdown send SIGTERM to the whole group, then
// SIGKILL after the kill grace. When the main process exits, whatever it
// left behind in its group is killed too: no orphans survive a task.
//
// Threads: ONE event-loop thread owns every process: it spawns, reads and
// writes the pipes, and reaps (pidfds in one epoll set with an eventfd for
// wake-ups). No thread per process, no polling. Other threads (the engine's
// Assign/Cancel, timer callbacks) only post commands to its inbox. Results
// and output go to the sink from the loop thread with no runner lock held.
//
// Lock order: CommandRunner::Core::mu_ is a leaf (held only to post or take
// commands). The sink is called with no lock held.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "forge/v1/types.pb.h"
#include "forge/v1/worker.pb.h"
#include "server/exec/profile.h"
#include "server/sched/scheduler.h"
#include "server/sched/timer_service.h"

namespace forge::exec {

// Where the runner reports; the composition root wires it to the engine.
struct RunnerSink {
  // An attempt ended. `ticket` is its Dispatch's; the reservation is
  // released whatever becomes of the result (it is refused when the attempt
  // was no longer current, e.g. it had timed out).
  std::function<void(const std::string& executor_id, uint64_t ticket,
                     const forge::v1::TaskResult& result)>
      result;
  // A chunk of live output.
  std::function<absl::Status(const forge::v1::TaskOutput& output)> output;
  // The attempt's process was spawned (the pickup stage ends). Optional.
  std::function<void(const forge::v1::Lease& lease)> started;
};

struct RunnerStats {
  int64_t running = 0;         // processes alive
  int64_t started = 0;         // processes spawned
  int64_t spawn_failures = 0;  // attempts that could not start a process
  int64_t killed = 0;          // process groups that needed SIGKILL
  int64_t finished = 0;        // spawned processes whose result was reported
};

class CommandRunner {
 public:
  // Starts the event loop. INVALID_ARGUMENT for a bad config,
  // FAILED_PRECONDITION if the work root cannot be made.
  static absl::StatusOr<std::unique_ptr<CommandRunner>> Start(
      RunnerConfig config, TimerService* timers, RunnerSink sink);
  // Shutdown().
  ~CommandRunner();

  struct ProfileExecutor {
    std::shared_ptr<sched::Executor> executor;
    std::vector<std::string> queues;
    int32_t slots = 0;
    std::string name;  // the profile's
  };
  // One per profile, to attach to the engine.
  const std::vector<ProfileExecutor>& executors() const { return executors_; }

  // Submit-time check of the tasks that a profile will run (their queue is
  // served by one): params, workdir, environment. INVALID_ARGUMENT naming
  // the task ("tasks[3].params: ...").
  absl::Status ValidateSpec(const forge::v1::GraphSpec& spec) const;

  // Stops taking assignments, sends SIGTERM to every running group and
  // SIGKILL `grace` later, and returns once every process is reaped and its
  // result reported. Idempotent. Not for the loop thread or timer callbacks.
  void Shutdown(absl::Duration grace);

  RunnerStats stats() const;
  const RunnerConfig& config() const;

  class Core;  // the event loop (runner.cc)

 private:
  CommandRunner() = default;

  std::shared_ptr<Core> core_;
  std::vector<ProfileExecutor> executors_;
};

}  // namespace forge::exec
