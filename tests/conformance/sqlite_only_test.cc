// What only the SQLite driver has: transactions on the caller's own sqlite3* connection, its
// error translation, and how it fails on files it cannot use.

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "conformance/conformance.h"
#include "driver/driver.h"
#include "driver/sqlite/sqlite_conn.h"
#include "driver/sqlite/sqlite_driver.h"

namespace {

using spool::JobState;
using spool::internal::Driver;
using spool::internal::DriverOptions;
using spool::internal::JobInsertManyParams;
using spool::internal::JobInsertParams;

const spool::TimePoint kT0{std::chrono::seconds(1'800'000'000)};

JobInsertManyParams OneJob(std::string kind) {
  JobInsertParams p;
  p.kind = std::move(kind);
  p.queue = "default";
  p.scheduled_at = kT0;
  return JobInsertManyParams{{p}, kT0};
}

class SqliteOnlyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "spool-sqlite-only-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/app.db";
    auto driver = spool::internal::OpenSqliteDriver(path_, {});
    ASSERT_TRUE(driver.has_value()) << driver.error().ToString();
    driver_ = std::move(*driver);
    CONF_ASSERT_OK(driver_->MigrateUp(spool::internal::LatestVersion(*driver_)));
  }
  void TearDown() override {
    driver_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  // The application's own connection to the same file.
  spool::internal::SqliteDbPtr OpenAppConnection() {
    sqlite3* raw = nullptr;
    EXPECT_EQ(sqlite3_open(path_.c_str(), &raw), SQLITE_OK);
    spool::internal::SqliteDbPtr db(raw);
    sqlite3_busy_timeout(db.get(), 5000);
    return db;
  }

  std::string dir_;
  std::string path_;
  std::unique_ptr<Driver> driver_;
};

TEST_F(SqliteOnlyTest, InsertOnCallersTransactionIsVisibleAfterCommit) {
  auto db = OpenAppConnection();
  ASSERT_EQ(sqlite3_exec(db.get(), "BEGIN", nullptr, nullptr, nullptr), SQLITE_OK);
  int64_t id = 0;
  {
    CONF_ASSIGN_OR_FAIL(auto ex, driver_->ExecutorFor(spool::SqliteTx(db.get())));
    CONF_ASSIGN_OR_FAIL(auto rows, ex->JobInsertMany(OneJob("in_app_tx")));
    ASSERT_EQ(rows.size(), 1u);
    id = rows[0].job.id;
    CONF_ASSIGN_OR_FAIL(int64_t n, ex->JobInsertManyFast(OneJob("in_app_tx")));
    EXPECT_EQ(n, 1);
    // Still inside the caller's transaction: the caller is the one to commit.
    EXPECT_EQ(sqlite3_get_autocommit(db.get()), 0);
  }
  ASSERT_EQ(sqlite3_exec(db.get(), "COMMIT", nullptr, nullptr, nullptr), SQLITE_OK);
  CONF_ASSIGN_OR_FAIL(spool::JobRow job, driver_->executor().JobGetByID(id));
  EXPECT_EQ(job.kind, "in_app_tx");
  CONF_ASSIGN_OR_FAIL(auto counts, driver_->executor().JobCountByState(""));
  EXPECT_EQ(counts[JobState::kAvailable], 2);
}

TEST_F(SqliteOnlyTest, InsertOnCallersTransactionIsGoneAfterRollback) {
  auto db = OpenAppConnection();
  ASSERT_EQ(sqlite3_exec(db.get(), "BEGIN", nullptr, nullptr, nullptr), SQLITE_OK);
  CONF_ASSIGN_OR_FAIL(auto ex, driver_->ExecutorFor(spool::SqliteTx(db.get())));
  CONF_ASSIGN_OR_FAIL(auto rows, ex->JobInsertMany(OneJob("in_app_tx")));
  ASSERT_EQ(rows.size(), 1u);
  ASSERT_EQ(sqlite3_exec(db.get(), "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  ex.reset();
  EXPECT_TRUE(driver_->executor().JobGetByID(rows[0].job.id).error().IsNotFound());
  CONF_ASSIGN_OR_FAIL(auto counts, driver_->executor().JobCountByState(""));
  EXPECT_TRUE(counts.empty());
}

TEST_F(SqliteOnlyTest, WaitForChangeSeesAPlainConnectionCommit) {
  CONF_ASSIGN_OR_FAIL(bool ignored, driver_->WaitForChange(spool::Duration::zero()));
  (void)ignored;
  auto db = OpenAppConnection();
  ASSERT_EQ(sqlite3_exec(db.get(), "CREATE TABLE app_thing (x INTEGER)", nullptr, nullptr, nullptr),
            SQLITE_OK);
  CONF_ASSIGN_OR_FAIL(bool changed, driver_->WaitForChange(std::chrono::seconds(20)));
  EXPECT_TRUE(changed);
}

TEST_F(SqliteOnlyTest, WriterHeldElsewhereIsRetryableAfterBusyTimeout) {
  DriverOptions options;
  options.sqlite.busy_timeout = std::chrono::milliseconds(50);
  CONF_ASSIGN_OR_FAIL(auto other, spool::internal::OpenSqliteDriver(path_, options));
  CONF_ASSIGN_OR_FAIL(auto tx, driver_->Begin());  // holds the file's write lock
  auto r = other->executor().JobInsertManyFast(OneJob("blocked"));
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().IsRetryable()) << r.error().ToString();
  EXPECT_EQ(r.error().native_code(), std::to_string(SQLITE_BUSY));
  CONF_ASSERT_OK(tx->Rollback());
  CONF_ASSIGN_OR_FAIL(int64_t n, other->executor().JobInsertManyFast(OneJob("unblocked")));
  EXPECT_EQ(n, 1);
}

TEST_F(SqliteOnlyTest, ErrorTranslationKeepsTheExtendedCode) {
  auto db = OpenAppConnection();
  ASSERT_EQ(sqlite3_extended_result_codes(db.get(), 1), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db.get(), "CREATE TABLE t (k TEXT UNIQUE); INSERT INTO t VALUES ('a')",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  const int rc = sqlite3_exec(db.get(), "INSERT INTO t VALUES ('a')", nullptr, nullptr, nullptr);
  ASSERT_EQ(rc, SQLITE_CONSTRAINT_UNIQUE);
  spool::Status s = spool::internal::SqliteStatus(rc, db.get(), "insert t");
  EXPECT_TRUE(s.IsAlreadyExists()) << s.ToString();
  EXPECT_EQ(s.native_code(), std::to_string(SQLITE_CONSTRAINT_UNIQUE));
  EXPECT_NE(s.message().find("insert t"), std::string::npos);

  EXPECT_TRUE(spool::internal::SqliteStatus(SQLITE_LOCKED, nullptr, "x").IsRetryable());
  EXPECT_TRUE(spool::internal::SqliteStatus(SQLITE_CANTOPEN, nullptr, "x").IsConnectionLost());
  spool::Status other = spool::internal::SqliteStatus(SQLITE_IOERR_WRITE, nullptr, "x");
  EXPECT_EQ(other.code(), spool::Status::Code::kInternal);
  EXPECT_EQ(other.native_code(), std::to_string(SQLITE_IOERR_WRITE));
  EXPECT_TRUE(spool::internal::SqliteStatus(SQLITE_OK, nullptr, "x").ok());
}

TEST_F(SqliteOnlyTest, OpeningInAMissingDirectoryNamesThePath) {
  const std::string path = dir_ + "/no/such/dir/app.db";
  auto r = Driver::Open("sqlite://" + path, {});
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().IsConnectionLost()) << r.error().ToString();
  EXPECT_NE(r.error().message().find(path), std::string::npos) << r.error().message();
}

TEST_F(SqliteOnlyTest, OpeningAFileThatIsNotADatabaseNamesThePath) {
  const std::string path = dir_ + "/notes.txt";
  {
    std::ofstream out(path);
    out << "these are not the pages you are looking for, but there are enough of them to fill "
           "a SQLite header and then some: "
        << std::string(200, 'x');
  }
  auto r = spool::internal::OpenSqliteDriver(path, {});
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().IsInvalidArgument()) << r.error().ToString();
  EXPECT_NE(r.error().message().find(path), std::string::npos) << r.error().message();
}

TEST_F(SqliteOnlyTest, OpensRelativePathsAndUsesWal) {
  const auto cwd = std::filesystem::current_path();
  std::filesystem::current_path(dir_);
  auto r = Driver::Open("sqlite://relative.db", {});
  std::filesystem::current_path(cwd);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ((*r)->Name(), "sqlite");
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/relative.db"));

  auto db = OpenAppConnection();
  sqlite3_stmt* raw = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db.get(), "PRAGMA journal_mode", -1, &raw, nullptr), SQLITE_OK);
  spool::internal::SqliteStmtPtr stmt(raw);
  ASSERT_EQ(sqlite3_step(stmt.get()), SQLITE_ROW);
  EXPECT_EQ(spool::internal::ColumnText(stmt.get(), 0), "wal");
}

