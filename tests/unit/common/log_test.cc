#include "common/log.h"

#include <fcntl.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace forge::log {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::StartsWith;

constexpr char kTimeRegex[] = "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z";

// Captures the lines written while it lives; restores the defaults after.
class LogTest : public ::testing::Test {
 protected:
  void Use(Format format, Level level) {
    Options o;
    o.format = format;
    o.level = level;
    o.sink = [this](absl::string_view line) {
      absl::MutexLock lock(&mu_);
      lines_.emplace_back(line);
    };
    Configure(std::move(o));
  }
  void TearDown() override { Configure(Options()); }

  std::vector<std::string> lines() {
    absl::MutexLock lock(&mu_);
    return lines_;
  }
  // The only captured line, without its '\n'.
  std::string OnlyLine() {
    std::vector<std::string> l = lines();
    EXPECT_EQ(l.size(), 1u);
    if (l.empty()) return "";
    EXPECT_EQ(l[0].back(), '\n');
    EXPECT_EQ(l[0].find('\n'), l[0].size() - 1) << "one line: " << l[0];
    return l[0].substr(0, l[0].size() - 1);
  }
  // The text line after its timestamp and space.
  std::string OnlyTextLineAfterTime() {
    const std::string line = OnlyLine();
    const size_t space = line.find(' ');
    EXPECT_THAT(line.substr(0, space), MatchesRegex(kTimeRegex));
    return space == std::string::npos ? line : line.substr(space + 1);
  }

  absl::Mutex mu_;
  std::vector<std::string> lines_ ABSL_GUARDED_BY(mu_);
};

google::protobuf::Struct ParseJson(const std::string& line) {
  google::protobuf::Struct s;
  const auto status = google::protobuf::util::JsonStringToMessage(line, &s);
  EXPECT_TRUE(status.ok()) << status.ToString() << " in: " << line;
  return s;
}

TEST_F(LogTest, JsonLineParsesBackWithTypedFields) {
  Use(Format::kJson, Level::kInfo);
  const uint32_t attempt = 3;
  FORGE_LOG(INFO, "worker connected")
      .With("worker_id", "w-1")
      .With("slots", 4)
      .With("attempt", attempt)
      .With("task", int64_t{-7})
      .With("graph_id", std::string("01JABC"))
      .With("ok", true)
      .With("ratio", 0.25);
  const google::protobuf::Struct s = ParseJson(OnlyLine());
  const auto& f = s.fields();
  ASSERT_EQ(f.size(), 10u);
  EXPECT_THAT(f.at("time").string_value(), MatchesRegex(kTimeRegex));
  EXPECT_EQ(f.at("level").string_value(), "info");
  EXPECT_EQ(f.at("msg").string_value(), "worker connected");
  EXPECT_EQ(f.at("worker_id").string_value(), "w-1");
  EXPECT_EQ(f.at("graph_id").string_value(), "01JABC");
  ASSERT_EQ(f.at("slots").kind_case(), google::protobuf::Value::kNumberValue);
  EXPECT_EQ(f.at("slots").number_value(), 4);
  EXPECT_EQ(f.at("attempt").number_value(), 3);
  EXPECT_EQ(f.at("task").number_value(), -7);
  ASSERT_EQ(f.at("ok").kind_case(), google::protobuf::Value::kBoolValue);
  EXPECT_TRUE(f.at("ok").bool_value());
  EXPECT_EQ(f.at("ratio").number_value(), 0.25);
}

TEST_F(LogTest, JsonLineOpensWithTimeLevelMsgInOrder) {
  Use(Format::kJson, Level::kDebug);
  FORGE_LOG(DEBUG, "x").With("k", 1);
  EXPECT_THAT(OnlyLine(),
              MatchesRegex(absl::StrCat("\\{\"time\":\"", kTimeRegex,
                                        "\",\"level\":\"debug\",\"msg\":\"x\",\"k\":1\\}")));
}

TEST_F(LogTest, JsonEscapesQuotesBackslashesAndControlCharacters) {
  Use(Format::kJson, Level::kInfo);
  const std::string value =
      "a\"b\\c\nd\te\x01"
      "f\x1f\r\x7f caf\xc3\xa9 \xe2\x86\x92";
  FORGE_LOG(WARN, "line\nbreak").With("error", value);
  const std::string line = OnlyLine();
  EXPECT_THAT(line, HasSubstr(R"("msg":"line\nbreak")"));
  EXPECT_THAT(line, HasSubstr("\"error\":\"a\\\"b\\\\c\\nd\\te\\u0001f\\u001f\\r\\u007f "
                              "caf\xc3\xa9 \xe2\x86\x92\""));
  const google::protobuf::Struct s = ParseJson(line);
  EXPECT_EQ(s.fields().at("error").string_value(), value);
  EXPECT_EQ(s.fields().at("msg").string_value(), "line\nbreak");
  EXPECT_EQ(s.fields().at("level").string_value(), "warn");
}

