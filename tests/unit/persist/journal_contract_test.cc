// The Journal contract, run against every implementation: the memory journal
// (inline callbacks, and with its callback thread) and the RocksDB journal.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/persist/journal.h"
#include "server/persist/memory_journal.h"
#include "server/persist/rocksdb_journal.h"
#include "tests/unit/persist/persist_test_util.h"

namespace forge::persist {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

struct Impl {
  std::string name;
  // True if dones of accepted batches run on the committing thread.
  bool inline_callbacks = false;
  std::function<std::unique_ptr<Journal>(const std::string& dir,
                                         size_t max_pending_bytes)>
      open;
};

std::ostream& operator<<(std::ostream& os, const Impl& impl) {
  return os << impl.name;
}

std::vector<Impl> Impls() {
  return {
      {"MemoryInline", true,
       [](const std::string&, size_t max_pending_bytes) {
         MemoryJournalOptions options;
         options.max_pending_bytes = max_pending_bytes;
         return NewMemoryJournal(options);
       }},
      {"MemoryCallbackThread", false,
       [](const std::string&, size_t max_pending_bytes) {
         MemoryJournalOptions options;
         options.max_pending_bytes = max_pending_bytes;
         options.inline_callbacks = false;
         return NewMemoryJournal(options);
       }},
      {"RocksDB", false,
       [](const std::string& dir, size_t max_pending_bytes) {
         RocksJournalOptions options;
         options.dir = dir;
         options.max_pending_bytes = max_pending_bytes;
         absl::StatusOr<std::unique_ptr<Journal>> journal =
             OpenRocksJournal(options);
         EXPECT_TRUE(journal.ok()) << journal.status();
         return journal.ok() ? std::move(*journal) : nullptr;
       }},
  };
}

class JournalContractTest : public ::testing::TestWithParam<Impl> {
 protected:
  void SetUp() override { Open(size_t{256} << 20); }

  void Open(size_t max_pending_bytes) {
    journal_.reset();
    journal_ = GetParam().open(dir_.Sub("db"), max_pending_bytes);
    ASSERT_NE(journal_, nullptr);
  }

  // Commits and waits for the done; returns its status.
  absl::Status CommitSync(Batch batch) {
    absl::Notification done;
    absl::Status result;
    journal_->Commit(std::move(batch), [&](absl::Status status) {
      result = std::move(status);
      done.Notify();
    });
    done.WaitForNotification();
    return result;
  }

  std::optional<std::string> GetOrDie(absl::string_view key) {
    absl::StatusOr<std::optional<std::string>> value = journal_->Get(key);
    EXPECT_TRUE(value.ok()) << value.status();
    return value.ok() ? *value : std::nullopt;
  }

  std::vector<std::pair<std::string, std::string>> ScanAll(
      absl::string_view begin = "", absl::string_view end = "") {
    std::vector<std::pair<std::string, std::string>> out;
    const absl::Status s = journal_->Scan(
        begin, end, [&](absl::string_view k, absl::string_view v) {
          out.emplace_back(std::string(k), std::string(v));
          return true;
        });
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }

