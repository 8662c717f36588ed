// `spool jobs ...` and `spool queues ...`: inspect and operate on a live job table.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "commands/commands.h"
#include "common/config.h"
#include "generator/generator.h"
#include "spool/client.h"

namespace spool::cli {
namespace {

// Keys in the order written, so `--json` output reads id, kind, queue, state, ... first.
using Json = nlohmann::ordered_json;

constexpr const char* kUrlHelp =
    "Database URL (sqlite://app.db, postgres://...); default $SPOOL_DATABASE_URL, then "
    "database_url in the .spoolrc of this folder or the nearest parent folder with one";

// Opens an insert-only client (no queues: nothing is fetched or worked by this process).
std::unique_ptr<Client> OpenClient(const std::string& flag_url) {
  const std::string url = ResolveDatabaseUrl(flag_url);
  RequireDatabaseFile(url);
  auto client = Client::Open(url, ClientOptions{});
  if (!client) {
    // The library's advice to programs; a command's user runs the command it names instead.
    std::string message = client.error().message();
    constexpr std::string_view kLibraryHint = " (or set ClientOptions.auto_migrate)";
    if (const size_t at = message.find(kLibraryHint); at != std::string::npos) {
      message.erase(at, kLibraryHint.size());
    }
    if (client.error().IsFailedPrecondition() && AppWithoutQueueHere()) {
      throw CommandError(fmt::format(
          "{}\nthis app has no job queue yet: run spool gen queue, then spool migration up",
          message));
    }
    throw CommandError(Status(client.error().code(), std::move(message)));
  }
  return std::move(*client);
}

// JSON for people and scripts. A row written by hand (or before kinds were checked) may hold text
// that is not UTF-8: shown with U+FFFD rather than failing the whole listing.
std::string Dump(const Json& j) { return j.dump(2, ' ', false, Json::error_handler_t::replace); }

Json OptionalTime(const std::optional<TimePoint>& t) {
  return t ? Json(FormatTime(*t)) : Json(nullptr);
}

// Stored JSON text as a JSON value, so scripts need not parse a string inside the document.
Json EmbedJson(const std::string& text) {
  // Printing a value recurses once per level: text nested past what an insert takes (edited by
  // hand, or written by another tool) is shown as the string it is.
  if (!ValidateJsonDepth(text, "stored JSON").ok()) return Json(text);
  Json v = Json::parse(text, nullptr, false);
  return v.is_discarded() ? Json(text) : v;
}

// The one JSON shape of a job, shared by list, show and add.
Json JobToJson(const JobRow& job) {
  Json errors = Json::array();
  for (const auto& e : job.errors) {
    errors.push_back(
        {{"at", FormatTime(e.at)}, {"attempt", e.attempt}, {"error", e.error}, {"trace", e.trace}});
  }
  return {
      {"id", job.id},
      {"kind", job.kind},
      {"queue", job.queue},
      {"state", std::string(JobStateName(job.state))},
      {"attempt", job.attempt},
      {"max_attempts", job.max_attempts},
      {"priority", job.priority},
      {"created_at", FormatTime(job.created_at)},
      {"scheduled_at", FormatTime(job.scheduled_at)},
      {"attempted_at", OptionalTime(job.attempted_at)},
      {"finalized_at", OptionalTime(job.finalized_at)},
      {"attempted_by", job.attempted_by},
      {"tags", job.tags},
      {"args", EmbedJson(job.args)},
      {"metadata", EmbedJson(job.metadata)},
      {"errors", std::move(errors)},
  };
}

// Rows printed with each column padded to its widest cell; the last column is not padded.
void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      if (i + 1 == row.size()) {
        line += row[i];
      } else {
        line += fmt::format("{:<{}}  ", row[i], widths[i]);
      }
    }
    line.erase(line.find_last_not_of(' ') + 1);
    fmt::print("{}\n", line);
  }
}

// Keeps one error per line in the human output.
std::string OneLine(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\n') {
      out += "\\n";
    } else if (c != '\r') {
      out += c;
    }
  }
  return out;
}

// At most `max` bytes, cut on a UTF-8 character's boundary.
std::string Shorten(std::string s, size_t max) {
  if (s.size() <= max) return s;
  size_t cut = max - 3;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return s.substr(0, cut) + "...";
}

std::string TimeOrDash(const std::optional<TimePoint>& t) { return t ? FormatTime(*t) : "-"; }

