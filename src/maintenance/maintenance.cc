#include "maintenance/maintenance.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "core/job_hooks.h"
#include "core/nap.h"
#include "core/thread_name.h"
#include "core/unique.h"

namespace spool::internal {
namespace {

constexpr int kRescueBatch = 1'000;
constexpr int kCleanBatch = 10'000;
// At most this many cleaner batches per state each round, so a huge backlog is worked off over
// several rounds instead of holding the writer for long.
constexpr int kCleanRoundsPerTick = 10;
// While a backlog remains, the next round comes after this pause rather than clean_interval: at
// one round per interval (30 s) the cleaner deleted at most 3,333 jobs a second, and a table
// that completes more grew for ever.
constexpr auto kCleanBacklogPause = std::chrono::milliseconds(100);
// spool_client rows of clients gone this long are removed.
constexpr auto kClientRowRetention = std::chrono::hours(24);

// A tick due longer ago than this at start is "missed" (the process was down), not just late.
Duration MissedGrace(const ClientOptions& o) {
  return std::max<Duration>(std::chrono::minutes(1), o.leader_ttl * 2);
}

}  // namespace

Status ValidatePeriodicJobs(const ClientOptions& opts, const Workers& workers) {
  std::set<std::string, std::less<>> names;
  for (const auto& p : opts.periodic_jobs) {
    if (p.name.empty()) return Status::InvalidArgument("a periodic job has an empty name");
    if (!names.insert(p.name).second) {
      return Status::InvalidArgument(fmt::format(
          "periodic job name \"{}\" is used twice: each periodic job needs its own name", p.name));
    }
    if (p.kind.empty()) {
      return Status::InvalidArgument(fmt::format("periodic job \"{}\" has no kind", p.name));
    }
    auto schedule = CronSchedule::Parse(p.schedule, p.time_zone);
    if (!schedule) return schedule.error().WithContext(fmt::format("periodic job \"{}\"", p.name));
    SPOOL_RETURN_IF_ERROR(
        ValidateInsertOptions(p.options).WithContext(fmt::format("periodic job \"{}\"", p.name)));
    // Each tick's job is available at its tick: options that say otherwise would be ignored.
    if (p.options.pending || p.options.scheduled_at) {
      return Status::InvalidArgument(fmt::format(
          "periodic job \"{}\": options.{} cannot be used: each tick's job is available at the "
          "tick (leave it unset)",
          p.name, p.options.pending ? "pending" : "scheduled_at"));
    }
    // Checked now rather than failing every attempt of every tick.
    const nlohmann::json args = nlohmann::json::parse(p.args, nullptr, false);
    if (!args.is_object()) {
      return Status::InvalidArgument(
          fmt::format("periodic job \"{}\": args are not a JSON object: {:.80}", p.name, p.args));
    }
    SPOOL_RETURN_IF_ERROR(
        ValidateArgsText(p.args, "args").WithContext(fmt::format("periodic job \"{}\"", p.name)));
    if (const WorkerBase* worker = workers.Find(p.kind)) {
      SPOOL_RETURN_IF_ERROR(
          worker->CheckArgs(p.args).WithContext(fmt::format("periodic job \"{}\"", p.name)));
    }
  }
  return Status::Ok();
}

Maintenance::Maintenance(MaintenanceEnv env)
    : env_(std::move(env)),
      max_nap_(MaxNap(env_.clock, std::chrono::duration_cast<Duration>(kMaxNap))) {}

Maintenance::~Maintenance() { Stop(); }

Status Maintenance::Start() {
  for (const auto& p : env_.options.periodic_jobs) {
    SPOOL_ASSIGN_OR_RETURN(auto schedule, CronSchedule::Parse(p.schedule, p.time_zone));
    periodic_.push_back(Periodic{p, std::move(schedule)});
  }
  trouble_at_ = env_.clock.Now();
  started_at_ = trouble_at_;
  // Synchronously, so the caller can start claiming jobs knowing the row exists (best effort:
  // a failure is logged and the loop below retries).
  Heartbeat(env_.clock.Now());
  thread_ = std::thread([this] {
    NameThisThread("maintain");
    Run();
  });
  return Status::Ok();
}

void Maintenance::Stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  auto& ex = env_.driver.executor();
  bool was_leader = false;
  {
    std::lock_guard lock(mu_);
    was_leader = leader_;
    leader_ = false;
  }
  // Resigning lets another process take over at once instead of after the lease runs out.
  if (was_leader) {
    if (Status st = ex.LeaderResign(env_.client_id); !st.ok()) {
      Log(LogLevel::kWarn,
          "stopping: could not resign leadership (another client leads once the lease runs "
          "out): " +
              st.ToString());
    }
  }
  if (Status st = ex.ClientDelete(env_.client_id); !st.ok()) {
    Log(LogLevel::kWarn,
        "stopping: could not remove this client's heartbeat row (the cleaner removes it later): " +
            st.ToString());
  }
}

