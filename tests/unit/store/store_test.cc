// Properties of the sharded store (server/store/store.h), driven directly:
// Compile a spec, Insert it, then play the engine's and a worker's part with
// StartAttempt / Complete / Progress / RetryDue / CancelGraph / CancelTask.
// Every transition is checked through the Effects it returns (events with
// their seqs, ready tasks, retry timers, cancel orders, waiters) and through
// the read API. Time is a fixed absl::Time: no clock, no sleeps.

#include "server/store/store.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/ids.h"
#include "common/proto_time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/graph/compiled_graph.h"
#include "server/graph/rules.h"
#include "server/persist/memory_journal.h"

namespace forge::store {
namespace {

namespace v1 = ::forge::v1;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

const absl::Time kNow = absl::FromUnixSeconds(1700000000);

struct TaskDef {
  std::string name;
  std::vector<std::string> deps = {};
  v1::Trigger trigger = v1::TRIGGER_UNSPECIFIED;
};

v1::GraphSpec Spec(const std::vector<TaskDef>& tasks) {
  v1::GraphSpec spec;
  spec.set_name("g");
  for (const TaskDef& t : tasks) {
    v1::TaskSpec* task = spec.add_tasks();
    task->set_name(t.name);
    for (const std::string& d : t.deps) task->add_depends_on(d);
    task->set_trigger(t.trigger);
  }
  return spec;
}

graph::CompiledGraph MustCompile(const v1::GraphSpec& spec) {
  absl::StatusOr<graph::CompiledGraph> compiled =
      graph::Compile(spec, graph::Limits());
  EXPECT_TRUE(compiled.ok()) << compiled.status();
  return compiled.ok() ? *std::move(compiled) : graph::CompiledGraph();
}

// Default options, except no jitter: retry delays are exact
// (initial * multiplier^(attempt-1)).
StoreOptions TestOptions() {
  StoreOptions options;
  options.defaults.jitter = 0;
  return options;
}

// "TYPE task" (or "TYPE" for graph events), to compare whole sequences.
std::string Describe(const v1::Event& e) {
  std::string out = v1::EventType_Name(e.type());
  if (!e.task().empty()) absl::StrAppend(&out, " ", e.task());
  return out;
}

std::vector<std::string> Describe(const std::vector<v1::Event>& events) {
  std::vector<std::string> out;
  for (const v1::Event& e : events) out.push_back(Describe(e));
  return out;
}

std::vector<int64_t> Seqs(const std::vector<v1::Event>& events) {
  std::vector<int64_t> out;
  for (const v1::Event& e : events) out.push_back(e.seq());
  return out;
}

std::vector<int64_t> Iota(int64_t from, int64_t to) {
  std::vector<int64_t> out;
  for (int64_t s = from; s <= to; ++s) out.push_back(s);
  return out;
}

std::vector<int32_t> Indices(const std::vector<ReadyTask>& ready) {
  std::vector<int32_t> out;
  for (const ReadyTask& r : ready) out.push_back(r.index);
  return out;
}

std::string LeaseString(const v1::Lease& l) {
  return absl::StrCat(l.graph_id(), "/", l.task_index(), "/", l.attempt(), "/",
                      l.epoch());
}

v1::TaskResult Success(const v1::Lease& lease, const std::string& output = "") {
  v1::TaskResult r;
  *r.mutable_lease() = lease;
  r.set_success(true);
  r.set_output(output);
  return r;
}

v1::TaskResult Failure(const v1::Lease& lease, const std::string& code,
                       bool non_retryable = false, int32_t exit_code = 1) {
  v1::TaskResult r;
  *r.mutable_lease() = lease;
  r.set_success(false);
  r.mutable_error()->set_code(code);
  r.mutable_error()->set_message(absl::StrCat(code, " happened"));
  r.mutable_error()->set_non_retryable(non_retryable);
  r.set_exit_code(exit_code);
  return r;
}

class StoreTest : public ::testing::Test {
 protected:
  StoreTest() { Reset(TestOptions()); }

  void Reset(StoreOptions options) {
    store_ = std::make_unique<Store>(std::move(options));
  }

  // Ids made in submission order sort in submission order.
  std::string NextId() {
    return NewUlid(kNow + absl::Milliseconds(next_id_++));
  }

  InsertResult Submit(const v1::GraphSpec& spec,
                      const std::string& request_id = "") {
    absl::StatusOr<InsertResult> r =
        store_->Insert(NextId(), request_id, spec, MustCompile(spec), kNow);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *std::move(r) : InsertResult();
  }

  StartResult Start(const std::string& graph_id, int32_t index,
                    const std::string& worker = "w1") {
    absl::StatusOr<StartResult> r =
        store_->StartAttempt(graph_id, index, worker, kNow);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *std::move(r) : StartResult();
  }

  Effects Done(const v1::TaskResult& result) {
    absl::StatusOr<Effects> r = store_->Complete(result, kNow);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *std::move(r) : Effects();
  }

  v1::Graph Get(const std::string& graph_id,
                v1::GraphView view = v1::FULL) const {
    absl::StatusOr<v1::Graph> g = store_->GetGraph(graph_id, view);
    EXPECT_TRUE(g.ok()) << g.status();
    return g.ok() ? *std::move(g) : v1::Graph();
  }

  v1::Task Task(const std::string& graph_id, const std::string& name) const {
    absl::StatusOr<v1::Task> t = store_->GetTask(graph_id, name);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *std::move(t) : v1::Task();
  }

  int64_t LastSeq(const std::string& graph_id) const {
    return Get(graph_id, v1::BASIC).last_seq();
  }

  std::vector<v1::TaskState> States(const std::string& graph_id) const {
    std::vector<v1::TaskState> out;
    const v1::Graph g = Get(graph_id);
    for (const v1::Task& t : g.tasks()) out.push_back(t.state());
    return out;
  }

