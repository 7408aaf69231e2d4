#include "server/forge_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "server/api/orchestrator_service.h"
#include "server/api/worker_service.h"
#include "common/otlp.h"
#include "server/obs/metrics.h"
#include "server/obs/rpc_metrics.h"
#include "server/persist/rocksdb_journal.h"

namespace forge {


namespace {

// Everything /metrics shows, read at scrape time.
struct Sources {
  Engine* engine = nullptr;
  const exec::CommandRunner* runner = nullptr;
  const persist::Journal* journal = nullptr;
  const obs::RpcMetrics* rpc = nullptr;
  const otlp::SpanExporter* spans = nullptr;
};

std::vector<prometheus::MetricFamily> Collect(const Sources& src) {
  using prometheus::MetricType;
  Engine& engine = *src.engine;
  const EngineCounters c = engine.counters();
  const events::EventBus& bus = engine.bus();
  std::vector<prometheus::MetricFamily> out;
  auto counter = [&](const char* name, const char* help, double v) {
    out.push_back(obs::FamilyBuilder(name, help, MetricType::Counter).Add(v).take());
  };
  auto gauge = [&](const char* name, const char* help, double v) {
    out.push_back(obs::FamilyBuilder(name, help, MetricType::Gauge).Add(v).take());
  };
  auto histogram = [&](const char* name, const char* help, const HistogramSnapshot& h) {
    if (h.bounds.empty()) return;
    out.push_back(
        obs::FamilyBuilder(name, help, MetricType::Histogram).AddHistogram(h).take());
  };
  counter("forge_graphs_submitted_total", "Graphs accepted by SubmitGraph.",
          c.graphs_submitted);
  out.push_back(obs::FamilyBuilder("forge_graphs_finished_total",
                                   "Graphs that reached a terminal state, by outcome.",
                                   MetricType::Counter)
                    .Add(c.graphs_succeeded, {{"outcome", "succeeded"}})
                    .Add(c.graphs_failed, {{"outcome", "failed"}})
                    .Add(c.graphs_cancelled, {{"outcome", "cancelled"}})
                    .take());
  counter("forge_tasks_submitted_total", "Tasks in accepted graphs.",
          c.tasks_submitted);
  counter("forge_tasks_dispatched_total", "Attempts handed to executors.",
          c.tasks_dispatched);
  counter("forge_leases_lost_total", "Attempts failed with LEASE_LOST.",
          c.leases_lost);
  counter("forge_stale_results_total",
          "Results refused because their lease was not current.",
          c.stale_results);
  gauge("forge_graphs", "Graphs held by the store.", engine.store().graph_count());
  gauge("forge_graphs_archived",
        "Finished graphs of forge_graphs that left memory (read from the journal).",
        engine.store().archived_count());
  counter("forge_events_published_total", "Events made visible to watchers.",
          bus.events_published());
  gauge("forge_watch_subscribers", "Open Watch subscriptions.",
        bus.subscribers() + engine.archived_watchers());
  counter("forge_watch_subscribers_cut_off_total",
          "Watchers ended for falling behind (RESOURCE_EXHAUSTED or OUT_OF_RANGE).",
          bus.subscribers_cut_off());

  // Per queue: stage histograms and outcomes.
  obs::FamilyBuilder dep("forge_task_dependency_wait_seconds",
                         "Submitted -> READY (waiting for dependencies), per queue.",
                         MetricType::Histogram);
  obs::FamilyBuilder qwait("forge_task_queue_wait_seconds",
                           "READY -> dispatched to an executor, per attempt.",
                           MetricType::Histogram);
  obs::FamilyBuilder pickup("forge_task_pickup_seconds",
                            "Dispatched -> the executor began the attempt.",
                            MetricType::Histogram);
  obs::FamilyBuilder run("forge_task_run_seconds",
                         "Began (or dispatched, if not reported) -> finished, per attempt.",
                         MetricType::Histogram);
  obs::FamilyBuilder finished("forge_tasks_finished_total",
                              "Tasks that reached a terminal state, by queue and outcome.",
                              MetricType::Counter);
  obs::FamilyBuilder retries("forge_task_retries_total",
                             "Failed attempts that will be retried.", MetricType::Counter);
  obs::FamilyBuilder timeouts("forge_task_timeouts_total",
                              "Attempts failed by a run or schedule-to-start timeout.",
                              MetricType::Counter);
  engine.task_metrics().ForEach([&](const std::string& q, const obs::QueueTaskMetrics& m) {
    dep.AddHistogram(m.dependency_wait.Snapshot(), {{"queue", q}});
    qwait.AddHistogram(m.queue_wait.Snapshot(), {{"queue", q}});
    pickup.AddHistogram(m.pickup.Snapshot(), {{"queue", q}});
    run.AddHistogram(m.run.Snapshot(), {{"queue", q}});
    finished.Add(m.succeeded.load(), {{"queue", q}, {"outcome", "succeeded"}});
    finished.Add(m.failed.load(), {{"queue", q}, {"outcome", "failed"}});
    finished.Add(m.cancelled.load(), {{"queue", q}, {"outcome", "cancelled"}});
    finished.Add(m.skipped.load(), {{"queue", q}, {"outcome", "skipped"}});
    retries.Add(m.retries.load(), {{"queue", q}});
    timeouts.Add(m.timeouts.load(), {{"queue", q}});
  });
  for (obs::FamilyBuilder* f : {&dep, &qwait, &pickup, &run, &finished, &retries, &timeouts}) {
    out.push_back(f->take());
  }

  obs::FamilyBuilder depth("forge_queue_depth", "READY tasks waiting per queue.",
                           MetricType::Gauge);
  obs::FamilyBuilder running("forge_queue_running", "Running tasks per queue.",
                             MetricType::Gauge);
  for (const sched::QueueStats& q : engine.scheduler().Queues()) {
    depth.Add(q.depth, {{"queue", q.name}});
    running.Add(q.running, {{"queue", q.name}});
  }
  out.push_back(depth.take());
  out.push_back(running.take());
  double workers = 0, slots = 0, free_slots = 0;
  for (const sched::ExecutorStats& e : engine.scheduler().Executors()) {
    ++workers;
    slots += e.slots;
    free_slots += e.slots - e.in_use;
  }
  gauge("forge_workers_connected", "Connected executors.", workers);
  gauge("forge_worker_slots", "Slots of connected executors.", slots);
  gauge("forge_worker_free_slots", "Free slots of connected executors.", free_slots);

  if (src.rpc != nullptr) {
    obs::FamilyBuilder calls("forge_rpc_requests_total",
                             "RPCs finished, by method and gRPC status code.",
                             MetricType::Counter);
    obs::FamilyBuilder latency("forge_rpc_duration_seconds",
                               "RPC duration (streams: their whole life), by method.",
                               MetricType::Histogram);
    for (const std::unique_ptr<obs::MethodMetrics>& m : src.rpc->methods()) {
      const HistogramSnapshot h = m->duration.Snapshot();
      latency.AddHistogram(h, {{"service", m->service}, {"method", m->method}});
      for (size_t code = 0; code < m->by_code.size(); ++code) {
        const int64_t n = m->by_code[code].load(std::memory_order_relaxed);
        if (n == 0) continue;  // a series appears with its first call
        calls.Add(n, {{"service", m->service},
                      {"method", m->method},
                      {"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(code))}});
      }
    }
    out.push_back(calls.take());
    out.push_back(latency.take());
  }

  if (src.journal != nullptr) {
    const persist::JournalStats j = src.journal->stats();
    counter("forge_journal_commits_total", "Journal batches made durable.", j.commits);
    counter("forge_journal_failed_commits_total",
            "Journal batches refused or failed.", j.failed_commits);
    counter("forge_journal_bytes_total", "Bytes of the durable journal batches.", j.bytes);
    counter("forge_journal_syncs_total", "Journal write+sync rounds (group commits).",
            j.syncs);
    gauge("forge_journal_pending_bytes", "Journal bytes accepted, not yet durable.",
          j.pending_bytes);
    gauge("forge_journal_disk_full", "1 while the journal waits for disk space.",
          j.disk_full ? 1 : 0);
    histogram("forge_journal_sync_seconds", "Latency of one journal write+sync round.",
              j.sync_seconds);
    histogram("forge_journal_commit_seconds",
              "Commit -> durable, per batch (queueing included).", j.commit_seconds);
    histogram("forge_journal_group_batches", "Batches per write+sync round.",
              j.group_batches);
    histogram("forge_journal_group_bytes", "Bytes per write+sync round.", j.group_bytes);
  }

  if (src.runner != nullptr) {
    const exec::RunnerStats r = src.runner->stats();
    gauge("forge_runner_processes_running", "Command runner processes alive.",
          r.running);
    counter("forge_runner_processes_started_total",
            "Processes started by the command runner.", r.started);
    counter("forge_runner_processes_killed_total",
            "Process groups the command runner had to SIGKILL.", r.killed);
    counter("forge_runner_spawn_failures_total",
            "Runner attempts that could not start a process.", r.spawn_failures);
  }
  if (src.spans != nullptr) {
    const otlp::ExporterStats t = src.spans->stats();
    counter("forge_trace_spans_exported_total", "Spans accepted by the OTLP collector.",
            t.exported);
    counter("forge_trace_spans_dropped_total",
            "Spans dropped: the export queue was full.", t.dropped);
    counter("forge_trace_spans_failed_total",
            "Spans the collector refused or could not be sent.", t.failed);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ForgeServer>> ForgeServer::Start(
    ServerOptions options, Clock* clock) {
  std::unique_ptr<ForgeServer> s(new ForgeServer());
  s->options_ = options;
  s->timers_ = std::make_unique<TimerService>(clock);
  s->bus_ = std::make_unique<events::EventBus>(options.bus);
  if (!options.data_dir.empty()) {
    persist::RocksJournalOptions jo;
    jo.dir = options.data_dir;
    jo.sync = options.sync;
    // Admitted transitions never fail for room: the engine refuses new work
    // long before this (max_journal_backlog_bytes), and a full disk holds
    // the writes in order until space returns.
    jo.max_pending_bytes = size_t{1} << 30;
    jo.hold_on_no_space = true;
    absl::StatusOr<std::unique_ptr<persist::Journal>> journal =
        persist::OpenRocksJournal(jo);
    if (!journal.ok()) return journal.status();
    s->journal_ = *std::move(journal);
  }
  ForgeServer* raw = s.get();
  options.engine.on_journal_failure = [raw](const absl::Status& status) {
    FORGE_LOG(ERROR, "journal failed, no more writes").WithStatus(status);
    if (grpc::Server* server = raw->serving_.load()) {
      server->GetHealthCheckService()->SetServingStatus(false);
    }
  };
  options.engine.observe = !options.metrics_listen.empty();
  s->engine_ = std::make_unique<Engine>(options.engine, clock, s->timers_.get(),
                                        s->bus_.get(), s->journal_.get());
  if (!options.otlp_endpoint.empty()) {
    otlp::ExporterOptions eo;
    eo.endpoint = options.otlp_endpoint;
    eo.service_name = "forged";
    absl::StatusOr<std::unique_ptr<otlp::SpanExporter>> spans =
        otlp::SpanExporter::Start(std::move(eo));
    if (!spans.ok()) return spans.status();
    s->spans_ = *std::move(spans);
    s->engine_->SetSpanExporter(s->spans_.get());
  }
  {
    absl::StatusOr<RecoveryStats> recovered = s->engine_->Recover();
    if (!recovered.ok()) return recovered.status();
    s->recovery_ = *recovered;
  }
  for (const auto& [name, config] : options.queues) {
    s->engine_->scheduler().Configure(name, config);
  }
  if (!options.runner.profiles.empty()) {
    Engine* engine = s->engine_.get();
    exec::RunnerSink sink;
    sink.result = [engine](const std::string& executor_id, uint64_t ticket,
                           const v1::TaskResult& result) {
      engine->OnResult(executor_id, ticket, result, nullptr);
    };
    sink.output = [engine](const v1::TaskOutput& output) {
      return engine->OnOutput(output);
    };
    sink.started = [engine](const v1::Lease& lease) {
      engine->OnStarted(lease).IgnoreError();  // fenced; best effort
    };
    absl::StatusOr<std::unique_ptr<exec::CommandRunner>> runner =
        exec::CommandRunner::Start(options.runner, s->timers_.get(), std::move(sink));
    if (!runner.ok()) return runner.status();
    s->runner_ = *std::move(runner);
    exec::CommandRunner* r = s->runner_.get();
    engine->SetSpecValidator(
        [r](const v1::GraphSpec& spec) { return r->ValidateSpec(spec); });
    for (const exec::CommandRunner::ProfileExecutor& e : r->executors()) {
      engine->AttachExecutor(e.executor, e.queues, e.slots,
                             absl::StrCat("runner:", e.name));
    }
  }
  s->orchestrator_ = std::make_unique<api::OrchestratorService>(
      s->engine_.get(), s->timers_.get(), options.watch);
  s->workers_ = std::make_unique<api::WorkerServiceImpl>(s->engine_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (!options.metrics_listen.empty()) {
    s->rpc_metrics_ = std::make_unique<obs::RpcMetrics>(obs::MethodsOf(
        {"forge.v1.Orchestrator", "forge.v1.WorkerService", "grpc.health.v1.Health"}));
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
        interceptors;
    interceptors.push_back(s->rpc_metrics_->Factory());
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(),
                           &s->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(s->orchestrator_.get());
  builder.RegisterService(s->workers_.get());
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen));
  }
  if (!options.metrics_listen.empty()) {
    Engine* engine = s->engine_.get();
    absl::StatusOr<std::unique_ptr<obs::MetricsServer>> metrics =
        obs::MetricsServer::Start(
            options.metrics_listen,
            std::make_shared<obs::ScrapeCollector>(
                [src = Sources{engine, s->runner_.get(), s->journal_.get(),
                               s->rpc_metrics_.get(), s->spans_.get()}] {
                  return Collect(src);
                }));
    if (!metrics.ok()) return metrics.status();
    s->metrics_ = *std::move(metrics);
  }
  s->server_->GetHealthCheckService()->SetServingStatus(
      s->journal_ == nullptr || s->journal_->health().ok());
  s->serving_.store(s->server_.get());
  return s;
}

ForgeServer::~ForgeServer() {
  Shutdown(absl::ZeroDuration());
  // Reverse order of construction: the server (and its reactors) go first.
  metrics_.reset();
  serving_.store(nullptr);
  server_.reset();
  runner_.reset();
  timers_->Shutdown();
  // The journal's last dones call into the engine: they run (or fail) now,
  // while it is still there.
  if (journal_) {
    journal_->Flush();
    journal_.reset();
  }
}

int ForgeServer::metrics_port() const { return metrics_ ? metrics_->port() : 0; }

std::string ForgeServer::address() const {
  const std::string& l = options_.listen;
  const size_t colon = l.rfind(':');
  return absl::StrCat(colon == std::string::npos ? l : l.substr(0, colon), ":",
                      port_);
}

void ForgeServer::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  if (!server_) return;
  // Stop intake, let running attempts finish within the grace (their results
  // are still accepted), then end every call: workers see their streams end
  // with UNAVAILABLE and reconnect elsewhere or later.
  server_->GetHealthCheckService()->SetServingStatus(false);
  engine_->Drain(absl::Now() + grace);
  engine_->Abandon();
  // Runner processes still going after the grace: SIGTERM, then SIGKILL.
  if (runner_) runner_->Shutdown(std::min(grace, runner_->config().kill_grace));
  // Streams (workers, watchers) never end by themselves: a short moment for
  // unary calls in flight, then everything is cancelled.
  server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Milliseconds(200)));
}

void ForgeServer::Wait() {
  if (server_) server_->Wait();
}

}  // namespace forge
