//! Bad input stops `tessera` before any vCPU runs, with status 1 and a message that
//! names the field. These run directly on the host: nothing gets as far as running a
//! guest.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::process::Command;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");

fn tessera(args: &[&str]) -> (i32, String) {
    let out = Command::new(TESSERA).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn refused(args: &[&str], field: &str, words: &str) {
    let (status, err) = tessera(args);
    assert_eq!(status, 1, "{args:?}: {err}");
    assert!(err.contains(field), "{args:?} must name {field}: {err}");
    assert!(err.contains(words), "{args:?} must say `{words}`: {err}");
}

fn judge_kernel() -> String {
    tessera_tests::linux_judge::images()
        .unwrap()
        .vmlinuz
        .display()
        .to_string()
}

#[test]
fn a_node_naming_a_missing_zone() {
    let k = judge_kernel();
    refused(
        &[
            "--kernel",
            &k,
            "--memory",
            "size=0",
            "--memory-zone",
            "id=m0,size=64M",
            "--numa",
            "guest_numa_id=0,cpus=[0],memory_zones=m1",
        ],
        "numa[0].memory_zones[0]",
        "no memory zone is called `m1`",
    );
}

#[test]
fn a_missing_kernel() {
    refused(
        &["--kernel", "/nonexistent/vmlinuz"],
        "payload.kernel",
        "cannot open /nonexistent/vmlinuz",
    );
}

#[test]
fn a_kernel_that_is_neither_bzimage_nor_elf() {
    let not_a_kernel = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_a_kernel.path(), vec![0x5a; 64 * 1024]).unwrap();
    let path = not_a_kernel.path().display().to_string();
    refused(&["--kernel", &path], "payload.kernel", "");
}

#[test]
fn more_memory_than_the_host_can_give() {
    let k = judge_kernel();
    refused(
        &["--kernel", &k, "--memory", "size=16T"],
        "memory",
        "available",
    );
}

#[test]
fn a_gi_link_to_a_device_the_vm_does_not_have() {
    let k = judge_kernel();
    refused(
        &[
            "--kernel",
            &k,
            "--memory",
            "size=0",
            "--memory-zone",
            "id=m0,size=64M",
            "--numa",
            "guest_numa_id=0,cpus=[0],memory_zones=m0",
            "--numa",
            "guest_numa_id=1",
            "--generic-initiator",
            "device=gpu0,node=1",
        ],
        "generic_initiators[0].device",
        "no device or PCI slot has id `gpu0`",
    );
}

#[test]
fn gi_ready_slots_that_cannot_be() {
    let k = judge_kernel();
    refused(
        &["--kernel", &k, "--pci-slot", "id=gpu0,pci_segment=1"],
        "pci_slots[0].pci_segment",
        "segment 1 does not exist",
    );
    refused(
        &["--kernel", &k, "--pci-slot", "id=a", "id=a"],
        "pci_slots[1].id",
        "`a` is already pci_slots[0]",
    );
    refused(
        &["--kernel", &k, "--pci-slot", "id=a,pci_device_id=0"],
        "pci_slots[0].pci_device_id",
        "host bridge",
    );
    refused(
        &[
            "--kernel",
            &k,
            "--pci-slot",
            "id=a,pci_device_id=3",
            "id=b,pci_device_id=3",
        ],
        "pci_slots[1].pci_device_id",
        "slot 3 on segment 0 is already taken",
    );
    refused(
        &["--kernel", &k, "--pci-slot", "pci_device_id=3"],
        "--pci-slot",
        "`id` is required",
    );
}

#[test]
fn a_bad_option_string() {
    refused(
        &["--kernel", "/k", "--numa", "guest_numa_id=0,colour=blue"],
        "--numa",
        "unknown key `colour`",
    );
}

#[test]
fn hmat_values_the_topology_cannot_take() {
    let two_nodes = [
        "--kernel",
        "/k",
        "--cpus",
        "boot=2",
        "--memory",
        "size=0",
        "--memory-zone",
        "id=m0,size=64M",
        "--numa",
        "guest_numa_id=0,cpus=[0-1],memory_zones=m0",
        "guest_numa_id=1",
        "--hmat-lb",
    ];
    // Node 1 has neither vCPUs nor a GI link, nor memory.
    for (value, field, words) in [
        (
            "initiator=1,target=0,hierarchy=memory,data-type=read-latency,latency=5",
            "hmat[0].initiator",
            "neither CPUs nor Generic Initiators",
        ),
        (
            "initiator=0,target=1,hierarchy=memory,data-type=read-latency,latency=5",
            "hmat[0].target",
            "no memory",
        ),
        (
            "initiator=0,target=0,hierarchy=first-level,data-type=read-latency,latency=5",
            "--hmat-lb",
            "only `memory` is supported",
        ),
    ] {
        let args: Vec<&str> = two_nodes.iter().copied().chain([value]).collect();
        refused(&args, field, words);
    }
}

