// Graph files: YAML or JSON documents that map one to one onto
// forge.v1.GraphSpec, and the proto -> JSON / YAML printers the CLI uses.
//
// JSON files are read with exactly the proto3 JSON mapping
// (google::protobuf::util::JsonStringToMessage): keys are the proto field
// names or their lowerCamelCase JSON names, unknown fields are an error.
//
// YAML files use the same keys. A YAML document is converted to proto JSON
// guided by the message descriptor, so every value is read as the type its
// field declares rather than as YAML's guess:
//   - string fields (and map<string, string> keys and values) keep the text
//     exactly as written, even when it looks like a number or a bool:
//     `name: 5`, `params: {retries: 05, dry_run: yes}` and `labels: {5: x}`
//     give "5", "05", "yes" and key "5";
//   - bool fields take true/false (YAML 1.2 core spellings), integer fields
//     decimal integers (range-checked), double fields numbers (.inf, -.inf and
//     .nan too), enum fields the exact proto value name (e.g. ALL_DONE);
//   - google.protobuf.Duration takes "1.5s", "600s", "100ms", "2m", "1h",
//     "1h30m" (absl::ParseDuration units ns, us, ms, s, m, h);
//     google.protobuf.Timestamp takes RFC 3339 ("2024-05-01T10:00:00Z");
//   - maps take YAML mappings, repeated fields sequences (a single scalar for
//     a repeated scalar field is a one-element list: `depends_on: a`),
//     message fields mappings;
//   - an unquoted null (`depends_on:`, `~`, `null`) leaves a field unset; as
//     a map value it is the value type's default ("" for strings);
//   - CONVENIENCE, on purpose: a `bytes` field (TaskSpec.input) written as a
//     plain YAML string is taken as that string's UTF-8 bytes, so prompts can
//     be written as text (block scalars `|` included). A `!!binary` scalar is
//     taken as base64. (JSON keeps the proto mapping: bytes are base64.)
// A field given twice (also as depends_on and dependsOn), a repeated map
// key, several YAML documents in one file, and anchors expanding past 64 MiB
// are errors too. Errors are absl::InvalidArgumentError naming the field
// path (map entries as params["key"]) and, for YAML, the line:
//   tasks[2].priority (line 14): expected an integer, got "high"
//   tasks[0].nmae (line 3): unknown field (did you mean "name"?)
// JSON errors name the path only: tasks[0].nmae: unknown field
//
// ToYaml is the inverse: ParseGraphFile(ToYaml(spec), kYaml) == spec.
//
// Thread-safe: every function is pure.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "forge/v1/types.pb.h"
#include "google/protobuf/message.h"

namespace forge {

enum class GraphFileFormat {
  kYaml,
  kJson,
  // JSON if the first non-blank character is '{', else YAML.
  kAuto,
};

// Parses a graph file held in `text`. Only syntax and types are checked here;
// semantic validation (names, references, cycles, limits) is the server's.
// Returns InvalidArgument with the field path (and, for YAML, the line) on
// any error.
absl::StatusOr<forge::v1::GraphSpec> ParseGraphFile(absl::string_view text,
                                                    GraphFileFormat format);

// Reads and parses the file at `path` ("-" = standard input). The format
// comes from the extension (.yaml/.yml -> YAML, .json -> JSON), else from
// the content (kAuto). A file that cannot be read gives NotFound /
// PermissionDenied / Internal naming the path; parse errors are
// InvalidArgument prefixed with the path.
absl::StatusOr<forge::v1::GraphSpec> LoadGraphFile(const std::string& path);

// Converts any YAML document to `message` with the rules above (the parser
// behind ParseGraphFile's YAML branch, usable for other protos). `message`
// is cleared first.
absl::Status YamlToMessage(absl::string_view text,
                           google::protobuf::Message* message);

// Proto3 JSON of `message`, with the proto field names (snake_case, as in
// graph files) and fields at their default value omitted. `pretty` indents
// with two spaces and ends with a newline; otherwise one line, no newline.
std::string ToJson(const google::protobuf::Message& message,
                   bool pretty = true);

// Block-style YAML of `message`, ending with a newline: proto field names,
// default-valued fields omitted, enums by name, Duration/Timestamp in their
// JSON string forms, int64 as plain numbers, map entries sorted by key,
// strings quoted whenever YAML would read them as something else, multi-line
// strings as literal blocks. bytes fields that are printable UTF-8 text are
// written as text (see the convenience above), others as !!binary base64.
std::string ToYaml(const google::protobuf::Message& message);

}  // namespace forge
