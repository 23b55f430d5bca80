//! Every table of every fixture topology is judged by ACPICA: `iasl -d` decodes it
//! without complaint and re-encodes it to the same bytes, and `acpiexec` loads the DSDT
//! with the other tables, evaluates its objects and powers off through S5.
//! What iasl decodes is then compared with what the topology says.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::path::PathBuf;

use tessera_acpi::{build, Placement};
use tessera_tests::acpica::{acpiexec, acpiexec_with, compile_asl, judge_table};
use tessera_tests::topologies::{self, Case};

fn judge_case(case: &Case) {
    let tables = build(&case.topology, Placement::default())
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let mut decoded = std::collections::HashMap::new();
    for t in &tables.tables {
        let dsl =
            judge_table(&t.signature, &t.bytes).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        decoded.insert(t.signature.clone(), dsl);
    }

    // What iasl decoded must be what the topology says.
    let t = &case.topology;
    if t.nodes.is_empty() {
        assert!(!decoded.contains_key("SRAT") && !decoded.contains_key("SLIT"));
    } else {
        let srat = &decoded["SRAT"];
        let gi_handles: Vec<String> = srat
            .lines()
            .filter(|l| l.contains("Device Handle :"))
            .map(|l| l.split(" : ").nth(1).unwrap().trim().to_string())
            .collect();
        let expected: Vec<String> = t
            .generic_initiators
            .iter()
            .map(|l| {
                let d = t.pci_devices.iter().find(|d| d.id == l.device).unwrap();
                let seg = d.bdf.segment.to_le_bytes();
                format!(
                    "{:02X} {:02X} {:02X} {:02X} 00 00 00 00 00 00 00 00 00 00 00 00",
                    seg[0],
                    seg[1],
                    d.bdf.bus,
                    d.bdf.devfn()
                )
            })
            .collect();
        let mut sorted_handles = gi_handles.clone();
        sorted_handles.sort();
        let mut sorted_expected = expected.clone();
        sorted_expected.sort();
        assert_eq!(sorted_handles, sorted_expected, "{}: GI handles", case.name);
        let x2 = t.cpus.iter().filter(|c| c.apic_id >= 255).count();
        assert_eq!(
            srat.matches("[Processor Local x2APIC Affinity]").count(),
            x2,
            "{}: SRAT x2APIC entries",
            case.name
        );
        assert_eq!(
            srat.matches("[Processor Local APIC/SAPIC Affinity]")
                .count(),
            t.cpus.len() - x2,
            "{}: SRAT Local APIC entries",
            case.name
        );
        assert_eq!(
            srat.matches("[Memory Affinity]").count(),
            t.memory.len(),
            "{}: SRAT memory entries",
            case.name
        );
        assert!(decoded["SLIT"].contains(&format!("Localities : {:016X}", t.nodes.len())));
    }
    let madt = &decoded["APIC"];
    let x2 = t.cpus.iter().filter(|c| c.apic_id >= 255).count();
    assert_eq!(
        madt.matches("[Processor Local x2APIC]").count(),
        x2,
        "{}: MADT x2APIC entries",
        case.name
    );
    assert_eq!(
        madt.matches("[Processor Local APIC]").count(),
        t.cpus.len() - x2,
        "{}: MADT Local APIC entries",
        case.name
    );
    assert!(decoded["FACP"].contains("Hardware Reduced (V5) : 1"));

    // acpiexec: load everything, evaluate every device's objects, power off through S5.
    let dsdt = &tables.get("DSDT").unwrap().bytes;
    let others: Vec<(&str, &[u8])> = tables
        .tables
        .iter()
        .filter(|t| t.signature != "DSDT" && t.signature != "XSDT")
        .map(|t| (t.signature.as_str(), t.bytes.as_slice()))
        .collect();
    let mut commands: Vec<String> = Vec::new();
    // acpiexec takes at most 1023 characters of batch commands: hotplug gets its own run.
    let mut hotplug_commands: Vec<String> = Vec::new();
    for (i, s) in t.pci_segments.iter().enumerate() {
        for obj in ["_HID", "_CID", "_SEG", "_UID", "_BBN", "_CRS"] {
            commands.push(format!("evaluate \\_SB_.PC{i:02X}.{obj}"));
        }
        if s.node.is_some() {
            commands.push(format!("evaluate \\_SB_.PC{i:02X}._PXM"));
        }
        if !s.intx_routes.is_empty() {
            commands.push(format!("evaluate \\_SB_.PC{i:02X}._PRT"));
        }
        commands.push(format!("evaluate \\_SB_.MB{i:02X}._CRS"));
        // The first and last hotplug slot's identity (their _EJ0 writes registers, which
        // acpiexec_drives_the_hotplug_methods checks).
        for slot in [s.hotplug_slots.iter().min(), s.hotplug_slots.iter().max()]
            .into_iter()
            .flatten()
        {
            for obj in ["_ADR", "_SUN"] {
                hotplug_commands.push(format!("evaluate \\_SB_.PC{i:02X}.SL{slot:02X}.{obj}"));
            }
        }
    }
    if t.platform.pci_hotplug.is_some() {
        hotplug_commands.push("evaluate \\_SB_.PHPR._CRS".into());
    }
    commands.extend(
        [
            "evaluate \\_SB_.COM1._CRS",
            "evaluate \\_SB_.PWRB._HID",
            "evaluate \\_SB_.GED_._CRS",
            "evaluate \\_SB_.GED_._EVT 9",
            "evaluate \\_S5_",
            "sleep 5",
        ]
        .map(String::from),
    );
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let out = acpiexec(dsdt, &others, &commands).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let hotplug_commands: Vec<&str> = hotplug_commands.iter().map(String::as_str).collect();
    let hotplug_out = if hotplug_commands.is_empty() {
        String::new()
    } else {
        acpiexec(dsdt, &others, &hotplug_commands).unwrap_or_else(|e| panic!("{}: {e}", case.name))
    };
    assert!(
        out.contains("Entering sleep state [S5]"),
        "{}: S5 not entered:\n{out}",
        case.name
    );
    for s in &t.pci_segments {
        for &slot in s
            .hotplug_slots
            .iter()
            .min()
            .iter()
            .chain(&s.hotplug_slots.iter().max())
        {
            let adr = u32::from(*slot) << 16;
            let sun = u32::from(s.id) * 32 + u32::from(*slot);
            for value in [u64::from(adr), u64::from(sun)] {
                assert!(
                    hotplug_out.contains(&format!("[Integer] = {value:016X}")),
                    "{}: slot {slot} of segment {}: {value:#x} not evaluated",
                    case.name,
                    s.id
                );
            }
        }
        if let Some(node) = s.node {
            assert!(
                out.contains(&format!("[Integer] = {node:016X}")),
                "{}: _PXM",
                case.name
            );
        }
    }
}

