//! `device_memory` in the guest's topology: a device's BAR becomes hot-pluggable SRAT
//! memory of its node, placed after RAM above 4 GiB and in the e820 as RAM, at the
//! configured (or default, equal) distance from every node, linked by GI when asked;
//! and the configurations that cannot be, refused by field before any host is read.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use tessera_acpi::{build, decode::decode_srat, Placement};
use tessera_api::config::{VmConfig, DEFAULT_DEVICE_MEMORY_DISTANCE};
use tessera_arch::layout::{E820Kind, Range};
use tessera_vmm::guest_topology::{guest_topology, guest_topology_sized};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Two CPU nodes with 512 MiB each; node 2 holds `ivs0`'s BAR 2; node 3 is a GI node.
fn config() -> VmConfig {
    serde_json::from_str(
        r#"{
      "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
      "memory": {"size": 0, "zones": [{"id": "m0", "size": 536870912}, {"id": "m1", "size": 536870912}]},
      "payload": {"kernel": "/boot/vmlinuz"},
      "devices": [{"path": "/sys/bus/pci/devices/ffff:ff:1f.7", "id": "ivs0"}],
      "numa": [
        {"guest_numa_id": 0, "cpus": [0], "memory_zones": ["m0"]},
        {"guest_numa_id": 1, "cpus": [1], "memory_zones": ["m1"]},
        {"guest_numa_id": 2},
        {"guest_numa_id": 3}
      ],
      "generic_initiators": [{"device": "ivs0", "nodes": "2-3"}],
      "device_memory": [{"device": "ivs0", "bar": 2, "node": 2}]
    }"#,
    )
    .unwrap()
}

#[test]
fn a_bar_becomes_hot_pluggable_memory_of_its_node() {
    let g = guest_topology_sized(&config(), 40, &[128 * MIB]).unwrap();
    let at = Range {
        start: 4 * GIB,
        end: 4 * GIB + 128 * MIB,
    };
    assert_eq!(g.layout.device_memory, vec![at]);
    assert_eq!(g.device_memory[0].range, at);
    assert_eq!((g.device_memory[0].bar, g.device_memory[0].node), (2, 2));
    assert!(g.layout.e820.contains(&(at, E820Kind::Ram)));
    // Clear of RAM and of the 64-bit window.
    assert!(g.layout.segments[0].mmio64.start >= at.end);
    assert!(g.layout.zones.iter().flatten().all(|r| r.end <= at.start));

    let tables = build(&g.acpi, Placement::default()).unwrap();
    let srat = decode_srat(&tables.get("SRAT").unwrap().bytes).unwrap();
    let memory: Vec<_> = srat
        .memory
        .iter()
        .map(|m| (m.base, m.size, m.node, m.hotpluggable))
        .collect();
    assert!(
        memory.contains(&(4 * GIB, 128 * MIB, 2, true)),
        "{memory:?}"
    );
    assert!(memory.iter().filter(|m| m.2 != 2).all(|m| !m.3));
    assert!(srat.generic_initiators.iter().any(|gi| gi.node == 3));

    // Equally far from every other node, both ways.
    let d = g.acpi.distances.unwrap();
    let far = DEFAULT_DEVICE_MEMORY_DISTANCE;
    assert_eq!(
        (d[0][2], d[1][2], d[2][0], d[2][1], d[3][2]),
        (far, far, far, far, far)
    );
    assert_eq!((d[0][1], d[2][2]), (20, 10));
}

#[test]
fn the_distance_is_configurable_and_numa_distances_win() {
    let mut c = config();
    c.device_memory[0].distance = Some(80);
    c.numa[0].distances = vec![tessera_api::config::NumaDistance {
        destination: 2,
        distance: 30,
    }];
    let d = guest_topology_sized(&c, 40, &[256 * MIB])
        .unwrap()
        .acpi
        .distances
        .unwrap();
    assert_eq!((d[0][2], d[2][0], d[1][2], d[3][2]), (30, 30, 80, 80));
}

#[test]
fn bad_entries_are_refused_by_field_before_the_host_is_read() {
    type Edit = fn(&mut VmConfig);
    let cases: [(Edit, &str, &str); 7] = [
        (
            |c| c.device_memory[0].device = "nope".into(),
            "device_memory[0].device",
            "no device has id `nope`",
        ),
        (
            |c| c.device_memory[0].bar = 6,
            "device_memory[0].bar",
            "not a BAR",
        ),
        (
            |c| c.device_memory[0].node = 7,
            "device_memory[0].node",
            "not declared",
        ),
        (
            |c| c.device_memory[0].node = 0,
            "device_memory[0].node",
            "vCPUs or memory zones",
        ),
        (
            |c| {
                let mut second = c.device_memory[0].clone();
                second.bar = 4;
                c.device_memory.push(second);
            },
            "device_memory[1].node",
            "one BAR per node",
        ),
        (
            |c| {
                let mut second = c.device_memory[0].clone();
                second.node = 3;
                c.device_memory.push(second);
            },
            "device_memory[1].bar",
            "already device_memory[0]",
        ),
        (
            |c| c.devices[0].x_exclude_mmap_bars = vec![2],
            "device_memory[0].bar",
            "x_exclude_mmap_bars",
        ),
    ];
    for (edit, field, words) in cases {
        let mut c = config();
        edit(&mut c);
        // The device's path does not exist here: these come before any sysfs read.
        let e = guest_topology(&c, 40).unwrap_err();
        assert_eq!(e.field(), field, "{e}");
        assert!(e.to_string().contains(words), "{field}: {e}");
    }
    // Read from the host: the device is not there.
    let e = guest_topology(&config(), 40).unwrap_err();
    assert_eq!(e.field(), "device_memory[0].bar", "{e}");
    assert!(e.to_string().contains("needs a PCI function"), "{e}");
    // Sizes that are not whole 128 MiB sections.
    let e = guest_topology_sized(&config(), 40, &[64 * MIB]).unwrap_err();
    assert_eq!(e.field(), "device_memory[0].bar", "{e}");
}
