#pragma once

#include <string>
#include <string_view>

#include "spool/status.h"

namespace spool::internal {

// InvalidArgument when `url` is a PostgreSQL url whose user or password holds a character that
// ends the authority ('/', '?', '#') or an '@', unencoded: libpq would refuse it (quoting parts of
// the password) or read part of the password as the host or port. Ok for every other url.
Status CheckPostgresUrlEncoding(std::string_view url);

// `word` as one shell word, for a command that a message tells the user to run: as it is when it
// holds nothing a shell reads specially, else in single quotes (a url's '&' ended the command).
std::string ShellWord(std::string_view word);

}  // namespace spool::internal
