#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <stop_token>
#include <thread>
#include <utility>

#include "core/nap.h"
#include "spool/clock.h"

namespace spool::internal {

// Cancels jobs whose attempt deadline has passed. Deadlines are read against the client's Clock
// so a FakeClock drives timeouts in tests; the thread re-checks at least every kMaxNap of real
// time because a fake clock cannot wake it. With the system clock it sleeps until the next
// deadline (see MaxNap). Thread safe.
class DeadlineWatcher {
 public:
  explicit DeadlineWatcher(const Clock& clock) : clock_(clock), max_nap_(MaxNap(clock, kMaxNap)) {}
  ~DeadlineWatcher() { Stop(); }

  void Start();
  void Stop();
  // Watches `source` until Remove(id); `timed_out` is set before the stop is requested.
  void Add(int64_t id, TimePoint deadline, std::stop_source source, std::atomic<bool>* timed_out);
  void Remove(int64_t id);

  static constexpr auto kMaxNap = std::chrono::milliseconds(5);

 private:
  struct Entry {
    TimePoint deadline;
    std::stop_source source;
    std::atomic<bool>* timed_out;
  };
  void Run();

  const Clock& clock_;
  const Duration max_nap_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int64_t, Entry> entries_;                 // guarded by mu_
  std::set<std::pair<TimePoint, int64_t>> by_time_;  // entries_ by deadline; guarded by mu_
  // When the thread next looks on its own: an Add with an earlier deadline must wake it, any
  // other Add need not (a wake-up per job was a measurable cost with thousands of jobs a second).
  TimePoint wake_at_ = TimePoint::max();  // guarded by mu_
  bool stopping_ = false;                 // guarded by mu_
  std::thread thread_;
};

}  // namespace spool::internal
