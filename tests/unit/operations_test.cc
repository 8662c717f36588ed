// Issue 3 behaviour through the public client on SQLite with a fake clock: unique jobs, periodic
// jobs, rescue of jobs whose client died, the cleaner, pause/resume, and the admin calls.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <stop_token>

#include "driver/driver.h"
#include "spool/spool.h"
#include "support/test_util.h"

namespace spool {
namespace {

using namespace std::chrono_literals;
using testing::EventLog;
using testing::Eventually;
using testing::Signal;
using testing::TempDir;
using testing::WaitForCancel;

struct TaskArgs {
  static constexpr std::string_view kKind = "task";
  std::string name;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(TaskArgs, name)
};

class TaskWorker final : public Worker<TaskArgs> {
 public:
  explicit TaskWorker(std::function<Outcome(JobContext&, const TaskArgs&)> fn)
      : fn_(std::move(fn)) {}
  Outcome Work(JobContext& ctx, const TaskArgs& a) override { return fn_(ctx, a); }
  // Jobs named "long..." are allowed two hours, "short..." ten seconds; the others have the
  // client's job_timeout.
  std::optional<Duration> Timeout(const JobRow& job) const override {
    if (job.args.find(R"("name":"long)") != std::string::npos) return std::chrono::hours(2);
    if (job.args.find(R"("name":"short)") != std::string::npos) return std::chrono::seconds(10);
    return std::nullopt;
  }

 private:
  std::function<Outcome(JobContext&, const TaskArgs&)> fn_;
};

class OperationsTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(MigrateUp(url_).ok()); }

  ClientOptions Options() {
    ClientOptions o;
    o.queues["default"] = {.max_workers = 4};
    o.clock = clock_;
    o.retry_policy = std::make_shared<testing::FixedRetry>(10s);
    o.schedule_interval = 2ms;
    o.poll_interval = 20ms;
    o.heartbeat_interval = 1s;
    o.client_stale_after = 30s;
    o.rescue_interval = 1s;
    o.clean_interval = 1s;
    o.logger = [](LogLevel l, std::string_view m) {
      if (getenv("SPOOL_TEST_LOG")) fprintf(stderr, "[%d] %.*s\n", int(l), int(m.size()), m.data());
    };
    return o;
  }

  std::unique_ptr<Client> Open(ClientOptions o) {
    Workers w;
    w.Add<TaskWorker>([this](JobContext& ctx, const TaskArgs& a) { return fn_(ctx, a); });
    auto c = Client::Open(url_, std::move(o), std::move(w));
    EXPECT_TRUE(c.has_value()) << c.error().ToString();
    return c ? std::move(*c) : nullptr;
  }

  // Another process's client that works no queue, as an admin tool's.
  std::unique_ptr<Client> OpenAdmin() {
    auto o = Options();
    o.queues.clear();
    return Open(o);
  }

  // A job named `name` (see TaskWorker::Timeout) that a worker of this live client claimed and
  // that then hung, ignoring its cancelled context, with a 10 s timeout (the client's
  // job_timeout, or its worker's): rescued once past it by the 60 s margin.
  void RescuedPastTimeout(ClientOptions o, const std::string& name) {
    o.retry_policy = std::make_shared<testing::FixedRetry>(Duration::zero());
    o.rescue_timeout_margin = 1min;
    o.client_id = "live-client";
    auto c = Open(o);
    auto r = c->Insert(TaskArgs{name});
    ASSERT_TRUE(r.has_value());
    ASSERT_EQ(ClaimAs("live-client", 1), 1u);
    EventLog log(*c);
    ASSERT_TRUE(c->Start().ok());
    ASSERT_TRUE(Eventually([&] { return c->IsLeader(); }));
    EXPECT_EQ(c->JobGet(r->job.id)->state, JobState::kRunning) << "within timeout + margin";
    clock_->Advance(71s);
    ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobCompleted));
    JobRow j = *c->JobGet(r->job.id);
    ASSERT_EQ(j.errors.size(), 1u);
    EXPECT_NE(j.errors[0].error.find("ran past its 10s timeout by more than 60s"),
              std::string::npos)
        << j.errors[0].error;
    ASSERT_TRUE(c->Stop(10s).ok());
  }

  // Claims up to `max` jobs of the default queue as `client_id` would, through a driver of its
  // own, and returns how many it got (0 on error).
  // Starts `c` beside job `id`, left running by a process that is gone: the job is rescued once,
  // with `cause` in its error, and completes on its second attempt.
  void ExpectRescuedThenCompleted(Client& c, int64_t id, const std::string& cause) {
    EventLog log(c);
    ASSERT_TRUE(c.Start().ok());
    ASSERT_TRUE(log.WaitForJob(id, Event::Kind::kJobCompleted));
    JobRow j = *c.JobGet(id);
    ASSERT_EQ(j.errors.size(), 1u);
    EXPECT_NE(j.errors[0].error.find(cause), std::string::npos) << j.errors[0].error;
    EXPECT_EQ(j.attempt, 2);
    ASSERT_TRUE(c.Stop(10s).ok());
  }

  // The heartbeat row a process under `client_id` left when it ended, started an hour ago.
  void HeartbeatOfAnEndedProcess(const std::string& client_id) {
    auto d = internal::Driver::Open(url_, {});
    ASSERT_TRUE(d.has_value());
    ASSERT_TRUE((*d)->executor()
                    .ClientHeartbeat({.id = client_id,
                                      .now = clock_->Now(),
                                      .queues = {"default"},
                                      .started_at = clock_->Now() - 1h})
                    .has_value());
  }

  size_t ClaimAs(const std::string& client_id, int max) {
    auto d = internal::Driver::Open(url_, {});
    EXPECT_TRUE(d.has_value());
    if (!d) return 0;
    auto got = (*d)->executor().JobGetAvailable(
        {.queue = "default", .max = max, .client_id = client_id, .now = clock_->Now()});
    EXPECT_TRUE(got.has_value());
    return got ? got->size() : 0;
  }

