#pragma once

// INTERNAL, NOT SEMVER-STABLE. The seam between spool's runtime and a database. Nothing above
// src/driver/ sees SQL or a C database handle: the runtime calls these methods with parameter
// structs. tests/conformance runs one suite against every driver: it is the specification.
// Do not implement outside spool.

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "spool/client.h"
#include "spool/job.h"
#include "spool/result.h"
#include "spool/status.h"

namespace spool::internal {

// ---- parameters -------------------------------------------------------------------------------

struct JobInsertParams {
  std::string kind{};
  std::string args = "{}";      // JSON object text, already validated
  std::string metadata = "{}";  // JSON object text, already validated
  std::string queue{};
  int priority = 1;
  int max_attempts = 25;
  JobState state = JobState::kAvailable;  // available, scheduled or pending
  TimePoint scheduled_at{};
  std::vector<std::string> tags{};
  // Raw key bytes (a 32-byte SHA-256); empty: the job is not unique. While a row with the same
  // key is in a state whose bit (1 << int(JobState)) is set in that row's unique_states, an
  // insert returns that row (duplicate) instead of inserting.
  std::string unique_key{};
  uint8_t unique_states = 0;
  // Claimed in the insert's own transaction for JobInsertManyParams::claim_for, unless the
  // job's queue is paused then (it is inserted available): state running, attempt 1,
  // attempted_at = now, attempted_by = [claim_for]. Only for available jobs in a batch without
  // unique jobs, and only through JobInsertMany (the caller needs the rows to run them).
  bool claim = false;
};

struct JobInsertResult {
  JobRow job{};
  bool duplicate = false;  // an existing row with the same unique key was returned instead
};

struct JobInsertManyParams {
  std::vector<JobInsertParams> jobs{};
  TimePoint now{};          // created_at of every row
  std::string claim_for{};  // the client id that rows with `claim` are claimed for
};

// Claims up to `max` available jobs of `queue` whose scheduled_at <= now, in order priority,
// scheduled_at, id: state -> running, attempt + 1, attempted_at = now, client_id appended to
// attempted_by. Returns the claimed rows after the update. If a claimed row cannot be read (edited
// by hand, corrupt, a column of another type), the error is returned and every row of the batch
// is given back (scheduled, attempt unused): the others due at once, the unreadable ones after
// kUnreadableRowDelay, so they neither stay running nor come round with every batch.
constexpr Duration kUnreadableRowDelay = std::chrono::minutes(1);

// Where a fetch may start: the job at (priority, scheduled_at, id) and every job ordered before
// it are skipped.
struct FetchPosition {
  int priority = 1;
  TimePoint scheduled_at{};
  int64_t id = 0;
};

struct JobGetAvailableParams {
  std::string queue{};
  int max = 1;
  std::string client_id{};
  TimePoint now{};
  // Set by a producer whose last fetch filled its batch up to this position: the jobs before it
  // were claimed then, so the fetch starts here instead of stepping over their index entries
  // (PostgreSQL keeps a claimed job's entry, dead, until a vacuum; a fetch from the start of a
  // drained backlog of 300,000 jobs stepped over thousands of pages). Jobs ordered at or before
  // it are not returned; those after it are, in the usual order.
  std::optional<FetchPosition> after{};
};

// One worker outcome. Applied only if the job is still running (an admin may have moved it) and,
// when `attempt` is set, still in that attempt: a run the rescuer gave up on must not write over
// the run that replaced it.
struct JobSetStateParams {
  int64_t id = 0;
  int attempt = 0;  // the attempt the outcome is of; 0: whichever is running
  // completed, cancelled, discarded: finalized_at = `at`.
  // retryable: scheduled_at = `at`.
  // scheduled (snooze): scheduled_at = `at` and attempt - 1 (a snooze does not use an attempt).
  JobState state = JobState::kCompleted;
  TimePoint at{};
  std::optional<AttemptError> error{};  // appended to the job's errors when set
  // With kScheduled: the worker snoozed (not a job given back unstarted), so the integer under
  // metadata key "snoozes" grows by one (set to 1 when absent or not an integer).
  bool snooze = false;
  // With retryable, scheduled or discarded: if an admin requested the job's cancel while it ran
  // (metadata key "cancel_requested_at", which the runtime may not have seen yet), the job
  // becomes cancelled instead, finalized at this error's time, with this error appended in place
  // of `error` (and no snooze counted). River turns such outcomes into cancels alike.
  std::optional<AttemptError> if_cancel_requested{};
  // When set, the claim the outcome is of: the row's attempted_at must be this too. A claim lost
  // in a database crash (PostgreSQL's claims do not wait for the WAL flush) is made again under
  // the same attempt number; the time tells the new run from the old one, whose outcome then
  // leaves the job alone.
  std::optional<TimePoint> attempted_at{};
};

struct JobSetStateIfRunningManyParams {
  std::vector<JobSetStateParams> jobs{};
  // When set, receives the ids of the jobs left unchanged (no longer running, or running another
  // attempt), in no particular order; cleared first. Costs nothing when every job is written.
  std::vector<int64_t>* skipped = nullptr;
  // When set, receives the ids of the jobs that became cancelled by `if_cancel_requested`, in no
  // particular order; cleared first.
  std::vector<int64_t>* cancelled = nullptr;
};

// Moves up to `max` scheduled and retryable jobs with scheduled_at <= now to available, and tells
// other processes of the queues that got jobs (PostgreSQL: NOTIFY in the same transaction).
struct JobScheduleParams {
  TimePoint now{};
  int max = 10'000;
};

struct JobScheduleResult {
  int64_t count = 0;
  std::vector<std::string> queues{};  // distinct queues that got available jobs
};

// Not running and not final: cancelled now (finalized_at = now, error "cancelled by an admin"
// appended). Running: metadata key "cancel_requested_at" set to now (RFC 3339) and the row
// returned still running; the runtime cancels its context, and other processes are told
// (PostgreSQL: NOTIFY on the control channel). Final: returned unchanged.
struct JobCancelParams {
  int64_t id = 0;
  TimePoint now{};
};

// Not running: available now (scheduled_at = now, finalized_at cleared); if attempt >=
// max_attempts, max_attempts = attempt + 1, and other processes are told of its queue
// (PostgreSQL: NOTIFY in the same transaction). Running: FailedPrecondition.
struct JobRetryParams {
  int64_t id = 0;
  TimePoint now{};
};

// Running jobs that are stuck, oldest attempted_at first: those whose client (the last entry of
// attempted_by) has no spool_client row with heartbeat_at >= heartbeat_stale_before, and those
// attempted before attempted_before whatever their client.
struct JobGetStuckParams {
  TimePoint heartbeat_stale_before{};
  TimePoint attempted_before{};
  int max = 1'000;
};

// Deletes up to `max` jobs in `state` (completed, cancelled or discarded) finalized before.
struct JobDeleteFinalizedParams {
  JobState state = JobState::kCompleted;
  TimePoint finalized_before{};
  int max = 10'000;
};

struct LeaderElectParams {
  std::string leader_id{};
  TimePoint now{};
  Duration ttl{};
};

// LeaderInfo: spool::LeaderInfo (public, as Client::Leader returns it).

struct ClientHeartbeatParams {
  std::string id{};
  TimePoint now{};
  std::vector<std::string> queues{};
  // When this client started: stored with its row, so that jobs attempted before it under the
  // same id (a process that ended, then restarted with a fixed client_id) count as orphaned.
  TimePoint started_at{};
};

// ---- interfaces -------------------------------------------------------------------------------

// Runs queries. The driver's own executor (Driver::executor()) is thread safe; a Tx or an
// executor over a caller's transaction is used by one thread at a time.
class Executor {
 public:
  virtual ~Executor() = default;

