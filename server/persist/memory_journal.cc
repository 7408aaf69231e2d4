#include "server/persist/memory_journal.h"

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace forge::persist {
namespace {

class MemoryJournal final : public Journal {
 public:
  explicit MemoryJournal(const MemoryJournalOptions& options)
      : options_(options) {
    if (!options_.inline_callbacks) {
      callback_thread_ = std::thread([this] { CallbackLoop(); });
    }
  }

  ~MemoryJournal() override {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      work_cv_.Signal();
    }
    if (callback_thread_.joinable()) callback_thread_.join();
  }

  MemoryJournal(const MemoryJournal&) = delete;
  MemoryJournal& operator=(const MemoryJournal&) = delete;

  void Commit(Batch batch, CommitDone done) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::optional<std::string>> Get(
      absl::string_view key) const override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status Scan(
      absl::string_view begin, absl::string_view end,
      absl::FunctionRef<bool(absl::string_view key, absl::string_view value)>
          visit) const override ABSL_LOCKS_EXCLUDED(mu_);
  void Flush() override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status health() const override { return absl::OkStatus(); }
  JournalStats stats() const override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // An accepted batch whose done waits for the callback thread.
  struct Queued {
    uint64_t seq = 0;
    size_t bytes = 0;
    CommitDone done;
  };

  // Applies `mutations` to data_, in order.
  void ApplyLocked(std::vector<Mutation> mutations)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Bookkeeping once the done of batch `seq` has returned.
  void FinishedLocked(uint64_t seq, size_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CallbackLoop() ABSL_LOCKS_EXCLUDED(mu_);

  const MemoryJournalOptions options_;

  mutable absl::Mutex mu_;
  absl::btree_map<std::string, std::string> data_ ABSL_GUARDED_BY(mu_);
  // Sequence number of the last accepted batch (the first is 1).
  uint64_t last_seq_ ABSL_GUARDED_BY(mu_) = 0;
  // Accepted batches whose done has not returned, by sequence number.
  absl::btree_set<uint64_t> unfinished_ ABSL_GUARDED_BY(mu_);
  size_t pending_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  JournalStats stats_ ABSL_GUARDED_BY(mu_);
  // Callback thread mode: dones waiting for the callback thread.
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Signalled (mu_ held) when queue_ gets work or stopping_ is set.
  absl::CondVar work_cv_;
  // Signalled (mu_ held) when an unfinished batch finished.
  absl::CondVar finished_cv_;

  std::thread callback_thread_;  // set by the constructor only
};

void MemoryJournal::Commit(Batch batch, CommitDone done) {
  const size_t bytes = batch.bytes();
  uint64_t seq = 0;
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      refused = absl::UnavailableError("memory journal: closed");
    } else if (pending_bytes_ + bytes > options_.max_pending_bytes) {
      // A batch larger than the limit can never be accepted: refused too.
      refused = absl::ResourceExhaustedError(absl::StrCat(
          "memory journal: ", pending_bytes_, " bytes pending + ", bytes,
          " would exceed max_pending_bytes ", options_.max_pending_bytes));
    }
    if (!refused.ok()) {
      ++stats_.failed_commits;
      ++stats_.refused_commits;
    } else {
      stats_.mutations += batch.size();
      stats_.bytes += bytes;
      ApplyLocked(batch.TakeMutations());
      seq = ++last_seq_;
      unfinished_.insert(seq);
      pending_bytes_ += bytes;
      if (!options_.inline_callbacks) {
        queue_.push_back(Queued{seq, bytes, std::move(done)});
        work_cv_.Signal();
        return;
      }
    }
  }
  if (!refused.ok()) {
    done(std::move(refused));
    return;
  }
  done(absl::OkStatus());
  done = nullptr;  // its captures are destroyed with no lock held
  absl::MutexLock lock(&mu_);
  FinishedLocked(seq, bytes);
}

void MemoryJournal::ApplyLocked(std::vector<Mutation> mutations) {
  for (Mutation& m : mutations) {
    switch (m.op) {
      case Mutation::Op::kPut:
        data_.insert_or_assign(std::move(m.key), std::move(m.value));
        break;
      case Mutation::Op::kDelete:
        data_.erase(m.key);
        break;
      case Mutation::Op::kDeleteRange:
        if (m.key < m.value) {
          data_.erase(data_.lower_bound(m.key), data_.lower_bound(m.value));
        }
        break;
    }
  }
}

void MemoryJournal::FinishedLocked(uint64_t seq, size_t bytes) {
  const bool was_oldest = *unfinished_.begin() == seq;
  unfinished_.erase(seq);
  pending_bytes_ -= bytes;
  ++stats_.commits;
  // Flush() waits for the oldest unfinished batch to move past its target.
  if (was_oldest) finished_cv_.SignalAll();
}

void MemoryJournal::CallbackLoop() {
  std::deque<Queued> taken;
  mu_.Lock();
  while (true) {
    while (queue_.empty() && !stopping_) work_cv_.Wait(&mu_);
    if (queue_.empty()) break;  // stopping, and every done has run
    taken.swap(queue_);
    mu_.Unlock();
    for (Queued& q : taken) {
      q.done(absl::OkStatus());
      q.done = nullptr;  // destroyed with no lock held
    }
    mu_.Lock();
    for (const Queued& q : taken) FinishedLocked(q.seq, q.bytes);
    taken.clear();
  }
  mu_.Unlock();
}

absl::StatusOr<std::optional<std::string>> MemoryJournal::Get(
    absl::string_view key) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = data_.find(key);
  if (it == data_.end()) return std::optional<std::string>();
  return std::optional<std::string>(it->second);
}

absl::Status MemoryJournal::Scan(
    absl::string_view begin, absl::string_view end,
    absl::FunctionRef<bool(absl::string_view, absl::string_view)> visit) const {
  // The lock is held for the whole scan: a consistent snapshot, and commits
  // wait meanwhile (this journal is for small, ephemeral state).
  absl::ReaderMutexLock lock(&mu_);
  for (auto it = data_.lower_bound(begin); it != data_.end(); ++it) {
    if (!end.empty() && absl::string_view(it->first) >= end) break;
    if (!visit(it->first, it->second)) break;
  }
  return absl::OkStatus();
}

void MemoryJournal::Flush() {
  absl::MutexLock lock(&mu_);
  const uint64_t target = last_seq_;
  while (!unfinished_.empty() && *unfinished_.begin() <= target) {
    finished_cv_.Wait(&mu_);
  }
}

JournalStats MemoryJournal::stats() const {
  absl::MutexLock lock(&mu_);
  JournalStats stats = stats_;
  stats.pending_batches = unfinished_.size();
  stats.pending_bytes = pending_bytes_;
  return stats;
}

}  // namespace

std::unique_ptr<Journal> NewMemoryJournal() {
  return NewMemoryJournal(MemoryJournalOptions());
}

std::unique_ptr<Journal> NewMemoryJournal(const MemoryJournalOptions& options) {
  return std::make_unique<MemoryJournal>(options);
}

}  // namespace forge::persist