std::string Join(const std::vector<std::string>& items) {
  if (items.empty()) return "-";
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

void PrintJobDetail(const JobRow& job) {
  std::vector<std::vector<std::string>> rows = {
      {"id", std::to_string(job.id)},
      {"kind", job.kind},
      {"queue", job.queue},
      {"state", std::string(JobStateName(job.state))},
      {"attempt", fmt::format("{} of {}", job.attempt, job.max_attempts)},
      {"priority", std::to_string(job.priority)},
      {"created_at", FormatTime(job.created_at)},
      {"scheduled_at", FormatTime(job.scheduled_at)},
      {"attempted_at", TimeOrDash(job.attempted_at)},
      {"finalized_at", TimeOrDash(job.finalized_at)},
      {"attempted_by", Join(job.attempted_by)},
      {"tags", Join(job.tags)},
      {"args", job.args},
      {"metadata", job.metadata},
      {"errors", job.errors.empty() ? "none" : std::to_string(job.errors.size())},
  };
  PrintTable(rows);
  std::vector<std::vector<std::string>> errors;
  for (const auto& e : job.errors) {
    errors.push_back(
        {"", fmt::format("attempt {}", e.attempt), FormatTime(e.at), OneLine(e.error)});
  }
  PrintTable(errors);
}

// The longest --schedule-in: far beyond any sensible delay, far below TimePoint's range.
constexpr auto kMaxScheduleIn = std::chrono::days(100 * 366);

// "30s", "5m", "1h30m", "250ms": a sequence of <digits><unit>, units d, h, m, s, ms, each at most
// once and largest first ("1m1m" is more likely a slip than two minutes). A duration past
// kMaxScheduleIn (or whose digits overflow) comes back as kMaxScheduleIn + 1 day, so that
// the caller can say "too large" rather than "not a duration".
std::optional<Duration> ParseDuration(std::string_view text) {
  constexpr Duration kTooLarge = kMaxScheduleIn + std::chrono::days(1);
  if (text.empty()) return std::nullopt;
  constexpr std::string_view kUnits[] = {"d", "h", "m", "s", "ms"};
  bool too_large = false;
  Duration total{0};
  size_t i = 0;
  size_t next_unit = 0;  // units before this one in kUnits are used up
  while (i < text.size()) {
    const size_t digits_begin = i;
    int64_t n = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
      if (n > 1'000'000'000) too_large = true;  // and stop growing n
      if (!too_large) n = n * 10 + (text[i] - '0');
      ++i;
    }
    if (i == digits_begin) return std::nullopt;
    const size_t unit_begin = i;
    while (i < text.size() && (text[i] < '0' || text[i] > '9')) ++i;
    const std::string_view unit = text.substr(unit_begin, i - unit_begin);
    const auto found = std::find(std::begin(kUnits), std::end(kUnits), unit);
    const auto rank = static_cast<size_t>(found - std::begin(kUnits));
    if (found == std::end(kUnits) || rank < next_unit) return std::nullopt;
    next_unit = rank + 1;
    if (too_large) continue;  // only the units are checked from here on
    const Duration one = unit == "d"   ? Duration(std::chrono::days(1))
                         : unit == "h" ? Duration(std::chrono::hours(1))
                         : unit == "m" ? Duration(std::chrono::minutes(1))
                         : unit == "s" ? Duration(std::chrono::seconds(1))
                                       : Duration(std::chrono::milliseconds(1));
    // Compared before multiplying: n units of a day or an hour can overflow microseconds.
    if (n > kMaxScheduleIn / one) {
      too_large = true;
      continue;
    }
    total += n * one;
    if (total > kMaxScheduleIn) too_large = true;
  }
  return too_large ? kTooLarge : total;
}

// "2026-12-24T09:00:00Z", "2026-12-24T09:00:00.5+01:00" (RFC 3339; "t", "z" and a space for
// the "T" accepted). A time without its zone is refused rather than guessed: the caller's local
// time and the server's UTC differ by hours.
std::optional<TimePoint> ParseRfc3339(std::string_view text) {
  size_t i = 0;
  const auto number = [&](size_t digits, int& out) {
    if (i + digits > text.size()) return false;
    out = 0;
    for (size_t end = i + digits; i < end; ++i) {
      if (text[i] < '0' || text[i] > '9') return false;
      out = out * 10 + (text[i] - '0');
    }
    return true;
  };
  const auto expect = [&](std::string_view any_of) {
    if (i >= text.size() || any_of.find(text[i]) == std::string_view::npos) return false;
    ++i;
    return true;
  };
  std::tm tm{};
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  if (!number(4, year) || !expect("-") || !number(2, month) || !expect("-") || !number(2, day) ||
      !expect("Tt ") || !number(2, hour) || !expect(":") || !number(2, minute) || !expect(":") ||
      !number(2, second)) {
    return std::nullopt;
  }
  int64_t micros = 0;
  if (i < text.size() && text[i] == '.') {
    ++i;
    int64_t scale = 100'000;
    const size_t begin = i;
    for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
      micros += (text[i] - '0') * scale;  // digits past microseconds add 0
      scale /= 10;
    }
    if (i == begin) return std::nullopt;
  }
  int offset_minutes = 0;
  if (!expect("Zz")) {
    if (i >= text.size() || (text[i] != '+' && text[i] != '-')) return std::nullopt;
    const int sign = text[i++] == '-' ? -1 : 1;
    int oh = 0, om = 0;
    if (!number(2, oh) || !expect(":") || !number(2, om) || oh > 23 || om > 59) {
      return std::nullopt;
    }
    offset_minutes = sign * (oh * 60 + om);
  }
  if (i != text.size() || month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 ||
      second > 60) {
    return std::nullopt;
  }
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  tm.tm_sec = std::min(second, 59);  // a leap second is the second before it
  const std::tm asked = tm;
  const time_t secs = timegm(&tm);
  if (tm.tm_mday != asked.tm_mday || tm.tm_mon != asked.tm_mon) return std::nullopt;  // Feb 30
  const int64_t us =
      (static_cast<int64_t>(secs) - int64_t{offset_minutes} * 60) * 1'000'000 + micros;
  return TimePoint(Duration(us));
}

