#pragma once

#include <string>
#include <utility>
#include <vector>

#include "generator/app.h"

namespace spool::cli {

// `spool serve`: unless `no_build`, configures and builds the app's target with CMake into
// app.root/build (-j2; not its tests), then runs build/<app> in the foreground from app.root,
// forwarding SIGINT and SIGTERM to it. Returns the app's exit code (128+N when a signal N ended
// it). Throws CommandError when the build fails or there is no binary.
int RunServe(const AppInfo& app, bool no_build);

// "exited with code 7"; a code above 128 that is 128 + a signal's number also names the signal, as
// shells report a process that signal ended: "exited with code 143 (128 + SIGTERM)".
std::string DescribeExit(int code);

// Runs `argv` in `dir` and waits; forwards SIGINT/SIGTERM while it runs. `env` (NAME, value)
// pairs are set in the child only, never overriding a variable already set. Returns its exit
// code (128+N for signal N); throws CommandError when it cannot be started.
int RunForeground(const std::vector<std::string>& argv, const std::string& dir,
                  const std::vector<std::pair<std::string, std::string>>& env = {});

}  // namespace spool::cli
