// Properties of the Scheduler (server/sched/scheduler.h): order within a
// queue (priority, then FIFO by ready_seq), per-queue concurrency, executor
// slots, round-robin across a queue's executors, queue matching, removal of
// executors and the stats views. Executors are fakes that record the batches
// the test dispatches to them, as the engine does with each Match.

#include "server/sched/scheduler.h"

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace forge::sched {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// Records every batch handed to it; never closed.
class FakeExecutor : public Executor {
 public:
  explicit FakeExecutor(std::string id) : id_(std::move(id)) {}

  const std::string& id() const override { return id_; }

  bool Assign(std::vector<Dispatch> batch) override {
    absl::MutexLock lock(&mu_);
    std::vector<forge::v1::Assignment> assignments;
    for (Dispatch& d : batch) {
      tickets_[absl::StrCat(d.assignment.lease().graph_id(), "/",
                            d.assignment.lease().task_index())] = d.ticket;
      assignments.push_back(std::move(d.assignment));
    }
    batches_.push_back(std::move(assignments));
    return true;
  }

  // The ticket of the dispatch of "graph/index".
  uint64_t TicketOf(const std::string& task) const {
    absl::MutexLock lock(&mu_);
    auto it = tickets_.find(task);
    return it == tickets_.end() ? 0 : it->second;
  }

  void Cancel(const forge::v1::Lease& lease,
              const std::string& reason) override {
    absl::MutexLock lock(&mu_);
    cancels_.push_back(lease);
  }

  // "graph/index" of every assignment received, in order.
  std::vector<std::string> Received() const {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> out;
    for (const auto& batch : batches_) {
      for (const forge::v1::Assignment& a : batch) {
        out.push_back(
            absl::StrCat(a.lease().graph_id(), "/", a.lease().task_index()));
      }
    }
    return out;
  }

 private:
  const std::string id_;
  mutable absl::Mutex mu_;
  std::vector<std::vector<forge::v1::Assignment>> batches_ ABSL_GUARDED_BY(mu_);
  std::vector<forge::v1::Lease> cancels_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> tickets_ ABSL_GUARDED_BY(mu_);
};

QueuedTask Task(const std::string& graph, int32_t index, int32_t priority,
                uint64_t ready_seq) {
  QueuedTask t;
  t.graph_id = graph;
  t.index = index;
  t.priority = priority;
  t.ready_seq = ready_seq;
  return t;
}

// Hands the matched task to its executor (a batch of one), as the engine
// does once the store started the attempt; returns "graph/index".
std::string DispatchMatch(const Match& m) {
  Dispatch d;
  d.assignment.mutable_lease()->set_graph_id(m.task.graph_id);
  d.assignment.mutable_lease()->set_task_index(m.task.index);
  d.assignment.set_queue(m.queue);
  d.ticket = m.ticket;
  std::vector<Dispatch> batch;
  batch.push_back(std::move(d));
  EXPECT_TRUE(m.executor->Assign(std::move(batch)));
  return absl::StrCat(m.task.graph_id, "/", m.task.index);
}

// Takes from `queue` until nothing matches; returns "executor:graph/index"
// of each match, dispatched.
std::vector<std::string> TakeAll(Scheduler& s, const std::string& queue) {
  std::vector<std::string> out;
  for (int guard = 0; guard < 1000; ++guard) {
    std::optional<Match> m = s.Take(queue);
    if (!m) break;
    EXPECT_EQ(m->queue, queue);
    out.push_back(absl::StrCat(m->executor->id(), ":", DispatchMatch(*m)));
  }
  return out;
}

TEST(SchedulerTest, TakesByPriorityThenReadySeq) {
  Scheduler s;
  auto e = std::make_shared<FakeExecutor>("e");
  s.AddExecutor(e, {"q"}, 100);
  // Enqueued out of order on purpose.
  s.Enqueue("q", Task("g", 0, 0, 5));
  s.Enqueue("q", Task("g", 1, 10, 9));
  s.Enqueue("q", Task("g", 2, 0, 2));
  s.Enqueue("q", Task("g", 3, -3, 1));
  s.Enqueue("q", Task("g", 4, 10, 3));
  s.Enqueue("q", Task("g", 5, 0, 7));
  s.Enqueue("q", Task("g", 6, 10, 4));
  EXPECT_THAT(TakeAll(s, "q"),
              ElementsAre("e:g/4", "e:g/6", "e:g/1",  // priority 10
                          "e:g/2", "e:g/0", "e:g/5",  // priority 0
                          "e:g/3"));                  // priority -3
  EXPECT_THAT(e->Received(),
              ElementsAre("g/4", "g/6", "g/1", "g/2", "g/0", "g/5", "g/3"));
  // A late, higher-priority task overtakes the ones already waiting, and a
  // later ready_seq never overtakes an earlier one.
  Scheduler t;
  t.AddExecutor(e, {"q"}, 100);
  t.Enqueue("q", Task("h", 0, 0, 20));
  t.Enqueue("q", Task("h", 1, 0, 21));
  std::optional<Match> first = t.Take("q");
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->task.index, 0);
  t.Enqueue("q", Task("h", 2, 1, 30));
  t.Enqueue("q", Task("h", 3, 0, 10));  // became ready earlier than h/1
  EXPECT_THAT(TakeAll(t, "q"), ElementsAre("e:h/2", "e:h/3", "e:h/1"));
}

