#include "server/sched/timer_service.h"

#include <algorithm>
#include <utility>

namespace forge {

TimerService::TimerService(Clock* clock)
    : TimerService(clock, dynamic_cast<FakeClock*>(clock) == nullptr) {}

TimerService::TimerService(Clock* clock, bool start_thread) : clock_(clock) {
  if (start_thread) thread_ = std::thread([this] { Loop(); });
}

TimerService::~TimerService() { Shutdown(); }

TimerService::TimerId TimerService::Schedule(absl::Time when,
                                             absl::AnyInvocable<void()> fn) {
  absl::MutexLock lock(&mu_);
  if (shutdown_) return kInvalidTimer;  // fn is destroyed after the unlock
  const TimerId id = next_id_++;
  callbacks_.emplace(id, std::move(fn));
  heap_.push_back(HeapEntry{when, id});
  std::push_heap(heap_.begin(), heap_.end(), &TimerService::Later);
  // The new earliest timer: the thread must re-arm its wait.
  if (heap_.front().id == id) wake_.Signal();
  return id;
}

TimerService::TimerId TimerService::ScheduleAfter(
    absl::Duration delay, absl::AnyInvocable<void()> fn) {
  return Schedule(clock_->Now() + delay, std::move(fn));
}

bool TimerService::Cancel(TimerId id) {
  absl::AnyInvocable<void()> fn;  // destroyed after the unlock
  absl::MutexLock lock(&mu_);
  auto it = callbacks_.find(id);
  if (it == callbacks_.end()) return false;
  fn = std::move(it->second);
  callbacks_.erase(it);
  MaybeCompactLocked();
  return true;
}

void TimerService::Shutdown() {
  absl::MutexLock join_lock(&join_mu_);
  absl::flat_hash_map<TimerId, absl::AnyInvocable<void()>> dropped;
  {
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
    dropped.swap(callbacks_);
    heap_.clear();
    wake_.SignalAll();
  }
  // From a callback (a misuse) the thread cannot join itself; it leaves its
  // loop once the callback returns and a later Shutdown() joins it.
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) {
    thread_.join();
  }
  // `dropped` destroys the pending callbacks here, with no timer lock held.
}

void TimerService::RunDueForTest() {
  while (true) {
    absl::AnyInvocable<void()> fn;
    {
      absl::MutexLock lock(&mu_);
      if (!TakeDueLocked(clock_->Now(), &fn)) return;
    }
    fn();
  }
}

size_t TimerService::pending() const {
  absl::MutexLock lock(&mu_);
  return callbacks_.size();
}

void TimerService::Loop() {
  mu_.Lock();
  while (!shutdown_) {
    absl::AnyInvocable<void()> fn;
    if (TakeDueLocked(clock_->Now(), &fn)) {
      mu_.Unlock();
      fn();
      fn = nullptr;  // destroy the callback's state with no lock held
      mu_.Lock();
      continue;
    }
    // Woken by Schedule() (a new earliest timer), Shutdown(), or the
    // deadline; any wake-up (spurious ones included) re-examines the heap.
    if (heap_.empty()) {
      wake_.Wait(&mu_);
    } else {
      // The clock's time is turned into real time: exact for the real clock.
      const absl::Time when = heap_.front().when;
      wake_.WaitWithDeadline(&mu_, absl::Now() + (when - clock_->Now()));
    }
  }
  mu_.Unlock();
}

void TimerService::SkipCancelledLocked() {
  while (!heap_.empty() && !callbacks_.contains(heap_.front().id)) {
    std::pop_heap(heap_.begin(), heap_.end(), &TimerService::Later);
    heap_.pop_back();
  }
}

bool TimerService::TakeDueLocked(absl::Time now,
                                 absl::AnyInvocable<void()>* fn) {
  SkipCancelledLocked();
  if (heap_.empty() || heap_.front().when > now) return false;
  const TimerId id = heap_.front().id;
  std::pop_heap(heap_.begin(), heap_.end(), &TimerService::Later);
  heap_.pop_back();
  auto it = callbacks_.find(id);
  *fn = std::move(it->second);
  callbacks_.erase(it);
  return true;
}

void TimerService::MaybeCompactLocked() {
  if (heap_.size() < 64 || heap_.size() <= 2 * callbacks_.size()) return;
  size_t kept = 0;
  for (const HeapEntry& e : heap_) {
    if (callbacks_.contains(e.id)) heap_[kept++] = e;
  }
  heap_.resize(kept);
  std::make_heap(heap_.begin(), heap_.end(), &TimerService::Later);
}

}  // namespace forge
