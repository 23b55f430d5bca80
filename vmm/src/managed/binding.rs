//! Managed vfio-pci binding (libvirt's `managed='yes'`): a PCI device is bound to
//! vfio-pci through `driver_override` (unbind from its driver, write `driver_override`,
//! `drivers_probe`) and afterwards given back to the driver it had, or none, with
//! `driver_override` cleared. Its IOMMU group must be viable as it is: Tessera names the
//! members that block it and never rebinds them.

use std::path::{Path, PathBuf};

use super::sysfs::{driver_of, link_name, read_trimmed, Host};
use super::ManagedError;

/// The driver Tessera binds to.
pub const VFIO_PCI: &str = "vfio-pci";

/// A binding to make, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindPlan {
    /// The device's sysfs directory.
    pub sysfs: PathBuf,
    /// Its PCI address.
    pub bdf: String,
    /// The driver it has now, if any.
    pub driver: Option<String>,
}

/// Checks that the device at `path` can be bound to vfio-pci by Tessera; changes
/// nothing. `None` when it is bound to vfio-pci already (nothing to do or undo).
pub fn plan(host: &Host, field: &str, path: &Path) -> Result<Option<BindPlan>, ManagedError> {
    let bad = |m: String| ManagedError::device(field, m);
    let rooted = host.path(path);
    if !rooted.exists() {
        return Err(bad(format!(
            "{} does not exist: give /sys/bus/pci/devices/SSSS:BB:DD.F",
            path.display()
        )));
    }
    let sysfs = rooted
        .canonicalize()
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let bdf = sysfs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if link_name(&sysfs.join("subsystem")).as_deref() != Some("pci") {
        return Err(ManagedError::device(
            field.replace(".path", ".managed"),
            format!(
                "managed=on binds PCI devices to vfio-pci; {} is not a PCI device",
                path.display()
            ),
        ));
    }
    let driver = driver_of(&sysfs);
    let group_link = sysfs.join("iommu_group");
    let Some(group) = link_name(&group_link) else {
        return Err(bad(format!(
            "{bdf} has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on)"
        )));
    };
    let id = group.parse().unwrap_or_default();
    let blocking: Vec<String> = crate::host::pci::blockers(
        &crate::host::pci::group_at(&group_link.join("devices"), id),
        &bdf,
    )
    .into_iter()
    .map(|(other, d)| format!("{other} (bound to {d})"))
    .collect();
    if !blocking.is_empty() {
        return Err(bad(format!(
            "IOMMU group {group} is not viable: {} in the same group; Tessera does not rebind \
             other devices: bind them to vfio-pci yourself (or unbind them), or pass them \
             through too",
            blocking.join(", ")
        )));
    }
    if driver.as_deref() == Some(VFIO_PCI) {
        return Ok(None);
    }
    if !host.path("/sys/bus/pci/drivers").join(VFIO_PCI).is_dir() {
        return Err(ManagedError::device(
            "devices",
            "the vfio-pci driver is not loaded (modprobe vfio-pci)",
        ));
    }
    if let Some(o) = read_trimmed(&sysfs.join("driver_override")) {
        if !o.is_empty() && o != "(null)" && o != VFIO_PCI {
            return Err(bad(format!(
                "{bdf} has driver_override `{o}` set by someone else; clear it first"
            )));
        }
    }
    Ok(Some(BindPlan { sysfs, bdf, driver }))
}

fn host_err(what: String, source: std::io::Error) -> ManagedError {
    ManagedError::Host { what, source }
}

/// Binds the device of `plan` to vfio-pci (its record written already): unbind, set
/// `driver_override`, `drivers_probe`, and check it took.
pub fn bind(host: &Host, plan: &BindPlan) -> Result<(), ManagedError> {
    let bdf = &plan.bdf;
    if let Some(d) = &plan.driver {
        let unbind = host.path("/sys/bus/pci/drivers").join(d).join("unbind");
        host.write(&unbind, bdf)
            .map_err(|e| host_err(format!("unbinding {bdf} from {d}"), e))?;
    }
    host.write(&plan.sysfs.join("driver_override"), VFIO_PCI)
        .map_err(|e| host_err(format!("writing {bdf}'s driver_override"), e))?;
    host.write(&host.path("/sys/bus/pci/drivers_probe"), bdf)
        .map_err(|e| host_err(format!("probing {bdf} for vfio-pci"), e))?;
    match driver_of(&plan.sysfs) {
        Some(d) if d == VFIO_PCI => {
            tracing::info!(
                "managed: {bdf} bound to vfio-pci (was {})",
                plan.driver.as_deref().unwrap_or("no driver")
            );
            Ok(())
        }
        other => Err(host_err(
            format!("binding {bdf} to vfio-pci"),
            std::io::Error::other(format!(
                "it is bound to {} after drivers_probe",
                other.as_deref().unwrap_or("no driver")
            )),
        )),
    }
}

/// Gives `bdf` back: off vfio-pci, `driver_override` cleared, bound to `previous` again
/// (or left without a driver). Safe to repeat, and after a bind that stopped half-way.
pub fn restore(host: &Host, bdf: &str, previous: Option<&str>) -> Result<(), ManagedError> {
    let sysfs = host.pci_device(bdf);
    if !sysfs.exists() {
        // Gone from the host (hot-unplugged): nothing left to give back.
        tracing::warn!("managed: {bdf} is gone; nothing to restore");
        return Ok(());
    }
    let drivers = host.path("/sys/bus/pci/drivers");
    if driver_of(&sysfs).as_deref() == Some(VFIO_PCI) {
        host.write(&drivers.join(VFIO_PCI).join("unbind"), bdf)
            .map_err(|e| host_err(format!("unbinding {bdf} from vfio-pci"), e))?;
    }
    // An empty line clears driver_override.
    host.write(&sysfs.join("driver_override"), "\n")
        .map_err(|e| host_err(format!("clearing {bdf}'s driver_override"), e))?;
    if let Some(d) = previous {
        if driver_of(&sysfs).as_deref() != Some(d) {
            host.write(&drivers.join(d).join("bind"), bdf)
                .map_err(|e| host_err(format!("binding {bdf} back to {d}"), e))?;
        }
    }
    tracing::info!(
        "managed: {bdf} given back to {}",
        previous.unwrap_or("no driver")
    );
    Ok(())
}
