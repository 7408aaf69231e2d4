// Tests of common/graph_file: YAML and JSON graph files -> GraphSpec, and the
// JSON / YAML printers.

#include "common/graph_file.h"

#include <dirent.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "forge/v1/orchestrator.pb.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace forge {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::HasSubstr;

forge::v1::GraphSpec MustParse(absl::string_view text, GraphFileFormat format) {
  absl::StatusOr<forge::v1::GraphSpec> spec = ParseGraphFile(text, format);
  EXPECT_TRUE(spec.ok()) << spec.status() << "\n" << text;
  return spec.ok() ? *spec : forge::v1::GraphSpec();
}

std::string ParseError(absl::string_view text,
                       GraphFileFormat format = GraphFileFormat::kYaml) {
  absl::StatusOr<forge::v1::GraphSpec> spec = ParseGraphFile(text, format);
  EXPECT_FALSE(spec.ok()) << "parsed:\n" << text;
  if (spec.ok()) return "";
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument)
      << spec.status();
  return std::string(spec.status().message());
}

forge::v1::GraphSpec FromText(const std::string& text_proto) {
  forge::v1::GraphSpec spec;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text_proto, &spec));
  return spec;
}

std::string SourceDir() {
  const char* env = std::getenv("FORGE_SOURCE_DIR");
  return env != nullptr ? env : FORGE_SOURCE_DIR_DEFAULT;
}

constexpr char kYamlGraph[] = R"(
name: etl
labels:
  team: data
  tier: 1
fail_fast: true
tasks:
  - name: extract
    queue: io
    input: "select * from t"
    params:
      rows: 500
      ratio: 0.50
      dry_run: yes
    timeouts:
      run: 1.5s
      heartbeat: 100ms
  - name: transform
    dependsOn: [extract]
    priority: -3
    trigger: ALL_DONE
    orderingKey: "k1"
    retry:
      max_attempts: 4
      initial_backoff: 2m
      backoff_multiplier: 1.5
      max_backoff: 1h
      jitter: 0.25
      non_retryable_errors: [OOM, "404"]
)";

constexpr char kJsonGraph[] = R"({
  "name": "etl",
  "labels": {"team": "data", "tier": "1"},
  "failFast": true,
  "tasks": [
    {"name": "extract", "queue": "io",
     "input": "c2VsZWN0ICogZnJvbSB0",
     "params": {"rows": "500", "ratio": "0.50", "dry_run": "yes"},
     "timeouts": {"run": "1.500s", "heartbeat": "0.1s"}},
    {"name": "transform", "depends_on": ["extract"], "priority": -3,
     "trigger": "ALL_DONE", "ordering_key": "k1",
     "retry": {"maxAttempts": 4, "initialBackoff": "120s",
               "backoffMultiplier": 1.5, "maxBackoff": "3600s",
               "jitter": 0.25, "nonRetryableErrors": ["OOM", "404"]}}
  ]
})";

TEST(GraphFileTest, YamlAndJsonOfTheSameGraphAreEqual) {
  const forge::v1::GraphSpec from_yaml =
      MustParse(kYamlGraph, GraphFileFormat::kYaml);
  const forge::v1::GraphSpec from_json =
      MustParse(kJsonGraph, GraphFileFormat::kJson);
  std::string diff;
  MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&diff);
  EXPECT_TRUE(differencer.Compare(from_yaml, from_json)) << diff;
  // And both are what the file says.
  EXPECT_EQ(from_yaml.tasks(0).input(), "select * from t");
  EXPECT_EQ(from_yaml.tasks(0).timeouts().run().seconds(), 1);
  EXPECT_EQ(from_yaml.tasks(0).timeouts().run().nanos(), 500000000);
  EXPECT_EQ(from_yaml.tasks(1).trigger(), forge::v1::ALL_DONE);
  EXPECT_EQ(from_yaml.tasks(1).priority(), -3);
  EXPECT_TRUE(from_yaml.fail_fast());
}

