// TimerService: the server's one timer thread (retry backoff, run and
// schedule-to-start timeouts, lease expiry, retention).
//
// Schedule() registers a callback to run at or after a deadline of the
// service's Clock; the thread waits on absl::CondVar::WaitWithDeadline until
// the earliest deadline, and Schedule() signals it when the new timer is the
// earliest one, so it wakes exactly when needed and never polls. (A CondVar
// rather than Mutex::Await(Condition): the TSan build's absl::Mutex shim
// cannot see conditions evaluated inside Mutex::Unlock.)
//
// Callbacks run one at a time on the timer thread, in deadline order (ties in
// scheduling order), with no lock of the service held: a callback may call
// Schedule() and Cancel(). Callbacks must be short and must not block (they
// hand work to the engine); a slow callback delays every later timer.
//
// Fake clocks: the thread turns the gap `when - clock->Now()` into a wait on
// real time, which assumes a clock that moves with real time. A FakeClock
// does not, so with a FakeClock no thread is started (unless asked for
// explicitly) and timers fire only when a test calls RunDueForTest() after
// FakeClock::Advance(). Nothing spins.
//
// Cancellation is lazy: Cancel() forgets the callback at once and the heap
// entry is skipped when it surfaces (the heap is compacted when cancelled
// entries dominate it).
//
// Thread-safe. Lock order: TimerService::mu_ -> the clock's lock (leaf); no
// lock is held while a callback runs or is destroyed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace forge {

class TimerService {
 public:
  using TimerId = uint64_t;
  // Never returned by Schedule() for a timer that may run.
  static constexpr TimerId kInvalidTimer = 0;

  // Starts the timer thread, unless `clock` is a FakeClock (see above).
  explicit TimerService(Clock* clock);
  // Explicit choice: without a thread, timers run only in RunDueForTest().
  TimerService(Clock* clock, bool start_thread);
  // Shutdown().
  ~TimerService();

  TimerService(const TimerService&) = delete;
  TimerService& operator=(const TimerService&) = delete;

  // Runs `fn` once, on the timer thread, at or after `when` (clock time), with
  // no timer lock held. A `when` in the past runs as soon as possible. After
  // Shutdown() the callback is dropped and kInvalidTimer returned.
  TimerId Schedule(absl::Time when, absl::AnyInvocable<void()> fn)
      ABSL_LOCKS_EXCLUDED(mu_);
  TimerId ScheduleAfter(absl::Duration delay, absl::AnyInvocable<void()> fn)
      ABSL_LOCKS_EXCLUDED(mu_);

  // True if the timer had not started: it will never run, and its callback
  // is destroyed before Cancel() returns. False if it already started or ran,
  // was cancelled, or is unknown. Cancel() never waits for a running
  // callback (it is called from callbacks and under callers' locks, where
  // waiting could deadlock): a caller that must not act on a callback that
  // already started fences it itself (e.g. the callback checks the task's
  // attempt number under the store lock).
  bool Cancel(TimerId id) ABSL_LOCKS_EXCLUDED(mu_);

  // Stops the thread: pending timers are dropped (destroyed, never run), a
  // callback already running is waited for, later Schedule() calls are
  // no-ops. Idempotent. Must not be called from a callback (it would wait
  // for itself); the destructor calls it.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  // Runs, on the calling thread, every timer due at clock->Now(), in deadline
  // order, including timers those callbacks schedule if already due. For
  // tests with a FakeClock: call it after FakeClock::Advance().
  void RunDueForTest() ABSL_LOCKS_EXCLUDED(mu_);

  // Timers scheduled and neither started nor cancelled.
  size_t pending() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct HeapEntry {
    absl::Time when;
    TimerId id;
  };
  // std::push_heap comparator making heap_.front() the earliest (then the
  // oldest id).
  static bool Later(const HeapEntry& a, const HeapEntry& b) {
    return a.when != b.when ? a.when > b.when : a.id > b.id;
  }

  void Loop() ABSL_LOCKS_EXCLUDED(mu_);
  // Pops cancelled entries off the top of the heap.
  void SkipCancelledLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes the earliest timer if it is due at `now` and returns its callback.
  bool TakeDueLocked(absl::Time now, absl::AnyInvocable<void()>* fn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Rebuilds the heap without cancelled entries when they dominate it.
  void MaybeCompactLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Clock* const clock_;

  mutable absl::Mutex mu_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  TimerId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  // Min-heap of (when, id); entries whose id is not in callbacks_ were
  // cancelled.
  std::vector<HeapEntry> heap_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<TimerId, absl::AnyInvocable<void()>> callbacks_
      ABSL_GUARDED_BY(mu_);
  // Signalled (with mu_ held) for a new earliest timer and for Shutdown().
  absl::CondVar wake_;

  absl::Mutex join_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // serializes Shutdown()
  std::thread thread_ ABSL_GUARDED_BY(join_mu_);   // set by the constructor
};

}  // namespace forge
