// Structured logs: one line per event, in text or JSON, with key=value fields
// (graph_id, task, attempt, worker_id, queue, error, code, ...).
//
//   FORGE_LOG(INFO, "worker connected").With("worker_id", id).With("slots", 4);
//
// text: 2026-12-01T08:07:13.123456Z INFO worker connected worker_id=w-1 slots=4
// json: {"time":"2026-12-01T08:07:13.123456Z","level":"info",
//        "msg":"worker connected","worker_id":"w-1","slots":4}
//
// Cost: a disabled level is one relaxed atomic load and a branch; the message
// and the field arguments are not evaluated and nothing is allocated. An
// enabled line is formatted into one buffer and written with one sink call
// (stderr: one write(2)) under a process-wide leaf mutex, so lines from
// concurrent threads never interleave. The write is synchronous: anything
// logged per task or per message stays at DEBUG.
//
// Thread contract: everything here is thread-safe. Configure is meant to be
// called once at start (tests call it again to capture lines); a line already
// being built keeps the format it started with.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace forge::log {

enum class Level : int { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };
enum class Format : int { kText = 0, kJson = 1 };

// Receives one complete line, ending in '\n'. Called with the log mutex held
// (that is what keeps lines whole): it must not log, and should be quick.
using Sink = std::function<void(absl::string_view line)>;

struct Options {
  Format format = Format::kText;
  Level level = Level::kInfo;
  Sink sink;  // empty = stderr
};

// Replaces the process-wide configuration. Before the first call: text, info,
// stderr.
void Configure(Options options);

// "debug" | "info" | "warn" | "error" (also "warning"), case-insensitive;
// otherwise INVALID_ARGUMENT naming the allowed values.
absl::StatusOr<Level> ParseLevel(absl::string_view s);
// "text" | "json", case-insensitive; otherwise INVALID_ARGUMENT.
absl::StatusOr<Format> ParseFormat(absl::string_view s);
// "debug", "info", "warn", "error".
absl::string_view LevelName(Level level);

namespace internal {
extern std::atomic<int> min_level;
// Token-pasted by FORGE_LOG (FORGE_LOG(DEBUG, ...) -> kDEBUG); pasting keeps
// a -DDEBUG on the command line from breaking the macro.
inline constexpr Level kDEBUG = Level::kDebug;
inline constexpr Level kINFO = Level::kInfo;
inline constexpr Level kWARN = Level::kWarn;
inline constexpr Level kERROR = Level::kError;
}  // namespace internal

// True if lines at `level` are written. One relaxed load.
inline bool Enabled(Level level) {
  return static_cast<int>(level) >= internal::min_level.load(std::memory_order_relaxed);
}

// One line being built; written by the destructor. Made by FORGE_LOG as a
// temporary, so the line is written at the end of the statement. Field
// values are strings, integers, bools and doubles; keys are plain
// identifiers (they are escaped in JSON but written as they are in text).
// Keys "time", "level" and "msg" are the line's own.
class Line {
 public:
  Line(Level level, absl::string_view msg);
  ~Line();
  Line(const Line&) = delete;
  Line& operator=(const Line&) = delete;

  Line& With(absl::string_view key, absl::string_view value);
  Line& With(absl::string_view key, const std::string& value) {
    return With(key, absl::string_view(value));
  }
  // Without it a string literal would convert to bool.
  Line& With(absl::string_view key, const char* value) {
    return With(key, absl::string_view(value == nullptr ? "" : value));
  }
  Line& With(absl::string_view key, bool value);
  Line& With(absl::string_view key, double value);
  template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool> &&
                                             !std::is_same_v<T, char>,
                                         int> = 0>
  Line& With(absl::string_view key, T value) {
    if constexpr (std::is_signed_v<T>) {
      return Int(key, static_cast<int64_t>(value));
    } else {
      return Uint(key, static_cast<uint64_t>(value));
    }
  }
  // code=<canonical code name> and, if there is one, error=<message>.
  Line& WithStatus(const absl::Status& status);

 private:
  Line& Int(absl::string_view key, int64_t value);
  Line& Uint(absl::string_view key, uint64_t value);
  void Key(absl::string_view key);
  void Number(absl::string_view key, absl::string_view digits);

  const Format format_;
  std::string buf_;
};

}  // namespace forge::log

// FORGE_LOG(LEVEL, msg): LEVEL is DEBUG, INFO, WARN or ERROR; chain .With()
// for fields. Nothing after FORGE_LOG( is evaluated when LEVEL is disabled.
// Safe as the body of an unbraced if/else.
#define FORGE_LOG(LEVEL, msg)                                     \
  if (!::forge::log::Enabled(::forge::log::internal::k##LEVEL)) { \
  } else                                                          \
    ::forge::log::Line(::forge::log::internal::k##LEVEL, (msg))

// True if FORGE_LOG(LEVEL, ...) would write: for work done only to log.
#define FORGE_LOG_ENABLED(LEVEL) (::forge::log::Enabled(::forge::log::internal::k##LEVEL))
