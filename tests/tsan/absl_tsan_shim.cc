// ThreadSanitizer builds only. Debian's Abseil is not built with TSan, so
// TSan cannot see absl::Mutex and reports every access it guards as a race.
// This file, linked into each executable of a TSan build, interposes the
// exported Mutex and CondVar entry points: each one forwards to the real
// function in libabsl_synchronization.so (found with dlsym(RTLD_NEXT)) and
// tells TSan that the lock was acquired or released, which restores the
// happens-before edges. It changes no behaviour.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>

#include "absl/synchronization/mutex.h"

namespace {

template <typename Fn>
Fn Real(const char* mangled) {
  void* p = dlsym(RTLD_NEXT, mangled);
  if (p == nullptr) {
    std::fprintf(stderr, "absl_tsan_shim: %s not found\n", mangled);
    std::abort();
  }
  return reinterpret_cast<Fn>(p);
}

#define FORGE_REAL(type, mangled)                   \
  static const auto real = Real<type>(mangled)

// absl evaluates a waiter's Condition with the mutex held, inside the real
// Await/LockWhen (on the waiter's or on the unlocker's thread). The wrapper
// tells TSan that the evaluation happens under the lock.
struct Wrapped {
  const absl::Condition* cond;
  absl::Mutex* mu;
};

bool EvalWrapped(void* arg) {
  // The waiter built `arg` (and its Condition) on its own stack before absl
  // queued it; an unlocker on another thread evaluates it. absl's queueing
  // is invisible to TSan, so the hand-off of the struct is told too.
  __tsan_acquire(arg);
  const Wrapped* w = static_cast<const Wrapped*>(arg);
  __tsan_acquire(w->mu);
  const bool r = w->cond->Eval();
  __tsan_release(w->mu);
  return r;
}

// absl's own deadlock detector keeps its graph behind uninstrumented
// spinlocks; TSan builds rely on TSan and clang's lock analysis instead.
const bool kNoAbslDeadlockGraph = [] {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return true;
}();

}  // namespace

#define FORGE_WRAP(cond)                                  \
  Wrapped wrapped{&(cond), this};                          \
  const absl::Condition wrapped_cond(&EvalWrapped, &wrapped); \
  __tsan_release(&wrapped)

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  FORGE_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex4LockEv");
  real(this);
  __tsan_acquire(this);
}

void Mutex::ReaderLock() {
  FORGE_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex10ReaderLockEv");
  real(this);
  __tsan_acquire(this);
}

void Mutex::Unlock() {
  FORGE_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex6UnlockEv");
  __tsan_release(this);
  real(this);
}

void Mutex::ReaderUnlock() {
  FORGE_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex12ReaderUnlockEv");
  __tsan_release(this);
  real(this);
}

bool Mutex::TryLock() {
  FORGE_REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex7TryLockEv");
  const bool ok = real(this);
  if (ok) __tsan_acquire(this);
  return ok;
}

bool Mutex::ReaderTryLock() {
  FORGE_REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex13ReaderTryLockEv");
  const bool ok = real(this);
  if (ok) __tsan_acquire(this);
  return ok;
}

void Mutex::LockWhen(const Condition& cond) {
  FORGE_REAL(void (*)(Mutex*, const Condition&),
             "_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  FORGE_WRAP(cond);
  real(this, wrapped_cond);
  __tsan_acquire(this);
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  FORGE_REAL(void (*)(Mutex*, const Condition&),
             "_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE");
  FORGE_WRAP(cond);
  real(this, wrapped_cond);
  __tsan_acquire(this);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, absl::Duration t) {
  FORGE_REAL(bool (*)(Mutex*, const Condition&, absl::Duration),
             "_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_"
             "8DurationE");
  FORGE_WRAP(cond);
  const bool r = real(this, wrapped_cond, t);
  __tsan_acquire(this);
  return r;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, absl::Time d) {
  FORGE_REAL(bool (*)(Mutex*, const Condition&, absl::Time),
             "_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_"
             "4TimeE");
  FORGE_WRAP(cond);
  const bool r = real(this, wrapped_cond, d);
  __tsan_acquire(this);
  return r;
}

void Mutex::Await(const Condition& cond) {
  FORGE_REAL(void (*)(Mutex*, const Condition&),
             "_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
  FORGE_WRAP(cond);
  __tsan_release(this);
  real(this, wrapped_cond);
  __tsan_acquire(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration t) {
  FORGE_REAL(bool (*)(Mutex*, const Condition&, absl::Duration),
             "_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_"
             "8DurationE");
  FORGE_WRAP(cond);
  __tsan_release(this);
  const bool r = real(this, wrapped_cond, t);
  __tsan_acquire(this);
  return r;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time d) {
  FORGE_REAL(bool (*)(Mutex*, const Condition&, absl::Time),
             "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_"
             "4TimeE");
  FORGE_WRAP(cond);
  __tsan_release(this);
  const bool r = real(this, wrapped_cond, d);
  __tsan_acquire(this);
  return r;
}

void CondVar::Wait(Mutex* mu) {
  FORGE_REAL(void (*)(CondVar*, Mutex*),
             "_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE");
  __tsan_release(mu);
  real(this, mu);
  __tsan_acquire(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration t) {
  FORGE_REAL(bool (*)(CondVar*, Mutex*, absl::Duration),
             "_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_"
             "8DurationE");
  __tsan_release(mu);
  const bool r = real(this, mu, t);
  __tsan_acquire(mu);
  return r;
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time d) {
  FORGE_REAL(bool (*)(CondVar*, Mutex*, absl::Time),
             "_ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  __tsan_release(mu);
  const bool r = real(this, mu, d);
  __tsan_acquire(mu);
  return r;
}

ABSL_NAMESPACE_END
}  // namespace absl