  // Inserts all rows in as few statements as possible; returns the rows in input order, with
  // the existing row (duplicate = true) for a unique job whose key is taken. Other processes are
  // told of the queues that got available jobs in the insert's own transaction (PostgreSQL:
  // NOTIFY, delivered at commit, left out for queues no other client works once this one has
  // heartbeated; SQLite needs nothing): callers only wake their own producers.
  virtual Result<std::vector<JobInsertResult>> JobInsertMany(const JobInsertManyParams& params) = 0;
  // Same, returning only the number of rows inserted (duplicates skipped, no rows read back).
  virtual Result<int64_t> JobInsertManyFast(const JobInsertManyParams& params) = 0;
  virtual Result<std::vector<JobRow>> JobGetAvailable(const JobGetAvailableParams& params) = 0;
  // Returns how many rows changed (jobs no longer running are skipped).
  virtual Result<int64_t> JobSetStateIfRunningMany(
      const JobSetStateIfRunningManyParams& params) = 0;
  virtual Result<JobScheduleResult> JobSchedule(const JobScheduleParams& params) = 0;
  // NotFound naming the id.
  virtual Result<JobRow> JobGetByID(int64_t id) = 0;
  // A row that cannot be read comes back with only its id set (kind empty; RowOrIdOnly), so one
  // bad row does not hide the others and can be found and deleted.
  virtual Result<std::vector<JobRow>> JobList(const JobListParams& params) = 0;
  virtual Result<std::map<JobState, int64_t>> JobCountByState(std::string_view queue) = 0;

