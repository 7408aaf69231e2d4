// Durable mode end to end: a server on its RocksDB journal is stopped and
// started again on the same data directory, through the real gRPC API.
#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstring>
#include <atomic>
#include <random>
#include <thread>

#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/message_differencer.h"
#include "tests/integration/fixture.h"

namespace forge::testing {
namespace {

namespace fs = std::filesystem;
using google::protobuf::util::MessageDifferencer;

class DurabilityTest : public ForgeTest {
 protected:
  void Configure(ServerOptions& o) override {
    o.data_dir = (dir_ / "data").string();
    o.engine.retention = retention_;
  }
  // Stops everything (workers, server) and starts the server again on the
  // same data directory.
  void Restart() {
    // The server first, as a deployment stops it: attempts still running are
    // abandoned to the next start.
    server_->Shutdown(absl::ZeroDuration());
    for (auto& w : workers_) w->Stop();
    workers_.clear();
    stub_.reset();
    channel_.reset();
    server_.reset();
    StartServer();
  }
  grpc::Status TryGet(const std::string& id, v1::Graph* out) {
    grpc::ClientContext ctx;
    v1::GetGraphRequest req;
    req.set_graph_id(id);
    req.set_view(v1::FULL);
    v1::GetGraphResponse resp;
    grpc::Status s = stub().GetGraph(&ctx, req, &resp);
    if (out != nullptr) *out = resp.graph();
    return s;
  }

  ScopedTempDir tmp_{"forge-durability-test"};
  const fs::path dir_ = tmp_.path();
  absl::Duration retention_ = absl::Hours(24);
};

void ExpectDense(const std::vector<v1::Event>& events) {
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq(), static_cast<int64_t>(i + 1)) << "gap or duplicate";
  }
}

TEST_F(DurabilityTest, FinishedGraphsAndTheirEventsSurviveARestart) {
  StartWorker({"default"}, 2);
  const std::string id = Submit(Diamond());
  const v1::Graph before = WaitTerminal(id);
  ASSERT_EQ(before.state(), v1::GRAPH_STATE_SUCCEEDED);
  const std::vector<v1::Event> events = Replay(id);
  Restart();
  EXPECT_EQ(server().recovery().graphs, 1);
  EXPECT_EQ(server().recovery().live_graphs, 0);
  v1::Graph after;
  ASSERT_TRUE(TryGet(id, &after).ok());
  EXPECT_TRUE(MessageDifferencer::Equals(before, after))
      << before.DebugString() << "\nvs\n" << after.DebugString();
  const std::vector<v1::Event> replayed = Replay(id);
  ASSERT_EQ(replayed.size(), events.size());
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_TRUE(MessageDifferencer::Equals(events[i], replayed[i])) << i;
  }
}

TEST_F(DurabilityTest, PendingWorkResumesWhereItWas) {
  v1::GraphSpec g;
  AddTask(g, "a")->set_input("first");
  AddTask(g, "b", {"a"});
  AddTask(g, "c", {"b"});
  const std::string id = Submit(g);  // no worker yet: a is READY
  Restart();
  EXPECT_EQ(server().recovery().live_graphs, 1);
  StartWorker({"default"}, 1);
  const v1::Graph done = WaitTerminal(id);
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(TaskOf(done, "a").output(), "first");
  ExpectDense(Replay(id));
}

