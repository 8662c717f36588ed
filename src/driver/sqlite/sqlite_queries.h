#pragma once

#include <sqlite3.h>

#include <array>
#include <bit>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "driver/driver.h"
#include "driver/sqlite/sqlite_conn.h"

namespace spool::internal {

// Job rows as a statement returned them (columns in the order of the queries' job column list),
// copied out of SQLite without decoding: text columns go into one buffer, so a row costs no heap
// block of its own until it is decoded. A claim copies its rows while it holds the writer and
// decodes them (a heap block for every long name, JSON for the arrays) after releasing it.
class RawJobRows {
 public:
  // Copies the current row of `stmt`.
  void Append(sqlite3_stmt* stmt);
  // Copies a row a claim's UPDATE hands to spool_claimed (SqliteQueries::ClaimAvailable): its
  // kClaimedColumns values, the row being available in `queue`. REQUIRES: every row appended
  // this way is of one claim, so of one queue (copied once).
  void AppendClaimed(sqlite3_value** values, std::string_view queue);
  // Puts the rows in the order of `ids`, which must name each row once.
  Status Reorder(const std::vector<int64_t>& ids);
  size_t size() const { return rows_.size(); }
  bool empty() const { return rows_.empty(); }
  int64_t id(size_t i) const { return rows_[i].ints[0]; }
  // Internal error naming the job and the column when a value does not decode.
  Result<JobRow> Decode(size_t i) const;

 private:
  struct Span {
    size_t offset = 0;
    size_t size = 0;
  };
  struct Row {
    // id, state, attempt, max_attempts, created_at, scheduled_at, priority
    std::array<int64_t, 7> ints{};
    std::optional<int64_t> attempted_at, finalized_at;
    // attempted_by, queue, kind, args, metadata, tags, errors
    std::array<Span, 7> text{};
  };
  Result<JobRow> DecodeRow(const Row& r) const;
  std::string_view Text(const Row& row, size_t k) const {
    return std::string_view(text_).substr(row.text[k].offset, row.text[k].size);
  }

  std::string text_;
  std::vector<Row> rows_;
  std::optional<Span> claimed_queue_;  // AppendClaimed's queue, copied into text_ once
};

// The claim's SELECT (for tests): with `after`, the one that starts from a fetch position.
const std::string& SqliteFetchSql(bool after);

// spool's job queries over one SQLite connection, with the connection's prepared statements.
// Each write runs in its own transaction, or in a savepoint when the connection is already
// inside one (a Tx, or a caller's transaction). Does not own the connection and is not thread
// safe: the owner serialises calls.
class SqliteQueries {
 public:
  // Rows per multi-row statement. 10 parameters a row keeps a chunk far below SQLite's 32766.
  // A power of two: inserts take pieces of power-of-two sizes (see InsertStmt).
  static constexpr int kInsertChunk = 128;
  static constexpr int kUpdateChunk = 256;

  // How a piece of a bulk insert passes its values. Binding a value costs SQLite about 200
  // instructions, some 15% of a row's insert for the nine columns (callgrind, docs/benchmarks.md),
  // so jobs alike but for their args and time (one kind into one queue, the usual bulk insert)
  // bind the rest once for the piece, and jobs without metadata and tags leave those to the
  // table's defaults.
  enum InsertLayout { kInsertPerRow, kInsertNoExtras, kInsertShared, kInsertLayouts };

  explicit SqliteQueries(sqlite3* db) : cache_(db) {}

  StatementCache& cache() { return cache_; }

  Result<std::vector<JobInsertResult>> JobInsertMany(const JobInsertManyParams& params);
  Result<int64_t> JobInsertManyFast(const JobInsertManyParams& params);
  Result<std::vector<JobRow>> JobGetAvailable(const JobGetAvailableParams& params);
  // JobGetAvailable in two steps: ClaimAvailable needs the connection and returns the claimed
  // rows undecoded; FinishClaim decodes them as the claim left them without the connection,
  // which it takes (under `writer`, when not null) only to give the rows back if one does not
  // decode (see JobGetAvailableParams).
  Result<RawJobRows> ClaimAvailable(const JobGetAvailableParams& params);
  Result<std::vector<JobRow>> FinishClaim(const RawJobRows& raw,
                                          const JobGetAvailableParams& params, std::mutex* writer);
  Result<int64_t> JobSetStateIfRunningMany(const JobSetStateIfRunningManyParams& params);
  Result<JobScheduleResult> JobSchedule(const JobScheduleParams& params);
  Result<JobRow> JobGetByID(int64_t id);
  Result<std::vector<JobRow>> JobList(const JobListParams& params);
  Result<std::map<JobState, int64_t>> JobCountByState(std::string_view queue);

  Result<JobRow> JobCancel(const JobCancelParams& params);
  Result<JobRow> JobRetry(const JobRetryParams& params);
  Result<JobRow> JobDelete(int64_t id);
  Result<std::vector<int64_t>> JobGetCancelRequested(const std::vector<int64_t>& ids);
  Result<std::vector<JobRow>> JobGetStuck(const JobGetStuckParams& params);
  Result<int64_t> JobDeleteFinalized(const JobDeleteFinalizedParams& params);
  Result<bool> LeaderAttemptElect(const LeaderElectParams& params);
  Result<bool> LeaderAttemptReelect(const LeaderElectParams& params);
  Status LeaderResign(std::string_view leader_id);
  Result<std::optional<LeaderInfo>> LeaderGet();
  Result<std::optional<TimePoint>> ClientHeartbeat(const ClientHeartbeatParams& params);
  Status ClientDelete(std::string_view id);
  Result<int64_t> ClientDeleteStale(TimePoint before);
  Result<bool> QueuePause(std::string_view name, TimePoint now);
  Result<bool> QueueResume(std::string_view name, TimePoint now);
  Result<std::vector<QueueInfo>> QueueList();
  Result<std::optional<TimePoint>> QueuePausedAt(std::string_view name);
  Result<bool> QueueKnown(std::string_view name);
  Result<std::optional<TimePoint>> PeriodicGetLastTick(std::string_view name);
  Status PeriodicSetLastTick(std::string_view name, TimePoint tick, TimePoint now);

