#include "server/events/event_bus.h"

#include <algorithm>
#include <atomic>
#include <random>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace forge::events {

using forge::v1::Event;
using EventPtr = std::shared_ptr<const Event>;
using Labels = std::map<std::string, std::string>;

namespace internal {

// State every part of the bus (and subscriptions that outlive it) shares.
struct Shared {
  explicit Shared(BusOptions o) : options(o), epoch(RandomEpoch()) {}

  static uint64_t RandomEpoch() {
    std::random_device rd;
    uint64_t e = (uint64_t{rd()} << 32) ^ uint64_t { rd() };
    return e == 0 ? 1 : e;
  }

  const BusOptions options;
  const uint64_t epoch;
  std::atomic<uint64_t> next_subscription_id{1};

  std::atomic<uint64_t> events_published{0};
  std::atomic<uint64_t> events_duplicate{0};
  std::atomic<uint64_t> events_discarded{0};
  std::atomic<uint64_t> reorder_overflows{0};
  std::atomic<int64_t> subscribers{0};
  std::atomic<uint64_t> subscribers_cut_off{0};
};

// Calls a subscriber's notify callback with no bus lock held, and lets
// Close() wait until no call is running.
class Notifier {
 public:
  explicit Notifier(absl::AnyInvocable<void()> fn) : fn_(std::move(fn)) {}

  void Notify() ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (closed_ || !fn_) return;
      ++in_flight_;
    }
    Frame frame{this, tls_top_};
    tls_top_ = &frame;
    fn_();  // concurrent calls are allowed by contract
    tls_top_ = frame.prev;
    absl::MutexLock lock(&mu_);
    --in_flight_;
    if (closed_) idle_.SignalAll();  // only Close() waits
  }

  // After it returns no call runs except the ones on this thread's stack.
  // Destroys the callback (breaking any reference cycle through it) unless
  // it is running on this thread.
  void Close() ABSL_LOCKS_EXCLUDED(mu_) {
    int own = 0;
    for (const Frame* f = tls_top_; f != nullptr; f = f->prev) {
      if (f->notifier == this) ++own;
    }
    absl::AnyInvocable<void()> fn;  // destroyed after the unlock
    absl::MutexLock lock(&mu_);
    closed_ = true;
    // A CondVar rather than Await(Condition): the TSan build's absl::Mutex
    // shim cannot see conditions evaluated inside Mutex::Unlock.
    while (in_flight_ > own) idle_.Wait(&mu_);
    // Closed and idle: no Notify() touches fn_ any more.
    if (own == 0) fn = std::move(fn_);
  }

 private:
  // The notify calls running on this thread, innermost first.
  struct Frame {
    const Notifier* notifier;
    Frame* prev;
  };
  static thread_local Frame* tls_top_;

  absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  absl::CondVar idle_;  // signalled when in_flight_ drops while closing
  // Invoked outside mu_ (possibly concurrently) by calls counted in
  // in_flight_; moved out only by Close() once closed_ and no call runs.
  absl::AnyInvocable<void()> fn_;
};

thread_local Notifier::Frame* Notifier::tls_top_ = nullptr;

using Notifications = std::vector<std::shared_ptr<Notifier>>;

void NotifyAll(const Notifications& notifications) {
  for (const auto& n : notifications) n->Notify();
}

// ---------------------------------------------------------------------------
// Graph logs

struct GraphCursor {
  int64_t pos = 0;   // seq of the last event taken (or after_seq)
  int64_t base = 0;  // watermark when subscribed: the backlog is not lag
  bool overflowed = false;
  std::shared_ptr<Notifier> notifier;
};

struct GraphLog {
  enum class State { kOpen, kBroken, kDropped };

  GraphLog(std::string graph_id, std::shared_ptr<const Labels> graph_labels)
      : id(std::move(graph_id)), labels(std::move(graph_labels)) {}

  const std::string id;
  const std::shared_ptr<const Labels> labels;