  TempDir dir_;
  std::string url_ = dir_.SqliteUrl();
  std::shared_ptr<FakeClock> clock_ = std::make_shared<FakeClock>(
      TimePoint(std::chrono::seconds(1'800'000'000)));  // 2027-01-15T08:00:00Z, a whole minute
  std::function<Outcome(JobContext&, const TaskArgs&)> fn_ = [](JobContext&, const TaskArgs&) {
    return Outcome::Done();
  };
};

TEST_F(OperationsTest, UniqueInsertReturnsTheExistingJobWhileItIsNotFinal) {
  auto c = Open(Options());
  InsertOptions o;
  o.unique = UniqueOptions{.by_args = true};
  auto a = c->Insert(TaskArgs{"x"}, o);
  auto b = c->Insert(TaskArgs{"x"}, o);
  auto other = c->Insert(TaskArgs{"y"}, o);
  ASSERT_TRUE(a && b && other);
  EXPECT_FALSE(a->duplicate);
  EXPECT_TRUE(b->duplicate);
  EXPECT_EQ(a->job.id, b->job.id);
  EXPECT_FALSE(other->duplicate);
  EXPECT_NE(other->job.id, a->job.id);

  EventLog log(*c);
  ASSERT_TRUE(c->Start().ok());
  ASSERT_TRUE(log.WaitForJob(a->job.id, Event::Kind::kJobCompleted));
  auto again = c->Insert(TaskArgs{"x"}, o);
  ASSERT_TRUE(again.has_value());
  EXPECT_FALSE(again->duplicate) << "completed is not in the default unique states";
  ASSERT_TRUE(c->Stop(10s).ok());
}

TEST_F(OperationsTest, UniqueByPeriodAllowsOnePerPeriod) {
  auto c = Open(Options());
  InsertOptions o;
  o.unique = UniqueOptions{.by_period = 1h};
  ASSERT_FALSE(c->Insert(TaskArgs{"a"}, o)->duplicate);
  EXPECT_TRUE(c->Insert(TaskArgs{"b"}, o)->duplicate) << "args are not part of the key";
  clock_->Advance(1h);
  EXPECT_FALSE(c->Insert(TaskArgs{"c"}, o)->duplicate);
}

TEST_F(OperationsTest, PeriodicJobEnqueuesEachTickOnceAndSurvivesARestart) {
  auto o = Options();
  auto p = MakePeriodicJob("every_minute", "* * * * *", TaskArgs{"tick"});
  p.run_on_start = true;  // the first run also tells the test the schedule is in place
  o.periodic_jobs.push_back(p);
  std::atomic<int> runs{0};
  fn_ = [&](JobContext&, const TaskArgs&) {
    runs++;
    return Outcome::Done();
  };
  {
    auto c = Open(o);
    EventLog log(*c);
    ASSERT_TRUE(c->Start().ok());
    ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, 1));
    EXPECT_TRUE(c->IsLeader());
    for (size_t i = 2; i <= 4; ++i) {
      clock_->Advance(60s);
      ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, i)) << "tick " << i;
    }
    ASSERT_TRUE(c->Stop(10s).ok());
  }
  EXPECT_EQ(runs.load(), 4);
  // Down for 10 minutes: the missed ticks run once at start, not ten times, and run_on_start
  // does not fire again for a schedule already seen.
  clock_->Advance(10min);
  {
    auto c = Open(o);
    EventLog log(*c);
    ASSERT_TRUE(c->Start().ok());
    ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, 1));
    clock_->Advance(60s);
    ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, 2));
    ASSERT_TRUE(c->Stop(10s).ok());
  }
  EXPECT_EQ(runs.load(), 6);
  auto c = Open(Options());
  EXPECT_EQ((*c->JobCountByState())[JobState::kCompleted], 6);
}

TEST_F(OperationsTest, PeriodicJobCanSkipMissedTicks) {
  auto o = Options();
  auto p = MakePeriodicJob("hourly", "@hourly", TaskArgs{"h"});
  p.missed = PeriodicJob::Missed::kSkip;
  p.run_on_start = true;
  o.periodic_jobs.push_back(p);
  {
    auto c = Open(o);
    EventLog log(*c);
    ASSERT_TRUE(c->Start().ok());
    ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, 1));
    clock_->Advance(1h);
    ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, 2));
    ASSERT_TRUE(c->Stop(10s).ok());
  }
  clock_->Advance(5h + 30min);  // five ticks missed
  auto c = Open(o);
  EventLog log(*c);
  ASSERT_TRUE(c->Start().ok());
  // The skipped ticks are recorded as done once this client leads; then the next tick runs.
  ASSERT_TRUE(Eventually([&] { return c->IsLeader(); }));
  clock_->Advance(30min);
  ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, 1));
  ASSERT_TRUE(c->Stop(10s).ok());
  EXPECT_EQ((*c->JobCountByState())[JobState::kCompleted], 3);
}

// kSkip drops the ticks that were missed, not a tick that is due now: restarted 10 s after a tick
// with the one before it missed, that tick runs.
TEST_F(OperationsTest, PeriodicSkipStillRunsTheTickThatIsDueNow) {
  auto o = Options();
  auto p = MakePeriodicJob("hourly", "@hourly", TaskArgs{"h"});
  p.missed = PeriodicJob::Missed::kSkip;
  o.periodic_jobs.push_back(p);
  // Start just after an hour: the first tick seen is the next one.
  clock_->Advance(std::chrono::ceil<std::chrono::hours>(clock_->Now().time_since_epoch()) -
                  clock_->Now().time_since_epoch() + 10s);
  {
    auto c = Open(o);
    EventLog log(*c);
    ASSERT_TRUE(c->Start().ok());
    ASSERT_TRUE(Eventually([&] { return c->IsLeader(); }));
    clock_->Advance(1h);
    ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, 1));
    ASSERT_TRUE(c->Stop(10s).ok());
  }
  clock_->Advance(2h);  // the next tick missed; the one after it due 10 s ago
  auto c = Open(o);
  EventLog log(*c);
  ASSERT_TRUE(c->Start().ok());
  ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, 1)) << "the tick due now was skipped";
  ASSERT_TRUE(c->Stop(10s).ok());
  EXPECT_EQ((*c->JobCountByState())[JobState::kCompleted], 2);
}

