// Tests of the worker library (client/worker/worker.h) and the forge-worker
// binary against a fake WorkerService speaking the protocol of
// proto/forge/v1/worker.proto. Hermetic: loopback, port 0; every wait is on an
// event with a deadline.

#include "client/worker/worker.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "forge/v1/worker.grpc.pb.h"
#include "google/protobuf/util/message_differencer.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

extern char** environ;

namespace forge::client {
namespace {

namespace v1 = ::forge::v1;
using ::google::protobuf::util::MessageDifferencer;

// Generous: only reached when something is broken (TSan builds are slow).
constexpr absl::Duration kTimeout = absl::Seconds(30);

v1::Assignment MakeAssignment(const std::string& graph, int index,
                              uint64_t epoch, const std::string& input = "") {
  v1::Assignment assignment;
  v1::Lease* lease = assignment.mutable_lease();
  lease->set_graph_id(graph);
  lease->set_task_index(index);
  lease->set_attempt(1 + index % 3);
  lease->set_epoch(epoch);
  assignment.set_task(absl::StrCat("task", index));
  assignment.set_queue("q");
  assignment.set_input(input);
  return assignment;
}

v1::ServerMessage Welcome(const std::string& id) {
  v1::ServerMessage message;
  message.mutable_welcome()->set_worker_id(id);
  return message;
}

// A scriptable WorkerService. Records every message received (with the
// number of the stream it came on, from 1), lets the test push messages to
// the current stream or end it, and optionally reacts to each message on the
// stream's reader thread. Thread-safe.
class FakeWorkerService final : public v1::WorkerService::Service {
 public:
  struct Received {
    int stream;
    v1::WorkerMessage message;
  };
  // Runs for each message received, on that stream's reader thread; returning
  // a status ends the stream with it.
  using Reaction = std::function<std::optional<grpc::Status>(
      FakeWorkerService& fake, int stream, const v1::WorkerMessage& message)>;

  // Set before any worker connects.
  void set_reaction(Reaction reaction) {
    absl::MutexLock lock(&mu_);
    reaction_ = std::move(reaction);
  }

  grpc::Status Connect(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::ServerMessage, v1::WorkerMessage>* stream)
      override {
    Reaction reaction;
    {
      absl::MutexLock lock(&mu_);
      reaction = reaction_;
    }
    int id;
    {
      absl::MutexLock write_lock(&write_mu_);
      id = ++streams_;
      current_ = stream;
      current_context_ = context;
      current_id_ = id;
    }
    std::optional<grpc::Status> end;
    v1::WorkerMessage message;
    while (!end && stream->Read(&message)) {
      {
        absl::MutexLock lock(&mu_);
        log_.push_back({id, message});
      }
      if (reaction) end = reaction(*this, id, message);
    }
    absl::MutexLock write_lock(&write_mu_);
    if (current_id_ == id) {
      current_ = nullptr;
      current_context_ = nullptr;
    }
    return end.value_or(grpc::Status::OK);
  }

  // Writes to stream `stream` (0: whichever is current); false if that stream
  // is gone.
  bool Send(const v1::ServerMessage& message, int stream = 0) {
    absl::MutexLock write_lock(&write_mu_);
    if (current_ == nullptr || (stream != 0 && stream != current_id_)) {
      return false;
    }
    return current_->Write(message);
  }

  // Cancels the current stream (the worker sees it end with CANCELLED).
  void KillCurrentStream() {
    absl::MutexLock write_lock(&write_mu_);
    if (current_context_ != nullptr) current_context_->TryCancel();
  }

  // Waits until `pred` holds over everything received so far.
  bool WaitUntil(const std::function<bool(const std::vector<Received>&)>& pred,
                 absl::Duration timeout = kTimeout) {
    absl::MutexLock lock(&mu_);
    auto holds = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return pred(log_);
    };
    return mu_.AwaitWithTimeout(absl::Condition(&holds), timeout);
  }

  std::vector<Received> received() const {
    absl::MutexLock lock(&mu_);
    return log_;
  }

