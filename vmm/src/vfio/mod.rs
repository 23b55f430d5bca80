//! VFIO passthrough, the host side. The VM's [`Container`]: opened when the first device
//! comes and kept for the VM's life, with all guest RAM DMA-mapped while it holds devices. Per device: the VFIO
//! device opened in it ([`Container::open_device`]) and its BARs mmapped into the guest
//! as KVM slots and, best effort, into the IOMMU for peer-to-peer DMA ([`BarMappings`]),
//! following the guest when it moves them. The checks made before anything is opened are
//! in [`host`]. The device manager decides when these happen; this module how.

mod host;

pub use host::{
    check_device, check_device_at, check_host, check_host_at, HostDevice, VfioHostError,
};

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use kvm_bindings::{
    kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO, kvm_userspace_memory_region,
};
use kvm_ioctls::VmFd;
use tessera_devices::bus::Bus;
use tessera_devices::interrupt::InterruptRouter;
use tessera_devices::pci::PciBarType;
use tessera_devices::vfio::{BarRelocator, MmapArea, VfioPciDevice};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::device_manager::memory_slots::MemorySlots;
use host::{fail, open_error};

/// The VM's VFIO container. Guest RAM is DMA-mapped into it whenever it holds a device:
/// the kernel sets up the IOMMU when the first group joins and drops it, mappings and
/// all, when the last one leaves.
pub struct Container {
    vm: Arc<VmFd>,
    container: Arc<VfioContainer>,
    memory: GuestMemoryMmap,
    /// Whether guest RAM is in the IOMMU now.
    ram_mapped: AtomicBool,
    /// Set once a peer-to-peer mapping has failed, so the warning is given once.
    p2p_warned: AtomicBool,
}

impl Container {
    /// Opens the container through KVM's VFIO device, for guest RAM `memory`, which must
    /// stay mapped until the container is dropped.
    pub fn open(vm: &Arc<VmFd>, memory: &GuestMemoryMmap) -> Result<Container, VfioHostError> {
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
        Ok(Container {
            vm: vm.clone(),
            container: Arc::new(container),
            memory: memory.clone(),
            ram_mapped: AtomicBool::new(false),
            p2p_warned: AtomicBool::new(false),
        })
    }

    /// DMA-maps all guest RAM, so devices can DMA anywhere the guest points them; once a
    /// device has joined (the IOMMU exists from then), and only if not mapped already.
    pub fn map_ram(&self) -> Result<(), VfioHostError> {
        if self.ram_mapped.load(Ordering::SeqCst) {
            return Ok(());
        }
        let start = Instant::now();
        // Pinning faults the pages in one by one on this thread; faulting them in first on
        // every CPU leaves pinning only pages that are there (issue 14: 1.26-1.43x QEMU).
        // A failure here is not fatal: the map below faults in whatever is missing.
        let threads = match crate::memory::populate_all(&self.memory) {
            Ok(threads) => threads,
            Err(e) => {
                tracing::warn!("prefaulting guest RAM before the DMA map: {e}");
                0
            }
        };
        let faulted = start.elapsed();
        // SAFETY: guest memory stays mapped until the container is dropped, which unmaps it
        // from the IOMMU first; the VMM touches it only through vm-memory's volatile
        // accessors, never through references the device's DMA could alias.
        #[allow(unsafe_code)]
        unsafe { self.container.vfio_map_guest_memory(&self.memory) }
            .map_err(|e| fail("devices", format!("DMA-mapping guest RAM: {e}")))?;
        self.ram_mapped.store(true, Ordering::SeqCst);
        // Guest RAM is in the IOMMU and the device open: a crash test's moment.
        crate::managed::kill_point("during-dma-map");
        let took = start.elapsed();
        let ram: u64 = self.memory.iter().map(|r| r.len()).sum();
        tracing::info!(
            "vfio: DMA-mapped {} MiB of guest RAM in {:.1} ms ({:.1} ms faulting it in on {threads} threads, then {:.1} ms mapping)",
            ram >> 20,
            took.as_secs_f64() * 1000.0,
            faulted.as_secs_f64() * 1000.0,
            (took - faulted).as_secs_f64() * 1000.0
        );
        Ok(())
    }

    /// Takes guest RAM out of the IOMMU while the last device leaves, on a thread of its
    /// own beside the device's close: vfio-pci resets the function then (100 ms or more),
    /// and unmapping 512 MiB takes ~50 ms, which that wait now covers. When the last
    /// group then leaves the container, the kernel unpins whatever is still mapped, so an
    /// unmap that loses that race has nothing left to do: its error is logged at debug.
    pub fn unmap_ram_as_last_device_leaves(&self) {
        if let Err(e) = self.unmap_ram() {
            tracing::debug!(
                "unmapping guest RAM from the IOMMU: {e} (the last group left first and the \
                 kernel unpinned it)"
            );
        }
    }

