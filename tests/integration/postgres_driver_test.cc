// PostgreSQL-only behaviour of the driver, beyond the shared conformance suite: connection errors,
// lost connections, the caller's transactions, exact timestamps, error classes, the pool bound,
// and races between processes (unique inserts, leader election) that only a server can show.

#include "driver/postgres/postgres_driver.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "driver/driver.h"
#include "driver/postgres/pg_binary.h"
#include "driver/postgres/pg_conn.h"
#include "driver/state_codes.h"
#include "integration/postgres_test_db.h"
#include "runtime/completer.h"
#include "spool/client.h"
#include "support/test_util.h"

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

  // Opens a transaction on the application's connection and returns spool's executor inside it.
  Result<std::unique_ptr<Executor>> BeginOn(PGconn* app) {
    Query(app, "BEGIN");
    return driver_->ExecutorFor(PostgresTx(app));
  }

  // Inserts `n` jobs that client "c1" claims as they are inserted, into `jobs`.
  void InsertClaimed(int n, std::vector<JobRow>* jobs) {
    for (int i = 0; i < n; ++i) {
      auto params = OneJob();
      params.jobs[0].claim = true;
      params.claim_for = "c1";
      auto r = driver_->executor().JobInsertMany(params);
      ASSERT_TRUE(r.has_value()) << r.error().ToString();
      jobs->push_back(r->front().job);
      ASSERT_EQ(jobs->back().state, JobState::kRunning);
    }
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
  // An IPv6 address is written in brackets, as in the URL: "::1:1" would read as an address.
  auto v6 = Driver::Open("postgres://spool:s3cr3t-pw@[::1]:1/spool_test", DriverOptions{});
  ASSERT_FALSE(v6.has_value());
  EXPECT_NE(v6.error().message().find("[::1]:1"), std::string::npos) << v6.error().ToString();
  EXPECT_EQ(v6.error().message().find("s3cr3t-pw"), std::string::npos) << v6.error().ToString();
}

TEST(PostgresOpenTest, AUrlLibpqCannotParseIsReportedWithoutThePassword) {
  SPOOL_REQUIRE_PG_CLUSTER();
  for (const char* url : {"postgres://spool:s3cr3t-pw@[::1:1/spool_test",
                          "postgres://spool@127.0.0.1:1/db?password=s3cr3t-pw&bogus_option=1",
                          "postgres://spool@127.0.0.1:1/db?password=s3cr3t-pw&port"}) {
    auto d = Driver::Open(url, DriverOptions{});
    ASSERT_FALSE(d.has_value()) << url;
    EXPECT_EQ(d.error().message().find("s3cr3t-pw"), std::string::npos) << d.error().ToString();
  }
  // The message still says what is wrong, libpq's own quoted marks included.
  auto d = Driver::Open("postgres://spool:s3cr3t-pw@[::1:1/spool_test", DriverOptions{});
  ASSERT_FALSE(d.has_value());
  EXPECT_TRUE(d.error().IsInvalidArgument()) << d.error().ToString();
  EXPECT_NE(d.error().message().find("cannot be parsed"), std::string::npos)
      << d.error().ToString();
  EXPECT_NE(d.error().message().find("matching \"]\" in IPv6 host address"), std::string::npos)
      << d.error().ToString();
  // Values libpq parses but cannot use are the url's fault too: InvalidArgument, not an outage.
  for (const char* url : {"postgres://spool:s3cr3t-pw@127.0.0.1:abc/db",
                          "postgres://spool:s3cr3t-pw@127.0.0.1:99999/db",
                          "postgres://spool:s3cr3t-pw@127.0.0.1:1/db?sslmode=bogus",
                          "postgres://spool:s3cr3t-pw@127.0.0.1:1/db?connect_timeout=abc"}) {
    auto bad = Driver::Open(url, DriverOptions{});
    ASSERT_FALSE(bad.has_value()) << url;
    EXPECT_TRUE(bad.error().IsInvalidArgument()) << url << ": " << bad.error().ToString();
    EXPECT_NE(bad.error().message().find("has a value libpq cannot use"), std::string::npos)
        << bad.error().ToString();
    EXPECT_EQ(bad.error().message().find("s3cr3t-pw"), std::string::npos) << bad.error().ToString();
  }
}

// Passwords with characters a url must percent-encode: libpq quotes the bad token, or reads part
// of the password as the host or port. None of it may reach the message.
TEST(PostgresOpenTest, AnUnencodedPasswordIsRefusedWithoutShowingIt) {
  SPOOL_REQUIRE_PG_CLUSTER();
  for (const char* url :
       {"postgres://weird:s3cr%ZZet@127.0.0.1:1/db", "postgres://weird:s3cr/et@127.0.0.1:1/db",
        "postgres://weird:s3cr?et@127.0.0.1:1/db", "postgres://weird:s3cr@et@127.0.0.1:1/db",
        "postgres://weird:p@s3cr:w/et%?#&=@127.0.0.1:1/db",
        "postgres://weird:s3cr#et@127.0.0.1:1/db?password=x"}) {
    auto d = Driver::Open(url, DriverOptions{});
    ASSERT_FALSE(d.has_value()) << url;
    EXPECT_TRUE(d.error().IsInvalidArgument()) << d.error().ToString();
    for (const char* part : {"s3cr", "et@", "et%"}) {
      EXPECT_EQ(d.error().message().find(part), std::string::npos)
          << url << ": " << d.error().ToString();
    }
  }
  auto d = Driver::Open("postgres://weird:s3cr/et@127.0.0.1:1/db", DriverOptions{});
  ASSERT_FALSE(d.has_value());
  EXPECT_NE(d.error().message().find("must be percent-encoded"), std::string::npos)
      << d.error().ToString();
}

// A port that accepts connections and never answers (the kernel completes the handshake for a
// listening socket that nobody accepts on): libpq waited for the server's reply forever.
class SilentPort {
 public:
  SilentPort() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    auto* sa = reinterpret_cast<sockaddr*>(&addr);
    if (fd_ < 0 || bind(fd_, sa, len) != 0 || listen(fd_, 16) != 0 ||
        getsockname(fd_, sa, &len) != 0) {
      ADD_FAILURE() << "cannot listen on 127.0.0.1";
    }
    port_ = ntohs(addr.sin_port);
  }
  ~SilentPort() {
    if (fd_ >= 0) close(fd_);
  }
  SilentPort(const SilentPort&) = delete;
  SilentPort& operator=(const SilentPort&) = delete;
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

TEST(PostgresOpenTest, AServerThatNeverAnswersTimesOutNamingHostAndPort) {
  SilentPort silent;
  const std::string base = fmt::format("postgres://app:s3cret@127.0.0.1:{}/db", silent.port());
  // The url's own connect_timeout wins over spool's default of 10 s.
  auto quick = Driver::Open(base + "?connect_timeout=1", DriverOptions{});
  ASSERT_FALSE(quick.has_value());
  EXPECT_TRUE(quick.error().IsConnectionLost()) << quick.error().ToString();
  EXPECT_NE(quick.error().message().find(fmt::format("127.0.0.1:{}", silent.port())),
            std::string::npos)
      << quick.error().ToString();
  EXPECT_NE(quick.error().message().find("timeout"), std::string::npos) << quick.error().ToString();
  EXPECT_EQ(quick.error().message().find("s3cret"), std::string::npos);
  // Without one, spool's default applies (before it, this never returned).
  auto plain = Driver::Open(base, DriverOptions{});
  ASSERT_FALSE(plain.has_value());
  EXPECT_TRUE(plain.error().IsConnectionLost()) << plain.error().ToString();
}

TEST(PostgresOpenTest, UnknownDatabaseIsReportedWithItsName) {
  SPOOL_REQUIRE_PG_CLUSTER();
  std::string url = *pgtest::ClusterUrl();
  url = url.substr(0, url.rfind('/')) + "/spool_no_such_db";
  auto d = Driver::Open(url, DriverOptions{});
  ASSERT_FALSE(d.has_value());
  // No retry can make it exist: the caller has to create it or fix the url.
  EXPECT_TRUE(d.error().IsInvalidArgument()) << d.error().ToString();
  EXPECT_NE(d.error().message().find("spool_no_such_db"), std::string::npos);
  EXPECT_NE(d.error().message().find("createdb"), std::string::npos) << d.error().ToString();
}

// scripts/pg-cluster.sh makes the server ask this role, and only it, for its password.
constexpr const char* kPasswordRole = "spool_password_test";

// The cluster's url with `userinfo` (user[:password]) instead of its own user; no password file
// is read (a missing file is skipped silently).
std::string ClusterUrlAs(const std::string& userinfo) {
  std::string url = *pgtest::ClusterUrl();
  const size_t user = url.find("://") + 3;
  const size_t at = url.find('@', user);
  url.replace(user, at - user, userinfo);
  return url + (url.find('?') == std::string::npos ? "?" : "&") + "passfile=/nonexistent/pgpass";
}

