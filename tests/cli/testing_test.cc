// spool/testing.h, the helpers generated job tests use: run a worker inline, read back inserts.
#include "spool/testing.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

namespace {

struct NotifyArgs {
  static constexpr std::string_view kKind = "notify";
  std::string to;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(NotifyArgs, to)
};

struct SignupArgs {
  static constexpr std::string_view kKind = "signup";
  std::string email;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(SignupArgs, email)
};

// Enqueues a notify job per signup through the context's client; fails on an empty email.
class SignupWorker : public spool::Worker<SignupArgs> {
 public:
  spool::Outcome Work(spool::JobContext& ctx, const SignupArgs& args) override {
    if (args.email.empty()) throw std::runtime_error("no email");
    if (args.email == "int") throw 42;
    seen_attempt = ctx.attempt();
    seen_queue = ctx.job().queue;
    ctx.Log(spool::LogLevel::kInfo, "signup " + args.email);
    return ctx.client().Insert(NotifyArgs{args.email}).status();
  }
  int seen_attempt = 0;
  std::string seen_queue;
};

TEST(SpoolTestingTest, WorkInlineRunsTheWorkerAndRecordsItsInserts) {
  auto queue = spool::testing::TestQueue::Create();
  ASSERT_TRUE(queue) << queue.error().ToString();
  SignupWorker worker;
  std::string logged;
  spool::testing::WorkOptions options;
  options.attempt = 3;
  options.insert.queue = "mail";
  options.logger = [&](spool::LogLevel, std::string_view line) { logged += std::string(line); };
  auto outcome =
      spool::testing::WorkInline(worker, (*queue)->client(), SignupArgs{"a@b.c"}, options);
  ASSERT_TRUE(outcome) << outcome.error().ToString();
  EXPECT_EQ(outcome->kind(), spool::Outcome::Kind::kDone) << outcome->message();
  EXPECT_EQ(worker.seen_attempt, 3);
  EXPECT_EQ(worker.seen_queue, "mail");
  EXPECT_NE(logged.find("signup a@b.c"), std::string::npos) << logged;

  auto sent = spool::testing::RequireInserted<NotifyArgs>((*queue)->client());
  ASSERT_TRUE(sent) << sent.error().ToString();
  ASSERT_EQ(sent->size(), 1u);
  EXPECT_EQ(sent->front().to, "a@b.c");
  // Nothing of the worker's own kind was inserted: only what Work enqueued is there.
  auto signups = spool::testing::RequireInserted<SignupArgs>((*queue)->client());
  ASSERT_FALSE(signups);
  EXPECT_TRUE(signups.error().IsNotFound()) << signups.error().ToString();
}

// Waits for its context to be cancelled (at most 10 s), as a well-behaved slow job does.
class PatientWorker : public spool::Worker<NotifyArgs> {
 public:
  spool::Outcome Work(spool::JobContext& ctx, const NotifyArgs&) override {
    seen_id = ctx.job().id;
    had_deadline = ctx.deadline().has_value();
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!ctx.Cancelled() && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::yield();
    }
    return ctx.Cancelled() ? spool::Outcome::Cancel("timed out") : spool::Outcome::Done();
  }
  std::optional<spool::Duration> Timeout(const spool::JobRow&) const override { return timeout; }
  std::optional<spool::Duration> timeout;
  int64_t seen_id = -1;
  bool had_deadline = false;
};

// The context is cancelled at the worker's Timeout or WorkOptions::deadline, as at run time, so a
// test can see how a job behaves when its time is up; a job's id can be given.
TEST(SpoolTestingTest, WorkInlineCancelsTheContextAtTheDeadline) {
  auto queue = spool::testing::TestQueue::Create();
  ASSERT_TRUE(queue) << queue.error().ToString();
  PatientWorker worker;
  worker.timeout = std::chrono::milliseconds(20);
  spool::testing::WorkOptions options;
  options.id = 42;
  auto outcome = spool::testing::WorkInline(worker, (*queue)->client(), NotifyArgs{"a"}, options);
  ASSERT_TRUE(outcome) << outcome.error().ToString();
  EXPECT_EQ(outcome->kind(), spool::Outcome::Kind::kCancel);
  EXPECT_TRUE(worker.had_deadline);
  EXPECT_EQ(worker.seen_id, 42);

  worker.timeout.reset();
  options.deadline = std::chrono::time_point_cast<spool::Duration>(
      std::chrono::system_clock::now() + std::chrono::milliseconds(20));
  outcome = spool::testing::WorkInline(worker, (*queue)->client(), NotifyArgs{"a"}, options);
  ASSERT_TRUE(outcome) << outcome.error().ToString();
  EXPECT_EQ(outcome->kind(), spool::Outcome::Kind::kCancel);
}

TEST(SpoolTestingTest, ExceptionsBecomeFailedAttemptsAndKindsMustMatch) {
  auto queue = spool::testing::TestQueue::Create();
  ASSERT_TRUE(queue) << queue.error().ToString();
  SignupWorker worker;
  auto outcome = spool::testing::WorkInline(worker, (*queue)->client(), SignupArgs{});
  ASSERT_TRUE(outcome) << outcome.error().ToString();
  EXPECT_EQ(outcome->kind(), spool::Outcome::Kind::kFail);
  // The words the runtime records for the same throw.
  EXPECT_EQ(outcome->message(), "std::runtime_error thrown: no email");
  auto odd = spool::testing::WorkInline(worker, (*queue)->client(), SignupArgs{"int"});
  ASSERT_TRUE(odd) << odd.error().ToString();
  EXPECT_EQ(odd->message(), "non-standard exception thrown: int");
  auto wrong = spool::testing::WorkInline(worker, (*queue)->client(), NotifyArgs{"x"});
  ASSERT_FALSE(wrong);
  EXPECT_TRUE(wrong.error().IsInvalidArgument());
  auto none = spool::testing::InsertedArgs<NotifyArgs>((*queue)->client());
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
}

TEST(SpoolTestingTest, TestQueueRemovesItsFolder) {
  std::string url;
  {
    auto queue = spool::testing::TestQueue::Create();
    ASSERT_TRUE(queue) << queue.error().ToString();
    url = (*queue)->url();
    ASSERT_TRUE(std::filesystem::exists(url.substr(9)));
  }
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::path(url.substr(9)).parent_path()));
}

}  // namespace
