// The migration entry points of the public API: thin wrappers over the driver seam.
#include <fmt/format.h>

#include "driver/driver.h"
#include "spool/client.h"

namespace spool {

using internal::Driver;

namespace {

// Only `migration up` may create a SQLite file: status and down on a mistyped path made an empty
// one and answered for it.
Result<std::unique_ptr<Driver>> OpenForMigration(std::string_view url, bool create) {
  internal::DriverOptions options;
  options.create_if_missing = create;
  return Driver::Open(url, options);
}

Status CheckTarget(const Driver& driver, int target) {
  const int latest = internal::LatestVersion(driver);
  if (target < 0 || target > latest) {
    return Status::InvalidArgument(fmt::format(
        "migration target {} is out of range: this spool knows versions 0 to {}", target, latest));
  }
  return Status::Ok();
}

// The schema's version, unless it is newer than this build knows. Only the build that applied a
// version knows its tables: this build's steps, up or down, assume the tables as it left them,
// and a newer shape is one it cannot use either.
Result<int> KnownSchemaVersion(Driver& driver, std::string_view fix) {
  SPOOL_ASSIGN_OR_RETURN(const int current, driver.SchemaVersion());
  if (const int latest = internal::LatestVersion(driver); current > latest) {
    return Status::FailedPrecondition(
        fmt::format("the spool schema is at version {}, newer than this spool knows ({}): {}",
                    current, latest, fix));
  }
  return current;
}

}  // namespace

Status MigrateUp(std::string_view database_url, std::optional<int> target) {
  SPOOL_ASSIGN_OR_RETURN(auto driver, OpenForMigration(database_url, true));
  SPOOL_RETURN_IF_ERROR(
      KnownSchemaVersion(*driver,
                         "nothing to apply, and this spool cannot use it; upgrade spool to the "
                         "version that applied it, or revert with that spool's `spool migration "
                         "down`")
          .status());
  const int to = target.value_or(internal::LatestVersion(*driver));
  SPOOL_RETURN_IF_ERROR(CheckTarget(*driver, to));
  return driver->MigrateUp(to);
}

Status MigrateDown(std::string_view database_url, std::optional<int> target) {
  SPOOL_ASSIGN_OR_RETURN(auto driver, OpenForMigration(database_url, false));
  SPOOL_ASSIGN_OR_RETURN(
      const int current,
      KnownSchemaVersion(
          *driver,
          "run `spool migration down` with the newer spool that applied it; nothing was reverted"));
  const int to = target.value_or(std::max(0, current - 1));
  SPOOL_RETURN_IF_ERROR(CheckTarget(*driver, to));
  return driver->MigrateDown(to);
}

Result<std::vector<MigrationInfo>> MigrationStatus(std::string_view database_url) {
  SPOOL_ASSIGN_OR_RETURN(auto driver, OpenForMigration(database_url, false));
  SPOOL_ASSIGN_OR_RETURN(const int current, driver->SchemaVersion());
  std::vector<MigrationInfo> out;
  for (const auto& m : driver->Migrations()) {
    out.push_back(MigrationInfo{m.version, m.name, m.version <= current});
  }
  if (current > internal::LatestVersion(*driver)) {
    out.push_back(MigrationInfo{current, "(applied by a newer spool)", true, false});
  }
  return out;
}

Result<std::vector<std::pair<std::string, std::string>>> MigrationSql(std::string_view driver,
                                                                      bool up) {
  const std::vector<internal::Migration>* migrations = internal::MigrationsFor(driver);
  if (migrations == nullptr) {
    return Status::InvalidArgument(
        fmt::format("unknown database kind \"{}\": valid kinds are sqlite and postgres", driver));
  }
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& m : *migrations) {
    out.emplace_back(fmt::format("{:03}_{}", m.version, m.name), up ? m.up : m.down);
  }
  return out;
}

}  // namespace spool
