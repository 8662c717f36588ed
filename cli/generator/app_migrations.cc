// `spool migration` inside an app: the app's own SQL migrations and spool's queue tables, in
// timestamp order, tracked in spool_app_migration.
#include "generator/app_migrations.h"

#include <fmt/format.h>
#include <sqlite3.h>

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <system_error>

#include "driver/state_codes.h"
#ifdef SPOOL_CLI_WITH_POSTGRES
#include "driver/postgres/pg_conn.h"
#endif

#include "commands/commands.h"
#include "common/config.h"
#include "generator/names.h"
#include "spool/client.h"

namespace spool::cli {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kDir = "database/migrations";
constexpr std::string_view kQueueName = "setup_spool_queue";
constexpr std::string_view kTable = "spool_app_migration";

bool IsTimestamp(std::string_view s) {
  return s.size() == 14 &&
         std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool IsMigrationName(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

// A database connection for running the app's SQL; every call throws CommandError on failure.
class AppDb {
 public:
  virtual ~AppDb() = default;
  virtual void Exec(const std::string& sql) = 0;
  // The first column of every row of `sql`.
  virtual std::vector<std::string> Column(const std::string& sql) = 0;
  // Begins a transaction that no other `spool migration` run on this database can be inside at
  // the same time, until EndExclusive (after its COMMIT or ROLLBACK).
  virtual void BeginExclusive() = 0;
  virtual void EndExclusive() {}
};

class SqliteAppDb final : public AppDb {
 public:
  explicit SqliteAppDb(const std::string& path) {
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
        SQLITE_OK) {
      const std::string err = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      db_ = nullptr;
      if (const auto folder = MissingSqliteFolder("sqlite://" + path)) {
        throw CommandError(fmt::format(
            "cannot create the SQLite database {}: its directory {} does not exist; check the "
            "path, or create the directory (spool migration up creates the file, not its "
            "directory)",
            path, folder->string()));
      }
      throw CommandError(fmt::format("cannot open the SQLite database {}: {}", path, err));
    }
    sqlite3_busy_timeout(db_, 5000);
    // The first read is where a file that is not a database fails: say which file.
    if (sqlite3_exec(db_, "SELECT count(*) FROM sqlite_schema", nullptr, nullptr, nullptr) !=
        SQLITE_OK) {
      const std::string err = sqlite3_errmsg(db_);
      sqlite3_close(db_);
      db_ = nullptr;
      throw CommandError(fmt::format("cannot use {} as the app's SQLite database: {}", path, err));
    }
  }
  ~SqliteAppDb() override { sqlite3_close(db_); }
  void Exec(const std::string& sql) override {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      const std::string message = err != nullptr ? err : sqlite3_errmsg(db_);
      sqlite3_free(err);
      throw CommandError(message);
    }
  }
  std::vector<std::string> Column(const std::string& sql) override {
    std::vector<std::string> out;
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) {
      throw CommandError(sqlite3_errmsg(db_));
    }
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      const unsigned char* text = sqlite3_column_text(stmt, 0);
      out.emplace_back(text != nullptr ? reinterpret_cast<const char*>(text) : "");
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE) throw CommandError(sqlite3_errmsg(db_));
    return out;
  }
  // The write lock from the start: a second run waits (busy timeout) instead of reading the
  // migrations table before the first commits.
  void BeginExclusive() override { Exec("BEGIN IMMEDIATE"); }

 private:
  sqlite3* db_ = nullptr;
};

