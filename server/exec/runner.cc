#include "server/exec/runner.h"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "server/exec/process.h"

extern char** environ;

namespace forge::exec {

namespace v1 = ::forge::v1;
namespace fs = std::filesystem;

namespace {

constexpr size_t kReadChunk = 16 << 10;  // one TASK_OUTPUT event at most
constexpr size_t kTailBytes = 2 << 10;   // output tail kept for error messages
constexpr int kDrainReads = 256;         // bound on reads after the exit

// epoll tags: run id << 2 | what; 0 is the wake-up eventfd.
enum Slot : uint64_t { kStdout = 0, kStderr = 1, kStdin = 2, kExit = 3 };

int PidfdOpen(pid_t pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

// A retry may start while the previous attempt's process is still dying:
// runs are known by the whole lease.
std::string LeaseKey(const v1::Lease& l) {
  return absl::StrCat(l.graph_id(), "/", l.task_index(), "/", l.attempt(), "/",
                      l.epoch());
}

// A file name for an attempt's directories: graph.task.attempt.epoch.
std::string LeaseKeyName(const v1::Lease& l) {
  return absl::StrCat(l.graph_id(), ".", l.task_index(), ".", l.attempt(), ".",
                      l.epoch());
}

}  // namespace

// One command for the loop thread.
struct Command {
  enum Kind { kStart, kCancel, kKill, kTimeout, kShutdown, kSpawned };
  Kind kind = kStart;
  size_t profile = 0;          // kStart
  sched::Dispatch dispatch;    // kStart
  v1::Lease lease;             // kCancel
  std::string reason;          // kCancel
  uint64_t run = 0;            // kKill, kTimeout, kSpawned
  absl::Duration grace;        // kShutdown
  absl::Status spawned;        // kSpawned: OK, or why there is no process
  Child child;                 // kSpawned
};

// A process to start, for the spawner thread.
struct SpawnJob {
  uint64_t run = 0;
  SpawnRequest request;
};

class CommandRunner::Core : public std::enable_shared_from_this<Core> {
 public:
  Core(RunnerConfig config, TimerService* timers, RunnerSink sink)
      : config_(std::move(config)), timers_(timers), sink_(std::move(sink)) {}

  const RunnerConfig& config() const { return config_; }

  ~Core() {
    if (epfd_ >= 0) ::close(epfd_);
    if (wakefd_ >= 0) ::close(wakefd_);
  }

  absl::Status Init() {
    std::error_code ec;
    fs::create_directories(config_.work_root, ec);
    if (ec) {
      return absl::FailedPreconditionError(absl::StrCat(
          "runner work root ", config_.work_root, ": ", ec.message()));
    }
    const int self = PidfdOpen(::getpid());
    if (self < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "pidfd_open: ", std::strerror(errno), " (Linux 5.3 or newer is needed)"));
    }
    ::close(self);
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    wakefd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (epfd_ < 0 || wakefd_ < 0) {
      return absl::InternalError(absl::StrCat("epoll/eventfd: ", std::strerror(errno)));
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = 0;
    ::epoll_ctl(epfd_, EPOLL_CTL_ADD, wakefd_, &ev);
    absl::MutexLock lock(&join_mu_);
    thread_ = std::thread([this] { Loop(); });
    spawner_ = std::thread([this] { SpawnLoop(); });
    return absl::OkStatus();
  }

  // Posts starts; false once shutting down (the engine then fails them).
  bool PostStarts(size_t profile, std::vector<sched::Dispatch> batch) {
    {
      absl::MutexLock lock(&mu_);
      if (closed_) return false;
      for (sched::Dispatch& d : batch) {
        Command& c = inbox_.emplace_back();
        c.kind = Command::kStart;
        c.profile = profile;
        c.dispatch = std::move(d);
      }
    }
    Wake();
    return true;
  }

  void Post(Command c) {
    {
      absl::MutexLock lock(&mu_);
      inbox_.push_back(std::move(c));
    }
    Wake();
  }

