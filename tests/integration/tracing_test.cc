// Traces end to end: forged exports OTLP/HTTP JSON to a receiver run by the
// test (a small HTTP server on loopback), two C++ workers export their own
// spans to it, and the span tree of each graph is checked: one trace per
// graph (the caller's, when it sent a traceparent), the graph span, a span
// per attempt with its queue-wait and run parts, the worker's span under
// its attempt, and the submit RPC's span.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/otlp.h"
#include "common/trace_context.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gmock/gmock.h"
#include "tests/integration/fixture.h"

namespace forge::testing {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

// Accepts OTLP/HTTP POSTs (keep-alive, one thread per connection) and keeps
// their bodies.
class OtlpReceiver {
 public:
  OtlpReceiver() {
    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(listen_fd_, 16);
    socklen_t len = sizeof(addr);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }
  ~OtlpReceiver() {
    shutdown(listen_fd_, SHUT_RDWR);
    close(listen_fd_);
    accept_thread_.join();
    absl::MutexLock lock(&mu_);
    for (int fd : conns_) shutdown(fd, SHUT_RDWR);
    mu_.Await(absl::Condition(
        +[](int* live) { return *live == 0; }, &live_));
  }
  std::string endpoint() const { return absl::StrCat("http://127.0.0.1:", port_); }

  std::vector<std::pair<std::string, std::string>> requests() const {
    absl::MutexLock lock(&mu_);
    return requests_;  // (path, body)
  }

 private:
  void AcceptLoop() {
    while (true) {
      const int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) return;
      absl::MutexLock lock(&mu_);
      conns_.insert(fd);
      ++live_;
      std::thread([this, fd] { Serve(fd); }).detach();
    }
  }
  void Serve(int fd) {
    std::string buf;
    char chunk[65536];
    while (true) {
      size_t header_end;
      while ((header_end = buf.find("\r\n\r\n")) == std::string::npos) {
        const ssize_t n = read(fd, chunk, sizeof chunk);
        if (n <= 0) return Done(fd);
        buf.append(chunk, n);
      }
      const std::string head = buf.substr(0, header_end);
      size_t length = 0;
      for (absl::string_view line : absl::StrSplit(head, "\r\n")) {
        if (absl::StartsWithIgnoreCase(line, "content-length:")) {
          if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(15)), &length)) length = 0;
        }
      }
      while (buf.size() < header_end + 4 + length) {
        const ssize_t n = read(fd, chunk, sizeof chunk);
        if (n <= 0) return Done(fd);
        buf.append(chunk, n);
      }
      const std::string path = head.substr(head.find(' ') + 1,
                                           head.find(' ', head.find(' ') + 1) -
                                               head.find(' ') - 1);
      {
        absl::MutexLock lock(&mu_);
        requests_.emplace_back(path, buf.substr(header_end + 4, length));
      }
      buf.erase(0, header_end + 4 + length);
      const std::string resp =
          "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
          "Content-Length: 2\r\n\r\n{}";
      if (write(fd, resp.data(), resp.size()) != static_cast<ssize_t>(resp.size())) {
        return Done(fd);
      }
    }
  }
  void Done(int fd) {
    close(fd);
    absl::MutexLock lock(&mu_);
    conns_.erase(fd);
    --live_;
  }

  int listen_fd_ = -1;
  int port_ = 0;
  std::thread accept_thread_;
  mutable absl::Mutex mu_;
  std::set<int> conns_ ABSL_GUARDED_BY(mu_);
  int live_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::pair<std::string, std::string>> requests_ ABSL_GUARDED_BY(mu_);
};

struct SpanView {
  std::string trace_id, span_id, parent, name, service;
  std::map<std::string, std::string> attrs;  // string and int values as text
  int status = 0;
};

