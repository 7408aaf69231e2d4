// OpenTelemetry spans and their export over OTLP/HTTP with the JSON encoding
// (https://opentelemetry.io/docs/specs/otlp/): Debian has no OpenTelemetry
// C++ SDK, and the part Forge needs is small: finished spans, batched,
// POSTed to <endpoint>/v1/traces by one exporter thread. The server and the
// C++ worker library both use it (so a worker's spans join the graph's
// trace).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace forge::otlp {

using AttributeValue = std::variant<std::string, int64_t, bool, double>;

struct Attribute {
  std::string key;
  AttributeValue value;
};

// OTLP's SpanKind and Status.Code values.
enum class SpanKind { kInternal = 1, kServer = 2, kClient = 3, kProducer = 4, kConsumer = 5 };
enum class StatusCode { kUnset = 0, kOk = 1, kError = 2 };

struct Span {
  std::string trace_id;        // 32 hex digits
  std::string span_id;         // 16 hex digits
  std::string parent_span_id;  // empty for a root span
  std::string name;
  SpanKind kind = SpanKind::kInternal;
  absl::Time start;
  absl::Time end;
  std::vector<Attribute> attributes;
  StatusCode status = StatusCode::kUnset;
  std::string status_message;
};

// One ExportTraceServiceRequest in OTLP/JSON: one resource (service.name
// plus `resource`), one instrumentation scope ("forge"), the spans.
std::string EncodeJson(const std::vector<Span>& spans,
                       const std::vector<Attribute>& resource);

struct ExporterOptions {
  // OTLP/HTTP base URL (http://host:4318); "/v1/traces" is appended unless
  // the URL already ends with it.
  std::string endpoint;
  std::string service_name = "forge";
  std::vector<Attribute> resource;  // more resource attributes
  // Spans waiting beyond this are dropped (counted): export never blocks
  // the caller and never grows without bound.
  size_t max_queue = 16384;
  size_t max_batch = 512;
  // A span waits at most this long for a batch to fill.
  absl::Duration flush_interval = absl::Seconds(1);
  absl::Duration request_timeout = absl::Seconds(5);
};

struct ExporterStats {
  uint64_t exported = 0;  // accepted by the collector (2xx)
  uint64_t dropped = 0;   // queue full
  uint64_t failed = 0;    // the collector refused or could not be reached
  uint64_t requests = 0;
};

// Thread-safe. One thread of its own sends batches; it sleeps with no
// deadline while nothing is queued, and otherwise until the oldest queued
// span's flush_interval has passed or a batch is full.
class SpanExporter {
 public:
  // INVALID_ARGUMENT for an endpoint that is not http(s)://.
  static absl::StatusOr<std::unique_ptr<SpanExporter>> Start(ExporterOptions options);
  // Sends what is queued (bounded by the request timeout), then stops.
  ~SpanExporter();

  // Queues a finished span; drops it (counted) when the queue is full.
  void Export(Span span) ABSL_LOCKS_EXCLUDED(mu_);
  // Blocks until every span queued before the call was sent (or failed).
  // Not for latency-sensitive threads.
  void Flush() ABSL_LOCKS_EXCLUDED(mu_);
  ExporterStats stats() const ABSL_LOCKS_EXCLUDED(mu_);
  const std::string& url() const { return url_; }

 private:
  explicit SpanExporter(ExporterOptions options, std::string url);
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);

  const ExporterOptions options_;
  const std::string url_;
  std::vector<Attribute> resource_;

  mutable absl::Mutex mu_;
  std::deque<std::pair<absl::Time, Span>> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t queued_total_ ABSL_GUARDED_BY(mu_) = 0;   // spans ever queued
  uint64_t settled_total_ ABSL_GUARDED_BY(mu_) = 0;  // of those, sent or failed
  uint64_t flush_target_ ABSL_GUARDED_BY(mu_) = 0;   // send up to this now
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  ExporterStats stats_ ABSL_GUARDED_BY(mu_);
  absl::CondVar work_cv_;
  absl::CondVar settled_cv_;
  std::thread thread_;
};

}  // namespace forge::otlp
