// A process working jobs is killed with SIGKILL mid-run. Nothing may be lost from the table: every
// job is still there, the ones the dead process held stay `running` (the rescuer, which needs
// client heartbeats, moves them back later: delivery is at least once), and a new process
// finishes all the others.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>

#include "spool/spool.h"
#include "support/test_util.h"

namespace spool {
namespace {

using namespace std::chrono_literals;

struct SlowArgs {
  static constexpr std::string_view kKind = "slow";
  int n = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(SlowArgs, n)
};

class SlowWorker final : public Worker<SlowArgs> {
  Outcome Work(JobContext& ctx, const SlowArgs&) override {
    // Long enough that the kill lands while jobs are running, short enough to make progress.
    const auto until = std::chrono::steady_clock::now() + 2ms;
    while (!ctx.Cancelled() && std::chrono::steady_clock::now() < until) {
    }
    return Outcome::Done();
  }
};

constexpr int kJobs = 3000;
constexpr int kChildWorkers = 4;

[[noreturn]] void RunChild(const std::string& url, int ready_fd) {
  Workers w;
  w.Add<SlowWorker>();
  ClientOptions o;
  o.queues["default"] = {.max_workers = kChildWorkers};
  auto c = Client::Open(url, o, std::move(w));
  if (!c) _exit(3);
  std::atomic<int> done{0};
  (*c)->Subscribe([&](const Event&) {
    if (++done == 300) {
      char b = 'x';
      (void)!write(ready_fd, &b, 1);
    }
  });
  if (!(*c)->Start().ok()) _exit(4);
  for (;;) pause();
}

TEST(CrashTest, SigkillMidRunLosesNoJob) {
  testing::TempDir dir;
  const std::string url = dir.SqliteUrl();
  ASSERT_TRUE(MigrateUp(url).ok());
  {
    // Insert before forking: an insert-only client starts no threads, so fork is safe.
    auto c = Client::Open(url, {});
    ASSERT_TRUE(c.has_value());
    std::vector<InsertParams> v;
    for (int i = 0; i < kJobs; ++i) v.push_back(InsertParams::From(SlowArgs{i}));
    ASSERT_TRUE((*c)->InsertManyFast(std::move(v)).has_value());
  }

  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(fds[0]);
    RunChild(url, fds[1]);
  }
  close(fds[1]);
  pollfd pfd{fds[0], POLLIN, 0};
  ASSERT_EQ(poll(&pfd, 1, static_cast<int>(std::chrono::milliseconds(testing::kWaitLimit).count())),
            1)
      << "child never completed 300 jobs";
  close(fds[0]);
  ASSERT_EQ(kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status));

  ClientOptions o;
  o.queues["default"] = {.max_workers = 4};
  Workers w;
  w.Add<SlowWorker>();
  auto c = Client::Open(url, o, std::move(w));
  ASSERT_TRUE(c.has_value()) << c.error().ToString();
  auto counts = (*c)->JobCountByState();
  ASSERT_TRUE(counts.has_value());
  int64_t total = 0;
  for (const auto& [state, n] : *counts) total += n;
  EXPECT_EQ(total, kJobs) << "a job vanished from the table";
  const int64_t held = (*counts)[JobState::kRunning];
  EXPECT_GE((*counts)[JobState::kCompleted], 300);

  testing::EventLog log(**c);
  ASSERT_TRUE((*c)->Start().ok());
  const int64_t remaining = (*counts)[JobState::kAvailable];
  ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, static_cast<size_t>(remaining)));
  ASSERT_TRUE((*c)->Stop(10s).ok());
  counts = (*c)->JobCountByState();
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ((*counts)[JobState::kCompleted] + held, kJobs);
  // Only jobs the dead client had claimed (running, or finished with the outcome not yet
  // written) are still running; nothing else is stuck.
  EXPECT_EQ((*counts)[JobState::kRunning], held);
  EXPECT_LT(held, kJobs - 300);
}

}  // namespace
}  // namespace spool
