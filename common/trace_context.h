// W3C Trace Context (https://www.w3.org/TR/trace-context/): the traceparent
// header "00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>", and the
// span ids Forge derives for its own spans.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace forge {

struct TraceContext {
  std::string trace_id;  // 32 lowercase hex digits, not all zero
  std::string span_id;   // 16 lowercase hex digits, not all zero
  bool sampled = true;
};

// nullopt for anything that is not a valid version-00 traceparent (or a
// later version's, read by the version-00 rules the spec asks for).
std::optional<TraceContext> ParseTraceparent(absl::string_view header);
std::string FormatTraceparent(const TraceContext& context);

// A random trace id / span id (hex, never all zero).
std::string NewTraceId();
std::string NewSpanId();

// A span id derived from `seed` alone (a stable 64-bit hash, never zero):
// the spans of a graph and its attempts get the same ids after a restart,
// with nothing stored for them.
std::string DeriveSpanId(absl::string_view seed);

// Forge's own ids, derived so they are the same after a restart:
// the trace of a graph submitted without a traceparent, the graph's span,
// and each attempt's span (its parent for the executor's spans).
std::string GraphTraceId(absl::string_view graph_id);
std::string GraphSpanId(absl::string_view graph_id);
std::string AttemptSpanId(absl::string_view graph_id, int32_t index, int32_t attempt);

}  // namespace forge
