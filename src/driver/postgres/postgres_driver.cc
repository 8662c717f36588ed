#include "driver/postgres/postgres_driver.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "driver/postgres/pg_conn.h"
#include "driver/postgres/postgres_migrations.h"

namespace spool::internal {
namespace {

using pg::Conn;
using pg::Param;
using pg::PgResult;
using SteadyClock = std::chrono::steady_clock;

// Connections of the shared executor. Enough for a producer per queue, the completer and a few
// inserting threads; more would only contend on the same rows.
constexpr int kMaxPoolConnections = 8;
// How long a call waits for a pooled connection before giving up with Retryable.
constexpr auto kPoolWait = std::chrono::seconds(30);
// Rows per INSERT statement: each column is one array parameter, so this only bounds memory.
constexpr size_t kInsertChunk = 5000;
constexpr auto kMinBackoff = std::chrono::milliseconds(50);
constexpr auto kMaxBackoff = std::chrono::seconds(2);

// TimePoint <-> timestamptz, exactly: microseconds travel as int8 and EXTRACT returns numeric
// (PostgreSQL >= 14). int8 * interval goes through float8, exact only below 2^53, so whole
// seconds and the microsecond remainder are added separately.
// clang-format off
#define SPOOL_TS(p) "(timestamptz 'epoch' + (" p "::int8 / 1000000) * interval '1 second'" \
                    " + (" p "::int8 % 1000000) * interval '1 microsecond')"
// clang-format on
#define SPOOL_US(c) "(extract(epoch FROM " c ") * 1000000)::int8"

constexpr const char* kJobColumns =
    "j.id, j.state, j.attempt, j.max_attempts, " SPOOL_US("j.attempted_at") ", "
    "array_to_json(j.attempted_by)::text, " SPOOL_US("j.created_at") ", " SPOOL_US(
        "j.scheduled_at") ", " SPOOL_US("j.finalized_at") ", "
                          "j.priority, j.queue, j.kind, j.args::text, j.metadata::text, "
                          "array_to_json(j.tags)::text, j.errors::text";

std::string Sql(std::string_view before, std::string_view after = {}) {
  return fmt::format("{}{}{}", before, kJobColumns, after);
}

const std::string& InsertSql(bool returning) {
  static const std::string* const kReturning = new std::string(
      Sql("INSERT INTO spool_job AS j (kind, args, metadata, queue, priority, max_attempts, state, "
          "scheduled_at, tags, created_at) "
          "SELECT u.kind, u.args::jsonb, u.metadata::jsonb, u.queue, u.priority, u.max_attempts, "
          "u.state, " SPOOL_TS("u.sched") ", u.tags::text[], " SPOOL_TS(
              "$10") " "
                     "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int2[], "
                     "$6::int2[], "
                     "$7::text[], $8::int8[], $9::text[]) WITH ORDINALITY "
                     "AS u(kind, args, metadata, queue, priority, max_attempts, state, sched, "
                     "tags, ord) "
                     "ORDER BY u.ord RETURNING "));
  static const std::string* const kFast =
      new std::string(kReturning->substr(0, kReturning->find(" RETURNING ")));
  return returning ? *kReturning : *kFast;
}

const std::string& FetchSql() {
  static const std::string* const kSql = new std::string(Sql(
      "WITH locked AS (SELECT id FROM spool_job WHERE state = 'available' AND queue = $1 "
      "AND scheduled_at <= " SPOOL_TS(
          "$2") " ORDER BY priority, scheduled_at, id LIMIT $3 "
                "FOR UPDATE SKIP LOCKED) "
                "UPDATE spool_job AS j SET state = 'running', attempt = j.attempt + 1, "
                "attempted_at = " SPOOL_TS(
                    "$2") ", "
                          // attempted_by keeps the last 100 client ids, like the SQLite driver.
                          "attempted_by = array_append(CASE WHEN cardinality(j.attempted_by) < 100 "
                          "THEN j.attempted_by ELSE j.attempted_by[cardinality(j.attempted_by) - "
                          "98:] END, $4::text) "
                          "FROM locked WHERE j.id = locked.id RETURNING "));
  return *kSql;
}

constexpr const char* kSetStateSql =
    "UPDATE spool_job AS j SET state = u.state, "
    "finalized_at = CASE WHEN u.state IN ('completed', 'cancelled', 'discarded') "
    "THEN " SPOOL_TS("u.at") " ELSE NULL END, "
    "scheduled_at = CASE WHEN u.state IN ('retryable', 'scheduled') "
    "THEN " SPOOL_TS("u.at") " ELSE j.scheduled_at END, "
    "attempt = CASE WHEN u.state = 'scheduled' THEN greatest(j.attempt - 1, 0) "
    "ELSE j.attempt END, "
    "errors = CASE WHEN u.err IS NULL THEN j.errors ELSE j.errors || jsonb_build_array(u.err) END "
    "FROM (SELECT DISTINCT ON (id) * FROM unnest($1::int8[], $2::text[], $3::int8[], "
    "$4::jsonb[]) AS x(id, state, at, err)) AS u "
    "WHERE j.id = u.id AND j.state = 'running'";

constexpr const char* kScheduleSql =
    "WITH due AS (SELECT id FROM spool_job WHERE state IN ('scheduled', 'retryable') "
    "AND scheduled_at <= " SPOOL_TS("$1") " ORDER BY scheduled_at, id LIMIT $2 "
    "FOR UPDATE SKIP LOCKED), "
    "moved AS (UPDATE spool_job AS j SET state = 'available' FROM due WHERE j.id = due.id "
    "RETURNING j.queue) "
    "SELECT count(*)::int8, "
    "coalesce(array_to_json(array_agg(DISTINCT queue ORDER BY queue))::text, '[]') FROM moved";

const std::string& GetByIdSql() {
  static const std::string* const kSql =
      new std::string(Sql("SELECT ", " FROM spool_job AS j WHERE j.id = $1"));
  return *kSql;
}

const std::string& ListSql() {
  static const std::string* const kSql = new std::string(
      Sql("SELECT ",
          " FROM spool_job AS j WHERE ($1::text[] IS NULL OR j.state = ANY($1::text[])) "
          "AND ($2::text = '' OR j.queue = $2::text) AND ($3::text = '' OR j.kind = $3::text) "
          "AND j.id > $4::int8 ORDER BY j.id LIMIT $5::int8"));
  return *kSql;
}

constexpr const char* kCountSql =
    "SELECT state, count(*)::int8 FROM spool_job WHERE ($1::text = '' OR queue = $1::text) "
    "GROUP BY state";

#undef SPOOL_TS
#undef SPOOL_US

std::string Micros(TimePoint t) { return std::to_string(t.time_since_epoch().count()); }

// ---- reading rows ------------------------------------------------------------------------------

Status BadValue(std::string_view column, std::string_view text) {
  return Status::Internal(
      fmt::format("unexpected value {:?} in column {} of spool_job", std::string(text), column));
}

Result<int64_t> ParseInt(std::string_view text, std::string_view column) {
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || ptr != text.data() + text.size()) return BadValue(column, text);
  return v;
}

// Parses "2026-11-27T21:07:51.123456Z" (FormatTime's output; fraction optional).
std::optional<TimePoint> ParseRfc3339(const std::string& s) {
  std::tm tm{};
  int year = 0, mon = 0, day = 0, hour = 0, min = 0, sec = 0, n = 0;
  if (std::sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &year, &mon, &day, &hour, &min, &sec,
                  &n) != 6) {
    return std::nullopt;
  }
  tm.tm_year = year - 1900;
  tm.tm_mon = mon - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = min;
  tm.tm_sec = sec;
  int64_t micros = static_cast<int64_t>(timegm(&tm)) * 1'000'000;
  size_t i = static_cast<size_t>(n);
  if (i < s.size() && s[i] == '.') {
    int64_t frac = 0;
    int digits = 0;
    for (++i; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i, ++digits) {
      if (digits < 6) frac = frac * 10 + (s[i] - '0');
    }
    for (; digits < 6; ++digits) frac *= 10;
    micros += frac;
  }
  return TimePoint(Duration(micros));
}

