// `spool bench`: bulk insert, burn-down and pickup latency of no-op jobs on a database.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <vector>

#include "commands/commands.h"
#include "common/config.h"
#include "spool/spool.h"

namespace spool::cli {
namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr std::string_view kNoopKind = "spool_bench_noop";
// Give up when no job finishes for this long: something is wrong, say so rather than hang.
constexpr auto kStallLimit = std::chrono::seconds(60);

int64_t SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now().time_since_epoch())
      .count();
}

struct LatencyArgs {
  static constexpr std::string_view kKind = "spool_bench_latency";
  int64_t inserted_ns = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(LatencyArgs, inserted_ns)
};

// Shared by the workers and the bench driver.
struct BenchState {
  explicit BenchState(int64_t jobs) : runs(static_cast<size_t>(jobs)) {}
  std::vector<std::atomic<uint8_t>> runs;  // times each bulk job ran, by id - first_id
  std::atomic<int64_t> first_id{0};
  std::atomic<int64_t> stray{0};  // ids outside the bulk range
  std::mutex mu;
  std::condition_variable cv;
  int64_t completed = 0;             // guarded by mu
  int64_t target = 0;                // guarded by mu: WaitCompleted's goal
  std::vector<double> latencies_ms;  // guarded by mu
};

// Counts each run; deliberately not a Worker<Args>: there are no args to parse.
class NoopWorker final : public WorkerBase {
 public:
  explicit NoopWorker(BenchState& state) : state_(state) {}
  std::string_view Kind() const override { return kNoopKind; }
  Outcome WorkJob(JobContext& ctx) override {
    const int64_t idx = ctx.job().id - state_.first_id.load(std::memory_order_relaxed);
    if (idx < 0 || idx >= static_cast<int64_t>(state_.runs.size())) {
      state_.stray.fetch_add(1);
    } else {
      state_.runs[static_cast<size_t>(idx)].fetch_add(1, std::memory_order_relaxed);
    }
    return Outcome::Done();
  }

 private:
  BenchState& state_;
};

class LatencyWorker final : public Worker<LatencyArgs> {
 public:
  explicit LatencyWorker(BenchState& state) : state_(state) {}
  Outcome Work(JobContext&, const LatencyArgs& args) override {
    const double ms = static_cast<double>(SteadyNanos() - args.inserted_ns) / 1e6;
    std::lock_guard lock(state_.mu);
    state_.latencies_ms.push_back(ms);
    return Outcome::Done();
  }

 private:
  BenchState& state_;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto idx = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(idx, v.size() - 1)];
}

struct BenchConfig {
  std::string url;
  int64_t jobs = 50'000;
  int workers = 100;
  int insert_batch = 5'000;  // jobs per InsertManyFast call in the bulk phase
  int latency_jobs = 2'000;
  int latency_rate = 1'000;     // inserts per second in the latency phase
  int job_timeout_s = 0;        // ClientOptions::job_timeout; 0: none
  bool claim_on_insert = true;  // ClientOptions::claim_on_insert
  bool json = false;
};

class Progress {
 public:
  explicit Progress(bool quiet) : quiet_(quiet), tty_(isatty(STDERR_FILENO) != 0) {}
  void Line(const std::string& s) {
    if (quiet_) return;
    if (tty_) {
      fmt::print(stderr, "\r{:<70}", s);
    } else if (SteadyClock::now() - last_ >= std::chrono::seconds(1)) {
      fmt::print(stderr, "{}\n", s);
      last_ = SteadyClock::now();
    }
  }
  void Done(const std::string& s) {
    if (quiet_) return;
    if (tty_) {
      fmt::print(stderr, "\r{:<70}\n", s);
    } else {
      fmt::print(stderr, "{}\n", s);
    }
  }

 private:
  bool quiet_;
  bool tty_;
  SteadyClock::time_point last_{};
};

