#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <set>
#include <stdexcept>
#include <string>

#include "core/exception.h"
#include "core/failure_log.h"
#include "core/job_hooks.h"
#include "core/url.h"
#include "driver/row_json.h"
#include "runtime/deadline_watcher.h"
#include "spool/spool.h"
#include "support/test_util.h"

namespace spool {
namespace {

// The JSON columns both drivers decode: the plain scan for arrays without escapes must agree with
// the full parser on everything it accepts, and hand everything else to it.
TEST(RowJsonTest, StringArraysDecodeTheSameWithOrWithoutTheFastPath) {
  using V = std::vector<std::string>;
  const std::vector<std::pair<std::string, V>> cases = {
      {"[]", {}},
      {R"(["a"])", {"a"}},
      {R"(["host-1-ab12","host-2-cd34"])", {"host-1-ab12", "host-2-cd34"}},
      {R"(["a,b","c]"])", {"a,b", "c]"}},
      {R"(["q\"uote","back\\slash"])", {"q\"uote", "back\\slash"}},
      {R"([ "spaced" , "out" ])", {"spaced", "out"}},
      {"[\"caf\u00e9\",\"\u65e5\"]", {"caf\u00e9", "\u65e5"}},
      {R"([""])", {""}},
  };
  for (const auto& [text, want] : cases) {
    auto got = internal::ParseStringArray(text);
    ASSERT_TRUE(got.has_value()) << text << ": " << got.error().ToString();
    EXPECT_EQ(*got, want) << text;
  }
  // The last five the plain scan once took (fuzzing): a trailing comma, raw control bytes (a tab,
  // a NUL), a cut UTF-8 sequence and an overlong one.
  for (std::string_view bad :
       {std::string_view(""), std::string_view("["), std::string_view(R"(["a",1])"),
        std::string_view(R"({"a":"b"})"), std::string_view(R"(["a")"), std::string_view("null"),
        std::string_view(R"(["a",])"), std::string_view("[\"a\tb\"]"),
        std::string_view("[\"caf\xc3\"]"), std::string_view("[\"\xc0\xaf\"]"),
        std::string_view("[\"a\0b\"]", 7)}) {
    auto got = internal::ParseStringArray(bad);
    ASSERT_FALSE(got.has_value()) << bad;
    EXPECT_EQ(got.error().code(), Status::Code::kInternal) << got.error().ToString();
  }
}

