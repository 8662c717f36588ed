#include "driver/driver.h"

#include <fmt/format.h>

#include "driver/sqlite/sqlite_driver.h"
#ifdef SPOOL_WITH_POSTGRES
#include "driver/postgres/postgres_driver.h"
#endif

namespace spool::internal {

Result<std::unique_ptr<Driver>> Driver::Open(std::string_view url, const DriverOptions& options) {
  constexpr std::string_view kSqlite = "sqlite://";
  if (url.starts_with(kSqlite)) {
    std::string path(url.substr(kSqlite.size()));
    if (path.empty()) {
      return Status::InvalidArgument(
          "database url \"sqlite://\" names no file: use sqlite://app.db (relative) or "
          "sqlite:///abs/path/app.db");
    }
    if (path == ":memory:" || path.find("mode=memory") != std::string::npos) {
      return Status::InvalidArgument(
          "in-memory SQLite databases are not supported: the jobs would vanish with the process "
          "and other connections could not see them; use a file, e.g. sqlite://app.db");
    }
    return OpenSqliteDriver(std::move(path), options);
  }
  if (url.starts_with("postgres://") || url.starts_with("postgresql://")) {
#ifdef SPOOL_WITH_POSTGRES
    return OpenPostgresDriver(std::string(url), options);
#else
    return Status::InvalidArgument(
        "this build of spool has no PostgreSQL driver: rebuild with -DSPOOL_WITH_POSTGRES=ON");
#endif
  }
  return Status::InvalidArgument(fmt::format(
      "unsupported database url \"{}\": use sqlite://PATH or postgres://user@host:port/db",
      url.substr(0, url.find(':'))));
}

const std::vector<Migration>* MigrationsFor(std::string_view driver_name) {
  if (driver_name == "sqlite") return &SqliteMigrations();
#ifdef SPOOL_WITH_POSTGRES
  if (driver_name == "postgres") return &PostgresMigrations();
#endif
  return nullptr;
}

}  // namespace spool::internal