TEST(SchedulerTest, QueueConcurrencyLimitIsRespectedAndReleaseFreesIt) {
  Scheduler s;
  s.Configure("q", QueueConfig{2});
  auto e = std::make_shared<FakeExecutor>("e");
  s.AddExecutor(e, {"q"}, 10);
  for (int i = 0; i < 5; ++i) s.Enqueue("q", Task("g", i, 0, i + 1));

  EXPECT_THAT(TakeAll(s, "q"), ElementsAre("e:g/0", "e:g/1"));
  std::vector<QueueStats> qs = s.Queues();
  ASSERT_EQ(qs.size(), 1u);
  EXPECT_EQ(qs[0].running, 2);
  EXPECT_EQ(qs[0].depth, 3);
  EXPECT_EQ(qs[0].concurrency, 2);

  EXPECT_EQ(s.Release(e->TicketOf("g/0")), "q");
  EXPECT_THAT(TakeAll(s, "q"), ElementsAre("e:g/2"));
  s.Release(e->TicketOf("g/1"));
  s.Release(e->TicketOf("g/2"));
  EXPECT_THAT(TakeAll(s, "q"), ElementsAre("e:g/3", "e:g/4"));
  EXPECT_EQ(s.Queues()[0].running, 2);
  EXPECT_EQ(s.Executors()[0].in_use, 2);

  // Raising the limit applies to the next takes; 0 means unlimited.
  s.Configure("q", QueueConfig{0});
  for (int i = 5; i < 9; ++i) s.Enqueue("q", Task("g", i, 0, i + 1));
  EXPECT_EQ(TakeAll(s, "q").size(), 4u);
  EXPECT_EQ(s.Queues()[0].running, 6);
}

TEST(SchedulerTest, DefaultConfigAppliesToQueuesNotConfigured) {
  Scheduler s(QueueConfig{1});
  auto e = std::make_shared<FakeExecutor>("e");
  s.AddExecutor(e, {"a", "b"}, 10);
  s.Configure("b", QueueConfig{3});
  for (int i = 0; i < 4; ++i) {
    s.Enqueue("a", Task("ga", i, 0, i + 1));
    s.Enqueue("b", Task("gb", i, 0, i + 1));
  }
  EXPECT_EQ(TakeAll(s, "a").size(), 1u);
  EXPECT_EQ(TakeAll(s, "b").size(), 3u);
}

