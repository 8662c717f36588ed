#include "driver/sqlite/sqlite_queries.h"

#include <fmt/format.h>

#include <algorithm>
#include <deque>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>

namespace spool::internal {

namespace {

// Column order read by ReadJobRow.
constexpr std::string_view kJobColumns =
    "id, state, attempt, max_attempts, attempted_at, attempted_by, created_at, scheduled_at, "
    "finalized_at, priority, queue, kind, args, metadata, tags, errors";

constexpr int kInsertParamsPerRow = 9;  // plus ?1, created_at, shared by all rows

int64_t Micros(TimePoint t) { return t.time_since_epoch().count(); }
TimePoint FromMicros(int64_t us) { return TimePoint(Duration(us)); }

std::optional<TimePoint> OptionalTime(sqlite3_stmt* stmt, int col) {
  if (sqlite3_column_type(stmt, col) == SQLITE_NULL) return std::nullopt;
  return FromMicros(sqlite3_column_int64(stmt, col));
}

int ColumnInt(sqlite3_stmt* stmt, int col) {
  return static_cast<int>(sqlite3_column_int64(stmt, col));
}

// Parses a JSON array of strings. The arrays spool writes (json_insert, nlohmann dump) have no
// whitespace, so when the text has no escapes every quote is a delimiter and a plain scan
// suffices; anything else goes to the full parser.
Result<std::vector<std::string>> ParseStringArray(std::string_view text) {
  std::vector<std::string> out;
  if (text == "[]") return out;
  if (text.find('\\') == std::string_view::npos && text.size() >= 2 && text.front() == '[' &&
      text.back() == ']') {
    size_t i = 1;
    bool simple = true;
    while (i < text.size() - 1) {
      if (text[i] != '"') {
        simple = false;
        break;
      }
      const size_t end = text.find('"', i + 1);
      if (end == std::string_view::npos || end >= text.size() - 1) {
        simple = false;
        break;
      }
      out.emplace_back(text.substr(i + 1, end - i - 1));
      i = end + 1;
      if (text[i] == ',') {
        ++i;
      } else if (i != text.size() - 1) {
        simple = false;
        break;
      }
    }
    if (simple) return out;
    out.clear();
  }
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_array()) return Status::Internal(fmt::format("not a JSON array of strings: {}", text));
  for (const auto& v : j) {
    if (!v.is_string()) {
      return Status::Internal(fmt::format("not a JSON array of strings: {}", text));
    }
    out.push_back(v.get<std::string>());
  }
  return out;
}

Result<std::vector<AttemptError>> ParseErrors(std::string_view text) {
  std::vector<AttemptError> out;
  if (text == "[]") return out;
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_array())
    return Status::Internal(fmt::format("job errors are not a JSON array: {}", text));
  for (const auto& e : j) {
    if (!e.is_object()) continue;
    AttemptError err;
    err.at = FromMicros(e.value("at", int64_t{0}));
    err.attempt = e.value("attempt", 0);
    err.error = e.value("error", std::string());
    err.trace = e.value("trace", std::string());
    out.push_back(std::move(err));
  }
  return out;
}

