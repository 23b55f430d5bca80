//! A configuration becomes the guest's topology: RAM per zone and node, devices at
//! deterministic BDFs (devfn 0 on their own segments when asked), GI links from both
//! config forms, distances, and tables the acpi crate accepts.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use tessera_acpi::{build, linux_node_numbering, Placement};
use tessera_api::config::{DeviceConfig, NumaDistance, PciSlotConfig, VmConfig};
use tessera_vmm::guest_topology::guest_topology;

const MIB: u64 = 1 << 20;

fn seed() -> VmConfig {
    serde_json::from_str(
        r#"{
      "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
      "memory": {"size": 0, "zones": [{"id": "m0", "size": 268435456}, {"id": "m1", "size": 268435456}]},
      "payload": {"kernel": "/boot/vmlinuz"},
      "devices": [{"path": "/sys/bus/pci/devices/0000:00:04.0", "id": "gpu0"}],
      "numa": [
        {"guest_numa_id": 0, "cpus": [0], "memory_zones": ["m0"], "distances": [{"destination": 1, "distance": 20}]},
        {"guest_numa_id": 1, "cpus": [1], "memory_zones": ["m1"], "distances": [{"destination": 0, "distance": 21}]},
        {"guest_numa_id": 2}, {"guest_numa_id": 3}, {"guest_numa_id": 4}, {"guest_numa_id": 5},
        {"guest_numa_id": 6}, {"guest_numa_id": 7}, {"guest_numa_id": 8},
        {"guest_numa_id": 9, "device_id": "gpu0"}
      ],
      "generic_initiators": [{"device": "gpu0", "nodes": "2-8"}]
    }"#,
    )
    .unwrap()
}

#[test]
fn the_seed_config_gives_the_seed_topology() {
    let g = guest_topology(&seed(), 40).unwrap();
    let t = &g.acpi;
    assert_eq!(t.nodes.len(), 10);
    assert_eq!(
        t.memory
            .iter()
            .map(|m| (m.base, m.size, m.node))
            .collect::<Vec<_>>(),
        vec![(0, 256 * MIB, Some(0)), (256 * MIB, 256 * MIB, Some(1))]
    );
    assert_eq!(
        t.cpus
            .iter()
            .map(|c| (c.apic_id, c.node))
            .collect::<Vec<_>>(),
        vec![(0, Some(0)), (1, Some(1))]
    );
    assert_eq!(g.devices[0].id, "gpu0");
    assert_eq!(g.devices[0].bdf.to_string(), "0000:00:01.0");
    let mut gi: Vec<u32> = t.generic_initiators.iter().map(|l| l.node).collect();
    gi.sort_unstable();
    assert_eq!(gi, (2..=9).collect::<Vec<_>>());
    let d = t.distances.as_ref().unwrap();
    assert_eq!((d[0][1], d[1][0], d[0][5], d[3][3]), (20, 21, 20, 10));
    // Linux will keep these node numbers.
    assert!(linux_node_numbering(t)
        .iter()
        .all(|(pxm, n)| Some(*pxm) == *n));
    build(t, Placement::default()).unwrap();
}

#[test]
fn a_distance_given_one_way_holds_both_ways_as_in_cloud_hypervisor() {
    // CH's docs/memory.md: `--numa guest_numa_id=0,distances=[1@15,2@25]
    // guest_numa_id=1,distances=[2@20]` is 0-1 = 15, 0-2 = 25, 1-2 = 20 both ways.
    let mut c = seed();
    c.numa.truncate(3);
    c.numa[0].distances = vec![
        NumaDistance {
            destination: 1,
            distance: 15,
        },
        NumaDistance {
            destination: 2,
            distance: 25,
        },
    ];
    c.numa[1].distances = vec![NumaDistance {
        destination: 2,
        distance: 20,
    }];
    c.generic_initiators.clear();
    c.numa[2].device_id = None;
    c.validate().unwrap();
    let t = guest_topology(&c, 40).unwrap().acpi;
    assert_eq!(
        t.distances.unwrap(),
        vec![vec![10, 15, 25], vec![15, 10, 20], vec![25, 20, 10]]
    );
    // A distance given both ways is taken as given, each way.
    let d = guest_topology(&seed(), 40).unwrap().acpi.distances.unwrap();
    assert_eq!((d[0][1], d[1][0]), (20, 21));
}

