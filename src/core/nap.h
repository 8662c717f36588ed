#pragma once

#include <chrono>

#include "spool/clock.h"

namespace spool::internal {

// How long a thread waiting for a time on `clock` may sleep before it reads the clock again. A
// FakeClock (any clock but the system's) cannot wake it, so at most `fake_clock_nap`; the system
// clock moves by itself, so until the time is due, at most a second in case the clock is stepped.
inline Duration MaxNap(const Clock& clock, Duration fake_clock_nap) {
  if (dynamic_cast<const SystemClock*>(&clock) != nullptr) return std::chrono::seconds(1);
  return fake_clock_nap;
}

}  // namespace spool::internal
