// Cancellation, lost workers and Watch, end to end over loopback gRPC.
#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "forge/v1/worker.grpc.pb.h"
#include "tests/integration/fixture.h"

namespace forge::testing {
namespace {

std::chrono::system_clock::time_point In(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

// A handler that signals when it starts and then waits to be cancelled.
// A handler that blocks until its task is cancelled. Its notifications are
// shared with the handler: the worker (stopped in TearDown) may still be
// running it after the test body has returned.
struct Blocker {
  struct State {
    absl::Notification started;
    absl::Notification saw_cancel;
  };
  std::shared_ptr<State> state = std::make_shared<State>();
  absl::Notification& started = state->started;
  absl::Notification& saw_cancel = state->saw_cancel;
  client::Handler handler() {
    return [state = state](client::TaskContext& ctx) {
      state->started.Notify();
      client::TaskOutcome o;
      if (ctx.WaitCancelled(absl::Seconds(60))) {
        state->saw_cancel.Notify();
        o.success = false;
        o.error_code = "CANCELLED";
      }
      return o;
    };
  }
};

TEST_F(ForgeTest, CancellingAGraphStopsItsRunningTaskAndTellsTheWorker) {
  Blocker blocker;
  client::Worker& w = StartWorker({"default"}, 1, blocker.handler());
  v1::GraphSpec g;
  AddTask(g, "long");
  AddTask(g, "after", {"long"});
  AddTask(g, "other");  // READY, waiting for the single slot
  const std::string id = Submit(g);
  ASSERT_TRUE(blocker.started.WaitForNotificationWithTimeout(absl::Seconds(10)));

  grpc::ClientContext ctx;
  v1::CancelGraphRequest req;
  req.set_graph_id(id);
  req.set_reason("user asked");
  v1::CancelGraphResponse resp;
  ASSERT_TRUE(stub().CancelGraph(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.state(), v1::GRAPH_STATE_CANCELLED);

  v1::Graph done = WaitTerminal(id);
  EXPECT_EQ(done.state(), v1::GRAPH_STATE_CANCELLED);
  EXPECT_TRUE(done.cancel_requested());
  for (const v1::Task& t : done.tasks()) EXPECT_EQ(t.state(), v1::CANCELLED) << t.spec().name();
  // The worker is told within a second.
  EXPECT_TRUE(blocker.saw_cancel.WaitForNotificationWithTimeout(absl::Seconds(1)));
  EXPECT_GE(w.stats().cancels_received, 1);

  // Idempotent: cancelling again changes nothing.
  const int64_t last_seq = done.last_seq();
  grpc::ClientContext ctx2;
  ASSERT_TRUE(stub().CancelGraph(&ctx2, req, &resp).ok());
  EXPECT_EQ(resp.state(), v1::GRAPH_STATE_CANCELLED);
  EXPECT_EQ(Get(id).last_seq(), last_seq);
}

TEST_F(ForgeTest, CancellingAPendingTaskSkipsItsDependentsOnly) {
  Blocker blocker;
  StartWorker({"default"}, 2, [&](client::TaskContext& ctx) {
    if (ctx.assignment().task() == "gate") return blocker.handler()(ctx);
    return Echo(ctx);
  });
  v1::GraphSpec g;
  AddTask(g, "gate");
  AddTask(g, "pending", {"gate"});
  AddTask(g, "child", {"pending"});
  AddTask(g, "cleanup", {"pending"})->set_trigger(v1::ALL_DONE);
  AddTask(g, "free");
  const std::string id = Submit(g);
  ASSERT_TRUE(blocker.started.WaitForNotificationWithTimeout(absl::Seconds(10)));

  grpc::ClientContext ctx;
  v1::CancelTaskRequest req;
  req.set_graph_id(id);
  req.set_task("pending");
  v1::CancelTaskResponse resp;
  ASSERT_TRUE(stub().CancelTask(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.state(), v1::CANCELLED);
  // Let the gate finish: cancel it too (it is running).
  grpc::ClientContext ctx2;
  req.set_task("gate");
  ASSERT_TRUE(stub().CancelTask(&ctx2, req, &resp).ok());

  v1::Graph done = WaitTerminal(id);
  EXPECT_EQ(done.state(), v1::GRAPH_STATE_CANCELLED);
  EXPECT_EQ(TaskOf(done, "pending").state(), v1::CANCELLED);
  EXPECT_EQ(TaskOf(done, "child").state(), v1::SKIPPED);
  EXPECT_EQ(TaskOf(done, "cleanup").state(), v1::SUCCEEDED);
  EXPECT_EQ(TaskOf(done, "free").state(), v1::SUCCEEDED);
}

TEST_F(ForgeTest, AWorkerKilledMidTaskLosesItsLeaseAndTheTaskIsRedispatched) {
  // A raw worker stream that takes the task and then drops without a word,
  // as a killed process would.
  auto worker_stub = v1::WorkerService::NewStub(channel_);
  grpc::ClientContext doomed_ctx;
  auto doomed = worker_stub->Connect(&doomed_ctx);
  v1::WorkerMessage hello;
  hello.mutable_hello()->set_name("doomed");
  hello.mutable_hello()->add_queues("default");
  hello.mutable_hello()->set_slots(1);
  ASSERT_TRUE(doomed->Write(hello));
  v1::GraphSpec g;
  AddTask(g, "job");
  const std::string id = Submit(g);
  v1::ServerMessage msg;
  int assigned = 0;
  while (assigned == 0 && doomed->Read(&msg)) assigned += msg.assignments_size();
  ASSERT_EQ(assigned, 1);
  EXPECT_EQ(TaskOf(Get(id), "job").state(), v1::RUNNING);
  StartWorker({"default"}, 1, Echo, "healthy");
  doomed_ctx.TryCancel();  // the stream drops with the task in flight
  doomed->Finish().IgnoreError();

  v1::Graph done = WaitTerminal(id);
  EXPECT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  const v1::Task& t = TaskOf(done, "job");
  ASSERT_EQ(t.attempts_size(), 2);
  EXPECT_EQ(t.attempts(0).state(), v1::FAILED);
  EXPECT_EQ(t.attempts(0).error().code(), "LEASE_LOST");
  EXPECT_EQ(t.attempts(0).worker_id().rfind("doomed", 0), 0u);
  EXPECT_EQ(t.attempts(1).state(), v1::SUCCEEDED);
  EXPECT_EQ(t.attempts(1).worker_id().rfind("healthy", 0), 0u);
}

TEST_F(ForgeTest, WatchStartsWithASnapshotThenStreamsEveryChange) {
  v1::GraphSpec g = Diamond();
  const std::string id = Submit(g);  // no worker yet: a is READY
  grpc::ClientContext ctx;
  ctx.set_deadline(In(absl::Seconds(30)));
  v1::WatchRequest req;
  req.mutable_graph()->set_graph_id(id);
  auto reader = stub().Watch(&ctx, req);
  v1::WatchResponse first;
  ASSERT_TRUE(reader->Read(&first));
  ASSERT_TRUE(first.has_snapshot());
  EXPECT_EQ(first.snapshot().tasks_size(), 4);
  EXPECT_EQ(TaskOf(first.snapshot(), "a").state(), v1::READY);
  int64_t expect = first.snapshot().last_seq() + 1;
  StartWorker({"default"}, 2);
  v1::WatchResponse msg;
  v1::EventType last = v1::EVENT_TYPE_UNSPECIFIED;
  while (reader->Read(&msg)) {
    for (const v1::Event& e : msg.events()) {
      EXPECT_EQ(e.seq(), expect++);
      last = e.type();
    }
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(last, v1::GRAPH_SUCCEEDED);
}

TEST_F(ForgeTest, WatchResumesAfterAnySeqWithNoGapAndNoDuplicate) {
  StartWorker({"default"}, 2);
  const std::string id = Submit(Diamond());
  WaitTerminal(id);
  std::vector<v1::Event> all = Replay(id);
  ASSERT_GT(all.size(), 10u);
  for (size_t k = 1; k < all.size(); ++k) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(30)));
    v1::WatchRequest req;
    req.mutable_graph()->set_graph_id(id);
    req.mutable_graph()->set_after_seq(static_cast<int64_t>(k));
    auto reader = stub().Watch(&ctx, req);
    std::vector<int64_t> seqs;
    v1::WatchResponse msg;
    while (reader->Read(&msg)) {
      EXPECT_FALSE(msg.has_snapshot());
      for (const v1::Event& e : msg.events()) seqs.push_back(e.seq());
    }
    ASSERT_TRUE(reader->Finish().ok());
    ASSERT_EQ(seqs.size(), all.size() - k) << "after_seq=" << k;
    for (size_t i = 0; i < seqs.size(); ++i) EXPECT_EQ(seqs[i], int64_t(k + 1 + i));
  }
}

class SlowWatcherTest : public ForgeTest {
 protected:
  void Configure(ServerOptions& o) override {
    o.bus.max_subscriber_lag = 1000;
    o.watch.max_batch = 64;
    o.watch.stuck_write_grace = absl::Seconds(60);
  }
};

TEST_F(SlowWatcherTest, ASlowWatcherIsCutOffWithItsResumePointAndOthersGetEverything) {
  v1::GraphSpec g;
  for (int i = 0; i < 3000; ++i) AddTask(g, "t" + std::to_string(i));
  const std::string id = Submit(g);

  // The slow watcher's channel has a small flow-control window and never
  // reads until the graph is done.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 4096);
  auto slow_channel = grpc::CreateCustomChannel(
      address(), grpc::InsecureChannelCredentials(), args);
  auto slow_stub = v1::Orchestrator::NewStub(slow_channel);
  grpc::ClientContext slow_ctx;
  slow_ctx.set_deadline(In(absl::Seconds(60)));
  v1::WatchRequest req;
  req.mutable_graph()->set_graph_id(id);
  req.mutable_graph()->set_replay(true);
  auto slow = slow_stub->Watch(&slow_ctx, req);

  StartWorker({"default"}, 4);  // a pace any reading watcher keeps up with
  // Everyone else keeps up: a normal watcher receives every event.
  std::vector<v1::Event> all = Replay(id);
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.back().type(), v1::GRAPH_SUCCEEDED);
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i].seq(), int64_t(i + 1));