// jsonb prints `{"a": 1}`; spool hands out the compact form nlohmann writes, so a job's args
// read back byte for byte as the client serialised them.
std::string CompactJson(const char* text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) return text;
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::vector<std::string> StringArray(const char* json_text) {
  std::vector<std::string> out;
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, false);
  if (!j.is_array()) return out;
  for (const auto& e : j) {
    if (e.is_string()) out.push_back(e.get<std::string>());
  }
  return out;
}

std::vector<AttemptError> ParseErrors(const char* json_text) {
  std::vector<AttemptError> out;
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, false);
  if (!j.is_array()) return out;
  for (const auto& e : j) {
    if (!e.is_object()) continue;
    AttemptError err;
    if (auto it = e.find("at"); it != e.end()) {
      if (it->is_number_integer()) {
        err.at = TimePoint(Duration(it->get<int64_t>()));
      } else if (it->is_string()) {
        err.at = ParseRfc3339(it->get<std::string>()).value_or(TimePoint{});
      }
    }
    if (auto it = e.find("attempt"); it != e.end() && it->is_number_integer()) {
      err.attempt = it->get<int>();
    }
    if (auto it = e.find("error"); it != e.end() && it->is_string()) {
      err.error = it->get<std::string>();
    }
    if (auto it = e.find("trace"); it != e.end() && it->is_string()) {
      err.trace = it->get<std::string>();
    }
    out.push_back(std::move(err));
  }
  return out;
}

