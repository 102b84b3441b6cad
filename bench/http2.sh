#!/usr/bin/env bash
# HTTP/2 (h2c) and gRPC-shaped proxy benchmark for meshd.
#
# In one run: starts an nginx backend reachable as 3 loopback endpoints (h2c prior knowledge, plus
# an HTTP/1.1 listener for the nginx proxy), then measures with h2load (closed loop, -c 10 -m 10):
#   scenario h2    GET / → "ok\n"
#   scenario grpc  POST /grpc.bench.Bench/Unary, content-type application/grpc, te: trailers, a 12-byte
#                  gRPC-framed request; the backend answers a gRPC-framed message + trailer grpc-status 0
# against the targets
#   direct   h2load → nginx backend (first endpoint), h2c
#   meshd    h2load → meshd sidecar outbound (threads 1) → h2c to the 3 endpoints (service protocol
#            auto for h2, protocol grpc for grpc)
#   HAProxy  h2load → haproxy (nbthread 1, bind ... proto h2) → `server ... proto h2` (h2c) x3
#   nginx    h2load → nginx (1 worker, listen ... http2) → h2: proxy_pass HTTP/1.1 keep-alive (nginx
#            cannot proxy plain HTTP/2 upstream); grpc: grpc_pass grpc:// (its real HTTP/2 upstream)
#   Caddy    h2load → caddy (GOMAXPROCS=1, servers protocols h1 h2 h2c) → reverse_proxy, transport
#            versions h2c (h2c to the 3 endpoints, gRPC included); when caddy is installed
# interleaved (every scenario × target) for RUNS repetitions, each measurement after a warm-up.
#
# Usage: bench/http2.sh [--update-docs]
# Env:   DURATION (s, default 10), RUNS (default 3), MESHD_BIN (default .build/release/meshd),
#        TARGETS (default "direct meshd haproxy nginx caddy", caddy when installed), KEEP_TMP=1 keeps the temp dir.
# See bench/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/http2.sh [--update-docs]

  --update-docs   replace the section between <!-- http2:begin --> and <!-- http2:end -->
                  in docs/performance.md with the results (only if every target, all of them,
                  served without errors)

environment: DURATION (seconds per measurement, default 10), RUNS (repetitions, default 3),
             MESHD_BIN (default <repo>/.build/release/meshd), TARGETS (subset of
             "direct meshd haproxy nginx", default all), KEEP_TMP=1 (keep temp dir)
EOF
}

UPDATE_DOCS=0
for arg in "$@"; do
    case "$arg" in
        --update-docs) UPDATE_DOCS=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "http2.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
MESHD_BIN=${MESHD_BIN:-$REPO/.build/release/meshd}
CADDY_BIN=$(command -v caddy || true)
TARGETS=${TARGETS:-direct meshd haproxy nginx${CADDY_BIN:+ caddy}}
WARMUP=2
CONNS=10
STREAMS=10
H2LOAD_THREADS=1
GRPC_PATH=/grpc.bench.Bench/Unary

