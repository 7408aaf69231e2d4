// End-to-end runs of graphs on real workers over loopback gRPC.
#include <map>
#include <set>

#include "tests/integration/fixture.h"

namespace forge::testing {
namespace {

TEST_F(ForgeTest, DiamondSucceedsAndEventsFollowDependencyOrder) {
  StartWorker({"default"}, 2);
  StartWorker({"default"}, 2);
  const std::string id = Submit(Diamond());
  v1::Graph g = WaitTerminal(id);
  EXPECT_EQ(g.state(), v1::GRAPH_STATE_SUCCEEDED);
  for (const v1::Task& t : g.tasks()) {
    EXPECT_EQ(t.state(), v1::SUCCEEDED) << t.spec().name();
    EXPECT_EQ(t.attempt(), 1);
  }
  std::vector<v1::Event> events = Replay(id);
  ASSERT_FALSE(events.empty());
  // Dense sequence from 1.
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].seq(), int64_t(i + 1));
  EXPECT_EQ(events.front().type(), v1::GRAPH_SUBMITTED);
  EXPECT_EQ(events.back().type(), v1::GRAPH_SUCCEEDED);
  // Every task: READY < STARTED < SUCCEEDED, and a task is READY only after
  // each dependency SUCCEEDED.
  std::map<std::string, std::map<v1::EventType, int64_t>> at;
  for (const v1::Event& e : events) {
    if (!e.task().empty()) at[e.task()][e.type()] = e.seq();
  }
  for (const std::string t : {"a", "b", "c", "d"}) {
    ASSERT_TRUE(at[t].count(v1::TASK_READY)) << t;
    ASSERT_TRUE(at[t].count(v1::TASK_STARTED)) << t;
    ASSERT_TRUE(at[t].count(v1::TASK_SUCCEEDED)) << t;
    EXPECT_LT(at[t][v1::TASK_READY], at[t][v1::TASK_STARTED]);
    EXPECT_LT(at[t][v1::TASK_STARTED], at[t][v1::TASK_SUCCEEDED]);
  }
  EXPECT_GT(at["b"][v1::TASK_READY], at["a"][v1::TASK_SUCCEEDED]);
  EXPECT_GT(at["c"][v1::TASK_READY], at["a"][v1::TASK_SUCCEEDED]);
  EXPECT_GT(at["d"][v1::TASK_READY], at["b"][v1::TASK_SUCCEEDED]);
  EXPECT_GT(at["d"][v1::TASK_READY], at["c"][v1::TASK_SUCCEEDED]);
}

TEST_F(ForgeTest, AssignmentCarriesUpstreamOutputs) {
  absl::Mutex mu;
  std::map<std::string, std::string> seen;  // upstream outputs seen by d
  StartWorker({"default"}, 2, [&](client::TaskContext& ctx) {
    const auto& a = ctx.assignment();
    if (a.task() == "d") {
      absl::MutexLock lock(&mu);
      for (const auto& [k, v] : a.upstream_outputs()) seen[k] = v;
    }
    client::TaskOutcome o;
    o.output = "out-" + a.task();
    return o;
  });
  const std::string id = Submit(Diamond());
  EXPECT_EQ(WaitTerminal(id).state(), v1::GRAPH_STATE_SUCCEEDED);
  absl::MutexLock lock(&mu);
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen["b"], "out-b");
  EXPECT_EQ(seen["c"], "out-c");
  EXPECT_EQ(TaskOf(Get(id), "d").output(), "out-d");
  int carried = 0;
  for (const v1::Event& e : Replay(id)) {
    if (e.type() == v1::TASK_SUCCEEDED) {
      EXPECT_EQ(e.data(), "out-" + e.task());  // small outputs ride the event
      ++carried;
    }
  }
  EXPECT_EQ(carried, 4);
}

