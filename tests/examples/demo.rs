//! The demo: Tessera boots a guest with 2 CPU nodes and 8 Generic Initiator nodes linked
//! to a passed-through PCI device, and prints what the guest's Linux reports about them
//! and what it could do with the device.
//!
//! Where /dev/kvm can boot an unmodified guest, tessera runs directly and passes through
//! the device named by `TESSERA_DEMO_DEVICE` (a `/sys/bus/pci/devices/BDF` bound to
//! vfio-pci; without it the GI nodes go to the host bridge). Where it cannot (a
//! paravirtual nested KVM, as on our CI machines), it runs inside the nested test host
//! and passes through L1's NVMe. Run through `scripts/demo.sh`, which builds
//! `target/release/tessera`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use tessera_tests::linux_judge::{images, parse_device_report, parse_report, GuestReport};
use tessera_tests::nested;

/// The VM, as tessera's command line, without its device.
const VM: &str = "--cpus boot=2 --memory size=0 \
    --memory-zone id=m0,size=256M --memory-zone id=m1,size=256M \
    --numa guest_numa_id=0,cpus=[0],memory_zones=m0,distances=[1@20] \
    --numa guest_numa_id=1,cpus=[1],memory_zones=m1,distances=[0@20] \
    --numa guest_numa_id=2 --numa guest_numa_id=3 --numa guest_numa_id=4 \
    --numa guest_numa_id=5 --numa guest_numa_id=6 --numa guest_numa_id=7 \
    --numa guest_numa_id=8 --numa guest_numa_id=9";

/// L1's NVMe in the nested test host.
const NESTED_DEVICE: &str = "/sys/bus/pci/devices/0000:00:03.0";

/// The device option and its GI links, or GI links to the host bridge without a device.
fn device_args(device: Option<&str>) -> String {
    match device {
        Some(path) => {
            format!("--device id=dev0,path={path} --generic-initiator device=dev0,nodes=2-9")
        }
        None => "--generic-initiator device=_host_bridge,nodes=2-9".into(),
    }
}

/// Whether this host's KVM is the paravirtual kind that cannot boot unmodified guests.
fn needs_nested_host() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
        || !std::path::Path::new("/dev/kvm").exists()
}

fn main() -> Result<()> {
    let tessera = std::env::var("TESSERA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/tessera")
        });
    let tessera = tessera
        .canonicalize()
        .with_context(|| format!("{} (build it first)", tessera.display()))?;
    let judge = images()?;
    let nested_host = needs_nested_host();
    let device = if nested_host {
        Some(NESTED_DEVICE.to_string())
    } else {
        std::env::var("TESSERA_DEMO_DEVICE").ok()
    };
    let vm = format!("{VM} {}", device_args(device.as_deref()));
    let command = format!(
        "{} --kernel {} --initramfs {} \
         --cmdline 'console=ttyS0 panic=-1 loglevel=4 judge.devices=1' {vm}",
        tessera.display(),
        judge.vmlinuz.display(),
        judge.initramfs.display()
    );
    println!(
        "The VM:\n  tessera {}\n",
        vm.split_whitespace().collect::<Vec<_>>().join(" ")
    );

    let (status, console) = if nested_host {
        println!("This host's /dev/kvm cannot boot unmodified guests: running tessera inside the");
        println!(
            "nested test host (QEMU TCG with emulated SVM; see docs/nested-test-host.md)...\n"
        );
        println!("L1's NVMe (00:03.0) is bound to vfio-pci and passed through.\n");
        let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let run = nested::run(
            &format!(
                ". \"$HOST{repo}/scripts/l1-vfio.sh\"\n\
                 vfio_bind 0000:00:03.0 >/dev/null || exit 1\n\
                 in-host {command}\necho \"tessera-exit=$?\"\n"
            ),
            &[],
        )?;
        let status = run
            .console
            .lines()
            .find_map(|l| l.trim().strip_prefix("tessera-exit="))
            .and_then(|s| s.trim().parse::<i32>().ok());
        (status, run.console)
    } else {
        println!("Booting with tessera on this host's KVM...\n");
        let out = Command::new("sh").arg("-c").arg(&command).output()?;
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let Some(report) = parse_report(&console)? else {
        bail!("the guest printed no report; console:\n{console}");
    };
    print_report(&report, device.is_some());
    if let Some(d) = parse_device_report(&console)? {
        println!("\nWhat the guest did with the passed-through devices:");
        for (k, v) in &d.values {
            println!("  {k} = {v}");
        }
    }
    println!(
        "\ntessera exited with status {} after the guest's poweroff -f.",
        status.map_or("?".into(), |s| s.to_string())
    );
    Ok(())
}

fn print_report(r: &GuestReport, passed_through: bool) {
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    println!("What the guest's Linux reports (/sys/devices/system/node):");
    println!("  online:                {}", list(&r.online));
    println!("  has_cpu:               {}", list(&r.has_cpu));
    println!("  has_memory:            {}", list(&r.has_memory));
    println!(
        "  has_generic_initiator: {}",
        list(&r.has_generic_initiator)
    );
    println!("\n  node  cpus  MemTotal  distances");
    for (id, n) in &r.nodes {
        println!(
            "  {:>4}  {:>4}  {:>5} MB  {}",
            id,
            if n.cpus.is_empty() {
                "-".to_string()
            } else {
                list(&n.cpus)
            },
            n.memtotal_kb / 1024,
            list(&n.distances)
        );
    }
    let devices: Vec<String> = r.pci_numa.keys().cloned().collect();
    println!("\n  PCI devices in the guest: {}", devices.join(", "));
    if passed_through {
        println!("  (the GI entries name 0000:00:01.0, the passed-through device)");
    } else {
        println!("  (no device given: the GI entries name 0000:00:00.0, the host bridge)");
    }
}
