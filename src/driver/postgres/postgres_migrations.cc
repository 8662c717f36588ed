#include "driver/postgres/postgres_migrations.h"

#include <fmt/format.h>

#include <iterator>
#include <string>
#include <string_view>

#include "driver/state_codes.h"
#include "spool/job.h"

namespace spool::internal {
namespace {

// Tables are created unqualified, in the first schema of the connection's search_path, so an
// application (or a test) can keep spool in its own schema with options=-csearch_path=...
// Mirrors the SQLite schema column for column (src/driver/sqlite/sqlite_migrations.cc) with
// native types: timestamptz (microsecond precision, like TimePoint), jsonb, text[], bytea. The bit
// positions of unique_states follow JobState's order: available 0, scheduled 1, running 2,
// retryable 3, completed 4, cancelled 5, discarded 6, pending 7.
constexpr const char* kUp1 = R"sql(
CREATE TABLE spool_migration (
  line text NOT NULL,
  version bigint NOT NULL,
  name text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (line, version)
);

CREATE TABLE spool_job (
  id bigserial PRIMARY KEY,
  state text NOT NULL DEFAULT 'available' CHECK (state IN ('available', 'scheduled', 'running',
    'retryable', 'completed', 'cancelled', 'discarded', 'pending')),
  attempt smallint NOT NULL DEFAULT 0 CHECK (attempt >= 0),
  max_attempts smallint NOT NULL DEFAULT 25 CHECK (max_attempts > 0),
  attempted_at timestamptz,
  attempted_by text[] NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  scheduled_at timestamptz NOT NULL DEFAULT now(),
  finalized_at timestamptz,
  priority smallint NOT NULL DEFAULT 1 CHECK (priority BETWEEN 1 AND 4),
  queue text NOT NULL DEFAULT 'default' CHECK (char_length(queue) BETWEEN 1 AND 128),
  kind text NOT NULL CHECK (char_length(kind) > 0),
  args jsonb NOT NULL DEFAULT '{}',
  metadata jsonb NOT NULL DEFAULT '{}',
  tags text[] NOT NULL DEFAULT '{}',
  errors jsonb NOT NULL DEFAULT '[]',
  unique_key bytea,
  unique_states integer,
  CHECK ((state IN ('completed', 'cancelled', 'discarded')) = (finalized_at IS NOT NULL))
);

-- Indexes are partial wherever a query reads one state (like the SQLite schema), so a job moving
-- available -> running -> completed touches only the index entries of the states it enters:
-- every entry written costs on each claim and completion, the hot path.
-- Fetch: state = 'available' AND queue = $1 ORDER BY priority, scheduled_at, id.
CREATE INDEX spool_job_fetch_idx ON spool_job (queue, priority, scheduled_at, id)
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
-- Unique jobs: one row per key among the rows whose state is in the key's state set. Inserts
-- rely on it (ON CONFLICT DO NOTHING), so two processes racing cannot both insert a key.
CREATE UNIQUE INDEX spool_job_unique_idx ON spool_job (unique_key)
  WHERE unique_key IS NOT NULL AND unique_states IS NOT NULL AND
    (unique_states >> CASE state
      WHEN 'available' THEN 0 WHEN 'scheduled' THEN 1 WHEN 'running' THEN 2
      WHEN 'retryable' THEN 3 WHEN 'completed' THEN 4 WHEN 'cancelled' THEN 5
      WHEN 'discarded' THEN 6 WHEN 'pending' THEN 7 END) & 1 = 1;

CREATE TABLE spool_leader (
  name text PRIMARY KEY DEFAULT 'default' CHECK (name = 'default'),
  leader_id text NOT NULL CHECK (char_length(leader_id) BETWEEN 1 AND 128),
  elected_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL
);

CREATE TABLE spool_queue (
  name text PRIMARY KEY CHECK (char_length(name) BETWEEN 1 AND 128),
  paused_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  metadata jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE spool_client (
  id text PRIMARY KEY CHECK (char_length(id) BETWEEN 1 AND 255),
  started_at timestamptz NOT NULL DEFAULT now(),
  heartbeat_at timestamptz NOT NULL DEFAULT now(),
  queues jsonb NOT NULL DEFAULT '[]'
);

-- The last tick each periodic (cron) job was enqueued for, so restarts neither repeat nor drop
-- a tick.
CREATE TABLE spool_periodic (
  name text PRIMARY KEY CHECK (char_length(name) BETWEEN 1 AND 255),
  last_tick_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL
);
)sql";

constexpr const char* kDown1 = R"sql(
DROP TABLE IF EXISTS spool_periodic;
DROP TABLE IF EXISTS spool_client;
DROP TABLE IF EXISTS spool_queue;
DROP TABLE IF EXISTS spool_leader;
DROP TABLE IF EXISTS spool_job;
DROP TABLE IF EXISTS spool_migration;
)sql";

// The fetch index keyed by a 64-bit hash of the queue name instead of the name. Every insert of
// an available job descends this index comparing its key with about 16 others, and with the
// name first (a variable-length column) PostgreSQL finds each later column by walking the tuple
// from its start and compares the names through the collation's function: 19,000 instructions a
// row under callgrind, 40% of what a bulk COPY costs the server. With fixed-width columns only the
// offsets are known and the comparisons are integer ones: the COPY's cost drops by a fifth
// (docs/benchmarks.md). The fetch compares the hash and rechecks the name, so two queues whose
// names collide only share index entries, never jobs. The key ends in the unique id, so there are
// no duplicates to merge: deduplication would only scan each full page before it splits.
constexpr const char* kUp2 = R"sql(
DROP INDEX spool_job_fetch_idx;
CREATE INDEX spool_job_fetch_idx
  ON spool_job (hashtextextended(queue, 0), priority, scheduled_at, id)
  WITH (deduplicate_items = off) WHERE state = 'available';
)sql";