// A periodic job's unique options apply to its ticks: with by_args, a tick while the last run is
// unfinished is skipped instead of starting a second run beside it.
TEST_F(OperationsTest, APeriodicJobsUniqueOptionsKeepRunsFromOverlapping) {
  auto o = Options();
  InsertOptions unique;
  unique.unique = UniqueOptions{.by_args = true};
  auto p = MakePeriodicJob("every_minute", "* * * * *", TaskArgs{"tick"}, unique);
  p.run_on_start = true;
  o.periodic_jobs.push_back(p);
  Signal started;
  Signal release;
  std::atomic<int> runs{0};
  fn_ = [&](JobContext&, const TaskArgs&) {
    if (runs.fetch_add(1) == 0) {
      started.Notify();
      EXPECT_TRUE(release.WaitFor());
    }
    return Outcome::Done();
  };
  std::mutex mu;
  int skipped = 0;
  o.logger = [&](LogLevel, std::string_view line) {
    std::lock_guard lock(mu);
    if (line.find("skipped: job") != std::string_view::npos) ++skipped;
  };
  auto c = Open(o);
  EventLog log(*c);
  ASSERT_TRUE(c->Start().ok());
  ASSERT_TRUE(started.WaitFor());
  for (int i = 1; i <= 3; ++i) {
    clock_->Advance(60s);
    ASSERT_TRUE(Eventually([&] {
      std::lock_guard lock(mu);
      return skipped == i;
    })) << "tick "
        << i;
    auto counts = c->JobCountByState();
    ASSERT_TRUE(counts.has_value());
    int64_t jobs = 0;
    for (const auto& [state, n] : *counts) jobs += n;
    EXPECT_EQ(jobs, 1);
  }
  release.Notify();
  ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, 1));
  clock_->Advance(60s);  // unfinished no longer: the next tick runs
  ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, 2));
  ASSERT_TRUE(c->Stop(10s).ok());
  EXPECT_EQ(runs.load(), 2);
  EXPECT_EQ((*c->JobCountByState())[JobState::kCompleted], 2);
}

TEST_F(OperationsTest, InvalidPeriodicJobsAreRefusedAtOpen) {
  auto o = Options();
  o.periodic_jobs.push_back(MakePeriodicJob("bad", "61 * * * *", TaskArgs{}));
  auto c = Client::Open(url_, o);
  ASSERT_FALSE(c.has_value());
  EXPECT_NE(c.error().message().find("minute field value 61"), std::string::npos)
      << c.error().message();
  o.periodic_jobs = {MakePeriodicJob("dup", "@daily", TaskArgs{}),
                     MakePeriodicJob("dup", "@hourly", TaskArgs{})};
  c = Client::Open(url_, o);
  ASSERT_FALSE(c.has_value());
  EXPECT_NE(c.error().message().find("\"dup\" is used twice"), std::string::npos);
  InsertOptions pending;
  pending.pending = true;
  o.periodic_jobs = {MakePeriodicJob("held", "@daily", TaskArgs{}, pending)};
  c = Client::Open(url_, o);
  ASSERT_FALSE(c.has_value());
  EXPECT_NE(c.error().message().find("options.pending cannot be used"), std::string::npos)
      << c.error().message();
}

TEST_F(OperationsTest, JobsOfADeadClientAreRescuedAndComplete) {
  auto o = Options();
  o.retry_policy = std::make_shared<testing::FixedRetry>(Duration::zero());
  auto c = Open(o);
  auto r = c->Insert(TaskArgs{"orphan"});
  ASSERT_TRUE(r.has_value());
  // Another "process" claims the job and dies without a trace (no heartbeat row).
  ASSERT_EQ(ClaimAs("dead-client", 1), 1u);
  ExpectRescuedThenCompleted(*c, r->job.id, "client dead-client stopped responding");
}

// A process with a fixed client_id dies holding a job and is restarted at once, under the same
// id: its row stays fresh, but the job was started before the new process, so it is rescued
// (before, only rescue_after, an hour, brought it back).
TEST_F(OperationsTest, JobsOfAProcessRestartedUnderTheSameIdAreRescued) {
  auto o = Options();
  o.client_id = "worker-host-a";
  o.retry_policy = std::make_shared<testing::FixedRetry>(Duration::zero());
  auto c = Open(o);
  auto r = c->Insert(TaskArgs{"orphan"});
  ASSERT_TRUE(r.has_value());
  // The previous process under this id claimed it, heartbeated, and died.
  ASSERT_EQ(ClaimAs("worker-host-a", 1), 1u);
  ASSERT_NO_FATAL_FAILURE(HeartbeatOfAnEndedProcess("worker-host-a"));
  clock_->Advance(1s);
  ExpectRescuedThenCompleted(*c, r->job.id, "client worker-host-a was restarted");
}