  absl::Mutex mu;
  State state ABSL_GUARDED_BY(mu) = State::kOpen;
  // Visible events: events[i]->seq() == i + 1 (emptied by DropGraph).
  std::vector<EventPtr> events ABSL_GUARDED_BY(mu);
  // Seq of the last visible event; events 1..watermark are contiguous.
  int64_t watermark ABSL_GUARDED_BY(mu) = 0;
  // Events with seq > watermark + 1, waiting for the gap to close.
  std::map<int64_t, EventPtr> reorder ABSL_GUARDED_BY(mu);
  // Seq of the first visible terminal event, 0 while none.
  int64_t terminal_seq ABSL_GUARDED_BY(mu) = 0;
  absl::flat_hash_map<uint64_t, GraphCursor> cursors ABSL_GUARDED_BY(mu);

  // Where graph subscriptions stop: the terminal event or the watermark.
  int64_t EndLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return terminal_seq > 0 ? std::min(terminal_seq, watermark) : watermark;
  }
  bool EndedLocked(const GraphCursor& c) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return terminal_seq > 0 && c.pos >= terminal_seq;
  }
  int64_t LagLocked(const GraphCursor& c) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (EndedLocked(c)) return 0;
    return std::max<int64_t>(0, EndLocked() - std::max(c.pos, c.base));
  }
};

// ---------------------------------------------------------------------------
// The global ring

struct RingEntry {
  EventPtr event;
  std::shared_ptr<const Labels> labels;  // of its graph; null for no graph
};

struct GlobalCursor {
  GlobalFilter filter;
  int64_t pos = 0;   // last position consumed (taken or skipped)
  int64_t base = 0;  // head when subscribed: the backlog is not lag
  int64_t lag = 0;   // matching events at positions > max(pos, base)
  bool overflowed = false;
  bool lost = false;  // the ring overwrote position pos + 1
  std::shared_ptr<Notifier> notifier;
};

bool IsGraphEvent(forge::v1::EventType t) {
  return t == forge::v1::GRAPH_SUBMITTED || t == forge::v1::GRAPH_SUCCEEDED ||
         t == forge::v1::GRAPH_FAILED || t == forge::v1::GRAPH_CANCELLED;
}
bool IsWorkerEvent(forge::v1::EventType t) {
  return t == forge::v1::WORKER_CONNECTED || t == forge::v1::WORKER_LOST;
}
bool IsTerminalGraphEvent(forge::v1::EventType t) {
  return t == forge::v1::GRAPH_SUCCEEDED || t == forge::v1::GRAPH_FAILED ||
         t == forge::v1::GRAPH_CANCELLED;
}

bool Matches(const GlobalFilter& f, const RingEntry& e) {
  const Event& ev = *e.event;
  if (!f.types.empty() &&
      std::find(f.types.begin(), f.types.end(), ev.type()) == f.types.end()) {
    return false;
  }
  if (!f.queues.empty() && !IsGraphEvent(ev.type()) &&
      !IsWorkerEvent(ev.type()) &&
      std::find(f.queues.begin(), f.queues.end(), ev.queue()) ==
          f.queues.end()) {
    return false;
  }
  if (!f.labels.empty()) {
    if (e.labels == nullptr) return false;
    for (const auto& [k, v] : f.labels) {
      auto it = e.labels->find(k);
      if (it == e.labels->end() || it->second != v) return false;
    }
  }
  return true;
}

struct GlobalLog {
  explicit GlobalLog(size_t cap)
      : capacity(static_cast<int64_t>(std::max<size_t>(cap, 1))) {}

  const int64_t capacity;

  absl::Mutex mu;
  // Position p lives at ring[(p - 1) % capacity]; the ring grows to capacity.
  std::vector<RingEntry> ring ABSL_GUARDED_BY(mu);
  int64_t head ABSL_GUARDED_BY(mu) = 0;  // newest position; 0 = none yet
  absl::flat_hash_map<uint64_t, GlobalCursor> cursors ABSL_GUARDED_BY(mu);