#[test]
fn dump_acpi_writes_one_file_per_table() {
    let k = judge_kernel();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(TESSERA)
        .args([
            "--kernel",
            &k,
            "--cpus",
            "boot=2",
            "--memory",
            "size=0",
            "--memory-zone",
            "id=m0,size=256M",
            "--memory-zone",
            "id=m1,size=256M",
            "--numa",
            "guest_numa_id=0,cpus=[0],memory_zones=m0",
            "--numa",
            "guest_numa_id=1,cpus=[1],memory_zones=m1",
            "--numa",
            "guest_numa_id=2",
            "--generic-initiator",
            "device=_host_bridge,node=2",
            "--dump-acpi",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for sig in [
        "RSDP", "XSDT", "FACP", "DSDT", "APIC", "MCFG", "SRAT", "SLIT",
    ] {
        let bytes = std::fs::read(dir.path().join(format!("{sig}.dat"))).unwrap();
        if sig != "RSDP" {
            tessera_tests::acpica::judge_table(sig, &bytes).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

#[test]
fn a_missing_passthrough_device() {
    let k = judge_kernel();
    refused(
        &[
            "--kernel",
            &k,
            "--device",
            "id=gpu0,path=/sys/bus/pci/devices/0000:7f:1f.7",
        ],
        "devices[0].path",
        "/sys/bus/pci/devices/0000:7f:1f.7 does not exist",
    );
}

#[test]
fn a_virtio_console_is_refused_pointing_at_the_serial_port() {
    for mode in ["tty", "pty", "file=/tmp/console.log"] {
        refused(
            &["--kernel", "/k", "--console", mode, "--serial", "tty"],
            "--console",
            "Tessera has no virtio console yet; the serial port (--serial) carries the guest's console",
        );
    }
}

#[test]
fn a_flag_for_a_feature_tessera_lacks_is_a_usage_error_naming_it() {
    let (status, err) = tessera(&[
        "--kernel",
        "/k",
        "--disk",
        "path=/a.img",
        "path=/b.img",
        "--cpus",
        "boot=2",
    ]);
    assert_eq!(status, 2, "{err}");
    assert!(
        err.contains("--disk: Tessera has no virtio-block devices yet"),
        "{err}"
    );
}

/// The tables `tessera ARGS --dump-acpi DIR` writes, by signature.
fn dumped(args: &[&str]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(TESSERA)
        .args(args)
        .arg("--dump-acpi")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn several_values_after_one_flag_give_the_same_tables_as_the_flag_repeated() {
    // Cloud Hypervisor's form, as its docs/memory.md writes it.
    let multi = dumped(&[
        "--kernel",
        "/nonexistent/vmlinuz",
        "--cpus",
        "boot=2",
        "--memory",
        "size=0",
        "--memory-zone",
        "id=m0,size=256M",
        "id=m1,size=256M",
        "--numa",
        "guest_numa_id=0,cpus=[0],memory_zones=m0,distances=[1@20]",
        "guest_numa_id=1,cpus=[1],memory_zones=m1,distances=[0@30]",
        "guest_numa_id=2",
        "--generic-initiator",
        "device=_host_bridge,node=2",
        "--console",
        "off",
        "--serial",
        "tty",
    ]);
    let repeated = dumped(&[
        "--kernel",
        "/nonexistent/vmlinuz",
        "--cpus",
        "boot=2",
        "--memory",
        "size=0",
        "--memory-zone",
        "id=m0,size=256M",
        "--memory-zone",
        "id=m1,size=256M",
        "--numa",
        "guest_numa_id=0,cpus=[0],memory_zones=m0,distances=[1@20]",
        "--numa",
        "guest_numa_id=1,cpus=[1],memory_zones=m1,distances=[0@30]",
        "--numa",
        "guest_numa_id=2",
        "--generic-initiator",
        "device=_host_bridge,node=2",
    ]);
    assert!(multi.contains_key("SRAT.dat"), "{:?}", multi.keys());
    assert_eq!(multi["SRAT.dat"], repeated["SRAT.dat"]);
    assert_eq!(multi, repeated);
    // Three nodes: 2 CPUs, 2 memory ranges and the GI are in the SRAT (48 bytes of
    // header, then 16-byte Local APIC, 40-byte Memory and 32-byte GI Affinity entries).
    assert_eq!(multi["SRAT.dat"].len(), 48 + 2 * 16 + 2 * 40 + 32);
    // The SLIT says 20 one way and 30 the other, as given: 3 nodes after its
    // 44-byte header.
    assert_eq!(
        multi["SLIT.dat"][44..],
        [10, 20, 20, 30, 10, 20, 20, 20, 10]
    );
}

#[test]
fn a_vcpu_pinned_to_a_host_cpu_that_is_not_online_or_to_none_or_twice() {
    let k = judge_kernel();
    // CPU 1023 fits a CPU set but no test host has it online.
    refused(
        &["--kernel", &k, "--cpus", "boot=2,affinity=[0@[0],1@[1023]]"],
        "cpus.affinity[1].host_cpus",
        "host CPU 1023 is not online",
    );
    refused(
        &["--kernel", &k, "--cpus", "boot=2,affinity=[0@[0],0@[0]]"],
        "cpus.affinity[1].vcpu",
        "vCPU 0 is already pinned by cpus.affinity[0]",
    );
    refused(
        &["--kernel", &k, "--cpus", "boot=2,affinity=[2@[0]]"],
        "cpus.affinity[0].vcpu",
        "vCPU 2 does not exist (max_vcpus is 2)",
    );
}

/// tessera's status and stderr with TESSERA_LOG=`filter` and an API socket it cannot
/// create (so a run that takes the filter stops there, touching nothing).
fn with_log_filter(filter: &str) -> (Option<i32>, String) {
    let out = Command::new(TESSERA)
        .args(["--api-socket", "/nonexistent/dir/tessera.sock"])
        .env("TESSERA_LOG", filter)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_log_filter_that_does_not_parse() {
    let (status, err) = with_log_filter("tessera_vmm=loud");
    assert_eq!(status, Some(1), "{err}");
    assert!(
        err.contains(r#"TESSERA_LOG="tessera_vmm=loud" is not a log filter"#),
        "{err}"
    );
    // A good one is taken: the run gets as far as the socket, and its error is that.
    let (status, err) = with_log_filter("tessera_vmm=debug,warn");
    assert_eq!(status, Some(1), "{err}");
    assert!(!err.contains("TESSERA_LOG"), "{err}");
    assert!(err.contains("/nonexistent/dir/tessera.sock"), "{err}");
}
