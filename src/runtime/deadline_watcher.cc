#include "runtime/deadline_watcher.h"

#include <algorithm>

#include "core/thread_name.h"

namespace spool::internal {

void DeadlineWatcher::Start() {
  thread_ = std::thread([this] {
    NameThisThread("deadline");
    Run();
  });
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
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    if (auto it = entries_.find(id); it != entries_.end()) {
      by_time_.erase({it->second.deadline, id});
    }
    entries_.insert_or_assign(id, Entry{deadline, std::move(source), timed_out});
    by_time_.emplace(deadline, id);
    wake = deadline < wake_at_;
  }
  if (wake) cv_.notify_one();
}

void DeadlineWatcher::Remove(int64_t id) {
  std::lock_guard lock(mu_);
  if (auto it = entries_.find(id); it != entries_.end()) {
    by_time_.erase({it->second.deadline, id});
    entries_.erase(it);
  }
}

void DeadlineWatcher::Run() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    const TimePoint now = clock_.Now();
    while (!by_time_.empty() && by_time_.begin()->first <= now) {
      auto entry = entries_.find(by_time_.begin()->second);
      by_time_.erase(by_time_.begin());
      entry->second.timed_out->store(true);
      entry->second.source.request_stop();
      entries_.erase(entry);
    }
    if (by_time_.empty()) {
      wake_at_ = TimePoint::max();
      cv_.wait(lock, [&] { return stopping_ || !by_time_.empty(); });
      continue;
    }
    wake_at_ = by_time_.begin()->first;
    cv_.wait_for(lock, std::min<Duration>(wake_at_ - now, max_nap_));
  }
}

}  // namespace spool::internal