  // Oldest position still held.
  int64_t OldestLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return std::max<int64_t>(1, head - capacity + 1);
  }
  const RingEntry& AtLocked(int64_t pos) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return ring[static_cast<size_t>((pos - 1) % capacity)];
  }

  // Appends entries, updates every cursor, and collects whom to notify.
  void AppendLocked(const std::vector<EventPtr>& events,
                    const std::shared_ptr<const Labels>& labels, Shared& shared,
                    Notifications* notify) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const int64_t old_head = head;
    for (const EventPtr& e : events) {
      ++head;
      RingEntry entry{e, labels};
      if (static_cast<int64_t>(ring.size()) < capacity) {
        ring.push_back(std::move(entry));
      } else {
        ring[static_cast<size_t>((head - 1) % capacity)] = std::move(entry);
      }
    }
    const int64_t oldest = OldestLocked();
    const int64_t max_lag =
        static_cast<int64_t>(shared.options.max_subscriber_lag);
    for (auto& [id, c] : cursors) {
      if (c.overflowed || c.lost) continue;
      int64_t matched = 0;
      int64_t first_match = 0;
      for (int64_t p = std::max(old_head + 1, oldest); p <= head; ++p) {
        if (Matches(c.filter, AtLocked(p))) {
          if (matched++ == 0) first_match = p;
        }
      }
      if (c.pos == old_head) {  // caught up: skip what it does not want
        if (matched == 0) {
          c.pos = head;
        } else {
          c.pos = first_match - 1;
          notify->push_back(c.notifier);
        }
      }
      c.lag += matched;
      bool cut = false;
      if (c.lag > max_lag) {
        c.overflowed = true;
        cut = true;
      } else if (c.pos + 1 < oldest) {
        c.lost = true;
        cut = true;
      }
      if (cut) {
        shared.subscribers_cut_off.fetch_add(1, std::memory_order_relaxed);
        notify->push_back(c.notifier);
      }
    }
  }
};

// ---------------------------------------------------------------------------
// Resume tokens: "fg1.<epoch hex>.<position>".

std::string MakeToken(uint64_t epoch, int64_t pos) {
  return absl::StrCat("fg1.", absl::Hex(epoch, absl::kZeroPad16), ".", pos);
}

// Parses a token of any epoch; false if it is garbage.
bool ParseToken(const std::string& token, uint64_t* epoch, int64_t* pos) {
  std::vector<absl::string_view> parts = absl::StrSplit(token, '.');
  if (parts.size() != 3 || parts[0] != "fg1" || parts[1].size() != 16) {
    return false;
  }
  return absl::SimpleHexAtoi(parts[1], epoch) &&
         absl::SimpleAtoi(parts[2], pos) && *pos >= 0;
}

// ---------------------------------------------------------------------------
// Subscriptions

std::vector<Event> CopyOut(const std::vector<EventPtr>& taken) {
  std::vector<Event> out;
  out.reserve(taken.size());
  for (const EventPtr& e : taken) out.push_back(*e);
  return out;
}

absl::Status ClosedError() {
  return absl::CancelledError("subscription closed");
}

class GraphSubscription final : public Subscription {
 public:
  GraphSubscription(std::shared_ptr<Shared> shared,
                    std::shared_ptr<GraphLog> log, uint64_t id,
                    std::shared_ptr<Notifier> notifier)
      : shared_(std::move(shared)),
        log_(std::move(log)),
        id_(id),
        notifier_(std::move(notifier)) {}
  ~GraphSubscription() override { Close(); }

  Batch Next(size_t max) override {
    Batch batch;
    std::vector<EventPtr> taken;
    {
      absl::MutexLock lock(&log_->mu);
      auto it = log_->cursors.find(id_);
      if (it == log_->cursors.end()) {
        batch.error = ClosedError();
        return batch;
      }
      GraphCursor& c = it->second;
      if (log_->EndedLocked(c)) {
        batch.end = true;
        return batch;
      }
      if (c.overflowed) {
        batch.error = absl::ResourceExhaustedError(
            absl::StrCat("watcher of graph ", log_->id, " fell more than ",
                         shared_->options.max_subscriber_lag,
                         " events behind; resume after_seq=", c.pos));
        return batch;
      }
      if (log_->state == GraphLog::State::kDropped) {
        batch.error = absl::NotFoundError(
            absl::StrCat("graph ", log_->id, " was dropped"));
        return batch;
      }
      const int64_t end = log_->EndLocked();
      while (c.pos < end && taken.size() < max) {
        taken.push_back(log_->events[static_cast<size_t>(c.pos)]);
        ++c.pos;
      }
      if (log_->EndedLocked(c)) {
        batch.end = true;
      } else if (log_->state == GraphLog::State::kBroken && taken.empty() &&
                 c.pos >= log_->watermark) {
        batch.error = absl::DataLossError(absl::StrCat(
            "event log of graph ", log_->id, " lost events after seq ",
            log_->watermark, "; re-read the graph"));
      }
    }
    batch.events = CopyOut(taken);
    return batch;
  }

