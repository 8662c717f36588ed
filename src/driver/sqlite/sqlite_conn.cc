#include "driver/sqlite/sqlite_conn.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <thread>
#include <utility>

namespace spool::internal {

namespace {

std::string DbFile(sqlite3* db) {
  if (db == nullptr) return {};
  const char* name = sqlite3_db_filename(db, "main");
  return name == nullptr ? std::string() : std::string(name);
}

}  // namespace

Status SqliteStatus(int rc, sqlite3* db, std::string_view context) {
  if (rc == SQLITE_OK || rc == SQLITE_DONE || rc == SQLITE_ROW) return Status::Ok();
  const int extended = db != nullptr ? sqlite3_extended_errcode(db) : rc;
  // The connection's last error belongs to this call only if its primary code matches.
  const int code = (extended & 0xff) == (rc & 0xff) ? extended : rc;
  std::string detail = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  std::string native = std::to_string(code);
  switch (code & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return Status(Status::Code::kRetryable,
                    fmt::format("{}: database is busy ({}); try again", context, detail),
                    std::move(native));
    case SQLITE_FULL:
      // Transient: writes succeed again once there is room (and the failed write checkpointed
      // the log to give its space back).
      return Status(Status::Code::kRetryable,
                    fmt::format("{}: the disk is full ({}): free space on the database's disk; "
                                "try again",
                                context, detail),
                    std::move(native));
    case SQLITE_CANTOPEN:
      return Status(
          Status::Code::kConnectionLost,
          fmt::format("{}: cannot open SQLite database \"{}\": {}", context, DbFile(db), detail),
          std::move(native));
    case SQLITE_NOTADB:
      return Status(
          Status::Code::kInvalidArgument,
          fmt::format("{}: \"{}\" is not a SQLite database: {}", context, DbFile(db), detail),
          std::move(native));
    case SQLITE_CONSTRAINT:
      if (code == SQLITE_CONSTRAINT_UNIQUE || code == SQLITE_CONSTRAINT_PRIMARYKEY) {
        return Status(Status::Code::kAlreadyExists, fmt::format("{}: {}", context, detail),
                      std::move(native));
      }
      break;
    default:
      break;
  }
  return Status(Status::Code::kInternal, fmt::format("{}: {}", context, detail), std::move(native));
}

Result<SqliteDbPtr> SqliteOpen(const std::string& path, const char* vfs) {
  sqlite3* raw = nullptr;
  // NOMUTEX: every connection is serialised by its owner, so SQLite's own mutex is waste.
  const int flags =
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE;
  const int rc = sqlite3_open_v2(path.c_str(), &raw, flags, vfs);
  SqliteDbPtr db(raw);
  if (rc != SQLITE_OK) {
    std::string detail = db != nullptr ? sqlite3_errmsg(db.get()) : sqlite3_errstr(rc);
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) {
      return Status::InvalidArgument(fmt::format(
          "cannot open SQLite database \"{}\": it is a directory; name a file in it (e.g. "
          "\"{}/app.db\")",
          path, path));
    }
    return Status(Status::Code::kConnectionLost,
                  fmt::format("cannot open SQLite database \"{}\": {} (does the directory exist "
                              "and is it writable?)",
                              path, detail),
                  std::to_string(rc));
  }
  sqlite3_extended_result_codes(db.get(), 1);
  return db;
}

Status SqliteExec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &err);
  sqlite3_free(err);  // the same text is in sqlite3_errmsg
  if (rc != SQLITE_OK) return SqliteStatus(rc, db, "exec");
  return Status::Ok();
}

Result<sqlite3_stmt*> StatementCache::Get(std::string_view sql) {
  // Heterogeneous lookup needs C++20 transparent hashing on unordered_map, which libstdc++ 12
  // lacks; the copy is cheap next to running the statement.
  std::string key(sql);
  auto it = stmts_.find(key);
  if (it != stmts_.end()) return it->second.get();
  sqlite3_stmt* raw = nullptr;
  const int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()),
                                    SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
  SqliteStmtPtr stmt(raw);
  if (rc != SQLITE_OK) return SqliteStatus(rc, db_, "prepare");
  if (stmt == nullptr) return Status::Internal(fmt::format("prepare: empty SQL \"{}\"", sql));
  sqlite3_stmt* result = stmt.get();
  stmts_.emplace(std::move(key), std::move(stmt));
  return result;
}

