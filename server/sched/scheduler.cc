#include "server/sched/scheduler.h"

#include <algorithm>
#include <utility>

namespace forge::sched {

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

void Scheduler::Configure(const std::string& queue, QueueConfig config) {
  absl::MutexLock lock(&mu_);
  QueueLocked(queue).config = config;
}

void Scheduler::Enqueue(const std::string& queue, QueuedTask task) {
  absl::MutexLock lock(&mu_);
  Queue& q = QueueLocked(queue);
  q.heap.push_back(std::move(task));
  std::push_heap(q.heap.begin(), q.heap.end(), Later{});
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
  if (q.heap.empty() || q.executors.empty()) return std::nullopt;
  if (q.config.concurrency > 0 && q.running >= q.config.concurrency) {
    return std::nullopt;
  }
  // Round-robin over the executors serving the queue, first with a free slot.
  const size_t n = q.executors.size();
  for (size_t k = 0; k < n; ++k) {
    const size_t at = (q.next + k) % n;
    auto eit = executors_.find(q.executors[at]);
    if (eit == executors_.end()) continue;
    ExecutorEntry& e = eit->second;
    if (e.in_use >= e.slots) continue;
    q.next = (at + 1) % n;
    ++e.in_use;
    ++q.running;
    std::pop_heap(q.heap.begin(), q.heap.end(), Later{});
    Match m{std::move(q.heap.back()), queue, e.executor};
    q.heap.pop_back();
    return m;
  }
  return std::nullopt;
}

void Scheduler::Release(const std::string& executor_id,
                        const std::string& queue) {
  absl::MutexLock lock(&mu_);
  auto qit = queues_.find(queue);
  if (qit != queues_.end() && qit->second.running > 0) --qit->second.running;
  auto eit = executors_.find(executor_id);
  if (eit != executors_.end() && eit->second.in_use > 0) --eit->second.in_use;
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
    out.push_back(QueueStats{name, static_cast<int64_t>(q.heap.size()),
                             q.running, q.config.concurrency,
                             static_cast<int64_t>(q.executors.size())});
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