bool Maintenance::is_leader() const {
  std::lock_guard lock(mu_);
  return leader_ && env_.clock.Now() < lease_until_;
}

void Maintenance::Log(LogLevel level, const std::string& message) const {
  if (env_.logger) env_.logger(level, message);
}

void Maintenance::Run() {
  const auto& o = env_.options;
  // Followers retry the election with jitter so that processes started together do not race in
  // lockstep.
  std::mt19937_64 rng{std::random_device{}()};
  auto jitter = [&](Duration d) {
    std::uniform_int_distribution<int64_t> dist(0, d.count() / 5);
    return Duration(dist(rng));
  };
  TimePoint next_heartbeat{}, next_elect{}, next_rescue{}, next_clean{}, next_periodic{};
  std::unique_lock lock(mu_);
  while (!stopping_) {
    lock.unlock();
    const TimePoint now = env_.clock.Now();
    if (now >= next_heartbeat) {
      Heartbeat(now);
      next_heartbeat = now + o.heartbeat_interval;
    }
    if (now >= next_elect) {
      Elect(now);
      const bool leading = is_leader();
      // A leader renews well inside its lease; a follower checks as often as a lease could lapse.
      next_elect = now + (leading ? o.leader_ttl / 3 : o.leader_ttl / 3 + jitter(o.leader_ttl / 3));
      if (leading && next_periodic == TimePoint{}) next_periodic = now;
    }
    TimePoint next_due = std::min({next_heartbeat, next_elect});
    if (is_leader()) {
      if (now >= next_rescue) {
        Rescue(now);
        next_rescue = now + o.rescue_interval;
      }
      if (now >= next_clean) {
        next_clean = now + (Clean(now) ? Duration(kCleanBacklogPause) : o.clean_interval);
      }
      if (!periodic_.empty() && now >= next_periodic) next_periodic = EnqueuePeriodic(now);
      next_due = std::min({next_due, next_rescue, next_clean});
      if (!periodic_.empty()) next_due = std::min(next_due, next_periodic);
    } else {
      next_periodic = TimePoint{};
    }
    lock.lock();
    if (stopping_) break;
    const Duration nap =
        std::clamp<Duration>(next_due - env_.clock.Now(), Duration::zero(), max_nap_);
    cv_.wait_for(lock, nap, [&] { return stopping_; });
  }
}