TEST(SchedulerTest, ExecutorNeverGetsMoreThanItsSlots) {
  Scheduler s;
  auto e = std::make_shared<FakeExecutor>("e");
  s.AddExecutor(e, {"a", "b"}, 3);
  for (int i = 0; i < 5; ++i) {
    s.Enqueue("a", Task("ga", i, 0, 2 * i + 1));
    s.Enqueue("b", Task("gb", i, 0, 2 * i + 2));
  }
  // The slots are shared by every queue the executor serves.
  for (int i = 0; i < 2; ++i) {
    std::optional<Match> m = s.Take("a");
    ASSERT_TRUE(m.has_value());
    DispatchMatch(*m);
  }
  EXPECT_THAT(TakeAll(s, "b"), ElementsAre("e:gb/0"));
  EXPECT_THAT(TakeAll(s, "a"), IsEmpty());
  EXPECT_THAT(TakeAll(s, "b"), IsEmpty());
  EXPECT_EQ(e->Received().size(), 3u);
  ASSERT_EQ(s.Executors().size(), 1u);
  EXPECT_EQ(s.Executors()[0].in_use, 3);
  EXPECT_EQ(s.Executors()[0].slots, 3);

  s.Release(e->TicketOf("gb/0"));
  EXPECT_THAT(TakeAll(s, "b"), ElementsAre("e:gb/1"));
  EXPECT_THAT(TakeAll(s, "a"), IsEmpty());
  EXPECT_THAT(e->Received(), ElementsAre("ga/0", "ga/1", "gb/0", "gb/1"));
  // A ticket is released once; stray or repeated releases mint no slot.
  for (const char* t : {"ga/0", "ga/1", "gb/1"}) s.Release(e->TicketOf(t));
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(s.Release(e->TicketOf("ga/0")), "");
    EXPECT_EQ(s.Release(424242), "");
  }
  EXPECT_EQ(s.Executors()[0].in_use, 0);
  EXPECT_THAT(TakeAll(s, "a"), ElementsAre("e:ga/2", "e:ga/3", "e:ga/4"));
  EXPECT_EQ(s.Executors()[0].in_use, 3);
}

TEST(SchedulerTest, TakesRoundRobinAcrossTheExecutorsOfAQueue) {
  Scheduler s;
  auto e1 = std::make_shared<FakeExecutor>("e1");
  auto e2 = std::make_shared<FakeExecutor>("e2");
  auto e3 = std::make_shared<FakeExecutor>("e3");
  s.AddExecutor(e1, {"q"}, 10);
  s.AddExecutor(e2, {"q"}, 1);
  s.AddExecutor(e3, {"q"}, 10);
  for (int i = 0; i < 8; ++i) s.Enqueue("q", Task("g", i, 0, i + 1));
  // e2 has one slot: once full it is passed over.
  EXPECT_THAT(TakeAll(s, "q"),
              ElementsAre("e1:g/0", "e2:g/1", "e3:g/2", "e1:g/3", "e3:g/4",
                          "e1:g/5", "e3:g/6", "e1:g/7"));
  EXPECT_THAT(e1->Received(), ElementsAre("g/0", "g/3", "g/5", "g/7"));
  EXPECT_THAT(e2->Received(), ElementsAre("g/1"));
  EXPECT_THAT(e3->Received(), ElementsAre("g/2", "g/4", "g/6"));
}

TEST(SchedulerTest, TasksMatchOnlyExecutorsServingTheirQueue) {
  Scheduler s;
  auto cpu = std::make_shared<FakeExecutor>("cpu");
  auto gpu = std::make_shared<FakeExecutor>("gpu");
  s.AddExecutor(cpu, {"cpu"}, 10);
  s.AddExecutor(gpu, {"gpu"}, 10);
  for (int i = 0; i < 3; ++i) {
    s.Enqueue("cpu", Task("c", i, 0, i + 1));
    s.Enqueue("gpu", Task("g", i, 0, i + 10));
    s.Enqueue("tpu", Task("t", i, 0, i + 20));  // nobody serves it
  }
  EXPECT_THAT(TakeAll(s, "gpu"), ElementsAre("gpu:g/0", "gpu:g/1", "gpu:g/2"));
  EXPECT_THAT(TakeAll(s, "cpu"), ElementsAre("cpu:c/0", "cpu:c/1", "cpu:c/2"));
  EXPECT_THAT(TakeAll(s, "tpu"), IsEmpty());
  EXPECT_THAT(TakeAll(s, "unknown"), IsEmpty());
  EXPECT_THAT(cpu->Received(), ElementsAre("c/0", "c/1", "c/2"));
  EXPECT_THAT(gpu->Received(), ElementsAre("g/0", "g/1", "g/2"));
  // The unmatched tasks wait, and a failed take reserves nothing.
  EXPECT_EQ(s.Queues()[2].name, "tpu");
  EXPECT_EQ(s.Queues()[2].depth, 3);
  EXPECT_EQ(s.Queues()[2].running, 0);
  // An executor for the queue arriving later picks them up.
  auto tpu = std::make_shared<FakeExecutor>("tpu");
  s.AddExecutor(tpu, {"tpu"}, 10);
  EXPECT_THAT(TakeAll(s, "tpu"), ElementsAre("tpu:t/0", "tpu:t/1", "tpu:t/2"));
}

