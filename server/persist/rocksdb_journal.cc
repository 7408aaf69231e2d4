#include "server/persist/rocksdb_journal.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "rocksdb/convenience.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"

namespace forge::persist {
namespace {

// ---------------------------------------------------------------------------
// Status conversion.

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  const std::string message =
      absl::StrCat("journal: ", what, ": ", s.ToString());
  if (s.IsCorruption()) return absl::DataLossError(message);
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(message);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(message);
  if (s.IsIOError() || s.IsBusy() || s.IsTryAgain() ||
      s.IsShutdownInProgress()) {
    return absl::UnavailableError(message);
  }
  return absl::InternalError(message);
}

absl::string_view View(const rocksdb::Slice& s) {
  return absl::string_view(s.data(), s.size());
}

rocksdb::Slice ToSlice(absl::string_view s) {
  return rocksdb::Slice(s.data(), s.size());
}

// ---------------------------------------------------------------------------
// CRC-32C (Castagnoli), as RocksDB's log records use it: the standard CRC
// (reflected polynomial 0x82f63b78, initial and final XOR with ~0), stored
// "masked" so that a CRC of data containing CRCs is not degenerate.

struct Crc32cTable {
  uint32_t entries[256];
  constexpr Crc32cTable() : entries() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t crc = i;
      for (int bit = 0; bit < 8; ++bit) {
        crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82f63b78u : crc >> 1;
      }
      entries[i] = crc;
    }
  }
};
constexpr Crc32cTable kCrc32cTable;

uint32_t Crc32cSoftware(uint32_t state, const char* data, size_t n) {
  const auto* p = reinterpret_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    state = kCrc32cTable.entries[(state ^ p[i]) & 0xff] ^ (state >> 8);
  }
  return state;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t Crc32cHardware(uint32_t state,
                                                          const char* data,
                                                          size_t n) {
  uint64_t state64 = state;
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, data, 8);
    state64 = _mm_crc32_u64(state64, word);
    data += 8;
    n -= 8;
  }
  state = static_cast<uint32_t>(state64);
  while (n > 0) {
    state = _mm_crc32_u8(state, static_cast<unsigned char>(*data));
    ++data;
    --n;
  }
  return state;
}
#endif

uint32_t Crc32c(const char* data, size_t n) {
#if defined(__x86_64__)
  static const bool hardware = __builtin_cpu_supports("sse4.2");
  if (hardware) return ~Crc32cHardware(~0u, data, n);
#endif
  return ~Crc32cSoftware(~0u, data, n);
}

uint32_t UnmaskCrc(uint32_t masked) {
  const uint32_t rot = masked - 0xa282ead8u;
  return (rot >> 17) | (rot << 15);
}

// ---------------------------------------------------------------------------
// WAL audit.
//
// RocksDB's log format: 32 KiB blocks of physical records, each a 7-byte
// header (masked CRC-32C of type+payload, 16-bit length, type) and its
// payload; a record that does not fit in a block is split into FIRST,
// MIDDLE..., LAST fragments; fewer than 7 bytes left at the end of a block
// are a zero trailer. (Recyclable records, with an 11-byte header, are never
// written: recycle_log_file_num is 0.)
//
// In kTolerateCorruptedTailRecords mode RocksDB 7.8 reports every bad
// checksum, bad fragment sequence, unknown type and bad length in a full
// block, which fails the open with Corruption. It silently stops or skips in
// three cases, correct for a torn tail but not for corruption in the middle:
//   (a) in the last, partial block, a record claiming more bytes than the
//       file has (a torn last write, or a corrupt length field);
//   (b) a zero header (type 0, length 0): the rest of its block is skipped;
//   (c) a truncated header or a fragmented record at the end of the file.
// The audit checks each WAL file the same way and adds: in (a) and (b), no
// valid record may follow in the skipped bytes, else acknowledged records
// would be dropped without a word: DATA_LOSS. The audit reports the other
// corruptions too, with the file and offset (RocksDB's own message has
// neither).

constexpr size_t kLogBlockSize = 32768;
constexpr size_t kLogHeaderSize = 7;
enum LogRecordType : uint8_t {
  kZeroType = 0,
  kFullType = 1,
  kFirstType = 2,
  kMiddleType = 3,
  kLastType = 4,
  kSetCompressionType = 9,
};

struct LogHeader {
  uint32_t masked_crc;
  size_t length;
  uint8_t type;
};

LogHeader ParseLogHeader(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  LogHeader h;
  h.masked_crc = uint32_t{u[0]} | uint32_t{u[1]} << 8 | uint32_t{u[2]} << 16 |
                 uint32_t{u[3]} << 24;
  h.length = size_t{u[4]} | size_t{u[5]} << 8;
  h.type = u[6];
  return h;
}

