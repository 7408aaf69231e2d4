// The server's YAML config file (forged --config FILE). Today it configures
// queues; the command runner's profiles join it next.
//
//   default_queue:            # for queues not listed
//     concurrency: 0          # most running tasks (0 = unlimited)
//     ordering: relaxed       # relaxed | per_key | strict
//   queues:
//     agents:
//       concurrency: 5
//       ordering: per_key
//       per_key_concurrency: 1
#pragma once

#include <string>

#include "absl/status/status.h"
#include "server/forge_server.h"

namespace forge {

// Reads the config at `path` into `options`. INVALID_ARGUMENT naming the key
// and line for a bad value or an unknown key; NOT_FOUND for a missing file.
absl::Status LoadServerConfig(const std::string& path, ServerOptions* options);
// The same from text (tests).
absl::Status ParseServerConfig(const std::string& text, ServerOptions* options);

}  // namespace forge
