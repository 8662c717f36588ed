#include "driver/sqlite/sqlite_queries.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <deque>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <span>
#include <string>
#include <utility>

#include "driver/row_json.h"
#include "driver/state_codes.h"

namespace spool::internal {

namespace {

// Column order read by RawJobRows.
constexpr std::string_view kJobColumns =
    "id, state, attempt, max_attempts, attempted_at, attempted_by, created_at, scheduled_at, "
    "finalized_at, priority, queue, kind, args, metadata, tags, errors";

int64_t Micros(TimePoint t) { return t.time_since_epoch().count(); }
TimePoint FromMicros(int64_t us) { return TimePoint(Duration(us)); }

std::optional<int64_t> OptionalInt(sqlite3_stmt* stmt, int col) {
  if (sqlite3_column_type(stmt, col) == SQLITE_NULL) return std::nullopt;
  return sqlite3_column_int64(stmt, col);
}

std::optional<TimePoint> OptionalTime(std::optional<int64_t> us) {
  if (!us) return std::nullopt;
  return FromMicros(*us);
}

// Steps `stmt` to the end, copying every row into `raw`.
Status StepInto(sqlite3_stmt* stmt, std::string_view context, RawJobRows* raw) {
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) raw->Append(stmt);
  if (rc != SQLITE_DONE) return SqliteStatus(rc, sqlite3_db_handle(stmt), context);
  return Status::Ok();
}

// Steps `stmt` to the end, decoding every row into `out`.
Status ReadJobRows(sqlite3_stmt* stmt, std::string_view context, std::vector<JobRow>* out) {
  RawJobRows raw;
  SPOOL_RETURN_IF_ERROR(StepInto(stmt, context, &raw));
  out->reserve(out->size() + raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    SPOOL_ASSIGN_OR_RETURN(JobRow row, raw.Decode(i));
    out->push_back(std::move(row));
  }
  return Status::Ok();
}

Status CheckBind(int rc, sqlite3_stmt* stmt) {
  if (rc == SQLITE_OK) return Status::Ok();
  return SqliteStatus(rc, sqlite3_db_handle(stmt), "bind");
}

// The columns an insert writes besides created_at (?1, shared by every row), in statement order.
enum InsertColumn {
  kState,
  kMaxAttempts,
  kScheduledAt,
  kPriority,
  kQueue,
  kKind,
  kArgs,
  kMetadata,
  kTags,
  kInsertColumns
};
constexpr std::array<std::string_view, kInsertColumns> kInsertColumnNames = {
    "state", "max_attempts", "scheduled_at", "priority", "queue",
    "kind",  "args",         "metadata",     "tags"};

// How a piece of an insert passes each column (SqliteQueries::InsertLayout).
enum class Pass : uint8_t { kPerRow, kShared, kDefault };
using LayoutColumns = std::array<Pass, kInsertColumns>;
constexpr std::array<LayoutColumns, SqliteQueries::kInsertLayouts> kLayouts = {{
    // kInsertPerRow: every value for every row.
    {Pass::kPerRow, Pass::kPerRow, Pass::kPerRow, Pass::kPerRow, Pass::kPerRow, Pass::kPerRow,
     Pass::kPerRow, Pass::kPerRow, Pass::kPerRow},
    // kInsertNoExtras: metadata and tags left to the table's defaults ('{}' and '[]').
    {Pass::kPerRow, Pass::kPerRow, Pass::kPerRow, Pass::kPerRow, Pass::kPerRow, Pass::kPerRow,
     Pass::kPerRow, Pass::kDefault, Pass::kDefault},
    // kInsertShared: jobs alike but for args and scheduled_at, bound once for the piece.
    {Pass::kShared, Pass::kShared, Pass::kPerRow, Pass::kShared, Pass::kShared, Pass::kShared,
     Pass::kPerRow, Pass::kShared, Pass::kShared},
}};

// The layout for a piece: alike jobs share their values; without metadata and tags, those are
// left out.
SqliteQueries::InsertLayout ChooseLayout(std::span<const JobInsertParams> piece) {
  const JobInsertParams& a = piece.front();
  const bool alike = std::all_of(piece.begin() + 1, piece.end(), [&](const JobInsertParams& b) {
    return b.state == a.state && b.max_attempts == a.max_attempts && b.priority == a.priority &&
           b.queue == a.queue && b.kind == a.kind && b.metadata == a.metadata && b.tags == a.tags;
  });
  if (alike) return SqliteQueries::kInsertShared;
  const bool extras = std::any_of(piece.begin(), piece.end(), [](const JobInsertParams& j) {
    return j.metadata != "{}" || !j.tags.empty();
  });
  return extras ? SqliteQueries::kInsertPerRow : SqliteQueries::kInsertNoExtras;
}

int BindInsertValue(sqlite3_stmt* stmt, int index, const JobInsertParams& job, InsertColumn col,
                    std::deque<std::string>& tag_json) {
  switch (col) {
    case kState:
      return sqlite3_bind_int(stmt, index, StateCode(job.state));
    case kMaxAttempts:
      return sqlite3_bind_int(stmt, index, job.max_attempts);
    case kScheduledAt:
      return sqlite3_bind_int64(stmt, index, Micros(job.scheduled_at));
    case kPriority:
      return sqlite3_bind_int(stmt, index, job.priority);
    case kQueue:
      return BindText(stmt, index, job.queue);
    case kKind:
      return BindText(stmt, index, job.kind);
    case kArgs:
      return BindText(stmt, index, job.args);
    case kMetadata:
      return BindText(stmt, index, job.metadata);
    case kTags:
      if (job.tags.empty()) return BindText(stmt, index, "[]");
      return BindText(stmt, index, tag_json.emplace_back(nlohmann::json(job.tags).dump()));
    case kInsertColumns:
      break;
  }
  return SQLITE_MISUSE;
}

// Binds `pass` values of `job` from parameter `next` on, in column order; returns the first
// parameter after them through `next`.
int BindInsertValues(sqlite3_stmt* stmt, int* next, const JobInsertParams& job,
                     SqliteQueries::InsertLayout layout, Pass pass,
                     std::deque<std::string>& tag_json) {
  for (int c = 0; c < kInsertColumns; ++c) {
    if (kLayouts[static_cast<size_t>(layout)][static_cast<size_t>(c)] != pass) continue;
    const int rc = BindInsertValue(stmt, (*next)++, job, static_cast<InsertColumn>(c), tag_json);
    if (rc != SQLITE_OK) return rc;
  }
  return SQLITE_OK;
}

// ReadJobRows for inserts: every row read is a new one (duplicate = false).
Status ReadInsertedRows(sqlite3_stmt* stmt, std::string_view context,
                        std::vector<JobInsertResult>* out) {
  std::vector<JobRow> rows;
  SPOOL_RETURN_IF_ERROR(ReadJobRows(stmt, context, &rows));
  for (JobRow& row : rows) out->push_back(JobInsertResult{std::move(row), false});
  return Status::Ok();
}

}  // namespace

// ---- raw rows ---------------------------------------------------------------------------------

void RawJobRows::Append(sqlite3_stmt* stmt) {
  // Column numbers in kJobColumns of the integers and of the text columns, in Row's order.
  static constexpr std::array<int, 7> kInts = {0, 1, 2, 3, 6, 7, 9};
  static constexpr std::array<int, 7> kTexts = {5, 10, 11, 12, 13, 14, 15};
  Row& row = rows_.emplace_back();
  for (size_t k = 0; k < kInts.size(); ++k) row.ints[k] = sqlite3_column_int64(stmt, kInts[k]);
  row.attempted_at = OptionalInt(stmt, 4);
  row.finalized_at = OptionalInt(stmt, 8);
  for (size_t k = 0; k < kTexts.size(); ++k) {
    const std::string_view t = ColumnText(stmt, kTexts[k]);
    row.text[k] = {text_.size(), t.size()};
    text_.append(t);
  }
}

void RawJobRows::AppendClaimed(sqlite3_value** values, std::string_view queue) {
  // values: kClaimedColumns. Row: ints id, state, attempt, max_attempts, created_at,
  // scheduled_at, priority; texts attempted_by, queue, kind, args, metadata, tags, errors.
  Row& row = rows_.emplace_back();
  row.ints = {sqlite3_value_int64(values[0]), StateCode(JobState::kAvailable),
              sqlite3_value_int64(values[1]), sqlite3_value_int64(values[2]),
              sqlite3_value_int64(values[4]), sqlite3_value_int64(values[5]),
              sqlite3_value_int64(values[6])};
  if (!claimed_queue_) {
    claimed_queue_ = Span{text_.size(), queue.size()};
    text_.append(queue);
  }
  static constexpr std::array<int, 7> kTexts = {3, -1, 7, 8, 9, 10, 11};  // -1: the queue
  for (size_t k = 0; k < kTexts.size(); ++k) {
    if (kTexts[k] < 0) {
      row.text[k] = *claimed_queue_;
      continue;
    }
    sqlite3_value* v = values[kTexts[k]];
    const auto* text = reinterpret_cast<const char*>(sqlite3_value_text(v));
    const auto size = static_cast<size_t>(sqlite3_value_bytes(v));
    row.text[k] = {text_.size(), size};
    if (size > 0) text_.append(text, size);
  }
}

Status RawJobRows::Reorder(const std::vector<int64_t>& ids) {
  std::vector<std::pair<int64_t, size_t>> by_id(rows_.size());
  for (size_t i = 0; i < rows_.size(); ++i) by_id[i] = {rows_[i].ints[0], i};
  std::sort(by_id.begin(), by_id.end());
  std::vector<Row> ordered;
  ordered.reserve(ids.size());
  for (int64_t id : ids) {
    auto it = std::lower_bound(by_id.begin(), by_id.end(), std::pair<int64_t, size_t>{id, 0});
    if (it == by_id.end() || it->first != id) {
      return Status::Internal(fmt::format("claim: job {} was read but not updated", id));
    }
    ordered.push_back(rows_[it->second]);
  }
  if (ordered.size() != rows_.size()) {
    return Status::Internal(
        fmt::format("claim: {} jobs read but {} updated", ids.size(), rows_.size()));
  }
  rows_.swap(ordered);
  return Status::Ok();
}

