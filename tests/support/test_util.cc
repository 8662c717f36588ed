#include "support/test_util.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <condition_variable>
#include <map>
#include <stdexcept>
#include <stop_token>
#include <thread>

namespace spool::testing {

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "spool-test-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string TempDir::SqliteUrl(const std::string& name) const {
  return "sqlite://" + (path_ / name).string();
}

Outcome WaitForCancel(JobContext& ctx) {
  std::mutex m;
  std::condition_variable_any cv;
  std::unique_lock lock(m);
  cv.wait(lock, ctx.stop_token(), [] { return false; });
  return Outcome::Fail("stopped: context cancelled");
}

bool Eventually(const std::function<bool()>& pred) {
  const auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

EventLog::EventLog(Client& client) : client_(client) {
  sub_ = client_.Subscribe([this](const Event& e) {
    {
      std::lock_guard lock(mu_);
      events_.push_back(e);
    }
    cv_.notify_all();
  });
}

EventLog::~EventLog() { client_.Unsubscribe(sub_); }

bool EventLog::WaitFor(const std::function<bool(const std::vector<Event>&)>& pred) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, kWaitLimit, [&] { return pred(events_); });
}

bool EventLog::WaitForJob(int64_t id, Event::Kind kind) {
  return WaitFor([&](const std::vector<Event>& evs) {
    for (const auto& e : evs) {
      if (e.job.id == id && e.kind == kind) return true;
    }
    return false;
  });
}

bool EventLog::WaitForCount(Event::Kind kind, size_t n) {
  return WaitFor([&](const std::vector<Event>& evs) {
    size_t c = 0;
    for (const auto& e : evs) c += e.kind == kind ? 1 : 0;
    return c >= n;
  });
}

std::vector<Event> EventLog::events() {
  std::lock_guard lock(mu_);
  return events_;
}

void Signal::Notify() {
  {
    std::lock_guard lock(mu_);
    set_ = true;
  }
  cv_.notify_all();
}

bool Signal::WaitFor(std::chrono::milliseconds limit) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, limit, [&] { return set_; });
}

bool Signal::notified() {
  std::lock_guard lock(mu_);
  return set_;
}

ClientOptions ScaledMaintenanceOptions(std::shared_ptr<Clock> clock) {
  using namespace std::chrono_literals;
  ClientOptions o;
  o.queues["default"] = {.max_workers = 4};
  o.clock = std::move(clock);
  o.leader_ttl = 30s;
  o.heartbeat_interval = 5s;
  o.client_stale_after = 30s;
  o.rescue_interval = 5s;
  o.poll_interval = 20ms;
  o.schedule_interval = 5ms;
  o.logger = [](LogLevel, std::string_view) {};
  return o;
}

void ExpectOneJobPerMinute(const std::vector<JobRow>& jobs, size_t min_minutes) {
  std::map<int64_t, int> per_minute;
  for (const auto& j : jobs) {
    per_minute[std::chrono::duration_cast<std::chrono::minutes>(j.created_at.time_since_epoch())
                   .count()]++;
  }
  ASSERT_GE(per_minute.size(), min_minutes);
  int64_t prev = -1;
  for (const auto& [minute, n] : per_minute) {
    EXPECT_EQ(n, 1) << "minute " << minute << " enqueued " << n << " times";
    if (prev >= 0) {
      EXPECT_EQ(minute, prev + 1) << "a tick was skipped before minute " << minute;
    }
    prev = minute;
  }
}

}  // namespace spool::testing