TEST_F(DurabilityTest, ARunningAttemptIsRedispatchedAndItsOldLeaseRefused) {
  absl::Mutex mu;
  std::optional<v1::Lease> held;
  StartWorker({"default"}, 1, [&](client::TaskContext& ctx) {
    {
      absl::MutexLock lock(&mu);
      held = ctx.assignment().lease();
    }
    ctx.WaitCancelled(absl::Seconds(30));  // until the server goes away
    return client::TaskOutcome{};
  });
  v1::GraphSpec g;
  AddTask(g, "t")->mutable_retry()->set_max_attempts(1);
  const std::string id = Submit(g);
  {
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(mu.AwaitWithTimeout(
        absl::Condition(+[](std::optional<v1::Lease>* l) { return l->has_value(); }, &held),
        absl::Seconds(10)));
  }
  const v1::Lease old = *held;
  Restart();
  EXPECT_EQ(server().recovery().restarted_attempts, 1);

  // The interrupted attempt is over: a late result for it changes nothing.
  v1::TaskResult late;
  *late.mutable_lease() = old;
  late.set_success(true);
  late.set_output("late");
  absl::Notification acked;
  absl::Status ack_status;
  server().engine().OnResult("ghost", 0, late, [&](absl::Status s) {
    ack_status = s;
    acked.Notify();
  });
  ASSERT_TRUE(acked.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(ack_status.code(), absl::StatusCode::kAborted) << ack_status;

  // A new attempt runs, though max_attempts is 1: a restart does not count.
  StartWorker({"default"}, 1);
  const v1::Graph done = WaitTerminal(id);
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  const v1::Task& t = TaskOf(done, "t");
  EXPECT_EQ(t.attempt(), 2);
  EXPECT_NE(t.output(), "late");
  ASSERT_EQ(t.attempts_size(), 2);
  EXPECT_EQ(t.attempts(0).error().code(), "LEASE_LOST");
  EXPECT_EQ(t.attempts(1).state(), v1::SUCCEEDED);
  const std::vector<v1::Event> events = Replay(id);
  ExpectDense(events);
  int succeeded = 0;
  for (const v1::Event& e : events) succeeded += e.type() == v1::TASK_SUCCEEDED;
  EXPECT_EQ(succeeded, 1);  // one final result
}

TEST_F(DurabilityTest, ARequestIdKeepsItsGraphAcrossARestart) {
  const std::string id = Submit(Diamond(), "req-1");
  Restart();
  v1::SubmitGraphResponse again;
  ASSERT_TRUE(TrySubmit(Diamond(), &again, "req-1").ok());
  EXPECT_EQ(again.graph_id(), id);
  EXPECT_FALSE(again.created());
  v1::GraphSpec other = Diamond();
  other.set_name("other");
  v1::SubmitGraphResponse refused;
  EXPECT_EQ(TrySubmit(other, &refused, "req-1").error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(GraphCount(), 1);
}

class ShortRetentionTest : public DurabilityTest {
 protected:
  void SetUp() override {
    retention_ = absl::Milliseconds(300);
    DurabilityTest::SetUp();
  }
};

TEST_F(ShortRetentionTest, FinishedGraphsAreDeletedFromMemoryAndDiskAfterTheirRetention) {
  StartWorker({"default"}, 2);
  const std::string id = Submit(Diamond(), "req-r");
  ASSERT_EQ(WaitTerminal(id).state(), v1::GRAPH_STATE_SUCCEEDED);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (TryGet(id, nullptr).ok() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));  // test-side wait for the timer
  }
  EXPECT_EQ(TryGet(id, nullptr).error_code(), grpc::StatusCode::NOT_FOUND);
  Restart();
  EXPECT_EQ(server().recovery().graphs, 0);
  EXPECT_EQ(TryGet(id, nullptr).error_code(), grpc::StatusCode::NOT_FOUND);
  // Its request_id went with it.
  v1::SubmitGraphResponse fresh;
  ASSERT_TRUE(TrySubmit(Diamond(), &fresh, "req-r").ok());
  EXPECT_TRUE(fresh.created());
  EXPECT_NE(fresh.graph_id(), id);
}

// Flips one byte in the middle of every file of the journal that holds
// records (WAL and tables).
void Corrupt(const fs::path& dir) {
  for (const auto& f : fs::directory_iterator(dir)) {
    const std::string ext = f.path().extension().string();
    if ((ext != ".log" && ext != ".sst") || fs::file_size(f.path()) < 64) continue;
    std::fstream io(f.path(), std::ios::in | std::ios::out | std::ios::binary);
    const std::streamoff mid = static_cast<std::streamoff>(fs::file_size(f.path()) / 2);
    io.seekg(mid);
    char c = 0;
    io.get(c);
    io.seekp(mid);
    io.put(static_cast<char>(c ^ 0x5a));
  }
}

TEST_F(DurabilityTest, ACorruptJournalIsReportedNotSkipped) {
  StartWorker({"default"}, 2);
  for (int i = 0; i < 20; ++i) WaitTerminal(Submit(Diamond()));
  for (auto& w : workers_) w->Stop();
  workers_.clear();
  stub_.reset();
  channel_.reset();
  server_.reset();
  Corrupt(dir_ / "data");
  ServerOptions o;
  o.listen = "127.0.0.1:0";
  Configure(o);
  absl::StatusOr<std::unique_ptr<ForgeServer>> s = ForgeServer::Start(o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kDataLoss) << s.status();
}

