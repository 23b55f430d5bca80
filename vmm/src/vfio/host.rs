//! The checks made on a passed-through device before anything is opened: its path, its
//! driver, its IOMMU group and the group's viability, `/dev/vfio`; and the errors that
//! opening it may still give (a busy group, naming who holds it). Reads sysfs and /proc
//! only; opens nothing.

use std::path::{Path, PathBuf};

use tessera_api::config::{DeviceConfig, VmConfig};
use vfio_ioctls::VfioError;

/// Why a device cannot be passed through; `field` names the configuration entry.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct VfioHostError {
    /// The configuration field at fault (`devices[N].path`, or `devices` for the VM).
    pub field: String,
    /// What is wrong, and what to do about it.
    pub message: String,
}

pub(super) fn fail(field: &str, message: impl Into<String>) -> VfioHostError {
    VfioHostError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// What the checks found out about a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// The sysfs path, resolved.
    pub sysfs: PathBuf,
    /// `pci` or `mdev`.
    pub bus: String,
    /// The IOMMU group.
    pub group: u32,
}

/// Where the VFIO character devices are.
const DEV_VFIO: &str = "/dev/vfio";

/// Checks one device on this host, opening nothing: errors about it name `path`, a host
/// without VFIO names `devices`.
pub fn check_device(device: &DeviceConfig) -> Result<HostDevice, VfioHostError> {
    check_device_at(device, Path::new(DEV_VFIO))
}

/// [`check_device`] with the VFIO device directory given (tests use a fake tree).
pub fn check_device_at(
    device: &DeviceConfig,
    dev_vfio: &Path,
) -> Result<HostDevice, VfioHostError> {
    let found = check_path("path", &device.path, dev_vfio, device.vgpu_type.is_some())?;
    check_vfio(dev_vfio)?;
    Ok(found)
}

/// `/dev/vfio/vfio` must exist.
fn check_vfio(dev_vfio: &Path) -> Result<(), VfioHostError> {
    if dev_vfio.join("vfio").exists() {
        return Ok(());
    }
    Err(fail(
        "devices",
        format!(
            "{} does not exist: load the vfio-pci module (modprobe vfio-pci)",
            dev_vfio.join("vfio").display()
        ),
    ))
}

/// Checks every configured device on this host, opening nothing.
pub fn check_host(config: &VmConfig) -> Result<Vec<HostDevice>, VfioHostError> {
    check_host_at(config, Path::new(DEV_VFIO))
}

/// [`check_host`] with the VFIO device directory given (tests use a fake tree).
pub fn check_host_at(config: &VmConfig, dev_vfio: &Path) -> Result<Vec<HostDevice>, VfioHostError> {
    let mut found: Vec<HostDevice> = Vec::new();
    for (i, d) in config.devices.iter().enumerate() {
        // A managed device is not ready yet: Tessera prepares it (crate::managed), which
        // checks it first, and the device manager checks it again once it is.
        if d.is_managed() {
            continue;
        }
        let field = format!("devices[{i}].path");
        let device = check_path(&field, &d.path, dev_vfio, false)?;
        if let Some(j) = found.iter().position(|f| f.sysfs == device.sysfs) {
            return Err(fail(
                &field,
                format!(
                    "{} is already passed through as devices[{j}]",
                    d.path.display()
                ),
            ));
        }
        found.push(device);
    }
    // Checked after the devices: a wrong path is the likelier mistake, and names its entry.
    if !config.devices.is_empty() {
        check_vfio(dev_vfio)?;
    }
    Ok(found)
}

