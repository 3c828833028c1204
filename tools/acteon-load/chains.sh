#!/usr/bin/env bash
# Issue 12, chain steps: N three-step chains started on one gateway, run by the workers of
# REPLICAS gateways on one backend, each step a webhook call to nginx (a fixed JSON answer).
# Prints chain steps per second (from the first dispatch to the last chain completed) and
# the time from one step's delivery to the next one's, per chain (nginx's access log).
#
# Assumes the release binaries are built, nginx is installed, the backend listens locally:
#   cargo build --release -p acteon-gateway -p acteon-load
#   bash tools/acteon-load/chains.sh [redis|postgres|memory]
#
# Environment: N (10000 chains), REPLICAS (3; 1 for memory), CONNECTIONS (32).
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/acteon-load/lib.sh
BACKEND="${1:-redis}"
N="${N:-10000}"
REPLICAS="${REPLICAS:-3}"
[[ "$BACKEND" == memory ]] && REPLICAS=1
CONNECTIONS="${CONNECTIONS:-32}"
WORK="$(mktemp -d)"
SINK_PORT="$(free_port)"
cleanup() {
    stop_gws
    [[ -f "$WORK/nginx.pid" ]] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log;
events { worker_connections 4096; }
http {
  log_format steps '\$msec \$http_x_acteon_action_id';
  access_log $WORK/access.log steps buffer=256k flush=1s;
  client_body_temp_path $WORK/body;
  proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fastcgi;
  uwsgi_temp_path $WORK/uwsgi;
  scgi_temp_path $WORK/scgi;
  server {
    listen 127.0.0.1:$SINK_PORT;
    location / { default_type application/json; return 200 '{"ok":true}'; }
  }
}
CONF
nginx -c "$WORK/nginx.conf" -p "$WORK"

cat > "$WORK/chains.yaml" <<YAML
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: noop-a, namespace: bench}
spec: {type: noop}
---
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: sink, namespace: bench}
spec:
  type: webhook
  webhook: {url: "http://127.0.0.1:$SINK_PORT/step"}
  timeoutSeconds: 5
---
apiVersion: acteon.dev/v1alpha1
kind: Chain
metadata: {name: three, namespace: bench}
spec:
  steps:
    - {name: s1, provider: sink, payloadTemplate: {origin: "{{origin.id}}"}}
    - {name: s2, provider: sink, payloadTemplate: {prev: "{{prev.body.ok}}"}}
    - {name: s3, provider: sink, payloadTemplate: {chain: "{{chain_id}}"}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: start, namespace: bench}
spec:
  condition: {field: action.action_type, eq: chained}
  action: {type: chain, chain: three}
YAML
RULES="$WORK/chains.yaml"
prefix="acteon_chains_$$"
PORTS=()
for i in $(seq "$REPLICAS"); do
    start_gw "$(state_url "$BACKEND")" "$prefix" "$WORK/gw-$i.log"
    PORTS+=("$PORT")
done
completed() {
    local total=0 p
    for p in "${PORTS[@]}"; do
        total=$((total + $(metric_sum "$p" acteon_chains_total 'event="completed"')))
    done
    echo "$total"
}
started=$(date +%s.%N)
load "${PORTS[0]}" "$WORK/load.txt" --scenario chained -c "$CONNECTIONS" -n "$N" -d 600s
sent=$(date +%s.%N)
while (( $(completed) < N )); do sleep 0.05; done
done_at=$(date +%s.%N)
sleep 1.5 # nginx flushes its log every second
kill -HUP "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
sleep 0.2
python3 - "$WORK/access.log" "$N" "$started" "$sent" "$done_at" "$BACKEND" "$REPLICAS" <<'PY'
import sys, collections
log, n, started, sent, done, backend, replicas = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:6]), sys.argv[6], sys.argv[7]
steps = collections.defaultdict(dict)
deliveries = 0
for line in open(log):
    parts = line.split()
    if len(parts) != 2: continue
    t, key = float(parts[0]), parts[1]
    chain, step, _ = key.rsplit(":", 2)
    deliveries += 1
    steps[chain].setdefault(step, t)
gaps = sorted(1000 * (s[b] - s[a]) for s in steps.values() for a, b in (("s1", "s2"), ("s2", "s3")) if a in s and b in s)
q = lambda p: gaps[min(len(gaps) - 1, int(p * len(gaps)))] if gaps else float("nan")
elapsed = done - started
print(f"{backend}, {replicas} gateway(s): {n} chains × 3 steps in {elapsed:.2f} s (dispatching took {sent - started:.2f} s)")
print(f"chain steps/s   {3 * n / elapsed:.0f}   (deliveries at the sink: {deliveries}, repeats: {deliveries - 3 * n})")
print(f"step → next step ms   p50 {q(0.5):.1f}   p90 {q(0.9):.1f}   p99 {q(0.99):.1f}   max {gaps[-1] if gaps else float('nan'):.1f}")
PY
