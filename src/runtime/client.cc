#include "spool/client.h"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <random>
#include <span>
#include <thread>

#include "core/exception.h"
#include "core/failure_log.h"
#include "core/thread_name.h"
#include "core/unique.h"
#include "core/url.h"
#include "driver/driver.h"
#include "maintenance/maintenance.h"
#include "runtime/completer.h"
#include "runtime/deadline_watcher.h"
#include "runtime/queue_runner.h"

namespace spool {

using internal::Completer;
using internal::Completion;
using internal::DeadlineWatcher;
using internal::Driver;
using internal::Maintenance;
using internal::QueueRunner;

namespace {

constexpr auto kDestructorStopTimeout = std::chrono::seconds(5);
constexpr auto kLoopErrorBackoff = std::chrono::milliseconds(200);
// Due jobs made available per scheduler statement.
constexpr int kScheduleBatch = 10'000;
// Other processes' cancel requests for our running jobs are looked up at most this often when
// changes stream in, and at least every poll interval.
constexpr auto kCancelCheckMinInterval = std::chrono::milliseconds(50);

std::string MakeClientId() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  std::random_device rd;
  return fmt::format("{}-{}-{:06x}", host[0] ? host : "host", getpid(), rd() & 0xffffffu);
}

// True when `args` is JSON text holding an object. "{}" is by far the most common and skips the
// parser.
bool IsJsonObject(std::string_view args) {
  if (args == "{}") return true;
  const auto first = args.find_first_not_of(" \t\r\n");
  return first != std::string_view::npos && args[first] == '{' && nlohmann::json::accept(args);
}

// "850ms", "16s", "5m12s", "2h46m": a wait as an operator reads it.
std::string ForHumans(Duration d) {
  using std::chrono::duration_cast;
  const int64_t ms = duration_cast<std::chrono::milliseconds>(d).count();
  if (ms < 1000) return fmt::format("{}ms", std::max<int64_t>(ms, 0));
  const int64_t s = (ms + 500) / 1000;
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{}s", s / 60, s % 60);
  return fmt::format("{}h{}m", s / 3600, s % 3600 / 60);
}

// One line for an outcome an operator may need to act on, once it is written: failed and
// discarded attempts (warn, with their error), cancels (info), snoozes (debug). Completions are
// not logged: at thousands a second they would bury everything else.
void LogOutcome(const Logger& log, const Event& e) {
  const JobRow& j = e.job;
  if (e.kind == Event::Kind::kJobSnoozed) {
    log(LogLevel::kDebug,
        fmt::format("job {} ({}) snoozed until {}", j.id, j.kind, FormatTime(j.scheduled_at)));
    return;
  }
  // Failed, discarded and cancelled attempts always carry the error that ended them; a plain
  // completion carries none and stops here.
  if (j.errors.empty()) return;
  const AttemptError& last = j.errors.back();
  switch (e.kind) {
    case Event::Kind::kJobFailed:
      log(LogLevel::kWarn,
          fmt::format("job {} ({}) failed on attempt {} of {}, retried in {}: {}", j.id, j.kind,
                      j.attempt, j.max_attempts, ForHumans(j.scheduled_at - last.at), last.error));
      break;
    case Event::Kind::kJobDiscarded:
      log(LogLevel::kWarn, fmt::format("job {} ({}) discarded after attempt {} of {}: {}", j.id,
                                       j.kind, j.attempt, j.max_attempts, last.error));
      break;
    case Event::Kind::kJobCancelled:
      log(LogLevel::kInfo,
          fmt::format("job {} ({}) on attempt {}: {}", j.id, j.kind, j.attempt, last.error));
      break;
    default:
      break;
  }
}

}  // namespace

std::string_view EventKindName(Event::Kind kind) {
  switch (kind) {
    case Event::Kind::kJobCompleted:
      return "job_completed";
    case Event::Kind::kJobFailed:
      return "job_failed";
    case Event::Kind::kJobDiscarded:
      return "job_discarded";
    case Event::Kind::kJobSnoozed:
      return "job_snoozed";
    case Event::Kind::kJobCancelled:
      return "job_cancelled";
    case Event::Kind::kQueuePaused:
      return "queue_paused";
    case Event::Kind::kQueueResumed:
      return "queue_resumed";
  }
  return "unknown";
}

// `logger` with its exceptions dropped: it is called on the client's threads (the completer's,
// the workers'), where one would end the process.
Logger CatchingLogger(Logger logger) {
  return [logger = std::move(logger)](LogLevel level, std::string_view message) {
    try {
      logger(level, message);
    } catch (...) {  // NOLINT(bugprone-empty-catch): the line is lost, the client goes on
    }
  };
}

