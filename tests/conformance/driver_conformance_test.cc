// The specification of the driver seam. Generic: every driver runs these cases unchanged, so they
// speak only through driver.h. See conformance.h for how a driver instantiates them.

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "conformance/conformance.h"
#include "driver/driver.h"
#include "spool/job.h"

using spool::JobRow;
using spool::JobState;
using spool::Status;
using spool::TimePoint;
using spool::internal::ClientHeartbeatParams;
using spool::internal::Driver;
using spool::internal::JobCancelParams;
using spool::internal::JobDeleteFinalizedParams;
using spool::internal::JobGetAvailableParams;
using spool::internal::JobGetStuckParams;
using spool::internal::JobInsertManyParams;
using spool::internal::JobInsertParams;
using spool::internal::JobInsertResult;
using spool::internal::JobRetryParams;
using spool::internal::JobScheduleParams;
using spool::internal::JobSetStateIfRunningManyParams;
using spool::internal::JobSetStateParams;
using spool::internal::LeaderElectParams;
using std::chrono::hours;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

namespace {

// A fixed "now", far from the epoch and from the test run's real time.
const TimePoint kT0{seconds(1'800'000'000)};

JobInsertParams Job(std::string kind = "test_kind", std::string queue = "default") {
  JobInsertParams p;
  p.kind = std::move(kind);
  p.queue = std::move(queue);
  p.scheduled_at = kT0;
  return p;
}

JobInsertParams JobAt(std::string queue, TimePoint scheduled_at, int priority = 1,
                      JobState state = JobState::kAvailable) {
  JobInsertParams p = Job("test_kind", std::move(queue));
  p.scheduled_at = scheduled_at;
  p.priority = priority;
  p.state = state;
  return p;
}

JobInsertManyParams Many(std::vector<JobInsertParams> jobs, TimePoint now = kT0) {
  return JobInsertManyParams{std::move(jobs), now};
}

JobGetAvailableParams Fetch(std::string queue, int max, TimePoint now = kT0,
                            std::string client_id = "client-1") {
  JobGetAvailableParams p;
  p.queue = std::move(queue);
  p.max = max;
  p.now = now;
  p.client_id = std::move(client_id);
  return p;
}

JobSetStateParams Outcome(int64_t id, JobState state, TimePoint at,
                          std::optional<spool::AttemptError> error = std::nullopt,
                          int attempt = 0) {
  JobSetStateParams p;
  p.id = id;
  p.attempt = attempt;
  p.state = state;
  p.at = at;
  p.error = std::move(error);
  return p;
}

// JobInsertMany's rows, for cases that insert no unique jobs (every result must be new).
spool::Result<std::vector<JobRow>> InsertRows(spool::internal::Executor& ex,
                                              const JobInsertManyParams& params) {
  SPOOL_ASSIGN_OR_RETURN(auto results, ex.JobInsertMany(params));
  std::vector<JobRow> rows;
  for (auto& r : results) {
    if (r.duplicate) return Status::Internal("a job without a unique key came back duplicate");
    rows.push_back(std::move(r.job));
  }
  return rows;
}

// Of the running jobs of `queue` (attempt 1), `ended` ends (cancelled, as by someone else) and
// `rescued` is rescued and runs again as attempt 2, claimed by another client.
Status EndOneAndRunOneAgain(spool::internal::Executor& ex, const std::string& queue, int64_t ended,
                            int64_t rescued) {
  const spool::AttemptError err{kT0, 1, "x", ""};
  SPOOL_ASSIGN_OR_RETURN(int64_t n, ex.JobSetStateIfRunningMany({{
                                        Outcome(ended, JobState::kCancelled, kT0, err),
                                        Outcome(rescued, JobState::kRetryable, kT0, err),
                                    }}));
  SPOOL_ASSIGN_OR_RETURN(auto scheduled, ex.JobSchedule({kT0, 10}));
  SPOOL_ASSIGN_OR_RETURN(auto again, ex.JobGetAvailable(Fetch(queue, 10, kT0, "client-2")));
  if (n != 2 || scheduled.count != 1 || again.size() != 1 || again[0].id != rescued ||
      again[0].attempt != 2) {
    return Status::Internal("set-up: " + std::to_string(n) + " outcomes written, " +
                            std::to_string(scheduled.count) + " scheduled, " +
                            std::to_string(again.size()) + " claimed again (want 2, 1 and job " +
                            std::to_string(rescued) + " as attempt 2)");
  }
  return Status::Ok();
}

std::vector<int64_t> Ids(const std::vector<JobRow>& rows) {
  std::vector<int64_t> ids;
  for (const auto& r : rows) ids.push_back(r.id);
  return ids;
}

// JSON compared by value: a driver may normalise whitespace or key order.
nlohmann::json Json(const std::string& text) { return nlohmann::json::parse(text); }

}  // namespace

void DriverConformanceTest::SetUp() {
  auto driver = GetParam().open_fresh();
  ASSERT_TRUE(driver.has_value()) << driver.error().ToString();
  driver_ = std::move(*driver);
}

// ---- insert -----------------------------------------------------------------------------------

TEST_P(DriverConformanceTest, InsertManyReturnsRowsInInputOrderWithDefaults) {
  JobInsertParams a = Job("kind_a", "q1");
  JobInsertParams b = Job("kind_b", "q2");
  b.priority = 3;
  b.max_attempts = 7;
  b.args = R"({"to":"a@b.c","n":2})";
  b.metadata = R"({"m":{"k":[1,2]}})";
  b.tags = {"urgent", "mail"};
  b.scheduled_at = kT0 - seconds(5);
  JobInsertParams c = Job("kind_c", "q1");
  c.tags = {"with \"quote\" and \\ backslash", "ünïcödé"};

  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many({a, b, c}, kT0 + seconds(1))));
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].kind, "kind_a");
  EXPECT_EQ(rows[1].kind, "kind_b");
  EXPECT_EQ(rows[2].kind, "kind_c");
  EXPECT_LT(rows[0].id, rows[1].id);
  EXPECT_LT(rows[1].id, rows[2].id);

  const JobRow& r = rows[1];
  EXPECT_EQ(r.state, JobState::kAvailable);
  EXPECT_EQ(r.attempt, 0);
  EXPECT_EQ(r.max_attempts, 7);
  EXPECT_FALSE(r.attempted_at.has_value());
  EXPECT_TRUE(r.attempted_by.empty());
  EXPECT_EQ(r.created_at, kT0 + seconds(1));
  EXPECT_EQ(r.scheduled_at, kT0 - seconds(5));
  EXPECT_FALSE(r.finalized_at.has_value());
  EXPECT_EQ(r.priority, 3);
  EXPECT_EQ(r.queue, "q2");
  EXPECT_EQ(Json(r.args), Json(b.args));
  EXPECT_EQ(Json(r.metadata), Json(b.metadata));
  EXPECT_EQ(r.tags, b.tags);
  EXPECT_TRUE(r.errors.empty());

  EXPECT_EQ(rows[0].priority, 1);
  EXPECT_EQ(rows[0].max_attempts, 25);
  EXPECT_EQ(Json(rows[0].args), nlohmann::json::object());
  EXPECT_EQ(Json(rows[0].metadata), nlohmann::json::object());
  EXPECT_TRUE(rows[0].tags.empty());
  EXPECT_EQ(rows[2].tags, c.tags);

  // What was returned is what is stored.
  CONF_ASSIGN_OR_FAIL(JobRow got, exec().JobGetByID(r.id));
  EXPECT_EQ(got.kind, "kind_b");
  EXPECT_EQ(got.created_at, r.created_at);
  EXPECT_EQ(got.scheduled_at, r.scheduled_at);
  EXPECT_EQ(got.tags, r.tags);
  EXPECT_EQ(Json(got.args), Json(b.args));
  CONF_ASSIGN_OR_FAIL(JobRow got_c, exec().JobGetByID(rows[2].id));
  EXPECT_EQ(got_c.tags, c.tags);
}

TEST_P(DriverConformanceTest, InsertManyKeepsInputOrderAcrossManyRows) {
  std::vector<JobInsertParams> jobs;
  for (int i = 0; i < 601; ++i) jobs.push_back(Job("kind_" + std::to_string(i)));
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many(jobs)));
  ASSERT_EQ(rows.size(), jobs.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].kind, jobs[i].kind) << i;
    if (i > 0) {
      EXPECT_LT(rows[i - 1].id, rows[i].id);
    }
  }
}

TEST_P(DriverConformanceTest, InsertStoresAvailableScheduledAndPendingAsGiven) {
  CONF_ASSIGN_OR_FAIL(auto rows,
                      InsertRows(exec(), Many({
                                             JobAt("q", kT0 - seconds(1), 1, JobState::kAvailable),
                                             JobAt("q", kT0 + seconds(60), 1, JobState::kScheduled),
                                             JobAt("q", kT0 - seconds(1), 1, JobState::kPending),
                                         })));
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].state, JobState::kAvailable);
  EXPECT_EQ(rows[1].state, JobState::kScheduled);
  EXPECT_EQ(rows[2].state, JobState::kPending);
  for (const auto& r : rows) EXPECT_FALSE(r.finalized_at.has_value());

  // Only the available one can be fetched, even when pending's scheduled_at has passed.
  CONF_ASSIGN_OR_FAIL(auto fetched, exec().JobGetAvailable(Fetch("q", 10, kT0 + seconds(120))));
  ASSERT_EQ(fetched.size(), 1u);
  EXPECT_EQ(fetched[0].id, rows[0].id);
}

TEST_P(DriverConformanceTest, InsertManyFastReturnsCountAndStoresRows) {
  std::vector<JobInsertParams> jobs;
  for (int i = 0; i < 1037; ++i) jobs.push_back(Job("fast", i % 3 == 0 ? "qa" : "qb"));
  jobs[5].tags = {"t"};
  // Runs of equal and differing times (a driver may format each distinct time once).
  const auto at = [](int i) { return kT0 - std::chrono::microseconds(i % 5 < 3 ? 0 : i); };
  for (int i = 0; i < 1037; ++i) jobs[static_cast<size_t>(i)].scheduled_at = at(i);
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobInsertManyFast(Many(jobs)));
  EXPECT_EQ(n, 1037);
  CONF_ASSIGN_OR_FAIL(auto all, exec().JobCountByState(""));
  EXPECT_EQ(all, (std::map<JobState, int64_t>{{JobState::kAvailable, 1037}}));
  CONF_ASSIGN_OR_FAIL(auto qa, exec().JobCountByState("qa"));
  EXPECT_EQ(qa[JobState::kAvailable], 346);
  spool::JobListParams list;
  list.limit = 10;
  CONF_ASSIGN_OR_FAIL(auto first, exec().JobList(list));
  ASSERT_EQ(first.size(), 10u);
  EXPECT_EQ(first[5].tags, std::vector<std::string>{"t"});
  EXPECT_EQ(first[0].created_at, kT0);
  list.limit = 2000;
  CONF_ASSIGN_OR_FAIL(auto rows, exec().JobList(list));
  ASSERT_EQ(rows.size(), 1037u);
  for (int i = 0; i < 1037; ++i) {
    EXPECT_EQ(rows[static_cast<size_t>(i)].scheduled_at, at(i)) << "job " << i;
  }
}

// The fast path may take another road to the table (PostgreSQL: COPY): every value must arrive
// exactly, including text that needs escaping and times with microseconds or before 1970.
TEST_P(DriverConformanceTest, InsertManyFastStoresEveryValueExactly) {
  JobInsertParams a = Job("kind\twith\\odd \"chars\" \u00e9", "queue \\ one");
  a.args = R"({"text":"line1\nline2\ttab \\ back \"quote\" \u00e9 \ud83d\ude00","n":-1.5})";
  a.metadata = R"({"k":"v\\w","list":[1,2]})";
  a.tags = {"tag one", "two\"quoted\"", "back\\slash", "comma,brace{}"};
  a.priority = 4;
  a.max_attempts = 3;
  a.state = JobState::kScheduled;
  a.scheduled_at = kT0 + std::chrono::microseconds(123'457);
  JobInsertParams b = Job("plain", "q2");
  b.state = JobState::kPending;
  b.scheduled_at = TimePoint(std::chrono::microseconds(-86'400'000'001));  // 1969-12-30
  const TimePoint now = kT0 + std::chrono::microseconds(7);
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobInsertManyFast(Many({a, b}, now)));
  ASSERT_EQ(n, 2);
  spool::JobListParams list;
  list.limit = 10;
  CONF_ASSIGN_OR_FAIL(auto rows, exec().JobList(list));
  ASSERT_EQ(rows.size(), 2u);
  const JobRow& ra = rows[0];
  EXPECT_EQ(ra.kind, a.kind);
  EXPECT_EQ(ra.queue, a.queue);
  EXPECT_EQ(Json(ra.args), Json(a.args));
  EXPECT_EQ(Json(ra.metadata), Json(a.metadata));
  EXPECT_EQ(ra.tags, a.tags);
  EXPECT_EQ(ra.priority, 4);
  EXPECT_EQ(ra.max_attempts, 3);
  EXPECT_EQ(ra.state, JobState::kScheduled);
  EXPECT_EQ(ra.scheduled_at, a.scheduled_at);
  EXPECT_EQ(ra.created_at, now);
  EXPECT_EQ(ra.attempt, 0);
  const JobRow& rb = rows[1];
  EXPECT_EQ(rb.kind, "plain");
  EXPECT_EQ(rb.state, JobState::kPending);
  EXPECT_EQ(rb.scheduled_at, b.scheduled_at);
  EXPECT_TRUE(rb.tags.empty());
}

// A batch where no row has metadata or tags may leave those columns to the table's defaults
// (PostgreSQL's COPY does); a batch where one row has them must still store every row's own.
TEST_P(DriverConformanceTest, InsertManyFastStoresMetadataAndTagsOfMixedBatches) {
  JobInsertParams with_metadata = Job("m", "q");
  with_metadata.metadata = R"({"k":1})";
  JobInsertParams with_tags = Job("t", "q");
  with_tags.tags = {"a", "b"};
  CONF_ASSIGN_OR_FAIL(int64_t n1, exec().JobInsertManyFast(Many({with_metadata, Job("p1", "q")})));
  CONF_ASSIGN_OR_FAIL(int64_t n2, exec().JobInsertManyFast(Many({Job("p2", "q"), with_tags})));
  CONF_ASSIGN_OR_FAIL(int64_t n3, exec().JobInsertManyFast(Many({Job("p3", "q"), Job("p4", "q")})));
  EXPECT_EQ(n1 + n2 + n3, 6);
  spool::JobListParams list;
  list.limit = 10;
  CONF_ASSIGN_OR_FAIL(auto rows, exec().JobList(list));
  ASSERT_EQ(rows.size(), 6u);
  std::map<std::string, const JobRow*> by_kind;
  for (const JobRow& r : rows) by_kind[r.kind] = &r;
  EXPECT_EQ(Json(by_kind["m"]->metadata), Json(with_metadata.metadata));
  EXPECT_EQ(by_kind["t"]->tags, with_tags.tags);
  for (const char* plain : {"p1", "p2", "p3", "p4"}) {
    ASSERT_EQ(by_kind.count(plain), 1u) << plain;
    EXPECT_EQ(Json(by_kind[plain]->metadata), Json("{}")) << plain;
    EXPECT_TRUE(by_kind[plain]->tags.empty()) << plain;
    EXPECT_EQ(by_kind[plain]->errors.size(), 0u) << plain;
  }
  EXPECT_TRUE(by_kind["m"]->tags.empty());
  EXPECT_EQ(Json(by_kind["t"]->metadata), Json("{}"));

  // Inserts that return their rows, in pieces with and without the two columns (2 rows, then 1).
  CONF_ASSIGN_OR_FAIL(auto returned,
                      InsertRows(exec(), Many({Job("r1", "q"), Job("r2", "q"), with_tags})));
  ASSERT_EQ(returned.size(), 3u);
  EXPECT_TRUE(returned[0].tags.empty());
  EXPECT_EQ(Json(returned[1].metadata), Json("{}"));
  EXPECT_EQ(returned[2].tags, with_tags.tags);
  CONF_ASSIGN_OR_FAIL(JobRow stored, exec().JobGetByID(returned[2].id));
  EXPECT_EQ(stored.tags, with_tags.tags);
}

// Jobs alike but for args and time (a driver may bind the shared values once for the batch).
TEST_P(DriverConformanceTest, InsertManyOfAlikeJobsStoresEachRowsOwnArgsAndTime) {
  std::vector<JobInsertParams> jobs;
  for (int i = 0; i < 300; ++i) {
    JobInsertParams j = Job("alike", "q_alike");
    j.priority = 3;
    j.max_attempts = 7;
    j.state = JobState::kScheduled;
    j.metadata = R"({"batch":1})";
    j.tags = {"x", "y"};
    j.args = "{\"n\":" + std::to_string(i) + "}";
    j.scheduled_at = kT0 + std::chrono::microseconds(i);
    jobs.push_back(std::move(j));
  }
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobInsertManyFast(Many(jobs)));
  EXPECT_EQ(n, 300);
  CONF_ASSIGN_OR_FAIL(auto returned, InsertRows(exec(), Many({jobs[7], jobs[8], jobs[9]})));
  ASSERT_EQ(returned.size(), 3u);
  spool::JobListParams list;
  list.limit = 400;
  CONF_ASSIGN_OR_FAIL(auto rows, exec().JobList(list));
  ASSERT_EQ(rows.size(), 303u);
  for (size_t i = 0; i < rows.size(); ++i) {
    const JobInsertParams& want = jobs[i < 300 ? i : i - 300 + 7];
    const JobRow& got = rows[i];
    EXPECT_EQ(Json(got.args), Json(want.args)) << i;
    EXPECT_EQ(got.scheduled_at, want.scheduled_at) << i;
    EXPECT_EQ(got.kind, "alike") << i;
    EXPECT_EQ(got.queue, "q_alike") << i;
    EXPECT_EQ(got.priority, 3) << i;
    EXPECT_EQ(got.max_attempts, 7) << i;
    EXPECT_EQ(got.state, JobState::kScheduled) << i;
    EXPECT_EQ(Json(got.metadata), Json(want.metadata)) << i;
    EXPECT_EQ(got.tags, want.tags) << i;
  }
  EXPECT_EQ(Json(returned[2].args), Json(jobs[9].args));
}

