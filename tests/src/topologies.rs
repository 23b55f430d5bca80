//! Topologies the judges are run on, each with what a guest must make of it.
//!
//! They are laid out to fit QEMU's q35 machine so that the Linux judge can boot them:
//! RAM from address 0 (QEMU's map with `-m` ≤ 2 GiB), APIC ids 0..n as QEMU assigns,
//! and Generic Initiator devices at free slots on bus 0 (`-device pci-testdev,addr=N`).

use crate::linux_judge::{boot, GuestReport, JudgeError, JudgeVm};
use tessera_acpi::{
    build, Bdf, Cpu, GenericInitiatorLink, HmatCache, HmatCacheAssociativity, HmatCacheWritePolicy,
    HmatDataType, HmatEntry, IntxPin, IntxRoute, MemoryRange, NumaNode, PciDevice, PciSegment,
    Placement, Topology, Window,
};

const MIB: u64 = 1 << 20;

/// A topology and the QEMU machine that matches it.
pub struct Case {
    /// Short name for messages.
    pub name: &'static str,
    /// The topology.
    pub topology: Topology,
    /// vCPUs QEMU must create (APIC ids 0..cpus).
    pub cpus: u32,
    /// RAM QEMU must have, in MiB; the topology's ranges cover exactly `[0, memory_mib)`.
    pub memory_mib: u64,
    /// QEMU `-device` arguments that put a PCI device at each BDF the GI links name.
    pub qemu_devices: Vec<String>,
}

/// Why a case could not be judged by Linux.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The topology was refused.
    #[error("building the tables: {0}")]
    Build(#[from] tessera_acpi::Error),
    /// The tables could not be written for QEMU.
    #[error("writing the tables: {0}")]
    Io(#[from] std::io::Error),
    /// The judge VM failed.
    #[error(transparent)]
    Judge(#[from] JudgeError),
}

impl Case {
    /// Boots the Linux judge with this case's SRAT, SLIT and HMAT (`-acpitable`) and a
    /// PCI device wherever a GI link needs one, and returns what the guest reported.
    pub fn boot_in_linux(&self) -> Result<GuestReport, CaseError> {
        let tables = build(&self.topology, Placement::default())?;
        let dir = tempfile::tempdir()?;
        let mut acpi_tables = Vec::new();
        for sig in ["SRAT", "SLIT", "HMAT"] {
            if let Some(table) = tables.get(sig) {
                let path = dir.path().join(format!("{sig}.dat"));
                std::fs::write(&path, &table.bytes)?;
                acpi_tables.push(path);
            }
        }
        // No VGA or NIC: they would take bus-0 slots the cases use.
        let mut extra_args: Vec<String> = ["-vga", "none", "-nic", "none"].map(String::from).into();
        for device in &self.qemu_devices {
            extra_args.push("-device".into());
            extra_args.push(device.clone());
        }
        Ok(boot(&JudgeVm {
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            acpi_tables,
            extra_args,
        })?)
    }
}

fn nodes(n: u32) -> Vec<NumaNode> {
    (0..n).map(|id| NumaNode { id }).collect()
}

fn ram(base_mib: u64, size_mib: u64, node: u32) -> MemoryRange {
    MemoryRange {
        base: base_mib * MIB,
        size: size_mib * MIB,
        node: Some(node),
        enabled: true,
        hotpluggable: false,
        non_volatile: false,
    }
}

fn device_at(id: &str, bus: u8, device: u8) -> PciDevice {
    PciDevice {
        id: id.to_string(),
        bdf: Bdf {
            segment: 0,
            bus,
            device,
            function: 0,
        },
    }
}

/// QEMU devices for GPUs at `0000:0N:00.0`, N = 1..=count: device 0, function 0 (NVIDIA's
/// driver only accepts GI handles with devfn 0), each behind its own root port at slot
/// 2 + N of bus 0. Firmware numbers the root ports' buses 1..=count in slot order.
fn gpus_behind_root_ports(count: u8) -> Vec<String> {
    (1..=count)
        .flat_map(|n| {
            [
                format!(
                    "pcie-root-port,id=rp{n},bus=pcie.0,chassis={n},addr={:#x}",
                    2 + n
                ),
                format!("pci-testdev,bus=rp{n},addr=0x0"),
            ]
        })
        .collect()
}

fn links(device: &str, nodes: std::ops::Range<u32>) -> Vec<GenericInitiatorLink> {
    nodes
        .map(|node| GenericInitiatorLink {
            device: device.to_string(),
            node,
        })
        .collect()
}

fn hmat(initiator: u32, target: u32, data_type: HmatDataType, value: u64) -> HmatEntry {
    HmatEntry {
        initiator,
        target,
        data_type,
        value,
    }
}

/// Distances: 10 on the diagonal, `cpu_remote` between CPU nodes, `far` otherwise.
fn distances(n: usize, cpu_nodes: usize, cpu_remote: u8, far: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| match (i == j, i < cpu_nodes && j < cpu_nodes) {
                    (true, _) => 10,
                    (false, true) => cpu_remote,
                    (false, false) => far,
                })
                .collect()
        })
        .collect()
}

