// The generators on temp-dir apps, with a fixed clock and fake library migrations so the golden
// files do not change when spool's schema does (commands_test checks the real migrations).
#include "generator/generator.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

#include "cli_test_util.h"
#include "commands/commands.h"
#include "common/config.h"

namespace spool::cli {
namespace {

namespace fs = std::filesystem;
using testing::ExpectGolden;
using testing::Slurp;
using testing::Snapshot;
using testing::TempDir;
using testing::WriteText;

// 2026-11-27 21:07:51 UTC.
const std::chrono::system_clock::time_point kNow =
    std::chrono::system_clock::from_time_t(1795813671);

std::vector<std::pair<std::string, std::string>> FakeMigrations(std::string_view driver, bool up) {
  const std::string d(driver);
  if (up) {
    return {{"1_create_jobs", "CREATE TABLE spool_jobs_" + d + " (id INTEGER);\n"},
            {"2_add_tags", "ALTER TABLE spool_jobs_" + d + " ADD COLUMN tags TEXT;"}};
  }
  return {{"1_create_jobs", "DROP TABLE spool_jobs_" + d + ";\n"},
          {"2_add_tags", "ALTER TABLE spool_jobs_" + d + " DROP COLUMN tags;\n"}};
}

std::string Flat(const std::string& path) {
  std::string out = path;
  for (char& c : out) {
    if (c == '/') c = '~';
  }
  return out + ".golden";
}

class GeneratorTest : public ::testing::Test {
 protected:
  // Creates the app with `spool new` in tmp_/app and returns its AppInfo.
  AppInfo NewApp(DbKind db = DbKind::kSqlite) {
    NewOptions options;
    options.name = "demo";
    options.db = db;
    options.dir = root();
    PlanNew(options).plan.Apply(false);
    return LoadApp(root());
  }
  Generated Queue(const AppInfo& app, bool force = false) {
    QueueOptions options;
    options.migrations = FakeMigrations;
    options.now = kNow;
    options.force = force;
    return PlanQueue(app, options);
  }
  fs::path root() const { return tmp_.path() / "app"; }
  // The queue's migration, relative to the app root (nullopt when there is none).
  std::optional<std::string> ExistingMigrationFile() const {
    for (const auto& e : fs::directory_iterator(root() / "database/migrations")) {
      const std::string name = e.path().filename().string();
      if (name.ends_with("_setup_spool_queue.sql")) return "database/migrations/" + name;
    }
    return std::nullopt;
  }
  std::string Read(const std::string& rel) const { return Slurp(root() / rel); }

