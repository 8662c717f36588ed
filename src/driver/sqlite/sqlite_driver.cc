#include "driver/sqlite/sqlite_driver.h"

#include <fmt/format.h>
#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "core/thread_name.h"
#include "core/url.h"
#include "driver/sqlite/sqlite_conn.h"
#include "driver/sqlite/sqlite_migrations.h"
#include "driver/sqlite/sqlite_queries.h"
#include "driver/sqlite/wal_gather.h"

namespace spool::internal {

namespace {

// How often WaitForChange looks at data_version. The pragma reads shared memory only, so a short
// step buys low latency for jobs inserted by other processes at almost no cost. It is read on the
// writer, whose own commits do not move it: the client wakes its producers for those directly,
// and from a connection of its own every commit of the writer woke them again, about 200 times a
// second under load, each time a claim of however few slots were free.
constexpr Duration kDataVersionPollStep = std::chrono::milliseconds(5);
// Page cache of the writer: 2 MiB (negative = KiB), SQLite's default. A 32 MiB cache measured
// slower (bulk insert about 30% and work about 10% at 100,000 to 300,000 jobs): every commit
// walks the page cache's hash table to drop pages past the end of the file, so each commit costs
// more the larger the cache, and the operating system's page cache serves the rest.
constexpr const char* kWriterCacheSize = "PRAGMA cache_size = -2000";

constexpr std::string_view kMigrationLine = "main";

// FailedPrecondition when the file `db` has open was deleted or replaced since (SQLite keeps
// writing to the open, unlinked file): what is written then is lost when the client stops, and a
// new file at the path is never seen. One stat() of the path.
Status CheckFileNotMoved(sqlite3* db) {
  int moved = 0;
  if (sqlite3_file_control(db, "main", SQLITE_FCNTL_HAS_MOVED, &moved) != SQLITE_OK || !moved) {
    return Status::Ok();
  }
  const char* name = sqlite3_db_filename(db, "main");
  return Status::FailedPrecondition(fmt::format(
      "the SQLite database file \"{}\" was deleted or replaced while this client had it open: "
      "what it writes now is lost when it stops, and jobs in a new file there are not seen. Stop "
      "the app, put the file back (or create it with spool migration up) and start it again",
      name != nullptr ? name : ""));
}

// Runs every executor method of `Queries` under `mu`: the driver's shared, thread-safe executor.
class LockedExecutor final : public Executor {
 public:
  LockedExecutor(std::mutex& mu, SqliteQueries& queries) : mu_(mu), q_(queries) {}

