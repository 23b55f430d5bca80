#!/bin/sh
# /init of the nested test host's L1 initramfs (copied in by scripts/nested-host.sh).
#
# Loads the modules listed in /lib/modules/load-order (dependency order, worked out at
# build time from the kernel's modules.dep; the list ends with extra/mtty.ko, the mtty
# sample mdev driver built by nested-host.sh, after the vfio and mdev it needs), mounts the host's / (shared read-only over
# virtio-9p as "hostroot") at /host, makes /host usable as a chroot (proc, sys, dev and
# a writable /run), then runs the host script named by `tessera.run=PATH` on the kernel
# command line as `sh /host/PATH` (busybox ash, outside the chroot; `in-host CMD...`
# runs CMD inside it). Prints TESSERA-NESTED-BEGIN, the script's output,
# TESSERA-NESTED-EXIT=<status>, then powers off. If the host is not usable it prints
# TESSERA-NESTED-ERROR: <what> instead of an exit line. scripts/nested-host.sh parses
# these markers; keep the two in step.
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The kernel may have had no /dev/console to give us: take the console explicitly.
exec </dev/console >/dev/console 2>&1

fail() {
    echo "TESSERA-NESTED-ERROR: $*"
    dmesg | tail -n 40 | sed 's/^/dmesg: /'
    poweroff -f
    sleep 5
    exit 1
}

run=
verbose=0
for arg in $(cat /proc/cmdline); do
    case $arg in
    tessera.run=*) run=${arg#tessera.run=} ;;
    tessera.verbose=1) verbose=1 ;;
    esac
done
# Keep kernel messages from interleaving with the script's output (dmesg has them all).
[ "$verbose" = 1 ] || echo 1 >/proc/sys/kernel/printk

for module in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$module" || fail "insmod $module"
done

mkdir -p /host /run
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot /host \
    || fail "mounting the 9p hostroot at /host"
# Writable scratch, at the same path inside and outside the chroot.
mount -t tmpfs -o mode=0755 tmpfs /run || fail "mounting tmpfs at /run"
mkdir -p /run/tmp && chmod 1777 /run/tmp
mount -t proc proc /host/proc || fail "mounting /host/proc"
mount -t sysfs sysfs /host/sys || fail "mounting /host/sys"
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts || fail "mounting /dev/pts"
mount -t tmpfs -o mode=1777 tmpfs /dev/shm || fail "mounting /dev/shm"
mount -o rbind /dev /host/dev || fail "bind-mounting /host/dev"
mount -o bind /run /host/run || fail "bind-mounting /host/run"

cat >/bin/in-host <<'EOF'
#!/bin/sh
# Runs a command in the host's userland (chroot /host) with a host PATH.
exec chroot /host /usr/bin/env \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
EOF
chmod 0755 /bin/in-host

[ -n "$run" ] || fail "no tessera.run=PATH on the kernel command line"
[ -r "/host$run" ] || fail "cannot read /host$run"

export HOME=/run TMPDIR=/run/tmp HOST=/host
cd /run || fail "cd /run"
echo TESSERA-NESTED-BEGIN
sh "/host$run"
status=$?
echo "TESSERA-NESTED-EXIT=$status"
sync
poweroff -f