bool KnownType(uint8_t type) {
  return (type >= kFullType && type <= kLastType) ||
         type == kSetCompressionType;
}

// True if a complete physical record with a known type and a valid checksum
// starts at `p` within block[0, size).
bool ValidRecordAt(const char* block, size_t size, size_t p) {
  if (p + kLogHeaderSize > size) return false;
  const LogHeader h = ParseLogHeader(block + p);
  if (!KnownType(h.type) || p + kLogHeaderSize + h.length > size) return false;
  return Crc32c(block + p + kLogHeaderSize - 1, h.length + 1) ==
         UnmaskCrc(h.masked_crc);
}

// The offset in the block of the first valid record starting in
// [from, size), if any.
std::optional<size_t> FindValidRecord(const char* block, size_t size,
                                      size_t from) {
  for (size_t p = from; p + kLogHeaderSize <= size; ++p) {
    if (ValidRecordAt(block, size, p)) return p;
  }
  return std::nullopt;
}

absl::Status AuditWalFile(rocksdb::Env* env, const std::string& path) {
  std::unique_ptr<rocksdb::SequentialFile> file;
  rocksdb::Status s =
      env->NewSequentialFile(path, &file, rocksdb::EnvOptions());
  if (!s.ok()) return FromRocks(s, absl::StrCat("auditing ", path));
  auto loss = [&path](uint64_t offset, absl::string_view what) {
    return absl::DataLossError(absl::StrCat(
        "journal: WAL ", path, " is corrupt at offset ", offset, ": ", what,
        "; acknowledged batches would be lost, so the journal refuses to "
        "open (restore from a backup, or move the file away to accept the "
        "loss)"));
  };
  std::vector<char> scratch(kLogBlockSize);
  bool in_fragment = false;
  size_t fragment_bytes = 0;
  for (uint64_t block_start = 0;; block_start += kLogBlockSize) {
    rocksdb::Slice read;
    s = file->Read(kLogBlockSize, &read, scratch.data());
    if (!s.ok()) return FromRocks(s, absl::StrCat("auditing ", path));
    if (read.empty()) return absl::OkStatus();
    const char* block = read.data();
    const size_t size = read.size();
    // A short read is the end of the file: RocksDB's eof_ block.
    const bool last_block = size < kLogBlockSize;
    size_t p = 0;
    while (p + kLogHeaderSize <= size) {
      const uint64_t offset = block_start + p;
      const LogHeader h = ParseLogHeader(block + p);
      if (h.type == kZeroType && h.length == 0) {  // case (b)
        if (auto next = FindValidRecord(block, size, p + 1)) {
          return loss(offset,
                      absl::StrCat("a zeroed record header hides the valid "
                                   "record at offset ",
                                   block_start + *next));
        }
        p = size;  // RocksDB skips the rest of the block
        break;
      }
      if (p + kLogHeaderSize + h.length > size) {
        if (!last_block) {
          return loss(offset, absl::StrCat("record length ", h.length,
                                           " runs past its block"));
        }
        // Case (a): a torn last write, unless a valid record follows.
        if (auto next = FindValidRecord(block, size, p + 1)) {
          return loss(offset,
                      absl::StrCat("record length ", h.length,
                                   " runs past the end of the file, but a "
                                   "valid record follows at offset ",
                                   block_start + *next));
        }
        return absl::OkStatus();
      }
      if (Crc32c(block + p + kLogHeaderSize - 1, h.length + 1) !=
          UnmaskCrc(h.masked_crc)) {
        return loss(offset, absl::StrCat("checksum mismatch in a record of ",
                                         h.length, " bytes"));
      }
      switch (h.type) {
        case kFullType:
        case kFirstType:
          if (in_fragment && fragment_bytes > 0) {
            return loss(offset, "a fragmented record has no end");
          }
          in_fragment = h.type == kFirstType;
          fragment_bytes = h.length;
          break;
        case kMiddleType:
        case kLastType:
          if (!in_fragment) {
            return loss(offset, "a record fragment has no start");
          }
          in_fragment = h.type == kMiddleType;
          fragment_bytes += h.length;
          break;
        case kSetCompressionType:
          break;
        default:
          return loss(offset, absl::StrCat("unexpected record type ", h.type));
      }
      p += kLogHeaderSize + h.length;
    }
    // Fewer than 7 bytes left: a block trailer, or (case (c)) a header torn
    // at the end of the file. A fragmented record still open at the end of
    // the file is a torn last write too (case (c)).
    if (last_block) return absl::OkStatus();
  }
}

