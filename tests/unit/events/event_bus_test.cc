// Properties of the event bus that the Watch handlers rely on.
#include "server/events/event_bus.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace forge::events {
namespace {

using forge::v1::Event;
using forge::v1::EventType;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(10);  // only hit on failure

Event MakeEvent(int64_t seq, EventType type = forge::v1::TASK_PROGRESS,
                const std::string& queue = "q") {
  Event e;
  e.set_seq(seq);
  e.set_type(type);
  e.set_queue(queue);
  return e;
}

std::vector<Event> Range(int64_t from, int64_t to) {  // seqs from..to
  std::vector<Event> out;
  for (int64_t s = from; s <= to; ++s) out.push_back(MakeEvent(s));
  return out;
}

std::vector<int64_t> Seqs(const std::vector<Event>& events) {
  std::vector<int64_t> out;
  for (const Event& e : events) out.push_back(e.seq());
  return out;
}

std::vector<int64_t> Iota(int64_t from, int64_t to) {
  std::vector<int64_t> out;
  for (int64_t s = from; s <= to; ++s) out.push_back(s);
  return out;
}

// Counts notify calls; lets a consumer wait for the next one.
class Waker {
 public:
  absl::AnyInvocable<void()> Callback() {
    return [this] {
      absl::MutexLock lock(&mu_);
      ++calls_;
      cv_.SignalAll();
    };
  }
  int64_t calls() const {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  // Waits until more than `seen` calls were made. (CondVar rather than
  // Await(Condition): the TSan build's absl shim cannot see conditions.)
  bool WaitPast(int64_t seen) const {
    const absl::Time deadline = absl::Now() + kWait;
    absl::MutexLock lock(&mu_);
    while (calls_ <= seen) {
      if (cv_.WaitWithDeadline(&mu_, deadline)) return calls_ > seen;
    }
    return true;
  }

 private:
  mutable absl::Mutex mu_;
  mutable absl::CondVar cv_;
  int64_t calls_ ABSL_GUARDED_BY(mu_) = 0;
};

// Consumes a subscription the way the Watch reactor will: Next() until empty,
// then wait for notify. Stops at end, error, `want` events, or timeout.
struct Drained {
  std::vector<Event> events;
  bool end = false;
  absl::Status error;
  std::string resume_token;
};
Drained Drain(Subscription& sub, const Waker& waker, size_t want,
              size_t batch = 64) {
  Drained d;
  while (d.events.size() < want) {
    const int64_t seen = waker.calls();
    Subscription::Batch b = sub.Next(batch);
    for (Event& e : b.events) d.events.push_back(std::move(e));
    if (!b.resume_token.empty()) d.resume_token = b.resume_token;
    if (b.end || !b.error.ok()) {
      d.end = b.end;
      d.error = b.error;
      return d;
    }
    if (b.events.empty() && !waker.WaitPast(seen)) {
      ADD_FAILURE() << "timed out with " << d.events.size() << " of " << want;
      return d;
    }
  }
  return d;
}

// Takes whatever is available now, without waiting.
Drained TakeNow(Subscription& sub, size_t batch = 1000) {
  Drained d;
  while (true) {
    Subscription::Batch b = sub.Next(batch);
    for (Event& e : b.events) d.events.push_back(std::move(e));
    if (!b.resume_token.empty()) d.resume_token = b.resume_token;
    if (b.end || !b.error.ok()) {
      d.end = b.end;
      d.error = b.error;
      return d;
    }
    if (b.events.empty()) return d;
  }
}

// Plays the store: assigns dense seqs under a lock, publishes after
// unlocking, so publishes of one graph race and arrive out of order.
class FakeStore {
 public:
  FakeStore(EventBus* bus, std::string graph_id)
      : bus_(bus), graph_id_(std::move(graph_id)) {}

