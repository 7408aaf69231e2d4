#include "server/server_config.h"

#include <yaml-cpp/yaml.h>

#include <exception>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/status.h"

namespace forge {
namespace {

std::string Where(const YAML::Node& n, const std::string& path) {
  return absl::StrCat(path, " (line ", n.Mark().line + 1, ")");
}

absl::Status UnknownKeys(const YAML::Node& map, const std::string& path,
                         std::initializer_list<const char*> known) {
  for (const auto& kv : map) {
    const std::string key = kv.first.as<std::string>();
    bool ok = false;
    for (const char* k : known) ok = ok || key == k;
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat(Where(kv.first, path + "." + key), ": unknown key"));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseQueue(const YAML::Node& n, const std::string& path,
                        sched::QueueConfig* out) {
  if (!n.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(Where(n, path), ": expected a map"));
  }
  RETURN_IF_ERROR(
      UnknownKeys(n, path, {"concurrency", "ordering", "per_key_concurrency"}));
  if (n["concurrency"]) {
    out->concurrency = n["concurrency"].as<int32_t>();
    if (out->concurrency < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          Where(n["concurrency"], path + ".concurrency"), ": must not be negative"));
    }
  }
  if (n["ordering"]) {
    const std::string mode = n["ordering"].as<std::string>();
    if (!sched::ParseOrderingMode(mode, &out->mode)) {
      return absl::InvalidArgumentError(absl::StrCat(
          Where(n["ordering"], path + ".ordering"), ": \"", mode,
          "\" is not relaxed, per_key or strict"));
    }
  }
  if (n["per_key_concurrency"]) {
    out->per_key_concurrency = n["per_key_concurrency"].as<int32_t>();
    if (out->per_key_concurrency < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          Where(n["per_key_concurrency"], path + ".per_key_concurrency"),
          ": must be at least 1"));
    }
  }
  return absl::OkStatus();
}

absl::Status Expect(bool ok, const YAML::Node& n, const std::string& path,
                    const char* what) {
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(Where(n, path), ": expected ", what));
}

absl::Status ParseDuration(const YAML::Node& n, const std::string& path,
                           absl::Duration* out) {
  RETURN_IF_ERROR(Expect(n.IsScalar(), n, path, "a duration (30s, 10m, 1h)"));
  if (!absl::ParseDuration(n.as<std::string>(), out) || *out < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        Where(n, path), ": \"", n.as<std::string>(),
        "\" is not a duration (30s, 10m, 1h)"));
  }
  return absl::OkStatus();
}