// spool's tables taken down a version under a running client (migration down --force): on
// SQLite its statements then match nothing, so it looked idle. Its heartbeat says why.
// Two running processes under one fixed client_id: the rescuer cannot tell them apart, so each
// says so, as an error, once the other's heartbeat has replaced its own. A row left by an ended
// process under the id is not taken for one.
TEST_F(OperationsTest, TwoRunningClientsWithOneIdAreLoggedAsErrors) {
  struct Line {
    char who;
    LogLevel level;
    std::string text;
  };
  std::mutex mu;
  std::vector<Line> lines;
  auto logged = [&](char who, LogLevel level, const std::string& part) {
    std::lock_guard lock(mu);
    return std::any_of(lines.begin(), lines.end(), [&](const Line& l) {
      return l.who == who && l.level == level && l.text.find(part) != std::string::npos;
    });
  };
  auto options = [&](char who) {
    auto o = Options();
    o.client_id = "twin";
    o.logger = [&mu, &lines, who](LogLevel level, std::string_view text) {
      std::lock_guard lock(mu);
      lines.push_back({who, level, std::string(text)});
    };
    return o;
  };
  ASSERT_NO_FATAL_FAILURE(HeartbeatOfAnEndedProcess("twin"));
  const std::string shared = "another running process uses client_id 'twin'";
  auto a = Open(options('a'));
  ASSERT_TRUE(a->Start().ok());
  clock_->Advance(1s);  // b starts a second after a
  auto b = Open(options('b'));
  ASSERT_TRUE(b->Start().ok());
  ASSERT_TRUE(Eventually([&] {
    clock_->Advance(1s);
    return logged('a', LogLevel::kError, shared) && logged('b', LogLevel::kError, shared);
  }));
  EXPECT_FALSE(logged('a', LogLevel::kError, "it started at 2027-01-15T07:00:00"))
      << "the ended process's row is not a running one";
  ASSERT_TRUE(b->Stop(10s).ok());
  // b's stop deleted the row: a's next heartbeat writes its own again.
  ASSERT_TRUE(Eventually([&] {
    clock_->Advance(1s);
    return logged('a', LogLevel::kInfo, "client id check works again");
  }));
  EXPECT_TRUE(a->Stop(10s).ok());
}

TEST_F(OperationsTest, ASchemaMovedUnderARunningClientIsLogged) {
  auto o = Options();
  std::mutex mu;
  std::vector<std::string> lines;
  o.logger = [&](LogLevel, std::string_view line) {
    std::lock_guard lock(mu);
    lines.emplace_back(line);
  };
  auto c = Open(o);
  ASSERT_TRUE(c->Start().ok());
  int latest = 0;
  {
    auto d = internal::Driver::Open(url_, {});
    ASSERT_TRUE(d.has_value());
    latest = internal::LatestVersion(**d);
    ASSERT_TRUE((*d)->MigrateDown(latest - 1).ok());
  }
  const std::string want = fmt::format(
      "spool's tables are at version {} but this client needs version {}: run "
      "`spool migration up`",
      latest - 1, latest);
  ASSERT_TRUE(Eventually([&] {
    clock_->Advance(1s);  // the next heartbeat
    std::lock_guard lock(mu);
    return std::any_of(lines.begin(), lines.end(),
                       [&](const std::string& l) { return l.find(want) != std::string::npos; });
  }));
  EXPECT_TRUE(c->Stop(10s).ok());
}

// An admin cancelled the job while the process running it was dead: the rescuer ends it
// cancelled. Retrying it would run it again (charge the card) although nobody wants it run.
TEST_F(OperationsTest, JobOfADeadClientThatAnAdminCancelledIsNotRunAgain) {
  auto o = Options();
  o.retry_policy = std::make_shared<testing::FixedRetry>(Duration::zero());
  std::atomic<int> runs{0};
  fn_ = [&](JobContext&, const TaskArgs&) {
    ++runs;
    return Outcome::Done();
  };
  auto c = Open(o);
  auto r = c->Insert(TaskArgs{"charge the card"});
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(ClaimAs("dead-client", 1), 1u);
  auto cancel = c->JobCancel(r->job.id);
  ASSERT_TRUE(cancel.has_value());
  EXPECT_EQ(cancel->state, JobState::kRunning) << "asked to stop; its worker would notice";
  ASSERT_TRUE(c->Start().ok());
  ASSERT_TRUE(Eventually([&] {
    auto j = c->JobGet(r->job.id);
    return j.has_value() && j->state == JobState::kCancelled;
  }));
  ASSERT_TRUE(c->Stop(10s).ok());
  EXPECT_EQ(runs, 0);
  JobRow j = *c->JobGet(r->job.id);
  EXPECT_EQ(j.attempt, 1);
  ASSERT_EQ(j.errors.size(), 1u);
  EXPECT_NE(j.errors[0].error.find("an admin had asked to cancel it, so it is cancelled"),
            std::string::npos)
      << j.errors[0].error;
}

