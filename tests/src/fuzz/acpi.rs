//! Topology → `tessera_acpi::build` → `tessera_acpi::decode`: what is decoded from the
//! tables built must be what the topology said (CPU and memory affinity, Generic
//! Initiators, distances, HMAT values). Topologies are generated to be mostly valid (a
//! refused one is fine: refusing is an answer, panicking is not). One case in five feeds
//! raw bytes, behind a correct header, to the decoders instead.

use arbitrary::{Arbitrary, Unstructured};

use super::Many;
use tessera_acpi::decode::{decode_hmat, decode_slit, decode_srat};
use tessera_acpi::{
    build, Bdf, Cpu, GenericInitiatorLink, HmatDataType, HmatEntry, IntxPin, IntxRoute,
    MemoryRange, NumaNode, PciDevice, PciHotplug, PciHotplugRegisters, PciSegment, Placement,
    Topology, Window,
};

const MIB: u64 = 1 << 20;

#[derive(Arbitrary, Debug)]
struct Gen {
    nodes: u8,
    cpus: Many<(u16, u8, bool)>,
    /// (size in MiB, node, above 4 GiB, hotpluggable, non-volatile, enabled).
    memory: Many<(u16, u8, bool, bool, bool, bool)>,
    segments: u8,
    segment_nodes: [u8; 4],
    /// (segment, device, function).
    devices: Many<(u8, u8, u8)>,
    /// (device, node).
    links: Many<(u8, u8)>,
    distances: Option<Many<u8>>,
    symmetric: bool,
    hmat: Many<(u8, u8, u8, u32)>,
    hotplug: Option<[u32; 4]>,
}

const TYPES: [HmatDataType; 6] = [
    HmatDataType::AccessLatency,
    HmatDataType::ReadLatency,
    HmatDataType::WriteLatency,
    HmatDataType::AccessBandwidth,
    HmatDataType::ReadBandwidth,
    HmatDataType::WriteBandwidth,
];

fn segment(id: u16, node: Option<u32>, hotplug: u32) -> PciSegment {
    let i = u64::from(id);
    PciSegment {
        id,
        ecam_base: if id == 0 {
            0xb000_0000
        } else {
            0x40_0000_0000 + i * 0x1000_0000
        },
        start_bus: 0,
        end_bus: 0xff,
        mmio32: Window {
            base: 0xc000_0000 + i * 0x0f80_0000,
            size: 0x0f80_0000,
        },
        mmio64: Some(Window {
            base: 0x80_0000_0000 + i * 0x10_0000_0000,
            size: 0x10_0000_0000,
        }),
        io: (id == 0).then_some(Window {
            base: 0x1000,
            size: 0xf000,
        }),
        node,
        intx_routes: (1..32u8)
            .map(|device| IntxRoute {
                device,
                pin: IntxPin::A,
                gsi: 16 + u32::from(device % 8),
            })
            .collect(),
        hotplug_slots: (0..32u8).filter(|s| hotplug & (1 << s) != 0).collect(),
    }
}