class Client::Impl {
 public:
  Impl(std::unique_ptr<Driver> driver, ClientOptions options, Workers workers)
      : driver_(std::move(driver)),
        options_(std::move(options)),
        workers_(std::move(workers)),
        clock_(options_.clock ? options_.clock : std::make_shared<SystemClock>()),
        retry_policy_(options_.retry_policy ? options_.retry_policy
                                            : std::make_shared<DefaultRetryPolicy>()),
        logger_(CatchingLogger(options_.logger ? options_.logger : StderrLogger(LogLevel::kWarn))),
        client_id_(options_.client_id.empty() ? MakeClientId() : options_.client_id),
        completer_(
            driver_->executor(), [this](const auto& batch) { Deliver(batch); }, logger_,
            Completer::kLinger, driver_->PossibleCommitLosses()),
        deadlines_(*clock_) {}

  ~Impl() = default;

  Status Start(Client& self) {
    std::lock_guard lock(lifecycle_mu_);
    if (state_ != LifeState::kNew) {
      return Status::FailedPrecondition(state_ == LifeState::kStarted
                                            ? "client already started"
                                            : "client was stopped: open a new one to start again");
    }
    if (options_.queues.empty()) {
      return Status::FailedPrecondition(
          "no queues to work: set ClientOptions.queues, e.g. {{\"default\", {.max_workers = 10}}}");
    }
    // A failure from here on (the system refusing a thread, which std::thread throws and which
    // uncaught ended the process) stops what started, as Stop does, and leaves the client
    // stopped: the caller gets the error.
    state_ = LifeState::kStarted;
    const auto fail = [&](Status st) {
      (void)StopLocked(Duration::zero());
      return st;
    };
    try {
      completer_.Start();
      deadlines_.Start();
      internal::RuntimeEnv env{driver_->executor(), *clock_,    workers_, options_, *retry_policy_,
                               completer_,          deadlines_, self,     logger_,  client_id_};
      background_stop_ = false;
      // Before any runner claims a job: Maintenance::Start writes this client's first heartbeat,
      // and a running job whose client has no heartbeat row looks abandoned to the leader.
      maintenance_ = std::make_unique<Maintenance>(internal::MaintenanceEnv{
          *driver_, *clock_, workers_, options_, *retry_policy_, logger_, client_id_,
          [this](const std::string& queue) { WakeQueue(queue); }});
      if (Status st = maintenance_->Start(); !st.ok()) return fail(st);
      for (const auto& [name, q] : options_.queues) {
        auto runner = std::make_unique<QueueRunner>(name, q.max_workers, env);
        if (Status st = runner->Start(); !st.ok()) {
          int total = 0;
          for (const auto& [_, each] : options_.queues) total += each.max_workers;
          return fail(Status::FailedPrecondition(fmt::format(
              "{} (the client's queues ask for {} worker threads in all)", st.message(), total)));
        }
        std::lock_guard rl(lifecycle_mu_runners_);
        runners_.emplace(name, std::move(runner));
      }
      scheduler_ = std::thread([this] {
        internal::NameThisThread("schedule");
        ScheduleLoop();
      });
      notifier_ = std::thread([this] {
        internal::NameThisThread("notify");
        NotifyLoop();
      });
    } catch (const std::system_error& e) {
      return fail(Status::FailedPrecondition(
          fmt::format("the system refused a thread ({}): lower max_workers, or raise the limits "
                      "on threads (ulimit -u, kernel.threads-max, vm.max_map_count)",
                      e.what())));
    }
    return Status::Ok();
  }

  Status Stop(std::optional<Duration> timeout) {
    // Stop waits for the thread it would be called on: refused rather than a hang for good
    // (Client::Stop refuses a call from a job's Work).
    if (OnDeliveringThread()) {
      return Status::FailedPrecondition(
          "Stop was called from an event subscriber, and would wait for the thread that runs it: "
          "call it from another thread");
    }
    if (timeout) timeout = std::min(*timeout, kMaxDelay);  // steady_clock counts nanoseconds
    std::lock_guard lock(lifecycle_mu_);
    if (state_ != LifeState::kStarted) {
      state_ = LifeState::kStopped;
      return stop_status_;  // a second Stop tells what the first found
    }
    stop_status_ = StopLocked(timeout);
    return stop_status_;
  }