/// One PCI segment shaped like a small q35 host bridge.
pub fn segment0() -> PciSegment {
    PciSegment {
        id: 0,
        ecam_base: 0xb000_0000,
        start_bus: 0,
        end_bus: 0xff,
        mmio32: Window {
            base: 0xc000_0000,
            size: 0x3ec0_0000,
        },
        mmio64: Some(Window {
            base: 0x80_0000_0000,
            size: 0x80_0000_0000,
        }),
        io: Some(Window {
            base: 0x1000,
            size: 0xf000,
        }),
        node: Some(0),
        intx_routes: (1..32u8)
            .flat_map(|device| {
                [IntxPin::A, IntxPin::B, IntxPin::C, IntxPin::D]
                    .into_iter()
                    .map(move |pin| IntxRoute {
                        device,
                        pin,
                        gsi: 16 + u32::from((device + pin.index()) % 8),
                    })
            })
            .collect(),
        hotplug_slots: Vec::new(),
    }
}

/// One node with one CPU and all memory.
pub fn one_node() -> Case {
    Case {
        name: "one node",
        topology: Topology {
            cpus: vec![Cpu {
                apic_id: 0,
                node: Some(0),
            }],
            nodes: nodes(1),
            memory: vec![ram(0, 512, 0)],
            pci_segments: vec![segment0()],
            ..Default::default()
        },
        cpus: 1,
        memory_mib: 512,
        qemu_devices: vec![],
    }
}

/// The seed's shape: 2 CPU nodes with memory, plus 16 CPU-less, memory-less nodes,
/// 8 linked by Generic Initiator to each of 2 devices at 01:00.0 and 02:00.0 (MIG on a
/// 2-GPU Grace Hopper).
/// Distances 10/20 between CPU nodes, 30 to and between GI nodes; HMAT latency and
/// bandwidth from every initiator, GI nodes included, to both memory nodes.
pub fn seed_shape() -> Case {
    let mut t = Topology {
        cpus: vec![
            Cpu {
                apic_id: 0,
                node: Some(0),
            },
            Cpu {
                apic_id: 1,
                node: Some(1),
            },
        ],
        nodes: nodes(18),
        memory: vec![ram(0, 256, 0), ram(256, 256, 1)],
        pci_segments: vec![segment0()],
        pci_devices: vec![device_at("gpu0", 1, 0), device_at("gpu1", 2, 0)],
        generic_initiators: [links("gpu0", 2..10), links("gpu1", 10..18)].concat(),
        distances: Some(distances(18, 2, 20, 30)),
        ..Default::default()
    };
    for initiator in 0..18u32 {
        for target in 0..2u32 {
            let local = initiator == target;
            let latency = if local {
                10
            } else if initiator < 2 {
                20
            } else {
                40
            };
            let bandwidth = if local {
                20_000
            } else if initiator < 2 {
                10_000
            } else {
                5_000
            };
            t.hmat.push(hmat(
                initiator,
                target,
                HmatDataType::AccessLatency,
                latency,
            ));
            t.hmat.push(hmat(
                initiator,
                target,
                HmatDataType::AccessBandwidth,
                bandwidth,
            ));
        }
    }
    Case {
        name: "seed shape: 2 CPU nodes + 16 GI nodes on 2 devices",
        topology: t,
        cpus: 2,
        memory_mib: 512,
        qemu_devices: gpus_behind_root_ports(2),
    }
}

