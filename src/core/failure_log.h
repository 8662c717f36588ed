#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "spool/options.h"
#include "spool/status.h"

namespace spool::internal {

// Logs a step that fails again and again (the database is away) without flooding the log: the
// first failure as a warning (or at the level given), then one per `period` with the count of
// failures since, then an info line when the step works again. One per repeating step; not
// thread safe.
class FailureLog {
 public:
  using SteadyTime = std::chrono::steady_clock::time_point;
  static constexpr std::chrono::seconds kDefaultPeriod{10};

  // `what` names the step: "queue default: fetching jobs", "heartbeat". Failures are logged at
  // `level`.
  explicit FailureLog(std::string what, std::chrono::steady_clock::duration period = kDefaultPeriod,
                      LogLevel level = LogLevel::kWarn)
      : what_(std::move(what)), period_(period), level_(level) {}

  // `retry_note`, if any, ends the repeated warning's parenthesis: "retrying every 1000 ms".
  void Failed(const Logger& logger, const Status& error, std::string_view retry_note = {},
              SteadyTime now = std::chrono::steady_clock::now());
  void Succeeded(const Logger& logger, SteadyTime now = std::chrono::steady_clock::now());
  // Failures in a row so far.
  int64_t failures() const { return failures_; }

 private:
  std::string what_;
  std::chrono::steady_clock::duration period_;
  LogLevel level_;
  int64_t failures_ = 0;
  int64_t unlogged_ = 0;
  SteadyTime first_failure_at_{};
  SteadyTime last_logged_at_{};
};

}  // namespace spool::internal