/// The name of the symlink `link` points at (a driver, a subsystem, a group), if any.
fn link_name(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// Checks the device at `path`. `nvidia_vf`: an NVIDIA SR-IOV vGPU VF, which stays bound
/// to the nvidia driver (it offers the VF to VFIO itself).
fn check_path(
    field: &str,
    path: &Path,
    dev_vfio: &Path,
    nvidia_vf: bool,
) -> Result<HostDevice, VfioHostError> {
    if !path.exists() {
        return Err(fail(
            field,
            format!(
                "{} does not exist: give /sys/bus/pci/devices/SSSS:BB:DD.F or /sys/bus/mdev/devices/UUID",
                path.display()
            ),
        ));
    }
    let sysfs = path
        .canonicalize()
        .map_err(|e| fail(field, format!("{}: {e}", path.display())))?;
    let name = sysfs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bus = link_name(&sysfs.join("subsystem")).unwrap_or_default();
    let driver = link_name(&sysfs.join("driver"));
    match bus.as_str() {
        "pci" => match driver.as_deref() {
            Some(d) if d.contains("vfio") => {}
            Some("nvidia") if nvidia_vf => {}
            Some(d) => {
                return Err(fail(
                    field,
                    format!(
                        "{name} is bound to {d}, not vfio-pci: echo {name} > /sys/bus/pci/drivers/{d}/unbind; \
                         echo vfio-pci > {p}/driver_override; echo {name} > /sys/bus/pci/drivers_probe",
                        p = sysfs.display()
                    ),
                ))
            }
            None => {
                return Err(fail(
                    field,
                    format!(
                        "{name} is bound to no driver: echo vfio-pci > {p}/driver_override; \
                         echo {name} > /sys/bus/pci/drivers_probe",
                        p = sysfs.display()
                    ),
                ))
            }
        },
        // An mdev is bound to its parent's mdev driver (vfio_mdev before Linux 5.16, the
        // vendor's own since), which is what offers it to VFIO.
        "mdev" => {
            if driver.is_none() {
                return Err(fail(
                    field,
                    format!("mdev {name} is bound to no driver: load its parent's mdev driver"),
                ));
            }
        }
        _ => {
            return Err(fail(
                field,
                format!(
                    "{} is not a PCI device or an mdev (its bus is {}): give /sys/bus/pci/devices/SSSS:BB:DD.F \
                     or /sys/bus/mdev/devices/UUID",
                    path.display(),
                    if bus.is_empty() { "unknown" } else { &bus }
                ),
            ))
        }
    }
    let group_link = sysfs.join("iommu_group");
    let group: u32 = link_name(&group_link)
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| {
            fail(
                field,
                format!(
                    "{name} has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on)"
                ),
            )
        })?;
    // Every other device in the group must be harmless to the host while we own it.
    let members = crate::host::pci::group_at(&group_link.join("devices"), group);
    if let Some((other, d)) = crate::host::pci::blockers(&members, &name).first() {
        return Err(fail(
            field,
            format!(
                "IOMMU group {group} is not viable: {other} is in the same group and bound to {d}; \
                 bind it to vfio-pci too, or unbind it"
            ),
        ));
    }
    if !dev_vfio.join(group.to_string()).exists() {
        return Err(fail(
            field,
            format!(
                "{} does not exist although {name} is bound to {}",
                dev_vfio.join(group.to_string()).display(),
                driver.unwrap_or_default()
            ),
        ));
    }
    Ok(HostDevice { sysfs, bus, group })
}

/// Processes other than this one that hold `dev` open, as "pid N (comm)".
fn holders_of(dev: &Path) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == dev))
        {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            out.push(format!("pid {pid} ({})", comm.trim()));
        }
    }
    out
}

/// Turns vfio-ioctls' error for opening `host` into one that says what to do.
pub(super) fn open_error(field: &str, host: &HostDevice, e: VfioError) -> VfioHostError {
    let busy = match &e {
        VfioError::OpenGroup(io, _) => io.raw_os_error() == Some(libc::EBUSY),
        VfioError::GroupGetDeviceFD(sys) | VfioError::SetDeviceAttr(sys) => {
            sys.errno() == libc::EBUSY
        }
        _ => false,
    };
    let group_dev = Path::new(DEV_VFIO).join(host.group.to_string());
    if busy {
        let holders = holders_of(&group_dev);
        let who = if holders.is_empty() {
            "another process or VM".to_string()
        } else {
            holders.join(", ")
        };
        return fail(
            field,
            format!(
                "{} is busy (EBUSY): IOMMU group {} ({}) is in use by {who}",
                host.sysfs.display(),
                host.group,
                group_dev.display()
            ),
        );
    }
    fail(field, format!("{}: {e}", host.sysfs.display()))
}