// The same words for an unknown id whichever driver answered; the job is named once, also when
// the driver's message already names it ("job 5 cannot be read: ...").
std::string ErrorText(int64_t id, const Status& st) {
  if (st.IsNotFound()) return fmt::format("job {} not found", id);
  if (st.message().starts_with(fmt::format("job {} ", id))) return st.message();
  return fmt::format("job {}: {}", id, st.message());
}

TimePoint Now() { return std::chrono::time_point_cast<Duration>(std::chrono::system_clock::now()); }

// --- jobs list ----------------------------------------------------------------------------

// The filters shared by `jobs list` and the bulk forms of retry, cancel and delete.
struct JobFilter {
  std::vector<std::string> states;
  std::optional<std::string> queue;  // given empty, refused: a script's empty variable would
  std::optional<std::string> kind;   // otherwise match (and delete) every job
};

struct ListFlags {
  std::string url;
  JobFilter filter;
  int limit = 100;
  int64_t after = 0;
  int64_t before = 0;
  bool newest_first = false;
  bool json = false;
};

// The filter checked, as list parameters (limit and cursor left to the caller).
JobListParams FilterParams(const JobFilter& f) {
  JobListParams params;
  for (std::string s : f.states) {
    // "completed, cancelled": the list's spaces are not part of the names.
    s.erase(0, s.find_first_not_of(" \t"));
    s.erase(s.find_last_not_of(" \t") + 1);
    if (s.empty()) continue;
    auto state = ParseJobState(s);
    if (!state) throw CommandError(state.error().message(), kExitUsage);
    params.states.push_back(*state);
  }
  if (!f.states.empty() && params.states.empty()) {
    // A script's empty variable would otherwise list (and feed on to delete) every job.
    throw CommandError(
        "--state: no state given (leave the flag out to list every state, or name one of "
        "available, scheduled, running, retryable, completed, cancelled, discarded, pending)",
        kExitUsage);
  }
  if (f.queue) {
    if (Status st = ValidateQueueName(*f.queue); !st.ok()) {
      throw CommandError(
          fmt::format("--queue: {} (leave the flag out to list every queue)", st.message()),
          kExitUsage);
    }
    params.queue = *f.queue;
  }
  if (f.kind) {
    if (f.kind->empty()) {
      throw CommandError("--kind is empty: leave the flag out to list every kind", kExitUsage);
    }
    params.kind = *f.kind;
  }
  return params;
}

// The job kinds of the app this command runs in, when it runs in one whose queue is set up.
std::optional<std::vector<std::string>> KindsOfAppHere() {
  const auto root = FindAppRoot();
  if (!root || AppWithoutQueueHere()) return std::nullopt;
  return AppJobKinds(*root);
}

// An app's job kinds as a message lists them.
std::string KindsList(const std::vector<std::string>& kinds) {
  return kinds.empty() ? std::string("none yet") : fmt::format("{}", fmt::join(kinds, ", "));
}

// A filter that matched nothing: when no job at all has its kind or queue, it is likely a typo
// (spool jobs add refuses one; a filter cannot tell), so say so on stderr, with the app's kinds.
void NoteEmptyFilter(Client& client, const JobListParams& params) {
  const auto none_with = [&](JobListParams only) {
    only.limit = 1;
    const auto found = client.JobList(only);
    return found && found->empty();
  };
  if (!params.kind.empty()) {
    const std::optional<std::vector<std::string>> app_kinds = KindsOfAppHere();
    // One of the app's own kinds is spelt right, whatever the table holds.
    const bool apps_own = app_kinds && std::find(app_kinds->begin(), app_kinds->end(),
                                                 params.kind) != app_kinds->end();
    if (!apps_own && none_with({.kind = params.kind})) {
      fmt::print(stderr, "note: no job of kind \"{}\" is in the database{}: check the spelling\n",
                 params.kind,
                 app_kinds ? fmt::format(" (this app's kinds: {})", KindsList(*app_kinds)) : "");
    }
  }
  if (!params.queue.empty() && none_with({.queue = params.queue})) {
    fmt::print(stderr,
               "note: no job is in queue \"{}\" (mistyped? spool queues list shows the queues "
               "that have jobs or workers)\n",
               params.queue);
  }
}