TEST(GraphFileTest, AutoDetectsJsonAndYaml) {
  EXPECT_TRUE(MessageDifferencer::Equals(
      MustParse(kJsonGraph, GraphFileFormat::kAuto),
      MustParse(kJsonGraph, GraphFileFormat::kJson)));
  EXPECT_TRUE(MessageDifferencer::Equals(
      MustParse(kYamlGraph, GraphFileFormat::kAuto),
      MustParse(kYamlGraph, GraphFileFormat::kYaml)));
}

TEST(GraphFileTest, InputTextIsTakenAsUtf8Bytes) {
  const forge::v1::GraphSpec spec = MustParse(R"(
tasks:
  - name: a
    input: |
      Résumé this:
        "quoted" and 5
  - name: b
    input: !!binary "AAEC/w=="
  - name: c
    input: 12
)",
                                              GraphFileFormat::kYaml);
  ASSERT_EQ(spec.tasks_size(), 3);
  EXPECT_EQ(spec.tasks(0).input(), "Résumé this:\n  \"quoted\" and 5\n");
  EXPECT_EQ(spec.tasks(1).input(), std::string("\x00\x01\x02\xff", 4));
  EXPECT_EQ(spec.tasks(2).input(), "12");
  // JSON keeps the proto mapping: bytes are base64.
  EXPECT_EQ(MustParse(R"({"tasks":[{"name":"a","input":"aGk="}]})",
                      GraphFileFormat::kJson)
                .tasks(0)
                .input(),
            "hi");
}

TEST(GraphFileTest, DurationsAcceptUnits) {
  struct Case {
    const char* text;
    int64_t seconds;
    int32_t nanos;
  };
  for (const Case& c : std::vector<Case>{{"1.5s", 1, 500000000},
                                         {"600s", 600, 0},
                                         {"100ms", 0, 100000000},
                                         {"2m", 120, 0},
                                         {"1h", 3600, 0},
                                         {"1h30m", 5400, 0},
                                         {"0", 0, 0}}) {
    const forge::v1::GraphSpec spec = MustParse(
        absl::StrCat("tasks:\n  - name: a\n    timeouts:\n      run: ", c.text,
                     "\n"),
        GraphFileFormat::kYaml);
    ASSERT_EQ(spec.tasks_size(), 1) << c.text;
    EXPECT_EQ(spec.tasks(0).timeouts().run().seconds(), c.seconds) << c.text;
    EXPECT_EQ(spec.tasks(0).timeouts().run().nanos(), c.nanos) << c.text;
  }
  EXPECT_EQ(ParseError("tasks:\n  - name: a\n    timeouts:\n      run: 600\n"),
            "tasks[0].timeouts.run (line 4): expected a duration such as "
            "\"1.5s\", \"100ms\", \"2m\" or \"1h\", got \"600\"");
  EXPECT_THAT(ParseError("tasks:\n  - timeouts: {run: soon}\n"),
              HasSubstr("tasks[0].timeouts.run (line 2): expected a duration"));
}

TEST(GraphFileTest, MapsAndStringsKeepTheTextAsWritten) {
  const forge::v1::GraphSpec spec = MustParse(R"(
name: 5
labels: {7: x, on: 1.0}
tasks:
  - name: a
    depends_on: [1, true]
    params:
      count: 5
      pad: 007
      flag: yes
      empty:
      path: /tmp/x
    env: {HOME: /root}
)",
                                              GraphFileFormat::kYaml);
  EXPECT_EQ(spec.name(), "5");
  EXPECT_EQ(spec.labels().at("7"), "x");
  EXPECT_EQ(spec.labels().at("on"), "1.0");
  ASSERT_EQ(spec.tasks_size(), 1);
  const forge::v1::TaskSpec& task = spec.tasks(0);
  EXPECT_THAT(task.depends_on(), ::testing::ElementsAre("1", "true"));
  EXPECT_EQ(task.params().at("count"), "5");
  EXPECT_EQ(task.params().at("pad"), "007");
  EXPECT_EQ(task.params().at("flag"), "yes");
  EXPECT_EQ(task.params().at("empty"), "");
  EXPECT_EQ(task.params().at("path"), "/tmp/x");
  EXPECT_EQ(task.env().at("HOME"), "/root");
}

