//! Host discovery against a real kernel's sysfs: in the nested test host's L1, with
//! L1's NVMe left without a driver, its edu device bound to vfio-pci and an mtty mdev
//! created, `tessera-ctl host-devices` (readable and `--json`) through a real
//! `tessera --api-socket` reports the NVMe, the edu and the mtty parent with their IOMMU
//! groups, drivers and mdev types, as L1's own sysfs shows them to the shell.
//!
//! Needs `tessera-ctl` built beside `tessera` (`cargo build -p tessera-api`, or the
//! whole workspace as `cargo test --workspace` and scripts/test.sh build it): a test
//! of one package cannot ask Cargo for another package's binary.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::Path;

use serde_json::Value;
use tessera_tests::nested;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const MDEV: &str = "5e2a3c1d-7b44-4f0e-9c61-0d3f2b8a4e17";
const NVME: &str = "0000:00:03.0";
const EDU: &str = "0000:00:04.0";

/// The value of the first `key=` line of the L1 console.
fn value<'a>(console: &'a str, key: &str) -> &'a str {
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("L1 printed no {key}=:\n{console}"))
}

/// The lines between `=== NAME` and the next `=== ` line, trimmed (the console may
/// end lines with `\r\n`).
fn section(console: &str, name: &str) -> Vec<String> {
    let header = format!("=== {name}");
    let mut lines = console.lines().map(str::trim_end);
    if !lines.any(|l| l == header) {
        panic!("no section {name}:\n{console}");
    }
    lines
        .take_while(|l| !l.starts_with("=== "))
        .map(str::to_owned)
        .collect()
}

fn device<'a>(host: &'a Value, bdf: &str) -> &'a Value {
    host["pci_devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["bdf"] == bdf)
        .unwrap_or_else(|| panic!("{bdf} is not reported: {host:#}"))
}

