//! The host's PCI devices (`/sys/bus/pci/devices/*`): ids, class, driver, NUMA node,
//! and each one's IOMMU group with its members and whether VFIO can use it.
//!
//! Viability follows the rule of the kernel's `vfio_dev_viable` (drivers/vfio/vfio.c
//! up to 5.18): a group is viable when every member is driver-less, bound to a VFIO
//! driver, bound to `pci-stub`, or a PCI bridge (`hdr_type` not normal: the kernel
//! excluded interconnect devices with whatever driver, which is how `pcieport` passes).
//! From 5.19 the kernel asks the same through the IOMMU core's DMA ownership, where
//! `vfio-pci`, `pci-stub` and `pcieport` are the drivers that declare
//! `driver_managed_dma`; the answer for these drivers is the same.

use std::io::Read as _;
use std::path::Path;

use tessera_api::types::{HostIommuGroup, HostIommuGroupMember, HostPciDevice};

use super::{dir_names, link_name, mdev, read_attr, under};

/// Every PCI device, by BDF; empty when there is no `bus/pci` (no PCI, or no sysfs).
pub fn devices(sysfs: &Path) -> Vec<HostPciDevice> {
    let dir = under(sysfs, "bus/pci/devices");
    dir_names(&dir)
        .into_iter()
        .map(|bdf| device(sysfs, &dir, bdf))
        .collect()
}

fn device(sysfs: &Path, dir: &Path, bdf: String) -> HostPciDevice {
    let path = dir.join(&bdf);
    HostPciDevice {
        vendor: hex_attr(&path.join("vendor")),
        device: hex_attr(&path.join("device")),
        class: hex_attr(&path.join("class")),
        driver: link_name(&path.join("driver")),
        numa_node: read_attr(&path.join("numa_node")).and_then(|n| numa_node(&n)),
        iommu_group: link_name(&path.join("iommu_group"))
            .and_then(|g| g.parse().ok())
            .map(|id| group(sysfs, id)),
        mdev_types: mdev::types(&path),
        nvidia_vgpu: mdev::nvidia_vgpu(&path),
        path: path.display().to_string(),
        bdf,
    }
}

/// `0x10de` as `10de`.
fn hex_attr(path: &Path) -> Option<String> {
    let text = read_attr(path)?;
    let digits = text.strip_prefix("0x").unwrap_or(&text);
    Some(digits.to_ascii_lowercase())
}

/// `numa_node`: the node, or `None` for -1 (the firmware names none) or garbage.
fn numa_node(text: &str) -> Option<u32> {
    text.parse::<i64>().ok().and_then(|n| u32::try_from(n).ok())
}

/// IOMMU group `id` (`kernel/iommu_groups/ID/devices`): its members and viability.
pub fn group(sysfs: &Path, id: u32) -> HostIommuGroup {
    group_at(
        &under(sysfs, &format!("kernel/iommu_groups/{id}/devices")),
        id,
    )
}

/// IOMMU group `id` from its `devices` directory (a device's `iommu_group/devices`
/// reaches the same): the one viability rule that discovery reports and that passing a
/// device through, or binding it to vfio-pci, enforces.
pub fn group_at(dir: &Path, id: u32) -> HostIommuGroup {
    let mut members = Vec::new();
    let mut blocking = Vec::new();
    for name in dir_names(dir) {
        let member = dir.join(&name);
        let driver = link_name(&member.join("driver"));
        if let Some(d) = &driver {
            if !allows_vfio(&member, d) {
                blocking.push(name.clone());
            }
        }
        members.push(HostIommuGroupMember { name, driver });
    }
    HostIommuGroup {
        id,
        viable: blocking.is_empty(),
        members,
        blocking,
    }
}

/// The members of `group` other than `except` that keep it from VFIO, as
/// (name, driver), in name order.
pub fn blockers(group: &HostIommuGroup, except: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = group
        .members
        .iter()
        .filter(|m| m.name != except && group.blocking.contains(&m.name))
        .map(|m| (m.name.clone(), m.driver.clone().unwrap_or_default()))
        .collect();
    out.sort();
    out
}

/// Whether `member`, bound to `driver`, leaves its group usable by VFIO.
fn allows_vfio(member: &Path, driver: &str) -> bool {
    driver == "pci-stub" || is_vfio_driver(member, driver) || is_bridge(member)
}

/// The kernel knows a VFIO driver by its registering the device with VFIO, which sysfs
/// does not show on every kernel; these are the signs it does show: the name
/// (`vfio-pci`, and its variants `mlx5_vfio_pci`, `nvgrace_gpu_vfio_pci`, ...), a
/// `vfio-dev/` directory (6.2 and later), or a device on the mdev bus, whose drivers
/// (`vfio_mdev`, `mtty`, NVIDIA's) are all VFIO drivers.
fn is_vfio_driver(member: &Path, driver: &str) -> bool {
    driver.contains("vfio")
        || member.join("vfio-dev").is_dir()
        || link_name(&member.join("subsystem")).as_deref() == Some("mdev")
}