void RunList(const ListFlags& f) {
  JobListParams params = FilterParams(f.filter);
  params.limit = f.limit;
  params.after_id = f.after;
  params.before_id = f.before;
  params.newest_first = f.newest_first;

  auto client = OpenClient(f.url);
  auto jobs = client->JobList(params);
  if (!jobs) throw CommandError(jobs.error());
  // A row that cannot be read comes back with only its id (an empty kind): shown as such, so the
  // other rows still list and this one can be looked at and deleted.
  const auto unreadable = [](const JobRow& job) { return job.kind.empty(); };
  // A full page may not be all: say how to get the next (on stderr, so --json stays one array).
  const bool maybe_more = !jobs->empty() && static_cast<int>(jobs->size()) == f.limit;
  const auto note_more = [&] {
    if (maybe_more) {
      fmt::print(stderr, "(the {} {} matching jobs by id; more: --{} {}, or --limit)\n",
                 f.newest_first ? "newest" : "first", f.limit, f.newest_first ? "before" : "after",
                 jobs->back().id);
    }
  };
  if (jobs->empty()) NoteEmptyFilter(*client, params);
  if (f.json) {
    Json out = Json::array();
    for (const auto& job : *jobs) {
      out.push_back(unreadable(job) ? Json{{"id", job.id}, {"unreadable", true}} : JobToJson(job));
    }
    fmt::print("{}\n", Dump(out));
    note_more();
    return;
  }
  if (jobs->empty()) {
    fmt::print("no jobs\n");
    return;
  }
  std::vector<std::vector<std::string>> rows = {
      {"ID", "KIND", "QUEUE", "STATE", "ATTEMPT", "PRI", "SCHEDULED_AT", "LAST ERROR"}};
  for (const auto& job : *jobs) {
    if (unreadable(job)) {
      rows.push_back({std::to_string(job.id), "(row cannot be read)", "", "", "", "", "",
                      fmt::format("spool jobs show {} says why", job.id)});
      continue;
    }
    rows.push_back({std::to_string(job.id), job.kind, job.queue,
                    std::string(JobStateName(job.state)),
                    fmt::format("{}/{}", job.attempt, job.max_attempts),
                    std::to_string(job.priority), FormatTime(job.scheduled_at),
                    job.errors.empty() ? "" : Shorten(OneLine(job.errors.back().error), 60)});
  }
  PrintTable(rows);
  std::fflush(stdout);  // the note after the table, also when both go to one terminal or file
  note_more();
}

// --- jobs show ----------------------------------------------------------------------------

void RunShow(const std::string& url, int64_t id, bool json) {
  auto client = OpenClient(url);
  auto job = client->JobGet(id);
  if (!job) throw CommandError(ErrorText(id, job.error()));
  if (json) {
    fmt::print("{}\n", Dump(JobToJson(*job)));
  } else {
    PrintJobDetail(*job);
  }
}

// --- jobs add -----------------------------------------------------------------------------

struct AddFlags {
  std::string url;
  std::string kind;
  std::string args = "{}";
  std::string queue = std::string(kDefaultQueue);
  int priority = kDefaultPriority;
  int max_attempts = kDefaultMaxAttempts;
  std::optional<std::string> schedule_in;
  std::optional<std::string> schedule_at;
  std::vector<std::string> tags;
  std::optional<std::string> metadata;
  std::vector<std::string> unique_by;
  bool json = false;
  bool any_kind = false;
};

// Inside an app, a kind none of its jobs has is almost always a typo: the job would fail every
// attempt with "no worker registered" before it is discarded.
void CheckKindIsTheApps(const std::string& kind) {
  const auto kinds = KindsOfAppHere();
  if (!kinds || std::find(kinds->begin(), kinds->end(), kind) != kinds->end()) return;
  throw CommandError(
      fmt::format("this app has no job of kind \"{}\" (its jobs: {}): check the spelling, or pass "
                  "--any-kind for a kind another program works; nothing was inserted",
                  kind, KindsList(*kinds)));
}

// A job made available in a paused queue waits, silently, until someone resumes the queue: say
// so. No note when the pause cannot be read.
void NotePausedQueues(Client& client, const std::set<std::string>& queues) {
  for (const std::string& queue : queues) {
    auto since = client.QueuePausedAt(queue);
    if (!since || !*since) continue;
    fmt::print(stderr,
               "note: queue {} is paused (since {}): its jobs wait until spool queues resume {}\n",
               queue, FormatTime(**since), queue);
  }
}

