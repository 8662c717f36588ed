#include "common/config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "commands/commands.h"
#include "core/url.h"
#include "spool/client.h"

namespace spool::cli {
namespace {

// The keys a .spoolrc may hold (SpoolRc's comment).
constexpr std::string_view kSpoolRcKeys[] = {"app", "db", "database_url"};

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// Warns once per file and line about a key spool does not read: a typo there would otherwise
// leave a setting silently unset ("no database url" with a databse_url line in the file).
void WarnUnknownKey(const std::filesystem::path& path, int line_no, const std::string& key) {
  static std::mutex mu;
  static std::set<std::string> warned;
  const std::string where = fmt::format("{}:{}", path.string(), line_no);
  {
    std::lock_guard lock(mu);
    if (!warned.insert(where).second) return;
  }
  std::string hint;
  for (const std::string_view known : kSpoolRcKeys) {
    if (EditDistance(key, known) <= 2) hint = fmt::format(" (did you mean {}?)", known);
  }
  fmt::print(stderr, "warning: {}: unknown key \"{}\"{}, ignored: .spoolrc holds {}\n", where, key,
             hint, "app, db and database_url");
}

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
    if (std::find(std::begin(kSpoolRcKeys), std::end(kSpoolRcKeys), key) ==
        std::end(kSpoolRcKeys)) {
      WarnUnknownKey(rc.path, line_no, key);
    }
    rc.values[key] = value;
  }
  return rc;
}

namespace {

std::mutex url_note_mu;
std::string url_note;  // guarded by url_note_mu

// Refuses a url with no scheme spool knows, naming where it came from (a stale exported
// $SPOOL_DATABASE_URL or a .spoolrc line is otherwise hard to find); the value itself is not
// shown, as it may hold a password.
std::string CheckScheme(std::string url, const std::string& where) {
  const auto colon = url.find("://");
  const std::string scheme = colon == std::string::npos ? "" : url.substr(0, colon);
  if (scheme == "sqlite" || scheme == "postgres" || scheme == "postgresql") return url;
  throw CommandError(
      fmt::format("{} is not a database url ({}): use sqlite://PATH (sqlite:///abs/app.db or "
                  "sqlite://relative.db) or postgres://user@host:port/db",
                  where, scheme.empty() ? "no scheme://" : fmt::format("scheme \"{}://\"", scheme)),
      kExitUsage);
}

}  // namespace

std::string ResolveDatabaseUrl(const std::string& flag_value) {
  if (!flag_value.empty()) return flag_value;
  const std::filesystem::path root = AppRoot();
  auto rc = ReadSpoolRc(root);
  const std::optional<std::string> rc_url = rc ? rc->Get("database_url") : std::nullopt;
  if (const char* env = std::getenv("SPOOL_DATABASE_URL"); env != nullptr && *env != '\0') {
    // Checked first: UrlWithoutPassword cannot find the password of a url without a scheme.
    std::string url = CheckScheme(env, "$SPOOL_DATABASE_URL");
    if (rc_url && !rc_url->empty() && *rc_url != url) {
      std::lock_guard lock(url_note_mu);
      url_note = fmt::format(
          "the database url came from $SPOOL_DATABASE_URL ({}), not from {} ({}): unset the "
          "variable to use the app's",
          UrlWithoutPassword(url), rc->path.string(),
          rc_url->find("://") != std::string::npos ? UrlWithoutPassword(*rc_url)
                                                   : std::string("not a url"));
    }
    return url;
  }
  if (rc_url && !rc_url->empty()) {
    const std::string url =
        CheckScheme(*rc_url, fmt::format("database_url in {}", rc->path.string()));
    constexpr std::string_view kSqlite = "sqlite://";
    const bool relative_sqlite =
        url.starts_with(kSqlite) && url.size() > kSqlite.size() && url[kSqlite.size()] != '/';
    if (relative_sqlite && root != std::filesystem::absolute(std::filesystem::current_path())) {
      return std::string(kSqlite) + (root / url.substr(kSqlite.size())).string();
    }
    return url;
  }
  throw CommandError(
      "no database url: pass --database-url URL (e.g. sqlite://app.db), set SPOOL_DATABASE_URL, "
      "or add database_url=... to .spoolrc in this directory (or a parent's)",
      kExitUsage);
}

std::string TakeDatabaseUrlNote() {
  std::lock_guard lock(url_note_mu);
  return std::exchange(url_note, {});
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

std::optional<std::filesystem::path> MissingSqliteFolder(const std::string& url) {
  constexpr std::string_view kSqlite = "sqlite://";
  if (!url.starts_with(kSqlite)) return std::nullopt;
  const std::string path = url.substr(kSqlite.size());
  if (path.empty() || path.find(":memory:") != std::string::npos) return std::nullopt;
  std::error_code ec;
  const std::filesystem::path folder = std::filesystem::absolute(path, ec).parent_path();
  if (ec || std::filesystem::is_directory(folder, ec)) return std::nullopt;
  return folder;
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
  if (const auto folder = MissingSqliteFolder(url)) {
    throw CommandError(fmt::format(
        "no database at {}: its directory {} does not exist; check the path (spool migration up "
        "creates the file, not its directory)",
        path, folder->string()));
  }
  // The path as given, and where it points when that differs.
  const std::string where =
      absolute.string() == path ? path : path + " (" + absolute.string() + ")";
  throw CommandError(fmt::format(
      "no database at {}: check the path; spool migration up --database-url {} creates a new one",
      where, internal::ShellWord(url)));
}

}  // namespace spool::cli