/// A topology from fuzz bytes, usually one that builds.
pub fn topology(u: &mut Unstructured<'_>) -> arbitrary::Result<Topology> {
    let g = Gen::arbitrary(u)?;
    let nodes = u32::from(g.nodes % 9);
    let node = |n: u8| (nodes > 0).then(|| u32::from(n) % nodes.max(1));
    let mut t = Topology {
        nodes: (0..nodes).map(|id| NumaNode { id }).collect(),
        ..Default::default()
    };
    let mut apic_ids = std::collections::BTreeSet::new();
    for &(apic, n, big) in g.cpus.0.iter().take(32) {
        let apic_id = if big {
            250 + u32::from(apic)
        } else {
            u32::from(apic % 64)
        };
        if apic_ids.insert(apic_id) {
            t.cpus.push(Cpu {
                apic_id,
                node: node(n),
            });
        }
    }
    let (mut low, mut high) = (0u64, 0x1_0000_0000u64);
    for &(mib, n, above, hotpluggable, non_volatile, enabled) in g.memory.0.iter().take(8) {
        let size = (u64::from(mib % 512) + 1) * MIB;
        let base = if above || low + size > 0xa000_0000 {
            &mut high
        } else {
            &mut low
        };
        t.memory.push(MemoryRange {
            base: *base,
            size,
            node: node(n),
            enabled,
            hotpluggable,
            non_volatile,
        });
        *base += size;
    }
    let hotplug = g.hotplug.unwrap_or_default();
    for id in 0..u16::from(g.segments % 5) {
        let i = usize::from(id);
        t.pci_segments
            .push(segment(id, node(g.segment_nodes[i % 4]), hotplug[i % 4]));
    }
    if g.hotplug.is_some() {
        t.platform.pci_hotplug = Some(PciHotplug {
            mmio_base: 0xfed0_2000,
            mmio_len: 0x10,
            registers: PciHotplugRegisters {
                slots_up: 0,
                slots_down: 4,
                eject: 8,
                segment: 0xc,
            },
        });
    }
    for (i, &(seg, dev, f)) in g.devices.0.iter().take(6).enumerate() {
        let segments = t.pci_segments.len().max(1) as u8;
        let Ok(bdf) = Bdf::new(u16::from(seg % segments), 0, dev % 32, f % 8) else {
            continue;
        };
        t.pci_devices.push(PciDevice {
            id: format!("dev{i}"),
            bdf,
        });
    }
    for &(d, n) in g.links.0.iter().take(8) {
        if let (Some(device), Some(node)) = (
            t.pci_devices
                .get(usize::from(d) % t.pci_devices.len().max(1)),
            node(n),
        ) {
            t.generic_initiators.push(GenericInitiatorLink {
                device: device.id.clone(),
                node,
            });
        }
    }
    if let Some(values) = &g.distances {
        let n = nodes as usize;
        let at = |k: usize| values.0.get(k).copied().unwrap_or(20).max(11);
        t.distances = Some(
            (0..n)
                .map(|i| {
                    (0..n)
                        .map(|j| match (i == j, g.symmetric) {
                            (true, _) => 10,
                            (false, true) => at(i.min(j) * n + i.max(j)),
                            (false, false) => at(i * n + j),
                        })
                        .collect()
                })
                .collect(),
        );
    }
    for &(i, tg, ty, value) in g.hmat.0.iter().take(8) {
        if let (Some(initiator), Some(target)) = (node(i), node(tg)) {
            t.hmat.push(HmatEntry {
                initiator,
                target,
                data_type: TYPES[usize::from(ty) % TYPES.len()],
                value: u64::from(value),
            });
        }
    }
    Ok(t)
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// Builds `t` and checks the decoded tables against it. Returns whether it built.
pub fn round_trip(t: &Topology) -> bool {
    let Ok(tables) = build(t, Placement::default()) else {
        return false;
    };
    if let Some(srat) = tables.get("SRAT") {
        let srat = decode_srat(&srat.bytes);
        assert!(srat.is_ok(), "SRAT we built does not decode: {srat:?}");
        let Ok(srat) = srat else { return true };
        let got = sorted(
            srat.processors
                .iter()
                .map(|p| (p.apic_id, p.node))
                .collect(),
        );
        let want = sorted(
            t.cpus
                .iter()
                .filter_map(|c| Some((c.apic_id, c.node?)))
                .collect(),
        );
        assert_eq!(got, want, "SRAT processors");
        let got = sorted(
            srat.memory
                .iter()
                .map(|m| {
                    (
                        m.base,
                        m.size,
                        m.node,
                        m.enabled,
                        m.hotpluggable,
                        m.non_volatile,
                    )
                })
                .collect(),
        );
        let want = sorted(
            t.memory
                .iter()
                .filter_map(|m| {
                    Some((
                        m.base,
                        m.size,
                        m.node?,
                        m.enabled,
                        m.hotpluggable,
                        m.non_volatile,
                    ))
                })
                .collect(),
        );
        assert_eq!(got, want, "SRAT memory");
        let got = sorted(
            srat.generic_initiators
                .iter()
                .map(|g| (g.node, g.bdf.clone()))
                .collect(),
        );
        let want = sorted(
            t.generic_initiators
                .iter()
                .filter_map(|l| {
                    let d = t.pci_devices.iter().find(|d| d.id == l.device)?;
                    Some((l.node, Some(d.bdf.to_string())))
                })
                .collect(),
        );
        assert_eq!(got, want, "SRAT Generic Initiators");
    }
    if let (Some(slit), Some(distances)) = (tables.get("SLIT"), &t.distances) {
        let slit = decode_slit(&slit.bytes);
        assert_eq!(slit.map(|s| s.distances).as_ref(), Ok(distances), "SLIT");
    }
    if let Some(hmat) = tables.get("HMAT") {
        let hmat = decode_hmat(&hmat.bytes);
        assert!(hmat.is_ok(), "HMAT we built does not decode: {hmat:?}");
        let Ok(hmat) = hmat else { return true };
        let got: Vec<(String, u32, u32, u64)> = hmat
            .localities
            .iter()
            .map(|l| (l.data_type.to_string(), l.initiator, l.target, l.value))
            .collect();
        for e in &t.hmat {
            let name = serde_json::to_value(e.data_type)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            assert!(
                got.contains(&(name, e.initiator, e.target, e.value)),
                "HMAT lost {e:?}: {got:?}"
            );
        }
    }
    true
}

/// Raw bytes behind a header that passes the decoders' first checks.
fn decode_raw(data: &[u8]) {
    for signature in [b"SRAT", b"SLIT", b"HMAT"] {
        let mut bytes = data.to_vec();
        if bytes.len() >= 8 {
            bytes[..4].copy_from_slice(signature);
            let len = bytes.len() as u32;
            bytes[4..8].copy_from_slice(&len.to_le_bytes());
        }
        let _ = decode_srat(&bytes);
        let _ = decode_slit(&bytes);
        let _ = decode_hmat(&bytes);
    }
}

/// The fuzz target.
pub fn run(data: &[u8]) {
    if data.first().is_some_and(|b| b % 5 == 0) {
        decode_raw(data.get(1..).unwrap_or_default());
        return;
    }
    let mut u = Unstructured::new(data.get(1..).unwrap_or_default());
    if let Ok(t) = topology(&mut u) {
        round_trip(&t);
    }
}
