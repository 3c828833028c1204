#!/usr/bin/env bash
# Issue 15, webhook delivery throughput: dispatches of executed actions whose provider is a
# webhook to a local sink (acteon-sink), on the memory backend, after a warm-up. Prints
# deliveries/s, latency percentiles, and the connections the sink accepted against the
# requests it answered (connection reuse: connections ≪ requests).
#
#   cargo build --release -p acteon-gateway -p acteon-load
#   bash tools/acteon-load/webhook.sh
#
# Environment: DURATION (10s), WARMUP (3s), CONNECTIONS (64), GATEWAY, LOADGEN (see lib.sh),
# SINK (target/release/acteon-sink). The report is kept in /tmp/acteon-webhook.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/acteon-load/lib.sh
SINK="${SINK:-target/release/acteon-sink}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-64}"
[[ -x "$SINK" ]] || { echo "missing $SINK: cargo build --release -p acteon-load" >&2; exit 2; }

sink_port="$(free_port)"
"$SINK" --listen "127.0.0.1:$sink_port" &
SINK_PID=$!
trap 'stop_gws; kill "$SINK_PID" 2>/dev/null || true' EXIT
RULES="$(mktemp --suffix=.yaml)"
cat >"$RULES" <<YAML
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: sink, namespace: bench}
spec:
  type: webhook
  webhook: {url: "http://127.0.0.1:$sink_port/hook"}
YAML
start_gw memory "acteon_webhook_$$" /tmp/acteon-webhook-gw.log; port="$PORT"
load "$port" /dev/null -c "$CONNECTIONS" -d "$WARMUP" --scenario webhook
before="$(curl -s "http://127.0.0.1:$sink_port/stats")"
out=/tmp/acteon-webhook.txt
load "$port" "$out" -c "$CONNECTIONS" -d "$DURATION" --scenario webhook
after="$(curl -s "http://127.0.0.1:$sink_port/stats")"
rm -f "$RULES"

field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
requests=$(( $(field "$after" requests) - $(field "$before" requests) ))
executed="$(awk '/Executed/ {print $2; exit}' "$out")"
printf 'dispatches/s %s   p50 %s µs   p99 %s µs\n' "$(rep_rps "$out")" "$(rep_q "$out" p50)" "$(rep_q "$out" p99)"
printf 'sink: %s deliveries in the run, %s connections accepted since start (%s requests in all)\n' \
    "$requests" "$(field "$after" connections)" "$(field "$after" requests)"
[[ -n "$executed" ]] && echo "outcomes Executed: $executed"
