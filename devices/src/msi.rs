//! MSI and MSI-X as a guest sees them, emulated: the two PCI capabilities (their registers
//! and which bits the guest may write), the MSI-X table and pending-bit array, and the
//! vectors behind them, each an eventfd bound to a GSI whose MSI route follows what the
//! guest programs. A vector is live (irqfd registered) only while its capability is enabled
//! and it is unmasked; an interrupt that fires while it is masked stays counted in the
//! eventfd and is delivered when KVM sees the irqfd again, so nothing is lost.

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::interrupt::{InterruptRouter, MsiMessage};

/// PCI capability ID of MSI.
pub const PCI_CAP_ID_MSI: u8 = 0x05;
/// PCI capability ID of MSI-X.
pub const PCI_CAP_ID_MSIX: u8 = 0x11;
/// Bytes per MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;

/// One vector: its eventfd, GSI and the state that decides whether it is live.
struct Vector {
    event: EventFd,
    gsi: Option<u32>,
    message: MsiMessage,
    masked: bool,
    /// The message KVM currently routes the GSI to.
    routed: Option<MsiMessage>,
    registered: bool,
}

/// A set of vectors delivered through irqfds and MSI routes.
pub struct MsiVectors {
    vectors: Vec<Vector>,
    router: Arc<dyn InterruptRouter>,
}

