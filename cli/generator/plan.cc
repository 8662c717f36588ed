#include "generator/plan.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>

#include "commands/commands.h"

namespace spool::cli {
namespace fs = std::filesystem;
namespace {

std::vector<std::string> SplitLines(const std::string& text) {
  std::vector<std::string> lines;
  std::string line;
  std::istringstream in(text);
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

// True when `path` (made absolute, symlinks resolved as far as they exist) is inside `root`.
bool Inside(const fs::path& root, const fs::path& path) {
  std::error_code ec;
  const fs::path r = fs::weakly_canonical(root, ec);
  if (ec) return false;
  const fs::path p = fs::weakly_canonical(path, ec);
  if (ec) return false;
  auto rit = r.begin();
  auto pit = p.begin();
  for (; rit != r.end(); ++rit, ++pit) {
    if (rit->empty()) continue;  // trailing separator
    if (pit == p.end() || *rit != *pit) return false;
  }
  return true;
}

struct DiffOp {
  char tag;  // ' ', '-', '+'
  std::string line;
};

// Line diff by longest common subsequence: generated files are small.
std::vector<DiffOp> LineDiff(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  const size_t n = a.size();
  const size_t m = b.size();
  std::vector<std::vector<uint32_t>> lcs(n + 1, std::vector<uint32_t>(m + 1, 0));
  for (size_t i = n; i-- > 0;) {
    for (size_t j = m; j-- > 0;) {
      lcs[i][j] = a[i] == b[j] ? lcs[i + 1][j + 1] + 1 : std::max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  std::vector<DiffOp> ops;
  size_t i = 0;
  size_t j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] == b[j]) {
      ops.push_back({' ', a[i++]});
      ++j;
    } else if (j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j])) {
      ops.push_back({'+', b[j++]});
    } else {
      ops.push_back({'-', a[i++]});
    }
  }
  return ops;
}

// Writes `path`; an error names `shown` (the file the user knows, not its temp file) and why.
void WriteFileOrThrow(const fs::path& path, const std::string& content,
                      const fs::path& shown = {}) {
  errno = 0;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  out.flush();
  if (!out) {
    const int err = errno;
    throw CommandError(fmt::format("cannot write {}{}", (shown.empty() ? path : shown).string(),
                                   err != 0 ? ": " + std::string(std::strerror(err)) : ""));
  }
}

}  // namespace

std::optional<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

fs::path SafeJoin(const fs::path& root, const std::string& rel) {
  const fs::path p(rel);
  bool ok = !rel.empty() && p.is_relative() && !p.has_root_name();
  for (const auto& part : p) ok = ok && part != ".." && part != ".";
  if (!ok) {
    throw CommandError(
        fmt::format("refusing to write \"{}\": generated paths must stay inside "
                    "the app folder {}",
                    rel, root.string()));
  }
  return root / p;
}

void Plan::Create(const std::string& path, std::string content) {
  SafeJoin(root_, path);
  for (const auto& c : changes_) {
    if (c.path == path) throw CommandError(fmt::format("{} is planned twice", path));
  }
  changes_.push_back(FileChange{path, std::nullopt, std::move(content)});
}

void Plan::Edit(const std::string& path, std::string before, std::string after) {
  SafeJoin(root_, path);
  if (before == after) return;
  for (auto& c : changes_) {
    if (c.path == path) {
      c.after = std::move(after);
      return;
    }
  }
  changes_.push_back(FileChange{path, std::move(before), std::move(after)});
}

std::optional<std::string> Plan::Read(const std::string& path) const {
  const fs::path full = SafeJoin(root_, path);
  if (!Inside(root_, full)) {
    throw CommandError(
        fmt::format("refusing to read {}: it resolves outside the app folder", path));
  }
  return ReadFile(full);
}

void Plan::Check(bool force) const {
  for (const auto& c : changes_) {
    const fs::path full = SafeJoin(root_, c.path);
    if (!Inside(root_, full)) {
      throw CommandError(fmt::format(
          "refusing to write {}: it resolves (through a symlink) outside the app folder {}", c.path,
          root_.string()));
    }
    std::error_code ec;
    const bool exists = fs::exists(fs::symlink_status(full, ec));
    if (!c.before && exists && !force) {
      throw CommandError(fmt::format(
          "{} already exists: nothing was written (use --force to overwrite it)", c.path));
    }
    if (exists && fs::is_directory(full, ec)) {
      throw CommandError(fmt::format("{} is a directory: nothing was written", c.path));
    }
    if (c.before && ReadFile(full) != c.before) {
      throw CommandError(
          fmt::format("{} changed while spool was planning: nothing was written", c.path));
    }
  }
}

