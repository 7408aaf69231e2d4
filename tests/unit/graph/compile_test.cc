// Properties of graph::Compile: every validation error (code and exact
// message), the compiled form of small graphs, linear behaviour on
// 1,000,000-task chains and rings, and randomized graphs checked against a
// naive reference.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/graph/compiled_graph.h"

namespace forge::graph {
namespace {

using forge::v1::GraphSpec;
using forge::v1::TaskSpec;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kCyclePrefix[] = "INVALID_ARGUMENT: tasks: cycle ";

struct TaskDef {
  std::string name;
  std::vector<std::string> deps;
};

GraphSpec Spec(const std::vector<TaskDef>& tasks) {
  GraphSpec spec;
  for (const TaskDef& t : tasks) {
    TaskSpec* task = spec.add_tasks();
    task->set_name(t.name);
    for (const std::string& d : t.deps) task->add_depends_on(d);
  }
  return spec;
}

// "OK" or the status as "CODE: message": one string to compare carries both
// the code and the message, and prints both on failure.
std::string Error(const GraphSpec& spec, const Limits& limits = Limits()) {
  absl::StatusOr<CompiledGraph> g = Compile(spec, limits);
  return g.ok() ? "OK" : g.status().ToString();
}

// A spec with one valid task "a", to spoil one field of.
GraphSpec OneTask() { return Spec({{"a", {}}}); }

// ---------------------------------------------------------------------------
// Graph-level limits

// The compiled lists as vectors (for matchers).
std::vector<std::vector<int32_t>> Lists(const IndexLists& lists) {
  std::vector<std::vector<int32_t>> out;
  for (size_t i = 0; i < lists.size(); ++i) {
    absl::Span<const int32_t> l = lists[static_cast<int32_t>(i)];
    out.emplace_back(l.begin(), l.end());
  }
  return out;
}

TEST(CompileTest, EmptyGraphIsRefused) {
  EXPECT_EQ(Error(GraphSpec()),
            "INVALID_ARGUMENT: tasks: a graph needs at least one task");
}

TEST(CompileTest, TooManyTasksIsRefused) {
  Limits limits;
  limits.max_tasks = 2;
  EXPECT_EQ(Error(Spec({{"a", {}}, {"b", {}}}), limits), "OK");
  EXPECT_EQ(Error(Spec({{"a", {}}, {"b", {}}, {"c", {}}}), limits),
            "INVALID_ARGUMENT: tasks: 3 tasks exceeds the limit of 2");
}

TEST(CompileTest, OverlongGraphNameIsRefused) {
  GraphSpec spec = OneTask();
  spec.set_name(std::string(256, 'g'));
  EXPECT_EQ(Error(spec), "OK");
  spec.set_name(std::string(257, 'g'));
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: name: 257 bytes exceeds the limit of 256");
}

TEST(CompileTest, TooManyGraphLabelsIsRefused) {
  GraphSpec spec = OneTask();
  for (int i = 0; i < 64; ++i) (*spec.mutable_labels())[absl::StrCat(i)] = "";
  EXPECT_EQ(Error(spec), "OK");
  (*spec.mutable_labels())["64"] = "";
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: labels: 65 labels exceeds the limit of 64");
}

TEST(CompileTest, OversizedGraphLabelKeyIsRefused) {
  GraphSpec spec = OneTask();
  (*spec.mutable_labels())[std::string(63, 'k')] = "v";
  EXPECT_EQ(Error(spec), "OK");
  (*spec.mutable_labels())[std::string(64, 'k')] = "v";
  EXPECT_EQ(Error(spec),
            absl::StrCat("INVALID_ARGUMENT: labels[\"", std::string(64, 'k'),
                         "\"]: key of 64 bytes exceeds the limit "
                         "of 63"));
}

TEST(CompileTest, OversizedGraphLabelValueIsRefused) {
  GraphSpec spec = OneTask();
  (*spec.mutable_labels())["team"] = std::string(256, 'v');
  EXPECT_EQ(Error(spec), "OK");
  (*spec.mutable_labels())["team"] = std::string(257, 'v');
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: labels[\"team\"]: value of 257 bytes exceeds "
            "the limit of 256");
}

// Map order is unspecified; the message must not depend on it.
TEST(CompileTest, LabelErrorNamesTheSmallestOffendingKey) {
  GraphSpec spec = OneTask();
  for (const char* key : {"z", "m", "b", "q", "c"}) {
    (*spec.mutable_labels())[key] = std::string(300, 'v');
  }
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: labels[\"b\"]: value of 300 bytes exceeds the "
            "limit of 256");
}

TEST(CompileTest, OversizedTaskInputIsRefused) {
  GraphSpec spec = OneTask();
  spec.mutable_tasks(0)->set_input(std::string(1 << 20, 'x'));
  EXPECT_EQ(Error(spec), "OK");
  spec.mutable_tasks(0)->set_input(std::string(2 << 20, 'x'));
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].input: 2097152 bytes exceeds the "
            "limit of 1048576");
}

