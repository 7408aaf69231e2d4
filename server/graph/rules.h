// The pure rules of the task lifecycle: triggers, graph outcome, retry policy.
// No state of their own; the store applies them under its shard lock.
#pragma once

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "forge/v1/types.pb.h"

namespace forge::graph {

// What a PENDING task's trigger decides given its dependencies' outcomes.
enum class Decision { kWait, kReady, kSkip };

// `pending`: dependencies not yet terminal; `unsuccessful`: dependencies
// that ended FAILED, CANCELLED or SKIPPED; `failed`: those that ended FAILED.
//   ALL_SUCCESS: kSkip as soon as one dependency was unsuccessful, kReady when
//                all succeeded.
//   ALL_DONE:    kReady when all are terminal.
//   ONE_FAILED:  when all are terminal, kReady if one FAILED, else kSkip.
Decision Decide(forge::v1::Trigger trigger, int32_t pending,
                int32_t unsuccessful, int32_t failed);

// True for SUCCEEDED, FAILED, CANCELLED, SKIPPED.
bool IsTerminal(forge::v1::TaskState state);
bool IsTerminal(forge::v1::GraphState state);

// The state of a graph whose tasks are all terminal: CANCELLED if the graph
// was cancelled, else FAILED if a task failed, else CANCELLED if a task was
// cancelled, else SUCCEEDED.
forge::v1::GraphState Outcome(bool cancel_requested, int32_t failed,
                              int32_t cancelled);

// Server-wide defaults for the per-task policies.
struct PolicyDefaults {
  int32_t max_attempts = 3;
  absl::Duration initial_backoff = absl::Seconds(1);
  double backoff_multiplier = 2.0;
  absl::Duration max_backoff = absl::Seconds(60);
  double jitter = 0.2;
  absl::Duration run_timeout = absl::Seconds(600);
  absl::Duration heartbeat_timeout = absl::Seconds(30);
};

// The effective number of attempts for `spec` (its own or the default).
int32_t MaxAttempts(const forge::v1::TaskSpec& spec, const PolicyDefaults& d);

// True when a failure with `error` on attempt `attempt` (1-based) is retried.
bool ShouldRetry(const forge::v1::TaskSpec& spec, const PolicyDefaults& d,
                 int32_t attempt, const forge::v1::TaskError& error);

// The delay before attempt `attempt + 1`: initial * multiplier^(attempt-1),
// spread by +-jitter using `unit_random` in [0, 1), then capped by
// max_backoff (never exceeded).
absl::Duration Backoff(const forge::v1::TaskSpec& spec,
                       const PolicyDefaults& d, int32_t attempt,
                       double unit_random);

}  // namespace forge::graph
