// server/exec: starting a child process for the command runner.
//
// posix_spawn (vfork semantics: cheap even from a large server, and safe in a
// threaded process, unlike fork), in a process group of its own so the whole
// tree can be signalled at once, with a clean signal state (empty mask,
// default dispositions: the server blocks SIGTERM in every thread and may
// ignore SIGPIPE, neither of which a child must inherit), its stdout and
// stderr on pipes, stdin on a pipe or /dev/null, and every other descriptor
// closed: the server's own are close-on-exec, and the spawn also closes
// everything from 3 up.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace forge::exec {

struct SpawnRequest {
  // Absolute path of the program (see FindExecutable).
  std::string path;
  std::vector<std::string> argv;
  // NAME=VALUE strings: the whole environment (nothing is inherited).
  std::vector<std::string> env;
  std::string cwd;
  // stdin on a pipe (the caller writes the task input) or /dev/null.
  bool stdin_pipe = true;
};

struct Child {
  pid_t pid = -1;  // also its process group id
  // The server's ends, non-blocking and close-on-exec; -1 when absent.
  int stdin_fd = -1;
  int stdout_fd = -1;
  int stderr_fd = -1;
};

// Starts the process. On error nothing is left open or running:
// NOT_FOUND / PERMISSION_DENIED / FAILED_PRECONDITION carry the errno text.
absl::StatusOr<Child> Spawn(const SpawnRequest& request);

// Resolves `name` like execvp would, against `path_var` (a PATH value; empty:
// /usr/local/bin:/usr/bin:/bin). A name with a '/' is taken as it is (made
// absolute against `cwd` when relative). NOT_FOUND when nothing executable is
// found.
absl::StatusOr<std::string> FindExecutable(const std::string& name,
                                           const std::string& path_var,
                                           const std::string& cwd);

// Sends `sig` to every process of the group `pgid`. False if the group has
// no process left (ESRCH).
bool SignalGroup(pid_t pgid, int sig);

}  // namespace forge::exec