// The WAL files (NNNNNN.log) of `dir`, by number; none if it is missing.
absl::StatusOr<std::vector<std::string>> ListWals(rocksdb::Env* env,
                                                  const std::string& dir) {
  std::vector<std::string> children;
  rocksdb::Status s = env->GetChildren(dir, &children);
  if (s.IsNotFound()) return std::vector<std::string>();
  if (!s.ok()) return FromRocks(s, absl::StrCat("listing ", dir));
  std::vector<std::pair<uint64_t, std::string>> wals;
  for (const std::string& name : children) {
    constexpr absl::string_view kSuffix = ".log";
    if (name.size() <= kSuffix.size() ||
        absl::string_view(name).substr(name.size() - kSuffix.size()) !=
            kSuffix) {
      continue;
    }
    const absl::string_view digits =
        absl::string_view(name).substr(0, name.size() - kSuffix.size());
    uint64_t number = 0;
    if (!std::all_of(digits.begin(), digits.end(), absl::ascii_isdigit) ||
        !absl::SimpleAtoi(digits, &number)) {
      continue;
    }
    wals.emplace_back(number, absl::StrCat(dir, "/", name));
  }
  std::sort(wals.begin(), wals.end());
  std::vector<std::string> paths;
  for (auto& [number, path] : wals) paths.push_back(std::move(path));
  return paths;
}

// Audits every WAL file of `dir`, oldest first.
absl::Status AuditWals(rocksdb::Env* env, const std::string& dir) {
  ASSIGN_OR_RETURN(const std::vector<std::string> wals, ListWals(env, dir));
  for (const std::string& path : wals) RETURN_IF_ERROR(AuditWalFile(env, path));
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// The info LOG. RocksDB's own file logger writes through a
// WritableFileWriter, which in Debian's build (assertions on) aborts the
// process when it is used again after a failed write, i.e. as soon as the
// disk is full. This one writes each line with one write(2) and ignores
// errors. It keeps the current file and one older one.

class JournalLogger final : public rocksdb::Logger {
 public:
  static constexpr off_t kMaxBytes = 16 << 20;

  explicit JournalLogger(std::string path)
      : rocksdb::Logger(rocksdb::InfoLogLevel::INFO_LEVEL),
        path_(std::move(path)) {
    absl::MutexLock lock(&mu_);
    OpenLocked();
  }
  ~JournalLogger() override {
    absl::MutexLock lock(&mu_);
    if (fd_ >= 0) ::close(fd_);
  }

  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override ABSL_LOCKS_EXCLUDED(mu_) {
    char buffer[1024];
    struct timeval now;
    gettimeofday(&now, nullptr);
    struct tm t;
    localtime_r(&now.tv_sec, &t);
    int n = snprintf(buffer, sizeof(buffer),
                     "%04d/%02d/%02d-%02d:%02d:%02d.%06ld %ld ",
                     t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour,
                     t.tm_min, t.tm_sec, static_cast<long>(now.tv_usec),
                     static_cast<long>(syscall(SYS_gettid)));
    std::string line(buffer, static_cast<size_t>(std::max(n, 0)));
    va_list copy;
    va_copy(copy, ap);
    n = vsnprintf(buffer, sizeof(buffer), format, copy);
    va_end(copy);
    if (n < 0) return;
    if (static_cast<size_t>(n) < sizeof(buffer)) {
      line.append(buffer, n);
    } else {
      const size_t prefix = line.size();
      line.resize(prefix + n + 1);
      vsnprintf(&line[prefix], n + 1, format, ap);
      line.resize(prefix + n);
    }
    if (line.back() != '\n') line.push_back('\n');
    absl::MutexLock lock(&mu_);
    if (size_ + static_cast<off_t>(line.size()) > kMaxBytes) {
      ::close(fd_);
      ::rename(path_.c_str(), (path_ + ".old").c_str());
      OpenLocked();
    }
    if (fd_ < 0) return;
    const ssize_t written = ::write(fd_, line.data(), line.size());
    if (written > 0) size_ += written;
  }

 private:
  void OpenLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    fd_ =
        ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    size_ = fd_ >= 0 ? ::lseek(fd_, 0, SEEK_END) : 0;
  }

  const std::string path_;
  absl::Mutex mu_;
  int fd_ ABSL_GUARDED_BY(mu_) = -1;
  off_t size_ ABSL_GUARDED_BY(mu_) = 0;
};