constexpr const char* kDown2 = R"sql(
DROP INDEX spool_job_fetch_idx;
CREATE INDEX spool_job_fetch_idx ON spool_job (queue, priority, scheduled_at, id)
  WHERE state = 'available';
)sql";

// Version 3: spool_job.state holds JobState's position as a smallint, as on SQLite since its
// version 3; spool_job_state names the codes for people reading the table by hand. Every claim
// and outcome write evaluates the state CHECKs and each partial index's WHERE on the new row, and
// the finalized index compares the state first: as text, through a variable-length column and the
// collation. Counted on the server alone, a claim and a completion cost 5% fewer instructions a
// job, a bulk insert 5% fewer a row (docs/benchmarks.md). The column's type changes in place, so
// the table is rewritten.
constexpr const char* kIndexesV3 = R"sql(
CREATE INDEX spool_job_fetch_idx
  ON spool_job (hashtextextended(queue, 0), priority, scheduled_at, id)
  WITH (deduplicate_items = off) WHERE state = 0;
CREATE INDEX spool_job_schedule_idx ON spool_job (state, scheduled_at) WHERE state IN (1, 3);
CREATE INDEX spool_job_running_idx ON spool_job (attempted_at) WHERE state = 2;
CREATE INDEX spool_job_finalized_idx ON spool_job (state, finalized_at)
  WHERE finalized_at IS NOT NULL;
CREATE UNIQUE INDEX spool_job_unique_idx ON spool_job (unique_key)
  WHERE unique_key IS NOT NULL AND unique_states IS NOT NULL AND (unique_states >> state) & 1 = 1;
)sql";

constexpr const char* kDropIndexes =
    "DROP INDEX spool_job_fetch_idx, spool_job_schedule_idx, spool_job_running_idx,\n"
    "  spool_job_finalized_idx, spool_job_unique_idx;\n";

// spool_job.state's type changed in place to `type` through `convert`, with its default and the
// two CHECKs that read it.
std::string AlterState(std::string_view type, std::string_view convert, std::string_view fallback,
                       std::string_view valid, std::string_view final_states) {
  return fmt::format(
      "ALTER TABLE spool_job DROP CONSTRAINT spool_job_state_check,\n"
      "  DROP CONSTRAINT spool_job_check,\n"
      "  ALTER COLUMN state DROP DEFAULT,\n"
      "  ALTER COLUMN state TYPE {} USING {},\n"
      "  ALTER COLUMN state SET DEFAULT {},\n"
      "  ADD CONSTRAINT spool_job_state_check CHECK ({}),\n"
      "  ADD CONSTRAINT spool_job_check CHECK (({}) = (finalized_at IS NOT NULL));\n",
      type, convert, fallback, valid, final_states);
}

std::string Up3() {
  std::string names;
  for (JobState s : kAllJobStates) {
    fmt::format_to(std::back_inserter(names), "{}({}, '{}')", names.empty() ? "" : ", ",
                   StateCode(s), JobStateName(s));
  }
  return fmt::format(
             "CREATE TABLE spool_job_state (\n  state smallint PRIMARY KEY,\n"
             "  name text NOT NULL UNIQUE\n);\n"
             "INSERT INTO spool_job_state (state, name) VALUES {};\n",
             names) +
         kDropIndexes +
         AlterState("smallint", StateCodeSql("state"), SPOOL_AVAILABLE, "state BETWEEN 0 AND 7",
                    "state BETWEEN 4 AND 6") +
         kIndexesV3;
}

// Back to names: version 2's fetch index and version 1's others.
std::string Down3() {
  std::string_view fetch = kUp2;
  fetch.remove_prefix(fetch.find("CREATE INDEX"));
  return kDropIndexes +
         AlterState("text", StateNameSql("state"), "'available'",
                    "state IN ('available', 'scheduled', 'running', 'retryable', 'completed', "
                    "'cancelled', 'discarded', 'pending')",
                    "state IN ('completed', 'cancelled', 'discarded')") +
         std::string(fetch) + SqlBetween(kUp1, "-- Scheduler:", "\nCREATE TABLE spool_leader") +
         "DROP TABLE spool_job_state;\n";
}

}  // namespace

const std::vector<Migration>& PostgresMigrations() {
  static const std::vector<Migration>* const kMigrations =
      new std::vector<Migration>{{1, "create_tables", kUp1, kDown1},
                                 {2, "fetch_index_by_queue_hash", kUp2, kDown2},
                                 {3, "integer_job_states", Up3(), Down3()}};
  return *kMigrations;
}

}  // namespace spool::internal
