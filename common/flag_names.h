// Command lines spell flags with dashes (--metrics-listen); absl's flag
// names use underscores. NormalizeFlagNames accepts both.
#pragma once

#include <string>
#include <vector>

namespace forge {

// argv with every "--flag-name[=value]" rewritten to "--flag_name[=value]"
// (values untouched). The returned pointers point into `storage`.
std::vector<char*> NormalizeFlagNames(int argc, char** argv,
                                      std::vector<std::string>& storage);

}  // namespace forge