Result<JobRow> RawJobRows::Decode(size_t i) const {
  Result<JobRow> row = DecodeRow(rows_[i]);
  if (!row) return UnreadableRowError(std::to_string(id(i)), row.error());
  return row;
}

Result<JobRow> RawJobRows::DecodeRow(const Row& r) const {
  JobRow row;
  row.id = r.ints[0];
  SPOOL_ASSIGN_OR_RETURN(row.state, InColumn("state", StateFromCode(r.ints[1])));
  row.attempt = static_cast<int>(r.ints[2]);
  row.max_attempts = static_cast<int>(r.ints[3]);
  row.attempted_at = OptionalTime(r.attempted_at);
  SPOOL_ASSIGN_OR_RETURN(row.attempted_by, InColumn("attempted_by", ParseStringArray(Text(r, 0))));
  row.created_at = FromMicros(r.ints[4]);
  row.scheduled_at = FromMicros(r.ints[5]);
  row.finalized_at = OptionalTime(r.finalized_at);
  row.priority = static_cast<int>(r.ints[6]);
  row.queue = Text(r, 1);
  row.kind = Text(r, 2);
  row.args = Text(r, 3);
  row.metadata = Text(r, 4);
  SPOOL_ASSIGN_OR_RETURN(row.tags, InColumn("tags", ParseStringArray(Text(r, 5))));
  SPOOL_ASSIGN_OR_RETURN(row.errors, InColumn("errors", ParseErrors(Text(r, 6))));
  return row;
}

// ---- insert -----------------------------------------------------------------------------------

// Batches come in every size, and a statement prepared for each size a chunk came in gave a
// long-running client up to 128 statements of each kind: 10.6 MB, and 120 ms of the writer to
// prepare them (2.3 ms for the largest alone, holding the writer). So a chunk goes in pieces whose
// sizes are powers of two: at most 8 statements of each kind and column list, and a chunk of n rows
// takes popcount(n) statements, a few microseconds each beyond its rows.
static_assert(std::has_single_bit(static_cast<unsigned>(SqliteQueries::kInsertChunk)),
              "inserts take power-of-two pieces of a chunk");

Result<sqlite3_stmt*> SqliteQueries::InsertStmt(int rows, bool returning, InsertLayout layout) {
  const auto size = static_cast<size_t>(std::countr_zero(static_cast<unsigned>(rows)));
  auto& slot = (returning ? insert_returning_ : insert_fast_)[static_cast<size_t>(layout)][size];
  if (slot != nullptr) return slot;
  const LayoutColumns& cols = kLayouts[static_cast<size_t>(layout)];
  // ?1 created_at, then the shared values, then each row's own, all in column order.
  std::string sql = "INSERT INTO spool_job (created_at";
  std::array<int, kInsertColumns> shared_param{};
  int next = 2;
  for (size_t c = 0; c < cols.size(); ++c) {
    if (cols[c] == Pass::kDefault) continue;
    fmt::format_to(std::back_inserter(sql), ", {}", kInsertColumnNames[c]);
    if (cols[c] == Pass::kShared) shared_param[c] = next++;
  }
  sql += ") VALUES ";
  for (int r = 0; r < rows; ++r) {
    sql += r == 0 ? "(?1" : ",(?1";
    for (size_t c = 0; c < cols.size(); ++c) {
      if (cols[c] == Pass::kShared) {
        fmt::format_to(std::back_inserter(sql), ",?{}", shared_param[c]);
      } else if (cols[c] == Pass::kPerRow) {
        fmt::format_to(std::back_inserter(sql), ",?{}", next++);
      }
    }
    sql += ')';
  }
  if (returning) fmt::format_to(std::back_inserter(sql), " RETURNING {}", kJobColumns);
  SPOOL_ASSIGN_OR_RETURN(slot, cache_.Get(sql));
  return slot;
}

Result<int64_t> SqliteQueries::Insert(const JobInsertManyParams& params,
                                      std::vector<JobInsertResult>* out) {
  const auto& jobs = params.jobs;
  SPOOL_RETURN_IF_ERROR(
      CheckInsertRows(params, std::numeric_limits<int>::max(), /*returns_rows=*/out != nullptr));
  const bool any_unique = std::any_of(
      jobs.begin(), jobs.end(), [](const JobInsertParams& j) { return !j.unique_key.empty(); });
  if (jobs.empty()) return int64_t{0};
  if (any_unique) return InsertUnique(params, out);

  SPOOL_ASSIGN_OR_RETURN(auto scope, WriteScope::Begin(cache_));
  const size_t first_out = out != nullptr ? out->size() : 0;
  int64_t inserted = 0;
  // Tags JSON must stay alive until the chunk has run (bound without a copy); a deque never
  // moves its elements, so short-string buffers stay put.
  std::deque<std::string> tag_json;
  for (size_t start = 0, n = 0; start < jobs.size(); start += n) {
    n = std::bit_floor(std::min(jobs.size() - start, static_cast<size_t>(kInsertChunk)));
    const auto piece = std::span(jobs).subspan(start, n);
    const InsertLayout layout = ChooseLayout(piece);
    SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt,
                           InsertStmt(static_cast<int>(n), out != nullptr, layout));
    StmtScope use(stmt);
    tag_json.clear();
    int rc = sqlite3_bind_int64(stmt, 1, Micros(params.now));
    int next = 2;
    if (rc == SQLITE_OK) {
      rc = BindInsertValues(stmt, &next, piece.front(), layout, Pass::kShared, tag_json);
    }
    for (size_t r = 0; r < n && rc == SQLITE_OK; ++r) {
      rc = BindInsertValues(stmt, &next, piece[r], layout, Pass::kPerRow, tag_json);
    }
    SPOOL_RETURN_IF_ERROR(CheckBind(rc, stmt));
    if (out != nullptr) {
      SPOOL_RETURN_IF_ERROR(ReadInsertedRows(stmt, "insert jobs", out));
    } else {
      SPOOL_RETURN_IF_ERROR(StepDone(stmt, "insert jobs"));
    }
    inserted += static_cast<int64_t>(n);
  }
  if (out != nullptr) {
    // RETURNING order is unspecified; ids grow in insertion (= input) order.
    std::sort(
        out->begin() + static_cast<std::ptrdiff_t>(first_out), out->end(),
        [](const JobInsertResult& a, const JobInsertResult& b) { return a.job.id < b.job.id; });
    SPOOL_RETURN_IF_ERROR(ClaimInserted(params, out->data() + first_out));
  }
  SPOOL_RETURN_IF_ERROR(scope->Commit());
  return inserted;
}

Status SqliteQueries::ClaimInserted(const JobInsertManyParams& params, JobInsertResult* rows) {
  // The rows were inserted available in this transaction, so no other claim can have taken them;
  // only a paused queue keeps them available.
  static const std::string kClaim =
      "UPDATE spool_job SET state = " SPOOL_RUNNING
      ", attempt = 1, attempted_at = ?1, "
      "attempted_by = ?2 WHERE id IN (SELECT value FROM json_each(?3)) "
      "AND NOT EXISTS (SELECT 1 FROM spool_queue WHERE name = spool_job.queue "
      "AND paused_at IS NOT NULL) RETURNING id";
  std::vector<int64_t> to_claim;
  for (size_t i = 0; i < params.jobs.size(); ++i) {
    if (params.jobs[i].claim) to_claim.push_back(rows[i].job.id);
  }
  if (to_claim.empty()) return Status::Ok();
  const std::string ids = nlohmann::json(to_claim).dump();
  const std::string attempted_by = nlohmann::json::array({params.claim_for}).dump();
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache_.Get(kClaim));
  StmtScope use(stmt);
  int rc = sqlite3_bind_int64(stmt, 1, Micros(params.now));
  if (rc == SQLITE_OK) rc = BindText(stmt, 2, attempted_by);
  if (rc == SQLITE_OK) rc = BindText(stmt, 3, ids);
  SPOOL_RETURN_IF_ERROR(CheckBind(rc, stmt));
  std::vector<int64_t> claimed;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) claimed.push_back(sqlite3_column_int64(stmt, 0));
  if (rc != SQLITE_DONE) return SqliteStatus(rc, cache_.db(), "claim inserted jobs");
  std::sort(claimed.begin(), claimed.end());
  for (size_t i = 0; i < params.jobs.size(); ++i) {
    JobRow& row = rows[i].job;
    if (!params.jobs[i].claim || !std::binary_search(claimed.begin(), claimed.end(), row.id)) {
      continue;
    }
    // What the UPDATE wrote.
    row.state = JobState::kRunning;
    row.attempt = 1;
    row.attempted_at = params.now;
    row.attempted_by = {params.claim_for};
  }
  return Status::Ok();
}