TEST(RowJsonTest, ErrorHistoryRoundTripsAndSkipsWhatItCannotRead) {
  const AttemptError e{.at = TimePoint(Duration(1'800'000'000'123'456)),
                       .attempt = 3,
                       .error = "boom \"quoted\"\n",
                       .trace = "std::runtime_error"};
  auto back = internal::ParseErrors("[" + internal::ErrorJson(e) + "]");
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  ASSERT_EQ(back->size(), 1u);
  EXPECT_EQ((*back)[0].at, e.at);
  EXPECT_EQ((*back)[0].attempt, 3);
  EXPECT_EQ((*back)[0].error, e.error);
  EXPECT_EQ((*back)[0].trace, e.trace);
  // jsonb's spacing, a field of the wrong type, and an entry that is not an object.
  auto loose = internal::ParseErrors(R"([{"at": "yesterday", "error": "x", "attempt": 2}, 7])");
  ASSERT_TRUE(loose.has_value());
  ASSERT_EQ(loose->size(), 1u);
  EXPECT_EQ((*loose)[0].at, TimePoint{});
  EXPECT_EQ((*loose)[0].attempt, 2);
  EXPECT_EQ((*loose)[0].error, "x");
  EXPECT_TRUE(internal::ParseErrors("[]")->empty());
  EXPECT_FALSE(internal::ParseErrors(R"({"error": "x"})").has_value());
}

// The in-memory count follows the drivers' SQL: an integer grows, anything else starts at 1, and
// metadata that is not an object is left alone.
TEST(SnoozeCountTest, CountsLikeTheDrivers) {
  using spool::internal::SnoozesIn;
  using spool::internal::WithOneMoreSnooze;
  EXPECT_EQ(SnoozesIn("{}"), 0);
  EXPECT_EQ(SnoozesIn(R"({"snoozes":3})"), 3);
  EXPECT_EQ(SnoozesIn(R"({"snoozes":-3})"), 0);
  EXPECT_EQ(SnoozesIn(R"({"snoozes":"3"})"), 0);
  EXPECT_EQ(SnoozesIn("not json"), 0);
  EXPECT_EQ(WithOneMoreSnooze("{}"), R"({"snoozes":1})");
  EXPECT_EQ(WithOneMoreSnooze(R"({"a":[1],"snoozes":41})"), R"({"a":[1],"snoozes":42})");
  EXPECT_EQ(WithOneMoreSnooze(R"({"snoozes":1.5})"), R"({"snoozes":1})");
  EXPECT_EQ(WithOneMoreSnooze(R"({"snoozes":18446744073709551615})"), R"({"snoozes":1})");
  EXPECT_EQ(WithOneMoreSnooze("[1,2]"), "[1,2]");
  EXPECT_EQ(WithOneMoreSnooze("not json"), "not json");
}

// What the databases refuse or should not hold is changed before an error is stored: NUL bytes,
// and text past kMaxErrorBytes, cut between UTF-8 characters.
TEST(StorableErrorTextTest, ReplacesNulAndCutsBetweenCharacters) {
  using spool::internal::kMaxErrorBytes;
  using spool::internal::StorableErrorText;
  EXPECT_EQ(StorableErrorText("plain"), "plain");
  EXPECT_EQ(StorableErrorText(std::string("bad\0nul", 7)), "bad\uFFFDnul");
  std::string long_text(kMaxErrorBytes - 1, 'x');
  long_text += "\u043f\u043f";  // two 2-byte characters across the limit
  const std::string cut = StorableErrorText(long_text);
  EXPECT_EQ(cut, std::string(kMaxErrorBytes - 1, 'x') + " ... (4 more bytes not kept)");
  const std::string exact(kMaxErrorBytes, 'y');
  EXPECT_EQ(StorableErrorText(exact), exact);
  using spool::internal::CutUtf8;
  EXPECT_EQ(CutUtf8("ab\u043fc", 3), "ab");  // the 2-byte character at 2 is not split
  EXPECT_EQ(CutUtf8("ab\u043fc", 4), "ab\u043f");
  EXPECT_EQ(CutUtf8("abc", 10), "abc");
}

TEST(StatusTest, OkIsDefaultAndCheap) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_EQ(s.code(), Status::Code::kOk);
}

TEST(StatusTest, ErrorCarriesCodeMessageAndContext) {
  Status s = Status::InvalidArgument("bad thing").WithContext("Open");
  EXPECT_TRUE(s.IsInvalidArgument());
  EXPECT_EQ(s.message(), "Open: bad thing");
  EXPECT_EQ(s.ToString(), "InvalidArgument: Open: bad thing");
  Status copy = s;
  EXPECT_EQ(copy.ToString(), s.ToString());
  EXPECT_TRUE(Status::ConnectionLost("x").IsTransient());
  EXPECT_FALSE(Status::InvalidArgument("x").IsTransient());
}

TEST(ResultTest, HoldsValueOrError) {
  Result<int> v = 5;
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(*v, 5);
  Result<int> e = Status::NotFound("no job 7");
  EXPECT_FALSE(e);
  EXPECT_TRUE(e.error().IsNotFound());
  EXPECT_EQ(e.value_or(3), 3);
  Result<int> from_ok = Status::Ok();
  EXPECT_FALSE(from_ok.has_value());
  EXPECT_EQ(from_ok.error().code(), Status::Code::kInternal);
}

TEST(JobStateTest, NamesRoundTripAndUnknownListsValid) {
  for (JobState s : kAllJobStates) {
    auto parsed = ParseJobState(JobStateName(s));
    ASSERT_TRUE(parsed.has_value());
    EXPECT_EQ(*parsed, s);
  }
  auto bad = ParseJobState("bogus");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("available, scheduled, running"), std::string::npos);
  EXPECT_TRUE(IsFinalState(JobState::kDiscarded));
  EXPECT_FALSE(IsFinalState(JobState::kRetryable));
}

