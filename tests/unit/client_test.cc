// The runtime end to end on SQLite in a temp dir, with a fake clock. Waits are on events with a
// deadline; nothing sleeps to wait for a thread.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sqlite3.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stop_token>
#include <thread>
#include <vector>

#include "core/job_hooks.h"
#include "driver/driver.h"
#include "driver/state_codes.h"
#include "runtime/completer.h"
#include "spool/spool.h"
#include "support/test_util.h"

namespace spool {
namespace {

using namespace std::chrono_literals;
using testing::EventLog;
using testing::Signal;
using testing::TempDir;
using testing::WaitForCancel;

struct EmailArgs {
  static constexpr std::string_view kKind = "email";
  std::string to;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(EmailArgs, to)
};

// Behaviour chosen per test through a callback, so one worker type covers every outcome.
struct Behaviour {
  std::function<Outcome(JobContext&, const EmailArgs&)> fn;
};

class EmailWorker final : public Worker<EmailArgs> {
 public:
  explicit EmailWorker(std::shared_ptr<Behaviour> b) : b_(std::move(b)) {}
  Outcome Work(JobContext& ctx, const EmailArgs& args) override { return b_->fn(ctx, args); }

 private:
  std::shared_ptr<Behaviour> b_;
};

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    behaviour_ = std::make_shared<Behaviour>();
    behaviour_->fn = [](JobContext&, const EmailArgs&) { return Outcome::Done(); };
    ASSERT_TRUE(MigrateUp(url_).ok());
  }

  ClientOptions Options(int max_workers = 4) {
    ClientOptions o;
    o.queues["default"] = {.max_workers = max_workers};
    o.clock = clock_;
    o.retry_policy = std::make_shared<testing::FixedRetry>(10s);
    o.schedule_interval = 2ms;
    o.poll_interval = 1h;  // every wake-up in these tests must come from a notification
    o.logger = [](LogLevel, std::string_view) {};
    return o;
  }

  std::unique_ptr<Client> Open(ClientOptions o) {
    Workers w;
    w.Add<EmailWorker>(behaviour_);
    auto c = Client::Open(url_, std::move(o), std::move(w));
    EXPECT_TRUE(c.has_value()) << c.error().ToString();
    return c ? std::move(*c) : nullptr;
  }

  std::unique_ptr<Client> Start(int max_workers = 4) {
    auto c = Open(Options(max_workers));
    if (c) {
      EXPECT_TRUE(c->Start().ok());
    }
    return c;
  }

  JobRow Get(Client& c, int64_t id) {
    auto r = c.JobGet(id);
    EXPECT_TRUE(r.has_value()) << r.error().ToString();
    return r ? *r : JobRow{};
  }

  // A started client running one job that returns only once its context is cancelled; `id` is
  // the job's, set once it runs (0 if it did not start).
  std::unique_ptr<Client> StartAJobThatWaitsForItsCancel(int64_t& id) {
    auto started = std::make_shared<Signal>();
    behaviour_->fn = [started](JobContext& ctx, const EmailArgs&) {
      started->Notify();
      return WaitForCancel(ctx);
    };
    auto c = Start();
    auto r = c->Insert(EmailArgs{"a"});
    EXPECT_TRUE(r.has_value());
    id = r && started->WaitFor() ? r->job.id : 0;
    return c;
  }

  TempDir dir_;
  std::string url_ = dir_.SqliteUrl();
  std::shared_ptr<FakeClock> clock_ = std::make_shared<FakeClock>();
  std::shared_ptr<Behaviour> behaviour_;
};

TEST_F(ClientTest, SuccessCompletesWithFinalizedAt) {
  auto c = Start();
  EventLog log(*c);
  auto r = c->Insert(EmailArgs{"a@b.c"});
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->job.kind, "email");
  ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobCompleted));
  JobRow j = Get(*c, r->job.id);
  EXPECT_EQ(j.state, JobState::kCompleted);
  EXPECT_EQ(j.attempt, 1);
  ASSERT_TRUE(j.finalized_at.has_value());
  EXPECT_EQ(*j.finalized_at, clock_->Now());
  ASSERT_EQ(j.attempted_by.size(), 1u);
  EXPECT_EQ(j.attempted_by[0], c->client_id());
  EXPECT_TRUE(c->Stop(10s).ok());
}

// The names of this process's threads, from /proc (Linux).
std::multiset<std::string> ThreadNames() {
  std::multiset<std::string> names;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream in(task.path() / "comm");
    std::string name;
    if (std::getline(in, name)) names.insert(name);
  }
  return names;
}

TEST_F(ClientTest, CheckArgsAsksTheKindsWorker) {
  auto c = Open(Options());
  ASSERT_TRUE(c);
  EXPECT_TRUE(c->CheckArgs("email", R"({"to":"a@b"})").ok());
  const Status missing = c->CheckArgs("email", R"({"message":"hi"})");
  EXPECT_TRUE(missing.IsInvalidArgument()) << missing.ToString();
  EXPECT_NE(missing.message().find("cannot parse args of kind email"), std::string::npos)
      << missing.ToString();
  EXPECT_TRUE(c->CheckArgs("email", "not json").IsInvalidArgument());
  // No worker here for the kind: another process may work it, so nothing is refused.
  EXPECT_TRUE(c->CheckArgs("other", "not json").ok());
}

TEST_F(ClientTest, ThreadsAreNamedForWhatTheyDo) {
  std::string worker_name;
  behaviour_->fn = [&](JobContext&, const EmailArgs&) {
    char name[16] = {};
    pthread_getname_np(pthread_self(), name, sizeof(name));
    worker_name = name;
    return Outcome::Done();
  };
  auto c = Start(3);
  EventLog log(*c);
  auto r = c->Insert(EmailArgs{"a@b.c"});
  ASSERT_TRUE(r.has_value());
  // Completed: the producer claimed it, a worker ran it and the completer wrote its outcome.
  ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobCompleted));
  EXPECT_EQ(worker_name, "spool-worker");
  const auto names = ThreadNames();
  EXPECT_EQ(names.count("spool-produce"), 1u);
  EXPECT_EQ(names.count("spool-complete"), 1u);
  EXPECT_TRUE(c->Stop(10s).ok());
}

TEST_F(ClientTest, FailureRetriesAfterBackoffThenCompletes) {
  behaviour_->fn = [](JobContext& ctx, const EmailArgs&) {
    return ctx.attempt() == 1 ? Outcome::Fail("smtp down") : Outcome::Done();
  };
  auto c = Start();
  EventLog log(*c);
  auto r = c->Insert(EmailArgs{"a@b.c"});
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobFailed));
  JobRow j = Get(*c, r->job.id);
  EXPECT_EQ(j.state, JobState::kRetryable);
  EXPECT_EQ(j.scheduled_at, clock_->Now() + 10s);
  ASSERT_EQ(j.errors.size(), 1u);
  EXPECT_EQ(j.errors[0].attempt, 1);
  EXPECT_EQ(j.errors[0].error, "smtp down");
  EXPECT_EQ(j.errors[0].at, clock_->Now());

  clock_->Advance(9s);  // not due yet: the scheduler must leave it alone
  clock_->Advance(1s);
  ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobCompleted));
  j = Get(*c, r->job.id);
  EXPECT_EQ(j.state, JobState::kCompleted);
  EXPECT_EQ(j.attempt, 2);
  EXPECT_EQ(j.errors.size(), 1u);
  EXPECT_TRUE(c->Stop(10s).ok());
}

TEST_F(ClientTest, DiscardedAfterMaxAttemptsWithEveryError) {
  behaviour_->fn = [](JobContext& ctx, const EmailArgs&) {
    return Outcome::Fail("boom " + std::to_string(ctx.attempt()));
  };
  auto c = Start();
  EventLog log(*c);
  auto r = c->Insert(EmailArgs{"x"}, {.max_attempts = 3});
  ASSERT_TRUE(r.has_value());
  for (size_t i = 1; i <= 2; ++i) {
    ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobFailed, i));
    clock_->Advance(10s);
  }
  ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobDiscarded));
  JobRow j = Get(*c, r->job.id);
  EXPECT_EQ(j.state, JobState::kDiscarded);
  EXPECT_EQ(j.attempt, 3);
  ASSERT_EQ(j.errors.size(), 3u);
  EXPECT_EQ(j.errors[2].error, "boom 3");
  EXPECT_TRUE(j.finalized_at.has_value());
  EXPECT_TRUE(c->Stop(10s).ok());
}

TEST_F(ClientTest, ExceptionsOfAnyTypeAreRecordedAndThePoolSurvives) {
  behaviour_->fn = [](JobContext&, const EmailArgs& a) -> Outcome {
    if (a.to == "std") throw std::runtime_error("disk full");
    if (a.to == "int") throw 42;
    return Outcome::Done();
  };
  auto c = Start(1);
  EventLog log(*c);
  auto std_job = c->Insert(EmailArgs{"std"});
  auto int_job = c->Insert(EmailArgs{"int"});
  auto ok_job = c->Insert(EmailArgs{"ok"});
  ASSERT_TRUE(std_job && int_job && ok_job);
  ASSERT_TRUE(log.WaitForJob(ok_job->job.id, Event::Kind::kJobCompleted));
  ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobFailed, 2));
  JobRow a = Get(*c, std_job->job.id);
  ASSERT_EQ(a.errors.size(), 1u);
  EXPECT_EQ(a.errors[0].error, "std::runtime_error thrown: disk full");
  EXPECT_EQ(a.errors[0].trace, "std::runtime_error");
  JobRow b = Get(*c, int_job->job.id);
  ASSERT_EQ(b.errors.size(), 1u);
  EXPECT_EQ(b.errors[0].error, "non-standard exception thrown: int");
  EXPECT_TRUE(c->Stop(10s).ok());
}

