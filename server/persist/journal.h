// server/persist: the durable journal seam.
//
// A Journal is a key-value store whose writes are atomic batches made durable
// by group commit. The engine journals the records of a transition (one
// Batch) between the store transition and Engine::Apply, and replays the
// journal at start-up. Two implementations:
//   NewMemoryJournal()   (memory_journal.h)   ephemeral, for --ephemeral and
//                                             tests;
//   OpenRocksJournal()   (rocksdb_journal.h)  RocksDB, WAL fsync per group.
//
// Keys are ordered bytewise (unsigned bytes, then length), the order of Scan.
//
// THREAD CONTRACT (both implementations):
//   - Every method may be called from any thread, concurrently.
//   - Commit() never blocks on disk: it takes one short leaf mutex to queue
//     the batch and returns; gRPC reactor threads call it.
//   - A batch's `done` runs exactly once, with no journal lock held, so it may
//     call Commit() again. It must not call Flush() (the batch it would wait
//     for may be its own) and should be short: it delays later batches' dones.
//   - Get(), Scan() and Flush() may block (disk, or waiting for the writer);
//     never call them from a reactor thread.
//   - The journal's mutexes are leaves: no caller lock is ever taken under
//     them, and callbacks run with them released. Callers must not hold a
//     lock across Commit() that a `done` takes (a refused batch's `done` runs
//     inline, before Commit() returns).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/histogram.h"

namespace forge::persist {

// One change inside a Batch.
struct Mutation {
  enum class Op : uint8_t { kPut, kDelete, kDeleteRange };
  Op op = Op::kPut;
  std::string key;    // kDeleteRange: the range's begin (inclusive)
  std::string value;  // kPut: the value; kDeleteRange: the end (exclusive)
};

// A group of mutations applied atomically (all or nothing) and in order: a
// later mutation of the same batch wins over an earlier one, e.g. a Put after
// a DeleteRange covering its key survives, a Put before it does not.
class Batch {
 public:
  // Approximate bytes a mutation costs beyond its key and value (tag and
  // lengths in the log); keeps empty-keyed deletes from being free.
  static constexpr size_t kMutationOverhead = 8;

  void Put(std::string key, std::string value) {
    bytes_ += key.size() + value.size() + kMutationOverhead;
    mutations_.push_back(
        Mutation{Mutation::Op::kPut, std::move(key), std::move(value)});
  }
  void Delete(std::string key) {
    bytes_ += key.size() + kMutationOverhead;
    mutations_.push_back(
        Mutation{Mutation::Op::kDelete, std::move(key), std::string()});
  }
  // Deletes every key in [begin, end). Nothing if end <= begin.
  void DeleteRange(std::string begin, std::string end) {
    bytes_ += begin.size() + end.size() + kMutationOverhead;
    mutations_.push_back(
        Mutation{Mutation::Op::kDeleteRange, std::move(begin), std::move(end)});
  }

  // Preallocates room for `n` mutations.
  void Reserve(size_t n) { mutations_.reserve(n); }

  // Sum of key and value sizes plus kMutationOverhead per mutation: what
  // counts against max_pending_bytes and in JournalStats::bytes.
  size_t bytes() const { return bytes_; }
  bool empty() const { return mutations_.empty(); }
  size_t size() const { return mutations_.size(); }
  const std::vector<Mutation>& mutations() const { return mutations_; }

  // Moves the mutations out; the batch is left empty.
  std::vector<Mutation> TakeMutations() {
    bytes_ = 0;
    return std::exchange(mutations_, {});
  }

