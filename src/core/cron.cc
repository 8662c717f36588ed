#include "core/cron.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <utility>
#include <vector>

namespace spool {

namespace {

constexpr int64_t kSecondsPerDay = 86400;
constexpr size_t kMaxExpressionLength = 1024;
// A schedule repeats with the 400-year Gregorian cycle: if nothing matches in one cycle, nothing
// ever will.
constexpr int64_t kSearchYears = 400;
constexpr int64_t kMaxYear = 9999;

constexpr int64_t FloorDiv(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// Howard Hinnant's days_from_civil / civil_from_days (proleptic Gregorian, day 0 = 1970-01-01).
constexpr int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2 ? 1 : 0;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

struct CivilDate {
  int64_t year;
  unsigned month;
  unsigned day;
};

CivilDate CivilFromDays(int64_t z) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  const unsigned d = doy - (153 * mp + 2) / 5 + 1;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  return {static_cast<int64_t>(yoe) + era * 400 + (m <= 2 ? 1 : 0), m, d};
}

// 0 = Sunday.
unsigned WeekdayFromDays(int64_t z) {
  return static_cast<unsigned>(z + 4 - 7 * FloorDiv(z + 4, 7));
}

bool IsLeapYear(int64_t y) { return y % 4 == 0 && (y % 100 != 0 || y % 400 == 0); }

unsigned DaysInMonth(int64_t y, unsigned m) {
  static constexpr std::array<unsigned, 13> kDays = {0,  31, 28, 31, 30, 31, 30,
                                                     31, 31, 30, 31, 30, 31};
  return m == 2 && IsLeapYear(y) ? 29 : kDays[m];
}

bool HasBit(uint64_t mask, unsigned bit) { return ((mask >> bit) & 1U) != 0; }

}  // namespace

namespace internal {

namespace {

// A date in a POSIX TZ rule ("M3.2.0", "J60", "59") plus the local time of day of the change.
struct PosixDate {
  enum class Kind { kJulianNoLeap, kJulianZero, kMonthWeekDay };
  Kind kind = Kind::kMonthWeekDay;
  int day = 0;  // Jn: 1-365; n: 0-365
  unsigned month = 0;
  unsigned week = 0;  // 1-5, 5 = last
  unsigned weekday = 0;
  int64_t time = 2 * 3600;  // seconds after local midnight; may be negative or past 24h

  // The local day number (days since 1970-01-01) of this date in `year`.
  int64_t Day(int64_t year) const {
    const int64_t jan1 = DaysFromCivil(year, 1, 1);
    switch (kind) {
      case Kind::kJulianNoLeap:
        return jan1 + day - 1 + (IsLeapYear(year) && day >= 60 ? 1 : 0);
      case Kind::kJulianZero:
        return jan1 + day;
      case Kind::kMonthWeekDay:
        break;
    }
    const int64_t first = DaysFromCivil(year, month, 1);
    int64_t d = first + (weekday + 7 - WeekdayFromDays(first)) % 7 + (week - 1) * 7;
    while (d >= first + DaysInMonth(year, month)) d -= 7;
    return d;
  }
};

struct PosixRule {
  int32_t std_offset = 0;  // seconds east of UTC
  bool has_dst = false;
  int32_t dst_offset = 0;
  PosixDate start;  // given in standard time
  PosixDate end;    // given in daylight time
};

// Parses the POSIX TZ string of a TZif footer, e.g. "EST5EDT,M3.2.0,M11.1.0" or "<+03>-3".
class PosixParser {
 public:
  explicit PosixParser(std::string_view s) : s_(s) {}

  std::optional<PosixRule> Parse() {
    PosixRule rule;
    int64_t offset = 0;
    if (!Name() || !Offset(24, &offset)) return std::nullopt;
    rule.std_offset = static_cast<int32_t>(-offset);
    if (AtEnd()) return rule;
    if (!Name()) return std::nullopt;
    rule.has_dst = true;
    rule.dst_offset = rule.std_offset + 3600;
    if (!AtEnd() && Peek() != ',') {
      if (!Offset(24, &offset)) return std::nullopt;
      rule.dst_offset = static_cast<int32_t>(-offset);
    }
    // Without rules POSIX leaves the dates to the implementation; tzdata always writes them.
    if (!Consume(',') || !Date(&rule.start) || !Consume(',') || !Date(&rule.end) || !AtEnd()) {
      return std::nullopt;
    }
    return rule;
  }

