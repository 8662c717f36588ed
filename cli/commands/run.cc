#include <fmt/format.h>

#include <cstdio>
#include <exception>

#include "commands/commands.h"

namespace spool::cli {

int Run(int argc, char** argv) {
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
    app.exit(e);
    return kExitUsage;
  } catch (const CommandError& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return e.exit_code;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return kExitFailed;
  }
  return kExitOk;
}

}  // namespace spool::cli