TEST_F(SqliteOnlyTest, SchemaVersionIsZeroOnANewFile) {
  CONF_ASSIGN_OR_FAIL(auto fresh, spool::internal::OpenSqliteDriver(dir_ + "/fresh.db", {}));
  CONF_ASSIGN_OR_FAIL(int version, fresh->SchemaVersion());
  EXPECT_EQ(version, 0);
  EXPECT_FALSE(fresh->executor().JobCountByState("").has_value());
}

}  // namespace

// Version 2 rebuilds spool_job: every row, id and the unique index survive both ways, and an id
// freed by deleting the newest job is still never handed out again.
TEST_F(SqliteOnlyTest, RebuildingTheJobTableKeepsRowsIdsAndUniqueness) {
  CONF_ASSERT_OK(driver_->MigrateDown(1));
  auto& ex = driver_->executor();
  JobInsertManyParams jobs = OneJob("kept");
  jobs.jobs[0].args = R"({"n":1})";
  jobs.jobs.push_back(jobs.jobs[0]);
  jobs.jobs[1].unique_key = std::string(32, 'k');
  jobs.jobs[1].unique_states = 0xFF;
  jobs.jobs.push_back(jobs.jobs[0]);
  CONF_ASSIGN_OR_FAIL(auto rows, ex.JobInsertMany(jobs));
  ASSERT_EQ(rows.size(), 3u);
  CONF_ASSIGN_OR_FAIL(auto deleted, ex.JobDelete(rows[2].job.id));
  const int64_t highest = deleted.id;

  auto check = [&](int version) {
    SCOPED_TRACE(version);
    for (size_t i = 0; i < 2; ++i) {
      CONF_ASSIGN_OR_FAIL(auto row, ex.JobGetByID(rows[i].job.id));
      EXPECT_EQ(row.kind, "kept");
      EXPECT_EQ(row.args, R"({"n":1})");
      EXPECT_EQ(row.state, JobState::kAvailable);
    }
    CONF_ASSIGN_OR_FAIL(auto again, ex.JobInsertMany({{jobs.jobs[1]}, kT0}));
    ASSERT_EQ(again.size(), 1u);
    EXPECT_TRUE(again[0].duplicate) << "the unique index is gone";
    EXPECT_EQ(again[0].job.id, rows[1].job.id);
    CONF_ASSIGN_OR_FAIL(auto fresh, ex.JobInsertMany(OneJob("new")));
    ASSERT_EQ(fresh.size(), 1u);
    EXPECT_GT(fresh[0].job.id, highest) << "an id was reused";
  };
  CONF_ASSERT_OK(driver_->MigrateUp(2));
  check(2);
  CONF_ASSERT_OK(driver_->MigrateDown(1));
  check(1);
}