TEST(SchedulerTest, RemovedExecutorGetsNoMoreMatches) {
  Scheduler s;
  auto e1 = std::make_shared<FakeExecutor>("e1");
  auto e2 = std::make_shared<FakeExecutor>("e2");
  s.AddExecutor(e1, {"q", "r"}, 10);
  s.AddExecutor(e2, {"q"}, 10);
  for (int i = 0; i < 6; ++i) s.Enqueue("q", Task("g", i, 0, i + 1));
  s.Enqueue("r", Task("h", 0, 0, 100));

  std::optional<Match> m = s.Take("q");
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->executor->id(), "e1");
  s.RemoveExecutor("e1");
  EXPECT_THAT(TakeAll(s, "q"),
              ElementsAre("e2:g/1", "e2:g/2", "e2:g/3", "e2:g/4", "e2:g/5"));
  EXPECT_THAT(TakeAll(s, "r"), IsEmpty());
  EXPECT_THAT(s.QueuesOf("e1"), IsEmpty());
  ASSERT_EQ(s.Executors().size(), 1u);
  EXPECT_EQ(s.Executors()[0].id, "e2");
  // Releasing the removed executor's ticket returns the queue's unit only.
  EXPECT_EQ(s.Release(m->ticket), "q");
  EXPECT_EQ(s.Queues()[0].running, 5);

  s.RemoveExecutor("e2");
  s.Enqueue("q", Task("g", 6, 0, 7));
  EXPECT_THAT(TakeAll(s, "q"), IsEmpty());
  EXPECT_THAT(s.Executors(), IsEmpty());
  EXPECT_EQ(s.Queues()[0].executors, 0);
  EXPECT_EQ(s.Queues()[0].depth, 1);
  s.RemoveExecutor("e2");                  // unknown: no effect
  EXPECT_THAT(e1->Received(), IsEmpty());  // the test never dispatched m
}

TEST(SchedulerTest, StatsReportQueuesAndExecutors) {
  Scheduler s(QueueConfig{4});
  s.Configure("b", QueueConfig{1});
  auto x = std::make_shared<FakeExecutor>("x");
  auto w = std::make_shared<FakeExecutor>("w");
  s.AddExecutor(x, {"b", "a"}, 2);
  s.AddExecutor(w, {"a"}, 5);
  for (int i = 0; i < 3; ++i) {
    s.Enqueue("a", Task("g", i, 0, i + 1));
    s.Enqueue("b", Task("h", i, 0, i + 10));
  }
  ASSERT_TRUE(s.Take("b").has_value());  // x
  ASSERT_TRUE(s.Take("a").has_value());  // x (first to register for a)
  ASSERT_TRUE(s.Take("a").has_value());  // w

  const std::vector<QueueStats> qs = s.Queues();  // by name
  ASSERT_EQ(qs.size(), 2u);
  EXPECT_EQ(qs[0].name, "a");
  EXPECT_EQ(qs[0].depth, 1);
  EXPECT_EQ(qs[0].running, 2);
  EXPECT_EQ(qs[0].concurrency, 4);
  EXPECT_EQ(qs[0].executors, 2);
  EXPECT_EQ(qs[1].name, "b");
  EXPECT_EQ(qs[1].depth, 2);
  EXPECT_EQ(qs[1].running, 1);
  EXPECT_EQ(qs[1].concurrency, 1);
  EXPECT_EQ(qs[1].executors, 1);

  const std::vector<ExecutorStats> es = s.Executors();  // by id
  ASSERT_EQ(es.size(), 2u);
  EXPECT_EQ(es[0].id, "w");
  EXPECT_THAT(es[0].queues, ElementsAre("a"));
  EXPECT_EQ(es[0].slots, 5);
  EXPECT_EQ(es[0].in_use, 1);
  EXPECT_EQ(es[1].id, "x");
  EXPECT_THAT(es[1].queues, ElementsAre("b", "a"));
  EXPECT_EQ(es[1].slots, 2);
  EXPECT_EQ(es[1].in_use, 2);
  EXPECT_THAT(s.QueuesOf("x"), ElementsAre("b", "a"));
}

