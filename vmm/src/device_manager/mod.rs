//! The device manager: the one place devices come into the VM and go out of it. The VM
//! owns it for its whole life; boot is its first batch of [`DeviceManager::add_device`].
//!
//! It holds the buses the vCPUs dispatch to (changeable while they run), the platform
//! devices (`platform`), each PCI segment's configuration space and BAR allocators
//! (`pci_segment`), the slot and id allocator (`placement`), the KVM memory slots
//! (`memory_slots`), the GSI/MSI routes, and the VFIO container, opened with the first
//! device (`crate::vfio`). A device comes in one way: place → open → allocate BARs → map
//! → wire interrupts → insert on the buses; it goes out the same way backwards. The
//! hotplug path is this file, `pci_segment.rs` and `crate::vfio`.

pub mod memory_slots;
mod pci_segment;
pub mod placement;
mod platform;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use kvm_ioctls::VmFd;
use tessera_acpi::Bdf;
use tessera_api::config::{DeviceConfig, HOST_BRIDGE_ID};
use tessera_arch::layout::GuestLayout;
use tessera_devices::bus::{Bus, BusDevice};
use tessera_devices::ged::GedDevice;
use tessera_devices::interrupt::InterruptRouter;
use tessera_devices::pci::{PciBarType, PciDevice};
use tessera_devices::pci_hotplug::{PciHotplugController, PciSlot};
use tessera_devices::vfio::{VfioBarTrap, VfioPciDevice, ROM_BAR};
use vm_memory::GuestMemoryMmap;

use crate::console::SerialSink;
use crate::guest_topology::{intx_gsi, PlacedDeviceMemory};
use crate::irq_routing::KvmInterruptRouter;
use crate::vfio::{check_device, BarMappings, Container, HostDevice, VfioHostError};
use crate::vm::{VmError, VmEvents};
use memory_slots::MemorySlots;
use pci_segment::{BarAllocation, Segment};
use placement::PciSlots;
use platform::{add_platform_devices, Platform};

/// Why a device could not come in or go out.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The device is at fault; `field` names its configuration field (`path`, `id`,
    /// `pci_device_id`, ...).
    #[error("{field}: {message}")]
    Device {
        /// The field of the device's configuration.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Something the VM's devices share failed (the VFIO container, a bus).
    #[error("{0}")]
    Vm(String),
    /// No device has the id.
    #[error("no device has id `{0}`")]
    NotFound(String),
}

impl DeviceError {
    fn device(field: &str, message: impl Into<String>) -> Self {
        DeviceError::Device {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// A host check's error: about the device (`path`) or about the host (`devices`).
    fn from_host(e: VfioHostError) -> Self {
        if e.field == "devices" {
            DeviceError::Vm(e.message)
        } else {
            DeviceError::Device {
                field: e.field,
                message: e.message,
            }
        }
    }

    /// As a boot error about `devices[index]`.
    pub(crate) fn at_boot(self, index: usize) -> VmError {
        let (field, message) = match self {
            DeviceError::Device { field, message } => {
                (format!("devices[{index}].{field}"), message)
            }
            DeviceError::Vm(message) => ("devices".to_string(), message),
            e @ DeviceError::NotFound(_) => return VmError::Devices(e.to_string()),
        };
        VmError::Vfio(VfioHostError { field, message })
    }
}

/// Where a device landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDeviceInfo {
    /// Its id, given or generated.
    pub id: String,
    /// Its guest address.
    pub bdf: Bdf,
}

/// A passed-through device in the VM, and what it holds, to give back when it goes.
struct PassedDevice {
    id: String,
    bdf: Bdf,
    sysfs: PathBuf,
    model: Arc<Mutex<VfioPciDevice>>,
    /// Room taken in its segment's windows.
    bars: Vec<BarAllocation>,
    mappings: Option<Arc<BarMappings>>,
    /// BARs trapped on the buses.
    trapped: Vec<usize>,
    /// BARs taken as device memory, with the guest address each is RAM at.
    memory: Vec<(tessera_devices::vfio::MmapArea, u64)>,
    in_config_space: bool,
}

impl PassedDevice {
    fn lock(&self) -> std::sync::MutexGuard<'_, VfioPciDevice> {
        self.model.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The VM's devices and everything they share.
pub struct DeviceManager {
    vm: Arc<VmFd>,
    /// Guest RAM, for the VFIO container's DMA mapping; must not outlive the VM's RAM.
    memory: GuestMemoryMmap,
    router: Arc<KvmInterruptRouter>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    platform: Platform,
    segments: Vec<Segment>,
    slots: PciSlots,
    memory_slots: Arc<Mutex<MemorySlots>>,
    /// Opened when the first device comes, kept for the VM's life.
    container: Option<Arc<Container>>,
    /// In the order they came.
    devices: Vec<PassedDevice>,
    /// BARs that are guest RAM of a device-memory node, by device id.
    device_memory: Vec<PlacedDeviceMemory>,
}

impl DeviceManager {
    /// The buses with the platform devices and every segment's configuration space, no
    /// PCI device yet. `slots` is the configuration's placement (guest_topology's), so
    /// configured devices land where the ACPI tables say; `memory_slots` are the KVM slots
    /// guest RAM left; `device_memory` says which devices' BARs become guest RAM where.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm: &Arc<VmFd>,
        memory: &GuestMemoryMmap,
        layout: &GuestLayout,
        slots: PciSlots,
        memory_slots: MemorySlots,
        device_memory: Vec<PlacedDeviceMemory>,
        serial: &SerialSink,
        events: &VmEvents,
    ) -> Result<DeviceManager, VmError> {
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let platform = add_platform_devices(
            vm,
            serial,
            events,
            (0..layout.segments.len() as u16)
                .map(|s| slots.hotplug_mask(s))
                .collect(),
            &pio,
            &mmio,
        )?;
        let segments = layout
            .segments
            .iter()
            .enumerate()
            .map(|(id, windows)| Segment::new(id as u16, windows, &pio, &mmio))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| VmError::Devices(e.to_string()))?;
        Ok(DeviceManager {
            vm: vm.clone(),
            memory: memory.clone(),
            router: Arc::new(KvmInterruptRouter::new(vm.clone())),
            pio,
            mmio,
            platform,
            segments,
            slots,
            memory_slots: Arc::new(Mutex::new(memory_slots)),
            container: None,
            devices: Vec::new(),
            device_memory,
        })
    }

