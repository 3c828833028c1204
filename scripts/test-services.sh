# shellcheck shell=bash disable=SC2016
# Redis and Postgres for the test suites (SPEC §10). Sourced by scripts/test.sh before
# `cargo test`; exports
#   ACTEON_TEST_REDIS_URL     redis://HOST:PORT
#   ACTEON_TEST_POSTGRES_URL  postgres://root@HOST:PORT/test
#
# For each service, in order:
#   1. an ACTEON_TEST_*_URL already in the environment is kept if it answers (so sourcing
#      twice is harmless, and a developer can point the tests at any server); if it does not
#      answer, that is an error;
#   2. the local default server (127.0.0.1:6379 / 127.0.0.1:5432, overridable with
#      ACTEON_TEST_REDIS_DEFAULT / ACTEON_TEST_POSTGRES_DEFAULT as HOST:PORT) is used if it
#      answers: Redis must reply to PING, Postgres must accept
#      `psql postgres://root@HOST:PORT/test -c 'select 1'` (trust auth, role root, db test);
#   3. otherwise the server is installed from Debian if missing (apt-get update once,
#      apt-get install redis-server / postgresql) and a private, throw-away instance is
#      started on a free loopback port with its data under /tmp.
# Only servers started here are recorded; `acteon_test_services_stop` (installed as an
# EXIT trap by scripts/test.sh) stops them and deletes their data. Servers that were already
# running are never touched.
#
# Prints one line per service on success; on failure prints the relevant log tails to
# stderr, stops whatever it started and returns non-zero. Safe under `set -euo pipefail`.

_acteon_say() { printf 'test-services: %s\n' "$*"; }
_acteon_err() { printf 'test-services: ERROR: %s\n' "$*" >&2; }

# Prints the last lines of each readable file given, to stderr.
_acteon_tail_logs() {
    local f
    for f in "$@"; do
        if [[ -r "$f" ]]; then
            printf -- '----- last lines of %s -----\n' "$f" >&2
            tail -n 40 "$f" >&2 || true
            printf -- '----- end of %s -----\n' "$f" >&2
        fi
    done
}

# Runs a command as root (directly, or through sudo when not root).
_acteon_as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        _acteon_err "need root (or sudo) to run: $*"
        return 1
    fi
}

# apt-get install, with a single apt-get update per shell. Output goes to a log that is
# shown only on failure.
_acteon_apt_install() {
    local log="${_ACTEON_APT_LOG:-}"
    if [[ -z "$log" ]]; then
        log="$(mktemp /tmp/acteon-test-apt.XXXXXX.log)"
        _ACTEON_APT_LOG="$log"
    fi
    _acteon_say "installing $* from Debian (log: $log)"
    if [[ -z "${_ACTEON_APT_UPDATED:-}" ]]; then
        if ! _acteon_as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get -o DPkg::Lock::Timeout=300 update >>"$log" 2>&1; then
            _acteon_err "apt-get update failed"
            _acteon_tail_logs "$log"
            return 1
        fi
        _ACTEON_APT_UPDATED=1
    fi
    if ! _acteon_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "$@" >>"$log" 2>&1; then
        _acteon_err "apt-get install $* failed"
        _acteon_tail_logs "$log"
        return 1
    fi
}

# A free TCP port on 127.0.0.1.
_acteon_free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
        return
    fi
    local p i
    for i in $(seq 1 50); do
        p=$((20000 + RANDOM % 40000))
        if ! timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$p" 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    _acteon_err "no free port found"
    return 1
}

# Splits HOST:PORT into the globals _acteon_host and _acteon_port.
_acteon_split_hostport() {
    local hp="$1"
    _acteon_host="${hp%:*}"
    _acteon_port="${hp##*:}"
    if [[ -z "$_acteon_host" || ! "$_acteon_port" =~ ^[0-9]+$ ]]; then
        _acteon_err "not HOST:PORT: '$hp'"
        return 1
    fi
}

