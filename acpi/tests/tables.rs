//! Byte-level checks of the tables against the ACPI specification, and properties the
//! rest of Tessera relies on (determinism, pointers, node numbering).

#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use tessera_acpi::{
    build, linux_node_numbering, Cpu, GenericInitiatorLink, MemoryRange, NumaNode, PciDevice,
    Placement, Topology,
};

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

fn topology() -> Topology {
    Topology {
        cpus: vec![Cpu {
            apic_id: 0,
            node: Some(0),
        }],
        nodes: (0..3).map(|id| NumaNode { id }).collect(),
        memory: vec![MemoryRange {
            base: 0,
            size: 1 << 30,
            node: Some(0),
            enabled: true,
            hotpluggable: false,
            non_volatile: false,
        }],
        pci_devices: vec![PciDevice {
            id: "gpu".into(),
            bdf: "0000:01:00.2".parse().unwrap(),
        }],
        generic_initiators: vec![GenericInitiatorLink {
            device: "gpu".into(),
            node: 1,
        }],
        ..Default::default()
    }
}

#[test]
fn gi_affinity_structure_is_the_spec_vector() {
    // Segment 0, bus 1, devfn 0x02, proximity domain 1 (ACPI 6.5 §5.2.16.6).
    let t = topology();
    let tables = build(&t, Placement::default()).unwrap();
    let srat = &tables.get("SRAT").unwrap().bytes;
    let gi = srat.windows(32).find(|w| w[0] == 5 && w[1] == 32).unwrap();
    assert_eq!(
        gi,
        [
            0x05, 0x20, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00
        ]
    );
}

#[test]
fn every_table_has_a_valid_header_and_checksum() {
    let tables = build(&topology(), Placement::default()).unwrap();
    for t in &tables.tables {
        assert_eq!(&t.bytes[0..4], t.signature.as_bytes());
        assert_eq!(
            u32_at(&t.bytes, 4) as usize,
            t.bytes.len(),
            "{} length",
            t.signature
        );
        assert_eq!(sum(&t.bytes), 0, "{} checksum", t.signature);
        assert_eq!(&t.bytes[10..16], b"TESSRA");
    }
    assert_eq!(tables.get("SRAT").unwrap().bytes[8], 3, "SRAT revision");
    assert_eq!(tables.get("APIC").unwrap().bytes[8], 5, "MADT revision");
}

#[test]
fn rsdp_xsdt_and_fadt_point_at_the_tables() {
    let placement = Placement {
        rsdp_address: 0xe_0000,
        tables_address: 0x10_0000,
    };
    let tables = build(&topology(), placement).unwrap();
    let rsdp = &tables.rsdp.bytes;
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(rsdp.len(), 36);
    assert_eq!(sum(&rsdp[0..20]), 0, "ACPI 1.0 checksum");
    assert_eq!(sum(rsdp), 0, "extended checksum");
    assert_eq!(rsdp[15], 2, "revision");
    assert_eq!(tables.rsdp.address, 0xe_0000);

    let xsdt = tables.get("XSDT").unwrap();
    assert_eq!(u64_at(rsdp, 24), xsdt.address);
    let listed: Vec<u64> = xsdt.bytes[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
    let expected: Vec<u64> = tables
        .tables
        .iter()
        .filter(|t| t.signature != "DSDT" && t.signature != "XSDT")
        .map(|t| t.address)
        .collect();
    assert_eq!(listed, expected);

    let fadt = &tables.get("FACP").unwrap().bytes;
    assert_eq!(
        u64_at(fadt, 140),
        tables.get("DSDT").unwrap().address,
        "X_DSDT"
    );
    assert_ne!(u32_at(fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");

    // Tables do not overlap and are 8-byte aligned.
    let mut end = placement.tables_address;
    for t in &tables.tables {
        assert!(t.address >= end && t.address % 8 == 0, "{}", t.signature);
        end = t.address + t.bytes.len() as u64;
    }
}

#[test]
fn same_topology_same_bytes() {
    let a = build(&topology(), Placement::default()).unwrap();
    let b = build(&topology(), Placement::default()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn asymmetric_distances_are_kept() {
    let mut t = topology();
    t.distances = Some(vec![vec![10, 20, 30], vec![21, 10, 31], vec![40, 41, 10]]);
    let tables = build(&t, Placement::default()).unwrap();
    let slit = &tables.get("SLIT").unwrap().bytes;
    assert_eq!(u64_at(slit, 36), 3);
    assert_eq!(slit[44..], [10, 20, 30, 21, 10, 31, 40, 41, 10]);
}

#[test]
fn topology_json_round_trips() {
    let t = topology();
    let json = serde_json::to_string(&t).unwrap();
    assert!(json.contains(r#""bdf":"0000:01:00.2""#), "{json}");
    let back: Topology = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
}

#[test]
fn linux_numbers_nodes_like_us_when_memory_only_nodes_come_last() {
    // Node 0: CPU + memory, 1: GI, 2: nothing (Linux never hears of it).
    let t = topology();
    assert_eq!(
        linux_node_numbering(&t),
        vec![(0, Some(0)), (1, Some(1)), (2, None)]
    );

    // A memory-only node before a GI node is numbered after it: Linux maps processor
    // and GI domains before memory domains.
    let mut t = topology();
    t.generic_initiators[0].node = 2;
    t.memory.push(MemoryRange {
        base: 1 << 30,
        size: 1 << 28,
        node: Some(1),
        ..t.memory[0]
    });
    assert_eq!(
        linux_node_numbering(&t),
        vec![(0, Some(0)), (1, Some(2)), (2, Some(1))]
    );
}