  void Shutdown(absl::Duration grace) {
    {
      absl::MutexLock lock(&mu_);
      if (!closed_) {
        closed_ = true;
        Command& c = inbox_.emplace_back();
        c.kind = Command::kShutdown;
        c.grace = grace;
      }
    }
    Wake();
    absl::MutexLock lock(&join_mu_);
    if (thread_.joinable()) thread_.join();
    // The loop ended once every run had ended, so nothing is left to spawn.
    {
      absl::MutexLock spawn_lock(&spawn_mu_);
      spawn_closed_ = true;
    }
    if (spawner_.joinable()) spawner_.join();
  }

  RunnerStats stats() const {
    RunnerStats s;
    s.running = running_.load(std::memory_order_relaxed);
    s.started = started_.load(std::memory_order_relaxed);
    s.spawn_failures = spawn_failures_.load(std::memory_order_relaxed);
    s.killed = killed_.load(std::memory_order_relaxed);
    s.finished = finished_.load(std::memory_order_relaxed);
    return s;
  }

 private:
  struct Capture {
    int fd = -1;
    int64_t kept = 0;
    int64_t total = 0;
    bool truncated = false;
    std::string tail;  // the last kTailBytes (up to twice that before trimming)
    std::string data;  // kept bytes (stdout only: the task's output)
  };

  // One attempt; owned and touched by the loop thread only.
  struct Run {
    uint64_t id = 0;
    const CommandProfile* profile = nullptr;
    std::string executor_id;
    sched::Dispatch dispatch;
    pid_t pid = -1;
    int pidfd = -1;
    int stdin_fd = -1;
    std::string stdin_data;
    size_t stdin_off = 0;
    Capture out, err;
    bool exited = false;
    int status = 0;
    // Set when the runner stops it: the result is a failure with this code.
    std::string stop_code;
    std::string stop_reason;
    std::string workdir;
    bool remove_workdir = false;
    std::string upstream_dir;  // private to the attempt, always removed
    TimerService::TimerId kill_timer = TimerService::kInvalidTimer;
    TimerService::TimerId timeout_timer = TimerService::kInvalidTimer;
    const v1::Lease& lease() const { return dispatch.assignment.lease(); }
  };

  void Wake() {
    const uint64_t one = 1;
    // A full counter (never in practice) still leaves the fd readable.
    [[maybe_unused]] ssize_t n = ::write(wakefd_, &one, sizeof one);
  }

  void Loop() {
    // Writes to a child's stdin after it exited must fail with EPIPE, not
    // raise SIGPIPE: SIGPIPE from write() is sent to this thread, which
    // blocks it. (Children get an empty mask: see process.h.)
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);

    epoll_event events[64];
    while (!(stopping_ && runs_.empty())) {
      const int n = ::epoll_wait(epfd_, events, 64, -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        break;  // a broken epoll set: nothing can be supervised any more
      }
      for (int i = 0; i < n; ++i) {
        const uint64_t tag = events[i].data.u64;
        if (tag == 0) {
          TakeInbox();
          continue;
        }
        auto it = runs_.find(tag >> 2);
        if (it == runs_.end()) continue;  // finished earlier in this batch
        Run& run = *it->second;
        switch (tag & 3) {
          case kStdout: ReadSome(run, run.out, v1::STDOUT); break;
          case kStderr: ReadSome(run, run.err, v1::STDERR); break;
          case kStdin: WriteInput(run); break;
          case kExit: Exited(run); break;
        }
      }
    }
  }

