//! One boot of a VM: the boot sequence (KVM VM and irqchip, guest RAM, kernel and
//! initramfs, ACPI tables, devices on the buses, vCPU threads, in that order) and what
//! the control loop may do with the running VM (pause, resume, power button, counters).
//! Also the errors of a boot and the guest's power-off and reset events.
//!
//! Owns the `Vm` and the order of its parts; the steps themselves live with their job:
//! the `device_manager` brings devices in (and, later, out), `vcpu` runs the vCPU
//! threads, `console` is the serial port's host side, `memory` maps RAM.
//!
//! Everything that can be checked is checked before the first vCPU runs. On every way
//! out, vCPU threads are stopped and joined before guest memory is unmapped.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc};

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use tessera_api::config::VmConfig;
use tessera_arch::boot::{configure_boot, load_initramfs, load_kernel};
use tessera_arch::vcpu::{configure_vcpu, GuestCpus};
use tessera_devices::pci_hotplug::PciSlot;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::console::SerialSink;
use crate::device_manager::memory_slots::MemorySlots;
use crate::device_manager::placement::name_devices;
use crate::device_manager::DeviceManager;
use crate::guest_topology::{guest_topology, GuestTopology};
use crate::managed::{name_mdevs, DeviceChanges, Managed};
use crate::memory;
use crate::vcpu::Vcpus;