  std::unique_ptr<Store> store_;
  int64_t next_id_ = 0;
};

// ---------------------------------------------------------------------------
// Insert

TEST_F(StoreTest, InsertEmitsSubmittedThenReadyPerRootWithDenseSeqs) {
  v1::GraphSpec spec =
      Spec({{"a"}, {"b"}, {"c", {"a", "b"}}, {"d", {"c"}}, {"e"}});
  spec.mutable_tasks(1)->set_priority(5);
  spec.mutable_tasks(4)->set_queue("gpu");
  (*spec.mutable_labels())["team"] = "red";
  const InsertResult r = Submit(spec);
  EXPECT_TRUE(r.created);
  const Effects& fx = r.effects;
  EXPECT_EQ(fx.graph_id, r.graph_id);
  EXPECT_THAT(Describe(fx.events),
              ElementsAre("GRAPH_SUBMITTED", "TASK_READY a", "TASK_READY b",
                          "TASK_READY e"));
  EXPECT_THAT(Seqs(fx.events), ElementsAre(1, 2, 3, 4));
  for (const v1::Event& e : fx.events) EXPECT_EQ(e.graph_id(), r.graph_id);
  EXPECT_EQ(fx.events[0].message(), "g");
  EXPECT_THAT(fx.events[0].labels(), UnorderedElementsAre(Pair("team", "red")));
  EXPECT_EQ(fx.events[3].queue(), "gpu");

  ASSERT_THAT(Indices(fx.ready), ElementsAre(0, 1, 4));
  EXPECT_EQ(fx.ready[0].queue, "default");
  EXPECT_EQ(fx.ready[1].priority, 5);
  EXPECT_EQ(fx.ready[2].queue, "gpu");
  for (const ReadyTask& t : fx.ready) EXPECT_EQ(t.graph_id, r.graph_id);
  EXPECT_LT(fx.ready[0].ready_seq, fx.ready[1].ready_seq);
  EXPECT_LT(fx.ready[1].ready_seq, fx.ready[2].ready_seq);
  EXPECT_THAT(fx.retries, IsEmpty());
  EXPECT_THAT(fx.cancels, IsEmpty());
  EXPECT_FALSE(fx.terminal_graph.has_value());

  const v1::Graph g = Get(r.graph_id);
  EXPECT_EQ(g.state(), v1::GRAPH_STATE_RUNNING);
  EXPECT_EQ(g.last_seq(), 4);
  EXPECT_EQ(g.counts().ready(), 3);
  EXPECT_EQ(g.counts().pending(), 2);
  EXPECT_THAT(States(r.graph_id), ElementsAre(v1::READY, v1::READY, v1::PENDING,
                                              v1::PENDING, v1::READY));
  EXPECT_EQ(store_->graph_count(), 1);

  // The ready sequence is store-wide: a second graph's roots come after.
  const InsertResult r2 = Submit(Spec({{"x"}}));
  ASSERT_EQ(r2.effects.ready.size(), 1u);
  EXPECT_GT(r2.effects.ready[0].ready_seq, fx.ready[2].ready_seq);
  EXPECT_THAT(Seqs(r2.effects.events), ElementsAre(1, 2));
}

// ---------------------------------------------------------------------------
// Readiness

TEST_F(StoreTest, DependentBecomesReadyInTheCompletionOfItsLastDependency) {
  const InsertResult r = Submit(Spec({{"a"}, {"b"}, {"c", {"a", "b"}}}));
  const std::string& id = r.graph_id;

  const StartResult sa = Start(id, 0, "w1");
  EXPECT_THAT(Describe(sa.effects.events), ElementsAre("TASK_STARTED a"));
  EXPECT_THAT(Seqs(sa.effects.events), ElementsAre(4));
  EXPECT_EQ(sa.effects.events[0].worker_id(), "w1");
  EXPECT_EQ(sa.effects.events[0].attempt(), 1);

  const Effects fa = Done(Success(sa.assignment.lease()));
  EXPECT_THAT(Describe(fa.events), ElementsAre("TASK_SUCCEEDED a"));
  EXPECT_THAT(Seqs(fa.events), ElementsAre(5));
  EXPECT_THAT(fa.ready, IsEmpty());
  EXPECT_EQ(Task(id, "c").state(), v1::PENDING);

  const StartResult sb = Start(id, 1, "w2");
  const Effects fb = Done(Success(sb.assignment.lease()));
  EXPECT_THAT(Describe(fb.events),
              ElementsAre("TASK_SUCCEEDED b", "TASK_READY c"));
  EXPECT_THAT(Seqs(fb.events), ElementsAre(7, 8));
  ASSERT_THAT(Indices(fb.ready), ElementsAre(2));
  EXPECT_GT(fb.ready[0].ready_seq, r.effects.ready[1].ready_seq);
  EXPECT_EQ(Task(id, "c").state(), v1::READY);
  EXPECT_EQ(LastSeq(id), 8);
}

// ---------------------------------------------------------------------------
// Fencing

TEST_F(StoreTest, StartAttemptOnTaskThatIsNotReadyFailsAndChangesNothing) {
  const std::string id = Submit(Spec({{"a"}, {"b", {"a"}}})).graph_id;

  absl::StatusOr<StartResult> pending = store_->StartAttempt(id, 1, "w", kNow);
  EXPECT_EQ(pending.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(pending.status().message(), HasSubstr("PENDING"));
  EXPECT_EQ(LastSeq(id), 2);

  const StartResult sa = Start(id, 0);
  absl::StatusOr<StartResult> running = store_->StartAttempt(id, 0, "w", kNow);
  EXPECT_EQ(running.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(running.status().message(), HasSubstr("RUNNING"));
  EXPECT_EQ(LastSeq(id), 3);
  const v1::Task a = Task(id, "a");
  EXPECT_EQ(a.state(), v1::RUNNING);
  EXPECT_EQ(a.attempt(), 1);
  EXPECT_EQ(a.attempts_size(), 1);

  Done(Success(sa.assignment.lease()));
  absl::StatusOr<StartResult> done = store_->StartAttempt(id, 0, "w", kNow);
  EXPECT_EQ(done.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(LastSeq(id), 5);  // + TASK_SUCCEEDED a, TASK_READY b
  EXPECT_EQ(Task(id, "a").attempts_size(), 1);
}

TEST_F(StoreTest, CompletionWithStaleAttemptOrEpochIsAbortedAndChangesNothing) {
  const std::string id = Submit(Spec({{"a"}})).graph_id;
  const v1::Lease lease = Start(id, 0).assignment.lease();
  EXPECT_EQ(lease.attempt(), 1);

  v1::Lease wrong_attempt = lease;
  wrong_attempt.set_attempt(2);
  v1::Lease wrong_epoch = lease;
  wrong_epoch.set_epoch(lease.epoch() + 1);
  for (const v1::Lease& bad : {wrong_attempt, wrong_epoch}) {
    absl::StatusOr<Effects> r = store_->Complete(Success(bad), kNow);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted)
        << LeaseString(bad);
    r = store_->Complete(Failure(bad, "X"), kNow);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted)
        << LeaseString(bad);
  }
  EXPECT_EQ(LastSeq(id), 3);
  EXPECT_EQ(Task(id, "a").state(), v1::RUNNING);
  EXPECT_EQ(Task(id, "a").attempts(0).state(), v1::RUNNING);

  // A result of an earlier attempt is stale once the next one runs.
  const Effects failed = Done(Failure(lease, "FLAKY"));
  ASSERT_EQ(failed.retries.size(), 1u);
  store_->RetryDue(failed.retries[0], failed.retries[0].due);
  const v1::Lease second = Start(id, 0).assignment.lease();
  EXPECT_EQ(second.attempt(), 2);
  EXPECT_GT(second.epoch(), lease.epoch());
  const int64_t seq = LastSeq(id);
  EXPECT_EQ(store_->Complete(Success(lease), kNow).status().code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(LastSeq(id), seq);
  EXPECT_EQ(Task(id, "a").state(), v1::RUNNING);
  EXPECT_THAT(Describe(Done(Success(second)).events),
              ElementsAre("TASK_SUCCEEDED a", "GRAPH_SUCCEEDED"));
}

TEST_F(StoreTest, SecondCompletionOfTheSameLeaseIsAborted) {
  const std::string id = Submit(Spec({{"a"}, {"b"}})).graph_id;
  const v1::Lease la = Start(id, 0).assignment.lease();
  Done(Success(la, "out"));
  const int64_t seq = LastSeq(id);
  absl::StatusOr<Effects> again = store_->Complete(Success(la, "other"), kNow);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(store_->Complete(Failure(la, "X"), kNow).status().code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(LastSeq(id), seq);
  EXPECT_EQ(Task(id, "a").output(), "out");

  // Same for a failure that scheduled a retry (the task is READY again).
  const v1::Lease lb = Start(id, 1).assignment.lease();
  EXPECT_EQ(Done(Failure(lb, "FLAKY")).retries.size(), 1u);
  const int64_t seq_b = LastSeq(id);
  EXPECT_EQ(store_->Complete(Failure(lb, "FLAKY"), kNow).status().code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(LastSeq(id), seq_b);
  EXPECT_EQ(Task(id, "b").attempts_size(), 1);
}

TEST_F(StoreTest, ProgressIsRecordedForTheRunningAttemptOnly) {
  const std::string id = Submit(Spec({{"a"}})).graph_id;
  const v1::Lease lease = Start(id, 0).assignment.lease();
  v1::TaskProgress p;
  *p.mutable_lease() = lease;
  p.mutable_progress()->set_step(3);
  p.mutable_progress()->set_total(10);
  p.mutable_progress()->set_message("three");
  absl::StatusOr<Effects> fx = store_->Progress(p, kNow);
  ASSERT_TRUE(fx.ok()) << fx.status();
  EXPECT_THAT(Describe(fx->events), ElementsAre("TASK_PROGRESS a"));
  EXPECT_THAT(Seqs(fx->events), ElementsAre(4));
  EXPECT_EQ(fx->events[0].progress().step(), 3);
  const v1::Task a = Task(id, "a");
  EXPECT_EQ(a.progress().step(), 3);
  EXPECT_EQ(a.progress().total(), 10);
  EXPECT_EQ(a.progress().message(), "three");

  v1::TaskProgress stale = p;
  stale.mutable_lease()->set_epoch(lease.epoch() + 1);
  EXPECT_EQ(store_->Progress(stale, kNow).status().code(),
            absl::StatusCode::kAborted);
  Done(Success(lease));
  const int64_t seq = LastSeq(id);
  EXPECT_EQ(store_->Progress(p, kNow).status().code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(LastSeq(id), seq);
}

TEST_F(StoreTest, UnknownGraphOrTaskIsNotFound) {
  const std::string id = Submit(Spec({{"a"}})).graph_id;
  const std::string missing = NextId();
  EXPECT_EQ(store_->StartAttempt(missing, 0, "w", kNow).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->StartAttempt(id, 1, "w", kNow).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->StartAttempt(id, -1, "w", kNow).status().code(),
            absl::StatusCode::kNotFound);
  v1::Lease lease;
  lease.set_graph_id(missing);
  EXPECT_EQ(store_->Complete(Success(lease), kNow).status().code(),
            absl::StatusCode::kNotFound);
  lease.set_graph_id(id);
  lease.set_task_index(5);
  EXPECT_EQ(store_->Complete(Success(lease), kNow).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->CancelGraph(missing, "", kNow).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->CancelTask(id, "nope", "", kNow).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetGraph(missing, v1::BASIC).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetTask(id, "nope").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->AddTerminalWaiter(missing, [](const v1::Graph&) {})
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(LastSeq(id), 2);
}

// ---------------------------------------------------------------------------
// Retries

TEST_F(StoreTest, RetryableFailureWaitsForRetryDueBeforeItCanStartAgain) {
  const std::string id = Submit(Spec({{"a"}})).graph_id;
  const v1::Lease first = Start(id, 0, "w1").assignment.lease();

  const Effects failed = Done(Failure(first, "FLAKY"));
  ASSERT_THAT(Describe(failed.events), ElementsAre("TASK_RETRY_SCHEDULED a"));
  const v1::Event& e = failed.events[0];
  EXPECT_EQ(e.seq(), 4);
  EXPECT_EQ(e.attempt(), 1);
  EXPECT_EQ(e.error().code(), "FLAKY");
  EXPECT_EQ(e.error().message(), "FLAKY happened");
  EXPECT_EQ(FromProto(e.retry_at()), kNow + absl::Seconds(1));
  ASSERT_EQ(failed.retries.size(), 1u);
  const RetryTimer& timer = failed.retries[0];
  EXPECT_EQ(timer.graph_id, id);
  EXPECT_EQ(timer.index, 0);
  EXPECT_EQ(timer.attempt, 1);
  EXPECT_EQ(timer.due, kNow + absl::Seconds(1));
  EXPECT_THAT(failed.ready, IsEmpty());
  EXPECT_FALSE(failed.terminal_graph.has_value());

  // READY (backing off), but not startable.
  const v1::Graph g = Get(id);
  EXPECT_EQ(g.tasks(0).state(), v1::READY);
  EXPECT_EQ(g.counts().ready(), 1);
  EXPECT_EQ(g.counts().running(), 0);
  EXPECT_EQ(g.tasks(0).attempts(0).state(), v1::FAILED);
  EXPECT_EQ(g.tasks(0).attempts(0).error().code(), "FLAKY");
  EXPECT_EQ(g.tasks(0).error().code(), "FLAKY");
  absl::StatusOr<StartResult> early = store_->StartAttempt(id, 0, "w1", kNow);
  EXPECT_EQ(early.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(early.status().message(), HasSubstr("backing off"));
  EXPECT_EQ(LastSeq(id), 4);

  const Effects due = store_->RetryDue(timer, timer.due);
  EXPECT_THAT(Describe(due.events), ElementsAre("TASK_READY a"));
  EXPECT_THAT(Seqs(due.events), ElementsAre(5));
  EXPECT_EQ(due.events[0].attempt(), 1);
  ASSERT_THAT(Indices(due.ready), ElementsAre(0));
  EXPECT_GT(due.ready[0].ready_seq, 0u);

  const StartResult second = Start(id, 0, "w2");
  EXPECT_EQ(second.assignment.lease().attempt(), 2);
  EXPECT_GT(second.assignment.lease().epoch(), first.epoch());
  EXPECT_EQ(second.effects.events[0].attempt(), 2);
  // The next delay doubles (attempt 2: initial * 2^1).
  const Effects failed2 = Done(Failure(second.assignment.lease(), "FLAKY"));
  ASSERT_EQ(failed2.retries.size(), 1u);
  EXPECT_EQ(failed2.retries[0].attempt, 2);
  EXPECT_EQ(failed2.retries[0].due, kNow + absl::Seconds(2));
}

TEST_F(StoreTest, RetryDueForAStaleAttemptDoesNothing) {
  const std::string id = Submit(Spec({{"a"}, {"b"}})).graph_id;
  const Effects failed =
      Done(Failure(Start(id, 0).assignment.lease(), "FLAKY"));
  ASSERT_EQ(failed.retries.size(), 1u);
  const RetryTimer timer = failed.retries[0];
  EXPECT_FALSE(store_->RetryDue(timer, timer.due).empty());
  // Fired twice: the task is no longer backing off.
  EXPECT_TRUE(store_->RetryDue(timer, timer.due).empty());
  const int64_t seq = LastSeq(id);
  Start(id, 0);
  // The task moved on to attempt 2 (RUNNING).
  EXPECT_TRUE(store_->RetryDue(timer, timer.due).empty());
  RetryTimer current = timer;
  current.attempt = 2;
  EXPECT_TRUE(store_->RetryDue(current, timer.due).empty());
  EXPECT_EQ(LastSeq(id), seq + 1);  // just TASK_STARTED
  EXPECT_EQ(Task(id, "a").state(), v1::RUNNING);

  // A backing-off task that was cancelled meanwhile stays cancelled.
  const Effects failed_b =
      Done(Failure(Start(id, 1).assignment.lease(), "FLAKY"));
  ASSERT_EQ(failed_b.retries.size(), 1u);
  ASSERT_TRUE(store_->CancelTask(id, "b", "", kNow).ok());
  const int64_t seq_b = LastSeq(id);
  EXPECT_TRUE(store_->RetryDue(failed_b.retries[0], kNow).empty());
  EXPECT_EQ(Task(id, "b").state(), v1::CANCELLED);
  EXPECT_EQ(LastSeq(id), seq_b);

  // Unknown graph or index.
  RetryTimer unknown = timer;
  unknown.graph_id = NextId();
  EXPECT_TRUE(store_->RetryDue(unknown, kNow).empty());
  unknown = timer;
  unknown.index = 9;
  EXPECT_TRUE(store_->RetryDue(unknown, kNow).empty());
}

TEST_F(StoreTest, ExhaustedAttemptsFailTheTaskWithItsAttemptHistory) {
  v1::GraphSpec spec = Spec({{"a"}});
  spec.mutable_tasks(0)->mutable_retry()->set_max_attempts(2);
  const std::string id = Submit(spec).graph_id;

  const Effects f1 =
      Done(Failure(Start(id, 0, "w1").assignment.lease(), "E1", false, 1));
  ASSERT_EQ(f1.retries.size(), 1u);
  store_->RetryDue(f1.retries[0], f1.retries[0].due);
  const Effects f2 =
      Done(Failure(Start(id, 0, "w2").assignment.lease(), "E2", false, 3));
  EXPECT_THAT(Describe(f2.events),
              ElementsAre("TASK_FAILED a", "GRAPH_FAILED"));
  EXPECT_THAT(Seqs(f2.events), ElementsAre(7, 8));
  EXPECT_EQ(f2.events[0].attempt(), 2);
  EXPECT_EQ(f2.events[0].error().code(), "E2");
  EXPECT_THAT(f2.retries, IsEmpty());
  EXPECT_EQ(f2.tasks_finished, 1);
  ASSERT_TRUE(f2.terminal_graph.has_value());
  EXPECT_EQ(f2.terminal_graph->state(), v1::GRAPH_STATE_FAILED);
  EXPECT_EQ(f2.terminal_graph->counts().failed(), 1);
  EXPECT_EQ(f2.terminal_graph->last_seq(), 8);

  const v1::Task a = Task(id, "a");
  EXPECT_EQ(a.state(), v1::FAILED);
  EXPECT_EQ(a.attempt(), 2);
  EXPECT_EQ(a.error().code(), "E2");
  EXPECT_EQ(a.exit_code(), 3);
  ASSERT_EQ(a.attempts_size(), 2);
  EXPECT_EQ(a.attempts(0).number(), 1);
  EXPECT_EQ(a.attempts(0).worker_id(), "w1");
  EXPECT_EQ(a.attempts(0).state(), v1::FAILED);
  EXPECT_EQ(a.attempts(0).error().code(), "E1");
  EXPECT_EQ(a.attempts(0).exit_code(), 1);
  EXPECT_EQ(a.attempts(1).number(), 2);
  EXPECT_EQ(a.attempts(1).worker_id(), "w2");
  EXPECT_EQ(a.attempts(1).state(), v1::FAILED);
  EXPECT_EQ(a.attempts(1).error().code(), "E2");
  EXPECT_EQ(a.attempts(1).exit_code(), 3);
  EXPECT_EQ(Get(id).state(), v1::GRAPH_STATE_FAILED);
}

TEST_F(StoreTest, NonRetryableFailureFailsAtOnce) {
  v1::GraphSpec spec = Spec({{"a"}, {"b"}});
  spec.mutable_tasks(1)->mutable_retry()->add_non_retryable_errors("BAD");
  const std::string id = Submit(spec).graph_id;
  EXPECT_THAT(
      Describe(
          Done(Failure(Start(id, 0).assignment.lease(), "X", true)).events),
      ElementsAre("TASK_FAILED a"));
  EXPECT_THAT(
      Describe(Done(Failure(Start(id, 1).assignment.lease(), "BAD")).events),
      ElementsAre("TASK_FAILED b", "GRAPH_FAILED"));
}

TEST_F(StoreTest, OutputOverMaxOutputBytesFailsTheAttemptAsNonRetryable) {
  StoreOptions options = TestOptions();
  options.max_output_bytes = 4;
  Reset(options);
  v1::GraphSpec spec = Spec({{"a"}, {"b"}});
  spec.mutable_tasks(0)->mutable_retry()->set_max_attempts(5);
  const std::string id = Submit(spec).graph_id;

  const Effects fx = Done(Success(Start(id, 0).assignment.lease(), "12345"));
  EXPECT_THAT(Describe(fx.events), ElementsAre("TASK_FAILED a"));
  EXPECT_THAT(fx.retries, IsEmpty());
  const v1::TaskError& err = fx.events[0].error();
  EXPECT_EQ(err.code(), "OUTPUT_TOO_LARGE");
  EXPECT_EQ(err.message(), "output of 5 bytes exceeds the limit of 4");
  EXPECT_TRUE(err.non_retryable());
  const v1::Task a = Task(id, "a");
  EXPECT_EQ(a.state(), v1::FAILED);
  EXPECT_EQ(a.output(), "");
  EXPECT_EQ(a.error().code(), "OUTPUT_TOO_LARGE");
  ASSERT_EQ(a.attempts_size(), 1);
  EXPECT_EQ(a.attempts(0).state(), v1::FAILED);
  EXPECT_EQ(a.attempts(0).error().code(), "OUTPUT_TOO_LARGE");

  // Exactly at the limit is fine.
  const Effects ok = Done(Success(Start(id, 1).assignment.lease(), "1234"));
  EXPECT_THAT(Describe(ok.events),
              ElementsAre("TASK_SUCCEEDED b", "GRAPH_FAILED"));
  EXPECT_EQ(Task(id, "b").output(), "1234");
}

// ---------------------------------------------------------------------------
// Cancellation

TEST_F(StoreTest, FailFastCancelsOnlyNotStartedTasksThatDoNotWantFailures) {
  v1::GraphSpec spec = Spec({
      {"a"},                          // 0: fails
      {"b"},                          // 1: RUNNING, kept
      {"c"},                          // 2: READY ALL_SUCCESS root
      {"d", {"a"}, v1::ALL_SUCCESS},  // 3: PENDING
      {"e", {"a"}, v1::ALL_DONE},     // 4: runs (cleanup)
      {"f", {"a"}, v1::ONE_FAILED},   // 5: runs (compensation)
      {"g", {"b"}, v1::ALL_DONE},     // 6: PENDING, kept
      {"h", {}, v1::ALL_DONE},        // 7: READY ALL_DONE root, kept
      {"i", {"b"}, v1::ONE_FAILED},   // 8: PENDING, kept
  });
  spec.set_fail_fast(true);
  const std::string id = Submit(spec).graph_id;
  const v1::Lease la = Start(id, 0, "w1").assignment.lease();
  Start(id, 1, "w2");
  const int64_t seq = LastSeq(id);

  const Effects fx = Done(Failure(la, "BOOM", /*non_retryable=*/true));
  ASSERT_FALSE(fx.events.empty());
  EXPECT_EQ(Describe(fx.events[0]), "TASK_FAILED a");
  EXPECT_THAT(
      Describe(fx.events),
      UnorderedElementsAre("TASK_FAILED a", "TASK_CANCELLED c",
                           "TASK_CANCELLED d", "TASK_READY e", "TASK_READY f"));
  EXPECT_THAT(Seqs(fx.events), ElementsAreArray(Iota(seq + 1, seq + 5)));
  for (const v1::Event& e : fx.events) {
    if (e.type() == v1::TASK_CANCELLED) {
      EXPECT_EQ(e.message(), "fail_fast: task a failed");
    }
  }
  EXPECT_THAT(Indices(fx.ready), UnorderedElementsAre(4, 5));
  EXPECT_THAT(fx.cancels, IsEmpty());  // b keeps running
  EXPECT_FALSE(fx.terminal_graph.has_value());
  EXPECT_THAT(States(id), ElementsAre(v1::FAILED, v1::RUNNING, v1::CANCELLED,
                                      v1::CANCELLED, v1::READY, v1::READY,
                                      v1::PENDING, v1::READY, v1::PENDING));
  EXPECT_EQ(Get(id).state(), v1::GRAPH_STATE_RUNNING);
}

TEST_F(StoreTest, CancelGraphStopsTheRunningAttemptAndIsIdempotent) {
  const std::string id = Submit(Spec({{"a"}, {"b", {"a"}}, {"c"}})).graph_id;
  const v1::Lease lease = Start(id, 0, "w1").assignment.lease();

  absl::StatusOr<Effects> fx = store_->CancelGraph(id, "user asked", kNow);
  ASSERT_TRUE(fx.ok()) << fx.status();
  EXPECT_THAT(Describe(fx->events),
              ElementsAre("TASK_CANCELLED a", "TASK_CANCELLED b",
                          "TASK_CANCELLED c", "GRAPH_CANCELLED"));
  EXPECT_THAT(Seqs(fx->events), ElementsAre(5, 6, 7, 8));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(fx->events[i].message(), "user asked");
  }
  ASSERT_EQ(fx->cancels.size(), 1u);
  EXPECT_EQ(LeaseString(fx->cancels[0].lease), LeaseString(lease));
  EXPECT_EQ(fx->cancels[0].worker_id, "w1");
  EXPECT_EQ(fx->cancels[0].reason, "user asked");
  EXPECT_THAT(fx->ready, IsEmpty());
  EXPECT_EQ(fx->tasks_finished, 3);
  ASSERT_TRUE(fx->terminal_graph.has_value());
  EXPECT_EQ(fx->terminal_graph->state(), v1::GRAPH_STATE_CANCELLED);
  EXPECT_TRUE(fx->terminal_graph->cancel_requested());

  const v1::Graph g = Get(id);
  EXPECT_EQ(g.state(), v1::GRAPH_STATE_CANCELLED);
  EXPECT_TRUE(g.cancel_requested());
  EXPECT_EQ(g.counts().cancelled(), 3);
  EXPECT_EQ(g.last_seq(), 8);
  EXPECT_THAT(States(id),
              ElementsAre(v1::CANCELLED, v1::CANCELLED, v1::CANCELLED));
  ASSERT_EQ(g.tasks(0).attempts_size(), 1);
  EXPECT_EQ(g.tasks(0).attempts(0).state(), v1::CANCELLED);

  absl::StatusOr<Effects> again = store_->CancelGraph(id, "again", kNow);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->empty());
  EXPECT_THAT(again->events, IsEmpty());
  EXPECT_FALSE(again->terminal_graph.has_value());
  EXPECT_EQ(LastSeq(id), 8);
  // The cancelled attempt's late result is refused.
  EXPECT_EQ(store_->Complete(Success(lease), kNow).status().code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(LastSeq(id), 8);
}

TEST_F(StoreTest, CancelTaskSkipsAllSuccessDependentsAndRunsAllDoneOnes) {
  const std::string id = Submit(Spec({
                                    {"a"},
                                    {"b", {"a"}, v1::ALL_SUCCESS},
                                    {"c", {"b"}, v1::ALL_SUCCESS},
                                    {"d", {"a"}, v1::ALL_DONE},
                                    {"e", {"a"}, v1::ONE_FAILED},
                                }))
                             .graph_id;
  absl::StatusOr<Effects> fx = store_->CancelTask(id, "a", "", kNow);
  ASSERT_TRUE(fx.ok()) << fx.status();
  ASSERT_FALSE(fx->events.empty());
  EXPECT_EQ(Describe(fx->events[0]), "TASK_CANCELLED a");
  EXPECT_EQ(fx->events[0].message(), "task cancelled");
  EXPECT_THAT(
      Describe(fx->events),
      UnorderedElementsAre("TASK_CANCELLED a", "TASK_SKIPPED b",
                           "TASK_SKIPPED c", "TASK_READY d", "TASK_SKIPPED e"));
  EXPECT_THAT(Seqs(fx->events), ElementsAre(3, 4, 5, 6, 7));
  for (const v1::Event& e : fx->events) {
    if (e.task() == "b" || e.task() == "c") {
      EXPECT_EQ(e.message(), "trigger ALL_SUCCESS cannot hold");
    }
    if (e.task() == "e") {
      EXPECT_EQ(e.message(), "trigger ONE_FAILED cannot hold");
    }
  }
  EXPECT_THAT(Indices(fx->ready), ElementsAre(3));
  EXPECT_THAT(fx->cancels, IsEmpty());
  EXPECT_FALSE(fx->terminal_graph.has_value());
  EXPECT_THAT(States(id), ElementsAre(v1::CANCELLED, v1::SKIPPED, v1::SKIPPED,
                                      v1::READY, v1::SKIPPED));

  absl::StatusOr<Effects> again = store_->CancelTask(id, "a", "", kNow);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->empty());
  EXPECT_EQ(LastSeq(id), 7);

  // The cleanup task finishes the graph: a cancelled task and no failure.
  const Effects fd = Done(Success(Start(id, 3).assignment.lease()));
  EXPECT_THAT(Describe(fd.events),
              ElementsAre("TASK_SUCCEEDED d", "GRAPH_CANCELLED"));
  ASSERT_TRUE(fd.terminal_graph.has_value());
  EXPECT_EQ(fd.terminal_graph->state(), v1::GRAPH_STATE_CANCELLED);
  EXPECT_FALSE(fd.terminal_graph->cancel_requested());
  EXPECT_EQ(fd.terminal_graph->counts().cancelled(), 1);
  EXPECT_EQ(fd.terminal_graph->counts().skipped(), 3);
  EXPECT_EQ(fd.terminal_graph->counts().succeeded(), 1);
}

TEST_F(StoreTest, CancelTaskOfARunningAttemptOrdersItsExecutorToStop) {
  const std::string id = Submit(Spec({{"a"}, {"b"}})).graph_id;
  const v1::Lease lease = Start(id, 1, "w7").assignment.lease();
  absl::StatusOr<Effects> fx = store_->CancelTask(id, "b", "too slow", kNow);
  ASSERT_TRUE(fx.ok()) << fx.status();
  EXPECT_THAT(Describe(fx->events), ElementsAre("TASK_CANCELLED b"));
  ASSERT_EQ(fx->cancels.size(), 1u);
  EXPECT_EQ(LeaseString(fx->cancels[0].lease), LeaseString(lease));
  EXPECT_EQ(fx->cancels[0].worker_id, "w7");
  EXPECT_EQ(fx->cancels[0].reason, "too slow");
  EXPECT_EQ(Task(id, "b").attempts(0).state(), v1::CANCELLED);
  EXPECT_EQ(Task(id, "a").state(), v1::READY);
  EXPECT_EQ(store_->Complete(Success(lease), kNow).status().code(),
            absl::StatusCode::kAborted);
}

TEST_F(StoreTest, CancellingTheRootOfALongChainSkipsEveryDependentIteratively) {
  constexpr int kTasks = 100000;
  v1::GraphSpec spec;
  spec.mutable_tasks()->Reserve(kTasks);
  for (int i = 0; i < kTasks; ++i) {
    v1::TaskSpec* t = spec.add_tasks();
    t->set_name(absl::StrCat("t", i));
    if (i > 0) t->add_depends_on(absl::StrCat("t", i - 1));
  }
  const InsertResult r = Submit(spec);
  ASSERT_THAT(Indices(r.effects.ready), ElementsAre(0));

  absl::StatusOr<Effects> fx = store_->CancelTask(r.graph_id, "t0", "", kNow);
  ASSERT_TRUE(fx.ok()) << fx.status();
  ASSERT_EQ(fx->events.size(), static_cast<size_t>(kTasks + 1));
  EXPECT_EQ(Describe(fx->events.front()), "TASK_CANCELLED t0");
  EXPECT_EQ(Describe(fx->events.back()), "GRAPH_CANCELLED");
  int64_t skipped = 0;
  for (size_t k = 0; k < fx->events.size(); ++k) {
    if (fx->events[k].type() == v1::TASK_SKIPPED) ++skipped;
    if (fx->events[k].seq() != static_cast<int64_t>(k) + 3) {
      ADD_FAILURE() << "event " << k << " has seq " << fx->events[k].seq();
      break;
    }
  }
  EXPECT_EQ(skipped, kTasks - 1);
  EXPECT_EQ(fx->tasks_finished, kTasks);
  const v1::Graph g = Get(r.graph_id, v1::BASIC);
  EXPECT_EQ(g.state(), v1::GRAPH_STATE_CANCELLED);
  EXPECT_EQ(g.counts().cancelled(), 1);
  EXPECT_EQ(g.counts().skipped(), kTasks - 1);
  EXPECT_EQ(g.counts().pending(), 0);
  EXPECT_EQ(g.last_seq(), kTasks + 3);
  EXPECT_EQ(Task(r.graph_id, absl::StrCat("t", kTasks - 1)).state(),
            v1::SKIPPED);
}

// ---------------------------------------------------------------------------
// Idempotent submit

TEST_F(StoreTest, InsertWithAUsedRequestIdReturnsTheFirstGraph) {
  const v1::GraphSpec spec = Spec({{"a"}, {"b", {"a"}}});
  const InsertResult first = Submit(spec, "req-1");
  EXPECT_TRUE(first.created);
  const std::string other = NextId();
  absl::StatusOr<InsertResult> second =
      store_->Insert(other, "req-1", spec, MustCompile(spec), kNow);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->created);
  EXPECT_EQ(second->graph_id, first.graph_id);
  EXPECT_TRUE(second->effects.empty());
  EXPECT_EQ(store_->graph_count(), 1);
  EXPECT_EQ(store_->GetGraph(other, v1::BASIC).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Get(first.graph_id).request_id(), "req-1");
  EXPECT_EQ(LastSeq(first.graph_id), 2);
}

TEST_F(StoreTest, InsertWithAUsedRequestIdAndADifferentSpecIsAlreadyExists) {
  const InsertResult first = Submit(Spec({{"a"}}), "req-1");
  const v1::GraphSpec changed = Spec({{"a"}, {"b"}});
  absl::StatusOr<InsertResult> second =
      store_->Insert(NextId(), "req-1", changed, MustCompile(changed), kNow);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(second.status().message(), HasSubstr(first.graph_id));
  EXPECT_EQ(store_->graph_count(), 1);
}

// Protobuf map order is not part of the spec: two equal specs whose maps were
// filled in different orders are the same submit.
TEST_F(StoreTest, IdempotentInsertMatchesEqualSpecsWithMultiEntryMaps) {
  auto make = [](bool reverse) {
    v1::GraphSpec spec = Spec({{"a"}, {"b", {"a"}}});
    for (int k = 0; k < 16; ++k) {
      const int i = reverse ? 15 - k : k;
      (*spec.mutable_labels())[absl::StrCat("label", i)] = absl::StrCat(i);
      (*spec.mutable_tasks(0)->mutable_params())[absl::StrCat("p", i)] =
          absl::StrCat("v", i);
      (*spec.mutable_tasks(1)->mutable_labels())[absl::StrCat("t", i)] = "x";
    }
    return spec;
  };
  const InsertResult first = Submit(make(false), "req-maps");
  ASSERT_TRUE(first.created);
  for (bool reverse : {false, true}) {
    const v1::GraphSpec spec = make(reverse);
    absl::StatusOr<InsertResult> again =
        store_->Insert(NextId(), "req-maps", spec, MustCompile(spec), kNow);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_FALSE(again->created);
    EXPECT_EQ(again->graph_id, first.graph_id);
  }
  v1::GraphSpec changed = make(true);
  (*changed.mutable_tasks(0)->mutable_params())["p7"] = "other";
  EXPECT_EQ(
      store_->Insert(NextId(), "req-maps", changed, MustCompile(changed), kNow)
          .status()
          .code(),
      absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store_->graph_count(), 1);
}

// ---------------------------------------------------------------------------
// Waiters

TEST_F(StoreTest, TerminalWaitersAreCalledWithTheFinalGraph) {
  const std::string id = Submit(Spec({{"a"}})).graph_id;
  std::vector<v1::Graph> seen;
  absl::StatusOr<Effects> early = store_->AddTerminalWaiter(
      id, [&seen](const v1::Graph& g) { seen.push_back(g); });
  ASSERT_TRUE(early.ok()) << early.status();
  EXPECT_TRUE(early->empty());  // held until the graph is terminal

  Effects fx = Done(Success(Start(id, 0).assignment.lease()));
  ASSERT_EQ(fx.waiters.size(), 1u);
  ASSERT_TRUE(fx.terminal_graph.has_value());
  EXPECT_TRUE(seen.empty());  // the store calls nothing itself
  for (TerminalWaiter& w : fx.waiters) w(*fx.terminal_graph);  // as the engine
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].id(), id);
  EXPECT_EQ(seen[0].state(), v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(seen[0].last_seq(), 5);
  EXPECT_EQ(seen[0].counts().succeeded(), 1);
  EXPECT_EQ(seen[0].last_seq(), LastSeq(id));

  // Registered after the end: handed back at once with the final graph.
  absl::StatusOr<Effects> late = store_->AddTerminalWaiter(
      id, [&seen](const v1::Graph& g) { seen.push_back(g); });
  ASSERT_TRUE(late.ok()) << late.status();
  ASSERT_EQ(late->waiters.size(), 1u);
  ASSERT_TRUE(late->terminal_graph.has_value());
  late->waiters[0](*late->terminal_graph);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1].state(), v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(seen[1].last_seq(), 5);
}

// ---------------------------------------------------------------------------
// ListGraphs

class ListGraphsTest : public StoreTest {
 protected:
  static constexpr int kGraphs = 25;

  // Graph i: label team=red for even i, blue for odd; SUCCEEDED when i % 3
  // == 0, else RUNNING.
  void SetUp() override {
    for (int i = 0; i < kGraphs; ++i) {
      v1::GraphSpec spec = Spec({{"a"}});
      (*spec.mutable_labels())["team"] = i % 2 == 0 ? "red" : "blue";
      (*spec.mutable_labels())["n"] = absl::StrCat(i);
      ids_.push_back(Submit(spec).graph_id);
      if (i % 3 == 0) Done(Success(Start(ids_.back(), 0).assignment.lease()));
    }
  }

  // Ids of graphs i (newest first) for which keep(i).
  template <typename F>
  std::vector<std::string> Newest(F keep) const {
    std::vector<std::string> out;
    for (int i = kGraphs - 1; i >= 0; --i) {
      if (keep(i)) out.push_back(ids_[i]);
    }
    return out;
  }

  // Follows next_page_token to the end; returns every page's ids.
  std::vector<std::vector<std::string>> Pages(v1::ListGraphsRequest request) {
    std::vector<std::vector<std::string>> pages;
    for (int guard = 0; guard < 100; ++guard) {
      absl::StatusOr<v1::ListGraphsResponse> r = store_->ListGraphs(request);
      EXPECT_TRUE(r.ok()) << r.status();
      if (!r.ok()) break;
      std::vector<std::string>& page = pages.emplace_back();
      for (const v1::Graph& g : r->graphs()) page.push_back(g.id());
      if (r->next_page_token().empty()) break;
      EXPECT_EQ(r->next_page_token(), page.back());
      request.set_page_token(r->next_page_token());
    }
    return pages;
  }

  static std::vector<std::string> Flatten(
      const std::vector<std::vector<std::string>>& pages) {
    std::vector<std::string> out;
    for (const auto& p : pages) out.insert(out.end(), p.begin(), p.end());
    return out;
  }

  std::vector<std::string> ids_;
};

TEST_F(ListGraphsTest, ListsNewestFirst) {
  absl::StatusOr<v1::ListGraphsResponse> r =
      store_->ListGraphs(v1::ListGraphsRequest());
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<std::string> got;
  for (const v1::Graph& g : r->graphs()) {
    got.push_back(g.id());
    EXPECT_EQ(g.tasks_size(), 0);  // BASIC by default
  }
  EXPECT_EQ(got, Newest([](int) { return true; }));
  EXPECT_EQ(r->next_page_token(), "");
  EXPECT_EQ(r->graphs(0).state(), v1::GRAPH_STATE_SUCCEEDED);  // i = 24
  EXPECT_EQ(r->graphs(1).state(), v1::GRAPH_STATE_RUNNING);

  v1::ListGraphsRequest full;
  full.set_view(v1::FULL);
  full.set_page_size(1);
  r = store_->ListGraphs(full);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->graphs_size(), 1);
  EXPECT_EQ(r->graphs(0).tasks_size(), 1);
}

TEST_F(ListGraphsTest, PagesVisitEveryGraphOnceInOrder) {
  v1::ListGraphsRequest request;
  request.set_page_size(7);
  const auto pages = Pages(request);
  ASSERT_EQ(pages.size(), 4u);
  EXPECT_EQ(pages[0].size(), 7u);
  EXPECT_EQ(pages[1].size(), 7u);
  EXPECT_EQ(pages[2].size(), 7u);
  EXPECT_EQ(pages[3].size(), 4u);
  EXPECT_EQ(Flatten(pages), Newest([](int) { return true; }));

  // A page size that divides the total: the last full page has no token.
  request.set_page_size(5);
  const auto fives = Pages(request);
  EXPECT_EQ(Flatten(fives), Newest([](int) { return true; }));
  EXPECT_EQ(fives.size(), 5u);
}

TEST_F(ListGraphsTest, FiltersByStateAndLabels) {
  v1::ListGraphsRequest red;
  (*red.mutable_labels())["team"] = "red";
  EXPECT_EQ(Flatten(Pages(red)), Newest([](int i) { return i % 2 == 0; }));

  v1::ListGraphsRequest done;
  done.add_states(v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(Flatten(Pages(done)), Newest([](int i) { return i % 3 == 0; }));

  v1::ListGraphsRequest both = done;
  *both.mutable_labels() = red.labels();
  both.set_page_size(2);
  const auto pages = Pages(both);
  EXPECT_EQ(Flatten(pages), Newest([](int i) { return i % 6 == 0; }));
  EXPECT_EQ(pages.size(), 3u);  // 24 18 | 12 6 | 0

  v1::ListGraphsRequest two_states;
  two_states.add_states(v1::GRAPH_STATE_SUCCEEDED);
  two_states.add_states(v1::GRAPH_STATE_RUNNING);
  (*two_states.mutable_labels())["n"] = "7";
  EXPECT_EQ(Flatten(Pages(two_states)), std::vector<std::string>{ids_[7]});

  v1::ListGraphsRequest none;
  (*none.mutable_labels())["team"] = "green";
  EXPECT_EQ(Flatten(Pages(none)), std::vector<std::string>{});
}

TEST_F(ListGraphsTest, MalformedPageTokenOrPageSizeIsInvalidArgument) {
  v1::ListGraphsRequest bad;
  bad.set_page_token("not-a-token");
  absl::StatusOr<v1::ListGraphsResponse> r = store_->ListGraphs(bad);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "page_token: malformed token");
  bad.set_page_token(ids_[3].substr(1));  // 25 characters
  EXPECT_EQ(store_->ListGraphs(bad).status().code(),
            absl::StatusCode::kInvalidArgument);

  v1::ListGraphsRequest size;
  size.set_page_size(-1);
  EXPECT_EQ(store_->ListGraphs(size).status().code(),
            absl::StatusCode::kInvalidArgument);
  size.set_page_size(1001);
  EXPECT_EQ(store_->ListGraphs(size).status().code(),
            absl::StatusCode::kInvalidArgument);
  size.set_page_size(1000);
  EXPECT_TRUE(store_->ListGraphs(size).ok());
}

// ---------------------------------------------------------------------------
// Assignments

TEST_F(StoreTest, UpstreamOutputsAreHandedOnAndOversizeOnesListedAsTruncated) {
  StoreOptions options = TestOptions();
  options.max_upstream_output_bytes = 8;
  options.max_total_upstream_bytes = 12;
  Reset(options);
  v1::GraphSpec spec = Spec({
      {"a"},                                      // 0: "alpha" (5)
      {"b"},                                      // 1: 10 bytes: too big
      {"e"},                                      // 2: "gamma!" (6)
      {"f"},                                      // 3: "delta" (5)
      {"x"},                                      // 4: fails
      {"c", {"a", "b", "e"}},                     // 5
      {"d", {"a", "e", "f", "x"}, v1::ALL_DONE},  // 6
  });
  v1::TaskSpec* c = spec.mutable_tasks(5);
  c->set_queue("gpu");
  c->set_input("in");
  (*c->mutable_params())["k"] = "v";
  (*c->mutable_params())["k2"] = "v2";
  (*c->mutable_labels())["l"] = "1";
  ToProto(absl::Seconds(5), c->mutable_timeouts()->mutable_run());
  const std::string id = Submit(spec).graph_id;
  const std::vector<std::string> outputs = {"alpha", "0123456789", "gamma!",
                                            "delta"};
  for (int i = 0; i < 4; ++i) {
    Done(Success(Start(id, i).assignment.lease(), outputs[i]));
  }
  Done(Failure(Start(id, 4).assignment.lease(), "X", true));

  const v1::Assignment ac = Start(id, 5, "w9").assignment;
  EXPECT_EQ(ac.lease().graph_id(), id);
  EXPECT_EQ(ac.lease().task_index(), 5);
  EXPECT_EQ(ac.lease().attempt(), 1);
  EXPECT_EQ(ac.task(), "c");
  EXPECT_EQ(ac.queue(), "gpu");
  EXPECT_EQ(ac.input(), "in");
  EXPECT_THAT(ac.params(),
              UnorderedElementsAre(Pair("k", "v"), Pair("k2", "v2")));
  EXPECT_THAT(ac.labels(), UnorderedElementsAre(Pair("l", "1")));
  EXPECT_EQ(ac.run_timeout_ms(), 5000);
  // a (5 bytes) fits; b is over the per-dependency bound; e (6) fits the
  // remaining total budget of 7.
  EXPECT_THAT(ac.upstream_outputs(),
              UnorderedElementsAre(Pair("a", "alpha"), Pair("e", "gamma!")));
  EXPECT_THAT(ac.truncated_upstream(), ElementsAre("b"));

  const v1::Assignment ad = Start(id, 6).assignment;
  EXPECT_EQ(ad.queue(), "default");
  EXPECT_EQ(ad.run_timeout_ms(), 600000);  // the default run timeout
  // a and e use 11 of the 12 bytes: f no longer fits; x failed (no output).
  EXPECT_THAT(ad.upstream_outputs(),
              UnorderedElementsAre(Pair("a", "alpha"), Pair("e", "gamma!")));
  EXPECT_THAT(ad.truncated_upstream(), ElementsAre("f"));
}

// ---------------------------------------------------------------------------
// Concurrency

// A deterministic random DAG: task k depends on up to three earlier tasks,
// with mixed triggers and retry limits; every fourth graph is fail_fast.
v1::GraphSpec RandomSpec(uint32_t seed, int tasks) {
  std::mt19937 rng(seed);
  v1::GraphSpec spec;
  spec.set_name(absl::StrCat("g", seed));
  spec.set_fail_fast(seed % 4 == 0);
  (*spec.mutable_labels())["parity"] = seed % 2 == 0 ? "even" : "odd";
  for (int k = 0; k < tasks; ++k) {
    v1::TaskSpec* t = spec.add_tasks();
    t->set_name(absl::StrCat("t", k));
    if (k > 0) {
      const int deps = static_cast<int>(rng() % 4);  // 0..3
      std::set<int> chosen;
      for (int d = 0; d < deps; ++d) chosen.insert(static_cast<int>(rng() % k));
      for (int d : chosen) t->add_depends_on(absl::StrCat("t", d));
    }
    const uint32_t roll = rng() % 10;
    t->set_trigger(roll < 6   ? v1::ALL_SUCCESS
                   : roll < 8 ? v1::ALL_DONE
                              : v1::ONE_FAILED);
    if (rng() % 3 == 0) t->mutable_retry()->set_max_attempts(2);
  }
  return spec;
}

TEST(StoreConcurrencyTest,
     WorkersReadersAndCancellersKeepEveryGraphConsistent) {
  constexpr int kWorkers = 8;
  constexpr int kGraphsPerWorker = 60;
  constexpr int kTasks = 12;
  StoreOptions options = TestOptions();
  options.shards = 4;  // more graphs per shard: more contention
  Store store(options);

  // ids[w][k]: graph k of worker w; made up front so that the canceller
  // knows them (NOT_FOUND until the worker inserted it).
  std::vector<std::vector<std::string>> ids(kWorkers);
  for (int k = 0; k < kGraphsPerWorker; ++k) {
    for (int w = 0; w < kWorkers; ++w) ids[w].push_back(NewUlid(kNow));
  }
  auto seed_of = [](int w, int k) {
    return static_cast<uint32_t>(w * kGraphsPerWorker + k);
  };

  // Events returned in effects, per graph, per thread (merged at the end).
  using EventLog = std::map<std::string, std::vector<v1::Event>>;
  std::vector<EventLog> logs(kWorkers + 1);  // workers, then the canceller
  std::vector<std::vector<uint64_t>> ready_seqs(kWorkers);
  std::vector<uint64_t> ready_seqs_canceller;
  auto record = [](EventLog& log, const Effects& fx) {
    for (const v1::Event& e : fx.events) log[e.graph_id()].push_back(e);
  };

  // Tasks made READY by the canceller's transitions (ALL_DONE dependents of
  // a cancelled task) go to the worker that owns the graph, as the engine
  // would enqueue them.
  struct Inbox {
    absl::Mutex mu;
    std::vector<ReadyTask> tasks ABSL_GUARDED_BY(mu);
  };
  std::unique_ptr<Inbox[]> inboxes(new Inbox[kWorkers]);
  std::map<std::string, int> owner;
  for (int w = 0; w < kWorkers; ++w) {
    for (const std::string& id : ids[w]) owner[id] = w;
  }
  std::atomic<bool> cancels_done{false};
  std::atomic<bool> stop_readers{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      EventLog& log = logs[w];
      std::mt19937 rng(1000 + w);
      const std::string worker = absl::StrCat("worker", w);
      std::deque<ReadyTask> queue;
      auto enqueue = [&](const Effects& fx) {
        for (const ReadyTask& r : fx.ready) {
          queue.push_back(r);
          ready_seqs[w].push_back(r.ready_seq);
        }
      };
      // One task attempt, as a worker would run it.
      auto step = [&] {
        const ReadyTask r = queue.front();
        queue.pop_front();
        absl::StatusOr<StartResult> s =
            store.StartAttempt(r.graph_id, r.index, worker, kNow);
        if (!s.ok()) {  // cancelled (or skipped) since it became READY
          EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition)
              << s.status();
          return;
        }
        record(log, s->effects);
        const v1::Lease& lease = s->assignment.lease();
        if (rng() % 4 == 0) {
          v1::TaskProgress p;
          *p.mutable_lease() = lease;
          p.mutable_progress()->set_step(1);
          absl::StatusOr<Effects> pf = store.Progress(p, kNow);
          if (pf.ok()) {
            record(log, *pf);
          } else {
            EXPECT_EQ(pf.status().code(), absl::StatusCode::kAborted);
          }
        }
        const uint32_t roll = rng() % 20;
        const v1::TaskResult result =
            roll < 15   ? Success(lease, "out")
            : roll < 18 ? Failure(lease, "FLAKY")
                        : Failure(lease, "FATAL", /*non_retryable=*/true);
        absl::StatusOr<Effects> c = store.Complete(result, kNow);
        if (!c.ok()) {  // cancelled while running
          EXPECT_EQ(c.status().code(), absl::StatusCode::kAborted)
              << c.status();
          return;
        }
        record(log, *c);
        enqueue(*c);
        for (const RetryTimer& t : c->retries) {  // the timer fires at once
          const Effects due = store.RetryDue(t, t.due);
          record(log, due);
          enqueue(due);
        }
      };
      auto collect = [&] {
        Inbox& in = inboxes[w];
        absl::MutexLock lock(&in.mu);
        for (ReadyTask& r : in.tasks) queue.push_back(std::move(r));
        in.tasks.clear();
      };
      for (int k = 0; k < kGraphsPerWorker; ++k) {
        const v1::GraphSpec spec = RandomSpec(seed_of(w, k), kTasks);
        absl::StatusOr<InsertResult> r =
            store.Insert(ids[w][k], "", spec, MustCompile(spec), kNow);
        ASSERT_TRUE(r.ok()) << r.status();
        record(log, r->effects);
        enqueue(r->effects);
        collect();
        for (int n = 0; n < 6 && !queue.empty(); ++n) step();
      }
      // Until the queue is empty and the canceller can add nothing more.
      for (;;) {
        collect();
        if (!queue.empty()) {
          step();
        } else if (cancels_done.load()) {
          collect();  // what it pushed before it finished
          if (queue.empty()) break;
        } else {
          std::this_thread::yield();
        }
      }
    });
  }

