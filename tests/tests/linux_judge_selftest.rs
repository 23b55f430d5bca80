//! Self-test of the Linux judge: boots it WITHOUT Tessera's tables, using QEMU's own
//! NUMA (and HMAT) options, and checks the judge reports exactly what QEMU declared.
//! If this fails, the judge is broken, not the ACPI crate.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::time::Instant;
use tessera_tests::linux_judge::{boot, images, GuestReport, JudgeVm};

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn boot_timed(name: &str, vm: &JudgeVm) -> GuestReport {
    images().unwrap();
    let start = Instant::now();
    let report = boot(vm).unwrap();
    eprintln!("{name}: judge boot took {:.1?}", start.elapsed());
    report
}

fn assert_plausible_memtotal(report: &GuestReport, node: u32) {
    let kb = report.nodes[&node].memtotal_kb;
    assert!(
        (150_000..=262_144).contains(&kb),
        "node{node} MemTotal {kb} kB"
    );
}

#[test]
fn qemu_two_nodes() {
    let vm = JudgeVm {
        cpus: 2,
        memory_mib: 512,
        acpi_tables: Vec::new(),
        extra_args: args(
            "-object memory-backend-ram,id=m0,size=256M \
             -object memory-backend-ram,id=m1,size=256M \
             -numa node,nodeid=0,cpus=0,memdev=m0 \
             -numa node,nodeid=1,cpus=1,memdev=m1 \
             -numa dist,src=0,dst=1,val=20",
        ),
    };
    let r = boot_timed("qemu_two_nodes", &vm);
    for list in [&r.possible, &r.online, &r.has_cpu, &r.has_memory] {
        assert_eq!(list, &vec![0, 1]);
    }
    assert!(r.has_generic_initiator.is_empty());
    assert_eq!(r.nodes.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(r.nodes[&0].cpus, vec![0]);
    assert_eq!(r.nodes[&1].cpus, vec![1]);
    assert_eq!(r.nodes[&0].distances, vec![10, 20]);
    assert_eq!(r.nodes[&1].distances, vec![20, 10]);
    assert_plausible_memtotal(&r, 0);
    assert_plausible_memtotal(&r, 1);
    // No HMAT: no access classes.
    assert!(r
        .nodes
        .values()
        .all(|n| n.access0.is_none() && n.access1.is_none()));
    // QEMU's PCI root has no _PXM: every device is on no node.
    assert!(r.pci_numa.contains_key("0000:00:00.0"));
    assert!(r.pci_numa.values().all(|&n| n == -1), "{:?}", r.pci_numa);
    assert!(r
        .dmesg
        .iter()
        .any(|l| l.contains("SRAT: PXM 1 -> APIC 0x01 -> Node 1")));
}

#[test]
fn qemu_hmat_with_cpuless_node() {
    let mut lb = String::new();
    // (initiator, target, latency ns, bandwidth MB/s)
    for (i, t, lat, bw) in [
        (0, 0, 10, 10240),
        (0, 1, 20, 5120),
        (0, 2, 30, 2048),
        (1, 0, 20, 5120),
        (1, 1, 10, 10240),
        (1, 2, 40, 1024),
    ] {
        lb += &format!(
            " -numa hmat-lb,initiator={i},target={t},hierarchy=memory,data-type=access-latency,latency={lat} \
              -numa hmat-lb,initiator={i},target={t},hierarchy=memory,data-type=access-bandwidth,bandwidth={bw}M"
        );
    }
    let vm = JudgeVm {
        cpus: 2,
        memory_mib: 768,
        acpi_tables: Vec::new(),
        extra_args: args(&format!(
            "-machine hmat=on \
             -object memory-backend-ram,id=m0,size=256M \
             -object memory-backend-ram,id=m1,size=256M \
             -object memory-backend-ram,id=m2,size=256M \
             -numa node,nodeid=0,cpus=0,memdev=m0 \
             -numa node,nodeid=1,cpus=1,memdev=m1 \
             -numa node,nodeid=2,memdev=m2,initiator=0 \
             -numa dist,src=0,dst=1,val=20 -numa dist,src=0,dst=2,val=30 \
             -numa dist,src=1,dst=2,val=25 {lb}"
        )),
    };
    let r = boot_timed("qemu_hmat_with_cpuless_node", &vm);
    assert_eq!(r.possible, vec![0, 1, 2]);
    assert_eq!(r.online, vec![0, 1, 2]);
    assert_eq!(r.has_cpu, vec![0, 1]);
    assert_eq!(r.has_memory, vec![0, 1, 2]);
    assert!(r.nodes[&2].cpus.is_empty());
    assert_eq!(r.nodes[&0].distances, vec![10, 20, 30]);
    assert_eq!(r.nodes[&1].distances, vec![20, 10, 25]);
    assert_eq!(r.nodes[&2].distances, vec![30, 25, 10]);
    for n in 0..3 {
        assert_plausible_memtotal(&r, n);
    }
    // Node 0 is the best initiator of itself and of the CPU-less node 2.
    let a = r.nodes[&0].access0.as_ref().unwrap();
    assert_eq!(
        (a.initiators.clone(), a.targets.clone()),
        (vec![0], vec![0, 2])
    );
    assert_eq!((a.read_latency, a.read_bandwidth), (Some(10), Some(10240)));
    let a = r.nodes[&1].access0.as_ref().unwrap();
    assert_eq!(
        (a.initiators.clone(), a.targets.clone()),
        (vec![1], vec![1])
    );
    let a = r.nodes[&2].access0.as_ref().unwrap();
    assert_eq!(a.initiators, vec![0]);
    assert!(a.targets.is_empty());
    assert_eq!((a.read_latency, a.write_latency), (Some(30), Some(30)));
    assert_eq!(
        (a.read_bandwidth, a.write_bandwidth),
        (Some(2048), Some(2048))
    );
    assert_eq!(r.nodes[&2].access1, r.nodes[&2].access0);
}
