#include "core/job_hooks.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>

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

namespace {

// The integer under "snoozes" in a parsed metadata object, when there is one that can grow.
std::optional<int64_t> SnoozeCount(const nlohmann::json& metadata) {
  const auto it = metadata.find("snoozes");
  if (it == metadata.end()) return std::nullopt;
  if (it->is_number_unsigned()) {
    const auto n = it->get<uint64_t>();
    if (n >= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(n);
  }
  if (it->is_number_integer()) return it->get<int64_t>();
  return std::nullopt;
}

}  // namespace

std::string FormatDuration(Duration d) {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  if (us % 1'000'000 == 0) return fmt::format("{}s", us / 1'000'000);
  if (us % 1'000 == 0) return fmt::format("{}ms", us / 1'000);
  return fmt::format("{}us", us);
}

int64_t SnoozesIn(std::string_view metadata) {
  const nlohmann::json parsed = nlohmann::json::parse(metadata, nullptr, false);
  if (!parsed.is_object()) return 0;
  return std::max<int64_t>(SnoozeCount(parsed).value_or(0), 0);
}

std::string WithOneMoreSnooze(const std::string& metadata) {
  // Metadata edited by hand past the depth a dump can print stays as it is here (the drivers
  // count the snooze in the table).
  if (!ValidateJsonDepth(metadata, "metadata").ok()) return metadata;
  nlohmann::json parsed = nlohmann::json::parse(metadata, nullptr, false);
  if (!parsed.is_object()) return metadata;
  parsed["snoozes"] = SnoozeCount(parsed).value_or(0) + 1;
  return parsed.dump();
}

std::string CutUtf8(std::string text, size_t max) {
  if (text.size() <= max) return text;
  size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  text.resize(cut);
  return text;
}

std::string StorableErrorText(std::string text) {
  if (text.size() > kMaxErrorBytes) {
    const size_t size = text.size();
    text = CutUtf8(std::move(text), kMaxErrorBytes);
    text += fmt::format(" ... ({} more bytes not kept)", size - text.size());
  }
  if (text.find('\0') == std::string::npos) return text;
  std::string out;
  out.reserve(text.size() + 16);
  for (char c : text) {
    if (c == '\0') {
      out += "\xEF\xBF\xBD";  // U+FFFD
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace spool::internal
