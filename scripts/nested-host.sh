#!/usr/bin/env bash
# The nested test host: an L1 Linux under QEMU TCG (emulated AMD SVM + NPT, an emulated
# Intel IOMMU, an NVMe and an edu device) that shares the host's / read-only over 9p, so
# tests can run host binaries (our VMM, QEMU) in L1 with a working /dev/kvm and VFIO.
# See docs/nested-test-host.md.
#
#   nested-host.sh build
#       Builds (once, cached) the L1 images in $TESSERA_CACHE/nested:
#         vmlinuz, config, kernel-package   Debian 12's generic kernel (never installed here)
#         kernel.deb                        the package they came from (for module rebuilds)
#         mtty.ko                           the mtty sample mdev driver, built from Debian's
#                                           linux-source against that kernel's headers
#         modules                           the modules in the initramfs, in load order
#                                           (mtty last)
#         initramfs.cpio.gz                 busybox-static + modules + scripts/nested-init.sh
#         nvme.img                          template backing file for L1's NVMe device
#       Logs go to stderr; the last stdout line is that directory.
#   nested-host.sh run SCRIPT [QEMU-ARGS...]
#       Boots L1 and runs SCRIPT (a host path; L1 runs it as `sh /host/SCRIPT`), streaming
#       L1's console to stdout. Exits with SCRIPT's exit status; 124 if L1 ran out of time
#       (TESSERA_NESTED_TIMEOUT_SECS, default 600); 125 if L1 reported no status.
#
# TESSERA_CACHE defaults to ~/.cache/tessera. TESSERA_NESTED_REFRESH=1 fetches the kernel
# again. TESSERA_NESTED_VERBOSE=1 leaves L1's kernel messages on the console;
# TESSERA_NESTED_APPEND adds parameters to L1's kernel command line (QEMU keeps only the
# last -append, so do not pass one among QEMU-ARGS).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self=$here/$(basename "${BASH_SOURCE[0]}")
init_script=$here/nested-init.sh
out=${TESSERA_CACHE:-$HOME/.cache/tessera}/nested

# Modules L1 needs; their dependencies are added from the kernel's modules.dep.
# i2c_i801 binds the ICH9 SMBus (00:1f.3), so its IOMMU group (with 00:1f.0 and 00:1f.2)
# is not viable for VFIO: tests of that refusal need a real driver there.
wanted_modules=(virtio_pci 9pnet_virtio 9p kvm-amd vfio vfio_iommu_type1 vfio-pci mdev i2c_i801)
nvme_size=64M

log() { echo "nested-host: $*" >&2; }
die() { log "$*"; exit 1; }
# shellcheck source=lib/debian-kernel.sh
. "$here/lib/debian-kernel.sh"

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

usage() {
    echo "usage: $0 build | run SCRIPT [QEMU-ARGS...]" >&2
    exit 2
}

