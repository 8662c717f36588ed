#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "commands/commands.h"
#include "common/config.h"

namespace spool::cli {
namespace {

// "unknown command ..." when a command that needs a subcommand got a word that is none of them
// (`spool jobs lsit`), else empty: CLI11 only says "A subcommand is required".
std::string UnknownSubcommand(CLI::App& app) {
  CLI::App* cur = &app;
  std::string path = "spool";
  for (;;) {
    const auto parsed = cur->get_subcommands();
    if (parsed.empty()) break;
    cur = parsed.front();
    path += " " + cur->get_name();
  }
  const std::vector<std::string> rest = cur->remaining();
  if (cur->get_require_subcommand_min() == 0 || rest.empty() || rest.front().starts_with("-")) {
    return {};
  }
  std::string names;
  for (const CLI::App* sub : cur->get_subcommands([](CLI::App*) { return true; })) {
    names += (names.empty() ? "" : ", ") + sub->get_name();
  }
  return fmt::format("unknown command \"{}\" for {}: use one of {} ({} --help)", rest.front(), path,
                     names, path);
}

void PrintUrlNote() {
  if (const std::string note = TakeDatabaseUrlNote(); !note.empty()) {
    fmt::print(stderr, "note: {}\n", note);
  }
}

}  // namespace

int Run(int argc, char** argv) {
  (void)TakeDatabaseUrlNote();  // tests run several commands in one process
  CLI::App app{"spool: durable background jobs for C++ applications", "spool"};
  app.set_version_flag("--version", std::string("spool ") + SPOOL_VERSION);
  app.require_subcommand(1);
  RegisterMigration(app);
  RegisterBench(app);
  RegisterDemo(app);
  RegisterJobs(app);
  RegisterQueues(app);
  RegisterScaffold(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    if (const std::string unknown = UnknownSubcommand(app); !unknown.empty()) {
      fmt::print(stderr, "error: {}\n", unknown);
      return kExitUsage;
    }
    app.exit(e);
    return kExitUsage;
  } catch (const CommandError& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    PrintUrlNote();
    return e.exit_code;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    PrintUrlNote();
    return kExitFailed;
  }
  return kExitOk;
}

}  // namespace spool::cli