  void TakeInbox() {
    uint64_t count;
    [[maybe_unused]] ssize_t n = ::read(wakefd_, &count, sizeof count);
    std::vector<Command> commands;
    {
      absl::MutexLock lock(&mu_);
      commands.swap(inbox_);
    }
    for (Command& c : commands) {
      switch (c.kind) {
        case Command::kStart: StartRun(c.profile, std::move(c.dispatch)); break;
        case Command::kCancel: Cancel(c.lease, c.reason); break;
        case Command::kKill: Kill(c.run); break;
        case Command::kTimeout: TimedOut(c.run); break;
        case Command::kShutdown: BeginStop(c.grace); break;
        case Command::kSpawned: Spawned(c.run, std::move(c.spawned), c.child); break;
      }
    }
  }

  void Watch(Run& run, int fd, Slot slot, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = run.id << 2 | slot;
    ::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
  }

  void CloseWatched(int& fd) {
    if (fd < 0) return;
    ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    fd = -1;
  }

  // Reports an attempt that never got a process.
  void Refuse(const std::string& executor_id, const sched::Dispatch& d,
              const std::string& code, const std::string& message,
              bool non_retryable, int32_t exit_code = 0) {
    spawn_failures_.fetch_add(1, std::memory_order_relaxed);
    FORGE_LOG(DEBUG, "attempt refused before spawn")
        .With("graph_id", d.assignment.lease().graph_id())
        .With("task", d.assignment.lease().task_index())
        .With("attempt", d.assignment.lease().attempt())
        .With("executor", executor_id)
        .With("code", code)
        .With("error", message);
    v1::TaskResult r;
    *r.mutable_lease() = d.assignment.lease();
    r.set_success(false);
    r.mutable_error()->set_code(code);
    r.mutable_error()->set_message(message);
    r.mutable_error()->set_non_retryable(non_retryable);
    r.set_exit_code(exit_code);
    sink_.result(executor_id, d.ticket, r);  // the store fences it
  }

  void StartRun(size_t index, sched::Dispatch d) {
    const CommandProfile& p = config_.profiles[index];
    const std::string executor_id = absl::StrCat("runner:", p.name);
    const v1::Assignment& a = d.assignment;
    if (stopping_) {
      Refuse(executor_id, d, "SHUTDOWN", "the server is shutting down", false);
      return;
    }
    absl::StatusOr<std::vector<std::string>> argv = BuildArgv(p, a);
    if (!argv.ok()) {
      Refuse(executor_id, d, "BAD_COMMAND", std::string(argv.status().message()), true);
      return;
    }
    auto run = std::make_unique<Run>();
    run->id = next_run_++;
    run->profile = &p;
    run->executor_id = executor_id;
    // The working directory: fresh under the work root, or inside the root.
    std::error_code ec;
    if (p.workdir.empty()) {
      run->workdir = (fs::path(config_.work_root) / LeaseKeyName(a.lease())).string();
      fs::remove_all(run->workdir, ec);  // a leftover of a crashed server
      fs::create_directory(run->workdir, ec);
      run->remove_workdir = !p.keep_workdir;
    } else {
      absl::StatusOr<std::string> dir = ResolveWorkdir(p, a);
      if (!dir.ok()) {
        Refuse(executor_id, d, "WORKDIR", std::string(dir.status().message()), true);
        return;
      }
      run->workdir = *dir;
      fs::create_directories(run->workdir, ec);
      if (!ec) {
        // Lexically inside; a symlink on the way must not lead out either.
        const fs::path real = fs::canonical(run->workdir, ec);
        const fs::path root = fs::canonical(p.root, ec);
        const fs::path rel = real.lexically_relative(root);
        if (!ec && (rel.empty() || *rel.begin() == "..")) {
          Refuse(executor_id, d, "WORKDIR",
                 absl::StrCat("workdir ", run->workdir, " resolves to ",
                              real.string(), ", outside the root ", root.string()),
                 true);
          return;
        }
      }
    }
    if (ec) {
      Refuse(executor_id, d, "WORKDIR",
             absl::StrCat("workdir ", run->workdir, ": ", ec.message()), false);
      return;
    }
    SpawnRequest req;
    req.argv = *std::move(argv);
    req.env = BuildEnv(p, a, run->workdir, environ);
    if (absl::Status s = WriteUpstream(*run, a, &req.env); !s.ok()) {
      RemoveWorkdir(*run);
      Refuse(executor_id, d, "WORKDIR", std::string(s.message()), false);
      return;
    }
    req.cwd = run->workdir;
    run->stdin_data = StdinData(p, a);
    req.stdin_pipe = !run->stdin_data.empty();
    std::string path_var;
    for (const std::string& e : req.env) {
      if (e.rfind("PATH=", 0) == 0) path_var = e.substr(5);
    }
    if (path_var.empty()) {
      const char* own = ::getenv("PATH");
      path_var = own ? own : "";
    }
    absl::StatusOr<std::string> path = FindExecutable(req.argv[0], path_var, req.cwd);
    if (!path.ok()) {
      RemoveWorkdir(*run);
      Refuse(executor_id, d, "COMMAND_NOT_FOUND", std::string(path.status().message()),
             true, 127);
      return;
    }
    req.path = *path;
    // posix_spawn returns once the child has exec'd: on the spawner thread,
    // so this loop goes on reading, reaping and starting meanwhile. The run
    // waits here, without a process, until kSpawned (a cancel or a stop
    // meanwhile is applied then).
    run->dispatch = std::move(d);
    const uint64_t id = run->id;
    by_lease_[LeaseKey(run->lease())] = id;
    runs_[id] = std::move(run);
    {
      absl::MutexLock lock(&spawn_mu_);
      spawn_queue_.push_back(SpawnJob{id, std::move(req)});
    }
  }

