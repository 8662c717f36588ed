#include "generator/serve.h"

#include <fmt/format.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "commands/commands.h"

namespace spool::cli {
namespace fs = std::filesystem;
namespace {

volatile sig_atomic_t g_child_pid = 0;
volatile sig_atomic_t g_forwarded_signal = 0;  // the last signal forwarded, 0 if none

extern "C" void ForwardSignal(int signal_number) {
  // The whole group: cmake's compilers, or the app and anything it started.
  const pid_t pid = g_child_pid;
  if (pid > 0) kill(-pid, signal_number);
  g_forwarded_signal = signal_number;
}

// A build step that failed because the user stopped it (Ctrl-C) is not a failed build: exit as
// interrupted, with the shell's 128+N.
void ThrowIfInterrupted(std::string_view step) {
  if (const int sig = g_forwarded_signal; sig != 0) {
    throw CommandError(
        fmt::format("{} was interrupted ({})", step, sig == SIGINT ? "Ctrl-C" : "SIGTERM"),
        128 + sig);
  }
}

// The install prefix of this spool binary when it has spool's CMake package next to it, so the
// app finds the same spool without CMAKE_PREFIX_PATH.
std::string OwnInstallPrefix() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  const fs::path prefix = exe.parent_path().parent_path();
  for (const char* lib : {"lib", "lib64", "lib/x86_64-linux-gnu"}) {
    if (fs::exists(prefix / lib / "cmake/spool/spoolConfig.cmake", ec)) return prefix.string();
  }
  return {};
}

}  // namespace

int RunForeground(const std::vector<std::string>& argv, const std::string& dir,
                  const std::vector<std::pair<std::string, std::string>>& env) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  // The child's environment, built before fork: nothing that allocates runs between fork and exec.
  std::vector<std::string> added;
  for (const auto& [name, value] : env) {
    if (std::getenv(name.c_str()) == nullptr) added.push_back(name + "=" + value);
  }
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  for (auto& a : added) envp.push_back(a.data());
  envp.push_back(nullptr);

  struct sigaction forward {};
  forward.sa_handler = ForwardSignal;
  sigemptyset(&forward.sa_mask);
  struct sigaction old_int {};
  struct sigaction old_term {};
  sigaction(SIGINT, &forward, &old_int);
  sigaction(SIGTERM, &forward, &old_term);

  const pid_t pid = fork();
  if (pid < 0) {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
    throw CommandError(fmt::format("cannot start {}: {}", argv[0], std::strerror(errno)));
  }
  if (pid == 0) {
    // Its own process group: a terminal's Ctrl-C reaches only spool, which forwards it once.
    // exec resets the forwarding handlers to the default; the mask must be cleared by hand.
    setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (chdir(dir.c_str()) != 0) _exit(127);
    execvpe(args[0], args.data(), envp.data());
    fmt::print(stderr, "error: cannot run {}: {}\n", argv[0], std::strerror(errno));
    _exit(127);
  }
  setpgid(pid, pid);  // also here, so the group exists before the first forwarded signal
  g_child_pid = pid;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  g_child_pid = 0;
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return kExitFailed;
}

std::string DescribeExit(int code) {
  std::string text = fmt::format("exited with code {}", code);
  if (code > 128) {
    if (const char* name = sigabbrev_np(code - 128)) text += fmt::format(" (128 + SIG{})", name);
  }
  return text;
}

int RunServe(const AppInfo& app, bool no_build) {
  const fs::path build_dir = app.root / "build";
  g_forwarded_signal = 0;
  if (!no_build) {
    std::vector<std::string> configure = {"cmake", "-S", app.root.string(), "-B",
                                          build_dir.string()};
    const char* prefix_env = std::getenv("CMAKE_PREFIX_PATH");
    if (prefix_env == nullptr || *prefix_env == '\0') {
      if (const std::string prefix = OwnInstallPrefix(); !prefix.empty()) {
        configure.push_back("-DCMAKE_PREFIX_PATH=" + prefix);
      }
    }
    if (const int rc = RunForeground(configure, app.root.string()); rc != 0) {
      ThrowIfInterrupted("cmake configure");
      throw CommandError(fmt::format("cmake configure failed (exit {}): see the errors above", rc));
    }
    if (const int rc =
            // Only the app: its job tests (which ctest runs) would compile every job twice.
        RunForeground({"cmake", "--build", build_dir.string(), "-j2", "--target", app.name},
                      app.root.string());
        rc != 0) {
      ThrowIfInterrupted("the build");
      throw CommandError(fmt::format("the build failed (exit {}): see the errors above", rc));
    }
  }
  ThrowIfInterrupted("spool serve");  // a Ctrl-C the build survived still means stop
  const fs::path binary = build_dir / app.name;
  std::error_code ec;
  if (!fs::exists(binary, ec)) {
    throw CommandError(fmt::format("{} not found: run spool serve without --no-build",
                                   fs::relative(binary, app.root, ec).string()));
  }
  fmt::print("spool serve: running {} (Ctrl-C stops it)\n", binary.string());
  std::fflush(stdout);
  // The app reads the same URL the CLI uses: $SPOOL_DATABASE_URL when set, else .spoolrc's
  // (whole, password included: generated source only holds it without one).
  return RunForeground({binary.string()}, app.root.string(),
                       {{"SPOOL_DATABASE_URL", app.database_url}});
}

}  // namespace spool::cli
