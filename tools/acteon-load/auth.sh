#!/usr/bin/env bash
# Issue 14, cost of authentication: the `mixed` scenario on the memory backend against one
# gateway with `--auth off` and one with `--auth on` (an API token from a file: the cached
# verification path — header parse, SHA-256, one map lookup, the scope check), run in
# alternation ROUNDS times so both see the same machine. Prints one table.
#
#   cargo build --release -p acteon-gateway -p acteon-load
#   bash tools/acteon-load/auth.sh
#
# Environment: DURATION (10s), WARMUP (2s), CONNECTIONS (32), ROUNDS (3), GATEWAY, LOADGEN.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/acteon-load/lib.sh
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-32}"
ROUNDS="${ROUNDS:-3}"
TOKENS="$(mktemp)"
cat >"$TOKENS" <<'YAML'
tokens:
  - {name: bench, token: bench-token-0123456789abcdef, role: dispatch, namespaces: [bench]}
YAML

start_gw memory off /tmp/acteon-auth-off.log; off="$PORT"
start_gw memory on /tmp/acteon-auth-on.log --auth on --api-tokens-file "$TOKENS"; on="$PORT"
load "$off" /dev/null -c "$CONNECTIONS" -d "$WARMUP"
load "$on" /dev/null -c "$CONNECTIONS" -d "$WARMUP" --bearer bench-token-0123456789abcdef

declare -A SUM P99
for round in $(seq "$ROUNDS"); do
    for mode in off on; do
        port="${!mode}"
        out="/tmp/acteon-auth-$mode-$round.txt"
        extra=()
        [[ "$mode" == on ]] && extra=(--bearer bench-token-0123456789abcdef)
        load "$port" "$out" -c "$CONNECTIONS" -d "$DURATION" "${extra[@]}"
        grep -q '^  Executed' "$out" || { echo "no executed outcomes with auth $mode" >&2; cat "$out" >&2; exit 1; }
        SUM[$mode]="$(awk -v a="${SUM[$mode]:-0}" -v b="$(rep_rps "$out")" 'BEGIN {print a + b}')"
        P99[$mode]="${P99[$mode]:-} $(rep_q "$out" p99)"
        echo "round $round auth $mode: $(rep_rps "$out") req/s, p99 $(rep_q "$out" p99) µs" >&2
    done
done
printf '\n%-9s %14s %22s\n' auth "mean req/s" "p99 µs per round"
for mode in off on; do
    printf '%-9s %14.0f %22s\n' "$mode" "$(awk -v s="${SUM[$mode]}" -v n="$ROUNDS" 'BEGIN {print s / n}')" "${P99[$mode]}"
done
awk -v a="${SUM[on]}" -v b="${SUM[off]}" 'BEGIN {printf "auth on / auth off: %.1f%%\n", 100 * a / b}'
rm -f "$TOKENS"
