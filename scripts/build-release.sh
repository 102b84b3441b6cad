#!/usr/bin/env bash
# Builds the shipped meshd and meshctl: release mode, Swift runtime and Foundation linked statically,
# non-PIE. Measured on the HTTP/1.1 benchmark (docs/performance.md): idle RSS 28.5 MB -> 18.8 MB and
# fewer indirect calls into the runtime than the default dynamic build. Output: .build/release/.
set -euo pipefail
cd "$(dirname "$0")/.."
flags=(-c release --static-swift-stdlib -Xswiftc -Xclang-linker -Xswiftc -no-pie)
swift build "${flags[@]}" --product meshd "$@"
swift build "${flags[@]}" --product meshctl "$@"
# Ship stripped binaries; the debug information (and symbol table) goes to meshd.debug /
# meshctl.debug beside them, found by gdb and perf through a .gnu_debuglink. A binary the build
# did not relink is stripped already and keeps its .debug file.
for binary in .build/release/meshd .build/release/meshctl; do
    if readelf -S "$binary" | grep '\.debug_info' >/dev/null; then  # (grep -q would end the pipe early)
        objcopy --only-keep-debug "$binary" "$binary.debug"
        strip --strip-all "$binary"
        objcopy --add-gnu-debuglink="$binary.debug" "$binary"
    fi
done
echo "built: $PWD/.build/release/meshd ($(du -m .build/release/meshd | cut -f1) MB) $PWD/.build/release/meshctl (debug info: *.debug)"
