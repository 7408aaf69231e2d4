#include "common/histogram.h"

#include <algorithm>
#include <cassert>
#include <cmath>

namespace forge {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  assert(!bounds_.empty());
  assert(std::is_sorted(bounds_.begin(), bounds_.end()));
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    counts_[i].store(0, std::memory_order_relaxed);
  }
}

void Histogram::Observe(double value) {
  // First bound >= value: the bucket whose upper bound is inclusive.
  const size_t i = static_cast<size_t>(
      std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  if (std::isfinite(value)) {
    sum_nanos_.fetch_add(static_cast<int64_t>(std::llround(value * 1e9)),
                         std::memory_order_relaxed);
  }
}

HistogramSnapshot Histogram::Snapshot() const {
  HistogramSnapshot s;
  s.bounds = bounds_;
  s.counts.resize(bounds_.size() + 1);
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    s.counts[i] = counts_[i].load(std::memory_order_relaxed);
    s.count += s.counts[i];
  }
  s.sum = static_cast<double>(sum_nanos_.load(std::memory_order_relaxed)) / 1e9;
  return s;
}

const std::vector<double>& LatencyBuckets() {
  static const std::vector<double>* b = new std::vector<double>{
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
      0.25,   0.5,     1,      2.5,   5,      10,    30,   60,    120,  300,
      600,    1800,    3600};
  return *b;
}

const std::vector<double>& StorageLatencyBuckets() {
  static const std::vector<double>* b = new std::vector<double>{
      0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
      0.01,    0.025,  0.05,    0.1,    0.25,  1,      10};
  return *b;
}

const std::vector<double>& CountBuckets() {
  static const std::vector<double>* b = [] {
    auto* v = new std::vector<double>;
    for (double x = 1; x <= 8192; x *= 2) v->push_back(x);
    return v;
  }();
  return *b;
}

}  // namespace forge