  // Publishes `n` events with this call's seqs; returns them.
  std::vector<int64_t> Append(int n, bool republish) {
    std::vector<Event> events;
    {
      absl::MutexLock lock(&mu_);
      for (int i = 0; i < n; ++i) events.push_back(MakeEvent(++last_seq_));
    }
    std::vector<int64_t> seqs = Seqs(events);
    std::vector<Event> copy = events;
    EXPECT_TRUE(bus_->Publish(graph_id_, std::move(events)).ok());
    if (republish) {
      EXPECT_TRUE(bus_->Publish(graph_id_, std::move(copy)).ok());
    }
    return seqs;
  }

 private:
  EventBus* const bus_;
  const std::string graph_id_;
  absl::Mutex mu_;
  int64_t last_seq_ ABSL_GUARDED_BY(mu_) = 0;
};

// Runs `publishers` threads, each making `calls` Append()s of 1..4 events on
// a random one of `stores`; every 5th call is published twice.
int64_t RaceAppends(std::vector<std::unique_ptr<FakeStore>>& stores,
                    int publishers, int calls, std::atomic<int64_t>* dups) {
  std::atomic<int64_t> total{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < publishers; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < calls; ++i) {
        const int n = 1 + static_cast<int>(rng() % 4);
        const bool republish = i % 5 == 0;
        stores[rng() % stores.size()]->Append(n, republish);
        total += n;
        if (republish) *dups += n;
      }
    });
  }
  for (auto& th : threads) th.join();
  return total.load();
}

TEST(EventBusTest,
     OutOfOrderPublishesFromManyThreadsAreDeliveredDenseAndInOrder) {
  EventBus bus;
  ASSERT_TRUE(bus.CreateGraph("g", {}).ok());
  std::vector<std::unique_ptr<FakeStore>> stores;
  stores.push_back(std::make_unique<FakeStore>(&bus, "g"));

  Waker waker;
  auto sub = bus.SubscribeGraph("g", 0, waker.Callback());
  ASSERT_TRUE(sub.ok());
  constexpr int kPublishers = 4, kCalls = 150;
  // Every call publishes at least one event: the consumer takes that many
  // while the publishers race, then the exact rest once the total is known.
  Drained got;
  std::thread consumer(
      [&] { got = Drain(**sub, waker, kPublishers * kCalls, /*batch=*/7); });
  std::atomic<int64_t> dups{0};
  const int64_t total = RaceAppends(stores, kPublishers, kCalls, &dups);
  consumer.join();
  ASSERT_LE(got.events.size(), static_cast<size_t>(total));
  Drained rest =
      Drain(**sub, waker, static_cast<size_t>(total) - got.events.size());
  for (Event& e : rest.events) got.events.push_back(std::move(e));

  EXPECT_EQ(Seqs(got.events), Iota(1, total));  // dense, ordered, no dup
  EXPECT_TRUE(TakeNow(**sub).events.empty());
  EXPECT_EQ(bus.events_published(), static_cast<uint64_t>(total));
  EXPECT_EQ(bus.events_duplicate(), static_cast<uint64_t>(dups.load()));
  for (const Event& e : got.events) EXPECT_EQ(e.graph_id(), "g");
}

TEST(EventBusTest, GlobalStreamKeepsPerGraphOrder) {
  EventBus bus;
  std::vector<std::unique_ptr<FakeStore>> stores;
  for (const char* id : {"a", "b", "c"}) {
    ASSERT_TRUE(bus.CreateGraph(id, {}).ok());
    stores.push_back(std::make_unique<FakeStore>(&bus, id));
  }
  Waker waker;
  auto all = bus.SubscribeAll("", {}, waker.Callback());
  ASSERT_TRUE(all.ok());
  std::atomic<int64_t> dups{0};
  const int64_t total = RaceAppends(stores, 4, 150, &dups);
  Drained got = Drain(**all, waker, static_cast<size_t>(total));
  ASSERT_EQ(got.events.size(), static_cast<size_t>(total));
  std::map<std::string, int64_t> last;
  for (const Event& e : got.events) {
    EXPECT_EQ(e.seq(), last[e.graph_id()] + 1) << e.graph_id();
    last[e.graph_id()] = e.seq();
  }
  EXPECT_TRUE(TakeNow(**all).events.empty());
}