 private:
  bool AtEnd() const { return pos_ >= s_.size(); }
  char Peek() const { return AtEnd() ? '\0' : s_[pos_]; }
  bool Consume(char c) {
    if (Peek() != c) return false;
    ++pos_;
    return true;
  }
  static bool IsDigit(char c) { return c >= '0' && c <= '9'; }
  static bool IsAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

  bool Name() {
    if (Consume('<')) {
      const size_t close = s_.find('>', pos_);
      if (close == std::string_view::npos || close == pos_) return false;
      pos_ = close + 1;
      return true;
    }
    const size_t start = pos_;
    while (IsAlpha(Peek())) ++pos_;
    return pos_ - start >= 3;
  }

  bool Number(int64_t max, int64_t* out) {
    const size_t start = pos_;
    int64_t n = 0;
    while (IsDigit(Peek())) {
      n = n * 10 + (Peek() - '0');
      if (n > max) return false;
      ++pos_;
    }
    *out = n;
    return pos_ > start;
  }

  // [+-]hh[:mm[:ss]] in seconds.
  bool Offset(int64_t max_hours, int64_t* out) {
    int64_t sign = 1;
    if (Consume('-')) {
      sign = -1;
    } else {
      Consume('+');
    }
    int64_t h = 0;
    int64_t m = 0;
    int64_t s = 0;
    if (!Number(max_hours, &h)) return false;
    if (Consume(':')) {
      if (!Number(59, &m)) return false;
      if (Consume(':') && !Number(59, &s)) return false;
    }
    *out = sign * (h * 3600 + m * 60 + s);
    return true;
  }

  bool Date(PosixDate* date) {
    int64_t n = 0;
    if (Consume('M')) {
      int64_t month = 0;
      int64_t week = 0;
      int64_t weekday = 0;
      if (!Number(12, &month) || month < 1 || !Consume('.') || !Number(5, &week) || week < 1 ||
          !Consume('.') || !Number(6, &weekday)) {
        return false;
      }
      date->kind = PosixDate::Kind::kMonthWeekDay;
      date->month = static_cast<unsigned>(month);
      date->week = static_cast<unsigned>(week);
      date->weekday = static_cast<unsigned>(weekday);
    } else if (Consume('J')) {
      if (!Number(365, &n) || n < 1) return false;
      date->kind = PosixDate::Kind::kJulianNoLeap;
      date->day = static_cast<int>(n);
    } else {
      if (!Number(365, &n)) return false;
      date->kind = PosixDate::Kind::kJulianZero;
      date->day = static_cast<int>(n);
    }
    date->time = 2 * 3600;
    if (Consume('/')) return Offset(167, &date->time);
    return true;
  }

  std::string_view s_;
  size_t pos_ = 0;
};

// Big-endian reader over the bytes of a TZif file; every read is bounds checked.
class ByteReader {
 public:
  explicit ByteReader(std::string_view data) : data_(data) {}
  size_t remaining() const { return data_.size() - pos_; }
  bool Skip(uint64_t n) {
    if (n > remaining()) return false;
    pos_ += static_cast<size_t>(n);
    return true;
  }
  bool ReadU8(uint8_t* out) {
    if (remaining() < 1) return false;
    *out = static_cast<uint8_t>(data_[pos_++]);
    return true;
  }
  bool ReadU32(uint32_t* out) {
    uint64_t v = 0;
    if (!ReadBigEndian(4, &v)) return false;
    *out = static_cast<uint32_t>(v);
    return true;
  }
  bool ReadI32(int32_t* out) {
    uint32_t v = 0;
    if (!ReadU32(&v)) return false;
    *out = static_cast<int32_t>(v);
    return true;
  }
  bool ReadI64(int64_t* out) {
    uint64_t v = 0;
    if (!ReadBigEndian(8, &v)) return false;
    *out = static_cast<int64_t>(v);
    return true;
  }
  std::string_view Rest() const { return data_.substr(pos_); }

 private:
  bool ReadBigEndian(size_t n, uint64_t* out) {
    if (remaining() < n) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v = (v << 8) | static_cast<uint8_t>(data_[pos_ + i]);
    pos_ += n;
    *out = v;
    return true;
  }

