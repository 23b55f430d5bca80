//! Device memory as a NUMA node, end to end in the nested test host: L0's QEMU gives L1
//! an `ivshmem-plain` device whose BAR 2 is 128 MiB of plain RAM; L1 binds it to vfio-pci
//! and tessera (under L1's KVM) makes that BAR node 2's memory, with the device as node
//! 2's Generic Initiator. L2's Linux is the judge: node 2 is in `has_memory` with the
//! BAR's size (one 128 MiB memory block, MemTotal the BAR less the node's own struct
//! pages), the device's BAR 2 is hidden from it, and 16 MiB allocated on node 2, written
//! and read back, sit in the BAR's guest-physical range. After L2 powers off, L1 finds
//! the guest's bytes in the ivshmem BAR itself.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeMap;

use tessera_tests::linux_judge::{images, parse_report};
use tessera_tests::nested;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const CMDLINE: &str = "console=ttyS0 panic=-1 loglevel=4 judge.devmem=2";
const MIB: u64 = 1 << 20;
/// ivshmem's BAR 2: the size of L0's memory backend.
const BAR_SIZE: u64 = 128 * MIB;
/// Where tessera puts the first device memory after 512 MiB of RAM: 4 GiB.
const GUEST_ADDRESS: u64 = 1 << 32;

/// L0's extra devices: 128 MiB of RAM behind an ivshmem-plain's BAR 2.
const L0_ARGS: &[&str] = &[
    "-object",
    "memory-backend-ram,id=ivmem,size=128M",
    "-device",
    "ivshmem-plain,memdev=ivmem",
];

/// Counts, in L1, the pages of the ivshmem BAR that start with the tag `pci-bar
/// node-memory` writes (memory decoding turned on first: vfio-pci restores the command
/// register it found when tessera closes the device).
const COUNT_TAGS_PY: &str = r#"
import mmap, os, sys
dev = "/sys/bus/pci/devices/" + sys.argv[1]
with open(dev + "/config", "r+b") as c:
    c.seek(4); cmd = int.from_bytes(c.read(2), "little")
    c.seek(4); c.write((cmd | 2).to_bytes(2, "little"))
fd = os.open(dev + "/resource2", os.O_RDWR | os.O_SYNC)
m = mmap.mmap(fd, 128 << 20)
tag = b"TESSERA-DEVMEM-1"
print("l1-tagged-pages=%d" % sum(1 for o in range(0, 128 << 20, 4096) if m[o:o + 16] == tag))
"#;