TEST(GraphFileTest, SingleScalarForARepeatedFieldIsAOneElementList) {
  const forge::v1::GraphSpec spec = MustParse(
      "tasks:\n  - name: b\n    depends_on: a\n", GraphFileFormat::kYaml);
  ASSERT_EQ(spec.tasks_size(), 1);
  EXPECT_THAT(spec.tasks(0).depends_on(), ::testing::ElementsAre("a"));
}

TEST(GraphFileTest, NullLeavesAFieldUnset) {
  const forge::v1::GraphSpec spec =
      MustParse("name: ~\ntasks:\n  - name: a\n    depends_on:\n    retry:\n",
                GraphFileFormat::kYaml);
  ASSERT_EQ(spec.tasks_size(), 1);
  EXPECT_EQ(spec.name(), "");
  EXPECT_TRUE(spec.tasks(0).depends_on().empty());
  EXPECT_FALSE(spec.tasks(0).has_retry());
}

TEST(GraphFileTest, TypeErrorsNameThePathAndLine) {
  constexpr char kYaml[] = R"(name: g
tasks:
  - name: a
    queue: default
  - name: b
    queue: default
    depends_on: [a]
  - name: c
    queue: default
    depends_on:
      - a
      - b
    params: {x: y}
    priority: high
)";
  EXPECT_EQ(ParseError(kYaml),
            "tasks[2].priority (line 14): expected an integer, got \"high\"");
}

TEST(GraphFileTest, UnknownFieldIsAnErrorNamingIt) {
  EXPECT_THAT(ParseError("name: g\ntasks:\n  - nmae: a\n"),
              HasSubstr("tasks[0].nmae (line 3): unknown field"));
  EXPECT_EQ(ParseError("name: g\nowner: me\n"),
            "owner (line 2): unknown field");
  // JSON names the field too (no line: the JSON parser has none).
  EXPECT_THAT(ParseError(R"({"tasks":[{"name":"a","nmae":"b"}]})",
                         GraphFileFormat::kJson),
              HasSubstr("tasks[0].nmae: unknown field"));
}

TEST(GraphFileTest, OtherValueErrors) {
  EXPECT_EQ(ParseError("fail_fast: yes\n"),
            "fail_fast (line 1): expected true or false, got \"yes\"");
  EXPECT_EQ(ParseError("tasks:\n  - trigger: SOMETIMES\n"),
            "tasks[0].trigger (line 2): expected one of ALL_SUCCESS, "
            "ALL_DONE, ONE_FAILED, got \"SOMETIMES\"");
  EXPECT_EQ(ParseError("tasks:\n  - priority: 99999999999\n"),
            "tasks[0].priority (line 2): \"99999999999\" is out of range for "
            "int32");
  EXPECT_EQ(ParseError("tasks:\n  - retry: {jitter: lots}\n"),
            "tasks[0].retry.jitter (line 2): expected a number, got \"lots\"");
  EXPECT_EQ(ParseError("tasks:\n  - name: [a]\n"),
            "tasks[0].name (line 2): expected a string, got a sequence");
  EXPECT_EQ(ParseError("tasks: {name: a}\n"),
            "tasks (line 1): expected a sequence, got a mapping");
  EXPECT_EQ(ParseError("labels: [a]\n"),
            "labels (line 1): expected a mapping, got a sequence");
  EXPECT_EQ(ParseError("tasks:\n  - input: !!binary \"@@\"\n"),
            "tasks[0].input (line 2): invalid base64 in !!binary");
  EXPECT_EQ(ParseError("- a\n- b\n"),
            "document (line 1): expected a mapping (GraphSpec), got a "
            "sequence");
  EXPECT_EQ(ParseError("tasks:\n  - name: a\n    depends_on: [x]\n"
                       "    dependsOn: [y]\n"),
            "tasks[0].dependsOn (line 4): duplicate field (already set as "
            "\"depends_on\" on line 3)");
  EXPECT_EQ(ParseError("labels:\n  a: x\n  a: y\n"),
            "labels[\"a\"] (line 3): duplicate key (first on line 2)");
  EXPECT_EQ(ParseError(""), "the document is empty");
  EXPECT_THAT(ParseError("a: 1\n---\nb: 2\n"),
              HasSubstr("expected one YAML document"));
  EXPECT_EQ(ParseError("tasks: [a\nname: x\n"),
            "YAML syntax error (line 2, column 5): end of sequence flow not "
            "found");
}