void RunAdd(const AddFlags& f) {
  if (f.kind.find_first_not_of(" \t\r\n") == std::string::npos) {
    throw CommandError(fmt::format("KIND is {}: give the job's kind, e.g. send_email",
                                   f.kind.empty() ? "empty" : "only spaces"),
                       kExitUsage);
  }
  if (Status st = ValidateKind(f.kind); !st.ok()) throw CommandError(st.message(), kExitUsage);
  if (!f.any_kind) CheckKindIsTheApps(f.kind);
  InsertParams params;
  params.kind = f.kind;
  if (Status deep = ValidateJsonDepth(f.args, "--args"); !deep.ok()) {
    throw CommandError(deep.message() + "; nothing was inserted", kExitUsage);
  }
  Json args;
  try {
    args = Json::parse(f.args);
  } catch (const Json::parse_error& e) {
    throw CommandError(fmt::format("--args is not valid JSON ({}); nothing was inserted", e.what()),
                       kExitUsage);
  }
  if (!args.is_object()) {
    throw CommandError(
        fmt::format(
            "--args must be a JSON object like '{{\"id\": 1}}', got {}; nothing was inserted",
            args.type_name()),
        kExitUsage);
  }
  params.args = args.dump();
  params.options.queue = f.queue;
  params.options.priority = f.priority;
  params.options.max_attempts = f.max_attempts;
  if (f.schedule_in) {
    const auto delay = ParseDuration(*f.schedule_in);
    if (delay && *delay > kMaxScheduleIn) {
      throw CommandError(fmt::format("--schedule-in \"{}\" is too large: at most 100 years "
                                     "(36600d); nothing was inserted",
                                     *f.schedule_in),
                         kExitUsage);
    }
    if (!delay) {
      throw CommandError(
          fmt::format("--schedule-in \"{}\" is not a duration: use e.g. 30s, 5m, 1h, "
                      "1h30m or 2d (each unit once, largest first); nothing was inserted",
                      *f.schedule_in),
          kExitUsage);
    }
    if (delay->count() > 0) params.options.scheduled_at = Now() + *delay;
  }
  if (f.schedule_at) {
    const auto at = ParseRfc3339(*f.schedule_at);
    if (!at) {
      throw CommandError(
          fmt::format("--schedule-at \"{}\" is not a time: use RFC 3339 with its zone, e.g. "
                      "2026-12-24T09:00:00Z or 2026-12-24T10:00:00+01:00; nothing was inserted",
                      *f.schedule_at),
          kExitUsage);
    }
    if (*at - Now() > kMaxScheduleIn) {
      throw CommandError(fmt::format("--schedule-at \"{}\" is more than 100 years ahead; "
                                     "nothing was inserted",
                                     *f.schedule_at),
                         kExitUsage);
    }
    if (*at > Now()) params.options.scheduled_at = *at;  // a past time: available now
  }
  for (std::string tag : f.tags) {
    tag.erase(0, tag.find_first_not_of(" \t"));
    tag.erase(tag.find_last_not_of(" \t") + 1);
    if (tag.empty() || tag.size() > kMaxTagLength) {
      throw CommandError(fmt::format("--tag \"{}\": a tag is 1-{} characters (commas separate "
                                     "tags); nothing was inserted",
                                     tag, kMaxTagLength),
                         kExitUsage);
    }
    params.options.tags.push_back(std::move(tag));
  }
  if (f.metadata) {
    if (Status deep = ValidateJsonDepth(*f.metadata, "--metadata"); !deep.ok()) {
      throw CommandError(deep.message() + "; nothing was inserted", kExitUsage);
    }
    const Json metadata = Json::parse(*f.metadata, nullptr, /*allow_exceptions=*/false);
    if (!metadata.is_object()) {
      throw CommandError(
          fmt::format("--metadata must be a JSON object like '{{\"source\": \"cli\"}}', got "
                      "{}; nothing was inserted",
                      metadata.is_discarded() ? "text that is not JSON" : metadata.type_name()),
          kExitUsage);
    }
    params.options.metadata = metadata.dump();
  }
  if (!f.unique_by.empty()) {
    UniqueOptions unique;
    for (const auto& by : f.unique_by) {
      if (by == "args") unique.by_args = true;
      if (by == "queue") unique.by_queue = true;
    }
    params.options.unique = unique;
  }
  // The flag's name, not the library field's it sets ("InsertOptions.queue").
  if (Status st = ValidateQueueName(params.options.queue); !st.ok()) {
    throw CommandError("--queue: " + st.message(), kExitUsage);
  }
  if (Status st = ValidateInsertOptions(params.options); !st.ok()) {
    throw CommandError(st.message(), kExitUsage);
  }

  auto client = OpenClient(f.url);
  // A mistyped queue would pass silently and the job wait for ever: say when no job or process
  // has used the queue before (as queues pause does). No note when that cannot be read.
  bool known_queue = params.options.queue == kDefaultQueue;  // which every app works
  if (!known_queue) {
    auto known = client->QueueKnown(params.options.queue);
    known_queue = !known || *known;
  }
  auto res = client->InsertRaw(std::move(params));
  if (!res) throw CommandError(res.error());
  if (!known_queue) {
    fmt::print(stderr,
               "note: no job or process had used queue {} before (spool queues list shows the "
               "others): the job waits until a client works that queue\n",
               res->job.queue);
  }
  if (!res->duplicate) NotePausedQueues(*client, {res->job.queue});
  if (f.json) {
    Json out = JobToJson(res->job);
    out["duplicate"] = res->duplicate;
    fmt::print("{}\n", Dump(out));
  } else if (res->duplicate) {
    fmt::print("duplicate of job {} ({}, {})\n", res->job.id, res->job.kind,
               JobStateName(res->job.state));
  } else {
    fmt::print("inserted job {} ({} in queue {}, {})\n", res->job.id, res->job.kind, res->job.queue,
               JobStateName(res->job.state));
  }
}

// --- jobs retry|cancel|delete -------------------------------------------------------------

enum class Op { kRetry, kCancel, kDelete };

