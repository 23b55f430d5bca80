#!/bin/sh
# /init of the Linux judge initramfs (copied in by scripts/guest-images.sh).
#
# Prints what the guest kernel made of the NUMA topology as key=value lines between
# TESSERA-JUDGE-BEGIN and TESSERA-JUDGE-END on the console; with judge.devices=1 on the
# kernel command line, then what it could do with its NVMe, edu and mtty PCI devices
# between TESSERA-DEVICES-BEGIN and TESSERA-DEVICES-END (using /bin/pci-bar, built from
# tests/guest/pci_bar.rs); with judge.devmem=N, what node N's memory holds between
# TESSERA-DEVMEM-BEGIN and TESSERA-DEVMEM-END (parsed by
# vmm/tests/device_memory_in_nested_host.rs); then powers off (or reboots, with judge.action=reboot, or
# does what the console says, with judge.action=console).
# tests/src/linux_judge.rs parses both blocks; keep the two in step.
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The kernel may have had no /dev/console to give us: take the console explicitly.
exec </dev/console >/dev/console 2>&1
# No echo of typed input, from the start: a test that types orders while the guest boots
# (the next boot's, or a reboot order repeated until taken) would otherwise see its lines
# land in the middle of the report's.
stty -echo 2>/dev/null || true
# The kernel's own uptime here is the guest's boot time, free of the VMM's start-up
# (scripts/bench-boot.sh compares it between VMMs).
read -r uptime _ </proc/uptime
echo "TESSERA-INIT uptime=$uptime"
# Keep kernel messages from interleaving with the report (dmesg still has them all);
# `judge.printk=N` keeps those below level N instead (a benchmark watching for a
# driver's message on the console).
printk=1
for word in $(cat /proc/cmdline); do
    case $word in judge.printk=*) printk=${word#judge.printk=} ;; esac
done
echo "$printk" >/proc/sys/kernel/printk

NODE=/sys/devices/system/node

# Whole file on one line, whitespace runs turned into commas; empty if absent.
joined() {
    [ -r "$1" ] || return 0
    tr -s ' \t\n' ',,,' <"$1" | sed 's/^,*//; s/,*$//'
}

# Names of the nodeM entries of a directory, comma-joined, sorted by number.
node_entries() {
    [ -d "$1" ] || return 0
    ls "$1" | grep '^node[0-9][0-9]*$' | sed 's/^node//' | sort -n \
        | sed 's/^/node/' | tr '\n' ',' | sed 's/,$//'
}

echo TESSERA-JUDGE-BEGIN
for key in possible online has_cpu has_memory has_normal_memory has_generic_initiator; do
    echo "$key=$(joined "$NODE/$key")"
done

for dir in "$NODE"/node[0-9]*; do
    [ -d "$dir" ] || continue
    n=${dir##*/}
    echo "$n.cpulist=$(joined "$dir/cpulist")"
    echo "$n.distance=$(joined "$dir/distance")"
    memtotal=$(sed -n 's/.*MemTotal: *\([0-9][0-9]*\) kB.*/\1/p' "$dir/meminfo" 2>/dev/null)
    echo "$n.memtotal_kb=$memtotal"
    for access in access0 access1; do
        a=$dir/$access
        [ -d "$a" ] || continue
        echo "$n.$access.initiators=$(node_entries "$a/initiators")"
        echo "$n.$access.targets=$(node_entries "$a/targets")"
        for f in read_latency write_latency read_bandwidth write_bandwidth; do
            [ -r "$a/initiators/$f" ] && echo "$n.$access.$f=$(joined "$a/initiators/$f")"
        done
    done
    # HMAT memory-side caches: memory_side_cache/indexL, L the cache level.
    for c in "$dir"/memory_side_cache/index[0-9]*; do
        [ -d "$c" ] || continue
        for f in size line_size indexing write_policy; do
            [ -r "$c/$f" ] && echo "$n.cache${c##*/index}.$f=$(joined "$c/$f")"
        done
    done
done

pci=
for dev in /sys/bus/pci/devices/*; do
    [ -e "$dev" ] || continue
    pci="$pci${pci:+,}${dev##*/}:$(joined "$dev/numa_node")"
done
echo "pci=$pci"

dmesg | grep -iE 'srat|numa|hmat|slit|node|generic initiator|acpi: ' | sed 's/^/dmesg: /'
echo TESSERA-JUDGE-END

# --- judge.devmem=N: device memory as node N's RAM --------------------------------------
# Prints between TESSERA-DEVMEM-BEGIN and TESSERA-DEVMEM-END: node N's MemTotal, the
# memory blocks the kernel gave it (with the block size), the BARs of every ivshmem
# (1af4:1110) function as its sysfs resource file lists them, and what
# `pci-bar node-memory N 16` reports (16 MiB allocated on node N, written, read back).
devmem_report() {
    local node=$1 dir=$NODE/node$1 dev blocks fill fill_exit
    echo TESSERA-DEVMEM-BEGIN
    echo "devmem.node=$node"
    echo "devmem.memtotal_kb=$(sed -n 's/.*MemTotal: *\([0-9][0-9]*\) kB.*/\1/p' "$dir/meminfo" 2>/dev/null)"
    echo "devmem.block_size=$(cat /sys/devices/system/memory/block_size_bytes 2>/dev/null)"
    blocks=$(ls "$dir" 2>/dev/null | grep '^memory[0-9][0-9]*$' | sed 's/^memory//' | sort -n | tr '\n' ',' | sed 's/,$//')
    echo "devmem.blocks=$blocks"
    for dev in /sys/bus/pci/devices/*; do
        [ "$(cat "$dev/vendor" 2>/dev/null):$(cat "$dev/device" 2>/dev/null)" = 0x1af4:0x1110 ] || continue
        echo "devmem.ivshmem.${dev##*/}.bar2=$(sed -n 3p "$dev/resource")"
    done
    fill=$(/bin/pci-bar node-memory "$node" 16 2>&1)
    fill_exit=$?
    echo "devmem.fill=$fill"
    echo "devmem.fill_exit=$fill_exit"
    echo TESSERA-DEVMEM-END
}

