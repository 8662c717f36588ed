// spool::testing: running workers inline and reading back what they enqueued, for app tests.
#include "spool/testing.h"

#include <fmt/format.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <stop_token>
#include <system_error>

#include "core/exception.h"
#include "core/job_hooks.h"
#include "runtime/deadline_watcher.h"

namespace spool::testing {
namespace fs = std::filesystem;

Result<std::unique_ptr<TestQueue>> TestQueue::Create(ClientOptions options) {
  std::error_code ec;
  fs::path base = fs::temp_directory_path(ec);
  if (ec) base = "/tmp";
  std::string tmpl = (base / "spool_test_queue_XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) {
    return Status::Internal(fmt::format("cannot create a temp folder under {}", base.string()));
  }
  fs::path dir = tmpl;
  std::string url = "sqlite://" + (dir / "queue.db").string();
  options.auto_migrate = true;
  auto client = Client::Open(url, std::move(options));
  if (!client) {
    fs::remove_all(dir, ec);
    return std::move(client).error();
  }
  return std::unique_ptr<TestQueue>(
      new TestQueue(std::move(dir), std::move(url), std::move(client).value()));
}

TestQueue::TestQueue(fs::path dir, std::string url, std::unique_ptr<Client> client)
    : dir_(std::move(dir)), url_(std::move(url)), client_(std::move(client)) {}

TestQueue::~TestQueue() {
  client_.reset();  // closes the database before its folder goes
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

JobRow RunningJobRow(std::string_view kind, std::string args, const WorkOptions& options) {
  const TimePoint now = std::chrono::time_point_cast<Duration>(std::chrono::system_clock::now());
  JobRow row;
  row.id = options.id;
  row.state = JobState::kRunning;
  row.attempt = options.attempt;
  row.max_attempts = options.insert.max_attempts;
  row.attempted_at = now;
  row.attempted_by = {"spool-testing"};
  row.created_at = now;
  row.scheduled_at = options.insert.scheduled_at.value_or(now);
  row.priority = options.insert.priority;
  row.queue = options.insert.queue;
  row.kind = std::string(kind);
  row.args = std::move(args);
  row.metadata = options.insert.metadata;
  row.tags = options.insert.tags;
  return row;
}

Result<Outcome> WorkRowInline(WorkerBase& worker, Client& client, const JobRow& row,
                              const WorkOptions& options) {
  if (worker.Kind() != row.kind) {
    return Status::InvalidArgument(
        fmt::format("the worker is for kind \"{}\", the job is \"{}\"", worker.Kind(), row.kind));
  }
  const Logger discard = [](LogLevel, std::string_view) {};
  const Logger& logger = options.logger ? options.logger : discard;
  static const SystemClock kClock;
  std::optional<TimePoint> deadline = options.deadline;
  if (!deadline) {
    // The runtime's rule (its clock aside): the worker's Timeout, else the client's default.
    const Duration timeout = internal::JobTimeout(&worker, client.options(), row, logger);
    if (timeout > Duration::zero()) deadline = kClock.Now() + timeout;
  }
  // The context's token stops when the caller's does, or at the deadline (the runtime's
  // watcher, on the system clock).
  std::stop_source source;
  std::stop_callback forward(options.stop, [&source] { source.request_stop(); });
  std::atomic<bool> timed_out{false};  // outlives the watcher, which may set it
  internal::DeadlineWatcher watcher(kClock);
  if (deadline) {
    watcher.Start();
    watcher.Add(row.id, *deadline, source, &timed_out);
  }
  JobContext ctx(row, client, source.get_token(), deadline, logger);
  try {
    return worker.WorkJob(ctx);
  } catch (...) {
    // The words the runtime records for the same throw.
    return Outcome::Fail(internal::DescribeCurrentException().message);
  }
}

Result<std::vector<JobRow>> InsertedRows(Client& client, std::string_view kind) {
  std::vector<JobRow> out;
  JobListParams params;
  params.kind = std::string(kind);
  params.limit = 1000;
  for (;;) {
    SPOOL_ASSIGN_OR_RETURN(auto page, client.JobList(params));
    if (page.empty()) break;
    params.after_id = page.back().id;
    for (auto& row : page) {
      // A row that cannot be read lists by its id alone: a test wants the reason, which a get of
      // it returns.
      if (row.kind.empty()) {
        SPOOL_ASSIGN_OR_RETURN(row, client.JobGet(row.id));
      }
      out.push_back(std::move(row));
    }
  }
  return out;
}

}  // namespace spool::testing
