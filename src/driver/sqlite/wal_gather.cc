#include "driver/sqlite/wal_gather.h"

#include <sqlite3.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

// Why: SQLite writes each WAL frame as two writes (its 24-byte header, then the page), so a commit
// of 14 pages costs 28 system calls, which on a VM are a large part of the writer's time. This
// VFS keeps a WAL file's consecutive writes in a buffer and writes them as one:
// - right after the page of a commit frame (the frame header's second field, the database size
//   after the commit, is non-zero only there; https://sqlite.org/fileformat2.html#walformat),
//   inside the xWrite call SQLite makes for that page, so a failed write fails the commit;
// - before anything else reads, sizes, truncates, syncs or closes the file;
// - as a safety net, on the database file's xShmBarrier, which SQLite calls between writing the
//   two copies of the wal-index header that publish a commit, so no reader can see a commit
//   whose frames are still in memory. It never has work to do when the commit frame was seen.
// The database file, the shared memory and every other file are the default VFS's own.

namespace spool::internal {
namespace {

constexpr int kWalHeaderBytes = 32;
constexpr int kFrameHeaderBytes = 24;
// The most the unix VFS writes in one call: it silently truncates a longer write to its low 17
// bits (and then fails it as a full disk).
constexpr int kBufferBytes = 0x1ffff;

struct GatherFile {
  sqlite3_file base;
  sqlite3_file* real;  // the default VFS's file, stored right after this struct
  GatherFile* wal;     // database file: its open WAL file, if any
  GatherFile* db;      // WAL file: its database file, if it is one of ours
  unsigned char* buf;  // WAL file: pending bytes, written at buf_off
  sqlite3_int64 buf_off;
  int buf_len;
  bool flush_after_next;  // the last write was a commit frame's header
};

sqlite3_vfs* RealVfs(sqlite3_vfs* vfs) { return static_cast<sqlite3_vfs*>(vfs->pAppData); }
GatherFile* Cast(sqlite3_file* f) { return reinterpret_cast<GatherFile*>(f); }
sqlite3_file* Real(sqlite3_file* f) { return Cast(f)->real; }

int Flush(GatherFile* f) {
  if (f->buf_len == 0) return SQLITE_OK;
  const int n = f->buf_len;
  f->buf_len = 0;
  f->flush_after_next = false;
  return f->real->pMethods->xWrite(f->real, f->buf, n, f->buf_off);
}

uint32_t BigEndian32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// Calls the same method of the underlying file, first writing out pending WAL bytes when the
// method could observe them.
template <auto Member, bool kFlushFirst>
struct Forward;
template <typename R, typename... A, R (*sqlite3_io_methods::*Member)(sqlite3_file*, A...),
          bool kFlushFirst>
struct Forward<Member, kFlushFirst> {
  static R Call(sqlite3_file* f, A... args) {
    if constexpr (kFlushFirst) {
      const int rc = Flush(Cast(f));
      if (rc != SQLITE_OK) return rc;
    }
    sqlite3_file* real = Real(f);
    return (real->pMethods->*Member)(real, args...);
  }
};
template <auto Member>
using Plain = Forward<Member, false>;
template <auto Member>
using Flushing = Forward<Member, true>;

int WalWrite(sqlite3_file* file, const void* data, int amt, sqlite3_int64 off) {
  GatherFile* f = Cast(file);
  if (f->buf_len > 0 && (off != f->buf_off + f->buf_len || f->buf_len + amt > kBufferBytes)) {
    const int rc = Flush(f);
    if (rc != SQLITE_OK) return rc;
  }
  if (f->buf == nullptr) f->buf = static_cast<unsigned char*>(sqlite3_malloc(kBufferBytes));
  if (f->buf == nullptr || amt > kBufferBytes) {
    return f->real->pMethods->xWrite(f->real, data, amt, off);
  }
  if (f->buf_len == 0) f->buf_off = off;
  std::memcpy(f->buf + f->buf_len, data, static_cast<size_t>(amt));
  f->buf_len += amt;
  if (f->flush_after_next) return Flush(f);
  f->flush_after_next = amt == kFrameHeaderBytes && off >= kWalHeaderBytes &&
                        BigEndian32(static_cast<const unsigned char*>(data) + 4) != 0;
  return SQLITE_OK;
}

int WalClose(sqlite3_file* file) {
  GatherFile* f = Cast(file);
  int rc = Flush(f);
  if (f->db != nullptr) f->db->wal = nullptr;
  sqlite3_free(f->buf);
  f->buf = nullptr;
  const int close_rc = f->real->pMethods->xClose(f->real);
  return rc != SQLITE_OK ? rc : close_rc;
}

int DbClose(sqlite3_file* file) {
  GatherFile* f = Cast(file);
  if (f->wal != nullptr) f->wal->db = nullptr;
  return f->real->pMethods->xClose(f->real);
}

int DbShmMap(sqlite3_file* file, int page, int page_bytes, int extend, void volatile** out) {
  GatherFile* f = Cast(file);
  if (f->wal != nullptr) {
    const int rc = Flush(f->wal);
    if (rc != SQLITE_OK) return rc;
  }
  return f->real->pMethods->xShmMap(f->real, page, page_bytes, extend, out);
}

void DbShmBarrier(sqlite3_file* file) {
  GatherFile* f = Cast(file);
  if (f->wal != nullptr && Flush(f->wal) != SQLITE_OK) {
    // A commit is being published whose frames could not be written, and this call cannot fail.
    // Stopping here, before the second header copy is written, is a crash before the commit to
    // every reader and to recovery. Unreachable while SQLite writes frames as described above.
    std::fputs("spool: writing the SQLite WAL failed while a commit was being published\n", stderr);
    std::abort();
  }
  f->real->pMethods->xShmBarrier(f->real);
}

constexpr sqlite3_io_methods kWalMethods = {
    3,
    WalClose,
    Flushing<&sqlite3_io_methods::xRead>::Call,
    WalWrite,
    Flushing<&sqlite3_io_methods::xTruncate>::Call,
    Flushing<&sqlite3_io_methods::xSync>::Call,
    Flushing<&sqlite3_io_methods::xFileSize>::Call,
    Plain<&sqlite3_io_methods::xLock>::Call,
    Plain<&sqlite3_io_methods::xUnlock>::Call,
    Plain<&sqlite3_io_methods::xCheckReservedLock>::Call,
    Flushing<&sqlite3_io_methods::xFileControl>::Call,
    Plain<&sqlite3_io_methods::xSectorSize>::Call,
    Plain<&sqlite3_io_methods::xDeviceCharacteristics>::Call,
    Plain<&sqlite3_io_methods::xShmMap>::Call,
    Plain<&sqlite3_io_methods::xShmLock>::Call,
    Plain<&sqlite3_io_methods::xShmBarrier>::Call,
    Plain<&sqlite3_io_methods::xShmUnmap>::Call,
    Flushing<&sqlite3_io_methods::xFetch>::Call,
    Plain<&sqlite3_io_methods::xUnfetch>::Call,
};

constexpr sqlite3_io_methods kDbMethods = {
    3,
    DbClose,
    Plain<&sqlite3_io_methods::xRead>::Call,
    Plain<&sqlite3_io_methods::xWrite>::Call,
    Plain<&sqlite3_io_methods::xTruncate>::Call,
    Plain<&sqlite3_io_methods::xSync>::Call,
    Plain<&sqlite3_io_methods::xFileSize>::Call,
    Plain<&sqlite3_io_methods::xLock>::Call,
    Plain<&sqlite3_io_methods::xUnlock>::Call,
    Plain<&sqlite3_io_methods::xCheckReservedLock>::Call,
    Plain<&sqlite3_io_methods::xFileControl>::Call,
    Plain<&sqlite3_io_methods::xSectorSize>::Call,
    Plain<&sqlite3_io_methods::xDeviceCharacteristics>::Call,
    DbShmMap,
    Plain<&sqlite3_io_methods::xShmLock>::Call,
    DbShmBarrier,
    Plain<&sqlite3_io_methods::xShmUnmap>::Call,
    Plain<&sqlite3_io_methods::xFetch>::Call,
    Plain<&sqlite3_io_methods::xUnfetch>::Call,
};

int Open(sqlite3_vfs* vfs, const char* name, sqlite3_file* file, int flags, int* out_flags) {
  sqlite3_vfs* real_vfs = RealVfs(vfs);
  const bool wal = (flags & SQLITE_OPEN_WAL) != 0;
  if (!wal && (flags & SQLITE_OPEN_MAIN_DB) == 0) {
    // Nothing to gather: the default VFS's file itself, at the start of the allocation.
    return real_vfs->xOpen(real_vfs, name, file, flags, out_flags);
  }
  GatherFile* f = Cast(file);
  std::memset(f, 0, sizeof(GatherFile));
  f->real = reinterpret_cast<sqlite3_file*>(f + 1);
  const int rc = real_vfs->xOpen(real_vfs, name, f->real, flags, out_flags);
  if (rc != SQLITE_OK || f->real->pMethods == nullptr) {
    // SQLite calls xClose only when pMethods is set; the default VFS has cleaned up its file.
    return rc != SQLITE_OK ? rc : SQLITE_CANTOPEN;
  }
  if (wal) {
    sqlite3_file* db = sqlite3_database_file_object(name);
    if (db != nullptr && db->pMethods == &kDbMethods) {
      f->db = Cast(db);
      f->db->wal = f;
    }
    f->base.pMethods = &kWalMethods;
  } else {
    f->base.pMethods = &kDbMethods;
  }
  return SQLITE_OK;
}

sqlite3_vfs* Register() {
  sqlite3_vfs* real = sqlite3_vfs_find(nullptr);
  // The io methods above are version 3, the version of the default "unix" VFS's files.
  if (real == nullptr || std::strcmp(real->zName, "unix") != 0 || real->iVersion < 3) {
    return nullptr;
  }
  static sqlite3_vfs vfs = {
      3,
      static_cast<int>(sizeof(GatherFile)) + real->szOsFile,
      real->mxPathname,
      nullptr,
      "spool-wal-gather",
      real,
      Open,
      [](sqlite3_vfs* v, const char* name, int sync_dir) {
        return RealVfs(v)->xDelete(RealVfs(v), name, sync_dir);
      },
      [](sqlite3_vfs* v, const char* name, int flags, int* out) {
        return RealVfs(v)->xAccess(RealVfs(v), name, flags, out);
      },
      [](sqlite3_vfs* v, const char* name, int n, char* out) {
        return RealVfs(v)->xFullPathname(RealVfs(v), name, n, out);
      },
      [](sqlite3_vfs* v, const char* name) { return RealVfs(v)->xDlOpen(RealVfs(v), name); },
      [](sqlite3_vfs* v, int n, char* out) { RealVfs(v)->xDlError(RealVfs(v), n, out); },
      [](sqlite3_vfs* v, void* h, const char* sym) {
        return RealVfs(v)->xDlSym(RealVfs(v), h, sym);
      },
      [](sqlite3_vfs* v, void* h) { RealVfs(v)->xDlClose(RealVfs(v), h); },
      [](sqlite3_vfs* v, int n, char* out) { return RealVfs(v)->xRandomness(RealVfs(v), n, out); },
      [](sqlite3_vfs* v, int us) { return RealVfs(v)->xSleep(RealVfs(v), us); },
      [](sqlite3_vfs* v, double* out) { return RealVfs(v)->xCurrentTime(RealVfs(v), out); },
      [](sqlite3_vfs* v, int n, char* out) {
        return RealVfs(v)->xGetLastError(RealVfs(v), n, out);
      },
      [](sqlite3_vfs* v, sqlite3_int64* out) {
        return RealVfs(v)->xCurrentTimeInt64(RealVfs(v), out);
      },
      [](sqlite3_vfs* v, const char* name, sqlite3_syscall_ptr p) {
        return RealVfs(v)->xSetSystemCall(RealVfs(v), name, p);
      },
      [](sqlite3_vfs* v, const char* name) { return RealVfs(v)->xGetSystemCall(RealVfs(v), name); },
      [](sqlite3_vfs* v, const char* name) {
        return RealVfs(v)->xNextSystemCall(RealVfs(v), name);
      },
  };
  if (sqlite3_vfs_register(&vfs, 0) != SQLITE_OK) return nullptr;
  return &vfs;
}

}  // namespace

const char* WalGatheringVfs() {
  static sqlite3_vfs* const vfs = Register();
  return vfs != nullptr ? vfs->zName : nullptr;
}

}  // namespace spool::internal
