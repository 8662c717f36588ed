#pragma once

#include <any>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "spool/clock.h"
#include "spool/job.h"

namespace spool {

inline constexpr std::string_view kDefaultQueue = "default";
inline constexpr int kDefaultMaxAttempts = 25;
// The most attempts a job may have (PostgreSQL keeps the count in a smallint).
inline constexpr int kMaxMaxAttempts = 32'767;
inline constexpr int kDefaultPriority = 1;
inline constexpr int kMinPriority = 1;  // highest
inline constexpr int kMaxPriority = 4;  // lowest
// The longest tag, in bytes (InsertOptions::tags).
inline constexpr size_t kMaxTagLength = 255;
// The longest delay spool counts: ClientOptions durations above it are refused, and a longer
// timeout, retry delay or snooze a worker or retry policy returns (or a Stop timeout) is
// shortened to it, so no time overflows.
inline constexpr Duration kMaxDelay = std::chrono::days(36'600);  // 100 years

// Makes a job unique: while a job with the same key is in one of `by_states`, inserting another
// returns the existing job (InsertResult::duplicate) instead. The key is always the kind plus
// whichever of args, period and queue are selected. Enforced by a unique index, so racing
// inserts from several processes cannot both succeed.
struct UniqueOptions {
  // Jobs with equal args are duplicates. Default: false.
  bool by_args = false;
  // Only these top-level args fields are compared; empty compares all. REQUIRES: by_args, and
  // each field present in the args' JSON (else the insert is refused with InvalidArgument).
  std::vector<std::string> by_args_fields{};
  // Jobs whose scheduled_at falls in the same period (e.g. 1h: one per hour, aligned to the
  // Unix epoch) are duplicates. Default: zero, any time.
  Duration by_period = Duration::zero();
  // Jobs in the same queue only. Default: false (any queue).
  bool by_queue = false;
  // States in which an existing job blocks a new one. Must include every non-final state
  // (available, pending, running, retryable, scheduled) so a job cannot collide with its
  // duplicate as it moves; add completed, cancelled or discarded to block those too.
  // Default: the non-final states.
  std::vector<JobState> by_states{JobState::kAvailable, JobState::kPending, JobState::kRunning,
                                  JobState::kRetryable, JobState::kScheduled};
};

// Options for one insert. Every field has a default, so `{}` inserts into "default" now.
struct InsertOptions {
  // Queue to put the job in: 1-128 characters of [A-Za-z0-9_.:-]. Default: "default".
  std::string queue = std::string(kDefaultQueue);
  // 1 (highest) to 4 (lowest); within a queue jobs run by priority, then scheduled_at, then id.
  // Default: 1.
  int priority = kDefaultPriority;
  // Attempts before the job is discarded: 1 to kMaxMaxAttempts. Default: 25.
  int max_attempts = kDefaultMaxAttempts;
  // Run no earlier than this. Default: now (the job is available at once).
  std::optional<TimePoint> scheduled_at{};
  // Free-form labels, each 1 to kMaxTagLength bytes with no commas. Default: none.
  std::vector<std::string> tags{};
  // A JSON object stored with the job. Default: "{}". spool writes two keys in it, so leave them
  // to spool: "snoozes", the count of the job's snoozes (ctx.snoozes()), grown by one at each
  // snooze; and "cancel_requested_at", the time (RFC 3339) an admin asked to cancel the job while
  // it ran, removed again by a retry. A job that runs with "cancel_requested_at" set is
  // cancelled as if by an admin.
  std::string metadata = "{}";
  // Insert on hold (state pending): the job runs only once something moves it to available.
  // Default: false.
  bool pending = false;
  // Set to make the job unique. Default: not unique.
  std::optional<UniqueOptions> unique{};
};

// Computes how long a failed job waits before its next attempt.
// Implementations must be thread safe.
class RetryPolicy {
 public:
  virtual ~RetryPolicy() = default;
  // `job.attempt` is the attempt that just failed (1 for the first run). A negative delay is
  // taken as 0, one over kMaxDelay as kMaxDelay; if it throws, DefaultRetryPolicy's is used.
  virtual Duration NextRetry(const JobRow& job) const = 0;
};

// attempt^4 seconds with +-10% jitter: 1s, 16s, 81s, 4m16s, ... about 3 weeks over 25 attempts.
class DefaultRetryPolicy final : public RetryPolicy {
 public:
  Duration NextRetry(const JobRow& job) const override;
};

enum class LogLevel { kDebug, kInfo, kWarn, kError };

// Receives the client's log lines. Called from background threads: must be thread safe. What it
// throws is dropped (with the line).
using Logger = std::function<void(LogLevel, std::string_view message)>;

// A logger that writes lines of `min_level` and above to stderr, each with its UTC time:
// "2026-12-04T21:50:01.123Z spool warning: ...". The client's default is StderrLogger(kWarn).
Logger StderrLogger(LogLevel min_level);
// "debug", "info", "warn" (or "warning") or "error", in any case; nullopt for anything else.
std::optional<LogLevel> ParseLogLevel(std::string_view name);

// A job enqueued on a cron schedule by whichever client is the leader, each tick exactly once
// across all processes. The last enqueued tick is stored in the database under `name`, so a
// restart neither repeats a tick nor silently drops one (see `missed`).
struct PeriodicJob {
  // Identifies the schedule across restarts and processes; unique within ClientOptions.
  std::string name{};
  // Cron: 5 fields (minute hour day-of-month month day-of-week) with ranges, steps, lists and
  // names (MON, JAN), or @hourly/@daily/@weekly/@monthly/@yearly.
  std::string schedule{};
  // IANA time zone the schedule is read in, e.g. "Europe/Kyiv". Default: UTC. Daylight saving
  // time, as in cron: a wall-clock time skipped by the spring-forward gap fires once right after
  // it; one that occurs twice at fall-back fires once, at its first occurrence. A schedule whose
  // hour field matches every hour ("*/15 * * * *") follows the clock instead: it skips the gap
  // and fires again through the repeated hour.
  std::string time_zone{};
  std::string kind{};
  std::string args = "{}";
  // Applied to each tick's job. With `unique`, a tick whose job would duplicate one still in
  // the key's states is skipped (logged): by_args keeps runs from overlapping. `pending` and
  // `scheduled_at` are refused at Client::Open (each tick's job is available at its tick).
  InsertOptions options{};
  // Ticks that passed while no leader was running (all processes down): run once at start, or
  // skip them. Default: run once.
  enum class Missed { kRunOnce, kSkip };
  Missed missed = Missed::kRunOnce;
  // Also enqueue once when the schedule is first seen (by name, in this database), instead of
  // waiting for the first tick. Not at every start, as River's RunOnStart: a restart keeps the
  // stored last tick.
  bool run_on_start = false;
};

// How long finished jobs are kept before the cleaner deletes them: up to kMaxDelay, or negative
// to keep them for ever.
struct RetentionOptions {
  Duration completed = std::chrono::hours(24);
  Duration cancelled = std::chrono::hours(24);
  Duration discarded = std::chrono::hours(24 * 7);
};

// Per-queue settings.
struct QueueConfig {
  // Jobs of this queue that may run at once; 1-10000. Default: 100.
  int max_workers = 100;
};

// SQLite-only settings; ignored by other drivers.
struct SqliteOptions {
  // synchronous=FULL makes every commit durable against power loss at the cost of an fsync per
  // commit. The default NORMAL (in WAL mode) can lose the last commits on power loss, never on
  // a process crash, and never corrupts the database.
  bool synchronous_full = false;
  // How long a writer waits on a lock held by another process before failing. Default: 5s.
  Duration busy_timeout = std::chrono::seconds(5);
};

// PostgreSQL-only settings; ignored by other drivers.
struct PostgresOptions {
  // Whether a claim (a job starting) and an outcome (completed, retryable, snoozed, cancelled,
  // discarded) wait for PostgreSQL's WAL flush before the client goes on. Default false: they
  // commit with synchronous_commit = off, which about halves pickup latency and raises
  // throughput (docs/benchmarks.md). A PostgreSQL crash (never a client crash) can then lose the
  // last few hundred milliseconds of them: those jobs are claimed again, or rescued, and run again,
  // which at-least-once delivery already allows. Inserts, and everything else, always wait for the
  // flush. true: claims and outcomes wait too (the server's synchronous_commit applies).
  bool synchronous_state_commits = false;
};

struct ClientOptions {
  // Queues this client works, by name. Empty: the client only inserts (no worker pool).
  std::map<std::string, QueueConfig> queues{};
  // How often to look for jobs inserted by other processes, and the fallback fetch period.
  // 1ms-1h. Default: 1s.
  Duration poll_interval = std::chrono::seconds(1);
  // How often due scheduled and retryable jobs are made available. 1ms-1h. Default: 1s.
  Duration schedule_interval = std::chrono::seconds(1);
  // Time limit for one attempt of a job when its worker sets none; 0 means none. When it passes
  // the job's context is cancelled and the attempt fails with a timeout error. Default: 0.
  Duration job_timeout = Duration::zero();
  // Backoff for failed jobs whose worker does not override NextRetry. Default: attempt^4 s +-10%.
  std::shared_ptr<const RetryPolicy> retry_policy{};
  // Where log lines go. Default: warnings and errors to stderr. Each failed or discarded attempt
  // is a warning with its error, a cancel an info line, a snooze a debug line; completions are not
  // logged (subscribe to events for them).
  Logger logger{};
  // Source of time. Default: the system clock.
  std::shared_ptr<const Clock> clock{};
  // Identifies this client in attempted_by and in logs. Default: "<hostname>-<pid>-<random>".
  // A fixed id (a host or pod name) must not be used by two running clients at once (each logs
  // an error once it sees the other's heartbeat); a client started under the id of one that
  // ended takes its place, and the jobs the ended one left running are rescued at the leader's
  // next rescue pass.
  std::string client_id{};
  // Periodic (cron) jobs; names must be unique. Default: none. Checked at Open; enqueued by the
  // leader, which is a started client: an insert-only client (no queues) cannot Start, so it
  // never enqueues its own.
  std::vector<PeriodicJob> periodic_jobs{};
  // The application's own objects its workers need (a connection pool, an HTTP client), as a
  // std::shared_ptr<T>: Work reaches them as ctx.App<T>(), so workers stay default-constructible
  // (the generated jobs/registry.cc makes them). Default: none.
  std::any app{};
  // How often this client records that it is alive. Default: 5s.
  Duration heartbeat_interval = std::chrono::seconds(5);
  // A client silent this long is dead: the leader moves its running jobs back to retryable.
  // Must be longer than heartbeat_interval. Default: 30s.
  Duration client_stale_after = std::chrono::seconds(30);
  // The leader's lease; when the leader dies another client takes over within it. Default: 15s.
  Duration leader_ttl = std::chrono::seconds(15);
  // How often the leader looks for stuck jobs. Default: 5s.
  Duration rescue_interval = std::chrono::seconds(5);
  // A job without a timeout (no Worker::Timeout, job_timeout 0) running longer than this is
  // rescued even if its client is alive; a job with one is rescued past timeout + margin below,
  // however long that is. Default: 1h.
  Duration rescue_after = std::chrono::hours(1);
  // A job running past its per-attempt timeout by more than this is rescued. Default: 1min.
  Duration rescue_timeout_margin = std::chrono::minutes(1);
  // How often the leader deletes finalized jobs older than `retention`. Default: 30s.
  Duration clean_interval = std::chrono::seconds(30);
  // How long finalized jobs are kept, by state. Default: completed and cancelled 24h,
  // discarded 7 days.
  RetentionOptions retention{};
  // Never wait on database notifications (PostgreSQL LISTEN/NOTIFY): other processes' inserts,
  // cancels and resumes are found by polling every poll_interval instead. Needed behind
  // PgBouncer in transaction mode, where LISTEN does not work; lower poll_interval to bound
  // pickup latency. Inserts in this process still wake its workers at once. Default: false.
  bool poll_only = false;
  // A job inserted by this client (not inside the caller's transaction) into a queue it works,
  // while a worker of that queue is free and no earlier job of the queue is known to wait, is
  // claimed in the insert itself: Insert returns it running and a worker starts it at once,
  // without a fetch. A job from another process that this client has not yet heard of may
  // then start after it. false: every job waits for a fetch. Default: true.
  bool claim_on_insert = true;
  // Apply missing migrations at Open instead of refusing to start. Default: false.
  bool auto_migrate = false;
  SqliteOptions sqlite{};
  PostgresOptions postgres{};
};

// Returns InvalidArgument naming the first bad field, or OK.
Status ValidateInsertOptions(const InsertOptions& opts);
// The checks of InsertOptions.unique: InvalidArgument naming the bad field, or OK.
Status ValidateUniqueOptions(const UniqueOptions& opts);
Status ValidateClientOptions(const ClientOptions& opts);
// Queue names: 1-128 characters of [A-Za-z0-9_.:-].
Status ValidateQueueName(std::string_view name);
// Job kinds: 1-255 bytes, no control characters (a newline in a kind breaks every listing).
// Workers::Add and `spool jobs add` check it.
Status ValidateKind(std::string_view kind);
// The deepest nesting of arrays and objects taken in a job's args and metadata: deeper JSON is
// refused at insert, and a worker fails an attempt whose args from the table nest deeper (JSON
// libraries print and copy a document one call per level, so tens of thousands of levels
// overflow a thread's stack).
inline constexpr int kMaxJsonDepth = 512;
// InvalidArgument naming `what` ("args") when the JSON text `json` nests arrays and objects
// deeper than kMaxJsonDepth. Does not check that it is valid JSON.
Status ValidateJsonDepth(std::string_view json, std::string_view what);
// What an insert checks of args and metadata text beyond being a JSON object: ValidateJsonDepth,
// and no \u0000 character, which PostgreSQL's jsonb cannot store (refused on SQLite too, so an
// app tested there behaves the same). InvalidArgument naming `what`.
Status ValidateArgsText(std::string_view json, std::string_view what);

}  // namespace spool
