#!/usr/bin/env bash
# Issue 11, timers at scale, per backend (default: redis, then postgres):
#  (a) dispatch p99 of the gated-dedup load (CONNECTIONS, DURATION) with no pending timers,
#      then again after PENDING (100,000) actions were scheduled 3600 s ahead;
#  (b) fire lateness: REPLICAS (3) gateways on the same state (the PENDING timers still
#      there) while SOON (5,000) actions are scheduled 5 s ahead, sent paced over SPREAD
#      seconds (10) through all replicas, so they fall due over ~5-15 s from the start;
#      once all fired, the `acteon_timer_lateness_seconds` buckets of every replica are
#      summed (deltas) and p50/p99 interpolated as Prometheus' histogram_quantile does.
#
# Assumes the release binaries are built and Redis / Postgres listen locally:
#   cargo build --release -p acteon-gateway -p acteon-load
#   bash tools/acteon-load/timers.sh [redis postgres]
#
# Environment: PENDING (100000), SOON (5000), SPREAD (10), REPLICAS (3), CONNECTIONS (32),
# DURATION (10s), REDIS_URL, PG_URL. The 3600 s timers are left in the state under the
# prefix acteon_timers_<pid>_<backend> (Redis: they expire with nothing; delete the keys or
# the Postgres schema to reclaim the space).
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/acteon-load/lib.sh
PENDING="${PENDING:-100000}"
SOON="${SOON:-5000}"
SPREAD="${SPREAD:-10}"
REPLICAS="${REPLICAS:-3}"
CONNECTIONS="${CONNECTIONS:-32}"
DURATION="${DURATION:-10s}"
BACKENDS=("${@:-redis postgres}")
read -r -a BACKENDS <<<"${BACKENDS[*]}"

# Lateness bucket counts summed over replicas: "le count" lines.
buckets() {
    local port
    for port in "$@"; do curl -s "http://127.0.0.1:$port/metrics"; done |
        awk '/^acteon_timer_lateness_seconds_bucket/ {match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5); s[le] += $NF}
             END {for (le in s) print le, s[le]}' | sort -g
}
# quantile Q BEFORE AFTER: histogram_quantile over the bucket deltas.
quantile() {
    awk -v q="$1" 'FILENAME == ARGV[1] {b[$1] = $2; next} {le[++n] = $1; c[n] = $2 - b[$1]}
        END {
            total = c[n]; if (total <= 0) {print "n/a"; exit}
            rank = q * total; prev_le = 0; prev_c = 0
            for (i = 1; i <= n; i++) {
                if (c[i] >= rank) {
                    if (le[i] == "+Inf") {printf ">%s s\n", le[i - 1]; exit}
                    printf "%.3f\n", prev_le + (le[i] - prev_le) * (rank - prev_c) / (c[i] - prev_c); exit
                }
                prev_le = le[i]; prev_c = c[i]
            }
        }' "$2" "$3"
}

declare -A NONE WITH LATE50 LATE99 FIRED SCHED_RPS
for b in "${BACKENDS[@]}"; do
    prefix="acteon_timers_$$_${b}"
    state="$(state_url "$b")"
    start_gw "$state" "$prefix" "/tmp/acteon-timers-gw-$b-0.log"; port="$PORT"
    load "$port" /dev/null --scenario gated-dedup -c "$CONNECTIONS" -d 3s
    load "$port" "/tmp/acteon-timers-$b-none.txt" --scenario gated-dedup -c "$CONNECTIONS" -d "$DURATION"
    NONE[$b]="$(rep_q "/tmp/acteon-timers-$b-none.txt" p99) µs @ $(rep_rps "/tmp/acteon-timers-$b-none.txt")/s"
    load "$port" "/tmp/acteon-timers-$b-schedule.txt" --scenario scheduled -c "$CONNECTIONS" -n "$PENDING" -d 30m
    SCHED_RPS[$b]="$(rep_rps "/tmp/acteon-timers-$b-schedule.txt")"
    echo "$b: scheduled $PENDING at ${SCHED_RPS[$b]}/s; acteon_timers_pending $(metric_sum "$port" acteon_timers_pending)" >&2
    load "$port" /dev/null --scenario gated-dedup -c "$CONNECTIONS" -d 3s
    load "$port" "/tmp/acteon-timers-$b-with.txt" --scenario gated-dedup -c "$CONNECTIONS" -d "$DURATION"
    WITH[$b]="$(rep_q "/tmp/acteon-timers-$b-with.txt" p99) µs @ $(rep_rps "/tmp/acteon-timers-$b-with.txt")/s"

    ports=("$port")
    for r in $(seq 2 "$REPLICAS"); do
        start_gw "$state" "$prefix" "/tmp/acteon-timers-gw-$b-$r.log"
        ports+=("$PORT")
    done
    buckets "${ports[@]}" >/tmp/acteon-timers-before
    fired0=0
    for p in "${ports[@]}"; do fired0=$((fired0 + $(metric_sum "$p" acteon_released_total))); done
    per=$(((SOON + REPLICAS - 1) / REPLICAS))
    rate="$(awk -v n="$per" -v s="$SPREAD" 'BEGIN {print n / s}')"
    lpids=()
    for p in "${ports[@]}"; do
        load "$p" "/tmp/acteon-timers-$b-soon-$p.txt" --scenario scheduled-soon -c 4 -n "$per" --rate "$rate" -d "$((SPREAD + 30))s" &
        lpids+=($!)
    done
    wait "${lpids[@]}"
    fired=0
    for _ in $(seq 120); do # up to 60 s after the last was sent
        fired=0
        for p in "${ports[@]}"; do fired=$((fired + $(metric_sum "$p" acteon_released_total))); done
        fired=$((fired - fired0))
        ((fired >= per * REPLICAS)) && break
        sleep 0.5
    done
    sleep 1
    buckets "${ports[@]}" >/tmp/acteon-timers-after
    FIRED[$b]="$fired of $((per * REPLICAS))"
    LATE50[$b]="$(quantile 0.5 /tmp/acteon-timers-before /tmp/acteon-timers-after)"
    LATE99[$b]="$(quantile 0.99 /tmp/acteon-timers-before /tmp/acteon-timers-after)"
    echo "$b lateness buckets (le, count delta over $REPLICAS replicas):" >&2
    awk 'FILENAME == ARGV[1] {b[$1] = $2; next} {printf "  %s %d\n", $1, $2 - b[$1]}' /tmp/acteon-timers-before /tmp/acteon-timers-after >&2
    stop_gws
done

printf '\n%-9s %-26s %-26s %-12s %-10s %-10s\n' backend "gated p99, no timers" "gated p99, $PENDING pending" "fired" "late p50 s" "late p99 s"
for b in "${BACKENDS[@]}"; do
    printf '%-9s %-26s %-26s %-12s %-10s %-10s\n' "$b" "${NONE[$b]}" "${WITH[$b]}" "${FIRED[$b]}" "${LATE50[$b]}" "${LATE99[$b]}"
done
echo "($REPLICAS replicas for the lateness, $SOON actions scheduled 5 s ahead over $SPREAD s; $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores)"
