#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>

namespace spool::cli {

// A .spoolrc: `key=value` lines, `#` comments, surrounding quotes stripped. Keys spool writes:
// app (name), db (sqlite|postgres), database_url.
struct SpoolRc {
  std::filesystem::path path;
  std::map<std::string, std::string> values;
  std::optional<std::string> Get(const std::string& key) const;
};

// The app folder the command runs in: the working directory or its nearest parent that has a
// .spoolrc (as git finds its repository); nullopt outside an app.
std::optional<std::filesystem::path> FindAppRoot();
// FindAppRoot(), else the working directory.
std::filesystem::path AppRoot();

// Reads `dir/.spoolrc`; nullopt when there is none. Throws CommandError on a malformed line.
std::optional<SpoolRc> ReadSpoolRc(const std::filesystem::path& dir);

// The database URL for a command: the --database-url flag, else $SPOOL_DATABASE_URL, else
// database_url in AppRoot()'s .spoolrc (a relative SQLite path there is the app folder's, so it
// is made absolute when the command runs in a subfolder). Throws CommandError (usage) saying where
// to put one if none is set, or naming where a url without a known scheme came from.
std::string ResolveDatabaseUrl(const std::string& flag_value);

// After ResolveDatabaseUrl took $SPOOL_DATABASE_URL over a different database_url in the app's
// .spoolrc: a line saying so (printed with a command's error), else empty. Clears it.
std::string TakeDatabaseUrlNote();

// True in an app folder (AppRoot() has a .spoolrc) that has no job queue yet (no jobs/registry.h):
// what `spool gen queue` sets up.
bool AppWithoutQueueHere();

// True when `url` is a SQLite URL naming a file that does not exist (yet).
bool DatabaseFileMissing(const std::string& url);

// The folder of a SQLite URL's file when that folder does not exist (nothing can create the
// database there), else nullopt. A relative path is the working directory's.
std::optional<std::filesystem::path> MissingSqliteFolder(const std::string& url);

// Throws CommandError when `url` is a SQLite URL whose file does not exist, so that a command
// which only reads or changes jobs leaves no empty database behind a mistyped path. The message
// names the path and what creates a database (spool gen queue in an app without a queue, else
// spool migration up).
void RequireDatabaseFile(const std::string& url);

}  // namespace spool::cli
