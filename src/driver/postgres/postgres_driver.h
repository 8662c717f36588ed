#pragma once

#include <memory>
#include <string>

#include "driver/driver.h"

namespace spool::internal {

// Opens the PostgreSQL driver for a postgres:// or postgresql:// URL (libpq syntax; options such
// as ?options=-csearch_path%3Dmyschema select the schema spool's tables live in). Connects once
// to check the URL: ConnectionLost naming host and port (never the password) if that fails.
Result<std::unique_ptr<Driver>> OpenPostgresDriver(std::string url, const DriverOptions& options);

// For tests of the plans PostgreSQL makes of the statements that look jobs up by id: the outcome
// write ($1 ids, $2 states, $3 times in microseconds, $4 errors or NULL, all arrays), the plain
// completion ($1 ids, $2 times) and the cancel-request check ($1 ids).
const std::string& PostgresSetStateSql();
const std::string& PostgresCompleteSql();
const std::string& PostgresCancelRequestedSql();

}  // namespace spool::internal
