// persist_journal_child: a process the RocksDB journal tests start, then
// kill or let die without closing its journal.
//
//   persist_journal_child loop <dir> <prefix> <value_size>
//     Commits MakeTestBatch(prefix, i, value_size) for i = 0, 1, 2, ...
//     (at most 64 in flight) and writes each index whose done(OK) ran to
//     fd 3 (8 bytes, native order). Runs until killed (60 s at most).
//   persist_journal_child seq <dir> <prefix> <count> <value_size>
//                         [<last_value_size>]
//     Commits `count` batches one at a time, each alone in its group (one
//     WAL record each), the last with values of last_value_size bytes, then
//     exits at once without closing the journal, as a crash would.
//
// Exit codes: 0 done, 2 usage, 3 open failed, 4 a commit failed, 5 the test
// is gone (fd 3 closed), 6 the 60 s limit.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/persist/rocksdb_journal.h"
#include "tests/unit/persist/persist_test_util.h"

namespace forge::persist {
namespace {

constexpr int kAckFd = 3;

std::unique_ptr<Journal> OpenOrExit(const std::string& dir) {
  RocksJournalOptions options;
  options.dir = dir;
  absl::StatusOr<std::unique_ptr<Journal>> journal = OpenRocksJournal(options);
  if (!journal.ok()) {
    fprintf(stderr, "journal_child: %s\n", journal.status().ToString().c_str());
    _exit(3);
  }
  return std::move(*journal);
}

[[noreturn]] void Loop(const std::string& dir, const std::string& prefix,
                       size_t value_size) {
  std::unique_ptr<Journal> journal = OpenOrExit(dir);
  absl::Mutex mu;
  absl::CondVar room;
  int in_flight = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  for (uint64_t i = 0; absl::Now() < deadline; ++i) {
    {
      absl::MutexLock lock(&mu);
      while (in_flight >= 64) room.Wait(&mu);
      ++in_flight;
    }
    journal->Commit(testing::MakeTestBatch(prefix, i, value_size),
                    [i, &mu, &room, &in_flight](absl::Status status) {
                      if (!status.ok()) {
                        fprintf(stderr, "journal_child: %s\n",
                                status.ToString().c_str());
                        _exit(4);
                      }
                      if (write(kAckFd, &i, sizeof(i)) != sizeof(i)) _exit(5);
                      absl::MutexLock lock(&mu);
                      --in_flight;
                      room.Signal();
                    });
  }
  _exit(6);
}

[[noreturn]] void Sequence(const std::string& dir, const std::string& prefix,
                           uint64_t count, size_t value_size,
                           size_t last_value_size) {
  std::unique_ptr<Journal> journal = OpenOrExit(dir);
  for (uint64_t i = 0; i < count; ++i) {
    absl::Status result;
    journal->Commit(
        testing::MakeTestBatch(prefix, i,
                               i + 1 == count ? last_value_size : value_size),
        [&result](absl::Status status) { result = std::move(status); });
    journal->Flush();  // alone in its group: one WAL record
    if (!result.ok()) {
      fprintf(stderr, "journal_child: %s\n", result.ToString().c_str());
      _exit(4);
    }
  }
  _exit(0);  // no destructor: the database stays as a crash leaves it
}

}  // namespace
}  // namespace forge::persist

int main(int argc, char** argv) {
  size_t value_size = 0, last_value_size = 0;
  uint64_t count = 0;
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "loop" && argc == 5 && absl::SimpleAtoi(argv[4], &value_size)) {
    forge::persist::Loop(argv[2], argv[3], value_size);
  }
  if (mode == "seq" && (argc == 6 || argc == 7) &&
      absl::SimpleAtoi(argv[4], &count) &&
      absl::SimpleAtoi(argv[5], &value_size) && count > 0) {
    last_value_size = value_size;
    if (argc == 7 && !absl::SimpleAtoi(argv[6], &last_value_size)) return 2;
    forge::persist::Sequence(argv[2], argv[3], count, value_size,
                             last_value_size);
  }
  fprintf(stderr, "usage: see tests/unit/persist/journal_child.cc\n");
  return 2;
}