Status StepDone(sqlite3_stmt* stmt, std::string_view context) {
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
  }
  if (rc != SQLITE_DONE) return SqliteStatus(rc, sqlite3_db_handle(stmt), context);
  return Status::Ok();
}

namespace {

Status RunCached(StatementCache& cache, std::string_view sql) {
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache.Get(sql));
  StmtScope scope(stmt);
  return StepDone(stmt, sql);
}

}  // namespace

void StatementCache::InstallBusyHandler(std::chrono::milliseconds timeout) {
  busy_timeout_ = timeout;
  sqlite3_busy_handler(db_, &StatementCache::OnBusy, this);
}

int StatementCache::OnBusy(void* self, int count) {
  auto* c = static_cast<StatementCache*>(self);
  const auto now = std::chrono::steady_clock::now();
  // A wait long over without a write since (the lock was free between two waits, taken by a
  // statement that wrote nothing) does not count against this one.
  if (count == 0 && c->busy_since_ != std::chrono::steady_clock::time_point{} &&
      now - c->busy_since_ > 2 * c->busy_timeout_ + std::chrono::seconds(1)) {
    c->busy_since_ = {};
  }
  if (c->busy_since_ == std::chrono::steady_clock::time_point{}) c->busy_since_ = now;
  const auto waited = now - c->busy_since_;
  if (waited >= c->busy_timeout_) return 0;
  // SQLite's own handler's steps: short at first, for a lock about to be released.
  const auto step = std::chrono::milliseconds(std::min(1 << std::min(count, 5), 25));
  std::this_thread::sleep_for(
      std::min<std::chrono::steady_clock::duration>(step, c->busy_timeout_ - waited));
  return 1;
}

Result<std::unique_ptr<WriteScope>> WriteScope::Begin(StatementCache& cache) {
  const bool own_tx = sqlite3_get_autocommit(cache.db()) != 0;
  SPOOL_RETURN_IF_ERROR(RunCached(cache, own_tx ? "BEGIN IMMEDIATE" : "SAVEPOINT spool_op"));
  if (own_tx) cache.LockTaken();
  return std::unique_ptr<WriteScope>(new WriteScope(cache, own_tx));
}

Status WriteScope::Commit() {
  Status s = RunCached(cache_, own_tx_ ? "COMMIT" : "RELEASE spool_op");
  if (s.ok()) done_ = true;
  // The log grows until a checkpoint copies it, and checkpoints follow commits only past 16,000
  // frames: after the disk filled up, the space freed went to the log's next frames, and the
  // writes stalled again (an audit's app stalled on 20 MB of log over a 4 KB file). The first
  // commit once there is room copies the log and truncates it, giving its space back.
  if (s.ok() && own_tx_ && cache_.truncate_log_after_commit) {
    const int rc = sqlite3_wal_checkpoint_v2(cache_.db(), nullptr, SQLITE_CHECKPOINT_TRUNCATE,
                                             nullptr, nullptr);
    if (rc == SQLITE_OK) cache_.truncate_log_after_commit = false;
  }
  return s;
}

WriteScope::~WriteScope() {
  if (done_) return;
  if (own_tx_) {
    const bool disk_full = (sqlite3_extended_errcode(cache_.db()) & 0xff) == SQLITE_FULL;
    // Nothing to do if SQLite already rolled back (some errors end the transaction).
    if (sqlite3_get_autocommit(cache_.db()) == 0) (void)RunCached(cache_, "ROLLBACK");
    if (disk_full) {
      // A log copied whole is written again from its start, in the space it has: the writes go
      // on without more room once the file has what it needs (it grows only by the pages the
      // log changed). When the copy itself needs room, the first commit after some is freed
      // truncates the log (Commit).
      (void)sqlite3_wal_checkpoint_v2(cache_.db(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr,
                                      nullptr);
      cache_.truncate_log_after_commit = true;
      cache_.disk_was_full = true;
    }
  } else {
    (void)RunCached(cache_, "ROLLBACK TO spool_op");
    (void)RunCached(cache_, "RELEASE spool_op");
  }
}

}  // namespace spool::internal