  // Cancels graph k of every worker for k % 5 == 1, and task t2 of it for
  // k % 5 == 3, retrying while the graph is not inserted yet.
  threads.emplace_back([&] {
    EventLog& log = logs[kWorkers];
    struct Target {
      std::string id;
      bool whole;
    };
    std::vector<Target> todo;
    for (int k = 0; k < kGraphsPerWorker; ++k) {
      for (int w = 0; w < kWorkers; ++w) {
        if (k % 5 == 1) todo.push_back({ids[w][k], true});
        if (k % 5 == 3) todo.push_back({ids[w][k], false});
      }
    }
    while (!todo.empty()) {
      std::vector<Target> later;
      for (const Target& t : todo) {
        absl::StatusOr<Effects> fx =
            t.whole ? store.CancelGraph(t.id, "test", kNow)
                    : store.CancelTask(t.id, "t2", "test", kNow);
        if (fx.ok()) {
          record(log, *fx);
          if (!fx->ready.empty()) {
            Inbox& in = inboxes[owner.at(t.id)];
            absl::MutexLock lock(&in.mu);
            for (const ReadyTask& r : fx->ready) {
              in.tasks.push_back(r);
              ready_seqs_canceller.push_back(r.ready_seq);
            }
          }
        } else {
          EXPECT_EQ(fx.status().code(), absl::StatusCode::kNotFound);
          later.push_back(t);
        }
      }
      todo = std::move(later);
      if (!todo.empty()) std::this_thread::yield();
    }
    cancels_done.store(true);
  });

