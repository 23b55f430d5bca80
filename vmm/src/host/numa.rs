//! The host's NUMA nodes: `/sys/devices/system/node/nodeN` with its `cpulist`, the
//! `MemTotal` line of its `meminfo`, its `distance` row, and what the firmware's HMAT
//! says of reaching its memory (`accessC/initiators`, Linux 5.2 and later).

use std::path::Path;

use tessera_api::types::{HostNumaAccess, HostNumaNode};

use super::{dir_names, read_attr, under};

/// Every node, by id; empty when the kernel has no node directory (no NUMA).
pub fn nodes(sysfs: &Path) -> Vec<HostNumaNode> {
    let dir = under(sysfs, "devices/system/node");
    let mut nodes: Vec<HostNumaNode> = dir_names(&dir)
        .iter()
        .filter_map(|name| {
            // `node0`, `node1`...; the directory also holds `possible`, `online`, ...
            let id: u32 = name.strip_prefix("node")?.parse().ok()?;
            let node = dir.join(name);
            Some(HostNumaNode {
                id,
                cpus: read_attr(&node.join("cpulist")),
                memory_bytes: read_attr(&node.join("meminfo")).and_then(|m| mem_total(&m)),
                distances: read_attr(&node.join("distance")).and_then(|d| distances(&d)),
                access: access(&node),
            })
        })
        .collect();
    // Numerically: `node10` sorts before `node2` by name.
    nodes.sort_by_key(|n| n.id);
    nodes
}

/// The access classes of the memory node at `node`, by class: `access0`, `access1`, ...
/// Linux makes an `accessC/initiators` directory only for a memory node the HMAT gave
/// values for; its `nodeM` entries link the initiators, and its four files hold the
/// values (latency in ns, bandwidth in MB/s; a value the HMAT lacks is absent or 0).
fn access(node: &Path) -> Vec<HostNumaAccess> {
    let mut classes: Vec<HostNumaAccess> = dir_names(node)
        .iter()
        .filter_map(|name| {
            let class: u32 = name.strip_prefix("access")?.parse().ok()?;
            let dir = node.join(name).join("initiators");
            if !dir.is_dir() {
                return None;
            }
            let mut initiators: Vec<u32> = dir_names(&dir)
                .iter()
                .filter_map(|n| n.strip_prefix("node")?.parse().ok())
                .collect();
            initiators.sort_unstable();
            let value = |file: &str| {
                read_attr(&dir.join(file))
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|&v| v != 0)
            };
            Some(HostNumaAccess {
                class,
                initiators,
                read_latency_ns: value("read_latency"),
                write_latency_ns: value("write_latency"),
                read_bandwidth_mbps: value("read_bandwidth"),
                write_bandwidth_mbps: value("write_bandwidth"),
            })
        })
        .collect();
    classes.sort_by_key(|a| a.class);
    classes
}

/// `Node 0 MemTotal:       16303828 kB` in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if !key.trim_end().ends_with("MemTotal") {
            return None;
        }
        let mut words = value.split_whitespace();
        let n: u64 = words.next()?.parse().ok()?;
        match words.next() {
            Some("kB") => n.checked_mul(1024),
            None => Some(n),
            Some(_) => None,
        }
    })
}

/// `10 21 21` as numbers; `None` if any is not one.
fn distances(text: &str) -> Option<Vec<u32>> {
    text.split_whitespace().map(|d| d.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::host::fake::Fake;

    #[test]
    fn a_two_node_host_with_distances() {
        let f = Fake::new();
        f.numa_node(0, "0-1", 2 << 20, "10 21");
        // A node without CPUs (memory only, as a GPU's coherent memory is).
        f.numa_node(1, "", 1 << 20, "21 10");
        f.file("devices/system/node/online", "0-1");
        let nodes = nodes(f.root());
        assert_eq!(
            nodes,
            vec![
                HostNumaNode {
                    id: 0,
                    cpus: Some("0-1".into()),
                    memory_bytes: Some(2 << 30),
                    distances: Some(vec![10, 21]),
                    access: vec![],
                },
                HostNumaNode {
                    id: 1,
                    cpus: Some("".into()),
                    memory_bytes: Some(1 << 30),
                    distances: Some(vec![21, 10]),
                    access: vec![],
                },
            ]
        );
    }

    #[test]
    fn nodes_sort_by_number_and_missing_files_are_null() {
        let f = Fake::new();
        f.dir("devices/system/node/node10");
        f.dir("devices/system/node/node2");
        f.file("devices/system/node/node2/distance", "10 x");
        let nodes = nodes(f.root());
        assert_eq!(nodes.iter().map(|n| n.id).collect::<Vec<_>>(), [2, 10]);
        assert_eq!(nodes[0].cpus, None);
        assert_eq!(nodes[0].memory_bytes, None);
        assert_eq!(nodes[0].distances, None, "a distance that is no number");
    }

    #[test]
    fn hmat_access_classes_with_their_initiators_and_values() {
        let f = Fake::new();
        f.numa_node(0, "0-1", 1 << 20, "10 21 21");
        f.numa_node(1, "2-3", 1 << 20, "21 10 21");
        // Memory only, as a CXL or HBM node: its best initiator is node 1 in both classes,
        // and a GI node 2 as well in class 0.
        f.numa_node(2, "", 1 << 20, "21 21 10");
        f.hmat_access(2, 0, &[1, 2], [120, 130, 20000, 10000]);
        f.hmat_access(2, 1, &[1], [150, 0, 15000, 8000]);
        // access classes without `initiators/` (the kernel's `targets/` side) are skipped.
        f.dir("devices/system/node/node1/access0/targets");
        let nodes = nodes(f.root());
        assert!(nodes[0].access.is_empty());
        assert!(nodes[1].access.is_empty(), "{:?}", nodes[1].access);
        assert_eq!(
            nodes[2].access,
            vec![
                HostNumaAccess {
                    class: 0,
                    initiators: vec![1, 2],
                    read_latency_ns: Some(120),
                    write_latency_ns: Some(130),
                    read_bandwidth_mbps: Some(20000),
                    write_bandwidth_mbps: Some(10000),
                },
                HostNumaAccess {
                    class: 1,
                    initiators: vec![1],
                    read_latency_ns: Some(150),
                    write_latency_ns: None,
                    read_bandwidth_mbps: Some(15000),
                    write_bandwidth_mbps: Some(8000),
                },
            ]
        );
    }

    #[test]
    fn no_node_directory_is_no_nodes() {
        let f = Fake::new();
        assert!(nodes(f.root()).is_empty());
    }

    #[test]
    fn meminfo_lines() {
        let text = "Node 0 MemFree:  1 kB\nNode 0 MemTotal:       16303828 kB\n";
        assert_eq!(mem_total(text), Some(16_303_828 * 1024));
        assert_eq!(mem_total("Node 0 MemTotal: 12 MB"), None);
        assert_eq!(mem_total(""), None);
    }
}
