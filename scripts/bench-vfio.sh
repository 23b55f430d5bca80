#!/usr/bin/env bash
# VFIO benchmark, tessera against QEMU (issues 5 and 14); run by hand, not in CI.
#
# In ONE boot of the nested test host (docs/nested-test-host.md), with L1's NVMe
# (00:03.0) bound to vfio-pci:
#  1. DMA-map time: boots the judge guest with the NVMe passed through and 512 MiB, then
#     2 GiB, of guest RAM, BENCH_DMA_ROUNDS (3) times each in the order tessera, QEMU,
#     QEMU, tessera (medians reported), under target/release/tessera and under QEMU
#     (q35, KVM, started paused with -S and killed after 40 s), each under
#     `strace -f -T -e trace=ioctl`, and sums the time spent in the VFIO_IOMMU_MAP_DMA
#     ioctls: the kernel pinning and mapping guest RAM. Tessera first faults guest RAM in
#     on every CPU (the pages are pinned anyway), which moves time out of the ioctls, so
#     its figure that compares with QEMU's is "ready": the prefault plus the maps, from
#     its own log line (`vfio: DMA-mapped N MiB of guest RAM in X ms (...)`); both are
#     printed. BENCH_HUGEPAGES=1 adds a pair with guest RAM in 2 MiB hugetlbfs pages
#     (tessera `hugepages=on`, QEMU a hugetlb memfd backend), reserving them in L1.
#     BENCH_TESSERA_BEFORE=PATH adds another tessera binary (an older build, to measure
#     a change) as VMM "before", in the order tessera, before, QEMU, QEMU, before, tessera.
#  2. Boot time: BENCH_ROUNDS (3) alternating rounds of both with 512 MiB and the NVMe,
#     through target/release/vmm-bootbench (spawn to TESSERA-INIT), no strace.
# Output: L1's console, then `bench-vfio:` summary lines (medians, tessera/QEMU ratios)
# also saved to target/bench-vfio.log. Exit 0 if every run reached /init.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

rounds=${BENCH_ROUNDS:-3}
dma_rounds=${BENCH_DMA_ROUNDS:-3}
hugepages=${BENCH_HUGEPAGES:-0}
log=$repo/target/bench-vfio.log
cmdline='console=ttyS0 panic=-1 loglevel=4'
command -v strace >/dev/null || { echo "bench-vfio: strace is not installed (scripts/setup.sh)" >&2; exit 1; }

cargo build --quiet --release --locked -p tessera-vmm -p tessera-tests --bins
judge=$(scripts/guest-images.sh | tail -n 1)
kernel=$judge/vmlinuz
initrd=$judge/initramfs.cpio.gz
bench=$repo/target/release/vmm-bootbench
tessera=$repo/target/release/tessera
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || rev="$rev+changes"

before=${BENCH_TESSERA_BEFORE:-}
[ -z "$before" ] || before=$(realpath "$before")
tessera_cmd() { # RAM-MiB [huge] [BINARY]
    local memory="--memory size=$1M"
    [ "${2:-}" = huge ] && memory="--memory size=0 --memory-zone id=m0,size=$1M,hugepages=on"
    echo "${3:-$tessera} --kernel $kernel --initramfs $initrd --cmdline '$cmdline' \
--cpus boot=2 $memory --device id=nvme0,path=/sys/bus/pci/devices/0000:00:03.0"
}
qemu_cmd() { # RAM-MiB [huge]
    local memory=
    [ "${2:-}" = huge ] && memory="-object memory-backend-memfd,id=ram0,size=$1M,hugetlb=on,hugetlbsize=2M -machine memory-backend=ram0"
    echo "qemu-system-x86_64 -machine q35,accel=kvm -cpu host -smp 2 -m $1 $memory \
-nodefaults -no-user-config -nographic -no-reboot -serial stdio \
-kernel $kernel -initrd $initrd -append '$cmdline' -device vfio-pci,host=0000:00:03.0"
}