#ifdef SPOOL_CLI_WITH_POSTGRES
class PostgresAppDb final : public AppDb {
 public:
  // The driver's connect: it refuses a url libpq cannot parse before libpq can echo it (password
  // included), names host and port when the server cannot be reached, and quiets NOTICEs.
  explicit PostgresAppDb(const std::string& url) {
    auto conn = internal::pg::Conn::Connect(url, internal::pg::DescribeTarget(url));
    if (!conn) throw CommandError(conn.error());
    conn_ = std::move(*conn);
  }
  void Exec(const std::string& sql) override { PQclear(Run(sql)); }
  std::vector<std::string> Column(const std::string& sql) override {
    PGresult* res = Run(sql);
    std::vector<std::string> out;
    for (int i = 0; i < PQntuples(res); ++i) out.emplace_back(PQgetvalue(res, i, 0));
    PQclear(res);
    return out;
  }
  // A session advisory lock taken before BEGIN (the key is arbitrary, and differs from the one
  // spool's own migrations take): a transaction that waited for a lock taken inside it would
  // still see the catalog as it was before the wait, and create spool_app_migration twice.
  void BeginExclusive() override {
    Exec("SELECT pg_advisory_lock(7312960410723456001)");
    try {
      Exec("BEGIN");
    } catch (const CommandError&) {
      EndExclusive();
      throw;
    }
  }
  void EndExclusive() override {
    if (PQstatus(conn_->get()) != CONNECTION_OK) return;  // the session and its lock are gone
    PQclear(PQexec(conn_->get(), "SELECT pg_advisory_unlock(7312960410723456001)"));
  }

 private:
  // The app's own SQL: its errors are passed through as PostgreSQL words them (the driver's
  // error mapping would add hints about spool's schema), and a section of only comments is fine.
  PGresult* Run(const std::string& sql) {
    PGresult* res = PQexec(conn_->get(), sql.c_str());
    const ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
      std::string err = PQresultErrorMessage(res);
      while (!err.empty() && err.back() == '\n') err.pop_back();
      PQclear(res);
      throw CommandError(err);
    }
    return res;
  }

  std::unique_ptr<internal::pg::Conn> conn_;
};
#endif

std::unique_ptr<AppDb> OpenAppDb(const std::string& url) {
  constexpr std::string_view kSqlite = "sqlite://";
  if (url.starts_with(kSqlite)) {
    const std::string path = url.substr(kSqlite.size());
    if (path.empty() || path == ":memory:") {
      throw CommandError(fmt::format("database url \"{}\" names no file", url));
    }
    return std::make_unique<SqliteAppDb>(path);
  }
  if (url.starts_with("postgres://") || url.starts_with("postgresql://")) {
#ifdef SPOOL_CLI_WITH_POSTGRES
    return std::make_unique<PostgresAppDb>(url);
#else
    throw CommandError("this spool was built without PostgreSQL support");
#endif
  }
  throw CommandError(
      fmt::format("unsupported database url {}: use sqlite://PATH (sqlite:///abs/app.db or "
                  "sqlite://relative.db) or postgres://user@host:port/db",
                  UrlSchemeForMessage(url)));
}

// The Up and Down sections of a migration file (goose markers; no markers: all of it is Up).
struct Sections {
  std::string up;
  std::optional<std::string> down;
};

Sections Split(const std::string& text) {
  Sections out;
  std::string* current = &out.up;
  std::string down;
  bool saw_marker = false;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    if (line.rfind("-- +goose Up", 0) == 0) {
      saw_marker = true;
      current = &out.up;
      continue;
    }
    if (line.rfind("-- +goose Down", 0) == 0) {
      current = &down;
      out.down = "";
      continue;
    }
    if (line.rfind("-- +goose ", 0) == 0) continue;  // StatementBegin/End: one exec anyway
    *current += line + "\n";
  }
  (void)saw_marker;
  if (out.down) out.down = down;
  return out;
}

std::string Now() {
  return FormatTime(std::chrono::time_point_cast<Duration>(std::chrono::system_clock::now()));
}

// Runs `fn` inside db's exclusive transaction: commits when it returns, rolls back when it
// throws, and ends the exclusion either way.
template <typename Fn>
void Exclusively(AppDb& db, Fn fn) {
  db.BeginExclusive();
  try {
    fn();
    db.Exec("COMMIT");
  } catch (const CommandError&) {
    try {
      db.Exec("ROLLBACK");
    } catch (const CommandError&) {  // the first error is the one to report
    }
    db.EndExclusive();
    throw;
  }
  db.EndExclusive();
}

