//! Host topology, mirrored and placed, in the nested test host with a real NUMA L1: L0's
//! QEMU gives L1 two nodes (one CPU and 1536 MiB each, SLIT distance 23, HMAT values)
//! and a second NVMe behind a `pxb-pcie` on node 1. In L1, `tessera-ctl host-devices`
//! must report the nodes, distances and HMAT as L1's sysfs has them, and
//! `tessera-ctl topology mirror --device` that NVMe must give a configuration that
//! tessera boots with the NVMe on vfio-pci. Then:
//!
//! - L2 (the Linux judge) shows the host's distances between the mirrored nodes, the
//!   NVMe's GI node at distance 11 from node 1 and 23 from node 0, and the host's HMAT
//!   values in each node's `access0`;
//! - in L1's /proc, each vCPU thread's `Cpus_allowed_list` is its host node's CPU, and
//!   `numa_maps` shows each memory zone bound to its host node (`bind:N`), with its
//!   pages on that node only.
//!
//! Needs `tessera-ctl` built beside `tessera` (`cargo build -p tessera-api`).

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::Path;

use serde_json::Value;
use tessera_api::config::VmConfig;
use tessera_tests::linux_judge::{images, parse_report};
use tessera_tests::nested;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const CMDLINE: &str =
    "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 loglevel=4 judge.action=console";
/// Where L1 finds the NVMe behind the expander bridge (bus_nr 128: the bridge's root
/// port is 80:00.0, its secondary bus 0x81).
const NVME: &str = "0000:81:00.0";
/// The SLIT distance between L1's two nodes.
const DISTANCE: u32 = 23;

/// L0's QEMU arguments: two nodes of 1536 MiB (L1 has `-smp 2 -m 3072`), one CPU each,
/// at distance 23, with HMAT values; an NVMe on node 1 behind a PCIe expander bridge,
/// backed by a null block device (reads give zeros; nothing is written).
fn l0_args() -> Vec<String> {
    let mut args: Vec<String> = [
        "-machine hmat=on",
        "-object memory-backend-ram,id=mem0,size=1536M",
        "-object memory-backend-ram,id=mem1,size=1536M",
        "-numa node,nodeid=0,cpus=0,memdev=mem0,initiator=0",
        "-numa node,nodeid=1,cpus=1,memdev=mem1,initiator=1",
    ]
    .iter()
    .flat_map(|a| a.splitn(2, ' ').map(String::from).collect::<Vec<_>>())
    .collect();
    args.extend(["-numa".into(), format!("dist,src=0,dst=1,val={DISTANCE}")]);
    for (i, t, latency, bandwidth) in [
        (0, 0, 10, "20G"),
        (1, 1, 10, "20G"),
        (0, 1, 30, "10G"),
        (1, 0, 30, "10G"),
    ] {
        for value in [
            format!("data-type=access-latency,latency={latency}"),
            format!("data-type=access-bandwidth,bandwidth={bandwidth}"),
        ] {
            args.extend([
                "-numa".into(),
                format!("hmat-lb,initiator={i},target={t},hierarchy=memory,{value}"),
            ]);
        }
    }
    for a in [
        "-device pxb-pcie,id=pxb1,bus_nr=128,numa_node=1,bus=pcie.0",
        "-device pcie-root-port,id=rp1,bus=pxb1,chassis=10,slot=0",
        "-device nvme,serial=tessera1,drive=nvm1,bus=rp1",
        "-blockdev driver=null-co,node-name=nvm1,size=67108864,read-zeroes=on",
    ] {
        args.extend(a.splitn(2, ' ').map(String::from));
    }
    args
}

/// The lines between `=== NAME` and the next `=== ` line, trimmed.
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

/// The first line of a section that is a JSON object.
fn json_in(console: &str, name: &str) -> Value {
    let lines = section(console, name);
    let line = lines
        .iter()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("section {name} has no JSON:\n{console}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}: {line}"))
}

