#include "server/server_config.h"

#include <yaml-cpp/yaml.h>

#include <exception>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
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

}  // namespace

absl::Status ParseServerConfig(const std::string& text, ServerOptions* options) {
  // yaml-cpp reports errors by throwing: caught here, at the edge.
  try {
    const YAML::Node root = YAML::Load(text);
    if (!root || root.IsNull()) return absl::OkStatus();
    if (!root.IsMap()) {
      return absl::InvalidArgumentError("config: expected a map at the top");
    }
    RETURN_IF_ERROR(UnknownKeys(root, "config", {"default_queue", "queues"}));
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