  testing::TempDir dir_;
  std::unique_ptr<Journal> journal_;
};

TEST_P(JournalContractTest, PutGetDelete) {
  Batch put;
  put.Put("a", "1");
  put.Put("b", std::string(1000, 'x'));
  put.Put("", "empty key");
  ASSERT_TRUE(CommitSync(std::move(put)).ok());
  EXPECT_EQ(GetOrDie("a"), "1");
  EXPECT_EQ(GetOrDie("b"), std::string(1000, 'x'));
  EXPECT_EQ(GetOrDie(""), "empty key");
  EXPECT_EQ(GetOrDie("c"), std::nullopt);

  Batch overwrite;
  overwrite.Put("a", "2");
  overwrite.Delete("b");
  overwrite.Delete("never-there");
  ASSERT_TRUE(CommitSync(std::move(overwrite)).ok());
  EXPECT_EQ(GetOrDie("a"), "2");
  EXPECT_EQ(GetOrDie("b"), std::nullopt);
  EXPECT_THAT(ScanAll(), ElementsAre(Pair("", "empty key"), Pair("a", "2")));
}

TEST_P(JournalContractTest, DeleteRangeIsHalfOpen) {
  Batch batch;
  for (char c = 'a'; c <= 'h'; ++c) batch.Put(std::string(1, c), "v");
  batch.Put("c0", "v");
  ASSERT_TRUE(CommitSync(std::move(batch)).ok());

  Batch range;
  range.DeleteRange("c", "f");  // c, c0, d, e
  range.DeleteRange("h", "a");  // end <= begin: nothing
  range.DeleteRange("g", "g");
  ASSERT_TRUE(CommitSync(std::move(range)).ok());
  std::string keys;
  for (const auto& [k, v] : ScanAll()) keys += k + ",";
  EXPECT_EQ(keys, "a,b,f,g,h,");
}

TEST_P(JournalContractTest, ScanIsBytewiseBoundedAndStops) {
  Batch batch;
  for (const std::string& k :
       {std::string("b"), std::string("a"), std::string("ab"),
        std::string("a\xff"), std::string("\xff"), std::string("\x01"),
        std::string("b\0x", 3)}) {
    batch.Put(k, "v");
  }
  ASSERT_TRUE(CommitSync(std::move(batch)).ok());

  std::vector<std::string> keys;
  for (const auto& [k, v] : ScanAll()) keys.push_back(k);
  EXPECT_THAT(keys, ElementsAre("\x01", "a", "ab", "a\xff", "b",
                                std::string("b\0x", 3), "\xff"));

  keys.clear();
  for (const auto& [k, v] : ScanAll("a", PrefixEnd("a"))) keys.push_back(k);
  EXPECT_THAT(keys, ElementsAre("a", "ab", "a\xff"));

  keys.clear();
  for (const auto& [k, v] : ScanAll("ab", "b")) keys.push_back(k);
  EXPECT_THAT(keys, ElementsAre("ab", "a\xff"));

  keys.clear();
  for (const auto& [k, v] : ScanAll("b", "")) keys.push_back(k);  // unbounded
  EXPECT_THAT(keys, ElementsAre("b", std::string("b\0x", 3), "\xff"));

  int visited = 0;
  ASSERT_TRUE(journal_
                  ->Scan("", "",
                         [&](absl::string_view, absl::string_view) {
                           return ++visited < 3;
                         })
                  .ok());
  EXPECT_EQ(visited, 3);

  EXPECT_EQ(PrefixEnd("a\xff\xff"), "b");
  EXPECT_EQ(PrefixEnd("\xff"), "");
  EXPECT_EQ(PrefixEnd(""), "");
}

TEST_P(JournalContractTest, MutationsOfABatchApplyInOrder) {
  Batch batch;
  batch.Put("k1", "gone");
  batch.Delete("k1");
  batch.Put("k2", "gone");
  batch.DeleteRange("k2", "k3");
  batch.DeleteRange("k4", "k5");
  batch.Put("k4", "kept");  // after the range delete
  batch.Put("k5", "first");
  batch.Put("k5", "second");
  ASSERT_TRUE(CommitSync(std::move(batch)).ok());
  EXPECT_THAT(ScanAll(), ElementsAre(Pair("k4", "kept"), Pair("k5", "second")));
}

TEST_P(JournalContractTest, BatchesApplyInCommitOrderAndDonesRunInOrder) {
  constexpr int kBatches = 500;
  absl::Mutex mu;
  std::vector<int> order;
  for (int i = 0; i < kBatches; ++i) {
    Batch batch;
    batch.Put("last", absl::StrCat(i));
    batch.Put(absl::StrCat("k", i), "v");
    journal_->Commit(std::move(batch), [i, &mu, &order](absl::Status status) {
      EXPECT_TRUE(status.ok()) << status;
      absl::MutexLock lock(&mu);
      order.push_back(i);
    });
  }
  journal_->Flush();
  {
    absl::MutexLock lock(&mu);
    ASSERT_EQ(order.size(), kBatches);
    for (int i = 0; i < kBatches; ++i) ASSERT_EQ(order[i], i);
  }
  EXPECT_EQ(GetOrDie("last"), absl::StrCat(kBatches - 1));
  EXPECT_EQ(ScanAll("k", PrefixEnd("k")).size(), kBatches);
}

TEST_P(JournalContractTest, FlushWaitsForEveryEarlierDone) {
  std::atomic<int> done{0};
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 50; ++i) {
      Batch batch;
      batch.Put(absl::StrCat("r", round, "/", i), "v");
      journal_->Commit(std::move(batch), [&done](absl::Status status) {
        EXPECT_TRUE(status.ok());
        done.fetch_add(1);
      });
    }
    journal_->Flush();
    ASSERT_EQ(done.load(), (round + 1) * 50);
  }
  journal_->Flush();  // nothing pending: returns at once
}

TEST_P(JournalContractTest, EmptyBatchCompletesAfterEarlierOnes) {
  std::atomic<int> done{0};
  Batch batch;
  batch.Put("a", "1");
  journal_->Commit(std::move(batch), [&done](absl::Status) { done = 1; });
  // An atomic, not a plain int: TSan cannot see absl::Notification's
  // ordering inside Debian's uninstrumented Abseil.
  std::atomic<int> seen_by_empty{-1};
  absl::Notification empty_done;
  journal_->Commit(Batch(), [&](absl::Status status) {
    EXPECT_TRUE(status.ok());
    seen_by_empty = done.load();
    empty_done.Notify();
  });
  empty_done.WaitForNotification();
  EXPECT_EQ(seen_by_empty.load(), 1);
}

