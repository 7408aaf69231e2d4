// The RocksDB journal beyond the contract: durability across reopen and
// SIGKILL, torn tails, corruption detection (WAL and SST), a full disk
// (a real size-limited tmpfs, and injected ENOSPC), sticky I/O errors.
#include "server/persist/rocksdb_journal.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rocksdb/env.h"
#include "tests/unit/persist/persist_test_util.h"

extern char** environ;

namespace forge::persist {
namespace {

using testing::FaultFileSystem;
using ::testing::HasSubstr;
using testing::kKeysPerBatch;
using testing::TempDir;

absl::StatusOr<std::unique_ptr<Journal>> Open(
    const std::string& dir, rocksdb::Env* env = nullptr,
    absl::Duration no_space_retry = absl::ZeroDuration(),
    size_t write_buffer_size = size_t{64} << 20) {
  RocksJournalOptions options;
  options.dir = dir;
  options.env = env;
  options.no_space_retry_interval = no_space_retry;
  options.write_buffer_size = write_buffer_size;
  return OpenRocksJournal(options);
}

std::unique_ptr<Journal> OpenOrDie(const std::string& dir,
                                   rocksdb::Env* env = nullptr,
                                   size_t write_buffer_size = size_t{64}
                                                              << 20) {
  absl::StatusOr<std::unique_ptr<Journal>> journal =
      Open(dir, env, absl::ZeroDuration(), write_buffer_size);
  EXPECT_TRUE(journal.ok()) << journal.status();
  return journal.ok() ? std::move(*journal) : nullptr;
}

absl::Status CommitSync(Journal& journal, Batch batch) {
  absl::Notification done;
  absl::Status result;
  journal.Commit(std::move(batch), [&](absl::Status status) {
    result = std::move(status);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

// True if `key` is there; a failed read fails the test.
bool Has(const Journal& journal, const std::string& key) {
  absl::StatusOr<std::optional<std::string>> value = journal.Get(key);
  EXPECT_TRUE(value.ok()) << value.status();
  return value.ok() && value->has_value();
}

// What a journal holds of the test batches of one prefix (MakeTestBatch).
struct Census {
  std::map<uint64_t, int> keys;  // batch index -> keys present
  int bad_values = 0;            // keys whose value is not the one written

  // True if exactly the batches [0, n) are there, each whole and intact.
  bool IsWholePrefix(uint64_t* n) const {
    *n = keys.size();
    if (bad_values != 0) return false;
    uint64_t expected = 0;
    for (const auto& [index, count] : keys) {
      if (index != expected++ || count != kKeysPerBatch) return false;
    }
    return true;
  }
};

Census TakeCensus(const Journal& journal, const std::string& prefix,
                  size_t value_size) {
  Census census;
  const std::string begin = prefix + "/";
  const absl::Status s = journal.Scan(
      begin, PrefixEnd(begin),
      [&](absl::string_view key, absl::string_view value) {
        // key: <prefix>/<index, 8 digits>/<j>
        uint64_t index = 0;
        int j = 0;
        const absl::string_view rest = key.substr(begin.size());
        if (rest.size() < 10 || !absl::SimpleAtoi(rest.substr(0, 8), &index) ||
            !absl::SimpleAtoi(rest.substr(9), &j)) {
          ++census.bad_values;
          return true;
        }
        ++census.keys[index];
        if (value != testing::BatchValue(prefix, index, j, value_size)) {
          ++census.bad_values;
        }
        return true;
      });
  EXPECT_TRUE(s.ok()) << s;
  return census;
}

// Runs persist_journal_child with `args`; fd 3 of the child is the write end
// of a pipe whose read end is returned.
struct Child {
  pid_t pid = -1;
  int acks = -1;
};

Child SpawnChild(const std::vector<std::string>& args) {
  Child child;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return child;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 3);
  std::vector<std::string> argv_strings = {FORGE_PERSIST_CHILD};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_strings) argv.push_back(a.data());
  argv.push_back(nullptr);
  if (posix_spawn(&child.pid, argv[0], &actions, nullptr, argv.data(),
                  environ) != 0) {
    child.pid = -1;
  }
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  child.acks = fds[0];
  return child;
}

// Waits for the child; its wait status.
int Reap(const Child& child) {
  int status = 0;
  while (waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {
  }
  close(child.acks);
  return status;
}

// Reads acknowledged batch indices (appended to *acks) until `deadline` has
// passed and at least `want_at_least` came, or EOF, or 30 s.
void ReadAcks(int fd, absl::Time deadline, std::vector<uint64_t>* acks,
              size_t want_at_least = 0) {
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (true) {
    const absl::Time now = absl::Now();
    const bool enough = acks->size() >= want_at_least;
    if ((enough && now >= deadline) || now >= give_up) return;
    const absl::Time until = enough ? deadline : give_up;
    struct pollfd p = {fd, POLLIN, 0};
    const int64_t wait_ms =
        std::max<int64_t>(1, absl::ToInt64Milliseconds(until - now));
    if (poll(&p, 1, static_cast<int>(wait_ms)) <= 0) continue;
    uint64_t index;
    if (read(fd, &index, sizeof(index)) != sizeof(index)) return;  // EOF
    acks->push_back(index);
  }
}

// Runs the child in "seq" mode to completion: `count` batches, each its own
// WAL record, and a database left unclosed.
void RunSeqChild(const std::string& dir, const std::string& prefix,
                 uint64_t count, size_t value_size, size_t last_value_size) {
  Child child =
      SpawnChild({"seq", dir, prefix, absl::StrCat(count),
                  absl::StrCat(value_size), absl::StrCat(last_value_size)});
  ASSERT_GT(child.pid, 0);
  const int status = Reap(child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

// --- Durability ------------------------------------------------------------

TEST(RocksJournalTest, ReopenKeepsEverythingAcknowledged) {
  TempDir dir;
  const std::string db = dir.Sub("db");
  {
    std::unique_ptr<Journal> journal = OpenOrDie(db);
    ASSERT_NE(journal, nullptr);
    for (uint64_t i = 0; i < 2000; ++i) {
      journal->Commit(testing::MakeTestBatch("p", i, 120),
                      [](absl::Status s) { ASSERT_TRUE(s.ok()) << s; });
    }
    Batch deletes;
    deletes.Put("gone/1", "x");
    deletes.Put("gone/2", "x");
    deletes.Put("kept", "x");
    journal->Commit(std::move(deletes), [](absl::Status) {});
    Batch more;
    more.DeleteRange("gone/", PrefixEnd("gone/"));
    more.Delete("never");
    journal->Commit(std::move(more), [](absl::Status) {});
    journal->Flush();
  }
  for (int reopen = 0; reopen < 2; ++reopen) {  // WAL replay, then the SSTs
    std::unique_ptr<Journal> journal = OpenOrDie(db);
    ASSERT_NE(journal, nullptr);
    uint64_t n = 0;
    EXPECT_TRUE(TakeCensus(*journal, "p", 120).IsWholePrefix(&n));
    EXPECT_EQ(n, 2000);
    EXPECT_TRUE(Has(*journal, "kept"));
    EXPECT_FALSE(Has(*journal, "gone/1"));
    EXPECT_FALSE(Has(*journal, "gone/2"));
  }
}

TEST(RocksJournalTest, GroupCommitSharesSyncs) {
  TempDir dir;
  std::unique_ptr<Journal> journal = OpenOrDie(dir.Sub("db"));
  ASSERT_NE(journal, nullptr);
  constexpr int kThreads = 4, kPerThread = 3000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        Batch batch;
        batch.Put(absl::StrCat("t", t, "/", i), std::string(180, 'v'));
        journal->Commit(std::move(batch),
                        [](absl::Status s) { EXPECT_TRUE(s.ok()) << s; });
      }
    });
  }
  for (std::thread& t : threads) t.join();
  journal->Flush();
  const JournalStats stats = journal->stats();
  EXPECT_EQ(stats.commits, kThreads * kPerThread);
  EXPECT_GT(stats.syncs, 0);
  // Commits queued during a write+sync share the next one.
  EXPECT_LT(stats.syncs, stats.commits / 4) << stats.syncs;
  EXPECT_GT(stats.max_batches_per_sync, 4);
  EXPECT_EQ(stats.sync_seconds.count, stats.syncs);
  EXPECT_GT(stats.sync_seconds.sum, 0);
  EXPECT_GT(stats.sync_micros_total, 0);
  // Every committed batch was in one group and had one commit latency.
  EXPECT_EQ(stats.group_batches.count, stats.syncs);
  EXPECT_EQ(stats.group_batches.sum, static_cast<double>(stats.commits));
  EXPECT_EQ(stats.commit_seconds.count, stats.commits);
  EXPECT_EQ(stats.group_bytes.sum, static_cast<double>(stats.bytes));
}

TEST(RocksJournalTest, UnsyncedModeSurvivesReopen) {
  TempDir dir;
  RocksJournalOptions options;
  options.dir = dir.Sub("db");
  options.sync = false;
  {
    absl::StatusOr<std::unique_ptr<Journal>> journal =
        OpenRocksJournal(options);
    ASSERT_TRUE(journal.ok()) << journal.status();
    for (uint64_t i = 0; i < 100; ++i) {
      (*journal)->Commit(testing::MakeTestBatch("u", i, 50),
                         [](absl::Status s) { EXPECT_TRUE(s.ok()); });
    }
  }
  std::unique_ptr<Journal> journal = OpenOrDie(options.dir);
  ASSERT_NE(journal, nullptr);
  uint64_t n = 0;
  EXPECT_TRUE(TakeCensus(*journal, "u", 50).IsWholePrefix(&n));
  EXPECT_EQ(n, 100);
}

TEST(RocksJournalTest, OpenErrors) {
  TempDir dir;
  EXPECT_TRUE(absl::IsInvalidArgument(Open("").status()));
  const absl::Status no_parent = Open(dir.Sub("missing/db")).status();
  EXPECT_FALSE(no_parent.ok());
  std::unique_ptr<Journal> first = OpenOrDie(dir.Sub("db"));
  ASSERT_NE(first, nullptr);
  const absl::Status locked = Open(dir.Sub("db")).status();
  EXPECT_TRUE(absl::IsUnavailable(locked)) << locked;
}

// --- Crashes ---------------------------------------------------------------

// A child commits batches in a loop and reports each acknowledged one; it is
// SIGKILLed at a random moment, several rounds on the same database. After
// each round every acknowledged batch is there and whole, and what is there
// is exactly a prefix of the batches committed (commit order, atomicity).
TEST(RocksJournalCrashTest, SigkillAtRandomMomentsLosesNothingAcknowledged) {
  TempDir dir;
  const std::string db = dir.Sub("db");
  constexpr int kRounds = 5;
  constexpr size_t kValueSize = 120;
  std::mt19937 random(std::random_device{}());
  std::vector<uint64_t> found(kRounds, 0);
  for (int round = 0; round < kRounds; ++round) {
    const std::string prefix = absl::StrCat("r", round);
    Child child = SpawnChild({"loop", db, prefix, absl::StrCat(kValueSize)});
    ASSERT_GT(child.pid, 0);
    std::vector<uint64_t> acks;
    // Wait for the first acknowledgement, then kill 10-150 ms later.
    ReadAcks(child.acks, absl::Now(), &acks, /*want_at_least=*/1);
    ASSERT_FALSE(acks.empty()) << "the child acknowledged nothing";
    const int delay_ms = std::uniform_int_distribution<int>(10, 150)(random);
    ReadAcks(child.acks, absl::Now() + absl::Milliseconds(delay_ms), &acks);
    ASSERT_EQ(kill(child.pid, SIGKILL), 0);
    ReadAcks(child.acks, absl::Now() + absl::Seconds(5), &acks);  // to EOF
    const int status = Reap(child);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the child failed on its own: " << status;
    for (size_t i = 0; i < acks.size(); ++i) ASSERT_EQ(acks[i], i);

    std::unique_ptr<Journal> journal = OpenOrDie(db);
    ASSERT_NE(journal, nullptr);
    for (int r = 0; r <= round; ++r) {
      uint64_t n = 0;
      const Census census =
          TakeCensus(*journal, absl::StrCat("r", r), kValueSize);
      ASSERT_TRUE(census.IsWholePrefix(&n))
          << "round " << r << ": a hole or a partial batch";
      if (r == round) {
        EXPECT_GE(n, acks.size()) << "acknowledged batches lost";
        found[r] = n;
      } else {
        EXPECT_EQ(n, found[r]) << "round " << r << " changed";
      }
    }
    fprintf(stderr, "round %d: %zu acknowledged, %llu found\n", round,
            acks.size(), static_cast<unsigned long long>(found[round]));
  }
}

TEST(RocksJournalCrashTest, TornTailIsDroppedAndTheRestIntact) {
  TempDir dir;
  const std::string db = dir.Sub("db");
  RunSeqChild(db, "t", 50, 100, 100);
  const std::string wal = testing::WalFiles(db).back();
  const uintmax_t size = std::filesystem::file_size(wal);
  ASSERT_EQ(truncate(wal.c_str(), size - 5), 0);  // tears the last record

  std::unique_ptr<Journal> journal = OpenOrDie(db);
  ASSERT_NE(journal, nullptr);
  uint64_t n = 0;
  EXPECT_TRUE(TakeCensus(*journal, "t", 100).IsWholePrefix(&n));
  EXPECT_EQ(n, 49);  // the torn batch is gone entirely
}

TEST(RocksJournalCrashTest, TornMultiBlockTailIsDroppedAndTheRestIntact) {
  TempDir dir;
  const std::string db = dir.Sub("db");
  // The last batch, 4 x 40 KB, is one logical record over several blocks.
  RunSeqChild(db, "t", 20, 100, 40000);
  const std::string wal = testing::WalFiles(db).back();
  const std::string image = testing::ReadFileOrDie(wal);
  const std::vector<testing::WalRecord> records = testing::ParseWal(image);
  auto first = std::find_if(records.rbegin(), records.rend(),
                            [](const testing::WalRecord& r) {
                              return r.type == 2;  // kFirstType
                            });
  ASSERT_NE(first, records.rend());
  const size_t cut = first->offset + (image.size() - first->offset) / 2;
  ASSERT_EQ(truncate(wal.c_str(), cut), 0);

  std::unique_ptr<Journal> journal = OpenOrDie(db);
  ASSERT_NE(journal, nullptr);
  uint64_t n = 0;
  EXPECT_TRUE(TakeCensus(*journal, "t", 100).IsWholePrefix(&n));
  EXPECT_EQ(n, 19);
}

// --- Corruption ------------------------------------------------------------

TEST(RocksJournalCorruptionTest, BitFlipInTheMiddleOfTheWalIsDataLoss) {
  TempDir dir;
  const std::string db = dir.Sub("db");
  RunSeqChild(db, "c", 200, 100, 100);
  const std::string wal = testing::WalFiles(db).back();
  std::string image = testing::ReadFileOrDie(wal);
  const size_t at = image.find(testing::BatchValue("c", 100, 2, 100));
  ASSERT_NE(at, std::string::npos);
  image[at + 50] ^= 0x04;
  testing::WriteFileOrDie(wal, image);

  for (int attempt = 0; attempt < 2; ++attempt) {  // nothing was "repaired"
    const absl::Status s = Open(db).status();
    EXPECT_TRUE(absl::IsDataLoss(s)) << s;
    EXPECT_THAT(s.message(), HasSubstr(wal));
    EXPECT_THAT(s.message(), HasSubstr("checksum mismatch"));
  }
  EXPECT_EQ(testing::ReadFileOrDie(wal), image);
}

TEST(RocksJournalCorruptionTest, CorruptLengthInTheLastBlockIsDataLoss) {
  // RocksDB 7.8 takes a record running past the end of the file for a torn
  // tail and drops it and everything after it; here valid records follow.
  TempDir dir;
  const std::string db = dir.Sub("db");
  RunSeqChild(db, "c", 200, 100, 100);
  const std::string wal = testing::WalFiles(db).back();
  std::string image = testing::ReadFileOrDie(wal);
  const size_t last_block = image.size() / 32768 * 32768;
  const std::vector<testing::WalRecord> records = testing::ParseWal(image);
  std::vector<testing::WalRecord> in_last;
  for (const auto& r : records) {
    if (r.offset >= last_block) in_last.push_back(r);
  }
  ASSERT_GE(in_last.size(), 3u) << "want records after the damaged one";
  image[in_last[0].offset + 4] = '\xff';  // length 0x7fff: past the end
  image[in_last[0].offset + 5] = '\x7f';
  testing::WriteFileOrDie(wal, image);

  const absl::Status s = Open(db).status();
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr(wal));
  EXPECT_THAT(s.message(),
              HasSubstr(absl::StrCat("offset ", in_last[0].offset)));
  EXPECT_THAT(s.message(), HasSubstr("valid record follows"));
}

TEST(RocksJournalCorruptionTest, ZeroedHeaderHidingRecordsIsDataLoss) {
  // RocksDB 7.8 skips the rest of a block after a zero header.
  TempDir dir;
  const std::string db = dir.Sub("db");
  RunSeqChild(db, "c", 200, 100, 100);
  const std::string wal = testing::WalFiles(db).back();
  std::string image = testing::ReadFileOrDie(wal);
  const std::vector<testing::WalRecord> records = testing::ParseWal(image);
  ASSERT_GT(records.size(), 20u);
  const testing::WalRecord victim = records[10];  // in the first, full block
  ASSERT_LT(victim.offset + 1000, 32768u);
  ASSERT_GT(image.size(), 32768u);
  std::fill(image.begin() + victim.offset, image.begin() + victim.offset + 7,
            '\0');
  testing::WriteFileOrDie(wal, image);

  const absl::Status s = Open(db).status();
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("zeroed record header"));
}

