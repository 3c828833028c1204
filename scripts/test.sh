#!/usr/bin/env bash
# The project's one test command: checks formatting and lints, then runs every test.
# It installs nothing the Rust toolchain does not already have, except the test services:
# - Redis and Postgres (scripts/test-services.sh): the local servers when they answer, else
#   installed from Debian when missing and private ones started; Debian's python3-aiosmtpd
#   (a real SMTP server for the email provider's tests) when missing;
# - a real kube-apiserver + etcd for the end-to-end tests (tests/e2e/kube-env.sh): installed
#   and built once per machine into a cache outside the repo (~/.cache/acteon-e2e; minutes the
#   first time, under a second afterwards), started on free loopback ports (~5 s).
# Everything started here is stopped when this script exits, however it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

KUBE_ENV_DIR=""
cleanup() {
    local status=$?
    if [[ -n "$KUBE_ENV_DIR" ]]; then
        bash "$ROOT/tests/e2e/kube-env.sh" stop "$KUBE_ENV_DIR" >/dev/null 2>&1 || true
        if [[ "$status" == 0 ]]; then
            rm -rf "$KUBE_ENV_DIR"
        else
            echo "kube-apiserver/etcd logs kept in $KUBE_ENV_DIR" >&2
        fi
        KUBE_ENV_DIR=""
    fi
    if [[ "$(type -t acteon_test_services_stop)" == function ]]; then
        acteon_test_services_stop
    fi
    return "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== test services"
# Redis and Postgres for the suites (exports ACTEON_TEST_REDIS_URL / ACTEON_TEST_POSTGRES_URL).
# shellcheck source=scripts/test-services.sh
source scripts/test-services.sh

echo "== kube-apiserver"
# Exports KUBECONFIG (admin), ACTEON_E2E_* (operator kubeconfig, tokens, pids) and puts the
# cached kubectl/helm first on PATH; tests/e2e uses this server instead of starting its own.
bash tests/e2e/kube-env.sh install
KUBE_ENV_DIR="$(mktemp -d /tmp/acteon-test-kube.XXXXXX)"
bash tests/e2e/kube-env.sh start "$KUBE_ENV_DIR"
# shellcheck source=/dev/null
source "$KUBE_ENV_DIR/env"

echo "== cargo build"
# The e2e tests run the gateway and operator binaries; `cargo test` builds a package's
# binaries only for that package's own integration tests.
cargo build --workspace --bins --locked
echo "== cargo test"
# A log of its own, so that concurrent runs on one machine do not mix their summaries.
TEST_LOG="$(mktemp /tmp/acteon-test.XXXXXX.log)"
cargo test --workspace --locked 2>&1 | tee "$TEST_LOG"
# One summary line for CI readers: totals over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed\n", p, f }' "$TEST_LOG"
echo "(full output: $TEST_LOG)"
