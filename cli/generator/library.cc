// The generator's two uses of the spool library, kept apart from the pure text generation.
#include <fmt/format.h>

#include "commands/commands.h"
#include "core/cron.h"
#include "generator/generator.h"
#include "spool/client.h"

namespace spool::cli {

MigrationSource LibraryMigrations() {
  return [](std::string_view driver, bool up) {
    auto sql = spool::MigrationSql(driver, up);
    if (!sql) {
      throw CommandError(
          fmt::format("cannot read spool's {} migrations: {}", driver, sql.error().ToString()));
    }
    return std::move(sql).value();
  };
}

void ValidateCron(const std::string& expr) {
  auto parsed = spool::CronSchedule::Parse(expr);
  if (!parsed) {
    throw CommandError(fmt::format("{}; nothing was written (e.g. --schedule \"0 3 * * *\" for "
                                   "03:00 UTC every day)",
                                   parsed.error().message()),
                       kExitUsage);
  }
}

}  // namespace spool::cli
