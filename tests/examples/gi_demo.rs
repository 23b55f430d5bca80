//! The demo: a guest with 2 CPU nodes and 16 Generic Initiator nodes on 2 PCI devices
//! (a 2-GPU MIG layout), and what its Linux kernel reports about them.
//!
//! Tessera's acpi crate builds the SRAT, SLIT and HMAT; Debian's cloud kernel boots
//! with them under QEMU (TCG) with PCI devices at the BDFs the GI links name, and prints
//! /sys/devices/system/node. Run through `scripts/demo.sh`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result};
use tessera_acpi::{build, Placement};
use tessera_tests::topologies;

fn main() -> Result<()> {
    let case = topologies::seed_shape();
    let t = &case.topology;
    let tables = build(t, Placement::default()).context("building the tables")?;

    println!("Topology: {}", case.name);
    let mut links: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for l in &t.generic_initiators {
        links.entry(l.device.as_str()).or_default().push(l.node);
    }
    for d in &t.pci_devices {
        let nodes = links.get(d.id.as_str()).cloned().unwrap_or_default();
        println!("  device {} at {} -> GI nodes {:?}", d.id, d.bdf, nodes);
    }
    print!("Tables:");
    for table in tables.iter() {
        print!(" {}({}B)", table.signature, table.bytes.len());
    }
    println!();

    println!("Booting Debian's cloud kernel with these tables (QEMU, TCG)...");
    let r = case.boot_in_linux().context("booting the guest")?;

    println!("\nWhat the guest's Linux reports (/sys/devices/system/node):");
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    println!("  possible:              {}", list(&r.possible));
    println!("  online:                {}", list(&r.online));
    println!("  has_cpu:               {}", list(&r.has_cpu));
    println!("  has_memory:            {}", list(&r.has_memory));
    println!(
        "  has_generic_initiator: {}",
        list(&r.has_generic_initiator)
    );
    println!("\n  node  cpus  MemTotal   best initiator (access0)   distances");
    for (id, n) in &r.nodes {
        let mut access = String::new();
        if let Some(a) = &n.access0 {
            write!(
                access,
                "node{} {}ns {}MB/s",
                list(&a.initiators),
                a.read_latency.unwrap_or(0),
                a.read_bandwidth.unwrap_or(0)
            )?;
        }
        println!(
            "  {:>4}  {:>4}  {:>6} MB  {:<25}  {}",
            id,
            if n.cpus.is_empty() {
                "-".to_string()
            } else {
                list(&n.cpus)
            },
            n.memtotal_kb / 1024,
            access,
            list(&n.distances)
        );
    }
    Ok(())
}