  // Reads while everything moves: every snapshot is consistent.
  int64_t reads = 0;
  std::thread reader([&] {
    std::mt19937 rng(7);
    std::map<std::string, int64_t> last_seen;
    auto check = [&](const v1::Graph& g) {
      const v1::TaskCounts& c = g.counts();
      EXPECT_EQ(c.pending() + c.ready() + c.running() + c.succeeded() +
                    c.failed() + c.cancelled() + c.skipped(),
                kTasks)
          << g.id();
      if (graph::IsTerminal(g.state())) {
        EXPECT_EQ(c.pending() + c.ready() + c.running(), 0) << g.id();
      }
      int64_t& seen = last_seen[g.id()];
      EXPECT_GE(g.last_seq(), seen) << g.id();
      seen = g.last_seq();
    };
    while (!stop_readers.load()) {
      const int w = static_cast<int>(rng() % kWorkers);
      const int k = static_cast<int>(rng() % kGraphsPerWorker);
      absl::StatusOr<v1::Graph> g = store.GetGraph(ids[w][k], v1::FULL);
      if (g.ok()) {
        check(*g);
        EXPECT_EQ(g->tasks_size(), kTasks);
      } else {
        EXPECT_EQ(g.status().code(), absl::StatusCode::kNotFound);
      }
      if (++reads % 16 == 0) {
        v1::ListGraphsRequest request;
        request.set_page_size(50);
        if (reads % 32 == 0) (*request.mutable_labels())["parity"] = "odd";
        absl::StatusOr<v1::ListGraphsResponse> list = store.ListGraphs(request);
        ASSERT_TRUE(list.ok()) << list.status();
        for (int i = 0; i < list->graphs_size(); ++i) {
          check(list->graphs(i));
          if (i > 0) {
            EXPECT_GT(list->graphs(i - 1).id(), list->graphs(i).id());
          }
        }
      }
    }
  });