  std::string_view data_;
  size_t pos_ = 0;
};

struct TzifHeader {
  char version = 0;
  uint32_t isutcnt = 0;
  uint32_t isstdcnt = 0;
  uint32_t leapcnt = 0;
  uint32_t timecnt = 0;
  uint32_t typecnt = 0;
  uint32_t charcnt = 0;
};

bool ReadTzifHeader(ByteReader* r, TzifHeader* h) {
  uint8_t magic[4] = {};
  for (uint8_t& b : magic) {
    if (!r->ReadU8(&b)) return false;
  }
  if (magic[0] != 'T' || magic[1] != 'Z' || magic[2] != 'i' || magic[3] != 'f') return false;
  uint8_t version = 0;
  if (!r->ReadU8(&version) || !r->Skip(15)) return false;
  h->version = static_cast<char>(version);
  return r->ReadU32(&h->isutcnt) && r->ReadU32(&h->isstdcnt) && r->ReadU32(&h->leapcnt) &&
         r->ReadU32(&h->timecnt) && r->ReadU32(&h->typecnt) && r->ReadU32(&h->charcnt);
}

bool IsValidZoneName(std::string_view name) {
  if (name.empty() || name.size() > 255 || name.front() == '/') return false;
  // Files of the zoneinfo directory that are not zones: which zone they hold is the host's
  // setting, so one configuration would mean different zones on different machines.
  if (name == "localtime" || name == "posixrules" || name == "Factory") return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '/' || c == '_' || c == '-' || c == '+' || c == '.';
    if (!ok) return false;
  }
  // No "." or ".." components: the name must stay inside the zoneinfo directory.
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string_view::npos) end = name.size();
    const std::string_view part = name.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  return true;
}

}  // namespace

