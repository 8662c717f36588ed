#include "core/job_hooks.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/exception.h"

namespace spool::internal {
namespace {

// Calls user code `fn` (a worker's or retry policy's hook); if it throws, logs that as `what` and
// returns nullopt: the hook runs on a worker thread outside Work's catch, where an exception
// would end the process with the job left running.
template <typename Fn>
auto CallHook(const Logger& logger, std::string_view what, Fn fn) -> std::optional<decltype(fn())> {
  try {
    return fn();
  } catch (...) {
    const CaughtException caught = DescribeCurrentException();
    if (logger) {
      logger(LogLevel::kError, fmt::format("{}: {}", what, caught.message));
    }
    return std::nullopt;
  }
}

}  // namespace

Duration ClampDelay(Duration d) { return std::clamp(d, Duration::zero(), kMaxDelay); }

Duration JobTimeout(const WorkerBase* worker, const ClientOptions& options, const JobRow& job,
                    const Logger& logger) {
  std::optional<Duration> timeout;
  if (worker != nullptr) {
    timeout = CallHook(logger, fmt::format("Timeout of the worker of kind \"{}\"", job.kind), [&] {
                return worker->Timeout(job);
              }).value_or(std::nullopt);
  }
  return ClampDelay(timeout.value_or(options.job_timeout));
}

Duration RetryDelay(const WorkerBase* worker, const RetryPolicy& policy, const JobRow& job,
                    const Logger& logger) {
  std::optional<Duration> delay;
  if (worker != nullptr) {
    delay = CallHook(logger, fmt::format("NextRetry of the worker of kind \"{}\"", job.kind), [&] {
              return worker->NextRetry(job);
            }).value_or(std::nullopt);
  }
  if (!delay) {
    delay = CallHook(logger, "the client's RetryPolicy::NextRetry",
                     [&] { return policy.NextRetry(job); });
  }
  return ClampDelay(delay.value_or(DefaultRetryPolicy().NextRetry(job)));
}

}  // namespace spool::internal
