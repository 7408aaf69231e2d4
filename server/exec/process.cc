#include "server/exec/process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace forge::exec {

namespace {

absl::Status ErrnoStatus(int err, const std::string& what) {
  const std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT: return absl::NotFoundError(msg);
    case EACCES:
    case EPERM: return absl::PermissionDeniedError(msg);
    case EMFILE:
    case ENFILE:
    case EAGAIN:
    case ENOMEM: return absl::ResourceExhaustedError(msg);
    default: return absl::FailedPreconditionError(msg);
  }
}

void CloseFd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

bool Executable(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
         ::access(path.c_str(), X_OK) == 0;
}

}  // namespace

absl::StatusOr<std::string> FindExecutable(const std::string& name,
                                           const std::string& path_var,
                                           const std::string& cwd) {
  if (name.empty()) return absl::NotFoundError("empty command");
  if (name.find('/') != std::string::npos) {
    const std::string path = name[0] == '/' ? name : absl::StrCat(cwd, "/", name);
    if (Executable(path)) return path;
    return absl::NotFoundError(absl::StrCat(name, ": not an executable file"));
  }
  const std::string dirs = path_var.empty() ? "/usr/local/bin:/usr/bin:/bin" : path_var;
  for (absl::string_view dir : absl::StrSplit(dirs, ':')) {
    const std::string path =
        absl::StrCat(dir.empty() ? absl::string_view(".") : dir, "/", name);
    if (Executable(path)) return path;
  }
  return absl::NotFoundError(absl::StrCat(name, ": command not found in PATH ", dirs));
}

absl::StatusOr<Child> Spawn(const SpawnRequest& request) {
  // [0] read end, [1] write end; the server keeps one end of each.
  int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
  absl::Cleanup close_all = [&] {
    for (int* p : {in, out, err}) {
      CloseFd(p[0]);
      CloseFd(p[1]);
    }
  };
  if ((request.stdin_pipe && ::pipe2(in, O_CLOEXEC) != 0) ||
      ::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    return ErrnoStatus(errno, "pipe2");
  }

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  absl::Cleanup free_actions = [&] { posix_spawn_file_actions_destroy(&actions); };
  if (request.stdin_pipe) {
    posix_spawn_file_actions_adddup2(&actions, in[0], 0);
  } else {
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  }
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);
  if (!request.cwd.empty()) {
    posix_spawn_file_actions_addchdir_np(&actions, request.cwd.c_str());
  }
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);

  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  absl::Cleanup free_attr = [&] { posix_spawnattr_destroy(&attr); };
  sigset_t empty, defaults;
  sigemptyset(&empty);
  sigemptyset(&defaults);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) sigaddset(&defaults, sig);
  }
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> argv, envp;
  for (const std::string& a : request.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const std::string& e : request.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  Child child;
  const int rc = ::posix_spawn(&child.pid, request.path.c_str(), &actions, &attr,
                               argv.data(), envp.data());
  if (rc != 0) return ErrnoStatus(rc, absl::StrCat("spawn ", request.path));

  // The child's ends are its own now; the server keeps the others.
  CloseFd(in[0]);
  CloseFd(out[1]);
  CloseFd(err[1]);
  for (int fd : {in[1], out[0], err[0]}) {
    if (fd >= 0) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  }
  child.stdin_fd = std::exchange(in[1], -1);
  child.stdout_fd = std::exchange(out[0], -1);
  child.stderr_fd = std::exchange(err[0], -1);
  return child;
}

bool SignalGroup(pid_t pgid, int sig) {
  if (pgid <= 1) return false;  // never the caller's group or every process
  return ::kill(-pgid, sig) == 0;
}

}  // namespace forge::exec
