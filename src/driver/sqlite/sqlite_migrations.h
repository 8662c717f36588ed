#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "driver/driver.h"

namespace spool::internal {

// spool's SQLite schema, line "main", ascending by version. Embedded so the library and the
// generators use one source.
const std::vector<Migration>& SqliteMigrations();

// Since version 3 spool_job.state holds JobState's position as an INTEGER. An SQL expression
// giving the state's name from `column`, which holds such a code (NULL for anything else).
std::string SqliteStateNameSql(std::string_view column);

}  // namespace spool::internal
