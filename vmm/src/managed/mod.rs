//! Managed devices: the host changes Tessera makes so a device can be passed through,
//! and their undoing. An mdev created from its parent and type (or started from its
//! mdevctl definition), a PCI device bound to vfio-pci (`managed=on`), an NVIDIA VF given
//! a vGPU type. Every request is checked whole before anything changes ([`Managed::plan`]);
//! each change is recorded in the state directory before it is made (`state`), and undone
//! when the device goes, on every way out ([`DeviceChanges`] undoes on drop); a crashed
//! tessera's changes are undone by the next start or `tessera --cleanup`.
//!
//! All of a VM's changes are made before any device is opened: NVIDIA wants every mdev
//! of a VM created before any is used.

pub mod binding;
pub mod mdev;
pub mod state;
pub mod sysfs;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
pub mod vgpu;

use std::path::PathBuf;

use tessera_api::config::DeviceConfig;

pub use state::{CleanupSummary, HostChange, RecordedChange, StateDir, DEFAULT_STATE_DIR};
pub use sysfs::Host;

/// Test hook: `TESSERA_TEST_KILL_AT=POINT` makes tessera SIGKILL itself at that point, so
/// tests can crash it at an exact moment and check that the next start cleans up. Not a
/// setting. The points, at a cold start and on a hot-add alike: `after-mdev-create`,
/// `after-bind`, `after-vgpu-type` (a managed device's host change made and recorded),
/// `during-dma-map` (guest RAM just DMA-mapped for the first VFIO device); on a hot-add only,
/// `hot-add-before-notify` (the device opened, its BARs and guest RAM mapped, the guest
/// not yet told).
pub const KILL_AT_ENV: &str = "TESSERA_TEST_KILL_AT";