void Maintenance::Heartbeat(TimePoint now) {
  ClientHeartbeatParams p{
      .id = env_.client_id, .now = now, .queues = {}, .started_at = started_at_};
  for (const auto& [name, _] : env_.options.queues) p.queues.push_back(name);
  auto before = env_.driver.executor().ClientHeartbeat(p);
  if (!before) {
    trouble_at_ = now;
    heartbeat_failures_.Failed(env_.logger, before.error());
    return;
  }
  heartbeat_failures_.Succeeded(env_.logger);
  if (heartbeat_written_ && before->has_value() && **before != started_at_) {
    shared_id_.Failed(
        env_.logger,
        Status::FailedPrecondition(fmt::format(
            "another running process uses client_id '{}' (it started at {}, this one at {}): "
            "spool tells processes apart by this id, so the rescuer can take one's running jobs "
            "for a dead process's and run them again; give every process its own client_id, or "
            "leave it unset",
            env_.client_id, FormatTime(**before), FormatTime(started_at_))));
  } else {
    shared_id_.Succeeded(env_.logger);
  }
  heartbeat_written_ = true;
  // spool's tables moved under this client (`spool migration down --force`, or a newer spool's
  // `up`): its statements may fail, or on SQLite match nothing and look idle. Said every 10 s
  // until fixed.
  auto version = env_.driver.SchemaVersion();
  const int known = LatestVersion(env_.driver);
  if (!version) {
    schema_failures_.Failed(env_.logger, version.error());
  } else if (*version != known) {
    schema_failures_.Failed(
        env_.logger,
        Status::FailedPrecondition(fmt::format(
            "spool's tables are at version {} but this client needs version {}: {}", *version,
            known,
            *version < known ? "run `spool migration up`, or jobs are not worked"
                             : "upgrade this app's spool, or run `spool migration down` with the "
                               "newer spool")));
  } else {
    schema_failures_.Succeeded(env_.logger);
  }
}

void Maintenance::Elect(TimePoint now) {
  auto& ex = env_.driver.executor();
  const LeaderElectParams p{
      .leader_id = env_.client_id, .now = now, .ttl = env_.options.leader_ttl};
  // `believed`: this client last heard it leads; `was`: its lease has not run out since. A
  // leader that stalled past its lease (a stopped process, a stuck write) has lost leadership
  // even if nothing here saw it go, and says so before anything else.
  bool believed = false;
  bool was = false;
  {
    std::lock_guard lock(mu_);
    believed = leader_;
    was = leader_ && now < lease_until_;
  }
  if (believed && !was) {
    Log(LogLevel::kInfo,
        "this client lost leadership: its lease ran out before it could renew it (was the process "
        "stopped, or the database slow?)");
  }
  auto r = was ? ex.LeaderAttemptReelect(p) : ex.LeaderAttemptElect(p);
  if (!r) {
    trouble_at_ = now;
    // Without a confirmed lease we must assume we lost it: two leaders would both enqueue.
    elect_failures_.Failed(env_.logger, r.error());
  } else {
    elect_failures_.Succeeded(env_.logger);
  }
  const bool now_leader = r.has_value() && *r;
  {
    std::lock_guard lock(mu_);
    leader_ = now_leader;
    lease_until_ = now + env_.options.leader_ttl;
  }
  if (now_leader != was) {
    Log(LogLevel::kInfo,
        now_leader ? "this client is now the leader" : "this client lost leadership");
  }
}