  // The spawner thread: one posix_spawn after the other, each answered to
  // the loop as a kSpawned command.
  void SpawnLoop() {
    while (true) {
      SpawnJob job;
      {
        absl::MutexLock lock(&spawn_mu_);
        spawn_mu_.Await(absl::Condition(this, &Core::SpawnWork));
        if (spawn_queue_.empty()) return;  // closed
        job = std::move(spawn_queue_.front());
        spawn_queue_.pop_front();
      }
      absl::StatusOr<Child> child = Spawn(job.request);
      Command c;
      c.kind = Command::kSpawned;
      c.run = job.run;
      if (child.ok()) {
        c.child = *child;
      } else {
        c.spawned = child.status();
      }
      Post(std::move(c));
    }
  }

  bool SpawnWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(spawn_mu_) {
    return spawn_closed_ || !spawn_queue_.empty();
  }

  void Spawned(uint64_t id, absl::Status spawned, const Child& child) {
    auto it = runs_.find(id);
    if (it == runs_.end()) return;  // cannot happen: a run waits for this
    std::unique_ptr<Run>& run = it->second;
    const CommandProfile& p = *run->profile;
    if (!spawned.ok()) {
      RemoveWorkdir(*run);
      const sched::Dispatch d = std::move(run->dispatch);
      by_lease_.erase(LeaseKey(d.assignment.lease()));
      const std::string executor_id = run->executor_id;
      runs_.erase(it);
      Refuse(executor_id, d, "SPAWN_FAILED", std::string(spawned.message()),
             !absl::IsResourceExhausted(spawned));
      return;
    }
    run->pid = child.pid;
    run->pidfd = PidfdOpen(child.pid);
    run->stdin_fd = child.stdin_fd;
    run->out.fd = child.stdout_fd;
    run->err.fd = child.stderr_fd;
    FORGE_LOG(DEBUG, "process spawned")
        .With("graph_id", run->lease().graph_id())
        .With("task", run->lease().task_index())
        .With("task_name", run->dispatch.assignment.task())
        .With("attempt", run->lease().attempt())
        .With("profile", p.name)
        .With("pid", run->pid);
    started_.fetch_add(1, std::memory_order_relaxed);
    running_.fetch_add(1, std::memory_order_relaxed);
    if (sink_.started) sink_.started(run->dispatch.assignment.lease());
    Watch(*run, run->out.fd, kStdout, EPOLLIN);
    Watch(*run, run->err.fd, kStderr, EPOLLIN);
    if (run->stdin_fd >= 0) Watch(*run, run->stdin_fd, kStdin, EPOLLOUT);
    if (run->pidfd >= 0) {
      Watch(*run, run->pidfd, kExit, EPOLLIN);
    } else {
      // pidfd_open failed (fd limit): the process cannot be supervised.
      run->stop_code = "SPAWN_FAILED";
      run->stop_reason = absl::StrCat("pidfd_open: ", std::strerror(errno));
      FORGE_LOG(WARN, "cannot supervise a process: SIGKILL to its group")
          .With("graph_id", run->lease().graph_id())
          .With("task", run->lease().task_index())
          .With("attempt", run->lease().attempt())
          .With("pid", run->pid)
          .With("error", run->stop_reason);
      SignalGroup(run->pid, SIGKILL);
      Reap(*run, /*block=*/true);
      Finish(*run);
      return;
    }
    if (!run->stop_code.empty()) {
      // Cancelled (or the server stopping) while it was being spawned.
      SignalGroup(run->pid, SIGKILL);
    } else if (p.timeout > absl::ZeroDuration()) {
      run->timeout_timer = After(p.timeout, Command::kTimeout, run->id);
    }
  }

