#!/usr/bin/env bash
# The cost of mTLS on the meshd -> meshd hop, against the same hop in plaintext and against HAProxy
# terminating and originating TLS (verify required on both sides), all in one run:
#
#   wrk (HTTP/1.1 keep-alive, 1 thread) -> proxy A -> proxy B -> nginx
#
# Variants: meshd plaintext, meshd mTLS (A: services[].tls.identity; B: inbound.tls strict), HAProxy
# mTLS (A: server ... ssl crt verify required; B: bind ... ssl crt ca-file verify required). Proxies
# run with one thread on CPU 0, nginx and the clients on CPU 1; RUNS interleaved rounds (plaintext
# and mTLS first in turn), medians, and the median of the rounds' own mTLS / plaintext ratios (req/s,
# and CPU per request).
# Prints req/s, p50/p99, CPU seconds per 1000 requests (A + B), and full handshakes per CPU-second
# of the server side (B), measured with `openssl s_time -new`.
#
# Usage: bench/mtls.sh    Env: DURATION (s, default 8), RUNS (default 3), CONNS (default 32),
#                              MESHD_BIN, MESHCTL_BIN (default .build/release/...),
#                              INSTRUCTIONS=1 (also instructions per request under callgrind; CG_REQUESTS, default 4000)
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
DURATION=${DURATION:-8}
RUNS=${RUNS:-3}
CONNS=${CONNS:-32}
MESHD_BIN=${MESHD_BIN:-$REPO/.build/release/meshd}
MESHCTL_BIN=${MESHCTL_BIN:-$REPO/.build/release/meshctl}

log() { printf '[mtls] %s\n' "$*" >&2; }
die() { printf '[mtls] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 1 && DURATION <= 3600)) || die "DURATION must be an integer in 1..3600 (got '$DURATION')"
[[ $RUNS =~ ^[0-9]+$ ]] && ((RUNS >= 1 && RUNS <= 100)) || die "RUNS must be an integer in 1..100 (got '$RUNS')"
for t in nginx haproxy wrk curl taskset openssl; do command -v $t >/dev/null || die "'$t' is required but not installed"; done
[[ -x $MESHD_BIN && -x $MESHCTL_BIN ]] || die "meshd/meshctl not found: $MESHD_BIN, $MESHCTL_BIN (scripts/build-release.sh, or set MESHD_BIN/MESHCTL_BIN)"

BENCH_NAME=mtls
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh" # TMP, PIDS and cleanup on every exit, free_port, proc_ticks, median

"$MESHCTL_BIN" identity init --trust-domain cluster.local --out "$TMP/ca" >/dev/null
"$MESHCTL_BIN" identity issue --ca "$TMP/ca" --spiffe-id spiffe://cluster.local/ns/bench/sa/a --out "$TMP/a" >/dev/null
"$MESHCTL_BIN" identity issue --ca "$TMP/ca" --spiffe-id spiffe://cluster.local/ns/bench/sa/b --out "$TMP/b" >/dev/null
cat "$TMP/a/tls.crt" "$TMP/a/tls.key" >"$TMP/a.pem"
cat "$TMP/b/tls.crt" "$TMP/b/tls.key" >"$TMP/b.pem"

free_port NGINX_PORT
cat >"$TMP/nginx.conf" <<EOF
daemon off; worker_processes 1; error_log $TMP/nginx.err; pid $TMP/nginx.pid;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $TMP; proxy_temp_path $TMP; fastcgi_temp_path $TMP;
       uwsgi_temp_path $TMP; scgi_temp_path $TMP; keepalive_requests 1000000;
  server { listen 127.0.0.1:$NGINX_PORT; location / { return 200 "ok\n"; } } }
EOF
start_bg "$TMP/nginx.log" taskset -c 1 nginx -c "$TMP/nginx.conf" -p "$TMP"

declare -A ENTRY PA PB
start() { start_bg "$TMP/proc-$((${#PIDS[@]})).log" taskset -c 0 "$@"; LAST=$LAST_PID; }
for v in plain mtls; do
    for n in bin bout badm aout ain aadm; do free_port "$n"; done
    if [[ $v == mtls ]]; then
        bid="identity: { trustBundle: $TMP/b/ca.crt, cert: $TMP/b/tls.crt, key: $TMP/b/tls.key }"
        aid="identity: { trustBundle: $TMP/a/ca.crt, cert: $TMP/a/tls.crt, key: $TMP/a/tls.key }"
        tls="tls: { identity: spiffe://cluster.local/ns/bench/sa/b }, "
        btls=strict
        HS_PORT=$bin
    else
        bid="" aid="" tls="" btls=disabled
    fi
    cat >"$TMP/b-$v.yaml" <<EOF
threads: 1
outbound: { listen: "127.0.0.1:$bout" }
inbound: { listen: "127.0.0.1:$bin", app: "127.0.0.1:$NGINX_PORT", tls: $btls }
admin: { listen: "127.0.0.1:$badm" }
$bid
EOF
    cat >"$TMP/a-$v.yaml" <<EOF
