#!/usr/bin/env python3
"""Compares where guests' boots went, from a scripts/bench-boot.sh log of guests booted
with `initcall_debug judge.dmesg=1` (scripts/boot-profile.sh runs both).

Each VMM's console lines are `NAME| dmesg-all: [ SECONDS] MESSAGE`. For every VMM the
script takes, per round, the time the guest kernel reached a few milestones of a Linux
boot and the duration of every initcall (`initcall X returned 0 after N usecs`); it
prints the medians side by side, tessera against each other VMM, and the initcalls whose
median duration differs most. Usage: boot_profile.py LOG [TOP]
"""

import re
import statistics
import sys
from collections import defaultdict

# (label, regular expression on the message): the first match's timestamp is the
# milestone. Chosen to cut a boot into the phases a VMM's platform can make slower.
MILESTONES = [
    ("tsc/clock calibrated", r"^tsc: (Detected|Refined)|kvm-clock: using sched offset"),
    ("ACPI tables parsed (SRAT)", r"^ACPI: SRAT"),
    ("LAPIC timer set up", r"APIC timer|lapic"),
    ("SMP: all CPUs up", r"^smp: Brought up"),
    ("ACPI interpreter enabled", r"^ACPI: Interpreter enabled"),
    ("PCI root bridge scanned", r"^ACPI: PCI Root Bridge"),
    ("clocksource switched", r"^clocksource: Switched to clocksource"),
    ("serial 8250 registered", r"^Serial: 8250/16550 driver"),
    ("ttyS0 found", r"ttyS0 at"),
    ("unused kernel memory freed", r"^Freeing unused kernel image"),
    ("init started", r"^Run /init as init process"),
]

LINE = re.compile(r"^(?P<vmm>[\w.-]+)\| dmesg-all: \[\s*(?P<t>\d+\.\d+)\] (?P<msg>.*)$")
ROUND = re.compile(r"^bench-boot: round (\d+)")
INITCALL = re.compile(r"^initcall (?P<fn>\S+) returned -?\d+ after (?P<us>\d+) usecs")


def parse(path):
    """{vmm: [run, ...]}, a run being {"milestones": {label: s}, "initcalls": {fn: us}}."""
    runs = defaultdict(list)
    current = {}
    with open(path, encoding="utf-8", errors="replace") as log:
        for raw in log:
            line = raw.rstrip("\r\n")
            if ROUND.match(line):
                current = {}
                continue
            m = LINE.match(line)
            if not m:
                continue
            vmm, t, msg = m["vmm"], float(m["t"]), m["msg"]
            run = current.get(vmm)
            if run is None:
                run = {"milestones": {}, "initcalls": defaultdict(int), "last": 0.0}
                current[vmm] = run
                runs[vmm].append(run)
            run["last"] = max(run["last"], t)
            for label, pattern in MILESTONES:
                if label not in run["milestones"] and re.search(pattern, msg):
                    run["milestones"][label] = t
            c = INITCALL.match(msg)
            if c:
                run["initcalls"][c["fn"]] += int(c["us"])
    return runs


def median(values):
    return statistics.median(values) if values else None


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: boot_profile.py LOG [TOP]")
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    runs = parse(sys.argv[1])
    if "tessera" not in runs:
        sys.exit(f"boot-profile: no tessera guest log in {sys.argv[1]} (VMMs seen: {sorted(runs)})")
    for peer in sorted(v for v in runs if v != "tessera"):
        pair = {v: runs[v] for v in ("tessera", peer)}
        print(f"boot-profile: tessera ({len(pair['tessera'])} runs) against {peer} "
              f"({len(pair[peer])} runs), medians of the guest kernel's timestamps")
        print(f"boot-profile: {'milestone':30} {'tessera_s':>10} {peer + '_s':>10} {'diff_ms':>8}")
        for label, _ in MILESTONES:
            a = median([r["milestones"][label] for r in pair["tessera"] if label in r["milestones"]])
            b = median([r["milestones"][label] for r in pair[peer] if label in r["milestones"]])
            diff = f"{(a - b) * 1000:8.0f}" if a is not None and b is not None else f"{'-':>8}"
            fa = f"{a:10.3f}" if a is not None else f"{'-':>10}"
            fb = f"{b:10.3f}" if b is not None else f"{'-':>10}"
            print(f"boot-profile: {label:30} {fa} {fb} {diff}")
        calls = defaultdict(lambda: {"tessera": [], peer: []})
        for vmm, rs in pair.items():
            for r in rs:
                for fn, us in r["initcalls"].items():
                    calls[fn][vmm].append(us)
        rows = []
        for fn, by in calls.items():
            a = median(by["tessera"]) or 0
            b = median(by[peer]) or 0
            rows.append((a - b, fn, a, b))
        total_a = sum(r[2] for r in rows)
        total_b = sum(r[3] for r in rows)
        print(f"boot-profile: initcalls in all: tessera {total_a / 1000:.0f} ms, "
              f"{peer} {total_b / 1000:.0f} ms; the {top} that differ most:")
        print(f"boot-profile: {'initcall':40} {'tessera_ms':>10} {peer + '_ms':>10} {'diff_ms':>8}")
        for diff, fn, a, b in sorted(rows, key=lambda r: -abs(r[0]))[:top]:
            print(f"boot-profile: {fn[:40]:40} {a / 1000:10.1f} {b / 1000:10.1f} {diff / 1000:8.1f}")


if __name__ == "__main__":
    main()