TEST(RocksJournalCorruptionTest, SstCorruptionIsDataLoss) {
  TempDir dir;
  const std::string db = dir.Sub("db");
  {
    std::unique_ptr<Journal> journal = OpenOrDie(db);
    ASSERT_NE(journal, nullptr);
    for (uint64_t i = 0; i < 3000; ++i) {
      journal->Commit(testing::MakeTestBatch("s", i, 100), [](absl::Status) {});
    }
    journal->Flush();
  }
  { ASSERT_NE(OpenOrDie(db), nullptr); }  // recovery writes the SST
  std::string sst;
  for (const auto& entry : std::filesystem::directory_iterator(db)) {
    if (entry.path().extension() == ".sst" &&
        (sst.empty() || entry.file_size() > std::filesystem::file_size(sst))) {
      sst = entry.path().string();
    }
  }
  ASSERT_FALSE(sst.empty());
  std::string image = testing::ReadFileOrDie(sst);
  ASSERT_GT(image.size(), 100000u);
  image[image.size() / 3] ^= 0x10;  // a data block
  testing::WriteFileOrDie(sst, image);

  RocksJournalOptions options;
  options.dir = db;
  options.verify_checksums_on_open = true;
  const absl::Status verified = OpenRocksJournal(options).status();
  EXPECT_TRUE(absl::IsDataLoss(verified)) << verified;
  EXPECT_THAT(verified.message(), HasSubstr(".sst"));

  // Without the full check the open succeeds and the read reports it.
  std::unique_ptr<Journal> journal = OpenOrDie(db);
  ASSERT_NE(journal, nullptr);
  const absl::Status scan = journal->Scan(
      "", "", [](absl::string_view, absl::string_view) { return true; });
  EXPECT_TRUE(absl::IsDataLoss(scan)) << scan;
}