Result<int64_t> SqliteQueries::InsertUnique(const JobInsertManyParams& params,
                                            std::vector<JobInsertResult>* out) {
  // The unique key's uniqueness is the partial index's: a concurrent writer (another process)
  // waits for the write lock and then finds the row through the conflict, never a second row.
  static const std::string kInsertSql = fmt::format(
      "INSERT INTO spool_job (created_at, state, max_attempts, scheduled_at, priority, queue, "
      "kind, args, metadata, tags, unique_key, unique_states) "
      "VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12) ON CONFLICT DO NOTHING RETURNING {}",
      kJobColumns);
  // The WHERE terms repeat the unique index's, so the lookup uses it.
  static const std::string kExistingSql = fmt::format(
      "SELECT {} FROM spool_job WHERE unique_key = ?1 AND unique_key IS NOT NULL AND "
      "unique_states IS NOT NULL AND (unique_states >> state) & 1 = 1",
      kJobColumns);
  const auto& jobs = params.jobs;
  SPOOL_ASSIGN_OR_RETURN(auto scope, WriteScope::Begin(cache_));

  JobInsertManyParams plain;
  plain.now = params.now;
  std::vector<size_t> plain_pos;
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (!jobs[i].unique_key.empty()) continue;
    plain.jobs.push_back(jobs[i]);
    plain_pos.push_back(i);
  }
  std::vector<JobInsertResult> results;
  std::vector<JobInsertResult> plain_rows;
  if (out != nullptr) results.resize(jobs.size());
  int64_t inserted = 0;
  if (!plain.jobs.empty()) {
    SPOOL_ASSIGN_OR_RETURN(inserted, Insert(plain, out != nullptr ? &plain_rows : nullptr));
    for (size_t k = 0; k < plain_rows.size(); ++k) results[plain_pos[k]] = std::move(plain_rows[k]);
  }

  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * insert, cache_.Get(kInsertSql));
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * existing, cache_.Get(kExistingSql));
  std::deque<std::string> tag_json;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const JobInsertParams& job = jobs[i];
    if (job.unique_key.empty()) continue;
    std::vector<JobInsertResult> row;
    {
      StmtScope use(insert);
      tag_json.clear();
      int rc = sqlite3_bind_int64(insert, 1, Micros(params.now));
      int next = 2;
      if (rc == SQLITE_OK) {
        rc = BindInsertValues(insert, &next, job, kInsertPerRow, Pass::kPerRow, tag_json);
      }
      if (rc == SQLITE_OK) {
        rc = sqlite3_bind_blob64(insert, 11, job.unique_key.data(), job.unique_key.size(),
                                 SQLITE_STATIC);
      }
      if (rc == SQLITE_OK) rc = sqlite3_bind_int(insert, 12, job.unique_states);
      SPOOL_RETURN_IF_ERROR(CheckBind(rc, insert));
      SPOOL_RETURN_IF_ERROR(ReadInsertedRows(insert, "insert unique job", &row));
    }
    if (!row.empty()) {
      ++inserted;
      if (out != nullptr) results[i] = std::move(row.front());
      continue;
    }
    if (out == nullptr) continue;
    StmtScope use(existing);
    SPOOL_RETURN_IF_ERROR(CheckBind(sqlite3_bind_blob64(existing, 1, job.unique_key.data(),
                                                        job.unique_key.size(), SQLITE_STATIC),
                                    existing));
    SPOOL_RETURN_IF_ERROR(ReadInsertedRows(existing, "read unique job", &row));
    if (row.empty()) {
      return Status::Internal(
          fmt::format("job {}: unique insert conflicted but no row holds its key", i));
    }
    results[i] = std::move(row.front());
    results[i].duplicate = true;
  }
  SPOOL_RETURN_IF_ERROR(scope->Commit());
  if (out != nullptr) {
    for (auto& r : results) out->push_back(std::move(r));
  }
  return inserted;
}

Result<std::vector<JobInsertResult>> SqliteQueries::JobInsertMany(
    const JobInsertManyParams& params) {
  std::vector<JobInsertResult> rows;
  rows.reserve(params.jobs.size());
  SPOOL_RETURN_IF_ERROR(Insert(params, &rows).status());
  return rows;
}

Result<int64_t> SqliteQueries::JobInsertManyFast(const JobInsertManyParams& params) {
  return Insert(params, nullptr);
}

// ---- fetch ------------------------------------------------------------------------------------

const std::string& SqliteFetchSql(bool after) {
  // ?1 now, ?2 the queue, ?3 how many; with `after`, ?4, ?5 and ?6 are its priority, scheduled_at
  // and id.
  // A paused queue is a LIMIT of 0, which SQLite evaluates once before it reads any row: as a
  // WHERE term (NOT EXISTS ...) it was tested row by row along the queue's whole index, 7 ms of
  // the writer's time for each fetch of a paused queue holding 50,000 jobs.
  static const std::string kFrom = "SELECT id FROM spool_job WHERE state = " SPOOL_AVAILABLE
                                   " AND queue = ?2 AND scheduled_at <= ?1 ";
  static const std::string kRest =
      "ORDER BY priority, scheduled_at, id LIMIT CASE WHEN EXISTS (SELECT 1 FROM spool_queue "
      "WHERE name = ?2 AND paused_at IS NOT NULL) THEN 0 ELSE ?3 END";
  static const std::string kFromStart = kFrom + kRest;
  static const std::string kAfter =
      kFrom + "AND (priority, scheduled_at, id) > (?4, ?5, ?6) " + kRest;
  return after ? kAfter : kFromStart;
}

Result<std::vector<JobRow>> SqliteQueries::JobGetAvailable(const JobGetAvailableParams& params) {
  SPOOL_ASSIGN_OR_RETURN(RawJobRows raw, ClaimAvailable(params));
  return FinishClaim(raw, params, nullptr);
}

Status SqliteQueries::GiveBack(const RawJobRows& raw, TimePoint now) {
  JobSetStateIfRunningManyParams back;
  back.jobs.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    const TimePoint at = raw.Decode(i).has_value() ? now : now + kUnreadableRowDelay;
    back.jobs.push_back({.id = raw.id(i), .state = JobState::kScheduled, .at = at, .error = {}});
  }
  return JobSetStateIfRunningMany(back).status();
}

namespace {

// The columns a claim's UPDATE hands to spool_claimed, in RawJobRows::AppendClaimed's order. The
// others it knows: the row was available (state, and so no finalized_at) in the claim's queue,
// and the claim overwrites attempted_at.
constexpr std::string_view kClaimedColumns =
    "id, attempt, max_attempts, attempted_by, created_at, scheduled_at, priority, kind, args, "
    "metadata, tags, errors";
constexpr int kClaimedColumnCount = 12;
constexpr const char* kClaimedRowsType = "spool_claimed_rows";

// The rows a claim's UPDATE marks, with the queue they were claimed from.
struct ClaimedRows {
  RawJobRows* rows;
  std::string_view queue;
};

// spool_claimed(rows, kClaimedColumns...): copies the row as the UPDATE found it into `rows`
// (bound with sqlite3_bind_pointer, which SQL text cannot forge) and returns its attempt. An
// UPDATE evaluates its SET expressions once for each row it writes, so every row marked is
// copied once.
void ClaimedFunction(sqlite3_context* ctx, int argc, sqlite3_value** argv) {
  auto* claimed = static_cast<ClaimedRows*>(sqlite3_value_pointer(argv[0], kClaimedRowsType));
  if (claimed == nullptr || argc != kClaimedColumnCount + 1) {
    sqlite3_result_error(ctx, "spool_claimed: no claimed rows bound", -1);
    return;
  }
  claimed->rows->AppendClaimed(argv + 1, claimed->queue);
  sqlite3_result_int64(ctx, sqlite3_value_int64(argv[2]));
}

}  // namespace

Result<RawJobRows> SqliteQueries::ClaimAvailable(const JobGetAvailableParams& params) {
  RawJobRows rows;
  if (params.max <= 0) return rows;
  SPOOL_RETURN_IF_ERROR(RegisterFunctions());
  // The SELECT reads only the ids, along the fetch index (SQLite 3.40 still looks up each row,
  // for the state the partial index already implies), then one UPDATE marks the rows read and
  // hands each to spool_claimed as it finds it, all in one write transaction (no other writer can
  // come between). A SELECT of whole rows cost 6,640 instructions a job, most of it reading 16
  // columns out of SQLite; the ids cost 1,930 and the copy inside the UPDATE 2,090 (callgrind,
  // docs/benchmarks.md). UPDATE ... RETURNING stores its rows in a temporary table before
  // handing them out, which cost more still.
  // attempted_by keeps the last 100 client ids. Short lists (nearly all) grow by plain string
  // concatenation of the pre-encoded JSON string ?2: running the JSON functions on every claimed
  // row was a visible share of the claim. An entry takes at least 3 characters ("" and a comma),
  // so a list shorter than 298 characters has fewer than 99 entries and may grow without a
  // count; longer ones take the JSON path, which enforces the cap. A job's first claim (most
  // claims) takes the whole list ?6, bound once: building it row by row was 2.6% of a claim.
  static const std::string kSet =
      "UPDATE spool_job SET state = " SPOOL_RUNNING ", attempt = spool_claimed(?5, " +
      std::string(kClaimedColumns) +
      ") + 1, attempted_at = ?1, "
      "attempted_by = CASE WHEN attempted_by = '[]' THEN ?6 "
      "WHEN length(attempted_by) < 298 "
      "THEN substr(attempted_by, 1, length(attempted_by) - 1) || ',' || ?2 || ']' "
      "WHEN json_array_length(attempted_by) < 100 "
      "THEN json_insert(attempted_by, '$[#]', json(?2)) "
      "ELSE json_insert(json_remove(attempted_by, '$[0]'), '$[#]', json(?2)) END ";
  static const std::string kUpdate = kSet + "WHERE id IN (SELECT value FROM json_each(?3))";
  // When the ids read are consecutive (a backlog of jobs inserted in a row, the usual case while
  // one queue drains), the rows are marked by their id range: a rowid range scan instead of
  // parsing a JSON list into a temporary index (the claim took 3.7% fewer instructions in a
  // 100-worker burn-down, callgrind). The rows of the range are exactly the rows read, as there are
  // as many of them as ids in it, and no other writer comes between the read and the update.
  static const std::string kUpdateRange = kSet + "WHERE id BETWEEN ?3 AND ?4";
  SPOOL_ASSIGN_OR_RETURN(auto scope, WriteScope::Begin(cache_));
  std::vector<int64_t> ids;
  {
    SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt,
                           cache_.Get(SqliteFetchSql(params.after.has_value())));
    StmtScope use(stmt);
    int rc = sqlite3_bind_int64(stmt, 1, Micros(params.now));
    if (rc == SQLITE_OK) rc = BindText(stmt, 2, params.queue);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int(stmt, 3, params.max);
    if (rc == SQLITE_OK && params.after) {
      rc = sqlite3_bind_int(stmt, 4, params.after->priority);
      if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, 5, Micros(params.after->scheduled_at));
      if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, 6, params.after->id);
    }
    SPOOL_RETURN_IF_ERROR(CheckBind(rc, stmt));
    ids.reserve(static_cast<size_t>(params.max));
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) ids.push_back(sqlite3_column_int64(stmt, 0));
    if (rc != SQLITE_DONE) return SqliteStatus(rc, cache_.db(), "fetch jobs");
  }
  if (ids.empty()) return rows;  // the scope rolls back the read-only transaction
  {
    const auto [lo, hi] = std::minmax_element(ids.begin(), ids.end());
    const bool consecutive = *hi - *lo + 1 == static_cast<int64_t>(ids.size());
    std::string list;
    if (!consecutive) {
      list = "[";
      for (int64_t id : ids) {
        if (list.size() > 1) list += ',';
        list += std::to_string(id);
      }
      list += ']';
    }
    const std::string client_json = nlohmann::json(params.client_id).dump();
    ClaimedRows claimed{.rows = &rows, .queue = params.queue};
    SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache_.Get(consecutive ? kUpdateRange : kUpdate));
    StmtScope use(stmt);
    int rc = sqlite3_bind_int64(stmt, 1, Micros(params.now));
    if (rc == SQLITE_OK) rc = BindText(stmt, 2, client_json);
    if (rc == SQLITE_OK && consecutive) {
      rc = sqlite3_bind_int64(stmt, 3, *lo);
      if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, 4, *hi);
    } else if (rc == SQLITE_OK) {
      rc = BindText(stmt, 3, list);
    }
    if (rc == SQLITE_OK) rc = sqlite3_bind_pointer(stmt, 5, &claimed, kClaimedRowsType, nullptr);
    const std::string first_list = "[" + client_json + "]";
    if (rc == SQLITE_OK) rc = BindText(stmt, 6, first_list);
    SPOOL_RETURN_IF_ERROR(CheckBind(rc, stmt));
    SPOOL_RETURN_IF_ERROR(StepDone(stmt, "claim jobs"));
  }
  // The UPDATE meets the rows in id order; the workers take them in the SELECT's (priority,
  // scheduled_at, id).
  SPOOL_RETURN_IF_ERROR(rows.Reorder(ids));
  SPOOL_RETURN_IF_ERROR(scope->Commit());
  return rows;
}