TEST(UrlWithoutPasswordTest, DropsOnlyThePassword) {
  EXPECT_EQ(UrlWithoutPassword("postgres://u:pw@h:5432/db"), "postgres://u@h:5432/db");
  EXPECT_EQ(UrlWithoutPassword("postgresql://u@h/db?password=x"), "postgresql://u@h/db");
  EXPECT_EQ(UrlWithoutPassword("postgres://h/db?a=1&password=x&b=2"), "postgres://h/db?a=1&b=2");
  // Two '@' before the host: libpq reads "ss@h" as the host, so nothing of it may show.
  EXPECT_EQ(UrlWithoutPassword("postgres://u:p@ss@h/db"), "postgres://...@h/db");
  // An '@' past the host part: where the password ends cannot be told, so all before it goes.
  EXPECT_EQ(UrlWithoutPassword("postgres://u:pa/ss@h/db"), "postgres://...@h/db");
  EXPECT_EQ(UrlWithoutPassword("postgres://u:p@ss?word@h:5/db"), "postgres://...@h:5/db");
  EXPECT_EQ(UrlWithoutPassword("postgres://h:5/db?user=me@corp&password=x"),
            "postgres://...@corp&...");
  EXPECT_EQ(UrlWithoutPassword("postgres://u:S3cret@[::1:45005/shop"),
            "postgres://u@[::1:45005/shop");
  // libpq decodes a parameter's name too; sslpassword unlocks the client's key.
  EXPECT_EQ(UrlWithoutPassword("postgres://app@h/db?pass%77ord=S1&sslmode=require"),
            "postgres://app@h/db?sslmode=require");
  EXPECT_EQ(UrlWithoutPassword("postgres://app@h/db?sslpassword=K&a=%41"),
            "postgres://app@h/db?a=%41");
  EXPECT_EQ(UrlWithoutPassword("postgres://u:p@ss@h/db?pass%77ord=S2"), "postgres://...@h/db?...");
  EXPECT_EQ(UrlWithoutPassword("postgres://127.0.0.1:5432/db"), "postgres://127.0.0.1:5432/db");
  EXPECT_EQ(UrlWithoutPassword("sqlite://u:x@y.db?password=z"), "sqlite://u:x@y.db?password=z");
  EXPECT_EQ(UrlWithoutPassword("sqlite://app.db"), "sqlite://app.db");
}

TEST(UrlSchemeForMessageTest, NamesOnlyASchemeNeverTheRest) {
  EXPECT_EQ(UrlSchemeForMessage("mysql://u:pw@h/db"), "\"mysql:...\"");
  EXPECT_EQ(UrlSchemeForMessage("sqlite:/tmp/x.db"), "\"sqlite:...\"");
  EXPECT_EQ(UrlSchemeForMessage("host=127.0.0.1 password=pw:x"), "(not a url)");
  EXPECT_EQ(UrlSchemeForMessage("app.db"), "(not a url)");
}

// The commands in messages are pasted into a shell: a url's '&' or a path's space would cut them.
TEST(ShellWordTest, QuotesOnlyWhatAShellWouldRead) {
  EXPECT_EQ(internal::ShellWord("sqlite:///srv/app/app.db"), "sqlite:///srv/app/app.db");
  EXPECT_EQ(internal::ShellWord("postgres://u@127.0.0.1:5432/db"),
            "postgres://u@127.0.0.1:5432/db");
  // '?' is a glob character.
  EXPECT_EQ(internal::ShellWord("postgres://h/db?sslmode=disable"),
            "'postgres://h/db?sslmode=disable'");
  EXPECT_EQ(internal::ShellWord("postgres://h/db?sslmode=disable&application_name=x"),
            "'postgres://h/db?sslmode=disable&application_name=x'");
  EXPECT_EQ(internal::ShellWord("sqlite:///tmp/my db/it's.db"),
            R"('sqlite:///tmp/my db/it'\''s.db')");
  EXPECT_EQ(internal::ShellWord(""), "''");
}