  // ---- admin (see the params structs). NotFound naming the id.
  virtual Result<JobRow> JobCancel(const JobCancelParams& params) = 0;
  virtual Result<JobRow> JobRetry(const JobRetryParams& params) = 0;
  // Deletes a job that is not running and returns it; FailedPrecondition when running. A row
  // that cannot be read is deleted all the same and comes back with only its id (RowOrIdOnly).
  virtual Result<JobRow> JobDelete(int64_t id) = 0;
  // Of `ids`, the jobs still running whose cancel was requested.
  virtual Result<std::vector<int64_t>> JobGetCancelRequested(const std::vector<int64_t>& ids) = 0;

  // ---- maintenance
  virtual Result<std::vector<JobRow>> JobGetStuck(const JobGetStuckParams& params) = 0;
  virtual Result<int64_t> JobDeleteFinalized(const JobDeleteFinalizedParams& params) = 0;

  // Takes the lease if nobody holds it or it expired (expires_at <= now): expires_at = now + ttl.
  // True if leader_id holds the lease afterwards.
  virtual Result<bool> LeaderAttemptElect(const LeaderElectParams& params) = 0;
  // Extends the lease only if leader_id holds it (even if expired and not yet taken); true then.
  virtual Result<bool> LeaderAttemptReelect(const LeaderElectParams& params) = 0;
  // Gives the lease up if leader_id holds it.
  virtual Status LeaderResign(std::string_view leader_id) = 0;
  virtual Result<std::optional<LeaderInfo>> LeaderGet() = 0;

  // Upserts the client's row: started_at = params.started_at, heartbeat_at = now, queues.
  // Returns the started_at the row held before (none for a new row): a value other than the
  // client's own after its first heartbeat means another running process uses the same id.
  virtual Result<std::optional<TimePoint>> ClientHeartbeat(const ClientHeartbeatParams& params) = 0;
  virtual Status ClientDelete(std::string_view id) = 0;
  // Deletes client rows with heartbeat_at < before; returns how many.
  virtual Result<int64_t> ClientDeleteStale(TimePoint before) = 0;

