#!/usr/bin/env bash
# Hotplug benchmark, tessera against QEMU (issue 10's "Measure"); run by hand, not in CI.
#
# In ONE boot of the nested test host (docs/nested-test-host.md), with L1's NVMe
# (00:03.0) bound to vfio-pci, BENCH_ROUNDS (3) alternating runs of each VMM, each run a
# fresh guest (the judge's kernel and initramfs, 2 vCPUs, 512 MiB) that takes
# BENCH_PLUGS (3) hot-adds and hot-removals of the NVMe (scripts/bench-hotplug-l1.py):
#  - tessera: target/release/tessera --api-socket, driven over one kept-alive connection
#    with the requests Cloud Hypervisor's ch-remote sends (CH_REMOTE, else
#    ../shared/peers/cloud-hypervisor/ch-remote, checks the VM first): ACPI PCI hotplug;
#  - QEMU 7.2 (Debian's): q35, KVM, `device_add vfio-pci` into a pcie-root-port and
#    `device_del` over QMP (one connection too): ACPI PCI hotplug, QEMU's q35 default.
# add = request to the guest's nvme driver done setting the controller up; remove =
# request to the VMM saying the device is gone (tessera's 204 after the guest's eject
# and the release, QEMU's DEVICE_DELETED, sent before it closes the device); release =
# request to the device's VFIO group being free for another process (both VMMs).
# The last tessera run also measures vmm.ping at 64 clients, idle and during a hot-add
# and removal (api-bench). Output: L1's console, then `bench-hotplug:` medians and
# tessera/QEMU ratios, also saved to target/bench-hotplug.log. Exit 0 if every run did.
# TESSERA_LOG, if set, is tessera's log filter in L1 (its log goes to L1's console).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

rounds=${BENCH_ROUNDS:-3}
plugs=${BENCH_PLUGS:-3}
log=$repo/target/bench-hotplug.log
ch_remote=${CH_REMOTE:-$repo/../shared/peers/cloud-hypervisor/ch-remote}
[ -x "$ch_remote" ] || { echo "bench-hotplug: no ch-remote at $ch_remote (set CH_REMOTE)" >&2; exit 1; }
ch_remote=$(cd "$(dirname "$ch_remote")" && pwd)/$(basename "$ch_remote")

cargo build --quiet --release --locked -p tessera-vmm --bin tessera -p tessera-tests --bin api-bench
judge=$(scripts/guest-images.sh | tail -n 1)
args="$judge/vmlinuz $judge/initramfs.cpio.gz $repo/target/release/tessera $ch_remote $plugs"
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

l1=$(mktemp /tmp/tessera-bench-hotplug.XXXXXX)
trap 'rm -f "$l1"' EXIT
chmod 0644 "$l1"
{
    cat <<EOF
# Written by scripts/bench-hotplug.sh: runs in L1 under busybox ash.
. "\$HOST$repo/scripts/l1-vfio.sh"
vfio_bind 0000:00:03.0 >/dev/null || exit 1
${TESSERA_LOG:+export TESSERA_LOG=$TESSERA_LOG}
echo "bench-hotplug: L1 \$(uname -r), \$(nproc) CPUs; tessera $rev; \$(in-host qemu-system-x86_64 --version | head -n 1)"
EOF
    for i in $(seq 1 "$rounds"); do
        # Alternating which goes first: L1's state (free memory, caches) drifts.
        if [ $((i % 2)) = 1 ]; then order="tessera qemu"; else order="qemu tessera"; fi
        for vmm in $order; do
            extra=""
            [ "$i" = "$rounds" ] && [ "$vmm" = tessera ] && extra=$repo/target/release/api-bench
            run="in-host python3 $repo/scripts/bench-hotplug-l1.py $vmm $args $extra"
            if [ "$vmm" = qemu ]; then
                # QEMU's L2 sometimes hangs in early boot in this nested setup (seen once
                # in ACPI init); a peer that failed to boot is retried once, tessera never.
                echo "$run || { echo 'bench-hotplug: qemu run failed, retrying once'; $run; } || exit 1"
            else
                echo "$run || exit 1"
            fi
        done
    done
    echo 'echo "bench-hotplug: after: 0000:00:03.0 bound to $(driver_of 0000:00:03.0)"'
} >"$l1"

mkdir -p "$(dirname "$log")"
status=0
TESSERA_NESTED_TIMEOUT_SECS=${TESSERA_NESTED_TIMEOUT_SECS:-1500} \
    scripts/nested-host.sh run "$l1" 2>&1 | tee "$log" || status=${PIPESTATUS[0]}

tr -d '\r' <"$log" | awk '
    function median(list,    n, v, i, j, t) {
        n = split(list, v, " ")
        if (n == 0) return 0
        for (i = 2; i <= n; i++)
            for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    function field(key,    i) {
        for (i = 2; i <= NF; i++) if (index($i, key "=") == 1) return substr($i, length(key) + 2)
        return ""
    }
    /^bench-hotplug: vmm=/ {
        v = field("vmm"); add[v] = add[v] " " field("add_ms"); rm[v] = rm[v] " " field("remove_ms")
        rel[v] = rel[v] " " field("release_ms")
    }
    /^bench-hotplug: api / { printf "bench-hotplug: API vmm.ping at 64 clients, %s: p99 %s us, max %s us, errors %s\n", $3, field("p99_us"), field("max_us"), field("errors") }
    END {
        for (k = 1; k <= 3; k++) {
            what = k == 1 ? "hot-add to nvme driver bound" : k == 2 ? "hot-remove to the VMM saying done" : "hot-remove to the VFIO group free"
            t = median(k == 1 ? add["tessera"] : k == 2 ? rm["tessera"] : rel["tessera"])
            q = median(k == 1 ? add["qemu"] : k == 2 ? rm["qemu"] : rel["qemu"])
            printf "bench-hotplug: %s, medians: tessera %s ms, qemu %s ms", what, t, q
            if (q > 0) printf ", ratio tessera/qemu %.2f", t / q
            printf "\n"
        }
        exit (add["tessera"] == "" || add["qemu"] == "") ? 1 : 0
    }' | tee -a "$log" || { [ "$status" != 0 ] || status=1; }
exit "$status"