// What Work returns is stored as the databases can hold it: NUL bytes replaced (PostgreSQL's JSON
// refuses them, and with them the whole batch of outcomes), and no more than kMaxErrorBytes.
TEST_F(ClientTest, ErrorTextIsStoredWithoutNulAndWithinItsLimit) {
  behaviour_->fn = [](JobContext&, const EmailArgs& a) -> Outcome {
    if (a.to == "nul") return Outcome::Fail(std::string("bad\0nul", 7));
    return Outcome::Fail(std::string(100'000, 'e'));
  };
  auto c = Start(1);
  EventLog log(*c);
  auto nul = c->Insert(EmailArgs{"nul"});
  auto big = c->Insert(EmailArgs{"big"});
  ASSERT_TRUE(nul && big);
  ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobFailed, 2));
  JobRow a = Get(*c, nul->job.id);
  ASSERT_EQ(a.errors.size(), 1u);
  EXPECT_EQ(a.errors[0].error, "bad\uFFFDnul");
  JobRow b = Get(*c, big->job.id);
  ASSERT_EQ(b.errors.size(), 1u);
  EXPECT_EQ(b.errors[0].error,
            std::string(internal::kMaxErrorBytes, 'e') + " ... (83616 more bytes not kept)");
  EXPECT_TRUE(c->Stop(10s).ok());
}

// A thread the system refuses (threads-max, ulimit -u, vm.max_map_count) is an error from Start,
// with everything started stopped again; std::thread's exception used to end the process. Here
// every new thread asks for a 1 TiB stack, which no mmap grants.
TEST_F(ClientTest, AThreadTheSystemRefusesIsAnErrorFromStart) {
  auto c = Open(Options());
  pthread_attr_t saved;
  ASSERT_EQ(pthread_getattr_default_np(&saved), 0);
  size_t saved_stack = 0;
  ASSERT_EQ(pthread_attr_getstacksize(&saved, &saved_stack), 0);
  pthread_attr_t huge;
  ASSERT_EQ(pthread_attr_init(&huge), 0);
  ASSERT_EQ(pthread_attr_setstacksize(&huge, size_t{1} << 40), 0);
  ASSERT_EQ(pthread_setattr_default_np(&huge), 0);
  const Status st = c->Start();
  ASSERT_EQ(pthread_setattr_default_np(&saved), 0);
  pthread_attr_destroy(&huge);
  pthread_attr_destroy(&saved);
  ASSERT_TRUE(st.IsFailedPrecondition()) << st.ToString();
  EXPECT_NE(st.message().find("the system refused a thread"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("lower max_workers"), std::string::npos) << st.message();
  const Status again = c->Start();
  EXPECT_NE(again.message().find("client was stopped"), std::string::npos) << again.ToString();
  // Stopped: nothing claims the job, and Stop has nothing left to do.
  auto r = c->Insert(EmailArgs{"a"});
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(Get(*c, r->job.id).state, JobState::kAvailable);
  EXPECT_TRUE(c->Stop(1s).ok());
}

TEST_F(ClientTest, SnoozeReschedulesWithoutUsingAnAttempt) {
  std::mutex mu;
  std::vector<int64_t> seen;  // ctx.snoozes() at each start
  behaviour_->fn = [&](JobContext& ctx, const EmailArgs&) {
    std::lock_guard lock(mu);
    seen.push_back(ctx.snoozes());
    return ctx.snoozes() < 2 ? Outcome::Snooze(30s) : Outcome::Done();
  };
  auto c = Start();
  EventLog log(*c);
  InsertOptions opts;
  opts.metadata = R"({"origin":"signup"})";
  auto r = c->Insert(EmailArgs{"a"}, opts);
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobSnoozed));
  JobRow j = Get(*c, r->job.id);
  EXPECT_EQ(j.state, JobState::kScheduled);
  EXPECT_EQ(j.attempt, 0);
  EXPECT_EQ(j.scheduled_at, clock_->Now() + 30s);
  EXPECT_TRUE(j.errors.empty());
  EXPECT_EQ(nlohmann::json::parse(j.metadata),
            nlohmann::json::parse(R"({"origin":"signup","snoozes":1})"));
  clock_->Advance(30s);
  ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobSnoozed, 2));
  clock_->Advance(30s);
  ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobCompleted));
  j = Get(*c, r->job.id);
  EXPECT_EQ(j.attempt, 1);
  EXPECT_EQ(nlohmann::json::parse(j.metadata),
            nlohmann::json::parse(R"({"origin":"signup","snoozes":2})"));
  EXPECT_TRUE(c->Stop(10s).ok());
  EXPECT_EQ(seen, (std::vector<int64_t>{0, 1, 2}));
  // The events tell what the table holds.
  std::vector<int64_t> counted;
  for (const Event& e : log.events()) {
    if (e.kind == Event::Kind::kJobSnoozed) {
      counted.push_back(spool::internal::SnoozesIn(e.job.metadata));
    }
  }
  EXPECT_EQ(counted, (std::vector<int64_t>{1, 2}));
}

TEST_F(ClientTest, CancelFinalizesWithReason) {
  behaviour_->fn = [](JobContext&, const EmailArgs&) { return Outcome::Cancel("user deleted"); };
  auto c = Start();
  EventLog log(*c);
  auto r = c->Insert(EmailArgs{"a"});
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobCancelled));
  JobRow j = Get(*c, r->job.id);
  EXPECT_EQ(j.state, JobState::kCancelled);
  ASSERT_EQ(j.errors.size(), 1u);
  EXPECT_EQ(j.errors[0].error, "cancelled: user deleted");
  EXPECT_TRUE(j.finalized_at.has_value());
  EXPECT_TRUE(c->Stop(10s).ok());
}

// Each failed, discarded or cancelled attempt leaves a line with its error, written before its
// event is delivered; a completion leaves none.
TEST_F(ClientTest, FailuresDiscardsAndCancelsAreLoggedWithTheirErrors) {
  behaviour_->fn = [](JobContext& ctx, const EmailArgs& a) {
    if (a.to == "gone") return Outcome::Cancel("address gone");
    if (a.to == "ok") return Outcome::Done();
    return Outcome::Fail("smtp down " + std::to_string(ctx.attempt()));
  };
  std::mutex mu;
  std::vector<std::pair<LogLevel, std::string>> lines;
  auto o = Options();
  o.logger = [&](LogLevel level, std::string_view m) {
    std::lock_guard lock(mu);
    lines.emplace_back(level, m);
  };
  auto c = Open(std::move(o));
  ASSERT_TRUE(c->Start().ok());
  EventLog log(*c);
  auto failing = c->Insert(EmailArgs{"x"}, {.max_attempts = 2});
  auto gone = c->Insert(EmailArgs{"gone"});
  auto ok = c->Insert(EmailArgs{"ok"});
  auto unknown = c->InsertRaw({"no_such_kind", "{}", {.max_attempts = 1}});
  ASSERT_TRUE(failing && gone && ok && unknown);
  ASSERT_TRUE(log.WaitForJob(failing->job.id, Event::Kind::kJobFailed));
  clock_->Advance(10s);
  ASSERT_TRUE(log.WaitForJob(failing->job.id, Event::Kind::kJobDiscarded));
  ASSERT_TRUE(log.WaitForJob(gone->job.id, Event::Kind::kJobCancelled));
  ASSERT_TRUE(log.WaitForJob(ok->job.id, Event::Kind::kJobCompleted));
  ASSERT_TRUE(log.WaitForJob(unknown->job.id, Event::Kind::kJobDiscarded));
  ASSERT_TRUE(c->Stop(10s).ok());

  std::lock_guard lock(mu);
  auto logged = [&](LogLevel level, const std::string& start) {
    return std::any_of(lines.begin(), lines.end(), [&](const auto& l) {
      return l.first == level && l.second.starts_with(start);
    });
  };
  const int64_t id = failing->job.id;
  EXPECT_TRUE(logged(LogLevel::kWarn, fmt::format("job {} (email) failed on attempt 1 of 2, "
                                                  "retried in 10s: smtp down 1",
                                                  id)))
      << ::testing::PrintToString(lines);
  EXPECT_TRUE(
      logged(LogLevel::kWarn,
             fmt::format("job {} (email) discarded after attempt 2 of 2: smtp down 2", id)));
  EXPECT_TRUE(logged(LogLevel::kInfo, fmt::format("job {} (email) on attempt 1: cancelled: "
                                                  "address gone",
                                                  gone->job.id)));
  EXPECT_TRUE(logged(LogLevel::kWarn, fmt::format("job {} (no_such_kind) discarded after attempt 1 "
                                                  "of 1: no worker registered for kind",
                                                  unknown->job.id)));
  const std::string ok_prefix = fmt::format("job {} ", ok->job.id);
  for (const auto& [level, line] : lines) EXPECT_FALSE(line.starts_with(ok_prefix)) << line;
}

TEST_F(ClientTest, UnknownKindIsRetriedThenDiscardedNeverLost) {
  auto c = Start();
  EventLog log(*c);
  auto r = c->InsertRaw({"no_such_kind", "{}", {.max_attempts = 2}});
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobFailed));
  clock_->Advance(10s);
  ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobDiscarded));
  JobRow j = Get(*c, r->job.id);
  ASSERT_EQ(j.errors.size(), 2u);
  EXPECT_NE(j.errors[0].error.find("no worker registered for kind \"no_such_kind\""),
            std::string::npos);
  EXPECT_TRUE(c->Stop(10s).ok());
}

TEST_F(ClientTest, ArgsThatDoNotParseRecordTheParseError) {
  auto c = Start();
  EventLog log(*c);
  auto r = c->InsertRaw({"email", R"({"to": 5})", {.max_attempts = 1}});
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobDiscarded));
  JobRow j = Get(*c, r->job.id);
  ASSERT_EQ(j.errors.size(), 1u);
  EXPECT_NE(j.errors[0].error.find("cannot parse args of kind email"), std::string::npos);
  EXPECT_TRUE(c->Stop(10s).ok());
}