Result<std::vector<JobRow>> SqliteQueries::FinishClaim(const RawJobRows& raw,
                                                       const JobGetAvailableParams& params,
                                                       std::mutex* writer) {
  std::vector<JobRow> rows;
  rows.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    Result<JobRow> decoded = raw.Decode(i);
    if (!decoded) {
      std::unique_lock<std::mutex> lock;
      if (writer != nullptr) lock = std::unique_lock(*writer);
      (void)GiveBack(raw, params.now);  // the decoding error is what the caller needs
      return UnreadableClaimError(decoded.error());
    }
    JobRow row = std::move(*decoded);
    // What the claim's UPDATE wrote.
    row.state = JobState::kRunning;
    row.attempt += 1;
    row.attempted_at = params.now;
    if (row.attempted_by.size() >= 100) row.attempted_by.erase(row.attempted_by.begin());
    row.attempted_by.push_back(params.client_id);
    rows.push_back(std::move(row));
  }
  return rows;
}

// ---- outcomes ---------------------------------------------------------------------------------

namespace {

// Outcome batches come in every size up to kUpdateChunk, and preparing a statement for each size
// the first time it came cost a burn-down of 50,000 jobs at 100 workers 69 prepares, 42 ms of the
// writer's time in a 380 ms run. So sizes are rounded up: to a power of two up to 16, then to a
// multiple of 16, at most 20 statements of each kind. A padded row costs SQLite under 1,000
// instructions, a row that updates a job 15,000 or more.
static_assert(SqliteQueries::kUpdateChunk % 16 == 0,
              "a rounded chunk must fit its statement array");
int OutcomeStatementRows(int rows) {
  if (rows <= 16) return static_cast<int>(std::bit_ceil(static_cast<unsigned>(rows)));
  return (rows + 15) / 16 * 16;
}

// Plain completions whose ids lie close together (a backlog worked in id order: nearly every
// batch under load) are written by id range (CompleteRun): a run is ids at most kMaxRunGap
// apart, and one of at least kMinRunRows gets its own statement. A job of the range that is not
// in the batch costs the scan about 850 instructions, and one written through the range instead
// of the VALUES join saves 4,300-7,400 (callgrind, docs/benchmarks.md), so at the largest gap
// (seven jobs skipped for each one written) the two cost about the same.
constexpr int64_t kMaxRunGap = 8;
constexpr size_t kMinRunRows = 8;

// One run's outcomes, indexed by id - lo, for spool_outcome_at.
struct OutcomeRun {
  int64_t lo = 0;
  std::vector<int64_t> at;            // kNoOutcome where the run has no job
  std::vector<int32_t> attempt;       // 0 matches any attempt
  std::vector<int64_t> attempted_at;  // kAnyClaim matches any
  static constexpr int64_t kAnyClaim = std::numeric_limits<int64_t>::min();
  static constexpr int64_t kNoOutcome = std::numeric_limits<int64_t>::min();
};
constexpr const char* kOutcomeRunType = "spool_outcome_run";

// spool_outcome_at(run, id, attempt, attempted_at): the outcome's time (microseconds) if `run`
// completes the job `id` running `attempt` of the claim made at `attempted_at`, else NULL. The run
// is bound with sqlite3_bind_pointer, so SQL text cannot hand it anything else.
void OutcomeAtFunction(sqlite3_context* ctx, int /*argc*/, sqlite3_value** argv) {
  const auto* run = static_cast<const OutcomeRun*>(sqlite3_value_pointer(argv[0], kOutcomeRunType));
  if (run == nullptr) {
    sqlite3_result_error(ctx, "spool_outcome_at: no outcome run bound", -1);
    return;
  }
  const uint64_t k = static_cast<uint64_t>(sqlite3_value_int64(argv[1])) -
                     static_cast<uint64_t>(run->lo);  // wraps to huge below lo
  if (k >= run->at.size() || run->at[k] == OutcomeRun::kNoOutcome) return;  // NULL
  if (run->attempt[k] != 0 && run->attempt[k] != sqlite3_value_int64(argv[2])) return;
  if (run->attempted_at[k] != OutcomeRun::kAnyClaim &&
      (sqlite3_value_type(argv[3]) != SQLITE_INTEGER ||
       run->attempted_at[k] != sqlite3_value_int64(argv[3]))) {
    return;
  }
  sqlite3_result_int64(ctx, run->at[k]);
}

// An outcome's claim time (JobSetStateParams::attempted_at), or NULL for any.
int BindClaim(sqlite3_stmt* stmt, int index, const std::optional<TimePoint>& attempted_at) {
  return attempted_at ? sqlite3_bind_int64(stmt, index, Micros(*attempted_at))
                      : sqlite3_bind_null(stmt, index);
}

}  // namespace

Result<sqlite3_stmt*> SqliteQueries::CompleteStmt(int rows) {
  rows = OutcomeStatementRows(rows);
  auto& slot = complete_[static_cast<size_t>(rows)];
  if (slot != nullptr) return slot;
  std::string sql =
      "UPDATE spool_job SET state = " SPOOL_COMPLETED ", finalized_at = u.column2 FROM (VALUES ";
  for (int r = 0; r < rows; ++r) sql += r == 0 ? "(?,?,?,?)" : ",(?,?,?,?)";
  sql += ") AS u WHERE spool_job.id = u.column1 AND spool_job.state = " SPOOL_RUNNING
         " "
         "AND (u.column3 = 0 OR spool_job.attempt = u.column3) "
         "AND (u.column4 IS NULL OR spool_job.attempted_at = u.column4)";
  SPOOL_ASSIGN_OR_RETURN(slot, cache_.Get(sql));
  return slot;
}

Result<sqlite3_stmt*> SqliteQueries::SetStateStmt(int rows) {
  rows = OutcomeStatementRows(rows);
  auto& slot = set_state_[static_cast<size_t>(rows)];
  if (slot != nullptr) return slot;
  // u: (id, new state, at, error JSON or NULL, attempt or 0, snooze 0 or 1, attempted_at or
  // NULL).
  std::string sql =
      "UPDATE spool_job SET state = u.column2, "
      "finalized_at = CASE WHEN u.column2 IN " SPOOL_FINAL_STATES
      " "
      "THEN u.column3 ELSE NULL END, "
      "scheduled_at = CASE WHEN u.column2 IN (" SPOOL_SCHEDULED ", " SPOOL_RETRYABLE
      ") "
      "THEN u.column3 ELSE spool_job.scheduled_at END, "
      "attempt = CASE WHEN u.column2 = " SPOOL_SCHEDULED
      " "
      "THEN max(spool_job.attempt - 1, 0) ELSE spool_job.attempt END, "
      "errors = CASE WHEN u.column4 IS NULL THEN spool_job.errors "
      "ELSE json_insert(spool_job.errors, '$[#]', json(u.column4)) END, "
      // Metadata edited by hand into something other than a JSON object is left alone.
      // (One test a WHEN: an OR may evaluate json_type on text that is not JSON, an error.)
      "metadata = CASE WHEN NOT u.column6 THEN spool_job.metadata "
      "WHEN NOT json_valid(spool_job.metadata) THEN spool_job.metadata "
      "WHEN json_type(spool_job.metadata) != 'object' THEN spool_job.metadata "
      "ELSE json_set(spool_job.metadata, '$.snoozes', "
      "CASE WHEN json_type(spool_job.metadata, '$.snoozes') = 'integer' "
      "THEN json_extract(spool_job.metadata, '$.snoozes') + 1 ELSE 1 END) END "
      "FROM (VALUES ";
  for (int r = 0; r < rows; ++r) sql += r == 0 ? "(?,?,?,?,?,?,?)" : ",(?,?,?,?,?,?,?)";
  sql += ") AS u WHERE spool_job.id = u.column1 AND spool_job.state = " SPOOL_RUNNING
         " "
         "AND (u.column5 = 0 OR spool_job.attempt = u.column5) "
         "AND (u.column7 IS NULL OR spool_job.attempted_at = u.column7)";
  SPOOL_ASSIGN_OR_RETURN(slot, cache_.Get(sql));
  return slot;
}