// ---------------------------------------------------------------------------
// The file system under the database: the given one, with two changes.
//  - GetFreeSpace() is "not supported" to RocksDB. On ENOSPC RocksDB 7.8
//    otherwise hands recovery to its SstFileManager, whose thread retries
//    DB::Resume() every 5 s once 1 MiB is free; Resume() can block for good
//    when a flush fails again meanwhile. Without free-space information
//    RocksDB leaves recovery to the journal (which reopens the database).
//  - WAL files report a failed Sync()/Fsync(): the write may then be on disk
//    although RocksDB fails it, so the journal turns sticky (outcome unknown)
//    instead of reporting a retryable ENOSPC.

class WalFile final : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  WalFile(std::unique_ptr<rocksdb::FSWritableFile> file,
          std::atomic<bool>* sync_failed)
      : FSWritableFileOwnerWrapper(std::move(file)),
        sync_failed_(sync_failed) {}

  rocksdb::IOStatus Sync(const rocksdb::IOOptions& options,
                         rocksdb::IODebugContext* dbg) override {
    return Check(target()->Sync(options, dbg));
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& options,
                          rocksdb::IODebugContext* dbg) override {
    return Check(target()->Fsync(options, dbg));
  }

 private:
  rocksdb::IOStatus Check(rocksdb::IOStatus s) {
    if (!s.ok()) sync_failed_->store(true);
    return s;
  }
  std::atomic<bool>* const sync_failed_;
};

class JournalFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  explicit JournalFileSystem(std::shared_ptr<rocksdb::FileSystem> target)
      : FileSystemWrapper(std::move(target)) {}

  const char* Name() const override { return "ForgeJournalFileSystem"; }

  rocksdb::IOStatus GetFreeSpace(const std::string&, const rocksdb::IOOptions&,
                                 uint64_t*, rocksdb::IODebugContext*) override {
    return rocksdb::IOStatus::NotSupported("forge journal recovers by itself");
  }

  rocksdb::IOStatus NewWritableFile(
      const std::string& name, const rocksdb::FileOptions& options,
      std::unique_ptr<rocksdb::FSWritableFile>* result,
      rocksdb::IODebugContext* dbg) override {
    return Wrap(name, target()->NewWritableFile(name, options, result, dbg),
                result);
  }
  rocksdb::IOStatus ReopenWritableFile(
      const std::string& name, const rocksdb::FileOptions& options,
      std::unique_ptr<rocksdb::FSWritableFile>* result,
      rocksdb::IODebugContext* dbg) override {
    return Wrap(name, target()->ReopenWritableFile(name, options, result, dbg),
                result);
  }

  // True once a WAL sync failed (never reset: the journal is sticky then).
  bool wal_sync_failed() const { return wal_sync_failed_.load(); }

  // The free space of the file system holding `dir`, if it can tell.
  std::optional<uint64_t> FreeSpace(const std::string& dir) {
    uint64_t free = 0;
    if (!target()
             ->GetFreeSpace(dir, rocksdb::IOOptions(), &free, nullptr)
             .ok()) {
      return std::nullopt;
    }
    return free;
  }

 private:
  rocksdb::IOStatus Wrap(const std::string& name, rocksdb::IOStatus s,
                         std::unique_ptr<rocksdb::FSWritableFile>* result) {
    constexpr absl::string_view kSuffix = ".log";
    if (s.ok() && name.size() > kSuffix.size() &&
        absl::string_view(name).substr(name.size() - kSuffix.size()) ==
            kSuffix) {
      *result =
          std::make_unique<WalFile>(std::move(*result), &wal_sync_failed_);
    }
    return s;
  }

  std::atomic<bool> wal_sync_failed_{false};
};

// ---------------------------------------------------------------------------
// Options.