std::string ErrorJson(const AttemptError& e) {
  nlohmann::json j = {
      {"at", Micros(e.at)}, {"attempt", e.attempt}, {"error", e.error}, {"trace", e.trace}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Result<JobRow> ReadJobRow(sqlite3_stmt* stmt) {
  JobRow row;
  row.id = sqlite3_column_int64(stmt, 0);
  SPOOL_ASSIGN_OR_RETURN(row.state, ParseJobState(ColumnText(stmt, 1)));
  row.attempt = ColumnInt(stmt, 2);
  row.max_attempts = ColumnInt(stmt, 3);
  row.attempted_at = OptionalTime(stmt, 4);
  SPOOL_ASSIGN_OR_RETURN(row.attempted_by, ParseStringArray(ColumnText(stmt, 5)));
  row.created_at = FromMicros(sqlite3_column_int64(stmt, 6));
  row.scheduled_at = FromMicros(sqlite3_column_int64(stmt, 7));
  row.finalized_at = OptionalTime(stmt, 8);
  row.priority = ColumnInt(stmt, 9);
  row.queue = ColumnText(stmt, 10);
  row.kind = ColumnText(stmt, 11);
  row.args = ColumnText(stmt, 12);
  row.metadata = ColumnText(stmt, 13);
  SPOOL_ASSIGN_OR_RETURN(row.tags, ParseStringArray(ColumnText(stmt, 14)));
  SPOOL_ASSIGN_OR_RETURN(row.errors, ParseErrors(ColumnText(stmt, 15)));
  return row;
}

// Steps `stmt` to the end, decoding every row into `out`.
Status ReadJobRows(sqlite3_stmt* stmt, std::string_view context, std::vector<JobRow>* out) {
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    SPOOL_ASSIGN_OR_RETURN(JobRow row, ReadJobRow(stmt));
    out->push_back(std::move(row));
  }
  if (rc != SQLITE_DONE) return SqliteStatus(rc, sqlite3_db_handle(stmt), context);
  return Status::Ok();
}

Status CheckBind(int rc, sqlite3_stmt* stmt) {
  if (rc == SQLITE_OK) return Status::Ok();
  return SqliteStatus(rc, sqlite3_db_handle(stmt), "bind");
}

Status ValidateInsert(const JobInsertParams& job, size_t index) {
  if (job.state != JobState::kAvailable && job.state != JobState::kScheduled &&
      job.state != JobState::kPending) {
    return Status::InvalidArgument(
        fmt::format("job {}: cannot insert in state {}: use available, scheduled or pending", index,
                    JobStateName(job.state)));
  }
  if (job.priority < kMinPriority || job.priority > kMaxPriority) {
    return Status::InvalidArgument(fmt::format("job {}: priority {} is outside {}..{}", index,
                                               job.priority, kMinPriority, kMaxPriority));
  }
  if (job.max_attempts < 1) {
    return Status::InvalidArgument(
        fmt::format("job {}: max_attempts {} must be at least 1", index, job.max_attempts));
  }
  if (job.kind.empty()) return Status::InvalidArgument(fmt::format("job {}: empty kind", index));
  if (job.queue.empty()) return Status::InvalidArgument(fmt::format("job {}: empty queue", index));
  return Status::Ok();
}

bool IsOutcomeState(JobState s) {
  return s == JobState::kCompleted || s == JobState::kCancelled || s == JobState::kDiscarded ||
         s == JobState::kRetryable || s == JobState::kScheduled;
}

}  // namespace

// ---- insert -----------------------------------------------------------------------------------

Result<sqlite3_stmt*> SqliteQueries::InsertStmt(int rows, bool returning) {
  auto& slot = returning ? insert_returning_[static_cast<size_t>(rows)]
                         : insert_fast_[static_cast<size_t>(rows)];
  if (slot != nullptr) return slot;
  std::string sql =
      "INSERT INTO spool_job (created_at, state, max_attempts, scheduled_at, priority, queue, "
      "kind, args, metadata, tags) VALUES ";
  for (int r = 0; r < rows; ++r) {
    const int b = 1 + r * kInsertParamsPerRow;
    fmt::format_to(std::back_inserter(sql), "{}(?1,?{},?{},?{},?{},?{},?{},?{},?{},?{})",
                   r == 0 ? "" : ",", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 8,
                   b + 9);
  }
  if (returning) fmt::format_to(std::back_inserter(sql), " RETURNING {}", kJobColumns);
  SPOOL_ASSIGN_OR_RETURN(slot, cache_.Get(sql));
  return slot;
}

