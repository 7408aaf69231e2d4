#include "tests/bench/workloads.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/lib/client.h"
#include "client/worker/worker.h"
#include "common/status.h"
#include "bench.grpc.pb.h"  // generated from tests/bench/bench.proto
#include "forge/v1/orchestrator.grpc.pb.h"
#include "forge/v1/worker.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "tests/bench/child_process.h"

extern char** environ;

namespace forge::bench {
namespace {

namespace v1 = ::forge::v1;
namespace fs = std::filesystem;

constexpr char kQueue[] = "bench";

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

// --- Environment: a forged and its workers for one run ----------------------

struct EnvConfig {
  bool runner = false;  // a command profile "true" on queue "spawn"
  bool durable = false;
  std::string data_dir;  // durable: reuse (W8); empty: a fresh one
};

class Env {
 public:
  static absl::StatusOr<std::unique_ptr<Env>> Start(const BenchOptions& o, EnvConfig c) {
    std::unique_ptr<Env> env(new Env(o));
    if (!o.server.empty() && !c.runner && !c.durable) {
      env->address_ = o.server;
    } else {
      static std::atomic<int> serial{0};
      const fs::path dir = fs::path(o.work_dir) / absl::StrCat("run-", serial++);
      fs::create_directories(dir);
      env->dir_ = dir.string();
      std::vector<std::string> args = {o.forged_path, "--listen", "127.0.0.1:0",
                                       "--metrics-listen", o.metrics ? "127.0.0.1:0" : "",
                                       "--shutdown-grace-seconds", "0"};
      if (c.durable || o.durable) {
        args.push_back("--data-dir");
        args.push_back(c.data_dir.empty() ? (dir / "data").string() : c.data_dir);
      } else {
        args.push_back("--ephemeral");
      }
      if (c.runner) {
        const std::string config = (dir / "runner.yaml").string();
        std::ofstream(config) << "runner:\n  work_root: " << (dir / "runs").string()
                              << "\nprofiles:\n  true:\n    queues: [spawn]\n"
                                 "    command: [/bin/true]\n    stdin: none\n"
                                 "    slots: "
                              << o.spawn_slots << "\n";
        args.push_back("--config");
        args.push_back(config);
      }
      absl::StatusOr<ChildProcess> forged =
          ChildProcess::Start(std::move(args), "listening on", absl::Minutes(5));
      if (!forged.ok()) return forged.status();
      env->forged_ = std::make_unique<ChildProcess>(*std::move(forged));
      env->address_ = env->forged_->ListenAddress();
    }
    ClientOptions co;
    co.rpc_timeout = absl::Minutes(5);
    co.connect_timeout = absl::Seconds(30);
    co.max_receive_message_bytes = 512 << 20;
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(env->address_, co);
    if (!client.ok()) return client.status();
    env->client_ = *std::move(client);
    return env;
  }

  ~Env() {
    StopWorkers();
    client_.reset();
    if (forged_) forged_->Kill();
    if (!dir_.empty()) {
      std::error_code ec;
      fs::remove_all(dir_, ec);
    }
  }

  const std::string& address() const { return address_; }
  Client& client() { return *client_; }
  ChildProcess* forged() { return forged_.get(); }

  // Workers on `queue`: in-process (the C++ worker library) or forge-worker
  // processes; no-op handlers. Returns once every one is connected.
  absl::Status StartWorkers(const std::string& queue) {
    for (int i = 0; i < o_.workers; ++i) {
      if (o_.worker_procs > 0) {
        absl::StatusOr<ChildProcess> w = ChildProcess::Start(
            {o_.worker_path, "--server", address_, "--queue", queue, "--slots",
             absl::StrCat(o_.slots), "--name", absl::StrCat("bench-", i)},
            "connected as", absl::Seconds(30));
        if (!w.ok()) return w.status();
        worker_procs_.push_back(std::make_unique<ChildProcess>(*std::move(w)));
        continue;
      }
      client::WorkerOptions wo;
      wo.server = address_;
      wo.name = absl::StrCat("bench-", i);
      wo.queues = {queue};
      wo.slots = o_.slots;
      wo.reconnect = false;
      wo.report_started = o_.report_started;
      auto connected = std::make_shared<absl::Notification>();
      wo.on_welcome = [connected](const std::string&) {
        if (!connected->HasBeenNotified()) connected->Notify();
      };
      auto w = std::make_unique<client::Worker>(
          wo, [](client::TaskContext&) { return client::TaskOutcome(); });
      if (absl::Status s = w->Start(); !s.ok()) return s;
      if (!connected->WaitForNotificationWithTimeout(absl::Seconds(30))) {
        return absl::DeadlineExceededError("worker not welcomed");
      }
      workers_.push_back(std::move(w));
    }
    return absl::OkStatus();
  }