  Result<std::vector<JobInsertResult>> JobInsertMany(const JobInsertManyParams& params) override {
    std::lock_guard lock(mu_);
    SPOOL_RETURN_IF_ERROR(CheckFileNotMoved(q_.cache().db()));
    return q_.JobInsertMany(params);
  }
  Result<int64_t> JobInsertManyFast(const JobInsertManyParams& params) override {
    std::lock_guard lock(mu_);
    SPOOL_RETURN_IF_ERROR(CheckFileNotMoved(q_.cache().db()));
    return q_.JobInsertManyFast(params);
  }
  Result<std::vector<JobRow>> JobGetAvailable(const JobGetAvailableParams& params) override {
    // The rows are decoded after the writer is released: in the runtime that decoding (a heap
    // block for each long name, JSON for the arrays) took about a fifth of a claim's hold.
    Result<RawJobRows> raw = [&] {
      std::lock_guard lock(mu_);
      return q_.ClaimAvailable(params);
    }();
    if (!raw) return raw.error();
    return q_.FinishClaim(*raw, params, &mu_);
  }
  Result<int64_t> JobSetStateIfRunningMany(const JobSetStateIfRunningManyParams& params) override {
    std::lock_guard lock(mu_);
    return q_.JobSetStateIfRunningMany(params);
  }
  Result<JobScheduleResult> JobSchedule(const JobScheduleParams& params) override {
    std::lock_guard lock(mu_);
    return q_.JobSchedule(params);
  }
  Result<JobRow> JobGetByID(int64_t id) override {
    std::lock_guard lock(mu_);
    return q_.JobGetByID(id);
  }
  Result<std::vector<JobRow>> JobList(const JobListParams& params) override {
    std::lock_guard lock(mu_);
    return q_.JobList(params);
  }
  Result<std::map<JobState, int64_t>> JobCountByState(std::string_view queue) override {
    std::lock_guard lock(mu_);
    return q_.JobCountByState(queue);
  }
  Result<JobRow> JobCancel(const JobCancelParams& params) override {
    std::lock_guard lock(mu_);
    return q_.JobCancel(params);
  }
  Result<JobRow> JobRetry(const JobRetryParams& params) override {
    std::lock_guard lock(mu_);
    return q_.JobRetry(params);
  }
  Result<JobRow> JobDelete(int64_t id) override {
    std::lock_guard lock(mu_);
    return q_.JobDelete(id);
  }
  Result<std::vector<int64_t>> JobGetCancelRequested(const std::vector<int64_t>& ids) override {
    std::lock_guard lock(mu_);
    return q_.JobGetCancelRequested(ids);
  }
  Result<std::vector<JobRow>> JobGetStuck(const JobGetStuckParams& params) override {
    std::lock_guard lock(mu_);
    return q_.JobGetStuck(params);
  }
  Result<int64_t> JobDeleteFinalized(const JobDeleteFinalizedParams& params) override {
    std::lock_guard lock(mu_);
    return q_.JobDeleteFinalized(params);
  }
  Result<bool> LeaderAttemptElect(const LeaderElectParams& params) override {
    std::lock_guard lock(mu_);
    return q_.LeaderAttemptElect(params);
  }
  Result<bool> LeaderAttemptReelect(const LeaderElectParams& params) override {
    std::lock_guard lock(mu_);
    return q_.LeaderAttemptReelect(params);
  }
  Status LeaderResign(std::string_view leader_id) override {
    std::lock_guard lock(mu_);
    return q_.LeaderResign(leader_id);
  }
  Result<std::optional<LeaderInfo>> LeaderGet() override {
    std::lock_guard lock(mu_);
    return q_.LeaderGet();
  }
  Result<std::optional<TimePoint>> ClientHeartbeat(const ClientHeartbeatParams& params) override {
    std::lock_guard lock(mu_);
    // Every few seconds, so a deleted file is logged even while nothing is inserted.
    SPOOL_RETURN_IF_ERROR(CheckFileNotMoved(q_.cache().db()));
    return q_.ClientHeartbeat(params);
  }
  Status ClientDelete(std::string_view id) override {
    std::lock_guard lock(mu_);
    return q_.ClientDelete(id);
  }
  Result<int64_t> ClientDeleteStale(TimePoint before) override {
    std::lock_guard lock(mu_);
    return q_.ClientDeleteStale(before);
  }
  Result<bool> QueuePause(std::string_view name, TimePoint now) override {
    std::lock_guard lock(mu_);
    return q_.QueuePause(name, now);
  }
  Result<bool> QueueResume(std::string_view name, TimePoint now) override {
    std::lock_guard lock(mu_);
    return q_.QueueResume(name, now);
  }
  Result<std::vector<QueueInfo>> QueueList() override {
    std::lock_guard lock(mu_);
    return q_.QueueList();
  }
  Result<std::optional<TimePoint>> QueuePausedAt(std::string_view name) override {
    std::lock_guard lock(mu_);
    return q_.QueuePausedAt(name);
  }
  Result<bool> QueueKnown(std::string_view name) override {
    std::lock_guard lock(mu_);
    return q_.QueueKnown(name);
  }
  Result<std::optional<TimePoint>> PeriodicGetLastTick(std::string_view name) override {
    std::lock_guard lock(mu_);
    return q_.PeriodicGetLastTick(name);
  }
  Status PeriodicSetLastTick(std::string_view name, TimePoint tick, TimePoint now) override {
    std::lock_guard lock(mu_);
    return q_.PeriodicSetLastTick(name, tick, now);
  }

 private:
  std::mutex& mu_;
  SqliteQueries& q_;
};

// A BEGIN IMMEDIATE transaction on the writer. Holds the writer mutex from Begin until Commit,
// Rollback or destruction, so the driver's other users wait instead of writing into it.
class SqliteTx final : public Tx {
 public:
  SqliteTx(std::unique_lock<std::mutex> lock, SqliteQueries& queries)
      : lock_(std::move(lock)), q_(queries) {}
  ~SqliteTx() override {
    if (lock_.owns_lock()) (void)Rollback();
  }

