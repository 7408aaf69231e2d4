// Properties of the pure lifecycle rules (server/graph/rules.h): trigger
// decisions for every count combination, the graph outcome's precedence, the
// retry decision and the backoff formula.

#include "server/graph/rules.h"

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "common/proto_time.h"
#include "gtest/gtest.h"

namespace forge::graph {
namespace {

using forge::v1::TaskError;
using forge::v1::TaskSpec;
using forge::v1::Trigger;

// Every (pending, unsuccessful, failed) combination a task with up to
// kMaxDeps dependencies can see: failed <= unsuccessful <= deps - pending.
constexpr int32_t kMaxDeps = 4;

template <typename F>
void ForEachCounts(F f) {
  for (int32_t deps = 1; deps <= kMaxDeps; ++deps) {
    for (int32_t pending = 0; pending <= deps; ++pending) {
      for (int32_t unsuccessful = 0; unsuccessful <= deps - pending;
           ++unsuccessful) {
        for (int32_t failed = 0; failed <= unsuccessful; ++failed) {
          f(pending, unsuccessful, failed);
        }
      }
    }
  }
}

std::string Counts(int32_t pending, int32_t unsuccessful, int32_t failed) {
  return "pending=" + std::to_string(pending) +
         " unsuccessful=" + std::to_string(unsuccessful) +
         " failed=" + std::to_string(failed);
}

TEST(RulesTest, AllSuccessSkipsAsSoonAsOneDependencyIsUnsuccessful) {
  // While other dependencies are still pending, too.
  EXPECT_EQ(Decide(forge::v1::ALL_SUCCESS, 3, 1, 0), Decision::kSkip);
  EXPECT_EQ(Decide(forge::v1::ALL_SUCCESS, 3, 1, 1), Decision::kSkip);
  EXPECT_EQ(Decide(forge::v1::ALL_SUCCESS, 0, 2, 1), Decision::kSkip);
  EXPECT_EQ(Decide(forge::v1::ALL_SUCCESS, 2, 0, 0), Decision::kWait);
  EXPECT_EQ(Decide(forge::v1::ALL_SUCCESS, 0, 0, 0), Decision::kReady);
  ForEachCounts([](int32_t pending, int32_t unsuccessful, int32_t failed) {
    const Decision want = unsuccessful > 0 ? Decision::kSkip
                          : pending > 0    ? Decision::kWait
                                           : Decision::kReady;
    EXPECT_EQ(Decide(forge::v1::ALL_SUCCESS, pending, unsuccessful, failed),
              want)
        << Counts(pending, unsuccessful, failed);
  });
}

TEST(RulesTest, AllDoneWaitsForAllDependenciesWhateverTheirOutcome) {
  EXPECT_EQ(Decide(forge::v1::ALL_DONE, 1, 2, 2), Decision::kWait);
  EXPECT_EQ(Decide(forge::v1::ALL_DONE, 0, 3, 3), Decision::kReady);
  EXPECT_EQ(Decide(forge::v1::ALL_DONE, 0, 0, 0), Decision::kReady);
  ForEachCounts([](int32_t pending, int32_t unsuccessful, int32_t failed) {
    EXPECT_EQ(Decide(forge::v1::ALL_DONE, pending, unsuccessful, failed),
              pending > 0 ? Decision::kWait : Decision::kReady)
        << Counts(pending, unsuccessful, failed);
  });
}

TEST(RulesTest, OneFailedIsReadyOnlyWhenAllAreTerminalAndOneFailed) {
  EXPECT_EQ(Decide(forge::v1::ONE_FAILED, 1, 1, 1), Decision::kWait);
  EXPECT_EQ(Decide(forge::v1::ONE_FAILED, 0, 1, 1), Decision::kReady);
  // Unsuccessful but none FAILED (cancelled, skipped), or all succeeded.
  EXPECT_EQ(Decide(forge::v1::ONE_FAILED, 0, 2, 0), Decision::kSkip);
  EXPECT_EQ(Decide(forge::v1::ONE_FAILED, 0, 0, 0), Decision::kSkip);
  ForEachCounts([](int32_t pending, int32_t unsuccessful, int32_t failed) {
    const Decision want = pending > 0  ? Decision::kWait
                          : failed > 0 ? Decision::kReady
                                       : Decision::kSkip;
    EXPECT_EQ(Decide(forge::v1::ONE_FAILED, pending, unsuccessful, failed),
              want)
        << Counts(pending, unsuccessful, failed);
  });
}

TEST(RulesTest, UnspecifiedTriggerBehavesAsAllSuccess) {
  ForEachCounts([](int32_t pending, int32_t unsuccessful, int32_t failed) {
    EXPECT_EQ(
        Decide(forge::v1::TRIGGER_UNSPECIFIED, pending, unsuccessful, failed),
        Decide(forge::v1::ALL_SUCCESS, pending, unsuccessful, failed))
        << Counts(pending, unsuccessful, failed);
  });
  EXPECT_EQ(Decide(forge::v1::TRIGGER_UNSPECIFIED, 2, 1, 0), Decision::kSkip);
}

TEST(RulesTest, OutcomePrecedenceIsCancelRequestedThenFailedThenCancelled) {
  EXPECT_EQ(Outcome(true, 1, 1), forge::v1::GRAPH_STATE_CANCELLED);
  EXPECT_EQ(Outcome(true, 1, 0), forge::v1::GRAPH_STATE_CANCELLED);
  EXPECT_EQ(Outcome(true, 0, 0), forge::v1::GRAPH_STATE_CANCELLED);
  EXPECT_EQ(Outcome(false, 1, 1), forge::v1::GRAPH_STATE_FAILED);
  EXPECT_EQ(Outcome(false, 2, 0), forge::v1::GRAPH_STATE_FAILED);
  EXPECT_EQ(Outcome(false, 0, 1), forge::v1::GRAPH_STATE_CANCELLED);
  EXPECT_EQ(Outcome(false, 0, 0), forge::v1::GRAPH_STATE_SUCCEEDED);
}

TaskError Error(const std::string& code, bool non_retryable = false) {
  TaskError e;
  e.set_code(code);
  e.set_non_retryable(non_retryable);
  return e;
}

TEST(RulesTest, NonRetryableFlagFailsAtOnce) {
  TaskSpec spec;
  spec.mutable_retry()->set_max_attempts(10);
  EXPECT_FALSE(ShouldRetry(spec, PolicyDefaults(), 1, Error("X", true)));
  EXPECT_TRUE(ShouldRetry(spec, PolicyDefaults(), 1, Error("X", false)));
}

TEST(RulesTest, ExhaustedAttemptsAreNotRetried) {
  TaskSpec spec;
  spec.mutable_retry()->set_max_attempts(4);
  EXPECT_TRUE(ShouldRetry(spec, PolicyDefaults(), 3, Error("X")));
  EXPECT_FALSE(ShouldRetry(spec, PolicyDefaults(), 4, Error("X")));
  EXPECT_FALSE(ShouldRetry(spec, PolicyDefaults(), 5, Error("X")));
  spec.mutable_retry()->set_max_attempts(1);  // 1 disables retries
  EXPECT_FALSE(ShouldRetry(spec, PolicyDefaults(), 1, Error("X")));
}

TEST(RulesTest, ErrorCodeListedAsNonRetryableIsNotRetried) {
  TaskSpec spec;
  spec.mutable_retry()->add_non_retryable_errors("BAD_INPUT");
  spec.mutable_retry()->add_non_retryable_errors("OOM");
  EXPECT_FALSE(ShouldRetry(spec, PolicyDefaults(), 1, Error("OOM")));
  EXPECT_FALSE(ShouldRetry(spec, PolicyDefaults(), 1, Error("BAD_INPUT")));
  // Exact, case-sensitive match only.
  EXPECT_TRUE(ShouldRetry(spec, PolicyDefaults(), 1, Error("oom")));
  EXPECT_TRUE(ShouldRetry(spec, PolicyDefaults(), 1, Error("TIMEOUT")));
}

TEST(RulesTest, DefaultMaxAttemptsIsThree) {
  const TaskSpec spec;  // max_attempts 0 = default
  const PolicyDefaults d;
  EXPECT_EQ(d.max_attempts, 3);
  EXPECT_EQ(MaxAttempts(spec, d), 3);
  EXPECT_TRUE(ShouldRetry(spec, d, 1, Error("X")));
  EXPECT_TRUE(ShouldRetry(spec, d, 2, Error("X")));
  EXPECT_FALSE(ShouldRetry(spec, d, 3, Error("X")));
  PolicyDefaults five;
  five.max_attempts = 5;
  EXPECT_EQ(MaxAttempts(spec, five), 5);
  EXPECT_TRUE(ShouldRetry(spec, five, 4, Error("X")));
}

// unit_random 0.5 means no spread: 1 + jitter * (2 * 0.5 - 1) == 1 exactly.
constexpr double kNoSpread = 0.5;

TEST(RulesTest, BackoffIsInitialTimesMultiplierToTheAttemptMinusOne) {
  const TaskSpec spec;
  const PolicyDefaults d;  // 1 s, x2, cap 60 s
  EXPECT_EQ(Backoff(spec, d, 1, kNoSpread), absl::Seconds(1));
  EXPECT_EQ(Backoff(spec, d, 2, kNoSpread), absl::Seconds(2));
  EXPECT_EQ(Backoff(spec, d, 3, kNoSpread), absl::Seconds(4));
  EXPECT_EQ(Backoff(spec, d, 4, kNoSpread), absl::Seconds(8));
  EXPECT_EQ(Backoff(spec, d, 6, kNoSpread), absl::Seconds(32));
}

TEST(RulesTest, BackoffIsCappedByMaxBackoff) {
  const TaskSpec spec;
  const PolicyDefaults d;                                        // cap 60 s
  EXPECT_EQ(Backoff(spec, d, 7, kNoSpread), absl::Seconds(60));  // 64 s
  EXPECT_EQ(Backoff(spec, d, 20, kNoSpread), absl::Seconds(60));
  EXPECT_EQ(Backoff(spec, d, 5000, kNoSpread), absl::Seconds(60));  // pow=inf
}

TEST(RulesTest, JitterSpreadsTheDelayWithinPlusMinusJitter) {
  const TaskSpec spec;
  const PolicyDefaults d;  // jitter 0.2
  // Not always representable exactly in binary: compare to the nanosecond.
  auto near = [](absl::Duration got, absl::Duration want) {
    return absl::AbsDuration(got - want) <= absl::Nanoseconds(1);
  };
  EXPECT_TRUE(near(Backoff(spec, d, 1, 0.0), absl::Milliseconds(800)));
  EXPECT_TRUE(near(Backoff(spec, d, 1, 1.0), absl::Milliseconds(1200)));
  EXPECT_EQ(Backoff(spec, d, 1, 0.5), absl::Seconds(1));
  EXPECT_TRUE(near(Backoff(spec, d, 3, 0.0), absl::Milliseconds(3200)));
  EXPECT_TRUE(near(Backoff(spec, d, 3, 1.0), absl::Milliseconds(4800)));
  for (int i = 0; i <= 100; ++i) {
    const absl::Duration b = Backoff(spec, d, 2, i / 100.0);
    EXPECT_GE(b, absl::Milliseconds(1600) - absl::Nanoseconds(1)) << i;
    EXPECT_LE(b, absl::Milliseconds(2400) + absl::Nanoseconds(1)) << i;
  }
}

// types.proto: RetryPolicy.max_backoff is the "Upper bound of the delay" --
// jitter included: a user who sets 60 s must never wait longer.
TEST(RulesTest, BackoffNeverExceedsMaxBackoffWhateverTheJitter) {
  TaskSpec spec;
  ToProto(absl::Seconds(10), spec.mutable_retry()->mutable_max_backoff());
  spec.mutable_retry()->set_jitter(0.5);
  const PolicyDefaults d;  // 1 s initial, x2, default cap 60 s, jitter 0.2
  for (int attempt : {4, 5, 8, 30}) {  // 8 s (uncapped), then capped at 10 s
    for (double r : {0.0, 0.25, 0.5, 0.75, 1.0}) {
      EXPECT_LE(Backoff(spec, d, attempt, r), absl::Seconds(10))
          << "attempt " << attempt << " unit_random " << r;
    }
  }
  for (double r : {0.0, 0.5, 1.0}) {
    EXPECT_LE(Backoff(TaskSpec(), d, 20, r), d.max_backoff)
        << "defaults, unit_random " << r;
  }
}

TEST(RulesTest, TaskRetryPolicyOverridesDefaults) {
  TaskSpec spec;
  forge::v1::RetryPolicy* p = spec.mutable_retry();
  ToProto(absl::Milliseconds(250), p->mutable_initial_backoff());
  p->set_backoff_multiplier(3.0);
  ToProto(absl::Seconds(5), p->mutable_max_backoff());
  p->set_jitter(0.5);
  const PolicyDefaults d;
  EXPECT_EQ(Backoff(spec, d, 1, kNoSpread), absl::Milliseconds(250));
  EXPECT_EQ(Backoff(spec, d, 2, kNoSpread), absl::Milliseconds(750));
  EXPECT_EQ(Backoff(spec, d, 3, kNoSpread), absl::Milliseconds(2250));
  EXPECT_EQ(Backoff(spec, d, 4, kNoSpread), absl::Seconds(5));  // 6.75 s
  EXPECT_EQ(Backoff(spec, d, 9, kNoSpread), absl::Seconds(5));
  EXPECT_EQ(Backoff(spec, d, 1, 0.0), absl::Milliseconds(125));
  EXPECT_EQ(Backoff(spec, d, 1, 1.0), absl::Milliseconds(375));
  // A multiplier below 1 (0 = unset) falls back to the default (2).
  p->set_backoff_multiplier(0.5);
  EXPECT_EQ(Backoff(spec, d, 2, kNoSpread), absl::Milliseconds(500));
  // And defaults themselves are what an empty policy gets.
  PolicyDefaults custom;
  custom.initial_backoff = absl::Milliseconds(100);
  custom.backoff_multiplier = 10;
  custom.max_backoff = absl::Seconds(3);
  custom.jitter = 0;
  const TaskSpec empty;
  EXPECT_EQ(Backoff(empty, custom, 1, 0.0), absl::Milliseconds(100));
  EXPECT_EQ(Backoff(empty, custom, 2, 1.0), absl::Seconds(1));
  EXPECT_EQ(Backoff(empty, custom, 3, 0.0), absl::Seconds(3));
}

}  // namespace
}  // namespace forge::graph