TEST_F(LogTest, JsonReplacesInvalidUtf8SoTheLineStaysValid) {
  Use(Format::kJson, Level::kInfo);
  // A lone continuation byte, a cut-short sequence, an overlong '/', a
  // surrogate; then a valid 4-byte sequence, kept.
  FORGE_LOG(INFO, "m").With("v",
                            std::string("\x80|\xe2\x86|\xc0\xaf|\xed\xa0\x80|\xf0\x9f\x98\x80"));
  const google::protobuf::Struct s = ParseJson(OnlyLine());
  EXPECT_EQ(s.fields().at("v").string_value(),
            "\xef\xbf\xbd|\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd\xef\xbf\xbd|"
            "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd|\xf0\x9f\x98\x80");
}

TEST_F(LogTest, JsonWritesNonFiniteDoublesAsStrings) {
  Use(Format::kJson, Level::kInfo);
  FORGE_LOG(INFO, "m")
      .With("a", std::numeric_limits<double>::infinity())
      .With("b", std::nan(""))
      .With("c", 1e300);
  const google::protobuf::Struct s = ParseJson(OnlyLine());
  EXPECT_EQ(s.fields().at("a").string_value(), "+Inf");
  EXPECT_EQ(s.fields().at("b").string_value(), "NaN");
  EXPECT_EQ(s.fields().at("c").number_value(), 1e300);
}

TEST_F(LogTest, TextLineIsTimeLevelMessageThenFields) {
  Use(Format::kText, Level::kInfo);
  FORGE_LOG(INFO, "worker connected").With("worker_id", "w-1").With("slots", 4);
  EXPECT_EQ(OnlyTextLineAfterTime(), "INFO worker connected worker_id=w-1 slots=4");
}

TEST_F(LogTest, TextQuotesValuesWithSpacesQuotesOrEquals) {
  Use(Format::kText, Level::kInfo);
  FORGE_LOG(ERROR, "bad\nthing")
      .With("a", "two words")
      .With("b", "say \"hi\"")
      .With("c", "k=v")
      .With("d", "")
      .With("e", "line\nbreak\x01")
      .With("f", "C:\\plain")
      .With("g", "back\\slash and space")
      .With("h", false)
      .With("i", 1.5);
  EXPECT_EQ(OnlyTextLineAfterTime(),
            "ERROR bad\\nthing a=\"two words\" b=\"say \\\"hi\\\"\" c=\"k=v\" d=\"\" "
            "e=\"line\\nbreak\\x01\" f=C:\\plain g=\"back\\\\slash and space\" "
            "h=false i=1.5");
}

TEST_F(LogTest, WithStatusAddsCodeAndError) {
  Use(Format::kText, Level::kInfo);
  FORGE_LOG(INFO, "refused").WithStatus(absl::AbortedError("stale attempt"));
  EXPECT_EQ(OnlyTextLineAfterTime(), "INFO refused code=ABORTED error=\"stale attempt\"");
}

TEST_F(LogTest, DisabledLevelsAreDroppedWithoutEvaluatingArguments) {
  Use(Format::kText, Level::kWarn);
  int evaluated = 0;
  auto count = [&evaluated] {
    ++evaluated;
    return std::string("value");
  };
  FORGE_LOG(DEBUG, count()).With("k", count());
  FORGE_LOG(INFO, count()).With("k", count());
  EXPECT_EQ(evaluated, 0);
  EXPECT_TRUE(lines().empty());
  EXPECT_FALSE(FORGE_LOG_ENABLED(INFO));
  EXPECT_TRUE(FORGE_LOG_ENABLED(WARN));

  FORGE_LOG(WARN, count()).With("k", count());
  FORGE_LOG(ERROR, "e");
  EXPECT_EQ(evaluated, 2);
  std::vector<std::string> l = lines();
  ASSERT_EQ(l.size(), 2u);
  EXPECT_THAT(l[0], HasSubstr(" WARN value k=value\n"));
  EXPECT_THAT(l[1], HasSubstr(" ERROR e\n"));
}

