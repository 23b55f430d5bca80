#!/usr/bin/env bash
# Cost curves (issue 14): how tessera's costs grow, regenerated into docs/performance.md
# between its `cost-curves` markers, with the revision and date. Run by hand, not in CI,
# on an otherwise idle machine: every figure is a median of alternating runs, and the
# tables compare tessera with Cloud Hypervisor where both can run the case.
#
#  1. ACPI build time (this host): acpi/benches/build_tables.rs, from 2 vCPUs and 2
#     nodes up to 256 vCPUs, 64 nodes and 128 Generic Initiator links.
#  2. API latency (this host, no guest: both serve their API without one): GET
#     vmm.ping at 1, 64 and 256 clients, each on its own keep-alive connection
#     (target/release/api-bench), against tessera and CH; p50, p99 and errors.
#  3. Boot time (one boot of the nested test host, BENCH_ROUNDS (3) rounds, each case
#     once per round, through target/release/vmm-bootbench: spawn to /init, and the
#     guest's own uptime at /init) against:
#       - GI nodes 0, 8 and 64 (tessera: 8 per GI-ready slot on segment 0);
#       - passed-through devices 0, 1 and 3 (tessera: L1's NVMe, then + edu + an mtty
#         mdev; CH cannot pass the NVMe through in the nested host, see
#         ../shared/peers/cloud-hypervisor/README.md);
#       - guest RAM 256 MiB, 1 GiB and 2 GiB, tessera and CH.
#     Every guest has 2 vCPUs and boots the judge's PVH vmlinux and initramfs.
#
# CLOUD_HYPERVISOR: CH's binary (default ../shared/peers/cloud-hypervisor/cloud-hypervisor).
# Output: target/cost-curves.md (the tables), docs/performance.md updated, raw runs in
# target/cost-curves.log. Exit status: 0 if every run succeeded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

rounds=${BENCH_ROUNDS:-3}
ch=${CLOUD_HYPERVISOR:-$repo/../shared/peers/cloud-hypervisor/cloud-hypervisor}
[ -x "$ch" ] || { echo "cost-curves: no Cloud Hypervisor at $ch (set CLOUD_HYPERVISOR)" >&2; exit 2; }
ch=$(realpath "$ch")
log=$repo/target/cost-curves.log
tables=$repo/target/cost-curves.md
doc=$repo/docs/performance.md

cargo build --quiet --release --locked -p tessera-vmm -p tessera-tests --bins
judge=$(scripts/guest-images.sh | tail -n 1)
kernel=$judge/vmlinux
initrd=$judge/initramfs.cpio.gz
tessera=$repo/target/release/tessera
bench=$repo/target/release/vmm-bootbench
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || rev="$rev+changes"
work=$(mktemp -d /tmp/tessera-cost-curves.XXXXXX)
chmod 0755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$(dirname "$log")"
: >"$log"
status=0

# --- 1. ACPI build time -------------------------------------------------------------
echo "cost-curves: ACPI build time (cargo bench build_tables)"
cargo bench --quiet --locked -p tessera-acpi --bench build_tables -- \
    --warm-up-time 1 --measurement-time 3 2>&1 | tee -a "$log" >"$work/acpi.out"