  size_t Lag() const override {
    absl::MutexLock lock(&log_->mu);
    auto it = log_->cursors.find(id_);
    if (it == log_->cursors.end()) return 0;
    return static_cast<size_t>(log_->LagLocked(it->second));
  }

  bool Overflowed() const override {
    absl::MutexLock lock(&log_->mu);
    auto it = log_->cursors.find(id_);
    return it != log_->cursors.end() && it->second.overflowed;
  }

  void Close() override {
    bool erased;
    {
      absl::MutexLock lock(&log_->mu);
      erased = log_->cursors.erase(id_) > 0;
    }
    notifier_->Close();
    if (erased) shared_->subscribers.fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  const std::shared_ptr<Shared> shared_;
  const std::shared_ptr<GraphLog> log_;
  const uint64_t id_;
  const std::shared_ptr<Notifier> notifier_;
};

class GlobalSubscription final : public Subscription {
 public:
  GlobalSubscription(std::shared_ptr<Shared> shared,
                     std::shared_ptr<GlobalLog> global, uint64_t id,
                     std::shared_ptr<Notifier> notifier)
      : shared_(std::move(shared)),
        global_(std::move(global)),
        id_(id),
        notifier_(std::move(notifier)) {}
  ~GlobalSubscription() override { Close(); }

  Batch Next(size_t max) override {
    Batch batch;
    std::vector<EventPtr> taken;
    {
      GlobalLog& g = *global_;
      absl::MutexLock lock(&g.mu);
      auto it = g.cursors.find(id_);
      if (it == g.cursors.end()) {
        batch.error = ClosedError();
        return batch;
      }
      GlobalCursor& c = it->second;
      if (!c.lost && !c.overflowed && c.pos + 1 < g.OldestLocked()) {
        c.lost = true;
        shared_->subscribers_cut_off.fetch_add(1, std::memory_order_relaxed);
      }
      if (c.lost) {
        batch.error = absl::OutOfRangeError(absl::StrCat(
            "the global event stream overwrote this watcher's position "
            "(capacity ",
            g.capacity, " events); re-list and watch again"));
        return batch;
      }
      if (c.overflowed) {
        batch.error = absl::ResourceExhaustedError(absl::StrCat(
            "watcher fell more than ", shared_->options.max_subscriber_lag,
            " events behind; resume token=", MakeToken(shared_->epoch, c.pos)));
        return batch;
      }
      // Takes up to max matching events, then skips the non-matching ones
      // up to the next matching event: afterwards pos == head or the event
      // at pos + 1 matches.
      for (int64_t p = c.pos + 1; p <= g.head; ++p) {
        const RingEntry& e = g.AtLocked(p);
        if (Matches(c.filter, e)) {
          if (taken.size() >= max) break;
          taken.push_back(e.event);
          if (p > c.base) --c.lag;
        }
        c.pos = p;
      }
      batch.resume_token = MakeToken(shared_->epoch, c.pos);
    }
    batch.events = CopyOut(taken);
    return batch;
  }

  size_t Lag() const override {
    absl::MutexLock lock(&global_->mu);
    auto it = global_->cursors.find(id_);
    if (it == global_->cursors.end()) return 0;
    return static_cast<size_t>(std::max<int64_t>(0, it->second.lag));
  }

  bool Overflowed() const override {
    absl::MutexLock lock(&global_->mu);
    auto it = global_->cursors.find(id_);
    if (it == global_->cursors.end()) return false;
    const GlobalCursor& c = it->second;
    return c.overflowed || c.lost || c.pos + 1 < global_->OldestLocked();
  }

