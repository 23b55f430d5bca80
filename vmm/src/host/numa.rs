//! The host's NUMA nodes: `/sys/devices/system/node/nodeN` with its `cpulist`, the
//! `MemTotal` line of its `meminfo` and its `distance` row.

use std::path::Path;

use tessera_api::types::HostNumaNode;

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
            })
        })
        .collect();
    // Numerically: `node10` sorts before `node2` by name.
    nodes.sort_by_key(|n| n.id);
    nodes
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
                },
                HostNumaNode {
                    id: 1,
                    cpus: Some("".into()),
                    memory_bytes: Some(1 << 30),
                    distances: Some(vec![21, 10]),
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