for word in $(cat /proc/cmdline); do
    case $word in judge.devmem=*) devmem_report "${word#judge.devmem=}" ;; esac
done

# --- judge.devices=1: what the guest can do with its (passed-through) PCI devices ------
# Prints key=value lines `KIND.BDF.what=...` and `irq.BDF=...` between
# TESSERA-DEVICES-BEGIN and TESSERA-DEVICES-END, for the devices it knows:
#   NVMe (class 0x010802)  driver, namespace, rw (1 MiB written, caches dropped, read back),
#                          msix_vectors / msix_irqs / msix_interrupts (enabled MSI-X
#                          vectors, their Linux irqs, and their total count in /proc/interrupts)
#   edu (1234:11e8)        id (BAR0 register 0x00), liveness (0x04 reads back inverted)
#   mtty (4348:3253)       tty (the 8250_pci ports, comma-joined), loopback (a line written
#                          to every port in raw mode reads back: mtty's UART loops TX to RX)
# Keep serial output short: every console byte is a trapped I/O exit in a nested guest.

# Driver bound to the PCI device at sysfs path $1, or "none".
driver_of() {
    if [ -e "$1/driver" ]; then basename "$(readlink "$1/driver")"; else echo none; fi
}

# NVMe: $1 BDF, $2 sysfs path.
nvme_report() {
    local p=nvme.$1 ns= name i rw=fail irqs= n=0 f total
    echo "$p.driver=$(driver_of "$2")"
    # The driver resets the controller and scans namespaces asynchronously: wait for one.
    i=0
    while [ -z "$ns" ] && [ "$i" -lt 100 ]; do
        for f in "$2"/nvme/nvme*/nvme*n*; do
            [ -e "$f" ] || continue
            # With native multipath the controller holds the hidden path nvmeScCnN; the
            # block device is the subsystem's nvmeSnN.
            name=$(echo "${f##*/}" | sed 's/c[0-9]*n/n/')
            [ -b "/dev/$name" ] && ns=$name && break
        done
        [ -n "$ns" ] || { sleep 0.1; i=$((i + 1)); }
    done
    echo "$p.namespace=$ns"
    if [ -n "$ns" ] \
        && dd if=/dev/urandom of=/tmp/nvme.out bs=1M count=1 2>/dev/null \
        && dd if=/tmp/nvme.out of="/dev/$ns" bs=1M count=1 conv=fsync 2>/dev/null \
        && echo 3 >/proc/sys/vm/drop_caches \
        && dd if="/dev/$ns" of=/tmp/nvme.in bs=1M count=1 2>/dev/null \
        && cmp -s /tmp/nvme.out /tmp/nvme.in; then
        rw=ok
    fi
    rm -f /tmp/nvme.out /tmp/nvme.in
    echo "$p.rw=$rw"
    # msi_irqs/N holds "msix" or "msi" for each Linux irq N of the device.
    for f in "$2"/msi_irqs/*; do
        [ -e "$f" ] && [ "$(cat "$f")" = msix ] || continue
        n=$((n + 1))
        irqs="$irqs${irqs:+,}${f##*/}"
    done
    total=$(awk -v irqs=",$irqs," '
        { irq = $1; sub(/:$/, "", irq) }
        index(irqs, "," irq ",") { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i }
        END { print s + 0 }' /proc/interrupts)
    echo "$p.msix_vectors=$n"
    echo "$p.msix_irqs=$irqs"
    echo "$p.msix_interrupts=$total"
}

