#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "spool/job.h"
#include "spool/options.h"
#include "spool/result.h"
#include "spool/status.h"
#include "spool/worker.h"

// The caller's own database handles, for transactional insert. Declared, never defined here, so
// this header pulls in neither sqlite3.h nor libpq-fe.h.
struct sqlite3;
struct pg_conn;

namespace spool {

// A borrowed handle to the caller's open transaction. The caller owns the connection and the
// transaction; spool only runs its INSERT on it.
class TxRef {
 public:
  enum class Kind { kSqlite, kPostgres };
  Kind kind() const { return kind_; }
  void* handle() const { return handle_; }

 private:
  friend TxRef SqliteTx(sqlite3* db);
  friend TxRef PostgresTx(pg_conn* conn);
  TxRef(Kind kind, void* handle) : kind_(kind), handle_(handle) {}
  Kind kind_{};
  void* handle_;
};

// `db` must be a connection to the same database file as the client, inside BEGIN ... COMMIT
// (calls given a connection outside a transaction, or on another file, fail with
// InvalidArgument). Begin it with BEGIN IMMEDIATE: a plain BEGIN whose transaction read before
// another connection wrote cannot write any more, and the insert fails with Retryable
// (SQLITE_BUSY_SNAPSHOT): roll back and run the transaction again.
inline TxRef SqliteTx(sqlite3* db) { return TxRef(TxRef::Kind::kSqlite, db); }
// `conn` must be connected to the client's database, inside BEGIN ... COMMIT (calls given one
// outside a transaction, or in a failed one, fail with InvalidArgument).
inline TxRef PostgresTx(pg_conn* conn) { return TxRef(TxRef::Kind::kPostgres, conn); }

// One job to insert: kind, args as JSON text, options.
struct InsertParams {
  std::string kind{};
  std::string args = "{}";
  InsertOptions options{};

