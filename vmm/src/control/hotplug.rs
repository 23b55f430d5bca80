//! Hotplug in the control loop: a hot-add on a running VM, and a removal that waits for
//! the guest's eject (or the eject timeout) while the loop serves other requests; and the
//! configuration checks a device's coming and going share with the cold path.

use std::time::Instant;

use tessera_api::config::VmConfig;
use tessera_api::server::{ApiError, ApiReply, ApiRequest, VmAction};

use super::{err, topology_err, Control, State};
use crate::device_manager::DeviceError;
use crate::guest_topology::guest_topology;
use crate::managed::ManagedError;

/// A `vm.remove-device` waiting for the guest's eject: answered from the eject event, or
/// when the VM stops, or at `deadline`.
pub(super) struct PendingRemoval {
    pub(super) id: String,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<ApiReply, ApiError>>,
    pub(super) deadline: Instant,
}

/// A paused guest cannot scan or eject a slot.
pub(super) const PAUSED_HOTPLUG: &str =
    "the VM is paused: resume it first (a paused guest cannot take \
or give up a device)";

pub(super) fn device_err(e: DeviceError) -> ApiError {
    match e {
        DeviceError::Device { field, message } => {
            let status = if field == "id" { 409 } else { 400 };
            ApiError::new(status, format!("{field}: {message}"), Some(field))
        }
        DeviceError::NotFound(id) => {
            ApiError::new(404, format!("no device has id `{id}`"), Some("id".into()))
        }
        DeviceError::Vm(message) => ApiError::new(500, message, None),
    }
}

/// A managed device's error for a hot-add, its field named within the request's body.
fn managed_err(e: ManagedError) -> ApiError {
    match e {
        ManagedError::Device { field, message } => {
            let field = field
                .strip_prefix("device.")
                .unwrap_or(field.as_str())
                .to_string();
            ApiError::new(400, format!("{field}: {message}"), Some(field))
        }
        other => ApiError::new(500, other.to_string(), None),
    }
}

/// The checks `vm.add-device` makes against the configuration: the id and the host
/// device are not in it yet.
pub(super) fn check_new_device(
    c: &VmConfig,
    device: &tessera_api::config::DeviceConfig,
) -> Result<(), ApiError> {
    if let Some(id) = &device.id {
        if c.devices.iter().any(|d| d.id.as_ref() == Some(id)) {
            return Err(ApiError::new(
                409,
                format!("a device with id `{id}` already exists"),
                Some("id".into()),
            ));
        }
    }
    // Managed mdevs have no path until they are made: they are told apart by uuid.
    if !device.path.as_os_str().is_empty() && c.devices.iter().any(|d| d.path == device.path) {
        return Err(ApiError::new(
            409,
            format!("{} is already a device of this VM", device.path.display()),
            Some("path".into()),
        ));
    }
    if let Some(uuid) = &device.uuid {
        if c.devices.iter().any(|d| {
            d.uuid
                .as_ref()
                .is_some_and(|u| u.eq_ignore_ascii_case(uuid))
        }) {
            return Err(ApiError::new(
                409,
                format!("mdev {uuid} is already a device of this VM"),
                Some("uuid".into()),
            ));
        }
    }
    Ok(())
}

/// Writes each placed device's BDF into its configuration (`pci_segment`,
/// `pci_device_id`), so that after a runtime change a reboot puts every device back where
/// the guest saw it.
fn pin_devices(c: &mut VmConfig, placed: &[crate::device_manager::PciDeviceInfo]) {
    for d in c.devices.iter_mut() {
        if let Some(p) = placed
            .iter()
            .find(|p| d.id.as_deref() == Some(p.id.as_str()))
        {
            d.pci_segment = p.bdf.segment;
            d.pci_device_id = Some(p.bdf.device);
        }
    }
}

/// Where device `id` is in `c.devices`, if the configuration lets it go: it exists,
/// and no Generic Initiator link names it, unless it fills a GI-ready slot, whose links
/// stay with the slot for the next device of that id.
pub(super) fn removable(c: &VmConfig, id: &str) -> Result<usize, ApiError> {
    // Every device has its id: they are written back when they come in.
    let index = c
        .devices
        .iter()
        .position(|d| d.id.as_deref() == Some(id))
        .ok_or_else(|| ApiError::new(404, format!("no device has id `{id}`"), Some("id".into())))?;
    // Its BAR is guest RAM the guest's kernel holds pages of: it cannot be given back
    // while the guest runs, and the entry names it while the VM is not running.
    if let Some((i, m)) = c.backs_device_memory(id) {
        return Err(ApiError::new(
            409,
            format!(
                "`{id}` backs node {}'s memory (device_memory[{i}]): device memory is guest \
                 RAM and cannot be unplugged; remove that entry while the VM is not running",
                m.node
            ),
            Some("id".into()),
        ));
    }
    let in_slot = c.pci_slots.iter().any(|s| s.id == id);
    let linked = c.generic_initiators.iter().any(|g| g.device == id)
        || c.numa.iter().any(|n| n.device_id.as_deref() == Some(id));
    if linked && !in_slot {
        return Err(ApiError::new(
            409,
            format!("`{id}` still has Generic Initiator links; remove them first"),
            Some("id".into()),
        ));
    }
    Ok(index)
}

