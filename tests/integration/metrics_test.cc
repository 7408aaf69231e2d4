// /metrics over real HTTP while graphs run.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/integration/fixture.h"

namespace forge::testing {
namespace {

// Plain HTTP/1.0 GET on loopback; returns the body.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return "";
  }
  std::string resp;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, n);
  close(fd);
  const size_t body = resp.find("\r\n\r\n");
  return body == std::string::npos ? "" : resp.substr(body + 4);
}

class MetricsTest : public ForgeTest {
 protected:
  void Configure(ServerOptions& o) override { o.metrics_listen = "127.0.0.1:0"; }
};

TEST_F(MetricsTest, ScrapeShowsSubmitsQueuesAndWorkersWithoutIdLabels) {
  ASSERT_GT(server().metrics_port(), 0);
  v1::GraphSpec waiting;
  AddTask(waiting, "x", {}, "nobody");  // no worker serves this queue
  Submit(waiting);
  StartWorker({"default"}, 3);
  WaitTerminal(Submit(Diamond()));

  const std::string body = HttpGet(server().metrics_port(), "/metrics");
  EXPECT_TRUE(absl::StrContains(body, "forge_graphs_submitted_total 2")) << body;
  EXPECT_TRUE(absl::StrContains(body, "forge_tasks_submitted_total 5")) << body;
  EXPECT_TRUE(absl::StrContains(body, "forge_tasks_dispatched_total 4")) << body;
  EXPECT_TRUE(absl::StrContains(body, "forge_queue_depth{queue=\"nobody\"} 1")) << body;
  EXPECT_TRUE(absl::StrContains(body, "forge_workers_connected 1")) << body;
  EXPECT_TRUE(absl::StrContains(body, "forge_worker_slots 3")) << body;
  EXPECT_TRUE(absl::StrContains(body, "# TYPE forge_leases_lost_total counter")) << body;
  // No graph id ever appears as a label value.
  EXPECT_FALSE(absl::StrContains(body, "graph_id")) << body;
}

// The value of one series ("name{labels}" exactly as exposed), or -1.
double Sample(const std::string& body, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (absl::ConsumePrefix(&line, series) && absl::ConsumePrefix(&line, " ")) {
      double v = -1;
      if (absl::SimpleAtod(line, &v)) return v;
    }
  }
  return -1;
}

TEST_F(MetricsTest, StageHistogramsSplitWhereTheTimeGoes) {
  // "slow" runs 300 ms; "after" waits for it (dependency wait) and then
  // runs at once. One slot: "other" on the same queue waits in the queue
  // while "slow" holds it.
  StartWorker({"work"}, 1, [](client::TaskContext& ctx) {
    if (ctx.assignment().task() == "slow") ctx.WaitCancelled(absl::Milliseconds(300));
    return Echo(ctx);
  });
  v1::GraphSpec g;
  AddTask(g, "slow", {}, "work");
  AddTask(g, "after", {"slow"}, "work");
  AddTask(g, "other", {}, "work")->set_priority(-1);  // after "slow"
  const v1::Graph done = WaitTerminal(Submit(g));
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  // The worker reported when it began each attempt.
  for (const v1::Task& t : done.tasks()) {
    ASSERT_EQ(t.attempts_size(), 1);
    EXPECT_TRUE(t.attempts(0).has_picked_up_at()) << t.spec().name();
  }

  const std::string body = HttpGet(server().metrics_port(), "/metrics");
  const std::string q = "{queue=\"work\"}";
  for (const char* stage : {"dependency_wait", "queue_wait", "pickup", "run"}) {
    const std::string name = absl::StrCat("forge_task_", stage, "_seconds");
    EXPECT_EQ(Sample(body, name + "_count" + q), 3) << name << "\n" << body;
    // The +Inf bucket holds every observation.
    EXPECT_EQ(Sample(body, name + "_bucket{queue=\"work\",le=\"+Inf\"}"), 3)
        << name << "\n" << body;
  }
  // Run: slow's 300 ms (plus two no-ops). Dependency wait: "after" waited
  // for slow. Queue wait: "other" waited for the single slot.
  // The worker reports a start at most started_report_delay (1 ms) after it
  // happened (a quicker handler sends it with its result): that much of a
  // run may be counted as pickup, never lost.
  EXPECT_GE(Sample(body, "forge_task_run_seconds_sum" + q), 0.29) << body;
  EXPECT_GE(Sample(body, "forge_task_run_seconds_sum" + q) +
                Sample(body, "forge_task_pickup_seconds_sum" + q),
            0.3)
      << body;
  EXPECT_LT(Sample(body, "forge_task_run_seconds_sum" + q), 5) << body;
  EXPECT_GE(Sample(body, "forge_task_dependency_wait_seconds_sum" + q), 0.3) << body;
  EXPECT_GE(Sample(body, "forge_task_queue_wait_seconds_sum" + q), 0.3) << body;
  // 300 ms is not in a bucket below 250 ms.
  EXPECT_LE(Sample(body, "forge_task_run_seconds_bucket{queue=\"work\",le=\"0.25\"}"), 2)
      << body;
  EXPECT_EQ(Sample(body,
                   "forge_tasks_finished_total{queue=\"work\",outcome=\"succeeded\"}"),
            3) << body;
  EXPECT_EQ(Sample(body, "forge_graphs_finished_total{outcome=\"succeeded\"}"), 1)
      << body;
  EXPECT_EQ(Sample(body,
                   "forge_rpc_requests_total{service=\"forge.v1.Orchestrator\","
                   "method=\"SubmitGraph\",code=\"OK\"}"),
            1) << body;
  EXPECT_GE(Sample(body,
                   "forge_rpc_duration_seconds_count{service=\"forge.v1.Orchestrator\","
                   "method=\"SubmitGraph\"}"),
            1) << body;
}

