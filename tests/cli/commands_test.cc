// The commands as a user runs them: parsed by CLI11 in-process, in a temp working directory,
// with the real spool library's migrations.
#include "commands/commands.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "generator/generator.h"
#include "spool/client.h"

namespace spool::cli {
namespace {

namespace fs = std::filesystem;
using testing::ScopedCwd;
using testing::Slurp;
using testing::Snapshot;
using testing::TempDir;
using testing::WriteText;

using testing::CliRun;
using testing::Spool;

class CommandsTest : public ::testing::Test {
 protected:
  CommandsTest() : cwd_(tmp_.path()) {}
  fs::path app() const { return tmp_.path() / "demo"; }
  // Creates ./demo and makes it the working directory.
  void NewApp(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"new", "demo"};
    args.insert(args.end(), extra.begin(), extra.end());
    const CliRun r = Spool(args);
    ASSERT_EQ(r.code, 0) << r.err;
    fs::current_path(app());
  }
  // A stand-in for the built app, which `spool serve --no-build` runs: a shell script.
  void FakeBuiltApp(const std::string& script) const {
    WriteText(app() / "build/demo", "#!/bin/sh\n" + script);
    fs::permissions(app() / "build/demo", fs::perms::owner_all);
  }
  std::string MigrationFile() const {
    for (const auto& e : fs::directory_iterator(app() / "database/migrations")) {
      if (e.path().filename().string().ends_with("_setup_spool_queue.sql")) {
        return e.path().string();
      }
    }
    return {};
  }