rocksdb::Options MakeDbOptions(const RocksJournalOptions& options,
                               rocksdb::Env* env,
                               std::shared_ptr<rocksdb::Logger> logger) {
  rocksdb::Options o;
  o.create_if_missing = true;
  o.env = env;
  o.info_log = std::move(logger);

  // Integrity. Torn tail dropped, corruption anywhere else fails the open
  // (kPointInTimeRecovery would stop at the first corruption and silently
  // drop everything after it; kAbsoluteConsistency would refuse every torn
  // tail, i.e. every crash in the middle of a write).
  o.wal_recovery_mode = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
  o.paranoid_checks = true;  // a failed WAL write stops the DB; report corrupt
                             // WAL records instead of ignoring them
  o.recycle_log_file_num = 0;  // a reused log's old tail would look torn
  o.wal_compression = rocksdb::kNoCompression;
  // No automatic DB::Resume() in the background: the writer recovers from
  // ENOSPC itself, by reopening (see RecoverFromNoSpace).
  o.max_bgerror_resume_count = 0;

  // Throughput of small records: one writer, a WAL sync per group; large
  // memtables so flushes are rare, and enough of them that a flush in
  // progress does not stall writes; SST writeback smoothed by bytes_per_sync.
  o.manual_wal_flush = false;
  o.write_buffer_size = options.write_buffer_size;
  o.max_write_buffer_number = 4;
  o.max_background_jobs = 2;
  o.bytes_per_sync = 1 << 20;
  o.level_compaction_dynamic_level_bytes = true;
  const std::vector<rocksdb::CompressionType> supported =
      rocksdb::GetSupportedCompressions();
  auto has = [&supported](rocksdb::CompressionType type) {
    return std::find(supported.begin(), supported.end(), type) !=
           supported.end();
  };
  o.compression = has(rocksdb::kLZ4Compression) ? rocksdb::kLZ4Compression
                  : has(rocksdb::kSnappyCompression)
                      ? rocksdb::kSnappyCompression
                      : rocksdb::kNoCompression;

  rocksdb::BlockBasedTableOptions table;
  table.checksum = rocksdb::kXXH3;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  return o;
}

// Audits the WALs, opens the DB, optionally verifies every SST block.
absl::StatusOr<std::unique_ptr<rocksdb::DB>> OpenDb(
    const RocksJournalOptions& options, const rocksdb::Options& db_options) {
  RETURN_IF_ERROR(AuditWals(db_options.env, options.dir));
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.dir, &raw);
  if (!s.ok()) return FromRocks(s, absl::StrCat("opening ", options.dir));
  std::unique_ptr<rocksdb::DB> db(raw);
  if (options.verify_checksums_on_open) {
    s = db->VerifyChecksum();
    if (!s.ok()) {
      return FromRocks(s, absl::StrCat("verifying ", options.dir));
    }
  }
  return db;
}

// ---------------------------------------------------------------------------
// The journal.

class RocksJournal final : public Journal {
 public:
  RocksJournal(const RocksJournalOptions& options,
               std::unique_ptr<rocksdb::Env> env,
               std::shared_ptr<JournalFileSystem> fs,
               rocksdb::Options db_options, std::unique_ptr<rocksdb::DB> db)
      : options_(options),
        env_(std::move(env)),
        fs_(std::move(fs)),
        db_options_(std::move(db_options)),
        db_(std::move(db)) {
    write_options_.sync = options_.sync;
    writer_ = std::thread([this] { WriterLoop(); });
  }

  ~RocksJournal() override;

  RocksJournal(const RocksJournal&) = delete;
  RocksJournal& operator=(const RocksJournal&) = delete;

  void Commit(Batch batch, CommitDone done) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::optional<std::string>> Get(
      absl::string_view key) const override ABSL_LOCKS_EXCLUDED(db_mu_);
  absl::Status Scan(
      absl::string_view begin, absl::string_view end,
      absl::FunctionRef<bool(absl::string_view key, absl::string_view value)>
          visit) const override ABSL_LOCKS_EXCLUDED(db_mu_);
  void Flush() override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status health() const override ABSL_LOCKS_EXCLUDED(mu_);
  JournalStats stats() const override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Pending {
    uint64_t seq = 0;
    Batch batch;
    CommitDone done;
    absl::Time enqueued;
  };

  // The writer thread's loop: take a group, write it, run its dones.
  void WriterLoop() ABSL_LOCKS_EXCLUDED(mu_, db_mu_);
  // Writes the group as one WriteBatch. OK, RESOURCE_EXHAUSTED (ENOSPC,
  // retryable), or UNAVAILABLE (the caller makes it sticky). Sets
  // *write_micros to the write+sync latency if a write was made, else -1.
  absl::Status WriteGroup(const std::vector<Pending>& group,
                          int64_t* write_micros)
      ABSL_LOCKS_EXCLUDED(mu_, db_mu_);
  // After an ENOSPC: once the file system has room, closes and reopens the
  // database. Same results as WriteGroup.
  absl::Status RecoverFromNoSpace() ABSL_LOCKS_EXCLUDED(mu_, db_mu_);

  const RocksJournalOptions options_;
  const std::unique_ptr<rocksdb::Env> env_;  // wraps fs_; outlives the DB
  const std::shared_ptr<JournalFileSystem> fs_;
  const rocksdb::Options db_options_;  // for a reopen
  rocksdb::WriteOptions write_options_;