// --- A full disk -----------------------------------------------------------

// Commits one batch at a time until one fails; returns the failed indices'
// first and whether it was RESOURCE_EXHAUSTED.
struct FillResult {
  uint64_t next = 0;  // index of the first failed batch
  absl::Status failure;
};
FillResult CommitUntilFailure(Journal& journal, const std::string& prefix,
                              uint64_t first, uint64_t limit) {
  FillResult result{first, absl::OkStatus()};
  for (; result.next < limit; ++result.next) {
    result.failure =
        CommitSync(journal, testing::MakeTestBatch(prefix, result.next, 200));
    if (!result.failure.ok()) return result;
  }
  return result;
}

// Checks that batches [0, acknowledged) of `prefix` are there and whole and
// nothing of the ones after.
void ExpectExactly(const Journal& journal, const std::string& prefix,
                   uint64_t acknowledged) {
  uint64_t n = 0;
  EXPECT_TRUE(TakeCensus(journal, prefix, 200).IsWholePrefix(&n));
  EXPECT_EQ(n, acknowledged) << prefix;
}

TEST(RocksJournalDiskFullTest, TmpfsFullThenFreed) {
  TempDir dir;
  const std::string mnt = dir.Sub("mnt");
  ASSERT_EQ(mkdir(mnt.c_str(), 0755), 0);
  char old_cwd[4096];
  ASSERT_NE(getcwd(old_cwd, sizeof(old_cwd)), nullptr);
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=8m") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs (" << strerror(errno)
                 << "); InjectedNoSpace* cover ENOSPC";
  }
  // Work in the mount through the current directory and detach it at once:
  // it stays usable through the cwd (relative paths) and disappears with the
  // process, however the test ends, so no mount is ever left behind.
  if (chdir(mnt.c_str()) != 0) {
    umount2(mnt.c_str(), MNT_DETACH);
    FAIL() << "chdir " << mnt << ": " << strerror(errno);
  }
  ASSERT_EQ(umount2(mnt.c_str(), MNT_DETACH), 0) << strerror(errno);
  absl::Cleanup leave = [&old_cwd] { ASSERT_EQ(chdir(old_cwd), 0); };
  const std::string db = "db";
  const std::string filler = "filler";
  auto fill = [&filler] {
    const int fd = open(filler.c_str(), O_WRONLY | O_CREAT, 0644);
    ASSERT_GE(fd, 0);
    const std::string chunk(64 << 10, 'f');
    while (write(fd, chunk.data(), chunk.size()) > 0) {
    }
    close(fd);
  };
  FillResult full, full2;
  {
    std::unique_ptr<Journal> journal =
        OpenOrDie(db, nullptr, /*write_buffer_size=*/512 << 10);
    ASSERT_NE(journal, nullptr);
    FillResult before = CommitUntilFailure(*journal, "a", 0, 100);
    ASSERT_TRUE(before.failure.ok()) << before.failure;

    fill();
    // The WAL's preallocated space lets a few more through, then ENOSPC.
    full = CommitUntilFailure(*journal, "b", 0, 20000);
    ASSERT_TRUE(absl::IsResourceExhausted(full.failure)) << full.failure;
    for (int i = 0; i < 3; ++i) {
      const absl::Status again =
          CommitSync(*journal, testing::MakeTestBatch("c", 0, 200));
      EXPECT_TRUE(absl::IsResourceExhausted(again)) << again;
    }
    EXPECT_TRUE(journal->health().ok()) << "a full disk must not be sticky";
    EXPECT_TRUE(journal->stats().disk_full);
    // The database stays open for reads while the disk is full.
    EXPECT_TRUE(Has(*journal, testing::BatchKeyPrefix("a", 0) + "0"));

    ASSERT_EQ(unlink(filler.c_str()), 0);
    FillResult after = CommitUntilFailure(*journal, "c", 0, 50);
    EXPECT_TRUE(after.failure.ok()) << after.failure;
    EXPECT_FALSE(journal->stats().disk_full);
    ExpectExactly(*journal, "a", 100);
    ExpectExactly(*journal, "b", full.next);
    ExpectExactly(*journal, "c", 50);
    fprintf(stderr, "%llu batches went in before ENOSPC\n",
            static_cast<unsigned long long>(full.next));

    // And once more, full again then freed.
    fill();
    full2 = CommitUntilFailure(*journal, "d", 0, 20000);
    EXPECT_TRUE(absl::IsResourceExhausted(full2.failure)) << full2.failure;
    ASSERT_EQ(unlink(filler.c_str()), 0);
    FillResult after2 = CommitUntilFailure(*journal, "e", 0, 10);
    EXPECT_TRUE(after2.failure.ok()) << after2.failure;
    ExpectExactly(*journal, "d", full2.next);
  }
  std::unique_ptr<Journal> journal = OpenOrDie(db);
  ASSERT_NE(journal, nullptr);
  ExpectExactly(*journal, "a", 100);
  ExpectExactly(*journal, "b", full.next);
  ExpectExactly(*journal, "c", 50);
  ExpectExactly(*journal, "d", full2.next);
  ExpectExactly(*journal, "e", 10);
}

