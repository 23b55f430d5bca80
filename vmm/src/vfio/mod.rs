//! VFIO passthrough for one boot, the host side: the VFIO container and groups, DMA
//! mapping of all guest RAM, the devices' BARs placed in their segment's windows and
//! mmapped into the guest as KVM slots (and, best effort, into the IOMMU for peer-to-peer
//! DMA). The checks made before anything is opened are in [`host`].
//!
//! [`Passthrough`] owns all of it; dropping it resets the devices, removes the slots,
//! unmaps the BARs and the DMA mappings and closes the groups, leaving the devices bound to
//! vfio-pci as they were found.

mod host;

pub use host::{check_host, check_host_at, HostDevice, VfioHostError};

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use kvm_bindings::{
    kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO, kvm_userspace_memory_region,
};
use kvm_ioctls::VmFd;
use tessera_api::config::VmConfig;
use tessera_arch::layout::Range;
use tessera_devices::bus::{Bus, BusDevice};
use tessera_devices::interrupt::InterruptRouter;
use tessera_devices::pci::{PciBarType, PciSegment};
use tessera_devices::vfio::{
    BarRelocator, MmapArea, VfioBarTrap, VfioPciDevice, PAGE_SIZE, ROM_BAR,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd};
use vm_allocator::{AddressAllocator, AllocPolicy};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::guest_topology::{intx_gsi, GuestTopology, PlacedDevice};
use crate::irq_routing::KvmInterruptRouter;
use host::{fail, open_error};
/// A part of a BAR mmapped from the device and given to the guest as a KVM slot.
struct BarMapping {
    slot: u32,
    guest_address: u64,
    size: u64,
    /// The mmap's address in this process.
    host: usize,
    /// Whether it is also in the IOMMU (peer-to-peer DMA), at `guest_address`.
    in_iommu: bool,
}

/// State the relocator shares with [`Passthrough`].
struct Mappings {
    vm: Arc<VmFd>,
    container: Arc<VfioContainer>,
    list: Mutex<Vec<BarMapping>>,
    /// Set once a peer-to-peer mapping has failed, so the warning is given once.
    p2p_warned: AtomicBool,
}

