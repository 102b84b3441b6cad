#!/usr/bin/env bash
# Soak with chaos (issue 15): mixed HTTP/1.1, HTTP/2, gRPC (unary, server-streaming, bidi), WebSocket and
# opaque TCP traffic through both placements (client sidecar → pod sidecar, and node proxy → node proxy
# `via`) while pods are killed and restarted, a backend injects 503s and stalls, the endpoints file churns
# and the config files are rewritten every few seconds. Pass: nothing lost where retryable, nothing hung,
# RSS and open descriptors of every meshd flat after warm-up (growth < 5 %). bench/soak.py does the work;
# see bench/README.md.
#
# Usage: bench/soak.sh [--update-docs]
# Env:   DURATION (s, default 600), MESHD_BIN (default .build/release/meshd), SKIP (traffic kinds to leave
#        out, comma-separated: a diagnostic aid; a full soak runs them all)
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/soak.sh [--update-docs]

  --update-docs   replace the section between <!-- soak:begin --> and <!-- soak:end --> in
                  docs/reliability.md with this run's report (pass or fail: the report says which,
                  and lists every problem)

environment: DURATION (seconds, default 600), MESHD_BIN (default <repo>/.build/release/meshd),
             SKIP (traffic kinds to leave out: http1,h2,grpc-unary,grpc-server-stream,grpc-bidi,
             websocket,tcp,stall,bad-input)
EOF
}

UPDATE_DOCS=0
for arg in "$@"; do
    case "$arg" in
        --update-docs) UPDATE_DOCS=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "soak.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
DURATION=${DURATION:-600}
MESHD_BIN=${MESHD_BIN:-$REPO/.build/release/meshd}
SKIP=${SKIP:-}

log() { printf '[soak] %s\n' "$*" >&2; }
die() { printf '[soak] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 10 && DURATION <= 86400)) || die "DURATION must be 10…86400 seconds"
[[ -x $MESHD_BIN ]] || die "meshd binary not found at $MESHD_BIN (swift build -c release, or set MESHD_BIN)"
python3 -c 'import grpc, grpc_tools, h2, websockets' 2>/dev/null \
    || die "Python packages missing: pip install -r tests/e2e/requirements.txt (grpcio, grpcio-tools, h2, websockets)"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$REPO/bench/results/soak-$STAMP
mkdir -p "$OUT"
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$REPO" status --porcelain -- Sources 2>/dev/null | head -1)
log "commit $COMMIT${DIRTY:+ (Sources modified)}; ${DURATION}s; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# Every process the driver starts runs in a session of its own and is stopped on the driver's way out,
# also when it gets SIGTERM (forwarded here on Ctrl-C).
set +e
python3 "$SCRIPT_DIR/soak.py" --duration "$DURATION" --meshd "$MESHD_BIN" --out "$OUT" --skip "$SKIP" &
PID=$!
trap 'kill -TERM "$PID" 2>/dev/null; wait "$PID"; exit 130' INT TERM
wait "$PID"
RC=$?
trap - INT TERM
set -e
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
[[ -s $OUT/report.md ]] || die "no report (driver exit status $RC); see $OUT"

if ((UPDATE_DOCS)); then
    DOC=$REPO/docs/reliability.md
    grep -q '<!-- soak:begin -->' "$DOC" && grep -q '<!-- soak:end -->' "$DOC" \
        || die "$DOC has no <!-- soak:begin --> / <!-- soak:end --> markers"
    {
        printf 'Command: `DURATION=%s bench/soak.sh --update-docs` (commit %s%s, %s UTC).\n\n' \
            "$DURATION" "$COMMIT" "${DIRTY:+ with modified Sources}" "$(date -u '+%Y-%m-%d %H:%M')"
        cat "$OUT/report.md"
    } >"$OUT/section.md"
    python3 - "$DOC" "$OUT/section.md" <<'EOF'
import sys
doc, section = sys.argv[1], open(sys.argv[2]).read()
text = open(doc).read()
head, rest = text.split("<!-- soak:begin -->", 1)
_, tail = rest.split("<!-- soak:end -->", 1)
open(doc, "w").write(head + "<!-- soak:begin -->\n" + section + "<!-- soak:end -->" + tail)
EOF
    log "docs/reliability.md updated"
fi
log "results in $OUT (results.json, report.md, run/: configs and every process's log)"
exit "$RC"