void Maintenance::Rescue(TimePoint now) {
  const auto& o = env_.options;
  const Duration margin = o.rescue_timeout_margin;
  // A job with a timeout (its worker's, which may be shorter than job_timeout, or the client's)
  // is stuck once it has run past it by the margin, so any job running longer than the margin may
  // be: ask for those and decide per job below. Only job_timeout was counted here, and a job
  // whose worker's Timeout was 1 s waited for rescue_after (1 h).
  const Duration shortest = std::min(o.rescue_after, margin);
  // Two lists: jobs whose client is gone, and jobs running long enough that a timeout or
  // rescue_after may have passed whatever their client (the second is judged per job below: a
  // worker's own timeout may be longer). A client is gone when its row is, or its heartbeat is
  // older than client_stale_after; but until this client has reached the database for that long,
  // old heartbeats say nothing (after an outage every client's are old).
  const bool heartbeats_tell = now - trouble_at_ >= o.client_stale_after;
  auto& ex = env_.driver.executor();
  auto orphaned = ex.JobGetStuck(
      {.heartbeat_stale_before = heartbeats_tell ? now - o.client_stale_after : TimePoint{},
       .attempted_before = TimePoint{},
       .max = kRescueBatch});
  auto long_running = ex.JobGetStuck({.heartbeat_stale_before = TimePoint{},
                                      .attempted_before = now - shortest,
                                      .max = kRescueBatch});
  for (const auto* r : {&orphaned, &long_running}) {
    if (!*r) {
      trouble_at_ = now;
      rescue_failures_.Failed(env_.logger, r->error());
      return;
    }
  }
  rescue_failures_.Succeeded(env_.logger);
  std::set<int64_t> client_gone;
  std::map<int64_t, const JobRow*> stuck;  // by id: the order rescues are written and logged in
  for (const JobRow& job : *orphaned) {
    client_gone.insert(job.id);
    stuck.emplace(job.id, &job);
  }
  for (const JobRow& job : *long_running) stuck.emplace(job.id, &job);
  if (stuck.empty()) return;
  JobSetStateIfRunningManyParams updates;
  // One warning per cause (and client) after the write, not one per job: a node that dies holding
  // thousands of jobs would otherwise bury the rest of the log. Each job's error keeps its cause.
  struct Rescued {
    int64_t count = 0;
    std::vector<int64_t> ids;  // the first kIdsShown
  };
  constexpr size_t kIdsShown = 10;
  using Cause = std::pair<std::string, bool>;     // (cause, cancelled)
  std::vector<std::pair<int64_t, Cause>> causes;  // each update's job and its cause
  for (const auto& [id, row] : stuck) {
    const JobRow& job = *row;
    const std::string client = job.attempted_by.empty() ? "unknown" : job.attempted_by.back();
    const WorkerBase* worker = env_.workers.Find(job.kind);
    const Duration timeout = JobTimeout(worker, o, job, env_.logger);
    const TimePoint started = job.attempted_at.value_or(job.scheduled_at);
    std::string cause;
    std::string why;
    if (timeout > Duration::zero() && started < now - (timeout + margin)) {
      cause = fmt::format("they ran past their {} timeout by more than {} on client {}",
                          FormatDuration(timeout), FormatDuration(margin), client);
      why = fmt::format("job ran past its {} timeout by more than {} on client {}; rescued",
                        FormatDuration(timeout), FormatDuration(margin), client);
    } else if (timeout <= Duration::zero() && started < now - o.rescue_after) {
      // rescue_after bounds only jobs without a timeout: a job allowed 2 h by its worker is not
      // stuck at 1 h while its client is alive.
      cause = fmt::format("they were running for more than {} on client {}",
                          FormatDuration(o.rescue_after), client);
      why = fmt::format("job was running for more than {} on client {}; rescued",
                        FormatDuration(o.rescue_after), client);
    } else if (!client_gone.contains(id) || (client == env_.client_id && started >= started_at_)) {
      // Its client is alive (this one, if it is ours), and its time has not run out.
      continue;
    } else if (client == env_.client_id) {
      // Started under this client's id before this client did: by a process that ended.
      cause = fmt::format("client {} was restarted (the process that ran them ended)", client);
      why = cause + "; job rescued";
    } else {
      cause = fmt::format("client {} stopped responding (no heartbeat for {})", client,
                          FormatDuration(o.client_stale_after));
      why = cause + "; job rescued";
    }
    JobSetStateParams u{.id = job.id,
                        .attempt = job.attempt,
                        .state = JobState::kRetryable,
                        .at = now,
                        .error = {},
                        .attempted_at = job.attempted_at};
    // An admin asked to cancel it while it ran: its run is over, so the cancel is done now
    // instead of the job being run again.
    const bool cancel_requested =
        nlohmann::json::parse(job.metadata, nullptr, false).contains("cancel_requested_at");
    if (cancel_requested) why += "; an admin had asked to cancel it, so it is cancelled";
    u.error = AttemptError{.at = now, .attempt = job.attempt, .error = why, .trace = {}};
    if (cancel_requested) {
      u.state = JobState::kCancelled;
    } else if (job.attempt >= job.max_attempts) {
      u.state = JobState::kDiscarded;
    } else {
      u.at = now + RetryDelay(worker, env_.retry_policy, job, env_.logger);
    }
    Log(LogLevel::kDebug, fmt::format("rescuing job {} ({}): {}", job.id, job.kind, why));
    causes.emplace_back(job.id, Cause{std::move(cause), cancel_requested});
    updates.jobs.push_back(std::move(u));
  }
  if (updates.jobs.empty()) return;
  // A job that finished (or was rescued by another node) after it was read is left as it is, and
  // is not counted as rescued.
  std::vector<int64_t> skipped;
  updates.skipped = &skipped;
  if (auto r = ex.JobSetStateIfRunningMany(updates); !r) {
    Log(LogLevel::kWarn, fmt::format("rescuer: writing {} rescued jobs failed (tried again at the "
                                     "next rescue): {}",
                                     updates.jobs.size(), r.error().ToString()));
    return;
  }
  for (const int64_t id : skipped) {
    Log(LogLevel::kDebug,
        fmt::format("job {} was left as it is: its run ended before its rescue was written", id));
  }
  const std::set<int64_t> not_rescued(skipped.begin(), skipped.end());
  std::map<Cause, Rescued> by_cause;
  for (const auto& [id, cause] : causes) {
    if (not_rescued.contains(id)) continue;
    Rescued& group = by_cause[cause];
    ++group.count;
    if (group.ids.size() < kIdsShown) group.ids.push_back(id);
  }
  for (const auto& [key, group] : by_cause) {
    const auto& [cause, cancelled] = key;
    const int64_t more = group.count - static_cast<int64_t>(group.ids.size());
    Log(LogLevel::kWarn,
        fmt::format("rescued {} job{} (ids {}{}): {}; {}", group.count, group.count == 1 ? "" : "s",
                    fmt::join(group.ids, ", "),
                    more > 0 ? fmt::format(" and {} more", more) : std::string(), cause,
                    cancelled ? "an admin had asked to cancel them, so they are cancelled"
                              : "each is retried, or discarded when out of attempts"));
  }
}

