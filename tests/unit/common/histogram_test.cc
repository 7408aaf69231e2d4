#include "common/histogram.h"

#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace forge {
namespace {

TEST(HistogramTest, BoundsAreInclusiveUpperBounds) {
  Histogram h({1, 2, 5});
  for (double v : {0.5, 1.0, 1.5, 2.0, 4.0, 5.0, 5.5, 100.0}) h.Observe(v);
  const HistogramSnapshot s = h.Snapshot();
  ASSERT_EQ(s.counts.size(), 4u);
  EXPECT_EQ(s.counts[0], 2u);  // 0.5, 1.0
  EXPECT_EQ(s.counts[1], 2u);  // 1.5, 2.0
  EXPECT_EQ(s.counts[2], 2u);  // 4.0, 5.0
  EXPECT_EQ(s.counts[3], 2u);  // 5.5, 100 (above the last bound)
  EXPECT_EQ(s.count, 8u);
  EXPECT_DOUBLE_EQ(s.sum, 0.5 + 1 + 1.5 + 2 + 4 + 5 + 5.5 + 100);
  EXPECT_EQ(s.bounds, (std::vector<double>{1, 2, 5}));
}

TEST(HistogramTest, DurationsAreSeconds) {
  Histogram h(LatencyBuckets());
  h.Observe(absl::Milliseconds(3));
  const HistogramSnapshot s = h.Snapshot();
  EXPECT_NEAR(s.sum, 0.003, 1e-9);
  // 3 ms lands in the (2.5 ms, 5 ms] bucket.
  size_t bucket = 0;
  while (s.counts[bucket] == 0) ++bucket;
  EXPECT_DOUBLE_EQ(s.bounds[bucket], 0.005);
}

TEST(HistogramTest, ConcurrentObservationsAreAllCounted) {
  Histogram h(CountBuckets());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&h, t] {
      for (int i = 0; i < 10000; ++i) h.Observe(static_cast<double>(t + 1));
    });
  }
  for (std::thread& t : threads) t.join();
  const HistogramSnapshot s = h.Snapshot();
  EXPECT_EQ(s.count, 40000u);
  EXPECT_DOUBLE_EQ(s.sum, 10000.0 * (1 + 2 + 3 + 4));
}

TEST(HistogramTest, StandardBucketsIncrease) {
  for (const std::vector<double>* b :
       {&LatencyBuckets(), &StorageLatencyBuckets(), &CountBuckets()}) {
    ASSERT_FALSE(b->empty());
    for (size_t i = 1; i < b->size(); ++i) EXPECT_LT((*b)[i - 1], (*b)[i]);
  }
}

}  // namespace
}  // namespace forge