TEST_P(JournalContractTest, ConcurrentCommittersEveryDoneOnceAllDataThere) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 1500;
  std::vector<std::atomic<int>> calls(kThreads * kPerThread);
  std::vector<std::vector<int>> seen(kThreads);  // dones, per thread, in order
  absl::Mutex mu;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        Batch batch;
        batch.Put(absl::StrCat("t", t, "/", i, "/a"), absl::StrCat(i));
        batch.Put(absl::StrCat("t", t, "/", i, "/b"), std::string(150, 'b'));
        journal_->Commit(std::move(batch), [&, t, i](absl::Status status) {
          EXPECT_TRUE(status.ok()) << status;
          calls[t * kPerThread + i].fetch_add(1);
          absl::MutexLock lock(&mu);
          seen[t].push_back(i);
        });
      }
    });
  }
  for (std::thread& t : threads) t.join();
  journal_->Flush();
  for (const auto& c : calls) ASSERT_EQ(c.load(), 1);
  absl::MutexLock lock(&mu);
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_EQ(seen[t].size(), kPerThread);
    for (int i = 0; i < kPerThread; ++i) ASSERT_EQ(seen[t][i], i) << t;
  }
  EXPECT_EQ(ScanAll().size(), 2 * kThreads * kPerThread);
  const JournalStats stats = journal_->stats();
  EXPECT_EQ(stats.commits, kThreads * kPerThread);
  EXPECT_EQ(stats.mutations, 2 * kThreads * kPerThread);
  EXPECT_EQ(stats.pending_batches, 0);
  EXPECT_EQ(stats.pending_bytes, 0);
}

TEST_P(JournalContractTest, ReadersNeverSeeHalfABatch) {
  // Each batch writes "a/<i>" and "z/<i>": keys far apart, so a scan that saw
  // half a batch would count them differently.
  std::atomic<bool> stop{false};
  std::atomic<int> scans{0};
  std::thread reader([&] {
    while (!stop.load()) {
      int a = 0, z = 0;
      ASSERT_TRUE(journal_
                      ->Scan("", "",
                             [&](absl::string_view k, absl::string_view) {
                               (k[0] == 'a' ? a : z)++;
                               return true;
                             })
                      .ok());
      ASSERT_EQ(a, z);
      scans.fetch_add(1);
    }
  });
  for (int i = 0; i < 300; ++i) {
    Batch batch;
    batch.Put(absl::StrCat("a/", i), "v");
    batch.Put(absl::StrCat("z/", i), "v");
    journal_->Commit(std::move(batch),
                     [](absl::Status s) { EXPECT_TRUE(s.ok()); });
    if (i % 50 == 0) journal_->Flush();
  }
  journal_->Flush();
  while (scans.load() < 3) std::this_thread::yield();
  stop = true;
  reader.join();
}

TEST_P(JournalContractTest, DoneMayCommitAgain) {
  // A chain: each done commits the next batch. No lock is held in a done.
  constexpr int kChain = 100;
  absl::Notification finished;
  std::function<void(int)> commit_next = [&](int i) {
    Batch batch;
    batch.Put(absl::StrCat("chain/", 1000 + i), "v");
    journal_->Commit(std::move(batch), [&, i](absl::Status status) {
      EXPECT_TRUE(status.ok());
      if (i + 1 < kChain) {
        commit_next(i + 1);
      } else {
        finished.Notify();
      }
    });
  };
  commit_next(0);
  finished.WaitForNotification();
  EXPECT_EQ(ScanAll("chain/", PrefixEnd("chain/")).size(), kChain);
}

TEST_P(JournalContractTest, DonesRunWhereDocumented) {
  // Callback thread: never on a committing thread, one at a time. Inline:
  // each on its own committing thread.
  std::atomic<int> running{0};
  std::atomic<int> overlaps{0};
  std::atomic<int> on_committer{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      const std::thread::id me = std::this_thread::get_id();
      for (int i = 0; i < 300; ++i) {
        Batch batch;
        batch.Put(absl::StrCat("k", i), "v");
        journal_->Commit(std::move(batch), [&, me](absl::Status) {
          if (running.fetch_add(1) != 0) overlaps.fetch_add(1);
          if (std::this_thread::get_id() == me) on_committer.fetch_add(1);
          running.fetch_sub(1);
        });
      }
    });
  }
  for (std::thread& t : threads) t.join();
  journal_->Flush();
  if (GetParam().inline_callbacks) {
    EXPECT_EQ(on_committer.load(), 3 * 300);
  } else {
    EXPECT_EQ(overlaps.load(), 0);
    EXPECT_EQ(on_committer.load(), 0);
  }
}