  void Close() override {
    bool erased;
    {
      absl::MutexLock lock(&global_->mu);
      erased = global_->cursors.erase(id_) > 0;
    }
    notifier_->Close();
    if (erased) shared_->subscribers.fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  const std::shared_ptr<Shared> shared_;
  const std::shared_ptr<GlobalLog> global_;
  const uint64_t id_;
  const std::shared_ptr<Notifier> notifier_;
};

}  // namespace internal

using internal::GlobalLog;
using internal::GraphLog;
using internal::Notifications;

// ---------------------------------------------------------------------------
// EventBus

EventBus::EventBus(BusOptions options)
    : shared_(std::make_shared<internal::Shared>(options)),
      global_(std::make_shared<GlobalLog>(options.global_capacity)) {}

EventBus::~EventBus() = default;

std::shared_ptr<GraphLog> EventBus::FindGraph(
    const std::string& graph_id) const {
  absl::ReaderMutexLock lock(&graphs_mu_);
  auto it = graphs_.find(graph_id);
  return it == graphs_.end() ? nullptr : it->second;
}

absl::Status EventBus::CreateGraph(const std::string& graph_id,
                                   std::map<std::string, std::string> labels) {
  if (graph_id.empty()) return absl::InvalidArgumentError("empty graph id");
  auto log = std::make_shared<GraphLog>(
      graph_id, std::make_shared<const Labels>(std::move(labels)));
  absl::MutexLock lock(&graphs_mu_);
  if (!graphs_.emplace(graph_id, std::move(log)).second) {
    return absl::AlreadyExistsError(
        absl::StrCat("graph ", graph_id, " already has an event log"));
  }
  return absl::OkStatus();
}

absl::Status EventBus::Publish(const std::string& graph_id,
                               std::vector<Event> events) {
  std::vector<EventPtr> incoming;
  incoming.reserve(events.size());
  for (Event& e : events) {
    if (e.graph_id().empty()) e.set_graph_id(graph_id);
    incoming.push_back(std::make_shared<const Event>(std::move(e)));
  }
  return PublishShared(graph_id, std::move(incoming));
}

absl::Status EventBus::PublishShared(const std::string& graph_id,
                                     std::vector<EventPtr> incoming) {
  std::shared_ptr<GraphLog> log = FindGraph(graph_id);
  if (log == nullptr) {
    return absl::NotFoundError(absl::StrCat("unknown graph ", graph_id));
  }
  for (const EventPtr& e : incoming) {
    if (e->seq() < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("event of graph ", graph_id, " has seq ", e->seq()));
    }
    if (e->graph_id() != graph_id) {
      return absl::InvalidArgumentError(absl::StrCat(
          "event of graph ", e->graph_id(), " published to graph ", graph_id));
    }
  }