  // Schedules a command for the loop on the one timer service.
  TimerService::TimerId After(absl::Duration delay, Command::Kind kind, uint64_t run) {
    std::weak_ptr<Core> weak = weak_from_this();
    return timers_->ScheduleAfter(delay, [weak, kind, run] {
      if (std::shared_ptr<Core> core = weak.lock()) {
        Command c;
        c.kind = kind;
        c.run = run;
        core->Post(std::move(c));
      }
    });
  }

  // The dependencies' outputs as files, one per task name, in a directory of
  // the attempt's own ($FORGE_UPSTREAM_DIR; not made when there are none).
  absl::Status WriteUpstream(Run& run, const v1::Assignment& a,
                             std::vector<std::string>* env) {
    if (a.upstream_outputs().empty()) return absl::OkStatus();
    const fs::path dir =
        fs::path(config_.work_root) / absl::StrCat(LeaseKeyName(a.lease()), ".upstream");
    std::error_code ec;
    fs::remove_all(dir, ec);
    fs::create_directories(dir, ec);
    if (ec) return absl::InternalError(absl::StrCat(dir.string(), ": ", ec.message()));
    run.upstream_dir = dir.string();
    for (const auto& [name, output] : a.upstream_outputs()) {
      if (name == "." || name == "..") continue;  // valid task names, not files
      std::FILE* f = std::fopen((dir / name).c_str(), "wbe");
      if (f == nullptr) {
        return absl::InternalError(absl::StrCat(dir.string(), "/", name, ": ",
                                                std::strerror(errno)));
      }
      const bool ok = std::fwrite(output.data(), 1, output.size(), f) == output.size();
      if (std::fclose(f) != 0 || !ok) {
        return absl::InternalError(absl::StrCat(dir.string(), "/", name, ": write failed"));
      }
    }
    env->push_back(absl::StrCat("FORGE_UPSTREAM_DIR=", run.upstream_dir));
    return absl::OkStatus();
  }

  void WriteInput(Run& run) {
    const std::string& input = run.stdin_data;
    while (run.stdin_off < input.size()) {
      const ssize_t n = ::write(run.stdin_fd, input.data() + run.stdin_off,
                                input.size() - run.stdin_off);
      if (n > 0) {
        run.stdin_off += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EAGAIN) return;  // wait for EPOLLOUT again
      break;  // EPIPE: the process does not read its input
    }
    CloseWatched(run.stdin_fd);  // EOF for the child
  }

