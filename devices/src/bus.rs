//! The I/O buses: one address space (port I/O or MMIO) split into non-overlapping ranges,
//! each owned by a device, and the dispatch of a guest access to the device that owns it.
//!
//! A [`Bus`] is shared by the vCPU threads (`Arc<Bus>`) and stays changeable while they
//! run: the device manager inserts and removes devices (hotplug), the guest moves a
//! passed-through device's BAR ([`Bus::relocate`]). The ranges sit behind an `RwLock`; a
//! guest access takes it for reading, clones the device's `Arc` (no allocation) and
//! releases it before the device's own `Mutex` is taken, so a device may relocate its own
//! ranges from inside an access, and a device removed during an access lives until the
//! access ends.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// A device model reachable through a [`Bus`].
pub trait BusDevice: Send {
    /// Handles a guest read of `data.len()` bytes; the device fills `data`.
    ///
    /// `offset` is relative to the range base the device was inserted at. The bus only
    /// calls this for accesses that lie entirely inside the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data` at `offset`.
    ///
    /// `offset` is relative to the range base the device was inserted at. The bus only
    /// calls this for accesses that lie entirely inside the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be inserted into a [`Bus`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range overlaps a range already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap {
        /// Base address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range is empty.
    #[error("bus range at {base:#x} has zero length")]
    ZeroLength {
        /// Base address of the rejected range.
        base: u64,
    },
    /// No range starts at the address given.
    #[error("no bus range starts at {base:#x}")]
    NoRange {
        /// The address.
        base: u64,
    },
    /// The range runs past the end of the 64-bit address space.
    #[error("bus range {base:#x}+{len:#x} runs past the end of the address space")]
    Overflow {
        /// Base address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

/// Why [`Bus::relocate_with`] moved nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelocateError {
    /// The bus refused the move.
    #[error(transparent)]
    Bus(BusError),
    /// What had to follow the range could not follow it.
    #[error("{0}")]
    Then(String),
}

/// One device's range on the bus.
struct BusRange {
    /// Length in bytes (at least 1).
    len: u64,
    /// The device that owns the range.
    device: Arc<Mutex<dyn BusDevice>>,
}

impl BusRange {
    /// Last address covered by the range (inclusive); cannot overflow, `insert` checked it.
    fn last(&self, base: u64) -> u64 {
        base.saturating_add(self.len - 1)
    }
}

/// An address space of non-overlapping device ranges.
#[derive(Default)]
pub struct Bus {
    /// Ranges by base address.
    ranges: RwLock<BTreeMap<u64, BusRange>>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges = self.ranges.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_list()
            .entries(
                ranges
                    .iter()
                    .map(|(base, r)| format!("{base:#x}+{:#x}", r.len)),
            )
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `device` the range `[base, base + len)`.
    ///
    /// Ranges may touch but not overlap. The same device may be inserted at several ranges;
    /// it then sees offsets relative to whichever range was accessed.
    pub fn insert(
        &self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let mut ranges = self.ranges.write().unwrap_or_else(PoisonError::into_inner);
        check_free(&ranges, base, len, None)?;
        ranges.insert(base, BusRange { len, device });
        Ok(())
    }

    /// Takes the range based at `base` off the bus (a device unplugged), returning its
    /// device. An access already dispatched to it completes; later ones find nothing.
    pub fn remove(&self, base: u64) -> Result<Arc<Mutex<dyn BusDevice>>, BusError> {
        let mut ranges = self.ranges.write().unwrap_or_else(PoisonError::into_inner);
        ranges
            .remove(&base)
            .map(|r| r.device)
            .ok_or(BusError::NoRange { base })
    }

    /// Moves the range based at `old_base` to `new_base`, keeping its device and length;
    /// used when the guest reprograms a BAR. Fails, changing nothing, when no range starts
    /// at `old_base` or the new place overlaps another range.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let mut ranges = self.ranges.write().unwrap_or_else(PoisonError::into_inner);
        move_range(&mut ranges, old_base, new_base)
    }