TEST(EventBusTest, ResumeWithAfterSeqHasNoGapAndNoDuplicate) {
  EventBus bus;
  ASSERT_TRUE(bus.CreateGraph("g", {}).ok());
  ASSERT_TRUE(bus.Publish("g", Range(1, 10)).ok());

  Waker w1;
  auto first = bus.SubscribeGraph("g", 0, w1.Callback());
  ASSERT_TRUE(first.ok());
  Subscription::Batch b = (*first)->Next(4);
  EXPECT_EQ(Seqs(b.events), Iota(1, 4));
  (*first)->Close();  // the client disconnects after seq 4

  Waker w2;
  auto resumed = bus.SubscribeGraph("g", b.events.back().seq(), w2.Callback());
  ASSERT_TRUE(resumed.ok());
  EXPECT_EQ(Seqs(TakeNow(**resumed).events), Iota(5, 10));
  const int64_t seen = w2.calls();
  ASSERT_TRUE(bus.Publish("g", Range(11, 15)).ok());
  EXPECT_GT(w2.calls(), seen);  // was caught up: notified
  EXPECT_EQ(Seqs(TakeNow(**resumed).events), Iota(11, 15));

  // after_seq from a snapshot may be ahead of what is visible yet.
  Waker w3;
  auto ahead = bus.SubscribeGraph("g", 20, w3.Callback());
  ASSERT_TRUE(ahead.ok());
  EXPECT_TRUE(TakeNow(**ahead).events.empty());
  ASSERT_TRUE(bus.Publish("g", Range(16, 25)).ok());
  EXPECT_EQ(Seqs(TakeNow(**ahead).events), Iota(21, 25));
}

TEST(EventBusTest, GraphSubscriptionEndsAfterTerminalEvent) {
  EventBus bus;
  ASSERT_TRUE(bus.CreateGraph("g", {}).ok());
  Waker waker;
  auto sub = bus.SubscribeGraph("g", 0, waker.Callback());
  ASSERT_TRUE(sub.ok());
  // The terminal event (seq 3) arrives before seq 2: nothing ends early.
  ASSERT_TRUE(bus.Publish("g", {MakeEvent(1)}).ok());
  ASSERT_TRUE(
      bus.Publish("g", {MakeEvent(3, forge::v1::GRAPH_SUCCEEDED), MakeEvent(4)})
          .ok());
  Subscription::Batch b = (*sub)->Next(100);
  EXPECT_EQ(Seqs(b.events), Iota(1, 1));
  EXPECT_FALSE(b.end);
  ASSERT_TRUE(bus.Publish("g", {MakeEvent(2)}).ok());
  b = (*sub)->Next(100);
  EXPECT_EQ(Seqs(b.events), Iota(2, 3));  // never seq 4, past the end
  EXPECT_TRUE(b.end);
  EXPECT_TRUE(b.error.ok());
  b = (*sub)->Next(100);
  EXPECT_TRUE(b.end);
  EXPECT_TRUE(b.events.empty());

  // A subscriber arriving after the end gets end at once.
  Waker late;
  auto after = bus.SubscribeGraph("g", 3, late.Callback());
  ASSERT_TRUE(after.ok());
  b = (*after)->Next(100);
  EXPECT_TRUE(b.end);
  EXPECT_TRUE(b.events.empty());
}