std::string ErrorJson(const AttemptError& e) {
  nlohmann::json j = {{"at", e.at.time_since_epoch().count()},
                      {"attempt", e.attempt},
                      {"error", e.error},
                      {"trace", e.trace}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Result<JobRow> ReadRow(const PGresult* r, int i) {
  auto text = [&](int c) { return PQgetvalue(r, i, c); };
  auto null = [&](int c) { return PQgetisnull(r, i, c) != 0; };
  JobRow row;
  SPOOL_ASSIGN_OR_RETURN(row.id, ParseInt(text(0), "id"));
  SPOOL_ASSIGN_OR_RETURN(row.state, ParseJobState(text(1)));
  SPOOL_ASSIGN_OR_RETURN(int64_t attempt, ParseInt(text(2), "attempt"));
  row.attempt = static_cast<int>(attempt);
  SPOOL_ASSIGN_OR_RETURN(int64_t max_attempts, ParseInt(text(3), "max_attempts"));
  row.max_attempts = static_cast<int>(max_attempts);
  if (!null(4)) {
    SPOOL_ASSIGN_OR_RETURN(int64_t us, ParseInt(text(4), "attempted_at"));
    row.attempted_at = TimePoint(Duration(us));
  }
  row.attempted_by = StringArray(text(5));
  SPOOL_ASSIGN_OR_RETURN(int64_t created, ParseInt(text(6), "created_at"));
  row.created_at = TimePoint(Duration(created));
  SPOOL_ASSIGN_OR_RETURN(int64_t scheduled, ParseInt(text(7), "scheduled_at"));
  row.scheduled_at = TimePoint(Duration(scheduled));
  if (!null(8)) {
    SPOOL_ASSIGN_OR_RETURN(int64_t us, ParseInt(text(8), "finalized_at"));
    row.finalized_at = TimePoint(Duration(us));
  }
  SPOOL_ASSIGN_OR_RETURN(int64_t priority, ParseInt(text(9), "priority"));
  row.priority = static_cast<int>(priority);
  row.queue = text(10);
  row.kind = text(11);
  row.args = CompactJson(text(12));
  row.metadata = CompactJson(text(13));
  row.tags = StringArray(text(14));
  row.errors = ParseErrors(text(15));
  return row;
}

Result<std::vector<JobRow>> ReadRows(const PGresult* r) {
  std::vector<JobRow> rows;
  const int n = PQntuples(r);
  rows.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    SPOOL_ASSIGN_OR_RETURN(JobRow row, ReadRow(r, i));
    rows.push_back(std::move(row));
  }
  return rows;
}

int64_t AffectedRows(const PGresult* r) {
  const char* n = PQcmdTuples(const_cast<PGresult*>(r));
  return (n == nullptr || *n == '\0') ? 0 : std::strtoll(n, nullptr, 10);
}

// ---- queries, over any connection --------------------------------------------------------------

std::vector<Param> InsertParamsFor(const JobInsertManyParams& p, size_t begin, size_t end) {
  std::vector<std::string> kinds, args, metadata, queues, priorities, max_attempts, states, sched,
      tags;
  for (size_t i = begin; i < end; ++i) {
    const JobInsertParams& j = p.jobs[i];
    kinds.push_back(j.kind);
    args.push_back(j.args);
    metadata.push_back(j.metadata);
    queues.push_back(j.queue);
    priorities.push_back(std::to_string(j.priority));
    max_attempts.push_back(std::to_string(j.max_attempts));
    states.emplace_back(JobStateName(j.state));
    sched.push_back(Micros(j.scheduled_at));
    tags.push_back(pg::ArrayLiteral(j.tags));
  }
  return {pg::ArrayLiteral(kinds),      pg::ArrayLiteral(args),
          pg::ArrayLiteral(metadata),   pg::ArrayLiteral(queues),
          pg::ArrayLiteral(priorities), pg::ArrayLiteral(max_attempts),
          pg::ArrayLiteral(states),     pg::ArrayLiteral(sched),
          pg::ArrayLiteral(tags),       Micros(p.now)};
}

// Inserts in chunks; the caller provides atomicity across chunks.
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
  if (job.max_attempts < 1 || job.max_attempts > 32767) {
    return Status::InvalidArgument(fmt::format(
        "job {}: max_attempts {} must be between 1 and 32767", index, job.max_attempts));
  }
  if (job.kind.empty()) return Status::InvalidArgument(fmt::format("job {}: empty kind", index));
  if (job.queue.empty()) return Status::InvalidArgument(fmt::format("job {}: empty queue", index));
  return Status::Ok();
}

bool IsOutcomeState(JobState s) {
  return s == JobState::kCompleted || s == JobState::kCancelled || s == JobState::kDiscarded ||
         s == JobState::kRetryable || s == JobState::kScheduled;
}

Result<int64_t> InsertOn(Conn& c, const JobInsertManyParams& p, std::vector<JobRow>* rows) {
  int64_t count = 0;
  for (size_t begin = 0; begin < p.jobs.size(); begin += kInsertChunk) {
    const size_t end = std::min(p.jobs.size(), begin + kInsertChunk);
    SPOOL_ASSIGN_OR_RETURN(PgResult res,
                           c.Query(rows ? "spool_insert" : "spool_insert_fast",
                                   InsertSql(rows != nullptr), InsertParamsFor(p, begin, end)));
    if (rows != nullptr) {
      SPOOL_ASSIGN_OR_RETURN(std::vector<JobRow> chunk, ReadRows(res.get()));
      // ids come from the sequence in ORDER BY ord order, so id order is input order.
      std::sort(chunk.begin(), chunk.end(),
                [](const JobRow& a, const JobRow& b) { return a.id < b.id; });
      for (JobRow& r : chunk) rows->push_back(std::move(r));
      count += static_cast<int64_t>(chunk.size());
    } else {
      count += AffectedRows(res.get());
    }
  }
  return count;
}