  // Stop's work, with lifecycle_mu_ held and the client started.
  Status StopLocked(std::optional<Duration> timeout) {
    // A stalled database (a lock on spool's table, a frozen server) held every step below for
    // as long as it stalled: an audit's Stop(2s) took 42 s behind a 45 s lock. Past the timeout
    // and kStopStall more, the statements still running are cancelled, each second, and the
    // loops, seeing the stop, give up on them (unwritten outcomes are rescued later).
    const auto give_up_at =
        std::chrono::steady_clock::now() + timeout.value_or(Duration::zero()) + kStopStall;
    StopWatchdog watchdog(*driver_, logger_, give_up_at);
    for (auto& [_, r] : runners_) r->StopFetching();
    bool idle = true;
    if (timeout) {
      const auto deadline = std::chrono::steady_clock::now() + *timeout;
      for (auto& [_, r] : runners_) idle = r->WaitIdle(deadline) && idle;
    } else {
      idle = false;
    }
    if (!idle) {
      if (timeout) {
        logger_(LogLevel::kWarn, "stop timeout passed with jobs still running: cancelling them");
      }
      for (auto& [_, r] : runners_) r->CancelAll();
    }
    for (auto& [_, r] : runners_) r->Join();
    {
      std::lock_guard bg(background_mu_);
      background_stop_ = true;
    }
    background_cv_.notify_all();
    driver_->Interrupt();
    if (scheduler_.joinable()) scheduler_.join();
    if (notifier_.joinable()) notifier_.join();
    deadlines_.Stop();
    Status st = completer_.Stop(give_up_at);
    // After the last outcome is written: the rescuer must not see this client's jobs as
    // abandoned, and resigning lets another process lead at once.
    if (maintenance_) maintenance_->Stop();
    {
      std::lock_guard rl(lifecycle_mu_runners_);
      runners_.clear();
    }
    state_ = LifeState::kStopped;
    return st;
  }

  bool started() {
    std::lock_guard lock(lifecycle_mu_);
    return state_ == LifeState::kStarted;
  }

  static constexpr auto kStopStall = std::chrono::seconds(10);

  // Cancels the driver's statements from `at` on, once a second, until destroyed.
  class StopWatchdog {
   public:
    StopWatchdog(internal::Driver& driver, const Logger& logger,
                 std::chrono::steady_clock::time_point at) {
      try {
        thread_ = std::thread([this, &driver, &logger, at] {
          std::unique_lock lock(mu_);
          auto next = at;
          while (!cv_.wait_until(lock, next, [&] { return done_; })) {
            if (next == at && logger) {
              logger(LogLevel::kWarn,
                     "stopping: still waiting 10 s past the stop timeout (for the database, or "
                     "for jobs that ignore their cancelled context); cancelling spool's "
                     "statements (outcomes not yet written are rescued and run again)");
            }
            driver.CancelStatements();
            next = std::chrono::steady_clock::now() + std::chrono::seconds(1);
          }
        });
      } catch (const std::system_error&) {
        // No thread to spare: the stop waits for the database, as it did before.
      }
    }
    ~StopWatchdog() {
      {
        std::lock_guard lock(mu_);
        done_ = true;
      }
      cv_.notify_all();
      if (thread_.joinable()) thread_.join();
    }
    StopWatchdog(const StopWatchdog&) = delete;
    StopWatchdog& operator=(const StopWatchdog&) = delete;

   private:
    std::mutex mu_;
    std::condition_variable cv_;
    bool done_ = false;
    std::thread thread_;
  };

  // Not under lifecycle_mu_, which a Stop in progress holds while it waits.
  void CancelRunningJobs() {
    std::lock_guard lock(lifecycle_mu_runners_);
    for (auto& [_, r] : runners_) {
      r->StopFetching();
      r->CancelAll();
    }
  }

