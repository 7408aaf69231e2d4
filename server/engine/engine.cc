#include "server/engine/engine.h"

#include <future>
#include <map>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "absl/time/clock.h"
#include "common/ids.h"
#include "common/proto_time.h"
#include "common/trace_context.h"
#include "forge/journal/v1/records.pb.h"
#include "server/store/records.h"

namespace forge {


Engine::Engine(EngineOptions options, Clock* clock, TimerService* timers,
               events::EventBus* bus, persist::Journal* journal)
    : options_(std::move(options)),
      journal_(journal),
      clock_(clock),
      timers_(timers),
      bus_(*bus),
      store_(options_.store, journal),
      scheduler_(options_.default_queue) {}

Engine::~Engine() = default;

EngineCounters Engine::counters() const {
  EngineCounters c;
  c.graphs_submitted = graphs_submitted_.load();
  c.graphs_succeeded = graphs_succeeded_.load();
  c.graphs_failed = graphs_failed_.load();
  c.graphs_cancelled = graphs_cancelled_.load();
  c.tasks_submitted = tasks_submitted_.load();
  c.tasks_dispatched = tasks_dispatched_.load();
  c.leases_lost = leases_lost_.load();
  c.stale_results = stale_results_.load();
  return c;
}

// --- Clients -----------------------------------------------------------------

absl::Status Engine::Admit() const {
  if (journal_ == nullptr) return absl::OkStatus();
  if (absl::Status h = journal_->health(); !h.ok()) {
    return absl::UnavailableError(
        absl::StrCat("the journal failed, nothing can be made durable: ", h.message()));
  }
  if (journal_failed_.load()) {
    return absl::UnavailableError("the journal refused a transition; restart the server");
  }
  const persist::JournalStats st = journal_->stats();
  if (st.disk_full) {
    return absl::ResourceExhaustedError(
        "the journal's disk is full; retry once space has been freed");
  }
  if (st.pending_bytes > options_.max_journal_backlog_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the journal is ", st.pending_bytes, " bytes behind; retry shortly"));
  }
  return absl::OkStatus();
}

void Engine::Submit(v1::SubmitGraphRequest request,
                    Done<v1::SubmitGraphResponse> done,
                    const std::string& traceparent) {
  std::optional<TraceContext> caller;
  if (!traceparent.empty()) caller = ParseTraceparent(traceparent);
  if (spans_ != nullptr && (!caller || caller->sampled)) {
    // The submit's own span (SERVER), in the caller's trace when it sent one
    // (and did not mark it "not sampled").
    done = [this, caller, start = clock_->Now(), done = std::move(done)](
               absl::StatusOr<v1::SubmitGraphResponse> r) mutable {
      otlp::Span span;
      span.name = "forge.v1.Orchestrator/SubmitGraph";
      span.kind = otlp::SpanKind::kServer;
      span.start = start;
      span.end = clock_->Now();
      if (r.ok()) {
        span.trace_id = caller ? caller->trace_id : GraphTraceId(r->graph_id());
        span.attributes.push_back({"forge.graph.id", r->graph_id()});
      } else {
        span.trace_id = caller ? caller->trace_id : NewTraceId();
        span.status = otlp::StatusCode::kError;
        span.status_message = std::string(r.status().message());
      }
      span.span_id = NewSpanId();
      if (caller) span.parent_span_id = caller->span_id;
      span.attributes.push_back({"rpc.system", std::string("grpc")});
      span.attributes.push_back({"rpc.service", std::string("forge.v1.Orchestrator")});
      span.attributes.push_back({"rpc.method", std::string("SubmitGraph")});
      span.attributes.push_back(
          {"rpc.grpc.status_code", static_cast<int64_t>(r.status().code())});
      spans_->Export(std::move(span));
      done(std::move(r));
    };
  }
  if (draining()) {
    done(absl::UnavailableError("server is shutting down; retry elsewhere"));
    return;
  }
  if (absl::Status s = Admit(); !s.ok()) {
    done(s);
    return;
  }
  if (static_cast<int64_t>(request.request_id().size()) >
      options_.max_request_id_bytes) {
    done(absl::InvalidArgumentError(absl::StrCat(
        "request_id: ", request.request_id().size(),
        " bytes exceeds the limit of ", options_.max_request_id_bytes)));
    return;
  }
  if (!request.has_graph()) {
    done(absl::InvalidArgumentError("graph: required"));
    return;
  }
  absl::StatusOr<graph::CompiledGraph> compiled =
      graph::Compile(request.graph(), options_.limits);
  if (!compiled.ok()) {
    done(absl::Status(compiled.status().code(),
                      absl::StrCat("graph.", compiled.status().message())));
    return;
  }
  if (validator_) {
    if (absl::Status s = validator_(request.graph()); !s.ok()) {
      done(absl::Status(s.code(), absl::StrCat("graph.", s.message())));
      return;
    }
  }
  const absl::Time now = clock_->Now();
  const std::string id = NewUlid(now);
  const int32_t tasks = request.graph().tasks_size();
  // The event log exists before the graph can be seen, so a Watch opened
  // right after the reply never finds the graph without its log.
  // A fresh ULID cannot collide; the bus's status only flags misuse.
  bus_.CreateGraph(id, {request.graph().labels().begin(),
                        request.graph().labels().end()})
      .IgnoreError();
  absl::StatusOr<store::InsertResult> inserted =
      store_.Insert(id, request.request_id(), std::move(*request.mutable_graph()),
                    *std::move(compiled), now,
                    caller ? caller->trace_id : std::string(),
                    caller ? caller->span_id : std::string(),
                    !caller || caller->sampled);
  if (!inserted.ok() || !inserted->created) bus_.DropGraph(id);
  if (!inserted.ok()) {
    done(inserted.status());
    return;
  }
  v1::SubmitGraphResponse response;
  response.set_graph_id(inserted->graph_id);
  response.set_created(inserted->created);
  if (inserted->created) {
    graphs_submitted_.fetch_add(1, std::memory_order_relaxed);
    tasks_submitted_.fetch_add(tasks, std::memory_order_relaxed);
  }
  // The reply waits until the graph is durable (a repeated request_id: until
  // the graph it names is, behind the barrier the store committed).
  const bool created = inserted->created;
  Apply(std::move(inserted->effects),
        [this, created, id, done = std::move(done),
         response = std::move(response)](absl::Status s) mutable {
          if (s.ok()) {
            done(std::move(response));
            return;
          }
          if (created) {  // never acknowledged: gone again
            store_.Erase(id).IgnoreError();
            bus_.DropGraph(id);
          }
          done(s);
        });
}

void Engine::CancelGraph(const v1::CancelGraphRequest& request,
                         Done<v1::CancelGraphResponse> done) {
  if (request.graph_id().empty()) {
    done(absl::InvalidArgumentError("graph_id: required"));
    return;
  }
  if (absl::Status s = Admit(); !s.ok()) {
    done(s);
    return;
  }
  absl::StatusOr<store::Effects> fx = store_.CancelGraph(
      request.graph_id(), request.reason(), clock_->Now());
  if (!fx.ok()) {
    done(fx.status());
    return;
  }
  Apply(*std::move(fx), [this, id = request.graph_id(),
                         done = std::move(done)](absl::Status s) mutable {
    absl::StatusOr<v1::Graph> g =
        s.ok() ? store_.GetGraph(id, v1::BASIC) : absl::StatusOr<v1::Graph>(s);
    if (!g.ok()) {
      done(g.status());
      return;
    }
    v1::CancelGraphResponse response;
    response.set_state(g->state());
    done(std::move(response));
  });
}

void Engine::CancelTask(const v1::CancelTaskRequest& request,
                        Done<v1::CancelTaskResponse> done) {
  if (request.graph_id().empty()) {
    done(absl::InvalidArgumentError("graph_id: required"));
    return;
  }
  if (request.task().empty()) {
    done(absl::InvalidArgumentError("task: required"));
    return;
  }
  if (absl::Status s = Admit(); !s.ok()) {
    done(s);
    return;
  }
  absl::StatusOr<store::Effects> fx = store_.CancelTask(
      request.graph_id(), request.task(), request.reason(), clock_->Now());
  if (!fx.ok()) {
    done(fx.status());
    return;
  }
  Apply(*std::move(fx), [this, id = request.graph_id(), task = request.task(),
                         done = std::move(done)](absl::Status s) mutable {
    absl::StatusOr<v1::Task> t =
        s.ok() ? store_.GetTask(id, task) : absl::StatusOr<v1::Task>(s);
    if (!t.ok()) {
      done(t.status());
      return;
    }
    v1::CancelTaskResponse response;
    response.set_state(t->state());
    done(std::move(response));
  });
}

absl::StatusOr<v1::Graph> Engine::GetGraph(const std::string& graph_id,
                                           v1::GraphView view) const {
  if (graph_id.empty()) return absl::InvalidArgumentError("graph_id: required");
  return store_.GetGraph(graph_id, view);
}

absl::StatusOr<v1::Task> Engine::GetTask(const std::string& graph_id,
                                         const std::string& task) const {
  if (graph_id.empty()) return absl::InvalidArgumentError("graph_id: required");
  if (task.empty()) return absl::InvalidArgumentError("task: required");
  return store_.GetTask(graph_id, task);
}

absl::StatusOr<v1::ListGraphsResponse> Engine::ListGraphs(
    const v1::ListGraphsRequest& request) const {
  return store_.ListGraphs(request);
}

absl::Status Engine::WhenTerminal(const std::string& graph_id,
                                  store::TerminalWaiter waiter) {
  if (graph_id.empty()) return absl::InvalidArgumentError("graph_id: required");
  absl::StatusOr<store::Effects> fx =
      store_.AddTerminalWaiter(graph_id, std::move(waiter));
  if (!fx.ok()) return fx.status();
  Apply(*std::move(fx));
  return absl::OkStatus();
}

namespace {

// The event log of a graph that has left memory, read from the journal a
// batch at a time. The graph is finished: everything is there at once, so
// notify is never needed (the consumer calls Next() until the end), there
// is no lag and nothing to cut off.
class ArchivedLog final : public events::Subscription {
 public:
  ArchivedLog(const store::Store& store, std::string graph_id, int64_t after_seq,
              int64_t last_seq, std::shared_ptr<std::atomic<int64_t>> open)
      : store_(store),
        graph_id_(std::move(graph_id)),
        pos_(after_seq),
        last_seq_(last_seq),
        open_(std::move(open)) {
    open_->fetch_add(1, std::memory_order_relaxed);
  }
  ~ArchivedLog() override { Close(); }