  // One read (level-triggered: the loop comes back while there is more).
  // Returns false at EOF or error (the fd is closed).
  bool ReadSome(Run& run, Capture& c, v1::OutputStream stream) {
    if (c.fd < 0) return false;
    const ssize_t n = ::read(c.fd, buffer_, sizeof buffer_);
    if (n > 0) {
      Consume(run, c, stream, absl::string_view(buffer_, static_cast<size_t>(n)));
      return true;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return false;
    CloseWatched(c.fd);
    return false;
  }

  void Consume(Run& run, Capture& c, v1::OutputStream stream, absl::string_view data) {
    c.total += static_cast<int64_t>(data.size());
    c.tail.append(data.data(), data.size());
    if (c.tail.size() > 2 * kTailBytes) c.tail.erase(0, c.tail.size() - kTailBytes);
    const int64_t cap = run.profile->output_cap;
    std::string publish;
    if (c.kept < cap) {
      const size_t take = static_cast<size_t>(
          std::min<int64_t>(cap - c.kept, static_cast<int64_t>(data.size())));
      publish.assign(data.data(), take);
      c.kept += static_cast<int64_t>(take);
      data.remove_prefix(take);
    }
    if (!data.empty() && !c.truncated) {
      c.truncated = true;
      absl::StrAppend(&publish, "\n[forge: ", stream == v1::STDOUT ? "stdout" : "stderr",
                      " truncated after ", cap, " bytes]\n");
    }
    if (publish.empty()) return;
    if (stream == v1::STDOUT) c.data.append(publish);
    v1::TaskOutput o;
    *o.mutable_lease() = run.lease();
    o.set_stream(stream);
    o.set_data(std::move(publish));
    // Refused once the attempt is no longer current (timed out, cancelled).
    sink_.output(o).IgnoreError();
  }

  // The main process exited: kill what it left in its group, drain the
  // pipes of what it wrote, and report.
  void Exited(Run& run) {
    if (!Reap(run, /*block=*/false)) return;
    SignalGroup(run.pid, SIGKILL);  // leftovers of the task: no orphans
    for (int i = 0; i < kDrainReads && ReadSome(run, run.out, v1::STDOUT); ++i) {
    }
    for (int i = 0; i < kDrainReads && ReadSome(run, run.err, v1::STDERR); ++i) {
    }
    Finish(run);
  }

  bool Reap(Run& run, bool block) {
    int status = 0;
    const pid_t r = ::waitpid(run.pid, &status, block ? 0 : WNOHANG);
    if (r == 0) return false;  // not yet (spurious wake-up)
    run.exited = true;
    run.status = r == run.pid ? status : 0;
    running_.fetch_sub(1, std::memory_order_relaxed);
    return true;
  }

  void RemoveWorkdir(Run& run) {
    std::error_code ec;  // best effort: a leftover is only disk
    if (!run.upstream_dir.empty()) fs::remove_all(run.upstream_dir, ec);
    if (!run.remove_workdir || run.workdir.empty()) return;
    fs::remove_all(run.workdir, ec);
  }

  void Finish(Run& run) {
    CloseWatched(run.out.fd);
    CloseWatched(run.err.fd);
    CloseWatched(run.stdin_fd);
    CloseWatched(run.pidfd);
    for (TimerService::TimerId t : {run.kill_timer, run.timeout_timer}) {
      if (t != TimerService::kInvalidTimer) timers_->Cancel(t);
    }
    RemoveWorkdir(run);

    v1::TaskResult r;
    *r.mutable_lease() = run.lease();
    const int st = run.status;
    auto tail = [&run] {
      const std::string& t = run.err.tail.empty() ? run.out.tail : run.err.tail;
      const std::string& last = t.size() > kTailBytes ? t.substr(t.size() - kTailBytes) : t;
      return last.empty() ? std::string()
                          : absl::StrCat("; ", run.err.tail.empty() ? "stdout" : "stderr",
                                         " tail:\n", last);
    };
    if (!run.stop_code.empty()) {
      r.mutable_error()->set_code(run.stop_code);
      r.mutable_error()->set_message(run.stop_reason);
    } else if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
      r.set_success(true);
      r.set_output(std::move(run.out.data));
    } else if (WIFEXITED(st)) {
      r.set_exit_code(WEXITSTATUS(st));
      r.mutable_error()->set_code("EXIT_CODE");
      r.mutable_error()->set_message(
          absl::StrCat("exited with code ", WEXITSTATUS(st), tail()));
    } else {
      const int sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
      r.set_exit_code(128 + sig);
      r.mutable_error()->set_code("SIGNAL");
      r.mutable_error()->set_message(absl::StrCat(
          "killed by signal ", sig, " (", ::strsignal(sig), ")", tail()));
    }
    // exit_code=N, or signal=N for a process a signal ended.
    FORGE_LOG(DEBUG, "process exited")
        .With("graph_id", run.lease().graph_id())
        .With("task", run.lease().task_index())
        .With("attempt", run.lease().attempt())
        .With("pid", run.pid)
        .With(WIFSIGNALED(st) ? "signal" : "exit_code",
              WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st))
        .With("stopped", run.stop_code.empty() ? std::string("no") : run.stop_code);
    const std::string executor_id = run.executor_id;
    const uint64_t ticket = run.dispatch.ticket;
    const uint64_t id = run.id;
    by_lease_.erase(LeaseKey(run.lease()));
    std::unique_ptr<Run> done = std::move(runs_[id]);
    runs_.erase(id);
    sink_.result(executor_id, ticket, r);  // fenced by the store
    finished_.fetch_add(1, std::memory_order_relaxed);
  }

  // SIGTERM to the group now, SIGKILL after the grace.
  void Stop(Run& run, const std::string& code, const std::string& reason,
            absl::Duration grace) {
    if (run.exited || !run.stop_code.empty()) return;
    run.stop_code = code;
    run.stop_reason = reason;
    SignalGroup(run.pid, SIGTERM);
    if (grace <= absl::ZeroDuration()) {
      Kill(run.id);
    } else {
      run.kill_timer = After(grace, Command::kKill, run.id);
    }
  }

  void Cancel(const v1::Lease& lease, const std::string& reason) {
    auto it = by_lease_.find(LeaseKey(lease));
    if (it == by_lease_.end()) return;
    Run& run = *runs_.at(it->second);
    Stop(run, "CANCELLED", reason.empty() ? "cancelled" : reason, config_.kill_grace);
  }

  void TimedOut(uint64_t id) {
    auto it = runs_.find(id);
    if (it == runs_.end()) return;
    Run& run = *it->second;
    Stop(run, "TIMEOUT",
         absl::StrCat("profile ", run.profile->name, " timeout of ",
                      absl::FormatDuration(run.profile->timeout), " exceeded"),
         config_.kill_grace);
  }

  void Kill(uint64_t id) {
    auto it = runs_.find(id);
    if (it == runs_.end() || it->second->exited) return;
    const Run& run = *it->second;
    if (SignalGroup(run.pid, SIGKILL)) {
      killed_.fetch_add(1, std::memory_order_relaxed);
      FORGE_LOG(WARN, "process group still running after SIGTERM: SIGKILL")
          .With("graph_id", run.lease().graph_id())
          .With("task", run.lease().task_index())
          .With("attempt", run.lease().attempt())
          .With("pid", run.pid)
          .With("reason", run.stop_code)
          .With("error", run.stop_reason);
    }
  }

  void BeginStop(absl::Duration grace) {
    stopping_ = true;
    for (auto& [id, run] : runs_) {
      Stop(*run, "SHUTDOWN", "the server is shutting down", grace);
    }
  }

  const RunnerConfig config_;
  TimerService* const timers_;
  const RunnerSink sink_;
  int epfd_ = -1;
  int wakefd_ = -1;

  absl::Mutex mu_;
  std::vector<Command> inbox_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex join_mu_;
  std::thread thread_ ABSL_GUARDED_BY(join_mu_);
  std::thread spawner_ ABSL_GUARDED_BY(join_mu_);
  absl::Mutex spawn_mu_;
  std::deque<SpawnJob> spawn_queue_ ABSL_GUARDED_BY(spawn_mu_);
  bool spawn_closed_ ABSL_GUARDED_BY(spawn_mu_) = false;

  // Loop thread only.
  absl::flat_hash_map<uint64_t, std::unique_ptr<Run>> runs_;
  absl::flat_hash_map<std::string, uint64_t> by_lease_;
  uint64_t next_run_ = 1;
  bool stopping_ = false;
  char buffer_[kReadChunk];

  std::atomic<int64_t> running_{0};
  std::atomic<int64_t> started_{0};
  std::atomic<int64_t> spawn_failures_{0};
  std::atomic<int64_t> killed_{0};
  std::atomic<int64_t> finished_{0};
};