TEST_P(DriverConformanceTest, InsertNothingIsANoOp) {
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many({})));
  EXPECT_TRUE(rows.empty());
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobInsertManyFast(Many({})));
  EXPECT_EQ(n, 0);
}

TEST_P(DriverConformanceTest, InsertRejectsInvalidRowsAndInsertsNothing) {
  std::vector<JobInsertParams> jobs(300, Job());
  jobs[250].state = JobState::kRunning;
  auto r1 = InsertRows(exec(), Many(jobs));
  EXPECT_TRUE(r1.error().IsInvalidArgument()) << r1.error().ToString();
  jobs[250].state = JobState::kAvailable;
  jobs[299].priority = 9;
  auto r2 = exec().JobInsertManyFast(Many(jobs));
  EXPECT_TRUE(r2.error().IsInvalidArgument()) << r2.error().ToString();
  jobs[299].priority = 1;
  jobs[0].max_attempts = 0;
  auto r3 = exec().JobInsertManyFast(Many(jobs));
  EXPECT_TRUE(r3.error().IsInvalidArgument()) << r3.error().ToString();
  CONF_ASSIGN_OR_FAIL(auto counts, exec().JobCountByState(""));
  EXPECT_TRUE(counts.empty());
}

TEST_P(DriverConformanceTest, SharedExecutorIsThreadSafe) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 50;
  std::vector<std::future<Status>> done;
  for (int t = 0; t < kThreads; ++t) {
    done.push_back(std::async(std::launch::async, [this] {
      for (int i = 0; i < kPerThread; ++i) {
        auto r = InsertRows(exec(), Many({Job(), Job()}));
        if (!r) return r.error();
      }
      return Status::Ok();
    }));
  }
  for (auto& f : done) CONF_ASSERT_OK(f.get());
  CONF_ASSIGN_OR_FAIL(auto counts, exec().JobCountByState(""));
  EXPECT_EQ(counts[JobState::kAvailable], kThreads * kPerThread * 2);
}

// ---- fetch ------------------------------------------------------------------------------------

TEST_P(DriverConformanceTest, FetchRespectsQueueMaxStateAndScheduledAt) {
  std::vector<JobInsertParams> jobs;
  for (int i = 0; i < 5; ++i) jobs.push_back(JobAt("q1", kT0 - seconds(10)));
  jobs.push_back(JobAt("q2", kT0 - seconds(10)));
  jobs.push_back(JobAt("q2", kT0 - seconds(10)));
  jobs.push_back(JobAt("q1", kT0 - seconds(20), 1, JobState::kScheduled));  // due, not available
  jobs.push_back(JobAt("q1", kT0 - seconds(20), 1, JobState::kPending));
  jobs.push_back(JobAt("q1", kT0 + seconds(1)));  // available but in the future
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many(jobs)));

  CONF_ASSIGN_OR_FAIL(auto none, exec().JobGetAvailable(Fetch("q1", 0)));
  EXPECT_TRUE(none.empty());
  CONF_ASSIGN_OR_FAIL(auto first, exec().JobGetAvailable(Fetch("q1", 3)));
  ASSERT_EQ(first.size(), 3u);
  CONF_ASSIGN_OR_FAIL(auto second, exec().JobGetAvailable(Fetch("q1", 10)));
  ASSERT_EQ(second.size(), 2u);
  CONF_ASSIGN_OR_FAIL(auto third, exec().JobGetAvailable(Fetch("q1", 10)));
  EXPECT_TRUE(third.empty());

  std::set<int64_t> got;
  for (const auto& r : first) got.insert(r.id);
  for (const auto& r : second) got.insert(r.id);
  EXPECT_EQ(got, (std::set<int64_t>{rows[0].id, rows[1].id, rows[2].id, rows[3].id, rows[4].id}));
  for (const auto& r : first) {
    EXPECT_EQ(r.queue, "q1");
    EXPECT_EQ(r.state, JobState::kRunning);
  }

  CONF_ASSIGN_OR_FAIL(auto q2, exec().JobCountByState("q2"));
  EXPECT_EQ(q2, (std::map<JobState, int64_t>{{JobState::kAvailable, 2}}));

  // Once its time comes the future job is fetched too.
  CONF_ASSIGN_OR_FAIL(auto later, exec().JobGetAvailable(Fetch("q1", 10, kT0 + seconds(1))));
  ASSERT_EQ(later.size(), 1u);
  EXPECT_EQ(later[0].id, rows[9].id);
}

// A claim marks exactly the jobs it returns, whether their ids are consecutive (the SQLite driver
// then marks them by id range) or have other jobs between them: another queue's, or its own
// queue's in another state.
TEST_P(DriverConformanceTest, FetchMarksExactlyTheJobsItReturns) {
  CONF_ASSIGN_OR_FAIL(auto rows,
                      InsertRows(exec(), Many({
                                             JobAt("q1", kT0 - seconds(9)),  // 0
                                             JobAt("q2", kT0 - seconds(9)),  // 1: another queue
                                             JobAt("q1", kT0 - seconds(8)),  // 2
                                             JobAt("q1", kT0 - seconds(9), 1,
                                                   JobState::kScheduled),    // 3: not available
                                             JobAt("q1", kT0 - seconds(7)),  // 4
                                             JobAt("q1", kT0 - seconds(6)),  // 5
                                             JobAt("q1", kT0 - seconds(6)),  // 6
                                             JobAt("q1", kT0 - seconds(6)),  // 7
                                         })));
  CONF_ASSIGN_OR_FAIL(auto gaps, exec().JobGetAvailable(Fetch("q1", 3)));
  EXPECT_EQ(Ids(gaps), (std::vector<int64_t>{rows[0].id, rows[2].id, rows[4].id}));
  CONF_ASSIGN_OR_FAIL(auto run, exec().JobGetAvailable(Fetch("q1", 10)));
  EXPECT_EQ(Ids(run), (std::vector<int64_t>{rows[5].id, rows[6].id, rows[7].id}));
  const std::vector<JobState> want = {
      JobState::kRunning, JobState::kAvailable, JobState::kRunning, JobState::kScheduled,
      JobState::kRunning, JobState::kRunning,   JobState::kRunning, JobState::kRunning};
  for (size_t i = 0; i < rows.size(); ++i) {
    CONF_ASSIGN_OR_FAIL(JobRow row, exec().JobGetByID(rows[i].id));
    EXPECT_EQ(row.state, want[i]) << "job " << i;
    EXPECT_EQ(row.attempt, want[i] == JobState::kRunning ? 1 : 0) << "job " << i;
  }
}

TEST_P(DriverConformanceTest, FetchOrdersByPriorityThenScheduledAtThenId) {
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many({
                                                        JobAt("q", kT0 - seconds(1), 2),    // A
                                                        JobAt("q", kT0 - seconds(1), 1),    // B
                                                        JobAt("q", kT0 - seconds(5), 1),    // C
                                                        JobAt("q", kT0 - seconds(1), 1),    // D
                                                        JobAt("q", kT0 - seconds(100), 4),  // E
                                                    })));
  const std::vector<int64_t> want = {rows[2].id, rows[1].id, rows[3].id, rows[0].id, rows[4].id};

  CONF_ASSIGN_OR_FAIL(auto all, exec().JobGetAvailable(Fetch("q", 10)));
  EXPECT_EQ(Ids(all), want);

  // The order also decides which jobs a smaller batch takes.
  CONF_ASSERT_OK(driver().MigrateDown(0));
  CONF_ASSERT_OK(driver().MigrateUp(spool::internal::LatestVersion(driver())));
  CONF_ASSIGN_OR_FAIL(auto again, InsertRows(exec(), Many({
                                                         JobAt("q", kT0 - seconds(1), 2),
                                                         JobAt("q", kT0 - seconds(1), 1),
                                                         JobAt("q", kT0 - seconds(5), 1),
                                                         JobAt("q", kT0 - seconds(1), 1),
                                                         JobAt("q", kT0 - seconds(100), 4),
                                                     })));
  std::vector<int64_t> one_by_one;
  for (int i = 0; i < 5; ++i) {
    CONF_ASSIGN_OR_FAIL(auto one, exec().JobGetAvailable(Fetch("q", 1)));
    ASSERT_EQ(one.size(), 1u);
    one_by_one.push_back(one[0].id);
  }
  EXPECT_EQ(one_by_one, (std::vector<int64_t>{again[2].id, again[1].id, again[3].id, again[0].id,
                                              again[4].id}));
}

TEST_P(DriverConformanceTest, FetchFromAPositionSkipsOnlyJobsOrderedBeforeIt) {
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many({
                                                        JobAt("q", kT0 - seconds(30), 1),  // A
                                                        JobAt("q", kT0 - seconds(30), 2),  // B
                                                        JobAt("q", kT0 - seconds(20), 2),  // C
                                                        JobAt("q", kT0 - seconds(20), 2),  // D
                                                        JobAt("q", kT0 - seconds(40), 3),  // E
                                                        JobAt("q", kT0 - seconds(10), 2),  // F
                                                        JobAt("q", kT0 + seconds(10), 2),  // G
                                                    })));
  JobGetAvailableParams from_c = Fetch("q", 10);
  from_c.after = spool::internal::FetchPosition{
      .priority = 2, .scheduled_at = kT0 - seconds(20), .id = rows[2].id};
  // After the position (C), in order: D (C's priority and time, a later id), F, E; not A or B
  // before it, nor C at it, nor G, which is not due.
  CONF_ASSIGN_OR_FAIL(auto after, exec().JobGetAvailable(from_c));
  EXPECT_EQ(Ids(after), (std::vector<int64_t>{rows[3].id, rows[5].id, rows[4].id}));
  // From the start, the jobs at and before the position are still there.
  CONF_ASSIGN_OR_FAIL(auto rest, exec().JobGetAvailable(Fetch("q", 10)));
  EXPECT_EQ(Ids(rest), (std::vector<int64_t>{rows[0].id, rows[1].id, rows[2].id}));
}

TEST_P(DriverConformanceTest, FetchIncrementsAttemptAndRecordsClient) {
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many({Job("k", "q")})));
  const int64_t id = rows[0].id;

  CONF_ASSIGN_OR_FAIL(auto f1, exec().JobGetAvailable(Fetch("q", 1, kT0, "client-a")));
  ASSERT_EQ(f1.size(), 1u);
  EXPECT_EQ(f1[0].id, id);
  EXPECT_EQ(f1[0].state, JobState::kRunning);
  EXPECT_EQ(f1[0].attempt, 1);
  EXPECT_EQ(f1[0].attempted_at, std::optional<TimePoint>(kT0));
  EXPECT_EQ(f1[0].attempted_by, std::vector<std::string>{"client-a"});
  EXPECT_EQ(f1[0].scheduled_at, kT0);

  // Fail it, make it due again, fetch with another client.
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobSetStateIfRunningMany(
                                     {{Outcome(id, JobState::kRetryable, kT0 + seconds(1))}}));
  EXPECT_EQ(n, 1);
  CONF_ASSIGN_OR_FAIL(auto sched, exec().JobSchedule({kT0 + seconds(1), 100}));
  EXPECT_EQ(sched.count, 1);
  CONF_ASSIGN_OR_FAIL(auto f2, exec().JobGetAvailable(Fetch("q", 1, kT0 + seconds(2), "client-b")));
  ASSERT_EQ(f2.size(), 1u);
  EXPECT_EQ(f2[0].attempt, 2);
  EXPECT_EQ(f2[0].attempted_at, std::optional<TimePoint>(kT0 + seconds(2)));
  EXPECT_EQ(f2[0].attempted_by, (std::vector<std::string>{"client-a", "client-b"}));

  CONF_ASSIGN_OR_FAIL(JobRow stored, exec().JobGetByID(id));
  EXPECT_EQ(stored.state, JobState::kRunning);
  EXPECT_EQ(stored.attempt, 2);
  EXPECT_EQ(stored.attempted_by, f2[0].attempted_by);
}

// Every field of a claimed job is what the driver stores for it after the claim, on the first
// attempt and on a later one (errors and clients recorded). The three jobs differ in every
// field, and their priorities put them in another order than their ids: the batch comes back in
// fetch order.
TEST_P(DriverConformanceTest, FetchReturnsEachRowAsStored) {
  const auto job = [](int n, int priority) {
    JobInsertParams p = Job("kind_" + std::to_string(n), "q");
    p.args = R"({"n":)" + std::to_string(n) + R"(,"s":"args"})";
    p.metadata = R"({"m":)" + std::to_string(n) + "}";
    p.tags = {"tag_" + std::to_string(n), "all"};
    p.priority = priority;
    p.max_attempts = 10 + n;
    p.scheduled_at = kT0 - seconds(100 - n);
    return p;
  };
  CONF_ASSIGN_OR_FAIL(
      auto rows, InsertRows(exec(), Many({job(0, 3), job(1, 1), job(2, 2)}, kT0 - seconds(200))));
  const auto expect_as_stored = [&](const std::vector<JobRow>& claimed) {
    for (const JobRow& got : claimed) {
      SCOPED_TRACE("job " + std::to_string(got.id));
      CONF_ASSIGN_OR_FAIL(JobRow want, exec().JobGetByID(got.id));
      EXPECT_EQ(got.state, want.state);
      EXPECT_EQ(got.attempt, want.attempt);
      EXPECT_EQ(got.max_attempts, want.max_attempts);
      EXPECT_EQ(got.attempted_at, want.attempted_at);
      EXPECT_EQ(got.attempted_by, want.attempted_by);
      EXPECT_EQ(got.created_at, want.created_at);
      EXPECT_EQ(got.scheduled_at, want.scheduled_at);
      EXPECT_EQ(got.finalized_at, want.finalized_at);
      EXPECT_EQ(got.priority, want.priority);
      EXPECT_EQ(got.queue, want.queue);
      EXPECT_EQ(got.kind, want.kind);
      EXPECT_EQ(Json(got.args), Json(want.args));
      EXPECT_EQ(Json(got.metadata), Json(want.metadata));
      EXPECT_EQ(got.tags, want.tags);
      ASSERT_EQ(got.errors.size(), want.errors.size());
      for (size_t i = 0; i < got.errors.size(); ++i) {
        EXPECT_EQ(got.errors[i].at, want.errors[i].at);
        EXPECT_EQ(got.errors[i].attempt, want.errors[i].attempt);
        EXPECT_EQ(got.errors[i].error, want.errors[i].error);
        EXPECT_EQ(got.errors[i].trace, want.errors[i].trace);
      }
    }
  };
  CONF_ASSIGN_OR_FAIL(auto first, exec().JobGetAvailable(Fetch("q", 10, kT0, "client-a")));
  EXPECT_EQ(Ids(first), (std::vector<int64_t>{rows[1].id, rows[2].id, rows[0].id}));
  expect_as_stored(first);
  EXPECT_EQ(first[0].created_at, kT0 - seconds(200));
  EXPECT_EQ(first[0].scheduled_at, kT0 - seconds(99));
  EXPECT_EQ(Json(first[0].args), Json(R"({"n":1,"s":"args"})"));

  // All three fail and come back; the second claim sees their errors and first client.
  JobSetStateIfRunningManyParams failed;
  for (const JobRow& r : first) {
    failed.jobs.push_back(Outcome(r.id, JobState::kRetryable, kT0 + seconds(1),
                                  spool::AttemptError{kT0, 1, "failed " + r.kind, "trace"}, 1));
  }
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobSetStateIfRunningMany(failed));
  ASSERT_EQ(n, 3);
  CONF_ASSIGN_OR_FAIL(auto sched, exec().JobSchedule({kT0 + seconds(1), 10}));
  ASSERT_EQ(sched.count, 3);
  CONF_ASSIGN_OR_FAIL(auto second,
                      exec().JobGetAvailable(Fetch("q", 10, kT0 + seconds(2), "client-b")));
  EXPECT_EQ(Ids(second), (std::vector<int64_t>{rows[1].id, rows[2].id, rows[0].id}));
  expect_as_stored(second);
  ASSERT_EQ(second.size(), 3u);
  EXPECT_EQ(second[2].attempted_by, (std::vector<std::string>{"client-a", "client-b"}));
  ASSERT_EQ(second[2].errors.size(), 1u);
  EXPECT_EQ(second[2].errors[0].error, "failed kind_0");
}

JobInsertParams Claimed(JobInsertParams p) {
  p.claim = true;
  return p;
}

TEST_P(DriverConformanceTest, InsertClaimsMarkedRowsForTheClient) {
  JobInsertManyParams p =
      Many({Claimed(Job("k", "q")), Job("k", "q"), Claimed(Job("k", "q2"))}, kT0 + seconds(5));
  p.claim_for = "client-a";
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), p));
  ASSERT_EQ(rows.size(), 3u);
  for (size_t i : {size_t{0}, size_t{2}}) {
    EXPECT_EQ(rows[i].state, JobState::kRunning) << i;
    EXPECT_EQ(rows[i].attempt, 1) << i;
    EXPECT_EQ(rows[i].attempted_at, std::optional<TimePoint>(kT0 + seconds(5))) << i;
    EXPECT_EQ(rows[i].attempted_by, std::vector<std::string>{"client-a"}) << i;
    CONF_ASSIGN_OR_FAIL(JobRow stored, exec().JobGetByID(rows[i].id));
    EXPECT_EQ(stored.state, JobState::kRunning) << i;
    EXPECT_EQ(stored.attempt, 1) << i;
    EXPECT_EQ(stored.attempted_at, rows[i].attempted_at) << i;
    EXPECT_EQ(stored.attempted_by, rows[i].attempted_by) << i;
    EXPECT_EQ(stored.scheduled_at, kT0) << i;
  }
  EXPECT_EQ(rows[1].state, JobState::kAvailable);
  EXPECT_EQ(rows[1].attempt, 0);
  EXPECT_TRUE(rows[1].attempted_by.empty());

  // A fetch sees only the unclaimed row; the claimed ones complete like fetched ones.
  CONF_ASSIGN_OR_FAIL(auto fetched, exec().JobGetAvailable(Fetch("q", 10, kT0 + seconds(6))));
  EXPECT_EQ(Ids(fetched), std::vector<int64_t>{rows[1].id});
  CONF_ASSIGN_OR_FAIL(auto none, exec().JobGetAvailable(Fetch("q2", 10, kT0 + seconds(6))));
  EXPECT_TRUE(none.empty());
  CONF_ASSIGN_OR_FAIL(int64_t n,
                      exec().JobSetStateIfRunningMany(
                          {{Outcome(rows[0].id, JobState::kCompleted, kT0 + seconds(7)),
                            Outcome(rows[2].id, JobState::kCompleted, kT0 + seconds(7))}}));
  EXPECT_EQ(n, 2);
}

