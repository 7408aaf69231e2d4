// Happens-before annotations for ThreadSanitizer builds (no-ops otherwise).
//
// gRPC hands a reactor's buffers between threads inside its uninstrumented
// core: the message given to StartRead/StartWrite is filled or sent on one
// thread and OnReadDone/OnWriteDone may run on another. TSan cannot see that
// ordering, so the reactors mark it: FORGE_TSAN_HANDOFF(&buf) just before
// StartRead/StartWrite(&buf), FORGE_TSAN_RECEIVE(&buf) first thing in the
// matching OnReadDone/OnWriteDone.
#pragma once

#if defined(__SANITIZE_THREAD__)
#define FORGE_TSAN_ENABLED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FORGE_TSAN_ENABLED 1
#endif
#endif

#ifdef FORGE_TSAN_ENABLED
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#define FORGE_TSAN_HANDOFF(addr) __tsan_release(static_cast<void*>(addr))
#define FORGE_TSAN_RECEIVE(addr) __tsan_acquire(static_cast<void*>(addr))
#else
#define FORGE_TSAN_HANDOFF(addr) ((void)0)
#define FORGE_TSAN_RECEIVE(addr) ((void)0)
#endif
