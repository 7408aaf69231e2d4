#include "common/log.h"

#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace forge::log {

namespace internal {
std::atomic<int> min_level{static_cast<int>(Level::kInfo)};
}  // namespace internal

namespace {

std::atomic<int> g_format{static_cast<int>(Format::kText)};

// The one leaf lock of logging: held only to swap the sink or to hand it one
// line; nothing else is taken inside it.
struct SinkState {
  absl::Mutex mu;
  Sink sink ABSL_GUARDED_BY(mu);  // empty = stderr
};

// Never destroyed: threads may still log while the process exits.
SinkState& State() {
  static SinkState* state = new SinkState();
  return *state;
}

void WriteStderr(absl::string_view line) {
  while (!line.empty()) {
    const ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // nowhere to report it
    }
    line.remove_prefix(static_cast<size_t>(n));
  }
}

constexpr char kHex[] = "0123456789abcdef";

// Length of the valid UTF-8 sequence at the start of `s`, or 0 if it does
// not start with one (a stray continuation byte, an overlong form, a
// surrogate, past U+10FFFF, or cut short).
size_t Utf8SequenceLength(absl::string_view s) {
  const auto byte = [&s](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c = byte(0);
  if (c < 0x80) return 1;
  size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // bounds of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (s.size() < len || byte(1) < lo || byte(1) > hi) return 0;
  for (size_t i = 2; i < len; ++i) {
    if (byte(i) < 0x80 || byte(i) > 0xBF) return 0;
  }
  return len;
}

// A JSON string, quotes included. Control characters become escapes;
// invalid UTF-8 bytes become U+FFFD so that every line stays valid JSON.
void AppendJsonString(std::string& out, absl::string_view s) {
  out.push_back('"');
  while (!s.empty()) {
    const unsigned char c = static_cast<unsigned char>(s[0]);
    switch (c) {
      case '"': out.append("\\\""); break;
      case '\\': out.append("\\\\"); break;
      case '\n': out.append("\\n"); break;
      case '\r': out.append("\\r"); break;
      case '\t': out.append("\\t"); break;
      case '\b': out.append("\\b"); break;
      case '\f': out.append("\\f"); break;
      default:
        if (c < 0x20 || c == 0x7F) {
          out.append("\\u00");
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 0xF]);
        } else if (c < 0x80) {
          out.push_back(static_cast<char>(c));
        } else if (const size_t n = Utf8SequenceLength(s); n > 0) {
          out.append(s.data(), n);
          s.remove_prefix(n);
          continue;
        } else {
          out.append("\\ufffd");
        }
    }
    s.remove_prefix(1);
  }
  out.push_back('"');
}

// Escapes for text values (inside quotes) and messages: the line stays one
// line and a quoted value ends at its closing quote.
void AppendTextEscaped(std::string& out, absl::string_view s, bool quoted) {
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '\n': out.append("\\n"); break;
      case '\r': out.append("\\r"); break;
      case '\t': out.append("\\t"); break;
      case '"':
      case '\\':
        if (quoted) out.push_back('\\');
        out.push_back(ch);
        break;
      default:
        if (c < 0x20 || c == 0x7F) {
          out.append("\\x");
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 0xF]);
        } else {
          out.push_back(ch);
        }
    }
  }
}

bool NeedsQuotes(absl::string_view s) {
  if (s.empty()) return true;
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c == 0x7F || c == '"' || c == '=') return true;
  }
  return false;
}

void AppendTextValue(std::string& out, absl::string_view s) {
  if (!NeedsQuotes(s)) {
    out.append(s.data(), s.size());
    return;
  }
  out.push_back('"');
  AppendTextEscaped(out, s, /*quoted=*/true);
  out.push_back('"');
}

absl::string_view UpperLevelName(Level level) {
  switch (level) {
    case Level::kDebug: return "DEBUG";
    case Level::kInfo: return "INFO";
    case Level::kWarn: return "WARN";
    case Level::kError: return "ERROR";
  }
  return "INFO";
}

}  // namespace

void Configure(Options options) {
  g_format.store(static_cast<int>(options.format), std::memory_order_relaxed);
  {
    SinkState& state = State();
    absl::MutexLock lock(&state.mu);
    state.sink = std::move(options.sink);
  }
  // Last: a line enabled by the new level already sees the new sink.
  internal::min_level.store(static_cast<int>(options.level), std::memory_order_relaxed);
}