// A full disk: new submits get RESOURCE_EXHAUSTED, one already admitted
// waits (in order) and is acknowledged once space returns; nothing is lost.
class DiskFullTest : public DurabilityTest {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "mnt");
    ASSERT_NE(getcwd(old_cwd_, sizeof old_cwd_), nullptr);
    if (mount("tmpfs", (dir_ / "mnt").c_str(), "tmpfs", 0, "size=200m") != 0) {
      GTEST_SKIP() << "cannot mount a tmpfs: " << std::strerror(errno);
    }
    // Used through the working directory and detached at once, so the mount
    // goes away with the process however the test ends.
    ASSERT_EQ(chdir((dir_ / "mnt").c_str()), 0);
    ASSERT_EQ(umount2((dir_ / "mnt").c_str(), MNT_DETACH), 0);
    mounted_ = true;
    ForgeTest::SetUp();
  }
  void TearDown() override {
    ForgeTest::TearDown();
    if (mounted_) ASSERT_EQ(chdir(old_cwd_), 0);
  }
  void Configure(ServerOptions& o) override { o.data_dir = "data"; }
  static void Fill() {
    const int fd = open("filler", O_WRONLY | O_CREAT, 0644);
    ASSERT_GE(fd, 0);
    const std::string chunk(64 << 10, 'f');
    while (write(fd, chunk.data(), chunk.size()) > 0) {
    }
    close(fd);
  }
  char old_cwd_[4096];
  bool mounted_ = false;
};

TEST_F(DiskFullTest, SubmitsGetResourceExhaustedAndServiceResumesOnceSpaceReturns) {
  StartWorker({"default"}, 2);
  const std::string before = Submit(Diamond());
  ASSERT_EQ(WaitTerminal(before).state(), v1::GRAPH_STATE_SUCCEEDED);
  Fill();
  // The journal's log has room preallocated: submits of big inputs (run by
  // a worker: more records) use it up until a write meets the full disk.
  // That write and everything behind it wait; new submits are refused.
  v1::GraphSpec big;
  std::string noise(900 << 10, '\0');  // incompressible: tables take the room too
  std::mt19937 rng(7);
  for (char& c : noise) c = static_cast<char>(rng());
  AddTask(big, "big")->set_input(noise);
  std::atomic<bool> stop{false};
  grpc::Status last;
  std::vector<std::string> accepted;
  std::thread loader([&] {
    for (int i = 0; i < 1000 && !stop.load(); ++i) {
      v1::SubmitGraphResponse r;
      last = TrySubmit(big, &r);
      if (!last.ok()) return;
      accepted.push_back(r.graph_id());
    }
  });
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (!server().journal()->stats().disk_full && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));  // test-side wait for the full disk
  }
  if (!server().journal()->stats().disk_full) {
    stop.store(true);
    loader.join();
    FAIL() << "the disk never filled up; last submit: " << last.error_code() << " "
           << last.error_message() << " after " << accepted.size();
  }
  v1::SubmitGraphResponse refused;
  grpc::Status s = TrySubmit(Diamond(), &refused);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "disk is full")) << s.error_message();
  EXPECT_TRUE(server().journal()->health().ok());  // not sticky
  stop.store(true);

  fs::remove("filler");
  loader.join();
  // The loader ended by the stop, or was refused like the submit above;
  // either way, whatever was acknowledged finishes once there is room.
  EXPECT_TRUE(last.ok() || last.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED)
      << last.error_message();
  ASSERT_FALSE(accepted.empty());
  // The journal looks for room again every 100 ms (test-side wait).
  const absl::Time resumed = absl::Now() + absl::Seconds(20);
  while (server().journal()->stats().disk_full && absl::Now() < resumed) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_FALSE(server().journal()->stats().disk_full);
  const std::string after = Submit(Diamond());
  for (const std::string& id : accepted) {
    EXPECT_EQ(WaitTerminal(id).state(), v1::GRAPH_STATE_SUCCEEDED) << id;
  }
  EXPECT_EQ(WaitTerminal(after).state(), v1::GRAPH_STATE_SUCCEEDED);
  Restart();
  accepted.push_back(before);
  accepted.push_back(after);
  for (const std::string& id : accepted) {
    v1::Graph g;
    ASSERT_TRUE(TryGet(id, &g).ok()) << id;
    EXPECT_EQ(g.state(), v1::GRAPH_STATE_SUCCEEDED) << id;
  }
}

}  // namespace
}  // namespace forge::testing