TEST_F(ForgeTest, TenThousandTaskDagSucceeds) {
  StartWorker({"default"}, 64);
  StartWorker({"default"}, 64);
  v1::GraphSpec g;
  g.set_name("big");
  // 100 layers of 100 tasks; each task depends on up to 3 of the layer above.
  for (int layer = 0; layer < 100; ++layer) {
    for (int k = 0; k < 100; ++k) {
      std::vector<std::string> deps;
      if (layer > 0) {
        for (int j : {k, (k * 7 + 3) % 100, (k * 13 + 5) % 100}) {
          std::string d = "t" + std::to_string(layer - 1) + "_" + std::to_string(j);
          if (std::find(deps.begin(), deps.end(), d) == deps.end()) deps.push_back(d);
        }
      }
      AddTask(g, "t" + std::to_string(layer) + "_" + std::to_string(k), deps);
    }
  }
  const std::string id = Submit(g);
  v1::Graph done = WaitTerminal(id);
  EXPECT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(done.counts().succeeded(), 10000);
}

TEST_F(ForgeTest, CompensationRunsOnFailureAndCleanupAlwaysRuns) {
  StartWorker({"default"}, 4);
  v1::GraphSpec g;
  AddTask(g, "reserve");
  v1::TaskSpec* pay = AddTask(g, "pay", {"reserve"});
  (*pay->mutable_params())["fail"] = "true";
  (*pay->mutable_params())["retryable"] = "false";
  AddTask(g, "ship", {"pay"});
  AddTask(g, "refund", {"pay"})->set_trigger(v1::ONE_FAILED);
  AddTask(g, "cleanup", {"ship", "refund"})->set_trigger(v1::ALL_DONE);
  AddTask(g, "audit", {"reserve"})->set_trigger(v1::ONE_FAILED);
  v1::Graph done = WaitTerminal(Submit(g));
  EXPECT_EQ(done.state(), v1::GRAPH_STATE_FAILED);
  EXPECT_EQ(TaskOf(done, "reserve").state(), v1::SUCCEEDED);
  EXPECT_EQ(TaskOf(done, "pay").state(), v1::FAILED);
  EXPECT_EQ(TaskOf(done, "pay").attempt(), 1);  // not retryable
  EXPECT_EQ(TaskOf(done, "pay").error().code(), "INJECTED");
  EXPECT_EQ(TaskOf(done, "ship").state(), v1::SKIPPED);
  EXPECT_EQ(TaskOf(done, "refund").state(), v1::SUCCEEDED);
  EXPECT_EQ(TaskOf(done, "cleanup").state(), v1::SUCCEEDED);
  EXPECT_EQ(TaskOf(done, "audit").state(), v1::SKIPPED);  // nothing failed upstream
}

TEST_F(ForgeTest, RetryableFailureIsRetriedUpToMaxAttempts) {
  StartWorker({"default"}, 1);
  v1::GraphSpec g;
  v1::TaskSpec* t = AddTask(g, "flaky");
  (*t->mutable_params())["fail"] = "true";
  t->mutable_retry()->set_max_attempts(3);
  v1::Graph done = WaitTerminal(Submit(g));
  EXPECT_EQ(done.state(), v1::GRAPH_STATE_FAILED);
  const v1::Task& task = TaskOf(done, "flaky");
  EXPECT_EQ(task.attempt(), 3);
  ASSERT_EQ(task.attempts_size(), 3);
  for (const v1::Attempt& a : task.attempts()) {
    EXPECT_EQ(a.state(), v1::FAILED);
    EXPECT_EQ(a.error().code(), "INJECTED");
  }
  int retries = 0;
  for (const v1::Event& e : Replay(done.id())) {
    if (e.type() == v1::TASK_RETRY_SCHEDULED) {
      ++retries;
      EXPECT_TRUE(e.has_retry_at());
    }
  }
  EXPECT_EQ(retries, 2);
}