impl MsiVectors {
    /// `count` vectors, all masked and not live.
    pub fn new(count: usize, router: Arc<dyn InterruptRouter>) -> io::Result<Self> {
        let vectors = (0..count)
            .map(|_| {
                Ok(Vector {
                    event: EventFd::new(EFD_NONBLOCK)?,
                    gsi: None,
                    message: MsiMessage::default(),
                    masked: true,
                    routed: None,
                    registered: false,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(MsiVectors { vectors, router })
    }

    /// The eventfds, in vector order: what the device signals.
    pub fn events(&self) -> Vec<&EventFd> {
        self.vectors.iter().map(|v| &v.event).collect()
    }

    /// How many vectors there are.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Sets vector `index`'s message and mask bit (not applied until [`Self::sync`]).
    pub fn set(&mut self, index: usize, message: MsiMessage, masked: bool) {
        if let Some(v) = self.vectors.get_mut(index) {
            v.message = message;
            v.masked = masked;
        }
    }

    /// Whether vector `index` is masked.
    pub fn is_masked(&self, index: usize) -> bool {
        self.vectors.get(index).is_none_or(|v| v.masked)
    }

    /// Makes vector `index` live if `active` and it is unmasked, idle otherwise; reroutes
    /// it when its message changed.
    pub fn sync(&mut self, index: usize, active: bool) -> io::Result<()> {
        let router = self.router.clone();
        let Some(v) = self.vectors.get_mut(index) else {
            return Ok(());
        };
        let live = active && !v.masked;
        if !live {
            if v.registered {
                if let Some(gsi) = v.gsi {
                    router.unregister_irqfd(&v.event, gsi)?;
                }
                v.registered = false;
            }
            return Ok(());
        }
        let gsi = match v.gsi {
            Some(gsi) => gsi,
            None => {
                let gsi = router.allocate_gsi()?;
                v.gsi = Some(gsi);
                gsi
            }
        };
        if v.routed != Some(v.message) {
            router.set_msi_route(gsi, &v.message)?;
            v.routed = Some(v.message);
        }
        if !v.registered {
            router.register_irqfd(&v.event, gsi)?;
            v.registered = true;
        }
        Ok(())
    }

    /// [`Self::sync`] for every vector.
    pub fn sync_all(&mut self, active: bool) -> io::Result<()> {
        for i in 0..self.vectors.len() {
            self.sync(i, active)?;
        }
        Ok(())
    }
}

impl Drop for MsiVectors {
    fn drop(&mut self) {
        for v in &mut self.vectors {
            if let Some(gsi) = v.gsi.take() {
                if v.registered {
                    let _ = self.router.unregister_irqfd(&v.event, gsi);
                }
                self.router.release_gsi(gsi);
            }
        }
    }
}

/// Copies `bytes` into `buf` at `at`, as far as `buf` reaches.
fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        if let Some(slot) = buf.get_mut(at + i) {
            *slot = b;
        }
    }
}

/// Emulated capability registers: a shadow of the bytes and, per byte, the bits the guest
/// may write.
#[derive(Clone, Debug)]
struct Registers {
    bytes: Vec<u8>,
    writable: Vec<u8>,
}

impl Registers {
    fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(offset + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let w = self.writable.get(offset + i).copied().unwrap_or(0);
            if let Some(b) = self.bytes.get_mut(offset + i) {
                *b = (*b & !w) | (value & w);
            }
        }
    }

    fn u16_at(&self, offset: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    fn u32_at(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }
}

/// What a guest write to a capability changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsiTransition {
    /// Nothing to tell the device.
    None,
    /// The guest enabled the capability: the device must start signalling the vectors.
    Enabled,
    /// The guest disabled it: the device must stop.
    Disabled,
}

/// Message control bit 0 of MSI: enable.
const MSI_CTL_ENABLE: u16 = 1;
/// Message control bit 7 of MSI: 64-bit address.
const MSI_CTL_64BIT: u16 = 1 << 7;
/// Message control bit 8 of MSI: per-vector masking.
const MSI_CTL_PER_VECTOR_MASK: u16 = 1 << 8;

/// The MSI capability, emulated.
pub struct MsiCapability {
    /// Byte offset of the capability in configuration space.
    offset: usize,
    regs: Registers,
    vectors: MsiVectors,
}

impl MsiCapability {
    /// Emulates the MSI capability whose device bytes start with `bytes` (at least the
    /// 24 bytes of the largest layout, as read from the device) at config offset `offset`.
    pub fn new(offset: usize, bytes: &[u8], router: Arc<dyn InterruptRouter>) -> io::Result<Self> {
        let mut shadow = bytes.get(..24).map(<[u8]>::to_vec).unwrap_or_default();
        shadow.resize(24, 0);
        let control = Registers {
            bytes: shadow.clone(),
            writable: Vec::new(),
        }
        .u16_at(2);
        let is64 = control & MSI_CTL_64BIT != 0;
        let pvm = control & MSI_CTL_PER_VECTOR_MASK != 0;
        // Multiple Message Capable: log2 of the vectors the device supports.
        let vectors = 1usize << ((control >> 1) & 0x7).min(5);
        let len = Self::layout_len(is64, pvm);
        shadow.truncate(len);
        // The guest starts with MSI disabled, all messages zero, nothing masked.
        put(&mut shadow, 2, &[(control & !0x71) as u8]);
        shadow.iter_mut().skip(4).for_each(|b| *b = 0);
        let mut writable = vec![0u8; len];
        put(&mut writable, 2, &[0x71]); // enable, Multiple Message Enable
        let data_at = if is64 { 12 } else { 8 };
        put(&mut writable, 4, &0xffff_fffcu32.to_le_bytes());
        if is64 {
            put(&mut writable, 8, &[0xff; 4]);
        }
        put(&mut writable, data_at, &[0xff, 0xff]);
        if pvm {
            put(&mut writable, data_at + 4, &[0xff; 4]);
        }
        Ok(MsiCapability {
            offset,
            regs: Registers {
                bytes: shadow,
                writable,
            },
            vectors: MsiVectors::new(vectors, router)?,
        })
    }

    fn layout_len(is64: bool, pvm: bool) -> usize {
        match (is64, pvm) {
            (false, false) => 12,
            (true, false) => 16,
            (false, true) => 20,
            (true, true) => 24,
        }
    }

    /// Whether `offset` (a config byte offset) lies in the capability.
    pub fn contains(&self, offset: usize) -> bool {
        offset >= self.offset && offset < self.offset + self.regs.bytes.len()
    }

    /// Reads at config byte `offset`.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        self.regs.read(offset.saturating_sub(self.offset), data);
    }

    /// Whether the guest has MSI enabled.
    pub fn enabled(&self) -> bool {
        self.regs.u16_at(2) & MSI_CTL_ENABLE != 0
    }

    /// The vectors the guest enabled (Multiple Message Enable), at most those supported.
    pub fn enabled_vectors(&self) -> usize {
        (1usize << ((self.regs.u16_at(2) >> 4) & 0x7).min(5)).min(self.vectors.len())
    }

    /// The eventfds of the enabled vectors, for the device.
    pub fn events(&self) -> Vec<&EventFd> {
        let mut e = self.vectors.events();
        e.truncate(self.enabled_vectors());
        e
    }

