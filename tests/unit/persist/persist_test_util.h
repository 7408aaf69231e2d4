// Helpers shared by the persist tests: temporary directories, a
// fault-injecting RocksDB file system, file surgery on WAL files, and the
// deterministic batches both the tests and the crash child write.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "rocksdb/file_system.h"
#include "rocksdb/io_status.h"
#include "server/persist/journal.h"

namespace forge::persist::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern =
        absl::StrCat(base != nullptr ? base : "/tmp", "/forge-persist-XXXXXX");
    path_ = mkdtemp(pattern.data()) != nullptr ? pattern : std::string();
  }
  ~TempDir() {
    if (!path_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(path_, ignored);
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string Sub(absl::string_view name) const {
    return absl::StrCat(path_, "/", name);
  }

 private:
  std::string path_;
};

inline std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void WriteFileOrDie(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

// The WAL files (NNNNNN.log) of a database directory, oldest first.
inline std::vector<std::string> WalFiles(const std::string& dir) {
  std::vector<std::pair<uint64_t, std::string>> found;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    uint64_t number = 0;
    if (name.size() > 4 && name.substr(name.size() - 4) == ".log" &&
        absl::SimpleAtoi(name.substr(0, name.size() - 4), &number)) {
      found.emplace_back(number, entry.path().string());
    }
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  for (auto& [number, path] : found) paths.push_back(std::move(path));
  return paths;
}

// The physical records of a WAL file image (RocksDB log format: 32 KiB
// blocks, 7-byte headers), for tests that damage a chosen record.
struct WalRecord {
  size_t offset = 0;  // of the header
  size_t length = 0;  // of the payload
  uint8_t type = 0;
};
inline std::vector<WalRecord> ParseWal(const std::string& image) {
  constexpr size_t kBlock = 32768, kHeader = 7;
  std::vector<WalRecord> records;
  size_t p = 0;
  while (p + kHeader <= image.size()) {
    const size_t in_block = p % kBlock;
    if (kBlock - in_block < kHeader) {  // block trailer
      p += kBlock - in_block;
      continue;
    }
    const auto* u = reinterpret_cast<const unsigned char*>(image.data() + p);
    WalRecord r{p, size_t{u[4]} | size_t{u[5]} << 8, u[6]};
    if (r.type == 0 || p + kHeader + r.length > image.size()) break;
    records.push_back(r);
    p += kHeader + r.length;
  }
  return records;
}

// A FileSystem that fails writable-file operations on demand (all files:
// WAL, tables, MANIFEST).
class FaultFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  enum class Fault {
    kNone,
    kNoSpace,      // Append writes half the data, then fails with ENOSPC
    kAppendError,  // Append fails with EIO, writing nothing
    kSyncError,    // Sync/Fsync fail with EIO (the data was written)
    kSyncNoSpace,  // Sync/Fsync fail with ENOSPC (the data was written)
  };

  explicit FaultFileSystem(std::shared_ptr<rocksdb::FileSystem> target)
      : FileSystemWrapper(std::move(target)) {}

  const char* Name() const override { return "ForgeTestFaultFileSystem"; }

  void set_fault(Fault fault) { fault_.store(fault); }
  Fault fault() const { return fault_.load(); }
  // While kNoSpace: false (default) reports 0 bytes free, as a full disk
  // does; true reports the real free space (a file system that lies).
  void set_free_space_lies(bool lies) { free_space_lies_.store(lies); }

  rocksdb::IOStatus GetFreeSpace(const std::string& path,
                                 const rocksdb::IOOptions& options,
                                 uint64_t* free,
                                 rocksdb::IODebugContext* dbg) override {
    if (fault() == Fault::kNoSpace && !free_space_lies_.load()) {
      *free = 0;
      return rocksdb::IOStatus::OK();
    }
    return target()->GetFreeSpace(path, options, free, dbg);
  }

  rocksdb::IOStatus NewWritableFile(
      const std::string& name, const rocksdb::FileOptions& options,
      std::unique_ptr<rocksdb::FSWritableFile>* result,
      rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->NewWritableFile(name, options, result, dbg);
    if (s.ok()) *result = std::make_unique<File>(std::move(*result), this);
    return s;
  }
  rocksdb::IOStatus ReopenWritableFile(
      const std::string& name, const rocksdb::FileOptions& options,
      std::unique_ptr<rocksdb::FSWritableFile>* result,
      rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s =
        target()->ReopenWritableFile(name, options, result, dbg);
    if (s.ok()) *result = std::make_unique<File>(std::move(*result), this);
    return s;
  }

 private:
  class File final : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    File(std::unique_ptr<rocksdb::FSWritableFile> file, FaultFileSystem* fs)
        : FSWritableFileOwnerWrapper(std::move(file)), fs_(fs) {}

    rocksdb::IOStatus Append(const rocksdb::Slice& data,
                             const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override {
      switch (fs_->fault()) {
        case Fault::kNoSpace: {
          // A short write, as a full disk gives: the record is torn.
          rocksdb::IOStatus s = target()->Append(
              rocksdb::Slice(data.data(), data.size() / 2), options, dbg);
          if (!s.ok()) return s;
          rocksdb::IOStatus full =
              rocksdb::IOStatus::NoSpace("injected", "No space left on device");
          full.SetRetryable(true);
          return full;
        }
        case Fault::kAppendError:
          return rocksdb::IOStatus::IOError("injected", "Input/output error");
        default:
          return target()->Append(data, options, dbg);
      }
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& data,
                             const rocksdb::IOOptions& options,
                             const rocksdb::DataVerificationInfo&,
                             rocksdb::IODebugContext* dbg) override {
      return Append(data, options, dbg);
    }
    rocksdb::IOStatus Sync(const rocksdb::IOOptions& options,
                           rocksdb::IODebugContext* dbg) override {
      rocksdb::IOStatus s = target()->Sync(options, dbg);
      return s.ok() ? SyncFault() : s;
    }
    rocksdb::IOStatus Fsync(const rocksdb::IOOptions& options,
                            rocksdb::IODebugContext* dbg) override {
      rocksdb::IOStatus s = target()->Fsync(options, dbg);
      return s.ok() ? SyncFault() : s;
    }

   private:
    rocksdb::IOStatus SyncFault() {
      switch (fs_->fault()) {
        case Fault::kSyncError:
          return rocksdb::IOStatus::IOError("injected", "Input/output error");
        case Fault::kSyncNoSpace:
          return rocksdb::IOStatus::NoSpace("injected",
                                            "No space left on device");
        default:
          return rocksdb::IOStatus::OK();
      }
    }
    FaultFileSystem* const fs_;
  };

  std::atomic<Fault> fault_{Fault::kNone};
  std::atomic<bool> free_space_lies_{false};
};

// The deterministic content of batch `index` of a test round: keys
// "<prefix>/<index, 8 digits>/<j>" for j < kKeysPerBatch, with values that
// encode (prefix, index, j) and pad to `value_size` bytes.
constexpr int kKeysPerBatch = 4;

inline std::string BatchKeyPrefix(absl::string_view prefix, uint64_t index) {
  std::string digits = absl::StrCat(index);
  if (digits.size() < 8) digits.insert(0, 8 - digits.size(), '0');
  return absl::StrCat(prefix, "/", digits, "/");
}

inline std::string BatchValue(absl::string_view prefix, uint64_t index, int j,
                              size_t value_size) {
  std::string value = absl::StrCat("v:", prefix, ":", index, ":", j, ":");
  // A cheap deterministic filler, different for every (index, j).
  uint64_t x = index * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(j) + 1;
  while (value.size() < value_size) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    value.push_back(static_cast<char>('a' + x % 26));
  }
  return value;
}

inline Batch MakeTestBatch(absl::string_view prefix, uint64_t index,
                           size_t value_size) {
  Batch batch;
  batch.Reserve(kKeysPerBatch);
  const std::string key_prefix = BatchKeyPrefix(prefix, index);
  for (int j = 0; j < kKeysPerBatch; ++j) {
    batch.Put(absl::StrCat(key_prefix, j),
              BatchValue(prefix, index, j, value_size));
  }
  return batch;
}

}  // namespace forge::persist::testing
