#!/usr/bin/env bash
# The project's one test command: checks formatting and lints, then runs every test.
# It installs nothing the Rust toolchain does not already have; later suites that need
# Redis, Postgres or a kube-apiserver start them from here.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked 2>&1 | tee /tmp/acteon-test.log
# One summary line for CI readers: totals over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed\n", p, f }' /tmp/acteon-test.log
