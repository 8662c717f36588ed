#!/usr/bin/env bash
# Runs every test: the dev build (warnings are errors) with all of CTest, including PostgreSQL
# (CTest starts a throwaway cluster), then the unit tests and both drivers' conformance suites
# under ASan+UBSan, the concurrency tests under TSan, and the release build the Quick start makes.
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=${SPOOL_BUILD_JOBS:-2}
scripts/install-deps.sh

echo "== dev build (warnings are errors) and every test"
cmake --preset dev >/dev/null
cmake --build --preset dev -j"$jobs"
SPOOL_REQUIRE_POSTGRES=${SPOOL_REQUIRE_POSTGRES:-1} \
  ctest --preset dev -j"$jobs" --output-on-failure

echo "== ASan+UBSan: unit tests and the conformance suite on both drivers"
cmake --preset asan-ubsan >/dev/null
cmake --build --preset asan-ubsan -j"$jobs" \
  --target spool_unit_tests spool_conformance_tests spool_conformance_postgres_tests
# The PostgreSQL suite pulls in its cluster fixture (a second throwaway cluster, stopped after).
SPOOL_REQUIRE_POSTGRES=${SPOOL_REQUIRE_POSTGRES:-1} \
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --preset asan-ubsan -j"$jobs" -L 'unit-concurrency|conformance-sqlite|conformance-postgres' \
  --output-on-failure

echo "== TSan: concurrency tests"
cmake --preset tsan >/dev/null
cmake --build --preset tsan -j"$jobs" --target spool_unit_tests
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
  ctest --preset tsan -j"$jobs" -L concurrency --output-on-failure

# -O2 warns of things -O0 does not see (g++ 12's maybe-uninitialized), and the Quick start's first
# command builds this.
echo "== release build of the spool command (warnings are errors)"
cmake --preset release >/dev/null
cmake --build --preset release -j"$jobs" --target spool_cli
