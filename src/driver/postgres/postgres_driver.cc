#include "driver/postgres/postgres_driver.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "driver/postgres/pg_binary.h"
#include "driver/postgres/pg_conn.h"
#include "driver/postgres/postgres_migrations.h"
#include "driver/row_json.h"
#include "driver/state_codes.h"

namespace spool::internal {
namespace {

using pg::Conn;
using pg::Param;
using pg::PgResult;
using SteadyClock = std::chrono::steady_clock;

// Connections of the shared executor. Enough for a producer per queue, the completer and a few
// inserting threads; more would only contend on the same rows.
constexpr int kMaxPoolConnections = 8;
// How long a call waits for a pooled connection before giving up with Retryable.
constexpr auto kPoolWait = std::chrono::seconds(30);
// Rows per INSERT statement: each column is one array parameter, so this only bounds memory.
constexpr size_t kInsertChunk = 5000;
// Rows formatted per piece of COPY data: small enough that the server parses one piece while the
// next is formatted.
constexpr size_t kCopyChunk = 500;
constexpr auto kMinBackoff = std::chrono::milliseconds(50);
constexpr auto kMaxBackoff = std::chrono::seconds(2);

// TimePoint <-> timestamptz, exactly: microseconds travel as int8 and EXTRACT returns numeric
// (PostgreSQL >= 14). int8 * interval goes through float8, exact only below 2^53, so whole
// seconds and the microsecond remainder are added separately. Job rows skip EXTRACT: they come
// back in binary, where a timestamptz is its microseconds (pg_binary.h).
// clang-format off
#define SPOOL_TS(p) "(timestamptz 'epoch' + (" p "::int8 / 1000000) * interval '1 second'" \
                    " + (" p "::int8 % 1000000) * interval '1 microsecond')"
// clang-format on
#define SPOOL_US(c) "(extract(epoch FROM " c ") * 1000000)::int8"

// A job row's columns, read in binary format (ReadRow): as stored, no conversions on the server.
constexpr const char* kJobColumns =
    "j.id, j.state, j.attempt, j.max_attempts, j.attempted_at, j.attempted_by, j.created_at, "
    "j.scheduled_at, j.finalized_at, j.priority, j.queue, j.kind, j.args, j.metadata, j.tags, "
    "j.errors";
constexpr int kJobColumnCount = 16;

std::string Sql(std::string_view before, std::string_view after = {}) {
  return fmt::format("{}{}{}", before, kJobColumns, after);
}

const std::string& InsertSql(bool returning) {
  static const std::string* const kReturning = new std::string(
      Sql("INSERT INTO spool_job AS j (kind, args, metadata, queue, priority, max_attempts, state, "
          "scheduled_at, tags, created_at) "
          "SELECT u.kind, u.args::jsonb, u.metadata::jsonb, u.queue, u.priority, u.max_attempts, "
          "u.state, " SPOOL_TS("u.sched") ", u.tags::text[], " SPOOL_TS(
              "$10") " "
                     "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int2[], "
                     "$6::int2[], "
                     "$7::int2[], $8::int8[], $9::text[]) WITH ORDINALITY "
                     "AS u(kind, args, metadata, queue, priority, max_attempts, state, sched, "
                     "tags, ord) "
                     "ORDER BY u.ord RETURNING "));
  static const std::string* const kFast =
      new std::string(kReturning->substr(0, kReturning->find(" RETURNING ")));
  return returning ? *kReturning : *kFast;
}

// InsertSql(true) with claims ($11: claim each row, $12: the client claiming): a row to claim
// whose queue is not paused goes in running, as FetchSql would leave it. The pause is a join, not
// a subquery in each CASE: the planner ran such a subquery once per CASE, and the statement took
// half as long again as a plain insert (pgbench, one row).
const std::string& InsertClaimSql() {
#define SPOOL_CLAIMED "u.claim AND q.name IS NULL"
  // clang-format off
  static const std::string* const kSql = new std::string(Sql(
      "INSERT INTO spool_job AS j (kind, args, metadata, queue, priority, max_attempts, state, "
      "scheduled_at, tags, created_at, attempt, attempted_at, attempted_by) "
      "SELECT u.kind, u.args::jsonb, u.metadata::jsonb, u.queue, u.priority, u.max_attempts, "
      "CASE WHEN " SPOOL_CLAIMED " THEN " SPOOL_RUNNING " ELSE u.state END, " SPOOL_TS("u.sched") ", "
      "u.tags::text[], " SPOOL_TS("$10") ", CASE WHEN " SPOOL_CLAIMED " THEN 1 ELSE 0 END, "
      "CASE WHEN " SPOOL_CLAIMED " THEN " SPOOL_TS("$10") " END, "
      "CASE WHEN " SPOOL_CLAIMED " THEN ARRAY[$12::text] ELSE '{}'::text[] END "
      "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::int2[], "
      "$7::int2[], $8::int8[], $9::text[], $11::bool[]) WITH ORDINALITY "
      "AS u(kind, args, metadata, queue, priority, max_attempts, state, sched, tags, claim, ord) "
      "LEFT JOIN spool_queue AS q ON q.name = u.queue AND q.paused_at IS NOT NULL "
      "ORDER BY u.ord RETURNING "));
  // clang-format on
#undef SPOOL_CLAIMED
  return *kSql;
}

// The statements that pick jobs by a locking subquery (claim, scheduler, cleaner) update or delete
// them through `ctid = ANY(ARRAY(subquery))`, never by joining the subquery: the planner estimates
// a LIMIT it cannot see (a generic plan's parameter) as a tenth of the matching rows, and with a
// backlog it then joined them to the whole table by a hash join over a sequential scan, or a merge
// join along the primary key from its first id. A claim of 94 jobs took 272 ms that way on a table
// of a million finished jobs and 450,000 waiting ones, against 1.2 ms as index probes. A list of
// row addresses is read by a TID scan whatever the statistics say, and costs less than probing
// the primary key by id (a claim of 100: 921-934 buffers against 1,025-1,049, and 1-16% less
// time in pgbench; docs/benchmarks.md). The subquery has locked each row's newest version; one
// that another transaction changed after this statement's snapshot (and that still matched) is
// not visible to it, so it is left as it is this time, never changed twice or lost.
#define SPOOL_ROWS_OF(subquery) "j.ctid = ANY(ARRAY(" subquery "))"

// With `after`, $5, $6 and $7 are its priority, scheduled_at and id: a row comparison the index on
// (hashtextextended(queue, 0), priority, scheduled_at, id) starts its scan after. The index finds
// the queue by its hash (schema version 2); the name is rechecked, so a collision costs a skipped
// entry, never another queue's job.
std::string MakeFetchSql(bool after) {
  // clang-format off
  const std::string pick =
      "SELECT ctid FROM spool_job WHERE state = " SPOOL_AVAILABLE " "
      "AND hashtextextended(queue, 0) = hashtextextended($1, 0) AND queue = $1 "
      // Uncorrelated, so evaluated once per fetch (a one-time filter), not per row.
      "AND NOT EXISTS (SELECT 1 FROM spool_queue WHERE name = $1 AND paused_at IS NOT NULL) "
      "AND scheduled_at <= " SPOOL_TS("$2") " " +
      std::string(after ? "AND (priority, scheduled_at, id) > "
                          "($5::int2, " SPOOL_TS("$6") ", $7::int8) " : "") +
      "ORDER BY priority, scheduled_at, id LIMIT $3 FOR UPDATE SKIP LOCKED";
  return Sql(
      "UPDATE spool_job AS j SET state = " SPOOL_RUNNING ", attempt = j.attempt + 1, "
      // A subquery is evaluated once: the generic plan would compute the time again for
      // every row (800 instructions a row, 1% of a claim; callgrind).
      "attempted_at = (SELECT " SPOOL_TS("$2") "), "
      // attempted_by keeps the last 100 client ids, like the SQLite driver.
      "attempted_by = array_append(CASE WHEN cardinality(j.attempted_by) < 100 "
      "THEN j.attempted_by ELSE j.attempted_by[cardinality(j.attempted_by) - 98:] END, "
      // SPOOL_ROWS_OF, spelled out: the subquery is built at run time.
      "$4::text) WHERE j.ctid = ANY(ARRAY(" + pick + ")) RETURNING ",
      "");
  // clang-format on
}

const std::string& FetchSql(bool after) {
  static const std::string* const kFromStart = new std::string(MakeFetchSql(false));
  static const std::string* const kAfter = new std::string(MakeFetchSql(true));
  return after ? *kAfter : *kFromStart;
}

// `state = (SELECT 2)` instead of `state = 2` (running) where rows are looked up by
// id: the planner cannot prove from a subquery's value that the partial index on running jobs
// covers the rows, so it probes the primary key for each id. Given the constant, whenever the
// table's statistics had last seen few running jobs it chose to scan that whole index instead,
// which under load holds every running job and a dead entry for each job completed since the last
// vacuum: outcome writes of 5,000 jobs took 12-14 s each on a table of 1.9 million rows.
#define SPOOL_RUNNING_OPAQUE "(SELECT " SPOOL_RUNNING ")"

// An outcome that an admin's cancel request turns into a cancel (JobSetStateParams::
// if_cancel_requested, sent as u.cerr); the row's lock, taken by the UPDATE, keeps a request
// from coming between.
#define SPOOL_CANCEL_WINS "(u.cerr IS NOT NULL AND jsonb_exists(j.metadata, 'cancel_requested_at'))"

const std::string& SetStateSql() {
  static const std::string* const kSql = new std::string(
    "UPDATE spool_job AS j SET "
    "state = CASE WHEN " SPOOL_CANCEL_WINS " THEN " SPOOL_CANCELLED " ELSE u.state END, "
    "finalized_at = CASE WHEN " SPOOL_CANCEL_WINS " THEN " SPOOL_TS("(u.cerr->>'at')") " "
    "WHEN u.state IN " SPOOL_FINAL_STATES " THEN " SPOOL_TS("u.at") " ELSE NULL END, "
    "scheduled_at = CASE WHEN " SPOOL_CANCEL_WINS " THEN j.scheduled_at "
    "WHEN u.state IN (" SPOOL_RETRYABLE ", " SPOOL_SCHEDULED ") "
    "THEN " SPOOL_TS("u.at") " ELSE j.scheduled_at END, "
    "attempt = CASE WHEN u.state = " SPOOL_SCHEDULED " AND NOT " SPOOL_CANCEL_WINS " "
    "THEN greatest(j.attempt - 1, 0) ELSE j.attempt END, "
    "errors = CASE WHEN " SPOOL_CANCEL_WINS " THEN j.errors || jsonb_build_array(u.cerr) "
    "WHEN u.err IS NULL THEN j.errors ELSE j.errors || jsonb_build_array(u.err) END, "
    // Metadata edited by hand into something other than an object is left alone.
    "metadata = CASE WHEN u.snooze AND NOT " SPOOL_CANCEL_WINS " "
    "AND jsonb_typeof(j.metadata) = 'object' "
    "THEN jsonb_set(j.metadata, '{snoozes}', to_jsonb(CASE "
    "WHEN jsonb_typeof(j.metadata->'snoozes') = 'number' "
    "AND (j.metadata->>'snoozes') ~ '^-?[0-9]{1,18}$' "
    "THEN (j.metadata->>'snoozes')::int8 + 1 ELSE 1 END)) ELSE j.metadata END "
    "FROM (SELECT DISTINCT ON (id) * FROM unnest($1::int8[], $2::int2[], $3::int8[], "
    "$4::jsonb[], $5::int4[], $6::bool[], $7::jsonb[], $8::int8[]) "
    "AS x(id, state, at, err, attempt, snooze, cerr, claimed)) AS u "
    "WHERE j.id = u.id AND j.state = " SPOOL_RUNNING_OPAQUE " "
    "AND (u.attempt = 0 OR j.attempt = u.attempt) "
    "AND (u.claimed IS NULL OR j.attempted_at = " SPOOL_TS("u.claimed") ") "
    "RETURNING j.id, j.state = " SPOOL_CANCELLED " AND u.state <> " SPOOL_CANCELLED);
  return *kSql;
}

// Completed without an error, nearly every outcome: four arrays ($1 ids, $2 times in
// microseconds, $3 attempts or 0, $4 claim times in microseconds or NULL) and two columns set. With
// the general statement's DISTINCT ON (a sort), CASEs and arrays of states and errors, these rows
// took 15-17 us of server time each instead of 10-13 in bench burn-downs (pg_stat_statements).
const std::string& CompleteSql() {
  // clang-format off
  static const std::string* const kSql = new std::string(
    "UPDATE spool_job AS j SET state = " SPOOL_COMPLETED ", finalized_at = " SPOOL_TS("u.at") " "
    "FROM unnest($1::int8[], $2::int8[], $3::int4[], $4::int8[]) AS u(id, at, attempt, claimed) "
    "WHERE j.id = u.id AND j.state = " SPOOL_RUNNING_OPAQUE " "
    "AND (u.attempt = 0 OR j.attempt = u.attempt) "
    "AND (u.claimed IS NULL OR j.attempted_at = " SPOOL_TS("u.claimed") ") RETURNING j.id");
  // clang-format on
  return *kSql;
}

// Settings for a claim or an outcome write that is its own transaction, sent before it in one
// pipeline: one round trip and one implicit transaction, which set_config(..., true) does not
// outlast, so nothing is left on the session (PgBouncer in transaction mode stays safe).
// - plan_cache_mode: PostgreSQL planned these two statements anew on every run (with a LIMIT and
//   arrays it cannot see into, their generic plans look dearer than custom ones), which was about
//   half of a one-job claim's server time; the generic plans are the same index scans.
// - synchronous_commit off unless PostgresOptions::synchronous_state_commits: the commit does not
//   wait for the WAL flush.
const pg::Statement& StateTxSettings(bool async_commit) {
  static const std::string* const kSync =
      new std::string("SELECT set_config('plan_cache_mode', 'force_generic_plan', true)");
  static const std::string* const kAsync =
      new std::string(*kSync + ", set_config('synchronous_commit', 'off', true)");
  static const pg::Statement* const kSyncStatement = new pg::Statement{"spool_state_tx", kSync, {}};
  static const pg::Statement* const kAsyncStatement =
      new pg::Statement{"spool_state_tx_async", kAsync, {}};
  return async_commit ? *kAsyncStatement : *kSyncStatement;
}

// Due jobs are picked from each state alone, then the oldest $2 of both: the partial index on
// (state, scheduled_at) holds each state's jobs in due order, so a batch reads at most $2 entries
// of each. Over both states at once the index order is not the due order, and PostgreSQL sorted
// every due job for each batch: with a million due, a sequential scan and an on-disk sort,
// 0.85-1.09 s a batch of 10,000 against 0.18 s now, moving the rows included (docs/benchmarks.md).
// When both states have more than $2 due jobs, the batch locks up to $2 rows it leaves for the
// next.
#define SPOOL_DUE_OF(state) \
  "SELECT * FROM (SELECT ctid, scheduled_at, id FROM spool_job WHERE state = " state " "        \
  "AND scheduled_at <= " SPOOL_TS("$1") " ORDER BY scheduled_at, id LIMIT $2 FOR UPDATE SKIP " \
  "LOCKED) AS s" state
constexpr const char* kScheduleSql =
    "WITH due AS (" SPOOL_DUE_OF(SPOOL_SCHEDULED) " UNION ALL " SPOOL_DUE_OF(SPOOL_RETRYABLE) "), "
    "moved AS (UPDATE spool_job AS j SET state = " SPOOL_AVAILABLE " WHERE " SPOOL_ROWS_OF(
        "SELECT ctid FROM due ORDER BY scheduled_at, id LIMIT $2") " RETURNING j.queue), "
    // The leader schedules for every node: each queue that got jobs is announced on channel $3
    // in the same transaction (one NOTIFY per queue; a CTE runs only if it is read).
    "notified AS (SELECT pg_notify($3, queue) FROM (SELECT DISTINCT queue FROM moved) AS q) "
    "SELECT count(*)::int8, "
    "coalesce(array_to_json(array_agg(DISTINCT queue ORDER BY queue))::text, '[]'), "
    "(SELECT count(*) FROM notified) FROM moved";

const std::string& GetByIdSql() {
  static const std::string* const kSql =
      new std::string(Sql("SELECT ", " FROM spool_job AS j WHERE j.id = $1"));
  return *kSql;
}

// The admin listing, oldest or newest first (an ORDER BY cannot be a parameter).
const std::string& ListSql(bool newest_first) {
  const auto make = [](const char* order) {
    return new std::string(
        Sql("SELECT ", fmt::format(" FROM spool_job AS j WHERE ($1::int2[] IS NULL OR j.state = "
                                   "ANY($1::int2[])) AND ($2::text = '' OR j.queue = $2::text) AND "
                                   "($3::text = '' OR j.kind = $3::text) AND j.id > $4::int8 AND "
                                   "j.id < $6::int8 ORDER BY j.id {} LIMIT $5::int8",
                                   order)));
  };
  static const std::string* const kAscending = make("ASC");
  static const std::string* const kDescending = make("DESC");
  return newest_first ? *kDescending : *kAscending;
}

constexpr const char* kCountSql =
    "SELECT state, count(*)::int8 FROM spool_job WHERE ($1::text = '' OR queue = $1::text) "
    "GROUP BY state";

// Unique rows: the same insert, arbitrated by the partial unique index. Rows whose key is taken
// are skipped (and read back by UniqueLookupSql); the key and unique_states are returned so the
// caller can tell which inputs were inserted.
const std::string& InsertUniqueSql(bool returning) {
  static const std::string* const kReturning = new std::string(Sql(
      "INSERT INTO spool_job AS j (kind, args, metadata, queue, priority, max_attempts, state, "
      "scheduled_at, tags, created_at, unique_key, unique_states) "
      "SELECT u.kind, u.args::jsonb, u.metadata::jsonb, u.queue, u.priority, u.max_attempts, "
      "u.state, " SPOOL_TS("u.sched") ", u.tags::text[], " SPOOL_TS(
          "$10") ", u.ukey, "
                 "u.ustates "
                 "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int2[], "
                 "$6::int2[], "
                 "$7::int2[], $8::int8[], $9::text[], $11::bytea[], $12::int4[]) WITH ORDINALITY "
                 "AS u(kind, args, metadata, queue, priority, max_attempts, state, sched, tags, "
                 "ukey, "
                 "ustates, ord) "
                 "ORDER BY u.ord ON CONFLICT DO NOTHING RETURNING ",
      ", encode(j.unique_key, 'hex'), j.unique_states"));
  static const std::string* const kFast =
      new std::string(kReturning->substr(0, kReturning->find(" RETURNING ")));
  return returning ? *kReturning : *kFast;
}

// The rows holding `keys` in the unique index (the predicate repeats the index's, so the index
// serves it).
const std::string& UniqueLookupSql() {
  static const std::string* const kSql =
      new std::string(Sql("SELECT ",
                          ", encode(j.unique_key, 'hex') FROM spool_job AS j "
                          "WHERE j.unique_key = ANY($1::bytea[]) AND j.unique_key IS NOT NULL AND "
                          "j.unique_states IS NOT NULL AND (j.unique_states >> j.state) & 1 = 1"));
  return *kSql;
}

// A running job keeps running (its worker is told through metadata, and every process by a
// notification on channel $3 in the same transaction); any other job that is not final is
// cancelled at once.
const std::string& CancelSql() {
  static const std::string* const kSql = new std::string(
      Sql("WITH cancelled AS (UPDATE spool_job AS j SET "
          "state = CASE WHEN j.state = " SPOOL_RUNNING " THEN j.state ELSE " SPOOL_CANCELLED
          " END, "
          "finalized_at = CASE WHEN j.state = " SPOOL_RUNNING " THEN NULL ELSE " SPOOL_TS(
              "$2") " END, "
                    "errors = CASE WHEN j.state = " SPOOL_RUNNING " THEN j.errors ELSE j.errors || "
                    "jsonb_build_array(jsonb_build_object('at', $2::int8, 'attempt', j.attempt, "
                    "'error', "
                    "'cancelled by an admin', 'trace', '')) END, "
                    "metadata = CASE WHEN j.state = " SPOOL_RUNNING " THEN j.metadata || "
                    "jsonb_build_object('cancel_requested_at', $4::text) ELSE j.metadata END "
                    "WHERE j.id = $1 AND j.state NOT IN " SPOOL_FINAL_STATES " "
                    "RETURNING j.*) SELECT ",
          ", CASE WHEN j.state = " SPOOL_RUNNING " THEN pg_notify($3, 'cancel') END "
          "FROM cancelled AS j"));
  return *kSql;
}

// A cancel requested while the job last ran must not cancel its next run.
// The retried job's queue is announced on channel $3 in the same transaction.
const std::string& RetrySql() {
  static const std::string* const kSql = new std::string(
      // A job already available keeps its place in line.
      Sql("WITH retried AS (UPDATE spool_job AS j SET state = " SPOOL_AVAILABLE
          ", scheduled_at = CASE WHEN j.state = " SPOOL_AVAILABLE
          " THEN least(j.scheduled_at, " SPOOL_TS("$2") ") ELSE " SPOOL_TS(
              "$2") " END, "
                    "finalized_at = NULL, max_attempts = CASE WHEN j.attempt >= j.max_attempts "
                    "THEN j.attempt + 1 ELSE j.max_attempts END, "
                    "metadata = j.metadata - 'cancel_requested_at' "
                    "WHERE j.id = $1 AND j.state <> " SPOOL_RUNNING " AND j.attempt < " +
              std::to_string(kMaxMaxAttempts) + " RETURNING j.*) SELECT ",
          ", pg_notify($3, j.queue) FROM retried AS j"));
  return *kSql;
}

// The job other than $1 that holds $1's unique key in one of its states.
const std::string& UniqueHolderSql() {
  static const std::string* const kSql = new std::string(
      Sql("SELECT ",
          " FROM spool_job AS j WHERE j.unique_key = (SELECT unique_key FROM spool_job WHERE id = "
          "$1) AND j.id <> $1 AND j.unique_key IS NOT NULL AND j.unique_states IS NOT NULL AND "
          "(j.unique_states >> j.state) & 1 = 1 LIMIT 1"));
  return *kSql;
}

const std::string& DeleteSql() {
  static const std::string* const kSql = new std::string(Sql(
      "DELETE FROM spool_job AS j WHERE j.id = $1 AND j.state <> " SPOOL_RUNNING " RETURNING "));
  return *kSql;
}

constexpr const char* kCancelRequestedSql =
    "SELECT id FROM spool_job WHERE id = ANY($1::int8[]) AND state = " SPOOL_RUNNING_OPAQUE
    " AND metadata ? 'cancel_requested_at' ORDER BY id";

// The client of a running job is the last entry of attempted_by.
const std::string& StuckSql() {
  static const std::string* const kSql = new std::string(Sql(
      "SELECT ",
      " FROM spool_job AS j WHERE j.state = " SPOOL_RUNNING " AND (j.attempted_at < " SPOOL_TS(
          "$2") " OR NOT EXISTS (SELECT 1 FROM spool_client AS c "
                "WHERE c.id = j.attempted_by[cardinality(j.attempted_by)] "
                "AND c.heartbeat_at >= " SPOOL_TS("$1") " AND c.started_at <= j.attempted_at)) "
                                                        "ORDER BY j.attempted_at, j.id LIMIT $3"));
  return *kSql;
}

constexpr const char* kDeleteFinalizedSql = "DELETE FROM spool_job AS j WHERE " SPOOL_ROWS_OF(
    "SELECT ctid FROM spool_job WHERE state = $1 AND finalized_at < " SPOOL_TS(
        "$2") " ORDER BY finalized_at LIMIT $3 FOR UPDATE SKIP LOCKED");

// One statement, so two electors racing serialise on the row: the second sees the first's lease.
constexpr const char* kLeaderElectSql =
    "INSERT INTO spool_leader AS l (name, leader_id, elected_at, expires_at) "
    "VALUES ('default', $1, " SPOOL_TS("$2") ", " SPOOL_TS(
        "$3") ") "
              "ON CONFLICT (name) DO UPDATE SET leader_id = EXCLUDED.leader_id, "
              "elected_at = CASE WHEN l.leader_id = EXCLUDED.leader_id AND "
              "l.expires_at > EXCLUDED.elected_at THEN l.elected_at ELSE EXCLUDED.elected_at END, "
              "expires_at = EXCLUDED.expires_at "
              "WHERE l.expires_at <= EXCLUDED.elected_at OR l.leader_id = EXCLUDED.leader_id "
              "RETURNING l.leader_id";

constexpr const char* kLeaderReelectSql = "UPDATE spool_leader SET expires_at = " SPOOL_TS(
    "$2") " WHERE name = 'default' AND leader_id = $1";

// NOTIFY through a parameterised statement (a channel is an identifier, so LISTEN/NOTIFY cannot
// take it as a parameter); inside a transaction it is delivered at commit.
pg::Statement NotifyStatement(const std::string& channel, std::string payload) {
  static const std::string* const kSql = new std::string("SELECT pg_notify($1, $2)");
  return {"spool_notify", kSql, {channel, std::move(payload)}};
}

// The payload a client sends on the control channel when its row is first written.
constexpr std::string_view kClientJoinedPayload = "client";

// Which queues another live client works, as of this client's last heartbeat. An insert through
// the pool NOTIFYs only those queues: this process wakes its own producers itself, and the NOTIFY
// added 0.15-0.19 ms to every insert's round trip. Unknown (every queue notified) until the first
// heartbeat, and again from when another client announces itself until the next heartbeat.
// Thread safe.
class PeerQueues {
 public:
  bool MayBeWorkedElsewhere(std::string_view queue) const {
    std::lock_guard lock(mu_);
    return !known_ || queues_.find(queue) != queues_.end();
  }
  // The value to pass to Set after reading the peers: a Forget in between voids that read.
  uint64_t Generation() const {
    std::lock_guard lock(mu_);
    return generation_;
  }
  void Set(std::set<std::string, std::less<>> queues, uint64_t generation) {
    std::lock_guard lock(mu_);
    if (generation != generation_) return;
    queues_ = std::move(queues);
    known_ = true;
  }
  void Forget() {
    std::lock_guard lock(mu_);
    ++generation_;
    known_ = false;
  }