  Result<std::vector<JobInsertResult>> JobInsertMany(const JobInsertManyParams& params) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.JobInsertMany(params);
  }
  Result<int64_t> JobInsertManyFast(const JobInsertManyParams& params) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.JobInsertManyFast(params);
  }
  Result<std::vector<JobRow>> JobGetAvailable(const JobGetAvailableParams& params) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.JobGetAvailable(params);
  }
  Result<int64_t> JobSetStateIfRunningMany(const JobSetStateIfRunningManyParams& params) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.JobSetStateIfRunningMany(params);
  }
  Result<JobScheduleResult> JobSchedule(const JobScheduleParams& params) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.JobSchedule(params);
  }
  Result<JobRow> JobGetByID(int64_t id) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.JobGetByID(id);
  }
  Result<std::vector<JobRow>> JobList(const JobListParams& params) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.JobList(params);
  }
  Result<std::map<JobState, int64_t>> JobCountByState(std::string_view queue) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.JobCountByState(queue);
  }
  Result<JobRow> JobCancel(const JobCancelParams& params) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.JobCancel(params);
  }
  Result<JobRow> JobRetry(const JobRetryParams& params) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.JobRetry(params);
  }
  Result<JobRow> JobDelete(int64_t id) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.JobDelete(id);
  }
  Result<std::vector<int64_t>> JobGetCancelRequested(const std::vector<int64_t>& ids) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.JobGetCancelRequested(ids);
  }
  Result<std::vector<JobRow>> JobGetStuck(const JobGetStuckParams& params) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.JobGetStuck(params);
  }
  Result<int64_t> JobDeleteFinalized(const JobDeleteFinalizedParams& params) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.JobDeleteFinalized(params);
  }
  Result<bool> LeaderAttemptElect(const LeaderElectParams& params) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.LeaderAttemptElect(params);
  }
  Result<bool> LeaderAttemptReelect(const LeaderElectParams& params) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.LeaderAttemptReelect(params);
  }
  Status LeaderResign(std::string_view leader_id) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.LeaderResign(leader_id);
  }
  Result<std::optional<LeaderInfo>> LeaderGet() override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.LeaderGet();
  }
  Result<std::optional<TimePoint>> ClientHeartbeat(const ClientHeartbeatParams& params) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.ClientHeartbeat(params);
  }
  Status ClientDelete(std::string_view id) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.ClientDelete(id);
  }
  Result<int64_t> ClientDeleteStale(TimePoint before) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.ClientDeleteStale(before);
  }
  Result<bool> QueuePause(std::string_view name, TimePoint now) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.QueuePause(name, now);
  }
  Result<bool> QueueResume(std::string_view name, TimePoint now) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.QueueResume(name, now);
  }
  Result<std::vector<QueueInfo>> QueueList() override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.QueueList();
  }
  Result<std::optional<TimePoint>> QueuePausedAt(std::string_view name) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.QueuePausedAt(name);
  }
  Result<bool> QueueKnown(std::string_view name) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.QueueKnown(name);
  }
  Result<std::optional<TimePoint>> PeriodicGetLastTick(std::string_view name) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.PeriodicGetLastTick(name);
  }
  Status PeriodicSetLastTick(std::string_view name, TimePoint tick, TimePoint now) override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    return q_.PeriodicSetLastTick(name, tick, now);
  }

  Status Commit() override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    Status s = Run("COMMIT");
    if (!s.ok()) {
      // A failed COMMIT can leave the transaction open (e.g. busy): end it so the writer is
      // usable again and the outcome is unambiguous.
      if (sqlite3_get_autocommit(q_.cache().db()) == 0) (void)Run("ROLLBACK");
    }
    lock_.unlock();
    return s;
  }

  Status Rollback() override {
    SPOOL_RETURN_IF_ERROR(CheckOpen());
    Status s = Status::Ok();
    if (sqlite3_get_autocommit(q_.cache().db()) == 0) s = Run("ROLLBACK");
    lock_.unlock();
    return s;
  }

 private:
  Status CheckOpen() const {
    if (!lock_.owns_lock()) {
      return Status::FailedPrecondition("transaction already committed or rolled back");
    }
    return Status::Ok();
  }
  Status Run(std::string_view sql) {
    SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, q_.cache().Get(sql));
    StmtScope use(stmt);
    return StepDone(stmt, sql);
  }

  std::unique_lock<std::mutex> lock_;
  SqliteQueries& q_;
};

// The errors an insert on the caller's own connection meets that the caller must act on, told in
// the caller's terms: "database is busy; try again" would be wrong advice inside a transaction
// that can no longer write.
Status ExplainCallerTxError(sqlite3* db, Status st) {
  const char* name = sqlite3_db_filename(db, "main");
  const std::string file = name != nullptr ? name : "";
  if (st.native_code() == std::to_string(SQLITE_BUSY_SNAPSHOT)) {
    return Status(
        Status::Code::kRetryable,
        "insert inside your transaction: the transaction read the database before another "
        "connection wrote to it, so SQLite cannot let it write (SQLITE_BUSY_SNAPSHOT; "
        "waiting does not help): ROLLBACK and run the transaction again, and begin it "
        "with BEGIN IMMEDIATE, which takes the write lock before the first read",
        st.native_code());
  }
  if (st.native_code() == std::to_string(SQLITE_BUSY)) {
    return Status(Status::Code::kRetryable,
                  fmt::format("insert inside your transaction: another connection held the write "
                              "lock of \"{}\" (longer than your connection's busy timeout, or "
                              "while your transaction had already read, when SQLite cannot wait): "
                              "ROLLBACK and run the transaction again, begun with BEGIN IMMEDIATE, "
                              "which waits for the lock before the first read",
                              file),
                  st.native_code());
  }
  if (st.message().find("no such table: spool_") != std::string::npos) {
    return Status::FailedPrecondition(fmt::format(
        "insert inside your transaction: \"{}\" has no spool tables ({}): if it is the database "
        "jobs belong in, run `spool migration up --database-url {}`; otherwise pass a "
        "connection to the client's own database",
        file, st.message(), internal::ShellWord("sqlite://" + file)));
  }
  return st;
}

// Runs queries on a caller's connection inside the caller's transaction. Owns only its prepared
// statements, which it finalizes when destroyed: destroy it before closing the connection.
class BorrowedExecutor final : public Executor {
 public:
  explicit BorrowedExecutor(sqlite3* db) : db_(db), q_(db) {}

