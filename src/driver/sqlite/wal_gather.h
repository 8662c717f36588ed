#pragma once

// A SQLite VFS over the platform's default one that writes each commit's WAL frames with one
// write call instead of two per frame (a 24-byte frame header, then the page). Only files under
// src/driver/sqlite/ include this header.

namespace spool::internal {

// The name to pass to sqlite3_open_v2 for a connection whose WAL writes are gathered, registered
// (not as the default) on first call; nullptr if it could not be registered, and the default VFS
// is then used. Files other than the WAL are the default VFS's own, unchanged. A commit's frames
// reach the file before the commit is visible to any other connection or process, and a failed
// write fails the commit as it would without gathering.
const char* WalGatheringVfs();

}  // namespace spool::internal
