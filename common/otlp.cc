#include "common/otlp.h"

#include <curl/curl.h>

#include <cstdio>
#include <mutex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace forge::otlp {
namespace {

void AppendJsonString(std::string* out, absl::string_view s) {
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out->append(buf);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

void AppendNanos(std::string* out, absl::Time t) {
  // fixed64 in proto3 JSON: a decimal string.
  absl::StrAppend(out, "\"", absl::ToUnixNanos(t), "\"");
}

void AppendAttributes(std::string* out, const std::vector<Attribute>& attrs) {
  out->push_back('[');
  for (size_t i = 0; i < attrs.size(); ++i) {
    if (i > 0) out->push_back(',');
    out->append("{\"key\":");
    AppendJsonString(out, attrs[i].key);
    out->append(",\"value\":{");
    const AttributeValue& v = attrs[i].value;
    if (const auto* s = std::get_if<std::string>(&v)) {
      out->append("\"stringValue\":");
      AppendJsonString(out, *s);
    } else if (const auto* n = std::get_if<int64_t>(&v)) {
      absl::StrAppend(out, "\"intValue\":\"", *n, "\"");
    } else if (const auto* b = std::get_if<bool>(&v)) {
      absl::StrAppend(out, "\"boolValue\":", *b ? "true" : "false");
    } else {
      absl::StrAppend(out, "\"doubleValue\":", std::get<double>(v));
    }
    out->append("}}");
  }
  out->push_back(']');
}

size_t DiscardBody(char*, size_t size, size_t n, void*) { return size * n; }

}  // namespace

std::string EncodeJson(const std::vector<Span>& spans,
                       const std::vector<Attribute>& resource) {
  std::string out;
  out.reserve(256 + spans.size() * 400);
  out.append("{\"resourceSpans\":[{\"resource\":{\"attributes\":");
  AppendAttributes(&out, resource);
  out.append("},\"scopeSpans\":[{\"scope\":{\"name\":\"forge\"},\"spans\":[");
  for (size_t i = 0; i < spans.size(); ++i) {
    const Span& s = spans[i];
    if (i > 0) out.push_back(',');
    out.append("{\"traceId\":");
    AppendJsonString(&out, s.trace_id);
    out.append(",\"spanId\":");
    AppendJsonString(&out, s.span_id);
    if (!s.parent_span_id.empty()) {
      out.append(",\"parentSpanId\":");
      AppendJsonString(&out, s.parent_span_id);
    }
    out.append(",\"name\":");
    AppendJsonString(&out, s.name);
    absl::StrAppend(&out, ",\"kind\":", static_cast<int>(s.kind));
    out.append(",\"startTimeUnixNano\":");
    AppendNanos(&out, s.start);
    out.append(",\"endTimeUnixNano\":");
    AppendNanos(&out, s.end);
    out.append(",\"attributes\":");
    AppendAttributes(&out, s.attributes);
    absl::StrAppend(&out, ",\"status\":{\"code\":", static_cast<int>(s.status));
    if (!s.status_message.empty()) {
      out.append(",\"message\":");
      AppendJsonString(&out, s.status_message);
    }
    out.append("}}");
  }
  out.append("]}]}]}");
  return out;
}

absl::StatusOr<std::unique_ptr<SpanExporter>> SpanExporter::Start(
    ExporterOptions options) {
  if (!absl::StartsWith(options.endpoint, "http://") &&
      !absl::StartsWith(options.endpoint, "https://")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "otlp endpoint: \"", options.endpoint,
        "\" is not an http:// or https:// URL (OTLP/HTTP, e.g. http://127.0.0.1:4318)"));
  }
  if (options.max_batch == 0 || options.max_queue == 0) {
    return absl::InvalidArgumentError("otlp: max_batch and max_queue must be positive");
  }
  static std::once_flag curl_once;
  std::call_once(curl_once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  std::string url = options.endpoint;
  while (absl::EndsWith(url, "/")) url.pop_back();
  if (!absl::EndsWith(url, "/v1/traces")) url += "/v1/traces";
  std::unique_ptr<SpanExporter> e(new SpanExporter(std::move(options), std::move(url)));
  e->thread_ = std::thread([p = e.get()] { p->Loop(); });
  return e;
}

SpanExporter::SpanExporter(ExporterOptions options, std::string url)
    : options_(std::move(options)), url_(std::move(url)) {
  resource_.push_back({"service.name", options_.service_name});
  for (const Attribute& a : options_.resource) resource_.push_back(a);
}

SpanExporter::~SpanExporter() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    flush_target_ = queued_total_;
    work_cv_.Signal();
  }
  thread_.join();
}

void SpanExporter::Export(Span span) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || queue_.size() >= options_.max_queue) {
    ++stats_.dropped;
    return;
  }
  const bool was_empty = queue_.empty();
  queue_.emplace_back(absl::Now(), std::move(span));
  ++queued_total_;
  // The thread waits for the first span, then for a full batch.
  if (was_empty || queue_.size() >= options_.max_batch) work_cv_.Signal();
}

void SpanExporter::Flush() {
  absl::MutexLock lock(&mu_);
  const uint64_t target = queued_total_;
  flush_target_ = std::max(flush_target_, target);
  work_cv_.Signal();
  while (settled_total_ < target) settled_cv_.Wait(&mu_);
}

ExporterStats SpanExporter::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void SpanExporter::Loop() {
  CURL* curl = curl_easy_init();
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, "Content-Type: application/json");
  headers = curl_slist_append(headers, "Expect:");  // no 100-continue round trip
  std::vector<Span> batch;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      while (true) {
        if (queue_.empty()) {
          if (stopping_) {
            curl_slist_free_all(headers);
            if (curl) curl_easy_cleanup(curl);
            return;
          }
          work_cv_.Wait(&mu_);
          continue;
        }
        const bool flush = settled_total_ < flush_target_;
        if (flush || stopping_ || queue_.size() >= options_.max_batch) break;
        const absl::Time due = queue_.front().first + options_.flush_interval;
        if (absl::Now() >= due) break;
        work_cv_.WaitWithDeadline(&mu_, due);
      }
      while (!queue_.empty() && batch.size() < options_.max_batch) {
        batch.push_back(std::move(queue_.front().second));
        queue_.pop_front();
      }
    }
    const std::string body = EncodeJson(batch, resource_);
    bool ok = false;
    if (curl != nullptr) {
      curl_easy_setopt(curl, CURLOPT_URL, url_.c_str());
      curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
      curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
      curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                       static_cast<curl_off_t>(body.size()));
      curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
      curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS,
                       static_cast<long>(absl::ToInt64Milliseconds(options_.request_timeout)));
      curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, DiscardBody);
      long code = 0;
      if (curl_easy_perform(curl) == CURLE_OK) {
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
        ok = code >= 200 && code < 300;
      }
    }
    absl::MutexLock lock(&mu_);
    ++stats_.requests;
    (ok ? stats_.exported : stats_.failed) += batch.size();
    settled_total_ += batch.size();
    batch.clear();
    if (!ok && stopping_) {
      // Shutting down and the collector is not answering: the rest would
      // only wait for their timeouts too.
      stats_.failed += queue_.size();
      settled_total_ += queue_.size();
      queue_.clear();
    }
    settled_cv_.SignalAll();
  }
}

}  // namespace forge::otlp
