#pragma once

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "generator/generator.h"
#include "spool/client.h"

namespace spool::cli {

// One file of an app's database/migrations: <14-digit UTC timestamp>_<name>.sql.
struct AppMigration {
  std::string version;  // the timestamp, also the order
  std::string name;
  std::string path;  // relative to the app root
  // The <ts>_setup_spool_queue.sql of `spool gen queue`: applied with spool's own MigrateUp (the
  // library's embedded DDL, the one source the file was generated from), not by running its text.
  bool queue = false;
};

// The app's migrations in timestamp order. Throws CommandError naming a *.sql file whose name
// does not follow the pattern, or two files with one timestamp.
std::vector<AppMigration> ListAppMigrations(const std::filesystem::path& root);

// The app's migrations against `url`, tracked in the table spool_app_migration (version, name,
// applied_at). Each SQL migration's Up (or Down) section runs in one transaction with its
// tracking row. Output goes to stdout. Throw CommandError on failure, after reporting what was
// applied before it.
// up: every pending migration with version <= target (all without one); then, if the queue is
// applied, spool's tables are brought to this library's version.
void AppMigrateUp(const std::filesystem::path& root, const std::string& url,
                  const std::optional<std::string>& target);
// down: the newest applied migration, or every applied one with version > target. Reverting
// the queue's migration drops spool's tables: refused while they are in use unless `force`
// (RefuseToDropSpoolTablesInUse).
void AppMigrateDown(const std::filesystem::path& root, const std::string& url,
                    const std::optional<std::string>& target, bool force);

// The newest applied version of spool's schema in MigrationStatus's list (0: none).
int AppliedVersion(const std::vector<MigrationInfo>& infos);
// "version 2 of 3", or what to do about a version newer than this spool knows.
std::string SchemaVersionText(const std::vector<MigrationInfo>& infos);

// Throws CommandError when spool's tables at `url` are in use: a client of the queue sent a
// heartbeat in the last minute (it would fail every call until the tables are back, or, for a
// down step that keeps them, until the schema is migrated up again), or, when `drops_tables`,
// jobs are not in a final state (available, scheduled, running, retryable, pending), which
// dropping the tables would lose. The message counts them and names --force. Checks nothing
// when there are no spool tables.
void RefuseToDropSpoolTablesInUse(const std::string& url, bool drops_tables);
void AppMigrationStatus(const std::filesystem::path& root, const std::string& url);

// `spool migration create NAME`: database/migrations/<timestamp>_NAME.sql with empty Up and
// Down sections. NAME follows the job-name rule (snake_case).
Generated PlanAppMigration(const std::filesystem::path& root, const std::string& name_input,
                           std::chrono::system_clock::time_point now);

// Prints the notes, applies `gen` (or prints its diff with dry_run), lists the files and the
// numbered next steps: the output of every generator command.
void FinishGenerated(const Generated& gen, bool dry_run, bool force);

}  // namespace spool::cli
