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

  // What the engine answers a result for `lease` from a worker that is gone.
  absl::Status LateResult(const v1::Lease& lease, const std::string& output = "late") {
    v1::TaskResult late;
    *late.mutable_lease() = lease;
    late.set_success(true);
    late.set_output(output);
    // Shared with the ack: it outlives this call if the ack never comes.
    struct Ack {
      absl::Notification done;
      absl::Status status;
    };
    auto ack = std::make_shared<Ack>();
    server().engine().OnResult("ghost", 0, late, [ack](absl::Status s) {
      ack->status = s;
      ack->done.Notify();
    });
    if (!ack->done.WaitForNotificationWithTimeout(absl::Seconds(10))) {
      return absl::DeadlineExceededError("no ack within 10 s");
    }
    return ack->status;
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
  const absl::Status late = LateResult(old);
  EXPECT_EQ(late.code(), absl::StatusCode::kAborted) << late;

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

// Memory retention: a finished graph leaves memory (all but its summary)
// and every read of it is then served from the journal, the same as before.
class MemoryRetentionTest : public DurabilityTest {
 protected:
  void Configure(ServerOptions& o) override {
    DurabilityTest::Configure(o);
    o.engine.memory_retention = memory_retention_;
  }
  // Everything a client can read of a graph, through the API.
  struct Reads {
    v1::Graph full;
    v1::Graph basic;
    std::vector<v1::Task> tasks;
    v1::ListGraphsResponse listed_full;
    v1::ListGraphsResponse listed_basic;
    std::vector<v1::Event> replay;
    std::vector<v1::Event> resumed;  // Watch after_seq = 2
    v1::Graph snapshot;              // Watch without replay: the snapshot
    size_t events_after_snapshot = 0;
  };
  Reads ReadAll(const std::string& id) {
    Reads r;
    EXPECT_TRUE(TryGet(id, &r.full).ok());
    {
      grpc::ClientContext ctx;
      v1::GetGraphRequest req;
      req.set_graph_id(id);
      req.set_view(v1::BASIC);
      v1::GetGraphResponse resp;
      EXPECT_TRUE(stub().GetGraph(&ctx, req, &resp).ok());
      r.basic = resp.graph();
    }
    for (const v1::Task& t : r.full.tasks()) {
      grpc::ClientContext ctx;
      v1::GetTaskRequest req;
      req.set_graph_id(id);
      req.set_task(t.spec().name());
      v1::GetTaskResponse resp;
      EXPECT_TRUE(stub().GetTask(&ctx, req, &resp).ok());
      r.tasks.push_back(resp.task());
    }
    for (v1::GraphView view : {v1::FULL, v1::BASIC}) {
      grpc::ClientContext ctx;
      v1::ListGraphsRequest req;
      req.set_view(view);
      (*req.mutable_labels())["team"] = "archive";
      EXPECT_TRUE(stub()
                      .ListGraphs(&ctx, req, view == v1::FULL ? &r.listed_full : &r.listed_basic)
                      .ok());
    }
    r.replay = Replay(id);
    for (int mode = 0; mode < 2; ++mode) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
      v1::WatchRequest req;
      req.mutable_graph()->set_graph_id(id);
      if (mode == 0) req.mutable_graph()->set_after_seq(2);
      auto reader = stub().Watch(&ctx, req);
      v1::WatchResponse msg;
      while (reader->Read(&msg)) {
        if (msg.has_snapshot()) r.snapshot = msg.snapshot();
        for (const v1::Event& e : msg.events()) {
          if (mode == 0) {
            r.resumed.push_back(e);
          } else {
            ++r.events_after_snapshot;
          }
        }
      }
      EXPECT_TRUE(reader->Finish().ok());
    }
    return r;
  }
  static void ExpectSame(const Reads& a, const Reads& b) {
    auto same = [](const google::protobuf::Message& x, const google::protobuf::Message& y) {
      EXPECT_TRUE(MessageDifferencer::Equals(x, y)) << x.DebugString() << "\nvs\n"
                                                    << y.DebugString();
    };
    same(a.full, b.full);
    same(a.basic, b.basic);
    ASSERT_EQ(a.tasks.size(), b.tasks.size());
    for (size_t i = 0; i < a.tasks.size(); ++i) same(a.tasks[i], b.tasks[i]);
    same(a.listed_full, b.listed_full);
    same(a.listed_basic, b.listed_basic);
    ASSERT_EQ(a.replay.size(), b.replay.size());
    for (size_t i = 0; i < a.replay.size(); ++i) same(a.replay[i], b.replay[i]);
    ASSERT_EQ(a.resumed.size(), b.resumed.size());
    for (size_t i = 0; i < a.resumed.size(); ++i) same(a.resumed[i], b.resumed[i]);
    same(a.snapshot, b.snapshot);
    EXPECT_EQ(a.events_after_snapshot, b.events_after_snapshot);
  }
  // The archive timer fires memory_retention after the graph finished.
  void AwaitArchived(const std::string& id) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (!server().engine().store().IsArchived(id) && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(10));  // test-side wait for the timer
    }
    ASSERT_TRUE(server().engine().store().IsArchived(id));
  }
  void AwaitArchivedWatchers(int64_t n) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (server().engine().archived_watchers() != n && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));  // test-side wait for OnDone
    }
    ASSERT_EQ(server().engine().archived_watchers(), n);
  }
  grpc::StatusCode CancelTaskCode(const std::string& id, const std::string& task) {
    grpc::ClientContext ctx;
    v1::CancelTaskRequest req;
    req.set_graph_id(id);
    req.set_task(task);
    v1::CancelTaskResponse resp;
    return stub().CancelTask(&ctx, req, &resp).error_code();
  }

  absl::Duration memory_retention_ = absl::Milliseconds(200);
};