void Plan::Apply(bool force) const {
  Check(force);
  std::error_code ec;
  std::vector<fs::path> made_dirs;
  std::vector<std::pair<fs::path, fs::path>> staged;  // temp -> final
  auto undo_staging = [&] {
    for (const auto& [tmp, final_path] : staged) fs::remove(tmp, ec);
    for (auto it = made_dirs.rbegin(); it != made_dirs.rend(); ++it) fs::remove(*it, ec);
  };
  try {
    for (const auto& c : changes_) {
      const fs::path full = SafeJoin(root_, c.path);
      // Create missing parents one level at a time so a failure can remove exactly those.
      std::vector<fs::path> missing;
      for (fs::path d = full.parent_path(); !d.empty() && !fs::exists(d, ec); d = d.parent_path()) {
        missing.push_back(d);
      }
      for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
        if (!fs::create_directory(*it, ec) && ec) {
          throw CommandError(
              fmt::format("cannot create {}: {}; nothing was changed", it->string(), ec.message()));
        }
        made_dirs.push_back(*it);
      }
      if (!fs::is_directory(full.parent_path(), ec)) {
        throw CommandError(fmt::format("cannot write {}: {} is not a folder; nothing was changed",
                                       full.string(), full.parent_path().string()));
      }
      const fs::path tmp =
          full.parent_path() / fmt::format(".{}.spool-tmp-{}", full.filename().string(), getpid());
      staged.emplace_back(tmp, full);
      try {
        WriteFileOrThrow(tmp, c.after, full);
      } catch (const CommandError& e) {
        throw CommandError(std::string(e.what()) + "; nothing was changed");
      }
      if (c.before) {  // the rename must not reset the mode the user gave the file
        const auto mode = fs::status(full, ec).permissions();
        if (!ec) fs::permissions(tmp, mode, ec);
      }
    }
  } catch (...) {
    undo_staging();
    throw;
  }
  // Every temp file is written: renames are atomic per file and cannot run out of space.
  for (size_t i = 0; i < staged.size(); ++i) {
    fs::rename(staged[i].first, staged[i].second, ec);
    if (ec) {
      const std::string message = ec.message();
      for (size_t k = 0; k < i; ++k) {  // put back what was already renamed
        const auto& before = changes_[k].before;
        if (before) {
          WriteFileOrThrow(staged[k].second, *before);
        } else {
          fs::remove(staged[k].second, ec);
        }
      }
      staged.erase(staged.begin(), staged.begin() + static_cast<std::ptrdiff_t>(i));
      undo_staging();
      throw CommandError(fmt::format("cannot write {}: {}; nothing was changed",
                                     staged[0].second.string(), message));
    }
  }
}

std::string Plan::Diff() const {
  std::string out;
  for (const auto& c : changes_) out += UnifiedDiff(c.path, c.before, c.after);
  return out;
}

std::string UnifiedDiff(const std::string& path, const std::optional<std::string>& before,
                        const std::string& after) {
  const auto a = SplitLines(before.value_or(""));
  const auto b = SplitLines(after);
  const auto ops = LineDiff(a, b);
  std::string out = fmt::format("--- {}\n+++ b/{}\n", before ? "a/" + path : "/dev/null", path);
  constexpr size_t kContext = 3;
  size_t k = 0;
  while (k < ops.size()) {
    // Find the next change, then grow the hunk while changes are within 2*kContext lines.
    size_t first = k;
    while (first < ops.size() && ops[first].tag == ' ') ++first;
    if (first == ops.size()) break;
    size_t start = first >= kContext ? first - kContext : 0;
    start = std::max(start, k);
    size_t end = first;
    size_t last_change = first;
    while (end < ops.size()) {
      if (ops[end].tag != ' ') last_change = end;
      if (end - last_change > 2 * kContext) break;
      ++end;
    }
    end = std::min(ops.size(), last_change + kContext + 1);
    // Line numbers of the hunk start in a and b.
    size_t a_line = 0;
    size_t b_line = 0;
    for (size_t q = 0; q < start; ++q) {
      if (ops[q].tag != '+') ++a_line;
      if (ops[q].tag != '-') ++b_line;
    }
    size_t a_count = 0;
    size_t b_count = 0;
    std::string body;
    for (size_t q = start; q < end; ++q) {
      if (ops[q].tag != '+') ++a_count;
      if (ops[q].tag != '-') ++b_count;
      body += ops[q].tag;
      body += ops[q].line;
      body += '\n';
    }
    out += fmt::format("@@ -{},{} +{},{} @@\n", a_count == 0 ? a_line : a_line + 1, a_count,
                       b_count == 0 ? b_line : b_line + 1, b_count);
    out += body;
    k = end;
  }
  return out;
}

}  // namespace spool::cli