/// A PCI device whose header type is not 0 (a bridge or CardBus bridge). The header
/// type is byte 0x0e of config space (bit 7 is multi-function), which sysfs lets anyone
/// read; without it, the bridge classes (0x0604, 0x0607, 0x0609) say the same.
fn is_bridge(member: &Path) -> bool {
    let mut header = [0u8; 0x0f];
    let read = std::fs::File::open(member.join("config"))
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok();
    if read {
        return header.get(0x0e).is_some_and(|t| t & 0x7f != 0);
    }
    hex_attr(&member.join("class")).is_some_and(|c| {
        ["0604", "0607", "0609"]
            .iter()
            .any(|prefix| c.starts_with(prefix))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::host::fake::Fake;
    use tessera_api::types::HostVgpuType;

    fn find<'a>(devices: &'a [HostPciDevice], bdf: &str) -> &'a HostPciDevice {
        devices.iter().find(|d| d.bdf == bdf).unwrap()
    }

    #[test]
    fn a_gpu_with_mdev_types_and_instances() {
        let f = Fake::new();
        f.pci(
            "0000:41:00.0",
            "10DE",
            "13f2",
            "030000",
            Some("nvidia"),
            1,
            Some(40),
        );
        let gpu = Fake::pci_dir("0000:41:00.0");
        f.mdev_type(
            &gpu,
            "nvidia-35",
            "GRID M60-2Q",
            2,
            &[
                "a1b2c3d4-0000-4000-8000-000000000001",
                "a1b2c3d4-0000-4000-8000-000000000002",
            ],
        );
        f.mdev_type(&gpu, "nvidia-36", "GRID M60-4Q", 0, &[]);
        let devices = devices(f.root());
        let d = find(&devices, "0000:41:00.0");
        assert_eq!(d.vendor.as_deref(), Some("10de"), "lower case, no 0x");
        assert_eq!(d.device.as_deref(), Some("13f2"));
        assert_eq!(d.class.as_deref(), Some("030000"));
        assert_eq!(d.driver.as_deref(), Some("nvidia"));
        assert_eq!(d.numa_node, Some(1));
        assert!(
            d.path.ends_with("bus/pci/devices/0000:41:00.0"),
            "{}",
            d.path
        );
        let types = d.mdev_types.as_ref().unwrap();
        assert_eq!(types.len(), 2);
        assert_eq!(types[0].id, "nvidia-35");
        assert_eq!(types[0].name.as_deref(), Some("GRID M60-2Q"));
        assert_eq!(types[0].device_api.as_deref(), Some("vfio-pci"));
        assert_eq!(types[0].available_instances, Some(2));
        assert_eq!(types[0].instances.len(), 2);
        assert_eq!(types[1].available_instances, Some(0));
        assert!(types[1].instances.is_empty());
        assert_eq!(d.nvidia_vgpu, None);
        // The GPU alone in its group, bound to nvidia: not viable until it is rebound.
        let g = d.iommu_group.as_ref().unwrap();
        assert_eq!((g.id, g.viable), (40, false));
        assert_eq!(g.blocking, ["0000:41:00.0"]);
    }

    #[test]
    fn an_nvidia_vf_with_creatable_vgpu_types() {
        let f = Fake::new();
        f.pci(
            "0000:41:00.4",
            "10de",
            "2335",
            "030200",
            Some("nvidia"),
            0,
            Some(61),
        );
        let vf = Fake::pci_dir("0000:41:00.4");
        f.file(
            &format!("{vf}/nvidia/creatable_vgpu_types"),
            "1428 : NVIDIA H200X-141C\n1414 : NVIDIA H200X-1-18C",
        );
        f.file(&format!("{vf}/nvidia/current_vgpu_type"), "0");
        let devices = devices(f.root());
        let v = find(&devices, "0000:41:00.4").nvidia_vgpu.clone().unwrap();
        assert_eq!(
            v.creatable_types,
            [
                HostVgpuType {
                    id: 1428,
                    name: "NVIDIA H200X-141C".into()
                },
                HostVgpuType {
                    id: 1414,
                    name: "NVIDIA H200X-1-18C".into()
                }
            ]
        );
        assert_eq!(
            v.creatable_raw.as_deref(),
            Some("1428 : NVIDIA H200X-141C\n1414 : NVIDIA H200X-1-18C")
        );
        assert_eq!(v.current_type, Some(0));
        assert_eq!(find(&devices, "0000:41:00.4").mdev_types, None);
    }

    #[test]
    fn a_group_with_a_blocking_member_names_it() {
        let f = Fake::new();
        // A NIC's two functions share a group; one is on vfio-pci, the other on its
        // kernel driver. The root port above them is in the group too, on pcieport.
        f.pci(
            "0000:03:00.0",
            "8086",
            "1521",
            "020000",
            Some("vfio-pci"),
            0,
            Some(9),
        );
        f.pci(
            "0000:03:00.1",
            "8086",
            "1521",
            "020000",
            Some("igb"),
            0,
            Some(9),
        );
        f.pci(
            "0000:00:1c.0",
            "8086",
            "a110",
            "060400",
            Some("pcieport"),
            0,
            Some(9),
        );
        f.config("0000:00:1c.0", 0x81);
        let devices = devices(f.root());
        let g = find(&devices, "0000:03:00.0").iommu_group.clone().unwrap();
        assert!(!g.viable);
        assert_eq!(g.blocking, ["0000:03:00.1"], "the bridge does not block");
        assert_eq!(
            g.members,
            [
                HostIommuGroupMember {
                    name: "0000:00:1c.0".into(),
                    driver: Some("pcieport".into())
                },
                HostIommuGroupMember {
                    name: "0000:03:00.0".into(),
                    driver: Some("vfio-pci".into())
                },
                HostIommuGroupMember {
                    name: "0000:03:00.1".into(),
                    driver: Some("igb".into())
                },
            ]
        );
        // Every member reports the same group.
        assert_eq!(find(&devices, "0000:03:00.1").iommu_group, Some(g));
    }

    #[test]
    fn a_bridge_is_known_by_its_class_without_config_space() {
        let f = Fake::new();
        f.pci(
            "0000:00:1c.0",
            "8086",
            "a110",
            "060400",
            Some("pcieport"),
            0,
            Some(3),
        );
        f.pci(
            "0000:00:1f.0",
            "8086",
            "a140",
            "060100",
            Some("lpc_ich"),
            0,
            Some(3),
        );
        let g = group(f.root(), 3);
        assert_eq!(g.blocking, ["0000:00:1f.0"]);
    }

    #[test]
    fn no_driver_pci_stub_and_numa_minus_one() {
        let f = Fake::new();
        f.pci("0000:00:03.0", "1b36", "0010", "010802", None, -1, Some(4));
        f.pci(
            "0000:00:04.0",
            "1234",
            "11e8",
            "00ff00",
            Some("pci-stub"),
            -1,
            Some(4),
        );
        let devices = devices(f.root());
        let nvme = find(&devices, "0000:00:03.0");
        assert_eq!(nvme.driver, None);
        assert_eq!(nvme.numa_node, None);
        let g = nvme.iommu_group.as_ref().unwrap();
        assert!(g.viable, "{g:?}");
        assert!(g.blocking.is_empty());
        assert_eq!(g.members[0].driver, None);
    }

    #[test]
    fn missing_files_are_null_and_no_group_is_null() {
        let f = Fake::new();
        f.dir("bus/pci/devices/0000:00:00.0");
        let devices = devices(f.root());
        assert_eq!(
            devices,
            [HostPciDevice {
                bdf: "0000:00:00.0".into(),
                path: f
                    .root()
                    .join("bus/pci/devices/0000:00:00.0")
                    .display()
                    .to_string(),
                vendor: None,
                device: None,
                class: None,
                driver: None,
                numa_node: None,
                iommu_group: None,
                mdev_types: None,
                nvidia_vgpu: None,
            }]
        );
    }

    #[test]
    fn no_pci_bus_is_an_empty_list() {
        assert!(devices(Fake::new().root()).is_empty());
        assert!(devices(Path::new("/nonexistent/sysfs")).is_empty());
    }

    #[test]
    fn an_mdev_member_bound_to_its_vendor_driver_is_vfio() {
        let f = Fake::new();
        // An mdev in its own group, bound to the mtty driver (a VFIO driver on 6.1).
        let mdev = f.dir("devices/virtual/mtty/mtty/83b8f4f2-509f-382f-3c1e-e6bfe0fa1002");
        let drv = f.dir("bus/mdev/drivers/mtty");
        let bus = f.dir("bus/mdev");
        f.link(
            "devices/virtual/mtty/mtty/83b8f4f2-509f-382f-3c1e-e6bfe0fa1002/driver",
            &drv,
        );
        f.link(
            "devices/virtual/mtty/mtty/83b8f4f2-509f-382f-3c1e-e6bfe0fa1002/subsystem",
            &bus,
        );
        f.link(
            "kernel/iommu_groups/12/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1002",
            &mdev,
        );
        let g = group(f.root(), 12);
        assert!(g.viable, "{g:?}");
        assert_eq!(g.members[0].driver.as_deref(), Some("mtty"));
    }

    #[test]
    fn numa_node_text() {
        assert_eq!(numa_node("-1"), None);
        assert_eq!(numa_node("3"), Some(3));
        assert_eq!(numa_node(""), None);
    }
}
