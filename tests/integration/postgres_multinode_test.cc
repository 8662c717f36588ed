// Several nodes on one PostgreSQL database, as a deployment across machines runs them: each node
// is a child process with its own Client and client_id. Children are forked before the test
// process starts any thread, and never return into the test framework (_exit).

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
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
using pgtest::PostgresTestDb;
using SteadyClock = std::chrono::steady_clock;

constexpr int64_t kScale = 60;
constexpr int kManyJobs = 100'000;

using testing::ScaledClock;

struct NoopArgs {
  static constexpr std::string_view kKind = "noop";
  int n = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(NoopArgs, n)
};

// Remembers every job id it ran (one entry per run, so a second run shows as a duplicate).
class Recorder {
 public:
  void Add(int64_t id) {
    std::lock_guard lock(mu_);
    ids_.push_back(id);
  }
  bool WriteTo(const std::string& path) {
    std::lock_guard lock(mu_);
    FILE* f = std::fopen(path.c_str(), "w");
    if (f == nullptr) return false;
    for (int64_t id : ids_) std::fprintf(f, "%lld\n", static_cast<long long>(id));
    return std::fclose(f) == 0;
  }

 private:
  std::mutex mu_;
  std::vector<int64_t> ids_;
};

// With hang_fd >= 0, every job after the first hang_after hangs until the process dies, and
// first appends one byte to hang_fd: once that file is max_workers bytes long, the node holds
// exactly max_workers claimed jobs it can never finish, and every earlier outcome is written.
class NoopWorker final : public Worker<NoopArgs> {
 public:
  NoopWorker(Recorder* rec, int64_t hang_after, int hang_fd)
      : rec_(rec), hang_after_(hang_after), hang_fd_(hang_fd) {}
  Outcome Work(JobContext& ctx, const NoopArgs&) override {
    if (hang_fd_ >= 0 && started_.fetch_add(1) >= hang_after_) {
      (void)!write(hang_fd_, "h", 1);
      for (;;) std::this_thread::sleep_for(1h);  // a hung job: it ignores its token
    }
    rec_->Add(ctx.job().id);
    return Outcome::Done();
  }

 private:
  Recorder* rec_;
  int64_t hang_after_;
  int hang_fd_;
  std::atomic<int64_t> started_{0};
};

// Appends "<steady ns> <0|1>" each time IsLeader changes; write(2) unbuffered, so the lines
// survive a SIGKILL. A "1" carries the time of the first sample that saw leadership, a "0" the
// time of the last one that did: an interval spans only what samples saw. Timing the end by the
// first sample that saw it gone instead made an observer thread starved on a loaded machine
// report overlaps nobody acted in: its lease (and its belief) ended while it was not running.
void WatchLeadership(const Client& client, int fd, const std::atomic<bool>& stop) {
  const auto now_ns = [] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               SteadyClock::now().time_since_epoch())
        .count();
  };
  bool was = false;
  int64_t last_seen_leading_ns = 0;
  while (!stop.load()) {
    // The answer held at some instant between `before` and `after`; this thread may be preempted
    // anywhere in between. So an interval starts at `after` of its first answer and ends at
    // `before` of its last: it lies inside the node's true belief, and an overlap of two nodes'
    // intervals is a real one, never the observer's delay.
    const int64_t before = now_ns();
    const bool is = client.IsLeader();
    const int64_t after = now_ns();
    if (is != was) {
      char line[64];
      const long long at = is ? after : last_seen_leading_ns;
      const int n = std::snprintf(line, sizeof line, "%lld %d\n", at, is ? 1 : 0);
      if (n > 0) (void)!write(fd, line, static_cast<size_t>(n));
      was = is;
    }
    if (is) last_seen_leading_ns = before;
    std::this_thread::sleep_for(2ms);  // sampling rate of the observer
  }
  // Stopping: the node's belief is observed no longer, so its interval ends at the last sample
  // that saw it. Left open, the survivors stopped one after another (the first resigning, the
  // next taking over before its own stop) both counted as leading until the end.
  if (was) {
    char line[64];
    const int n =
        std::snprintf(line, sizeof line, "%lld 0\n", static_cast<long long>(last_seen_leading_ns));
    if (n > 0) (void)!write(fd, line, static_cast<size_t>(n));
  }
}