QueuedTask Keyed(const std::string& graph, int32_t index, int32_t priority,
                 uint64_t ready_seq, const std::string& key) {
  QueuedTask t = Task(graph, index, priority, ready_seq);
  t.ordering_key = key;
  return t;
}

TEST(SchedulerTest, PerKeyRunsOneTaskPerKeyInReadyOrderAndKeysInParallel) {
  Scheduler s;
  QueueConfig c;
  c.mode = OrderingMode::kPerKey;
  s.Configure("agents", c);
  auto e = std::make_shared<FakeExecutor>("e");
  s.AddExecutor(e, {"agents"}, 10);
  // Per key, READY order wins over priority; keyless tasks are free.
  s.Enqueue("agents", Keyed("g", 0, 0, 1, "claude"));
  s.Enqueue("agents", Keyed("g", 1, 9, 2, "claude"));
  s.Enqueue("agents", Keyed("g", 2, 0, 3, "gemini"));
  s.Enqueue("agents", Keyed("g", 3, 0, 4, "gemini"));
  s.Enqueue("agents", Keyed("g", 4, 0, 5, ""));
  s.Enqueue("agents", Keyed("g", 5, 0, 6, ""));
  EXPECT_THAT(TakeAll(s, "agents"),
              ElementsAre("e:g/0", "e:g/2", "e:g/4", "e:g/5"));
  EXPECT_EQ(s.Queues()[0].depth, 2);
  s.Release(e->TicketOf("g/2"));  // gemini's next may start
  EXPECT_THAT(TakeAll(s, "agents"), ElementsAre("e:g/3"));
  s.Release(e->TicketOf("g/4"));  // a keyless release frees no key
  EXPECT_THAT(TakeAll(s, "agents"), IsEmpty());
  s.Release(e->TicketOf("g/0"));
  EXPECT_THAT(TakeAll(s, "agents"), ElementsAre("e:g/1"));
}

TEST(SchedulerTest, PerKeyConcurrencyAllowsNPerKey) {
  Scheduler s;
  QueueConfig c;
  c.mode = OrderingMode::kPerKey;
  c.per_key_concurrency = 2;
  s.Configure("q", c);
  auto e = std::make_shared<FakeExecutor>("e");
  s.AddExecutor(e, {"q"}, 10);
  for (int i = 0; i < 5; ++i) s.Enqueue("q", Keyed("g", i, 0, i + 1, "k"));
  EXPECT_THAT(TakeAll(s, "q"), ElementsAre("e:g/0", "e:g/1"));
  s.Release(e->TicketOf("g/1"));
  EXPECT_THAT(TakeAll(s, "q"), ElementsAre("e:g/2"));
}

TEST(SchedulerTest, StrictRunsOneTaskPerQueueInReadyOrder) {
  Scheduler s;
  QueueConfig c;
  c.mode = OrderingMode::kStrict;
  s.Configure("q", c);
  auto e = std::make_shared<FakeExecutor>("e");
  s.AddExecutor(e, {"q"}, 10);
  s.Enqueue("q", Keyed("g", 0, 0, 3, "a"));
  s.Enqueue("q", Keyed("g", 1, 50, 4, "b"));  // priority does not overtake
  s.Enqueue("q", Keyed("g", 2, 0, 1, ""));    // became READY first
  std::vector<std::string> order;
  for (int i = 0; i < 3; ++i) {
    std::vector<std::string> got = TakeAll(s, "q");
    ASSERT_EQ(got.size(), 1u);
    order.push_back(got[0]);
    EXPECT_THAT(TakeAll(s, "q"), IsEmpty());  // one at a time
    s.Release(e->TicketOf(got[0].substr(2)));
  }
  EXPECT_THAT(order, ElementsAre("e:g/2", "e:g/0", "e:g/1"));
}

TEST(SchedulerTest, OrderingModesParseAndPrint) {
  for (OrderingMode m :
       {OrderingMode::kRelaxed, OrderingMode::kPerKey, OrderingMode::kStrict}) {
    OrderingMode parsed;
    ASSERT_TRUE(ParseOrderingMode(OrderingModeName(m), &parsed));
    EXPECT_EQ(parsed, m);
  }
  OrderingMode unused;
  EXPECT_FALSE(ParseOrderingMode("fifo", &unused));
}

}  // namespace
}  // namespace forge::sched