TEST(GraphFileTest, ToYamlRoundTrips) {
  forge::v1::GraphSpec spec = FromText(R"pb(
    name: "12"
    labels { key: "on" value: "true" }
    labels { key: "z" value: "" }
    fail_fast: true
    tasks {
      name: "a"
      queue: "q: x"
      input: "line 1\n  line 2\n"
      params { key: "n" value: "007" }
      retry {
        max_attempts: 3
        backoff_multiplier: 0.1
        initial_backoff { seconds: 1 nanos: 500000000 }
        non_retryable_errors: "null"
      }
      timeouts { run {} }
    }
    tasks {
      name: "b"
      depends_on: "a"
      trigger: ONE_FAILED
      priority: -7
      input: "\x00\xff binary"
    }
    tasks { name: "c" input: "no newline\nat end" }
  )pb");
  const std::string yaml = ToYaml(spec);
  const forge::v1::GraphSpec back = MustParse(yaml, GraphFileFormat::kYaml);
  std::string diff;
  MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&diff);
  EXPECT_TRUE(differencer.Compare(spec, back)) << diff << "\n" << yaml;
  EXPECT_THAT(yaml, HasSubstr("trigger: ONE_FAILED"));
  EXPECT_THAT(yaml, HasSubstr("initial_backoff: 1.500s"));
  EXPECT_THAT(yaml, HasSubstr("input: !!binary"));
}

TEST(GraphFileTest, ToJsonUsesFieldNamesAndRoundTrips) {
  const forge::v1::GraphSpec spec =
      MustParse(kYamlGraph, GraphFileFormat::kYaml);
  const std::string pretty = ToJson(spec, /*pretty=*/true);
  const std::string compact = ToJson(spec, /*pretty=*/false);
  EXPECT_THAT(pretty, HasSubstr("\"fail_fast\": true"));
  EXPECT_TRUE(absl::EndsWith(pretty, "}\n"));
  EXPECT_EQ(compact.find('\n'), std::string::npos);
  EXPECT_TRUE(MessageDifferencer::Equals(
      spec, MustParse(pretty, GraphFileFormat::kJson)));
  EXPECT_TRUE(MessageDifferencer::Equals(
      spec, MustParse(compact, GraphFileFormat::kAuto)));
}

TEST(GraphFileTest, ToYamlPrintsRunTimeProtos) {
  forge::v1::WatchResponse response;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(
      R"pb(
        events {
          graph_id: "01HZX"
          seq: 12345678901
          type: TASK_STARTED
          time { seconds: 1700000000 }
          task: "b"
          attempt: 1
          worker_id: "w-1"
        }
      )pb",
      &response));
  EXPECT_EQ(ToYaml(response),
            "events:\n"
            "  - graph_id: 01HZX\n"
            "    seq: 12345678901\n"
            "    type: TASK_STARTED\n"
            "    time: 2023-11-14T22:13:20Z\n"
            "    task: b\n"
            "    attempt: 1\n"
            "    worker_id: w-1\n");
  EXPECT_EQ(ToJson(response.events(0), /*pretty=*/false),
            "{\"graph_id\":\"01HZX\",\"seq\":\"12345678901\",\"type\":"
            "\"TASK_STARTED\",\"time\":\"2023-11-14T22:13:20Z\",\"task\":\"b\","
            "\"attempt\":1,\"worker_id\":\"w-1\"}");
  EXPECT_EQ(ToYaml(forge::v1::GraphSpec()), "{}\n");
}