  // Pause state lives in spool_queue (a row is created on first pause). JobGetAvailable returns
  // nothing for a paused queue. Other processes are told in the same transaction (PostgreSQL:
  // NOTIFY on the control channel). True when the state changed: false for a pause of a paused
  // queue (which keeps its first paused_at) or a resume of one not paused.
  virtual Result<bool> QueuePause(std::string_view name, TimePoint now) = 0;
  virtual Result<bool> QueueResume(std::string_view name, TimePoint now) = 0;
  // Every queue that has a spool_queue row, any job, or a client (spool_client) working it, by
  // name, with counts by state.
  virtual Result<std::vector<QueueInfo>> QueueList() = 0;
  // When the queue was paused; nullopt when it is not (never paused, or resumed). Reads the pause
  // record alone, so it costs the same on any job table.
  virtual Result<std::optional<TimePoint>> QueuePausedAt(std::string_view name) = 0;
  // Whether QueueList would list the queue: a pause record, a client working it, or a job in it,
  // looked for in that order (the jobs only when the others say no, and then only until one is
  // found, never counted).
  virtual Result<bool> QueueKnown(std::string_view name) = 0;

  // The last tick enqueued for a periodic job; nullopt when never.
  virtual Result<std::optional<TimePoint>> PeriodicGetLastTick(std::string_view name) = 0;
  virtual Status PeriodicSetLastTick(std::string_view name, TimePoint tick, TimePoint now) = 0;
};

// An executor inside a transaction the driver began. Destroying it without Commit rolls back.
class Tx : public Executor {
 public:
  virtual Status Commit() = 0;
  virtual Status Rollback() = 0;
};

// One numbered schema migration.
struct Migration {
  int version{};
  std::string name{};
  std::string up{};
  std::string down{};
};

// The part of `sql` from `from` (included) up to the next `to` (excluded): DDL of an earlier
// migration that a later one restores.
std::string SqlBetween(std::string_view sql, std::string_view from, std::string_view to);

struct DriverOptions {
  SqliteOptions sqlite{};
  PostgresOptions postgres{};
  // False: never LISTEN (PostgreSQL); WaitForChange then only waits out its timeout or an
  // Interrupt and reports no change. SQLite polls data_version either way.
  bool listen = true;
  // False: a SQLite file that does not exist is FailedPrecondition naming the command that
  // creates it, rather than created empty (Client::Open without auto_migrate would refuse the
  // empty file anyway, and leave it behind a mistyped path).
  bool create_if_missing = true;
  // PostgreSQL: a pooled connection idle this long is checked for a close the server sent
  // meanwhile (idle_session_timeout, a restart, a proxy) before it is used. Tests set 0.
  std::chrono::milliseconds pg_check_idle_after{1000};
};

class Driver {
 public:
  virtual ~Driver() = default;

  // Opens a driver for `url` by its scheme: sqlite:// or postgres:// / postgresql://.
  // InvalidArgument for an unknown scheme; ConnectionLost naming the path or host if it fails.
  static Result<std::unique_ptr<Driver>> Open(std::string_view url, const DriverOptions& options);

  // "sqlite" or "postgres".
  virtual std::string_view Name() const = 0;
  // The shared, thread-safe executor.
  virtual Executor& executor() = 0;
  // Begins a transaction. On SQLite this holds the single writer until Commit/Rollback.
  virtual Result<std::unique_ptr<Tx>> Begin() = 0;
  // An executor over the caller's transaction. InvalidArgument if `tx` is another driver's kind.
  virtual Result<std::unique_ptr<Executor>> ExecutorFor(TxRef tx) = 0;

  // The migrations this build knows, ascending by version.
  virtual const std::vector<Migration>& Migrations() const = 0;
  // The applied version of spool's schema; 0 when none of its tables exist.
  virtual Result<int> SchemaVersion() = 0;
  // Applies migrations above the current version up to `target`, each in its own transaction.
  virtual Status MigrateUp(int target) = 0;
  // Reverts migrations above `target`, newest first.
  virtual Status MigrateDown(int target) = 0;

