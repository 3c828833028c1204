# Shared helpers of gated.sh, calls-per-dispatch.sh and timers.sh (sourced, not run).
# Assumes: the release binaries are built (cargo build --release -p acteon-gateway -p acteon-load),
# Redis and Postgres listen locally, python3 and curl are installed.
GATEWAY="${GATEWAY:-target/release/acteon-gateway}"
LOADGEN="${LOADGEN:-target/release/acteon-load}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
PG_URL="${PG_URL:-postgres://root@127.0.0.1:5432/test}"
RULES="tools/acteon-load/bench-rules.yaml,tools/acteon-load/gated-rules.yaml"
GW_PIDS=()

for bin in "$GATEWAY" "$LOADGEN"; do
    [[ -x "$bin" ]] || { echo "missing $bin: cargo build --release -p acteon-gateway -p acteon-load" >&2; exit 2; }
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# state_url memory|redis|postgres
state_url() {
    case "$1" in
        memory) echo memory ;;
        redis) echo "$REDIS_URL" ;;
        postgres) echo "$PG_URL" ;;
        *) echo "unknown backend $1" >&2; exit 2 ;;
    esac
}

# start_gw STATE PREFIX LOG [extra serve args...]: starts a gateway, waits until ready, and
# sets PORT to its port. The pid is appended to GW_PIDS (stop_gws ends them); call it
# directly, not in $(...), or the pid is lost in the subshell.
start_gw() {
    local state="$1" prefix="$2" log="$3" port
    shift 3
    port="$(free_port)"
    "$GATEWAY" serve --config "$RULES" --state "$state" --state-prefix "$prefix" \
        --listen "127.0.0.1:$port" "$@" >"$log" 2>&1 &
    GW_PIDS+=($!)
    for _ in $(seq 300); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && { PORT="$port"; return 0; }
        sleep 0.1
    done
    echo "gateway on $state did not become ready; see $log" >&2
    tail -5 "$log" >&2
    return 1
}

# drop_keys STATE PREFIX: removes a finished run's Redis keys (a no-op for other backends).
# Left alone, the ~300,000 marks of a run expire together 300 s later and the server's
# expiry work then slows whichever run is going on (one ROUNDS=5 series: 47% to 74%).
drop_keys() {
    [[ "$1" == redis* ]] || return 0
    redis-cli -u "$1" --scan --pattern "$2:*" |
        xargs -r -d "\n" -n 1000 redis-cli -u "$1" unlink >/dev/null
}

stop_gws() {
    local pid
    for pid in "${GW_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${GW_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    GW_PIDS=()
}
trap stop_gws EXIT

# load PORT OUTFILE acteon-load-args...: runs acteon-load, keeps its report in OUTFILE.
load() {
    local port="$1" out="$2"
    shift 2
    "$LOADGEN" --url "http://127.0.0.1:$port" "$@" >"$out" 2>&1 || {
        echo "acteon-load reported errors (see $out):" >&2
        sed -n '/^errors/,/^throughput/p' "$out" >&2
    }
}
# Fields of an acteon-load report.
rep_rps() { awk '/^throughput/ {print $2}' "$1"; }
rep_q() { awk -v q="$2" '/^latency/ {for (i = 1; i < NF; i++) if ($i == q) print $(i + 1)}' "$1"; }

# A Prometheus sample summed over every series of a metric whose labels match a regex.
metric_sum() { # PORT METRIC [LABEL-REGEX]
    curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" -v re="${3:-}" '
        index($0, m) == 1 && (substr($0, length(m) + 1, 1) == "{" || substr($0, length(m) + 1, 1) == " ") && $0 ~ re {s += $NF}
        END {printf "%.0f\n", s}'
}
