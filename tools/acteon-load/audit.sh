#!/usr/bin/env bash
# Issue 14, audit trail cost: the `mixed` scenario against bench-rules.yaml with the audit
# trail off and on, on the memory state (memory audit store) and the Postgres state (audit
# batched into Postgres), a fresh prefix each, after a warm-up. Prints dispatches/s off and
# on, the ratio, and the audit records written / lost during the measured run (on Postgres,
# records/s written by the writer while the gateway is loaded).
#
#   cargo build --release -p acteon-gateway -p acteon-load
#   bash tools/acteon-load/audit.sh [memory postgres memory+pg]
#
# `memory+pg`: memory state, audit into Postgres (`--audit-postgres-url`): the audit
# trail's own cost, without the Postgres gates of the `postgres` row. To see the gateway's
# share with the database on a core of its own (as on a separate database host):
#   for p in $(pgrep -x postgres); do taskset -a -cp 1 "$p"; done
#   taskset -c 0 bash tools/acteon-load/audit.sh postgres memory+pg
#
# Environment: DURATION (10s), WARMUP (3s), CONNECTIONS (32), PG_URL, GATEWAY, LOADGEN
# (see lib.sh). Reports are kept in /tmp/acteon-audit-<backend>-<on|off>.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/acteon-load/lib.sh
RULES="tools/acteon-load/bench-rules.yaml"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-32}"
BACKENDS=("${@:-memory postgres}")
read -r -a BACKENDS <<<"${BACKENDS[*]}"
secs="${DURATION%s}"

declare -A RPS WRITTEN LOST
for b in "${BACKENDS[@]}"; do
    for mode in off on; do
        prefix="acteon_audit_$$_${b/+/_}_${mode}"
        state="$b" extra=()
        if [[ "$b" == memory+pg ]]; then
            state=memory extra=(--audit-postgres-url "$PG_URL")
        fi
        start_gw "$(state_url "$state")" "$prefix" "/tmp/acteon-audit-gw-$b-$mode.log" \
            --audit "$mode" --audit-queue-capacity 100000 "${extra[@]}"; port="$PORT"
        load "$port" /dev/null -c "$CONNECTIONS" -d "$WARMUP"
        w0="$(metric_sum "$port" acteon_audit_records_total 'written')"
        l0="$(metric_sum "$port" acteon_audit_dropped_total)"
        out="/tmp/acteon-audit-$b-$mode.txt"
        load "$port" "$out" -c "$CONNECTIONS" -d "$DURATION"
        # Let the writer catch up with what the run queued.
        sleep 2
        w1="$(metric_sum "$port" acteon_audit_records_total 'written')"
        l1="$(metric_sum "$port" acteon_audit_dropped_total)"
        RPS[$b-$mode]="$(rep_rps "$out")"
        WRITTEN[$b-$mode]=$((w1 - w0))
        LOST[$b-$mode]=$((l1 - l0))
        stop_gws
        if [[ "$b" != memory ]]; then
            psql "$PG_URL" -qc "DROP SCHEMA IF EXISTS \"$prefix\" CASCADE" >/dev/null 2>&1 || true
        fi
    done
done

printf '\n%-9s %16s %15s %7s %16s %8s\n' backend "off dispatches/s" "on dispatches/s" "on/off" "records written" lost
for b in "${BACKENDS[@]}"; do
    ratio="$(awk -v a="${RPS[$b-on]}" -v o="${RPS[$b-off]}" 'BEGIN {printf "%.0f%%", 100 * a / o}')"
    printf '%-9s %16s %15s %7s %16s %8s\n' "$b" "${RPS[$b-off]}" "${RPS[$b-on]}" "$ratio" \
        "${WRITTEN[$b-on]} ($((WRITTEN[$b-on] / secs))/s)" "${LOST[$b-on]}"
done