# Prints the module paths (relative to lib/modules/VERSION) to load, dependencies first.
# $1: the modules.dep to read; the rest: module names.
load_order() {
    local dep=$1
    shift
    awk -v wanted="$*" '
        function base(p) { sub(/.*\//, "", p); sub(/\.ko(\.[a-z]+)?$/, "", p); gsub(/-/, "_", p); return p }
        function visit(m,    n, i, d) {
            if (m in done) return
            if (m in visiting) { print "dependency cycle at " m > "/dev/stderr"; exit 1 }
            visiting[m] = 1
            n = split(deps[m], d, " ")
            for (i = 1; i <= n; i++) visit(d[i])
            done[m] = 1
            print m
        }
        {
            m = $1; sub(/:$/, "", m)
            deps[m] = ""
            for (i = 2; i <= NF; i++) deps[m] = deps[m] " " $i
            byname[base(m)] = m
        }
        END {
            n = split(wanted, w, " ")
            for (i = 1; i <= n; i++) {
                name = w[i]; gsub(/-/, "_", name)
                if (!(name in byname)) { print "no module " w[i] " in modules.dep" > "/dev/stderr"; exit 1 }
                visit(byname[name])
            }
        }' "$dep"
}

# Builds $out/mtty.ko from Debian's linux-source (samples/vfio-mdev/mtty.c) against the
# headers of exactly the kernel in $out/kernel-package: a module only loads into the
# kernel whose vermagic and symbol versions it was built against. Packages are fetched
# with `apt-get download` and unpacked under $1, never installed.
# Its cache key is this function's text plus the kernel package (see build()).
build_mtty() {
    local dir=$1 image version kver abi series root src hdr deb
    read -r image version <"$out/kernel-package"
    kver=${image#linux-image-}           # 6.1.0-56-amd64
    abi=${kver%-*}                       # 6.1.0-56
    series=$(echo "$abi" | cut -d. -f1,2) # 6.1
    log "building mtty.ko for $kver ($version)"
    mkdir -p "$dir/deb"
    # apt's download sandbox user must be able to write here.
    chmod 0777 "$dir/deb"
    # Exact versions: the headers must be those of the kernel we boot. If they are gone
    # from the archive, the kernel is stale too.
    (cd "$dir/deb" && apt-get download -q "linux-headers-$kver=$version" \
        "linux-headers-$abi-common=$version" "linux-kbuild-$series=$version" \
        "linux-source-$series=$version" >&2) \
        || die "cannot download the $version headers/source; TESSERA_NESTED_REFRESH=1 fetches the current kernel"

    root=$dir/root
    for deb in "$dir"/deb/linux-headers-*.deb "$dir"/deb/linux-kbuild-*.deb; do
        dpkg-deb -x "$deb" "$root"
    done
    hdr=$root/usr/src/linux-headers-$kver
    # The flavour's Makefile includes the common one by absolute path.
    sed -i "s|^include /usr/src/|include $root/usr/src/|" "$hdr/Makefile"

    # Only mtty.c out of the 138 MB source tarball, streamed (never written out whole).
    src=$dir/src
    mkdir -p "$src"
    dpkg-deb --fsys-tarfile "$dir"/deb/linux-source-*.deb \
        | tar -xOf - "./usr/src/linux-source-$series.tar.xz" \
        | tar -xJf - -C "$src" --strip-components=3 "linux-source-$series/samples/vfio-mdev/mtty.c"
    echo 'obj-m := mtty.o' >"$src/Kbuild"
    # Stdout is for the cache dir only; kbuild's chatter (e.g. "Skipping BTF generation")
    # goes to the log.
    make -s -C "$hdr" M="$src" modules >&2
    grep -aq "vermagic=$kver " "$src/mtty.ko" || die "mtty.ko was not built for $kver"
    # Debug info is 90% of the file and L1 has no use for it.
    strip --strip-debug -o "$out/mtty.ko.tmp" "$src/mtty.ko"
    mv "$out/mtty.ko.tmp" "$out/mtty.ko"
}

build() {
    mkdir -p "$out"
    # Test binaries may run this concurrently: one builder at a time.
    exec 9>"$out/.lock"
    flock 9

    local work
    work=$(mktemp -d)
    chmod 0755 "$work"
    # shellcheck disable=SC2064 # expand now: $work is local
    trap "rm -rf '$work'" EXIT

    # --- kernel package -----------------------------------------------------------
    if [ "${TESSERA_NESTED_REFRESH:-0}" = 1 ] || [ ! -s "$out/kernel.deb" ] \
        || [ ! -s "$out/kernel-package" ]; then
        local pkg version deb
        read -r pkg version deb < <(fetch_kernel_deb linux-image-amd64 \
            '^linux-image-[0-9.]+-[0-9]+-amd64$' "$work/deb")
        mv "$deb" "$out/kernel.deb.tmp"
        mv "$out/kernel.deb.tmp" "$out/kernel.deb"
        echo "$pkg $version" >"$out/kernel-package"
    fi

    # --- host tools ---------------------------------------------------------------
    [ -x /bin/busybox ] && dpkg -S /bin/busybox 2>/dev/null | grep -q '^busybox-static:' \
        || { log "installing busybox-static"; sudo_if_needed apt-get install -y -qq busybox-static >&2; }
    command -v cpio >/dev/null || { log "installing cpio"; sudo_if_needed apt-get install -y -qq cpio >&2; }
    # What building mtty.ko needs (scripts/setup.sh installs these): the compiler the
    # Debian kernel was built with (its headers call gcc-12), make, xz for the source
    # tarball, strip, and libelf for the prebuilt objtool.
    local need=()
    command -v gcc-12 >/dev/null || need+=(gcc)
    command -v make >/dev/null || need+=(make)
    command -v xz >/dev/null || need+=(xz-utils)
    command -v strip >/dev/null || need+=(binutils)
    [ -e /usr/lib/x86_64-linux-gnu/libelf.so.1 ] || need+=(libelf1)
    if [ ${#need[@]} -gt 0 ]; then
        log "installing ${need[*]}"
        sudo_if_needed env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
    fi

    # --- mtty.ko ------------------------------------------------------------------
    local mtty_key
    mtty_key=$( (declare -f build_mtty; cat "$out/kernel-package") | sha256sum | cut -d' ' -f1)
    if [ ! -s "$out/mtty.ko" ] || [ "$(cat "$out/mtty.key" 2>/dev/null)" != "$mtty_key" ]; then
        local t0=$SECONDS
        build_mtty "$work/mtty"
        echo "$mtty_key" >"$out/mtty.key"
        log "mtty.ko built in $((SECONDS - t0))s"
    fi

    # --- initramfs (and vmlinuz, from the same package) ---------------------------
    # Everything that goes into the images, plus the recipe below (this script).
    local key
    key=$( (cat "$init_script" /bin/busybox "$self" "$out/mtty.ko"; cat "$out/kernel-package") \
        | sha256sum | cut -d' ' -f1)
    if [ ! -s "$out/initramfs.cpio.gz" ] || [ ! -s "$out/vmlinuz" ] \
        || [ "$(cat "$out/initramfs.key" 2>/dev/null)" != "$key" ]; then
        log "building initramfs ($key)"
        local tree=$work/kernel root=$work/initramfs kver
        dpkg-deb -x "$out/kernel.deb" "$tree"
        kver=$(ls "$tree/lib/modules")
        [ "$(echo "$kver" | wc -l)" = 1 ] || die "expected one kernel in the package, got: $kver"
        # The package ships no modules.dep (depmod runs at install time): make one.
        busybox depmod -b "$tree" "$kver"
        load_order "$tree/lib/modules/$kver/modules.dep" "${wanted_modules[@]}" >"$work/load-order"

        mkdir -p "$root"/{bin,dev,proc,sys,tmp,run,host,lib/modules}
        cp /bin/busybox "$root/bin/busybox"
        for applet in $(/bin/busybox --list); do
            [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
        done
        ln -s bin "$root/sbin"
        while read -r module; do
            mkdir -p "$root/lib/modules/$(dirname "$module")"
            cp "$tree/lib/modules/$kver/$module" "$root/lib/modules/$module"
        done <"$work/load-order"
        # mtty needs vfio and mdev, which are in the list already: it goes last.
        mkdir -p "$root/lib/modules/extra"
        cp "$out/mtty.ko" "$root/lib/modules/extra/mtty.ko"
        echo extra/mtty.ko >>"$work/load-order"
        cp "$work/load-order" "$root/lib/modules/load-order"
        install -m 0755 "$init_script" "$root/init"
        (cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
            | cpio --null --create --format=newc --owner=0:0 --quiet --reproducible) \
            | gzip -6n >"$out/initramfs.cpio.gz.tmp"

        cp "$tree"/boot/vmlinuz-* "$out/vmlinuz.tmp"
        cp "$tree"/boot/config-* "$out/config.tmp"
        mv "$out/vmlinuz.tmp" "$out/vmlinuz"
        mv "$out/config.tmp" "$out/config"
        cp "$work/load-order" "$out/modules"
        mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
        echo "$key" >"$out/initramfs.key"
    fi

    if [ ! -f "$out/nvme.img" ]; then
        truncate -s "$nvme_size" "$out/nvme.img.tmp"
        mv "$out/nvme.img.tmp" "$out/nvme.img"
    fi

    rm -rf "$work"
    trap - EXIT
    flock -u 9
    log "kernel: $(cat "$out/kernel-package")"
}

run() {
    [ $# -ge 1 ] || usage
    local script=$1
    shift
    [ -f "$script" ] && [ -r "$script" ] || die "no readable script at $script"
    script=$(realpath "$script")
    case $script in
    *[[:space:]]*) die "the script's path must not contain whitespace: $script" ;;
    esac
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is not installed"

    build
    local secs=${TESSERA_NESTED_TIMEOUT_SECS:-600} verbose=
    [ "${TESSERA_NESTED_VERBOSE:-0}" = 1 ] && verbose=" tessera.verbose=1"
    local append=${TESSERA_NESTED_APPEND:+ $TESSERA_NESTED_APPEND}
    local tmp
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/tessera-nested.XXXXXX")
    # shellcheck disable=SC2064 # expand now: $tmp is local
    trap "rm -rf '$tmp'" EXIT
    # A private copy: QEMU locks its images, and runs may be concurrent.
    cp --sparse=always "$out/nvme.img" "$tmp/nvme.img"

    local start=$SECONDS qemu_status=0
    timeout -k 10 "$secs" qemu-system-x86_64 \
        -machine q35,kernel-irqchip=split -accel tcg -cpu EPYC,+svm,+npt -smp 2 -m 3072 \
        -device intel-iommu,intremap=on \
        -nographic -no-reboot -nic none \
        -kernel "$out/vmlinuz" -initrd "$out/initramfs.cpio.gz" \
        -append "console=ttyS0 intel_iommu=on iommu=pt panic=-1 loglevel=4 tessera.run=$script$verbose$append" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -device nvme,serial=tessera0,drive=nvm \
        -drive "file=$tmp/nvme.img,if=none,id=nvm,format=raw" \
        -device edu \
        "$@" </dev/null 2> >(grep -v "TCG doesn't support requested feature" >&2) \
        | tee "$tmp/console.log" || qemu_status=${PIPESTATUS[0]}

    local status
    status=$(tr -d '\r' <"$tmp/console.log" | { grep -a -o 'TESSERA-NESTED-EXIT=[0-9]*' || true; } \
        | tail -n 1 | cut -d= -f2)
    if [ -n "$status" ]; then
        log "script exited with status $status after $((SECONDS - start))s"
        exit "$status"
    fi
    if [ "$qemu_status" = 124 ] || [ "$qemu_status" = 137 ]; then
        log "L1 timed out after ${secs}s and was killed"
        exit 124
    fi
    log "L1 reported no exit status (qemu exit status $qemu_status)"
    exit 125
}

case ${1:-} in
build)
    [ $# = 1 ] || usage
    build
    echo "$out"
    ;;
run)
    shift
    run "$@"
    ;;
*) usage ;;
esac