/// The `devmem.KEY=VALUE` lines L2 printed between its DEVMEM markers.
fn devmem_report(console: &str) -> BTreeMap<String, String> {
    let start = console
        .find("TESSERA-DEVMEM-BEGIN")
        .unwrap_or_else(|| panic!("L2 printed no device-memory report:\n{console}"));
    let end = console[start..]
        .find("TESSERA-DEVMEM-END")
        .unwrap_or_else(|| panic!("the device-memory report is cut short:\n{console}"));
    console[start..start + end]
        .lines()
        .filter_map(|l| l.trim().strip_prefix("devmem."))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `pages=N on_node=K readback=ok phys=0xLOW-0xHIGH` as key → value.
fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

#[test]
fn an_ivshmem_bar_is_node_2s_memory_in_l2() {
    let judge = images().unwrap();
    let script = format!(
        ". \"$HOST{REPO}/scripts/l1-vfio.sh\"\n\
         ivs=\n\
         for d in /sys/bus/pci/devices/*; do\n\
           [ \"$(cat $d/vendor):$(cat $d/device)\" = 0x1af4:0x1110 ] && ivs=${{d##*/}}\n\
         done\n\
         [ -n \"$ivs\" ] || {{ echo 'no ivshmem device in L1'; exit 1; }}\n\
         echo \"l1-ivshmem=$ivs bar2=$(sed -n 3p /sys/bus/pci/devices/$ivs/resource)\"\n\
         vfio_bind $ivs >/dev/null || exit 1\n\
         in-host {TESSERA} -v --kernel {kernel} --initramfs {initramfs} --cmdline '{CMDLINE}' \
           --cpus boot=2 --memory size=0 --memory-zone id=m0,size=256M id=m1,size=256M \
           --numa guest_numa_id=0,cpus=[0],memory_zones=m0 \
                  guest_numa_id=1,cpus=[1],memory_zones=m1 guest_numa_id=2 \
           --device id=ivs0,path=/sys/bus/pci/devices/$ivs \
           --generic-initiator device=ivs0,node=2 \
           --device-memory device=ivs0,bar=2,node=2\n\
         echo \"tessera-exit=$?\"\n\
         echo \"l1-after: driver=$(driver_of $ivs)\"\n\
         cat >/run/tmp/count.py <<'PY'\n{COUNT_TAGS_PY}PY\n\
         in-host python3 /run/tmp/count.py $ivs\n",
        kernel = judge.vmlinuz.display(),
        initramfs = judge.initramfs.display(),
    );
    let run = nested::run(&script, L0_ARGS).unwrap();
    let console = run.console;
    assert_eq!(run.status, 0, "{console}");
    assert!(console.contains("tessera-exit=0"), "{console}");
    assert!(console.contains("l1-after: driver=vfio-pci"), "{console}");

    // tessera's own account (-v): the BAR is a KVM slot at 4 GiB; whether the IOMMU took
    // it too (L1's emulated VT-d may refuse device memory) is reported, not required.
    let mapped = format!("BAR 2 is guest RAM at {GUEST_ADDRESS:#x}+{BAR_SIZE:#x}");
    let line = console
        .lines()
        .find(|l| l.contains(&mapped))
        .unwrap_or_else(|| panic!("tessera did not say it mapped the BAR:\n{console}"));
    eprintln!("L1 tessera: {}", line.trim());
    for l in console.lines().filter(|l| l.contains("peer-to-peer")) {
        eprintln!("L1 tessera: {}", l.trim());
    }

    let numa = parse_report(&console)
        .unwrap()
        .unwrap_or_else(|| panic!("L2 printed no NUMA report:\n{console}"));
    let dmesg = numa.dmesg.join("\n");
    for line in numa
        .dmesg
        .iter()
        .filter(|l| l.contains("SRAT") || l.contains("NUMA"))
    {
        eprintln!("L2 dmesg: {line}");
    }
    eprintln!(
        "L2: has_cpu={:?} has_memory={:?} has_generic_initiator={:?} node2.distance={:?} \
         node2.memtotal_kb={}",
        numa.has_cpu,
        numa.has_memory,
        numa.has_generic_initiator,
        numa.nodes[&2].distances,
        numa.nodes[&2].memtotal_kb
    );
    assert_eq!(numa.has_cpu, vec![0, 1], "{dmesg}");
    assert_eq!(numa.has_memory, vec![0, 1, 2], "{dmesg}");
    assert_eq!(numa.has_generic_initiator, vec![2], "{dmesg}");
    // Equally far from both CPU nodes: the default device-memory distance.
    assert_eq!(numa.nodes[&2].distances, vec![40, 40, 10], "{dmesg}");
    assert_eq!(numa.nodes[&0].distances, vec![10, 20, 40], "{dmesg}");

    let d = devmem_report(&console);
    for (k, v) in &d {
        eprintln!("L2: devmem.{k}={v}");
    }
    // The node's memory is the BAR: whole 128 MiB memory blocks from 4 GiB; MemTotal is
    // that less what the kernel keeps for itself there (the node's struct pages, 2 MiB).
    let block = u64::from_str_radix(&d["block_size"], 16).unwrap();
    let blocks: Vec<u64> = d["blocks"].split(',').map(|b| b.parse().unwrap()).collect();
    let first = GUEST_ADDRESS / block;
    assert_eq!(
        blocks,
        (first..first + BAR_SIZE / block).collect::<Vec<_>>(),
        "node 2's memory blocks"
    );
    let memtotal = d["memtotal_kb"].parse::<u64>().unwrap() * 1024;
    assert!(
        (BAR_SIZE - 8 * MIB..=BAR_SIZE).contains(&memtotal),
        "node 2's MemTotal {memtotal:#x} is not the BAR's {BAR_SIZE:#x}"
    );
    // The guest's view of the device: BAR 2 is not there.
    let bar2: Vec<&String> = d
        .iter()
        .filter(|(k, _)| k.starts_with("ivshmem.") && k.ends_with(".bar2"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        bar2,
        vec!["0x0000000000000000 0x0000000000000000 0x0000000000000000"],
        "{d:?}"
    );
    // 16 MiB on node 2, written and read back, every page in the BAR's guest range.
    assert_eq!(d["fill_exit"], "0", "{d:?}");
    let fill = fields(&d["fill"]);
    assert_eq!(fill["readback"], "ok", "{d:?}");
    assert_eq!(fill["pages"], fill["on_node"], "{d:?}");
    let (low, high) = fill["phys"].split_once('-').unwrap();
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    assert!(
        hex(low) >= GUEST_ADDRESS && hex(high) <= GUEST_ADDRESS + BAR_SIZE,
        "pages outside the BAR: {d:?}"
    );

    // And L1 sees the guest's bytes in the device's own memory.
    let tagged: u64 = console
        .lines()
        .find_map(|l| l.trim().strip_prefix("l1-tagged-pages="))
        .unwrap_or_else(|| panic!("L1 did not count the BAR's pages:\n{console}"))
        .parse()
        .unwrap();
    eprintln!("L1: l1-tagged-pages={tagged}");
    // Every page, unless the guest reused one before it powered off (its allocator
    // zeroes pages it hands out again).
    let pages: u64 = fill["pages"].parse().unwrap();
    assert!(
        tagged <= pages && tagged * 10 >= pages * 9,
        "{tagged} of {pages} pages:\n{console}"
    );
}