// The UTC offsets of one zone over time: the transitions listed in its TZif file, then the POSIX
// rule of the footer (or the last offset when there is no usable rule).
class TimeZoneRules {
 public:
  static Result<std::shared_ptr<const TimeZoneRules>> Load(std::string_view name) {
    const std::string quoted_name = fmt::format("\"{}\"", name);
    if (!IsValidZoneName(name)) {
      return Status::InvalidArgument(fmt::format(
          "invalid time zone {}: expected an IANA name such as \"Europe/Kyiv\"", quoted_name));
    }
    const char* env_dir = std::getenv("TZDIR");
    const std::string dir =
        env_dir != nullptr && *env_dir != '\0' ? env_dir : "/usr/share/zoneinfo";
    const std::string path = fmt::format("{}/{}", dir, name);
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      return Status::InvalidArgument(
          fmt::format("unknown time zone {}: no such zone in {} (expected an IANA name such as "
                      "\"Europe/Kyiv\" or \"America/New_York\")",
                      quoted_name, dir));
    }
    constexpr size_t kMaxFileSize = 1 << 20;
    std::string data;
    char buf[4096];
    while (data.size() <= kMaxFileSize && in.read(buf, sizeof buf).gcount() > 0) {
      data.append(buf, static_cast<size_t>(in.gcount()));
    }
    auto rules = std::make_shared<TimeZoneRules>();
    if (data.size() > kMaxFileSize || !rules->ParseTzif(data)) {
      return Status::InvalidArgument(
          fmt::format("unknown time zone {}: {} is not a valid time zone file", quoted_name, path));
    }
    return std::shared_ptr<const TimeZoneRules>(std::move(rules));
  }

  // Seconds east of UTC in effect at UTC second `t`.
  int32_t OffsetAt(int64_t t) const {
    if (times_.empty() || t >= times_.back()) {
      if (rule_ && (times_.empty() || t > times_.back())) return RuleOffsetAt(t);
      return times_.empty() ? initial_offset_ : offsets_.back();
    }
    const auto it = std::upper_bound(times_.begin(), times_.end(), t);
    if (it == times_.begin()) return initial_offset_;
    return offsets_[static_cast<size_t>(std::distance(times_.begin(), it) - 1)];
  }

  // Appends the transition instants in (t0, t1], ascending.
  void TransitionsIn(int64_t t0, int64_t t1, std::vector<int64_t>* out) const {
    auto it = std::upper_bound(times_.begin(), times_.end(), t0);
    for (; it != times_.end() && *it <= t1; ++it) out->push_back(*it);
    if (!rule_ || !rule_->has_dst) return;
    const int64_t from = times_.empty() ? t0 : std::max(t0, times_.back());
    if (from >= t1) return;
    const int64_t first_year = CivilFromDays(FloorDiv(from, kSecondsPerDay)).year - 1;
    const int64_t last_year = CivilFromDays(FloorDiv(t1, kSecondsPerDay)).year + 1;
    const size_t begin = out->size();
    for (int64_t y = first_year; y <= last_year; ++y) {
      for (const auto& [at, offset] : RuleTransitions(y)) {
        static_cast<void>(offset);
        if (at > from && at <= t1) out->push_back(at);
      }
    }
    std::sort(out->begin() + static_cast<std::ptrdiff_t>(begin), out->end());
  }

  bool ParseTzif(std::string_view data) {
    ByteReader r(data);
    TzifHeader h;
    if (!ReadTzifHeader(&r, &h)) return false;
    size_t time_size = 4;
    if (h.version >= '2') {
      // Skip the 32-bit block; the 64-bit one that follows is a superset.
      const uint64_t v1_size = uint64_t{h.timecnt} * 5 + uint64_t{h.typecnt} * 6 + h.charcnt +
                               uint64_t{h.leapcnt} * 8 + h.isstdcnt + h.isutcnt;
      if (!r.Skip(v1_size) || !ReadTzifHeader(&r, &h)) return false;
      time_size = 8;
    }
    if (h.typecnt == 0 || h.typecnt > 256) return false;
    const uint64_t body_size = uint64_t{h.timecnt} * (time_size + 1) + uint64_t{h.typecnt} * 6 +
                               h.charcnt + uint64_t{h.leapcnt} * (time_size + 4) + h.isstdcnt +
                               h.isutcnt;
    if (body_size > r.remaining()) return false;

    times_.resize(h.timecnt);
    for (int64_t& t : times_) {
      if (time_size == 8) {
        if (!r.ReadI64(&t)) return false;
      } else {
        int32_t t32 = 0;
        if (!r.ReadI32(&t32)) return false;
        t = t32;
      }
    }
    if (!std::is_sorted(times_.begin(), times_.end()) ||
        std::adjacent_find(times_.begin(), times_.end()) != times_.end()) {
      return false;
    }
    std::vector<uint8_t> type_index(h.timecnt);
    for (uint8_t& i : type_index) {
      if (!r.ReadU8(&i) || i >= h.typecnt) return false;
    }
    std::vector<int32_t> type_offsets(h.typecnt);
    for (int32_t& offset : type_offsets) {
      uint8_t isdst = 0;
      uint8_t desigidx = 0;
      if (!r.ReadI32(&offset) || !r.ReadU8(&isdst) || !r.ReadU8(&desigidx)) return false;
      // RFC 8536 bounds utoff to (-25h, +26h); anything else is a corrupt file.
      if (offset <= -25 * 3600 || offset >= 26 * 3600) return false;
    }
    offsets_.clear();
    for (uint8_t i : type_index) offsets_.push_back(type_offsets[i]);
    initial_offset_ = type_offsets[0];
    // Skip designations, leap seconds and the isstd/isut indicators: they do not move offsets.
    if (!r.Skip(uint64_t{h.charcnt} + uint64_t{h.leapcnt} * (time_size + 4) + h.isstdcnt +
                h.isutcnt)) {
      return false;
    }
    rule_.reset();
    if (time_size == 8) {
      const std::string_view rest = r.Rest();
      if (rest.size() >= 2 && rest.front() == '\n') {
        const size_t end = rest.find('\n', 1);
        if (end != std::string_view::npos) rule_ = PosixParser(rest.substr(1, end - 1)).Parse();
      }
    }
    return true;
  }

 private:
  // The two changes of the POSIX rule in `year` as (UTC instant, offset after), ascending.
  std::array<std::pair<int64_t, int32_t>, 2> RuleTransitions(int64_t year) const {
    const int64_t start =
        rule_->start.Day(year) * kSecondsPerDay + rule_->start.time - rule_->std_offset;
    const int64_t end = rule_->end.Day(year) * kSecondsPerDay + rule_->end.time - rule_->dst_offset;
    std::array<std::pair<int64_t, int32_t>, 2> result = {std::pair{start, rule_->dst_offset},
                                                         std::pair{end, rule_->std_offset}};
    if (result[1].first < result[0].first) std::swap(result[0], result[1]);
    return result;
  }

  int32_t RuleOffsetAt(int64_t t) const {
    if (!rule_->has_dst) return rule_->std_offset;
    const int64_t year = CivilFromDays(FloorDiv(t, kSecondsPerDay)).year;
    int32_t offset = rule_->std_offset;
    int64_t latest = 0;
    bool found = false;
    for (int64_t y = year - 1; y <= year + 1; ++y) {
      for (const auto& [at, after] : RuleTransitions(y)) {
        if (at <= t && (!found || at >= latest)) {
          latest = at;
          offset = after;
          found = true;
        }
      }
    }
    return offset;
  }

  std::vector<int64_t> times_;     // UTC seconds of each transition, strictly ascending
  std::vector<int32_t> offsets_;   // offset in effect from times_[i] on
  int32_t initial_offset_ = 0;     // before the first transition
  std::optional<PosixRule> rule_;  // after the last transition
};

}  // namespace internal