 private:
  mutable std::mutex mu_;
  std::set<std::string, std::less<>> queues_;  // guarded by mu_
  bool known_ = false;                         // guarded by mu_
  uint64_t generation_ = 0;                    // guarded by mu_
};

// The driver's notification channels, named after the schema by Driver::Init.
struct Channels {
  std::string insert;   // a queue got available jobs; the payload is the queue
  std::string control;  // a running job's cancel was asked for, a queue paused or resumed, or
                        // a client joined (kClientJoinedPayload)
  PeerQueues* peers = nullptr;  // the driver's
};

constexpr const char* kLeaderResignSql =
    "DELETE FROM spool_leader WHERE name = 'default' AND leader_id = $1";

constexpr const char* kLeaderGetSql = "SELECT leader_id, " SPOOL_US("elected_at") ", " SPOOL_US(
    "expires_at") " FROM spool_leader WHERE name = 'default'";

// A client's first heartbeat (its row inserted, not updated: xmax = 0) tells the others on the
// control channel $4, so they stop leaving its queues out of their insert NOTIFYs at once. The
// row's started_at before the upsert comes back (NULL for a new row) from the statement's
// snapshot.
// clang-format off
constexpr const char* kClientHeartbeatSql =
    "WITH before AS (SELECT started_at FROM spool_client WHERE id = $1), "
    "up AS (INSERT INTO spool_client (id, started_at, heartbeat_at, queues) "
    "VALUES ($1, " SPOOL_TS("$6") ", " SPOOL_TS("$2") ", $3::jsonb) "
    "ON CONFLICT (id) DO UPDATE SET started_at = EXCLUDED.started_at, "
    "heartbeat_at = EXCLUDED.heartbeat_at, "
    "queues = EXCLUDED.queues RETURNING (xmax = 0) AS inserted) "
    "SELECT (SELECT " SPOOL_US("started_at") " FROM before), "
    "(SELECT count(pg_notify($4, $5)) FROM up WHERE inserted)";
// clang-format on

// The queues the other clients work (rows of dead clients linger until the leader removes them,
// which only costs NOTIFYs nobody hears).
constexpr const char* kPeerQueuesSql =
    "SELECT DISTINCT q FROM spool_client AS c, jsonb_array_elements_text(c.queues) AS q "
    "WHERE c.id <> $1";

constexpr const char* kClientDeleteSql = "DELETE FROM spool_client WHERE id = $1";

constexpr const char* kClientDeleteStaleSql =
    "DELETE FROM spool_client WHERE heartbeat_at < " SPOOL_TS("$1");

// Pausing a paused queue keeps the time it was first paused. Pause and resume tell every process
// on the control channel $3 in the same transaction.
constexpr const char* kQueuePauseSql =
    "WITH paused AS (INSERT INTO spool_queue AS q (name, paused_at, created_at, updated_at) "
    "VALUES ($1, " SPOOL_TS("$2") ", " SPOOL_TS("$2") ", " SPOOL_TS(
        "$2") ") "
              "ON CONFLICT (name) DO UPDATE SET paused_at = EXCLUDED.paused_at, updated_at = "
              "EXCLUDED.updated_at WHERE q.paused_at IS NULL RETURNING 1) "
              "SELECT pg_notify($3, 'control') WHERE EXISTS (SELECT 1 FROM paused)";

constexpr const char* kQueueResumeSql =
    "WITH resumed AS (UPDATE spool_queue SET paused_at = NULL, updated_at = " SPOOL_TS(
        "$2") " WHERE name = $1 AND paused_at IS NOT NULL RETURNING 1) "
              "SELECT pg_notify($3, 'control') WHERE EXISTS (SELECT 1 FROM resumed)";

// The queues running clients work, one row each as e.name (QueueList, QueueKnown): a client row
// whose queues are not a JSON array counts as none.
#define SPOOL_CLIENT_QUEUES                                                                \
  "spool_client, jsonb_array_elements_text(CASE WHEN jsonb_typeof(spool_client.queues) = " \
  "'array' THEN spool_client.queues ELSE '[]' END) AS e(name)"

constexpr const char* kQueueListSql =
    "SELECT coalesce(q.name, c.queue), " SPOOL_US(
        "q.paused_at") ", c.state, c.n "
                       "FROM spool_queue AS q FULL JOIN (SELECT queue, state, count(*)::int8 AS n "
                       "FROM spool_job GROUP BY queue, state) AS c ON c.queue = q.name "
                       // Queues running clients work, before their first job.
                       "UNION ALL SELECT DISTINCT e.name, NULL::int8, NULL::int2, NULL::int8 "
                       "FROM " SPOOL_CLIENT_QUEUES;

// CASE tries its branches in order: the job table is read only for a queue nothing else names.
constexpr const char* kQueueKnownSql =
    "SELECT CASE WHEN EXISTS (SELECT 1 FROM spool_queue WHERE name = $1) THEN true "
    "WHEN EXISTS (SELECT 1 FROM " SPOOL_CLIENT_QUEUES
    " WHERE e.name = $1) THEN true "
    "ELSE EXISTS (SELECT 1 FROM spool_job WHERE queue = $1) END";

constexpr const char* kQueuePausedAtSql =
    "SELECT " SPOOL_US("paused_at") " FROM spool_queue WHERE name = $1";

constexpr const char* kPeriodicGetSql =
    "SELECT " SPOOL_US("last_tick_at") " FROM spool_periodic WHERE name = $1";

constexpr const char* kPeriodicSetSql =
    "INSERT INTO spool_periodic (name, last_tick_at, updated_at) "
    "VALUES ($1, " SPOOL_TS("$2") ", " SPOOL_TS(
        "$3") ") "
              "ON CONFLICT (name) DO UPDATE SET last_tick_at = EXCLUDED.last_tick_at, "
              "updated_at = EXCLUDED.updated_at";

#undef SPOOL_TS
#undef SPOOL_US
#undef SPOOL_ROWS_OF
#undef SPOOL_CLIENT_QUEUES

std::string Micros(TimePoint t) { return std::to_string(t.time_since_epoch().count()); }

// ---- reading rows ------------------------------------------------------------------------------

Status BadValue(std::string_view column, std::string_view text) {
  return Status::Internal(
      fmt::format("unexpected value {:?} in column {} of spool_job", std::string(text), column));
}

Result<int64_t> ParseInt(std::string_view text, std::string_view column) {
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || ptr != text.data() + text.size()) return BadValue(column, text);
  return v;
}

// jsonb prints `{"a": 1}`; spool hands out the compact form nlohmann writes, so a job's args
// read back byte for byte as the client serialised them.
std::string CompactJson(std::string_view text) {
  if (text == "{}" || text == "[]") return std::string(text);
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) return std::string(text);
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// The type oids of kJobColumns, in order (pg_type.dat).
constexpr Oid kInt8 = 20, kInt2 = 21, kText = 25, kTextArray = 1009, kTimestamptz = 1184,
              kJsonb = 3802;
constexpr std::array<Oid, kJobColumnCount> kJobColumnTypes = {
    kInt8,        kInt2, kInt2, kInt2, kTimestamptz, kTextArray, kTimestamptz, kTimestamptz,
    kTimestamptz, kInt2, kText, kText, kJsonb,       kJsonb,     kTextArray,   kJsonb};
constexpr std::array<std::string_view, kJobColumnCount> kJobColumnNames = {
    "id",         "state",        "attempt",      "max_attempts", "attempted_at", "attempted_by",
    "created_at", "scheduled_at", "finalized_at", "priority",     "queue",        "kind",
    "args",       "metadata",     "tags",         "errors"};

// A result whose first columns are kJobColumns must have come back in binary, with the types of
// this schema: anything else (a statement sent in text format, a column whose type was altered)
// would be misread.
Status CheckJobColumns(const PGresult* r) {
  if (PQnfields(r) < kJobColumnCount) {
    return Status::Internal(
        fmt::format("expected the {} columns of a job row, got {}", kJobColumnCount, PQnfields(r)));
  }
  for (int c = 0; c < kJobColumnCount; ++c) {
    const auto i = static_cast<size_t>(c);
    if (PQfformat(r, c) != 1 || PQftype(r, c) != kJobColumnTypes[i]) {
      return Status::Internal(fmt::format(
          "column {} of spool_job came back as type oid {} in {} format, expected oid {} in "
          "binary: is the schema the one `spool migration up` creates?",
          kJobColumnNames[i], PQftype(r, c), PQfformat(r, c) == 1 ? "binary" : "text",
          kJobColumnTypes[i]));
    }
  }
  return Status::Ok();
}

// Column `c` of row `i` as the bytes libpq holds (any format).
std::string_view BinaryBytes(const PGresult* r, int i, int c) {
  return {PQgetvalue(r, i, c), static_cast<size_t>(PQgetlength(r, i, c))};
}

// The id of job row `i`, which reads even when other columns do not.
Result<int64_t> RowId(const PGresult* r, int i) {
  return pg::BinaryInt({BinaryBytes(r, i, 0), "id"});
}

Result<JobRow> ReadRowValues(const PGresult* r, int i);

// REQUIRES: CheckJobColumns(r). Internal error naming the job and the column when a value does
// not read.
Result<JobRow> ReadRow(const PGresult* r, int i) {
  Result<JobRow> row = ReadRowValues(r, i);
  if (row) return row;
  Result<int64_t> id = RowId(r, i);
  return UnreadableRowError(id ? std::to_string(*id) : std::string("(no id)"), row.error());
}

Result<JobRow> ReadRowValues(const PGresult* r, int i) {
  auto value = [&](int c) {
    return pg::BinaryValue{BinaryBytes(r, i, c), kJobColumnNames[static_cast<size_t>(c)]};
  };
  auto null = [&](int c) { return PQgetisnull(r, i, c) != 0; };
  auto small = [&](int c) -> Result<int> {
    SPOOL_ASSIGN_OR_RETURN(int64_t v, pg::BinaryInt(value(c)));
    return static_cast<int>(v);
  };
  JobRow row;
  SPOOL_ASSIGN_OR_RETURN(row.id, pg::BinaryInt(value(0)));
  SPOOL_ASSIGN_OR_RETURN(int64_t state, pg::BinaryInt(value(1)));
  SPOOL_ASSIGN_OR_RETURN(row.state, InColumn("state", StateFromCode(state)));
  SPOOL_ASSIGN_OR_RETURN(row.attempt, small(2));
  SPOOL_ASSIGN_OR_RETURN(row.max_attempts, small(3));
  if (!null(4)) {
    SPOOL_ASSIGN_OR_RETURN(row.attempted_at, pg::BinaryTimestamp(value(4)));
  }
  SPOOL_ASSIGN_OR_RETURN(row.attempted_by, pg::BinaryTextArray(value(5)));
  SPOOL_ASSIGN_OR_RETURN(row.created_at, pg::BinaryTimestamp(value(6)));
  SPOOL_ASSIGN_OR_RETURN(row.scheduled_at, pg::BinaryTimestamp(value(7)));
  if (!null(8)) {
    SPOOL_ASSIGN_OR_RETURN(row.finalized_at, pg::BinaryTimestamp(value(8)));
  }
  SPOOL_ASSIGN_OR_RETURN(row.priority, small(9));
  row.queue = value(10).bytes;
  row.kind = value(11).bytes;
  SPOOL_ASSIGN_OR_RETURN(std::string_view args, pg::BinaryJsonb(value(12)));
  row.args = CompactJson(args);
  SPOOL_ASSIGN_OR_RETURN(std::string_view metadata, pg::BinaryJsonb(value(13)));
  row.metadata = CompactJson(metadata);
  SPOOL_ASSIGN_OR_RETURN(row.tags, pg::BinaryTextArray(value(14)));
  SPOOL_ASSIGN_OR_RETURN(std::string_view errors, pg::BinaryJsonb(value(15)));
  SPOOL_ASSIGN_OR_RETURN(row.errors, InColumn("errors", ParseErrors(errors)));
  return row;
}

// The first job row of `r`. REQUIRES: `r` has a row.
Result<JobRow> ReadOneRow(const PGresult* r) {
  SPOOL_RETURN_IF_ERROR(CheckJobColumns(r));
  return ReadRow(r, 0);
}

Result<std::vector<JobRow>> ReadRows(const PGresult* r) {
  SPOOL_RETURN_IF_ERROR(CheckJobColumns(r));
  std::vector<JobRow> rows;
  const int n = PQntuples(r);
  rows.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    SPOOL_ASSIGN_OR_RETURN(JobRow row, ReadRow(r, i));
    rows.push_back(std::move(row));
  }
  return rows;
}