threads: 1
outbound: { listen: "127.0.0.1:$aout" }
inbound: { listen: "127.0.0.1:$ain", app: "127.0.0.1:1" }
admin: { listen: "127.0.0.1:$aadm" }
$aid
services: [ { name: app, protocol: http1, ${tls}endpoints: ["127.0.0.1:$bin"] } ]
routes: [ { match: { authority: app }, service: app } ]
EOF
    start "$MESHD_BIN" --config "$TMP/b-$v.yaml"; PB[$v]=$LAST
    start "$MESHD_BIN" --config "$TMP/a-$v.yaml"; PA[$v]=$LAST
    ENTRY[$v]=$aout
done
free_port HB; free_port HA
cat >"$TMP/hb.cfg" <<EOF
global
    maxconn 4000
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend fe
    bind 127.0.0.1:$HB ssl crt $TMP/b.pem ca-file $TMP/ca/ca.crt verify required ssl-min-ver TLSv1.3 alpn http/1.1
    default_backend be
backend be
    server nginx 127.0.0.1:$NGINX_PORT
EOF
cat >"$TMP/ha.cfg" <<EOF
global
    maxconn 4000
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend fe
    bind 127.0.0.1:$HA
    default_backend be
backend be
    server b 127.0.0.1:$HB ssl crt $TMP/a.pem ca-file $TMP/ca/ca.crt verify required ssl-min-ver TLSv1.3 alpn http/1.1
EOF
start haproxy -f "$TMP/hb.cfg"; PB[haproxy]=$LAST
start haproxy -f "$TMP/ha.cfg"; PA[haproxy]=$LAST
ENTRY[haproxy]=$HA
VARIANTS=(plain mtls haproxy)
for _ in $(seq 50); do
    ok=1
    for v in "${VARIANTS[@]}"; do curl -sf -m 1 -H 'host: app' "http://127.0.0.1:${ENTRY[$v]}/" >/dev/null || ok=0; done
    ((ok)) && break
    sleep 0.2
done
((ok)) || { cat "$TMP"/proc-*.log >&2; die "proxies did not come up"; }

cpu() { proc_ticks "$1"; } # utime + stime, clock ticks
TICK=$CLK_TCK
ms() { awk '{ v = $1; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 }; printf "%.3f", v }' <<<"$1"; }
declare -A RPS P50 P99 CPUK
for r in $(seq "$RUNS"); do
    # The order alternates between rounds (plain first, then mTLS first), so neither variant always
    # runs right after the other on a machine whose speed drifts.
    if ((r % 2)); then ORDER=(plain mtls haproxy); else ORDER=(mtls plain haproxy); fi
    for v in "${ORDER[@]}"; do
        taskset -c 1 wrk -t1 -c"$CONNS" -d2s -H 'Host: app' "http://127.0.0.1:${ENTRY[$v]}/" >/dev/null
        c0=$(( $(cpu "${PA[$v]}") + $(cpu "${PB[$v]}") ))
        out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H 'Host: app' "http://127.0.0.1:${ENTRY[$v]}/")
        c1=$(( $(cpu "${PA[$v]}") + $(cpu "${PB[$v]}") ))
        if grep -q "Non-2xx\|Socket errors" <<<"$out"; then log "errors in the $v run: $out"; fi
        reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
        RPS[$v]+="$(awk '/Requests\/sec/ { print $2 }' <<<"$out") "
        P50[$v]+="$(ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")") "
        P99[$v]+="$(ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")") "
        CPUK[$v]+="$(awk -v c=$((c1 - c0)) -v t="$TICK" -v n="$reqs" 'BEGIN { printf "%.4f", c / t / n * 1000 }') "
        log "run $r $v: $(awk '/Requests\/sec/ { print $2 }' <<<"$out") req/s"
    done
done
med() { median $1; } # lib.sh's median over a space-separated list
printf '| A -> B | req/s | p50 ms | p99 ms | CPU s / 1000 req (A+B) |\n|---|---|---|---|---|\n'
for v in "${VARIANTS[@]}"; do
    printf '| %s | %s | %s | %s | %s |\n' "$v" "$(med "${RPS[$v]}")" "$(med "${P50[$v]}")" "$(med "${P99[$v]}")" "$(med "${CPUK[$v]}")"
done
awk -v m="$(med "${RPS[mtls]}")" -v p="$(med "${RPS[plain]}")" -v h="$(med "${RPS[haproxy]}")" \
    'BEGIN { printf "\nmeshd mTLS / meshd plaintext: %.2f; meshd mTLS / HAProxy mTLS: %.2f\n", m / p, m / h }'
# The same ratio round by round (each round's two measurements are adjacent in time), and the ratio of
# CPU per request (plaintext's over mTLS's: the req/s ratio the same CPU would give).
read -r -a rp <<<"${RPS[plain]}"; read -r -a rm <<<"${RPS[mtls]}"
read -r -a cp <<<"${CPUK[plain]}"; read -r -a cm <<<"${CPUK[mtls]}"
rr="" cr=""
for i in "${!rp[@]}"; do
    rr+="$(awk -v a="${rm[$i]}" -v b="${rp[$i]}" 'BEGIN { printf "%.3f", a / b }') "
    cr+="$(awk -v a="${cp[$i]}" -v b="${cm[$i]}" 'BEGIN { printf "%.3f", a / b }') "
