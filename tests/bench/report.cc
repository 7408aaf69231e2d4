#include "tests/bench/report.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace forge::bench {

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  rank = std::clamp<size_t>(rank, 1, v.size());
  return v[rank - 1];
}

void Report::Add(const Figure& f) {
  const std::string key = absl::StrCat(f.workload, "/", f.metric);
  auto [it, inserted] = by_key_.try_emplace(key);
  if (inserted) {
    order_.push_back(key);
    it->second.workload = f.workload;
    it->second.metric = f.metric;
    it->second.unit = f.unit;
  }
  it->second.values.push_back(f.value);
}

std::vector<Summary> Report::Summaries() const {
  std::vector<Summary> out;
  for (const std::string& key : order_) {
    Summary s = by_key_.at(key);
    s.median = Median(s.values);
    s.min = *std::min_element(s.values.begin(), s.values.end());
    s.max = *std::max_element(s.values.begin(), s.values.end());
    out.push_back(std::move(s));
  }
  return out;
}

namespace {

std::string Num(double v) {
  if (v == 0) return "0";
  const double a = std::fabs(v);
  if (a >= 1000) return absl::StrFormat("%.0f", v);
  if (a >= 10) return absl::StrFormat("%.1f", v);
  if (a >= 1) return absl::StrFormat("%.2f", v);
  return absl::StrFormat("%.3g", v);
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", c);
      continue;
    }
    out.push_back(c);
  }
  return out + "\"";
}

std::string JsonNumber(double v) {
  if (!std::isfinite(v)) return "null";
  return absl::StrFormat("%.6g", v);
}

}  // namespace

std::string Report::Table() const {
  std::string out;
  for (const auto& [k, v] : notes_) absl::StrAppend(&out, "# ", k, ": ", v, "\n");
  out += absl::StrFormat("%-6s %-30s %12s %12s %12s  %s\n", "load", "metric",
                         "median", "min", "max", "unit");
  for (const Summary& s : Summaries()) {
    out += absl::StrFormat("%-6s %-30s %12s %12s %12s  %s\n", s.workload, s.metric,
                           Num(s.median), Num(s.min), Num(s.max), s.unit);
  }
  return out;
}

std::string Report::Json() const {
  std::string out = "{\"notes\":{";
  bool first = true;
  for (const auto& [k, v] : notes_) {
    absl::StrAppend(&out, first ? "" : ",", JsonString(k), ":", JsonString(v));
    first = false;
  }
  out += "},\"results\":[";
  first = true;
  for (const Summary& s : Summaries()) {
    absl::StrAppend(&out, first ? "" : ",", "{\"workload\":", JsonString(s.workload),
                    ",\"metric\":", JsonString(s.metric), ",\"unit\":", JsonString(s.unit),
                    ",\"median\":", JsonNumber(s.median), ",\"min\":", JsonNumber(s.min),
                    ",\"max\":", JsonNumber(s.max), ",\"runs\":[");
    for (size_t i = 0; i < s.values.size(); ++i) {
      absl::StrAppend(&out, i ? "," : "", JsonNumber(s.values[i]));
    }
    out += "]}";
    first = false;
  }
  return out + "]}\n";
}

}  // namespace forge::bench