Result<int64_t> SqliteQueries::JobSetStateIfRunningMany(
    const JobSetStateIfRunningManyParams& params) {
  SPOOL_RETURN_IF_ERROR(CheckOutcomeStates(params.jobs));
  if (params.skipped != nullptr) params.skipped->clear();
  if (params.cancelled != nullptr) params.cancelled->clear();
  if (params.jobs.empty()) return int64_t{0};
  // The outcomes that an admin's cancel request turns into cancels are looked up in the write
  // transaction that writes them, so no cancel request can come between.
  std::vector<JobSetStateParams> cancels;
  const auto report = [&] {
    if (params.cancelled == nullptr) return;
    for (const JobSetStateParams& c : cancels) params.cancelled->push_back(c.id);
  };
  {
    SPOOL_ASSIGN_OR_RETURN(auto scope, WriteScope::Begin(cache_));
    SPOOL_ASSIGN_OR_RETURN(auto all, WithCancelRequests(params.jobs, nullptr, &cancels));
    SPOOL_ASSIGN_OR_RETURN(int64_t changed, SetStates(all));
    if (params.skipped == nullptr || changed == static_cast<int64_t>(all.size())) {
      SPOOL_RETURN_IF_ERROR(scope->Commit());
      report();
      return changed;
    }
  }  // rolled back
  // Some job was no longer running, and the caller needs to know which: the updates cannot say
  // which rows they skipped, so they are run again on the jobs found still running, in one write
  // transaction with the look-up (no other writer comes between). Only this rare case pays for
  // the look-up.
  SPOOL_ASSIGN_OR_RETURN(auto scope, WriteScope::Begin(cache_));
  SPOOL_ASSIGN_OR_RETURN(std::set<int64_t> running, StillRunning(params.jobs, false));
  for (const auto& job : params.jobs) {
    if (!running.contains(job.id)) params.skipped->push_back(job.id);
  }
  SPOOL_ASSIGN_OR_RETURN(auto kept, WithCancelRequests(params.jobs, &running, &cancels));
  SPOOL_ASSIGN_OR_RETURN(int64_t changed, SetStates(kept));
  SPOOL_RETURN_IF_ERROR(scope->Commit());
  report();
  return changed;
}

Result<std::vector<const JobSetStateParams*>> SqliteQueries::WithCancelRequests(
    const std::vector<JobSetStateParams>& jobs, const std::set<int64_t>* only,
    std::vector<JobSetStateParams>* cancels) {
  cancels->clear();
  std::vector<JobSetStateParams> may_cancel;
  for (const auto& job : jobs) {
    if (job.if_cancel_requested && (only == nullptr || only->contains(job.id))) {
      may_cancel.push_back(job);
    }
  }
  // Pointed at below, so it must not reallocate; empty for batches of completions.
  cancels->reserve(may_cancel.size());
  std::set<int64_t> requested;
  if (!may_cancel.empty()) {
    SPOOL_ASSIGN_OR_RETURN(requested, StillRunning(may_cancel, true));
  }
  std::vector<const JobSetStateParams*> out;
  out.reserve(jobs.size());
  for (const auto& job : jobs) {
    if (only != nullptr && !only->contains(job.id)) continue;
    if (!job.if_cancel_requested || !requested.contains(job.id)) {
      out.push_back(&job);
      continue;
    }
    JobSetStateParams& c = cancels->emplace_back(job);
    c.state = JobState::kCancelled;
    c.at = job.if_cancel_requested->at;
    c.error = job.if_cancel_requested;
    c.snooze = false;
    c.if_cancel_requested.reset();
    out.push_back(&c);
  }
  return out;
}

Result<std::set<int64_t>> SqliteQueries::StillRunning(const std::vector<JobSetStateParams>& jobs,
                                                      bool cancel_requested) {
  // [[id, attempt, attempted_at], ...]; attempt 0 and attempted_at null match any.
  nlohmann::json pairs = nlohmann::json::array();
  for (const auto& job : jobs) {
    pairs.push_back({job.id, job.attempt,
                     job.attempted_at ? nlohmann::json(Micros(*job.attempted_at)) : nullptr});
  }
  const std::string ids = pairs.dump();
  constexpr std::string_view kRunning =
      "SELECT j.id FROM json_each(?1) AS e JOIN spool_job AS j "
      "ON j.id = json_extract(e.value, '$[0]') WHERE j.state = " SPOOL_RUNNING
      " "
      "AND (json_extract(e.value, '$[1]') = 0 OR j.attempt = json_extract(e.value, '$[1]')) "
      "AND (json_extract(e.value, '$[2]') IS NULL OR "
      "j.attempted_at = json_extract(e.value, '$[2]'))";
  // Metadata edited by hand into something that is not JSON counts as no request.
  static const std::string kCancelRequested =
      std::string(kRunning) +
      " AND CASE WHEN json_valid(j.metadata) "
      "THEN json_type(j.metadata, '$.cancel_requested_at') IS NOT NULL ELSE 0 END";
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt,
                         cache_.Get(cancel_requested ? kCancelRequested : kRunning));
  StmtScope use(stmt);
  SPOOL_RETURN_IF_ERROR(CheckBind(BindText(stmt, 1, ids), stmt));
  std::set<int64_t> running;
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) running.insert(sqlite3_column_int64(stmt, 0));
  if (rc != SQLITE_DONE) return SqliteStatus(rc, cache_.db(), "find jobs still running");
  return running;
}

Status SqliteQueries::RegisterFunctions() {
  if (functions_registered_) return Status::Ok();
  // DIRECTONLY: not callable from triggers, views or the schema.
  constexpr int kFlags = SQLITE_UTF8 | SQLITE_DIRECTONLY;
  int rc = sqlite3_create_function_v2(cache_.db(), "spool_claimed", kClaimedColumnCount + 1, kFlags,
                                      nullptr, &ClaimedFunction, nullptr, nullptr, nullptr);
  if (rc == SQLITE_OK) {
    rc = sqlite3_create_function_v2(cache_.db(), "spool_outcome_at", 4, kFlags, nullptr,
                                    &OutcomeAtFunction, nullptr, nullptr, nullptr);
  }
  if (rc != SQLITE_OK) return SqliteStatus(rc, cache_.db(), "register spool's SQL functions");
  functions_registered_ = true;
  return Status::Ok();
}

Result<int64_t> SqliteQueries::CompleteRun(std::span<const JobSetStateParams* const> run) {
  SPOOL_RETURN_IF_ERROR(RegisterFunctions());
  const int64_t lo = run.front()->id;
  const int64_t hi = run.back()->id;
  OutcomeRun outcomes;
  outcomes.lo = lo;
  outcomes.at.assign(static_cast<size_t>(hi - lo + 1), OutcomeRun::kNoOutcome);
  outcomes.attempt.assign(outcomes.at.size(), 0);
  outcomes.attempted_at.assign(outcomes.at.size(), OutcomeRun::kAnyClaim);
  for (const JobSetStateParams* job : run) {
    const auto k = static_cast<size_t>(job->id - lo);
    outcomes.at[k] = Micros(job->at);
    outcomes.attempt[k] = job->attempt;
    if (job->attempted_at) outcomes.attempted_at[k] = Micros(*job->attempted_at);
  }
  // The same test as CompleteStmt's join, row by row along the range: the job is running the
  // attempt and claim the outcome is of (or the outcome names none).
  static const std::string kSql =
      "UPDATE spool_job SET state = " SPOOL_COMPLETED
      ", finalized_at = spool_outcome_at(?3, id, attempt, attempted_at) "
      "WHERE id BETWEEN ?1 AND ?2 AND state = " SPOOL_RUNNING
      " AND spool_outcome_at(?3, id, attempt, attempted_at) IS NOT NULL";
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache_.Get(kSql));
  StmtScope use(stmt);
  int rc = sqlite3_bind_int64(stmt, 1, lo);
  if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, 2, hi);
  if (rc == SQLITE_OK) rc = sqlite3_bind_pointer(stmt, 3, &outcomes, kOutcomeRunType, nullptr);
  SPOOL_RETURN_IF_ERROR(CheckBind(rc, stmt));
  SPOOL_RETURN_IF_ERROR(StepDone(stmt, "complete jobs"));
  return sqlite3_changes64(cache_.db());
}