int64_t AffectedRows(const PGresult* r) {
  const char* n = PQcmdTuples(const_cast<PGresult*>(r));
  return (n == nullptr || *n == '\0') ? 0 : std::strtoll(n, nullptr, 10);
}

// ---- queries, over any connection --------------------------------------------------------------

std::string Hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char ch : bytes) {
    const auto b = static_cast<unsigned char>(ch);
    out += kDigits[b >> 4];
    out += kDigits[b & 0xf];
  }
  return out;
}

// The rows p.jobs[idx...], one array parameter per column; with `unique` also the unique key
// (bytea hex input) and unique_states, NULL for rows without a key.
// With `claims` (and not `unique`): also each row's claim flag and the client claiming.
std::vector<Param> InsertParamsFor(const JobInsertManyParams& p, const std::vector<size_t>& idx,
                                   bool unique, bool claims = false) {
  std::vector<std::string> kinds, args, metadata, queues, priorities, max_attempts, states, sched,
      tags;
  std::vector<std::optional<std::string>> keys, unique_states;
  for (size_t i : idx) {
    const JobInsertParams& j = p.jobs[i];
    kinds.push_back(j.kind);
    args.push_back(j.args);
    metadata.push_back(j.metadata);
    queues.push_back(j.queue);
    priorities.push_back(std::to_string(j.priority));
    max_attempts.push_back(std::to_string(j.max_attempts));
    states.push_back(std::to_string(StateCode(j.state)));
    sched.push_back(Micros(j.scheduled_at));
    tags.push_back(pg::ArrayLiteral(j.tags));
    if (unique) {
      if (j.unique_key.empty()) {
        keys.emplace_back();
        unique_states.emplace_back();
      } else {
        keys.push_back("\\x" + Hex(j.unique_key));
        unique_states.push_back(std::to_string(j.unique_states));
      }
    }
  }
  std::vector<Param> out = {pg::ArrayLiteral(kinds),      pg::ArrayLiteral(args),
                            pg::ArrayLiteral(metadata),   pg::ArrayLiteral(queues),
                            pg::ArrayLiteral(priorities), pg::ArrayLiteral(max_attempts),
                            pg::ArrayLiteral(states),     pg::ArrayLiteral(sched),
                            pg::ArrayLiteral(tags),       Micros(p.now)};
  if (unique) {
    out.emplace_back(pg::ArrayLiteral(keys));
    out.emplace_back(pg::ArrayLiteral(unique_states));
  } else if (claims) {
    std::vector<std::string> claim;
    for (size_t i : idx) claim.emplace_back(p.jobs[i].claim ? "t" : "f");
    out.emplace_back(pg::ArrayLiteral(claim));
    out.emplace_back(p.claim_for);
  }
  return out;
}

