// /metrics over real HTTP while graphs run.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/match.h"
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

}  // namespace
}  // namespace forge::testing