# edu: $1 BDF, $2 sysfs path. No driver binds it: enable it (memory decoding) ourselves.
edu_report() {
    local p=edu.$1 bar=$2/resource0 live=ok v got
    { echo 1 >"$2/enable"; } 2>/dev/null
    echo "$p.id=$(pci-bar "$bar" 0 2>&1)"
    for v in 0x12345678 0xa5a5a5a5 $((RANDOM * 65536 + RANDOM)); do
        got=$(pci-bar "$bar" 4 "$v" 2>&1)
        [ "$got" = "$(printf '0x%08x' $((v ^ 0xffffffff)))" ] || live=fail
    done
    echo "$p.liveness=$live"
}

# Writes a line to the tty $1 in raw mode and reads it back; mtty's UART hands whatever
# is written to THR back through RBR (a 16-byte FIFO, so the line is kept shorter).
# Run it in a subshell: a failing `exec` redirection ends the shell that runs it.
tty_loopback() {
    local msg="tessera-$2" line=
    # One open for both directions: closing the port would clear its FIFOs.
    exec 3<>"/dev/$1" || return 1
    stty raw -echo 115200 <&3 || { exec 3<&-; return 1; }
    printf '%s\n' "$msg" >&3
    read -t 3 -r line <&3
    exec 3<&-
    [ "$line" = "$msg" ]
}

# mtty: $1 BDF, $2 sysfs path.
mtty_report() {
    local p=mtty.$1 ttys t loop=ok
    ttys=$(ls "$2/tty" 2>/dev/null)
    echo "$p.tty=$(echo $ttys | tr ' ' ',')"
    [ -n "$ttys" ] || loop=fail
    for t in $ttys; do
        (tty_loopback "$t" "$t") || loop=fail
    done
    echo "$p.loopback=$loop"
}

devices_report() {
    local dev bdf id class bdfs=
    echo TESSERA-DEVICES-BEGIN
    for dev in /sys/bus/pci/devices/*; do
        [ -e "$dev" ] || continue
        bdf=${dev##*/}
        id=$(cat "$dev/vendor"):$(cat "$dev/device")
        class=$(cat "$dev/class")
        case $id:$class in
        *:0x010802) nvme_report "$bdf" "$dev" ;;
        0x1234:0x11e8:*) edu_report "$bdf" "$dev" ;;
        0x4348:0x3253:*) mtty_report "$bdf" "$dev" ;;
        *) continue ;;
        esac
        echo "irq.$bdf=$(cat "$dev/irq")"
        bdfs="$bdfs|$bdf"
    done
    [ -n "$bdfs" ] && dmesg | grep -E "nvme|ttyS[1-9]${bdfs}" | sed 's/^/dmesg: /'
    echo TESSERA-DEVICES-END
}

case " $(cat /proc/cmdline) " in
*" judge.devices=1 "*) devices_report ;;
esac

# `judge.dmesg=1`: the whole kernel log, for comparing where two boots' time went
# (with `initcall_debug`; scripts/boot-profile.sh reads it).
case " $(cat /proc/cmdline) " in
*" judge.dmesg=1 "*) dmesg | sed 's/^/dmesg-all: /' ;;
esac

# `judge.action=console`: take orders typed on the console, proving input reaches the
# guest through the serial port, on every boot. An order is a line `BOOT_ID reboot` or
# `BOOT_ID poweroff` naming this boot (printed as `judge-boot-id=BOOT_ID`), so a typist
# can repeat it until it takes: lines for an earlier boot, still queued across a reboot,
# and lines that lost bytes while the UART driver started, are ignored. The cmdline is
# the same on every boot; this is how a test makes the guest reboot, then power off.
# `BOOT_ID devices SEQ` prints the devices report again (what the guest sees now, e.g.
# after a hotplug), then `judge-done: SEQ`; an order with a SEQ is done once, however
# often it is typed. `judge-acpiphp-disable=` tells whether the ACPI PCI hotplug driver
# was disabled on the command line (`acpiphp.disable=1`).
console_orders() {
    local boot_id id order seq last=
    boot_id=$(cat /proc/sys/kernel/random/boot_id)
    echo "judge-acpiphp-disable=$(cat /sys/module/acpiphp/parameters/disable 2>/dev/null)"
    echo "judge-boot-id=$boot_id"
    while read -r id order seq; do
        [ "$id" = "$boot_id" ] || continue
        [ -n "$seq" ] && [ "$seq" = "$last" ] && continue
        last=$seq
        echo "judge-order: $order${seq:+ $seq}"
        case $order in
        reboot) reboot -f ;;
        poweroff) poweroff -f ;;
        devices) devices_report ;;
        esac
        [ -n "$seq" ] && echo "judge-done: $seq"
    done
    # The console closed: an init that returned would panic the kernel.
    poweroff -f
}

# `judge.action=reboot` on the command line: reboot instead of powering off, so a test
# can watch a VMM boot the guest again.
case " $(cat /proc/cmdline) " in
*" judge.action=console "*) console_orders ;;
*" judge.action=reboot "*) reboot -f ;;
*) poweroff -f ;;
esac