    /// Moves the range as [`Bus::relocate`] does, but only if `then` (moving what else
    /// follows the range: a BAR's KVM slots) succeeds too; `then` runs once the bus has
    /// accepted the move, with the bus locked, so that a failed move changes nothing and
    /// no access sees the range half moved. `then` must not access this bus.
    pub fn relocate_with(
        &self,
        old_base: u64,
        new_base: u64,
        then: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), RelocateError> {
        let mut ranges = self.ranges.write().unwrap_or_else(PoisonError::into_inner);
        let len = ranges
            .get(&old_base)
            .map(|r| r.len)
            .ok_or(RelocateError::Bus(BusError::NoRange { base: old_base }))?;
        check_free(&ranges, new_base, len, Some(old_base)).map_err(RelocateError::Bus)?;
        then().map_err(RelocateError::Then)?;
        move_range(&mut ranges, old_base, new_base).map_err(RelocateError::Bus)
    }

    /// Every range on the bus as (base, length), by base: what the device manager's
    /// bookkeeping is checked against.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(PoisonError::into_inner);
        ranges.iter().map(|(&base, r)| (base, r.len)).collect()
    }

    /// The device whose range covers `[addr, addr + len)` entirely, with `addr`'s offset
    /// into that range.
    fn resolve(&self, addr: u64, len: usize) -> Option<(u64, Arc<Mutex<dyn BusDevice>>)> {
        let len = u64::try_from(len).ok().filter(|&l| l > 0)?;
        let access_last = addr.checked_add(len - 1)?;
        let ranges = self.ranges.read().unwrap_or_else(PoisonError::into_inner);
        let (&base, range) = ranges.range(..=addr).next_back()?;
        if access_last > range.last(base) {
            return None;
        }
        Some((addr - base, range.device.clone()))
    }

    /// Reads `data.len()` bytes at `addr` from the device that covers them.
    ///
    /// Returns false, leaving `data` untouched, when no single device covers
    /// `[addr, addr + data.len())` entirely (including an empty `data`).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((offset, device)) = self.resolve(addr, data.len()) else {
            return false;
        };
        device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read(offset, data);
        true
    }

    /// Writes `data` at `addr` to the device that covers it.
    ///
    /// Returns false, dropping the write, when no single device covers
    /// `[addr, addr + data.len())` entirely (including an empty `data`).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((offset, device)) = self.resolve(addr, data.len()) else {
            return false;
        };
        device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(offset, data);
        true
    }
}

/// Moves the range at `old_base` to `new_base` if it exists and fits there.
fn move_range(
    ranges: &mut BTreeMap<u64, BusRange>,
    old_base: u64,
    new_base: u64,
) -> Result<(), BusError> {
    let len = ranges
        .get(&old_base)
        .map(|r| r.len)
        .ok_or(BusError::NoRange { base: old_base })?;
    check_free(ranges, new_base, len, Some(old_base))?;
    if let Some(range) = ranges.remove(&old_base) {
        ranges.insert(new_base, range);
    }
    Ok(())
}

