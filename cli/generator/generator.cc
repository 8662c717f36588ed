#include "generator/generator.h"

#include <fmt/format.h>

#include <algorithm>
#include <ctime>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <system_error>

#include "commands/commands.h"
#include "common/config.h"
#include "generator/names.h"
#include "generator/templates.h"
#include "spool/client.h"

namespace spool::cli {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kMainPath = "src/main.cpp";
constexpr std::string_view kCMakePath = "CMakeLists.txt";
constexpr std::string_view kRegistryHeader = "jobs/registry.h";
constexpr std::string_view kRegistrySource = "jobs/registry.cc";
constexpr std::string_view kMigrationsDir = "database/migrations";
constexpr std::string_view kQueueMigrationSuffix = "_setup_spool_queue.sql";
// What main.cpp and CMakeLists.txt hold once `gen queue` has wired them.
constexpr std::string_view kMainWiredSentinel = "spool::Client::Open(";
constexpr std::string_view kCMakeWiredSentinel = "find_package(spool";

std::string SpoolVersion() {
  return fmt::format("{}.{}", SPOOL_VERSION_MAJOR, SPOOL_VERSION_MINOR);
}

std::string DbTitle(DbKind db) { return db == DbKind::kPostgres ? "PostgreSQL" : "SQLite"; }

// `s` as a C++ string literal, quotes included: a URL with a backslash or a quote must reach the
// compiler as the same bytes.
std::string CppStringLiteral(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (byte < 0x20 || byte == 0x7f) {
      out += fmt::format("\\{:03o}", byte);  // octal: no hex digit that follows can extend it
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// Generated files name the database without its password: the app takes the whole URL, password
// included, from $SPOOL_DATABASE_URL (set by `spool serve` from .spoolrc), ~/.pgpass or
// $PGPASSWORD.
std::map<std::string, std::string> AppVars(const AppInfo& app) {
  const std::string shown_url = UrlWithoutPassword(app.database_url);
  return {{"app", app.name},
          {"db", DbKindName(app.db)},
          {"db_title", DbTitle(app.db)},
          {"database_url", shown_url},
          {"database_url_literal", CppStringLiteral(shown_url)},
          {"spool_version", SpoolVersion()}};
}

// Adds a file, as an edit when it exists (only reachable with --force) so the diff is exact.
void Put(Plan& plan, const std::string& path, std::string content) {
  if (auto existing = plan.Read(path)) {
    plan.Edit(path, std::move(*existing), std::move(content));
  } else {
    plan.Create(path, std::move(content));
  }
}

std::string Indent(const std::string& block, std::string_view indent) {
  std::string out;
  size_t start = 0;
  while (start < block.size()) {
    size_t end = block.find('\n', start);
    if (end == std::string::npos) end = block.size();
    const std::string_view line(block.data() + start, end - start);
    if (!line.empty()) out += std::string(indent) + std::string(line);
    out += '\n';
    start = end + 1;
  }
  return out;
}

// The job files in jobs/: (name, is_task) for every jobs/*.h whose first line is
// `// spool:job NAME` or `// spool:task NAME`, NAME matching the file name.
std::vector<std::pair<std::string, bool>> ScanJobs(const Plan& plan,
                                                   std::vector<std::string>& notes) {
  std::vector<std::pair<std::string, bool>> jobs;
  std::error_code ec;
  const fs::path dir = plan.root() / "jobs";
  if (!fs::is_directory(dir, ec)) return jobs;
  std::vector<fs::path> headers;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().extension() == ".h") headers.push_back(entry.path());
  }
  std::sort(headers.begin(), headers.end());
  for (const auto& header : headers) {
    const std::string stem = header.stem().string();
    if (stem == "registry") continue;
    const auto text = plan.Read("jobs/" + header.filename().string());
    if (!text) continue;
    const std::string first = text->substr(0, text->find('\n'));
    bool is_task = false;
    std::string name;
    if (first.rfind("// spool:job ", 0) == 0) {
      name = first.substr(13);
    } else if (first.rfind("// spool:task ", 0) == 0) {
      name = first.substr(14);
      is_task = true;
    } else {
      continue;  // a helper header of the user's: not a job
    }
    if (name != stem) {
      notes.push_back(
          fmt::format("jobs/{} says spool:{} {} but is named {}: left out of the registry",
                      stem + ".h", is_task ? "task" : "job", name, stem));
      continue;
    }
    jobs.emplace_back(name, is_task);
  }
  return jobs;
}

// `existing` with the lines of `wanted` it lacks appended (each with the comment lines just above
// it in `wanted`).
std::string MergeGitignore(const std::string& existing, const std::string& wanted) {
  std::set<std::string> have;
  std::istringstream in(existing);
  for (std::string line; std::getline(in, line);) have.insert(line);
  std::string added;
  std::string comments;
  std::istringstream want(wanted);
  for (std::string line; std::getline(want, line);) {
    if (line.empty() || line.front() == '#') {
      if (!have.contains(line)) comments += line + "\n";
      continue;
    }
    if (!have.contains(line)) added += comments + line + "\n";
    comments.clear();
  }
  if (added.empty()) return existing;
  std::string out = existing;
  if (!out.empty() && out.back() != '\n') out += '\n';
  return out + added;
}

// Notes that --force writes `paths` again, for those of them the plan changes: "changed" alone
// does not say that what the user wrote in them is gone.
void NoteRewrittenFiles(Generated& out, const std::vector<std::string>& paths) {
  for (const auto& c : out.plan.changes()) {
    if (!c.before || std::find(paths.begin(), paths.end(), c.path) == paths.end()) continue;
    out.notes.push_back(fmt::format(
        "--force writes {} again as spool generates it: what was written in it by hand is "
        "replaced (--dry-run shows the diff)",
        c.path));
  }
}

// The first words of the queue's migration, which name the database it was written for.
std::string QueueMigrationTitle(std::string_view driver) {
  return fmt::format("spool's job queue tables for {},", driver);
}

std::optional<std::string> ExistingQueueMigration(const Plan& plan) {
  std::error_code ec;
  std::vector<std::string> found;
  for (const auto& entry : fs::directory_iterator(plan.root() / kMigrationsDir, ec)) {
    const std::string file = entry.path().filename().string();
    if (file.size() > kQueueMigrationSuffix.size() && file.ends_with(kQueueMigrationSuffix)) {
      found.push_back(file);
    }
  }
  if (found.empty()) return std::nullopt;
  std::sort(found.begin(), found.end());
  return fmt::format("{}/{}", kMigrationsDir, found.front());
}

// `block` without the #include lines `text` already has, and without blank lines left at its
// start: injected code must compile without duplicating what the app includes.
std::string DropPresentIncludes(const std::string& block, const std::string& text) {
  std::string out;
  size_t start = 0;
  while (start < block.size()) {
    size_t end = block.find('\n', start);
    if (end == std::string::npos) end = block.size();
    const std::string line = block.substr(start, end - start);
    start = end + 1;
    if (line.rfind("#include ", 0) == 0 &&
        (text.find("\n" + line + "\n") != std::string::npos || text.rfind(line + "\n", 0) == 0)) {
      continue;
    }
    if (line.empty() && (out.empty() || out.ends_with("\n\n"))) continue;
    out += line + "\n";
  }
  return out;
}

struct MarkerEdit {
  std::string_view marker;
  std::string block;
  std::string_view sentinel;
  std::string where;  // for the manual instructions
};

}  // namespace