// Waits until `target` jobs completed, printing progress; throws on a stall.
void WaitCompleted(BenchState& st, int64_t target, Progress& progress, const char* phase) {
  std::unique_lock lock(st.mu);
  st.target = target;
  int64_t last_seen = -1;
  auto last_change = SteadyClock::now();
  while (st.completed < target) {
    st.cv.wait_for(lock, std::chrono::milliseconds(200), [&] { return st.completed >= target; });
    if (st.completed != last_seen) {
      last_seen = st.completed;
      last_change = SteadyClock::now();
    } else if (SteadyClock::now() - last_change > kStallLimit) {
      throw CommandError(
          fmt::format("{}: no job finished for {}s ({} of {} done); check the "
                      "database and `spool migration status`",
                      phase, kStallLimit.count(), st.completed, target));
    }
    progress.Line(fmt::format("{}: {}/{} jobs", phase, st.completed, target));
  }
}

void RunBench(const BenchConfig& cfg) {
  if (Status st = MigrateUp(cfg.url); !st.ok()) throw CommandError(st);

  // A queue of its own, so the bench never touches the application's jobs.
  std::random_device rd;
  const std::string queue = fmt::format("spool_bench_{:08x}", rd());
  BenchState state(cfg.jobs);
  Progress progress(cfg.json);

  Workers workers;
  workers.Add<NoopWorker>(state).Add<LatencyWorker>(state);
  ClientOptions options;
  options.queues[queue] = QueueConfig{.max_workers = cfg.workers};
  options.job_timeout = std::chrono::seconds(cfg.job_timeout_s);
  options.claim_on_insert = cfg.claim_on_insert;
  auto opened = Client::Open(cfg.url, options, std::move(workers));
  if (!opened) throw CommandError(opened.error());
  auto& client = **opened;
  client.Subscribe([&state, &queue](const Event& e) {
    if (e.job.queue != queue || e.kind != Event::Kind::kJobCompleted) return;
    bool reached = false;
    {
      std::lock_guard lock(state.mu);
      reached = ++state.completed == state.target;
    }
    // Only the event that reaches the target wakes the waiting thread: waking it for every job
    // would measure the bench's own context switches. Progress lines come from its timeout.
    if (reached) state.cv.notify_all();
  });

  // Phase 1: bulk insert.
  double insert_secs = 0;
  for (int64_t done = 0; done < cfg.jobs;) {
    const int64_t n = std::min<int64_t>(cfg.insert_batch, cfg.jobs - done);
    std::vector<InsertParams> batch(static_cast<size_t>(n),
                                    InsertParams{std::string(kNoopKind), "{}", {}});
    for (auto& p : batch) p.options.queue = queue;
    const auto t0 = SteadyClock::now();
    auto r = client.InsertManyFast(std::move(batch));
    insert_secs += std::chrono::duration<double>(SteadyClock::now() - t0).count();
    if (!r) throw CommandError("insert failed: " + r.error().message());
    done += *r;
    progress.Line(fmt::format("insert: {}/{} jobs", done, cfg.jobs));
  }
  progress.Done(fmt::format("insert: {} jobs in {:.3f}s", cfg.jobs, insert_secs));
  auto first =
      client.JobList({.states = {}, .queue = queue, .kind = {}, .after_id = 0, .limit = 1});
  if (!first || first->empty()) throw CommandError("inserted jobs are not in the database");
  state.first_id = first->front().id;

  // Phase 2: burn-down. The client starts with the queue paused, so starting its worker threads
  // (a one-off cost: about 130 ms for 1,000 on the benchmark machine) is reported on its own
  // instead of being counted as time spent working jobs.
  if (Status st = client.QueuePause(queue); !st.ok()) throw CommandError(st);
  const auto s0 = SteadyClock::now();
  if (Status st = client.Start(); !st.ok()) throw CommandError(st);
  const double start_secs = std::chrono::duration<double>(SteadyClock::now() - s0).count();
  const auto w0 = SteadyClock::now();
  if (Status st = client.QueueResume(queue); !st.ok()) throw CommandError(st);
  WaitCompleted(state, cfg.jobs, progress, "work");
  const double work_secs = std::chrono::duration<double>(SteadyClock::now() - w0).count();
  progress.Done(fmt::format("work: {} jobs in {:.3f}s", cfg.jobs, work_secs));

  // Phase 3: pickup latency of jobs inserted one at a time at a steady rate.
  int latency_claimed = 0;  // of them, claimed by their insert (ClientOptions::claim_on_insert)
  {
    std::atomic<bool> insert_failed{false};
    std::thread inserter([&] {
      int claimed = 0;
      const auto spacing = std::chrono::nanoseconds(1'000'000'000LL / cfg.latency_rate);
      auto next = SteadyClock::now();
      for (int i = 0; i < cfg.latency_jobs; ++i) {
        std::this_thread::sleep_until(next);  // pacing the load generator, not waiting on a thread
        next += spacing;
        auto r = client.Insert(LatencyArgs{SteadyNanos()}, {.queue = queue});
        if (!r) {
          insert_failed = true;
          return;
        }
        if (r->job.state == JobState::kRunning) ++claimed;
      }
      latency_claimed = claimed;
    });
    inserter.join();
    if (insert_failed) throw CommandError("latency phase: insert failed");
    WaitCompleted(state, cfg.jobs + cfg.latency_jobs, progress, "latency");
  }
  if (Status st = client.Stop(std::chrono::seconds(30)); !st.ok()) {
    throw CommandError("stop failed: " + st.message());
  }

  // Verification: every bulk job ran exactly once and the table agrees.
  int64_t not_once = 0;
  for (auto& r : state.runs) not_once += r.load() != 1 ? 1 : 0;
  auto counts = client.JobCountByState(queue);
  if (!counts) throw CommandError(counts.error());
  const int64_t expected = cfg.jobs + cfg.latency_jobs;
  const bool table_ok = counts->size() == 1 && counts->begin()->first == JobState::kCompleted &&
                        counts->begin()->second == expected;
  const bool verified = not_once == 0 && state.stray == 0 && table_ok;

  std::vector<double> lat;
  {
    std::lock_guard lock(state.mu);
    lat = state.latencies_ms;
  }
  const double insert_rate = static_cast<double>(cfg.jobs) / insert_secs;
  const double work_rate = static_cast<double>(cfg.jobs) / work_secs;
  const double p50 = Percentile(lat, 0.50), p95 = Percentile(lat, 0.95),
               p99 = Percentile(lat, 0.99);
  if (cfg.json) {
    nlohmann::json out = {{"driver", std::string(client.driver_name())},
                          {"jobs", cfg.jobs},
                          {"workers", cfg.workers},
                          {"job_timeout_s", cfg.job_timeout_s},
                          {"insert_jobs_per_sec", static_cast<int64_t>(insert_rate)},
                          {"work_jobs_per_sec", static_cast<int64_t>(work_rate)},
                          {"start_ms", start_secs * 1000},
                          {"latency_ms", {{"p50", p50}, {"p95", p95}, {"p99", p99}}},
                          {"insert_batch", cfg.insert_batch},
                          {"latency_jobs", cfg.latency_jobs},
                          {"claim_on_insert", cfg.claim_on_insert},
                          {"latency_claimed_on_insert", latency_claimed},
                          {"verified", verified}};
    fmt::print("{}\n", out.dump());
  } else {
    fmt::print("driver         {}\n", client.driver_name());
    fmt::print("jobs           {} no-op jobs, {} workers{}\n", cfg.jobs, cfg.workers,
               cfg.job_timeout_s > 0 ? fmt::format(", {}s job timeout", cfg.job_timeout_s)
                                     : std::string());
    fmt::print("insert         {:.0f} jobs/s (bulk, {} jobs per call)\n", insert_rate,
               cfg.insert_batch);
    fmt::print("start          {:.1f} ms to start the client and its {} worker threads\n",
               start_secs * 1000, cfg.workers);
    fmt::print("work           {:.0f} jobs/s (fetch, run, complete)\n", work_rate);
    fmt::print(
        "pickup latency p50 {:.3f} ms, p95 {:.3f} ms, p99 {:.3f} ms ({} jobs at {}/s, {} claimed "
        "by their insert)\n",
        p50, p95, p99, cfg.latency_jobs, cfg.latency_rate, latency_claimed);
    fmt::print("verified       {}\n",
               verified ? "yes: every job completed exactly once"
                        : fmt::format("NO: {} jobs did not run exactly once, {} stray, table {}",
                                      not_once, state.stray.load(), table_ok ? "ok" : "disagrees"));
  }
  if (!verified) throw CommandError("verification failed: see above");
}

}  // namespace