#[test]
fn host_devices_reports_l1s_nvme_edu_and_mtty() {
    let ctl = Path::new(TESSERA).with_file_name("tessera-ctl");
    assert!(
        ctl.exists(),
        "{} is not built: cargo build -p tessera-api --bin tessera-ctl",
        ctl.display()
    );
    let ctl = ctl.display();
    let script = format!(
        r#". "$HOST{REPO}/scripts/l1-vfio.sh"
vfio_bind {EDU} >/dev/null || exit 1
mtty_create {MDEV} mtty-2 >/dev/null || exit 1
# What L1's sysfs says, through the shell, for the test to hold tessera's answer to.
echo "nvme-driver=$(driver_of {NVME})"
echo "nvme-group=$(group_of {NVME})"
echo "edu-group=$(group_of {EDU})"
echo "nvme-numa=$(cat /sys/bus/pci/devices/{NVME}/numa_node)"
echo "mtty-types=$(ls /sys/class/mdev_bus/mtty/mdev_supported_types | tr '\n' ' ')"
echo "mtty2-available=$(cat /sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/available_instances)"
echo "mdev-group=$(basename "$(readlink /sys/bus/mdev/devices/{MDEV}/iommu_group)")"
echo "nodes=$(ls -d /sys/devices/system/node/node* 2>/dev/null | wc -l)"
sock=/run/api.sock
in-host {TESSERA} --api-socket $sock 2>/run/tessera.err &
pid=$!
for i in $(seq 1 100); do [ -S $sock ] && break; sleep 0.1; done
echo "=== json"
in-host {ctl} --api-socket $sock --json host-devices || echo "ctl-json-failed"
echo "=== table"
in-host {ctl} --api-socket $sock host-devices || echo "ctl-table-failed"
echo "=== end"
in-host {ctl} --api-socket $sock shutdown-vmm && echo "shutdown-vmm=ok"
wait $pid
echo "tessera-exit=$?"
mtty_remove {MDEV}
vfio_unbind {EDU} >/dev/null
cat /run/tessera.err
"#
    );
    let out = nested::run(&script, &[]).unwrap();
    let c = &out.console;
    assert_eq!(out.status, 0, "{c}");
    assert!(
        !c.contains("ctl-json-failed") && !c.contains("ctl-table-failed"),
        "{c}"
    );
    // One line of JSON; the kernel may print between the lines of the console.
    let json = section(c, "json");
    let json = json
        .iter()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("--json printed no JSON:\n{c}"));
    let host: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("--json: {e}:\n{json}"));
    let table = section(c, "table").join("\n");
    eprintln!("{table}");

    // The NVMe: QEMU's ids, the driver L1 gave it (none), its own group, viable.
    let nvme = device(&host, NVME);
    assert_eq!(nvme["vendor"], "1b36", "{nvme:#}");
    assert_eq!(nvme["device"], "0010", "{nvme:#}");
    assert_eq!(nvme["class"], "010802", "{nvme:#}");
    let driver = value(c, "nvme-driver");
    match driver {
        "none" => assert_eq!(nvme["driver"], Value::Null, "{nvme:#}"),
        d => assert_eq!(nvme["driver"], d, "{nvme:#}"),
    }
    let group: u64 = value(c, "nvme-group").parse().unwrap();
    assert_eq!(nvme["iommu_group"]["id"], group, "{nvme:#}");
    assert_eq!(nvme["iommu_group"]["members"][0]["name"], NVME, "{nvme:#}");
    if matches!(driver, "none" | "vfio-pci") {
        assert_eq!(nvme["iommu_group"]["viable"], true, "{nvme:#}");
    }
    // L1 has one node or none: numa_node is -1 there, so null.
    if value(c, "nvme-numa") == "-1" {
        assert_eq!(nvme["numa_node"], Value::Null, "{nvme:#}");
    }
    assert_eq!(nvme["mdev_types"], Value::Null);

    // The edu, on vfio-pci, alone in its viable group.
    let edu = device(&host, EDU);
    assert_eq!(
        (&edu["vendor"], &edu["device"]),
        (&"1234".into(), &"11e8".into())
    );
    assert_eq!(edu["driver"], "vfio-pci", "{edu:#}");
    let group: u64 = value(c, "edu-group").parse().unwrap();
    assert_eq!(edu["iommu_group"]["id"], group, "{edu:#}");
    assert_eq!(edu["iommu_group"]["viable"], true, "{edu:#}");
    assert_eq!(
        edu["iommu_group"]["blocking"],
        serde_json::json!([]),
        "{edu:#}"
    );

    // The mtty parent: not a PCI device, its types, and the instance just made.
    let parents = host["mdev_parents"].as_array().unwrap();
    let mtty = parents
        .iter()
        .find(|p| p["name"] == "mtty")
        .unwrap_or_else(|| panic!("no mtty parent: {host:#}"));
    let types: Vec<&str> = mtty["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    let listed: Vec<&str> = value(c, "mtty-types").split_whitespace().collect();
    assert_eq!(types, listed, "{mtty:#}");
    assert!(types.contains(&"mtty-2"), "{types:?}");
    let t2 = mtty["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "mtty-2")
        .unwrap();
    assert_eq!(t2["device_api"], "vfio-pci", "{t2:#}");
    let available: u64 = value(c, "mtty2-available").parse().unwrap();
    assert_eq!(t2["available_instances"], available, "{t2:#}");
    assert_eq!(t2["instances"], serde_json::json!([MDEV]), "{t2:#}");
    assert!(value(c, "mdev-group").parse::<u32>().is_ok(), "{c}");

    // Host nodes: as many as L1's sysfs has.
    let nodes: usize = value(c, "nodes").parse().unwrap();
    assert_eq!(
        host["numa_nodes"].as_array().unwrap().len(),
        nodes,
        "{host:#}"
    );

    // The readable table names the same things.
    let row = |bdf: &str| {
        table
            .lines()
            .find(|l| l.starts_with(bdf))
            .unwrap_or_else(|| panic!("no row for {bdf}:\n{table}"))
    };
    assert!(row(NVME).contains("1b36:0010"), "{table}");
    assert!(
        row(EDU).contains("vfio-pci") && row(EDU).contains(" viable"),
        "{table}"
    );
    assert!(table.lines().any(|l| l == "  mtty:"), "{table}");
    assert!(table.contains(MDEV), "{table}");

    assert!(
        c.contains("shutdown-vmm=ok") && c.contains("tessera-exit=0"),
        "{c}"
    );
}