TEST_P(DriverConformanceTest, InsertLeavesRowsOfAPausedQueueAvailable) {
  CONF_ASSERT_OK(exec().QueuePause("paused", kT0));
  JobInsertManyParams p = Many({Claimed(Job("k", "paused")), Claimed(Job("k", "q"))});
  p.claim_for = "client-a";
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), p));
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].state, JobState::kAvailable);
  EXPECT_EQ(rows[0].attempt, 0);
  EXPECT_TRUE(rows[0].attempted_by.empty());
  EXPECT_FALSE(rows[0].attempted_at.has_value());
  EXPECT_EQ(rows[1].state, JobState::kRunning);
  CONF_ASSIGN_OR_FAIL(JobRow stored, exec().JobGetByID(rows[0].id));
  EXPECT_EQ(stored.state, JobState::kAvailable);
  EXPECT_EQ(stored.attempt, 0);
  CONF_ASSERT_OK(exec().QueueResume("paused", kT0));
  CONF_ASSIGN_OR_FAIL(auto fetched, exec().JobGetAvailable(Fetch("paused", 10)));
  EXPECT_EQ(Ids(fetched), std::vector<int64_t>{rows[0].id});
}

TEST_P(DriverConformanceTest, InsertClaimsInsideATransactionOnlyOnCommit) {
  {
    CONF_ASSIGN_OR_FAIL(auto tx, driver().Begin());
    JobInsertManyParams p = Many({Claimed(Job("k", "q"))});
    p.claim_for = "client-a";
    CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(*tx, p));
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0].state, JobState::kRunning);
    CONF_ASSERT_OK(tx->Rollback());
  }
  CONF_ASSIGN_OR_FAIL(auto counts, exec().JobCountByState(""));
  EXPECT_TRUE(counts.empty());
}

TEST_P(DriverConformanceTest, InsertRejectsClaimsItCannotHonour) {
  auto rejected = [&](JobInsertManyParams p, bool fast) {
    if (fast) {
      auto r = exec().JobInsertManyFast(p);
      return !r && r.error().IsInvalidArgument();
    }
    auto r = exec().JobInsertMany(p);
    return !r && r.error().IsInvalidArgument();
  };
  JobInsertManyParams no_client = Many({Claimed(Job("k", "q"))});
  EXPECT_TRUE(rejected(no_client, false));
  JobInsertManyParams fast = Many({Claimed(Job("k", "q"))});
  fast.claim_for = "client-a";
  EXPECT_TRUE(rejected(fast, true));
  JobInsertManyParams scheduled =
      Many({Claimed(JobAt("q", kT0 + hours(1), 1, JobState::kScheduled))});
  scheduled.claim_for = "client-a";
  EXPECT_TRUE(rejected(scheduled, false));
  JobInsertParams unique = Job("k", "q");
  unique.unique_key = std::string(32, 'k');
  unique.unique_states = 0xff;
  JobInsertManyParams with_unique = Many({Claimed(Job("k", "q")), unique});
  with_unique.claim_for = "client-a";
  EXPECT_TRUE(rejected(with_unique, false));
  CONF_ASSIGN_OR_FAIL(auto counts, exec().JobCountByState(""));
  EXPECT_TRUE(counts.empty());
}

TEST_P(DriverConformanceTest, AttemptedByKeepsTheLast100Clients) {
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many({Job("k", "q")})));
  const int64_t id = rows[0].id;
  std::vector<std::string> claimed_by;  // as the last claim returned it
  for (int i = 0; i < 103; ++i) {
    CONF_ASSIGN_OR_FAIL(auto got,
                        exec().JobGetAvailable(Fetch("q", 1, kT0, "c" + std::to_string(i))));
    ASSERT_EQ(got.size(), 1u) << i;
    claimed_by = got[0].attempted_by;
    // Snooze to now (does not use an attempt), then make it available again.
    CONF_ASSIGN_OR_FAIL(
        int64_t n, exec().JobSetStateIfRunningMany({{Outcome(id, JobState::kScheduled, kT0)}}));
    ASSERT_EQ(n, 1);
    CONF_ASSIGN_OR_FAIL(auto s, exec().JobSchedule({kT0, 10}));
    ASSERT_EQ(s.count, 1);
  }
  CONF_ASSIGN_OR_FAIL(JobRow job, exec().JobGetByID(id));
  ASSERT_EQ(job.attempted_by.size(), 100u);
  EXPECT_EQ(job.attempted_by.front(), "c3");
  EXPECT_EQ(job.attempted_by.back(), "c102");
  EXPECT_EQ(claimed_by, job.attempted_by);
  EXPECT_EQ(job.attempt, 0);
}

// A worker's snooze counts in metadata "snoozes" (as River keeps it), beside the job's own keys;
// a job given back unstarted (also scheduled, attempt unused) does not count.
TEST_P(DriverConformanceTest, SnoozesAreCountedInMetadata) {
  std::vector<JobInsertParams> jobs(4, Job("k", "q_snooze"));
  jobs[0].metadata = R"({"origin":"signup"})";
  jobs[1].metadata = R"({"snoozes":41})";
  jobs[2].metadata = R"({"snoozes":"many"})";
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many(jobs)));
  for (int round = 0; round < 2; ++round) {
    CONF_ASSIGN_OR_FAIL(auto got, exec().JobGetAvailable(Fetch("q_snooze", 10, kT0, "c")));
    ASSERT_EQ(got.size(), 4u);
    JobSetStateIfRunningManyParams outcomes;
    for (size_t i = 0; i < 4; ++i) {
      JobSetStateParams o = Outcome(rows[i].id, JobState::kScheduled, kT0);
      o.snooze = i != 3;
      outcomes.jobs.push_back(o);
    }
    CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobSetStateIfRunningMany(outcomes));
    ASSERT_EQ(n, 4);
    CONF_ASSIGN_OR_FAIL(auto s, exec().JobSchedule({kT0, 10}));
    ASSERT_EQ(s.count, 4);
  }
  const std::vector<std::string> want = {R"({"origin":"signup","snoozes":2})", R"({"snoozes":43})",
                                         R"({"snoozes":2})", "{}"};
  for (size_t i = 0; i < 4; ++i) {
    CONF_ASSIGN_OR_FAIL(JobRow job, exec().JobGetByID(rows[i].id));
    EXPECT_EQ(Json(job.metadata), Json(want[i])) << i;
    EXPECT_EQ(job.attempt, 0) << i;
  }
}

// An outcome written after an admin requested the job's cancel, which its runtime had not seen:
// a retry, a snooze or a discard becomes a cancel; a completion stays one (River does the same).
TEST_P(DriverConformanceTest, ACancelRequestedWhileRunningWinsOverARetryOrSnooze) {
  std::vector<JobInsertParams> jobs(5, Job("k", "q_cancel_wins"));
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many(jobs)));
  CONF_ASSIGN_OR_FAIL(auto got, exec().JobGetAvailable(Fetch("q_cancel_wins", 10, kT0, "c")));
  ASSERT_EQ(got.size(), 5u);
  const TimePoint now = kT0 + seconds(5);
  for (size_t i = 0; i < 4; ++i) {
    CONF_ASSIGN_OR_FAIL(JobRow r, exec().JobCancel({rows[i].id, now}));
    ASSERT_EQ(r.state, JobState::kRunning);
  }
  const spool::AttemptError failure{now, 1, "smtp down", ""};
  const spool::AttemptError cancel{now, 1, "cancelled by an admin while running", ""};
  std::vector<JobSetStateParams> outcomes = {
      Outcome(rows[0].id, JobState::kRetryable, now + seconds(60), failure),
      Outcome(rows[1].id, JobState::kScheduled, now + seconds(60)),
      Outcome(rows[2].id, JobState::kDiscarded, now, failure),
      Outcome(rows[3].id, JobState::kCompleted, now),
      Outcome(rows[4].id, JobState::kRetryable, now + seconds(60), failure),  // no request
  };
  outcomes[1].snooze = true;
  for (auto& o : outcomes) {
    if (o.state != JobState::kCompleted) o.if_cancel_requested = cancel;
  }
  std::vector<int64_t> cancelled;
  JobSetStateIfRunningManyParams params{.jobs = outcomes, .skipped = nullptr};
  params.cancelled = &cancelled;
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobSetStateIfRunningMany(params));
  EXPECT_EQ(n, 5);
  std::sort(cancelled.begin(), cancelled.end());
  EXPECT_EQ(cancelled, (std::vector<int64_t>{rows[0].id, rows[1].id, rows[2].id}));
  for (size_t i = 0; i < 3; ++i) {
    CONF_ASSIGN_OR_FAIL(JobRow job, exec().JobGetByID(rows[i].id));
    EXPECT_EQ(job.state, JobState::kCancelled) << i;
    EXPECT_EQ(job.finalized_at, now) << i;
    EXPECT_EQ(job.attempt, 1) << i;  // the attempt ran: a snooze turned cancel keeps it
    ASSERT_EQ(job.errors.size(), 1u) << i;
    EXPECT_EQ(job.errors[0].error, cancel.error) << i;
    EXPECT_FALSE(Json(job.metadata).contains("snoozes")) << i;
  }
  CONF_ASSIGN_OR_FAIL(JobRow done, exec().JobGetByID(rows[3].id));
  EXPECT_EQ(done.state, JobState::kCompleted);
  CONF_ASSIGN_OR_FAIL(JobRow retry, exec().JobGetByID(rows[4].id));
  EXPECT_EQ(retry.state, JobState::kRetryable);
  EXPECT_EQ(retry.scheduled_at, now + seconds(60));
  ASSERT_EQ(retry.errors.size(), 1u);
  EXPECT_EQ(retry.errors[0].error, "smtp down");
}

TEST_P(DriverConformanceTest, ConcurrentFetchersNeverGetTheSameJob) {
  constexpr int kJobs = 1500;
  std::vector<JobInsertParams> jobs(kJobs, Job("k", "shared"));
  CONF_ASSIGN_OR_FAIL(int64_t inserted, exec().JobInsertManyFast(Many(jobs)));
  ASSERT_EQ(inserted, kJobs);
  CONF_ASSIGN_OR_FAIL(auto other, GetParam().open_again());

  // Two fetchers per driver instance: within one process and across "processes".
  auto fetch_all = [](spool::internal::Executor* ex, std::string client) {
    std::vector<int64_t> ids;
    for (;;) {
      auto got = ex->JobGetAvailable(Fetch("shared", 7, kT0, client));
      if (!got) {
        if (got.error().IsTransient()) continue;  // a contended lock: what a producer retries
        ADD_FAILURE() << got.error().ToString();
        return ids;
      }
      if (got->empty()) return ids;
      for (const auto& r : *got) ids.push_back(r.id);
    }
  };
  std::vector<std::future<std::vector<int64_t>>> workers;
  workers.push_back(std::async(std::launch::async, fetch_all, &exec(), "a1"));
  workers.push_back(std::async(std::launch::async, fetch_all, &exec(), "a2"));
  workers.push_back(std::async(std::launch::async, fetch_all, &other->executor(), "b1"));
  workers.push_back(std::async(std::launch::async, fetch_all, &other->executor(), "b2"));
  std::vector<int64_t> all;
  for (auto& w : workers) {
    auto ids = w.get();
    all.insert(all.end(), ids.begin(), ids.end());
  }
  std::set<int64_t> unique(all.begin(), all.end());
  EXPECT_EQ(unique.size(), all.size()) << "a job was handed to two fetchers";
  EXPECT_EQ(all.size(), static_cast<size_t>(kJobs));
  CONF_ASSIGN_OR_FAIL(auto counts, exec().JobCountByState("shared"));
  EXPECT_EQ(counts, (std::map<JobState, int64_t>{{JobState::kRunning, kJobs}}));
}

// ---- outcomes ---------------------------------------------------------------------------------

TEST_P(DriverConformanceTest, SetStateAppliesEachOutcome) {
  std::vector<JobInsertParams> jobs(6, Job("k", "q"));
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many(jobs)));
  CONF_ASSIGN_OR_FAIL(auto running, exec().JobGetAvailable(Fetch("q", 10)));
  ASSERT_EQ(running.size(), 6u);
  const spool::AttemptError err{kT0 + seconds(1), 1, "boom: \"quoted\"", "std::runtime_error"};

  CONF_ASSIGN_OR_FAIL(int64_t n,
                      exec().JobSetStateIfRunningMany({{
                          Outcome(rows[0].id, JobState::kCompleted, kT0 + seconds(1)),
                          Outcome(rows[1].id, JobState::kRetryable, kT0 + seconds(10), err),
                          Outcome(rows[2].id, JobState::kDiscarded, kT0 + seconds(2), err),
                          Outcome(rows[3].id, JobState::kCancelled, kT0 + seconds(3)),
                          Outcome(rows[4].id, JobState::kScheduled, kT0 + seconds(60)),
                      }}));
  EXPECT_EQ(n, 5);

  CONF_ASSIGN_OR_FAIL(JobRow completed, exec().JobGetByID(rows[0].id));
  EXPECT_EQ(completed.state, JobState::kCompleted);
  EXPECT_EQ(completed.finalized_at, std::optional<TimePoint>(kT0 + seconds(1)));
  EXPECT_EQ(completed.attempt, 1);
  EXPECT_TRUE(completed.errors.empty());

  CONF_ASSIGN_OR_FAIL(JobRow retryable, exec().JobGetByID(rows[1].id));
  EXPECT_EQ(retryable.state, JobState::kRetryable);
  EXPECT_EQ(retryable.scheduled_at, kT0 + seconds(10));
  EXPECT_FALSE(retryable.finalized_at.has_value());
  EXPECT_EQ(retryable.attempt, 1);
  ASSERT_EQ(retryable.errors.size(), 1u);
  EXPECT_EQ(retryable.errors[0].at, err.at);
  EXPECT_EQ(retryable.errors[0].attempt, 1);
  EXPECT_EQ(retryable.errors[0].error, err.error);
  EXPECT_EQ(retryable.errors[0].trace, err.trace);

  CONF_ASSIGN_OR_FAIL(JobRow discarded, exec().JobGetByID(rows[2].id));
  EXPECT_EQ(discarded.state, JobState::kDiscarded);
  EXPECT_EQ(discarded.finalized_at, std::optional<TimePoint>(kT0 + seconds(2)));
  ASSERT_EQ(discarded.errors.size(), 1u);
  EXPECT_EQ(discarded.errors[0].error, err.error);

  CONF_ASSIGN_OR_FAIL(JobRow cancelled, exec().JobGetByID(rows[3].id));
  EXPECT_EQ(cancelled.state, JobState::kCancelled);
  EXPECT_EQ(cancelled.finalized_at, std::optional<TimePoint>(kT0 + seconds(3)));

  CONF_ASSIGN_OR_FAIL(JobRow snoozed, exec().JobGetByID(rows[4].id));
  EXPECT_EQ(snoozed.state, JobState::kScheduled);
  EXPECT_EQ(snoozed.scheduled_at, kT0 + seconds(60));
  EXPECT_EQ(snoozed.attempt, 0) << "a snooze does not use an attempt";
  EXPECT_FALSE(snoozed.finalized_at.has_value());

  CONF_ASSIGN_OR_FAIL(JobRow untouched, exec().JobGetByID(rows[5].id));
  EXPECT_EQ(untouched.state, JobState::kRunning);

  // None of them is running any more: a second write changes nothing.
  CONF_ASSIGN_OR_FAIL(int64_t again,
                      exec().JobSetStateIfRunningMany({{
                          Outcome(rows[0].id, JobState::kRetryable, kT0 + seconds(5), err),
                          Outcome(rows[1].id, JobState::kCompleted, kT0 + seconds(5)),
                          Outcome(rows[4].id, JobState::kCancelled, kT0 + seconds(5)),
                      }}));
  EXPECT_EQ(again, 0);
  CONF_ASSIGN_OR_FAIL(JobRow still, exec().JobGetByID(rows[0].id));
  EXPECT_EQ(still.state, JobState::kCompleted);
  EXPECT_TRUE(still.errors.empty());
  CONF_ASSIGN_OR_FAIL(JobRow still_retryable, exec().JobGetByID(rows[1].id));
  EXPECT_EQ(still_retryable.state, JobState::kRetryable);
}

TEST_P(DriverConformanceTest, SetStateAppendsErrorsInOrder) {
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many({Job("k", "q")})));
  const int64_t id = rows[0].id;
  for (int attempt = 1; attempt <= 3; ++attempt) {
    const TimePoint now = kT0 + seconds(attempt);
    CONF_ASSIGN_OR_FAIL(auto got, exec().JobGetAvailable(Fetch("q", 1, now)));
    ASSERT_EQ(got.size(), 1u);
    ASSERT_EQ(got[0].attempt, attempt);
    spool::AttemptError e{now, attempt, "failure " + std::to_string(attempt), ""};
    CONF_ASSIGN_OR_FAIL(
        int64_t n, exec().JobSetStateIfRunningMany({{Outcome(id, JobState::kRetryable, now, e)}}));
    ASSERT_EQ(n, 1);
    CONF_ASSIGN_OR_FAIL(auto s, exec().JobSchedule({now, 10}));
    ASSERT_EQ(s.count, 1);
  }
  CONF_ASSIGN_OR_FAIL(JobRow job, exec().JobGetByID(id));
  ASSERT_EQ(job.errors.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(job.errors[static_cast<size_t>(i)].attempt, i + 1);
    EXPECT_EQ(job.errors[static_cast<size_t>(i)].error, "failure " + std::to_string(i + 1));
    EXPECT_EQ(job.errors[static_cast<size_t>(i)].at, kT0 + seconds(i + 1));
  }
}