impl Mappings {
    fn set_slot(&self, m: &BarMapping, size: u64) -> io::Result<()> {
        let region = kvm_userspace_memory_region {
            slot: m.slot,
            flags: 0,
            guest_phys_addr: m.guest_address,
            memory_size: size,
            userspace_addr: m.host as u64,
        };
        // SAFETY: the slot points at a live mmap of the device's BAR owned by `self`,
        // which removes the slot (size 0) before unmapping it.
        #[allow(unsafe_code)]
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    /// Best effort: lets other devices DMA to this BAR (peer to peer). An emulated IOMMU
    /// may refuse MMIO mappings (QEMU's VT-d does); the guest still boots, so say it once.
    fn map_p2p(&self, m: &mut BarMapping, device: &str) {
        // SAFETY: the range is a live mmap of device memory owned by `self`, unmapped from
        // the IOMMU (unmap_p2p) before it is unmapped from this process; no Rust reference
        // to it exists.
        #[allow(unsafe_code)]
        let result = unsafe {
            self.container
                .vfio_dma_map(m.guest_address, m.size as usize, m.host as *mut u8)
        };
        match result {
            Ok(()) => m.in_iommu = true,
            Err(e) => {
                if !self.p2p_warned.swap(true, Ordering::SeqCst) {
                    tracing::warn!(
                        "peer-to-peer DMA to passed-through BARs is unavailable: mapping {device}'s BAR at \
                         {:#x} into the IOMMU failed ({e}); devices can still DMA to guest RAM",
                        m.guest_address
                    );
                }
            }
        }
    }

    fn unmap_p2p(&self, m: &mut BarMapping) {
        if m.in_iommu {
            let _ = self
                .container
                .vfio_dma_unmap(m.guest_address, m.size as usize);
            m.in_iommu = false;
        }
    }
}

/// Follows BAR moves: KVM slots, IOMMU entries and bus ranges. Holds the buses weakly:
/// they hold the devices, which hold this.
struct Relocator {
    mappings: Arc<Mappings>,
    pio: Weak<Bus>,
    mmio: Weak<Bus>,
    name: String,
}

impl BarRelocator for Relocator {
    fn relocate(&self, bar_type: PciBarType, old: u64, new: u64, size: u64) -> Result<(), String> {
        let bus = match bar_type {
            PciBarType::Io => &self.pio,
            _ => &self.mmio,
        };
        let bus = bus.upgrade().ok_or("the VM is shutting down")?;
        bus.relocate(old, new).map_err(|e| e.to_string())?;
        let mut list = self
            .mappings
            .list
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for m in list
            .iter_mut()
            .filter(|m| m.guest_address >= old && m.guest_address < old + size)
        {
            self.mappings.unmap_p2p(m);
            self.mappings
                .set_slot(m, 0)
                .map_err(|e| format!("removing a KVM slot: {e}"))?;
            m.guest_address = m.guest_address - old + new;
            self.mappings
                .set_slot(m, m.size)
                .map_err(|e| format!("adding a KVM slot: {e}"))?;
            self.mappings.map_p2p(m, &self.name);
        }
        Ok(())
    }
}

/// A passed-through device in the guest.
pub struct PassedDevice {
    /// Its placement.
    pub placed: PlacedDevice,
    /// The device model.
    pub device: Arc<Mutex<VfioPciDevice>>,
}

/// Everything VFIO for one boot.
pub struct Passthrough {
    /// The devices, in configuration order.
    pub devices: Vec<PassedDevice>,
    mappings: Arc<Mappings>,
    memory: GuestMemoryMmap,
    dma_mapped: bool,
}

/// Guest address space for BARs on one segment.
struct SegmentAllocators {
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
    io: Option<AddressAllocator>,
}

fn allocator(r: &Range) -> Result<AddressAllocator, String> {
    AddressAllocator::new(r.start, r.len()).map_err(|e| e.to_string())
}

impl Passthrough {
    /// Opens the devices [`check_host`] found (`hosts`, in configuration order), DMA-maps
    /// `memory`, places the BARs, maps what can be mapped into the guest (all but each
    /// device's `x_exclude_mmap_bars` in `config`) starting at KVM slot `first_slot`, and
    /// wires INTx. Fails leaving nothing open or mapped.
    pub fn open(
        vm: &Arc<VmFd>,
        memory: &GuestMemoryMmap,
        hosts: &[HostDevice],
        config: &VmConfig,
        topology: &GuestTopology,
        router: &Arc<KvmInterruptRouter>,
        first_slot: u32,
    ) -> Result<Option<Passthrough>, VfioHostError> {
        if hosts.is_empty() {
            return Ok(None);
        }

        let mut create = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_vfio = vm
            .create_device(&mut create)
            .map_err(|e| fail("devices", format!("creating the KVM VFIO device: {e}")))?;
        let container = VfioContainer::new(Some(Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio))))
            .map_err(|e| fail("devices", format!("opening the VFIO container: {e}")))?;
        let container = Arc::new(container);

        let mut opened = Vec::new();
        for (placed, host) in topology.devices.iter().zip(hosts) {
            let field = format!("devices[{}].path", placed.config_index);
            let device = VfioDevice::new(&host.sysfs, container.clone(), false)
                .map_err(|e| open_error(&field, host, e))?;
            opened.push((placed.clone(), host.clone(), device));
        }

        let mut pass = Passthrough {
            devices: Vec::new(),
            mappings: Arc::new(Mappings {
                vm: vm.clone(),
                container: container.clone(),
                list: Mutex::new(Vec::new()),
                p2p_warned: AtomicBool::new(false),
            }),
            memory: memory.clone(),
            dma_mapped: false,
        };