// What happened to one job, for its result line. `before` is its state read just before the
// operation, when that read succeeded: it tells a change from a job that was already so.
std::string Describe(Op op, const JobRow& job, std::optional<JobState> before) {
  switch (op) {
    case Op::kRetry:
      if (before == JobState::kCompleted) {
        return fmt::format("job {}: retried, now {}; it had completed, so its work runs again",
                           job.id, JobStateName(job.state));
      }
      if (before == JobState::kAvailable) {
        return fmt::format("job {}: already available, left in its place in the queue", job.id);
      }
      return fmt::format("job {}: retried, now {}", job.id, JobStateName(job.state));
    case Op::kCancel:
      if (job.state == JobState::kRunning) {
        return fmt::format(
            "job {}: cancel requested (running; it stops when its worker notices; if its "
            "process is gone, the rescuer cancels it)",
            job.id);
      }
      if (job.state == JobState::kCancelled && before == JobState::kCancelled) {
        return fmt::format("job {}: already cancelled, left unchanged", job.id);
      }
      if (job.state == JobState::kCancelled) return fmt::format("job {}: cancelled", job.id);
      return fmt::format("job {}: already {}, left unchanged", job.id, JobStateName(job.state));
    case Op::kDelete:
      // A row that could not be read comes back with its id alone (a job always has a kind).
      if (job.kind.empty())
        return fmt::format("job {}: deleted (its row could not be read)", job.id);
      return fmt::format("job {}: deleted (was {})", job.id, JobStateName(job.state));
  }
  return {};
}

// Applies `op` to one job and prints its result line; false (and an error line) if it failed.
// The queues of the jobs it makes available are added to `made_available`.
bool ApplyOp(Client& client, Op op, int64_t id, std::set<std::string>& made_available) {
  std::optional<JobState> before;
  if (op != Op::kDelete) {
    if (auto prior = client.JobGet(id); prior) before = prior->state;
  }
  Result<JobRow> r = op == Op::kRetry    ? client.JobRetry(id)
                     : op == Op::kCancel ? client.JobCancel(id)
                                         : client.JobDelete(id);
  if (r) {
    fmt::print("{}\n", Describe(op, *r, before));
    if (op == Op::kRetry && r->state == JobState::kAvailable) made_available.insert(r->queue);
  } else {
    fmt::print(stderr, "error: {}\n", ErrorText(id, r.error()));
  }
  std::fflush(stdout);
  return r.has_value();
}

const char* OpVerb(Op op) {
  return op == Op::kRetry ? "retried" : op == Op::kCancel ? "cancelled" : "deleted";
}

struct OpFlags {
  std::string url;
  std::vector<int64_t> ids;
  JobFilter filter;
};

// Jobs named by id, or every job matching a filter (`--state`, narrowed by `--queue`/`--kind`):
// how an operator retries the jobs a fixed bug discarded, or deletes a queue's cancelled ones.
void RunOp(Op op, const OpFlags& f) {
  const bool by_filter = !f.filter.states.empty() || f.filter.queue || f.filter.kind;
  const char* name = op == Op::kRetry ? "retry" : op == Op::kCancel ? "cancel" : "delete";
  if (by_filter && !f.ids.empty()) {
    throw CommandError(fmt::format("give job ids or --state/--queue/--kind, not both (spool jobs "
                                   "{} 12 13, or spool jobs {} --state discarded --kind K)",
                                   name, name),
                       kExitUsage);
  }
  if (!by_filter && f.ids.empty()) {
    throw CommandError(
        fmt::format("which jobs? give their ids (spool jobs {} 12 13) or --state, optionally "
                    "with --queue and --kind (spool jobs {} --state discarded --kind K)",
                    name, name),
        kExitUsage);
  }
  JobListParams params;
  if (by_filter) {
    params = FilterParams(f.filter);
    // A state is what says which jobs an operator means: "every job of kind K" is rarely it.
    if (params.states.empty()) {
      throw CommandError(fmt::format("--queue and --kind narrow a --state: name the state of "
                                     "the jobs to {} (e.g. --state discarded)",
                                     name),
                         kExitUsage);
    }
    if (op != Op::kCancel && std::find(params.states.begin(), params.states.end(),
                                       JobState::kRunning) != params.states.end()) {
      throw CommandError(fmt::format("running jobs cannot be {}; cancel them first (spool jobs "
                                     "cancel --state running ...)",
                                     OpVerb(op)),
                         kExitUsage);
    }
  }
  auto client = OpenClient(f.url);
  int64_t failed = 0;
  int64_t tried = 0;
  std::set<std::string> made_available;
  if (!by_filter) {
    for (int64_t id : f.ids) {
      ++tried;
      if (!ApplyOp(*client, op, id, made_available)) ++failed;
    }
  } else {
    // Page by id, so a job the operation leaves matching (or one inserted meanwhile with a
    // higher id) is met at most once and the walk ends.
    params.limit = 1000;
    for (;;) {
      auto page = client->JobList(params);
      if (!page) throw CommandError(page.error());
      for (const JobRow& job : *page) {
        ++tried;
        if (!ApplyOp(*client, op, job.id, made_available)) ++failed;
      }
      if (static_cast<int>(page->size()) < params.limit) break;
      params.after_id = page->back().id;
    }
    if (tried == 0) {
      fmt::print("no jobs matched\n");
      NoteEmptyFilter(*client, params);
    } else {
      fmt::print("{} job(s) matched\n", tried);
    }
  }
  NotePausedQueues(*client, made_available);
  if (failed > 0) {
    throw CommandError(fmt::format("{} of {} job(s) could not be {}", failed, tried, OpVerb(op)));
  }
}

// --- queues -------------------------------------------------------------------------------