Result<std::vector<JobRow>> FetchOn(Conn& c, const JobGetAvailableParams& p) {
  if (p.max <= 0) return std::vector<JobRow>{};
  SPOOL_ASSIGN_OR_RETURN(PgResult res,
                         c.Query("spool_fetch", FetchSql(),
                                 {p.queue, Micros(p.now), std::to_string(p.max), p.client_id}));
  SPOOL_ASSIGN_OR_RETURN(std::vector<JobRow> rows, ReadRows(res.get()));
  std::sort(rows.begin(), rows.end(), [](const JobRow& a, const JobRow& b) {
    return std::tie(a.priority, a.scheduled_at, a.id) < std::tie(b.priority, b.scheduled_at, b.id);
  });
  return rows;
}

Result<int64_t> SetStateOn(Conn& c, const JobSetStateIfRunningManyParams& p) {
  for (const JobSetStateParams& j : p.jobs) {
    if (!IsOutcomeState(j.state)) {
      return Status::InvalidArgument(
          fmt::format("job {}: cannot set state {}: use completed, cancelled, discarded, "
                      "retryable or scheduled",
                      j.id, JobStateName(j.state)));
    }
  }
  if (p.jobs.empty()) return int64_t{0};
  std::vector<std::string> ids, states, ats;
  std::vector<std::optional<std::string>> errs;
  for (const JobSetStateParams& j : p.jobs) {
    ids.push_back(std::to_string(j.id));
    states.emplace_back(JobStateName(j.state));
    ats.push_back(Micros(j.at));
    errs.push_back(j.error ? std::optional<std::string>(ErrorJson(*j.error)) : std::nullopt);
  }
  SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query("spool_set_state", kSetStateSql,
                                               {pg::ArrayLiteral(ids), pg::ArrayLiteral(states),
                                                pg::ArrayLiteral(ats), pg::ArrayLiteral(errs)}));
  return AffectedRows(res.get());
}

Result<JobScheduleResult> ScheduleOn(Conn& c, const JobScheduleParams& p) {
  JobScheduleResult out;
  if (p.max <= 0) return out;
  SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query("spool_schedule", kScheduleSql,
                                               {Micros(p.now), std::to_string(p.max)}));
  SPOOL_ASSIGN_OR_RETURN(out.count, ParseInt(PQgetvalue(res.get(), 0, 0), "count"));
  out.queues = StringArray(PQgetvalue(res.get(), 0, 1));
  return out;
}

Result<JobRow> GetByIdOn(Conn& c, int64_t id) {
  SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query("spool_get", GetByIdSql(), {std::to_string(id)}));
  if (PQntuples(res.get()) == 0) return Status::NotFound(fmt::format("no job with id {}", id));
  return ReadRow(res.get(), 0);
}

Result<std::vector<JobRow>> ListOn(Conn& c, const JobListParams& p) {
  if (p.limit < 1) {
    return Status::InvalidArgument(fmt::format("job list limit {} must be at least 1", p.limit));
  }
  Param states;
  if (!p.states.empty()) {
    std::vector<std::string> names;
    for (JobState s : p.states) names.emplace_back(JobStateName(s));
    states = pg::ArrayLiteral(names);
  }
  SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query("spool_list", ListSql(),
                                               {states, p.queue, p.kind, std::to_string(p.after_id),
                                                std::to_string(p.limit)}));
  return ReadRows(res.get());
}

Result<std::map<JobState, int64_t>> CountOn(Conn& c, std::string_view queue) {
  SPOOL_ASSIGN_OR_RETURN(PgResult res, c.Query("spool_count", kCountSql, {std::string(queue)}));
  std::map<JobState, int64_t> out;
  for (int i = 0; i < PQntuples(res.get()); ++i) {
    SPOOL_ASSIGN_OR_RETURN(JobState s, ParseJobState(PQgetvalue(res.get(), i, 0)));
    SPOOL_ASSIGN_OR_RETURN(out[s], ParseInt(PQgetvalue(res.get(), i, 1), "count"));
  }
  return out;
}

// ---- connection pool ---------------------------------------------------------------------------

class Pool;

// A pooled connection, returned to the pool (or discarded if broken) on destruction.
class Lease {
 public:
  Lease(Pool* pool, std::unique_ptr<Conn> conn) : pool_(pool), conn_(std::move(conn)) {}
  Lease(Lease&& o) noexcept = default;
  Lease& operator=(Lease&&) = delete;
  Lease(const Lease&) = delete;
  ~Lease();
  Conn& operator*() const { return *conn_; }
  Conn* operator->() const { return conn_.get(); }

