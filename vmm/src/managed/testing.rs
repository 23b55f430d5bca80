//! A fake host for tests: a sysfs tree in a temporary directory and a fake kernel that
//! answers writes the way Linux does (create/remove of mdevs, unbind/bind/drivers_probe
//! with driver_override), so the managed flows run end to end without root.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::sysfs::{driver_of, read_trimmed, Host, SysfsWriter};

/// The fake kernel: writes land in the files, and the effects follow.
#[derive(Debug)]
pub struct FakeKernel {
    root: PathBuf,
}

fn io_err(m: impl Into<String>) -> std::io::Error {
    std::io::Error::other(m.into())
}

impl FakeKernel {
    fn bind(&self, bdf: &str, driver: &str) -> std::io::Result<()> {
        let dev = self.root.join("sys/bus/pci/devices").join(bdf);
        let drv = self.root.join("sys/bus/pci/drivers").join(driver);
        if !drv.is_dir() {
            return Err(io_err("no such driver"));
        }
        let _ = std::fs::remove_file(dev.join("driver"));
        symlink(&drv, dev.join("driver"))
    }
}

impl SysfsWriter for FakeKernel {
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        if !path.exists() {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let value = value.trim();
        match name {
            "create" => {
                let type_dir = path.parent().ok_or_else(|| io_err("no type"))?;
                let avail = type_dir.join("available_instances");
                let n: u64 = read_trimmed(&avail)
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0);
                let dev = self.root.join("sys/bus/mdev/devices").join(value);
                if n == 0 || dev.exists() {
                    return Err(io_err("EINVAL"));
                }
                std::fs::create_dir_all(&dev)?;
                std::fs::write(dev.join("remove"), "")?;
                symlink(type_dir, dev.join("mdev_type"))?;
                std::fs::write(&avail, format!("{}\n", n - 1))
            }
            "remove" => {
                let dev = path.parent().ok_or_else(|| io_err("no dev"))?;
                let type_dir = std::fs::read_link(dev.join("mdev_type"))?;
                std::fs::remove_dir_all(dev)?;
                let avail = type_dir.join("available_instances");
                let n: u64 = read_trimmed(&avail)
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0);
                std::fs::write(&avail, format!("{}\n", n + 1))
            }
            "unbind" => {
                let dev = self.root.join("sys/bus/pci/devices").join(value);
                std::fs::remove_file(dev.join("driver"))
            }
            "bind" => {
                let driver = path
                    .parent()
                    .and_then(|d| d.file_name())
                    .and_then(|d| d.to_str())
                    .ok_or_else(|| io_err("no driver"))?;
                self.bind(value, driver)
            }
            "drivers_probe" => {
                let dev = self.root.join("sys/bus/pci/devices").join(value);
                if driver_of(&dev).is_some() {
                    return Ok(());
                }
                let over = read_trimmed(&dev.join("driver_override")).unwrap_or_default();
                let native = read_trimmed(&dev.join("fake_native_driver")).unwrap_or_default();
                let d = if over.is_empty() { native } else { over };
                if d.is_empty() {
                    return Ok(());
                }
                self.bind(value, &d)
            }
            _ => std::fs::write(path, value),
        }
    }
}

/// A fake host tree in a temporary directory.
pub struct FakeHost {
    dir: tempfile::TempDir,
}

impl FakeHost {
    /// An empty host with the vfio-pci and nvme drivers.
    pub fn new() -> FakeHost {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("tempdir: {e}"));
        let f = FakeHost { dir };
        for d in [
            "sys/bus/pci/devices",
            "sys/bus/mdev/devices",
            "sys/class/mdev_bus",
        ] {
            f.mkdir(d);
        }
        std::fs::write(f.root().join("sys/bus/pci/drivers_probe"), "").ok();
        for d in ["vfio-pci", "nvme", "snd_hda_intel"] {
            f.add_driver(d);
        }
        f
    }

    fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.root().join(rel);
        std::fs::create_dir_all(&p).ok();
        p
    }

    /// The tree's root.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The host, changed through the fake kernel.
    pub fn host(&self) -> Host {
        Host::new(
            self.root(),
            Arc::new(FakeKernel {
                root: self.root().to_path_buf(),
            }),
        )
    }

    /// A PCI driver.
    pub fn add_driver(&self, name: &str) {
        let d = self.mkdir(&format!("sys/bus/pci/drivers/{name}"));
        std::fs::write(d.join("bind"), "").ok();
        std::fs::write(d.join("unbind"), "").ok();
    }

    /// A PCI device in IOMMU group `group`, bound to `driver` (which drivers_probe also
    /// picks for it when no override is set).
    pub fn add_pci(&self, bdf: &str, group: u32, driver: Option<&str>) -> PathBuf {
        let dev = self.mkdir(&format!("sys/bus/pci/devices/{bdf}"));
        symlink(self.root().join("sys/bus/pci"), dev.join("subsystem")).ok();
        std::fs::write(dev.join("driver_override"), "(null)\n").ok();
        let g = self.mkdir(&format!("sys/kernel/iommu_groups/{group}/devices"));
        symlink(&dev, g.join(bdf)).ok();
        symlink(g.parent().unwrap_or(&g), dev.join("iommu_group")).ok();
        if let Some(d) = driver {
            std::fs::write(dev.join("fake_native_driver"), d).ok();
            symlink(
                self.root().join("sys/bus/pci/drivers").join(d),
                dev.join("driver"),
            )
            .ok();
        }
        dev
    }

    /// An mdev parent named `name` (at /sys/devices/virtual/NAME/NAME, listed in
    /// /sys/class/mdev_bus) with types and their available instances.
    pub fn add_mdev_parent(&self, name: &str, types: &[(&str, u64)]) -> PathBuf {
        let dev = self.mkdir(&format!("sys/devices/virtual/{name}/{name}"));
        for (t, n) in types {
            let td = dev.join("mdev_supported_types").join(t);
            std::fs::create_dir_all(td.join("devices")).ok();
            std::fs::write(td.join("available_instances"), format!("{n}\n")).ok();
            std::fs::write(td.join("name"), format!("{t}\n")).ok();
            std::fs::write(td.join("create"), "").ok();
        }
        symlink(&dev, self.root().join("sys/class/mdev_bus").join(name)).ok();
        dev
    }

    /// An existing mdev of `parent`'s type `t`.
    pub fn add_mdev(&self, parent: &str, t: &str, uuid: &str) {
        let td = self.root().join(format!(
            "sys/devices/virtual/{parent}/{parent}/mdev_supported_types/{t}"
        ));
        let dev = self.mkdir(&format!("sys/bus/mdev/devices/{uuid}"));
        std::fs::write(dev.join("remove"), "").ok();
        symlink(td, dev.join("mdev_type")).ok();
    }

    /// An mdevctl definition.
    pub fn define_mdev(&self, parent: &str, uuid: &str, json: &str) {
        let d = self.mkdir(&format!("etc/mdevctl.d/{parent}"));
        std::fs::write(d.join(uuid), json).ok();
    }

    /// An NVIDIA VF with its vGPU files.
    pub fn add_nvidia_vf(&self, bdf: &str, group: u32, creatable: &str) -> PathBuf {
        self.add_driver("nvidia");
        let dev = self.add_pci(bdf, group, Some("nvidia"));
        let n = dev.join("nvidia");
        std::fs::create_dir_all(&n).ok();
        std::fs::write(n.join("creatable_vgpu_types"), creatable).ok();
        std::fs::write(n.join("current_vgpu_type"), "0\n").ok();
        dev
    }
}