TEST(CompileTest, TotalInputOverTheLimitIsRefused) {
  Limits limits;
  limits.max_total_input_bytes = 100;
  GraphSpec spec = Spec({{"a", {}}, {"b", {}}});
  spec.mutable_tasks(0)->set_input(std::string(50, 'x'));
  spec.mutable_tasks(1)->set_input(std::string(50, 'x'));
  EXPECT_EQ(Error(spec, limits), "OK");
  spec.mutable_tasks(1)->set_input(std::string(51, 'x'));
  EXPECT_EQ(Error(spec, limits),
            "INVALID_ARGUMENT: tasks: total input of 101 bytes exceeds the "
            "limit of 100");
}

// ---------------------------------------------------------------------------
// Task fields

TEST(CompileTest, EmptyTaskNameIsRefused) {
  EXPECT_EQ(Error(Spec({{"a", {}}, {"", {}}})),
            "INVALID_ARGUMENT: tasks[1].name: a task needs a name");
}

TEST(CompileTest, OverlongTaskNameIsRefused) {
  EXPECT_EQ(Error(Spec({{std::string(128, 'n'), {}}})), "OK");
  EXPECT_EQ(Error(Spec({{std::string(129, 'n'), {}}})),
            "INVALID_ARGUMENT: tasks[0].name: 129 bytes exceeds the limit of "
            "128");
}

TEST(CompileTest, TaskNameOutsideTheCharsetIsRefused) {
  EXPECT_EQ(Error(Spec({{"Az09_.:-", {}}})), "OK");
  EXPECT_EQ(Error(Spec({{"a b", {}}})),
            "INVALID_ARGUMENT: tasks[0].name: \"a b\" has a character outside "
            "[A-Za-z0-9_.:-]");
  EXPECT_EQ(Error(Spec({{"a/b", {}}})),
            "INVALID_ARGUMENT: tasks[0].name: \"a/b\" has a character outside "
            "[A-Za-z0-9_.:-]");
  EXPECT_EQ(Error(Spec({{"\xc3\xa9t\xc3\xa9", {}}})),
            "INVALID_ARGUMENT: tasks[0].name: \"\\xc3\\xa9t\\xc3\\xa9\" has a "
            "character outside [A-Za-z0-9_.:-]");
}

TEST(CompileTest, QueueNameIsCheckedLikeATaskName) {
  GraphSpec spec = OneTask();
  spec.mutable_tasks(0)->set_queue("");  // the default queue
  EXPECT_EQ(Error(spec), "OK");
  spec.mutable_tasks(0)->set_queue("gpu:a100");
  EXPECT_EQ(Error(spec), "OK");
  spec.mutable_tasks(0)->set_queue("gpu a100");
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].queue: \"gpu a100\" has a character "
            "outside [A-Za-z0-9_.:-]");
  spec.mutable_tasks(0)->set_queue(std::string(129, 'q'));
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].queue: 129 bytes exceeds the limit of "
            "128");
}

TEST(CompileTest, TooManyTaskLabelsIsRefused) {
  GraphSpec spec = Spec({{"a", {}}, {"b", {}}});
  auto& labels = *spec.mutable_tasks(1)->mutable_labels();
  for (int i = 0; i < 65; ++i) labels[absl::StrCat(i)] = "";
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[1].labels: 65 labels exceeds the limit of "
            "64");
}