Result<int64_t> SqliteQueries::SetStates(const std::vector<const JobSetStateParams*>& jobs) {
  // Completed without an error is nearly every outcome: runs of close ids go by range
  // (CompleteRun), the rest through a narrower statement than the general one, binding three
  // values a row. Everything else shares the general statement.
  std::vector<const JobSetStateParams*> completed;
  std::vector<const JobSetStateParams*> other;
  completed.reserve(jobs.size());
  for (const JobSetStateParams* job : jobs) {
    if (job->state == JobState::kCompleted && !job->error.has_value()) {
      completed.push_back(job);
    } else {
      other.push_back(job);
    }
  }
  int64_t changed = 0;
  if (completed.size() >= kMinRunRows) {
    std::sort(completed.begin(), completed.end(),
              [](const JobSetStateParams* a, const JobSetStateParams* b) { return a->id < b->id; });
    std::vector<const JobSetStateParams*> rest;
    size_t begin = 0;
    while (begin < completed.size()) {
      size_t end = begin + 1;
      bool repeated = false;  // two outcomes for one job: left to the VALUES join
      while (end < completed.size() && completed[end]->id - completed[end - 1]->id <= kMaxRunGap) {
        repeated = repeated || completed[end]->id == completed[end - 1]->id;
        ++end;
      }
      const std::span<const JobSetStateParams* const> run(completed.data() + begin, end - begin);
      if (run.size() >= kMinRunRows && !repeated) {
        SPOOL_ASSIGN_OR_RETURN(int64_t n, CompleteRun(run));
        changed += n;
      } else {
        rest.insert(rest.end(), run.begin(), run.end());
      }
      begin = end;
    }
    completed.swap(rest);
  }
  for (size_t start = 0; start < completed.size(); start += kUpdateChunk) {
    const size_t n = std::min(completed.size() - start, static_cast<size_t>(kUpdateChunk));
    SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, CompleteStmt(static_cast<int>(n)));
    StmtScope use(stmt);
    int rc = SQLITE_OK;
    for (size_t r = 0; r < n && rc == SQLITE_OK; ++r) {
      const JobSetStateParams& job = *completed[start + r];
      const int b = static_cast<int>(r) * 4;
      rc = sqlite3_bind_int64(stmt, b + 1, job.id);
      if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, b + 2, Micros(job.at));
      if (rc == SQLITE_OK) rc = sqlite3_bind_int(stmt, b + 3, job.attempt);
      if (rc == SQLITE_OK) rc = BindClaim(stmt, b + 4, job.attempted_at);
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
      const int b = static_cast<int>(r) * 7;
      rc = sqlite3_bind_int64(stmt, b + 1, job.id);
      if (rc == SQLITE_OK) rc = sqlite3_bind_int(stmt, b + 2, StateCode(job.state));
      if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, b + 3, Micros(job.at));
      if (rc == SQLITE_OK) {
        if (job.error.has_value()) {
          rc = BindText(stmt, b + 4, error_json.emplace_back(ErrorJson(*job.error)));
        } else {
          rc = sqlite3_bind_null(stmt, b + 4);
        }
      }
      if (rc == SQLITE_OK) rc = sqlite3_bind_int(stmt, b + 5, job.attempt);
      if (rc == SQLITE_OK) rc = sqlite3_bind_int(stmt, b + 6, job.snooze ? 1 : 0);
      if (rc == SQLITE_OK) rc = BindClaim(stmt, b + 7, job.attempted_at);
    }
    SPOOL_RETURN_IF_ERROR(CheckBind(rc, stmt));
    SPOOL_RETURN_IF_ERROR(StepDone(stmt, "set job states"));
    changed += sqlite3_changes64(cache_.db());
  }
  return changed;
}

// ---- scheduler --------------------------------------------------------------------------------

Result<JobScheduleResult> SqliteQueries::JobSchedule(const JobScheduleParams& params) {
  JobScheduleResult result;
  if (params.max <= 0) return result;
  // The state test matches the partial index's WHERE term word for word, so SQLite uses it.
  constexpr std::string_view kSql = "UPDATE spool_job SET state = " SPOOL_AVAILABLE
                                    " WHERE id IN (SELECT id FROM spool_job "
                                    "WHERE state IN (" SPOOL_SCHEDULED ", " SPOOL_RETRYABLE
                                    ") AND scheduled_at <= ?1 "
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

Result<std::optional<JobRow>> SqliteQueries::ReadOneJob(const std::string& sql, int64_t id,
                                                        std::string_view context) {
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache_.Get(sql));
  StmtScope use(stmt);
  SPOOL_RETURN_IF_ERROR(CheckBind(sqlite3_bind_int64(stmt, 1, id), stmt));
  std::vector<JobRow> rows;
  SPOOL_RETURN_IF_ERROR(ReadJobRows(stmt, context, &rows));
  if (rows.empty()) return std::optional<JobRow>();
  return std::optional<JobRow>(std::move(rows.front()));
}

Result<JobRow> SqliteQueries::JobGetByID(int64_t id) {
  static const std::string kSql =
      fmt::format("SELECT {} FROM spool_job WHERE id = ?1", kJobColumns);
  SPOOL_ASSIGN_OR_RETURN(std::optional<JobRow> row, ReadOneJob(kSql, id, "get job"));
  if (!row) return Status::NotFound(fmt::format("no job with id {}", id));
  return std::move(*row);
}

Result<std::vector<JobRow>> SqliteQueries::JobList(const JobListParams& params) {
  if (params.limit < 1) {
    return Status::InvalidArgument(
        fmt::format("job list limit {} must be at least 1", params.limit));
  }
  std::string sql = fmt::format("SELECT {} FROM spool_job WHERE id > ? AND id < ?", kJobColumns);
  if (!params.states.empty()) {
    sql += " AND state IN (";
    for (size_t i = 0; i < params.states.size(); ++i) sql += i == 0 ? "?" : ",?";
    sql += ")";
  }
  if (!params.queue.empty()) sql += " AND queue = ?";
  if (!params.kind.empty()) sql += " AND kind = ?";
  sql += params.newest_first ? " ORDER BY id DESC LIMIT ?" : " ORDER BY id LIMIT ?";
  // The shapes are few (state count x queue x kind), so caching by text stays small.
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache_.Get(sql));
  StmtScope use(stmt);
  int i = 1;
  int rc = sqlite3_bind_int64(stmt, i++, params.after_id);
  if (rc == SQLITE_OK) {
    rc = sqlite3_bind_int64(
        stmt, i++, params.before_id > 0 ? params.before_id : std::numeric_limits<int64_t>::max());
  }
  for (JobState s : params.states) {
    if (rc == SQLITE_OK) rc = sqlite3_bind_int(stmt, i++, StateCode(s));
  }
  if (rc == SQLITE_OK && !params.queue.empty()) rc = BindText(stmt, i++, params.queue);
  if (rc == SQLITE_OK && !params.kind.empty()) rc = BindText(stmt, i++, params.kind);
  if (rc == SQLITE_OK) rc = sqlite3_bind_int(stmt, i++, params.limit);
  SPOOL_RETURN_IF_ERROR(CheckBind(rc, stmt));
  RawJobRows raw;
  SPOOL_RETURN_IF_ERROR(StepInto(stmt, "list jobs", &raw));
  std::vector<JobRow> rows;
  rows.reserve(raw.size());
  for (size_t r = 0; r < raw.size(); ++r) rows.push_back(RowOrIdOnly(raw.id(r), raw.Decode(r)));
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
    SPOOL_ASSIGN_OR_RETURN(JobState state, StateFromCode(sqlite3_column_int64(stmt, 0)));
    counts[state] = sqlite3_column_int64(stmt, 1);
  }
  if (rc != SQLITE_DONE) return SqliteStatus(rc, cache_.db(), "count jobs");
  return counts;
}

// ---- helpers for single-statement writes ------------------------------------------------------

Result<RawJobRows> SqliteQueries::WriteRaw(std::string_view sql, std::string_view context,
                                           const std::function<int(sqlite3_stmt*)>& bind) {
  SPOOL_ASSIGN_OR_RETURN(auto scope, WriteScope::Begin(cache_));
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache_.Get(sql));
  RawJobRows raw;
  {
    StmtScope use(stmt);
    SPOOL_RETURN_IF_ERROR(CheckBind(bind(stmt), stmt));
    SPOOL_RETURN_IF_ERROR(StepInto(stmt, context, &raw));
  }
  SPOOL_RETURN_IF_ERROR(scope->Commit());
  return raw;
}

Result<std::optional<JobRow>> SqliteQueries::WriteOneRow(
    std::string_view sql, std::string_view context, const std::function<int(sqlite3_stmt*)>& bind) {
  SPOOL_ASSIGN_OR_RETURN(RawJobRows raw, WriteRaw(sql, context, bind));
  if (raw.empty()) return std::optional<JobRow>();
  SPOOL_ASSIGN_OR_RETURN(JobRow row, raw.Decode(0));
  return std::optional<JobRow>(std::move(row));
}

Result<int64_t> SqliteQueries::Write(std::string_view sql, std::string_view context,
                                     const std::function<int(sqlite3_stmt*)>& bind) {
  SPOOL_ASSIGN_OR_RETURN(auto scope, WriteScope::Begin(cache_));
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache_.Get(sql));
  int64_t changed = 0;
  {
    StmtScope use(stmt);
    SPOOL_RETURN_IF_ERROR(CheckBind(bind(stmt), stmt));
    SPOOL_RETURN_IF_ERROR(StepDone(stmt, context));
    changed = sqlite3_changes64(cache_.db());
  }
  SPOOL_RETURN_IF_ERROR(scope->Commit());
  return changed;
}

// ---- admin ------------------------------------------------------------------------------------

Result<JobRow> SqliteQueries::JobCancel(const JobCancelParams& params) {
  // One statement for both live cases; a final job matches nothing and is read back unchanged.
  static const std::string kSql = fmt::format(
      "UPDATE spool_job SET "
      "state = CASE WHEN state = " SPOOL_RUNNING " THEN state ELSE " SPOOL_CANCELLED
      " END, "
      "finalized_at = CASE WHEN state = " SPOOL_RUNNING
      " THEN NULL ELSE ?2 END, "
      "errors = CASE WHEN state = " SPOOL_RUNNING
      " THEN errors ELSE json_insert(errors, '$[#]', "
      "json_object('at', ?2, 'attempt', attempt, 'error', 'cancelled by an admin', 'trace', '')) "
      "END, "
      "metadata = CASE WHEN state = " SPOOL_RUNNING
      " "
      "THEN json_set(metadata, '$.cancel_requested_at', ?3) ELSE metadata END "
      "WHERE id = ?1 AND state NOT IN " SPOOL_FINAL_STATES " RETURNING {}",
      kJobColumns);
  const std::string requested_at = FormatTime(params.now);  // bound without a copy
  SPOOL_ASSIGN_OR_RETURN(auto row, WriteOneRow(kSql, "cancel job", [&](sqlite3_stmt* stmt) {
                           int rc = sqlite3_bind_int64(stmt, 1, params.id);
                           if (rc == SQLITE_OK)
                             rc = sqlite3_bind_int64(stmt, 2, Micros(params.now));
                           if (rc == SQLITE_OK) rc = BindText(stmt, 3, requested_at);
                           return rc;
                         }));
  if (row.has_value()) return std::move(*row);
  return JobGetByID(params.id);
}

