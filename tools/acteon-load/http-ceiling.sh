#!/usr/bin/env bash
# How close ungated dispatch comes to the HTTP ceiling of this machine, in one run:
# wrk against nginx answering a fixed JSON body, then against the gateway dispatching
# `executed` actions of tools/acteon-load/bench-rules.yaml (~100 rules, no gates), then the
# mixed scenario. Prints each throughput and the gateway/nginx ratio.
#
#   cargo build --release -p acteon-gateway && bash tools/acteon-load/http-ceiling.sh
#
# Needs nginx and wrk (Debian packages `nginx-light` or `nginx`, `wrk`). Environment:
# GATEWAY (binary, default target/release/acteon-gateway), DURATION (10s), CONNECTIONS (32),
# NGINX_WORKERS (1), GATEWAY_WORKERS (tokio worker threads, default NGINX_WORKERS: both
# servers get the same share of the cores, and wrk the rest). The gateway's own default is
# one worker per core; with wrk on the same 2 cores, two workers fight wrk for them (~70%
# of nginx instead of ~90% on a quiet machine, and more CPU per request).
set -euo pipefail
cd "$(dirname "$0")/../.."
GATEWAY="${GATEWAY:-target/release/acteon-gateway}"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-32}"
NGINX_WORKERS="${NGINX_WORKERS:-1}"
GATEWAY_WORKERS="${GATEWAY_WORKERS:-$NGINX_WORKERS}"
WORK="$(mktemp -d /tmp/acteon-ceiling.XXXXXX)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NGINX_PORT="$(free_port)"
GW_PORT="$(free_port)"
GW_PID=""
cleanup() {
    [[ -n "$GW_PID" ]] && kill "$GW_PID" 2>/dev/null || true
    [[ -f "$WORK/nginx.pid" ]] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

BODY='{"Executed":{"status":"success","body":{},"headers":{}}}'
cat > "$WORK/nginx.conf" <<CONF
worker_processes $NGINX_WORKERS;
pid $WORK/nginx.pid;
error_log $WORK/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/body;
  proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fastcgi;
  uwsgi_temp_path $WORK/uwsgi;
  scgi_temp_path $WORK/scgi;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { default_type application/json; return 200 '$BODY'; }
  }
}
CONF
nginx -c "$WORK/nginx.conf" -p "$WORK"

TOKIO_WORKER_THREADS="$GATEWAY_WORKERS" "$GATEWAY" serve --config tools/acteon-load/bench-rules.yaml --listen "127.0.0.1:$GW_PORT" \
    >"$WORK/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$GW_PORT/readyz" >/dev/null && break
    sleep 0.1
done

rate() { awk '/^Requests\/sec/ {print $2}'; }
run() { # name url [wrk-mixed.lua arguments]
    local name="$1" url="$2"; shift 2
    local out
    out="$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s tools/acteon-load/wrk-mixed.lua \
        "$url" -- "$@")"
    printf '%-26s %10s req/s   p50 %-8s p99 %s\n' "$name" "$(rate <<<"$out")" \
        "$(awk '$1=="50%" {print $2}' <<<"$out")" "$(awk '$1=="99%" {print $2}' <<<"$out")"
    rate <<<"$out" >"$WORK/$name.rate"
}
echo "wrk -t1 -c$CONNECTIONS -d$DURATION, nginx workers: $NGINX_WORKERS, gateway workers: $GATEWAY_WORKERS"
run nginx-fixed-body "http://127.0.0.1:$NGINX_PORT" nocount
run gateway-ungated "http://127.0.0.1:$GW_PORT" nocount ungated
run gateway-mixed "http://127.0.0.1:$GW_PORT" nocount
awk -v g="$(cat "$WORK/gateway-ungated.rate")" -v n="$(cat "$WORK/nginx-fixed-body.rate")" \
    'BEGIN { printf "ungated dispatch / nginx fixed body: %.1f%%\n", 100 * g / n }'
