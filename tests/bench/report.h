// forge-bench's results: each workload run yields named figures; repeated
// runs are summarised as median, min and max, printed as a table or JSON.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace forge::bench {

struct Figure {
  std::string workload;  // "W1"
  std::string metric;    // "end_to_end"
  std::string unit;      // "tasks/s"
  double value = 0;
};

struct Summary {
  std::string workload, metric, unit;
  std::vector<double> values;  // one per run
  double median = 0, min = 0, max = 0;
};

class Report {
 public:
  void Add(const Figure& f);
  // Free-form facts about the run (machine, flags).
  void Note(const std::string& key, const std::string& value) { notes_[key] = value; }
  std::vector<Summary> Summaries() const;
  std::string Table() const;
  std::string Json() const;

 private:
  std::vector<std::string> order_;  // "workload/metric" in first-seen order
  std::map<std::string, Summary> by_key_;
  std::map<std::string, std::string> notes_;
};

double Median(std::vector<double> v);
// The q-quantile (0..1) of `v` (nearest rank), 0 if empty.
double Quantile(std::vector<double> v, double q);

}  // namespace forge::bench