l1=$(mktemp /tmp/tessera-bench-vfio.XXXXXX)
trap 'rm -f "$l1"' EXIT
chmod 0644 "$l1"
{
    cat <<EOF
# Written by scripts/bench-vfio.sh: runs in L1 under busybox ash.
. "\$HOST$repo/scripts/l1-vfio.sh"
group=\$(vfio_bind 0000:00:03.0) || exit 1
echo "bench-vfio: L1 \$(uname -r), \$(nproc) CPUs, NVMe in IOMMU group \$group; \$(in-host qemu-system-x86_64 --version | head -n 1)"
echo "bench-vfio: tessera $rev; guest kernel $(cat "$judge/kernel-package")"
# Sums the VFIO_IOMMU_MAP_DMA ioctl times (strace -T) of trace \$2 as milliseconds.
dma_ms() {
    grep -E 'VFIO_IOMMU_MAP_DMA|0x3b71' "\$2" | sed -n 's/.*<\\([0-9.]*\\)>\$/\\1/p' \\
        | awk -v name="\$1" '{ s += \$1; n++ } END { printf "bench-vfio: dma name=%s ms=%.1f ioctls=%d\\n", name, s * 1000, n }'
}
EOF
    # Each VMM twice per round and size, in the order A B B A: whoever runs first finds
    # L1's free memory most fragmented (fewer free huge pages), which alone skews one run.
    cases="512 2048"
    if [ "$hugepages" = 1 ]; then
        cases="$cases 512:huge"
        # 512 MiB of 2 MiB pages for one VMM at a time, plus slack.
        echo 'echo 272 >/proc/sys/vm/nr_hugepages; echo "bench-vfio: hugepages $(cat /proc/sys/vm/nr_hugepages)"'
    fi
    for round in $(seq 1 "$dma_rounds"); do
    for case in $cases; do
        mib=${case%%:*}
        kind=; [ "$case" = "$mib" ] || kind=${case#*:}
        label=$mib${kind:+-$kind}
        order="tessera qemu qemu tessera"
        [ -z "$before" ] || order="tessera before qemu qemu before tessera"
        for vmm in $order; do
            if [ "$vmm" != qemu ]; then
                binary=$tessera
                [ "$vmm" = tessera ] || binary=$before
                cat <<EOF
TESSERA_LOG=info in-host strace -f -T -e trace=ioctl -o /run/tmp/tessera.strace timeout 120 $(tessera_cmd "$mib" "$kind" "$binary") >/dev/null 2>/run/tmp/tessera.err
dma_ms $vmm-$label /run/tmp/tessera.strace
sed -n 's/.*vfio: DMA-mapped [0-9]* MiB of guest RAM in \([0-9.]*\) ms.*/bench-vfio: ready name=$vmm-$label ms=\1/p' /run/tmp/tessera.err
EOF
            else
                cat <<EOF
# -S: QEMU maps guest RAM while it sets the machine up and then waits, its vCPUs never
# run (SeaBIOS under strace would take ages); 40 s is ample for the maps to finish.
in-host strace -f -T -e trace=ioctl -o /run/tmp/qemu.strace timeout 40 $(qemu_cmd "$mib" "$kind") -S >/dev/null 2>&1
dma_ms qemu-$label /run/tmp/qemu.strace
EOF
            fi
        done
    done
    done
    for i in $(seq 1 "$rounds"); do
        cat <<EOF
echo "bench-vfio: round $i"
in-host $bench --name tessera --guest-ram-mib 512 -- $(tessera_cmd 512)
in-host $bench --name qemu-q35 --guest-ram-mib 512 -- $(qemu_cmd 512)
EOF
    done
    echo 'echo "bench-vfio: after: 0000:00:03.0 bound to $(driver_of 0000:00:03.0)"'
} >"$l1"

mkdir -p "$(dirname "$log")"
status=0
TESSERA_NESTED_TIMEOUT_SECS=${TESSERA_NESTED_TIMEOUT_SECS:-1500} \
    scripts/nested-host.sh run "$l1" 2>&1 | tee "$log" || status=${PIPESTATUS[0]}

tr -d '\r' <"$log" | awk -v status="$status" '
    function median(list,    n, v, i, j, t) {
        n = split(list, v, " ")
        if (n == 0) return ""
        for (i = 2; i <= n; i++)
            for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    function field(key,    i) {
        for (i = 2; i <= NF; i++) if (index($i, key "=") == 1) return substr($i, length(key) + 2)
        return ""
    }
    /^bench-vfio: dma / { n = field("name"); dma[n] = dma[n] " " field("ms"); runs[n]++; print }
    /^bench-vfio: ready / { n = field("name"); ready[n] = ready[n] " " field("ms"); print }
    /^bootbench name=/ {
        name = field("name"); ms = field("to_init_ms"); ex = field("exit")
        if (ms != "none" && ex == "0") times[name] = times[name] " " ms
        else failed++
    }
    END {
        split("512 2048 512-huge", labels, " ")
        for (k = 1; k <= 3; k++) {
            t = "tessera-" labels[k]; q = "qemu-" labels[k]
            if (!(runs[t] > 0 && runs[q] > 0)) continue
            mt = median(dma[t]); mq = median(dma[q]); mr = median(ready[t])
            if (mq > 0) printf "bench-vfio: ratio tessera/qemu MAP_DMA ioctls %s MiB (medians of %d and %d runs): %.1f ms / %.1f ms = %.2f\n", labels[k], runs[t], runs[q], mt, mq, mt / mq
            if (mq > 0 && mr != "") printf "bench-vfio: ratio tessera/qemu RAM ready for DMA %s MiB (tessera prefault + maps, QEMU maps): %.1f ms / %.1f ms = %.2f\n", labels[k], mr, mq, mr / mq
            b = "before-" labels[k]; mb = median(ready[b])
            if (mq > 0 && mb != "") printf "bench-vfio: ratio before/qemu RAM ready for DMA %s MiB: %.1f ms / %.1f ms = %.2f\n", labels[k], mb, mq, mb / mq
        }
        t = median(times["tessera"]); q = median(times["qemu-q35"])
        printf "bench-vfio: boot to /init with the NVMe, medians: tessera %s ms (%s), qemu-q35 %s ms (%s)\n", t, times["tessera"], q, times["qemu-q35"]
        if (q > 0) printf "bench-vfio: ratio tessera/qemu-q35 boot to /init: %.2f\n", t / q
        exit (failed > 0 || t == "") ? 1 : 0
    }' | tee -a "$log" || { [ "$status" != 0 ] || status=1; }
exit "$status"