# True when something at HOST PORT replies +PONG to a PING (plain bash, no redis-cli).
_acteon_redis_answers() {
    local reply
    reply="$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "PING\r\n" >&3
        IFS= read -r -t 2 line <&3 || exit 1
        printf "%s" "$line"
    ' _ "$1" "$2" 2>/dev/null)" || return 1
    [[ "$reply" == +PONG* ]]
}

# True when a TCP connection to HOST PORT opens.
_acteon_tcp_open() {
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# --------------------------------------------------------------------------------------
# Redis

_acteon_redis() {
    local host port
    if [[ -n "${ACTEON_TEST_REDIS_URL:-}" ]]; then
        if [[ "$ACTEON_TEST_REDIS_URL" =~ ^redis://([^/:@]+):([0-9]+)/?[0-9]*$ ]] &&
            _acteon_redis_answers "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"; then
            _acteon_say "redis: using $ACTEON_TEST_REDIS_URL (from the environment)"
            export ACTEON_TEST_REDIS_URL
            return 0
        fi
        _acteon_err "ACTEON_TEST_REDIS_URL=$ACTEON_TEST_REDIS_URL does not answer PING (want redis://HOST:PORT)"
        return 1
    fi

    _acteon_split_hostport "${ACTEON_TEST_REDIS_DEFAULT:-127.0.0.1:6379}" || return 1
    host="$_acteon_host"
    port="$_acteon_port"
    if _acteon_redis_answers "$host" "$port"; then
        export ACTEON_TEST_REDIS_URL="redis://$host:$port"
        _acteon_say "redis: using the existing server at $ACTEON_TEST_REDIS_URL"
        return 0
    fi

    local server
    server="$(command -v redis-server || true)"
    if [[ -z "$server" ]]; then
        _acteon_apt_install redis-server || return 1
        server="$(command -v redis-server || true)"
        if [[ -z "$server" ]]; then
            _acteon_err "redis-server is still missing after apt-get install redis-server"
            return 1
        fi
    fi

    local dir i
    dir="$(mktemp -d /tmp/acteon-test-redis.XXXXXX)" || return 1
    # Recorded before starting so that a half-started server is still cleaned up.
    _ACTEON_TEST_REDIS_DIR="$dir"
    for _ in 1 2 3; do
        port="$(_acteon_free_port)" || return 1
        if ! "$server" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize yes --dir "$dir" --pidfile "$dir/redis.pid" \
            --logfile "$dir/redis.log" </dev/null >>"$dir/start.log" 2>&1; then
            continue
        fi
        for i in $(seq 1 100); do
            if _acteon_redis_answers 127.0.0.1 "$port"; then
                export ACTEON_TEST_REDIS_URL="redis://127.0.0.1:$port"
                _acteon_say "redis: started a private redis-server at $ACTEON_TEST_REDIS_URL (data in $dir)"
                return 0
            fi
            # Lost a port race, or it died: try another port.
            if [[ -s "$dir/redis.pid" ]] && ! kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; then
                break
            fi
            if [[ $i -gt 10 && ! -s "$dir/redis.pid" ]] && grep -q 'Could not create server TCP' "$dir/redis.log" 2>/dev/null; then
                break
            fi
            sleep 0.1
        done
        _acteon_stop_redis_pid "$dir"
        rm -f "$dir/redis.pid"
    done
    _acteon_err "private redis-server ($server) did not answer on 127.0.0.1"
    _acteon_tail_logs "$dir/start.log" "$dir/redis.log"
    return 1
}

_acteon_stop_redis_pid() {
    local dir="$1" pid i
    [[ -s "$dir/redis.pid" ]] || return 0
    pid="$(cat "$dir/redis.pid")"
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# --------------------------------------------------------------------------------------
# Postgres

# psql to use: the one of the private cluster's version if known, else the one on PATH.
_acteon_psql() {
    if [[ -n "${_ACTEON_PGBIN:-}" && -x "$_ACTEON_PGBIN/psql" ]]; then
        echo "$_ACTEON_PGBIN/psql"
    else
        command -v psql || true
    fi
}

_acteon_pg_works() {
    local psql
    psql="$(_acteon_psql)"
    [[ -n "$psql" ]] || return 1
    PGCONNECT_TIMEOUT=3 timeout 10 "$psql" "$1" -X -q -t -A -c 'select 1' </dev/null 2>/dev/null | grep -qx 1
}

_acteon_pg_reachable() {
    if command -v pg_isready >/dev/null 2>&1; then
        timeout 5 pg_isready -q -h "$1" -p "$2" -t 3 2>/dev/null
    else
        _acteon_tcp_open "$1" "$2"
    fi
}

# The newest Debian PostgreSQL bin directory, or the one holding initdb on PATH.
_acteon_pgbin() {
    local d
    d="$(command -v initdb || true)"
    if [[ -n "$d" ]]; then
        dirname "$(readlink -f "$d")"
        return
    fi
    d="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    [[ -n "$d" && -x "$d/initdb" ]] && echo "$d"
}

# Runs a command as the owner of the private cluster (the postgres OS user when root).
_acteon_as_pg() {
    if [[ "$(id -u)" == 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

_acteon_postgres() {
    local host port url
    if [[ -n "${ACTEON_TEST_POSTGRES_URL:-}" ]]; then
        if _acteon_pg_works "$ACTEON_TEST_POSTGRES_URL"; then
            _acteon_say "postgres: using $ACTEON_TEST_POSTGRES_URL (from the environment)"
            export ACTEON_TEST_POSTGRES_URL
            return 0
        fi
        _acteon_err "ACTEON_TEST_POSTGRES_URL=$ACTEON_TEST_POSTGRES_URL does not accept 'select 1' (is psql installed?)"
        return 1
    fi

    _acteon_split_hostport "${ACTEON_TEST_POSTGRES_DEFAULT:-127.0.0.1:5432}" || return 1
    host="$_acteon_host"
    port="$_acteon_port"
    url="postgres://root@$host:$port/test"
    if _acteon_pg_reachable "$host" "$port"; then
        if [[ -z "$(_acteon_psql)" ]]; then
            _acteon_apt_install postgresql-client || return 1
        fi
        if _acteon_pg_works "$url"; then
            export ACTEON_TEST_POSTGRES_URL="$url"
            _acteon_say "postgres: using the existing server at $url"
            return 0
        fi
        _acteon_say "postgres: $host:$port answers but $url does not accept 'select 1'; starting a private server"
    fi

    local pgbin
    pgbin="$(_acteon_pgbin || true)"
    if [[ -z "$pgbin" ]]; then
        _acteon_apt_install postgresql || return 1
        pgbin="$(_acteon_pgbin || true)"
        if [[ -z "$pgbin" ]]; then
            _acteon_err "initdb is still missing after apt-get install postgresql"
            return 1
        fi
    fi
    _ACTEON_PGBIN="$pgbin"
    if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
        _acteon_err "running as root but there is no 'postgres' OS user to own the cluster"
        return 1
    fi

    local dir
    dir="$(mktemp -d /tmp/acteon-test-pg.XXXXXX)" || return 1
    _ACTEON_TEST_PG_DIR="$dir"
    if [[ "$(id -u)" == 0 ]]; then
        chown postgres: "$dir" || return 1
    fi
    chmod 700 "$dir" || return 1
    if ! _acteon_as_pg "$pgbin/initdb" -D "$dir/data" --auth=trust -U postgres -E UTF8 \
        --locale=C --no-sync >"$dir/initdb.log" 2>&1; then
        _acteon_err "initdb failed"
        _acteon_tail_logs "$dir/initdb.log"
        return 1
    fi

    local started=""
    for _ in 1 2 3; do
        port="$(_acteon_free_port)" || return 1
        if _acteon_as_pg "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
            start </dev/null >>"$dir/pg_ctl.log" 2>&1; then
            started=1
            break
        fi
        # A port race leaves no server behind; anything else fails again and is reported.
        _acteon_as_pg "$pgbin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    done
    if [[ -z "$started" ]]; then
        _acteon_err "private PostgreSQL did not start"
        _acteon_tail_logs "$dir/pg_ctl.log" "$dir/postgres.log"
        return 1
    fi

    if ! PGCONNECT_TIMEOUT=5 "$pgbin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" \
        -U postgres -d postgres \
        -c 'CREATE ROLE root SUPERUSER LOGIN' \
        -c 'CREATE DATABASE test OWNER root' </dev/null >>"$dir/setup.log" 2>&1; then
        _acteon_err "could not create role root / database test"
        _acteon_tail_logs "$dir/setup.log" "$dir/postgres.log"
        return 1
    fi

    url="postgres://root@127.0.0.1:$port/test"
    local i
    for i in $(seq 1 100); do
        if _acteon_pg_works "$url"; then
            export ACTEON_TEST_POSTGRES_URL="$url"
            _acteon_say "postgres: started a private PostgreSQL ($pgbin) at $url (data in $dir)"
            return 0
        fi
        sleep 0.1
    done
    _acteon_err "private PostgreSQL does not accept 'select 1' at $url"
    _acteon_tail_logs "$dir/setup.log" "$dir/postgres.log"
    return 1
}

# --------------------------------------------------------------------------------------
# Stopping what was started here (and only that).

acteon_test_services_stop() {
    local dir="${_ACTEON_TEST_REDIS_DIR:-}"
    if [[ -n "$dir" ]]; then
        _acteon_stop_redis_pid "$dir"
        rm -rf "$dir"
        _ACTEON_TEST_REDIS_DIR=""
        if [[ "${ACTEON_TEST_REDIS_URL:-}" == redis://127.0.0.1:* ]]; then
            unset ACTEON_TEST_REDIS_URL
        fi
    fi
    dir="${_ACTEON_TEST_PG_DIR:-}"
    if [[ -n "$dir" ]]; then
        if [[ -f "$dir/data/postmaster.pid" ]]; then
            if ! _acteon_as_pg "${_ACTEON_PGBIN}/pg_ctl" -D "$dir/data" -m fast -w -t 20 stop \
                >/dev/null 2>&1; then
                local pid
                pid="$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null || true)"
                if [[ -n "$pid" ]]; then
                    kill -KILL "$pid" 2>/dev/null || true
                fi
            fi
        fi
        rm -rf "$dir"
        _ACTEON_TEST_PG_DIR=""
        if [[ "${ACTEON_TEST_POSTGRES_URL:-}" == postgres://root@127.0.0.1:* ]]; then
            unset ACTEON_TEST_POSTGRES_URL
        fi
    fi
    return 0
}

# A real SMTP server for the email provider's tests (gateway/tests/it/providers_email.rs
# starts its own aiosmtpd on a free port with Debian's /usr/bin/python3, not whatever
# python3 is first on PATH): Debian's python3-aiosmtpd, installed if missing.
_acteon_aiosmtpd() {
    if /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
        return 0
    fi
    _acteon_apt_install python3-aiosmtpd || return 1
    if ! /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
        _acteon_err "/usr/bin/python3 cannot import aiosmtpd after apt-get install python3-aiosmtpd"
        return 1
    fi
}

_acteon_test_services_start() {
    _acteon_redis || return 1
    _acteon_postgres || return 1
    _acteon_aiosmtpd || return 1
}

if ! _acteon_test_services_start; then
    _acteon_err "test services are not available; stopping what was started"
    acteon_test_services_stop
    # `return` works when sourced; `exit` when run directly.
    # shellcheck disable=SC2317
    return 1 2>/dev/null || exit 1
fi