namespace {

struct FieldSpec {
  const char* name;
  unsigned min;
  unsigned max;
  // Names for min, min+1, ... (months from 1, weekdays from 0) or null.
  const char* const* names;
  size_t name_count;
  const char* name_hint;  // e.g. " or month name (JAN-DEC)"
};

constexpr const char* kMonthNames[] = {"JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                                       "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"};
constexpr const char* kWeekdayNames[] = {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"};

constexpr FieldSpec kMinuteSpec = {"minute", 0, 59, nullptr, 0, ""};
constexpr FieldSpec kHourSpec = {"hour", 0, 23, nullptr, 0, ""};
constexpr FieldSpec kDaySpec = {"day-of-month", 1, 31, nullptr, 0, ""};
constexpr FieldSpec kMonthSpec = {"month", 1, 12, kMonthNames, 12, " or month name (JAN-DEC)"};
// 7 is accepted as Sunday and folded into bit 0 after parsing.
constexpr FieldSpec kWeekdaySpec = {"day-of-week", 0, 7,
                                    kWeekdayNames, 7, " or day name (SUN-SAT)"};

char ToUpper(char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (ToUpper(a[i]) != ToUpper(b[i])) return false;
  }
  return true;
}

bool IsBlank(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// Parses one value (number or name) of `spec`; the error says which field and value.
Result<unsigned> ParseValue(std::string_view text, const FieldSpec& spec) {
  if (!text.empty() &&
      std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    // Beyond 9 digits the value is out of range anyway; stop before it could overflow.
    unsigned value = 0;
    bool huge = text.size() > 9;
    if (!huge) {
      for (char c : text) value = value * 10 + static_cast<unsigned>(c - '0');
    }
    if (huge || value < spec.min || value > spec.max) {
      return Status::InvalidArgument(fmt::format("{} field value {} is out of range {}-{}",
                                                 spec.name, text, spec.min, spec.max));
    }
    return value;
  }
  for (size_t i = 0; i < spec.name_count; ++i) {
    if (EqualsIgnoreCase(text, spec.names[i])) return spec.min + static_cast<unsigned>(i);
  }
  return Status::InvalidArgument(
      fmt::format("{} field value \"{}\" is not a number{}", spec.name, text, spec.name_hint));
}

// Parses a comma list into a bit mask; `has_star` tells whether the field starts with `*`, which
// is how Vixie cron and cronie tell an unrestricted day field ("1,*/5" is restricted there).
Status ParseField(std::string_view field, const FieldSpec& spec, uint64_t* mask, bool* has_star) {
  *mask = 0;
  *has_star = field.starts_with('*');
  size_t start = 0;
  while (true) {
    size_t comma = field.find(',', start);
    if (comma == std::string_view::npos) comma = field.size();
    const std::string_view item = field.substr(start, comma - start);
    if (item.empty()) {
      return Status::InvalidArgument(
          fmt::format("{} field \"{}\" has an empty list item", spec.name, field));
    }
    std::string_view range = item;
    unsigned step = 1;
    bool has_step = false;
    if (const size_t slash = item.find('/'); slash != std::string_view::npos) {
      range = item.substr(0, slash);
      const std::string_view step_text = item.substr(slash + 1);
      const FieldSpec step_spec = {spec.name, 1, spec.max - spec.min, nullptr, 0, ""};
      if (step_text.empty() || !std::all_of(step_text.begin(), step_text.end(),
                                            [](char c) { return c >= '0' && c <= '9'; })) {
        return Status::InvalidArgument(fmt::format("{} field step \"{}\" in \"{}\" is not a number",
                                                   spec.name, step_text, item));
      }
      Result<unsigned> parsed = ParseValue(step_text, step_spec);
      if (!parsed) {
        return Status::InvalidArgument(
            fmt::format("{} field step {} in \"{}\" is out of range 1-{}", spec.name, step_text,
                        item, step_spec.max));
      }
      step = *parsed;
      has_step = true;
    }
    unsigned lo = spec.min;
    unsigned hi = spec.max;
    if (range == "*") {
      // "*" in day-of-week means 0-6; 7 would only repeat Sunday.
      if (spec.names == kWeekdayNames) hi = 6;
    } else {
      const size_t dash = range.find('-');
      const std::string_view first = range.substr(0, dash);
      if (first.empty()) {
        return Status::InvalidArgument(
            fmt::format("{} field item \"{}\" is not a value, range or step", spec.name, item));
      }
      SPOOL_ASSIGN_OR_RETURN(lo, ParseValue(first, spec));
      if (dash != std::string_view::npos) {
        const std::string_view last = range.substr(dash + 1);
        if (last.empty()) {
          return Status::InvalidArgument(
              fmt::format("{} field item \"{}\" is not a value, range or step", spec.name, item));
        }
        SPOOL_ASSIGN_OR_RETURN(hi, ParseValue(last, spec));
        if (hi < lo) {
          return Status::InvalidArgument(
              fmt::format("{} field range {} is reversed: the start must not exceed the end",
                          spec.name, range));
        }
      } else if (!has_step) {
        hi = lo;  // "5" alone; "5/10" runs from 5 to the maximum
      }
    }
    for (unsigned v = lo; v <= hi; v += step) *mask |= uint64_t{1} << v;
    if (comma == field.size()) break;
    start = comma + 1;
  }
  return Status::Ok();
}

struct Macro {
  const char* name;
  const char* expansion;
};
constexpr Macro kMacros[] = {
    {"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"},
    {"@weekly", "0 0 * * 0"}, {"@daily", "0 0 * * *"},    {"@midnight", "0 0 * * *"},
    {"@hourly", "0 * * * *"},
};

std::vector<std::string_view> SplitFields(std::string_view s) {
  std::vector<std::string_view> fields;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && IsBlank(s[i])) ++i;
    const size_t start = i;
    while (i < s.size() && !IsBlank(s[i])) ++i;
    if (i > start) fields.push_back(s.substr(start, i - start));
  }
  return fields;
}

constexpr uint64_t kAllHours = (uint64_t{1} << 24) - 1;
// Every instant whose wall-clock time is a given one lies within a day of it.
constexpr int64_t kDstWindow = 2 * kSecondsPerDay;
// Fire times lie in [year 1, year 10000).
constexpr int64_t kMinSeconds = DaysFromCivil(1, 1, 1) * kSecondsPerDay;
constexpr int64_t kEndSeconds = DaysFromCivil(kMaxYear + 1, 1, 1) * kSecondsPerDay;

}  // namespace