  // Expects `fn` to throw CommandError containing `needle` and to leave the app untouched.
  template <typename Fn>
  void ExpectRefused(Fn fn, const std::string& needle) {
    const auto before = Snapshot(root());
    try {
      fn();
      ADD_FAILURE() << "not refused; expected: " << needle;
    } catch (const CommandError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_EQ(Snapshot(root()), before) << "a refused command changed the app";
  }

  // Whether one of `gen`'s notes contains `text`.
  static bool HasNote(const Generated& gen, std::string_view text) {
    for (const auto& note : gen.notes) {
      if (note.find(text) != std::string::npos) return true;
    }
    ADD_FAILURE() << "no note contains: " << text;
    return false;
  }

  TempDir tmp_;
};

TEST_F(GeneratorTest, NewMatchesGoldenFiles) {
  NewOptions options;
  options.name = "demo";
  options.dir = root();
  const Generated gen = PlanNew(options);
  for (const auto& c : gen.plan.changes()) {
    EXPECT_FALSE(c.before.has_value()) << c.path;
    ExpectGolden("new_sqlite/" + Flat(c.path), c.after);
  }
  EXPECT_EQ(gen.plan.changes().size(), 6u);
}

TEST_F(GeneratorTest, NewRecordsDbKindAndUrlInSpoolrc) {
  NewOptions options;
  options.name = "shop";
  options.db = DbKind::kPostgres;
  options.dir = root();
  PlanNew(options).plan.Apply(false);
  const AppInfo app = LoadApp(root());
  EXPECT_EQ(app.name, "shop");
  EXPECT_EQ(app.db, DbKind::kPostgres);
  EXPECT_EQ(app.database_url, "postgres://127.0.0.1:5432/shop");

  const AppInfo sqlite = [&] {
    TempDir other;
    NewOptions o;
    o.name = "lite";
    o.dir = other.path() / "lite";
    PlanNew(o).plan.Apply(false);
    return LoadApp(o.dir);
  }();
  EXPECT_EQ(sqlite.db, DbKind::kSqlite);
  EXPECT_EQ(sqlite.database_url, "sqlite://app.db");
}

TEST_F(GeneratorTest, SpoolrcIsIgnoredByGitOnlyWhenItHoldsAPassword) {
  NewOptions options;
  options.name = "shop";
  options.db = DbKind::kPostgres;
  options.database_url = "postgres://u@127.0.0.1:5432/shop";  // the password is in ~/.pgpass
  options.dir = root();
  const Generated made = PlanNew(options);
  EXPECT_TRUE(made.notes.empty());
  made.plan.Apply(false);
  EXPECT_EQ(Read(".gitignore").find(".spoolrc"), std::string::npos) << Read(".gitignore");
}

TEST_F(GeneratorTest, GeneratedSourceHoldsTheUrlEscapedAndWithoutItsPassword) {
  NewOptions options;
  options.name = "shop";
  options.db = DbKind::kPostgres;
  options.database_url =
      "postgres://u:se\\cret@127.0.0.1:5432/sh\\nop\"x?password=p2&sslmode=disable";
  options.dir = root();
  const Generated made = PlanNew(options);
  ASSERT_EQ(made.notes.size(), 1u);
  EXPECT_NE(made.notes[0].find(".spoolrc holds the database password, so .gitignore lists it"),
            std::string::npos);
  made.plan.Apply(false);
  EXPECT_NE(Read(".gitignore").find("\n/.spoolrc\n"), std::string::npos) << Read(".gitignore");
  const AppInfo app = LoadApp(root());
  EXPECT_EQ(app.database_url, options.database_url);  // .spoolrc keeps the whole URL
  Queue(app).plan.Apply(false);
  const std::string main = Read("src/main.cpp");
  EXPECT_NE(main.find(R"(: "postgres://u@127.0.0.1:5432/sh\\nop\"x?sslmode=disable";)"),
            std::string::npos)
      << main;
  EXPECT_EQ(main.find("cret"), std::string::npos);
  EXPECT_EQ(main.find("p2"), std::string::npos);
  EXPECT_EQ(Read("README.md").find("cret"), std::string::npos);
}

TEST_F(GeneratorTest, NewRefusesANonEmptyFolder) {
  WriteText(root() / "mine.txt", "x");
  NewOptions options;
  options.name = "demo";
  options.dir = root();
  ExpectRefused([&] { PlanNew(options); }, "not empty");
}

TEST_F(GeneratorTest, QueueMatchesGoldenFiles) {
  const AppInfo app = NewApp();
  const Generated gen = Queue(app);
  gen.plan.Apply(false);
  for (const char* path : {"src/main.cpp", "CMakeLists.txt", "jobs/registry.h", "jobs/registry.cc",
                           "database/migrations/20261127210751_setup_spool_queue.sql"}) {
    ExpectGolden("queue_sqlite/" + Flat(path), Read(path));
  }
}

TEST_F(GeneratorTest, QueueOnPostgresAppGetsPostgresCodeAndMigrations) {
  const AppInfo app = NewApp(DbKind::kPostgres);
  Queue(app).plan.Apply(false);
  ExpectGolden("queue_postgres/" + Flat("src/main.cpp"), Read("src/main.cpp"));
  const std::string main = Read("src/main.cpp");
  EXPECT_NE(main.find("\"postgres://127.0.0.1:5432/demo\""), std::string::npos);
  EXPECT_NE(main.find("driver_name() != \"postgres\""), std::string::npos);
  EXPECT_EQ(main.find("sqlite"), std::string::npos);
  const std::string sql = Read("database/migrations/20261127210751_setup_spool_queue.sql");
  EXPECT_NE(sql.find("spool_jobs_postgres"), std::string::npos);
  EXPECT_EQ(sql.find("spool_jobs_sqlite"), std::string::npos);
}

TEST_F(GeneratorTest, QueueWiresEverythingMainNeedsOnce) {
  const AppInfo app = NewApp();
  Queue(app).plan.Apply(false);
  const std::string main = Read("src/main.cpp");
  for (const char* needed :
       {"#include <spool/spool.h>", "#include \"jobs/registry.h\"", "#include <memory>",
        "spool::Client::Open(database_url, std::move(spool_options), jobs::MakeWorkers())",
        "spool_client->Start()", "spool_client->Stop(std::chrono::seconds(30))", "[&jobs_client]",
        "jobs_client.InsertRaw("}) {
    EXPECT_NE(main.find(needed), std::string::npos) << needed;
    EXPECT_EQ(main.find(needed), main.rfind(needed)) << "twice: " << needed;
  }
  // Setup precedes the routes that use it, and Stop follows the server's shutdown.
  EXPECT_LT(main.find("spool::Client::Open("), main.find("server.Post("));
  EXPECT_LT(main.find("signal_waiter.join()"), main.find("spool_client->Stop("));
  // The markers stay for later commands.
  for (const char* marker :
       {"// spool:includes", "// spool:setup", "// spool:routes", "// spool:shutdown"}) {
    EXPECT_NE(main.find(marker), std::string::npos) << marker;
  }
  const std::string cmake = Read("CMakeLists.txt");
  EXPECT_NE(cmake.find("find_package(spool 0.1 CONFIG REQUIRED)"), std::string::npos) << cmake;
  EXPECT_NE(cmake.find("target_link_libraries(demo PRIVATE spool::spool)"), std::string::npos);
  EXPECT_NE(cmake.find("jobs/*.cc"), std::string::npos);
}

TEST_F(GeneratorTest, QueueAddsOnlyIncludesTheAppLacks) {
  const AppInfo app = NewApp();
  std::string main = Read("src/main.cpp");
  main.insert(main.find("#include <string>\n"), "#include <memory>\n");
  WriteText(root() / "src/main.cpp", main);
  Queue(app).plan.Apply(false);
  main = Read("src/main.cpp");
  EXPECT_EQ(main.find("#include <memory>"), main.rfind("#include <memory>")) << main;
  EXPECT_NE(main.find("#include <utility>"), std::string::npos);
  EXPECT_NE(main.find("#include <spool/spool.h>"), std::string::npos);
}

TEST_F(GeneratorTest, SecondQueueIsRefusedAndChangesNothing) {
  const AppInfo app = NewApp();
  Queue(app).plan.Apply(false);
  ExpectRefused([&] { Queue(app); }, "queue already set up (jobs/registry.h exists)");
}

TEST_F(GeneratorTest, QueueOnAnAppThatLostItsWiringPointsAtForce) {
  const std::string unwired_main = [&] {
    NewApp();
    return Read("src/main.cpp");
  }();
  const AppInfo app = LoadApp(root());
  Queue(app).plan.Apply(false);
  PlanJob(app, "send_email", std::nullopt, false).plan.Apply(false);
  // main.cpp put back by hand as `spool new` first wrote it.
  WriteText(root() / "src/main.cpp", unwired_main);
  // A job added meanwhile would never run: gen job says so.
  const Generated job = PlanJob(app, "welcome", std::nullopt, false);
  ASSERT_EQ(job.notes.size(), 1u);
  EXPECT_EQ(job.notes[0],
            "src/main.cpp does not use the job queue, so the app will not run this job: run spool "
            "gen queue --force to wire it in again");
  ExpectRefused([&] { Queue(app); }, "src/main.cpp does not use it: run spool gen queue --force");
  Queue(app, /*force=*/true).plan.Apply(true);
  EXPECT_NE(Read("src/main.cpp").find("spool::Client::Open("), std::string::npos);
  EXPECT_NE(Read("jobs/registry.cc").find("SendEmailWorker"), std::string::npos);
}

TEST_F(GeneratorTest, NewWithForceKeepsTheAppsDatabaseAndItsGitignoreLines) {
  NewOptions options;
  options.name = "demo";
  options.db = DbKind::kPostgres;
  options.database_url = "postgres://u:secret@127.0.0.1:5432/demo";
  options.dir = root();
  PlanNew(options).plan.Apply(false);
  WriteText(root() / ".gitignore", Read(".gitignore") + "secrets.env\n");
  const std::string spoolrc = Read(".spoolrc");

  // No --db, no --database-url: writing the skeleton again keeps the app on its database.
  NewOptions again;
  again.name = "demo";
  again.dir = root();
  again.force = true;
  const Generated forced = PlanNew(again);
  EXPECT_TRUE(HasNote(forced, "the app keeps its database, postgres://u@127.0.0.1:5432/demo"));
  forced.plan.Apply(true);
  EXPECT_EQ(Read(".spoolrc"), spoolrc);
  const std::string gitignore = Read(".gitignore");
  EXPECT_NE(gitignore.find("secrets.env\n"), std::string::npos) << gitignore;
  EXPECT_NE(gitignore.find("/.spoolrc\n"), std::string::npos) << gitignore;
  EXPECT_EQ(LoadApp(root()).db, DbKind::kPostgres);

  // Naming a database moves the app, and says so.
  again.db = DbKind::kSqlite;
  const Generated moved = PlanNew(again);
  EXPECT_TRUE(HasNote(moved,
                      ".spoolrc's database_url changes from "
                      "postgres://u@127.0.0.1:5432/demo to sqlite://app.db"));
  moved.plan.Apply(true);
  EXPECT_EQ(LoadApp(root()).database_url, "sqlite://app.db");
  // The user's line and the password's stay listed: the old .spoolrc may be in history.
  EXPECT_NE(Read(".gitignore").find("secrets.env\n"), std::string::npos);
}

TEST_F(GeneratorTest, NewWithForceRefusesToWriteOverFilesOfAFolderSpoolDidNotMake) {
  fs::create_directories(root());
  WriteText(root() / "README.md", "# my readme\n");
  WriteText(root() / "CMakeLists.txt", "project(mine)\n");
  NewOptions options;
  options.name = "demo";
  options.dir = root();
  options.force = true;
  ExpectRefused([&] { (void)PlanNew(options).plan.Apply(true); },
                "has no .spoolrc, so spool new did not make it, and --force would write over "
                "files spool did not write: CMakeLists.txt, README.md. Nothing was written");
  // Other files of the user's are no obstacle.
  fs::remove(root() / "README.md");
  fs::remove(root() / "CMakeLists.txt");
  WriteText(root() / "notes.txt", "mine\n");
  PlanNew(options).plan.Apply(true);
  EXPECT_EQ(Read("notes.txt"), "mine\n");
}

TEST_F(GeneratorTest, NewWithForceOverAnAppWithAQueueKeepsTheQueueWiredIn) {
  const AppInfo app = NewApp();
  Queue(app).plan.Apply(false);
  PlanJob(app, "send_email", std::nullopt, false).plan.Apply(false);
  const std::string wired_main = Read("src/main.cpp");
  const std::string wired_cmake = Read("CMakeLists.txt");
  const std::string registry = Read("jobs/registry.cc");
  // The user's edits to the skeleton are what --force replaces.
  WriteText(root() / "src/main.cpp", wired_main + "// my own code\n");
  NewOptions options;
  options.name = "demo";
  options.dir = root();
  options.force = true;
  const Generated forced = PlanNew(options);
  EXPECT_TRUE(HasNote(forced,
                      "the job queue set up in this app (jobs/registry.h) is wired into the new "
                      "src/main.cpp and CMakeLists.txt again; jobs/ and database/migrations are "
                      "kept"));
  EXPECT_TRUE(HasNote(forced, "the app keeps its database, sqlite://app.db, from .spoolrc"));
  // The hand edit it replaces is named; the files it writes as they were are not.
  EXPECT_TRUE(HasNote(forced,
                      "--force writes src/main.cpp again as spool generates it: what was "
                      "written in it by hand is replaced (--dry-run shows the diff)"));
  EXPECT_EQ(forced.notes.size(), 3u);
  for (const auto& step : forced.next_steps) {
    EXPECT_EQ(step.find("gen queue"), std::string::npos) << step;
  }
  forced.plan.Apply(true);
  // As `gen queue` wired them, and the queue is found set up and wired in.
  EXPECT_EQ(Read("src/main.cpp"), wired_main);
  EXPECT_EQ(Read("CMakeLists.txt"), wired_cmake);
  EXPECT_EQ(Read("jobs/registry.cc"), registry);
  ExpectRefused([&] { Queue(app); },
                "queue already set up (jobs/registry.h exists): nothing changed");

  // Another database: the queue's migration was written for SQLite, and the note says so. The
  // url alone says which kind it is.
  options.database_url = "postgres://127.0.0.1:5432/demo";
  const Generated other_db = PlanNew(options);
  EXPECT_TRUE(HasNote(other_db,
                      "_setup_spool_queue.sql was not written for PostgreSQL: run "
                      "spool gen queue --force"));
  EXPECT_TRUE(HasNote(other_db,
                      ".spoolrc's database_url changes from sqlite://app.db to "
                      "postgres://127.0.0.1:5432/demo"));
  other_db.plan.Apply(true);
  EXPECT_NE(Read("src/main.cpp").find("spool::Client::Open("), std::string::npos);
  const Generated requeued = Queue(LoadApp(root()), /*force=*/true);
  requeued.plan.Apply(true);
  EXPECT_NE(Read(ExistingMigrationFile().value()).find("job queue tables for postgres,"),
            std::string::npos);
  EXPECT_EQ(PlanNew(options).notes.size(), 1u);

  // Without jobs/registry.h (which the wiring includes) nothing is wired, and the note says what
  // sets the queue up again.
  fs::remove(root() / "jobs/registry.h");
  const Generated half = PlanNew(options);
  EXPECT_TRUE(HasNote(half,
                      "_setup_spool_queue.sql is here but jobs/registry.h is not: run "
                      "spool gen queue --force"));
  // Written again without the wiring, which the notes say.
  EXPECT_TRUE(HasNote(half, "--force writes src/main.cpp again"));
  EXPECT_TRUE(HasNote(half, "--force writes CMakeLists.txt again"));
  EXPECT_EQ(half.notes.size(), 3u);
  half.plan.Apply(true);
  EXPECT_EQ(Read("src/main.cpp").find("spool::Client::Open("), std::string::npos);
}

TEST_F(GeneratorTest, QueueWithForceRefreshesTheRegistryWithoutWiringTwice) {
  const AppInfo app = NewApp();
  Queue(app).plan.Apply(false);
  PlanJob(app, "send_email", std::nullopt, false).plan.Apply(false);
  const std::string main = Read("src/main.cpp");
  const std::string cmake = Read("CMakeLists.txt");
  WriteText(root() / "jobs/registry.cc", "garbage\n");
  const Generated forced = Queue(app, /*force=*/true);
  // The output says which file --force writes over, and that the jobs are kept.
  ASSERT_EQ(forced.notes.size(), 1u);
  EXPECT_EQ(forced.notes[0],
            "--force writes jobs/registry.cc again as spool generates it (from the jobs in jobs/): "
            "an edit made to it by hand is replaced");
  EXPECT_EQ(forced.summary, "set up the job queue again (SQLite, --force); your jobs are kept");
  forced.plan.Apply(true);
  EXPECT_EQ(Read("src/main.cpp"), main);
  EXPECT_EQ(Read("CMakeLists.txt"), cmake);
  EXPECT_EQ(Read("jobs/registry.cc"), RenderRegistry({{"send_email", false}}));
  // The same migration file is rewritten, not a second one added.
  int migrations = 0;
  for (const auto& e : fs::directory_iterator(root() / "database/migrations")) {
    migrations += e.path().filename().string().ends_with("_setup_spool_queue.sql") ? 1 : 0;
  }
  EXPECT_EQ(migrations, 1);
  // Once more: nothing left to write, and it says so.
  const Generated again = Queue(app, /*force=*/true);
  EXPECT_TRUE(again.plan.changes().empty());
  EXPECT_TRUE(again.notes.empty());
  EXPECT_NE(again.summary.find("is set up and wired in"), std::string::npos) << again.summary;
  EXPECT_NE(again.summary.find("nothing changed"), std::string::npos) << again.summary;
  EXPECT_TRUE(again.next_steps.empty());
}

TEST_F(GeneratorTest, QueueWithForceOverAHalfWiredMainSaysItsEditsAreKept) {
  const AppInfo app = NewApp();
  Queue(app).plan.Apply(false);
  // The user took the shutdown block out of main.cpp (and wrote code of their own around it).
  std::string main = Read("src/main.cpp");
  const size_t stop = main.find("spool_client->Stop(");
  ASSERT_NE(stop, std::string::npos);
  main.replace(stop, std::string_view("spool_client->Stop(").size(), "spool_client->StopX(");
  main += "// my own code\n";
  WriteText(root() / "src/main.cpp", main);
  const Generated forced = Queue(app, /*force=*/true);
  ASSERT_EQ(forced.notes.size(), 1u);
  EXPECT_EQ(forced.notes[0],
            "--force adds to src/main.cpp only the queue's blocks it lacks; the rest, your edits "
            "too, is kept");
  forced.plan.Apply(true);
  EXPECT_NE(Read("src/main.cpp").find("// my own code\n"), std::string::npos);
}

TEST_F(GeneratorTest, NewRefusesAUrlOfTheOtherDbKind) {
  NewOptions options;
  options.name = "demo";
  options.db = DbKind::kPostgres;
  options.database_url = "sqlite://app.db";
  options.dir = root();
  EXPECT_THROW(PlanNew(options), CommandError);
  EXPECT_FALSE(fs::exists(root()));
}

TEST_F(GeneratorTest, QueueWithoutMarkersGivesTheManualEditAndWritesNothing) {
  const AppInfo app = NewApp();
  std::string main = Read("src/main.cpp");
  const std::string marker = "  // spool:setup\n";
  main.erase(main.find(marker), marker.size());
  WriteText(root() / "src/main.cpp", main);
  std::string cmake = Read("CMakeLists.txt");
  cmake.erase(cmake.find("# spool:link\n"), 13);
  WriteText(root() / "CMakeLists.txt", cmake);
  const auto before = Snapshot(root());
  try {
    Queue(app);
    FAIL() << "wired without markers";
  } catch (const CommandError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("nothing was written"), std::string::npos) << msg;
    EXPECT_NE(msg.find("src/main.cpp: no `// spool:setup` marker"), std::string::npos) << msg;
    EXPECT_NE(msg.find("spool::Client::Open("), std::string::npos) << msg;
    EXPECT_NE(msg.find("CMakeLists.txt: no `# spool:link` marker"), std::string::npos) << msg;
    EXPECT_NE(msg.find("target_link_libraries(demo PRIVATE spool::spool)"), std::string::npos)
        << msg;
    // Markers that are present are not part of the manual instructions.
    EXPECT_EQ(msg.find("// spool:routes"), std::string::npos) << msg;
  }
  EXPECT_EQ(Snapshot(root()), before);
}

TEST_F(GeneratorTest, QueueMigrationTimestampSkipsATakenSecond) {
  const AppInfo app = NewApp();
  WriteText(root() / "database/migrations/20261127210751_create_users.sql", "-- users\n");
  Queue(app).plan.Apply(false);
  EXPECT_TRUE(fs::exists(root() / "database/migrations/20261127210752_setup_spool_queue.sql"));
}

TEST_F(GeneratorTest, QueueMigrationHoldsTheLibraryDdlUpThenDownReversed) {
  const std::string text = RenderQueueMigration("sqlite", FakeMigrations("sqlite", true),
                                                FakeMigrations("sqlite", false));
  const size_t up = text.find("-- +goose Up");
  const size_t down = text.find("-- +goose Down");
  ASSERT_LT(up, down);
  EXPECT_LT(text.find("CREATE TABLE spool_jobs_sqlite"), text.find("ADD COLUMN tags"));
  EXPECT_LT(down, text.find("DROP COLUMN tags"));
  EXPECT_LT(text.find("DROP COLUMN tags"), text.find("DROP TABLE"));
}

TEST_F(GeneratorTest, JobMatchesGoldenFiles) {
  const AppInfo app = NewApp();
  Queue(app).plan.Apply(false);
  const Generated gen = PlanJob(app, "send_email", std::nullopt, false);
  EXPECT_TRUE(gen.notes.empty());
  gen.plan.Apply(false);
  for (const char* path : {"jobs/send_email.h", "jobs/send_email.cc",
                           "tests/jobs/send_email_test.cc", "jobs/registry.cc"}) {
    ExpectGolden("job_send_email/" + Flat(path), Read(path));
  }
}

TEST_F(GeneratorTest, JobTypeNamesAllComeFromCamelCase) {
  const AppInfo app = NewApp();
  Queue(app).plan.Apply(false);
  PlanJob(app, "sync_api", std::nullopt, false).plan.Apply(false);
  const std::string all = Read("jobs/sync_api.h") + Read("jobs/sync_api.cc") +
                          Read("tests/jobs/sync_api_test.cc") + Read("jobs/registry.cc");
  EXPECT_EQ(all.find("SyncApi"), std::string::npos);
  for (const char* name : {"SyncAPIArgs", "SyncAPIWorker", "SyncAPITest"}) {
    EXPECT_NE(all.find(name), std::string::npos) << name;
  }
  EXPECT_NE(Read("jobs/sync_api.h").find("kKind = \"sync_api\""), std::string::npos);
}

TEST_F(GeneratorTest, JobNameIsConvertedWithANote) {
  const AppInfo app = NewApp();
  Queue(app).plan.Apply(false);
  const Generated gen = PlanJob(app, "SendEmail", std::nullopt, false);
  ASSERT_EQ(gen.notes.size(), 1u);
  EXPECT_NE(gen.notes[0].find("send_email"), std::string::npos);
  EXPECT_EQ(gen.plan.changes()[0].path, "jobs/send_email.h");
}

TEST_F(GeneratorTest, JobRefusals) {
  const AppInfo app = NewApp();
  ExpectRefused([&] { PlanJob(app, "send_email", std::nullopt, false); },
                "run spool gen queue first");
  Queue(app).plan.Apply(false);
  PlanJob(app, "send_email", std::nullopt, false).plan.Apply(false);
  ExpectRefused([&] { PlanJob(app, "send_email", std::nullopt, false); },
                "job send_email already exists (jobs/send_email.h)");
  ExpectRefused([&] { PlanJob(app, "SendEmail", std::nullopt, false); },
                "already exists (jobs/send_email.h)");
  PlanJob(app, "nightly", std::string("0 3 * * *"), false).plan.Apply(false);
  ExpectRefused([&] { PlanJob(app, "nightly", std::nullopt, false); },
                "task nightly already exists (jobs/nightly.h)");
  for (const char* bad : {"9lives", "class", "../x", "a b", ""}) {
    ExpectRefused([&] { PlanJob(app, bad, std::nullopt, false); }, "snake_case C++ identifier");
  }
  // Another name with the same C++ types would not compile.
  PlanJob(app, "sync_api", std::nullopt, false).plan.Apply(false);
  ExpectRefused(
      [&] { PlanJob(app, "sync_a_p_i", std::nullopt, false); },
      "gives the C++ types SyncAPIArgs and SyncAPIWorker, which job sync_api already has");
  ExpectRefused([&] { PlanJob(app, "sync_a_p_i", std::string("* * * * *"), false); },
                "which job sync_api already has (jobs/sync_api.h)");
}

TEST_F(GeneratorTest, ForceRewritesAJobAsAnEdit) {
  const AppInfo app = NewApp();
  Queue(app).plan.Apply(false);
  PlanJob(app, "send_email", std::nullopt, false).plan.Apply(false);
  WriteText(root() / "jobs/send_email.cc", "// broken by hand\n");
  const Generated gen = PlanJob(app, "send_email", std::nullopt, true);
  ASSERT_EQ(gen.plan.changes().size(), 1u);  // only the changed file
  EXPECT_EQ(gen.plan.changes()[0].path, "jobs/send_email.cc");
  EXPECT_TRUE(gen.plan.changes()[0].before.has_value());
  EXPECT_EQ(gen.summary, "wrote job send_email again (--force)");
  EXPECT_TRUE(HasNote(gen, "--force writes jobs/send_email.cc again as spool generates it"));
  EXPECT_EQ(gen.notes.size(), 1u);  // the files written as they were are not named
  gen.plan.Apply(true);
  EXPECT_NE(Read("jobs/send_email.cc").find("SendEmailWorker::Work"), std::string::npos);
}

TEST_F(GeneratorTest, RegistryIsRegeneratedWholeFromTheJobFiles) {
  const AppInfo app = NewApp();
  Queue(app).plan.Apply(false);
  PlanJob(app, "alpha", std::nullopt, false).plan.Apply(false);
  PlanJob(app, "beta", std::nullopt, false).plan.Apply(false);
  // The user deletes alpha and scribbles over the registry; a helper header is not a job.
  fs::remove(root() / "jobs/alpha.h");
  fs::remove(root() / "jobs/alpha.cc");
  WriteText(root() / "jobs/registry.cc", "garbage\n");
  WriteText(root() / "jobs/helpers.h", "#pragma once\n");
  PlanJob(app, "gamma", std::nullopt, false).plan.Apply(false);
  EXPECT_EQ(Read("jobs/registry.cc"), RenderRegistry({{"beta", false}, {"gamma", false}}));
  EXPECT_EQ(Read("jobs/registry.cc").find("alpha"), std::string::npos);
}

TEST_F(GeneratorTest, TaskMatchesGoldenAndRegistersItsSchedule) {
  const AppInfo app = NewApp();
  Queue(app).plan.Apply(false);
  PlanJob(app, "send_email", std::nullopt, false).plan.Apply(false);
  PlanJob(app, "nightly_report", std::string("0 3 * * *"), false).plan.Apply(false);
  ExpectGolden("task_nightly_report/" + Flat("jobs/nightly_report.h"),
               Read("jobs/nightly_report.h"));
  ExpectGolden("task_nightly_report/" + Flat("jobs/registry.cc"), Read("jobs/registry.cc"));
  EXPECT_NE(Read("jobs/registry.cc")
                .find("periodic.push_back(Task<NightlyReportArgs>(\"nightly_report\"));"),
            std::string::npos);
  // send_email is a plain job: no schedule.
  EXPECT_EQ(Read("jobs/registry.cc").find("\"send_email\", std::string("), std::string::npos);
  // main.cpp hands the registry's tasks to the client.
  EXPECT_NE(Read("src/main.cpp").find("spool_options.periodic_jobs = jobs::PeriodicJobs();"),
            std::string::npos);
}

TEST_F(GeneratorTest, BadCronIsRefusedBeforeAnythingIsWritten) {
  const AppInfo app = NewApp();
  Queue(app).plan.Apply(false);
  for (const char* bad : {"61 * * * *", "* * *", "every day", "0 0 30 2 *", ""}) {
    ExpectRefused([&] { PlanJob(app, "report", std::string(bad), false); }, "cron");
  }
}

TEST_F(GeneratorTest, LoadAppErrors) {
  try {
    LoadApp(tmp_.path());
    FAIL();
  } catch (const CommandError& e) {
    EXPECT_STREQ(e.what(), "no .spoolrc here: run spool new, or cd into the app");
  }
  WriteText(tmp_.path() / ".spoolrc", "app=demo\ndb=mysql\n");
  try {
    LoadApp(tmp_.path());
    FAIL();
  } catch (const CommandError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("db in"), std::string::npos) << msg;
    EXPECT_NE(msg.find("\"mysql\""), std::string::npos) << msg;
    EXPECT_NE(msg.find("sqlite and postgres"), std::string::npos) << msg;
  }
  WriteText(tmp_.path() / ".spoolrc", "app=demo\ndb=postgres\ndatabase_url=sqlite://x.db\n");
  EXPECT_THROW(LoadApp(tmp_.path()), CommandError);
}

TEST(InsertAtMarkerTest, InsertsBeforeTheMarkerOnceAndReportsAMissingOne) {
  const std::string text = "a\n  // m\nb\n";
  EXPECT_EQ(InsertAtMarker(text, "// m", "  x\n", "x"), "a\n  x\n  // m\nb\n");
  EXPECT_EQ(InsertAtMarker("a\n  x\n  // m\n", "// m", "  x\n", "x"), "a\n  x\n  // m\n");
  EXPECT_EQ(InsertAtMarker(text, "// other", "x\n", "x"), std::nullopt);
  EXPECT_EQ(InsertAtMarker("// m  \r\n", "// m", "x\n", "x"), "x\n// m  \r\n");
  // A marker must be the whole line, not part of one.
  EXPECT_EQ(InsertAtMarker("int a;  // m\n", "// m", "x\n", "x"), std::nullopt);
}

}  // namespace
}  // namespace spool::cli