TEST(PostgresOpenTest, ARefusedPasswordRoleOrLoginIsTheCallersToFixAndNeverPrinted) {
  SPOOL_REQUIRE_PG_CLUSTER();
  PgConnPtr admin = Connect(*pgtest::ClusterUrl());
  Query(admin.get(), fmt::format("DO $$ BEGIN CREATE ROLE {0} LOGIN; EXCEPTION WHEN "
                                 "duplicate_object THEN NULL; END $$; "
                                 "ALTER ROLE {0} PASSWORD 'right-pw'",
                                 kPasswordRole));
  auto right =
      Driver::Open(ClusterUrlAs(fmt::format("{}:right-pw", kPasswordRole)), DriverOptions{});
  ASSERT_TRUE(right.has_value()) << right.error().ToString();
  auto trusted =
      Driver::Open(ClusterUrlAs(fmt::format("{}:wrong-pw", kPasswordRole)), DriverOptions{});
  if (trusted.has_value()) {
    // Only a server set up by hand gets here; CI's cluster comes from scripts/pg-cluster.sh.
    ASSERT_FALSE(pgtest::Required()) << "the test cluster does not ask " << kPasswordRole
                                     << " for a password: start it with scripts/pg-cluster.sh";
    GTEST_SKIP() << "this server does not ask " << kPasswordRole
                 << " for a password (pg_hba.conf); scripts/pg-cluster.sh's clusters do";
  }
  const std::string host_port = pg::DescribeTarget(*pgtest::ClusterUrl());
  const Status& wrong = trusted.error();
  // A connection lost would be retried for ever; this needs the user or password fixed.
  EXPECT_TRUE(wrong.IsInvalidArgument()) << wrong.ToString();
  EXPECT_NE(wrong.message().find(host_port), std::string::npos) << wrong.ToString();
  EXPECT_NE(wrong.message().find("password authentication failed"), std::string::npos)
      << wrong.ToString();
  EXPECT_EQ(wrong.message().find("wrong-pw"), std::string::npos) << wrong.ToString();

  auto none = Driver::Open(ClusterUrlAs(kPasswordRole), DriverOptions{});
  ASSERT_FALSE(none.has_value());
  EXPECT_TRUE(none.error().IsInvalidArgument()) << none.error().ToString();
  EXPECT_NE(none.error().message().find("asks for a password"), std::string::npos)
      << none.error().ToString();

  auto nobody = Driver::Open(ClusterUrlAs("spool_no_such_role:pw"), DriverOptions{});
  ASSERT_FALSE(nobody.has_value());
  EXPECT_TRUE(nobody.error().IsInvalidArgument()) << nobody.error().ToString();
  EXPECT_NE(nobody.error().message().find("spool_no_such_role"), std::string::npos)
      << nobody.error().ToString();

  Query(admin.get(),
        "DO $$ BEGIN CREATE ROLE spool_nologin_test NOLOGIN; EXCEPTION WHEN duplicate_object THEN "
        "NULL; END $$");
  auto barred = Driver::Open(ClusterUrlAs("spool_nologin_test"), DriverOptions{});
  ASSERT_FALSE(barred.has_value());
  EXPECT_TRUE(barred.error().IsInvalidArgument()) << barred.error().ToString();
  EXPECT_NE(barred.error().message().find("ALTER ROLE ... LOGIN"), std::string::npos)
      << barred.error().ToString();
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

// An operator tells spool's sessions apart in pg_stat_activity: "spool" unless the url names them.
TEST_F(PostgresDriverTest, SessionsAreNamedSpoolUnlessTheUrlNamesThem) {
  // The fixture's url names its sessions after the test's schema.
  const size_t named_at = url_.find("&application_name=");
  ASSERT_NE(named_at, std::string::npos) << url_;
  const std::string plain = url_.substr(0, named_at);
  PgConnPtr app = Connect(url_);
  for (const auto& [url, name] :
       {std::pair{plain, std::string("spool")},
        std::pair{plain + "&application_name=node-7", std::string("node-7")}}) {
    auto d = Driver::Open(url, DriverOptions{});
    ASSERT_TRUE(d.has_value()) << d.error().ToString();
    ASSERT_TRUE((*d)->executor().JobInsertMany(OneJob()).has_value());
    EXPECT_NE(Query(app.get(), "SELECT count(*) FROM pg_stat_activity WHERE application_name = '" +
                                   name + "'"),
              "0")
        << name;
  }
}

// max_attempts is a smallint: a retry of a job that used kMaxMaxAttempts attempts is refused in
// words, where its growth by one failed with "smallint out of range".
TEST_F(PostgresDriverTest, RetryOfAJobThatUsedEveryAttemptIsRefused) {
  auto rows = driver_->executor().JobInsertMany(OneJob("q_used_up"));
  ASSERT_TRUE(rows.has_value()) << rows.error().ToString();
  const int64_t id = (*rows)[0].job.id;
  PgConnPtr app = Connect(url_);
  Query(app.get(), fmt::format("UPDATE spool_job SET attempt = {0}, max_attempts = {0}, state = "
                               "{1}, finalized_at = created_at WHERE id = {2}",
                               kMaxMaxAttempts, static_cast<int>(JobState::kDiscarded), id));
  auto r = driver_->executor().JobRetry({id, kT0});
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().IsFailedPrecondition()) << r.error().ToString();
  EXPECT_NE(r.error().message().find(fmt::format("job {} has used all 32767 attempts", id)),
            std::string::npos)
      << r.error().ToString();
  auto stored = driver_->executor().JobGetByID(id);
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(stored->state, JobState::kDiscarded);
}

TEST_F(PostgresDriverTest, LostConnectionIsReportedThenReconnects) {
  ASSERT_NE(driver_, nullptr);
  auto rows = driver_->executor().JobInsertMany(OneJob());
  ASSERT_TRUE(rows.has_value()) << rows.error().ToString();
  KillConnections();

  auto lost = driver_->executor().JobGetByID((*rows)[0].job.id);
  ASSERT_FALSE(lost.has_value());
  EXPECT_TRUE(lost.error().IsConnectionLost()) << lost.error().ToString();

  auto again = driver_->executor().JobGetByID((*rows)[0].job.id);
  ASSERT_TRUE(again.has_value()) << again.error().ToString();
  EXPECT_EQ(again->kind, "k");
}

// A pooled connection the server closed while it sat idle (here terminated; idle_session_timeout
// and restarts close them the same way) is replaced before use: the call succeeds. Checked only
// after the connection has been idle a while (1 s; 0 here), so LostConnectionIsReported... above
// still sees the loss.
TEST_F(PostgresDriverTest, AConnectionClosedWhileIdleIsReplacedBeforeUse) {
  DriverOptions options;
  options.pg_check_idle_after = std::chrono::milliseconds(0);
  auto d = Driver::Open(url_, options);
  ASSERT_TRUE(d.has_value()) << d.error().ToString();
  auto rows = (*d)->executor().JobInsertMany(OneJob());
  ASSERT_TRUE(rows.has_value()) << rows.error().ToString();
  KillConnections();
  auto again = (*d)->executor().JobGetByID((*rows)[0].job.id);
  ASSERT_TRUE(again.has_value()) << again.error().ToString();
  EXPECT_EQ(again->kind, "k");
  auto insert = (*d)->executor().JobInsertMany(OneJob());
  EXPECT_TRUE(insert.has_value()) << insert.error().ToString();
}

// A stop does not wait for a stalled database: here a lock on spool's table, which the producer's
// claim waits behind. Past the stop's timeout and 10 s more, spool's statements are cancelled and
// the stop ends; it used to wait as long as the lock was held (an audit's Stop(2s): 42 s).
TEST_F(PostgresDriverTest, StopDoesNotWaitForAStalledDatabase) {
  ClientOptions o;
  o.queues["default"] = {.max_workers = 2};
  o.poll_interval = std::chrono::milliseconds(50);
  auto c = Client::Open(url_, o);
  ASSERT_TRUE(c.has_value()) << c.error().ToString();
  ASSERT_TRUE((*c)->Start().ok());
  PgConnPtr app = Connect(url_);
  Query(app.get(), "BEGIN");
  Query(app.get(), "LOCK TABLE spool_job IN ACCESS EXCLUSIVE MODE");
  // Until the producer's claim waits for the lock.
  PgConnPtr admin = Connect(*pgtest::ClusterUrl());
  const auto deadline = std::chrono::steady_clock::now() + seconds(30);
  while (Query(admin.get(),
               "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
               "'Lock' AND query LIKE '%spool_job%'") == "0") {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no claim waited for the lock";
    std::this_thread::yield();
  }
  auto stopping = std::async(std::launch::async, [&] { return (*c)->Stop(seconds(1)); });
  const auto waited = stopping.wait_for(seconds(60));
  Query(app.get(), "ROLLBACK");  // whatever happened, so that a stuck stop ends
  ASSERT_EQ(waited, std::future_status::ready) << "Stop waited for the lock";
  EXPECT_TRUE(stopping.get().ok());
}

struct GateArgs {
  static constexpr std::string_view kKind = "gate";
  int n = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(GateArgs, n)
};
// Runs until the test opens the gate, so that its outcome comes after the test's lock.
struct GateWorker : Worker<GateArgs> {
  static inline std::mutex mu;
  static inline std::condition_variable cv;
  static inline bool started = false;
  static inline bool open = false;
  Outcome Work(JobContext&, const GateArgs&) override {
    std::unique_lock lock(mu);
    started = true;
    cv.notify_all();
    cv.wait(lock, [] { return open; });
    return Outcome::Done();
  }
};

