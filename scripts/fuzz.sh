#!/usr/bin/env bash
# Runs the fuzz targets (tests/src/fuzz/) long, on one core, and reports cases per target:
#   scripts/fuzz.sh [TARGET|all] [CASES]       CASES defaults to 1,000,000
# 1. the structured-random runner (fuzz-run), CASES cases per target from FUZZ_SEED (1);
# 2. honggfuzz, coverage-guided, HFUZZ_CASES iterations per target (default 0: skipped),
#    or HFUZZ_SECONDS per target if that comes first,
#    when `cargo hfuzz` is installed (`cargo install honggfuzz`, with binutils-dev,
#    libunwind-dev and libblocksruntime-dev); it reports the edges and features covered.
# A finding stops the run: its input is saved (target/fuzz/findings/ for fuzz-run,
# tests/hfuzz/hfuzz_workspace/TARGET/ for honggfuzz); replay and shrink it with
#   target/fuzzing/fuzz-run TARGET --replay FILE     target/fuzzing/fuzz-run TARGET --minimize FILE
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
which=${1:-all}
cases=${2:-1000000}
seed=${FUZZ_SEED:-1}
hfuzz_cases=${HFUZZ_CASES:-0}
hfuzz_time=${HFUZZ_SECONDS:+--run_time $HFUZZ_SECONDS}

# The `fuzzing` profile: optimized, with overflow checks (Cargo.toml).
cargo build --profile fuzzing --locked -p tessera-tests --bin fuzz-run
run=target/fuzzing/fuzz-run
if [ "$which" = all ]; then
    targets=$("$run" list | awk '{print $1}')
else
    targets=$which
fi

summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
for t in $targets; do
    # One core: the runner is one thread (and the API target's server one more, idle
    # while the case thread waits for its answer).
    nice -n 10 "$run" "$t" --cases "$cases" --seed "$seed" | tee -a "$summary"
done

if [ "$hfuzz_cases" -gt 0 ]; then
    if ! command -v cargo-hfuzz >/dev/null; then
        echo "HFUZZ_CASES=$hfuzz_cases but cargo hfuzz is not installed: see docs/fuzzing.md" >&2
        exit 1
    fi
    (cd tests/hfuzz && CARGO_BUILD_JOBS=1 cargo hfuzz build)
    for t in $targets; do
        log=tests/hfuzz/hfuzz_workspace/$t.log
        mkdir -p "$(dirname "$log")"
        # A corpus per target: honggfuzz's default input directory is shared.
        mkdir -p "tests/hfuzz/hfuzz_workspace/$t/input"
        (cd tests/hfuzz && FUZZ_TARGET=$t HFUZZ_INPUT=hfuzz_workspace/$t/input \
            HFUZZ_RUN_ARGS="-n 1 -N $hfuzz_cases ${hfuzz_time:-} -t 10 --exit_upon_crash -W hfuzz_workspace/$t -v" \
            nice -n 10 cargo hfuzz run hfuzz) >"$log" 2>&1 || true
        crashes=$(find "tests/hfuzz/hfuzz_workspace/$t" -name '*.fuzz' 2>/dev/null | wc -l)
        # honggfuzz's closing summary (iterations, crashes, timeouts), and its last
        # coverage counters: Cur:i/b/h/e/p/c, e = instrumented edges reached, c = compare
        # features.
        stats=$(grep -aE 'Summary iterations:' "$log" | tail -1 || true)
        cov=$(grep -aoE 'Cur:[0-9/]+' "$log" | tail -1 || true)
        echo "honggfuzz $t: ${stats:-no summary, see $log} ${cov}; crash files: $crashes" | tee -a "$summary"
        if [ "$crashes" -gt 0 ]; then
            echo "honggfuzz found a crash in $t: tests/hfuzz/hfuzz_workspace/$t/" >&2
            exit 1
        fi
    done
fi

echo "== summary"
cat "$summary"