// JSON nested tens of thousands deep crashed a process that printed it (nlohmann's dump, the
// unique key's canonical form, `spool jobs list --json`): inserts refuse it past kMaxJsonDepth,
// and a worker fails an attempt whose args from the table are deeper.
TEST_F(ClientTest, JsonNestedPastTheLimitIsRefusedAndNeverPrinted) {
  const auto nested = [](int depth) {
    return "{\"a\":" + std::string(static_cast<size_t>(depth), '[') +
           std::string(static_cast<size_t>(depth), ']') + "}";
  };
  EXPECT_TRUE(ValidateJsonDepth(nested(kMaxJsonDepth - 1), "args").ok());
  EXPECT_TRUE(ValidateJsonDepth(R"({"s":"[[[[ \" {{{{"})", "args").ok()) << "brackets in strings";
  auto c = Open(Options());
  const std::string deep = nested(100'000);
  InsertOptions unique;
  unique.unique = UniqueOptions{.by_args = true};
  for (const InsertOptions& o : {InsertOptions{}, unique}) {
    auto r = c->InsertRaw({"email", deep, o});
    ASSERT_FALSE(r.has_value());
    EXPECT_TRUE(r.error().IsInvalidArgument());
    EXPECT_EQ(r.error().message(),
              "kind \"email\": args nest arrays and objects more than 512 levels deep: flatten "
              "them");
  }
  InsertOptions metadata;
  metadata.metadata = nested(kMaxJsonDepth);
  auto m = c->InsertRaw({"email", "{}", metadata});
  ASSERT_FALSE(m.has_value());
  EXPECT_NE(m.error().message().find("InsertOptions.metadata nest"), std::string::npos)
      << m.error().message();
  // Written by another tool: the worker fails the attempt instead of reading the args.
  EXPECT_NE(c->CheckArgs("email", deep).message().find("more than 512 levels deep"),
            std::string::npos);
}

TEST_F(ClientTest, InsertRejectsArgsThatAreNotAJsonObject) {
  auto c = Open(Options());
  auto r = c->InsertRaw({"email", "not json", {}});
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().IsInvalidArgument());
  EXPECT_NE(r.error().message().find("not a JSON object"), std::string::npos);
  auto bad_opts = c->Insert(EmailArgs{"a"}, {.priority = 9});
  ASSERT_FALSE(bad_opts);
  EXPECT_NE(bad_opts.error().message().find("priority"), std::string::npos);
  // Text that is not UTF-8: refused with a reason, never thrown (the tags' JSON used to throw).
  auto array = c->InsertRaw({"email", "[1]", {}});
  ASSERT_FALSE(array.has_value());
  EXPECT_NE(array.error().message().find("not a JSON object (it is a JSON array)"),
            std::string::npos)
      << array.error().message();
  auto bad_utf8_args = c->InsertRaw({"email", "{\"to\": \"\xff\"}", {}});
  ASSERT_FALSE(bad_utf8_args.has_value());
  EXPECT_NE(bad_utf8_args.error().message().find("UTF-8"), std::string::npos)
      << bad_utf8_args.error().message();
  auto bad_kind = c->InsertRaw({"email\xff", "{}", {}});
  ASSERT_FALSE(bad_kind.has_value());
  EXPECT_TRUE(bad_kind.error().IsInvalidArgument());
  EXPECT_NE(bad_kind.error().message().find("not valid UTF-8"), std::string::npos);
  InsertOptions bad_tag;
  bad_tag.tags = {"bad\xff"};
  auto tagged = c->Insert(EmailArgs{"a"}, bad_tag);
  ASSERT_FALSE(tagged.has_value());
  EXPECT_TRUE(tagged.error().IsInvalidArgument());
  std::vector<InsertParams> many(3, InsertParams{"email", "{}", {}});
  many[2].kind = "email\xff";
  auto bulk = c->InsertManyFast(std::move(many));
  ASSERT_FALSE(bulk.has_value());
  EXPECT_TRUE(bulk.error().IsInvalidArgument());
  auto counts = c->JobCountByState();
  ASSERT_TRUE(counts.has_value());
  EXPECT_TRUE(counts->empty()) << "nothing may be inserted by a rejected call";
}

class TimeoutTest : public ClientTest {
 protected:
  // Runs one job with a 5 s timeout whose Work waits for its context to be cancelled, then
  // returns what `after_cancel` makes of that; the fake clock passes the deadline. Returns the
  // job once its event of `kind` came.
  JobRow RunPastTimeout(const std::function<Outcome(Outcome)>& after_cancel, Event::Kind kind) {
    Signal started;
    behaviour_->fn = [&](JobContext& ctx, const EmailArgs&) {
      started.Notify();
      return after_cancel(WaitForCancel(ctx));
    };
    auto o = Options();
    o.job_timeout = 5s;
    auto c = Open(o);
    EXPECT_TRUE(c->Start().ok());
    EventLog log(*c);
    auto r = c->Insert(EmailArgs{"slow"});
    EXPECT_TRUE(r.has_value());
    if (!r || !started.WaitFor()) return {};
    clock_->Advance(6s);
    EXPECT_TRUE(log.WaitForJob(r->job.id, kind));
    JobRow j = Get(*c, r->job.id);
    EXPECT_TRUE(c->Stop(10s).ok());
    return j;
  }
};

TEST_F(TimeoutTest, TimeoutCancelsTheContextAndRecordsATimeoutError) {
  JobRow j = RunPastTimeout([](Outcome o) { return o; }, Event::Kind::kJobFailed);
  ASSERT_EQ(j.errors.size(), 1u);
  EXPECT_EQ(j.errors[0].error, "job timed out after 5s; Work returned: stopped: context cancelled");
}

TEST_F(TimeoutTest, SuccessAfterTheTimeoutCompletesAndKeepsATimeoutNote) {
  // Work ignores the cancel: its work was finished anyway.
  JobRow j = RunPastTimeout([](Outcome) { return Outcome::Done(); }, Event::Kind::kJobCompleted);
  EXPECT_EQ(j.state, JobState::kCompleted);
  EXPECT_EQ(j.attempt, 1);
  ASSERT_EQ(j.errors.size(), 1u);
  EXPECT_EQ(j.errors[0].error,
            "job timed out after 5s; Work returned success after its deadline, so the job is "
            "completed");
}

// A worker that gives up when its context is cancelled may be answering the timeout: the job is
// cancelled as the worker asked, and its history says the timeout came first.
TEST_F(TimeoutTest, CancelAfterTheTimeoutKeepsTheWorkersWordAndTheTimeout) {
  JobRow j = RunPastTimeout([](Outcome) { return Outcome::Cancel("gave up"); },
                            Event::Kind::kJobCancelled);
  EXPECT_EQ(j.state, JobState::kCancelled);
  ASSERT_EQ(j.errors.size(), 1u);
  EXPECT_EQ(j.errors[0].error, "job timed out after 5s; cancelled: gave up");
}

TEST_F(ClientTest, RunsByPriorityThenScheduledAtThenId) {
  std::mutex mu;
  std::vector<std::string> order;
  behaviour_->fn = [&](JobContext&, const EmailArgs& a) {
    std::lock_guard lock(mu);
    order.push_back(a.to);
    return Outcome::Done();
  };
  auto c = Open(Options(1));
  ASSERT_TRUE(c->Insert(EmailArgs{"p4"}, {.priority = 4}).has_value());
  ASSERT_TRUE(c->Insert(EmailArgs{"p1-late"}, {.priority = 1}).has_value());
  InsertOptions early{.priority = 1};
  early.scheduled_at = clock_->Now() - 1s;
  ASSERT_TRUE(c->Insert(EmailArgs{"p1-early"}, early).has_value());
  ASSERT_TRUE(c->Insert(EmailArgs{"p2"}, {.priority = 2}).has_value());
  EventLog log(*c);
  ASSERT_TRUE(c->Start().ok());
  ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, 4));
  EXPECT_EQ(order, (std::vector<std::string>{"p1-early", "p1-late", "p2", "p4"}));
  EXPECT_TRUE(c->Stop(10s).ok());
}

TEST_F(ClientTest, ScheduledJobRunsOnlyWhenDue) {
  auto c = Start();
  EventLog log(*c);
  InsertOptions o;
  o.scheduled_at = clock_->Now() + 1h;
  auto r = c->Insert(EmailArgs{"later"}, o);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->job.state, JobState::kScheduled);
  auto now_job = c->Insert(EmailArgs{"now"});
  ASSERT_TRUE(log.WaitForJob(now_job->job.id, Event::Kind::kJobCompleted));
  EXPECT_EQ(Get(*c, r->job.id).state, JobState::kScheduled);
  clock_->Advance(1h);
  ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobCompleted));
  EXPECT_TRUE(c->Stop(10s).ok());
}

TEST_F(ClientTest, PendingJobNeverRuns) {
  auto c = Start();
  EventLog log(*c);
  auto pending = c->Insert(EmailArgs{"held"}, {.pending = true});
  ASSERT_TRUE(pending.has_value());
  EXPECT_EQ(pending->job.state, JobState::kPending);
  auto other = c->Insert(EmailArgs{"go"});
  ASSERT_TRUE(log.WaitForJob(other->job.id, Event::Kind::kJobCompleted));
  clock_->Advance(24h);
  auto after = c->Insert(EmailArgs{"go2"});
  ASSERT_TRUE(log.WaitForJob(after->job.id, Event::Kind::kJobCompleted));
  EXPECT_EQ(Get(*c, pending->job.id).state, JobState::kPending);
  EXPECT_TRUE(c->Stop(10s).ok());
}