TEST_P(JournalContractTest, BackpressureRefusesAtOnceAndAppliesNothing) {
  constexpr size_t kLimit = 64 << 10;
  Open(kLimit);

  // A batch bigger than the limit can never be accepted.
  Batch huge;
  huge.Put("huge", std::string(kLimit, 'h'));
  bool refused_inline = false;
  journal_->Commit(std::move(huge), [&](absl::Status status) {
    EXPECT_TRUE(absl::IsResourceExhausted(status)) << status;
    refused_inline = true;
  });
  EXPECT_TRUE(refused_inline);  // before Commit() returned
  EXPECT_EQ(GetOrDie("huge"), std::nullopt);

  // Every accepted batch's done blocks until `release`, so all of them stay
  // pending (inline callbacks: each on its own committing thread; otherwise
  // the first blocks the callback thread and the rest wait behind it) until
  // the limit refuses one. Each batch is committed by its own thread.
  struct Step {
    bool returned = false;  // Commit() returned
    bool done_ran = false;  // the done started
    absl::Status status;
  };
  absl::Mutex mu;
  absl::CondVar changed;
  std::vector<Step> steps(64);
  absl::Notification release;
  std::vector<std::thread> threads;
  size_t pending = 0;
  size_t expected_accepted = 0;
  std::optional<int> refused;
  for (int i = 0; i < 64 && !refused.has_value(); ++i) {
    Batch batch;
    batch.Put(absl::StrCat("b/", i), std::string(4000, 'b'));
    if (pending + batch.bytes() <= kLimit) {
      pending += batch.bytes();
      ++expected_accepted;
    }
    threads.emplace_back([&, i, batch = std::move(batch)]() mutable {
      journal_->Commit(std::move(batch), [&, i](absl::Status status) {
        {
          absl::MutexLock lock(&mu);
          steps[i].done_ran = true;
          steps[i].status = status;
          changed.SignalAll();
        }
        if (status.ok()) release.WaitForNotification();
      });
      absl::MutexLock lock(&mu);
      steps[i].returned = true;
      changed.SignalAll();
    });
    absl::MutexLock lock(&mu);
    while (!steps[i].returned && !steps[i].done_ran) changed.Wait(&mu);
    if (steps[i].done_ran && !steps[i].status.ok()) {
      EXPECT_TRUE(absl::IsResourceExhausted(steps[i].status))
          << steps[i].status;
      refused = i;
    }
  }
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(static_cast<size_t>(*refused), expected_accepted);
  EXPECT_EQ(journal_->stats().refused_commits, 2);
  release.Notify();
  for (std::thread& t : threads) t.join();
  journal_->Flush();
  for (int i = 0; i < *refused; ++i) {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(steps[i].done_ran && steps[i].status.ok()) << i;
  }
  EXPECT_EQ(GetOrDie(absl::StrCat("b/", *refused)), std::nullopt);
  EXPECT_EQ(ScanAll("b/", PrefixEnd("b/")).size(), expected_accepted);
  EXPECT_EQ(journal_->stats().pending_bytes, 0);

  // Room again: commits are accepted.
  Batch later;
  later.Put("later", "v");
  EXPECT_TRUE(CommitSync(std::move(later)).ok());
}

TEST_P(JournalContractTest, LargeBatches) {
  Batch big_value;
  big_value.Put("big", std::string(3 << 20, 'z'));
  ASSERT_TRUE(CommitSync(std::move(big_value)).ok());
  Batch many;
  many.Reserve(20000);
  for (int i = 0; i < 20000; ++i) many.Put(absl::StrCat("m/", i), "v");
  ASSERT_TRUE(CommitSync(std::move(many)).ok());
  EXPECT_EQ(GetOrDie("big")->size(), size_t{3} << 20);
  EXPECT_EQ(ScanAll("m/", PrefixEnd("m/")).size(), 20000);
}

TEST_P(JournalContractTest, HealthAndStats) {
  EXPECT_TRUE(journal_->health().ok());
  Batch batch;
  batch.Put("key", "value");
  batch.Delete("other");
  const size_t bytes = batch.bytes();
  EXPECT_EQ(bytes, 3 + 5 + 5 + 2 * Batch::kMutationOverhead);
  ASSERT_TRUE(CommitSync(std::move(batch)).ok());
  journal_->Flush();
  const JournalStats stats = journal_->stats();
  EXPECT_EQ(stats.commits, 1);
  EXPECT_EQ(stats.failed_commits, 0);
  EXPECT_EQ(stats.mutations, 2);
  EXPECT_EQ(stats.bytes, bytes);
  EXPECT_FALSE(stats.disk_full);
}

INSTANTIATE_TEST_SUITE_P(All, JournalContractTest, ::testing::ValuesIn(Impls()),
                         [](const ::testing::TestParamInfo<Impl>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace forge::persist
