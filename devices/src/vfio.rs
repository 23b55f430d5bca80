//! A PCI function passed through with VFIO, as the guest sees it: configuration space
//! read from the device with the parts the VMM must own virtualized (BARs and the ROM BAR
//! at guest addresses, the interrupt line, MSI and MSI-X), the BAR ranges that cannot be
//! mapped into the guest (MSI-X table and PBA pages, I/O BARs, regions VFIO will not let us
//! mmap) trapped and forwarded, and the device's interrupts wired to KVM: INTx through a
//! resampling irqfd, MSI and MSI-X through per-vector irqfds and MSI routes.
//!
//! The VFIO device itself is behind [`VfioDeviceIo`] (implemented for vfio-ioctls'
//! `VfioDevice`), so the emulation is tested without hardware. Mapping BARs into the guest
//! (mmap, KVM slots, IOMMU) is the VMM's: it asks [`VfioPciDevice::mmap_areas`] what to map,
//! and implements [`BarRelocator`] to follow the guest when it moves a BAR.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{debug, warn};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_ROM_REGION_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;
use crate::interrupt::InterruptRouter;
use crate::msi::{
    MsiCapability, MsiTransition, MsixCapability, MsixLocation, PCI_CAP_ID_MSI, PCI_CAP_ID_MSIX,
};
use crate::pci::{
    PciBar, PciBarType, PciConfiguration, PciDevice, PciError, PciIds, REG_BAR0, REG_CAPABILITIES,
    REG_COMMAND_STATUS, REG_HEADER_TYPE, REG_INTERRUPT,
};

/// Guest pages, the granularity of KVM slots and of VFIO mmaps.
pub const PAGE_SIZE: u64 = 4096;
/// The ROM's index among a device's BARs in [`VfioPciDevice`]'s BAR numbering (0..=5 are
/// the BARs).
pub const ROM_BAR: usize = 6;

/// Register 1: command (15:0), status (31:16).
const REG_COMMAND: usize = REG_COMMAND_STATUS;
/// Register 12: expansion ROM base address.
const REG_ROM: usize = 12;
/// Command register: I/O space decode.
const COMMAND_IO: u32 = 1;
/// Command register: memory space decode.
const COMMAND_MEMORY: u32 = 2;
/// Command register: bus master (the function may DMA).
const COMMAND_BUS_MASTER: u32 = 4;
/// Status register bit 4 (bit 20 of register 1): capability list present.
const STATUS_CAPABILITIES: u32 = 1 << 20;
/// ROM BAR bit 0: the ROM decodes.
const ROM_ENABLE: u32 = 1;
/// ROM BAR address bits (31:11).
const ROM_ADDRESS_MASK: u32 = 0xffff_f800;

/// One VFIO region, as the VMM needs to know it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// Bytes.
    pub size: u64,
    /// Where the region starts in the device file (for mmap).
    pub file_offset: u64,
    /// VFIO_REGION_INFO_FLAG_* bits.
    pub flags: u32,
    /// The parts that may be mmapped, as (offset, size); the whole region when VFIO gave
    /// no sparse-mmap list and allows mmap.
    pub mmap_areas: Vec<(u64, u64)>,
}

