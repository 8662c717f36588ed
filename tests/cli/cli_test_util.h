#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "commands/commands.h"

namespace spool::cli::testing {

struct CliRun {
  int code = 0;
  std::string out;
  std::string err;
};

// Runs `spool args...` through cli::Run, as the binary does, capturing its output.
inline CliRun Spool(std::vector<std::string> args) {
  args.insert(args.begin(), "spool");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  CliRun run;
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  run.code = Run(static_cast<int>(argv.size()), argv.data());
  std::fflush(stdout);
  std::fflush(stderr);
  run.out = ::testing::internal::GetCapturedStdout();
  run.err = ::testing::internal::GetCapturedStderr();
  return run;
}

// A fresh directory under /tmp, removed with its contents at destruction.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/spool_cli_test_XXXXXX";
    if (mkdtemp(tmpl) == nullptr) std::abort();
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline std::string Slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteText(const std::filesystem::path& p, const std::string& text) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

// Every file and directory under `root` with its content: equal snapshots mean nothing changed.
inline std::map<std::string, std::string> Snapshot(const std::filesystem::path& root) {
  std::map<std::string, std::string> tree;
  for (const auto& e : std::filesystem::recursive_directory_iterator(root)) {
    const std::string rel = std::filesystem::relative(e.path(), root).string();
    tree[rel] = e.is_regular_file() ? Slurp(e.path()) : std::string("<dir>");
  }
  return tree;
}

// Compares `actual` with tests/cli/golden/`name`; UPDATE_GOLDEN=1 rewrites the golden file.
inline void ExpectGolden(const std::string& name, const std::string& actual) {
  const std::filesystem::path golden = std::filesystem::path(SPOOL_CLI_GOLDEN_DIR) / name;
  const char* update = std::getenv("UPDATE_GOLDEN");
  if (update != nullptr && std::string(update) == "1") {
    WriteText(golden, actual);
    return;
  }
  ASSERT_TRUE(std::filesystem::exists(golden))
      << golden << " is missing: run the test with UPDATE_GOLDEN=1 to create it";
  EXPECT_EQ(Slurp(golden), actual)
      << "differs from " << golden << " (UPDATE_GOLDEN=1 rewrites it if the change is intended)";
}

// Changes the working directory for the life of the object.
class ScopedCwd {
 public:
  explicit ScopedCwd(const std::filesystem::path& dir) : old_(std::filesystem::current_path()) {
    std::filesystem::current_path(dir);
  }
  ~ScopedCwd() { std::filesystem::current_path(old_); }
  ScopedCwd(const ScopedCwd&) = delete;
  ScopedCwd& operator=(const ScopedCwd&) = delete;

 private:
  std::filesystem::path old_;
};

}  // namespace spool::cli::testing