#[test]
fn one_node_tables_pass_acpica() {
    judge_case(&topologies::one_node());
}

#[test]
fn seed_shape_tables_pass_acpica() {
    judge_case(&topologies::seed_shape());
}

#[test]
fn sixty_four_node_tables_pass_acpica() {
    judge_case(&topologies::sixty_four_nodes());
}

#[test]
fn x2apic_255_vcpu_tables_pass_acpica() {
    judge_case(&topologies::x2apic_255());
}

#[test]
fn non_numa_tables_pass_acpica() {
    judge_case(&topologies::non_numa());
}

#[test]
fn two_segments_with_devices_at_devfn_0_pass_acpica() {
    // GPUs at device 0 of their own segments, as NVIDIA's driver wants GI handles.
    let mut case = topologies::seed_shape();
    let mut seg1 = topologies::segment0();
    seg1.id = 1;
    seg1.ecam_base = 0xa000_0000;
    seg1.end_bus = 0x0f;
    seg1.mmio32 = tessera_acpi::Window {
        base: 0xa100_0000,
        size: 0x0f00_0000,
    };
    seg1.mmio64 = Some(tessera_acpi::Window {
        base: 0x100_0000_0000,
        size: 0x10_0000_0000,
    });
    seg1.io = None;
    seg1.node = Some(1);
    case.topology.pci_segments.push(seg1);
    case.topology.pci_devices[1].bdf = "0001:00:00.0".parse().unwrap();
    case.name = "two segments";
    judge_case(&case);
}

