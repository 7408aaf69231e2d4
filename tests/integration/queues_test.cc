// Queue ordering modes and limits, end to end, and the server config file.
#include <map>

#include "absl/strings/match.h"
#include "server/server_config.h"
#include "tests/integration/fixture.h"

namespace forge::testing {
namespace {

class PerKeyTest : public ForgeTest {
 protected:
  void Configure(ServerOptions& o) override {
    ASSERT_TRUE(ParseServerConfig(R"(
queues:
  agents:
    ordering: per_key
    per_key_concurrency: 1
)", &o).ok());
  }
};

TEST_F(PerKeyTest, EachKeysTasksRunOneAtATimeInSubmissionOrderAndKeysInParallel) {
  absl::Mutex mu;
  std::map<std::string, int> running_by_key;
  std::map<std::string, std::vector<std::string>> started_by_key;
  int running = 0, peak = 0, peak_same_key = 0;
  StartWorker({"agents"}, 5, [&](client::TaskContext& ctx) {
    const std::string key = ctx.assignment().params().at("agent");
    {
      absl::MutexLock lock(&mu);
      started_by_key[key].push_back(ctx.assignment().task());
      peak_same_key = std::max(peak_same_key, ++running_by_key[key]);
      peak = std::max(peak, ++running);
    }
    ctx.WaitCancelled(absl::Milliseconds(20));
    absl::MutexLock lock(&mu);
    --running_by_key[key];
    --running;
    return Echo(ctx);
  });
  v1::GraphSpec g;
  std::map<std::string, std::vector<std::string>> submitted;
  for (int i = 0; i < 15; ++i) {
    const std::string agent = std::vector<std::string>{"claude", "gemini", "cursor"}[i % 3];
    const std::string name = agent + "-" + std::to_string(i);
    v1::TaskSpec* t = AddTask(g, name, {}, "agents");
    t->set_ordering_key(agent);
    (*t->mutable_params())["agent"] = agent;
    t->set_priority(i % 2);  // priorities do not reorder a key's tasks
    submitted[agent].push_back(name);
  }
  EXPECT_EQ(WaitTerminal(Submit(g)).state(), v1::GRAPH_STATE_SUCCEEDED);
  absl::MutexLock lock(&mu);
  EXPECT_EQ(peak_same_key, 1);
  EXPECT_GE(peak, 2);  // different keys ran in parallel
  EXPECT_EQ(started_by_key, submitted);
}

class CrossQueueTest : public ForgeTest {
 protected:
  void Configure(ServerOptions& o) override {
    ASSERT_TRUE(ParseServerConfig(R"(
queues:
  claude: {concurrency: 1}
  gemini: {concurrency: 1}
)", &o).ok());
  }
};

// The seeds' deadlock: tasks whose dependencies need the same per-type limit,
// and circular waits across agent types. A task never holds a slot while it
// waits for its dependencies, so this completes.
TEST_F(CrossQueueTest, SeedsSemaphoreDeadlockScenarioCompletes) {
  StartWorker({"claude", "gemini"}, 4);
  v1::GraphSpec g;
  AddTask(g, "c1", {}, "claude");
  AddTask(g, "g1", {}, "gemini");
  AddTask(g, "c2", {"g1"}, "claude");       // claude waits for gemini
  AddTask(g, "g2", {"c1"}, "gemini");       // gemini waits for claude
  AddTask(g, "c3", {"c1", "c2", "g2"}, "claude");  // same-type dependencies
  AddTask(g, "g3", {"g1", "g2", "c2"}, "gemini");
  AddTask(g, "c4", {"g3"}, "claude");
  AddTask(g, "g4", {"c3"}, "gemini");
  AddTask(g, "join", {"c4", "g4"}, "claude");
  v1::Graph done = WaitTerminal(Submit(g));
  EXPECT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(done.counts().succeeded(), 9);
}

TEST(ServerConfigTest, QueuesAndDefaultsAreRead) {
  ServerOptions o;
  ASSERT_TRUE(ParseServerConfig(R"(
default_queue: {concurrency: 8}
queues:
  agents: {ordering: per_key, per_key_concurrency: 2}
  serial: {ordering: strict}
)", &o).ok());
  EXPECT_EQ(o.engine.default_queue.concurrency, 8);
  EXPECT_EQ(o.queues["agents"].mode, sched::OrderingMode::kPerKey);
  EXPECT_EQ(o.queues["agents"].per_key_concurrency, 2);
  EXPECT_EQ(o.queues["agents"].concurrency, 8);  // inherits the default
  EXPECT_EQ(o.queues["serial"].mode, sched::OrderingMode::kStrict);
}

TEST(ServerConfigTest, BadValuesNameTheKeyAndLine) {
  ServerOptions o;
  absl::Status s = ParseServerConfig("queues:\n  q: {ordering: fifo}\n", &o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "queues.q.ordering (line 2)")) << s;
  s = ParseServerConfig("queues:\n  q: {concurency: 3}\n", &o);
  EXPECT_TRUE(absl::StrContains(s.message(), "queues.q.concurency")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "unknown key")) << s;
  s = ParseServerConfig("queues:\n  q: {concurrency: -1}\n", &o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = ParseServerConfig("queues: [1, 2\n", &o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadServerConfig("/nonexistent/forge.yaml", &o).code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace forge::testing

namespace forge::testing {
namespace {

TEST_F(PerKeyTest, ListQueuesAndListWorkersShowTheScheduler) {
  StartWorker({"agents", "default"}, 3, Echo, "lister");
  v1::GraphSpec g;
  AddTask(g, "stuck", {}, "nobody");
  Submit(g);
  grpc::ClientContext c1;
  v1::ListQueuesResponse queues;
  ASSERT_TRUE(stub().ListQueues(&c1, v1::ListQueuesRequest(), &queues).ok());
  std::map<std::string, v1::QueueInfo> by_name;
  for (const v1::QueueInfo& q : queues.queues()) by_name[q.name()] = q;
  EXPECT_EQ(by_name["agents"].ordering(), "per_key");
  EXPECT_EQ(by_name["agents"].per_key_concurrency(), 1);
  EXPECT_EQ(by_name["agents"].workers(), 1);
  EXPECT_EQ(by_name["nobody"].depth(), 1);
  EXPECT_EQ(by_name["nobody"].workers(), 0);
  grpc::ClientContext c2;
  v1::ListWorkersResponse workers;
  ASSERT_TRUE(stub().ListWorkers(&c2, v1::ListWorkersRequest(), &workers).ok());
  ASSERT_EQ(workers.workers_size(), 1);
  EXPECT_EQ(workers.workers(0).worker_id().rfind("lister", 0), 0u);
  EXPECT_EQ(workers.workers(0).slots(), 3);
  EXPECT_EQ(workers.workers(0).queues_size(), 2);
}

TEST_F(ForgeTest, ACheckpointIsHandedToTheNextAttempt) {
  absl::Mutex mu;
  std::vector<std::string> seen;  // checkpoint received by each attempt
  StartWorker({"default"}, 1, [&](client::TaskContext& ctx) {
    const v1::Assignment& a = ctx.assignment();
    {
      absl::MutexLock lock(&mu);
      seen.push_back(a.checkpoint());
    }
    client::TaskOutcome o;
    if (a.lease().attempt() == 1) {
      ctx.Checkpoint("resume-at-7");
      ctx.ReportProgress(7, 10, "halfway");
      o.success = false;
      o.error_code = "CRASHED";
      return o;
    }
    o.output = "resumed from " + a.checkpoint();
    return o;
  });
  v1::GraphSpec g;
  AddTask(g, "job");
  v1::Graph done = WaitTerminal(Submit(g));
  EXPECT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(TaskOf(done, "job").output(), "resumed from resume-at-7");
  absl::MutexLock lock(&mu);
  EXPECT_EQ(seen, (std::vector<std::string>{"", "resume-at-7"}));
}

}  // namespace
}  // namespace forge::testing
