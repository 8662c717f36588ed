#pragma once

// The driver conformance suite: the specification of the driver seam (src/driver/driver.h).
// Every driver instantiates DriverConformanceTest once, in its own <driver>_instance.cc:
//
//   INSTANTIATE_TEST_SUITE_P(Sqlite, DriverConformanceTest, ::testing::Values(SqliteFactory()),
//                            DriverFactoryName);
//
// and the cases in driver_conformance_test.cc run unchanged against it.

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "driver/driver.h"
#include "spool/result.h"
#include "spool/status.h"

// How the suite gets databases from one driver. GoogleTest may build the factory once per test:
// keep state shared between calls (such as which database open_again reopens) in the process,
// not in the lambdas' captures.
struct DriverFactory {
  // Test-name suffix: letters, digits and underscores only.
  std::string name;
  // A driver on a new, empty database, migrated to the driver's latest version. Each call makes
  // a database no other call shares.
  std::function<spool::Result<std::unique_ptr<spool::internal::Driver>>()> open_fresh;
  // A second, independent driver (its own connections) on the database the latest open_fresh
  // call made: it stands in for another process using the same database.
  std::function<spool::Result<std::unique_ptr<spool::internal::Driver>>()> open_again;
};

inline void PrintTo(const DriverFactory& factory, std::ostream* os) { *os << factory.name; }

// For INSTANTIATE_TEST_SUITE_P's name generator argument.
inline std::string DriverFactoryName(const ::testing::TestParamInfo<DriverFactory>& info) {
  return info.param.name;
}

class DriverConformanceTest : public ::testing::TestWithParam<DriverFactory> {
 protected:
  void SetUp() override;

  spool::internal::Driver& driver() { return *driver_; }
  spool::internal::Executor& exec() { return driver_->executor(); }

  std::unique_ptr<spool::internal::Driver> driver_;
};

namespace conformance {

inline spool::Status ToStatus(const spool::Status& s) { return s; }
template <typename T>
spool::Status ToStatus(const spool::Result<T>& r) {
  return r.status();
}

}  // namespace conformance

// Fails the test (fatally) unless `expr` (a Status or Result) is ok, printing the error.
#define CONF_ASSERT_OK(expr)                                            \
  do {                                                                  \
    const ::spool::Status conf_status_ = ::conformance::ToStatus(expr); \
    ASSERT_TRUE(conf_status_.ok()) << conf_status_.ToString();          \
  } while (false)

// Evaluates `rexpr` (a Result), fails the test fatally on error, else moves the value into lhs.
#define CONF_ASSIGN_OR_FAIL(lhs, rexpr) \
  CONF_ASSIGN_OR_FAIL_IMPL_(CONF_CONCAT_(conf_result_, __LINE__), lhs, rexpr)
#define CONF_CONCAT_INNER_(a, b) a##b
#define CONF_CONCAT_(a, b) CONF_CONCAT_INNER_(a, b)
#define CONF_ASSIGN_OR_FAIL_IMPL_(tmp, lhs, rexpr)        \
  auto tmp = (rexpr);                                     \
  ASSERT_TRUE(tmp.has_value()) << tmp.error().ToString(); \
  lhs = std::move(*tmp)