/// KVM's TSS and identity-map pages, in the 32-bit gap above everything we place there.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Why a boot failed. `field()` names the configuration entry when one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration describes no valid guest.
    #[error(transparent)]
    Topology(#[from] crate::guest_topology::TopologyError),
    /// Guest RAM could not be set up.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// A payload file is missing or unusable.
    #[error("{field}: {message}")]
    Payload {
        /// `payload.kernel` or `payload.initramfs`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The serial port's output could not be opened.
    #[error("serial: {0}")]
    Serial(String),
    /// A KVM call failed.
    #[error("KVM: {what}: {source}")]
    Kvm {
        /// The call.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Setting up an event or signal failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being set up.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Wiring devices failed.
    #[error("devices: {0}")]
    Devices(String),
    /// Setting up the boot CPU state failed.
    #[error("vCPU setup: {0}")]
    Vcpu(String),
    /// A device cannot be passed through.
    #[error(transparent)]
    Vfio(#[from] crate::vfio::VfioHostError),
    /// A managed device could not be prepared (an mdev created, a driver bound).
    #[error(transparent)]
    Managed(#[from] crate::managed::ManagedError),
    /// A vCPU cannot run where `cpus.affinity` pins it.
    #[error(transparent)]
    Affinity(#[from] crate::affinity::AffinityError),
    /// A vCPU stopped with an error.
    #[error("vCPU {index}: {message}")]
    VcpuRun {
        /// The vCPU.
        index: u32,
        /// What happened.
        message: String,
    },
}

impl VmError {
    /// The configuration field at fault, if the error is about one.
    pub fn field(&self) -> Option<String> {
        match self {
            VmError::Topology(e) => Some(e.field()),
            VmError::Memory(e) => Some(e.field()),
            VmError::Payload { field, .. } => Some((*field).to_string()),
            VmError::Serial(_) => Some("serial".into()),
            VmError::Vfio(e) => Some(e.field.clone()),
            VmError::Managed(e) => e.field().map(String::from),
            VmError::Affinity(e) => Some(e.field.clone()),
            _ => None,
        }
    }
}

/// The events a guest raises to power off and to reset, owned by the VMM for its whole
/// life: each boot's power device and vCPUs write clones, and the control loop registers
/// them with its epoll once. (Events made per boot fell out of the epoll set when a
/// reboot closed them, while the next boot's, given the same descriptor numbers, looked
/// registered already: issue 10.)
pub struct VmEvents {
    pub(crate) exit: EventFd,
    pub(crate) reset: EventFd,
    /// Fires when the guest ejects a hotplug slot; the slots are on `ejected`.
    pub(crate) eject: EventFd,
    pub(crate) eject_tx: mpsc::Sender<PciSlot>,
    ejected: mpsc::Receiver<PciSlot>,
}

impl VmEvents {
    /// Two fresh, unfired events.
    pub fn new() -> Result<Self, VmError> {
        let (eject_tx, ejected) = mpsc::channel();
        Ok(VmEvents {
            exit: event_fd()?,
            reset: event_fd()?,
            eject: event_fd()?,
            eject_tx,
            ejected,
        })
    }

    /// The event that fires when the guest ejects a hotplug slot ([`VmEvents::ejected`]).
    pub fn eject_fd(&self) -> std::os::fd::RawFd {
        self.eject.as_raw_fd()
    }

    /// The slots the guest has ejected since the last call; consumes the event.
    pub fn ejected(&self) -> Vec<PciSlot> {
        let _ = self.eject.read();
        self.ejected.try_iter().collect()
    }

    /// The event that fires when the guest powers off.
    pub fn exit_fd(&self) -> std::os::fd::RawFd {
        self.exit.as_raw_fd()
    }

    /// The event that fires when the guest resets.
    pub fn reset_fd(&self) -> std::os::fd::RawFd {
        self.reset.as_raw_fd()
    }

    /// Consumes fired events, so a level-triggered wait does not see them again. Called
    /// once a boot is stopped, so that its last events do not act on the next boot.
    pub fn clear(&self) {
        let _ = self.exit.read();
        let _ = self.reset.read();
        let _ = self.ejected();
    }
}

/// A booted VM whose vCPUs are running.
pub struct Vm {
    // Fields drop in this order, which matters: the vCPU threads are stopped and joined
    // first; then the devices go (reset and unmapped, the UART detached from typed input);
    // the VM fd goes before the memory its slots point at.
    vcpus: Vcpus,
    devices: DeviceManager,
    /// The host changes made for managed devices, by device id: undone (dropped) after
    /// the devices are closed, since an open mdev or vfio-pci device cannot be removed
    /// or unbound.
    host_changes: Vec<(String, DeviceChanges)>,
    _vm_fd: Arc<VmFd>,
    _memory: memory::GuestRam,
    /// The guest's topology (BDFs, nodes), for reporting.
    pub topology: GuestTopology,
}

impl Vm {
    /// Builds and starts the VM, whose guest fires `events` to power off or reset. Fails
    /// without leaving anything running or mapped.
    /// Managed devices are prepared on `managed`'s host (all of them before any is
    /// opened) and given back when the VM goes, or when the boot fails.
    pub fn boot(
        kvm: &Kvm,
        config: &VmConfig,
        serial: &SerialSink,
        events: &VmEvents,
        managed: &Managed,
    ) -> Result<Vm, VmError> {
        let topology = guest_topology(config, tessera_arch::vcpu::host_phys_bits())?;
        check_payload(config)?;
        // The ids placement reserved the slots under (control has written them back, but
        // a configuration may come without them).
        let mut named = config.clone();
        name_devices(&mut named);
        name_mdevs(&mut named.devices);
        // Every device, before anything is opened or changed: errors name the first at
        // fault.
        let plans = managed.plan_all(&named.devices)?;
        check_vgpu_uuid(config)?;
        crate::vfio::check_host(config)?;
        memory::check_host(config, &topology.layout)?;
        crate::affinity::check_host(config)?;

        let kvm_err = |what| move |source| VmError::Kvm { what, source };
        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_err("create_vm"))?);
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("set_tss_address"))?;
        vm_fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("set_identity_map_address"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("create_irq_chip"))?;
        vm_fd
            .create_pit2(kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            })
            .map_err(kvm_err("create_pit2"))?;

        let guest_memory = memory::allocate(config, &topology.layout)?;
        memory::register(&vm_fd, &guest_memory)?;
        let memory_slots = MemorySlots::new(
            guest_memory.num_regions() as u32,
            u32::try_from(kvm.get_nr_memslots()).unwrap_or(u32::MAX),
        );
        // Every mdev is created (every binding made) before any device is opened. If
        // the boot fails from here on, `prepared` is dropped after `devices` (declared
        // after it), so the devices are closed before their host changes are undone.
        let prepared = managed.apply_all(&named.devices, plans)?;
        let mut devices = DeviceManager::new(
            &vm_fd,
            &guest_memory,
            &topology.layout,
            topology.slots.clone(),
            memory_slots,
            topology.device_memory.clone(),
            serial,
            events,
        )?;
        for (index, p) in prepared.iter().enumerate() {
            devices
                .add_device(&p.device)
                .map_err(|e| e.at_boot(index))?;
        }

        let kernel_path = config.payload.kernel.clone().unwrap_or_default();
        let kernel =
            load_kernel(&guest_memory, &topology.layout.e820, &kernel_path).map_err(|e| {
                VmError::Payload {
                    field: "payload.kernel",
                    message: e.to_string(),
                }
            })?;
        let initramfs = match &config.payload.initramfs {
            Some(p) => Some(
                load_initramfs(&guest_memory, &topology.layout.e820, p, &kernel).map_err(|e| {
                    VmError::Payload {
                        field: "payload.initramfs",
                        message: e.to_string(),
                    }
                })?,
            ),
            None => None,
        };
        write_acpi_tables(&guest_memory, &topology)?;
        tessera_arch::firmware::write_reset_vector(
            &guest_memory,
            tessera_devices::power::ACPI_POWER_PORT,
            tessera_devices::power::RESET_VALUE,
        )
        .map_err(|e| VmError::Devices(e.to_string()))?;
        let cmdline = config.payload.cmdline.clone().unwrap_or_default();
        let entry = configure_boot(
            &guest_memory,
            &kernel,
            &cmdline,
            initramfs,
            &topology.layout.e820,
        )
        .map_err(|e| VmError::Payload {
            field: "payload.cmdline",
            message: e.to_string(),
        })?;

        let cpu_count = config.cpus.boot_vcpus;
        let guest_cpus = GuestCpus {
            count: cpu_count,
            phys_bits: topology.phys_bits,
            nested: config.cpus.nested,
        };
        let mut vcpu_fds = Vec::with_capacity(cpu_count as usize);
        for index in 0..cpu_count {
            let vcpu = vm_fd
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("create_vcpu"))?;
            let boot = (index == 0).then_some(&entry);
            configure_vcpu(kvm, &vcpu, &guest_memory, index, index, guest_cpus, boot)
                .map_err(|e| VmError::Vcpu(e.to_string()))?;
            vcpu_fds.push(vcpu);
        }

        let vcpus = Vcpus::start(
            vcpu_fds,
            &crate::affinity::pins(config),
            devices.pio(),
            devices.mmio(),
            events,
        )?;
        let host_changes = prepared
            .into_iter()
            .filter(|p| !p.changes.is_empty())
            .map(|p| (p.device.id.clone().unwrap_or_default(), p.changes))
            .collect();
        Ok(Vm {
            vcpus,
            devices,
            host_changes,
            _vm_fd: vm_fd,
            _memory: guest_memory,
            topology,
        })
    }

    /// Stops every vCPU at the next exit and waits until all are parked.
    pub fn pause(&self) -> Result<(), VmError> {
        self.vcpus.pause()
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        self.vcpus.resume();
    }

    /// Presses the ACPI power button (a GED event the guest's ACPI handles).
    pub fn power_button(&self) -> Result<(), VmError> {
        self.devices
            .ged()
            .lock()
            .map_err(|_| VmError::Devices("the GED is poisoned".into()))?
            .notify(tessera_devices::GED_EVENT_POWER_BUTTON)
            .map_err(|source| VmError::Os {
                what: "raising the GED interrupt",
                source,
            })
    }

    /// Exits taken per vCPU: `{"vcpu0": {"io_exits": N, "mmio_exits": N, "other_exits": N}}`.
    pub fn counters(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.vcpus.counters()
    }

    /// The device manager, for hotplug.
    pub fn devices(&mut self) -> &mut DeviceManager {
        &mut self.devices
    }

    /// Keeps the host changes made for device `id` (hot-added) until it goes.
    pub fn keep_host_changes(&mut self, id: &str, changes: DeviceChanges) {
        if !changes.is_empty() {
            self.host_changes.push((id.to_string(), changes));
        }
    }

    /// Undoes the host changes made for device `id`, once the device manager has let it
    /// go (a hot-remove): its mdev removed, its driver given back.
    pub fn release_host_changes(&mut self, id: &str) {
        if let Some(i) = self.host_changes.iter().position(|(d, _)| d == id) {
            let (_, changes) = self.host_changes.remove(i);
            changes.undo();
        }
    }

    /// Reports a vCPU thread that has stopped on its own (an error), stopping the rest.
    pub fn check_vcpus(&mut self) -> Result<(), VmError> {
        self.vcpus.check()
    }
}