std::string MigrationTimestamp(std::chrono::system_clock::time_point now, const Plan& plan) {
  std::error_code ec;
  std::set<std::string> taken;
  for (const auto& entry : fs::directory_iterator(plan.root() / kMigrationsDir, ec)) {
    taken.insert(entry.path().filename().string().substr(0, 14));
  }
  for (;;) {
    const std::time_t t = std::chrono::system_clock::to_time_t(now);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y%m%d%H%M%S", &tm);
    if (!taken.contains(buf)) return buf;
    now += std::chrono::seconds(1);  // a migration already has this second: take the next one
  }
}

std::optional<std::string> InsertAtMarker(const std::string& text, std::string_view marker,
                                          const std::string& block, std::string_view sentinel) {
  size_t line_start = 0;
  while (line_start < text.size()) {
    size_t line_end = text.find('\n', line_start);
    if (line_end == std::string::npos) line_end = text.size();
    const std::string_view line(text.data() + line_start, line_end - line_start);
    const size_t first = line.find_first_not_of(" \t");
    const size_t last = line.find_last_not_of(" \t\r");
    if (first != std::string_view::npos && line.substr(first, last - first + 1) == marker) {
      if (!sentinel.empty() && text.find(sentinel) != std::string::npos) return text;
      return text.substr(0, line_start) + block + text.substr(line_start);
    }
    line_start = line_end + 1;
  }
  return std::nullopt;
}