// Rounds of insert-then-look-up before giving up: another round is needed only when the row
// holding a key left the key's states (or was deleted) between our insert and our lookup.
constexpr int kUniqueRounds = 10;

// Inserts p.jobs[pending...] (one chunk, at least one with a unique key) into out[base + i -
// pending.front()]; a row whose key is taken gets the row holding it, duplicate = true. Returns
// how many rows were inserted.
Result<int64_t> InsertUniqueOn(Conn& c, const JobInsertManyParams& p, std::vector<size_t> pending,
                               std::vector<JobInsertResult>& out) {
  const size_t first = pending.front();
  const size_t base = out.size();
  out.resize(base + pending.size());
  int64_t inserted = 0;
  for (int round = 0; !pending.empty(); ++round) {
    if (round == kUniqueRounds) {
      return Status::Retryable(
          "unique insert: the jobs holding the unique keys kept changing state; try again");
    }
    SPOOL_ASSIGN_OR_RETURN(PgResult res,
                           c.Query("spool_insert_unique", InsertUniqueSql(true),
                                   InsertParamsFor(p, pending, true), pg::Format::kBinary));
    SPOOL_RETURN_IF_ERROR(CheckJobColumns(res.get()));
    struct Inserted {
      JobRow row;
      std::string key;                       // hex
      std::optional<int64_t> unique_states;  // NULL for rows without a key
    };
    std::vector<Inserted> rows;
    rows.reserve(static_cast<size_t>(PQntuples(res.get())));
    for (int r = 0; r < PQntuples(res.get()); ++r) {
      SPOOL_ASSIGN_OR_RETURN(JobRow row, ReadRow(res.get(), r));
      std::optional<int64_t> unique_states;
      if (PQgetisnull(res.get(), r, kJobColumnCount + 1) == 0) {
        SPOOL_ASSIGN_OR_RETURN(
            unique_states,
            pg::BinaryInt({BinaryBytes(res.get(), r, kJobColumnCount + 1), "unique_states"}));
      }
      rows.push_back(
          {std::move(row), std::string(BinaryBytes(res.get(), r, kJobColumnCount)), unique_states});
    }
    // ids come from the sequence in input order, so the inserted rows, by id, are the inputs
    // minus the skipped ones. An input and its row agree on key, state and unique_states; an
    // input skipped while a later identical one was inserted is impossible (the same conflict).
    std::sort(rows.begin(), rows.end(),
              [](const Inserted& a, const Inserted& b) { return a.row.id < b.row.id; });
    std::vector<size_t> conflicted;
    size_t next = 0;
    for (size_t i : pending) {
      const JobInsertParams& j = p.jobs[i];
      bool match = next < rows.size();
      if (match && !j.unique_key.empty()) {
        match = rows[next].key == Hex(j.unique_key) && rows[next].row.state == j.state &&
                rows[next].unique_states == j.unique_states;
      }
      if (match) {
        out[base + i - first] = {std::move(rows[next].row), false};
        ++next;
        ++inserted;
      } else if (j.unique_key.empty()) {
        return Status::Internal("unique insert: a row without a unique key was not inserted");
      } else {
        conflicted.push_back(i);
      }
    }
    if (next != rows.size()) {
      return Status::Internal("unique insert: the inserted rows do not match the input");
    }
    pending.clear();
    if (conflicted.empty()) break;

    std::vector<std::string> keys;
    for (size_t i : conflicted) keys.push_back("\\x" + Hex(p.jobs[i].unique_key));
    SPOOL_ASSIGN_OR_RETURN(PgResult found, c.Query("spool_unique_lookup", UniqueLookupSql(),
                                                   {pg::ArrayLiteral(keys)}, pg::Format::kBinary));
    SPOOL_RETURN_IF_ERROR(CheckJobColumns(found.get()));
    std::map<std::string, JobRow> holders;
    for (int r = 0; r < PQntuples(found.get()); ++r) {
      SPOOL_ASSIGN_OR_RETURN(JobRow row, ReadRow(found.get(), r));
      holders[std::string(BinaryBytes(found.get(), r, kJobColumnCount))] = std::move(row);
    }
    for (size_t i : conflicted) {
      auto it = holders.find(Hex(p.jobs[i].unique_key));
      if (it == holders.end()) {
        pending.push_back(i);  // the holder vanished: insert again
      } else {
        out[base + i - first] = {it->second, true};
      }
    }
  }
  return inserted;
}

// Whether `t` is in years 1..9999, the times a bulk insert writes by COPY (CopyInsertOn).
bool SpellableTime(TimePoint t) {
  constexpr int64_t kYear1 = -62'135'596'800'000'000;      // 0001-01-01T00:00:00Z
  constexpr int64_t kYear10000 = 253'402'300'800'000'000;  // 10000-01-01T00:00:00Z
  const int64_t us = t.time_since_epoch().count();
  return us >= kYear1 && us < kYear10000;
}

// Bulk insert without unique keys and without reading rows back: COPY, which costs the server
// far less per row than an INSERT over unnested arrays, in its binary format, which spares the
// server parsing each row's times, integers and tags from text (docs/benchmarks.md). Nothing
// when a time lies outside years 1..9999 or a field is 1 GiB or longer (PostgreSQL's limit, and
// past 2 GiB its length would not fit the format): the INSERT stores or reports those.
// CheckInsertRows has kept priority and max_attempts within smallint. metadata and tags, empty in
// most jobs, are left out when empty in every row of the batch: the table's defaults fill them
// for less than reading '{}' for each row (6% of a row's instructions, counted with callgrind).
Result<std::optional<int64_t>> CopyInsertOn(Conn& c, const JobInsertManyParams& p) {
  constexpr size_t kMaxField = size_t{1} << 30;
  const auto copyable = [&](const JobInsertParams& j) {
    size_t tags = 0;
    for (const std::string& t : j.tags) tags += t.size() + 4;
    return SpellableTime(j.scheduled_at) &&
           std::max({j.kind.size(), j.args.size(), j.metadata.size(), j.queue.size(), tags}) <
               kMaxField;
  };
  if (!SpellableTime(p.now) || !std::all_of(p.jobs.begin(), p.jobs.end(), copyable)) {
    return std::optional<int64_t>();
  }
  const bool metadata = std::any_of(p.jobs.begin(), p.jobs.end(),
                                    [](const JobInsertParams& j) { return j.metadata != "{}"; });
  const bool tags = std::any_of(p.jobs.begin(), p.jobs.end(),
                                [](const JobInsertParams& j) { return !j.tags.empty(); });
  const std::string copy_sql = fmt::format(
      "COPY spool_job (kind, args, {}queue, priority, max_attempts, state, scheduled_at, "
      "{}created_at) FROM STDIN WITH (FORMAT binary)",
      metadata ? "metadata, " : "", tags ? "tags, " : "");
  const auto fields = static_cast<int16_t>(8 + (metadata ? 1 : 0) + (tags ? 1 : 0));
  size_t next = 0;
  SPOOL_ASSIGN_OR_RETURN(int64_t n, c.CopyIn(copy_sql, [&](std::string& buf) {
    if (next == 0) pg::AppendCopyHeader(buf);
    const size_t end = std::min(p.jobs.size(), next + kCopyChunk);
    for (; next < end; ++next) {
      const JobInsertParams& j = p.jobs[next];
      pg::AppendCopyRow(buf, fields);
      pg::AppendCopyText(buf, j.kind);
      pg::AppendCopyJsonb(buf, j.args);
      if (metadata) pg::AppendCopyJsonb(buf, j.metadata);
      pg::AppendCopyText(buf, j.queue);
      pg::AppendCopyInt2(buf, static_cast<int16_t>(j.priority));
      pg::AppendCopyInt2(buf, static_cast<int16_t>(j.max_attempts));
      pg::AppendCopyInt2(buf, static_cast<int16_t>(StateCode(j.state)));
      pg::AppendCopyTimestamp(buf, j.scheduled_at);
      if (tags) pg::AppendCopyTextArray(buf, j.tags);
      pg::AppendCopyTimestamp(buf, p.now);
    }
    if (next == p.jobs.size()) pg::AppendCopyTrailer(buf);
    return next < p.jobs.size();
  }));
  return std::optional<int64_t>(n);
}

// Inserts in chunks; the caller provides atomicity across chunks. With `out` the rows (or the
// rows holding taken unique keys) are appended in input order. Batches without unique keys take
// the plain insert: ON CONFLICT would add an arbiter check to every row; without `out` too, they
// are copied in one COPY.
//
// `notifies` (NOTIFYs of the queues that get available jobs) run on the same connection after
// the rows, so inside a transaction they are delivered at its commit; when the insert is a single
// statement they travel with it in one round trip and, outside a transaction, one implicit
// transaction.
Result<int64_t> InsertOn(Conn& c, const JobInsertManyParams& p, std::vector<JobInsertResult>* out,
                         const std::vector<pg::Statement>& notifies) {
  const auto notify_after = [&](int64_t count) -> Result<int64_t> {
    for (const pg::Statement& n : notifies) {
      SPOOL_RETURN_IF_ERROR(c.Query(n.name, *n.sql, n.params).status());
    }
    return count;
  };
  const bool unique = std::any_of(p.jobs.begin(), p.jobs.end(),
                                  [](const JobInsertParams& j) { return !j.unique_key.empty(); });
  if (!unique && out == nullptr) {
    SPOOL_ASSIGN_OR_RETURN(std::optional<int64_t> copied, CopyInsertOn(c, p));
    if (copied) return notify_after(*copied);
  }
  int64_t count = 0;
  bool sent_notifies = false;
  std::vector<size_t> idx;
  for (size_t begin = 0; begin < p.jobs.size(); begin += kInsertChunk) {
    const size_t end = std::min(p.jobs.size(), begin + kInsertChunk);
    idx.clear();
    for (size_t i = begin; i < end; ++i) idx.push_back(i);
    if (unique && out != nullptr) {
      SPOOL_ASSIGN_OR_RETURN(int64_t n, InsertUniqueOn(c, p, idx, *out));
      count += n;
      continue;
    }
    const bool returning = out != nullptr;
    // Claims come only with rows returned and without unique rows (CheckInsertRows).
    const bool claims =
        returning && std::any_of(idx.begin(), idx.end(), [&](size_t i) { return p.jobs[i].claim; });
    const std::string& sql = unique   ? InsertUniqueSql(false)
                             : claims ? InsertClaimSql()
                                      : InsertSql(returning);
    const char* name = unique      ? "spool_insert_unique_fast"
                       : claims    ? "spool_insert_claim"
                       : returning ? "spool_insert"
                                   : "spool_insert_fast";
    const pg::Format format = returning ? pg::Format::kBinary : pg::Format::kText;
    PgResult res;
    if (begin == 0 && end == p.jobs.size() && !notifies.empty()) {
      std::vector<pg::Statement> all{{name, &sql, InsertParamsFor(p, idx, unique, claims), format}};
      for (const pg::Statement& n : notifies) all.push_back(n);
      SPOOL_ASSIGN_OR_RETURN(std::vector<PgResult> results, c.QueryPipelined(all));
      res = std::move(results.front());
      sent_notifies = true;
    } else {
      SPOOL_ASSIGN_OR_RETURN(res,
                             c.Query(name, sql, InsertParamsFor(p, idx, unique, claims), format));
    }
    if (returning) {
      SPOOL_ASSIGN_OR_RETURN(std::vector<JobRow> chunk, ReadRows(res.get()));
      // ids come from the sequence in ORDER BY ord order, so id order is input order.
      std::sort(chunk.begin(), chunk.end(),
                [](const JobRow& a, const JobRow& b) { return a.id < b.id; });
      for (JobRow& r : chunk) out->push_back({std::move(r), false});
      count += static_cast<int64_t>(chunk.size());
    } else {
      count += AffectedRows(res.get());
    }
  }
  return sent_notifies ? count : notify_after(count);
}