        // All guest RAM, so devices can DMA anywhere the guest points them.
        let start = Instant::now();
        // SAFETY: guest memory stays mapped until `Passthrough` is dropped, which unmaps it
        // from the IOMMU first; the VMM touches it only through vm-memory's volatile
        // accessors, never through references the device's DMA could alias.
        #[allow(unsafe_code)]
        unsafe { container.vfio_map_guest_memory(memory) }
            .map_err(|e| fail("devices", format!("DMA-mapping guest RAM: {e}")))?;
        pass.dma_mapped = true;
        let took = start.elapsed();
        let ram: u64 = memory.iter().map(|r| r.len()).sum();
        tracing::info!(
            "vfio: DMA-mapped {} MiB of guest RAM in {:.1} ms",
            ram >> 20,
            took.as_secs_f64() * 1000.0
        );

        let mut allocators = topology
            .layout
            .segments
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Ok(SegmentAllocators {
                    mmio32: allocator(&w.mmio32)?,
                    mmio64: allocator(&w.mmio64)?,
                    // Only segment 0 decodes port I/O (see guest_topology).
                    io: if i == 0 {
                        Some(AddressAllocator::new(0x1000, 0xf000).map_err(|e| e.to_string())?)
                    } else {
                        None
                    },
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| fail("devices", format!("BAR windows: {e}")))?;

        let mut slot = first_slot;
        for (placed, host, device) in opened {
            let field = format!("devices[{}].path", placed.config_index);
            let name = format!("{} ({})", placed.id, host.sysfs.display());
            let router: Arc<dyn InterruptRouter> = router.clone();
            let mut model = VfioPciDevice::new(&name, Arc::new(device), router)
                .map_err(|e| fail(&field, format!("{}: {e}", host.sysfs.display())))?;
            if let Some(d) = config.devices.get(placed.config_index) {
                model.exclude_from_mmap(&d.x_exclude_mmap_bars);
            }
            let seg = allocators
                .get_mut(usize::from(placed.bdf.segment))
                .ok_or_else(|| fail(&field, "its PCI segment does not exist"))?;
            for request in model.bar_requests() {
                let (space, align) = match request.bar_type {
                    PciBarType::Io => match seg.io.as_mut() {
                        Some(io) => (io, request.size),
                        None => {
                            tracing::warn!(
                                "{name}: I/O BAR {} left unassigned: only PCI segment 0 decodes port I/O",
                                request.index
                            );
                            continue;
                        }
                    },
                    PciBarType::Memory32 => (&mut seg.mmio32, request.size.max(PAGE_SIZE)),
                    PciBarType::Memory64 => (&mut seg.mmio64, request.size.max(PAGE_SIZE)),
                };
                let range = space
                    .allocate(request.size, align, AllocPolicy::FirstMatch)
                    .map_err(|e| {
                        fail(
                            &field,
                            format!(
                                "{}: no room for BAR {} ({:#x} bytes) in segment {}'s window: {e}",
                                host.sysfs.display(),
                                request.index,
                                request.size,
                                placed.bdf.segment
                            ),
                        )
                    })?;
                model
                    .assign_bar(request.index, range.start())
                    .map_err(|e| fail(&field, format!("{}: {e}", host.sysfs.display())))?;
            }
            for area in model.mmap_areas() {
                let Some((_, bar_base, _)) = model.bar_range(area.bar) else {
                    continue;
                };
                let mut mapping =
                    map_area(model.device_fd(), &area, bar_base + area.bar_offset, slot).map_err(
                        |e| {
                            fail(
                                &field,
                                format!("{}: mmapping BAR {}: {e}", host.sysfs.display(), area.bar),
                            )
                        },
                    )?;
                slot += 1;
                let registered = pass.mappings.set_slot(&mapping, mapping.size);
                if let Err(e) = registered {
                    unmap(&mapping);
                    return Err(fail(
                        &field,
                        format!(
                            "{}: KVM slot for BAR {}: {e}",
                            host.sysfs.display(),
                            area.bar
                        ),
                    ));
                }
                pass.mappings.map_p2p(&mut mapping, &name);
                pass.mappings
                    .list
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(mapping);
            }
            let pin = model.interrupt_pin();
            if pin != 0 {
                model
                    .enable_intx(intx_gsi(placed.bdf.device, pin))
                    .map_err(|e| fail(&field, format!("{}: INTx: {e}", host.sysfs.display())))?;
            }
            tracing::info!(
                "vfio: {name} at {} with BARs {:?}",
                placed.bdf,
                (0..=ROM_BAR)
                    .filter_map(|i| model.bar_range(i).map(|(_, a, s)| (i, a, s)))
                    .map(|(i, a, s)| format!("{i}:{a:#x}+{s:#x}"))
                    .collect::<Vec<_>>()
            );
            pass.devices.push(PassedDevice {
                placed,
                device: Arc::new(Mutex::new(model)),
            });
        }
        Ok(Some(pass))
    }

