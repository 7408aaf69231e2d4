#include "server/store/records.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace forge::store {

namespace {

void AppendBigEndian(std::string* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t ReadBigEndian(absl::string_view s) {
  uint64_t v = 0;
  for (char c : s) v = v << 8 | static_cast<unsigned char>(c);
  return v;
}

}  // namespace

std::string GraphPrefix(absl::string_view graph_id) {
  return absl::StrCat(kGraphsPrefix, graph_id, "/");
}

// '0' is the byte after '/': the first key past every "g/<id>/..." key.
std::string GraphEnd(absl::string_view graph_id) {
  return absl::StrCat(kGraphsPrefix, graph_id, "0");
}

std::string EventKey(absl::string_view graph_id, int64_t seq) {
  std::string k = absl::StrCat(GraphPrefix(graph_id), "e/");
  AppendBigEndian(&k, static_cast<uint64_t>(seq), 8);
  return k;
}

std::string SpecKey(absl::string_view graph_id) {
  return absl::StrCat(GraphPrefix(graph_id), "spec");
}

std::string StateKey(absl::string_view graph_id) {
  return absl::StrCat(GraphPrefix(graph_id), "state");
}

std::string TaskKey(absl::string_view graph_id, int32_t index) {
  std::string k = absl::StrCat(GraphPrefix(graph_id), "t/");
  AppendBigEndian(&k, static_cast<uint32_t>(index), 4);
  return k;
}

std::string RequestKey(absl::string_view request_id) {
  return absl::StrCat(kRequestsPrefix, request_id);
}

GraphKey ParseGraphKey(absl::string_view key) {
  GraphKey out;
  if (!absl::ConsumePrefix(&key, kGraphsPrefix)) return out;
  const size_t slash = key.find('/');
  if (slash == absl::string_view::npos) return out;
  out.graph_id = std::string(key.substr(0, slash));
  absl::string_view rest = key.substr(slash + 1);
  if (rest == "spec") {
    out.kind = GraphKey::kSpec;
  } else if (rest == "state") {
    out.kind = GraphKey::kState;
  } else if (absl::ConsumePrefix(&rest, "e/") && rest.size() == 8) {
    out.kind = GraphKey::kEvent;
    out.seq = static_cast<int64_t>(ReadBigEndian(rest));
  } else if (absl::ConsumePrefix(&rest, "t/") && rest.size() == 4) {
    out.kind = GraphKey::kTask;
    out.index = static_cast<int32_t>(ReadBigEndian(rest));
  }
  return out;
}

}  // namespace forge::store
