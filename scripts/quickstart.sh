#!/usr/bin/env bash
# Installs what is missing (Debian 12 packages), builds spool optimised, and runs the demo: a few
# thousand jobs of several kinds on SQLite, with retries, snoozes, schedules and discards.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j2 --target spool_cli
exec build/release/bin/spool demo "$@"
