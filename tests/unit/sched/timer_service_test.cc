// Properties of the one timer service: deadline order, cancellation, a real
// clock wake-up, shutdown. Fake-clock tests drive it with RunDueForTest().
#include "server/sched/timer_service.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace forge {
namespace {

using ::testing::ElementsAre;

constexpr absl::Duration kWait = absl::Seconds(10);  // only hit on failure

TEST(TimerServiceTest, TimersFireInDeadlineOrderWithFakeClock) {
  FakeClock clock;
  TimerService timers(&clock);  // a FakeClock: no thread, nothing spins
  std::vector<std::string> fired;
  const absl::Time t0 = clock.Now();
  timers.Schedule(t0 + absl::Seconds(3), [&] { fired.push_back("3s"); });
  timers.Schedule(t0 + absl::Seconds(1), [&] { fired.push_back("1s-a"); });
  timers.ScheduleAfter(absl::Seconds(2), [&] { fired.push_back("2s"); });
  timers.Schedule(t0 + absl::Seconds(1), [&] { fired.push_back("1s-b"); });
  EXPECT_EQ(timers.pending(), 4u);

  timers.RunDueForTest();
  EXPECT_TRUE(fired.empty());
  clock.Advance(absl::Seconds(1));
  timers.RunDueForTest();
  EXPECT_THAT(fired, ElementsAre("1s-a", "1s-b"));  // ties in schedule order
  clock.Advance(absl::Seconds(5));
  timers.RunDueForTest();
  EXPECT_THAT(fired, ElementsAre("1s-a", "1s-b", "2s", "3s"));
  EXPECT_EQ(timers.pending(), 0u);
}

TEST(TimerServiceTest, CallbacksMayScheduleTimersThatRunWhenDue) {
  FakeClock clock;
  TimerService timers(&clock);
  std::vector<int> fired;
  timers.ScheduleAfter(absl::Seconds(1), [&] {
    fired.push_back(1);
    timers.ScheduleAfter(absl::ZeroDuration(), [&] { fired.push_back(2); });
    timers.ScheduleAfter(absl::Seconds(1), [&] { fired.push_back(3); });
  });
  clock.Advance(absl::Seconds(1));
  timers.RunDueForTest();
  EXPECT_THAT(fired, ElementsAre(1, 2));
  clock.Advance(absl::Seconds(1));
  timers.RunDueForTest();
  EXPECT_THAT(fired, ElementsAre(1, 2, 3));
}

TEST(TimerServiceTest, CancelPreventsFiring) {
  FakeClock clock;
  TimerService timers(&clock);
  bool cancelled_ran = false, kept_ran = false;
  auto state = std::make_shared<int>(0);  // owned by the cancelled callback
  const TimerService::TimerId cancelled = timers.ScheduleAfter(
      absl::Seconds(1), [&, state] { cancelled_ran = true; });
  const TimerService::TimerId kept =
      timers.ScheduleAfter(absl::Seconds(1), [&] { kept_ran = true; });
  EXPECT_EQ(state.use_count(), 2);
  EXPECT_TRUE(timers.Cancel(cancelled));
  EXPECT_EQ(state.use_count(), 1);  // the callback is destroyed at once
  EXPECT_FALSE(timers.Cancel(cancelled));
  EXPECT_EQ(timers.pending(), 1u);

  clock.Advance(absl::Seconds(2));
  timers.RunDueForTest();
  EXPECT_FALSE(cancelled_ran);
  EXPECT_TRUE(kept_ran);
  EXPECT_FALSE(timers.Cancel(kept));   // already ran
  EXPECT_FALSE(timers.Cancel(12345));  // unknown
}

TEST(TimerServiceTest, ManyCancelledTimersDoNotDelayLiveOnes) {
  FakeClock clock;
  TimerService timers(&clock);
  std::vector<TimerService::TimerId> ids;
  for (int i = 0; i < 1000; ++i) {
    ids.push_back(timers.ScheduleAfter(absl::Seconds(1), [] {}));
  }
  int fired = 0;
  timers.ScheduleAfter(absl::Seconds(2), [&] { ++fired; });
  for (TimerService::TimerId id : ids) EXPECT_TRUE(timers.Cancel(id));
  EXPECT_EQ(timers.pending(), 1u);
  clock.Advance(absl::Seconds(2));
  timers.RunDueForTest();
  EXPECT_EQ(fired, 1);
}

TEST(TimerServiceTest, RealClockTimerFires) {
  TimerService timers(Clock::Real());
  absl::Notification fired;
  absl::Time ran_at;
  const absl::Time when = absl::Now() + absl::Milliseconds(20);
  timers.Schedule(when, [&] {
    ran_at = absl::Now();
    fired.Notify();
  });
  ASSERT_TRUE(fired.WaitForNotificationWithTimeout(kWait));
  EXPECT_GE(ran_at, when);
  EXPECT_EQ(timers.pending(), 0u);
}

TEST(TimerServiceTest, EarlierTimerScheduledLaterWakesTheThread) {
  TimerService timers(Clock::Real());
  absl::Notification late, early;
  timers.ScheduleAfter(absl::Hours(1), [&] { late.Notify(); });
  // The thread now sleeps for an hour; an earlier timer must wake it.
  timers.ScheduleAfter(absl::Milliseconds(5), [&] { early.Notify(); });
  ASSERT_TRUE(early.WaitForNotificationWithTimeout(kWait));
  EXPECT_FALSE(late.HasBeenNotified());
  EXPECT_EQ(timers.pending(), 1u);
}

TEST(TimerServiceTest, ShutdownDropsPendingTimers) {
  auto timers = std::make_unique<TimerService>(Clock::Real());
  absl::Notification first;
  timers->ScheduleAfter(absl::ZeroDuration(), [&] { first.Notify(); });
  ASSERT_TRUE(first.WaitForNotificationWithTimeout(kWait));

  bool ran = false;
  auto state = std::make_shared<int>(0);
  timers->ScheduleAfter(absl::Hours(1), [&ran, state] { ran = true; });
  EXPECT_EQ(timers->pending(), 1u);
  timers->Shutdown();
  EXPECT_EQ(timers->pending(), 0u);
  EXPECT_EQ(state.use_count(), 1);  // dropped, not run
  EXPECT_EQ(timers->ScheduleAfter(absl::ZeroDuration(), [&] { ran = true; }),
            TimerService::kInvalidTimer);
  timers->RunDueForTest();
  timers.reset();  // joins the (stopped) thread again: idempotent
  EXPECT_FALSE(ran);
}

}  // namespace
}  // namespace forge
