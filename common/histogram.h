// A fixed-bucket histogram that any module may keep on its hot path: Observe()
// is a binary search and two relaxed atomic adds (no lock, no allocation).
// Metrics read it at scrape time through Snapshot(); the exposition format
// (cumulative buckets, +Inf) is obs/'s business.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/time/time.h"

namespace forge {

// What a histogram held at one moment. counts[i] is the number of
// observations v with bounds[i-1] < v <= bounds[i] (NOT cumulative);
// counts.back() counts those above the last bound.
struct HistogramSnapshot {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // bounds.size() + 1
  uint64_t count = 0;
  double sum = 0;
};

class Histogram {
 public:
  // `bounds`: inclusive upper bounds, strictly increasing, at least one.
  explicit Histogram(std::vector<double> bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  void Observe(double value);
  void Observe(absl::Duration d) { Observe(absl::ToDoubleSeconds(d)); }

  // Each bucket is read atomically, the whole is not: a snapshot taken while
  // observations land may be off by those few (count is the sum of counts,
  // so the buckets and the count always agree).
  HistogramSnapshot Snapshot() const;

  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  // The sum in nanounits (value * 1e9, rounded): an integer add instead of a
  // compare-and-swap loop on a double. Enough for 584 years of seconds.
  std::atomic<int64_t> sum_nanos_{0};
};

// Bucket bounds in seconds for task and RPC stage latencies: 100 us to 1 h
// (a no-op hop is sub-millisecond; an agent CLI runs for minutes).
const std::vector<double>& LatencyBuckets();
// Bounds in seconds for storage latencies: 50 us to 10 s.
const std::vector<double>& StorageLatencyBuckets();
// Bounds for counts (batch sizes): 1, 2, 4, ... 8192.
const std::vector<double>& CountBuckets();

}  // namespace forge
