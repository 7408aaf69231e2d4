#include "common/trace_context.h"

#include <vector>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"

namespace forge {
namespace {

bool IsLowerHex(absl::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool AllZero(absl::string_view s) { return s.find_first_not_of('0') == s.npos; }

std::string Hex64(uint64_t v) {
  std::string out(16, '0');
  static constexpr char kDigits[] = "0123456789abcdef";
  for (int i = 15; i >= 0; --i, v >>= 4) out[i] = kDigits[v & 0xf];
  return out;
}

uint64_t NonZero(uint64_t v) { return v == 0 ? 1 : v; }

}  // namespace

std::optional<TraceContext> ParseTraceparent(absl::string_view header) {
  header = absl::StripAsciiWhitespace(header);
  std::vector<absl::string_view> parts = absl::StrSplit(header, '-');
  if (parts.size() < 4) return std::nullopt;
  const absl::string_view version = parts[0];
  if (version.size() != 2 || !IsLowerHex(version) || version == "ff") {
    return std::nullopt;
  }
  // Version 00 has exactly four fields; a later version may add more.
  if (version == "00" && parts.size() != 4) return std::nullopt;
  if (parts[1].size() != 32 || !IsLowerHex(parts[1]) || AllZero(parts[1])) {
    return std::nullopt;
  }
  if (parts[2].size() != 16 || !IsLowerHex(parts[2]) || AllZero(parts[2])) {
    return std::nullopt;
  }
  if (parts[3].size() != 2 || !IsLowerHex(parts[3])) return std::nullopt;
  TraceContext c;
  c.trace_id = std::string(parts[1]);
  c.span_id = std::string(parts[2]);
  const int flags = (parts[3][1] >= 'a' ? parts[3][1] - 'a' + 10 : parts[3][1] - '0');
  c.sampled = (flags & 1) != 0;
  return c;
}

std::string FormatTraceparent(const TraceContext& c) {
  return absl::StrCat("00-", c.trace_id, "-", c.span_id, c.sampled ? "-01" : "-00");
}

std::string NewTraceId() {
  static absl::Mutex mu(absl::kConstInit);
  static absl::BitGen* gen ABSL_GUARDED_BY(mu) = new absl::BitGen();
  absl::MutexLock lock(&mu);
  const uint64_t hi = absl::Uniform<uint64_t>(*gen);
  return Hex64(hi) + Hex64(NonZero(absl::Uniform<uint64_t>(*gen)));
}

std::string NewSpanId() {
  static absl::Mutex mu(absl::kConstInit);
  static absl::BitGen* gen ABSL_GUARDED_BY(mu) = new absl::BitGen();
  absl::MutexLock lock(&mu);
  return Hex64(NonZero(absl::Uniform<uint64_t>(*gen)));
}

std::string DeriveSpanId(absl::string_view seed) {
  // FNV-1a, then a splitmix64 finaliser to spread the bits.
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : seed) {
    h ^= c;
    h *= 1099511628211ull;
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return Hex64(NonZero(h));
}

std::string GraphTraceId(absl::string_view graph_id) {
  return DeriveSpanId(absl::StrCat("trace-hi/", graph_id)) +
         DeriveSpanId(absl::StrCat("trace-lo/", graph_id));
}

std::string GraphSpanId(absl::string_view graph_id) {
  return DeriveSpanId(absl::StrCat("graph/", graph_id));
}

std::string AttemptSpanId(absl::string_view graph_id, int32_t index,
                          int32_t attempt) {
  return DeriveSpanId(absl::StrCat("attempt/", graph_id, "/", index, "/", attempt));
}

}  // namespace forge
