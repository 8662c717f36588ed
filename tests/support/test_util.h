#pragma once

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "spool/spool.h"

namespace spool::testing {

// A fresh directory under /tmp, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  // "sqlite:///tmp/spool-test-XXXX/<name>"
  std::string SqliteUrl(const std::string& name = "test.db") const;

 private:
  std::filesystem::path path_;
};

// Real-time bound for waits on other threads: generous, because a loaded CI box is slow, and
// never reached when the code is right.
inline constexpr auto kWaitLimit = std::chrono::seconds(20);

// Re-checks `pred` every millisecond until it holds or kWaitLimit passes; for state another
// process or a background loop changes without an event to wait on. Returns whether it held.
bool Eventually(const std::function<bool()>& pred);

// The same backoff after every failure, so a test can step a FakeClock exactly onto the retry.
class FixedRetry final : public RetryPolicy {
 public:
  explicit FixedRetry(Duration delay) : delay_(delay) {}
  Duration NextRetry(const JobRow&) const override { return delay_; }

 private:
  Duration delay_;
};

// Blocks until the job's context is cancelled, then fails with "stopped: context cancelled".
Outcome WaitForCancel(JobContext& ctx);

// Wall time running `scale` times faster than real time, the same in every process forked from
// one parent (CLOCK_MONOTONIC is system wide): cron ticks, leases and heartbeats play out in
// seconds in multi-process tests.
class ScaledClock final : public Clock {
 public:
  ScaledClock(TimePoint base, std::chrono::steady_clock::time_point real_base, int64_t scale)
      : base_(base), real_base_(real_base), scale_(scale) {}
  TimePoint Now() const override {
    const auto real = std::chrono::steady_clock::now() - real_base_;
    return base_ + std::chrono::duration_cast<Duration>(real) * scale_;
  }

 private:
  TimePoint base_;
  std::chrono::steady_clock::time_point real_base_;
  int64_t scale_;
};

// Options for multi-process tests on a ScaledClock running 60x: in clock time a 30 s lease is
// 500 ms real and a heartbeat every 5 s is 83 ms; 4 workers on "default"; quiet logger.
ClientOptions ScaledMaintenanceOptions(std::shared_ptr<Clock> clock);

// Checks that `jobs` hold exactly one job per clock minute (by created_at) over at least
// `min_minutes` consecutive minutes: no periodic tick enqueued twice, none skipped.
void ExpectOneJobPerMinute(const std::vector<JobRow>& jobs, size_t min_minutes);

// Records a client's events and lets a test wait for them with a deadline.
class EventLog {
 public:
  explicit EventLog(Client& client);
  ~EventLog();
  // Waits until `pred(events)` holds or kWaitLimit passes; returns whether it held.
  bool WaitFor(const std::function<bool(const std::vector<Event>&)>& pred);
  // Waits for an event of `kind` about job `id`.
  bool WaitForJob(int64_t id, Event::Kind kind);
  // Waits until `n` events of `kind` have been seen.
  bool WaitForCount(Event::Kind kind, size_t n);
  std::vector<Event> events();

 private:
  Client& client_;
  int sub_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Event> events_;
};

// A one-shot signal threads wait on with a deadline.
class Signal {
 public:
  void Notify();
  bool WaitFor(std::chrono::milliseconds limit = kWaitLimit);
  bool notified();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

}  // namespace spool::testing
