// spool new, spool gen {queue,job,task}, spool serve: the scaffolding commands.
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "commands/commands.h"
#include "common/config.h"
#include "generator/app.h"
#include "generator/app_migrations.h"
#include "generator/generator.h"
#include "generator/names.h"
#include "generator/serve.h"

namespace spool::cli {
namespace fs = std::filesystem;
namespace {

struct GenFlags {
  bool dry_run = false;
  bool force = false;
};

void AddGenFlags(CLI::App* cmd, GenFlags& flags) {
  cmd->add_flag("--dry-run", flags.dry_run, "Print the changes as a unified diff; write nothing");
  cmd->add_flag("--force", flags.force,
                "Overwrite files spool generated before (what was edited in them is replaced)");
}

void Finish(const Generated& gen, const GenFlags& flags) {
  FinishGenerated(gen, flags.dry_run, flags.force);
}

fs::path Here() { return fs::absolute(fs::current_path()); }

// Refuses names that CLI11 would otherwise accept as positionals but are meant as flags.
void RefuseFlagLike(const std::string& value, std::string_view what) {
  if (!value.empty() && value.front() == '-') {
    throw CommandError(
        fmt::format("invalid {} \"{}\": it looks like a flag (see --help)", what, value),
        kExitUsage);
  }
}

void RegisterNew(CLI::App& parent) {
  struct Args {
    std::string name;
    std::string db;  // empty: the app's own with --force over one, else sqlite
    std::string database_url;
    std::string dir;
    GenFlags flags;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd =
      parent.add_subcommand("new", "Create a C++ service skeleton (CMake, HTTP server)");
  cmd->add_option("NAME", args->name, "App name: lowercase letters, digits, '_' or '-'")
      ->required();
  cmd->add_option("--db", args->db,
                  "Database kind: sqlite or postgres (default: --database-url's kind, else sqlite; "
                  "--force over an app keeps its own)")
      ->check(CLI::IsMember({"sqlite", "postgres"}));
  cmd->add_option("--database-url", args->database_url,
                  "Database URL (default: sqlite://app.db, or postgres://127.0.0.1:5432/NAME)");
  cmd->add_option("--dir", args->dir, "Folder to create (default: ./NAME)");
  AddGenFlags(cmd, args->flags);
  cmd->footer(
      "Creates CMakeLists.txt, src/main.cpp (serves GET / on 127.0.0.1:$PORT, default 8080),\n"
      "database/migrations/, .spoolrc, README.md and .gitignore.\n\n"
      "Examples:\n"
      "  spool new shop\n"
      "  spool new shop --database-url postgres://127.0.0.1:5432/shop\n"
      "  spool new shop --dir services/shop --dry-run");
  cmd->callback([args] {
    RefuseFlagLike(args->name, "app name");
    ValidateAppName(args->name);
    NewOptions options;
    options.name = args->name;
    if (!args->db.empty()) options.db = ParseDbKind(args->db, "--db", kExitUsage);
    options.database_url = args->database_url;
    options.dir = args->dir.empty() ? Here() / args->name : fs::absolute(args->dir);
    options.force = args->flags.force;
    Finish(PlanNew(options), args->flags);
  });
}

void RegisterGen(CLI::App& parent) {
  CLI::App* gen = parent.add_subcommand("gen", "Generate code in a spool app: queue, job, task");
  gen->require_subcommand(1);
  gen->footer(
      "Run inside an app made by spool new.\n\n"
      "Examples:\n"
      "  spool gen queue\n"
      "  spool gen job send_email\n"
      "  spool gen task nightly_report --schedule \"0 3 * * *\"");

  auto queue_flags = std::make_shared<GenFlags>();
  CLI::App* queue = gen->add_subcommand(
      "queue", "Set up the job queue: migration, jobs/ registry, main.cpp and CMake wiring");
  AddGenFlags(queue, *queue_flags);
  queue->footer(
      "Writes database/migrations/<timestamp>_setup_spool_queue.sql (spool's own tables for the\n"
      "app's db kind), jobs/registry.{h,cc}, and wires the client into src/main.cpp and\n"
      "CMakeLists.txt at their spool: marker lines. Once the queue is set up it changes nothing\n"
      "unless --force, which writes jobs/registry.cc again from what jobs/ holds (and\n"
      "jobs/registry.h and the queue's migration; a hand edit in them is replaced) and adds to\n"
      "src/main.cpp and CMakeLists.txt only the queue's blocks they lack.\n\n"
      "Examples:\n"
      "  spool gen queue\n"
      "  spool gen queue --dry-run\n"
      "  spool gen queue --force    # after deleting a job's files");
  queue->callback([queue_flags] {
    const AppInfo app = LoadApp(AppRoot());
    QueueOptions options;
    options.migrations = LibraryMigrations();
    options.force = queue_flags->force;
    Finish(PlanQueue(app, options), *queue_flags);
  });

  struct JobArgs {
    std::string name;
    std::string schedule;
    GenFlags flags;
  };
  auto job_args = std::make_shared<JobArgs>();
  CLI::App* job = gen->add_subcommand("job", "Add a job: jobs/NAME.{h,cc} and its test");
  job->add_option("NAME", job_args->name, "Job name, snake_case (send_email)")->required();
  AddGenFlags(job, job_args->flags);
  job->footer(fmt::format(
      "Writes jobs/NAME.h (NameArgs, NameWorker), jobs/NAME.cc, tests/jobs/NAME_test.cc and\n"
      "rewrites jobs/registry.cc. Needs spool gen queue first.\nName rule: {}.\n\n"
      "Examples:\n"
      "  spool gen job send_email\n"
      "  spool gen job sync_api      # types SyncAPIArgs, SyncAPIWorker",
      kJobNameRule));
  job->callback([job_args] {
    RefuseFlagLike(job_args->name, "job name");
    const AppInfo app = LoadApp(AppRoot());
    Finish(PlanJob(app, job_args->name, std::nullopt, job_args->flags.force), job_args->flags);
  });

  auto task_args = std::make_shared<JobArgs>();
  CLI::App* task =
      gen->add_subcommand("task", "Add a job that runs on a cron schedule (a periodic job)");
  task->add_option("NAME", task_args->name, "Task name, snake_case (nightly_report)")->required();
  task->add_option("--schedule", task_args->schedule,
                   "Cron: minute hour day-of-month month day-of-week (UTC), or @daily etc.")
      ->required();
  AddGenFlags(task, task_args->flags);
  task->footer(
      "Like spool gen job, and lists the task with its schedule in jobs::PeriodicJobs().\n"
      "The schedule is checked before anything is written.\n\n"
      "Examples:\n"
      "  spool gen task nightly_report --schedule \"0 3 * * *\"\n"
      "  spool gen task prune_sessions --schedule @hourly");
  task->callback([task_args] {
    RefuseFlagLike(task_args->name, "task name");
    const AppInfo app = LoadApp(AppRoot());
    Finish(PlanJob(app, task_args->name, task_args->schedule, task_args->flags.force),
           task_args->flags);
  });
}

void RegisterServe(CLI::App& parent) {
  auto no_build = std::make_shared<bool>(false);
  CLI::App* serve = parent.add_subcommand(
      "serve", "Build the app with CMake into ./build and run it in the foreground");
  serve->add_flag("--no-build", *no_build, "Run build/NAME as it is, without building");
  serve->footer(
      "Runs from the app folder; Ctrl-C (SIGINT) and SIGTERM are passed on to the app, and\n"
      "spool exits with the app's exit code.\n\n"
      "Examples:\n"
      "  spool serve\n"
      "  PORT=9000 spool serve --no-build");
  serve->callback([no_build] {
    const AppInfo app = LoadApp(AppRoot());
    const int rc = RunServe(app, *no_build);
    if (rc != 0) throw CommandError(fmt::format("{} {}", app.name, DescribeExit(rc)), rc);
  });
}

}  // namespace

void FinishGenerated(const Generated& gen, bool dry_run, bool force) {
  for (const auto& note : gen.notes) fmt::print("note: {}\n", note);
  if (dry_run) {
    fmt::print("{}", gen.plan.Diff());
    fmt::print("dry run: {} file(s) would change; nothing was written\n",
               gen.plan.changes().size());
    return;
  }
  gen.plan.Apply(force);
  fmt::print("spool: {}\n", gen.summary);
  for (const auto& c : gen.plan.changes()) {
    fmt::print("  {} {}\n", c.before ? "changed" : "created", c.path);
  }
  if (!gen.next_steps.empty()) {
    fmt::print("Next steps:\n");
    for (size_t i = 0; i < gen.next_steps.size(); ++i) {
      fmt::print("  {}. {}\n", i + 1, gen.next_steps[i]);
    }
  }
}

void RegisterScaffold(CLI::App& app) {
  RegisterNew(app);
  RegisterGen(app);
  RegisterServe(app);
}

}  // namespace spool::cli