done
printf 'per round, mTLS / plaintext req/s: %s(median %s); plaintext / mTLS CPU per request: %s(median %s)\n' \
    "$rr" "$(med "$rr")" "$cr" "$(med "$cr")"

# Full handshakes (no resumption) per CPU-second of the terminating side.
printf '\n| server (B) | handshakes/s (one client) | handshakes per CPU-second of B |\n|---|---|---|\n'
for v in mtls haproxy; do
    p=$([[ $v == mtls ]] && echo "$HS_PORT" || echo "$HB")
    c0=$(cpu "${PB[$v]}")
    out=$(taskset -c 1 openssl s_time -connect "127.0.0.1:$p" -new -time 5 -cert "$TMP/a/tls.crt" -key "$TMP/a/tls.key" \
        -CAfile "$TMP/ca/ca.crt" 2>/dev/null || true)
    c1=$(cpu "${PB[$v]}")
    n=$(awk '/connections in/ && /real seconds/ { print $1; exit }' <<<"$out")
    secs=$(awk '/connections in/ && /real seconds/ { for (i = 1; i <= NF; i++) if ($i == "in") { print $(i + 1); exit } }' <<<"$out")
    printf '| %s | %s | %s |\n' "$v" "$(awk -v n="${n:-0}" -v s="${secs:-1}" 'BEGIN { printf "%.0f", n / s }')" \
        "$(awk -v n="${n:-0}" -v c=$((c1 - c0)) -v t="$TICK" 'BEGIN { if (c > 0) printf "%.0f", n / (c / t); else print "?" }')"
done

# Instructions per request (INSTRUCTIONS=1): valgrind's callgrind counts the instructions A and B
# execute for a fixed number of requests, repeatably whatever else the machine does (timings on this
# noisy 2-core box drift from round to round; counts do not). User space only: the kernel's share
# (the same syscalls per request in both variants) is left out.
if [[ ${INSTRUCTIONS:-0} == 1 ]]; then
    command -v valgrind >/dev/null && command -v h2load >/dev/null || die "INSTRUCTIONS=1 needs valgrind and h2load"
    strip --strip-debug "$MESHD_BIN" -o "$TMP/meshd-cg" # valgrind cannot read the toolchain's DWARF 5
    N=${CG_REQUESTS:-4000}
    declare -A INSTR
    for v in plain mtls; do
        kill "${PA[$v]}" "${PB[$v]}" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "${PA[$v]}" 2>/dev/null || kill -0 "${PB[$v]}" 2>/dev/null || break; sleep 0.1; done
        kill -9 "${PA[$v]}" "${PB[$v]}" 2>/dev/null || true
        sleep 0.2
        for side in b a; do
            start_bg "$TMP/cg-$v-$side.log" valgrind --tool=callgrind --callgrind-out-file="$TMP/cg-$v-$side.out" \
                "$TMP/meshd-cg" --config "$TMP/$side-$v.yaml"
            eval "CG_$side=\$LAST_PID"
        done
        for _ in $(seq 120); do curl -sf -m 5 -H 'host: app' "http://127.0.0.1:${ENTRY[$v]}/" >/dev/null && break; sleep 0.5; done
        h2load --h1 -n 400 -c 8 -H ':authority: app' "http://127.0.0.1:${ENTRY[$v]}/" >/dev/null # handshakes, pools
        callgrind_control -z "$CG_a" >/dev/null 2>&1
        callgrind_control -z "$CG_b" >/dev/null 2>&1
        ok=$(h2load --h1 -n "$N" -c 8 -H ':authority: app' "http://127.0.0.1:${ENTRY[$v]}/" | awk '/^status codes/ { print $3 }')
        [[ $ok == "$N" ]] || die "callgrind run $v: $ok of $N requests answered 2xx"
        total=0
        for side in a b; do
            pid=$(eval echo "\$CG_$side")
            callgrind_control -d "$pid" >/dev/null 2>&1
            sleep 1
            f=$(ls -t "$TMP/cg-$v-$side.out".* | head -1)
            n=$(awk '/^(summary|totals):/ { print $2; exit }' "$f")
            total=$((total + n))
            kill "$pid" 2>/dev/null || true
        done
        INSTR[$v]=$((total / N))
        log "instructions per request, $v (A+B): ${INSTR[$v]}"
    done
    printf '\n| A -> B | instructions per request (A+B, user space) |\n|---|---|\n| plain | %s |\n| mtls | %s |\n' \
        "${INSTR[plain]}" "${INSTR[mtls]}"
    awk -v m="${INSTR[mtls]}" -v p="${INSTR[plain]}" 'BEGIN { printf "\nmeshd mTLS / plaintext instructions per request: %.3f\n", m / p }'
fi
