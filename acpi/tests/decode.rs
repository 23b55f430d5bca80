//! What is built decodes back to what the topology said.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use tessera_acpi::decode::{decode_hmat, decode_slit, decode_srat};
use tessera_acpi::{
    build, Cpu, GenericInitiatorLink, HmatDataType, HmatEntry, MemoryRange, NumaNode, PciDevice,
    Placement, Topology,
};

fn topology() -> Topology {
    let mem = |base: u64, node| MemoryRange {
        base,
        size: 1 << 28,
        node: Some(node),
        enabled: true,
        hotpluggable: false,
        non_volatile: false,
    };
    Topology {
        cpus: vec![
            Cpu {
                apic_id: 0,
                node: Some(0),
            },
            Cpu {
                apic_id: 300,
                node: Some(1),
            },
        ],
        nodes: (0..4).map(|id| NumaNode { id }).collect(),
        memory: vec![
            mem(0, 0),
            mem(1 << 28, 1),
            MemoryRange {
                hotpluggable: true,
                ..mem(1 << 30, 3)
            },
        ],
        pci_devices: vec![PciDevice {
            id: "gpu".into(),
            bdf: "0001:02:03.4".parse().unwrap(),
        }],
        generic_initiators: vec![GenericInitiatorLink {
            device: "gpu".into(),
            node: 2,
        }],
        distances: Some(vec![
            vec![10, 20, 30, 40],
            vec![21, 10, 31, 41],
            vec![30, 31, 10, 50],
            vec![40, 41, 50, 10],
        ]),
        hmat: vec![
            HmatEntry {
                initiator: 0,
                target: 0,
                data_type: HmatDataType::AccessLatency,
                value: 10,
            },
            HmatEntry {
                initiator: 2,
                target: 3,
                data_type: HmatDataType::AccessLatency,
                value: 7,
            },
            HmatEntry {
                initiator: 1,
                target: 1,
                data_type: HmatDataType::ReadBandwidth,
                value: 20_000,
            },
        ],
        ..Default::default()
    }
}

#[test]
fn built_tables_decode_to_the_topology() {
    let t = build(&topology(), Placement::default()).unwrap();
    let srat = decode_srat(&t.get("SRAT").unwrap().bytes).unwrap();
    let procs: Vec<(u32, u32, bool)> = srat
        .processors
        .iter()
        .map(|p| (p.apic_id, p.node, p.x2apic))
        .collect();
    assert_eq!(procs, vec![(0, 0, false), (300, 1, true)]);
    assert_eq!(srat.generic_initiators.len(), 1);
    assert_eq!(
        srat.generic_initiators[0].bdf.as_deref(),
        Some("0001:02:03.4")
    );
    assert_eq!(srat.generic_initiators[0].node, 2);
    assert!(srat.memory[2].hotpluggable);
    assert_eq!(
        srat.memory.iter().map(|m| m.node).collect::<Vec<_>>(),
        vec![0, 1, 3]
    );

    let slit = decode_slit(&t.get("SLIT").unwrap().bytes).unwrap();
    assert_eq!(slit.distances, topology().distances.unwrap());

    let hmat = decode_hmat(&t.get("HMAT").unwrap().bytes).unwrap();
    let mut values: Vec<(&str, u32, u32, u64)> = hmat
        .localities
        .iter()
        .map(|l| (l.data_type, l.initiator, l.target, l.value))
        .collect();
    values.sort();
    assert_eq!(
        values,
        vec![
            ("access_latency", 0, 0, 10),
            ("access_latency", 2, 3, 7),
            ("read_bandwidth", 1, 1, 20_000)
        ]
    );
    assert_eq!(hmat.memory_domains[0].initiator, Some(0));
}