  Batch Next(size_t max) override {
    Batch b;
    absl::MutexLock lock(&mu_);
    if (closed_) {
      b.error = absl::CancelledError("subscription closed");
      return b;
    }
    if (ended_) {
      b.end = true;
      return b;
    }
    if (pos_ < last_seq_) {
      b.error = store_.ReadEvents(graph_id_, pos_, max, &b.events);
      if (!b.error.ok()) {
        b.events.clear();
        return b;
      }
    }
    // A graph subscription ends with the graph's terminal event.
    for (size_t i = 0; i < b.events.size(); ++i) {
      const v1::EventType t = b.events[i].type();
      if (t == v1::GRAPH_SUCCEEDED || t == v1::GRAPH_FAILED || t == v1::GRAPH_CANCELLED) {
        b.events.resize(i + 1);
        ended_ = true;
        break;
      }
    }
    if (!b.events.empty()) pos_ = b.events.back().seq();
    // Past the last event journaled (or nothing more there: erased by
    // retention meanwhile): nothing more will come.
    if (b.events.empty() || pos_ >= last_seq_) ended_ = true;
    b.end = ended_;
    return b;
  }
  size_t Lag() const override { return 0; }
  bool Overflowed() const override { return false; }
  void Close() override {
    absl::MutexLock lock(&mu_);
    if (!closed_) open_->fetch_sub(1, std::memory_order_relaxed);
    closed_ = true;
  }

