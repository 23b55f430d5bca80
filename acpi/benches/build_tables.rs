//! Time to validate a topology and build every table, from a small VM (2 vCPUs, 2
//! nodes) up to 256 vCPUs, 64 nodes and 16 devices each linked by Generic Initiator to
//! 8 nodes (128 links), with a full distance matrix and HMAT: the cost curve
//! scripts/cost-curves.sh puts in docs/performance.md.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use tessera_acpi::{
    build, Bdf, Cpu, GenericInitiatorLink, HmatDataType, HmatEntry, MemoryRange, NumaNode,
    PciDevice, PciSegment, Placement, Topology, Window,
};

/// The sizes measured: (vCPUs, nodes, devices with 8 GI links each).
const SIZES: &[(u32, u32, u8)] = &[(2, 2, 0), (16, 8, 2), (64, 32, 8), (256, 64, 16)];

fn topology(vcpus: u32, nodes: u32, devices: u8) -> Topology {
    let cpu_nodes = nodes.min(8);
    let mut t = Topology {
        nodes: (0..nodes).map(|id| NumaNode { id }).collect(),
        ..Default::default()
    };
    t.cpus = (0..vcpus)
        .map(|i| Cpu {
            apic_id: i * 2,
            node: Some(i % cpu_nodes),
        })
        .collect();
    t.memory = (0..cpu_nodes)
        .map(|n| MemoryRange {
            // Above 4 GiB, clear of the 32-bit MMIO window and platform MMIO.
            base: (4 + u64::from(n)) << 30,
            size: 1 << 30,
            node: Some(n),
            enabled: true,
            hotpluggable: false,
            non_volatile: false,
        })
        .collect();
    t.pci_segments = vec![PciSegment {
        id: 0,
        ecam_base: 0xe000_0000,
        start_bus: 0,
        end_bus: 255,
        mmio32: Window {
            base: 0xc000_0000,
            size: 0x2000_0000,
        },
        mmio64: Some(Window {
            base: 1 << 40,
            size: 1 << 36,
        }),
        io: None,
        node: Some(0),
        intx_routes: Vec::new(),
        hotplug_slots: Vec::new(),
    }];
    t.pci_devices = (0..devices)
        .map(|d| PciDevice {
            id: format!("gpu{d}"),
            bdf: Bdf::new(0, 0, d + 1, 0).unwrap(),
        })
        .collect();
    for d in 0..u32::from(devices) {
        for k in 0..8u32 {
            t.generic_initiators.push(GenericInitiatorLink {
                device: format!("gpu{d}"),
                node: cpu_nodes + (d * 8 + k) % (nodes - cpu_nodes),
            });
        }
    }
    // Each device links to 8 consecutive GI nodes; pairs of devices can share nodes, so
    // drop repeated device:node links to keep the topology valid.
    let mut seen = std::collections::HashSet::new();
    t.generic_initiators
        .retain(|l| seen.insert((l.device.clone(), l.node)));
    t.distances = Some(
        (0..nodes)
            .map(|i| {
                (0..nodes)
                    .map(|j| {
                        if i == j {
                            10
                        } else {
                            20 + ((i + j) % 40) as u8
                        }
                    })
                    .collect()
            })
            .collect(),
    );
    for i in 0..nodes {
        for m in 0..cpu_nodes {
            t.hmat.push(HmatEntry {
                initiator: i,
                target: m,
                data_type: HmatDataType::AccessLatency,
                value: 100 + u64::from(i + m) * 10,
            });
            t.hmat.push(HmatEntry {
                initiator: i,
                target: m,
                data_type: HmatDataType::AccessBandwidth,
                value: 1000 * u64::from(1 + (i + m) % 50),
            });
        }
    }
    t
}

fn bench(c: &mut Criterion) {
    for &(vcpus, nodes, devices) in SIZES {
        let t = topology(vcpus, nodes, devices);
        build(&t, Placement::default()).expect("the benchmark topology is valid");
        let links = t.generic_initiators.len();
        c.bench_function(
            &format!("acpi-build vcpus={vcpus} nodes={nodes} gi_links={links}"),
            |b| b.iter(|| build(std::hint::black_box(&t), Placement::default())),
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