TEST_F(ClientTest, WorkerCanEnqueueFollowUpJobs) {
  behaviour_->fn = [](JobContext& ctx, const EmailArgs& a) -> Outcome {
    if (a.to == "parent") return ctx.client().Insert(EmailArgs{"child"}).status();
    return Outcome::Done();
  };
  auto c = Start();
  EventLog log(*c);
  ASSERT_TRUE(c->Insert(EmailArgs{"parent"}).has_value());
  ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, 2));
  EXPECT_TRUE(c->Stop(10s).ok());
}

TEST_F(ClientTest, InsertWithAFreeWorkerClaimsTheJobAndRunsItOnce) {
  std::mutex mu;
  std::map<std::string, int> runs;
  behaviour_->fn = [&](JobContext&, const EmailArgs& a) {
    std::lock_guard lock(mu);
    ++runs[a.to];
    return Outcome::Done();
  };
  auto c = Start(2);
  EventLog log(*c);
  // Whether an insert is claimed depends on the producer having seen the queue empty since its
  // last wake-up (each commit of this process wakes it too), so try until one is.
  std::optional<JobRow> claimed;
  for (int i = 0; i < 200 && !claimed; ++i) {
    auto r = c->Insert(EmailArgs{std::to_string(i)});
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    if (r->job.state == JobState::kRunning) claimed = r->job;
    ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobCompleted));
  }
  ASSERT_TRUE(claimed.has_value()) << "no insert was claimed with a worker free";
  EXPECT_EQ(claimed->attempt, 1);
  EXPECT_EQ(claimed->attempted_by, std::vector<std::string>{c->client_id()});
  ASSERT_TRUE(c->Stop(10s).ok());
  JobRow done = Get(*c, claimed->id);
  EXPECT_EQ(done.state, JobState::kCompleted);
  EXPECT_EQ(done.attempt, 1);
  std::lock_guard lock(mu);
  for (const auto& [to, n] : runs) EXPECT_EQ(n, 1) << "job " << to;
}

TEST_F(ClientTest, InsertNeverOvertakesAJobWaitingForAWorker) {
  Signal a_started, release_a;
  std::mutex mu;
  std::vector<std::string> order;
  behaviour_->fn = [&](JobContext&, const EmailArgs& args) {
    {
      std::lock_guard lock(mu);
      order.push_back(args.to);
    }
    if (args.to == "a") {
      a_started.Notify();
      release_a.WaitFor();
    }
    return Outcome::Done();
  };
  auto c = Start(1);
  EventLog log(*c);
  auto a = c->Insert(EmailArgs{"a"});
  ASSERT_TRUE(a_started.WaitFor());
  // The only worker is busy: b waits for a fetch.
  auto b = c->Insert(EmailArgs{"b"});
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->job.state, JobState::kAvailable);
  release_a.Notify();
  // b is known to wait, so c is not claimed ahead of it, even once the worker is free.
  auto c_job = c->Insert(EmailArgs{"c"});
  ASSERT_TRUE(c_job.has_value());
  ASSERT_TRUE(log.WaitForJob(c_job->job.id, Event::Kind::kJobCompleted));
  ASSERT_TRUE(log.WaitForJob(b->job.id, Event::Kind::kJobCompleted));
  ASSERT_TRUE(c->Stop(10s).ok());
  std::lock_guard lock(mu);
  EXPECT_EQ(order, (std::vector<std::string>{"a", "b", "c"}));
}

// A producer that woke with fewer free slots than a batch lingers for more; an insert that
// claimed the last free slot meanwhile left it with none to fetch. It fetched zero jobs, took
// that for a full batch and read the position of its last (missing) row: a crash.
TEST_F(ClientTest, InsertThatTakesTheLastFreeSlotWhileTheProducerLingers) {
  Signal started[3], release;
  std::atomic<int> blocked{0};
  behaviour_->fn = [&](JobContext&, const EmailArgs& a) {
    if (a.to == "block") {
      started[blocked++].Notify();
      release.WaitFor();
    }
    return Outcome::Done();
  };
  auto o = Options(4);
  // Fallback polls every millisecond, each lingering for a batch of three free slots while one is
  // free: most inserts below land in a linger.
  o.poll_interval = 1ms;
  auto c = Open(o);
  ASSERT_TRUE(c->Start().ok());
  EventLog log(*c);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(c->Insert(EmailArgs{"block"}).has_value());
  for (Signal& s : started) ASSERT_TRUE(s.WaitFor());
  int claimed = 0;
  for (int i = 0; i < 300; ++i) {
    auto r = c->Insert(EmailArgs{std::to_string(i)});
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    if (r->job.state == JobState::kRunning) ++claimed;
    ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobCompleted));
  }
  EXPECT_GT(claimed, 0);
  release.Notify();
  EXPECT_TRUE(c->Stop(10s).ok());
}

TEST_F(ClientTest, ClaimOnInsertOffLeavesEveryInsertForAFetch) {
  auto o = Options(2);
  o.claim_on_insert = false;
  auto c = Open(o);
  ASSERT_TRUE(c->Start().ok());
  EventLog log(*c);
  for (int i = 0; i < 20; ++i) {
    auto r = c->Insert(EmailArgs{std::to_string(i)});
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->job.state, JobState::kAvailable);
    ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobCompleted));
  }
  ASSERT_TRUE(c->Stop(10s).ok());
}

TEST_F(ClientTest, SoftStopLetsRunningJobsFinish) {
  Signal started, release;
  std::atomic<bool> saw_cancel{false};
  behaviour_->fn = [&](JobContext& ctx, const EmailArgs&) {
    started.Notify();
    release.WaitFor();
    saw_cancel = ctx.Cancelled();
    return Outcome::Done();
  };
  auto c = Start();
  auto r = c->Insert(EmailArgs{"a"});
  ASSERT_TRUE(started.WaitFor());
  std::thread stopper([&] { EXPECT_TRUE(c->Stop(60s).ok()); });
  release.Notify();
  stopper.join();
  EXPECT_FALSE(saw_cancel);
  EXPECT_EQ(Get(*c, r->job.id).state, JobState::kCompleted);
}

// A slow job in a batch of fast ones: the jobs after it in the batch must not wait for the thread
// that runs it, whichever thread claimed the batch.
TEST_F(ClientTest, ASlowJobDoesNotHoldUpTheRestOfItsBatch) {
  Signal release, rest_done;
  std::atomic<int> fast_done{0};
  constexpr int kBefore = 200, kAfter = 40;
  behaviour_->fn = [&](JobContext&, const EmailArgs& args) {
    if (args.to == "slow") {
      release.WaitFor();
    } else if (args.to == "fast" && ++fast_done == kBefore + kAfter) {
      rest_done.Notify();
    }
    return Outcome::Done();
  };
  auto c = Start(kBefore + kAfter + 1);
  EventLog log(*c);
  // Once a first job has run, the workers wait for a wake-up; the batch is then claimed by its
  // insert, in id order, and one woken worker starts on it.
  auto first = c->Insert(EmailArgs{"first"});
  ASSERT_TRUE(first.has_value());
  ASSERT_TRUE(log.WaitForJob(first->job.id, Event::Kind::kJobCompleted));
  std::vector<InsertParams> many;
  for (int i = 0; i < kBefore; ++i) many.push_back(InsertParams::From(EmailArgs{"fast"}));
  many.push_back(InsertParams::From(EmailArgs{"slow"}));
  for (int i = 0; i < kAfter; ++i) many.push_back(InsertParams::From(EmailArgs{"fast"}));
  ASSERT_TRUE(c->InsertMany(std::move(many)).has_value());
  EXPECT_TRUE(rest_done.WaitFor()) << fast_done.load() << " of " << kBefore + kAfter;
  release.Notify();
  EXPECT_TRUE(c->Stop(30s).ok());
}

// A job's row leaves `running` while its Work runs (another process cancelled, rescued or deleted
// it): the outcome is not written, and no event claims it was; other jobs' events still arrive,
// that of a job released with it included (their outcomes mostly share a batch).
TEST_F(ClientTest, NoEventForAnOutcomeThatWasNotWritten) {
  Signal gone_started, kept_started, release;
  behaviour_->fn = [&](JobContext&, const EmailArgs& args) {
    if (args.to == "gone" || args.to == "kept") {
      (args.to == "gone" ? gone_started : kept_started).Notify();
      release.WaitFor();
    }
    return Outcome::Done();
  };
  auto c = Start();
  EventLog log(*c);
  auto gone = c->Insert(EmailArgs{"gone"});
  ASSERT_TRUE(gone.has_value());
  auto kept = c->Insert(EmailArgs{"kept"});
  ASSERT_TRUE(kept.has_value());
  ASSERT_TRUE(gone_started.WaitFor());
  ASSERT_TRUE(kept_started.WaitFor());
  {
    // Another process ends the job, through a driver of its own: its writes wait out the
    // client's write lock (a bare connection without a busy timeout failed with SQLITE_BUSY
    // under the sanitizers). finalized_at is the clock's now, so that the cleaner, which deletes
    // jobs finalized longer ago than the retention, leaves the row for the checks below.
    internal::DriverOptions opts;
    opts.sqlite.busy_timeout = 60s;
    auto d = internal::Driver::Open(url_, opts);
    ASSERT_TRUE(d.has_value()) << d.error().ToString();
    auto n = (*d)->executor().JobSetStateIfRunningMany(
        {{{.id = gone->job.id, .attempt = 1, .state = JobState::kCancelled, .at = clock_->Now()}}});
    ASSERT_TRUE(n.has_value()) << n.error().ToString();
    ASSERT_EQ(*n, 1);
  }
  auto fast = c->Insert(EmailArgs{"fast"});
  ASSERT_TRUE(fast.has_value());
  ASSERT_TRUE(log.WaitForJob(fast->job.id, Event::Kind::kJobCompleted));
  release.Notify();
  ASSERT_TRUE(log.WaitForJob(kept->job.id, Event::Kind::kJobCompleted));
  // Stop writes every outcome and delivers its events before it returns.
  ASSERT_TRUE(c->Stop(60s).ok());
  for (const Event& e : log.events()) {
    EXPECT_NE(e.job.id, gone->job.id) << "an event for the job whose outcome was not written";
  }
  EXPECT_EQ(Get(*c, gone->job.id).state, JobState::kCancelled);
  EXPECT_EQ(Get(*c, kept->job.id).state, JobState::kCompleted);
  EXPECT_EQ(Get(*c, fast->job.id).state, JobState::kCompleted);
}