class InjectedFaultTest : public ::testing::Test {
 protected:
  InjectedFaultTest()
      : fs_(std::make_shared<FaultFileSystem>(rocksdb::FileSystem::Default())),
        env_(rocksdb::NewCompositeEnv(fs_)),
        db_(dir_.Sub("db")) {}

  TempDir dir_;
  std::shared_ptr<FaultFileSystem> fs_;
  std::unique_ptr<rocksdb::Env> env_;
  const std::string db_;
};

TEST_F(InjectedFaultTest, InjectedNoSpaceWithDataInTheMemtable) {
  {
    std::unique_ptr<Journal> journal = OpenOrDie(db_, env_.get());
    ASSERT_NE(journal, nullptr);
    ASSERT_TRUE(CommitUntilFailure(*journal, "a", 0, 30).failure.ok());
    fs_->set_fault(FaultFileSystem::Fault::kNoSpace);
    for (int i = 0; i < 3; ++i) {
      const absl::Status s =
          CommitSync(*journal, testing::MakeTestBatch("b", i, 200));
      EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
    }
    EXPECT_TRUE(journal->health().ok());
    EXPECT_TRUE(journal->stats().disk_full);
    EXPECT_TRUE(Has(*journal, testing::BatchKeyPrefix("a", 3) + "1"));
    fs_->set_fault(FaultFileSystem::Fault::kNone);
    ASSERT_TRUE(CommitUntilFailure(*journal, "c", 0, 30).failure.ok());
    ExpectExactly(*journal, "a", 30);
    ExpectExactly(*journal, "b", 0);
    ExpectExactly(*journal, "c", 30);
  }
  std::unique_ptr<Journal> journal = OpenOrDie(db_);
  ASSERT_NE(journal, nullptr);
  ExpectExactly(*journal, "a", 30);
  ExpectExactly(*journal, "b", 0);
  ExpectExactly(*journal, "c", 30);
}

