// End to end: install this build of spool to a temp prefix, generate an app with the spool
// binary (new, gen queue, gen job x2, gen task), build it with CMake against the prefix, run its
// job tests, then `spool serve` it: GET /, enqueue a job over HTTP, see it completed, and stop
// it with SIGINT through spool. Slow: label e2e. SPOOL_E2E_KEEP=1 keeps the temp folder.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "spool/client.h"

namespace {

namespace fs = std::filesystem;
using std::chrono::steady_clock;

struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/spool_e2e_XXXXXX";
    if (mkdtemp(tmpl) == nullptr) std::abort();
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    if (std::getenv("SPOOL_E2E_KEEP") == nullptr) fs::remove_all(path, ec);
  }
  fs::path path;
};

// Starts argv in `dir` with extra environment, output appended to `log`. Returns the pid.
pid_t Start(const std::vector<std::string>& argv, const fs::path& dir, const fs::path& log,
            const std::vector<std::string>& env = {}) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (chdir(dir.c_str()) != 0) _exit(126);
    for (const auto& e : env) putenv(const_cast<char*>(e.c_str()));
    FILE* out = std::freopen(log.c_str(), "a", stdout);
    if (out == nullptr || dup2(fileno(stdout), 2) < 0) _exit(126);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  return pid;
}

int Wait(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int RunIn(const std::vector<std::string>& argv, const fs::path& dir, const fs::path& log,
          const std::vector<std::string>& env = {}) {
  return Wait(Start(argv, dir, log, env));
}

std::string Slurp(const fs::path& p) {
  std::string s;
  if (FILE* f = std::fopen(p.c_str(), "rb")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
    std::fclose(f);
  }
  return s;
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// curl's output for a request, or "" while the server is not up yet.
std::string Curl(const std::vector<std::string>& args, const fs::path& dir, const fs::path& log) {
  const fs::path out = dir / "curl.out";
  fs::remove(out);
  std::vector<std::string> argv = {"curl", "-s", "-o", out.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  if (RunIn(argv, dir, log) != 0) return "";
  return Slurp(out);
}

TEST(GeneratedAppE2ETest, BuildsTestsServesAndRunsAJob) {
  if (std::system("command -v curl >/dev/null") != 0) GTEST_SKIP() << "curl is not installed";
  TempDir tmp;
  const fs::path app = tmp.path / "shop";
  const fs::path log = tmp.path / "log.txt";
  const std::string spool = SPOOL_BIN;
  auto fail_log = [&] { return "log:\n" + Slurp(log); };

  // SPOOL_E2E_PREFIX: test against spool installed there instead of installing this build.
  fs::path prefix = tmp.path / "prefix";
  if (const char* p = std::getenv("SPOOL_E2E_PREFIX"); p != nullptr && *p != '\0') {
    prefix = p;
  } else {
    ASSERT_EQ(
        RunIn({"cmake", "--install", SPOOL_BUILD_DIR, "--prefix", prefix.string()}, tmp.path, log),
        0)
        << fail_log();
  }
  ASSERT_EQ(RunIn({spool, "new", "shop"}, tmp.path, log), 0) << fail_log();
  ASSERT_EQ(RunIn({spool, "gen", "queue"}, app, log), 0) << fail_log();
  ASSERT_EQ(RunIn({spool, "gen", "job", "send_email"}, app, log), 0) << fail_log();
  ASSERT_EQ(RunIn({spool, "gen", "job", "sync_api"}, app, log), 0) << fail_log();
  ASSERT_EQ(RunIn({spool, "gen", "task", "nightly_report", "--schedule", "0 3 * * *"}, app, log), 0)
      << fail_log();

  // The generated app compiles against the installed spool, and its job tests pass.
  ASSERT_EQ(RunIn({"cmake", "-S", ".", "-B", "build", "-DCMAKE_PREFIX_PATH=" + prefix.string()},
                  app, log),
            0)
      << fail_log();
  ASSERT_EQ(RunIn({"cmake", "--build", "build", "-j2"}, app, log), 0) << fail_log();
  ASSERT_EQ(RunIn({"ctest", "--test-dir", "build", "--output-on-failure"}, app, log), 0)
      << fail_log();

  ASSERT_EQ(RunIn({spool, "migration", "up"}, app, log), 0) << fail_log();

  // spool serve (already built: --no-build) starts the server and the worker pool.
  const int port = FreePort();
  const std::string base = "http://127.0.0.1:" + std::to_string(port);
  const pid_t serve =
      Start({spool, "serve", "--no-build"}, app, log, {"PORT=" + std::to_string(port)});
  std::string hello;
  for (const auto deadline = steady_clock::now() + std::chrono::seconds(30);
       hello.empty() && steady_clock::now() < deadline;) {
    hello = Curl({base + "/"}, tmp.path, log);
    if (hello.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(hello, "Hello from shop\n") << fail_log();

  const std::string inserted =
      Curl({"-d", "{\"message\":\"hi\"}", base + "/jobs/send_email"}, tmp.path, log);
  ASSERT_EQ(inserted.rfind("{\"id\":", 0), 0u) << inserted << fail_log();
  const int64_t id = std::stoll(inserted.substr(6));

  auto client = spool::Client::Open("sqlite://" + (app / "app.db").string(), {});
  ASSERT_TRUE(client) << client.error().ToString();
  spool::JobState state = spool::JobState::kAvailable;
  for (const auto deadline = steady_clock::now() + std::chrono::seconds(30);
       state != spool::JobState::kCompleted && steady_clock::now() < deadline;) {
    auto job = (*client)->JobGet(id);
    ASSERT_TRUE(job) << job.error().ToString();
    state = job->state;
    if (state != spool::JobState::kCompleted) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  EXPECT_EQ(state, spool::JobState::kCompleted) << fail_log();

  // SIGINT to spool reaches the app, which shuts down cleanly; spool exits with its code.
  kill(serve, SIGINT);
  EXPECT_EQ(Wait(serve), 0) << fail_log();
  EXPECT_NE(Slurp(log).find("shop stopped"), std::string::npos) << fail_log();
}

}  // namespace

namespace {

TEST(GeneratedAppE2ETest, PostgresAppBuilds) {
  TempDir tmp;
  const fs::path app = tmp.path / "pgshop";
  const fs::path log = tmp.path / "log.txt";
  const std::string spool = SPOOL_BIN;
  auto fail_log = [&] { return "log:\n" + Slurp(log); };
  fs::path prefix = tmp.path / "prefix";
  if (const char* p = std::getenv("SPOOL_E2E_PREFIX"); p != nullptr && *p != '\0') {
    prefix = p;
  } else {
    ASSERT_EQ(
        RunIn({"cmake", "--install", SPOOL_BUILD_DIR, "--prefix", prefix.string()}, tmp.path, log),
        0)
        << fail_log();
  }
  ASSERT_EQ(RunIn({spool, "new", "pgshop", "--db", "postgres"}, tmp.path, log), 0) << fail_log();
  ASSERT_EQ(RunIn({spool, "gen", "queue"}, app, log), 0) << fail_log();
  ASSERT_EQ(RunIn({spool, "gen", "job", "send_email"}, app, log), 0) << fail_log();
  ASSERT_EQ(RunIn({"cmake", "-S", ".", "-B", "build", "-DCMAKE_PREFIX_PATH=" + prefix.string()},
                  app, log),
            0)
      << fail_log();
  // Only the app: its job tests open SQLite and the server needs a PostgreSQL server.
  ASSERT_EQ(RunIn({"cmake", "--build", "build", "-j2", "--target", "pgshop"}, app, log), 0)
      << fail_log();
}

}  // namespace