  Result<std::vector<InsertResult>> Insert(internal::Executor& ex, std::vector<InsertParams> params,
                                           bool fast, int64_t* count, bool wake) {
    internal::JobInsertManyParams p;
    p.now = clock_->Now();
    p.jobs.reserve(params.size());
    std::string valid_kind;  // a bulk insert's jobs mostly share one kind: checked once
    for (auto& in : params) {
      if (in.kind != valid_kind || valid_kind.empty()) {
        SPOOL_RETURN_IF_ERROR(ValidateKind(in.kind));
        valid_kind = in.kind;
      }
      SPOOL_RETURN_IF_ERROR(ValidateInsertOptions(in.options));
      if (!IsJsonObject(in.args)) {
        // The parser's reason, when there is one: "ill-formed UTF-8 byte" says more than the
        // args themselves do.
        std::string why;
        try {
          const auto parsed = nlohmann::json::parse(in.args);
          why = fmt::format(" (it is a JSON {})", parsed.type_name());
        } catch (const nlohmann::json::exception& e) {
          why = fmt::format(" ({})", e.what());
        }
        return Status::InvalidArgument(
            fmt::format("args of kind \"{}\" are not a JSON object{}: {:?}", in.kind, why,
                        in.args.substr(0, 80)));
      }
      if (Status bad = ValidateArgsText(in.args, "args"); !bad.ok()) {
        return bad.WithContext(fmt::format("kind \"{}\"", in.kind));
      }
      internal::JobInsertParams j;
      j.kind = std::move(in.kind);
      j.args = std::move(in.args);
      j.metadata = std::move(in.options.metadata);
      j.queue = std::move(in.options.queue);
      j.priority = in.options.priority;
      j.max_attempts = in.options.max_attempts;
      j.tags = std::move(in.options.tags);
      j.scheduled_at = in.options.scheduled_at.value_or(p.now);
      j.state = in.options.pending       ? JobState::kPending
                : j.scheduled_at > p.now ? JobState::kScheduled
                                         : JobState::kAvailable;
      if (in.options.unique) {
        SPOOL_ASSIGN_OR_RETURN(
            internal::UniqueKey key,
            internal::ComputeUniqueKey(j.kind, j.args, j.queue, j.scheduled_at, in.options.unique));
        j.unique_key = std::move(key.key);
        j.unique_states = key.states;
      }
      p.jobs.push_back(std::move(j));
    }
    std::vector<InsertResult> out;
    if (fast) {
      SPOOL_ASSIGN_OR_RETURN(*count, ex.JobInsertManyFast(p));
      if (wake) WakeQueues(p.jobs, nullptr);
      return out;
    }
    // Not for the caller's transaction: its jobs exist only once the caller commits.
    std::vector<Reservation> reserved;
    if (wake && options_.claim_on_insert) reserved = ReserveForInsert(p);
    auto rows = ex.JobInsertMany(p);
    if (!rows) {
      for (auto& r : reserved) r.runner->StartInserted({}, r.slots);
      return rows.error();
    }
    for (auto& r : reserved) {
      std::vector<JobRow> claimed;
      for (size_t i = 0; i < p.jobs.size(); ++i) {
        if (p.jobs[i].claim && p.jobs[i].queue == r.runner->name() &&
            (*rows)[i].job.state == JobState::kRunning) {
          claimed.push_back((*rows)[i].job);
        }
      }
      r.runner->StartInserted(std::move(claimed), r.slots);
    }
    if (wake) WakeQueues(p.jobs, &*rows);
    out.reserve(rows->size());
    for (auto& r : *rows) out.push_back(InsertResult{std::move(r.job), r.duplicate});
    return out;
  }

  void Subscribe(int id, std::function<void(const Event&)> fn) {
    std::lock_guard lock(subscribers_mu_);
    subscribers_.emplace(id,
                         std::make_shared<const std::function<void(const Event&)>>(std::move(fn)));
  }
  void Unsubscribe(int id) {
    std::unique_lock lock(subscribers_mu_);
    subscribers_.erase(id);
    if (delivering_ == std::this_thread::get_id()) {
      // From a callback: the delivery under way skips it from here on (Deliver re-checks).
      subscribers_changed_ = true;
      return;
    }
    // Once Unsubscribe returns the callback is not running and will not run, so the caller may
    // free what it captured.
    delivered_cv_.wait(lock, [&] { return delivering_ == std::thread::id(); });
  }

  Result<JobRow> Cancel(int64_t id) {
    SPOOL_ASSIGN_OR_RETURN(JobRow row,
                           driver_->executor().JobCancel({.id = id, .now = clock_->Now()}));
    if (row.state == JobState::kRunning) {
      // Running here: its context is cancelled now. Running in another process: the driver's
      // cancel told it (PostgreSQL NOTIFY), or it finds the request at its next check.
      // A job this client claimed last may be on its way from the claim to a thread.
      const bool claimed_here = !row.attempted_by.empty() && row.attempted_by.back() == client_id_;
      std::lock_guard lock(lifecycle_mu_runners_);
      if (auto it = runners_.find(row.queue); it != runners_.end()) {
        (void)it->second->CancelJob(id, claimed_here);
      }
    }
    return row;
  }

  Result<JobRow> Retry(int64_t id) {
    auto retried = driver_->executor().JobRetry({.id = id, .now = clock_->Now()});
    if (!retried && retried.error().IsAlreadyExists()) {
      // The unique index: a duplicate of this unique job was inserted since it finished. The
      // driver's message names it when it could.
      return Status::FailedPrecondition(fmt::format(
          "job {} cannot be retried: it is a unique job, and {}; retry this one once that one has "
          "finished, or delete that one",
          id, retried.error().message()));
    }
    SPOOL_ASSIGN_OR_RETURN(JobRow row, std::move(retried));
    WakeQueue(row.queue);
    return row;
  }