log() { printf '[http2] %s\n' "$*" >&2; }
die() { printf '[http2] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 1 && DURATION <= 3600)) || die "DURATION must be an integer in 1..3600 (got '$DURATION')"
[[ $RUNS =~ ^[0-9]+$ ]] && ((RUNS >= 1 && RUNS <= 100)) || die "RUNS must be an integer in 1..100 (got '$RUNS')"
CANDS=()
for t in direct meshd haproxy nginx caddy; do [[ " $TARGETS " == *" $t "* ]] && CANDS+=("$t"); done
for t in $TARGETS; do [[ $t =~ ^(direct|meshd|haproxy|nginx|caddy)$ ]] || die "unknown target in TARGETS: '$t'"; done
[[ " ${CANDS[*]} " == *" direct "* ]] || die "TARGETS must include direct (the baseline every ratio is against)"
ALL_TARGETS=0
((${#CANDS[@]} == 4 + (${#CADDY_BIN} > 0 ? 1 : 0))) && ALL_TARGETS=1
has() { [[ " ${CANDS[*]} " == *" $1 "* ]]; }

for tool in nginx h2load nghttp curl awk sort; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required but not installed (scripts/install-test-deps.sh)"
done
has haproxy && { command -v haproxy >/dev/null 2>&1 || die "'haproxy' is required but not installed"; }
has caddy && { [[ -n $CADDY_BIN ]] || die "'caddy' is required for TARGETS=...caddy but not installed (apt-get install caddy)"; }
if has meshd; then [[ -x $MESHD_BIN ]] || die "meshd binary not found or not executable: $MESHD_BIN (build it or set MESHD_BIN)"; fi
NGINX_BIN=$(command -v nginx)
HAPROXY_BIN=$(command -v haproxy || true)

# ---------------------------------------------------------------------------------------------
# CPU placement, as in http1.sh: the proxy under test on core 0 alone; the backend and h2load on core 1.
NCPU=$(nproc)
PIN_PROXY=()
PIN_LOAD=()
if command -v taskset >/dev/null 2>&1 && ((NCPU >= 2)); then
    PIN_PROXY=(taskset -c 0)
    PIN_LOAD=(taskset -c 1)
    PLACEMENT="proxy under test pinned to CPU 0 (alone); nginx backend and h2load pinned to CPU 1 (shared); CPU 0 idle for the direct baseline"
else
    PLACEMENT="no CPU pinning (taskset missing or fewer than 2 CPUs): all processes share all CPUs"
fi

# ---------------------------------------------------------------------------------------------
BENCH_NAME=http2
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"

# wait_h2 <name> <pid> <logfile> <port>: poll (at most 15 s) until an h2c GET / (authority "bench")
# on 127.0.0.1:<port> answers "ok" over HTTP/2.
wait_h2() {
    local name=$1 pid=$2 logfile=$3 port=$4 out="" deadline=$((SECONDS + 15))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during startup; its output:"
            sed 's/^/    /' "$logfile" >&2 || true
            die "$name failed to start"
        fi
        if out=$(curl -sS -m 2 --http2-prior-knowledge --connect-to "bench:80:127.0.0.1:$port" \
            -w ' %{http_version}' http://bench/ 2>/dev/null) && [[ $out == $'ok\n 2' ]]; then
            return 0
        fi
        sleep 0.1
    done
    log "$name output so far:"
    sed 's/^/    /' "$logfile" >&2 || true
    die "$name did not answer 'ok' over HTTP/2 on 127.0.0.1:$port within 15 s (last: '${out:-}')"
}

# check_grpc <name> <port> <outfile>: one gRPC-shaped call with nghttp; the reply must carry the
# backend's gRPC message in DATA and then grpc-status 0 as a trailer (h2load would not notice lost
# trailers). Returns 1 (after saying why) otherwise.
check_grpc() {
    local name=$1 port=$2 out=$3
    timeout -k 2 10 nghttp -v -n -H ':authority: grpc' -H 'content-type: application/grpc' -H 'te: trailers' \
        -d "$TMP/grpc-request.bin" "http://127.0.0.1:$port$GRPC_PATH" >"$out" 2>&1 || true
    if ! awk '/recv \(stream_id=[0-9]+\) :status: 200/ { s = 1 } s && /recv DATA frame/ { d = 1 }
              d && /recv \(stream_id=[0-9]+\) grpc-status: 0/ { g = 1 } g && /END_STREAM \| END_HEADERS/ { ok = 1 }
              END { exit ok ? 0 : 1 }' "$out"; then
        log "$name: the gRPC-shaped call did not get DATA then a grpc-status 0 trailer; nghttp -v said:"
        grep -a -E 'recv|send (HEADERS|DATA|GOAWAY|RST)|error|ERROR' "$out" | head -30 | sed 's/^/    /' >&2 || true
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------
# gRPC-shaped payloads: 5-byte gRPC frame header (flag 0, big-endian length) + protobuf field 1.
printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$TMP/grpc-request.bin"  # 12 bytes
mkdir -p "$TMP/backend"
printf '\x00\x00\x00\x00\x04\x0a\x02ok' >"$TMP/backend/grpc-response.bin" # 9 bytes

# ---------------------------------------------------------------------------------------------
# Backend: nginx, one worker. h2c prior knowledge (`listen ... http2`) on three endpoints —
# 127.0.0.1, .2 and .3 on one port when the kernel routes them to lo, else three ports — and an
# HTTP/1.1 listener on three more endpoints for the nginx proxy's plain-HTTP upstream.
free_port BACKEND_PORT
free_port BACKEND_H1_PORT
if command -v ip >/dev/null 2>&1 &&
    ip -4 route get 127.0.0.2 2>/dev/null | grep -q '^local 127\.0\.0\.2 dev lo' &&
    ip -4 route get 127.0.0.3 2>/dev/null | grep -q '^local 127\.0\.0\.3 dev lo'; then
    BACKEND_EPS=("127.0.0.1:$BACKEND_PORT" "127.0.0.2:$BACKEND_PORT" "127.0.0.3:$BACKEND_PORT")
    BACKEND_H1_EPS=("127.0.0.1:$BACKEND_H1_PORT" "127.0.0.2:$BACKEND_H1_PORT" "127.0.0.3:$BACKEND_H1_PORT")
    ENDPOINTS_DESC="the backend listens on 127.0.0.1, 127.0.0.2 and 127.0.0.3, same port"
else
    free_port BP2; free_port BP3; free_port BH2; free_port BH3
    BACKEND_EPS=("127.0.0.1:$BACKEND_PORT" "127.0.0.1:$BP2" "127.0.0.1:$BP3")
    BACKEND_H1_EPS=("127.0.0.1:$BACKEND_H1_PORT" "127.0.0.1:$BH2" "127.0.0.1:$BH3")
    ENDPOINTS_DESC="the backend listens on three ports of 127.0.0.1"
fi
BACKEND_LISTEN=""
for ep in "${BACKEND_EPS[@]}"; do BACKEND_LISTEN+="        listen $ep http2 default_server;"$'\n'; done
for ep in "${BACKEND_H1_EPS[@]}"; do BACKEND_LISTEN+="        listen $ep default_server;"$'\n'; done
cat >"$TMP/backend/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/backend/nginx.pid;
error_log $TMP/backend/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/backend/client_body;
    proxy_temp_path $TMP/backend/proxy;
    fastcgi_temp_path $TMP/backend/fastcgi;
    uwsgi_temp_path $TMP/backend/uwsgi;
    scgi_temp_path $TMP/backend/scgi;
    keepalive_requests 100000;
    keepalive_timeout 75s;
    http2_max_concurrent_streams 256;
    open_file_cache max=16 inactive=600s;
    open_file_cache_valid 600s;
    server {
${BACKEND_LISTEN%$'\n'}
        default_type text/plain;
        location / { return 200 "ok\n"; }
        # gRPC-shaped unary reply: a fixed gRPC-framed message, then trailers. Like a gRPC server,
        # it reads the whole request first (mirror_request_body makes nginx read it; otherwise nginx
        # answers at once and resets the stream with NO_ERROR when the DATA arrives, which nginx's
        # own grpc_pass does not tolerate on a kept-alive upstream connection). The static module
        # refuses POST (405); error_page turns that into a GET of the same file, answered 200.
        location = $GRPC_PATH {
            mirror /_read_body;
            mirror_request_body on;
            default_type application/grpc;
            etag off;
            add_trailer grpc-status 0 always;
            add_trailer grpc-message OK always;
            alias $TMP/backend/grpc-response.bin;
            error_page 405 =200 \$uri;
        }
        location = /_read_body { internal; return 204; }
    }
}
EOF
log "starting nginx backend on ${BACKEND_EPS[*]} (h2c) and ${BACKEND_H1_EPS[*]} (HTTP/1.1)"
start_bg "$TMP/backend/stderr.log" "${PIN_LOAD[@]}" "$NGINX_BIN" -p "$TMP/backend" -e "$TMP/backend/error.log" -c "$TMP/backend/nginx.conf"
BACKEND_PID=$LAST_PID
for ep in "${BACKEND_EPS[@]}"; do wait_h2 "nginx backend" "$BACKEND_PID" "$TMP/backend/stderr.log" "${ep##*:}"; done
for ep in "${BACKEND_H1_EPS[@]}"; do
    curl -fsS -m 5 "http://$ep/" | grep -qx ok || die "nginx backend HTTP/1.1 listener $ep did not answer ok"
done
check_grpc "nginx backend" "$BACKEND_PORT" "$TMP/backend/grpc-check.txt" ||
    die "the nginx backend does not answer the gRPC-shaped call with trailers (see above)"

mkdir -p "$TMP/bin"
GIT_COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=""
[[ -n $(git -C "$REPO" status --porcelain --untracked-files=no -- Sources Package.swift 2>/dev/null) ]] &&
    GIT_DIRTY=" (uncommitted changes under Sources/ or Package.swift at benchmark time)"
MESHD_SHA=n/a MESHD_MTIME=n/a

# ---------------------------------------------------------------------------------------------
# meshd: one sidecar process, threads 1. Outbound routes authority "bench" → service bench
# (protocol auto: an HTTP/2 request goes upstream as h2c) and authority "grpc" → service grpc
# (protocol grpc), both with the three h2c endpoints.
if has meshd; then
    cp "$MESHD_BIN" "$TMP/bin/meshd" # a private copy: a concurrent rebuild cannot swap it mid-run
    MESHD_SHA=$(sha256sum "$TMP/bin/meshd" | cut -c1-12)
    MESHD_MTIME=$(date -u -r "$MESHD_BIN" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo unknown)
    free_port MESHD_PORT
    free_port MESHD_IN_PORT
    free_port MESHD_ADMIN
    mkdir -p "$TMP/meshd"
    {
        cat <<EOC
threads: 1
mode: sidecar
drainTimeout: 2s
accessLog: false
outbound:
  listen: 127.0.0.1:$MESHD_PORT
inbound:
  listen: 127.0.0.1:$MESHD_IN_PORT
  app: ${BACKEND_EPS[0]}
admin:
  listen: 127.0.0.1:$MESHD_ADMIN
http2:
  maxConcurrentStreams: 100
  initialWindowSize: 262144
  maxConnectionsPerEndpoint: 16
services:
  - name: bench
    protocol: auto
    endpoints:
EOC
        for ep in "${BACKEND_EPS[@]}"; do echo "      - $ep"; done
        cat <<EOC
  - name: grpc
    protocol: grpc
    endpoints:
EOC
        for ep in "${BACKEND_EPS[@]}"; do echo "      - $ep"; done
        cat <<EOC
routes:
  - name: bench
    match: {authority: bench}
    service: bench
  - name: grpc
    match: {authority: grpc}
    service: grpc
EOC
    } >"$TMP/meshd/meshd.yaml"
    "$TMP/bin/meshd" --config "$TMP/meshd/meshd.yaml" --threads 1 --check >"$TMP/meshd/check.log" 2>&1 ||
        { sed 's/^/    /' "$TMP/meshd/check.log" >&2; die "meshd --check rejected the benchmark config (does $MESHD_BIN support HTTP/2?)"; }
    log "starting meshd (outbound 127.0.0.1:$MESHD_PORT, admin 127.0.0.1:$MESHD_ADMIN)"
    start_bg "$TMP/meshd/stderr.log" "${PIN_PROXY[@]}" "$TMP/bin/meshd" --config "$TMP/meshd/meshd.yaml" --threads 1
    MESHD_PID=$LAST_PID
    deadline=$((SECONDS + 15))
    until curl -fsS -m 1 -o /dev/null "http://127.0.0.1:$MESHD_ADMIN/ready" 2>/dev/null; do
        kill -0 "$MESHD_PID" 2>/dev/null || { sed 's/^/    /' "$TMP/meshd/stderr.log" >&2; die "meshd exited during startup"; }
        ((SECONDS < deadline)) || { sed 's/^/    /' "$TMP/meshd/stderr.log" >&2; die "meshd /ready not 2xx within 15 s"; }
        sleep 0.1
    done
    sleep 1
    MESHD_RSS_IDLE_KB=$(proc_mem "$MESHD_PID" VmRSS)
    wait_h2 "meshd" "$MESHD_PID" "$TMP/meshd/stderr.log" "$MESHD_PORT"
    check_grpc "meshd" "$MESHD_PORT" "$TMP/meshd/grpc-check.txt" || die "meshd lost the gRPC trailers (see above)"
fi

# ---------------------------------------------------------------------------------------------
# HAProxy: one thread, h2c on both sides (bind ... proto h2, server ... proto h2), idle server
# connections shared by all clients (http-reuse always lets streams of any client share them).
if has haproxy; then
    free_port HAPROXY_PORT
    HAPROXY_SERVERS="" i=0
    for ep in "${BACKEND_EPS[@]}"; do i=$((i + 1)); HAPROXY_SERVERS+="    server backend$i $ep proto h2"$'\n'; done
    mkdir -p "$TMP/haproxy"
    cat >"$TMP/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 30s

frontend fe
    bind 127.0.0.1:$HAPROXY_PORT proto h2
    default_backend be

backend be
    balance roundrobin
${HAPROXY_SERVERS%$'\n'}
EOF
    "$HAPROXY_BIN" -c -q -f "$TMP/haproxy/haproxy.cfg" >"$TMP/haproxy/check.log" 2>&1 ||
        { sed 's/^/    /' "$TMP/haproxy/check.log" >&2; die "haproxy rejected its config"; }
    log "starting HAProxy on 127.0.0.1:$HAPROXY_PORT"
    start_bg "$TMP/haproxy/stderr.log" "${PIN_PROXY[@]}" "$HAPROXY_BIN" -db -f "$TMP/haproxy/haproxy.cfg"
    HAPROXY_PID=$LAST_PID
    sleep 0.5
    HAPROXY_RSS_IDLE_KB=$(proc_mem "$HAPROXY_PID" VmRSS)
    wait_h2 "haproxy" "$HAPROXY_PID" "$TMP/haproxy/stderr.log" "$HAPROXY_PORT"
    check_grpc "haproxy" "$HAPROXY_PORT" "$TMP/haproxy/grpc-check.txt" || die "HAProxy lost the gRPC trailers (see above)"
fi

# ---------------------------------------------------------------------------------------------
# nginx as proxy: one worker, h2c front. Plain requests: proxy_pass to the backend's HTTP/1.1
# endpoints with a keep-alive pool (nginx's proxy module has no HTTP/2 upstream). gRPC: grpc_pass
# to the backend's h2c endpoints (keep-alive pool too).
if has nginx; then
    free_port NGXPROXY_PORT
    NGX_H1_SERVERS="" NGX_H2_SERVERS=""
    for ep in "${BACKEND_H1_EPS[@]}"; do NGX_H1_SERVERS+="        server $ep;"$'\n'; done
    for ep in "${BACKEND_EPS[@]}"; do NGX_H2_SERVERS+="        server $ep;"$'\n'; done
    mkdir -p "$TMP/ngxproxy"
    cat >"$TMP/ngxproxy/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/ngxproxy/nginx.pid;
error_log $TMP/ngxproxy/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/ngxproxy/client_body;
    proxy_temp_path $TMP/ngxproxy/proxy;
    fastcgi_temp_path $TMP/ngxproxy/fastcgi;
    uwsgi_temp_path $TMP/ngxproxy/uwsgi;
    scgi_temp_path $TMP/ngxproxy/scgi;
    keepalive_requests 100000;
    keepalive_timeout 75s;
    http2_max_concurrent_streams 256;
    upstream backend_h1 {
${NGX_H1_SERVERS%$'\n'}
        keepalive 64;
        keepalive_requests 100000;
    }
    upstream backend_h2 {
${NGX_H2_SERVERS%$'\n'}
        keepalive 64;
        keepalive_requests 100000;
    }
    server {
        listen 127.0.0.1:$NGXPROXY_PORT http2 default_server;
        location / {
            proxy_pass http://backend_h1;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location = $GRPC_PATH {
            grpc_pass grpc://backend_h2;
        }
    }
}
EOF
    log "starting nginx proxy on 127.0.0.1:$NGXPROXY_PORT"
    start_bg "$TMP/ngxproxy/stderr.log" "${PIN_PROXY[@]}" "$NGINX_BIN" -p "$TMP/ngxproxy" -e "$TMP/ngxproxy/error.log" -c "$TMP/ngxproxy/nginx.conf"
    NGXPROXY_PID=$LAST_PID
    sleep 0.5
    NGXPROXY_RSS_IDLE_KB=$(proc_mem "$NGXPROXY_PID" VmRSS)
    wait_h2 "nginx proxy" "$NGXPROXY_PID" "$TMP/ngxproxy/stderr.log" "$NGXPROXY_PORT"
    check_grpc "nginx proxy" "$NGXPROXY_PORT" "$TMP/ngxproxy/grpc-check.txt" || die "the nginx proxy lost the gRPC trailers (see above)"
fi

# ---------------------------------------------------------------------------------------------
# Caddy as proxy (a third peer): one Go thread running Go code (GOMAXPROCS=1, pinned like every
# proxy), h2c front, h2c to the backend's endpoints for both scenarios (gRPC included), round robin.
if has caddy; then
    free_port CADDY_PORT
    mkdir -p "$TMP/caddy"
    cat >"$TMP/caddy/Caddyfile" <<EOF
{
    admin off
    auto_https off
    servers {
        protocols h1 h2 h2c
    }
}
http://:$CADDY_PORT {
    bind 127.0.0.1
    reverse_proxy ${BACKEND_EPS[*]} {
        lb_policy round_robin
        transport http {
            versions h2c
            keepalive 75s
        }
    }
}
EOF
    start_caddy "$TMP/caddy"
    wait_h2 "caddy" "$CADDY_PID" "$TMP/caddy/stderr.log" "$CADDY_PORT"
    check_grpc "caddy" "$CADDY_PORT" "$TMP/caddy/grpc-check.txt" || die "Caddy lost the gRPC trailers (see above)"
fi

# ---------------------------------------------------------------------------------------------
# Scenarios and targets.
SCENS=(h2 grpc)
declare -A SCEN_LABEL=([h2]="HTTP/2 GET (h2c)" [grpc]="gRPC-shaped unary POST (h2c)")
declare -A LABEL SHORT PORT PPID_OF
LABEL[direct]="direct (h2load → nginx backend)"
LABEL[meshd]="meshd sidecar outbound (threads 1)"
LABEL[haproxy]="HAProxy (nbthread 1, h2 both sides)"
LABEL[nginx]="nginx proxy (1 worker)"
LABEL[caddy]="Caddy (GOMAXPROCS=1, h2c both sides)"
SHORT[direct]=direct SHORT[meshd]=meshd SHORT[haproxy]=HAProxy SHORT[nginx]=nginx SHORT[caddy]=Caddy
PORT[direct]=$BACKEND_PORT PPID_OF[direct]=""
if has meshd; then PORT[meshd]=$MESHD_PORT PPID_OF[meshd]=$MESHD_PID; fi
if has haproxy; then PORT[haproxy]=$HAPROXY_PORT PPID_OF[haproxy]=$HAPROXY_PID; fi
if has nginx; then PORT[nginx]=$NGXPROXY_PORT PPID_OF[nginx]=$NGXPROXY_PID; fi
if has caddy; then PORT[caddy]=$CADDY_PORT PPID_OF[caddy]=$CADDY_PID; fi
CAND_ORDER=""
for s in "${SCENS[@]}"; do for c in "${CANDS[@]}"; do CAND_ORDER+="$s ${SHORT[$c]}, "; done; done
CAND_ORDER=${CAND_ORDER%, }

TS=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS_DIR=$REPO/bench/results
mkdir -p "$RESULTS_DIR"
RAW_DIR=$RESULTS_DIR/http2-$TS.raw
mkdir -p "$RAW_DIR"

# run_h2load <scenario> <seconds> <port> <outfile> [logfile]: bounded by timeout.
run_h2load() {
    local scen=$1 secs=$2 port=$3 out=$4 logf=${5:-} rc=0 args=()
    args=(-t "$H2LOAD_THREADS" -c "$CONNS" -m "$STREAMS" -D "$secs" --connect-to "127.0.0.1:$port")
    [[ -n $logf ]] && args+=(--log-file "$logf")
    if [[ $scen == grpc ]]; then
        args+=(-H 'content-type: application/grpc' -H 'te: trailers' -d "$TMP/grpc-request.bin" "http://grpc$GRPC_PATH")
    else
        args+=("http://bench/")
    fi
    timeout -k 5 $((secs + 20)) "${PIN_LOAD[@]}" h2load "${args[@]}" >"$out" 2>&1 &
    CURRENT_LOAD=$!
    wait "$CURRENT_LOAD" || rc=$?
    CURRENT_LOAD=""
    return "$rc"
}

# parse_h2load <file>: "rps total succeeded failed errored timeout 2xx non2xx mean_ms sd_ms max_ms".
parse_h2load() {
    awk '
    function ms(v,   n, u) {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n / 1000; if (u == "ms") return n; if (u == "s") return n * 1000; return -1
    }
    /^finished in/ { rps = $4 }
    /^requests:/ { gsub(/,/, ""); total = $2; ok = $8; failed = $10; errored = $12; tmo = $14 }
    /^status codes:/ { gsub(/,/, ""); s2 = $3; other = $5 + $7 + $9 }
    /^time for request:/ { mx = ms($5); mean = ms($6); sd = ms($7) }
    END {
        printf "%s %d %d %d %d %d %d %d %s %s %s\n", (rps == "" ? 0 : rps), total, ok, failed, errored, tmo, s2, other,
            (mean == "" ? -1 : mean), (sd == "" ? -1 : sd), (mx == "" ? -1 : mx)
    }' "$1"
}

# latency_pct <logfile...>: nearest-rank p50 p90 p99 p99.9 max (ms) and the sample count over the
# per-request times (column 3, µs) of h2load --log-file, failed streams (status -1) left out.
latency_pct() {
    local sorted=$TMP/sorted.txt n
    awk -F'\t' '$2 != -1 { print $3 }' "$@" | sort -n -S 64M >"$sorted"
    n=$(wc -l <"$sorted")
    if ((n == 0)); then echo "-1 -1 -1 -1 -1 0"; return; fi
    awk -v n="$n" 'function rank(p,   r) { r = int(p * n); if (r < p * n) r++; if (r < 1) r = 1; return r }
        BEGIN { r50 = rank(0.5); r90 = rank(0.9); r99 = rank(0.99); r999 = rank(0.999) }
        NR == r50 { p50 = $1 } NR == r90 { p90 = $1 } NR == r99 { p99 = $1 } NR == r999 { p999 = $1 } { mx = $1 }
        END { printf "%.3f %.3f %.3f %.3f %.3f %d\n", p50 / 1000, p90 / 1000, p99 / 1000, p999 / 1000, mx / 1000, n }' "$sorted"
}

declare -A R_RPS R_P50 R_P90 R_P99 R_P999 R_MAX R_MEAN R_REQ R_ERR R_NON2XX R_RC R_TICKS R_BG
FAILURES=()

for run in $(seq 1 "$RUNS"); do
    for s in "${SCENS[@]}"; do
        for c in "${CANDS[@]}"; do
            k=$s,$c,$run
            port=${PORT[$c]}
            ppid=${PPID_OF[$c]}
            if [[ -n $ppid ]] && ! kill -0 "$ppid" 2>/dev/null; then
                log "run $run/$RUNS $s $c: process $ppid is gone"
                FAILURES+=("$s $c run $run: proxy process exited before the measurement")
                R_RPS[$k]=0 R_P50[$k]=-1 R_P90[$k]=-1 R_P99[$k]=-1 R_P999[$k]=-1 R_MAX[$k]=-1 R_MEAN[$k]=-1
                R_REQ[$k]=0 R_ERR[$k]=0 R_NON2XX[$k]=0 R_RC[$k]=-1 R_TICKS[$k]=-1 R_BG[$k]=-1
                continue
            fi
            log "run $run/$RUNS $s $c: warm-up ${WARMUP}s"
            run_h2load "$s" "$WARMUP" "$port" "$RAW_DIR/$s-$c-run$run-warmup.txt" || true
            t0=0
            [[ -n $ppid ]] && t0=$(proc_ticks "$ppid")
            children_ticks; w0=$CHILD_TICKS m0=$(machine_busy_ticks) b0=$(proc_ticks "$BACKEND_PID")
            log "run $run/$RUNS $s $c: measuring ${DURATION}s"
            rc=0
            run_h2load "$s" "$DURATION" "$port" "$RAW_DIR/$s-$c-run$run.txt" "$TMP/$s-$c-run$run.log" || rc=$?
            t1=0
            [[ -n $ppid ]] && t1=$(proc_ticks "$ppid")
            children_ticks; w1=$CHILD_TICKS m1=$(machine_busy_ticks) b1=$(proc_ticks "$BACKEND_PID")
            read -r rps total ok failed errored tmo s2 other mean sd mx < <(parse_h2load "$RAW_DIR/$s-$c-run$run.txt")
            read -r p50 p90 p99 p999 lmax nlat < <(latency_pct "$TMP/$s-$c-run$run.log")
            R_RPS[$k]=$rps R_P50[$k]=$p50 R_P90[$k]=$p90 R_P99[$k]=$p99 R_P999[$k]=$p999 R_MAX[$k]=$lmax R_MEAN[$k]=$mean
            R_REQ[$k]=$ok R_ERR[$k]=$((failed + errored + tmo)) R_NON2XX[$k]=$other R_RC[$k]=$rc
            if [[ -z $t1 ]]; then R_TICKS[$k]=-1; else R_TICKS[$k]=$((t1 - t0)); fi
            R_BG[$k]=$(awk -v m=$((m1 - m0)) -v w=$((w1 - w0)) -v b=$((${b1:-0} - ${b0:-0})) -v t=$((${t1:-0} - t0)) \
                -v hz="$CLK_TCK" -v d="$DURATION" 'BEGIN { x = (m - w - b - t) / hz / d * 100; if (x < 0) x = 0; printf "%.0f", x }')
            log "run $run/$RUNS $s $c: ${rps} req/s, p50 ${p50} ms, p99 ${p99} ms, succeeded $ok, failed/errored/timeout $failed/$errored/$tmo, non-2xx $other, h2load exit $rc"
            if ((rc != 0)); then FAILURES+=("$s $c run $run: h2load exited with status $rc"); fi
            if ((ok == 0)); then FAILURES+=("$s $c run $run: zero requests succeeded"); fi
            if ((failed + errored + tmo + other > 0)); then
                FAILURES+=("$s $c run $run: $failed failed, $errored errored, $tmo timed out, $other non-2xx responses")
            fi
            if ((nlat != ok)); then log "run $run/$RUNS $s $c: note: --log-file has $nlat successful rows, h2load counted $ok"; fi
        done
    done
done

# Resources and logs after the runs.
MESHD_WARN_LINES=0
MESHD_ALIVE=n/a
if has meshd; then
    MESHD_ALIVE=yes
    MESHD_RSS_AFTER_KB=$(proc_mem "$MESHD_PID" VmRSS)
    MESHD_HWM_KB=$(proc_mem "$MESHD_PID" VmHWM)
    if ! kill -0 "$MESHD_PID" 2>/dev/null; then MESHD_ALIVE=no; FAILURES+=("meshd exited during the benchmark"); fi
    curl -fsS -m 5 "http://127.0.0.1:$MESHD_ADMIN/metrics" >"$RAW_DIR/meshd-metrics.txt" 2>/dev/null || true
    cp "$TMP/meshd/stderr.log" "$RAW_DIR/meshd-stderr.log" 2>/dev/null || true
    cp "$TMP/meshd/meshd.yaml" "$RAW_DIR/meshd.yaml" 2>/dev/null || true
    cp "$TMP/meshd/grpc-check.txt" "$RAW_DIR/meshd-grpc-check.txt" 2>/dev/null || true
    MESHD_WARN_LINES=$(grep -cE '"level":"(warning|error|critical)"' "$TMP/meshd/stderr.log" || true)
fi
if has haproxy; then
    HAPROXY_RSS_AFTER_KB=$(proc_mem "$HAPROXY_PID" VmRSS)
    HAPROXY_HWM_KB=$(proc_mem "$HAPROXY_PID" VmHWM)
    cp "$TMP/haproxy/haproxy.cfg" "$RAW_DIR/" 2>/dev/null || true
fi
if has nginx; then
    NGXPROXY_RSS_AFTER_KB=$(proc_mem "$NGXPROXY_PID" VmRSS)
    NGXPROXY_HWM_KB=$(proc_mem "$NGXPROXY_PID" VmHWM)
    cp "$TMP/ngxproxy/nginx.conf" "$RAW_DIR/nginx-proxy.conf" 2>/dev/null || true
    cp "$TMP/ngxproxy/error.log" "$RAW_DIR/nginx-proxy-error.log" 2>/dev/null || true
fi
if has caddy; then
    CADDY_RSS_AFTER_KB=$(proc_mem "$CADDY_PID" VmRSS)
    CADDY_HWM_KB=$(proc_mem "$CADDY_PID" VmHWM)
    cp "$TMP/caddy/Caddyfile" "$RAW_DIR/" 2>/dev/null || true
fi
cp "$TMP/backend/nginx.conf" "$RAW_DIR/nginx-backend.conf" 2>/dev/null || true
cp "$TMP/backend/error.log" "$RAW_DIR/nginx-backend-error.log" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
# Aggregation and report.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 <= 0 || b + 0 <= 0) print "n/a"; else printf "%.2f", a / b }'; }
fmt_ms() { awk -v v="$1" 'BEGIN { if (v == "" || v < 0) print "n/a"; else printf "%.3f", v }'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a < 0 || b < 0) print "n/a"; else printf "%+.3f", a - b }'; }
cpu_per_1k() { awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { if (n <= 0 || t < 0) print "n/a"; else printf "%.4f", t / hz / n * 1000 }'; }
mib() { awk -v k="${1:-0}" 'BEGIN { if (k <= 0) print "n/a"; else printf "%.1f", k / 1024 }'; }
spread() {
    printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g | awk '{ a[NR] = $1 }
        END { if (NR < 2) { print "n/a"; exit }
              m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
              if (m <= 0) print "n/a"; else printf "%.4f\n", (a[NR] - a[1]) / m }'
}

declare -A M_RPS M_P50 M_P90 M_P99 M_P999 M_MAX ERRS REQS TICKS SPREAD
for s in "${SCENS[@]}"; do
    for c in "${CANDS[@]}"; do
        v=()
        for r in $(seq 1 "$RUNS"); do v+=("${R_RPS[$s,$c,$r]}"); done
        M_RPS[$s,$c]=$(median "${v[@]}")
        SPREAD[$s,$c]=$(spread "${v[@]}")
        logs=()
        for r in $(seq 1 "$RUNS"); do [[ -f $TMP/$s-$c-run$r.log ]] && logs+=("$TMP/$s-$c-run$r.log"); done
        if ((${#logs[@]} > 0)); then
            read -r "M_P50[$s,$c]" "M_P90[$s,$c]" "M_P99[$s,$c]" "M_P999[$s,$c]" "M_MAX[$s,$c]" _ < <(latency_pct "${logs[@]}")
        else
            M_P50[$s,$c]=-1 M_P90[$s,$c]=-1 M_P99[$s,$c]=-1 M_P999[$s,$c]=-1 M_MAX[$s,$c]=-1
        fi
        e=0 n=0 t=0
        for r in $(seq 1 "$RUNS"); do
            k=$s,$c,$r
            e=$((e + R_ERR[$k] + R_NON2XX[$k])); n=$((n + R_REQ[$k]))
            if ((t >= 0 && R_TICKS[$k] >= 0)); then t=$((t + R_TICKS[$k])); else t=-1; fi
        done
        ERRS[$s,$c]=$e REQS[$s,$c]=$n TICKS[$s,$c]=$t
    done
done

NGINX_VER=$("$NGINX_BIN" -v 2>&1 | sed -n '1s/^nginx version: //p')
HAPROXY_VER=$([[ -n $HAPROXY_BIN ]] && "$HAPROXY_BIN" -v 2>&1 | awk 'NR == 1 { print $1, $2, $3 }' || echo "HAProxy n/a") # (awk reads it all: no SIGPIPE under pipefail)
H2LOAD_VER=$(h2load --version 2>&1 | awk 'NR == 1')
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)

REPORT=$TMP/report.md
{
    echo "### HTTP/2 and gRPC proxy overhead — $(date -u +%Y-%m-%d)"
    echo
    echo "Method: closed-loop h2load for throughput — the same client (h2load, ${H2LOAD_THREADS} thread, ${CONNS} h2c connections × ${STREAMS} concurrent streams each, prior knowledge), the same ${DURATION} s duration after a ${WARMUP} s warm-up, and the same CPU placement for every target, all measured in one run of \`bench/http2.sh\` $(if ((RUNS > 1)); then echo "with scenarios and targets interleaved (${CAND_ORDER}) in each of ${RUNS} runs"; else echo "one after the other (${CAND_ORDER}), once each"; fi)."
    echo "Two scenarios: **h2** = \`GET /\` (authority \`bench\`) → \"ok\\n\" from one nginx worker; **grpc** = a gRPC-shaped unary call: \`POST ${GRPC_PATH}\` (authority \`grpc\`) with \`content-type: application/grpc\`, \`te: trailers\` and a 12-byte gRPC-framed body, answered by the same nginx with a 9-byte gRPC-framed message and the trailers \`grpc-status: 0\`, \`grpc-message: OK\` (each target is checked once with \`nghttp -v\` before the runs: DATA, then the grpc-status trailer ending the stream)."
    echo "Placement: ${PLACEMENT}. Backend endpoints: ${ENDPOINTS_DESC} (\`${BACKEND_EPS[*]}\`, h2c prior knowledge, \`listen … http2\`; plus HTTP/1.1 listeners \`${BACKEND_H1_EPS[*]}\` for the nginx proxy), all served by the same single nginx worker; every proxy balances round robin over the three; the direct baseline talks to the first one."
    echo "Proxies: **meshd** — one process, \`threads: 1\` / \`--threads 1\`, sidecar outbound listener, route \`authority: bench\` → service \`bench\` (\`protocol: auto\`: an HTTP/2 request goes upstream as h2c) and \`authority: grpc\` → service \`grpc\` (\`protocol: grpc\`), \`http2: {maxConcurrentStreams: 100, initialWindowSize: 262144, maxConnectionsPerEndpoint: 16}\`, no access log. **HAProxy** — \`nbthread 1\`, \`bind … proto h2\`, \`server … proto h2\` (h2c both sides), \`http-reuse always\`. **nginx** — one worker, \`listen … http2\`; for **h2** it uses \`proxy_pass\` to the backend's HTTP/1.1 endpoints with \`keepalive 64\` (nginx's proxy module cannot speak HTTP/2 upstream, so this row is HTTP/2 → HTTP/1.1 translation, not h2 → h2); for **grpc** it uses \`grpc_pass grpc://\` (its real HTTP/2 upstream, \`keepalive 64\`).$(has caddy && echo " **Caddy** — \`GOMAXPROCS=1\`, \`servers { protocols h1 h2 h2c }\`, \`reverse_proxy\` over the three endpoints with \`lb_policy round_robin\` and \`transport http { versions h2c }\` (h2c both sides, both scenarios).")"
    if ((RUNS > 1)); then
        echo "req/s is the median across the ${RUNS} runs. Latency percentiles (nearest rank) are computed from every request's time in h2load's \`--log-file\` (request start → end of response), with the samples of all ${RUNS} runs merged (not medians of per-run percentiles); the per-run table has each run's own. Errors are summed over all runs."
    else
        echo "Single run (RUNS=1): figures are that run's. Latency percentiles (nearest rank) are computed from every request's time in h2load's \`--log-file\` (request start → end of response)."
    fi
    echo "Closed-loop latency is latency at saturation (it includes queueing in the client and ${STREAMS} streams in flight per connection), not latency at a fixed request rate. Errors = h2load failed + errored + timed-out requests + non-2xx responses. Background CPU (per-run table) is machine busy time not used by h2load, the backend or the proxy under test during the measured window."
    for s in "${SCENS[@]}"; do
        echo
        echo "**${SCEN_LABEL[$s]}**"
        echo
        echo "| target | req/s | p50 (ms) | p90 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | errors | req/s ÷ direct | req/s ÷ nginx | req/s ÷ HAProxy | added p50 (ms) | added p90 (ms) | added p99 (ms) | added p99.9 (ms) |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for c in "${CANDS[@]}"; do
            rvd=$(ratio "${M_RPS[$s,$c]}" "${M_RPS[$s,direct]}")
            rvn="—" rvh="—" a50="—" a90="—" a99="—" a999="—"
            if [[ $c != direct && $c != nginx ]] && has nginx; then rvn=$(ratio "${M_RPS[$s,$c]}" "${M_RPS[$s,nginx]}"); fi
            if [[ $c != direct && $c != haproxy ]] && has haproxy; then rvh=$(ratio "${M_RPS[$s,$c]}" "${M_RPS[$s,haproxy]}"); fi
            if [[ $c != direct ]]; then
                a50=$(added "${M_P50[$s,$c]}" "${M_P50[$s,direct]}")
                a90=$(added "${M_P90[$s,$c]}" "${M_P90[$s,direct]}")
                a99=$(added "${M_P99[$s,$c]}" "${M_P99[$s,direct]}")
                a999=$(added "${M_P999[$s,$c]}" "${M_P999[$s,direct]}")
            fi
            label=${LABEL[$c]}
            [[ $c == nginx && $s == h2 ]] && label+=", HTTP/1.1 upstream"
            [[ $c == nginx && $s == grpc ]] && label+=", grpc_pass"
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" \
                "$(calc '%.0f' "${M_RPS[$s,$c]}")" "$(fmt_ms "${M_P50[$s,$c]}")" "$(fmt_ms "${M_P90[$s,$c]}")" \
                "$(fmt_ms "${M_P99[$s,$c]}")" "$(fmt_ms "${M_P999[$s,$c]}")" "$(fmt_ms "${M_MAX[$s,$c]}")" \
                "${ERRS[$s,$c]}" "$rvd" "$rvn" "$rvh" "$a50" "$a90" "$a99" "$a999"
        done
    done
    echo
    if ((RUNS > 1)); then
        printf 'Noise measure (req/s across the %s runs, max − min relative to the median):' "$RUNS"
        sep=" "
        for s in "${SCENS[@]}"; do
            for c in "${CANDS[@]}"; do printf '%s%s %s %s' "$sep" "$s" "${SHORT[$c]}" "$(pct "${SPREAD[$s,$c]}")"; sep="; "; done
        done
        echo "."
    else
        echo "Noise measure: needs RUNS ≥ 2."
    fi
    echo
    echo "Proxy resources (CPU = utime+stime of the proxy process(es) during the measured windows only, divided by the requests h2load completed in them; nginx figures are master + worker; memory over the whole run, both scenarios):"
    echo
    echo "| proxy | CPU s per 1000 req, h2 | CPU s per 1000 req, grpc | RSS idle (MiB) | RSS after run (MiB) | peak RSS, VmHWM (MiB) |"
    echo "|---|---:|---:|---:|---:|---:|"
    if has meshd; then echo "| meshd | $(cpu_per_1k "${TICKS[h2,meshd]}" "${REQS[h2,meshd]}") | $(cpu_per_1k "${TICKS[grpc,meshd]}" "${REQS[grpc,meshd]}") | $(mib "$MESHD_RSS_IDLE_KB") | $(mib "$MESHD_RSS_AFTER_KB") | $(mib "$MESHD_HWM_KB") |"; fi
    if has haproxy; then echo "| HAProxy | $(cpu_per_1k "${TICKS[h2,haproxy]}" "${REQS[h2,haproxy]}") | $(cpu_per_1k "${TICKS[grpc,haproxy]}" "${REQS[grpc,haproxy]}") | $(mib "$HAPROXY_RSS_IDLE_KB") | $(mib "$HAPROXY_RSS_AFTER_KB") | $(mib "$HAPROXY_HWM_KB") |"; fi
    if has nginx; then echo "| nginx proxy | $(cpu_per_1k "${TICKS[h2,nginx]}" "${REQS[h2,nginx]}") | $(cpu_per_1k "${TICKS[grpc,nginx]}" "${REQS[grpc,nginx]}") | $(mib "$NGXPROXY_RSS_IDLE_KB") | $(mib "$NGXPROXY_RSS_AFTER_KB") | $(mib "$NGXPROXY_HWM_KB") |"; fi
    if has caddy; then echo "| Caddy | $(cpu_per_1k "${TICKS[h2,caddy]}" "${REQS[h2,caddy]}") | $(cpu_per_1k "${TICKS[grpc,caddy]}" "${REQS[grpc,caddy]}") | $(mib "$CADDY_RSS_IDLE_KB") | $(mib "$CADDY_RSS_AFTER_KB") | $(mib "$CADDY_HWM_KB") |"; fi
    echo
    echo "Per run:"
    echo
    echo "| run | scenario | target | req/s | p50 (ms) | p90 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | mean (ms) | requests | proxy CPU s per 1000 req | failed+errored+timeout | non-2xx | background CPU (% of one CPU) |"
    echo "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for r in $(seq 1 "$RUNS"); do
        for s in "${SCENS[@]}"; do
            for c in "${CANDS[@]}"; do
                k=$s,$c,$r
                if [[ $c == direct ]]; then rc1k="—"; else rc1k=$(cpu_per_1k "${R_TICKS[$k]}" "${R_REQ[$k]}"); fi
                printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$r" "$s" "${SHORT[$c]}" \
                    "$(calc '%.0f' "${R_RPS[$k]}")" "$(fmt_ms "${R_P50[$k]}")" "$(fmt_ms "${R_P90[$k]}")" "$(fmt_ms "${R_P99[$k]}")" \
                    "$(fmt_ms "${R_P999[$k]}")" "$(fmt_ms "${R_MAX[$k]}")" "$(fmt_ms "${R_MEAN[$k]}")" "${R_REQ[$k]}" "$rc1k" \
                    "${R_ERR[$k]}" "${R_NON2XX[$k]}" "$(awk -v x="${R_BG[$k]}" 'BEGIN { print (x < 0 ? "n/a" : x) }')"
            done
        done
    done
    echo
    echo "Machine: $NCPU CPUs (\`nproc\`)${CPU_MODEL:+, $CPU_MODEL}; kernel $(uname -sr); $(date -u +%Y-%m-%dT%H:%M:%SZ); meshd commit \`$GIT_COMMIT\`$GIT_DIRTY, binary built $MESHD_MTIME (sha256 $MESHD_SHA…); nginx $NGINX_VER; $HAPROXY_VER; ${CADDY_BIN:+Caddy $("$CADDY_BIN" version 2>/dev/null | awk 'NR == 1 { print $1 }'); }$H2LOAD_VER. Load average before/after: $LOADAVG_START / $(cut -d' ' -f1-3 /proc/loadavg)."
    if ((!ALL_TARGETS)); then
        echo
        echo "**Partial run:** TARGETS=\"${CANDS[*]}\"; the other targets were not measured."
    fi
    DISTURBED=()
    for r in $(seq 1 "$RUNS"); do
        for s in "${SCENS[@]}"; do
            for c in "${CANDS[@]}"; do
                if ((${R_BG[$s,$c,$r]} > 10)); then DISTURBED+=("$s ${SHORT[$c]} run $r (${R_BG[$s,$c,$r]} %)"); fi
            done
        done
    done
    if ((${#DISTURBED[@]} > 0)); then
        echo
        echo "**Warning:** other work used more than 10 % of a CPU during: ${DISTURBED[*]}. Those figures are disturbed; re-run on a quiet machine before drawing conclusions."
    fi
    if ((${#FAILURES[@]} > 0)); then
        echo
        echo "**Failures:**"
        for f in "${FAILURES[@]}"; do echo "- $f"; done
    fi
} >"$REPORT"

RESULT_FILE=$RESULTS_DIR/http2-$TS.md
{
    echo "# meshd HTTP/2 benchmark — $TS"
    echo
    cat "$REPORT"
    echo
    echo "Raw h2load output, configs and meshd's stderr and metrics: \`bench/results/http2-$TS.raw/\`. meshd warning/error log lines: $MESHD_WARN_LINES; meshd still running at the end: $MESHD_ALIVE."
} >"$RESULT_FILE"

echo
cat "$REPORT"
echo
if ((${#DISTURBED[@]} > 0)); then log "warning: disturbed measurements (background CPU > 10 %): ${DISTURBED[*]}"; fi
log "results written to ${RESULT_FILE#"$REPO"/} (raw data in ${RAW_DIR#"$REPO"/}/)"
if ((MESHD_WARN_LINES > 0)); then
    log "meshd logged $MESHD_WARN_LINES warning/error lines; first 20:"
    grep -E '"level":"(warning|error|critical)"' "$TMP/meshd/stderr.log" | head -20 | sed 's/^/    /' >&2 || true
fi

if ((UPDATE_DOCS)); then
    if ((${#FAILURES[@]} > 0)); then
        log "not updating docs/performance.md: some targets failed (see below)"
    elif ((!ALL_TARGETS)); then
        log "not updating docs/performance.md: TARGETS is a subset (${CANDS[*]})"
    else
        DOC=$REPO/docs/performance.md
        if [[ ! -f $DOC ]]; then
            mkdir -p "$(dirname "$DOC")"
            printf '# Performance\n\nGenerated by the scripts in `bench/` (see `bench/README.md`).\n' >"$DOC"
        fi
        if ! grep -q '^<!-- http2:begin -->' "$DOC" || ! grep -q '^<!-- http2:end -->' "$DOC"; then
            if grep -q '^<!-- http1:end -->' "$DOC"; then
                # right after the HTTP/1.1 section
                awk '{ print } /^<!-- http1:end -->/ { print ""; print "## HTTP/2 and gRPC"; print ""; print "<!-- http2:begin -->"; print "<!-- http2:end -->" }' \
                    "$DOC" >"$TMP/performance.md"
                cat "$TMP/performance.md" >"$DOC"
            else
                printf '\n## HTTP/2 and gRPC\n\n<!-- http2:begin -->\n<!-- http2:end -->\n' >>"$DOC"
            fi
        fi
        awk -v f="$REPORT" '
            /^<!-- http2:begin -->/ { print; while ((getline line < f) > 0) print line; skip = 1; next }
            /^<!-- http2:end -->/ { skip = 0 }
            !skip { print }' "$DOC" >"$TMP/performance.md"
        cat "$TMP/performance.md" >"$DOC"
        log "updated the http2 section of docs/performance.md"
    fi
fi

if ((${#FAILURES[@]} > 0)); then
    log "FAILED: at least one target did not serve cleanly:"
    for f in "${FAILURES[@]}"; do log "  - $f"; done
    exit 1
fi
log "all targets served without errors"