TEST_P(DriverConformanceTest, SetStateSkipsJobsThatAreNotRunning) {
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many({Job("k", "q"), Job("k", "q")})));
  CONF_ASSIGN_OR_FAIL(
      int64_t n,
      exec().JobSetStateIfRunningMany({{
          Outcome(rows[0].id, JobState::kCompleted, kT0),
          Outcome(rows[1].id, JobState::kDiscarded, kT0, spool::AttemptError{kT0, 1, "x", ""}),
          Outcome(999'999, JobState::kCompleted, kT0),  // no such job
      }}));
  EXPECT_EQ(n, 0);
  CONF_ASSIGN_OR_FAIL(auto counts, exec().JobCountByState(""));
  EXPECT_EQ(counts, (std::map<JobState, int64_t>{{JobState::kAvailable, 2}}));
  CONF_ASSIGN_OR_FAIL(int64_t empty, exec().JobSetStateIfRunningMany({}));
  EXPECT_EQ(empty, 0);
}

TEST_P(DriverConformanceTest, SetStateSkipsAnOutcomeOfAnEarlierAttempt) {
  // Attempt 1 is given up on (as the rescuer does) and attempt 2 starts; attempt 1 then ends,
  // late. Its outcome, success or failure, must not be written over the running attempt 2.
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many({Job("k", "q"), Job("k", "q")})));
  CONF_ASSIGN_OR_FAIL(auto first, exec().JobGetAvailable(Fetch("q", 2)));
  ASSERT_EQ(first.size(), 2u);
  CONF_ASSIGN_OR_FAIL(int64_t rescued, exec().JobSetStateIfRunningMany({{
                                           Outcome(rows[0].id, JobState::kRetryable, kT0,
                                                   spool::AttemptError{kT0, 1, "stuck", ""}, 1),
                                           Outcome(rows[1].id, JobState::kRetryable, kT0,
                                                   spool::AttemptError{kT0, 1, "stuck", ""}, 1),
                                       }}));
  EXPECT_EQ(rescued, 2);
  CONF_ASSIGN_OR_FAIL(auto sched, exec().JobSchedule({kT0, 10}));
  EXPECT_EQ(sched.count, 2);
  CONF_ASSIGN_OR_FAIL(auto second, exec().JobGetAvailable(Fetch("q", 2, kT0, "client-2")));
  ASSERT_EQ(second.size(), 2u);
  EXPECT_EQ(second[0].attempt, 2);

  CONF_ASSIGN_OR_FAIL(
      int64_t stale,
      exec().JobSetStateIfRunningMany({{
          Outcome(rows[0].id, JobState::kCompleted, kT0 + seconds(1), std::nullopt, 1),
          Outcome(rows[1].id, JobState::kRetryable, kT0 + seconds(1),
                  spool::AttemptError{kT0, 1, "late failure", ""}, 1),
      }}));
  EXPECT_EQ(stale, 0);
  for (const auto& r : rows) {
    CONF_ASSIGN_OR_FAIL(JobRow now, exec().JobGetByID(r.id));
    EXPECT_EQ(now.state, JobState::kRunning);
    EXPECT_EQ(now.attempt, 2);
    EXPECT_EQ(now.errors.size(), 1u);  // only the rescue's
  }
  // The running attempt's own outcomes are written, as is one that names no attempt.
  CONF_ASSIGN_OR_FAIL(
      int64_t current,
      exec().JobSetStateIfRunningMany({{
          Outcome(rows[0].id, JobState::kCompleted, kT0 + seconds(2), std::nullopt, 2),
          Outcome(rows[1].id, JobState::kCancelled, kT0 + seconds(2),
                  spool::AttemptError{kT0, 2, "stop", ""}),
      }}));
  EXPECT_EQ(current, 2);
  CONF_ASSIGN_OR_FAIL(JobRow done, exec().JobGetByID(rows[0].id));
  EXPECT_EQ(done.state, JobState::kCompleted);
  CONF_ASSIGN_OR_FAIL(JobRow cancelled, exec().JobGetByID(rows[1].id));
  EXPECT_EQ(cancelled.state, JobState::kCancelled);
}

// A claim lost in a database crash (PostgreSQL's claims do not wait for the WAL flush) leaves the
// job available at its old attempt, so it is claimed again under the same attempt number while
// the first run goes on. The first run's outcome must leave the second run alone: the claim's
// time tells them apart. Ten jobs, so that completions of close ids take SQLite's range path;
// then the join, the general statement and the cancel-request look-up.
TEST_P(DriverConformanceTest, SetStateSkipsAnOutcomeOfAClaimMadeAgainUnderTheSameAttempt) {
  std::vector<JobInsertParams> jobs(10, Job("k", "q"));
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many(jobs)));
  const TimePoint first_claim = kT0 + microseconds(1'000'001);
  CONF_ASSIGN_OR_FAIL(auto first, exec().JobGetAvailable(Fetch("q", 10, first_claim)));
  ASSERT_EQ(first.size(), 10u);
  ASSERT_EQ(first[0].attempted_at, first_claim);
  // What the lost claim leaves: the jobs available at attempt 0 (given back unstarted).
  JobSetStateIfRunningManyParams lost;
  for (const JobRow& j : first) lost.jobs.push_back(Outcome(j.id, JobState::kScheduled, kT0));
  CONF_ASSIGN_OR_FAIL(int64_t back, exec().JobSetStateIfRunningMany(lost));
  ASSERT_EQ(back, 10);
  CONF_ASSIGN_OR_FAIL(auto sched, exec().JobSchedule({kT0 + seconds(2), 10}));
  ASSERT_EQ(sched.count, 10);
  const TimePoint second_claim = kT0 + microseconds(2'000'002);
  CONF_ASSIGN_OR_FAIL(auto second, exec().JobGetAvailable(Fetch("q", 10, second_claim)));
  ASSERT_EQ(second.size(), 10u);
  ASSERT_EQ(second[0].attempt, first[0].attempt) << "the same attempt number again";
  ASSERT_EQ(second[0].attempted_at, second_claim);

  const auto of = [](const JobRow& j, JobState state, std::optional<spool::AttemptError> error) {
    JobSetStateParams p = Outcome(j.id, state, kT0 + seconds(3), std::move(error), j.attempt);
    p.attempted_at = j.attempted_at;
    return p;
  };
  std::vector<int64_t> skipped;
  JobSetStateIfRunningManyParams stale;
  stale.skipped = &skipped;
  for (const JobRow& j : first) stale.jobs.push_back(of(j, JobState::kCompleted, std::nullopt));
  CONF_ASSIGN_OR_FAIL(int64_t range, exec().JobSetStateIfRunningMany(stale));
  EXPECT_EQ(range, 0) << "completions of close ids";
  EXPECT_EQ(skipped.size(), 10u);
  stale.jobs = {of(first[0], JobState::kCompleted, std::nullopt),
                of(first[5], JobState::kCompleted, std::nullopt)};
  CONF_ASSIGN_OR_FAIL(int64_t join, exec().JobSetStateIfRunningMany(stale));
  EXPECT_EQ(join, 0) << "completions of scattered ids";
  const spool::AttemptError late{kT0 + seconds(3), first[0].attempt, "late failure", ""};
  stale.jobs = {of(first[1], JobState::kRetryable, late), of(first[2], JobState::kDiscarded, late)};
  stale.jobs[1].if_cancel_requested = late;
  CONF_ASSIGN_OR_FAIL(int64_t general, exec().JobSetStateIfRunningMany(stale));
  EXPECT_EQ(general, 0) << "failures";
  for (const JobRow& j : second) {
    CONF_ASSIGN_OR_FAIL(JobRow now, exec().JobGetByID(j.id));
    EXPECT_EQ(now.state, JobState::kRunning) << j.id;
    EXPECT_EQ(now.attempted_at, second_claim) << j.id;
    EXPECT_TRUE(now.errors.empty()) << j.id;
  }

  // The second run's own outcomes are written, by every path.
  JobSetStateIfRunningManyParams current;
  for (size_t i = 3; i < second.size(); ++i) {
    current.jobs.push_back(of(second[i], JobState::kCompleted, std::nullopt));
  }
  current.jobs.push_back(of(second[0], JobState::kCompleted, std::nullopt));
  current.jobs.push_back(of(second[1], JobState::kRetryable, late));
  current.jobs.push_back(of(second[2], JobState::kDiscarded, late));
  CONF_ASSIGN_OR_FAIL(int64_t written, exec().JobSetStateIfRunningMany(current));
  EXPECT_EQ(written, 10);
}

TEST_P(DriverConformanceTest, SetStateNamesTheOutcomesItSkipped) {
  // Five running jobs: one is then ended by someone else, and one is rescued and runs again as
  // attempt 2. Outcomes of attempt 1 for all five, and one for an unknown id, write only the jobs
  // still running attempt 1; `skipped` names the rest. The batch holds plain completions and
  // other outcomes, so both of a driver's statements are used.
  std::vector<JobInsertParams> jobs(5, Job("k", "q"));
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many(jobs)));
  CONF_ASSIGN_OR_FAIL(auto running, exec().JobGetAvailable(Fetch("q", 10)));
  ASSERT_EQ(running.size(), 5u);
  const spool::AttemptError err{kT0, 1, "x", ""};
  CONF_ASSERT_OK(EndOneAndRunOneAgain(exec(), "q", rows[1].id, rows[3].id));

  std::vector<int64_t> skipped{42};  // cleared by the call
  JobSetStateIfRunningManyParams p{
      .jobs = {Outcome(rows[0].id, JobState::kCompleted, kT0 + seconds(1), std::nullopt, 1),
               Outcome(rows[1].id, JobState::kCompleted, kT0 + seconds(1), std::nullopt, 1),
               Outcome(rows[2].id, JobState::kRetryable, kT0 + seconds(1), err, 1),
               Outcome(rows[3].id, JobState::kCompleted, kT0 + seconds(1), std::nullopt, 1),
               Outcome(rows[4].id, JobState::kDiscarded, kT0 + seconds(1), err),
               Outcome(999'999, JobState::kRetryable, kT0 + seconds(1), err)},
      .skipped = &skipped};
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobSetStateIfRunningMany(p));
  EXPECT_EQ(n, 3);
  std::sort(skipped.begin(), skipped.end());
  EXPECT_EQ(skipped, (std::vector<int64_t>{rows[1].id, rows[3].id, 999'999}));
  const std::map<int64_t, JobState> want{{rows[0].id, JobState::kCompleted},
                                         {rows[1].id, JobState::kCancelled},
                                         {rows[2].id, JobState::kRetryable},
                                         {rows[3].id, JobState::kRunning},
                                         {rows[4].id, JobState::kDiscarded}};
  for (const auto& [id, state] : want) {
    CONF_ASSIGN_OR_FAIL(JobRow row, exec().JobGetByID(id));
    EXPECT_EQ(row.state, state) << "job " << id;
  }
  CONF_ASSIGN_OR_FAIL(JobRow rescued, exec().JobGetByID(rows[3].id));
  EXPECT_EQ(rescued.attempt, 2);
  EXPECT_EQ(rescued.errors.size(), 1u) << "only the rescue's error";

  // Every job written: nothing skipped. Nothing written: all of them.
  p.jobs = {Outcome(rows[3].id, JobState::kCompleted, kT0 + seconds(2), std::nullopt, 2)};
  CONF_ASSIGN_OR_FAIL(int64_t one, exec().JobSetStateIfRunningMany(p));
  EXPECT_EQ(one, 1);
  EXPECT_TRUE(skipped.empty());
  p.jobs = {Outcome(rows[0].id, JobState::kCompleted, kT0 + seconds(3)),
            Outcome(rows[2].id, JobState::kCancelled, kT0 + seconds(3), err)};
  CONF_ASSIGN_OR_FAIL(int64_t none, exec().JobSetStateIfRunningMany(p));
  EXPECT_EQ(none, 0);
  std::sort(skipped.begin(), skipped.end());
  EXPECT_EQ(skipped, (std::vector<int64_t>{rows[0].id, rows[2].id}));
}

TEST_P(DriverConformanceTest, SetStateCompletesLargeBatchesInOneCall) {
  constexpr int kJobs = 700;
  std::vector<JobInsertParams> jobs(kJobs, Job("k", "q"));
  CONF_ASSIGN_OR_FAIL(int64_t inserted, exec().JobInsertManyFast(Many(jobs)));
  ASSERT_EQ(inserted, kJobs);
  CONF_ASSIGN_OR_FAIL(auto running, exec().JobGetAvailable(Fetch("q", kJobs)));
  ASSERT_EQ(running.size(), static_cast<size_t>(kJobs));
  JobSetStateIfRunningManyParams params;
  for (size_t i = 0; i < running.size(); ++i) {
    // Mostly completions, with a few failures mixed in.
    if (i % 100 == 7) {
      params.jobs.push_back(Outcome(running[i].id, JobState::kRetryable, kT0 + seconds(30),
                                    spool::AttemptError{kT0, 1, "e", ""}));
    } else {
      params.jobs.push_back(
          Outcome(running[i].id, JobState::kCompleted, kT0 + milliseconds(static_cast<int>(i))));
    }
  }
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobSetStateIfRunningMany(params));
  EXPECT_EQ(n, kJobs);
  CONF_ASSIGN_OR_FAIL(auto counts, exec().JobCountByState("q"));
  EXPECT_EQ(counts, (std::map<JobState, int64_t>{{JobState::kCompleted, kJobs - 7},
                                                 {JobState::kRetryable, 7}}));
  // Each row got its own finalized_at.
  CONF_ASSIGN_OR_FAIL(JobRow last, exec().JobGetByID(running[kJobs - 1].id));
  EXPECT_EQ(last.finalized_at, std::optional<TimePoint>(kT0 + milliseconds(kJobs - 1)));
}

// Batches of every shape a driver might round or split (the SQLite driver prepares its outcome
// statements for rounded row counts), with running jobs outside the batch that must stay as they
// are.
TEST_P(DriverConformanceTest, SetStateWritesBatchesOfAnySizeAndNothingElse) {
  const std::vector<int> sizes = {1, 2, 3, 5, 15, 16, 17, 31, 33, 100, 255, 257};
  int total = 10;  // bystanders
  for (int s : sizes) total += s;
  std::vector<JobInsertParams> jobs(static_cast<size_t>(total), Job("k", "q"));
  CONF_ASSIGN_OR_FAIL(int64_t inserted, exec().JobInsertManyFast(Many(jobs)));
  ASSERT_EQ(inserted, total);
  CONF_ASSIGN_OR_FAIL(auto running, exec().JobGetAvailable(Fetch("q", total)));
  ASSERT_EQ(running.size(), static_cast<size_t>(total));
  std::sort(running.begin(), running.end(),
            [](const JobRow& a, const JobRow& b) { return a.id < b.id; });
  size_t next = 10;
  for (int s : sizes) {
    JobSetStateIfRunningManyParams params;
    for (int i = 0; i < s; ++i, ++next) {
      const auto at = kT0 + milliseconds(static_cast<int>(next));
      if (i % 4 == 1) {  // the general statement too, with rows of its own count
        params.jobs.push_back(Outcome(running[next].id, JobState::kRetryable, at,
                                      spool::AttemptError{kT0, 1, "e", ""}));
      } else {
        params.jobs.push_back(Outcome(running[next].id, JobState::kCompleted, at));
      }
    }
    CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobSetStateIfRunningMany(params));
    EXPECT_EQ(n, s) << "batch of " << s;
  }
  for (size_t i = 0; i < running.size(); ++i) {
    CONF_ASSIGN_OR_FAIL(JobRow row, exec().JobGetByID(running[i].id));
    if (i < 10) {
      EXPECT_EQ(row.state, JobState::kRunning) << "bystander " << row.id;
      continue;
    }
    const auto at = kT0 + milliseconds(static_cast<int>(i));
    if (row.state == JobState::kCompleted) {
      EXPECT_EQ(row.finalized_at, std::optional<TimePoint>(at)) << row.id;
    } else {
      EXPECT_EQ(row.state, JobState::kRetryable) << row.id;
      EXPECT_EQ(row.scheduled_at, at) << row.id;
      EXPECT_EQ(row.errors.size(), 1u) << row.id;
    }
  }
  CONF_ASSIGN_OR_FAIL(auto counts, exec().JobCountByState("q"));
  int retryable = 0;
  for (int s : sizes) retryable += (s + 2) / 4;  // i % 4 == 1 for i < s
  EXPECT_EQ(counts, (std::map<JobState, int64_t>{{JobState::kRunning, 10},
                                                 {JobState::kRetryable, retryable},
                                                 {JobState::kCompleted, total - 10 - retryable}}));
}

// Plain completions of jobs with close ids, as a backlog worked in id order gives (the SQLite
// driver writes such runs by id range): in the range, jobs not in the batch, jobs no longer
// running and jobs running another attempt must stay as they are, and each job written gets its
// own finalized_at.
TEST_P(DriverConformanceTest, SetStateCompletesRunsOfCloseIdsAndNothingElse) {
  std::vector<JobInsertParams> jobs(30, Job("k", "q"));
  for (int i = 0; i < 20; ++i) jobs.push_back(Job("k", "other"));  // a gap in q's ids
  for (int i = 0; i < 10; ++i) jobs.push_back(Job("k", "q"));
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many(jobs)));
  std::vector<int64_t> q_ids;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i < 30 || i >= 50) q_ids.push_back(rows[i].id);
  }
  CONF_ASSIGN_OR_FAIL(auto running, exec().JobGetAvailable(Fetch("q", 40)));
  ASSERT_EQ(running.size(), 40u);
  CONF_ASSERT_OK(EndOneAndRunOneAgain(exec(), "q", q_ids[5], q_ids[9]));

  // Every q job but two bystanders (q_ids[12] and q_ids[13]), in no particular order: attempt 1,
  // or 0 (any attempt) for q_ids[20]; q_ids[5] and q_ids[9] must be left alone, as must an id no
  // job has. No `skipped`: the statements alone must tell (with it, a driver may first look up
  // which jobs still run, as the SQLite driver does when a write changes fewer rows than asked).
  const std::set<size_t> bystanders{12, 13};
  JobSetStateIfRunningManyParams p;
  for (size_t i = q_ids.size(); i-- > 0;) {
    if (bystanders.contains(i)) continue;
    p.jobs.push_back(Outcome(q_ids[i], JobState::kCompleted,
                             kT0 + milliseconds(static_cast<int>(i)), std::nullopt,
                             i == 20 ? 0 : 1));
  }
  p.jobs.push_back(Outcome(999'999, JobState::kCompleted, kT0, std::nullopt, 1));
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobSetStateIfRunningMany(p));
  EXPECT_EQ(n, 40 - 2 - 2);
  for (size_t i = 0; i < q_ids.size(); ++i) {
    CONF_ASSIGN_OR_FAIL(JobRow row, exec().JobGetByID(q_ids[i]));
    if (bystanders.contains(i) || i == 9) {
      EXPECT_EQ(row.state, JobState::kRunning) << "job " << i;
      EXPECT_EQ(row.finalized_at, std::nullopt) << "job " << i;
    } else if (i == 5) {
      EXPECT_EQ(row.state, JobState::kCancelled);
      EXPECT_EQ(row.finalized_at, std::optional<TimePoint>(kT0));
    } else {
      EXPECT_EQ(row.state, JobState::kCompleted) << "job " << i;
      EXPECT_EQ(row.finalized_at, std::optional<TimePoint>(kT0 + milliseconds(static_cast<int>(i))))
          << "job " << i;
    }
  }
  CONF_ASSIGN_OR_FAIL(auto other, exec().JobCountByState("other"));
  EXPECT_EQ(other, (std::map<JobState, int64_t>{{JobState::kAvailable, 20}}));
}

