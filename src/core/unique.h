#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "spool/options.h"
#include "spool/result.h"

namespace spool::internal {

struct UniqueKey {
  std::string key;     // 32 raw SHA-256 bytes; empty: the job is not unique
  uint8_t states = 0;  // bit i set: JobState with underlying value i blocks a duplicate
};

// The bit of `state` in UniqueKey::states.
constexpr uint8_t UniqueStateBit(JobState state) {
  return static_cast<uint8_t>(1u << static_cast<unsigned>(state));
}

// The key for a job of `kind` with `args` (a JSON object) under `opts`; an empty key when `opts`
// is unset. InvalidArgument for options that cannot work (see UniqueOptions).
Result<UniqueKey> ComputeUniqueKey(std::string_view kind, std::string_view args,
                                   std::string_view queue, TimePoint scheduled_at,
                                   const std::optional<UniqueOptions>& opts);

// A key spool makes for itself from `material` (e.g. a periodic job's tick), blocking in every
// state.
UniqueKey InternalUniqueKey(std::string_view material);

}  // namespace spool::internal
