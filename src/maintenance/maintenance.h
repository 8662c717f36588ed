#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/cron.h"
#include "core/failure_log.h"
#include "driver/driver.h"
#include "spool/client.h"

namespace spool::internal {

// What the maintenance service borrows from its client; all outlive it.
struct MaintenanceEnv {
  Driver& driver;
  const Clock& clock;
  const Workers& workers;
  const ClientOptions& options;
  const RetryPolicy& retry_policy;
  const Logger& logger;
  const std::string& client_id;
  // Wakes this client's producers of `queue` (jobs became available).
  std::function<void(const std::string& queue)> wake_queue;
};

// The client's background upkeep, on one thread:
// - every client: heartbeats its spool_client row, and tries to become leader (one lease row).
// - the leader only: rescues jobs stuck running (their client stopped heartbeating, or they ran
//   past their timeout by a margin), deletes old finalized jobs, and enqueues periodic jobs,
//   each tick exactly once across processes (the last enqueued tick is stored).
// Times written to the database come from the client's Clock; the thread re-reads it at least
// every kMaxNap so a FakeClock drives it in tests (with the system clock it sleeps until the next
// task is due: see MaxNap). Thread safe.
class Maintenance {
 public:
  explicit Maintenance(MaintenanceEnv env);
  ~Maintenance();

  // REQUIRES: every periodic job was validated (see ParsePeriodicJobs).
  Status Start();
  // Resigns leadership and removes this client's row. Idempotent.
  void Stop();
  // True while the last lease this client confirmed has not run out by its clock.
  bool is_leader() const;

  static constexpr auto kMaxNap = std::chrono::milliseconds(50);

 private:
  struct Periodic {
    PeriodicJob job;
    CronSchedule schedule;
  };
  void Run();
  void Heartbeat(TimePoint now);
  void Elect(TimePoint now);
  void Rescue(TimePoint now);
  // One round of deletions; true when a state had more to delete than a round takes.
  bool Clean(TimePoint now);
  // Enqueues due periodic jobs; returns when the next one is due.
  TimePoint EnqueuePeriodic(TimePoint now);
  Status EnqueueOne(Periodic& p, TimePoint now, TimePoint* next_due);
  void Log(LogLevel level, const std::string& message) const;

  MaintenanceEnv env_;
  const Duration max_nap_;
  std::vector<Periodic> periodic_;
  // When this client started or last failed to reach the database (heartbeat, election,
  // rescuer). A client is judged dead by its missing heartbeats only once this one has been
  // reaching the database for client_stale_after: after an outage every heartbeat is old, and the
  // live clients need that long to send one again. Used by the maintenance thread only (and by
  // Start before it runs).
  TimePoint trouble_at_{};
  // When Start ran: the jobs this client runs were all attempted since; older ones under its id
  // are a previous process's.
  TimePoint started_at_{};
  // Maintenance thread only (and Start, before it runs).
  FailureLog heartbeat_failures_{"heartbeat"};
  FailureLog schema_failures_{"checking spool's schema version"};
  FailureLog elect_failures_{"leader election"};
  FailureLog rescue_failures_{"rescuer: listing stuck jobs"};
  FailureLog clean_failures_{"cleaner: deleting old finished jobs"};
  // Another running process heartbeats under this client's id (the rescuer cannot tell them
  // apart).
  FailureLog shared_id_{"client id check", std::chrono::minutes(1), LogLevel::kError};
  // A heartbeat was written: the row's started_at is this client's from then on, unless another
  // process writes its own (before, a row left by a process that ended is expected).
  bool heartbeat_written_ = false;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  bool leader_ = false;    // guarded by mu_
  // End of the lease last confirmed, counted from before the call that confirmed it: past it
  // another client may be elected, so this one must not act as leader even while its renewal
  // is still stuck in the database. Guarded by mu_.
  TimePoint lease_until_{};
  std::thread thread_;
};

// Validates the periodic jobs of `opts`: unique names, cron expressions, time zones, kinds, args
// (a JSON object the kind's worker in `workers`, if any, can read).
// InvalidArgument naming the job and what is wrong.
Status ValidatePeriodicJobs(const ClientOptions& opts, const Workers& workers);

}  // namespace spool::internal