  Result<std::vector<JobInsertResult>> JobInsertMany(const JobInsertManyParams& params) override {
    auto r = q_.JobInsertMany(params);
    if (!r) return ExplainCallerTxError(db_, r.error());
    return r;
  }
  Result<int64_t> JobInsertManyFast(const JobInsertManyParams& params) override {
    auto r = q_.JobInsertManyFast(params);
    if (!r) return ExplainCallerTxError(db_, r.error());
    return r;
  }
  Result<std::vector<JobRow>> JobGetAvailable(const JobGetAvailableParams& params) override {
    return q_.JobGetAvailable(params);
  }
  Result<int64_t> JobSetStateIfRunningMany(const JobSetStateIfRunningManyParams& params) override {
    return q_.JobSetStateIfRunningMany(params);
  }
  Result<JobScheduleResult> JobSchedule(const JobScheduleParams& params) override {
    return q_.JobSchedule(params);
  }
  Result<JobRow> JobGetByID(int64_t id) override { return q_.JobGetByID(id); }
  Result<std::vector<JobRow>> JobList(const JobListParams& params) override {
    return q_.JobList(params);
  }
  Result<std::map<JobState, int64_t>> JobCountByState(std::string_view queue) override {
    return q_.JobCountByState(queue);
  }
  Result<JobRow> JobCancel(const JobCancelParams& params) override { return q_.JobCancel(params); }
  Result<JobRow> JobRetry(const JobRetryParams& params) override { return q_.JobRetry(params); }
  Result<JobRow> JobDelete(int64_t id) override { return q_.JobDelete(id); }
  Result<std::vector<int64_t>> JobGetCancelRequested(const std::vector<int64_t>& ids) override {
    return q_.JobGetCancelRequested(ids);
  }
  Result<std::vector<JobRow>> JobGetStuck(const JobGetStuckParams& params) override {
    return q_.JobGetStuck(params);
  }
  Result<int64_t> JobDeleteFinalized(const JobDeleteFinalizedParams& params) override {
    return q_.JobDeleteFinalized(params);
  }
  Result<bool> LeaderAttemptElect(const LeaderElectParams& params) override {
    return q_.LeaderAttemptElect(params);
  }
  Result<bool> LeaderAttemptReelect(const LeaderElectParams& params) override {
    return q_.LeaderAttemptReelect(params);
  }
  Status LeaderResign(std::string_view leader_id) override { return q_.LeaderResign(leader_id); }
  Result<std::optional<LeaderInfo>> LeaderGet() override { return q_.LeaderGet(); }
  Result<std::optional<TimePoint>> ClientHeartbeat(const ClientHeartbeatParams& params) override {
    return q_.ClientHeartbeat(params);
  }
  Status ClientDelete(std::string_view id) override { return q_.ClientDelete(id); }
  Result<int64_t> ClientDeleteStale(TimePoint before) override {
    return q_.ClientDeleteStale(before);
  }
  Result<bool> QueuePause(std::string_view name, TimePoint now) override {
    return q_.QueuePause(name, now);
  }
  Result<bool> QueueResume(std::string_view name, TimePoint now) override {
    return q_.QueueResume(name, now);
  }
  Result<std::vector<QueueInfo>> QueueList() override { return q_.QueueList(); }
  Result<std::optional<TimePoint>> QueuePausedAt(std::string_view name) override {
    return q_.QueuePausedAt(name);
  }
  Result<bool> QueueKnown(std::string_view name) override { return q_.QueueKnown(name); }
  Result<std::optional<TimePoint>> PeriodicGetLastTick(std::string_view name) override {
    return q_.PeriodicGetLastTick(name);
  }
  Status PeriodicSetLastTick(std::string_view name, TimePoint tick, TimePoint now) override {
    return q_.PeriodicSetLastTick(name, tick, now);
  }

 private:
  sqlite3* db_;
  SqliteQueries q_;
};

Status RunPragma(sqlite3* db, const std::string& sql, const std::string& path) {
  Status s = SqliteExec(db, sql.c_str());
  if (s.ok()) return s;
  if ((sqlite3_errcode(db) & 0xff) == SQLITE_READONLY) {
    // Even reading needs write access here: WAL mode keeps -wal and -shm files beside the file.
    return Status::FailedPrecondition(fmt::format(
        "setting up SQLite database \"{}\": {}; spool needs to write to the file and to its "
        "directory (SQLite keeps {}-wal and {}-shm beside it): check their owner and permissions",
        path, s.message(), path, path));
  }
  return s.WithContext(fmt::format("setting up SQLite database \"{}\"", path));
}

// The writer and the checkpointer sync alike (SqliteOptions::synchronous_full).
const char* SynchronousPragma(bool full) {
  return full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL";
}

// Copies the WAL back into the database file on a thread and connection of its own, so the
// writer's commits do not wait for the copy and its fsync (SQLite's auto-checkpoint runs them in
// the committing thread). The writer's WAL hook hands over: past kCheckpointFrames it wakes this
// thread. A log that is copied while the writer keeps appending is never completely copied, and
// only a completely copied log restarts from its beginning, so past kInlineCheckpointFrames the
// writer checkpoints itself, which copies the remainder (little, when this thread keeps up)
// and lets the log restart: the -wal file stays bounded.
class Checkpointer {
 public:
  // 66 MB (62.5 MiB) of WAL with 4 KiB pages. A queue rewrites the same pages (index leaves, the
  // rows just claimed) many times over, and a page is copied once per checkpoint however often it
  // was written: copying every 16,000 frames instead of 4,000 cut the copying enough to work 10%
  // more jobs per second in 300,000-job runs.
  static constexpr int kCheckpointFrames = 16000;
  static constexpr int kInlineCheckpointFrames = 32000;  // 131 MB (125 MiB)
  // After a checkpoint that could not copy the whole log (a reader's snapshot holds it), the
  // next waits until the log has grown by this much. Retried at every commit, a futile
  // checkpoint read the whole wal-index each time: an audit's burn-down under a long read fell
  // from 100,000 jobs/s to 5,000, with a core busy on checkpoints.
  static constexpr int kBlockedRetryFrames = 4000;
  // Once the disk has been full: the writer copies and truncates the log every 4 MB.
  static constexpr int kSmallLogFrames = 1000;

