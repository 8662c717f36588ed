#pragma once

// Databases for PostgreSQL tests: each test gets its own schema on the test cluster, selected by
// the URL's search_path, so tests can run in parallel (ctest -j) on one database.
//
// The cluster's URL comes from SPOOL_TEST_DATABASE_URL, else from the file named by the compile
// definition SPOOL_PG_URL_FILE (written by scripts/pg-cluster.sh, a CTest fixture). With neither,
// tests skip, unless SPOOL_REQUIRE_POSTGRES=1 (CI), where they fail.

#include <gtest/gtest.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "driver/driver.h"
#include "spool/result.h"
#include "spool/status.h"

namespace spool::pgtest {

// The cluster URL, or nullopt when none is configured.
std::optional<std::string> ClusterUrl();
// True when SPOOL_REQUIRE_POSTGRES=1: a missing cluster is a failure, not a skip.
bool Required();

class PostgresTestDb {
 public:
  static PostgresTestDb& Instance();

  // Creates an empty schema; returns a URL whose connections use it (and carry its name as
  // application_name, so TerminateConnections can find them).
  Result<std::string> NewSchemaUrl();
  // A driver on a new schema, migrated to the latest version.
  Result<std::unique_ptr<internal::Driver>> OpenFresh();
  // Another driver on the schema of the latest OpenFresh.
  Result<std::unique_ptr<internal::Driver>> OpenAgain();
  // Runs `sql` on the cluster URL (outside any test schema).
  Status Exec(const std::string& sql);
  // Ends every server connection opened through `schema_url` (pg_terminate_backend).
  Result<int> TerminateConnections(const std::string& schema_url);
  // Drops every schema this process made.
  void DropSchemas();

 private:
  std::mutex mu_;
  int next_ = 0;
  std::vector<std::string> schemas_;
  std::string last_url_;
};

// Skips (or, when required, fails) every test of the binary without a cluster; drops the test
// schemas at exit. Register with ::testing::AddGlobalTestEnvironment.
class PostgresTestEnvironment : public ::testing::Environment {
 public:
  void SetUp() override;
  void TearDown() override;
};

// In a test body or SetUp: skips or fails when no cluster is configured.
#define SPOOL_REQUIRE_PG_CLUSTER()                                                           \
  do {                                                                                       \
    if (!::spool::pgtest::ClusterUrl()) {                                                    \
      if (::spool::pgtest::Required()) {                                                     \
        FAIL() << "SPOOL_REQUIRE_POSTGRES=1 but no PostgreSQL: set SPOOL_TEST_DATABASE_URL " \
                  "or run the pg_cluster_start CTest fixture";                               \
      }                                                                                      \
      GTEST_SKIP() << "no PostgreSQL test cluster (SPOOL_TEST_DATABASE_URL unset)";          \
    }                                                                                        \
  } while (false)

}  // namespace spool::pgtest