bool Maintenance::Clean(TimePoint now) {
  bool backlog = false;
  const auto& r = env_.options.retention;
  auto& ex = env_.driver.executor();
  const std::pair<JobState, Duration> rules[] = {{JobState::kCompleted, r.completed},
                                                 {JobState::kCancelled, r.cancelled},
                                                 {JobState::kDiscarded, r.discarded}};
  for (const auto& [state, keep] : rules) {
    if (keep < Duration::zero()) continue;  // kept for ever
    for (int round = 0; round < kCleanRoundsPerTick; ++round) {
      auto n = ex.JobDeleteFinalized(
          {.state = state, .finalized_before = now - keep, .max = kCleanBatch});
      if (!n) {
        // One line a period while it fails, and one when it works again, as the other loops.
        clean_failures_.Failed(env_.logger, n.error());
        return false;
      }
      if (*n < kCleanBatch) break;
      if (round + 1 == kCleanRoundsPerTick) backlog = true;
    }
  }
  clean_failures_.Succeeded(env_.logger);
  if (auto n = ex.ClientDeleteStale(now - kClientRowRetention); !n) {
    Log(LogLevel::kWarn, "cleaner: removing old client rows failed: " + n.error().ToString());
  }
  return backlog;
}

TimePoint Maintenance::EnqueuePeriodic(TimePoint now) {
  TimePoint next = TimePoint::max();
  for (auto& p : periodic_) {
    TimePoint due = TimePoint::max();
    if (Status st = EnqueueOne(p, now, &due); !st.ok()) {
      Log(LogLevel::kWarn, fmt::format("periodic job \"{}\": {}", p.job.name, st.ToString()));
      // Try again soon rather than at the next tick: the tick is still owed.
      due = now + std::chrono::seconds(1);
    }
    next = std::min(next, due);
  }
  return next;
}