  // The slow one now reads what it was sent, then the cut-off status.
  int64_t last = 0;
  v1::WatchResponse msg;
  while (slow->Read(&msg)) {
    for (const v1::Event& e : msg.events()) {
      EXPECT_EQ(e.seq(), last + 1);
      last = e.seq();
    }
  }
  grpc::Status s = slow->Finish();
  ASSERT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_NE(s.error_message().find("resume after_seq=" + std::to_string(last)),
            std::string::npos)
      << s.error_message();
  EXPECT_LT(last, all.back().seq());

  // Resuming from its point continues with no gap to the end.
  grpc::ClientContext ctx;
  ctx.set_deadline(In(absl::Seconds(30)));
  v1::WatchRequest resume;
  resume.mutable_graph()->set_graph_id(id);
  resume.mutable_graph()->set_after_seq(last);
  auto reader = stub().Watch(&ctx, resume);
  while (reader->Read(&msg)) {
    for (const v1::Event& e : msg.events()) ASSERT_EQ(e.seq(), ++last);
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(last, all.back().seq());
}

TEST_F(ForgeTest, GlobalWatchFiltersByLabelAndResumesWithItsToken) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(absl::Seconds(30)));
  v1::WatchRequest req;
  (*req.mutable_all()->mutable_labels())["team"] = "blue";
  auto reader = stub().Watch(&ctx, req);

  StartWorker({"default"}, 2);
  v1::GraphSpec blue = Diamond();
  (*blue.mutable_labels())["team"] = "blue";
  v1::GraphSpec red = Diamond();
  (*red.mutable_labels())["team"] = "red";
  const std::string red_id = Submit(red);
  const std::string blue_id = Submit(blue);
  WaitTerminal(red_id);
  WaitTerminal(blue_id);

  std::vector<v1::Event> seen;
  std::string token_after_third;
  v1::WatchResponse msg;
  while (reader->Read(&msg)) {
    for (const v1::Event& e : msg.events()) {
      EXPECT_EQ(e.graph_id(), blue_id);
      seen.push_back(e);
    }
    if (token_after_third.empty() && seen.size() >= 3) {
      token_after_third = msg.resume_token();
    }
    if (!seen.empty() && seen.back().type() == v1::GRAPH_SUCCEEDED) break;
  }
  ctx.TryCancel();
  reader->Finish();
  ASSERT_FALSE(seen.empty());
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i].seq(), int64_t(i + 1));
  ASSERT_FALSE(token_after_third.empty());

  // Resume from the token (the end of the message that brought the third
  // event): the rest of the blue events, in order, none twice.
  grpc::ClientContext ctx2;
  ctx2.set_deadline(In(absl::Seconds(30)));
  v1::WatchRequest again;
  again.mutable_all()->set_resume_token(token_after_third);
  (*again.mutable_all()->mutable_labels())["team"] = "blue";
  auto r2 = stub().Watch(&ctx2, again);
  std::vector<v1::Event> rest;
  while (r2->Read(&msg)) {
    for (const v1::Event& e : msg.events()) rest.push_back(e);
    if (!rest.empty() && rest.back().type() == v1::GRAPH_SUCCEEDED) break;
  }
  ctx2.TryCancel();
  r2->Finish();
  ASSERT_FALSE(rest.empty());
  const size_t consumed = seen.size() - rest.size();
  EXPECT_GE(consumed, 3u);
  for (size_t i = 0; i < rest.size(); ++i) {
    EXPECT_EQ(rest[i].seq(), seen[consumed + i].seq());
  }
}

}  // namespace
}  // namespace forge::testing