/// 64 nodes: 2 CPU nodes with memory, 60 GI nodes (15 on each of 4 devices), and 2
/// memory-only nodes (coherent device memory) whose best initiator by HMAT is a GI node.
pub fn sixty_four_nodes() -> Case {
    let mut t = Topology {
        cpus: vec![
            Cpu {
                apic_id: 0,
                node: Some(0),
            },
            Cpu {
                apic_id: 1,
                node: Some(1),
            },
        ],
        nodes: nodes(64),
        memory: vec![
            ram(0, 256, 0),
            ram(256, 224, 1),
            ram(480, 48, 62),
            ram(528, 48, 63),
        ],
        pci_segments: vec![segment0()],
        pci_devices: (0..4u8)
            .map(|d| device_at(&format!("gpu{d}"), d + 1, 0))
            .collect(),
        generic_initiators: (0..4u32)
            .flat_map(|d| links(&format!("gpu{d}"), 2 + d * 15..2 + (d + 1) * 15))
            .collect(),
        distances: Some(distances(64, 2, 21, 40)),
        ..Default::default()
    };
    // Device memory 62 is closest to GI node 2 (gpu0), 63 to GI node 17 (gpu1).
    for (target, best) in [(62u32, 2u32), (63, 17)] {
        for initiator in [0u32, 1, best] {
            let latency = if initiator == best { 5 } else { 100 };
            t.hmat.push(hmat(
                initiator,
                target,
                HmatDataType::AccessLatency,
                latency,
            ));
        }
    }
    // Device memory 62 sits behind two levels of memory-side cache.
    for (level, size, line) in [(1u8, 8u64 << 20, 64u16), (2, 32 << 20, 128)] {
        t.hmat_caches.push(HmatCache {
            node: 62,
            size,
            level,
            associativity: HmatCacheAssociativity::Direct,
            policy: HmatCacheWritePolicy::WriteBack,
            line,
        });
    }
    Case {
        name: "64 nodes",
        topology: t,
        cpus: 2,
        memory_mib: 576,
        qemu_devices: gpus_behind_root_ports(4),
    }
}

/// 255 vCPUs over 4 nodes with APIC ids spaced by 2 (as with 2 threads per core
/// reserved), so ids reach 508 and need x2APIC structures in the MADT and SRAT.
pub fn x2apic_255() -> Case {
    Case {
        name: "255 vCPUs with x2APIC ids",
        topology: Topology {
            cpus: (0..255u32)
                .map(|i| Cpu {
                    apic_id: i * 2,
                    node: Some(i % 4),
                })
                .collect(),
            nodes: nodes(4),
            memory: (0..4).map(|n| ram(u64::from(n) * 512, 512, n)).collect(),
            pci_segments: vec![segment0()],
            ..Default::default()
        },
        cpus: 255,
        memory_mib: 2048,
        qemu_devices: vec![],
    }
}

/// No NUMA nodes at all: no SRAT, SLIT or HMAT.
pub fn non_numa() -> Case {
    Case {
        name: "non-NUMA",
        topology: Topology {
            cpus: (0..4u32)
                .map(|apic_id| Cpu {
                    apic_id,
                    node: None,
                })
                .collect(),
            memory: vec![MemoryRange {
                node: None,
                ..ram(0, 1024, 0)
            }],
            pci_segments: vec![PciSegment {
                node: None,
                ..segment0()
            }],
            ..Default::default()
        },
        cpus: 4,
        memory_mib: 1024,
        qemu_devices: vec![],
    }
}

/// Every case, for tests that judge them all.
pub fn all() -> Vec<Case> {
    vec![
        one_node(),
        seed_shape(),
        sixty_four_nodes(),
        x2apic_255(),
        non_numa(),
    ]
}