TEST(CompileTest, OversizedTaskLabelIsRefused) {
  GraphSpec spec = OneTask();
  (*spec.mutable_tasks(0)->mutable_labels())[std::string(64, 'k')] = "";
  EXPECT_EQ(Error(spec), absl::StrCat("INVALID_ARGUMENT: tasks[0].labels[\"",
                                      std::string(64, 'k'),
                                      "\"]: key of 64 bytes exceeds the limit "
                                      "of 63"));
  spec = OneTask();
  (*spec.mutable_tasks(0)->mutable_labels())["k"] = std::string(257, 'v');
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].labels[\"k\"]: value of 257 bytes "
            "exceeds the limit of 256");
}

TEST(CompileTest, TooManyParamsIsRefused) {
  GraphSpec spec = OneTask();
  auto& params = *spec.mutable_tasks(0)->mutable_params();
  for (int i = 0; i < 256; ++i) params[absl::StrCat(i)] = "v";
  EXPECT_EQ(Error(spec), "OK");
  params["256"] = "v";
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].params: 257 params exceeds the limit "
            "of 256");
}

TEST(CompileTest, OversizedParamIsRefused) {
  GraphSpec spec = OneTask();
  auto& params = *spec.mutable_tasks(0)->mutable_params();
  params["key"] = std::string((64 << 10) - 3, 'v');  // key + value = limit
  EXPECT_EQ(Error(spec), "OK");
  params["key"] += "v";
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].params[\"key\"]: 65537 bytes exceeds "
            "the limit of 65536");
}

TEST(CompileTest, TooManyDependenciesIsRefused) {
  Limits limits;
  limits.max_dependencies = 2;
  EXPECT_EQ(Error(Spec({{"a", {}}, {"b", {}}, {"c", {"a", "b"}}}), limits),
            "OK");
  // Counted before deduplication: the bound is on what the client sent.
  EXPECT_EQ(Error(Spec({{"a", {}}, {"b", {}}, {"c", {"a", "b", "a"}}}), limits),
            "INVALID_ARGUMENT: tasks[2].depends_on: 3 dependencies exceeds the "
            "limit of 2");
}

TEST(CompileTest, PriorityBeyondTheLimitIsRefused) {
  GraphSpec spec = OneTask();
  for (int32_t ok : {-1000000, 0, 1000000}) {
    spec.mutable_tasks(0)->set_priority(ok);
    EXPECT_EQ(Error(spec), "OK") << ok;
  }
  spec.mutable_tasks(0)->set_priority(1000001);
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].priority: |1000001| exceeds the limit "
            "of 1000000");
  spec.mutable_tasks(0)->set_priority(std::numeric_limits<int32_t>::min());
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].priority: |-2147483648| exceeds the "
            "limit of 1000000");
}

TEST(CompileTest, UnknownTriggerIsRefused) {
  GraphSpec spec = OneTask();
  for (auto t : {forge::v1::TRIGGER_UNSPECIFIED, forge::v1::ALL_SUCCESS,
                 forge::v1::ALL_DONE, forge::v1::ONE_FAILED}) {
    spec.mutable_tasks(0)->set_trigger(t);
    EXPECT_EQ(Error(spec), "OK") << t;
  }
  spec.mutable_tasks(0)->set_trigger(static_cast<forge::v1::Trigger>(7));
  EXPECT_EQ(Error(spec), "INVALID_ARGUMENT: tasks[0].trigger: unknown value 7");
}

TEST(CompileTest, RetryMaxAttemptsOutsideZeroToHundredIsRefused) {
  GraphSpec spec = OneTask();
  auto* retry = spec.mutable_tasks(0)->mutable_retry();
  for (int ok : {0, 1, 100}) {
    retry->set_max_attempts(ok);
    EXPECT_EQ(Error(spec), "OK") << ok;
  }
  retry->set_max_attempts(-1);
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].retry.max_attempts: -1 is negative");
  retry->set_max_attempts(101);
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].retry.max_attempts: 101 attempts "
            "exceeds the limit of 100");
}

