#!/usr/bin/env bash
# Runs every Tessera test on a fresh Debian 12 machine: installs what is missing, then
# formatting and lint checks, then every unit, integration and end-to-end test
# (ACPICA judges and Linux judge VMs included). Nothing is skipped: a judge that cannot
# run is a failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
# Benchmarks run once each in test mode, so they stay working.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --lib --bins --tests --benches --locked 2>&1 | tee "$log"
# One closing line with the totals over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
