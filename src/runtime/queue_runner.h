#pragma once

#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "core/failure_log.h"
#include "driver/driver.h"
#include "runtime/completer.h"
#include "runtime/deadline_watcher.h"
#include "spool/client.h"

namespace spool::internal {

// The client whose job's Work runs on this thread, else nullptr: Client::Stop refuses to wait
// for the job that called it.
const Client* WorkingFor();

// What a queue runner borrows from its client; all outlive the runner.
struct RuntimeEnv {
  Executor& executor;
  const Clock& clock;
  const Workers& workers;
  const ClientOptions& options;
  const RetryPolicy& retry_policy;
  Completer& completer;
  DeadlineWatcher& deadlines;
  Client& client;
  const Logger& logger;
  const std::string& client_id;
};

// Works one queue: batches of available jobs are claimed, never more than the free worker slots,
// and `max_workers` threads run them and hand outcomes to the completer. The worker that runs the
// last job of a batch claims the next when enough slots are free, so a backlog of fast jobs is
// claimed and worked without a thread waking another to claim; a producer thread claims after a
// wake (an insert, a due job) or a poll, when slow jobs free slots a few at a time, and beside
// jobs still waiting when many slots are free.
class QueueRunner {
 public:
  QueueRunner(std::string name, int max_workers, RuntimeEnv env);
  ~QueueRunner();

  // Starts the worker threads and the producer. When the system refuses a thread, ends those it
  // started and returns the error (ResourceExhausted is not a code: FailedPrecondition).
  Status Start();
  // Asks the producer to fetch now (jobs were inserted or became due).
  void Wake();
  // Reserves up to `want` free worker slots for jobs about to be claimed as they are inserted:
  // none while stopping or when available jobs may be waiting (the last fetch was full, or a
  // wake came since), so such an insert never overtakes an earlier job. Every reserved slot is
  // handed back by StartInserted.
  int ReserveForInsert(int want);
  // Runs `claimed` (rows the insert claimed for this client, at most `reserved`) and frees the
  // rest of the `reserved` slots.
  void StartInserted(std::vector<JobRow> claimed, int reserved);
  // Soft stop: no more fetches. Running and already-claimed jobs continue.
  void StopFetching();
  // Waits until no job is running or `deadline` passes; true if none is running.
  bool WaitIdle(std::chrono::steady_clock::time_point deadline);
  // Hard stop: cancels every running job's context; claimed jobs that have not started are
  // handed back (available again, attempt not used).
  void CancelAll();
  // Joins every thread. REQUIRES: StopFetching, and the runner is idle or cancelled.
  void Join();
  // Cancels the context of running job `id` because an admin cancelled it; it then ends
  // cancelled unless it completes. A job claimed here that waits for a thread is cancelled
  // without running; so is one not seen here yet when `claimed_here` (its claim is on its way
  // to the threads). False if the job is none of these.
  bool CancelJob(int64_t id, bool claimed_here = false);
  // Ids of the jobs running here now, and of those claimed here waiting for a thread.
  void AppendRunningIds(std::vector<int64_t>* ids);

  const std::string& name() const { return name_; }

 private:
  struct Running {
    std::stop_source source;
    std::atomic<bool> admin_cancelled{false};
    std::atomic<bool> stop_cancelled{false};  // by a hard stop (CancelAll)
  };
  void ProduceLoop();
  void WorkLoop();
  // Claims up to the free slots (at most kMaxFetch) and queues the rows; mu_ is unlocked while the
  // claim runs. `by_worker`: a worker claims, and takes the first job itself. REQUIRES: `lock`
  // holds mu_, !fetching_.
  void FetchLocked(std::unique_lock<std::mutex>& lock, bool by_worker);
  // Whether a worker that has just run a job claims the next batch itself.
  bool WorkerFetchesLocked() const;
  Completion MakeCompletion(JobRow job, const Outcome& outcome, bool timed_out,
                            bool admin_cancelled, bool stop_cancelled, Duration timeout,
                            Duration run_time) const;
  // Called with mu_ held after busy_ went down: at zero, tells WaitIdle and, if the queue ran
  // dry, the completer.
  void BusyDroppedLocked();
  // Called with mu_ held after slots were freed (`by_worker`: by a worker that goes on to
  // WorkLoop's next step): wakes the producer only when it is worth a fetch.
  void SlotFreedLocked(bool by_worker);
  void WakeWorkerLocked();
  // Queues claimed rows for the workers (their slots are already counted in busy_).
  void AppendReadyLocked(std::vector<JobRow> rows);
  // Ends a claimed job that will not run: `cancelled` by an admin while it waited for a thread,
  // or handed back at a hard stop. Called without mu_.
  void EndUnstarted(JobRow job, bool cancelled);
  bool HasReadyLocked() const { return ready_head_ < ready_.size(); }

  const std::string name_;
  const int max_workers_;
  // Free slots worth a fetch without lingering: fetching one job per freed slot would cost one
  // statement per job under load.
  const int fetch_batch_;
  RuntimeEnv env_;

  std::mutex mu_;
  std::condition_variable producer_cv_;  // wake or free slot or stop
  std::condition_variable worker_cv_;    // ready job or stop
  std::condition_variable idle_cv_;      // busy_ reached 0
  // Claimed, waiting for a thread: ready_[ready_head_..] (a deque allocated a node per row, which
  // is larger than its 512-byte nodes). Guarded by mu_.
  std::vector<JobRow> ready_;
  size_t ready_head_ = 0;
  // Ready jobs an admin cancelled before a thread took them; guarded by mu_.
  std::set<int64_t> cancel_at_start_;
  int busy_ = 0;             // claimed and not finished; guarded by mu_
  int idle_workers_ = 0;     // workers waiting on worker_cv_; guarded by mu_
  int wakes_in_flight_ = 0;  // notify_one calls not yet consumed; guarded by mu_
  // The ready jobs ran out since the producer last heard of free slots; guarded by mu_.
  bool announce_free_ = false;
  bool fetching_ = false;  // a claim runs, the producer's or a worker's; guarded by mu_
  // The last claim failed: only the producer claims, after this backoff (doubling up to a
  // limit). Guarded by mu_.
  bool fetch_failed_ = false;
  std::chrono::steady_clock::duration fetch_backoff_;
  FailureLog fetch_failures_;  // guarded by mu_
  bool wake_ = true;           // guarded by mu_
  bool urgent_ = true;         // a wake from an insert: fetch without lingering
  // The last fetch got fewer jobs than it asked for and no wake came since: no available job
  // of this queue is known to wait. Guarded by mu_.
  bool drained_ = false;
  // Where the last fetch that filled its batch ended (JobGetAvailableParams::after), so the next
  // starts there while a backlog drains. Dropped by a wake (an insert, a due or retried job may
  // come before it), by a fetch that was not full or failed, and poll_interval after the last
  // fetch from the start: a job that came before it without a wake (a claim another process
  // rolled back, a setup without notifications) waits at most that long. Guarded by mu_.
  std::optional<FetchPosition> fetch_after_;
  TimePoint fetched_from_start_at_{};    // guarded by mu_
  bool stop_fetching_ = false;           // guarded by mu_
  bool cancel_all_ = false;              // guarded by mu_
  bool exit_workers_ = false;            // guarded by mu_
  std::map<int64_t, Running*> running_;  // guarded by mu_

  std::thread producer_;
  std::vector<std::thread> workers_;
};

}  // namespace spool::internal
