//! One boot of a VM: KVM VM and irqchip, guest RAM, kernel and initramfs, ACPI tables,
//! devices on the PIO and MMIO buses, and a thread per vCPU; then waiting until the guest
//! powers off, asks to reboot, or the VMM is told to stop.
//!
//! Everything that can be checked is checked before the first vCPU runs. On every way
//! out, vCPU threads are stopped and joined before guest memory is unmapped.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use tessera_acpi::{build as build_acpi, Placement};
use tessera_api::config::{ConsoleMode, VmConfig};
use tessera_arch::boot::{configure_boot, load_initramfs, load_kernel};
use tessera_arch::layout::{GuestLayout, GED_START, HIGH_RAM_START, RSDP_START};
use tessera_arch::vcpu::{configure_vcpu, GuestCpus};
use tessera_devices::bus::{Bus, BusDevice};
use tessera_devices::ged::GedDevice;
use tessera_devices::pci::{PciConfigIo, PciConfigMmio, PciHostBridge, PciSegment};
use tessera_devices::power::AcpiPowerDevice;
use tessera_devices::serial::SerialDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::guest_topology::{guest_topology, GuestTopology, GED_GSI, SERIAL_GSI};
use crate::irq_routing::KvmInterruptRouter;
use crate::memory;
use crate::vfio::Passthrough;

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
    /// The ACPI tables do not fit where the guest looks for them.
    #[error("the ACPI tables end at {end:#x}, past the BIOS area that ends at {limit:#x}")]
    AcpiTooLarge {
        /// Where the last table ends.
        end: u64,
        /// 1 MiB.
        limit: u64,
    },
    /// A device cannot be passed through.
    #[error(transparent)]
    Vfio(#[from] crate::vfio::VfioHostError),
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
            _ => None,
        }
    }
}

/// Where the serial port's bytes go, opened once per VMM so a reboot keeps writing to
/// the same place.
pub struct SerialSink {
    out: Option<Arc<Mutex<Box<dyn Write + Send>>>>,
    /// The UART of the boot in progress, which input is typed into.
    current: Arc<Mutex<Option<Arc<Mutex<SerialDevice>>>>>,
    /// The pseudo-terminal created for `Pty` mode, reported to the user.
    pub pty: Option<PathBuf>,
}

/// Forwards bytes from `input` (the VMM's stdin, or the pty) into the current boot's
/// UART for as long as the VMM runs, holding back what the 64-byte FIFO cannot take yet.
fn forward_input(
    mut input: impl std::io::Read + Send + 'static,
    current: Arc<Mutex<Option<Arc<Mutex<SerialDevice>>>>>,
) {
    let spawned = std::thread::Builder::new()
        .name("serial-input".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // A pty master reads EAGAIN until someone attaches, then EIO when
                    // they leave; wait and try again.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EIO)) => {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("serial input stopped: {e}");
                        return;
                    }
                };
                let mut pending = buf.get(..n).unwrap_or_default();
                while !pending.is_empty() {
                    let device = current.lock().ok().and_then(|c| c.clone());
                    let queued = match device {
                        Some(d) => d
                            .lock()
                            .map_or(0, |mut d| d.enqueue_input(pending).unwrap_or(0)),
                        None => 0,
                    };
                    pending = pending.get(queued..).unwrap_or_default();
                    if !pending.is_empty() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no serial input: {e}");
    }
}

