// PostgreSQL restarts under a running client: the client reconnects on its own, writes the
// outcomes it could not write while the server was away, and finishes the drain. The test runs
// its own throwaway cluster (scripts/pg-cluster.sh), because restarting the shared fixture
// cluster would break the tests running beside it.

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "driver/driver.h"
#include "integration/postgres_test_db.h"
#include "spool/spool.h"
#include "support/test_util.h"

namespace spool {
namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

const std::filesystem::path kScript =
    std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "scripts" /
    "pg-cluster.sh";

// Runs scripts/pg-cluster.sh with `args`; true on exit status 0.
bool RunScript(const std::string& args) {
  const std::string cmd = fmt::format("'{}' {} >/dev/null", kScript.string(), args);
  const int rc = std::system(cmd.c_str());
  return rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
}

struct SlowArgs {
  static constexpr std::string_view kKind = "slow";
  int n = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(SlowArgs, n)
};

// Counts runs per job id.
class SlowWorker final : public Worker<SlowArgs> {
 public:
  SlowWorker(std::mutex* mu, std::map<int64_t, int>* runs) : mu_(mu), runs_(runs) {}
  Outcome Work(JobContext& ctx, const SlowArgs&) override {
    {
      std::lock_guard lock(*mu_);
      ++(*runs_)[ctx.job().id];
    }
    std::this_thread::sleep_for(2ms);  // simulated work, not a wait on another thread
    return Outcome::Done();
  }

 private:
  std::mutex* mu_;
  std::map<int64_t, int>* runs_;
};

class PostgresRestartTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SPOOL_REQUIRE_PG_CLUSTER();
    cluster_dir_ = (dir_.path() / "cluster").string();
    ASSERT_TRUE(RunScript(fmt::format("start '{}'", cluster_dir_)))
        << "could not start a throwaway cluster with " << kScript;
    started_ = true;
    std::ifstream in(cluster_dir_ + "/url");
    ASSERT_TRUE(std::getline(in, url_) && !url_.empty());
    ASSERT_TRUE(MigrateUp(url_).ok());
  }
  void TearDown() override {
    // The script stops the postmaster by its pid and removes the data.
    if (started_) {
      EXPECT_TRUE(RunScript(fmt::format("stop '{}'", cluster_dir_)));
    }
  }

  static bool WaitFor(const std::function<bool()>& pred, Duration limit) {
    const auto deadline = SteadyClock::now() + limit;
    while (!pred()) {
      if (SteadyClock::now() > deadline) return false;
      std::this_thread::sleep_for(20ms);  // polling the database
    }
    return true;
  }

  testing::TempDir dir_;
  std::string cluster_dir_;
  bool started_ = false;
  std::string url_;
};

TEST_F(PostgresRestartTest, DrainSurvivesARestartWithoutRestartingTheClient) {
  constexpr int kJobs = 5000;
  std::mutex mu;
  std::map<int64_t, int> runs;
  std::vector<std::string> warnings;
  ClientOptions o;
  o.client_id = "survivor";
  o.queues["default"] = {.max_workers = 16};
  o.poll_interval = 200ms;
  o.schedule_interval = 100ms;
  o.heartbeat_interval = 200ms;
  o.logger = [&](LogLevel level, std::string_view m) {
    if (level < LogLevel::kWarn) return;
    std::lock_guard lock(mu);
    warnings.push_back(fmt::format(
        "{:.3f} {}", std::chrono::duration<double>(SteadyClock::now().time_since_epoch()).count(),
        m));
  };
  Workers w;
  w.Add<SlowWorker>(&mu, &runs);
  auto c = Client::Open(url_, o, std::move(w));
  ASSERT_TRUE(c.has_value()) << c.error().ToString();
  Client& client = **c;
  std::vector<InsertParams> v;
  for (int i = 0; i < kJobs; ++i) v.push_back(InsertParams::From(SlowArgs{i}));
  ASSERT_TRUE(client.InsertManyFast(std::move(v)).has_value());
  ASSERT_TRUE(client.Start().ok());

  auto completed = [&]() -> int64_t {
    auto counts = client.JobCountByState("default");
    if (!counts) return -1;
    auto it = counts->find(JobState::kCompleted);
    return it == counts->end() ? 0 : it->second;
  };
  ASSERT_TRUE(WaitFor([&] { return completed() >= kJobs / 10; }, 30s));
  const int64_t before = completed();
  // Down for a second: long enough for every loop of the client to hit the dead server.
  const auto t_restart = SteadyClock::now();
  ASSERT_TRUE(RunScript(fmt::format("restart '{}' 1", cluster_dir_)));
  const auto t_up = SteadyClock::now();
  std::printf("[   INFO   ] restarted with %lld/%d completed; server away %.1fs\n",
              static_cast<long long>(before), kJobs,
              std::chrono::duration<double>(t_up - t_restart).count());
  ASSERT_LT(before, kJobs) << "the drain ended before the restart: make it longer";

  ASSERT_TRUE(WaitFor([&] { return completed() == kJobs; }, 60s))
      << "completed " << completed() << " of " << kJobs << " after the restart";
  std::printf("[   INFO   ] drain finished %.1fs after the server came back\n",
              std::chrono::duration<double>(SteadyClock::now() - t_up).count());

  // Inserts work again, and a new job is picked up by the same client.
  auto late = client.Insert(SlowArgs{kJobs});
  ASSERT_TRUE(late.has_value()) << late.error().ToString();
  ASSERT_TRUE(WaitFor(
      [&] {
        auto j = client.JobGet(late->job.id);
        return j && j->state == JobState::kCompleted;
      },
      30s));
  const Status stopped = client.Stop(10s);
  EXPECT_TRUE(stopped.ok()) << stopped.ToString();

  auto d = internal::Driver::Open(url_, {});
  ASSERT_TRUE(d.has_value());
  auto jobs = (*d)->executor().JobList(
      {.states = {}, .queue = "default", .kind = {}, .after_id = 0, .limit = 2 * kJobs});
  ASSERT_TRUE(jobs.has_value());
  ASSERT_EQ(jobs->size(), static_cast<size_t>(kJobs + 1)) << "jobs were lost";
  int64_t twice = 0;
  std::lock_guard lock(mu);
  for (const JobRow& j : *jobs) {
    EXPECT_EQ(j.state, JobState::kCompleted) << "job " << j.id;
    const auto it = runs.find(j.id);
    ASSERT_NE(it, runs.end()) << "job " << j.id << " completed but never ran";
    if (it->second > 1) ++twice;
  }
  // At least once: an outcome lost with the connection may make a job run again, rarely.
  std::printf("[   INFO   ] jobs run twice: %lld; client warnings while the server was away: %zu\n",
              static_cast<long long>(twice), warnings.size());
  for (size_t i = 0; i < warnings.size() && getenv("SPOOL_TEST_VERBOSE"); ++i) {
    std::printf("  %s\n", warnings[i].c_str());
  }
  EXPECT_FALSE(warnings.empty()) << "the client never noticed the restart: was it really down?";
}

}  // namespace
}  // namespace spool