  // The DB handle. Get, Scan and the writer's writes hold db_mu_ shared;
  // only the writer thread replaces the handle (reopen after ENOSPC), holding
  // it exclusively. Null only after a reopen failed (the disk still full).
  mutable absl::Mutex db_mu_;
  std::unique_ptr<rocksdb::DB> db_ ABSL_GUARDED_BY(db_mu_);

  // Writer thread only.
  bool no_space_ = false;  // the last write failed with ENOSPC
  absl::Time next_recovery_ = absl::InfinitePast();

  mutable absl::Mutex mu_;
  std::deque<Pending> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t last_seq_ ABSL_GUARDED_BY(mu_) = 0;  // of the last accepted batch
  uint64_t done_seq_ ABSL_GUARDED_BY(mu_) = 0;  // every batch <= it is done
  size_t pending_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t pending_batches_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status sticky_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  JournalStats stats_ ABSL_GUARDED_BY(mu_);
  // Observed by the writer thread, read by stats() (atomics: no lock).
  Histogram sync_seconds_{StorageLatencyBuckets()};
  Histogram group_batches_{CountBuckets()};
  Histogram group_bytes_{{1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10,
                          1 << 20, 4 << 20, 16 << 20, 64 << 20}};
  Histogram commit_seconds_{StorageLatencyBuckets()};
  absl::CondVar work_cv_;  // signalled (mu_ held): queue_ grew, or stopping_
  absl::CondVar done_cv_;  // signalled (mu_ held): done_seq_ advanced

  std::thread writer_;  // set by the constructor only
};

RocksJournal::~RocksJournal() {
  bool healthy;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    healthy = sticky_.ok();
    work_cv_.Signal();
  }
  writer_.join();  // the writer drains the queue first
  absl::MutexLock lock(&db_mu_);
  if (db_ == nullptr) return;
  rocksdb::Status s;
  // Unsynced writes reach the disk now. Not after a write error: RocksDB's
  // WAL writer must not be used again then.
  if (!options_.sync && healthy && !no_space_) s = db_->SyncWAL();
  if (s.ok()) s = db_->Close();
  if (!s.ok()) {
    rocksdb::Warn(db_options_.info_log, "forge journal: close: %s",
                  s.ToString().c_str());
  }
  db_.reset();
}

void RocksJournal::Commit(Batch batch, CommitDone done) {
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    const size_t bytes = batch.bytes();
    if (!sticky_.ok()) {
      refused = sticky_;
    } else if (stopping_) {
      refused = absl::UnavailableError("journal: closed");
    } else if (pending_bytes_ + bytes > options_.max_pending_bytes) {
      // A batch larger than the limit can never be accepted: refused too.
      refused = absl::ResourceExhaustedError(absl::StrCat(
          "journal: ", pending_bytes_, " bytes pending + ", bytes,
          " would exceed max_pending_bytes ", options_.max_pending_bytes));
    } else {
      pending_bytes_ += bytes;
      ++pending_batches_;
      queue_.push_back(
          Pending{++last_seq_, std::move(batch), std::move(done), absl::Now()});
      work_cv_.Signal();
      return;
    }
    ++stats_.failed_commits;
    ++stats_.refused_commits;
  }
  done(std::move(refused));
}

