//! The VFIO PCI device as a hostile guest reaches it: configuration space through ECAM,
//! BAR sizing and moves, the capability list, MSI and MSI-X enable/mask, the MSI-X table
//! and PBA, and the trapped BAR ranges on the buses, over a fake `VfioDeviceIo` whose
//! layout (BARs, ROM, capabilities, corrupt bytes) is itself fuzzed.
//!
//! Invariants beyond "no panic":
//! - a BAR written with all ones reads back its size mask;
//! - the device's idea of where each BAR is (`bar_range`), the bus ranges and the BAR
//!   mappings (KVM slots, here a fake mapper that refuses some addresses, as KVM does)
//!   agree after every access, whether a move succeeded or failed;
//! - an access the device forwards to a BAR region stays inside the region;
//! - an MSI-X table entry reads back what was written.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, PoisonError};

use arbitrary::{Arbitrary, Unstructured};

use super::Many;
use tessera_devices::bus::{Bus, BusDevice};
use tessera_devices::interrupt::{InterruptRouter, MsiMessage};
use tessera_devices::pci::{PciBarType, PciConfigMmio, PciDevice, PciHostBridge, PciSegment};
use tessera_devices::vfio::{RegionInfo, VfioBarTrap, VfioDeviceIo, VfioPciDevice, ROM_BAR};
use tessera_vmm::vfio::{bus_relocator, BarMapper};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_ROM_REGION_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP,
};
use vmm_sys_util::eventfd::EventFd;

/// Where the ECAM window of segment 0 sits on the MMIO bus.
pub const ECAM_BASE: u64 = 0xe000_0000;
/// The device's devfn (00:01.0).
pub const DEVFN: u8 = 8;
/// Guest RAM as KVM sees it: a BAR mapping may not overlap it.
const RAM_END: u64 = 0x8000_0000;
/// KVM refuses slots above the guest's physical address width.
const PHYS_LIMIT: u64 = 1 << 46;

/// A VFIO device whose configuration space and regions the fuzzer chose.
pub struct FakeVfio {
    config: Mutex<Vec<u8>>,
    regions: BTreeMap<u32, RegionInfo>,
    irqs: [u32; 3],
}

impl VfioDeviceIo for FakeVfio {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        self.regions.get(&index).cloned()
    }
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
        if index == VFIO_PCI_CONFIG_REGION_INDEX {
            let c = self.config.lock().unwrap_or_else(PoisonError::into_inner);
            // Past the end, VFIO fails the read: the caller's buffer is left as it is.
            if let Some(bytes) = usize::try_from(offset)
                .ok()
                .and_then(|o| c.get(o..o.checked_add(data.len())?))
            {
                data.copy_from_slice(bytes);
            }
        } else {
            self.check_inside(index, offset, data.len());
            data.fill(0x5a);
        }
    }
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
        if index == VFIO_PCI_CONFIG_REGION_INDEX {
            let mut c = self.config.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(bytes) = usize::try_from(offset)
                .ok()
                .and_then(|o| c.get_mut(o..o.checked_add(data.len())?))
            {
                bytes.copy_from_slice(data);
            }
        } else {
            assert_ne!(index, VFIO_PCI_ROM_REGION_INDEX, "a write reached the ROM");
            self.check_inside(index, offset, data.len());
        }
    }
    fn irq_count(&self, index: u32) -> u32 {
        match index {
            VFIO_PCI_INTX_IRQ_INDEX => self.irqs[0],
            VFIO_PCI_MSI_IRQ_INDEX => self.irqs[1],
            VFIO_PCI_MSIX_IRQ_INDEX => self.irqs[2],
            _ => 0,
        }
    }
    fn enable_irq(&self, index: u32, _events: &[&EventFd]) -> io::Result<()> {
        assert!(index <= VFIO_PCI_MSIX_IRQ_INDEX);
        Ok(())
    }
    fn disable_irq(&self, _index: u32) -> io::Result<()> {
        Ok(())
    }
    fn set_intx_unmask(&self, _event: &EventFd) -> io::Result<()> {
        Ok(())
    }
    fn raw_fd(&self) -> RawFd {
        -1
    }
}

impl FakeVfio {
    /// A forwarded BAR access must stay inside the region VFIO reported.
    fn check_inside(&self, index: u32, offset: u64, len: usize) {
        let region = self.regions.get(&index);
        assert!(
            region.is_some_and(|r| offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= r.size)),
            "access {offset:#x}+{len} forwarded outside region {index} ({region:?})"
        );
    }
}

