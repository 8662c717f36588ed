#include "driver/state_codes.h"

#include <fmt/format.h>

#include <iterator>

namespace spool::internal {

Result<JobState> StateFromCode(int64_t code) {
  if (code < 0 || code >= static_cast<int64_t>(std::size(kAllJobStates))) {
    return Status::Internal(
        fmt::format("{} is not a job state's code (0 to {})", code, std::size(kAllJobStates) - 1));
  }
  return kAllJobStates[static_cast<size_t>(code)];
}

std::string StateNameSql(std::string_view column) {
  // Through text, so that the same expression reads a code and a name in either database.
  std::string sql = fmt::format("CASE CAST({} AS TEXT)", column);
  for (JobState s : kAllJobStates) {
    fmt::format_to(std::back_inserter(sql), " WHEN '{}' THEN '{}'", StateCode(s), JobStateName(s));
  }
  return sql + fmt::format(" ELSE CAST({} AS TEXT) END", column);
}

std::string StateCodeSql(std::string_view column) {
  std::string sql = fmt::format("CASE {}", column);
  for (JobState s : kAllJobStates) {
    fmt::format_to(std::back_inserter(sql), " WHEN '{}' THEN {}", JobStateName(s), StateCode(s));
  }
  return sql + " END";
}

}  // namespace spool::internal
