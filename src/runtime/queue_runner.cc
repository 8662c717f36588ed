#include "runtime/queue_runner.h"

#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <system_error>
#include <tuple>

#include "core/exception.h"
#include "core/failure_log.h"
#include "core/job_hooks.h"
#include "core/thread_name.h"

namespace spool::internal {
namespace {

// Upper bound on one fetch even when more slots are free: keeps a claim statement short so the
// single SQLite writer is not held for long.
constexpr int kMaxFetch = 1'000;
// After a failed fetch the producer waits, doubling from the first to the last, so a database
// that is away is not hammered; FailureLog keeps the log to a line every 10 s (a warning per
// attempt was 11 lines a second a queue).
constexpr auto kFetchErrorBackoff = std::chrono::milliseconds(100);
constexpr auto kFetchErrorBackoffMax = std::chrono::seconds(1);
// How long a producer woken by a freed slot waits for fetch_batch_ free slots before fetching
// what is free. Short enough not to matter for slow jobs, long enough for fast ones to pile up.
constexpr auto kFetchLinger = std::chrono::microseconds(500);
constexpr int kMaxFetchBatch = 200;
// Appended to the error of a job whose context a hard stop cancelled.
constexpr std::string_view kStoppedWhileRunning =
    " (the client was stopping and cancelled the jobs still running: its Stop timeout passed, or "
    "CancelRunningJobs was called)";

thread_local const Client* working_for = nullptr;

}  // namespace

const Client* WorkingFor() { return working_for; }

QueueRunner::QueueRunner(std::string name, int max_workers, RuntimeEnv env)
    : name_(std::move(name)),
      max_workers_(max_workers),
      // Three quarters: at 100 workers a half measured 3-5% slower on both databases (more,
      // smaller claims); see benchmarks.md.
      fetch_batch_(std::clamp(max_workers * 3 / 4, 1, kMaxFetchBatch)),
      env_(env),
      fetch_backoff_(kFetchErrorBackoff),
      fetch_failures_(fmt::format("queue {}: fetching jobs", name_)) {}

QueueRunner::~QueueRunner() {
  StopFetching();
  CancelAll();
  Join();
}

Status QueueRunner::Start() {
  workers_.reserve(static_cast<size_t>(max_workers_));
  try {
    for (int i = 0; i < max_workers_; ++i) {
      workers_.emplace_back([this] {
        NameThisThread("worker");
        WorkLoop();
      });
    }
    producer_ = std::thread([this] {
      NameThisThread("produce");
      ProduceLoop();
    });
  } catch (const std::system_error& e) {
    // std::thread throws when the system has no thread to give (threads-max, ulimit -u,
    // vm.max_map_count); uncaught, it ended the process.
    const size_t started = workers_.size();
    {
      std::lock_guard lock(mu_);
      exit_workers_ = true;
    }
    worker_cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    return Status::FailedPrecondition(fmt::format(
        "queue \"{}\": the system refused a thread after {} of its {} workers ({}): lower "
        "max_workers, or raise the limits on threads (ulimit -u, kernel.threads-max, "
        "vm.max_map_count)",
        name_, started, max_workers_, e.what()));
  }
  return Status::Ok();
}

void QueueRunner::Wake() {
  {
    std::lock_guard lock(mu_);
    wake_ = true;
    urgent_ = true;
    drained_ = false;
    fetch_after_.reset();
  }
  producer_cv_.notify_one();
}

int QueueRunner::ReserveForInsert(int want) {
  std::lock_guard lock(mu_);
  if (!drained_ || stop_fetching_ || cancel_all_) return 0;
  const int n = std::clamp(max_workers_ - busy_, 0, want);
  busy_ += n;
  return n;
}

void QueueRunner::StartInserted(std::vector<JobRow> claimed, int reserved) {
  std::lock_guard lock(mu_);
  const int got = static_cast<int>(claimed.size());
  if (!claimed.empty()) {
    AppendReadyLocked(std::move(claimed));
    WakeWorkerLocked();
  }
  if (got < reserved) {
    busy_ -= reserved - got;
    SlotFreedLocked(false);
  }
}

void QueueRunner::StopFetching() {
  {
    std::lock_guard lock(mu_);
    stop_fetching_ = true;
  }
  producer_cv_.notify_all();
}

bool QueueRunner::WaitIdle(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lock(mu_);
  return idle_cv_.wait_until(lock, deadline, [&] { return busy_ == 0; });
}

void QueueRunner::CancelAll() {
  std::lock_guard lock(mu_);
  cancel_all_ = true;
  for (auto& [id, running] : running_) {
    running->stop_cancelled = true;
    running->source.request_stop();
  }
  worker_cv_.notify_all();
}

bool QueueRunner::CancelJob(int64_t id, bool claimed_here) {
  std::lock_guard lock(mu_);
  auto it = running_.find(id);
  if (it != running_.end()) {
    it->second->admin_cancelled = true;
    it->second->source.request_stop();
    return true;
  }
  // Claimed but waiting for a thread: it is cancelled when a thread takes it, without running.
  for (size_t i = ready_head_; i < ready_.size(); ++i) {
    if (ready_[i].id == id) {
      cancel_at_start_.insert(id);
      return true;
    }
  }
  if (!claimed_here) return false;
  cancel_at_start_.insert(id);
  return true;
}

void QueueRunner::AppendRunningIds(std::vector<int64_t>* ids) {
  std::lock_guard lock(mu_);
  for (const auto& [id, _] : running_) ids->push_back(id);
  for (size_t i = ready_head_; i < ready_.size(); ++i) ids->push_back(ready_[i].id);
}

void QueueRunner::Join() {
  if (producer_.joinable()) producer_.join();
  {
    std::unique_lock lock(mu_);
    // Claimed jobs still waiting for a thread are run (soft stop) or handed back (hard stop) by
    // the worker threads before they exit, so no claimed job is left behind.
    idle_cv_.wait(lock, [&] { return busy_ == 0; });
    exit_workers_ = true;
  }
  worker_cv_.notify_all();
  for (auto& t : workers_) {
    if (t.joinable()) t.join();
  }
  workers_.clear();
}

void QueueRunner::ProduceLoop() {
  std::unique_lock lock(mu_);
  while (!stop_fetching_) {
    if (fetch_failed_) {
      // The last claim failed, here or in a worker: wait before the next, doubling the wait.
      producer_cv_.wait_for(lock, fetch_backoff_, [&] { return stop_fetching_; });
      if (stop_fetching_) break;
      fetch_backoff_ =
          std::min<std::chrono::steady_clock::duration>(fetch_backoff_ * 2, kFetchErrorBackoffMax);
    }
    // While claimed jobs wait for a thread, the worker that runs the last of them claims the next
    // batch (WorkLoop); the producer claims meanwhile only after a wake (urgent_) or when many
    // slots are free (SlotFreedLocked).
    const auto may_fetch = [&] {
      return busy_ < max_workers_ && !fetching_ &&
             (urgent_ || !HasReadyLocked() || max_workers_ - busy_ >= kMaxFetchBatch);
    };
    if (!wake_ || !may_fetch()) {
      const bool woken = producer_cv_.wait_for(lock, env_.options.poll_interval, [&] {
        return stop_fetching_ || fetch_failed_ || (wake_ && may_fetch());
      });
      if (stop_fetching_) break;
      if (fetch_failed_) continue;
      // On timeout fetch anyway (fallback poll), provided a slot is free.
      if (!woken && !may_fetch()) continue;
    }
    if (!urgent_ && max_workers_ - busy_ < fetch_batch_) {
      producer_cv_.wait_for(lock, kFetchLinger, [&] {
        return stop_fetching_ || urgent_ || (max_workers_ - busy_ >= fetch_batch_ && may_fetch());
      });
      if (stop_fetching_) break;
      // An insert may have claimed the free slots meanwhile (ReserveForInsert), or a worker
      // claimed them.
      if (!may_fetch()) continue;
    }
    FetchLocked(lock, false);
  }
}

void QueueRunner::FetchLocked(std::unique_lock<std::mutex>& lock, bool by_worker) {
  fetching_ = true;
  wake_ = false;
  urgent_ = false;
  const int n = std::min(max_workers_ - busy_, kMaxFetch);
  busy_ += n;  // reserve the slots while the fetch runs unlocked
  const TimePoint fetch_at = env_.clock.Now();
  if (fetch_after_ && fetch_at - fetched_from_start_at_ >= env_.options.poll_interval) {
    fetch_after_.reset();
  }
  if (!fetch_after_) fetched_from_start_at_ = fetch_at;
  const std::optional<FetchPosition> after = fetch_after_;
  lock.unlock();
  auto rows = env_.executor.JobGetAvailable(
      {.queue = name_, .max = n, .client_id = env_.client_id, .now = fetch_at, .after = after});
  lock.lock();
  fetching_ = false;
  fetch_after_.reset();
  if (!rows) {
    drained_ = false;
    busy_ -= n;
    BusyDroppedLocked();
    fetch_failures_.Failed(
        env_.logger, rows.error(),
        fmt::format("retrying every {} ms",
                    std::chrono::duration_cast<std::chrono::milliseconds>(fetch_backoff_).count()));
    fetch_failed_ = true;
    wake_ = true;
    producer_cv_.notify_one();
    return;
  }
  if (fetch_failed_) {
    fetch_failures_.Succeeded(env_.logger);
    fetch_failed_ = false;
    fetch_backoff_ = kFetchErrorBackoff;
  }
  const int got = static_cast<int>(rows->size());
  busy_ -= n - got;
  // A wake during the fetch may be for jobs it did not see.
  drained_ = got < n && !wake_;
  BusyDroppedLocked();
  if (got == n && !wake_) {
    const JobRow& last =
        *std::max_element(rows->begin(), rows->end(), [](const JobRow& a, const JobRow& b) {
          return std::tie(a.priority, a.scheduled_at, a.id) <
                 std::tie(b.priority, b.scheduled_at, b.id);
        });
    fetch_after_ =
        FetchPosition{.priority = last.priority, .scheduled_at = last.scheduled_at, .id = last.id};
  }
  AppendReadyLocked(std::move(*rows));
  // A full batch means more may be waiting: fetch again as soon as enough slots free.
  if (got == n) wake_ = true;
  // A worker that claimed takes the first job itself and wakes the next (WorkLoop).
  if (!by_worker) WakeWorkerLocked();
  // A wake that came during a worker's fetch found the producer unable to fetch.
  if (urgent_) producer_cv_.notify_one();
}

bool QueueRunner::WorkerFetchesLocked() const {
  if (!wake_ || fetching_ || fetch_failed_ || stop_fetching_ || cancel_all_) return false;
  // Only once no claimed job waits for a thread: the claim then takes every slot the batch
  // freed. Beside waiting jobs the producer claims, and only when many slots are free
  // (SlotFreedLocked, docs/benchmarks.md).
  return !HasReadyLocked() && max_workers_ - busy_ >= fetch_batch_;
}

void QueueRunner::WorkLoop() {
  std::unique_lock lock(mu_);
  bool worked = false;  // this thread has just run a job
  for (;;) {
    if (worked && WorkerFetchesLocked()) {
      // This thread ran the last job claimed and enough slots are free: it claims the next batch
      // and works it, without waking the producer (see WorkerFetchesLocked).
      FetchLocked(lock, true);
    }
    worked = false;
    while (!HasReadyLocked() && !exit_workers_) {
      ++idle_workers_;
      worker_cv_.wait(lock);
      --idle_workers_;
      // Any wake-up consumes the one in flight; a spurious one only allows an extra wake-up.
      if (wakes_in_flight_ > 0) --wakes_in_flight_;
    }
    if (!HasReadyLocked()) return;
    JobRow job = std::move(ready_[ready_head_++]);
    if (ready_head_ == ready_.size()) {
      ready_.clear();
      ready_head_ = 0;
      // Slots that free from here on may be the producer's to claim (SlotFreedLocked).
      announce_free_ = true;
    }
    WakeWorkerLocked();
    // An admin cancelled it while it waited for this thread, or a hard stop came first.
    const bool cancelled = !cancel_at_start_.empty() && cancel_at_start_.erase(job.id) > 0;
    if (cancelled || cancel_all_) {
      lock.unlock();
      EndUnstarted(std::move(job), cancelled);
      lock.lock();
    } else {
      Running running;
      running_.emplace(job.id, &running);
      const int64_t id = job.id;
      lock.unlock();
      // Work runs here; whatever it throws becomes the outcome.
      [&] {
        WorkerBase* worker = env_.workers.Find(job.kind);
        const Duration timeout = JobTimeout(worker, env_.options, job, env_.logger);
        std::atomic<bool> timed_out{false};
        std::optional<TimePoint> deadline;
        if (timeout > Duration::zero()) {
          deadline = env_.clock.Now() + timeout;
          env_.deadlines.Add(id, *deadline, running.source, &timed_out);
        }
        JobContext ctx(job, env_.client, running.source.get_token(), deadline, env_.logger);
        const auto t0 = std::chrono::steady_clock::now();
        Outcome outcome = Outcome::Done();
        std::string trace;
        if (worker == nullptr) {
          outcome = Outcome::Fail(fmt::format(
              "no worker registered for kind \"{}\": register one with Workers::Add in the "
              "process that works queue \"{}\", or delete the job",
              job.kind, name_));
        } else {
          working_for = &env_.client;
          try {
            outcome = worker->WorkJob(ctx);
          } catch (...) {
            CaughtException caught = DescribeCurrentException();
            trace = StorableErrorText(std::move(caught.type));
            outcome = Outcome::Fail(std::move(caught.message));
          }
          working_for = nullptr;
        }
        const auto run_time =
            std::chrono::duration_cast<Duration>(std::chrono::steady_clock::now() - t0);
        if (deadline) env_.deadlines.Remove(id);
        Completion c = MakeCompletion(std::move(job), outcome, timed_out.load(),
                                      running.admin_cancelled.load(), running.stop_cancelled.load(),
                                      timeout, run_time);
        if (c.params.error && !trace.empty()) {
          c.params.error->trace = trace;
          c.event.job.errors.back().trace = trace;
        }
        env_.completer.Add(std::move(c));
      }();
      lock.lock();
      running_.erase(id);
    }
    --busy_;
    SlotFreedLocked(true);
    worked = true;
  }
}

void QueueRunner::EndUnstarted(JobRow job, bool cancelled) {
  const TimePoint now = env_.clock.Now();
  const AttemptError cancel{
      .at = now, .attempt = job.attempt, .error = "cancelled by an admin before it started"};
  Completion c;
  c.params = {.id = job.id,
              .attempt = job.attempt,
              .state = cancelled ? JobState::kCancelled : JobState::kScheduled,
              .at = now,
              .attempted_at = job.attempted_at};
  if (cancelled) {
    c.params.error = cancel;
    job.errors.push_back(cancel);
    job.finalized_at = now;
  } else {
    // Given back without using an attempt, and without an event (it did not run), unless the
    // driver finds a cancel requested in its row.
    c.params.if_cancel_requested = cancel;
    c.silent = true;
    job.attempt -= 1;
  }
  job.state = c.params.state;
  c.event = {.kind = cancelled ? Event::Kind::kJobCancelled : Event::Kind::kJobSnoozed,
             .job = std::move(job),
             .run_time = {}};
  c.event.queue = c.event.job.queue;
  env_.completer.Add(std::move(c));
}

void QueueRunner::AppendReadyLocked(std::vector<JobRow> rows) {
  if (!HasReadyLocked()) {
    ready_.swap(rows);
  } else {
    // Drop the rows already taken first, or under steady load (never drained) they would pile
    // up; what is still waiting is at most a few batches.
    ready_.erase(ready_.begin(), ready_.begin() + static_cast<std::ptrdiff_t>(ready_head_));
    for (auto& row : rows) ready_.push_back(std::move(row));
  }
  ready_head_ = 0;
}

void QueueRunner::WakeWorkerLocked() {
  // At most one wake-up in flight, and only to a sleeping worker: a woken worker that takes a job
  // wakes the next if jobs remain. Fast jobs are then drained by the few threads already running
  // instead of every idle thread being woken (and context-switched) for one job each; slow jobs
  // still fan out, one wake-up per job taken. Busy workers take ready jobs without a wake-up.
  if (!HasReadyLocked() || wakes_in_flight_ > 0 || idle_workers_ == 0) return;
  ++wakes_in_flight_;
  worker_cv_.notify_one();
}

void QueueRunner::BusyDroppedLocked() {
  if (busy_ != 0) return;
  idle_cv_.notify_all();
  // The queue ran dry (the last claim came up short) and no job of it runs: none of its outcomes
  // is coming soon, so the completer's next write need not wait out the linger.
  if (drained_) env_.completer.FlushSoon();
}

void QueueRunner::SlotFreedLocked(bool by_worker) {
  BusyDroppedLocked();
  // The worker claims the next batch itself (WorkLoop).
  if (by_worker && WorkerFetchesLocked()) return;
  // While claimed jobs wait for a thread, their threads take the free slots, and a claim beside
  // them is worth it only when it is large: on PostgreSQL at 1,000 workers one of 200 or more
  // keeps the claims running back to back, as they are the slowest step there.
  if (HasReadyLocked()) {
    if (max_workers_ - busy_ == kMaxFetchBatch) producer_cv_.notify_one();
    return;
  }
  // Otherwise the producer claims. It needs to hear of the first free slot (to start lingering)
  // and of enough free slots for a batch (to stop lingering); every other free slot would be a
  // wasted wake-up. Slots freed while jobs waited for a thread were not announced.
  const int free = max_workers_ - busy_;
  if (announce_free_ || free == 1 || free == fetch_batch_ || busy_ == 0) {
    announce_free_ = false;
    producer_cv_.notify_one();
  }
}

Completion QueueRunner::MakeCompletion(JobRow job, const Outcome& outcome, bool timed_out,
                                       bool admin_cancelled, bool stop_cancelled, Duration timeout,
                                       Duration run_time) const {
  const TimePoint now = env_.clock.Now();
  Completion c;
  c.params.id = job.id;
  c.params.attempt = job.attempt;  // before a snooze takes it back
  c.params.attempted_at = job.attempted_at;
  c.event.run_time = run_time;
  // Every error text of an attempt passes here: what Work returned (or threw) is the user's, and
  // one the database refuses would hold back every outcome written with it.
  auto record_error = [&](std::string message) {
    AttemptError e{.at = now,
                   .attempt = job.attempt,
                   .error = StorableErrorText(std::move(message)),
                   .trace = {}};
    job.errors.push_back(e);
    c.params.error = std::move(e);
  };
  // Made only for outcomes a cancel can replace: nearly every job completes, and the text does
  // not fit a short string.
  const auto admin_cancel = [&] {
    return AttemptError{
        .at = now,
        .attempt = job.attempt,
        .error = outcome.message().empty()
                     ? std::string("cancelled by an admin while running")
                     : StorableErrorText("cancelled by an admin while running; Work returned: " +
                                         outcome.message())};
  };
  if (admin_cancelled && outcome.kind() != Outcome::Kind::kDone) {
    // An admin's cancel wins over a retry or snooze: the job stops for good.
    c.params.state = JobState::kCancelled;
    c.params.at = now;
    c.event.kind = Event::Kind::kJobCancelled;
    record_error(admin_cancel().error);
  } else {
    switch (outcome.kind()) {
      case Outcome::Kind::kDone:
        c.params.state = JobState::kCompleted;
        c.params.at = now;
        c.event.kind = Event::Kind::kJobCompleted;
        // Its work is done, so it is not run again; but the history keeps that it overran.
        if (timed_out) {
          record_error(fmt::format(
              "job timed out after {}; Work returned success after its deadline, so the job is "
              "completed",
              FormatDuration(timeout)));
        }
        break;
      case Outcome::Kind::kSnooze:
        c.params.state = JobState::kScheduled;
        c.params.at = now + ClampDelay(outcome.snooze_delay());
        c.params.snooze = true;
        c.event.kind = Event::Kind::kJobSnoozed;
        job.attempt -= 1;
        break;
      case Outcome::Kind::kCancel: {
        c.params.state = JobState::kCancelled;
        c.params.at = now;
        c.event.kind = Event::Kind::kJobCancelled;
        // The worker's word is kept, but the history says why its context was cancelled: a
        // worker that gives up once its context is cancelled may be answering the timeout.
        std::string message = outcome.message().empty() ? std::string("cancelled by its worker")
                                                        : "cancelled: " + outcome.message();
        if (timed_out) {
          message = fmt::format("job timed out after {}; {}", FormatDuration(timeout), message);
        } else if (stop_cancelled) {
          message += kStoppedWhileRunning;
        }
        record_error(std::move(message));
        break;
      }
      case Outcome::Kind::kFail: {
        std::string message =
            outcome.message().empty() ? "job failed (no message)" : outcome.message();
        if (timed_out) {
          message = fmt::format("job timed out after {}; Work returned: {}",
                                FormatDuration(timeout), message);
        } else if (stop_cancelled) {
          message += kStoppedWhileRunning;
        }
        record_error(std::move(message));
        if (job.attempt >= job.max_attempts) {
          c.params.state = JobState::kDiscarded;
          c.params.at = now;
          c.event.kind = Event::Kind::kJobDiscarded;
        } else {
          c.params.state = JobState::kRetryable;
          c.params.at =
              now + RetryDelay(env_.workers.Find(job.kind), env_.retry_policy, job, env_.logger);
          c.event.kind = Event::Kind::kJobFailed;
        }
        break;
      }
    }
  }
  // A cancel requested that this runner has not seen yet (another process's, read at the next
  // check) also wins; the driver looks in the row when it writes the outcome.
  if (c.params.state == JobState::kRetryable || c.params.state == JobState::kScheduled ||
      c.params.state == JobState::kDiscarded) {
    c.params.if_cancel_requested = admin_cancel();
  }
  job.state = c.params.state;
  if (IsFinalState(c.params.state)) {
    job.finalized_at = c.params.at;
  } else {
    job.scheduled_at = c.params.at;
  }
  c.event.queue = job.queue;
  c.event.job = std::move(job);
  return c;
}

}  // namespace spool::internal
