// server/persist: the ephemeral Journal (forged --ephemeral, and tests).
//
// An ordered map under one mutex. Commit() applies the batch at once, under
// the lock, so batches are applied in Commit() order; nothing is ever written
// anywhere and everything is lost with the process.
//
// Callbacks:
//   - inline_callbacks = true (default): done(OK) runs on the committing
//     thread right after the batch is applied, with no lock held. This is
//     the cheapest mode and what the engine did before the journal existed;
//     dones of different threads may run concurrently.
//   - inline_callbacks = false: done runs on the journal's own callback
//     thread, in Commit() order, one at a time: exactly the threading of the
//     RocksDB journal (its writer thread), for tests of code that must work
//     with both.
//
// Backpressure is the same as the RocksDB journal's: a batch is refused with
// RESOURCE_EXHAUSTED when accepting it would put more than max_pending_bytes
// in flight (accepted, done not yet returned). The memory journal never
// reports a disk or sticky error: health() is always OK.
//
// Thread-safe. The journal's one mutex is a leaf; no lock is held while a
// done runs or is destroyed.
#pragma once

#include <cstddef>
#include <memory>

#include "server/persist/journal.h"

namespace forge::persist {

struct MemoryJournalOptions {
  size_t max_pending_bytes = size_t{256} << 20;
  bool inline_callbacks = true;
};

// The destructor runs the dones still queued (callback thread mode) and
// stops the thread; no Commit() may be in progress or follow.
std::unique_ptr<Journal> NewMemoryJournal();
std::unique_ptr<Journal> NewMemoryJournal(const MemoryJournalOptions& options);

}  // namespace forge::persist