 private:
  std::vector<Mutation> mutations_;
  size_t bytes_ = 0;
};

// Called once per committed batch: OK when it is durable, else why not.
using CommitDone = absl::AnyInvocable<void(absl::Status)>;

// Counters for metrics. Cumulative since the journal was opened.
struct JournalStats {
  uint64_t commits = 0;          // batches whose done(OK) ran
  uint64_t failed_commits = 0;   // batches whose done got an error (any)
  uint64_t refused_commits = 0;  // of those, refused at once (backpressure,
                                 // sticky error, closed)
  uint64_t mutations = 0;        // mutations of the committed batches
  uint64_t bytes = 0;            // Batch::bytes() of the committed batches
  // Write+sync rounds made, failed ones included (one per group with
  // something to write; 0 for the memory journal). commits / syncs is about
  // the mean group size.
  uint64_t syncs = 0;
  uint64_t max_batches_per_sync = 0;
  uint64_t sync_micros_total = 0;  // sum of write+sync latencies
  // Seconds per write+sync round; batches and bytes per round (the group
  // commit's size); seconds from Commit() to done (queueing included).
  // Empty (no bounds) for journals that do not measure them.
  HistogramSnapshot sync_seconds;
  HistogramSnapshot group_batches;
  HistogramSnapshot group_bytes;
  HistogramSnapshot commit_seconds;
  // Current state.
  uint64_t pending_batches = 0;  // accepted, done not yet returned
  uint64_t pending_bytes = 0;
  bool disk_full = false;  // the last write failed with ENOSPC
};

class Journal {
 public:
  virtual ~Journal() = default;

  // Queues `batch` and returns at once. Batches are applied in the order of
  // their Commit() calls (one total order across threads); a batch is
  // visible to Get/Scan no later than when its done(OK) runs. An empty batch
  // writes nothing; its done(OK) comes after every earlier batch's.
  //
  // `done` is called exactly once:
  //   - for a refused batch (RESOURCE_EXHAUSTED for backpressure, or the
  //     sticky error): inline, before Commit() returns;
  //   - for an accepted batch: once it is durable (OK) or has failed, on the
  //     journal's callback thread (the RocksDB journal's writer thread), in
  //     Commit() order, one at a time. Exception: a memory journal with
  //     inline callbacks (its default, see memory_journal.h) runs it on the
  //     committing thread right after applying the batch, so dones of batches
  //     committed concurrently by different threads may run concurrently and
  //     in either order (each thread still sees its own in order).
  //
  // Errors:
  //   RESOURCE_EXHAUSTED, refused at once: accepting the batch would put more
  //     than max_pending_bytes in flight (accepted, done not yet returned).
  //     Nothing is applied.
  //   RESOURCE_EXHAUSTED, after a try: the disk is full (ENOSPC). Nothing is
  //     applied. Not sticky: later batches try again and succeed once space
  //     returns.
  //   UNAVAILABLE: a write failed for another reason than ENOSPC, or a sync
  //     failed (even with ENOSPC: the record may be on disk, so the outcome
  //     is unknown). Sticky: this batch, every batch queued behind it and
  //     every later Commit() fail, and health() reports it, until the process
  //     restarts. After the restart the batches of the failed write (one
  //     group) may or may not be found, all of them or none; the batches
  //     refused or failed after it were never written.
  virtual void Commit(Batch batch, CommitDone done) = 0;

  // Durable reads (recovery at start-up, cold reads of finished graphs). May
  // block on disk. DATA_LOSS if stored data fails its checksum.
  virtual absl::StatusOr<std::optional<std::string>> Get(
      absl::string_view key) const = 0;

  // Visits the keys in [begin, end) in order until `visit` returns false. An
  // empty `end` means no upper bound. A consistent snapshot: batches
  // committed during the scan are either entirely visible or not at all.
  // `visit` must not call the journal.
  virtual absl::Status Scan(
      absl::string_view begin, absl::string_view end,
      absl::FunctionRef<bool(absl::string_view key, absl::string_view value)>
          visit) const = 0;

  // Blocks until every batch accepted before the call is done (its callback
  // returned). Must not be called from a done callback.
  virtual void Flush() = 0;

  // OK, or the sticky error (see Commit).
  virtual absl::Status health() const = 0;

  virtual JournalStats stats() const = 0;
};

// The smallest key greater than every key that starts with `prefix`, for
// Scan(prefix, PrefixEnd(prefix)) and DeleteRange. Empty (no upper bound
// for Scan) when there is none: `prefix` is empty or all 0xff bytes.
inline std::string PrefixEnd(absl::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    if (static_cast<unsigned char>(end.back()) != 0xff) {
      end.back() =
          static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return end;
}

}  // namespace forge::persist
