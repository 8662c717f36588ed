#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "spool/result.h"

namespace spool {

// Wall-clock time of the job table. Stored with microsecond precision.
using TimePoint = std::chrono::time_point<std::chrono::system_clock, std::chrono::microseconds>;
using Duration = std::chrono::microseconds;

// Where a job is in its life. The final states (completed, cancelled, discarded) never change
// again except through an explicit admin retry.
enum class JobState {
  kAvailable,  // ready to run now
  kScheduled,  // waiting for scheduled_at (also where snoozed jobs go)
  kRunning,    // claimed by a client; attempt has been incremented
  kRetryable,  // failed; waiting for its backoff to pass
  kCompleted,  // succeeded
  kCancelled,  // cancelled by the worker or an admin
  kDiscarded,  // failed max_attempts times, or was not retryable
  kPending,    // inserted on hold; never runs until something moves it
};

inline constexpr JobState kAllJobStates[] = {
    JobState::kAvailable, JobState::kScheduled, JobState::kRunning,   JobState::kRetryable,
    JobState::kCompleted, JobState::kCancelled, JobState::kDiscarded, JobState::kPending};

// "available", "scheduled", ... as stored in the database.
std::string_view JobStateName(JobState state);
// Parses a state name; the error lists the valid names.
Result<JobState> ParseJobState(std::string_view name);
bool IsFinalState(JobState state);

// One failed attempt in a job's error history.
struct AttemptError {
  TimePoint at{};
  int attempt = 0;
  std::string error{};
  std::string trace{};  // optional detail, e.g. the exception type
};

// A job as stored. args and metadata are JSON text.
struct JobRow {
  int64_t id = 0;
  JobState state = JobState::kAvailable;
  int attempt = 0;
  int max_attempts = 0;
  std::optional<TimePoint> attempted_at{};
  std::vector<std::string> attempted_by{};  // client ids that ran it, most recent last
  TimePoint created_at{};
  TimePoint scheduled_at{};
  std::optional<TimePoint> finalized_at{};
  int priority = 1;
  std::string queue{};
  std::string kind{};
  std::string args = "{}";
  std::string metadata = "{}";
  std::vector<std::string> tags{};
  std::vector<AttemptError> errors{};
};

// Formats a time as RFC 3339 UTC with microseconds ("2026-11-27T21:07:51.123456Z").
std::string FormatTime(TimePoint t);

}  // namespace spool