impl SerialSink {
    /// Opens what the configuration's serial mode asks for.
    pub fn open(config: &VmConfig) -> Result<Self, VmError> {
        let s = &config.serial;
        let out: Option<Box<dyn Write + Send>> = match s.mode {
            ConsoleMode::Off => None,
            ConsoleMode::Null => Some(Box::new(std::io::sink())),
            ConsoleMode::Tty => {
                let current = Arc::new(Mutex::new(None));
                forward_input(std::io::stdin(), current.clone());
                return Ok(SerialSink {
                    out: Some(Arc::new(Mutex::new(Box::new(std::io::stdout())))),
                    current,
                    pty: None,
                });
            }
            ConsoleMode::File => {
                let path = s.file.clone().unwrap_or_default();
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| VmError::Serial(format!("cannot open {}: {e}", path.display())))?;
                Some(Box::new(f))
            }
            ConsoleMode::Pty => {
                let (master, path) = crate::pty::open()
                    .map_err(|e| VmError::Serial(format!("cannot create a pty: {e}")))?;
                let reader = master
                    .try_clone()
                    .map_err(|e| VmError::Serial(format!("cannot clone the pty: {e}")))?;
                let current = Arc::new(Mutex::new(None));
                forward_input(reader, current.clone());
                return Ok(SerialSink {
                    out: Some(Arc::new(Mutex::new(Box::new(master)))),
                    current,
                    pty: Some(path),
                });
            }
            ConsoleMode::Socket => {
                return Err(VmError::Serial(
                    "Socket mode is not supported yet; use tty, pty, file or null".into(),
                ))
            }
        };
        Ok(SerialSink {
            out: out.map(|o| Arc::new(Mutex::new(o))),
            current: Arc::new(Mutex::new(None)),
            pty: None,
        })
    }
}

/// A writer that forwards to the shared sink, so each boot's serial device can own one.
struct SharedWriter(Arc<Mutex<Box<dyn Write + Send>>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut w) => w.write(buf),
            Err(_) => Err(std::io::Error::other("serial sink poisoned")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.lock() {
            Ok(mut w) => w.flush(),
            Err(_) => Err(std::io::Error::other("serial sink poisoned")),
        }
    }
}

/// A booted VM whose vCPUs are running.
pub struct Vm {
    // Drop order matters: threads are stopped in `shutdown`; the VM fd goes before the
    // memory its slots point at.
    vcpus: Vec<JoinHandle<Result<(), String>>>,
    control: Arc<VcpuControl>,
    exit_evt: EventFd,
    reset_evt: EventFd,
    ged: Arc<Mutex<GedDevice>>,
    /// Passed-through devices: reset and unmapped before the VM fd and memory go.
    _passthrough: Option<Passthrough>,
    _router: Arc<KvmInterruptRouter>,
    _vm_fd: Arc<VmFd>,
    _memory: memory::GuestRam,
    /// The guest's topology (BDFs, nodes), for reporting.
    pub topology: GuestTopology,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal used to kick vCPU threads out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// What the VM shares with its vCPU threads: stop and pause requests, and counters.
struct VcpuControl {
    stop: AtomicBool,
    paused: Mutex<bool>,
    resumed: Condvar,
    /// vCPU threads currently parked by a pause.
    parked: AtomicUsize,
    counters: Vec<VcpuCounters>,
}

/// Exits one vCPU has taken, by kind.
#[derive(Default)]
struct VcpuCounters {
    io: AtomicU64,
    mmio: AtomicU64,
    other: AtomicU64,
}

impl VcpuControl {
    fn new(vcpus: usize) -> Self {
        VcpuControl {
            stop: AtomicBool::new(false),
            paused: Mutex::new(false),
            resumed: Condvar::new(),
            parked: AtomicUsize::new(0),
            counters: (0..vcpus).map(|_| VcpuCounters::default()).collect(),
        }
    }

