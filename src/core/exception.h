#pragma once

#include <string>

namespace spool::internal {

// The exception being handled, in words for a job's error history.
struct CaughtException {
  std::string type;     // demangled, e.g. "std::runtime_error"; "unknown" when it cannot be told
  std::string message;  // "std::runtime_error thrown: boom", "non-standard exception thrown: int"
};

// REQUIRES: called inside a catch block (it rethrows the current exception to inspect it).
CaughtException DescribeCurrentException();

}  // namespace spool::internal
