// Maps absl::Status to grpc::Status (the only place the two meet).
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace forge::api {

inline grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()),
                      std::string(s.message()));
}

}  // namespace forge::api