/// Interrupt routes that always succeed.
#[derive(Default)]
pub struct NullRouter(Mutex<u32>);

impl InterruptRouter for NullRouter {
    fn allocate_gsi(&self) -> io::Result<u32> {
        let mut n = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *n += 1;
        Ok(24 + *n)
    }
    fn release_gsi(&self, _: u32) {}
    fn set_msi_route(&self, _: u32, _: &MsiMessage) -> io::Result<()> {
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

/// The BAR mappings (KVM slots) by guest address, refusing what KVM refuses: a slot
/// overlapping RAM or beyond the physical address width. A refused move changes nothing.
#[derive(Default)]
pub struct FakeMapper {
    /// Mapped (base, size).
    pub mapped: Mutex<Vec<(u64, u64)>>,
}

impl BarMapper for FakeMapper {
    fn move_mappings(&self, old: u64, new: u64, size: u64) -> Result<(), String> {
        let mut mapped = self.mapped.lock().unwrap_or_else(PoisonError::into_inner);
        let moving = mapped.iter().any(|&(b, _)| b >= old && b - old < size);
        if moving && (new < RAM_END || new.checked_add(size).is_none_or(|e| e > PHYS_LIMIT)) {
            return Err(format!("KVM refuses a slot at {new:#x}"));
        }
        for (b, _) in mapped
            .iter_mut()
            .filter(|(b, _)| *b >= old && *b - old < size)
        {
            *b = *b - old + new;
        }
        Ok(())
    }

    /// Slots going out and back in at the same place: nothing this fake checks refuses it.
    fn set_enabled(&self, _: u64, _: u64, _: bool) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Arbitrary, Debug)]
struct BarSpec {
    /// 0: none, 1: 32-bit memory, 2: 64-bit memory, 3: I/O.
    kind: u8,
    size_log2: u8,
    prefetchable: bool,
    mmap: bool,
}

#[derive(Arbitrary, Debug)]
struct Spec {
    bars: [BarSpec; 6],
    rom_log2: Option<u8>,
    /// Offset (in dwords from 0x40) and message control.
    msi: Option<(u8, u16)>,
    /// Offset, message control, table and PBA registers.
    msix: Option<(u8, u16, u32, u32)>,
    /// Raw bytes poked into configuration space after it is laid out (corrupt lists).
    pokes: Many<(u8, u8)>,
    extended: bool,
    irqs: [u8; 3],
    intx: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// An ECAM read of any size at any offset of the function's 4 KiB.
    Read { at: u16, len: u8 },
    /// An ECAM write.
    Write { at: u16, len: u8, value: u32 },
    /// Write all ones to a BAR (both halves of a 64-bit one) and check the size mask.
    Size { bar: u8 },
    /// Program a BAR to an address (64-bit BARs low dword first, as Linux does).
    Move { bar: u8, address: u64 },
    /// Write the command register (decode bits follow moved BARs).
    Command { value: u16 },
    /// A read through the buses at an offset into an assigned BAR.
    BarRead { bar: u8, offset: u64, len: u8 },
    /// A write through the buses.
    BarWrite {
        bar: u8,
        offset: u64,
        len: u8,
        value: u64,
    },
    /// Write one dword of an MSI-X table entry and read it back.
    MsixEntry { entry: u16, word: u8, value: u32 },
    /// The device leaves the VM.
    Quiesce,
}

fn put(config: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = config.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Lays out the fake device the spec describes.
fn fake(spec: &Spec) -> FakeVfio {
    let mut c = vec![0u8; if spec.extended { 4096 } else { 256 }];
    put(&mut c, 0, &0x1234_10deu32.to_le_bytes());
    let mut regions = BTreeMap::new();
    let region = |size: u64, file_offset: u64, mmap: bool| RegionInfo {
        size,
        file_offset,
        flags: if mmap { VFIO_REGION_INFO_FLAG_MMAP } else { 0 },
        mmap_areas: if mmap { vec![(0, size)] } else { vec![] },
    };
    let mut i = 0;
    while i < 6 {
        let b = &spec.bars[i];
        let reg = 0x10 + 4 * i;
        let mut next = i + 1;
        let size = match b.kind % 4 {
            0 => 0,
            3 => 1u64 << (b.size_log2 % 9),
            _ => 1u64 << (b.size_log2 % 34),
        };
        let (low, is64) = match b.kind % 4 {
            1 => ((u32::from(b.prefetchable)) << 3, false),
            2 => (0b100 | (u32::from(b.prefetchable)) << 3, true),
            3 => (1, false),
            _ => (0, false),
        };
        put(&mut c, reg, &low.to_le_bytes());
        if is64 {
            next = i + 2;
        }
        if size > 0 {
            regions.insert(
                VFIO_PCI_BAR0_REGION_INDEX + i as u32,
                region(size, (i as u64 + 1) << 40, b.mmap && b.kind % 4 != 3),
            );
        }
        i = next;
    }
    if let Some(log2) = spec.rom_log2 {
        regions.insert(
            VFIO_PCI_ROM_REGION_INDEX,
            region(1 << (log2 % 25), 7 << 40, false),
        );
    }
    let mut caps = Vec::new();
    if let Some((at, control)) = spec.msi {
        let at = 0x40 + 4 * usize::from(at % 40);
        put(&mut c, at, &[0x05, 0]);
        put(&mut c, at + 2, &control.to_le_bytes());
        caps.push(at);
    }
    if let Some((at, control, table, pba)) = spec.msix {
        let at = 0x40 + 4 * usize::from(at % 40);
        // Every vector costs an eventfd: big tables (up to 2048) one time in eight only,
        // or the target runs at a tenth of its speed.
        let control = if control & 0x3800 == 0 {
            control
        } else {
            control & !0x7c0
        };
        put(&mut c, at, &[0x11, 0]);
        put(&mut c, at + 2, &control.to_le_bytes());
        put(&mut c, at + 4, &table.to_le_bytes());
        put(&mut c, at + 8, &pba.to_le_bytes());
        caps.push(at);
    }
    if let Some(&first) = caps.first() {
        c[6] |= 0x10;
        c[0x34] = first as u8;
        if let [a, b] = caps[..] {
            if a != b {
                c[a + 1] = b as u8;
            }
        }
    }
    for &(at, value) in spec.pokes.0.iter().take(8) {
        c[usize::from(at)] = value;
    }
    regions.insert(
        VFIO_PCI_CONFIG_REGION_INDEX,
        region(c.len() as u64, 0, false),
    );
    FakeVfio {
        config: Mutex::new(c),
        regions,
        irqs: spec.irqs.map(|n| u32::from(n % 40)),
    }
}

/// The guest side of one case: the buses, the segment, the device.
struct Machine {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    device: Arc<Mutex<VfioPciDevice>>,
    mapper: Arc<FakeMapper>,
    /// Whether the device emulates the MSI-X capability the spec laid out (VFIO offers
    /// MSI-X vectors, no poked bytes, MSI not overlapping it), so its table reads back.
    msix_emulated: bool,
}

impl Machine {
    fn device(&self) -> std::sync::MutexGuard<'_, VfioPciDevice> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// BAR `bar`'s (type, address, size) as the device has it.
    fn bar(&self, bar: usize) -> Option<(PciBarType, u64, u64)> {
        self.device().bar_range(bar)
    }

    fn bus(&self, t: PciBarType) -> &Bus {
        match t {
            PciBarType::Io => &self.pio,
            _ => &self.mmio,
        }
    }

    fn ecam_read(&self, at: u64, data: &mut [u8]) -> bool {
        self.mmio
            .read(ECAM_BASE + (u64::from(DEVFN) << 12) + at, data)
    }

    fn ecam_write(&self, at: u64, data: &[u8]) -> bool {
        self.mmio
            .write(ECAM_BASE + (u64::from(DEVFN) << 12) + at, data)
    }

    /// The device, the buses and the mapper agree on where every BAR is.
    fn check_bookkeeping(&self, trapped: &[usize]) {
        let mut expect_mmio = vec![(ECAM_BASE, 1u64 << 20)];
        let mut expect_pio = Vec::new();
        let mut expect_mapped = Vec::new();
        for &bar in trapped {
            let Some((t, address, size)) = self.bar(bar) else {
                panic_bookkeeping(bar);
            };
            match t {
                PciBarType::Io => expect_pio.push((address, size)),
                _ => {
                    expect_mmio.push((address, size));
                    expect_mapped.push((address, size));
                }
            }
        }
        expect_mmio.sort_unstable();
        expect_pio.sort_unstable();
        expect_mapped.sort_unstable();
        assert_eq!(self.mmio.ranges(), expect_mmio, "MMIO bus vs the BARs");
        assert_eq!(self.pio.ranges(), expect_pio, "PIO bus vs the BARs");
        let mut mapped = self
            .mapper
            .mapped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        mapped.sort_unstable();
        assert_eq!(mapped, expect_mapped, "BAR mappings vs the BARs");
    }
}

#[allow(clippy::panic)] // a finding
fn panic_bookkeeping(bar: usize) -> ! {
    panic!("BAR {bar} was assigned and lost its place")
}

/// Builds the machine: BARs assigned as the device manager does (each aligned to its size,
/// memory above RAM), trapped on the buses, mappings recorded, relocator wired.
fn machine(spec: &Spec) -> Option<(Machine, Vec<usize>)> {
    let io: Arc<dyn VfioDeviceIo> = Arc::new(fake(spec));
    let mut device = VfioPciDevice::new("fuzz", io, Arc::new(NullRouter::default())).ok()?;
    let (pio, mmio) = (Arc::new(Bus::new()), Arc::new(Bus::new()));
    let mapper = Arc::new(FakeMapper::default());
    let mut next = [0xc000u64, 0x8000_0000, 0x10_0000_0000];
    for request in device.bar_requests() {
        let pool = match request.bar_type {
            PciBarType::Io => 0,
            PciBarType::Memory32 => 1,
            PciBarType::Memory64 => 2,
        };
        let address = next[pool].next_multiple_of(request.size);
        next[pool] = address + request.size;
        // The device may refuse (a ROM above 4 GiB): then the BAR stays unassigned.
        let _ = device.assign_bar(request.index, address);
    }
    if spec.intx {
        let _ = device.enable_intx(10);
    }
    device.set_relocator(bus_relocator(mapper.clone(), &pio, &mmio));
    let device = Arc::new(Mutex::new(device));
    let mut trapped = Vec::new();
    for bar in 0..=ROM_BAR {
        let Some((t, address, size)) = device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bar_range(bar)
        else {
            continue;
        };
        let trap: Arc<Mutex<dyn BusDevice>> =
            Arc::new(Mutex::new(VfioBarTrap::new(device.clone(), bar)));
        let bus = if t == PciBarType::Io { &pio } else { &mmio };
        if bus.insert(address, size, trap).is_ok() {
            trapped.push(bar);
            if t != PciBarType::Io {
                mapper
                    .mapped
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((address, size));
            }
        }
    }
    let mut segment = PciSegment::new(0);
    let _ = segment.add_device(0, Arc::new(Mutex::new(PciHostBridge::new())));
    let as_pci: Arc<Mutex<dyn PciDevice>> = device.clone();
    let _ = segment.add_device(DEVFN, as_pci);
    let ecam = PciConfigMmio::new(Arc::new(Mutex::new(segment)));
    mmio.insert(ECAM_BASE, 1 << 20, Arc::new(Mutex::new(ecam)))
        .ok()?;
    let msix_emulated = !spec.irqs[2].is_multiple_of(40)
        && spec.pokes.0.is_empty()
        && match (spec.msi, spec.msix) {
            (Some((a, _)), Some((b, ..))) => (i32::from(a % 40) - i32::from(b % 40)).abs() >= 6,
            _ => true,
        };
    Some((
        Machine {
            pio,
            mmio,
            device,
            mapper,
            msix_emulated,
        },
        trapped,
    ))
}

fn access_len(len: u8) -> usize {
    [1, 2, 4, 8, 3, 0][usize::from(len) % 6]
}

/// The fuzz target.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(spec) = Spec::arbitrary(&mut u) else {
        return;
    };
    let ops: Vec<Op> = super::rest(&mut u, 64);
    let Some((m, trapped)) = machine(&spec) else {
        return;
    };
    m.check_bookkeeping(&trapped);
    for op in &ops {
        apply(&m, op);
        m.check_bookkeeping(&trapped);
    }
    m.device().quiesce();
}

