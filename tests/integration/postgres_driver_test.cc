// PostgreSQL-only behaviour of the driver, beyond the shared conformance suite: connection errors,
// lost connections, the caller's transactions, exact timestamps, error classes, the pool bound.

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "driver/driver.h"
#include "driver/postgres/pg_conn.h"
#include "integration/postgres_test_db.h"
#include "spool/client.h"

namespace spool::internal {
namespace {

using pgtest::PostgresTestDb;
using std::chrono::milliseconds;
using std::chrono::seconds;

const TimePoint kT0{seconds(1'800'000'000)};

[[maybe_unused]] ::testing::Environment* const kEnv =
    ::testing::AddGlobalTestEnvironment(new pgtest::PostgresTestEnvironment());

struct PgConnCloser {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using PgConnPtr = std::unique_ptr<PGconn, PgConnCloser>;

// A plain libpq connection, as an application would hold one.
PgConnPtr Connect(const std::string& url) {
  PgConnPtr c(PQconnectdb(url.c_str()));
  EXPECT_EQ(PQstatus(c.get()), CONNECTION_OK) << PQerrorMessage(c.get());
  PQsetNoticeProcessor(
      c.get(), [](void*, const char*) {}, nullptr);
  return c;
}

// Runs `sql` and returns the first value of the first row ("" when there is none).
std::string Query(PGconn* c, const std::string& sql) {
  pg::PgResult r(PQexec(c, sql.c_str()));
  const ExecStatusType st = PQresultStatus(r.get());
  EXPECT_TRUE(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) << sql << ": " << PQerrorMessage(c);
  if (st == PGRES_TUPLES_OK && PQntuples(r.get()) > 0) return PQgetvalue(r.get(), 0, 0);
  return "";
}

JobInsertManyParams OneJob(std::string queue = "q", TimePoint scheduled_at = kT0) {
  JobInsertParams p;
  p.kind = "k";
  p.queue = std::move(queue);
  p.scheduled_at = scheduled_at;
  return JobInsertManyParams{{p}, kT0};
}

class PostgresDriverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SPOOL_REQUIRE_PG_CLUSTER();
    auto url = PostgresTestDb::Instance().NewSchemaUrl();
    ASSERT_TRUE(url.has_value()) << url.error().ToString();
    url_ = *url;
    driver_ = OpenAt(url_);
  }

  static std::unique_ptr<Driver> OpenAt(const std::string& url) {
    auto d = Driver::Open(url, DriverOptions{});
    EXPECT_TRUE(d.has_value()) << d.error().ToString();
    if (!d) return nullptr;
    Status st = (*d)->MigrateUp(LatestVersion(**d));
    EXPECT_TRUE(st.ok()) << st.ToString();
    return std::move(*d);
  }

  // Terminates the driver's server connections and waits until the server has closed them.
  void KillConnections() {
    auto n = PostgresTestDb::Instance().TerminateConnections(url_);
    ASSERT_TRUE(n.has_value()) << n.error().ToString();
    ASSERT_GE(*n, 1);
    PgConnPtr admin = Connect(*pgtest::ClusterUrl());
    const auto deadline = std::chrono::steady_clock::now() + seconds(10);
    const std::string app = url_.substr(url_.find("application_name=") + 17);
    while (Query(admin.get(), fmt::format("SELECT count(*) FROM pg_stat_activity WHERE "
                                          "application_name = '{}'",
                                          app)) != "0") {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "backends did not exit";
      std::this_thread::yield();
    }
  }

  std::string url_;
  std::unique_ptr<Driver> driver_;
};

TEST(PostgresOpenTest, UnreachableServerNamesHostAndPortButNotThePassword) {
  SPOOL_REQUIRE_PG_CLUSTER();
  // Port 1 on loopback: nothing listens there.
  auto d = Driver::Open("postgres://spool:s3cr3t-pw@127.0.0.1:1/spool_test", DriverOptions{});
  ASSERT_FALSE(d.has_value());
  EXPECT_TRUE(d.error().IsConnectionLost()) << d.error().ToString();
  EXPECT_NE(d.error().message().find("127.0.0.1:1"), std::string::npos) << d.error().ToString();
  EXPECT_EQ(d.error().message().find("s3cr3t-pw"), std::string::npos) << d.error().ToString();
}

TEST(PostgresOpenTest, UnknownDatabaseIsReportedWithItsName) {
  SPOOL_REQUIRE_PG_CLUSTER();
  std::string url = *pgtest::ClusterUrl();
  url = url.substr(0, url.rfind('/')) + "/spool_no_such_db";
  auto d = Driver::Open(url, DriverOptions{});
  ASSERT_FALSE(d.has_value());
  EXPECT_TRUE(d.error().IsConnectionLost()) << d.error().ToString();
  EXPECT_NE(d.error().message().find("spool_no_such_db"), std::string::npos);
}

TEST(PostgresErrorTest, ClassifiesSqlStateByWhatTheCallerCanDo) {
  using Code = Status::Code;
  EXPECT_EQ(pg::ClassifySqlState("40001"), Code::kRetryable);  // serialization_failure
  EXPECT_EQ(pg::ClassifySqlState("40P01"), Code::kRetryable);  // deadlock_detected
  EXPECT_EQ(pg::ClassifySqlState("55P03"), Code::kRetryable);  // lock_not_available
  EXPECT_EQ(pg::ClassifySqlState("57014"), Code::kRetryable);  // query_canceled (timeout)
  EXPECT_EQ(pg::ClassifySqlState("08006"), Code::kConnectionLost);
  EXPECT_EQ(pg::ClassifySqlState("57P01"), Code::kConnectionLost);  // admin_shutdown
  EXPECT_EQ(pg::ClassifySqlState("23505"), Code::kAlreadyExists);
  EXPECT_EQ(pg::ClassifySqlState("23514"), Code::kInvalidArgument);
  EXPECT_EQ(pg::ClassifySqlState("22P02"), Code::kInvalidArgument);
  EXPECT_EQ(pg::ClassifySqlState("42P01"), Code::kFailedPrecondition);
  EXPECT_EQ(pg::ClassifySqlState("XX000"), Code::kInternal);
}

TEST_F(PostgresDriverTest, LostConnectionIsReportedThenReconnects) {
  ASSERT_NE(driver_, nullptr);
  auto rows = driver_->executor().JobInsertMany(OneJob());
  ASSERT_TRUE(rows.has_value()) << rows.error().ToString();
  KillConnections();

  auto lost = driver_->executor().JobGetByID((*rows)[0].id);
  ASSERT_FALSE(lost.has_value());
  EXPECT_TRUE(lost.error().IsConnectionLost()) << lost.error().ToString();

  auto again = driver_->executor().JobGetByID((*rows)[0].id);
  ASSERT_TRUE(again.has_value()) << again.error().ToString();
  EXPECT_EQ(again->kind, "k");
}

TEST_F(PostgresDriverTest, WaitForChangeRelistensAfterTheConnectionDrops) {
  ASSERT_NE(driver_, nullptr);
  KillConnections();
  auto lost = driver_->WaitForChange(seconds(10));
  ASSERT_FALSE(lost.has_value());
  EXPECT_TRUE(lost.error().IsConnectionLost()) << lost.error().ToString();

  // The next call reconnects; notifications may have been missed, so it reports a change.
  auto reconnected = driver_->WaitForChange(seconds(10));
  ASSERT_TRUE(reconnected.has_value()) << reconnected.error().ToString();
  EXPECT_TRUE(*reconnected);
  auto idle = driver_->WaitForChange(milliseconds(50));
  ASSERT_TRUE(idle.has_value()) << idle.error().ToString();
  EXPECT_FALSE(*idle);

  // And it listens again.
  std::unique_ptr<Driver> other = OpenAt(url_);
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(other->NotifyInsert("q").ok());
  auto woke = driver_->WaitForChange(seconds(20));
  ASSERT_TRUE(woke.has_value()) << woke.error().ToString();
  EXPECT_TRUE(*woke);
}

TEST_F(PostgresDriverTest, NotificationsStayInTheirSchema) {
  ASSERT_NE(driver_, nullptr);
  auto other_url = PostgresTestDb::Instance().NewSchemaUrl();
  ASSERT_TRUE(other_url.has_value());
  std::unique_ptr<Driver> other = OpenAt(*other_url);
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(other->NotifyInsert("q").ok());
  auto changed = driver_->WaitForChange(milliseconds(300));
  ASSERT_TRUE(changed.has_value());
  EXPECT_FALSE(*changed) << "a notification for another schema woke this driver";
}

TEST_F(PostgresDriverTest, InsertJoinsTheCallersTransaction) {
  ASSERT_NE(driver_, nullptr);
  PgConnPtr app = Connect(url_);
  for (const bool commit : {false, true}) {
    Query(app.get(), "BEGIN");
    auto exec = driver_->ExecutorFor(PostgresTx(app.get()));
    ASSERT_TRUE(exec.has_value()) << exec.error().ToString();
    auto rows = (*exec)->JobInsertMany(OneJob());
    ASSERT_TRUE(rows.has_value()) << rows.error().ToString();
    const int64_t id = (*rows)[0].id;
    EXPECT_TRUE(driver_->executor().JobGetByID(id).error().IsNotFound())
        << "visible before the caller committed";
    Query(app.get(), commit ? "COMMIT" : "ROLLBACK");
    auto got = driver_->executor().JobGetByID(id);
    EXPECT_EQ(got.has_value(), commit) << got.error().ToString();
  }
  // The caller's connection is theirs: spool left no prepared statements on it.
  EXPECT_EQ(Query(app.get(), "SELECT count(*) FROM pg_prepared_statements"), "0");
}

TEST_F(PostgresDriverTest, TimestampsAreStoredExactlyToTheMicrosecond) {
  ASSERT_NE(driver_, nullptr);
  // 2027-01-15T08:00:00.123457Z and a time before the epoch.
  const TimePoint t1{std::chrono::microseconds(1'800'000'000'123'457)};
  const TimePoint t2{std::chrono::microseconds(-86'400'000'001)};
  // 9999-12-31T23:59:59.999999Z: beyond 2^53 microseconds, where float arithmetic would round.
  const TimePoint t3{std::chrono::microseconds(253'402'300'799'999'999)};
  auto r1 = driver_->executor().JobInsertMany(OneJob("q", t1));
  auto r2 = driver_->executor().JobInsertMany(OneJob("q", t2));
  auto r3 = driver_->executor().JobInsertMany(OneJob("q", t3));
  ASSERT_TRUE(r1.has_value() && r2.has_value() && r3.has_value());
  EXPECT_EQ((*r1)[0].scheduled_at, t1);
  EXPECT_EQ((*r2)[0].scheduled_at, t2);
  EXPECT_EQ((*r3)[0].scheduled_at, t3);
  auto got3 = driver_->executor().JobGetByID((*r3)[0].id);
  ASSERT_TRUE(got3.has_value());
  EXPECT_EQ(got3->scheduled_at, t3);

  PgConnPtr app = Connect(url_);
  EXPECT_EQ(Query(app.get(), fmt::format("SELECT to_char(scheduled_at AT TIME ZONE 'UTC', "
                                         "'YYYY-MM-DD HH24:MI:SS.US') FROM spool_job WHERE id = {}",
                                         (*r1)[0].id)),
            "2027-01-15 08:00:00.123457");
  EXPECT_EQ(Query(app.get(), fmt::format("SELECT to_char(scheduled_at AT TIME ZONE 'UTC', "
                                         "'YYYY-MM-DD HH24:MI:SS.US') FROM spool_job WHERE id = {}",
                                         (*r2)[0].id)),
            "1969-12-30 23:59:59.999999");
}

TEST_F(PostgresDriverTest, LockTimeoutIsRetryableWithItsSqlState) {
  ASSERT_NE(driver_, nullptr);
  auto rows = driver_->executor().JobInsertMany(OneJob());
  ASSERT_TRUE(rows.has_value());
  const int64_t id = (*rows)[0].id;
  // Another session holds the row; the driver gives up after lock_timeout.
  std::string impatient_url = url_;
  impatient_url.insert(impatient_url.find("&application_name="), "%20-clock_timeout%3D100");
  std::unique_ptr<Driver> impatient = OpenAt(impatient_url);
  ASSERT_NE(impatient, nullptr);
  auto fetched = impatient->executor().JobGetAvailable({"q", 1, "c", kT0});
  ASSERT_TRUE(fetched.has_value() && fetched->size() == 1u);

  PgConnPtr app = Connect(url_);
  Query(app.get(), "BEGIN");
  Query(app.get(), fmt::format("SELECT id FROM spool_job WHERE id = {} FOR UPDATE", id));
  JobSetStateIfRunningManyParams done;
  done.jobs.push_back({id, JobState::kCompleted, kT0, std::nullopt});
  auto r = impatient->executor().JobSetStateIfRunningMany(done);
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().IsRetryable()) << r.error().ToString();
  EXPECT_EQ(r.error().native_code(), "55P03");
  Query(app.get(), "ROLLBACK");

  auto retried = impatient->executor().JobSetStateIfRunningMany(done);
  ASSERT_TRUE(retried.has_value()) << retried.error().ToString();
  EXPECT_EQ(*retried, 1);
}

TEST_F(PostgresDriverTest, SharedExecutorUsesABoundedPool) {
  ASSERT_NE(driver_, nullptr);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 24; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10; ++i) {
        if (!driver_->executor().JobInsertManyFast(OneJob()).has_value()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  auto counts = driver_->executor().JobCountByState("q");
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ((*counts)[JobState::kAvailable], 240);

  PgConnPtr admin = Connect(*pgtest::ClusterUrl());
  const std::string app = url_.substr(url_.find("application_name=") + 17);
  const int open = std::stoi(Query(
      admin.get(),
      fmt::format("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}'", app)));
  EXPECT_LE(open, 8 + 1) << "8 pooled connections plus the LISTEN connection";
}

TEST_F(PostgresDriverTest, MissingSchemaIsAFailedPreconditionNamingTheFix) {
  ASSERT_NE(driver_, nullptr);
  ASSERT_TRUE(driver_->MigrateDown(0).ok());
  auto r = driver_->executor().JobCountByState("");
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().IsFailedPrecondition()) << r.error().ToString();
  EXPECT_EQ(r.error().native_code(), "42P01");
  EXPECT_NE(r.error().message().find("spool migration up"), std::string::npos);
}

}  // namespace
}  // namespace spool::internal
