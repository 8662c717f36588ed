#pragma once

#include <CLI/CLI.hpp>
#include <limits>
#include <stdexcept>
#include <string>

#include "spool/status.h"

namespace spool::cli {

// Exit codes of every spool command.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;  // the operation was refused or failed
inline constexpr int kExitUsage = 2;   // bad flags or arguments

// Thrown by a command's callback; main prints "error: <message>" and exits with exit_code.
struct CommandError : std::runtime_error {
  CommandError(const std::string& message, int code = kExitFailed)
      : std::runtime_error(message), exit_code(code) {}
  // A failed call's message; exit 2 when the caller's input was wrong (InvalidArgument: a
  // malformed url, a password or database the server refused, args that do not parse), else 1.
  explicit CommandError(const Status& failed)
      : CommandError(failed.message(), failed.IsInvalidArgument() ? kExitUsage : kExitFailed) {}
  int exit_code;
};

// Whole numbers of at least `min` (and at most `max`), refused in words ("must be a whole number
// of 1 or more, got 0"): CLI11's PositiveNumber prints its range as doubles up to 1.8e308, and
// its Range calls "abc" out of range.
inline CLI::Validator WholeNumberFrom(long long min,
                                      long long max = std::numeric_limits<long long>::max()) {
  return CLI::Validator(
      [min, max](std::string& value) -> std::string {
        long long n = 0;
        size_t used = 0;
        try {
          n = std::stoll(value, &used);
        } catch (const std::out_of_range&) {
          return "\"" + value + "\" is too large";
        } catch (const std::exception&) {
          used = 0;
        }
        if (used == 0 || used != value.size()) {
          return "\"" + value + "\" is not a whole number";
        }
        if (max != std::numeric_limits<long long>::max() && (n < min || n > max)) {
          return "must be a whole number from " + std::to_string(min) + " to " +
                 std::to_string(max) + ", got " + value;
        }
        if (n < min) {
          return "must be a whole number of " + std::to_string(min) + " or more, got " + value;
        }
        return {};
      },
      max == std::numeric_limits<long long>::max()
          ? "INT>=" + std::to_string(min)
          : "INT in [" + std::to_string(min) + " - " + std::to_string(max) + "]");
}

// The whole `spool` command: parses argv, runs the command, prints errors, returns the exit code.
// main() is only this; tests call it too, so they exercise exactly what users run.
int Run(int argc, char** argv);

// Each Register* adds one top-level command (with its subcommands) to `app`.
void RegisterMigration(CLI::App& app);
void RegisterBench(CLI::App& app);
void RegisterDemo(CLI::App& app);
// Admin commands over the public client API; defined in commands/jobs.cc.
void RegisterJobs(CLI::App& app);
void RegisterQueues(CLI::App& app);
// Scaffolding commands (new, gen, serve); defined in commands/scaffold.cc.
void RegisterScaffold(CLI::App& app);

}  // namespace spool::cli