TEST(CompileTest, RetryBackoffMultiplierMustBeZeroOrAtLeastOne) {
  GraphSpec spec = OneTask();
  auto* retry = spec.mutable_tasks(0)->mutable_retry();
  for (double ok : {0.0, 1.0, 2.5}) {
    retry->set_backoff_multiplier(ok);
    EXPECT_EQ(Error(spec), "OK") << ok;
  }
  retry->set_backoff_multiplier(0.5);
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].retry.backoff_multiplier: 0.5 must be "
            "0 (the default) or a finite number >= 1");
  retry->set_backoff_multiplier(-2);
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].retry.backoff_multiplier: -2 must be "
            "0 (the default) or a finite number >= 1");
  retry->set_backoff_multiplier(std::numeric_limits<double>::quiet_NaN());
  EXPECT_THAT(Error(spec),
              StartsWith("INVALID_ARGUMENT: tasks[0].retry.backoff_multiplier: "
                         "nan must be"));
  retry->set_backoff_multiplier(std::numeric_limits<double>::infinity());
  EXPECT_THAT(Error(spec),
              StartsWith("INVALID_ARGUMENT: tasks[0].retry.backoff_multiplier: "
                         "inf must be"));
}

TEST(CompileTest, RetryJitterOutsideTheUnitIntervalIsRefused) {
  GraphSpec spec = OneTask();
  auto* retry = spec.mutable_tasks(0)->mutable_retry();
  for (double ok : {0.0, 0.2, 1.0}) {
    retry->set_jitter(ok);
    EXPECT_EQ(Error(spec), "OK") << ok;
  }
  retry->set_jitter(1.5);
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].retry.jitter: 1.5 is outside [0, 1]");
  retry->set_jitter(-0.1);
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].retry.jitter: -0.1 is outside [0, 1]");
  retry->set_jitter(std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].retry.jitter: nan is outside [0, 1]");
}

TEST(CompileTest, NegativeRetryBackoffIsRefused) {
  GraphSpec spec = OneTask();
  auto* retry = spec.mutable_tasks(0)->mutable_retry();
  retry->mutable_initial_backoff()->set_seconds(1);
  retry->mutable_max_backoff()->set_seconds(60);
  EXPECT_EQ(Error(spec), "OK");
  retry->mutable_initial_backoff()->set_seconds(-1);
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].retry.initial_backoff: negative "
            "duration (seconds=-1, nanos=0)");
  retry->mutable_initial_backoff()->set_seconds(0);
  retry->mutable_max_backoff()->set_seconds(0);
  retry->mutable_max_backoff()->set_nanos(-5);
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].retry.max_backoff: negative duration "
            "(seconds=0, nanos=-5)");
}

TEST(CompileTest, NegativeTimeoutIsRefused) {
  GraphSpec spec = OneTask();
  auto* timeouts = spec.mutable_tasks(0)->mutable_timeouts();
  timeouts->mutable_run()->set_seconds(600);
  timeouts->mutable_schedule_to_start()->set_nanos(1);
  timeouts->mutable_heartbeat()->set_seconds(30);
  EXPECT_EQ(Error(spec), "OK");
  timeouts->mutable_run()->set_seconds(-600);
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].timeouts.run: negative duration "
            "(seconds=-600, nanos=0)");
  timeouts->mutable_run()->set_seconds(600);
  timeouts->mutable_schedule_to_start()->set_seconds(-1);
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].timeouts.schedule_to_start: negative "
            "duration (seconds=-1, nanos=1)");
  timeouts->mutable_schedule_to_start()->set_seconds(0);
  timeouts->mutable_heartbeat()->set_seconds(-30);
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].timeouts.heartbeat: negative duration "
            "(seconds=-30, nanos=0)");
}

TEST(CompileTest, OutOfRangeDurationNanosIsRefused) {
  GraphSpec spec = OneTask();
  spec.mutable_tasks(0)->mutable_timeouts()->mutable_run()->set_nanos(
      1000000000);
  EXPECT_EQ(Error(spec),
            "INVALID_ARGUMENT: tasks[0].timeouts.run: nanos 1000000000 is "
            "outside [0, 999999999]");
}

// ---------------------------------------------------------------------------
// References

TEST(CompileTest, DuplicateTaskNameNamesBothIndices) {
  EXPECT_EQ(Error(Spec({{"b", {}}, {"a", {}}, {"b", {}}})),
            "INVALID_ARGUMENT: tasks[2].name: duplicate task name \"b\" (first "
            "at tasks[0])");
}

TEST(CompileTest, UnknownDependencyIsRefused) {
  EXPECT_EQ(Error(Spec({{"a", {}}, {"b", {}}, {"c", {}}, {"d", {"a", "x"}}})),
            "INVALID_ARGUMENT: tasks[3].depends_on[1]: unknown task \"x\"");
}