TEST_F(LogTest, DebugLevelWritesEverything) {
  Use(Format::kJson, Level::kDebug);
  FORGE_LOG(DEBUG, "d");
  FORGE_LOG(INFO, "i");
  FORGE_LOG(WARN, "w");
  FORGE_LOG(ERROR, "e");
  std::vector<std::string> l = lines();
  ASSERT_EQ(l.size(), 4u);
  const char* levels[] = {"debug", "info", "warn", "error"};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(ParseJson(l[i]).fields().at("level").string_value(), levels[i]);
  }
}

TEST_F(LogTest, MacroIsOneStatementInAnUnbracedIfElse) {
  Use(Format::kText, Level::kInfo);
  for (const bool flag : {true, false}) {
    if (flag)
      FORGE_LOG(INFO, "yes");
    else
      FORGE_LOG(INFO, "no");
  }
  std::vector<std::string> l = lines();
  ASSERT_EQ(l.size(), 2u);
  EXPECT_THAT(l[0], HasSubstr(" INFO yes\n"));
  EXPECT_THAT(l[1], HasSubstr(" INFO no\n"));
}

// Through the default sink (stderr, one write(2) per line), redirected to a
// file: lines from many threads arrive whole.
TEST(LogStderrTest, ConcurrentLinesNeverInterleave) {
  char path[] = "/tmp/forge_log_test.XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::unlink(path);
  const int saved = ::dup(STDERR_FILENO);
  ASSERT_GE(saved, 0);
  ASSERT_GE(::dup2(fd, STDERR_FILENO), 0);
  Options o;
  o.format = Format::kJson;
  o.level = Level::kInfo;
  Configure(o);

  constexpr int kThreads = 8;
  constexpr int kLines = 400;
  const std::string padding(300, 'x');  // longer lines: more room to tear
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &padding] {
      for (int i = 0; i < kLines; ++i) {
        FORGE_LOG(INFO, "line").With("thread", t).With("seq", i).With("pad", padding);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  Configure(Options());
  ASSERT_GE(::dup2(saved, STDERR_FILENO), 0);
  ::close(saved);

  std::string out;
  ASSERT_EQ(::lseek(fd, 0, SEEK_SET), 0);
  char buf[1 << 16];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fd);

  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out.back(), '\n');
  std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), static_cast<size_t>(kThreads * kLines));
  std::vector<int> next(kThreads, 0);
  for (const std::string& line : lines) {
    const google::protobuf::Struct s = ParseJson(line);
    ASSERT_EQ(s.fields().size(), 6u) << line;
    EXPECT_EQ(s.fields().at("pad").string_value(), padding);
    const int t = static_cast<int>(s.fields().at("thread").number_value());
    ASSERT_TRUE(t >= 0 && t < kThreads) << line;
    // Each thread's lines in its own order.
    EXPECT_EQ(static_cast<int>(s.fields().at("seq").number_value()), next[t]++);
  }
}

TEST(LogParseTest, LevelsAndFormats) {
  EXPECT_EQ(*ParseLevel("debug"), Level::kDebug);
  EXPECT_EQ(*ParseLevel("INFO"), Level::kInfo);
  EXPECT_EQ(*ParseLevel("warn"), Level::kWarn);
  EXPECT_EQ(*ParseLevel("warning"), Level::kWarn);
  EXPECT_EQ(*ParseLevel("error"), Level::kError);
  EXPECT_EQ(*ParseFormat("text"), Format::kText);
  EXPECT_EQ(*ParseFormat("JSON"), Format::kJson);
  for (Level l : {Level::kDebug, Level::kInfo, Level::kWarn, Level::kError}) {
    EXPECT_EQ(*ParseLevel(LevelName(l)), l);
  }
}

TEST(LogParseTest, BadValuesNameTheAllowedOnes) {
  const absl::StatusOr<Level> level = ParseLevel("verbose");
  ASSERT_FALSE(level.ok());
  EXPECT_EQ(level.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(level.status().message()), StartsWith("\"verbose\" is not a log level"));
  EXPECT_THAT(std::string(level.status().message()), HasSubstr("debug, info, warn, error"));

  const absl::StatusOr<Format> format = ParseFormat("xml");
  ASSERT_FALSE(format.ok());
  EXPECT_EQ(format.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(format.status().message()), HasSubstr("text, json"));
  EXPECT_FALSE(ParseFormat("").ok());
}

}  // namespace
}  // namespace forge::log