Result<int64_t> SqliteQueries::Insert(const JobInsertManyParams& params, std::vector<JobRow>* out) {
  const auto& jobs = params.jobs;
  for (size_t i = 0; i < jobs.size(); ++i) SPOOL_RETURN_IF_ERROR(ValidateInsert(jobs[i], i));
  if (jobs.empty()) return int64_t{0};

  SPOOL_ASSIGN_OR_RETURN(auto scope, WriteScope::Begin(cache_));
  const size_t first_out = out != nullptr ? out->size() : 0;
  int64_t inserted = 0;
  // Tags JSON must stay alive until the chunk has run (bound without a copy); a deque never
  // moves its elements, so short-string buffers stay put.
  std::deque<std::string> tag_json;
  for (size_t start = 0; start < jobs.size(); start += kInsertChunk) {
    const size_t n = std::min(jobs.size() - start, static_cast<size_t>(kInsertChunk));
    SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, InsertStmt(static_cast<int>(n), out != nullptr));
    StmtScope use(stmt);
    tag_json.clear();
    int rc = sqlite3_bind_int64(stmt, 1, Micros(params.now));
    for (size_t r = 0; r < n && rc == SQLITE_OK; ++r) {
      const JobInsertParams& job = jobs[start + r];
      const int b = 1 + static_cast<int>(r) * kInsertParamsPerRow;
      std::string_view tags = "[]";
      if (!job.tags.empty()) tags = tag_json.emplace_back(nlohmann::json(job.tags).dump());
      if ((rc = BindText(stmt, b + 1, JobStateName(job.state))) != SQLITE_OK) break;
      if ((rc = sqlite3_bind_int(stmt, b + 2, job.max_attempts)) != SQLITE_OK) break;
      if ((rc = sqlite3_bind_int64(stmt, b + 3, Micros(job.scheduled_at))) != SQLITE_OK) break;
      if ((rc = sqlite3_bind_int(stmt, b + 4, job.priority)) != SQLITE_OK) break;
      if ((rc = BindText(stmt, b + 5, job.queue)) != SQLITE_OK) break;
      if ((rc = BindText(stmt, b + 6, job.kind)) != SQLITE_OK) break;
      if ((rc = BindText(stmt, b + 7, job.args)) != SQLITE_OK) break;
      if ((rc = BindText(stmt, b + 8, job.metadata)) != SQLITE_OK) break;
      rc = BindText(stmt, b + 9, tags);
    }
    SPOOL_RETURN_IF_ERROR(CheckBind(rc, stmt));
    if (out != nullptr) {
      SPOOL_RETURN_IF_ERROR(ReadJobRows(stmt, "insert jobs", out));
    } else {
      SPOOL_RETURN_IF_ERROR(StepDone(stmt, "insert jobs"));
    }
    inserted += static_cast<int64_t>(n);
  }
  SPOOL_RETURN_IF_ERROR(scope->Commit());
  if (out != nullptr) {
    // RETURNING order is unspecified; ids grow in insertion (= input) order.
    std::sort(out->begin() + static_cast<std::ptrdiff_t>(first_out), out->end(),
              [](const JobRow& a, const JobRow& b) { return a.id < b.id; });
  }
  return inserted;
}

Result<std::vector<JobRow>> SqliteQueries::JobInsertMany(const JobInsertManyParams& params) {
  std::vector<JobRow> rows;
  rows.reserve(params.jobs.size());
  SPOOL_RETURN_IF_ERROR(Insert(params, &rows).status());
  return rows;
}

Result<int64_t> SqliteQueries::JobInsertManyFast(const JobInsertManyParams& params) {
  return Insert(params, nullptr);
}

// ---- fetch ------------------------------------------------------------------------------------