// The first of main.cpp and CMakeLists.txt that lacks the queue's wiring, if one does.
std::optional<std::string_view> UnwiredFile(const Plan& plan) {
  const auto main_text = plan.Read(std::string(kMainPath));
  if (!main_text || main_text->find(kMainWiredSentinel) == std::string::npos) return kMainPath;
  const auto cmake_text = plan.Read(std::string(kCMakePath));
  if (!cmake_text || cmake_text->find(kCMakeWiredSentinel) == std::string::npos) return kCMakePath;
  return std::nullopt;
}

// Adds the queue's blocks at the markers of main.cpp and CMakeLists.txt (`main_text` and
// `cmake_text`, edited in place; a block already there is not added again). Returns the edits
// that need a hand because a marker is missing, empty when every block is in.
std::string WireQueue(const AppInfo& app, std::string& main_text, std::string& cmake_text) {
  const auto vars = AppVars(app);
  std::map<std::string, std::string> setup_vars = vars;
  setup_vars["db_options"] = app.db == DbKind::kSqlite
                                 ? "  // SQLite: one file shared by the app's threads; a writer "
                                   "waits this long for a lock.\n"
                                   "  spool_options.sqlite.busy_timeout = std::chrono::seconds(5);"
                                 : "";
  const std::vector<MarkerEdit> main_edits = {
      {"// spool:includes",
       DropPresentIncludes(RenderTemplate("queue/includes.tmpl", vars), main_text),
       "\"jobs/registry.h\"", "with the other #include lines"},
      {"// spool:setup", RenderTemplate("queue/setup.tmpl", setup_vars), kMainWiredSentinel,
       "in main(), after the port is bound and the signal-waiter thread started, before "
       "`set_up = true`"},
      {"// spool:routes", RenderTemplate("queue/routes.tmpl", vars), "jobs::IsKnownKind(",
       "in main(), with the other routes"},
      {"// spool:shutdown", RenderTemplate("queue/shutdown.tmpl", vars), "spool_client->Stop(",
       "in main(), after the server has stopped"},
  };
  const std::vector<MarkerEdit> cmake_edits = {
      {"# spool:find-packages", RenderTemplate("queue/cmake_find.tmpl", vars), kCMakeWiredSentinel,
       "after the other find_package lines"},
      {"# spool:sources", RenderTemplate("queue/cmake_sources.tmpl", vars), "/jobs/*.cc",
       fmt::format("after add_executable({})", app.name)},
      {"# spool:link", RenderTemplate("queue/cmake_link.tmpl", vars), "spool::spool)",
       fmt::format("after target_link_libraries({} ...)", app.name)},
      {"# spool:tests", RenderTemplate("queue/cmake_tests.tmpl", vars), "_job_tests",
       "at the end of the file"},
  };
  std::string manual;
  auto apply = [&manual](std::string& text, std::string_view file,
                         const std::vector<MarkerEdit>& edits) {
    for (const auto& e : edits) {
      auto edited = InsertAtMarker(text, e.marker, e.block, e.sentinel);
      if (edited) {
        text = std::move(*edited);
      } else if (text.find(e.sentinel) == std::string::npos) {
        manual += fmt::format("\n{}: no `{}` marker. Add, {}:\n{}", file, e.marker, e.where,
                              Indent(e.block, "    "));
      }
    }
  };
  apply(main_text, kMainPath, main_edits);
  apply(cmake_text, kCMakePath, cmake_edits);
  return manual;
}

