#!/usr/bin/env bash
# The project's one test command: checks formatting and lints, then runs every test.
# It installs nothing the Rust toolchain does not already have, except Redis and Postgres:
# scripts/test-services.sh uses the local servers when they answer, else installs them from
# Debian when missing and starts private ones, stopped again at exit. Later suites that need a
# kube-apiserver start it from here.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== test services"
# Redis and Postgres for the suites (exports ACTEON_TEST_REDIS_URL / ACTEON_TEST_POSTGRES_URL);
# whatever it starts is stopped when this script exits, however it exits.
trap 'if [[ "$(type -t acteon_test_services_stop)" == function ]]; then acteon_test_services_stop; fi' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# shellcheck source=scripts/test-services.sh
source scripts/test-services.sh
echo "== cargo test"
cargo test --workspace --locked 2>&1 | tee /tmp/acteon-test.log
# One summary line for CI readers: totals over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed\n", p, f }' /tmp/acteon-test.log
