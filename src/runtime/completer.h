#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "driver/driver.h"
#include "spool/client.h"

namespace spool::internal {

// One finished attempt on its way to the database.
struct Completion {
  JobSetStateParams params;
  Event event;  // delivered to subscribers once params is written
  // A job handed back unstarted: no event (it did not run), unless it became cancelled.
  bool silent = false;
};

// Writes worker outcomes in batches: one JobSetStateIfRunningMany per batch, so completing N jobs
// costs one transaction, not N. Batches form by themselves under load (outcomes pile up while the
// previous batch is written); otherwise an outcome waits at most `linger`, or less when FlushSoon
// says no more are coming. Thread safe. Events are delivered for the outcomes written: a job that
// stopped running meanwhile (cancelled, rescued or deleted by someone else) gets none, except
// after a failed write, when an outcome found already written may have been this completer's own
// in-doubt commit.
//
// With `possible_losses` (Driver::PossibleCommitLosses, not null), the outcomes written in the last
// kRewriteWindow are kept, and written again (no events) once the count grows: a PostgreSQL crash
// loses the last commits that did not wait for the WAL flush, and would leave those jobs running
// until rescued. The writes only change jobs still running the same claim, so rewriting outcomes
// that were not lost changes nothing.
class Completer {
 public:
  using Deliver = std::function<void(const std::vector<Completion>&)>;
  Completer(Executor& executor, Deliver deliver, Logger logger,
            std::chrono::microseconds linger = kLinger,
            const std::atomic<uint64_t>* possible_losses = nullptr);
  ~Completer();

  void Start();
  // Queues one outcome. Blocks while the backlog is over its limit (backpressure on workers).
  void Add(Completion c);
  // Writes what is queued without waiting out the linger: a queue ran dry, so no outcome that
  // would share the write is coming soon.
  void FlushSoon();
  // Writes everything queued, then stops the thread. Returns the last write error, if any, when
  // outcomes could not be written (those jobs stay running until rescued). Failing writes are
  // retried for 10 s, and not past `give_up_at` (the client's Stop deadline).
  Status Stop(std::chrono::steady_clock::time_point give_up_at =
                  std::chrono::steady_clock::time_point::max());

  // A write starts once kBatchTarget outcomes wait, or kLinger after the first of them, or at
  // FlushSoon. Under load a longer linger means fewer, larger writes, each of which on SQLite holds
  // up a claim that wants the one writer: 5 ms against 0.5 won 18 of 23 rounds at 100 workers on
  // SQLite and 7 of 8 at 1,000 on PostgreSQL (docs/benchmarks.md). River's completer waits
  // 50-250 ms.
  static constexpr size_t kBatchTarget = 512;
  static constexpr size_t kMaxBatch = 5'000;
  static constexpr size_t kBacklogLimit = 20'000;
  static constexpr auto kLinger = std::chrono::milliseconds(5);
  // PostgreSQL loses at most three times wal_writer_delay (200 ms by default) of commits that do
  // not wait for the flush.
  static constexpr auto kRewriteWindow = std::chrono::seconds(1);

 private:
  void Run();
  // Writes `batch`; with `skipped`, receives the ids of the jobs the database left unchanged;
  // `cancelled` receives those that a cancel request made cancels.
  // `sent`, if given, receives the outcomes as sent to the driver.
  Status Write(std::span<const Completion> batch, std::vector<int64_t>* skipped,
               std::vector<int64_t>* cancelled, std::vector<JobSetStateParams>* sent = nullptr);
  // With possible_losses_: writes the kept outcomes again if the count grew since the last look,
  // else forgets those written before kRewriteWindow. Writer thread only.
  void RewriteIfLost();
  // After the database refused a batch as invalid: writes its outcomes one at a time, so that one
  // outcome's data (an error history past PostgreSQL's size limit) does not hold back the others.
  // An outcome refused alone is written with a stand-in for its error text, and dropped (logged;
  // its job stays running until rescued) if that is refused too. Returns the first other error.
  Status WriteEach(std::vector<Completion>& batch, bool retrying, std::vector<int64_t>& skipped,
                   std::vector<int64_t>& cancelled);

  Executor& executor_;
  Deliver deliver_;
  Logger logger_;
  std::mutex mu_;
  std::condition_variable cv_;        // wakes the writer thread
  std::condition_variable space_cv_;  // wakes workers blocked on backpressure
  // A vector swapped out whole by the writer thread: a deque allocated a node per outcome (an
  // outcome is larger than its 512-byte nodes) and the writer moved each one under the lock.
  std::vector<Completion> pending_;  // guarded by mu_
  bool stopping_ = false;            // guarded by mu_
  // When Stop gives up on failing writes; guarded by mu_.
  std::chrono::steady_clock::time_point give_up_at_{};
  bool flush_ = false;  // FlushSoon since the last batch was taken; guarded by mu_
  const std::chrono::microseconds linger_;
  const std::atomic<uint64_t>* const possible_losses_;
  // The outcomes written lately, a batch at a time, oldest first; writer thread only.
  struct Written {
    std::chrono::steady_clock::time_point at;
    std::vector<JobSetStateParams> jobs;
  };
  std::deque<Written> recent_;
  uint64_t losses_seen_ = 0;  // writer thread only
  Status last_error_;         // guarded by mu_
  std::thread thread_;
};

}  // namespace spool::internal
