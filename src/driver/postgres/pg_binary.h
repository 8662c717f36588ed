#pragma once

// PostgreSQL's binary format: decoders for the types spool reads back, encoders for the rows of a
// binary COPY. Only files under src/driver/postgres/ include this.

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

// Encoders of `COPY ... FROM STDIN WITH (FORMAT binary)`: the data starts with the header, each
// row with AppendCopyRow and its number of values, each value is one AppendCopy* of the column's
// type, and the trailer ends the data. A value must be shorter than 1 GiB (PostgreSQL's limit).
void AppendCopyHeader(std::string& out);
void AppendCopyTrailer(std::string& out);
void AppendCopyRow(std::string& out, int16_t values);
void AppendCopyText(std::string& out, std::string_view s);
// jsonb from JSON text (the server parses it, as from text).
void AppendCopyJsonb(std::string& out, std::string_view json);
void AppendCopyInt2(std::string& out, int16_t v);
// timestamptz; `t` must lie in years 1..9999.
void AppendCopyTimestamp(std::string& out, TimePoint t);
// A text[]: one dimension, or none when empty.
void AppendCopyTextArray(std::string& out, const std::vector<std::string>& items);

}  // namespace spool::internal::pg
