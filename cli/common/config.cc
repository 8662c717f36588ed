#include "common/config.h"

#include <fmt/format.h>

#include <cstdlib>
#include <fstream>
#include <string_view>
#include <system_error>

#include "commands/commands.h"

namespace spool::cli {
namespace {

std::string Trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return {};
  const auto e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

}  // namespace

std::optional<std::string> SpoolRc::Get(const std::string& key) const {
  auto it = values.find(key);
  if (it == values.end()) return std::nullopt;
  return it->second;
}

std::optional<std::filesystem::path> FindAppRoot() {
  std::error_code ec;
  const std::filesystem::path here = std::filesystem::absolute(std::filesystem::current_path());
  for (std::filesystem::path dir = here; !dir.empty(); dir = dir.parent_path()) {
    if (std::filesystem::exists(dir / ".spoolrc", ec)) return dir;
    if (dir == dir.root_path()) break;
  }
  return std::nullopt;
}

std::filesystem::path AppRoot() {
  return FindAppRoot().value_or(std::filesystem::absolute(std::filesystem::current_path()));
}

std::optional<SpoolRc> ReadSpoolRc(const std::filesystem::path& dir) {
  SpoolRc rc;
  rc.path = dir / ".spoolrc";
  std::ifstream in(rc.path);
  if (!in) return std::nullopt;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    line = Trim(line);
    if (line.empty() || line[0] == '#') continue;
    const auto eq = line.find('=');
    if (eq == std::string::npos) {
      throw CommandError(
          fmt::format("{}:{}: expected key=value, got \"{}\"", rc.path.string(), line_no, line));
    }
    std::string key = Trim(line.substr(0, eq));
    std::string value = Trim(line.substr(eq + 1));
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
        value.back() == value.front()) {
      value = value.substr(1, value.size() - 2);
    }
    rc.values[key] = value;
  }
  return rc;
}

std::string ResolveDatabaseUrl(const std::string& flag_value) {
  if (!flag_value.empty()) return flag_value;
  if (const char* env = std::getenv("SPOOL_DATABASE_URL"); env != nullptr && *env != '\0') {
    return env;
  }
  const std::filesystem::path root = AppRoot();
  if (auto rc = ReadSpoolRc(root)) {
    if (auto url = rc->Get("database_url"); url && !url->empty()) {
      constexpr std::string_view kSqlite = "sqlite://";
      const bool relative_sqlite = url->starts_with(kSqlite) && url->size() > kSqlite.size() &&
                                   (*url)[kSqlite.size()] != '/';
      if (relative_sqlite && root != std::filesystem::absolute(std::filesystem::current_path())) {
        return std::string(kSqlite) + (root / url->substr(kSqlite.size())).string();
      }
      return *url;
    }
  }
  throw CommandError(
      "no database url: pass --database-url URL (e.g. sqlite://app.db), set SPOOL_DATABASE_URL, "
      "or add database_url=... to .spoolrc in this directory (or a parent's)",
      kExitUsage);
}

bool AppWithoutQueueHere() {
  std::error_code ec;
  const auto root = FindAppRoot();
  return root && !std::filesystem::exists(*root / "jobs/registry.h", ec);
}

bool DatabaseFileMissing(const std::string& url) {
  constexpr std::string_view kSqlite = "sqlite://";
  if (!url.starts_with(kSqlite)) return false;
  const std::string path = url.substr(kSqlite.size());
  // Empty and in-memory paths are for the driver to refuse with its own message.
  if (path.empty() || path.find(":memory:") != std::string::npos) return false;
  std::error_code ec;
  return !std::filesystem::exists(path, ec) && !ec;
}

void RequireDatabaseFile(const std::string& url) {
  if (!DatabaseFileMissing(url)) return;
  const std::string path = url.substr(std::string_view("sqlite://").size());
  std::error_code ec;
  if (AppWithoutQueueHere()) {
    throw CommandError(fmt::format(
        "no database at {}: this app has no job queue yet; run spool gen queue, then spool "
        "migration up",
        path));
  }
  const std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  if (!std::filesystem::is_directory(absolute.parent_path(), ec)) {
    throw CommandError(fmt::format(
        "no database at {}: its directory {} does not exist; check the path (spool migration up "
        "creates the file, not its directory)",
        path, absolute.parent_path().string()));
  }
  throw CommandError(fmt::format(
      "no database at {} ({}): check the path; spool migration up --database-url {} creates a "
      "new one",
      path, absolute.string(), url));
}

}  // namespace spool::cli
