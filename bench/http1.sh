#!/usr/bin/env bash
# HTTP/1.1 proxy benchmark for meshd.
#
# In one run: starts an nginx backend reachable as 3 loopback endpoints, then measures with wrk
# (closed loop, keep-alive)
#   a. direct            wrk -> nginx backend (first endpoint)
#   b. meshd             wrk -> meshd sidecar outbound (--threads 1, balancer round_robin) -> 3 endpoints
#   c. meshd least_req.  same, its own meshd process with balancer least_request
#   d. meshd ewma        same, its own meshd process with balancer ewma
#   e. HAProxy           wrk -> haproxy (nbthread 1, balance roundrobin) -> 3 endpoints
#   f. nginx proxy       wrk -> nginx (1 worker, upstream keepalive, round robin) -> 3 endpoints
#   g. Caddy             wrk -> caddy (GOMAXPROCS=1, reverse_proxy round_robin) -> 3 endpoints
#                        (when caddy is installed: apt-get install caddy; left out with a note otherwise)
# interleaved a b c d e f g a b ... for RUNS repetitions, each measurement after a 2 s warm-up.
#
# Usage: bench/http1.sh [--update-docs]
# Env:   DURATION (s, default 10), RUNS (default 1), MESHD_BIN (default .build/release/meshd),
#        KEEP_TMP=1 keeps the temp dir (configs, logs) after the run.
# See bench/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/http1.sh [--update-docs]

  --update-docs   replace the section between <!-- http1:begin --> and <!-- http1:end -->
                  in docs/performance.md with the results (only if every candidate served
                  without errors)

environment: DURATION (seconds per measurement, default 10), RUNS (repetitions, default 1),
             MESHD_BIN (default <repo>/.build/release/meshd, built by scripts/build-release.sh), KEEP_TMP=1 (keep temp dir)
EOF
}

UPDATE_DOCS=0
for arg in "$@"; do
    case "$arg" in
        --update-docs) UPDATE_DOCS=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "http1.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
DURATION=${DURATION:-10}
RUNS=${RUNS:-1}
MESHD_BIN=${MESHD_BIN:-$REPO/.build/release/meshd}
WARMUP=2
CONNS=32
WRK_THREADS=1
HOST_HEADER=bench

log() { printf '[http1] %s\n' "$*" >&2; }
die() { printf '[http1] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 1 && DURATION <= 3600)) || die "DURATION must be an integer in 1..3600 (got '$DURATION')"
[[ $RUNS =~ ^[0-9]+$ ]] && ((RUNS >= 1 && RUNS <= 100)) || die "RUNS must be an integer in 1..100 (got '$RUNS')"
for tool in nginx haproxy wrk curl awk sort; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required but not installed"
done
[[ -x $MESHD_BIN ]] || die "meshd binary not found or not executable: $MESHD_BIN (build it or set MESHD_BIN)"
NGINX_BIN=$(command -v nginx)
HAPROXY_BIN=$(command -v haproxy)

# ---------------------------------------------------------------------------------------------
# CPU placement. Two cores: the proxy under test gets core 0 to itself; the backend nginx and
# wrk share core 1. Every candidate (and the direct baseline) sees the same placement.
NCPU=$(nproc)
PIN_PROXY=()
PIN_LOAD=()
if command -v taskset >/dev/null 2>&1 && ((NCPU >= 2)); then
    PIN_PROXY=(taskset -c 0)
    PIN_LOAD=(taskset -c 1)
    PLACEMENT="proxy under test pinned to CPU 0 (alone); nginx backend and wrk pinned to CPU 1 (shared); CPU 0 idle for the direct baseline"
else
    PLACEMENT="no CPU pinning (taskset missing or fewer than 2 CPUs): all processes share all CPUs"
fi

# ---------------------------------------------------------------------------------------------
BENCH_NAME=http1
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"

# wait_http <name> <pid> <logfile> <url> <expected body>: poll (at most 15 s) until the URL
# answers with the expected body (curl strips nothing; $(...) strips the trailing newline).
wait_http() {
    local name=$1 pid=$2 logfile=$3 url=$4 expect=$5 body deadline=$((SECONDS + 15))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during startup; its output:"
            sed 's/^/    /' "$logfile" >&2 || true
            die "$name failed to start"
        fi
        if body=$(curl -sS -m 1 -H "Host: $HOST_HEADER" "$url" 2>/dev/null) && [[ $body == "$expect" ]]; then
            return 0
        fi
        sleep 0.1
    done
    log "$name output so far:"
    sed 's/^/    /' "$logfile" >&2 || true
    die "$name did not answer '$expect' on $url within 15 s (last body: '${body:-}')"
}

# ---------------------------------------------------------------------------------------------
# Backend: nginx, one worker, returns "ok\n". It is reachable as three endpoints so that the
# balancers have something to choose from: 127.0.0.1, 127.0.0.2 and 127.0.0.3 on one port when
# the kernel routes those addresses to lo (Linux does for all of 127.0.0.0/8), otherwise three
# ports on 127.0.0.1. Every proxy (all meshd variants, HAProxy, nginx proxy) gets the same three;
# the direct baseline talks to the first one.
free_port BACKEND_PORT
BACKEND_EPS=()
if command -v ip >/dev/null 2>&1 &&
    ip -4 route get 127.0.0.2 2>/dev/null | grep -q '^local 127\.0\.0\.2 dev lo' &&
    ip -4 route get 127.0.0.3 2>/dev/null | grep -q '^local 127\.0\.0\.3 dev lo'; then
    BACKEND_EPS=("127.0.0.1:$BACKEND_PORT" "127.0.0.2:$BACKEND_PORT" "127.0.0.3:$BACKEND_PORT")
    ENDPOINTS_DESC="the backend listens on 127.0.0.1, 127.0.0.2 and 127.0.0.3, same port"
else
    free_port BACKEND_PORT2
    free_port BACKEND_PORT3
    BACKEND_EPS=("127.0.0.1:$BACKEND_PORT" "127.0.0.1:$BACKEND_PORT2" "127.0.0.1:$BACKEND_PORT3")
    ENDPOINTS_DESC="the backend listens on three ports of 127.0.0.1"
fi
BACKEND_LISTEN=""
for ep in "${BACKEND_EPS[@]}"; do BACKEND_LISTEN+="        listen $ep default_server;"$'\n'; done
mkdir -p "$TMP/backend"
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
    server {
${BACKEND_LISTEN%$'\n'}
        default_type text/plain;
        location / { return 200 "ok\n"; }
    }
}
EOF
log "starting nginx backend on ${BACKEND_EPS[*]}"
start_bg "$TMP/backend/stderr.log" "${PIN_LOAD[@]}" "$NGINX_BIN" -p "$TMP/backend" -e "$TMP/backend/error.log" -c "$TMP/backend/nginx.conf"
BACKEND_PID=$LAST_PID
for ep in "${BACKEND_EPS[@]}"; do
    wait_http "nginx backend" "$BACKEND_PID" "$TMP/backend/stderr.log" "http://$ep/" "ok"