    /// A guest write at config byte `offset`; updates routes and says whether the device
    /// must be told to start or stop.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> io::Result<MsiTransition> {
        let was = self.enabled();
        self.regs.write(offset.saturating_sub(self.offset), data);
        let now = self.enabled();
        self.apply()?;
        Ok(match (was, now) {
            (false, true) => MsiTransition::Enabled,
            (true, false) => MsiTransition::Disabled,
            _ => MsiTransition::None,
        })
    }

    fn apply(&mut self) -> io::Result<()> {
        let control = self.regs.u16_at(2);
        let is64 = control & MSI_CTL_64BIT != 0;
        let pvm = control & MSI_CTL_PER_VECTOR_MASK != 0;
        let address_lo = self.regs.u32_at(4);
        let (address_hi, data_at) = if is64 {
            (self.regs.u32_at(8), 12)
        } else {
            (0, 8)
        };
        let data = u32::from(self.regs.u16_at(data_at));
        let mask = if pvm {
            self.regs.u32_at(data_at + 4)
        } else {
            0
        };
        let enabled = self.enabled();
        let count = self.enabled_vectors();
        for i in 0..self.vectors.len() {
            // Multiple messages differ in the low bits of the data.
            let message = MsiMessage {
                address_lo,
                address_hi,
                data: data | i as u32,
            };
            self.vectors.set(i, message, mask & (1 << i) != 0);
            self.vectors.sync(i, enabled && i < count)?;
        }
        Ok(())
    }
}

/// Message control bit 15 of MSI-X: enable.
const MSIX_CTL_ENABLE: u16 = 1 << 15;
/// Message control bit 14 of MSI-X: function mask.
const MSIX_CTL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control bit 0 of an MSI-X table entry: masked.
const MSIX_ENTRY_MASKED: u32 = 1;

/// The MSI-X capability, its table and its pending-bit array, emulated.
pub struct MsixCapability {
    offset: usize,
    regs: Registers,
    /// Per entry: address low, address high, data, vector control.
    table: Vec<[u32; 4]>,
    vectors: MsiVectors,
}

/// Where a device's MSI-X table or PBA lives: a BAR and an offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLocation {
    /// BAR index (BIR).
    pub bar: usize,
    /// Byte offset in the BAR.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

impl MsixCapability {
    /// Emulates the MSI-X capability whose 12 device bytes are `bytes`, at config offset
    /// `offset`.
    pub fn new(offset: usize, bytes: &[u8], router: Arc<dyn InterruptRouter>) -> io::Result<Self> {
        let mut shadow = bytes.get(..12).map(<[u8]>::to_vec).unwrap_or_default();
        shadow.resize(12, 0);
        // Disabled and unmasked until the guest says otherwise.
        let control_hi = shadow.get(3).copied().unwrap_or(0);
        put(&mut shadow, 3, &[control_hi & !0xc0]);
        let mut writable = vec![0u8; 12];
        put(&mut writable, 3, &[0xc0]);
        let regs = Registers {
            bytes: shadow,
            writable,
        };
        let entries = usize::from(regs.u16_at(2) & 0x7ff) + 1;
        Ok(MsixCapability {
            offset,
            regs,
            table: vec![[0, 0, 0, MSIX_ENTRY_MASKED]; entries],
            vectors: MsiVectors::new(entries, router)?,
        })
    }

    /// Whether `offset` (a config byte offset) lies in the capability.
    pub fn contains(&self, offset: usize) -> bool {
        offset >= self.offset && offset < self.offset + 12
    }

    /// The number of table entries.
    pub fn entries(&self) -> usize {
        self.table.len()
    }

    /// Where the table is.
    pub fn table(&self) -> MsixLocation {
        let reg = self.regs.u32_at(4);
        MsixLocation {
            bar: (reg & 7) as usize,
            offset: u64::from(reg & !7),
            size: self.table.len() as u64 * MSIX_ENTRY_SIZE,
        }
    }

    /// Where the pending-bit array is.
    pub fn pba(&self) -> MsixLocation {
        let reg = self.regs.u32_at(8);
        MsixLocation {
            bar: (reg & 7) as usize,
            offset: u64::from(reg & !7),
            size: (self.table.len() as u64).div_ceil(64) * 8,
        }
    }

