#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace spool::cli {

enum class DbKind { kSqlite, kPostgres };

// "sqlite" or "postgres": the .spoolrc value and spool's driver name.
const char* DbKindName(DbKind kind);
// Parses a db kind; throws CommandError(exit_code) naming `what` and the valid values.
DbKind ParseDbKind(const std::string& value, const std::string& what, int exit_code);
// The kind of database a url's scheme names (sqlite://, postgres://, postgresql://), if any.
std::optional<DbKind> DbKindOfUrl(std::string_view url);
// The URL `spool new` writes when none is given: sqlite://app.db or postgres://127.0.0.1/<app>.
std::string DefaultDatabaseUrl(DbKind kind, const std::string& app);

// Throws CommandError unless `url`'s scheme fits `kind` (sqlite://, postgres:// or
// postgresql://); `where` says where the url came from.
void CheckUrlMatchesDb(DbKind kind, const std::string& url, const std::string& where);

// The app a generator works on, from its .spoolrc.
struct AppInfo {
  std::filesystem::path root;
  std::string name;
  DbKind db = DbKind::kSqlite;
  std::string database_url;
};

// Reads `dir/.spoolrc`. Throws CommandError: "no .spoolrc here: ..." outside an app; a missing
// app key; an unknown db kind (naming the key and the valid values).
AppInfo LoadApp(const std::filesystem::path& dir);

}  // namespace spool::cli
