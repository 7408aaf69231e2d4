#include "server/graph/rules.h"

#include <algorithm>
#include <cmath>

#include "common/proto_time.h"

namespace forge::graph {

using forge::v1::TaskState;

Decision Decide(forge::v1::Trigger trigger, int32_t pending,
                int32_t unsuccessful, int32_t failed) {
  switch (trigger) {
    case forge::v1::ALL_DONE:
      return pending == 0 ? Decision::kReady : Decision::kWait;
    case forge::v1::ONE_FAILED:
      if (pending > 0) return Decision::kWait;
      return failed > 0 ? Decision::kReady : Decision::kSkip;
    case forge::v1::ALL_SUCCESS:
    case forge::v1::TRIGGER_UNSPECIFIED:
    default:
      if (unsuccessful > 0) return Decision::kSkip;
      return pending == 0 ? Decision::kReady : Decision::kWait;
  }
}

bool IsTerminal(TaskState state) {
  return state == forge::v1::SUCCEEDED || state == forge::v1::FAILED ||
         state == forge::v1::CANCELLED || state == forge::v1::SKIPPED;
}

bool IsTerminal(forge::v1::GraphState state) {
  return state == forge::v1::GRAPH_STATE_SUCCEEDED ||
         state == forge::v1::GRAPH_STATE_FAILED ||
         state == forge::v1::GRAPH_STATE_CANCELLED;
}

forge::v1::GraphState Outcome(bool cancel_requested, int32_t failed,
                              int32_t cancelled) {
  if (cancel_requested) return forge::v1::GRAPH_STATE_CANCELLED;
  if (failed > 0) return forge::v1::GRAPH_STATE_FAILED;
  if (cancelled > 0) return forge::v1::GRAPH_STATE_CANCELLED;
  return forge::v1::GRAPH_STATE_SUCCEEDED;
}

int32_t MaxAttempts(const forge::v1::TaskSpec& spec, const PolicyDefaults& d) {
  const int32_t own = spec.retry().max_attempts();
  return own > 0 ? own : d.max_attempts;
}

bool ShouldRetry(const forge::v1::TaskSpec& spec, const PolicyDefaults& d,
                 int32_t attempt, const forge::v1::TaskError& error) {
  if (error.non_retryable()) return false;
  if (attempt >= MaxAttempts(spec, d)) return false;
  for (const std::string& code : spec.retry().non_retryable_errors()) {
    if (code == error.code()) return false;
  }
  return true;
}

absl::Duration Backoff(const forge::v1::TaskSpec& spec,
                       const PolicyDefaults& d, int32_t attempt,
                       double unit_random) {
  const forge::v1::RetryPolicy& p = spec.retry();
  const absl::Duration initial =
      p.has_initial_backoff() ? FromProto(p.initial_backoff()) : d.initial_backoff;
  const absl::Duration cap =
      p.has_max_backoff() ? FromProto(p.max_backoff()) : d.max_backoff;
  const double mult =
      p.backoff_multiplier() >= 1.0 ? p.backoff_multiplier() : d.backoff_multiplier;
  const double jitter = p.jitter() > 0 ? p.jitter() : d.jitter;
  double seconds = absl::ToDoubleSeconds(initial) *
                   std::pow(mult, std::max(0, attempt - 1));
  // Spread first, then cap: max_backoff is a bound on the delay itself.
  seconds *= 1.0 + jitter * (2.0 * unit_random - 1.0);
  seconds = std::min(seconds, absl::ToDoubleSeconds(cap));
  return absl::Seconds(std::max(0.0, seconds));
}

}  // namespace forge::graph