 private:
  const store::Store& store_;
  const std::string graph_id_;
  absl::Mutex mu_;
  int64_t pos_ ABSL_GUARDED_BY(mu_);
  const int64_t last_seq_;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  // Open subscriptions of this kind (the engine's count, for metrics).
  const std::shared_ptr<std::atomic<int64_t>> open_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<events::Subscription>> Engine::SubscribeGraph(
    const std::string& graph_id, int64_t after_seq, absl::AnyInvocable<void()> notify) {
  absl::StatusOr<std::shared_ptr<events::Subscription>> sub =
      bus_.SubscribeGraph(graph_id, after_seq, std::move(notify));
  if (!absl::IsNotFound(sub.status())) return sub;
  // Not in the bus: left memory (archived), or unknown.
  absl::StatusOr<v1::Graph> g = store_.GetGraph(graph_id, v1::BASIC);
  if (!g.ok() || !store_.IsArchived(graph_id)) return sub;
  return std::shared_ptr<events::Subscription>(
      std::make_shared<ArchivedLog>(store_, graph_id, after_seq, g->last_seq(),
                                    archived_watchers_));
}

absl::StatusOr<RecoveryStats> Engine::Recover() {
  RecoveryStats stats;
  if (journal_ == nullptr) return stats;
  const absl::Time start = absl::Now();
  absl::Status failed;

  RETURN_IF_ERROR(journal_->Scan(
      store::kRequestsPrefix, persist::PrefixEnd(store::kRequestsPrefix),
      [&](absl::string_view key, absl::string_view value) {
        forge::journal::v1::RequestRecord r;
        failed = store::ParseRecord(key, value, &r);
        if (!failed.ok()) return false;
        store_.RestoreRequest(std::string(key.substr(store::kRequestsPrefix.size())), r);
        return true;
      }));
  RETURN_IF_ERROR(failed);

  // Keys come grouped by graph: its events (seq order), spec, state, tasks.
  std::string current;
  store::RecoveredGraph rec;
  // Shared as they are read: the bus keeps these very objects.
  std::vector<std::shared_ptr<const v1::Event>> events;
  // Parsed into, then its event swapped out: one record object for all.
  forge::journal::v1::EventRecord event_record;
  bool have_spec = false;
  // Recovery accepts every graph the journal holds, whatever today's limits.
  const graph::Limits unlimited = graph::NoSizeLimits();
  // A big spec (a 1,000,000-task graph's is ~40 MB) is parsed and compiled
  // on a thread of its own while the scan goes on through the graph's
  // state and task records; the graph's finish waits for it.
  struct ParsedSpec {
    absl::Status parsed;
    forge::journal::v1::GraphSpecRecord spec;
    absl::StatusOr<graph::CompiledGraph> compiled;
  };
  constexpr size_t kSpecBytesForAThread = 1 << 20;
  std::future<ParsedSpec> spec_in_flight;
  auto reset = [&]() {
    current.clear();
    rec = store::RecoveredGraph();
    events.clear();
    have_spec = false;
  };
  auto finish = [&]() -> absl::Status {
    if (current.empty()) return absl::OkStatus();
    if (!have_spec) {
      return absl::DataLossError(
          absl::StrCat("journal: graph ", current, " has records but no spec"));
    }
    std::optional<absl::StatusOr<graph::CompiledGraph>> precompiled;
    if (spec_in_flight.valid()) {
      ParsedSpec parsed = spec_in_flight.get();
      RETURN_IF_ERROR(parsed.parsed);
      rec.spec = std::move(parsed.spec);
      precompiled = std::move(parsed.compiled);
    }
    const v1::GraphSpec& spec = rec.spec.spec();
    const bool terminal = rec.state.state() != v1::GRAPH_STATE_UNSPECIFIED &&
                          rec.state.state() != v1::GRAPH_STATE_RUNNING;
    const absl::Time finished_at =
        terminal ? FromProto(rec.state.finished_at()) : absl::InfinitePast();
    stats.events += static_cast<int64_t>(events.size());
    stats.tasks += spec.tasks_size();
    ++stats.graphs;
    if (terminal && journal_ != nullptr && options_.memory_retention < options_.retention &&
        finished_at + options_.memory_retention <= clock_->Now()) {
      // History: it stays on disk (nothing compiled, no event in memory).
      RETURN_IF_ERROR(store_.RestoreArchived(rec));
      ScheduleExpiry(current, finished_at);
      ++stats.archived_graphs;
      reset();
      return absl::OkStatus();
    }
    absl::StatusOr<graph::CompiledGraph> compiled =
        precompiled ? *std::move(precompiled) : graph::Compile(spec, unlimited);
    if (!compiled.ok()) {
      return absl::DataLossError(absl::StrCat("journal: graph ", current,
                                              ": ", compiled.status().message()));
    }
    RETURN_IF_ERROR(bus_.CreateGraph(current, {spec.labels().begin(), spec.labels().end()}));
    RETURN_IF_ERROR(bus_.PublishShared(current, std::move(events)));
    for (const auto& [i, t] : rec.tasks) stats.restarted_attempts += t.state() == v1::RUNNING;
    const std::string id = current;
    ASSIGN_OR_RETURN(store::Effects fx,
                     store_.Restore(std::move(rec), *std::move(compiled), clock_->Now()));
    if (terminal) {
      ScheduleExpiry(id, finished_at);
      ScheduleArchive(id, finished_at);
    } else {
      ++stats.live_graphs;
    }
    Apply(std::move(fx));
    reset();
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(journal_->Scan(
      store::kGraphsPrefix, persist::PrefixEnd(store::kGraphsPrefix),
      [&](absl::string_view key, absl::string_view value) {
        store::GraphKey k = store::ParseGraphKey(key);
        if (k.kind == store::GraphKey::kUnknown) {
          failed = absl::FailedPreconditionError(
              absl::StrCat("journal key ", key, " is not one this server knows"));
          return false;
        }
        if (k.graph_id != current) {
          failed = finish();
          if (!failed.ok()) return false;
          current = k.graph_id;
        }
        switch (k.kind) {
          case store::GraphKey::kEvent: {
            forge::journal::v1::EventRecord& r = event_record;
            failed = store::ParseRecord(key, value, &r);
            if (!failed.ok()) return false;
            if (r.event().seq() != k.seq || k.seq != rec.last_seq + 1) {
              failed = absl::DataLossError(absl::StrCat(
                  "journal: graph ", current, ": event ", k.seq, " follows ",
                  rec.last_seq, " (events must be dense from 1)"));
              return false;
            }
            rec.last_seq = k.seq;
            auto event = std::make_shared<v1::Event>();
            event->Swap(r.mutable_event());
            if (event->graph_id().empty()) event->set_graph_id(current);
            events.push_back(std::move(event));
            break;
          }
          case store::GraphKey::kSpec:
            if (value.size() >= kSpecBytesForAThread) {
              spec_in_flight = std::async(
                  std::launch::async,
                  [key = std::string(key), value = std::string(value), &unlimited]() {
                    ParsedSpec p;
                    p.parsed = store::ParseRecord(key, value, &p.spec);
                    if (p.parsed.ok()) p.compiled = graph::Compile(p.spec.spec(), unlimited);
                    return p;
                  });
              have_spec = true;  // a parse error comes out at the graph's finish
              break;
            }
            failed = store::ParseRecord(key, value, &rec.spec);
            have_spec = failed.ok();
            break;
          case store::GraphKey::kState:
            failed = store::ParseRecord(key, value, &rec.state);
            break;
          case store::GraphKey::kTask: {
            auto& [index, r] = rec.tasks.emplace_back();
            index = k.index;
            failed = store::ParseRecord(key, value, &r);
            break;
          }
          case store::GraphKey::kUnknown:
            break;
        }
        return failed.ok();
      }));
  RETURN_IF_ERROR(failed);
  RETURN_IF_ERROR(finish());
  stats.took = absl::Now() - start;
  return stats;
}

bool Engine::Drain(absl::Time deadline) {
  draining_.store(true, std::memory_order_release);
  scheduler_.SetPaused(true);
  return scheduler_.AwaitIdle(deadline);
}

// --- Effects -----------------------------------------------------------------

void Engine::Apply(store::Effects fx, Ack then) {
  // A deadline timer is armed at once: its expiry is a transition of its
  // own, journaled after this one.
  if (fx.deadline_shard >= 0) ArmDeadline(fx.deadline_shard, fx.deadline_due);
  std::shared_ptr<persist::Durability> durable = std::move(fx.durable);
  if (durable == nullptr) {
    ApplyNow(std::move(fx));
    if (then) then(absl::OkStatus());
    return;
  }
  durable->Then([this, fx = std::move(fx), then = std::move(then)](absl::Status s) mutable {
    if (s.ok()) {
      ApplyNow(std::move(fx));
    } else {
      NotDurable(s);
    }
    if (then) then(s);
  });
}

void Engine::ArmDeadline(int shard, absl::Time due) {
  timers_->Schedule(due, [this, shard, due]() {
    store::Store::DeadlineSweep sweep = store_.ExpireDeadlines(shard, due, clock_->Now());
    for (store::Effects& fx : sweep.effects) Apply(std::move(fx));
    if (sweep.rearm != absl::InfiniteFuture()) ArmDeadline(shard, sweep.rearm);
  });
}

void Engine::NotDurable(const absl::Status& status) {
  // Only a failed journal (or one past its hard backlog limit, far above
  // what Admit lets in) refuses what a transition committed; the disk-full
  // case waits for space instead. What that transition would have made
  // visible is dropped, so the server stops taking writes.
  if (!journal_failed_.exchange(true) && options_.on_journal_failure) {
    options_.on_journal_failure(status);
  }
}

void Engine::ScheduleArchive(const std::string& graph_id, absl::Time finished_at) {
  if (journal_ == nullptr || options_.memory_retention >= options_.retention) return;
  timers_->Schedule(finished_at + options_.memory_retention, [this, graph_id]() {
    absl::StatusOr<bool> archived = store_.Archive(graph_id);
    // Subscribers reading the log keep it; new ones read the journal.
    if (archived.ok() && *archived) bus_.ForgetGraph(graph_id);
  });
}

void Engine::ScheduleExpiry(const std::string& graph_id, absl::Time finished_at) {
  timers_->Schedule(finished_at + options_.retention, [this, graph_id]() {
    absl::StatusOr<store::Effects> fx = store_.Erase(graph_id);
    if (!fx.ok()) return;  // already gone
    Apply(*std::move(fx), [this, graph_id](absl::Status) { bus_.DropGraph(graph_id); });
  });
}

void Engine::Observe(const store::Effects& fx) {
  // Per-queue metrics, looked up once per run of events of one queue.
  const std::string* last_queue = nullptr;
  obs::QueueTaskMetrics* qm = nullptr;
  auto metrics_for = [&](const std::string& queue) -> obs::QueueTaskMetrics& {
    if (last_queue == nullptr || *last_queue != queue) {
      qm = &task_metrics_.For(queue);
      last_queue = &queue;
    }
    return *qm;
  };
  for (const v1::Event& e : fx.events) {
    switch (e.type()) {
      case v1::TASK_SUCCEEDED:
        metrics_for(e.queue()).succeeded.fetch_add(1, std::memory_order_relaxed);
        break;
      case v1::TASK_FAILED:
      case v1::TASK_RETRY_SCHEDULED: {
        obs::QueueTaskMetrics& m = metrics_for(e.queue());
        (e.type() == v1::TASK_FAILED ? m.failed : m.retries)
            .fetch_add(1, std::memory_order_relaxed);
        const std::string& code = e.error().code();
        if (code == "TIMEOUT" || code == "SCHEDULE_TIMEOUT") {
          m.timeouts.fetch_add(1, std::memory_order_relaxed);
        }
        break;
      }
      case v1::TASK_CANCELLED:
        metrics_for(e.queue()).cancelled.fetch_add(1, std::memory_order_relaxed);
        break;
      case v1::TASK_SKIPPED:
        metrics_for(e.queue()).skipped.fetch_add(1, std::memory_order_relaxed);
        break;
      case v1::GRAPH_SUCCEEDED:
        graphs_succeeded_.fetch_add(1, std::memory_order_relaxed);
        break;
      case v1::GRAPH_FAILED:
        graphs_failed_.fetch_add(1, std::memory_order_relaxed);
        break;
      case v1::GRAPH_CANCELLED:
        graphs_cancelled_.fetch_add(1, std::memory_order_relaxed);
        break;
      default:
        break;
    }
  }
  for (const store::ReadyTask& r : fx.ready) {
    if (r.first_ready) metrics_for(r.queue).dependency_wait.Observe(r.dependency_wait);
  }
  for (const store::FinishedAttempt& a : fx.finished_attempts) {
    obs::QueueTaskMetrics& m = metrics_for(a.queue);
    if (a.picked_up_with_result) m.pickup.Observe(a.finished_at - a.dispatched_at);
    if (a.outcome == v1::CANCELLED) continue;  // stopped, not run to its end
    const absl::Time began = a.picked_up_at == absl::InfinitePast()
                                 ? a.dispatched_at
                                 : a.picked_up_at;
    m.run.Observe(a.finished_at - began);
  }
}

void Engine::ExportSpans(const store::Effects& fx) {
  if (fx.trace_id.empty() || !fx.trace_sampled) return;
  auto attr = [](otlp::Span& s, const char* key, otlp::AttributeValue v) {
    s.attributes.push_back({key, std::move(v)});
  };
  const std::string graph_span = GraphSpanId(fx.graph_id);
  for (const store::FinishedAttempt& a : fx.finished_attempts) {
    otlp::Span attempt;
    attempt.trace_id = fx.trace_id;
    attempt.span_id = AttemptSpanId(fx.graph_id, a.index, a.attempt);
    attempt.parent_span_id = graph_span;
    attempt.name = "forge.task";
    attempt.kind = otlp::SpanKind::kInternal;
    attempt.start = a.ready_at;
    attempt.end = a.finished_at;
    attr(attempt, "forge.graph.id", fx.graph_id);
    attr(attempt, "forge.task.name", a.task);
    attr(attempt, "forge.task.attempt", static_cast<int64_t>(a.attempt));
    attr(attempt, "forge.queue", a.queue);
    attr(attempt, "forge.worker.id", a.worker_id);
    attr(attempt, "forge.task.outcome",
         std::string(a.retrying ? "retrying" : v1::TaskState_Name(a.outcome)));
    if (a.outcome == v1::SUCCEEDED) {
      attempt.status = otlp::StatusCode::kOk;
    } else {
      attempt.status = otlp::StatusCode::kError;
      attempt.status_message = a.error_message;
      if (!a.error_code.empty()) attr(attempt, "error.type", a.error_code);
    }
    // The attempt's two parts, children of its span.
    auto part = [&](const char* name, absl::Time start, absl::Time end) {
      otlp::Span p;
      p.trace_id = fx.trace_id;
      p.span_id = DeriveSpanId(absl::StrCat(name, "/", attempt.span_id));
      p.parent_span_id = attempt.span_id;
      p.name = name;
      p.start = start;
      p.end = end;
      attr(p, "forge.graph.id", fx.graph_id);
      return p;
    };
    otlp::Span wait = part("forge.task.queue_wait", a.ready_at, a.dispatched_at);
    attr(wait, "forge.queue", a.queue);
    otlp::Span run = part("forge.task.run", a.dispatched_at, a.finished_at);
    attr(run, "forge.worker.id", a.worker_id);
    if (a.picked_up_at != absl::InfinitePast()) {
      attr(run, "forge.task.pickup_seconds",
           absl::ToDoubleSeconds(a.picked_up_at - a.dispatched_at));
    }
    run.status = attempt.status;
    spans_->Export(std::move(wait));
    spans_->Export(std::move(run));
    spans_->Export(std::move(attempt));
  }
  if (fx.terminal_graph.has_value() && !fx.events.empty()) {
    const v1::Graph& g = *fx.terminal_graph;
    otlp::Span span;
    span.trace_id = fx.trace_id;
    span.span_id = graph_span;
    span.parent_span_id = fx.trace_parent_span_id;
    span.name = "forge.graph";
    span.kind = otlp::SpanKind::kInternal;
    span.start = FromProto(g.created_at());
    span.end = FromProto(g.finished_at());
    attr(span, "forge.graph.id", fx.graph_id);
    attr(span, "forge.graph.name", g.name());
    attr(span, "forge.graph.state", v1::GraphState_Name(g.state()));
    attr(span, "forge.graph.tasks", static_cast<int64_t>(g.counts().pending() +
        g.counts().ready() + g.counts().running() + g.counts().succeeded() +
        g.counts().failed() + g.counts().cancelled() + g.counts().skipped()));
    span.status = g.state() == v1::GRAPH_STATE_SUCCEEDED ? otlp::StatusCode::kOk
                                                          : otlp::StatusCode::kError;
    spans_->Export(std::move(span));
  }
}

void Engine::ApplyNow(store::Effects fx) {
  if (options_.observe) Observe(fx);
  if (spans_ != nullptr) ExportSpans(fx);
  // The transition that finished the graph (not a waiter's read of it).
  const bool finished = fx.terminal_graph.has_value() && !fx.events.empty();
  if (finished) ScheduleExpiry(fx.graph_id, FromProto(fx.terminal_graph->finished_at()));
  if (!fx.events.empty()) {
    // The store assigned dense seqs; a log the bus declared broken already
    // ends its subscribers with DATA_LOSS, so there is nothing more to do.
    bus_.Publish(fx.graph_id, std::move(fx.events)).IgnoreError();
  }
  // After the terminal events are in the bus: archiving forgets the log.
  if (finished) ScheduleArchive(fx.graph_id, FromProto(fx.terminal_graph->finished_at()));
  if (!fx.ready.empty()) {
    std::vector<std::string> queues;
    for (store::ReadyTask& r : fx.ready) {
      if (queues.empty() || queues.back() != r.queue) queues.push_back(r.queue);
      scheduler_.Enqueue(r.queue, sched::QueuedTask{std::move(r.graph_id),
                                                    r.index, r.priority,
                                                    r.ready_seq,
                                                    std::move(r.ordering_key)});
    }
    std::sort(queues.begin(), queues.end());
    queues.erase(std::unique(queues.begin(), queues.end()), queues.end());
    for (const std::string& q : queues) Pump(q);
  }
  for (const store::RetryTimer& rt : fx.retries) {
    timers_->Schedule(rt.due, [this, rt]() {
      Apply(store_.RetryDue(rt, clock_->Now()));
    });
  }
  for (store::AttemptTimer& at : fx.attempt_timers) {
    const absl::Time due = at.due;
    timers_->Schedule(due, [this, at = std::move(at)]() {
      Apply(store_.AttemptTimerDue(at, clock_->Now()));
    });
  }
  for (const store::CancelOrder& c : fx.cancels) {
    if (std::shared_ptr<sched::Executor> e = FindExecutor(c.worker_id)) {
      e->Cancel(c.lease, c.reason);
    }
  }
  if (!fx.waiters.empty() && fx.terminal_graph.has_value()) {
    for (store::TerminalWaiter& w : fx.waiters) w(*fx.terminal_graph);
  }
}

void Engine::Pump(const std::string& queue) {
  // Batches per executor, so several assignments share one stream write.
  struct Batch {
    std::shared_ptr<sched::Executor> executor;
    std::vector<sched::Dispatch> dispatches;
    // Durable mode: each attempt's records; it is handed over once they are.
    std::vector<std::shared_ptr<persist::Durability>> durables;
  };
  std::map<std::string, Batch> batches;
  obs::QueueTaskMetrics* queue_metrics = nullptr;
  while (std::optional<sched::Match> m = scheduler_.Take(queue)) {
    const std::string& executor_id = m->executor->id();
    absl::StatusOr<store::StartResult> started = store_.StartAttempt(
        m->task.graph_id, m->task.index, executor_id, clock_->Now(),
        m->executor->needs_heartbeat());
    if (!started.ok()) {
      // Cancelled or gone since it was queued: give the reservation back.
      scheduler_.Release(m->ticket);
      continue;
    }
    tasks_dispatched_.fetch_add(1, std::memory_order_relaxed);
    if (options_.observe) {
      if (queue_metrics == nullptr) queue_metrics = &task_metrics_.For(started->queue);
      queue_metrics->queue_wait.Observe(started->queue_wait);
    }
    Batch& batch = batches[executor_id];
    if (!batch.executor) batch.executor = m->executor;
    batch.dispatches.push_back(
        sched::Dispatch{std::move(started->assignment), m->ticket});
    if (started->effects.durable) batch.durables.push_back(started->effects.durable);
    Apply(std::move(started->effects));
  }
  for (auto& [id, batch] : batches) {
    if (batch.durables.empty()) {
      HandOver(id, std::move(batch.executor), std::move(batch.dispatches));
      continue;
    }
    // The journal resolves in commit order: once the last attempt's records
    // are durable, so are the others' (or they failed).
    std::shared_ptr<persist::Durability> last = batch.durables.back();
    last->Then([this, executor_id = id, batch = std::move(batch)](absl::Status) mutable {
      std::vector<sched::Dispatch> ready;
      for (size_t i = 0; i < batch.dispatches.size(); ++i) {
        if (batch.durables[i]->status().ok()) {
          ready.push_back(std::move(batch.dispatches[i]));
        } else {  // never visible: the reservation goes back
          scheduler_.Release(batch.dispatches[i].ticket);
        }
      }
      if (!ready.empty()) {
        HandOver(executor_id, std::move(batch.executor), std::move(ready));
      }
    });
  }
}

void Engine::HandOver(const std::string& executor_id,
                      std::shared_ptr<sched::Executor> executor,
                      std::vector<sched::Dispatch> dispatches) {
  std::vector<HeldLease> held;
  held.reserve(dispatches.size());
  for (const sched::Dispatch& d : dispatches) {
    held.push_back(HeldLease{d.assignment.lease(), d.ticket});
  }
  if (!executor->Assign(std::move(dispatches))) {
    // The executor closed between the match and the hand-over.
    for (const HeldLease& h : held) {
      scheduler_.Release(h.ticket);
      LoseLease(h.lease, absl::StrCat("executor ", executor_id, " closed"));
    }
  }
}

void Engine::PumpExecutorQueues(const std::string& executor_id) {
  for (const std::string& q : scheduler_.QueuesOf(executor_id)) Pump(q);
}

std::shared_ptr<sched::Executor> Engine::FindExecutor(
    const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = executors_.find(id);
  return it == executors_.end() ? nullptr : it->second;
}

void Engine::LoseLease(const v1::Lease& lease, const std::string& why) {
  v1::TaskResult lost;
  *lost.mutable_lease() = lease;
  lost.set_success(false);
  lost.mutable_error()->set_code("LEASE_LOST");
  lost.mutable_error()->set_message(why);
  absl::StatusOr<store::Effects> fx = store_.Complete(lost, clock_->Now());
  if (fx.ok()) {
    leases_lost_.fetch_add(1, std::memory_order_relaxed);
    Apply(*std::move(fx));
  }
}

// --- Executors ---------------------------------------------------------------

void Engine::AttachExecutor(std::shared_ptr<sched::Executor> executor,
                            std::vector<std::string> queues, int32_t slots,
                            const std::string& display_name) {
  const std::string id = executor->id();
  {
    absl::MutexLock lock(&mu_);
    executors_[id] = executor;
  }
  v1::Event e;
  e.set_type(v1::WORKER_CONNECTED);
  e.set_worker_id(id);
  ToProto(clock_->Now(), e.mutable_time());
  e.set_message(display_name);
  bus_.PublishGlobal(std::move(e)).IgnoreError();  // names no graph: never refused
  scheduler_.AddExecutor(std::move(executor), std::move(queues), slots);
  PumpExecutorQueues(id);
}

void Engine::DetachExecutor(const std::string& executor_id,
                            std::vector<HeldLease> in_flight) {
  scheduler_.RemoveExecutor(executor_id);
  {
    absl::MutexLock lock(&mu_);
    executors_.erase(executor_id);
  }
  std::vector<std::string> queues;
  const bool abandoned = journal_ != nullptr && abandoning_.load();
  for (const HeldLease& held : in_flight) {
    queues.push_back(scheduler_.Release(held.ticket));
    if (abandoned) continue;  // the next start re-dispatches it
    LoseLease(held.lease,
              absl::StrCat("worker ", executor_id, " disconnected"));
  }
  v1::Event e;
  e.set_type(v1::WORKER_LOST);
  e.set_worker_id(executor_id);
  ToProto(clock_->Now(), e.mutable_time());
  bus_.PublishGlobal(std::move(e)).IgnoreError();  // names no graph: never refused
  // Queue concurrency freed by the lost leases may let other executors run.
  std::sort(queues.begin(), queues.end());
  queues.erase(std::unique(queues.begin(), queues.end()), queues.end());
  for (const std::string& q : queues) Pump(q);
}

absl::Status Engine::OnStarted(const v1::Lease& lease) {
  absl::StatusOr<store::PickupResult> p = store_.PickedUp(lease, clock_->Now());
  if (!p.ok()) return p.status();
  if (options_.observe) task_metrics_.For(p->queue).pickup.Observe(p->pickup);
  return absl::OkStatus();
}

void Engine::OnResult(const std::string& executor_id, uint64_t ticket,
                      const v1::TaskResult& result, Ack ack, bool started_too) {
  if (!result.success() && journal_ != nullptr && abandoning_.load()) {
    // Cut short by the shutdown: left RUNNING for the next start.
    scheduler_.Release(ticket);
    if (ack) ack(absl::UnavailableError("the server is shutting down"));
    return;
  }
  absl::StatusOr<store::Effects> fx =
      store_.Complete(result, clock_->Now(), started_too);
  const std::string queue = scheduler_.Release(ticket);
  if (fx.ok()) {
    Apply(*std::move(fx), std::move(ack));  // acknowledged once durable
  } else {
    stale_results_.fetch_add(1, std::memory_order_relaxed);
    if (ack) ack(fx.status());
  }
  // The freed slot (and queue concurrency) may take the next task.
  if (!queue.empty()) Pump(queue);
  PumpExecutorQueues(executor_id);
}

absl::Status Engine::OnHeartbeat(const v1::Lease& lease) {
  return store_.Heartbeat(lease, clock_->Now());
}

absl::Status Engine::OnProgress(const v1::TaskProgress& progress) {
  absl::StatusOr<store::Effects> fx = store_.Progress(progress, clock_->Now());
  if (!fx.ok()) return fx.status();
  Apply(*std::move(fx));
  return absl::OkStatus();
}

absl::Status Engine::OnOutput(const v1::TaskOutput& output) {
  absl::StatusOr<store::Effects> fx = store_.Output(output, clock_->Now());
  if (!fx.ok()) return fx.status();
  Apply(*std::move(fx));
  return absl::OkStatus();
}

}  // namespace forge