 private:
  Pool* pool_;
  std::unique_ptr<Conn> conn_;
};

// Up to kMaxPoolConnections connections, opened on demand. Thread safe. After a failed connect,
// further connects fail fast with the same error until a doubling backoff passes, so a down
// server does not get hammered by every producer loop.
class Pool {
 public:
  Pool(std::string url, std::string target) : url_(std::move(url)), target_(std::move(target)) {}

  Result<Lease> Acquire() {
    std::unique_lock lock(mu_);
    const auto deadline = SteadyClock::now() + kPoolWait;
    while (idle_.empty() && open_ >= kMaxPoolConnections) {
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && idle_.empty() &&
          open_ >= kMaxPoolConnections) {
        return Status::Retryable(
            fmt::format("all {} PostgreSQL connections stayed busy for {}s", kMaxPoolConnections,
                        std::chrono::duration_cast<std::chrono::seconds>(kPoolWait).count()));
      }
    }
    if (!idle_.empty()) {
      std::unique_ptr<Conn> c = std::move(idle_.back());
      idle_.pop_back();
      return Lease(this, std::move(c));
    }
    if (SteadyClock::now() < retry_after_) return last_error_;
    ++open_;
    lock.unlock();
    Result<std::unique_ptr<Conn>> c = Conn::Connect(url_, target_);
    lock.lock();
    if (!c) {
      --open_;
      cv_.notify_one();
      backoff_ = std::clamp(backoff_ * 2, std::chrono::duration_cast<Duration>(kMinBackoff),
                            std::chrono::duration_cast<Duration>(kMaxBackoff));
      retry_after_ = SteadyClock::now() + backoff_;
      last_error_ = c.error();
      return c.error();
    }
    backoff_ = Duration::zero();
    retry_after_ = {};
    return Lease(this, std::move(*c));
  }

  void Release(std::unique_ptr<Conn> c) {
    if (c->ok() && PQtransactionStatus(c->get()) != PQTRANS_IDLE) {
      // A call failed mid-transaction; never hand a half-done transaction to the next caller.
      (void)c->Exec("ROLLBACK");
    }
    const bool keep = c->ok() && PQtransactionStatus(c->get()) == PQTRANS_IDLE;
    if (!keep) c.reset();  // close before taking the lock
    std::lock_guard lock(mu_);
    if (keep) {
      idle_.push_back(std::move(c));
    } else {
      --open_;
    }
    cv_.notify_one();
  }

  const std::string& url() const { return url_; }
  const std::string& target() const { return target_; }

 private:
  const std::string url_;
  const std::string target_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Conn>> idle_;  // guarded by mu_
  int open_ = 0;                             // guarded by mu_: idle + leased
  Duration backoff_{};                       // guarded by mu_
  SteadyClock::time_point retry_after_{};    // guarded by mu_
  Status last_error_;                        // guarded by mu_
};

Lease::~Lease() {
  if (conn_) pool_->Release(std::move(conn_));
}

// ---- executors ---------------------------------------------------------------------------------

// Every query, written once over WithConn(); Base is Executor or Tx.
template <typename Base>
class PgExecutor : public Base {
 public:
  Result<std::vector<JobRow>> JobInsertMany(const JobInsertManyParams& params) override {
    SPOOL_RETURN_IF_ERROR(Validate(params));
    if (params.jobs.empty()) return std::vector<JobRow>{};
    std::vector<JobRow> rows;
    rows.reserve(params.jobs.size());
    SPOOL_RETURN_IF_ERROR(InTx(params.jobs.size() > kInsertChunk,
                               [&](Conn& c) { return InsertOn(c, params, &rows).status(); }));
    return rows;
  }
  Result<int64_t> JobInsertManyFast(const JobInsertManyParams& params) override {
    SPOOL_RETURN_IF_ERROR(Validate(params));
    if (params.jobs.empty()) return int64_t{0};
    int64_t n = 0;
    SPOOL_RETURN_IF_ERROR(InTx(params.jobs.size() > kInsertChunk, [&](Conn& c) {
      SPOOL_ASSIGN_OR_RETURN(n, InsertOn(c, params, nullptr));
      return Status::Ok();
    }));
    return n;
  }
  Result<std::vector<JobRow>> JobGetAvailable(const JobGetAvailableParams& params) override {
    return Run<std::vector<JobRow>>([&](Conn& c) { return FetchOn(c, params); });
  }
  Result<int64_t> JobSetStateIfRunningMany(const JobSetStateIfRunningManyParams& params) override {
    return Run<int64_t>([&](Conn& c) { return SetStateOn(c, params); });
  }
  Result<JobScheduleResult> JobSchedule(const JobScheduleParams& params) override {
    return Run<JobScheduleResult>([&](Conn& c) { return ScheduleOn(c, params); });
  }
  Result<JobRow> JobGetByID(int64_t id) override {
    return Run<JobRow>([&](Conn& c) { return GetByIdOn(c, id); });
  }
  Result<std::vector<JobRow>> JobList(const JobListParams& params) override {
    return Run<std::vector<JobRow>>([&](Conn& c) { return ListOn(c, params); });
  }
  Result<std::map<JobState, int64_t>> JobCountByState(std::string_view queue) override {
    return Run<std::map<JobState, int64_t>>([&](Conn& c) { return CountOn(c, queue); });
  }

