//! One PCI segment of a VM, for the VM's life: its configuration space (the functions on
//! bus 0, which the vCPUs reach through the segment's ECAM window and, on segment 0, the
//! 0xCF8/0xCFC ports) and its BAR allocators (the 32- and 64-bit MMIO windows, and I/O
//! ports on segment 0). Which slot a device takes is `placement`'s; this puts it there.
//!
//! Touches only the two buses, to put its configuration-space accessors on them.

use std::sync::{Arc, Mutex, PoisonError};

use tessera_arch::layout::{Range, SegmentWindows};
use tessera_devices::bus::{Bus, BusDevice, BusError};
use tessera_devices::pci::{
    PciBarType, PciConfigIo, PciConfigMmio, PciDevice, PciError, PciHostBridge, PciSegment,
    PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_PORT_LEN,
};
use tessera_devices::vfio::PAGE_SIZE;
use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

use crate::guest_topology::PCI_IO_WINDOW;

/// Why a segment could not be set up or a BAR placed.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// A window cannot be allocated from.
    #[error("segment {segment}: window {start:#x}+{len:#x}: {source}")]
    Window {
        /// The segment.
        segment: u16,
        /// Where the window starts.
        start: u64,
        /// Its length.
        len: u64,
        /// vm-allocator's reason.
        #[source]
        source: vm_allocator::Error,
    },
    /// The accessors do not fit on the buses.
    #[error("segment {segment}: configuration space on the bus: {source}")]
    Bus {
        /// The segment.
        segment: u16,
        /// The bus's reason.
        #[source]
        source: BusError,
    },
    /// The host bridge could not be put in its slot.
    #[error("segment {segment}: {source}")]
    Pci {
        /// The segment.
        segment: u16,
        /// The reason.
        #[source]
        source: PciError,
    },
}

/// A BAR's place in its segment's window, kept to give it back when the device goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BarAllocation {
    bar_type: PciBarType,
    range: RangeInclusive,
}

impl BarAllocation {
    /// Where the BAR starts.
    pub(crate) fn start(&self) -> u64 {
        self.range.start()
    }
}

/// One segment: its configuration space and BAR allocators.
pub(crate) struct Segment {
    id: u16,
    config: Arc<Mutex<PciSegment>>,
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
    /// Only segment 0 decodes port I/O.
    io: Option<AddressAllocator>,
}

fn allocator(segment: u16, r: Range) -> Result<AddressAllocator, SegmentError> {
    AddressAllocator::new(r.start, r.len()).map_err(|source| SegmentError::Window {
        segment,
        start: r.start,
        len: r.len(),
        source,
    })
}

impl Segment {
    /// Segment `id` with `windows`, its configuration space on the buses (the host bridge
    /// in slot 0 of segment 0).
    pub(crate) fn new(
        id: u16,
        windows: &SegmentWindows,
        pio: &Bus,
        mmio: &Bus,
    ) -> Result<Segment, SegmentError> {
        let mut space = PciSegment::new(id);
        if id == 0 {
            space
                .add_device(0, Arc::new(Mutex::new(PciHostBridge::new())))
                .map_err(|source| SegmentError::Pci {
                    segment: id,
                    source,
                })?;
        }
        let config = Arc::new(Mutex::new(space));
        let bus_err = |source| SegmentError::Bus {
            segment: id,
            source,
        };
        if id == 0 {
            let ports: Arc<Mutex<dyn BusDevice>> =
                Arc::new(Mutex::new(PciConfigIo::new(config.clone())));
            pio.insert(u64::from(PCI_CONFIG_IO_PORT), PCI_CONFIG_IO_PORT_LEN, ports)
                .map_err(bus_err)?;
        }
        let ecam: Arc<Mutex<dyn BusDevice>> =
            Arc::new(Mutex::new(PciConfigMmio::new(config.clone())));
        mmio.insert(windows.ecam.start, windows.ecam.len(), ecam)
            .map_err(bus_err)?;
        Ok(Segment {
            id,
            config,
            mmio32: allocator(id, windows.mmio32)?,
            mmio64: allocator(id, windows.mmio64)?,
            io: if id == 0 {
                Some(allocator(id, PCI_IO_WINDOW)?)
            } else {
                None
            },
        })
    }

    /// The segment group number.
    pub(crate) fn id(&self) -> u16 {
        self.id
    }

    /// Room for a BAR of `bar_type` and `size` bytes (memory BARs page aligned, so they
    /// can be mmapped into the guest); `Ok(None)` when this segment does not decode the
    /// type (I/O off segment 0).
    pub(crate) fn allocate_bar(
        &mut self,
        bar_type: PciBarType,
        size: u64,
    ) -> Result<Option<BarAllocation>, vm_allocator::Error> {
        let (space, align) = match bar_type {
            PciBarType::Io => match self.io.as_mut() {
                Some(io) => (io, size),
                None => return Ok(None),
            },
            PciBarType::Memory32 => (&mut self.mmio32, size.max(PAGE_SIZE)),
            PciBarType::Memory64 => (&mut self.mmio64, size.max(PAGE_SIZE)),
        };
        let range = space.allocate(size, align, AllocPolicy::FirstMatch)?;
        Ok(Some(BarAllocation { bar_type, range }))
    }

