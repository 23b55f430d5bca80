#!/usr/bin/env python3
"""The L1 half of scripts/bench-hotplug.sh (run there with `in-host python3`): one VMM,
one guest, and ROUNDS hot-adds and hot-removals of L1's NVMe (bound to vfio-pci).

  tessera: `tessera --api-socket`, driven with Cloud Hypervisor's ch-remote (ACPI PCI
           hotplug into a free slot of segment 0);
  qemu:    QEMU (q35, KVM) with a pcie-root-port, driven over QMP with
           `device_add vfio-pci` / `device_del` (PCIe native hotplug).

Add: from the request to the guest's nvme driver having set the controller up (its
"... poll queues" line on the guest's console). Remove: from the request to the VMM
saying the device is gone (tessera's 204, which waits for the guest's eject; QEMU's
DEVICE_DELETED event). Prints `bench-hotplug: vmm=... round=N add_ms=... remove_ms=...`.

usage: bench-hotplug-l1.py tessera|qemu KERNEL INITRD TESSERA CH_REMOTE ROUNDS
"""

import json
import os
import socket
import subprocess
import sys
import time

NVME = "0000:00:03.0"
CMDLINE = "console=ttyS0 panic=-1 loglevel=7 judge.printk=7 judge.action=console"
READY = "judge-boot-id="
BOUND = "poll queues"


def wait_for(path, text, start=0, timeout=120.0):
    """Waits until the file at `path` holds `text` after byte `start`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                f.seek(start)
                if text.encode() in f.read():
                    return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    with open(path, "rb") as f:
        tail = f.read()[-3000:].decode(errors="replace")
    sys.exit(f"bench-hotplug: no `{text}` in {path} within {timeout} s; it ends:\n{tail}")


def fresh(*paths):
    """Removes what an earlier run left, so that waiting for its text waits for this run."""
    for path in paths:
        if os.path.exists(path):
            os.remove(path)


def size(path):
    return os.path.getsize(path) if os.path.exists(path) else 0


def tessera(kernel, initrd, binary, ch_remote, rounds):
    sock, log = "/run/bench-hp.sock", "/run/bench-hp-tessera.log"
    fresh(log)
    vm = subprocess.Popen(
        [binary, "--api-socket", sock, "--cpus", "boot=2", "--memory", "size=512M",
         "--kernel", kernel, "--initramfs", initrd, "--cmdline", CMDLINE,
         "--serial", f"file={log}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    wait_for(log, READY)

    def ch(*args):
        subprocess.run([ch_remote, "--api-socket", sock, *args], check=True,
                       stdout=subprocess.DEVNULL)

    for r in range(1, rounds + 1):
        start = size(log)
        t0 = time.monotonic()
        ch("add-device", f"path=/sys/bus/pci/devices/{NVME},id=nvme0")
        t1 = wait_for(log, BOUND, start)
        t2 = time.monotonic()
        ch("remove-device", "nvme0")
        t3 = time.monotonic()
        print(f"bench-hotplug: vmm=tessera round={r} add_ms={(t1 - t0) * 1e3:.0f} "
              f"remove_ms={(t3 - t2) * 1e3:.0f}", flush=True)
    ch("shutdown-vmm")
    vm.wait(timeout=30)


class Qmp:
    """A QMP connection: commands answered in order, events kept aside."""

    def __init__(self, path):
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb")
        self.events = []
        self.read()  # the greeting
        self.command("qmp_capabilities")

    def read(self):
        return json.loads(self.file.readline())

    def command(self, name, **args):
        self.file.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        self.file.flush()
        while True:
            msg = self.read()
            if "event" in msg:
                self.events.append(msg)
            elif "error" in msg:
                sys.exit(f"bench-hotplug: QMP {name}: {msg['error']}")
            else:
                return msg

    def event(self, name, device):
        while True:
            for e in self.events:
                if e["event"] == name and e.get("data", {}).get("device") == device:
                    self.events.remove(e)
                    return
            self.events.append(self.read())


def qemu(kernel, initrd, rounds):
    qmp_path, log = "/run/bench-hp-qmp.sock", "/run/bench-hp-qemu.log"
    fresh(log, qmp_path)
    vm = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "q35,accel=kvm", "-cpu", "host", "-smp", "2",
         "-m", "512", "-nodefaults", "-no-user-config", "-display", "none",
         "-serial", f"file:{log}", "-qmp", f"unix:{qmp_path},server=on,wait=off",
         "-device", "pcie-root-port,id=rp1,chassis=1,bus=pcie.0",
         "-kernel", kernel, "-initrd", initrd, "-append", CMDLINE],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    wait_for(log, READY)
    qmp = Qmp(qmp_path)
    for r in range(1, rounds + 1):
        start = size(log)
        t0 = time.monotonic()
        qmp.command("device_add", driver="vfio-pci", host=NVME, bus="rp1", id="nvme0")
        t1 = wait_for(log, BOUND, start)
        t2 = time.monotonic()
        qmp.command("device_del", id="nvme0")
        qmp.event("DEVICE_DELETED", "nvme0")
        t3 = time.monotonic()
        print(f"bench-hotplug: vmm=qemu round={r} add_ms={(t1 - t0) * 1e3:.0f} "
              f"remove_ms={(t3 - t2) * 1e3:.0f}", flush=True)
    qmp.command("quit")
    vm.wait(timeout=30)


def main():
    if len(sys.argv) != 7 or sys.argv[1] not in ("tessera", "qemu"):
        sys.exit(__doc__)
    _, which, kernel, initrd, binary, ch_remote, rounds = sys.argv
    if which == "tessera":
        tessera(kernel, initrd, binary, ch_remote, int(rounds))
    else:
        qemu(kernel, initrd, int(rounds))


if __name__ == "__main__":
    main()