Generated PlanNew(const NewOptions& options) {
  ValidateAppName(options.name);
  Generated out(options.dir);
  std::error_code ec;
  std::optional<SpoolRc> existing_rc;
  if (fs::exists(options.dir, ec)) {
    if (!fs::is_directory(options.dir, ec)) {
      throw CommandError(fmt::format("{} exists and is not a folder", options.dir.string()));
    }
    if (!options.force && !fs::is_empty(options.dir, ec)) {
      throw CommandError(fmt::format(
          "{} exists and is not empty: choose another --dir (or --force to overwrite the "
          "files of an app spool new made there)",
          options.dir.string()));
    }
    existing_rc = ReadSpoolRc(options.dir);
  }
  AppInfo app;
  app.root = options.dir;
  app.name = options.name;
  // --force over an app keeps its database unless the command names another: writing the
  // skeleton again must not move the app to a new, empty database.
  const auto rc_db = existing_rc ? existing_rc->Get("db") : std::nullopt;
  const auto rc_url = existing_rc ? existing_rc->Get("database_url") : std::nullopt;
  // Without --db, a --database-url says which database it is.
  const std::optional<DbKind> url_db = DbKindOfUrl(options.database_url);
  app.db = options.db ? *options.db
           : url_db   ? *url_db
           : rc_db    ? ParseDbKind(*rc_db, fmt::format("db in {}", existing_rc->path.string()),
                                    kExitFailed)
                      : DbKind::kSqlite;
  const bool keep_url = options.database_url.empty() && rc_url && !rc_url->empty() &&
                        (!options.db || !rc_db || *rc_db == DbKindName(*options.db));
  app.database_url = !options.database_url.empty() ? options.database_url
                     : keep_url                    ? *rc_url
                                                   : DefaultDatabaseUrl(app.db, options.name);
  CheckUrlMatchesDb(app.db, app.database_url,
                    keep_url ? existing_rc->path.string() : "--database-url");
  // A relative SQLite path is the app folder's, which this command makes.
  if (app.database_url.starts_with("sqlite:///")) {
    if (const auto folder = MissingSqliteFolder(app.database_url)) {
      out.notes.push_back(fmt::format(
          "the database's directory {} does not exist: create it before spool migration up",
          folder->string()));
    }
  }
  auto vars = AppVars(app);
  auto rc_vars = vars;
  rc_vars["database_url"] = app.database_url;  // the CLI's own settings: the whole URL
  std::string gitignore = RenderTemplate("new/gitignore.tmpl", vars);
  if (UrlWithoutPassword(app.database_url) != app.database_url) {
    // A first `git add .` would otherwise commit the password.
    gitignore += "# holds the database password\n/.spoolrc\n";
    out.notes.push_back(
        ".spoolrc holds the database password, so .gitignore lists it: to share the other "
        "settings, give the password through ~/.pgpass, $PGPASSWORD or $SPOOL_DATABASE_URL "
        "instead and take .spoolrc out of .gitignore (src/main.cpp never holds it)");
  }
  // An existing .gitignore keeps its lines (one may hide a secret); the skeleton's are added.
  if (const auto existing = out.plan.Read(".gitignore")) {
    gitignore = MergeGitignore(*existing, gitignore);
  }
  if (options.force && !existing_rc) {
    // Not an app spool new made: its files are the user's, not generated ones.
    std::vector<std::string> theirs;
    for (const std::string_view path :
         {".gitignore", "CMakeLists.txt", "README.md", "src/main.cpp"}) {
      if (out.plan.Read(std::string(path))) theirs.emplace_back(path);
    }
    if (!theirs.empty()) {
      std::string list;
      for (const auto& path : theirs) list += (list.empty() ? "" : ", ") + path;
      throw CommandError(fmt::format(
          "{} has no .spoolrc, so spool new did not make it, and --force would write over files "
          "spool did not write: {}. Nothing was written: move them away or choose another --dir",
          options.dir.string(), list));
    }
  }
  std::string main_text = RenderTemplate("new/main.cpp.tmpl", vars);
  std::string cmake_text = RenderTemplate("new/CMakeLists.txt.tmpl", vars);
  // --force over an app whose queue is set up: the skeleton is written again with the queue wired
  // in, as `spool gen queue` left it, so that jobs/ keeps running (gen queue's files are kept).
  const auto registry = out.plan.Read(std::string(kRegistryHeader));
  const auto queue_migration = ExistingQueueMigration(out.plan);
  // The wiring includes jobs/registry.h, so only an app that has it is wired.
  const bool queue_set_up = options.force && registry.has_value();
  if (options.force && !registry && queue_migration) {
    out.notes.push_back(fmt::format(
        "{} is here but {} is not: run spool gen queue --force to set the job queue up again",
        *queue_migration, kRegistryHeader));
  }
  if (queue_set_up) {
    if (const std::string manual = WireQueue(app, main_text, cmake_text); !manual.empty()) {
      throw CommandError("internal: the new app's templates lack the queue's markers:" + manual);
    }
    out.notes.push_back(fmt::format(
        "the job queue set up in this app ({}) is wired into the new {} and {} again; jobs/ and "
        "{} are kept",
        kRegistryHeader, kMainPath, kCMakePath, kMigrationsDir));
    // The queue's migration names the driver it was written for (RenderQueueMigration).
    const auto migration_text =
        queue_migration ? out.plan.Read(*queue_migration) : std::optional<std::string>();
    if (migration_text &&
        migration_text->find(QueueMigrationTitle(DbKindName(app.db))) == std::string::npos) {
      out.notes.push_back(fmt::format(
          "{} was not written for {}: run spool gen queue --force to write it for this database",
          *queue_migration, DbTitle(app.db)));
    }
  }
  Put(out.plan, ".spoolrc", RenderTemplate("new/spoolrc.tmpl", rc_vars));
  Put(out.plan, ".gitignore", gitignore);
  Put(out.plan, std::string(kCMakePath), std::move(cmake_text));
  Put(out.plan, "README.md", RenderTemplate("new/README.md.tmpl", vars));
  Put(out.plan, std::string(kMainPath), std::move(main_text));
  Put(out.plan, "database/migrations/.gitkeep", "");
  if (existing_rc) {
    if (keep_url) {
      out.notes.push_back(fmt::format("the app keeps its database, {}, from .spoolrc",
                                      UrlWithoutPassword(app.database_url)));
    } else if (rc_url && *rc_url != app.database_url) {
      out.notes.push_back(fmt::format(".spoolrc's database_url changes from {} to {}",
                                      UrlWithoutPassword(*rc_url),
                                      UrlWithoutPassword(app.database_url)));
    }
  }
  NoteRewrittenFiles(out, {std::string(kMainPath), std::string(kCMakePath), "README.md"});
  out.summary =
      fmt::format("created app {} ({}) in {}", app.name, DbTitle(app.db), options.dir.string());
  out.next_steps = {
      fmt::format("cd {}", options.dir.string()),
      "spool serve    (builds into ./build and serves http://127.0.0.1:8080/; PORT=... to change)",
  };
  if (!queue_set_up) out.next_steps.push_back("spool gen queue    (adds background jobs)");
  return out;
}

