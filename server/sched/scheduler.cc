#include "server/sched/scheduler.h"

#include <algorithm>
#include <utility>

namespace forge::sched {

const char* OrderingModeName(OrderingMode mode) {
  switch (mode) {
    case OrderingMode::kPerKey:
      return "per_key";
    case OrderingMode::kStrict:
      return "strict";
    case OrderingMode::kRelaxed:
    default:
      return "relaxed";
  }
}

bool ParseOrderingMode(const std::string& name, OrderingMode* mode) {
  if (name == "relaxed") {
    *mode = OrderingMode::kRelaxed;
  } else if (name == "per_key") {
    *mode = OrderingMode::kPerKey;
  } else if (name == "strict") {
    *mode = OrderingMode::kStrict;
  } else {
    return false;
  }
  return true;
}

Scheduler::Scheduler(QueueConfig default_config)
    : default_config_(default_config) {}

Scheduler::Queue& Scheduler::QueueLocked(const std::string& name) {
  auto it = queues_.find(name);
  if (it == queues_.end()) {
    it = queues_.emplace(name, Queue{}).first;
    it->second.config = default_config_;
  }
  return it->second;
}

int32_t Scheduler::KeyLimit(const Queue& q) {
  if (q.config.mode == OrderingMode::kStrict) return 1;
  return std::max(1, q.config.per_key_concurrency);
}

void Scheduler::RefreshHead(Queue& q, const std::string& key) {
  auto it = q.keys.find(key);
  if (it == q.keys.end()) return;
  KeyState& k = it->second;
  if (k.head) {
    q.heads.erase(*k.head);
    k.head.reset();
  }
  if (k.tasks.empty()) {
    if (k.running == 0) q.keys.erase(it);  // nothing left to remember
    return;
  }
  if (k.running >= KeyLimit(q)) return;
  const QueuedTask& first = *k.tasks.begin();
  k.head = Head{first.priority, first.ready_seq, key};
  q.heads.insert(*k.head);
}

void Scheduler::Configure(const std::string& queue, QueueConfig config) {
  absl::MutexLock lock(&mu_);
  QueueLocked(queue).config = config;
}

void Scheduler::Enqueue(const std::string& queue, QueuedTask task) {
  absl::MutexLock lock(&mu_);
  Queue& q = QueueLocked(queue);
  ++q.depth;
  const bool strict = q.config.mode == OrderingMode::kStrict;
  const bool keyed =
      strict || (q.config.mode == OrderingMode::kPerKey && !task.ordering_key.empty());
  if (!keyed) {
    q.free.push(std::move(task));
    return;
  }
  // strict keeps every task under one key: one at a time, in READY order.
  const std::string key = strict ? std::string() : task.ordering_key;
  q.keys[key].tasks.insert(std::move(task));
  RefreshHead(q, key);
}

void Scheduler::AddExecutor(std::shared_ptr<Executor> executor,
                            std::vector<std::string> queues, int32_t slots) {
  absl::MutexLock lock(&mu_);
  const std::string id = executor->id();
  for (const std::string& name : queues) QueueLocked(name).executors.push_back(id);
  ExecutorEntry& e = executors_[id];
  e.executor = std::move(executor);
  e.queues = std::move(queues);
  e.slots = slots;
  e.in_use = 0;
}

void Scheduler::RemoveExecutor(const std::string& executor_id) {
  absl::MutexLock lock(&mu_);
  auto it = executors_.find(executor_id);
  if (it == executors_.end()) return;
  for (const std::string& name : it->second.queues) {
    Queue& q = QueueLocked(name);
    q.executors.erase(
        std::remove(q.executors.begin(), q.executors.end(), executor_id),
        q.executors.end());
  }
  executors_.erase(it);
}

std::optional<Match> Scheduler::Take(const std::string& queue) {
  absl::MutexLock lock(&mu_);
  auto qit = queues_.find(queue);
  if (qit == queues_.end()) return std::nullopt;
  Queue& q = qit->second;
  if (paused_ || q.executors.empty()) return std::nullopt;
  if (q.config.concurrency > 0 && q.running >= q.config.concurrency) {
    return std::nullopt;
  }
  // The best eligible task: the best free task or the best key head.
  const bool has_free = !q.free.empty();
  const bool has_head = !q.heads.empty();
  if (!has_free && !has_head) return std::nullopt;
  bool from_key = has_head;
  if (has_free && has_head) {
    const QueuedTask& f = q.free.front();
    const Head& h = *q.heads.begin();
    from_key = h.priority != f.priority ? h.priority > f.priority
                                        : h.ready_seq < f.ready_seq;
  }
  // Round-robin over the executors serving the queue, first with a free slot.
  ExecutorEntry* chosen = nullptr;
  const size_t n = q.executors.size();
  for (size_t k = 0; k < n && chosen == nullptr; ++k) {
    const size_t at = (q.next + k) % n;
    auto eit = executors_.find(q.executors[at]);
    if (eit == executors_.end() || eit->second.in_use >= eit->second.slots) continue;
    chosen = &eit->second;
    q.next = (at + 1) % n;
  }
  if (chosen == nullptr) return std::nullopt;

  Match m;
  Ticket ticket{chosen->executor->id(), queue, from_key, std::string()};
  if (from_key) {
    const std::string key = q.heads.begin()->key;
    KeyState& k = q.keys[key];
    m.task = std::move(k.tasks.extract(k.tasks.begin()).value());
    ++k.running;
    RefreshHead(q, key);
    ticket.key = key;
  } else {
    m.task = q.free.pop();
  }
  --q.depth;
  ++q.running;
  ++chosen->in_use;
  m.queue = queue;
  m.executor = chosen->executor;
  m.ticket = next_ticket_++;
  tickets_.emplace(m.ticket, std::move(ticket));
  return m;
}

std::string Scheduler::Release(uint64_t ticket) {
  absl::MutexLock lock(&mu_);
  auto it = tickets_.find(ticket);
  if (it == tickets_.end()) return std::string();
  Ticket t = std::move(it->second);
  tickets_.erase(it);
  auto eit = executors_.find(t.executor_id);
  if (eit != executors_.end() && eit->second.in_use > 0) --eit->second.in_use;
  auto qit = queues_.find(t.queue);
  if (qit != queues_.end()) {
    Queue& q = qit->second;
    if (q.running > 0) --q.running;
    if (t.keyed) {
      auto kit = q.keys.find(t.key);
      if (kit != q.keys.end()) {
        if (kit->second.running > 0) --kit->second.running;
        RefreshHead(q, t.key);
      }
    }
  }
  return t.queue;
}

void Scheduler::SetPaused(bool paused) {
  absl::MutexLock lock(&mu_);
  paused_ = paused;
}

bool Scheduler::AwaitIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithDeadline(
      absl::Condition(
          +[](absl::flat_hash_map<uint64_t, Ticket>* t) { return t->empty(); },
          &tickets_),
      deadline);
}

std::vector<std::string> Scheduler::QueuesOf(
    const std::string& executor_id) const {
  absl::MutexLock lock(&mu_);
  auto it = executors_.find(executor_id);
  if (it == executors_.end()) return {};
  return it->second.queues;
}

std::vector<QueueStats> Scheduler::Queues() const {
  absl::MutexLock lock(&mu_);
  std::vector<QueueStats> out;
  for (const auto& [name, q] : queues_) {
    QueueStats& st = out.emplace_back();
    st.name = name;
    st.depth = q.depth;
    st.running = q.running;
    st.concurrency = q.config.concurrency;
    st.executors = static_cast<int64_t>(q.executors.size());
    st.mode = q.config.mode;
    st.per_key_concurrency = q.config.per_key_concurrency;
  }
  return out;
}

std::vector<ExecutorStats> Scheduler::Executors() const {
  absl::MutexLock lock(&mu_);
  std::vector<ExecutorStats> out;
  for (const auto& [id, e] : executors_) {
    out.push_back(ExecutorStats{id, e.queues, e.slots, e.in_use});
  }
  std::sort(out.begin(), out.end(),
            [](const ExecutorStats& a, const ExecutorStats& b) { return a.id < b.id; });
  return out;
}

}  // namespace forge::sched
