//! NVIDIA SR-IOV vGPU (vGPU 17 and later, Ada/Hopper/Blackwell): a vGPU is a VF that
//! stays bound to the `nvidia` driver; writing a type id to the VF's
//! `nvidia/current_vgpu_type` makes it that vGPU, and writing 0 gives the VF back.
//! No NVIDIA hardware was available: this follows the driver's documented files and is
//! tested only on fake sysfs trees.

use std::path::{Path, PathBuf};

use super::sysfs::{read_trimmed, Host};
use super::ManagedError;

/// A vGPU type to write, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VgpuPlan {
    /// The VF's sysfs directory.
    pub sysfs: PathBuf,
    /// Its PCI address.
    pub bdf: String,
    /// The type id.
    pub vgpu_type: u32,
}

/// The type ids in a `creatable_vgpu_types` file: a header line, then `ID : Name` lines.
pub fn creatable_types(text: &str) -> Vec<(u32, String)> {
    text.lines()
        .filter_map(|l| {
            let (id, name) = l.split_once(':')?;
            Some((id.trim().parse().ok()?, name.trim().to_string()))
        })
        .collect()
}

/// Checks that the VF at `path` can take `vgpu_type`; changes nothing.
pub fn plan(host: &Host, at: &str, path: &Path, vgpu_type: u32) -> Result<VgpuPlan, ManagedError> {
    let field = format!("{at}.vgpu_type");
    let rooted = host.path(path);
    if !rooted.exists() {
        return Err(ManagedError::device(
            format!("{at}.path"),
            format!(
                "{} does not exist: give the VF as /sys/bus/pci/devices/SSSS:BB:DD.F",
                path.display()
            ),
        ));
    }
    let sysfs = rooted.canonicalize().map_err(|e| {
        ManagedError::device(format!("{at}.path"), format!("{}: {e}", path.display()))
    })?;
    let bdf = sysfs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nvidia = sysfs.join("nvidia");
    let Ok(text) = std::fs::read_to_string(nvidia.join("creatable_vgpu_types")) else {
        return Err(ManagedError::device(
            field,
            format!(
                "{bdf} has no nvidia/creatable_vgpu_types: it is not an NVIDIA SR-IOV vGPU VF \
                 (enable the VFs with sriov-manage and keep them on the nvidia driver)"
            ),
        ));
    };
    let types = creatable_types(&text);
    if !types.iter().any(|(id, _)| *id == vgpu_type) {
        let list = types
            .iter()
            .map(|(id, name)| format!("{id} ({name})"))
            .collect::<Vec<_>>();
        return Err(ManagedError::device(
            field,
            format!(
                "{vgpu_type} is not creatable on {bdf} now; creatable types: {}",
                if list.is_empty() {
                    "none (the GPU may be full, or the VF in use)".to_string()
                } else {
                    list.join(", ")
                }
            ),
        ));
    }
    let current = read_trimmed(&nvidia.join("current_vgpu_type")).unwrap_or_default();
    if !current.is_empty() && current != "0" {
        return Err(ManagedError::device(
            field,
            format!("{bdf} already has vGPU type {current}: another VM may be using it"),
        ));
    }
    Ok(VgpuPlan {
        sysfs,
        bdf,
        vgpu_type,
    })
}

/// Writes the type (its record written already).
pub fn set(host: &Host, plan: &VgpuPlan) -> Result<(), ManagedError> {
    host.write(
        &plan.sysfs.join("nvidia/current_vgpu_type"),
        &plan.vgpu_type.to_string(),
    )
    .map_err(|source| ManagedError::Host {
        what: format!("writing vGPU type {} to {}", plan.vgpu_type, plan.bdf),
        source,
    })?;
    tracing::info!("managed: {} is vGPU type {}", plan.bdf, plan.vgpu_type);
    Ok(())
}

/// Writes 0 to the VF's `current_vgpu_type`, giving the vGPU up.
pub fn clear(host: &Host, bdf: &str) -> Result<(), ManagedError> {
    let file = host.pci_device(bdf).join("nvidia/current_vgpu_type");
    if !file.exists() {
        return Ok(());
    }
    if read_trimmed(&file).as_deref() == Some("0") {
        return Ok(());
    }
    host.write(&file, "0").map_err(|source| ManagedError::Host {
        what: format!("writing vGPU type 0 to {bdf}"),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_creatable_types() {
        let text = "ID    : vGPU Name\n557   : NVIDIA L40-1Q\n558   : NVIDIA L40-2Q\n";
        assert_eq!(
            creatable_types(text),
            vec![(557, "NVIDIA L40-1Q".into()), (558, "NVIDIA L40-2Q".into())]
        );
    }
}