TEST_F(SqliteOnlyTest, ClientHeartbeatKeepsStartedAtAndUpdatesTheRest) {
  auto& ex = driver_->executor();
  CONF_ASSERT_OK(ex.ClientHeartbeat({"c1", kT0, {"a"}}));
  CONF_ASSERT_OK(ex.ClientHeartbeat({"c1", kT0 + std::chrono::seconds(7), {"b", "c"}}));
  auto db = OpenAppConnection();
  sqlite3_stmt* raw = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db.get(),
                               "SELECT started_at, heartbeat_at, queues FROM spool_client "
                               "WHERE id = 'c1'",
                               -1, &raw, nullptr),
            SQLITE_OK);
  spool::internal::SqliteStmtPtr stmt(raw);
  ASSERT_EQ(sqlite3_step(stmt.get()), SQLITE_ROW);
  const int64_t t0 = kT0.time_since_epoch().count();
  EXPECT_EQ(sqlite3_column_int64(stmt.get(), 0), t0);
  EXPECT_EQ(sqlite3_column_int64(stmt.get(), 1), t0 + 7'000'000);
  EXPECT_EQ(spool::internal::ColumnText(stmt.get(), 2), R"(["b","c"])");
  EXPECT_EQ(sqlite3_step(stmt.get()), SQLITE_DONE);
}

