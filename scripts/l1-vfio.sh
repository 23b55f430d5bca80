# shellcheck shell=sh
# VFIO and mdev helpers for scripts that run in the nested test host's L1 (busybox ash,
# as root, outside the chroot; see docs/nested-test-host.md). Owns the sysfs dance of
# binding PCI devices to vfio-pci and creating/removing mtty mediated devices.
#
# Contract: an L1 script sources this file from the host's / shared at $HOST (/host),
# e.g. with the repository path REPO written into the script by the test:
#     . "$HOST$REPO/scripts/l1-vfio.sh"
# Sourcing only defines functions (all prefixed names below, helpers `_l1v_*`) and sets
# no shell options. Every function prints its result on stdout, and on failure prints
# "l1-vfio: ..." on stderr and returns non-zero (so `x=$(vfio_bind ...)` under `set -e`
# stops the script). BDF may be given with or without the PCI domain ("00:03.0" or
# "0000:00:03.0"); output always uses the full form.
#
#   vfio_bind BDF          driver_override=vfio-pci, unbind the current driver,
#                          drivers_probe; prints the IOMMU group number (/dev/vfio/N)
#   vfio_unbind BDF        unbind from vfio-pci, clear driver_override, drivers_probe
#                          (the default driver, if any is loaded, takes it back)
#   mtty_create UUID [TYPE]  creates an mtty mdev (TYPE mtty-1 or mtty-2, default
#                          mtty-2); prints its sysfs path /sys/bus/mdev/devices/UUID,
#                          the value for QEMU's -device vfio-pci,sysfsdev=
#   mtty_remove UUID       removes that mdev
#   driver_of BDF          prints the bound driver's name, or "none"
#   group_of BDF           prints the device's IOMMU group number

_l1v_err() {
    echo "l1-vfio: $*" >&2
    return 1
}

# The full BDF ("0000:00:03.0") of a device that exists.
_l1v_bdf() {
    case $1 in
    ????:??:??.?) set -- "$1" ;;
    ??:??.?) set -- "0000:$1" ;;
    *) _l1v_err "not a PCI address: '$1'"; return ;;
    esac
    [ -e "/sys/bus/pci/devices/$1" ] || { _l1v_err "no PCI device $1"; return; }
    echo "$1"
}

# Writes $1 to the sysfs file $2; the kernel's refusal becomes our error message.
_l1v_write() {
    { echo "$1" >"$2"; } 2>/dev/null || _l1v_err "writing '$1' to $2 failed"
}

driver_of() {
    _l1v_d=$(_l1v_bdf "$1") || return
    if [ -e "/sys/bus/pci/devices/$_l1v_d/driver" ]; then
        basename "$(readlink "/sys/bus/pci/devices/$_l1v_d/driver")"
    else
        echo none
    fi
}

group_of() {
    _l1v_d=$(_l1v_bdf "$1") || return
    [ -e "/sys/bus/pci/devices/$_l1v_d/iommu_group" ] \
        || { _l1v_err "$_l1v_d has no IOMMU group (is the IOMMU on?)"; return; }
    basename "$(readlink "/sys/bus/pci/devices/$_l1v_d/iommu_group")"
}

vfio_bind() {
    _l1v_d=$(_l1v_bdf "$1") || return
    _l1v_path=/sys/bus/pci/devices/$_l1v_d
    [ -d /sys/bus/pci/drivers/vfio-pci ] || { _l1v_err "vfio-pci is not loaded"; return; }
    # driver_override first: drivers_probe (and any later rescan) then only tries vfio-pci.
    _l1v_write vfio-pci "$_l1v_path/driver_override" || return
    _l1v_drv=$(driver_of "$_l1v_d") || return
    if [ "$_l1v_drv" != vfio-pci ]; then
        if [ "$_l1v_drv" != none ]; then
            _l1v_write "$_l1v_d" "$_l1v_path/driver/unbind" || return
        fi
        _l1v_write "$_l1v_d" /sys/bus/pci/drivers_probe || return
    fi
    _l1v_drv=$(driver_of "$_l1v_d") || return
    [ "$_l1v_drv" = vfio-pci ] || { _l1v_err "$_l1v_d bound to $_l1v_drv, not vfio-pci"; return; }
    _l1v_g=$(group_of "$_l1v_d") || return
    [ -c "/dev/vfio/$_l1v_g" ] || { _l1v_err "no /dev/vfio/$_l1v_g for $_l1v_d"; return; }
    echo "$_l1v_g"
}

vfio_unbind() {
    _l1v_d=$(_l1v_bdf "$1") || return
    _l1v_path=/sys/bus/pci/devices/$_l1v_d
    # An empty override (a bare newline) clears it.
    _l1v_write "" "$_l1v_path/driver_override" || return
    if [ "$(driver_of "$_l1v_d")" = vfio-pci ]; then
        _l1v_write "$_l1v_d" /sys/bus/pci/drivers/vfio-pci/unbind || return
    fi
    _l1v_write "$_l1v_d" /sys/bus/pci/drivers_probe
}

mtty_create() {
    [ -n "$1" ] || { _l1v_err "usage: mtty_create UUID [mtty-1|mtty-2]"; return; }
    _l1v_t=/sys/class/mdev_bus/mtty/mdev_supported_types/${2:-mtty-2}
    [ -d "$_l1v_t" ] || { _l1v_err "no mdev type $_l1v_t (is mtty loaded?)"; return; }
    _l1v_write "$1" "$_l1v_t/create" || return
    [ -d "/sys/bus/mdev/devices/$1" ] || { _l1v_err "mdev $1 did not appear"; return; }
    echo "/sys/bus/mdev/devices/$1"
}

mtty_remove() {
    [ -d "/sys/bus/mdev/devices/$1" ] || { _l1v_err "no mdev '$1'"; return; }
    _l1v_write 1 "/sys/bus/mdev/devices/$1/remove"
}