// After an outage every client's heartbeat is old, live or not. A leader that could not reach
// the database itself must give the others client_stale_after to heartbeat again before it
// rescues their jobs: rescuing at once ran every job of the cluster a second time.
TEST_F(OperationsTest, AfterLosingTheDatabaseTheLeaderWaitsBeforeJudgingHeartbeats) {
  auto o = Options();
  o.retry_policy = std::make_shared<testing::FixedRetry>(Duration::zero());
  o.sqlite.busy_timeout = 5ms;  // the heartbeat fails instead of waiting out the lock
  std::atomic<int> heartbeat_failures{0};
  o.logger = [&](LogLevel, std::string_view m) {
    if (m.starts_with("heartbeat failed")) ++heartbeat_failures;
  };
  auto c = Open(o);
  auto r = c->Insert(TaskArgs{"held by a live client"});
  ASSERT_TRUE(r.has_value());
  auto d = internal::Driver::Open(url_, {});
  ASSERT_TRUE(d.has_value());
  auto& other = (*d)->executor();
  ASSERT_TRUE(
      other.ClientHeartbeat({.id = "other", .now = clock_->Now(), .queues = {}}).has_value());
  auto got = other.JobGetAvailable(
      {.queue = "default", .max = 1, .client_id = "other", .now = clock_->Now()});
  ASSERT_TRUE(got.has_value() && got->size() == 1u);
  EventLog log(*c);
  ASSERT_TRUE(c->Start().ok());
  ASSERT_TRUE(Eventually([&] { return c->IsLeader(); }));

  // The database is away for 40s (a write lock nobody else can get), for every client.
  sqlite3* lock = nullptr;
  ASSERT_EQ(sqlite3_open((dir_.path() / "test.db").c_str(), &lock), SQLITE_OK);
  sqlite3_busy_timeout(lock, 30'000);
  ASSERT_EQ(sqlite3_exec(lock, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  clock_->Advance(40s);
  ASSERT_TRUE(Eventually([&] { return heartbeat_failures > 0; }));
  ASSERT_EQ(sqlite3_exec(lock, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(lock);
  // This client's heartbeat at `at` is written first in a round of its maintenance loop: seeing
  // it means the rounds before, rescues included, are done.
  auto heartbeat_seen = [&](TimePoint at) {
    sqlite3* db = nullptr;
    sqlite3_stmt* stmt = nullptr;
    int64_t last = 0;
    if (sqlite3_open((dir_.path() / "test.db").c_str(), &db) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT max(heartbeat_at) FROM spool_client WHERE id <> 'other'", -1,
                           &stmt, nullptr) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW) {
      last = sqlite3_column_int64(stmt, 0);
    }
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return last >=
           std::chrono::duration_cast<std::chrono::microseconds>(at.time_since_epoch()).count();
  };
  // The other client is back, but its last heartbeat is 40s old until it sends the next. Rounds
  // a second apart until this client leads again, then three more: each a rescue.
  int rounds_as_leader = 0;
  for (int i = 0; i < 20 && rounds_as_leader < 3; ++i) {
    clock_->Advance(1s);
    const TimePoint at = clock_->Now();
    ASSERT_TRUE(Eventually([&] { return heartbeat_seen(at); }));
    if (c->IsLeader()) ++rounds_as_leader;
  }
  ASSERT_EQ(rounds_as_leader, 3) << "not leading again within 20s of the outage";
  auto held = c->JobGet(r->job.id);
  ASSERT_TRUE(held.has_value());
  EXPECT_EQ(held->state, JobState::kRunning) << "rescued from a live client after an outage";
  EXPECT_EQ(held->attempt, 1);

  // The other client never comes back: once this one has reached the database for
  // client_stale_after, its job is rescued.
  clock_->Advance(30s);
  ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobCompleted));
  JobRow j = *c->JobGet(r->job.id);
  ASSERT_EQ(j.errors.size(), 1u);
  EXPECT_NE(j.errors[0].error.find("client other stopped responding"), std::string::npos)
      << j.errors[0].error;
  ASSERT_TRUE(c->Stop(10s).ok());
}

// A node that dies holding many jobs gets one warning per cause, after the rescue is written, not
// one line per job; each job's own error still says why it was rescued.
TEST_F(OperationsTest, RescuingManyJobsLogsOneLineForThem) {
  auto o = Options();
  o.retry_policy = std::make_shared<testing::FixedRetry>(Duration::zero());
  std::mutex mu;
  std::vector<std::string> warnings;
  o.logger = [&](LogLevel level, std::string_view m) {
    if (level < LogLevel::kWarn) return;
    std::lock_guard lock(mu);
    warnings.emplace_back(m);
  };
  constexpr int kHeld = 25;
  auto c = Open(o);
  std::vector<InsertParams> batch(
      kHeld, InsertParams{std::string(TaskArgs::kKind), R"({"name":"x"})", {}});
  ASSERT_TRUE(c->InsertMany(std::move(batch)).has_value());
  std::vector<int64_t> held;
  {
    auto d = internal::Driver::Open(url_, {});
    ASSERT_TRUE(d.has_value());
    auto got = (*d)->executor().JobGetAvailable(
        {.queue = "default", .max = kHeld, .client_id = "dead-client", .now = clock_->Now()});
    ASSERT_TRUE(got.has_value());
    ASSERT_EQ(got->size(), size_t{kHeld});
    for (const auto& j : *got) held.push_back(j.id);
  }
  EventLog log(*c);
  ASSERT_TRUE(c->Start().ok());
  ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, kHeld));
  ASSERT_TRUE(c->Stop(10s).ok());

  std::lock_guard lock(mu);
  std::vector<std::string> rescue_lines;
  for (const auto& w : warnings) {
    if (w.find("rescued") != std::string::npos) rescue_lines.push_back(w);
  }
  ASSERT_EQ(rescue_lines.size(), 1u) << ::testing::PrintToString(rescue_lines);
  const std::string& line = rescue_lines[0];
  EXPECT_EQ(line.rfind("rescued 25 jobs (ids ", 0), 0u) << line;
  EXPECT_NE(line.find(" and 15 more): client dead-client stopped responding (no heartbeat for "
                      "30s)"),
            std::string::npos)
      << line;
  JobRow j = *c->JobGet(held.back());
  ASSERT_EQ(j.errors.size(), 1u);
  EXPECT_EQ(j.errors[0].error,
            "client dead-client stopped responding (no heartbeat for 30s); job rescued");
}

// A job whose run ends after the rescuer read it and before the rescue is written is left as its
// run ended, and the warning counts only the jobs rescued.
TEST_F(OperationsTest, AJobThatFinishesBeforeItsRescueIsWrittenIsNotCountedAsRescued) {
  auto o = Options();
  o.retry_policy = std::make_shared<testing::FixedRetry>(Duration::zero());
  constexpr int kHeld = 3;
  std::mutex mu;
  std::vector<std::string> warnings;
  std::vector<int64_t> held;                 // filled before the client starts
  std::unique_ptr<internal::Driver> holder;  // the stuck client's connection, still able to write
  Status finish_late = Status::Internal("the rescuer never got to job " + std::to_string(kHeld));
  o.logger = [&](LogLevel level, std::string_view m) {
    std::lock_guard lock(mu);
    if (level >= LogLevel::kWarn) warnings.emplace_back(m);
    // The rescuer has read the jobs and not yet written: the first one's run ends now.
    if (!held.empty() && m.starts_with(fmt::format("rescuing job {} ", held[0]))) {
      internal::JobSetStateIfRunningManyParams done;
      done.jobs.push_back(
          {.id = held[0], .attempt = 1, .state = JobState::kCompleted, .at = clock_->Now()});
      auto r = holder->executor().JobSetStateIfRunningMany(done);
      finish_late = r ? Status::Ok() : r.error();
    }
  };
  auto c = Open(o);
  std::vector<InsertParams> batch(
      kHeld, InsertParams{std::string(TaskArgs::kKind), R"({"name":"x"})", {}});
  ASSERT_TRUE(c->InsertMany(std::move(batch)).has_value());
  {
    auto d = internal::Driver::Open(url_, {});
    ASSERT_TRUE(d.has_value());
    holder = std::move(*d);
    auto got = holder->executor().JobGetAvailable(
        {.queue = "default", .max = kHeld, .client_id = "dead-client", .now = clock_->Now()});
    ASSERT_TRUE(got.has_value());
    ASSERT_EQ(got->size(), size_t{kHeld});
    std::lock_guard lock(mu);
    for (const auto& j : *got) held.push_back(j.id);
  }
  EventLog log(*c);
  ASSERT_TRUE(c->Start().ok());
  ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, kHeld - 1));
  ASSERT_TRUE(c->Stop(10s).ok());

  std::lock_guard lock(mu);
  ASSERT_TRUE(finish_late.ok()) << finish_late.ToString();
  std::vector<std::string> rescue_lines;
  for (const auto& w : warnings) {
    if (w.find("rescued") != std::string::npos) rescue_lines.push_back(w);
  }
  ASSERT_EQ(rescue_lines.size(), 1u) << ::testing::PrintToString(rescue_lines);
  EXPECT_EQ(
      rescue_lines[0].rfind(fmt::format("rescued 2 jobs (ids {}, {}): ", held[1], held[2]), 0), 0u)
      << rescue_lines[0];
  JobRow first = *c->JobGet(held[0]);
  EXPECT_EQ(first.state, JobState::kCompleted);
  EXPECT_TRUE(first.errors.empty()) << first.errors.size();
  EXPECT_EQ(first.attempt, 1);
}