TEST_F(InjectedFaultTest, InjectedNoSpaceWithAnEmptyMemtable) {
  {
    std::unique_ptr<Journal> journal = OpenOrDie(db_, env_.get());
    ASSERT_NE(journal, nullptr);
    fs_->set_fault(FaultFileSystem::Fault::kNoSpace);
    for (int i = 0; i < 3; ++i) {
      const absl::Status s =
          CommitSync(*journal, testing::MakeTestBatch("b", i, 200));
      EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
    }
    EXPECT_TRUE(journal->health().ok());
    fs_->set_fault(FaultFileSystem::Fault::kNone);
    ASSERT_TRUE(CommitUntilFailure(*journal, "c", 0, 30).failure.ok());
    ExpectExactly(*journal, "b", 0);
    ExpectExactly(*journal, "c", 30);
  }
  std::unique_ptr<Journal> journal = OpenOrDie(db_);
  ASSERT_NE(journal, nullptr);
  ExpectExactly(*journal, "b", 0);
  ExpectExactly(*journal, "c", 30);
}

TEST_F(InjectedFaultTest, InjectedNoSpaceWhileFreeSpaceIsMisreported) {
  // The file system claims room it does not have: the reopen attempts fail
  // too (reads are unavailable meanwhile), until the space is really there.
  std::unique_ptr<Journal> journal = OpenOrDie(db_, env_.get());
  ASSERT_NE(journal, nullptr);
  ASSERT_TRUE(CommitUntilFailure(*journal, "a", 0, 30).failure.ok());
  fs_->set_free_space_lies(true);
  fs_->set_fault(FaultFileSystem::Fault::kNoSpace);
  for (int i = 0; i < 4; ++i) {
    const absl::Status s =
        CommitSync(*journal, testing::MakeTestBatch("b", i, 200));
    EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  }
  EXPECT_TRUE(journal->health().ok());
  const absl::Status read =
      journal->Get(testing::BatchKeyPrefix("a", 0) + "0").status();
  EXPECT_TRUE(read.ok() || absl::IsUnavailable(read)) << read;
  fs_->set_fault(FaultFileSystem::Fault::kNone);
  ASSERT_TRUE(CommitUntilFailure(*journal, "c", 0, 30).failure.ok());
  ExpectExactly(*journal, "a", 30);
  ExpectExactly(*journal, "b", 0);
  ExpectExactly(*journal, "c", 30);
}

