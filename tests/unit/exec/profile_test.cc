// Command profiles: templates, argv, working directories, environment and
// submit-time checks (pure functions, no processes).
#include "server/exec/profile.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"

namespace forge::exec {
namespace {

namespace v1 = ::forge::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

google::protobuf::Map<std::string, std::string> Params(
    std::initializer_list<std::pair<const std::string, std::string>> kv) {
  google::protobuf::Map<std::string, std::string> m;
  for (const auto& [k, v] : kv) m[k] = v;
  return m;
}

v1::Assignment Assignment(std::initializer_list<std::pair<const std::string, std::string>> params) {
  v1::Assignment a;
  a.mutable_lease()->set_graph_id("G1");
  a.mutable_lease()->set_attempt(2);
  a.set_task("review");
  *a.mutable_params() = Params(params);
  return a;
}

TEST(TemplateTest, SubstitutesParamsAndBuiltinsAndKeepsDoubledBraces) {
  absl::StatusOr<std::string> s =
      Expand("--model={model} {task}/{attempt}@{graph_id} {{literal}}",
             Params({{"model", "opus"}}), Builtins{"G1", "review", 2}, false);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, "--model=opus review/2@G1 {literal}");
}

TEST(TemplateTest, MissingParamAndBadBracesAreErrors) {
  EXPECT_THAT(Expand("{nope}", {}, {}, false).status().message(),
              HasSubstr("missing param \"nope\""));
  EXPECT_FALSE(Expand("{open", {}, {}, false).ok());
  EXPECT_FALSE(Expand("close}", {}, {}, false).ok());
  EXPECT_FALSE(Expand("{}", {}, {}, false).ok());
  EXPECT_FALSE(Expand("{a b}", {}, {}, false).ok());
}

TEST(TemplateTest, ParamsListsOnlyTheTasksOwn) {
  absl::StatusOr<std::vector<std::string>> p = TemplateParams("{a}-{task}-{b}{{x}}");
  ASSERT_TRUE(p.ok());
  EXPECT_THAT(*p, ElementsAre("a", "b"));
}

TEST(TemplateTest, ShellQuotingKeepsValuesInert) {
  absl::StatusOr<std::string> s = Expand("echo {msg}", Params({{"msg", "it's $(rm -rf /)"}}),
                                         {}, /*shell_quote=*/true);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, "echo 'it'\\''s $(rm -rf /)'");
}

TEST(ArgvTest, OneElementPerTemplateNoWordSplitting) {
  CommandProfile p;
  p.command = {"claude", "--print", "--model", "{model}"};
  absl::StatusOr<std::vector<std::string>> argv =
      BuildArgv(p, Assignment({{"model", "a model; with spaces"}}));
  ASSERT_TRUE(argv.ok());
  EXPECT_THAT(*argv, ElementsAre("claude", "--print", "--model", "a model; with spaces"));
}

TEST(ArgvTest, ShellProfilesRunTheScriptWithQuotedParams) {
  CommandProfile p;
  p.shell = true;
  p.command = {"echo {x} | wc -c"};
  absl::StatusOr<std::vector<std::string>> argv = BuildArgv(p, Assignment({{"x", "a b"}}));
  ASSERT_TRUE(argv.ok());
  EXPECT_THAT(*argv, ElementsAre("/bin/sh", "-c", "echo 'a b' | wc -c"));
}

TEST(WorkdirTest, ResolvesInsideTheRootAndRefusesEscapes) {
  CommandProfile p;
  p.root = "/srv/work";
  p.workdir = "{repo}";
  EXPECT_EQ(*ResolveWorkdir(p, Assignment({{"repo", "a/b"}})), "/srv/work/a/b");
  EXPECT_EQ(*ResolveWorkdir(p, Assignment({{"repo", "a/../c"}})), "/srv/work/c");
  EXPECT_EQ(*ResolveWorkdir(p, Assignment({{"repo", "/srv/work/x"}})), "/srv/work/x");
  EXPECT_EQ(*ResolveWorkdir(p, Assignment({{"repo", "."}})), "/srv/work/");  // the root
  for (const char* bad : {"..", "../x", "a/../../x", "/etc", "/srv/workshop", ""}) {
    EXPECT_FALSE(ResolveWorkdir(p, Assignment({{"repo", bad}})).ok()) << bad;
  }
}

