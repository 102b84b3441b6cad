#!/usr/bin/env bash
# Runs the unit tests under ThreadSanitizer and AddressSanitizer, then a short end-to-end run against
# an AddressSanitizer build of meshd. Each sanitizer builds in its own scratch folder (.build-tsan,
# .build-asan: not committed); a first build of everything takes several minutes per sanitizer.
#
# Usage: scripts/sanitizers.sh [thread|address|e2e ...]     (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(thread address e2e)
export SWIFT_BACKTRACE=enable=no  # the sanitizer's report is the one wanted
# TSan: halt on the first race; ASan: leaks are not errors here (process-lifetime caches).
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
export ASAN_OPTIONS="detect_leaks=0 halt_on_error=1"

for step in "${steps[@]}"; do
    case $step in
        thread | address)
            echo "== unit tests under -sanitize=$step"
            mkdir -p ".build-${step:0:1}san"; log=".build-${step:0:1}san/test.log"
            rc=0
            swift test --sanitize="$step" --scratch-path ".build-${step:0:1}san" >"$log" 2>&1 || rc=$?
            grep -E "Test run with|Executed [0-9]+ tests|✘|WARNING: ThreadSanitizer|ERROR: AddressSanitizer|SUMMARY|error:" "$log" | head -n 20 || true
            [[ $rc -eq 0 ]] || { echo "unit tests failed under the $step sanitizer (log: $log)"; exit 1; }
            ;;
        e2e)
            echo "== end-to-end tests against an AddressSanitizer build of meshd"
            swift build --sanitize=address --scratch-path .build-asan --product meshd 2>&1 | tail -n 1
            bin=$(swift build --sanitize=address --scratch-path .build-asan --show-bin-path)/meshd
            # Tests that assert peak RSS or throughput are left out: ASan's quarantine keeps freed memory
            # and a debug ASan build is several times slower; an ASan report aborts meshd and fails the run.
            (cd tests/e2e && MESHD_BIN="$bin" python3 -m pytest -q -p no:cacheprovider \
                -k "not 100mib and not slow_reader and not flaky_backend_retried_within_budget" \
                test_proxy_basic.py test_errors.py test_http2.py test_grpc.py test_resilience.py test_protocols.py)
            ;;
        *) echo "unknown step $step (thread, address, e2e)" >&2; exit 2 ;;
    esac
done
echo "sanitizers: clean"
