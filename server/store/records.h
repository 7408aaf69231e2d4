// server/store: the journal's keys (the records themselves are protos, see
// proto/forge/journal/v1/records.proto, which also describes the layout).
// The store writes them in each transition's Effects::batch (durable mode);
// the engine reads them back at recovery and deletes a graph's range at the
// end of its retention.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace forge::store {

// Version written in every record; readers accept this one and older.
inline constexpr uint32_t kRecordVersion = 1;

// "g/<id>/": everything of one graph; [GraphPrefix, GraphEnd) deletes it.
std::string GraphPrefix(absl::string_view graph_id);
std::string GraphEnd(absl::string_view graph_id);
std::string EventKey(absl::string_view graph_id, int64_t seq);
std::string SpecKey(absl::string_view graph_id);
std::string StateKey(absl::string_view graph_id);
std::string TaskKey(absl::string_view graph_id, int32_t index);
std::string RequestKey(absl::string_view request_id);
inline constexpr absl::string_view kGraphsPrefix = "g/";
inline constexpr absl::string_view kRequestsPrefix = "r/";

// A key of the g/ space, split.
struct GraphKey {
  enum Kind { kEvent, kSpec, kState, kTask, kUnknown };
  Kind kind = kUnknown;
  std::string graph_id;
  int64_t seq = 0;      // kEvent
  int32_t index = 0;    // kTask
};
// kUnknown for a key this version does not know (a newer writer's).
GraphKey ParseGraphKey(absl::string_view key);

// Parses the record stored under `key`: DATA_LOSS if it does not parse,
// FAILED_PRECONDITION if a newer version wrote it.
template <typename Record>
absl::Status ParseRecord(absl::string_view key, absl::string_view bytes,
                         Record* out) {
  if (!out->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError(absl::StrCat("journal record ", key, " does not parse"));
  }
  if (out->version() > kRecordVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "journal record ", key, " has version ", out->version(),
        ", newer than this server's ", kRecordVersion));
  }
  return absl::OkStatus();
}

}  // namespace forge::store