acpi_rows=$(awk '
    /^acpi-build / { name = $0; sub(/^acpi-build /, "", name) }
    /time:/ && name != "" {
        # time:   [low unit mid unit high unit]: the middle estimate.
        v = $4; u = $5
        if (u == "ns") v /= 1000; else if (u == "ms") v *= 1000; else if (u == "s") v *= 1000000
        split(name, f, " "); row = ""
        for (i = 1; i <= 3; i++) { split(f[i], kv, "="); row = row "| " kv[2] " " }
        printf "%s| %.0f |\n", row, v
        name = ""
    }' "$work/acpi.out")

# --- 2. API latency -----------------------------------------------------------------
echo "cost-curves: API latency (api-bench, vmm.ping)"
api_run() { # NAME COMMAND...
    local name=$1 sock=$work/$1.sock
    shift
    "$@" --api-socket "$sock" >"$work/$name.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
    [ -S "$sock" ] || { echo "cost-curves: $name made no API socket" >&2; cat "$work/$name.log" >&2; return 1; }
    "$repo/target/release/api-bench" --socket "$sock" --path vmm.ping \
        --clients 1 --clients 64 --clients 256 --requests 20000 --seconds 5 \
        | sed "s/^api-bench /api-bench vmm=$name /" | tee -a "$log" || true
    curl -sS --unix-socket "$sock" -X PUT http://localhost/api/v1/vmm.shutdown >/dev/null || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
{ api_run tessera "$tessera"; api_run ch "$ch"; } >"$work/api.out" || status=1
api_rows=$(awk '
    function field(key,    i) {
        for (i = 1; i <= NF; i++) if (index($i, key "=") == 1) return substr($i, length(key) + 2)
        return ""
    }
    /^api-bench vmm=/ {
        vmm = field("vmm"); c = field("clients")
        p50[vmm, c] = field("p50_us"); p99[vmm, c] = field("p99_us")
        err[vmm, c] = field("errors"); req[vmm, c] = field("requests")
        if (!(c in seen)) { seen[c] = 1; order[++n] = c }
    }
    END {
        for (k = 1; k <= n; k++) {
            c = order[k]
            printf "| %s | %s | %s | %s/%s | %s | %s | %s/%s |\n", c, p50["tessera", c], p99["tessera", c], err["tessera", c], req["tessera", c], p50["ch", c], p99["ch", c], err["ch", c], req["ch", c]
        }
    }' "$work/api.out")

# --- 3. Boot time in the nested test host -------------------------------------------
echo "cost-curves: boot time, $rounds rounds in one nested test host"
cmdline='console=ttyS0 panic=-1 loglevel=4'
nodes="--numa guest_numa_id=0,cpus=[0],memory_zones=m0,distances=[1@20] --numa guest_numa_id=1,cpus=[1],memory_zones=m1,distances=[0@20]"
zones="--memory size=0 --memory-zone id=m0,size=256M --memory-zone id=m1,size=256M"
tessera_boot() { # NAME RAM-MiB TESSERA-ARGS...
    local name=$1 mib=$2
    shift 2
    echo "in-host $bench --name $name --guest-ram-mib $mib -- $tessera --kernel $kernel --initramfs $initrd --cmdline '$cmdline' --cpus boot=2 $*"
}
gi_slots() { # SLOTS: 8 GI nodes per slot, slot k at device 8+k of segment 0
    local args="" node=2 k n
    for k in $(seq 0 $(($1 - 1))); do
        args="$args --pci-slot id=gpu$k,pci_segment=0,pci_device_id=$((8 + k))"
        for n in $(seq 1 8); do
            args="$args --numa guest_numa_id=$node,device_id=gpu$k"
            node=$((node + 1))
        done
    done
    echo "$args"
}
mdev=83b8f4f2-509f-382f-3c1e-e6bfe0fa1003
l1=$work/l1.sh
{
    cat <<EOF
. "\$HOST$repo/scripts/l1-vfio.sh"
vfio_bind 0000:00:03.0 >/dev/null || exit 1
vfio_bind 0000:00:04.0 >/dev/null || exit 1
mtty_create $mdev mtty-1 >/dev/null || exit 1
echo "cost-curves: L1 \$(uname -r), \$(nproc) CPUs; \$(in-host $ch --version)"
EOF
    for i in $(seq 1 "$rounds"); do
        echo "echo 'cost-curves: round $i'"
        tessera_boot gi-0 512 "$zones $nodes"
        tessera_boot gi-8 512 "$zones $nodes $(gi_slots 1)"
        tessera_boot gi-64 512 "$zones $nodes $(gi_slots 8)"
        tessera_boot devices-0 512 "$zones $nodes"
        tessera_boot devices-1 512 "$zones $nodes --device id=nvme0,path=/sys/bus/pci/devices/0000:00:03.0"
        tessera_boot devices-3 512 "$zones $nodes --device id=nvme0,path=/sys/bus/pci/devices/0000:00:03.0 --device id=edu0,path=/sys/bus/pci/devices/0000:00:04.0 --device id=tty0,path=/sys/bus/mdev/devices/$mdev"
        for mib in 256 1024 2048; do
            tessera_boot "ram-$mib-tessera" "$mib" "--memory size=${mib}M"
            echo "in-host $bench --name ram-$mib-ch --guest-ram-mib $mib -- $ch --kernel $kernel --initramfs $initrd --cmdline '$cmdline' --cpus boot=2 --memory size=${mib}M --serial tty --console off"
        done
    done
    echo "mtty_remove $mdev >/dev/null"
} >"$l1"
chmod 0644 "$l1"
nested_status=0
TESSERA_NESTED_TIMEOUT_SECS=${TESSERA_NESTED_TIMEOUT_SECS:-1800} \
    scripts/nested-host.sh run "$l1" >>"$log" 2>&1 || nested_status=$?
[ "$nested_status" = 0 ] || { echo "cost-curves: the nested test host ended with $nested_status (see $log)" >&2; status=1; }
boot=$(tr -d '\r' <"$log" | awk '
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
    /^bootbench name=/ {
        n = field("name")
        if (field("exit") != "0" || field("to_init_ms") == "none") { failed[n]++; next }
        init[n] = init[n] " " field("to_init_ms"); up[n] = up[n] " " field("guest_uptime_at_init_ms")
        ok[n]++
    }
    END {
        for (n in ok) printf "%s %s %s %d %d\n", n, median(init[n]), median(up[n]), ok[n], failed[n] + 0
        for (n in failed) if (!(n in ok)) printf "%s - - 0 %d\n", n, failed[n]
    }')
grep -q ' [1-9][0-9]*$' <<<"$boot" && { echo "cost-curves: some boots failed (see $log)" >&2; status=1; }
cell() { # NAME FIELD(2: to /init, 3: uptime)
    awk -v n="$1" -v f="$2" '$1 == n { print $f }' <<<"$boot"
}
ratio() { # A B
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'
}
{
    echo "Made by \`scripts/cost-curves.sh\` at revision $rev on $(date -u +%Y-%m-%d), $(nproc) CPUs;"
    echo "boot times are medians of $rounds rounds in one boot of the nested test host (L2 under"
    echo "L1's KVM, itself under TCG), so compare within a table, not with other machines."
    echo
    echo "**Boot time against GI nodes** (tessera; 2 CPU nodes plus 8 memory-less GI nodes per"
    echo "GI-ready slot, slots on segment 0):"
    echo
    echo "| GI nodes | to /init, ms | guest uptime at /init, ms | against 0 |"
    echo "|---|---|---|---|"
    for n in 0 8 64; do
        echo "| $n | $(cell gi-$n 2) | $(cell gi-$n 3) | $(ratio "$(cell gi-$n 2)" "$(cell gi-0 2)") |"
    done
    echo
    echo "**Boot time against passed-through devices** (tessera; 1: L1's NVMe; 3: NVMe, edu,"
    echo "an mtty mdev; guest RAM DMA-mapped once for all):"
    echo
    echo "| devices | to /init, ms | guest uptime at /init, ms | against 0 |"
    echo "|---|---|---|---|"
    for n in 0 1 3; do
        echo "| $n | $(cell devices-$n 2) | $(cell devices-$n 3) | $(ratio "$(cell devices-$n 2)" "$(cell devices-0 2)") |"
    done
    echo
    echo "**Boot time against guest RAM** (one node, no devices):"
    echo
    echo "| guest RAM | tessera to /init, ms | CH to /init, ms | tessera/CH | tessera uptime at /init, ms | CH uptime at /init, ms |"
    echo "|---|---|---|---|---|---|"
    for mib in 256 1024 2048; do
        t=$(cell "ram-$mib-tessera" 2) c=$(cell "ram-$mib-ch" 2)
        echo "| $mib MiB | $t | $c | $(ratio "$t" "$c") | $(cell "ram-$mib-tessera" 3) | $(cell "ram-$mib-ch" 3) |"
    done
    echo
    echo "**ACPI build time** (validate the topology and build every table, this host, criterion's"
    echo "estimate; 8 GI links per device):"
    echo
    echo "| vCPUs | nodes | GI links | build, µs |"
    echo "|---|---|---|---|"
    echo "$acpi_rows"
    echo
    echo "**API latency** (GET vmm.ping on this host, each client on its own keep-alive"
    echo "connection, 20 000 requests or 5 s per row; errors are requests not answered 200):"
    echo
    echo "| clients | tessera p50, µs | tessera p99, µs | tessera errors | CH p50, µs | CH p99, µs | CH errors |"
    echo "|---|---|---|---|---|---|---|"
    echo "$api_rows"
} >"$tables"
cat "$tables"

# Replace the block between the markers in docs/performance.md.
begin='<!-- cost-curves:begin (scripts/cost-curves.sh writes this block) -->'
end='<!-- cost-curves:end -->'
grep -qF "$begin" "$doc" && grep -qF "$end" "$doc" \
    || { echo "cost-curves: $doc lacks the cost-curves markers" >&2; exit 1; }
awk -v begin="$begin" -v end="$end" -v tables="$tables" '
    $0 == begin { print; while ((getline line < tables) > 0) print line; skip = 1; next }
    $0 == end { skip = 0 }
    !skip { print }' "$doc" >"$work/performance.md"
cp "$work/performance.md" "$doc"
echo "cost-curves: $doc updated"
exit "$status"