#[test]
fn same_config_same_bdfs_and_bytes() {
    let a = guest_topology(&seed(), 40).unwrap();
    let b = guest_topology(&seed(), 40).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        build(&a.acpi, Placement::default()).unwrap(),
        build(&b.acpi, Placement::default()).unwrap()
    );
}

#[test]
fn gpus_at_devfn_0_of_their_own_segments() {
    let mut c = seed();
    c.platform.num_pci_segments = 3;
    c.devices = vec![
        DeviceConfig {
            path: "/a".into(),
            id: Some("gpu0".into()),
            pci_segment: 1,
            pci_device_id: None,
            ..DeviceConfig::new("")
        },
        DeviceConfig {
            path: "/b".into(),
            id: Some("gpu1".into()),
            pci_segment: 2,
            pci_device_id: None,
            ..DeviceConfig::new("")
        },
        DeviceConfig {
            path: "/c".into(),
            id: None,
            pci_segment: 0,
            pci_device_id: Some(7),
            ..DeviceConfig::new("")
        },
        DeviceConfig {
            path: "/d".into(),
            id: None,
            pci_segment: 0,
            pci_device_id: None,
            ..DeviceConfig::new("")
        },
    ];
    c.numa[0].pci_segments = vec![1];
    c.numa[1].pci_segments = vec![2];
    let g = guest_topology(&c, 40).unwrap();
    let placed: Vec<(String, String)> = g
        .devices
        .iter()
        .map(|d| (d.id.clone(), d.bdf.to_string()))
        .collect();
    assert_eq!(
        placed,
        vec![
            ("gpu0".into(), "0001:00:00.0".into()),
            ("gpu1".into(), "0002:00:00.0".into()),
            ("_vfio2".into(), "0000:00:07.0".into()),
            ("_vfio3".into(), "0000:00:01.0".into()),
        ]
    );
    assert_eq!(g.acpi.pci_segments[1].node, Some(0));
    assert_eq!(g.acpi.pci_segments[2].node, Some(1));
    assert_eq!(g.acpi.pci_segments[0].node, None);
    build(&g.acpi, Placement::default()).unwrap();
}

#[test]
fn a_taken_slot_is_refused() {
    let mut c = seed();
    c.devices.push(DeviceConfig {
        path: "/x".into(),
        id: Some("a".into()),
        pci_segment: 0,
        pci_device_id: Some(3),
        ..DeviceConfig::new("")
    });
    c.devices.push(DeviceConfig {
        path: "/y".into(),
        id: Some("b".into()),
        pci_segment: 0,
        pci_device_id: Some(3),
        ..DeviceConfig::new("")
    });
    let e = guest_topology(&c, 40).unwrap_err();
    assert_eq!(e.field(), "devices[2].pci_device_id");
    assert!(
        e.to_string()
            .contains("slot 3 on segment 0 is already taken"),
        "{e}"
    );
}

/// The seed's 8 GI nodes on an empty GI-ready slot at device 0 of segment 1.
fn seed_with_an_empty_slot() -> VmConfig {
    let mut c = seed();
    c.devices.clear();
    c.numa[9].device_id = Some("gpu0".into());
    c.platform.num_pci_segments = 2;
    c.pci_slots = vec![PciSlotConfig {
        id: "gpu0".into(),
        pci_segment: 1,
        pci_device_id: Some(0),
    }];
    c
}

