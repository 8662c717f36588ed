#include <fmt/format.h>

#include "commands/commands.h"
#include "common/config.h"
#include "spool/client.h"

namespace spool::cli {
namespace {

void Check(const Status& st) {
  if (!st.ok()) throw CommandError(st.message());
}

void PrintStatus(const std::string& url) {
  auto infos = MigrationStatus(url);
  if (!infos) throw CommandError(infos.error().message());
  int current = 0;
  for (const auto& m : *infos) {
    if (m.applied) current = m.version;
  }
  fmt::print("spool schema at {}: version {} of {}\n", url, current,
             infos->empty() ? 0 : infos->back().version);
  for (const auto& m : *infos) {
    fmt::print("  {:>3}  {:<32} {}\n", m.version, m.name, m.applied ? "applied" : "pending");
  }
}

}  // namespace

void RegisterMigration(CLI::App& app) {
  auto* cmd = app.add_subcommand("migration", "Apply, revert or show spool's database migrations");
  cmd->require_subcommand(1);
  auto url = std::make_shared<std::string>();
  auto target = std::make_shared<int>(-1);
  const char* url_help =
      "Database URL (sqlite://app.db, postgres://...); default $SPOOL_DATABASE_URL, then "
      "database_url in ./.spoolrc";

  auto* up = cmd->add_subcommand("up", "Apply every migration not applied yet (or up to --target)");
  up->add_option("--database-url", *url, url_help);
  up->add_option("--target", *target, "Stop at this version")->check(CLI::NonNegativeNumber);
  up->callback([url, target] {
    const std::string u = ResolveDatabaseUrl(*url);
    Check(MigrateUp(u, *target >= 0 ? std::optional<int>(*target) : std::nullopt));
    PrintStatus(u);
  });

  auto* down = cmd->add_subcommand("down", "Revert the newest migration (or down to --target)");
  down->add_option("--database-url", *url, url_help);
  down->add_option("--target", *target, "Revert down to this version; 0 removes spool's tables")
      ->check(CLI::NonNegativeNumber);
  down->callback([url, target] {
    const std::string u = ResolveDatabaseUrl(*url);
    Check(MigrateDown(u, *target >= 0 ? std::optional<int>(*target) : std::nullopt));
    PrintStatus(u);
  });

  auto* status = cmd->add_subcommand("status", "Show which migrations are applied");
  status->add_option("--database-url", *url, url_help);
  status->callback([url] { PrintStatus(ResolveDatabaseUrl(*url)); });
}

}  // namespace spool::cli