Result<CronSchedule> CronSchedule::Parse(std::string_view expr, std::string_view time_zone) {
  if (expr.size() > kMaxExpressionLength) {
    return Status::InvalidArgument(
        fmt::format("invalid cron expression: {} characters is too long (at most {})", expr.size(),
                    kMaxExpressionLength));
  }
  const auto error = [expr](std::string_view what) {
    return Status::InvalidArgument(fmt::format("invalid cron expression \"{}\": {}", expr, what));
  };
  CronSchedule schedule;
  std::vector<std::string_view> fields = SplitFields(expr);
  if (fields.size() == 1 && fields[0].front() == '@') {
    const Macro* found = nullptr;
    for (const Macro& macro : kMacros) {
      if (EqualsIgnoreCase(fields[0], macro.name)) found = &macro;
    }
    if (found == nullptr) {
      return error(fmt::format(
          "unknown macro \"{}\" (expected @yearly, @annually, @monthly, @weekly, @daily, "
          "@midnight or @hourly)",
          fields[0]));
    }
    fields = SplitFields(found->expansion);
  } else if (fields.size() != 5) {
    return error(fmt::format(
        "expected 5 fields (minute hour day-of-month month day-of-week) or a macro such as "
        "@daily, got {}",
        fields.size()));
  }
  bool star = false;
  Status status = ParseField(fields[0], kMinuteSpec, &schedule.minutes_, &star);
  if (status.ok()) status = ParseField(fields[1], kHourSpec, &schedule.hours_, &star);
  if (status.ok()) status = ParseField(fields[2], kDaySpec, &schedule.days_, &star);
  schedule.days_restricted_ = !star;
  if (status.ok()) status = ParseField(fields[3], kMonthSpec, &schedule.months_, &star);
  if (status.ok()) status = ParseField(fields[4], kWeekdaySpec, &schedule.weekdays_, &star);
  schedule.weekdays_restricted_ = !star;
  if (!status.ok()) return error(status.message());
  if (HasBit(schedule.weekdays_, 7)) schedule.weekdays_ = (schedule.weekdays_ | 1U) & 0x7FU;

  // Reject schedules that never fire ("0 0 30 2 *") so Next() never has to give up.
  int64_t match = 0;
  if (!schedule.NextLocalMatch(DaysFromCivil(2000, 1, 1) * kSecondsPerDay, &match)) {
    return error(
        "the day-of-month, month and day-of-week fields never match the same day, so the "
        "schedule would never fire");
  }

  size_t begin = 0;
  while (begin < expr.size() && IsBlank(expr[begin])) ++begin;
  size_t end = expr.size();
  while (end > begin && IsBlank(expr[end - 1])) --end;
  schedule.expression_ = std::string(expr.substr(begin, end - begin));
  if (time_zone.empty() || time_zone == "UTC" || time_zone == "Etc/UTC") {
    schedule.time_zone_ = time_zone.empty() ? "UTC" : std::string(time_zone);
  } else {
    SPOOL_ASSIGN_OR_RETURN(schedule.zone_, internal::TimeZoneRules::Load(time_zone));
    schedule.time_zone_ = std::string(time_zone);
  }
  return schedule;
}