TEST_F(ClientTest, HardStopCancelsRunningJobsAndLeavesNoneRunning) {
  Signal started;
  behaviour_->fn = [&](JobContext& ctx, const EmailArgs&) {
    started.Notify();
    return WaitForCancel(ctx);
  };
  auto c = Start();
  auto r = c->Insert(EmailArgs{"a"});
  ASSERT_TRUE(started.WaitFor());
  EXPECT_TRUE(c->Stop(10ms).ok());
  JobRow j = Get(*c, r->job.id);
  EXPECT_EQ(j.state, JobState::kRetryable);
  ASSERT_EQ(j.errors.size(), 1u);
  EXPECT_EQ(j.errors[0].error,
            "stopped: context cancelled (the client was stopping and cancelled the jobs still "
            "running: its Stop timeout passed, or CancelRunningJobs was called)");
}

// A second Ctrl-C: a soft Stop in progress on one thread, made hard from another.
TEST_F(ClientTest, CancelRunningJobsCutsAStopInProgressShort) {
  int64_t id = 0;
  auto c = StartAJobThatWaitsForItsCancel(id);
  ASSERT_NE(id, 0);
  auto stopping = std::async(std::launch::async, [&] { return c->Stop(std::chrono::hours(1)); });
  // The Stop waits (up to an hour) for the job, which waits for its cancel.
  c->CancelRunningJobs();
  ASSERT_EQ(stopping.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_TRUE(stopping.get().ok());
  JobRow j = Get(*c, id);
  EXPECT_EQ(j.state, JobState::kRetryable);
  ASSERT_EQ(j.errors.size(), 1u);
  EXPECT_NE(j.errors[0].error.find("CancelRunningJobs was called"), std::string::npos)
      << j.errors[0].error;
}

TEST_F(ClientTest, StopAndCancelCancelsAtOnce) {
  int64_t id = 0;
  auto c = StartAJobThatWaitsForItsCancel(id);
  ASSERT_NE(id, 0);
  EXPECT_TRUE(c->StopAndCancel().ok());
  EXPECT_EQ(Get(*c, id).state, JobState::kRetryable);
  EXPECT_TRUE(c->Stop(1s).ok()) << "Stop after stop is a no-op";
  EXPECT_TRUE(c->Start().IsFailedPrecondition());
}

// StopAndCancel during a Stop on another thread makes it a hard stop now; it used to wait for the
// Stop's timeout (an hour here) before it cancelled anything.
TEST_F(ClientTest, StopAndCancelCutsAStopInProgressShort) {
  int64_t id = 0;
  auto c = StartAJobThatWaitsForItsCancel(id);
  ASSERT_NE(id, 0);
  auto stopping = std::async(std::launch::async, [&] { return c->Stop(std::chrono::hours(1)); });
  auto cancelling = std::async(std::launch::async, [&] { return c->StopAndCancel(); });
  ASSERT_EQ(cancelling.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  ASSERT_EQ(stopping.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_TRUE(cancelling.get().ok());
  EXPECT_TRUE(stopping.get().ok());
  EXPECT_EQ(Get(*c, id).state, JobState::kRetryable);
}

TEST_F(ClientTest, NoJobLeftRunningAfterACleanStopMidRun) {
  std::atomic<int> ran{0};
  behaviour_->fn = [&](JobContext&, const EmailArgs&) {
    ran++;
    return Outcome::Done();
  };
  auto c = Start(8);
  EventLog log(*c);
  std::vector<InsertParams> many;
  for (int i = 0; i < 2000; ++i) many.push_back(InsertParams::From(EmailArgs{"m"}));
  ASSERT_TRUE(c->InsertMany(std::move(many)).has_value());
  ASSERT_TRUE(log.WaitForCount(Event::Kind::kJobCompleted, 10));
  ASSERT_TRUE(c->Stop(30s).ok());
  auto counts = c->JobCountByState();
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(counts->count(JobState::kRunning), 0u);
  EXPECT_EQ((*counts)[JobState::kCompleted], ran.load());
  EXPECT_EQ((*counts)[JobState::kCompleted] + (*counts)[JobState::kAvailable], 2000);
}

TEST_F(ClientTest, InsertFromAnotherClientIsSeenWithoutWaitingForThePoll) {
  auto worker_client = Start();
  EventLog log(*worker_client);
  auto o = Options();
  o.queues.clear();  // insert-only
  auto inserter = Open(o);
  auto r = inserter->Insert(EmailArgs{"remote"});
  ASSERT_TRUE(r.has_value());
  // poll_interval is 1h: only the data_version check can have woken the producer.
  ASSERT_TRUE(log.WaitForJob(r->job.id, Event::Kind::kJobCompleted));
  EXPECT_TRUE(worker_client->Stop(10s).ok());
}

TEST_F(ClientTest, InsertManyReturnsRowsInOrderAndFastReturnsCount) {
  auto c = Open(Options());
  std::vector<InsertParams> v;
  for (int i = 0; i < 300; ++i) v.push_back(InsertParams::From(EmailArgs{std::to_string(i)}));
  auto rows = c->InsertMany(v);
  ASSERT_TRUE(rows.has_value());
  ASSERT_EQ(rows->size(), 300u);
  for (size_t i = 0; i < rows->size(); ++i) {
    EXPECT_EQ((*rows)[i].job.args, nlohmann::json(EmailArgs{std::to_string(i)}).dump());
    if (i > 0) {
      EXPECT_GT((*rows)[i].job.id, (*rows)[i - 1].job.id);
    }
  }
  auto n = c->InsertManyFast(std::move(v));
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 300);
  EXPECT_EQ((*c->JobCountByState())[JobState::kAvailable], 600);
}

TEST_F(ClientTest, InsertTxIsVisibleOnlyIfTheCallersTransactionCommits) {
  auto c = Start();
  EventLog log(*c);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir_.path() / "test.db").c_str(), &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  ASSERT_EQ(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  auto rolled_back = c->InsertTx(SqliteTx(db), EmailArgs{"never"});
  ASSERT_TRUE(rolled_back.has_value()) << rolled_back.error().ToString();
  ASSERT_EQ(sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  ASSERT_TRUE(c->JobGet(rolled_back->job.id).error().IsNotFound());

  ASSERT_EQ(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  auto committed = c->InsertTx(SqliteTx(db), EmailArgs{"yes"});
  ASSERT_TRUE(committed.has_value());
  ASSERT_EQ(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr), SQLITE_OK);
  ASSERT_TRUE(log.WaitForJob(committed->job.id, Event::Kind::kJobCompleted));
  sqlite3_close(db);
  EXPECT_TRUE(c->Stop(10s).ok());
}

// A deferred transaction that read before another connection wrote cannot write: SQLite refuses
// at once (SQLITE_BUSY_SNAPSHOT), and no wait helps. The message says how to get past it.
TEST_F(ClientTest, InsertTxInAReadThenWriteTransactionSaysHowToRetry) {
  auto c = Open(Options());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir_.path() / "test.db").c_str(), &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  ASSERT_EQ(sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "SELECT count(*) FROM spool_job", nullptr, nullptr, nullptr),
            SQLITE_OK);
  ASSERT_TRUE(c->Insert(EmailArgs{"another connection"}).has_value());  // the client's writer
  auto r = c->InsertTx(SqliteTx(db), EmailArgs{"x"});
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().IsRetryable()) << r.error().ToString();
  EXPECT_NE(r.error().message().find("read the database before another connection wrote to it"),
            std::string::npos)
      << r.error().ToString();
  EXPECT_NE(r.error().message().find("ROLLBACK"), std::string::npos) << r.error().ToString();
  EXPECT_NE(r.error().message().find("BEGIN IMMEDIATE"), std::string::npos) << r.error().ToString();
  // Rolled back and begun as it says, the insert goes through.
  ASSERT_EQ(sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "SELECT count(*) FROM spool_job", nullptr, nullptr, nullptr),
            SQLITE_OK);
  EXPECT_TRUE(c->InsertTx(SqliteTx(db), EmailArgs{"x"}).has_value());
  ASSERT_EQ(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  EXPECT_EQ(c->JobCountByState()->at(JobState::kAvailable), 2);
}

// The caller's connection must be on the client's database file: a job inserted into another file
// (with spool's tables or without) would never be worked here. The message names both files.
TEST_F(ClientTest, InsertTxOnAnotherDatabaseFileIsRefusedNamingBoth) {
  auto c = Open(Options());
  const std::string ours = (dir_.path() / "test.db").string();
  for (const bool migrated : {false, true}) {
    const std::string other = (dir_.path() / (migrated ? "migrated.db" : "plain.db")).string();
    if (migrated) {
      ASSERT_TRUE(MigrateUp("sqlite://" + other).ok());
    }
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(other.c_str(), &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    ASSERT_EQ(sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr), SQLITE_OK);
    auto r = c->InsertTx(SqliteTx(db), EmailArgs{"x"});
    ASSERT_EQ(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr), SQLITE_OK);
    ASSERT_FALSE(r.has_value()) << other;
    EXPECT_TRUE(r.error().IsInvalidArgument()) << r.error().ToString();
    EXPECT_NE(r.error().message().find(fmt::format(
                  "the connection's database is \"{}\" and this client's is \"{}\"", other, ours)),
              std::string::npos)
        << r.error().ToString();
    if (migrated) {
      sqlite3_stmt* count = nullptr;
      ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT count(*) FROM spool_job", -1, &count, nullptr),
                SQLITE_OK);
      ASSERT_EQ(sqlite3_step(count), SQLITE_ROW);
      EXPECT_EQ(sqlite3_column_int(count, 0), 0) << "the job went into the other file";
      sqlite3_finalize(count);
    }
    sqlite3_close(db);
  }
  EXPECT_TRUE(c->JobCountByState()->empty());
}