// Runs `statements` after `settings` (a StateTxSettings) in one pipeline and one implicit
// transaction; with null `settings` (inside a transaction) a lone statement goes without a
// pipeline. Returns the results of `statements` only.
Result<std::vector<PgResult>> QueryWithSettings(Conn& c, const pg::Statement* settings,
                                                std::vector<pg::Statement> statements) {
  if (settings == nullptr && statements.size() == 1) {
    const pg::Statement& only = statements.front();
    SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query(only.name, *only.sql, only.params, only.results));
    std::vector<PgResult> out;
    out.push_back(std::move(res));
    return out;
  }
  if (settings != nullptr) statements.insert(statements.begin(), *settings);
  SPOOL_ASSIGN_OR_RETURN(std::vector<PgResult> results, c.QueryPipelined(statements));
  if (settings != nullptr) results.erase(results.begin());
  return results;
}

Result<int64_t> SetStateOn(Conn& c, const JobSetStateIfRunningManyParams& p,
                           const pg::Statement* settings);

// Gives back the rows of a claim result that could not be read (a column of another type, a value
// that does not decode), so they do not stay running until the rescuer finds them: scheduled with
// the attempt unused, as a snooze leaves a job, at `now`, or kUnreadableRowDelay later for the
// rows that do not read. Rows whose id cannot be read stay running.
void GiveBackClaimed(Conn& c, const PGresult* r, TimePoint now, const pg::Statement* settings) {
  const bool columns_ok = CheckJobColumns(r).ok();
  JobSetStateIfRunningManyParams back;
  for (int i = 0; i < PQntuples(r); ++i) {
    Result<int64_t> id = RowId(r, i);
    if (!id) continue;
    const TimePoint at = columns_ok && ReadRow(r, i).has_value() ? now : now + kUnreadableRowDelay;
    back.jobs.push_back({.id = *id, .state = JobState::kScheduled, .at = at, .error = {}});
  }
  (void)SetStateOn(c, back, settings);  // the reading error is what the caller needs
}

Result<std::vector<JobRow>> FetchOn(Conn& c, const JobGetAvailableParams& p,
                                    const pg::Statement* settings) {
  if (p.max <= 0) return std::vector<JobRow>{};
  std::vector<pg::Param> params{p.queue, Micros(p.now), std::to_string(p.max), p.client_id};
  if (p.after) {
    params.emplace_back(std::to_string(p.after->priority));
    params.emplace_back(Micros(p.after->scheduled_at));
    params.emplace_back(std::to_string(p.after->id));
  }
  SPOOL_ASSIGN_OR_RETURN(std::vector<PgResult> results,
                         QueryWithSettings(c, settings,
                                           {{p.after ? "spool_fetch_after" : "spool_fetch",
                                             &FetchSql(p.after.has_value()), std::move(params),
                                             pg::Format::kBinary}}));
  Result<std::vector<JobRow>> read = ReadRows(results.front().get());
  if (!read) {
    GiveBackClaimed(c, results.front().get(), p.now, settings);
    return UnreadableClaimError(read.error());
  }
  std::vector<JobRow> rows = std::move(*read);
  std::sort(rows.begin(), rows.end(), [](const JobRow& a, const JobRow& b) {
    return std::tie(a.priority, a.scheduled_at, a.id) < std::tie(b.priority, b.scheduled_at, b.id);
  });
  return rows;
}

Result<int64_t> SetStateOn(Conn& c, const JobSetStateIfRunningManyParams& p,
                           const pg::Statement* settings) {
  SPOOL_RETURN_IF_ERROR(CheckOutcomeStates(p.jobs));
  if (p.skipped != nullptr) p.skipped->clear();
  if (p.cancelled != nullptr) p.cancelled->clear();
  if (p.jobs.empty()) return int64_t{0};
  std::vector<std::string> done_ids, done_ats, done_attempts;
  std::vector<std::string> ids, states, ats, attempts, snoozes;
  std::vector<std::optional<std::string>> errs, cancel_errs, done_claims, claims;
  const auto claim = [](const JobSetStateParams& j) {
    return j.attempted_at ? std::optional<std::string>(Micros(*j.attempted_at)) : std::nullopt;
  };
  for (const JobSetStateParams& j : p.jobs) {
    if (j.state == JobState::kCompleted && !j.error) {
      done_ids.push_back(std::to_string(j.id));
      done_ats.push_back(Micros(j.at));
      done_attempts.push_back(std::to_string(j.attempt));
      done_claims.push_back(claim(j));
      continue;
    }
    ids.push_back(std::to_string(j.id));
    states.push_back(std::to_string(StateCode(j.state)));
    ats.push_back(Micros(j.at));
    errs.push_back(j.error ? std::optional<std::string>(ErrorJson(*j.error)) : std::nullopt);
    attempts.push_back(std::to_string(j.attempt));
    snoozes.push_back(j.snooze ? "t" : "f");
    cancel_errs.push_back(j.if_cancel_requested
                              ? std::optional<std::string>(ErrorJson(*j.if_cancel_requested))
                              : std::nullopt);
    claims.push_back(claim(j));
  }
  // Both statements (when both are needed) in one pipeline: one round trip and, outside a
  // transaction, one implicit transaction.
  std::vector<pg::Statement> statements;
  if (!done_ids.empty()) {
    statements.push_back({"spool_complete",
                          &CompleteSql(),
                          {pg::ArrayLiteral(done_ids), pg::ArrayLiteral(done_ats),
                           pg::ArrayLiteral(done_attempts), pg::ArrayLiteral(done_claims)}});
  }
  if (!ids.empty()) {
    statements.push_back(
        {"spool_set_state",
         &SetStateSql(),
         {pg::ArrayLiteral(ids), pg::ArrayLiteral(states), pg::ArrayLiteral(ats),
          pg::ArrayLiteral(errs), pg::ArrayLiteral(attempts), pg::ArrayLiteral(snoozes),
          pg::ArrayLiteral(cancel_errs), pg::ArrayLiteral(claims)}});
  }
  SPOOL_ASSIGN_OR_RETURN(std::vector<PgResult> results,
                         QueryWithSettings(c, settings, std::move(statements)));
  int64_t changed = 0;
  for (const PgResult& res : results) changed += AffectedRows(res.get());
  if (p.cancelled != nullptr && !ids.empty()) {
    // The general statement's rows: (id, whether a cancel request made it a cancel).
    PGresult* general = results.back().get();
    for (int i = 0; i < PQntuples(general); ++i) {
      if (PQgetvalue(general, i, 1)[0] != 't') continue;
      SPOOL_ASSIGN_OR_RETURN(int64_t id, ParseInt(PQgetvalue(general, i, 0), "id"));
      p.cancelled->push_back(id);
    }
  }
  // The statements return the ids they changed (a few bytes a row), read only when some job was
  // skipped and the caller asked which.
  if (p.skipped != nullptr && changed < static_cast<int64_t>(p.jobs.size())) {
    std::set<int64_t> written;
    for (const PgResult& res : results) {
      for (int i = 0; i < PQntuples(res.get()); ++i) {
        SPOOL_ASSIGN_OR_RETURN(int64_t id, ParseInt(PQgetvalue(res.get(), i, 0), "id"));
        written.insert(id);
      }
    }
    for (const JobSetStateParams& j : p.jobs) {
      if (!written.contains(j.id)) p.skipped->push_back(j.id);
    }
  }
  return changed;
}

Result<JobScheduleResult> ScheduleOn(Conn& c, const JobScheduleParams& p,
                                     const std::string& insert_channel) {
  JobScheduleResult out;
  if (p.max <= 0) return out;
  SPOOL_ASSIGN_OR_RETURN(PgResult res,
                         c.Query("spool_schedule", kScheduleSql,
                                 {Micros(p.now), std::to_string(p.max), insert_channel}));
  SPOOL_ASSIGN_OR_RETURN(out.count, ParseInt(PQgetvalue(res.get(), 0, 0), "count"));
  SPOOL_ASSIGN_OR_RETURN(out.queues, ParseStringArray(PQgetvalue(res.get(), 0, 1)));
  return out;
}

Result<JobRow> GetByIdOn(Conn& c, int64_t id) {
  SPOOL_ASSIGN_OR_RETURN(
      PgResult res, c.Query("spool_get", GetByIdSql(), {std::to_string(id)}, pg::Format::kBinary));
  if (PQntuples(res.get()) == 0) return Status::NotFound(fmt::format("no job with id {}", id));
  return ReadOneRow(res.get());
}

Result<std::vector<JobRow>> ListOn(Conn& c, const JobListParams& p) {
  if (p.limit < 1) {
    return Status::InvalidArgument(fmt::format("job list limit {} must be at least 1", p.limit));
  }
  Param states;
  if (!p.states.empty()) {
    std::vector<std::string> codes;
    for (JobState s : p.states) codes.push_back(std::to_string(StateCode(s)));
    states = pg::ArrayLiteral(codes);
  }
  const int64_t before = p.before_id > 0 ? p.before_id : std::numeric_limits<int64_t>::max();
  SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query(p.newest_first ? "spool_list_desc" : "spool_list",
                                               ListSql(p.newest_first),
                                               {states, p.queue, p.kind, std::to_string(p.after_id),
                                                std::to_string(p.limit), std::to_string(before)},
                                               pg::Format::kBinary));
  SPOOL_RETURN_IF_ERROR(CheckJobColumns(res.get()));
  std::vector<JobRow> rows;
  for (int i = 0; i < PQntuples(res.get()); ++i) {
    SPOOL_ASSIGN_OR_RETURN(int64_t id, RowId(res.get(), i));
    rows.push_back(RowOrIdOnly(id, ReadRow(res.get(), i)));
  }
  return rows;
}

Result<std::map<JobState, int64_t>> CountOn(Conn& c, std::string_view queue) {
  SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query("spool_count", kCountSql, {std::string(queue)}));
  std::map<JobState, int64_t> out;
  for (int i = 0; i < PQntuples(res.get()); ++i) {
    SPOOL_ASSIGN_OR_RETURN(int64_t code, ParseInt(PQgetvalue(res.get(), i, 0), "state"));
    SPOOL_ASSIGN_OR_RETURN(JobState s, StateFromCode(code));
    SPOOL_ASSIGN_OR_RETURN(out[s], ParseInt(PQgetvalue(res.get(), i, 1), "count"));
  }
  return out;
}

// ---- admin and maintenance queries -------------------------------------------------------------

// The row `id` when a conditional write skipped it: NotFound, or FailedPrecondition if running.
Status NotDeletable(Conn& c, int64_t id) {
  SPOOL_ASSIGN_OR_RETURN(JobRow row, GetByIdOn(c, id));
  if (row.state == JobState::kRunning) return RunningJobRefused(row, "deleting");
  return Status::Internal(fmt::format("cannot delete job {}: it changed concurrently", id));
}

Result<JobRow> CancelOn(Conn& c, const JobCancelParams& p, const std::string& control_channel) {
  SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query("spool_cancel", CancelSql(),
                                               {std::to_string(p.id), Micros(p.now),
                                                control_channel, FormatTime(p.now)},
                                               pg::Format::kBinary));
  if (PQntuples(res.get()) == 0) return GetByIdOn(c, p.id);  // NotFound, or final: unchanged
  return ReadOneRow(res.get());
}

Result<JobRow> UniqueHolderOn(Conn& c, int64_t id) {
  SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query("spool_unique_holder", UniqueHolderSql(),
                                               {std::to_string(id)}, pg::Format::kBinary));
  if (PQntuples(res.get()) == 0) {
    return Status::NotFound(fmt::format("no job holds the unique key of {}", id));
  }
  return ReadOneRow(res.get());
}

Result<JobRow> RetryOn(Conn& c, const JobRetryParams& p, const std::string& insert_channel) {
  auto res = c.Query("spool_retry", RetrySql(),
                     {std::to_string(p.id), Micros(p.now), insert_channel}, pg::Format::kBinary);
  // Inside a caller's transaction the failed statement aborted it: the lookup then fails too, and
  // the error says so without naming the holder.
  if (!res && res.error().IsAlreadyExists()) return UniqueKeyHeld(UniqueHolderOn(c, p.id));
  if (!res) return std::move(res).error();
  if (PQntuples(res->get()) == 0) {
    SPOOL_ASSIGN_OR_RETURN(JobRow row, GetByIdOn(c, p.id));
    return RetryRefused(row);
  }
  return ReadOneRow(res->get());
}

Result<JobRow> DeleteOn(Conn& c, int64_t id) {
  SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query("spool_delete", DeleteSql(), {std::to_string(id)},
                                               pg::Format::kBinary));
  if (PQntuples(res.get()) == 0) return NotDeletable(c, id);
  return RowOrIdOnly(id, ReadOneRow(res.get()));
}

Result<std::vector<int64_t>> CancelRequestedOn(Conn& c, const std::vector<int64_t>& ids) {
  std::vector<int64_t> out;
  if (ids.empty()) return out;
  std::vector<std::string> texts;
  texts.reserve(ids.size());
  for (int64_t id : ids) texts.push_back(std::to_string(id));
  SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query("spool_cancel_requested", kCancelRequestedSql,
                                               {pg::ArrayLiteral(texts)}));
  for (int i = 0; i < PQntuples(res.get()); ++i) {
    SPOOL_ASSIGN_OR_RETURN(int64_t id, ParseInt(PQgetvalue(res.get(), i, 0), "id"));
    out.push_back(id);
  }
  return out;
}

Result<std::vector<JobRow>> StuckOn(Conn& c, const JobGetStuckParams& p) {
  if (p.max <= 0) return std::vector<JobRow>{};
  SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query("spool_stuck", StuckSql(),
                                               {Micros(p.heartbeat_stale_before),
                                                Micros(p.attempted_before), std::to_string(p.max)},
                                               pg::Format::kBinary));
  return ReadRows(res.get());
}

