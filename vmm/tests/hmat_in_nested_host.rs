//! HMAT from the command line, judged by Linux in L2: tessera runs in L1 under L1's KVM
//! with `--hmat-lb` values from two CPU nodes and a Generic Initiator node to the memory
//! nodes, and what L2's kernel reports under `nodeN/access0` and `nodeN/access1` must be
//! what those values say; so must its `memory_side_cache` of node 3 (`--hmat-cache`).
//!
//! Linux's rules (drivers/acpi/numa/hmat.c, 6.1): a memory node whose HMAT Memory
//! Proximity Domain Attributes name an attached initiator (tessera's tables do so for a
//! node with its own vCPUs, as QEMU's) gets that node as its only initiator, with that
//! node's values, in both classes. Any other memory node gets the best initiators by
//! every given data type: from all of them (GI nodes included) in access0, from CPU
//! nodes only in access1.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use tessera_tests::linux_judge::{images, parse_report, GuestReport};
use tessera_tests::nested;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 loglevel=4";

/// Runs `tessera ARGS` in L1 with the judge's kernel and initramfs and returns what L2
/// reported, after checking that the guest's poweroff ended tessera with 0.
fn judge_in_l2(args: &str) -> GuestReport {
    let judge = images().unwrap();
    let script = format!(
        "in-host {TESSERA} --kernel {} --initramfs {} --cmdline '{CMDLINE}' {args}\n\
         echo \"tessera-exit=$?\"\n",
        judge.vmlinuz.display(),
        judge.initramfs.display(),
    );
    let run = nested::run(&script, &[]).unwrap();
    let console = run.console;
    assert!(console.contains("tessera-exit=0"), "{console}");
    parse_report(&console)
        .unwrap_or_else(|e| panic!("{e}:\n{console}"))
        .unwrap_or_else(|| panic!("L2 printed no report:\n{console}"))
}

/// `--hmat-lb` values: read latency (ns) and read bandwidth (QEMU's SIZE, bytes/s) from
/// `initiator` to `target`.
fn read_values(initiator: u32, target: u32, latency_ns: u64, bandwidth: &str) -> String {
    format!(
        "initiator={initiator},target={target},hierarchy=memory,data-type=read-latency,latency={latency_ns} \
         initiator={initiator},target={target},hierarchy=memory,data-type=read-bandwidth,bandwidth={bandwidth}"
    )
}

