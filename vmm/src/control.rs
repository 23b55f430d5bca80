//! The VMM's control loop behind the HTTP API: the one VM state machine
//! (no VM → Created → Running ⇄ Paused → Shutdown), fed API actions over a channel while
//! it watches the running guest for power-off and reset.
//!
//! Configuration edits (NUMA nodes, Generic Initiator links) are only taken before boot:
//! Linux reads the SRAT once. Devices also come and go while the VM runs (`hotplug`: a
//! hot-add answers when the device is in; a removal asks the guest to eject and is
//! answered from the eject event, or the eject timeout, while the loop serves others).
//! Every edit is applied to a copy and checked whole before it replaces the
//! configuration, so a refused edit changes nothing. Devices configured without an id
//! get their generated one written back when they come in.
//!
//! After every change, and before answering the request that made it, the loop
//! publishes the answers to `vmm.ping`, `vm.info` and `vm.acpi` ([`Snapshot`]): the API
//! server gives those from the snapshot, without waiting for the loop, and still sees
//! every change that has been answered.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_api::config::{ConfigError, VmConfig};
use tessera_api::server::{
    ApiError, ApiReply, ApiRequest, Published, RemoveGenericInitiator, Snapshot, VmAction,
};
use tessera_api::types::{
    AcpiInfo, AcpiTable, DeviceInfo, DeviceNode, SlotInfo, VmInfo, VmState, VmmPingResponse,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::console::SerialSink;
use crate::device_manager::placement::name_devices;
use crate::guest_topology::{guest_topology, TopologyError};
use crate::host::mirror::{MirrorError, MirrorFault};
use crate::managed::{name_mdevs, Managed};
use crate::vm::{Vm, VmError, VmEvents};

mod hotplug;
mod topology_memo;
use hotplug::{check_new_device, removable, PendingRemoval, PAUSED_HOTPLUG};
use topology_memo::TopologyMemo;

/// Where the VM is in its life.
enum State {
    /// No configuration yet.
    Empty,
    /// Configured, not booted (or shut down: it can boot again).
    Created,
    /// Booted and running.
    Running(Vm),
    /// Booted, vCPUs parked.
    Paused(Vm),
}

/// How long `vm.remove-device` waits for the guest to eject, unless told otherwise.
pub const DEFAULT_EJECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the control loop returned.
#[derive(Debug, PartialEq, Eq)]
pub enum LoopExit {
    /// vmm.shutdown was called.
    VmmShutdown,
    /// SIGTERM or SIGINT.
    Signal,
    /// The API went away.
    ApiClosed,
    /// The guest powered off and the VMM was asked to end with it.
    GuestPoweredOff,
}

/// The VMM behind the API.
pub struct Control {
    kvm: kvm_ioctls::Kvm,
    config: Option<VmConfig>,
    state: State,
    /// Whether the VM has been shut down (CH reports "Shutdown" until it boots again).
    shut_down: bool,
    serial: Option<SerialSink>,
    /// The guest's power-off and reset events, the same for every boot.
    events: VmEvents,
    /// End the loop when the guest powers off (the command line without an API).
    exit_on_poweroff: bool,
    /// `vmm.ping`'s answer, which never changes.
    ping: Result<ApiReply, ApiError>,
    /// Where the read-only answers go for the API server.
    published: Arc<Published>,
    /// How long a removal waits for the guest's eject.
    eject_timeout: Duration,
    /// The one removal in flight, if any.
    pending: Option<PendingRemoval>,
    /// Where managed devices' host changes are made and recorded.
    managed: Managed,
    /// The guest topology and tables of the configuration, computed once per configuration.
    topology: TopologyMemo,
}

fn err(status: u16, error: impl Into<String>) -> ApiError {
    ApiError::new(status, error, None)
}

fn config_err(e: ConfigError) -> ApiError {
    ApiError::new(400, e.to_string(), Some(e.field))
}

fn topology_err(e: TopologyError) -> ApiError {
    ApiError::new(400, e.to_string(), Some(e.field()))
}

/// A well-formed mirror request about a device or node the host lacks is a 404, and
/// one the host has but cannot give a guest a 409: neither is a malformed request.
fn mirror_err(e: MirrorError) -> ApiError {
    let status = match e.fault {
        MirrorFault::Invalid => 400,
        MirrorFault::Missing => 404,
        MirrorFault::Unusable => 409,
    };
    ApiError::new(status, e.to_string(), Some(e.field))
}

fn vm_err(e: VmError) -> ApiError {
    let status = if e.field().is_some() { 400 } else { 500 };
    ApiError::new(status, e.to_string(), e.field())
}

/// The SRAT is read once by Linux, at boot.
const FIXED_AT_BOOT: &str = "the VM is booted: NUMA nodes and Generic Initiator links are \
fixed in the SRAT at boot (shut the VM down to change them)";

impl Control {
    /// A VMM with no VM, or with `config` created.
    pub fn new(kvm: kvm_ioctls::Kvm, mut config: Option<VmConfig>) -> Result<Self, VmError> {
        if let Some(c) = config.as_mut() {
            name_devices(c);
            name_mdevs(&mut c.devices);
        }
        let state = if config.is_some() {
            State::Created
        } else {
            State::Empty
        };
        let ping = ApiReply::json_text(&VmmPingResponse {
            build_version: env!("CARGO_PKG_VERSION").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: i64::from(std::process::id()),
            features: [
                "numa",
                "generic_initiators",
                "hmat",
                "device_memory",
                "acpi_tables",
            ]
            .map(String::from)
            .into(),
        });
        let control = Control {
            kvm,
            config,
            state,
            shut_down: false,
            serial: None,
            events: VmEvents::new()?,
            exit_on_poweroff: false,
            ping,
            published: Arc::new(Published::new()),
            eject_timeout: DEFAULT_EJECT_TIMEOUT,
            pending: None,
            managed: Managed::real(),
            topology: TopologyMemo::default(),
        };
        control.publish();
        Ok(control)
    }

    /// The read-only answers this VMM publishes, for [`tessera_api::server::serve`].
    pub fn published(&self) -> Arc<Published> {
        Arc::clone(&self.published)
    }

    /// Publishes the answers to `vmm.ping`, `vm.info` and `vm.acpi` as they are now.
    fn publish(&self) {
        self.published.publish(Snapshot {
            ping: Some(self.ping.clone()),
            info: Some(self.info()),
            acpi: Some(self.acpi()),
        });
    }

    /// Makes [`Control::run`] return when the guest powers off, as `tessera` without an
    /// API socket does, instead of keeping the VM's configuration for another boot.
    pub fn exit_on_poweroff(mut self) -> Self {
        self.exit_on_poweroff = true;
        self
    }

    /// Makes managed devices' host changes on `managed` (tests give a fake host and
    /// state directory); the default is the real host and `/run/tessera`.
    pub fn managed(mut self, managed: Managed) -> Self {
        self.managed = managed;
        self
    }

    /// How long `vm.remove-device` waits for the guest to eject before it answers 504.
    pub fn eject_timeout(mut self, timeout: Duration) -> Self {
        self.eject_timeout = timeout;
        self
    }

    /// Runs until vmm.shutdown, a signal on `stop`, or the API closing. Requests arrive
    /// on `requests`; `wake` is written whenever one was sent. However it returns, the
    /// published answers are 503 from then on: no VMM stands behind them.
    pub fn run(
        &mut self,
        requests: &Receiver<ApiRequest>,
        wake: &EventFd,
        stop: &impl AsRawFd,
    ) -> Result<LoopExit, VmError> {
        let exit = self.run_loop(requests, wake, stop);
        self.published.publish(Snapshot::closed());
        exit
    }

    fn run_loop(
        &mut self,
        requests: &Receiver<ApiRequest>,
        wake: &EventFd,
        stop: &impl AsRawFd,
    ) -> Result<LoopExit, VmError> {
        let epoll = Epoll::new().map_err(|source| VmError::Os {
            what: "epoll",
            source,
        })?;
        let add = |fd: RawFd, token: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(|source| VmError::Os {
                    what: "epoll_ctl",
                    source,
                })
        };
        add(wake.as_raw_fd(), 0)?;
        add(stop.as_raw_fd(), 1)?;
        add(self.events.exit_fd(), 2)?;
        add(self.events.reset_fd(), 3)?;
        add(self.events.eject_fd(), 4)?;
        let mut events = [EpollEvent::default(); 5];
        loop {
            let n = match epoll.wait(200, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(VmError::Os {
                        what: "epoll_wait",
                        source,
                    })
                }
            };
            let fired: Vec<u64> = events.iter().take(n).map(EpollEvent::data).collect();
            if fired.contains(&1) {
                self.stop_vm();
                return Ok(LoopExit::Signal);
            }
            // Whether the guest changed the VM's state on its own.
            let mut changed = false;
            if fired.contains(&2) {
                tracing::info!("guest powered off");
                self.stop_vm();
                self.shut_down = true;
                changed = true;
                if self.exit_on_poweroff {
                    return Ok(LoopExit::GuestPoweredOff);
                }
            } else if fired.contains(&3) {
                tracing::info!("guest rebooting");
                self.stop_vm();
                if let Err(e) = self.boot() {
                    tracing::error!("reboot failed: {}", e.error);
                }
                changed = true;
            }
            if fired.contains(&4) {
                self.ejected();
                changed = true;
            }
            if self
                .pending
                .as_ref()
                .is_some_and(|p| Instant::now() >= p.deadline)
            {
                if let Some(p) = self.pending.take() {
                    let secs = self.eject_timeout.as_secs_f64();
                    tracing::warn!("the guest did not eject `{}` within {secs} s", p.id);
                    let _ = p.reply.send(Err(ApiError::new(
                        504,
                        format!(
                            "the guest did not eject `{}` within {secs} s (does it run an ACPI \
                             PCI hotplug driver?); the device stays attached: send the request \
                             again",
                            p.id
                        ),
                        Some("id".into()),
                    )));
                }
            }
            if let State::Running(vm) | State::Paused(vm) = &mut self.state {
                if let Err(e) = vm.check_vcpus() {
                    tracing::error!("{e}");
                    self.stop_vm();
                    self.shut_down = true;
                    changed = true;
                    // A VMM that ends with its VM ends now, with the error: the VM can
                    // never power off, and nothing else would end the loop.
                    if self.exit_on_poweroff {
                        return Err(e);
                    }
                }
            }
            if changed {
                self.publish();
            }
            if fired.contains(&0) {
                let _ = wake.read();
            }
            loop {
                match requests.try_recv() {
                    Ok(request) => {
                        let request = match self.start_removal(request) {
                            Some(request) => request,
                            None => continue,
                        };
                        let shutdown = matches!(request.action, VmAction::VmmShutdown);
                        let reply = self.handle(request.action);
                        if shutdown {
                            // Before the answer: a client told the VMM is gone must not
                            // then be answered from its last snapshot.
                            self.published.publish(Snapshot::closed());
                        }
                        let _ = request.reply.send(reply);
                        if shutdown {
                            return Ok(LoopExit::VmmShutdown);
                        }
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        self.stop_vm();
                        return Ok(LoopExit::ApiClosed);
                    }
                }
            }
        }
    }

    /// Stops the VM, if one runs; the configuration stays.
    fn stop_vm(&mut self) {
        self.abandon_removal();
        if matches!(self.state, State::Running(_) | State::Paused(_)) {
            // Dropping the Vm stops and joins its vCPUs, then unmaps its memory.
            self.state = State::Created;
            // Nothing writes the events now. One the stopped boot fired and the loop has
            // not handled (a guest reset racing vm.shutdown) must not act on the next boot.
            self.events.clear();
        }
    }

    fn boot(&mut self) -> Result<ApiReply, ApiError> {
        let config = self
            .config
            .clone()
            .ok_or_else(|| err(404, "no VM has been created"))?;
        if self.serial.is_none() {
            let sink = SerialSink::open(&config).map_err(vm_err)?;
            if let Some(pty) = &sink.pty {
                eprintln!("tessera: serial port on {}", pty.display());
            }
            self.serial = Some(sink);
        }
        let serial = self
            .serial
            .as_ref()
            .ok_or_else(|| err(500, "no serial sink"))?;
        let vm =
            Vm::boot(&self.kvm, &config, serial, &self.events, &self.managed).map_err(vm_err)?;
        self.state = State::Running(vm);
        self.shut_down = false;
        Ok(ApiReply::NoContent)
    }

    /// Like [`Control::edit`] for an edit that appends one entry to the list at `list`
    /// (`devices`, `numa`, `generic_initiators`): errors about that entry name the field
    /// of the request body (`device`), not its place in the whole configuration.
    fn append(
        &mut self,
        list: &str,
        edit: impl FnOnce(&mut VmConfig) -> Result<usize, ApiError>,
    ) -> Result<(), ApiError> {
        let mut index = None;
        self.edit(|c| {
            index = Some(edit(c)?);
            Ok(())
        })
        .map_err(|mut e| {
            if let (Some(i), Some(field)) = (index, e.field.as_mut()) {
                let prefix = format!("{list}[{i}]");
                if let Some(rest) = field.strip_prefix(&prefix) {
                    *field = rest.trim_start_matches('.').to_string();
                    if field.is_empty() {
                        e.field = None;
                    }
                    e.error = e
                        .error
                        .replacen(&prefix, "", 1)
                        .trim_start_matches(['.', ':', ' '])
                        .to_string();
                }
            }
            e
        })
    }

    /// Applies `edit` to a copy of the configuration, before boot only, and keeps it if
    /// the whole configuration is still valid.
    fn edit(
        &mut self,
        edit: impl FnOnce(&mut VmConfig) -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        match self.state {
            State::Empty => return Err(err(404, "no VM has been created")),
            State::Running(_) | State::Paused(_) => return Err(err(409, FIXED_AT_BOOT)),
            State::Created => {}
        }
        let mut config = self
            .config
            .clone()
            .ok_or_else(|| err(404, "no VM has been created"))?;
        edit(&mut config)?;
        name_devices(&mut config);
        name_mdevs(&mut config.devices);
        self.topology.topology(&config)?;
        self.config = Some(config);
        Ok(())
    }

    /// Handles one API action; the published answers reflect it when this returns.
    pub fn handle(&mut self, action: VmAction) -> Result<ApiReply, ApiError> {
        let read_only = matches!(
            action,
            VmAction::Ping
                | VmAction::Info
                | VmAction::Counters
                | VmAction::Acpi
                | VmAction::HostDevices
                | VmAction::TopologyMirror(_)
        );
        let reply = self.apply(action);
        if !read_only {
            // Even a refused request may have changed the state (a failed reboot leaves
            // the VM stopped). Publishing costs one vm.info and one vm.acpi, a fraction
            // of a millisecond, and requests that change things are rare.
            self.publish();
        }
        reply
    }

    fn apply(&mut self, action: VmAction) -> Result<ApiReply, ApiError> {
        // One hotplug at a time, and a guest that must eject is not paused under it.
        if let Some(p) = &self.pending {
            if matches!(
                action,
                VmAction::AddDevice(_) | VmAction::RemoveDevice { .. } | VmAction::Pause
            ) {
                return Err(err(
                    409,
                    format!(
                        "the removal of `{}` is waiting for the guest's eject; try again once \
                         it is answered",
                        p.id
                    ),
                ));
            }
        }
        match action {
            VmAction::Ping => self.ping.clone(),
            // Read now, not published: devices are bound, mdevs created and removed on
            // the host without the VMM knowing. A few hundred small reads of sysfs, a
            // few milliseconds, in whatever state the VM is.
            VmAction::HostDevices => {
                let sysfs = self.managed.host().path(crate::host::SYSFS_ROOT);
                ApiReply::json(&crate::host::discover(&sysfs))
            }
            // As host-devices: the host now, whatever the VM's state; only an answer.
            VmAction::TopologyMirror(request) => {
                let sysfs = self.managed.host().path(crate::host::SYSFS_ROOT);
                let host = crate::host::discover(&sysfs);
                let config = crate::host::mirror::mirror(&host, &request).map_err(mirror_err)?;
                ApiReply::json(&config)
            }
            VmAction::VmmShutdown => {
                // Stopped before the answer, so that vmm.shutdown's answer means it.
                self.stop_vm();
                Ok(ApiReply::NoContent)
            }
            VmAction::Create(config) => {
                if !matches!(self.state, State::Empty) {
                    return Err(err(
                        409,
                        "a VM has already been created (vm.delete it first)",
                    ));
                }
                guest_topology(&config, tessera_arch::vcpu::host_phys_bits())
                    .map_err(topology_err)?;
                let mut config = *config;
                // Generated ids (and mdev UUIDs) become the devices' own, so vm.info
                // shows them and they survive other devices' removal and reboots.
                name_devices(&mut config);
                name_mdevs(&mut config.devices);
                self.config = Some(config);
                self.state = State::Created;
                Ok(ApiReply::NoContent)
            }
            VmAction::Boot => match self.state {
                State::Empty => Err(err(404, "no VM has been created")),
                State::Running(_) | State::Paused(_) => Err(err(409, "the VM is already booted")),
                State::Created => self.boot(),
            },
            VmAction::Info => self.info(),
            // A request the VM's state does not allow is a 409, a conflict with that state;
            // 405 is the router's, for a method the path does not take (with `Allow`).
            VmAction::Counters => match &self.state {
                State::Running(vm) | State::Paused(vm) => Ok(ApiReply::Json(json!(vm.counters()))),
                State::Empty => Err(err(404, "no VM has been created")),
                State::Created => Err(err(409, "the VM is not booted")),
            },
            VmAction::Shutdown => match self.state {
                State::Empty => Err(err(404, "no VM has been created")),
                State::Created => Err(err(409, "the VM is not booted")),
                _ => {
                    self.stop_vm();
                    self.shut_down = true;
                    Ok(ApiReply::NoContent)
                }
            },
            VmAction::Reboot => match self.state {
                State::Empty => Err(err(404, "no VM has been created")),
                State::Created | State::Paused(_) => Err(err(409, "the VM is not running")),
                State::Running(_) => {
                    self.stop_vm();
                    self.boot()
                }
            },
            VmAction::Pause => match std::mem::replace(&mut self.state, State::Empty) {
                State::Running(vm) => match vm.pause() {
                    Ok(()) => {
                        self.state = State::Paused(vm);
                        Ok(ApiReply::NoContent)
                    }
                    Err(e) => {
                        self.state = State::Running(vm);
                        Err(vm_err(e))
                    }
                },
                other => {
                    let reply = match other {
                        State::Empty => err(404, "no VM has been created"),
                        _ => err(409, "the VM is not running"),
                    };
                    self.state = other;
                    Err(reply)
                }
            },
            VmAction::Resume => match std::mem::replace(&mut self.state, State::Empty) {
                State::Paused(vm) => {
                    vm.resume();
                    self.state = State::Running(vm);
                    Ok(ApiReply::NoContent)
                }
                other => {
                    let reply = match other {
                        State::Empty => err(404, "no VM has been created"),
                        _ => err(409, "the VM is not paused"),
                    };
                    self.state = other;
                    Err(reply)
                }
            },
            VmAction::Delete => {
                self.stop_vm();
                // The next VM may send its serial port elsewhere. A pty's input thread
                // ends with its sink; stdin's one reader stays, for the next Tty sink.
                self.serial = None;
                self.config = None;
                self.state = State::Empty;
                self.shut_down = false;
                Ok(ApiReply::NoContent)
            }
            VmAction::PowerButton => match &self.state {
                State::Running(vm) => vm
                    .power_button()
                    .map(|()| ApiReply::NoContent)
                    .map_err(vm_err),
                State::Empty => Err(err(404, "no VM has been created")),
                _ => Err(err(409, "the VM is not running")),
            },
            VmAction::AddDevice(_) | VmAction::RemoveDevice { .. }
                if matches!(self.state, State::Paused(_)) =>
            {
                Err(err(409, PAUSED_HOTPLUG))
            }
            VmAction::AddDevice(device) if matches!(self.state, State::Running(_)) => {
                self.hot_add(device)
            }
            VmAction::AddDevice(device) => {
                self.append("devices", |c| {
                    check_new_device(c, &device)?;
                    c.devices.push(device);
                    Ok(c.devices.len() - 1)
                })?;
                // A cold add, as Cloud Hypervisor answers it: 204, no PciDeviceInfo (CH
                // gives that, with 200, only for a hot-plug). vm.info tells where the
                // device landed.
                Ok(ApiReply::NoContent)
            }
            VmAction::RemoveDevice { id } => {
                self.edit(|c| {
                    let index = removable(c, &id)?;
                    c.devices.remove(index);
                    Ok(())
                })?;
                Ok(ApiReply::NoContent)
            }
            VmAction::AddNumaNode(node) => {
                self.append("numa", |c| {
                    if c.numa.iter().any(|n| n.guest_numa_id == node.guest_numa_id) {
                        return Err(ApiError::new(
                            409,
                            format!("node {} already exists", node.guest_numa_id),
                            Some("guest_numa_id".into()),
                        ));
                    }
                    c.numa.push(node);
                    Ok(c.numa.len() - 1)
                })?;
                Ok(ApiReply::NoContent)
            }
            VmAction::RemoveNumaNode { guest_numa_id } => {
                self.edit(|c| {
                    let index = c
                        .numa
                        .iter()
                        .position(|n| n.guest_numa_id == guest_numa_id)
                        .ok_or_else(|| {
                            ApiError::new(
                                404,
                                format!("no node {guest_numa_id}"),
                                Some("guest_numa_id".into()),
                            )
                        })?;
                    c.numa.remove(index);
                    Ok(())
                })?;
                Ok(ApiReply::NoContent)
            }
            VmAction::AddGenericInitiator(gi) => {
                self.append("generic_initiators", |c| {
                    c.generic_initiators.push(gi);
                    Ok(c.generic_initiators.len() - 1)
                })?;
                Ok(ApiReply::NoContent)
            }
            VmAction::RemoveGenericInitiator(which) => {
                self.edit(|c| remove_generic_initiator(c, &which))?;
                Ok(ApiReply::NoContent)
            }
            VmAction::Acpi => self.acpi(),
        }
    }

    fn info(&self) -> Result<ApiReply, ApiError> {
        let config = self
            .config
            .as_ref()
            .ok_or_else(|| err(404, "no VM has been created"))?;
        let topology = self.topology.topology(config)?;
        let gi_nodes = |id: &str| -> Vec<u32> {
            topology
                .acpi
                .generic_initiators
                .iter()
                .filter(|l| l.device == id)
                .map(|l| l.node)
                .collect()
        };
        let devices: Vec<DeviceInfo> = std::iter::once((
            tessera_api::config::HOST_BRIDGE_ID.to_string(),
            "0000:00:00.0".to_string(),
        ))
        .chain(
            topology
                .devices
                .iter()
                .map(|d| (d.id.clone(), d.bdf.to_string())),
        )
        .map(|(id, bdf)| DeviceInfo {
            generic_initiator_nodes: gi_nodes(&id),
            id,
            bdf,
        })
        .collect();
        let slots = topology
            .pci_slots
            .iter()
            .map(|s| SlotInfo {
                id: s.id.clone(),
                bdf: s.bdf.to_string(),
                generic_initiator_nodes: gi_nodes(&s.id),
                device: config
                    .devices
                    .iter()
                    .any(|d| d.id.as_ref() == Some(&s.id))
                    .then(|| s.id.clone()),
            })
            .collect();
        let state = match &self.state {
            State::Created if self.shut_down => VmState::Shutdown,
            State::Running(_) => VmState::Running,
            State::Paused(_) => VmState::Paused,
            _ => VmState::Created,
        };
        let device_tree = devices
            .iter()
            .map(|d| {
                let node = DeviceNode {
                    id: d.id.clone(),
                    resources: Vec::new(),
                    children: Vec::new(),
                    pci_bdf: Some(d.bdf.clone()),
                };
                (d.id.clone(), node)
            })
            .collect();
        // Serialized here, once per change, rather than once per request.
        ApiReply::json_text(&VmInfo {
            config: config.clone(),
            state,
            // Guest RAM the VMM allocates; device memory is the device's, listed apart.
            memory_actual_size: Some(
                topology
                    .layout
                    .zones
                    .iter()
                    .flatten()
                    .map(|r| r.len())
                    .sum(),
            ),
            device_tree: Some(device_tree),
            devices,
            slots,
            device_memory: topology
                .device_memory
                .iter()
                .map(|m| tessera_api::types::DeviceMemoryInfo {
                    device: m.device.clone(),
                    bar: m.bar as u8,
                    node: m.node,
                    guest_address: m.range.start,
                    size: m.range.len(),
                })
                .collect(),
        })
    }

    fn acpi(&self) -> Result<ApiReply, ApiError> {
        use base64::Engine as _;
        let config = self
            .config
            .as_ref()
            .ok_or_else(|| err(404, "no VM has been created"))?;
        let tables = self.topology.tables(config)?;
        let list: Vec<AcpiTable> = tables
            .iter()
            .map(|t| AcpiTable {
                signature: t.signature.clone(),
                address: t.address,
                length: t.bytes.len() as u32,
                // The RSDP keeps its (first) checksum at byte 8, tables at byte 9.
                checksum: t
                    .bytes
                    .get(if t.signature == "RSDP" { 8 } else { 9 })
                    .copied()
                    .unwrap_or(0),
                base64: base64::engine::general_purpose::STANDARD.encode(&t.bytes),
            })
            .collect();
        let decoded = |sig: &str| tables.get(sig).map(|t| t.bytes.clone());
        let decode_err = |e: tessera_acpi::decode::DecodeError| err(500, e.to_string());
        let srat = decoded("SRAT")
            .map(|b| tessera_acpi::decode::decode_srat(&b))
            .transpose()
            .map_err(decode_err)?;
        let slit = decoded("SLIT")
            .map(|b| tessera_acpi::decode::decode_slit(&b))
            .transpose()
            .map_err(decode_err)?;
        let hmat = decoded("HMAT")
            .map(|b| tessera_acpi::decode::decode_hmat(&b))
            .transpose()
            .map_err(decode_err)?;
        // Serialized here, once per change, rather than once per request.
        ApiReply::json_text(&AcpiInfo {
            tables: list,
            srat: json!(srat),
            slit: json!(slit),
            hmat: json!(hmat),
        })
    }
}

