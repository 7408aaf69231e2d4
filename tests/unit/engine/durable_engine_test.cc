// Durable before visible: with a journal whose commits become durable only
// when the test says so, nothing a transition makes visible (the submit
// reply, events, the dispatch, a result's ack) happens before its records
// are durable; and the journal receives them in the store's order.
#include <gtest/gtest.h>

#include <deque>
#include <map>

#include "absl/synchronization/mutex.h"
#include "server/engine/engine.h"
#include "server/persist/journal.h"
#include "server/store/records.h"

namespace forge {
namespace {

namespace v1 = ::forge::v1;

// Commits wait until Release(); then they are applied to a map in order.
class ManualJournal final : public persist::Journal {
 public:
  void Commit(persist::Batch batch, persist::CommitDone done) override {
    absl::MutexLock lock(&mu_);
    pending_.push_back({std::move(batch), std::move(done)});
  }
  // Makes every batch committed so far durable, in commit order.
  int Release() {
    std::deque<std::pair<persist::Batch, persist::CommitDone>> take;
    {
      absl::MutexLock lock(&mu_);
      take.swap(pending_);
    }
    for (auto& [batch, done] : take) {
      {
        absl::MutexLock lock(&mu_);
        for (const persist::Mutation& m : batch.mutations()) {
          if (m.op == persist::Mutation::Op::kPut) data_[m.key] = m.value;
        }
      }
      done(absl::OkStatus());
    }
    return static_cast<int>(take.size());
  }
  // Replaces a durable record's bytes (a record this version cannot read).
  void Overwrite(const std::string& key, std::string value) {
    absl::MutexLock lock(&mu_);
    data_[key] = std::move(value);
  }
  size_t keys() const {
    absl::MutexLock lock(&mu_);
    return data_.size();
  }
  absl::StatusOr<std::optional<std::string>> Get(absl::string_view key) const override {
    absl::MutexLock lock(&mu_);
    auto it = data_.find(std::string(key));
    if (it == data_.end()) return std::optional<std::string>();
    return std::optional<std::string>(it->second);
  }
  absl::Status Scan(absl::string_view begin, absl::string_view end,
                    absl::FunctionRef<bool(absl::string_view, absl::string_view)> visit)
      const override {
    absl::MutexLock lock(&mu_);
    for (auto it = data_.lower_bound(std::string(begin));
         it != data_.end() && (end.empty() || it->first < end); ++it) {
      if (!visit(it->first, it->second)) break;
    }
    return absl::OkStatus();
  }
  void Flush() override {}
  absl::Status health() const override { return absl::OkStatus(); }
  persist::JournalStats stats() const override { return {}; }

 private:
  mutable absl::Mutex mu_;
  std::deque<std::pair<persist::Batch, persist::CommitDone>> pending_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> data_ ABSL_GUARDED_BY(mu_);
};

class RecordingExecutor final : public sched::Executor {
 public:
  const std::string& id() const override { return id_; }
  bool Assign(std::vector<sched::Dispatch> batch) override {
    absl::MutexLock lock(&mu_);
    for (auto& d : batch) got_.push_back(std::move(d));
    return true;
  }
  void Cancel(const v1::Lease&, const std::string&) override {}
  std::vector<sched::Dispatch> got() {
    absl::MutexLock lock(&mu_);
    return got_;
  }