// An outcome written behind a lock on spool's table: the stop gives up on it 10 s past its
// timeout, as documented. The completer used to count its own 10 s from the moment the client
// reached it, itself 10 s past the timeout (an audit's Stop(1s) took 23 s).
TEST_F(PostgresDriverTest, StopGivesUpOnAnOutcomeBehindALockTenSecondsPastItsTimeout) {
  Workers workers;
  workers.Add<GateWorker>();
  ClientOptions o;
  o.queues["default"] = {.max_workers = 2};
  o.poll_interval = std::chrono::milliseconds(50);
  auto c = Client::Open(url_, o, std::move(workers));
  ASSERT_TRUE(c.has_value()) << c.error().ToString();
  ASSERT_TRUE((*c)->Start().ok());
  ASSERT_TRUE((*c)->Insert(GateArgs{}).has_value());
  {
    std::unique_lock lock(GateWorker::mu);
    ASSERT_TRUE(GateWorker::cv.wait_for(lock, seconds(30), [] { return GateWorker::started; }));
  }
  PgConnPtr app = Connect(url_);
  Query(app.get(), "BEGIN");
  Query(app.get(), "LOCK TABLE spool_job IN ACCESS EXCLUSIVE MODE");
  {
    std::lock_guard lock(GateWorker::mu);
    GateWorker::open = true;
  }
  GateWorker::cv.notify_all();
  // Until the outcome's write and the producer's claim both wait for the lock.
  PgConnPtr admin = Connect(*pgtest::ClusterUrl());
  const auto deadline = std::chrono::steady_clock::now() + seconds(30);
  while (std::stoi(Query(admin.get(),
                         "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                         "AND query LIKE '%spool_job%'")) < 2) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no two statements waited";
    std::this_thread::yield();
  }
  auto stopping = std::async(std::launch::async, [&] { return (*c)->Stop(seconds(1)); });
  // 1 s + 10 s, and slack for a loaded machine; the old stop took 21-23 s.
  const auto waited = stopping.wait_for(seconds(17));
  Query(app.get(), "ROLLBACK");
  ASSERT_EQ(waited, std::future_status::ready) << "the stop's waits added up";
  (void)stopping.get();
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
  ASSERT_TRUE(other->executor().JobInsertMany(OneJob()).has_value());
  auto woke = driver_->WaitForChange(seconds(20));
  ASSERT_TRUE(woke.has_value()) << woke.error().ToString();
  EXPECT_TRUE(*woke);
}

// The client wakes its own producers on insert, so the echo of its own NOTIFY is not a change;
// another process's insert still is.
TEST_F(PostgresDriverTest, OwnInsertNotificationsAreNotAChange) {
  ASSERT_NE(driver_, nullptr);
  auto first = driver_->WaitForChange(milliseconds(200));  // connects and listens
  ASSERT_TRUE(first.has_value()) << first.error().ToString();
  ASSERT_TRUE(driver_->executor().JobInsertMany(OneJob()).has_value());
  auto own = driver_->WaitForChange(milliseconds(300));
  ASSERT_TRUE(own.has_value()) << own.error().ToString();
  EXPECT_FALSE(*own) << "this driver's own insert notification woke it";

  std::unique_ptr<Driver> other = OpenAt(url_);
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(other->executor().JobInsertMany(OneJob()).has_value());
  auto woke = driver_->WaitForChange(seconds(20));
  ASSERT_TRUE(woke.has_value()) << woke.error().ToString();
  EXPECT_TRUE(*woke);
}

// Every insert tells the other processes itself, in its own transaction (a single row in one
// round trip with its NOTIFY): clients only wake their own producers after inserting.
TEST_F(PostgresDriverTest, InsertsNotifyOtherProcessesThemselves) {
  ASSERT_NE(driver_, nullptr);
  auto first = driver_->WaitForChange(milliseconds(200));  // connects and listens
  ASSERT_TRUE(first.has_value()) << first.error().ToString();
  std::unique_ptr<Driver> other = OpenAt(url_);
  ASSERT_NE(other, nullptr);
  JobInsertManyParams bulk;
  bulk.now = kT0;
  bulk.jobs.assign(5'001, OneJob().jobs[0]);  // more than one statement, in a transaction
  const std::vector<std::pair<const char*, std::function<bool()>>> inserts = {
      {"one row", [&] { return other->executor().JobInsertMany(OneJob()).has_value(); }},
      {"one row, fast", [&] { return other->executor().JobInsertManyFast(OneJob()).has_value(); }},
      {"bulk", [&] { return other->executor().JobInsertMany(bulk).has_value(); }},
      {"bulk, fast", [&] { return other->executor().JobInsertManyFast(bulk).has_value(); }},
  };
  for (const auto& [what, insert] : inserts) {
    ASSERT_TRUE(insert()) << what;
    auto woke = driver_->WaitForChange(seconds(20));
    ASSERT_TRUE(woke.has_value()) << woke.error().ToString();
    EXPECT_TRUE(*woke) << what << ": no notification";
  }

  JobInsertManyParams later = OneJob("q", kT0 + std::chrono::hours(1));
  later.jobs[0].state = JobState::kScheduled;
  ASSERT_TRUE(other->executor().JobInsertMany(later).has_value());
  auto scheduled = driver_->WaitForChange(milliseconds(300));
  ASSERT_TRUE(scheduled.has_value()) << scheduled.error().ToString();
  EXPECT_FALSE(*scheduled) << "a scheduled job woke producers that have nothing to fetch yet";

  ASSERT_TRUE(driver_->executor().JobInsertMany(OneJob()).has_value());
  auto own = driver_->WaitForChange(milliseconds(300));
  ASSERT_TRUE(own.has_value()) << own.error().ToString();
  EXPECT_FALSE(*own) << "this driver's own insert woke its listener";
}

// A job claimed by its own insert is for the inserting client only: no other process is told.
TEST_F(PostgresDriverTest, InsertsOfClaimedJobsNotifyNobody) {
  ASSERT_NE(driver_, nullptr);
  std::unique_ptr<Driver> other = OpenAt(url_);
  ASSERT_NE(other, nullptr);
  auto first = other->WaitForChange(milliseconds(200));  // connects and listens
  ASSERT_TRUE(first.has_value()) << first.error().ToString();
  const auto other_wakes = [&]() -> bool {
    auto woke = other->WaitForChange(milliseconds(300));
    EXPECT_TRUE(woke.has_value()) << woke.error().ToString();
    return woke.value_or(false);
  };

  JobInsertManyParams claimed = OneJob("q");
  claimed.jobs[0].claim = true;
  claimed.claim_for = "client-a";
  auto rows = driver_->executor().JobInsertMany(claimed);
  ASSERT_TRUE(rows.has_value()) << rows.error().ToString();
  EXPECT_EQ((*rows)[0].job.state, JobState::kRunning);
  EXPECT_FALSE(other_wakes()) << "a job claimed by its insert woke another process";

  // The same insert unclaimed tells the others (no client has heartbeated: every queue).
  ASSERT_TRUE(driver_->executor().JobInsertMany(OneJob("q")).has_value());
  EXPECT_TRUE(other_wakes()) << "an unclaimed insert did not notify";
}

// Once a client has heartbeated, its pooled inserts NOTIFY only the queues another client works
// (it wakes its own producers itself); a client that joins is heard of at once, and inserts on a
// caller's connection always NOTIFY (that echo is its own process's wake-up).
TEST_F(PostgresDriverTest, InsertsNotifyOnlyQueuesAnotherClientWorks) {
  ASSERT_NE(driver_, nullptr);
  std::unique_ptr<Driver> other = OpenAt(url_);
  ASSERT_NE(other, nullptr);
  const auto drain = [](Driver& d) {
    for (int i = 0; i < 20; ++i) {
      auto changed = d.WaitForChange(milliseconds(100));
      ASSERT_TRUE(changed.has_value()) << changed.error().ToString();
      if (!*changed) return;
    }
    FAIL() << "notifications kept coming";
  };
  drain(*driver_);  // connects and listens
  drain(*other);
  const auto other_wakes = [&]() -> bool {
    auto woke = other->WaitForChange(milliseconds(300));
    EXPECT_TRUE(woke.has_value()) << woke.error().ToString();
    return woke.value_or(false);
  };

  // Before its first heartbeat a client cannot know who works what: it notifies every queue.
  ASSERT_TRUE(driver_->executor().JobInsertManyFast(OneJob("q")).has_value());
  EXPECT_TRUE(other_wakes()) << "an insert before any heartbeat did not notify";

  // Nobody else works q: the NOTIFY is left out.
  ASSERT_TRUE(driver_->executor().ClientHeartbeat({"client-a", kT0, {"q"}}).has_value());
  drain(*other);  // client-a's joining
  ASSERT_TRUE(driver_->executor().JobInsertManyFast(OneJob("q")).has_value());
  ASSERT_TRUE(driver_->executor().JobInsertMany(OneJob("q")).has_value());
  EXPECT_FALSE(other_wakes()) << "an insert into a queue no other client works notified";

  // A caller's own connection always notifies.
  PgConnPtr app = Connect(url_);
  {
    auto exec = BeginOn(app.get());
    ASSERT_TRUE(exec.has_value()) << exec.error().ToString();
    ASSERT_TRUE((*exec)->JobInsertMany(OneJob("q")).has_value());
    Query(app.get(), "COMMIT");
  }
  EXPECT_TRUE(other_wakes()) << "an insert on the caller's connection did not notify";

  // Another client that works q joins: the first client hears of it before its next heartbeat.
  ASSERT_TRUE(other->executor().ClientHeartbeat({"client-b", kT0, {"q", "r"}}).has_value());
  auto heard = driver_->WaitForChange(seconds(20));
  ASSERT_TRUE(heard.has_value()) << heard.error().ToString();
  EXPECT_TRUE(*heard);
  drain(*driver_);
  drain(*other);
  ASSERT_TRUE(driver_->executor().JobInsertManyFast(OneJob("q")).has_value());
  EXPECT_TRUE(other_wakes()) << "an insert after another client joined did not notify";

  // The next heartbeat reads who works what: q and r are worked elsewhere, s is not.
  ASSERT_TRUE(driver_->executor().ClientHeartbeat({"client-a", kT0, {"q", "s"}}).has_value());
  for (const char* queue : {"q", "r"}) {
    ASSERT_TRUE(driver_->executor().JobInsertManyFast(OneJob(queue)).has_value());
    EXPECT_TRUE(other_wakes()) << queue << ": worked by client-b, not notified";
  }
  ASSERT_TRUE(driver_->executor().JobInsertManyFast(OneJob("s")).has_value());
  EXPECT_FALSE(other_wakes()) << "s: worked by nobody else, notified";
}

// Statements sent as one pipeline are one transaction: a failure rolls back the statements
// before it, the first error is the one returned, and the connection serves the next call.
TEST_F(PostgresDriverTest, APipelineIsOneTransaction) {
  auto conn = pg::Conn::Connect(url_, "test");
  ASSERT_TRUE(conn.has_value()) << conn.error().ToString();
  pg::Conn& c = **conn;
  ASSERT_TRUE(c.Exec("CREATE TEMP TABLE pipelined (x int PRIMARY KEY)").ok());
  const std::string insert = "INSERT INTO pipelined VALUES ($1)";
  const std::string count = "SELECT count(*) FROM pipelined";
  auto failed = c.QueryPipelined({{"pipelined_insert", &insert, {"1"}},
                                  {"pipelined_insert", &insert, {"1"}},
                                  {"pipelined_insert", &insert, {"2"}}});
  ASSERT_FALSE(failed.has_value());
  EXPECT_NE(failed.error().message().find("duplicate key"), std::string::npos)
      << failed.error().ToString();
  EXPECT_TRUE(c.ok());
  auto ok = c.QueryPipelined({{"pipelined_insert", &insert, {"3"}}, {"", &count, {}}});
  ASSERT_TRUE(ok.has_value()) << ok.error().ToString();
  ASSERT_EQ(ok->size(), 2u);
  EXPECT_STREQ(PQgetvalue((*ok)[1].get(), 0, 0), "1") << "the failed pipeline left rows behind";
  auto after = c.Query("", count, {});
  ASSERT_TRUE(after.has_value()) << after.error().ToString();
  EXPECT_STREQ(PQgetvalue(after->get(), 0, 0), "1");
}

TEST_F(PostgresDriverTest, NotificationsStayInTheirSchema) {
  ASSERT_NE(driver_, nullptr);
  auto other_url = PostgresTestDb::Instance().NewSchemaUrl();
  ASSERT_TRUE(other_url.has_value());
  std::unique_ptr<Driver> other = OpenAt(*other_url);
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(other->executor().JobInsertMany(OneJob()).has_value());
  auto changed = driver_->WaitForChange(milliseconds(300));
  ASSERT_TRUE(changed.has_value());
  EXPECT_FALSE(*changed) << "a notification for another schema woke this driver";
}

TEST_F(PostgresDriverTest, InsertJoinsTheCallersTransaction) {
  ASSERT_NE(driver_, nullptr);
  PgConnPtr app = Connect(url_);
  for (const bool commit : {false, true}) {
    auto exec = BeginOn(app.get());
    ASSERT_TRUE(exec.has_value()) << exec.error().ToString();
    auto rows = (*exec)->JobInsertMany(OneJob());
    ASSERT_TRUE(rows.has_value()) << rows.error().ToString();
    const int64_t id = (*rows)[0].job.id;
    EXPECT_TRUE(driver_->executor().JobGetByID(id).error().IsNotFound())
        << "visible before the caller committed";
    Query(app.get(), commit ? "COMMIT" : "ROLLBACK");
    auto got = driver_->executor().JobGetByID(id);
    EXPECT_EQ(got.has_value(), commit) << got.error().ToString();
  }
  // The caller's connection is theirs: spool left no prepared statements on it.
  EXPECT_EQ(Query(app.get(), "SELECT count(*) FROM pg_prepared_statements"), "0");
}

TEST_F(PostgresDriverTest, ACallersConnectionOutsideATransactionIsRefused) {
  ASSERT_NE(driver_, nullptr);
  PgConnPtr app = Connect(url_);
  auto idle = driver_->ExecutorFor(spool::PostgresTx(app.get()));
  ASSERT_FALSE(idle.has_value());
  EXPECT_NE(idle.error().message().find("no open transaction: run BEGIN"), std::string::npos)
      << idle.error().ToString();
  Query(app.get(), "BEGIN");
  PQclear(PQexec(app.get(), "SELECT no_such_column"));  // the transaction has failed now
  auto failed = driver_->ExecutorFor(spool::PostgresTx(app.get()));
  ASSERT_FALSE(failed.has_value());
  EXPECT_NE(failed.error().message().find("roll it back"), std::string::npos)
      << failed.error().ToString();
  Query(app.get(), "ROLLBACK");
}

// A job inserted in the caller's transaction wakes producers when, and only if, it commits.
TEST_F(PostgresDriverTest, InsertInTheCallersTransactionNotifiesAtCommit) {
  ASSERT_NE(driver_, nullptr);
  auto first = driver_->WaitForChange(milliseconds(200));  // connects and listens
  ASSERT_TRUE(first.has_value()) << first.error().ToString();
  PgConnPtr app = Connect(url_);
  for (const bool commit : {false, true}) {
    auto exec = BeginOn(app.get());
    ASSERT_TRUE(exec.has_value()) << exec.error().ToString();
    auto n = (*exec)->JobInsertManyFast(OneJob());
    ASSERT_TRUE(n.has_value()) << n.error().ToString();
    auto before = driver_->WaitForChange(milliseconds(200));
    ASSERT_TRUE(before.has_value()) << before.error().ToString();
    EXPECT_FALSE(*before) << "notified before the caller's transaction ended";
    Query(app.get(), commit ? "COMMIT" : "ROLLBACK");
    auto after = driver_->WaitForChange(commit ? seconds(20) : milliseconds(300));
    ASSERT_TRUE(after.has_value()) << after.error().ToString();
    EXPECT_EQ(*after, commit) << (commit ? "no notification at commit" : "notified on rollback");
  }
}

// Pooled claims and outcomes skip the WAL flush for their own transaction only: in a caller's
// transaction they must leave its durability alone.
TEST_F(PostgresDriverTest, ClaimsAndOutcomesInTheCallersTransactionKeepItsSynchronousCommit) {
  ASSERT_NE(driver_, nullptr);
  ASSERT_TRUE(driver_->executor().JobInsertMany(OneJob()).has_value());
  PgConnPtr app = Connect(url_);
  auto exec = BeginOn(app.get());
  ASSERT_TRUE(exec.has_value()) << exec.error().ToString();
  auto fetched = (*exec)->JobGetAvailable({"q", 1, "c", kT0});
  ASSERT_TRUE(fetched.has_value() && fetched->size() == 1u);
  JobSetStateIfRunningManyParams done;
  done.jobs.push_back({.id = (*fetched)[0].id,
                       .attempt = (*fetched)[0].attempt,
                       .state = JobState::kCompleted,
                       .at = kT0});
  auto n = (*exec)->JobSetStateIfRunningMany(done);
  ASSERT_TRUE(n.has_value()) << n.error().ToString();
  EXPECT_EQ(*n, 1);
  EXPECT_EQ(Query(app.get(), "SHOW synchronous_commit"), "on");
  Query(app.get(), "COMMIT");
}

// With synchronous_state_commits the pooled claim and outcome statements are the plain ones; both
// variants work the same job through.
TEST_F(PostgresDriverTest, ClaimAndOutcomeWorkWithAndWithoutWaitingForTheFlush) {
  for (const bool synchronous : {false, true}) {
    DriverOptions options;
    options.postgres.synchronous_state_commits = synchronous;
    auto d = Driver::Open(url_, options);
    ASSERT_TRUE(d.has_value()) << d.error().ToString();
    Executor& ex = (*d)->executor();
    auto rows = ex.JobInsertMany(OneJob());
    ASSERT_TRUE(rows.has_value()) << rows.error().ToString();
    auto fetched = ex.JobGetAvailable({"q", 5, "c", kT0});
    ASSERT_TRUE(fetched.has_value()) << fetched.error().ToString();
    ASSERT_EQ(fetched->size(), 1u);
    EXPECT_EQ((*fetched)[0].state, JobState::kRunning);
    JobSetStateIfRunningManyParams done;
    done.jobs.push_back({.id = (*fetched)[0].id,
                         .attempt = (*fetched)[0].attempt,
                         .state = JobState::kCompleted,
                         .at = kT0});
    auto n = ex.JobSetStateIfRunningMany(done);
    ASSERT_TRUE(n.has_value()) << n.error().ToString();
    EXPECT_EQ(*n, 1);
    auto got = ex.JobGetByID((*fetched)[0].id);
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(got->state, JobState::kCompleted) << "synchronous=" << synchronous;
  }
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
  EXPECT_EQ((*r1)[0].job.scheduled_at, t1);
  EXPECT_EQ((*r2)[0].job.scheduled_at, t2);
  EXPECT_EQ((*r3)[0].job.scheduled_at, t3);
  auto got3 = driver_->executor().JobGetByID((*r3)[0].job.id);
  ASSERT_TRUE(got3.has_value());
  EXPECT_EQ(got3->scheduled_at, t3);

  PgConnPtr app = Connect(url_);
  EXPECT_EQ(Query(app.get(), fmt::format("SELECT to_char(scheduled_at AT TIME ZONE 'UTC', "
                                         "'YYYY-MM-DD HH24:MI:SS.US') FROM spool_job WHERE id = {}",
                                         (*r1)[0].job.id)),
            "2027-01-15 08:00:00.123457");
  EXPECT_EQ(Query(app.get(), fmt::format("SELECT to_char(scheduled_at AT TIME ZONE 'UTC', "
                                         "'YYYY-MM-DD HH24:MI:SS.US') FROM spool_job WHERE id = {}",
                                         (*r2)[0].job.id)),
            "1969-12-30 23:59:59.999999");
}

// Bulk inserts go by binary COPY: times exact to the microsecond on both sides of PostgreSQL's
// epoch (2000) and of 2^53; a batch holding a time past year 9999 takes the INSERT instead and is
// stored as exactly.
TEST_F(PostgresDriverTest, BulkInsertsStoreTimesExactlyToTheMicrosecond) {
  ASSERT_NE(driver_, nullptr);
  const std::vector<TimePoint> times = {
      TimePoint{std::chrono::microseconds(1'800'000'000'123'457)},    // 2027-01-15T08:00:00.123457Z
      TimePoint{std::chrono::microseconds(946'684'799'999'999)},      // just before 2000
      TimePoint{std::chrono::microseconds(-86'400'000'001)},          // before 1970
      TimePoint{std::chrono::microseconds(253'402'300'799'999'999)},  // 9999-12-31T23:59:59.999999Z
  };
  const TimePoint far{std::chrono::microseconds(316'224'000'000'000'001)};  // year 11990
  for (const bool with_far : {false, true}) {
    SCOPED_TRACE(with_far);
    PgConnPtr app = Connect(url_);
    Query(app.get(), "DELETE FROM spool_job");
    JobInsertManyParams p = OneJob();
    p.jobs.clear();
    for (TimePoint t : times) p.jobs.push_back(OneJob("q", t).jobs[0]);
    if (with_far) p.jobs.push_back(OneJob("q", far).jobs[0]);
    p.now = times[1];
    auto n = driver_->executor().JobInsertManyFast(p);
    ASSERT_TRUE(n.has_value()) << n.error().ToString();
    ASSERT_EQ(*n, static_cast<int64_t>(p.jobs.size()));
    auto rows = driver_->executor().JobList({.limit = 10});
    ASSERT_TRUE(rows.has_value()) << rows.error().ToString();
    ASSERT_EQ(rows->size(), p.jobs.size());
    for (size_t i = 0; i < rows->size(); ++i) {
      EXPECT_EQ((*rows)[i].scheduled_at, p.jobs[i].scheduled_at) << i;
      EXPECT_EQ((*rows)[i].created_at, times[1]) << i;
    }
    EXPECT_EQ(Query(app.get(),
                    "SELECT string_agg(to_char(scheduled_at AT TIME ZONE 'UTC', "
                    "'YYYY-MM-DD HH24:MI:SS.US'), ',' ORDER BY id) FROM spool_job "
                    "WHERE scheduled_at < '10000-01-01'"),
              "2027-01-15 08:00:00.123457,1999-12-31 23:59:59.999999,1969-12-30 23:59:59.999999,"
              "9999-12-31 23:59:59.999999");
  }
}

TEST_F(PostgresDriverTest, ArraysAndJsonReadBackAsWritten) {
  ASSERT_NE(driver_, nullptr);
  JobInsertManyParams p = OneJob();
  p.jobs[0].tags = {"", "a\"b", "c\\d", "{e,f}", "NULL", "\u00e9t\u00e9"};
  p.jobs[0].args = R"({"nested":{"list":[1,2.5,"x"]},"s":"tab\there"})";
  p.jobs[0].metadata = R"({"k":null})";
  auto rows = driver_->executor().JobInsertMany(p);
  ASSERT_TRUE(rows.has_value()) << rows.error().ToString();
  auto claimed = driver_->executor().JobGetAvailable(
      {.queue = "q", .max = 1, .client_id = "client \"one\"", .now = kT0});
  ASSERT_TRUE(claimed.has_value() && claimed->size() == 1u);
  for (const JobRow& row : {(*rows)[0].job, claimed->front()}) {
    EXPECT_EQ(row.tags, p.jobs[0].tags);
    EXPECT_EQ(row.args, p.jobs[0].args);
    EXPECT_EQ(row.metadata, p.jobs[0].metadata);
  }
  EXPECT_EQ(claimed->front().attempted_by, std::vector<std::string>{"client \"one\""});
  EXPECT_EQ(claimed->front().attempted_at, kT0);
}

TEST_F(PostgresDriverTest, ColumnOfAnotherTypeIsReportedNotMisread) {
  ASSERT_NE(driver_, nullptr);
  auto rows = driver_->executor().JobInsertMany(OneJob());
  ASSERT_TRUE(rows.has_value());
  PgConnPtr app = Connect(url_);
  Query(app.get(), "ALTER TABLE spool_job ALTER COLUMN priority TYPE int4");
  auto got = driver_->executor().JobGetByID((*rows)[0].job.id);
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(got.error().code(), Status::Code::kInternal);
  EXPECT_NE(got.error().message().find("column priority"), std::string::npos)
      << got.error().ToString();

  // A claim of such rows fails too, and gives them back, due later, instead of leaving them
  // running.
  auto claimed =
      driver_->executor().JobGetAvailable({.queue = "q", .max = 10, .client_id = "c", .now = kT0});
  ASSERT_FALSE(claimed.has_value());
  EXPECT_NE(claimed.error().message().find("column priority"), std::string::npos);
  EXPECT_NE(claimed.error().message().find("repair the row with SQL or delete the job"),
            std::string::npos)
      << claimed.error().ToString();
  EXPECT_EQ(Query(app.get(),
                  "SELECT s.name || ' ' || attempt || ' ' || (scheduled_at - "
                  "to_timestamp(1800000000))::text FROM spool_job JOIN spool_job_state s "
                  "USING (state)"),
            "scheduled 0 00:01:00");
}

// A row whose value the driver cannot represent (an infinite time) reads as an error naming it,
// and deleting it works: that is how such a row is got rid of.
TEST_F(PostgresDriverTest, DeleteRemovesARowThatDoesNotRead) {
  ASSERT_NE(driver_, nullptr);
  auto rows = driver_->executor().JobInsertMany(OneJob());
  ASSERT_TRUE(rows.has_value());
  const int64_t id = (*rows)[0].job.id;
  PgConnPtr app = Connect(url_);
  Query(app.get(), "UPDATE spool_job SET created_at = 'infinity' WHERE id = " + std::to_string(id));
  auto got = driver_->executor().JobGetByID(id);
  ASSERT_FALSE(got.has_value());
  EXPECT_NE(got.error().message().find("cannot be read: column created_at"), std::string::npos)
      << got.error().ToString();
  // A listing shows it by its id alone, and the rows around it in full.
  auto more = driver_->executor().JobInsertMany(OneJob("q2"));
  ASSERT_TRUE(more.has_value()) << more.error().ToString();
  auto listed = driver_->executor().JobList({});
  ASSERT_TRUE(listed.has_value()) << listed.error().ToString();
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ((*listed)[0].id, id);
  EXPECT_TRUE((*listed)[0].kind.empty());
  EXPECT_EQ((*listed)[1].id, (*more)[0].job.id);
  EXPECT_EQ((*listed)[1].queue, "q2");
  ASSERT_TRUE(driver_->executor().JobDelete((*more)[0].job.id).has_value());

  auto deleted = driver_->executor().JobDelete(id);
  ASSERT_TRUE(deleted.has_value()) << deleted.error().ToString();
  EXPECT_EQ(deleted->id, id);
  EXPECT_TRUE(deleted->kind.empty());
  EXPECT_EQ(Query(app.get(), "SELECT count(*) FROM spool_job"), "0");
}

TEST(PostgresBinaryTest, DecodesTheServersFormatsAndRejectsTheRest) {
  auto bytes = [](std::initializer_list<int> b) {
    std::string s;
    for (int c : b) s += static_cast<char>(c);
    return s;
  };
  EXPECT_EQ(*pg::BinaryInt({bytes({0xff, 0xfe}), "c"}), -2);
  EXPECT_EQ(*pg::BinaryInt({bytes({0, 0, 1, 0}), "c"}), 256);
  EXPECT_EQ(*pg::BinaryInt({bytes({0x80, 0, 0, 0, 0, 0, 0, 0}), "c"}), INT64_MIN);
  EXPECT_FALSE(pg::BinaryInt({bytes({1, 2, 3}), "c"}).has_value());

  // 2000-01-01T00:00:00.000001Z and one microsecond before PostgreSQL's epoch.
  EXPECT_EQ(*pg::BinaryTimestamp({bytes({0, 0, 0, 0, 0, 0, 0, 1}), "t"}),
            TimePoint(std::chrono::microseconds(946'684'800'000'001)));
  EXPECT_EQ(*pg::BinaryTimestamp({bytes({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}), "t"}),
            TimePoint(std::chrono::microseconds(946'684'799'999'999)));
  auto infinite =
      pg::BinaryTimestamp({bytes({0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}), "t"});
  ASSERT_FALSE(infinite.has_value());
  EXPECT_NE(infinite.error().message().find("column t"), std::string::npos);

  // text[]: ndim, has-nulls flag, element type, then (size, lower bound) and (length, bytes).
  const std::string header = bytes({0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 25, 0, 0, 0, 2, 0, 0, 0, 1});
  EXPECT_EQ(*pg::BinaryTextArray({header + bytes({0, 0, 0, 1, 'a', 0, 0, 0, 0}), "a"}),
            (std::vector<std::string>{"a", ""}));
  EXPECT_TRUE(pg::BinaryTextArray({bytes({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 25}), "a"})->empty());
  EXPECT_FALSE(pg::BinaryTextArray({header + bytes({0, 0, 0, 1, 'a'}), "a"}).has_value());
  EXPECT_FALSE(pg::BinaryTextArray({header + bytes({0, 0, 0, 1, 'a', 0xff, 0xff, 0xff, 0xff}), "a"})
                   .has_value());  // a NULL element
  EXPECT_FALSE(pg::BinaryTextArray({header + bytes({0, 0, 0, 1, 'a', 0, 0, 0, 0, 'x'}), "a"})
                   .has_value());  // bytes after the elements
  EXPECT_FALSE(pg::BinaryTextArray({bytes({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 23}), "a"})
                   .has_value());  // int4[]

  EXPECT_EQ(*pg::BinaryJsonb({bytes({1, '{', '}'}), "j"}), "{}");
  EXPECT_FALSE(pg::BinaryJsonb({bytes({2, '{', '}'}), "j"}).has_value());
  EXPECT_FALSE(pg::BinaryJsonb({"", "j"}).has_value());
}

// Each encoded value is its length then the bytes the decoders above read back.
TEST(PostgresBinaryTest, EncodesCopyValuesTheDecodersReadBack) {
  const auto value = [](std::string encoded) -> std::string {
    EXPECT_GE(encoded.size(), 4u);
    const std::string body = encoded.substr(4);
    EXPECT_EQ(*pg::BinaryInt({encoded.substr(0, 4), "length"}), static_cast<int64_t>(body.size()));
    return body;
  };
  std::string out;
  pg::AppendCopyHeader(out);
  EXPECT_EQ(out, std::string("PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0", 19));
  out.clear();
  pg::AppendCopyRow(out, 10);
  EXPECT_EQ(out, std::string("\0\n", 2));
  out.clear();
  pg::AppendCopyTrailer(out);
  EXPECT_EQ(out, "\xff\xff");

  for (const int16_t v : {int16_t{1}, int16_t{-2}, int16_t{32'767}}) {
    out.clear();
    pg::AppendCopyInt2(out, v);
    EXPECT_EQ(*pg::BinaryInt({value(out), "i"}), v);
  }
  for (const int64_t us : {int64_t{946'684'800'000'001}, int64_t{946'684'799'999'999},
                           int64_t{-86'400'000'001}, int64_t{253'402'300'799'999'999}}) {
    out.clear();
    pg::AppendCopyTimestamp(out, TimePoint(std::chrono::microseconds(us)));
    EXPECT_EQ(*pg::BinaryTimestamp({value(out), "t"}), TimePoint(std::chrono::microseconds(us)));
  }
  for (const std::vector<std::string>& tags :
       {std::vector<std::string>{}, std::vector<std::string>{"a", "", "tab\tand \"quote\""}}) {
    out.clear();
    pg::AppendCopyTextArray(out, tags);
    EXPECT_EQ(*pg::BinaryTextArray({value(out), "tags"}), tags);
  }
  out.clear();
  pg::AppendCopyJsonb(out, R"({"a":1})");
  EXPECT_EQ(*pg::BinaryJsonb({value(out), "j"}), R"({"a":1})");
  out.clear();
  pg::AppendCopyText(out, "kind");
  EXPECT_EQ(value(out), "kind");
}

TEST_F(PostgresDriverTest, LockTimeoutIsRetryableWithItsSqlState) {
  ASSERT_NE(driver_, nullptr);
  auto rows = driver_->executor().JobInsertMany(OneJob());
  ASSERT_TRUE(rows.has_value());
  const int64_t id = (*rows)[0].job.id;
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
  done.jobs.push_back({.id = id, .attempt = 0, .state = JobState::kCompleted, .at = kT0});
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

// ---- races between processes and the control channel -------------------------------------------

JobInsertManyParams UniqueJob(const std::string& key) {
  JobInsertManyParams p = OneJob();
  p.jobs[0].unique_key = key;
  p.jobs[0].unique_states = 0x8f;  // available, scheduled, running, retryable, pending
  return p;
}

TEST_F(PostgresDriverTest, ConcurrentUniqueInsertsNeverErrorNorInsertTwice) {
  ASSERT_NE(driver_, nullptr);
  std::unique_ptr<Driver> other = OpenAt(url_);  // another process
  ASSERT_NE(other, nullptr);
  constexpr int kKeys = 40;
  constexpr int kThreadsPerDriver = 4;
  std::atomic<int> errors{0};
  std::mutex mu;
  std::map<std::string, std::set<int64_t>> ids_by_key;  // guarded by mu
  std::map<std::string, int> fresh_by_key;              // guarded by mu
  std::vector<std::thread> threads;
  for (Driver* d : {driver_.get(), other.get()}) {
    for (int t = 0; t < kThreadsPerDriver; ++t) {
      threads.emplace_back([&, d] {
        for (int k = 0; k < kKeys; ++k) {
          const std::string key = fmt::format("key-{:02}", k);
          auto r = d->executor().JobInsertMany(UniqueJob(key));
          if (!r || r->size() != 1u) {
            if (!r) ADD_FAILURE() << r.error().ToString();
            ++errors;
            continue;
          }
          std::lock_guard lock(mu);
          ids_by_key[key].insert((*r)[0].job.id);
          if (!(*r)[0].duplicate) ++fresh_by_key[key];
        }
      });
    }
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  ASSERT_EQ(ids_by_key.size(), static_cast<size_t>(kKeys));
  for (const auto& [key, ids] : ids_by_key) {
    EXPECT_EQ(ids.size(), 1u) << key << " was inserted as several rows";
    EXPECT_EQ(fresh_by_key[key], 1) << key;
  }
  auto counts = driver_->executor().JobCountByState("q");
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ((*counts)[JobState::kAvailable], kKeys);
}

TEST_F(PostgresDriverTest, UniqueInsertWaitsForAConcurrentTransactionHoldingTheKey) {
  ASSERT_NE(driver_, nullptr);
  PgConnPtr app = Connect(url_);
  auto in_tx = BeginOn(app.get());
  ASSERT_TRUE(in_tx.has_value());
  auto first = (*in_tx)->JobInsertMany(UniqueJob("held"));
  ASSERT_TRUE(first.has_value()) << first.error().ToString();
  ASSERT_FALSE((*first)[0].duplicate);
  // Inside the same transaction the key is already taken.
  auto again = (*in_tx)->JobInsertMany(UniqueJob("held"));
  ASSERT_TRUE(again.has_value()) << again.error().ToString();
  EXPECT_TRUE((*again)[0].duplicate);
  EXPECT_EQ((*again)[0].job.id, (*first)[0].job.id);

  // Another process blocks on the uncommitted key, then sees whichever outcome the holder had.
  auto waiter = std::async(std::launch::async,
                           [&] { return driver_->executor().JobInsertMany(UniqueJob("held")); });
  PgConnPtr admin = Connect(*pgtest::ClusterUrl());
  const std::string app_name = url_.substr(url_.find("application_name=") + 17);
  const auto deadline = std::chrono::steady_clock::now() + seconds(20);
  while (Query(admin.get(), fmt::format("SELECT count(*) FROM pg_stat_activity WHERE "
                                        "application_name = '{}' AND wait_event_type = 'Lock'",
                                        app_name)) != "1") {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the second insert never waited";
    ASSERT_EQ(waiter.wait_for(milliseconds(0)), std::future_status::timeout)
        << "the second insert finished while the key was held";
  }
  Query(app.get(), "ROLLBACK");
  auto after_rollback = waiter.get();
  ASSERT_TRUE(after_rollback.has_value()) << after_rollback.error().ToString();
  EXPECT_FALSE((*after_rollback)[0].duplicate) << "the holder rolled back: the key is free";
}

// Several `migration up`s on a database without spool's tables, as deploys of several nodes
// run them: each step is applied once and every run succeeds. Each driver has read the schema
// version first (as Client::Open and the command do), which left its session a cached "no
// spool_migration" that a lock taken inside the transaction did not refresh.
TEST_F(PostgresDriverTest, RacingMigrationsOnAFreshSchemaApplyEachStepOnce) {
  ASSERT_NE(driver_, nullptr);
  std::vector<std::unique_ptr<Driver>> drivers;
  for (int i = 0; i < 4; ++i) {
    auto d = Driver::Open(url_, DriverOptions{});
    ASSERT_TRUE(d.has_value()) << d.error().ToString();
    drivers.push_back(std::move(*d));
  }
  const int latest = LatestVersion(*driver_);
  for (int round = 0; round < 3; ++round) {
    ASSERT_TRUE(driver_->MigrateDown(0).ok());
    for (auto& d : drivers) {
      auto v = d->SchemaVersion();
      ASSERT_TRUE(v.has_value()) << v.error().ToString();
      ASSERT_EQ(*v, 0);
    }
    std::vector<std::thread> threads;
    std::vector<Status> results(drivers.size());
    for (size_t i = 0; i < drivers.size(); ++i) {
      threads.emplace_back([&, i] { results[i] = drivers[i]->MigrateUp(latest); });
    }
    for (auto& th : threads) th.join();
    for (const Status& st : results)
      EXPECT_TRUE(st.ok()) << "round " << round << ": " << st.ToString();
    auto v = driver_->SchemaVersion();
    ASSERT_TRUE(v.has_value());
    EXPECT_EQ(*v, latest);
  }
}

TEST_F(PostgresDriverTest, RacingElectorsElectExactlyOneLeader) {
  ASSERT_NE(driver_, nullptr);
  std::unique_ptr<Driver> other = OpenAt(url_);
  ASSERT_NE(other, nullptr);
  for (int round = 0; round < 5; ++round) {
    const TimePoint now = kT0 + seconds(100 * round);  // every round the old lease has expired
    std::atomic<int> elected{0};
    std::atomic<int> errors{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      Driver* d = t % 2 == 0 ? driver_.get() : other.get();
      threads.emplace_back([&, d, t] {
        auto r = d->executor().LeaderAttemptElect(
            {fmt::format("leader-{}-{}", round, t), now, seconds(15)});
        if (!r) {
          ADD_FAILURE() << r.error().ToString();
          ++errors;
        } else if (*r) {
          ++elected;
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(errors.load(), 0);
    EXPECT_EQ(elected.load(), 1) << "round " << round;
  }
}

TEST_F(PostgresDriverTest, PausingAndCancellingARunningJobWakeOtherProcesses) {
  ASSERT_NE(driver_, nullptr);
  std::unique_ptr<Driver> other = OpenAt(url_);
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(other->executor().QueuePause("elsewhere", kT0).has_value());
  auto woke = driver_->WaitForChange(seconds(20));
  ASSERT_TRUE(woke.has_value()) << woke.error().ToString();
  EXPECT_TRUE(*woke);

  auto rows = driver_->executor().JobInsertMany(OneJob());
  ASSERT_TRUE(rows.has_value());
  auto running = driver_->executor().JobGetAvailable({"q", 1, "c", kT0});
  ASSERT_TRUE(running.has_value() && running->size() == 1u);
  // Drain the insert-free state: nothing pending now.
  auto idle = driver_->WaitForChange(milliseconds(50));
  ASSERT_TRUE(idle.has_value());
  EXPECT_FALSE(*idle);

  auto cancelled = other->executor().JobCancel({(*rows)[0].job.id, kT0 + seconds(1)});
  ASSERT_TRUE(cancelled.has_value()) << cancelled.error().ToString();
  EXPECT_EQ(cancelled->state, JobState::kRunning);
  auto woke_by_cancel = driver_->WaitForChange(seconds(20));
  ASSERT_TRUE(woke_by_cancel.has_value()) << woke_by_cancel.error().ToString();
  EXPECT_TRUE(*woke_by_cancel);
  auto requested = driver_->executor().JobGetCancelRequested({(*rows)[0].job.id, 999999});
  ASSERT_TRUE(requested.has_value());
  EXPECT_EQ(*requested, std::vector<int64_t>{(*rows)[0].job.id});
}

TEST_F(PostgresDriverTest, FetchOfAPausedQueueIsOneStatementUsingThePartialIndex) {
  ASSERT_NE(driver_, nullptr);
  PgConnPtr app = Connect(url_);
  Query(app.get(), "SET enable_seqscan = off");
  for (const char* mode : {"force_custom_plan", "force_generic_plan"}) {
    Query(app.get(), fmt::format("SET plan_cache_mode = {}", mode));
    Query(app.get(), "DEALLOCATE ALL");
    Query(app.get(), "PREPARE claim AS " + PostgresFetchSql(false));
    Query(app.get(), "PREPARE claim_after AS " + PostgresFetchSql(true));
    for (const char* execute : {"EXECUTE claim('q', 1800000000000000, 10, 'c')",
                                "EXECUTE claim_after('q', 1800000000000000, 10, 'c', 1, 0, 0)"}) {
      pg::PgResult plan(PQexec(app.get(), fmt::format("EXPLAIN {}", execute).c_str()));
      ASSERT_EQ(PQresultStatus(plan.get()), PGRES_TUPLES_OK) << PQerrorMessage(app.get());
      std::string text;
      for (int i = 0; i < PQntuples(plan.get()); ++i)
        text += std::string(PQgetvalue(plan.get(), i, 0)) + "\n";
      EXPECT_NE(text.find("Index Scan using spool_job_fetch_idx"), std::string::npos)
          << mode << "\n"
          << text;
      EXPECT_EQ(text.find("Sort"), std::string::npos) << "the index gives the order: " << text;
      EXPECT_NE(text.find("One-Time Filter"), std::string::npos)
          << "the pause check runs once per fetch, not per row: " << text;
    }
  }

  ASSERT_TRUE(driver_->executor().JobInsertMany(OneJob()).has_value());
  ASSERT_TRUE(driver_->executor().QueuePause("q", kT0).has_value());
  auto none = driver_->executor().JobGetAvailable({"q", 10, "c", kT0});
  ASSERT_TRUE(none.has_value());
  EXPECT_TRUE(none->empty());
  ASSERT_TRUE(driver_->executor().QueueResume("q", kT0).has_value());
  auto one = driver_->executor().JobGetAvailable({"q", 10, "c", kT0});
  ASSERT_TRUE(one.has_value());
  EXPECT_EQ(one->size(), 1u);
}

// Version 2 keys the fetch index by a hash of the queue name; version 3 turns the state into its
// code. Rows written under version 1 keep their states (and the unique index its hold) up to the
// latest version and back down, and each queue's jobs are fetched alone and in order.
TEST_F(PostgresDriverTest, JobsKeepTheirStatesQueuesAndKeysAcrossTheSchemaVersions) {
  ASSERT_NE(driver_, nullptr);
  const int latest = spool::internal::LatestVersion(*driver_);
  ASSERT_GE(latest, 3);
  ASSERT_TRUE(driver_->MigrateDown(1).ok());
  PgConnPtr app = Connect(url_);
  // ids 1-5: available in queues a, b and ab; 6-12: one job in each other state; 13: a unique
  // key held while available.
  Query(app.get(),
        "INSERT INTO spool_job (kind, queue, state, priority, scheduled_at, attempted_at, "
        "finalized_at, unique_key, unique_states) VALUES "
        "('k', 'a', 'available', 1, '2027-01-01 00:00:02Z', NULL, NULL, NULL, NULL), "
        "('k', 'b', 'available', 1, '2027-01-01 00:00:00Z', NULL, NULL, NULL, NULL), "
        "('k', 'a', 'available', 1, '2027-01-01 00:00:01Z', NULL, NULL, NULL, NULL), "
        "('k', 'ab', 'available', 1, '2027-01-01 00:00:00Z', NULL, NULL, NULL, NULL), "
        "('k', 'a', 'available', 2, '2027-01-01 00:00:00Z', NULL, NULL, NULL, NULL), "
        "('k', 'z', 'scheduled', 1, '2027-01-01', NULL, NULL, NULL, NULL), "
        "('k', 'z', 'running', 1, '2027-01-01', '2027-01-01', NULL, NULL, NULL), "
        "('k', 'z', 'retryable', 1, '2027-01-01', NULL, NULL, NULL, NULL), "
        "('k', 'z', 'completed', 1, '2027-01-01', NULL, '2027-01-01', NULL, NULL), "
        "('k', 'z', 'cancelled', 1, '2027-01-01', NULL, '2027-01-01', NULL, NULL), "
        "('k', 'z', 'discarded', 1, '2027-01-01', NULL, '2027-01-01', NULL, NULL), "
        "('k', 'z', 'pending', 1, '2027-01-01', NULL, NULL, NULL, NULL), "
        "('k', 'z', 'available', 1, '2030-01-01', NULL, NULL, '\\x6b6579', 1)");
  std::vector<JobState> states(5, JobState::kAvailable);
  for (JobState s :
       {JobState::kScheduled, JobState::kRunning, JobState::kRetryable, JobState::kCompleted,
        JobState::kCancelled, JobState::kDiscarded, JobState::kPending, JobState::kAvailable}) {
    states.push_back(s);
  }
  const auto names = [&] {
    std::vector<std::string> out;
    for (JobState s : states) out.emplace_back(JobStateName(s));
    return fmt::format("{}", fmt::join(out, ","));
  };
  const auto check = [&](int version) {
    SCOPED_TRACE(version);
    if (version == 1) {
      EXPECT_EQ(Query(app.get(), "SELECT string_agg(state, ',' ORDER BY id) FROM spool_job"),
                names());
    } else {
      auto rows = driver_->executor().JobList({.limit = 100});
      ASSERT_TRUE(rows.has_value()) << rows.error().ToString();
      ASSERT_EQ(rows->size(), states.size());
      for (size_t i = 0; i < rows->size(); ++i) EXPECT_EQ((*rows)[i].state, states[i]) << i;
    }
    if (version >= 3) {
      EXPECT_EQ(Query(app.get(),
                      "SELECT string_agg(s.name, ',' ORDER BY j.id) FROM spool_job j "
                      "JOIN spool_job_state s USING (state)"),
                names());
    }
    // The key is still held: a second available row with it is refused, whatever the version.
    pg::PgResult dup(PQexec(app.get(),
                            "INSERT INTO spool_job (kind, unique_key, unique_states) "
                            "VALUES ('k', '\\x6b6579', 1)"));
    EXPECT_EQ(PQresultStatus(dup.get()), PGRES_FATAL_ERROR);
    EXPECT_NE(std::string(PQerrorMessage(app.get())).find("spool_job_unique_idx"),
              std::string::npos)
        << PQerrorMessage(app.get());
  };
  check(1);
  ASSERT_TRUE(driver_->MigrateUp(latest).ok());
  check(latest);

  std::map<std::string, std::vector<int64_t>> claimed;
  for (const std::string queue : {"a", "b", "ab", "c"}) {
    auto rows =
        driver_->executor().JobGetAvailable({queue, 10, "c", kT0 + std::chrono::hours(24 * 400)});
    ASSERT_TRUE(rows.has_value()) << rows.error().ToString();
    for (const JobRow& r : *rows) {
      EXPECT_EQ(r.queue, queue);
      claimed[queue].push_back(r.id);
      states[static_cast<size_t>(r.id - 1)] = JobState::kRunning;
    }
  }
  // Priority first, then scheduled_at.
  EXPECT_EQ(claimed["a"], (std::vector<int64_t>{3, 1, 5}));
  EXPECT_EQ(claimed["b"], std::vector<int64_t>{2});
  EXPECT_EQ(claimed["ab"], std::vector<int64_t>{4});
  EXPECT_FALSE(claimed.contains("c"));

  for (int v = latest - 1; v >= 1; --v) {
    ASSERT_TRUE(driver_->MigrateDown(v).ok()) << v;
    if (v == 1 || v >= 3) check(v);
  }
  ASSERT_TRUE(driver_->MigrateUp(latest).ok());
  check(latest);
}

// Outcome writes and cancel checks look jobs up by id. Given statistics taken while few jobs ran,
// PostgreSQL used to scan the whole partial index of running jobs for them instead (every running
// job, and a dead entry for each one completed since the last vacuum): 12-14 s per outcome write
// on a large table. Neither custom nor generic plans may use that index for them.
TEST_F(PostgresDriverTest, LookupsByIdNeverScanTheRunningIndex) {
  ASSERT_NE(driver_, nullptr);
  JobInsertManyParams many = OneJob();
  many.jobs.resize(3'000, many.jobs.front());
  ASSERT_TRUE(driver_->executor().JobInsertManyFast(many).has_value());
  PgConnPtr app = Connect(url_);
  Query(app.get(), "ANALYZE spool_job");  // no job running yet
  auto running = driver_->executor().JobGetAvailable({"q", 2'000, "c", kT0});
  ASSERT_TRUE(running.has_value()) << running.error().ToString();
  ASSERT_EQ(running->size(), 2'000u);
  std::vector<std::string> ids, states, ats, errors, attempts, snoozes, cancel_errors, claims;
  for (const JobRow& row : *running) {
    ids.push_back(std::to_string(row.id));
    states.push_back(std::to_string(static_cast<int>(JobState::kCompleted)));
    ats.emplace_back("1800000000000000");
    errors.emplace_back("NULL");
    attempts.emplace_back("1");
    snoozes.emplace_back("f");
    cancel_errors.emplace_back("NULL");
    claims.push_back(std::to_string(row.attempted_at.value_or(kT0).time_since_epoch().count()));
  }
  const auto array = [](const std::vector<std::string>& v) {
    return fmt::format("'{{{}}}'", fmt::join(v, ","));
  };
  const std::string set_state_args = fmt::format(
      "{}, {}, {}, {}, {}, {}, {}, {}", array(ids), array(states), array(ats), array(errors),
      array(attempts), array(snoozes), array(cancel_errors), array(claims));
  const std::string complete_args =
      fmt::format("{}, {}, {}, {}", array(ids), array(ats), array(attempts), array(claims));
  for (const char* mode : {"force_custom_plan", "force_generic_plan"}) {
    Query(app.get(), fmt::format("SET plan_cache_mode = {}", mode));
    Query(app.get(), "DEALLOCATE ALL");
    Query(app.get(), "PREPARE set_state AS " + PostgresSetStateSql());
    Query(app.get(), "PREPARE complete AS " + PostgresCompleteSql());
    Query(app.get(), "PREPARE cancel_requested AS " + PostgresCancelRequestedSql());
    for (const std::string& execute :
         {"EXECUTE set_state(" + set_state_args + ")", "EXECUTE complete(" + complete_args + ")",
          "EXECUTE cancel_requested(" + array(ids) + ")"}) {
      pg::PgResult plan(PQexec(app.get(), ("EXPLAIN " + execute).c_str()));
      ASSERT_EQ(PQresultStatus(plan.get()), PGRES_TUPLES_OK) << PQerrorMessage(app.get());
      std::string nodes;  // the plan without its conditions, which list every id
      for (int i = 0; i < PQntuples(plan.get()); ++i) {
        const std::string line = PQgetvalue(plan.get(), i, 0);
        if (line.find("Cond:") == std::string::npos && line.find("Filter:") == std::string::npos) {
          nodes += line + "\n";
        }
      }
      EXPECT_EQ(nodes.find("spool_job_running_idx"), std::string::npos)
          << mode << ", " << execute.substr(0, execute.find('(')) << ":\n"
          << nodes;
    }
  }
}

// The claim, the scheduler and the cleaner pick jobs by a locking subquery with a LIMIT. Joined to
// the table, the subquery's rows (a tenth of the matches, as a generic plan guesses a LIMIT it
// cannot see) were matched by a hash join over a sequential scan of the whole table, or a merge
// join along the primary key from its first id: 272 ms for a claim of 94 jobs behind a million
// finished ones. Whatever the statistics and the plan cache mode, each must reach its jobs by
// their row addresses.
TEST_F(PostgresDriverTest, PicksByLockingSubqueryNeverScanTheTable) {
  ASSERT_NE(driver_, nullptr);
  JobInsertManyParams many = OneJob();
  many.jobs.resize(3'000, many.jobs.front());
  ASSERT_TRUE(driver_->executor().JobInsertManyFast(many).has_value());
  auto running = driver_->executor().JobGetAvailable({"q", 1'000, "c", kT0});
  ASSERT_TRUE(running.has_value()) << running.error().ToString();
  JobSetStateIfRunningManyParams done;
  for (size_t i = 0; i < running->size(); ++i) {
    done.jobs.push_back({.id = (*running)[i].id,
                         .state = i % 2 == 0 ? JobState::kCompleted : JobState::kRetryable,
                         .at = kT0,
                         .error = {}});
  }
  ASSERT_TRUE(driver_->executor().JobSetStateIfRunningMany(done).has_value());
  PgConnPtr app = Connect(url_);
  Query(app.get(), "ANALYZE spool_job");  // a backlog: most jobs available
  const std::string now = "1800000000000000";
  for (const char* mode : {"force_custom_plan", "force_generic_plan"}) {
    Query(app.get(), fmt::format("SET plan_cache_mode = {}", mode));
    Query(app.get(), "DEALLOCATE ALL");
    Query(app.get(), "PREPARE claim AS " + PostgresFetchSql(false));
    Query(app.get(), "PREPARE claim_after AS " + PostgresFetchSql(true));
    Query(app.get(), "PREPARE schedule AS " + PostgresScheduleSql());
    Query(app.get(), "PREPARE clean AS " + PostgresDeleteFinalizedSql());
    for (const std::string& execute :
         {"EXECUTE claim('q', " + now + ", 94, 'c')",
          "EXECUTE claim_after('q', " + now + ", 94, 'c', 1, 0, 0)",
          "EXECUTE schedule(" + now + ", 10000, 'spool_insert')",
          "EXECUTE clean(" + std::to_string(static_cast<int>(JobState::kCompleted)) + ", " + now +
              ", 10000)"}) {
      pg::PgResult plan(PQexec(app.get(), ("EXPLAIN " + execute).c_str()));
      ASSERT_EQ(PQresultStatus(plan.get()), PGRES_TUPLES_OK) << PQerrorMessage(app.get());
      std::string text;
      for (int i = 0; i < PQntuples(plan.get()); ++i) {
        text += std::string(PQgetvalue(plan.get(), i, 0)) + "\n";
      }
      const std::string what = std::string(mode) + ", " + execute.substr(0, execute.find('('));
      EXPECT_EQ(text.find("Seq Scan"), std::string::npos) << what << ":\n" << text;
      EXPECT_EQ(text.find("Hash Join"), std::string::npos) << what << ":\n" << text;
      EXPECT_EQ(text.find("Merge Join"), std::string::npos) << what << ":\n" << text;
      // The picked rows read by their addresses.
      EXPECT_NE(text.find("Tid Scan on spool_job j"), std::string::npos) << what << ":\n" << text;
    }
  }
}

// A scheduler batch reads at most its size from each state's part of the schedule index. Over
// both states at once PostgreSQL sorted every due job for every batch (a million due: a
// sequential scan and an on-disk sort, 0.9-1.1 s a batch of 10,000).
TEST_F(PostgresDriverTest, ScheduleBatchReadsNoMoreDueJobsThanItMoves) {
  ASSERT_NE(driver_, nullptr);
  JobInsertManyParams many = OneJob("q", kT0 - seconds(60));
  many.jobs.front().state = JobState::kScheduled;
  many.jobs.resize(4'000, many.jobs.front());
  for (size_t i = 0; i < many.jobs.size(); ++i) {
    many.jobs[i].scheduled_at = kT0 - seconds(static_cast<int64_t>(1 + i % 500));
  }
  ASSERT_TRUE(driver_->executor().JobInsertManyFast(many).has_value());
  PgConnPtr app = Connect(url_);
  Query(app.get(), "UPDATE spool_job SET state = " SPOOL_RETRYABLE " WHERE id % 4 = 0");
  Query(app.get(), "ANALYZE spool_job");
  constexpr int kBatch = 100;
  const std::regex scan(R"((Seq|Index|Index Only|Bitmap Heap) Scan.*actual.* rows=(\d+) loops)");
  for (const char* mode : {"force_custom_plan", "force_generic_plan"}) {
    Query(app.get(), fmt::format("SET plan_cache_mode = {}", mode));
    Query(app.get(), "DEALLOCATE ALL");
    Query(app.get(), "PREPARE schedule AS " + PostgresScheduleSql());
    Query(app.get(), "BEGIN");
    pg::PgResult plan(
        PQexec(app.get(),
               fmt::format("EXPLAIN (ANALYZE) EXECUTE schedule(1800000000000000, {}, 'x')", kBatch)
                   .c_str()));
    ASSERT_EQ(PQresultStatus(plan.get()), PGRES_TUPLES_OK) << PQerrorMessage(app.get());
    Query(app.get(), "ROLLBACK");
    std::string text;
    int scans = 0;
    for (int i = 0; i < PQntuples(plan.get()); ++i) {
      const std::string line = PQgetvalue(plan.get(), i, 0);
      text += line + "\n";
      std::smatch m;
      if (std::regex_search(line, m, scan)) {
        ++scans;
        // Sorting by id within equal times reads on to the end of a group: a little past the
        // batch, never the 3,000 and 1,000 due.
        EXPECT_LE(std::stoi(m[2].str()), 2 * kBatch) << mode << ": " << line;
      }
    }
    EXPECT_EQ(scans, 2) << mode << ": one scan of each state expected:\n" << text;
    EXPECT_EQ(text.find("Seq Scan"), std::string::npos) << mode << ":\n" << text;
  }
  // And it moves the oldest due jobs of both states.
  auto moved = driver_->executor().JobSchedule({kT0, kBatch});
  ASSERT_TRUE(moved.has_value()) << moved.error().ToString();
  EXPECT_EQ(moved->count, kBatch);
  // Eight jobs a second, 500 to 1 s before kT0: the 100 oldest are due 488 s before or earlier.
  EXPECT_EQ(Query(app.get(), "SELECT count(*) FROM spool_job WHERE state = " SPOOL_AVAILABLE
                             " AND scheduled_at > to_timestamp(1800000000 - 488)"),
            "0");
}

}  // namespace
}  // namespace spool::internal

namespace spool::internal {
namespace {

struct PollArgs {
  static constexpr std::string_view kKind = "poll";
  int n = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(PollArgs, n)
};

class PollWorker final : public Worker<PollArgs> {
 public:
  explicit PollWorker(std::promise<void>* done) : done_(done) {}
  Outcome Work(JobContext&, const PollArgs&) override {
    done_->set_value();
    return Outcome::Done();
  }

 private:
  std::promise<void>* done_;
};

// Behind PgBouncer in transaction mode LISTEN cannot work: a poll-only driver never listens, so
// WaitForChange only times out or is interrupted, and a poll-only client still finds other
// processes' jobs through its poll interval.
TEST(PostgresPollOnlyTest, NeverListensAndStillFindsOtherProcessesJobs) {
  SPOOL_REQUIRE_PG_CLUSTER();
  auto url = pgtest::PostgresTestDb::Instance().NewSchemaUrl();
  ASSERT_TRUE(url.has_value()) << url.error().ToString();
  ASSERT_TRUE(MigrateUp(*url).ok());
  DriverOptions poll_only;
  poll_only.listen = false;
  auto quiet = Driver::Open(*url, poll_only);
  ASSERT_TRUE(quiet.has_value()) << quiet.error().ToString();
  auto loud = Driver::Open(*url, DriverOptions{});
  ASSERT_TRUE(loud.has_value());
  ASSERT_TRUE((*loud)->executor().JobInsertMany(OneJob()).has_value());
  ASSERT_TRUE((*loud)->executor().QueuePause("q", kT0).has_value());
  auto waited = (*quiet)->WaitForChange(milliseconds(100));
  ASSERT_TRUE(waited.has_value()) << waited.error().ToString();
  EXPECT_FALSE(*waited) << "a poll-only driver must not see notifications";
  (*quiet)->Interrupt();
  auto interrupted = (*quiet)->WaitForChange(seconds(20));
  ASSERT_TRUE(interrupted.has_value());
  EXPECT_TRUE(*interrupted);

  std::promise<void> done;
  ClientOptions o;
  o.poll_only = true;
  o.poll_interval = milliseconds(50);
  o.queues["default"] = {.max_workers = 1};
  Workers w;
  w.Add<PollWorker>(&done);
  auto worker = Client::Open(*url, o, std::move(w));
  ASSERT_TRUE(worker.has_value()) << worker.error().ToString();
  ASSERT_TRUE((*worker)->Start().ok());
  auto inserter = Client::Open(*url, {});
  ASSERT_TRUE(inserter.has_value());
  ASSERT_TRUE((*inserter)->Insert(PollArgs{1}).has_value());
  EXPECT_EQ(done.get_future().wait_for(seconds(20)), std::future_status::ready);
  EXPECT_TRUE((*worker)->Stop(seconds(10)).ok());
}

// An outcome the database refuses (here an error text holding NUL, which PostgreSQL's JSON cannot
// take; MakeCompletion replaces NULs, but a history past jsonb's size limit fails the same way)
// used to fail its whole batch for good: no outcome of the node was written again. The completer
// now writes the others and the refused one with a stand-in for its error.
TEST_F(PostgresDriverTest, CompleterWritesTheOtherOutcomesWhenTheDatabaseRefusesOne) {
  std::vector<JobRow> jobs;
  ASSERT_NO_FATAL_FAILURE(InsertClaimed(3, &jobs));
  spool::testing::Signal delivered;
  std::mutex mu;
  std::vector<Completion> written;
  std::vector<std::string> log;
  Completer completer(
      driver_->executor(),
      [&](const std::vector<Completion>& batch) {
        std::lock_guard lock(mu);
        written.insert(written.end(), batch.begin(), batch.end());
        if (written.size() == 3) delivered.Notify();
      },
      [&](LogLevel, std::string_view line) {
        std::lock_guard lock(mu);
        log.emplace_back(line);
      },
      std::chrono::hours(1));
  completer.Start();
  for (const JobRow& job : jobs) {
    Completion c;
    const bool poisoned = job.id == jobs[1].id;
    c.params = {.id = job.id,
                .attempt = 1,
                .state = JobState::kRetryable,
                .at = kT0 + seconds(60),
                .error = AttemptError{.at = kT0,
                                      .attempt = 1,
                                      .error = poisoned ? std::string("bad\0nul", 7) : "plain",
                                      .trace = {}}};
    c.event = {.kind = Event::Kind::kJobFailed, .job = job, .run_time = {}, .queue = "q"};
    c.event.job.errors.push_back(*c.params.error);
    completer.Add(std::move(c));
  }
  completer.FlushSoon();
  ASSERT_TRUE(delivered.WaitFor());
  EXPECT_TRUE(completer.Stop().ok());
  for (const JobRow& job : jobs) {
    auto row = driver_->executor().JobGetByID(job.id);
    ASSERT_TRUE(row.has_value()) << row.error().ToString();
    EXPECT_EQ(row->state, JobState::kRetryable);
    ASSERT_EQ(row->errors.size(), 1u);
    if (job.id == jobs[1].id) {
      EXPECT_NE(row->errors[0].error.find("the error of this attempt could not be stored"),
                std::string::npos)
          << row->errors[0].error;
    } else {
      EXPECT_EQ(row->errors[0].error, "plain");
    }
  }
  std::lock_guard lock(mu);
  for (const Completion& c : written) {
    if (c.params.id == jobs[1].id) {
      EXPECT_EQ(c.event.job.errors.back().error.find('\0'), std::string::npos);
    }
  }
  ASSERT_FALSE(log.empty());
  EXPECT_NE(log[0].find(fmt::format("the database refused job {}'s outcome", jobs[1].id)),
            std::string::npos)
      << log[0];
}

// A PostgreSQL crash loses the last outcomes committed without waiting for the WAL flush: those
// jobs came back `running` on a live node, and stayed so until the rescuer's rescue_after (an
// hour by default; a chaos soak saw them for 132 s, rescued only because their node was then
// stopped). The completer keeps the outcomes of the last second and writes them again, without
// events, once the driver finds a connection broken. Here the loss is made by hand: the row is
// put back to running, then the server's connections are terminated.
TEST_F(PostgresDriverTest, CompleterWritesAgainTheOutcomesACrashLost) {
  {
    DriverOptions waits;
    waits.postgres.synchronous_state_commits = true;
    auto d = Driver::Open(url_, waits);
    ASSERT_TRUE(d.has_value()) << d.error().ToString();
    EXPECT_EQ((*d)->PossibleCommitLosses(), nullptr) << "commits that wait lose nothing";
  }
  ASSERT_NE(driver_->PossibleCommitLosses(), nullptr);
  std::vector<JobRow> jobs;
  ASSERT_NO_FATAL_FAILURE(InsertClaimed(2, &jobs));
  std::mutex mu;
  std::condition_variable cv;
  int events = 0;
  std::vector<std::string> log;
  Completer completer(
      driver_->executor(),
      [&](const std::vector<Completion>& batch) {
        std::lock_guard lock(mu);
        events += static_cast<int>(batch.size());
        cv.notify_all();
      },
      [&](LogLevel, std::string_view line) {
        std::lock_guard lock(mu);
        log.emplace_back(line);
      },
      std::chrono::hours(1), driver_->PossibleCommitLosses());
  completer.Start();
  for (const JobRow& job : jobs) {
    Completion c;
    c.params = {.id = job.id,
                .attempt = job.attempt,
                .state = JobState::kCompleted,
                .at = kT0 + seconds(60),
                .attempted_at = job.attempted_at};
    c.event = {.kind = Event::Kind::kJobCompleted, .job = job, .run_time = {}, .queue = "q"};
    completer.Add(std::move(c));
  }
  completer.FlushSoon();
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, seconds(20), [&] { return events == 2; }));
  }
  PgConnPtr app = Connect(url_);
  Query(app.get(), fmt::format("UPDATE spool_job SET state = {}, finalized_at = NULL WHERE id = {}",
                               static_cast<int>(JobState::kRunning), jobs[0].id));
  app.reset();
  KillConnections();
  // Any call through the pool finds its connection broken (here a read; a heartbeat in a client).
  EXPECT_FALSE(driver_->executor().JobGetByID(jobs[1].id).has_value());
  const auto deadline = std::chrono::steady_clock::now() + seconds(20);
  for (;;) {
    auto row = driver_->executor().JobGetByID(jobs[0].id);
    if (row && row->state == JobState::kCompleted) {
      EXPECT_EQ(row->finalized_at, kT0 + seconds(60));
      break;
    }
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the lost outcome was not rewritten";
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(completer.Stop().ok());
  std::lock_guard lock(mu);
  EXPECT_EQ(events, 2) << "a rewrite sends no second event";
  ASSERT_EQ(log.size(), 1u);
  EXPECT_NE(log[0].find("lost the outcomes of 1 jobs"), std::string::npos) << log[0];
}

}  // namespace
}  // namespace spool::internal