fn apply(m: &Machine, op: &Op) {
    match *op {
        Op::Read { at, len } => {
            let mut b = vec![0u8; access_len(len)];
            m.ecam_read(u64::from(at % 4096), &mut b);
        }
        Op::Write { at, len, value } => {
            let len = access_len(len).min(4);
            let bytes = value.to_le_bytes();
            m.ecam_write(u64::from(at % 4096), &bytes[..len]);
        }
        Op::Size { bar } => size_bar(m, usize::from(bar % 7)),
        Op::Move { bar, address } => {
            let bar = usize::from(bar % 7);
            if bar == ROM_BAR {
                m.ecam_write(0x30, &((address as u32) | 1).to_le_bytes());
                return;
            }
            let reg = 0x10 + 4 * bar as u64;
            m.ecam_write(reg, &(address as u32).to_le_bytes());
            if m.bar(bar)
                .is_some_and(|(t, _, _)| t == PciBarType::Memory64)
            {
                m.ecam_write(reg + 4, &((address >> 32) as u32).to_le_bytes());
            }
        }
        Op::Command { value } => {
            m.ecam_write(4, &value.to_le_bytes());
        }
        Op::BarRead { bar, offset, len } => {
            if let Some((t, address, size)) = m.bar(usize::from(bar % 7)) {
                let mut b = vec![0u8; access_len(len)];
                m.bus(t).read(address.wrapping_add(offset % size), &mut b);
            }
        }
        Op::BarWrite {
            bar,
            offset,
            len,
            value,
        } => {
            if let Some((t, address, size)) = m.bar(usize::from(bar % 7)) {
                let len = access_len(len);
                let bytes = value.to_le_bytes();
                m.bus(t)
                    .write(address.wrapping_add(offset % size), &bytes[..len]);
            }
        }
        Op::MsixEntry { entry, word, value } => msix_entry(m, entry, word, value),
        Op::Quiesce => m.device().quiesce(),
    }
}

