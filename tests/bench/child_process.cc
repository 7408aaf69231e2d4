#include "tests/bench/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

extern char** environ;

namespace forge::bench {

absl::StatusOr<ChildProcess> ChildProcess::Start(std::vector<std::string> argv,
                                                 const std::string& ready_marker,
                                                 absl::Duration timeout) {
  int err[2];
  if (::pipe2(err, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  std::vector<char*> args;
  for (std::string& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  ChildProcess child;
  const int rc = ::posix_spawn(&child.pid_, argv[0].c_str(), &fa, nullptr,
                               args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(err[1]);
  if (rc != 0) {
    ::close(err[0]);
    child.pid_ = -1;
    return absl::UnavailableError(absl::StrCat("cannot start ", argv[0]));
  }
  child.err_fd_ = err[0];
  std::string log;
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    size_t line_start = 0;
    for (size_t nl; (nl = log.find('\n', line_start)) != std::string::npos;
         line_start = nl + 1) {
      const std::string line = log.substr(line_start, nl - line_start);
      if (line.find(ready_marker) != std::string::npos) {
        child.ready_line_ = line;
        // Nobody reads the rest: a child that logs on would fill the pipe
        // and block. Its writes now fail with EPIPE (forged ignores SIGPIPE).
        ::close(child.err_fd_);
        child.err_fd_ = -1;
        return child;
      }
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(
          absl::StrCat(argv[0], " not ready in time; its output: ", log));
    }
    pollfd p{child.err_fd_, POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    char buf[4096];
    const ssize_t n = ::read(child.err_fd_, buf, sizeof buf);
    if (n <= 0) {
      return absl::UnavailableError(
          absl::StrCat(argv[0], " exited before it was ready; its output: ", log));
    }
    log.append(buf, static_cast<size_t>(n));
  }
}

ChildProcess::ChildProcess(ChildProcess&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)),
      err_fd_(std::exchange(o.err_fd_, -1)),
      ready_line_(std::move(o.ready_line_)) {}

ChildProcess& ChildProcess::operator=(ChildProcess&& o) noexcept {
  if (this != &o) {
    Kill();
    pid_ = std::exchange(o.pid_, -1);
    err_fd_ = std::exchange(o.err_fd_, -1);
    ready_line_ = std::move(o.ready_line_);
  }
  return *this;
}

ChildProcess::~ChildProcess() { Kill(); }

std::string ChildProcess::ListenAddress() const {
  const std::string marker = "listening on 127.0.0.1:";
  const size_t at = ready_line_.find(marker);
  if (at == std::string::npos) return "";
  return absl::StrCat("127.0.0.1:", std::atoi(ready_line_.c_str() + at + marker.size()));
}

void ChildProcess::Kill() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  if (err_fd_ >= 0) {
    ::close(err_fd_);
    err_fd_ = -1;
  }
}

int ChildProcess::Terminate(absl::Duration grace) {
  if (pid_ <= 0) return -1;
  // A pidfd becomes readable when the process exits: wait on it, bounded.
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
  ::kill(pid_, SIGTERM);
  if (pidfd >= 0) {
    pollfd p{pidfd, POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(grace)));
    ::close(pidfd);
    if (ready <= 0) {
      Kill();
      return -1;
    }
  }
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  if (err_fd_ >= 0) {
    ::close(err_fd_);
    err_fd_ = -1;
  }
  return status;
}

// A "Name:   123 kB" line of /proc/PID/status, in bytes (-1: none).
int64_t ChildProcess::StatusBytes(const char* field) const {
  if (pid_ <= 0) return -1;
  std::ifstream in(absl::StrCat("/proc/", pid_, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) {
      int64_t kb = 0;
      std::string digits;
      for (char c : line) {
        if (c >= '0' && c <= '9') digits.push_back(c);
      }
      if (absl::SimpleAtoi(digits, &kb)) return kb * 1024;
    }
  }
  return -1;
}

int64_t ChildProcess::RssBytes() const { return StatusBytes("VmRSS:"); }

int64_t ChildProcess::PeakRssBytes() const { return StatusBytes("VmHWM:"); }

double ChildProcess::CpuSeconds() const {
  if (pid_ <= 0) return -1;
  std::ifstream in(absl::StrCat("/proc/", pid_, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Fields after the command (which may hold spaces) start after ") ".
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::vector<std::string> fields = absl::StrSplit(stat.substr(close + 2), ' ');
  // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
  int64_t utime = 0, stime = 0;
  if (fields.size() < 13 || !absl::SimpleAtoi(fields[11], &utime) ||
      !absl::SimpleAtoi(fields[12], &stime)) {
    return -1;
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

double SelfCpuSeconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

std::string ExecutableDir() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

}  // namespace forge::bench