Status Maintenance::EnqueueOne(Periodic& p, TimePoint now, TimePoint* next_due) {
  // One transaction: read the last tick, insert, store the new tick. Two leaders (a lease that
  // lapsed mid-tick) are further fenced by the unique key per (name, tick).
  SPOOL_ASSIGN_OR_RETURN(auto tx, env_.driver.Begin());
  SPOOL_ASSIGN_OR_RETURN(auto last, tx->PeriodicGetLastTick(p.job.name));
  std::optional<TimePoint> enqueue_tick;
  TimePoint new_last;
  if (!last) {
    // First time this name is seen: start from now, so a new schedule does not fire for the
    // past, unless the job asks to run at start.
    new_last = now;
    if (p.job.run_on_start) enqueue_tick = now;
  } else {
    TimePoint latest_due{};
    bool any_due = false;
    for (TimePoint t = p.schedule.Next(*last); t <= now; t = p.schedule.Next(t)) {
      latest_due = t;
      any_due = true;
    }
    new_last = any_due ? latest_due : *last;
    if (any_due) {
      // The latest due tick is on time when it is within the grace, whatever came before it:
      // kSkip drops the ticks missed, not one that is due now (it dropped the 11:00 run of an
      // hourly job restarted at 11:00:10 after 10:00 had been missed).
      const bool latest_on_time = latest_due >= now - MissedGrace(env_.options);
      const bool earlier_missed = p.schedule.Next(*last) < latest_due;
      const bool run_once = p.job.missed == PeriodicJob::Missed::kRunOnce;
      if (latest_on_time || run_once) enqueue_tick = latest_due;
      if (earlier_missed || !latest_on_time) {
        Log(LogLevel::kInfo,
            fmt::format("periodic job \"{}\": ticks were missed while no leader ran; {}",
                        p.job.name,
                        run_once         ? "running it once now"
                        : latest_on_time ? fmt::format("skipping them, and running the tick of {}",
                                                       FormatTime(latest_due))
                                         : std::string("skipping them")));
      }
    }
  }
  if (enqueue_tick) {
    JobInsertParams j;
    j.kind = p.job.kind;
    j.args = p.job.args;
    j.metadata = p.job.options.metadata;
    j.queue = p.job.options.queue;
    j.priority = p.job.options.priority;
    j.max_attempts = p.job.options.max_attempts;
    j.tags = p.job.options.tags;
    j.state = JobState::kAvailable;
    j.scheduled_at = now;
    // Unique in every state: a tick enqueued once is never enqueued again, even after the job
    // completes. A job's own unique options (e.g. no new run while the last is unfinished) take
    // the key's place: it also keeps a tick from being enqueued twice while its job is unfinished.
    UniqueKey key;
    if (p.job.options.unique) {
      SPOOL_ASSIGN_OR_RETURN(
          key, ComputeUniqueKey(j.kind, j.args, j.queue, j.scheduled_at, p.job.options.unique));
    } else {
      key = InternalUniqueKey(fmt::format("spool:periodic:{}:{}", p.job.name,
                                          enqueue_tick->time_since_epoch().count()));
    }
    j.unique_key = std::move(key.key);
    j.unique_states = key.states;
    JobInsertManyParams ins{.jobs = {std::move(j)}, .now = now};
    SPOOL_ASSIGN_OR_RETURN(auto rows, tx->JobInsertMany(ins));
    if (!rows.empty() && !rows.front().duplicate) {
      Log(LogLevel::kInfo, fmt::format("periodic job \"{}\": enqueued job {} for tick {}",
                                       p.job.name, rows.front().job.id, FormatTime(*enqueue_tick)));
    } else if (!rows.empty() && p.job.options.unique) {
      Log(LogLevel::kInfo,
          fmt::format("periodic job \"{}\": tick {} skipped: job {} with the same unique key is "
                      "still {}",
                      p.job.name, FormatTime(*enqueue_tick), rows.front().job.id,
                      JobStateName(rows.front().job.state)));
    }
  }
  SPOOL_RETURN_IF_ERROR(tx->PeriodicSetLastTick(p.job.name, new_last, now));
  SPOOL_RETURN_IF_ERROR(tx->Commit());
  if (enqueue_tick) env_.wake_queue(p.job.options.queue);
  *next_due = p.schedule.Next(new_last);
  return Status::Ok();
}

}  // namespace spool::internal