  // Wake-ups from other processes. Blocks up to `timeout` and returns true when something may
  // have changed (SQLite: PRAGMA data_version moved; PostgreSQL: a notification arrived), false
  // on timeout. Interrupt() makes a blocked call return at once. Called by one thread.
  virtual Result<bool> WaitForChange(Duration timeout) = 0;
  virtual void Interrupt() = 0;
  // Asks the database to cancel the statements the driver's connections run now, which then
  // fail as retryable: for a stop that must not wait for a stalled database (a lock, a frozen
  // server). Thread safe. PostgreSQL; SQLite's waits are bounded by its busy timeout.
  virtual void CancelStatements() {}
  // A count that grows each time the database may have lost commits of claims and outcomes it
  // acknowledged: PostgreSQL's connections found closed or broken while those commits do not wait
  // for the WAL flush (the server may have crashed). The completer then writes its latest
  // outcomes again. Null where an acknowledged commit is durable. Lives as long as the driver.
  virtual const std::atomic<uint64_t>* PossibleCommitLosses() const { return nullptr; }
};

// Checks of seam parameters shared by every driver, so all reject the same input with the same
// InvalidArgument message.
// Each insert row: state available/scheduled/pending, priority in range, non-empty kind and
// queue, max_attempts from 1 to `max_attempts_limit` (what the driver's column holds); rows to
// claim are available, in a batch without unique rows, with a client to be claimed for, and
// `returns_rows`.
Status CheckInsertRows(const JobInsertManyParams& params, int max_attempts_limit,
                       bool returns_rows);
// Each outcome's state is one a worker can set: completed, cancelled, discarded, retryable or
// scheduled.
Status CheckOutcomeStates(const std::vector<JobSetStateParams>& outcomes);
// The state of a JobDeleteFinalized call is a final one.
Status CheckFinalizedState(JobState state);

// Why a running `job` cannot be retried or deleted (`doing`: "retrying", "deleting"), saying what
// to do, and that its cancel is under way when one was requested.
Status RunningJobRefused(const JobRow& job, std::string_view doing);
// Why `job`, which a retry left unchanged, cannot be retried: it is running, or it has used every
// attempt a job may have (kMaxMaxAttempts), so max_attempts cannot grow. FailedPrecondition.
Status RetryRefused(const JobRow& job);
// The error of a retry that the unique index refused: AlreadyExists naming `holder`, the job that
// has the key in one of its states, when the driver could read it.
Status UniqueKeyHeld(const Result<JobRow>& holder);
// Reading job rows, the same words from every driver: `r`, or its error prefixed with the column
// it came from; the error for job `job` (its id, or a placeholder) whose row cannot be read; and
// the error a claim returns when it gave its batch back because of such a row, which says what
// to do.
template <typename T>
Result<T> InColumn(std::string_view column, Result<T> r) {
  if (!r) return Status::Internal("column " + std::string(column) + ": " + r.error().message());
  return r;
}
Status UnreadableRowError(std::string_view job, const Status& cause);
Status UnreadableClaimError(const Status& cause);
// What a delete or a listing returns for job `id`: the row, or, when it could not be read, a row
// with only the id set (kind empty), so that such a row can be seen and got rid of.
JobRow RowOrIdOnly(int64_t id, Result<JobRow> decoded);

// The embedded migrations of a driver kind ("sqlite" or "postgres") without opening a database;
// nullptr for an unknown kind or one not built in. Each driver defines its own
// (SqliteMigrations(), PostgresMigrations()).
const std::vector<Migration>* MigrationsFor(std::string_view driver_name);
const std::vector<Migration>& SqliteMigrations();
const std::vector<Migration>& PostgresMigrations();

// The newest schema version of a driver's migrations.
inline int LatestVersion(const Driver& driver) {
  const auto& m = driver.Migrations();
  return m.empty() ? 0 : m.back().version;
}

}  // namespace spool::internal
