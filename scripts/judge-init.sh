#!/bin/sh
# /init of the Linux judge initramfs (copied in by scripts/guest-images.sh).
#
# Prints what the guest kernel made of the NUMA topology as key=value lines between
# TESSERA-JUDGE-BEGIN and TESSERA-JUDGE-END on the console, then powers off (or reboots,
# with judge.action=reboot on the kernel command line).
# tests/src/linux_judge.rs parses this block; keep the two in step.
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The kernel may have had no /dev/console to give us: take the console explicitly.
exec </dev/console >/dev/console 2>&1
echo TESSERA-INIT
# `judge.action=echo`: read a line from the console and echo it, proving input reaches
# the guest through the serial port. The first line may have lost bytes while the UART
# driver started, so the second is the one echoed.
case " $(cat /proc/cmdline) " in
*" judge.action=echo "*) read -r _ && read -r line && echo "judge-echo: $line" ;;
esac
# Keep kernel messages from interleaving with the report (dmesg still has them all).
echo 1 >/proc/sys/kernel/printk

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
done

pci=
for dev in /sys/bus/pci/devices/*; do
    [ -e "$dev" ] || continue
    pci="$pci${pci:+,}${dev##*/}:$(joined "$dev/numa_node")"
done
echo "pci=$pci"

dmesg | grep -iE 'srat|numa|hmat|slit|node|generic initiator|acpi: ' | sed 's/^/dmesg: /'
echo TESSERA-JUDGE-END

# `judge.action=reboot` on the command line: reboot instead of powering off, so a test
# can watch a VMM boot the guest again.
case " $(cat /proc/cmdline) " in
*" judge.action=reboot "*) reboot -f ;;
*) poweroff -f ;;
esac