TEST_F(SqliteOnlyTest, UniqueInsertOnCallersTransactionRollsBackWithIt) {
  JobInsertManyParams unique = OneJob("unique");
  unique.jobs[0].unique_key = std::string(32, '\x07');
  unique.jobs[0].unique_states = 0xff;
  auto db = OpenAppConnection();
  ASSERT_EQ(sqlite3_exec(db.get(), "BEGIN", nullptr, nullptr, nullptr), SQLITE_OK);
  {
    CONF_ASSIGN_OR_FAIL(auto ex, driver_->ExecutorFor(spool::SqliteTx(db.get())));
    CONF_ASSIGN_OR_FAIL(auto first, ex->JobInsertMany(unique));
    ASSERT_EQ(first.size(), 1u);
    EXPECT_FALSE(first[0].duplicate);
    CONF_ASSIGN_OR_FAIL(auto second, ex->JobInsertMany(unique));
    ASSERT_EQ(second.size(), 1u);
    EXPECT_TRUE(second[0].duplicate);
    EXPECT_EQ(second[0].job.id, first[0].job.id);
    EXPECT_EQ(sqlite3_get_autocommit(db.get()), 0);
  }
  ASSERT_EQ(sqlite3_exec(db.get(), "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  // The key is free again: the rolled back row never existed.
  CONF_ASSIGN_OR_FAIL(auto after, driver_->executor().JobInsertMany(unique));
  ASSERT_EQ(after.size(), 1u);
  EXPECT_FALSE(after[0].duplicate);
}

// The WAL is copied back into the database file off the writer's thread (a checkpointer thread of
// the driver), and the writer itself finishes the copy once the log passes 32,000 frames, so that
// it can restart: under a steady stream of commits the -wal file stays bounded, and every row
// reaches the database file. 512-byte pages make 32,000 frames about 17 MB.
TEST_F(SqliteOnlyTest, WalStaysBoundedUnderContinuousWritesAndEveryRowIsKept) {
  const std::string path = dir_ + "/small-pages.db";
  {
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
    spool::internal::SqliteDbPtr db(raw);
    CONF_ASSERT_OK(spool::internal::SqliteExec(
        db.get(),
        "PRAGMA page_size = 512; CREATE TABLE fix_page_size (x); DROP TABLE fix_page_size"));
  }
  constexpr int kCommits = 150;
  constexpr int kJobsPerCommit = 2000;
  std::uintmax_t max_wal = 0;
  {
    CONF_ASSIGN_OR_FAIL(auto driver, spool::internal::OpenSqliteDriver(path, {}));
    CONF_ASSERT_OK(driver->MigrateUp(spool::internal::LatestVersion(*driver)));
    JobInsertManyParams batch;
    batch.now = kT0;
    batch.jobs.assign(kJobsPerCommit, OneJob("steady").jobs[0]);
    for (int i = 0; i < kCommits; ++i) {
      CONF_ASSIGN_OR_FAIL(int64_t n, driver->executor().JobInsertManyFast(batch));
      ASSERT_EQ(n, kJobsPerCommit);
      std::error_code ec;
      const auto size = std::filesystem::file_size(path + "-wal", ec);
      if (!ec) max_wal = std::max(max_wal, size);
    }
  }
  // A log that is never restarted passes 32,000 frames (17 MB) within the first few dozen commits
  // and keeps growing.
  EXPECT_GT(max_wal, 0u);
  EXPECT_LT(max_wal, std::uintmax_t{20} << 20) << "the -wal file grew to " << max_wal << " bytes";

  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
  spool::internal::SqliteDbPtr db(raw);
  sqlite3_stmt* stmt_raw = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db.get(), "SELECT count(*) FROM spool_job WHERE kind = 'steady'", -1,
                               &stmt_raw, nullptr),
            SQLITE_OK);
  spool::internal::SqliteStmtPtr stmt(stmt_raw);
  ASSERT_EQ(sqlite3_step(stmt.get()), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int64(stmt.get(), 0), int64_t{kCommits} * kJobsPerCommit);
}
