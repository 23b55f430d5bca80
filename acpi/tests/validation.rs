//! Every kind of bad topology is refused with a typed error that names the field.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use tessera_acpi::{
    build, validate, Bdf, Cpu, Error, GenericInitiatorLink, HmatDataType, HmatEntry, MemoryRange,
    NumaNode, PciDevice, Placement, Topology, MAX_NODES,
};

/// Two nodes with a CPU and 256 MiB each, one device linked to node 1.
fn good() -> Topology {
    Topology {
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
        nodes: vec![NumaNode { id: 0 }, NumaNode { id: 1 }],
        memory: vec![mem(0, 256 << 20, 0), mem(256 << 20, 256 << 20, 1)],
        pci_devices: vec![PciDevice {
            id: "gpu0".into(),
            bdf: "0000:00:03.0".parse().unwrap(),
        }],
        generic_initiators: vec![GenericInitiatorLink {
            device: "gpu0".into(),
            node: 1,
        }],
        ..Default::default()
    }
}

fn mem(base: u64, size: u64, node: u32) -> MemoryRange {
    MemoryRange {
        base,
        size,
        node: Some(node),
        enabled: true,
        hotpluggable: false,
        non_volatile: false,
    }
}

fn refused(t: &Topology) -> Error {
    let err = validate(t).unwrap_err();
    // build() refuses the same way, before encoding anything.
    assert_eq!(build(t, Placement::default()).unwrap_err(), err);
    err
}

#[test]
fn the_good_topology_is_accepted() {
    validate(&good()).unwrap();
}

#[test]
fn cpu_naming_a_missing_node() {
    let mut t = good();
    t.cpus[1].node = Some(7);
    let e = refused(&t);
    assert_eq!(
        e,
        Error::UnknownNode {
            field: "cpus[1].node".into(),
            node: 7
        }
    );
    assert_eq!(e.field(), "cpus[1].node");
    assert_eq!(e.to_string(), "cpus[1].node: node 7 does not exist");
}

#[test]
fn cpu_without_a_node_in_a_numa_topology() {
    let mut t = good();
    t.cpus[0].node = None;
    assert_eq!(
        refused(&t),
        Error::MissingNode {
            field: "cpus[0].node".into()
        }
    );
}

#[test]
fn gi_link_naming_a_missing_node() {
    let mut t = good();
    t.generic_initiators[0].node = 2;
    let e = refused(&t);
    assert_eq!(
        e,
        Error::UnknownNode {
            field: "generic_initiators[0].node".into(),
            node: 2
        }
    );
}

#[test]
fn gi_link_naming_a_missing_device() {
    let mut t = good();
    t.generic_initiators[0].device = "gpu9".into();
    let e = refused(&t);
    assert_eq!(
        e,
        Error::UnknownDevice {
            index: 0,
            device: "gpu9".into()
        }
    );
    assert_eq!(e.field(), "generic_initiators[0].device");
}

#[test]
fn device_at_two_bdfs() {
    let mut t = good();
    t.pci_devices.push(PciDevice {
        id: "gpu0".into(),
        bdf: "0000:00:04.0".parse().unwrap(),
    });
    let e = refused(&t);
    assert_eq!(
        e,
        Error::DeviceAtTwoBdfs {
            index: 1,
            id: "gpu0".into(),
            first_bdf: "0000:00:03.0".parse().unwrap()
        }
    );
    assert!(e.to_string().contains("already at 0000:00:03.0"), "{e}");
}

#[test]
fn two_devices_at_one_bdf() {
    let mut t = good();
    t.pci_devices.push(PciDevice {
        id: "nic".into(),
        bdf: "0000:00:03.0".parse().unwrap(),
    });
    assert!(matches!(refused(&t), Error::BdfTaken { index: 1, .. }));
}

#[test]
fn repeated_device_node_link() {
    let mut t = good();
    t.generic_initiators.push(GenericInitiatorLink {
        device: "gpu0".into(),
        node: 1,
    });
    let e = refused(&t);
    assert_eq!(
        e,
        Error::DuplicateLink {
            index: 1,
            first: 0,
            device: "gpu0".into(),
            node: 1
        }
    );
}

