// Hand-written command-line parsing for forgectl (no flags library: the CLI
// must not pull in a new dependency).
//
// Accepted spellings: `--name value`, `--name=value`, `-n value`, `-nvalue`,
// `-n=value`; boolean flags take no value. `--` ends the flags. Flags and
// positional arguments may be mixed in any order.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace forge {
namespace forgectl {

struct FlagSpec {
  std::string name;        // Long name without dashes: "server".
  std::string short_name;  // One letter or empty: "o".
  bool takes_value = false;
  std::string value_name;  // For usage text: "HOST:PORT".
  std::string help;
};

class ParsedArgs {
 public:
  // True if the flag was given (at least once).
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  // The last value of a flag, or `fallback` if it was not given.
  std::string Get(const std::string& name,
                  const std::string& fallback = "") const;
  // Every value of a repeatable flag, in order.
  std::vector<std::string> GetAll(const std::string& name) const;

  const std::vector<std::string>& positional() const { return positional_; }

 private:
  friend absl::StatusOr<ParsedArgs> ParseArgs(
      const std::vector<std::string>& args, const std::vector<FlagSpec>& specs);

  std::vector<std::string> positional_;
  std::map<std::string, std::vector<std::string>> values_;
};

// Parses `args` (without the program name) against `specs`. An unknown flag
// or a missing value is InvalidArgument naming it.
absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& args,
                                     const std::vector<FlagSpec>& specs);

// Usage lines for `specs`, one per flag, aligned:
//   "  -o, --output FORMAT   table, json or yaml (default table)\n".
std::string FlagsUsage(const std::vector<FlagSpec>& specs);

}  // namespace forgectl
}  // namespace forge
