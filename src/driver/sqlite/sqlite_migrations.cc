#include "driver/sqlite/sqlite_migrations.h"

#include <fmt/format.h>

#include <iterator>
#include <string>
#include <string_view>

#include "driver/state_codes.h"
#include "spool/job.h"

namespace spool::internal {

namespace {

// Times are INTEGER microseconds since the Unix epoch (TimePoint's resolution). JSON columns are
// TEXT. The bit positions of unique_states follow JobState's order: available 0, scheduled 1,
// running 2, retryable 3, completed 4, cancelled 5, discarded 6, pending 7.
constexpr const char* kMigration1Up = R"sql(
CREATE TABLE spool_migration (
  line TEXT NOT NULL,
  version INTEGER NOT NULL,
  name TEXT NOT NULL,
  applied_at INTEGER NOT NULL,
  PRIMARY KEY (line, version)
) STRICT;

-- AUTOINCREMENT: ids are never reused after the cleaner deletes the newest rows, so an id in a
-- log line or an event always means one job.
CREATE TABLE spool_job (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  state TEXT NOT NULL DEFAULT 'available' CHECK (state IN ('available', 'scheduled', 'running',
    'retryable', 'completed', 'cancelled', 'discarded', 'pending')),
  attempt INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
  max_attempts INTEGER NOT NULL DEFAULT 25 CHECK (max_attempts > 0),
  attempted_at INTEGER,
  attempted_by TEXT NOT NULL DEFAULT '[]',
  created_at INTEGER NOT NULL,
  scheduled_at INTEGER NOT NULL,
  finalized_at INTEGER,
  priority INTEGER NOT NULL DEFAULT 1 CHECK (priority BETWEEN 1 AND 4),
  queue TEXT NOT NULL DEFAULT 'default' CHECK (length(queue) BETWEEN 1 AND 128),
  kind TEXT NOT NULL CHECK (length(kind) > 0),
  args TEXT NOT NULL DEFAULT '{}',
  metadata TEXT NOT NULL DEFAULT '{}',
  tags TEXT NOT NULL DEFAULT '[]',
  errors TEXT NOT NULL DEFAULT '[]',
  unique_key BLOB,
  unique_states INTEGER,
  CHECK ((state IN ('completed', 'cancelled', 'discarded')) = (finalized_at IS NOT NULL))
) STRICT;

-- Indexes are partial wherever a query reads one state, so a job moving available -> running ->
-- completed touches only the indexes of the states it enters and leaves: each index entry
-- written costs B-tree pages on every claim and completion, the hot path.
-- Fetch: state = 'available' AND queue = ? ORDER BY priority, scheduled_at, id. The rowid (id) is
-- the implicit last key of every index, so it need not be listed.
CREATE INDEX spool_job_fetch_idx ON spool_job (queue, priority, scheduled_at)
  WHERE state = 'available';
-- Scheduler: due scheduled and retryable jobs.
CREATE INDEX spool_job_schedule_idx ON spool_job (state, scheduled_at)
  WHERE state IN ('scheduled', 'retryable');
-- Rescuer: running jobs by when they started.
CREATE INDEX spool_job_running_idx ON spool_job (attempted_at) WHERE state = 'running';
-- Cleaner: finalized jobs by age.
CREATE INDEX spool_job_finalized_idx ON spool_job (state, finalized_at)
  WHERE finalized_at IS NOT NULL;
-- Admin listing by kind scans instead: an index on kind would cost every insert.
-- Unique jobs: one row per key among the rows whose state is in the key's state set.
CREATE UNIQUE INDEX spool_job_unique_idx ON spool_job (unique_key)
  WHERE unique_key IS NOT NULL AND unique_states IS NOT NULL AND
    (unique_states >> CASE state
      WHEN 'available' THEN 0 WHEN 'scheduled' THEN 1 WHEN 'running' THEN 2
      WHEN 'retryable' THEN 3 WHEN 'completed' THEN 4 WHEN 'cancelled' THEN 5
      WHEN 'discarded' THEN 6 WHEN 'pending' THEN 7 END) & 1 = 1;

CREATE TABLE spool_leader (
  name TEXT PRIMARY KEY NOT NULL DEFAULT 'default' CHECK (name = 'default'),
  leader_id TEXT NOT NULL CHECK (length(leader_id) BETWEEN 1 AND 128),
  elected_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL
) STRICT;

CREATE TABLE spool_queue (
  name TEXT PRIMARY KEY NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
  paused_at INTEGER,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  metadata TEXT NOT NULL DEFAULT '{}'
) STRICT;

CREATE TABLE spool_client (
  id TEXT PRIMARY KEY NOT NULL CHECK (length(id) BETWEEN 1 AND 255),
  started_at INTEGER NOT NULL,
  heartbeat_at INTEGER NOT NULL,
  queues TEXT NOT NULL DEFAULT '[]'
) STRICT;

-- The last tick each periodic (cron) job was enqueued for, so restarts neither repeat nor drop
-- a tick.
CREATE TABLE spool_periodic (
  name TEXT PRIMARY KEY NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
  last_tick_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
) STRICT;
)sql";

constexpr const char* kMigration1Down = R"sql(
DROP TABLE IF EXISTS spool_periodic;
DROP TABLE IF EXISTS spool_client;
DROP TABLE IF EXISTS spool_queue;
DROP TABLE IF EXISTS spool_leader;
DROP TABLE IF EXISTS spool_job;
DROP TABLE IF EXISTS spool_migration;
)sql";