  Status SetPaused(std::string_view queue, bool paused) {
    SPOOL_RETURN_IF_ERROR(ValidateQueueName(queue));
    auto& ex = driver_->executor();
    SPOOL_ASSIGN_OR_RETURN(const bool changed, paused ? ex.QueuePause(queue, clock_->Now())
                                                      : ex.QueueResume(queue, clock_->Now()));
    if (!changed) return Status::Ok();  // no event: subscribers hear of changes only
    if (!paused) WakeQueue(std::string(queue));
    Event e;
    e.kind = paused ? Event::Kind::kQueuePaused : Event::Kind::kQueueResumed;
    e.queue = std::string(queue);
    DeliverEvents(std::span<const Event>(&e, 1), [](const Event& x) -> const Event& { return x; });
    return Status::Ok();
  }

  bool IsLeader() {
    std::lock_guard lock(lifecycle_mu_);
    return maintenance_ != nullptr && maintenance_->is_leader();
  }

  void WakeQueue(const std::string& queue) {
    std::lock_guard lock(lifecycle_mu_runners_);
    if (auto it = runners_.find(queue); it != runners_.end()) it->second->Wake();
  }

  Driver& driver() { return *driver_; }
  const Clock& clock() const { return *clock_; }
  const Workers& workers() const { return workers_; }
  const ClientOptions& options() const { return options_; }
  const std::string& client_id() const { return client_id_; }
  std::atomic<int> next_subscription_{1};

 private:
  enum class LifeState { kNew, kStarted, kStopped };

  // After an insert: other processes heard of it from the insert itself (the driver notifies in
  // the insert's transaction), this one's producers are woken here, except for jobs the insert
  // claimed (`rows`, when given, holds the inserted rows).
  void WakeQueues(const std::vector<internal::JobInsertParams>& jobs,
                  const std::vector<internal::JobInsertResult>* rows) {
    std::string_view last;
    for (size_t i = 0; i < jobs.size(); ++i) {
      const auto& j = jobs[i];
      if (j.state != JobState::kAvailable || j.queue == last) continue;
      if (j.claim && rows != nullptr && (*rows)[i].job.state == JobState::kRunning) continue;
      last = j.queue;
      WakeQueue(j.queue);
    }
  }

  struct Reservation {
    internal::QueueRunner* runner;
    int slots;
  };

  // Marks the jobs of `p` that go to a queue with free workers here to be claimed as they are
  // inserted, best priority first, and reserves their slots. A runner stays alive while it has
  // reserved slots: Stop joins it only once none is counted as busy.
  std::vector<Reservation> ReserveForInsert(internal::JobInsertManyParams& p) {
    std::vector<Reservation> out;
    for (const auto& j : p.jobs) {
      if (!j.unique_key.empty()) return out;  // claims only in batches without unique jobs
    }
    std::map<std::string_view, std::vector<size_t>> by_queue;
    for (size_t i = 0; i < p.jobs.size(); ++i) {
      if (p.jobs[i].state == JobState::kAvailable) by_queue[p.jobs[i].queue].push_back(i);
    }
    std::lock_guard lock(lifecycle_mu_runners_);
    for (auto& [queue, idx] : by_queue) {
      auto it = runners_.find(queue);
      if (it == runners_.end()) continue;
      const int n = it->second->ReserveForInsert(static_cast<int>(idx.size()));
      if (n == 0) continue;
      std::stable_sort(idx.begin(), idx.end(),
                       [&](size_t a, size_t b) { return p.jobs[a].priority < p.jobs[b].priority; });
      for (int k = 0; k < n; ++k) p.jobs[idx[static_cast<size_t>(k)]].claim = true;
      out.push_back({it->second.get(), n});
    }
    if (!out.empty()) p.claim_for = client_id_;
    return out;
  }

  void WakeAll() {
    std::lock_guard lock(lifecycle_mu_runners_);
    for (auto& [_, r] : runners_) r->Wake();
  }

  void Deliver(const std::vector<Completion>& batch) {
    std::vector<const Event*> events;
    events.reserve(batch.size());
    for (const auto& c : batch) {
      if (c.silent) continue;
      LogOutcome(logger_, c.event);
      events.push_back(&c.event);
    }
    DeliverEvents(events, [](const Event* e) -> const Event& { return *e; });
  }