 protected:
  // Runs `fn` on a connection: a pooled one, or the transaction's own.
  virtual Status WithConn(const std::function<Status(Conn&)>& fn) = 0;
  // True when WithConn's connection is already inside a transaction.
  virtual bool InTransaction() const = 0;

 private:
  static Status Validate(const JobInsertManyParams& params) {
    for (size_t i = 0; i < params.jobs.size(); ++i) {
      SPOOL_RETURN_IF_ERROR(ValidateInsert(params.jobs[i], i));
    }
    return Status::Ok();
  }

  template <typename T, typename F>
  Result<T> Run(F&& fn) {
    std::optional<T> out;
    SPOOL_RETURN_IF_ERROR(WithConn([&](Conn& c) {
      Result<T> r = fn(c);
      if (!r) return r.error();
      out = std::move(*r);
      return Status::Ok();
    }));
    return std::move(*out);
  }

  // Wraps `fn` in BEGIN/COMMIT when it needs several statements and no transaction is open.
  Status InTx(bool several, const std::function<Status(Conn&)>& fn) {
    if (!several || InTransaction()) return WithConn(fn);
    return WithConn([&](Conn& c) {
      SPOOL_RETURN_IF_ERROR(c.Exec("BEGIN"));
      Status s = fn(c);
      if (!s.ok()) {
        if (c.ok()) (void)c.Exec("ROLLBACK");
        return s;
      }
      Status commit = c.Exec("COMMIT");
      if (!commit.ok() && commit.IsConnectionLost()) {
        return Status(Status::Code::kCommitInDoubt, commit.message(), commit.native_code());
      }
      return commit;
    });
  }
};

class PoolExecutor final : public PgExecutor<Executor> {
 public:
  explicit PoolExecutor(Pool* pool) : pool_(pool) {}

 protected:
  Status WithConn(const std::function<Status(Conn&)>& fn) override {
    SPOOL_ASSIGN_OR_RETURN(Lease lease, pool_->Acquire());
    return fn(*lease);
  }
  bool InTransaction() const override { return false; }

 private:
  Pool* pool_;
};

// An executor over a caller's PGconn*, inside the caller's transaction. Unnamed statements only:
// the connection is not ours to fill with prepared statements.
class BorrowedExecutor final : public PgExecutor<Executor> {
 public:
  explicit BorrowedExecutor(PGconn* conn) : conn_(Conn::Borrow(conn)) {}

 protected:
  Status WithConn(const std::function<Status(Conn&)>& fn) override {
    if (PQstatus(conn_->get()) != CONNECTION_OK) {
      return Status::ConnectionLost("the caller's PostgreSQL connection is not open");
    }
    return fn(*conn_);
  }
  bool InTransaction() const override { return PQtransactionStatus(conn_->get()) != PQTRANS_IDLE; }

 private:
  std::unique_ptr<Conn> conn_;
};

class PgTx final : public PgExecutor<Tx> {
 public:
  explicit PgTx(Lease lease) : lease_(std::move(lease)) {}
  ~PgTx() override {
    if (lease_) (void)Rollback();
  }

  Status Commit() override {
    if (!lease_) return Status::FailedPrecondition("transaction already committed or rolled back");
    // The connection goes back to the pool whatever happens (the pool drops it if broken).
    Lease lease = std::move(*lease_);
    lease_.reset();
    PgResult res(PQexec(lease->get(), "COMMIT"));
    ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK) {
      Status s = lease->ErrorFrom(res.get(), "commit");
      if (s.IsConnectionLost()) {
        return Status(Status::Code::kCommitInDoubt,
                      s.message() + " (the commit may or may not have happened)", s.native_code());
      }
      return s;
    }
    // COMMIT of a transaction that already failed answers ROLLBACK instead of an error.
    if (std::string_view(PQcmdStatus(res.get())) == "ROLLBACK") {
      return Status::Internal(
          "commit: the transaction was rolled back because an earlier statement in it failed");
    }
    return Status::Ok();
  }

  Status Rollback() override {
    if (!lease_) return Status::FailedPrecondition("transaction already committed or rolled back");
    Lease lease = std::move(*lease_);
    lease_.reset();
    return lease->Exec("ROLLBACK");
  }

 protected:
  Status WithConn(const std::function<Status(Conn&)>& fn) override {
    if (!lease_) return Status::FailedPrecondition("transaction already committed or rolled back");
    return fn(**lease_);
  }
  bool InTransaction() const override { return true; }

 private:
  std::optional<Lease> lease_;  // empty once committed or rolled back
};

// ---- the driver --------------------------------------------------------------------------------