    /// The port I/O bus, for the vCPUs.
    pub fn pio(&self) -> &Arc<Bus> {
        &self.pio
    }

    /// The MMIO bus, for the vCPUs.
    pub fn mmio(&self) -> &Arc<Bus> {
        &self.mmio
    }

    /// The GED, for power-button presses.
    pub(crate) fn ged(&self) -> &Arc<Mutex<GedDevice>> {
        &self.platform.ged
    }

    /// The slot tables: which id holds which slot, filled or not.
    pub fn slots(&self) -> &PciSlots {
        &self.slots
    }

    /// The passed-through devices, in the order they came.
    pub fn devices(&self) -> Vec<PciDeviceInfo> {
        self.devices
            .iter()
            .map(|d| PciDeviceInfo {
                id: d.id.clone(),
                bdf: d.bdf,
            })
            .collect()
    }

    /// Brings a device in, at boot or while the vCPUs run, where [`PciSlots::place`]
    /// says: the slot reserved for its id (a GI-ready slot, or its own placed at boot),
    /// else its pinned one, else the lowest free one of its segment; a device without an
    /// id gets `_vfioN` (for the caller to write back). Fails leaving nothing of it
    /// behind.
    pub fn add_device(&mut self, device: &DeviceConfig) -> Result<PciDeviceInfo, DeviceError> {
        let host = check_device(device).map_err(DeviceError::from_host)?;
        if let Some(other) = self.devices.iter().find(|d| d.sysfs == host.sysfs) {
            return Err(DeviceError::device(
                "path",
                format!(
                    "{} is already passed through as `{}`",
                    device.path.display(),
                    other.id
                ),
            ));
        }
        let id = device.id.clone().unwrap_or_else(|| self.slots.unused_id());
        if id == HOST_BRIDGE_ID || self.devices.iter().any(|d| d.id == id) {
            return Err(DeviceError::device(
                "id",
                format!("a device with id `{id}` already exists"),
            ));
        }
        let (bdf, placed_now) = self
            .slots
            .place(device, &id)
            .map_err(|e| DeviceError::device(e.field(), e.to_string()))?;
        match self.bring_in(device, &host, &id, bdf) {
            Ok(()) => Ok(PciDeviceInfo { id, bdf }),
            Err(e) => {
                if placed_now {
                    self.slots.release(bdf);
                }
                Err(e)
            }
        }
    }

    /// [`Self::add_device`] on a running VM: the guest is then told of the new slot
    /// (acpiphp scans it). If the guest cannot be told, the device goes again.
    pub fn hotplug_device(&mut self, device: &DeviceConfig) -> Result<PciDeviceInfo, DeviceError> {
        let info = self.add_device(device)?;
        let told = self.hotplug().slot_added(slot_of(info.bdf));
        if let Err(e) = told {
            let _ = self.remove_device(&info.id);
            return Err(DeviceError::Vm(format!("telling the guest: {e}")));
        }
        Ok(info)
    }

