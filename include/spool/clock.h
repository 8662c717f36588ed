#pragma once

#include <atomic>
#include <chrono>
#include <memory>

#include "spool/job.h"

namespace spool {

// The source of wall-clock time for everything the client writes (scheduled_at, finalized_at,
// backoff). Tests inject a FakeClock so time moves only when they say so. Implementations must be
// thread safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
};

// The system clock.
class SystemClock final : public Clock {
 public:
  TimePoint Now() const override {
    return std::chrono::time_point_cast<Duration>(std::chrono::system_clock::now());
  }
};

// A clock that stands still until Advance() or Set() is called. Thread safe.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(TimePoint start = TimePoint(std::chrono::seconds(1'800'000'000)))
      : now_us_(start.time_since_epoch().count()) {}
  TimePoint Now() const override { return TimePoint(Duration(now_us_.load())); }
  void Advance(Duration d) { now_us_.fetch_add(d.count()); }
  void Set(TimePoint t) { now_us_.store(t.time_since_epoch().count()); }

 private:
  std::atomic<int64_t> now_us_;
};

}  // namespace spool