TEST(GraphFileTest, LoadGraphFileChoosesTheFormatByExtension) {
  const std::string dir = ::testing::TempDir();
  const std::string json_path = absl::StrCat(dir, "/graph_file_test.json");
  const std::string txt_path = absl::StrCat(dir, "/graph_file_test.txt");
  {
    std::ofstream(json_path) << kJsonGraph;
    std::ofstream(txt_path) << kYamlGraph;
  }
  absl::StatusOr<forge::v1::GraphSpec> json = LoadGraphFile(json_path);
  absl::StatusOr<forge::v1::GraphSpec> yaml = LoadGraphFile(txt_path);
  ASSERT_TRUE(json.ok()) << json.status();
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  EXPECT_TRUE(MessageDifferencer::Equals(*json, *yaml));
  unlink(json_path.c_str());
  unlink(txt_path.c_str());

  absl::StatusOr<forge::v1::GraphSpec> missing =
      LoadGraphFile(absl::StrCat(dir, "/no-such-graph.yaml"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("no-such-graph.yaml"));
}

TEST(GraphFileTest, ErrorsFromFilesArePrefixedWithThePath) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/bad.yaml");
  { std::ofstream(path) << "name: g\ntasks:\n  - nmae: a\n"; }
  absl::StatusOr<forge::v1::GraphSpec> spec = LoadGraphFile(path);
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(spec.status().message(),
              HasSubstr(absl::StrCat(path, ": tasks[0].nmae (line 3)")));
  unlink(path.c_str());
}

TEST(GraphFileTest, EveryExampleParses) {
  const std::string dir = SourceDir() + "/client/examples";
  DIR* d = opendir(dir.c_str());
  ASSERT_NE(d, nullptr) << dir;
  int count = 0;
  while (dirent* entry = readdir(d)) {
    const std::string name = entry->d_name;
    if (!absl::EndsWith(name, ".yaml") && !absl::EndsWith(name, ".json")) {
      continue;
    }
    ++count;
    absl::StatusOr<forge::v1::GraphSpec> spec = LoadGraphFile(dir + "/" + name);
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_GT(spec->tasks_size(), 0) << name;
    // The quick start runs them on `forge-worker --queue default`; the agent
    // pipeline runs on deploy/runner/agents.yaml's profiles instead (checked
    // against them by RunnerConfigTest).
    if (name == "agents.yaml") continue;
    for (const forge::v1::TaskSpec& task : spec->tasks()) {
      EXPECT_EQ(task.queue(), "default") << name << " " << task.name();
    }
  }
  closedir(d);
  EXPECT_GE(count, 5);
}

TEST(GraphFileTest, DiamondExampleYamlAndJsonAgree) {
  const std::string dir = SourceDir() + "/client/examples";
  absl::StatusOr<forge::v1::GraphSpec> yaml =
      LoadGraphFile(dir + "/diamond.yaml");
  absl::StatusOr<forge::v1::GraphSpec> json =
      LoadGraphFile(dir + "/diamond.json");
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  ASSERT_TRUE(json.ok()) << json.status();
  std::string diff;
  MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&diff);
  EXPECT_TRUE(differencer.Compare(*yaml, *json)) << diff;
}

TEST(GraphFileTest, FanoutExampleFansOutTenAndIn) {
  absl::StatusOr<forge::v1::GraphSpec> spec =
      LoadGraphFile(SourceDir() + "/client/examples/fanout.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_EQ(spec->tasks_size(), 12);
  EXPECT_EQ(spec->tasks(11).depends_on_size(), 10);
  EXPECT_EQ(spec->tasks(1).params().at("shard"), "00");
}

}  // namespace
}  // namespace forge
