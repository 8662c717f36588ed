#include "driver/postgres/pg_binary.h"

#include <fmt/format.h>

#include <limits>

namespace spool::internal::pg {
namespace {

constexpr int32_t kTextOid = 25;
constexpr char kJsonbVersion = 1;
// PostgreSQL's epoch, 2000-01-01 UTC, in microseconds since the Unix epoch.
constexpr int64_t kPostgresEpoch = 946'684'800'000'000;

Status Bad(BinaryValue v, std::string_view why) {
  return Status::Internal(
      fmt::format("column {} of spool_job: {} ({} bytes)", v.column, why, v.bytes.size()));
}

// Network byte order; the caller checked that `n` bytes are there.
uint64_t Unsigned(const char* p, size_t n) {
  uint64_t out = 0;
  for (size_t i = 0; i < n; ++i) out = (out << 8) | static_cast<unsigned char>(p[i]);
  return out;
}

int64_t Signed(const char* p, size_t n) {
  const uint64_t u = Unsigned(p, n);
  const int shift = static_cast<int>(64 - 8 * n);
  // Sign-extends the n-byte two's complement value.
  return static_cast<int64_t>(u << shift) >> shift;
}

// Appends the low `n` bytes of `v` in network byte order.
void Put(std::string& out, uint64_t v, size_t n) {
  for (size_t i = n; i-- > 0;) out += static_cast<char>((v >> (8 * i)) & 0xff);
}

void PutLength(std::string& out, size_t n) { Put(out, static_cast<uint32_t>(n), 4); }

// Reads big-endian int32s off the front of a value.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : rest_(bytes) {}
  bool Int32(int32_t* out) {
    if (rest_.size() < 4) return false;
    *out = static_cast<int32_t>(Signed(rest_.data(), 4));
    rest_.remove_prefix(4);
    return true;
  }
  bool Bytes(size_t n, std::string_view* out) {
    if (rest_.size() < n) return false;
    *out = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return true;
  }
  bool done() const { return rest_.empty(); }

 private:
  std::string_view rest_;
};

}  // namespace

Result<int64_t> BinaryInt(BinaryValue v) {
  const size_t n = v.bytes.size();
  if (n != 2 && n != 4 && n != 8) return Bad(v, "not an integer");
  return Signed(v.bytes.data(), n);
}

Result<TimePoint> BinaryTimestamp(BinaryValue v) {
  if (v.bytes.size() != 8) return Bad(v, "not a timestamp");
  const int64_t us = Signed(v.bytes.data(), 8);
  if (us == std::numeric_limits<int64_t>::min() || us == std::numeric_limits<int64_t>::max()) {
    return Bad(v, "infinite timestamp");
  }
  // Finite timestamps end in year 294276, far from overflowing.
  return TimePoint(Duration(us + kPostgresEpoch));
}

Result<std::vector<std::string>> BinaryTextArray(BinaryValue v) {
  Reader in(v.bytes);
  int32_t ndim = 0, flags = 0, elem = 0;
  if (!in.Int32(&ndim) || !in.Int32(&flags) || !in.Int32(&elem)) return Bad(v, "not an array");
  if (elem != kTextOid) return Bad(v, fmt::format("array of type oid {}, not text", elem));
  std::vector<std::string> out;
  if (ndim == 0) {
    if (!in.done()) return Bad(v, "bytes after an empty array");
    return out;
  }
  int32_t count = 0, lower = 0;
  if (ndim != 1) return Bad(v, fmt::format("array of {} dimensions, not 1", ndim));
  if (!in.Int32(&count) || !in.Int32(&lower) || count < 0) return Bad(v, "bad array dimension");
  out.reserve(static_cast<size_t>(count));
  for (int32_t i = 0; i < count; ++i) {
    int32_t len = 0;
    std::string_view bytes;
    if (!in.Int32(&len)) return Bad(v, "array cut short");
    if (len < 0) return Bad(v, "NULL array element");
    if (!in.Bytes(static_cast<size_t>(len), &bytes)) return Bad(v, "array cut short");
    out.emplace_back(bytes);
  }
  if (!in.done()) return Bad(v, "bytes after the array's elements");
  return out;
}

Result<std::string_view> BinaryJsonb(BinaryValue v) {
  if (v.bytes.empty() || v.bytes.front() != kJsonbVersion) return Bad(v, "not jsonb version 1");
  return v.bytes.substr(1);
}

void AppendCopyHeader(std::string& out) {
  // The signature (with its NUL), no flags (no OIDs), no header extension.
  out.append("PGCOPY\n\377\r\n\0", 11);
  Put(out, 0, 4);
  Put(out, 0, 4);
}

void AppendCopyTrailer(std::string& out) { Put(out, 0xffff, 2); }  // a row of -1 values

void AppendCopyRow(std::string& out, int16_t values) { Put(out, static_cast<uint16_t>(values), 2); }

void AppendCopyText(std::string& out, std::string_view s) {
  PutLength(out, s.size());
  out += s;
}

void AppendCopyJsonb(std::string& out, std::string_view json) {
  PutLength(out, json.size() + 1);
  out += kJsonbVersion;
  out += json;
}

void AppendCopyInt2(std::string& out, int16_t v) {
  PutLength(out, 2);
  Put(out, static_cast<uint16_t>(v), 2);
}

void AppendCopyTimestamp(std::string& out, TimePoint t) {
  PutLength(out, 8);
  Put(out, static_cast<uint64_t>(t.time_since_epoch().count() - kPostgresEpoch), 8);
}

void AppendCopyTextArray(std::string& out, const std::vector<std::string>& items) {
  size_t size = 12 + (items.empty() ? 0 : 8);
  for (const std::string& item : items) size += 4 + item.size();
  PutLength(out, size);
  Put(out, items.empty() ? 0 : 1, 4);  // dimensions
  Put(out, 0, 4);                      // no NULL elements
  Put(out, kTextOid, 4);
  if (!items.empty()) {
    Put(out, items.size(), 4);
    Put(out, 1, 4);  // lower bound
  }
  for (const std::string& item : items) AppendCopyText(out, item);
}

}  // namespace spool::internal::pg
