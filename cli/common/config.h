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

// Reads `dir/.spoolrc`; nullopt when there is none. Throws CommandError on a malformed line.
std::optional<SpoolRc> ReadSpoolRc(const std::filesystem::path& dir);

// The database URL for a command: the --database-url flag, else $SPOOL_DATABASE_URL, else
// database_url in ./.spoolrc. Throws CommandError (usage) saying where to put one if none is set.
std::string ResolveDatabaseUrl(const std::string& flag_value);

}  // namespace spool::cli