#[test]
fn distance_matrix_not_square() {
    let mut t = good();
    t.distances = Some(vec![vec![10, 20], vec![20]]);
    let e = refused(&t);
    assert!(matches!(e, Error::DistanceShape { expected: 2, .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "distances: expected a 2×2 matrix, row 1 has 1 entries"
    );
    t.distances = Some(vec![vec![10, 20]]);
    assert!(matches!(
        refused(&t),
        Error::DistanceShape { expected: 2, .. }
    ));
}

#[test]
fn distance_diagonal_not_10() {
    let mut t = good();
    t.distances = Some(vec![vec![10, 20], vec![20, 11]]);
    let e = refused(&t);
    assert_eq!(e, Error::DistanceDiagonal { node: 1, value: 11 });
    assert_eq!(e.field(), "distances[1][1]");
}

#[test]
fn distance_off_diagonal_out_of_range() {
    for bad in [0u8, 10, 255] {
        let mut t = good();
        t.distances = Some(vec![vec![10, 20], vec![bad, 10]]);
        assert_eq!(
            refused(&t),
            Error::DistanceRange {
                from: 1,
                to: 0,
                value: bad
            }
        );
    }
    let mut t = good();
    t.distances = Some(vec![vec![10, 11], vec![254, 10]]);
    validate(&t).unwrap();
}

#[test]
fn overlapping_memory_ranges() {
    let mut t = good();
    t.memory[1].base = (256 << 20) - 4096;
    let e = refused(&t);
    assert!(
        matches!(
            e,
            Error::OverlappingMemory {
                index: 1,
                other: 0,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.field(), "memory[1]");
}

#[test]
fn empty_or_wrapping_memory_range() {
    let mut t = good();
    t.memory[0].size = 0;
    assert!(matches!(
        refused(&t),
        Error::BadMemoryRange { index: 0, .. }
    ));
    t.memory[0] = mem(u64::MAX - 10, 4096, 0);
    assert!(matches!(
        refused(&t),
        Error::BadMemoryRange { index: 0, .. }
    ));
}

#[test]
fn repeated_apic_ids() {
    let mut t = good();
    t.cpus[1].apic_id = 0;
    let e = refused(&t);
    assert_eq!(
        e,
        Error::DuplicateApicId {
            index: 1,
            first: 0,
            apic_id: 0
        }
    );
    assert_eq!(e.field(), "cpus[1].apic_id");
}

#[test]
fn too_many_proximity_domains() {
    let mut t = good();
    t.nodes = (0..=MAX_NODES as u32).map(|id| NumaNode { id }).collect();
    let e = refused(&t);
    assert_eq!(
        e,
        Error::TooManyNodes {
            count: MAX_NODES + 1,
            max: MAX_NODES
        }
    );
}

#[test]
fn node_ids_with_a_gap_or_repeat() {
    let mut t = good();
    t.nodes[1].id = 2;
    assert_eq!(refused(&t), Error::NodeIdGap { missing: 1 });
    t.nodes[1].id = 0;
    assert_eq!(refused(&t), Error::DuplicateNode { index: 1, id: 0 });
}

#[test]
fn hmat_entries_must_name_initiators_and_memory_targets() {
    let mut t = good();
    t.nodes.push(NumaNode { id: 2 });
    let entry = |initiator, target, value| HmatEntry {
        initiator,
        target,
        data_type: HmatDataType::AccessLatency,
        value,
    };
    t.hmat = vec![entry(2, 0, 10)];
    assert!(matches!(refused(&t), Error::BadHmatEntry { index: 0, .. }));
    t.hmat = vec![entry(1, 2, 10)];
    let e = refused(&t);
    assert_eq!(e.field(), "hmat[0].target");
    t.hmat = vec![entry(0, 0, 0)];
    assert_eq!(refused(&t).field(), "hmat[0].value");
    t.hmat = vec![entry(0, 0, 10), entry(0, 0, 20)];
    assert_eq!(refused(&t).field(), "hmat[1].data_type");
    t.hmat = vec![entry(0, 0, 1), entry(1, 0, 70_000)];
    assert!(matches!(refused(&t), Error::HmatRange { .. }));
    t.hmat = vec![entry(0, 0, 10), entry(1, 1, 10), entry(1, 0, 20)];
    validate(&t).unwrap();
}

#[test]
fn no_cpus() {
    let mut t = good();
    t.cpus.clear();
    assert_eq!(refused(&t), Error::NoCpus);
}

#[test]
fn bad_oem_id() {
    let mut t = good();
    t.platform.oem_id = "TOOLONGID".into();
    assert_eq!(refused(&t).field(), "platform.oem_id");
}

#[test]
fn bdf_parsing() {
    let b: Bdf = "0001:02:1f.7".parse().unwrap();
    assert_eq!((b.segment, b.bus, b.device, b.function), (1, 2, 31, 7));
    assert_eq!(b.devfn(), 0xff);
    assert_eq!(b.to_string(), "0001:02:1f.7");
    assert_eq!(
        "03:00.0".parse::<Bdf>().unwrap().to_string(),
        "0000:03:00.0"
    );
    for bad in [
        "",
        "0000:00:20.0",
        "0000:00:00.8",
        "zz:00.0",
        "0:0:0:0.0",
        "00000:00:00.0",
    ] {
        assert!(bad.parse::<Bdf>().is_err(), "{bad}");
    }
}

#[test]
fn unknown_json_fields_are_refused() {
    let err = serde_json::from_str::<Topology>(r#"{"cpus": [], "numa": []}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `numa`"), "{err}");
    let err = serde_json::from_str::<Topology>(
        r#"{"pci_devices": [{"id": "a", "bdf": "0000:00:40.0"}]}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("above 31"), "{err}");
}

#[test]
fn address_claims_must_not_overlap() {
    let segment = || tessera_acpi::PciSegment {
        id: 0,
        ecam_base: 0xb000_0000,
        start_bus: 0,
        end_bus: 0xff,
        mmio32: tessera_acpi::Window {
            base: 0xc000_0000,
            size: 0x3ec0_0000,
        },
        mmio64: None,
        io: None,
        node: None,
        intx_routes: vec![],
        hotplug_slots: vec![],
    };
    let mut t = good();
    t.pci_segments = vec![segment()];
    validate(&t).unwrap();

    // RAM reaching into the ECAM window.
    t.memory[1].size = 0xb000_1000 - (256 << 20);
    let e = refused(&t);
    assert_eq!(e.field(), "pci_segments[0].ecam_base", "{e}");
    assert!(e.to_string().contains("overlaps memory[1]"), "{e}");

    // An MMIO window over the I/O APIC.
    let mut t = good();
    t.pci_segments = vec![segment()];
    t.pci_segments[0].mmio32.size += 0x1000;
    let e = refused(&t);
    assert_eq!(e.field(), "platform.ioapics[0].address", "{e}");
    assert!(
        e.to_string().contains("overlaps pci_segments[0].mmio32"),
        "{e}"
    );
}

#[test]
fn ged_event_bits_are_single_distinct_bits() {
    let ged = |t: &mut Topology| t.platform.ged.unwrap();
    let mut t = good();
    let mut g = ged(&mut t);
    g.power_button_event = 0b11;
    t.platform.ged = Some(g);
    let e = refused(&t);
    assert_eq!(e.field(), "platform.ged.power_button_event", "{e}");

    let mut t = good();
    let mut g = ged(&mut t);
    g.pci_hotplug_event = 0;
    t.platform.ged = Some(g);
    assert_eq!(refused(&t).field(), "platform.ged.pci_hotplug_event");

    let mut t = good();
    let mut g = ged(&mut t);
    g.pci_hotplug_event = g.power_button_event;
    t.platform.ged = Some(g);
    let e = refused(&t);
    assert_eq!(e.field(), "platform.ged.pci_hotplug_event", "{e}");
    assert!(e.to_string().contains("power button"), "{e}");
}

fn hotplug_controller() -> tessera_acpi::PciHotplug {
    tessera_acpi::PciHotplug {
        mmio_base: 0xfed0_2000,
        mmio_len: 0x10,
        registers: tessera_acpi::PciHotplugRegisters {
            slots_up: 0,
            slots_down: 4,
            eject: 8,
            segment: 12,
        },
    }
}

/// `good()` with one segment whose slots 1..=31 are hotplug slots.
fn with_hotplug() -> Topology {
    let mut t = good();
    t.pci_segments = vec![tessera_acpi::PciSegment {
        id: 0,
        ecam_base: 0xe000_0000,
        start_bus: 0,
        end_bus: 0,
        mmio32: tessera_acpi::Window {
            base: 0xc000_0000,
            size: 0x1000_0000,
        },
        mmio64: None,
        io: None,
        node: None,
        intx_routes: vec![],
        hotplug_slots: (1..32).collect(),
    }];
    t.platform.pci_hotplug = Some(hotplug_controller());
    t
}

#[test]
fn hotplug_slots_are_root_bus_slots_listed_once_with_a_controller() {
    validate(&with_hotplug()).unwrap();

    let mut t = with_hotplug();
    t.pci_segments[0].hotplug_slots.push(32);
    let e = refused(&t);
    assert_eq!(e.field(), "pci_segments[0].hotplug_slots[31]", "{e}");
    assert!(e.to_string().contains("above 31"), "{e}");

    let mut t = with_hotplug();
    t.pci_segments[0].hotplug_slots.push(5);
    let e = refused(&t);
    assert_eq!(e.field(), "pci_segments[0].hotplug_slots[31]", "{e}");
    assert!(e.to_string().contains("listed twice"), "{e}");

    let mut t = with_hotplug();
    t.platform.pci_hotplug = None;
    let e = refused(&t);
    assert_eq!(e.field(), "pci_segments[0].hotplug_slots", "{e}");
    assert!(e.to_string().contains("platform.pci_hotplug"), "{e}");
}

#[test]
fn the_hotplug_controller_needs_the_ged_and_sound_registers() {
    let mut t = with_hotplug();
    t.platform.ged = None;
    let e = refused(&t);
    assert_eq!(e.field(), "platform.pci_hotplug.mmio_base", "{e}");
    assert!(e.to_string().contains("platform.ged"), "{e}");

    let with = |f: &dyn Fn(&mut tessera_acpi::PciHotplug)| {
        let mut t = with_hotplug();
        let mut hp = hotplug_controller();
        f(&mut hp);
        t.platform.pci_hotplug = Some(hp);
        refused(&t)
    };
    let e = with(&|hp| hp.registers.eject = 6);
    assert_eq!(e.field(), "platform.pci_hotplug.registers.eject", "{e}");
    assert!(e.to_string().contains("aligned"), "{e}");
    let e = with(&|hp| hp.registers.segment = 0x10);
    assert_eq!(e.field(), "platform.pci_hotplug.registers.segment", "{e}");
    let e = with(&|hp| hp.registers.segment = u64::MAX - 3);
    assert_eq!(e.field(), "platform.pci_hotplug.registers.segment", "{e}");
    let e = with(&|hp| hp.registers.slots_down = 0);
    assert_eq!(
        e.field(),
        "platform.pci_hotplug.registers.slots_down",
        "{e}"
    );
    assert!(e.to_string().contains("already slots_up's"), "{e}");
    let e = with(&|hp| hp.mmio_len = 0);
    assert_eq!(e.field(), "platform.pci_hotplug.mmio_len", "{e}");
    let e = with(&|hp| hp.mmio_base = u64::MAX - 8);
    assert_eq!(e.field(), "platform.pci_hotplug.mmio_len", "{e}");
}

#[test]
fn the_hotplug_registers_must_not_overlap_other_mmio() {
    let mut t = with_hotplug();
    let mut hp = hotplug_controller();
    hp.mmio_base = 0xfed0_0ff8; // runs into the GED register at 0xfed01000
    t.platform.pci_hotplug = Some(hp);
    let e = refused(&t);
    assert_eq!(e.field(), "platform.ged.mmio_base", "{e}");
    assert!(
        e.to_string()
            .contains("overlaps platform.pci_hotplug.mmio_base"),
        "{e}"
    );

    let mut t = with_hotplug();
    hp.mmio_base = 0xc000_0100; // inside segment 0's mmio32 window
    t.platform.pci_hotplug = Some(hp);
    let e = refused(&t);
    assert_eq!(e.field(), "platform.pci_hotplug.mmio_base", "{e}");
    assert!(
        e.to_string().contains("overlaps pci_segments[0].mmio32"),
        "{e}"
    );
}