// Dependency names are client text that never went through the name check.
TEST(CompileTest, HostileNamesAreEscapedAndCutInMessages) {
  std::string hostile = "x\n\"" + std::string(1000, 'y');
  EXPECT_EQ(Error(Spec({{"a", {hostile}}})),
            absl::StrCat("INVALID_ARGUMENT: tasks[0].depends_on[0]: unknown "
                         "task \"x\\n\\\"",
                         std::string(61, 'y'), "...\""));
}

TEST(CompileTest, SelfDependencyIsRefused) {
  EXPECT_EQ(Error(Spec({{"a", {}}, {"b", {"a", "b"}}})),
            "INVALID_ARGUMENT: tasks[1].depends_on[1]: task \"b\" depends on "
            "itself");
}

TEST(CompileTest, RepeatedDependencyIsDedupedInFirstOccurrenceOrder) {
  absl::StatusOr<CompiledGraph> g = Compile(
      Spec({{"a", {}}, {"b", {}}, {"c", {"b", "a", "b", "a", "b"}}}), Limits());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_THAT(g->deps[2], ElementsAre(1, 0));
  EXPECT_THAT(g->dependents[0], ElementsAre(2));
  EXPECT_THAT(g->dependents[1], ElementsAre(2));
}

// ---------------------------------------------------------------------------
// Compiled form and cycles

TEST(CompileTest, DiamondCompiles) {
  // d waits for b and c, which both wait for a. Spec order is not topological.
  absl::StatusOr<CompiledGraph> g =
      Compile(Spec({{"d", {"b", "c"}}, {"b", {"a"}}, {"a", {}}, {"c", {"a"}}}),
              Limits());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_THAT(Lists(g->deps), ElementsAre(ElementsAre(1, 3), ElementsAre(2),
                                          ElementsAre(), ElementsAre(2)));
  EXPECT_THAT(Lists(g->dependents), ElementsAre(ElementsAre(), ElementsAre(0),
                                                ElementsAre(1, 3), ElementsAre(0)));
  EXPECT_THAT(g->roots, ElementsAre(2));
  EXPECT_THAT(g->topo_order, ElementsAre(2, 1, 3, 0));
}

TEST(CompileTest, IndependentTasksAreAllRootsInSpecOrder) {
  absl::StatusOr<CompiledGraph> g =
      Compile(Spec({{"z", {}}, {"y", {"z"}}, {"x", {}}, {"w", {}}}), Limits());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_THAT(g->roots, ElementsAre(0, 2, 3));
  EXPECT_THAT(g->topo_order, ElementsAre(0, 2, 3, 1));
}

TEST(CompileTest, CycleIsReportedWithItsPath) {
  // a depends on b, b on c, c on a; the path starts at the lowest index.
  EXPECT_EQ(Error(Spec({{"a", {"b"}}, {"b", {"c"}}, {"c", {"a"}}})),
            "INVALID_ARGUMENT: tasks: cycle a -> b -> c -> a");
  EXPECT_EQ(Error(Spec({{"c", {"a"}}, {"b", {"c"}}, {"a", {"b"}}})),
            "INVALID_ARGUMENT: tasks: cycle c -> a -> b -> c");
  EXPECT_EQ(Error(Spec({{"a", {"b"}}, {"b", {"a"}}})),
            "INVALID_ARGUMENT: tasks: cycle a -> b -> a");
}

TEST(CompileTest, CycleReportOmitsTasksLeadingIntoIt) {
  // x and y wait on the cycle and on a root; only the cycle is reported.
  EXPECT_EQ(Error(Spec({{"x", {"r", "y"}},
                        {"r", {}},
                        {"y", {"c"}},
                        {"a", {"r", "c"}},
                        {"b", {"a"}},
                        {"c", {"b"}}})),
            "INVALID_ARGUMENT: tasks: cycle a -> c -> b -> a");
}

// ---------------------------------------------------------------------------
// A million tasks