absl::StatusOr<Level> ParseLevel(absl::string_view s) {
  const std::string v = absl::AsciiStrToLower(s);
  if (v == "debug") return Level::kDebug;
  if (v == "info") return Level::kInfo;
  if (v == "warn" || v == "warning") return Level::kWarn;
  if (v == "error") return Level::kError;
  return absl::InvalidArgumentError(
      absl::StrCat("\"", s, "\" is not a log level (one of debug, info, warn, error)"));
}

absl::StatusOr<Format> ParseFormat(absl::string_view s) {
  const std::string v = absl::AsciiStrToLower(s);
  if (v == "text") return Format::kText;
  if (v == "json") return Format::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("\"", s, "\" is not a log format (one of text, json)"));
}

absl::string_view LevelName(Level level) {
  switch (level) {
    case Level::kDebug: return "debug";
    case Level::kInfo: return "info";
    case Level::kWarn: return "warn";
    case Level::kError: return "error";
  }
  return "info";
}

Line::Line(Level level, absl::string_view msg)
    : format_(static_cast<Format>(g_format.load(std::memory_order_relaxed))) {
  buf_.reserve(256);
  const std::string time =
      absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone());
  if (format_ == Format::kJson) {
    buf_.append("{\"time\":\"");
    buf_.append(time);
    buf_.append("\",\"level\":\"");
    buf_.append(LevelName(level).data(), LevelName(level).size());
    buf_.append("\",\"msg\":");
    AppendJsonString(buf_, msg);
  } else {
    buf_.append(time);
    buf_.push_back(' ');
    buf_.append(UpperLevelName(level).data(), UpperLevelName(level).size());
    buf_.push_back(' ');
    AppendTextEscaped(buf_, msg, /*quoted=*/false);
  }
}

Line::~Line() {
  buf_.append(format_ == Format::kJson ? "}\n" : "\n");
  SinkState& state = State();
  absl::MutexLock lock(&state.mu);
  if (state.sink) {
    state.sink(buf_);
  } else {
    WriteStderr(buf_);
  }
}

void Line::Key(absl::string_view key) {
  if (format_ == Format::kJson) {
    buf_.push_back(',');
    AppendJsonString(buf_, key);
    buf_.push_back(':');
  } else {
    buf_.push_back(' ');
    buf_.append(key.data(), key.size());
    buf_.push_back('=');
  }
}

void Line::Number(absl::string_view key, absl::string_view digits) {
  Key(key);
  buf_.append(digits.data(), digits.size());
}

Line& Line::With(absl::string_view key, absl::string_view value) {
  Key(key);
  if (format_ == Format::kJson) {
    AppendJsonString(buf_, value);
  } else {
    AppendTextValue(buf_, value);
  }
  return *this;
}

Line& Line::With(absl::string_view key, bool value) {
  Number(key, value ? "true" : "false");
  return *this;
}

Line& Line::With(absl::string_view key, double value) {
  if (!std::isfinite(value)) {
    // JSON has no NaN or infinities: written as strings there.
    return With(key, std::isnan(value) ? "NaN" : value > 0 ? "+Inf" : "-Inf");
  }
  char digits[32];
  const std::to_chars_result r = std::to_chars(digits, digits + sizeof digits, value);
  Number(key, absl::string_view(digits, static_cast<size_t>(r.ptr - digits)));
  return *this;
}

Line& Line::Int(absl::string_view key, int64_t value) {
  char digits[24];
  const std::to_chars_result r = std::to_chars(digits, digits + sizeof digits, value);
  Number(key, absl::string_view(digits, static_cast<size_t>(r.ptr - digits)));
  return *this;
}

Line& Line::Uint(absl::string_view key, uint64_t value) {
  char digits[24];
  const std::to_chars_result r = std::to_chars(digits, digits + sizeof digits, value);
  Number(key, absl::string_view(digits, static_cast<size_t>(r.ptr - digits)));
  return *this;
}

Line& Line::WithStatus(const absl::Status& status) {
  With("code", absl::StatusCodeToString(status.code()));
  if (!status.message().empty()) With("error", status.message());
  return *this;
}

}  // namespace forge::log
