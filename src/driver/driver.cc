#include "driver/driver.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>

#include "driver/sqlite/sqlite_driver.h"
#include "spool/client.h"
#ifdef SPOOL_WITH_POSTGRES
#include "driver/postgres/postgres_driver.h"
#endif

namespace spool::internal {

Result<std::unique_ptr<Driver>> Driver::Open(std::string_view url, const DriverOptions& options) {
  constexpr std::string_view kSqlite = "sqlite://";
  if (url.starts_with(kSqlite)) {
    std::string path(url.substr(kSqlite.size()));
    if (path.empty()) {
      return Status::InvalidArgument(
          "database url \"sqlite://\" names no file: use sqlite://app.db (relative) or "
          "sqlite:///abs/path/app.db");
    }
    if (path.find('?') != std::string::npos) {
      // SQLite would take "?mode=ro" as part of the file's name, and migrate a new, empty file.
      return Status::InvalidArgument(fmt::format(
          "SQLite urls take no parameters: \"{}\" would open a file of that whole name; drop "
          "the part from '?' on (spool always opens the file for reading and writing)",
          path));
    }
    if (path == ":memory:" || path.find("mode=memory") != std::string::npos) {
      return Status::InvalidArgument(
          "in-memory SQLite databases are not supported: the jobs would vanish with the process "
          "and other connections could not see them; use a file, e.g. sqlite://app.db");
    }
    return OpenSqliteDriver(std::move(path), options);
  }
  if (url.starts_with("postgres://") || url.starts_with("postgresql://")) {
#ifdef SPOOL_WITH_POSTGRES
    return OpenPostgresDriver(std::string(url), options);
#else
    return Status::InvalidArgument(
        "this build of spool has no PostgreSQL driver: rebuild with -DSPOOL_WITH_POSTGRES=ON");
#endif
  }
  return Status::InvalidArgument(
      fmt::format("unsupported database url {}: use sqlite://PATH (sqlite:///abs/app.db or "
                  "sqlite://relative.db) or postgres://user@host:port/db",
                  UrlSchemeForMessage(url)));
}

Status CheckInsertRows(const JobInsertManyParams& params, int max_attempts_limit,
                       bool returns_rows) {
  const auto& jobs = params.jobs;
  const bool any_unique = std::any_of(
      jobs.begin(), jobs.end(), [](const JobInsertParams& j) { return !j.unique_key.empty(); });
  for (size_t i = 0; i < jobs.size(); ++i) {
    const JobInsertParams& job = jobs[i];
    if (job.state != JobState::kAvailable && job.state != JobState::kScheduled &&
        job.state != JobState::kPending) {
      return Status::InvalidArgument(
          fmt::format("job {}: cannot insert in state {}: use available, scheduled or pending", i,
                      JobStateName(job.state)));
    }
    if (job.priority < kMinPriority || job.priority > kMaxPriority) {
      return Status::InvalidArgument(fmt::format("job {}: priority {} is outside {}..{}", i,
                                                 job.priority, kMinPriority, kMaxPriority));
    }
    if (job.max_attempts < 1 || job.max_attempts > max_attempts_limit) {
      return Status::InvalidArgument(
          max_attempts_limit == std::numeric_limits<int>::max()
              ? fmt::format("job {}: max_attempts {} must be at least 1", i, job.max_attempts)
              : fmt::format("job {}: max_attempts {} must be between 1 and {}", i, job.max_attempts,
                            max_attempts_limit));
    }
    if (job.kind.empty()) return Status::InvalidArgument(fmt::format("job {}: empty kind", i));
    if (job.queue.empty()) return Status::InvalidArgument(fmt::format("job {}: empty queue", i));
    if (job.claim) {
      if (job.state != JobState::kAvailable || any_unique) {
        return Status::InvalidArgument(
            fmt::format("job {}: only an available job in a batch without unique jobs can be "
                        "claimed as it is inserted",
                        i));
      }
      if (params.claim_for.empty() || !returns_rows) {
        return Status::InvalidArgument(fmt::format(
            "job {}: a job claimed as it is inserted needs a client id and the inserted rows", i));
      }
    }
  }
  return Status::Ok();
}

Status CheckOutcomeStates(const std::vector<JobSetStateParams>& outcomes) {
  for (const JobSetStateParams& j : outcomes) {
    if (!IsFinalState(j.state) && j.state != JobState::kRetryable &&
        j.state != JobState::kScheduled) {
      return Status::InvalidArgument(
          fmt::format("job {}: cannot set state {}: use completed, cancelled, discarded, "
                      "retryable or scheduled",
                      j.id, JobStateName(j.state)));
    }
  }
  return Status::Ok();
}

Status RunningJobRefused(const JobRow& job, std::string_view doing) {
  const nlohmann::json metadata = nlohmann::json::parse(job.metadata, nullptr, false);
  if (metadata.is_object() && metadata.contains("cancel_requested_at")) {
    const auto& at = metadata["cancel_requested_at"];
    return Status::FailedPrecondition(fmt::format(
        "job {} is running; its cancel was requested{} and it ends cancelled once its worker "
        "stops (or its client is found dead): wait for that before {} it",
        job.id, at.is_string() ? " at " + at.get<std::string>() : std::string(), doing));
  }
  return Status::FailedPrecondition(fmt::format(
      "job {} is running: cancel it or wait for it to finish before {} it", job.id, doing));
}

Status RetryRefused(const JobRow& job) {
  if (job.state == JobState::kRunning) return RunningJobRefused(job, "retrying");
  if (job.attempt >= kMaxMaxAttempts) {
    return Status::FailedPrecondition(fmt::format(
        "job {} has used all {} attempts a job may have, so it cannot be retried: insert a new "
        "job with its args instead",
        job.id, kMaxMaxAttempts));
  }
  return Status::Internal(fmt::format("cannot retry job {}: it changed concurrently", job.id));
}

Status UniqueKeyHeld(const Result<JobRow>& holder) {
  if (!holder) {
    return Status::AlreadyExists(
        "another job with its unique key is waiting or running (list the kind's jobs to find it)");
  }
  return Status::AlreadyExists(
      fmt::format("job {} ({}) holds its unique key", holder->id, JobStateName(holder->state)));
}

Status CheckFinalizedState(JobState state) {
  if (IsFinalState(state)) return Status::Ok();
  return Status::InvalidArgument(
      fmt::format("cannot delete finalized jobs in state {}: use completed, cancelled or discarded",
                  JobStateName(state)));
}

Status UnreadableRowError(std::string_view job, const Status& cause) {
  return Status::Internal(fmt::format("job {} cannot be read: {}", job, cause.message()));
}

JobRow RowOrIdOnly(int64_t id, Result<JobRow> decoded) {
  if (decoded) return std::move(*decoded);
  JobRow row;
  row.id = id;
  return row;
}

Status UnreadableClaimError(const Status& cause) {
  return Status::Internal(fmt::format(
      "{}; the claim gave its jobs back, and this one is claimed again in {}s: repair the row "
      "with SQL or delete the job (spool jobs delete ID)",
      cause.message(),
      std::chrono::duration_cast<std::chrono::seconds>(kUnreadableRowDelay).count()));
}

std::string SqlBetween(std::string_view sql, std::string_view from, std::string_view to) {
  const size_t begin = sql.find(from);
  return std::string(sql.substr(begin, sql.find(to, begin) - begin));
}

const std::vector<Migration>* MigrationsFor(std::string_view driver_name) {
  if (driver_name == "sqlite") return &SqliteMigrations();
#ifdef SPOOL_WITH_POSTGRES
  if (driver_name == "postgres") return &PostgresMigrations();
#endif
  return nullptr;
}

}  // namespace spool::internal
