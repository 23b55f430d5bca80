//! The configuration reads Cloud Hypervisor's JSON, adds GI links in QEMU's and
//! libvirt's forms, and refuses bad input with the field that is wrong.

#![allow(clippy::unwrap_used, missing_docs)]

use tessera_api::config::{parse_node_set, ConsoleMode, PciSlotConfig, VmConfig};

/// The seed's shape: 2 CPU nodes with a zone each, 8 GI nodes on one device.
const SEED: &str = r#"{
  "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
  "memory": {"size": 0, "zones": [{"id": "m0", "size": 268435456}, {"id": "m1", "size": 268435456}]},
  "payload": {"kernel": "/boot/vmlinuz", "cmdline": "console=ttyS0"},
  "serial": {"mode": "Tty"},
  "devices": [{"path": "/sys/bus/pci/devices/0000:00:04.0", "id": "gpu0"}],
  "numa": [
    {"guest_numa_id": 0, "cpus": [0], "memory_zones": ["m0"], "distances": [{"destination": 1, "distance": 20}]},
    {"guest_numa_id": 1, "cpus": [1], "memory_zones": ["m1"], "distances": [{"destination": 0, "distance": 20}]},
    {"guest_numa_id": 2}, {"guest_numa_id": 3}, {"guest_numa_id": 4}, {"guest_numa_id": 5},
    {"guest_numa_id": 6}, {"guest_numa_id": 7}, {"guest_numa_id": 8},
    {"guest_numa_id": 9, "device_id": "gpu0"}
  ],
  "generic_initiators": [
    {"id": "gi0", "device": "gpu0", "node": 2},
    {"device": "gpu0", "nodes": "3-8"}
  ]
}"#;

fn seed() -> VmConfig {
    serde_json::from_str(SEED).unwrap()
}

fn refused(c: &VmConfig) -> (String, String) {
    let e = c.validate().unwrap_err();
    (e.field, e.message)
}

