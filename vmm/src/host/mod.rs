//! Host discovery for `GET /vmm.host-devices`: what this host offers for passthrough,
//! read from sysfs and nothing else (no config space beyond the header, no ioctls, no
//! writes). `pci` reads the PCI devices and their IOMMU groups, `mdev` the mediated
//! device types and NVIDIA's SR-IOV vGPU files, `numa` the host's NUMA nodes (with
//! their HMAT access classes). `mirror` turns what they found into a guest configuration
//! whose topology mirrors the host's (`vmm.topology-mirror`).
//!
//! Everything takes the sysfs root (`/sys` on a host; a fake tree in tests, or
//! `tessera --sysfs-root`). A missing or unreadable file gives a `null` field, never
//! an error: sysfs differs between kernels and drivers, and an admin looking for a
//! device is better served by a partial answer than by none.

use std::path::{Path, PathBuf};

use tessera_api::types::HostDevices;

pub mod mdev;
pub mod mirror;
pub mod numa;
pub mod pci;

/// The host's real sysfs.
pub const SYSFS_ROOT: &str = "/sys";

/// Everything [`HostDevices`] reports, read now under `sysfs` (`/sys` on a host).
pub fn discover(sysfs: &Path) -> HostDevices {
    HostDevices {
        pci_devices: pci::devices(sysfs),
        mdev_parents: mdev::non_pci_parents(sysfs),
        numa_nodes: numa::nodes(sysfs),
    }
}

/// A sysfs attribute's text, trimmed; `None` if it cannot be read (missing, a
/// permission, a driver that fails the read).
pub(crate) fn read_attr(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!("host discovery: cannot read {}: {e}", path.display());
            }
            None
        }
    }
}

/// The name a sysfs link points to (`driver` → `vfio-pci`, `iommu_group` → `12`), or
/// `None` if there is no such link.
pub(crate) fn link_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// The entries of a directory, by name, sorted; empty if it cannot be read.
pub(crate) fn dir_names(path: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(path) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `root` joined with an absolute-looking sysfs path (`bus/pci/devices`).
pub(crate) fn under(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}

#[cfg(test)]
pub(crate) mod fake;