Result<int64_t> DeleteFinalizedOn(Conn& c, const JobDeleteFinalizedParams& p) {
  SPOOL_RETURN_IF_ERROR(CheckFinalizedState(p.state));
  if (p.max <= 0) return int64_t{0};
  SPOOL_ASSIGN_OR_RETURN(PgResult res,
                         c.Query("spool_delete_finalized", kDeleteFinalizedSql,
                                 {std::to_string(StateCode(p.state)), Micros(p.finalized_before),
                                  std::to_string(p.max)}));
  return AffectedRows(res.get());
}

Result<bool> LeaderElectOn(Conn& c, const LeaderElectParams& p) {
  SPOOL_ASSIGN_OR_RETURN(PgResult res,
                         c.Query("spool_leader_elect", kLeaderElectSql,
                                 {p.leader_id, Micros(p.now), Micros(p.now + p.ttl)}));
  return PQntuples(res.get()) > 0;
}

Result<bool> LeaderReelectOn(Conn& c, const LeaderElectParams& p) {
  SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query("spool_leader_reelect", kLeaderReelectSql,
                                               {p.leader_id, Micros(p.now + p.ttl)}));
  return AffectedRows(res.get()) > 0;
}

Result<std::optional<LeaderInfo>> LeaderGetOn(Conn& c) {
  SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query("spool_leader_get", kLeaderGetSql, {}));
  if (PQntuples(res.get()) == 0) return std::optional<LeaderInfo>();
  LeaderInfo info;
  info.leader_id = PQgetvalue(res.get(), 0, 0);
  SPOOL_ASSIGN_OR_RETURN(int64_t elected, ParseInt(PQgetvalue(res.get(), 0, 1), "elected_at"));
  SPOOL_ASSIGN_OR_RETURN(int64_t expires, ParseInt(PQgetvalue(res.get(), 0, 2), "expires_at"));
  info.elected_at = TimePoint(Duration(elected));
  info.expires_at = TimePoint(Duration(expires));
  return std::optional<LeaderInfo>(std::move(info));
}

// The heartbeat and, with `peers`, a fresh read of the queues other clients work, in one round
// trip.
Result<std::optional<TimePoint>> ClientHeartbeatOn(Conn& c, const ClientHeartbeatParams& p,
                                                   const Channels& channels, PeerQueues* peers) {
  const std::string queues =
      nlohmann::json(p.queues).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  const uint64_t generation = peers != nullptr ? peers->Generation() : 0;
  static const std::string* const kHeartbeat = new std::string(kClientHeartbeatSql);
  static const std::string* const kPeers = new std::string(kPeerQueuesSql);
  std::vector<pg::Statement> statements{
      {"spool_client_heartbeat",
       kHeartbeat,
       {p.id, Micros(p.now), queues, channels.control, std::string(kClientJoinedPayload),
        Micros(p.started_at)}}};
  if (peers != nullptr) statements.push_back({"spool_peer_queues", kPeers, {p.id}});
  SPOOL_ASSIGN_OR_RETURN(std::vector<PgResult> results, c.QueryPipelined(statements));
  if (peers != nullptr) {
    std::set<std::string, std::less<>> worked;
    const PGresult* res = results.back().get();
    for (int i = 0; i < PQntuples(res); ++i) worked.emplace(PQgetvalue(res, i, 0));
    peers->Set(std::move(worked), generation);
  }
  const PGresult* heartbeat = results.front().get();
  if (PQntuples(heartbeat) != 1 || PQgetisnull(heartbeat, 0, 0)) {
    return std::optional<TimePoint>();
  }
  SPOOL_ASSIGN_OR_RETURN(int64_t started, ParseInt(PQgetvalue(heartbeat, 0, 0), "started_at"));
  return std::optional<TimePoint>(TimePoint(Duration(started)));
}

Result<std::vector<QueueInfo>> QueueListOn(Conn& c) {
  SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query("spool_queue_list", kQueueListSql, {}));
  // std::map orders names bytewise, as SQLite does, whatever the database's collation.
  std::map<std::string, QueueInfo> queues;
  for (int i = 0; i < PQntuples(res.get()); ++i) {
    const std::string name = PQgetvalue(res.get(), i, 0);
    QueueInfo& q = queues[name];
    q.name = name;
    if (PQgetisnull(res.get(), i, 1) == 0) {
      SPOOL_ASSIGN_OR_RETURN(int64_t us, ParseInt(PQgetvalue(res.get(), i, 1), "paused_at"));
      q.paused_at = TimePoint(Duration(us));
    }
    if (PQgetisnull(res.get(), i, 2) == 0) {
      SPOOL_ASSIGN_OR_RETURN(int64_t code, ParseInt(PQgetvalue(res.get(), i, 2), "state"));
      SPOOL_ASSIGN_OR_RETURN(JobState s, StateFromCode(code));
      SPOOL_ASSIGN_OR_RETURN(q.counts[s], ParseInt(PQgetvalue(res.get(), i, 3), "count"));
    }
  }
  std::vector<QueueInfo> out;
  out.reserve(queues.size());
  for (auto& [name, q] : queues) out.push_back(std::move(q));
  return out;
}

Result<std::optional<TimePoint>> QueuePausedAtOn(Conn& c, std::string_view name) {
  SPOOL_ASSIGN_OR_RETURN(PgResult res,
                         c.Query("spool_queue_paused_at", kQueuePausedAtSql, {std::string(name)}));
  if (PQntuples(res.get()) == 0 || PQgetisnull(res.get(), 0, 0) != 0) {
    return std::optional<TimePoint>();
  }
  SPOOL_ASSIGN_OR_RETURN(int64_t us, ParseInt(PQgetvalue(res.get(), 0, 0), "paused_at"));
  return std::optional<TimePoint>(TimePoint(Duration(us)));
}

Result<std::optional<TimePoint>> PeriodicGetOn(Conn& c, std::string_view name) {
  SPOOL_ASSIGN_OR_RETURN(PgResult res,
                         c.Query("spool_periodic_get", kPeriodicGetSql, {std::string(name)}));
  if (PQntuples(res.get()) == 0) return std::optional<TimePoint>();
  SPOOL_ASSIGN_OR_RETURN(int64_t us, ParseInt(PQgetvalue(res.get(), 0, 0), "last_tick_at"));
  return std::optional<TimePoint>(TimePoint(Duration(us)));
}

// ---- connection pool ---------------------------------------------------------------------------

class Pool;

// A pooled connection, returned to the pool (or discarded if broken) on destruction.
class Lease {
 public:
  Lease(Pool* pool, std::unique_ptr<Conn> conn) : pool_(pool), conn_(std::move(conn)) {}
  Lease(Lease&& o) noexcept = default;
  Lease& operator=(Lease&&) = delete;
  Lease(const Lease&) = delete;
  ~Lease();
  Conn& operator*() const { return *conn_; }
  Conn* operator->() const { return conn_.get(); }

 private:
  Pool* pool_;
  std::unique_ptr<Conn> conn_;
};

// Up to kMaxPoolConnections connections, opened on demand. Thread safe. After a failed connect,
// further connects fail fast with the same error until a doubling backoff passes, so a down
// server does not get hammered by every producer loop.
class Pool {
 public:
  Pool(std::string url, std::string target, std::chrono::milliseconds check_idle_after)
      : url_(std::move(url)), target_(std::move(target)), check_idle_after_(check_idle_after) {
    leased_.reserve(kMaxPoolConnections);  // no allocation per lease
  }

  Result<Lease> Acquire() {
    std::unique_lock lock(mu_);
    const auto deadline = SteadyClock::now() + kPoolWait;
    for (;;) {
      while (!idle_.empty()) {
        IdleConn idle = std::move(idle_.back());
        idle_.pop_back();
        if (SteadyClock::now() - idle.since < check_idle_after_ ||
            !ClosedWhileIdle(idle.conn->get())) {
          leased_.push_back(idle.conn.get());
          return Lease(this, std::move(idle.conn));
        }
        // Nothing was sent on it, so a new connection takes its place without doubt: the
        // caller does not see the close as a failure of its call.
        broken_.fetch_add(1, std::memory_order_relaxed);
        --open_;
        backends_.erase(PQbackendPID(idle.conn->get()));
      }
      if (open_ < kMaxPoolConnections) break;
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && idle_.empty() &&
          open_ >= kMaxPoolConnections) {
        return Status::Retryable(
            fmt::format("all {} PostgreSQL connections stayed busy for {}s", kMaxPoolConnections,
                        std::chrono::duration_cast<std::chrono::seconds>(kPoolWait).count()));
      }
    }
    if (SteadyClock::now() < retry_after_) return last_error_;
    ++open_;
    lock.unlock();
    Result<std::unique_ptr<Conn>> c = Conn::Connect(url_, target_);
    lock.lock();
    if (!c) {
      --open_;
      cv_.notify_one();
      backoff_ = std::clamp(backoff_ * 2, std::chrono::duration_cast<Duration>(kMinBackoff),
                            std::chrono::duration_cast<Duration>(kMaxBackoff));
      retry_after_ = SteadyClock::now() + backoff_;
      last_error_ = c.error();
      return c.error();
    }
    backoff_ = Duration::zero();
    retry_after_ = {};
    backends_.insert(PQbackendPID((*c)->get()));
    leased_.push_back(c->get());
    return Lease(this, std::move(*c));
  }

  // Asks the server to cancel whatever the leased connections run (Driver::CancelStatements).
  void CancelLeased() {
    std::lock_guard lock(mu_);
    for (const Conn* c : leased_) c->CancelStatement();
  }

  void Release(std::unique_ptr<Conn> c) {
    if (c->ok() && PQtransactionStatus(c->get()) != PQTRANS_IDLE) {
      // A call failed mid-transaction; never hand a half-done transaction to the next caller.
      (void)c->Exec("ROLLBACK");
    }
    const bool closing_ok = c->ok();
    const bool keep = closing_ok && PQtransactionStatus(c->get()) == PQTRANS_IDLE;
    const int backend = PQbackendPID(c->get());
    std::unique_ptr<Conn> closing;  // closed once the lock is released
    {
      std::lock_guard lock(mu_);
      // Out of leased_ before it can be closed: CancelLeased uses what leased_ holds.
      std::erase(leased_, c.get());
      if (keep) {
        idle_.push_back(IdleConn{std::move(c), SteadyClock::now()});
      } else {
        if (!closing_ok) broken_.fetch_add(1, std::memory_order_relaxed);
        --open_;
        backends_.erase(backend);
        closing = std::move(c);
      }
    }
    cv_.notify_one();
  }

  // True if `pid` is the server process of one of this pool's connections.
  bool IsOwnBackend(int pid) {
    std::lock_guard lock(mu_);
    return backends_.contains(pid);
  }

  const std::string& url() const { return url_; }
  const std::string& target() const { return target_; }
  // Connections found closed or broken (by the server, a restart, the network), and the listening
  // connection's breaks that the driver reports here.
  const std::atomic<uint64_t>& broken() const { return broken_; }
  void NoteBroken() { broken_.fetch_add(1, std::memory_order_relaxed); }

 private:
  const std::string url_;
  const std::string target_;
  std::mutex mu_;
  std::condition_variable cv_;
  struct IdleConn {
    std::unique_ptr<Conn> conn;
    SteadyClock::time_point since;  // back in the pool
  };
  // A connection the server closed while it sat in the pool (idle_session_timeout, a restart, a
  // proxy's idle limit) has the server's goodbye, or the end of the stream, waiting to be read.
  // A pooled connection listens to nothing, so anything waiting is taken for that: libpq reads a
  // FATAL that comes while no query runs as a notice and keeps the connection "OK".
  static bool ClosedWhileIdle(PGconn* c) {
    if (PQstatus(c) != CONNECTION_OK) return true;
    pollfd p{PQsocket(c), POLLIN, 0};
    return poll(&p, 1, 0) != 0;
  }
  const std::chrono::milliseconds check_idle_after_;
  std::atomic<uint64_t> broken_{0};
  std::vector<IdleConn> idle_;             // guarded by mu_
  int open_ = 0;                           // guarded by mu_: idle + leased
  Duration backoff_{};                     // guarded by mu_
  SteadyClock::time_point retry_after_{};  // guarded by mu_
  Status last_error_;                      // guarded by mu_
  std::set<int> backends_;                 // guarded by mu_: server pids of open connections
  std::vector<const Conn*> leased_;        // guarded by mu_: connections out of the pool
};

Lease::~Lease() {
  if (conn_) pool_->Release(std::move(conn_));
}

// ---- executors ---------------------------------------------------------------------------------

// Every query, written once over WithConn(); Base is Executor or Tx.
template <typename Base>
class PgExecutor : public Base {
 public:
  explicit PgExecutor(const Channels* channels) : channels_(channels) {}