TEST_F(ClientTest, InsertTxOutsideATransactionIsRefusedAndInsertsNothing) {
  auto c = Open(Options());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir_.path() / "test.db").c_str(), &db), SQLITE_OK);
  auto r = c->InsertTx(SqliteTx(db), EmailArgs{"x"});
  sqlite3_close(db);
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().IsInvalidArgument()) << r.error().ToString();
  EXPECT_NE(r.error().message().find("no open transaction: run BEGIN"), std::string::npos)
      << r.error().ToString();
  EXPECT_TRUE(c->JobCountByState()->empty());
}

TEST_F(ClientTest, WrongKindOfTransactionIsRefused) {
  auto c = Open(Options());
  auto r = c->InsertTx(PostgresTx(nullptr), EmailArgs{"x"});
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().IsInvalidArgument());
}

// A SQLite file with an app's table and none of spool's.
void MakeDatabaseWithoutSpoolTables(const std::filesystem::path& file) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(file.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE app (id INTEGER)", nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
}

TEST(ClientOpenTest, RefusesMissingSchemaNamingTheCommand) {
  TempDir dir;
  // No file: refused without creating one (a mistyped path leaves nothing behind).
  auto c = Client::Open(dir.SqliteUrl(), {});
  ASSERT_FALSE(c.has_value());
  EXPECT_TRUE(c.error().IsFailedPrecondition());
  EXPECT_NE(c.error().message().find("no SQLite database at"), std::string::npos)
      << c.error().ToString();
  EXPECT_NE(c.error().message().find("spool migration up"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "test.db"));
  ASSERT_NO_FATAL_FAILURE(MakeDatabaseWithoutSpoolTables(dir.path() / "test.db"));
  c = Client::Open(dir.SqliteUrl(), {});
  ASSERT_FALSE(c.has_value());
  EXPECT_TRUE(c.error().IsFailedPrecondition());
  EXPECT_NE(c.error().message().find("has no spool tables: run `spool migration up"),
            std::string::npos)
      << c.error().ToString();
  ClientOptions o;
  o.auto_migrate = true;
  EXPECT_TRUE(Client::Open(dir.SqliteUrl(), o).has_value());
  TempDir fresh;
  EXPECT_TRUE(Client::Open(fresh.SqliteUrl(), o).has_value()) << "auto_migrate creates the file";
}

// A relative path is taken from the working directory: an app started from its build folder
// looked for another file than the one made beside its sources, and the message named only
// "app.db" with a command that would have made a second, empty database.
TEST(ClientOpenTest, AMissingRelativePathNamesTheWorkingDirectory) {
  TempDir dir;
  const std::filesystem::path before = std::filesystem::current_path();
  std::filesystem::current_path(dir.path());
  auto c = Client::Open("sqlite://app.db", {});
  std::filesystem::current_path(before);
  ASSERT_FALSE(c.has_value());
  const std::string abs = (dir.path() / "app.db").string();
  EXPECT_NE(c.error().message().find("no SQLite database at " + abs +
                                     " (app.db from the working "
                                     "directory " +
                                     dir.path().string() + ")"),
            std::string::npos)
      << c.error().ToString();
  EXPECT_NE(c.error().message().find("`spool migration up --database-url sqlite://" + abs + "`"),
            std::string::npos)
      << c.error().ToString();
}

// The command in the message is one shell word, whatever the path holds.
TEST(ClientOpenTest, TheCommandInAMessageQuotesItsUrl) {
  TempDir dir;
  std::filesystem::create_directory(dir.path() / "my jobs");
  const std::string url = "sqlite://" + (dir.path() / "my jobs" / "app.db").string();
  ASSERT_NO_FATAL_FAILURE(MakeDatabaseWithoutSpoolTables(dir.path() / "my jobs" / "app.db"));
  auto c = Client::Open(url, {});
  ASSERT_FALSE(c.has_value());
  EXPECT_NE(c.error().message().find("run `spool migration up --database-url '" + url + "'`"),
            std::string::npos)
      << c.error().ToString();
}

TEST(ClientOpenTest, RefusesASchemaNewerThanItKnows) {
  TempDir dir;
  ASSERT_TRUE(MigrateUp(dir.SqliteUrl()).ok());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir.path() / "test.db").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "INSERT INTO spool_migration (line, version, name, applied_at) "
                         "VALUES ('main', 999, 'from_the_future', 0)",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  auto c = Client::Open(dir.SqliteUrl(), {});
  ASSERT_FALSE(c.has_value());
  EXPECT_TRUE(c.error().IsFailedPrecondition());
  EXPECT_NE(c.error().message().find("newer than this spool knows"), std::string::npos);

  // Status lists the version it does not know, last.
  auto infos = MigrationStatus(dir.SqliteUrl());
  ASSERT_TRUE(infos.has_value()) << infos.error().ToString();
  ASSERT_FALSE(infos->empty());
  EXPECT_EQ(infos->back().version, 999);
  EXPECT_FALSE(infos->back().known);
  EXPECT_TRUE(infos->back().applied);
  EXPECT_TRUE(std::all_of(infos->begin(), infos->end() - 1,
                          [](const MigrationInfo& m) { return m.known && m.applied; }));

  // Nor does `migration up` call it up to date, which the next Open would refuse.
  const Status up = MigrateUp(dir.SqliteUrl());
  EXPECT_TRUE(up.IsFailedPrecondition()) << up.ToString();
  EXPECT_NE(up.message().find("upgrade spool"), std::string::npos) << up.ToString();

  // Nor does it revert a schema it does not know: its down steps would meet tables they never
  // made.
  const Status down = MigrateDown(dir.SqliteUrl(), 0);
  EXPECT_TRUE(down.IsFailedPrecondition()) << down.ToString();
  EXPECT_NE(down.message().find("nothing was reverted"), std::string::npos) << down.ToString();
  ASSERT_EQ(sqlite3_open((dir.path() / "test.db").c_str(), &db), SQLITE_OK);
  EXPECT_EQ(sqlite3_exec(db, "SELECT count(*) FROM spool_job", nullptr, nullptr, nullptr),
            SQLITE_OK)
      << "the tables are still there";
  sqlite3_close(db);
}

TEST(ClientOpenTest, BadUrlsAndOptionsAreInvalidArguments) {
  EXPECT_TRUE(Client::Open("mysql://x", {}).error().IsInvalidArgument());
  EXPECT_TRUE(Client::Open("sqlite://", {}).error().IsInvalidArgument());
  EXPECT_TRUE(Client::Open("sqlite://:memory:", {}).error().IsInvalidArgument());
  auto missing = Client::Open("sqlite:///nonexistent-dir-spool/x.db", {});
  ASSERT_FALSE(missing.has_value());
  EXPECT_NE(missing.error().message().find("/nonexistent-dir-spool/x.db"), std::string::npos);
  ClientOptions o;
  o.queues["q"] = {.max_workers = 0};
  TempDir dir;
  EXPECT_TRUE(Client::Open(dir.SqliteUrl(), o).error().IsInvalidArgument());
}

// A client id or periodic job name that is not printable UTF-8 ended the process on SQLite (the
// claim's JSON dump threw on a worker thread) and failed every statement on PostgreSQL: refused
// at Open, naming the option.
TEST(ClientOpenTest, ClientIdsAndPeriodicNamesMustBePrintableUtf8) {
  TempDir dir;
  for (const char* bad : {"worker-\xff", "worker\n2"}) {
    ClientOptions o;
    o.auto_migrate = true;
    o.client_id = bad;
    auto c = Client::Open(dir.SqliteUrl(), o);
    ASSERT_FALSE(c.has_value()) << bad;
    EXPECT_TRUE(c.error().IsInvalidArgument());
    EXPECT_NE(c.error().message().find("ClientOptions.client_id"), std::string::npos)
        << c.error().ToString();
  }
  ClientOptions o;
  o.auto_migrate = true;
  o.periodic_jobs.push_back(MakePeriodicJob("per\xff", "@daily", EmailArgs{"to"}));
  auto c = Client::Open(dir.SqliteUrl(), o);
  ASSERT_FALSE(c.has_value());
  EXPECT_NE(c.error().message().find("periodic job name \"per\\xff\" is not valid UTF-8"),
            std::string::npos)
      << c.error().ToString();
  o.periodic_jobs[0].name = "nightly \u00e9t\u00e9";
  o.client_id = "pod-7 \u00e9";
  EXPECT_TRUE(Client::Open(dir.SqliteUrl(), o).has_value());
}

// What PostgreSQL cannot store is refused on SQLite too: an app tested on SQLite would otherwise
// fail these inserts in production.
TEST_F(ClientTest, TextPostgresCannotStoreIsRefusedOnEveryDatabase) {
  auto c = Open(Options());
  ASSERT_TRUE(c);
  auto r = c->InsertRaw({"email", R"({"to":"a\u0000b"})", {}});
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().IsInvalidArgument());
  EXPECT_NE(r.error().message().find("args: the character \\u0000 cannot be stored"),
            std::string::npos)
      << r.error().ToString();
  InsertOptions o;
  o.metadata = R"({"note":"\u0000"})";
  EXPECT_TRUE(c->InsertRaw({"email", R"({"to":"x"})", o}).error().IsInvalidArgument());
  o.metadata = "{}";
  o.tags = {std::string("a\0b", 3)};
  r = c->InsertRaw({"email", R"({"to":"x"})", o});
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("has a control character (byte 0x00)"), std::string::npos)
      << r.error().ToString();
  // An escaped backslash before "u0000" is text, not the character.
  EXPECT_TRUE(c->InsertRaw({"email", R"({"to":"a\\u0000b"})", {}}).has_value());
  EXPECT_TRUE(c->InsertRaw({"email", R"({"to":"u0000"})", {}}).has_value());
}

