#include "integration/postgres_test_db.h"

#include <fmt/format.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>

namespace spool::pgtest {
namespace {

struct ConnCloser {
  void operator()(PGconn* c) const { PQfinish(c); }
};
struct ResultCloser {
  void operator()(PGresult* r) const { PQclear(r); }
};

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

// Runs `sql` on `url`; returns the first column of the first row (or "").
Result<std::string> QueryOne(const std::string& url, const std::string& sql) {
  std::unique_ptr<PGconn, ConnCloser> conn(PQconnectdb(url.c_str()));
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    return Status::ConnectionLost(fmt::format("test cluster: {}", PQerrorMessage(conn.get())));
  }
  PQsetNoticeProcessor(
      conn.get(), [](void*, const char*) {}, nullptr);
  std::unique_ptr<PGresult, ResultCloser> res(PQexec(conn.get(), sql.c_str()));
  const ExecStatusType st = PQresultStatus(res.get());
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    return Status::Internal(fmt::format("test cluster: {}: {}", sql, PQerrorMessage(conn.get())));
  }
  if (st == PGRES_TUPLES_OK && PQntuples(res.get()) > 0)
    return std::string(PQgetvalue(res.get(), 0, 0));
  return std::string();
}

std::string AppNameOf(const std::string& schema_url) {
  const auto pos = schema_url.find("application_name=");
  if (pos == std::string::npos) return {};
  std::string name = schema_url.substr(pos + 17);
  return name.substr(0, name.find('&'));
}

}  // namespace

std::optional<std::string> ClusterUrl() {
  if (const char* env = std::getenv("SPOOL_TEST_DATABASE_URL"); env != nullptr && *env != '\0') {
    return std::string(env);
  }
#ifdef SPOOL_PG_URL_FILE
  std::ifstream in(SPOOL_PG_URL_FILE);
  std::string url;
  if (in && std::getline(in, url) && !Trim(url).empty()) return Trim(url);
#endif
  return std::nullopt;
}

bool Required() {
  const char* env = std::getenv("SPOOL_REQUIRE_POSTGRES");
  return env != nullptr && std::string(env) == "1";
}

PostgresTestDb& PostgresTestDb::Instance() {
  static PostgresTestDb* const kDb = new PostgresTestDb();
  return *kDb;
}

Result<std::string> PostgresTestDb::NewSchemaUrl() {
  std::optional<std::string> base = ClusterUrl();
  if (!base) {
    return Status::FailedPrecondition(
        "no PostgreSQL test cluster: set SPOOL_TEST_DATABASE_URL or run the pg_cluster_start "
        "CTest fixture");
  }
  std::string schema;
  {
    std::lock_guard lock(mu_);
    schema = fmt::format("spool_test_{}_{}", getpid(), next_++);
    schemas_.push_back(schema);
  }
  SPOOL_RETURN_IF_ERROR(QueryOne(*base, fmt::format("DROP SCHEMA IF EXISTS {0} CASCADE; "
                                                    "CREATE SCHEMA {0}",
                                                    schema))
                            .status());
  const char sep = base->find('?') == std::string::npos ? '?' : '&';
  std::string url =
      fmt::format("{}{}options=-csearch_path%3D{}&application_name={}", *base, sep, schema, schema);
  std::lock_guard lock(mu_);
  last_url_ = url;
  return url;
}

Result<std::unique_ptr<internal::Driver>> PostgresTestDb::OpenFresh() {
  SPOOL_ASSIGN_OR_RETURN(std::string url, NewSchemaUrl());
  SPOOL_ASSIGN_OR_RETURN(std::unique_ptr<internal::Driver> driver,
                         internal::Driver::Open(url, internal::DriverOptions{}));
  SPOOL_RETURN_IF_ERROR(driver->MigrateUp(internal::LatestVersion(*driver)));
  return driver;
}

Result<std::unique_ptr<internal::Driver>> PostgresTestDb::OpenAgain() {
  std::string url;
  {
    std::lock_guard lock(mu_);
    url = last_url_;
  }
  if (url.empty()) return Status::FailedPrecondition("OpenAgain before OpenFresh");
  return internal::Driver::Open(url, internal::DriverOptions{});
}

Status PostgresTestDb::Exec(const std::string& sql) {
  std::optional<std::string> base = ClusterUrl();
  if (!base) return Status::FailedPrecondition("no PostgreSQL test cluster configured");
  return QueryOne(*base, sql).status();
}

Result<int> PostgresTestDb::TerminateConnections(const std::string& schema_url) {
  std::optional<std::string> base = ClusterUrl();
  if (!base) return Status::FailedPrecondition("no PostgreSQL test cluster configured");
  const std::string app = AppNameOf(schema_url);
  if (app.empty()) return Status::InvalidArgument("url has no application_name");
  SPOOL_ASSIGN_OR_RETURN(
      std::string n,
      QueryOne(*base, fmt::format("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                  "WHERE application_name = '{}'",
                                  app)));
  return std::atoi(n.c_str());
}

void PostgresTestDb::DropSchemas() {
  std::vector<std::string> schemas;
  {
    std::lock_guard lock(mu_);
    schemas.swap(schemas_);
  }
  std::optional<std::string> base = ClusterUrl();
  if (!base) return;
  for (const std::string& s : schemas) {
    (void)QueryOne(*base, fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", s));
  }
}

void PostgresTestEnvironment::SetUp() {
  // When required, let every test run and fail on its own with the reason: a failure here would
  // make gtest report the tests as skipped.
  if (ClusterUrl() || Required()) return;
  // gtest reports tests skipped by a global environment as passed; this line makes CTest (its
  // SKIP_REGULAR_EXPRESSION) and readers see them as skipped.
  std::printf(
      "[  SKIPPED ] no PostgreSQL test cluster: set SPOOL_TEST_DATABASE_URL or run the "
      "pg_cluster_start CTest fixture\n");
  GTEST_SKIP() << "no PostgreSQL test cluster";
}

void PostgresTestEnvironment::TearDown() { PostgresTestDb::Instance().DropSchemas(); }

}  // namespace spool::pgtest