done

# ---------------------------------------------------------------------------------------------
# meshd sidecars: one process per balancer variant, each --threads 1 / threads: 1, same config
# apart from `balancer:`. The outbound listener routes authority "bench" to service "bench",
# which has the three backend endpoints. Key "meshd" is the round_robin (default) candidate
# that the HAProxy / nginx comparison uses.
MESHD_KEYS=(meshd meshd_lr meshd_ewma)
declare -A MESHD_BALANCER=([meshd]=round_robin [meshd_lr]=least_request [meshd_ewma]=ewma)
declare -A MESHD_PID_OF MESHD_PORT_OF MESHD_ADMIN_OF MESHD_RSS_IDLE_OF MESHD_RSS_AFTER_OF MESHD_HWM_OF
# Run a private copy so a concurrent rebuild cannot swap the binary in the middle of the run.
mkdir -p "$TMP/bin"
cp "$MESHD_BIN" "$TMP/bin/meshd"
MESHD_SHA=$(sha256sum "$TMP/bin/meshd" | cut -c1-12)
MESHD_MTIME=$(date -u -r "$MESHD_BIN" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo unknown)
GIT_COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=""
[[ -n $(git -C "$REPO" status --porcelain --untracked-files=no -- Sources Package.swift 2>/dev/null) ]] &&
    GIT_DIRTY=" (uncommitted changes under Sources/ or Package.swift at benchmark time)"

# start_meshd <key> <balancer>
start_meshd() {
    local key=$1 balancer=$2 dir=$TMP/$1 out_port in_port admin_port ep pid deadline
    free_port out_port
    free_port in_port
    free_port admin_port
    mkdir -p "$dir"
    {
        cat <<EOC
threads: 1
mode: sidecar
drainTimeout: 2s
accessLog: false
outbound:
  listen: 127.0.0.1:$out_port
inbound:
  listen: 127.0.0.1:$in_port
  app: ${BACKEND_EPS[0]}
admin:
  listen: 127.0.0.1:$admin_port
services:
  - name: bench
    balancer: $balancer
    endpoints:
EOC
        for ep in "${BACKEND_EPS[@]}"; do echo "      - $ep"; done
        cat <<EOC
routes:
  - name: bench
    match: {authority: bench}
    service: bench
EOC
    } >"$dir/meshd.yaml"
    "$TMP/bin/meshd" --config "$dir/meshd.yaml" --threads 1 --check >"$dir/check.log" 2>&1 ||
        { sed 's/^/    /' "$dir/check.log" >&2; die "meshd --check rejected the benchmark config for balancer $balancer (does $MESHD_BIN support it?)"; }
    log "starting meshd $balancer (outbound 127.0.0.1:$out_port, admin 127.0.0.1:$admin_port)"
    start_bg "$dir/stderr.log" "${PIN_PROXY[@]}" "$TMP/bin/meshd" --config "$dir/meshd.yaml" --threads 1
    pid=$LAST_PID
    # Ready = admin /ready answers 2xx.
    deadline=$((SECONDS + 15))
    until curl -fsS -m 1 -o /dev/null "http://127.0.0.1:$admin_port/ready" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            sed 's/^/    /' "$dir/stderr.log" >&2 || true
            die "meshd ($balancer) exited during startup"
        fi
        ((SECONDS < deadline)) || { sed 's/^/    /' "$dir/stderr.log" >&2; die "meshd ($balancer) /ready not 2xx within 15 s"; }
        sleep 0.1
    done
    sleep 1
    MESHD_RSS_IDLE_OF[$key]=$(proc_mem "$pid" VmRSS)
    wait_http "meshd ($balancer)" "$pid" "$dir/stderr.log" "http://127.0.0.1:$out_port/" "ok"
    MESHD_PID_OF[$key]=$pid MESHD_PORT_OF[$key]=$out_port MESHD_ADMIN_OF[$key]=$admin_port
}
for k in "${MESHD_KEYS[@]}"; do start_meshd "$k" "${MESHD_BALANCER[$k]}"; done

# ---------------------------------------------------------------------------------------------
# HAProxy: one thread, keep-alive both sides, idle server connections reused by any client;
# the same three backend endpoints as meshd, round robin.
free_port HAPROXY_PORT
HAPROXY_SERVERS="" i=0
for ep in "${BACKEND_EPS[@]}"; do i=$((i + 1)); HAPROXY_SERVERS+="    server backend$i $ep"$'\n'; done
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
    bind 127.0.0.1:$HAPROXY_PORT
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
wait_http "haproxy" "$HAPROXY_PID" "$TMP/haproxy/stderr.log" "http://127.0.0.1:$HAPROXY_PORT/" "ok"

