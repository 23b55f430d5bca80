//! Mediated devices and NVIDIA SR-IOV vGPUs as the host offers them: an mdev parent's
//! `mdev_supported_types/` (each type's `name`, `description`, `device_api`,
//! `available_instances` and `devices/`), the parents in `/sys/class/mdev_bus` that
//! are not PCI devices, and an NVIDIA VF's `nvidia/creatable_vgpu_types` and
//! `nvidia/current_vgpu_type` (vGPU 17 and later: no mdev, a type id written to the VF).

use std::path::Path;

use tessera_api::types::{HostMdevParent, HostMdevType, HostNvidiaVgpu, HostVgpuType};

use super::{dir_names, read_attr, under};

/// The mdev types of the device at `dev`, or `None` if it is no mdev parent.
pub fn types(dev: &Path) -> Option<Vec<HostMdevType>> {
    let dir = dev.join("mdev_supported_types");
    if !dir.is_dir() {
        return None;
    }
    Some(
        dir_names(&dir)
            .into_iter()
            .map(|id| {
                let t = dir.join(&id);
                HostMdevType {
                    name: read_attr(&t.join("name")),
                    description: read_attr(&t.join("description")),
                    device_api: read_attr(&t.join("device_api")),
                    available_instances: read_attr(&t.join("available_instances"))
                        .and_then(|n| n.parse().ok()),
                    instances: dir_names(&t.join("devices")),
                    id,
                }
            })
            .collect(),
    )
}

/// The mdev parents that are not PCI devices (a PCI parent is reported with its
/// device), by name.
pub fn non_pci_parents(sysfs: &Path) -> Vec<HostMdevParent> {
    let class = under(sysfs, "class/mdev_bus");
    let pci = under(sysfs, "bus/pci/devices");
    dir_names(&class)
        .into_iter()
        .filter(|name| !pci.join(name).exists())
        .filter_map(|name| {
            let types = types(&class.join(&name))?;
            Some(HostMdevParent { name, types })
        })
        .collect()
}

/// The vGPU state of the NVIDIA VF at `dev`, or `None` if it has no
/// `nvidia/creatable_vgpu_types`.
pub fn nvidia_vgpu(dev: &Path) -> Option<HostNvidiaVgpu> {
    let dir = dev.join("nvidia");
    let file = dir.join("creatable_vgpu_types");
    if !file.exists() {
        return None;
    }
    let raw = read_attr(&file);
    Some(HostNvidiaVgpu {
        creatable_types: raw.as_deref().map(creatable_types).unwrap_or_default(),
        creatable_raw: raw,
        current_type: read_attr(&dir.join("current_vgpu_type")).and_then(|t| t.parse().ok()),
    })
}

/// The lines `1414 : NVIDIA H200X-1-18C` of `creatable_vgpu_types`, as NVIDIA's vGPU
/// user guide shows the file. Lines whose first field is no number (a header such as
/// `ID : vGPU Name`, which some driver versions print) are skipped; the raw text keeps
/// them.
fn creatable_types(text: &str) -> Vec<HostVgpuType> {
    text.lines()
        .filter_map(|line| {
            let (id, name) = line.split_once(':')?;
            let id = id.trim().parse().ok()?;
            let name = name.trim();
            (!name.is_empty()).then(|| HostVgpuType {
                id,
                name: name.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::host::fake::Fake;

    #[test]
    fn creatable_vgpu_types_lines() {
        let text =
            "ID    : vGPU Name\n1428 : NVIDIA H200X-141C\n1414 : NVIDIA H200X-1-18C\n\ngarbage";
        assert_eq!(
            creatable_types(text),
            vec![
                HostVgpuType {
                    id: 1428,
                    name: "NVIDIA H200X-141C".into()
                },
                HostVgpuType {
                    id: 1414,
                    name: "NVIDIA H200X-1-18C".into()
                },
            ]
        );
        assert!(creatable_types("").is_empty());
    }

    #[test]
    fn a_type_with_unreadable_files_is_null_where_they_are() {
        let f = Fake::new();
        let dev = f.dir("devices/virtual/mtty/mtty");
        f.dir("devices/virtual/mtty/mtty/mdev_supported_types/mtty-1");
        f.file(
            "devices/virtual/mtty/mtty/mdev_supported_types/mtty-1/available_instances",
            "lots",
        );
        let types = types(&dev).unwrap();
        assert_eq!(
            types,
            vec![HostMdevType {
                id: "mtty-1".into(),
                name: None,
                description: None,
                device_api: None,
                available_instances: None,
                instances: vec![],
            }]
        );
    }

    #[test]
    fn the_mtty_sample_is_a_non_pci_parent() {
        let f = Fake::new();
        f.mdev_type(
            "devices/virtual/mtty/mtty",
            "mtty-2",
            "Dual-port-serial",
            11,
            &["83b8f4f2-509f-382f-3c1e-e6bfe0fa1002"],
        );
        f.mdev_type(
            "devices/virtual/mtty/mtty",
            "mtty-1",
            "Single port serial",
            24,
            &[],
        );
        let mtty = f.root().join("devices/virtual/mtty/mtty");
        f.link("class/mdev_bus/mtty", &mtty);
        // A PCI parent is listed with its PCI device, not here.
        f.pci(
            "0000:41:00.0",
            "10de",
            "13f2",
            "030000",
            Some("nvidia"),
            0,
            Some(7),
        );
        f.mdev_type(
            &Fake::pci_dir("0000:41:00.0"),
            "nvidia-35",
            "GRID M60-2Q",
            4,
            &[],
        );
        let pci = f.root().join(Fake::pci_dir("0000:41:00.0"));
        f.link("class/mdev_bus/0000:41:00.0", &pci);

        let parents = non_pci_parents(f.root());
        assert_eq!(parents.len(), 1, "{parents:?}");
        assert_eq!(parents[0].name, "mtty");
        let ids: Vec<&str> = parents[0].types.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["mtty-1", "mtty-2"]);
        let t = &parents[0].types[1];
        assert_eq!(t.name.as_deref(), Some("Dual-port-serial"));
        assert_eq!(
            t.description.as_deref(),
            Some("Dual-port-serial, described")
        );
        assert_eq!(t.device_api.as_deref(), Some("vfio-pci"));
        assert_eq!(t.available_instances, Some(11));
        assert_eq!(t.instances, ["83b8f4f2-509f-382f-3c1e-e6bfe0fa1002"]);
    }

    #[test]
    fn no_mdev_bus_is_no_parents() {
        assert!(non_pci_parents(Fake::new().root()).is_empty());
    }
}