/// A non-blocking eventfd, for the guest's events and device interrupts.
/// NVIDIA's vGPU manager fails a vGPU whose VMM gives it no VM UUID: it reads `-uuid UUID`
/// from the VMM's command line, as QEMU takes it. Without `platform.uuid` the boot is
/// refused before any change; without `-uuid` on this process's command line, a warning.
fn check_vgpu_uuid(config: &VmConfig) -> Result<(), VmError> {
    if !config.devices.iter().any(|d| d.vgpu_type.is_some()) {
        return Ok(());
    }
    let Some(uuid) = &config.platform.system_uuid else {
        return Err(crate::managed::ManagedError::Device {
            field: "platform.uuid".into(),
            message: "an NVIDIA vGPU (vgpu_type) needs the VM's UUID: give tessera \
                      -uuid UUID (or platform.uuid)"
                .into(),
        }
        .into());
    };
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let given = args
        .windows(2)
        .any(|w| matches!(w, [flag, value] if *flag == b"-uuid" && value.eq_ignore_ascii_case(uuid.as_bytes())));
    if !given {
        tracing::warn!(
            "NVIDIA's vGPU manager reads the VM's UUID from the VMM's command line: start \
             tessera with -uuid {uuid}"
        );
    }
    Ok(())
}

pub(crate) fn event_fd() -> Result<EventFd, VmError> {
    EventFd::new(EFD_NONBLOCK).map_err(|source| VmError::Os {
        what: "eventfd",
        source,
    })
}

/// The kernel and initramfs must be readable files; whether the kernel really is a
/// kernel is found when it is loaded, before any vCPU exists.
fn check_payload(config: &VmConfig) -> Result<(), VmError> {
    let files = [
        ("payload.kernel", config.payload.kernel.as_ref()),
        ("payload.initramfs", config.payload.initramfs.as_ref()),
    ];
    for (field, path) in files {
        if let Some(path) = path {
            if let Err(e) = std::fs::File::open(path) {
                return Err(VmError::Payload {
                    field,
                    message: format!("cannot open {}: {e}", path.display()),
                });
            }
        }
    }
    Ok(())
}

fn write_acpi_tables(memory: &GuestMemoryMmap, topology: &GuestTopology) -> Result<(), VmError> {
    let tables = topology
        .acpi_tables()
        .map_err(crate::guest_topology::TopologyError::from)?;
    for t in tables.iter() {
        memory
            .write_slice(&t.bytes, GuestAddress(t.address))
            .map_err(|e| {
                VmError::Devices(format!("writing {} to guest memory: {e}", t.signature))
            })?;
    }
    Ok(())
}