std::string ChannelFor(const std::string& schema) {
  if (schema.empty() || schema == "public") return "spool_insert";
  std::string ch = "spool_insert_" + schema;
  // Identifiers are truncated at 63 bytes; a hash keeps long schema names distinct.
  if (ch.size() > 63) ch = fmt::format("spool_insert_{:016x}", std::hash<std::string>{}(schema));
  return ch;
}

// A pool of connections behind the shared executor, plus one LISTEN connection for
// WaitForChange. Tx and executors from ExecutorFor must not outlive the driver.
class PostgresDriver final : public Driver {
 public:
  PostgresDriver(std::string url, std::string target)
      : pool_(std::move(url), std::move(target)), executor_(&pool_) {
    event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  }
  ~PostgresDriver() override {
    if (event_fd_ >= 0) close(event_fd_);
  }

  // Connects once (checking the url), learns the schema for the notification channel, and
  // starts listening so that notifications sent after Open are never missed.
  Status Init() {
    if (event_fd_ < 0) {
      return Status::Internal(fmt::format("eventfd failed: {}", std::strerror(errno)));
    }
    {
      SPOOL_ASSIGN_OR_RETURN(Lease lease, pool_.Acquire());
      SPOOL_ASSIGN_OR_RETURN(PgResult res,
                             lease->Query("", "SELECT coalesce(current_schema(), '')", {}));
      channel_ = ChannelFor(PQgetvalue(res.get(), 0, 0));
    }
    return Listen();
  }

  std::string_view Name() const override { return "postgres"; }
  Executor& executor() override { return executor_; }

  Result<std::unique_ptr<Tx>> Begin() override {
    SPOOL_ASSIGN_OR_RETURN(Lease lease, pool_.Acquire());
    SPOOL_RETURN_IF_ERROR(lease->Exec("BEGIN"));
    return std::unique_ptr<Tx>(new PgTx(std::move(lease)));
  }

  Result<std::unique_ptr<Executor>> ExecutorFor(TxRef tx) override {
    if (tx.kind() != TxRef::Kind::kPostgres) {
      return Status::InvalidArgument(
          "transaction handle is not a PostgreSQL connection: this client uses PostgreSQL, use "
          "spool::PostgresTx(conn)");
    }
    if (tx.handle() == nullptr) return Status::InvalidArgument("PostgresTx(nullptr)");
    return std::unique_ptr<Executor>(new BorrowedExecutor(static_cast<PGconn*>(tx.handle())));
  }

  const std::vector<Migration>& Migrations() const override { return PostgresMigrations(); }

  Result<int> SchemaVersion() override {
    SPOOL_ASSIGN_OR_RETURN(Lease lease, pool_.Acquire());
    return VersionOn(*lease);
  }

  Status MigrateUp(int target) override {
    const int latest = LatestVersion(*this);
    if (target < 0 || target > latest) {
      return Status::InvalidArgument(
          fmt::format("cannot migrate up to version {}: this build of spool knows versions 1..{}",
                      target, latest));
    }
    for (const Migration& m : Migrations()) {
      if (m.version > target) break;
      SPOOL_RETURN_IF_ERROR(Apply(m, /*up=*/true));
    }
    return Status::Ok();
  }

  Status MigrateDown(int target) override {
    if (target < 0) {
      return Status::InvalidArgument(
          fmt::format("cannot migrate down to version {}: use 0 to remove every table", target));
    }
    const auto& ms = Migrations();
    for (auto it = ms.rbegin(); it != ms.rend(); ++it) {
      if (it->version <= target) break;
      SPOOL_RETURN_IF_ERROR(Apply(*it, /*up=*/false));
    }
    return Status::Ok();
  }

