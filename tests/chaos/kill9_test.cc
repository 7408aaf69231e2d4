// Crash test: forged (the real binary, durable mode) is killed with SIGKILL
// at random moments under load from a submitting client and workers, many
// times, and restarted on the same data directory. A ledger keeps every
// acknowledged reply; after each restart, and once more at the end when all
// work has finished:
//   - every acknowledged submit is there (and a retried request_id finds it);
//   - every acknowledged completion is its task's one final result;
//   - no graph is stuck: all of them finish, each task with exactly one
//     successful attempt, each graph's events dense from 1.
// Rounds: FORGE_CHAOS_ROUNDS (default 20).
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "forge/v1/orchestrator.grpc.pb.h"
#include "forge/v1/worker.grpc.pb.h"
#include "tests/bench/child_process.h"

namespace forge {
namespace {

namespace v1 = ::forge::v1;
namespace fs = std::filesystem;

std::chrono::system_clock::time_point In(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

// forged as a child process; its address read from its "listening on" line.
class Forged {
 public:
  explicit Forged(const std::string& data_dir) {
    absl::StatusOr<bench::ChildProcess> p = bench::ChildProcess::Start(
        {FORGED_PATH, "--listen", "127.0.0.1:0", "--metrics-listen", "", "--data-dir",
         data_dir},
        "listening on 127.0.0.1:", absl::Minutes(2));
    if (!p.ok()) {
      ADD_FAILURE() << "forged did not start: " << p.status();
      return;
    }
    process_ = *std::move(p);
    address_ = process_.ListenAddress();
  }
  void Kill() { process_.Kill(); }
  const std::string& address() const { return address_; }
  const std::string& log() const { return process_.ready_line(); }

 private:
  bench::ChildProcess process_;
  std::string address_;
};

struct TaskKey {
  std::string graph_id;
  int32_t index;
  bool operator<(const TaskKey& o) const {
    return std::tie(graph_id, index) < std::tie(o.graph_id, o.index);
  }
};

// Every acknowledged reply.
struct Ledger {
  absl::Mutex mu;
  std::map<std::string, std::string> graphs ABSL_GUARDED_BY(mu);  // request_id -> id
  std::set<std::string> attempted ABSL_GUARDED_BY(mu);            // request_ids sent
  std::map<TaskKey, int32_t> completed ABSL_GUARDED_BY(mu);       // -> acked attempt
};

v1::GraphSpec Diamond() {
  v1::GraphSpec g;
  g.set_name("chaos");
  auto add = [&](const char* name, std::vector<const char*> deps) {
    v1::TaskSpec* t = g.add_tasks();
    t->set_name(name);
    for (const char* d : deps) t->add_depends_on(d);
  };
  add("a", {});
  add("b", {"a"});
  add("c", {"a"});
  add("d", {"b", "c"});
  return g;
}

// Submits diamonds with request ids until stopped or the server is gone.
void SubmitLoop(const std::string& address, Ledger& ledger, std::atomic<bool>& stop,
                std::atomic<int>& next_request) {
  auto stub = v1::Orchestrator::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  while (!stop.load()) {
    const std::string rid = absl::StrCat("chaos-", next_request.fetch_add(1));
    {
      absl::MutexLock lock(&ledger.mu);
      ledger.attempted.insert(rid);
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(2)));
    v1::SubmitGraphRequest req;
    *req.mutable_graph() = Diamond();
    req.set_request_id(rid);
    v1::SubmitGraphResponse resp;
    if (!stub->SubmitGraph(&ctx, req, &resp).ok()) return;
    absl::MutexLock lock(&ledger.mu);
    ledger.graphs[rid] = resp.graph_id();
  }
}

// A worker on the raw stream: completes every assignment at once and
// records the results the server acknowledged OK.
void WorkLoop(const std::string& address, Ledger& ledger, std::atomic<bool>& stop,
              grpc::ClientContext& ctx) {
  auto stub = v1::WorkerService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  auto stream = stub->Connect(&ctx);
  v1::WorkerMessage hello;
  hello.mutable_hello()->set_name("chaos");
  hello.mutable_hello()->add_queues("default");
  hello.mutable_hello()->set_slots(8);
  if (!stream->Write(hello)) return;
  v1::ServerMessage in;
  while (!stop.load() && stream->Read(&in)) {
    v1::WorkerMessage out;
    for (const v1::Assignment& a : in.assignments()) {
      v1::TaskResult* r = out.add_results();
      *r->mutable_lease() = a.lease();
      r->set_success(true);
      r->set_output(absl::StrCat(a.task(), "@", a.lease().attempt()));
    }
    for (const v1::ResultAck& ack : in.acks()) {
      if (ack.code() != 0) continue;
      absl::MutexLock lock(&ledger.mu);
      ledger.completed[TaskKey{ack.lease().graph_id(), ack.lease().task_index()}] =
          ack.lease().attempt();
    }
    if (out.results_size() > 0 && !stream->Write(out)) break;
  }
}

class Kill9Test : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / absl::StrCat("forge-chaos-", ::getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Everything acknowledged is there; acknowledged results are final.
  void CheckLedger(const std::string& address, Ledger& ledger, bool all_done) {
    auto stub = v1::Orchestrator::NewStub(
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    absl::MutexLock lock(&ledger.mu);
    for (const auto& [rid, id] : ledger.graphs) {
      grpc::ClientContext ctx;
      ctx.set_deadline(In(absl::Seconds(30)));
      v1::GetGraphRequest req;
      req.set_graph_id(id);
      req.set_view(v1::FULL);
      v1::GetGraphResponse resp;
      grpc::Status s = stub->GetGraph(&ctx, req, &resp);
      ASSERT_TRUE(s.ok()) << "acknowledged graph " << id << " (" << rid
                          << ") lost: " << s.error_message();
      const v1::Graph& g = resp.graph();
      for (const v1::Task& t : g.tasks()) {
        auto acked = ledger.completed.find(TaskKey{id, t.index()});
        int successes = 0;
        for (const v1::Attempt& a : t.attempts()) successes += a.state() == v1::SUCCEEDED;
        EXPECT_LE(successes, 1) << id << "/" << t.spec().name();
        if (acked != ledger.completed.end()) {
          EXPECT_EQ(t.state(), v1::SUCCEEDED) << "acknowledged result lost: " << id
                                              << "/" << t.spec().name();
          EXPECT_EQ(t.attempt(), acked->second) << id << "/" << t.spec().name();
          EXPECT_EQ(t.output(), absl::StrCat(t.spec().name(), "@", acked->second));
        }
        if (all_done) {
          EXPECT_EQ(t.state(), v1::SUCCEEDED) << id << "/" << t.spec().name();
          EXPECT_EQ(successes, 1) << id << "/" << t.spec().name();
        }
      }
      if (all_done) {
        EXPECT_EQ(g.state(), v1::GRAPH_STATE_SUCCEEDED) << id;
      }
    }
  }

  fs::path dir_;
};

TEST_F(Kill9Test, NothingAcknowledgedIsLostOverManyCrashes) {
  int rounds = 20;
  if (const char* r = std::getenv("FORGE_CHAOS_ROUNDS")) {
    ASSERT_TRUE(absl::SimpleAtoi(r, &rounds));
  }
  const std::string data = (dir_ / "data").string();
  Ledger ledger;
  std::atomic<int> next_request{0};
  std::mt19937 rng(std::random_device{}());
  for (int round = 0; round < rounds; ++round) {
    Forged forged(data);
    ASSERT_FALSE(forged.address().empty());
    CheckLedger(forged.address(), ledger, /*all_done=*/false);
    if (HasFatalFailure() || HasFailure()) {
      FAIL() << "round " << round << ", forged: " << forged.log();
    }
    std::atomic<bool> stop{false};
    std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
    std::vector<std::thread> threads;
    for (int w = 0; w < 2; ++w) {
      contexts.push_back(std::make_unique<grpc::ClientContext>());
      grpc::ClientContext* ctx = contexts.back().get();
      threads.emplace_back([&, ctx] { WorkLoop(forged.address(), ledger, stop, *ctx); });
    }
    for (int c = 0; c < 2; ++c) {
      threads.emplace_back([&] { SubmitLoop(forged.address(), ledger, stop, next_request); });
    }
    // Load for a random moment, then the crash.
    absl::SleepFor(absl::Milliseconds(std::uniform_int_distribution<int>(50, 500)(rng)));
    forged.Kill();
    stop.store(true);
    for (auto& ctx : contexts) ctx->TryCancel();
    for (std::thread& t : threads) t.join();
  }

  // The last start: no more crashes. Every graph finishes.
  Forged forged(data);
  ASSERT_FALSE(forged.address().empty());
  std::cerr << "after " << rounds << " crashes: " << forged.log() << "\n";
  std::atomic<bool> stop{false};
  grpc::ClientContext wctx;
  std::thread worker([&] { WorkLoop(forged.address(), ledger, stop, wctx); });
  auto stub = v1::Orchestrator::NewStub(
      grpc::CreateChannel(forged.address(), grpc::InsecureChannelCredentials()));
  std::map<std::string, std::string> graphs;
  std::set<std::string> attempted;
  {
    absl::MutexLock lock(&ledger.mu);
    graphs = ledger.graphs;
    attempted = ledger.attempted;
  }
  // A retried request_id finds its acknowledged graph; one that was never
  // acknowledged finds its graph if it was made durable, or makes it now.
  for (const std::string& rid : attempted) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(10)));
    v1::SubmitGraphRequest req;
    *req.mutable_graph() = Diamond();
    req.set_request_id(rid);
    v1::SubmitGraphResponse resp;
    ASSERT_TRUE(stub->SubmitGraph(&ctx, req, &resp).ok()) << rid;
    if (graphs.count(rid)) {
      EXPECT_EQ(resp.graph_id(), graphs[rid]) << rid;
      EXPECT_FALSE(resp.created()) << rid;
    }
    absl::MutexLock lock(&ledger.mu);
    ledger.graphs[rid] = resp.graph_id();
  }
  {
    absl::MutexLock lock(&ledger.mu);
    graphs = ledger.graphs;
  }
  for (const auto& [rid, id] : graphs) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(30)));
    v1::WaitGraphRequest req;
    req.set_graph_id(id);
    v1::WaitGraphResponse resp;
    ASSERT_TRUE(stub->WaitGraph(&ctx, req, &resp).ok()) << id;
    ASSERT_TRUE(resp.terminal()) << "graph " << id << " is stuck";
    // Events dense from 1, with one TASK_SUCCEEDED per task.
    grpc::ClientContext wc;
    wc.set_deadline(In(absl::Seconds(30)));
    v1::WatchRequest w;
    w.mutable_graph()->set_graph_id(id);
    w.mutable_graph()->set_replay(true);
    auto reader = stub->Watch(&wc, w);
    v1::WatchResponse msg;
    int64_t expect = 1;
    std::map<std::string, int> succeeded;
    while (reader->Read(&msg)) {
      for (const v1::Event& e : msg.events()) {
        EXPECT_EQ(e.seq(), expect++) << id;
        if (e.type() == v1::TASK_SUCCEEDED) ++succeeded[e.task()];
      }
    }
    EXPECT_TRUE(reader->Finish().ok());
    for (const char* t : {"a", "b", "c", "d"}) EXPECT_EQ(succeeded[t], 1) << id << "/" << t;
  }
  CheckLedger(forged.address(), ledger, /*all_done=*/true);
  absl::MutexLock lock(&ledger.mu);
  std::cerr << "ledger: " << ledger.graphs.size() << " graphs acknowledged, "
            << ledger.completed.size() << " completions acknowledged\n";
  EXPECT_GT(ledger.completed.size(), 0u);
  stop.store(true);
  wctx.TryCancel();
  worker.join();
}

}  // namespace
}  // namespace forge