 private:
  const std::string id_ = "exec";
  absl::Mutex mu_;
  std::vector<sched::Dispatch> got_ ABSL_GUARDED_BY(mu_);
};

// An engine on `journal` with its own timers and bus; the timers stop with it.
struct EngineOn {
  explicit EngineOn(ManualJournal& journal)
      : engine(EngineOptions{}, Clock::Real(), &timers, &bus, &journal) {}
  ~EngineOn() { timers.Shutdown(); }
  TimerService timers{Clock::Real()};
  events::EventBus bus;
  Engine engine;
};

// Submits `req` to an engine on `journal`, makes it durable and stops that
// engine (a restart follows); returns the graph id.
std::string SubmitAndStop(ManualJournal& journal, const v1::SubmitGraphRequest& req) {
  EngineOn e(journal);
  std::string id;
  e.engine.Submit(req, [&](absl::StatusOr<v1::SubmitGraphResponse> r) { id = r->graph_id(); });
  journal.Release();
  return id;
}

TEST(DurableEngineTest, NothingIsVisibleBeforeItsRecordsAreDurable) {
  TimerService timers(Clock::Real());
  events::EventBus bus;
  ManualJournal journal;
  Engine engine(EngineOptions{}, Clock::Real(), &timers, &bus, &journal);
  auto exec = std::make_shared<RecordingExecutor>();
  engine.AttachExecutor(exec, {"default"}, 4, "exec");
  const uint64_t published0 = bus.events_published();

  v1::SubmitGraphRequest req;
  v1::TaskSpec* t = req.mutable_graph()->add_tasks();
  t->set_name("t");
  std::optional<absl::StatusOr<v1::SubmitGraphResponse>> reply;
  engine.Submit(req, [&](absl::StatusOr<v1::SubmitGraphResponse> r) { reply = std::move(r); });
  EXPECT_FALSE(reply.has_value()) << "replied before durable";
  EXPECT_EQ(bus.events_published(), published0) << "events visible before durable";
  EXPECT_TRUE(exec->got().empty());

  ASSERT_EQ(journal.Release(), 1);  // the submit: spec, roots, events
  ASSERT_TRUE(reply.has_value() && reply->ok());
  const std::string id = (*reply)->graph_id();
  EXPECT_EQ(bus.events_published(), published0 + 2);  // SUBMITTED, READY
  EXPECT_TRUE(journal.Get(store::SpecKey(id))->has_value());
  // The dispatch's record (TASK_STARTED, the lease) is committed, not durable.
  EXPECT_TRUE(exec->got().empty()) << "dispatched before durable";

  ASSERT_EQ(journal.Release(), 1);
  const std::vector<sched::Dispatch> got = exec->got();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(bus.events_published(), published0 + 3);  // STARTED

  v1::TaskResult result;
  *result.mutable_lease() = got[0].assignment.lease();
  result.set_success(true);
  std::optional<absl::Status> ack;
  engine.OnResult("exec", got[0].ticket, result, [&](absl::Status s) { ack = s; });
  EXPECT_FALSE(ack.has_value()) << "acknowledged before durable";
  EXPECT_EQ(engine.GetGraph(id, v1::BASIC)->state(), v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(bus.events_published(), published0 + 3);
  ASSERT_EQ(journal.Release(), 1);
  ASSERT_TRUE(ack.has_value());
  EXPECT_TRUE(ack->ok());
  EXPECT_EQ(bus.events_published(), published0 + 5);  // SUCCEEDED, GRAPH_SUCCEEDED
  // A stale result is refused at once and writes nothing.
  std::optional<absl::Status> stale;
  engine.OnResult("exec", 0, result, [&](absl::Status s) { stale = s; });
  ASSERT_TRUE(stale.has_value());
  EXPECT_EQ(stale->code(), absl::StatusCode::kAborted);
  EXPECT_EQ(journal.Release(), 0);
  timers.Shutdown();
}

TEST(DurableEngineTest, ARepeatedRequestIdIsAnsweredOnlyOnceItsGraphIsDurable) {
  TimerService timers(Clock::Real());
  events::EventBus bus;
  ManualJournal journal;
  Engine engine(EngineOptions{}, Clock::Real(), &timers, &bus, &journal);
  v1::SubmitGraphRequest req;
  req.set_request_id("same");
  req.mutable_graph()->add_tasks()->set_name("t");
  std::optional<absl::StatusOr<v1::SubmitGraphResponse>> first, second;
  engine.Submit(req, [&](absl::StatusOr<v1::SubmitGraphResponse> r) { first = std::move(r); });
  engine.Submit(req, [&](absl::StatusOr<v1::SubmitGraphResponse> r) { second = std::move(r); });
  EXPECT_FALSE(first.has_value());
  EXPECT_FALSE(second.has_value()) << "a retry was told the graph exists before it was durable";
  journal.Release();
  ASSERT_TRUE(first.has_value() && first->ok());
  ASSERT_TRUE(second.has_value() && second->ok());
  EXPECT_EQ((*first)->graph_id(), (*second)->graph_id());
  EXPECT_TRUE((*first)->created());
  EXPECT_FALSE((*second)->created());
  timers.Shutdown();
}

TEST(DurableEngineTest, ARecoveredEngineContinuesTheSameGraph) {
  ManualJournal journal;
  v1::SubmitGraphRequest req;
  req.mutable_graph()->add_tasks()->set_name("a");
  v1::TaskSpec* b = req.mutable_graph()->add_tasks();
  b->set_name("b");
  b->add_depends_on("a");
  const std::string id = SubmitAndStop(journal, req);
  ASSERT_FALSE(id.empty());
  EngineOn restarted(journal);
  Engine& engine = restarted.engine;
  absl::StatusOr<RecoveryStats> r = engine.Recover();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->graphs, 1);
  EXPECT_EQ(r->live_graphs, 1);
  EXPECT_EQ(r->events, 2);
  absl::StatusOr<v1::Graph> g = engine.GetGraph(id, v1::FULL);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->tasks(0).state(), v1::READY);
  EXPECT_EQ(g->tasks(1).state(), v1::PENDING);
  EXPECT_EQ(g->last_seq(), 2);
  // The READY task is queued again: an executor gets it.
  auto exec = std::make_shared<RecordingExecutor>();
  engine.AttachExecutor(exec, {"default"}, 4, "exec");
  journal.Release();
  ASSERT_EQ(exec->got().size(), 1u);
  EXPECT_EQ(exec->got()[0].assignment.task(), "a");
}

TEST(DurableEngineTest, EventRecordsWithOrWithoutTheirGraphIdReadTheSame) {
  ManualJournal journal;
  v1::SubmitGraphRequest req;
  req.mutable_graph()->add_tasks()->set_name("a");
  const std::string id = SubmitAndStop(journal, req);
  ASSERT_FALSE(id.empty());
  auto record = [&](int64_t seq) {
    forge::journal::v1::EventRecord r;
    absl::StatusOr<std::optional<std::string>> bytes = journal.Get(store::EventKey(id, seq));
    EXPECT_TRUE(bytes.ok() && bytes->has_value() && r.ParseFromString(**bytes)) << seq;
    return r;
  };
  // This version leaves the graph id out (the key names it)...
  const forge::journal::v1::EventRecord first = record(1);
  EXPECT_EQ(first.event().graph_id(), "");
  EXPECT_EQ(first.event().type(), v1::GRAPH_SUBMITTED);
  // ...and earlier ones wrote it: a record of each kind reads the same.
  forge::journal::v1::EventRecord second = record(2);
  ASSERT_EQ(second.event().seq(), 2);
  second.mutable_event()->set_graph_id(id);
  journal.Overwrite(store::EventKey(id, 2), second.SerializeAsString());

  EngineOn restarted(journal);
  Engine& engine = restarted.engine;
  ASSERT_TRUE(engine.Recover().ok());
  absl::StatusOr<std::shared_ptr<events::Subscription>> sub =
      engine.SubscribeGraph(id, 0, [] {});
  ASSERT_TRUE(sub.ok()) << sub.status();
  const std::vector<v1::Event> events = (*sub)->Next(100).events;
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].graph_id(), id);
  EXPECT_EQ(events[0].type(), v1::GRAPH_SUBMITTED);
  EXPECT_EQ(events[1].graph_id(), id);
  EXPECT_EQ(events[1].type(), v1::TASK_READY);
  EXPECT_EQ(events[1].task(), "a");
  (*sub)->Close();
}