  Checkpointer(std::string path, bool synchronous_full)
      : path_(std::move(path)), synchronous_full_(synchronous_full) {}
  ~Checkpointer() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // Set by the driver: the writer's flag that the disk has been full.
  void WatchDiskFull(const std::atomic<bool>* disk_was_full) { disk_was_full_ = disk_was_full; }

  // sqlite3_wal_hook callback of the writer, after each of its commits.
  static int OnCommit(void* self, sqlite3* writer, const char* db_name, int frames) {
    auto* c = static_cast<Checkpointer*>(self);
    if (frames >= kSmallLogFrames && c->disk_was_full_ != nullptr && c->disk_was_full_->load()) {
      (void)sqlite3_wal_checkpoint_v2(writer, db_name, SQLITE_CHECKPOINT_TRUNCATE, nullptr,
                                      nullptr);
      return SQLITE_OK;
    }
    if (frames < kCheckpointFrames) return SQLITE_OK;
    {
      std::lock_guard lock(c->mu_);
      // A log shorter than when a checkpoint was blocked has been restarted: that block is over.
      if (frames < c->blocked_at_) c->blocked_at_ = 0;
      if (c->blocked_at_ > 0 && frames < c->blocked_at_ + kBlockedRetryFrames) return SQLITE_OK;
    }
    if (frames >= kInlineCheckpointFrames) {
      c->CheckpointInline(writer, db_name);
    } else {
      c->Request();
    }
    return SQLITE_OK;
  }

 private:
  void Request() {
    {
      std::lock_guard lock(mu_);
      if (requested_ || stop_) return;
      // Started on first need: short-lived clients (the CLI) never pay for the thread. This runs
      // inside SQLite's commit, where nothing may throw: without a thread, the writer's own
      // checkpoints past kInlineCheckpointFrames still bound the log.
      if (!thread_.joinable()) {
        try {
          thread_ = std::thread([this] {
            NameThisThread("checkpt");
            Run();
          });
        } catch (...) {
          stop_ = true;
          return;
        }
      }
      requested_ = true;
    }
    cv_.notify_all();
  }

  // Waits out a checkpoint of the thread (a PASSIVE checkpoint gives up at once if another one
  // runs, and then the log would grow on) and keeps the thread from starting one meanwhile.
  void CheckpointInline(sqlite3* writer, const char* db_name) {
    {
      std::unique_lock lock(mu_);
      writer_turn_ = true;
      cv_.wait(lock, [&] { return !running_; });
    }
    int log = 0;
    int copied = 0;
    const int rc =
        sqlite3_wal_checkpoint_v2(writer, db_name, SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
    {
      std::lock_guard lock(mu_);
      writer_turn_ = false;
      NoteResultLocked(rc, log, copied);
    }
    cv_.notify_all();
  }

  // A checkpoint that left frames uncopied was held back by a reader (or another checkpoint).
  void NoteResultLocked(int rc, int log, int copied) {
    if (rc == SQLITE_OK && log > 0 && copied < log) {
      blocked_at_ = log;
    } else if (rc == SQLITE_OK) {
      blocked_at_ = 0;
    }
  }

  void Run() {
    // Its own connection: a checkpoint holds no write lock, so the writer goes on committing.
    // If it cannot open one, the writer's inline checkpoints still bound the log.
    // It syncs as the writer does: a connection opens with synchronous = FULL, whose extra syncs
    // made every checkpoint stall the writer's commits (pickup p99 4 ms instead of 0.6 ms).
    auto db = SqliteOpen(path_);
    if (db) {
      (void)SqliteExec(db->get(), SynchronousPragma(synchronous_full_));
    }
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || (requested_ && !writer_turn_); });
      if (stop_) return;
      requested_ = false;  // a commit during this checkpoint asks for the next one
      running_ = true;
      lock.unlock();
      int rc = SQLITE_ERROR;
      int log = 0;
      int copied = 0;
      if (db) {
        rc =
            sqlite3_wal_checkpoint_v2(db->get(), nullptr, SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
      }
      lock.lock();
      NoteResultLocked(rc, log, copied);
      running_ = false;
      cv_.notify_all();
    }
  }

  const std::string path_;
  const bool synchronous_full_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool requested_ = false;    // guarded by mu_
  bool running_ = false;      // the thread is checkpointing; guarded by mu_
  bool writer_turn_ = false;  // the writer checkpoints itself; guarded by mu_
  bool stop_ = false;         // guarded by mu_
  const std::atomic<bool>* disk_was_full_ = nullptr;
  int blocked_at_ = 0;  // log frames when a checkpoint last could not copy them all; guarded by mu_
  std::thread thread_;
};