/// The VFIO device calls a passed-through function needs; implemented for vfio-ioctls'
/// [`VfioDevice`], and by fakes in tests.
pub trait VfioDeviceIo: Send + Sync {
    /// Region `index` (VFIO_PCI_*_REGION_INDEX), `None` when the device has none.
    fn region(&self, index: u32) -> Option<RegionInfo>;
    /// Reads `data.len()` bytes at `offset` of region `index`.
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` of region `index`.
    fn region_write(&self, index: u32, offset: u64, data: &[u8]);
    /// How many interrupts of type `index` (VFIO_PCI_*_IRQ_INDEX) the device has.
    fn irq_count(&self, index: u32) -> u32;
    /// Makes the device signal `events` for interrupts of type `index`.
    fn enable_irq(&self, index: u32, events: &[&EventFd]) -> io::Result<()>;
    /// Stops interrupts of type `index`.
    fn disable_irq(&self, index: u32) -> io::Result<()>;
    /// Unmasks INTx whenever `event` is written (the guest's EOI, via KVM's resampler).
    fn set_intx_unmask(&self, event: &EventFd) -> io::Result<()>;
    /// The device file, for mmap.
    fn raw_fd(&self) -> RawFd;
}

impl VfioDeviceIo for VfioDevice {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        let size = self.get_region_size(index);
        if size == 0 {
            return None;
        }
        let flags = self.get_region_flags(index);
        let mut mmap_areas = Vec::new();
        let mut sparse = false;
        for cap in self.get_region_caps(index) {
            if let VfioRegionInfoCap::SparseMmap(s) = cap {
                sparse = true;
                mmap_areas.extend(s.areas.iter().map(|a| (a.offset, a.size)));
            }
        }
        if flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            mmap_areas.clear();
        } else if !sparse {
            mmap_areas.push((0, size));
        }
        Some(RegionInfo {
            size,
            file_offset: self.get_region_offset(index),
            flags,
            mmap_areas,
        })
    }
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
        VfioDevice::region_read(self, index, data, offset);
    }
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
        VfioDevice::region_write(self, index, data, offset);
    }
    fn irq_count(&self, index: u32) -> u32 {
        self.get_irq_info(index).map_or(0, |i| i.count)
    }
    fn enable_irq(&self, index: u32, events: &[&EventFd]) -> io::Result<()> {
        VfioDevice::enable_irq(self, index, events.to_vec()).map_err(io::Error::other)
    }
    fn disable_irq(&self, index: u32) -> io::Result<()> {
        VfioDevice::disable_irq(self, index).map_err(io::Error::other)
    }
    fn set_intx_unmask(&self, event: &EventFd) -> io::Result<()> {
        self.set_irq_resample_fd(VFIO_PCI_INTX_IRQ_INDEX, vec![event])
            .map_err(io::Error::other)
    }
    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

/// Why a device cannot be passed through.
#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    /// VFIO exposes no configuration space for it.
    #[error("the device has no PCI configuration space region")]
    NoConfigSpace,
    /// It is not a type 0 (endpoint) function.
    #[error("header type {0:#x}: only endpoint functions (type 0) can be passed through")]
    HeaderType(u8),
    /// A BAR cannot be emulated.
    #[error("BAR {index}: {source}")]
    Bar {
        /// The BAR.
        index: usize,
        /// Why.
        #[source]
        source: PciError,
    },
    /// A BAR cannot be guest RAM (device memory).
    #[error("BAR {index} cannot be device memory: {reason}")]
    MemoryBar {
        /// The BAR.
        index: usize,
        /// Why.
        reason: String,
    },
    /// Setting up interrupts failed.
    #[error("interrupts: {0}")]
    Interrupts(#[source] io::Error),
}

/// A BAR the device needs guest address space for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRequest {
    /// BAR index, or [`ROM_BAR`].
    pub index: usize,
    /// What it decodes.
    pub bar_type: PciBarType,
    /// Bytes of guest address space (a power of two, at least what PCI allows).
    pub size: u64,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

/// A part of a BAR to mmap from the device file and map into the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapArea {
    /// BAR index.
    pub bar: usize,
    /// Offset in the BAR (page aligned).
    pub bar_offset: u64,
    /// Bytes (whole pages).
    pub size: u64,
    /// Offset in the device file.
    pub file_offset: u64,
}

/// Moves a BAR's guest mappings (KVM slots, bus ranges) when the guest reprograms it.
pub trait BarRelocator: Send + Sync {
    /// The BAR of `bar_type` and `size` bytes moved from `old` to `new`.
    fn relocate(&self, bar_type: PciBarType, old: u64, new: u64, size: u64) -> Result<(), String>;
}

/// A BAR as the guest sees it.
#[derive(Clone, Copy, Debug)]
struct BarState {
    request: BarRequest,
    /// Bytes the device really has (the BAR may be rounded up).
    region_size: u64,
    /// Where it is mapped now; `None` until assigned.
    mapped_at: Option<u64>,
}

/// INTx wiring: the device signals `trigger`, which raises `gsi`; KVM writes `unmask` at
/// the guest's EOI.
struct Intx {
    trigger: EventFd,
    unmask: EventFd,
    gsi: u32,
    enabled: bool,
}

/// A passed-through PCI function.
pub struct VfioPciDevice {
    name: String,
    io: Arc<dyn VfioDeviceIo>,
    router: Arc<dyn InterruptRouter>,
    /// The BAR registers as the guest programs them.
    bars_shadow: PciConfiguration,
    bars: [Option<BarState>; 7],
    /// ROM BAR register value.
    rom_register: u32,
    interrupt_line: u8,
    interrupt_pin: u8,
    msi: Option<MsiCapability>,
    msix: Option<MsixCapability>,
    intx: Option<Intx>,
    relocator: Option<Arc<dyn BarRelocator>>,
    /// BARs never mmapped into the guest (CH's `x_exclude_mmap_bars`): every access to
    /// them traps, for devices whose BARs misbehave when the guest reaches them directly.
    mmap_excluded: [bool; 6],
    /// Whether a BAR was taken as guest RAM ([`VfioPciDevice::take_memory_bar`]): memory
    /// decoding then stays on whatever the guest writes to the command register, since
    /// vfio-pci revokes the BAR's mmap (and the guest's RAM with it) when it goes off.
    keeps_memory_decode: bool,
    /// With `keeps_memory_decode`: the memory-decode bit as the guest last wrote it, which
    /// is what it reads back and what decides whether its other BARs decode.
    guest_memory_decode: bool,
}

impl VfioPciDevice {
    /// Reads the device's configuration space and works out what it needs. `name` is used
    /// in logs.
    pub fn new(
        name: &str,
        io: Arc<dyn VfioDeviceIo>,
        router: Arc<dyn InterruptRouter>,
    ) -> Result<Self, VfioPciError> {
        if io.region(VFIO_PCI_CONFIG_REGION_INDEX).is_none() {
            return Err(VfioPciError::NoConfigSpace);
        }
        let read32 = |reg: usize| {
            let mut b = [0u8; 4];
            io.region_read(VFIO_PCI_CONFIG_REGION_INDEX, reg as u64 * 4, &mut b);
            u32::from_le_bytes(b)
        };
        let header_type = ((read32(REG_HEADER_TYPE) >> 16) & 0x7f) as u8;
        if header_type != 0 {
            return Err(VfioPciError::HeaderType(header_type));
        }

        let mut bars: [Option<BarState>; 7] = [None; 7];
        let mut index = 0;
        while index < 6 {
            let register = read32(REG_BAR0 + index);
            let is_io = register & 1 != 0;
            let is_64 = !is_io && (register >> 1) & 3 == 2;
            let region = io.region(VFIO_PCI_BAR0_REGION_INDEX + index as u32);
            if let (Some(region), Some(slot)) = (region, bars.get_mut(index)) {
                let min = if is_io { 4 } else { 16 };
                let bar_type = match (is_io, is_64) {
                    (true, _) => PciBarType::Io,
                    (false, true) => PciBarType::Memory64,
                    (false, false) => PciBarType::Memory32,
                };
                *slot = Some(BarState {
                    request: BarRequest {
                        index,
                        bar_type,
                        size: region.size.max(min).next_power_of_two(),
                        prefetchable: !is_io && register & 8 != 0,
                    },
                    region_size: region.size,
                    mapped_at: None,
                });
            }
            index += if is_64 { 2 } else { 1 };
        }
        if let Some(rom) = io.region(VFIO_PCI_ROM_REGION_INDEX) {
            bars[ROM_BAR] = Some(BarState {
                request: BarRequest {
                    index: ROM_BAR,
                    bar_type: PciBarType::Memory32,
                    size: rom.size.max(2048).next_power_of_two(),
                    prefetchable: false,
                },
                region_size: rom.size,
                mapped_at: None,
            });
        }

        let interrupt = read32(REG_INTERRUPT);
        let has_intx = io.irq_count(VFIO_PCI_INTX_IRQ_INDEX) > 0;
        let interrupt_pin = if has_intx {
            ((interrupt >> 8) & 0xff) as u8
        } else {
            0
        };

        let mut msi = None;
        let mut msix = None;
        if read32(REG_COMMAND) & STATUS_CAPABILITIES != 0 {
            let mut offset = (read32(REG_CAPABILITIES) & 0xfc) as usize;
            // A corrupt list could loop: there is room for at most 48 capabilities.
            for _ in 0..48 {
                if offset < 0x40 {
                    break;
                }
                let header = read32(offset / 4);
                let id = (header & 0xff) as u8;
                let mut bytes = [0u8; 24];
                io.region_read(VFIO_PCI_CONFIG_REGION_INDEX, offset as u64, &mut bytes);
                if id == PCI_CAP_ID_MSI && io.irq_count(VFIO_PCI_MSI_IRQ_INDEX) > 0 {
                    msi = Some(
                        MsiCapability::new(offset, &bytes, router.clone())
                            .map_err(VfioPciError::Interrupts)?,
                    );
                } else if id == PCI_CAP_ID_MSIX && io.irq_count(VFIO_PCI_MSIX_IRQ_INDEX) > 0 {
                    msix = Some(
                        MsixCapability::new(offset, &bytes, router.clone())
                            .map_err(VfioPciError::Interrupts)?,
                    );
                }
                offset = ((header >> 8) & 0xfc) as usize;
            }
        }

        Ok(VfioPciDevice {
            name: name.to_string(),
            io,
            router,
            bars_shadow: PciConfiguration::new(PciIds::default()),
            bars,
            rom_register: 0,
            interrupt_line: 0,
            interrupt_pin,
            msi,
            msix,
            intx: None,
            relocator: None,
            mmap_excluded: [false; 6],
            keeps_memory_decode: false,
            guest_memory_decode: false,
        })
    }

    /// Takes memory BAR `index` out of the device as the guest sees it, to be guest RAM
    /// (a device-memory NUMA node): the BAR register then reads 0 and sizes as 0 (an
    /// unimplemented BAR), so the guest's driver neither maps it nor moves it, no guest
    /// address space is requested for it, and no access traps. Memory decoding is
    /// turned on now and kept on. Refused unless the BAR is `size` bytes of memory that
    /// VFIO lets the VMM mmap whole, without MSI-X structures in it. Returns what to mmap.
    pub fn take_memory_bar(&mut self, index: usize, size: u64) -> Result<MmapArea, VfioPciError> {
        let refuse = |reason: String| VfioPciError::MemoryBar { index, reason };
        let state = self
            .bars
            .get(index)
            .filter(|_| index != ROM_BAR)
            .copied()
            .flatten()
            .ok_or_else(|| refuse("the device has no such BAR".into()))?;
        if state.request.bar_type == PciBarType::Io {
            return Err(refuse("it is an I/O BAR".into()));
        }
        if self.msix_locations().iter().any(|l| l.bar == index) {
            return Err(refuse("it holds the MSI-X table or PBA".into()));
        }
        let region = self
            .io
            .region(VFIO_PCI_BAR0_REGION_INDEX + index as u32)
            .ok_or_else(|| refuse("VFIO gives no region for it".into()))?;
        if region.size != size {
            return Err(refuse(format!(
                "VFIO's region is {:#x} bytes, sysfs said {size:#x}",
                region.size
            )));
        }
        if region.mmap_areas != [(0, region.size)] {
            return Err(refuse(format!(
                "VFIO does not let it be mmapped whole (mmappable parts: {:?})",
                region.mmap_areas
            )));
        }
        if let Some(slot) = self.bars.get_mut(index) {
            *slot = None;
        }
        let mut command = [0u8; 2];
        self.io.region_read(
            VFIO_PCI_CONFIG_REGION_INDEX,
            REG_COMMAND as u64 * 4,
            &mut command,
        );
        if !self.keeps_memory_decode {
            self.guest_memory_decode = u16::from_le_bytes(command) & COMMAND_MEMORY as u16 != 0;
        }
        self.keeps_memory_decode = true;
        let on = u16::from_le_bytes(command) | COMMAND_MEMORY as u16;
        self.io.region_write(
            VFIO_PCI_CONFIG_REGION_INDEX,
            REG_COMMAND as u64 * 4,
            &on.to_le_bytes(),
        );
        Ok(MmapArea {
            bar: index,
            bar_offset: 0,
            size: region.size,
            file_offset: region.file_offset,
        })
    }

    /// Keeps `bars` (indexes 0..=5; others name no BAR and are ignored) out of
    /// [`VfioPciDevice::mmap_areas`]: the guest's accesses to them all trap and are
    /// forwarded to the device.
    pub fn exclude_from_mmap(&mut self, bars: &[u64]) {
        for &bar in bars {
            if let Some(excluded) = usize::try_from(bar)
                .ok()
                .and_then(|b| self.mmap_excluded.get_mut(b))
            {
                *excluded = true;
            }
        }
    }

    /// The BARs (and ROM) that need guest address space.
    pub fn bar_requests(&self) -> Vec<BarRequest> {
        self.bars.iter().flatten().map(|b| b.request).collect()
    }

    /// The legacy interrupt pin (0 = none, 1..=4 = INTA#..INTD#).
    pub fn interrupt_pin(&self) -> u8 {
        self.interrupt_pin
    }

    /// Places BAR `index` (or [`ROM_BAR`]) at guest `address`, aligned to its size.
    pub fn assign_bar(&mut self, index: usize, address: u64) -> Result<(), VfioPciError> {
        let Some(state) = self.bars.get_mut(index).and_then(Option::as_mut) else {
            return Err(VfioPciError::Bar {
                index,
                source: PciError::BarIndex { index },
            });
        };
        if index == ROM_BAR {
            if address & (state.request.size - 1) != 0 || address > u64::from(u32::MAX) {
                return Err(VfioPciError::Bar {
                    index,
                    source: PciError::BarAlignment {
                        index,
                        address,
                        size: state.request.size,
                    },
                });
            }
            self.rom_register = address as u32;
        } else {
            self.bars_shadow
                .add_bar(&PciBar {
                    index,
                    bar_type: state.request.bar_type,
                    address,
                    size: state.request.size,
                    prefetchable: state.request.prefetchable,
                })
                .map_err(|source| VfioPciError::Bar { index, source })?;
        }
        state.mapped_at = Some(address);
        Ok(())
    }

    /// Where BAR `index` (or [`ROM_BAR`]) is mapped, with its size.
    pub fn bar_range(&self, index: usize) -> Option<(PciBarType, u64, u64)> {
        let s = self.bars.get(index)?.as_ref()?;
        Some((s.request.bar_type, s.mapped_at?, s.request.size))
    }

    /// Follows the guest's BAR moves through `relocator`.
    pub fn set_relocator(&mut self, relocator: Arc<dyn BarRelocator>) {
        self.relocator = Some(relocator);
    }

    /// The MSI-X table and PBA, when the device has MSI-X.
    fn msix_locations(&self) -> Vec<MsixLocation> {
        self.msix
            .as_ref()
            .map(|m| vec![m.table(), m.pba()])
            .unwrap_or_default()
    }

    /// The parts of memory BARs the guest may reach directly: what VFIO lets us mmap,
    /// whole pages only, minus the pages holding the MSI-X table and PBA (which are
    /// emulated) and the BARs excluded with [`VfioPciDevice::exclude_from_mmap`].
    pub fn mmap_areas(&self) -> Vec<MmapArea> {
        let mut out = Vec::new();
        for state in self.bars.iter().flatten() {
            let index = state.request.index;
            if index == ROM_BAR
                || state.request.bar_type == PciBarType::Io
                || self.mmap_excluded.get(index).copied().unwrap_or(false)
            {
                continue;
            }
            let Some(region) = self.io.region(VFIO_PCI_BAR0_REGION_INDEX + index as u32) else {
                continue;
            };
            let holes: Vec<(u64, u64)> = self
                .msix_locations()
                .into_iter()
                .filter(|l| l.bar == index)
                .map(|l| {
                    let start = l.offset / PAGE_SIZE * PAGE_SIZE;
                    let end = (l.offset + l.size).div_ceil(PAGE_SIZE) * PAGE_SIZE;
                    (start, end)
                })
                .collect();
            for &(offset, size) in &region.mmap_areas {
                // Whole pages inside the area.
                let start = offset.div_ceil(PAGE_SIZE) * PAGE_SIZE;
                let end = (offset + size).min(region.size) / PAGE_SIZE * PAGE_SIZE;
                for (s, e) in subtract(start, end, &holes) {
                    out.push(MmapArea {
                        bar: index,
                        bar_offset: s,
                        size: e - s,
                        file_offset: region.file_offset + s,
                    });
                }
            }
        }
        out
    }

    /// The device file, for the VMM's mmaps.
    pub fn device_fd(&self) -> RawFd {
        self.io.raw_fd()
    }

    /// Wires INTx to level-triggered `gsi`, when the device has INTx.
    pub fn enable_intx(&mut self, gsi: u32) -> Result<(), VfioPciError> {
        if self.interrupt_pin == 0 {
            return Ok(());
        }
        let trigger = EventFd::new(EFD_NONBLOCK).map_err(VfioPciError::Interrupts)?;
        let unmask = EventFd::new(EFD_NONBLOCK).map_err(VfioPciError::Interrupts)?;
        self.router
            .register_resample_irqfd(&trigger, &unmask, gsi)
            .map_err(VfioPciError::Interrupts)?;
        self.interrupt_line = gsi as u8;
        self.intx = Some(Intx {
            trigger,
            unmask,
            gsi,
            enabled: false,
        });
        self.set_intx(true).map_err(VfioPciError::Interrupts)
    }

    /// Starts or stops INTx at the device (it must be off while MSI or MSI-X is on).
    fn set_intx(&mut self, on: bool) -> io::Result<()> {
        let Some(intx) = self.intx.as_mut() else {
            return Ok(());
        };
        if intx.enabled == on {
            return Ok(());
        }
        if on {
            self.io
                .enable_irq(VFIO_PCI_INTX_IRQ_INDEX, &[&intx.trigger])?;
            self.io.set_intx_unmask(&intx.unmask)?;
        } else {
            self.io.disable_irq(VFIO_PCI_INTX_IRQ_INDEX)?;
        }
        intx.enabled = on;
        Ok(())
    }

    /// Stops the function before it leaves the VM: its interrupts off, and decoding and
    /// bus mastering off in the physical command register, so it neither signals nor
    /// DMAs while its mappings go. No reset here: vfio-pci resets the function when its
    /// file closes, which follows, and a second reset would cost another function-level
    /// reset's 100 ms (measured: 110 ms of a hot-removal's 480).
    pub fn quiesce(&mut self) {
        self.stop_interrupts();
        let mut command = [0u8; 2];
        self.io.region_read(
            VFIO_PCI_CONFIG_REGION_INDEX,
            REG_COMMAND as u64 * 4,
            &mut command,
        );
        let off = u16::from_le_bytes(command)
            & !((COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER) as u16);
        self.io.region_write(
            VFIO_PCI_CONFIG_REGION_INDEX,
            REG_COMMAND as u64 * 4,
            &off.to_le_bytes(),
        );
    }

    fn stop_interrupts(&mut self) {
        if self.msix.as_ref().is_some_and(MsixCapability::enabled) {
            let _ = self.io.disable_irq(VFIO_PCI_MSIX_IRQ_INDEX);
        }
        if self.msi.as_ref().is_some_and(MsiCapability::enabled) {
            let _ = self.io.disable_irq(VFIO_PCI_MSI_IRQ_INDEX);
        }
        let _ = self.set_intx(false);
    }

    fn read_device(&self, offset: u64, data: &mut [u8]) {
        self.io
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, offset, data);
    }

    /// The command/status register as the guest sees it: the device's, but for the
    /// memory-decode bit the VMM keeps on under a BAR taken as guest RAM.
    fn guest_command(&self) -> u32 {
        let command = self.read_device_register(REG_COMMAND);
        if !self.keeps_memory_decode {
            return command;
        }
        let guest = if self.guest_memory_decode {
            COMMAND_MEMORY
        } else {
            0
        };
        (command & !COMMAND_MEMORY) | guest
    }

    fn read_device_register(&self, reg: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read_device(reg as u64 * 4, &mut b);
        u32::from_le_bytes(b)
    }

    /// Acts on an MSI or MSI-X enable bit the guest flipped.
    fn msi_transition(&mut self, index: u32, transition: MsiTransition) {
        let result = match transition {
            MsiTransition::None => return,
            MsiTransition::Enabled => self.set_intx(false).and_then(|()| {
                let events = match index {
                    VFIO_PCI_MSIX_IRQ_INDEX => self.msix.as_ref().map(MsixCapability::events),
                    _ => self.msi.as_ref().map(MsiCapability::events),
                }
                .unwrap_or_default();
                self.io.enable_irq(index, &events)
            }),
            MsiTransition::Disabled => self
                .io
                .disable_irq(index)
                .and_then(|()| self.set_intx(true)),
        };
        if let Err(e) = result {
            warn!(device = %self.name, "switching interrupts ({transition:?}, VFIO index {index}) failed: {e}");
        }
    }

    /// After a BAR or command write: when a BAR decodes at a new address, move its mappings.
    fn follow_bars(&mut self) {
        let command = self.guest_command();
        for index in 0..self.bars.len() {
            let Some(state) = self.bars.get(index).copied().flatten() else {
                continue;
            };
            let (decoding, address) = if index == ROM_BAR {
                (
                    command & COMMAND_MEMORY != 0 && self.rom_register & ROM_ENABLE != 0,
                    u64::from(self.rom_register & ROM_ADDRESS_MASK),
                )
            } else {
                let decode_bit = match state.request.bar_type {
                    PciBarType::Io => COMMAND_IO,
                    _ => COMMAND_MEMORY,
                };
                let Some(address) = self.bars_shadow.bar_address(index) else {
                    continue;
                };
                (command & decode_bit != 0, address)
            };
            let Some(old) = state.mapped_at else { continue };
            if !decoding || address == old || address == 0 {
                continue;
            }
            let moved = match &self.relocator {
                Some(r) => r.relocate(state.request.bar_type, old, address, state.request.size),
                None => Err("BARs cannot move in this VM".to_string()),
            };
            match moved {
                Ok(()) => {
                    debug!(device = %self.name, index, "BAR moved from {old:#x} to {address:#x}");
                    if let Some(Some(s)) = self.bars.get_mut(index) {
                        s.mapped_at = Some(address);
                    }
                }
                Err(e) => warn!(
                    device = %self.name,
                    index, "the guest moved a BAR from {old:#x} to {address:#x}, which failed: {e}"
                ),
            }
        }
    }

    /// A trapped guest read at `offset` of BAR `bar` (or [`ROM_BAR`]).
    pub fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if let Some(msix) = &self.msix {
            let (table, pba) = (msix.table(), msix.pba());
            if let Some(at) = within(table, bar, offset, data.len()) {
                return msix.read_table(at, data);
            }
            if let Some(at) = within(pba, bar, offset, data.len()) {
                return msix.read_pba(at, data);
            }
        }
        let Some(state) = self.bars.get(bar).copied().flatten() else {
            return data.fill(0xff);
        };
        if offset + data.len() as u64 > state.region_size {
            // The part of a rounded-up BAR the device does not have.
            return data.fill(0xff);
        }
        let region = if bar == ROM_BAR {
            VFIO_PCI_ROM_REGION_INDEX
        } else {
            VFIO_PCI_BAR0_REGION_INDEX + bar as u32
        };
        self.io.region_read(region, offset, data);
    }

    /// A trapped guest write at `offset` of BAR `bar`.
    pub fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if let Some(msix) = &mut self.msix {
            let (table, pba) = (msix.table(), msix.pba());
            if let Some(at) = within(table, bar, offset, data.len()) {
                if let Err(e) = msix.write_table(at, data) {
                    warn!(device = %self.name, "MSI-X table write failed: {e}");
                }
                return;
            }
            if within(pba, bar, offset, data.len()).is_some() {
                return;
            }
        }
        let Some(state) = self.bars.get(bar).copied().flatten() else {
            return;
        };
        if bar == ROM_BAR || offset + data.len() as u64 > state.region_size {
            return;
        }
        self.io
            .region_write(VFIO_PCI_BAR0_REGION_INDEX + bar as u32, offset, data);
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        self.stop_interrupts();
        if let Some(intx) = self.intx.take() {
            // The GSI wired at enable_intx, not the interrupt line: the guest may have
            // written anything there since.
            let _ = self.router.unregister_irqfd(&intx.trigger, intx.gsi);
        }
    }
}

/// The offset into `location` of an access at `offset` of BAR `bar`, when the access
/// lies inside it.
fn within(location: MsixLocation, bar: usize, offset: u64, len: usize) -> Option<u64> {
    let end = offset.checked_add(len as u64)?;
    (location.bar == bar && offset >= location.offset && end <= location.offset + location.size)
        .then(|| offset - location.offset)
}

/// `[start, end)` minus the `holes`, as sorted disjoint ranges.
fn subtract(start: u64, end: u64, holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut pieces = vec![(start, end)];
    for &(hs, he) in holes {
        pieces = pieces
            .into_iter()
            .flat_map(|(s, e)| {
                if he <= s || hs >= e {
                    vec![(s, e)]
                } else {
                    [(s, hs.max(s)), (he.min(e), e)]
                        .into_iter()
                        .filter(|(a, b)| a < b)
                        .collect()
                }
            })
            .collect();
    }
    pieces.retain(|(s, e)| s < e);
    pieces
}

impl PciDevice for VfioPciDevice {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        let at = reg * 4;
        if let Some(msi) = self.msi.as_ref().filter(|m| m.contains(at)) {
            let mut b = [0u8; 4];
            msi.read(at, &mut b);
            return u32::from_le_bytes(b);
        }
        if let Some(msix) = self.msix.as_ref().filter(|m| m.contains(at)) {
            let mut b = [0u8; 4];
            msix.read(at, &mut b);
            return u32::from_le_bytes(b);
        }
        match reg {
            // Only function 0 is given to the guest: never claim more functions.
            REG_HEADER_TYPE => self.read_device_register(reg) & !(0x80 << 16),
            r if (REG_BAR0..REG_BAR0 + 6).contains(&r) => self.bars_shadow.read_register(r),
            REG_COMMAND => self.guest_command(),
            // CardBus CIS pointer: not ours to show.
            10 => 0,
            REG_ROM => {
                if self.bars[ROM_BAR].is_some() {
                    self.rom_register
                } else {
                    0
                }
            }
            REG_INTERRUPT => {
                (self.read_device_register(reg) & 0xffff_0000)
                    | u32::from(self.interrupt_pin) << 8
                    | u32::from(self.interrupt_line)
            }
            _ => self.read_device_register(reg),
        }
    }

    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        let at = reg * 4 + offset as usize;
        if let Some(msi) = self.msi.as_mut().filter(|m| m.contains(at)) {
            match msi.write(at, data) {
                Ok(t) => self.msi_transition(VFIO_PCI_MSI_IRQ_INDEX, t),
                Err(e) => warn!(device = %self.name, "MSI update failed: {e}"),
            }
            return;
        }
        if let Some(msix) = self.msix.as_mut().filter(|m| m.contains(at)) {
            match msix.write(at, data) {
                Ok(t) => self.msi_transition(VFIO_PCI_MSIX_IRQ_INDEX, t),
                Err(e) => warn!(device = %self.name, "MSI-X update failed: {e}"),
            }
            return;
        }
        match reg {
            r if (REG_BAR0..REG_BAR0 + 6).contains(&r) => {
                self.bars_shadow.write_register(r, offset, data);
                self.follow_bars();
            }
            REG_ROM => {
                let Some(state) = self.bars[ROM_BAR] else {
                    return;
                };
                let Some((lanes, value)) = crate::pci::write_dword_value(offset, data) else {
                    return;
                };
                let writable = (!(state.request.size as u32 - 1) & ROM_ADDRESS_MASK) | ROM_ENABLE;
                let mask = writable & lanes;
                self.rom_register = (self.rom_register & !mask) | (value & mask);
                self.follow_bars();
            }
            REG_INTERRUPT => {
                if offset == 0 {
                    if let Some(&line) = data.first() {
                        self.interrupt_line = line;
                    }
                }
            }
            // Read-only or emulated: identification, CardBus, subsystem, capability pointer.
            0 | 2 | 10 | 11 | 13 | 14 => {}
            _ => {
                let mut data = data.to_vec();
                if reg == REG_COMMAND && offset == 0 && self.keeps_memory_decode {
                    if let Some(low) = data.first_mut() {
                        self.guest_memory_decode = *low & COMMAND_MEMORY as u8 != 0;
                        *low |= COMMAND_MEMORY as u8;
                    }
                }
                self.io
                    .region_write(VFIO_PCI_CONFIG_REGION_INDEX, at as u64, &data);
                if reg == REG_COMMAND && offset < 2 {
                    self.follow_bars();
                }
            }
        }
    }
}

/// A bus device forwarding trapped accesses of one BAR to its [`VfioPciDevice`].
pub struct VfioBarTrap {
    device: Arc<Mutex<VfioPciDevice>>,
    bar: usize,
}

impl VfioBarTrap {
    /// Traps BAR `bar` (or [`ROM_BAR`]) of `device`.
    pub fn new(device: Arc<Mutex<VfioPciDevice>>, bar: usize) -> Self {
        VfioBarTrap { device, bar }
    }
}

impl BusDevice for VfioBarTrap {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bar_read(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bar_write(self.bar, offset, data);
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A device with: BAR0 64-bit memory, 16 KiB, holding a 4-entry MSI-X table at 0x2000
    /// and the PBA at 0x3000; BAR2 8 bytes of I/O; INTA#; and a log of what was asked.
    struct FakeDevice {
        config: Mutex<Vec<u8>>,
        log: Mutex<Vec<String>>,
        regions: BTreeMap<u32, RegionInfo>,
    }

    impl FakeDevice {
        fn new() -> Arc<Self> {
            Self::build(false)
        }
        /// As [`FakeDevice::new`], plus BAR4: 128 MiB of 32-bit memory, mmappable whole.
        fn with_memory_bar4() -> Arc<Self> {
            Self::build(true)
        }
        fn build(bar4: bool) -> Arc<Self> {
            let mut c = vec![0u8; 256];
            c[0..4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
            c[0x06] = 0x10; // status: capability list
            c[0x0e] = 0x80; // header type 0, multi-function
            c[0x10] = 0b0100; // BAR0 64-bit memory
            c[0x18] = 0b01; // BAR2 I/O
            c[0x34] = 0x40;
            c[0x3d] = 1; // INTA#
                         // MSI-X at 0x40: 4 entries, table BAR0+0x2000, PBA BAR0+0x3000.
            c[0x40..0x4c].copy_from_slice(&[0x11, 0, 3, 0, 0, 0x20, 0, 0, 0, 0x30, 0, 0]);
            let mut regions = BTreeMap::new();
            let region = |size, file_offset, mmap: bool| RegionInfo {
                size,
                file_offset,
                flags: if mmap { VFIO_REGION_INFO_FLAG_MMAP } else { 0 },
                mmap_areas: if mmap { vec![(0, size)] } else { vec![] },
            };
            regions.insert(VFIO_PCI_BAR0_REGION_INDEX, region(0x4000, 0x1_0000, true));
            regions.insert(VFIO_PCI_BAR0_REGION_INDEX + 2, region(8, 0x2_0000, false));
            regions.insert(VFIO_PCI_CONFIG_REGION_INDEX, region(256, 0x7_0000, false));
            if bar4 {
                regions.insert(
                    VFIO_PCI_BAR0_REGION_INDEX + 4,
                    region(128 << 20, 0x100_0000, true),
                );
            }
            Arc::new(FakeDevice {
                config: Mutex::new(c),
                log: Mutex::new(Vec::new()),
                regions,
            })
        }
        fn log(&self) -> Vec<String> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }
    }

    impl VfioDeviceIo for FakeDevice {
        fn region(&self, index: u32) -> Option<RegionInfo> {
            self.regions.get(&index).cloned()
        }
        fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
            if index == VFIO_PCI_CONFIG_REGION_INDEX {
                let c = self.config.lock().unwrap();
                let o = offset as usize;
                data.copy_from_slice(&c[o..o + data.len()]);
            } else {
                self.log
                    .lock()
                    .unwrap()
                    .push(format!("read {index} {offset:#x}"));
                data.fill(0xab);
            }
        }
        fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
            if index == VFIO_PCI_CONFIG_REGION_INDEX {
                let mut c = self.config.lock().unwrap();
                let o = offset as usize;
                c[o..o + data.len()].copy_from_slice(data);
            } else {
                self.log
                    .lock()
                    .unwrap()
                    .push(format!("write {index} {offset:#x} {data:?}"));
            }
        }
        fn irq_count(&self, index: u32) -> u32 {
            match index {
                VFIO_PCI_INTX_IRQ_INDEX => 1,
                VFIO_PCI_MSIX_IRQ_INDEX => 4,
                _ => 0,
            }
        }
        fn enable_irq(&self, index: u32, events: &[&EventFd]) -> io::Result<()> {
            self.log
                .lock()
                .unwrap()
                .push(format!("enable {index} x{}", events.len()));
            Ok(())
        }
        fn disable_irq(&self, index: u32) -> io::Result<()> {
            self.log.lock().unwrap().push(format!("disable {index}"));
            Ok(())
        }
        fn set_intx_unmask(&self, _: &EventFd) -> io::Result<()> {
            self.log.lock().unwrap().push("unmask".into());
            Ok(())
        }
        fn raw_fd(&self) -> RawFd {
            -1
        }
    }

    #[derive(Default)]
    struct NullRouter(Mutex<u32>);
    impl InterruptRouter for NullRouter {
        fn allocate_gsi(&self) -> io::Result<u32> {
            let mut n = self.0.lock().unwrap();
            *n += 1;
            Ok(100 + *n)
        }
        fn release_gsi(&self, _: u32) {}
        fn set_msi_route(&self, _: u32, _: &crate::interrupt::MsiMessage) -> io::Result<()> {
            Ok(())
        }
        fn register_irqfd(&self, _: &EventFd, _: u32) -> io::Result<()> {
            Ok(())
        }
        fn unregister_irqfd(&self, _: &EventFd, _: u32) -> io::Result<()> {
            Ok(())
        }
        fn register_resample_irqfd(&self, _: &EventFd, _: &EventFd, _: u32) -> io::Result<()> {
            Ok(())
        }
    }

    #[derive(Default)]
    struct Moves(Mutex<Vec<(u64, u64, u64)>>);
    impl BarRelocator for Moves {
        fn relocate(&self, _: PciBarType, old: u64, new: u64, size: u64) -> Result<(), String> {
            self.0.lock().unwrap().push((old, new, size));
            Ok(())
        }
    }

    fn device() -> (Arc<FakeDevice>, VfioPciDevice) {
        let fake = FakeDevice::new();
        let mut d =
            VfioPciDevice::new("test", fake.clone(), Arc::new(NullRouter::default())).unwrap();
        d.assign_bar(0, 0x1_0000_0000).unwrap();
        d.assign_bar(2, 0x1000).unwrap();
        (fake, d)
    }

    #[test]
    fn a_memory_bar_taken_as_guest_ram_is_hidden_and_keeps_decoding() {
        let fake = FakeDevice::with_memory_bar4();
        let mut d =
            VfioPciDevice::new("test", fake.clone(), Arc::new(NullRouter::default())).unwrap();
        let refused = |d: &mut VfioPciDevice, bar, size| match d.take_memory_bar(bar, size) {
            Err(VfioPciError::MemoryBar { reason, .. }) => reason,
            other => panic!("BAR {bar}: {other:?}"),
        };
        assert!(refused(&mut d, 0, 0x4000).contains("MSI-X"));
        assert!(refused(&mut d, 2, 8).contains("I/O"));
        assert!(refused(&mut d, 1, 0).contains("no such BAR"));
        assert!(refused(&mut d, ROM_BAR, 0).contains("no such BAR"));
        assert!(refused(&mut d, 4, 64 << 20).contains("sysfs said"));
        let area = d.take_memory_bar(4, 128 << 20).unwrap();
        assert_eq!(
            area,
            MmapArea {
                bar: 4,
                bar_offset: 0,
                size: 128 << 20,
                file_offset: 0x100_0000
            }
        );
        // Gone from what the guest sees: no request, no mapping, the register reads 0
        // and sizes as 0.
        assert!(d.bar_requests().iter().all(|r| r.index != 4));
        assert!(d.mmap_areas().iter().all(|a| a.bar != 4));
        d.write_config_register(REG_BAR0 + 4, 0, &[0xff; 4]);
        assert_eq!(d.read_config_register(REG_BAR0 + 4), 0);
        // Decoding is on, and stays on when the guest turns it off.
        assert_eq!(fake.config.lock().unwrap()[4] & COMMAND_MEMORY as u8, 2);
        d.write_config_register(REG_COMMAND, 0, &[0x04, 0]);
        assert_eq!(fake.config.lock().unwrap()[4], 0x04 | COMMAND_MEMORY as u8);
        // The guest reads back what it wrote.
        assert_eq!(d.read_config_register(REG_COMMAND) & 0xffff, 0x04);
        d.write_config_register(REG_COMMAND, 0, &[0x06, 0]);
        assert_eq!(d.read_config_register(REG_COMMAND) & 0xffff, 0x06);
        // A BAR that is not whole-mmappable is refused.
        let mut d =
            VfioPciDevice::new("test", FakeDevice::new(), Arc::new(NullRouter::default())).unwrap();
        assert!(refused(&mut d, 4, 128 << 20).contains("no such BAR"));
    }

    #[test]
    fn bars_are_emulated_and_sized() {
        let (_, mut d) = device();
        assert_eq!(
            d.bar_requests(),
            vec![
                BarRequest {
                    index: 0,
                    bar_type: PciBarType::Memory64,
                    size: 0x4000,
                    prefetchable: false
                },
                BarRequest {
                    index: 2,
                    bar_type: PciBarType::Io,
                    size: 8,
                    prefetchable: false
                }
            ]
        );
        assert_eq!(d.read_config_register(0), 0x1234_5678);
        assert_eq!(
            d.read_config_register(3) & 0x00ff_0000,
            0,
            "no multi-function"
        );
        assert_eq!(d.read_config_register(4), 0b0100);
        assert_eq!(d.read_config_register(5), 1);
        assert_eq!(d.read_config_register(6), 0x1001);
        // Sizing: all ones reads back the size mask with the type bits.
        d.write_config_register(4, 0, &[0xff; 4]);
        d.write_config_register(5, 0, &[0xff; 4]);
        assert_eq!(d.read_config_register(4), 0xffff_c004);
        assert_eq!(d.read_config_register(5), 0xffff_ffff);
        // Interrupt pin from the device, line emulated.
        d.write_config_register(15, 0, &[0x2a]);
        assert_eq!(d.read_config_register(15) & 0xffff, 0x012a);
    }

    #[test]
    fn msix_pages_are_trapped_and_the_rest_is_mapped() {
        let (fake, mut d) = device();
        assert_eq!(
            d.mmap_areas(),
            vec![MmapArea {
                bar: 0,
                bar_offset: 0,
                size: 0x2000,
                file_offset: 0x1_0000
            }]
        );
        // The table is emulated; the rest of the BAR reaches the device.
        d.bar_write(0, 0x2008, &0x55u32.to_le_bytes());
        let mut b = [0u8; 4];
        d.bar_read(0, 0x2008, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x55);
        d.bar_read(0, 0x3000, &mut b);
        assert_eq!(b, [0; 4], "PBA");
        assert!(fake.log().is_empty());
        d.bar_read(2, 4, &mut b[..1]);
        d.bar_write(2, 0, &[7]);
        assert_eq!(fake.log(), vec!["read 2 0x4", "write 2 0x0 [7]"]);
        // Past the device's 8 bytes of the I/O BAR: nothing reaches it.
        d.bar_read(0, 0x4000, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn an_excluded_bar_is_not_mapped_and_every_access_traps() {
        let (fake, mut d) = device();
        // 7 names no BAR: ignored.
        d.exclude_from_mmap(&[7]);
        assert_eq!(d.mmap_areas().len(), 1);
        d.exclude_from_mmap(&[0]);
        assert_eq!(d.mmap_areas(), vec![]);
        // What would have been mapped now reaches the device through the trap.
        let mut b = [0u8; 4];
        d.bar_read(0, 0x10, &mut b);
        d.bar_write(0, 0x1000, &[1, 2]);
        assert_eq!(fake.log(), vec!["read 0 0x10", "write 0 0x1000 [1, 2]"]);
    }

    #[test]
    fn msix_enable_switches_intx_off_and_back() {
        let (fake, mut d) = device();
        d.enable_intx(17).unwrap();
        assert_eq!(fake.log(), vec!["enable 0 x1", "unmask"]);
        assert_eq!(d.read_config_register(15) & 0xff, 17);
        // Message control is the upper half of the capability's first dword.
        d.write_config_register(0x40 / 4, 2, &0x8000u16.to_le_bytes());
        assert_eq!(fake.log(), vec!["disable 0", "enable 2 x4"]);
        assert_eq!(d.read_config_register(0x40 / 4) >> 16, 0x8003);
        d.write_config_register(0x40 / 4, 2, &0u16.to_le_bytes());
        assert_eq!(fake.log(), vec!["disable 2", "enable 0 x1", "unmask"]);
        // Leaving: interrupts off, and the physical function stops decoding and DMA.
        fake.config.lock().unwrap()[4] = 0x07;
        d.quiesce();
        assert_eq!(fake.log(), vec!["disable 0"]);
        assert_eq!(fake.config.lock().unwrap()[4] & 0x07, 0);
    }

    #[test]
    fn a_bar_the_guest_moves_is_followed_when_it_decodes() {
        let (fake, mut d) = device();
        let moves = Arc::new(Moves::default());
        d.set_relocator(moves.clone());
        // Decoding off: moving the BAR moves nothing yet.
        d.write_config_register(4, 0, &0x2000_0000u32.to_le_bytes());
        d.write_config_register(5, 0, &0u32.to_le_bytes());
        assert!(moves.0.lock().unwrap().is_empty());
        // Memory decode on: the BAR is followed to its new place, once.
        d.write_config_register(1, 0, &COMMAND_MEMORY.to_le_bytes()[..2]);
        assert_eq!(
            fake.config.lock().unwrap()[4],
            2,
            "command reaches the device"
        );
        assert_eq!(
            *moves.0.lock().unwrap(),
            vec![(0x1_0000_0000, 0x2000_0000, 0x4000)]
        );
        d.write_config_register(1, 0, &COMMAND_MEMORY.to_le_bytes()[..2]);
        assert_eq!(moves.0.lock().unwrap().len(), 1);
        assert_eq!(
            d.bar_range(0),
            Some((PciBarType::Memory64, 0x2000_0000, 0x4000))
        );
    }
}
