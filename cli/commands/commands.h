#pragma once

#include <CLI/CLI.hpp>
#include <stdexcept>
#include <string>

namespace spool::cli {

// Exit codes of every spool command.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;  // the operation was refused or failed
inline constexpr int kExitUsage = 2;   // bad flags or arguments

// Thrown by a command's callback; main prints "error: <message>" and exits with exit_code.
struct CommandError : std::runtime_error {
  CommandError(const std::string& message, int code = kExitFailed)
      : std::runtime_error(message), exit_code(code) {}
  int exit_code;
};

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