TEST_F(InjectedFaultTest, IoErrorIsStickyUnavailable) {
  {
    std::unique_ptr<Journal> journal = OpenOrDie(db_, env_.get());
    ASSERT_NE(journal, nullptr);
    ASSERT_TRUE(CommitUntilFailure(*journal, "a", 0, 20).failure.ok());
    fs_->set_fault(FaultFileSystem::Fault::kAppendError);
    // Several queued behind the failing write fail with it.
    std::atomic<int> unavailable{0};
    for (uint64_t i = 0; i < 10; ++i) {
      journal->Commit(testing::MakeTestBatch("b", i, 200), [&](absl::Status s) {
        EXPECT_TRUE(absl::IsUnavailable(s)) << s;
        unavailable.fetch_add(1);
      });
    }
    journal->Flush();
    EXPECT_EQ(unavailable.load(), 10);
    EXPECT_TRUE(absl::IsUnavailable(journal->health()));
    fs_->set_fault(FaultFileSystem::Fault::kNone);
    bool refused_inline = false;
    journal->Commit(testing::MakeTestBatch("c", 0, 200), [&](absl::Status s) {
      EXPECT_TRUE(absl::IsUnavailable(s)) << s;
      refused_inline = true;
    });
    EXPECT_TRUE(refused_inline) << "sticky: refused at once";
    EXPECT_TRUE(absl::IsUnavailable(journal->health()));
    // Reads still work.
    EXPECT_TRUE(Has(*journal, testing::BatchKeyPrefix("a", 0) + "0"));
  }
  std::unique_ptr<Journal> journal = OpenOrDie(db_);  // "after a restart"
  ASSERT_NE(journal, nullptr);
  EXPECT_TRUE(journal->health().ok());
  ExpectExactly(*journal, "a", 20);
  ExpectExactly(*journal, "b", 0);
  ExpectExactly(*journal, "c", 0);
}