  const BusOptions& opts = shared_->options;
  Notifications notify;
  absl::Status result;
  size_t made_visible = 0;
  {
    absl::MutexLock lock(&log->mu);
    if (log->state == GraphLog::State::kDropped) {
      return absl::NotFoundError(
          absl::StrCat("graph ", graph_id, " was dropped"));
    }
    if (log->state == GraphLog::State::kBroken) {
      return absl::DataLossError(
          absl::StrCat("event log of graph ", graph_id, " is broken"));
    }
    // The contiguous prefix becomes visible. Events come in order almost
    // always: the next one is appended at once, and only one that comes
    // early (or anything behind it in this call) waits in the reorder map.
    std::vector<EventPtr> visible;
    visible.reserve(incoming.size());
    const int64_t old_wm = log->watermark;
    auto make_visible = [&](EventPtr e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(log->mu) {
      ++log->watermark;
      if (log->terminal_seq == 0 && internal::IsTerminalGraphEvent(e->type())) {
        log->terminal_seq = e->seq();
      }
      log->events.push_back(e);
      visible.push_back(std::move(e));
    };
    uint64_t duplicates = 0;
    for (EventPtr& e : incoming) {
      if (e->seq() <= log->watermark) {
        ++duplicates;
      } else if (e->seq() == log->watermark + 1 && log->reorder.empty()) {
        make_visible(std::move(e));
      } else if (!log->reorder.emplace(e->seq(), std::move(e)).second) {
        ++duplicates;
      }
    }
    if (duplicates > 0) {
      shared_->events_duplicate.fetch_add(duplicates,
                                          std::memory_order_relaxed);
    }
    while (!log->reorder.empty() &&
           log->reorder.begin()->first == log->watermark + 1) {
      EventPtr e = std::move(log->reorder.begin()->second);
      log->reorder.erase(log->reorder.begin());
      make_visible(std::move(e));
    }
    made_visible = visible.size();

    if (log->reorder.size() > opts.max_reorder_per_graph) {
      // A seq never arrived: declare the gap permanent (see header).
      shared_->reorder_overflows.fetch_add(1, std::memory_order_relaxed);
      shared_->events_discarded.fetch_add(log->reorder.size(),
                                          std::memory_order_relaxed);
      log->reorder.clear();
      log->state = GraphLog::State::kBroken;
      for (auto& [id, c] : log->cursors) notify.push_back(c.notifier);
      result = absl::DataLossError(
          absl::StrCat("event log of graph ", graph_id, " buffered more than ",
                       opts.max_reorder_per_graph, " events waiting for seq ",
                       log->watermark + 1, "; log marked broken"));
    }

    if (!visible.empty()) {
      const int64_t end = log->EndLocked();
      const bool broken = log->state == GraphLog::State::kBroken;
      for (auto& [id, c] : log->cursors) {
        if (c.overflowed || log->EndedLocked(c)) continue;
        if (!broken && c.pos >= old_wm && c.pos < end) {
          notify.push_back(c.notifier);  // was caught up, now has something
        }
        if (log->LagLocked(c) > static_cast<int64_t>(opts.max_subscriber_lag)) {
          c.overflowed = true;
          shared_->subscribers_cut_off.fetch_add(1, std::memory_order_relaxed);
          notify.push_back(c.notifier);
        }
      }
      // Still under log->mu: this graph's events enter the ring in seq order.
      absl::MutexLock global_lock(&global_->mu);
      global_->AppendLocked(visible, log->labels, *shared_, &notify);
    }
  }
  if (made_visible > 0) {
    shared_->events_published.fetch_add(made_visible,
                                        std::memory_order_relaxed);
  }
  internal::NotifyAll(notify);
  return result;
}

absl::Status EventBus::PublishGlobal(Event event) {
  if (!event.graph_id().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "event of graph ", event.graph_id(), " must go through Publish"));
  }
  event.set_seq(0);
  std::vector<EventPtr> one{std::make_shared<const Event>(std::move(event))};
  Notifications notify;
  {
    absl::MutexLock lock(&global_->mu);
    global_->AppendLocked(one, nullptr, *shared_, &notify);
  }
  shared_->events_published.fetch_add(1, std::memory_order_relaxed);
  internal::NotifyAll(notify);
  return absl::OkStatus();
}

std::shared_ptr<GraphLog> EventBus::Unlink(const std::string& graph_id) {
  absl::MutexLock lock(&graphs_mu_);
  auto it = graphs_.find(graph_id);
  if (it == graphs_.end()) return nullptr;
  std::shared_ptr<GraphLog> log = std::move(it->second);
  graphs_.erase(it);
  return log;
}

bool EventBus::ForgetGraph(const std::string& graph_id) {
  // The log lives on with its subscribers (freed with the last of them).
  return Unlink(graph_id) != nullptr;
}

bool EventBus::DropGraph(const std::string& graph_id) {
  const std::shared_ptr<GraphLog> log = Unlink(graph_id);
  if (log == nullptr) return false;
  Notifications notify;
  std::vector<EventPtr> freed;
  std::map<int64_t, EventPtr> freed_reorder;
  {
    absl::MutexLock lock(&log->mu);
    log->state = GraphLog::State::kDropped;
    freed.swap(log->events);
    freed_reorder.swap(log->reorder);
    for (auto& [id, c] : log->cursors) {
      if (!c.overflowed && !log->EndedLocked(c)) notify.push_back(c.notifier);
    }
  }
  internal::NotifyAll(notify);
  return true;  // `freed` releases the events outside the lock
}

