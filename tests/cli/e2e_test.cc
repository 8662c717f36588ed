// End to end, as issue 5 lists it: install this build of spool to a temp prefix; with the spool
// binary: new -> gen queue -> gen job send_email -> gen job sync_api -> gen task nightly_report
// --schedule "0 3 * * *"; refused commands change no file; build the app against the prefix and
// run its job tests; migration up; serve; one job enqueued through the sample HTTP route and one
// through `spool jobs add` both reach completed (`spool jobs list --json`); SIGTERM stops the app
// within its stop timeout with no job left running. Built twice: for SQLite, and (with
// SPOOL_E2E_POSTGRES) for PostgreSQL on a schema of the test cluster. Slow: label e2e-slow.
// SPOOL_E2E_KEEP=1 keeps the temp folder.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "spool/client.h"
#ifdef SPOOL_E2E_POSTGRES
#include "postgres_test_db.h"
#endif

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

// Every file under `root` (but build/ and the SQLite files) with its content.
std::map<std::string, std::string> Tree(const fs::path& root) {
  std::map<std::string, std::string> tree;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
       ++it) {
    const std::string rel = fs::relative(it->path(), root).string();
    if (rel == "build" || rel.starts_with("app.db")) {
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    tree[rel] = it->is_regular_file() ? Slurp(it->path()) : std::string("<dir>");
  }
  return tree;
}

// `spool jobs list --json` as JSON (null when the command fails).
nlohmann::json ListJobs(const std::string& spool, const fs::path& app, const fs::path& log) {
  const fs::path out = app.parent_path() / "jobs.json";
  fs::remove(out);
  const pid_t pid = Start({spool, "jobs", "list", "--json"}, app, out);
  if (Wait(pid) != 0) {
    std::ofstream(log, std::ios::app) << Slurp(out);
    return nullptr;
  }
  return nlohmann::json::parse(Slurp(out), nullptr, false);
}

std::string StateOf(const nlohmann::json& jobs, int64_t id) {
  if (!jobs.is_array()) return "?";
  for (const auto& j : jobs) {
    if (j.value("id", int64_t{0}) == id) return j.value("state", std::string("?"));
  }
  return "absent";
}

// Waits for `pid` up to `timeout`; -1 when it is still running then.
int WaitFor(pid_t pid, std::chrono::seconds timeout) {
  for (const auto deadline = steady_clock::now() + timeout; steady_clock::now() < deadline;) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return -1;
}

// The pids of the processes running `exe` (the app this test built: no other process runs it).
std::vector<pid_t> PidsRunning(const fs::path& exe) {
  std::vector<pid_t> pids;
  std::error_code ec;
  const fs::path target = fs::weakly_canonical(exe, ec);  // /proc shows the resolved path
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    const auto digit = [](char c) { return c >= '0' && c <= '9'; };
    if (name.empty() || !std::all_of(name.begin(), name.end(), digit)) continue;
    if (fs::read_symlink(e.path() / "exe", ec) == target) pids.push_back(std::stoi(name));
  }
  return pids;
}

// Ends `spool serve` and the app it started (its own process group) if they are still running
// after a failed check, so no test leaves them behind.
void KillServe(pid_t serve, const fs::path& app_binary) {
  for (const pid_t pid : PidsRunning(app_binary)) kill(pid, SIGKILL);
  kill(serve, SIGKILL);
  Wait(serve);
}

