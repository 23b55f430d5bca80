#!/usr/bin/env bash
# Boot benchmark: tessera against Cloud Hypervisor and QEMU in one run (issues 3 and 14);
# run by hand, not in CI.
#
# In ONE boot of the nested test host (docs/nested-test-host.md), boots the Linux
# judge's kernel and initramfs as L2 with the same topology (2 vCPUs, 2 NUMA nodes of
# 256 MiB, distance 20) under target/release/tessera, under Cloud Hypervisor
# (`CLOUD_HYPERVISOR`, by default ../shared/peers/cloud-hypervisor/cloud-hypervisor
# beside the checkout; BENCH_CH=0 leaves it out) and under
# `qemu-system-x86_64 -machine q35,accel=kvm` with direct kernel boot (-kernel/-initrd),
# alternating them, BENCH_ROUNDS rounds (5). Every VMM boots the same payload:
# BENCH_KERNEL=vmlinux (the default: the ELF kernel with its PVH entry, the only form CH
# boots directly) or vmlinuz (the bzImage; CH is then left out). Each run goes through
# target/release/vmm-bootbench (tests/src/bin/vmm-bootbench.rs), which measures the
# time from spawning the VMM to /init printing TESSERA-INIT, the guest kernel's own
# uptime at that moment (the guest's boot time without the VMM's start-up), the whole
# lifetime from spawn through the guest's poweroff to the VMM's exit, and the VMM's peak
# RSS outside guest memory, and KVM's exit counters when /init ran (L1's debugfs: counts
# do not move with the host's load as times do). BENCH_MICROVM=1 (the default) adds `-machine microvm` as
# another VMM; BENCH_MICROVM=0 leaves it out, BENCH_QEMU=0 leaves q35 out. microvm takes the same -numa options but
# QEMU 7.2 builds it no SRAT/SLIT: its guest sees one node, so it is not the same
# topology. q35 boots through SeaBIOS (fw_cfg loads the kernel), microvm through qboot;
# tessera and CH enter the kernel directly.
#
# BENCH_SLOTS (empty by default), e.g. "8 32", adds to each round a tessera run per
# count N, named tessera-slotsN: the same guest with N empty GI-ready slots, slot k at
# device 0 of its own segment k with a memory-less node of its own (the SRAT's GI entry
# for a GPU that is not there yet), so the cost of reserving slots at boot shows as the
# ratio tessera-slotsN/tessera.
#
# BENCH_SECCOMP_OFF=1 adds a run named tessera-seccomp-off: the same guest with
# `--seccomp false`, so the filters' cost shows as tessera/tessera-seccomp-off inverted
# (the summary prints tessera-seccomp-off/tessera).
#
# BENCH_CMDLINE_EXTRA adds to every guest's kernel command line (e.g. `initcall_debug
# loglevel=8` with BENCH_ROUNDS=1, to compare where two guests' boots go).
#
# Output: L1's console (every VMM's serial log, lines prefixed `NAME| `), then the raw
# numbers per round, then the summary (medians, tessera/peer ratios) as the last lines.
# Everything is also saved to target/bench-boot.log. Exit status: 0 if every run reached
# /init and exited 0, 1 otherwise, or nested-host.sh's status if L1 failed. L1 gets
# TESSERA_NESTED_TIMEOUT_SECS (default here 1200) to finish.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

rounds=${BENCH_ROUNDS:-5}
microvm=${BENCH_MICROVM:-1}
q35=${BENCH_QEMU:-1}
slot_counts=${BENCH_SLOTS:-}
seccomp_off=${BENCH_SECCOMP_OFF:-0}
with_ch=${BENCH_CH:-1}
kernel_form=${BENCH_KERNEL:-vmlinux}
ch=${CLOUD_HYPERVISOR:-$repo/../shared/peers/cloud-hypervisor/cloud-hypervisor}
log=$repo/target/bench-boot.log
cmdline="console=ttyS0 panic=-1 loglevel=4${BENCH_CMDLINE_EXTRA:+ $BENCH_CMDLINE_EXTRA}"
case $kernel_form in
vmlinux) ;;
vmlinuz) with_ch=0 ;;
*) echo "bench-boot: BENCH_KERNEL must be vmlinux or vmlinuz, not '$kernel_form'" >&2; exit 2 ;;
esac
if [ "$with_ch" = 1 ]; then
    [ -x "$ch" ] || { echo "bench-boot: no Cloud Hypervisor at $ch (set CLOUD_HYPERVISOR, or BENCH_CH=0)" >&2; exit 2; }
    ch=$(realpath "$ch")
fi

cargo build --quiet --release --locked -p tessera-vmm -p tessera-tests --bins
judge=$(scripts/guest-images.sh | tail -n 1)
kernel=$judge/$kernel_form
initrd=$judge/initramfs.cpio.gz
bench=$repo/target/release/vmm-bootbench
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || rev="$rev+changes"
tessera=$repo/target/release/tessera