// Version 2: spool_job's CHECK constraints without IN lists. SQLite evaluated version 1's
// `state IN (...)` checks on every claim and completion at about 40% of those statements' cost;
// chains of `=` are nearly free. A CHECK cannot be altered in SQLite, so the table is rebuilt with
// the same columns, rows and ids; AUTOINCREMENT's high-water mark is carried over so that no id is
// ever reused. The indexes go with the old table and are recreated as version 1 had them.
constexpr const char* kJobTableV2 = R"sql(
-- spool_job's CHECKs without IN lists, which cost SQLite time on every claim and completion.
-- The table is rebuilt; rows and ids are kept.
CREATE TABLE spool_job_new (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  state TEXT NOT NULL DEFAULT 'available' CHECK (state = 'available' OR state = 'scheduled' OR
    state = 'running' OR state = 'retryable' OR state = 'completed' OR state = 'cancelled' OR
    state = 'discarded' OR state = 'pending'),
  attempt INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
  max_attempts INTEGER NOT NULL DEFAULT 25 CHECK (max_attempts > 0),
  attempted_at INTEGER,
  attempted_by TEXT NOT NULL DEFAULT '[]',
  created_at INTEGER NOT NULL,
  scheduled_at INTEGER NOT NULL,
  finalized_at INTEGER,
  priority INTEGER NOT NULL DEFAULT 1 CHECK (priority BETWEEN 1 AND 4),
  queue TEXT NOT NULL DEFAULT 'default' CHECK (length(queue) BETWEEN 1 AND 128),
  kind TEXT NOT NULL CHECK (length(kind) > 0),
  args TEXT NOT NULL DEFAULT '{}',
  metadata TEXT NOT NULL DEFAULT '{}',
  tags TEXT NOT NULL DEFAULT '[]',
  errors TEXT NOT NULL DEFAULT '[]',
  unique_key BLOB,
  unique_states INTEGER,
  CHECK ((state = 'completed' OR state = 'cancelled' OR state = 'discarded') =
    (finalized_at IS NOT NULL))
) STRICT;)sql";

// Version 3: spool_job.state as an INTEGER, JobState's position (available 0, scheduled 1, running
// 2, retryable 3, completed 4, cancelled 5, discarded 6, pending 7: the bit positions unique_states
// already uses). Comparing text states was the largest single cost left in a claim and an outcome
// write: the CHECKs, every partial index's WHERE (for the old and the new row) and the unique
// index's CASE compare the state, and SQLite compares text through its collation code, integers
// inline. Counted on a model of the claim/complete cycle: 11% fewer instructions a job
// (docs/benchmarks.md). spool_job_state names the codes for people reading the table by hand.
constexpr const char* kJobTableV3 = R"sql(
-- spool_job.state as an INTEGER (JobState's position; spool_job_state names them): comparing
-- text states cost SQLite more than anything else in a claim and an outcome write.
CREATE TABLE spool_job_state (
  state INTEGER PRIMARY KEY NOT NULL,
  name TEXT NOT NULL UNIQUE
) STRICT;
INSERT INTO spool_job_state (state, name) VALUES (0, 'available'), (1, 'scheduled'),
  (2, 'running'), (3, 'retryable'), (4, 'completed'), (5, 'cancelled'), (6, 'discarded'),
  (7, 'pending');

CREATE TABLE spool_job_new (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  state INTEGER NOT NULL DEFAULT 0 CHECK (state BETWEEN 0 AND 7),
  attempt INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
  max_attempts INTEGER NOT NULL DEFAULT 25 CHECK (max_attempts > 0),
  attempted_at INTEGER,
  attempted_by TEXT NOT NULL DEFAULT '[]',
  created_at INTEGER NOT NULL,
  scheduled_at INTEGER NOT NULL,
  finalized_at INTEGER,
  priority INTEGER NOT NULL DEFAULT 1 CHECK (priority BETWEEN 1 AND 4),
  queue TEXT NOT NULL DEFAULT 'default' CHECK (length(queue) BETWEEN 1 AND 128),
  kind TEXT NOT NULL CHECK (length(kind) > 0),
  args TEXT NOT NULL DEFAULT '{}',
  metadata TEXT NOT NULL DEFAULT '{}',
  tags TEXT NOT NULL DEFAULT '[]',
  errors TEXT NOT NULL DEFAULT '[]',
  unique_key BLOB,
  unique_states INTEGER,
  -- completed, cancelled and discarded are the final states.
  CHECK ((state BETWEEN 4 AND 6) = (finalized_at IS NOT NULL))
) STRICT;)sql";