  // All results received, in order.
  std::vector<v1::TaskResult> results() const {
    std::vector<v1::TaskResult> results;
    for (const Received& r : received()) {
      results.insert(results.end(), r.message.results().begin(),
                     r.message.results().end());
    }
    return results;
  }

  static size_t CountResults(const std::vector<Received>& log) {
    size_t n = 0;
    for (const Received& r : log) n += r.message.results_size();
    return n;
  }

 private:
  mutable absl::Mutex mu_;
  Reaction reaction_ ABSL_GUARDED_BY(mu_);
  std::vector<Received> log_ ABSL_GUARDED_BY(mu_);

  // Held across writes, and by Connect while it forgets its stream, so that a
  // Send never writes to a finished stream.
  absl::Mutex write_mu_;
  int streams_ ABSL_GUARDED_BY(write_mu_) = 0;
  int current_id_ ABSL_GUARDED_BY(write_mu_) = 0;
  grpc::ServerReaderWriter<v1::ServerMessage, v1::WorkerMessage>* current_
      ABSL_GUARDED_BY(write_mu_) = nullptr;
  grpc::ServerContext* current_context_ ABSL_GUARDED_BY(write_mu_) = nullptr;
};

// Reaction: welcome each hello as "<name>-<stream>".
std::optional<grpc::Status> WelcomeHello(FakeWorkerService& fake, int stream,
                                         const v1::WorkerMessage& message) {
  if (message.has_hello()) {
    fake.Send(Welcome(absl::StrCat(message.hello().name(), "-", stream)),
              stream);
  }
  return std::nullopt;
}

// Reaction of a server that honours the credit: on hello, a welcome and
// `slots` assignments; then one new assignment per result, until `total` were
// sent. Checks the credit it keeps is never exceeded.
class CreditServer {
 public:
  explicit CreditServer(int total) : total_(total) {}

  std::optional<grpc::Status> operator()(FakeWorkerService& fake, int stream,
                                         const v1::WorkerMessage& message) {
    v1::ServerMessage reply;
    if (message.has_hello()) {
      reply.mutable_welcome()->set_worker_id("credit-1");
      credit_ = message.hello().slots();
    }
    credit_ += message.results_size();
    outstanding_ -= message.results_size();
    while (credit_ > 0 && sent_ < total_) {
      *reply.add_assignments() =
          MakeAssignment("g", sent_, 1000 + sent_, absl::StrCat("in", sent_));
      ++sent_;
      --credit_;
      ++outstanding_;
      max_outstanding_ = std::max(max_outstanding_.load(), outstanding_);
    }
    if (message.has_hello() || reply.assignments_size() > 0) {
      fake.Send(reply, stream);
    }
    return std::nullopt;
  }

  int max_outstanding() const { return max_outstanding_.load(); }

 private:
  const int total_;
  // Only touched on the (single) stream's reader thread.
  int sent_ = 0;
  int credit_ = 0;
  int outstanding_ = 0;
  std::atomic<int> max_outstanding_{0};
};

TaskOutcome Echo(TaskContext& ctx) {
  TaskOutcome outcome;
  outcome.output = ctx.assignment().input();
  return outcome;
}

class WorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port_, 0);
  }

  void TearDown() override {
    if (worker_ != nullptr) worker_->Stop();
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::seconds(2));
  }

  WorkerOptions Options() {
    WorkerOptions options;
    options.server = absl::StrCat("127.0.0.1:", port_);
    options.name = "w";
    options.queues = {"q"};
    options.slots = 1;
    // Out of the way unless a test asks for heartbeats.
    options.heartbeat_interval = absl::Hours(1);
    options.reconnect_backoff = absl::Milliseconds(10);
    return options;
  }

  void StartWorker(WorkerOptions options, Handler handler) {
    worker_ = std::make_unique<Worker>(std::move(options), std::move(handler));
    ASSERT_TRUE(worker_->Start().ok());
  }

  int port_ = 0;
  FakeWorkerService service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Worker> worker_;
};

