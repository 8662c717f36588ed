#include "runtime/completer.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/failure_log.h"
#include "core/job_hooks.h"
#include "core/thread_name.h"

namespace spool::internal {
namespace {

// Transient errors (busy database, dropped connection) are retried with this backoff; the
// outcomes stay queued meanwhile, so nothing is lost while the database is away.
constexpr auto kRetryBackoffStart = std::chrono::milliseconds(10);
constexpr auto kRetryBackoffMax = std::chrono::seconds(2);
// At Stop, how long to keep trying to write outcomes before giving up on them.
constexpr auto kStopWriteDeadline = std::chrono::seconds(10);

// Makes the events tell what the table holds: the outcomes that an admin's cancel request turned
// into cancels (`cancelled`), and a snooze's count in the metadata.
void AsWritten(std::vector<Completion>& batch, std::vector<int64_t>& cancelled) {
  std::sort(cancelled.begin(), cancelled.end());
  for (Completion& c : batch) {
    JobRow& job = c.event.job;
    if (c.params.if_cancel_requested &&
        std::binary_search(cancelled.begin(), cancelled.end(), c.params.id)) {
      const AttemptError& e = *c.params.if_cancel_requested;
      if (c.params.error && !job.errors.empty()) {
        job.errors.back() = e;
      } else {
        job.errors.push_back(e);
      }
      if (c.params.state == JobState::kScheduled) job.attempt = c.params.attempt;
      job.state = JobState::kCancelled;
      job.finalized_at = e.at;
      c.event.kind = Event::Kind::kJobCancelled;
      c.silent = false;
    } else if (c.params.snooze) {
      job.metadata = WithOneMoreSnooze(job.metadata);
    }
  }
}

}  // namespace

Completer::Completer(Executor& executor, Deliver deliver, Logger logger,
                     std::chrono::microseconds linger, const std::atomic<uint64_t>* possible_losses)
    : executor_(executor),
      deliver_(std::move(deliver)),
      logger_(std::move(logger)),
      linger_(linger),
      possible_losses_(possible_losses) {
  if (possible_losses_ != nullptr) losses_seen_ = possible_losses_->load();
}

Completer::~Completer() {
  if (thread_.joinable()) (void)Stop();
}

void Completer::Start() {
  thread_ = std::thread([this] {
    NameThisThread("complete");
    Run();
  });
}

void Completer::Add(Completion c) {
  std::unique_lock lock(mu_);
  space_cv_.wait(lock, [&] { return pending_.size() < kBacklogLimit || stopping_; });
  pending_.push_back(std::move(c));
  if (pending_.size() == 1 || pending_.size() >= kBatchTarget) cv_.notify_one();
}

void Completer::FlushSoon() {
  std::lock_guard lock(mu_);
  if (pending_.empty()) return;
  flush_ = true;
  cv_.notify_one();
}

Status Completer::Stop(std::chrono::steady_clock::time_point give_up_at) {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    give_up_at_ = std::min(std::chrono::steady_clock::now() + kStopWriteDeadline, give_up_at);
  }
  cv_.notify_all();
  space_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::lock_guard lock(mu_);
  return last_error_;
}

void Completer::Run() {
  auto backoff = std::chrono::duration_cast<std::chrono::microseconds>(kRetryBackoffStart);
  FailureLog write_failures("writing job outcomes");
  std::vector<Completion> batch;
  std::vector<int64_t> skipped;
  std::vector<int64_t> cancelled;
  bool retrying = false;  // the last write failed, and may have committed nonetheless
  std::vector<JobSetStateParams> sent;
  const auto has_work = [&] { return !pending_.empty() || stopping_; };
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (batch.empty()) {
        if (recent_.empty()) {
          cv_.wait(lock, has_work);
        } else if (!cv_.wait_for(lock, kRewriteWindow / 4, has_work)) {
          // Idle, with outcomes that a crash noticed only now (the heartbeat's, the listener's
          // broken connection) may have lost.
          lock.unlock();
          RewriteIfLost();
          continue;
        }
        if (pending_.empty() && stopping_) {
          lock.unlock();
          RewriteIfLost();
          return;
        }
        // A short linger lets a trickle of outcomes share one transaction.
        if (pending_.size() < kBatchTarget && !stopping_ && !flush_) {
          cv_.wait_for(lock, linger_,
                       [&] { return pending_.size() >= kBatchTarget || stopping_ || flush_; });
        }
        flush_ = false;
        if (pending_.size() <= kMaxBatch) {
          batch.swap(pending_);  // pending_ keeps the capacity of the last batch
        } else {
          const auto end = pending_.begin() + static_cast<std::ptrdiff_t>(kMaxBatch);
          batch.assign(std::make_move_iterator(pending_.begin()), std::make_move_iterator(end));
          pending_.erase(pending_.begin(), end);
        }
      }
    }
    space_cv_.notify_all();

    skipped.clear();
    sent.clear();
    // Kept only where a crash can lose acknowledged outcomes.
    Status st = Write(batch, retrying ? nullptr : &skipped, &cancelled,
                      possible_losses_ != nullptr ? &sent : nullptr);
    if (st.IsInvalidArgument()) st = WriteEach(batch, retrying, skipped, cancelled);
    if (st.ok()) {
      write_failures.Succeeded(logger_);
      {
        // A failure that a retry got past is not the error Stop reports.
        std::lock_guard lock(mu_);
        last_error_ = Status::Ok();
      }
      if (!skipped.empty()) {
        if (logger_) {
          logger_(LogLevel::kDebug,
                  fmt::format("{} of {} outcomes not written: the jobs had stopped running "
                              "(cancelled, rescued or deleted meanwhile)",
                              skipped.size(), batch.size()));
        }
        std::sort(skipped.begin(), skipped.end());
        std::erase_if(batch, [&](const Completion& c) {
          return std::binary_search(skipped.begin(), skipped.end(), c.params.id);
        });
      }
      retrying = false;
      if (!sent.empty()) {
        recent_.push_back({std::chrono::steady_clock::now(), std::move(sent)});
        sent = {};
      }
      RewriteIfLost();
      AsWritten(batch, cancelled);
      deliver_(batch);
      batch.clear();
      // The two vectors trade buffers; after a backlog, neither keeps more than a full batch's.
      if (batch.capacity() > kMaxBatch) batch.shrink_to_fit();
      backoff = kRetryBackoffStart;
      continue;
    }
    retrying = true;
    std::unique_lock lock(mu_);
    last_error_ = st;
    if (stopping_) {
      // Counted from Stop, not from the first failure after it: with the database locked, each
      // attempt waits out its busy timeout, and counting from the first failure let a stop take
      // 36 s instead of about 10. Nor past the client's Stop deadline: counted from here alone,
      // the wait came on top of the client's own 10 s behind a PostgreSQL lock (23 s, not 11).
      if (std::chrono::steady_clock::now() >= give_up_at_) {
        if (logger_) {
          logger_(LogLevel::kError,
                  fmt::format("could not write the outcomes of {} jobs before stopping ({}); they "
                              "stay running until rescued and will run again",
                              batch.size() + pending_.size(), st.ToString()));
        }
        return;
      }
    }
    write_failures.Failed(logger_, st,
                          fmt::format("{} outcomes waiting, next retry in {} ms",
                                      batch.size() + pending_.size(), backoff.count() / 1000));
    const auto retry_at = std::chrono::steady_clock::now() + backoff;
    cv_.wait_until(lock, stopping_ ? std::min(retry_at, give_up_at_) : retry_at);
    backoff = std::min<std::chrono::microseconds>(backoff * 2, kRetryBackoffMax);
  }
}