// Version 3's indexes: version 1's, with the states as their codes.
constexpr const char* kIndexesV3 = R"sql(
-- Fetch: available (0) jobs of a queue by priority, scheduled_at, id.
CREATE INDEX spool_job_fetch_idx ON spool_job (queue, priority, scheduled_at) WHERE state = 0;
-- Scheduler: due scheduled (1) and retryable (3) jobs.
CREATE INDEX spool_job_schedule_idx ON spool_job (state, scheduled_at) WHERE state IN (1, 3);
-- Rescuer: running (2) jobs by when they started.
CREATE INDEX spool_job_running_idx ON spool_job (attempted_at) WHERE state = 2;
-- Cleaner: finalized jobs by age.
CREATE INDEX spool_job_finalized_idx ON spool_job (state, finalized_at)
  WHERE finalized_at IS NOT NULL;
-- Unique jobs: one row per key among the rows whose state's bit is set in unique_states.
CREATE UNIQUE INDEX spool_job_unique_idx ON spool_job (unique_key)
  WHERE unique_key IS NOT NULL AND unique_states IS NOT NULL AND (unique_states >> state) & 1 = 1;
)sql";

// Version 1's indexes, for the tables with text states.
std::string IndexesV1() {
  return SqlBetween(kMigration1Up, "-- Indexes are partial", "CREATE TABLE spool_leader");
}

// Replaces spool_job by the table that `create_new` creates as spool_job_new, keeping rows, ids and
// the AUTOINCREMENT high-water mark (the state through `state_expr`, an expression of the old
// row's state), then creates `indexes`.
std::string RebuildJobTable(const std::string& create_new, std::string_view state_expr,
                            const std::string& indexes) {
  constexpr std::string_view kColumns =
      "attempt, max_attempts, attempted_at, attempted_by, created_at, scheduled_at, "
      "finalized_at, priority, queue, kind, args, metadata, tags, errors, unique_key, "
      "unique_states";
  return fmt::format(
      "{0}\n"
      "INSERT INTO spool_job_new (id, state, {1})\n  SELECT id, {2}, {1} FROM spool_job;\n"
      "DELETE FROM sqlite_sequence WHERE name = 'spool_job_new';\n"
      "INSERT INTO sqlite_sequence (name, seq)\n"
      "  SELECT 'spool_job_new', seq FROM sqlite_sequence WHERE name = 'spool_job';\n"
      "DROP TABLE spool_job;\n"
      "ALTER TABLE spool_job_new RENAME TO spool_job;\n\n"
      "{3}",
      create_new, kColumns, state_expr, indexes);
}

// Version 1's spool_job, created as spool_job_new: what version 2's down restores.
std::string JobTableV1() {
  std::string ddl = SqlBetween(kMigration1Up, "CREATE TABLE spool_job (", "\n\n");
  ddl.replace(0, std::string_view("CREATE TABLE spool_job").size(), "CREATE TABLE spool_job_new");
  return ddl;
}

std::string MigrationV3Down() {
  return RebuildJobTable(kJobTableV2, StateNameSql("state"), IndexesV1()) +
         "\nDROP TABLE spool_job_state;\n";
}

}  // namespace

const std::vector<Migration>& SqliteMigrations() {
  static const std::vector<Migration>* const kMigrations = new std::vector<Migration>{
      {1, "create_tables", kMigration1Up, kMigration1Down},
      {2, "cheap_job_checks", RebuildJobTable(kJobTableV2, "state", IndexesV1()),
       RebuildJobTable(JobTableV1(), "state", IndexesV1())},
      {3, "integer_job_states",
       RebuildJobTable(kJobTableV3,
                       "(SELECT s.state FROM spool_job_state s WHERE s.name = spool_job.state)",
                       kIndexesV3),
       MigrationV3Down()},
  };
  return *kMigrations;
}

}  // namespace spool::internal