class SqliteDriver final : public Driver {
 public:
  SqliteDriver(std::string path, SqliteDbPtr writer, const DriverOptions& options)
      : path_(std::move(path)),
        checkpointer_(path_, options.sqlite.synchronous_full),
        writer_(std::move(writer)),
        queries_(writer_.get()),
        executor_(mu_, queries_) {}

  Status Init(const DriverOptions& options) {
    const auto busy_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(options.sqlite.busy_timeout).count();
    queries_.cache().InstallBusyHandler(
        std::chrono::milliseconds(std::clamp<int64_t>(busy_ms, 0, INT32_MAX)));
    // journal_mode is the first statement that reads the file, so it is where a file that is not
    // a database fails. Turning a new file to WAL takes its exclusive lock, and while another
    // process does the same (deploys starting together) SQLite answers SQLITE_BUSY at once,
    // without calling the busy handler: retried here until the busy timeout instead.
    const auto give_up = std::chrono::steady_clock::now() + options.sqlite.busy_timeout;
    auto pause = std::chrono::milliseconds(1);
    Status wal = RunPragma(writer_.get(), "PRAGMA journal_mode = WAL", path_);
    while (!wal.ok() && (sqlite3_errcode(writer_.get()) & 0xff) == SQLITE_BUSY &&
           std::chrono::steady_clock::now() + pause < give_up) {
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::milliseconds(50));
      wal = RunPragma(writer_.get(), "PRAGMA journal_mode = WAL", path_);
    }
    SPOOL_RETURN_IF_ERROR(wal);
    SPOOL_RETURN_IF_ERROR(
        RunPragma(writer_.get(), SynchronousPragma(options.sqlite.synchronous_full), path_));
    SPOOL_RETURN_IF_ERROR(RunPragma(writer_.get(), "PRAGMA foreign_keys = ON", path_));
    SPOOL_RETURN_IF_ERROR(RunPragma(writer_.get(), kWriterCacheSize, path_));
    SPOOL_RETURN_IF_ERROR(RunPragma(writer_.get(), "PRAGMA temp_store = MEMORY", path_));
    // SQLite opens a file it may not write read-only, and the pragmas above need no write when
    // the file is in WAL mode already: refused here rather than by every write of the running
    // client (a heartbeat warning every few seconds, each insert an error).
    if (sqlite3_db_readonly(writer_.get(), "main") == 1) {
      return Status::FailedPrecondition(fmt::format(
          "SQLite database \"{}\" can only be read by this process; spool needs to write to the "
          "file and to its directory (SQLite keeps {}-wal and {}-shm beside it): check their "
          "owner and permissions",
          path_, path_, path_));
    }
    // Replaces SQLite's auto-checkpoint (every 1,000 frames, in the committing thread).
    checkpointer_.WatchDiskFull(&queries_.cache().disk_was_full);
    sqlite3_wal_hook(writer_.get(), &Checkpointer::OnCommit, &checkpointer_);

    sqlite3_stmt* raw = nullptr;
    const int rc = sqlite3_prepare_v3(writer_.get(), "PRAGMA data_version", -1,
                                      SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
    data_version_stmt_.reset(raw);
    if (rc != SQLITE_OK) return SqliteStatus(rc, writer_.get(), "prepare data_version");
    SPOOL_ASSIGN_OR_RETURN(int64_t version, ReadDataVersion());
    last_data_version_ = version;
    return Status::Ok();
  }

  std::string_view Name() const override { return "sqlite"; }
  Executor& executor() override { return executor_; }