TEST(EventBusTest, StalledSubscriberOverflowsWhileFastOneReceivesEverything) {
  BusOptions options;
  options.max_subscriber_lag = 10;
  EventBus bus(options);
  ASSERT_TRUE(bus.CreateGraph("g", {}).ok());
  Waker slow_waker, fast_waker;
  auto slow = bus.SubscribeGraph("g", 0, slow_waker.Callback());
  auto fast = bus.SubscribeGraph("g", 0, fast_waker.Callback());
  ASSERT_TRUE(slow.ok());
  ASSERT_TRUE(fast.ok());

  std::vector<int64_t> fast_got;
  for (int64_t s = 1; s <= 40; ++s) {
    ASSERT_TRUE(bus.Publish("g", {MakeEvent(s)}).ok());
    for (const Event& e : TakeNow(**fast, 3).events)
      fast_got.push_back(e.seq());
    if (s == 5) {
      EXPECT_EQ(Seqs((*slow)->Next(5).events), Iota(1, 5));  // then stalls
    }
    // Lag counts from seq 5: cut off once it passes 10, at seq 16.
    EXPECT_EQ((*slow)->Overflowed(), s >= 16) << s;
  }
  EXPECT_EQ(fast_got, Iota(1, 40));
  EXPECT_FALSE((*fast)->Overflowed());
  EXPECT_GE(slow_waker.calls(), 2);  // one wake-up for data, one for overflow
  EXPECT_EQ(bus.subscribers_cut_off(), 1u);

  Subscription::Batch b = (*slow)->Next(100);
  EXPECT_TRUE(b.events.empty());
  EXPECT_EQ(b.error.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(b.error.message()), HasSubstr("resume after_seq=5"));

  // Resuming from the reported point continues with no gap.
  Waker again;
  auto resumed = bus.SubscribeGraph("g", 5, again.Callback());
  ASSERT_TRUE(resumed.ok());
  EXPECT_FALSE((*resumed)->Overflowed());  // the replayed backlog is not lag
  EXPECT_EQ(Seqs(TakeNow(**resumed).events), Iota(6, 40));
}

TEST(EventBusTest, StalledGlobalSubscriberOverflowsWithResumeToken) {
  BusOptions options;
  options.max_subscriber_lag = 10;
  EventBus bus(options);
  ASSERT_TRUE(bus.CreateGraph("g", {}).ok());
  Waker waker;
  auto slow = bus.SubscribeAll("", {}, waker.Callback());
  ASSERT_TRUE(slow.ok());
  ASSERT_TRUE(bus.Publish("g", Range(1, 3)).ok());
  Subscription::Batch first = (*slow)->Next(100);
  ASSERT_EQ(Seqs(first.events), Iota(1, 3));
  ASSERT_TRUE(bus.Publish("g", Range(4, 20)).ok());
  EXPECT_TRUE((*slow)->Overflowed());
  Subscription::Batch b = (*slow)->Next(100);
  EXPECT_EQ(b.error.code(), absl::StatusCode::kResourceExhausted);
  const std::string msg(b.error.message());
  EXPECT_THAT(msg, HasSubstr("resume token=" + first.resume_token));

  Waker w2;
  auto resumed = bus.SubscribeAll(first.resume_token, {}, w2.Callback());
  ASSERT_TRUE(resumed.ok());
  EXPECT_EQ(Seqs(TakeNow(**resumed).events), Iota(4, 20));
}

