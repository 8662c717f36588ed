#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "driver/driver.h"

namespace spool::internal {

// spool's SQLite schema, line "main", ascending by version. Embedded so the library and the
// generators use one source.
const std::vector<Migration>& SqliteMigrations();

}  // namespace spool::internal
