#include "spool/options.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <random>

#include "core/job_hooks.h"

namespace spool {
namespace {

constexpr int kMaxWorkersLimit = 10'000;
constexpr size_t kMaxQueueNameLength = 128;

// Well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF): what JSON and
// PostgreSQL's text take. A kind or tag that is not would fail at the insert (nlohmann's dump
// throws) or be unreadable in every listing.
bool IsUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    size_t n = 0;
    uint32_t cp = 0;
    if (b < 0x80) {
      ++i;
      continue;
    } else if ((b & 0xE0) == 0xC0) {
      n = 1;
      cp = b & 0x1Fu;
    } else if ((b & 0xF0) == 0xE0) {
      n = 2;
      cp = b & 0x0Fu;
    } else if ((b & 0xF8) == 0xF0) {
      n = 3;
      cp = b & 0x07u;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;  // its continuation bytes are missing
    for (size_t k = 1; k <= n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3Fu);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

// Text stored as a name (a kind, tag, client id or periodic job name): printable, UTF-8, and at
// most `max` bytes. A control byte broke listings and PostgreSQL's array literals (a NUL tag);
// bytes that are not UTF-8 made nlohmann's dump throw on a worker thread (a client_id ended the
// process) or PostgreSQL refuse every statement.
Status CheckName(std::string_view what, std::string_view text, size_t max) {
  if (text.size() > max) {
    return Status::InvalidArgument(
        fmt::format("{} \"{}...\" is longer than {} bytes", what, text.substr(0, 20), max));
  }
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      return Status::InvalidArgument(
          fmt::format("{} {:?} has a control character (byte {:#04x}): use printable characters",
                      what, text.substr(0, 40), u));
    }
  }
  if (!IsUtf8(text)) {
    return Status::InvalidArgument(
        fmt::format("{} {:?} is not valid UTF-8: use UTF-8 text", what, text.substr(0, 40)));
  }
  return Status::Ok();
}

// True when the JSON text holds the escape \u0000: PostgreSQL's jsonb refuses it, so SQLite
// must too, or an app tested on SQLite fails its inserts on PostgreSQL.
bool HasNulEscape(std::string_view json) {
  if (json.find("u0000") == std::string_view::npos) return false;
  bool in_string = false;
  for (size_t i = 0; i < json.size(); ++i) {
    if (!in_string) {
      in_string = json[i] == '"';
    } else if (json[i] == '"') {
      in_string = false;
    } else if (json[i] == '\\') {
      if (json.substr(i + 1, 5) == "u0000") return true;
      ++i;
    }
  }
  return false;
}

bool IsQueueChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-' || c == '.' || c == ':';
}

}  // namespace

Duration DefaultRetryPolicy::NextRetry(const JobRow& job) const {
  const double attempt = std::max(1, job.attempt);
  const double base_s = std::pow(attempt, 4.0);
  // Jitter spreads retries of jobs that failed together (an outage) so they do not all come back
  // at the same instant.
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uniform_real_distribution<double> jitter(-0.1, 0.1);
  const double s = base_s * (1.0 + jitter(rng));
  // attempt^4 passes 100 years near attempt 1,330 (max_attempts allows 32,767); converting a
  // larger double to an integer would be undefined.
  const double max_s = std::chrono::duration<double>(kMaxDelay).count();
  if (s >= max_s) return kMaxDelay;
  return Duration(static_cast<int64_t>(s * 1e6));
}

Status ValidateQueueName(std::string_view name) {
  if (name.empty()) return Status::InvalidArgument("queue name is empty");
  if (name.size() > kMaxQueueNameLength) {
    return Status::InvalidArgument(fmt::format("queue name \"{}...\" is longer than {} characters",
                                               name.substr(0, 20), kMaxQueueNameLength));
  }
  for (char c : name) {
    if (!IsQueueChar(c)) {
      return Status::InvalidArgument(fmt::format(
          "queue name \"{}\" has an invalid character '{}': use letters, digits, _ - . :", name,
          c));
    }
  }
  return Status::Ok();
}

