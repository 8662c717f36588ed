// `spool demo`: a few thousand jobs of several kinds (in a new SQLite file, or the database
// --database-url names), some failing and retrying, some snoozed, some scheduled, some discarded,
// with live progress and the final counts.
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <thread>

#include "commands/commands.h"
#include "spool/spool.h"

namespace spool::cli {
namespace {

using namespace std::chrono_literals;

struct SendEmailArgs {
  static constexpr std::string_view kKind = "send_email";
  std::string to;
  std::string subject;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(SendEmailArgs, to, subject)
};
struct ResizeImageArgs {
  static constexpr std::string_view kKind = "resize_image";
  std::string path;
  int width = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(ResizeImageArgs, path, width)
};
struct ChargeCardArgs {
  static constexpr std::string_view kKind = "charge_card";
  int64_t cents = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(ChargeCardArgs, cents)
};
struct SyncInventoryArgs {
  static constexpr std::string_view kKind = "sync_inventory";
  std::string sku;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(SyncInventoryArgs, sku)
};
struct NightlyReportArgs {
  static constexpr std::string_view kKind = "nightly_report";
  std::string day;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(NightlyReportArgs, day)
};

// Simulated I/O: the demo's jobs take a little time, as real ones do.
void SimulateIo(const JobContext& ctx, std::chrono::microseconds d) {
  const auto until = std::chrono::steady_clock::now() + d;
  while (!ctx.Cancelled() && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(200us);
}

class SendEmailWorker final : public Worker<SendEmailArgs> {
  Outcome Work(JobContext& ctx, const SendEmailArgs&) override {
    SimulateIo(ctx, 1ms);
    return Outcome::Done();
  }
};

// Every fifth image fails its first attempt (a flaky upstream) and succeeds on retry.
class ResizeImageWorker final : public Worker<ResizeImageArgs> {
  Outcome Work(JobContext& ctx, const ResizeImageArgs& args) override {
    SimulateIo(ctx, 2ms);
    if (ctx.job().id % 5 == 0 && ctx.attempt() == 1) {
      throw std::runtime_error("image service returned 503 for " + args.path);
    }
    return Outcome::Done();
  }
  std::optional<Duration> NextRetry(const JobRow&) const override { return 300ms; }
};

// Snoozes once (waiting on a rate limit), then succeeds; snoozing does not use an attempt.
class ChargeCardWorker final : public Worker<ChargeCardArgs> {
 public:
  Outcome Work(JobContext& ctx, const ChargeCardArgs&) override {
    if (ctx.snoozes() == 0) return Outcome::Snooze(500ms);
    SimulateIo(ctx, 1ms);
    return Outcome::Done();
  }
};

// Always fails: discarded after its 3 attempts, with every error kept.
class SyncInventoryWorker final : public Worker<SyncInventoryArgs> {
  Outcome Work(JobContext&, const SyncInventoryArgs& args) override {
    return Outcome::Fail("warehouse API rejected sku " + args.sku + ": 401 unauthorized");
  }
  std::optional<Duration> NextRetry(const JobRow&) const override { return 200ms; }
};

class NightlyReportWorker final : public Worker<NightlyReportArgs> {
  Outcome Work(JobContext& ctx, const NightlyReportArgs&) override {
    SimulateIo(ctx, 5ms);
    return Outcome::Done();
  }
};

struct DemoConfig {
  std::string url;
  int jobs = 3'000;
};

std::string CountsLine(const std::map<JobState, int64_t>& counts) {
  std::string s;
  for (JobState st : kAllJobStates) {
    auto it = counts.find(st);
    if (it == counts.end()) continue;
    s += fmt::format("{}{} {}", s.empty() ? "" : ", ", JobStateName(st), it->second);
  }
  return s;
}

bool AllFinal(const std::map<JobState, int64_t>& counts) {
  for (const auto& [st, n] : counts) {
    if (!IsFinalState(st) && n > 0) return false;
  }
  return true;
}

void RunDemo(DemoConfig cfg) {
  if (cfg.url.empty()) {
    char tmpl[] = "/tmp/spool-demo-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) throw CommandError("cannot create a temp dir for the demo");
    cfg.url = fmt::format("sqlite://{}/demo.db", tmpl);
  }
  fmt::print("spool demo on {}\n", UrlWithoutPassword(cfg.url));

  Workers workers;
  workers.Add<SendEmailWorker>()
      .Add<ResizeImageWorker>()
      .Add<ChargeCardWorker>()
      .Add<SyncInventoryWorker>()
      .Add<NightlyReportWorker>();
  // Queues of its own, as bench has: on a database other apps use, their nodes would take the
  // demo's jobs (and fail them, having no worker for the kinds) and it would take theirs.
  std::random_device rd;
  const std::string main_queue = fmt::format("spool_demo_{:06x}", rd() & 0xffffffu);
  const std::string mail_queue = main_queue + "_mail";
  ClientOptions options;
  options.queues = {{main_queue, {.max_workers = 20}}, {mail_queue, {.max_workers = 10}}};
  options.schedule_interval = 100ms;
  options.auto_migrate = true;
  // Its failures are by design and shown in the counts; a warning for each would bury them.
  options.logger = StderrLogger(LogLevel::kError);
  auto opened = Client::Open(cfg.url, options, std::move(workers));
  if (!opened) throw CommandError(opened.error());
  Client& client = **opened;
  if (Status st = client.Start(); !st.ok()) throw CommandError(st);

  // A mix: mostly e-mails and images, some charges, a few hopeless syncs, a few scheduled reports
  // and a couple of jobs of a kind no worker handles (they end up discarded, not lost).
  std::vector<InsertParams> batch;
  const auto now = std::chrono::time_point_cast<Duration>(std::chrono::system_clock::now());
  for (int i = 0; i < cfg.jobs; ++i) {
    switch (i % 10) {
      case 0:
      case 1:
      case 2:
      case 3:
        batch.push_back(InsertParams::From(
            SendEmailArgs{fmt::format("user{}@example.com", i), "Welcome"}, {.queue = mail_queue}));
        break;
      case 4:
      case 5:
      case 6:
        batch.push_back(InsertParams::From(ResizeImageArgs{fmt::format("img/{}.png", i), 640},
                                           {.queue = main_queue}));
        break;
      case 7:
      case 8:
        batch.push_back(
            InsertParams::From(ChargeCardArgs{100 + i}, {.queue = main_queue, .priority = 2}));
        break;
      default:
        if (i % 100 == 9) {
          batch.push_back(InsertParams::From(SyncInventoryArgs{fmt::format("SKU-{}", i)},
                                             {.queue = main_queue, .max_attempts = 3}));
        } else if (i % 100 == 19) {
          batch.push_back(
              InsertParams{"legacy_cleanup", "{}", {.queue = main_queue, .max_attempts = 2}});
        } else {
          InsertOptions o;
          o.queue = main_queue;
          o.scheduled_at = now + 2s;
          batch.push_back(InsertParams::From(NightlyReportArgs{fmt::format("day-{}", i)}, o));
        }
    }
  }
  auto inserted = client.InsertMany(std::move(batch));
  if (!inserted) throw CommandError(inserted.error());
  fmt::print("inserted {} jobs in one batch into queues {} and {}\n", inserted->size(), main_queue,
             mail_queue);

  std::map<JobState, int64_t> counts;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  for (;;) {
    counts.clear();
    for (const std::string& queue : {main_queue, mail_queue}) {
      auto c = client.JobCountByState(queue);
      if (!c) throw CommandError(c.error());
      for (const auto& [state, n] : *c) counts[state] += n;
    }
    fmt::print("  {}\n", CountsLine(counts));
    if (AllFinal(counts)) break;
    if (std::chrono::steady_clock::now() > deadline)
      throw CommandError("demo did not finish in 60s");
    std::this_thread::sleep_for(500ms);  // the display's refresh rate
  }
  if (Status st = client.Stop(10s); !st.ok()) throw CommandError(st);

  fmt::print("\nfinal counts: {}\n", CountsLine(counts));
  auto discarded =
      client.JobList({.states = {JobState::kDiscarded}, .queue = main_queue, .limit = 2});
  if (discarded) {
    for (const auto& job : *discarded) {
      fmt::print("discarded job #{} ({}), {} attempts:\n", job.id, job.kind, job.attempt);
      for (const auto& e : job.errors) fmt::print("    attempt {}: {}\n", e.attempt, e.error);
    }
  }
  fmt::print("\nThe database stays at {} for a look.\n", UrlWithoutPassword(cfg.url));
}

}  // namespace

void RegisterDemo(CLI::App& app) {
  auto cfg = std::make_shared<DemoConfig>();
  auto* cmd = app.add_subcommand(
      "demo",
      "Enqueue and work a few thousand demo jobs (SQLite, or --database-url's database), showing "
      "progress and counts");
  cmd->add_option("--database-url", cfg->url, "Database URL; default a new SQLite file in /tmp");
  cmd->add_option("--jobs,-n", cfg->jobs, "How many jobs")->check(WholeNumberFrom(10, 1'000'000));
  cmd->callback([cfg] { RunDemo(*cfg); });
}

}  // namespace spool::cli