namespace {

class ProfileExec final : public sched::Executor {
 public:
  ProfileExec(std::shared_ptr<CommandRunner::Core> core, size_t index,
                  std::string id)
      : core_(std::move(core)), index_(index), id_(std::move(id)) {}
  const std::string& id() const override { return id_; }
  bool Assign(std::vector<sched::Dispatch> batch) override;
  void Cancel(const v1::Lease& lease, const std::string& reason) override;
  bool needs_heartbeat() const override { return false; }

 private:
  const std::shared_ptr<CommandRunner::Core> core_;
  const size_t index_;
  const std::string id_;
};

}  // namespace

bool ProfileExec::Assign(std::vector<sched::Dispatch> batch) {
  return core_->PostStarts(index_, std::move(batch));
}

void ProfileExec::Cancel(const v1::Lease& lease, const std::string& reason) {
  Command c;
  c.kind = Command::kCancel;
  c.lease = lease;
  c.reason = reason;
  core_->Post(std::move(c));
}

absl::StatusOr<std::unique_ptr<CommandRunner>> CommandRunner::Start(
    RunnerConfig config, TimerService* timers, RunnerSink sink) {
  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  if (config.work_root.empty()) {
    std::error_code ec;
    const fs::path tmp = fs::temp_directory_path(ec);
    config.work_root = ((ec ? fs::path("/tmp") : tmp) / "forge-runs").string();
  }
  std::unique_ptr<CommandRunner> r(new CommandRunner());
  r->core_ = std::make_shared<Core>(std::move(config), timers, std::move(sink));
  if (absl::Status s = r->core_->Init(); !s.ok()) return s;
  const RunnerConfig& c = r->core_->config();
  for (size_t i = 0; i < c.profiles.size(); ++i) {
    const CommandProfile& p = c.profiles[i];
    ProfileExecutor e;
    e.executor = std::make_shared<ProfileExec>(r->core_, i, absl::StrCat("runner:", p.name));
    e.queues = p.queues;
    e.slots = p.slots;
    e.name = p.name;
    r->executors_.push_back(std::move(e));
  }
  return r;
}

CommandRunner::~CommandRunner() {
  if (core_) Shutdown(core_->config().kill_grace);
}

const RunnerConfig& CommandRunner::config() const { return core_->config(); }

void CommandRunner::Shutdown(absl::Duration grace) { core_->Shutdown(grace); }

RunnerStats CommandRunner::stats() const { return core_->stats(); }

absl::Status CommandRunner::ValidateSpec(const v1::GraphSpec& spec) const {
  for (int i = 0; i < spec.tasks_size(); ++i) {
    const v1::TaskSpec& t = spec.tasks(i);
    const std::string& queue = t.queue().empty() ? std::string("default") : t.queue();
    for (const CommandProfile& p : config().profiles) {
      if (std::find(p.queues.begin(), p.queues.end(), queue) == p.queues.end()) continue;
      if (absl::Status s = ValidateTask(p, t, absl::StrCat("tasks[", i, "]")); !s.ok()) {
        return s;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace forge::exec
