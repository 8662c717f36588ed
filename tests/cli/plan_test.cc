#include "generator/plan.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "cli_test_util.h"
#include "commands/commands.h"

namespace spool::cli {
namespace {

namespace fs = std::filesystem;
using testing::Slurp;
using testing::Snapshot;
using testing::TempDir;
using testing::WriteText;

TEST(SafeJoinTest, RefusesPathsThatLeaveTheRoot) {
  const fs::path root = "/tmp/app";
  EXPECT_EQ(SafeJoin(root, "jobs/x.h"), fs::path("/tmp/app/jobs/x.h"));
  for (const char* bad : {"../x", "/etc/passwd", "jobs/../../x", "", "./x", "jobs/.."}) {
    EXPECT_THROW(SafeJoin(root, bad), CommandError) << bad;
  }
}

TEST(PlanTest, AppliesAllFilesWithNoTempFilesLeft) {
  TempDir dir;
  WriteText(dir.path() / "a.txt", "one\n");
  Plan plan(dir.path());
  plan.Create("deep/new/b.txt", "bee\n");
  plan.Edit("a.txt", "one\n", "two\n");
  plan.Apply(false);
  EXPECT_EQ(Slurp(dir.path() / "a.txt"), "two\n");
  EXPECT_EQ(Slurp(dir.path() / "deep/new/b.txt"), "bee\n");
  EXPECT_EQ(Snapshot(dir.path()).size(), 4u);  // a.txt, deep, deep/new, deep/new/b.txt
}

TEST(PlanTest, AnEditKeepsTheFileMode) {
  TempDir dir;
  const auto path = dir.path() / "run.sh";
  WriteText(path, "one\n");
  namespace fs = std::filesystem;
  fs::permissions(path, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
  Plan plan(dir.path());
  plan.Edit("run.sh", "one\n", "two\n");
  plan.Apply(false);
  EXPECT_EQ(Slurp(path), "two\n");
  EXPECT_EQ(fs::status(path).permissions(),
            fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
}

TEST(PlanTest, RefusesToOverwriteWithoutForceAndWritesNothing) {
  TempDir dir;
  WriteText(dir.path() / "exists.txt", "keep\n");
  Plan plan(dir.path());
  plan.Create("first.txt", "1\n");
  plan.Create("exists.txt", "clobber\n");
  const auto before = Snapshot(dir.path());
  try {
    plan.Apply(false);
    FAIL() << "overwrote exists.txt";
  } catch (const CommandError& e) {
    EXPECT_NE(std::string(e.what()).find("exists.txt"), std::string::npos) << e.what();
  }
  EXPECT_EQ(Snapshot(dir.path()), before);
  plan.Apply(true);
  EXPECT_EQ(Slurp(dir.path() / "exists.txt"), "clobber\n");
}

TEST(PlanTest, FailureWhileWritingLeavesTheTreeAsItWas) {
  TempDir dir;
  WriteText(dir.path() / "blocker", "a file where a folder is needed\n");
  WriteText(dir.path() / "a.txt", "one\n");
  Plan plan(dir.path());
  plan.Edit("a.txt", "one\n", "two\n");
  plan.Create("made/x.txt", "x\n");
  plan.Create("blocker/y.txt", "y\n");  // its folder cannot be created
  const auto before = Snapshot(dir.path());
  try {
    plan.Apply(false);
    ADD_FAILURE() << "not refused";
  } catch (const CommandError& e) {
    // The file the user knows and why, not a temp file's name.
    EXPECT_EQ(std::string(e.what()), "cannot write " + (dir.path() / "blocker/y.txt").string() +
                                         ": " + (dir.path() / "blocker").string() +
                                         " is not a folder; nothing was changed");
  }
  EXPECT_EQ(Snapshot(dir.path()), before);
}

TEST(PlanTest, RefusesAnEditWhenTheFileChangedSincePlanning) {
  TempDir dir;
  WriteText(dir.path() / "a.txt", "one\n");
  Plan plan(dir.path());
  plan.Edit("a.txt", "one\n", "two\n");
  WriteText(dir.path() / "a.txt", "someone else\n");
  EXPECT_THROW(plan.Apply(false), CommandError);
  EXPECT_EQ(Slurp(dir.path() / "a.txt"), "someone else\n");
}

TEST(PlanTest, RefusesToWriteThroughASymlinkOutOfTheApp) {
  TempDir app;
  TempDir outside;
  fs::create_directory_symlink(outside.path(), app.path() / "jobs");
  Plan plan(app.path());
  plan.Create("jobs/evil.h", "x\n");
  EXPECT_THROW(plan.Apply(false), CommandError);
  EXPECT_TRUE(fs::is_empty(outside.path()));
  EXPECT_THROW(plan.Read("jobs/anything"), CommandError);
}

TEST(PlanTest, RefusesEscapingPathsWhenPlanning) {
  TempDir dir;
  Plan plan(dir.path());
  EXPECT_THROW(plan.Create("../escape.txt", "x"), CommandError);
  EXPECT_THROW(plan.Edit("/etc/hosts", "a", "b"), CommandError);
  EXPECT_TRUE(plan.changes().empty());
}

TEST(UnifiedDiffTest, NewFileAndEditHunks) {
  EXPECT_EQ(UnifiedDiff("n.txt", std::nullopt, "a\nb\n"),
            "--- /dev/null\n+++ b/n.txt\n@@ -0,0 +1,2 @@\n+a\n+b\n");
  const std::string before = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
  const std::string after = "1\n2\n3\n4\n5\nfive and a half\n6\n7\n8\n9\n10\n";
  EXPECT_EQ(UnifiedDiff("f.txt", before, after),
            "--- a/f.txt\n+++ b/f.txt\n@@ -3,6 +3,7 @@\n 3\n 4\n 5\n+five and a half\n 6\n 7\n "
            "8\n");
}

}  // namespace
}  // namespace spool::cli