  for (std::thread& t : threads) t.join();
  stop_readers.store(true);
  reader.join();
  EXPECT_GT(reads, 0);

  // Every graph is terminal, its counts add up, and the events handed out in
  // effects are exactly 1..last_seq with one terminal graph event, last.
  std::set<uint64_t> all_ready_seqs;
  size_t ready_total = 0;
  ready_seqs.push_back(std::move(ready_seqs_canceller));
  for (const auto& v : ready_seqs) {
    all_ready_seqs.insert(v.begin(), v.end());
    ready_total += v.size();
  }
  EXPECT_EQ(all_ready_seqs.size(), ready_total) << "ready_seq reused";
  EXPECT_EQ(store.graph_count(), kWorkers * kGraphsPerWorker);
  std::map<v1::GraphState, int> outcomes;
  for (int w = 0; w < kWorkers; ++w) {
    for (int k = 0; k < kGraphsPerWorker; ++k) {
      const std::string& id = ids[w][k];
      absl::StatusOr<v1::Graph> g = store.GetGraph(id, v1::FULL);
      ASSERT_TRUE(g.ok()) << g.status();
      ++outcomes[g->state()];
      EXPECT_TRUE(graph::IsTerminal(g->state()))
          << id << " " << v1::GraphState_Name(g->state());

      const v1::TaskCounts& c = g->counts();
      EXPECT_EQ(c.succeeded() + c.cancelled() + c.skipped() + c.failed(),
                kTasks)
          << id;
      std::map<v1::TaskState, int> tally;
      for (const v1::Task& t : g->tasks()) ++tally[t.state()];
      EXPECT_EQ(tally[v1::SUCCEEDED], c.succeeded()) << id;
      EXPECT_EQ(tally[v1::FAILED], c.failed()) << id;
      EXPECT_EQ(tally[v1::CANCELLED], c.cancelled()) << id;
      EXPECT_EQ(tally[v1::SKIPPED], c.skipped()) << id;
      EXPECT_EQ(g->state(), graph::Outcome(g->cancel_requested(), c.failed(),
                                           c.cancelled()))
          << id;

      std::vector<v1::Event> events;
      for (const EventLog& log : logs) {
        auto it = log.find(id);
        if (it == log.end()) continue;
        events.insert(events.end(), it->second.begin(), it->second.end());
      }
      std::sort(events.begin(), events.end(),
                [](const v1::Event& a, const v1::Event& b) {
                  return a.seq() < b.seq();
                });
      ASSERT_EQ(static_cast<int64_t>(events.size()), g->last_seq()) << id;
      EXPECT_EQ(Seqs(events), Iota(1, g->last_seq())) << id;
      EXPECT_EQ(events.front().type(), v1::GRAPH_SUBMITTED) << id;
      int terminal_graph_events = 0;
      std::map<std::string, int> terminal_task_events;
      for (const v1::Event& e : events) {
        switch (e.type()) {
          case v1::GRAPH_SUCCEEDED:
          case v1::GRAPH_FAILED:
          case v1::GRAPH_CANCELLED:
            ++terminal_graph_events;
            break;
          case v1::TASK_SUCCEEDED:
          case v1::TASK_FAILED:
          case v1::TASK_CANCELLED:
          case v1::TASK_SKIPPED:
            ++terminal_task_events[e.task()];
            break;
          default:
            break;
        }
      }
      EXPECT_EQ(terminal_graph_events, 1) << id;
      const v1::EventType want_last =
          g->state() == v1::GRAPH_STATE_SUCCEEDED ? v1::GRAPH_SUCCEEDED
          : g->state() == v1::GRAPH_STATE_FAILED  ? v1::GRAPH_FAILED
                                                  : v1::GRAPH_CANCELLED;
      EXPECT_EQ(events.back().type(), want_last) << id;
      EXPECT_EQ(terminal_task_events.size(), static_cast<size_t>(kTasks)) << id;
      for (const auto& [task, n] : terminal_task_events) {
        EXPECT_EQ(n, 1) << id << " " << task;
      }
    }
  }
  // How the graphs ended depends on the interleaving: recorded, not asserted.
  ::testing::Test::RecordProperty(
      "outcomes",
      absl::StrCat("succeeded=", outcomes[v1::GRAPH_STATE_SUCCEEDED],
                   " failed=", outcomes[v1::GRAPH_STATE_FAILED],
                   " cancelled=", outcomes[v1::GRAPH_STATE_CANCELLED]));
}

}  // namespace
}  // namespace forge::store