/// Kills this process with SIGKILL if [`KILL_AT_ENV`] names `point` (a test hook):
/// nothing is unwound, as with `kill -9`.
pub fn kill_point(point: &str) {
    if std::env::var_os(KILL_AT_ENV).is_some_and(|p| p == point) {
        tracing::warn!("{KILL_AT_ENV}={point}: killing this process (test hook)");
        // raise(3) is tgkill(2) on this thread, which the seccomp filters allow (kill(2)
        // is in none); SIGKILL on a thread ends the whole process.
        // SAFETY: raise has no memory-safety preconditions.
        #[allow(unsafe_code)]
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}

/// Why a managed device could not be prepared or given back.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    /// The request is wrong for this host (found before anything changed); `field`
    /// names it (`devices[0].mdev_type`, or `devices` for the host as a whole).
    #[error("{field}: {message}")]
    Device {
        /// The configuration field at fault.
        field: String,
        /// What is wrong, and what would be right.
        message: String,
    },
    /// A sysfs write the kernel refused.
    #[error("{what}: {source}")]
    Host {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// The state directory could not be written or read.
    #[error("state directory {}: {source}", path.display())]
    State {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ManagedError {
    pub(crate) fn device(field: impl Into<String>, message: impl Into<String>) -> Self {
        ManagedError::Device {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field at fault, for input errors.
    pub fn field(&self) -> Option<&str> {
        match self {
            ManagedError::Device { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// What Tessera will do for one device, decided before anything changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing: the device is prepared by someone else (or bound to vfio-pci already).
    Unmanaged,
    /// Create (or start) an mdev.
    Mdev(mdev::MdevPlan),
    /// Bind a PCI device to vfio-pci.
    Bind(binding::BindPlan),
    /// Give an NVIDIA VF a vGPU type.
    Vgpu(vgpu::VgpuPlan),
}

/// The changes made for one device, undone (newest first) when this is dropped or
/// [`DeviceChanges::undo`] is called.
#[derive(Debug)]
pub struct DeviceChanges {
    host: Host,
    changes: Vec<RecordedChange>,
}

impl DeviceChanges {
    /// Undoes the changes now; errors are logged (the records stay for a later cleanup).
    pub fn undo(mut self) {
        self.undo_all();
    }

    fn undo_all(&mut self) {
        while let Some(c) = self.changes.pop() {
            let what = c.change().to_string();
            if let Err(e) = c.undo(&self.host) {
                tracing::error!(
                    "managed: cannot undo {what}: {e}; its record stays for `tessera --cleanup`"
                );
            }
        }
    }

    /// Whether there is anything to undo.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

impl Drop for DeviceChanges {
    fn drop(&mut self) {
        self.undo_all();
    }
}

/// A device ready to open: its configuration with `path` where the device now is, and
/// the changes made for it.
#[derive(Debug)]
pub struct Prepared {
    /// The configuration to open, with the resolved `path`.
    pub device: DeviceConfig,
    /// What to undo when it goes.
    pub changes: DeviceChanges,
}

/// The host's managed-device side: where sysfs is, and the state directory.
#[derive(Clone, Debug)]
pub struct Managed {
    host: Host,
    state: StateDir,
}

impl Managed {
    /// Managed devices on `host`, recorded in `state`.
    pub fn new(host: Host, state: StateDir) -> Managed {
        Managed { host, state }
    }

    /// The real host (`/`) with the default state directory.
    pub fn real() -> Managed {
        Managed::new(Host::real("/"), StateDir::new(DEFAULT_STATE_DIR))
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The state directory.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// Undoes the changes of dead tessera processes ([`StateDir::cleanup`]).
    pub fn cleanup(&self) -> Result<CleanupSummary, ManagedError> {
        self.state.cleanup(&self.host)
    }

    /// What to do for `device` (its fields named `{at}.X`); changes nothing.
    pub fn plan(&self, at: &str, device: &DeviceConfig) -> Result<Plan, ManagedError> {
        if let Some(p) = mdev::plan(&self.host, at, device)? {
            return Ok(Plan::Mdev(p));
        }
        if let Some(t) = device.vgpu_type {
            return Ok(Plan::Vgpu(vgpu::plan(&self.host, at, &device.path, t)?));
        }
        if device.managed {
            let field = format!("{at}.path");
            return Ok(binding::plan(&self.host, &field, &device.path)?
                .map_or(Plan::Unmanaged, Plan::Bind));
        }
        Ok(Plan::Unmanaged)
    }

    /// Plans every device of a VM (`devices[N]`), and checks that together they fit: two
    /// mdevs of one type need two available instances.
    pub fn plan_all(&self, devices: &[DeviceConfig]) -> Result<Vec<Plan>, ManagedError> {
        let mut plans: Vec<Plan> = Vec::with_capacity(devices.len());
        for (i, d) in devices.iter().enumerate() {
            let at = format!("devices[{i}]");
            let plan = self.plan(&at, d)?;
            if let Plan::Mdev(m) = &plan {
                let same = plans
                    .iter()
                    .filter(|p| matches!(p, Plan::Mdev(o) if o.type_dir == m.type_dir))
                    .count() as u64;
                let available = sysfs::read_trimmed(&m.type_dir.join("available_instances"))
                    .and_then(|a| a.parse::<u64>().ok())
                    .unwrap_or(0);
                if same >= available {
                    return Err(ManagedError::device(
                        format!("{at}.mdev_type"),
                        format!(
                            "{} can create {available} more `{}` mdev(s), and the VM asks for more",
                            m.parent.display(),
                            m.mdev_type
                        ),
                    ));
                }
            }
            if let Plan::Bind(b) = &plan {
                if let Some(j) = plans
                    .iter()
                    .position(|p| matches!(p, Plan::Bind(o) if o.bdf == b.bdf))
                {
                    return Err(ManagedError::device(
                        format!("{at}.path"),
                        format!("{} is already devices[{j}]", b.bdf),
                    ));
                }
            }
            plans.push(plan);
        }
        Ok(plans)
    }

    /// Makes the changes `plan` asks for `device`, each recorded first. On failure what
    /// was changed is undone before this returns.
    pub fn apply(&self, device: &DeviceConfig, plan: Plan) -> Result<Prepared, ManagedError> {
        let mut changes = DeviceChanges {
            host: self.host.clone(),
            changes: Vec::new(),
        };
        let mut device = device.clone();
        match plan {
            Plan::Unmanaged => {}
            Plan::Mdev(m) => {
                changes.changes.push(self.state.record(HostChange::Mdev {
                    uuid: m.uuid.clone(),
                    parent: m.parent.clone(),
                })?);
                device.path = mdev::create(&self.host, &m)?;
                device.uuid = Some(m.uuid);
                kill_point("after-mdev-create");
            }
            Plan::Bind(b) => {
                changes
                    .changes
                    .push(self.state.record(HostChange::VfioPciBinding {
                        bdf: b.bdf.clone(),
                        previous_driver: b.driver.clone(),
                    })?);
                binding::bind(&self.host, &b)?;
                device.path = b.sysfs;
                kill_point("after-bind");
            }
            Plan::Vgpu(v) => {
                changes
                    .changes
                    .push(self.state.record(HostChange::VgpuType {
                        bdf: v.bdf.clone(),
                        vgpu_type: v.vgpu_type,
                    })?);
                vgpu::set(&self.host, &v)?;
                device.path = v.sysfs;
                kill_point("after-vgpu-type");
            }
        }
        Ok(Prepared { device, changes })
    }

    /// Plans and applies every device of a VM: all checked before the first change, all
    /// changed before the caller opens any. On failure nothing is left changed; the
    /// error names `devices[N]`.
    pub fn prepare_all(&self, devices: &[DeviceConfig]) -> Result<Vec<Prepared>, ManagedError> {
        let plans = self.plan_all(devices)?;
        self.apply_all(devices, plans)
    }

    /// Applies [`Managed::plan_all`]'s `plans` to `devices`, in order; on failure what
    /// was changed is undone before this returns.
    pub fn apply_all(
        &self,
        devices: &[DeviceConfig],
        plans: Vec<Plan>,
    ) -> Result<Vec<Prepared>, ManagedError> {
        let mut prepared = Vec::with_capacity(devices.len());
        for (i, (d, p)) in devices.iter().zip(plans).enumerate() {
            match self.apply(d, p) {
                Ok(p) => prepared.push(p),
                Err(e) => {
                    // Dropping `prepared` undoes the devices before this one.
                    tracing::error!("managed: preparing devices[{i}] failed: {e}");
                    return Err(match e {
                        ManagedError::Host { what, source } => ManagedError::Host {
                            what: format!("devices[{i}]: {what}"),
                            source,
                        },
                        other => other,
                    });
                }
            }
        }
        Ok(prepared)
    }
}

/// Gives every managed mdev without a UUID a new one, so the configuration (and
/// `vm.info`) names the mdev Tessera will create, and a reboot creates the same one.
pub fn name_mdevs(devices: &mut [DeviceConfig]) {
    for d in devices.iter_mut() {
        if d.mdev_parent.is_some() && d.uuid.is_none() {
            d.uuid = Some(mdev::new_uuid());
        }
    }
}
