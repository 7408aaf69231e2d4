// Per-queue task metrics kept on the hot path: the four stage histograms
// (dependency wait, queue wait, pickup, run) and outcome counters. Observing
// is a map lookup under a reader lock plus relaxed atomic adds; the scrape
// reads them (see forge_server.cc). Queues are the label: their number is
// bounded by max_queues (the rest share the queue label "_other"), so the
// series count never grows with the work.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/histogram.h"

namespace forge::obs {

struct QueueTaskMetrics {
  Histogram dependency_wait{LatencyBuckets()};  // submitted -> READY
  Histogram queue_wait{LatencyBuckets()};       // READY -> dispatched
  Histogram pickup{LatencyBuckets()};           // dispatched -> started
  Histogram run{LatencyBuckets()};              // started -> finished
  std::atomic<int64_t> succeeded{0};
  std::atomic<int64_t> failed{0};
  std::atomic<int64_t> cancelled{0};
  std::atomic<int64_t> skipped{0};
  std::atomic<int64_t> retries{0};
  std::atomic<int64_t> timeouts{0};
};

class TaskMetrics {
 public:
  explicit TaskMetrics(size_t max_queues = 512) : max_queues_(max_queues) {}

  // The metrics of `queue` (created on first use). The reference stays
  // valid for the TaskMetrics' lifetime.
  QueueTaskMetrics& For(absl::string_view queue) ABSL_LOCKS_EXCLUDED(mu_);

  // Calls fn(queue, metrics) for each queue seen, in no particular order.
  void ForEach(const std::function<void(const std::string&,
                                        const QueueTaskMetrics&)>& fn) const
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const size_t max_queues_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<QueueTaskMetrics>> queues_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace forge::obs