TEST(EventBusTest, GlobalFiltersSelectByLabelsQueueAndType) {
  EventBus bus;
  ASSERT_TRUE(bus.CreateGraph("a", {{"team", "x"}, {"env", "prod"}}).ok());
  ASSERT_TRUE(bus.CreateGraph("b", {{"team", "y"}}).ok());

  struct Sub {
    Waker waker;
    std::shared_ptr<Subscription> sub;
  };
  auto subscribe = [&](GlobalFilter f) {
    auto s = std::make_unique<Sub>();
    auto r = bus.SubscribeAll("", std::move(f), s->waker.Callback());
    EXPECT_TRUE(r.ok());
    s->sub = *r;
    return s;
  };
  GlobalFilter by_label;
  by_label.labels = {{"team", "x"}};
  GlobalFilter by_two_labels;
  by_two_labels.labels = {{"team", "x"}, {"env", "dev"}};
  GlobalFilter by_queue;
  by_queue.queues = {"q1"};
  GlobalFilter by_type;
  by_type.types = {forge::v1::TASK_SUCCEEDED, forge::v1::WORKER_LOST};
  GlobalFilter combined;
  combined.labels = {{"team", "y"}};
  combined.queues = {"q2"};
  auto label_sub = subscribe(by_label);
  auto two_labels_sub = subscribe(by_two_labels);
  auto queue_sub = subscribe(by_queue);
  auto type_sub = subscribe(by_type);
  auto combined_sub = subscribe(combined);
  auto all_sub = subscribe({});

  // Each event's message names it, to compare selections.
  auto ev = [](int64_t seq, EventType type, const std::string& queue,
               const std::string& name) {
    Event e = MakeEvent(seq, type, queue);
    e.set_message(name);
    return e;
  };
  ASSERT_TRUE(bus.Publish("a", {ev(1, forge::v1::GRAPH_SUBMITTED, "", "a1"),
                                ev(2, forge::v1::TASK_READY, "q1", "a2"),
                                ev(3, forge::v1::TASK_SUCCEEDED, "q2", "a3")})
                  .ok());
  Event worker;
  worker.set_type(forge::v1::WORKER_LOST);
  worker.set_worker_id("w1");
  worker.set_message("w");
  ASSERT_TRUE(bus.PublishGlobal(worker).ok());
  ASSERT_TRUE(bus.Publish("b", {ev(1, forge::v1::GRAPH_SUBMITTED, "", "b1"),
                                ev(2, forge::v1::TASK_SUCCEEDED, "q1", "b2"),
                                ev(3, forge::v1::TASK_READY, "q2", "b3")})
                  .ok());
  auto names = [](Sub& s) {
    std::vector<std::string> out;
    for (const Event& e : TakeNow(*s.sub).events) out.push_back(e.message());
    return out;
  };
  EXPECT_THAT(names(*label_sub), ElementsAre("a1", "a2", "a3"));
  EXPECT_THAT(names(*two_labels_sub), ElementsAre());
  EXPECT_THAT(names(*queue_sub), ElementsAre("a1", "a2", "w", "b1", "b2"));
  EXPECT_THAT(names(*type_sub), ElementsAre("a3", "w", "b2"));
  EXPECT_THAT(names(*combined_sub), ElementsAre("b1", "b3"));
  EXPECT_THAT(names(*all_sub),
              ElementsAre("a1", "a2", "a3", "w", "b1", "b2", "b3"));
  // Filtered-out events never woke anyone up and do not count as lag.
  EXPECT_EQ(two_labels_sub->waker.calls(), 0);
  EXPECT_EQ(two_labels_sub->sub->Lag(), 0u);
}

TEST(EventBusTest, ResumeTokenContinuesExactly) {
  EventBus bus;
  ASSERT_TRUE(bus.CreateGraph("g", {}).ok());
  ASSERT_TRUE(bus.Publish("g", Range(1, 5)).ok());  // before: not seen
  GlobalFilter only_q1;
  only_q1.queues = {"q1"};
  Waker w1, w2;
  auto all = bus.SubscribeAll("", {}, w1.Callback());
  auto filtered = bus.SubscribeAll("", only_q1, w2.Callback());
  ASSERT_TRUE(all.ok());
  ASSERT_TRUE(filtered.ok());

  std::vector<Event> more;
  for (int64_t s = 6; s <= 30; ++s) {
    more.push_back(
        MakeEvent(s, forge::v1::TASK_READY, s % 3 == 0 ? "q1" : "q2"));
  }
  ASSERT_TRUE(bus.Publish("g", more).ok());

  Subscription::Batch b = (*all)->Next(10);
  EXPECT_EQ(Seqs(b.events), Iota(6, 15));
  Subscription::Batch fb = (*filtered)->Next(2);
  EXPECT_EQ(Seqs(fb.events), std::vector<int64_t>({6, 9}));
  (*all)->Close();
  (*filtered)->Close();
  ASSERT_TRUE(bus.Publish("g", Range(31, 33)).ok());

  Waker w3, w4;
  auto all2 = bus.SubscribeAll(b.resume_token, {}, w3.Callback());
  auto filtered2 = bus.SubscribeAll(fb.resume_token, only_q1, w4.Callback());
  ASSERT_TRUE(all2.ok());
  ASSERT_TRUE(filtered2.ok());
  EXPECT_EQ(Seqs(TakeNow(**all2).events), Iota(16, 33));
  EXPECT_EQ(Seqs(TakeNow(**filtered2, 2).events),
            std::vector<int64_t>({12, 15, 18, 21, 24, 27, 30}));

  // The current token is "from here".
  Waker w5;
  auto now = bus.SubscribeAll(bus.CurrentResumeToken(), {}, w5.Callback());
  ASSERT_TRUE(now.ok());
  EXPECT_TRUE(TakeNow(**now).events.empty());
}