TEST_F(InjectedFaultTest, FailedSyncIsStickyEvenWithNoSpace) {
  // The record was written, only its sync failed: not a retryable ENOSPC.
  {
    std::unique_ptr<Journal> journal = OpenOrDie(db_, env_.get());
    ASSERT_NE(journal, nullptr);
    ASSERT_TRUE(CommitUntilFailure(*journal, "a", 0, 20).failure.ok());
    fs_->set_fault(FaultFileSystem::Fault::kSyncNoSpace);
    const absl::Status s =
        CommitSync(*journal, testing::MakeTestBatch("b", 0, 200));
    EXPECT_TRUE(absl::IsUnavailable(s)) << s;
    EXPECT_THAT(s.message(), HasSubstr("sync"));
    fs_->set_fault(FaultFileSystem::Fault::kNone);
    EXPECT_TRUE(absl::IsUnavailable(
        CommitSync(*journal, testing::MakeTestBatch("b", 1, 200))));
  }
  std::unique_ptr<Journal> journal = OpenOrDie(db_);
  ASSERT_NE(journal, nullptr);
  ExpectExactly(*journal, "a", 20);
  uint64_t n = 0;
  // The batch of the failed sync: whole or absent, the next one absent.
  EXPECT_TRUE(TakeCensus(*journal, "b", 200).IsWholePrefix(&n));
  EXPECT_LE(n, 1u);
}