# The L1 script: a host path L1 reads over 9p, so it lives under the host's /tmp.
l1=$(mktemp /tmp/tessera-bench-boot.XXXXXX)
trap 'rm -f "$l1"' EXIT
chmod 0644 "$l1"
{
    cat <<EOF
# Written by scripts/bench-boot.sh: runs in L1 under busybox ash.
# KVM's per-VM exit counters, which vmm-bootbench reads when /init runs.
[ -d /host/sys/kernel/debug/kvm ] || mount -t debugfs debugfs /host/sys/kernel/debug
echo "bench-boot: L1 \$(uname -r), \$(nproc) CPUs; \$(in-host qemu-system-x86_64 --version | head -n 1)"
echo "bench-boot: tessera $rev; guest kernel $(cat "$judge/kernel-package") ($kernel_form); $rounds rounds"
EOF
    [ "$with_ch" = 0 ] || echo "echo \"bench-boot: \$(in-host $ch --version)\""
    for i in $(seq 1 "$rounds"); do
        cat <<EOF
echo "bench-boot: round $i"
in-host $bench --name tessera --guest-ram-mib 512 -- $tessera \\
  --kernel $kernel --initramfs $initrd --cmdline '$cmdline' \\
  --cpus boot=2 --memory size=0 \\
  --memory-zone id=m0,size=256M --memory-zone id=m1,size=256M \\
  --numa guest_numa_id=0,cpus=[0],memory_zones=m0,distances=[1@20] \\
  --numa guest_numa_id=1,cpus=[1],memory_zones=m1,distances=[0@20]
EOF
        if [ "$with_ch" = 1 ]; then
            cat <<EOF
in-host $bench --name ch --guest-ram-mib 512 -- $ch \\
  --kernel $kernel --initramfs $initrd --cmdline '$cmdline' \\
  --cpus boot=2 --memory size=0 --serial tty --console off \\
  --memory-zone id=m0,size=256M --memory-zone id=m1,size=256M \\
  --numa guest_numa_id=0,cpus=[0],memory_zones=m0,distances=[1@20] \\
  --numa guest_numa_id=1,cpus=[1],memory_zones=m1,distances=[0@20]
EOF
        fi
        [ "$q35" = 1 ] && cat <<EOF
in-host $bench --name qemu-q35 --guest-ram-mib 512 -- qemu-system-x86_64 \\
  -machine q35,accel=kvm -cpu host -smp 2 -m 512 \\
  -nodefaults -no-user-config -nographic -no-reboot -serial stdio \\
  -kernel $kernel -initrd $initrd -append '$cmdline' \\
  -object memory-backend-ram,id=m0,size=256M -object memory-backend-ram,id=m1,size=256M \\
  -numa node,nodeid=0,cpus=0,memdev=m0 -numa node,nodeid=1,cpus=1,memdev=m1 \\
  -numa dist,src=0,dst=1,val=20
EOF
        if [ "$seccomp_off" = 1 ]; then
            cat <<EOF
in-host $bench --name tessera-seccomp-off --guest-ram-mib 512 -- $tessera --seccomp false \\
  --kernel $kernel --initramfs $initrd --cmdline '$cmdline' \\
  --cpus boot=2 --memory size=0 \\
  --memory-zone id=m0,size=256M --memory-zone id=m1,size=256M \\
  --numa guest_numa_id=0,cpus=[0],memory_zones=m0,distances=[1@20] \\
  --numa guest_numa_id=1,cpus=[1],memory_zones=m1,distances=[0@20]
EOF
        fi
        for n in $slot_counts; do
            slots=""
            for k in $(seq 1 "$n"); do
                slots="$slots --pci-slot id=gpu$k,pci_segment=$k,pci_device_id=0 --numa guest_numa_id=$((k + 1)),device_id=gpu$k"
            done
            cat <<EOF
in-host $bench --name tessera-slots$n --guest-ram-mib 512 -- $tessera \\
  --kernel $kernel --initramfs $initrd --cmdline '$cmdline' \\
  --cpus boot=2 --memory size=0 --platform num_pci_segments=$((n + 1)) \\
  --memory-zone id=m0,size=256M --memory-zone id=m1,size=256M \\
  --numa guest_numa_id=0,cpus=[0],memory_zones=m0,distances=[1@20] \\
  --numa guest_numa_id=1,cpus=[1],memory_zones=m1,distances=[0@20]$slots
EOF
        done
        if [ "$microvm" = 1 ]; then
            cat <<EOF
in-host $bench --name qemu-microvm --guest-ram-mib 512 -- qemu-system-x86_64 \\
  -machine microvm,accel=kvm -cpu host -smp 2 -m 512 \\
  -nodefaults -no-user-config -nographic -no-reboot -serial stdio \\
  -kernel $kernel -initrd $initrd -append '$cmdline' \\
  -object memory-backend-ram,id=m0,size=256M -object memory-backend-ram,id=m1,size=256M \\
  -numa node,nodeid=0,cpus=0,memdev=m0 -numa node,nodeid=1,cpus=1,memdev=m1 \\
  -numa dist,src=0,dst=1,val=20
EOF
        fi
    done
} >"$l1"

