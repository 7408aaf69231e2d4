#include "server/obs/task_metrics.h"

namespace forge::obs {

QueueTaskMetrics& TaskMetrics::For(absl::string_view queue) {
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = queues_.find(queue);
    if (it != queues_.end()) return *it->second;
  }
  absl::MutexLock lock(&mu_);
  if (queues_.size() >= max_queues_ && !queues_.contains(queue)) {
    queue = "_other";
  }
  std::unique_ptr<QueueTaskMetrics>& m = queues_[queue];
  if (!m) m = std::make_unique<QueueTaskMetrics>();
  return *m;
}

void TaskMetrics::ForEach(
    const std::function<void(const std::string&, const QueueTaskMetrics&)>& fn) const {
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [name, m] : queues_) fn(name, *m);
}

}  // namespace forge::obs