TEST_F(WorkerTest, HelloCarriesQueuesSlotsAndName) {
  service_.set_reaction(WelcomeHello);
  absl::Notification welcomed;
  WorkerOptions options = Options();
  options.name = "alpha";
  options.queues = {"q1", "q2"};
  options.slots = 3;
  options.labels = {{"host", "test"}};
  options.on_welcome = [&](const std::string&) { welcomed.Notify(); };
  StartWorker(options, Echo);

  ASSERT_TRUE(welcomed.WaitForNotificationWithTimeout(kTimeout));
  EXPECT_EQ(worker_->worker_id(), "alpha-1");
  const std::vector<FakeWorkerService::Received> received = service_.received();
  ASSERT_FALSE(received.empty());
  const v1::WorkerMessage& first = received[0].message;
  ASSERT_TRUE(first.has_hello());
  EXPECT_EQ(first.hello().name(), "alpha");
  EXPECT_EQ(std::vector<std::string>(first.hello().queues().begin(),
                                     first.hello().queues().end()),
            (std::vector<std::string>{"q1", "q2"}));
  EXPECT_EQ(first.hello().slots(), 3);
  EXPECT_EQ(first.hello().labels().at("host"), "test");
  // The hello comes alone.
  EXPECT_EQ(first.results_size(), 0);
  EXPECT_EQ(first.progress_size(), 0);
  EXPECT_FALSE(first.has_heartbeat());
}

TEST_F(WorkerTest, NeverRunsMoreTasksThanSlots) {
  constexpr int kSlots = 3;
  constexpr int kTotal = 24;
  auto server = std::make_shared<CreditServer>(kTotal);
  service_.set_reaction(
      [server](FakeWorkerService& fake, int stream,
               const v1::WorkerMessage& message) {
        return (*server)(fake, stream, message);
      });
  std::atomic<int> running{0};
  std::atomic<int> max_running{0};
  WorkerOptions options = Options();
  options.slots = kSlots;
  StartWorker(options, [&](TaskContext& ctx) {
    const int now = ++running;
    int seen = max_running.load();
    while (now > seen && !max_running.compare_exchange_weak(seen, now)) {
    }
    ctx.WaitCancelled(absl::Milliseconds(20));  // Simulated work.
    --running;
    return Echo(ctx);
  });

  ASSERT_TRUE(service_.WaitUntil([](const auto& log) {
    return FakeWorkerService::CountResults(log) == kTotal;
  }));
  EXPECT_LE(max_running.load(), kSlots);
  EXPECT_GE(max_running.load(), 2);  // The slots were really used in parallel.
  EXPECT_LE(server->max_outstanding(), kSlots);
  std::set<uint64_t> epochs;
  for (const v1::TaskResult& result : service_.results()) {
    EXPECT_TRUE(result.success());
    epochs.insert(result.lease().epoch());
  }
  EXPECT_EQ(epochs.size(), static_cast<size_t>(kTotal));
}

TEST_F(WorkerTest, RunsAtMostSlotsTasksEvenIfServerOversends) {
  constexpr int kSlots = 2;
  constexpr int kTotal = 10;
  service_.set_reaction([](FakeWorkerService& fake, int stream,
                           const v1::WorkerMessage& message) {
    if (message.has_hello()) {
      v1::ServerMessage reply = Welcome("greedy-1");
      for (int i = 0; i < kTotal; ++i) {
        *reply.add_assignments() = MakeAssignment("g", i, 1 + i);
      }
      fake.Send(reply, stream);
    }
    return std::optional<grpc::Status>();
  });
  std::atomic<int> running{0};
  std::atomic<int> max_running{0};
  WorkerOptions options = Options();
  options.slots = kSlots;
  StartWorker(options, [&](TaskContext& ctx) {
    const int now = ++running;
    int seen = max_running.load();
    while (now > seen && !max_running.compare_exchange_weak(seen, now)) {
    }
    ctx.WaitCancelled(absl::Milliseconds(5));
    --running;
    return Echo(ctx);
  });

  ASSERT_TRUE(service_.WaitUntil([](const auto& log) {
    return FakeWorkerService::CountResults(log) == kTotal;
  }));
  EXPECT_LE(max_running.load(), kSlots);
}