  Result<std::vector<JobInsertResult>> JobInsertMany(const JobInsertManyParams& params) override {
    SPOOL_RETURN_IF_ERROR(Validate(params, /*returns_rows=*/true));
    if (params.jobs.empty()) return std::vector<JobInsertResult>{};
    std::vector<JobInsertResult> rows;
    rows.reserve(params.jobs.size());
    const Status st = InTx(params.jobs.size() > kInsertChunk, [&](Conn& c) {
      return InsertOn(c, params, &rows, InsertNotifies(params)).status();
    });
    if (!st.ok()) return st;
    return rows;
  }
  Result<int64_t> JobInsertManyFast(const JobInsertManyParams& params) override {
    SPOOL_RETURN_IF_ERROR(Validate(params, /*returns_rows=*/false));
    if (params.jobs.empty()) return int64_t{0};
    int64_t n = 0;
    const Status st = InTx(params.jobs.size() > kInsertChunk, [&](Conn& c) {
      SPOOL_ASSIGN_OR_RETURN(n, InsertOn(c, params, nullptr, InsertNotifies(params)));
      return Status::Ok();
    });
    if (!st.ok()) return st;
    return n;
  }
  Result<std::vector<JobRow>> JobGetAvailable(const JobGetAvailableParams& params) override {
    return Run<std::vector<JobRow>>([&](Conn& c) { return FetchOn(c, params, TxSettings()); });
  }
  Result<int64_t> JobSetStateIfRunningMany(const JobSetStateIfRunningManyParams& params) override {
    return Run<int64_t>([&](Conn& c) { return SetStateOn(c, params, TxSettings()); });
  }
  Result<JobScheduleResult> JobSchedule(const JobScheduleParams& params) override {
    return Run<JobScheduleResult>(
        [&](Conn& c) { return ScheduleOn(c, params, channels_->insert); });
  }
  Result<JobRow> JobGetByID(int64_t id) override {
    return Run<JobRow>([&](Conn& c) { return GetByIdOn(c, id); });
  }
  Result<std::vector<JobRow>> JobList(const JobListParams& params) override {
    return Run<std::vector<JobRow>>([&](Conn& c) { return ListOn(c, params); });
  }
  Result<std::map<JobState, int64_t>> JobCountByState(std::string_view queue) override {
    return Run<std::map<JobState, int64_t>>([&](Conn& c) { return CountOn(c, queue); });
  }

  Result<JobRow> JobCancel(const JobCancelParams& params) override {
    return Run<JobRow>([&](Conn& c) { return CancelOn(c, params, channels_->control); });
  }
  Result<JobRow> JobRetry(const JobRetryParams& params) override {
    return Run<JobRow>([&](Conn& c) { return RetryOn(c, params, channels_->insert); });
  }
  Result<JobRow> JobDelete(int64_t id) override {
    return Run<JobRow>([&](Conn& c) { return DeleteOn(c, id); });
  }
  Result<std::vector<int64_t>> JobGetCancelRequested(const std::vector<int64_t>& ids) override {
    return Run<std::vector<int64_t>>([&](Conn& c) { return CancelRequestedOn(c, ids); });
  }
  Result<std::vector<JobRow>> JobGetStuck(const JobGetStuckParams& params) override {
    return Run<std::vector<JobRow>>([&](Conn& c) { return StuckOn(c, params); });
  }
  Result<int64_t> JobDeleteFinalized(const JobDeleteFinalizedParams& params) override {
    return Run<int64_t>([&](Conn& c) { return DeleteFinalizedOn(c, params); });
  }

  Result<bool> LeaderAttemptElect(const LeaderElectParams& params) override {
    return Run<bool>([&](Conn& c) { return LeaderElectOn(c, params); });
  }
  Result<bool> LeaderAttemptReelect(const LeaderElectParams& params) override {
    return Run<bool>([&](Conn& c) { return LeaderReelectOn(c, params); });
  }
  Status LeaderResign(std::string_view leader_id) override {
    return WithConn([&](Conn& c) {
      return c.Query("spool_leader_resign", kLeaderResignSql, {std::string(leader_id)}).status();
    });
  }
  Result<std::optional<LeaderInfo>> LeaderGet() override {
    return Run<std::optional<LeaderInfo>>([&](Conn& c) { return LeaderGetOn(c); });
  }

  Result<std::optional<TimePoint>> ClientHeartbeat(const ClientHeartbeatParams& params) override {
    return Run<std::optional<TimePoint>>([&](Conn& c) {
      return ClientHeartbeatOn(c, params, *channels_,
                               IgnoresOwnEcho() ? channels_->peers : nullptr);
    });
  }
  Status ClientDelete(std::string_view id) override {
    return WithConn([&](Conn& c) {
      return c.Query("spool_client_delete", kClientDeleteSql, {std::string(id)}).status();
    });
  }
  Result<int64_t> ClientDeleteStale(TimePoint before) override {
    return Run<int64_t>([&](Conn& c) -> Result<int64_t> {
      SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query("spool_client_delete_stale",
                                                   kClientDeleteStaleSql, {Micros(before)}));
      return AffectedRows(res.get());
    });
  }

  Result<bool> QueuePause(std::string_view name, TimePoint now) override {
    return SetPaused("spool_queue_pause", kQueuePauseSql, name, now);
  }
  Result<bool> QueueResume(std::string_view name, TimePoint now) override {
    return SetPaused("spool_queue_resume", kQueueResumeSql, name, now);
  }
  Result<std::vector<QueueInfo>> QueueList() override {
    return Run<std::vector<QueueInfo>>([&](Conn& c) { return QueueListOn(c); });
  }
  Result<std::optional<TimePoint>> QueuePausedAt(std::string_view name) override {
    return Run<std::optional<TimePoint>>([&](Conn& c) { return QueuePausedAtOn(c, name); });
  }
  Result<bool> QueueKnown(std::string_view name) override {
    return Run<bool>([&](Conn& c) -> Result<bool> {
      SPOOL_ASSIGN_OR_RETURN(PgResult res,
                             c.Query("spool_queue_known", kQueueKnownSql, {std::string(name)}));
      return PQntuples(res.get()) > 0 && PQgetvalue(res.get(), 0, 0)[0] == 't';
    });
  }

  Result<std::optional<TimePoint>> PeriodicGetLastTick(std::string_view name) override {
    return Run<std::optional<TimePoint>>([&](Conn& c) { return PeriodicGetOn(c, name); });
  }
  Status PeriodicSetLastTick(std::string_view name, TimePoint tick, TimePoint now) override {
    return WithConn([&](Conn& c) {
      return c
          .Query("spool_periodic_set", kPeriodicSetSql,
                 {std::string(name), Micros(tick), Micros(now)})
          .status();
    });
  }

 protected:
  // The pause statements return their NOTIFY's row only when the pause state changed.
  Result<bool> SetPaused(const char* statement, const char* sql, std::string_view name,
                         TimePoint now) {
    return Run<bool>([&](Conn& c) -> Result<bool> {
      SPOOL_ASSIGN_OR_RETURN(
          PgResult res,
          c.Query(statement, sql, {std::string(name), Micros(now), channels_->control}));
      return PQntuples(res.get()) > 0;
    });
  }

  // Runs `fn` on a connection: a pooled one, or the transaction's own.
  virtual Status WithConn(const std::function<Status(Conn&)>& fn) = 0;
  // True when WithConn's connection is already inside a transaction.
  virtual bool InTransaction() const = 0;
  // True on the pool's connections, whose insert NOTIFYs the listener ignores: the client wakes
  // its own producers after such an insert (or its commit). A caller's connection's echo is
  // the only wake-up this process gets.
  virtual bool IgnoresOwnEcho() const { return true; }
  // The StateTxSettings that claims and outcome writes run after, or null inside a transaction
  // (never a caller's: its settings are its own).
  virtual const pg::Statement* TxSettings() const { return nullptr; }

 private:
  const Channels* channels_;  // the driver's; set before any call

  // One NOTIFY per queue that gets available jobs, sent in the insert's own transaction: every
  // node hears of the jobs when they commit, and never of a rolled-back insert. The listener
  // ignores the echo of this driver's pooled connections (the client wakes its own producers
  // after such an insert), not of a caller's connection: the client cannot wake anything before
  // the caller commits, so that echo is this node's wake-up.
  // Only queues another client works, on the pool's connections (see PeerQueues).
  std::vector<pg::Statement> InsertNotifies(const JobInsertManyParams& params) const {
    std::set<std::string_view> queues;
    for (const JobInsertParams& j : params.jobs) {
      // A job claimed as it is inserted is for no other process (unless its queue is paused,
      // and then its resume wakes every process).
      if (j.state == JobState::kAvailable && !j.claim) queues.insert(j.queue);
    }
    const PeerQueues* peers = IgnoresOwnEcho() ? channels_->peers : nullptr;
    std::vector<pg::Statement> out;
    out.reserve(queues.size());
    for (std::string_view q : queues) {
      if (peers != nullptr && !peers->MayBeWorkedElsewhere(q)) continue;
      out.push_back(NotifyStatement(channels_->insert, std::string(q)));
    }
    return out;
  }

  // max_attempts is a smallint column.
  static Status Validate(const JobInsertManyParams& params, bool returns_rows) {
    return CheckInsertRows(params, 32767, returns_rows);
  }

  template <typename T, typename F>
  Result<T> Run(F&& fn) {
    std::optional<T> out;
    SPOOL_RETURN_IF_ERROR(WithConn([&](Conn& c) {
      Result<T> r = fn(c);
      if (!r) return r.error();
      out = std::move(*r);
      return Status::Ok();
    }));
    return std::move(*out);
  }

  // Wraps `fn` in BEGIN/COMMIT when it needs several statements and no transaction is open.
  Status InTx(bool several, const std::function<Status(Conn&)>& fn) {
    if (!several || InTransaction()) return WithConn(fn);
    return WithConn([&](Conn& c) {
      SPOOL_RETURN_IF_ERROR(c.Exec("BEGIN"));
      Status s = fn(c);
      if (!s.ok()) {
        if (c.ok()) (void)c.Exec("ROLLBACK");
        return s;
      }
      Status commit = c.Exec("COMMIT");
      if (!commit.ok() && commit.IsConnectionLost()) {
        return Status(Status::Code::kCommitInDoubt, commit.message(), commit.native_code());
      }
      return commit;
    });
  }
};

class PoolExecutor final : public PgExecutor<Executor> {
 public:
  PoolExecutor(Pool* pool, const Channels* channels, bool async_state_commits)
      : PgExecutor(channels), pool_(pool), async_state_commits_(async_state_commits) {}

 protected:
  const pg::Statement* TxSettings() const override {
    return &StateTxSettings(async_state_commits_);
  }
  Status WithConn(const std::function<Status(Conn&)>& fn) override {
    SPOOL_ASSIGN_OR_RETURN(Lease lease, pool_->Acquire());
    return fn(*lease);
  }
  bool InTransaction() const override { return false; }

 private:
  Pool* pool_;
  const bool async_state_commits_;
};

// An executor over a caller's PGconn*, inside the caller's transaction. Unnamed statements only:
// the connection is not ours to fill with prepared statements.
class BorrowedExecutor final : public PgExecutor<Executor> {
 public:
  BorrowedExecutor(PGconn* conn, const Channels* channels)
      : PgExecutor(channels), conn_(Conn::Borrow(conn)) {}

 protected:
  Status WithConn(const std::function<Status(Conn&)>& fn) override {
    if (PQstatus(conn_->get()) != CONNECTION_OK) {
      return Status::ConnectionLost("the caller's PostgreSQL connection is not open");
    }
    return fn(*conn_);
  }
  bool InTransaction() const override { return PQtransactionStatus(conn_->get()) != PQTRANS_IDLE; }
  bool IgnoresOwnEcho() const override { return false; }

 private:
  std::unique_ptr<Conn> conn_;
};

class PgTx final : public PgExecutor<Tx> {
 public:
  PgTx(Lease lease, const Channels* channels) : PgExecutor(channels), lease_(std::move(lease)) {}
  ~PgTx() override {
    if (lease_) (void)Rollback();
  }

  Status Commit() override {
    if (!lease_) return Status::FailedPrecondition("transaction already committed or rolled back");
    // The connection goes back to the pool whatever happens (the pool drops it if broken).
    Lease lease = std::move(*lease_);
    lease_.reset();
    PgResult res(PQexec(lease->get(), "COMMIT"));
    ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK) {
      Status s = lease->ErrorFrom(res.get(), "commit");
      if (s.IsConnectionLost()) {
        return Status(Status::Code::kCommitInDoubt,
                      s.message() + " (the commit may or may not have happened)", s.native_code());
      }
      return s;
    }
    // COMMIT of a transaction that already failed answers ROLLBACK instead of an error.
    if (std::string_view(PQcmdStatus(res.get())) == "ROLLBACK") {
      return Status::Internal(
          "commit: the transaction was rolled back because an earlier statement in it failed");
    }
    return Status::Ok();
  }

  Status Rollback() override {
    if (!lease_) return Status::FailedPrecondition("transaction already committed or rolled back");
    Lease lease = std::move(*lease_);
    lease_.reset();
    return lease->Exec("ROLLBACK");
  }

 protected:
  Status WithConn(const std::function<Status(Conn&)>& fn) override {
    if (!lease_) return Status::FailedPrecondition("transaction already committed or rolled back");
    return fn(**lease_);
  }
  bool InTransaction() const override { return true; }

 private:
  std::optional<Lease> lease_;  // empty once committed or rolled back
};

// ---- the driver --------------------------------------------------------------------------------

// `base` ("spool_insert", "spool_control") suffixed by the schema, so that clients of different
// schemas in one database do not wake each other.
std::string ChannelFor(std::string_view base, const std::string& schema) {
  if (schema.empty() || schema == "public") return std::string(base);
  std::string ch = fmt::format("{}_{}", base, schema);
  // Identifiers are truncated at 63 bytes; a hash keeps long schema names distinct.
  if (ch.size() > 63) ch = fmt::format("{}_{:016x}", base, std::hash<std::string>{}(schema));
  return ch;
}