// Wall and CPU seconds since construction: on a shared 2-core machine the
// wall time measures the neighbours too, so both are printed.
class Stopwatch {
 public:
  std::string Report() const {
    return absl::StrFormat(
        "%.3f s wall, %.3f s CPU",
        std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_)
            .count(),
        static_cast<double>(std::clock() - cpu_) / CLOCKS_PER_SEC);
  }
  double WallSeconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                         wall_)
        .count();
  }

 private:
  std::chrono::steady_clock::time_point wall_ =
      std::chrono::steady_clock::now();
  std::clock_t cpu_ = std::clock();
};

// The bound only catches a quadratic regression (which would take hours);
// it is loose so a busy 2-core machine does not make it flaky. The measured
// time is printed.
constexpr double kMillionTaskBoundSeconds = 30;

// Building a 1,000,000-task spec costs more than compiling it (a TaskSpec is
// a few hundred bytes of fresh memory), so the suite builds the chain
// t0 <- t1 <- ... <- t999999 once and its tests share it.
class MillionTaskTest : public ::testing::Test {
 protected:
  static constexpr int kN = 1000000;

  static void SetUpTestSuite() {
    chain_ = new GraphSpec;
    chain_->mutable_tasks()->Reserve(kN);
    for (int i = 0; i < kN; ++i) {
      TaskSpec* t = chain_->add_tasks();
      t->set_name(absl::StrCat("t", i));
      if (i > 0) t->add_depends_on(absl::StrCat("t", i - 1));
    }
  }
  static void TearDownTestSuite() {
    delete chain_;
    chain_ = nullptr;
  }

  static GraphSpec* chain_;
};

GraphSpec* MillionTaskTest::chain_ = nullptr;

TEST_F(MillionTaskTest, ChainCompilesInLinearTime) {
  const Stopwatch watch;
  absl::StatusOr<CompiledGraph> g = Compile(*chain_, Limits());
  const double seconds = watch.WallSeconds();
  std::printf("Compile of a %d-task chain: %s\n", kN, watch.Report().c_str());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_LT(seconds, kMillionTaskBoundSeconds);
  EXPECT_THAT(g->roots, ElementsAre(0));
  ASSERT_EQ(g->topo_order.size(), static_cast<size_t>(kN));
  for (int i = 0; i < kN; ++i) ASSERT_EQ(g->topo_order[i], i);
  EXPECT_THAT(g->deps[kN - 1], ElementsAre(kN - 2));
  EXPECT_THAT(g->dependents[0], ElementsAre(1));
  EXPECT_TRUE(g->dependents[kN - 1].empty());
}

TEST_F(MillionTaskTest, RingIsRefusedWithABoundedCycleMessage) {
  // t0 -> t999999 closes the chain into a ring; undone for the other tests.
  chain_->mutable_tasks(0)->add_depends_on(absl::StrCat("t", kN - 1));
  absl::Cleanup restore = [] {
    chain_->mutable_tasks(0)->mutable_depends_on()->RemoveLast();
  };
  const Stopwatch watch;
  const std::string error = Error(*chain_);
  const double seconds = watch.WallSeconds();
  std::printf("Compile of a %d-task ring: %s\n", kN, watch.Report().c_str());
  EXPECT_LT(seconds, kMillionTaskBoundSeconds);
  EXPECT_THAT(error, StartsWith(absl::StrCat(
                         kCyclePrefix, "t0 -> t999999 -> t999998 -> t999997")));
  EXPECT_THAT(error, HasSubstr(" -> ... -> t1 -> t0 (a cycle of 1000000 "
                               "tasks, "));
  EXPECT_LT(error.size(), 2048u);
}

// ---------------------------------------------------------------------------
// Randomized graphs against a naive reference

// Reference: repeatedly place every task whose dependencies are all placed.
// Quadratic and obviously right; true iff every task gets placed.
bool ReferenceIsAcyclic(const std::vector<std::vector<int32_t>>& deps) {
  const size_t n = deps.size();
  std::vector<bool> placed(n, false);
  size_t count = 0;
  for (bool progress = true; progress;) {
    progress = false;
    for (size_t i = 0; i < n; ++i) {
      if (placed[i]) continue;
      bool ready = true;
      for (int32_t d : deps[i]) ready = ready && placed[d];
      if (ready) {
        placed[i] = true;
        ++count;
        progress = true;
      }
    }
  }
  return count == n;
}

