#!/usr/bin/env bash
# meshd -> meshd hop: does carrying HTTP/1.1 requests over one multiplexed HTTP/2 connection between two
# meshd (as linkerd does) beat a pool of HTTP/1.1 keep-alive connections?
#
#   wrk (HTTP/1.1, 1 thread, CONNS connections) -> meshd A outbound -> meshd B inbound -> nginx
#
# A's service `app` points at B's inbound with `protocol: http1` (one A process) or `protocol: http2`
# (another A process, marking requests x-meshd-orig-proto so B speaks HTTP/1.1 to nginx again).
# Both A processes and B run with threads 1 on CPU 0; nginx and wrk on CPU 1. Interleaved RUNS.
# Prints req/s, p50/p90/p99 (wrk --latency) and the upstream connections A opened, per variant.
#
# Usage: bench/meshhop.sh      Env: DURATION (s, default 10), RUNS (default 3), CONNS (default 32),
#                                   MESHD_BIN (default .build/release/meshd)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
CONNS=${CONNS:-32}
MESHD_BIN=${MESHD_BIN:-$REPO/.build/release/meshd}
[[ -x $MESHD_BIN ]] || { echo "meshhop: no meshd at $MESHD_BIN" >&2; exit 1; }
for t in nginx wrk curl taskset; do command -v $t >/dev/null || { echo "meshhop: $t missing" >&2; exit 1; }; done

TMP=$(mktemp -d /tmp/meshd-bench-hop.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NGINX_PORT=$(port)
cat >"$TMP/nginx.conf" <<EOF
daemon off; worker_processes 1; error_log $TMP/nginx.err; pid $TMP/nginx.pid;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $TMP; proxy_temp_path $TMP; fastcgi_temp_path $TMP;
       uwsgi_temp_path $TMP; scgi_temp_path $TMP; keepalive_requests 1000000;
  server { listen 127.0.0.1:$NGINX_PORT; location / { return 200 "ok\n"; } } }
EOF
taskset -c 1 nginx -c "$TMP/nginx.conf" -p "$TMP" >"$TMP/nginx.log" 2>&1 &
PIDS+=($!)

B_IN=$(port) B_OUT=$(port) B_ADMIN=$(port)
cat >"$TMP/b.yaml" <<EOF
threads: 1
outbound: { listen: "127.0.0.1:$B_OUT" }
inbound: { listen: "127.0.0.1:$B_IN", app: "127.0.0.1:$NGINX_PORT" }
admin: { listen: "127.0.0.1:$B_ADMIN" }
EOF
taskset -c 0 "$MESHD_BIN" --config "$TMP/b.yaml" >"$TMP/b.log" 2>&1 &
PIDS+=($!)

declare -A OUT ADMIN
for v in http1 http2; do
    OUT[$v]=$(port) ADMIN[$v]=$(port)
    in=$(port)
    cat >"$TMP/a-$v.yaml" <<EOF
threads: 1
outbound: { listen: "127.0.0.1:${OUT[$v]}" }
inbound: { listen: "127.0.0.1:$in", app: "127.0.0.1:1" }
admin: { listen: "127.0.0.1:${ADMIN[$v]}" }
services: [ { name: app, protocol: $v, endpoints: ["127.0.0.1:$B_IN"] } ]
routes: [ { match: { authority: app }, service: app } ]
EOF
    taskset -c 0 "$MESHD_BIN" --config "$TMP/a-$v.yaml" >"$TMP/a-$v.log" 2>&1 &
    PIDS+=($!)
done
for _ in $(seq 50); do
    ok=1
    for v in http1 http2; do curl -sf -m 1 -H 'host: app' "http://127.0.0.1:${OUT[$v]}/" >/dev/null || ok=0; done
    ((ok)) && break
    sleep 0.2
done
((ok)) || { echo "meshhop: proxies did not come up" >&2; tail "$TMP"/*.log >&2; exit 1; }

ms() { awk '{ v = $1; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 }; printf "%.3f", v }' <<<"$1"; }
declare -A RPS P50 P90 P99
for r in $(seq "$RUNS"); do
    for v in http1 http2; do
        taskset -c 1 wrk -t1 -c"$CONNS" -d2s -H 'Host: app' "http://127.0.0.1:${OUT[$v]}/" >/dev/null
        out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H 'Host: app' "http://127.0.0.1:${OUT[$v]}/")
        if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "meshhop: errors in $v run: $out" >&2; fi
        RPS[$v]+="$(awk '/Requests\/sec/ { print $2 }' <<<"$out") "
        P50[$v]+="$(ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")") "
        P90[$v]+="$(ms "$(awk '$1 == "90%" { print $2 }' <<<"$out")") "
        P99[$v]+="$(ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")") "
        echo "run $r $v: $(awk '/Requests\/sec/ { print $2 }' <<<"$out") req/s" >&2
    done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
printf '| A -> B | req/s | p50 ms | p90 ms | p99 ms | A upstream connections opened |\n|---|---|---|---|---|---|\n'
for v in http1 http2; do
    conns=$(curl -s "http://127.0.0.1:${ADMIN[$v]}/metrics" | awk '/^meshd_upstream_connects_total\{result="ok"\}/ { print $2 }')
    printf '| %s | %s | %s | %s | %s | %s |\n' "$v" "$(median "${RPS[$v]}")" "$(median "${P50[$v]}")" \
        "$(median "${P90[$v]}")" "$(median "${P99[$v]}")" "$conns"
done