fn reference(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference/qemu-acpi")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// SRAT subtables of the given type, as byte slices.
fn srat_subtables(srat: &[u8], kind: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 48;
    while at + 2 <= srat.len() {
        let len = srat[at + 1] as usize;
        if srat[at] == kind {
            out.push(&srat[at..at + len]);
        }
        at += len;
    }
    out
}

#[test]
fn gi_entry_is_byte_identical_to_qemus() {
    // QEMU's acpihmat-generic-x test: a pci-testdev at bus 1 devfn 0x02 (01:00.2) is the
    // Generic Initiator of node 1.
    let qemu = reference("x86_q35_SRAT.acpihmat-generic-x.dat");
    let qemu_gi = srat_subtables(&qemu, 5);
    assert_eq!(qemu_gi.len(), 1);

    let mut case = topologies::one_node();
    let t = &mut case.topology;
    t.nodes.push(tessera_acpi::NumaNode { id: 1 });
    t.pci_devices.push(tessera_acpi::PciDevice {
        id: "testdev".into(),
        bdf: "0000:01:00.2".parse().unwrap(),
    });
    t.generic_initiators
        .push(tessera_acpi::GenericInitiatorLink {
            device: "testdev".into(),
            node: 1,
        });
    let ours = build(t, Placement::default()).unwrap();
    let srat = &ours.get("SRAT").unwrap().bytes;
    assert_eq!(srat_subtables(srat, 5), qemu_gi);
    // And the spec's vector from the issue.
    assert_eq!(
        qemu_gi[0],
        [
            0x05, 0x20, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0
        ]
    );
}

#[test]
fn slit_matches_qemus() {
    // QEMU's memhp test: two nodes, distance 21 both ways.
    let qemu = reference("x86_q35_SLIT.memhp.dat");
    let mut case = topologies::one_node();
    let t = &mut case.topology;
    t.nodes.push(tessera_acpi::NumaNode { id: 1 });
    t.distances = Some(vec![vec![10, 21], vec![21, 10]]);
    let ours = build(t, Placement::default()).unwrap();
    let slit = &ours.get("SLIT").unwrap().bytes;
    assert_eq!(slit.len(), qemu.len());
    assert_eq!(slit[36..], qemu[36..], "locality count and matrix");
}

#[test]
fn the_judges_reject_corrupt_tables() {
    let tables = build(&topologies::seed_shape().topology, Placement::default()).unwrap();
    let srat = tables.get("SRAT").unwrap().bytes.clone();

    let mut bad_checksum = srat.clone();
    bad_checksum[9] = bad_checksum[9].wrapping_add(1);
    assert!(judge_table("SRAT", &bad_checksum).is_err());

    // A GI structure claiming 33 bytes: everything after it decodes wrongly.
    let mut bad_length = srat.clone();
    let gi = (48..srat.len())
        .step_by(1)
        .find(|&i| srat[i] == 5 && srat[i + 1] == 32)
        .unwrap();
    bad_length[gi + 1] = 33;
    assert!(judge_table("SRAT", &bad_length).is_err());

    // A DSDT cut short does not load.
    let dsdt = &tables.get("DSDT").unwrap().bytes;
    let mut truncated = dsdt[..dsdt.len() - 20].to_vec();
    let len = truncated.len() as u32;
    truncated[4..8].copy_from_slice(&len.to_le_bytes());
    assert!(acpiexec(&truncated, &[], &["evaluate \\_S5_"]).is_err());
}

#[test]
fn tables_from_a_vm_config_pass_acpica() {
    // What the VMM builds from a CH-style config: 3 segments, GPUs at devfn 0 of
    // segments 1 and 2, 2 CPU nodes with zones, 8 GI nodes per GPU.
    let config: tessera_api::config::VmConfig = serde_json::from_str(
        r#"{
      "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
      "memory": {"size": 0, "zones": [{"id": "m0", "size": 2147483648}, {"id": "m1", "size": 2147483648}]},
      "payload": {"kernel": "/boot/vmlinuz"},
      "platform": {"num_pci_segments": 3},
      "devices": [
        {"path": "/sys/bus/pci/devices/0000:41:00.0", "id": "gpu0", "pci_segment": 1},
        {"path": "/sys/bus/pci/devices/0000:c1:00.0", "id": "gpu1", "pci_segment": 2}
      ],
      "numa": [
        {"guest_numa_id": 0, "cpus": [0], "memory_zones": ["m0"], "pci_segments": [1]},
        {"guest_numa_id": 1, "cpus": [1], "memory_zones": ["m1"], "pci_segments": [2]},
        {"guest_numa_id": 2}, {"guest_numa_id": 3}, {"guest_numa_id": 4}, {"guest_numa_id": 5},
        {"guest_numa_id": 6}, {"guest_numa_id": 7}, {"guest_numa_id": 8}, {"guest_numa_id": 9},
        {"guest_numa_id": 10}, {"guest_numa_id": 11}, {"guest_numa_id": 12}, {"guest_numa_id": 13},
        {"guest_numa_id": 14}, {"guest_numa_id": 15}, {"guest_numa_id": 16}, {"guest_numa_id": 17}
      ],
      "generic_initiators": [{"device": "gpu0", "nodes": "2-9"}, {"device": "gpu1", "nodes": "10-17"}]
    }"#,
    )
    .unwrap();
    let guest = tessera_vmm::guest_topology::guest_topology(&config, 46).unwrap();
    judge_case(&Case {
        name: "from a VM config",
        topology: guest.acpi,
        cpus: 2,
        memory_mib: 4096,
        qemu_devices: vec![],
    });
}