// A leader whose renewal is stuck (another process holds the database's write lock) stops acting
// as leader when its lease runs out: from then on another client may be elected, and two
// leaders would both rescue, clean and enqueue periodic jobs.
TEST_F(OperationsTest, LeaderWhoseRenewalIsStuckStopsLeadingWhenItsLeaseRunsOut) {
  auto o = Options();
  o.leader_ttl = 15s;
  o.sqlite.busy_timeout = 60s;  // the renewal waits on the lock instead of failing
  auto lines = std::make_shared<std::vector<std::string>>();
  auto mu = std::make_shared<std::mutex>();
  o.logger = [lines, mu](LogLevel, std::string_view message) {
    std::lock_guard lock(*mu);
    if (message.find("leader") != std::string_view::npos) lines->emplace_back(message);
  };
  auto c = Open(o);
  ASSERT_TRUE(c->Start().ok());
  ASSERT_TRUE(Eventually([&] { return c->IsLeader(); }));

  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open((dir_.path() / "test.db").c_str(), &other), SQLITE_OK);
  sqlite3_busy_timeout(other, 30'000);  // the client's own loops write every few ms
  ASSERT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  clock_->Advance(6s);  // renewal due (every ttl/3); it now waits on the lock
  EXPECT_TRUE(c->IsLeader()) << "the lease has 9s left";
  clock_->Advance(10s);
  EXPECT_FALSE(c->IsLeader()) << "still leading 1s after its lease ran out";

  ASSERT_EQ(sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(other);
  EXPECT_TRUE(Eventually([&] { return c->IsLeader(); }))
      << "not re-elected once the lock was freed";
  ASSERT_TRUE(c->Stop(10s).ok());
  // Its log says it lost leadership before it says it leads again: without that line, two nodes'
  // logs read as two leaders.
  std::lock_guard lock(*mu);
  ASSERT_GE(lines->size(), 3u);
  EXPECT_EQ((*lines)[0], "this client is now the leader");
  EXPECT_EQ((*lines)[1].rfind("this client lost leadership: its lease ran out", 0), 0u)
      << (*lines)[1];
  EXPECT_EQ((*lines)[2], "this client is now the leader");
}

TEST_F(OperationsTest, JobRunningPastItsTimeoutOnALiveClientIsRescued) {
  auto o = Options();
  o.job_timeout = 10s;
  RescuedPastTimeout(std::move(o), "hung");
}

// The worker's own timeout counts as much as the client's: a job its worker allows 10 s (and no
// job_timeout) is rescued once past that by the margin, not after rescue_after (it waited 1 h).
TEST_F(OperationsTest, JobRunningPastItsWorkersTimeoutOnALiveClientIsRescued) {
  RescuedPastTimeout(Options(), "short hung");
}

// rescue_after bounds jobs without a timeout only: one its worker allows two hours is left to run
// on a live client past rescue_after, and rescued once past its own timeout and the margin.
TEST_F(OperationsTest, RescueAfterLeavesAJobWithALongerTimeoutRunning) {
  auto o = Options();
  o.retry_policy = std::make_shared<testing::FixedRetry>(Duration::zero());
  o.rescue_after = 1h;
  o.rescue_timeout_margin = 1min;
  o.client_id = "live-client";
  auto c = Open(o);
  auto plain = c->Insert(TaskArgs{"plain"});
  auto long_job = c->Insert(TaskArgs{"long report"});
  ASSERT_TRUE(plain.has_value() && long_job.has_value());
  // Claimed under this (live, heartbeating) client's id by workers that then hung.
  ASSERT_EQ(ClaimAs("live-client", 2), 2u);
  EventLog log(*c);
  ASSERT_TRUE(c->Start().ok());
  ASSERT_TRUE(Eventually([&] { return c->IsLeader(); }));
  clock_->Advance(61min);
  // The rescue pass that took the plain job back (it then ran and completed here) saw the long
  // one too, and left it running.
  ASSERT_TRUE(log.WaitForJob(plain->job.id, Event::Kind::kJobCompleted));
  JobRow p = *c->JobGet(plain->job.id);
  ASSERT_EQ(p.errors.size(), 1u);
  EXPECT_NE(p.errors[0].error.find("running for more than 3600s"), std::string::npos)
      << p.errors[0].error;
  JobRow l = *c->JobGet(long_job->job.id);
  EXPECT_EQ(l.state, JobState::kRunning);
  EXPECT_TRUE(l.errors.empty());
  clock_->Advance(61min);  // 2 h 2 min after the claim: past timeout + margin
  ASSERT_TRUE(log.WaitForJob(long_job->job.id, Event::Kind::kJobCompleted));
  l = *c->JobGet(long_job->job.id);
  ASSERT_EQ(l.errors.size(), 1u);
  EXPECT_NE(l.errors[0].error.find("ran past its 7200s timeout by more than 60s"),
            std::string::npos)
      << l.errors[0].error;
  ASSERT_TRUE(c->Stop(10s).ok());
}

TEST_F(OperationsTest, CleanerDeletesFinalizedJobsAfterTheirRetention) {
  fn_ = [](JobContext&, const TaskArgs& a) {
    return a.name == "bad" ? Outcome::Fail("no") : Outcome::Done();
  };
  auto c = Open(Options());
  EventLog log(*c);
  ASSERT_TRUE(c->Start().ok());
  auto ok = c->Insert(TaskArgs{"ok"});
  auto bad = c->Insert(TaskArgs{"bad"}, {.max_attempts = 1});
  ASSERT_TRUE(log.WaitForJob(ok->job.id, Event::Kind::kJobCompleted));
  ASSERT_TRUE(log.WaitForJob(bad->job.id, Event::Kind::kJobDiscarded));
  clock_->Advance(25h);
  ASSERT_TRUE(Eventually([&] { return c->JobGet(ok->job.id).error().IsNotFound(); }));
  EXPECT_TRUE(c->JobGet(bad->job.id).has_value()) << "discarded jobs are kept 7 days";
  clock_->Advance(24h * 7);
  ASSERT_TRUE(Eventually([&] { return c->JobGet(bad->job.id).error().IsNotFound(); }));
  ASSERT_TRUE(c->Stop(10s).ok());
}

// A backlog larger than one round (10 batches of 10,000) is worked off round after round, not one
// round per clean_interval: at one a round the cleaner deleted at most 3,333 jobs a second.
TEST_F(OperationsTest, CleanerWorksOffABacklogWithoutWaitingForItsInterval) {
  auto c = Open(Options());
  std::vector<InsertParams> old(100'001, InsertParams{"task", R"({"name":"old"})", {}});
  for (auto& p : old) p.options.queue = "elsewhere";
  auto n = c->InsertManyFast(std::move(old));
  ASSERT_TRUE(n.has_value()) << n.error().ToString();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir_.path() / "test.db").c_str(), &db), SQLITE_OK);
  const int64_t two_days_ago =
      (clock_->Now() - 48h).time_since_epoch().count();  // microseconds, as stored
  const std::string finish = fmt::format("UPDATE spool_job SET state = {}, finalized_at = {}",
                                         static_cast<int>(JobState::kCompleted), two_days_ago);
  ASSERT_EQ(sqlite3_exec(db, finish.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  const auto left = [&] {
    auto counts = c->JobCountByState();
    return counts && !counts->empty() ? counts->begin()->second : int64_t{0};
  };
  ASSERT_TRUE(c->Start().ok());
  ASSERT_TRUE(Eventually([&] { return left() == 1; }));  // one round: 100,000
  clock_->Advance(150ms);  // past the backlog's pause, far inside clean_interval (1 s)
  ASSERT_TRUE(Eventually([&] { return left() == 0; }));
  ASSERT_TRUE(c->Stop(10s).ok());
}

TEST_F(OperationsTest, PausedQueueRunsNothingUntilResumed) {
  auto o = Options();
  o.queues["other"] = {.max_workers = 1};
  auto c = Open(o);
  EventLog log(*c);
  ASSERT_TRUE(c->Start().ok());
  ASSERT_TRUE(c->QueuePause("default").ok());
  ASSERT_TRUE(c->QueuePause("default").ok());  // already paused: no second event
  auto held = c->Insert(TaskArgs{"held"});
  auto other = c->Insert(TaskArgs{"other"}, {.queue = "other"});
  ASSERT_TRUE(log.WaitForJob(other->job.id, Event::Kind::kJobCompleted));
  EXPECT_EQ(c->JobGet(held->job.id)->state, JobState::kAvailable);
  auto queues = c->QueueList();
  ASSERT_TRUE(queues.has_value());
  bool saw_paused = false;
  for (const auto& q : *queues) {
    if (q.name == "default") saw_paused = q.paused_at.has_value();
  }
  EXPECT_TRUE(saw_paused);
  ASSERT_TRUE(c->QueueResume("default").ok());
  ASSERT_TRUE(log.WaitForJob(held->job.id, Event::Kind::kJobCompleted));
  ASSERT_TRUE(c->QueueResume("default").ok());  // not paused: no event
  ASSERT_TRUE(c->QueueResume("never").ok());
  int pause_events = 0;
  for (const auto& e : log.events()) {
    pause_events += e.kind == Event::Kind::kQueuePaused || e.kind == Event::Kind::kQueueResumed;
  }
  EXPECT_EQ(pause_events, 2);
  ASSERT_TRUE(c->Stop(10s).ok());
}

TEST_F(OperationsTest, AdminCancelRetryDelete) {
  Signal started;
  fn_ = [&](JobContext& ctx, const TaskArgs& a) -> Outcome {
    if (a.name == "long") {
      started.Notify();
      return WaitForCancel(ctx);
    }
    return a.name == "bad" ? Outcome::Fail("no") : Outcome::Done();
  };
  auto c = Open(Options());
  InsertOptions later;
  later.scheduled_at = clock_->Now() + 1h;
  auto waiting = c->Insert(TaskArgs{"w"}, later);
  auto cancelled = c->JobCancel(waiting->job.id);
  ASSERT_TRUE(cancelled.has_value());
  EXPECT_EQ(cancelled->state, JobState::kCancelled);
  EXPECT_TRUE(c->JobCancel(999999).error().IsNotFound());

  EventLog log(*c);
  ASSERT_TRUE(c->Start().ok());
  auto long_job = c->Insert(TaskArgs{"long"});
  ASSERT_TRUE(started.WaitFor());
  EXPECT_TRUE(c->JobDelete(long_job->job.id).error().IsFailedPrecondition());
  ASSERT_TRUE(c->JobCancel(long_job->job.id).has_value());
  ASSERT_TRUE(log.WaitForJob(long_job->job.id, Event::Kind::kJobCancelled));
  EXPECT_EQ(c->JobGet(long_job->job.id)->state, JobState::kCancelled);

  auto bad = c->Insert(TaskArgs{"bad"}, {.max_attempts = 1});
  ASSERT_TRUE(log.WaitForJob(bad->job.id, Event::Kind::kJobDiscarded));
  fn_ = [](JobContext&, const TaskArgs&) { return Outcome::Done(); };
  auto retried = c->JobRetry(bad->job.id);
  ASSERT_TRUE(retried.has_value()) << retried.error().ToString();
  EXPECT_EQ(retried->max_attempts, 2) << "attempts used are kept; one more is granted";
  ASSERT_TRUE(log.WaitForJob(bad->job.id, Event::Kind::kJobCompleted));
  auto deleted = c->JobDelete(bad->job.id);
  ASSERT_TRUE(deleted.has_value());
  EXPECT_TRUE(c->JobGet(bad->job.id).error().IsNotFound());
  ASSERT_TRUE(c->Stop(10s).ok());
}

TEST_F(OperationsTest, CancelFromAnotherClientReachesTheRunningJob) {
  Signal started;
  fn_ = [&](JobContext& ctx, const TaskArgs&) {
    started.Notify();
    return WaitForCancel(ctx);
  };
  auto worker = Open(Options());
  EventLog log(*worker);
  ASSERT_TRUE(worker->Start().ok());
  auto job = worker->Insert(TaskArgs{"long"});
  ASSERT_TRUE(started.WaitFor());
  auto admin = OpenAdmin();
  auto r = admin->JobCancel(job->job.id);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->state, JobState::kRunning);
  ASSERT_TRUE(log.WaitForJob(job->job.id, Event::Kind::kJobCancelled));
  ASSERT_TRUE(worker->Stop(10s).ok());
}