    /// Reads at config byte `offset`.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        self.regs.read(offset.saturating_sub(self.offset), data);
    }

    /// Whether the guest has MSI-X enabled.
    pub fn enabled(&self) -> bool {
        self.regs.u16_at(2) & MSIX_CTL_ENABLE != 0
    }

    fn active(&self) -> bool {
        let control = self.regs.u16_at(2);
        control & MSIX_CTL_ENABLE != 0 && control & MSIX_CTL_FUNCTION_MASK == 0
    }

    /// All vectors' eventfds, for the device.
    pub fn events(&self) -> Vec<&EventFd> {
        self.vectors.events()
    }

    /// A guest write at config byte `offset`.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> io::Result<MsiTransition> {
        let was = self.enabled();
        self.regs.write(offset.saturating_sub(self.offset), data);
        let now = self.enabled();
        let active = self.active();
        self.vectors.sync_all(active)?;
        Ok(match (was, now) {
            (false, true) => MsiTransition::Enabled,
            (true, false) => MsiTransition::Disabled,
            _ => MsiTransition::None,
        })
    }

    /// A guest read at byte `offset` of the table.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            let entry = (at / MSIX_ENTRY_SIZE) as usize;
            let word = ((at % MSIX_ENTRY_SIZE) / 4) as usize;
            let shift = (at % 4) * 8;
            *b = self
                .table
                .get(entry)
                .and_then(|e| e.get(word))
                .map_or(0, |w| (w >> shift) as u8);
        }
    }

    /// A guest write at byte `offset` of the table; reroutes the entries it touched.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut touched = Vec::new();
        for (i, &value) in data.iter().enumerate() {
            let at = offset + i as u64;
            let entry = (at / MSIX_ENTRY_SIZE) as usize;
            let word = ((at % MSIX_ENTRY_SIZE) / 4) as usize;
            let shift = (at % 4) * 8;
            if let Some(w) = self.table.get_mut(entry).and_then(|e| e.get_mut(word)) {
                *w = (*w & !(0xff << shift)) | (u32::from(value) << shift);
                if touched.last() != Some(&entry) {
                    touched.push(entry);
                }
            }
        }
        let active = self.active();
        for entry in touched {
            if let Some(e) = self.table.get(entry) {
                let message = MsiMessage {
                    address_lo: e[0],
                    address_hi: e[1],
                    data: e[2],
                };
                self.vectors
                    .set(entry, message, e[3] & MSIX_ENTRY_MASKED != 0);
            }
            self.vectors.sync(entry, active)?;
        }
        Ok(())
    }

    /// A guest read of the pending-bit array: nothing is ever pending here, because a
    /// masked vector's interrupt waits in its eventfd instead.
    pub fn read_pba(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Records routes and live irqfds.
    #[derive(Default)]
    struct FakeRouter {
        next: Mutex<u32>,
        routes: Mutex<BTreeMap<u32, MsiMessage>>,
        live: Mutex<BTreeMap<u32, bool>>,
    }

    impl InterruptRouter for FakeRouter {
        fn allocate_gsi(&self) -> io::Result<u32> {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            Ok(23 + *n)
        }
        fn release_gsi(&self, gsi: u32) {
            self.routes.lock().unwrap().remove(&gsi);
        }
        fn set_msi_route(&self, gsi: u32, m: &MsiMessage) -> io::Result<()> {
            self.routes.lock().unwrap().insert(gsi, *m);
            Ok(())
        }
        fn register_irqfd(&self, _: &EventFd, gsi: u32) -> io::Result<()> {
            let prev = self.live.lock().unwrap().insert(gsi, true);
            assert_ne!(prev, Some(true), "irqfd registered twice");
            Ok(())
        }
        fn unregister_irqfd(&self, _: &EventFd, gsi: u32) -> io::Result<()> {
            assert_eq!(self.live.lock().unwrap().insert(gsi, false), Some(true));
            Ok(())
        }
        fn register_resample_irqfd(&self, _: &EventFd, _: &EventFd, _: u32) -> io::Result<()> {
            Ok(())
        }
    }

    impl FakeRouter {
        fn live(&self) -> Vec<u32> {
            let live = self.live.lock().unwrap();
            live.iter().filter(|(_, l)| **l).map(|(g, _)| *g).collect()
        }
    }

    #[test]
    fn msix_vectors_go_live_when_enabled_and_unmasked() {
        let router = Arc::new(FakeRouter::default());
        // 4 entries, table in BAR 0 at 0x2000, PBA in BAR 0 at 0x3000.
        let bytes = [0x11, 0, 3, 0, 0, 0x20, 0, 0, 0, 0x30, 0, 0];
        let mut cap = MsixCapability::new(0x40, &bytes, router.clone()).unwrap();
        assert_eq!(cap.entries(), 4);
        assert_eq!(
            cap.table(),
            MsixLocation {
                bar: 0,
                offset: 0x2000,
                size: 64
            }
        );
        assert_eq!(cap.pba().offset, 0x3000);
        assert_eq!(cap.pba().size, 8);
        // Entry 1: address, data, unmasked; nothing live while MSI-X is off.
        cap.write_table(16, &0xfee0_0000u32.to_le_bytes()).unwrap();
        cap.write_table(24, &0x41u32.to_le_bytes()).unwrap();
        cap.write_table(28, &0u32.to_le_bytes()).unwrap();
        assert!(router.live().is_empty());
        let mut d = [0u8; 4];
        cap.read_table(24, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x41);
        // Enable: the one unmasked entry goes live with its message.
        assert_eq!(
            cap.write(0x42, &0x8003u16.to_le_bytes()).unwrap(),
            MsiTransition::Enabled
        );
        let mut c = [0u8; 2];
        cap.read(0x42, &mut c);
        assert_eq!(u16::from_le_bytes(c), 0x8003, "table size is read-only");
        assert_eq!(router.live(), vec![24]);
        assert_eq!(router.routes.lock().unwrap()[&24].data, 0x41);
        // Function mask idles everything; unmasking restores it.
        cap.write(0x42, &0xc003u16.to_le_bytes()).unwrap();
        assert!(router.live().is_empty());
        cap.write(0x42, &0x8003u16.to_le_bytes()).unwrap();
        assert_eq!(router.live(), vec![24]);
        // A new message reroutes; masking the entry idles it.
        cap.write_table(24, &0x42u32.to_le_bytes()).unwrap();
        assert_eq!(router.routes.lock().unwrap()[&24].data, 0x42);
        cap.write_table(28, &1u32.to_le_bytes()).unwrap();
        assert!(router.live().is_empty());
        assert_eq!(
            cap.write(0x42, &0u16.to_le_bytes()).unwrap(),
            MsiTransition::Disabled
        );
        drop(cap);
        assert!(router.routes.lock().unwrap().is_empty(), "GSIs released");
    }

    #[test]
    fn msi_multiple_messages_and_masks() {
        let router = Arc::new(FakeRouter::default());
        // 64-bit, per-vector masking, 4 vectors capable (MMC = 2).
        let mut bytes = [0u8; 24];
        bytes[0] = 0x05;
        bytes[2..4]
            .copy_from_slice(&(MSI_CTL_64BIT | MSI_CTL_PER_VECTOR_MASK | 2 << 1).to_le_bytes());
        let mut cap = MsiCapability::new(0x50, &bytes, router.clone()).unwrap();
        assert!(cap.contains(0x50 + 23));
        assert!(!cap.contains(0x50 + 24));
        cap.write(0x54, &0xfee0_1000u32.to_le_bytes()).unwrap();
        cap.write(0x5c, &0x30u16.to_le_bytes()).unwrap();
        cap.write(0x60, &0b10u32.to_le_bytes()).unwrap(); // mask vector 1
                                                          // Enable with MME = 1 (2 vectors).
        let t = cap
            .write(0x52, &(MSI_CTL_ENABLE | 1 << 4).to_le_bytes())
            .unwrap();
        assert_eq!(t, MsiTransition::Enabled);
        assert_eq!(cap.enabled_vectors(), 2);
        assert_eq!(cap.events().len(), 2);
        assert_eq!(router.live().len(), 1, "vector 1 is masked");
        let routes = router.routes.lock().unwrap().clone();
        assert_eq!(routes.values().next().unwrap().data, 0x30);
        // The address's low two bits are reserved.
        let mut a = [0u8; 4];
        cap.write(0x54, &0xfee0_1003u32.to_le_bytes()).unwrap();
        cap.read(0x54, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0xfee0_1000);
        let t = cap.write(0x52, &0u16.to_le_bytes()).unwrap();
        assert_eq!(t, MsiTransition::Disabled);
        assert!(router.live().is_empty());
    }
}