TEST_F(WorkerTest, ResultsEchoTheLease) {
  std::vector<v1::Assignment> sent = {
      MakeAssignment("graph-a", 0, 7, "x"),
      MakeAssignment("graph-a", 1, 8, "y"),
      MakeAssignment("graph-b", 0, 9, ""),
      MakeAssignment("graph-b", 5, 1ull << 40, "big epoch"),
  };
  service_.set_reaction([&sent](FakeWorkerService& fake, int stream,
                                const v1::WorkerMessage& message) {
    if (message.has_hello()) {
      v1::ServerMessage reply = Welcome("w-1");
      for (const v1::Assignment& a : sent) *reply.add_assignments() = a;
      fake.Send(reply, stream);
    }
    return std::optional<grpc::Status>();
  });
  WorkerOptions options = Options();
  options.slots = 2;
  StartWorker(options, Echo);

  ASSERT_TRUE(service_.WaitUntil([&](const auto& log) {
    return FakeWorkerService::CountResults(log) == sent.size();
  }));
  const std::vector<v1::TaskResult> results = service_.results();
  for (const v1::Assignment& a : sent) {
    int matches = 0;
    for (const v1::TaskResult& result : results) {
      if (MessageDifferencer::Equals(result.lease(), a.lease())) {
        ++matches;
        EXPECT_TRUE(result.success());
        EXPECT_EQ(result.output(), a.input());
      }
    }
    EXPECT_EQ(matches, 1) << a.lease().ShortDebugString();
  }
}

TEST_F(WorkerTest, CancelFromServerReachesHandlerAndIsReportedCancelled) {
  const v1::Assignment assignment = MakeAssignment("g", 3, 42, "in");
  service_.set_reaction([&](FakeWorkerService& fake, int stream,
                            const v1::WorkerMessage& message) {
    if (message.has_hello()) {
      v1::ServerMessage reply = Welcome("w-1");
      *reply.add_assignments() = assignment;
      fake.Send(reply, stream);
    }
    return std::optional<grpc::Status>();
  });
  absl::Notification started;
  std::atomic<bool> saw_cancel{false};
  StartWorker(Options(), [&](TaskContext& ctx) {
    started.Notify();
    saw_cancel = ctx.WaitCancelled(kTimeout);
    saw_cancel = saw_cancel && ctx.cancelled();
    return Echo(ctx);  // Overridden: the attempt was cancelled.
  });

  ASSERT_TRUE(started.WaitForNotificationWithTimeout(kTimeout));
  v1::ServerMessage cancel;
  *cancel.add_cancels()->mutable_lease() = assignment.lease();
  cancel.mutable_cancels(0)->set_reason("graph cancelled");
  ASSERT_TRUE(service_.Send(cancel));

  ASSERT_TRUE(service_.WaitUntil([](const auto& log) {
    return FakeWorkerService::CountResults(log) == 1;
  }));
  EXPECT_TRUE(saw_cancel.load());
  const v1::TaskResult result = service_.results()[0];
  EXPECT_TRUE(MessageDifferencer::Equals(result.lease(), assignment.lease()));
  EXPECT_FALSE(result.success());
  EXPECT_EQ(result.error().code(), "CANCELLED");
  EXPECT_EQ(result.error().message(), "graph cancelled");
  EXPECT_EQ(worker_->stats().cancels_received, 1);
}

TEST_F(WorkerTest, BatchesResultsThatFinishTogether) {
  constexpr int kTotal = 50;
  auto server = std::make_shared<CreditServer>(kTotal);
  service_.set_reaction(
      [server](FakeWorkerService& fake, int stream,
               const v1::WorkerMessage& message) {
        return (*server)(fake, stream, message);
      });
  WorkerOptions options = Options();
  options.slots = 8;
  StartWorker(options, Echo);

  ASSERT_TRUE(service_.WaitUntil([](const auto& log) {
    return FakeWorkerService::CountResults(log) == kTotal;
  }));
  int max_batch = 0;
  for (const FakeWorkerService::Received& r : service_.received()) {
    max_batch = std::max(max_batch, r.message.results_size());
  }
  EXPECT_GT(max_batch, 1);
  EXPECT_LE(server->max_outstanding(), 8);
}

