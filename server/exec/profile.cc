#include "server/exec/profile.h"

#include <cstring>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace forge::exec {

namespace v1 = ::forge::v1;
namespace fs = std::filesystem;

namespace {

constexpr const char* kBuiltins[] = {"graph_id", "task", "attempt"};

bool IsBuiltin(const std::string& name) {
  for (const char* b : kBuiltins) {
    if (name == b) return true;
  }
  return false;
}

bool NameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
}

// Walks a template: calls `literal` for plain text and `param` for each
// {name}. INVALID_ARGUMENT for an unbalanced brace or an empty name.
template <typename Literal, typename Param>
absl::Status Walk(const std::string& t, Literal literal, Param param) {
  for (size_t i = 0; i < t.size();) {
    const char c = t[i];
    if (c == '{' && i + 1 < t.size() && t[i + 1] == '{') {
      literal("{");
      i += 2;
    } else if (c == '}' && i + 1 < t.size() && t[i + 1] == '}') {
      literal("}");
      i += 2;
    } else if (c == '{') {
      size_t end = i + 1;
      while (end < t.size() && NameChar(t[end])) ++end;
      if (end >= t.size() || t[end] != '}' || end == i + 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "template \"", t, "\": '{' at ", i,
            " must open {name} (name: [A-Za-z0-9_.-]+) or be doubled"));
      }
      RETURN_IF_ERROR(param(t.substr(i + 1, end - i - 1)));
      i = end + 1;
    } else if (c == '}') {
      return absl::InvalidArgumentError(absl::StrCat(
          "template \"", t, "\": unmatched '}' at ", i, " (write }} for a brace)"));
    } else {
      const size_t next = t.find_first_of("{}", i);
      const size_t stop = next == std::string::npos ? t.size() : next;
      literal(absl::string_view(t).substr(i, stop - i));
      i = stop;
    }
  }
  return absl::OkStatus();
}

std::string ShellQuote(absl::string_view v) {
  std::string out = "'";
  for (char c : v) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  out += "'";
  return out;
}

absl::StatusOr<std::string> ResolveIn(
    const CommandProfile& profile,
    const google::protobuf::Map<std::string, std::string>& params,
    const Builtins& builtins) {
  ASSIGN_OR_RETURN(std::string expanded,
                   Expand(profile.workdir, params, builtins, false));
  const fs::path root = fs::path(profile.root).lexically_normal();
  const fs::path p(expanded);
  const fs::path full = (p.is_absolute() ? p : root / p).lexically_normal();
  const fs::path rel = full.lexically_relative(root);
  if (expanded.empty() || rel.empty() || *rel.begin() == "..") {
    return absl::InvalidArgumentError(absl::StrCat(
        "workdir \"", expanded, "\" is not inside the root ", root.string()));
  }
  return full.string();
}

}  // namespace

absl::StatusOr<std::vector<std::string>> TemplateParams(const std::string& tmpl) {
  std::vector<std::string> out;
  RETURN_IF_ERROR(Walk(
      tmpl, [](absl::string_view) {},
      [&](const std::string& name) {
        if (!IsBuiltin(name)) out.push_back(name);
        return absl::OkStatus();
      }));
  return out;
}

absl::StatusOr<std::string> Expand(
    const std::string& tmpl,
    const google::protobuf::Map<std::string, std::string>& params,
    const Builtins& builtins, bool shell_quote) {
  std::string out;
  RETURN_IF_ERROR(Walk(
      tmpl, [&](absl::string_view s) { out.append(s.data(), s.size()); },
      [&](const std::string& name) -> absl::Status {
        std::string value;
        if (name == "graph_id") {
          value = builtins.graph_id;
        } else if (name == "task") {
          value = builtins.task;
        } else if (name == "attempt") {
          value = absl::StrCat(builtins.attempt);
        } else {
          auto it = params.find(name);
          if (it == params.end()) {
            return absl::InvalidArgumentError(
                absl::StrCat("missing param \"", name, "\""));
          }
          value = it->second;
        }
        out += shell_quote ? ShellQuote(value) : value;
        return absl::OkStatus();
      }));
  return out;
}

absl::StatusOr<std::vector<std::string>> BuildArgv(
    const CommandProfile& profile, const v1::Assignment& a) {
  const Builtins b{a.lease().graph_id(), a.task(), a.lease().attempt()};
  std::vector<std::string> argv;
  if (profile.shell) {
    ASSIGN_OR_RETURN(std::string script,
                     Expand(profile.command.at(0), a.params(), b, true));
    return std::vector<std::string>{"/bin/sh", "-c", std::move(script)};
  }
  for (const std::string& t : profile.command) {
    ASSIGN_OR_RETURN(std::string arg, Expand(t, a.params(), b, false));
    argv.push_back(std::move(arg));
  }
  return argv;
}

absl::StatusOr<std::string> ResolveWorkdir(const CommandProfile& profile,
                                           const v1::Assignment& a) {
  return ResolveIn(profile, a.params(),
                   Builtins{a.lease().graph_id(), a.task(), a.lease().attempt()});
}

std::string StdinData(const CommandProfile& profile, const v1::Assignment& a) {
  switch (profile.stdin_mode) {
    case CommandProfile::Stdin::kNone:
      return "";
    case CommandProfile::Stdin::kInput:
      return a.input();
    case CommandProfile::Stdin::kInputWithUpstream:
      break;
  }
  std::string out = a.input();
  // Map order is unspecified: name order, so a retry reads the same bytes.
  std::map<std::string, const std::string*> upstream;
  for (const auto& [name, output] : a.upstream_outputs()) upstream[name] = &output;
  for (const auto& [name, output] : upstream) {
    absl::StrAppend(&out, out.empty() || out.back() == '\n' ? "" : "\n",
                    "\n--- upstream: ", name, " ---\n", *output);
  }
  for (const std::string& name : a.truncated_upstream()) {
    absl::StrAppend(&out, out.empty() || out.back() == '\n' ? "" : "\n",
                    "\n--- upstream: ", name, " (too large to include) ---\n");
  }
  return out;
}

