// The server's YAML config file (forged --config FILE): queues, and the
// command runner's profiles (see server/exec/profile.h for each field).
//
//   default_queue:            # for queues not listed
//     concurrency: 0          # most running tasks (0 = unlimited)
//     ordering: relaxed       # relaxed | per_key | strict
//   queues:
//     agents:
//       concurrency: 5
//       ordering: per_key
//       per_key_concurrency: 1
//   runner:
//     work_root: /var/lib/forge/runs   # fresh per-attempt directories
//     kill_grace: 5s                   # SIGTERM -> SIGKILL
//   profiles:
//     claude:
//       queues: [claude]
//       command: [claude, --print, --model, "{model}"]   # {param} from the task
//       stdin: input                 # input (default) | none
//       env_allow: [PATH, HOME, ANTHROPIC_API_KEY]
//       timeout: 600s
//       output_cap: 1048576          # bytes kept per stream
//       slots: 2
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