Result<std::vector<JobRow>> SqliteQueries::JobGetAvailable(const JobGetAvailableParams& params) {
  std::vector<JobRow> rows;
  if (params.max <= 0) return rows;
  // attempted_by keeps the last 100 client ids. Short lists (nearly all) grow by plain string
  // concatenation of the pre-encoded JSON string ?2: running the JSON functions on every claimed
  // row was a visible share of the claim. An entry takes at least 3 characters ("" and a comma),
  // so a list shorter than 298 characters has fewer than 99 entries and may grow without a
  // count; longer ones take the JSON path, which enforces the cap.
  static const std::string kSql = fmt::format(
      "UPDATE spool_job SET state = 'running', attempt = attempt + 1, attempted_at = ?1, "
      "attempted_by = CASE WHEN attempted_by = '[]' THEN '[' || ?2 || ']' "
      "WHEN length(attempted_by) < 298 "
      "THEN substr(attempted_by, 1, length(attempted_by) - 1) || ',' || ?2 || ']' "
      "WHEN json_array_length(attempted_by) < 100 "
      "THEN json_insert(attempted_by, '$[#]', json(?2)) "
      "ELSE json_insert(json_remove(attempted_by, '$[0]'), '$[#]', json(?2)) END "
      "WHERE id IN (SELECT id FROM spool_job WHERE state = 'available' AND queue = ?3 "
      "AND scheduled_at <= ?1 ORDER BY priority, scheduled_at, id LIMIT ?4) "
      "RETURNING {}",
      kJobColumns);
  SPOOL_ASSIGN_OR_RETURN(auto scope, WriteScope::Begin(cache_));
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache_.Get(kSql));
  {
    StmtScope use(stmt);
    int rc = sqlite3_bind_int64(stmt, 1, Micros(params.now));
    const std::string client_json = nlohmann::json(params.client_id).dump();
    if (rc == SQLITE_OK) rc = BindText(stmt, 2, client_json);
    if (rc == SQLITE_OK) rc = BindText(stmt, 3, params.queue);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int(stmt, 4, params.max);
    SPOOL_RETURN_IF_ERROR(CheckBind(rc, stmt));
    rows.reserve(static_cast<size_t>(std::min(params.max, 1000)));
    SPOOL_RETURN_IF_ERROR(ReadJobRows(stmt, "fetch jobs", &rows));
  }
  SPOOL_RETURN_IF_ERROR(scope->Commit());
  std::sort(rows.begin(), rows.end(), [](const JobRow& a, const JobRow& b) {
    if (a.priority != b.priority) return a.priority < b.priority;
    if (a.scheduled_at != b.scheduled_at) return a.scheduled_at < b.scheduled_at;
    return a.id < b.id;
  });
  return rows;
}

// ---- outcomes ---------------------------------------------------------------------------------

Result<sqlite3_stmt*> SqliteQueries::CompleteStmt(int rows) {
  auto& slot = complete_[static_cast<size_t>(rows)];
  if (slot != nullptr) return slot;
  std::string sql =
      "UPDATE spool_job SET state = 'completed', finalized_at = u.column2 FROM (VALUES ";
  for (int r = 0; r < rows; ++r) sql += r == 0 ? "(?,?)" : ",(?,?)";
  sql += ") AS u WHERE spool_job.id = u.column1 AND spool_job.state = 'running'";
  SPOOL_ASSIGN_OR_RETURN(slot, cache_.Get(sql));
  return slot;
}

Result<sqlite3_stmt*> SqliteQueries::SetStateStmt(int rows) {
  auto& slot = set_state_[static_cast<size_t>(rows)];
  if (slot != nullptr) return slot;
  // u: (id, new state, at, error JSON or NULL).
  std::string sql =
      "UPDATE spool_job SET state = u.column2, "
      "finalized_at = CASE WHEN u.column2 IN ('completed', 'cancelled', 'discarded') "
      "THEN u.column3 ELSE NULL END, "
      "scheduled_at = CASE WHEN u.column2 IN ('retryable', 'scheduled') "
      "THEN u.column3 ELSE spool_job.scheduled_at END, "
      "attempt = CASE WHEN u.column2 = 'scheduled' "
      "THEN max(spool_job.attempt - 1, 0) ELSE spool_job.attempt END, "
      "errors = CASE WHEN u.column4 IS NULL THEN spool_job.errors "
      "ELSE json_insert(spool_job.errors, '$[#]', json(u.column4)) END "
      "FROM (VALUES ";
  for (int r = 0; r < rows; ++r) sql += r == 0 ? "(?,?,?,?)" : ",(?,?,?,?)";
  sql += ") AS u WHERE spool_job.id = u.column1 AND spool_job.state = 'running'";
  SPOOL_ASSIGN_OR_RETURN(slot, cache_.Get(sql));
  return slot;
}

