//! Linux judges our SRAT, SLIT and HMAT: Debian's cloud kernel boots under QEMU (TCG)
//! with our tables passed in by `-acpitable`, with PCI devices at the BDFs the GI links
//! name, and what it reports in /sys/devices/system/node must equal the topology.
//!
//! QEMU adds no SRAT, SLIT or HMAT of its own without `-numa`; its MADT lists APIC ids
//! 0..cpus, which the fixture topologies use.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::collections::BTreeMap;
use std::time::Instant;

use tessera_acpi::linux_node_numbering;
use tessera_tests::linux_judge::GuestReport;
use tessera_tests::topologies::{self, Case};

fn range(r: std::ops::Range<u32>) -> Vec<u32> {
    r.collect()
}

/// Boots the case with our SRAT, SLIT and HMAT and returns what Linux reported, after
/// checking what every case must satisfy: Linux numbers the nodes as
/// `linux_node_numbering` predicts, and each node's CPUs, distances and memory are the
/// topology's. Reports are keyed by Linux's node ids.
fn judge(case: &Case) -> GuestReport {
    let t = &case.topology;
    let numbering: BTreeMap<u32, u32> = linux_node_numbering(t)
        .into_iter()
        .filter_map(|(pxm, node)| node.map(|n| (pxm, n)))
        .collect();

    let start = Instant::now();
    let report = case
        .boot_in_linux()
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    eprintln!("{}: judge boot took {:.1?}", case.name, start.elapsed());

    // Every BDF a GI link names is a real device in the guest.
    for link in &t.generic_initiators {
        let d = t.pci_devices.iter().find(|d| d.id == link.device).unwrap();
        assert!(
            report.pci_numa.contains_key(&d.bdf.to_string()),
            "{}: no device at {} in the guest: {:?}",
            case.name,
            d.bdf,
            report.pci_numa.keys()
        );
    }

    let mut expected_nodes: Vec<u32> = numbering.values().copied().collect();
    expected_nodes.sort_unstable();
    assert_eq!(
        report.nodes.keys().copied().collect::<Vec<_>>(),
        expected_nodes,
        "{}: nodes",
        case.name
    );
    let mut cpus: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for cpu in &t.cpus {
        cpus.entry(numbering[&cpu.node.unwrap()])
            .or_default()
            .push(cpu.apic_id);
    }
    for (&pxm, &node) in &numbering {
        let guest = &report.nodes[&node];
        assert_eq!(
            guest.cpus,
            cpus.get(&node).cloned().unwrap_or_default(),
            "{}: node{node} cpulist",
            case.name
        );
        // Linux orders a distance row by its own node ids.
        let mut row: Vec<(u32, u32)> = numbering
            .iter()
            .map(|(&to_pxm, &to)| {
                let d = t
                    .distances
                    .as_ref()
                    .map_or(if pxm == to_pxm { 10 } else { 20 }, |m| {
                        m[pxm as usize][to_pxm as usize]
                    });
                (to, u32::from(d))
            })
            .collect();
        row.sort_unstable();
        let row: Vec<u32> = row.into_iter().map(|(_, d)| d).collect();
        assert_eq!(guest.distances, row, "{}: node{node} distance", case.name);
    }
    // Memory per node: what the SRAT gives, less what the kernel keeps for itself.
    for range in &t.memory {
        let node = numbering[&range.node.unwrap()];
        let kb = report.nodes[&node].memtotal_kb;
        let given_kb = range.size / 1024;
        assert!(
            kb <= given_kb && kb >= given_kb * 7 / 10,
            "{}: node{node} MemTotal {kb} kB of {given_kb} kB",
            case.name
        );
    }
    report
}

/// The fixtures are laid out so that Linux keeps our node numbers.
fn assert_identity_numbering(case: &Case) {
    let identity: Vec<(u32, Option<u32>)> = (0..case.topology.nodes.len() as u32)
        .map(|n| (n, Some(n)))
        .collect();
    assert_eq!(
        linux_node_numbering(&case.topology),
        identity,
        "{}",
        case.name
    );
}

#[test]
fn linux_sees_one_node() {
    let case = topologies::one_node();
    assert_identity_numbering(&case);
    let r = judge(&case);
    for set in [&r.possible, &r.online, &r.has_cpu, &r.has_memory] {
        assert_eq!(set, &vec![0]);
    }
    assert!(r.has_generic_initiator.is_empty());
}

