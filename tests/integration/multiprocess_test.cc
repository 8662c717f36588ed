// Several processes on one SQLite file, as a deployment on one machine runs them. Time runs at
// 60x in every process (one real second is one minute of the clock) so cron ticks, leases and
// heartbeats play out in seconds.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <set>
#include <thread>

#include "driver/driver.h"
#include "spool/spool.h"
#include "support/test_util.h"

namespace spool {
namespace {

using namespace std::chrono_literals;

// Clock time runs 30x real time. Every real-time stall of a process counts 30 times in clock
// time: at 60x, the PostgreSQL twin of the leader test (postgres_multinode_test.cc) failed under a
// parallel build when a stall stretched the takeover past two minute ticks.
constexpr int64_t kScale = 30;

using testing::ScaledClock;

struct TickArgs {
  static constexpr std::string_view kKind = "tick";
  int n = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(TickArgs, n)
};

class TickWorker final : public Worker<TickArgs> {
 public:
  explicit TickWorker(Duration work) : work_(work) {}
  Outcome Work(JobContext& ctx, const TickArgs&) override {
    const auto until = std::chrono::steady_clock::now() + work_;
    while (!ctx.Cancelled() && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(1ms);  // simulated work, not a wait on another thread
    }
    return Outcome::Done();
  }