// Waits until `log` holds `text`; false after `timeout`.
bool WaitForLog(const fs::path& log, const std::string& text, std::chrono::seconds timeout) {
  for (const auto deadline = steady_clock::now() + timeout; steady_clock::now() < deadline;) {
    if (Slurp(log).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// Writes `text` into `file` just before `anchor`, as a user editing generated code would.
void InsertBefore(const fs::path& file, const std::string& anchor, const std::string& text) {
  std::string code = Slurp(file);
  const size_t at = code.find(anchor);
  ASSERT_NE(at, std::string::npos) << anchor << " not in " << file << ":\n" << code;
  code.insert(at, text);
  std::ofstream(file) << code;
}

// The whole flow for one database kind: `db` is "sqlite" or "postgres" (then `url` is used).
void RunFlow(const std::string& db, const std::string& url) {
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
  std::vector<std::string> new_cmd = {spool, "new", "shop"};
  if (db == "postgres") new_cmd.insert(new_cmd.end(), {"--db", "postgres", "--database-url", url});
  ASSERT_EQ(RunIn(new_cmd, tmp.path, log), 0) << fail_log();
  ASSERT_EQ(RunIn({spool, "gen", "queue"}, app, log), 0) << fail_log();
  ASSERT_EQ(RunIn({spool, "gen", "job", "send_email"}, app, log), 0) << fail_log();
  ASSERT_EQ(RunIn({spool, "gen", "job", "sync_api"}, app, log), 0) << fail_log();
  // A job that ignores its cancelled context, as real ones sometimes do (a blocking call with no
  // timeout): only a third signal gets the app out while it runs.
  const fs::path job = app / "jobs/sync_api.cc";
  ASSERT_NO_FATAL_FAILURE(
      InsertBefore(job, "  return spool::Outcome::Done();",
                   "  while (args.message == \"stubborn\") {\n"
                   "    std::this_thread::sleep_for(std::chrono::milliseconds(20));\n"
                   "  }\n"));
  ASSERT_NO_FATAL_FAILURE(InsertBefore(job, "#include", "#include <chrono>\n#include <thread>\n"));
  // A request that never ends (a handler stuck on a call with no timeout): only a second signal
  // gets the app out while the server waits for it.
  ASSERT_NO_FATAL_FAILURE(
      InsertBefore(app / "src/main.cpp", "  // spool:routes",
                   "  server.Get(\"/hang\", [](const httplib::Request&, httplib::Response&) {\n"
                   "    std::cout << \"shop: answering /hang\" << std::endl;\n"
                   "    for (;;) std::this_thread::sleep_for(std::chrono::milliseconds(20));\n"
                   "  });\n"));
  ASSERT_EQ(RunIn({spool, "gen", "task", "nightly_report", "--schedule", "0 3 * * *"}, app, log), 0)
      << fail_log();
  EXPECT_NE(Slurp(app / "jobs/registry.cc")
                .find("periodic.push_back(Task<NightlyReportArgs>(\"nightly_report\"));"),
            std::string::npos);
  EXPECT_NE(Slurp(app / "src/main.cpp").find("spool_options.periodic_jobs = jobs::PeriodicJobs()"),
            std::string::npos);
  // The task's Configure is where its time zone and other settings go: run_on_start makes the
  // app enqueue it at its first start, which the run below checks.
  ASSERT_NO_FATAL_FAILURE(
      InsertBefore(app / "jobs/nightly_report.h", "(void)task; }",
                   "task.time_zone = \"Europe/Kyiv\"; task.run_on_start = true; "));

  // Refused commands and --dry-run change no file.
  const auto before = Tree(app);
  EXPECT_EQ(RunIn({spool, "gen", "queue"}, app, log), 1) << fail_log();
  EXPECT_EQ(RunIn({spool, "gen", "job", "send_email"}, app, log), 1) << fail_log();
  for (const char* bad : {"9lives", "class", "../x", "a b", ""}) {
    EXPECT_NE(RunIn({spool, "gen", "job", bad}, app, log), 0) << bad << fail_log();
  }
  EXPECT_EQ(RunIn({spool, "gen", "task", "weekly", "--schedule", "61 * * * *"}, app, log), 2)
      << fail_log();
  EXPECT_EQ(RunIn({spool, "gen", "job", "extra", "--dry-run"}, app, log), 0) << fail_log();
  EXPECT_EQ(RunIn({spool, "gen", "task", "extra", "--schedule", "@daily", "--dry-run"}, app, log),
            0)
      << fail_log();
  EXPECT_TRUE(Tree(app) == before) << "a refused command or --dry-run changed a file" << fail_log();

  // The generated app compiles against the installed spool, and its job tests pass.
  ASSERT_EQ(RunIn({"cmake", "-S", ".", "-B", "build", "-DCMAKE_PREFIX_PATH=" + prefix.string()},
                  app, log),
            0)
      << fail_log();
  ASSERT_EQ(RunIn({"cmake", "--build", "build", "-j2"}, app, log), 0) << fail_log();
  ASSERT_EQ(RunIn({"ctest", "--test-dir", "build", "--output-on-failure"}, app, log), 0)
      << fail_log();

  ASSERT_EQ(RunIn({spool, "migration", "up"}, app, log), 0) << fail_log();
  // The library accepts the schema `migration up` made (no auto_migrate).
  {
    const std::string client_url = db == "sqlite" ? "sqlite://" + (app / "app.db").string() : url;
    auto client = spool::Client::Open(client_url, {});
    ASSERT_TRUE(client) << client.error().ToString();
  }

  // Three deploys at once (a node each) apply a new app migration once, and all succeed: the
  // second and third wait for the first and find the step done.
  ASSERT_EQ(RunIn({spool, "migration", "create", "add_widgets"}, app, log), 0) << fail_log();
  for (const auto& e : fs::directory_iterator(app / "database/migrations")) {
    if (e.path().filename().string().ends_with("_add_widgets.sql")) {
      std::ofstream(e.path()) << "-- +goose Up\nCREATE TABLE widgets (id integer);\n"
                                 "-- +goose Down\nDROP TABLE widgets;\n";
    }
  }
  std::vector<pid_t> deploys;
  for (int i = 0; i < 3; ++i) deploys.push_back(Start({spool, "migration", "up"}, app, log, {}));
  for (const pid_t pid : deploys) EXPECT_EQ(Wait(pid), 0) << fail_log();

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
      Curl({"--json", "{\"message\":\"hi\"}", base + "/jobs/send_email"}, tmp.path, log);
  ASSERT_EQ(inserted.rfind("{\"id\":", 0), 0u) << inserted << fail_log();
  // Any kind the app has no job for is answered in words, also one the route's names never are.
  EXPECT_EQ(Curl({"--json", "{}", base + "/jobs/Send_Email"}, tmp.path, log),
            "no job kind Send_Email in jobs/\n")
      << fail_log();
  const int64_t http_id = std::stoll(inserted.substr(6));
  // Args the worker cannot read are refused by the route, not inserted to fail every attempt.
  const std::string refused =
      Curl({"-d", "{\"to\":\"x\"}", base + "/jobs/send_email"}, tmp.path, log);
  EXPECT_NE(refused.find("cannot parse args of kind send_email"), std::string::npos)
      << refused << fail_log();
  EXPECT_EQ(Curl({base + "/jobs/send_email"}, tmp.path, log),
            "POST the job's args as JSON to enqueue it\n")
      << fail_log();
  // A second copy of the app on the same port is refused, not handed half of the requests.
  const fs::path second_log = tmp.path / "second.log";
  EXPECT_EQ(Wait(Start({(app / "build/shop").string()}, app, second_log,
                       {"PORT=" + std::to_string(port)})),
            1)
      << Slurp(second_log);
  EXPECT_NE(Slurp(second_log).find("cannot listen on 127.0.0.1:" + std::to_string(port)),
            std::string::npos)
      << Slurp(second_log);

  const fs::path add_out = tmp.path / "add.json";
  ASSERT_EQ(
      Wait(Start({spool, "jobs", "add", "sync_api", "--args", "{\"message\":\"cli\"}", "--json"},
                 app, add_out)),
      0)
      << Slurp(add_out) << fail_log();
  const auto added = nlohmann::json::parse(Slurp(add_out), nullptr, false);
  ASSERT_TRUE(added.is_object() && added.contains("id")) << Slurp(add_out);
  const int64_t cli_id = added["id"].is_string() ? std::stoll(added["id"].get<std::string>())
                                                 : added["id"].get<int64_t>();

  std::string http_state;
  std::string cli_state;
  bool task_ran = false;
  for (const auto deadline = steady_clock::now() + std::chrono::seconds(30);
       steady_clock::now() < deadline;) {
    const auto jobs = ListJobs(spool, app, log);
    http_state = StateOf(jobs, http_id);
    cli_state = StateOf(jobs, cli_id);
    task_ran = jobs.is_array() && std::any_of(jobs.begin(), jobs.end(), [](const auto& j) {
                 return j.value("kind", std::string()) == "nightly_report" &&
                        j.value("state", std::string()) == "completed";
               });
    if (http_state == "completed" && cli_state == "completed" && task_ran) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(http_state, "completed") << fail_log();
  EXPECT_EQ(cli_state, "completed") << fail_log();
  EXPECT_TRUE(task_ran) << "the task's run_on_start, set in its Configure" << fail_log();

  // SIGTERM to spool reaches the app, which stops within its 30 s stop timeout.
  const fs::path app_binary = app / "build/shop";
  kill(serve, SIGTERM);
  const int rc = WaitFor(serve, std::chrono::seconds(45));
  if (rc == -1) KillServe(serve, app_binary);
  EXPECT_EQ(rc, 0) << fail_log();
  EXPECT_NE(Slurp(log).find("shop stopped"), std::string::npos) << fail_log();
  const auto jobs = ListJobs(spool, app, log);
  ASSERT_TRUE(jobs.is_array()) << fail_log();
  for (const auto& j : jobs) EXPECT_NE(j.value("state", std::string()), "running") << j.dump();

  // A job that ignores its cancelled context: the first signal starts the stop, the second
  // cancels the job (which goes on), the third exits at once with 128 + SIGTERM. Each signal is
  // sent once the app has said it acted on the one before (signals pending together merge).
  const fs::path stubborn_log = tmp.path / "stubborn.log";
  const pid_t again =
      Start({spool, "serve", "--no-build"}, app, stubborn_log, {"PORT=" + std::to_string(port)});
  const fs::path stubborn_out = tmp.path / "stubborn.json";
  ASSERT_EQ(Wait(Start({spool, "jobs", "add", "sync_api", "--args", "{\"message\":\"stubborn\"}",
                        "--json"},
                       app, stubborn_out)),
            0)
      << Slurp(stubborn_out);
  const auto stubborn = nlohmann::json::parse(Slurp(stubborn_out), nullptr, false);
  ASSERT_TRUE(stubborn.is_object() && stubborn.contains("id")) << Slurp(stubborn_out);
  const int64_t stubborn_id = stubborn["id"].is_string()
                                  ? std::stoll(stubborn["id"].get<std::string>())
                                  : stubborn["id"].get<int64_t>();
  std::string stubborn_state;
  for (const auto deadline = steady_clock::now() + std::chrono::seconds(30);
       stubborn_state != "running" && steady_clock::now() < deadline;) {
    stubborn_state = StateOf(ListJobs(spool, app, log), stubborn_id);
    if (stubborn_state != "running") std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(stubborn_state, "running") << Slurp(stubborn_log);
  EXPECT_EQ(PidsRunning(app_binary).size(), 1u) << "the app is found by its binary";
  kill(again, SIGTERM);
  const bool stopping =
      WaitForLog(stubborn_log, "stopping: running jobs get", std::chrono::seconds(30));
  if (stopping) kill(again, SIGTERM);
  const bool cancelling =
      stopping && WaitForLog(stubborn_log, "cancelling the running jobs", std::chrono::seconds(30));
  if (cancelling) kill(again, SIGTERM);
  const int stubborn_rc = cancelling ? WaitFor(again, std::chrono::seconds(30)) : -1;
  if (stubborn_rc == -1) KillServe(again, app_binary);
  EXPECT_TRUE(stopping && cancelling) << Slurp(stubborn_log);
  EXPECT_EQ(stubborn_rc, 128 + SIGTERM) << Slurp(stubborn_log);
  EXPECT_NE(Slurp(stubborn_log).find("exiting without waiting: jobs still running stay `running`"),
            std::string::npos)
      << Slurp(stubborn_log);
  EXPECT_TRUE(PidsRunning(app_binary).empty()) << "the app is still running";
  EXPECT_EQ(StateOf(ListJobs(spool, app, log), stubborn_id), "running")
      << "left for the rescuer, as the message says";

  // A request that never ends: the first signal stops the server, which waits for it; the second
  // exits at once with 128 + SIGTERM.
  const fs::path hang_log = tmp.path / "hang.log";
  const pid_t third =
      Start({spool, "serve", "--no-build"}, app, hang_log, {"PORT=" + std::to_string(port)});
  const bool listening = WaitForLog(hang_log, "listening on", std::chrono::seconds(30));
  const pid_t hanging_curl = listening ? Start({"curl", "-s", "-m", "120", base + "/hang"},
                                               tmp.path, tmp.path / "hang.out")
                                       : -1;
  const bool answering =
      listening && WaitForLog(hang_log, "shop: answering /hang", std::chrono::seconds(30));
  if (answering) kill(third, SIGTERM);
  const bool waiting = answering && WaitForLog(hang_log, "waiting for the requests being answered",
                                               std::chrono::seconds(30));
  if (waiting) kill(third, SIGTERM);
  const int hang_rc = waiting ? WaitFor(third, std::chrono::seconds(30)) : -1;
  if (hang_rc == -1) KillServe(third, app_binary);
  if (hanging_curl > 0 && WaitFor(hanging_curl, std::chrono::seconds(10)) == -1) {
    kill(hanging_curl, SIGKILL);
    Wait(hanging_curl);
  }
  EXPECT_TRUE(listening && answering && waiting) << Slurp(hang_log);
  EXPECT_EQ(hang_rc, 128 + SIGTERM) << Slurp(hang_log);
  EXPECT_NE(Slurp(hang_log).find("exiting without waiting for the requests still being answered"),
            std::string::npos)
      << Slurp(hang_log);
  EXPECT_TRUE(PidsRunning(app_binary).empty()) << "the app is still running";
}

#ifndef SPOOL_E2E_POSTGRES
TEST(GeneratedAppE2ETest, SqliteAppFromNewToServe) { RunFlow("sqlite", ""); }
#else
// PostgreSQL: the same flow on a fresh schema of the test cluster (SPOOL_TEST_DATABASE_URL or the
// pg_cluster_start fixture); skipped without one unless SPOOL_REQUIRE_POSTGRES=1.
TEST(GeneratedAppE2ETest, PostgresAppFromNewToServe) {
  SPOOL_REQUIRE_PG_CLUSTER();
  auto url = spool::pgtest::PostgresTestDb::Instance().NewSchemaUrl();
  ASSERT_TRUE(url) << url.error().ToString();
  RunFlow("postgres", *url);
  spool::pgtest::PostgresTestDb::Instance().DropSchemas();
}
#endif

}  // namespace
