//! Fake sysfs trees for the host discovery tests, laid out as the kernel lays them out:
//! device directories under `devices/`, and `bus/pci/devices/BDF`,
//! `kernel/iommu_groups/N/devices/BDF`, `driver` and `iommu_group` as symlinks.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// A sysfs root in a temporary directory.
pub(crate) struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    pub(crate) fn new() -> Self {
        Fake {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        self.dir.path()
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub(crate) fn dir(&self, rel: &str) -> PathBuf {
        let p = self.at(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub(crate) fn file(&self, rel: &str, text: &str) {
        let p = self.at(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{text}\n")).unwrap();
    }

    pub(crate) fn link(&self, rel: &str, target: &Path) {
        let p = self.at(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    /// The device directory of `bdf` (`devices/pci0000:00/BDF`), relative to the root.
    pub(crate) fn pci_dir(bdf: &str) -> String {
        format!("devices/pci0000:00/{bdf}")
    }

    /// A PCI device as the kernel shows it; `driver` and `group` make those links, and
    /// `group` makes the device a member of `kernel/iommu_groups/N`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pci(
        &self,
        bdf: &str,
        vendor: &str,
        device: &str,
        class: &str,
        driver: Option<&str>,
        numa_node: i32,
        group: Option<u32>,
    ) {
        let rel = Self::pci_dir(bdf);
        let dir = self.dir(&rel);
        self.file(&format!("{rel}/vendor"), &format!("0x{vendor}"));
        self.file(&format!("{rel}/device"), &format!("0x{device}"));
        self.file(&format!("{rel}/class"), &format!("0x{class}"));
        self.file(&format!("{rel}/numa_node"), &numa_node.to_string());
        self.link(&format!("bus/pci/devices/{bdf}"), &dir);
        if let Some(d) = driver {
            let drv = self.dir(&format!("bus/pci/drivers/{d}"));
            self.link(&format!("{rel}/driver"), &drv);
        }
        if let Some(g) = group {
            let gdir = self.dir(&format!("kernel/iommu_groups/{g}"));
            self.link(&format!("{rel}/iommu_group"), &gdir);
            self.link(&format!("kernel/iommu_groups/{g}/devices/{bdf}"), &dir);
        }
    }

    /// The first 64 bytes of config space, with this header type (1: a bridge).
    pub(crate) fn config(&self, bdf: &str, header_type: u8) {
        let mut config = vec![0u8; 64];
        if let Some(b) = config.get_mut(0x0e) {
            *b = header_type;
        }
        std::fs::write(self.at(&format!("{}/config", Self::pci_dir(bdf))), config).unwrap();
    }

    /// An mdev type under the device directory `parent` (relative to the root), with
    /// existing instances `instances`.
    pub(crate) fn mdev_type(
        &self,
        parent: &str,
        id: &str,
        name: &str,
        available: u32,
        instances: &[&str],
    ) {
        let t = format!("{parent}/mdev_supported_types/{id}");
        self.file(&format!("{t}/name"), name);
        self.file(&format!("{t}/description"), &format!("{name}, described"));
        self.file(&format!("{t}/device_api"), "vfio-pci");
        self.file(&format!("{t}/available_instances"), &available.to_string());
        self.dir(&format!("{t}/devices"));
        for uuid in instances {
            let dev = self.dir(&format!("{parent}/{uuid}"));
            self.link(&format!("{t}/devices/{uuid}"), &dev);
        }
    }

    /// `devices/system/node/nodeN` with its cpulist, MemTotal (KiB) and distance row.
    pub(crate) fn numa_node(&self, id: u32, cpus: &str, mem_kib: u64, distance: &str) {
        let n = format!("devices/system/node/node{id}");
        self.file(&format!("{n}/cpulist"), cpus);
        self.file(
            &format!("{n}/meminfo"),
            &format!("Node {id} MemTotal:       {mem_kib} kB\nNode {id} MemFree:        1 kB"),
        );
        self.file(&format!("{n}/distance"), distance);
    }

    /// `nodeN/accessC/initiators` as Linux makes it from the HMAT: a `nodeM` link per
    /// initiator and `[read_latency, write_latency, read_bandwidth, write_bandwidth]`.
    pub(crate) fn hmat_access(&self, id: u32, class: u32, initiators: &[u32], values: [u64; 4]) {
        let dir = format!("devices/system/node/node{id}/access{class}/initiators");
        self.dir(&dir);
        for m in initiators {
            let target = self.dir(&format!("devices/system/node/node{m}"));
            self.link(&format!("{dir}/node{m}"), &target);
        }
        for (file, v) in [
            "read_latency",
            "write_latency",
            "read_bandwidth",
            "write_bandwidth",
        ]
        .iter()
        .zip(values)
        {
            self.file(&format!("{dir}/{file}"), &v.to_string());
        }
    }
}
