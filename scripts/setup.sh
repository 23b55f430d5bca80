#!/usr/bin/env bash
# Installs everything Tessera's build, tests and demo need on Debian 12, then fetches
# and caches the guest images. Idempotent; run as root (or with sudo available).
#
# Rust is not installed from Debian (bookworm's 1.63 is too old): a toolchain of
# 1.85 or newer must be on PATH (rustup); this script says so if it is not.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Debian packages, with the command (or, for a library, the file) each provides that we
# check for.
packages=(
    acpica-tools:iasl            # iasl / acpiexec: the ACPI table judges
    acpica-tools:acpiexec
    qemu-system-x86:qemu-system-x86_64  # the Linux judge VM, and later the nested test host
    busybox-static:busybox       # the judge initramfs
    cpio:cpio
    util-linux:flock
    coreutils:timeout
    lz4:lz4                      # unpacks the judge bzImage's vmlinux for the PVH boot test
    curl:curl                    # the API tests and docs/api.md's examples talk to the socket with it
    strace:strace                # scripts/bench-vfio.sh times the VMMs' DMA-map ioctls with it
    python3:/usr/bin/python3     # scripts/bench-hotplug-l1.py, run in L1 from the host's /
    python3-venv:dpkg            # the Schemathesis venv below (a package of no command: dpkg says)
    # The nested test host builds the mtty sample driver against Debian's kernel headers,
    # whose Makefile calls gcc-12; the prebuilt objtool links libelf; the source is .tar.xz.
    gcc:gcc-12
    binutils:strip
    make:make
    xz-utils:xz
    libelf1:/usr/lib/x86_64-linux-gnu/libelf.so.1
    # The judge initramfs's pci-bar (tests/guest/pci_bar.rs) links glibc statically.
    libc6-dev:/usr/lib/x86_64-linux-gnu/libc.a
)

log() { echo "setup: $*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for entry in "${packages[@]}"; do
    pkg=${entry%%:*}
    cmd=${entry#*:}
    # busybox must be the static build (the initramfs has no libc), and a package
    # marked `dpkg` provides no command: for these, dpkg says whether it is installed.
    if [ "$pkg" = busybox-static ] || [ "$cmd" = dpkg ]; then
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
            || missing+=("$pkg")
    elif [ "${cmd#/}" != "$cmd" ]; then
        [ -e "$cmd" ] || missing+=("$pkg")
    elif ! command -v "$cmd" >/dev/null 2>&1; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    # shellcheck disable=SC2207
    missing=($(printf '%s\n' "${missing[@]}" | sort -u))
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: install a Rust toolchain >= 1.85 (https://rustup.rs) and re-run"
    exit 1
fi
rustc_minor=$(rustc --version | sed -n 's/^rustc 1\.\([0-9]*\).*/\1/p')
if [ -z "$rustc_minor" ] || [ "$rustc_minor" -lt 85 ]; then
    log "rustc $(rustc --version) is too old: Tessera needs 1.85 or newer"
    exit 1
fi

# Schemathesis, the API's outside judge (vmm/tests/schemathesis.rs), from PyPI into a
# venv of its own, pinned so that a run is the same everywhere. Skipped when that
# version already answers.
schemathesis_version=4.32.5
venv="${TESSERA_CACHE:-$HOME/.cache/tessera}/schemathesis-venv"
if [ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $schemathesis_version" ]; then
    log "installing schemathesis $schemathesis_version in $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version" >&2
fi

# Guest images, cached under ${TESSERA_CACHE:-~/.cache/tessera}: the Linux judge's
# kernel and initramfs, and the nested test host's L1 kernel, modules and initramfs.
"$here/guest-images.sh" >/dev/null
"$here/nested-host.sh" build >/dev/null
log "ready"
