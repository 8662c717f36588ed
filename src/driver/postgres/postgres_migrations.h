#pragma once

#include <vector>

#include "driver/driver.h"

namespace spool::internal {

// spool's PostgreSQL schema migrations, ascending by version, each with up and down DDL.
const std::vector<Migration>& PostgresMigrations();

}  // namespace spool::internal