/// Sizing: all ones in, the size mask out (what every guest's BAR probe relies on).
fn size_bar(m: &Machine, bar: usize) {
    let Some((t, _, size)) = m.bar(bar) else {
        return;
    };
    if bar == ROM_BAR {
        m.ecam_write(0x30, &0xffff_f800u32.to_le_bytes());
        let mut b = [0u8; 4];
        m.ecam_read(0x30, &mut b);
        let mask = !(size as u32 - 1) & 0xffff_f800;
        assert_eq!(u32::from_le_bytes(b) & 0xffff_f800, mask, "ROM size mask");
        return;
    }
    let reg = 0x10 + 4 * bar as u64;
    m.ecam_write(reg, &[0xff; 4]);
    if t == PciBarType::Memory64 {
        m.ecam_write(reg + 4, &[0xff; 4]);
    }
    let mut low = [0u8; 4];
    m.ecam_read(reg, &mut low);
    let low = u32::from_le_bytes(low);
    // (low bits that are not address, their value): I/O BARs have bit 0 set and bit 1
    // reserved; memory BARs have the type in bits 2:1 and prefetchable in bit 3.
    let (flags, type_mask, type_bits) = match t {
        PciBarType::Io => (0x3, 0x1, 1),
        PciBarType::Memory32 => (0xf, 0x7, 0),
        PciBarType::Memory64 => (0xf, 0x7, 0b100),
    };
    assert_eq!(
        low & !flags,
        (!(size - 1)) as u32 & !flags,
        "BAR {bar} ({t:?}, {size:#x} bytes) low size mask: {low:#x}"
    );
    assert_eq!(low & type_mask, type_bits, "BAR {bar} type bits");
    if t == PciBarType::Memory64 {
        let mut high = [0u8; 4];
        m.ecam_read(reg + 4, &mut high);
        assert_eq!(
            u32::from_le_bytes(high),
            ((!(size - 1)) >> 32) as u32,
            "BAR {bar} high size mask"
        );
    }
}