# ---------------------------------------------------------------------------------------------
# nginx as reverse proxy: one worker, keep-alive upstream pool of 64; the same three backend
# endpoints as meshd, round robin (nginx's default).
free_port NGXPROXY_PORT
NGX_SERVERS=""
for ep in "${BACKEND_EPS[@]}"; do NGX_SERVERS+="        server $ep;"$'\n'; done
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
    upstream backend {
${NGX_SERVERS%$'\n'}
        keepalive 64;
        keepalive_requests 100000;
    }
    server {
        listen 127.0.0.1:$NGXPROXY_PORT default_server;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
log "starting nginx proxy on 127.0.0.1:$NGXPROXY_PORT"
start_bg "$TMP/ngxproxy/stderr.log" "${PIN_PROXY[@]}" "$NGINX_BIN" -p "$TMP/ngxproxy" -e "$TMP/ngxproxy/error.log" -c "$TMP/ngxproxy/nginx.conf"
NGXPROXY_PID=$LAST_PID
sleep 0.5
NGXPROXY_RSS_IDLE_KB=$(proc_mem "$NGXPROXY_PID" VmRSS)
wait_http "nginx proxy" "$NGXPROXY_PID" "$TMP/ngxproxy/stderr.log" "http://127.0.0.1:$NGXPROXY_PORT/" "ok"

# ---------------------------------------------------------------------------------------------
# Caddy as reverse proxy (a third peer): one Go thread running Go code (GOMAXPROCS=1, and pinned
# like every proxy), keep-alive upstream connections, round robin over the same three endpoints.
CADDY_BIN=$(command -v caddy || true)
if [[ -n $CADDY_BIN ]]; then
    free_port CADDY_PORT
    mkdir -p "$TMP/caddy"
    cat >"$TMP/caddy/Caddyfile" <<EOF
{
    admin off
    auto_https off
}
http://:$CADDY_PORT {
    bind 127.0.0.1
    reverse_proxy ${BACKEND_EPS[*]} {
        lb_policy round_robin
        transport http {
            keepalive 75s
            keepalive_idle_conns 128
            keepalive_idle_conns_per_host 64
        }
    }
}
EOF
    start_caddy "$TMP/caddy"
    wait_http "caddy" "$CADDY_PID" "$TMP/caddy/stderr.log" "http://127.0.0.1:$CADDY_PORT/" "ok"
else
    log "caddy not installed: its row is left out (apt-get install caddy)"
fi

# ---------------------------------------------------------------------------------------------
# Candidates: key, label, port, pid of the proxy (empty for direct).
# SHORT is the name in the per-run table and in the method text.
CANDS=(direct meshd meshd_lr meshd_ewma haproxy nginx)
declare -A LABEL SHORT PORT PPID_OF
LABEL[direct]="direct (wrk → nginx backend)"
LABEL[meshd]="meshd sidecar outbound (--threads 1), round_robin"
LABEL[meshd_lr]="meshd sidecar outbound (--threads 1), least_request"
LABEL[meshd_ewma]="meshd sidecar outbound (--threads 1), ewma"
LABEL[haproxy]="HAProxy (nbthread 1)"
LABEL[nginx]="nginx proxy (1 worker)"
SHORT[direct]=direct SHORT[haproxy]=HAProxy SHORT[nginx]=nginx
for k in "${MESHD_KEYS[@]}"; do SHORT[$k]="meshd ${MESHD_BALANCER[$k]}"; done
PORT[direct]=$BACKEND_PORT
PORT[haproxy]=$HAPROXY_PORT
PORT[nginx]=$NGXPROXY_PORT
PPID_OF[direct]=""
PPID_OF[haproxy]=$HAPROXY_PID
PPID_OF[nginx]=$NGXPROXY_PID
if [[ -n $CADDY_BIN ]]; then
    CANDS+=(caddy)
    LABEL[caddy]="Caddy (GOMAXPROCS=1)" SHORT[caddy]=Caddy PORT[caddy]=$CADDY_PORT PPID_OF[caddy]=$CADDY_PID
fi
for k in "${MESHD_KEYS[@]}"; do PORT[$k]=${MESHD_PORT_OF[$k]} PPID_OF[$k]=${MESHD_PID_OF[$k]}; done
CAND_ORDER=$(for c in "${CANDS[@]}"; do printf '%s, ' "${SHORT[$c]}"; done)
CAND_ORDER=${CAND_ORDER%, }

TS=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS_DIR=$REPO/bench/results
mkdir -p "$RESULTS_DIR"
RAW_DIR=$RESULTS_DIR/http1-$TS.raw
mkdir -p "$RAW_DIR"

# run_wrk <seconds> <port> <outfile>: bounded by timeout; returns wrk's (or timeout's) status.
run_wrk() {
    local secs=$1 port=$2 out=$3 rc=0
    timeout -k 5 $((secs + 20)) "${PIN_LOAD[@]}" wrk -t"$WRK_THREADS" -c"$CONNS" -d"${secs}s" --latency \
        -H "Host: $HOST_HEADER" "http://127.0.0.1:$port/" >"$out" 2>&1 &
    CURRENT_LOAD=$!
    wait "$CURRENT_LOAD" || rc=$?
    CURRENT_LOAD=""
    return "$rc"
}