    /// Takes guest RAM out of the IOMMU if it is in it; the flag clears either way, since
    /// a failed unmap leaves nothing this container can undo.
    fn unmap_ram(&self) -> Result<(), vfio_ioctls::VfioError> {
        if self.ram_mapped.swap(false, Ordering::SeqCst) {
            self.container.vfio_unmap_guest_memory(&self.memory)?;
        }
        Ok(())
    }

    /// Opens the device [`check_device`] found as `host` and reads what it needs;
    /// `name` is for logs, `field` for errors.
    pub fn open_device(
        &self,
        host: &HostDevice,
        name: &str,
        field: &str,
        router: Arc<dyn InterruptRouter>,
    ) -> Result<VfioPciDevice, VfioHostError> {
        let device = VfioDevice::new(&host.sysfs, self.container.clone(), false)
            .map_err(|e| open_error(field, host, e))?;
        VfioPciDevice::new(name, Arc::new(device), router)
            .map_err(|e| fail(field, format!("{}: {e}", host.sysfs.display())))
    }

    fn set_slot(&self, m: &BarMapping, size: u64) -> io::Result<()> {
        let region = kvm_userspace_memory_region {
            slot: m.slot,
            flags: 0,
            guest_phys_addr: m.guest_address,
            memory_size: size,
            userspace_addr: m.host as u64,
        };
        // SAFETY: the slot points at a live mmap of the device's BAR owned by a
        // `BarMappings`, which removes the slot (size 0) before unmapping it.
        #[allow(unsafe_code)]
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    /// Best effort: lets other devices DMA to this BAR (peer to peer). An emulated IOMMU
    /// may refuse MMIO mappings (QEMU's VT-d does); the guest still boots, so say it once.
    fn map_p2p(&self, m: &mut BarMapping, device: &str) {
        // SAFETY: the range is a live mmap of device memory owned by a `BarMappings`,
        // unmapped from the IOMMU (unmap_p2p) before it is unmapped from this process; no
        // Rust reference to it exists.
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

impl Drop for Container {
    /// Guest RAM leaves the IOMMU before the container (and guest memory) go.
    fn drop(&mut self) {
        if let Err(e) = self.unmap_ram() {
            tracing::warn!("unmapping guest RAM from the IOMMU: {e}");
        }
    }
}

/// A part of a BAR mmapped from the device and given to the guest as a KVM slot.
struct BarMapping {
    slot: u32,
    guest_address: u64,
    size: u64,
    /// The mmap's address in this process.
    host: usize,
    /// Whether it is also in the IOMMU (peer-to-peer DMA), at `guest_address`.
    in_iommu: bool,
    /// Device memory: guest RAM at a fixed address, never moved with a BAR.
    fixed: bool,
}

/// One device's BARs mapped into the guest. [`BarMappings::unmap_all`] (or dropping it)
/// removes the KVM slots and IOMMU entries, unmaps the BARs and gives the slots back.
pub struct BarMappings {
    container: Arc<Container>,
    slots: Arc<Mutex<MemorySlots>>,
    name: String,
    list: Mutex<Vec<BarMapping>>,
}

impl BarMappings {
    /// Maps every area of `model`'s assigned BARs that may be mmapped, each into a KVM
    /// slot taken from `slots`. Fails leaving nothing mapped.
    pub fn map(
        container: &Arc<Container>,
        slots: &Arc<Mutex<MemorySlots>>,
        model: &VfioPciDevice,
        name: &str,
    ) -> Result<Arc<BarMappings>, String> {
        let mappings = Arc::new(BarMappings {
            container: container.clone(),
            slots: slots.clone(),
            name: name.to_string(),
            list: Mutex::new(Vec::new()),
        });
        for area in model.mmap_areas() {
            let Some((_, bar_base, _)) = model.bar_range(area.bar) else {
                continue;
            };
            let slot = slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .allocate()
                .map_err(|e| format!("BAR {}: {e}", area.bar))?;
            let mapped = map_area(model.device_fd(), &area, bar_base + area.bar_offset, slot);
            let mut mapping = match mapped {
                Ok(m) => m,
                Err(e) => {
                    mappings.release_slot(slot);
                    return Err(format!("mmapping BAR {}: {e}", area.bar));
                }
            };
            if let Err(e) = container.set_slot(&mapping, mapping.size) {
                unmap(&mapping);
                mappings.release_slot(slot);
                return Err(format!("KVM slot for BAR {}: {e}", area.bar));
            }
            container.map_p2p(&mut mapping, name);
            mappings.lock().push(mapping);
        }
        Ok(mappings)
    }

    /// Maps `area` (a BAR taken whole as device memory) as guest RAM at `guest_address`,
    /// in a KVM slot of its own, and best effort into the IOMMU at the same address, so
    /// devices can DMA to buffers the guest puts there. It stays there until
    /// [`BarMappings::unmap_all`]. Fails leaving nothing of it mapped.
    pub fn map_memory(
        &self,
        model: &VfioPciDevice,
        area: &MmapArea,
        guest_address: u64,
    ) -> Result<(), String> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .allocate()
            .map_err(|e| format!("device memory (BAR {}): {e}", area.bar))?;
        let mut mapping = match map_area(model.device_fd(), area, guest_address, slot) {
            Ok(m) => m,
            Err(e) => {
                self.release_slot(slot);
                return Err(format!("mmapping BAR {} as device memory: {e}", area.bar));
            }
        };
        mapping.fixed = true;
        if let Err(e) = self.container.set_slot(&mapping, mapping.size) {
            unmap(&mapping);
            self.release_slot(slot);
            return Err(format!(
                "KVM slot for BAR {} as device memory at {guest_address:#x}: {e}",
                area.bar
            ));
        }
        self.container.map_p2p(&mut mapping, &self.name);
        tracing::info!(
            "vfio: {}: BAR {} is guest RAM at {guest_address:#x}+{:#x}{}",
            self.name,
            area.bar,
            mapping.size,
            if mapping.in_iommu {
                ""
            } else {
                " (not in the IOMMU: devices cannot DMA to it)"
            }
        );
        self.lock().push(mapping);
        Ok(())
    }

    /// A relocator for the device's BARs, moving their bus ranges on `pio` and `mmio`
    /// (held weakly: the buses hold the device, which holds the relocator).
    pub fn relocator(self: &Arc<Self>, pio: &Arc<Bus>, mmio: &Arc<Bus>) -> Arc<dyn BarRelocator> {
        bus_relocator(self.clone(), pio, mmio)
    }

    /// Takes every BAR out of the guest and the IOMMU and unmaps it; the slots go back.
    pub fn unmap_all(&self) {
        let mut list = self.lock();
        for m in list.iter_mut() {
            self.container.unmap_p2p(m);
            let _ = self.container.set_slot(m, 0);
            unmap(m);
            self.release_slot(m.slot);
        }
        list.clear();
    }

    fn release_slot(&self, slot: u32) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release(slot);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<BarMapping>> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for BarMappings {
    fn drop(&mut self) {
        self.unmap_all();
    }
}

/// What follows a BAR besides its bus range: its KVM slots and IOMMU entries
/// ([`BarMappings`]; fakes in tests and fuzz targets).
pub trait BarMapper: Send + Sync {
    /// Moves the mappings of the BAR of `size` bytes at `old` to `new`.
    fn move_mappings(&self, old: u64, new: u64, size: u64) -> Result<(), String>;
}

impl BarMapper for BarMappings {
    /// All or nothing: when one mapping cannot move, those already moved go back, so
    /// the BAR stays whole where the device still has it.
    fn move_mappings(&self, old: u64, new: u64, size: u64) -> Result<(), String> {
        let mut list = self.lock();
        let inside =
            |b: &BarMapping| !b.fixed && b.guest_address >= old && b.guest_address - old < size;
        let mut moved = Vec::new();
        let mut failed = None;
        for (i, b) in list.iter_mut().enumerate().filter(|(_, b)| inside(b)) {
            let to = b.guest_address - old + new;
            if let Err(e) = self.move_one(b, to) {
                failed = Some(e);
                break;
            }
            moved.push(i);
        }
        let Some(e) = failed else { return Ok(()) };
        for i in moved {
            if let Some(b) = list.get_mut(i) {
                let back = b.guest_address - new + old;
                if let Err(undo) = self.move_one(b, back) {
                    tracing::error!("{}: putting a BAR mapping back failed: {undo}", self.name);
                }
            }
        }
        Err(e)
    }
}

impl BarMappings {
    /// Moves one mapping's KVM slot (and IOMMU entry) to guest address `to`; when the
    /// new slot is refused, the old one is put back.
    fn move_one(&self, b: &mut BarMapping, to: u64) -> Result<(), String> {
        self.container.unmap_p2p(b);
        if let Err(e) = self.container.set_slot(b, 0) {
            self.container.map_p2p(b, &self.name);
            return Err(format!("removing a KVM slot: {e}"));
        }
        let from = b.guest_address;
        b.guest_address = to;
        if let Err(e) = self.container.set_slot(b, b.size) {
            b.guest_address = from;
            if let Err(back) = self.container.set_slot(b, b.size) {
                tracing::error!(
                    "{}: restoring a KVM slot at {from:#x} failed: {back}",
                    self.name
                );
            }
            self.container.map_p2p(b, &self.name);
            return Err(format!("adding a KVM slot at {to:#x}: {e}"));
        }
        self.container.map_p2p(b, &self.name);
        Ok(())
    }
}

/// A [`BarRelocator`] that moves a BAR's range on `pio` (I/O BARs) or `mmio` and its
/// mappings in `mapper`. The buses are held weakly: they hold the device, which holds the
/// relocator.
pub fn bus_relocator(
    mapper: Arc<dyn BarMapper>,
    pio: &Arc<Bus>,
    mmio: &Arc<Bus>,
) -> Arc<dyn BarRelocator> {
    Arc::new(Relocator {
        mapper,
        pio: Arc::downgrade(pio),
        mmio: Arc::downgrade(mmio),
    })
}

/// Follows BAR moves: bus ranges, and KVM slots and IOMMU entries through a [`BarMapper`].
struct Relocator {
    mapper: Arc<dyn BarMapper>,
    pio: Weak<Bus>,
    mmio: Weak<Bus>,
}

impl BarRelocator for Relocator {
    fn relocate(&self, bar_type: PciBarType, old: u64, new: u64, size: u64) -> Result<(), String> {
        // I/O BARs are never mapped (they trap), and their port numbers may equal a
        // memory BAR's guest address: only memory BARs move mappings.
        let (bus, mapped) = match bar_type {
            PciBarType::Io => (&self.pio, false),
            _ => (&self.mmio, true),
        };
        let bus = bus.upgrade().ok_or("the VM is shutting down")?;
        // The bus range and the mappings move together or not at all: the device keeps
        // the BAR at `old` when this fails, and the next move starts from there.
        bus.relocate_with(old, new, || match mapped {
            true => self.mapper.move_mappings(old, new, size),
            false => Ok(()),
        })
        .map_err(|e| e.to_string())
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
        fixed: false,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tessera_devices::bus::BusDevice;

    struct Nothing;
    impl BusDevice for Nothing {
        fn read(&mut self, _: u64, _: &mut [u8]) {}
        fn write(&mut self, _: u64, _: &[u8]) {}
    }

    /// Records moves; refuses any move to `refuse`.
    struct Mapper {
        moves: Mutex<Vec<(u64, u64)>>,
        refuse: u64,
    }
    impl BarMapper for Mapper {
        fn move_mappings(&self, old: u64, new: u64, _size: u64) -> Result<(), String> {
            if new == self.refuse {
                return Err("refused".into());
            }
            self.moves.lock().unwrap().push((old, new));
            Ok(())
        }
    }

    /// Regressions (fuzz target vfio_config): a move whose mappings could not follow left
    /// the bus range moved; an I/O BAR move moved a memory BAR's mappings.
    #[test]
    fn bar_moves_are_all_or_nothing_and_io_moves_map_nothing() {
        let (pio, mmio) = (Arc::new(Bus::new()), Arc::new(Bus::new()));
        mmio.insert(0x1_0000_0000, 0x4000, Arc::new(Mutex::new(Nothing)))
            .unwrap();
        pio.insert(0xc000, 0x40, Arc::new(Mutex::new(Nothing)))
            .unwrap();
        let mapper = Arc::new(Mapper {
            moves: Mutex::new(Vec::new()),
            refuse: 0xffff_ffff_ffff_c000,
        });
        let relocator = bus_relocator(mapper.clone(), &pio, &mmio);
        let refused = relocator.relocate(
            PciBarType::Memory64,
            0x1_0000_0000,
            0xffff_ffff_ffff_c000,
            0x4000,
        );
        assert!(refused.is_err());
        assert_eq!(mmio.ranges(), vec![(0x1_0000_0000, 0x4000)]);
        relocator
            .relocate(PciBarType::Memory64, 0x1_0000_0000, 0x2_0000_0000, 0x4000)
            .unwrap();
        assert_eq!(mmio.ranges(), vec![(0x2_0000_0000, 0x4000)]);
        relocator
            .relocate(PciBarType::Io, 0xc000, 0xd000, 0x40)
            .unwrap();
        assert_eq!(pio.ranges(), vec![(0xd000, 0x40)]);
        assert_eq!(
            *mapper.moves.lock().unwrap(),
            vec![(0x1_0000_0000, 0x2_0000_0000)]
        );
    }
}