TEST(FormatTimeTest, Rfc3339WithMicros) {
  EXPECT_EQ(FormatTime(TimePoint(Duration(1'700'000'000'123'456))), "2023-11-14T22:13:20.123456Z");
  EXPECT_EQ(FormatTime(TimePoint(Duration(-1))), "1969-12-31T23:59:59.999999Z");
}

TEST(RetryPolicyTest, AttemptToTheFourthWithTenPercentJitter) {
  DefaultRetryPolicy policy;
  JobRow job;
  std::set<int64_t> seen;
  for (int attempt = 1; attempt <= 25; ++attempt) {
    job.attempt = attempt;
    const double base_us = std::pow(attempt, 4) * 1e6;
    for (int i = 0; i < 20; ++i) {
      const auto d = policy.NextRetry(job).count();
      EXPECT_GE(static_cast<double>(d), base_us * 0.9 - 1) << "attempt " << attempt;
      EXPECT_LE(static_cast<double>(d), base_us * 1.1 + 1) << "attempt " << attempt;
      if (attempt == 10) seen.insert(d);
    }
  }
  EXPECT_GT(seen.size(), 10u) << "jitter should spread retries";
}

TEST(OptionsTest, InsertOptionsNameTheBadField) {
  InsertOptions o;
  EXPECT_TRUE(ValidateInsertOptions(o).ok());
  o.priority = 5;
  EXPECT_NE(ValidateInsertOptions(o).message().find("priority"), std::string::npos);
  o = {};
  o.priority = 0;
  EXPECT_TRUE(ValidateInsertOptions(o).IsInvalidArgument());
  o = {};
  o.queue = "";
  EXPECT_NE(ValidateInsertOptions(o).message().find("queue name is empty"), std::string::npos);
  o.queue = "has space";
  EXPECT_NE(ValidateInsertOptions(o).message().find("invalid character ' '"), std::string::npos);
  o = {};
  o.max_attempts = 0;
  EXPECT_NE(ValidateInsertOptions(o).message().find("max_attempts"), std::string::npos);
  o.max_attempts = kMaxMaxAttempts + 1;  // more than PostgreSQL's smallint holds
  EXPECT_NE(ValidateInsertOptions(o).message().find("between 1 and 32767"), std::string::npos);
  o.max_attempts = kMaxMaxAttempts;
  EXPECT_TRUE(ValidateInsertOptions(o).ok());
  o = {};
  o.metadata = "[1]";
  EXPECT_NE(ValidateInsertOptions(o).message().find("metadata"), std::string::npos);
  o = {};
  o.tags = {"a,b"};
  EXPECT_NE(ValidateInsertOptions(o).message().find("tags"), std::string::npos);
}

TEST(OptionsTest, ClientOptionsNameTheBadField) {
  ClientOptions o;
  EXPECT_TRUE(ValidateClientOptions(o).ok());
  o.queues["default"] = {.max_workers = 0};
  Status s = ValidateClientOptions(o);
  EXPECT_TRUE(s.IsInvalidArgument());
  EXPECT_NE(s.message().find("max_workers"), std::string::npos);
  o = {};
  o.queues["bad queue"] = {};
  EXPECT_NE(ValidateClientOptions(o).message().find("bad queue"), std::string::npos);
  o = {};
  o.job_timeout = -std::chrono::seconds(1);
  EXPECT_NE(ValidateClientOptions(o).message().find("job_timeout"), std::string::npos);
  o = {};
  o.poll_interval = Duration::zero();
  EXPECT_NE(ValidateClientOptions(o).message().find("poll_interval"), std::string::npos);
}

struct A {
  static constexpr std::string_view kKind = "a";
  int x = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(A, x)
};
class AWorker : public Worker<A> {
  Outcome Work(JobContext&, const A&) override { return Outcome::Done(); }
};

TEST(WorkersTest, KindsWithControlCharactersAreRefused) {
  EXPECT_TRUE(ValidateKind("send_email").ok());
  EXPECT_TRUE(ValidateKind("Billing::Charge v2").ok());
  const Status st = ValidateKind("evil\nkind");
  EXPECT_TRUE(st.IsInvalidArgument());
  EXPECT_EQ(st.message(),
            "kind \"evil\\nkind\" has a control character (byte 0x0a): use printable characters");
  EXPECT_FALSE(ValidateKind(std::string(256, 'k')).ok());
  EXPECT_FALSE(ValidateKind("").ok());
}

// Text that is not UTF-8 would make the insert throw (nlohmann's dump) or the job unlistable.
TEST(WorkersTest, KindsAndTagsMustBeUtf8) {
  EXPECT_TRUE(ValidateKind("\u043f\u0438\u0441\u044c\u043c\u043e \U0001F4E8").ok());
  for (const char* bad :
       {"k\xff", "k\xc3", "k\xc0\xaf", "k\xed\xa0\x80", "k\xf4\x90\x80\x80", "\xe2\x82"}) {
    const Status st = ValidateKind(bad);
    EXPECT_TRUE(st.IsInvalidArgument()) << bad;
    EXPECT_NE(st.message().find("is not valid UTF-8"), std::string::npos) << st.message();
  }
  InsertOptions o;
  o.tags = {"ok", "bad\xff"};
  const Status st = ValidateInsertOptions(o);
  EXPECT_TRUE(st.IsInvalidArgument());
  EXPECT_NE(st.message().find("InsertOptions.tags: the tag \"bad\\xff\" is not valid UTF-8"),
            std::string::npos)
      << st.message();
  o.tags = {"\u00e9t\u00e9"};
  EXPECT_TRUE(ValidateInsertOptions(o).ok());
}

TEST(InsertOptionsTest, ScheduledAtIsWithinTheYearsTheDatabasesStore) {
  InsertOptions o;
  for (TimePoint t : {TimePoint::min(), TimePoint::max(),
                      TimePoint(std::chrono::microseconds(253'402'300'800'000'000))}) {
    o.scheduled_at = t;
    const Status st = ValidateInsertOptions(o);
    EXPECT_TRUE(st.IsInvalidArgument()) << t.time_since_epoch().count();
    EXPECT_NE(st.message().find("years 1 to 9999"), std::string::npos) << st.message();
  }
  for (const char* ok : {"0001-01-01T00:00:00.000000Z", "9999-12-31T23:59:59.999999Z"}) {
    bool found = false;
    for (TimePoint t : {TimePoint(std::chrono::microseconds(-62'135'596'800'000'000)),
                        TimePoint(std::chrono::microseconds(253'402'300'799'999'999))}) {
      o.scheduled_at = t;
      EXPECT_TRUE(ValidateInsertOptions(o).ok());
      found = found || FormatTime(t) == ok;
    }
    EXPECT_TRUE(found) << ok;
  }
}

TEST(WorkersTest, DuplicateKindIsReported) {
  Workers w;
  w.Add<AWorker>();
  EXPECT_TRUE(w.status().ok());
  EXPECT_NE(w.Find("a"), nullptr);
  EXPECT_EQ(w.Find("b"), nullptr);
  w.Add<AWorker>();
  EXPECT_TRUE(w.status().IsInvalidArgument());
  EXPECT_NE(w.status().message().find("\"a\""), std::string::npos);
}

struct AppError {};  // not derived from std::exception

template <typename E>
internal::CaughtException Caught(E e) {
  try {
    throw e;
  } catch (...) {
    return internal::DescribeCurrentException();
  }
}

TEST(DescribeCurrentExceptionTest, NamesTheTypeAndTheMessage) {
  auto std_error = Caught(std::invalid_argument("bad input"));
  EXPECT_EQ(std_error.type, "std::invalid_argument");
  EXPECT_EQ(std_error.message, "std::invalid_argument thrown: bad input");
  auto number = Caught(7);
  EXPECT_EQ(number.type, "int");
  EXPECT_EQ(number.message, "non-standard exception thrown: int");
  auto app = Caught(AppError{});
  EXPECT_NE(app.type.find("AppError"), std::string::npos) << app.type;
  EXPECT_EQ(app.message, "non-standard exception thrown: " + app.type);
  // A thrown string is its own message (the audit saw only "basic_string<char, ...>").
  EXPECT_EQ(Caught(std::string("disk full")).message, "std::string thrown: disk full");
  EXPECT_EQ(Caught("no route").message, "const char* thrown: no route");
}

TEST(OutcomeTest, StatusConvertsToOutcome) {
  Outcome ok = Status::Ok();
  EXPECT_EQ(ok.kind(), Outcome::Kind::kDone);
  Outcome fail = Status::NotFound("user 7");
  EXPECT_EQ(fail.kind(), Outcome::Kind::kFail);
  EXPECT_EQ(fail.message(), "NotFound: user 7");
}

// Deadlines fire in deadline order whatever order they were added in (an earlier one added while
// the watcher waits for a later one included); a removed or replaced deadline does not fire.
TEST(DeadlineWatcherTest, FiresEachDeadlineAtItsOwnTime) {
  using namespace std::chrono_literals;
  FakeClock clock;
  internal::DeadlineWatcher watcher(clock);
  watcher.Start();
  const TimePoint t0 = clock.Now();
  struct Watched {
    std::stop_source source;
    std::atomic<bool> timed_out{false};
  };
  Watched late, early, removed, moved, due;
  watcher.Add(1, t0 + 10s, late.source, &late.timed_out);
  watcher.Add(2, t0 + 1s, early.source, &early.timed_out);
  watcher.Add(3, t0 + 1s, removed.source, &removed.timed_out);
  watcher.Remove(3);
  watcher.Add(4, t0 + 1s, moved.source, &moved.timed_out);
  watcher.Add(4, t0 + 20s, moved.source, &moved.timed_out);

  clock.Advance(1s);
  ASSERT_TRUE(testing::Eventually([&] { return early.source.stop_requested(); }));
  EXPECT_TRUE(early.timed_out);
  // Anything due now fires in the same pass as `due`, so once it has fired nothing else will.
  watcher.Add(5, t0, due.source, &due.timed_out);
  ASSERT_TRUE(testing::Eventually([&] { return due.source.stop_requested(); }));
  EXPECT_FALSE(late.source.stop_requested());
  EXPECT_FALSE(removed.source.stop_requested());
  EXPECT_FALSE(moved.source.stop_requested()) << "fired at the deadline it was moved from";

  clock.Advance(9s);
  ASSERT_TRUE(testing::Eventually([&] { return late.source.stop_requested(); }));
  EXPECT_TRUE(late.timed_out);
  EXPECT_FALSE(moved.source.stop_requested());
  clock.Advance(10s);
  ASSERT_TRUE(testing::Eventually([&] { return moved.source.stop_requested(); }));
  EXPECT_FALSE(removed.timed_out);
  watcher.Stop();
}

// With the system clock the watcher sleeps until the deadline instead of polling the clock.
TEST(DeadlineWatcherTest, FiresOnTheSystemClock) {
  using namespace std::chrono_literals;
  SystemClock clock;
  internal::DeadlineWatcher watcher(clock);
  watcher.Start();
  std::stop_source source;
  std::atomic<bool> timed_out{false};
  watcher.Add(1, clock.Now() + 20ms, source, &timed_out);
  ASSERT_TRUE(testing::Eventually([&] { return source.stop_requested(); }));
  EXPECT_TRUE(timed_out);
  watcher.Stop();
}

}  // namespace
}  // namespace spool

namespace spool::internal {
namespace {

TEST(FailureLogTest, FirstFailureThenOneLineAPeriodThenTheRecovery) {
  std::vector<std::pair<LogLevel, std::string>> lines;
  const Logger logger = [&](LogLevel level, std::string_view m) {
    lines.emplace_back(level, std::string(m));
  };
  FailureLog heartbeat("heartbeat", std::chrono::seconds(10));
  const auto t0 = std::chrono::steady_clock::time_point(std::chrono::hours(1));
  const Status down = Status::ConnectionLost("server closed the connection");
  heartbeat.Succeeded(logger, t0);  // nothing to recover from
  EXPECT_TRUE(lines.empty());
  for (int i = 0; i < 25; ++i) heartbeat.Failed(logger, down, "", t0 + std::chrono::seconds(i));
  // At 0 s (the first), 10 s and 20 s: 10 failures since each report.
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0].first, LogLevel::kWarn);
  EXPECT_EQ(lines[0].second.rfind("heartbeat failed: ", 0), 0u) << lines[0].second;
  EXPECT_NE(lines[1].second.find("heartbeat still fails (10 failed attempts since the last "
                                 "report): "),
            std::string::npos)
      << lines[1].second;
  EXPECT_EQ(heartbeat.failures(), 25);
  heartbeat.Failed(logger, down, "retrying every 1000 ms", t0 + std::chrono::seconds(31));
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_NE(lines[3].second.find("(5 failed attempts since the last report, retrying every 1000 "
                                 "ms)"),
            std::string::npos)
      << lines[3].second;
  heartbeat.Succeeded(logger, t0 + std::chrono::seconds(32));
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines[4].first, LogLevel::kInfo);
  EXPECT_EQ(lines[4].second, "heartbeat works again after 26 failed attempts (32000 ms)");
  EXPECT_EQ(heartbeat.failures(), 0);
  // A new outage starts over with its first failure.
  heartbeat.Failed(logger, down, "", t0 + std::chrono::seconds(33));
  ASSERT_EQ(lines.size(), 6u);
  EXPECT_EQ(lines[5].second.rfind("heartbeat failed: ", 0), 0u);
}

TEST(StderrLoggerTest, ParsesLevelNames) {
  EXPECT_EQ(ParseLogLevel("debug"), LogLevel::kDebug);
  EXPECT_EQ(ParseLogLevel("INFO"), LogLevel::kInfo);
  EXPECT_EQ(ParseLogLevel("warn"), LogLevel::kWarn);
  EXPECT_EQ(ParseLogLevel("Warning"), LogLevel::kWarn);
  EXPECT_EQ(ParseLogLevel("error"), LogLevel::kError);
  EXPECT_EQ(ParseLogLevel("verbose"), std::nullopt);
  EXPECT_EQ(ParseLogLevel(""), std::nullopt);
}

}  // namespace
}  // namespace spool::internal
