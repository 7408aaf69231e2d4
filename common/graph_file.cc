// Graph files: YAML/JSON -> GraphSpec, and proto -> JSON/YAML printers.
//
// The YAML reader walks the YAML tree alongside the message Descriptor and
// writes proto3 JSON text, which JsonStringToMessage then parses: the JSON
// mapping stays the single definition of how values land in the proto, while
// the walk knows each field's type (so "5" stays a string where a string is
// expected) and each node's line (so errors point at the file).
//
// yaml-cpp reports errors with exceptions; they are caught in this file, at
// the boundary of each public function, and become absl::Status.

#include "common/graph_file.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <iterator>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "common/status.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "yaml-cpp/yaml.h"

namespace forge {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumDescriptor;
using google::protobuf::EnumValueDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;
using google::protobuf::util::TimeUtil;

constexpr absl::string_view kBinaryTag = "tag:yaml.org,2002:binary";

// A YAML document whose JSON form grows past this is refused: aliases can
// expand a small file exponentially ("billion laughs").
constexpr size_t kMaxJsonBytes = 64 << 20;

// ---------------------------------------------------------------------------
// Small text helpers
// ---------------------------------------------------------------------------

// `s` as a JSON string literal. `s` must be valid UTF-8 (checked by callers).
std::string JsonQuote(absl::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          absl::StrAppendFormat(&out, "\\u%04x", c);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
  return out;
}

// A user value quoted for an error message, shortened if long.
std::string Shown(absl::string_view s) {
  constexpr size_t kMax = 60;
  if (s.size() <= kMax)
    return absl::StrCat("\"", absl::Utf8SafeCHexEscape(s), "\"");
  return absl::StrCat("\"", absl::Utf8SafeCHexEscape(s.substr(0, kMax)),
                      "...\"");
}

bool IsValidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    int extra;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      extra = 1;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      extra = 2;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      extra = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= s.size()) return false;  // Truncated sequence.
    for (int k = 1; k <= extra; ++k) {
      const unsigned char cc = s[i + k];
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    // Overlong forms, surrogates and values past U+10FFFF are invalid.
    if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) ||
        (extra == 3 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

// Levenshtein distance, for "did you mean" hints on short field names.
size_t EditDistance(absl::string_view a, absl::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min(
          {row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// ---------------------------------------------------------------------------
// YAML -> proto JSON, guided by the descriptor
// ---------------------------------------------------------------------------

// 1-based line of `node`, or 0 when yaml-cpp has no position for it.
int LineOf(const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  return mark.line < 0 ? 0 : mark.line + 1;
}

const char* KindOf(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "null";
    case YAML::NodeType::Scalar:
      return "a scalar";
    case YAML::NodeType::Sequence:
      return "a sequence";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

// What a scalar or node looks like in an error: the scalar's text, quoted,
// else its kind.
std::string Got(const YAML::Node& node) {
  return node.IsScalar() ? Shown(node.Scalar()) : std::string(KindOf(node));
}

bool IsWrapper(const Descriptor* d) {
  static const std::set<std::string>* const kWrappers =
      new std::set<std::string>{
          "google.protobuf.DoubleValue", "google.protobuf.FloatValue",
          "google.protobuf.Int64Value",  "google.protobuf.UInt64Value",
          "google.protobuf.Int32Value",  "google.protobuf.UInt32Value",
          "google.protobuf.BoolValue",   "google.protobuf.StringValue",
          "google.protobuf.BytesValue"};
  return kWrappers->count(d->full_name()) > 0;
}

// Writes the JSON for one YAML document. Each method appends to `out_` and
// returns InvalidArgument "<path> (line N): <what>" on the first error.
class YamlToJsonConverter {
 public:
  // Converts `node` (the document root) as a message of type `d`.
  absl::Status Root(const YAML::Node& node, const Descriptor* d) {
    if (!node.IsMap()) {
      return Error("", LineOf(node),
                   absl::StrCat("expected a mapping (", d->name(), "), got ",
                                KindOf(node)));
    }
    return MessageValue(node, d, "");
  }

  std::string TakeJson() { return std::move(out_); }

 private:
  static absl::Status Error(const std::string& path, int line,
                            absl::string_view what) {
    std::string where = path.empty() ? "document" : path;
    if (line > 0) absl::StrAppend(&where, " (line ", line, ")");
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
  }

  absl::Status CheckSize(const std::string& path, int line) {
    if (out_.size() > kMaxJsonBytes) {
      return Error(path, line, "document too large once aliases are expanded");
    }
    return absl::OkStatus();
  }

  // The field of `d` named `key` (proto name or JSON name), or null.
  static const FieldDescriptor* FindField(const Descriptor* d,
                                          const std::string& key) {
    if (const FieldDescriptor* f = d->FindFieldByName(key)) return f;
    for (int i = 0; i < d->field_count(); ++i) {
      if (d->field(i)->json_name() == key) return d->field(i);
    }
    return nullptr;
  }

  static std::string UnknownFieldMessage(const Descriptor* d,
                                         const std::string& key) {
    std::string best;
    size_t best_distance = 3;  // Suggest only close names.
    for (int i = 0; i < d->field_count(); ++i) {
      for (const std::string& name :
           {d->field(i)->name(), d->field(i)->json_name()}) {
        const size_t dist = EditDistance(absl::AsciiStrToLower(key),
                                         absl::AsciiStrToLower(name));
        if (dist < best_distance) {
          best_distance = dist;
          best = d->field(i)->name();
        }
      }
    }
    if (best.empty()) return "unknown field";
    return absl::StrCat("unknown field (did you mean \"", best, "\"?)");
  }

  // A mapping converted as a message of type `d`.
  absl::Status MessageValue(const YAML::Node& node, const Descriptor* d,
                            const std::string& path) {
    if (d->full_name() == "google.protobuf.Struct" ||
        d->full_name() == "google.protobuf.Value" ||
        d->full_name() == "google.protobuf.ListValue" ||
        d->full_name() == "google.protobuf.Any") {
      return Error(
          path, LineOf(node),
          absl::StrCat(d->full_name(), " is not supported in YAML files"));
    }
    struct Seen {
      std::string key;
      int line;
    };
    absl::flat_hash_map<int, Seen> seen_fields;  // By field number.
    absl::flat_hash_map<int, Seen> seen_oneofs;  // By oneof index.
    out_.push_back('{');
    bool first = true;
    for (auto it = node.begin(); it != node.end(); ++it) {
      // Copies: `it->` hands out a temporary proxy.
      const YAML::Node key_node = it->first;
      const YAML::Node value = it->second;
      const int key_line = LineOf(key_node);
      if (!key_node.IsScalar()) {
        return Error(
            path, key_line,
            absl::StrCat("expected a field name, got ", KindOf(key_node)));
      }
      const std::string key = key_node.Scalar();
      const std::string field_path = path.empty() ? key : path + "." + key;
      const FieldDescriptor* field = FindField(d, key);
      if (field == nullptr) {
        return Error(field_path, key_line, UnknownFieldMessage(d, key));
      }
      auto [seen, inserted] =
          seen_fields.try_emplace(field->number(), Seen{key, key_line});
      if (!inserted) {
        return Error(
            field_path, key_line,
            absl::StrCat("duplicate field (already set as \"", seen->second.key,
                         "\" on line ", seen->second.line, ")"));
      }
      if (value.IsNull()) continue;  // Unset.
      if (const auto* oneof = field->real_containing_oneof()) {
        auto [other, fresh] =
            seen_oneofs.try_emplace(oneof->index(), Seen{key, key_line});
        if (!fresh) {
          return Error(
              field_path, key_line,
              absl::StrCat("only one field of \"", oneof->name(),
                           "\" may be set (already set: \"", other->second.key,
                           "\" on line ", other->second.line, ")"));
        }
      }
      if (!first) out_.push_back(',');
      first = false;
      out_ += JsonQuote(field->name());
      out_.push_back(':');
      if (field->is_map()) {
        RETURN_IF_ERROR(MapValue(value, field, field_path, key_line));
      } else if (field->is_repeated()) {
        RETURN_IF_ERROR(RepeatedValue(value, field, field_path));
      } else {
        RETURN_IF_ERROR(SingularValue(value, field, field_path));
      }
      RETURN_IF_ERROR(CheckSize(field_path, key_line));
    }
    out_.push_back('}');
    return absl::OkStatus();
  }

  absl::Status RepeatedValue(const YAML::Node& node,
                             const FieldDescriptor* field,
                             const std::string& path) {
    if (node.IsScalar() &&
        field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) {
      // `depends_on: a` is `depends_on: [a]`.
      out_.push_back('[');
      RETURN_IF_ERROR(SingularValue(node, field, path));
      out_.push_back(']');
      return absl::OkStatus();
    }
    if (!node.IsSequence()) {
      return Error(path, LineOf(node),
                   absl::StrCat("expected a sequence, got ", KindOf(node)));
    }
    out_.push_back('[');
    size_t i = 0;
    for (auto it = node.begin(); it != node.end(); ++it, ++i) {
      const std::string item_path = absl::StrCat(path, "[", i, "]");
      const YAML::Node item = *it;
      if (item.IsNull()) {
        return Error(item_path, LineOf(item), "expected a value, got null");
      }
      if (i > 0) out_.push_back(',');
      RETURN_IF_ERROR(SingularValue(item, field, item_path));
      RETURN_IF_ERROR(CheckSize(item_path, LineOf(item)));
    }
    out_.push_back(']');
    return absl::OkStatus();
  }

  absl::Status MapValue(const YAML::Node& node, const FieldDescriptor* field,
                        const std::string& path, int key_line) {
    if (!node.IsMap()) {
      return Error(path, node.IsScalar() ? LineOf(node) : key_line,
                   absl::StrCat("expected a mapping, got ", Got(node)));
    }
    const FieldDescriptor* key_field = field->message_type()->map_key();
    const FieldDescriptor* value_field = field->message_type()->map_value();
    absl::flat_hash_map<std::string, int> seen;  // JSON key -> line.
    out_.push_back('{');
    bool first = true;
    for (auto it = node.begin(); it != node.end(); ++it) {
      // Copies: `it->` hands out a temporary proxy.
      const YAML::Node key_node = it->first;
      const YAML::Node value = it->second;
      const int line = LineOf(key_node);
      if (!key_node.IsScalar()) {
        return Error(
            path, line,
            absl::StrCat("expected a scalar map key, got ", KindOf(key_node)));
      }
      const std::string& key = key_node.Scalar();
      const std::string entry_path = absl::StrCat(path, "[", Shown(key), "]");
      // The key in its canonical text: JSON map keys are strings.
      std::string json_key;
      {
        std::string converted;
        std::swap(converted, out_);
        absl::Status status = SingularValue(key_node, key_field, entry_path);
        std::swap(converted, out_);
        RETURN_IF_ERROR(status);
        json_key = absl::StrCat(
            "\"", absl::StripSuffix(absl::StripPrefix(converted, "\""), "\""),
            "\"");
      }
      auto [prev, inserted] = seen.try_emplace(json_key, line);
      if (!inserted) {
        return Error(
            entry_path, line,
            absl::StrCat("duplicate key (first on line ", prev->second, ")"));
      }
      if (!first) out_.push_back(',');
      first = false;
      out_ += json_key;
      out_.push_back(':');
      if (value.IsNull()) {
        out_ += DefaultJson(value_field);
      } else {
        RETURN_IF_ERROR(SingularValue(value, value_field, entry_path));
      }
      RETURN_IF_ERROR(CheckSize(entry_path, line));
    }
    out_.push_back('}');
    return absl::OkStatus();
  }

  // JSON of a field's default value (a map entry written `key:`).
  static std::string DefaultJson(const FieldDescriptor* field) {
    switch (field->cpp_type()) {
      case FieldDescriptor::CPPTYPE_STRING:
        return "\"\"";
      case FieldDescriptor::CPPTYPE_BOOL:
        return "false";
      case FieldDescriptor::CPPTYPE_ENUM:
        return JsonQuote(field->enum_type()->value(0)->name());
      case FieldDescriptor::CPPTYPE_MESSAGE:
        return "{}";
      default:
        return "0";
    }
  }

  // One value of `field` (an element, for repeated fields).
  absl::Status SingularValue(const YAML::Node& node,
                             const FieldDescriptor* field,
                             const std::string& path) {
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      const Descriptor* d = field->message_type();
      if (d->full_name() == "google.protobuf.Duration") {
        return DurationValue(node, path);
      }
      if (d->full_name() == "google.protobuf.Timestamp") {
        return TimestampValue(node, path);
      }
      if (IsWrapper(d)) {
        // Wrappers are their bare value in JSON.
        return SingularValue(node, d->FindFieldByName("value"), path);
      }
      if (d->full_name() == "google.protobuf.FieldMask") {
        return StringValue(node, path);
      }
      if (!node.IsMap()) {
        return Error(path, LineOf(node),
                     absl::StrCat("expected a mapping (", d->name(), "), got ",
                                  Got(node)));
      }
      return MessageValue(node, d, path);
    }
    switch (field->type()) {
      case FieldDescriptor::TYPE_STRING:
        return StringValue(node, path);
      case FieldDescriptor::TYPE_BYTES:
        return BytesValue(node, path);
      case FieldDescriptor::TYPE_BOOL:
        return BoolValue(node, path);
      case FieldDescriptor::TYPE_ENUM:
        return EnumValue(node, field->enum_type(), path);
      case FieldDescriptor::TYPE_DOUBLE:
      case FieldDescriptor::TYPE_FLOAT:
        return DoubleValue(node, field->type() == FieldDescriptor::TYPE_FLOAT,
                           path);
      default:
        return IntegerValue(node, field, path);
    }
  }

  // The scalar text of `node`, or an error naming what was expected.
  absl::StatusOr<std::string> ScalarText(const YAML::Node& node,
                                         const std::string& path,
                                         absl::string_view expected) {
    if (!node.IsScalar()) {
      return Error(path, LineOf(node),
                   absl::StrCat("expected ", expected, ", got ", KindOf(node)));
    }
    return node.Scalar();
  }

  absl::Status StringValue(const YAML::Node& node, const std::string& path) {
    ASSIGN_OR_RETURN(std::string text, ScalarText(node, path, "a string"));
    if (!IsValidUtf8(text)) {
      return Error(path, LineOf(node), "string is not valid UTF-8");
    }
    out_ += JsonQuote(text);
    return absl::OkStatus();
  }

  absl::Status BytesValue(const YAML::Node& node, const std::string& path) {
    ASSIGN_OR_RETURN(std::string text,
                     ScalarText(node, path, "a string or !!binary"));
    if (node.Tag() == kBinaryTag) {
      std::string compact = text;
      compact.erase(std::remove_if(
                        compact.begin(), compact.end(),
                        [](unsigned char c) { return absl::ascii_isspace(c); }),
                    compact.end());
      std::string raw;
      if (!absl::Base64Unescape(compact, &raw)) {
        return Error(path, LineOf(node), "invalid base64 in !!binary");
      }
      out_ += JsonQuote(absl::Base64Escape(raw));
    } else {
      // The documented convenience: plain text is its UTF-8 bytes.
      out_ += JsonQuote(absl::Base64Escape(text));
    }
    return absl::OkStatus();
  }

  absl::Status BoolValue(const YAML::Node& node, const std::string& path) {
    ASSIGN_OR_RETURN(std::string text, ScalarText(node, path, "true or false"));
    if (text == "true" || text == "True" || text == "TRUE") {
      out_ += "true";
    } else if (text == "false" || text == "False" || text == "FALSE") {
      out_ += "false";
    } else {
      return Error(path, LineOf(node),
                   absl::StrCat("expected true or false, got ", Shown(text)));
    }
    return absl::OkStatus();
  }

  absl::Status EnumValue(const YAML::Node& node, const EnumDescriptor* e,
                         const std::string& path) {
    std::vector<std::string> names;
    for (int i = 0; i < e->value_count(); ++i) {
      if (i == 0 && absl::EndsWith(e->value(i)->name(), "_UNSPECIFIED")) {
        continue;  // Accepted, but not worth suggesting.
      }
      names.push_back(e->value(i)->name());
    }
    const std::string expected =
        absl::StrCat("one of ", absl::StrJoin(names, ", "));
    ASSIGN_OR_RETURN(std::string text, ScalarText(node, path, expected));
    const EnumValueDescriptor* v = e->FindValueByName(text);
    if (v == nullptr) {
      return Error(path, LineOf(node),
                   absl::StrCat("expected ", expected, ", got ", Shown(text)));
    }
    out_ += JsonQuote(v->name());
    return absl::OkStatus();
  }

  absl::Status IntegerValue(const YAML::Node& node,
                            const FieldDescriptor* field,
                            const std::string& path) {
    const bool is_unsigned =
        field->cpp_type() == FieldDescriptor::CPPTYPE_UINT32 ||
        field->cpp_type() == FieldDescriptor::CPPTYPE_UINT64;
    const char* expected =
        is_unsigned ? "a non-negative integer" : "an integer";
    ASSIGN_OR_RETURN(std::string text, ScalarText(node, path, expected));
    // Plain decimal only: no spaces, no "0x", no "1e3", no "1_000".
    absl::string_view digits = text;
    if (is_unsigned || !absl::ConsumePrefix(&digits, "-")) {
      absl::ConsumePrefix(&digits, "+");
    }
    const bool decimal = !digits.empty() &&
                         std::all_of(digits.begin(), digits.end(), [](char c) {
                           return absl::ascii_isdigit(c);
                         });
    bool in_range = false;
    std::string json;
    if (decimal) {
      switch (field->cpp_type()) {
        case FieldDescriptor::CPPTYPE_INT32: {
          int32_t v;
          in_range = absl::SimpleAtoi(text, &v);
          json = absl::StrCat(v);
          break;
        }
        case FieldDescriptor::CPPTYPE_UINT32: {
          uint32_t v;
          in_range = absl::SimpleAtoi(text, &v);
          json = absl::StrCat(v);
          break;
        }
        case FieldDescriptor::CPPTYPE_INT64: {
          int64_t v;
          in_range = absl::SimpleAtoi(text, &v);
          json = absl::StrCat("\"", v, "\"");  // Exact, whatever the parser.
          break;
        }
        default: {
          uint64_t v;
          in_range = absl::SimpleAtoi(text, &v);
          json = absl::StrCat("\"", v, "\"");
          break;
        }
      }
    }
    if (!decimal) {
      return Error(path, LineOf(node),
                   absl::StrCat("expected ", expected, ", got ", Shown(text)));
    }
    if (!in_range) {
      return Error(path, LineOf(node),
                   absl::StrCat(Shown(text), " is out of range for ",
                                field->cpp_type_name()));
    }
    out_ += json;
    return absl::OkStatus();
  }

  absl::Status DoubleValue(const YAML::Node& node, bool is_float,
                           const std::string& path) {
    ASSIGN_OR_RETURN(std::string text, ScalarText(node, path, "a number"));
    // YAML's special values, as the JSON mapping spells them.
    static const std::pair<const char*, const char*> kSpecial[] = {
        {".inf", "\"Infinity\""},   {".Inf", "\"Infinity\""},
        {".INF", "\"Infinity\""},   {"+.inf", "\"Infinity\""},
        {"+.Inf", "\"Infinity\""},  {"+.INF", "\"Infinity\""},
        {"-.inf", "\"-Infinity\""}, {"-.Inf", "\"-Infinity\""},
        {"-.INF", "\"-Infinity\""}, {".nan", "\"NaN\""},
        {".NaN", "\"NaN\""},        {".NAN", "\"NaN\""}};
    for (const auto& [yaml, json] : kSpecial) {
      if (text == yaml) {
        out_ += json;
        return absl::OkStatus();
      }
    }
    // [-+]? (digits [. digits?] | . digits) ([eE] [-+]? digits)?
    absl::string_view rest = text;
    if (!absl::ConsumePrefix(&rest, "-")) absl::ConsumePrefix(&rest, "+");
    size_t i = 0;
    size_t mantissa_digits = 0;
    while (i < rest.size() && absl::ascii_isdigit(rest[i]))
      ++i, ++mantissa_digits;
    if (i < rest.size() && rest[i] == '.') {
      ++i;
      while (i < rest.size() && absl::ascii_isdigit(rest[i])) {
        ++i, ++mantissa_digits;
      }
    }
    bool well_formed = mantissa_digits > 0;
    if (well_formed && i < rest.size() && (rest[i] == 'e' || rest[i] == 'E')) {
      ++i;
      if (i < rest.size() && (rest[i] == '+' || rest[i] == '-')) ++i;
      size_t exponent_digits = 0;
      while (i < rest.size() && absl::ascii_isdigit(rest[i])) {
        ++i, ++exponent_digits;
      }
      well_formed = exponent_digits > 0;
    }
    well_formed = well_formed && i == rest.size();
    double v = 0;
    if (!well_formed || !absl::SimpleAtod(text, &v)) {
      return Error(path, LineOf(node),
                   absl::StrCat("expected a number, got ", Shown(text)));
    }
    if (!std::isfinite(v) ||
        (is_float && std::fabs(v) > std::numeric_limits<float>::max())) {
      return Error(path, LineOf(node),
                   absl::StrCat(Shown(text), " is out of range for ",
                                is_float ? "float" : "double"));
    }
    out_ += absl::StrFormat("%.17g", v);
    return absl::OkStatus();
  }

  absl::Status DurationValue(const YAML::Node& node, const std::string& path) {
    constexpr absl::string_view kExpected =
        "a duration such as \"1.5s\", \"100ms\", \"2m\" or \"1h\"";
    ASSIGN_OR_RETURN(std::string text, ScalarText(node, path, kExpected));
    absl::Duration d;
    const std::string trimmed(absl::StripAsciiWhitespace(text));
    if (!absl::ParseDuration(trimmed, &d) || d == absl::InfiniteDuration() ||
        d == -absl::InfiniteDuration() ||
        (trimmed != "0" && absl::ascii_isdigit(trimmed.back()))) {
      return Error(path, LineOf(node),
                   absl::StrCat("expected ", kExpected, ", got ", Shown(text)));
    }
    // Split into seconds and nanoseconds with the same sign, as Duration
    // wants.
    const int64_t seconds = absl::IDivDuration(d, absl::Seconds(1), &d);
    const int64_t nanos = absl::ToInt64Nanoseconds(d);
    google::protobuf::Duration proto;
    proto.set_seconds(seconds);
    proto.set_nanos(static_cast<int32_t>(nanos));
    if (seconds > TimeUtil::kDurationMaxSeconds ||
        seconds < TimeUtil::kDurationMinSeconds) {
      return Error(
          path, LineOf(node),
          absl::StrCat(Shown(text), " is out of range for a duration"));
    }
    out_ += JsonQuote(TimeUtil::ToString(proto));
    return absl::OkStatus();
  }

  absl::Status TimestampValue(const YAML::Node& node, const std::string& path) {
    constexpr absl::string_view kExpected =
        "an RFC 3339 time such as \"2024-05-01T10:00:00Z\"";
    ASSIGN_OR_RETURN(std::string text, ScalarText(node, path, kExpected));
    google::protobuf::Timestamp ts;
    if (!TimeUtil::FromString(text, &ts)) {
      return Error(path, LineOf(node),
                   absl::StrCat("expected ", kExpected, ", got ", Shown(text)));
    }
    out_ += JsonQuote(TimeUtil::ToString(ts));
    return absl::OkStatus();
  }

  std::string out_;
};

absl::Status JsonToMessage(absl::string_view json, Message* message) {
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  message->Clear();
  const auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), message,
      options);
  if (status.ok()) return absl::OkStatus();
  // protobuf says "(tasks[0]) nmae: Cannot find field."; say
  // "tasks[0].nmae: unknown field" like the YAML reader.
  std::string text(status.message());
  if (absl::EndsWith(text, ": Cannot find field.")) {
    std::string prefix;
    absl::string_view rest = text;
    absl::ConsumeSuffix(&rest, ": Cannot find field.");
    if (absl::ConsumePrefix(&rest, "(")) {
      const size_t close = rest.find(") ");
      if (close != absl::string_view::npos) {
        prefix = absl::StrCat(rest.substr(0, close), ".");
        rest.remove_prefix(close + 2);
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, rest, ": unknown field"));
  }
  // "(tasks[0].priority): invalid value..." -> "tasks[0].priority: invalid..."
  if (absl::StartsWith(text, "(")) {
    const size_t close = text.find("): ");
    if (close != std::string::npos) {
      text = absl::StrCat(text.substr(1, close - 1), text.substr(close + 1));
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("invalid JSON: ", text));
}

absl::Status YamlToMessageImpl(absl::string_view text, Message* message) {
  message->Clear();
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(std::string(text));
  } catch (const YAML::Exception& e) {
    if (e.mark.is_null()) {
      return absl::InvalidArgumentError(
          absl::StrCat("YAML syntax error: ", e.msg));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("YAML syntax error (line ", e.mark.line + 1, ", column ",
                     e.mark.column + 1, "): ", e.msg));
  }
  if (docs.empty() || (docs.size() == 1 && docs[0].IsNull())) {
    return absl::InvalidArgumentError("the document is empty");
  }
  if (docs.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expected one YAML document, got ", docs.size(), " (remove \"---\")"));
  }
  YamlToJsonConverter converter;
  RETURN_IF_ERROR(converter.Root(docs[0], message->GetDescriptor()));
  const std::string json = converter.TakeJson();
  return JsonToMessage(json, message);
}

// ---------------------------------------------------------------------------
// proto -> YAML
// ---------------------------------------------------------------------------

// True if a plain YAML scalar `s` would be read as something other than
// this string (null, bool, number) or is empty.
bool NeedsQuotes(absl::string_view s) {
  if (s.empty()) return true;
  const std::string lower = absl::AsciiStrToLower(s);
  static const std::set<std::string>* const kSpecial =
      new std::set<std::string>{"~",    "null",  "true",  "false", "yes",
                                "no",   "y",     "n",     "on",    "off",
                                ".inf", "+.inf", "-.inf", ".nan"};
  if (kSpecial->count(lower) > 0) return true;
  // Numbers in any YAML 1.1/1.2 spelling: 5, -1.5e3, 1_000, 1:30
  // (sexagesimal), 2001-12-14 (a 1.1 date); then 0x1F and 0o17.
  if (std::any_of(s.begin(), s.end(),
                  [](char c) { return absl::ascii_isdigit(c); }) &&
      s.find_first_not_of("0123456789+-._:eE") == absl::string_view::npos) {
    return true;
  }
  absl::string_view rest = s;
  if (!absl::ConsumePrefix(&rest, "-")) absl::ConsumePrefix(&rest, "+");
  if (absl::ConsumePrefix(&rest, "0x") || absl::ConsumePrefix(&rest, "0o")) {
    return !rest.empty() && rest.find_first_not_of("0123456789abcdefABCDEF_") ==
                                absl::string_view::npos;
  }
  return false;
}

// True if `s` can be shown as text (printable UTF-8, tabs and newlines).
bool IsText(absl::string_view s) {
  if (!IsValidUtf8(s)) return false;
  return std::none_of(s.begin(), s.end(), [](char ch) {
    const unsigned char c = ch;
    return (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f;
  });
}

void EmitString(YAML::Emitter& out, const std::string& s) {
  // A literal block round-trips only for text ending in exactly one newline
  // and not starting with a space (yaml-cpp writes no indentation
  // indicator).
  if (s.find('\n') != std::string::npos && IsText(s) &&
      absl::EndsWith(s, "\n") && !absl::EndsWith(s, "\n\n") && s[0] != ' ' &&
      s[0] != '\t' && s.find(" \n") == std::string::npos) {
    out << YAML::Literal << s;
  } else if (NeedsQuotes(s) || !IsText(s)) {
    out << YAML::DoubleQuoted << s;
  } else {
    out << s;
  }
}

// Shortest decimal text that reads back as `v`.
std::string ShortestDouble(double v) {
  for (int precision = 1; precision < 17; ++precision) {
    std::string text = absl::StrFormat("%.*g", precision, v);
    double back;
    if (absl::SimpleAtod(text, &back) && back == v) return text;
  }
  return absl::StrFormat("%.17g", v);
}

void EmitMessage(YAML::Emitter& out, const Message& message);

void EmitSingular(YAML::Emitter& out, const Message& message,
                  const FieldDescriptor* field, int index) {
  const Reflection* r = message.GetReflection();
  const bool rep = index >= 0;
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      out << (rep ? r->GetRepeatedInt32(message, field, index)
                  : r->GetInt32(message, field));
      break;
    case FieldDescriptor::CPPTYPE_INT64:
      out << static_cast<long long>(
          rep ? r->GetRepeatedInt64(message, field, index)
              : r->GetInt64(message, field));
      break;
    case FieldDescriptor::CPPTYPE_UINT32:
      out << (rep ? r->GetRepeatedUInt32(message, field, index)
                  : r->GetUInt32(message, field));
      break;
    case FieldDescriptor::CPPTYPE_UINT64:
      out << static_cast<unsigned long long>(
          rep ? r->GetRepeatedUInt64(message, field, index)
              : r->GetUInt64(message, field));
      break;
    case FieldDescriptor::CPPTYPE_DOUBLE:
    case FieldDescriptor::CPPTYPE_FLOAT: {
      double v;
      if (field->cpp_type() == FieldDescriptor::CPPTYPE_DOUBLE) {
        v = rep ? r->GetRepeatedDouble(message, field, index)
                : r->GetDouble(message, field);
      } else {
        v = rep ? r->GetRepeatedFloat(message, field, index)
                : r->GetFloat(message, field);
      }
      if (std::isnan(v)) {
        out << ".nan";
      } else if (std::isinf(v)) {
        out << (v > 0 ? ".inf" : "-.inf");
      } else {
        out << ShortestDouble(v);
      }
      break;
    }
    case FieldDescriptor::CPPTYPE_BOOL:
      out << ((rep ? r->GetRepeatedBool(message, field, index)
                   : r->GetBool(message, field))
                  ? "true"
                  : "false");
      break;
    case FieldDescriptor::CPPTYPE_ENUM: {
      const int number = rep ? r->GetRepeatedEnumValue(message, field, index)
                             : r->GetEnumValue(message, field);
      const EnumValueDescriptor* v =
          field->enum_type()->FindValueByNumber(number);
      if (v != nullptr) {
        out << v->name();
      } else {
        out << number;
      }
      break;
    }
    case FieldDescriptor::CPPTYPE_STRING: {
      const std::string s = rep ? r->GetRepeatedString(message, field, index)
                                : r->GetString(message, field);
      if (field->type() == FieldDescriptor::TYPE_BYTES && !IsText(s)) {
        out << YAML::Binary(reinterpret_cast<const unsigned char*>(s.data()),
                            s.size());
      } else {
        EmitString(out, s);
      }
      break;
    }
    case FieldDescriptor::CPPTYPE_MESSAGE: {
      const Message& sub = rep ? r->GetRepeatedMessage(message, field, index)
                               : r->GetMessage(message, field);
      const std::string& type = sub.GetDescriptor()->full_name();
      if (type == "google.protobuf.Duration" ||
          type == "google.protobuf.Timestamp" ||
          IsWrapper(sub.GetDescriptor()) || type == "google.protobuf.Struct" ||
          type == "google.protobuf.Value" ||
          type == "google.protobuf.ListValue" ||
          type == "google.protobuf.Any" ||
          type == "google.protobuf.FieldMask") {
        // Well-known types: their JSON form, read back as YAML (a JSON
        // scalar or object is valid YAML).
        const std::string json = ToJson(sub, /*pretty=*/false);
        YAML::Node node;
        try {
          node = YAML::Load(json);
        } catch (const YAML::Exception&) {
          node = YAML::Node(json);
        }
        if (node.IsScalar()) {
          EmitString(out, node.Scalar());
        } else {
          out << node;
        }
      } else {
        EmitMessage(out, sub);
      }
      break;
    }
  }
}

void EmitMessage(YAML::Emitter& out, const Message& message) {
  const Reflection* r = message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(message, &fields);
  if (fields.empty()) {
    out << YAML::Flow << YAML::BeginMap << YAML::EndMap;
    return;
  }
  out << YAML::BeginMap;
  for (const FieldDescriptor* field : fields) {
    out << YAML::Key << field->name() << YAML::Value;
    if (field->is_map()) {
      // Entries sorted by their key's text, for stable output.
      const FieldDescriptor* key_field = field->message_type()->map_key();
      const FieldDescriptor* value_field = field->message_type()->map_value();
      std::vector<std::pair<std::string, const Message*>> entries;
      for (int i = 0; i < r->FieldSize(message, field); ++i) {
        const Message& entry = r->GetRepeatedMessage(message, field, i);
        const Reflection* er = entry.GetReflection();
        std::string key;
        switch (key_field->cpp_type()) {
          case FieldDescriptor::CPPTYPE_STRING:
            key = er->GetString(entry, key_field);
            break;
          case FieldDescriptor::CPPTYPE_BOOL:
            key = er->GetBool(entry, key_field) ? "true" : "false";
            break;
          case FieldDescriptor::CPPTYPE_INT32:
            key = absl::StrCat(er->GetInt32(entry, key_field));
            break;
          case FieldDescriptor::CPPTYPE_INT64:
            key = absl::StrCat(er->GetInt64(entry, key_field));
            break;
          case FieldDescriptor::CPPTYPE_UINT32:
            key = absl::StrCat(er->GetUInt32(entry, key_field));
            break;
          default:
            key = absl::StrCat(er->GetUInt64(entry, key_field));
            break;
        }
        entries.emplace_back(std::move(key), &entry);
      }
      std::sort(entries.begin(), entries.end(),
                [](const auto& a, const auto& b) { return a.first < b.first; });
      out << YAML::BeginMap;
      for (const auto& [key, entry] : entries) {
        out << YAML::Key;
        if (key_field->cpp_type() == FieldDescriptor::CPPTYPE_STRING) {
          EmitString(out, key);
        } else {
          out << key;
        }
        out << YAML::Value;
        EmitSingular(out, *entry, value_field, -1);
      }
      out << YAML::EndMap;
    } else if (field->is_repeated()) {
      out << YAML::BeginSeq;
      for (int i = 0; i < r->FieldSize(message, field); ++i) {
        EmitSingular(out, message, field, i);
      }
      out << YAML::EndSeq;
    } else {
      EmitSingular(out, message, field, -1);
    }
  }
  out << YAML::EndMap;
}

absl::Status ReadFile(const std::string& path, std::string* out) {
  if (path == "-") {
    out->assign(std::istreambuf_iterator<char>(std::cin),
                std::istreambuf_iterator<char>());
    if (std::cin.bad()) return absl::InternalError("-: cannot read stdin");
    return absl::OkStatus();
  }
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    const int err = errno;
    const std::string what = absl::StrCat(path, ": ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(what);
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(what);
    return absl::InternalError(what);
  }
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out->append(buf, n);
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed) {
    return absl::InternalError(absl::StrCat(path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status YamlToMessage(absl::string_view text, Message* message) {
  try {
    return YamlToMessageImpl(text, message);
  } catch (const std::exception& e) {
    // yaml-cpp throws from node accessors too; none is expected once the
    // document loaded, but no exception leaves this file.
    message->Clear();
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read YAML: ", e.what()));
  }
}

absl::StatusOr<forge::v1::GraphSpec> ParseGraphFile(absl::string_view text,
                                                    GraphFileFormat format) {
  absl::string_view body = text;
  absl::ConsumePrefix(&body, "\xEF\xBB\xBF");  // UTF-8 byte order mark.
  if (format == GraphFileFormat::kAuto) {
    const absl::string_view stripped = absl::StripLeadingAsciiWhitespace(body);
    format = absl::StartsWith(stripped, "{") ? GraphFileFormat::kJson
                                             : GraphFileFormat::kYaml;
  }
  forge::v1::GraphSpec spec;
  if (format == GraphFileFormat::kJson) {
    if (absl::StripAsciiWhitespace(body).empty()) {
      return absl::InvalidArgumentError("the document is empty");
    }
    RETURN_IF_ERROR(JsonToMessage(body, &spec));
  } else {
    RETURN_IF_ERROR(YamlToMessage(body, &spec));
  }
  return spec;
}

absl::StatusOr<forge::v1::GraphSpec> LoadGraphFile(const std::string& path) {
  std::string text;
  RETURN_IF_ERROR(ReadFile(path, &text));
  GraphFileFormat format = GraphFileFormat::kAuto;
  const std::string lower = absl::AsciiStrToLower(path);
  if (absl::EndsWith(lower, ".yaml") || absl::EndsWith(lower, ".yml")) {
    format = GraphFileFormat::kYaml;
  } else if (absl::EndsWith(lower, ".json")) {
    format = GraphFileFormat::kJson;
  }
  absl::StatusOr<forge::v1::GraphSpec> spec = ParseGraphFile(text, format);
  if (!spec.ok()) {
    return absl::Status(spec.status().code(),
                        absl::StrCat(path, ": ", spec.status().message()));
  }
  return spec;
}

std::string ToJson(const Message& message, bool pretty) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = pretty;
  options.preserve_proto_field_names = true;
  std::string out;
  const auto status =
      google::protobuf::util::MessageToJsonString(message, &out, options);
  if (!status.ok()) {
    // Only values the JSON mapping cannot express (a Timestamp out of range)
    // get here.
    out = absl::StrCat(
        "{\"error\":",
        JsonQuote(absl::StrCat("cannot print ", message.GetTypeName(), ": ",
                               std::string(status.message()))),
        "}");
    if (pretty) out.push_back('\n');
    return out;
  }
  if (pretty && !absl::EndsWith(out, "\n")) out.push_back('\n');
  if (!pretty) {
    while (absl::EndsWith(out, "\n")) out.pop_back();
  }
  return out;
}

std::string ToYaml(const Message& message) {
  YAML::Emitter out;
  out.SetIndent(2);
  try {
    EmitMessage(out, message);
  } catch (const std::exception& e) {
    return absl::StrCat("# cannot print ", message.GetTypeName(), ": ",
                        e.what(), "\n");
  }
  std::string text = out.c_str();
  // yaml-cpp leaves a blank line after a literal block; drop blank lines
  // that end the document.
  while (absl::EndsWith(text, "\n")) text.pop_back();
  text.push_back('\n');
  return text;
}

}  // namespace forge