# parse_wrk <file>: "rps p50 p75 p90 p99 requests socket_errors status_errors" (latencies in ms).
parse_wrk() {
    awk '
    function ms(v,   n, u) {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n / 1000; if (u == "ms") return n; if (u == "s") return n * 1000
        if (u == "m") return n * 60000; if (u == "h") return n * 3600000; return -1
    }
    $1 == "50%" { p50 = ms($2) } $1 == "75%" { p75 = ms($2) }
    $1 == "90%" { p90 = ms($2) } $1 == "99%" { p99 = ms($2) }
    / requests in / { req = $1 }
    /Socket errors:/ { gsub(/,/, ""); se = $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { st = $NF }
    /^Requests\/sec:/ { rps = $2 }
    END {
        printf "%s %s %s %s %s %s %d %d\n", (rps == "" ? 0 : rps), (p50 == "" ? -1 : p50), (p75 == "" ? -1 : p75),
            (p90 == "" ? -1 : p90), (p99 == "" ? -1 : p99), (req == "" ? 0 : req), se, st
    }' "$1"
}

declare -A R_RPS R_P50 R_P75 R_P90 R_P99 R_REQ R_SERR R_STERR R_RC R_TICKS R_STICKS R_BG
FAILURES=()

for run in $(seq 1 "$RUNS"); do
    for c in "${CANDS[@]}"; do
        port=${PORT[$c]}
        ppid=${PPID_OF[$c]}
        if [[ -n $ppid ]] && ! kill -0 "$ppid" 2>/dev/null; then
            log "run $run/$RUNS $c: process $ppid is gone"
            FAILURES+=("$c run $run: proxy process exited before the measurement")
            R_RPS[$c,$run]=0 R_P50[$c,$run]=-1 R_P75[$c,$run]=-1 R_P90[$c,$run]=-1 R_P99[$c,$run]=-1
            R_REQ[$c,$run]=0 R_SERR[$c,$run]=0 R_STERR[$c,$run]=0 R_RC[$c,$run]=-1 R_TICKS[$c,$run]=-1 R_STICKS[$c,$run]=-1 R_BG[$c,$run]=-1
            continue
        fi
        log "run $run/$RUNS $c: warm-up ${WARMUP}s"
        run_wrk "$WARMUP" "$port" "$RAW_DIR/$c-run$run-warmup.txt" || true
        t0=0
        s0=0
        [[ -n $ppid ]] && t0=$(proc_ticks "$ppid") && s0=$(proc_ticks "$ppid" sys)
        children_ticks; w0=$CHILD_TICKS m0=$(machine_busy_ticks) b0=$(proc_ticks "$BACKEND_PID")
        log "run $run/$RUNS $c: measuring ${DURATION}s"
        rc=0
        run_wrk "$DURATION" "$port" "$RAW_DIR/$c-run$run.txt" || rc=$?
        t1=0
        s1=0
        [[ -n $ppid ]] && t1=$(proc_ticks "$ppid") && s1=$(proc_ticks "$ppid" sys)
        children_ticks; w1=$CHILD_TICKS m1=$(machine_busy_ticks) b1=$(proc_ticks "$BACKEND_PID")
        read -r rps p50 p75 p90 p99 req serr sterr < <(parse_wrk "$RAW_DIR/$c-run$run.txt")
        R_RPS[$c,$run]=$rps R_P50[$c,$run]=$p50 R_P75[$c,$run]=$p75 R_P90[$c,$run]=$p90 R_P99[$c,$run]=$p99
        R_REQ[$c,$run]=$req R_SERR[$c,$run]=$serr R_STERR[$c,$run]=$sterr R_RC[$c,$run]=$rc
        if [[ -z $t1 ]]; then R_TICKS[$c,$run]=-1; else R_TICKS[$c,$run]=$((t1 - t0)); fi
        if [[ -z $s1 ]]; then R_STICKS[$c,$run]=-1; else R_STICKS[$c,$run]=$((s1 - s0)); fi
        # Background load: machine busy time not accounted for by wrk, the backend or the proxy
        # under test, as a percentage of one CPU over the measured window.
        R_BG[$c,$run]=$(awk -v m=$((m1 - m0)) -v w=$((w1 - w0)) -v b=$((${b1:-0} - ${b0:-0})) -v t=$((${t1:-0} - t0)) \
            -v hz="$CLK_TCK" -v d="$DURATION" 'BEGIN { x = (m - w - b - t) / hz / d * 100; if (x < 0) x = 0; printf "%.0f", x }')
        log "run $run/$RUNS $c: ${rps} req/s, p50 ${p50} ms, p99 ${p99} ms, requests $req, socket errors $serr, status errors $sterr, wrk exit $rc"
        if ((rc != 0)); then FAILURES+=("$c run $run: wrk exited with status $rc"); fi
        if ((req == 0)); then FAILURES+=("$c run $run: zero requests completed"); fi
        if ((serr + sterr > 0)); then FAILURES+=("$c run $run: $serr socket errors, $sterr non-2xx/3xx responses"); fi
    done
done

# Requests each meshd variant sent to each endpoint (admin /services; includes warm-ups and the
# start-up probe): "addr=count addr=count ...".
endpoint_counts() {
    curl -fsS -m 5 "http://127.0.0.1:$1/services" 2>/dev/null | awk '
        /"endpoints"/ { inep = 1 }
        inep && /"address"/ { a = $0; sub(/.*"address" *: *"/, "", a); sub(/".*/, "", a) }
        inep && /"requests"/ { n = $0; sub(/.*"requests" *: *"?/, "", n); sub(/[^0-9].*/, "", n); printf "%s%s=%s", sep, a, n; sep = " " }
        END { print "" }'
}
declare -A MESHD_EP_COUNTS
MESHD_WARN_LINES=0
MESHD_ALIVE=yes
for k in "${MESHD_KEYS[@]}"; do
    p=${MESHD_PID_OF[$k]}
    MESHD_RSS_AFTER_OF[$k]=$(proc_mem "$p" VmRSS)
    MESHD_HWM_OF[$k]=$(proc_mem "$p" VmHWM)
    MESHD_EP_COUNTS[$k]=$(endpoint_counts "${MESHD_ADMIN_OF[$k]}" || true)
    if ! kill -0 "$p" 2>/dev/null; then
        MESHD_ALIVE=no
        FAILURES+=("meshd (${MESHD_BALANCER[$k]}) exited during the benchmark")
    fi
    cp "$TMP/$k/stderr.log" "$RAW_DIR/meshd-${MESHD_BALANCER[$k]}-stderr.log" 2>/dev/null || true
    cp "$TMP/$k/meshd.yaml" "$RAW_DIR/meshd-${MESHD_BALANCER[$k]}.yaml" 2>/dev/null || true
    MESHD_WARN_LINES=$((MESHD_WARN_LINES + $(grep -cE '"level":"(warning|error|critical)"' "$TMP/$k/stderr.log" || true)))
done
HAPROXY_RSS_AFTER_KB=$(proc_mem "$HAPROXY_PID" VmRSS)
HAPROXY_HWM_KB=$(proc_mem "$HAPROXY_PID" VmHWM)
NGXPROXY_RSS_AFTER_KB=$(proc_mem "$NGXPROXY_PID" VmRSS)
NGXPROXY_HWM_KB=$(proc_mem "$NGXPROXY_PID" VmHWM)
if [[ -n $CADDY_BIN ]]; then
    CADDY_RSS_AFTER_KB=$(proc_mem "$CADDY_PID" VmRSS)
    CADDY_HWM_KB=$(proc_mem "$CADDY_PID" VmHWM)
    cp "$TMP/caddy/Caddyfile" "$RAW_DIR/" 2>/dev/null || true
fi
cp "$TMP/haproxy/haproxy.cfg" "$RAW_DIR/" 2>/dev/null || true
cp "$TMP/ngxproxy/nginx.conf" "$RAW_DIR/nginx-proxy.conf" 2>/dev/null || true
cp "$TMP/backend/nginx.conf" "$RAW_DIR/nginx-backend.conf" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
# Aggregation and report.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 <= 0) print "n/a"; else printf "%.2f", a / b }'; }
fmt_ms() { awk -v v="$1" 'BEGIN { if (v < 0) print "n/a"; else printf "%.3f", v }'; }
col() { # col <array name> <candidate>: values across runs
    local -n arr=$1
    local out=() r
    for r in $(seq 1 "$RUNS"); do out+=("${arr[$2,$r]}"); done
    printf '%s\n' "${out[@]}"
}

declare -A M_RPS M_P50 M_P90 M_P99 ERRS REQS TICKS STICKS
for c in "${CANDS[@]}"; do
    mapfile -t v < <(col R_RPS "$c"); M_RPS[$c]=$(median "${v[@]}")
    mapfile -t v < <(col R_P50 "$c"); M_P50[$c]=$(median "${v[@]}")
    mapfile -t v < <(col R_P90 "$c"); M_P90[$c]=$(median "${v[@]}")
    mapfile -t v < <(col R_P99 "$c"); M_P99[$c]=$(median "${v[@]}")
    e=0 n=0 t=0 st=0
    for r in $(seq 1 "$RUNS"); do
        e=$((e + R_SERR[$c,$r] + R_STERR[$c,$r])); n=$((n + R_REQ[$c,$r]))
        if ((t >= 0 && R_TICKS[$c,$r] >= 0)); then t=$((t + R_TICKS[$c,$r])); else t=-1; fi
        if ((st >= 0 && R_STICKS[$c,$r] >= 0)); then st=$((st + R_STICKS[$c,$r])); else st=-1; fi
    done
    ERRS[$c]=$e REQS[$c]=$n TICKS[$c]=$t STICKS[$c]=$st
done

# cpu_split <target>: its user and kernel CPU s per 1000 req, and each as a ratio to HAProxy's.
cpu_split() {
    local k=$1 u hu
    if ((TICKS[$k] < 0 || STICKS[$k] < 0 || TICKS[haproxy] < 0 || STICKS[haproxy] < 0)); then
        echo "n/a | n/a | n/a | n/a"
        return
    fi
    u=$((TICKS[$k] - STICKS[$k])) hu=$((TICKS[haproxy] - STICKS[haproxy]))
    echo "$(cpu_per_1k "$u" "${REQS[$k]}") | $(cpu_per_1k "${STICKS[$k]}" "${REQS[$k]}") | $(cpu_ratio "$u" "${REQS[$k]}" "$hu" "${REQS[haproxy]}") | $(cpu_ratio "${STICKS[$k]}" "${REQS[$k]}" "${STICKS[haproxy]}" "${REQS[haproxy]}")"
}
cpu_per_1k() { awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { if (n <= 0 || t < 0) print "n/a"; else printf "%.4f", t / hz / n * 1000 }'; }
mib() { awk -v k="$1" 'BEGIN { if (k <= 0) print "n/a"; else printf "%.1f", k / 1024 }'; }

NGINX_VER=$("$NGINX_BIN" -v 2>&1 | sed -n '1s/^nginx version: //p')
HAPROXY_VER=$("$HAPROXY_BIN" -v 2>&1 | awk 'NR == 1 { print $1, $2, $3 }') # (awk reads it all: no SIGPIPE under pipefail)
WRK_VER=$( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $1, $2 }')
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)

ratio3() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 <= 0 || b + 0 <= 0) print "n/a"; else printf "%.3f", a / b }'; }
# cpu_ratio <ticks a> <requests a> <ticks b> <requests b>: (CPU per request of a) ÷ (of b).
cpu_ratio() { awk -v ta="$1" -v na="$2" -v tb="$3" -v nb="$4" 'BEGIN { if (ta < 0 || tb <= 0 || na <= 0 || nb <= 0) print "n/a"; else printf "%.3f", (ta / na) / (tb / nb) }'; }
# spread <values...>: "<(max - min) / median> <min> <max>" over the numeric values; "n/a" if fewer than 2.
spread() {
    printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g | awk '{ a[NR] = $1 }
        END { if (NR < 2) { print "n/a"; exit }
              m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
              if (m <= 0) print "n/a"; else printf "%.4f %s %s\n", (a[NR] - a[1]) / m, a[1], a[NR] }'
}
# within <ratio> <spread fraction>: "yes" if |ratio - 1| <= spread, else "no (±x.x %)".
within() { awk -v r="$1" -v s="$2" 'BEGIN { if (r == "n/a" || s == "n/a") print "n/a"; else if ((r - 1 <= s + 1e-9) && (1 - r <= s + 1e-9)) print "yes"; else printf "no (%+.1f %%)\n", (r - 1) * 100 }'; }
# ep_shares "addr=count addr=count ...": "33.4 / 33.3 / 33.3 %" (endpoint order as configured).
ep_shares() {
    awk -v s="$1" 'BEGIN { n = split(s, kv, " "); t = 0
        for (i = 1; i <= n; i++) { split(kv[i], p, "="); c[i] = p[2] + 0; t += c[i] }
        if (n == 0 || t <= 0) { print "n/a"; exit }
        for (i = 1; i <= n; i++) printf "%s%.1f", (i > 1 ? " / " : ""), c[i] / t * 100
        print " %" }'
}