namespace forge::testing {
namespace {

TEST_F(ForgeTest, GracefulShutdownRefusesSubmitsAndLetsRunningTasksFinish) {
  absl::Notification started;
  absl::Notification release;
  StartWorker({"default"}, 1, [&](client::TaskContext& ctx) {
    started.Notify();
    release.WaitForNotificationWithTimeout(absl::Seconds(10));
    return Echo(ctx);
  });
  v1::GraphSpec g;
  AddTask(g, "running");
  AddTask(g, "queued");  // the single slot is busy: never dispatched
  const std::string id = Submit(g);
  ASSERT_TRUE(started.WaitForNotificationWithTimeout(absl::Seconds(10)));

  std::thread stopper([&] { server().Shutdown(absl::Seconds(20)); });
  // Submits are refused with UNAVAILABLE once draining.
  grpc::StatusCode code = grpc::StatusCode::OK;
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (absl::Now() < until) {
    v1::SubmitGraphResponse resp;
    v1::GraphSpec other;
    AddTask(other, "late");
    code = TrySubmit(other, &resp).error_code();
    if (code != grpc::StatusCode::OK) break;
  }
  EXPECT_EQ(code, grpc::StatusCode::UNAVAILABLE);
  // The running attempt still reports and is recorded; nothing new starts.
  release.Notify();
  stopper.join();
  const v1::Graph after = server().engine().GetGraph(id, v1::FULL).value();
  EXPECT_EQ(TaskOf(after, "running").state(), v1::SUCCEEDED);
  EXPECT_EQ(TaskOf(after, "queued").state(), v1::READY);
  EXPECT_EQ(TaskOf(after, "queued").attempt(), 0);
}

}  // namespace
}  // namespace forge::testing
