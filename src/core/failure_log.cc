#include "core/failure_log.h"

#include <fmt/format.h>

namespace spool::internal {

void FailureLog::Failed(const Logger& logger, const Status& error, std::string_view retry_note,
                        SteadyTime now) {
  if (failures_++ == 0) first_failure_at_ = now;
  ++unlogged_;
  if (failures_ > 1 && now - last_logged_at_ < period_) return;
  if (logger) {
    logger(level_,
           failures_ == 1
               ? fmt::format("{} failed: {}", what_, error.ToString())
               : fmt::format("{} still fails ({} failed attempts since the last report{}{}): {}",
                             what_, unlogged_, retry_note.empty() ? "" : ", ", retry_note,
                             error.ToString()));
  }
  last_logged_at_ = now;
  unlogged_ = 0;
}

void FailureLog::Succeeded(const Logger& logger, SteadyTime now) {
  if (failures_ == 0) return;
  if (logger) {
    const auto away =
        std::chrono::duration_cast<std::chrono::milliseconds>(now - first_failure_at_);
    logger(LogLevel::kInfo, fmt::format("{} works again after {} failed attempts ({} ms)", what_,
                                        failures_, away.count()));
  }
  failures_ = 0;
  unlogged_ = 0;
}

}  // namespace spool::internal