Status ValidateKind(std::string_view kind) {
  if (kind.empty()) return Status::InvalidArgument("the kind is empty: set Args::kKind");
  return CheckName("kind", kind, 255);
}

Status ValidateArgsText(std::string_view json, std::string_view what) {
  SPOOL_RETURN_IF_ERROR(ValidateJsonDepth(json, what));
  if (HasNulEscape(json)) {
    return Status::InvalidArgument(fmt::format(
        "{}: the character \\u0000 cannot be stored (PostgreSQL's jsonb refuses it): remove it",
        what));
  }
  return Status::Ok();
}

Status ValidateJsonDepth(std::string_view json, std::string_view what) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < json.size(); ++i) {
    const char c = json[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character, a quote or a backslash included
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) {
        return Status::InvalidArgument(
            fmt::format("{} nest arrays and objects more than {} levels deep: flatten them", what,
                        kMaxJsonDepth));
      }
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return Status::Ok();
}

Status ValidateUniqueOptions(const UniqueOptions& opts) {
  for (JobState s : {JobState::kAvailable, JobState::kPending, JobState::kRunning,
                     JobState::kRetryable, JobState::kScheduled}) {
    if (std::find(opts.by_states.begin(), opts.by_states.end(), s) == opts.by_states.end()) {
      return Status::InvalidArgument(fmt::format(
          "UniqueOptions.by_states lacks \"{}\": it must include every non-final state "
          "(available, pending, running, retryable, scheduled), else a job could collide with "
          "its duplicate as it moves between states",
          JobStateName(s)));
    }
  }
  if (!opts.by_args && !opts.by_args_fields.empty()) {
    return Status::InvalidArgument("UniqueOptions.by_args_fields is set but by_args is false");
  }
  if (opts.by_period < Duration::zero()) {
    return Status::InvalidArgument("UniqueOptions.by_period is negative");
  }
  return Status::Ok();
}

