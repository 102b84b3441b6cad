#!/usr/bin/env bash
# Builds the shipped meshd and meshctl: release mode, Swift runtime and Foundation linked statically,
# non-PIE. Measured on the HTTP/1.1 benchmark (docs/performance.md): idle RSS 28.5 MB -> 18.8 MB and
# fewer indirect calls into the runtime than the default dynamic build. Output: .build/release/.
set -euo pipefail
cd "$(dirname "$0")/.."
flags=(-c release --static-swift-stdlib -Xswiftc -Xclang-linker -Xswiftc -no-pie -Xswiftc -enforce-exclusivity=unchecked)
swift build "${flags[@]}" --product meshd "$@"
swift build "${flags[@]}" --product meshctl "$@"
# The shipped binaries, stripped, go to .build/dist/ with their debug information (and symbol table)
# beside them in *.debug, found by gdb and perf through a .gnu_debuglink. .build/release/ keeps the
# unstripped ones (for profiling: valgrind and perf read their symbols directly).
mkdir -p .build/dist
for name in meshd meshctl; do
    objcopy --only-keep-debug ".build/release/$name" ".build/dist/$name.debug"
    strip --strip-all ".build/release/$name" -o ".build/dist/$name"
    (cd .build/dist && objcopy --add-gnu-debuglink="$name.debug" "$name")
done
echo "built: $PWD/.build/release/meshd $PWD/.build/release/meshctl; stripped: $PWD/.build/dist/ (meshd $(du -m .build/dist/meshd | cut -f1) MB)"
