#include "spool/job.h"

#include <fmt/format.h>

#include <ctime>

namespace spool {

std::string_view JobStateName(JobState state) {
  switch (state) {
    case JobState::kAvailable:
      return "available";
    case JobState::kScheduled:
      return "scheduled";
    case JobState::kRunning:
      return "running";
    case JobState::kRetryable:
      return "retryable";
    case JobState::kCompleted:
      return "completed";
    case JobState::kCancelled:
      return "cancelled";
    case JobState::kDiscarded:
      return "discarded";
    case JobState::kPending:
      return "pending";
  }
  return "unknown";
}

Result<JobState> ParseJobState(std::string_view name) {
  for (JobState s : kAllJobStates) {
    if (JobStateName(s) == name) return s;
  }
  return Status::InvalidArgument(fmt::format(
      "unknown job state \"{}\": valid states are available, scheduled, running, retryable, "
      "completed, cancelled, discarded, pending",
      name));
}

bool IsFinalState(JobState state) {
  return state == JobState::kCompleted || state == JobState::kCancelled ||
         state == JobState::kDiscarded;
}

std::string FormatTime(TimePoint t) {
  const int64_t us = t.time_since_epoch().count();
  int64_t secs = us / 1'000'000;
  int64_t frac = us % 1'000'000;
  if (frac < 0) {
    frac += 1'000'000;
    secs -= 1;
  }
  const auto tt = static_cast<std::time_t>(secs);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
}

}  // namespace spool