void RegisterBench(CLI::App& app) {
  auto cfg = std::make_shared<BenchConfig>();
  auto* cmd = app.add_subcommand(
      "bench", "Measure insert and work throughput and pickup latency with no-op jobs");
  cmd->add_option(
      "--database-url", cfg->url,
      "Database URL; default $SPOOL_DATABASE_URL, then database_url in the nearest .spoolrc "
      "outside an app (an app's own database is never benchmarked by default)");
  cmd->add_option("--jobs,-n", cfg->jobs, "No-op jobs to insert and work")
      ->capture_default_str()
      ->check(WholeNumberFrom(1, 100'000'000));
  cmd->add_option("--workers,-w", cfg->workers, "Worker threads")
      ->capture_default_str()
      ->check(WholeNumberFrom(1, 10'000));
  cmd->add_option("--insert-batch", cfg->insert_batch,
                  "Jobs per bulk insert call (one transaction each) in the insert phase")
      ->capture_default_str()
      ->check(WholeNumberFrom(1, 1'000'000));
  cmd->add_option("--latency-jobs", cfg->latency_jobs, "Jobs in the latency phase")
      ->capture_default_str()
      ->check(WholeNumberFrom(1, 1'000'000));
  cmd->add_option("--latency-rate", cfg->latency_rate, "Inserts per second in the latency phase")
      ->capture_default_str()
      ->check(WholeNumberFrom(1, 100'000));
  cmd->add_option("--job-timeout", cfg->job_timeout_s,
                  "Seconds each job may run (ClientOptions::job_timeout), as most apps set one; "
                  "0: none")
      ->capture_default_str()
      ->check(WholeNumberFrom(0, 86'400));
  cmd->add_flag("--no-claim-on-insert{false}", cfg->claim_on_insert,
                "Every latency-phase job waits for a fetch, as jobs inserted by another process "
                "do (ClientOptions::claim_on_insert = false)");
  cmd->add_flag("--json", cfg->json, "Print one JSON object instead of a table");
  cmd->footer(
      "Jobs go to a queue of their own (spool_bench_<random>) and stay as completed rows.\n"
      "Example: spool bench --database-url sqlite:///tmp/bench.db --jobs 50000 --workers 100");
  cmd->callback([cfg] {
    BenchConfig c = *cfg;
    // The bench leaves its jobs behind: an app's own database is never taken by default.
    const char* env = std::getenv("SPOOL_DATABASE_URL");
    if (c.url.empty() && (env == nullptr || *env == '\0') && FindAppRoot()) {
      throw CommandError(
          "spool bench inserts and leaves thousands of jobs, so it does not use the app's "
          "database from .spoolrc: pass --database-url (a scratch database, e.g. "
          "sqlite:///tmp/bench.db)",
          kExitUsage);
    }
    c.url = ResolveDatabaseUrl(c.url);
    RunBench(c);
  });
}

}  // namespace spool::cli
