// server/exec: the built-in command runner's profiles.
//
// A profile says how the runner turns a task of the queues it serves into a
// process: the argv template (`{param}` replaced by the task's params, one
// argv element at a time: no shell, no word splitting, unless the profile
// asks for a shell), the task input on stdin (prompts never go on the command
// line), the working directory (a fresh one per attempt by default, or a
// template resolved inside an allowed root: `..` escapes and symlinks out of
// the root are refused), the environment (empty, plus an allowlist of the
// server's variables, the profile's own, and the task's if allowed), a run
// timeout, the output kept per stream, and the slots (processes at once).
//
// Everything here is pure (no processes), so it is unit-tested on its own;
// the runner (runner.h) does the spawning.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "forge/v1/types.pb.h"
#include "forge/v1/worker.pb.h"

namespace forge::exec {

struct CommandProfile {
  std::string name;
  // Queues whose tasks this profile runs (at least one).
  std::vector<std::string> queues;
  // argv template; with `shell`, exactly one element: a /bin/sh script whose
  // `{param}`s are substituted shell-quoted.
  std::vector<std::string> command;
  bool shell = false;
  // What the process reads on stdin: the task input (default), the input
  // followed by the direct dependencies' outputs (each after a
  // "--- upstream: NAME ---" line; for agent pipelines), or nothing
  // (/dev/null). The outputs are also files in $FORGE_UPSTREAM_DIR.
  enum class Stdin { kInput, kInputWithUpstream, kNone };
  Stdin stdin_mode = Stdin::kInput;
  // Working directory template inside `root` (empty: a fresh directory per
  // attempt under the runner's work root, removed afterwards unless
  // keep_workdir).
  std::string workdir;
  std::string root;
  bool keep_workdir = false;
  // Environment: names copied from the server's own environment, fixed
  // variables, and (if task_env) the task's TaskSpec.env.
  std::vector<std::string> env_allow;
  std::map<std::string, std::string> env;
  bool task_env = false;
  // Longest one attempt may run (0 = only the task's run timeout applies).
  absl::Duration timeout = absl::ZeroDuration();
  // Bytes of stdout and of stderr kept (and published live) per attempt;
  // past it the output is drained and dropped, and the truncation marked.
  int64_t output_cap = 1 << 20;
  int32_t slots = 2;
};

struct RunnerConfig {
  std::vector<CommandProfile> profiles;
  // Where fresh per-attempt working directories are made (empty: a
  // "forge-runs" directory under the system's temporary directory).
  std::string work_root;
  // SIGTERM to a process group, then SIGKILL this long after.
  absl::Duration kill_grace = absl::Seconds(5);
};

// Checks a config: names, queues served by one profile each, templates that
// parse, limits. INVALID_ARGUMENT naming the profile and field.
absl::Status ValidateConfig(const RunnerConfig& config);

// The `{name}`s a template refers to (built-ins excluded). INVALID_ARGUMENT
// for an unbalanced brace.
absl::StatusOr<std::vector<std::string>> TemplateParams(const std::string& tmpl);

// What a template may refer to beyond the task's params.
struct Builtins {
  std::string graph_id;
  std::string task;
  int32_t attempt = 0;
};

// Replaces `{name}` by params[name] (or a built-in: {graph_id}, {task},
// {attempt}); `{{` and `}}` are literal braces. `shell_quote` quotes each
// substituted value for /bin/sh. INVALID_ARGUMENT for a missing param.
absl::StatusOr<std::string> Expand(
    const std::string& tmpl,
    const google::protobuf::Map<std::string, std::string>& params,
    const Builtins& builtins, bool shell_quote);

// The argv of an attempt (shell profiles: /bin/sh -c SCRIPT).
absl::StatusOr<std::vector<std::string>> BuildArgv(
    const CommandProfile& profile, const forge::v1::Assignment& assignment);

// The working directory of an attempt with a workdir template: root/expanded,
// normalized; INVALID_ARGUMENT if it is absolute outside the root or climbs
// out with `..`. (Symlinks are checked against the root when it exists.)
absl::StatusOr<std::string> ResolveWorkdir(
    const CommandProfile& profile, const forge::v1::Assignment& assignment);

// The environment of an attempt, as NAME=VALUE strings. `server_env` is the
// server's environment (environ).
std::vector<std::string> BuildEnv(const CommandProfile& profile,
                                  const forge::v1::Assignment& assignment,
                                  const std::string& workdir,
                                  char** server_env);

// A variable name a task may set: [A-Za-z_][A-Za-z0-9_]*, at most 128 bytes,
// and not one that changes how programs are loaded (LD_*) or Forge's own
// (FORGE_*).
bool ValidTaskEnvName(const std::string& name);

// The bytes an attempt reads on stdin (see CommandProfile::stdin_mode).
std::string StdinData(const CommandProfile& profile,
                      const forge::v1::Assignment& assignment);

// Submit-time check of a task that one of `profile`'s queues will run: the
// params its templates need, a workdir that stays inside the root, env
// allowed. `field` names the task in errors ("tasks[3]").
absl::Status ValidateTask(const CommandProfile& profile,
                          const forge::v1::TaskSpec& task,
                          const std::string& field);

}  // namespace forge::exec