fn srat_gi(g: &tessera_vmm::guest_topology::GuestTopology) -> Vec<(u32, String)> {
    let tables = build(&g.acpi, Placement::default()).unwrap();
    let srat = tessera_acpi::decode::decode_srat(&tables.get("SRAT").unwrap().bytes).unwrap();
    srat.generic_initiators
        .iter()
        .map(|gi| (gi.node, gi.bdf.clone().unwrap()))
        .collect()
}

#[test]
fn an_empty_gi_ready_slot_is_in_the_srat_from_boot() {
    let g = guest_topology(&seed_with_an_empty_slot(), 40).unwrap();
    assert!(g.devices.is_empty());
    assert_eq!(g.pci_slots[0].id, "gpu0");
    assert_eq!(g.pci_slots[0].bdf.to_string(), "0001:00:00.0");
    assert_eq!(g.slots.bdf_of("gpu0"), g.pci_slots.first().map(|s| s.bdf));
    let gi = srat_gi(&g);
    assert_eq!(
        gi,
        (2..=9)
            .map(|n| (n, "0001:00:00.0".to_string()))
            .collect::<Vec<_>>()
    );
    // A device with the slot's id fills it: same BDF, same SRAT bytes.
    let mut filled = seed_with_an_empty_slot();
    filled.devices = vec![DeviceConfig {
        id: Some("gpu0".into()),
        ..DeviceConfig::new("/g")
    }];
    let f = guest_topology(&filled, 40).unwrap();
    assert_eq!(f.devices[0].bdf.to_string(), "0001:00:00.0");
    assert_eq!(
        build(&f.acpi, Placement::default()).unwrap().get("SRAT"),
        build(&g.acpi, Placement::default()).unwrap().get("SRAT")
    );
}