// ---------------------------------------------------------------------------
// Attempt deadlines (run timeout, heartbeat expiry)

namespace forge::store {
namespace {

class DeadlineTest : public StoreTest {};

TEST_F(DeadlineTest, AttemptDeadlinesLiveExactlyAsLongAsTheirAttempts) {
  v1::GraphSpec spec = Spec({{"a"}, {"b"}});
  spec.mutable_tasks(0)->mutable_timeouts()->mutable_run()->set_seconds(10);
  spec.mutable_tasks(0)->mutable_timeouts()->mutable_heartbeat()->set_seconds(3);
  const InsertResult g = Submit(spec);
  EXPECT_EQ(store_->deadlines_held(), 0u);
  // The first attempt of the shard asks for a timer at its earliest
  // deadline (the heartbeat's); the second one's are later: no new timer.
  const StartResult a = Start(g.graph_id, 0);
  EXPECT_GE(a.effects.deadline_shard, 0);
  EXPECT_EQ(a.effects.deadline_due, kNow + absl::Seconds(3));
  const StartResult b = Start(g.graph_id, 1);
  EXPECT_EQ(b.effects.deadline_shard, -1);
  EXPECT_EQ(store_->deadlines_held(), 4u);  // run + heartbeat, twice
  Done(Success(a.assignment.lease()));
  EXPECT_EQ(store_->deadlines_held(), 2u);
  Done(Success(b.assignment.lease()));
  EXPECT_EQ(store_->deadlines_held(), 0u);  // nothing lingers after its attempt
}

TEST_F(DeadlineTest, RunTimeoutAndSilentWorkerExpireOthersAreLookedAtAgain) {
  v1::GraphSpec spec = Spec({{"slow"}, {"quiet"}, {"chatty"}});
  spec.mutable_tasks(0)->mutable_timeouts()->mutable_run()->set_seconds(5);
  spec.mutable_tasks(0)->mutable_retry()->set_max_attempts(1);
  for (int i : {1, 2}) {
    spec.mutable_tasks(i)->mutable_timeouts()->mutable_heartbeat()->set_seconds(2);
    spec.mutable_tasks(i)->mutable_retry()->set_max_attempts(1);
  }
  const InsertResult g = Submit(spec);
  const StartResult slow = Start(g.graph_id, 0);
  const StartResult quiet = Start(g.graph_id, 1);
  const StartResult chatty = Start(g.graph_id, 2);
  // slow's run timeout (5 s, before its default 30 s heartbeat), then
  // quiet's heartbeat are each the shard's earliest when they start.
  const int shard = slow.effects.deadline_shard;
  ASSERT_GE(shard, 0);
  EXPECT_EQ(slow.effects.deadline_due, kNow + absl::Seconds(5));
  EXPECT_EQ(quiet.effects.deadline_due, kNow + absl::Seconds(2));
  EXPECT_EQ(chatty.effects.deadline_shard, -1);
  // chatty heartbeats at +1.5 s; at +2 s quiet's lease is lost, chatty's
  // deadline moves to +3.5 s.
  ASSERT_TRUE(store_->Heartbeat(chatty.assignment.lease(), kNow + absl::Milliseconds(1500)).ok());
  Store::DeadlineSweep sweep =
      store_->ExpireDeadlines(shard, kNow + absl::Seconds(2), kNow + absl::Seconds(2));
  ASSERT_EQ(sweep.effects.size(), 1u);
  ASSERT_EQ(sweep.effects[0].cancels.size(), 1u);
  EXPECT_EQ(LeaseString(sweep.effects[0].cancels[0].lease),
            LeaseString(quiet.assignment.lease()));
  EXPECT_EQ(Task(g.graph_id, "quiet").error().code(), "LEASE_LOST");
  EXPECT_EQ(Task(g.graph_id, "chatty").state(), v1::RUNNING);
  EXPECT_EQ(sweep.rearm, kNow + absl::Milliseconds(3500));
  // A stale timer (not the armed one) finds nothing due and arms nothing.
  sweep = store_->ExpireDeadlines(shard, kNow + absl::Seconds(1), kNow + absl::Seconds(2));
  EXPECT_TRUE(sweep.effects.empty());
  EXPECT_EQ(sweep.rearm, absl::InfiniteFuture());
  Done(Success(chatty.assignment.lease()));
  // slow's run timeout.
  sweep = store_->ExpireDeadlines(shard, kNow + absl::Milliseconds(3500),
                                  kNow + absl::Seconds(5));
  ASSERT_EQ(sweep.effects.size(), 1u);
  EXPECT_EQ(Task(g.graph_id, "slow").error().code(), "TIMEOUT");
  EXPECT_EQ(Task(g.graph_id, "slow").state(), v1::FAILED);
  EXPECT_EQ(store_->deadlines_held(), 0u);
  EXPECT_EQ(sweep.rearm, absl::InfiniteFuture());
}

}  // namespace
}  // namespace forge::store