TEST(EventBusTest, TokenOverwrittenByTheRingIsOutOfRange) {
  BusOptions options;
  options.global_capacity = 8;
  options.max_subscriber_lag = 1000;  // only the ring bound matters here
  EventBus bus(options);
  ASSERT_TRUE(bus.CreateGraph("g", {}).ok());
  const std::string start = bus.CurrentResumeToken();
  Waker waker;
  auto live = bus.SubscribeAll("", {}, waker.Callback());
  ASSERT_TRUE(live.ok());
  ASSERT_TRUE(bus.Publish("g", Range(1, 8)).ok());
  // Exactly the ring's capacity behind: still resumable.
  Waker w0;
  EXPECT_TRUE(bus.SubscribeAll(start, {}, w0.Callback()).ok());
  ASSERT_TRUE(bus.Publish("g", Range(9, 20)).ok());

  Waker w1;
  auto old = bus.SubscribeAll(start, {}, w1.Callback());
  EXPECT_EQ(old.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE((*live)->Overflowed());
  Subscription::Batch b = (*live)->Next(100);
  EXPECT_TRUE(b.events.empty());
  EXPECT_EQ(b.error.code(), absl::StatusCode::kOutOfRange);

  // A token of another server instance is rejected the same way.
  EventBus other(options);
  Waker w2;
  auto foreign =
      other.SubscribeAll(bus.CurrentResumeToken(), {}, w2.Callback());
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kOutOfRange);
}

TEST(EventBusTest, GarbageTokenIsInvalidArgument) {
  EventBus bus;
  for (const std::string token :
       {"garbage", "fg1.zz.1", "fg1.0123456789abcdef", "fg1.0123456789abcdef.x",
        "fg1.0123456789abcdef.-1", "fg2.0123456789abcdef.1"}) {
    Waker w;
    auto sub = bus.SubscribeAll(token, {}, w.Callback());
    EXPECT_EQ(sub.status().code(), absl::StatusCode::kInvalidArgument) << token;
  }
  // Well formed, this instance's epoch, but ahead of the stream.
  std::string ahead = bus.CurrentResumeToken();
  ahead.back() = '7';
  Waker w;
  EXPECT_EQ(bus.SubscribeAll(ahead, {}, w.Callback()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(EventBusTest, NotifyIsNotCalledAfterClose) {
  EventBus bus;
  ASSERT_TRUE(bus.CreateGraph("g", {}).ok());
  std::atomic<bool> stop{false};
  std::atomic<int64_t> last_seq{0};
  std::thread publisher([&] {
    int64_t seq = 0;
    while (!stop) {
      EXPECT_TRUE(bus.Publish("g", {MakeEvent(++seq)}).ok());
      last_seq = seq;
      EXPECT_TRUE(
          bus.PublishGlobal(MakeEvent(0, forge::v1::WORKER_CONNECTED)).ok());
    }
  });
  // Per subscription: notify calls, and whether Close() has returned.
  struct Probe {
    absl::Mutex mu;
    absl::CondVar called;
    int calls ABSL_GUARDED_BY(mu) = 0;
    bool closed ABSL_GUARDED_BY(mu) = false;
    int late_calls ABSL_GUARDED_BY(mu) = 0;
  };
  std::vector<std::shared_ptr<Probe>> probes[3];
  std::vector<std::thread> subscribers;
  for (int t = 0; t < 3; ++t) {
    subscribers.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        auto probe = std::make_shared<Probe>();
        auto notify = [probe] {
          {
            absl::MutexLock lock(&probe->mu);
            ++probe->calls;
            probe->called.SignalAll();
          }
          for (int k = 0; k < 20; ++k) std::this_thread::yield();  // in flight
          absl::MutexLock lock(&probe->mu);
          if (probe->closed) ++probe->late_calls;  // Close() did not wait
        };
        auto sub = t % 2 == 0 ? bus.SubscribeGraph("g", last_seq, notify)
                              : bus.SubscribeAll("", {}, notify);
        ASSERT_TRUE(sub.ok());
        TakeNow(**sub);  // caught up: the next publish notifies
        {
          const absl::Time deadline = absl::Now() + kWait;
          absl::MutexLock lock(&probe->mu);
          while (probe->calls == 0 &&
                 !probe->called.WaitWithDeadline(&probe->mu, deadline)) {
          }
          ASSERT_GT(probe->calls, 0);
        }
        TakeNow(**sub);  // so that more notifies race with Close()
        (*sub)->Close();
        {
          absl::MutexLock lock(&probe->mu);
          probe->closed = true;
        }
        sub->reset();
        probes[t].push_back(std::move(probe));  // checked once all is quiet
      }
    });
  }
  for (auto& th : subscribers) th.join();
  stop = true;
  publisher.join();
  int late_calls = 0;
  for (auto& list : probes) {
    for (auto& probe : list) {
      absl::MutexLock lock(&probe->mu);
      EXPECT_GT(probe->calls, 0);
      late_calls += probe->late_calls;
    }
  }
  EXPECT_EQ(late_calls, 0);
  EXPECT_EQ(bus.subscribers(), 0);
}