#[test]
fn malformed_bytes_are_errors() {
    let t = build(&topology(), Placement::default()).unwrap();
    let srat = t.get("SRAT").unwrap().bytes.clone();
    assert!(decode_srat(&srat[..srat.len() - 3]).is_err());
    assert!(decode_srat(b"SLIT").is_err());
    let mut bad = srat.clone();
    bad[49] = 0; // first structure's length
    assert!(decode_srat(&bad).is_err());
    let slit = t.get("SLIT").unwrap().bytes.clone();
    let mut bad = slit.clone();
    bad[36] = 9;
    assert!(decode_slit(&bad).is_err());
    for n in 0..slit.len() {
        let _ = decode_slit(&slit[..n]);
        let _ = decode_srat(&srat[..n.min(srat.len())]);
    }
}

#[test]
fn memory_side_caches_decode_and_break_qemus_rules_by_field() {
    use tessera_acpi::{HmatCache, HmatCacheAssociativity, HmatCacheWritePolicy};
    let cache = |node, level, size| HmatCache {
        node,
        size,
        level,
        associativity: HmatCacheAssociativity::Direct,
        policy: HmatCacheWritePolicy::WriteBack,
        line: 64,
    };
    let mut topo = topology();
    topo.hmat_caches = vec![cache(3, 1, 16 << 20), cache(3, 2, 64 << 20)];
    let t = build(&topo, Placement::default()).unwrap();
    let hmat = decode_hmat(&t.get("HMAT").unwrap().bytes).unwrap();
    let got: Vec<_> = hmat
        .caches
        .iter()
        .map(|c| {
            (
                c.node,
                c.size,
                c.level,
                c.total_levels,
                c.associativity,
                c.policy,
                c.line,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (3, 16 << 20, 1, 2, "direct", "write_back", 64),
            (3, 64 << 20, 2, 2, "direct", "write_back", 64)
        ]
    );

    for (caches, field, says) in [
        (
            vec![cache(2, 1, 1 << 20)],
            "hmat_caches[0].node",
            "no memory",
        ),
        (
            vec![cache(1, 1, 1 << 20)],
            "hmat_caches[0].node",
            "no hmat values as a target",
        ),
        (vec![cache(9, 1, 1 << 20)], "hmat_caches[0].node", "9"),
        (
            vec![cache(3, 4, 1 << 20)],
            "hmat_caches[0].level",
            "not 1, 2 or 3",
        ),
        (
            vec![cache(3, 2, 1 << 20)],
            "hmat_caches[0].level",
            "no level 1",
        ),
        (
            vec![cache(3, 1, 1 << 20), cache(3, 1, 2 << 20)],
            "hmat_caches[1].level",
            "already given by hmat_caches[0]",
        ),
        (
            vec![cache(3, 1, 4 << 20), cache(3, 2, 2 << 20)],
            "hmat_caches[1].size",
            "must be larger than level 1",
        ),
        (vec![cache(3, 1, 0)], "hmat_caches[0].size", "non-zero"),
    ] {
        let mut topo = topology();
        // Node 1 is a target only of a bandwidth here; make it no target at all.
        topo.hmat.retain(|e| e.target != 1);
        topo.hmat_caches = caches;
        let e = tessera_acpi::validate(&topo).unwrap_err();
        assert_eq!(e.field(), field, "{e}");
        assert!(e.to_string().contains(says), "{e} should say {says}");
    }
}

/// Regression (fuzz target acpi_roundtrip, under honggfuzz with overflow checks): an HMAT
/// locality structure whose initiator and target counts are both 0xffff_ffff overflowed
/// the size computation (a panic with overflow checks, a wrong size check without).
#[test]
fn hmat_locality_counts_that_overflow_are_errors() {
    let mut bytes = vec![0u8; 40 + 32];
    bytes[..4].copy_from_slice(b"HMAT");
    let len = bytes.len() as u32;
    bytes[4..8].copy_from_slice(&len.to_le_bytes());
    bytes[40..42].copy_from_slice(&1u16.to_le_bytes());
    bytes[44..48].copy_from_slice(&32u32.to_le_bytes());
    bytes[52..56].copy_from_slice(&u32::MAX.to_le_bytes());
    bytes[56..60].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(decode_hmat(&bytes).is_err());
}