  // Calls every subscriber for each event, one delivery at a time, without holding
  // subscribers_mu_ during the calls: a callback may Subscribe, Unsubscribe or call the client.
  // `event_of` maps an element of `items` to its Event.
  template <typename Items, typename EventOf>
  void DeliverEvents(const Items& items, EventOf event_of) {
    using Callback = std::shared_ptr<const std::function<void(const Event&)>>;
    std::vector<std::pair<int, Callback>> callbacks;
    bool nested = false;  // a callback paused or resumed a queue: its events go out at once
    {
      std::unique_lock lock(subscribers_mu_);
      if (subscribers_.empty()) return;
      nested = delivering_ == std::this_thread::get_id();
      if (!nested) {
        delivered_cv_.wait(lock, [&] { return delivering_ == std::thread::id(); });
        delivering_ = std::this_thread::get_id();
        subscribers_changed_ = false;
      }
      callbacks.assign(subscribers_.begin(), subscribers_.end());
    }
    for (const auto& item : items) {
      const Event& e = event_of(item);
      for (const auto& [id, fn] : callbacks) {
        if (subscribers_changed_.load(std::memory_order_acquire)) {
          std::lock_guard lock(subscribers_mu_);
          if (!subscribers_.contains(id)) continue;
        }
        try {
          (*fn)(e);
        } catch (...) {
          // A subscriber's exception must not take down the thread that writes outcomes.
          const internal::CaughtException caught = internal::DescribeCurrentException();
          logger_(LogLevel::kError, fmt::format("an event subscriber: {}", caught.message));
        }
      }
    }
    if (nested) return;
    std::lock_guard lock(subscribers_mu_);
    delivering_ = std::thread::id();
    delivered_cv_.notify_all();
  }

  // Whether this thread is delivering events (a subscriber's callback runs on it).
  bool OnDeliveringThread() {
    std::lock_guard lock(subscribers_mu_);
    return delivering_ == std::this_thread::get_id();
  }

  // Makes due scheduled and retryable jobs available, and wakes their producers.
  void ScheduleLoop() {
    internal::FailureLog failures("scheduling due jobs");
    std::unique_lock lock(background_mu_);
    while (!background_stop_) {
      lock.unlock();
      auto r = driver_->executor().JobSchedule({.now = clock_->Now(), .max = kScheduleBatch});
      if (r) failures.Succeeded(logger_);
      lock.lock();
      Duration wait = options_.schedule_interval;
      if (!r) {
        failures.Failed(logger_, r.error());
        wait = std::max<Duration>(wait, kLoopErrorBackoff);
      } else if (r->count > 0) {
        for (const auto& q : r->queues) WakeQueue(q);
        // A full batch: there may be more due right now.
        if (r->count >= kScheduleBatch) wait = Duration::zero();
      }
      background_cv_.wait_for(lock, wait, [&] { return background_stop_; });
    }
  }

  // Cancels the contexts of jobs running here whose cancel another process requested.
  void CancelRequestedJobs() {
    std::vector<int64_t> ids;
    {
      std::lock_guard lock(lifecycle_mu_runners_);
      for (auto& [_, r] : runners_) r->AppendRunningIds(&ids);
    }
    if (ids.empty()) return;
    auto requested = driver_->executor().JobGetCancelRequested(ids);
    if (!requested) {
      cancel_check_failures_.Failed(logger_, requested.error());
      return;
    }
    cancel_check_failures_.Succeeded(logger_);
    std::lock_guard lock(lifecycle_mu_runners_);
    for (int64_t id : *requested) {
      for (auto& [_, r] : runners_) {
        if (r->CancelJob(id)) break;
      }
    }
  }

  // Wakes producers when another process changed the database, and looks for cancels of jobs
  // running here after each change (at most every kCancelCheckMinInterval: a change inside it is
  // looked at when it ends, not dropped) and every poll_interval.
  void NotifyLoop() {
    bool check_due = false;
    for (;;) {
      {
        std::lock_guard lock(background_mu_);
        if (background_stop_) return;
      }
      Duration wait = options_.poll_interval;
      if (check_due) {
        const auto until = last_cancel_check_ + kCancelCheckMinInterval;
        wait = std::min(wait, std::chrono::duration_cast<Duration>(
                                  std::max(until - std::chrono::steady_clock::now(),
                                           std::chrono::steady_clock::duration::zero())));
      }
      auto changed = driver_->WaitForChange(wait);
      if (!changed) {
        std::unique_lock lock(background_mu_);
        background_cv_.wait_for(lock, kLoopErrorBackoff, [&] { return background_stop_; });
        continue;
      }
      if (*changed) WakeAll();
      // A timeout is the poll's own check, or the end of the interval a change waited for.
      check_due = true;
      const auto now = std::chrono::steady_clock::now();
      if (now - last_cancel_check_ >= kCancelCheckMinInterval) {
        last_cancel_check_ = now;
        check_due = false;
        CancelRequestedJobs();
      }
    }
  }

  std::unique_ptr<Driver> driver_;
  const ClientOptions options_;
  Workers workers_;
  std::shared_ptr<const Clock> clock_;
  std::shared_ptr<const RetryPolicy> retry_policy_;
  Logger logger_;
  std::string client_id_;
  Completer completer_;
  DeadlineWatcher deadlines_;

