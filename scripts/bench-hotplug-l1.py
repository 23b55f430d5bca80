#!/usr/bin/env python3
"""The L1 half of scripts/bench-hotplug.sh (run there with `in-host python3`): one VMM,
one guest, and ROUNDS hot-adds and hot-removals of L1's NVMe (bound to vfio-pci).

  tessera: `tessera --api-socket`, driven over one kept-alive HTTP connection to its
           socket with Cloud Hypervisor's requests (ACPI PCI hotplug into a free slot of
           segment 0);
  qemu:    QEMU (q35, KVM) with a pcie-root-port, driven over QMP with
           `device_add vfio-pci` / `device_del` (ACPI PCI hotplug too: QEMU's default
           for q35 root ports since 6.1; PCIe native unplug would wait out pciehp's 5 s
           attention-button delay).

Add: from the request to the guest's nvme driver having set the controller up (its
"... poll queues" line on the guest's console). Remove: from the request to the VMM
saying the device is gone (tessera's 204, which waits for the guest's eject and the
release; QEMU's DEVICE_DELETED event, which it sends before it closes the device).
Release: from the request to another process being able to open the device's VFIO
group, the one measure both VMMs answer the same way. Prints
`bench-hotplug: vmm=... round=N add_ms=... remove_ms=... release_ms=...`.

With API_BENCH (tests/src/bin/api-bench.rs) given, the tessera run then measures the
API under load: 64 clients GET vmm.ping for 2 s with the VM idle, then again while
the NVMe is hot-added and hot-removed, and prints both lines of api-bench prefixed
`bench-hotplug: api idle|during-hotplug`.

usage: bench-hotplug-l1.py tessera|qemu KERNEL INITRD TESSERA CH_REMOTE ROUNDS [API_BENCH]
"""

import http.client
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


def group_file():
    """The NVMe's VFIO group file."""
    group = os.path.basename(os.readlink(f"/sys/bus/pci/devices/{NVME}/iommu_group"))
    return f"/dev/vfio/{group}"


def released(start, timeout=30.0):
    """The time the VFIO group can be opened again (a VMM holding it makes open fail
    with EBUSY), polled every millisecond."""
    path = group_file()
    deadline = start + timeout
    while time.monotonic() < deadline:
        try:
            os.close(os.open(path, os.O_RDWR))
            return time.monotonic()
        except OSError:
            time.sleep(0.001)
    sys.exit(f"bench-hotplug: {path} still held {timeout} s after the removal request")


def size(path):
    return os.path.getsize(path) if os.path.exists(path) else 0


class Api(http.client.HTTPConnection):
    """One kept-alive HTTP connection to the VMM's socket, as QMP is one connection: a
    client spawned per request (ch-remote) would add its process start-up, over 100 ms
    in L1, to every figure."""

    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path)

    def put(self, endpoint, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        self.request("PUT", f"/api/v1/{endpoint}", body=data, headers=headers)
        answer = self.getresponse()
        text = answer.read()
        if answer.status >= 300:
            sys.exit(f"bench-hotplug: {endpoint}: {answer.status} {text!r}")
        return text


def tessera(kernel, initrd, binary, ch_remote, rounds, api_bench=None):
    sock, log = "/run/bench-hp.sock", "/run/bench-hp-tessera.log"
    fresh(log)
    vm = subprocess.Popen(
        [binary, "--api-socket", sock, "--cpus", "boot=2", "--memory", "size=512M",
         "--kernel", kernel, "--initramfs", initrd, "--cmdline", CMDLINE,
         "--serial", f"file={log}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_for(log, READY)

        def ch(*args):
            subprocess.run([ch_remote, "--api-socket", sock, *args], check=True,
                           stdout=subprocess.DEVNULL)

        # Cloud Hypervisor's client sees the VM; the timed requests are the ones it sends.
        ch("info")
        api = Api(sock)
        for r in range(1, rounds + 1):
            start = size(log)
            t0 = time.monotonic()
            api.put("vm.add-device", {"path": f"/sys/bus/pci/devices/{NVME}", "id": "nvme0"})
            t1 = wait_for(log, BOUND, start)
            t2 = time.monotonic()
            api.put("vm.remove-device", {"id": "nvme0"})
            t3 = time.monotonic()
            t4 = released(t2)
            print(f"bench-hotplug: vmm=tessera round={r} add_ms={(t1 - t0) * 1e3:.0f} "
                  f"remove_ms={(t3 - t2) * 1e3:.0f} release_ms={(t4 - t2) * 1e3:.0f}", flush=True)
        if api_bench:
            api_under_hotplug(api_bench, sock, log, ch)
        ch("shutdown-vmm")
        vm.wait(timeout=30)
    finally:
        # A run that failed must not leave its VMM behind for the next one.
        if vm.poll() is None:
            vm.kill()
            vm.wait()


def api_under_hotplug(api_bench, sock, log, ch):
    """vmm.ping at 64 clients, idle and then while the NVMe is hot-added and removed."""
    cmd = [api_bench, "--socket", sock, "--clients", "64", "--seconds", "2",
           "--requests", "10000000"]
    idle = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
    print(f"bench-hotplug: api idle {idle}", flush=True)
    bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    time.sleep(0.2)
    start = size(log)
    ch("add-device", f"path=/sys/bus/pci/devices/{NVME},id=nvme0")
    wait_for(log, BOUND, start)
    ch("remove-device", "nvme0")
    out, _ = bench.communicate(timeout=60)
    if bench.returncode != 0:
        sys.exit(f"bench-hotplug: api-bench failed during hotplug: {out}")
    print(f"bench-hotplug: api during-hotplug {out.strip()}", flush=True)


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
    try:
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
            t4 = released(t2)
            print(f"bench-hotplug: vmm=qemu round={r} add_ms={(t1 - t0) * 1e3:.0f} "
                  f"remove_ms={(t3 - t2) * 1e3:.0f} release_ms={(t4 - t2) * 1e3:.0f}", flush=True)
        qmp.command("quit")
        vm.wait(timeout=30)
    finally:
        # A run that failed must not leave its VMM behind for the next one.
        if vm.poll() is None:
            vm.kill()
            vm.wait()


def main():
    if len(sys.argv) not in (7, 8) or sys.argv[1] not in ("tessera", "qemu"):
        sys.exit(__doc__)
    which, kernel, initrd, binary, ch_remote, rounds = sys.argv[1:7]
    api_bench = sys.argv[7] if len(sys.argv) == 8 else None
    if which == "tessera":
        tessera(kernel, initrd, binary, ch_remote, int(rounds), api_bench)
    else:
        qemu(kernel, initrd, int(rounds))


if __name__ == "__main__":
    main()