// An admin cancelling several running jobs commits one change after another within
// milliseconds: each must reach its job by the change it made, not by the next poll (an hour
// here), although the client looks for cancels at most every 50 ms.
TEST_F(OperationsTest, CancelsOfSeveralRunningJobsAllArriveWithoutAPoll) {
  constexpr int kJobs = 4;
  std::atomic<int> started_count{0};
  Signal all_started;
  fn_ = [&](JobContext& ctx, const TaskArgs&) {
    if (started_count.fetch_add(1) + 1 == kJobs) all_started.Notify();
    return WaitForCancel(ctx);
  };
  auto worker_opts = Options();
  worker_opts.poll_interval = 1h;
  auto worker = Open(worker_opts);
  EventLog log(*worker);
  ASSERT_TRUE(worker->Start().ok());
  std::vector<int64_t> ids;
  for (int i = 0; i < kJobs; ++i) ids.push_back(worker->Insert(TaskArgs{"long"})->job.id);
  ASSERT_TRUE(all_started.WaitFor());
  auto admin = OpenAdmin();
  // One at a time, each right after the last arrived: inside the 50 ms of the check that found
  // the last one.
  for (int64_t id : ids) {
    auto r = admin->JobCancel(id);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->state, JobState::kRunning);
    ASSERT_TRUE(log.WaitForJob(id, Event::Kind::kJobCancelled)) << id;
  }
  ASSERT_TRUE(worker->Stop(10s).ok());
}