  std::mutex lifecycle_mu_;  // serialises Start and Stop
  LifeState state_ = LifeState::kNew;
  Status stop_status_;  // what the first Stop returned; guarded by lifecycle_mu_
  // runners_ is filled by Start and cleared by Stop under both mutexes; readers (inserts, the
  // scheduler) take only this one.
  std::mutex lifecycle_mu_runners_;
  std::map<std::string, std::unique_ptr<QueueRunner>, std::less<>> runners_;

  std::mutex background_mu_;
  std::condition_variable background_cv_;
  bool background_stop_ = false;
  std::thread scheduler_;
  std::thread notifier_;
  std::unique_ptr<Maintenance> maintenance_;                   // set by Start under lifecycle_mu_
  std::chrono::steady_clock::time_point last_cancel_check_{};  // notifier thread only
  internal::FailureLog cancel_check_failures_{"checking for cancelled jobs"};  // notifier only

  std::mutex subscribers_mu_;
  std::map<int, std::shared_ptr<const std::function<void(const Event&)>>>
      subscribers_;             // guarded by subscribers_mu_
  std::thread::id delivering_;  // the thread calling subscribers; guarded by it too
  std::atomic<bool> subscribers_changed_{false};  // an Unsubscribe during that delivery
  std::condition_variable delivered_cv_;          // delivering_ was cleared
};

// ---- Client -----------------------------------------------------------------------------------

namespace {

Status StopFromWorkError() {
  return Status::FailedPrecondition(
      "Stop was called from inside a job's Work, and would wait for that job to return: call it "
      "from another thread (CancelRunningJobs may be called from a job)");
}

}  // namespace

