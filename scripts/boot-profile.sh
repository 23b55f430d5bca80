#!/usr/bin/env bash
# Where a guest's boot time goes, tessera against Cloud Hypervisor (issue 14); run by
# hand, not in CI.
#
# Runs scripts/bench-boot.sh with `initcall_debug judge.dmesg=1` added to the guest's
# command line (BENCH_ROUNDS rounds, 1 by default; QEMU left out), so every guest prints
# its whole kernel log after its report, then scripts/lib/boot_profile.py compares the
# two guests' logs: the time each reached a few milestones of a Linux boot, and the
# initcalls whose duration differs most (medians over the rounds). The guest prints to
# its log only (loglevel stays 4), so the serial port costs the same as in bench-boot.
# Output goes to stdout and target/boot-profile.log; the guests' whole logs stay in
# target/boot-profile-raw.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH_ROUNDS=${BENCH_ROUNDS:-1} BENCH_MICROVM=0 BENCH_QEMU=0 \
    BENCH_CMDLINE_EXTRA="initcall_debug judge.dmesg=1${BENCH_CMDLINE_EXTRA:+ $BENCH_CMDLINE_EXTRA}" \
    scripts/bench-boot.sh >/dev/null || true
# bench-boot.sh's log is overwritten by its next run: keep the guests' logs beside ours.
cp target/bench-boot.log target/boot-profile-raw.log
python3 scripts/lib/boot_profile.py target/boot-profile-raw.log | tee target/boot-profile.log
