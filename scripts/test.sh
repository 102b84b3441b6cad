#!/usr/bin/env bash
# Runs every test of meshd: MeshCore and meshd unit tests (swift test), then the end-to-end suite
# against real peers (curl, wrk, nginx, Python backends) with a release build of meshd.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

echo "== swift format lint (the committed .swift-format)"
swift format lint --strict -r Sources Tests Fuzz

echo "== unit tests (swift test; the project's targets build with warnings as errors)"
swift test 2>&1 | tee /tmp/meshd-swift-test.log | grep -vE '^\[[0-9]+/[0-9]+\] (Compiling|Emitting|Write|Linking|Building)' || {
  echo "swift test failed"; exit 1; }
grep -qE 'Test run with [0-9]+ tests? in [0-9]+ suites? passed|Executed [0-9]+ tests?, with 0 failures' /tmp/meshd-swift-test.log

echo "== fuzzing MeshCore's parsers and matchers, 10 s per target (scripts/fuzz.sh; longer runs: scripts/fuzz.sh 600)"
scripts/fuzz.sh 10

echo "== release build (the shipped one: scripts/build-release.sh)"
scripts/build-release.sh 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\]|mktemp' | tail -n 4

echo "== end-to-end tests (pytest)"
export MESHD_BIN="$PWD/.build/release/meshd"
export MESHCTL_BIN="$PWD/.build/release/meshctl"
python3 -m pytest tests/e2e -q -p no:cacheprovider "$@"
