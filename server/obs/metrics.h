// server/obs: the Prometheus endpoint. Values are read at scrape time from
// counters the modules already keep (atomics, queue sizes), so metrics cost
// nothing on the hot path. Names follow Prometheus conventions: forge_
// prefix, base units, _total counters, and never a graph or task id as a
// label (the series count does not grow with the work).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/histogram.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace prometheus {
class Exposer;
}

namespace forge::obs {

using Labels = std::vector<std::pair<std::string, std::string>>;

// Builds one family for a scrape. Add samples, then take().
class FamilyBuilder {
 public:
  FamilyBuilder(std::string name, std::string help, prometheus::MetricType type);
  FamilyBuilder& Add(double value, Labels labels = {});
  // For a family of type Histogram: one series (cumulative buckets, +Inf).
  FamilyBuilder& AddHistogram(const HistogramSnapshot& h, Labels labels = {});
  prometheus::MetricFamily take() { return std::move(family_); }

 private:
  prometheus::MetricFamily family_;
};

// A Collectable whose families come from a function run at each scrape (on
// the exporter's thread; it must be thread-safe and must not block).
class ScrapeCollector final : public prometheus::Collectable {
 public:
  using Fn = std::function<std::vector<prometheus::MetricFamily>()>;
  explicit ScrapeCollector(Fn fn) : fn_(std::move(fn)) {}
  std::vector<prometheus::MetricFamily> Collect() const override { return fn_(); }

 private:
  Fn fn_;
};

// Serves /metrics on `listen` (HOST:PORT; port 0 picks one).
class MetricsServer {
 public:
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& listen, std::shared_ptr<prometheus::Collectable> collectable);
  ~MetricsServer();
  int port() const { return port_; }

 private:
  MetricsServer() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<prometheus::Collectable> collectable_;
  int port_ = 0;
};

}  // namespace forge::obs