  void StopWorkers() {
    for (auto& w : workers_) w->Stop();
    workers_.clear();
    worker_procs_.clear();  // SIGKILL
  }

 private:
  explicit Env(const BenchOptions& o) : o_(o) {}
  const BenchOptions& o_;
  std::string address_;
  std::string dir_;
  std::unique_ptr<ChildProcess> forged_;
  std::unique_ptr<Client> client_;
  std::vector<std::unique_ptr<client::Worker>> workers_;
  std::vector<std::unique_ptr<ChildProcess>> worker_procs_;
};

v1::TaskSpec* Task(v1::GraphSpec& g, int64_t i, const std::string& queue = kQueue) {
  v1::TaskSpec* t = g.add_tasks();
  t->set_name(absl::StrCat("t", i));
  t->set_queue(queue);
  return t;
}

v1::GraphSpec Independent(int64_t n, const std::string& queue = kQueue) {
  v1::GraphSpec g;
  g.set_name("bench-independent");
  g.mutable_tasks()->Reserve(static_cast<int>(n));
  for (int64_t i = 0; i < n; ++i) Task(g, i, queue);
  return g;
}

absl::Status Terminal(Client& c, const std::string& id, v1::GraphState* state = nullptr) {
  absl::StatusOr<v1::WaitGraphResponse> w = c.WaitGraph(id, absl::InfiniteDuration(), v1::BASIC);
  if (!w.ok()) return w.status();
  if (state) *state = w->graph().state();
  if (w->graph().state() != v1::GRAPH_STATE_SUCCEEDED) {
    return absl::InternalError(absl::StrCat("graph ", id, " ended ",
                                            v1::GraphState_Name(w->graph().state())));
  }
  return absl::OkStatus();
}

// --- W1: independent no-op tasks ---------------------------------------------

absl::Status RunW1(const BenchOptions& o, std::vector<Figure>* out) {
  ASSIGN_OR_RETURN(auto env, Env::Start(o, {}));
  RETURN_IF_ERROR(env->StartWorkers(kQueue));
  const int64_t graphs = std::max<int64_t>(1, o.tasks / o.graph_tasks);
  const v1::GraphSpec spec = Independent(o.graph_tasks);
  std::vector<std::string> ids(graphs);
  std::atomic<int64_t> next{0};
  absl::Mutex mu;
  absl::Status first_error;
  const absl::Time start = absl::Now();
  const double forged_cpu0 = env->forged() ? env->forged()->CpuSeconds() : -1;
  const double self_cpu0 = SelfCpuSeconds();
  std::vector<std::thread> threads;
  for (int t = 0; t < o.submitters; ++t) {
    threads.emplace_back([&] {
      for (int64_t i; (i = next.fetch_add(1)) < graphs;) {
        absl::StatusOr<v1::SubmitGraphResponse> r = env->client().Submit(spec);
        if (!r.ok()) {
          absl::MutexLock lock(&mu);
          if (first_error.ok()) first_error = r.status();
          return;
        }
        ids[i] = r->graph_id();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const absl::Time submitted = absl::Now();
  RETURN_IF_ERROR(first_error);
  for (const std::string& id : ids) RETURN_IF_ERROR(Terminal(env->client(), id));
  const absl::Time end = absl::Now();
  const double n = static_cast<double>(graphs * o.graph_tasks);
  out->push_back({"W1", "end_to_end", "tasks/s", n / Seconds(end - start)});
  out->push_back({"W1", "submit_phase", "tasks/s", n / Seconds(submitted - start)});
  // Where the CPU went: forged's, and this process's (submitters and, with
  // in-process workers, the workers).
  if (forged_cpu0 >= 0) {
    out->push_back({"W1", "forged_cpu_per_task", "us",
                    (env->forged()->CpuSeconds() - forged_cpu0) * 1e6 / n});
  }
  out->push_back({"W1", "client_cpu_per_task", "us", (SelfCpuSeconds() - self_cpu0) * 1e6 / n});
  return absl::OkStatus();
}

// --- W2: a chain ------------------------------------------------------------

absl::Status RunW2(const BenchOptions& o, std::vector<Figure>* out) {
  ASSIGN_OR_RETURN(auto env, Env::Start(o, {}));
  RETURN_IF_ERROR(env->StartWorkers(kQueue));
  v1::GraphSpec g;
  g.set_name("bench-chain");
  for (int i = 0; i < o.chain; ++i) {
    v1::TaskSpec* t = Task(g, i);
    if (i > 0) t->add_depends_on(absl::StrCat("t", i - 1));
  }
  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(auto r, env->client().Submit(g));
  RETURN_IF_ERROR(Terminal(env->client(), r.graph_id()));
  const absl::Duration took = absl::Now() - start;
  out->push_back({"W2", "hop", "us", absl::ToDoubleMicroseconds(took) / o.chain});
  return absl::OkStatus();
}

// --- W3: fan-out then fan-in ---------------------------------------------------

absl::Status RunW3(const BenchOptions& o, std::vector<Figure>* out) {
  ASSIGN_OR_RETURN(auto env, Env::Start(o, {}));
  RETURN_IF_ERROR(env->StartWorkers(kQueue));
  v1::GraphSpec g;
  g.set_name("bench-fan");
  Task(g, 0)->set_name("root");
  v1::TaskSpec* sink = nullptr;
  for (int i = 0; i < o.fan; ++i) Task(g, i)->add_depends_on("root");
  sink = Task(g, 0);
  sink->set_name("sink");
  for (int i = 0; i < o.fan; ++i) sink->add_depends_on(absl::StrCat("t", i));
  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(auto r, env->client().Submit(g));
  RETURN_IF_ERROR(Terminal(env->client(), r.graph_id()));
  out->push_back({"W3", "end_to_end", "tasks/s", (o.fan + 2) / Seconds(absl::Now() - start)});
  return absl::OkStatus();
}

// --- W4: runner tasks spawning /bin/true --------------------------------------

absl::Status RunW4(const BenchOptions& o, std::vector<Figure>* out) {
  EnvConfig c;
  c.runner = true;
  ASSIGN_OR_RETURN(auto env, Env::Start(o, c));
  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(auto r, env->client().Submit(Independent(o.spawn_tasks, "spawn")));
  RETURN_IF_ERROR(Terminal(env->client(), r.graph_id()));
  out->push_back({"W4", "runner_tasks", "tasks/s", o.spawn_tasks / Seconds(absl::Now() - start)});
  return absl::OkStatus();
}

// --- W5: one graph of 1,000,000 tasks ----------------------------------------

absl::Status RunW5(const BenchOptions& o, std::vector<Figure>* out) {
  ASSIGN_OR_RETURN(auto env, Env::Start(o, {}));
  // A raw worker stream with a slot per root that never answers: the roots'
  // dispatch is what is measured, and nothing after it.
  auto stub = v1::WorkerService::NewStub(
      grpc::CreateChannel(env->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext wctx;
  auto stream = stub->Connect(&wctx);
  v1::WorkerMessage hello;
  hello.mutable_hello()->set_name("bench-roots");
  hello.mutable_hello()->add_queues(kQueue);
  hello.mutable_hello()->set_slots(std::min(o.big_width, 10000));
  if (!stream->Write(hello)) return absl::UnavailableError("worker stream refused");
  v1::ServerMessage msg;
  if (!stream->Read(&msg) || !msg.has_welcome()) {
    return absl::UnavailableError("no welcome");
  }
  const int width = o.big_width;
  const int64_t layers = std::max<int64_t>(1, o.big_tasks / width);
  v1::GraphSpec g;
  g.set_name("bench-big");
  g.mutable_tasks()->Reserve(static_cast<int>(layers * width));
  for (int64_t l = 0; l < layers; ++l) {
    for (int i = 0; i < width; ++i) {
      v1::TaskSpec* t = Task(g, l * width + i);
      if (l > 0) {
        t->add_depends_on(absl::StrCat("t", (l - 1) * width + i));
        t->add_depends_on(absl::StrCat("t", (l - 1) * width + (i + 1) % width));
      }
    }
  }
  const int64_t rss_before = env->forged() ? env->forged()->RssBytes() : -1;
  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(auto r, env->client().Submit(g));
  const absl::Time accepted = absl::Now();
  int received = 0;
  const int roots = std::min(width, 10000);
  while (received < roots && stream->Read(&msg)) received += msg.assignments_size();
  const absl::Time dispatched = absl::Now();
  if (received < roots) return absl::InternalError("roots not all dispatched");
  out->push_back({"W5", "accept", "s", Seconds(accepted - start)});
  out->push_back({"W5", "accept_and_dispatch_roots", "s", Seconds(dispatched - start)});
  if (rss_before > 0) {
    // Held: once the allocator has given back what the submit's parse
    // freed (forged's jemalloc does ~1 s after the last use; the bench
    // waits until the resident set stops shrinking, at most 10 s). Peak:
    // the most it was resident, parse included.
    const int64_t peak = env->forged()->PeakRssBytes();
    int64_t rss_after = env->forged()->RssBytes();
    const absl::Time settle_by = absl::Now() + absl::Seconds(10);
    while (absl::Now() < settle_by) {
      absl::SleepFor(absl::Milliseconds(500));  // the bench's own wait
      const int64_t now_rss = env->forged()->RssBytes();
      if (now_rss > rss_after - (rss_after >> 7)) {  // shrank < 1%: settled
        rss_after = std::min(rss_after, now_rss);
        break;
      }
      rss_after = now_rss;
    }
    const double tasks = static_cast<double>(layers * width);
    out->push_back({"W5", "memory_per_task", "bytes",
                    static_cast<double>(rss_after - rss_before) / tasks});
    out->push_back({"W5", "peak_memory_per_task", "bytes",
                    static_cast<double>(peak - rss_before) / tasks});
  }
  wctx.TryCancel();
  env->client().CancelGraph(r.graph_id()).IgnoreError();
  return absl::OkStatus();
}

// --- W6: submit latency at a fixed rate ----------------------------------------

absl::Status RunW6(const BenchOptions& o, std::vector<Figure>* out) {
  ASSIGN_OR_RETURN(auto env, Env::Start(o, {}));
  RETURN_IF_ERROR(env->StartWorkers(kQueue));
  auto stub = v1::Orchestrator::NewStub(
      grpc::CreateChannel(env->address(), grpc::InsecureChannelCredentials()));
  v1::SubmitGraphRequest req;
  *req.mutable_graph() = Independent(10);
  const int64_t n = std::max<int64_t>(1, static_cast<int64_t>(o.rate * Seconds(o.w6_duration)));
  struct Call {
    grpc::ClientContext ctx;
    v1::SubmitGraphResponse resp;
    absl::Time sent;
  };
  std::vector<std::unique_ptr<Call>> calls(n);
  absl::Mutex mu;
  std::vector<double> latencies;
  int64_t done = 0, failed = 0;
  const absl::Time start = absl::Now();
  for (int64_t i = 0; i < n; ++i) {
    const absl::Time due = start + absl::Seconds(static_cast<double>(i) / o.rate);
    const absl::Duration wait = due - absl::Now();
    if (wait > absl::ZeroDuration()) absl::SleepFor(wait);  // client-side pacing
    calls[i] = std::make_unique<Call>();
    Call* c = calls[i].get();
    c->sent = absl::Now();
    stub->async()->SubmitGraph(&c->ctx, &req, &c->resp, [&, c](grpc::Status s) {
      const double ms = absl::ToDoubleMilliseconds(absl::Now() - c->sent);
      absl::MutexLock lock(&mu);
      if (s.ok()) {
        latencies.push_back(ms);
      } else {
        ++failed;
      }
      ++done;
    });
  }
  {
    absl::MutexLock lock(&mu);
    auto all_done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return done == n; };
    mu.Await(absl::Condition(&all_done));
  }
  if (failed > 0) return absl::InternalError(absl::StrCat(failed, " submits failed"));
  out->push_back({"W6", "submit_p50", "ms", Quantile(latencies, 0.5)});
  out->push_back({"W6", "submit_p99", "ms", Quantile(latencies, 0.99)});
  out->push_back({"W6", "submit_p999", "ms", Quantile(latencies, 0.999)});
  return absl::OkStatus();
}

// --- W7: many watchers on a busy graph ---------------------------------------

class Watcher final : public grpc::ClientReadReactor<v1::WatchResponse> {
 public:
  Watcher(v1::Orchestrator::Stub* stub, const std::string& graph_id, bool stalled)
      : stalled_(stalled) {
    req_.mutable_graph()->set_graph_id(graph_id);
    req_.mutable_graph()->set_replay(true);
    stub->async()->Watch(&ctx_, &req_, this);
    StartRead(&msg_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    const absl::Time now = absl::Now();
    int64_t seen = 0;
    {
      absl::MutexLock lock(&mu_);
      for (const v1::Event& e : msg_.events()) {
        ++events_;
        last_seq_ = e.seq();
        if (measuring_ && (events_ % 8) == 0) {  // a sample of the lags
          const absl::Time made = absl::FromUnixSeconds(e.time().seconds()) +
                                  absl::Nanoseconds(e.time().nanos());
          lags_ms_.push_back(absl::ToDoubleMilliseconds(now - made));
        }
      }
      seen = events_;
    }
    if (stalled_ && seen > 0) return;  // stops reading: the server must cope
    StartRead(&msg_);
  }
  void OnDone(const grpc::Status& s) override {
    absl::MutexLock lock(&mu_);
    done_ = true;
    status_ = s;
  }
  void Cancel() { ctx_.TryCancel(); }
  void Measure() {
    absl::MutexLock lock(&mu_);
    measuring_ = true;
    events_at_measure_ = events_;
  }
  bool WaitSeq(int64_t seq, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, seq]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return last_seq_ >= seq || done_;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout) && last_seq_ >= seq;
  }
  bool WaitDone(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&done_), timeout);
  }
  int64_t delivered() {
    absl::MutexLock lock(&mu_);
    return events_ - events_at_measure_;
  }
  std::vector<double> lags() {
    absl::MutexLock lock(&mu_);
    return lags_ms_;
  }

 private:
  const bool stalled_;
  grpc::ClientContext ctx_;
  v1::WatchRequest req_;
  v1::WatchResponse msg_;
  absl::Mutex mu_;
  int64_t events_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t events_at_measure_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t last_seq_ ABSL_GUARDED_BY(mu_) = 0;
  bool measuring_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  std::vector<double> lags_ms_ ABSL_GUARDED_BY(mu_);
};

// One W7 run: `watchers` watchers (one of them stalled if `stall`) see the
// graph run; returns delivered events/s and the p99 lag of the readers.
absl::Status WatchRun(const BenchOptions& o, bool stall, double* rate, double* lag_p99) {
  ASSIGN_OR_RETURN(auto env, Env::Start(o, {}));
  ASSIGN_OR_RETURN(auto r, env->client().Submit(Independent(o.watch_tasks)));
  ASSIGN_OR_RETURN(auto g, env->client().GetGraph(r.graph_id(), v1::BASIC));
  auto stub = v1::Orchestrator::NewStub(
      grpc::CreateChannel(env->address(), grpc::InsecureChannelCredentials()));
  std::vector<std::unique_ptr<Watcher>> watchers;
  for (int i = 0; i < o.watchers; ++i) {
    watchers.push_back(std::make_unique<Watcher>(stub.get(), r.graph_id(), stall && i == 0));
  }
  for (size_t i = stall ? 1 : 0; i < watchers.size(); ++i) {
    if (!watchers[i]->WaitSeq(g.last_seq(), absl::Seconds(60))) {
      return absl::DeadlineExceededError("watchers did not catch up");
    }
  }
  for (auto& w : watchers) w->Measure();
  const absl::Time start = absl::Now();
  RETURN_IF_ERROR(env->StartWorkers(kQueue));
  int64_t delivered = 0;
  std::vector<double> lags;
  for (size_t i = stall ? 1 : 0; i < watchers.size(); ++i) {
    if (!watchers[i]->WaitDone(absl::Minutes(5))) {
      return absl::DeadlineExceededError("a watcher did not see the graph end");
    }
    delivered += watchers[i]->delivered();
    std::vector<double> l = watchers[i]->lags();
    lags.insert(lags.end(), l.begin(), l.end());
  }
  const absl::Time end = absl::Now();
  for (auto& w : watchers) w->Cancel();
  for (auto& w : watchers) w->WaitDone(absl::Seconds(30));
  *rate = static_cast<double>(delivered) / Seconds(end - start);
  *lag_p99 = Quantile(lags, 0.99);
  return absl::OkStatus();
}

absl::Status RunW7(const BenchOptions& o, std::vector<Figure>* out) {
  double rate = 0, lag = 0, rate_stalled = 0, lag_stalled = 0;
  RETURN_IF_ERROR(WatchRun(o, false, &rate, &lag));
  RETURN_IF_ERROR(WatchRun(o, true, &rate_stalled, &lag_stalled));
  out->push_back({"W7", "events_delivered", "events/s", rate});
  out->push_back({"W7", "lag_p99", "ms", lag});
  out->push_back({"W7", "lag_p99_one_stalled", "ms", lag_stalled});
  return absl::OkStatus();
}

// --- W8: restart with 1,000,000 journaled tasks ------------------------------

absl::Status RunW8(const BenchOptions& o, std::vector<Figure>* out) {
  // The journal is made once per process (by the first run) and left as
  // the SIGKILL left it: each run restarts on a fresh copy of it, so every
  // run replays the same WAL (a restart flushes it into a table, and a
  // second start on the same directory would measure a different state).
  static std::string crashed_dir;
  static std::string graph_id;
  if (crashed_dir.empty()) {
    crashed_dir = (fs::path(o.work_dir) / "w8-crashed").string();
    fs::remove_all(crashed_dir);
    EnvConfig c;
    c.durable = true;
    c.data_dir = crashed_dir;
    ASSIGN_OR_RETURN(auto env, Env::Start(o, c));
    // Tasks on a queue nobody serves: all READY, all journaled, in flight.
    ASSIGN_OR_RETURN(auto r, env->client().Submit(Independent(o.restart_tasks, "unserved")));
    graph_id = r.graph_id();
    env->forged()->Kill();  // SIGKILL: what was acknowledged is on disk
  }
  const std::string data_dir = (fs::path(o.work_dir) / "w8-data").string();
  std::error_code ec;
  fs::remove_all(data_dir, ec);
  fs::copy(crashed_dir, data_dir, fs::copy_options::recursive, ec);
  if (ec) return absl::InternalError(absl::StrCat("copying the journal: ", ec.message()));
  EnvConfig c;
  c.durable = true;
  c.data_dir = data_dir;
  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(auto env, Env::Start(o, c));
  ASSIGN_OR_RETURN(auto g, env->client().GetGraph(graph_id, v1::BASIC));
  const absl::Time serving = absl::Now();
  if (g.counts().ready() != o.restart_tasks) {
    return absl::InternalError(absl::StrCat("recovered ", g.counts().ready(), " READY tasks"));
  }
  out->push_back({"W8", "restart_until_serving", "s", Seconds(serving - start)});
  env->forged()->Kill();
  return absl::OkStatus();
}

// --- LIMIT: what the transport and the OS allow ---------------------------------

class TransportService final : public forge::bench::v1::Transport::CallbackService {
 public:
  grpc::ServerUnaryReactor* Ping(grpc::CallbackServerContext* ctx,
                                 const forge::bench::v1::Blob* in,
                                 forge::bench::v1::Blob* out) override {
    *out = *in;
    grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }
  grpc::ServerReadReactor<v1::WorkerMessage>* Push(grpc::CallbackServerContext*,
                                                  forge::bench::v1::Ack* ack) override {
    class Reader : public grpc::ServerReadReactor<v1::WorkerMessage> {
     public:
      explicit Reader(forge::bench::v1::Ack* ack) : ack_(ack) { StartRead(&msg_); }
      void OnReadDone(bool ok) override {
        if (!ok) {
          ack_->set_items(items_);
          Finish(grpc::Status::OK);
          return;
        }
        items_ += msg_.results_size();
        StartRead(&msg_);
      }
      void OnDone() override { delete this; }

     private:
      forge::bench::v1::Ack* ack_;
      v1::WorkerMessage msg_;
      int64_t items_ = 0;
    };
    return new Reader(ack);
  }
  grpc::ServerBidiReactor<forge::bench::v1::Blob, forge::bench::v1::Blob>* Echo(
      grpc::CallbackServerContext*) override {
    class Echoer : public grpc::ServerBidiReactor<forge::bench::v1::Blob, forge::bench::v1::Blob> {
     public:
      Echoer() { StartRead(&msg_); }
      void OnReadDone(bool ok) override {
        if (!ok) {
          Finish(grpc::Status::OK);
          return;
        }
        StartWrite(&msg_);
      }
      void OnWriteDone(bool ok) override {
        if (!ok) {
          Finish(grpc::Status::CANCELLED);
          return;
        }
        StartRead(&msg_);
      }
      void OnDone() override { delete this; }

     private:
      forge::bench::v1::Blob msg_;
    };
    return new Echoer();
  }
};

absl::Status RunLimit(const BenchOptions& o, std::vector<Figure>* out) {
  TransportService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) return absl::UnavailableError("cannot start the transport probe");
  auto stub = forge::bench::v1::Transport::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  // Round trip: sequential unary calls (like one hop of a chain).
  forge::bench::v1::Blob ping;
  ping.set_data(std::string(64, 'x'));
  std::vector<double> rtts;
  rtts.reserve(o.pings);
  for (int i = 0; i < o.pings; ++i) {
    grpc::ClientContext ctx;
    forge::bench::v1::Blob pong;
    const absl::Time t0 = absl::Now();
    grpc::Status s = stub->Ping(&ctx, ping, &pong);
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    rtts.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
  }
  out->push_back({"LIMIT", "grpc_round_trip_p50", "us", Quantile(rtts, 0.5)});
  // The same, one message at a time on one open bidirectional stream.
  {
    grpc::ClientContext ctx;
    auto stream = stub->Echo(&ctx);
    forge::bench::v1::Blob pong;
    std::vector<double> stream_rtts;
    stream_rtts.reserve(o.pings);
    for (int i = 0; i < o.pings; ++i) {
      const absl::Time t0 = absl::Now();
      if (!stream->Write(ping) || !stream->Read(&pong)) {
        return absl::UnavailableError("echo stream broke");
      }
      stream_rtts.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
    }
    stream->WritesDone();
    grpc::Status s = stream->Finish();
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    out->push_back({"LIMIT", "grpc_stream_round_trip_p50", "us", Quantile(stream_rtts, 0.5)});
  }
  // Batched stream: results as a worker sends them.
  v1::WorkerMessage batch;
  for (int i = 0; i < o.stream_batch; ++i) {
    v1::TaskResult* r = batch.add_results();
    r->mutable_lease()->set_graph_id("01JBENCHBENCHBENCHBENCHBEN");
    r->mutable_lease()->set_task_index(i);
    r->mutable_lease()->set_attempt(1);
    r->mutable_lease()->set_epoch(1000000 + i);
    r->set_success(true);
  }
  {
    grpc::ClientContext ctx;
    forge::bench::v1::Ack ack;
    const absl::Time t0 = absl::Now();
    auto writer = stub->Push(&ctx, &ack);
    for (int i = 0; i < o.stream_messages; ++i) {
      if (!writer->Write(batch)) break;
    }
    writer->WritesDone();
    grpc::Status s = writer->Finish();
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    out->push_back({"LIMIT", "grpc_stream_items", "items/s",
                    static_cast<double>(ack.items()) / Seconds(absl::Now() - t0)});
  }
  server->Shutdown();
  // posix_spawn of /bin/true, two in flight.
  {
    const absl::Time t0 = absl::Now();
    std::vector<pid_t> running;
    char arg0[] = "/bin/true";
    char* argv[] = {arg0, nullptr};
    for (int i = 0; i < o.spawns; ++i) {
      if (running.size() == 2) {
        ::waitpid(running.front(), nullptr, 0);
        running.erase(running.begin());
      }
      pid_t pid;
      if (::posix_spawn(&pid, "/bin/true", nullptr, nullptr, argv, environ) != 0) {
        return absl::InternalError("posix_spawn failed");
      }
      running.push_back(pid);
    }
    for (pid_t pid : running) ::waitpid(pid, nullptr, 0);
    out->push_back({"LIMIT", "posix_spawn_true", "spawns/s", o.spawns / Seconds(absl::Now() - t0)});
  }
  return absl::OkStatus();
}

}  // namespace

const std::vector<WorkloadInfo>& Workloads() {
  static const std::vector<WorkloadInfo>* w = new std::vector<WorkloadInfo>{
      {"W1", "independent no-op tasks, remote workers", RunW1},
      {"W2", "chain of dependent no-op tasks", RunW2},
      {"W3", "fan-out then fan-in", RunW3},
      {"W4", "runner tasks spawning /bin/true", RunW4},
      {"W5", "one wide layered graph of 1,000,000 tasks", RunW5},
      {"W6", "submit latency of a 10-task graph at a fixed rate", RunW6},
      {"W7", "1,000 watchers on a busy graph; one stalled", RunW7},
      {"W8", "restart with 1,000,000 journaled tasks", RunW8, true},
      {"LIMIT", "gRPC round trip, batched stream, posix_spawn", RunLimit},
  };
  return *w;
}

}  // namespace forge::bench
