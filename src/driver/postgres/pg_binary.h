#pragma once

// Decoders of PostgreSQL's binary result format for the types spool reads back. Only files under
// src/driver/postgres/ include this.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "spool/job.h"
#include "spool/result.h"

namespace spool::internal::pg {

// A value as libpq hands it out: its bytes, of the length PQgetlength reports.
struct BinaryValue {
  std::string_view bytes;
  std::string_view column;  // for error messages
};

// Each returns Internal naming the column when the bytes do not fit the type.
// int2, int4 or int8, told apart by length.
Result<int64_t> BinaryInt(BinaryValue v);
// timestamptz (microseconds since 2000-01-01 UTC); infinity is an error.
Result<TimePoint> BinaryTimestamp(BinaryValue v);
// A one-dimensional text[] (or an empty one) without NULL elements.
Result<std::vector<std::string>> BinaryTextArray(BinaryValue v);
// jsonb: the JSON text after the format's version byte.
Result<std::string_view> BinaryJsonb(BinaryValue v);

}  // namespace spool::internal::pg