// Recovery parses a spec of 1 MiB or more on a thread of its own while it
// reads on; a small one inline. Either way the graph comes back whole, and
// a spec record that does not parse stops the recovery with DATA_LOSS.
class RecoverSpecTest : public ::testing::TestWithParam<bool> {
 protected:
  // Two tasks; with GetParam() their inputs make the spec ~1.4 MB.
  std::string SubmitTo(ManualJournal& journal) {
    v1::SubmitGraphRequest req;
    v1::TaskSpec* a = req.mutable_graph()->add_tasks();
    a->set_name("a");
    a->set_input(std::string(GetParam() ? 700 << 10 : 10, 'a'));
    v1::TaskSpec* b = req.mutable_graph()->add_tasks();
    b->set_name("b");
    b->add_depends_on("a");
    b->set_input(std::string(GetParam() ? 700 << 10 : 10, 'b'));
    return SubmitAndStop(journal, req);
  }
};

TEST_P(RecoverSpecTest, TheGraphComesBackWhole) {
  ManualJournal journal;
  const std::string id = SubmitTo(journal);
  ASSERT_FALSE(id.empty());
  EngineOn restarted(journal);
  Engine& engine = restarted.engine;
  absl::StatusOr<RecoveryStats> r = engine.Recover();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tasks, 2);
  absl::StatusOr<v1::Graph> g = engine.GetGraph(id, v1::FULL);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_EQ(g->tasks_size(), 2);
  EXPECT_EQ(g->tasks(0).spec().input(), std::string(GetParam() ? 700 << 10 : 10, 'a'));
  EXPECT_EQ(g->tasks(1).spec().input(), std::string(GetParam() ? 700 << 10 : 10, 'b'));
  EXPECT_EQ(g->tasks(1).spec().depends_on(0), "a");
  EXPECT_EQ(g->tasks(0).state(), v1::READY);
}

TEST_P(RecoverSpecTest, ASpecThatDoesNotParseIsDataLoss) {
  ManualJournal journal;
  const std::string id = SubmitTo(journal);
  ASSERT_FALSE(id.empty());
  // Wire type 7 does not exist: no parser accepts it, whatever its length.
  journal.Overwrite(store::SpecKey(id), std::string(GetParam() ? 2 << 20 : 64, '\xff'));
  EngineOn restarted(journal);
  Engine& engine = restarted.engine;
  absl::StatusOr<RecoveryStats> r = engine.Recover();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_NE(r.status().message().find("does not parse"), std::string::npos) << r.status();
  EXPECT_FALSE(engine.GetGraph(id, v1::BASIC).ok());
}

INSTANTIATE_TEST_SUITE_P(SmallAndBig, RecoverSpecTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? std::string("ParsedOnAThread")
                                          : std::string("ParsedInline");
                         });

}  // namespace
}  // namespace forge