/// `N0=12 N1=3` of a numa_maps line, as (node, pages).
fn pages_by_node(line: &str) -> Vec<(u32, u64)> {
    line.split_whitespace()
        .filter_map(|w| {
            let (n, p) = w.strip_prefix('N')?.split_once('=')?;
            Some((n.parse().ok()?, p.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_mirrored_guest_has_the_hosts_distances_its_devices_node_and_runs_where_it_says() {
    let ctl = Path::new(TESSERA).with_file_name("tessera-ctl");
    assert!(
        ctl.exists(),
        "{} is not built: cargo build -p tessera-api --bin tessera-ctl",
        ctl.display()
    );
    let ctl = ctl.display();
    let judge = images().unwrap();
    let (kernel, initramfs) = (judge.vmlinuz.display(), judge.initramfs.display());
    let script = format!(
        r#". "$HOST{REPO}/scripts/l1-vfio.sh"
echo "nvme-numa=$(cat /sys/bus/pci/devices/{NVME}/numa_node)"
vfio_bind {NVME} >/dev/null || exit 1
sock=/run/api.sock
log=/run/serial.log
in-host {TESSERA} --api-socket $sock >$log 2>/run/tessera.err </dev/null &
pid=$!
for i in $(seq 1 100); do [ -S $sock ] && break; sleep 0.1; done
c() {{ in-host {ctl} --api-socket $sock "$@"; }}
echo "=== host"
c --json host-devices || echo "host-devices-failed"
echo "=== table"
c host-devices | sed -n '/^NUMA nodes:/,$p' || echo "host-devices-failed"
echo "=== config"
c --json topology mirror --device {NVME} --kernel {kernel} --initramfs {initramfs} \
  --cmdline '{CMDLINE}' >/run/vm.json || echo "mirror-failed"
cat /run/vm.json
echo
echo "=== errors"
c topology mirror --device 0000:81:1f.0 2>&1
c topology mirror --device {NVME} --host-node 7 2>&1
echo "=== boot"
c create /run/vm.json && c boot && echo "booted=yes"
for i in $(seq 1 300); do grep -q '^judge-boot-id=' $log && break; sleep 1; done
grep -q '^judge-boot-id=' $log && echo "l2-up=yes"
echo "=== proc"
for t in /proc/$pid/task/*; do
  echo "task $(cat $t/comm) $(sed -n 's/^Cpus_allowed_list:[[:space:]]*/allowed=/p' $t/status)"
done
grep ' bind:' /proc/$pid/numa_maps
echo "=== end"
c shutdown && echo "shutdown=ok"
c shutdown-vmm && echo "shutdown-vmm=ok"
wait $pid
echo "tessera-exit=$?"
vfio_unbind {NVME} >/dev/null
echo "=== serial"
cat $log
echo "=== tessera"
cat /run/tessera.err
"#
    );
    let args = l0_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = nested::run(&script, &args).unwrap();
    let c = &run.console;
    assert_eq!(run.status, 0, "{c}");
    assert!(c.contains("nvme-numa=1"), "L0 put the NVMe on node 1:\n{c}");
    assert!(
        !c.contains("host-devices-failed") && !c.contains("mirror-failed"),
        "{c}"
    );

    // Host discovery: L1's nodes as L0 made them, with their HMAT.
    let host = json_in(c, "host");
    let nodes = host["numa_nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{host:#}");
    assert_eq!(nodes[0]["cpus"], "0");
    assert_eq!(nodes[1]["cpus"], "1");
    assert_eq!(nodes[0]["distances"], serde_json::json!([10, DISTANCE]));
    assert_eq!(nodes[1]["distances"], serde_json::json!([DISTANCE, 10]));
    for (i, n) in nodes.iter().enumerate() {
        let access = n["access"]
            .as_array()
            .unwrap_or_else(|| panic!("no HMAT: {n:#}"));
        assert_eq!(access.len(), 2, "access0 and access1: {n:#}");
        for a in access {
            // Its own CPU is each node's best initiator: 10 ns, 20 GiB/s (QEMU's 20G
            // is 20 GiB/s; Linux says MB/s in units of 2^20 bytes).
            assert_eq!(a["initiators"], serde_json::json!([i]), "{n:#}");
            assert_eq!(a["read_latency_ns"], 10, "{n:#}");
            assert_eq!(a["read_bandwidth_mbps"], 20480, "{n:#}");
        }
    }
    let dev = host["pci_devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["bdf"] == NVME)
        .unwrap_or_else(|| panic!("{NVME} not reported: {host:#}"));
    assert_eq!(dev["numa_node"], 1, "{dev:#}");
    eprintln!(
        "host nodes: {}",
        serde_json::to_string(&host["numa_nodes"]).unwrap()
    );
    let table = section(c, "table").join("\n");
    eprintln!("{table}");
    assert!(
        table.contains("  node 1 access0 from 1: read 10 ns, 20480 MB/s; write 10 ns, 20480 MB/s"),
        "{table}"
    );

    // The mirrored configuration.
    let config: VmConfig = serde_json::from_value(json_in(c, "config")).unwrap();
    eprintln!("mirrored: {}", serde_json::to_string(&config).unwrap());
    assert_eq!(
        config.numa.len(),
        3,
        "two host nodes and the NVMe's GI node"
    );
    assert_eq!(config.numa[0].cpus, [0]);
    assert_eq!(config.numa[1].cpus, [1]);
    let affinity = config.cpus.affinity.clone().unwrap();
    assert_eq!(
        affinity
            .iter()
            .map(|a| (a.vcpu, a.host_cpus.clone()))
            .collect::<Vec<_>>(),
        [(0, vec![0]), (1, vec![1])]
    );
    let zones: Vec<(String, Option<u32>)> = config
        .memory
        .zones
        .iter()
        .map(|z| (z.id.clone(), z.host_numa_node))
        .collect();
    assert_eq!(
        zones,
        [("node0".into(), Some(0)), ("node1".into(), Some(1))]
    );
    assert_eq!(
        config.devices[0].path,
        Path::new(&format!("/sys/bus/pci/devices/{NVME}"))
    );
    assert_eq!(
        config.generic_initiators[0]
            .nodes
            .as_ref()
            .unwrap()
            .to_string(),
        "2"
    );
    // Four values (read/write latency and bandwidth) per node, from its own CPU node.
    assert_eq!(config.hmat.len(), 8, "{:?}", config.hmat);
    assert!(
        config.hmat.iter().all(|h| h.initiator == h.target),
        "{:?}",
        config.hmat
    );

    let errors = section(c, "errors").join("\n");
    assert!(
        errors.contains("devices[0]: the host has no PCI device 0000:81:1f.0"),
        "{errors}"
    );
    assert!(
        errors.contains("host_nodes[0]: the host has no NUMA node 7"),
        "{errors}"
    );

    assert!(c.contains("booted=yes") && c.contains("l2-up=yes"), "{c}");

    // L2: the host's distance between the mirrored nodes, and the NVMe's GI node
    // next to node 1 (where the NVMe is on the host), DISTANCE from node 0.
    let serial = section(c, "serial").join("\n");
    let report = parse_report(&serial)
        .unwrap_or_else(|e| panic!("{e}:\n{serial}"))
        .unwrap_or_else(|| panic!("L2 printed no report:\n{c}"));
    let d = |n: u32| report.nodes[&n].distances.clone();
    eprintln!(
        "L2 distances: node0 {:?} node1 {:?} node2 {:?}; has_cpu {:?} has_memory {:?} \
         has_generic_initiator {:?}",
        d(0),
        d(1),
        d(2),
        report.has_cpu,
        report.has_memory,
        report.has_generic_initiator
    );
    assert_eq!(d(0), [10, DISTANCE, DISTANCE]);
    assert_eq!(d(1), [DISTANCE, 10, 11]);
    assert_eq!(d(2), [DISTANCE, 11, 10]);
    assert_eq!(report.has_cpu, [0, 1]);
    assert_eq!(report.has_memory, [0, 1]);
    assert_eq!(report.has_generic_initiator, [2]);
    // The host's HMAT, mirrored: each node's own vCPU is its best initiator, at the
    // host's values.
    for node in [0u32, 1] {
        let a = report.nodes[&node]
            .access0
            .clone()
            .unwrap_or_else(|| panic!("L2 node {node} has no access0:\n{serial}"));
        eprintln!("L2 node{node}/access0: {a:?}");
        assert_eq!(a.initiators, [node]);
        assert_eq!((a.read_latency, a.read_bandwidth), (Some(10), Some(20480)));
        assert_eq!(
            (a.write_latency, a.write_bandwidth),
            (Some(10), Some(20480))
        );
    }

    // L1's /proc: each vCPU thread on its host node's CPU; guest RAM bound by node.
    let proc = section(c, "proc");
    eprintln!("L1 /proc:\n{}", proc.join("\n"));
    for (vcpu, cpu) in [(0, 0), (1, 1)] {
        let line = format!("task vcpu{vcpu} allowed={cpu}");
        assert!(proc.contains(&line), "{line}:\n{}", proc.join("\n"));
    }
    for node in [0u32, 1] {
        let bound: Vec<&String> = proc
            .iter()
            .filter(|l| l.contains(&format!(" bind:{node} ")))
            .collect();
        assert_eq!(
            bound.len(),
            1,
            "one zone bound to node {node}:\n{}",
            proc.join("\n")
        );
        let pages = pages_by_node(bound[0]);
        assert!(
            !pages.is_empty(),
            "the guest touched its node-{node} RAM: {}",
            bound[0]
        );
        assert!(
            pages.iter().all(|&(n, p)| n == node && p > 0),
            "pages only on node {node}: {}",
            bound[0]
        );
    }
    assert!(
        c.contains("shutdown-vmm=ok") && c.contains("tessera-exit=0"),
        "{c}"
    );
}
