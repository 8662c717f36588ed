#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for spool's tests.
#
#   scripts/pg-cluster.sh start DIR   # writes DIR/url, DIR/pid, DIR/datadir; prints the url
#   scripts/pg-cluster.sh stop DIR    # stops the postmaster in DIR/pid, removes DIR and the data
#   scripts/pg-cluster.sh restart DIR [DOWN_SECONDS]
#                                     # stops the postmaster by pid (fast shutdown: clients are
#                                     # disconnected), waits DOWN_SECONDS (default 0), starts it
#                                     # again on the same port and data; rewrites DIR/pid
#
# The data directory lives in a fresh mktemp dir (short path: it also holds the Unix socket),
# owned by the postgres user when run as root, because PostgreSQL refuses to run as root. The
# server listens on that socket and on 127.0.0.1 at a free port, with fsync and synchronous_commit
# on so that tests see the same durability as production. Needs no running services.
set -euo pipefail

PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
DB_NAME="spool_test"
# Connects with a password only (scram-sha-256); the tests that need it create it.
PASSWORD_ROLE="spool_password_test"

die() {
  echo "pg-cluster: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 start|stop DIR | restart DIR [DOWN_SECONDS]" >&2
  exit 2
}

# Runs a command as the cluster owner: postgres when we are root, else ourselves.
as_owner() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

port_in_use() {
  ss -Htan "sport = :$1" 2>/dev/null | grep -q .
}

pick_port() {
  local port
  for _ in $(seq 1 100); do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    if ! port_in_use "$port"; then
      echo "$port"
      return 0
    fi
  done
  die "no free TCP port found on 127.0.0.1"
}

# Starts the postmaster of the cluster in $1 on port $2; waits until it accepts connections.
start_server() {
  as_owner "$PG_BIN/pg_ctl" -D "$1/data" -l "$1/server.log" -w -t 60 \
    -o "-k $1 -h 127.0.0.1 -p $2 -c fsync=on -c synchronous_commit=on \
        -c max_connections=300 -c shared_buffers=64MB" start >/dev/null
}

# Stops the postmaster whose pid is in $1/pid, if it runs: fast shutdown, then SIGQUIT after 30s.
stop_postmaster() {
  local dir="$1" pid
  [[ -f "$dir/pid" ]] || return 0
  pid="$(cat "$dir/pid")"
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    # SIGINT is the "fast" shutdown: disconnect clients, checkpoint, exit.
    kill -INT "$pid"
    for _ in $(seq 1 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "pg-cluster: postmaster $pid ignored SIGINT for 30s; sending SIGQUIT" >&2
      kill -QUIT "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
  fi
}

cmd_start() {
  local dir="$1"
  [[ -x "$PG_BIN/initdb" ]] || die "$PG_BIN/initdb not found: install postgresql-15"
  if [[ -f "$dir/pid" ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    die "a cluster is already running from $dir (pid $(cat "$dir/pid")): stop it first"
  fi
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"

  local tmp
  tmp="$(mktemp -d /tmp/spool-pg.XXXXXX)"
  echo "$tmp" >"$dir/datadir"
  if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no postgres user"
    chown postgres:postgres "$tmp"
  fi
  chmod 700 "$tmp"

  as_owner "$PG_BIN/initdb" -D "$tmp/data" -U postgres --auth=trust -E UTF8 --locale=C \
    --no-instructions >"$tmp/initdb.log" 2>&1 || {
    cat "$tmp/initdb.log" >&2
    die "initdb failed"
  }
  # One role that must give its password, for the tests of a wrong or missing one: pg_hba.conf
  # takes the first line that matches, so these go before initdb's trust lines.
  local hba="$tmp/data/pg_hba.conf"
  as_owner sh -c "{ printf '%s\n' 'local all $PASSWORD_ROLE scram-sha-256' \
    'host all $PASSWORD_ROLE 127.0.0.1/32 scram-sha-256'; cat '$hba'; } >'$hba.new' &&
    mv '$hba.new' '$hba'"

  local port attempt started=0
  for attempt in 1 2 3 4 5; do
    port="$(pick_port)"
    # pg_ctl -w waits until the server accepts connections (or fails).
    if start_server "$tmp" "$port"; then
      started=1
      break
    fi
    # Lost a race for the port (or worse): try another port, then give up with the log.
    echo "pg-cluster: start on port $port failed (attempt $attempt)" >&2
  done
  if [[ "$started" != 1 ]]; then
    cat "$tmp/server.log" >&2 || true
    die "could not start postgres"
  fi

  head -n1 "$tmp/data/postmaster.pid" >"$dir/pid"
  for _ in $(seq 1 100); do
    if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; then break; fi
    sleep 0.1
  done
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres || die "server not ready on port $port"
  "$PG_BIN/psql" -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -c "CREATE DATABASE $DB_NAME" >/dev/null || die "CREATE DATABASE $DB_NAME failed"

  local url="postgres://postgres@127.0.0.1:$port/$DB_NAME"
  echo "$url" >"$dir/url"
  echo "$url"
}

cmd_stop() {
  local dir="$1"
  [[ -d "$dir" ]] || return 0
  stop_postmaster "$dir"
  if [[ -f "$dir/datadir" ]]; then
    local tmp
    tmp="$(cat "$dir/datadir")"
    # Only ever remove a directory this script made.
    if [[ "$tmp" == /tmp/spool-pg.* && -d "$tmp" ]]; then rm -rf "$tmp"; fi
  fi
  rm -rf "$dir"
}

# Same data, same port, same socket: clients reconnect to the URL they already have.
cmd_restart() {
  local dir="$1" down="${2:-0}"
  [[ "$down" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "DOWN_SECONDS must be a number, not '$down'"
  [[ -f "$dir/url" && -f "$dir/datadir" ]] || die "no cluster started from $dir"
  local tmp url port
  tmp="$(cat "$dir/datadir")"
  url="$(cat "$dir/url")"
  port="${url##*:}"
  port="${port%%/*}"
  [[ "$port" =~ ^[0-9]+$ ]] || die "cannot read the port from $url"
  stop_postmaster "$dir"
  sleep "$down"
  if ! start_server "$tmp" "$port"; then
    cat "$tmp/server.log" >&2 || true
    die "could not restart postgres on port $port"
  fi
  head -n1 "$tmp/data/postmaster.pid" >"$dir/pid"
}

case "${1:-}" in
  start) [[ $# == 2 ]] || usage; cmd_start "$2" ;;
  stop) [[ $# == 2 ]] || usage; cmd_stop "$2" ;;
  restart) [[ $# == 2 || $# == 3 ]] || usage; cmd_restart "$2" "${3:-0}" ;;
  *) usage ;;
esac
