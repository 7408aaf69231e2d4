// server/persist: the durable Journal, on RocksDB (Debian's librocksdb 7.8).
//
// WRITE PATH (group commit). Commit() takes the journal's mutex only to
// append the batch to a queue and signal the writer thread. The one writer
// thread takes everything queued (up to max_group_bytes), builds ONE
// rocksdb::WriteBatch from it, writes it with WriteOptions::sync (one WAL
// append + one fdatasync for the whole group), then runs the group's dones in
// order with no journal lock held. Batches queued meanwhile form the next
// group. The writer waits on a CondVar: no polling, no sleeps.
//
// ERRORS. ENOSPC on a write (unless hold_on_no_space, below) fails the group
// with RESOURCE_EXHAUSTED and
// leaves the journal usable: later groups fail fast (the database stays open
// for reads) until the file system has room again, then the writer closes
// and reopens the database, which drops the torn, unacknowledged tail of the
// failed write and starts a new WAL, and writes again. If that reopen fails
// (still full after all), Get/Scan answer UNAVAILABLE until a later attempt
// succeeds. (DB::Resume() is not used: in RocksDB 7.8 it can keep writing to
// the torn WAL, and can block for good.) Any other write error, and any
// failed sync, makes the journal sticky UNAVAILABLE (see Journal::Commit).
//
// RECOVERY AND INTEGRITY (OpenRocksJournal). WAL recovery mode
// kTolerateCorruptedTailRecords: a torn last record (a crash in the middle of
// the last write, never acknowledged) is dropped; a corrupt record anywhere
// else fails the open with DATA_LOSS. Before RocksDB replays the WAL, the
// journal audits every WAL file itself and also fails with DATA_LOSS, naming
// the file and offset, in the two cases RocksDB 7.8 would silently skip
// acknowledged records: a corrupt length field in the last block of a WAL
// (RocksDB takes it for a torn tail) and a zeroed record header (RocksDB
// skips the rest of that block) when valid records follow. SST blocks carry
// XXH3 checksums, verified on every read (DATA_LOSS), and with
// verify_checksums_on_open all of them are verified by the open.
//
// THREADS. The writer thread, RocksDB's background flush and compaction
// threads, and the callers. Get/Scan wait during a reopen after a full disk
// (about a second). Lock order: the journal's mutexes are leaves
// (RocksJournal::mu_ and the DB handle's lock are never held together, and
// no journal lock is held while a done runs or is destroyed).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/persist/journal.h"

namespace rocksdb {
class Env;
}  // namespace rocksdb

namespace forge::persist {

struct RocksJournalOptions {
  // The database directory (created if missing; its parent must exist).
  std::string dir;
  // false: a write reaches the OS but is not fsynced before its done(OK);
  // survives a process crash, not a power loss (benchmarks, tests).
  bool sync = true;
  // Accepted but not done bytes beyond which Commit() refuses at once.
  size_t max_pending_bytes = size_t{256} << 20;
  // Upper bound of one group's bytes (one WriteBatch, one sync); a single
  // larger batch is written alone. Bounds the latency of a write+sync under
  // saturation (about 20 ms for 4 MiB of 200-byte records on a 2-core VM).
  size_t max_group_bytes = size_t{4} << 20;
  // RocksDB memtable size; memory use is up to about 4x this.
  size_t write_buffer_size = size_t{64} << 20;
  // Reads every SST block at open to verify its checksum (takes about one
  // full read of the database). Off: corruption is found by the reads.
  bool verify_checksums_on_open = false;
  // While the disk is full, the writer looks for room (and tries to reopen)
  // at most this often; groups in between fail at once with
  // RESOURCE_EXHAUSTED.
  absl::Duration no_space_retry_interval = absl::Milliseconds(100);
  // true: a group that meets a full disk is not failed; the writer keeps it
  // (and everything queued behind it, in order), reports disk_full in
  // stats(), and writes it once the disk has room again. Nothing is lost or
  // reordered, the dones only come later; callers refuse new work while
  // disk_full (the engine answers RESOURCE_EXHAUSTED). false: the group
  // fails with RESOURCE_EXHAUSTED, as described above.
  bool hold_on_no_space = false;
  // Tests: the environment whose file system holds the files (fault
  // injection). Must outlive the journal. nullptr: rocksdb::Env::Default().
  rocksdb::Env* env = nullptr;
};

// Opens (or creates) the journal in options.dir and starts its writer
// thread. DATA_LOSS if the log or a table is corrupt (the message names the
// file and, for the log, the offset); RESOURCE_EXHAUSTED if the disk is full;
// UNAVAILABLE for I/O errors (e.g. the directory is locked by another
// process); INVALID_ARGUMENT for bad options. The destructor waits for every
// queued batch to be done, stops the thread and closes the database; no
// Commit() may be in progress or follow.
absl::StatusOr<std::unique_ptr<Journal>> OpenRocksJournal(
    const RocksJournalOptions& options);

}  // namespace forge::persist