TEST(EventBusTest, CloseFromInsideNotifyDoesNotDeadlock) {
  EventBus bus;
  ASSERT_TRUE(bus.CreateGraph("g", {}).ok());
  std::shared_ptr<Subscription> sub;
  absl::Mutex mu;
  int calls = 0;
  auto r = bus.SubscribeGraph("g", 0, [&] {
    absl::MutexLock lock(&mu);
    ++calls;
    sub->Close();
  });
  ASSERT_TRUE(r.ok());
  sub = *r;
  ASSERT_TRUE(bus.Publish("g", {MakeEvent(1)}).ok());
  ASSERT_TRUE(bus.Publish("g", {MakeEvent(2)}).ok());
  absl::MutexLock lock(&mu);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(sub->Next(10).error.code(), absl::StatusCode::kCancelled);
}

TEST(EventBusTest, CloseReleasesTheNotifyCallback) {
  EventBus bus;
  ASSERT_TRUE(bus.CreateGraph("g", {}).ok());
  auto owned = std::make_shared<int>(0);  // what a reactor's callback holds
  auto graph_sub = bus.SubscribeGraph("g", 0, [owned] {});
  auto all_sub = bus.SubscribeAll("", {}, [owned] {});
  ASSERT_TRUE(graph_sub.ok());
  ASSERT_TRUE(all_sub.ok());
  EXPECT_EQ(owned.use_count(), 3);
  EXPECT_EQ(bus.subscribers(), 2);
  (*graph_sub)->Close();
  (*all_sub)->Close();
  (*all_sub)->Close();              // idempotent
  EXPECT_EQ(owned.use_count(), 1);  // though the subscriptions still live
  EXPECT_EQ(bus.subscribers(), 0);
  EXPECT_EQ((*all_sub)->Next(10).error.code(), absl::StatusCode::kCancelled);
}

TEST(EventBusTest, ReplayedBacklogIsNotLag) {
  BusOptions options;
  options.max_subscriber_lag = 5;
  EventBus bus(options);
  ASSERT_TRUE(bus.CreateGraph("g", {}).ok());
  ASSERT_TRUE(bus.Publish("g", Range(1, 50)).ok());
  Waker waker;
  auto sub = bus.SubscribeGraph("g", 0, waker.Callback());
  ASSERT_TRUE(sub.ok());
  EXPECT_EQ((*sub)->Lag(), 0u);
  EXPECT_FALSE((*sub)->Overflowed());
  ASSERT_TRUE(bus.Publish("g", Range(51, 53)).ok());
  EXPECT_EQ((*sub)->Lag(), 3u);
  EXPECT_EQ(Seqs(TakeNow(**sub, 7).events), Iota(1, 53));
  EXPECT_EQ((*sub)->Lag(), 0u);
}

