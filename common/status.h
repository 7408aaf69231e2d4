// Small status helpers shared by server and client. Debian's Abseil
// (20220623) has no status_macros.h, so the two macros live here.
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FORGE_CONCAT_INNER_(a, b) a##b
#define FORGE_CONCAT_(a, b) FORGE_CONCAT_INNER_(a, b)

// Returns from the current function if `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                  \
  do {                                         \
    ::absl::Status forge_status_ = (expr);     \
    if (!forge_status_.ok()) return forge_status_; \
  } while (0)

// ASSIGN_OR_RETURN(auto x, StatusOrExpr()): assigns the value or returns the
// error.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(FORGE_CONCAT_(forge_statusor_, __LINE__), lhs, rexpr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                           \
  if (!tmp.ok()) return std::move(tmp).status(); \
  lhs = std::move(tmp).value()
