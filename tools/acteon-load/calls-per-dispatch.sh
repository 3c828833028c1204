#!/usr/bin/env bash
# Issue 11, backend calls per dispatch: for the gated (gated-dedup), grouped and scheduled
# scenarios, sends a fixed number of dispatches (N, 10,000) and counts
#   Redis:    commands, from `INFO commandstats` deltas (all commands but INFO itself;
#             commands a Lua script runs count too, so round trips are about the
#             EVALSHA/EVAL count plus the commands outside scripts)
#   Postgres: transactions (xact_commit + xact_rollback of pg_stat_database) in a database
#             of its own (PG_DB, acteon_calls, created if absent), so other sessions'
#             work on other databases does not count.
# The gateway's idle traffic (worker polls, 5/s by default) is measured over an idle window
# first and subtracted pro rata. Group notifications and scheduled actions are not due
# within the window: this is the cost of the dispatch itself.
#
# Assumes the release binaries are built, Redis / Postgres listen locally, and the Postgres
# role may create a database:
#   cargo build --release -p acteon-gateway -p acteon-load
#   bash tools/acteon-load/calls-per-dispatch.sh [redis postgres]
#
# Environment: N (10000), CONNECTIONS (32), IDLE_SECONDS (5), REDIS_URL, PG_URL (a database
# used only to create PG_DB), PG_DB.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/acteon-load/lib.sh
N="${N:-10000}"
CONNECTIONS="${CONNECTIONS:-32}"
IDLE_SECONDS="${IDLE_SECONDS:-5}"
PG_DB="${PG_DB:-acteon_calls}"
SCENARIOS=(gated-dedup grouped scheduled)
BACKENDS=("${@:-redis postgres}")
read -r -a BACKENDS <<<"${BACKENDS[*]}"

PG_CALLS_URL="${PG_URL%/*}/$PG_DB"
if [[ " ${BACKENDS[*]} " == *" postgres "* ]]; then
    [[ "$(psql "$PG_URL" -Atc "select count(*) from pg_database where datname = '$PG_DB'")" == 1 ]] ||
        psql "$PG_URL" -qc "create database $PG_DB" >/dev/null
fi

# Counter snapshot: "total name=calls ..." (Redis) or "total" (Postgres).
snapshot() {
    case "$1" in
        redis) redis-cli -u "$REDIS_URL" info commandstats | tr -d '\r' | awk -F'[:,=]' '
                /^cmdstat_/ && $1 != "cmdstat_info" {sub("cmdstat_", "", $1); t += $3; d = d " " $1 "=" $3}
                END {print t d}' ;;
        postgres)
            # A backend flushes its statistics to pg_stat_database at most once a second while
            # busy, and an idle one only after 10 s (PGSTAT_IDLE_INTERVAL, PostgreSQL 15).
            sleep "${PG_STATS_WAIT:-11}"
            psql "$PG_URL" -Atc "select xact_commit + xact_rollback from pg_stat_database where datname = '$PG_DB'" ;;
    esac
}
# Per-command deltas between two Redis snapshots, biggest first: "evalsha 2.00, get 0.50".
per_command() { # BEFORE AFTER DISPATCHES
    awk -v n="$3" -v a="$1" -v b="$2" 'BEGIN {
        k = split(a, x, " "); for (i = 2; i <= k; i++) {split(x[i], kv, "="); before[kv[1]] = kv[2]}
        k = split(b, y, " "); for (i = 2; i <= k; i++) {split(y[i], kv, "="); d = kv[2] - before[kv[1]]; if (d > 0) out[kv[1]] = d}
        for (c in out) printf "%s %.3f\n", c, out[c] / n}' | sort -k2 -rn | head -6 | awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2}'
}

printf '%-12s %-9s %10s %10s %14s  %s\n' scenario backend dispatches "calls" "calls/dispatch" "(Redis: top commands per dispatch, in-script ones included)"
for b in "${BACKENDS[@]}"; do
    state="$REDIS_URL"
    [[ "$b" == postgres ]] && state="$PG_CALLS_URL"
    for sc in "${SCENARIOS[@]}"; do
        prefix="acteon_calls_$$_${sc//-/_}"
        start_gw "$state" "$prefix" "/tmp/acteon-calls-gw.log"; port="$PORT"
        load "$port" /dev/null --scenario "$sc" -c "$CONNECTIONS" -n 1000 # warm-up (connections, scripts)
        sleep 1
        i0="$(snapshot "$b")"; t0="$(date +%s.%N)"
        sleep "$IDLE_SECONDS"
        i1="$(snapshot "$b")"; t1="$(date +%s.%N)"
        d0="$(metric_sum "$port" acteon_dispatches_total)"
        s0="$(snapshot "$b")"; ts0="$(date +%s.%N)"
        load "$port" "/tmp/acteon-calls-$b-$sc.txt" --scenario "$sc" -c "$CONNECTIONS" -n "$N" -d 10m
        sleep 1 # background work of these dispatches (dedup confirmations)
        s1="$(snapshot "$b")"; ts1="$(date +%s.%N)"
        d1="$(metric_sum "$port" acteon_dispatches_total)"
        stop_gws
        n=$((d1 - d0))
        read -r calls per <<<"$(awk -v i0="${i0%% *}" -v i1="${i1%% *}" -v s0="${s0%% *}" -v s1="${s1%% *}" \
            -v ti="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" -v ts="$(awk -v a="$ts0" -v b="$ts1" 'BEGIN {print b - a}')" -v n="$n" \
            'BEGIN {c = (s1 - s0) - (i1 - i0) * ts / ti; printf "%.0f %.2f\n", c, c / n}')"
        top=""
        [[ "$b" == redis ]] && top="$(per_command "$s0" "$s1" "$n")"
        printf '%-12s %-9s %10s %10s %14s  %s\n' "$sc" "$b" "$n" "$calls" "$per" "$top"
        [[ "$b" == redis ]] && idle="$(awk -v a="${i0%% *}" -v b="${i1%% *}" -v t="$IDLE_SECONDS" 'BEGIN {printf "%.1f", (b - a) / t}')" ||
            idle="$(awk -v a="$i0" -v b="$i1" -v t="$IDLE_SECONDS" 'BEGIN {printf "%.1f", (b - a) / t}')"
        echo "  (idle baseline $idle calls/s subtracted; outcomes: $(grep -A2 '^outcomes' "/tmp/acteon-calls-$b-$sc.txt" | tail -n +2 | tr -s ' ' | tr '\n' ' '))"
    done
done
echo "($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores)"