absl::Status ParseStrings(const YAML::Node& n, const std::string& path,
                          std::vector<std::string>* out) {
  if (n.IsScalar()) {
    out->push_back(n.as<std::string>());
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(Expect(n.IsSequence(), n, path, "a list of strings"));
  for (const YAML::Node& item : n) {
    RETURN_IF_ERROR(Expect(item.IsScalar(), item, path, "a list of strings"));
    out->push_back(item.as<std::string>());
  }
  return absl::OkStatus();
}

absl::Status ParseProfile(const YAML::Node& n, const std::string& path,
                          exec::CommandProfile* p) {
  RETURN_IF_ERROR(Expect(n.IsMap(), n, path, "a map"));
  RETURN_IF_ERROR(UnknownKeys(
      n, path,
      {"queues", "command", "shell", "stdin", "workdir", "root", "keep_workdir",
       "env_allow", "env", "task_env", "timeout", "output_cap", "slots"}));
  if (n["queues"]) RETURN_IF_ERROR(ParseStrings(n["queues"], path + ".queues", &p->queues));
  if (p->queues.empty()) p->queues.push_back(p->name);
  if (n["command"]) {
    RETURN_IF_ERROR(ParseStrings(n["command"], path + ".command", &p->command));
  }
  if (n["shell"]) p->shell = n["shell"].as<bool>();
  if (const YAML::Node in = n["stdin"]) {
    const std::string v = in.as<std::string>();
    using Stdin = exec::CommandProfile::Stdin;
    if (v == "input") {
      p->stdin_mode = Stdin::kInput;
    } else if (v == "input_with_upstream") {
      p->stdin_mode = Stdin::kInputWithUpstream;
    } else if (v == "none") {
      p->stdin_mode = Stdin::kNone;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          Where(in, path + ".stdin"), ": \"", v,
          "\" is not input, input_with_upstream or none"));
    }
  }
  if (n["workdir"]) p->workdir = n["workdir"].as<std::string>();
  if (n["root"]) p->root = n["root"].as<std::string>();
  if (n["keep_workdir"]) p->keep_workdir = n["keep_workdir"].as<bool>();
  if (n["env_allow"]) {
    RETURN_IF_ERROR(ParseStrings(n["env_allow"], path + ".env_allow", &p->env_allow));
  }
  if (const YAML::Node env = n["env"]) {
    RETURN_IF_ERROR(Expect(env.IsMap(), env, path + ".env", "a map of variables"));
    for (const auto& kv : env) p->env[kv.first.as<std::string>()] = kv.second.as<std::string>();
  }
  if (n["task_env"]) p->task_env = n["task_env"].as<bool>();
  if (n["timeout"]) RETURN_IF_ERROR(ParseDuration(n["timeout"], path + ".timeout", &p->timeout));
  if (n["output_cap"]) p->output_cap = n["output_cap"].as<int64_t>();
  if (n["slots"]) p->slots = n["slots"].as<int32_t>();
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseServerConfig(const std::string& text, ServerOptions* options) {
  // yaml-cpp reports errors by throwing: caught here, at the edge.
  try {
    const YAML::Node root = YAML::Load(text);
    if (!root || root.IsNull()) return absl::OkStatus();
    if (!root.IsMap()) {
      return absl::InvalidArgumentError("config: expected a map at the top");
    }
    RETURN_IF_ERROR(UnknownKeys(root, "config",
                                {"default_queue", "queues", "runner", "profiles"}));
    if (root["default_queue"]) {
      RETURN_IF_ERROR(ParseQueue(root["default_queue"], "default_queue",
                                 &options->engine.default_queue));
    }
    if (const YAML::Node queues = root["queues"]) {
      if (!queues.IsMap()) {
        return absl::InvalidArgumentError(
            absl::StrCat(Where(queues, "queues"), ": expected a map of queues"));
      }
      for (const auto& kv : queues) {
        const std::string name = kv.first.as<std::string>();
        sched::QueueConfig q = options->engine.default_queue;
        RETURN_IF_ERROR(ParseQueue(kv.second, "queues." + name, &q));
        options->queues[name] = q;
      }
    }
    exec::RunnerConfig& runner = options->runner;
    if (const YAML::Node r = root["runner"]) {
      RETURN_IF_ERROR(Expect(r.IsMap(), r, "runner", "a map"));
      RETURN_IF_ERROR(UnknownKeys(r, "runner", {"work_root", "kill_grace"}));
      if (r["work_root"]) runner.work_root = r["work_root"].as<std::string>();
      if (r["kill_grace"]) {
        RETURN_IF_ERROR(ParseDuration(r["kill_grace"], "runner.kill_grace", &runner.kill_grace));
      }
    }
    if (const YAML::Node profiles = root["profiles"]) {
      RETURN_IF_ERROR(Expect(profiles.IsMap(), profiles, "profiles", "a map of profiles"));
      for (const auto& kv : profiles) {
        exec::CommandProfile p;
        p.name = kv.first.as<std::string>();
        RETURN_IF_ERROR(ParseProfile(kv.second, "profiles." + p.name, &p));
        runner.profiles.push_back(std::move(p));
      }
    }
    if (absl::Status s = exec::ValidateConfig(runner); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("config: ", s.message()));
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status LoadServerConfig(const std::string& path, ServerOptions* options) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("config: cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  absl::Status s = ParseServerConfig(text.str(), options);
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  }
  return absl::OkStatus();
}

}  // namespace forge
