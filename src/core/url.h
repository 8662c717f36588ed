#pragma once

#include <string_view>

#include "spool/status.h"

namespace spool::internal {

// InvalidArgument when `url` is a PostgreSQL url whose user or password holds a character that
// ends the authority ('/', '?', '#') or an '@', unencoded: libpq would refuse it (quoting parts of
// the password) or read part of the password as the host or port. Ok for every other url.
Status CheckPostgresUrlEncoding(std::string_view url);

}  // namespace spool::internal