  TempDir tmp_;
  ScopedCwd cwd_;
};

TEST_F(CommandsTest, NewQueueJobHappyPathOutput) {
  CliRun r = Spool({"new", "demo"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("created src/main.cpp"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Next steps:\n  1. cd "), std::string::npos) << r.out;
  fs::current_path(app());

  r = Spool({"gen", "queue"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(std::regex_search(
      r.out, std::regex("created database/migrations/[0-9]{14}_setup_spool_queue\\.sql")))
      << r.out;
  EXPECT_NE(r.out.find("changed src/main.cpp"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("changed CMakeLists.txt"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("created jobs/registry.cc"), std::string::npos) << r.out;

  r = Spool({"gen", "job", "send-email"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("note: job name \"send-email\" was converted to \"send_email\""),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("created jobs/send_email.h"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("changed jobs/registry.cc"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("jobs::SendEmailArgs"), std::string::npos) << r.out;
}

TEST_F(CommandsTest, QueueMigrationDdlEqualsTheLibrarys) {
  for (const char* db : {"sqlite", "postgres"}) {
    SCOPED_TRACE(db);
    fs::current_path(tmp_.path());
    fs::remove_all(app());
    NewApp({"--db", db});
    const CliRun r = Spool({"gen", "queue"});
    ASSERT_EQ(r.code, 0) << r.err;
    auto up = spool::MigrationSql(db, true);
    auto down = spool::MigrationSql(db, false);
    ASSERT_TRUE(up) << up.error().ToString();
    ASSERT_TRUE(down) << down.error().ToString();
    ASSERT_FALSE(up->empty());
    EXPECT_EQ(Slurp(MigrationFile()), RenderQueueMigration(db, *up, *down));
    // And every statement of the library is in the file verbatim.
    const std::string file = Slurp(MigrationFile());
    for (const auto& [name, sql] : *up) {
      EXPECT_NE(file.find(sql), std::string::npos) << name;
    }
  }
}

TEST_F(CommandsTest, RefusedCommandsChangeNothingAndSayWhy) {
  NewApp();
  ASSERT_EQ(Spool({"gen", "queue"}).code, 0);
  ASSERT_EQ(Spool({"gen", "job", "send_email"}).code, 0);
  const auto before = Snapshot(app());
  // Refused because of the app's state: exit 1; because of a bad argument (a name, a cron
  // string): exit 2, as for bad flags.
  const std::vector<std::pair<std::vector<std::string>, int>> refused = {
      {{"gen", "queue"}, kExitFailed},
      {{"gen", "job", "send_email"}, kExitFailed},
      {{"gen", "job", "9lives"}, kExitUsage},
      {{"gen", "job", "class"}, kExitUsage},
      {{"gen", "job", "../x"}, kExitUsage},
      {{"gen", "job", "a b"}, kExitUsage},
      {{"gen", "job", ""}, kExitUsage},
      {{"gen", "task", "report", "--schedule", "99 * * * *"}, kExitUsage},
      {{"migration", "create", "Bad Name"}, kExitUsage},
  };
  for (const auto& [args, code] : refused) {
    const CliRun r = Spool(args);
    EXPECT_EQ(r.code, code) << args.back() << "\n" << r.out << r.err;
    EXPECT_NE(r.err.find("error: "), std::string::npos) << r.err;
    EXPECT_EQ(Snapshot(app()), before) << args.back();
  }
  const CliRun dup = Spool({"gen", "job", "send_email"});
  EXPECT_NE(dup.err.find("jobs/send_email.h"), std::string::npos) << dup.err;
  const CliRun again = Spool({"gen", "queue"});
  EXPECT_NE(again.err.find("queue already set up"), std::string::npos) << again.err;
}

TEST_F(CommandsTest, DryRunPrintsTheDiffAndWritesNothing) {
  CliRun r = Spool({"new", "demo", "--dry-run"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("+++ b/src/main.cpp"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(app()));
  NewApp();
  const auto before = Snapshot(app());
  r = Spool({"gen", "queue", "--dry-run"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("--- a/src/main.cpp\n+++ b/src/main.cpp\n@@"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("+#include <spool/spool.h>"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("nothing was written"), std::string::npos) << r.out;
  EXPECT_EQ(Snapshot(app()), before);
  ASSERT_EQ(Spool({"gen", "queue"}).code, 0);
  const auto queued = Snapshot(app());
  r = Spool({"gen", "task", "nightly", "--schedule", "@daily", "--dry-run"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("+++ b/jobs/nightly.h"), std::string::npos) << r.out;
  EXPECT_EQ(Snapshot(app()), queued);
}

// A schedule typed with extra spaces is written with its fields one space apart, and the task's
// generated test checks the schedule the way the app will at start.
TEST_F(CommandsTest, TaskScheduleIsTidiedAndTestedByTheGeneratedTest) {
  NewApp();
  ASSERT_EQ(Spool({"gen", "queue"}).code, 0);
  CliRun r = Spool({"gen", "task", "cleanup", "--schedule", "  */5   *  * * *  "});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("created task cleanup (*/5 * * * *)"), std::string::npos) << r.out;
  EXPECT_NE(Slurp(app() / "jobs/cleanup.h").find("kSchedule = \"*/5 * * * *\";"),
            std::string::npos);
  EXPECT_NE(Slurp(app() / "tests/jobs/cleanup_test.cc")
                .find("TEST(CleanupTest, ScheduleIsAcceptedByTheClient)"),
            std::string::npos);
  ASSERT_EQ(Spool({"gen", "job", "plain"}).code, 0);
  EXPECT_EQ(Slurp(app() / "tests/jobs/plain_test.cc").find("Schedule"), std::string::npos);
}

// Removing a job is deleting its files; the registry that still includes it is named, with the
// command that writes it again.
TEST_F(CommandsTest, ARemovedJobLeftInTheRegistryIsNamedWithTheFix) {
  NewApp();
  ASSERT_EQ(Spool({"gen", "queue"}).code, 0);
  ASSERT_EQ(Spool({"gen", "job", "keep"}).code, 0);
  ASSERT_EQ(Spool({"gen", "job", "gone"}).code, 0);
  for (const char* f : {"jobs/gone.h", "jobs/gone.cc", "tests/jobs/gone_test.cc"}) {
    fs::remove(app() / f);
  }
  CliRun r = Spool({"gen", "queue"});
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_NE(r.err.find("jobs/registry.cc still lists jobs/gone.h, which is gone: run spool gen "
                       "queue --force"),
            std::string::npos)
      << r.err;
  ASSERT_EQ(Spool({"gen", "queue", "--force"}).code, 0);
  const std::string registry = Slurp(app() / "jobs/registry.cc");
  EXPECT_EQ(registry.find("gone"), std::string::npos) << registry;
  EXPECT_NE(registry.find("jobs/keep.h"), std::string::npos) << registry;
}

TEST_F(CommandsTest, BadUsageExitsTwo) {
  EXPECT_EQ(Spool({"new"}).code, kExitUsage);
  EXPECT_EQ(Spool({"new", "demo", "--db", "mysql"}).code, kExitUsage);
  EXPECT_EQ(Spool({"gen"}).code, kExitUsage);
  EXPECT_EQ(Spool({"gen", "frob"}).code, kExitUsage);
  NewApp();
  ASSERT_EQ(Spool({"gen", "queue"}).code, 0);
  EXPECT_EQ(Spool({"gen", "job"}).code, kExitUsage);
  EXPECT_EQ(Spool({"gen", "task", "report"}).code, kExitUsage);  // --schedule is required
  EXPECT_EQ(Spool({"gen", "queue", "extra"}).code, kExitUsage);
}

TEST_F(CommandsTest, OutsideAnApp) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"gen", "queue"}, {"gen", "job", "x"}, {"serve", "--no-build"}}) {
    const CliRun r = Spool(args);
    EXPECT_EQ(r.code, kExitFailed);
    EXPECT_NE(r.err.find("no .spoolrc here: run spool new, or cd into the app"), std::string::npos)
        << r.err;
  }
}

TEST_F(CommandsTest, UnknownDbKindInSpoolrc) {
  WriteText(tmp_.path() / ".spoolrc", "app=demo\ndb=oracle\n");
  const CliRun r = Spool({"gen", "queue"});
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_NE(r.err.find("db in"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("valid values are sqlite and postgres"), std::string::npos) << r.err;
}

// A .spoolrc key spool does not read is named (a typo would leave the setting unset), and an
// exported $SPOOL_DATABASE_URL that overrides the app's is named with an error it leads to.
TEST_F(CommandsTest, SettingsThatMisleadAreNamed) {
  NewApp();
  WriteText(app() / ".spoolrc", "app=demo\ndb=sqlite\ndatabse_url=sqlite://app.db\n");
  CliRun r = Spool({"jobs", "list"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find(".spoolrc:3: unknown key \"databse_url\" (did you mean database_url?), "
                       "ignored"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("no database url"), std::string::npos) << r.err;

  WriteText(app() / ".spoolrc", "app=demo\ndb=sqlite\ndatabase_url=sqlite:/app.db\n");
  r = Spool({"jobs", "list"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("database_url in " + (app() / ".spoolrc").string() +
                       " is not a database url (no scheme://)"),
            std::string::npos)
      << r.err;

  WriteText(app() / ".spoolrc", "app=demo\ndb=sqlite\ndatabase_url=sqlite://app.db\n");
  ASSERT_EQ(setenv("SPOOL_DATABASE_URL", "sqlite://ap.db", 1), 0);
  r = Spool({"jobs", "list"});
  const CliRun bogus = (setenv("SPOOL_DATABASE_URL", "user:secret@db", 1), Spool({"jobs", "list"}));
  unsetenv("SPOOL_DATABASE_URL");
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_NE(r.err.find("no database at ap.db"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("note: the database url came from $SPOOL_DATABASE_URL (sqlite://ap.db), "
                       "not from " +
                       (app() / ".spoolrc").string() +
                       " (sqlite://app.db): unset the variable to use the app's"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(bogus.code, kExitUsage);
  EXPECT_NE(bogus.err.find("$SPOOL_DATABASE_URL is not a database url"), std::string::npos)
      << bogus.err;
  EXPECT_EQ(bogus.err.find("secret"), std::string::npos) << bogus.err;
}

// A SQLite path whose folder is missing: status says so rather than "up creates it", and up
// names the folder.
TEST_F(CommandsTest, AMissingDatabaseFolderIsNamed) {
  NewApp();
  const std::string url = "sqlite://" + (tmp_.path() / "nodir/x.db").string();
  CliRun r = Spool({"migration", "status", "--database-url", url});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("no database, and its directory " + (tmp_.path() / "nodir").string() +
                       " does not exist"),
            std::string::npos)
      << r.out;
  r = Spool({"migration", "up", "--database-url", url});
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_NE(r.err.find("its directory " + (tmp_.path() / "nodir").string() + " does not exist"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(tmp_.path() / "nodir"));
}

TEST_F(CommandsTest, HelpHasUsageOptionsAndExamples) {
  for (const auto& args : std::vector<std::vector<std::string>>{{"new", "--help"},
                                                                {"gen", "queue", "-h"},
                                                                {"gen", "job", "--help"},
                                                                {"gen", "task", "--help"},
                                                                {"serve", "--help"}}) {
    const CliRun r = Spool(args);
    EXPECT_EQ(r.code, 0);
    EXPECT_NE(r.out.find("Usage:"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("Options:"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("Examples:"), std::string::npos) << r.out;
  }
}

TEST_F(CommandsTest, ServeWithoutABuildSaysSo) {
  NewApp();
  const CliRun r = Spool({"serve", "--no-build"});
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_NE(r.err.find("build/demo not found"), std::string::npos) << r.err;
}

TEST_F(CommandsTest, ServeRunsTheAppAndReturnsItsExitCode) {
  NewApp();
  // Records the database URL it was given and exits with a known code.
  FakeBuiltApp("echo \"$SPOOL_DATABASE_URL\" > url.txt\nexit 7\n");
  const CliRun r = Spool({"serve", "--no-build"});
  EXPECT_EQ(r.code, 7) << r.err;
  EXPECT_NE(r.err.find("demo exited with code 7"), std::string::npos) << r.err;
  EXPECT_EQ(Slurp(app() / "url.txt"), "sqlite://app.db\n");  // .spoolrc's, for the app only
  EXPECT_EQ(std::getenv("SPOOL_DATABASE_URL"), nullptr);
}

TEST_F(CommandsTest, ServeNamesTheSignalThatEndedTheApp) {
  NewApp();
  FakeBuiltApp("kill -TERM $$\n");
  const CliRun r = Spool({"serve", "--no-build"});
  EXPECT_EQ(r.code, 143) << r.err;
  EXPECT_NE(r.err.find("demo exited with code 143 (128 + SIGTERM)"), std::string::npos) << r.err;
}

TEST_F(CommandsTest, AnAppWithoutAQueueSaysToGenerateOne) {
  NewApp();
  CliRun r = Spool({"migration", "status"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("no database yet"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(app() / "app.db"));  // status only reads
  r = Spool({"jobs", "list"});
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_NE(r.err.find("this app has no job queue yet; run spool gen queue"), std::string::npos)
      << r.err;
  r = Spool({"migration", "up"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("this app has no job queue yet: spool gen queue adds it"), std::string::npos)
      << r.out;
  r = Spool({"jobs", "list"});  // the database exists now, without spool's tables
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_NE(
      r.err.find("this app has no job queue yet: run spool gen queue, then spool migration up"),
      std::string::npos)
      << r.err;
}

TEST_F(CommandsTest, CommandsInASubfolderWorkOnTheApp) {
  NewApp();
  ASSERT_EQ(Spool({"gen", "queue"}).code, 0);
  ASSERT_EQ(Spool({"migration", "up"}).code, 0);
  fs::current_path(app() / "src");
  CliRun r = Spool({"gen", "job", "send_email"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(app() / "jobs/send_email.h"));
  EXPECT_FALSE(fs::exists(app() / "src/jobs"));
  r = Spool({"jobs", "add", "send_email", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(app() / "src/app.db"));  // .spoolrc's sqlite://app.db is the app's
  r = Spool({"jobs", "add", "send_emial"});
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_NE(r.err.find("no job of kind \"send_emial\" (its jobs: send_email)"), std::string::npos)
      << r.err;
  r = Spool({"migration", "status"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("setup_spool_queue"), std::string::npos) << r.out;
  fs::current_path(app());
  r = Spool({"jobs", "list", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("send_email"), std::string::npos) << r.out;
}

// A password with an unencoded '?' (or '/', '#', '@'): the app would be generated around a url
// that cannot work, and its main.cpp would hold part of the password as the host.
TEST_F(CommandsTest, NewRefusesAUrlWhosePasswordIsNotEncodedWithoutShowingIt) {
  CliRun r = Spool({"new", "leaky", "--db", "postgres", "--database-url",
                    "postgres://weird:p@ss?S3cret@127.0.0.1:5432/shop"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("must be percent-encoded"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("S3cret"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("S3cret"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(tmp_.path() / "leaky"));
}

// Without --db the url's scheme says which database the app uses; a --db that disagrees with it
// is refused, naming the one that fits.
TEST_F(CommandsTest, NewTakesTheDatabaseKindFromTheUrl) {
  CliRun r = Spool({"new", "shop", "--database-url", "postgres://127.0.0.1:5432/shop"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(Slurp(tmp_.path() / "shop/.spoolrc").find("db=postgres"), std::string::npos);
  r = Spool({"new", "notes", "--db", "postgres", "--database-url", "sqlite://notes.db"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("or pass --db sqlite"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(tmp_.path() / "notes"));
}

TEST_F(CommandsTest, AppMigrationsNameABadDatabaseAndNeverItsPassword) {
  NewApp();
  WriteText(app() / "notes.txt", "not a database\n");
  CliRun r = Spool({"migration", "up", "--database-url", "sqlite://notes.txt"});
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_NE(r.err.find("cannot use notes.txt as the app's SQLite database"), std::string::npos)
      << r.err;
  // A url that cannot be parsed is a bad argument, as it is for every command.
  r = Spool({"migration", "up", "--database-url", "postgres://u:S3cret@[::1:5/x"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("cannot be parsed"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("S3cret"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("S3cret"), std::string::npos) << r.out;
  // Nothing listens on port 1: the message names where it tried, as the library's does.
  r = Spool({"migration", "up", "--database-url", "postgres://u:S3cret@127.0.0.1:1/x"});
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_NE(r.err.find("cannot connect to PostgreSQL at 127.0.0.1:1"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("S3cret"), std::string::npos) << r.err;
}

TEST_F(CommandsTest, MigrationNamesFollowTheRuleAndAreNotRepeated) {
  NewApp();
  CliRun r = Spool({"migration", "create", "Add Users"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("invalid migration name \"Add Users\""), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("a migration name is snake_case"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("C++"), std::string::npos) << r.err;
  // A migration is an SQL file: C++'s keywords are fine names for it.
  EXPECT_EQ(Spool({"migration", "create", "delete"}).code, 0);
  ASSERT_EQ(Spool({"migration", "create", "add_users"}).code, 0);
  const auto before = Snapshot(app());
  r = Spool({"migration", "create", "AddUsers"});
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_NE(r.err.find("a migration named add_users exists already"), std::string::npos) << r.err;
  EXPECT_EQ(Snapshot(app()), before);
}

TEST_F(CommandsTest, AppMigrationsRunInOrderTrackedAndRevert) {
  NewApp();
  ASSERT_EQ(Spool({"gen", "queue"}).code, 0);
  const auto before = Snapshot(app());
  CliRun r = Spool({"migration", "create", "add_users", "--dry-run"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Snapshot(app()), before);
  r = Spool({"migration", "create", "add_users"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::string users_file;
  for (const auto& e : fs::directory_iterator(app() / "database/migrations")) {
    if (e.path().filename().string().ends_with("_add_users.sql")) users_file = e.path().string();
  }
  ASSERT_FALSE(users_file.empty()) << r.out;
  const std::string skeleton = Slurp(users_file);
  ASSERT_NE(skeleton.find("-- +goose Up"), std::string::npos);
  ASSERT_NE(skeleton.find("-- +goose Down"), std::string::npos);
  // Uses spool's table: only works when it runs after the queue migration.
  WriteText(users_file,
            "-- +goose Up\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n"
            "CREATE VIEW user_jobs AS SELECT id FROM spool_job;\n"
            "-- +goose Down\nDROP VIEW user_jobs;\nDROP TABLE users;\n");

  r = Spool({"migration", "status"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("setup_spool_queue"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("pending"), std::string::npos) << r.out;

  r = Spool({"migration", "up"});
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("2 migration(s) applied"), std::string::npos) << r.out;
  EXPECT_LT(r.out.find("_setup_spool_queue.sql"), r.out.find("_add_users.sql")) << r.out;
  const std::string url = "sqlite://" + (app() / "app.db").string();
  {
    auto client = spool::Client::Open(url, {});  // no auto_migrate: the schema must be current
    ASSERT_TRUE(client) << client.error().ToString();
  }
  r = Spool({"migration", "up"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("0 migration(s) applied"), std::string::npos) << r.out;
  // A timestamp that names no migration is a typo, not a point between two.
  for (const char* direction : {"up", "down"}) {
    r = Spool({"migration", direction, "--target", "20200101000000"});
    EXPECT_EQ(r.code, kExitUsage) << direction;
    EXPECT_NE(r.err.find("--target 20200101000000: no migration in database/migrations has that "
                         "timestamp"),
              std::string::npos)
        << r.err;
  }

  r = Spool({"migration", "down"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("reverted database/migrations/"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("_add_users.sql"), std::string::npos) << r.out;
  {
    auto client = spool::Client::Open(url, {});  // spool's tables are still there
    ASSERT_TRUE(client) << client.error().ToString();
  }
  // A kind none of the app's jobs has is refused (a typo), unless --any-kind.
  r = Spool({"jobs", "add", "send_email"});
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_NE(r.err.find("this app has no job of kind \"send_email\" (its jobs: none yet)"),
            std::string::npos)
      << r.err;
  // A running app (a started client, heartbeating) holds it back too, until it stops.
  {
    spool::ClientOptions options;
    options.queues["default"] = {.max_workers = 1};
    auto running = spool::Client::Open(url, std::move(options));
    ASSERT_TRUE(running) << running.error().ToString();
    ASSERT_TRUE((*running)->Start().ok());
    r = Spool({"migration", "down"});
    EXPECT_EQ(r.code, kExitFailed);
    EXPECT_NE(r.err.find("1 client(s) of the job queue sent a heartbeat in the last minute"),
              std::string::npos)
        << r.err;
    ASSERT_TRUE((*running)->Stop(std::chrono::seconds(10)).ok());
  }
  // A job that has not run yet holds the queue migration's down back until --force.
  ASSERT_EQ(Spool({"jobs", "add", "send_email", "--any-kind"}).code, 0);
  r = Spool({"migration", "down"});
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_NE(r.err.find("spool's tables hold 1 job(s) that have not finished (available 1)"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  {
    auto client = spool::Client::Open(url, {});
    ASSERT_TRUE(client) << "a refused down removed spool's tables";
    EXPECT_EQ((*client)->JobList({}).value().size(), 1u);
  }
  r = Spool({"migration", "down", "--force"});
  ASSERT_EQ(r.code, 0) << r.err;
  {
    auto client = spool::Client::Open(url, {});
    EXPECT_FALSE(client) << "the queue migration's down should remove spool's tables";
  }
  r = Spool({"migration", "up"});
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("2 migration(s) applied"), std::string::npos) << r.out;
}

// Outside an app, any step down under a running client is refused (it needs the version it was
// built for), not only the one that drops the tables.
TEST_F(CommandsTest, MigrationDownOfOneStepUnderARunningClientIsRefused) {
  const std::string url = "sqlite://" + (tmp_.path() / "x.db").string();
  ASSERT_EQ(Spool({"migration", "up", "--database-url", url}).code, 0);
  spool::ClientOptions options;
  options.queues["default"] = {.max_workers = 1};
  auto running = spool::Client::Open(url, std::move(options));
  ASSERT_TRUE(running) << running.error().ToString();
  ASSERT_TRUE((*running)->Start().ok());
  CliRun r = Spool({"migration", "down", "--database-url", url});
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_NE(r.err.find("1 client(s) of the job queue sent a heartbeat in the last minute (running "
                       "apps): taking spool's schema back a version under them fails their every "
                       "call until it is migrated up again"),
            std::string::npos)
      << r.err;
  ASSERT_TRUE((*running)->Stop(std::chrono::seconds(10)).ok());
  r = Spool({"migration", "down", "--database-url", url, "--force"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("version 2 of 3"), std::string::npos) << r.out;
  EXPECT_EQ(Spool({"migration", "up", "--database-url", url}).code, 0);
}

// spool's tables made before the app's own run (outside the app, or by another node's deploy
// racing this one): the queue's step is recorded, and the line says it found them.
TEST_F(CommandsTest, QueueStepFindingSpoolsTablesUpToDateSaysSo) {
  NewApp();
  ASSERT_EQ(Spool({"gen", "queue"}).code, 0);
  const std::string url = "sqlite://" + (app() / "app.db").string();
  fs::current_path(tmp_.path());
  ASSERT_EQ(Spool({"migration", "up", "--database-url", url}).code, 0);
  fs::current_path(app());
  const CliRun r = Spool({"migration", "up"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("_setup_spool_queue.sql: spool's tables were up to date already"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("1 migration(s) applied"), std::string::npos) << r.out;
}

TEST_F(CommandsTest, AppMigrationFailureRollsBackAndStops) {
  NewApp();
  ASSERT_EQ(Spool({"gen", "queue"}).code, 0);
  WriteText(app() / "database/migrations/29990101000000_broken.sql",
            "-- +goose Up\nCREATE TABLE half (id INTEGER);\nNOT SQL AT ALL;\n-- +goose Down\n");
  CliRun r = Spool({"migration", "up"});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.err.find("29990101000000_broken.sql"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("rolled back"), std::string::npos) << r.err;
  r = Spool({"migration", "status"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(std::regex_search(r.out, std::regex("broken +pending"))) << r.out;
  WriteText(app() / "database/migrations/bad-name.sql", "");
  r = Spool({"migration", "up"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("bad-name.sql"), std::string::npos) << r.err;
}

TEST_F(CommandsTest, MigrationCreateOutsideAnAppIsRefused) {
  const CliRun r = Spool({"migration", "create", "x"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("no .spoolrc here"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace spool::cli