Result<int64_t> SqliteQueries::JobSetStateIfRunningMany(
    const JobSetStateIfRunningManyParams& params) {
  // Completed without an error is nearly every outcome: it gets a narrower statement that binds
  // two values a row. Everything else shares one general statement.
  std::vector<const JobSetStateParams*> completed;
  std::vector<const JobSetStateParams*> other;
  completed.reserve(params.jobs.size());
  for (const auto& job : params.jobs) {
    if (!IsOutcomeState(job.state)) {
      return Status::InvalidArgument(
          fmt::format("job {}: cannot set state {}: use completed, cancelled, discarded, "
                      "retryable or scheduled",
                      job.id, JobStateName(job.state)));
    }
    if (job.state == JobState::kCompleted && !job.error.has_value()) {
      completed.push_back(&job);
    } else {
      other.push_back(&job);
    }
  }
  if (params.jobs.empty()) return int64_t{0};

  SPOOL_ASSIGN_OR_RETURN(auto scope, WriteScope::Begin(cache_));
  int64_t changed = 0;
  for (size_t start = 0; start < completed.size(); start += kUpdateChunk) {
    const size_t n = std::min(completed.size() - start, static_cast<size_t>(kUpdateChunk));
    SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, CompleteStmt(static_cast<int>(n)));
    StmtScope use(stmt);
    int rc = SQLITE_OK;
    for (size_t r = 0; r < n && rc == SQLITE_OK; ++r) {
      const int b = static_cast<int>(r) * 2;
      rc = sqlite3_bind_int64(stmt, b + 1, completed[start + r]->id);
      if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, b + 2, Micros(completed[start + r]->at));
    }
    SPOOL_RETURN_IF_ERROR(CheckBind(rc, stmt));
    SPOOL_RETURN_IF_ERROR(StepDone(stmt, "complete jobs"));
    changed += sqlite3_changes64(cache_.db());
  }
  std::vector<std::string> error_json;
  for (size_t start = 0; start < other.size(); start += kUpdateChunk) {
    const size_t n = std::min(other.size() - start, static_cast<size_t>(kUpdateChunk));
    SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, SetStateStmt(static_cast<int>(n)));
    StmtScope use(stmt);
    error_json.clear();
    error_json.reserve(n);  // bound without a copy: must not reallocate
    int rc = SQLITE_OK;
    for (size_t r = 0; r < n && rc == SQLITE_OK; ++r) {
      const JobSetStateParams& job = *other[start + r];
      const int b = static_cast<int>(r) * 4;
      rc = sqlite3_bind_int64(stmt, b + 1, job.id);
      if (rc == SQLITE_OK) rc = BindText(stmt, b + 2, JobStateName(job.state));
      if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, b + 3, Micros(job.at));
      if (rc == SQLITE_OK) {
        if (job.error.has_value()) {
          rc = BindText(stmt, b + 4, error_json.emplace_back(ErrorJson(*job.error)));
        } else {
          rc = sqlite3_bind_null(stmt, b + 4);
        }
      }
    }
    SPOOL_RETURN_IF_ERROR(CheckBind(rc, stmt));
    SPOOL_RETURN_IF_ERROR(StepDone(stmt, "set job states"));
    changed += sqlite3_changes64(cache_.db());
  }
  SPOOL_RETURN_IF_ERROR(scope->Commit());
  return changed;
}

// ---- scheduler --------------------------------------------------------------------------------