fn remove_generic_initiator(
    c: &mut VmConfig,
    which: &RemoveGenericInitiator,
) -> Result<(), ApiError> {
    let mut matched = false;
    match (&which.id, &which.device) {
        (Some(id), _) => c.generic_initiators.retain(|g| {
            let hit = g.id.as_ref() == Some(id);
            matched |= hit;
            !hit
        }),
        (None, Some(device)) => {
            let remove: Vec<u32> = match (which.node, &which.nodes) {
                (Some(n), None) => vec![n],
                (None, Some(set)) => set.iter().collect(),
                _ => return Err(ApiError::new(400, "give `node` or `nodes`", None)),
            };
            let mut kept = Vec::new();
            for g in c.generic_initiators.drain(..) {
                let own = g.node_list("generic_initiators").map_err(config_err)?;
                if &g.device != device || !own.iter().any(|n| remove.contains(n)) {
                    // Untouched: kept as it was, id included.
                    kept.push(g);
                    continue;
                }
                matched = true;
                // Split a multi-node entry, keeping the nodes not being removed.
                kept.extend(own.into_iter().filter(|n| !remove.contains(n)).map(|n| {
                    tessera_api::config::GenericInitiatorConfig {
                        id: None,
                        device: g.device.clone(),
                        node: Some(n),
                        nodes: None,
                    }
                }));
            }
            c.generic_initiators = kept;
        }
        (None, None) => {
            return Err(ApiError::new(
                400,
                "give the link's `id`, or its `device`",
                None,
            ))
        }
    }
    if !matched {
        let field = match (&which.id, which.node) {
            (Some(_), _) => "id",
            (None, Some(_)) => "node",
            (None, None) => "nodes",
        };
        return Err(ApiError::new(
            404,
            "no Generic Initiator link matches",
            Some(field.into()),
        ));
    }
    Ok(())
}