// Under the exclusion: racing runs would both try to create it.
void EnsureTable(AppDb& db) {
  Exclusively(db, [&] {
    db.Exec(
        fmt::format("CREATE TABLE IF NOT EXISTS {} (version TEXT PRIMARY KEY, name TEXT NOT NULL, "
                    "applied_at TEXT NOT NULL)",
                    kTable));
  });
}

std::map<std::string, std::string> Applied(AppDb& db) {
  EnsureTable(db);
  std::map<std::string, std::string> out;
  for (const auto& v : db.Column(fmt::format("SELECT version FROM {} ORDER BY version", kTable))) {
    out[v] = v;
  }
  return out;
}

void Check(const Status& st, const AppMigration& m) {
  if (!st.ok()) throw CommandError(fmt::format("{}: {}", m.path, st.message()));
}

bool IsApplied(AppDb& db, const std::string& version) {
  return !db.Column(fmt::format("SELECT version FROM {} WHERE version = '{}'", kTable, version))
              .empty();
}

// Runs `sql` and the tracking change in one transaction, unless another `spool migration` run
// (another node's deploy) did this step since this one listed what to do: false then.
bool RunInTx(AppDb& db, const std::string& sql, const std::string& track, const AppMigration& m,
             bool applied_before) {
  bool ran = false;
  try {
    Exclusively(db, [&] {
      if (IsApplied(db, m.version) != applied_before) return;  // nothing written: commits nothing
      db.Exec(sql);
      db.Exec(track);
      ran = true;
    });
  } catch (const CommandError& e) {
    throw CommandError(fmt::format("{}: {}; rolled back", m.path, e.what()));
  }
  return ran;
}

// False if another run applied it first.
bool ApplyUp(AppDb& db, const fs::path& root, const std::string& url, const AppMigration& m) {
  // ON CONFLICT: spool's own migrations are idempotent under their own lock, so two runs may both
  // get here for the queue's step.
  const std::string track = fmt::format(
      "INSERT INTO {} (version, name, applied_at) VALUES ('{}', '{}', '{}') "
      "ON CONFLICT (version) DO NOTHING",
      kTable, m.version, m.name, Now());
  if (m.queue) {
    // spool's own steps are idempotent under their lock: another run (another node's deploy)
    // may have applied them all already, which the line then says.
    const auto before = MigrationStatus(url);
    const bool up_to_date = before && !before->empty() &&
                            std::all_of(before->begin(), before->end(),
                                        [](const MigrationInfo& i) { return i.applied; });
    Check(MigrateUp(url), m);
    db.Exec(track);
    if (up_to_date) {
      fmt::print(
          "{}: spool's tables were up to date already (another run, or spool migration "
          "up outside the app); recorded as applied\n",
          m.path);
      return true;
    }
  } else {
    const auto text = ReadFile(root / m.path);
    if (!text) throw CommandError(fmt::format("cannot read {}", m.path));
    if (!RunInTx(db, Split(*text).up, track, m, false)) {
      fmt::print("{} was applied by another run meanwhile\n", m.path);
      return false;
    }
  }
  fmt::print("applied {}\n", m.path);
  return true;
}

void ApplyDown(AppDb& db, const fs::path& root, const std::string& url, const AppMigration& m) {
  const std::string untrack = fmt::format("DELETE FROM {} WHERE version = '{}'", kTable, m.version);
  if (m.queue) {
    Check(MigrateDown(url, 0), m);
    db.Exec(untrack);
  } else {
    const auto text = ReadFile(root / m.path);
    if (!text) throw CommandError(fmt::format("cannot read {}", m.path));
    const Sections sections = Split(*text);
    if (!sections.down) {
      throw CommandError(
          fmt::format("{} has no `-- +goose Down` section: it cannot be reverted", m.path));
    }
    if (!RunInTx(db, *sections.down, untrack, m, true)) {
      fmt::print("{} was reverted by another run meanwhile\n", m.path);
      return;
    }
  }
  fmt::print("reverted {}\n", m.path);
}