void RunQueuesList(const std::string& url, bool json) {
  auto client = OpenClient(url);
  auto queues = client->QueueList();
  if (!queues) throw CommandError(queues.error());
  auto count = [](const QueueInfo& q, JobState s) -> int64_t {
    auto it = q.counts.find(s);
    return it == q.counts.end() ? 0 : it->second;
  };
  if (json) {
    Json out = Json::array();
    for (const auto& q : *queues) {
      Json counts = Json::object();
      for (JobState s : kAllJobStates) counts[std::string(JobStateName(s))] = count(q, s);
      out.push_back({{"name", q.name},
                     {"paused", q.paused_at.has_value()},
                     {"paused_at", OptionalTime(q.paused_at)},
                     {"counts", std::move(counts)}});
    }
    fmt::print("{}\n", Dump(out));
    return;
  }
  // Which client runs maintenance and periodic jobs: an operator's first question about a
  // cluster, which only a look at spool_leader answered.
  const auto print_leader = [&] {
    auto lease = client->Leader();
    if (!lease) {
      fmt::print("leader: unknown ({})\n", lease.error().message());
    } else if (!*lease) {
      fmt::print("leader: none (no running client holds the lease)\n");
    } else {
      fmt::print("leader: {} (since {}, lease until {})\n", (*lease)->leader_id,
                 FormatTime((*lease)->elected_at), FormatTime((*lease)->expires_at));
    }
  };
  if (queues->empty()) {
    fmt::print("no queues\n");
    print_leader();
    return;
  }
  std::vector<std::vector<std::string>> rows(1);
  rows[0] = {"QUEUE", "PAUSED"};
  for (JobState s : kAllJobStates) {
    std::string name(JobStateName(s));
    std::transform(name.begin(), name.end(), name.begin(), [](char c) {
      return static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    });
    rows[0].push_back(name);
  }
  for (const auto& q : *queues) {
    std::vector<std::string> row = {q.name,
                                    q.paused_at ? "since " + FormatTime(*q.paused_at) : "no"};
    for (JobState s : kAllJobStates) row.push_back(std::to_string(count(q, s)));
    rows.push_back(std::move(row));
  }
  PrintTable(rows);
  print_leader();
}

void RunQueuePause(const std::string& url, const std::string& name, bool pause) {
  if (Status st = ValidateQueueName(name); !st.ok()) throw CommandError(st.message(), kExitUsage);
  auto client = OpenClient(url);
  // Pausing a queue before its first job is allowed (and is how a deploy holds one back), but a
  // mistyped name would pass silently: say when the queue is new.
  // Neither reads counts: pausing a queue in an incident must not wait for a scan of every job.
  bool known = true;  // when it cannot be read, no note rather than a wrong one
  bool was_paused = !pause;
  if (auto paused_at = client->QueuePausedAt(name); paused_at) {
    was_paused = paused_at->has_value();
    if (!was_paused) {  // a paused queue is known by its pause record
      if (auto k = client->QueueKnown(name); k) known = *k;
    }
  }
  if (!known && !pause) {
    fmt::print(
        "queue {} is not paused: no job or process has used it yet (spool queues list shows the "
        "others); nothing changed\n",
        name);
    return;
  }
  Status st = pause ? client->QueuePause(name) : client->QueueResume(name);
  if (!st.ok()) throw CommandError(st);
  if (known && was_paused == pause) {
    fmt::print("queue {} was already {}, left unchanged\n", name, pause ? "paused" : "running");
    return;
  }
  fmt::print("{} queue {}\n", pause ? "paused" : "resumed", name);
  if (!known) {
    fmt::print(
        "note: no job or process has used queue {} yet (spool queues list shows the "
        "others); it stays paused for when one does (spool queues resume {})\n",
        name, name);
  }
}

// --state, --queue and --kind, as list and the bulk forms of retry, cancel and delete take them.
// `jobs` begins the help of --state, `narrowed` that of --queue and --kind.
void AddFilterFlags(CLI::App& cmd, JobFilter& filter, std::string_view jobs,
                    std::string_view narrowed) {
  cmd.add_option("--state", filter.states,
                 fmt::format("{} in this state (repeat or comma-separate for several): available, "
                             "scheduled, running, retryable, completed, cancelled, discarded, "
                             "pending",
                             jobs))
      ->delimiter(',');
  cmd.add_option("--queue", filter.queue, fmt::format("{} of this queue", narrowed));
  cmd.add_option("--kind", filter.kind, fmt::format("{} of this kind", narrowed));
}

}  // namespace

