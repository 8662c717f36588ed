// Runs the driver conformance suite against the SQLite driver, one fresh database file per test.

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>

#include "conformance/conformance.h"
#include "driver/driver.h"

namespace {

// One temp directory per test process, removed when the process's tests end.
class SqliteTempDir : public ::testing::Environment {
 public:
  static const std::string& Path() {
    static const std::string* const kPath = [] {
      std::string tmpl =
          (std::filesystem::temp_directory_path() / "spool-conformance-XXXXXX").string();
      if (mkdtemp(tmpl.data()) == nullptr) std::abort();
      return new std::string(tmpl);
    }();
    return *kPath;
  }
  void TearDown() override {
    std::error_code ignored;
    std::filesystem::remove_all(Path(), ignored);
  }
};

[[maybe_unused]] ::testing::Environment* const kTempDirEnv =
    ::testing::AddGlobalTestEnvironment(new SqliteTempDir);

// GoogleTest may evaluate the generator (and so this function) once per test, so the state shared
// by the factory's calls lives in the process, not in the lambdas.
std::mutex g_mu;
int g_databases = 0;     // guarded by g_mu
std::string g_last_url;  // guarded by g_mu

DriverFactory SqliteFactory() {
  DriverFactory factory;
  factory.name = "Sqlite";
  factory.open_fresh = []() -> spool::Result<std::unique_ptr<spool::internal::Driver>> {
    std::string url;
    {
      std::lock_guard lock(g_mu);
      g_last_url =
          "sqlite://" + SqliteTempDir::Path() + "/db" + std::to_string(++g_databases) + ".db";
      url = g_last_url;
    }
    SPOOL_ASSIGN_OR_RETURN(auto driver, spool::internal::Driver::Open(url, {}));
    SPOOL_RETURN_IF_ERROR(driver->MigrateUp(spool::internal::LatestVersion(*driver)));
    return driver;
  };
  factory.open_again = [] {
    std::string url;
    {
      std::lock_guard lock(g_mu);
      url = g_last_url;
    }
    return spool::internal::Driver::Open(url, {});
  };
  return factory;
}

}  // namespace

INSTANTIATE_TEST_SUITE_P(Sqlite, DriverConformanceTest, ::testing::Values(SqliteFactory()),
                         DriverFactoryName);
