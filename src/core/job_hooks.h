#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "spool/options.h"
#include "spool/worker.h"

namespace spool::internal {

// `d` within 0..kMaxDelay: the delays user code returns are added to the current time.
Duration ClampDelay(Duration d);

// How long one attempt of `job` may run: its worker's Timeout, else `options.job_timeout` (also
// when Timeout throws, which is logged), at most kMaxDelay; zero means no limit. The runner and
// the rescuer ask the same question, so they must get the same answer.
Duration JobTimeout(const WorkerBase* worker, const ClientOptions& options, const JobRow& job,
                    const Logger& logger);

// The delay before a failed `job`'s next attempt: its worker's NextRetry, else `policy`'s, else
// (when both throw, logged) DefaultRetryPolicy's; within 0..kMaxDelay.
Duration RetryDelay(const WorkerBase* worker, const RetryPolicy& policy, const JobRow& job,
                    const Logger& logger);

// `d` for messages: "30s", "300ms" or "1500us", the largest unit that shows it exactly.
std::string FormatDuration(Duration d);

// The longest error text kept for one attempt, in bytes.
inline constexpr size_t kMaxErrorBytes = 16 * 1024;

// The first `max` bytes of `text` or fewer, cut where a UTF-8 character begins.
std::string CutUtf8(std::string text, size_t max);

// An attempt's error text as it is stored: NUL bytes (which PostgreSQL's JSON refuses) become
// U+FFFD, and text past kMaxErrorBytes is cut on a UTF-8 boundary, saying how much was cut.
std::string StorableErrorText(std::string text);

// The snoozes counted in a job's metadata (key "snoozes"): 0 unless it holds a positive integer.
int64_t SnoozesIn(std::string_view metadata);

// `metadata` with its snooze count one higher, as the drivers write it with a snooze's outcome
// (so that the event tells what the table holds); unchanged when it is not a JSON object.
std::string WithOneMoreSnooze(const std::string& metadata);

}  // namespace spool::internal