TEST_F(WorkerTest, HeartbeatsCarryRunningLeases) {
  const v1::Assignment a = MakeAssignment("g", 0, 11);
  const v1::Assignment b = MakeAssignment("g", 1, 12);
  service_.set_reaction([&](FakeWorkerService& fake, int stream,
                            const v1::WorkerMessage& message) {
    if (message.has_hello()) {
      v1::ServerMessage reply = Welcome("w-1");
      *reply.add_assignments() = a;
      *reply.add_assignments() = b;
      fake.Send(reply, stream);
    }
    return std::optional<grpc::Status>();
  });
  WorkerOptions options = Options();
  options.slots = 2;
  options.heartbeat_interval = absl::Milliseconds(50);
  StartWorker(options, [](TaskContext& ctx) {
    ctx.WaitCancelled(kTimeout);
    return Echo(ctx);
  });

  auto carries = [](const v1::Heartbeat& heartbeat, const v1::Lease& lease) {
    for (const v1::Lease& l : heartbeat.leases()) {
      if (MessageDifferencer::Equals(l, lease)) return true;
    }
    return false;
  };
  EXPECT_TRUE(service_.WaitUntil([&](const auto& log) {
    for (const FakeWorkerService::Received& r : log) {
      if (r.message.has_heartbeat() &&
          carries(r.message.heartbeat(), a.lease()) &&
          carries(r.message.heartbeat(), b.lease())) {
        return true;
      }
    }
    return false;
  }));
}

TEST_F(WorkerTest, StopReturnsPromptlyWhileHandlerSleeps) {
  service_.set_reaction([](FakeWorkerService& fake, int stream,
                           const v1::WorkerMessage& message) {
    if (message.has_hello()) {
      v1::ServerMessage reply = Welcome("w-1");
      *reply.add_assignments() = MakeAssignment("g", 0, 1);
      fake.Send(reply, stream);
    }
    return std::optional<grpc::Status>();
  });
  absl::Notification started;
  std::atomic<bool> saw_cancel{false};
  StartWorker(Options(), [&](TaskContext& ctx) {
    started.Notify();
    saw_cancel = ctx.WaitCancelled(absl::Hours(1));
    return Echo(ctx);
  });
  ASSERT_TRUE(started.WaitForNotificationWithTimeout(kTimeout));

  const absl::Time begin = absl::Now();
  worker_->Stop();
  EXPECT_LT(absl::Now() - begin, absl::Seconds(5));
  EXPECT_TRUE(saw_cancel.load());
  EXPECT_TRUE(worker_->Wait().ok());
}

TEST_F(WorkerTest, AcksWithNonZeroCodeAreCountedAsRefused) {
  service_.set_reaction([](FakeWorkerService& fake, int stream,
                           const v1::WorkerMessage& message) {
    v1::ServerMessage reply;
    if (message.has_hello()) {
      reply = Welcome("w-1");
      *reply.add_assignments() = MakeAssignment("g", 0, 1);
    }
    if (message.results_size() > 0 && message.results(0).lease().epoch() == 1) {
      // Acks and the next assignment together: the worker handles the acks
      // before running the assignment.
      v1::ResultAck* ok = reply.add_acks();
      *ok->mutable_lease() = message.results(0).lease();
      v1::ResultAck* refused = reply.add_acks();
      *refused->mutable_lease() = message.results(0).lease();
      refused->set_code(static_cast<int>(grpc::StatusCode::ABORTED));
      refused->set_message("stale attempt");
      *reply.add_assignments() = MakeAssignment("g", 1, 2);
    }
    if (reply.ByteSizeLong() > 0) fake.Send(reply, stream);
    return std::optional<grpc::Status>();
  });
  StartWorker(Options(), Echo);

  ASSERT_TRUE(service_.WaitUntil([](const auto& log) {
    return FakeWorkerService::CountResults(log) == 2;
  }));
  const WorkerStats stats = worker_->stats();
  EXPECT_EQ(stats.acks_accepted, 1);
  EXPECT_EQ(stats.acks_refused, 1);
  EXPECT_EQ(stats.tasks_completed, 2);
}