// ---- scheduler --------------------------------------------------------------------------------

TEST_P(DriverConformanceTest, ScheduleMovesDueJobsOnlyAndReportsQueues) {
  CONF_ASSIGN_OR_FAIL(
      auto rows,
      InsertRows(exec(), Many({
                             JobAt("q1", kT0 - seconds(1), 1, JobState::kScheduled),
                             JobAt("q2", kT0, 1, JobState::kScheduled),
                             JobAt("q2", kT0 - seconds(3), 1, JobState::kScheduled),
                             JobAt("q3", kT0 + seconds(1), 1, JobState::kScheduled),  // not due
                             JobAt("q4", kT0 - seconds(50)),  // to fail below
                             JobAt("q5", kT0 - seconds(50), 1, JobState::kPending),
                             JobAt("q6", kT0 - seconds(50)),  // available already
                         })));
  CONF_ASSIGN_OR_FAIL(auto running, exec().JobGetAvailable(Fetch("q4", 1, kT0 - seconds(50))));
  ASSERT_EQ(running.size(), 1u);
  CONF_ASSIGN_OR_FAIL(
      int64_t n, exec().JobSetStateIfRunningMany({{Outcome(
                     rows[4].id, JobState::kRetryable, kT0 - seconds(5), spool::AttemptError{})}}));
  ASSERT_EQ(n, 1);

  CONF_ASSIGN_OR_FAIL(auto result, exec().JobSchedule({kT0, 1000}));
  EXPECT_EQ(result.count, 4);
  std::vector<std::string> queues = result.queues;
  std::sort(queues.begin(), queues.end());
  EXPECT_EQ(queues, (std::vector<std::string>{"q1", "q2", "q4"}));

  std::vector<JobState> states;
  for (const auto& r : rows) {
    CONF_ASSIGN_OR_FAIL(JobRow j, exec().JobGetByID(r.id));
    states.push_back(j.state);
  }
  EXPECT_EQ(states,
            (std::vector<JobState>{JobState::kAvailable, JobState::kAvailable, JobState::kAvailable,
                                   JobState::kScheduled, JobState::kAvailable, JobState::kPending,
                                   JobState::kAvailable}));
  CONF_ASSIGN_OR_FAIL(JobRow failed, exec().JobGetByID(rows[4].id));
  EXPECT_EQ(failed.attempt, 1) << "scheduling does not touch the attempt count";

  CONF_ASSIGN_OR_FAIL(auto nothing, exec().JobSchedule({kT0, 1000}));
  EXPECT_EQ(nothing.count, 0);
  EXPECT_TRUE(nothing.queues.empty());
}

TEST_P(DriverConformanceTest, ScheduleMovesAtMostMax) {
  std::vector<JobInsertParams> jobs(5, JobAt("q", kT0 - seconds(1), 1, JobState::kScheduled));
  CONF_ASSIGN_OR_FAIL(int64_t inserted, exec().JobInsertManyFast(Many(jobs)));
  ASSERT_EQ(inserted, 5);
  std::vector<int64_t> counts;
  for (int i = 0; i < 4; ++i) {
    CONF_ASSIGN_OR_FAIL(auto r, exec().JobSchedule({kT0, 2}));
    counts.push_back(r.count);
  }
  EXPECT_EQ(counts, (std::vector<int64_t>{2, 2, 1, 0}));
}

// A batch smaller than what is due moves the longest-due jobs, whichever of the two states.
TEST_P(DriverConformanceTest, ScheduleMovesTheLongestDueFirstAcrossStates) {
  CONF_ASSIGN_OR_FAIL(auto rows,
                      InsertRows(exec(), Many({
                                             JobAt("q", kT0 - seconds(10), 1, JobState::kScheduled),
                                             JobAt("q", kT0 - seconds(40), 1, JobState::kScheduled),
                                             JobAt("r", kT0 - seconds(60)),  // retryable below
                                             JobAt("q", kT0 - seconds(20), 1, JobState::kScheduled),
                                         })));
  CONF_ASSIGN_OR_FAIL(auto running, exec().JobGetAvailable(Fetch("r", 1, kT0 - seconds(60))));
  ASSERT_EQ(running.size(), 1u);
  CONF_ASSIGN_OR_FAIL(
      int64_t n,
      exec().JobSetStateIfRunningMany(
          {{Outcome(rows[2].id, JobState::kRetryable, kT0 - seconds(30), spool::AttemptError{})}}));
  ASSERT_EQ(n, 1);
  // Due: 40 s (scheduled), 30 s (retryable), 20 s, 10 s (scheduled).
  std::vector<std::vector<JobState>> after;
  for (int batch = 0; batch < 2; ++batch) {
    CONF_ASSIGN_OR_FAIL(auto r, exec().JobSchedule({kT0, 2}));
    EXPECT_EQ(r.count, 2) << "batch " << batch;
    std::vector<JobState>& states = after.emplace_back();
    for (const auto& row : rows) {
      CONF_ASSIGN_OR_FAIL(JobRow j, exec().JobGetByID(row.id));
      states.push_back(j.state);
    }
  }
  EXPECT_EQ(after[0], (std::vector<JobState>{JobState::kScheduled, JobState::kAvailable,
                                             JobState::kAvailable, JobState::kScheduled}));
  EXPECT_EQ(after[1], std::vector<JobState>(4, JobState::kAvailable));
}

// ---- reads ------------------------------------------------------------------------------------

TEST_P(DriverConformanceTest, GetByIDReportsNotFoundNamingTheId) {
  auto r = exec().JobGetByID(987'654'321);
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().IsNotFound()) << r.error().ToString();
  EXPECT_NE(r.error().message().find("987654321"), std::string::npos) << r.error().message();
}

TEST_P(DriverConformanceTest, ListFiltersAndPagesById) {
  std::vector<JobInsertParams> jobs;
  for (int i = 0; i < 10; ++i) {
    jobs.push_back(Job(i % 2 == 0 ? "k1" : "k2", i < 5 ? "qa" : "qb"));
  }
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many(jobs)));
  CONF_ASSIGN_OR_FAIL(auto running, exec().JobGetAvailable(Fetch("qa", 2)));
  ASSERT_EQ(running.size(), 2u);  // rows 0 and 1 (same priority and time: by id)

  auto list = [&](spool::JobListParams p) {
    auto r = exec().JobList(p);
    EXPECT_TRUE(r.has_value()) << r.error().ToString();
    return r.has_value() ? Ids(*r) : std::vector<int64_t>{};
  };
  const auto id = [&](size_t i) { return rows[i].id; };

  EXPECT_EQ(list({}), Ids(rows));
  EXPECT_EQ(list({.queue = "qa"}), (std::vector<int64_t>{id(0), id(1), id(2), id(3), id(4)}));
  EXPECT_EQ(list({.kind = "k2"}), (std::vector<int64_t>{id(1), id(3), id(5), id(7), id(9)}));
  EXPECT_EQ(list({.queue = "qb", .kind = "k1"}), (std::vector<int64_t>{id(6), id(8)}));
  EXPECT_EQ(list({.states = {JobState::kRunning}}), (std::vector<int64_t>{id(0), id(1)}));
  EXPECT_EQ(list({.states = {JobState::kRunning, JobState::kAvailable}}), Ids(rows));
  EXPECT_EQ(list({.states = {JobState::kCompleted}}), std::vector<int64_t>{});
  EXPECT_EQ(list({.states = {JobState::kAvailable}, .queue = "qa", .kind = "k1"}),
            (std::vector<int64_t>{id(2), id(4)}));
  EXPECT_EQ(list({.queue = "nope"}), std::vector<int64_t>{});

  // Pages of 3 by cursor cover every row once, in id order.
  std::vector<int64_t> paged;
  int64_t after = 0;
  for (int page = 0; page < 10; ++page) {
    auto ids = list({.after_id = after, .limit = 3});
    if (ids.empty()) break;
    EXPECT_LE(ids.size(), 3u);
    paged.insert(paged.end(), ids.begin(), ids.end());
    after = ids.back();
  }
  EXPECT_EQ(paged, Ids(rows));

  // Newest first, paged by before_id, filters as above; both bounds together make a window.
  std::vector<int64_t> newest;
  int64_t before = 0;
  for (int page = 0; page < 10; ++page) {
    auto ids = list({.before_id = before, .newest_first = true, .limit = 4});
    if (ids.empty()) break;
    newest.insert(newest.end(), ids.begin(), ids.end());
    before = ids.back();
  }
  std::vector<int64_t> reversed = Ids(rows);
  std::reverse(reversed.begin(), reversed.end());
  EXPECT_EQ(newest, reversed);
  EXPECT_EQ(list({.kind = "k2", .newest_first = true, .limit = 2}),
            (std::vector<int64_t>{id(9), id(7)}));
  EXPECT_EQ(list({.after_id = id(2), .before_id = id(6)}),
            (std::vector<int64_t>{id(3), id(4), id(5)}));
  EXPECT_EQ(list({.after_id = id(2), .before_id = id(6), .newest_first = true}),
            (std::vector<int64_t>{id(5), id(4), id(3)}));

  CONF_ASSIGN_OR_FAIL(auto full, exec().JobList({.queue = "qa", .limit = 1}));
  ASSERT_EQ(full.size(), 1u);
  EXPECT_EQ(full[0].state, JobState::kRunning);
  EXPECT_EQ(full[0].attempted_by, std::vector<std::string>{"client-1"});
}

TEST_P(DriverConformanceTest, CountByStateCountsPerQueueAndOverall) {
  CONF_ASSIGN_OR_FAIL(auto rows,
                      InsertRows(exec(), Many({
                                             JobAt("qa", kT0),
                                             JobAt("qa", kT0),
                                             JobAt("qa", kT0),
                                             JobAt("qb", kT0 + seconds(9), 1, JobState::kScheduled),
                                             JobAt("qb", kT0 + seconds(9), 1, JobState::kScheduled),
                                             JobAt("qa", kT0, 1, JobState::kPending),
                                         })));
  CONF_ASSIGN_OR_FAIL(auto running, exec().JobGetAvailable(Fetch("qa", 1)));
  ASSERT_EQ(running.size(), 1u);

  CONF_ASSIGN_OR_FAIL(auto all, exec().JobCountByState(""));
  EXPECT_EQ(all, (std::map<JobState, int64_t>{{JobState::kAvailable, 2},
                                              {JobState::kRunning, 1},
                                              {JobState::kScheduled, 2},
                                              {JobState::kPending, 1}}));
  CONF_ASSIGN_OR_FAIL(auto qa, exec().JobCountByState("qa"));
  EXPECT_EQ(qa, (std::map<JobState, int64_t>{
                    {JobState::kAvailable, 2}, {JobState::kRunning, 1}, {JobState::kPending, 1}}));
  CONF_ASSIGN_OR_FAIL(auto none, exec().JobCountByState("nope"));
  EXPECT_TRUE(none.empty());
}

// ---- transactions -----------------------------------------------------------------------------

TEST_P(DriverConformanceTest, TxCommitMakesWritesVisible) {
  CONF_ASSIGN_OR_FAIL(auto tx, driver().Begin());
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(*tx, Many({Job("in_tx", "q")})));
  ASSERT_EQ(rows.size(), 1u);
  CONF_ASSIGN_OR_FAIL(JobRow inside, tx->JobGetByID(rows[0].id));
  EXPECT_EQ(inside.kind, "in_tx");
  CONF_ASSIGN_OR_FAIL(int64_t fast, tx->JobInsertManyFast(Many({Job("in_tx", "q")})));
  EXPECT_EQ(fast, 1);
  CONF_ASSERT_OK(tx->Commit());

  CONF_ASSIGN_OR_FAIL(JobRow after, exec().JobGetByID(rows[0].id));
  EXPECT_EQ(after.kind, "in_tx");
  CONF_ASSIGN_OR_FAIL(auto counts, exec().JobCountByState("q"));
  EXPECT_EQ(counts[JobState::kAvailable], 2);

  // A finished transaction refuses further use.
  EXPECT_FALSE(InsertRows(*tx, Many({Job()})).has_value());
  EXPECT_FALSE(tx->Commit().ok());
  EXPECT_FALSE(tx->Rollback().ok());
}

TEST_P(DriverConformanceTest, TxRollbackDiscardsWrites) {
  CONF_ASSIGN_OR_FAIL(auto before, InsertRows(exec(), Many({Job("k", "q")})));
  CONF_ASSIGN_OR_FAIL(auto tx, driver().Begin());
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(*tx, Many({Job("k", "q")})));
  CONF_ASSIGN_OR_FAIL(auto fetched, tx->JobGetAvailable(Fetch("q", 10)));
  EXPECT_EQ(fetched.size(), 2u);
  CONF_ASSERT_OK(tx->Rollback());

  EXPECT_TRUE(exec().JobGetByID(rows[0].id).error().IsNotFound());
  CONF_ASSIGN_OR_FAIL(JobRow kept, exec().JobGetByID(before[0].id));
  EXPECT_EQ(kept.state, JobState::kAvailable);
  EXPECT_EQ(kept.attempt, 0);
}

TEST_P(DriverConformanceTest, TxDestroyedWithoutCommitRollsBack) {
  int64_t id = 0;
  {
    CONF_ASSIGN_OR_FAIL(auto tx, driver().Begin());
    CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(*tx, Many({Job("k", "q")})));
    id = rows[0].id;
  }
  EXPECT_TRUE(exec().JobGetByID(id).error().IsNotFound());
  // The driver is usable again: the transaction released everything it held.
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobInsertManyFast(Many({Job()})));
  EXPECT_EQ(n, 1);
  CONF_ASSIGN_OR_FAIL(auto tx2, driver().Begin());
  CONF_ASSERT_OK(tx2->Commit());
}

TEST_P(DriverConformanceTest, FailedInsertInsideTxLeavesEarlierWritesIntact) {
  CONF_ASSIGN_OR_FAIL(auto tx, driver().Begin());
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(*tx, Many({Job("k", "q")})));
  JobInsertParams bad = Job();
  bad.priority = 0;
  EXPECT_FALSE(InsertRows(*tx, Many({Job(), bad})).has_value());
  CONF_ASSERT_OK(tx->Commit());
  CONF_ASSIGN_OR_FAIL(auto counts, exec().JobCountByState(""));
  EXPECT_EQ(counts, (std::map<JobState, int64_t>{{JobState::kAvailable, 1}}));
  CONF_ASSERT_OK(exec().JobGetByID(rows[0].id));
}

// ---- migrations -------------------------------------------------------------------------------

TEST_P(DriverConformanceTest, MigrationsAreNumberedAndComplete) {
  const auto& migrations = driver().Migrations();
  ASSERT_FALSE(migrations.empty());
  for (size_t i = 0; i < migrations.size(); ++i) {
    EXPECT_EQ(migrations[i].version, static_cast<int>(i) + 1);
    EXPECT_FALSE(migrations[i].name.empty());
    EXPECT_FALSE(migrations[i].up.empty());
    EXPECT_FALSE(migrations[i].down.empty());
  }
  CONF_ASSIGN_OR_FAIL(int version, driver().SchemaVersion());
  EXPECT_EQ(version, spool::internal::LatestVersion(driver()));
}

TEST_P(DriverConformanceTest, MigrateDownAndUpAgain) {
  const int latest = spool::internal::LatestVersion(driver());
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many({Job()})));

  CONF_ASSERT_OK(driver().MigrateDown(0));
  CONF_ASSIGN_OR_FAIL(int empty, driver().SchemaVersion());
  EXPECT_EQ(empty, 0) << "no spool table left: version 0";
  EXPECT_FALSE(exec().JobGetByID(rows[0].id).has_value()) << "the job table is gone";
  CONF_ASSERT_OK(driver().MigrateDown(0));  // nothing left to revert

  CONF_ASSERT_OK(driver().MigrateUp(latest));
  CONF_ASSIGN_OR_FAIL(int version, driver().SchemaVersion());
  EXPECT_EQ(version, latest);
  CONF_ASSERT_OK(driver().MigrateUp(latest));  // already there
  CONF_ASSIGN_OR_FAIL(auto counts, exec().JobCountByState(""));
  EXPECT_TRUE(counts.empty()) << "the tables were recreated empty";
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobInsertManyFast(Many({Job()})));
  EXPECT_EQ(n, 1);

  // Step by step, newest first.
  for (int v = latest - 1; v >= 0; --v) {
    CONF_ASSERT_OK(driver().MigrateDown(v));
    CONF_ASSIGN_OR_FAIL(int now_at, driver().SchemaVersion());
    EXPECT_EQ(now_at, v);
  }
  for (int v = 1; v <= latest; ++v) {
    CONF_ASSERT_OK(driver().MigrateUp(v));
    CONF_ASSIGN_OR_FAIL(int now_at, driver().SchemaVersion());
    EXPECT_EQ(now_at, v);
  }
}