impl Control {
    /// Takes a `vm.remove-device` for a running VM: asks the guest to eject and keeps the
    /// reply for the eject (or the timeout). Any other request, or a refused removal, is
    /// handed back (refusals answered through [`Control::handle`]).
    pub(super) fn start_removal(&mut self, request: ApiRequest) -> Option<ApiRequest> {
        let VmAction::RemoveDevice { id } = &request.action else {
            return Some(request);
        };
        if self.pending.is_some() || !matches!(self.state, State::Running(_)) {
            return Some(request);
        }
        let id = id.clone();
        let checked = self.check_removal(&id).and_then(|()| {
            let State::Running(vm) = &mut self.state else {
                return Err(err(409, "the VM is not running"));
            };
            vm.devices().request_removal(&id).map_err(device_err)
        });
        match checked {
            Ok(bdf) => {
                tracing::info!("asked the guest to eject `{id}` at {bdf}");
                self.pending = Some(PendingRemoval {
                    id,
                    reply: request.reply,
                    deadline: Instant::now() + self.eject_timeout,
                });
            }
            Err(e) => {
                let _ = request.reply.send(Err(e));
            }
        }
        None
    }

    /// Whether the configuration lets device `id` go ([`removable`]).
    pub(super) fn check_removal(&self, id: &str) -> Result<(), ApiError> {
        let c = self
            .config
            .as_ref()
            .ok_or_else(|| err(404, "no VM has been created"))?;
        removable(c, id).map(|_| ())
    }

    /// The guest ejected slots: their devices leave the VM and its configuration, and a
    /// removal waiting for one of them is answered. A slot the guest ejects on its own (a
    /// write to its sysfs `power`) is released the same way.
    pub(super) fn ejected(&mut self) {
        for slot in self.events.ejected() {
            let (State::Running(vm) | State::Paused(vm)) = &mut self.state else {
                continue;
            };
            let Some(id) = vm.devices().device_in(slot) else {
                tracing::debug!(?slot, "the guest ejected an empty slot");
                continue;
            };
            if let Some((i, _)) = self
                .config
                .as_ref()
                .and_then(|c| c.backs_device_memory(&id))
            {
                tracing::warn!(
                    "the guest ejected `{id}`, whose BAR is its RAM (device_memory[{i}]): \
                     the device stays"
                );
                continue;
            }
            let removed = vm.devices().remove_device(&id);
            // Closed now: its mdev can go, its driver come back.
            vm.release_host_changes(&id);
            let placed = vm.devices().devices();
            if let Some(c) = self.config.as_mut() {
                c.devices.retain(|d| d.id.as_deref() != Some(id.as_str()));
                pin_devices(c, &placed);
            }
            let answer = match removed {
                Ok(_) => Ok(ApiReply::NoContent),
                Err(e) => Err(device_err(e)),
            };
            if self.pending.as_ref().is_some_and(|p| p.id == id) {
                if let Some(p) = self.pending.take() {
                    let _ = p.reply.send(answer);
                }
            }
        }
    }

    /// Hot-adds `device` to the running VM: checked against the configuration first, then
    /// brought in, the guest told, and the device written into the configuration at the
    /// BDF it got.
    pub(super) fn hot_add(
        &mut self,
        mut device: tessera_api::config::DeviceConfig,
    ) -> Result<ApiReply, ApiError> {
        let mut config = self
            .config
            .clone()
            .ok_or_else(|| err(404, "no VM has been created"))?;
        crate::managed::name_mdevs(std::slice::from_mut(&mut device));
        check_new_device(&config, &device)?;
        config.devices.push(device.clone());
        guest_topology(&config, tessera_arch::vcpu::host_phys_bits()).map_err(|e| {
            let mut e = topology_err(e);
            let prefix = format!("devices[{}]", config.devices.len() - 1);
            // Named within the request's body, as a cold add's refusals are.
            if let Some(field) = e.field.as_mut() {
                if let Some(rest) = field.strip_prefix(&prefix) {
                    *field = rest.trim_start_matches('.').to_string();
                    e.error = e.error.replacen(&format!("{prefix}."), "", 1);
                }
            }
            e
        })?;
        config.devices.pop();
        if !matches!(self.state, State::Running(_)) {
            return Err(err(409, "the VM is not running"));
        }
        // The host is changed only now, with every check passed; the changes are undone
        // if the device does not come in (dropped with `prepared`).
        let plan = self.managed.plan("device", &device).map_err(managed_err)?;
        let prepared = self.managed.apply(&device, plan).map_err(managed_err)?;
        let State::Running(vm) = &mut self.state else {
            return Err(err(409, "the VM is not running"));
        };
        let info = vm
            .devices()
            .hotplug_device(&prepared.device)
            .map_err(device_err)?;
        vm.keep_host_changes(&info.id, prepared.changes);
        let placed = vm.devices().devices();
        config.devices.push(tessera_api::config::DeviceConfig {
            id: Some(info.id.clone()),
            ..device
        });
        pin_devices(&mut config, &placed);
        self.config = Some(config);
        tracing::info!("hot-added `{}` at {}", info.id, info.bdf);
        ApiReply::json(&tessera_api::types::PciDeviceInfo {
            id: info.id,
            bdf: info.bdf.to_string(),
        })
    }

    /// Answers a removal still waiting for the guest: the VM is stopping, so the guest
    /// will not eject; the device stays in the configuration.
    pub(super) fn abandon_removal(&mut self) {
        if let Some(p) = self.pending.take() {
            let _ = p.reply.send(Err(ApiError::new(
                409,
                format!(
                    "the VM stopped before the guest ejected `{}`; the device is still in its \
                     configuration",
                    p.id
                ),
                Some("id".into()),
            )));
        }
    }
}