TEST_F(WorkerTest, ReconnectsAfterStreamLossAndDropsResultsOfLostLeases) {
  const v1::Assignment lost = MakeAssignment("g", 0, 1);
  const v1::Assignment next = MakeAssignment("g", 1, 2);
  service_.set_reaction([&](FakeWorkerService& fake, int stream,
                            const v1::WorkerMessage& message) {
    if (message.has_hello()) {
      v1::ServerMessage reply = Welcome(absl::StrCat("w-", stream));
      *reply.add_assignments() = stream == 1 ? lost : next;
      fake.Send(reply, stream);
    }
    return std::optional<grpc::Status>();
  });
  absl::Notification lost_started;
  absl::Notification disconnected;
  std::atomic<bool> lost_saw_cancel{false};
  WorkerOptions options = Options();
  options.slots = 1;  // `next` runs only after `lost`'s result was handled.
  options.on_disconnect = [&](const absl::Status& status) {
    EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
    disconnected.Notify();
  };
  StartWorker(options, [&](TaskContext& ctx) {
    if (ctx.assignment().lease().epoch() == lost.lease().epoch()) {
      lost_started.Notify();
      lost_saw_cancel = ctx.WaitCancelled(kTimeout);
    }
    return Echo(ctx);
  });

  ASSERT_TRUE(lost_started.WaitForNotificationWithTimeout(kTimeout));
  service_.KillCurrentStream();
  ASSERT_TRUE(disconnected.WaitForNotificationWithTimeout(kTimeout));
  ASSERT_TRUE(service_.WaitUntil([](const auto& log) {
    return FakeWorkerService::CountResults(log) >= 1;
  }));

  EXPECT_TRUE(lost_saw_cancel.load());
  const std::vector<FakeWorkerService::Received> received = service_.received();
  int hellos = 0;
  for (const FakeWorkerService::Received& r : received) {
    hellos += r.message.has_hello();
    for (const v1::TaskResult& result : r.message.results()) {
      EXPECT_EQ(r.stream, 2);
      EXPECT_EQ(result.lease().epoch(), next.lease().epoch());
    }
  }
  EXPECT_EQ(hellos, 2);
  EXPECT_EQ(worker_->worker_id(), "w-2");
  const WorkerStats stats = worker_->stats();
  EXPECT_EQ(stats.streams_opened, 2);
  EXPECT_EQ(stats.welcomes, 2);
  EXPECT_EQ(stats.results_discarded, 1);
}

TEST_F(WorkerTest, WaitReturnsTheStreamStatusWhenNotReconnecting) {
  service_.set_reaction([](FakeWorkerService&, int,
                           const v1::WorkerMessage& message) {
    return std::optional<grpc::Status>(
        grpc::Status(grpc::StatusCode::UNAVAILABLE, "going away"));
  });
  WorkerOptions options = Options();
  options.reconnect = false;
  StartWorker(options, Echo);

  const absl::Status status = worker_->Wait();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_EQ(status.message(), "going away");
  EXPECT_EQ(worker_->stats().streams_opened, 1);
}

TEST_F(WorkerTest, StartRejectsBadOptions) {
  WorkerOptions options = Options();
  options.queues.clear();
  EXPECT_EQ(Worker(options, Echo).Start().code(),
            absl::StatusCode::kInvalidArgument);
  options = Options();
  options.slots = 0;
  EXPECT_EQ(Worker(options, Echo).Start().code(),
            absl::StatusCode::kInvalidArgument);
}

// --- the forge-worker binary -------------------------------------------------

std::string ForgeWorkerPath() {
  if (const char* dir = std::getenv("FORGE_BIN_DIR")) {
    return absl::StrCat(dir, "/forge-worker");
  }
  // build/tests/worker_test -> build/bin/forge-worker
  char self[4096] = {};
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  std::string path(self, n > 0 ? n : 0);
  path = path.substr(0, path.rfind('/'));
  return path.substr(0, path.rfind('/')) + "/bin/forge-worker";
}