  template <JobArgs A>
  static InsertParams From(const A& args, InsertOptions options = {}) {
    return InsertParams{std::string(A::kKind), nlohmann::json(args).dump(), std::move(options)};
  }
};

struct InsertResult {
  JobRow job{};
  // True when a unique job with the same key already existed and was returned instead.
  bool duplicate = false;
};

// Something that happened to a job or queue, delivered to subscribers after it is written.
struct Event {
  enum class Kind {
    kJobCompleted,
    kJobFailed,     // an attempt failed; the job is retryable
    kJobDiscarded,  // an attempt failed and no attempts are left (or the kind is unknown)
    kJobSnoozed,
    kJobCancelled,
    // A queue paused or resumed by this client, when its state changed (a pause of a paused
    // queue is none); other processes' pauses are not events here.
    kQueuePaused,
    kQueueResumed,
  };
  Kind kind{};
  JobRow job{};         // job events: the row when the worker finished, with the new state
  Duration run_time{};  // job events: how long Work ran
  std::string queue{};  // the job's queue, or the queue paused or resumed
};

// A queue as stored: its pause state and how many jobs it has in each state.
struct QueueInfo {
  std::string name{};
  std::optional<TimePoint> paused_at{};
  std::map<JobState, int64_t> counts{};
};

// The leader lease: which client runs maintenance and periodic jobs, and until when at least.
struct LeaderInfo {
  std::string leader_id{};  // the client's id (ClientOptions::client_id)
  TimePoint elected_at{};
  TimePoint expires_at{};  // renewed every leader_ttl / 3 while the leader runs
};

// Builds a periodic job from typed args.
template <JobArgs A>
PeriodicJob MakePeriodicJob(std::string name, std::string schedule, const A& args,
                            InsertOptions options = {}) {
  PeriodicJob p;
  p.name = std::move(name);
  p.schedule = std::move(schedule);
  p.kind = std::string(A::kKind);
  p.args = nlohmann::json(args).dump();
  p.options = std::move(options);
  return p;
}

std::string_view EventKindName(Event::Kind kind);

struct JobListParams {
  std::vector<JobState> states{};  // empty: any
  std::string queue{};             // empty: any
  std::string kind{};              // empty: any
  int64_t after_id = 0;            // only ids greater than this (the cursor of an ascending list)
  int64_t before_id = 0;           // only ids less than this (of a newest_first list); 0: any
  bool newest_first = false;       // by id descending instead of ascending
  int limit = 100;
};

// The job queue: inserts jobs into the database and, once started, works the configured queues
// with a pool of threads. All methods are thread safe. Destroying a started client stops it
// (soft, then hard after ClientOptions-independent 5 s); call Stop to choose the timeout.
class Client {
 public:
  // Opens the database at `database_url` ("sqlite:///abs/app.db", "sqlite://relative.db",
  // "postgres://..."), checks the schema version and validates the options and workers.
  // Errors: InvalidArgument (bad option, url or worker set), FailedPrecondition (schema too old or
  // too new; the message names the command that fixes it), ConnectionLost (cannot open).
  static Result<std::unique_ptr<Client>> Open(std::string_view database_url, ClientOptions options,
                                              Workers workers = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Starts fetching and working jobs of the configured queues. FailedPrecondition if already
  // started or stopped, if ClientOptions.queues is empty (an insert-only client, which needs no
  // Start), or if the system refuses a thread (the client is then stopped).
  Status Start();
  // Soft stop: no new fetches; running jobs finish. When `timeout` passes, running jobs' contexts
  // are cancelled (hard stop) and Stop waits for them to return. All finished outcomes are
  // written before Stop returns, unless the database stalls: 10 s past the timeout the
  // statements still running are cancelled (PostgreSQL) and unwritten outcomes are left to the
  // rescuer. SQLite statements cannot be cancelled: there a stalled write ends once it has waited
  // out ClientOptions.sqlite.busy_timeout (5 s by default), which may come on top. Idempotent (a
  // later or concurrent call waits for the first and returns its result); safe before Start. A
  // timeout over kMaxDelay is kMaxDelay. FailedPrecondition from a job's Work or an event
  // subscriber, where waiting for the jobs would wait for itself.
  Status Stop(Duration timeout);
  // Hard stop at once: cancels running jobs' contexts, waits for them, writes outcomes; also
  // during a Stop in progress on another thread, which it turns into a hard stop. Refused where
  // Stop is.
  Status StopAndCancel();
  // Turns a Stop in progress on another thread into a hard stop now (a second Ctrl-C): stops
  // fetching, cancels running jobs' contexts and hands back claimed jobs that have not started,
  // as when Stop's timeout passes. Safe from any thread; Stop must follow if none is in progress.
  void CancelRunningJobs();

  // Inserts one job. InvalidArgument for bad options or args that are not a JSON object. The job
  // comes back running (attempt 1) when this client claimed it for a free worker as it was
  // inserted (ClientOptions::claim_on_insert); InsertMany likewise, InsertManyFast and the Tx
  // variants never.
  template <JobArgs A>
  Result<InsertResult> Insert(const A& args, InsertOptions options = {}) {
    return InsertRaw(InsertParams::From(args, std::move(options)));
  }
  Result<InsertResult> InsertRaw(InsertParams params);
  // OK when this client's worker for `kind` can run `args_json`, or when it has no worker for
  // `kind` (another process may work it); InvalidArgument saying why otherwise. For untyped args
  // (a request body, a command-line flag) to be refused before the insert rather than fail every
  // attempt. Inserts do not call it: typed Insert cannot produce args its worker refuses.
  Status CheckArgs(std::string_view kind, std::string_view args_json) const;
  // Inserts many jobs in as few statements as possible; all or none.
  Result<std::vector<InsertResult>> InsertMany(std::vector<InsertParams> params);
  // Like InsertMany but returns only the number inserted: the fastest path for bulk loads.
  Result<int64_t> InsertManyFast(std::vector<InsertParams> params);

  // Inserts inside the caller's open transaction: the job exists only if the caller commits.
  template <JobArgs A>
  Result<InsertResult> InsertTx(TxRef tx, const A& args, InsertOptions options = {}) {
    return InsertRawTx(tx, InsertParams::From(args, std::move(options)));
  }
  Result<InsertResult> InsertRawTx(TxRef tx, InsertParams params);
  Result<std::vector<InsertResult>> InsertManyTx(TxRef tx, std::vector<InsertParams> params);

  // NotFound if there is no job with this id.
  Result<JobRow> JobGet(int64_t id);
  // Jobs ordered by id, filtered; use the last id as after_id for the next page. A row that cannot
  // be read (edited by hand) comes back with only its id set and an empty kind: JobGet names what
  // is wrong with it, JobDelete removes it.
  Result<std::vector<JobRow>> JobList(const JobListParams& params);
  // Number of jobs in each state (states with none are absent). Empty queue: all queues.
  Result<std::map<JobState, int64_t>> JobCountByState(std::string_view queue = {});

  // Cancels a job. Not yet running: cancelled at once. Running: its context is cancelled (at once
  // on this client, within the poll interval on another) and it ends cancelled unless it
  // completes first. Final: returned unchanged. NotFound naming the id.
  Result<JobRow> JobCancel(int64_t id);
  // Makes a job that is not running available now; attempts already used are kept (max_attempts
  // grows by one if they are used up). FailedPrecondition for a running job, for one that has
  // used kMaxMaxAttempts attempts, and for a unique job whose key another job now holds in one of
  // its states (the message names that job).
  Result<JobRow> JobRetry(int64_t id);
  // Deletes a job that is not running and returns it. FailedPrecondition for a running job. A
  // row that cannot be read (edited by hand, or of an altered column) is deleted all the same and
  // comes back with only its id set (kind empty).
  Result<JobRow> JobDelete(int64_t id);

  // Pauses a queue in every process (no new fetches; running jobs finish) until resumed.
  Status QueuePause(std::string_view name);
  Status QueueResume(std::string_view name);
  // Every queue with jobs, a pause record, or a running client working it, by name.
  Result<std::vector<QueueInfo>> QueueList();
  // Since when the queue is paused; nullopt when it is not. Cheap on any table size (QueueList
  // counts every job). InvalidArgument for a name no queue can have.
  Result<std::optional<TimePoint>> QueuePausedAt(std::string_view name);
  // Whether QueueList would list the queue (a pause record, a running client working it, or a
  // job in it), without counting its jobs: cheap unless nothing but its jobs names it.
  Result<bool> QueueKnown(std::string_view name);
  // True while this client holds the leader lease (runs maintenance and periodic jobs).
  bool IsLeader() const;
  // The lease as stored, whichever client holds it; nullopt when none is current (no client
  // runs, or the last leader stopped or died and no other has taken over yet).
  Result<std::optional<LeaderInfo>> Leader();

  // Calls `fn` after each job outcome is written (and on queue pause/resume), on a client
  // thread: keep it short. It may call the client, Subscribe and Unsubscribe; Stop from it is
  // refused (FailedPrecondition). What it throws is logged. Returns an id for Unsubscribe.
  int Subscribe(std::function<void(const Event&)> fn);
  // Once it returns, the subscriber is not running (unless this is called from it) and is not
  // called again.
  void Unsubscribe(int id);

  const std::string& client_id() const;
  const ClientOptions& options() const;
  // "sqlite" or "postgres".
  std::string_view driver_name() const;

  class Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_{};
};

// The schema version this build of spool needs, and the migrations it knows, for a driver.
struct MigrationInfo {
  int version{};
  std::string name{};
  bool applied{};
  bool known{true};  // false: a version a newer spool recorded, listed last
};
// Applies (up) or reverts (down) migrations of spool's tables at `database_url`.
// up: to the newest version (or `target`). down: one step (or to `target`; 0 removes all).
// Both refuse (FailedPrecondition, nothing changed) a schema newer than this build knows. Only up
// creates a missing SQLite file (down and status: FailedPrecondition naming the path). Down checks
// nothing else: `spool migration down` is the command that refuses while clients run or jobs
// are unfinished.
Status MigrateUp(std::string_view database_url, std::optional<int> target = std::nullopt);
Status MigrateDown(std::string_view database_url, std::optional<int> target = std::nullopt);
Result<std::vector<MigrationInfo>> MigrationStatus(std::string_view database_url);
// `database_url` as it may be shown or logged: postgres://user:secret@host/db ->
// postgres://user@host/db, and a password=... query parameter dropped. Other URLs unchanged.
std::string UrlWithoutPassword(std::string_view database_url);
// How a message about an unsupported url names it: its scheme ("\"mysql:...\""), or "(not a
// url)" when it has none, as a key=value connection string: never the rest, which may hold a
// password.
std::string UrlSchemeForMessage(std::string_view database_url);

// The DDL of spool's migrations for a driver ("sqlite" or "postgres"), for generators.
Result<std::vector<std::pair<std::string, std::string>>> MigrationSql(std::string_view driver,
                                                                      bool up);

}  // namespace spool
