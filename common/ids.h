// Identifiers: ULIDs for graphs (26 Crockford base32 characters: 48 bits of
// milliseconds then 80 random bits), so ids sort by creation time.
#pragma once

#include <string>

#include "absl/time/time.h"

namespace forge {

// Returns a new ULID for `now`. Thread-safe. Within one millisecond, ids made
// by this process increase strictly (monotonic ULID), so sorting by id sorts
// by creation order.
std::string NewUlid(absl::Time now);

// True if `id` has the shape of a ULID (26 Crockford base32 characters).
bool IsUlid(const std::string& id);

}  // namespace forge
