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
        "no device has id `gpu0`",
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