TEST_F(MetricsTest, OutcomesRetriesAndTimeoutsAreCountedPerQueue) {
  StartWorker({"q"}, 2, [](client::TaskContext& ctx) {
    client::TaskOutcome o;
    if (ctx.assignment().task() == "bad") {
      o.success = false;
      o.error_code = "BOOM";
    } else if (ctx.assignment().task() == "hang") {
      ctx.WaitCancelled(absl::Seconds(30));
    }
    return o;
  });
  v1::GraphSpec g;
  v1::TaskSpec* bad = AddTask(g, "bad", {}, "q");
  bad->mutable_retry()->set_max_attempts(2);
  bad->mutable_retry()->mutable_initial_backoff()->set_nanos(1000000);
  AddTask(g, "skipped", {"bad"}, "q");
  v1::TaskSpec* hang = AddTask(g, "hang", {}, "q");
  hang->mutable_timeouts()->mutable_run()->set_nanos(200000000);
  hang->mutable_retry()->set_max_attempts(1);
  const v1::Graph done = WaitTerminal(Submit(g));
  ASSERT_EQ(done.state(), v1::GRAPH_STATE_FAILED);
  const std::string body = HttpGet(server().metrics_port(), "/metrics");
  EXPECT_EQ(Sample(body, "forge_tasks_finished_total{queue=\"q\",outcome=\"failed\"}"), 2)
      << body;
  EXPECT_EQ(Sample(body, "forge_tasks_finished_total{queue=\"q\",outcome=\"skipped\"}"), 1)
      << body;
  EXPECT_EQ(Sample(body, "forge_task_retries_total{queue=\"q\"}"), 1) << body;
  EXPECT_EQ(Sample(body, "forge_task_timeouts_total{queue=\"q\"}"), 1) << body;
  EXPECT_EQ(Sample(body, "forge_graphs_finished_total{outcome=\"failed\"}"), 1) << body;
  // Three attempts ran to an end (bad twice, hang once).
  EXPECT_EQ(Sample(body, "forge_task_run_seconds_count{queue=\"q\"}"), 3) << body;
}

// Series (non-comment lines) on /metrics.
int SeriesCount(const std::string& body) {
  int n = 0;
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (!line.empty() && line[0] != '#') ++n;
  }
  return n;
}

TEST_F(MetricsTest, SeriesCountDoesNotGrowWithTheWork) {
  StartWorker({"default"}, 256, [](client::TaskContext&) { return client::TaskOutcome(); });
  // Every label value the work below can produce, once.
  const v1::Graph warm = WaitTerminal(Submit(Diamond()));
  ASSERT_EQ(warm.state(), v1::GRAPH_STATE_SUCCEEDED);
  const int before = SeriesCount(HttpGet(server().metrics_port(), "/metrics"));
  ASSERT_GT(before, 50);
  // 100,000 more tasks, in graphs of 10,000.
  std::vector<std::string> ids;
  for (int g = 0; g < 10; ++g) {
    v1::GraphSpec spec;
    for (int i = 0; i < 10000; ++i) AddTask(spec, absl::StrCat("t", i));
    ids.push_back(Submit(spec));
  }
  for (const std::string& id : ids) {
    ASSERT_EQ(WaitTerminal(id).state(), v1::GRAPH_STATE_SUCCEEDED);
  }
  const std::string body = HttpGet(server().metrics_port(), "/metrics");
  EXPECT_EQ(SeriesCount(body), before) << body;
  EXPECT_EQ(Sample(body, "forge_tasks_finished_total{queue=\"default\",outcome=\"succeeded\"}"),
            100004)
      << body;
}

}  // namespace
}  // namespace forge::testing
