#!/usr/bin/env bash
# Issue 11, gated dispatch throughput: the `gated-dedup` scenario (fresh action ids, every
# action has a dedup_key, each key sent exactly twice so half are Deduplicated) against the
# ~100 rules of bench-rules.yaml + gated-rules.yaml, on the memory, Redis and Postgres
# backends in turn (a fresh state prefix each), after a warm-up. Prints one table.
#
# Assumes the release binaries are built and Redis / Postgres listen locally:
#   cargo build --release -p acteon-gateway -p acteon-load
#   bash tools/acteon-load/gated.sh [memory redis postgres]
#
# Throughput on a shared machine swings between identical runs; ROUNDS=N runs the backends
# in alternation N times and prints the means and each round's ratio.
#
# Environment: DURATION (10s), WARMUP (3s), CONNECTIONS (32), ROUNDS (1), REDIS_URL, PG_URL,
# GATEWAY, LOADGEN (see lib.sh). Reports are kept in /tmp/acteon-gated-<backend>.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/acteon-load/lib.sh
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-32}"
ROUNDS="${ROUNDS:-1}"
BACKENDS=("${@:-memory redis postgres}")
read -r -a BACKENDS <<<"${BACKENDS[*]}"

declare -A RPS P50 P99 SUM RATIOS
for round in $(seq "$ROUNDS"); do
    for b in "${BACKENDS[@]}"; do
        prefix="acteon_gated_$$_${b}_$round"
        start_gw "$(state_url "$b")" "$prefix" "/tmp/acteon-gated-gw-$b.log"; port="$PORT"
        load "$port" /dev/null --scenario gated-dedup -c "$CONNECTIONS" -d "$WARMUP"
        out="/tmp/acteon-gated-$b.txt"
        load "$port" "$out" --scenario gated-dedup -c "$CONNECTIONS" -d "$DURATION"
        RPS[$b]="$(rep_rps "$out")"
        P50[$b]="$(rep_q "$out" p50)"
        P99[$b]="$(rep_q "$out" p99)"
        SUM[$b]="$(awk -v a="${SUM[$b]:-0}" -v r="${RPS[$b]}" 'BEGIN {print a + r}')"
        echo "round $round $b: ${RPS[$b]}/s $(grep -A3 '^outcomes' "$out" | tail -n +2 | tr -s ' ' | tr '\n' ' ')" >&2
        stop_gws
        drop_keys "$(state_url "$b")" "$prefix"
    done
    for b in "${BACKENDS[@]}"; do
        [[ -n "${RPS[memory]:-}" && "$b" != memory ]] &&
            RATIOS[$b]="${RATIOS[$b]:-}$(awk -v a="${RPS[$b]}" -v m="${RPS[memory]}" 'BEGIN {printf " %.0f%%", 100 * a / m}')"
    done
done

if ((ROUNDS > 1)); then
    # Mean of the rounds; "% memory" compares the means, and each round's own ratio follows.
    printf '\n%-9s %18s %10s %s\n' backend "mean dispatches/s" "% memory" "(per round)"
    for b in "${BACKENDS[@]}"; do
        pct="-"
        [[ -n "${SUM[memory]:-}" && "$b" != memory ]] && pct="$(awk -v a="${SUM[$b]}" -v m="${SUM[memory]}" 'BEGIN {printf "%.0f%%", 100 * a / m}')"
        printf '%-9s %18.0f %10s %s\n' "$b" "$(awk -v s="${SUM[$b]}" -v n="$ROUNDS" 'BEGIN {print s / n}')" "$pct" "${RATIOS[$b]:-}"
    done
    echo "($ROUNDS rounds, backends alternating; $CONNECTIONS connections, $DURATION after a $WARMUP warm-up each, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores)"
    exit 0
fi

printf '\n%-9s %13s %9s %9s %10s\n' backend dispatches/s "p50 ms" "p99 ms" "% memory"
for b in "${BACKENDS[@]}"; do
    pct="-"
    [[ -n "${RPS[memory]:-}" && "$b" != memory ]] && pct="$(awk -v a="${RPS[$b]}" -v m="${RPS[memory]}" 'BEGIN {printf "%.0f%%", 100 * a / m}')"
    printf '%-9s %13s %9.2f %9.2f %10s\n' "$b" "${RPS[$b]}" \
        "$(awk -v u="${P50[$b]}" 'BEGIN {print u / 1000}')" "$(awk -v u="${P99[$b]}" 'BEGIN {print u / 1000}')" "$pct"
done
echo "($CONNECTIONS connections, $DURATION after a $WARMUP warm-up, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores)"
