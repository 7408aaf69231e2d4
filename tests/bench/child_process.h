// A Forge binary (forged, forge-worker) run as a child process by the
// benchmark and the crash tests: spawned with posix_spawn, its stderr read
// up to the line that says it is ready; the pipe is closed then (forged
// ignores SIGPIPE; a forge-worker writing again later would die of it, and
// writes only when its stream drops).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace forge::bench {

class ChildProcess {
 public:
  // Starts `argv` (argv[0] is the program's path) and reads its stderr
  // until a line containing `ready_marker`; the marker's line is kept.
  // DEADLINE_EXCEEDED / UNAVAILABLE (with the output so far) if it exits or
  // stays silent past `timeout`.
  static absl::StatusOr<ChildProcess> Start(std::vector<std::string> argv,
                                            const std::string& ready_marker,
                                            absl::Duration timeout = absl::Seconds(60));
  ChildProcess() = default;
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ~ChildProcess();  // SIGKILL if still running

  pid_t pid() const { return pid_; }
  // The line that contained the ready marker.
  const std::string& ready_line() const { return ready_line_; }
  // "127.0.0.1:PORT" from a forged ready line "... listening on 127.0.0.1:PORT".
  std::string ListenAddress() const;

  // SIGKILL and reap.
  void Kill();
  // SIGTERM, then waits up to `grace` for it to exit (SIGKILL after);
  // returns its exit status as waitpid reported it (-1 if it was killed).
  int Terminate(absl::Duration grace = absl::Seconds(10));
  // Resident set size in bytes (from /proc/PID/status), or -1.
  int64_t RssBytes() const;
  // Its largest resident set so far (VmHWM), in bytes.
  int64_t PeakRssBytes() const;
  // CPU time used so far, user + system (from /proc/PID/stat), or -1.
  double CpuSeconds() const;

 private:
  int64_t StatusBytes(const char* field) const;

  pid_t pid_ = -1;
  int err_fd_ = -1;
  std::string ready_line_;
};

// CPU time this process has used, user + system.
double SelfCpuSeconds();

// The directory of the running executable (to find forged beside it).
std::string ExecutableDir();

}  // namespace forge::bench