// A target must name one of the app's migrations (or be all zeros: before the first), or a
// mistyped timestamp would apply or revert up to wherever it happens to fall.
void CheckTarget(const std::optional<std::string>& target,
                 const std::vector<AppMigration>& migrations) {
  if (!target) return;
  if (!IsTimestamp(*target)) {
    throw CommandError(
        fmt::format("--target {}: in an app, give a migration's 14-digit timestamp", *target),
        kExitUsage);
  }
  if (*target == "00000000000000") return;
  if (std::none_of(migrations.begin(), migrations.end(),
                   [&](const AppMigration& m) { return m.version == *target; })) {
    throw CommandError(fmt::format("--target {}: no migration in {} has that timestamp (spool "
                                   "migration status lists them); nothing was changed",
                                   *target, kDir),
                       kExitUsage);
  }
}

}  // namespace

std::vector<AppMigration> ListAppMigrations(const fs::path& root) {
  std::vector<AppMigration> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root / kDir, ec)) {
    const std::string file = entry.path().filename().string();
    if (entry.path().extension() != ".sql") continue;
    const std::string stem = entry.path().stem().string();
    if (stem.size() < 16 || !IsTimestamp(stem.substr(0, 14)) || stem[14] != '_' ||
        !IsMigrationName(stem.substr(15))) {
      throw CommandError(fmt::format(
          "{}/{}: migration files are named <YYYYMMDDHHMMSS>_<snake_name>.sql (spool migration "
          "create NAME writes one); nothing was applied",
          kDir, file));
    }
    AppMigration m;
    m.version = stem.substr(0, 14);
    m.name = stem.substr(15);
    m.path = fmt::format("{}/{}", kDir, file);
    m.queue = m.name == kQueueName;
    out.push_back(std::move(m));
  }
  std::sort(out.begin(), out.end(),
            [](const AppMigration& a, const AppMigration& b) { return a.version < b.version; });
  for (size_t i = 1; i < out.size(); ++i) {
    if (out[i].version == out[i - 1].version) {
      throw CommandError(fmt::format("{} and {} have the same timestamp: rename one",
                                     out[i - 1].path, out[i].path));
    }
  }
  if (std::count_if(out.begin(), out.end(), [](const AppMigration& m) { return m.queue; }) > 1) {
    throw CommandError("more than one *_setup_spool_queue.sql in database/migrations: keep one");
  }
  return out;
}

void AppMigrateUp(const fs::path& root, const std::string& url,
                  const std::optional<std::string>& target) {
  const auto migrations = ListAppMigrations(root);
  CheckTarget(target, migrations);
  auto db = OpenAppDb(url);
  const auto applied = Applied(*db);
  int count = 0;
  bool queue_applied = false;
  for (const auto& m : migrations) {
    if (applied.contains(m.version)) {
      queue_applied = queue_applied || m.queue;
      continue;
    }
    if (target && m.version > *target) break;
    if (ApplyUp(*db, root, url, m)) ++count;
    queue_applied = queue_applied || m.queue;
  }
  // A newer spool may bring migrations of its own past what the queue file was generated from.
  // Also when spool's tables were dropped from outside the app (migration down --target 0
  // elsewhere): then the queue's file counts as applied and only spool's migrations run.
  int spool_steps = 0;
  if (queue_applied) {
    auto before = MigrationStatus(url);
    if (const Status st = MigrateUp(url); !st.ok()) {
      throw CommandError(fmt::format("spool's tables: {}", st.message()));
    }
    auto after = MigrationStatus(url);
    if (before && after) spool_steps = AppliedVersion(*after) - AppliedVersion(*before);
  }
  fmt::print("{} migration(s) applied\n", count);
  if (spool_steps > 0) fmt::print("{} of spool's own migration(s) applied\n", spool_steps);
  AppMigrationStatus(root, url);
}

