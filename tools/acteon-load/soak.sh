#!/usr/bin/env bash
# Soak of issue 10: 30 s of wrk sending unique ~100 KB keys (as a dedup key template's
# field and as `dedup_key`) while 20,000 idle connections are held open, against a gateway
# on the memory backend and one on Redis. Prints the gateway's RSS (and Redis memory) over
# time, the answers' status mix, and what an ordinary client got meanwhile.
#
#   cargo build --release -p acteon-gateway && bash tools/acteon-load/soak.sh [memory|redis]...
#
# Environment: GATEWAY (target/release/acteon-gateway), REDIS_URL (redis://127.0.0.1:6379),
# SECONDS_OF_LOAD (30), IDLE (20000).
set -euo pipefail
cd "$(dirname "$0")/../.."
GATEWAY="${GATEWAY:-target/release/acteon-gateway}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
LOAD="${SECONDS_OF_LOAD:-30}"
IDLE="${IDLE:-20000}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
redis_mb() { redis-cli -u "$REDIS_URL" info memory | awk -F: '/^used_memory:/ {printf "%.1f", $2/1048576}'; }

soak() {
    local backend="$1" state="memory" port pid
    [[ "$backend" == redis ]] && state="$REDIS_URL"
    port="$(free_port)"
    "$GATEWAY" serve --config tools/acteon-load/soak-rules.yaml,tools/acteon-load/bench-rules.yaml --listen "127.0.0.1:$port" \
        --state "$state" --state-prefix "soak-$$" >/tmp/acteon-soak-gw.log 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
    echo "== $backend: gateway pid $pid, RSS at start $(rss_mb "$pid") MB$([[ $backend == redis ]] && echo ", Redis used_memory $(redis_mb) MB")"
    # Two holders of IDLE/2 each: one process may not get 20,000 descriptors.
    python3 tools/acteon-load/idle-conns.py 127.0.0.1 "$port" "$((IDLE / 2))" "$((LOAD + 5))" &
    local idle_pid=$!
    python3 tools/acteon-load/idle-conns.py 127.0.0.1 "$port" "$((IDLE / 2))" "$((LOAD + 5))" &
    local idle_pid2=$!
    sleep 5
    wrk -t1 -c16 -d"${LOAD}s" -s tools/acteon-load/wrk-bigkeys.lua "http://127.0.0.1:$port" \
        >/tmp/acteon-soak-wrk.txt 2>&1 &
    local wrk_pid=$!
    # The ordinary client: small dispatches through its own connections during the soak.
    wrk -t1 -c4 -d"${LOAD}s" --latency -s tools/acteon-load/wrk-mixed.lua "http://127.0.0.1:$port" -- nocount \
        >/tmp/acteon-soak-normal.txt 2>&1 &
    local normal_pid=$!
    local max=0
    for t in $(seq 5 5 "$LOAD"); do
        sleep 5
        local now; now="$(rss_mb "$pid")"; (( now > max )) && max=$now
        echo "t=${t}s RSS ${now} MB$([[ $backend == redis ]] && echo ", Redis used_memory $(redis_mb) MB")"
    done
    wait "$wrk_pid" "$normal_pid" || true
    echo "big-key load: $(awk '/Requests\/sec/ {print $2}' /tmp/acteon-soak-wrk.txt) req/s"
    echo "ordinary client: $(awk '/Requests\/sec/ {print $2}' /tmp/acteon-soak-normal.txt) req/s," \
        "p99 $(awk '$1=="99%" {print $2}' /tmp/acteon-soak-normal.txt)," \
        "errors: $(grep -E 'Non-2xx|Socket errors' /tmp/acteon-soak-normal.txt | tr '\n' ' ' || true)"
    echo "answers by status (gateway metrics):"
    curl -s "http://127.0.0.1:$port/metrics" | grep -E '^acteon_(dispatches_total|bad_requests_total)' | sed 's/^/  /'
    echo "peak RSS ${max} MB"
    wait "$idle_pid" "$idle_pid2" || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

for b in "${@:-memory redis}"; do
    for one in $b; do soak "$one"; done
done