std::vector<SpanView> ParseSpans(const std::vector<std::pair<std::string, std::string>>& reqs) {
  std::vector<SpanView> out;
  for (const auto& [path, body] : reqs) {
    EXPECT_EQ(path, "/v1/traces");
    Struct root;
    const auto s = google::protobuf::util::JsonStringToMessage(body, &root);
    EXPECT_TRUE(s.ok()) << s.ToString() << "\n" << body;
    for (const Value& rs : root.fields().at("resourceSpans").list_value().values()) {
      std::string service;
      for (const Value& a : rs.struct_value().fields().at("resource").struct_value()
                                .fields().at("attributes").list_value().values()) {
        const auto& f = a.struct_value().fields();
        if (f.at("key").string_value() == "service.name") {
          service = f.at("value").struct_value().fields().at("stringValue").string_value();
        }
      }
      for (const Value& ss : rs.struct_value().fields().at("scopeSpans").list_value().values()) {
        for (const Value& sp : ss.struct_value().fields().at("spans").list_value().values()) {
          const auto& f = sp.struct_value().fields();
          SpanView v;
          v.service = service;
          v.trace_id = f.at("traceId").string_value();
          v.span_id = f.at("spanId").string_value();
          if (f.contains("parentSpanId")) v.parent = f.at("parentSpanId").string_value();
          v.name = f.at("name").string_value();
          v.status = static_cast<int>(
              f.at("status").struct_value().fields().at("code").number_value());
          EXPECT_TRUE(f.contains("startTimeUnixNano") && f.contains("endTimeUnixNano"));
          for (const Value& a : f.at("attributes").list_value().values()) {
            const auto& af = a.struct_value().fields();
            const auto& val = af.at("value").struct_value().fields();
            std::string text;
            if (val.contains("stringValue")) text = val.at("stringValue").string_value();
            if (val.contains("intValue")) text = val.at("intValue").string_value();
            v.attrs[af.at("key").string_value()] = text;
          }
          out.push_back(std::move(v));
        }
      }
    }
  }
  return out;
}

class TracingTest : public ForgeTest {
 protected:
  void Configure(ServerOptions& o) override { o.otlp_endpoint = receiver_.endpoint(); }
  void ConfigureWorker(client::WorkerOptions& o) override {
    o.otlp_endpoint = receiver_.endpoint();
  }
  OtlpReceiver receiver_;  // constructed before the server (SetUp)
};

TEST_F(TracingTest, OneTracePerGraphWithAttemptWorkerAndSubmitSpans) {
  StartWorker({"default"}, 2, nullptr, "alpha");
  StartWorker({"default"}, 2, nullptr, "beta");
  const std::string caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
  const std::string caller_span = "00f067aa0ba902b7";

  v1::SubmitGraphRequest req;
  *req.mutable_graph() = Diamond();
  grpc::ClientContext ctx;
  ctx.AddMetadata("traceparent", absl::StrCat("00-", caller_trace, "-", caller_span, "-01"));
  v1::SubmitGraphResponse resp;
  ASSERT_TRUE(stub().SubmitGraph(&ctx, req, &resp).ok());
  const std::string traced = resp.graph_id();
  const std::string untraced = Submit(Diamond());  // starts its own trace
  ASSERT_EQ(WaitTerminal(traced).state(), v1::GRAPH_STATE_SUCCEEDED);
  ASSERT_EQ(WaitTerminal(untraced).state(), v1::GRAPH_STATE_SUCCEEDED);

  // Workers flush their spans when they stop; the server on demand.
  for (auto& w : workers_) w->Stop();
  server().spans()->Flush();
  const std::vector<SpanView> spans = ParseSpans(receiver_.requests());

  for (const std::string& graph : {traced, untraced}) {
    SCOPED_TRACE(graph);
    std::vector<const SpanView*> mine;
    for (const SpanView& s : spans) {
      auto it = s.attrs.find("forge.graph.id");
      if (it != s.attrs.end() && it->second == graph) mine.push_back(&s);
    }
    ASSERT_FALSE(mine.empty());
    const std::string trace = mine.front()->trace_id;
    if (graph == traced) {
      EXPECT_EQ(trace, caller_trace);
    } else {
      EXPECT_NE(trace, caller_trace);
    }
    std::map<std::string, const SpanView*> by_id;
    for (const SpanView* s : mine) {
      EXPECT_EQ(s->trace_id, trace) << s->name;  // one trace per graph
      by_id[s->span_id] = s;
    }
    // The graph span: a root (or the caller's child).
    const SpanView* graph_span = nullptr;
    for (const SpanView* s : mine) {
      if (s->name == "forge.graph") {
        EXPECT_EQ(graph_span, nullptr) << "two graph spans";
        graph_span = s;
      }
    }
    ASSERT_NE(graph_span, nullptr);
    EXPECT_EQ(graph_span->parent, graph == traced ? caller_span : "");
    EXPECT_EQ(graph_span->service, "forged");
    EXPECT_EQ(graph_span->attrs.at("forge.graph.state"), "GRAPH_STATE_SUCCEEDED");
    EXPECT_EQ(graph_span->status, 1);
    // The submit RPC's span.
    int submits = 0;
    for (const SpanView* s : mine) {
      if (s->name != "forge.v1.Orchestrator/SubmitGraph") continue;
      ++submits;
      EXPECT_EQ(s->parent, graph == traced ? caller_span : "");
      EXPECT_EQ(s->attrs.at("rpc.system"), "grpc");
      EXPECT_EQ(s->attrs.at("rpc.method"), "SubmitGraph");
    }
    EXPECT_EQ(submits, 1);
    // One attempt span per task, under the graph span, each with its queue
    // wait and run parts and the worker's own span.
    std::set<std::string> tasks;
    std::set<std::string> workers;
    for (const SpanView* s : mine) {
      if (s->name != "forge.task") continue;
      tasks.insert(s->attrs.at("forge.task.name"));
      EXPECT_EQ(s->parent, graph_span->span_id);
      EXPECT_EQ(s->attrs.at("forge.task.attempt"), "1");
      EXPECT_EQ(s->attrs.at("forge.task.outcome"), "SUCCEEDED");
      std::multiset<std::string> children;
      for (const SpanView* c : mine) {
        if (c->parent == s->span_id) {
          children.insert(c->name);
          if (c->name == "forge.worker.handle") {
            EXPECT_THAT(c->service, ::testing::StartsWith("forge-worker:"));
            EXPECT_EQ(c->attrs.at("forge.task.name"), s->attrs.at("forge.task.name"));
            workers.insert(c->service);
          }
        }
      }
      EXPECT_EQ(children, (std::multiset<std::string>{
                              "forge.task.queue_wait", "forge.task.run",
                              "forge.worker.handle"}))
          << s->attrs.at("forge.task.name");
    }
    EXPECT_EQ(tasks, (std::set<std::string>{"a", "b", "c", "d"}));
    // Every parent is in the trace, except the caller's span.
    for (const SpanView* s : mine) {
      if (s->parent.empty() || s->parent == caller_span) continue;
      EXPECT_TRUE(by_id.count(s->parent) == 1) << s->name << " has a dangling parent";
    }
  }
  const otlp::ExporterStats st = server().spans()->stats();
  EXPECT_EQ(st.dropped, 0u);
  EXPECT_EQ(st.failed, 0u);
  EXPECT_GT(st.exported, 0u);
}