bool CronSchedule::DayMatches(int64_t year, unsigned month, unsigned day) const {
  const bool dom = HasBit(days_, day);
  const bool dow = HasBit(weekdays_, WeekdayFromDays(DaysFromCivil(year, month, day)));
  return days_restricted_ && weekdays_restricted_ ? dom || dow : dom && dow;
}

bool CronSchedule::NextLocalMatch(int64_t local, int64_t* match) const {
  const int64_t days = FloorDiv(local, kSecondsPerDay);
  const int64_t secs = local - days * kSecondsPerDay;
  const CivilDate date = CivilFromDays(days);
  int64_t y = date.year;
  unsigned mo = date.month;
  unsigned d = date.day;
  auto h = static_cast<unsigned>(secs / 3600);
  auto mi = static_cast<unsigned>(secs % 3600 / 60);
  const int64_t last_year = std::min(y + kSearchYears, kMaxYear);
  const auto next_day = [&] {
    ++d;
    h = 0;
    mi = 0;
  };
  while (y <= last_year) {
    if (!HasBit(months_, mo) || d > DaysInMonth(y, mo)) {
      if (++mo > 12) {
        mo = 1;
        ++y;
      }
      d = 1;
      h = 0;
      mi = 0;
    } else if (!DayMatches(y, mo, d)) {
      next_day();
    } else if (!HasBit(hours_, h)) {
      mi = 0;
      if (++h > 23) next_day();
    } else if (!HasBit(minutes_, mi)) {
      if (++mi > 59) {
        mi = 0;
        if (++h > 23) next_day();
      }
    } else {
      *match = DaysFromCivil(y, mo, d) * kSecondsPerDay + h * 3600 + mi * 60;
      return true;
    }
  }
  return false;
}

