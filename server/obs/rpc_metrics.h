// RPC metrics: a gRPC server interceptor that counts every call by method
// and status code and observes its duration (for streams: the stream's
// life). The methods are fixed when the server is built (the services'
// descriptors), so the series count is bounded; calls to anything else are
// counted under method "_unknown".
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "common/histogram.h"
#include "grpcpp/support/server_interceptor.h"

namespace forge::obs {

struct MethodMetrics {
  std::string service;  // forge.v1.Orchestrator
  std::string method;   // SubmitGraph
  Histogram duration{LatencyBuckets()};
  std::array<std::atomic<int64_t>, 17> by_code{};  // grpc::StatusCode 0..16
};

class RpcMetrics {
 public:
  // `full_names`: "/package.Service/Method" of every method served.
  explicit RpcMetrics(const std::vector<std::string>& full_names);

  // For ServerBuilder::experimental().SetInterceptorCreators().
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> Factory();

  const std::vector<std::unique_ptr<MethodMetrics>>& methods() const {
    return methods_;
  }
  MethodMetrics& For(const char* full_name);

 private:
  // Immutable after construction: looked up with no lock.
  std::vector<std::unique_ptr<MethodMetrics>> methods_;
  absl::flat_hash_map<std::string, MethodMetrics*> by_name_;
  MethodMetrics* unknown_ = nullptr;
};

// The full names of every method of the given services' descriptors.
std::vector<std::string> MethodsOf(const std::vector<std::string>& service_names);

}  // namespace forge::obs