# Noise measure: meshd round_robin's run-to-run spread (req/s, CPU per request).
mapfile -t v < <(col R_RPS meshd)
read -r RR_RPS_SPREAD RR_RPS_MIN RR_RPS_MAX <<<"$(spread "${v[@]}")"
v=()
for r in $(seq 1 "$RUNS"); do v+=("$(cpu_per_1k "${R_TICKS[meshd,$r]}" "${R_REQ[meshd,$r]}")"); done
read -r RR_CPU_SPREAD RR_CPU_MIN RR_CPU_MAX <<<"$(spread "${v[@]}")"

REPORT=$TMP/report.md
{
    echo "### HTTP/1.1 proxy overhead — $(date -u +%Y-%m-%d)"
    echo
    echo "Method: closed-loop wrk for throughput — the same client (wrk, ${WRK_THREADS} thread, ${CONNS} keep-alive connections, \`Host: bench\`, GET / → \"ok\\n\" from one nginx worker), the same ${DURATION} s duration after a ${WARMUP} s warm-up, and the same CPU placement for every target, all measured in one run of \`bench/http1.sh\` $(if ((RUNS > 1)); then echo "with targets interleaved (${CAND_ORDER}) in each of ${RUNS} runs"; else echo "one after the other (${CAND_ORDER}), once each"; fi)."
    echo "Each proxy runs one thread/worker and keeps connections to the backend alive. Placement: ${PLACEMENT}."
    echo "Backend endpoints: ${ENDPOINTS_DESC} (\`${BACKEND_EPS[*]}\`), all served by the same single nginx worker. Every proxy balances over those three: each meshd variant's service \`bench\` lists them as its endpoints, HAProxy uses \`balance roundrobin\` over three servers, the nginx proxy an \`upstream\` with three servers (round robin) and Caddy \`reverse_proxy\` with \`lb_policy round_robin\` (GOMAXPROCS=1, keep-alive upstream connections); the direct baseline talks to the first one."
    echo "The three meshd rows are three separate meshd processes (\`--threads 1\`, \`threads: 1\`) whose configs differ only in the service's \`balancer:\` (\`round_robin\` — the default, used for the HAProxy/nginx comparison —, \`least_request\`, \`ewma\`); they are placed like any proxy under test, and the ones not under test sit idle."
    if ((RUNS > 1)); then
        echo "Figures are medians across the ${RUNS} runs; wrk cannot merge HDR histograms, so each latency percentile is the median of the per-run percentiles (not a percentile of merged samples). Errors are summed over all runs."
    else
        echo "Single run (RUNS=1): figures are that run's. With RUNS > 1 the summary reports medians across runs; wrk cannot merge HDR histograms, so latency percentiles would be the median of per-run percentiles."
    fi
    echo "Background CPU (per-run table) is machine busy time not used by wrk, the backend or the proxy under test during the measured window; anything well above a few % means other work on the machine disturbed that measurement."
    echo "Closed-loop latency is latency at saturation (it includes queueing in the client), not latency at a fixed request rate. Errors = wrk socket errors (connect/read/write/timeout) + responses with status ≥ 400."
    echo
    echo "| target | req/s | p50 (ms) | p90 (ms) | p99 (ms) | errors | req/s ÷ direct | meshd ÷ HAProxy (req/s) | meshd ÷ nginx (req/s) | meshd ÷ Caddy (req/s) | added p50 vs direct (ms) | added p99 vs direct (ms) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for c in "${CANDS[@]}"; do
        rvd=$(ratio "${M_RPS[$c]}" "${M_RPS[direct]}")
        mh="—" mn="—" mc="—" a50="—" a99="—"
        if [[ $c == meshd ]]; then
            mh=$(ratio "${M_RPS[meshd]}" "${M_RPS[haproxy]}")
            mn=$(ratio "${M_RPS[meshd]}" "${M_RPS[nginx]}")
            if [[ -n $CADDY_BIN ]]; then mc=$(ratio "${M_RPS[meshd]}" "${M_RPS[caddy]}"); else mc="n/a"; fi
        fi
        if [[ $c != direct ]]; then
            a50=$(awk -v a="${M_P50[$c]}" -v b="${M_P50[direct]}" 'BEGIN { if (a < 0 || b < 0) print "n/a"; else printf "%+.3f", a - b }')
            a99=$(awk -v a="${M_P99[$c]}" -v b="${M_P99[direct]}" 'BEGIN { if (a < 0 || b < 0) print "n/a"; else printf "%+.3f", a - b }')
        fi
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$c]}" \
            "$(calc '%.0f' "${M_RPS[$c]}")" "$(fmt_ms "${M_P50[$c]}")" "$(fmt_ms "${M_P90[$c]}")" "$(fmt_ms "${M_P99[$c]}")" \
            "${ERRS[$c]}" "$rvd" "$mh" "$mn" "$mc" "$a50" "$a99"
    done
    echo
    echo "meshd balancers, same run (ratios are against the meshd round_robin row: req/s ratio of the medians, CPU ratio of CPU time per request over all measured windows; \"within noise\" = the ratio is within 1 ± round_robin's own run-to-run spread, below; requests per endpoint are the shares of the three endpoints, in the order above, as counted by meshd's admin \`/services\` over the whole run including warm-ups):"
    echo
    echo "| meshd balancer | req/s | p50 (ms) | p90 (ms) | p99 (ms) | errors | CPU s per 1000 req | req/s vs meshd round_robin | CPU vs meshd round_robin | within noise (req/s / CPU) | requests per endpoint |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    for k in "${MESHD_KEYS[@]}"; do
        rr=$(ratio3 "${M_RPS[$k]}" "${M_RPS[meshd]}")
        cr=$(cpu_ratio "${TICKS[$k]}" "${REQS[$k]}" "${TICKS[meshd]}" "${REQS[meshd]}")
        if [[ $k == meshd ]]; then wn="(reference)"; else wn="$(within "$rr" "$RR_RPS_SPREAD") / $(within "$cr" "$RR_CPU_SPREAD")"; fi
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${MESHD_BALANCER[$k]}" \
            "$(calc '%.0f' "${M_RPS[$k]}")" "$(fmt_ms "${M_P50[$k]}")" "$(fmt_ms "${M_P90[$k]}")" "$(fmt_ms "${M_P99[$k]}")" \
            "${ERRS[$k]}" "$(cpu_per_1k "${TICKS[$k]}" "${REQS[$k]}")" "$rr" "$cr" "$wn" "$(ep_shares "${MESHD_EP_COUNTS[$k]}")"
    done
    echo
    if ((RUNS > 1)); then
        printf 'Noise measure: meshd round_robin across the %s runs (max − min, relative to the median): req/s %s (%s–%s), CPU s per 1000 req %s (%s–%s).' \
            "$RUNS" "$(pct "$RR_RPS_SPREAD")" "$(calc '%.0f' "${RR_RPS_MIN:-0}")" "$(calc '%.0f' "${RR_RPS_MAX:-0}")" \
            "$(pct "$RR_CPU_SPREAD")" "${RR_CPU_MIN:-n/a}" "${RR_CPU_MAX:-n/a}"
        printf ' Per-run ratios against round_robin in the same run (req/s; CPU per request):'
        sep=""
        for k in "${MESHD_KEYS[@]}"; do
            [[ $k == meshd ]] && continue
            rl="" cl=""
            for r in $(seq 1 "$RUNS"); do
                rl+="${rl:+, }$(ratio3 "${R_RPS[$k,$r]}" "${R_RPS[meshd,$r]}")"
                cl+="${cl:+, }$(cpu_ratio "${R_TICKS[$k,$r]}" "${R_REQ[$k,$r]}" "${R_TICKS[meshd,$r]}" "${R_REQ[meshd,$r]}")"
            done
            printf '%s %s %s; %s' "$sep" "${MESHD_BALANCER[$k]}" "$rl" "$cl"
            sep=" —"
        done
        echo "."
    else
        echo "Noise measure: needs RUNS ≥ 2 (round_robin's run-to-run spread); with one run the \"within noise\" column is n/a."
    fi
    echo
    echo "Proxy resources (CPU = utime+stime of the proxy process(es) during the measured windows only, divided by the requests wrk completed in them, then split into user (utime) and kernel (stime) time; nginx figures are master + worker):"
    echo
    echo "| proxy | CPU s per 1000 req | user (utime) | kernel (stime) | user ÷ HAProxy's | kernel ÷ HAProxy's | RSS idle (MiB) | RSS after run (MiB) | peak RSS, VmHWM (MiB) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for k in "${MESHD_KEYS[@]}"; do
        echo "| meshd ${MESHD_BALANCER[$k]} | $(cpu_per_1k "${TICKS[$k]}" "${REQS[$k]}") | $(cpu_split "$k") | $(mib "${MESHD_RSS_IDLE_OF[$k]}") | $(mib "${MESHD_RSS_AFTER_OF[$k]}") | $(mib "${MESHD_HWM_OF[$k]}") |"
    done
    echo "| HAProxy | $(cpu_per_1k "${TICKS[haproxy]}" "${REQS[haproxy]}") | $(cpu_split haproxy) | $(mib "$HAPROXY_RSS_IDLE_KB") | $(mib "$HAPROXY_RSS_AFTER_KB") | $(mib "$HAPROXY_HWM_KB") |"
    echo "| nginx proxy | $(cpu_per_1k "${TICKS[nginx]}" "${REQS[nginx]}") | $(cpu_split nginx) | $(mib "$NGXPROXY_RSS_IDLE_KB") | $(mib "$NGXPROXY_RSS_AFTER_KB") | $(mib "$NGXPROXY_HWM_KB") |"
    if [[ -n $CADDY_BIN ]]; then
        echo "| Caddy | $(cpu_per_1k "${TICKS[caddy]}" "${REQS[caddy]}") | $(cpu_split caddy) | $(mib "$CADDY_RSS_IDLE_KB") | $(mib "$CADDY_RSS_AFTER_KB") | $(mib "$CADDY_HWM_KB") |"
    else
        echo "| Caddy | not installed | | | | | | | |"
    fi
    echo
    echo "Per run:"
    echo
    echo "| run | target | req/s | p50 (ms) | p75 (ms) | p90 (ms) | p99 (ms) | requests | proxy CPU s per 1000 req | socket errors | status ≥ 400 | background CPU (% of one CPU) |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for r in $(seq 1 "$RUNS"); do
        for c in "${CANDS[@]}"; do
            if [[ $c == direct ]]; then rc1k="—"; else rc1k=$(cpu_per_1k "${R_TICKS[$c,$r]}" "${R_REQ[$c,$r]}"); fi
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$r" "${SHORT[$c]}" "$(calc '%.0f' "${R_RPS[$c,$r]}")" \
                "$(fmt_ms "${R_P50[$c,$r]}")" "$(fmt_ms "${R_P75[$c,$r]}")" "$(fmt_ms "${R_P90[$c,$r]}")" "$(fmt_ms "${R_P99[$c,$r]}")" \
                "${R_REQ[$c,$r]}" "$rc1k" "${R_SERR[$c,$r]}" "${R_STERR[$c,$r]}" "$(awk -v x="${R_BG[$c,$r]}" 'BEGIN { print (x < 0 ? "n/a" : x) }')"
        done
    done
    echo
    echo "Machine: $NCPU CPUs (\`nproc\`)${CPU_MODEL:+, $CPU_MODEL}; kernel $(uname -sr); $(date -u +%Y-%m-%dT%H:%M:%SZ); meshd commit \`$GIT_COMMIT\`$GIT_DIRTY, binary built $MESHD_MTIME (sha256 $MESHD_SHA…); nginx $NGINX_VER; $HAPROXY_VER; ${CADDY_BIN:+Caddy $("$CADDY_BIN" version 2>/dev/null | awk 'NR == 1 { print $1 }'); }$WRK_VER. Load average before/after: $LOADAVG_START / $(cut -d' ' -f1-3 /proc/loadavg)."
    DISTURBED=()
    for r in $(seq 1 "$RUNS"); do
        for c in "${CANDS[@]}"; do
            if ((${R_BG[$c,$r]} > 10)); then DISTURBED+=("${SHORT[$c]} run $r (${R_BG[$c,$r]} %)"); fi
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