    /// Asks the guest to give up the device `id` (acpiphp unbinds it and ejects its slot;
    /// the eject comes back through the VM's events, and the caller then calls
    /// [`Self::remove_device`]). Returns where the device is.
    pub fn request_removal(&mut self, id: &str) -> Result<Bdf, DeviceError> {
        let bdf = self
            .devices
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.bdf)
            .ok_or_else(|| DeviceError::NotFound(id.to_string()))?;
        self.hotplug()
            .slot_removal_requested(slot_of(bdf))
            .map_err(|e| DeviceError::Vm(format!("asking the guest: {e}")))?;
        Ok(bdf)
    }

    /// The id of the device in `slot`, if one is there.
    pub fn device_in(&self, slot: PciSlot) -> Option<String> {
        self.devices
            .iter()
            .find(|d| slot_of(d.bdf) == slot)
            .map(|d| d.id.clone())
    }

    fn hotplug(&self) -> std::sync::MutexGuard<'_, PciHotplugController> {
        self.platform
            .hotplug
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the device `id` out of the VM: the way it came, backwards. Its slot is freed,
    /// but a GI-ready slot stays reserved for the next device with its id.
    pub fn remove_device(&mut self, id: &str) -> Result<PciDeviceInfo, DeviceError> {
        let index = self
            .devices
            .iter()
            .position(|d| d.id == id)
            .ok_or_else(|| DeviceError::NotFound(id.to_string()))?;
        let device = self.devices.remove(index);
        let info = PciDeviceInfo {
            id: device.id.clone(),
            bdf: device.bdf,
        };
        self.take_down(device);
        self.slots.release(info.bdf);
        tracing::info!("vfio: {} removed from {}", info.id, info.bdf);
        Ok(info)
    }

    /// Opens the device placed at `bdf`, and everything after.
    fn bring_in(
        &mut self,
        config: &DeviceConfig,
        host: &HostDevice,
        id: &str,
        bdf: Bdf,
    ) -> Result<(), DeviceError> {
        let name = format!("{id} ({})", host.sysfs.display());
        let container = self.container()?;
        let router: Arc<dyn InterruptRouter> = self.router.clone();
        let mut model = container
            .open_device(host, &name, "path", router)
            .map_err(DeviceError::from_host)?;
        model.exclude_from_mmap(&config.x_exclude_mmap_bars);
        let mut memory = Vec::new();
        for m in self.device_memory.iter().filter(|m| m.device == id) {
            match model.take_memory_bar(m.bar, m.range.len()) {
                Ok(area) => memory.push((area, m.range.start)),
                Err(e) => {
                    drop(model);
                    return Err(DeviceError::device(
                        "path",
                        format!("{}: {e}", host.sysfs.display()),
                    ));
                }
            }
        }
        // The first device's group brought the IOMMU: guest RAM goes in now, once.
        if let Err(e) = container.map_ram() {
            drop(model);
            return Err(DeviceError::from_host(e));
        }
        let mut device = PassedDevice {
            id: id.to_string(),
            bdf,
            sysfs: host.sysfs.clone(),
            model: Arc::new(Mutex::new(model)),
            bars: Vec::new(),
            mappings: None,
            trapped: Vec::new(),
            memory,
            in_config_space: false,
        };
        match self.fill(&mut device, &container, &name) {
            Ok(()) => {
                self.devices.push(device);
                Ok(())
            }
            Err(message) => {
                self.take_down(device);
                Err(DeviceError::device(
                    "path",
                    format!("{}: {message}", host.sysfs.display()),
                ))
            }
        }
    }

    /// Allocate BARs → map → wire interrupts → insert on the buses. Leaves in `device`
    /// what it took, for [`Self::take_down`] to give back if it fails.
    fn fill(
        &mut self,
        device: &mut PassedDevice,
        container: &Arc<Container>,
        name: &str,
    ) -> Result<(), String> {
        let bdf = device.bdf;
        let (pio, mmio) = (&self.pio, &self.mmio);
        let segment = self
            .segments
            .get_mut(usize::from(bdf.segment))
            .ok_or("its PCI segment does not exist")?;
        let requests = device.lock().bar_requests();
        for request in requests {
            let allocation = segment
                .allocate_bar(request.bar_type, request.size)
                .map_err(|e| {
                    format!(
                        "no room for BAR {} ({:#x} bytes) in segment {}'s window: {e}",
                        request.index,
                        request.size,
                        segment.id()
                    )
                })?;
            let Some(allocation) = allocation else {
                tracing::warn!(
                    "{name}: I/O BAR {} left unassigned: only PCI segment 0 decodes port I/O",
                    request.index
                );
                continue;
            };
            device.bars.push(allocation);
            device
                .lock()
                .assign_bar(request.index, allocation.start())
                .map_err(|e| e.to_string())?;
        }

        let mappings = BarMappings::map(container, &self.memory_slots, &device.lock(), name)?;
        device.mappings = Some(mappings.clone());
        for (area, address) in &device.memory {
            mappings.map_memory(&device.lock(), area, *address)?;
        }

        let pin = device.lock().interrupt_pin();
        if pin != 0 {
            device
                .lock()
                .enable_intx(intx_gsi(bdf.device, pin))
                .map_err(|e| format!("INTx: {e}"))?;
        }

        device.lock().set_relocator(mappings.relocator(pio, mmio));
        for bar in 0..=ROM_BAR {
            let Some((bar_type, address, size)) = device.lock().bar_range(bar) else {
                continue;
            };
            let trap: Arc<Mutex<dyn BusDevice>> =
                Arc::new(Mutex::new(VfioBarTrap::new(device.model.clone(), bar)));
            let bus = match bar_type {
                PciBarType::Io => pio,
                _ => mmio,
            };
            bus.insert(address, size, trap)
                .map_err(|e| format!("BAR {bar}: {e}"))?;
            device.trapped.push(bar);
        }
        let as_pci: Arc<Mutex<dyn PciDevice>> = device.model.clone();
        segment
            .insert(bdf.devfn(), as_pci)
            .map_err(|e| e.to_string())?;
        device.in_config_space = true;
        tracing::info!(
            "vfio: {name} at {bdf} with BARs {:?}",
            (0..=ROM_BAR)
                .filter_map(|i| device.lock().bar_range(i).map(|(_, a, s)| (i, a, s)))
                .map(|(i, a, s)| format!("{i}:{a:#x}+{s:#x}"))
                .collect::<Vec<_>>()
        );
        Ok(())
    }

    /// Gives back what `device` took, in the reverse order of [`Self::fill`]: out of
    /// configuration space and off the buses, quiesced (no interrupts, no DMA), BARs
    /// unmapped, their room freed, its files closed (where vfio-pci resets it). The slot
    /// is the caller's.
    fn take_down(&mut self, device: PassedDevice) {
        let segment = self.segments.get_mut(usize::from(device.bdf.segment));
        if device.in_config_space {
            if let Some(s) = &segment {
                s.remove(device.bdf.devfn());
            }
        }
        for &bar in &device.trapped {
            let Some((bar_type, address, _)) = device.lock().bar_range(bar) else {
                continue;
            };
            let bus = match bar_type {
                PciBarType::Io => &self.pio,
                _ => &self.mmio,
            };
            if let Err(e) = bus.remove(address) {
                tracing::warn!("{}: taking BAR {bar} off the bus: {e}", device.id);
            }
        }
        let start = std::time::Instant::now();
        device.lock().quiesce();
        let quiesced = start.elapsed();
        if let Some(m) = &device.mappings {
            m.unmap_all();
        }
        let unmapped = start.elapsed();
        if let Some(s) = segment {
            for bar in &device.bars {
                s.free_bar(bar);
            }
        }
        let id = device.id.clone();
        // The kernel drops the IOMMU with the last group: guest RAM leaves it while the
        // device closes, and is mapped again when a device next comes.
        let last = self
            .devices
            .is_empty()
            .then(|| self.container.clone())
            .flatten();
        std::thread::scope(|s| {
            let unmapper = last
                .as_deref()
                .map(|c| s.spawn(|| c.unmap_ram_as_last_device_leaves()));
            drop(device);
            if let Some(u) = unmapper {
                if u.join().is_err() {
                    tracing::warn!("vfio: unmapping guest RAM panicked");
                }
            }
        });
        tracing::debug!(
            "vfio: {id} taken down: quiesced {:.1} ms, BARs unmapped {:.1} ms, closed (reset) \
             and guest RAM unmapped {:.1} ms",
            ms(quiesced),
            ms(unmapped - quiesced),
            ms(start.elapsed() - unmapped)
        );
    }

    /// The VFIO container, opened the first time.
    fn container(&mut self) -> Result<Arc<Container>, DeviceError> {
        if let Some(c) = &self.container {
            return Ok(c.clone());
        }
        let c = Arc::new(Container::open(&self.vm, &self.memory).map_err(DeviceError::from_host)?);
        self.container = Some(c.clone());
        Ok(c)
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The hotplug slot a device's BDF is in.
fn slot_of(bdf: Bdf) -> PciSlot {
    PciSlot {
        segment: bdf.segment,
        slot: bdf.device,
    }
}

impl Drop for DeviceManager {
    /// Devices go last in, first out; the container (guest RAM's DMA mapping) after them.
    fn drop(&mut self) {
        while let Some(device) = self.devices.pop() {
            self.take_down(device);
        }
    }
}