struct NodeSpec {
  std::string id;
  ClientOptions options;
  std::string ids_file;     // ids run, written at SIGTERM
  std::string leader_file;  // leadership transitions
  int64_t hang_after = 0;
  std::string hang_file = {};  // when set, jobs hang: see NoopWorker
};

// The body of a child process: works jobs until SIGTERM, then stops softly, writes the ids it ran
// and exits 0. Exit codes 2-5 name what failed.
[[noreturn]] void RunNode(const std::string& url, NodeSpec spec) {
  // Blocked before any thread exists, so every client thread inherits the mask and only the
  // sigwait below receives SIGTERM.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  if (pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) _exit(2);
  Recorder rec;
  Workers w;
  int hang_fd = -1;
  if (!spec.hang_file.empty()) {
    hang_fd = open(spec.hang_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (hang_fd < 0) _exit(4);
  }
  w.Add<NoopWorker>(&rec, spec.hang_after, hang_fd);
  spec.options.client_id = spec.id;
  auto c = Client::Open(url, spec.options, std::move(w));
  if (!c) _exit(3);
  if (!(*c)->Start().ok()) _exit(3);
  std::atomic<bool> stop_watch{false};
  std::thread watcher;
  if (!spec.leader_file.empty()) {
    const int fd = open(spec.leader_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) _exit(4);
    watcher = std::thread([&, fd] { WatchLeadership(**c, fd, stop_watch); });
  }
  int sig = 0;
  sigwait(&set, &sig);
  stop_watch = true;
  if (watcher.joinable()) watcher.join();
  if (!(*c)->Stop(30s).ok()) _exit(5);
  if (!spec.ids_file.empty() && !rec.WriteTo(spec.ids_file)) _exit(4);
  _exit(0);
}

class PostgresMultiNodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SPOOL_REQUIRE_PG_CLUSTER();
    auto url = PostgresTestDb::Instance().NewSchemaUrl();
    ASSERT_TRUE(url.has_value()) << url.error().ToString();
    url_ = *url;
    ASSERT_TRUE(MigrateUp(url_).ok());
  }
  void TearDown() override {
    for (pid_t pid : children_) {
      if (pid > 0) kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }

  // The defaults, but quicker to notice new work: no node is ever taken for dead while alive.
  static ClientOptions SteadyOptions() {
    ClientOptions o;
    o.queues["default"] = {.max_workers = 100};
    o.poll_interval = 100ms;
    o.logger = [](LogLevel, std::string_view) {};
    return o;
  }

  // Short real intervals: a dead node is noticed within a few seconds. Heartbeats are 20x
  // more frequent than the staleness limit, so a loaded machine does not fake a death.
  static ClientOptions FastOptions() {
    ClientOptions o = SteadyOptions();
    o.heartbeat_interval = 100ms;
    o.client_stale_after = 5s;  // 50 heartbeats: a loaded 2-core CI box must not look dead
    o.rescue_interval = 200ms;
    o.leader_ttl = 1s;
    o.schedule_interval = 50ms;
    return o;
  }

  pid_t Spawn(NodeSpec spec) {
    const pid_t pid = fork();
    if (pid < 0) {
      ADD_FAILURE() << "fork failed";
      return pid;
    }
    if (pid == 0) RunNode(url_, std::move(spec));
    children_.push_back(pid);
    return pid;
  }

  void Kill(pid_t pid) {
    if (pid > 0) kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    children_.erase(std::remove(children_.begin(), children_.end(), pid), children_.end());
  }

  // SIGTERM, then the exit status (or -1 if it did not exit within the limit).
  int Terminate(pid_t pid) {
    if (pid > 0) kill(pid, SIGTERM);
    const auto deadline = SteadyClock::now() + 60s;
    for (;;) {
      int status = 0;
      const pid_t r = waitpid(pid, &status, WNOHANG);
      if (r == pid) {
        children_.erase(std::remove(children_.begin(), children_.end(), pid), children_.end());
        return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
      }
      if (SteadyClock::now() > deadline) return -1;
      std::this_thread::sleep_for(10ms);  // polling a child's exit
    }
  }

  void InsertNoops(int n) {
    // An insert-only client starts no thread, so children forked afterwards are safe.
    auto c = Client::Open(url_, {});
    ASSERT_TRUE(c.has_value()) << c.error().ToString();
    std::vector<InsertParams> v;
    v.reserve(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) v.push_back(InsertParams::From(NoopArgs{i}));
    auto inserted = (*c)->InsertManyFast(std::move(v));
    ASSERT_TRUE(inserted.has_value()) << inserted.error().ToString();
    ASSERT_EQ(*inserted, n);
  }

  std::unique_ptr<internal::Driver> Driver() {
    auto d = internal::Driver::Open(url_, {});
    EXPECT_TRUE(d.has_value()) << d.error().ToString();
    return d ? std::move(*d) : nullptr;
  }

  // Re-checks `pred` every `every` until it holds or `limit` passes.
  static bool WaitFor(const std::function<bool()>& pred, Duration limit, Duration every = 100ms) {
    const auto deadline = SteadyClock::now() + limit;
    while (!pred()) {
      if (SteadyClock::now() > deadline) return false;
      std::this_thread::sleep_for(every);  // polling another process's progress
    }
    return true;
  }

  static int64_t CountIn(internal::Driver& d, JobState state) {
    auto counts = d.executor().JobCountByState("default");
    if (!counts) return -1;
    auto it = counts->find(state);
    return it == counts->end() ? 0 : it->second;
  }

  // Every job of the queue, by pages.
  static std::vector<JobRow> AllJobs(internal::Driver& d, std::vector<JobState> states = {}) {
    std::vector<JobRow> all;
    int64_t after = 0;
    for (;;) {
      auto page = d.executor().JobList(
          {.states = states, .queue = "default", .kind = {}, .after_id = after, .limit = 10'000});
      EXPECT_TRUE(page.has_value()) << page.error().ToString();
      if (!page || page->empty()) return all;
      after = page->back().id;
      for (auto& j : *page) all.push_back(std::move(j));
    }
  }

  static double Seconds(SteadyClock::duration d) {
    return std::chrono::duration<double>(d).count();
  }

  testing::TempDir dir_;
  std::string url_;
  std::vector<pid_t> children_;
};

TEST_F(PostgresMultiNodeTest, ThreeNodesCompleteEveryJobExactlyOnce) {
  const auto t0 = SteadyClock::now();
  InsertNoops(kManyJobs);
  if (HasFatalFailure()) return;
  const auto t_inserted = SteadyClock::now();
  std::vector<std::string> files;
  std::vector<pid_t> pids;
  for (const char* id : {"node-a", "node-b", "node-c"}) {
    files.push_back((dir_.path() / fmt::format("{}.ids", id)).string());
    pids.push_back(
        Spawn({.id = id, .options = SteadyOptions(), .ids_file = files.back(), .leader_file = {}}));
  }
  auto d = Driver();
  ASSERT_TRUE(d);
  ASSERT_TRUE(WaitFor([&] { return CountIn(*d, JobState::kCompleted) == kManyJobs; }, 90s))
      << "completed: " << CountIn(*d, JobState::kCompleted) << " of " << kManyJobs;
  const auto t_done = SteadyClock::now();
  for (pid_t pid : pids) EXPECT_EQ(Terminate(pid), 0) << "node " << pid << " did not stop cleanly";
  std::printf(
      "[   INFO   ] inserted %d jobs in %.2fs; 3 nodes worked them in %.2fs (%.0f jobs/s)\n",
      kManyJobs, Seconds(t_inserted - t0), Seconds(t_done - t_inserted),
      kManyJobs / Seconds(t_done - t_inserted));

  std::map<int64_t, int> runs;
  std::vector<size_t> per_node;
  for (const auto& f : files) {
    std::ifstream in(f);
    ASSERT_TRUE(in) << "node wrote no ids: " << f;
    size_t n = 0;
    for (long long id = 0; in >> id;) {
      ++runs[static_cast<int64_t>(id)];
      ++n;
    }
    per_node.push_back(n);
  }
  // Each node did a share: the work really was spread over three processes.
  for (size_t n : per_node) EXPECT_GT(n, 0u);
  const std::vector<JobRow> jobs = AllJobs(*d);
  ASSERT_EQ(jobs.size(), static_cast<size_t>(kManyJobs));
  int64_t missing = 0, twice = 0;
  for (const JobRow& j : jobs) {
    EXPECT_EQ(j.state, JobState::kCompleted);
    const auto it = runs.find(j.id);
    if (it == runs.end()) {
      ++missing;
    } else if (it->second != 1) {
      if (twice++ == 0) {
        ADD_FAILURE() << "job " << j.id << " ran " << it->second << " times; attempted by "
                      << j.attempted_by.size() << " clients, first error: "
                      << (j.errors.empty() ? std::string("none") : j.errors[0].error);
      }
    }
  }
  EXPECT_EQ(missing, 0) << "jobs completed in the table but run by no node";
  EXPECT_EQ(twice, 0) << "jobs run more than once";
  EXPECT_EQ(runs.size(), jobs.size()) << "nodes ran ids that are not in the table";
}

TEST_F(PostgresMultiNodeTest, JobsOfAKilledNodeAreRescuedAndNoneLost) {
  InsertNoops(kManyJobs);
  if (HasFatalFailure()) return;
  const auto t_inserted = SteadyClock::now();
  const std::string hang_file = (dir_.path() / "victim.hung").string();
  const pid_t victim = Spawn({.id = "victim",
                              .options = FastOptions(),
                              .ids_file = {},
                              .leader_file = {},
                              .hang_after = kManyJobs / 20,
                              .hang_file = hang_file});
  const pid_t b =
      Spawn({.id = "node-b", .options = FastOptions(), .ids_file = {}, .leader_file = {}});
  const pid_t c =
      Spawn({.id = "node-c", .options = FastOptions(), .ids_file = {}, .leader_file = {}});
  auto d = Driver();
  ASSERT_TRUE(d);

  // Kill the victim once every one of its workers is stuck: it then holds exactly max_workers
  // claimed jobs, and no outcome of them can still be on its way to the server.
  auto victim_running = [&] {
    int64_t n = 0;
    for (const JobRow& j : AllJobs(*d, {JobState::kRunning})) {
      if (!j.attempted_by.empty() && j.attempted_by.back() == "victim") ++n;
    }
    return n;
  };
  const int64_t victim_slots = FastOptions().queues["default"].max_workers;
  auto victim_hung = [&] {
    std::error_code ec;
    const auto size = std::filesystem::file_size(hang_file, ec);
    return ec ? 0 : static_cast<int64_t>(size);
  };
  ASSERT_TRUE(WaitFor([&] { return victim_hung() == victim_slots; }, 60s, 10ms))
      << "the victim's workers never all hung: " << victim_hung() << " did";
  ASSERT_TRUE(WaitFor([&] { return victim_running() == victim_slots; }, 10s, 10ms))
      << "the victim holds " << victim_running() << " jobs, not one per slot";
  Kill(victim);
  const int64_t held = victim_running();
  ASSERT_EQ(held, victim_slots);
  const int64_t completed_at_kill = CountIn(*d, JobState::kCompleted);
  std::printf("[   INFO   ] killed the victim holding %lld running jobs, %lld of %d completed\n",
              static_cast<long long>(held), static_cast<long long>(completed_at_kill), kManyJobs);

  ASSERT_TRUE(WaitFor([&] { return CountIn(*d, JobState::kCompleted) == kManyJobs; }, 90s))
      << "completed: " << CountIn(*d, JobState::kCompleted) << " of " << kManyJobs;
  std::printf("[   INFO   ] %d jobs completed %.2fs after insert, across the kill\n", kManyJobs,
              Seconds(SteadyClock::now() - t_inserted));
  EXPECT_EQ(Terminate(b), 0);
  EXPECT_EQ(Terminate(c), 0);

  const std::vector<JobRow> jobs = AllJobs(*d);
  ASSERT_EQ(jobs.size(), static_cast<size_t>(kManyJobs)) << "jobs were lost";
  int64_t rescued = 0;
  for (const JobRow& j : jobs) {
    EXPECT_EQ(j.state, JobState::kCompleted);
    if (!j.errors.empty()) {
      EXPECT_NE(j.errors[0].error.find("client victim stopped responding"), std::string::npos)
          << j.errors[0].error;
      EXPECT_EQ(j.attempt, 2);
      ASSERT_EQ(j.attempted_by.size(), 2u);
      EXPECT_EQ(j.attempted_by[0], "victim");
      EXPECT_NE(j.attempted_by[1], "victim");
      ++rescued;
    }
  }
  EXPECT_EQ(rescued, held) << "every job the victim held, and only those, is rescued";
}

TEST_F(PostgresMultiNodeTest, OneLeaderAtATimeAndEachTickEnqueuedOnce) {
  // Starts on a whole minute so tick arithmetic below is exact. Time runs 30x, not kScale: every
  // real-time stall of a node is 30 times longer in clock time, and at 60x a stall of a few
  // tenths of a second (ctest -j2 beside the end-to-end tests' compiles) let a renewal lapse with
  // every node alive, or stretched the takeover past two ticks, which the new leader then runs
  // once (PeriodicJob::Missed::kRunOnce), as designed but not as this test expects.
  constexpr int64_t kLeaderTestScale = 30;
  auto clock = std::make_shared<ScaledClock>(TimePoint(std::chrono::seconds(1'800'000'000)),
                                             SteadyClock::now(), kLeaderTestScale);
  auto options = [&] {
    ClientOptions o = testing::ScaledMaintenanceOptions(clock);
    o.periodic_jobs.push_back(MakePeriodicJob("minutely", "* * * * *", NoopArgs{}));
    return o;
  };
  std::map<std::string, pid_t> pids;
  std::map<std::string, std::string> leader_files;
  for (const char* id : {"node-a", "node-b", "node-c"}) {
    leader_files[id] = (dir_.path() / fmt::format("{}.leader", id)).string();
    pids[id] =
        Spawn({.id = id, .options = options(), .ids_file = {}, .leader_file = leader_files[id]});
  }
  auto d = Driver();
  ASSERT_TRUE(d);

  // ~4 clock minutes, kill the leader, ~4 more.
  auto watch = [&](Duration real, std::set<std::string>* seen) {
    const auto until = SteadyClock::now() + real;
    while (SteadyClock::now() < until) {
      auto l = d->executor().LeaderGet();
      ASSERT_TRUE(l.has_value()) << l.error().ToString();
      if (*l && (*l)->expires_at > clock->Now()) seen->insert((*l)->leader_id);
      std::this_thread::sleep_for(20ms);  // sampling rate of the observer
    }
  };
  std::set<std::string> seen;
  watch(8s, &seen);
  EXPECT_EQ(seen.size(), 1u) << "leadership changed hands with every node alive";
  auto leader = d->executor().LeaderGet();
  ASSERT_TRUE(leader.has_value() && leader->has_value());
  const std::string first = (*leader)->leader_id;
  ASSERT_TRUE(pids.contains(first));
  Kill(pids[first]);
  const auto killed_at = SteadyClock::now();
  seen.clear();
  watch(8s, &seen);
  auto now_leader = d->executor().LeaderGet();
  ASSERT_TRUE(now_leader.has_value() && now_leader->has_value());
  EXPECT_NE((*now_leader)->leader_id, first) << "no survivor took over";
  for (const auto& [id, pid] : pids) {
    if (id != first) {
      EXPECT_EQ(Terminate(pid), 0);
    }
  }

  // Each node's view of itself: intervals of IsLeader() == true, in real time. Intervals of
  // different nodes must never overlap.
  struct Interval {
    int64_t from, to;
    std::string node;
  };
  std::vector<Interval> intervals;
  const int64_t killed_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(killed_at.time_since_epoch()).count();
  for (const auto& [id, file] : leader_files) {
    std::ifstream in(file);
    long long at = 0;
    int is = 0;
    std::optional<int64_t> open_since;
    while (in >> at >> is) {
      if (is == 1) {
        open_since = at;
      } else if (open_since) {
        intervals.push_back({*open_since, at, id});
        open_since.reset();
      }
    }
    // The killed leader led until it died (it could not write its end); the others closed theirs.
    if (open_since) {
      intervals.push_back({*open_since, id == first ? killed_ns : INT64_MAX, id});
    }
  }
  ASSERT_GE(intervals.size(), 2u) << "expected the first leader and a successor";
  for (size_t i = 0; i < intervals.size(); ++i) {
    for (size_t j = i + 1; j < intervals.size(); ++j) {
      const Interval& x = intervals[i];
      const Interval& y = intervals[j];
      if (x.node == y.node) continue;
      EXPECT_TRUE(x.to <= y.from || y.to <= x.from)
          << x.node << " and " << y.node << " both believed they led at the same time, for "
          << (std::min(x.to, y.to) - std::max(x.from, y.from)) / 1000 << " us";
    }
  }

  // Every clock minute since the first tick has exactly one job: none twice, none missing across
  // the takeover.
  auto jobs = d->executor().JobList(
      {.states = {}, .queue = "default", .kind = "noop", .after_id = 0, .limit = 1000});
  ASSERT_TRUE(jobs.has_value());
  testing::ExpectOneJobPerMinute(*jobs, 6);
}

}  // namespace
}  // namespace spool