// --- Throughput (manual) ----------------------------------------------------

// 1,000,000 records of 200 B (key + value), one record per batch, from 4
// threads, fsync per group. Run by hand:
//   persist_test --gtest_also_run_disabled_tests --gtest_filter='*Throughput*'
// FORGE_BENCH_MAX_GROUP_BYTES overrides RocksJournalOptions::max_group_bytes.
TEST(RocksJournalBench, DISABLED_Throughput) {
  TempDir dir;
  RocksJournalOptions options;
  options.dir = dir.Sub("db");
  if (const char* v = std::getenv("FORGE_BENCH_MAX_GROUP_BYTES")) {
    ASSERT_TRUE(absl::SimpleAtoi(v, &options.max_group_bytes)) << v;
  }
  absl::StatusOr<std::unique_ptr<Journal>> opened = OpenRocksJournal(options);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::unique_ptr<Journal> journal = std::move(*opened);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 250000;
  constexpr int kMaxInFlight = 16384;  // per thread, as flow control would
  struct Producer {
    absl::Mutex mu;
    absl::CondVar room;
    int in_flight = 0;
  };
  std::vector<Producer> producers(kThreads);
  std::atomic<int> failures{0};
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Producer& me = producers[t];
      const std::string value(180, 'v');
      for (int i = 0; i < kPerThread; ++i) {
        {
          absl::MutexLock lock(&me.mu);
          while (me.in_flight >= kMaxInFlight) me.room.Wait(&me.mu);
          ++me.in_flight;
        }
        Batch batch;
        batch.Reserve(1);
        batch.Put(absl::StrFormat("t%d/%012d/xxxxx", t, i), value);  // 21 B
        journal->Commit(std::move(batch), [&me, &failures](absl::Status s) {
          if (!s.ok()) failures.fetch_add(1);
          absl::MutexLock lock(&me.mu);
          --me.in_flight;
          me.room.Signal();
        });
      }
    });
  }
  for (std::thread& t : threads) t.join();
  journal->Flush();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  const JournalStats stats = journal->stats();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(stats.commits, uint64_t{kThreads} * kPerThread);
  printf(
      "max_group_bytes %zu: %d records in %.2f s: %.0f records/s, "
      "%llu syncs (%.0f/s), %.1f batches per sync (max %llu), mean "
      "write+sync %.0f us\n",
      options.max_group_bytes, kThreads * kPerThread, seconds,
      kThreads * kPerThread / seconds,
      static_cast<unsigned long long>(stats.syncs), stats.syncs / seconds,
      static_cast<double>(stats.commits) / stats.syncs,
      static_cast<unsigned long long>(stats.max_batches_per_sync),
      static_cast<double>(stats.sync_micros_total) / stats.syncs);
}

// One committer, one batch at a time: the latency of a lone commit (one
// write + fdatasync). Run by hand like the one above.
TEST(RocksJournalBench, DISABLED_LoneCommitLatency) {
  TempDir dir;
  std::unique_ptr<Journal> journal = OpenOrDie(dir.Sub("db"));
  ASSERT_NE(journal, nullptr);
  std::vector<double> micros;
  for (int i = 0; i < 1000; ++i) {
    Batch batch;
    batch.Put(absl::StrCat("k", i), std::string(180, 'v'));
    const auto start = std::chrono::steady_clock::now();
    ASSERT_TRUE(CommitSync(*journal, std::move(batch)).ok());
    micros.push_back(std::chrono::duration<double, std::micro>(
                         std::chrono::steady_clock::now() - start)
                         .count());
  }
  std::sort(micros.begin(), micros.end());
  printf("lone commit: p50 %.0f us, p90 %.0f us, p99 %.0f us\n",
         micros[micros.size() / 2], micros[micros.size() * 9 / 10],
         micros[micros.size() * 99 / 100]);
}

}  // namespace
}  // namespace forge::persist