mkdir -p "$(dirname "$log")"
status=0
TESSERA_NESTED_TIMEOUT_SECS=${TESSERA_NESTED_TIMEOUT_SECS:-1200} \
    scripts/nested-host.sh run "$l1" 2>&1 | tee "$log" || status=${PIPESTATUS[0]}

# The raw numbers and the summary, from the `bootbench` lines of L1's console.
tr -d '\r' <"$log" | awk -v status="$status" '
    function median(list,    n, v, i, j, t) {
        n = split(list, v, " ")
        if (n == 0) return ""
        for (i = 2; i <= n; i++)                 # insertion sort, numeric
            for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "-" : sprintf("%.2f", a / b) }
    function field(key,    i) {
        for (i = 2; i <= NF; i++) if (index($i, key "=") == 1) return substr($i, length(key) + 2)
        return ""
    }
    /^bench-boot: round / { round = $3 }
    /^bootbench name=/ {
        name = field("name"); ms = field("to_init_ms"); kib = field("peak_rss_outside_guest_kib")
        ex = field("exit"); life = field("lifetime_ms"); up = field("guest_uptime_at_init_ms")
        if (!(name in seen)) { seen[name] = 1; order[++names] = name }
        raw = raw sprintf("bench-boot: raw round=%s %-19s to_init_ms=%-6s guest_uptime_at_init_ms=%-6s lifetime_ms=%-6s peak_rss_outside_guest_kib=%-7s exit=%s\n", round, name, ms, up, life, kib, ex)
        runs[name]++
        if (ms != "none" && ex == "0") {
            ok[name]++; times[name] = times[name] " " ms; rss[name] = rss[name] " " kib
            lives[name] = lives[name] " " life
            if (up != "none") ups[name] = ups[name] " " up
        }
        else failed++
    }
    # A row of NAME=VALUE columns for table T: the columns in first-seen order,
    # each cell the list of values ("none" left out) whose median the table prints.
    function collect(t,    i, kv, key) {
        name = field("name")
        for (i = 3; i <= NF; i++) {
            split($i, kv, "="); key = kv[1]
            if (!((t, key) in cseen)) { cseen[t, key] = 1; ckey[t, ++ncols[t]] = key }
            if (kv[2] != "none") cell[t, name, key] = cell[t, name, key] " " kv[2]
        }
    }
    function table(t, title, w,    j, k, n, line) {
        if (ncols[t] == 0) return
        print "bench-boot: " title
        line = sprintf("bench-boot: %-19s", "vmm")
        for (j = 1; j <= ncols[t]; j++) line = line sprintf(" %" w "s", substr(ckey[t, j], 1, w))
        print line
        for (k = 1; k <= names; k++) {
            n = order[k]; line = sprintf("bench-boot: %-19s", n)
            for (j = 1; j <= ncols[t]; j++) line = line sprintf(" %" w "s", median(cell[t, n, ckey[t, j]]))
            print line
        }
    }
    /^bootbench-kvm name=/ { collect("kvm") }
    /^bootbench-phases name=/ { collect("phases") }
    END {
        printf "%s", raw
        print "bench-boot: summary (medians over the runs that reached /init and exited 0; one L1 boot)"
        printf "bench-boot: %-19s %6s %11s %16s %12s %27s\n", "vmm", "ok", "to_init_ms", "guest_uptime_ms", "lifetime_ms", "peak_rss_outside_guest_kib"
        for (k = 1; k <= names; k++) {
            n = order[k]; mt[n] = median(times[n]); mr[n] = median(rss[n]); mu[n] = median(ups[n]); ml[n] = median(lives[n])
            printf "bench-boot: %-19s %3d/%-2d %11s %16s %12s %27s\n", n, ok[n], runs[n], mt[n], mu[n], ml[n], mr[n]
        }
        for (k = 1; k <= names; k++) {
            n = order[k]
            if (n == "tessera" || mt["tessera"] == "" || mt[n] == "" || mt[n] == 0 || mr[n] == 0) continue
            if (index(n, "tessera-") == 1) { a = n; b = "tessera" } else { a = "tessera"; b = n }
            printf "bench-boot: ratio %s/%s to_init %.2f  guest_uptime_at_init %s  lifetime %s  peak_rss_outside_guest %.2f\n", a, b, mt[a] / mt[b], ratio(mu[a], mu[b]), ratio(ml[a], ml[b]), mr[a] / mr[b]
        }
        table("kvm", "KVM exits until /init (medians, L1 debugfs)", 10)
        table("phases", "start-up and teardown phases (medians, ms from the spawn; KVM debugfs, /init time minus the guest uptime, last output line to exit)", 24)
        if (names == 0) print "bench-boot: no bootbench results (L1 status " status ")"
        exit (failed > 0 || names == 0) ? 1 : 0
    }' | tee -a "$log" || { [ "$status" != 0 ] || status=1; }
exit "$status"