/// An MSI-X table entry's dword reads back what was written, through the BAR trap.
fn msix_entry(m: &Machine, entry: u16, word: u8, value: u32) {
    if !m.msix_emulated {
        return;
    }
    let Some(msix) = msix_table(m) else {
        return;
    };
    let (bar, offset, entries) = msix;
    let Some((t, address, size)) = m.bar(bar) else {
        return;
    };
    let at = offset + u64::from(entry) % entries * 16 + u64::from(word % 4) * 4;
    if at + 4 > size {
        return;
    }
    if !m.bus(t).write(address + at, &value.to_le_bytes()) {
        return;
    }
    let mut b = [0u8; 4];
    assert!(m.bus(t).read(address + at, &mut b));
    assert_eq!(u32::from_le_bytes(b), value, "MSI-X entry dword at {at:#x}");
}

/// The MSI-X table's (BAR, offset, entries) as the guest reads the capability, if any.
fn msix_table(m: &Machine) -> Option<(usize, u64, u64)> {
    let mut d = m.device();
    let mut ptr = (d.read_config_register(0x34 / 4) & 0xfc) as usize;
    for _ in 0..48 {
        if ptr < 0x40 {
            return None;
        }
        let header = d.read_config_register(ptr / 4);
        if header & 0xff == 0x11 {
            let entries = u64::from((header >> 16) & 0x7ff) + 1;
            let table = d.read_config_register(ptr / 4 + 1);
            return Some(((table & 7) as usize, u64::from(table & !7), entries));
        }
        ptr = ((header >> 8) & 0xfc) as usize;
    }
    None
}