std::string RenderQueueMigration(std::string_view driver,
                                 const std::vector<std::pair<std::string, std::string>>& up,
                                 const std::vector<std::pair<std::string, std::string>>& down) {
  std::string out = fmt::format(
      "-- {} generated by `spool gen queue` from the migrations\n"
      "-- built into spool {} (spool::MigrationSql), for review and for your migration history.\n"
      "-- `spool migration up` applies it in timestamp order with the app's other migrations by\n"
      "-- running spool's own MigrateUp (the same DDL, which also records the schema version\n"
      "-- spool checks at start); it is not run as text. Do not edit.\n\n"
      "-- +goose Up\n",
      QueueMigrationTitle(driver), SPOOL_VERSION);
  auto section = [&out](const std::pair<std::string, std::string>& m) {
    std::string sql = m.second;
    if (!sql.empty() && sql.back() != '\n') sql += '\n';
    out +=
        fmt::format("-- +goose StatementBegin\n-- spool migration: {}\n{}-- +goose StatementEnd\n",
                    m.first, sql);
  };
  for (const auto& m : up) section(m);
  out += "\n-- +goose Down\n";
  for (auto it = down.rbegin(); it != down.rend(); ++it) section(*it);
  return out;
}

std::vector<std::string> AppJobKinds(const fs::path& root) {
  const Plan plan(root);
  std::vector<std::string> notes;
  std::vector<std::string> kinds;
  for (const auto& [name, is_task] : ScanJobs(plan, notes)) {
    std::string kind = name;
    if (const auto text = plan.Read(fmt::format("jobs/{}.h", name))) {
      constexpr std::string_view kDecl = "kKind = \"";
      if (const size_t at = text->find(kDecl); at != std::string::npos) {
        const size_t begin = at + kDecl.size();
        if (const size_t end = text->find('"', begin); end != std::string::npos) {
          kind = text->substr(begin, end - begin);
        }
      }
    }
    kinds.push_back(std::move(kind));
  }
  return kinds;
}