    /// Parks the calling vCPU thread while a pause is requested.
    fn park_if_paused(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if !*paused {
            return;
        }
        self.parked.fetch_add(1, Ordering::SeqCst);
        while *paused && !self.stop.load(Ordering::SeqCst) {
            paused = self.resumed.wait(paused).unwrap_or_else(|e| e.into_inner());
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }

    fn set_paused(&self, value: bool) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = value;
        self.resumed.notify_all();
    }
}

impl Vm {
    /// Builds and starts the VM. Fails without leaving anything running or mapped.
    pub fn boot(kvm: &Kvm, config: &VmConfig, serial: &SerialSink) -> Result<Vm, VmError> {
        let topology = guest_topology(config, tessera_arch::vcpu::host_phys_bits())?;
        check_payload(config)?;
        let vfio_hosts = crate::vfio::check_host(config)?;
        memory::check_host(config, &topology.layout)?;

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
        let router = Arc::new(KvmInterruptRouter::new(vm_fd.clone()));
        let passthrough = Passthrough::open(
            &vm_fd,
            &guest_memory,
            &vfio_hosts,
            config,
            &topology,
            &router,
            guest_memory.num_regions() as u32,
        )?;

        let kernel_path = config.payload.kernel.clone().unwrap_or_default();
        let kernel = load_kernel(&guest_memory, &kernel_path).map_err(|e| VmError::Payload {
            field: "payload.kernel",
            message: e.to_string(),
        })?;
        let initramfs =
            match &config.payload.initramfs {
                Some(p) => Some(load_initramfs(&guest_memory, p, &kernel).map_err(|e| {
                    VmError::Payload {
                        field: "payload.initramfs",
                        message: e.to_string(),
                    }
                })?),
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

        let exit_evt = event_fd()?;
        let reset_evt = event_fd()?;
        let (pio, mmio, ged) = wire_devices(
            &vm_fd,
            &topology.layout,
            serial,
            &exit_evt,
            &reset_evt,
            passthrough.as_ref(),
        )?;
        if let Some(p) = &passthrough {
            p.follow_bars(&pio, &mmio);
        }

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

        register_signal_handler(kick_signal(), kick_handler).map_err(|e| VmError::Os {
            what: "registering the vCPU kick signal",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        let control = Arc::new(VcpuControl::new(vcpu_fds.len()));
        let mut vcpus = Vec::with_capacity(vcpu_fds.len());
        for (index, vcpu) in vcpu_fds.into_iter().enumerate() {
            let (pio, mmio, ctl) = (pio.clone(), mmio.clone(), control.clone());
            let spawned = reset_evt
                .try_clone()
                .map_err(|source| VmError::Os {
                    what: "cloning the reset event",
                    source,
                })
                .and_then(|reset| {
                    std::thread::Builder::new()
                        .name(format!("vcpu{index}"))
                        .spawn(move || run_vcpu(index, vcpu, &pio, &mmio, &ctl, &reset))
                        .map_err(|source| VmError::Os {
                            what: "spawning a vCPU thread",
                            source,
                        })
                });
            match spawned {
                Ok(h) => vcpus.push(h),
                Err(e) => {
                    // Nothing may keep running: stop the vCPUs already started.
                    stop_vcpus(&control, &mut vcpus);
                    return Err(e);
                }
            }
        }
        Ok(Vm {
            vcpus,
            control,
            exit_evt,
            reset_evt,
            ged,
            _passthrough: passthrough,
            _router: router,
            _vm_fd: vm_fd,
            _memory: guest_memory,
            topology,
        })
    }

    /// Stops every vCPU at the next exit and waits until all are parked.
    pub fn pause(&self) -> Result<(), VmError> {
        self.control.set_paused(true);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.control.parked.load(Ordering::SeqCst) < self.vcpus.len() {
            for h in &self.vcpus {
                let _ = h.kill(kick_signal());
            }
            if std::time::Instant::now() > deadline {
                self.control.set_paused(false);
                return Err(VmError::VcpuRun {
                    index: 0,
                    message: "vCPUs did not stop within 5 s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        self.control.set_paused(false);
    }

    /// Presses the ACPI power button (a GED event the guest's ACPI handles).
    pub fn power_button(&self) -> Result<(), VmError> {
        self.ged
            .lock()
            .map_err(|_| VmError::Devices("the GED is poisoned".into()))?
            .notify(tessera_devices::GED_EVENT_POWER_BUTTON)
            .map_err(|source| VmError::Os {
                what: "raising the GED interrupt",
                source,
            })
    }

    /// Exits taken per vCPU: `{"vcpu0": {"io_exits": N, "mmio_exits": N, "other_exits": N}}`.
    pub fn counters(
        &self,
    ) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> {
        self.control
            .counters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let values = [
                    ("io_exits", c.io.load(Ordering::Relaxed)),
                    ("mmio_exits", c.mmio.load(Ordering::Relaxed)),
                    ("other_exits", c.other.load(Ordering::Relaxed)),
                ];
                (
                    format!("vcpu{i}"),
                    values
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                )
            })
            .collect()
    }

    /// The events that fire when the guest powers off and when it resets, for callers
    /// that wait on more than the VM (the API's control loop).
    pub fn event_fds(&self) -> (std::os::fd::RawFd, std::os::fd::RawFd) {
        (self.exit_evt.as_raw_fd(), self.reset_evt.as_raw_fd())
    }

    /// Consumes a fired event, so a level-triggered wait does not see it again.
    pub fn clear_events(&self) {
        let _ = self.exit_evt.read();
        let _ = self.reset_evt.read();
    }

    /// Reports a vCPU thread that has stopped on its own (an error), stopping the rest.
    pub fn check_vcpus(&mut self) -> Result<(), VmError> {
        let Some(index) = self.vcpus.iter().position(|h| h.is_finished()) else {
            return Ok(());
        };
        let handle = self.vcpus.remove(index);
        let result = handle.join();
        stop_vcpus(&self.control, &mut self.vcpus);
        Err(VmError::VcpuRun {
            index: index as u32,
            message: match result {
                Ok(Err(m)) => m,
                Ok(Ok(())) => "stopped unexpectedly".into(),
                Err(_) => "panicked".into(),
            },
        })
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        stop_vcpus(&self.control, &mut self.vcpus);
    }
}

/// Stops and joins vCPU threads: sets the flag, wakes parked ones, then kicks each out of
/// KVM_RUN until it has exited (a kick that lands just before KVM_RUN would be lost).
fn stop_vcpus(control: &VcpuControl, vcpus: &mut Vec<JoinHandle<Result<(), String>>>) {
    control.stop.store(true, Ordering::SeqCst);
    control.set_paused(false);
    for handle in vcpus.drain(..) {
        while !handle.is_finished() {
            if handle.kill(kick_signal()).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Err(e) = handle.join() {
            tracing::error!("a vCPU thread panicked: {e:?}");
        }
    }
}

fn run_vcpu(
    index: usize,
    mut vcpu: VcpuFd,
    pio: &Bus,
    mmio: &Bus,
    control: &VcpuControl,
    reset_evt: &EventFd,
) -> Result<(), String> {
    let no_counters = VcpuCounters::default();
    let counters = control.counters.get(index).unwrap_or(&no_counters);
    loop {
        if control.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        control.park_if_paused();
        if control.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                counters.io.fetch_add(1, Ordering::Relaxed);
                if !pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                counters.io.fetch_add(1, Ordering::Relaxed);
                pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                counters.mmio.fetch_add(1, Ordering::Relaxed);
                if !mmio.read(addr, data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                counters.mmio.fetch_add(1, Ordering::Relaxed);
                mmio.write(addr, data);
            }
            Ok(VcpuExit::Hlt) => {}
            // A triple fault: PC hardware resets, so do we.
            Ok(VcpuExit::Shutdown) => {
                reset_evt.write(1).map_err(|e| e.to_string())?;
                return Ok(());
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Err(format!(
                    "KVM_RUN failed entry (reason {reason:#x}, cpu {cpu})"
                ))
            }
            Ok(VcpuExit::InternalError) => return Err("KVM internal error".into()),
            Ok(other) => {
                counters.other.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("unhandled vCPU exit {other:?}");
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        }
    }
}

fn event_fd() -> Result<EventFd, VmError> {
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
    let placement = Placement {
        rsdp_address: RSDP_START,
        tables_address: RSDP_START + 0x40,
    };
    let tables = build_acpi(&topology.acpi, placement)
        .map_err(crate::guest_topology::TopologyError::from)?;
    let end = tables
        .iter()
        .map(|t| t.address + t.bytes.len() as u64)
        .max()
        .unwrap_or(0);
    if end > HIGH_RAM_START {
        return Err(VmError::AcpiTooLarge {
            end,
            limit: HIGH_RAM_START,
        });
    }
    for t in tables.iter() {
        memory
            .write_slice(&t.bytes, GuestAddress(t.address))
            .map_err(|e| {
                VmError::Devices(format!("writing {} to guest memory: {e}", t.signature))
            })?;
    }
    Ok(())
}

/// The port I/O bus, the MMIO bus, and the GED (kept typed for power-button presses).
type Wired = (Arc<Bus>, Arc<Bus>, Arc<Mutex<GedDevice>>);

/// Creates the devices and the two buses vCPUs dispatch to.
fn wire_devices(
    vm: &VmFd,
    layout: &GuestLayout,
    serial: &SerialSink,
    exit_evt: &EventFd,
    reset_evt: &EventFd,
    passthrough: Option<&Passthrough>,
) -> Result<Wired, VmError> {
    let dev_err = |what: &str, e: &dyn std::fmt::Display| VmError::Devices(format!("{what}: {e}"));
    let os = |what| move |source| VmError::Os { what, source };
    let mut pio = Bus::new();
    let mut mmio = Bus::new();

    if let Some(out) = &serial.out {
        let irq = event_fd()?;
        vm.register_irqfd(&irq, SERIAL_GSI)
            .map_err(|source| VmError::Kvm {
                what: "register_irqfd (serial)",
                source,
            })?;
        let uart = Arc::new(Mutex::new(SerialDevice::new(
            irq,
            Box::new(SharedWriter(out.clone())),
        )));
        if let Ok(mut current) = serial.current.lock() {
            *current = Some(uart.clone());
        }
        let device: Arc<Mutex<dyn BusDevice>> = uart;
        pio.insert(
            u64::from(tessera_devices::serial::COM1_PORT_BASE),
            tessera_devices::SERIAL_PORT_LEN,
            device,
        )
        .map_err(|e| dev_err("serial", &e))?;
    }

    let rtc: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(tessera_devices::CmosRtc::new()));
    pio.insert(
        tessera_devices::CMOS_PORT,
        tessera_devices::CMOS_PORT_LEN,
        rtc,
    )
    .map_err(|e| dev_err("CMOS RTC", &e))?;

    let power: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(AcpiPowerDevice::new(
        exit_evt.try_clone().map_err(os("cloning the exit event"))?,
        reset_evt
            .try_clone()
            .map_err(os("cloning the reset event"))?,
    )));
    pio.insert(
        u64::from(tessera_devices::power::ACPI_POWER_PORT),
        tessera_devices::power::ACPI_POWER_PORT_LEN,
        power,
    )
    .map_err(|e| dev_err("power", &e))?;

    let ged_irq = event_fd()?;
    vm.register_irqfd(&ged_irq, GED_GSI)
        .map_err(|source| VmError::Kvm {
            what: "register_irqfd (GED)",
            source,
        })?;
    let ged = Arc::new(Mutex::new(GedDevice::new(ged_irq)));
    let ged_dev: Arc<Mutex<dyn BusDevice>> = ged.clone();
    mmio.insert(GED_START, tessera_devices::GED_MMIO_LEN, ged_dev)
        .map_err(|e| dev_err("GED", &e))?;

    let mut segments: Vec<PciSegment> = (0..layout.segments.len())
        .map(|id| PciSegment::new(id as u16))
        .collect();
    if let Some(seg0) = segments.first_mut() {
        seg0.add_device(0, Arc::new(Mutex::new(PciHostBridge::new())))
            .map_err(|e| dev_err("PCI host bridge", &e))?;
    }
    if let Some(p) = passthrough {
        p.attach(&mut segments, &mut pio, &mut mmio)
            .map_err(|e| dev_err("VFIO", &e))?;
    }
    for ((id, windows), segment) in layout.segments.iter().enumerate().zip(segments) {
        let segment = Arc::new(Mutex::new(segment));
        if id == 0 {
            let cfg: Arc<Mutex<dyn BusDevice>> =
                Arc::new(Mutex::new(PciConfigIo::new(segment.clone())));
            pio.insert(
                u64::from(tessera_devices::pci::PCI_CONFIG_IO_PORT),
                tessera_devices::pci::PCI_CONFIG_IO_PORT_LEN,
                cfg,
            )
            .map_err(|e| dev_err("PCI config ports", &e))?;
        }
        let ecam: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(PciConfigMmio::new(segment)));
        mmio.insert(windows.ecam.start, windows.ecam.len(), ecam)
            .map_err(|e| dev_err("ECAM", &e))?;
    }
    Ok((Arc::new(pio), Arc::new(mmio), ged))
}