#[test]
fn linux_sees_the_seed_shape() {
    let case = topologies::seed_shape();
    assert_identity_numbering(&case);
    let r = judge(&case);
    assert_eq!(r.possible, range(0..18));
    assert_eq!(r.online, range(0..18));
    assert_eq!(r.has_cpu, vec![0, 1]);
    assert_eq!(r.has_memory, vec![0, 1]);
    assert_eq!(r.has_generic_initiator, range(2..18));
    assert_eq!(r.nodes.keys().copied().collect::<Vec<_>>(), range(0..18));
    // HMAT: each memory node's best initiator is its own CPU node, 10 ns, 20000 MB/s.
    for node in [0u32, 1] {
        let a0 = r.nodes[&node].access0.as_ref().unwrap();
        assert_eq!(a0.initiators, vec![node], "node{node} access0 initiators");
        assert_eq!(a0.targets, vec![node], "node{node} access0 targets");
        assert_eq!(a0.read_latency, Some(10));
        assert_eq!(a0.write_latency, Some(10));
        assert_eq!(a0.read_bandwidth, Some(20_000));
    }
    // The GI nodes are initiators of nothing best-in-class.
    for node in 2..18u32 {
        assert!(r.nodes[&node].access0.is_none(), "node{node} has access0");
    }
}

#[test]
fn linux_sees_64_nodes_and_gi_nodes_as_best_initiators() {
    let case = topologies::sixty_four_nodes();
    assert_identity_numbering(&case);
    let r = judge(&case);
    assert_eq!(r.possible, range(0..64));
    assert_eq!(r.online, range(0..64));
    assert_eq!(r.has_cpu, vec![0, 1]);
    assert_eq!(r.has_memory, vec![0, 1, 62, 63]);
    assert_eq!(r.has_generic_initiator, range(2..62));
    // Device memory 62 and 63 are closest to GI nodes 2 and 17 (access0 counts every
    // initiator); among CPU initiators only (access1) nodes 0 and 1 tie.
    for (target, best) in [(62u32, 2u32), (63, 17)] {
        let node = &r.nodes[&target];
        let a0 = node.access0.as_ref().unwrap();
        assert_eq!(a0.initiators, vec![best], "node{target} access0");
        assert_eq!(a0.read_latency, Some(5));
        let a1 = node.access1.as_ref().unwrap();
        assert_eq!(a1.initiators, vec![0, 1], "node{target} access1");
        assert_eq!(a1.read_latency, Some(100));
        let gi = r.nodes[&best].access0.as_ref().unwrap();
        assert_eq!(gi.targets, vec![target], "node{best} access0 targets");
    }
    // Node 62's memory-side caches: direct-mapped (indexing 0), write-back (policy 0).
    let caches = &r.nodes[&62].caches;
    assert_eq!(
        caches.keys().copied().collect::<Vec<_>>(),
        vec![1, 2],
        "{caches:?}"
    );
    for (level, size, line) in [(1u32, 8u64 << 20, 64u64), (2, 32 << 20, 128)] {
        let c = &caches[&level];
        assert_eq!(c.size, Some(size), "level {level}");
        assert_eq!(c.line_size, Some(line), "level {level}");
        assert_eq!(
            (c.indexing, c.write_policy),
            (Some(0), Some(0)),
            "level {level}"
        );
    }
    assert!(r.nodes[&63].caches.is_empty());
}

#[test]
fn linux_numbers_nodes_as_predicted_when_a_memory_only_node_comes_first() {
    // Node 1 has only memory, node 2 only a Generic Initiator: Linux maps processor and
    // GI domains before memory domains, so our node 2 becomes its node 1 and vice versa.
    let mut case = topologies::one_node();
    let t = &mut case.topology;
    t.nodes = (0..3).map(|id| tessera_acpi::NumaNode { id }).collect();
    t.memory[0].size = 256 << 20;
    t.memory.push(tessera_acpi::MemoryRange {
        base: 256 << 20,
        node: Some(1),
        ..t.memory[0]
    });
    t.pci_devices.push(tessera_acpi::PciDevice {
        id: "nic".into(),
        bdf: "0000:00:03.0".parse().unwrap(),
    });
    t.generic_initiators
        .push(tessera_acpi::GenericInitiatorLink {
            device: "nic".into(),
            node: 2,
        });
    t.distances = Some(vec![vec![10, 20, 30], vec![20, 10, 40], vec![30, 40, 10]]);
    case.qemu_devices = vec!["pci-testdev,addr=0x3".into()];
    assert_eq!(
        linux_node_numbering(&case.topology),
        vec![(0, Some(0)), (1, Some(2)), (2, Some(1))]
    );

    let r = judge(&case);
    assert_eq!(r.has_memory, vec![0, 2]);
    assert_eq!(r.has_generic_initiator, vec![1]);
}