TEST_P(DriverConformanceTest, MigrateRejectsUnknownVersions) {
  const int latest = spool::internal::LatestVersion(driver());
  EXPECT_TRUE(driver().MigrateUp(latest + 1).IsInvalidArgument());
  EXPECT_TRUE(driver().MigrateDown(-1).IsInvalidArgument());
  CONF_ASSIGN_OR_FAIL(int version, driver().SchemaVersion());
  EXPECT_EQ(version, latest);
}

TEST_P(DriverConformanceTest, SchemaVersionIsVisibleToAnotherInstance) {
  CONF_ASSIGN_OR_FAIL(auto other, GetParam().open_again());
  CONF_ASSIGN_OR_FAIL(int version, other->SchemaVersion());
  EXPECT_EQ(version, spool::internal::LatestVersion(driver()));
  CONF_ASSERT_OK(driver().MigrateDown(0));
  CONF_ASSIGN_OR_FAIL(int after, other->SchemaVersion());
  EXPECT_EQ(after, 0);
}

// ---- wake-ups ---------------------------------------------------------------------------------

TEST_P(DriverConformanceTest, WaitForChangeTimesOutWithoutChange) {
  CONF_ASSIGN_OR_FAIL(bool ignored, driver().WaitForChange(spool::Duration::zero()));
  (void)ignored;  // absorbs changes made while setting up (the migration)
  const auto start = std::chrono::steady_clock::now();
  CONF_ASSIGN_OR_FAIL(bool changed, driver().WaitForChange(milliseconds(100)));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_FALSE(changed);
  EXPECT_GE(elapsed, milliseconds(95));
  EXPECT_LT(elapsed, seconds(5));
}

TEST_P(DriverConformanceTest, WaitForChangeSeesAnotherInstanceCommit) {
  CONF_ASSIGN_OR_FAIL(auto other, GetParam().open_again());
  CONF_ASSIGN_OR_FAIL(bool ignored, driver().WaitForChange(spool::Duration::zero()));
  (void)ignored;

  // A change made before the wait starts still counts (it came after the previous call).
  CONF_ASSIGN_OR_FAIL(int64_t n, other->executor().JobInsertManyFast(Many({Job("k", "q")})));
  ASSERT_EQ(n, 1);
  auto start = std::chrono::steady_clock::now();
  CONF_ASSIGN_OR_FAIL(bool changed, driver().WaitForChange(seconds(20)));
  EXPECT_TRUE(changed);
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(10));

  // And one made while a thread is waiting wakes it.
  std::promise<void> waiting;
  auto waiter = std::async(std::launch::async, [&] {
    waiting.set_value();
    return driver().WaitForChange(seconds(20));
  });
  waiting.get_future().wait();
  start = std::chrono::steady_clock::now();
  CONF_ASSIGN_OR_FAIL(int64_t n2, other->executor().JobInsertManyFast(Many({Job("k", "q")})));
  ASSERT_EQ(n2, 1);
  CONF_ASSIGN_OR_FAIL(bool woke, waiter.get());
  EXPECT_TRUE(woke);
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(10));
}

TEST_P(DriverConformanceTest, InterruptWakesAWaiterAtOnce) {
  CONF_ASSIGN_OR_FAIL(bool ignored, driver().WaitForChange(spool::Duration::zero()));
  (void)ignored;
  std::promise<void> waiting;
  const auto start = std::chrono::steady_clock::now();
  auto waiter = std::async(std::launch::async, [&] {
    waiting.set_value();
    return driver().WaitForChange(seconds(30));
  });
  waiting.get_future().wait();
  driver().Interrupt();
  CONF_ASSERT_OK(waiter.get());
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(10));
}

TEST_P(DriverConformanceTest, InterruptBeforeTheWaitIsNotLost) {
  CONF_ASSIGN_OR_FAIL(bool ignored, driver().WaitForChange(spool::Duration::zero()));
  (void)ignored;
  driver().Interrupt();
  const auto start = std::chrono::steady_clock::now();
  CONF_ASSERT_OK(driver().WaitForChange(seconds(30)));
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(10));
  // Consumed: the next wait times out normally.
  CONF_ASSIGN_OR_FAIL(bool changed, driver().WaitForChange(milliseconds(20)));
  EXPECT_FALSE(changed);
}

// Besides inserts, what another instance changes for this one's producers wakes it: a retry, a
// pause, a resume, and jobs its scheduler made available (PostgreSQL: each one NOTIFYs; SQLite:
// data_version moves).
TEST_P(DriverConformanceTest, WaitForChangeSeesAnotherInstancesRetryPauseAndSchedule) {
  CONF_ASSIGN_OR_FAIL(auto other, GetParam().open_again());
  // Until nothing is pending: the first wait may report a change (PostgreSQL: it starts to
  // listen and cannot know what it missed).
  const auto drain = [&] {
    for (int i = 0; i < 10; ++i) {
      auto changed = driver().WaitForChange(milliseconds(50));
      ASSERT_TRUE(changed.has_value()) << changed.error().ToString();
      if (!*changed) return;
    }
    FAIL() << "changes kept coming";
  };
  const auto expect_woken = [&](std::string_view what) {
    auto woke = driver().WaitForChange(seconds(20));
    ASSERT_TRUE(woke.has_value()) << what << ": " << woke.error().ToString();
    EXPECT_TRUE(*woke) << what;
    drain();
  };
  drain();
  CONF_ASSIGN_OR_FAIL(
      auto rows,
      InsertRows(other->executor(), Many({JobAt("q", kT0 + hours(1), 1, JobState::kScheduled),
                                          JobAt("q", kT0 + seconds(1), 1, JobState::kScheduled)})));
  ASSERT_EQ(rows.size(), 2u);
  drain();  // SQLite sees the insert; PostgreSQL is told nothing of scheduled jobs
  CONF_ASSIGN_OR_FAIL(JobRow retried, other->executor().JobRetry({rows[0].id, kT0}));
  EXPECT_EQ(retried.state, JobState::kAvailable);
  expect_woken("retry");
  CONF_ASSERT_OK(other->executor().QueuePause("q", kT0));
  expect_woken("pause");
  CONF_ASSERT_OK(other->executor().QueueResume("q", kT0));
  expect_woken("resume");
  CONF_ASSIGN_OR_FAIL(auto scheduled, other->executor().JobSchedule({kT0 + seconds(2), 10}));
  EXPECT_EQ(scheduled.count, 1);
  expect_woken("schedule");
}

TEST_P(DriverConformanceTest, ExecutorForRejectsNullAndForeignTransactions) {
  // A driver accepts only its own kind of TxRef, and never a null handle: with null handles,
  // both kinds must be refused whichever driver this is.
  for (spool::TxRef tx : {spool::SqliteTx(nullptr), spool::PostgresTx(nullptr)}) {
    auto r = driver().ExecutorFor(tx);
    ASSERT_FALSE(r.has_value());
    EXPECT_TRUE(r.error().IsInvalidArgument()) << r.error().ToString();
  }
}

// ---- issue 3: unique jobs, admin, maintenance, leader, clients, queues, periodic -------------

namespace {

uint8_t Bit(JobState s) { return static_cast<uint8_t>(1u << static_cast<int>(s)); }

// Every state but the final ones: what a typical unique job uses.
const uint8_t kUniqueMask = static_cast<uint8_t>(
    Bit(JobState::kAvailable) | Bit(JobState::kScheduled) | Bit(JobState::kRunning) |
    Bit(JobState::kRetryable) | Bit(JobState::kPending));

// Raw key bytes, as spool's SHA-256 would be: 32 bytes with a NUL among them.
std::string Key(char c) {
  std::string k(32, c);
  k[5] = '\0';
  return k;
}

JobInsertParams Unique(std::string kind, const std::string& key, uint8_t mask = kUniqueMask,
                       std::string queue = "default") {
  JobInsertParams p = Job(std::move(kind), std::move(queue));
  p.unique_key = key;
  p.unique_states = mask;
  return p;
}

// Inserts one job in `queue`, which must have no other available job, and claims it at `at`.
spool::Result<JobRow> InsertRunning(spool::internal::Executor& ex, const std::string& queue,
                                    TimePoint at, const std::string& client = "client-1",
                                    int max_attempts = 25) {
  JobInsertParams p = JobAt(queue, at);
  p.max_attempts = max_attempts;
  SPOOL_ASSIGN_OR_RETURN(auto rows, InsertRows(ex, Many({p}, at)));
  SPOOL_ASSIGN_OR_RETURN(auto got, ex.JobGetAvailable(Fetch(queue, 1, at, client)));
  if (got.size() != 1 || got[0].id != rows[0].id) {
    return Status::Internal("queue " + queue + " did not yield the job just inserted");
  }
  return got[0];
}

// A job in `state` in `queue` (which must have no other available job), reached through the
// seam the way the runtime would: inserted, claimed and given an outcome at `at`.
spool::Result<JobRow> InsertInState(spool::internal::Executor& ex, JobState state,
                                    const std::string& queue, TimePoint at, int max_attempts = 25) {
  if (state == JobState::kAvailable || state == JobState::kPending ||
      state == JobState::kScheduled) {
    JobInsertParams p = JobAt(queue, state == JobState::kScheduled ? at + hours(1) : at, 1, state);
    p.max_attempts = max_attempts;
    SPOOL_ASSIGN_OR_RETURN(auto rows, InsertRows(ex, Many({p}, at)));
    return rows[0];
  }
  SPOOL_ASSIGN_OR_RETURN(JobRow running, InsertRunning(ex, queue, at, "client-1", max_attempts));
  if (state == JobState::kRunning) return running;
  const TimePoint outcome_at = state == JobState::kRetryable ? at + hours(1) : at;
  SPOOL_ASSIGN_OR_RETURN(int64_t n,
                         ex.JobSetStateIfRunningMany({{Outcome(running.id, state, outcome_at)}}));
  if (n != 1) return Status::Internal("outcome not applied");
  return ex.JobGetByID(running.id);
}

int64_t CountOf(const std::map<JobState, int64_t>& counts, JobState s) {
  auto it = counts.find(s);
  return it == counts.end() ? 0 : it->second;
}

}  // namespace

// A retry the unique index refuses names the job that holds the key, and changes nothing.
TEST_P(DriverConformanceTest, RetryRefusedByTheUniqueIndexNamesTheJobWithTheKey) {
  CONF_ASSIGN_OR_FAIL(auto first,
                      exec().JobInsertMany(Many({Unique("u", Key('r'), kUniqueMask, "uq_retry")})));
  const int64_t id = first[0].job.id;
  CONF_ASSIGN_OR_FAIL(JobRow cancelled, exec().JobCancel({id, kT0}));
  ASSERT_EQ(cancelled.state, JobState::kCancelled);  // not in the mask: the key is free
  CONF_ASSIGN_OR_FAIL(auto second,
                      exec().JobInsertMany(Many({Unique("u", Key('r'), kUniqueMask, "uq_retry")})));
  ASSERT_FALSE(second[0].duplicate);
  auto r = exec().JobRetry({id, kT0});
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().IsAlreadyExists()) << r.error().ToString();
  EXPECT_EQ(r.error().message(),
            fmt::format("job {} (available) holds its unique key", second[0].job.id));
  CONF_ASSIGN_OR_FAIL(JobRow stored, exec().JobGetByID(id));
  EXPECT_EQ(stored.state, JobState::kCancelled);
}

TEST_P(DriverConformanceTest, UniqueInsertReturnsExistingRowWhileItsStateIsInTheMask) {
  CONF_ASSIGN_OR_FAIL(auto first,
                      exec().JobInsertMany(Many({Unique("u", Key('a'), kUniqueMask, "uq")})));
  ASSERT_EQ(first.size(), 1u);
  EXPECT_FALSE(first[0].duplicate);
  const int64_t id = first[0].job.id;

  // Available, then running: both in the mask, so the same row comes back.
  CONF_ASSIGN_OR_FAIL(auto again, exec().JobInsertMany(Many({Unique("u", Key('a'))})));
  ASSERT_EQ(again.size(), 1u);
  EXPECT_TRUE(again[0].duplicate);
  EXPECT_EQ(again[0].job.id, id);
  EXPECT_EQ(again[0].job.queue, "uq");  // the stored row, not the one asked for
  CONF_ASSIGN_OR_FAIL(auto claimed, exec().JobGetAvailable(Fetch("uq", 1)));
  ASSERT_EQ(claimed.size(), 1u);
  CONF_ASSIGN_OR_FAIL(auto while_running, exec().JobInsertMany(Many({Unique("u", Key('a'))})));
  ASSERT_EQ(while_running.size(), 1u);
  EXPECT_TRUE(while_running[0].duplicate);
  EXPECT_EQ(while_running[0].job.id, id);
  EXPECT_EQ(while_running[0].job.state, JobState::kRunning);

  // Another key is another job.
  CONF_ASSIGN_OR_FAIL(auto other, exec().JobInsertMany(Many({Unique("u", Key('b'))})));
  ASSERT_EQ(other.size(), 1u);
  EXPECT_FALSE(other[0].duplicate);
  EXPECT_NE(other[0].job.id, id);

  // Completed is not in the mask: the key is free again.
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobSetStateIfRunningMany(
                                     {{Outcome(id, JobState::kCompleted, kT0 + seconds(1))}}));
  EXPECT_EQ(n, 1);
  CONF_ASSIGN_OR_FAIL(auto after, exec().JobInsertMany(Many({Unique("u", Key('a'))})));
  ASSERT_EQ(after.size(), 1u);
  EXPECT_FALSE(after[0].duplicate);
  EXPECT_GT(after[0].job.id, other[0].job.id);
  EXPECT_EQ(after[0].job.state, JobState::kAvailable);
  CONF_ASSIGN_OR_FAIL(auto counts, exec().JobCountByState(""));
  EXPECT_EQ(CountOf(counts, JobState::kCompleted), 1);
  EXPECT_EQ(CountOf(counts, JobState::kAvailable), 2);

  // A mask that includes completed keeps the key taken by a completed row.
  const uint8_t with_completed = static_cast<uint8_t>(kUniqueMask | Bit(JobState::kCompleted));
  CONF_ASSIGN_OR_FAIL(auto c1,
                      exec().JobInsertMany(Many({Unique("c", Key('c'), with_completed, "cq")})));
  CONF_ASSIGN_OR_FAIL(auto c_claimed, exec().JobGetAvailable(Fetch("cq", 1)));
  ASSERT_EQ(c_claimed.size(), 1u);
  CONF_ASSIGN_OR_FAIL(
      n, exec().JobSetStateIfRunningMany({{Outcome(c1[0].job.id, JobState::kCompleted, kT0)}}));
  EXPECT_EQ(n, 1);
  CONF_ASSIGN_OR_FAIL(auto c2, exec().JobInsertMany(Many({Unique("c", Key('c'), with_completed)})));
  ASSERT_EQ(c2.size(), 1u);
  EXPECT_TRUE(c2[0].duplicate);
  EXPECT_EQ(c2[0].job.id, c1[0].job.id);
  EXPECT_EQ(c2[0].job.state, JobState::kCompleted);
}

TEST_P(DriverConformanceTest, UniqueRowsMixedWithPlainRowsKeepInputOrder) {
  CONF_ASSIGN_OR_FAIL(auto existing, exec().JobInsertMany(Many({Unique("existing", Key('e'))})));
  ASSERT_EQ(existing.size(), 1u);
  CONF_ASSIGN_OR_FAIL(
      auto results, exec().JobInsertMany(Many({Job("plain1"), Unique("dup_of_existing", Key('e')),
                                               Job("plain2"), Unique("new_unique", Key('n')),
                                               Unique("dup_in_batch", Key('n')), Job("plain3")})));
  ASSERT_EQ(results.size(), 6u);
  EXPECT_EQ(results[0].job.kind, "plain1");
  EXPECT_FALSE(results[0].duplicate);
  EXPECT_EQ(results[1].job.kind, "existing");
  EXPECT_TRUE(results[1].duplicate);
  EXPECT_EQ(results[1].job.id, existing[0].job.id);
  EXPECT_EQ(results[2].job.kind, "plain2");
  EXPECT_FALSE(results[2].duplicate);
  EXPECT_EQ(results[3].job.kind, "new_unique");
  EXPECT_FALSE(results[3].duplicate);
  // The same key twice in one call: the second gets the row the first inserted.
  EXPECT_EQ(results[4].job.kind, "new_unique");
  EXPECT_TRUE(results[4].duplicate);
  EXPECT_EQ(results[4].job.id, results[3].job.id);
  EXPECT_EQ(results[5].job.kind, "plain3");
  EXPECT_FALSE(results[5].duplicate);
  std::set<int64_t> ids;
  for (const auto& r : results) ids.insert(r.job.id);
  EXPECT_EQ(ids.size(), 5u);
  CONF_ASSIGN_OR_FAIL(auto counts, exec().JobCountByState(""));
  EXPECT_EQ(CountOf(counts, JobState::kAvailable), 5);
}

