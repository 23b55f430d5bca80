#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: installs what is missing, builds tessera,
# boots a guest with 2 CPU nodes and 8 Generic Initiator nodes on a passed-through PCI
# device, and prints what its Linux kernel reports about them and the device. On a host
# whose /dev/kvm cannot boot unmodified guests (a paravirtual nested KVM) the VM runs
# inside the nested test host with L1's NVMe passed through; elsewhere set
# TESSERA_DEMO_DEVICE=/sys/bus/pci/devices/BDF (bound to vfio-pci) to pass one through.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
cargo build --quiet --release --locked -p tessera-vmm
cargo run --quiet --release --locked -p tessera-tests --example demo
