#include "core/job_hooks.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/exception.h"

namespace spool::internal {
namespace {

// Calls user code `fn` (a worker's or retry policy's hook); if it throws, logs that with the
// hook's name (`hook`, and the job's kind unless `of_worker` is false) and returns nullopt: the
// hook runs on a worker thread outside Work's catch, where an exception would end the process
// with the job left running. Nothing is formatted unless it throws: this runs for every job.
template <typename Fn>
auto CallHook(const Logger& logger, std::string_view hook, bool of_worker, const JobRow& job, Fn fn)
    -> std::optional<decltype(fn())> {
  try {
    return fn();
  } catch (...) {
    const CaughtException caught = DescribeCurrentException();
    if (logger) {
      logger(LogLevel::kError, of_worker ? fmt::format("{} of the worker of kind \"{}\": {}", hook,
                                                       job.kind, caught.message)
                                         : fmt::format("{}: {}", hook, caught.message));
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
    timeout = CallHook(logger, "Timeout", true, job, [&] {
                return worker->Timeout(job);
              }).value_or(std::nullopt);
  }
  return ClampDelay(timeout.value_or(options.job_timeout));
}

Duration RetryDelay(const WorkerBase* worker, const RetryPolicy& policy, const JobRow& job,
                    const Logger& logger) {
  std::optional<Duration> delay;
  if (worker != nullptr) {
    delay = CallHook(logger, "NextRetry", true, job, [&] {
              return worker->NextRetry(job);
            }).value_or(std::nullopt);
  }
  if (!delay) {
    delay = CallHook(logger, "the client's RetryPolicy::NextRetry", false, job,
                     [&] { return policy.NextRetry(job); });
  }
  if (!delay) delay = DefaultRetryPolicy().NextRetry(job);
  return ClampDelay(*delay);
}

}  // namespace spool::internal
