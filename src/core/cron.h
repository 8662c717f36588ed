#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "spool/job.h"
#include "spool/result.h"

namespace spool {

namespace internal {
class TimeZoneRules;  // compiled form of a TZif file, defined in cron.cc
}  // namespace internal

// What CronSchedule::Next() returns when there is no fire time before the year 10000. Parse
// rejects expressions that can never fire ("0 0 30 2 *"), so this only happens for times near the
// end of year 9999.
inline constexpr TimePoint kCronNever = TimePoint::max();

// A parsed cron expression, evaluated in UTC or in an IANA time zone.
//
// Syntax: five fields "minute hour day-of-month month day-of-week" separated by blanks. Each field
// is `*` or a comma list of items: `N`, `A-B`, `*/S`, `A-B/S` and `A/S` (A to the field's maximum
// in steps of S). Months take JAN-DEC and days of the week SUN-SAT (case-insensitive); day of week
// 7 is Sunday, like 0. Ranges must not be reversed ("5-1" and "FRI-MON" are refused). Macros:
// @yearly = @annually = "0 0 1 1 *", @monthly = "0 0 1 * *", @weekly = "0 0 * * 0",
// @daily = @midnight = "0 0 * * *", @hourly = "0 * * * *".
//
// Day matching (Vixie cron): when both day-of-month and day-of-week are restricted, a day matches
// if EITHER matches ("0 0 1 * MON" = the 1st and every Monday). A field counts as unrestricted when
// one of its items starts with `*`, so "*/2" in day-of-month is unrestricted and
// "0 0 */2 * MON" means odd days that are Mondays, exactly as in Vixie cron and cronie (only a
// field's first character counts: "1,*/5" is restricted).
//
// Time zones: the expression is matched against wall-clock time in the zone, read from the system
// zoneinfo (TZif files under $TZDIR or /usr/share/zoneinfo, POSIX rule footer for times past the
// last listed transition). Daylight saving time:
//   - a wall-clock time that occurs twice (fall back) fires once, at its first occurrence, but
//     when the hour field matches every hour ("*/15 * * * *", "0 * * * *") it fires at both, as
//     cron runs such schedules through the repeated hour;
//   - a wall-clock time skipped by a spring-forward gap fires once at the first instant after the
//     gap (e.g. "30 2 * * *" in America/New_York fires at 03:00 EDT on 2026-03-08), because a
//     daily or weekly job should still run that day; but when the hour field matches every hour
//     ("*/15 * * * *", "0 * * * *") skipped times are dropped, since the job runs again right
//     after the gap anyway.
//
// A CronSchedule is an immutable value: copies are cheap and const methods may be called from any
// number of threads at once.
class CronSchedule {
 public:
  // Parses `expr`; an empty `time_zone` means UTC. Returns InvalidArgument naming the field and the
  // value, e.g. `invalid cron expression "61 * * * *": minute field value 61 is out of range 0-59`,
  // for expressions that can never fire ("0 0 30 2 *"), and for an unknown time zone (naming it).
  static Result<CronSchedule> Parse(std::string_view expr, std::string_view time_zone = {});

  // The first fire time strictly after `after`, on a whole minute of wall-clock time; kCronNever
  // if there is none before the year 10000. Times before the year 1 count as the start of year 1.
  // Does no I/O: Parse reads the zone file once.
  TimePoint Next(TimePoint after) const;

  // The expression as given to Parse (trimmed of surrounding blanks).
  const std::string& expression() const { return expression_; }
  // The time zone as given to Parse, or "UTC" when none was given.
  const std::string& time_zone() const { return time_zone_; }

 private:
  CronSchedule() = default;

  bool DayMatches(int64_t year, unsigned month, unsigned day) const;
  // Smallest wall-clock minute >= `local` (seconds, on a minute) that matches the fields, or
  // false when there is none before the year 10000.
  bool NextLocalMatch(int64_t local, int64_t* match) const;
  // UTC seconds of the first instant after `after_s` whose wall-clock time matches, counting a
  // time repeated by a fall-back at its first occurrence only; a time skipped by a gap fires at
  // the gap's end unless `skip_gaps`. The end of year 9999 when there is none.
  int64_t FirstOccurrenceAfter(int64_t after_s, bool skip_gaps) const;
  // The first instant after `after_s` in the second pass of an hour repeated by a fall-back near
  // it whose wall-clock time matches, or the end of year 9999.
  int64_t RepeatedOccurrenceAfter(int64_t after_s) const;

  std::string expression_;
  std::string time_zone_;
  uint64_t minutes_ = 0;   // bit i = minute i
  uint64_t hours_ = 0;     // bit i = hour i
  uint64_t days_ = 0;      // bit i = day of month i (1-31)
  uint64_t months_ = 0;    // bit i = month i (1-12)
  uint64_t weekdays_ = 0;  // bit i = day of week i (0 = Sunday)
  bool days_restricted_ = false;
  bool weekdays_restricted_ = false;
  std::shared_ptr<const internal::TimeZoneRules> zone_;  // null = UTC
};

}  // namespace spool