std::string SchemaVersionText(const std::vector<MigrationInfo>& infos) {
  int known = 0;
  for (const auto& m : infos) {
    if (m.known) known = m.version;
  }
  const int current = AppliedVersion(infos);
  if (current > known) {
    return fmt::format("version {}, newer than this spool knows ({}): upgrade spool to use it",
                       current, known);
  }
  return fmt::format("version {} of {}", current, known);
}

int AppliedVersion(const std::vector<MigrationInfo>& infos) {
  int current = 0;
  for (const auto& m : infos) {
    if (m.applied) current = m.version;
  }
  return current;
}

void RefuseToDropSpoolTablesInUse(const std::string& url, bool drops_tables) {
  // Plain SQL rather than a Client: it must read every schema version a down passes through.
  std::vector<std::string> live;
  std::vector<std::string> rows;
  try {
    auto db = OpenAppDb(url);
    // heartbeat_at: microseconds in SQLite, a timestamptz in PostgreSQL. A minute is twice
    // client_stale_after's default, so a client between two heartbeats counts.
    live = db->Column(url.starts_with("sqlite:")
                          ? "SELECT count(*) FROM spool_client WHERE heartbeat_at >= "
                            "(CAST(strftime('%s', 'now') AS INTEGER) - 60) * 1000000"
                          : "SELECT count(*) FROM spool_client WHERE heartbeat_at >= "
                            "now() - interval '60 seconds'");
    // The state is a code since schema version 3 (its name before): named either way.
    const std::string state = spool::internal::StateNameSql("state");
    rows = db->Column(fmt::format(
        "SELECT {0} || ' ' || count(*) FROM spool_job GROUP BY {0} HAVING {0} <> 'completed' AND "
        "{0} <> 'cancelled' AND {0} <> 'discarded' ORDER BY {0}",
        state));
  } catch (const CommandError&) {
    return;  // no spool tables to lose
  }
  if (!live.empty() && live.front() != "0") {
    throw CommandError(fmt::format(
        "{} client(s) of the job queue sent a heartbeat in the last minute (running apps): {} "
        "under them fails their every call until {}. Stop them first, or run again with --force; "
        "nothing was reverted",
        live.front(),
        drops_tables ? "dropping spool's tables" : "taking spool's schema back a version",
        drops_tables ? "the tables are back" : "it is migrated up again"));
  }
  if (!drops_tables || rows.empty()) return;
  int64_t total = 0;
  for (const auto& row : rows) total += std::stoll(row.substr(row.rfind(' ') + 1));
  std::string by_state;
  for (const auto& row : rows) by_state += (by_state.empty() ? "" : ", ") + row;
  throw CommandError(fmt::format(
      "spool's tables hold {} job(s) that have not finished ({}): reverting them would delete "
      "those jobs. Let them finish (or cancel or delete them) first, or run again with --force "
      "to drop them; nothing was reverted",
      total, by_state));
}

void AppMigrateDown(const fs::path& root, const std::string& url,
                    const std::optional<std::string>& target, bool force) {
  const auto migrations = ListAppMigrations(root);
  CheckTarget(target, migrations);
  auto db = OpenAppDb(url);
  const auto applied = Applied(*db);
  for (const auto& [version, unused] : applied) {
    if (std::none_of(migrations.begin(), migrations.end(),
                     [&](const AppMigration& m) { return m.version == version; })) {
      throw CommandError(fmt::format(
          "the database has migration {} applied but database/migrations has no file for it: "
          "nothing was reverted",
          version));
    }
  }
  std::vector<const AppMigration*> reverting;
  for (auto it = migrations.rbegin(); it != migrations.rend(); ++it) {
    if (!applied.contains(it->version)) continue;
    if (target && it->version <= *target) break;
    reverting.push_back(&*it);
    if (!target) break;
  }
  if (!force && std::any_of(reverting.begin(), reverting.end(),
                            [](const AppMigration* m) { return m->queue; })) {
    RefuseToDropSpoolTablesInUse(url, /*drops_tables=*/true);
  }
  for (const AppMigration* m : reverting) ApplyDown(*db, root, url, *m);
  fmt::print("{} migration(s) reverted\n", reverting.size());
  AppMigrationStatus(root, url);
}