TimePoint CronSchedule::Next(TimePoint after) const {
  // Fire times are whole seconds, so "strictly after `after`" is "after its whole second".
  int64_t after_s = FloorDiv(after.time_since_epoch().count(), 1'000'000);
  if (after_s < kMinSeconds) after_s = kMinSeconds - 1;
  if (after_s >= kEndSeconds) return kCronNever;

  // A schedule matching every hour is an interval (cron's "wildcard" jobs): it follows the
  // clock through DST, dropping the wall-clock times a gap skips and firing again in the hour a
  // fall-back repeats. Other schedules name a time of day, which runs once that day.
  const bool every_hour = hours_ == kAllHours;
  int64_t next = FirstOccurrenceAfter(after_s, every_hour);
  if (zone_ && every_hour) next = std::min(next, RepeatedOccurrenceAfter(after_s));
  if (next >= kEndSeconds) return kCronNever;
  return TimePoint(std::chrono::seconds(next));
}

int64_t CronSchedule::FirstOccurrenceAfter(int64_t after_s, bool skip_gaps) const {
  const auto offset_at = [this](int64_t t) { return zone_ ? zone_->OffsetAt(t) : 0; };
  std::vector<int64_t> transitions;
  int64_t local = FloorDiv(after_s + offset_at(after_s), 60) * 60;
  // Each round either returns or moves past one wall-clock minute that does not fire after
  // `after_s` (a repeated or skipped minute); the bound only guards against corrupt zone data.
  for (int round = 0; round < 1'000'000; ++round) {
    int64_t candidate = 0;
    if (!NextLocalMatch(local, &candidate)) return kEndSeconds;
    int64_t fire = candidate;
    int64_t resume = candidate + 60;
    if (zone_) {
      transitions.clear();
      zone_->TransitionsIn(candidate - kDstWindow, candidate + kDstWindow, &transitions);
      std::optional<int64_t> first;
      const auto try_offset = [&](int32_t offset) {
        const int64_t t = candidate - offset;
        if (zone_->OffsetAt(t) == offset && (!first || t < *first)) first = t;
      };
      try_offset(zone_->OffsetAt(candidate - kDstWindow));
      for (int64_t tr : transitions) try_offset(zone_->OffsetAt(tr));
      if (first) {
        fire = *first;  // the first of two occurrences when the clock fell back
      } else {
        // Skipped by a spring-forward gap: find the transition that jumps over it.
        std::optional<int64_t> gap_end;
        int64_t gap_end_local = candidate + 60;
        for (int64_t tr : transitions) {
          if (tr + zone_->OffsetAt(tr - 1) <= candidate && candidate < tr + zone_->OffsetAt(tr)) {
            gap_end = tr;
            gap_end_local = tr + zone_->OffsetAt(tr);
            break;
          }
        }
        resume = std::max(resume, FloorDiv(gap_end_local + 59, 60) * 60);
        if (!gap_end || skip_gaps) {
          local = resume;
          continue;
        }
        fire = *gap_end;
      }
    }
    if (fire > after_s) return std::min(fire, kEndSeconds);
    local = resume;
  }
  return kEndSeconds;
}

int64_t CronSchedule::RepeatedOccurrenceAfter(int64_t after_s) const {
  // A second occurrence t can only come before the first occurrence of a later wall-clock time
  // if its own first occurrence (t minus the hour repeated) is not after `after_s`, so t lies
  // within one fall-back of `after_s`: only the transitions near it matter.
  std::vector<int64_t> transitions;
  zone_->TransitionsIn(after_s - kDstWindow, after_s + kDstWindow, &transitions);
  for (int64_t tr : transitions) {
    const int32_t before = zone_->OffsetAt(tr - 1);
    const int32_t offset = zone_->OffsetAt(tr);
    if (offset >= before) continue;  // not a fall-back
    // The instants [tr, repeat_end) show again the wall-clock times [tr + offset, tr + before).
    const int64_t repeat_end = tr + (before - offset);
    int64_t start = std::max(tr, after_s + 1);
    while (start < repeat_end) {
      int64_t match = 0;
      if (!NextLocalMatch(FloorDiv(start + offset, 60) * 60, &match)) break;
      const int64_t t = match - offset;
      if (t >= repeat_end) break;
      if (t >= start) return t;
      start = t + 60;  // the minute began before `start` (an offset with seconds)
    }
  }
  return kEndSeconds;
}

}  // namespace spool
