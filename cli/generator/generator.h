#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "generator/app.h"
#include "generator/plan.h"

namespace spool::cli {

// What a generator command would do: the file changes plus what to tell the user.
struct Generated {
  explicit Generated(std::filesystem::path root) : plan(std::move(root)) {}
  Plan plan;
  std::string summary;                  // one line, e.g. "created job send_email"
  std::vector<std::string> notes;       // name conversions and other remarks
  std::vector<std::string> next_steps;  // printed numbered
};

struct NewOptions {
  std::string name;
  // nullopt: with `force` over an app, its .spoolrc's db (and database_url, unless one is given);
  // otherwise SQLite.
  std::optional<DbKind> db;
  std::string database_url;   // empty: the app's (as for db), else DefaultDatabaseUrl
  std::filesystem::path dir;  // the app folder to create (must be absent or empty)
  // Write over the files of an app spool new made (a folder with a .spoolrc); a folder without
  // one is refused when a file spool would write holds something else.
  bool force = false;
};

// `spool new`: plans a service skeleton in options.dir. Throws CommandError when refused.
Generated PlanNew(const NewOptions& options);

// The library's migrations for a driver ("sqlite"/"postgres"), ascending by version:
// (name, SQL) pairs. Throws CommandError when the library cannot provide them.
using MigrationSource = std::function<std::vector<std::pair<std::string, std::string>>(
    std::string_view driver, bool up)>;
// spool::MigrationSql from the linked library.
MigrationSource LibraryMigrations();

struct QueueOptions {
  MigrationSource migrations;
  std::chrono::system_clock::time_point now = std::chrono::system_clock::now();
  bool force = false;
};

// `spool gen queue`. Throws CommandError when the queue is set up already (without force), when
// markers are missing (the message holds the manual edit), or when the library refuses.
Generated PlanQueue(const AppInfo& app, const QueueOptions& options);

// `spool gen job NAME` or, with a schedule, `spool gen task NAME --schedule CRON`.
Generated PlanJob(const AppInfo& app, std::string_view name_input,
                  const std::optional<std::string>& schedule, bool force);

// The kinds of the jobs in an app's jobs/ folder: each job file's kKind (its name unless the
// file was edited). Empty when there is no jobs/ folder.
std::vector<std::string> AppJobKinds(const std::filesystem::path& root);

// jobs/registry.cc for the given job files (name, is_task), rendered whole.
std::string RenderRegistry(std::vector<std::pair<std::string, bool>> jobs);

// The migration file's text for a driver, from the library's up and down migrations.
std::string RenderQueueMigration(std::string_view driver,
                                 const std::vector<std::pair<std::string, std::string>>& up,
                                 const std::vector<std::pair<std::string, std::string>>& down);

// A migration file's timestamp for `now` (UTC, YYYYMMDDHHMMSS), moved on by a second while a
// file in the app's database/migrations already starts with it.
std::string MigrationTimestamp(std::chrono::system_clock::time_point now, const Plan& plan);

// Checks a five-field cron expression (or @hourly/@daily/...); throws CommandError (exit 1)
// naming the bad field. Uses spool::CronSchedule::Parse when the library has it.
void ValidateCron(const std::string& expr);

// Inserts `block` before the line holding `marker` (matched after leading whitespace), unless
// `sentinel` already occurs in `text`. nullopt when the marker is missing.
std::optional<std::string> InsertAtMarker(const std::string& text, std::string_view marker,
                                          const std::string& block, std::string_view sentinel);

}  // namespace spool::cli