// A job that fails right after an admin's cancel, before its client has seen the request: the
// cancel wins (the outcome's write finds it in the row), the job is not retried.
TEST_F(OperationsTest, AFailureRightAfterACancelRequestEndsCancelled) {
  Signal started;
  Signal go;
  fn_ = [&](JobContext&, const TaskArgs&) {
    started.Notify();
    EXPECT_TRUE(go.WaitFor());
    return Outcome::Fail("own failure");
  };
  auto worker_opts = Options();
  worker_opts.poll_interval = 1h;
  auto worker = Open(worker_opts);
  EventLog log(*worker);
  ASSERT_TRUE(worker->Start().ok());
  auto job = worker->Insert(TaskArgs{"x"});
  ASSERT_TRUE(started.WaitFor());
  auto admin = OpenAdmin();
  auto r = admin->JobCancel(job->job.id);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->state, JobState::kRunning);
  go.Notify();
  ASSERT_TRUE(log.WaitForJob(job->job.id, Event::Kind::kJobCancelled));
  ASSERT_TRUE(worker->Stop(10s).ok());
  auto got = admin->JobGet(job->job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->state, JobState::kCancelled);
  ASSERT_EQ(got->errors.size(), 1u);
  EXPECT_EQ(got->errors[0].error,
            "cancelled by an admin while running; Work returned: own failure");
}

// A job cancelled right after its insert claimed it may still wait for a worker thread: the
// cancel must reach it then too (before, it waited for the next poll, an hour here).
TEST_F(OperationsTest, CancelsRightAfterInsertReachEveryJob) {
  constexpr int kJobs = 40;
  fn_ = [&](JobContext& ctx, const TaskArgs&) { return WaitForCancel(ctx); };
  auto opts = Options();
  opts.queues["default"].max_workers = kJobs;
  opts.poll_interval = 1h;
  auto client = Open(opts);
  EventLog log(*client);
  ASSERT_TRUE(client->Start().ok());
  std::vector<int64_t> ids;
  size_t running = 0;  // cancels of jobs not yet claimed end them at once, with no event
  for (int i = 0; i < kJobs; ++i) {
    auto job = client->Insert(TaskArgs{"x"});
    ASSERT_TRUE(job.has_value());
    ids.push_back(job->job.id);
    auto r = client->JobCancel(job->job.id);
    ASSERT_TRUE(r.has_value());
    if (r->state == JobState::kRunning) ++running;
  }
  ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCancelled, running));
  ASSERT_TRUE(client->Stop(10s).ok());
  for (int64_t id : ids) EXPECT_EQ(client->JobGet(id)->state, JobState::kCancelled) << id;
}

}  // namespace
}  // namespace spool