TEST_F(ForgeTest, FailFastCancelsWhatHasNotStartedButCleanupRuns) {
  StartWorker({"default"}, 1);
  v1::GraphSpec g;
  g.set_fail_fast(true);
  v1::TaskSpec* bad = AddTask(g, "bad");
  (*bad->mutable_params())["fail"] = "true";
  (*bad->mutable_params())["retryable"] = "false";
  bad->set_priority(10);  // runs first on the single slot
  AddTask(g, "later1");
  AddTask(g, "later2", {"later1"});
  AddTask(g, "cleanup", {"later2"})->set_trigger(v1::ALL_DONE);
  v1::Graph done = WaitTerminal(Submit(g));
  EXPECT_EQ(done.state(), v1::GRAPH_STATE_FAILED);
  EXPECT_EQ(TaskOf(done, "bad").state(), v1::FAILED);
  EXPECT_EQ(TaskOf(done, "later1").state(), v1::CANCELLED);
  EXPECT_EQ(TaskOf(done, "later2").state(), v1::CANCELLED);
  EXPECT_EQ(TaskOf(done, "cleanup").state(), v1::SUCCEEDED);
}

TEST_F(ForgeTest, PriorityThenFifoWithinAQueue) {
  absl::Mutex mu;
  std::vector<std::string> order;
  v1::GraphSpec g;
  AddTask(g, "low1")->set_priority(1);
  AddTask(g, "high1")->set_priority(5);
  AddTask(g, "low2")->set_priority(1);
  AddTask(g, "high2")->set_priority(5);
  AddTask(g, "mid")->set_priority(3);
  const std::string id = Submit(g);  // all READY before any worker exists
  StartWorker({"default"}, 1, [&](client::TaskContext& ctx) {
    absl::MutexLock lock(&mu);
    order.push_back(ctx.assignment().task());
    return Echo(ctx);
  });
  EXPECT_EQ(WaitTerminal(id).state(), v1::GRAPH_STATE_SUCCEEDED);
  absl::MutexLock lock(&mu);
  EXPECT_EQ(order, (std::vector<std::string>{"high1", "high2", "mid", "low1", "low2"}));
}

TEST_F(ForgeTest, TasksOnlyGoToWorkersOfTheirQueue) {
  absl::Mutex mu;
  std::map<std::string, std::set<std::string>> by_worker;
  auto record = [&](const std::string& who) {
    return [&, who](client::TaskContext& ctx) {
      absl::MutexLock lock(&mu);
      by_worker[who].insert(ctx.assignment().queue());
      return Echo(ctx);
    };
  };
  StartWorker({"gpu"}, 2, record("gpu-worker"));
  StartWorker({"cpu"}, 2, record("cpu-worker"));
  v1::GraphSpec g;
  for (int i = 0; i < 10; ++i) {
    AddTask(g, "g" + std::to_string(i), {}, "gpu");
    AddTask(g, "c" + std::to_string(i), {}, "cpu");
  }
  EXPECT_EQ(WaitTerminal(Submit(g)).state(), v1::GRAPH_STATE_SUCCEEDED);
  absl::MutexLock lock(&mu);
  EXPECT_EQ(by_worker["gpu-worker"], std::set<std::string>{"gpu"});
  EXPECT_EQ(by_worker["cpu-worker"], std::set<std::string>{"cpu"});
}

}  // namespace
}  // namespace forge::testing

namespace forge::testing {
namespace {

TEST_F(ForgeTest, QueueConcurrencyLimitHoldsAcrossWorkers) {
  server().engine().scheduler().Configure("serial", sched::QueueConfig{1});
  absl::Mutex mu;
  int running = 0, peak = 0, done = 0;
  auto handler = [&](client::TaskContext& ctx) {
    {
      absl::MutexLock lock(&mu);
      peak = std::max(peak, ++running);
    }
    ctx.WaitCancelled(absl::Milliseconds(5));  // hold the slot a little
    absl::MutexLock lock(&mu);
    --running;
    ++done;
    return Echo(ctx);
  };
  StartWorker({"serial"}, 4, handler);
  StartWorker({"serial"}, 4, handler);
  v1::GraphSpec g;
  for (int i = 0; i < 12; ++i) AddTask(g, "s" + std::to_string(i), {}, "serial");
  EXPECT_EQ(WaitTerminal(Submit(g)).state(), v1::GRAPH_STATE_SUCCEEDED);
  absl::MutexLock lock(&mu);
  EXPECT_EQ(done, 12);
  EXPECT_EQ(peak, 1);
}

}  // namespace
}  // namespace forge::testing
