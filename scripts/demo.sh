#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: installs what is missing, then shows a
# guest with 2 CPU nodes and 16 Generic Initiator nodes on 2 PCI devices, and what its
# Linux kernel reports about them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
cargo run --quiet --release --locked -p tessera-tests --example gi_demo