std::string RenderRegistry(std::vector<std::pair<std::string, bool>> jobs) {
  std::sort(jobs.begin(), jobs.end());
  std::string includes;
  std::string adds;
  std::string kinds;
  std::string periodic;
  for (const auto& [name, is_task] : jobs) {
    const std::string camel = CamelCase(name);
    includes += fmt::format("#include \"jobs/{}.h\"\n", name);
    adds += fmt::format("  workers.Add<{}Worker>();\n", camel);
    kinds += fmt::format("      {}Args::kKind,\n", camel);
    if (is_task)
      periodic += fmt::format("  periodic.push_back(Task<{}Args>(\"{}\"));\n", camel, name);
  }
  std::string out =
      "// Generated by spool from the job files in jobs/ (those starting with a spool:job or\n"
      "// spool:task line). Do not edit: `spool gen job`, `spool gen task` and `spool gen queue\n"
      "// --force` rewrite it whole.\n"
      "#include \"jobs/registry.h\"\n\n"
      "#include <algorithm>\n#include <string>\n#include <utility>\n";
  if (!includes.empty()) out += "\n" + includes;
  out += "\nnamespace jobs {\n\nspool::Workers MakeWorkers() {\n  spool::Workers workers;\n";
  out += adds;
  out += "  return workers;\n}\n\n";
  out += "const std::vector<std::string_view>& Kinds() {\n";
  out += kinds.empty()
             ? "  static const std::vector<std::string_view> kinds;\n"
             : "  static const std::vector<std::string_view> kinds = {\n" + kinds + "  };\n";
  out += "  return kinds;\n}\n\n";
  out +=
      "bool IsKnownKind(std::string_view kind) {\n"
      "  const auto& kinds = Kinds();\n"
      "  return std::find(kinds.begin(), kinds.end(), kind) != kinds.end();\n}\n\n";
  if (!periodic.empty()) {
    // Task files from before Configure existed have none: they keep working unchanged.
    out +=
        "namespace {\n\n"
        "// A task: its kSchedule, then what its Configure sets (time zone, missed ticks, the\n"
        "// options of each tick's job), if it has one.\n"
        "template <typename Args>\n"
        "spool::PeriodicJob Task(std::string name) {\n"
        "  spool::PeriodicJob task =\n"
        "      spool::MakePeriodicJob(std::move(name), std::string(Args::kSchedule), Args{});\n"
        "  if constexpr (requires { Args::Configure(task); }) Args::Configure(task);\n"
        "  return task;\n}\n\n}  // namespace\n\n";
  }
  out += "std::vector<spool::PeriodicJob> PeriodicJobs() {\n";
  out += "  std::vector<spool::PeriodicJob> periodic;\n";
  out += periodic;
  out += "  return periodic;\n}\n\n}  // namespace jobs\n";
  return out;
}

Generated PlanQueue(const AppInfo& app, const QueueOptions& options) {
  Generated out(app.root);
  Plan& plan = out.plan;
  const auto existing_registry = plan.Read(std::string(kRegistryHeader));
  const auto existing_migration = ExistingQueueMigration(plan);
  if ((existing_registry || existing_migration) && !options.force) {
    const std::string found =
        existing_registry ? std::string(kRegistryHeader) : *existing_migration;
    // A half-wired app (main.cpp or CMakeLists.txt edited by hand) needs --force, not "nothing
    // changed" alone.
    if (const auto unwired = UnwiredFile(plan)) {
      throw CommandError(fmt::format(
          "queue already set up ({} exists), but {} does not use it: run spool gen queue --force "
          "to wire it in again (jobs/ and its files are kept); nothing changed",
          found, *unwired));
    }
    // Jobs deleted by hand leave jobs/registry.cc including their headers: the build fails on
    // them until the registry is written again from what jobs/ holds.
    if (const auto registry = plan.Read(std::string(kRegistrySource))) {
      constexpr std::string_view kInclude = "#include \"jobs/";
      for (size_t at = registry->find(kInclude); at != std::string::npos;
           at = registry->find(kInclude, at + 1)) {
        const size_t start = at + std::string_view("#include \"").size();
        const std::string header = registry->substr(start, registry->find('"', start) - start);
        if (header != kRegistryHeader && !plan.Read(header)) {
          throw CommandError(fmt::format(
              "{} still lists {}, which is gone: run spool gen queue --force to write it again "
              "from the jobs in jobs/ (they and the rest of the app are kept); nothing changed",
              kRegistrySource, header));
        }
      }
    }
    throw CommandError(fmt::format("queue already set up ({} exists): nothing changed", found));
  }
  const auto vars = AppVars(app);

  // Every edit is computed and every marker checked before anything is planned for writing.
  const auto main_text = plan.Read(std::string(kMainPath));
  const auto cmake_text = plan.Read(std::string(kCMakePath));
  if (!main_text || !cmake_text) {
    throw CommandError(fmt::format(
        "{} not found: spool gen queue edits the files `spool new` creates; nothing was written",
        !main_text ? kMainPath : kCMakePath));
  }
  std::string new_main = *main_text;
  std::string new_cmake = *cmake_text;
  if (const std::string manual = WireQueue(app, new_main, new_cmake); !manual.empty()) {
    throw CommandError(fmt::format(
        "cannot wire the job queue in automatically; nothing was written.\n"
        "Add the marker lines (then run spool gen queue again) or make these edits by hand:\n{}",
        manual));
  }

  const std::string driver = DbKindName(app.db);
  if (!options.migrations) throw CommandError("internal: no migration source");
  const auto up = options.migrations(driver, true);
  const auto down = options.migrations(driver, false);
  if (up.empty()) {
    throw CommandError(fmt::format("the spool library has no {} migrations", driver));
  }
  const std::string migration_path =
      existing_migration
          ? *existing_migration
          : fmt::format("{}/{}{}", kMigrationsDir, MigrationTimestamp(options.now, plan),
                        kQueueMigrationSuffix);
  Put(plan, migration_path, RenderQueueMigration(driver, up, down));
  Put(plan, std::string(kRegistryHeader), RenderTemplate("queue/registry.h.tmpl", vars));
  Put(plan, std::string(kRegistrySource), RenderRegistry(ScanJobs(plan, out.notes)));
  plan.Edit(std::string(kMainPath), *main_text, new_main);
  plan.Edit(std::string(kCMakePath), *cmake_text, new_cmake);

  out.summary = fmt::format("set up the job queue ({})", DbTitle(app.db));
  // An app that has jobs already (gen queue --force) is not told to add the sample one.
  std::vector<std::string> said_above;  // RenderRegistry's scan has noted them
  const bool has_jobs = !ScanJobs(plan, said_above).empty();
  out.next_steps = {
      has_jobs ? "spool gen job NAME    (another job: jobs/NAME.{h,cc} and its test)"
               : "spool gen job send_email    (a job: jobs/send_email.{h,cc} and its test)",
      fmt::format("spool migration up    (creates the queue tables in {})",
                  UrlWithoutPassword(app.database_url)),
      fmt::format("spool serve    (spool {} must be installed where CMake finds it, e.g. "
                  "CMAKE_PREFIX_PATH=/opt/spool)",
                  SpoolVersion()),
  };
  if (existing_registry || existing_migration) {  // --force over a queue already set up
    // Say which files --force writes over: a hand edit in them is replaced, and "changed" alone
    // does not tell that from the blocks added to main.cpp and CMakeLists.txt around user code.
    for (const auto& c : plan.changes()) {
      if (!c.before) continue;
      if (c.path == kMainPath || c.path == kCMakePath) {
        out.notes.push_back(
            fmt::format("--force adds to {} only the queue's blocks it lacks; the rest, your edits "
                        "too, is kept",
                        c.path));
      } else {
        out.notes.push_back(fmt::format(
            "--force writes {} again as spool generates it{}: an edit made to it by hand is "
            "replaced",
            c.path, c.path == kRegistrySource ? " (from the jobs in jobs/)" : ""));
      }
    }
    if (plan.changes().empty()) {
      out.summary = fmt::format(
          "the job queue ({}) is set up and wired in, and its files are as spool writes them: "
          "nothing changed",
          DbTitle(app.db));
      out.next_steps.clear();
    } else {
      out.summary = fmt::format("set up the job queue again ({}, --force); your jobs are kept",
                                DbTitle(app.db));
    }
  }
  return out;
}

