// server/persist: Durability, the promise of one commit.
//
// A transition commits its journal records under its shard lock (so the
// journal's order is the store's order) and hands the caller a Durability;
// the caller attaches what must wait until the records are durable (replies,
// events, dispatches) with Then(). The journal's done resolves it.
//
// Thread-safe. Its mutex is a leaf: Resolve() may run under a shard lock
// (a journal that calls back inline) as long as no continuation is attached
// yet, which is the case for every commit made under a shard lock because
// Then() is only called once the transition returned.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/persist/journal.h"

namespace forge::persist {

class Durability {
 public:
  using Then_ = absl::AnyInvocable<void(absl::Status)>;

  // Commits `batch` and returns the promise of its durability.
  static std::shared_ptr<Durability> Commit(Journal& journal, Batch batch) {
    auto d = std::make_shared<Durability>();
    journal.Commit(std::move(batch), [d](absl::Status s) { d->Resolve(std::move(s)); });
    return d;
  }

  // Runs `then(status)` once: at once, on this thread, if already resolved;
  // otherwise on the thread that resolves it (the journal's), after the
  // continuations attached before it.
  void Then(Then_ then) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::Status now;
    {
      absl::MutexLock lock(&mu_);
      if (!resolved_) {
        then_.push_back(std::move(then));
        return;
      }
      now = status_;
    }
    then(std::move(now));
  }

  void Resolve(absl::Status s) ABSL_LOCKS_EXCLUDED(mu_) {
    std::vector<Then_> then;
    {
      absl::MutexLock lock(&mu_);
      resolved_ = true;
      status_ = s;
      then.swap(then_);
    }
    for (Then_& t : then) t(s);
  }

  // The outcome, once resolved (Then() runs after it is).
  absl::Status status() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return status_;
  }

 private:
  mutable absl::Mutex mu_;
  bool resolved_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  std::vector<Then_> then_ ABSL_GUARDED_BY(mu_);
};

}  // namespace forge::persist