Status Completer::WriteEach(std::vector<Completion>& batch, bool retrying,
                            std::vector<int64_t>& skipped, std::vector<int64_t>& cancelled) {
  skipped.clear();
  cancelled.clear();
  std::vector<int64_t> dropped;
  std::vector<int64_t> one_skipped;
  std::vector<int64_t> one_cancelled;
  // The driver refills both lists at each write.
  const auto write_one = [&](const Completion& c) {
    Status st = Write(std::span(&c, 1), retrying ? nullptr : &one_skipped, &one_cancelled);
    if (st.ok()) {
      if (!retrying) skipped.insert(skipped.end(), one_skipped.begin(), one_skipped.end());
      cancelled.insert(cancelled.end(), one_cancelled.begin(), one_cancelled.end());
    }
    return st;
  };
  for (Completion& c : batch) {
    Status st = write_one(c);
    if (st.IsInvalidArgument()) {
      const std::string refusal = CutUtf8(StorableErrorText(st.message()), 500);
      if (logger_) {
        logger_(LogLevel::kError,
                fmt::format("the database refused job {}'s outcome ({}); writing it again with "
                            "its error text replaced",
                            c.params.id, refusal));
      }
      const auto stand_in = [&](AttemptError& e) {
        e.error = fmt::format("the error of this attempt could not be stored: {}", refusal);
        e.trace.clear();
      };
      if (c.params.error) stand_in(*c.params.error);
      if (c.params.if_cancel_requested) stand_in(*c.params.if_cancel_requested);
      if (c.params.error && !c.event.job.errors.empty()) stand_in(c.event.job.errors.back());
      st = write_one(c);
      if (st.IsInvalidArgument()) {
        if (logger_) {
          logger_(LogLevel::kError,
                  fmt::format("job {}'s outcome cannot be written ({}); it stays running until "
                              "the rescuer makes it retryable",
                              c.params.id, CutUtf8(StorableErrorText(st.message()), 500)));
        }
        dropped.push_back(c.params.id);
        continue;
      }
    }
    if (!st.ok()) return st;
  }
  std::erase_if(batch, [&](const Completion& c) {
    return std::find(dropped.begin(), dropped.end(), c.params.id) != dropped.end();
  });
  return Status::Ok();
}

Status Completer::Write(std::span<const Completion> batch, std::vector<int64_t>* skipped,
                        std::vector<int64_t>* cancelled, std::vector<JobSetStateParams>* sent) {
  JobSetStateIfRunningManyParams params;
  params.skipped = skipped;
  params.cancelled = cancelled;
  params.jobs.reserve(batch.size());
  for (const auto& c : batch) params.jobs.push_back(c.params);
  auto r = executor_.JobSetStateIfRunningMany(params);
  if (r && sent != nullptr) *sent = std::move(params.jobs);
  return r.status();
}

void Completer::RewriteIfLost() {
  if (possible_losses_ == nullptr) return;
  const uint64_t losses = possible_losses_->load();
  if (losses == losses_seen_) {
    const auto before = std::chrono::steady_clock::now() - kRewriteWindow;
    while (!recent_.empty() && recent_.front().at < before) recent_.pop_front();
    return;
  }
  JobSetStateIfRunningManyParams again;
  for (const Written& w : recent_) {
    again.jobs.insert(again.jobs.end(), w.jobs.begin(), w.jobs.end());
  }
  auto r = executor_.JobSetStateIfRunningMany(again);
  if (!r) return;  // the database is still away: tried again at the next look
  losses_seen_ = losses;
  if (*r > 0 && logger_) {
    logger_(LogLevel::kWarn,
            fmt::format("the database lost the outcomes of {} jobs after acknowledging them (a "
                        "server crash?); they are written again",
                        *r));
  }
}

}  // namespace spool::internal
