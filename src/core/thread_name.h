#pragma once

#include <pthread.h>

#include <algorithm>
#include <string>
#include <string_view>

namespace spool::internal {

// Names the calling thread (as top -H, gdb and perf show it) "spool-<role>"; Linux keeps 15
// bytes, so longer names are cut. Best effort: failure only loses the name.
inline void NameThisThread(std::string_view role) {
  std::string name = "spool-";
  name += role;
  name.resize(std::min<size_t>(name.size(), 15));
  (void)pthread_setname_np(pthread_self(), name.c_str());
}

}  // namespace spool::internal
