#include "tests/integration/fixture.h"

#include <unistd.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace forge::testing {

namespace {
std::chrono::system_clock::time_point In(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}
}  // namespace

ScopedTempDir::ScopedTempDir(const std::string& prefix) {
  static std::atomic<int> counter{0};
  path_ = std::filesystem::temp_directory_path() /
          absl::StrCat(prefix, "-", ::getpid(), "-", counter.fetch_add(1));
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

ScopedTempDir::~ScopedTempDir() {
  std::error_code ec;  // best effort: a leftover is only disk
  std::filesystem::remove_all(path_, ec);
}

void ForgeTest::StartServer() {
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.engine.store.defaults.initial_backoff = absl::Milliseconds(10);
  options.engine.store.defaults.max_backoff = absl::Milliseconds(50);
  Configure(options);
  absl::StatusOr<std::unique_ptr<ForgeServer>> s = ForgeServer::Start(options);
  ASSERT_TRUE(s.ok()) << s.status();
  server_ = *std::move(s);
  channel_ = grpc::CreateChannel(server_->address(),
                                 grpc::InsecureChannelCredentials());
  stub_ = v1::Orchestrator::NewStub(channel_);
}

void ForgeTest::TearDown() {
  for (auto& w : workers_) w->Stop();
  workers_.clear();
  stub_.reset();
  channel_.reset();
  server_.reset();
}

client::TaskOutcome Echo(client::TaskContext& ctx) {
  client::TaskOutcome out;
  const v1::Assignment& a = ctx.assignment();
  if (a.params().count("fail") && a.params().at("fail") == "true") {
    out.success = false;
    out.error_code = "INJECTED";
    out.error_message = "asked to fail";
    out.retryable = a.params().count("retryable") == 0 ||
                    a.params().at("retryable") != "false";
    return out;
  }
  out.output = a.input().empty() ? a.task() : a.input();
  return out;
}

client::Worker& ForgeTest::StartWorker(std::vector<std::string> queues,
                                       int slots, client::Handler h,
                                       const std::string& name) {
  client::WorkerOptions o;
  o.server = address();
  o.name = name;
  o.queues = std::move(queues);
  o.slots = slots;
  o.reconnect = false;
  ConfigureWorker(o);
  auto w = std::make_unique<client::Worker>(o, h ? std::move(h) : client::Handler(Echo));
  absl::Status s = w->Start();
  EXPECT_TRUE(s.ok()) << s;
  // Welcomed once the server knows its executor.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (w->worker_id().empty() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));  // test-side wait for the welcome
  }
  EXPECT_FALSE(w->worker_id().empty()) << "worker not welcomed";
  workers_.push_back(std::move(w));
  return *workers_.back();
}

grpc::Status ForgeTest::TrySubmit(const v1::GraphSpec& spec,
                                  v1::SubmitGraphResponse* out,
                                  const std::string& request_id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(absl::Seconds(30)));
  v1::SubmitGraphRequest req;
  *req.mutable_graph() = spec;
  req.set_request_id(request_id);
  return stub_->SubmitGraph(&ctx, req, out);
}

std::string ForgeTest::Submit(const v1::GraphSpec& spec,
                              const std::string& request_id) {
  v1::SubmitGraphResponse resp;
  grpc::Status s = TrySubmit(spec, &resp, request_id);
  EXPECT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  return resp.graph_id();
}

v1::Graph ForgeTest::WaitTerminal(const std::string& graph_id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(absl::Seconds(60)));
  v1::WaitGraphRequest req;
  req.set_graph_id(graph_id);
  v1::WaitGraphResponse resp;
  grpc::Status s = stub_->WaitGraph(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  EXPECT_TRUE(resp.terminal());
  return resp.graph();
}

v1::Graph ForgeTest::Get(const std::string& graph_id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(absl::Seconds(30)));
  v1::GetGraphRequest req;
  req.set_graph_id(graph_id);
  req.set_view(v1::FULL);
  v1::GetGraphResponse resp;
  grpc::Status s = stub_->GetGraph(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return resp.graph();
}

std::vector<v1::Event> ForgeTest::Replay(const std::string& graph_id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(absl::Seconds(60)));
  v1::WatchRequest req;
  req.mutable_graph()->set_graph_id(graph_id);
  req.mutable_graph()->set_replay(true);
  auto reader = stub_->Watch(&ctx, req);
  std::vector<v1::Event> events;
  v1::WatchResponse msg;
  while (reader->Read(&msg)) {
    for (const v1::Event& e : msg.events()) events.push_back(e);
  }
  grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  return events;
}

const v1::Task& ForgeTest::TaskOf(const v1::Graph& g, const std::string& name) {
  for (const v1::Task& t : g.tasks()) {
    if (t.spec().name() == name) return t;
  }
  ADD_FAILURE() << "no task " << name;
  static v1::Task none;
  return none;
}

int64_t ForgeTest::GraphCount() { return server_->engine().store().graph_count(); }

v1::TaskSpec* AddTask(v1::GraphSpec& g, const std::string& name,
                      std::vector<std::string> deps, const std::string& queue) {
  v1::TaskSpec* t = g.add_tasks();
  t->set_name(name);
  t->set_queue(queue);
  for (auto& d : deps) t->add_depends_on(d);
  return t;
}

v1::GraphSpec Diamond() {
  v1::GraphSpec g;
  g.set_name("diamond");
  AddTask(g, "a");
  AddTask(g, "b", {"a"});
  AddTask(g, "c", {"a"});
  AddTask(g, "d", {"b", "c"});
  return g;
}

}  // namespace forge::testing
