#!/usr/bin/env bash
# The machine's baseline for spool's benchmarks (docs/benchmarks.md): what this machine does, at
# the moment, with a queue's statements alone, no spool in the way. Each run prints one JSON line.
#
#   scripts/baseline.sh sqlite DIR [JOBS]    # bare C program: insert, claim, complete in batches
#                                            # of 100 on one connection (DIR: a scratch directory)
#   scripts/baseline.sh postgres URL [JOBS]  # pgbench, one client: the same cycle, three commits a
#                                            # batch, on a table baseline_job it creates and drops
#
# JOBS defaults to 50000 (a multiple of 100). Run it beside `spool bench` to tell a slow hour of
# the machine from a slow change: both move together when the machine does.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/baseline"

die() {
  echo "baseline: $*" >&2
  exit 1
}

[[ $# -ge 2 ]] || die "usage: $0 sqlite DIR [JOBS] | postgres URL [JOBS]"
kind="$1"
where="$2"
jobs="${3:-50000}"
[[ "$jobs" =~ ^[1-9][0-9]*00$ ]] || die "JOBS must be a positive multiple of 100, not '$jobs'"

case "$kind" in
  sqlite)
    mkdir -p "$where"
    bin="$where/sqlite_baseline"
    if [[ ! -x "$bin" || "$here/sqlite_baseline.c" -nt "$bin" ]]; then
      compiler="$(command -v cc || command -v gcc)" ||
        die "no C compiler (scripts/install-deps.sh installs one)"
      "$compiler" -O2 -Wall -Wextra -Werror -o "$bin" "$here/sqlite_baseline.c" -lsqlite3 ||
        die "could not build the SQLite baseline (needs libsqlite3-dev: scripts/install-deps.sh)"
    fi
    rm -f "$where/baseline.db" "$where/baseline.db-wal" "$where/baseline.db-shm"
    "$bin" "$where/baseline.db" "$jobs"
    rm -f "$where/baseline.db" "$where/baseline.db-wal" "$where/baseline.db-shm"
    ;;
  postgres)
    command -v pgbench >/dev/null || die "pgbench not found (Debian package postgresql-15: scripts/install-deps.sh)"
    psql -X -q -v ON_ERROR_STOP=1 "$where" -f "$here/pg_setup.sql" >/dev/null 2>&1 ||
      die "could not create baseline_job at the given URL (is the server up? see psql \"URL\")"
    out="$(pgbench -n -M prepared -c 1 -t $((jobs / 100)) -f "$here/pg_cycle.sql" "$where" 2>&1)" ||
      die "pgbench failed: $out"
    psql -X -q "$where" -c "DROP TABLE baseline_job" >/dev/null 2>&1 || true
    tps="$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | head -1)"
    [[ -n "$tps" ]] || die "no tps in pgbench's output: $out"
    awk -v tps="$tps" -v jobs="$jobs" \
      'BEGIN { printf "{\"baseline\":\"postgres\",\"jobs\":%d,\"batch\":100,\"jobs_per_sec\":%.0f}\n", jobs, tps * 100 }'
    ;;
  *) die "unknown baseline '$kind': sqlite or postgres" ;;
esac