// Migration status and down never create a SQLite file (a mistyped path made an empty one), and
// a SQLite url's parameters are refused rather than made part of the file's name.
TEST(ClientOpenTest, OnlyMigrateUpCreatesAFileAndSqliteUrlsTakeNoParameters) {
  TempDir dir;
  const std::string url = dir.SqliteUrl("typo.db");
  auto status = MigrationStatus(url);
  ASSERT_FALSE(status.has_value());
  EXPECT_TRUE(status.error().IsFailedPrecondition()) << status.error().ToString();
  EXPECT_FALSE(MigrateDown(url, 0).ok());
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "typo.db"));
  ClientOptions o;
  o.auto_migrate = true;
  auto c = Client::Open(dir.SqliteUrl("q.db?mode=ro"), o);
  ASSERT_FALSE(c.has_value());
  EXPECT_TRUE(c.error().IsInvalidArgument());
  EXPECT_NE(c.error().message().find("SQLite urls take no parameters"), std::string::npos)
      << c.error().ToString();
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

struct DupArgs {
  static constexpr std::string_view kKind = "dup";
  int x = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(DupArgs, x)
};
struct DupWorker : Worker<DupArgs> {
  Outcome Work(JobContext&, const DupArgs&) override { return Outcome::Done(); }
};

TEST(ClientOpenTest, DuplicateWorkerKindIsRefused) {
  using W = DupWorker;
  Workers w;
  w.Add<W>().Add<W>();
  TempDir dir;
  ClientOptions o;
  o.auto_migrate = true;
  auto c = Client::Open(dir.SqliteUrl(), o, std::move(w));
  ASSERT_FALSE(c.has_value());
  EXPECT_NE(c.error().message().find("two workers are registered for kind \"dup\""),
            std::string::npos);
}

// The completer holds an outcome back for others to share its write, up to its linger; FlushSoon
// (a queue ran dry, nothing more is coming) writes it at once. The linger here is an hour, so
// only FlushSoon delivers within the wait.
TEST(CompleterTest, FlushSoonWritesWithoutWaitingOutTheLinger) {
  TempDir dir;
  const std::string url = dir.SqliteUrl();
  ASSERT_TRUE(MigrateUp(url).ok());
  auto d = internal::Driver::Open(url, {});
  ASSERT_TRUE(d.has_value()) << d.error().ToString();
  internal::Executor& ex = (*d)->executor();
  const TimePoint now = std::chrono::time_point_cast<Duration>(std::chrono::system_clock::now());
  auto inserted = ex.JobInsertMany(
      {.jobs = {{.kind = "email", .queue = "default", .scheduled_at = now, .claim = true}},
       .now = now,
       .claim_for = "c1"});
  ASSERT_TRUE(inserted.has_value()) << inserted.error().ToString();
  ASSERT_EQ(inserted->size(), 1u);
  const JobRow job = inserted->front().job;
  ASSERT_EQ(job.state, JobState::kRunning);

  Signal delivered;
  std::vector<int64_t> ids;
  std::mutex mu;
  internal::Completer completer(
      ex,
      [&](const std::vector<internal::Completion>& batch) {
        {
          std::lock_guard lock(mu);
          for (const auto& c : batch) ids.push_back(c.params.id);
        }
        delivered.Notify();
      },
      Logger{}, std::chrono::hours(1));
  completer.Start();
  internal::Completion c;
  c.params = {.id = job.id, .attempt = 1, .state = JobState::kCompleted, .at = now, .error = {}};
  c.event = {.kind = Event::Kind::kJobCompleted, .job = job, .run_time = {}, .queue = "default"};
  completer.Add(std::move(c));
  completer.FlushSoon();
  ASSERT_TRUE(delivered.WaitFor());
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(ids, std::vector<int64_t>{job.id});
  }
  EXPECT_TRUE(completer.Stop().ok());
  auto row = ex.JobGetByID(job.id);
  ASSERT_TRUE(row.has_value()) << row.error().ToString();
  EXPECT_EQ(row->state, JobState::kCompleted);
}

}  // namespace
}  // namespace spool

namespace spool {
namespace {

// A subscriber may unsubscribe itself and subscribe another from its callback: the client goes on
// delivering and writing outcomes (it used to deadlock on its own lock).
TEST_F(ClientTest, SubscribersMaySubscribeAndUnsubscribeFromTheirCallbacks) {
  auto c = Start();
  EventLog log(*c);
  std::atomic<int> first_calls{0};
  std::atomic<int> second_calls{0};
  std::atomic<int> first_id{0};
  first_id = c->Subscribe([&](const Event&) {
    if (first_calls++ == 0) {
      c->Unsubscribe(first_id);
      c->Subscribe([&](const Event&) { ++second_calls; });
    }
  });
  const int64_t a = c->Insert(EmailArgs{"a@b"})->job.id;
  ASSERT_TRUE(log.WaitForJob(a, Event::Kind::kJobCompleted));
  const int64_t b = c->Insert(EmailArgs{"b@b"})->job.id;
  ASSERT_TRUE(log.WaitForJob(b, Event::Kind::kJobCompleted));
  ASSERT_TRUE(c->QueuePause("default").ok());  // an event delivered on the caller's thread
  EXPECT_TRUE(c->Stop(10s).ok());
  EXPECT_EQ(first_calls.load(), 1);
  EXPECT_GE(second_calls.load(), 2);  // b's completion and the pause
}

// Stop waits for running jobs and for the thread that delivers events, so from a job's Work or a
// subscriber it would wait for itself for good: refused instead.
TEST_F(ClientTest, StopFromAJobOrASubscriberIsRefused) {
  auto c = Start();
  EventLog log(*c);
  std::promise<Status> from_work;
  behaviour_->fn = [&](JobContext& ctx, const EmailArgs&) {
    from_work.set_value(ctx.client().Stop(1s));
    return Outcome::Done();
  };
  std::promise<Status> from_subscriber;
  std::atomic<bool> asked{false};
  c->Subscribe([&](const Event&) {
    if (!asked.exchange(true)) from_subscriber.set_value(c->StopAndCancel());
  });
  const int64_t id = c->Insert(EmailArgs{"a@b"})->job.id;
  ASSERT_TRUE(log.WaitForJob(id, Event::Kind::kJobCompleted));
  const Status work_st = from_work.get_future().get();
  EXPECT_TRUE(work_st.IsFailedPrecondition()) << work_st.ToString();
  EXPECT_NE(work_st.message().find("from inside a job's Work"), std::string::npos);
  const Status sub_st = from_subscriber.get_future().get();
  EXPECT_TRUE(sub_st.IsFailedPrecondition()) << sub_st.ToString();
  EXPECT_NE(sub_st.message().find("from an event subscriber"), std::string::npos);
  EXPECT_TRUE(c->Stop(10s).ok());
}

class MaxRetry final : public RetryPolicy {
 public:
  Duration NextRetry(const JobRow&) const override { return Duration::max(); }
};

// Durations past kMaxDelay from user code are shortened to it: no time overflows (a snooze of
// Duration::max() ran again at once, a Stop(Duration::max()) was a hard stop).
TEST_F(ClientTest, DurationsPastTheLongestDelayAreShortenedToIt) {
  ClientOptions bad = Options();
  bad.job_timeout = Duration::max();
  auto refused = Client::Open(url_, bad);
  ASSERT_FALSE(refused);
  EXPECT_TRUE(refused.error().IsInvalidArgument());
  EXPECT_NE(refused.error().message().find("job_timeout"), std::string::npos);
  bad = Options();
  bad.leader_ttl = Duration::max();
  EXPECT_FALSE(Client::Open(url_, bad));

  JobRow far{};
  far.attempt = kMaxMaxAttempts;
  EXPECT_EQ(DefaultRetryPolicy().NextRetry(far), kMaxDelay);

  ClientOptions o = Options();
  o.retry_policy = std::make_shared<MaxRetry>();
  auto c = Open(o);
  ASSERT_TRUE(c && c->Start().ok());
  EventLog log(*c);
  behaviour_->fn = [](JobContext&, const EmailArgs& a) {
    return a.to == "snooze" ? Outcome::Snooze(Duration::max()) : Outcome::Fail("no");
  };
  const int64_t snoozed = c->Insert(EmailArgs{"snooze"})->job.id;
  const int64_t failed = c->Insert(EmailArgs{"fail"})->job.id;
  ASSERT_TRUE(log.WaitForJob(snoozed, Event::Kind::kJobSnoozed));
  ASSERT_TRUE(log.WaitForJob(failed, Event::Kind::kJobFailed));
  EXPECT_EQ(Get(*c, snoozed).scheduled_at, clock_->Now() + kMaxDelay);
  EXPECT_EQ(Get(*c, failed).scheduled_at, clock_->Now() + kMaxDelay);

  // "Wait as long as it takes": the running job finishes instead of being cancelled.
  Signal started;
  Signal release;
  behaviour_->fn = [&](JobContext&, const EmailArgs&) {
    started.Notify();
    release.WaitFor();
    return Outcome::Done();
  };
  const int64_t slow = c->Insert(EmailArgs{"slow"})->job.id;
  ASSERT_TRUE(started.WaitFor());
  auto stopped = std::async(std::launch::async, [&] { return c->Stop(Duration::max()); });
  EXPECT_EQ(stopped.wait_for(50ms), std::future_status::timeout);
  release.Notify();
  EXPECT_TRUE(stopped.get().ok());
  EXPECT_EQ(Get(*c, slow).state, JobState::kCompleted);
}

class ThrowingRetry final : public RetryPolicy {
 public:
  Duration NextRetry(const JobRow&) const override { throw std::runtime_error("policy bug"); }
};

// The lines a client logs, kept for a test to search. `throw_at` makes the logger throw after
// keeping a line of that level (a logger with a bug).
class CapturedLog {
 public:
  Logger logger(std::optional<LogLevel> throw_at = std::nullopt) {
    return [state = state_, throw_at](LogLevel level, std::string_view message) {
      {
        std::lock_guard lock(state->mu);
        state->lines.emplace_back(message);
      }
      if (throw_at && level == *throw_at) throw std::runtime_error("logger bug");
    };
  }
  bool Has(std::string_view text) const {
    std::lock_guard lock(state_->mu);
    return std::any_of(state_->lines.begin(), state_->lines.end(),
                       [&](const std::string& l) { return l.find(text) != std::string::npos; });
  }