    /// Puts each device on its segment and its BARs on the buses.
    pub fn attach(&self, segments: &mut [PciSegment], pio: &Bus, mmio: &Bus) -> Result<(), String> {
        for d in &self.devices {
            let segment = segments
                .get_mut(usize::from(d.placed.bdf.segment))
                .ok_or("no such PCI segment")?;
            let as_pci: Arc<Mutex<dyn tessera_devices::pci::PciDevice>> = d.device.clone();
            segment
                .add_device(d.placed.bdf.devfn(), as_pci)
                .map_err(|e| format!("{}: {e}", d.placed.id))?;
            let model = d.device.lock().unwrap_or_else(PoisonError::into_inner);
            for bar in 0..=ROM_BAR {
                let Some((bar_type, address, size)) = model.bar_range(bar) else {
                    continue;
                };
                let trap: Arc<Mutex<dyn BusDevice>> =
                    Arc::new(Mutex::new(VfioBarTrap::new(d.device.clone(), bar)));
                let bus = if bar_type == PciBarType::Io {
                    pio
                } else {
                    mmio
                };
                bus.insert(address, size, trap)
                    .map_err(|e| format!("{} BAR {bar}: {e}", d.placed.id))?;
            }
        }
        Ok(())
    }

    /// Lets the devices follow the guest when it moves their BARs.
    pub fn follow_bars(&self, pio: &Arc<Bus>, mmio: &Arc<Bus>) {
        for d in &self.devices {
            let relocator = Arc::new(Relocator {
                mappings: self.mappings.clone(),
                pio: Arc::downgrade(pio),
                mmio: Arc::downgrade(mmio),
                name: d.placed.id.clone(),
            });
            d.device
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .set_relocator(relocator);
        }
    }
}

/// mmaps `area` of the device file `fd`, for guest address `guest_address`.
fn map_area(
    fd: std::os::fd::RawFd,
    area: &MmapArea,
    guest_address: u64,
    slot: u32,
) -> io::Result<BarMapping> {
    let size = usize::try_from(area.size).map_err(io::Error::other)?;
    let offset = libc::off_t::try_from(area.file_offset).map_err(io::Error::other)?;
    // SAFETY: a new shared mapping of the device file; the kernel checks the range against
    // the region. It is unmapped by `unmap` only.
    #[allow(unsafe_code)]
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            offset,
        )
    };
    if host == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(BarMapping {
        slot,
        guest_address,
        size: area.size,
        host: host as usize,
        in_iommu: false,
    })
}

fn unmap(m: &BarMapping) {
    // SAFETY: `m.host` came from mmap with this size, and nothing refers to it any more
    // (its KVM slot and IOMMU entry are gone).
    #[allow(unsafe_code)]
    unsafe {
        libc::munmap(m.host as *mut libc::c_void, m.size as usize);
    }
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        for d in &self.devices {
            d.device
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .reset();
        }
        let mut list = self
            .mappings
            .list
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for m in list.iter_mut() {
            self.mappings.unmap_p2p(m);
            let _ = self.mappings.set_slot(m, 0);
            unmap(m);
        }
        list.clear();
        drop(list);
        if self.dma_mapped {
            if let Err(e) = self
                .mappings
                .container
                .vfio_unmap_guest_memory(&self.memory)
            {
                tracing::warn!("unmapping guest RAM from the IOMMU: {e}");
            }
        }
    }
}
