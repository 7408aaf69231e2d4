#include "client/forgectl/args.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace forge {
namespace forgectl {

std::string ParsedArgs::Get(const std::string& name,
                            const std::string& fallback) const {
  auto it = values_.find(name);
  if (it == values_.end() || it->second.empty()) return fallback;
  return it->second.back();
}

std::vector<std::string> ParsedArgs::GetAll(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& args,
                                     const std::vector<FlagSpec>& specs) {
  ParsedArgs parsed;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {
      parsed.positional_.insert(parsed.positional_.end(), args.begin() + i + 1,
                                args.end());
      break;
    }
    // "-" alone is a value (standard input), not a flag.
    if (arg.size() < 2 || arg[0] != '-') {
      parsed.positional_.push_back(arg);
      continue;
    }
    const FlagSpec* spec = nullptr;
    std::string inline_value;
    bool has_inline_value = false;
    if (absl::StartsWith(arg, "--")) {
      std::string name = arg.substr(2);
      const size_t eq = name.find('=');
      if (eq != std::string::npos) {
        inline_value = name.substr(eq + 1);
        has_inline_value = true;
        name.resize(eq);
      }
      for (const FlagSpec& s : specs) {
        if (s.name == name) spec = &s;
      }
    } else {
      const std::string name = arg.substr(1, 1);
      for (const FlagSpec& s : specs) {
        if (!s.short_name.empty() && s.short_name == name) spec = &s;
      }
      if (arg.size() > 2) {
        inline_value = arg.substr(arg[2] == '=' ? 3 : 2);
        has_inline_value = true;
      }
    }
    if (spec == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag \"", arg, "\""));
    }
    const std::string shown = absl::StrCat(
        absl::StartsWith(arg, "--") ? "--" : "-",
        absl::StartsWith(arg, "--") ? spec->name : spec->short_name);
    std::string value;
    if (spec->takes_value) {
      if (has_inline_value) {
        value = inline_value;
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            "flag ", shown, " needs a value (", spec->value_name, ")"));
      }
    } else if (has_inline_value) {
      return absl::InvalidArgumentError(
          absl::StrCat("flag ", shown, " takes no value"));
    }
    parsed.values_[spec->name].push_back(value);
  }
  return parsed;
}

std::string FlagsUsage(const std::vector<FlagSpec>& specs) {
  std::vector<std::string> left;
  size_t width = 0;
  for (const FlagSpec& s : specs) {
    std::string text = s.short_name.empty()
                           ? absl::StrCat("      --", s.name)
                           : absl::StrCat("  -", s.short_name, ", --", s.name);
    if (s.takes_value) absl::StrAppend(&text, " ", s.value_name);
    width = std::max(width, text.size());
    left.push_back(std::move(text));
  }
  std::string out;
  for (size_t i = 0; i < specs.size(); ++i) {
    absl::StrAppend(&out, left[i], std::string(width - left[i].size() + 3, ' '),
                    specs[i].help, "\n");
  }
  return out;
}

}  // namespace forgectl
}  // namespace forge