void RocksJournal::WriterLoop() {
  std::vector<Pending> group;
  while (true) {
    absl::Status sticky;
    size_t group_bytes = 0;
    {
      absl::MutexLock lock(&mu_);
      while (queue_.empty() && !stopping_) work_cv_.Wait(&mu_);
      if (queue_.empty()) return;  // stopping, and every batch is done
      while (!queue_.empty() &&
             (group.empty() || group_bytes + queue_.front().batch.bytes() <=
                                   options_.max_group_bytes)) {
        group_bytes += queue_.front().batch.bytes();
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      sticky = sticky_;
    }

    int64_t write_micros = -1;
    absl::Status status = sticky.ok() ? WriteGroup(group, &write_micros) : sticky;
    // hold_on_no_space: the group waits for room, in order, instead of
    // failing; the retry comes from the writer's own timed wait (the next
    // recovery attempt), not from a loop.
    while (options_.hold_on_no_space && no_space_ && absl::IsResourceExhausted(status)) {
      {
        absl::MutexLock lock(&mu_);
        stats_.disk_full = true;
        const absl::Time retry = absl::Now() + options_.no_space_retry_interval;
        while (!stopping_ && absl::Now() < retry) work_cv_.WaitWithDeadline(&mu_, retry);
        if (stopping_) break;  // shutting down: the group fails, unapplied
      }
      status = WriteGroup(group, &write_micros);
    }
    if (options_.hold_on_no_space) {
      // Before the dones: whoever they answer sees the disk as it is now.
      absl::MutexLock lock(&mu_);
      stats_.disk_full = no_space_;
    }
    if (absl::IsUnavailable(status) && sticky.ok()) {
      // Sticky before any done runs: a done that commits again is refused.
      absl::MutexLock lock(&mu_);
      sticky_ = status;
    }

    uint64_t mutations = 0;
    for (const Pending& p : group) mutations += p.batch.size();
    const uint64_t last_seq = group.back().seq;
    const size_t batches = group.size();
    const absl::Time now = absl::Now();
    for (Pending& p : group) {
      commit_seconds_.Observe(now - p.enqueued);
      p.done(status);
      p.done = nullptr;  // captures destroyed with no lock held
    }
    group.clear();  // so are the batches

    absl::MutexLock lock(&mu_);
    done_seq_ = last_seq;
    pending_bytes_ -= group_bytes;
    pending_batches_ -= batches;
    if (status.ok()) {
      stats_.commits += batches;
      stats_.mutations += mutations;
      stats_.bytes += group_bytes;
    } else {
      stats_.failed_commits += batches;
    }
    if (write_micros >= 0) {
      ++stats_.syncs;
      stats_.max_batches_per_sync =
          std::max<uint64_t>(stats_.max_batches_per_sync, batches);
      stats_.sync_micros_total += write_micros;
      sync_seconds_.Observe(static_cast<double>(write_micros) / 1e6);
      group_batches_.Observe(static_cast<double>(batches));
      group_bytes_.Observe(static_cast<double>(group_bytes));
    }
    stats_.disk_full = no_space_;
    done_cv_.SignalAll();
  }
}

absl::Status RocksJournal::WriteGroup(const std::vector<Pending>& group,
                                      int64_t* write_micros) {
  *write_micros = -1;
  if (no_space_) RETURN_IF_ERROR(RecoverFromNoSpace());

  size_t reserve = 64;
  for (const Pending& p : group) reserve += p.batch.bytes();
  rocksdb::WriteBatch batch(reserve);
  for (const Pending& p : group) {
    for (const Mutation& m : p.batch.mutations()) {
      rocksdb::Status s;
      switch (m.op) {
        case Mutation::Op::kPut:
          s = batch.Put(m.key, m.value);
          break;
        case Mutation::Op::kDelete:
          s = batch.Delete(m.key);
          break;
        case Mutation::Op::kDeleteRange:
          if (m.key < m.value) s = batch.DeleteRange(m.key, m.value);
          break;
      }
      // Only keys or values of 4 GiB and more are refused.
      if (!s.ok()) return FromRocks(s, "building the write batch");
    }
  }
  if (batch.Count() == 0) return absl::OkStatus();

  absl::ReaderMutexLock lock(&db_mu_);
  if (db_ == nullptr) {  // only while no_space_: RecoverFromNoSpace() first
    return absl::InternalError("journal: no database handle");
  }
  const auto start = std::chrono::steady_clock::now();
  const rocksdb::Status s = db_->Write(write_options_, &batch);
  *write_micros = std::chrono::duration_cast<std::chrono::microseconds>(
                      std::chrono::steady_clock::now() - start)
                      .count();
  if (s.ok()) return absl::OkStatus();
  if (fs_->wal_sync_failed()) {
    return absl::UnavailableError(absl::StrCat(
        "journal: WAL sync failed, the outcome of the last write is unknown: ",
        s.ToString()));
  }
  if (s.IsNoSpace()) {
    no_space_ = true;
    next_recovery_ = absl::InfinitePast();
    return absl::ResourceExhaustedError(
        absl::StrCat("journal: disk full: ", s.ToString()));
  }
  return absl::UnavailableError(
      absl::StrCat("journal: write failed: ", s.ToString()));
}

absl::Status RocksJournal::RecoverFromNoSpace() {
  // Why not DB::Resume(): in RocksDB 7.8 it keeps writing to the WAL the
  // failed write tore when it has no memtable to flush (its writer refuses
  // that, and Debian's build, assertions on, aborts), and it blocks for good
  // when the flush it starts fails again. A reopen always starts a new WAL,
  // drops the torn tail (not acknowledged) and replays the rest; its cost
  // (about a second while a failed flush backs off) is paid once per
  // full-disk episode.
  const absl::Time now = absl::Now();
  if (now < next_recovery_) {
    return absl::ResourceExhaustedError(
        "journal: disk full (waiting before the next recovery attempt)");
  }
  next_recovery_ = now + options_.no_space_retry_interval;
  // The reopen flushes the unflushed WAL into a table: wait for room for
  // about that much. The database stays open for reads meanwhile.
  uint64_t needed = 1 << 20;
  ASSIGN_OR_RETURN(const std::vector<std::string> wals,
                   ListWals(env_.get(), options_.dir));
  for (const std::string& wal : wals) {
    uint64_t size = 0;
    if (env_->GetFileSize(wal, &size).ok()) needed += size;
  }
  const std::optional<uint64_t> free = fs_->FreeSpace(options_.dir);
  if (free.has_value() && *free < needed) {
    return absl::ResourceExhaustedError(
        absl::StrCat("journal: disk full: ", *free, " bytes free, ", needed,
                     " needed to recover"));
  }
  absl::MutexLock lock(&db_mu_);
  if (db_ != nullptr) {
    db_->Close().PermitUncheckedError();  // reports the write error again
    db_.reset();
  }
  absl::StatusOr<std::unique_ptr<rocksdb::DB>> db =
      OpenDb(options_, db_options_);
  if (!db.ok()) {
    // Still full: reads fail (UNAVAILABLE) until a later attempt succeeds.
    if (absl::IsResourceExhausted(db.status())) return db.status();
    return absl::UnavailableError(absl::StrCat(
        "journal: reopening after a full disk: ", db.status().message()));
  }
  db_ = std::move(*db);
  no_space_ = false;
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> RocksJournal::Get(
    absl::string_view key) const {
  absl::ReaderMutexLock lock(&db_mu_);
  if (db_ == nullptr) {
    return absl::UnavailableError("journal: reopening after a full disk");
  }
  std::string value;
  const rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), ToSlice(key), &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok()) return FromRocks(s, "get");
  return std::optional<std::string>(std::move(value));
}

