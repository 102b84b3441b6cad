# Shared by the benchmark scripts (bench/http1.sh, bench/http2.sh): process bookkeeping and cleanup,
# free ports, CPU-time and memory readings, and small number formatters.
# The sourcing script sets BENCH_NAME and defines log() and die() first.
# shellcheck shell=bash

# Process bookkeeping and cleanup (runs on every exit path, including failures and signals).
TMP=$(mktemp -d "/tmp/meshd-bench-$BENCH_NAME.XXXXXX")
chmod 755 "$TMP" # nginx workers run as 'nobody' when started as root
PIDS=()
CURRENT_LOAD=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local all=() p c alive
    if [[ -n $CURRENT_LOAD ]]; then kill -TERM "$CURRENT_LOAD" 2>/dev/null || true; fi
    for p in "${PIDS[@]}"; do
        all+=("$p")
        for c in $(pgrep -P "$p" 2>/dev/null || true); do all+=("$c"); done
    done
    for p in "${all[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${all[@]}"; do
        if kill -0 "$p" 2>/dev/null; then
            log "process $p ($(tr '\0' ' ' </proc/"$p"/cmdline 2>/dev/null | cut -c1-60)) did not exit within 5 s of SIGTERM; sending SIGKILL"
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Allocate a free loopback TCP port (not in the ephemeral range, so the load generator's client ports
# cannot collide with it) into the named variable.
USED_PORTS=" "
free_port() {
    local __var=$1 p
    for _ in $(seq 500); do
        p=$((20000 + RANDOM % 12000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if command -v ss >/dev/null 2>&1; then
            [[ -z $(ss -Htan "( sport = :$p )" 2>/dev/null) ]] || continue
        else
            (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
        fi
        USED_PORTS+="$p "
        printf -v "$__var" '%s' "$p"
        return 0
    done
    die "could not find a free loopback port"
}

# start_bg <logfile> <cmd...>: start in the background, remember the pid in LAST_PID.
start_bg() {
    local logfile=$1
    shift
    "$@" >"$logfile" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}


# utime+stime (clock ticks) of a process and its direct children (nginx master + worker); with a
# second argument `sys`, stime alone (the kernel's share: syscalls, TCP, softirq work done on its behalf).
proc_ticks() {
    local total=0 p s f
    [[ -r /proc/$1/stat ]] || return 0
    for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
        s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        s=${s##*) } # drop "pid (comm) ", comm may contain spaces
        read -r -a f <<<"$s"
        if [[ ${2:-} == sys ]]; then
            total=$((total + f[12])) # field 15 (stime)
        else
            total=$((total + f[11] + f[12])) # fields 14 (utime) and 15 (stime)
        fi
    done
    echo "$total"
}

# proc_mem <pid> <VmRSS|VmHWM>: kB, summed over the process and its direct children.
proc_mem() {
    local total=0 p v
    for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
        v=$(awk -v k="$2:" '$1 == k { print $2 }' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# Busy ticks of the whole machine (all CPUs) from /proc/stat: user + nice + system + steal.
# irq/softirq time is left out: loopback packet processing lands there and is charged to no
# process, so it cannot be told apart from our own traffic.
machine_busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $9; exit }' /proc/stat; }

# CPU time (ticks) of this shell's reaped children: includes the load generator, reaped through timeout.
# 'times' must run in this shell (a $(...) subshell has no reaped children), hence the file.
children_ticks() {
    local t
    times >"$TMP/times"
    t=$(sed -n 2p "$TMP/times")
    CHILD_TICKS=$(awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        n = split(t, a, " "); s = 0
        for (i = 1; i <= n; i++) { split(a[i], b, "m"); sub(/s$/, "", b[2]); s += b[1] * 60 + b[2] }
        printf "%d\n", s * hz + 0.5 }')
}

CLK_TCK=$(getconf CLK_TCK)
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# Number helpers.
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
pct() { awk -v x="$1" 'BEGIN { if (x == "n/a" || x == "") print "n/a"; else printf "%.1f %%", x * 100 }'; }

# start_caddy <dir>: Caddy with <dir>/Caddyfile as a proxy under test: one thread running Go code
# (GOMAXPROCS=1), pinned like every proxy (PIN_PROXY), its state kept under <dir>; sets CADDY_PID
# and CADDY_RSS_IDLE_KB. CADDY_BIN and CADDY_PORT are the caller's.
start_caddy() {
    local dir=$1
    log "starting Caddy on 127.0.0.1:$CADDY_PORT"
    start_bg "$dir/stderr.log" env GOMAXPROCS=1 HOME="$dir" XDG_DATA_HOME="$dir" XDG_CONFIG_HOME="$dir" \
        "${PIN_PROXY[@]}" "$CADDY_BIN" run --config "$dir/Caddyfile" --adapter caddyfile
    CADDY_PID=$LAST_PID
    sleep 0.5
    CADDY_RSS_IDLE_KB=$(proc_mem "$CADDY_PID" VmRSS)
}
