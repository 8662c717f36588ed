#include "core/cron.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

namespace spool {
namespace {

// Test-side time conversions use libc (timegm/gmtime_r), independent of cron.cc's calendar code.
TimePoint At(const std::string& iso) {
  std::tm tm = {};
  int sec = 0;
  if (std::sscanf(iso.c_str(), "%d-%d-%dT%d:%d:%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &sec) != 6) {
    ADD_FAILURE() << "bad time in test: " << iso;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  tm.tm_sec = sec;
  return TimePoint(std::chrono::seconds(timegm(&tm)));
}

std::string Utc(TimePoint t) {
  if (t == kCronNever) return "never";
  const int64_t us = t.time_since_epoch().count();
  const std::time_t secs = static_cast<std::time_t>(us / 1'000'000 - (us % 1'000'000 < 0 ? 1 : 0));
  std::tm tm = {};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buf;
}

CronSchedule MustParse(std::string_view expr, std::string_view zone = {}) {
  Result<CronSchedule> r = CronSchedule::Parse(expr, zone);
  if (!r) {
    ADD_FAILURE() << "Parse(\"" << expr << "\", \"" << zone << "\"): " << r.error().message();
    return *CronSchedule::Parse("* * * * *");
  }
  return *std::move(r);
}

// The next `n` fire times after `from`, as UTC strings.
std::vector<std::string> Fires(std::string_view expr, const std::string& from, int n,
                               std::string_view zone = {}) {
  const CronSchedule s = MustParse(expr, zone);
  std::vector<std::string> out;
  TimePoint t = At(from);
  for (int i = 0; i < n; ++i) {
    t = s.Next(t);
    out.push_back(Utc(t));
  }
  return out;
}

std::string NextUtc(std::string_view expr, const std::string& from, std::string_view zone = {}) {
  return Fires(expr, from, 1, zone)[0];
}

std::string ParseError(std::string_view expr, std::string_view zone = {}) {
  Result<CronSchedule> r = CronSchedule::Parse(expr, zone);
  if (r) return "parsed OK";
  EXPECT_TRUE(r.error().IsInvalidArgument()) << r.error().ToString();
  return r.error().message();
}

using Strings = std::vector<std::string>;

TEST(CronTest, EveryMinuteIsStrictlyAfter) {
  EXPECT_EQ(NextUtc("* * * * *", "2026-01-01T00:00:30Z"), "2026-01-01T00:01:00Z");
  EXPECT_EQ(NextUtc("* * * * *", "2026-01-01T00:01:00Z"), "2026-01-01T00:02:00Z");
  const CronSchedule s = MustParse("* * * * *");
  EXPECT_EQ(Utc(s.Next(At("2026-01-01T00:00:59Z") + std::chrono::microseconds(999'999))),
            "2026-01-01T00:01:00Z");
  EXPECT_EQ(Utc(s.Next(At("2026-01-01T00:01:00Z") - std::chrono::microseconds(1))),
            "2026-01-01T00:01:00Z");
}

TEST(CronTest, Every15Minutes) {
  EXPECT_EQ(Fires("*/15 * * * *", "2026-05-31T23:07:00Z", 4),
            (Strings{"2026-05-31T23:15:00Z", "2026-05-31T23:30:00Z", "2026-05-31T23:45:00Z",
                     "2026-06-01T00:00:00Z"}));
}

TEST(CronTest, StepForms) {
  EXPECT_EQ(Fires("10-50/20 * * * *", "2026-01-01T10:31:00Z", 3),
            (Strings{"2026-01-01T10:50:00Z", "2026-01-01T11:10:00Z", "2026-01-01T11:30:00Z"}));
  // "5/10" runs from 5 to the end of the range.
  EXPECT_EQ(Fires("5/10 * * * *", "2026-01-01T10:50:00Z", 3),
            (Strings{"2026-01-01T10:55:00Z", "2026-01-01T11:05:00Z", "2026-01-01T11:15:00Z"}));
  EXPECT_EQ(Fires("0 */6 * * *", "2026-01-01T13:00:00Z", 3),
            (Strings{"2026-01-01T18:00:00Z", "2026-01-02T00:00:00Z", "2026-01-02T06:00:00Z"}));
}

TEST(CronTest, Lists) {
  EXPECT_EQ(Fires("1,2,5-7 * * * *", "2026-01-01T00:00:00Z", 6),
            (Strings{"2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z", "2026-01-01T00:05:00Z",
                     "2026-01-01T00:06:00Z", "2026-01-01T00:07:00Z", "2026-01-01T01:01:00Z"}));
  EXPECT_EQ(Fires("0 0 1,15 * *", "2026-01-15T00:00:00Z", 2),
            (Strings{"2026-02-01T00:00:00Z", "2026-02-15T00:00:00Z"}));
}

TEST(CronTest, WeekdaysNineToFive) {
  // 2026-01-02 is a Friday.
  EXPECT_EQ(Fires("0 9-17 * * 1-5", "2026-01-02T16:30:00Z", 3),
            (Strings{"2026-01-02T17:00:00Z", "2026-01-05T09:00:00Z", "2026-01-05T10:00:00Z"}));
  EXPECT_EQ(NextUtc("0 9-17 * * MON-FRI", "2026-01-02T17:00:00Z"), "2026-01-05T09:00:00Z");
}

TEST(CronTest, NamesAreCaseInsensitive) {
  EXPECT_EQ(Fires("0 12 1 jan,Jul *", "2026-02-01T00:00:00Z", 2),
            (Strings{"2026-07-01T12:00:00Z", "2027-01-01T12:00:00Z"}));
  EXPECT_EQ(Fires("30 6 1 JAN-MAR/2 *", "2026-01-01T07:00:00Z", 2),
            (Strings{"2026-03-01T06:30:00Z", "2027-01-01T06:30:00Z"}));
  // Sunday is SUN, 0 and 7; 2026-01-04 is a Sunday.
  for (const char* expr : {"0 0 * * sun", "0 0 * * 0", "0 0 * * 7", "0 0 * * Sun"}) {
    EXPECT_EQ(Fires(expr, "2026-01-01T00:00:00Z", 2),
              (Strings{"2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"}))
        << expr;
  }
  EXPECT_EQ(Fires("0 0 * * fri-sat", "2026-01-01T00:00:00Z", 3),
            (Strings{"2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z", "2026-01-09T00:00:00Z"}));
  EXPECT_EQ(Fires("0 0 * * 5-7", "2026-01-01T00:00:00Z", 4),
            (Strings{"2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z",
                     "2026-01-09T00:00:00Z"}));
}

TEST(CronTest, MonthEndsAndYearEnd) {
  EXPECT_EQ(Fires("0 0 31 * *", "2026-01-31T00:00:00Z", 3),
            (Strings{"2026-03-31T00:00:00Z", "2026-05-31T00:00:00Z", "2026-07-31T00:00:00Z"}));
  EXPECT_EQ(NextUtc("0 0 1 * *", "2026-12-15T00:00:00Z"), "2027-01-01T00:00:00Z");
  EXPECT_EQ(Fires("59 23 31 12 *", "2026-12-31T23:58:00Z", 2),
            (Strings{"2026-12-31T23:59:00Z", "2027-12-31T23:59:00Z"}));
  EXPECT_EQ(NextUtc("0 0 * * *", "2026-12-31T23:59:59Z"), "2027-01-01T00:00:00Z");
}

TEST(CronTest, LeapDays) {
  EXPECT_EQ(Fires("0 0 29 2 *", "2025-01-01T00:00:00Z", 2),
            (Strings{"2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"}));
  // 2100 is not a leap year.
  EXPECT_EQ(NextUtc("0 0 29 2 *", "2096-03-01T00:00:00Z"), "2104-02-29T00:00:00Z");
  EXPECT_EQ(NextUtc("0 0 29 2 *", "2399-01-01T00:00:00Z"), "2400-02-29T00:00:00Z");
}

TEST(CronTest, Macros) {
  const std::string from = "2026-05-13T10:20:00Z";  // a Wednesday
  EXPECT_EQ(NextUtc("@yearly", from), "2027-01-01T00:00:00Z");
  EXPECT_EQ(NextUtc("@annually", from), "2027-01-01T00:00:00Z");
  EXPECT_EQ(NextUtc("@monthly", from), "2026-06-01T00:00:00Z");
  EXPECT_EQ(NextUtc("@weekly", from), "2026-05-17T00:00:00Z");
  EXPECT_EQ(NextUtc("@daily", from), "2026-05-14T00:00:00Z");
  EXPECT_EQ(NextUtc("@midnight", from), "2026-05-14T00:00:00Z");
  EXPECT_EQ(NextUtc("@hourly", from), "2026-05-13T11:00:00Z");
  EXPECT_EQ(NextUtc("  @DAILY\t", from), "2026-05-14T00:00:00Z");
  EXPECT_EQ(MustParse("  @DAILY\t").expression(), "@DAILY");
}

TEST(CronTest, DayOfMonthOrDayOfWeekWhenBothRestricted) {
  // The 13th (a Tuesday in Jan 2026) OR any Friday.
  EXPECT_EQ(Fires("0 0 13 * FRI", "2026-01-01T00:00:00Z", 4),
            (Strings{"2026-01-02T00:00:00Z", "2026-01-09T00:00:00Z", "2026-01-13T00:00:00Z",
                     "2026-01-16T00:00:00Z"}));
  // Day of week unrestricted: only the 13th.
  EXPECT_EQ(Fires("0 0 13 * *", "2026-01-01T00:00:00Z", 2),
            (Strings{"2026-01-13T00:00:00Z", "2026-02-13T00:00:00Z"}));
  // Vixie: a field starting with '*' is unrestricted, so this is odd days AND Mondays.
  EXPECT_EQ(Fires("0 0 */2 * MON", "2026-01-01T00:00:00Z", 3),
            (Strings{"2026-01-05T00:00:00Z", "2026-01-19T00:00:00Z", "2026-02-09T00:00:00Z"}));
  // Only the field's first character counts, as in cronie: "1,*/5" is restricted (OR), so
  // Mondays and the days 1, 6, 11, ... fire; "*/5,1" is not (AND).
  EXPECT_EQ(Fires("0 0 1,*/5 * MON", "2027-01-01T00:00:00Z", 4),
            (Strings{"2027-01-04T00:00:00Z", "2027-01-06T00:00:00Z", "2027-01-11T00:00:00Z",
                     "2027-01-16T00:00:00Z"}));
  EXPECT_EQ(NextUtc("0 0 */5,1 * MON", "2027-01-01T00:00:00Z"), "2027-01-11T00:00:00Z");
  // Both restricted makes an impossible day-of-month harmless.
  EXPECT_EQ(NextUtc("0 0 31 2 MON", "2026-01-01T00:00:00Z"), "2026-02-02T00:00:00Z");
}

TEST(CronTest, NeverFiringSchedulesAreRejected) {
  EXPECT_EQ(ParseError("0 0 30 2 *"),
            "invalid cron expression \"0 0 30 2 *\": the day-of-month, month and day-of-week "
            "fields never match the same day, so the schedule would never fire");
  EXPECT_NE(ParseError("0 0 31 4,6,9,11 *"), "parsed OK");
  EXPECT_NE(ParseError("0 0 30,31 FEB *"), "parsed OK");
  EXPECT_EQ(ParseError("0 0 31 1-12/3 *"), "parsed OK");  // January, October
  // Feb 1 or 29 that is also a Monday (AND, since day-of-month starts with '*').
  EXPECT_EQ(ParseError("0 0 */28 2 MON"), "parsed OK");
  EXPECT_EQ(NextUtc("0 0 */28 2 MON", "2026-01-01T00:00:00Z"), "2027-02-01T00:00:00Z");
}

TEST(CronTest, ErrorsNameFieldAndValue) {
  EXPECT_EQ(ParseError("61 * * * *"),
            "invalid cron expression \"61 * * * *\": minute field value 61 is out of range 0-59");
  const auto expect_error = [](std::string_view expr, std::string_view part) {
    const std::string msg = ParseError(expr);
    EXPECT_NE(msg.find(part), std::string::npos) << expr << " -> " << msg;
    EXPECT_NE(msg.find(fmt::format("\"{}\"", expr)), std::string::npos) << msg;
  };
  expect_error("* 24 * * *", "hour field value 24 is out of range 0-23");
  expect_error("* * 0 * *", "day-of-month field value 0 is out of range 1-31");
  expect_error("* * 32 * *", "day-of-month field value 32 is out of range 1-31");
  expect_error("* * * 13 *", "month field value 13 is out of range 1-12");
  expect_error("* * * * 8", "day-of-week field value 8 is out of range 0-7");
  expect_error("99999999999999999999 * * * *",
               "minute field value 99999999999999999999 is out of range 0-59");
  expect_error("*/0 * * * *", "minute field step 0 in \"*/0\" is out of range 1-59");
  expect_error("* */99 * * *", "hour field step 99 in \"*/99\" is out of range 1-23");
  expect_error("* * * * */x", "day-of-week field step \"x\" in \"*/x\" is not a number");
  expect_error("5-1 * * * *", "minute field range 5-1 is reversed");
  expect_error("* * * * FRI-MON", "day-of-week field range FRI-MON is reversed");
  expect_error("* * * FOO *", "month field value \"FOO\" is not a number or month name (JAN-DEC)");
  expect_error("* * * * FUNDAY", "day-of-week field value \"FUNDAY\" is not a number or day name");
  expect_error("* MON * * *", "hour field value \"MON\" is not a number");
  expect_error("1,,2 * * * *", "minute field \"1,,2\" has an empty list item");
  expect_error("-5 * * * *", "minute field item \"-5\" is not a value, range or step");
  expect_error("5- * * * *", "minute field item \"5-\" is not a value, range or step");
  expect_error("", "expected 5 fields (minute hour day-of-month month day-of-week)");
  expect_error("   ", "got 0");
  expect_error("* * * *", "got 4");
  expect_error("* * * * * *", "got 6");
  expect_error("@bogus", "unknown macro \"@bogus\"");
  expect_error("@daily 5", "got 2");
  expect_error("@reboot", "unknown macro \"@reboot\"");
  expect_error("? * * * *", "minute field value \"?\" is not a number");
}

TEST(CronTest, TimeZoneErrorsNameTheZone) {
  for (const char* zone : {"Mars/Olympus_Mons", "America", "../../etc/passwd", "/etc/localtime",
                           "Europe//Kyiv", "Europe/Kyiv ", "a\nb", "localtime", "posixrules"}) {
    const std::string msg = ParseError("* * * * *", zone);
    EXPECT_NE(msg.find(fmt::format("\"{}\"", zone)), std::string::npos) << msg;
    EXPECT_NE(msg.find("time zone"), std::string::npos) << msg;
  }
  EXPECT_EQ(MustParse("* * * * *").time_zone(), "UTC");
  EXPECT_EQ(MustParse("* * * * *", "Europe/Kyiv").time_zone(), "Europe/Kyiv");
}

TEST(CronTest, NewYorkSpringForward) {
  // 2026-03-08 02:00 EST jumps to 03:00 EDT (07:00Z).
  // A daily job in the gap runs at the end of the gap that day.
  EXPECT_EQ(Fires("30 2 * * *", "2026-03-07T00:00:00Z", 3, "America/New_York"),
            (Strings{"2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"}));
  // Two skipped times fire once.
  EXPECT_EQ(Fires("0,30 2 * * *", "2026-03-08T00:00:00Z", 2, "America/New_York"),
            (Strings{"2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z"}));
  // A job that runs every hour simply skips the missing hour.
  EXPECT_EQ(Fires("*/30 * * * *", "2026-03-08T06:00:00Z", 3, "America/New_York"),
            (Strings{"2026-03-08T06:30:00Z", "2026-03-08T07:00:00Z", "2026-03-08T07:30:00Z"}));
  EXPECT_EQ(Fires("15 * * * *", "2026-03-08T06:00:00Z", 3, "America/New_York"),
            (Strings{"2026-03-08T06:15:00Z", "2026-03-08T07:15:00Z", "2026-03-08T08:15:00Z"}));
  EXPECT_EQ(Fires("0 0 * * *", "2026-03-07T00:00:00Z", 3, "America/New_York"),
            (Strings{"2026-03-07T05:00:00Z", "2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z"}));
}

TEST(CronTest, NewYorkFallBack) {
  // 2026-11-01 02:00 EDT (06:00Z) falls back to 01:00 EST: 01:xx happens twice, fires once.
  EXPECT_EQ(Fires("30 1 * * *", "2026-10-31T12:00:00Z", 3, "America/New_York"),
            (Strings{"2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z", "2026-11-03T06:30:00Z"}));
  // A schedule matching every hour runs through the repeated hour, as cron does.
  EXPECT_EQ(Fires("0 * * * *", "2026-11-01T03:30:00Z", 5, "America/New_York"),
            (Strings{"2026-11-01T04:00:00Z", "2026-11-01T05:00:00Z", "2026-11-01T06:00:00Z",
                     "2026-11-01T07:00:00Z", "2026-11-01T08:00:00Z"}));
  EXPECT_EQ(Fires("*/20 * * * *", "2026-11-01T05:30:00Z", 6, "America/New_York"),
            (Strings{"2026-11-01T05:40:00Z", "2026-11-01T06:00:00Z", "2026-11-01T06:20:00Z",
                     "2026-11-01T06:40:00Z", "2026-11-01T07:00:00Z", "2026-11-01T07:20:00Z"}));
  EXPECT_EQ(NextUtc("*/15 * * * *", "2026-11-01T06:10:00Z", "America/New_York"),
            "2026-11-01T06:15:00Z");
  // ... but a time of day in the repeated hour runs once.
  EXPECT_EQ(Fires("*/30 1 * * *", "2026-11-01T04:00:00Z", 3, "America/New_York"),
            (Strings{"2026-11-01T05:00:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:00:00Z"}));
  // Asked from inside the second 01:xx, it does not go back to the first.
  EXPECT_EQ(NextUtc("45 1 * * *", "2026-11-01T06:10:00Z", "America/New_York"),
            "2026-11-02T06:45:00Z");
  EXPECT_EQ(NextUtc("0 2 * * *", "2026-11-01T05:00:00Z", "America/New_York"),
            "2026-11-01T07:00:00Z");
}

// A schedule that matches every hour fires at every instant whose wall-clock time matches: the
// C library's localtime_r is the oracle, minute by minute across a year's DST changes.
TEST(CronTest, EveryHourSchedulesFollowTheClockThroughDst) {
  const char* old = std::getenv("TZ");
  const std::string old_value = old != nullptr ? old : "";
  struct Case {
    const char* zone;
    const char* from;
  };
  // Lord Howe moves its clocks by half an hour.
  for (const Case& c : {Case{"America/New_York", "2026-03-07T12:00:00Z"},
                        Case{"America/New_York", "2026-10-31T12:00:00Z"},
                        Case{"Europe/Kyiv", "2026-10-24T12:00:00Z"},
                        Case{"Australia/Lord_Howe", "2026-04-04T00:00:00Z"},
                        Case{"Australia/Lord_Howe", "2026-10-03T00:00:00Z"}}) {
    ASSERT_EQ(setenv("TZ", c.zone, 1), 0);
    tzset();
    for (const char* expr : {"*/15 * * * *", "0 * * * *", "10,40 * * * *", "* * * * *"}) {
      const CronSchedule s = MustParse(expr, c.zone);
      const CronSchedule utc = MustParse(expr);
      TimePoint next = At(c.from);
      const auto from_s =
          std::chrono::duration_cast<std::chrono::seconds>(next.time_since_epoch()).count();
      for (int64_t t = from_s + 60; t < from_s + 2 * 86400; t += 60) {
        const time_t tt = static_cast<time_t>(t);
        std::tm wall{};
        ASSERT_NE(localtime_r(&tt, &wall), nullptr);
        // The wall-clock minute matches when the UTC schedule matches it read as UTC.
        const int64_t local_minute = (t + wall.tm_gmtoff) / 60 * 60;
        const TimePoint as_utc = TimePoint(std::chrono::seconds(local_minute));
        if (utc.Next(as_utc - std::chrono::seconds(1)) != as_utc) continue;
        next = s.Next(next);
        ASSERT_EQ(Utc(next), Utc(TimePoint(std::chrono::seconds(t)))) << expr << " in " << c.zone;
      }
    }
  }
  if (old != nullptr) {
    setenv("TZ", old_value.c_str(), 1);
  } else {
    unsetenv("TZ");
  }
  tzset();
}

TEST(CronTest, KyivDaylightSaving) {
  EXPECT_EQ(NextUtc("0 9 * * *", "2026-01-15T00:00:00Z", "Europe/Kyiv"), "2026-01-15T07:00:00Z");
  EXPECT_EQ(NextUtc("0 9 * * *", "2026-07-15T00:00:00Z", "Europe/Kyiv"), "2026-07-15T06:00:00Z");
  // 2026-03-29 03:00 EET jumps to 04:00 EEST (01:00Z).
  EXPECT_EQ(Fires("30 3 * * *", "2026-03-28T00:00:00Z", 3, "Europe/Kyiv"),
            (Strings{"2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"}));
  // 2026-10-25 04:00 EEST falls back to 03:00 EET (01:00Z).
  EXPECT_EQ(Fires("30 3 * * *", "2026-10-24T12:00:00Z", 2, "Europe/Kyiv"),
            (Strings{"2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"}));
}

TEST(CronTest, FarFutureUsesTheZoneRule) {
  // Past the last transition listed in the file, the POSIX footer rule applies.
  EXPECT_EQ(NextUtc("0 12 1 7 *", "2090-01-01T00:00:00Z", "America/New_York"),
            "2090-07-01T16:00:00Z");
  EXPECT_EQ(NextUtc("0 12 1 1 *", "2090-01-01T00:00:00Z", "America/New_York"),
            "2090-01-01T17:00:00Z");
  EXPECT_EQ(NextUtc("30 2 * * *", "2100-03-13T12:00:00Z", "America/New_York"),
            "2100-03-14T07:00:00Z");
  // Southern hemisphere: Sydney's DST spans the new year; 2045-10-01 02:00 jumps to 03:00.
  EXPECT_EQ(NextUtc("30 2 * * *", "2045-09-30T12:00:00Z", "Australia/Sydney"),
            "2045-09-30T16:00:00Z");
  EXPECT_EQ(NextUtc("0 12 1 1 *", "2045-06-01T00:00:00Z", "Australia/Sydney"),
            "2046-01-01T01:00:00Z");
  EXPECT_EQ(NextUtc("0 12 * * *", "2030-01-01T00:00:00Z", "Asia/Kolkata"), "2030-01-01T06:30:00Z");
}

TEST(CronTest, ExtremeTimesDoNotOverflow) {
  const CronSchedule s = MustParse("0 0 29 2 *", "America/New_York");
  EXPECT_EQ(s.Next(TimePoint::max()), kCronNever);
  EXPECT_EQ(s.Next(At("9999-12-31T00:00:00Z")), kCronNever);
  EXPECT_EQ(Utc(MustParse("0 0 1 1 *").Next(TimePoint::min())), "0001-01-01T00:00:00Z");
  EXPECT_GT(s.Next(TimePoint::min()), TimePoint::min());
  EXPECT_EQ(Utc(MustParse("* * * * *").Next(At("1969-12-31T23:59:30Z"))), "1970-01-01T00:00:00Z");
}

// Renders `mask` (bits lo..hi) as a cron field, mixing single values and ranges.
std::string RenderField(uint64_t mask, unsigned lo, unsigned hi, std::mt19937& rng) {
  std::string out;
  for (unsigned v = lo; v <= hi; ++v) {
    if (((mask >> v) & 1U) == 0) continue;
    unsigned end = v;
    while (end + 1 <= hi && ((mask >> (end + 1)) & 1U) != 0) ++end;
    if (end > v && rng() % 2 == 0) {
      out += fmt::format("{}{}-{}", out.empty() ? "" : ",", v, end);
      v = end;
    } else {
      out += fmt::format("{}{}", out.empty() ? "" : ",", v);
    }
  }
  return out;
}

uint64_t RandomMask(unsigned lo, unsigned hi, std::mt19937& rng) {
  uint64_t mask = 0;
  const unsigned density = rng() % 4;  // 0: one value, 1: sparse, 2: dense, 3: all
  if (density == 0) return uint64_t{1} << (lo + rng() % (hi - lo + 1));
  for (unsigned v = lo; v <= hi; ++v) {
    if (density == 3 || rng() % (density == 1 ? 8 : 2) == 0) mask |= uint64_t{1} << v;
  }
  return mask != 0 ? mask : uint64_t{1} << lo;
}

// Random schedules in UTC against a brute-force minute scan built on gmtime_r.
TEST(CronTest, MatchesBruteForce) {
  std::mt19937 rng(20260308);
  int checked = 0;
  for (int i = 0; i < 300; ++i) {
    const uint64_t minutes = RandomMask(0, 59, rng);
    const uint64_t hours = RandomMask(0, 23, rng);
    const bool dom_star = rng() % 2 == 0;
    const bool dow_star = rng() % 2 == 0;
    const uint64_t days = dom_star ? ((uint64_t{1} << 32) - 2) : RandomMask(1, 31, rng);
    const uint64_t months = RandomMask(1, 12, rng);
    const uint64_t weekdays = dow_star ? 0x7F : RandomMask(0, 6, rng);
    const std::string expr = fmt::format(
        "{} {} {} {} {}", RenderField(minutes, 0, 59, rng), RenderField(hours, 0, 23, rng),
        dom_star ? "*" : RenderField(days, 1, 31, rng), RenderField(months, 1, 12, rng),
        dow_star ? "*" : RenderField(weekdays, 0, 6, rng));
    Result<CronSchedule> s = CronSchedule::Parse(expr);
    if (!s) continue;  // e.g. day 31 in months that lack it
    const auto matches = [&](std::time_t t) {
      std::tm tm = {};
      gmtime_r(&t, &tm);
      const bool dom = ((days >> tm.tm_mday) & 1U) != 0;
      const bool dow = ((weekdays >> tm.tm_wday) & 1U) != 0;
      const bool day = !dom_star && !dow_star ? dom || dow : dom && dow;
      return ((minutes >> tm.tm_min) & 1U) != 0 && ((hours >> tm.tm_hour) & 1U) != 0 &&
             ((months >> (tm.tm_mon + 1)) & 1U) != 0 && day;
    };
    const std::time_t from = 1'700'000'000 + static_cast<std::time_t>(rng() % 400'000'000);
    // Scan at most ~2 years of minutes; skip whole days that cannot match to keep it fast.
    std::time_t expected = 0;
    for (std::time_t t = (from / 60 + 1) * 60; t < from + 2 * 366 * 86400;) {
      std::tm tm = {};
      gmtime_r(&t, &tm);
      const bool dom = ((days >> tm.tm_mday) & 1U) != 0;
      const bool dow = ((weekdays >> tm.tm_wday) & 1U) != 0;
      const bool day = !dom_star && !dow_star ? dom || dow : dom && dow;
      if (((months >> (tm.tm_mon + 1)) & 1U) == 0 || !day) {
        t = (t / 86400 + 1) * 86400;
        continue;
      }
      if (matches(t)) {
        expected = t;
        break;
      }
      t += 60;
    }
    if (expected == 0) continue;
    ++checked;
    EXPECT_EQ(Utc(s->Next(TimePoint(std::chrono::seconds(from)))),
              Utc(TimePoint(std::chrono::seconds(expected))))
        << expr << " after " << Utc(TimePoint(std::chrono::seconds(from)));
  }
  EXPECT_GT(checked, 200);
}

// Random cron-ish strings must parse or fail cleanly; parsed ones must move forward.
TEST(CronTest, FuzzNeverCrashesOrHangs) {
  std::mt19937 rng(12345);
  const std::vector<std::string> tokens = {"*",
                                           "*/",
                                           "/",
                                           "-",
                                           ",",
                                           " ",
                                           "\t",
                                           "0",
                                           "1",
                                           "5",
                                           "7",
                                           "12",
                                           "15",
                                           "23",
                                           "29",
                                           "30",
                                           "31",
                                           "59",
                                           "60",
                                           "99",
                                           "-1",
                                           "JAN",
                                           "feb",
                                           "Dec",
                                           "SUN",
                                           "mon",
                                           "SAT",
                                           "L",
                                           "W",
                                           "#",
                                           "?",
                                           "@daily",
                                           "@",
                                           "@yearly",
                                           "@hourly",
                                           "@weekly",
                                           "x",
                                           std::string(1, '\0'),
                                           "\xff",
                                           "4294967296",
                                           "18446744073709551616",
                                           "1-5",
                                           "*/15",
                                           "5-1",
                                           "*/0",
                                           "0 0 29 2 *",
                                           "* * * * *",
                                           "MON-FRI"};
  const std::vector<std::string> zones = {"", "UTC", "America/New_York", "Europe/Kyiv",
                                          "Australia/Lord_Howe"};
  const std::string chars = "0123456789*/-, ,@abcJANMONxyz\t?";
  int parsed = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string expr;
    const int len = static_cast<int>(rng() % 12);
    for (int j = 0; j < len; ++j) {
      if (rng() % 3 == 0) {
        expr += chars[rng() % chars.size()];
      } else {
        expr += tokens[rng() % tokens.size()];
        if (rng() % 2 == 0) expr += ' ';
      }
    }
    const std::string& zone = zones[rng() % zones.size()];
    Result<CronSchedule> s = CronSchedule::Parse(expr, zone);
    if (!s) {
      EXPECT_FALSE(s.error().message().empty());
      continue;
    }
    ++parsed;
    const TimePoint from =
        TimePoint(std::chrono::seconds(static_cast<int64_t>(rng() % 4'000'000'000U) - 500'000'000));
    const TimePoint next = s->Next(from);
    ASSERT_GT(next, from) << expr << " in " << zone;
    ASSERT_NE(next, kCronNever) << expr << " in " << zone;
    EXPECT_GT(s->Next(next), next) << expr;
  }
  EXPECT_GT(parsed, 100);
}

// Broken or truncated zone files must be refused or handled, never read out of bounds.
TEST(CronTest, CorruptZoneFilesAreSafe) {
  std::ifstream in("/usr/share/zoneinfo/America/New_York", std::ios::binary);
  if (!in) GTEST_SKIP() << "no system zoneinfo";
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  char dir_template[] = "/tmp/spool_cron_tzXXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  const char* old = std::getenv("TZDIR");
  const std::string old_value = old != nullptr ? old : "";
  ASSERT_EQ(setenv("TZDIR", dir.c_str(), 1), 0);
  const auto write = [&](const std::string& bytes) {
    std::ofstream out(dir + "/Test_Zone", std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  };
  write(good);
  EXPECT_EQ(NextUtc("30 2 * * *", "2026-03-07T12:00:00Z", "Test_Zone"), "2026-03-08T07:00:00Z");

  std::mt19937 rng(7);
  int accepted = 0;
  for (int i = 0; i < 600; ++i) {
    std::string bytes = good;
    if (i < 200) {
      bytes.resize(rng() % good.size());  // truncated
    } else {
      for (int flips = 0; flips < 1 + static_cast<int>(rng() % 8); ++flips) {
        bytes[rng() % bytes.size()] = static_cast<char>(rng());
      }
    }
    write(bytes);
    Result<CronSchedule> s = CronSchedule::Parse("*/20 1-3 * * *", "Test_Zone");
    if (!s) {
      EXPECT_NE(s.error().message().find("\"Test_Zone\""), std::string::npos);
      continue;
    }
    ++accepted;
    const TimePoint from = At("2026-03-07T00:00:00Z");
    EXPECT_GT(s->Next(from), from);
  }
  EXPECT_GT(accepted, 0);
  write("");
  EXPECT_NE(ParseError("* * * * *", "Test_Zone"), "parsed OK");

  if (old != nullptr) {
    setenv("TZDIR", old_value.c_str(), 1);
  } else {
    unsetenv("TZDIR");
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace spool
