#!/usr/bin/env bash
# Where the CPU of a dispatch goes: runs one acteon-load scenario against a fresh gateway
# and prints, per dispatch, the CPU time (user + system, from /proc/<pid>/stat) of the
# gateway, redis-server, all postgres processes and everything else (the load generator
# and the rest of the machine), the share of time the CPUs sat idle (/proc/stat), and how
# often redis-server read its sockets (read syscalls per dispatch: each one is a wake-up).
# On a closed loop whose throughput is bound by the machine's cores, these say which
# process to look at; idle time says the loop waits on something instead (latency).
#
#   cargo build --release -p acteon-gateway -p acteon-load
#   bash tools/acteon-load/cpu-per-dispatch.sh [memory|redis|postgres] [scenario]
#
# Environment: DURATION (8s), WARMUP (3s), CONNECTIONS (32), GATEWAY, LOADGEN, REDIS_URL,
# PG_URL (see lib.sh). The report of the run is kept in /tmp/acteon-cpu-<backend>.txt.
# Reading another user's /proc/<pid>/io needs root; without it the Redis column says "-".
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/acteon-load/lib.sh
BACKEND="${1:-redis}"
SCENARIO="${2:-gated-dedup}"
DURATION="${DURATION:-8s}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-32}"
secs="${DURATION%s}"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
ticks_of() { # ticks of every process named $1
    local sum=0 pid
    for pid in $(pgrep -x "$1" || true); do sum=$((sum + $(ticks "$pid"))); done
    echo "$sum"
}
cpu_line() { awk '/^cpu / {print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
redis_reads() {
    local pid
    pid="$(pgrep -x redis-server | head -1 || true)"
    [[ -n "$pid" ]] && awk '/^syscr/ {print $2}' "/proc/$pid/io" 2>/dev/null || echo -
}

start_gw "$(state_url "$BACKEND")" "acteon_cpu_$$" "/tmp/acteon-cpu-gw-$BACKEND.log"
port="$PORT" gw="${GW_PIDS[0]}"
load "$port" /dev/null --scenario "$SCENARIO" -c "$CONNECTIONS" -d "$WARMUP"

g0="$(ticks "$gw")" r0="$(ticks_of redis-server)" p0="$(ticks_of postgres)" s0="$(redis_reads)"
read -r idle0 all0 < <(cpu_line)
out="/tmp/acteon-cpu-$BACKEND.txt"
load "$port" "$out" --scenario "$SCENARIO" -c "$CONNECTIONS" -d "$DURATION"
g1="$(ticks "$gw")" r1="$(ticks_of redis-server)" p1="$(ticks_of postgres)" s1="$(redis_reads)"
read -r idle1 all1 < <(cpu_line)
stop_gws

rps="$(rep_rps "$out")"
hz="$(getconf CLK_TCK)"
awk -v rps="$rps" -v secs="$secs" -v hz="$hz" \
    -v g=$((g1 - g0)) -v r=$((r1 - r0)) -v p=$((p1 - p0)) \
    -v idle=$((idle1 - idle0)) -v all=$((all1 - all0)) -v s0="$s0" -v s1="$s1" \
    -v b="$BACKEND" -v sc="$SCENARIO" -v c="$CONNECTIONS" 'BEGIN {
    n = rps * secs
    if (n <= 0) { print "no dispatches measured" > "/dev/stderr"; exit 1 }
    us = 1e6 / hz / n
    other = (all - idle) - g - r - p
    printf "%s, %s, %d connections: %.0f dispatches/s\n", b, sc, c, rps
    printf "CPU per dispatch (us): gateway %.1f  redis-server %.1f  postgres %.1f  other %.1f\n", g * us, r * us, p * us, other * us
    printf "idle: %.1f%% of CPU time", 100 * idle / all
    if (s0 != "-" && s1 != "-") printf "; redis-server reads per dispatch: %.3f", (s1 - s0) / n
    printf "\n"
}'
