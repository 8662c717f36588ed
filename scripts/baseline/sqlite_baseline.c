/* The SQLite baseline of docs/benchmarks.md: a bare C program doing what a job queue must,
 * insert, claim and complete, in batches of 100, on one connection with no threads, no JSON
 * and a table with only the fetch index. It is not spool: it measures how fast this machine
 * runs SQLite's share of a queue at the moment, so that `spool bench` figures taken at
 * different times can be compared with what the machine allowed then.
 *
 *   cc -O2 -o sqlite_baseline sqlite_baseline.c -lsqlite3
 *   ./sqlite_baseline /tmp/baseline.db [jobs]     (a new file; prints jobs/s as JSON)
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BATCH 100

static sqlite3* db;

static void die(const char* what) {
  fprintf(stderr, "sqlite_baseline: %s: %s\n", what, sqlite3_errmsg(db));
  exit(1);
}

static void exec(const char* sql) {
  if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK) die(sql);
}

static sqlite3_stmt* prepare(const char* sql) {
  sqlite3_stmt* stmt = NULL;
  if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, NULL) != SQLITE_OK) {
    die(sql);
  }
  return stmt;
}

static void step_done(sqlite3_stmt* stmt, const char* what) {
  if (sqlite3_step(stmt) != SQLITE_DONE) die(what);
  sqlite3_reset(stmt);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: sqlite_baseline NEW_DB_FILE [JOBS]\n");
    return 2;
  }
  const long jobs = argc > 2 ? atol(argv[2]) : 50000;
  if (jobs < BATCH || jobs % BATCH != 0) {
    fprintf(stderr, "sqlite_baseline: JOBS must be a positive multiple of %d\n", BATCH);
    return 2;
  }
  if (sqlite3_open(argv[1], &db) != SQLITE_OK) die("open");
  exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;");
  exec("CREATE TABLE job (id INTEGER PRIMARY KEY, state INTEGER NOT NULL, queue TEXT NOT NULL, "
       "priority INTEGER NOT NULL, scheduled_at INTEGER NOT NULL, attempt INTEGER NOT NULL, "
       "attempted_at INTEGER, finalized_at INTEGER, kind TEXT NOT NULL, args TEXT NOT NULL)");
  exec("CREATE INDEX job_fetch ON job (queue, priority, scheduled_at) WHERE state = 0");

  sqlite3_stmt* insert = prepare(
      "INSERT INTO job (state, queue, priority, scheduled_at, attempt, kind, args) "
      "VALUES (0, 'default', 1, ?1, 0, 'noop', '{}')");
  sqlite3_stmt* claim = prepare(
      "UPDATE job SET state = 2, attempt = attempt + 1, attempted_at = ?1 WHERE id IN "
      "(SELECT id FROM job WHERE state = 0 AND queue = 'default' AND scheduled_at <= ?1 "
      "ORDER BY priority, scheduled_at, id LIMIT ?2) RETURNING id");
  sqlite3_stmt* complete =
      prepare("UPDATE job SET state = 4, finalized_at = ?1 WHERE id = ?2 AND state = 2");
  sqlite3_stmt* begin = prepare("BEGIN IMMEDIATE");
  sqlite3_stmt* commit = prepare("COMMIT");

  long long ids[BATCH];
  const double t0 = now_s();
  for (long done = 0; done < jobs; done += BATCH) {
    const sqlite3_int64 at = (sqlite3_int64)(now_s() * 1e6);
    step_done(begin, "begin");
    for (int i = 0; i < BATCH; ++i) {
      sqlite3_bind_int64(insert, 1, at);
      step_done(insert, "insert");
    }
    step_done(commit, "commit");

    step_done(begin, "begin");
    sqlite3_bind_int64(claim, 1, at);
    sqlite3_bind_int(claim, 2, BATCH);
    int n = 0, rc;
    while ((rc = sqlite3_step(claim)) == SQLITE_ROW) ids[n++] = sqlite3_column_int64(claim, 0);
    if (rc != SQLITE_DONE || n != BATCH) die("claim");
    sqlite3_reset(claim);
    step_done(commit, "commit");

    step_done(begin, "begin");
    for (int i = 0; i < n; ++i) {
      sqlite3_bind_int64(complete, 1, at);
      sqlite3_bind_int64(complete, 2, ids[i]);
      step_done(complete, "complete");
      if (sqlite3_changes(db) != 1) die("complete: job not running");
    }
    step_done(commit, "commit");
  }
  const double secs = now_s() - t0;
  printf("{\"baseline\":\"sqlite\",\"jobs\":%ld,\"batch\":%d,\"jobs_per_sec\":%.0f}\n", jobs, BATCH,
         (double)jobs / secs);
  sqlite3_finalize(insert);
  sqlite3_finalize(claim);
  sqlite3_finalize(complete);
  sqlite3_finalize(begin);
  sqlite3_finalize(commit);
  return sqlite3_close(db) == SQLITE_OK ? 0 : 1;
}