 private:
  struct State {
    std::mutex mu;
    std::vector<std::string> lines;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

// User code the runtime calls outside Work (retry policy, logger, subscriber) may throw: the
// client logs it and goes on, where the exception used to end the process.
TEST_F(ClientTest, ExceptionsFromHooksLoggersAndSubscribersAreContained) {
  ClientOptions o = Options();
  o.retry_policy = std::make_shared<ThrowingRetry>();
  CapturedLog lines;
  o.logger = lines.logger(LogLevel::kWarn);
  auto c = Open(o);
  ASSERT_TRUE(c && c->Start().ok());
  EventLog log(*c);
  c->Subscribe([](const Event&) { throw 42; });
  behaviour_->fn = [](JobContext&, const EmailArgs&) { return Outcome::Fail("no"); };
  const int64_t id = c->Insert(EmailArgs{"a@b"})->job.id;
  ASSERT_TRUE(log.WaitForJob(id, Event::Kind::kJobFailed));  // the second subscriber still hears
  const JobRow j = Get(*c, id);
  EXPECT_EQ(j.state, JobState::kRetryable);
  // DefaultRetryPolicy's delay for a first attempt: 1 s +-10%.
  EXPECT_GE(j.scheduled_at - clock_->Now(), 900ms);
  EXPECT_LE(j.scheduled_at - clock_->Now(), 1100ms);
  EXPECT_TRUE(c->Stop(10s).ok());
  EXPECT_TRUE(
      lines.Has("the client's RetryPolicy::NextRetry: std::runtime_error thrown: policy bug"));
  EXPECT_TRUE(lines.Has("an event subscriber: non-standard exception thrown: int"));
}

// A worker whose hooks throw: its jobs run with the client's defaults, and the log says why.
class ThrowingHooksWorker final : public Worker<EmailArgs> {
 public:
  Outcome Work(JobContext&, const EmailArgs&) override { return Outcome::Fail("always"); }
  std::optional<Duration> Timeout(const JobRow&) const override { throw std::logic_error("t"); }
  std::optional<Duration> NextRetry(const JobRow&) const override { throw std::logic_error("r"); }
};

TEST_F(ClientTest, AWorkersThrowingHooksFallBackToTheClientsDefaults) {
  ClientOptions o = Options();  // FixedRetry(10s)
  CapturedLog lines;
  o.logger = lines.logger();
  Workers w;
  w.Add<ThrowingHooksWorker>();
  auto c = Client::Open(url_, o, std::move(w));
  ASSERT_TRUE(c && (*c)->Start().ok());
  EventLog log(**c);
  const int64_t id = (*c)->Insert(EmailArgs{"a@b"})->job.id;
  ASSERT_TRUE(log.WaitForJob(id, Event::Kind::kJobFailed));
  EXPECT_EQ(Get(**c, id).scheduled_at, clock_->Now() + 10s);  // the client's retry policy
  EXPECT_TRUE((*c)->Stop(10s).ok());
  EXPECT_TRUE(lines.Has("Timeout of the worker of kind \"email\": std::logic_error thrown: t"));
  EXPECT_TRUE(lines.Has("NextRetry of the worker of kind \"email\": std::logic_error thrown: r"));
}

// What a worker needs from the application (a pool, a gateway) comes through ClientOptions::app:
// workers stay default-constructible, as the generated registry makes them.
struct Gateway {
  std::atomic<int> charges{0};
};

TEST_F(ClientTest, WorkersReachTheApplicationsObjectsThroughTheContext) {
  ClientOptions o = Options();
  auto gateway = std::make_shared<Gateway>();
  o.app = gateway;
  auto c = Open(o);
  ASSERT_TRUE(c && c->Start().ok());
  EventLog log(*c);
  std::atomic<bool> wrong_type_is_null{false};
  behaviour_->fn = [&](JobContext& ctx, const EmailArgs&) {
    wrong_type_is_null = ctx.App<std::string>() == nullptr;
    Gateway* g = ctx.App<Gateway>();
    if (g == nullptr) return Outcome::Fail("no gateway");
    ++g->charges;
    return Outcome::Done();
  };
  const int64_t id = c->Insert(EmailArgs{"a@b"})->job.id;
  ASSERT_TRUE(log.WaitForJob(id, Event::Kind::kJobCompleted));
  EXPECT_EQ(gateway->charges.load(), 1);
  EXPECT_TRUE(wrong_type_is_null.load());
  EXPECT_TRUE(c->Stop(10s).ok());
}

TEST_F(ClientTest, PeriodicJobsAreCheckedWhenTheClientOpens) {
  ClientOptions o = Options();
  o.periodic_jobs.push_back(MakePeriodicJob("hourly", "@hourly", EmailArgs{"a@b"}));
  o.periodic_jobs.back().args = "not json";
  auto c = Client::Open(url_, o);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("periodic job \"hourly\": args are not a JSON object"),
            std::string::npos)
      << c.error().ToString();
  // The kind's worker is asked, as Insert's callers can through CheckArgs.
  o.periodic_jobs.back().args = R"({"message":"hi"})";
  Workers w;
  w.Add<EmailWorker>(behaviour_);
  c = Client::Open(url_, o, std::move(w));
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("periodic job \"hourly\": cannot parse args of kind email"),
            std::string::npos)
      << c.error().ToString();
  // Also on a client without queues (a test's TestQueue checks a task's schedule that way).
  o.periodic_jobs.back().args = R"({"to":"a@b"})";
  o.queues.clear();
  EXPECT_TRUE(Client::Open(url_, o));
}

TEST_F(ClientTest, ValidateInsertOptionsChecksTheUniqueOptions) {
  InsertOptions o;
  o.unique = UniqueOptions{};
  EXPECT_TRUE(ValidateInsertOptions(o).ok());
  o.unique->by_states = {JobState::kAvailable};
  EXPECT_TRUE(ValidateInsertOptions(o).IsInvalidArgument());
  o.unique = UniqueOptions{.by_args_fields = {"id"}};
  EXPECT_TRUE(ValidateInsertOptions(o).IsInvalidArgument());
  o.unique = UniqueOptions{.by_period = -1s};
  EXPECT_TRUE(ValidateInsertOptions(o).IsInvalidArgument());
}

// A finished unique job whose key a newer duplicate holds cannot be retried: said in words, not
// as the unique index's error.
TEST_F(ClientTest, RetryOfAUniqueJobWhoseKeyIsTakenSaysWhy) {
  auto c = Open(Options());
  ASSERT_TRUE(c);
  InsertOptions o;
  o.unique = UniqueOptions{
      .by_args = true,
      .by_states = {JobState::kAvailable, JobState::kPending, JobState::kRunning,
                    JobState::kRetryable, JobState::kScheduled, JobState::kCompleted}};
  const int64_t first = c->Insert(EmailArgs{"a@b"}, o)->job.id;
  ASSERT_TRUE(c->JobCancel(first));  // final, and cancelled is not in by_states
  const auto second = c->Insert(EmailArgs{"a@b"}, o);
  ASSERT_TRUE(second && !second->duplicate);
  const auto retried = c->JobRetry(first);
  ASSERT_FALSE(retried);
  EXPECT_TRUE(retried.error().IsFailedPrecondition()) << retried.error().ToString();
  EXPECT_NE(retried.error().message().find(fmt::format(
                "job {} cannot be retried: it is a unique job, and job {} (available) holds its "
                "unique key; retry this one once that one has finished, or delete that one",
                first, second->job.id)),
            std::string::npos)
      << retried.error().ToString();
}

// max_attempts grows by one on a retry of a used-up job, but never past kMaxMaxAttempts: the
// retry is refused in words (SQLite stored 32768; PostgreSQL's smallint refused it raw).
TEST_F(ClientTest, RetryOfAJobThatUsedEveryAttemptIsRefused) {
  auto c = Open(Options());
  ASSERT_TRUE(c);
  const int64_t id = c->Insert(EmailArgs{"a@b"}, {.max_attempts = kMaxMaxAttempts})->job.id;
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir_.path() / "test.db").c_str(), &db), SQLITE_OK);
  // Discarded after its last attempt: set by hand, as 32,767 runs would take minutes.
  const std::string used_up = fmt::format(
      "UPDATE spool_job SET attempt = {0}, max_attempts = {0}, finalized_at = "
      "created_at, state = " SPOOL_DISCARDED " WHERE id = {1}",
      kMaxMaxAttempts, id);
  ASSERT_EQ(sqlite3_exec(db, used_up.c_str(), nullptr, nullptr, nullptr), SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);
  ASSERT_EQ(c->JobGet(id)->state, JobState::kDiscarded);
  const auto retried = c->JobRetry(id);
  ASSERT_FALSE(retried);
  EXPECT_TRUE(retried.error().IsFailedPrecondition()) << retried.error().ToString();
  EXPECT_NE(retried.error().message().find(
                fmt::format("job {} has used all 32767 attempts a job may have", id)),
            std::string::npos)
      << retried.error().ToString();
  EXPECT_EQ(c->JobGet(id)->max_attempts, kMaxMaxAttempts);
  EXPECT_EQ(c->JobGet(id)->state, JobState::kDiscarded);
}

}  // namespace
}  // namespace spool