// A child process with its stderr on a pipe.
class Child {
 public:
  explicit Child(std::vector<std::string> args) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(),
                    environ) != 0) {
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    stderr_fd_ = fds[0];
  }
  ~Child() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (stderr_fd_ >= 0) close(stderr_fd_);
  }

  bool running() const { return pid_ > 0; }
  void Signal(int sig) { kill(pid_, sig); }

  // Reads stderr until it contains `text` (true) or EOF / the deadline.
  bool WaitForStderr(const std::string& text,
                     absl::Duration timeout = kTimeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (stderr_.find(text) == std::string::npos) {
      pollfd pfd = {stderr_fd_, POLLIN, 0};
      const int ms = static_cast<int>(
          absl::ToInt64Milliseconds(deadline - absl::Now()));
      if (ms <= 0 || poll(&pfd, 1, ms) <= 0) return false;
      char buf[512];
      const ssize_t n = read(stderr_fd_, buf, sizeof(buf));
      if (n <= 0) return false;
      stderr_.append(buf, n);
    }
    return true;
  }

  // Waits for the exit (pidfd + poll for the deadline); the exit code, or -1.
  int WaitExit(absl::Duration timeout = kTimeout) {
    const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
    if (pidfd >= 0) {
      pollfd pfd = {pidfd, POLLIN, 0};
      const int ready =
          poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
      close(pidfd);
      if (ready <= 0) return -1;
    }
    int status = 0;
    if (waitpid(pid_, &status, 0) != pid_) return -1;
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  const std::string& stderr_text() const { return stderr_; }

 private:
  pid_t pid_ = -1;
  int stderr_fd_ = -1;
  std::string stderr_;
};

TEST_F(WorkerTest, ForgeWorkerEchoesAndExitsCleanlyOnSigterm) {
  const std::string binary = ForgeWorkerPath();
  ASSERT_EQ(access(binary.c_str(), X_OK), 0) << binary;
  service_.set_reaction([](FakeWorkerService& fake, int stream,
                           const v1::WorkerMessage& message) {
    if (message.has_hello()) {
      v1::ServerMessage reply =
          Welcome(absl::StrCat(message.hello().name(), "-1"));
      *reply.add_assignments() = MakeAssignment("g", 0, 1, "payload");
      *reply.add_assignments() = MakeAssignment("g", 1, 2, "");  // task1
      fake.Send(reply, stream);
    }
    return std::optional<grpc::Status>();
  });
  Child child({binary, absl::StrCat("--server=127.0.0.1:", port_), "--queue",
               "q", "--queue=q2", "--slots", "2", "--mode", "echo", "--name",
               "bin"});
  ASSERT_TRUE(child.running());

  ASSERT_TRUE(child.WaitForStderr("forge-worker: connected as bin-1\n"))
      << child.stderr_text();
  ASSERT_TRUE(service_.WaitUntil([](const auto& log) {
    return FakeWorkerService::CountResults(log) == 2;
  }));
  const v1::WorkerHello hello = service_.received()[0].message.hello();
  EXPECT_EQ(hello.slots(), 2);
  EXPECT_EQ(hello.queues_size(), 2);
  for (const v1::TaskResult& result : service_.results()) {
    EXPECT_TRUE(result.success());
    EXPECT_EQ(result.output(),
              result.lease().epoch() == 1 ? "payload" : "task1");
  }
  child.Signal(SIGTERM);
  EXPECT_EQ(child.WaitExit(), 0) << child.stderr_text();
}

TEST_F(WorkerTest, ForgeWorkerBadUsageExitsTwo) {
  const std::string binary = ForgeWorkerPath();
  ASSERT_EQ(access(binary.c_str(), X_OK), 0) << binary;
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{
           {binary, "--slots", "0"},
           {binary, "--mode", "fail:1.5"},
           {binary, "--bogus"},
           {binary, "--queue"}}) {
    Child child(args);
    ASSERT_TRUE(child.running());
    child.WaitForStderr("usage:");
    EXPECT_EQ(child.WaitExit(), 2) << args[1];
    EXPECT_NE(child.stderr_text().find("usage:"), std::string::npos);
  }
}

}  // namespace
}  // namespace forge::client