  Result<std::unique_ptr<Tx>> Begin() override {
    std::unique_lock lock(mu_);
    SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, queries_.cache().Get("BEGIN IMMEDIATE"));
    {
      StmtScope use(stmt);
      SPOOL_RETURN_IF_ERROR(StepDone(stmt, "begin transaction"));
    }
    queries_.cache().LockTaken();
    return std::unique_ptr<Tx>(new SqliteTx(std::move(lock), queries_));
  }

  Result<std::unique_ptr<Executor>> ExecutorFor(TxRef tx) override {
    if (tx.kind() != TxRef::Kind::kSqlite) {
      return Status::InvalidArgument(
          "the transaction is not a SQLite one: this client uses SQLite, pass spool::SqliteTx(db)");
    }
    if (tx.handle() == nullptr) {
      return Status::InvalidArgument("SqliteTx(db) was given a null sqlite3*");
    }
    auto* db = static_cast<sqlite3*>(tx.handle());
    // Outside a transaction each statement would commit on its own: the job would exist whatever
    // the caller did next, which is what a Tx call promises it will not.
    if (sqlite3_get_autocommit(db) != 0) {
      return Status::InvalidArgument(
          "SqliteTx(db): the connection has no open transaction: run BEGIN IMMEDIATE on it "
          "first, and check that it succeeded (the job then exists only if you COMMIT); a BEGIN "
          "IMMEDIATE that failed with \"database is locked\" needs a busy timeout on your "
          "connection (sqlite3_busy_timeout), as the client may be writing");
    }
    // A job inserted into another file with spool's tables would be committed there and never
    // worked by this client: the same file, or an error naming both.
    const char* theirs = sqlite3_db_filename(db, "main");
    const char* ours = sqlite3_db_filename(writer_.get(), "main");
    const std::string their_file = theirs != nullptr ? theirs : "";
    const std::string our_file = ours != nullptr ? ours : "";
    if (their_file != our_file) {
      std::error_code ec;
      if (their_file.empty() || !std::filesystem::equivalent(their_file, our_file, ec)) {
        return Status::InvalidArgument(fmt::format(
            "SqliteTx(db): the connection's database is \"{}\" and this client's is \"{}\": a "
            "job inserted there would never be worked here. Open the connection on the client's "
            "file (or the client on the connection's)",
            their_file.empty() ? "a temporary or in-memory one" : their_file, our_file));
      }
    }
    return std::unique_ptr<Executor>(new BorrowedExecutor(db));
  }

  const std::vector<Migration>& Migrations() const override { return SqliteMigrations(); }

  Result<int> SchemaVersion() override {
    std::lock_guard lock(mu_);
    return SchemaVersionLocked();
  }

  Status MigrateUp(int target) override {
    const int latest = LatestVersion(*this);
    if (target < 0 || target > latest) {
      return Status::InvalidArgument(
          fmt::format("cannot migrate up to version {}: this build of spool knows versions 1..{}",
                      target, latest));
    }
    std::lock_guard lock(mu_);
    SPOOL_ASSIGN_OR_RETURN(int current, SchemaVersionLocked());
    for (const Migration& m : Migrations()) {
      if (m.version <= current || m.version > target) continue;
      SPOOL_RETURN_IF_ERROR(ApplyLocked(m, /*up=*/true));
    }
    return Status::Ok();
  }

  Status MigrateDown(int target) override {
    if (target < 0) {
      return Status::InvalidArgument(
          fmt::format("cannot migrate down to version {}: use 0 to remove every table", target));
    }
    std::lock_guard lock(mu_);
    SPOOL_ASSIGN_OR_RETURN(int current, SchemaVersionLocked());
    const auto& migrations = Migrations();
    for (auto it = migrations.rbegin(); it != migrations.rend(); ++it) {
      if (it->version > current || it->version <= target) continue;
      SPOOL_RETURN_IF_ERROR(ApplyLocked(*it, /*up=*/false));
    }
    return Status::Ok();
  }

  Result<bool> WaitForChange(Duration timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::unique_lock lock(wait_mu_);
    for (;;) {
      if (interrupted_) {
        interrupted_ = false;
        return true;
      }
      SPOOL_ASSIGN_OR_RETURN(int64_t version, ReadDataVersion());
      if (version != last_data_version_) {
        last_data_version_ = version;
        return true;
      }
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return false;
      wait_cv_.wait_until(lock, std::min(deadline, now + kDataVersionPollStep),
                          [&] { return interrupted_; });
    }
  }

  void Interrupt() override {
    {
      std::lock_guard lock(wait_mu_);
      interrupted_ = true;
    }
    wait_cv_.notify_all();
  }

 private:
  Result<int> SchemaVersionLocked() {
    SPOOL_ASSIGN_OR_RETURN(
        sqlite3_stmt * exists,
        queries_.cache().Get(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'spool_migration'"));
    {
      StmtScope use(exists);
      const int rc = sqlite3_step(exists);
      if (rc == SQLITE_DONE) return 0;
      if (rc != SQLITE_ROW) return SqliteStatus(rc, writer_.get(), "read schema version");
    }
    // Prepared only once the table exists; cached afterwards (SQLite re-prepares it if the
    // schema changes, and it fails cleanly if the table is dropped again).
    SPOOL_ASSIGN_OR_RETURN(
        sqlite3_stmt * version,
        queries_.cache().Get("SELECT coalesce(max(version), 0) FROM spool_migration "
                             "WHERE line = ?1"));
    StmtScope use(version);
    SPOOL_RETURN_IF_ERROR(
        SqliteStatus(BindText(version, 1, kMigrationLine), writer_.get(), "bind"));
    const int rc = sqlite3_step(version);
    if (rc != SQLITE_ROW) return SqliteStatus(rc, writer_.get(), "read schema version");
    return sqlite3_column_int(version, 0);
  }

  // Runs one migration and records it in spool_migration, in one transaction.
  Status ApplyLocked(const Migration& m, bool up) {
    const std::string context =
        fmt::format("migration {} ({}) {}", m.version, m.name, up ? "up" : "down");
    auto fail = [&](const Status& s) { return s.WithContext(context); };
    SPOOL_ASSIGN_OR_RETURN(auto scope, WriteScope::Begin(queries_.cache()));
    // Another process may have applied (or reverted) this step since the caller read the
    // version: read it again under the write lock, so racing deploys apply each step once.
    Result<int> current = SchemaVersionLocked();
    if (!current) return fail(current.error());
    if (up ? *current >= m.version : *current != m.version) return Status::Ok();  // rolls back
    sqlite3* db = writer_.get();
    // Statements are prepared per run (not cached): each migration runs once, and the DDL
    // changes the tables a cached statement would point at.
    auto run = [&](const char* sql, auto bind) -> Status {
      sqlite3_stmt* raw = nullptr;
      int rc = sqlite3_prepare_v2(db, sql, -1, &raw, nullptr);
      SqliteStmtPtr stmt(raw);
      if (rc != SQLITE_OK) return SqliteStatus(rc, db, "prepare");
      rc = bind(stmt.get());
      if (rc != SQLITE_OK) return SqliteStatus(rc, db, "bind");
      return StepDone(stmt.get(), sql);
    };
    if (up) {
      Status s = SqliteExec(db, m.up.c_str());
      if (!s.ok()) return fail(s);
      s = run(
          "INSERT INTO spool_migration (line, version, name, applied_at) VALUES (?1, ?2, ?3, ?4)",
          [&](sqlite3_stmt* st) {
            const auto now =
                std::chrono::time_point_cast<Duration>(std::chrono::system_clock::now());
            int rc = BindText(st, 1, kMigrationLine);
            if (rc == SQLITE_OK) rc = sqlite3_bind_int(st, 2, m.version);
            if (rc == SQLITE_OK) rc = BindText(st, 3, m.name);
            if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 4, now.time_since_epoch().count());
            return rc;
          });
      if (!s.ok()) return fail(s);
    } else {
      // Delete the record first: the first migration's down drops spool_migration itself.
      Status s = run("DELETE FROM spool_migration WHERE line = ?1 AND version = ?2",
                     [&](sqlite3_stmt* st) {
                       int rc = BindText(st, 1, kMigrationLine);
                       if (rc == SQLITE_OK) rc = sqlite3_bind_int(st, 2, m.version);
                       return rc;
                     });
      if (!s.ok()) return fail(s);
      s = SqliteExec(db, m.down.c_str());
      if (!s.ok()) return fail(s);
    }
    Status s = scope->Commit();
    if (!s.ok()) return fail(s);
    return Status::Ok();
  }

  Result<int64_t> ReadDataVersion() {
    std::lock_guard lock(mu_);
    sqlite3_stmt* stmt = data_version_stmt_.get();
    StmtScope use(stmt);
    const int rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW) return SqliteStatus(rc, writer_.get(), "read data_version");
    return sqlite3_column_int64(stmt, 0);
  }

  const std::string path_;
  // Declared before writer_, so it outlives the writer's WAL hook that points at it.
  Checkpointer checkpointer_;

  // Guards the writer connection and everything run on it. Begin() holds it for the Tx's life.
  std::mutex mu_;
  SqliteDbPtr writer_;
  SqliteQueries queries_;  // declared after writer_: its statements die first
  LockedExecutor executor_;

  // WaitForChange's state; used by one waiting thread at a time, guarded by wait_mu_.
  std::mutex wait_mu_;
  std::condition_variable wait_cv_;
  bool interrupted_ = false;
  // On the writer, so run under mu_; declared after writer_: finalized before it closes.
  SqliteStmtPtr data_version_stmt_;
  int64_t last_data_version_ = 0;
};

}  // namespace