#[test]
fn an_empty_gi_ready_slot_is_named_by_the_srat_iasl_decodes() {
    // `--platform num_pci_segments=2 --pci-slot id=gpu0,pci_segment=1,pci_device_id=0
    // --generic-initiator device=gpu0,nodes=2-9`, no device: the SRAT names 0001:00:00.0
    // for nodes 2-9 all the same.
    let config: tessera_api::config::VmConfig = serde_json::from_str(
        r#"{
      "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
      "memory": {"size": 0, "zones": [{"id": "m0", "size": 268435456}, {"id": "m1", "size": 268435456}]},
      "payload": {"kernel": "/boot/vmlinuz"},
      "platform": {"num_pci_segments": 2},
      "pci_slots": [{"id": "gpu0", "pci_segment": 1, "pci_device_id": 0}],
      "numa": [
        {"guest_numa_id": 0, "cpus": [0], "memory_zones": ["m0"]},
        {"guest_numa_id": 1, "cpus": [1], "memory_zones": ["m1"]},
        {"guest_numa_id": 2}, {"guest_numa_id": 3}, {"guest_numa_id": 4}, {"guest_numa_id": 5},
        {"guest_numa_id": 6}, {"guest_numa_id": 7}, {"guest_numa_id": 8}, {"guest_numa_id": 9}
      ],
      "generic_initiators": [{"device": "gpu0", "nodes": "2-9"}]
    }"#,
    )
    .unwrap();
    let guest = tessera_vmm::guest_topology::guest_topology(&config, 46).unwrap();
    let tables = build(&guest.acpi, Placement::default()).unwrap();
    let srat = judge_table("SRAT", &tables.get("SRAT").unwrap().bytes).unwrap();
    let field = |name: &str| -> Vec<String> {
        srat.lines()
            .filter(|l| l.contains(name))
            .map(|l| l.split(" : ").nth(1).unwrap().trim().to_string())
            .collect()
    };
    // Segment 1 (little-endian), bus 0, devfn 0.
    assert_eq!(
        field("Device Handle :"),
        vec!["01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"; 8]
    );
    let mut domains = field("Proximity Domain :");
    domains.retain(|d| u32::from_str_radix(d, 16).unwrap() >= 2);
    assert_eq!(domains.len(), 8, "{srat}");
    judge_case(&Case {
        name: "an empty GI-ready slot",
        topology: guest.acpi,
        cpus: 2,
        memory_mib: 512,
        qemu_devices: vec![],
    });
}

/// What the VMM builds from a config with `segments` PCI segments and a GPU at devfn 0 of
/// the last one, with ACPI PCI hotplug turned on the way the VMM will: its controller
/// and every slot but the host bridge's.
fn vm_with_hotplug(segments: u16) -> tessera_acpi::Topology {
    use tessera_vmm::guest_topology::{guest_topology, pci_hotplug_controller};
    let config: tessera_api::config::VmConfig = serde_json::from_str(&format!(
        r#"{{
      "cpus": {{"boot_vcpus": 2, "max_vcpus": 2}},
      "memory": {{"size": 1073741824}},
      "payload": {{"kernel": "/boot/vmlinuz"}},
      "platform": {{"num_pci_segments": {segments}}},
      "devices": [{{"path": "/sys/bus/pci/devices/0000:41:00.0", "id": "gpu0",
                    "pci_segment": {last}}}]
    }}"#,
        last = segments - 1
    ))
    .unwrap();
    let t = guest_topology(&config, 46).unwrap().acpi;
    // Every guest gets the controller and its slots.
    assert_eq!(t.platform.pci_hotplug, Some(pci_hotplug_controller()));
    assert!(t.pci_segments.iter().all(|s| !s.hotplug_slots.is_empty()));
    t
}

