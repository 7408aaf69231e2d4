#include "server/obs/metrics.h"

#include <exception>
#include <limits>

#include "absl/strings/str_cat.h"
#include "prometheus/exposer.h"

namespace forge::obs {

FamilyBuilder::FamilyBuilder(std::string name, std::string help,
                             prometheus::MetricType type) {
  family_.name = std::move(name);
  family_.help = std::move(help);
  family_.type = type;
}

FamilyBuilder& FamilyBuilder::Add(double value, Labels labels) {
  prometheus::ClientMetric& m = family_.metric.emplace_back();
  for (auto& [k, v] : labels) m.label.push_back({std::move(k), std::move(v)});
  if (family_.type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  return *this;
}

FamilyBuilder& FamilyBuilder::AddHistogram(const HistogramSnapshot& h,
                                           Labels labels) {
  prometheus::ClientMetric& m = family_.metric.emplace_back();
  for (auto& [k, v] : labels) m.label.push_back({std::move(k), std::move(v)});
  m.histogram.sample_count = h.count;
  m.histogram.sample_sum = h.sum;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    cumulative += h.counts[i];
    m.histogram.bucket.push_back({cumulative, h.bounds[i]});
  }
  m.histogram.bucket.push_back(
      {h.count, std::numeric_limits<double>::infinity()});
  return *this;
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& listen, std::shared_ptr<prometheus::Collectable> collectable) {
  std::unique_ptr<MetricsServer> s(new MetricsServer());
  try {
    // civetweb reports bind errors by throwing: caught here, at the edge.
    s->exposer_ = std::make_unique<prometheus::Exposer>(listen, 1);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("metrics: cannot listen on ", listen, ": ", e.what()));
  }
  s->collectable_ = std::move(collectable);
  s->exposer_->RegisterCollectable(s->collectable_);
  const std::vector<int> ports = s->exposer_->GetListeningPorts();
  s->port_ = ports.empty() ? 0 : ports.front();
  return s;
}

MetricsServer::~MetricsServer() = default;

}  // namespace forge::obs