Generated PlanJob(const AppInfo& app, std::string_view name_input,
                  const std::optional<std::string>& schedule_input, bool force) {
  const JobName name = NormalizeJobName(name_input);
  // Fields one space apart, as they are written into the job's header and the notes.
  std::optional<std::string> schedule;
  if (schedule_input) {
    std::istringstream fields(*schedule_input);
    std::string field;
    schedule.emplace();
    while (fields >> field) *schedule += (schedule->empty() ? "" : " ") + field;
    ValidateCron(*schedule);
  }
  Generated out(app.root);
  Plan& plan = out.plan;
  if (!name.note.empty()) out.notes.push_back(name.note);
  if (!plan.Read(std::string(kRegistryHeader))) {
    throw CommandError(fmt::format(
        "no job queue in this app ({} is missing): run spool gen queue first", kRegistryHeader));
  }
  const std::string header = fmt::format("jobs/{}.h", name.snake);
  const std::string source = fmt::format("jobs/{}.cc", name.snake);
  const std::string test = fmt::format("tests/jobs/{}_test.cc", name.snake);
  const std::string camel = CamelCase(name.snake);
  auto jobs = ScanJobs(plan, out.notes);
  if (!force) {
    for (const auto& path : {header, source, test}) {
      if (plan.Read(path)) {
        const auto found = std::find_if(jobs.begin(), jobs.end(),
                                        [&](const auto& j) { return j.first == name.snake; });
        throw CommandError(
            fmt::format("{} {} already exists ({}): nothing changed (use --force to overwrite it)",
                        found != jobs.end() && found->second ? "task" : "job", name.snake, path));
      }
    }
  }
  for (const auto& [other, is_task] : jobs) {
    if (other != name.snake && CamelCase(other) == camel) {
      throw CommandError(fmt::format(
          "job name \"{}\" gives the C++ types {}Args and {}Worker, which {} {} already has "
          "(jobs/{}.h): choose another name; nothing changed",
          name.snake, camel, camel, is_task ? "task" : "job", other, other));
    }
  }
  std::map<std::string, std::string> vars = AppVars(app);
  vars["name"] = name.snake;
  vars["camel"] = camel;
  vars["marker"] = schedule ? "task" : "job";
  vars["command"] = schedule ? fmt::format("gen task {} --schedule \"{}\"", name.snake, *schedule)
                             : fmt::format("gen job {}", name.snake);
  vars["schedule_decl"] =
      schedule
          ? fmt::format(
                "  // When the task runs: minute hour day-of-month month day-of-week, in UTC "
                "unless\n"
                "  // Configure sets a time zone.\n"
                "  static constexpr std::string_view kSchedule = \"{}\";\n"
                "  // The rest of the task, applied by jobs/registry.cc, for example:\n"
                "  //   task.time_zone = \"Europe/Kyiv\";  // kSchedule read in that zone\n"
                "  //   task.missed = spool::PeriodicJob::Missed::kSkip;  // ticks missed while "
                "down\n"
                "  //   task.run_on_start = true;  // also once when the schedule is first seen\n"
                "  //   task.options.unique = spool::UniqueOptions{{.by_args = true}};  // no "
                "overlap\n"
                "  static void Configure(spool::PeriodicJob& task) {{ (void)task; }}",
                *schedule)
          : "";
  // A task's test also checks its schedule as the app will: an edited kSchedule with a typo
  // would otherwise pass the tests and stop the app at start.
  vars["schedule_test"] =
      schedule ? fmt::format(
                     "TEST({0}Test, ScheduleIsAcceptedByTheClient) {{\n"
                     "  spool::PeriodicJob task = spool::MakePeriodicJob(\n"
                     "      \"{1}\", std::string(jobs::{0}Args::kSchedule), jobs::{0}Args{{}});\n"
                     "  jobs::{0}Args::Configure(task);\n"
                     "  spool::ClientOptions options;\n"
                     "  options.periodic_jobs.push_back(std::move(task));\n"
                     "  const auto queue = spool::testing::TestQueue::Create(std::move(options));\n"
                     "  ASSERT_TRUE(queue) << queue.error().ToString();\n"
                     "}}\n",
                     camel, name.snake)
               : "";
  if (const auto unwired = UnwiredFile(plan)) {
    out.notes.push_back(fmt::format(
        "{} does not use the job queue, so the app will not run this {}: run spool gen queue "
        "--force to wire it in again",
        *unwired, schedule ? "task" : "job"));
  }
  Put(plan, header, RenderTemplate("job/job.h.tmpl", vars));
  Put(plan, source, RenderTemplate("job/job.cc.tmpl", vars));
  Put(plan, test, RenderTemplate("job/job_test.cc.tmpl", vars));
  NoteRewrittenFiles(out, {header, source, test});

  jobs.erase(std::remove_if(jobs.begin(), jobs.end(),
                            [&](const auto& j) { return j.first == name.snake; }),
             jobs.end());
  jobs.emplace_back(name.snake, schedule.has_value());
  const std::string registry_path(kRegistrySource);
  Put(plan, registry_path, RenderRegistry(jobs));

  const bool existed = plan.Read(header).has_value();
  out.summary = fmt::format("{} {} {}{}", existed ? "wrote" : "created", schedule ? "task" : "job",
                            name.snake, schedule ? fmt::format(" ({})", *schedule) : "");
  if (existed) out.summary += " again (--force)";
  out.next_steps = {
      fmt::format("write the job: its arguments in {} ({}Args), the work in {} ({}Worker::Work)",
                  header, camel, source, camel),
      fmt::format("enqueue it from a handler: jobs_client.Insert(jobs::{}Args{{...}}), or try "
                  "curl --json '{{\"message\":\"hi\"}}' http://127.0.0.1:8080/jobs/{}",
                  camel, name.snake),
      "spool serve",
      fmt::format("test it: cmake --build build && ctest --test-dir build -R {}Test", camel),
  };
  if (schedule) {
    out.notes.push_back(fmt::format(
        "jobs::PeriodicJobs() in {} lists {}: the app enqueues it at \"{}\" (UTC) through "
        "ClientOptions::periodic_jobs",
        registry_path, name.snake, *schedule));
  }
  return out;
}

}  // namespace spool::cli