TEST_P(DriverConformanceTest, ConcurrentUniqueInsertersProduceOneRowPerKey) {
  CONF_ASSIGN_OR_FAIL(auto other, GetParam().open_again());
  constexpr int kKeys = 20;
  std::promise<void> go;
  std::shared_future<void> start = go.get_future().share();
  auto inserter = [&](spool::internal::Executor& ex) {
    return std::async(std::launch::async, [&ex, start]() -> spool::Result<std::vector<int64_t>> {
      start.wait();
      std::vector<int64_t> ids;
      for (int k = 0; k < kKeys; ++k) {
        SPOOL_ASSIGN_OR_RETURN(
            auto r, ex.JobInsertMany(Many({Unique("race", Key(static_cast<char>('A' + k)))})));
        if (r.size() != 1) return Status::Internal("one result expected");
        ids.push_back(r[0].job.id);
      }
      return ids;
    });
  };
  auto a = inserter(exec());
  auto b = inserter(other->executor());
  go.set_value();
  CONF_ASSIGN_OR_FAIL(auto ids_a, a.get());
  CONF_ASSIGN_OR_FAIL(auto ids_b, b.get());
  EXPECT_EQ(ids_a, ids_b);  // both saw the one row of each key
  CONF_ASSIGN_OR_FAIL(auto counts, exec().JobCountByState(""));
  EXPECT_EQ(CountOf(counts, JobState::kAvailable), kKeys);
}

TEST_P(DriverConformanceTest, InsertManyFastSkipsDuplicatesInItsCount) {
  CONF_ASSIGN_OR_FAIL(auto existing, exec().JobInsertMany(Many({Unique("u", Key('e'))})));
  CONF_ASSIGN_OR_FAIL(
      int64_t n, exec().JobInsertManyFast(Many({Job("plain"), Unique("u", Key('e')),
                                                Unique("u", Key('f')), Unique("u", Key('f'))})));
  EXPECT_EQ(n, 2);
  CONF_ASSIGN_OR_FAIL(auto counts, exec().JobCountByState(""));
  EXPECT_EQ(CountOf(counts, JobState::kAvailable), 3);
  // The stored key is the one given, byte for byte: a second insert finds it.
  CONF_ASSIGN_OR_FAIL(auto again, exec().JobInsertMany(Many({Unique("u", Key('f'))})));
  ASSERT_EQ(again.size(), 1u);
  EXPECT_TRUE(again[0].duplicate);
}

TEST_P(DriverConformanceTest, CancelFinalizesJobsThatAreNotRunning) {
  const TimePoint now = kT0 + minutes(5);
  for (JobState s :
       {JobState::kAvailable, JobState::kScheduled, JobState::kRetryable, JobState::kPending}) {
    SCOPED_TRACE(std::string(spool::JobStateName(s)));
    CONF_ASSIGN_OR_FAIL(JobRow job,
                        InsertInState(exec(), s, "q_" + std::string(spool::JobStateName(s)), kT0));
    ASSERT_EQ(job.state, s);
    const size_t errors_before = job.errors.size();
    CONF_ASSIGN_OR_FAIL(JobRow got, exec().JobCancel({job.id, now}));
    EXPECT_EQ(got.id, job.id);
    EXPECT_EQ(got.state, JobState::kCancelled);
    EXPECT_EQ(got.finalized_at, now);
    ASSERT_EQ(got.errors.size(), errors_before + 1);
    EXPECT_FALSE(got.errors.back().error.empty());
    EXPECT_EQ(got.errors.back().at, now);
    CONF_ASSIGN_OR_FAIL(JobRow stored, exec().JobGetByID(job.id));
    EXPECT_EQ(stored.state, JobState::kCancelled);
    EXPECT_EQ(stored.finalized_at, now);
  }
}

TEST_P(DriverConformanceTest, CancelOfARunningJobRequestsItAndLeavesItRunning) {
  const TimePoint now = kT0 + minutes(5);
  JobInsertParams p = JobAt("qr", kT0);
  p.metadata = R"({"keep":1})";
  CONF_ASSIGN_OR_FAIL(auto inserted, InsertRows(exec(), Many({p, JobAt("qr", kT0)})));
  CONF_ASSIGN_OR_FAIL(auto running, exec().JobGetAvailable(Fetch("qr", 2)));
  ASSERT_EQ(running.size(), 2u);
  const int64_t requested = inserted[0].id;
  const int64_t not_requested = inserted[1].id;
  CONF_ASSIGN_OR_FAIL(JobRow available, InsertInState(exec(), JobState::kAvailable, "qa", kT0));
  // An available job cancelled outright is not "requested": it is not running.
  CONF_ASSIGN_OR_FAIL(JobRow cancelled, exec().JobCancel({available.id, now}));
  EXPECT_EQ(cancelled.state, JobState::kCancelled);

  CONF_ASSIGN_OR_FAIL(JobRow got, exec().JobCancel({requested, now}));
  EXPECT_EQ(got.state, JobState::kRunning);
  EXPECT_FALSE(got.finalized_at.has_value());
  const nlohmann::json meta = Json(got.metadata);
  EXPECT_EQ(meta.value("keep", 0), 1);
  ASSERT_TRUE(meta.contains("cancel_requested_at")) << got.metadata;
  EXPECT_EQ(meta["cancel_requested_at"], spool::FormatTime(now));
  CONF_ASSIGN_OR_FAIL(JobRow stored, exec().JobGetByID(requested));
  EXPECT_EQ(stored.state, JobState::kRunning);

  CONF_ASSIGN_OR_FAIL(auto ids, exec().JobGetCancelRequested(
                                    {requested, not_requested, available.id, 987'654'321}));
  EXPECT_EQ(ids, std::vector<int64_t>{requested});
  CONF_ASSIGN_OR_FAIL(auto none, exec().JobGetCancelRequested({}));
  EXPECT_TRUE(none.empty());

  // Once it ends it is no longer reported.
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobSetStateIfRunningMany(
                                     {{Outcome(requested, JobState::kCancelled, now)}}));
  EXPECT_EQ(n, 1);
  CONF_ASSIGN_OR_FAIL(auto after, exec().JobGetCancelRequested({requested, not_requested}));
  EXPECT_TRUE(after.empty());
}

TEST_P(DriverConformanceTest, CancelOfAFinalJobReturnsItUnchangedAndUnknownIsNotFound) {
  for (JobState s : {JobState::kCompleted, JobState::kDiscarded, JobState::kCancelled}) {
    SCOPED_TRACE(std::string(spool::JobStateName(s)));
    CONF_ASSIGN_OR_FAIL(JobRow job,
                        InsertInState(exec(), s, "q_" + std::string(spool::JobStateName(s)), kT0));
    CONF_ASSIGN_OR_FAIL(JobRow got, exec().JobCancel({job.id, kT0 + hours(1)}));
    EXPECT_EQ(got.state, s);
    EXPECT_EQ(got.finalized_at, job.finalized_at);
    EXPECT_EQ(got.errors.size(), job.errors.size());
    EXPECT_EQ(Json(got.metadata), Json(job.metadata));
  }
  auto missing = exec().JobCancel({987'654'321, kT0});
  ASSERT_FALSE(missing.has_value());
  EXPECT_TRUE(missing.error().IsNotFound()) << missing.error().ToString();
  EXPECT_NE(missing.error().message().find("987654321"), std::string::npos)
      << missing.error().ToString();
}

TEST_P(DriverConformanceTest, RetryMakesAJobAvailableNow) {
  const TimePoint now = kT0 + minutes(5);
  for (JobState s : {JobState::kDiscarded, JobState::kCancelled, JobState::kCompleted,
                     JobState::kRetryable, JobState::kScheduled}) {
    SCOPED_TRACE(std::string(spool::JobStateName(s)));
    const std::string queue = "q_" + std::string(spool::JobStateName(s));
    CONF_ASSIGN_OR_FAIL(JobRow job, InsertInState(exec(), s, queue, kT0));
    ASSERT_EQ(job.state, s);
    CONF_ASSIGN_OR_FAIL(JobRow got, exec().JobRetry({job.id, now}));
    EXPECT_EQ(got.state, JobState::kAvailable);
    EXPECT_EQ(got.scheduled_at, now);
    EXPECT_FALSE(got.finalized_at.has_value());
    EXPECT_EQ(got.attempt, job.attempt);
    EXPECT_EQ(got.max_attempts, 25);
    CONF_ASSIGN_OR_FAIL(auto fetched, exec().JobGetAvailable(Fetch(queue, 5, now)));
    ASSERT_EQ(fetched.size(), 1u);
    EXPECT_EQ(fetched[0].id, job.id);
  }
}

TEST_P(DriverConformanceTest, RetryGrowsMaxAttemptsOnlyWhenUsedUp) {
  CONF_ASSIGN_OR_FAIL(JobRow used_up,
                      InsertInState(exec(), JobState::kDiscarded, "q1", kT0, /*max_attempts=*/1));
  ASSERT_EQ(used_up.attempt, 1);
  CONF_ASSIGN_OR_FAIL(JobRow got, exec().JobRetry({used_up.id, kT0}));
  EXPECT_EQ(got.max_attempts, 2);
  EXPECT_EQ(got.attempt, 1);
  CONF_ASSIGN_OR_FAIL(JobRow spare,
                      InsertInState(exec(), JobState::kDiscarded, "q2", kT0, /*max_attempts=*/5));
  CONF_ASSIGN_OR_FAIL(JobRow got2, exec().JobRetry({spare.id, kT0}));
  EXPECT_EQ(got2.max_attempts, 5);
}

// Retrying a job that waits already keeps its place: it is not sent to the back of its queue.
TEST_P(DriverConformanceTest, RetryOfAnAvailableJobKeepsItsPlace) {
  JobInsertParams early = Job("k", "q_retry_place");
  early.scheduled_at = kT0 - seconds(30);
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many({early})));
  CONF_ASSIGN_OR_FAIL(JobRow got, exec().JobRetry({rows[0].id, kT0}));
  EXPECT_EQ(got.state, JobState::kAvailable);
  EXPECT_EQ(got.scheduled_at, kT0 - seconds(30));
}

TEST_P(DriverConformanceTest, RetryRefusesRunningAndUnknownJobs) {
  CONF_ASSIGN_OR_FAIL(JobRow running, InsertRunning(exec(), "q", kT0));
  auto r = exec().JobRetry({running.id, kT0});
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().IsFailedPrecondition()) << r.error().ToString();
  // The same words from every driver, naming the job once.
  EXPECT_EQ(r.error().message(),
            fmt::format("job {} is running: cancel it or wait for it to finish before retrying it",
                        running.id));
  CONF_ASSIGN_OR_FAIL(JobRow stored, exec().JobGetByID(running.id));
  EXPECT_EQ(stored.state, JobState::kRunning);
  // Once its cancel is requested, asking to cancel it again is not the advice.
  CONF_ASSIGN_OR_FAIL(JobRow requested, exec().JobCancel({running.id, kT0}));
  ASSERT_EQ(requested.state, JobState::kRunning);
  auto del = exec().JobDelete(running.id);
  ASSERT_FALSE(del.has_value());
  EXPECT_NE(del.error().message().find(
                fmt::format("job {} is running; its cancel was requested at ", running.id)),
            std::string::npos)
      << del.error().ToString();
  auto missing = exec().JobRetry({987'654'321, kT0});
  ASSERT_FALSE(missing.has_value());
  EXPECT_TRUE(missing.error().IsNotFound()) << missing.error().ToString();
}

TEST_P(DriverConformanceTest, RetryForgetsAnEarlierCancelRequest) {
  // A cancel request belongs to the attempt it was made for: a retried job must not be cancelled
  // as soon as it runs again.
  CONF_ASSIGN_OR_FAIL(JobRow running, InsertRunning(exec(), "q", kT0));
  CONF_ASSIGN_OR_FAIL(JobRow requested, exec().JobCancel({running.id, kT0 + seconds(1)}));
  ASSERT_EQ(requested.state, JobState::kRunning);
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobSetStateIfRunningMany({{Outcome(
                                     running.id, JobState::kCancelled, kT0 + seconds(2))}}));
  ASSERT_EQ(n, 1);
  CONF_ASSIGN_OR_FAIL(JobRow retried, exec().JobRetry({running.id, kT0 + seconds(3)}));
  EXPECT_FALSE(Json(retried.metadata).contains("cancel_requested_at")) << retried.metadata;
  CONF_ASSIGN_OR_FAIL(auto again, exec().JobGetAvailable(Fetch("q", 1, kT0 + seconds(3))));
  ASSERT_EQ(again.size(), 1u);
  CONF_ASSIGN_OR_FAIL(auto ids, exec().JobGetCancelRequested({running.id}));
  EXPECT_TRUE(ids.empty());
}

TEST_P(DriverConformanceTest, DeleteRemovesJobsThatAreNotRunning) {
  CONF_ASSIGN_OR_FAIL(JobRow completed, InsertInState(exec(), JobState::kCompleted, "q1", kT0));
  CONF_ASSIGN_OR_FAIL(JobRow available, InsertInState(exec(), JobState::kAvailable, "q2", kT0));
  for (const JobRow& job : {completed, available}) {
    CONF_ASSIGN_OR_FAIL(JobRow got, exec().JobDelete(job.id));
    EXPECT_EQ(got.id, job.id);
    EXPECT_EQ(got.state, job.state);
    EXPECT_EQ(got.kind, job.kind);
    auto gone = exec().JobGetByID(job.id);
    ASSERT_FALSE(gone.has_value());
    EXPECT_TRUE(gone.error().IsNotFound());
  }
  CONF_ASSIGN_OR_FAIL(JobRow running, InsertRunning(exec(), "q3", kT0));
  auto r = exec().JobDelete(running.id);
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().IsFailedPrecondition()) << r.error().ToString();
  CONF_ASSIGN_OR_FAIL(JobRow still, exec().JobGetByID(running.id));
  EXPECT_EQ(still.state, JobState::kRunning);
  auto missing = exec().JobDelete(987'654'321);
  ASSERT_FALSE(missing.has_value());
  EXPECT_TRUE(missing.error().IsNotFound()) << missing.error().ToString();
}

// A heartbeat returns the start it replaced: another one than the client's own, after its first
// heartbeat, is how a second process under the same id is seen.
TEST_P(DriverConformanceTest, ClientHeartbeatReturnsTheStartedAtItReplaced) {
  const TimePoint first = kT0 - hours(1);
  CONF_ASSIGN_OR_FAIL(auto fresh, exec().ClientHeartbeat({"twin", kT0, {"q"}, first}));
  EXPECT_FALSE(fresh.has_value()) << "a new row has no start before it";
  CONF_ASSIGN_OR_FAIL(auto own, exec().ClientHeartbeat({"twin", kT0 + seconds(5), {"q"}, first}));
  ASSERT_TRUE(own.has_value());
  EXPECT_EQ(*own, first);
  // Microseconds survive the round trip (the database keeps them as given).
  const TimePoint second = kT0 + microseconds(1'234'567);
  CONF_ASSIGN_OR_FAIL(auto other,
                      exec().ClientHeartbeat({"twin", kT0 + seconds(6), {"q"}, second}));
  ASSERT_TRUE(other.has_value());
  EXPECT_EQ(*other, first);
  CONF_ASSIGN_OR_FAIL(auto back, exec().ClientHeartbeat({"twin", kT0 + seconds(7), {"q"}, first}));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, second);
  CONF_ASSERT_OK(exec().ClientDelete("twin"));
  CONF_ASSIGN_OR_FAIL(auto gone, exec().ClientHeartbeat({"twin", kT0 + seconds(8), {"q"}, first}));
  EXPECT_FALSE(gone.has_value()) << "a deleted row comes back new";
}

TEST_P(DriverConformanceTest, GetStuckFindsRunningJobsOfDeadClientsAndOldAttempts) {
  const TimePoint now = kT0 + hours(3);
  CONF_ASSERT_OK(exec().ClientHeartbeat({"alive", now, {"q"}}));
  CONF_ASSERT_OK(exec().ClientHeartbeat({"stale", now - minutes(10), {"q"}}));
  // A process restarted under a fixed id: its row is fresh, its start after the job's attempt.
  CONF_ASSERT_OK(exec().ClientHeartbeat({"fixed", now - minutes(50), {"q"}, now - minutes(50)}));
  CONF_ASSERT_OK(exec().ClientHeartbeat({"fixed", now, {"q"}, now - seconds(30)}));
  // Fresh client, recent attempt: not stuck.
  CONF_ASSIGN_OR_FAIL(JobRow fresh, InsertRunning(exec(), "s1", now - seconds(5), "alive"));
  CONF_ASSIGN_OR_FAIL(JobRow of_stale, InsertRunning(exec(), "s2", now - seconds(4), "stale"));
  CONF_ASSIGN_OR_FAIL(JobRow of_ghost, InsertRunning(exec(), "s3", now - seconds(3), "ghost"));
  CONF_ASSIGN_OR_FAIL(JobRow of_before, InsertRunning(exec(), "s7", now - seconds(40), "fixed"));
  CONF_ASSIGN_OR_FAIL(JobRow of_now, InsertRunning(exec(), "s8", now - seconds(20), "fixed"));
  // Fresh client, but attempted before attempted_before: stuck.
  CONF_ASSIGN_OR_FAIL(JobRow old, InsertRunning(exec(), "s4", now - hours(2), "alive"));
  // First run by the ghost, now run by the live client: only the last client counts.
  CONF_ASSIGN_OR_FAIL(JobRow rerun, InsertRunning(exec(), "s5", now - minutes(30), "ghost"));
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().JobSetStateIfRunningMany({{Outcome(
                                     rerun.id, JobState::kRetryable, now - minutes(20))}}));
  ASSERT_EQ(n, 1);
  CONF_ASSIGN_OR_FAIL(auto scheduled, exec().JobSchedule({now - seconds(2), 100}));
  ASSERT_EQ(scheduled.count, 1);
  CONF_ASSIGN_OR_FAIL(auto rerun_rows,
                      exec().JobGetAvailable(Fetch("s5", 1, now - seconds(1), "alive")));
  ASSERT_EQ(rerun_rows.size(), 1u);
  // Not running: never stuck, whoever ran it.
  CONF_ASSIGN_OR_FAIL(JobRow done,
                      InsertInState(exec(), JobState::kCompleted, "s6", now - hours(2)));

  JobGetStuckParams p;
  p.heartbeat_stale_before = now - minutes(1);
  p.attempted_before = now - hours(1);
  p.max = 100;
  CONF_ASSIGN_OR_FAIL(auto stuck, exec().JobGetStuck(p));
  EXPECT_EQ(Ids(stuck), (std::vector<int64_t>{old.id, of_before.id, of_stale.id, of_ghost.id}));
  for (const auto& j : stuck) EXPECT_EQ(j.state, JobState::kRunning);
  p.max = 2;
  CONF_ASSIGN_OR_FAIL(auto first_two, exec().JobGetStuck(p));
  EXPECT_EQ(Ids(first_two), (std::vector<int64_t>{old.id, of_before.id}));
  (void)fresh;
  (void)of_now;
  (void)done;
}

