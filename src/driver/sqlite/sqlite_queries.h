#pragma once

#include <sqlite3.h>

#include <array>
#include <cstdint>
#include <map>
#include <string_view>
#include <vector>

#include "driver/driver.h"
#include "driver/sqlite/sqlite_conn.h"

namespace spool::internal {

// spool's job queries over one SQLite connection, with the connection's prepared statements.
// Each write runs in its own transaction, or in a savepoint when the connection is already
// inside one (a Tx, or a caller's transaction). Does not own the connection and is not thread
// safe: the owner serialises calls.
class SqliteQueries {
 public:
  // Rows per multi-row statement. 10 parameters a row keeps a chunk far below SQLite's 32766.
  static constexpr int kInsertChunk = 128;
  static constexpr int kUpdateChunk = 256;

  explicit SqliteQueries(sqlite3* db) : cache_(db) {}

  StatementCache& cache() { return cache_; }

  Result<std::vector<JobRow>> JobInsertMany(const JobInsertManyParams& params);
  Result<int64_t> JobInsertManyFast(const JobInsertManyParams& params);
  Result<std::vector<JobRow>> JobGetAvailable(const JobGetAvailableParams& params);
  Result<int64_t> JobSetStateIfRunningMany(const JobSetStateIfRunningManyParams& params);
  Result<JobScheduleResult> JobSchedule(const JobScheduleParams& params);
  Result<JobRow> JobGetByID(int64_t id);
  Result<std::vector<JobRow>> JobList(const JobListParams& params);
  Result<std::map<JobState, int64_t>> JobCountByState(std::string_view queue);

 private:
  // Inserts; appends the rows to `out` when it is set (RETURNING), else only counts.
  Result<int64_t> Insert(const JobInsertManyParams& params, std::vector<JobRow>* out);
  Result<sqlite3_stmt*> InsertStmt(int rows, bool returning);
  Result<sqlite3_stmt*> CompleteStmt(int rows);
  Result<sqlite3_stmt*> SetStateStmt(int rows);

  StatementCache cache_;
  // Multi-row statements by row count, so a chunk never rebuilds its SQL to look it up.
  std::array<sqlite3_stmt*, kInsertChunk + 1> insert_fast_{};
  std::array<sqlite3_stmt*, kInsertChunk + 1> insert_returning_{};
  std::array<sqlite3_stmt*, kUpdateChunk + 1> complete_{};
  std::array<sqlite3_stmt*, kUpdateChunk + 1> set_state_{};
};

}  // namespace spool::internal
