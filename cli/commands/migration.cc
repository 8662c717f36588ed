#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <optional>

#include "commands/commands.h"
#include "common/config.h"
#include "generator/app.h"
#include "generator/app_migrations.h"
#include "spool/client.h"

namespace spool::cli {
namespace {

void Check(const Status& st) {
  if (!st.ok()) throw CommandError(st);
}

void PrintStatus(const std::string& url) {
  auto infos = MigrationStatus(url);
  if (!infos) throw CommandError(infos.error());
  fmt::print("spool schema at {}: {}\n", UrlWithoutPassword(url), SchemaVersionText(*infos));
  for (const auto& m : *infos) {
    fmt::print("  {:>3}  {:<32} {}\n", m.version, m.name, m.applied ? "applied" : "pending");
  }
}

// The app the command runs in (AppRoot: the working directory or its nearest parent with a
// .spoolrc), or nullopt: then the commands work on spool's own tables only.
std::optional<AppInfo> AppHere() {
  if (auto root = FindAppRoot()) return LoadApp(*root);
  return std::nullopt;
}

std::optional<std::string> Target(const std::string& t) {
  return t.empty() ? std::nullopt : std::optional<std::string>(t);
}

std::optional<int> SpoolTarget(const std::string& t) {
  if (t.empty()) return std::nullopt;
  if (t.size() > 6 || t.find_first_not_of("0123456789") != std::string::npos) {
    throw CommandError(fmt::format("--target {}: give a spool schema version number", t),
                       kExitUsage);
  }
  return std::stoi(t);
}

}  // namespace

void RegisterMigration(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "migration", "Apply, revert or show database migrations (an app's, or spool's own)");
  cmd->require_subcommand(1);
  cmd->footer(
      "Inside an app (a folder with .spoolrc) these work on the app's database/migrations/*.sql\n"
      "in timestamp order, tracked in the table spool_app_migration; the queue's\n"
      "<timestamp>_setup_spool_queue.sql is applied with spool's own migrations (the DDL it was\n"
      "generated from). Elsewhere they work on spool's tables only.\n\n"
      "Examples:\n"
      "  spool migration up\n"
      "  spool migration create add_users\n"
      "  spool migration status --database-url sqlite://app.db");
  auto url = std::make_shared<std::string>();
  auto target = std::make_shared<std::string>();
  const char* url_help =
      "Database URL (sqlite://app.db, postgres://...); default $SPOOL_DATABASE_URL, then "
      "database_url in the .spoolrc of this folder or the nearest parent folder with one";

  auto* up = cmd->add_subcommand("up", "Apply every migration not applied yet (or up to --target)");
  up->add_option("--database-url", *url, url_help);
  up->add_option("--target", *target,
                 "Stop at this version (spool's version number; in an app, a timestamp)")
      ->check(WholeNumberFrom(0));
  up->callback([url, target] {
    const std::string u = ResolveDatabaseUrl(*url);
    if (auto here = AppHere()) {
      AppMigrateUp(here->root, u, Target(*target));
      if (AppWithoutQueueHere()) {
        fmt::print(
            "(this app has no job queue yet: spool gen queue adds it, then run spool "
            "migration up again)\n");
      }
      return;
    }
    Check(MigrateUp(u, SpoolTarget(*target)));
    PrintStatus(u);
  });

  auto* down = cmd->add_subcommand("down", "Revert the newest migration (or down to --target)");
  auto force = std::make_shared<bool>(false);
  down->add_option("--database-url", *url, url_help);
  down->add_flag("--force", *force,
                 "Revert even while a client of the job queue sent a heartbeat in the last "
                 "minute, and drop spool's tables even while they hold unfinished jobs");
  down->add_option("--target", *target,
                   "Revert down to this version; 0 removes spool's tables (in an app, a "
                   "timestamp; 0 reverts all)")
      ->check(WholeNumberFrom(0));
  down->callback([url, target, force] {
    const std::string u = ResolveDatabaseUrl(*url);
    RequireDatabaseFile(u);
    if (auto here = AppHere()) {
      AppMigrateDown(
          here->root, u,
          *target == "0" ? std::optional<std::string>("00000000000000") : Target(*target), *force);
      return;
    }
    const std::optional<int> to = SpoolTarget(*target);
    if (!*force) {
      // Down to version 0 drops spool_job with whatever it holds; any step breaks running
      // clients, which need the version they were built for.
      auto infos = MigrationStatus(u);
      const int current = infos ? AppliedVersion(*infos) : 0;
      const int target_version = to ? *to : current - 1;
      if (current > 0 && target_version < current) {
        RefuseToDropSpoolTablesInUse(u, /*drops_tables=*/target_version <= 0);
      }
    }
    Check(MigrateDown(u, to));
    PrintStatus(u);
  });

  auto* status = cmd->add_subcommand("status", "Show which migrations are applied");
  status->add_option("--database-url", *url, url_help);
  status->callback([url] {
    const std::string u = ResolveDatabaseUrl(*url);
    if (auto here = AppHere()) {
      AppMigrationStatus(here->root, u);  // a database not created yet has every one pending
      return;
    }
    RequireDatabaseFile(u);
    PrintStatus(u);
  });

  struct CreateArgs {
    std::string name;
    bool dry_run = false;
  };
  auto create_args = std::make_shared<CreateArgs>();
  auto* create = cmd->add_subcommand(
      "create", "Write an empty migration database/migrations/<timestamp>_NAME.sql (in an app)");
  create->add_option("NAME", create_args->name, "snake_case, e.g. add_users")->required();
  create->add_flag("--dry-run", create_args->dry_run, "Print the file as a diff; write nothing");
  create->callback([create_args] {
    auto here = AppHere();
    if (!here) throw CommandError("no .spoolrc here: run spool new, or cd into the app");
    FinishGenerated(
        PlanAppMigration(here->root, create_args->name, std::chrono::system_clock::now()),
        create_args->dry_run, false);
  });
}

}  // namespace spool::cli