Result<JobRow> SqliteQueries::JobRetry(const JobRetryParams& params) {
  // cancel_requested_at goes: it was meant for the attempt that ended, and would cancel the next
  // one as soon as it started. A job already available keeps its place in line.
  static const std::string kSql = fmt::format(
      "UPDATE spool_job SET state = " SPOOL_AVAILABLE
      ", scheduled_at = CASE WHEN state = " SPOOL_AVAILABLE
      " THEN min(scheduled_at, ?2) ELSE ?2 END, finalized_at = NULL, "
      "max_attempts = CASE WHEN attempt >= max_attempts THEN attempt + 1 ELSE max_attempts END, "
      "metadata = CASE WHEN json_type(metadata, '$.cancel_requested_at') IS NULL THEN metadata "
      "ELSE json_remove(metadata, '$.cancel_requested_at') END "
      "WHERE id = ?1 AND state <> " SPOOL_RUNNING " AND attempt < {} RETURNING {}",
      kMaxMaxAttempts, kJobColumns);
  auto row = WriteOneRow(kSql, "retry job", [&](sqlite3_stmt* stmt) {
    int rc = sqlite3_bind_int64(stmt, 1, params.id);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, 2, Micros(params.now));
    return rc;
  });
  if (!row && row.error().IsAlreadyExists()) return UniqueKeyHeld(UniqueKeyHolder(params.id));
  if (!row) return std::move(row).error();
  if (row->has_value()) return std::move(**row);
  SPOOL_ASSIGN_OR_RETURN(JobRow job, JobGetByID(params.id));
  return RetryRefused(job);
}

Result<JobRow> SqliteQueries::UniqueKeyHolder(int64_t id) {
  static const std::string kSql = fmt::format(
      "SELECT {} FROM spool_job WHERE unique_key = (SELECT unique_key FROM spool_job WHERE id = "
      "?1) AND id <> ?1 AND unique_key IS NOT NULL AND unique_states IS NOT NULL AND "
      "(unique_states >> state) & 1 = 1 LIMIT 1",
      kJobColumns);
  SPOOL_ASSIGN_OR_RETURN(std::optional<JobRow> row,
                         ReadOneJob(kSql, id, "get the job with a unique key"));
  if (!row) return Status::NotFound(fmt::format("no job holds the unique key of {}", id));
  return std::move(*row);
}

Result<JobRow> SqliteQueries::JobDelete(int64_t id) {
  static const std::string kSql =
      fmt::format("DELETE FROM spool_job WHERE id = ?1 AND state <> " SPOOL_RUNNING " RETURNING {}",
                  kJobColumns);
  // Committed before the row is decoded: deleting is how a row that does not read is got rid of.
  SPOOL_ASSIGN_OR_RETURN(RawJobRows raw, WriteRaw(kSql, "delete job", [&](sqlite3_stmt* stmt) {
                           return sqlite3_bind_int64(stmt, 1, id);
                         }));
  if (!raw.empty()) return RowOrIdOnly(id, raw.Decode(0));
  SPOOL_ASSIGN_OR_RETURN(JobRow job, JobGetByID(id));
  return RunningJobRefused(job, "deleting");
}

Result<std::vector<int64_t>> SqliteQueries::JobGetCancelRequested(const std::vector<int64_t>& ids) {
  std::vector<int64_t> out;
  if (ids.empty()) return out;
  // The ids travel as one JSON array, so one cached statement serves any count.
  constexpr std::string_view kSql =
      "SELECT id FROM spool_job WHERE id IN (SELECT value FROM json_each(?1)) "
      "AND state = " SPOOL_RUNNING
      " AND json_type(metadata, '$.cancel_requested_at') IS NOT NULL "
      "ORDER BY id";
  const std::string ids_json = nlohmann::json(ids).dump();
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache_.Get(kSql));
  StmtScope use(stmt);
  SPOOL_RETURN_IF_ERROR(CheckBind(BindText(stmt, 1, ids_json), stmt));
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) out.push_back(sqlite3_column_int64(stmt, 0));
  if (rc != SQLITE_DONE) return SqliteStatus(rc, cache_.db(), "get cancel requests");
  return out;
}

// ---- maintenance ------------------------------------------------------------------------------

Result<std::vector<JobRow>> SqliteQueries::JobGetStuck(const JobGetStuckParams& params) {
  std::vector<JobRow> rows;
  if (params.max <= 0) return rows;
  // The state test matches spool_job_running_idx, which also gives the attempted_at order.
  static const std::string kSql =
      fmt::format("SELECT {} FROM spool_job WHERE state = " SPOOL_RUNNING
                  " AND (attempted_at < ?2 OR NOT EXISTS "
                  "(SELECT 1 FROM spool_client c WHERE c.id = json_extract(spool_job.attempted_by, "
                  "'$[#-1]') AND c.heartbeat_at >= ?1 AND c.started_at <= spool_job.attempted_at)) "
                  "ORDER BY attempted_at, id LIMIT ?3",
                  kJobColumns);
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache_.Get(kSql));
  StmtScope use(stmt);
  int rc = sqlite3_bind_int64(stmt, 1, Micros(params.heartbeat_stale_before));
  if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, 2, Micros(params.attempted_before));
  if (rc == SQLITE_OK) rc = sqlite3_bind_int(stmt, 3, params.max);
  SPOOL_RETURN_IF_ERROR(CheckBind(rc, stmt));
  SPOOL_RETURN_IF_ERROR(ReadJobRows(stmt, "get stuck jobs", &rows));
  return rows;
}

Result<int64_t> SqliteQueries::JobDeleteFinalized(const JobDeleteFinalizedParams& params) {
  SPOOL_RETURN_IF_ERROR(CheckFinalizedState(params.state));
  if (params.max <= 0) return int64_t{0};
  // The finalized_at IS NOT NULL term matches spool_job_finalized_idx's WHERE, so SQLite uses it.
  constexpr std::string_view kSql =
      "DELETE FROM spool_job WHERE id IN (SELECT id FROM spool_job WHERE state = ?1 AND "
      "finalized_at IS NOT NULL AND finalized_at < ?2 ORDER BY finalized_at LIMIT ?3)";
  return Write(kSql, "delete finalized jobs", [&](sqlite3_stmt* stmt) {
    int rc = sqlite3_bind_int(stmt, 1, StateCode(params.state));
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, 2, Micros(params.finalized_before));
    if (rc == SQLITE_OK) rc = sqlite3_bind_int(stmt, 3, params.max);
    return rc;
  });
}

// ---- leader -----------------------------------------------------------------------------------

Result<bool> SqliteQueries::LeaderAttemptElect(const LeaderElectParams& params) {
  constexpr std::string_view kElectSql =
      "INSERT INTO spool_leader (name, leader_id, elected_at, expires_at) "
      "VALUES ('default', ?1, ?2, ?3) ON CONFLICT (name) DO UPDATE SET "
      "leader_id = excluded.leader_id, elected_at = excluded.elected_at, "
      "expires_at = excluded.expires_at WHERE spool_leader.expires_at <= ?2";
  constexpr std::string_view kHolderSql =
      "SELECT leader_id = ?1 FROM spool_leader WHERE name = 'default'";
  SPOOL_ASSIGN_OR_RETURN(auto scope, WriteScope::Begin(cache_));
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * elect, cache_.Get(kElectSql));
  {
    StmtScope use(elect);
    int rc = BindText(elect, 1, params.leader_id);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(elect, 2, Micros(params.now));
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(elect, 3, Micros(params.now + params.ttl));
    SPOOL_RETURN_IF_ERROR(CheckBind(rc, elect));
    SPOOL_RETURN_IF_ERROR(StepDone(elect, "elect leader"));
  }
  bool holder = false;
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * check, cache_.Get(kHolderSql));
  {
    StmtScope use(check);
    SPOOL_RETURN_IF_ERROR(CheckBind(BindText(check, 1, params.leader_id), check));
    const int rc = sqlite3_step(check);
    if (rc == SQLITE_ROW) {
      holder = sqlite3_column_int(check, 0) != 0;
    } else if (rc != SQLITE_DONE) {
      return SqliteStatus(rc, cache_.db(), "read leader");
    }
  }
  SPOOL_RETURN_IF_ERROR(scope->Commit());
  return holder;
}

Result<bool> SqliteQueries::LeaderAttemptReelect(const LeaderElectParams& params) {
  constexpr std::string_view kSql =
      "UPDATE spool_leader SET expires_at = ?2 WHERE name = 'default' AND leader_id = ?1";
  SPOOL_ASSIGN_OR_RETURN(int64_t changed, Write(kSql, "reelect leader", [&](sqlite3_stmt* stmt) {
                           int rc = BindText(stmt, 1, params.leader_id);
                           if (rc == SQLITE_OK) {
                             rc = sqlite3_bind_int64(stmt, 2, Micros(params.now + params.ttl));
                           }
                           return rc;
                         }));
  return changed > 0;
}

Status SqliteQueries::LeaderResign(std::string_view leader_id) {
  constexpr std::string_view kSql =
      "DELETE FROM spool_leader WHERE name = 'default' AND leader_id = ?1";
  return Write(kSql, "resign leader",
               [&](sqlite3_stmt* stmt) { return BindText(stmt, 1, leader_id); })
      .status();
}

Result<std::optional<LeaderInfo>> SqliteQueries::LeaderGet() {
  constexpr std::string_view kSql =
      "SELECT leader_id, elected_at, expires_at FROM spool_leader WHERE name = 'default'";
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, cache_.Get(kSql));
  StmtScope use(stmt);
  const int rc = sqlite3_step(stmt);
  if (rc == SQLITE_DONE) return std::optional<LeaderInfo>();
  if (rc != SQLITE_ROW) return SqliteStatus(rc, cache_.db(), "read leader");
  LeaderInfo info;
  info.leader_id = ColumnText(stmt, 0);
  info.elected_at = FromMicros(sqlite3_column_int64(stmt, 1));
  info.expires_at = FromMicros(sqlite3_column_int64(stmt, 2));
  return std::optional<LeaderInfo>(std::move(info));
}

// ---- clients ----------------------------------------------------------------------------------

