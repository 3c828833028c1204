#!/usr/bin/env bash
# User-space instructions the gateway executes per ungated dispatch: a repeatable figure,
# unlike req/s on a shared 2-core machine (±25%). Runs the release gateway under callgrind
# with bench-rules.yaml, warms up, zeroes the counters, sends exactly N dispatches over C
# keep-alive connections (fixed-n.py, the body of wrk-mixed.lua's `ungated`), dumps and
# divides the total by N. Kernel time (the TCP stack) is not counted: STRACE=1 counts the
# syscalls instead.
#
#   cargo build --release -p acteon-gateway && bash tools/acteon-load/instr-per-request.sh
#
# Compare figures taken with the same N and C only. Environment: GATEWAY (default
# target/release/acteon-gateway), N (20000), C (connections, 8), WARMUP (2000), TOP (also
# print the TOP functions with the most instructions of their own), KEEP (a directory to
# keep the callgrind output in, for callgrind_annotate), STRACE=1 (also count syscalls per
# dispatch with strace -c, in a second run without callgrind).
set -euo pipefail
cd "$(dirname "$0")/../.."
GATEWAY="${GATEWAY:-target/release/acteon-gateway}"
N="${N:-20000}"
C="${C:-8}"
WARMUP="${WARMUP:-2000}"
TOP="${TOP:-0}"
WORK="$(mktemp -d /tmp/acteon-instr.XXXXXX)"
PID=""
cleanup() {
    [[ -n "$PID" ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
CLIENT=tools/acteon-load/fixed-n.py

start() { # command prefix…
    "$@" "$GATEWAY" serve --config tools/acteon-load/bench-rules.yaml \
        --listen "127.0.0.1:$PORT" >"$WORK/gateway.log" 2>&1 &
    PID=$!
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && return
        sleep 0.1
    done
    echo "gateway did not become ready" >&2
    cat "$WORK/gateway.log" >&2
    exit 1
}

start valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
    --dump-instr=no --dump-line=no
python3 "$CLIENT" "$PORT" "$WARMUP" "$C" >/dev/null
callgrind_control -z "$PID" >/dev/null 2>&1
python3 "$CLIENT" "$PORT" "$N" "$C" >/dev/null
callgrind_control -d "$PID" >/dev/null 2>&1
kill "$PID"
wait "$PID" 2>/dev/null || true
PID=""
# The first dump (suffix .1) holds exactly the N requests.
DUMP="$WORK/callgrind.out.1"
TOTAL="$(awk '/^(summary|totals):/ {print $2; exit}' "$DUMP")"
awk -v t="$TOTAL" -v n="$N" -v c="$C" \
    'BEGIN { printf "instructions per dispatch: %.0f (%d dispatches, %d connections)\n", t / n, n, c }'
if [[ -n "${KEEP:-}" ]]; then
    mkdir -p "$KEEP" && cp "$DUMP" "$KEEP/"
fi
if [[ "$TOP" -gt 0 ]]; then
    { callgrind_annotate --threshold=100 "$DUMP" 2>/dev/null || true; } |
        awk '/file:function/ {on = 1; next} on && NF {print}' | head -n "$TOP" || true
fi

if [[ "${STRACE:-0}" == 1 ]]; then
    start
    python3 "$CLIENT" "$PORT" "$WARMUP" "$C" >/dev/null
    strace -c -f -p "$PID" -o "$WORK/strace.txt" 2>/dev/null &
    STRACE_PID=$!
    sleep 1
    python3 "$CLIENT" "$PORT" "$N" "$C" >/dev/null
    kill -INT "$STRACE_PID"
    wait "$STRACE_PID" 2>/dev/null || true
    # Columns: % time, seconds, usecs/call, calls, [errors], syscall.
    awk -v n="$N" '$4 ~ /^[0-9]+$/ && $NF != "total" && $4 > n / 20 {
        printf "  %-14s %.2f per dispatch\n", $NF, $4 / n }
        $NF == "total" { printf "syscalls per dispatch: %.2f\n", $4 / n }' "$WORK/strace.txt"
fi