void AppMigrationStatus(const fs::path& root, const std::string& url) {
  const auto migrations = ListAppMigrations(root);
  if (DatabaseFileMissing(url)) {  // status only reads: it must not create the file
    const auto folder = MissingSqliteFolder(url);
    fmt::print("app migrations at {} ({}):\n", UrlWithoutPassword(url),
               folder ? fmt::format("no database, and its directory {} does not exist: check "
                                    "the path, or create the directory before spool migration up",
                                    folder->string())
                      : std::string("no database yet: spool migration up creates it"));
    if (migrations.empty()) fmt::print("  none in {}\n", kDir);
    for (const auto& m : migrations) fmt::print("  {}  {:<40} pending\n", m.version, m.name);
    return;
  }
  auto db = OpenAppDb(url);
  const auto applied = Applied(*db);
  fmt::print("app migrations at {}:\n", UrlWithoutPassword(url));
  if (migrations.empty()) fmt::print("  none in {}\n", kDir);
  for (const auto& m : migrations) {
    fmt::print("  {}  {:<40} {}\n", m.version, m.name,
               applied.contains(m.version) ? "applied" : "pending");
  }
  for (const auto& [version, unused] : applied) {
    if (std::none_of(migrations.begin(), migrations.end(),
                     [&](const AppMigration& m) { return m.version == version; })) {
      fmt::print("  {}  {:<40} applied, but its file is gone\n", version, "?");
    }
  }
  const bool has_queue = std::any_of(migrations.begin(), migrations.end(),
                                     [](const AppMigration& m) { return m.queue; });
  if (has_queue) {
    auto infos = MigrationStatus(url);
    if (!infos) throw CommandError(infos.error());
    fmt::print("spool schema: {}\n", SchemaVersionText(*infos));
  }
}

Generated PlanAppMigration(const fs::path& root, const std::string& name_input,
                           std::chrono::system_clock::time_point now) {
  const JobName name = NormalizeJobName(name_input, "migration");
  Generated out(root);
  if (!name.note.empty()) out.notes.push_back(name.note);
  if (name.snake == kQueueName) {
    throw CommandError("setup_spool_queue is the name of spool gen queue's migration");
  }
  // Two migrations of one name would read as one in status output and history.
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root / kDir, ec)) {
    const std::string file = entry.path().filename().string();
    if (file.size() == 15 + name.snake.size() + 4 && file.ends_with("_" + name.snake + ".sql")) {
      throw CommandError(fmt::format(
          "a migration named {} exists already ({}/{}): choose another name; nothing changed",
          name.snake, kDir, file));
    }
  }
  const std::string path =
      fmt::format("{}/{}_{}.sql", kDir, MigrationTimestamp(now, out.plan), name.snake);
  out.plan.Create(path,
                  fmt::format("-- {}: created by `spool migration create {}`.\n"
                              "-- `spool migration up` runs the Up section and `spool migration "
                              "down` the Down section,\n"
                              "-- each in one transaction.\n\n"
                              "-- +goose Up\n\n\n"
                              "-- +goose Down\n\n",
                              name.snake, name.snake));
  out.summary = fmt::format("created migration {}", name.snake);
  out.next_steps = {fmt::format("write its SQL in {}", path), "spool migration up"};
  return out;
}

}  // namespace spool::cli
