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
// Likewise the statements that pick jobs by a locking subquery: the claim ($1 queue, $2 now in
// microseconds, $3 limit, $4 client id; with `after`, $5 priority and $6 scheduled_at), the
// scheduler ($1 now, $2 limit, $3 channel) and the cleaner ($1 state, $2 before, $3 limit).
const std::string& PostgresFetchSql(bool after);
const std::string& PostgresScheduleSql();
const std::string& PostgresDeleteFinalizedSql();

}  // namespace spool::internal
