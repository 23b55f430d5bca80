#!/usr/bin/env bash
# Build (once, cached) the Linux judge's guest images:
#   $TESSERA_CACHE/judge/vmlinuz            Debian 12's cloud kernel (not installed on the host)
#   $TESSERA_CACHE/judge/config             that kernel's config-* file
#   $TESSERA_CACHE/judge/kernel-package     "name version" of the .deb it came from
#   $TESSERA_CACHE/judge/vmlinux            the ELF kernel inside the bzImage (PVH boots)
#   $TESSERA_CACHE/judge/initramfs-KEY/     initramfs.cpio.gz: busybox-static +
#                                           scripts/judge-init.sh as /init + /bin/pci-bar
#                                           (tests/guest/pci_bar.rs, built here with rustc,
#                                           static against glibc), KEY the hash of those
#                                           sources; and links to the kernel files above
# TESSERA_CACHE defaults to ~/.cache/tessera. Set TESSERA_JUDGE_REFRESH=1 to fetch the
# kernel again. Logs go to stderr; the last stdout line is the judge directory (the
# initramfs-KEY one, where vmlinuz, vmlinux, config and kernel-package are too).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
init_script=$here/judge-init.sh
pci_bar_src=$here/../tests/guest/pci_bar.rs
out=${TESSERA_CACHE:-$HOME/.cache/tessera}/judge
mkdir -p "$out"
# Test binaries may run this concurrently: one builder at a time.
exec 9>"$out/.lock"
flock 9

log() { echo "guest-images: $*" >&2; }
# shellcheck source=lib/debian-kernel.sh
. "$here/lib/debian-kernel.sh"

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

work=$(mktemp -d)
chmod 0755 "$work"
trap 'rm -rf "$work"' EXIT

# --- kernel -----------------------------------------------------------------------
have_kernel() {
    [ -s "$out/vmlinuz" ] && [ -s "$out/config" ] && [ -s "$out/kernel-package" ]
}

if [ "${TESSERA_JUDGE_REFRESH:-0}" = 1 ] || ! have_kernel; then
    read -r pkg version deb < <(fetch_kernel_deb linux-image-cloud-amd64 \
        '^linux-image-.*-cloud-amd64$' "$work/deb")
    dpkg-deb -x "$deb" "$work/root"
    cp "$work"/root/boot/vmlinuz-* "$out/vmlinuz.tmp"
    cp "$work"/root/boot/config-* "$out/config.tmp"
    mv "$out/vmlinuz.tmp" "$out/vmlinuz"
    mv "$out/config.tmp" "$out/config"
    echo "$pkg $version" >"$out/kernel-package"
    rm -f "$out/vmlinux"
fi

# --- vmlinux: the ELF kernel inside the bzImage, for PVH boots ------------------------
# The boot protocol header says where the compressed payload is: setup_sects at 0x1f1,
# payload_offset and payload_length at 0x248 and 0x24c.
if [ ! -s "$out/vmlinux" ]; then
    u() { od -An -t"u$2" -j "$(($1))" -N "$2" "$out/vmlinuz" | tr -d ' '; }
    setup_sects=$(u 0x1f1 1)
    [ "$setup_sects" -eq 0 ] && setup_sects=4
    start=$(( (setup_sects + 1) * 512 + $(u 0x248 4) ))
    length=$(u 0x24c 4)
    magic=$(od -An -tx1 -j "$start" -N 4 "$out/vmlinuz" | tr -d ' ')
    case $magic in
    02214c18) decompress="lz4 -dc" ;;
    fd377a58) decompress="xz -dc --single-stream" ;;
    28b52ffd) decompress="zstd -dc" ;;
    1f8b*) decompress="gzip -dc" ;;
    *) log "unknown bzImage payload compression (magic $magic)"; exit 1 ;;
    esac
    # Trailing bytes after the stream make some decompressors complain; the ELF is what counts.
    tail -c +$((start + 1)) "$out/vmlinuz" | head -c "$length" | $decompress >"$out/vmlinux.tmp" 2>/dev/null || true
    [ "$(head -c 4 "$out/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] \
        || { log "extracting vmlinux did not give an ELF file"; exit 1; }
    mv "$out/vmlinux.tmp" "$out/vmlinux"
fi

# --- initramfs ----------------------------------------------------------------------
[ -x /bin/busybox ] && dpkg -S /bin/busybox 2>/dev/null | grep -q '^busybox-static:' \
    || { log "installing busybox-static"; sudo_if_needed apt-get install -y -qq busybox-static >&2; }
command -v cpio >/dev/null || { log "installing cpio"; sudo_if_needed apt-get install -y -qq cpio >&2; }
# pci-bar links glibc statically: libc.a is in libc6-dev.
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || { log "installing libc6-dev";
    sudo_if_needed apt-get install -y -qq --no-install-recommends libc6-dev >&2; }
command -v rustc >/dev/null || { log "rustc not found: install a Rust toolchain (scripts/setup.sh)"; exit 1; }

# Everything that goes into the image, plus the recipe below (this script). pci-bar is
# compiled only on a rebuild, so its source and compiler stand in for the binary.
key=$( (cat "$init_script" /bin/busybox "${BASH_SOURCE[0]}" "$pci_bar_src"; rustc -vV) \
    | sha256sum | cut -d' ' -f1)
# One directory per content key, so that worktrees (or branches) with different judge
# sources each keep their own image instead of rebuilding one shared file under each
# other's running tests; the kernel files are linked in.
images=$out/initramfs-$key
if [ ! -s "$images/initramfs.cpio.gz" ]; then
    log "building initramfs ($key)"
    root=$work/initramfs
    mkdir -p "$root"/{bin,dev,proc,sys,tmp}
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    ln -s bin "$root/sbin"
    # Statically linked: the initramfs has no libc. Plain rustc: it is not a workspace
    # crate (it needs `unsafe` for mmap, which the workspace denies).
    rustc --edition 2021 -O -C target-feature=+crt-static -C strip=symbols \
        -o "$root/bin/pci-bar" "$pci_bar_src" >&2
    install -m 0755 "$init_script" "$root/init"
    mkdir -p "$images"
    (cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
        | cpio --null --create --format=newc --owner=0:0 --quiet --reproducible) \
        | gzip -9n >"$images/initramfs.cpio.gz.tmp"
    mv "$images/initramfs.cpio.gz.tmp" "$images/initramfs.cpio.gz"
fi
for f in vmlinuz vmlinux config kernel-package; do
    ln -sfn "../$f" "$images/$f"
done
# Relinking above touches the directory, so its mtime is its last use: images no
# checkout has asked for in 3 days go (a running test's image was just touched).
find "$out" -mindepth 1 -maxdepth 1 -type d -name 'initramfs-*' ! -name "initramfs-$key" \
    -mtime +3 -exec rm -rf {} + 2>/dev/null || true

log "kernel: $(cat "$out/kernel-package")"
echo "$images"