TEST(EventBusTest, DroppedGraphEndsItsSubscribersWithNotFound) {
  EventBus bus;
  ASSERT_TRUE(bus.CreateGraph("g", {}).ok());
  ASSERT_TRUE(bus.Publish("g", Range(1, 3)).ok());
  Waker waker;
  auto sub = bus.SubscribeGraph("g", 0, waker.Callback());
  ASSERT_TRUE(sub.ok());
  EXPECT_TRUE(bus.DropGraph("g"));
  EXPECT_FALSE(bus.DropGraph("g"));
  EXPECT_EQ(waker.calls(), 1);
  EXPECT_EQ((*sub)->Next(10).error.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(bus.Publish("g", Range(4, 4)).code(), absl::StatusCode::kNotFound);
  Waker w2;
  EXPECT_EQ(bus.SubscribeGraph("g", 0, w2.Callback()).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(EventBusTest, ForgottenGraphIsNotFoundButItsSubscribersReadToTheEnd) {
  EventBus bus;
  ASSERT_TRUE(bus.CreateGraph("g", {}).ok());
  std::vector<Event> events = Range(1, 9);
  events.push_back(MakeEvent(10, forge::v1::GRAPH_SUCCEEDED));
  ASSERT_TRUE(bus.Publish("g", events).ok());
  Waker waker;
  auto sub = bus.SubscribeGraph("g", 0, waker.Callback());
  ASSERT_TRUE(sub.ok());
  Subscription::Batch first = (*sub)->Next(4);  // a reader part-way through
  EXPECT_EQ(Seqs(first.events), Iota(1, 4));
  EXPECT_TRUE(bus.ForgetGraph("g"));
  EXPECT_FALSE(bus.ForgetGraph("g"));
  EXPECT_FALSE(bus.DropGraph("g"));
  EXPECT_EQ(waker.calls(), 0);  // nothing for it to hear about
  Drained rest = TakeNow(**sub);
  EXPECT_EQ(Seqs(rest.events), Iota(5, 10));
  EXPECT_TRUE(rest.end);
  EXPECT_TRUE(rest.error.ok()) << rest.error;
  EXPECT_EQ(bus.Publish("g", Range(11, 11)).code(), absl::StatusCode::kNotFound);
  Waker w2;
  EXPECT_EQ(bus.SubscribeGraph("g", 0, w2.Callback()).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(EventBusTest, ReorderBufferOverflowBreaksTheLogWithoutAGap) {
  BusOptions options;
  options.max_reorder_per_graph = 4;
  EventBus bus(options);
  ASSERT_TRUE(bus.CreateGraph("g", {}).ok());
  Waker waker;
  auto sub = bus.SubscribeGraph("g", 0, waker.Callback());
  ASSERT_TRUE(sub.ok());
  ASSERT_TRUE(bus.Publish("g", Range(1, 2)).ok());
  ASSERT_TRUE(bus.Publish("g", Range(4, 7)).ok());  // 4 waiting for seq 3
  EXPECT_EQ(bus.Publish("g", Range(8, 8)).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(bus.Publish("g", Range(3, 3)).code(), absl::StatusCode::kDataLoss);
  Drained d = TakeNow(**sub);
  EXPECT_EQ(Seqs(d.events), Iota(1, 2));  // the valid prefix, then the error
  EXPECT_EQ(d.error.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(bus.reorder_overflows(), 1u);
  EXPECT_EQ(bus.events_discarded(), 5u);
}

TEST(EventBusTest, BadPublishesAreRejected) {
  EventBus bus;
  EXPECT_EQ(bus.CreateGraph("", {}).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(bus.CreateGraph("g", {}).ok());
  EXPECT_EQ(bus.CreateGraph("g", {}).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(bus.Publish("nope", Range(1, 1)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(bus.Publish("g", {MakeEvent(0)}).code(),
            absl::StatusCode::kInvalidArgument);
  Event other = MakeEvent(1);
  other.set_graph_id("h");
  EXPECT_EQ(bus.Publish("g", {other}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bus.PublishGlobal(other).code(),
            absl::StatusCode::kInvalidArgument);
  Waker w;
  EXPECT_EQ(bus.SubscribeGraph("g", -1, w.Callback()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bus.events_published(), 0u);
}

}  // namespace
}  // namespace forge::events