    /// Gives a BAR's room back.
    pub(crate) fn free_bar(&mut self, bar: &BarAllocation) {
        let space = match bar.bar_type {
            PciBarType::Io => self.io.as_mut(),
            PciBarType::Memory32 => Some(&mut self.mmio32),
            PciBarType::Memory64 => Some(&mut self.mmio64),
        };
        if let Some(Err(e)) = space.map(|s| s.free(&bar.range)) {
            tracing::warn!("segment {}: freeing BAR room {:?}: {e}", self.id, bar.range);
        }
    }

    /// Puts `device` in configuration space at `devfn`, where the guest finds it.
    pub(crate) fn insert(
        &self,
        devfn: u8,
        device: Arc<Mutex<dyn PciDevice>>,
    ) -> Result<(), PciError> {
        self.lock().add_device(devfn, device)
    }

    /// Takes the function at `devfn` out of configuration space.
    pub(crate) fn remove(&self, devfn: u8) -> Option<Arc<Mutex<dyn PciDevice>>> {
        self.lock().remove_device(devfn)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PciSegment> {
        self.config.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function that answers every register with its tag.
    struct Tagged(u32);
    impl PciDevice for Tagged {
        fn read_config_register(&mut self, _: usize) -> u32 {
            self.0
        }
        fn write_config_register(&mut self, _: usize, _: u64, _: &[u8]) {}
    }

    fn windows(i: u64) -> SegmentWindows {
        let r = |start: u64, len: u64| Range {
            start,
            end: start + len,
        };
        SegmentWindows {
            ecam: r(0xe000_0000 + (i << 20), 1 << 20),
            mmio32: r(0xc000_0000 + (i << 24), 1 << 24),
            mmio64: r((1 << 40) + (i << 30), 1 << 30),
        }
    }

    fn ecam_read(mmio: &Bus, segment: u64, devfn: u64) -> u32 {
        let mut b = [0u8; 4];
        assert!(mmio.read(0xe000_0000 + (segment << 20) + (devfn << 12), &mut b));
        u32::from_le_bytes(b)
    }

    #[test]
    fn devices_come_and_go_in_config_space_seen_through_the_buses() {
        let (pio, mmio) = (Bus::new(), Bus::new());
        let s0 = Segment::new(0, &windows(0), &pio, &mmio).unwrap();
        let s1 = Segment::new(1, &windows(1), &pio, &mmio).unwrap();
        assert_eq!(ecam_read(&mmio, 0, 0), 0x0008_1b36, "the host bridge");
        assert_eq!(
            ecam_read(&mmio, 1, 0),
            u32::MAX,
            "no host bridge off segment 0"
        );
        s1.insert(0, Arc::new(Mutex::new(Tagged(0x1234_5678))))
            .unwrap();
        assert_eq!(ecam_read(&mmio, 1, 0), 0x1234_5678);
        assert!(s1.insert(0, Arc::new(Mutex::new(Tagged(0)))).is_err());
        // Segment 0 also answers on the legacy ports.
        s0.insert(3 << 3, Arc::new(Mutex::new(Tagged(0xabcd))))
            .unwrap();
        assert!(pio.write(0xcf8, &(0x8000_0000u32 | (3 << 11)).to_le_bytes()));
        let mut b = [0u8; 4];
        assert!(pio.read(0xcfc, &mut b));
        assert_eq!(u32::from_le_bytes(b), 0xabcd);
        assert!(s1.remove(0).is_some());
        assert!(s1.remove(0).is_none());
        assert_eq!(ecam_read(&mmio, 1, 0), u32::MAX);
        // A second segment 0 would overlap the first one's accessors.
        assert!(Segment::new(0, &windows(0), &pio, &mmio).is_err());
    }

    #[test]
    fn bars_are_placed_in_the_windows_and_given_back() {
        let (pio, mmio) = (Bus::new(), Bus::new());
        let mut s0 = Segment::new(0, &windows(0), &pio, &mmio).unwrap();
        let mut s1 = Segment::new(1, &windows(1), &pio, &mmio).unwrap();
        let small = s0
            .allocate_bar(PciBarType::Memory32, 0x100)
            .unwrap()
            .unwrap();
        assert_eq!(small.start(), 0xc000_0000);
        let next = s0
            .allocate_bar(PciBarType::Memory32, 0x100)
            .unwrap()
            .unwrap();
        assert_eq!(next.start(), 0xc000_1000, "memory BARs are page aligned");
        let big = s0
            .allocate_bar(PciBarType::Memory64, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(big.start(), 1 << 40);
        let io = s0.allocate_bar(PciBarType::Io, 0x20).unwrap().unwrap();
        assert_eq!(io.start(), 0x1000);
        assert_eq!(s1.allocate_bar(PciBarType::Io, 0x20).unwrap(), None);
        assert!(s1.allocate_bar(PciBarType::Memory64, 2 << 30).is_err());
        s0.free_bar(&small);
        let again = s0
            .allocate_bar(PciBarType::Memory32, 0x1000)
            .unwrap()
            .unwrap();
        assert_eq!(again.start(), 0xc000_0000, "freed room is reused");
        assert_eq!(s1.id(), 1);
    }
}
