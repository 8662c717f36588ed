#pragma once

// Helpers for testing workers: run one inline, as the runtime would, and check what it enqueued.
//   auto queue = spool::testing::TestQueue::Create();        // throwaway SQLite queue
//   SendEmailWorker worker;
//   auto outcome = spool::testing::WorkInline(worker, (*queue)->client(), SendEmailArgs{...});
//   auto sent = spool::testing::RequireInserted<AuditArgs>((*queue)->client());

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "spool/client.h"
#include "spool/job.h"
#include "spool/options.h"
#include "spool/result.h"
#include "spool/status.h"
#include "spool/worker.h"

namespace spool::testing {

// An insert-only client on a fresh SQLite database in a temp folder, migrated; the folder is
// removed on destruction. Give its client() to the code under test, then read what it enqueued.
class TestQueue {
 public:
  // `options.queues` should stay empty: the queue only records inserts, it works no jobs.
  static Result<std::unique_ptr<TestQueue>> Create(ClientOptions options = {});
  ~TestQueue();
  TestQueue(const TestQueue&) = delete;
  TestQueue& operator=(const TestQueue&) = delete;

  Client& client() { return *client_; }
  // sqlite:///tmp/.../queue.db, for opening another client on the same database.
  const std::string& url() const { return url_; }

 private:
  TestQueue(std::filesystem::path dir, std::string url, std::unique_ptr<Client> client);
  std::filesystem::path dir_;
  std::string url_;
  std::unique_ptr<Client> client_;
};

// How WorkInline presents the job to the worker.
struct WorkOptions {
  // The attempt being run (1 for the first).
  int attempt = 1;
  // The job's id (ctx.job().id), for workers that key on it. Default: 0.
  int64_t id = 0;
  // Queue, priority, max_attempts, tags and metadata of the job row.
  InsertOptions insert{};
  // Request a stop on it to see how the worker handles cancellation. Default: never stopped.
  std::stop_token stop{};
  // When the attempt's time is up (system clock): ctx.deadline(), and the context is cancelled
  // then, as the runtime does. Default: now + the worker's Timeout, else the client's
  // job_timeout; none when both are zero.
  std::optional<TimePoint> deadline{};
  // Receives ctx.Log lines. Default: discarded.
  Logger logger{};
};

// The row the runtime would hand a worker for a running job of `kind` with JSON `args`.
JobRow RunningJobRow(std::string_view kind, std::string args, const WorkOptions& options);

// Runs `worker` on `row` with a real JobContext on `client`, as a pool thread would: an
// exception thrown by Work becomes Outcome::Fail with the message the runtime would record
// ("std::runtime_error thrown: ..."), and the context is cancelled at the deadline (see
// WorkOptions::deadline). InvalidArgument when the worker's kind is not the row's.
Result<Outcome> WorkRowInline(WorkerBase& worker, Client& client, const JobRow& row,
                              const WorkOptions& options = {});

// Runs `worker` once on a job with `args` (see WorkRowInline).
template <JobArgs A>
Result<Outcome> WorkInline(WorkerBase& worker, Client& client, const A& args,
                           const WorkOptions& options = {}) {
  return WorkRowInline(worker, client,
                       RunningJobRow(A::kKind, nlohmann::json(args).dump(), options), options);
}

// Every job of `kind` in the client's database (any state), by id.
Result<std::vector<JobRow>> InsertedRows(Client& client, std::string_view kind);

// The args of every job of kind A in the client's database, by id (empty when none).
template <JobArgs A>
Result<std::vector<A>> InsertedArgs(Client& client) {
  SPOOL_ASSIGN_OR_RETURN(auto rows, InsertedRows(client, A::kKind));
  std::vector<A> out;
  for (const auto& row : rows) {
    try {
      out.push_back(nlohmann::json::parse(row.args).template get<A>());
    } catch (const std::exception& e) {
      return Status::InvalidArgument("job " + std::to_string(row.id) + " of kind " +
                                     std::string(A::kKind) +
                                     " has args that do not parse: " + e.what());
    }
  }
  return out;
}

// Like InsertedArgs, but NotFound (naming the kind) when no job of kind A was inserted.
template <JobArgs A>
Result<std::vector<A>> RequireInserted(Client& client) {
  SPOOL_ASSIGN_OR_RETURN(auto args, InsertedArgs<A>(client));
  if (args.empty()) {
    return Status::NotFound("no job of kind " + std::string(A::kKind) + " was inserted");
  }
  return args;
}

}  // namespace spool::testing