absl::Status RocksJournal::Scan(
    absl::string_view begin, absl::string_view end,
    absl::FunctionRef<bool(absl::string_view, absl::string_view)> visit) const {
  absl::ReaderMutexLock lock(&db_mu_);
  if (db_ == nullptr) {
    return absl::UnavailableError("journal: reopening after a full disk");
  }
  rocksdb::ReadOptions read_options;  // an implicit snapshot
  // A scan reads a range once, in order (recovery reads everything): its
  // blocks are not kept in the block cache, and the file is read ahead.
  read_options.fill_cache = false;
  read_options.readahead_size = 2 << 20;
  const rocksdb::Slice upper = ToSlice(end);
  if (!end.empty()) read_options.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options));
  for (it->Seek(ToSlice(begin)); it->Valid(); it->Next()) {
    if (!visit(View(it->key()), View(it->value()))) break;
  }
  if (!it->status().ok()) return FromRocks(it->status(), "scan");
  return absl::OkStatus();
}

void RocksJournal::Flush() {
  absl::MutexLock lock(&mu_);
  const uint64_t target = last_seq_;
  while (done_seq_ < target) done_cv_.Wait(&mu_);
}

absl::Status RocksJournal::health() const {
  absl::MutexLock lock(&mu_);
  return sticky_;
}

JournalStats RocksJournal::stats() const {
  absl::MutexLock lock(&mu_);
  JournalStats stats = stats_;
  stats.sync_seconds = sync_seconds_.Snapshot();
  stats.group_batches = group_batches_.Snapshot();
  stats.group_bytes = group_bytes_.Snapshot();
  stats.commit_seconds = commit_seconds_.Snapshot();
  stats.pending_batches = pending_batches_;
  stats.pending_bytes = pending_bytes_;
  return stats;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Journal>> OpenRocksJournal(
    const RocksJournalOptions& options) {
  if (options.dir.empty()) {
    return absl::InvalidArgumentError("journal: no directory");
  }
  if (options.max_group_bytes == 0 || options.write_buffer_size == 0) {
    return absl::InvalidArgumentError(
        "journal: max_group_bytes and write_buffer_size must be positive");
  }
  rocksdb::Env* base =
      options.env != nullptr ? options.env : rocksdb::Env::Default();
  auto fs = std::make_shared<JournalFileSystem>(base->GetFileSystem());
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
  const rocksdb::Status s = env->CreateDirIfMissing(options.dir);
  if (!s.ok()) return FromRocks(s, absl::StrCat("creating ", options.dir));
  rocksdb::Options db_options =
      MakeDbOptions(options, env.get(),
                    std::make_shared<JournalLogger>(options.dir + "/LOG"));
  ASSIGN_OR_RETURN(std::unique_ptr<rocksdb::DB> db,
                   OpenDb(options, db_options));
  return std::unique_ptr<Journal>(
      new RocksJournal(options, std::move(env), std::move(fs),
                       std::move(db_options), std::move(db)));
}

}  // namespace forge::persist
