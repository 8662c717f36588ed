#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace spool::cli {

// One file a generator writes: `before` is the content it read (nullopt: the file is new).
struct FileChange {
  std::string path;  // relative to the app root, '/'-separated
  std::optional<std::string> before;
  std::string after;
};

// Everything a generator command will write, built in memory before anything touches the disk.
// Apply writes every file to a temp file next to it and renames them into place only when all
// temp files were written, so a failure leaves the app as it was.
class Plan {
 public:
  explicit Plan(std::filesystem::path root) : root_(std::move(root)) {}

  const std::filesystem::path& root() const { return root_; }
  const std::vector<FileChange>& changes() const { return changes_; }

  // Adds a new file. Throws CommandError if `path` escapes the root or is already planned.
  void Create(const std::string& path, std::string content);
  // Adds an edit of a file whose current content is `before`. Unchanged edits are dropped.
  void Edit(const std::string& path, std::string before, std::string after);
  // Reads a file of the app ("" and nullopt when missing). Refuses paths that escape the root.
  std::optional<std::string> Read(const std::string& path) const;

  // Checks that writing is possible: new files must not exist (unless `force`), edited files
  // must still hold `before`, and no path may leave the root, also through symlinks.
  // Throws CommandError naming the first offending file.
  void Check(bool force) const;
  // Check, then write. Returns nothing; throws CommandError (and undoes what it wrote) on failure.
  void Apply(bool force) const;
  // The unified diff of all changes (`--dry-run` output).
  std::string Diff() const;

 private:
  std::filesystem::path root_;
  std::vector<FileChange> changes_;
};

// `root / rel` after refusing absolute paths, `..` components and empty names. Throws
// CommandError when `rel` would leave the root.
std::filesystem::path SafeJoin(const std::filesystem::path& root, const std::string& rel);

// A unified diff of two texts with 3 lines of context, labelled a/`path` and b/`path`.
std::string UnifiedDiff(const std::string& path, const std::optional<std::string>& before,
                        const std::string& after);

// Reads a whole file; nullopt when it cannot be opened.
std::optional<std::string> ReadFile(const std::filesystem::path& path);

}  // namespace spool::cli