Status ValidateInsertOptions(const InsertOptions& opts) {
  SPOOL_RETURN_IF_ERROR(ValidateQueueName(opts.queue).WithContext("InsertOptions.queue"));
  if (opts.priority < kMinPriority || opts.priority > kMaxPriority) {
    return Status::InvalidArgument(
        fmt::format("InsertOptions.priority is {}: it must be between {} (highest) and {} (lowest)",
                    opts.priority, kMinPriority, kMaxPriority));
  }
  if (opts.max_attempts < 1 || opts.max_attempts > kMaxMaxAttempts) {
    return Status::InvalidArgument(
        fmt::format("InsertOptions.max_attempts is {}: it must be between 1 and {}",
                    opts.max_attempts, kMaxMaxAttempts));
  }
  // Years 1 to 9999: what both databases store and read back exactly (PostgreSQL's timestamptz
  // shifted TimePoint::max() by 384 us; SQLite took TimePoint::min(), in year -290308).
  constexpr TimePoint kEarliest{std::chrono::microseconds(-62'135'596'800'000'000)};  // 0001-01-01
  constexpr TimePoint kLatest{std::chrono::microseconds(253'402'300'799'999'999)};    // 9999-12-31
  if (opts.scheduled_at && (*opts.scheduled_at < kEarliest || *opts.scheduled_at > kLatest)) {
    return Status::InvalidArgument(
        "InsertOptions.scheduled_at is out of range: it must be in the years 1 to 9999");
  }
  for (const auto& tag : opts.tags) {
    if (tag.empty() || tag.size() > kMaxTagLength || tag.find(',') != std::string::npos) {
      return Status::InvalidArgument(fmt::format(
          "InsertOptions.tags has \"{}\": a tag is 1-255 characters without commas", tag));
    }
    SPOOL_RETURN_IF_ERROR(CheckName("InsertOptions.tags: the tag", tag, kMaxTagLength));
  }
  if (opts.metadata != "{}") {
    SPOOL_RETURN_IF_ERROR(ValidateArgsText(opts.metadata, "InsertOptions.metadata"));
    const auto j = nlohmann::json::parse(opts.metadata, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) {
      return Status::InvalidArgument("InsertOptions.metadata must be a JSON object, e.g. {}");
    }
  }
  if (opts.unique) return ValidateUniqueOptions(*opts.unique);
  return Status::Ok();
}

Status ValidateClientOptions(const ClientOptions& opts) {
  SPOOL_RETURN_IF_ERROR(CheckName("ClientOptions.client_id", opts.client_id, 255));
  for (const PeriodicJob& p : opts.periodic_jobs) {
    SPOOL_RETURN_IF_ERROR(CheckName("periodic job name", p.name, 255));
  }
  for (const auto& [name, q] : opts.queues) {
    SPOOL_RETURN_IF_ERROR(ValidateQueueName(name).WithContext("ClientOptions.queues"));
    if (q.max_workers < 1 || q.max_workers > kMaxWorkersLimit) {
      return Status::InvalidArgument(
          fmt::format("ClientOptions.queues[\"{}\"].max_workers is {}: it must be between 1 and {}",
                      name, q.max_workers, kMaxWorkersLimit));
    }
  }
  const auto check_interval = [](std::string_view field, Duration d) -> Status {
    if (d < std::chrono::milliseconds(1) || d > std::chrono::hours(1)) {
      return Status::InvalidArgument(
          fmt::format("ClientOptions.{} is {}: it must be between 1ms and 1h", field,
                      internal::FormatDuration(d)));
    }
    return Status::Ok();
  };
  SPOOL_RETURN_IF_ERROR(check_interval("poll_interval", opts.poll_interval));
  SPOOL_RETURN_IF_ERROR(check_interval("schedule_interval", opts.schedule_interval));
  const std::pair<std::string_view, Duration> positive[] = {
      {"heartbeat_interval", opts.heartbeat_interval},
      {"client_stale_after", opts.client_stale_after},
      {"leader_ttl", opts.leader_ttl},
      {"rescue_interval", opts.rescue_interval},
      {"rescue_after", opts.rescue_after},
      {"rescue_timeout_margin", opts.rescue_timeout_margin},
      {"clean_interval", opts.clean_interval}};
  for (const auto& [field, d] : positive) {
    if (d <= Duration::zero()) {
      return Status::InvalidArgument(fmt::format("ClientOptions.{} is {}: it must be positive",
                                                 field, internal::FormatDuration(d)));
    }
    if (d > kMaxDelay) {
      return Status::InvalidArgument(
          fmt::format("ClientOptions.{} is {}: it must be at most 100 years (kMaxDelay)", field,
                      internal::FormatDuration(d)));
    }
  }
  if (opts.client_stale_after <= opts.heartbeat_interval) {
    return Status::InvalidArgument(
        "ClientOptions.client_stale_after must be longer than heartbeat_interval, or live "
        "clients would be taken for dead");
  }
  if (opts.job_timeout < Duration::zero()) {
    return Status::InvalidArgument(
        fmt::format("ClientOptions.job_timeout is negative ({}): use 0 for no timeout",
                    internal::FormatDuration(opts.job_timeout)));
  }
  if (opts.job_timeout > kMaxDelay) {
    return Status::InvalidArgument(fmt::format(
        "ClientOptions.job_timeout is {}: it must be at most 100 years (kMaxDelay); use 0 for "
        "no timeout",
        internal::FormatDuration(opts.job_timeout)));
  }
  for (const auto& [field, d] :
       {std::pair<std::string_view, Duration>{"completed", opts.retention.completed},
        {"cancelled", opts.retention.cancelled},
        {"discarded", opts.retention.discarded}}) {
    if (d > kMaxDelay) {
      return Status::InvalidArgument(fmt::format(
          "ClientOptions.retention.{} is {}: at most 100 years (kMaxDelay), or negative to keep "
          "those jobs for ever",
          field, internal::FormatDuration(d)));
    }
  }
  if (opts.sqlite.busy_timeout > kMaxDelay) {
    return Status::InvalidArgument("ClientOptions.sqlite.busy_timeout is over 100 years");
  }
  if (opts.sqlite.busy_timeout < Duration::zero()) {
    return Status::InvalidArgument("ClientOptions.sqlite.busy_timeout is negative");
  }
  return Status::Ok();
}

}  // namespace spool