// Spec-level dependency indices (duplicates kept), by name.
std::vector<std::vector<int32_t>> SpecDeps(const GraphSpec& spec) {
  absl::flat_hash_map<std::string, int32_t> index;
  for (int i = 0; i < spec.tasks_size(); ++i) index[spec.tasks(i).name()] = i;
  std::vector<std::vector<int32_t>> deps(spec.tasks_size());
  for (int i = 0; i < spec.tasks_size(); ++i) {
    for (const std::string& d : spec.tasks(i).depends_on()) {
      deps[i].push_back(index.at(d));
    }
  }
  return deps;
}

// A random DAG: tasks get a hidden rank, each depends only on lower ranks,
// with repeated entries now and then; the spec lists them in random order.
GraphSpec RandomDag(std::mt19937& rng) {
  const int n = std::uniform_int_distribution<int>(1, 300)(rng);
  std::vector<int> spec_index(n);  // rank -> position in the spec
  for (int i = 0; i < n; ++i) spec_index[i] = i;
  std::shuffle(spec_index.begin(), spec_index.end(), rng);
  const double density = std::uniform_real_distribution<double>(0, 4)(rng);
  std::vector<TaskDef> tasks(n);
  for (int rank = 0; rank < n; ++rank) {
    TaskDef& t = tasks[spec_index[rank]];
    t.name = absl::StrCat("t", spec_index[rank]);
    if (rank == 0) continue;
    const int k = std::poisson_distribution<int>(density)(rng);
    for (int e = 0; e < k; ++e) {
      const int dep = std::uniform_int_distribution<int>(0, rank - 1)(rng);
      t.deps.push_back(absl::StrCat("t", spec_index[dep]));
      if (rng() % 8 == 0) t.deps.push_back(t.deps.back());
    }
  }
  return Spec(tasks);
}

// Checks the error is a cycle message whose path is a real, simple cycle of
// `spec`: consecutive "X -> Y" means X depends on Y.
void ExpectRealCycle(const GraphSpec& spec, const std::string& error) {
  ASSERT_THAT(error, StartsWith(kCyclePrefix));
  std::vector<std::string> names = absl::StrSplit(
      absl::string_view(error).substr(sizeof(kCyclePrefix) - 1), " -> ");
  ASSERT_GE(names.size(), 3u) << error;  // no self-loops past validation
  EXPECT_EQ(names.front(), names.back()) << error;
  absl::flat_hash_map<std::string, int32_t> index;
  for (int i = 0; i < spec.tasks_size(); ++i) index[spec.tasks(i).name()] = i;
  std::vector<bool> on_path(spec.tasks_size(), false);
  for (size_t i = 0; i + 1 < names.size(); ++i) {
    ASSERT_TRUE(index.contains(names[i])) << names[i];
    const TaskSpec& from = spec.tasks(index[names[i]]);
    EXPECT_THAT(from.depends_on(), ::testing::Contains(names[i + 1]))
        << names[i] << " -> " << names[i + 1] << " is not an edge: " << error;
    EXPECT_FALSE(on_path[index[names[i]]]) << "not simple: " << error;
    on_path[index[names[i]]] = true;
  }
}

