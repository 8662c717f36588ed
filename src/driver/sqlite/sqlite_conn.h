#pragma once

// RAII over the sqlite3 C API and the one place SQLite result codes become Status. Only files
// under src/driver/sqlite/ include this header.

#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "spool/result.h"
#include "spool/status.h"

namespace spool::internal {

struct SqliteDbDeleter {
  // close_v2 defers the close while statements are still alive, so destruction order cannot
  // crash; the owners still finalize their statements first.
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using SqliteDbPtr = std::unique_ptr<sqlite3, SqliteDbDeleter>;

struct SqliteStmtDeleter {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};
using SqliteStmtPtr = std::unique_ptr<sqlite3_stmt, SqliteStmtDeleter>;

// Translates a SQLite result code into a Status: BUSY/LOCKED -> Retryable, CANTOPEN ->
// ConnectionLost naming the file, NOTADB -> InvalidArgument naming the file, unique or primary
// key CONSTRAINT -> AlreadyExists, anything else Internal. The message starts with `context` and
// carries sqlite3_errmsg(db) when `db` is set; native_code is the extended code in decimal.
Status SqliteStatus(int rc, sqlite3* db, std::string_view context);

// Opens (creating if needed) the database file at `path` with extended result codes on, through
// the named VFS (nullptr: the default one). ConnectionLost or InvalidArgument naming the path
// when it cannot be opened.
Result<SqliteDbPtr> SqliteOpen(const std::string& path, const char* vfs = nullptr);

// Runs one or more SQL statements that return no rows.
Status SqliteExec(sqlite3* db, const char* sql);

// Prepared statements of one connection, prepared once with SQLITE_PREPARE_PERSISTENT and kept
// until the cache is destroyed. Does not own the connection, which must outlive the cache.
// Not thread safe: the owner serialises use of the connection.
class StatementCache {
 public:
  explicit StatementCache(sqlite3* db) : db_(db) {}
  StatementCache(const StatementCache&) = delete;
  StatementCache& operator=(const StatementCache&) = delete;

  sqlite3* db() const { return db_; }
  // The statement for `sql`, prepared on first use. The caller resets it after use (StmtScope).
  Result<sqlite3_stmt*> Get(std::string_view sql);

  // A write failed with the disk full: the next write that commits also copies the log into the
  // file and truncates it (WriteScope).
  bool truncate_log_after_commit = false;
  // Makes the connection wait for another process's write lock up to `timeout`, as
  // sqlite3_busy_timeout does, except that once one wait has lasted that long the next ones give
  // up at once, until a write transaction begins (LockTaken). The driver's loops (heartbeat,
  // leader, claims, outcomes) and inserts each waited out the whole timeout in turn: an audit's
  // Stop(2s) took 57 s while another process held the lock.
  void InstallBusyHandler(std::chrono::milliseconds timeout);
  void LockTaken() { busy_since_ = {}; }

  // Once the disk has been full, the log is kept small (the writer's checkpoints read it; the
  // driver's Checkpointer): a log that grows to its usual 66 MB between checkpoints would fill
  // the disk again.
  std::atomic<bool> disk_was_full{false};

 private:
  static int OnBusy(void* self, int count);

  std::chrono::milliseconds busy_timeout_{0};
  std::chrono::steady_clock::time_point busy_since_{};  // when the current wait began
  sqlite3* db_;
  std::unordered_map<std::string, SqliteStmtPtr> stmts_;
};

// Resets a cached statement and clears its bindings when the scope ends, so the next user finds
// it fresh and no binding points at freed memory.
class StmtScope {
 public:
  explicit StmtScope(sqlite3_stmt* stmt) : stmt_(stmt) {}
  ~StmtScope() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  StmtScope(const StmtScope&) = delete;
  StmtScope& operator=(const StmtScope&) = delete;
  sqlite3_stmt* get() const { return stmt_; }

 private:
  sqlite3_stmt* stmt_;
};

// A write transaction around one executor operation. On a connection in autocommit mode it runs
// BEGIN IMMEDIATE (taking the write lock up front, so the busy timeout applies and a stale
// snapshot cannot fail the upgrade); inside a transaction someone else began it uses a SAVEPOINT
// so a failed operation undoes only itself. Rolls back unless Commit() succeeded.
class WriteScope {
 public:
  static Result<std::unique_ptr<WriteScope>> Begin(StatementCache& cache);
  ~WriteScope();
  WriteScope(const WriteScope&) = delete;
  WriteScope& operator=(const WriteScope&) = delete;
  Status Commit();

 private:
  WriteScope(StatementCache& cache, bool own_tx) : cache_(cache), own_tx_(own_tx) {}
  StatementCache& cache_;
  bool own_tx_;
  bool done_ = false;
};

// Steps a statement that returns no rows. Does not reset it.
Status StepDone(sqlite3_stmt* stmt, std::string_view context);

// Binds text that outlives the statement's use (no copy).
inline int BindText(sqlite3_stmt* stmt, int index, std::string_view text) {
  return sqlite3_bind_text64(stmt, index, text.data(), text.size(), nullptr, SQLITE_UTF8);
}

// A column as a string_view into SQLite's buffer; valid until the next step/reset.
inline std::string_view ColumnText(sqlite3_stmt* stmt, int col) {
  const unsigned char* p = sqlite3_column_text(stmt, col);
  if (p == nullptr) return {};
  return {reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(stmt, col))};
}

}  // namespace spool::internal