// A pool of connections behind the shared executor, plus one LISTEN connection for
// WaitForChange. Tx and executors from ExecutorFor must not outlive the driver.
class PostgresDriver final : public Driver {
 public:
  PostgresDriver(std::string url, std::string target, const DriverOptions& options)
      : pool_(std::move(url), std::move(target), options.pg_check_idle_after),
        executor_(&pool_, &channels_, !options.postgres.synchronous_state_commits),
        async_state_commits_(!options.postgres.synchronous_state_commits),
        listen_enabled_(options.listen) {
    event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  }
  ~PostgresDriver() override {
    if (event_fd_ >= 0) close(event_fd_);
  }

  // Connects once (checking the url), learns the schema for the notification channel, and
  // starts listening so that notifications sent after Open are never missed.
  Status Init() {
    if (event_fd_ < 0) {
      return Status::Internal(fmt::format("eventfd failed: {}", std::strerror(errno)));
    }
    {
      SPOOL_ASSIGN_OR_RETURN(Lease lease, pool_.Acquire());
      SPOOL_ASSIGN_OR_RETURN(PgResult res,
                             lease->Query("", "SELECT coalesce(current_schema(), '')", {}));
      channels_.insert = ChannelFor("spool_insert", PQgetvalue(res.get(), 0, 0));
      channels_.control = ChannelFor("spool_control", PQgetvalue(res.get(), 0, 0));
      channels_.peers = &peers_;
    }
    return listen_enabled_ ? Listen() : Status::Ok();
  }

  std::string_view Name() const override { return "postgres"; }
  Executor& executor() override { return executor_; }
  const std::atomic<uint64_t>* PossibleCommitLosses() const override {
    return async_state_commits_ ? &pool_.broken() : nullptr;
  }

  Result<std::unique_ptr<Tx>> Begin() override {
    SPOOL_ASSIGN_OR_RETURN(Lease lease, pool_.Acquire());
    SPOOL_RETURN_IF_ERROR(lease->Exec("BEGIN"));
    return std::unique_ptr<Tx>(new PgTx(std::move(lease), &channels_));
  }

  Result<std::unique_ptr<Executor>> ExecutorFor(TxRef tx) override {
    if (tx.kind() != TxRef::Kind::kPostgres) {
      return Status::InvalidArgument(
          "transaction handle is not a PostgreSQL connection: this client uses PostgreSQL, use "
          "spool::PostgresTx(conn)");
    }
    if (tx.handle() == nullptr) return Status::InvalidArgument("PostgresTx(nullptr)");
    auto* conn = static_cast<PGconn*>(tx.handle());
    // Outside a transaction each statement would commit on its own: the job would exist whatever
    // the caller did next, which is what a Tx call promises it will not.
    switch (PQtransactionStatus(conn)) {
      case PQTRANS_INTRANS:
        break;
      case PQTRANS_IDLE:
        return Status::InvalidArgument(
            "PostgresTx(conn): the connection has no open transaction: run BEGIN on it first "
            "(the job then exists only if you COMMIT)");
      case PQTRANS_INERROR:
        return Status::InvalidArgument(
            "PostgresTx(conn): the connection's transaction has failed: roll it back first");
      default:
        return Status::InvalidArgument(
            "PostgresTx(conn): the connection is busy with a command or is not connected");
    }
    return std::unique_ptr<Executor>(new BorrowedExecutor(conn, &channels_));
  }

  const std::vector<Migration>& Migrations() const override { return PostgresMigrations(); }

  Result<int> SchemaVersion() override {
    SPOOL_ASSIGN_OR_RETURN(Lease lease, pool_.Acquire());
    return VersionOn(*lease);
  }

  Status MigrateUp(int target) override {
    const int latest = LatestVersion(*this);
    if (target < 0 || target > latest) {
      return Status::InvalidArgument(
          fmt::format("cannot migrate up to version {}: this build of spool knows versions 1..{}",
                      target, latest));
    }
    for (const Migration& m : Migrations()) {
      if (m.version > target) break;
      SPOOL_RETURN_IF_ERROR(Apply(m, /*up=*/true));
    }
    return Status::Ok();
  }

  Status MigrateDown(int target) override {
    if (target < 0) {
      return Status::InvalidArgument(
          fmt::format("cannot migrate down to version {}: use 0 to remove every table", target));
    }
    const auto& ms = Migrations();
    for (auto it = ms.rbegin(); it != ms.rend(); ++it) {
      if (it->version <= target) break;
      SPOOL_RETURN_IF_ERROR(Apply(*it, /*up=*/false));
    }
    return Status::Ok();
  }

  Result<bool> WaitForChange(Duration timeout) override {
    const auto deadline = SteadyClock::now() + timeout;
    if (!listen_enabled_) return WaitForInterrupt(deadline);
    if (!listen_ || !listen_->ok()) {
      listen_.reset();
      if (SteadyClock::now() < listen_retry_after_) return listen_error_;
      SPOOL_RETURN_IF_ERROR(Listen());
      // Notifications sent while we were disconnected are lost: report a possible change.
      return true;
    }
    for (;;) {
      SPOOL_ASSIGN_OR_RETURN(bool notified, DrainNotifications());
      if (notified) return true;
      const auto now = SteadyClock::now();
      if (now >= deadline) return false;
      pollfd fds[2] = {{PQsocket(listen_->get()), POLLIN, 0}, {event_fd_, POLLIN, 0}};
      const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now);
      timespec ts{static_cast<time_t>(left.count() / 1'000'000'000),
                  static_cast<long>(left.count() % 1'000'000'000)};
      const int rc = ppoll(fds, 2, &ts, nullptr);
      if (rc < 0 && errno != EINTR) {
        return Status::Internal(fmt::format("poll failed: {}", std::strerror(errno)));
      }
      if (rc > 0 && (fds[1].revents & POLLIN) != 0) {
        uint64_t n = 0;
        (void)!read(event_fd_, &n, sizeof n);
        return true;
      }
    }
  }

  // Poll-only mode: no notifications to wait for, only the timeout or an Interrupt.
  Result<bool> WaitForInterrupt(SteadyClock::time_point deadline) {
    for (;;) {
      const auto now = SteadyClock::now();
      if (now >= deadline) return false;
      pollfd fd{event_fd_, POLLIN, 0};
      const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now);
      timespec ts{static_cast<time_t>(left.count() / 1'000'000'000),
                  static_cast<long>(left.count() % 1'000'000'000)};
      const int rc = ppoll(&fd, 1, &ts, nullptr);
      if (rc < 0 && errno != EINTR) {
        return Status::Internal(fmt::format("poll failed: {}", std::strerror(errno)));
      }
      if (rc > 0 && (fd.revents & POLLIN) != 0) {
        uint64_t n = 0;
        (void)!read(event_fd_, &n, sizeof n);
        return true;
      }
    }
  }

  void Interrupt() override {
    const uint64_t one = 1;
    (void)!write(event_fd_, &one, sizeof one);
  }
  void CancelStatements() override { pool_.CancelLeased(); }

 private:
  static Result<int> VersionOn(Conn& c) {
    SPOOL_ASSIGN_OR_RETURN(PgResult exists,
                           c.Query("", "SELECT to_regclass('spool_migration') IS NOT NULL", {}));
    if (std::string_view(PQgetvalue(exists.get(), 0, 0)) != "t") return 0;
    SPOOL_ASSIGN_OR_RETURN(
        PgResult res,
        c.Query("", "SELECT coalesce(max(version), 0) FROM spool_migration WHERE line = 'main'",
                {}));
    SPOOL_ASSIGN_OR_RETURN(int64_t v, ParseInt(PQgetvalue(res.get(), 0, 0), "version"));
    return static_cast<int>(v);
  }

  // One migration step in its own transaction, serialised across processes by an advisory lock
  // (per schema) and re-checked under it, so concurrent `migration up`s apply each step once.
  // The lock is the session's, taken before BEGIN: a transaction that waited for a lock taken
  // inside it still holds the catalog caches of before the wait, and a negative entry for
  // spool_migration there made a racing first `migration up` create it a second time.
  Status Apply(const Migration& m, bool up) {
    SPOOL_ASSIGN_OR_RETURN(Lease lease, pool_.Acquire());
    Conn& c = *lease;
    static constexpr std::string_view kKey = "hashtext(coalesce(current_schema(), '') || '.spool')";
    SPOOL_RETURN_IF_ERROR(
        c.Query("", fmt::format("SELECT pg_advisory_lock({})", kKey), {}).status());
    auto unlock = [&] {
      if (c.ok()) (void)c.Query("", fmt::format("SELECT pg_advisory_unlock({})", kKey), {});
    };
    if (Status begin = c.Exec("BEGIN"); !begin.ok()) {
      unlock();
      return begin;
    }
    auto fail = [&](const Status& s) {
      if (c.ok()) (void)c.Exec("ROLLBACK");
      unlock();
      return s.WithContext(
          fmt::format("migration {} {} ({})", up ? "up" : "down", m.version, m.name));
    };
    Result<int> current = VersionOn(c);
    if (!current) return fail(current.error());
    if (up ? *current >= m.version : *current < m.version) {
      Status rollback = c.Exec("ROLLBACK");  // already done by someone else
      unlock();
      return rollback;
    }
    if (!up) {
      Result<PgResult> del =
          c.Query("", "DELETE FROM spool_migration WHERE line = 'main' AND version = $1",
                  {std::to_string(m.version)});
      if (!del) return fail(del.error());
    }
    if (Status s = c.Exec(up ? m.up : m.down); !s.ok()) return fail(s);
    if (up) {
      Result<PgResult> ins =
          c.Query("", "INSERT INTO spool_migration (line, version, name) VALUES ('main', $1, $2)",
                  {std::to_string(m.version), m.name});
      if (!ins) return fail(ins.error());
    }
    Status commit = c.Exec("COMMIT");
    if (!commit.ok()) return fail(commit);
    unlock();
    return Status::Ok();
  }

  Status Listen() {
    Result<std::unique_ptr<Conn>> c = Conn::Connect(pool_.url(), pool_.target());
    Status s = c ? Status::Ok() : c.error();
    if (c) {
      for (const std::string* channel : {&channels_.insert, &channels_.control}) {
        char* ident = PQescapeIdentifier((*c)->get(), channel->c_str(), channel->size());
        if (ident == nullptr) {
          s = (*c)->ErrorFrom(nullptr, "listen");
        } else {
          s = (*c)->Exec(fmt::format("LISTEN {}", ident));
          PQfreemem(ident);
        }
        if (!s.ok()) break;
      }
    }
    if (!s.ok()) {
      listen_backoff_ =
          std::clamp(listen_backoff_ * 2, std::chrono::duration_cast<Duration>(kMinBackoff),
                     std::chrono::duration_cast<Duration>(kMaxBackoff));
      listen_retry_after_ = SteadyClock::now() + listen_backoff_;
      listen_error_ = s;
      return s;
    }
    listen_backoff_ = Duration::zero();
    listen_ = std::move(*c);
    return Status::Ok();
  }

  // True if any notification arrived; ConnectionLost (and a reconnect next call) if it broke.
  Result<bool> DrainNotifications() {
    if (PQconsumeInput(listen_->get()) == 0) {
      Status s = listen_->ErrorFrom(nullptr, "waiting for notifications");
      listen_.reset();
      pool_.NoteBroken();
      return Status(Status::Code::kConnectionLost, s.message(), "08006");
    }
    bool any = false;
    while (PGnotify* n = PQnotifies(listen_->get())) {
      // An insert through this driver already woke this process's producers directly: its echo
      // would only cost every queue an extra, empty fetch.
      if (channels_.insert != n->relname || !pool_.IsOwnBackend(n->be_pid)) any = true;
      // Another client joined: its queues count from now on, not from the next heartbeat.
      if (channels_.control == n->relname && kClientJoinedPayload == n->extra &&
          !pool_.IsOwnBackend(n->be_pid)) {
        peers_.Forget();
      }
      PQfreemem(n);
    }
    return any;
  }

  Pool pool_;
  PeerQueues peers_;
  // Both set by Init, before any call that reads them.
  Channels channels_;
  PoolExecutor executor_;
  const bool async_state_commits_;
  int event_fd_ = -1;
  // Used only by the one thread that calls WaitForChange.
  const bool listen_enabled_;  // false: poll-only, no LISTEN connection at all
  std::unique_ptr<Conn> listen_;
  Duration listen_backoff_{};
  SteadyClock::time_point listen_retry_after_{};
  Status listen_error_;
};

}  // namespace

const std::string& PostgresFetchSql(bool after) { return FetchSql(after); }
const std::string& PostgresScheduleSql() {
  static const std::string* const kSql = new std::string(kScheduleSql);
  return *kSql;
}
const std::string& PostgresDeleteFinalizedSql() {
  static const std::string* const kSql = new std::string(kDeleteFinalizedSql);
  return *kSql;
}
const std::string& PostgresSetStateSql() { return SetStateSql(); }
const std::string& PostgresCompleteSql() { return CompleteSql(); }

const std::string& PostgresCancelRequestedSql() {
  static const std::string* const kSql = new std::string(kCancelRequestedSql);
  return *kSql;
}

Result<std::unique_ptr<Driver>> OpenPostgresDriver(std::string url, const DriverOptions& options) {
  std::string target = pg::DescribeTarget(url);
  auto driver = std::make_unique<PostgresDriver>(std::move(url), std::move(target), options);
  SPOOL_RETURN_IF_ERROR(driver->Init());
  return std::unique_ptr<Driver>(std::move(driver));
}

}  // namespace spool::internal
