#include "generator/app.h"

#include <fmt/format.h>

#include "commands/commands.h"
#include "common/config.h"
#include "core/url.h"
#include "generator/names.h"
#include "spool/client.h"

namespace spool::cli {

const char* DbKindName(DbKind kind) { return kind == DbKind::kPostgres ? "postgres" : "sqlite"; }

DbKind ParseDbKind(const std::string& value, const std::string& what, int exit_code) {
  if (value == "sqlite") return DbKind::kSqlite;
  if (value == "postgres") return DbKind::kPostgres;
  throw CommandError(fmt::format("{} is \"{}\": valid values are sqlite and postgres", what, value),
                     exit_code);
}

std::optional<DbKind> DbKindOfUrl(std::string_view url) {
  if (url.starts_with("sqlite://")) return DbKind::kSqlite;
  if (url.starts_with("postgres://") || url.starts_with("postgresql://")) return DbKind::kPostgres;
  return std::nullopt;
}

std::string DefaultDatabaseUrl(DbKind kind, const std::string& app) {
  if (kind == DbKind::kSqlite) return "sqlite://app.db";
  std::string db = app;
  for (char& c : db) {
    if (c == '-') c = '_';
  }
  return fmt::format("postgres://127.0.0.1:5432/{}", db);
}

void CheckUrlMatchesDb(DbKind kind, const std::string& url, const std::string& where) {
  // A url given as an argument is bad usage (exit 2); one read from .spoolrc, a refusal (1).
  const bool from_flag = where == "--database-url";
  const int exit_code = from_flag ? kExitUsage : kExitFailed;
  const std::optional<DbKind> of_url = DbKindOfUrl(url);
  if (of_url != kind) {
    // From the command line the fix is usually the other --db.
    const std::string other = kind == DbKind::kSqlite ? "postgres" : "sqlite";
    const bool other_matches = of_url.has_value();
    throw CommandError(fmt::format("{}: database_url \"{}\" does not match db={}: use a {} URL{}",
                                   where, UrlWithoutPassword(url), DbKindName(kind),
                                   kind == DbKind::kSqlite ? "sqlite://" : "postgres://",
                                   other_matches && from_flag ? ", or pass --db " + other : ""),
                       exit_code);
  }
  // Checked here too, or the app would be generated around a url it cannot use.
  if (Status st = internal::CheckPostgresUrlEncoding(url); !st.ok()) {
    throw CommandError(fmt::format("{}: {}", where, st.message()), exit_code);
  }
}

AppInfo LoadApp(const std::filesystem::path& dir) {
  auto rc = ReadSpoolRc(dir);
  if (!rc) {
    throw CommandError("no .spoolrc here: run spool new, or cd into the app");
  }
  AppInfo app;
  app.root = dir;
  auto name = rc->Get("app");
  if (!name || name->empty()) {
    throw CommandError(
        fmt::format("{} has no app=NAME line: add one (e.g. app=my_app)", rc->path.string()));
  }
  app.name = *name;
  ValidateAppName(app.name, kExitFailed);  // a .spoolrc's, not an argument
  app.db = ParseDbKind(rc->Get("db").value_or("sqlite"), fmt::format("db in {}", rc->path.string()),
                       kExitFailed);
  app.database_url = rc->Get("database_url").value_or("");
  if (app.database_url.empty()) app.database_url = DefaultDatabaseUrl(app.db, app.name);
  CheckUrlMatchesDb(app.db, app.database_url, rc->path.string());
  return app;
}

}  // namespace spool::cli