 private:
  // Inserts; appends the rows to `out` when it is set (RETURNING), else only counts. Rows with a
  // unique key go to InsertUnique.
  Result<int64_t> Insert(const JobInsertManyParams& params, std::vector<JobInsertResult>* out);
  // Claims the rows of `params.jobs` marked `claim` (rows[i] holds jobs[i], inserted in this
  // transaction) unless their queue is paused, and updates `rows` to match.
  Status ClaimInserted(const JobInsertManyParams& params, JobInsertResult* rows);
  // A batch with unique rows: the plain rows through the bulk path, then each unique row with
  // ON CONFLICT DO NOTHING, reading back the row holding the key when it is taken.
  Result<int64_t> InsertUnique(const JobInsertManyParams& params,
                               std::vector<JobInsertResult>* out);
  // Runs a write statement that returns job rows, in its own write scope, and copies the rows
  // out; they are decoded after the commit, so a row that does not read does not undo the write.
  Result<RawJobRows> WriteRaw(std::string_view sql, std::string_view context,
                              const std::function<int(sqlite3_stmt*)>& bind);
  // WriteRaw of a statement that returns at most one job row, decoded.
  Result<std::optional<JobRow>> WriteOneRow(std::string_view sql, std::string_view context,
                                            const std::function<int(sqlite3_stmt*)>& bind);
  // The job other than `id` that holds `id`'s unique key in one of its states (NotFound if none).
  Result<JobRow> UniqueKeyHolder(int64_t id);
  // The first job row `sql` (a cached statement taking `id` as ?1) reads, if any.
  Result<std::optional<JobRow>> ReadOneJob(const std::string& sql, int64_t id,
                                           std::string_view context);
  // Runs a write statement that returns no rows; returns sqlite3_changes.
  Result<int64_t> Write(std::string_view sql, std::string_view context,
                        const std::function<int(sqlite3_stmt*)>& bind);
  // Gives claimed rows back when one of them does not decode (a row edited by hand or corrupt),
  // so the batch is not left running until the rescuer finds it: scheduled with the attempt
  // unused, as a snooze leaves a job, at `now`, or kUnreadableRowDelay later for the rows that
  // do not decode.
  Status GiveBack(const RawJobRows& raw, TimePoint now);
  // The insert statement for `rows` rows, a power of two up to kInsertChunk, in `layout`.
  Result<sqlite3_stmt*> InsertStmt(int rows, bool returning, InsertLayout layout);
  // The outcome statements for `rows` rows (at most kUpdateChunk), prepared for a rounded-up
  // count: the rows past `rows` are left unbound (StmtScope clears the bindings after each use),
  // and their NULL ids match no job.
  Result<sqlite3_stmt*> CompleteStmt(int rows);
  // Plain completions of jobs `run.front()->id` to `run.back()->id` (sorted by id, no id twice),
  // by id range with the per-job values looked up by the SQL function spool_outcome_at; returns
  // how many rows changed.
  Result<int64_t> CompleteRun(std::span<const JobSetStateParams* const> run);
  // Registers spool_claimed and spool_outcome_at on the connection, once.
  Status RegisterFunctions();
  Result<sqlite3_stmt*> SetStateStmt(int rows);
  // The outcome updates of JobSetStateIfRunningMany, inside the caller's write scope; returns
  // how many rows changed.
  Result<int64_t> SetStates(const std::vector<const JobSetStateParams*>& jobs);
  // Of `jobs`, the ids whose row is running the attempt the outcome is of.
  // Of `jobs`, those still running in the attempt named (and, if `cancel_requested`, whose cancel
  // an admin requested).
  Result<std::set<int64_t>> StillRunning(const std::vector<JobSetStateParams>& jobs,
                                         bool cancel_requested);
  // Pointers to `jobs` (those in `only`, when set) for SetStates, where each outcome that a
  // cancel request turns into a cancel (JobSetStateParams::if_cancel_requested) points instead at
  // its cancel, kept in `cancels`.
  Result<std::vector<const JobSetStateParams*>> WithCancelRequests(
      const std::vector<JobSetStateParams>& jobs, const std::set<int64_t>* only,
      std::vector<JobSetStateParams>* cancels);

  StatementCache cache_;
  // Multi-row statements by row count, so a chunk never rebuilds its SQL to look it up; inserts
  // by the log2 of theirs.
  static constexpr size_t kInsertSizes = std::bit_width(static_cast<unsigned>(kInsertChunk));
  // [layout][log2 of the rows]
  std::array<std::array<sqlite3_stmt*, kInsertSizes>, kInsertLayouts> insert_fast_{};
  std::array<std::array<sqlite3_stmt*, kInsertSizes>, kInsertLayouts> insert_returning_{};
  std::array<sqlite3_stmt*, kUpdateChunk + 1> complete_{};
  std::array<sqlite3_stmt*, kUpdateChunk + 1> set_state_{};
  bool functions_registered_ = false;  // RegisterFunctions
};

}  // namespace spool::internal
