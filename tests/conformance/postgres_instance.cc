// The conformance suite against PostgreSQL. Built only into spool_conformance_postgres_tests
// (tests/conformance/postgres.cmake defines SPOOL_PG_CONFORMANCE there); in any other binary that
// globs this folder it compiles to nothing.
#ifdef SPOOL_PG_CONFORMANCE

#include "conformance/conformance.h"
#include "integration/postgres_test_db.h"

namespace {

DriverFactory PostgresFactory() {
  return DriverFactory{
      .name = "Postgres",
      .open_fresh = [] { return spool::pgtest::PostgresTestDb::Instance().OpenFresh(); },
      .open_again = [] { return spool::pgtest::PostgresTestDb::Instance().OpenAgain(); },
  };
}

// Skips every test of this binary when no cluster is configured (or fails them all when
// SPOOL_REQUIRE_POSTGRES=1), and drops the schemas the tests made.
[[maybe_unused]] ::testing::Environment* const kPostgresEnv =
    ::testing::AddGlobalTestEnvironment(new spool::pgtest::PostgresTestEnvironment());

}  // namespace

INSTANTIATE_TEST_SUITE_P(Postgres, DriverConformanceTest, ::testing::Values(PostgresFactory()),
                         DriverFactoryName);

#endif  // SPOOL_PG_CONFORMANCE