Result<std::optional<TimePoint>> SqliteQueries::ClientHeartbeat(
    const ClientHeartbeatParams& params) {
  constexpr std::string_view kReadSql = "SELECT started_at FROM spool_client WHERE id = ?1";
  constexpr std::string_view kUpsertSql =
      "INSERT INTO spool_client (id, started_at, heartbeat_at, queues) VALUES (?1, ?4, ?2, ?3) "
      "ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at, "
      "heartbeat_at = excluded.heartbeat_at, queues = excluded.queues";
  const std::string queues = nlohmann::json(params.queues).dump();
  SPOOL_ASSIGN_OR_RETURN(auto scope, WriteScope::Begin(cache_));
  std::optional<TimePoint> before;
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * read, cache_.Get(kReadSql));
  {
    StmtScope use(read);
    SPOOL_RETURN_IF_ERROR(CheckBind(BindText(read, 1, params.id), read));
    const int rc = sqlite3_step(read);
    if (rc == SQLITE_ROW) {
      before = FromMicros(sqlite3_column_int64(read, 0));
    } else if (rc != SQLITE_DONE) {
      return SqliteStatus(rc, cache_.db(), "read client");
    }
  }
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * upsert, cache_.Get(kUpsertSql));
  {
    StmtScope use(upsert);
    int rc = BindText(upsert, 1, params.id);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(upsert, 2, Micros(params.now));
    if (rc == SQLITE_OK) rc = BindText(upsert, 3, queues);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(upsert, 4, Micros(params.started_at));
    SPOOL_RETURN_IF_ERROR(CheckBind(rc, upsert));
    SPOOL_RETURN_IF_ERROR(StepDone(upsert, "client heartbeat"));
  }
  SPOOL_RETURN_IF_ERROR(scope->Commit());
  return before;
}

Status SqliteQueries::ClientDelete(std::string_view id) {
  return Write("DELETE FROM spool_client WHERE id = ?1", "delete client",
               [&](sqlite3_stmt* stmt) { return BindText(stmt, 1, id); })
      .status();
}

Result<int64_t> SqliteQueries::ClientDeleteStale(TimePoint before) {
  return Write("DELETE FROM spool_client WHERE heartbeat_at < ?1", "delete stale clients",
               [&](sqlite3_stmt* stmt) { return sqlite3_bind_int64(stmt, 1, Micros(before)); });
}

// ---- queues -----------------------------------------------------------------------------------

namespace {

Status ValidateQueueName(std::string_view name) {
  if (name.empty() || name.size() > 128) {
    return Status::InvalidArgument(
        fmt::format("queue name \"{}\" must be 1 to 128 characters long", name));
  }
  return Status::Ok();
}

}  // namespace

Result<bool> SqliteQueries::QueuePause(std::string_view name, TimePoint now) {
  SPOOL_RETURN_IF_ERROR(ValidateQueueName(name));
  // Pausing a paused queue changes nothing: it keeps when it was first paused.
  constexpr std::string_view kSql =
      "INSERT INTO spool_queue (name, paused_at, created_at, updated_at) VALUES (?1, ?2, ?2, ?2) "
      "ON CONFLICT (name) DO UPDATE SET paused_at = excluded.paused_at, updated_at = "
      "excluded.updated_at WHERE spool_queue.paused_at IS NULL";
  SPOOL_ASSIGN_OR_RETURN(const int64_t changed, Write(kSql, "pause queue", [&](sqlite3_stmt* stmt) {
                           int rc = BindText(stmt, 1, name);
                           if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, 2, Micros(now));
                           return rc;
                         }));
  return changed > 0;
}

Result<bool> SqliteQueries::QueueResume(std::string_view name, TimePoint now) {
  SPOOL_RETURN_IF_ERROR(ValidateQueueName(name));
  constexpr std::string_view kSql =
      "UPDATE spool_queue SET paused_at = NULL, updated_at = ?2 WHERE name = ?1 AND "
      "paused_at IS NOT NULL";
  SPOOL_ASSIGN_OR_RETURN(const int64_t changed,
                         Write(kSql, "resume queue", [&](sqlite3_stmt* stmt) {
                           int rc = BindText(stmt, 1, name);
                           if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, 2, Micros(now));
                           return rc;
                         }));
  return changed > 0;
}

// The queues running clients work, one row each as q.value (QueueList, QueueKnown): a client
// row whose queues are not a JSON array counts as none.
#define SPOOL_CLIENT_QUEUES                                                                   \
  "spool_client AS c, json_each(CASE WHEN json_valid(c.queues) THEN c.queues ELSE '[]' END) " \
  "AS q WHERE q.type = 'text'"

Result<std::vector<QueueInfo>> SqliteQueries::QueueList() {
  std::map<std::string, QueueInfo, std::less<>> queues;
  auto entry = [&](std::string_view name) -> QueueInfo& {
    auto it = queues.find(name);
    if (it == queues.end()) {
      it = queues.emplace(std::string(name), QueueInfo{}).first;
      it->second.name = std::string(name);
    }
    return it->second;
  };
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * rows,
                         cache_.Get("SELECT name, paused_at FROM spool_queue"));
  {
    StmtScope use(rows);
    int rc;
    while ((rc = sqlite3_step(rows)) == SQLITE_ROW) {
      entry(ColumnText(rows, 0)).paused_at = OptionalTime(OptionalInt(rows, 1));
    }
    if (rc != SQLITE_DONE) return SqliteStatus(rc, cache_.db(), "list queues");
  }
  SPOOL_ASSIGN_OR_RETURN(
      sqlite3_stmt * counts,
      cache_.Get("SELECT queue, state, count(*) FROM spool_job GROUP BY queue, state"));
  {
    StmtScope use(counts);
    int rc;
    while ((rc = sqlite3_step(counts)) == SQLITE_ROW) {
      SPOOL_ASSIGN_OR_RETURN(JobState state, StateFromCode(sqlite3_column_int64(counts, 1)));
      entry(ColumnText(counts, 0)).counts[state] = sqlite3_column_int64(counts, 2);
    }
    if (rc != SQLITE_DONE) return SqliteStatus(rc, cache_.db(), "count jobs by queue");
  }
  // A queue a running app works before its first job: without it, `spool queues list` said "no
  // queues" and `queues pause` that no process had used the queue.
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * worked,
                         cache_.Get("SELECT DISTINCT q.value FROM " SPOOL_CLIENT_QUEUES));
  {
    StmtScope use(worked);
    int rc;
    while ((rc = sqlite3_step(worked)) == SQLITE_ROW) entry(ColumnText(worked, 0));
    if (rc != SQLITE_DONE) return SqliteStatus(rc, cache_.db(), "list the clients' queues");
  }
  std::vector<QueueInfo> out;
  out.reserve(queues.size());
  for (auto& [name, info] : queues) out.push_back(std::move(info));
  return out;
}

// ---- periodic jobs ----------------------------------------------------------------------------

Result<std::optional<TimePoint>> SqliteQueries::QueuePausedAt(std::string_view name) {
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt,
                         cache_.Get("SELECT paused_at FROM spool_queue WHERE name = ?1"));
  StmtScope use(stmt);
  SPOOL_RETURN_IF_ERROR(CheckBind(BindText(stmt, 1, name), stmt));
  const int rc = sqlite3_step(stmt);
  if (rc == SQLITE_DONE) return std::optional<TimePoint>();
  if (rc != SQLITE_ROW) return SqliteStatus(rc, cache_.db(), "read queue pause");
  return OptionalTime(OptionalInt(stmt, 0));
}

Result<bool> SqliteQueries::QueueKnown(std::string_view name) {
  // CASE tries its branches in order, so the job table is read only for a queue nothing else
  // names (and then stops at the first job).
  SPOOL_ASSIGN_OR_RETURN(
      sqlite3_stmt * stmt,
      cache_.Get("SELECT CASE WHEN EXISTS (SELECT 1 FROM spool_queue WHERE name = ?1) THEN 1 "
                 "WHEN EXISTS (SELECT 1 FROM " SPOOL_CLIENT_QUEUES " AND q.value = ?1) THEN 1 "
                 "ELSE EXISTS (SELECT 1 FROM spool_job WHERE queue = ?1) END"));
  StmtScope use(stmt);
  SPOOL_RETURN_IF_ERROR(CheckBind(BindText(stmt, 1, name), stmt));
  const int rc = sqlite3_step(stmt);
  if (rc != SQLITE_ROW) return SqliteStatus(rc, cache_.db(), "look for a queue");
  return sqlite3_column_int(stmt, 0) != 0;
}

#undef SPOOL_CLIENT_QUEUES

Result<std::optional<TimePoint>> SqliteQueries::PeriodicGetLastTick(std::string_view name) {
  SPOOL_ASSIGN_OR_RETURN(sqlite3_stmt * stmt,
                         cache_.Get("SELECT last_tick_at FROM spool_periodic WHERE name = ?1"));
  StmtScope use(stmt);
  SPOOL_RETURN_IF_ERROR(CheckBind(BindText(stmt, 1, name), stmt));
  const int rc = sqlite3_step(stmt);
  if (rc == SQLITE_DONE) return std::optional<TimePoint>();
  if (rc != SQLITE_ROW) return SqliteStatus(rc, cache_.db(), "read periodic tick");
  return std::optional<TimePoint>(FromMicros(sqlite3_column_int64(stmt, 0)));
}

Status SqliteQueries::PeriodicSetLastTick(std::string_view name, TimePoint tick, TimePoint now) {
  constexpr std::string_view kSql =
      "INSERT INTO spool_periodic (name, last_tick_at, updated_at) VALUES (?1, ?2, ?3) "
      "ON CONFLICT (name) DO UPDATE SET last_tick_at = excluded.last_tick_at, "
      "updated_at = excluded.updated_at";
  return Write(kSql, "write periodic tick",
               [&](sqlite3_stmt* stmt) {
                 int rc = BindText(stmt, 1, name);
                 if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, 2, Micros(tick));
                 if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, 3, Micros(now));
                 return rc;
               })
      .status();
}

#undef SPOOL_AVAILABLE
#undef SPOOL_SCHEDULED
#undef SPOOL_RUNNING
#undef SPOOL_RETRYABLE
#undef SPOOL_COMPLETED
#undef SPOOL_CANCELLED
#undef SPOOL_DISCARDED
#undef SPOOL_FINAL_STATES

}  // namespace spool::internal