namespace forge::store {
namespace {

TEST_F(StoreTest, ReadsGiveBackTheSubmittedDependencyNames) {
  // The store keeps dependencies as indices once compiled; reads name them
  // again, in the submitted order, and a list with a repeat is kept as is.
  v1::GraphSpec spec = Spec({{"a"}, {"b"}, {"c", {"b", "a"}}, {"d", {"a", "a", "c"}}});
  const InsertResult g = Submit(spec);
  const v1::Graph got = Get(g.graph_id);
  ASSERT_EQ(got.tasks_size(), 4);
  for (int i = 0; i < 4; ++i) {
    EXPECT_THAT(got.tasks(i).spec().depends_on(),
                ElementsAreArray(spec.tasks(i).depends_on()))
        << spec.tasks(i).name();
  }
}

}  // namespace
}  // namespace forge::store

// Archive (memory retention)
namespace forge::store {
namespace {

// A store on an inline memory journal: every commit is durable at once.
class ArchiveTest : public StoreTest {
 protected:
  ArchiveTest() : journal_(persist::NewMemoryJournal(persist::MemoryJournalOptions())) {
    store_ = std::make_unique<Store>(TestOptions(), journal_.get());
  }
  // a -> b, run to the end.
  std::string Finished() {
    const InsertResult r = Submit(Spec({{"a"}, {"b", {"a"}}}));
    Done(Success(Start(r.graph_id, 0).assignment.lease()));
    lease_ = Start(r.graph_id, 1).assignment.lease();
    Done(Success(lease_));
    return r.graph_id;
  }
  // Store::Archive's answer: "archived", "not archived" or the error code.
  std::string ArchiveOf(const std::string& id) {
    absl::StatusOr<bool> r = store_->Archive(id);
    if (!r.ok()) return absl::StatusCodeToString(r.status().code());
    return *r ? "archived" : "not archived";
  }
  std::unique_ptr<persist::Journal> journal_;
  v1::Lease lease_;
};

TEST_F(ArchiveTest, OnlyAFinishedGraphIsArchivedAndOnlyOnce) {
  const InsertResult live = Submit(Spec({{"a"}}));
  EXPECT_EQ(ArchiveOf(live.graph_id), "not archived");
  EXPECT_FALSE(store_->IsArchived(live.graph_id));
  EXPECT_EQ(ArchiveOf("nope"), "NOT_FOUND");

  const std::string id = Finished();
  const v1::Graph hot = Get(id);
  EXPECT_EQ(ArchiveOf(id), "archived");
  EXPECT_EQ(ArchiveOf(id), "not archived");
  EXPECT_TRUE(store_->IsArchived(id));
  EXPECT_EQ(store_->archived_count(), 1);
  EXPECT_EQ(Get(id).DebugString(), hot.DebugString());  // from the journal
  EXPECT_EQ(Get(id, v1::BASIC).counts().succeeded(), 2);
  EXPECT_EQ(Task(id, "b").attempt(), 1);
  // Its attempts are over: a late report is ABORTED, a start NOT_FOUND.
  EXPECT_EQ(store_->Complete(Success(lease_), kNow).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(store_->Heartbeat(lease_, kNow).code(), absl::StatusCode::kAborted);
  EXPECT_EQ(store_->StartAttempt(id, 0, "w1", kNow).status().code(),
            absl::StatusCode::kNotFound);
  // Erased: gone from both counts.
  ASSERT_TRUE(store_->Erase(id).ok());
  EXPECT_EQ(store_->archived_count(), 0);
  EXPECT_EQ(store_->GetGraph(id, v1::BASIC).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ArchiveTest, EphemeralStoresKeepFinishedGraphsInMemory) {
  Reset(TestOptions());  // no journal
  const InsertResult r = Submit(Spec({{"a"}}));
  Done(Success(Start(r.graph_id, 0).assignment.lease()));
  EXPECT_EQ(ArchiveOf(r.graph_id), "not archived");
  EXPECT_FALSE(store_->IsArchived(r.graph_id));
}

TEST_F(ArchiveTest, ReadEventsPagesThroughTheJournalInOrder) {
  const std::string id = Finished();
  const int64_t last = LastSeq(id);
  std::vector<v1::Event> events;
  int64_t after = 0;
  while (after < last) {
    const size_t before = events.size();
    ASSERT_TRUE(store_->ReadEvents(id, after, 2, &events).ok());
    ASSERT_GT(events.size(), before);
    ASSERT_LE(events.size() - before, 2u);
    after = events.back().seq();
  }
  ASSERT_EQ(static_cast<int64_t>(events.size()), last);
  for (int64_t i = 0; i < last; ++i) EXPECT_EQ(events[i].seq(), i + 1);
  EXPECT_EQ(events.back().type(), v1::GRAPH_SUCCEEDED);
  std::vector<v1::Event> none;
  ASSERT_TRUE(store_->ReadEvents(id, last, 10, &none).ok());
  EXPECT_TRUE(none.empty());
}

}  // namespace
}  // namespace forge::store
