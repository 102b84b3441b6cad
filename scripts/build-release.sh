#!/usr/bin/env bash
# Builds the shipped meshd and meshctl: release mode, whole-program optimisation (LLVM full LTO: meshd,
# NIO and every other dependency optimised together at link time; Swift's cross-module optimisation,
# which lets meshd's module specialise the dependencies' generic code, such as NIO's HTTP/1 decoder
# handler, for the types meshd uses), Swift runtime and Foundation linked statically, non-PIE, no
# run-time exclusivity checks in the dependencies either. Measured (docs/performance.md): static
# linking took idle RSS from 28.5 MB to 18.8 MB; LTO cut a proxied request's instructions by 11 %
# (HTTP/1.1, h2c and gRPC alike), the specialised HTTP/1 decoders by 9 % more (HTTP/1.1).
# Output: .build/release/.
#
# Both products build in one `swift build`, so their link steps (where LTO optimises, about 3.5 min
# each on 2 cores) run side by side. MESHD_LTO=0 builds without LTO (links in seconds, for iterating;
# not the shipped build; switching rebuilds everything).
set -euo pipefail
cd "$(dirname "$0")/.."
flags=(-c release --static-swift-stdlib -Xswiftc -Xclang-linker -Xswiftc -no-pie -Xswiftc -enforce-exclusivity=unchecked
    -Xswiftc -cross-module-optimization)
[[ ${MESHD_LTO:-1} == 0 ]] || flags+=(--experimental-lto-mode=full)
swift build "${flags[@]}" "$@"
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
