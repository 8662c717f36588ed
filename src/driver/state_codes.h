#pragma once

// spool_job.state holds JobState's position in both drivers (SQLite schema version 3, PostgreSQL
// schema version 3): comparing text states was a large share of what a claim and an outcome write
// cost either database (docs/benchmarks.md). Statements spell the codes through these macros, so
// that each reads as the state it means. Only files under src/driver/ include this.

#include <cstdint>
#include <string>
#include <string_view>

#include "spool/job.h"
#include "spool/result.h"

#define SPOOL_AVAILABLE "0"
#define SPOOL_SCHEDULED "1"
#define SPOOL_RUNNING "2"
#define SPOOL_RETRYABLE "3"
#define SPOOL_COMPLETED "4"
#define SPOOL_CANCELLED "5"
#define SPOOL_DISCARDED "6"
// completed, cancelled and discarded: the final states.
#define SPOOL_FINAL_STATES "(" SPOOL_COMPLETED ", " SPOOL_CANCELLED ", " SPOOL_DISCARDED ")"
static_assert(static_cast<int>(spool::JobState::kAvailable) == 0 &&
              static_cast<int>(spool::JobState::kScheduled) == 1 &&
              static_cast<int>(spool::JobState::kRunning) == 2 &&
              static_cast<int>(spool::JobState::kRetryable) == 3 &&
              static_cast<int>(spool::JobState::kCompleted) == 4 &&
              static_cast<int>(spool::JobState::kCancelled) == 5 &&
              static_cast<int>(spool::JobState::kDiscarded) == 6 &&
              static_cast<int>(spool::JobState::kPending) == 7);

namespace spool::internal {

inline int StateCode(JobState state) { return static_cast<int>(state); }

// The state whose code is `code`; Internal naming the code for anything else.
Result<JobState> StateFromCode(int64_t code);

// An SQL expression (SQLite and PostgreSQL alike) giving the name of the state held in `column`,
// whether it holds a code or, in a schema older than the codes, the name itself.
std::string StateNameSql(std::string_view column);

// An SQL expression giving the code of the state named in `column` (NULL for anything else).
std::string StateCodeSql(std::string_view column);

}  // namespace spool::internal