  Result<bool> WaitForChange(Duration timeout) override {
    const auto deadline = SteadyClock::now() + timeout;
    if (!listen_ || !listen_->ok()) {
      listen_.reset();
      if (SteadyClock::now() < listen_retry_after_) return listen_error_;
      SPOOL_RETURN_IF_ERROR(Listen());
      // Notifications sent while we were disconnected are lost: report a possible change.
      return true;
    }
    for (;;) {
      SPOOL_ASSIGN_OR_RETURN(bool notified, DrainNotifications());
      if (notified) return true;
      const auto now = SteadyClock::now();
      if (now >= deadline) return false;
      pollfd fds[2] = {{PQsocket(listen_->get()), POLLIN, 0}, {event_fd_, POLLIN, 0}};
      const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now);
      timespec ts{static_cast<time_t>(left.count() / 1'000'000'000),
                  static_cast<long>(left.count() % 1'000'000'000)};
      const int rc = ppoll(fds, 2, &ts, nullptr);
      if (rc < 0 && errno != EINTR) {
        return Status::Internal(fmt::format("poll failed: {}", std::strerror(errno)));
      }
      if (rc > 0 && (fds[1].revents & POLLIN) != 0) {
        uint64_t n = 0;
        (void)!read(event_fd_, &n, sizeof n);
        return true;
      }
    }
  }

  void Interrupt() override {
    const uint64_t one = 1;
    (void)!write(event_fd_, &one, sizeof one);
  }

  Status NotifyInsert(std::string_view queue) override {
    SPOOL_ASSIGN_OR_RETURN(Lease lease, pool_.Acquire());
    return lease->Query("spool_notify", "SELECT pg_notify($1, $2)", {channel_, std::string(queue)})
        .status();
  }

 private:
  static Result<int> VersionOn(Conn& c) {
    SPOOL_ASSIGN_OR_RETURN(PgResult exists,
                           c.Query("", "SELECT to_regclass('spool_migration') IS NOT NULL", {}));
    if (std::string_view(PQgetvalue(exists.get(), 0, 0)) != "t") return 0;
    SPOOL_ASSIGN_OR_RETURN(
        PgResult res,
        c.Query("", "SELECT coalesce(max(version), 0) FROM spool_migration WHERE line = 'main'",
                {}));
    SPOOL_ASSIGN_OR_RETURN(int64_t v, ParseInt(PQgetvalue(res.get(), 0, 0), "version"));
    return static_cast<int>(v);
  }

  // One migration step in its own transaction, serialised across processes by an advisory lock
  // (per schema) and re-checked under it, so concurrent `migration up`s apply each step once.
  Status Apply(const Migration& m, bool up) {
    SPOOL_ASSIGN_OR_RETURN(Lease lease, pool_.Acquire());
    Conn& c = *lease;
    SPOOL_RETURN_IF_ERROR(c.Exec("BEGIN"));
    auto fail = [&](const Status& s) {
      if (c.ok()) (void)c.Exec("ROLLBACK");
      return s.WithContext(
          fmt::format("migration {} {} ({})", up ? "up" : "down", m.version, m.name));
    };
    Result<PgResult> lock = c.Query(
        "", "SELECT pg_advisory_xact_lock(hashtext(coalesce(current_schema(), '') || '.spool'))",
        {});
    if (!lock) return fail(lock.error());
    Result<int> current = VersionOn(c);
    if (!current) return fail(current.error());
    if (up ? *current >= m.version : *current < m.version) {
      return c.Exec("ROLLBACK");  // already done by someone else
    }
    if (!up) {
      Result<PgResult> del =
          c.Query("", "DELETE FROM spool_migration WHERE line = 'main' AND version = $1",
                  {std::to_string(m.version)});
      if (!del) return fail(del.error());
    }
    if (Status s = c.Exec(up ? m.up : m.down); !s.ok()) return fail(s);
    if (up) {
      Result<PgResult> ins =
          c.Query("", "INSERT INTO spool_migration (line, version, name) VALUES ('main', $1, $2)",
                  {std::to_string(m.version), m.name});
      if (!ins) return fail(ins.error());
    }
    Status commit = c.Exec("COMMIT");
    if (!commit.ok()) return fail(commit);
    return Status::Ok();
  }

  Status Listen() {
    Result<std::unique_ptr<Conn>> c = Conn::Connect(pool_.url(), pool_.target());
    Status s = c ? Status::Ok() : c.error();
    if (c) {
      char* ident = PQescapeIdentifier((*c)->get(), channel_.c_str(), channel_.size());
      if (ident == nullptr) {
        s = (*c)->ErrorFrom(nullptr, "listen");
      } else {
        s = (*c)->Exec(fmt::format("LISTEN {}", ident));
        PQfreemem(ident);
      }
    }
    if (!s.ok()) {
      listen_backoff_ =
          std::clamp(listen_backoff_ * 2, std::chrono::duration_cast<Duration>(kMinBackoff),
                     std::chrono::duration_cast<Duration>(kMaxBackoff));
      listen_retry_after_ = SteadyClock::now() + listen_backoff_;
      listen_error_ = s;
      return s;
    }
    listen_backoff_ = Duration::zero();
    listen_ = std::move(*c);
    return Status::Ok();
  }

  // True if any notification arrived; ConnectionLost (and a reconnect next call) if it broke.
  Result<bool> DrainNotifications() {
    if (PQconsumeInput(listen_->get()) == 0) {
      Status s = listen_->ErrorFrom(nullptr, "waiting for notifications");
      listen_.reset();
      return Status(Status::Code::kConnectionLost, s.message(), "08006");
    }
    bool any = false;
    while (PGnotify* n = PQnotifies(listen_->get())) {
      any = true;
      PQfreemem(n);
    }
    return any;
  }

  Pool pool_;
  PoolExecutor executor_;
  std::string channel_;
  int event_fd_ = -1;
  // Used only by the one thread that calls WaitForChange.
  std::unique_ptr<Conn> listen_;
  Duration listen_backoff_{};
  SteadyClock::time_point listen_retry_after_{};
  Status listen_error_;
};

}  // namespace

Result<std::unique_ptr<Driver>> OpenPostgresDriver(std::string url,
                                                   const DriverOptions& /*options*/) {
  std::string target = pg::DescribeTarget(url);
  auto driver = std::make_unique<PostgresDriver>(std::move(url), std::move(target));
  SPOOL_RETURN_IF_ERROR(driver->Init());
  return std::unique_ptr<Driver>(std::move(driver));
}

}  // namespace spool::internal
