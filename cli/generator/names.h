#pragma once

#include <string>
#include <string_view>

#include "commands/commands.h"

namespace spool::cli {

// A job name after normalisation: `snake` is what files, kinds and the registry use; `note` says
// what was changed from the input (empty when the input was already snake_case).
struct JobName {
  std::string snake;
  std::string note;
};

// The rule job names follow, for error messages and help.
inline constexpr std::string_view kJobNameRule =
    "a job name is a snake_case C++ identifier: a lowercase letter, then lowercase letters, "
    "digits and single underscores (e.g. send_email), and not a C++ keyword";

// Turns `input` into a snake_case job name: CamelCase and kebab-case are converted (with a note);
// anything else that is not a valid identifier (empty, leading digit, keyword, path, spaces)
// throws CommandError (exit 1) quoting the input and kJobNameRule. `what` names the thing in the
// messages ("job", "migration"), which follow the same rule.
JobName NormalizeJobName(std::string_view input, std::string_view what = "job");

// The C++ type-name stem of a snake_case name, keeping common initialisms upper case:
// send_email -> SendEmail, sync_api -> SyncAPI, html_url -> HTMLURL. Every generated type name
// comes from this one function.
std::string CamelCase(std::string_view snake);

// True for C++20 keywords and alternative tokens (`class`, `and`, `co_await`, ...).
bool IsCppKeyword(std::string_view word);

// Checks an app name for `spool new`: a lowercase letter, then lowercase letters, digits, '_'
// or '-'; at most 64 characters; not a target name CMake reserves (all, test, install, ...).
// Throws CommandError with the rule otherwise: `exit_code` 2 for a name given as an argument,
// 1 for one read from .spoolrc.
void ValidateAppName(std::string_view name, int exit_code = kExitUsage);

}  // namespace spool::cli