#[test]
fn l2_reports_the_configured_hmat_for_cpu_and_gi_initiators() {
    // Nodes 0 and 1: a vCPU and 256 MiB each. Node 2: the Generic Initiator of an empty
    // GI-ready slot (where a GPU would be hot-added), no memory. Node 3: 128 MiB of
    // memory only, as a device's memory would be. Linux numbers processor and GI
    // domains before memory-only ones, so its node numbers are ours.
    let values = [
        read_values(0, 0, 10, "20G"),
        read_values(0, 1, 20, "10G"),
        read_values(1, 1, 10, "20G"),
        read_values(1, 0, 20, "10G"),
        read_values(2, 0, 30, "5G"),
        read_values(2, 1, 30, "5G"),
        // To node 3: the GI node is best; among CPU nodes, node 0.
        read_values(0, 3, 40, "10G"),
        read_values(1, 3, 50, "5G"),
        read_values(2, 3, 5, "100G"),
    ]
    .join(" ");
    let r = judge_in_l2(&format!(
        "--cpus boot=2 --memory size=0 \
         --memory-zone id=m0,size=256M id=m1,size=256M id=m3,size=128M \
         --numa guest_numa_id=0,cpus=[0],memory_zones=m0 guest_numa_id=1,cpus=[1],memory_zones=m1 \
                guest_numa_id=2 guest_numa_id=3,memory_zones=m3 \
         --platform num_pci_segments=2 \
         --pci-slot id=gpu0,pci_segment=1,pci_device_id=0 \
         --generic-initiator device=gpu0,nodes=2 \
         --hmat-lb {values} \
         --hmat-cache node-id=3,size=8M,level=1,associativity=direct,policy=write-back,line=64 \
                      node-id=3,size=32M,level=2,associativity=complex,policy=write-through,line=128"
    ));
    let dmesg = r.dmesg.join("\n");
    // What L2 reported, for the record (visible with --nocapture).
    for line in r.raw.lines().map(str::trim) {
        if line.contains(".access")
            || line.contains(".cache")
            || line.starts_with("has_")
            || line.contains("HMAT")
        {
            eprintln!("L2: {line}");
        }
    }
    assert_eq!(r.has_cpu, vec![0, 1], "{dmesg}");
    assert_eq!(r.has_generic_initiator, vec![2], "{dmesg}");
    assert_eq!(r.has_memory, vec![0, 1, 3], "{dmesg}");

    // CPU nodes with memory: their own vCPUs' node, 10 ns and 20 GiB/s = 20480 MB/s,
    // in both classes.
    for node in [0u32, 1] {
        for (class, access) in [
            ("access0", &r.nodes[&node].access0),
            ("access1", &r.nodes[&node].access1),
        ] {
            let a = access
                .as_ref()
                .unwrap_or_else(|| panic!("node{node} has no {class}:\n{dmesg}"));
            assert_eq!(a.initiators, vec![node], "node{node} {class}");
            assert_eq!(a.read_latency, Some(10), "node{node} {class}");
            assert_eq!(a.read_bandwidth, Some(20 << 10), "node{node} {class}");
        }
    }

    // The memory-only node: best of all initiators is the GI node (5 ns, 100 GiB/s);
    // best of the CPU nodes is node 0 (40 ns, 10 GiB/s).
    let n3 = &r.nodes[&3];
    let a0 = n3.access0.as_ref().unwrap_or_else(|| panic!("{dmesg}"));
    assert_eq!(a0.initiators, vec![2], "node3 access0");
    assert_eq!(a0.read_latency, Some(5), "node3 access0");
    assert_eq!(a0.read_bandwidth, Some(100 << 10), "node3 access0");
    let a1 = n3.access1.as_ref().unwrap_or_else(|| panic!("{dmesg}"));
    assert_eq!(a1.initiators, vec![0], "node3 access1");
    assert_eq!(a1.read_latency, Some(40), "node3 access1");
    assert_eq!(a1.read_bandwidth, Some(10 << 10), "node3 access1");

    // Seen from the initiators: the GI node is node 3's access0 initiator only; node 0
    // is its own and (among CPUs) node 3's.
    let gi = r.nodes[&2]
        .access0
        .as_ref()
        .unwrap_or_else(|| panic!("{dmesg}"));
    assert_eq!(gi.targets, vec![3], "node2 access0 targets");
    assert!(
        r.nodes[&2].access1.is_none(),
        "a GI node is no access1 initiator"
    );
    let n0 = &r.nodes[&0];
    assert_eq!(
        n0.access0.as_ref().unwrap().targets,
        vec![0],
        "node0 access0"
    );
    assert_eq!(
        n0.access1.as_ref().unwrap().targets,
        vec![0, 3],
        "node0 access1"
    );
    assert_eq!(
        r.nodes[&1].access1.as_ref().unwrap().targets,
        vec![1],
        "node1"
    );

    // Node 3's memory-side caches. Linux's codes: indexing 0 direct-mapped, 1 indexed
    // (complex); write_policy 0 write-back, 1 write-through.
    let caches = &r.nodes[&3].caches;
    assert_eq!(
        caches.keys().copied().collect::<Vec<_>>(),
        vec![1, 2],
        "{caches:?}"
    );
    let got = |level: u32| {
        let c = &caches[&level];
        (c.size, c.line_size, c.indexing, c.write_policy)
    };
    assert_eq!(got(1), (Some(8 << 20), Some(64), Some(0), Some(0)));
    assert_eq!(got(2), (Some(32 << 20), Some(128), Some(1), Some(1)));
    assert!(r.nodes[&0].caches.is_empty());
}