TEST_P(DriverConformanceTest, DeleteFinalizedDeletesOnlyThatStateOlderThanTheCutoff) {
  const TimePoint now = kT0 + hours(5);
  CONF_ASSIGN_OR_FAIL(JobRow old1,
                      InsertInState(exec(), JobState::kCompleted, "q1", now - hours(3)));
  CONF_ASSIGN_OR_FAIL(JobRow old2,
                      InsertInState(exec(), JobState::kCompleted, "q2", now - hours(2)));
  CONF_ASSIGN_OR_FAIL(JobRow recent,
                      InsertInState(exec(), JobState::kCompleted, "q3", now - seconds(1)));
  CONF_ASSIGN_OR_FAIL(JobRow discarded,
                      InsertInState(exec(), JobState::kDiscarded, "q4", now - hours(3)));
  CONF_ASSIGN_OR_FAIL(JobRow available, InsertInState(exec(), JobState::kAvailable, "q5", kT0));

  JobDeleteFinalizedParams p;
  p.state = JobState::kCompleted;
  p.finalized_before = now - hours(1);
  p.max = 1;
  CONF_ASSIGN_OR_FAIL(int64_t n1, exec().JobDeleteFinalized(p));
  EXPECT_EQ(n1, 1);
  p.max = 100;
  CONF_ASSIGN_OR_FAIL(int64_t n2, exec().JobDeleteFinalized(p));
  EXPECT_EQ(n2, 1);
  CONF_ASSIGN_OR_FAIL(int64_t n3, exec().JobDeleteFinalized(p));
  EXPECT_EQ(n3, 0);
  EXPECT_TRUE(exec().JobGetByID(old1.id).error().IsNotFound());
  EXPECT_TRUE(exec().JobGetByID(old2.id).error().IsNotFound());
  CONF_ASSERT_OK(exec().JobGetByID(recent.id));
  CONF_ASSERT_OK(exec().JobGetByID(discarded.id));
  CONF_ASSERT_OK(exec().JobGetByID(available.id));

  p.state = JobState::kDiscarded;
  CONF_ASSIGN_OR_FAIL(int64_t n4, exec().JobDeleteFinalized(p));
  EXPECT_EQ(n4, 1);
  EXPECT_TRUE(exec().JobGetByID(discarded.id).error().IsNotFound());
}

TEST_P(DriverConformanceTest, LeaderElectionLeaseLifecycle) {
  const auto ttl = seconds(10);
  auto params = [&](std::string id, TimePoint now) { return LeaderElectParams{id, now, ttl}; };
  CONF_ASSIGN_OR_FAIL(auto none, exec().LeaderGet());
  EXPECT_FALSE(none.has_value());

  CONF_ASSIGN_OR_FAIL(bool a_won, exec().LeaderAttemptElect(params("a", kT0)));
  EXPECT_TRUE(a_won);
  CONF_ASSIGN_OR_FAIL(auto info, exec().LeaderGet());
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->leader_id, "a");
  EXPECT_EQ(info->elected_at, kT0);
  EXPECT_EQ(info->expires_at, kT0 + ttl);

  // Another candidate is refused while the lease is valid, and cannot reelect.
  CONF_ASSIGN_OR_FAIL(bool b_won, exec().LeaderAttemptElect(params("b", kT0 + seconds(5))));
  EXPECT_FALSE(b_won);
  CONF_ASSIGN_OR_FAIL(bool b_re, exec().LeaderAttemptReelect(params("b", kT0 + seconds(5))));
  EXPECT_FALSE(b_re);
  CONF_ASSIGN_OR_FAIL(info, exec().LeaderGet());
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->leader_id, "a");
  EXPECT_EQ(info->expires_at, kT0 + ttl);

  // The holder extends its lease.
  CONF_ASSIGN_OR_FAIL(bool a_re, exec().LeaderAttemptReelect(params("a", kT0 + seconds(6))));
  EXPECT_TRUE(a_re);
  CONF_ASSIGN_OR_FAIL(info, exec().LeaderGet());
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->leader_id, "a");
  EXPECT_EQ(info->elected_at, kT0);
  EXPECT_EQ(info->expires_at, kT0 + seconds(16));

  // Expired (expires_at <= now): another candidate takes over.
  CONF_ASSIGN_OR_FAIL(b_won, exec().LeaderAttemptElect(params("b", kT0 + seconds(16))));
  EXPECT_TRUE(b_won);
  CONF_ASSIGN_OR_FAIL(info, exec().LeaderGet());
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->leader_id, "b");
  EXPECT_EQ(info->elected_at, kT0 + seconds(16));
  EXPECT_EQ(info->expires_at, kT0 + seconds(26));
  CONF_ASSIGN_OR_FAIL(a_re, exec().LeaderAttemptReelect(params("a", kT0 + seconds(17))));
  EXPECT_FALSE(a_re);

  // An expired lease not yet taken can still be reelected by its holder.
  CONF_ASSIGN_OR_FAIL(bool b_late, exec().LeaderAttemptReelect(params("b", kT0 + seconds(40))));
  EXPECT_TRUE(b_late);
  CONF_ASSIGN_OR_FAIL(info, exec().LeaderGet());
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->leader_id, "b");
  EXPECT_EQ(info->expires_at, kT0 + seconds(50));

  // Resign frees the lease only for its holder.
  CONF_ASSERT_OK(exec().LeaderResign("a"));
  CONF_ASSIGN_OR_FAIL(info, exec().LeaderGet());
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->leader_id, "b");
  CONF_ASSERT_OK(exec().LeaderResign("b"));
  CONF_ASSIGN_OR_FAIL(info, exec().LeaderGet());
  EXPECT_FALSE(info.has_value());
  CONF_ASSIGN_OR_FAIL(a_won, exec().LeaderAttemptElect(params("a", kT0 + seconds(41))));
  EXPECT_TRUE(a_won);
}

TEST_P(DriverConformanceTest, LeaderIsSharedAcrossInstances) {
  CONF_ASSIGN_OR_FAIL(auto other, GetParam().open_again());
  CONF_ASSIGN_OR_FAIL(bool a_won, exec().LeaderAttemptElect({"a", kT0, seconds(10)}));
  EXPECT_TRUE(a_won);
  CONF_ASSIGN_OR_FAIL(bool b_won, other->executor().LeaderAttemptElect({"b", kT0, seconds(10)}));
  EXPECT_FALSE(b_won);
  CONF_ASSIGN_OR_FAIL(auto info, other->executor().LeaderGet());
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->leader_id, "a");
}

TEST_P(DriverConformanceTest, ClientHeartbeatUpsertsAndStaleClientsAreDeleted) {
  CONF_ASSERT_OK(exec().ClientHeartbeat({"c1", kT0, {"q1"}}));
  CONF_ASSERT_OK(exec().ClientHeartbeat({"c2", kT0 + seconds(5), {}}));
  CONF_ASSERT_OK(exec().ClientHeartbeat({"c3", kT0 + seconds(5), {"q1", "q2"}}));
  // A second heartbeat moves c1's heartbeat_at past the cutoff.
  CONF_ASSERT_OK(exec().ClientHeartbeat({"c1", kT0 + seconds(10), {"q2"}}));
  CONF_ASSIGN_OR_FAIL(int64_t none, exec().ClientDeleteStale(kT0 + seconds(5)));
  EXPECT_EQ(none, 0);  // heartbeat_at == before is not stale
  CONF_ASSIGN_OR_FAIL(int64_t n, exec().ClientDeleteStale(kT0 + seconds(6)));
  EXPECT_EQ(n, 2);
  CONF_ASSERT_OK(exec().ClientDelete("c1"));
  CONF_ASSERT_OK(exec().ClientDelete("never_seen"));
  CONF_ASSIGN_OR_FAIL(int64_t rest, exec().ClientDeleteStale(kT0 + hours(1)));
  EXPECT_EQ(rest, 0);
  // Deleted clients' jobs count as stuck: the client row is what marks a client alive.
  CONF_ASSIGN_OR_FAIL(JobRow job, InsertRunning(exec(), "q", kT0 + seconds(10), "c1"));
  JobGetStuckParams p;
  p.heartbeat_stale_before = kT0;
  p.attempted_before = kT0;
  CONF_ASSIGN_OR_FAIL(auto stuck, exec().JobGetStuck(p));
  EXPECT_EQ(Ids(stuck), std::vector<int64_t>{job.id});
  CONF_ASSERT_OK(exec().ClientHeartbeat({"c1", kT0 + seconds(11), {}}));
  CONF_ASSIGN_OR_FAIL(stuck, exec().JobGetStuck(p));
  EXPECT_TRUE(stuck.empty());
}

TEST_P(DriverConformanceTest, QueuePauseStopsFetchingThatQueueOnly) {
  CONF_ASSIGN_OR_FAIL(
      auto rows,
      InsertRows(exec(), Many({Job("k", "q1"), Job("k", "q1"), Job("k", "q2"), Job("k", "q2")})));
  CONF_ASSIGN_OR_FAIL(const bool paused_q1, exec().QueuePause("q1", kT0));
  EXPECT_TRUE(paused_q1);
  CONF_ASSIGN_OR_FAIL(auto none, exec().JobGetAvailable(Fetch("q1", 10)));
  EXPECT_TRUE(none.empty());
  CONF_ASSIGN_OR_FAIL(auto q2, exec().JobGetAvailable(Fetch("q2", 1)));
  EXPECT_EQ(q2.size(), 1u);
  // Pausing twice is fine, and changes nothing; so is pausing a queue that has no jobs.
  CONF_ASSIGN_OR_FAIL(const bool paused_again, exec().QueuePause("q1", kT0 + seconds(1)));
  EXPECT_FALSE(paused_again);
  CONF_ASSIGN_OR_FAIL(const bool paused_empty, exec().QueuePause("empty", kT0));
  EXPECT_TRUE(paused_empty);

  CONF_ASSIGN_OR_FAIL(auto list, exec().QueueList());
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].name, "empty");
  EXPECT_TRUE(list[0].paused_at.has_value());
  EXPECT_EQ(CountOf(list[0].counts, JobState::kAvailable), 0);
  EXPECT_EQ(list[1].name, "q1");
  ASSERT_TRUE(list[1].paused_at.has_value());
  EXPECT_EQ(CountOf(list[1].counts, JobState::kAvailable), 2);
  EXPECT_EQ(list[2].name, "q2");
  EXPECT_FALSE(list[2].paused_at.has_value());
  EXPECT_EQ(CountOf(list[2].counts, JobState::kAvailable), 1);
  EXPECT_EQ(CountOf(list[2].counts, JobState::kRunning), 1);

  // Another instance sees the pause.
  CONF_ASSIGN_OR_FAIL(auto other, GetParam().open_again());
  CONF_ASSIGN_OR_FAIL(auto other_none, other->executor().JobGetAvailable(Fetch("q1", 10)));
  EXPECT_TRUE(other_none.empty());

  CONF_ASSIGN_OR_FAIL(const bool resumed, exec().QueueResume("q1", kT0 + seconds(2)));
  EXPECT_TRUE(resumed);
  CONF_ASSIGN_OR_FAIL(const bool resumed_never, exec().QueueResume("never_paused", kT0));
  EXPECT_FALSE(resumed_never);
  CONF_ASSIGN_OR_FAIL(const bool resumed_again, exec().QueueResume("q1", kT0 + seconds(3)));
  EXPECT_FALSE(resumed_again);
  CONF_ASSIGN_OR_FAIL(auto q1, exec().JobGetAvailable(Fetch("q1", 10)));
  EXPECT_EQ(Ids(q1), (std::vector<int64_t>{rows[0].id, rows[1].id}));
  CONF_ASSIGN_OR_FAIL(list, exec().QueueList());
  std::map<std::string, std::optional<TimePoint>> paused;
  for (const auto& q : list) paused[q.name] = q.paused_at;
  EXPECT_FALSE(paused.at("q1").has_value());
  EXPECT_TRUE(paused.at("empty").has_value());
}

TEST_P(DriverConformanceTest, QueuePauseRecordsWhen) {
  CONF_ASSERT_OK(exec().QueuePause("q", kT0 + seconds(3)));
  CONF_ASSIGN_OR_FAIL(auto list, exec().QueueList());
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].name, "q");
  EXPECT_EQ(list[0].paused_at, kT0 + seconds(3));
  EXPECT_TRUE(list[0].counts.empty() || CountOf(list[0].counts, JobState::kAvailable) == 0);
}

TEST_P(DriverConformanceTest, QueuePausedAtReadsThePauseRecord) {
  CONF_ASSIGN_OR_FAIL(auto never, exec().QueuePausedAt("q"));
  EXPECT_FALSE(never.has_value());
  CONF_ASSERT_OK(exec().QueuePause("q", kT0 + seconds(3)));
  CONF_ASSERT_OK(exec().QueuePause("q", kT0 + seconds(5)));  // keeps the first time
  CONF_ASSIGN_OR_FAIL(auto paused, exec().QueuePausedAt("q"));
  EXPECT_EQ(paused, kT0 + seconds(3));
  CONF_ASSIGN_OR_FAIL(auto other, exec().QueuePausedAt("r"));
  EXPECT_FALSE(other.has_value());
  CONF_ASSERT_OK(exec().QueueResume("q", kT0 + seconds(6)));
  CONF_ASSIGN_OR_FAIL(auto resumed, exec().QueuePausedAt("q"));
  EXPECT_FALSE(resumed.has_value());
}

// A queue a running client works is listed before its first job, once, and keeps a pause.
TEST_P(DriverConformanceTest, QueueListIncludesTheQueuesClientsWork) {
  CONF_ASSERT_OK(exec().ClientHeartbeat({.id = "a", .now = kT0, .queues = {"mail", "paused"}}));
  CONF_ASSERT_OK(exec().ClientHeartbeat({.id = "b", .now = kT0, .queues = {"mail"}}));
  CONF_ASSERT_OK(exec().QueuePause("paused", kT0));
  CONF_ASSIGN_OR_FAIL(auto rows, InsertRows(exec(), Many({Job("k", "jobs_only")})));
  CONF_ASSIGN_OR_FAIL(auto list, exec().QueueList());
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].name, "jobs_only");
  EXPECT_EQ(CountOf(list[0].counts, JobState::kAvailable), 1);
  EXPECT_EQ(list[1].name, "mail");
  EXPECT_FALSE(list[1].paused_at.has_value());
  EXPECT_TRUE(list[1].counts.empty());
  EXPECT_EQ(list[2].name, "paused");
  EXPECT_EQ(list[2].paused_at, kT0);
  // QueueKnown answers for each what QueueList lists, without the counts.
  for (const char* name : {"jobs_only", "mail", "paused"}) {
    CONF_ASSIGN_OR_FAIL(const bool known, exec().QueueKnown(name));
    EXPECT_TRUE(known) << name;
  }
  CONF_ASSIGN_OR_FAIL(const bool unknown, exec().QueueKnown("mial"));
  EXPECT_FALSE(unknown);
}

TEST_P(DriverConformanceTest, PeriodicLastTickRoundTrips) {
  CONF_ASSIGN_OR_FAIL(auto never, exec().PeriodicGetLastTick("nightly"));
  EXPECT_FALSE(never.has_value());
  CONF_ASSERT_OK(exec().PeriodicSetLastTick("nightly", kT0, kT0 + seconds(1)));
  CONF_ASSIGN_OR_FAIL(auto tick, exec().PeriodicGetLastTick("nightly"));
  EXPECT_EQ(tick, kT0);
  CONF_ASSERT_OK(exec().PeriodicSetLastTick("nightly", kT0 + hours(24), kT0 + hours(24)));
  CONF_ASSIGN_OR_FAIL(tick, exec().PeriodicGetLastTick("nightly"));
  EXPECT_EQ(tick, kT0 + hours(24));
  CONF_ASSIGN_OR_FAIL(auto other, exec().PeriodicGetLastTick("hourly"));
  EXPECT_FALSE(other.has_value());
}

TEST_P(DriverConformanceTest, PeriodicLastTickFollowsTheTransaction) {
  CONF_ASSERT_OK(exec().PeriodicSetLastTick("p", kT0, kT0));
  {
    CONF_ASSIGN_OR_FAIL(auto tx, driver().Begin());
    CONF_ASSERT_OK(tx->PeriodicSetLastTick("p", kT0 + minutes(1), kT0 + minutes(1)));
    CONF_ASSERT_OK(tx->PeriodicSetLastTick("q", kT0 + minutes(1), kT0 + minutes(1)));
    CONF_ASSIGN_OR_FAIL(auto inside, tx->PeriodicGetLastTick("p"));
    EXPECT_EQ(inside, kT0 + minutes(1));
    CONF_ASSERT_OK(tx->Rollback());
  }
  CONF_ASSIGN_OR_FAIL(auto p, exec().PeriodicGetLastTick("p"));
  EXPECT_EQ(p, kT0);
  CONF_ASSIGN_OR_FAIL(auto q, exec().PeriodicGetLastTick("q"));
  EXPECT_FALSE(q.has_value());
  {
    CONF_ASSIGN_OR_FAIL(auto tx, driver().Begin());
    CONF_ASSERT_OK(tx->PeriodicSetLastTick("q", kT0 + minutes(2), kT0 + minutes(2)));
    CONF_ASSERT_OK(tx->Commit());
  }
  CONF_ASSIGN_OR_FAIL(q, exec().PeriodicGetLastTick("q"));
  EXPECT_EQ(q, kT0 + minutes(2));
}