/// Checks that `[base, base + len)` is a valid range that overlaps none in `ranges`
/// except the one at `ignore` (the range being moved).
fn check_free(
    ranges: &BTreeMap<u64, BusRange>,
    base: u64,
    len: u64,
    ignore: Option<u64>,
) -> Result<(), BusError> {
    if len == 0 {
        return Err(BusError::ZeroLength { base });
    }
    let last = base
        .checked_add(len - 1)
        .ok_or(BusError::Overflow { base, len })?;
    // Ranges are disjoint, so only the one with the highest base not above `last` (or,
    // when that is the range being moved, the one below it) can overlap.
    let mut candidates = ranges
        .range(..=last)
        .rev()
        .filter(|(b, _)| Some(**b) != ignore);
    if let Some((&other_base, other)) = candidates.next() {
        if other.last(other_base) >= base {
            return Err(BusError::Overlap { base, len });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every access and answers reads with a pattern derived from the offset.
    #[derive(Default)]
    struct Recorder {
        accesses: Vec<(&'static str, u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8).wrapping_add(0x10);
            }
            self.accesses.push(("r", offset, data.to_vec()));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.accesses.push(("w", offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    fn accesses(d: &Arc<Mutex<Recorder>>) -> Vec<(&'static str, u64, Vec<u8>)> {
        d.lock().unwrap().accesses.clone()
    }

    /// Regression (fuzz target vfio_config; issue 12's "no bus range starts at
    /// 0x100000000"): a BAR move whose KVM slots could not follow left the bus range moved
    /// and the device's bookkeeping at the old place, so every later move failed.
    #[test]
    fn relocate_with_moves_nothing_when_what_follows_fails() {
        let bus = Bus::new();
        bus.insert(0x1_0000_0000, 0x4000, recorder()).unwrap();
        let refused = bus.relocate_with(0x1_0000_0000, 0xffff_ffff_ffff_c000, || {
            Err("KVM refuses the slot".to_string())
        });
        assert_eq!(
            refused,
            Err(RelocateError::Then("KVM refuses the slot".into()))
        );
        assert_eq!(bus.ranges(), vec![(0x1_0000_0000, 0x4000)]);
        // The bus refusing runs nothing.
        bus.insert(0x2000_0000, 0x1000, recorder()).unwrap();
        let refused = bus.relocate_with(0x1_0000_0000, 0x2000_0000, || unreachable!());
        assert!(matches!(
            refused,
            Err(RelocateError::Bus(BusError::Overlap { .. }))
        ));
        // The next move from the old place works.
        bus.relocate_with(0x1_0000_0000, 0x3000_0000, || Ok(()))
            .unwrap();
        assert_eq!(
            bus.ranges(),
            vec![(0x2000_0000, 0x1000), (0x3000_0000, 0x4000)]
        );
    }

    #[test]
    fn relocate_moves_a_range_and_refuses_overlaps() {
        let bus = Bus::new();
        bus.insert(0x1000, 0x100, recorder()).unwrap();
        bus.insert(0x2000, 0x100, recorder()).unwrap();
        assert_eq!(
            bus.relocate(0x1000, 0x1f80),
            Err(BusError::Overlap {
                base: 0x1f80,
                len: 0x100
            })
        );
        assert_eq!(
            bus.relocate(0x3000, 0x4000),
            Err(BusError::NoRange { base: 0x3000 })
        );
        // Overlapping its own old place is fine.
        bus.relocate(0x1000, 0x1080).unwrap();
        let mut b = [0u8; 1];
        assert!(!bus.read(0x1000, &mut b));
        assert!(bus.read(0x1080, &mut b));
        assert_eq!(b, [0x10], "offset 0 of the moved range");
        assert!(bus.read(0x2000, &mut b));
    }

    #[test]
    fn insert_rejects_zero_length_overlap_and_overflow() {
        let bus = Bus::new();
        bus.insert(0x100, 0x10, recorder()).unwrap();
        assert_eq!(
            bus.insert(0x200, 0, recorder()),
            Err(BusError::ZeroLength { base: 0x200 })
        );
        // Same base, inside, straddling the start, straddling the end, enclosing.
        for (base, len) in [
            (0x100, 0x10),
            (0x104, 0x4),
            (0xf0, 0x11),
            (0x10f, 0x10),
            (0x0, 0x1000),
        ] {
            assert_eq!(
                bus.insert(base, len, recorder()),
                Err(BusError::Overlap { base, len }),
                "{base:#x}+{len:#x}"
            );
        }
        // Touching on either side is fine.
        bus.insert(0xf0, 0x10, recorder()).unwrap();
        bus.insert(0x110, 0x10, recorder()).unwrap();
        assert_eq!(
            bus.insert(u64::MAX - 1, 3, recorder()),
            Err(BusError::Overflow {
                base: u64::MAX - 1,
                len: 3
            })
        );
        // The very last byte of the address space is usable.
        bus.insert(u64::MAX, 1, recorder()).unwrap();
    }

    #[test]
    fn dispatch_passes_relative_offsets_and_data() {
        let bus = Bus::new();
        let a = recorder();
        let b = recorder();
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.insert(0x1000, 0x100, b.clone()).unwrap();

        assert!(bus.write(0x3f8, &[0x41]));
        let mut data = [0u8; 2];
        assert!(bus.read(0x3fa, &mut data));
        assert_eq!(data, [0x12, 0x13]);
        assert!(bus.write(0x10fc, &[1, 2, 3, 4]));

        assert_eq!(
            accesses(&a),
            vec![("w", 0, vec![0x41]), ("r", 2, vec![0x12, 0x13])]
        );
        assert_eq!(accesses(&b), vec![("w", 0xfc, vec![1, 2, 3, 4])]);
    }

    #[test]
    fn boundary_and_straddling_accesses() {
        let bus = Bus::new();
        let a = recorder();
        let b = recorder();
        bus.insert(0x100, 0x10, a.clone()).unwrap();
        bus.insert(0x110, 0x10, b.clone()).unwrap();

        // Last byte / last dword of a: delivered to a.
        assert!(bus.write(0x10f, &[1]));
        assert!(bus.write(0x10c, &[1, 2, 3, 4]));
        // First byte of b: delivered to b at offset 0.
        assert!(bus.write(0x110, &[2]));
        // Straddling a→b, starting before a, running past b, in a gap: refused.
        let mut data = [0xaau8; 4];
        assert!(!bus.read(0x10e, &mut data));
        assert_eq!(data, [0xaa; 4], "a refused read leaves data untouched");
        assert!(!bus.write(0xfe, &[0, 0, 0, 0]));
        assert!(!bus.write(0x11e, &[0, 0, 0, 0]));
        assert!(!bus.write(0x120, &[0]));
        assert!(!bus.write(0x0, &[0]));
        // Empty accesses go nowhere.
        assert!(!bus.write(0x100, &[]));
        // An access whose end wraps the address space is refused, not wrapped.
        assert!(!bus.write(u64::MAX, &[0, 0]));

        assert_eq!(
            accesses(&a),
            vec![("w", 0xf, vec![1]), ("w", 0xc, vec![1, 2, 3, 4])]
        );
        assert_eq!(accesses(&b), vec![("w", 0, vec![2])]);
    }

    #[test]
    fn remove_takes_a_range_off_and_frees_its_place() {
        let bus = Bus::new();
        let a = recorder();
        bus.insert(0x100, 0x10, a.clone()).unwrap();
        assert!(bus.write(0x100, &[1]));
        assert!(matches!(
            bus.remove(0x104),
            Err(BusError::NoRange { base: 0x104 })
        ));
        bus.remove(0x100).unwrap();
        assert!(!bus.write(0x100, &[2]));
        assert!(matches!(
            bus.remove(0x100),
            Err(BusError::NoRange { base: 0x100 })
        ));
        // The place is free again, for another device.
        let b = recorder();
        bus.insert(0x108, 0x10, b.clone()).unwrap();
        assert!(bus.write(0x108, &[3]));
        assert_eq!(accesses(&a), vec![("w", 0, vec![1])]);
        assert_eq!(accesses(&b), vec![("w", 0, vec![3])]);
    }

    /// A vCPU-like reader dispatches without pause while another thread inserts and
    /// removes a device: every access lands whole on the device or on nothing, and the
    /// ranges that stay put are never missed.
    #[test]
    fn insert_and_remove_while_a_reader_dispatches() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let bus = Arc::new(Bus::new());
        let fixed = recorder();
        bus.insert(0x10, 4, fixed.clone()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (bus, stop) = (bus.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut hits, mut misses) = (0u64, 0u64);
                while !stop.load(Ordering::SeqCst) {
                    assert!(bus.write(0x10, &[0]), "the fixed range went missing");
                    let mut b = [0u8; 2];
                    if bus.read(0x1000, &mut b) {
                        assert_eq!(b, [0x10, 0x11]);
                        hits += 1;
                    } else {
                        assert_eq!(b, [0, 0]);
                        misses += 1;
                    }
                }
                (hits, misses)
            })
        };
        let hot = recorder();
        for _ in 0..2000 {
            bus.insert(0x1000, 0x100, hot.clone()).unwrap();
            std::thread::yield_now();
            bus.remove(0x1000).unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        let (hits, misses) = reader.join().unwrap();
        assert!(hits + misses > 0);
        assert!(accesses(&hot).iter().all(|(k, o, _)| *k == "r" && *o == 0));
        assert!(!bus.read(0x1000, &mut [0u8; 2]), "removed at the end");
    }

    #[test]
    fn one_device_at_two_ranges() {
        let bus = Bus::new();
        let a = recorder();
        bus.insert(0x10, 4, a.clone()).unwrap();
        bus.insert(0x20, 4, a.clone()).unwrap();
        assert!(bus.write(0x12, &[7]));
        assert!(bus.write(0x23, &[8]));
        assert_eq!(accesses(&a), vec![("w", 2, vec![7]), ("w", 3, vec![8])]);
    }
}
