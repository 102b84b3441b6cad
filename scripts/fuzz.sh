#!/usr/bin/env bash
# Fuzzes MeshCore's parsers and matchers with libFuzzer (the Swift toolchain's -sanitize=fuzzer),
# under AddressSanitizer. Targets: config, detect, target, route, headers (see Fuzz/MeshFuzz.swift).
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 30 s, every target)
# The seed corpus is Fuzz/corpus/<target>; new interesting inputs go to .build-fuzz/corpus/<target>
# (not committed). A crash leaves its input in .build-fuzz/crash-<target>-*, the script exits 1:
# turn the input into a unit test, fix, and add it to the seed corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(config detect target route headers)

echo "== building the fuzz targets (-sanitize=fuzzer,address, scratch .build-fuzz)"
MESHD_FUZZ=1 swift build -c release --scratch-path .build-fuzz --product MeshFuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -g 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\]' | tail -n 3
bin=.build-fuzz/release/MeshFuzz

status=0
for t in "${targets[@]}"; do
    mkdir -p ".build-fuzz/corpus/$t"
    echo "== fuzzing $t for ${seconds}s"
    if ! SWIFT_BACKTRACE=enable=no FUZZ_TARGET=$t "$bin" -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix=".build-fuzz/crash-$t-" -print_final_stats=1 \
        ".build-fuzz/corpus/$t" "Fuzz/corpus/$t" >".build-fuzz/$t.log" 2>&1; then
        echo "fuzz target $t FAILED (input saved as .build-fuzz/crash-$t-*):"
        grep -E "ERROR|fuzz invariant|Fatal error|SUMMARY" ".build-fuzz/$t.log" | head -n 10
        status=1
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" ".build-fuzz/$t.log" | tr '\n' ' '
    echo
done
exit $status