TEST_F(TracingTest, AWorkerHandlerSeesItsOwnSpanAsTraceparent) {
  std::string seen;
  absl::Mutex mu;
  StartWorker({"default"}, 1, [&](client::TaskContext& ctx) {
    absl::MutexLock lock(&mu);
    seen = ctx.traceparent();
    return Echo(ctx);
  });
  v1::GraphSpec g;
  AddTask(g, "only");
  const std::string id = Submit(g);
  WaitTerminal(id);
  std::optional<TraceContext> mine;
  {
    absl::MutexLock lock(&mu);
    mine = ParseTraceparent(seen);
  }
  ASSERT_TRUE(mine.has_value()) << seen;
  EXPECT_EQ(mine->trace_id, GraphTraceId(id));
  // A child of the attempt span, not the attempt span itself.
  EXPECT_NE(mine->span_id, AttemptSpanId(id, 0, 1));
}

TEST_F(TracingTest, ANotSampledTraceExportsNothingAndTellsTheWorker) {
  std::vector<std::string> seen;
  absl::Mutex mu;
  StartWorker({"default"}, 2, [&](client::TaskContext& ctx) {
    absl::MutexLock lock(&mu);
    seen.push_back(ctx.traceparent());
    return Echo(ctx);
  });
  const std::string caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
  v1::SubmitGraphRequest req;
  *req.mutable_graph() = Diamond();
  grpc::ClientContext ctx;
  ctx.AddMetadata("traceparent", absl::StrCat("00-", caller_trace, "-00f067aa0ba902b7-00"));
  v1::SubmitGraphResponse resp;
  ASSERT_TRUE(stub().SubmitGraph(&ctx, req, &resp).ok());
  const std::string quiet = resp.graph_id();
  ASSERT_EQ(WaitTerminal(quiet).state(), v1::GRAPH_STATE_SUCCEEDED);
  {
    absl::MutexLock lock(&mu);
    ASSERT_EQ(seen.size(), 4u);
    for (const std::string& tp : seen) {
      std::optional<TraceContext> t = ParseTraceparent(tp);
      ASSERT_TRUE(t.has_value()) << tp;
      EXPECT_EQ(t->trace_id, caller_trace);
      EXPECT_FALSE(t->sampled) << tp;
    }
  }
  const std::string loud = Submit(Diamond());  // sampled: the exporter works
  ASSERT_EQ(WaitTerminal(loud).state(), v1::GRAPH_STATE_SUCCEEDED);
  for (auto& w : workers_) w->Stop();
  server().spans()->Flush();
  int quiet_spans = 0, loud_spans = 0;
  for (const SpanView& s : ParseSpans(receiver_.requests())) {
    auto it = s.attrs.find("forge.graph.id");
    const std::string graph = it == s.attrs.end() ? "" : it->second;
    quiet_spans += s.trace_id == caller_trace || graph == quiet;
    loud_spans += graph == loud;
  }
  EXPECT_EQ(quiet_spans, 0);
  EXPECT_GT(loud_spans, 0);
}

}  // namespace
}  // namespace forge::testing