#[test]
fn unpinned_slots_take_the_lowest_free_slot_before_unpinned_devices() {
    let mut c = seed();
    c.devices.push(DeviceConfig {
        id: Some("nic".into()),
        pci_device_id: Some(1),
        ..DeviceConfig::new("/n")
    });
    c.devices.push(DeviceConfig::new("/x"));
    c.pci_slots = vec![PciSlotConfig {
        id: "spare".into(),
        pci_segment: 0,
        pci_device_id: None,
    }];
    c.generic_initiators
        .push(serde_json::from_str(r#"{"device": "spare", "node": 2}"#).unwrap());
    c.generic_initiators[0].nodes = Some("3-8".parse().unwrap());
    let g = guest_topology(&c, 40).unwrap();
    let at = |id: &str| g.slots.bdf_of(id).unwrap().to_string();
    // Pinned first (nic), then the slot, then devices in configuration order.
    assert_eq!(
        [at("nic"), at("spare"), at("gpu0"), at("_vfio2")],
        [
            "0000:00:01.0",
            "0000:00:02.0",
            "0000:00:03.0",
            "0000:00:04.0"
        ]
    );
    let gi = srat_gi(&g);
    assert!(gi.contains(&(2, "0000:00:02.0".into())), "{gi:?}");
    assert_eq!(gi.iter().filter(|(_, b)| b == "0000:00:03.0").count(), 7);
    assert_eq!(g, guest_topology(&c, 40).unwrap());
}

#[test]
fn a_device_with_a_slots_id_must_agree_with_the_slot() {
    let mut c = seed_with_an_empty_slot();
    c.devices = vec![DeviceConfig {
        id: Some("gpu0".into()),
        pci_segment: 1,
        pci_device_id: Some(4),
        ..DeviceConfig::new("/g")
    }];
    let e = guest_topology(&c, 40).unwrap_err();
    assert_eq!(e.field(), "devices[0].pci_device_id");
    assert_eq!(
        e.to_string(),
        "devices[0].pci_device_id: `gpu0` has slot 0001:00:00.0 reserved: give pci_device_id 0 or none"
    );
    c.platform.num_pci_segments = 3;
    c.devices[0].pci_device_id = None;
    c.devices[0].pci_segment = 2;
    assert_eq!(
        guest_topology(&c, 40).unwrap_err().field(),
        "devices[0].pci_segment"
    );
    // Another device on the slot's BDF, or another slot.
    let mut c = seed_with_an_empty_slot();
    c.devices = vec![DeviceConfig {
        id: Some("other".into()),
        pci_segment: 1,
        pci_device_id: Some(0),
        ..DeviceConfig::new("/o")
    }];
    assert_eq!(
        guest_topology(&c, 40).unwrap_err().field(),
        "devices[0].pci_device_id"
    );
    let mut c = seed_with_an_empty_slot();
    c.pci_slots.push(PciSlotConfig {
        id: "gpu1".into(),
        pci_segment: 1,
        pci_device_id: Some(0),
    });
    assert_eq!(
        guest_topology(&c, 40).unwrap_err().field(),
        "pci_slots[1].pci_device_id"
    );
}

#[test]
fn vcpu_hotplug_is_refused_until_supported() {
    let mut c = seed();
    c.cpus.max_vcpus = 4;
    c.numa[1].cpus = vec![1, 2, 3];
    assert_eq!(
        guest_topology(&c, 40).unwrap_err().field(),
        "cpus.max_vcpus"
    );
}

#[test]
fn more_ram_than_the_address_width_is_refused() {
    let mut c = seed();
    c.memory.zones[1].size = 64 << 30;
    let e = guest_topology(&c, 36).unwrap_err();
    assert_eq!(e.field(), "memory");
    assert!(e.to_string().contains("36 physical address bits"), "{e}");
}

#[test]
fn a_non_numa_config_has_no_nodes() {
    let c: VmConfig =
        serde_json::from_str(r#"{"memory": {"size": 4294967296}, "payload": {"kernel": "/k"}}"#)
            .unwrap();
    let g = guest_topology(&c, 40).unwrap();
    assert!(g.acpi.nodes.is_empty());
    // 4 GiB of RAM: 3 GiB below the gap, 1 GiB above 4 GiB.
    assert_eq!(
        g.acpi
            .memory
            .iter()
            .map(|m| (m.base, m.size))
            .collect::<Vec<_>>(),
        vec![(0, 3 << 30), (4 << 30, 1 << 30)]
    );
    let tables = build(&g.acpi, Placement::default()).unwrap();
    assert!(tables.get("SRAT").is_none());
}

#[test]
fn max_phys_bits_narrows_the_guest_and_its_memory_map() {
    // CH's default, 46, on a 48-bit host: the guest gets 46 bits, and its 64-bit PCI
    // windows end below 2^46.
    let mut c = seed();
    assert_eq!(c.cpus.max_phys_bits, 46);
    let g = guest_topology(&c, 48).unwrap();
    assert_eq!(g.phys_bits, 46);
    // On a narrower host the host's width is the limit.
    assert_eq!(guest_topology(&c, 40).unwrap().phys_bits, 40);
    // 64 GiB of address space leaves the 64-bit window less than its usual 64 GiB.
    c.cpus.max_phys_bits = 36;
    let g = guest_topology(&c, 48).unwrap();
    assert_eq!(g.phys_bits, 36);
    let end = g
        .layout
        .segments
        .iter()
        .map(|s| s.mmio64.end)
        .max()
        .unwrap();
    assert!(end <= 1 << 36, "{end:#x}");
    assert!(guest_topology(&c, 48).unwrap().layout != guest_topology(&seed(), 48).unwrap().layout);
    // Too few bits for RAM and windows: refused naming the field that set the limit.
    c.cpus.max_phys_bits = 32;
    let e = guest_topology(&c, 48).unwrap_err();
    assert_eq!(e.field(), "cpus.max_phys_bits");
    assert!(e.to_string().contains("this host has 48 bits"), "{e}");
    // The same limit coming from the host is the memory map's problem, as before.
    c.cpus.max_phys_bits = 46;
    assert_eq!(guest_topology(&c, 32).unwrap_err().field(), "memory");
}

#[test]
fn every_guest_gets_pci_hotplug_on_every_segment() {
    use tessera_vmm::guest_topology::pci_hotplug_controller;
    let mut config = seed();
    config.platform.num_pci_segments = 2;
    let g = guest_topology(&config, 40).unwrap();
    // The controller the device manager puts on the MMIO bus, and every slot but the
    // host bridge's offered, on every segment.
    assert_eq!(g.acpi.platform.pci_hotplug, Some(pci_hotplug_controller()));
    assert_eq!(
        g.acpi.pci_segments[0].hotplug_slots,
        (1..32).collect::<Vec<u8>>()
    );
    assert_eq!(
        g.acpi.pci_segments[1].hotplug_slots,
        (0..32).collect::<Vec<u8>>()
    );
    assert_eq!(
        g.slots.hotplug_slots(1),
        g.acpi.pci_segments[1].hotplug_slots
    );
    // The controller's bitmaps are the same slots.
    assert_eq!(g.slots.hotplug_mask(0), 0xffff_fffe);
    assert_eq!(g.slots.hotplug_mask(1), 0xffff_ffff);
    let tables = build(&g.acpi, Placement::default()).unwrap();
    let dsdt = &tables.get("DSDT").unwrap().bytes;
    assert!(dsdt.windows(4).any(|w| w == b"PHPR"));
    assert!(dsdt.windows(4).any(|w| w == b"SL1F"), "segment 1's slot 31");
    // Deterministic: the same configuration, the same bytes.
    let again = guest_topology(&config, 40).unwrap();
    assert_eq!(
        build(&again.acpi, Placement::default())
            .unwrap()
            .get("DSDT")
            .unwrap()
            .bytes,
        *dsdt
    );
    let hp = pci_hotplug_controller();
    assert_eq!(hp.mmio_base, tessera_arch::layout::PCI_HOTPLUG_START);
    assert_eq!(hp.mmio_len, tessera_devices::PCI_HOTPLUG_MMIO_LEN);
}

#[test]
fn the_tables_of_many_segments_sit_in_an_acpi_area_at_the_top_of_low_ram() {
    use tessera_arch::layout::{E820Kind, RSDP_START};
    // 64 segments with a GI-ready slot each: past the 128 KiB the BIOS area had.
    let mut config = seed();
    config.devices.clear();
    config.platform.num_pci_segments = 64;
    config.generic_initiators.clear();
    config.numa[9].device_id = Some("slot1".into());
    config.pci_slots = (1..64)
        .map(|n| PciSlotConfig {
            id: format!("slot{n}"),
            pci_segment: n,
            pci_device_id: Some(0),
        })
        .collect();
    let g = guest_topology(&config, 40).unwrap();
    let tables = g.acpi_tables().unwrap();
    assert_eq!(tables.rsdp.address, RSDP_START);
    let start = tables.tables.iter().map(|t| t.address).min().unwrap();
    let end = tables
        .tables
        .iter()
        .map(|t| t.address + t.bytes.len() as u64)
        .max()
        .unwrap();
    assert!(end - start > 128 << 10, "{} bytes", end - start);
    // Exactly the e820 ACPI area, which ends where low RAM (512 MiB here) ends.
    let (area, _) = g
        .layout
        .e820
        .iter()
        .find(|(_, kind)| *kind == E820Kind::Acpi)
        .unwrap();
    assert_eq!(area.start, start);
    assert_eq!(area.end, 512 * MIB);
    assert!(end <= area.end && area.end - end < 4096);
    // The memory ranges the SRAT gives still cover all of RAM.
    assert_eq!(g.acpi.memory.iter().map(|m| m.size).sum::<u64>(), 512 * MIB);
}

#[test]
fn a_segment_with_gi_ready_slots_offers_only_those_for_hotplug() {
    use tessera_vmm::device_manager::placement::PlacementError;
    // Segment 1 holds the GI-ready slot gpu0 (and a boot device); segment 2 holds none.
    let mut config = seed_with_an_empty_slot();
    config.platform.num_pci_segments = 3;
    config.devices = vec![DeviceConfig {
        id: Some("nic0".into()),
        pci_segment: 1,
        pci_device_id: Some(5),
        ..DeviceConfig::new("/n")
    }];
    let g = guest_topology(&config, 40).unwrap();
    assert_eq!(g.acpi.pci_segments[1].hotplug_slots, vec![0, 5]);
    assert_eq!(g.slots.hotplug_mask(1), 0b10_0001);
    assert_eq!(g.acpi.pci_segments[2].hotplug_slots.len(), 32);
    assert_eq!(g.acpi.pci_segments[0].hotplug_slots.len(), 31);

    // At runtime: the slot's own device lands in it; any other device on segment 1 is
    // refused, pinned or not, before anything is taken; segment 2 takes it.
    let mut slots = g.slots.clone();
    let gpu = DeviceConfig {
        id: Some("gpu0".into()),
        ..DeviceConfig::new("/g")
    };
    assert_eq!(
        slots.place(&gpu, "gpu0").unwrap().0.to_string(),
        "0001:00:00.0"
    );
    let other = |slot| DeviceConfig {
        pci_segment: 1,
        pci_device_id: slot,
        ..DeviceConfig::new("/o")
    };
    assert_eq!(
        slots.place(&other(None), "x"),
        Err(PlacementError::NoHotplugSlot { segment: 1 })
    );
    assert_eq!(
        slots.place(&other(Some(7)), "x"),
        Err(PlacementError::NotHotplug {
            segment: 1,
            slot: 7
        })
    );
    assert_eq!(slots, {
        let mut before = g.slots.clone();
        before.place(&gpu, "gpu0").unwrap();
        before
    });
    let elsewhere = DeviceConfig {
        pci_segment: 2,
        ..DeviceConfig::new("/o")
    };
    assert_eq!(
        slots.place(&elsewhere, "x").unwrap().0.to_string(),
        "0002:00:00.0"
    );
}

#[test]
fn hmat_values_reach_the_topology_in_table_units_and_config_order() {
    use tessera_acpi::HmatDataType as Table;
    use tessera_api::config::{HmatDataType, HmatHierarchy, HmatLbConfig};
    let mut c = seed();
    let value = |initiator, target, data_type, latency, bandwidth| HmatLbConfig {
        initiator,
        target,
        hierarchy: HmatHierarchy::Memory,
        data_type,
        latency,
        bandwidth,
    };
    c.hmat = vec![
        value(0, 0, HmatDataType::WriteLatency, Some(12), None),
        // A GI node as initiator: bytes/s in the config, MiB/s in the table.
        value(2, 1, HmatDataType::AccessBandwidth, None, Some(200 * MIB)),
    ];
    let g = guest_topology(&c, 40).unwrap();
    assert_eq!(
        g.acpi
            .hmat
            .iter()
            .map(|e| (e.initiator, e.target, e.data_type, e.value))
            .collect::<Vec<_>>(),
        vec![
            (0, 0, Table::WriteLatency, 12),
            (2, 1, Table::AccessBandwidth, 200)
        ]
    );
    let tables = g.acpi_tables().unwrap();
    assert!(tables.tables.iter().any(|t| &t.bytes[..4] == b"HMAT"));

    // The acpi crate's refusal names the configuration's own entry: node 3 is a GI
    // node, which has no memory to be a target.
    c.hmat
        .push(value(0, 3, HmatDataType::ReadLatency, Some(5), None));
    let e = guest_topology(&c, 40).unwrap_err();
    assert_eq!(e.field(), "hmat[2].target", "{e}");
}