TEST(CompileTest, RandomDagsCompileToAValidTopologicalOrder) {
  for (uint32_t seed = 1; seed <= 300; ++seed) {
    SCOPED_TRACE(absl::StrCat("seed ", seed));
    std::mt19937 rng(seed);
    const GraphSpec spec = RandomDag(rng);
    const int n = spec.tasks_size();
    const std::vector<std::vector<int32_t>> spec_deps = SpecDeps(spec);
    ASSERT_TRUE(ReferenceIsAcyclic(spec_deps));
    absl::StatusOr<CompiledGraph> g = Compile(spec, Limits());
    ASSERT_TRUE(g.ok()) << g.status();
    ASSERT_EQ(g->deps.size(), static_cast<size_t>(n));
    ASSERT_EQ(g->dependents.size(), static_cast<size_t>(n));

    // deps: spec order with later repeats dropped.
    for (int i = 0; i < n; ++i) {
      std::vector<int32_t> want;
      for (int32_t d : spec_deps[i]) {
        if (std::find(want.begin(), want.end(), d) == want.end()) {
          want.push_back(d);
        }
      }
      ASSERT_EQ(std::vector<int32_t>(g->deps[i].begin(), g->deps[i].end()), want)
          << "task " << i;
    }
    // dependents: exactly the reverse edges, each once.
    std::vector<std::vector<int32_t>> want_dependents(n);
    for (int i = 0; i < n; ++i) {
      for (int32_t d : g->deps[i]) want_dependents[d].push_back(i);
    }
    for (int j = 0; j < n; ++j) {
      std::vector<int32_t> got(g->dependents[j].begin(), g->dependents[j].end());
      ASSERT_TRUE(std::is_sorted(got.begin(), got.end())) << "task " << j;
      ASSERT_EQ(got, want_dependents[j]) << "task " << j;
    }
    // roots: tasks with no dependency, in spec order.
    std::vector<int32_t> want_roots;
    for (int i = 0; i < n; ++i) {
      if (spec_deps[i].empty()) want_roots.push_back(i);
    }
    EXPECT_EQ(g->roots, want_roots);
    // topo_order: every task once, each after all of its dependencies.
    ASSERT_EQ(g->topo_order.size(), static_cast<size_t>(n));
    std::vector<int> position(n, -1);
    for (int p = 0; p < n; ++p) {
      const int32_t t = g->topo_order[p];
      ASSERT_TRUE(t >= 0 && t < n);
      ASSERT_EQ(position[t], -1) << "task " << t << " twice";
      position[t] = p;
    }
    for (int i = 0; i < n; ++i) {
      for (int32_t d : spec_deps[i]) {
        ASSERT_LT(position[d], position[i]) << d << " before " << i;
      }
    }
  }
}

TEST(CompileTest, RandomDagsWithABackEdgeAreRefusedWithARealCycle) {
  int refused = 0;
  for (uint32_t seed = 1; seed <= 300; ++seed) {
    SCOPED_TRACE(absl::StrCat("seed ", seed));
    std::mt19937 rng(seed);
    GraphSpec spec = RandomDag(rng);
    std::vector<std::vector<int32_t>> deps = SpecDeps(spec);
    // Walk down a random dependency chain from a task that has one, then make
    // the chain's end depend on its start: a back edge, hence a cycle.
    std::vector<int32_t> with_deps;
    for (int i = 0; i < spec.tasks_size(); ++i) {
      if (!deps[i].empty()) with_deps.push_back(i);
    }
    if (with_deps.empty()) continue;
    const int32_t top = with_deps[rng() % with_deps.size()];
    int32_t bottom = top;
    do {
      bottom = deps[bottom][rng() % deps[bottom].size()];
    } while (!deps[bottom].empty() && rng() % 3 != 0);
    spec.mutable_tasks(bottom)->add_depends_on(spec.tasks(top).name());
    deps[bottom].push_back(top);
    ASSERT_FALSE(ReferenceIsAcyclic(deps));
    ExpectRealCycle(spec, Error(spec));
    ++refused;
  }
  EXPECT_GT(refused, 250);  // the generator must mostly make edges
}

// Unstructured random digraphs: Compile agrees with the reference on whether
// there is a cycle, and any cycle it reports is real.
TEST(CompileTest, RandomDigraphsAgreeWithTheReference) {
  int cyclic = 0;
  for (uint32_t seed = 1; seed <= 300; ++seed) {
    SCOPED_TRACE(absl::StrCat("seed ", seed));
    std::mt19937 rng(seed);
    const int n = std::uniform_int_distribution<int>(2, 60)(rng);
    const double p = std::uniform_real_distribution<double>(0, 3.0 / n)(rng);
    std::vector<TaskDef> tasks(n);
    for (int i = 0; i < n; ++i) {
      tasks[i].name = absl::StrCat("n", i);
      for (int j = 0; j < n; ++j) {
        if (j != i && std::bernoulli_distribution(p)(rng)) {
          tasks[i].deps.push_back(absl::StrCat("n", j));
        }
      }
    }
    const GraphSpec spec = Spec(tasks);
    const std::string error = Error(spec);
    if (ReferenceIsAcyclic(SpecDeps(spec))) {
      EXPECT_EQ(error, "OK");
    } else {
      ++cyclic;
      ExpectRealCycle(spec, error);
    }
  }
  EXPECT_GT(cyclic, 30);
  EXPECT_LT(cyclic, 270);
}

}  // namespace
}  // namespace forge::graph