 private:
  Duration work_;
};

class MultiProcessTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(MigrateUp(url_).ok()); }
  void TearDown() override {
    for (pid_t pid : children_) {
      if (pid > 0) kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }

  ClientOptions Options(const std::string& id) {
    ClientOptions o = testing::ScaledMaintenanceOptions(clock_);
    o.client_id = id;
    return o;
  }

  // Runs a client in a child process until it is killed.
  pid_t Spawn(const std::string& id, bool periodic, Duration work) {
    const pid_t pid = fork();
    if (pid < 0) {
      ADD_FAILURE() << "fork failed";
      return pid;
    }
    if (pid != 0) {
      children_.push_back(pid);
      return pid;
    }
    auto o = Options(id);
    if (periodic) o.periodic_jobs.push_back(MakePeriodicJob("minutely", "* * * * *", TickArgs{}));
    Workers w;
    w.Add<TickWorker>(work);
    auto c = Client::Open(url_, o, std::move(w));
    if (!c || !(*c)->Start().ok()) _exit(3);
    for (;;) pause();
  }

  void Kill(pid_t pid) {
    if (pid > 0) kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    children_.erase(std::remove(children_.begin(), children_.end(), pid), children_.end());
  }

  std::unique_ptr<internal::Driver> Driver() {
    auto d = internal::Driver::Open(url_, {});
    EXPECT_TRUE(d.has_value());
    return std::move(*d);
  }

  testing::TempDir dir_;
  std::string url_ = dir_.SqliteUrl();
  // Starts on a whole minute so tick arithmetic below is exact.
  std::shared_ptr<ScaledClock> clock_ = std::make_shared<ScaledClock>(
      TimePoint(std::chrono::seconds(1'800'000'000)), std::chrono::steady_clock::now(), kScale);
  std::vector<pid_t> children_;
};

// Deploys that start several processes at once on a new file: each runs `migration up` (or
// auto_migrate); every one must succeed.
TEST_F(MultiProcessTest, RacingMigrationsOfANewFileAllSucceed) {
  constexpr int kRounds = 5;
  constexpr int kProcesses = 3;
  for (int round = 0; round < kRounds; ++round) {
    const std::string url = dir_.SqliteUrl("race" + std::to_string(round) + ".db");
    int go[2];
    ASSERT_EQ(pipe(go), 0);
    std::vector<pid_t> pids;
    for (int i = 0; i < kProcesses; ++i) {
      const pid_t pid = fork();
      ASSERT_GE(pid, 0);
      if (pid == 0) {
        close(go[1]);
        char byte = 0;
        // Blocks until the parent closes its end: all start together.
        if (read(go[0], &byte, 1) < 0) _exit(4);
        const Status s = MigrateUp(url);
        if (!s.ok()) {
          fprintf(stderr, "child %d: %s\n", i, s.ToString().c_str());
          _exit(1);
        }
        _exit(0);
      }
      pids.push_back(pid);
    }
    close(go[0]);
    close(go[1]);
    for (pid_t pid : pids) {
      int status = 0;
      ASSERT_EQ(waitpid(pid, &status, 0), pid);
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "round " << round;
    }
    auto d = internal::Driver::Open(url, {});
    ASSERT_TRUE(d.has_value());
    auto version = (*d)->SchemaVersion();
    ASSERT_TRUE(version.has_value());
    EXPECT_EQ(*version, internal::LatestVersion(**d));
  }
}

TEST_F(MultiProcessTest, OneLeaderAtATimeAndEachTickEnqueuedOnceAcrossALeaderKill) {
  const pid_t a = Spawn("proc-a", true, 1ms);
  const pid_t b = Spawn("proc-b", true, 1ms);
  auto d = Driver();
  std::map<std::string, pid_t> pids{{"proc-a", a}, {"proc-b", b}};

  // Watch the lease for ~4 clock minutes, then kill whoever leads, then watch ~4 more.
  std::set<std::string> leaders_seen;
  auto watch = [&](std::chrono::milliseconds real) {
    const auto until = std::chrono::steady_clock::now() + real;
    while (std::chrono::steady_clock::now() < until) {
      auto l = d->executor().LeaderGet();
      ASSERT_TRUE(l.has_value());
      if (*l && (*l)->expires_at > clock_->Now()) leaders_seen.insert((*l)->leader_id);
      std::this_thread::sleep_for(20ms);  // sampling rate of the observer
    }
  };
  watch(8s);
  auto leader = d->executor().LeaderGet();
  ASSERT_TRUE(leader.has_value() && leader->has_value());
  const std::string first = (*leader)->leader_id;
  ASSERT_TRUE(pids.contains(first));
  Kill(pids[first]);
  leaders_seen.clear();
  watch(8s);
  const std::string survivor = first == "proc-a" ? "proc-b" : "proc-a";
  // The dead leader's lease shows until it runs out; then only the survivor holds it.
  EXPECT_TRUE(leaders_seen.contains(survivor)) << "the survivor did not take over";
  auto now_leader = d->executor().LeaderGet();
  ASSERT_TRUE(now_leader.has_value() && now_leader->has_value());
  EXPECT_EQ((*now_leader)->leader_id, survivor);

  // Every clock minute since the first tick has exactly one job: no tick twice, none missing
  // across the takeover.
  auto jobs = d->executor().JobList(
      {.states = {}, .queue = "default", .kind = "tick", .after_id = 0, .limit = 1000});
  ASSERT_TRUE(jobs.has_value());
  testing::ExpectOneJobPerMinute(*jobs, 6);
}

TEST_F(MultiProcessTest, JobsOfAKilledProcessAreRescuedByAnother) {
  constexpr int kJobs = 200;
  {
    auto c = Client::Open(url_, {});
    ASSERT_TRUE(c.has_value());
    std::vector<InsertParams> v;
    for (int i = 0; i < kJobs; ++i) v.push_back(InsertParams::From(TickArgs{i}));
    ASSERT_TRUE((*c)->InsertManyFast(std::move(v)).has_value());
  }
  const pid_t victim = Spawn("victim", false, 20ms);
  auto d = Driver();
  // Kill it while it holds jobs.
  ASSERT_TRUE(testing::Eventually([&] {
    auto counts = d->executor().JobCountByState("default");
    return counts && (*counts)[JobState::kCompleted] >= 20 && (*counts)[JobState::kRunning] > 0;
  }));
  Kill(victim);
  auto counts = d->executor().JobCountByState("default");
  ASSERT_TRUE(counts.has_value());
  const int64_t held = (*counts)[JobState::kRunning];
  ASSERT_GT(held, 0);

  Spawn("rescuer", false, 1ms);
  // client_stale_after is 30 clock seconds = 1 s real; the rescue must come soon after.
  ASSERT_TRUE(testing::Eventually([&] {
    auto c = d->executor().JobCountByState("default");
    return c && (*c)[JobState::kCompleted] == kJobs;
  })) << "not every job completed after the rescue";
  auto rescued = d->executor().JobList({.states = {JobState::kCompleted},
                                        .queue = "default",
                                        .kind = {},
                                        .after_id = 0,
                                        .limit = 10'000});
  ASSERT_TRUE(rescued.has_value());
  int64_t with_error = 0;
  for (const auto& j : *rescued) {
    if (!j.errors.empty()) {
      EXPECT_NE(j.errors[0].error.find("client victim stopped responding"), std::string::npos);
      ++with_error;
    }
  }
  EXPECT_EQ(with_error, held) << "every job the victim held was rescued, and only those";
}

}  // namespace
}  // namespace spool