#[test]
fn the_seed_config_is_valid_and_round_trips() {
    let c = seed();
    c.validate().unwrap();
    assert_eq!(c.serial.mode, ConsoleMode::Tty);
    assert_eq!(
        c.generic_initiators[1].node_list("x").unwrap(),
        (3..=8).collect::<Vec<_>>()
    );
    let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn unknown_fields_are_named() {
    // Every CH field is known (see cloud_hypervisor_config.rs); a misspelt one is not.
    let e = serde_json::from_str::<VmConfig>(r#"{"payload": {}, "disk": []}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field `disk`"), "{e}");
    let e = serde_json::from_str::<VmConfig>(r#"{"payload": {"firmwar": "x"}}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field `firmwar`"), "{e}");
    let e = serde_json::from_str::<VmConfig>(
        r#"{"payload": {}, "rng": {"src": "/dev/urandom", "size": 1}}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `size`"), "{e}");
}

#[test]
fn a_kernel_is_required() {
    let mut c = seed();
    c.payload.kernel = None;
    assert_eq!(refused(&c).0, "payload.kernel");
}

#[test]
fn vcpu_counts() {
    let mut c = seed();
    c.cpus.boot_vcpus = 0;
    assert_eq!(refused(&c).0, "cpus.boot_vcpus");
    let mut c = seed();
    c.cpus.max_vcpus = 1;
    let (field, message) = refused(&c);
    assert_eq!(field, "cpus.max_vcpus");
    assert_eq!(message, "1 is below boot_vcpus 2");
    // A count beyond any KVM's is refused before anything is sized by it.
    let mut c = seed();
    c.cpus.boot_vcpus = u32::MAX;
    c.cpus.max_vcpus = u32::MAX;
    let (field, message) = refused(&c);
    assert_eq!(field, "cpus.max_vcpus");
    assert!(message.contains("4096"), "{message}");
    let mut c = seed();
    c.cpus.boot_vcpus = tessera_api::config::MAX_VCPUS;
    c.cpus.max_vcpus = tessera_api::config::MAX_VCPUS;
    let field = c.validate().err().map(|e| e.field);
    assert_ne!(field.as_deref(), Some("cpus.max_vcpus"));
}

#[test]
fn a_node_naming_a_missing_zone() {
    let mut c = seed();
    c.numa[1].memory_zones = vec!["m9".into()];
    assert_eq!(
        refused(&c),
        (
            "numa[1].memory_zones[0]".into(),
            "no memory zone is called `m9`".into()
        )
    );
}

#[test]
fn a_zone_in_two_nodes_or_in_none() {
    let mut c = seed();
    c.numa[1].memory_zones = vec!["m0".into()];
    assert_eq!(refused(&c).1, "zone `m0` is already in numa[0]");
    let mut c = seed();
    c.numa[1].memory_zones.clear();
    assert_eq!(
        refused(&c),
        ("numa".into(), "memory zone `m1` is in no node".into())
    );
}

#[test]
fn size_and_zones_together() {
    let mut c = seed();
    c.memory.size = 1 << 30;
    assert_eq!(refused(&c).0, "memory.size");
}

#[test]
fn cpus_in_nodes() {
    let mut c = seed();
    c.numa[1].cpus = vec![0];
    assert_eq!(
        refused(&c),
        (
            "numa[1].cpus[0]".into(),
            "vCPU 0 is already in numa[0]".into()
        )
    );
    let mut c = seed();
    c.numa[1].cpus = vec![5];
    assert_eq!(refused(&c).1, "vCPU 5 does not exist (max_vcpus is 2)");
    let mut c = seed();
    c.numa[1].cpus.clear();
    assert_eq!(
        refused(&c).1,
        "vCPU 1 is in no node; with NUMA nodes every vCPU needs one"
    );
}

#[test]
fn node_ids_and_distances() {
    let mut c = seed();
    c.numa[3].guest_numa_id = 2;
    assert_eq!(
        refused(&c),
        (
            "numa[3].guest_numa_id".into(),
            "node 2 is declared twice".into()
        )
    );
    let mut c = seed();
    c.numa[9].guest_numa_id = 12;
    assert!(refused(&c).1.contains("node 9 is missing"));
    let mut c = seed();
    c.numa[0].distances[0].distance = 255;
    assert_eq!(refused(&c).0, "numa[0].distances[0]");
    let mut c = seed();
    c.numa[0].distances[0].destination = 40;
    assert_eq!(refused(&c).1, "node 40 does not exist");
}

#[test]
fn gi_links_to_missing_devices_or_nodes_or_twice() {
    let mut c = seed();
    c.generic_initiators[0].device = "gpu9".into();
    assert_eq!(
        refused(&c),
        (
            "generic_initiators[0].device".into(),
            "no device or PCI slot has id `gpu9`".into()
        )
    );
    let mut c = seed();
    c.generic_initiators[1].nodes = Some("3-10".parse().unwrap());
    assert_eq!(
        refused(&c),
        (
            "generic_initiators[1].nodes".into(),
            "node 10 does not exist".into()
        )
    );
    let mut c = seed();
    c.generic_initiators[1].nodes = Some("2-4".parse().unwrap());
    assert_eq!(refused(&c).1, "`gpu0` is already linked to node 2");
    let mut c = seed();
    c.numa[9].device_id = Some("gpu0".into());
    c.generic_initiators[1].nodes = Some("3-9".parse().unwrap());
    assert_eq!(refused(&c).0, "numa[9].device_id");
    let mut c = seed();
    c.generic_initiators[0].nodes = Some("3".parse().unwrap());
    assert_eq!(refused(&c).1, "give `node` or `nodes`, not both");
    let mut c = seed();
    c.generic_initiators[0].node = None;
    assert_eq!(refused(&c).1, "needs `node` or `nodes`");
    // A node set that does not parse never becomes a configuration.
    let mut json = serde_json::to_value(seed()).unwrap();
    json["generic_initiators"][1]["nodes"] = "3-x".into();
    let e = serde_json::from_value::<VmConfig>(json).unwrap_err();
    assert!(
        e.to_string().contains("`x` in `3-x` is not a node number"),
        "{e}"
    );
}

#[test]
fn devices_ids_and_placement() {
    let mut c = seed();
    c.devices.push(c.devices[0].clone());
    assert_eq!(
        refused(&c),
        (
            "devices[1].id".into(),
            "`gpu0` is already devices[0]".into()
        )
    );
    let mut c = seed();
    c.devices[0].pci_segment = 1;
    assert_eq!(refused(&c).0, "devices[0].pci_segment");
    c.platform.num_pci_segments = 2;
    c.devices[0].pci_device_id = Some(0);
    c.validate().unwrap();
    c.devices[0].pci_segment = 0;
    assert_eq!(refused(&c).0, "devices[0].pci_device_id");
}

#[test]
fn console_modes_need_their_targets() {
    let mut c = seed();
    c.serial.mode = ConsoleMode::File;
    assert_eq!(refused(&c).0, "serial.file");
}

#[test]
fn the_virtio_console_may_only_be_absent() {
    let mut c = seed();
    // CH's default, which every CH configuration carries.
    assert_eq!(c.console.mode, ConsoleMode::Tty);
    for mode in [ConsoleMode::Off, ConsoleMode::Null, ConsoleMode::Tty] {
        c.console.mode = mode;
        c.validate().unwrap();
    }
    for mode in [ConsoleMode::Pty, ConsoleMode::File, ConsoleMode::Socket] {
        c.console.mode = mode;
        let (field, message) = refused(&c);
        assert_eq!(field, "console.mode");
        assert!(message.contains("no virtio console"), "{message}");
    }
}

#[test]
fn node_sets() {
    assert_eq!(parse_node_set("2-4,7,9-9").unwrap(), vec![2, 3, 4, 7, 9]);
    assert_eq!(parse_node_set("5").unwrap(), vec![5]);
    for bad in ["", "4-2", "a", "1,,2", "0-70000"] {
        assert!(parse_node_set(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_host_bridge_is_a_device_links_may_name() {
    let mut c = seed();
    c.generic_initiators[0].device = tessera_api::config::HOST_BRIDGE_ID.into();
    c.validate().unwrap();
    c.devices[0].id = Some(tessera_api::config::HOST_BRIDGE_ID.into());
    assert_eq!(refused(&c).0, "devices[0].id");
}

fn slot(id: &str, segment: u16, device: Option<u8>) -> PciSlotConfig {
    PciSlotConfig {
        id: id.into(),
        pci_segment: segment,
        pci_device_id: device,
    }
}

/// The seed with its device gone and its GI links on an empty slot at 0001:00:00.0.
fn seed_with_an_empty_slot() -> VmConfig {
    let mut c = seed();
    c.devices.clear();
    c.platform.num_pci_segments = 2;
    c.pci_slots = vec![slot("gpu0", 1, Some(0))];
    c
}

#[test]
fn gi_links_may_name_an_empty_slot_and_it_round_trips() {
    let c = seed_with_an_empty_slot();
    c.validate().unwrap();
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(
        json["pci_slots"],
        serde_json::json!([{"id": "gpu0", "pci_segment": 1, "pci_device_id": 0}])
    );
    let back: VmConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back, c);
    // Defaults: segment 0, no device number.
    let s: PciSlotConfig = serde_json::from_str(r#"{"id": "s"}"#).unwrap();
    assert_eq!(s, slot("s", 0, None));
    let e = serde_json::from_str::<PciSlotConfig>(r#"{"id": "s", "bus": 1}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field `bus`"), "{e}");
    // A device may have a slot's id (it fills the slot); both name one GI target.
    let mut c = seed();
    c.pci_slots = vec![slot("gpu0", 0, None)];
    c.validate().unwrap();
}

#[test]
fn bad_slots_are_named() {
    let mut c = seed_with_an_empty_slot();
    c.pci_slots.push(slot("gpu0", 0, None));
    assert_eq!(
        refused(&c),
        (
            "pci_slots[1].id".into(),
            "`gpu0` is already pci_slots[0]".into()
        )
    );
    let mut c = seed_with_an_empty_slot();
    c.pci_slots[0].pci_segment = 2;
    assert_eq!(
        refused(&c),
        (
            "pci_slots[0].pci_segment".into(),
            "segment 2 does not exist (platform.num_pci_segments is 2)".into()
        )
    );
    let mut c = seed_with_an_empty_slot();
    c.pci_slots[0].pci_segment = 0;
    assert_eq!(refused(&c).0, "pci_slots[0].pci_device_id");
    c.pci_slots[0].pci_device_id = Some(32);
    assert_eq!(refused(&c).0, "pci_slots[0].pci_device_id");
    c.pci_slots[0].pci_device_id = Some(31);
    c.validate().unwrap();
    let mut c = seed_with_an_empty_slot();
    c.pci_slots[0].id = String::new();
    assert_eq!(refused(&c).0, "pci_slots[0].id");
    c.pci_slots[0].id = tessera_api::config::HOST_BRIDGE_ID.into();
    assert_eq!(refused(&c).0, "pci_slots[0].id");
}

#[test]
fn a_node_a_slots_link_needs_cannot_go() {
    // As for a device: without node 9, the slot's link to it names nothing.
    let mut c = seed_with_an_empty_slot();
    c.generic_initiators[1].nodes = Some("3-9".parse().unwrap());
    c.numa[9].device_id = None;
    c.validate().unwrap();
    c.numa.pop();
    assert_eq!(
        refused(&c),
        (
            "generic_initiators[1].nodes".into(),
            "node 9 does not exist".into()
        )
    );
}

#[test]
fn hmat_values_round_trip_and_one_values_faults_are_named() {
    let mut json: serde_json::Value = serde_json::from_str(SEED).unwrap();
    json["hmat"] = serde_json::json!([
        {"initiator": 0, "target": 0, "hierarchy": "memory", "data_type": "read_latency", "latency": 10},
        {"initiator": 2, "target": 1, "hierarchy": "memory", "data_type": "read_bandwidth",
         "bandwidth": 209715200u64}
    ]);
    let c: VmConfig = serde_json::from_value(json.clone()).unwrap();
    c.validate().unwrap();
    assert_eq!(c.hmat[0].table_value(), Some(10));
    // Bytes per second in, MiB/s in the table, as QEMU.
    assert_eq!(c.hmat[1].table_value(), Some(200));
    let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);

    let refuse = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut j = json.clone();
        edit(&mut j);
        let c: VmConfig = serde_json::from_value(j).unwrap();
        refused(&c)
    };
    let (field, message) = refuse(&|j| j["hmat"][0]["hierarchy"] = "first_level".into());
    assert_eq!(field, "hmat[0].hierarchy");
    assert!(message.contains("only `memory` is supported"), "{message}");
    let (field, _) = refuse(&|j| j["hmat"][0]["bandwidth"] = 1048576.into());
    assert_eq!(field, "hmat[0].bandwidth");
    let (field, message) = refuse(&|j| {
        j["hmat"][1]["latency"] = 5.into();
    });
    assert_eq!(field, "hmat[1].latency");
    assert!(message.contains("takes `bandwidth`"), "{message}");
    let (field, _) = refuse(&|j| j["hmat"][0]["latency"] = 0.into());
    assert_eq!(field, "hmat[0].latency");
    let (field, message) = refuse(&|j| j["hmat"][1]["bandwidth"] = 1000.into());
    assert_eq!(field, "hmat[1].bandwidth");
    assert!(message.contains("multiple of 1 MiB/s"), "{message}");
    let (field, _) = refuse(&|j| {
        j["hmat"][1].as_object_mut().unwrap().remove("bandwidth");
    });
    assert_eq!(field, "hmat[1].bandwidth");
    // QEMU's names are the command line's; JSON has snake_case like every other enum.
    json["hmat"][0]["data_type"] = "read-latency".into();
    assert!(serde_json::from_value::<VmConfig>(json).is_err());
}