absl::StatusOr<std::shared_ptr<Subscription>> EventBus::SubscribeGraph(
    const std::string& graph_id, int64_t after_seq,
    absl::AnyInvocable<void()> notify) {
  if (after_seq < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("negative after_seq ", after_seq));
  }
  std::shared_ptr<GraphLog> log = FindGraph(graph_id);
  if (log == nullptr) {
    return absl::NotFoundError(absl::StrCat("unknown graph ", graph_id));
  }
  const uint64_t id = shared_->next_subscription_id.fetch_add(1);
  auto notifier = std::make_shared<internal::Notifier>(std::move(notify));
  {
    absl::MutexLock lock(&log->mu);
    if (log->state == GraphLog::State::kDropped) {
      return absl::NotFoundError(absl::StrCat("unknown graph ", graph_id));
    }
    internal::GraphCursor c;
    c.pos = after_seq;
    c.base = log->watermark;
    c.notifier = notifier;
    log->cursors.emplace(id, std::move(c));
  }
  shared_->subscribers.fetch_add(1, std::memory_order_relaxed);
  return std::shared_ptr<Subscription>(
      std::make_shared<internal::GraphSubscription>(shared_, std::move(log), id,
                                                    std::move(notifier)));
}

absl::StatusOr<std::shared_ptr<Subscription>> EventBus::SubscribeAll(
    const std::string& resume_token, GlobalFilter filter,
    absl::AnyInvocable<void()> notify) {
  int64_t pos = -1;
  if (!resume_token.empty()) {
    uint64_t epoch = 0;
    if (!internal::ParseToken(resume_token, &epoch, &pos)) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed resume token \"", resume_token, "\""));
    }
    if (epoch != shared_->epoch) {
      return absl::OutOfRangeError(
          "resume token is from another server instance; re-list and watch "
          "again");
    }
  }
  const uint64_t id = shared_->next_subscription_id.fetch_add(1);
  auto notifier = std::make_shared<internal::Notifier>(std::move(notify));
  {
    absl::MutexLock lock(&global_->mu);
    if (pos < 0) {
      pos = global_->head;
    } else if (pos > global_->head) {
      return absl::InvalidArgumentError(
          "resume token is ahead of the event stream");
    } else if (pos + 1 < global_->OldestLocked()) {
      return absl::OutOfRangeError(
          absl::StrCat("resume token is too old (the stream keeps the last ",
                       global_->capacity, " events); re-list and watch again"));
    }
    internal::GlobalCursor c;
    c.filter = std::move(filter);
    c.pos = pos;
    c.base = global_->head;
    c.notifier = notifier;
    global_->cursors.emplace(id, std::move(c));
  }
  shared_->subscribers.fetch_add(1, std::memory_order_relaxed);
  return std::shared_ptr<Subscription>(
      std::make_shared<internal::GlobalSubscription>(shared_, global_, id,
                                                     std::move(notifier)));
}

std::string EventBus::CurrentResumeToken() const {
  absl::MutexLock lock(&global_->mu);
  return internal::MakeToken(shared_->epoch, global_->head);
}

uint64_t EventBus::events_published() const {
  return shared_->events_published.load(std::memory_order_relaxed);
}
uint64_t EventBus::events_duplicate() const {
  return shared_->events_duplicate.load(std::memory_order_relaxed);
}
uint64_t EventBus::events_discarded() const {
  return shared_->events_discarded.load(std::memory_order_relaxed);
}
uint64_t EventBus::reorder_overflows() const {
  return shared_->reorder_overflows.load(std::memory_order_relaxed);
}
int64_t EventBus::subscribers() const {
  return shared_->subscribers.load(std::memory_order_relaxed);
}
uint64_t EventBus::subscribers_cut_off() const {
  return shared_->subscribers_cut_off.load(std::memory_order_relaxed);
}

}  // namespace forge::events