#[test]
fn tables_with_pci_hotplug_pass_acpica() {
    for segments in [1, 3] {
        judge_case(&Case {
            name: "PCI hotplug",
            topology: vm_with_hotplug(segments),
            cpus: 2,
            memory_mib: 1024,
            qemu_devices: vec![],
        });
    }
}

/// The values acpiexec's `-vr` trace shows written to `address`, in order.
fn register_writes(out: &str, address: u64) -> Vec<u32> {
    let tag = format!("Addr {address:08X} ");
    out.lines()
        .filter(|l| l.contains("SystemMemory Write:") && l.contains(&tag))
        .map(|l| {
            let val = l.split("Val ").nth(1).unwrap().split(' ').next().unwrap();
            u32::from_str_radix(val, 16).unwrap()
        })
        .collect()
}

#[test]
fn acpiexec_drives_the_hotplug_methods() {
    let t = vm_with_hotplug(2);
    // The devices crate's layout, as the VMM passed it in.
    let hp = t.platform.pci_hotplug.unwrap();
    let (base, regs) = (hp.mmio_base, hp.registers);
    let tables = build(&t, Placement::default()).unwrap();
    let dsdt = &tables.get("DSDT").unwrap().bytes;
    // The test plays the VMM: slots 0, 1 and 31 came up, slot 2 is asked to go, and the
    // GED says "hotplug". acpiexec keeps SystemMemory in a buffer, so what this writes is
    // what PSCN reads, for every segment it selects.
    let vmm = compile_asl(
        r#"DefinitionBlock ("", "SSDT", 2, "TEST", "PLAYVMM", 1)
        {
            External (\_SB.PHPR.PCIU, FieldUnitObj)
            External (\_SB.PHPR.PCID, FieldUnitObj)
            External (\_SB.GED.GDAT, FieldUnitObj)
            Method (\VMM) {
                \_SB.PHPR.PCIU = 0x80000003
                \_SB.PHPR.PCID = 0x00000004
                \_SB.GED.GDAT = 0x02
            }
        }"#,
    )
    .unwrap();
    let out = acpiexec_with(
        dsdt,
        &[("SSDT", &vmm)],
        &["-vr"],
        &[
            "evaluate \\VMM",
            "evaluate \\_SB_.GED_._EVT 9",
            "evaluate \\_SB_.PC01.SL00._EJ0 1",
            "evaluate \\_SB_.PC00.SL1F._EJ0 1",
        ],
    )
    .unwrap();

    let notified = |slot: &str, what: &str| {
        out.lines()
            .filter(|l| l.contains(&format!("Notify on [{slot}]")) && l.contains(what))
            .count()
    };
    // Segment 0 has no slot 0 (the host bridge); segment 1 has all 32.
    assert_eq!(notified("SL00", "(Device Check)"), 1, "{out}");
    assert_eq!(notified("SL01", "(Device Check)"), 2, "{out}");
    assert_eq!(notified("SL1F", "(Device Check)"), 2, "{out}");
    assert_eq!(notified("SL02", "(Eject Request)"), 2, "{out}");
    assert_eq!(out.matches("Received a System Notify").count(), 7, "{out}");
    assert!(
        !out.contains("[PWRB]"),
        "the power button bit was clear:\n{out}"
    );

    // PSCN selected segment 0 then 1 and read PCIU once each; each _EJ0 selected its
    // segment, then wrote its slot's bit to B0EJ.
    assert_eq!(
        register_writes(&out, base + regs.segment),
        [0, 1, 1, 0],
        "{out}"
    );
    assert_eq!(
        register_writes(&out, base + regs.eject),
        [1 << 0, 1 << 31],
        "{out}"
    );
    let pciu_reads = format!(
        "SystemMemory Read : Val 80000003 Addr {:08X}",
        base + regs.slots_up
    );
    assert_eq!(out.matches(&pciu_reads).count(), 2, "{out}");
}
