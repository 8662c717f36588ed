#include "runtime/deadline_watcher.h"

#include <algorithm>

namespace spool::internal {

void DeadlineWatcher::Start() {
  thread_ = std::thread([this] { Run(); });
}

void DeadlineWatcher::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void DeadlineWatcher::Add(int64_t id, TimePoint deadline, std::stop_source source,
                          std::atomic<bool>* timed_out) {
  {
    std::lock_guard lock(mu_);
    entries_.insert_or_assign(id, Entry{deadline, std::move(source), timed_out});
  }
  cv_.notify_one();
}

void DeadlineWatcher::Remove(int64_t id) {
  std::lock_guard lock(mu_);
  entries_.erase(id);
}

void DeadlineWatcher::Run() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    if (entries_.empty()) {
      cv_.wait(lock, [&] { return stopping_ || !entries_.empty(); });
      continue;
    }
    const TimePoint now = clock_.Now();
    TimePoint earliest = TimePoint::max();
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->second.deadline <= now) {
        it->second.timed_out->store(true);
        it->second.source.request_stop();
        it = entries_.erase(it);
      } else {
        earliest = std::min(earliest, it->second.deadline);
        ++it;
      }
    }
    if (earliest == TimePoint::max()) continue;
    const auto nap = std::min<Duration>(earliest - now, kMaxNap);
    cv_.wait_for(lock, nap);
  }
}

}  // namespace spool::internal