TEST(EnvTest, StartsEmptyAndAddsAllowlistProfileTaskAndForgeVariables) {
  CommandProfile p;
  p.env_allow = {"PATH", "MISSING"};
  p.env = {{"FIXED", "1"}};
  p.task_env = true;
  v1::Assignment a = Assignment({});
  (*a.mutable_env())["MINE"] = "x";
  (*a.mutable_env())["LD_PRELOAD"] = "/evil.so";  // never passed through
  a.set_traceparent("00-abc-def-01");
  char path[] = "PATH=/usr/bin";
  char home[] = "HOME=/root";
  char pathish[] = "PATHOLOGY=no";
  char* server_env[] = {pathish, path, home, nullptr};
  EXPECT_THAT(BuildEnv(p, a, "/w", server_env),
              ElementsAre("FIXED=1", "FORGE_ATTEMPT=2", "FORGE_GRAPH_ID=G1",
                          "FORGE_TASK=review", "FORGE_WORKDIR=/w", "MINE=x",
                          "PATH=/usr/bin", "TRACEPARENT=00-abc-def-01"));
}

TEST(StdinTest, InputAloneOrWithTheUpstreamOutputsInNameOrder) {
  CommandProfile p;
  v1::Assignment a = Assignment({});
  a.set_input("prompt");
  (*a.mutable_upstream_outputs())["zeta"] = "z out\n";
  (*a.mutable_upstream_outputs())["alpha"] = "a out";
  a.add_truncated_upstream("big");
  EXPECT_EQ(StdinData(p, a), "prompt");
  p.stdin_mode = CommandProfile::Stdin::kNone;
  EXPECT_EQ(StdinData(p, a), "");
  p.stdin_mode = CommandProfile::Stdin::kInputWithUpstream;
  EXPECT_EQ(StdinData(p, a),
            "prompt\n\n--- upstream: alpha ---\na out\n\n--- upstream: zeta ---\n"
            "z out\n\n--- upstream: big (too large to include) ---\n");
}

TEST(EnvTest, TaskVariableNames) {
  EXPECT_TRUE(ValidTaskEnvName("OPENAI_MODEL"));
  EXPECT_TRUE(ValidTaskEnvName("_x1"));
  for (const char* bad : {"", "1X", "A-B", "A=B", "LD_PRELOAD", "LD_LIBRARY_PATH",
                          "FORGE_TASK"}) {
    EXPECT_FALSE(ValidTaskEnvName(bad)) << bad;
  }
}

TEST(ValidateTaskTest, NamesTheTaskFieldAndProfile) {
  CommandProfile p;
  p.name = "claude";
  p.command = {"claude", "--model", "{model}"};
  v1::TaskSpec t;
  t.set_name("t");
  EXPECT_EQ(ValidateTask(p, t, "tasks[4]").message(),
            "tasks[4].params: profile \"claude\" needs param \"model\"");
  (*t.mutable_params())["model"] = "m";
  EXPECT_TRUE(ValidateTask(p, t, "tasks[4]").ok());
  (*t.mutable_env())["K"] = "v";
  EXPECT_THAT(ValidateTask(p, t, "tasks[4]").message(),
              HasSubstr("tasks[4].env: profile \"claude\" does not take"));
}

TEST(ValidateConfigTest, AcceptsAGoodConfigAndRefusesBadOnes) {
  RunnerConfig c;
  CommandProfile p;
  p.name = "claude";
  p.queues = {"claude"};
  p.command = {"claude", "--print"};
  c.profiles = {p};
  EXPECT_TRUE(ValidateConfig(c).ok());

  RunnerConfig bad = c;
  bad.profiles[0].name = "has space";
  EXPECT_FALSE(ValidateConfig(bad).ok());
  bad = c;
  bad.profiles[0].output_cap = 0;
  EXPECT_THAT(ValidateConfig(bad).message(), HasSubstr("output_cap"));
  bad = c;
  bad.profiles.push_back(p);
  EXPECT_THAT(ValidateConfig(bad).message(), HasSubstr("defined twice"));
  bad = c;
  bad.profiles[0].workdir = "{x}";
  bad.profiles[0].root = "relative";
  EXPECT_THAT(ValidateConfig(bad).message(), HasSubstr("absolute"));
}

}  // namespace
}  // namespace forge::exec