bool ValidTaskEnvName(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  if (name[0] >= '0' && name[0] <= '9') return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '_';
    if (!ok) return false;
  }
  return name.rfind("LD_", 0) != 0 && name.rfind("FORGE_", 0) != 0;
}

std::vector<std::string> BuildEnv(const CommandProfile& profile,
                                  const v1::Assignment& a,
                                  const std::string& workdir,
                                  char** server_env) {
  std::map<std::string, std::string> env;
  for (const std::string& name : profile.env_allow) {
    for (char** e = server_env; e != nullptr && *e != nullptr; ++e) {
      const size_t n = name.size();
      if (std::strncmp(*e, name.c_str(), n) == 0 && (*e)[n] == '=') {
        env[name] = *e + n + 1;
        break;
      }
    }
  }
  for (const auto& [k, v] : profile.env) env[k] = v;
  if (profile.task_env) {
    for (const auto& [k, v] : a.env()) {
      if (ValidTaskEnvName(k)) env[k] = v;
    }
  }
  env["FORGE_GRAPH_ID"] = a.lease().graph_id();
  env["FORGE_TASK"] = a.task();
  env["FORGE_ATTEMPT"] = absl::StrCat(a.lease().attempt());
  env["FORGE_WORKDIR"] = workdir;
  if (!a.traceparent().empty()) env["TRACEPARENT"] = a.traceparent();
  std::vector<std::string> out;
  out.reserve(env.size());
  for (const auto& [k, v] : env) out.push_back(absl::StrCat(k, "=", v));
  return out;
}

absl::Status ValidateTask(const CommandProfile& profile, const v1::TaskSpec& task,
                          const std::string& field) {
  auto need = [&](const std::string& tmpl) -> absl::Status {
    ASSIGN_OR_RETURN(std::vector<std::string> names, TemplateParams(tmpl));
    for (const std::string& n : names) {
      if (!task.params().contains(n)) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".params: profile \"", profile.name,
                         "\" needs param \"", n, "\""));
      }
    }
    return absl::OkStatus();
  };
  for (const std::string& t : profile.command) RETURN_IF_ERROR(need(t));
  if (!profile.workdir.empty()) {
    RETURN_IF_ERROR(need(profile.workdir));
    absl::StatusOr<std::string> dir =
        ResolveIn(profile, task.params(), Builtins{"graph", task.name(), 1});
    if (!dir.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".params: profile \"", profile.name, "\": ", dir.status().message()));
    }
  }
  if (!task.env().empty() && !profile.task_env) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".env: profile \"", profile.name,
                     "\" does not take task environment variables"));
  }
  for (const auto& [k, v] : task.env()) {
    if (!ValidTaskEnvName(k)) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".env: \"", k,
          "\" is not a name a task may set ([A-Za-z_][A-Za-z0-9_]*, not LD_* "
          "or FORGE_*)"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateConfig(const RunnerConfig& config) {
  std::set<std::string> names;
  std::map<std::string, std::string> queue_owner;
  for (const CommandProfile& p : config.profiles) {
    const std::string at = absl::StrCat("profiles.", p.name);
    if (p.name.empty()) {
      return absl::InvalidArgumentError("profiles: a profile needs a name");
    }
    for (char c : p.name) {
      if (!NameChar(c)) {
        return absl::InvalidArgumentError(
            absl::StrCat(at, ": a profile name is [A-Za-z0-9_.-]+"));
      }
    }
    if (!names.insert(p.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(at, ": defined twice"));
    }
    if (p.queues.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(at, ".queues: at least one queue"));
    }
    for (const std::string& q : p.queues) {
      auto [it, inserted] = queue_owner.emplace(q, p.name);
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat(at, ".queues: queue \"", q,
                         "\" is already served by profile \"", it->second, "\""));
      }
    }
    if (p.command.empty() || p.command[0].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(at, ".command: required"));
    }
    if (p.shell && p.command.size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          at, ".command: a shell profile takes exactly one element (the script)"));
    }
    for (const std::string& t : p.command) {
      if (absl::StatusOr<std::vector<std::string>> ok = TemplateParams(t); !ok.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(at, ".command: ", ok.status().message()));
      }
    }
    if (!p.workdir.empty()) {
      if (p.root.empty() || !fs::path(p.root).is_absolute()) {
        return absl::InvalidArgumentError(absl::StrCat(
            at, ".root: an absolute directory is required with a workdir"));
      }
      if (absl::StatusOr<std::vector<std::string>> ok = TemplateParams(p.workdir);
          !ok.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(at, ".workdir: ", ok.status().message()));
      }
    }
    for (const auto& [k, v] : p.env) {
      if (k.empty() || k.find('=') != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat(at, ".env: \"", k, "\" is not a variable name"));
      }
    }
    if (p.slots < 1 || p.slots > 1024) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, ".slots: ", p.slots, " is outside 1..1024"));
    }
    if (p.output_cap < 1 || p.output_cap > (4 << 20)) {
      return absl::InvalidArgumentError(absl::StrCat(
          at, ".output_cap: ", p.output_cap, " is outside 1..4194304 bytes"));
    }
    if (p.timeout < absl::ZeroDuration()) {
      return absl::InvalidArgumentError(absl::StrCat(at, ".timeout: negative"));
    }
  }
  if (config.kill_grace < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("runner.kill_grace: negative");
  }
  return absl::OkStatus();
}

}  // namespace forge::exec
