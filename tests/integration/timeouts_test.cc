// Run timeouts, heartbeat leases and schedule-to-start, end to end.
#include <atomic>

#include "forge/v1/worker.grpc.pb.h"
#include "tests/integration/fixture.h"

namespace forge::testing {
namespace {

void SetMs(google::protobuf::Duration* d, int64_t ms) {
  d->set_seconds(ms / 1000);
  d->set_nanos(static_cast<int32_t>((ms % 1000) * 1000000));
}

TEST_F(ForgeTest, RunTimeoutFailsTheAttemptStopsTheWorkerAndRetries) {
  std::atomic<int> cancels{0};
  StartWorker({"default"}, 1, [&](client::TaskContext& ctx) {
    client::TaskOutcome o;
    if (ctx.WaitCancelled(absl::Seconds(30))) ++cancels;  // hangs until told
    return o;
  });
  v1::GraphSpec g;
  v1::TaskSpec* t = AddTask(g, "hangs");
  SetMs(t->mutable_timeouts()->mutable_run(), 200);
  t->mutable_retry()->set_max_attempts(2);
  v1::Graph done = WaitTerminal(Submit(g));
  EXPECT_EQ(done.state(), v1::GRAPH_STATE_FAILED);
  const v1::Task& task = TaskOf(done, "hangs");
  ASSERT_EQ(task.attempts_size(), 2);
  for (const v1::Attempt& a : task.attempts()) {
    EXPECT_EQ(a.state(), v1::FAILED);
    EXPECT_EQ(a.error().code(), "TIMEOUT");
  }
  EXPECT_EQ(task.error().code(), "TIMEOUT");
  // Each timed-out attempt's worker was told to stop.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (cancels.load() < 2 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));  // test-side wait for the handler
  }
  EXPECT_EQ(cancels.load(), 2);
}

class HeartbeatTest : public ForgeTest {
 protected:
  void Configure(ServerOptions& o) override {
    o.engine.store.defaults.heartbeat_timeout = absl::Milliseconds(300);
  }
};

TEST_F(HeartbeatTest, AWorkerThatStopsHeartbeatingLosesItsLeaseAndItsLateResultIsRefused) {
  // A connected worker that takes the task and then says nothing (paused).
  auto worker_stub = v1::WorkerService::NewStub(channel_);
  grpc::ClientContext ctx;
  auto paused = worker_stub->Connect(&ctx);
  v1::WorkerMessage hello;
  hello.mutable_hello()->set_name("paused");
  hello.mutable_hello()->add_queues("default");
  hello.mutable_hello()->set_slots(1);
  ASSERT_TRUE(paused->Write(hello));
  v1::GraphSpec g;
  AddTask(g, "job");
  const std::string id = Submit(g);
  v1::ServerMessage msg;
  v1::Lease lease;
  while (paused->Read(&msg)) {
    if (msg.assignments_size() > 0) {
      lease = msg.assignments(0).lease();
      break;
    }
  }
  ASSERT_EQ(lease.attempt(), 1);
  // The lease expires; the server pushes a cancel for it.
  bool cancelled = false;
  while (!cancelled && paused->Read(&msg)) {
    for (const v1::CancelAssignment& c : msg.cancels()) {
      cancelled = cancelled || c.lease().epoch() == lease.epoch();
    }
  }
  ASSERT_TRUE(cancelled);
  StartWorker({"default"}, 1, Echo, "healthy");
  v1::Graph done = WaitTerminal(id);
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);

  // The paused worker wakes up and reports: refused, nothing changes.
  v1::WorkerMessage late;
  v1::TaskResult* r = late.add_results();
  *r->mutable_lease() = lease;
  r->set_success(true);
  r->set_output("late");
  ASSERT_TRUE(paused->Write(late));
  int32_t code = 0;
  while (paused->Read(&msg)) {
    if (msg.acks_size() > 0) {
      code = msg.acks(0).code();
      break;
    }
  }
  EXPECT_EQ(code, static_cast<int32_t>(grpc::StatusCode::ABORTED));
  const v1::Graph after = Get(id);
  const v1::Task& t = TaskOf(after, "job");
  ASSERT_EQ(t.attempts_size(), 2);
  EXPECT_EQ(t.attempts(0).error().code(), "LEASE_LOST");
  EXPECT_EQ(t.attempts(1).state(), v1::SUCCEEDED);
  EXPECT_EQ(t.output(), "job");  // one final result: the healthy worker's
  ctx.TryCancel();
  paused->Finish().IgnoreError();
}

TEST_F(HeartbeatTest, ATaskThatHeartbeatsKeepsItsLeaseHoweverLongItRuns) {
  client::WorkerOptions o;
  o.server = address();
  o.name = "steady";
  o.queues = {"default"};
  o.slots = 1;
  o.reconnect = false;
  o.heartbeat_interval = absl::Milliseconds(50);
  client::Worker w(o, [](client::TaskContext& ctx) {
    ctx.WaitCancelled(absl::Milliseconds(1200));  // 4x the heartbeat timeout
    client::TaskOutcome out;
    out.output = "done";
    return out;
  });
  ASSERT_TRUE(w.Start().ok());
  v1::GraphSpec g;
  AddTask(g, "long");
  v1::Graph done = WaitTerminal(Submit(g));
  w.Stop();
  EXPECT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(TaskOf(done, "long").attempts_size(), 1);
}

TEST_F(ForgeTest, ScheduleToStartTimeoutFailsATaskNoWorkerTakes) {
  v1::GraphSpec g;
  v1::TaskSpec* t = AddTask(g, "orphan", {}, "nobody");
  SetMs(t->mutable_timeouts()->mutable_schedule_to_start(), 150);
  AddTask(g, "after", {"orphan"}, "nobody");
  v1::Graph done = WaitTerminal(Submit(g));
  EXPECT_EQ(done.state(), v1::GRAPH_STATE_FAILED);
  EXPECT_EQ(TaskOf(done, "orphan").state(), v1::FAILED);
  EXPECT_EQ(TaskOf(done, "orphan").error().code(), "SCHEDULE_TIMEOUT");
  EXPECT_EQ(TaskOf(done, "orphan").attempt(), 0);
  EXPECT_EQ(TaskOf(done, "after").state(), v1::SKIPPED);
}

TEST_F(ForgeTest, ATaskTakenInTimeIsNotFailedByScheduleToStart) {
  StartWorker({"default"}, 1);
  v1::GraphSpec g;
  v1::TaskSpec* t = AddTask(g, "quick");
  SetMs(t->mutable_timeouts()->mutable_schedule_to_start(), 100);
  const std::string id = Submit(g);
  EXPECT_EQ(WaitTerminal(id).state(), v1::GRAPH_STATE_SUCCEEDED);
}

}  // namespace
}  // namespace forge::testing
