//! The checks made on a passed-through device before anything is opened, against fake
//! sysfs trees: a missing path, the wrong driver or none, an IOMMU group that another
//! host driver shares, no group, no /dev/vfio, the same device twice. Each error names the
//! configuration field and says what to do. (The nested-host tests make the same mistakes
//! with real devices.)

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use tessera_api::config::{DeviceConfig, VmConfig};
use tessera_vmm::vfio::{check_host_at, HostDevice, VfioHostError};

/// A fake /sys and /dev/vfio under a temporary directory.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Self {
        let t = Tree {
            dir: tempfile::tempdir().unwrap(),
        };
        for d in [
            "bus/pci",
            "bus/mdev",
            "bus/platform",
            "drivers/vfio-pci",
            "drivers/vfio_mdev",
            "drivers/nvme",
            "drivers/e1000e",
            "drivers/pcieport",
            "dev",
        ] {
            std::fs::create_dir_all(t.path(d)).unwrap();
        }
        std::fs::write(t.path("dev/vfio"), "").unwrap();
        t
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A device `name` on `bus`, bound to `driver`, in IOMMU group `group`.
    fn device(&self, name: &str, bus: &str, driver: Option<&str>, group: Option<u32>) -> PathBuf {
        let dev = self.path(&format!("devices/{name}"));
        std::fs::create_dir_all(&dev).unwrap();
        symlink(self.path(&format!("bus/{bus}")), dev.join("subsystem")).unwrap();
        if let Some(d) = driver {
            symlink(self.path(&format!("drivers/{d}")), dev.join("driver")).unwrap();
        }
        if let Some(g) = group {
            let gdir = self.path(&format!("groups/{g}"));
            std::fs::create_dir_all(gdir.join("devices")).unwrap();
            symlink(&gdir, dev.join("iommu_group")).unwrap();
            symlink(&dev, gdir.join("devices").join(name)).unwrap();
            std::fs::write(self.path(&format!("dev/{g}")), "").unwrap();
        }
        dev
    }

    fn check(&self, paths: &[&Path]) -> Result<Vec<HostDevice>, VfioHostError> {
        let config = VmConfig {
            devices: paths
                .iter()
                .map(|p| DeviceConfig {
                    path: p.to_path_buf(),
                    id: None,
                    pci_segment: 0,
                    pci_device_id: None,
                    ..DeviceConfig::new("")
                })
                .collect(),
            ..serde_json::from_str(r#"{"payload": {"kernel": "/k"}}"#).unwrap()
        };
        check_host_at(&config, &self.path("dev"))
    }
}

fn err(r: Result<Vec<HostDevice>, VfioHostError>) -> VfioHostError {
    match r {
        Ok(found) => panic!("accepted: {found:?}"),
        Err(e) => e,
    }
}

#[test]
fn a_device_bound_to_vfio_pci_alone_in_its_group_passes() {
    let t = Tree::new();
    let gpu = t.device("0000:01:00.0", "pci", Some("vfio-pci"), Some(7));
    // A PCIe port in the same group does not make it unviable.
    let port = t.device("0000:00:01.0", "pci", Some("pcieport"), None);
    // Known as a bridge by its class, as host discovery knows it without config space.
    std::fs::write(port.join("class"), "0x060400\n").unwrap();
    symlink(&port, t.path("groups/7/devices/0000:00:01.0")).unwrap();
    let mdev = t.device(
        "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001",
        "mdev",
        Some("vfio_mdev"),
        Some(12),
    );
    let found = t.check(&[&gpu, &mdev]).unwrap();
    assert_eq!(found[0].bus, "pci");
    assert_eq!(found[0].group, 7);
    assert_eq!(found[1].bus, "mdev");
    assert_eq!(found[1].group, 12);
}

#[test]
fn a_missing_path_is_named() {
    let t = Tree::new();
    let e = err(t.check(&[&t.path("devices/0000:09:00.0")]));
    assert_eq!(e.field, "devices[0].path");
    assert!(e.message.contains("does not exist"), "{e}");
}

#[test]
fn the_wrong_driver_or_none_is_named_with_the_fix() {
    let t = Tree::new();
    let ok = t.device("0000:01:00.0", "pci", Some("vfio-pci"), Some(1));
    let nvme = t.device("0000:02:00.0", "pci", Some("nvme"), Some(2));
    let e = err(t.check(&[&ok, &nvme]));
    assert_eq!(e.field, "devices[1].path");
    assert!(
        e.message
            .contains("0000:02:00.0 is bound to nvme, not vfio-pci"),
        "{e}"
    );
    assert!(e.message.contains("driver_override"), "{e}");

    let none = t.device("0000:03:00.0", "pci", None, Some(3));
    let e = err(t.check(&[&none]));
    assert!(e.message.contains("is bound to no driver"), "{e}");

    let mdev = t.device("aaaa", "mdev", None, Some(4));
    let e = err(t.check(&[&mdev]));
    assert!(e.message.contains("mdev aaaa is bound to no driver"), "{e}");
}

#[test]
fn a_group_shared_with_a_host_driver_is_not_viable() {
    let t = Tree::new();
    let gpu = t.device("0000:01:00.0", "pci", Some("vfio-pci"), Some(5));
    let nic = t.device("0000:01:00.1", "pci", Some("e1000e"), None);
    symlink(&nic, t.path("groups/5/devices/0000:01:00.1")).unwrap();
    let e = err(t.check(&[&gpu]));
    assert_eq!(e.field, "devices[0].path");
    assert!(
        e.message.contains(
            "IOMMU group 5 is not viable: 0000:01:00.1 is in the same group and bound to e1000e"
        ),
        "{e}"
    );
}

#[test]
fn no_group_no_vfio_and_not_pci_are_refused() {
    let t = Tree::new();
    let nogroup = t.device("0000:01:00.0", "pci", Some("vfio-pci"), None);
    let e = err(t.check(&[&nogroup]));
    assert!(e.message.contains("has no IOMMU group"), "{e}");

    let platform = t.device("serial8250", "platform", None, None);
    let e = err(t.check(&[&platform]));
    assert!(e.message.contains("is not a PCI device or an mdev"), "{e}");

    let gpu = t.device("0000:02:00.0", "pci", Some("vfio-pci"), Some(9));
    std::fs::remove_file(t.path("dev/9")).unwrap();
    let e = err(t.check(&[&gpu]));
    assert!(e.message.contains("dev/9 does not exist"), "{e}");

    std::fs::write(t.path("dev/9"), "").unwrap();
    std::fs::remove_file(t.path("dev/vfio")).unwrap();
    let e = err(t.check(&[&gpu]));
    assert_eq!(e.field, "devices");
    assert!(e.message.contains("modprobe vfio-pci"), "{e}");
}

#[test]
fn the_same_device_twice_is_refused() {
    let t = Tree::new();
    let gpu = t.device("0000:01:00.0", "pci", Some("vfio-pci"), Some(1));
    let e = err(t.check(&[&gpu, &gpu]));
    assert_eq!(e.field, "devices[1].path");
    assert!(
        e.message.contains("already passed through as devices[0]"),
        "{e}"
    );
}