RESULT_FILE=$RESULTS_DIR/http1-$TS.md
{
    echo "# meshd HTTP/1.1 benchmark — $TS"
    echo
    cat "$REPORT"
    echo
    echo "Raw wrk output, configs and meshd's stderr: \`bench/results/http1-$TS.raw/\`. meshd warning/error log lines (all three variants): $MESHD_WARN_LINES; every meshd still running at the end: $MESHD_ALIVE."
} >"$RESULT_FILE"

echo
cat "$REPORT"
echo
if ((${#DISTURBED[@]} > 0)); then log "warning: disturbed measurements (background CPU > 10 %): ${DISTURBED[*]}"; fi
log "results written to ${RESULT_FILE#"$REPO"/} (raw data in ${RAW_DIR#"$REPO"/}/)"
if ((MESHD_WARN_LINES > 0)); then
    log "meshd logged $MESHD_WARN_LINES warning/error lines; first 20:"
    for k in "${MESHD_KEYS[@]}"; do
        grep -E '"level":"(warning|error|critical)"' "$TMP/$k/stderr.log" | sed "s/^/    [${MESHD_BALANCER[$k]}] /" || true
    done | head -20 >&2
fi

if ((UPDATE_DOCS)); then
    if ((${#FAILURES[@]} > 0)); then
        log "not updating docs/performance.md: some candidates failed (see below)"
    else
        DOC=$REPO/docs/performance.md
        if [[ ! -f $DOC ]]; then
            mkdir -p "$(dirname "$DOC")"
            cat >"$DOC" <<'EOF'
# Performance

How meshd compares with no proxy and with HAProxy and nginx doing the same job on the same
machine. The numbers below are generated by the scripts in `bench/` (see `bench/README.md`);
re-run them with `--update-docs` to refresh the sections between the markers. Absolute numbers
depend heavily on the machine; the ratios against the direct baseline and against the other
proxies measured in the same run are the meaningful part.

## HTTP/1.1

<!-- http1:begin -->
<!-- http1:end -->
EOF
        elif ! grep -q '^<!-- http1:begin -->' "$DOC" || ! grep -q '^<!-- http1:end -->' "$DOC"; then
            printf '\n## HTTP/1.1\n\n<!-- http1:begin -->\n<!-- http1:end -->\n' >>"$DOC"
        fi
        awk -v f="$REPORT" '
            /^<!-- http1:begin -->/ { print; while ((getline line < f) > 0) print line; skip = 1; next }
            /^<!-- http1:end -->/ { skip = 0 }
            !skip { print }' "$DOC" >"$TMP/performance.md"
        cat "$TMP/performance.md" >"$DOC"
        log "updated the http1 section of docs/performance.md"
    fi
fi

if ((${#FAILURES[@]} > 0)); then
    log "FAILED: at least one candidate did not serve cleanly:"
    for f in "${FAILURES[@]}"; do log "  - $f"; done
    exit 1
fi
log "all candidates served without errors"