v1::GraphSpec Labelled(v1::GraphSpec g) {
  (*g.mutable_labels())["team"] = "archive";
  return g;
}

TEST_F(MemoryRetentionTest, AFinishedGraphLeavesMemoryAndReadsTheSameFromDisk) {
  // Task b fails its first attempt: its attempt history must come back too.
  StartWorker({"default"}, 2, [](client::TaskContext& ctx) {
    if (ctx.assignment().task() == "b" && ctx.assignment().lease().attempt() == 1) {
      client::TaskOutcome out;
      out.success = false;
      out.error_code = "FLAKY";
      out.error_message = "first attempt fails";
      return out;
    }
    return Echo(ctx);
  });
  v1::GraphSpec spec = Labelled(Diamond());
  spec.mutable_tasks(1)->mutable_retry()->set_max_attempts(2);
  spec.mutable_tasks(1)->mutable_retry()->mutable_initial_backoff()->set_nanos(1000000);
  const std::string id = Submit(spec);
  ASSERT_EQ(WaitTerminal(id).state(), v1::GRAPH_STATE_SUCCEEDED);
  const Reads hot = ReadAll(id);
  ASSERT_EQ(hot.full.tasks_size(), 4);
  EXPECT_EQ(TaskOf(hot.full, "b").attempts_size(), 2);
  ASSERT_FALSE(hot.replay.empty());
  EXPECT_EQ(hot.resumed.size(), hot.replay.size() - 2);
  EXPECT_EQ(hot.events_after_snapshot, 0u);  // finished: the snapshot says it all
  ASSERT_EQ(hot.listed_full.graphs_size(), 1);
  EXPECT_EQ(hot.listed_full.graphs(0).tasks_size(), 4);

  AwaitArchived(id);
  EXPECT_EQ(server().engine().store().archived_count(), 1);
  ExpectSame(hot, ReadAll(id));
  // Watchers reading the journal count as watchers (forge_watch_subscribers).
  // ReadAll's streams ended; the server lets go of each in the call's OnDone,
  // which gRPC may run a little after the client has read the status.
  AwaitArchivedWatchers(0);
  {
    absl::StatusOr<std::shared_ptr<events::Subscription>> sub =
        server().engine().SubscribeGraph(id, 0, [] {});
    ASSERT_TRUE(sub.ok()) << sub.status();
    EXPECT_EQ(server().engine().archived_watchers(), 1);
    EXPECT_EQ((*sub)->Next(1000).events.size(), hot.replay.size());
  }
  EXPECT_EQ(server().engine().archived_watchers(), 0);  // in-process: at once
  // Waiting on it returns at once; cancels change nothing and still know its tasks.
  EXPECT_EQ(WaitTerminal(id).state(), v1::GRAPH_STATE_SUCCEEDED);
  {
    grpc::ClientContext ctx;
    v1::CancelGraphRequest req;
    req.set_graph_id(id);
    v1::CancelGraphResponse resp;
    EXPECT_TRUE(stub().CancelGraph(&ctx, req, &resp).ok());
  }
  EXPECT_EQ(CancelTaskCode(id, "a"), grpc::StatusCode::OK);
  EXPECT_EQ(CancelTaskCode(id, "zz"), grpc::StatusCode::NOT_FOUND);
  // A late result for one of its attempts is refused.
  v1::Lease lease;
  lease.set_graph_id(id);
  lease.set_task_index(0);
  lease.set_attempt(1);
  lease.set_epoch(1);
  const absl::Status late = LateResult(lease);
  EXPECT_EQ(late.code(), absl::StatusCode::kAborted) << late;
  ExpectSame(hot, ReadAll(id));

  // A restart leaves it on disk: nothing of it is compiled or replayed.
  Restart();
  EXPECT_EQ(server().recovery().graphs, 1);
  EXPECT_EQ(server().recovery().archived_graphs, 1);
  EXPECT_TRUE(server().engine().store().IsArchived(id));
  ExpectSame(hot, ReadAll(id));
}

TEST_F(MemoryRetentionTest, RecentlyFinishedGraphsStayInMemoryAcrossARestart) {
  memory_retention_ = absl::Hours(1);
  Restart();  // with the new setting
  StartWorker({"default"}, 2);
  const std::string id = Submit(Labelled(Diamond()));
  ASSERT_EQ(WaitTerminal(id).state(), v1::GRAPH_STATE_SUCCEEDED);
  const Reads hot = ReadAll(id);
  Restart();
  EXPECT_EQ(server().recovery().archived_graphs, 0);
  EXPECT_FALSE(server().engine().store().IsArchived(id));
  ExpectSame(hot, ReadAll(id));
}

class ShortRetentionAfterArchiveTest : public MemoryRetentionTest {
 protected:
  void SetUp() override {
    retention_ = absl::Milliseconds(600);
    memory_retention_ = absl::Milliseconds(100);
    MemoryRetentionTest::SetUp();
  }
};

TEST_F(ShortRetentionAfterArchiveTest, AnArchivedGraphIsDeletedAtTheEndOfItsRetention) {
  StartWorker({"default"}, 2);
  const std::string id = Submit(Labelled(Diamond()), "req-a");
  ASSERT_EQ(WaitTerminal(id).state(), v1::GRAPH_STATE_SUCCEEDED);
  AwaitArchived(id);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (TryGet(id, nullptr).ok() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));  // test-side wait for the timer
  }
  EXPECT_EQ(TryGet(id, nullptr).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(server().engine().store().archived_count(), 0);
  EXPECT_EQ(GraphCount(), 0);
  Restart();
  EXPECT_EQ(server().recovery().graphs, 0);
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
    if (mounted_) {
      ASSERT_EQ(chdir(old_cwd_), 0);
    }
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
