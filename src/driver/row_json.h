#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "spool/job.h"
#include "spool/result.h"

namespace spool::internal {

// The JSON columns of a job row, decoded and encoded the same way by every driver.

// A JSON array of strings (attempted_by, tags). Internal error naming the text if it is not one.
Result<std::vector<std::string>> ParseStringArray(std::string_view text);
// The error history: a JSON array of {"at": micros, "attempt", "error", "trace"} objects. Entries
// that are not objects, and fields of the wrong type, are skipped; Internal error if the text is
// not an array.
Result<std::vector<AttemptError>> ParseErrors(std::string_view text);
// One entry of the error history, as ParseErrors reads it.
std::string ErrorJson(const AttemptError& e);

}  // namespace spool::internal