Result<std::unique_ptr<Client>> Client::Open(std::string_view database_url, ClientOptions options,
                                             Workers workers) {
  SPOOL_RETURN_IF_ERROR(ValidateClientOptions(options));
  SPOOL_RETURN_IF_ERROR(workers.status());
  SPOOL_RETURN_IF_ERROR(internal::ValidatePeriodicJobs(options, workers));
  SPOOL_ASSIGN_OR_RETURN(auto driver,
                         Driver::Open(database_url, internal::DriverOptions{
                                                        .sqlite = options.sqlite,
                                                        .postgres = options.postgres,
                                                        .listen = !options.poll_only,
                                                        .create_if_missing = options.auto_migrate,
                                                    }));
  SPOOL_ASSIGN_OR_RETURN(const int version, driver->SchemaVersion());
  // The messages below name the database and the command that fixes it, never a password; a
  // command given a url without its password would not connect, so then it names none.
  const std::string shown_url = UrlWithoutPassword(database_url);
  const std::string url_flag =
      shown_url == database_url
          ? fmt::format("--database-url {}`", internal::ShellWord(shown_url))
          : std::string(
                "--database-url URL` (URL: this one with its password; or set "
                "SPOOL_DATABASE_URL)");
  const int latest = internal::LatestVersion(*driver);
  if (version < latest && options.auto_migrate) {
    SPOOL_RETURN_IF_ERROR(driver->MigrateUp(latest));
  } else if (version == 0) {
    return Status::FailedPrecondition(
        fmt::format("the database at {} has no spool tables: run `spool migration up {} (or set "
                    "ClientOptions.auto_migrate)",
                    shown_url, url_flag));
  } else if (version < latest) {
    return Status::FailedPrecondition(fmt::format(
        "the spool schema at {} is at version {}, this spool needs {}: run `spool migration up "
        "{}",
        shown_url, version, latest, url_flag));
  } else if (version > latest) {
    return Status::FailedPrecondition(fmt::format(
        "the spool schema at {} is at version {}, newer than this spool knows ({}): upgrade "
        "spool, or run `spool migration down` with the newer spool to go back to {}",
        shown_url, version, latest, latest));
  }
  auto impl = std::make_unique<Impl>(std::move(driver), std::move(options), std::move(workers));
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() {
  if (impl_ && impl_->started()) (void)impl_->Stop(kDestructorStopTimeout);
}

Status Client::Start() { return impl_->Start(*this); }
Status Client::Stop(Duration timeout) {
  // Stop waits for running jobs, so from a job's Work it would wait for itself for good.
  if (internal::WorkingFor() == this) return StopFromWorkError();
  return impl_->Stop(std::max(Duration::zero(), timeout));
}
Status Client::StopAndCancel() {
  if (internal::WorkingFor() == this) return StopFromWorkError();
  // A Stop in progress holds the lifecycle lock while it waits out its timeout: cancel first,
  // so that it ends now rather than when its timeout passes.
  impl_->CancelRunningJobs();
  return impl_->Stop(std::nullopt);
}

void Client::CancelRunningJobs() { impl_->CancelRunningJobs(); }

Result<InsertResult> Client::InsertRaw(InsertParams params) {
  std::vector<InsertParams> v;
  v.push_back(std::move(params));
  SPOOL_ASSIGN_OR_RETURN(auto out, InsertMany(std::move(v)));
  return std::move(out.front());
}

Status Client::CheckArgs(std::string_view kind, std::string_view args_json) const {
  const WorkerBase* worker = impl_->workers().Find(kind);
  return worker == nullptr ? Status::Ok() : worker->CheckArgs(args_json);
}

Result<std::vector<InsertResult>> Client::InsertMany(std::vector<InsertParams> params) {
  if (params.empty()) return std::vector<InsertResult>{};
  return impl_->Insert(impl_->driver().executor(), std::move(params), false, nullptr, true);
}

Result<int64_t> Client::InsertManyFast(std::vector<InsertParams> params) {
  if (params.empty()) return int64_t{0};
  int64_t count = 0;
  SPOOL_RETURN_IF_ERROR(
      impl_->Insert(impl_->driver().executor(), std::move(params), true, &count, true).status());
  return count;
}

Result<InsertResult> Client::InsertRawTx(TxRef tx, InsertParams params) {
  std::vector<InsertParams> v;
  v.push_back(std::move(params));
  SPOOL_ASSIGN_OR_RETURN(auto out, InsertManyTx(tx, std::move(v)));
  return std::move(out.front());
}

Result<std::vector<InsertResult>> Client::InsertManyTx(TxRef tx, std::vector<InsertParams> params) {
  if (params.empty()) return std::vector<InsertResult>{};
  SPOOL_ASSIGN_OR_RETURN(auto ex, impl_->driver().ExecutorFor(tx));
  // No wake-up here: the rows are invisible until the caller commits. Producers see them at the
  // next change check: SQLite's data_version moves with the commit, and on PostgreSQL the driver
  // sends a NOTIFY inside the caller's transaction, delivered when it commits.
  return impl_->Insert(*ex, std::move(params), false, nullptr, false);
}

Result<JobRow> Client::JobGet(int64_t id) { return impl_->driver().executor().JobGetByID(id); }

Result<std::vector<JobRow>> Client::JobList(const JobListParams& params) {
  if (params.limit < 1 || params.limit > 10'000) {
    return Status::InvalidArgument(
        fmt::format("JobListParams.limit is {}: it must be between 1 and 10000", params.limit));
  }
  return impl_->driver().executor().JobList(params);
}

Result<std::map<JobState, int64_t>> Client::JobCountByState(std::string_view queue) {
  return impl_->driver().executor().JobCountByState(queue);
}

Result<JobRow> Client::JobCancel(int64_t id) { return impl_->Cancel(id); }
Result<JobRow> Client::JobRetry(int64_t id) { return impl_->Retry(id); }
Result<JobRow> Client::JobDelete(int64_t id) { return impl_->driver().executor().JobDelete(id); }
Status Client::QueuePause(std::string_view name) { return impl_->SetPaused(name, true); }
Status Client::QueueResume(std::string_view name) { return impl_->SetPaused(name, false); }
Result<std::optional<LeaderInfo>> Client::Leader() {
  SPOOL_ASSIGN_OR_RETURN(std::optional<LeaderInfo> lease, impl_->driver().executor().LeaderGet());
  if (lease && lease->expires_at <= impl_->clock().Now()) lease.reset();
  return lease;
}

Result<std::vector<QueueInfo>> Client::QueueList() {
  return impl_->driver().executor().QueueList();
}

Result<bool> Client::QueueKnown(std::string_view name) {
  SPOOL_RETURN_IF_ERROR(ValidateQueueName(name));
  return impl_->driver().executor().QueueKnown(name);
}

Result<std::optional<TimePoint>> Client::QueuePausedAt(std::string_view name) {
  SPOOL_RETURN_IF_ERROR(ValidateQueueName(name));
  return impl_->driver().executor().QueuePausedAt(name);
}
bool Client::IsLeader() const { return impl_->IsLeader(); }

int Client::Subscribe(std::function<void(const Event&)> fn) {
  const int id = impl_->next_subscription_.fetch_add(1);
  impl_->Subscribe(id, std::move(fn));
  return id;
}

void Client::Unsubscribe(int id) { impl_->Unsubscribe(id); }

const std::string& Client::client_id() const { return impl_->client_id(); }
const ClientOptions& Client::options() const { return impl_->options(); }
std::string_view Client::driver_name() const { return impl_->driver().Name(); }

}  // namespace spool