void RegisterJobs(CLI::App& app) {
  auto* cmd = app.add_subcommand("jobs", "List, inspect, add, retry, cancel or delete jobs");
  cmd->require_subcommand(1);

  auto list_flags = std::make_shared<ListFlags>();
  auto* list = cmd->add_subcommand("list", "List jobs by id, optionally filtered");
  list->add_option("--database-url", list_flags->url, kUrlHelp);
  AddFilterFlags(*list, list_flags->filter, "Only jobs", "Only jobs");
  list->add_option("--limit", list_flags->limit, "At most this many jobs (1-10000)")
      ->capture_default_str()
      ->check(WholeNumberFrom(1, 10'000));
  list->add_flag("--newest-first", list_flags->newest_first,
                 "Highest ids first (the latest jobs), paged with --before");
  list->add_option("--before", list_flags->before,
                   "Only ids less than this (next page, newest first)")
      ->check(WholeNumberFrom(1));
  list->add_option("--after", list_flags->after, "Only ids greater than this (next page)")
      ->check(WholeNumberFrom(0));
  list->add_flag("--json", list_flags->json, "Print a JSON array of job objects");
  list->callback([list_flags] { RunList(*list_flags); });

  auto show_url = std::make_shared<std::string>();
  auto show_id = std::make_shared<int64_t>(0);
  auto show_json = std::make_shared<bool>(false);
  auto* show = cmd->add_subcommand("show", "Show one job with its whole error history");
  show->add_option("ID", *show_id, "Job id")->required()->check(WholeNumberFrom(1));
  show->add_option("--database-url", *show_url, kUrlHelp);
  show->add_flag("--json", *show_json, "Print the job as a JSON object");
  show->callback([show_url, show_id, show_json] { RunShow(*show_url, *show_id, *show_json); });

  auto add_flags = std::make_shared<AddFlags>();
  auto* add = cmd->add_subcommand("add", "Insert a job");
  add->add_option("KIND", add_flags->kind, "Job kind (the worker's Kind())")->required();
  add->add_option("--database-url", add_flags->url, kUrlHelp);
  add->add_option("--args", add_flags->args, "Job args: a JSON object")->capture_default_str();
  add->add_option("--queue", add_flags->queue, "Queue")->capture_default_str();
  add->add_option("--priority", add_flags->priority, "1 (highest) to 4 (lowest)")
      ->capture_default_str()
      ->check(WholeNumberFrom(kMinPriority, kMaxPriority));
  add->add_option("--max-attempts", add_flags->max_attempts, "Attempts before discarding")
      ->capture_default_str()
      ->check(WholeNumberFrom(1, kMaxMaxAttempts));
  add->add_option("--schedule-in", add_flags->schedule_in,
                  "Run no earlier than this from now: 30s, 5m, 1h, 1h30m, 2d")
      ->excludes(add->add_option("--schedule-at", add_flags->schedule_at,
                                 "Run no earlier than this time (RFC 3339 with its zone: "
                                 "2026-12-24T09:00:00Z)"));
  add->add_option("--tag", add_flags->tags, "A tag (repeat or comma-separate for several)")
      ->delimiter(',');
  add->add_option("--metadata", add_flags->metadata, "A JSON object stored with the job");
  add->add_option("--unique-by", add_flags->unique_by,
                  "Insert nothing while a non-final job of this kind, inserted with the same "
                  "--unique-by (or the same UniqueOptions), has the same args (args), queue "
                  "(queue), or both (args,queue); jobs inserted without it never match")
      ->delimiter(',')
      ->check(CLI::IsMember({"args", "queue"}));
  add->add_flag("--any-kind", add_flags->any_kind,
                "Inside an app, insert a kind none of its jobs/ has (one another program works)");
  add->add_flag("--json", add_flags->json,
                "Print the job as a JSON object with a boolean \"duplicate\"");
  add->callback([add_flags] { RunAdd(*add_flags); });

  struct OpSpec {
    const char* name;
    const char* help;
    Op op;
  };
  for (const OpSpec& spec :
       {OpSpec{"retry", "Make jobs that are not running available now (attempts are kept)",
               Op::kRetry},
        OpSpec{"cancel", "Cancel jobs (a running job is asked to stop)", Op::kCancel},
        OpSpec{"delete", "Delete jobs that are not running", Op::kDelete}}) {
    auto flags = std::make_shared<OpFlags>();
    auto* sub = cmd->add_subcommand(spec.name, spec.help);
    sub->add_option("ID", flags->ids, "Job ids (or choose the jobs by --state)")
        ->check(WholeNumberFrom(1));
    sub->add_option("--database-url", flags->url, kUrlHelp);
    AddFilterFlags(*sub, flags->filter, "Instead of ids, every job", "With --state, only jobs");
    const Op op = spec.op;
    sub->callback([flags, op] { RunOp(op, *flags); });
  }
}

void RegisterQueues(CLI::App& app) {
  auto* cmd = app.add_subcommand("queues", "List, pause or resume queues");
  cmd->require_subcommand(1);

  auto list_url = std::make_shared<std::string>();
  auto list_json = std::make_shared<bool>(false);
  auto* list = cmd->add_subcommand("list", "Every queue with its pause state and job counts");
  list->add_option("--database-url", *list_url, kUrlHelp);
  list->add_flag("--json", *list_json, "Print a JSON array of queue objects");
  list->callback([list_url, list_json] { RunQueuesList(*list_url, *list_json); });

  for (const bool pause : {true, false}) {
    auto url = std::make_shared<std::string>();
    auto name = std::make_shared<std::string>();
    auto* sub = cmd->add_subcommand(
        pause ? "pause" : "resume",
        pause ? "Stop every process fetching jobs of a queue (running jobs finish)"
              : "Let every process fetch jobs of a paused queue again");
    sub->add_option("QUEUE", *name, "Queue name")->required();
    sub->add_option("--database-url", *url, kUrlHelp);
    sub->callback([url, name, pause] { RunQueuePause(*url, *name, pause); });
  }
}

}  // namespace spool::cli