Result<JobScheduleResult> SqliteQueries::JobSchedule(const JobScheduleParams& params) {
  JobScheduleResult result;
  if (params.max <= 0) return result;
  // The state test matches the partial index's WHERE term word for word, so SQLite uses it.
  constexpr std::string_view kSql =
      "UPDATE spool_job SET state = 'available' WHERE id IN (SELECT id FROM spool_job "
      "WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= ?1 "
      "ORDER BY scheduled_at, id LIMIT ?2) RETURNING queue";
  SPOOL_ASSIGN_OR_RETURN(auto scope, WriteScope::Begin(cache_));
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache_.Get(kSql));
  std::set<std::string, std::less<>> queues;
  {
    StmtScope use(stmt);
    int rc = sqlite3_bind_int64(stmt, 1, Micros(params.now));
    if (rc == SQLITE_OK) rc = sqlite3_bind_int(stmt, 2, params.max);
    SPOOL_RETURN_IF_ERROR(CheckBind(rc, stmt));
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      ++result.count;
      std::string_view q = ColumnText(stmt, 0);
      if (queues.find(q) == queues.end()) queues.emplace(q);
    }
    if (rc != SQLITE_DONE) return SqliteStatus(rc, cache_.db(), "schedule jobs");
  }
  SPOOL_RETURN_IF_ERROR(scope->Commit());
  result.queues.assign(queues.begin(), queues.end());
  return result;
}

// ---- reads ------------------------------------------------------------------------------------

Result<JobRow> SqliteQueries::JobGetByID(int64_t id) {
  static const std::string kSql =
      fmt::format("SELECT {} FROM spool_job WHERE id = ?1", kJobColumns);
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache_.Get(kSql));
  StmtScope use(stmt);
  SPOOL_RETURN_IF_ERROR(CheckBind(sqlite3_bind_int64(stmt, 1, id), stmt));
  std::vector<JobRow> rows;
  SPOOL_RETURN_IF_ERROR(ReadJobRows(stmt, "get job", &rows));
  if (rows.empty()) return Status::NotFound(fmt::format("no job with id {}", id));
  return std::move(rows.front());
}

Result<std::vector<JobRow>> SqliteQueries::JobList(const JobListParams& params) {
  if (params.limit < 1) {
    return Status::InvalidArgument(
        fmt::format("job list limit {} must be at least 1", params.limit));
  }
  std::string sql = fmt::format("SELECT {} FROM spool_job WHERE id > ?", kJobColumns);
  if (!params.states.empty()) {
    sql += " AND state IN (";
    for (size_t i = 0; i < params.states.size(); ++i) sql += i == 0 ? "?" : ",?";
    sql += ")";
  }
  if (!params.queue.empty()) sql += " AND queue = ?";
  if (!params.kind.empty()) sql += " AND kind = ?";
  sql += " ORDER BY id LIMIT ?";
  // The shapes are few (state count x queue x kind), so caching by text stays small.
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache_.Get(sql));
  StmtScope use(stmt);
  int i = 1;
  int rc = sqlite3_bind_int64(stmt, i++, params.after_id);
  for (JobState s : params.states) {
    if (rc == SQLITE_OK) rc = BindText(stmt, i++, JobStateName(s));
  }
  if (rc == SQLITE_OK && !params.queue.empty()) rc = BindText(stmt, i++, params.queue);
  if (rc == SQLITE_OK && !params.kind.empty()) rc = BindText(stmt, i++, params.kind);
  if (rc == SQLITE_OK) rc = sqlite3_bind_int(stmt, i++, params.limit);
  SPOOL_RETURN_IF_ERROR(CheckBind(rc, stmt));
  std::vector<JobRow> rows;
  SPOOL_RETURN_IF_ERROR(ReadJobRows(stmt, "list jobs", &rows));
  return rows;
}

Result<std::map<JobState, int64_t>> SqliteQueries::JobCountByState(std::string_view queue) {
  const std::string_view sql =
      queue.empty() ? "SELECT state, count(*) FROM spool_job GROUP BY state"
                    : "SELECT state, count(*) FROM spool_job WHERE queue = ?1 GROUP BY state";
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache_.Get(sql));
  StmtScope use(stmt);
  if (!queue.empty()) SPOOL_RETURN_IF_ERROR(CheckBind(BindText(stmt, 1, queue), stmt));
  std::map<JobState, int64_t> counts;
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    SPOOL_ASSIGN_OR_RETURN(JobState state, ParseJobState(ColumnText(stmt, 0)));
    counts[state] = sqlite3_column_int64(stmt, 1);
  }
  if (rc != SQLITE_DONE) return SqliteStatus(rc, cache_.db(), "count jobs");
  return counts;
}

}  // namespace spool::internal