Result<std::unique_ptr<Driver>> OpenSqliteDriver(std::string path, const DriverOptions& options) {
  if (!options.create_if_missing) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec) && !ec) {
      const std::filesystem::path absolute = std::filesystem::absolute(path, ec);
      const std::string create =
          fmt::format("spool migration up --database-url {}",
                      internal::ShellWord("sqlite://" + (ec ? path : absolute.string())));
      // migration up creates the file, not its directory.
      const std::filesystem::path dir = absolute.parent_path();
      if (!ec && !std::filesystem::is_directory(dir, ec)) {
        return Status::FailedPrecondition(
            fmt::format("no SQLite database at {}: its directory {} does not exist (a typo in the "
                        "path? or create it, then run `{}`)",
                        path, dir.string(), create));
      }
      // A relative path is relative to the working directory, which is not always the folder
      // the database was made in (an app started from its build folder).
      if (!ec && absolute.string() != path) {
        return Status::FailedPrecondition(fmt::format(
            "no SQLite database at {} ({} from the working directory {}): start the process in "
            "the folder that holds the database, or give an absolute path; to make a new one "
            "there, run `{}` (or set ClientOptions.auto_migrate)",
            absolute.string(), path, std::filesystem::current_path(ec).string(), create));
      }
      return Status::FailedPrecondition(fmt::format(
          "no SQLite database at {}: run `{}` to create it (or set ClientOptions.auto_migrate)",
          path, create));
    }
  }
  // Everything the client writes goes through this connection, so its WAL writes are gathered.
  SPOOL_ASSIGN_OR_RETURN(SqliteDbPtr writer, SqliteOpen(path, WalGatheringVfs()));
  auto driver = std::make_unique<SqliteDriver>(path, std::move(writer), options);
  SPOOL_RETURN_IF_ERROR(driver->Init(options));
  return std::unique_ptr<Driver>(std::move(driver));
}

}  // namespace spool::internal
