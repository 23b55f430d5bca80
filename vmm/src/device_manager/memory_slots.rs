//! KVM memory-slot numbers for the VM's life: guest RAM holds the first ones from boot;
//! the BAR mappings of passed-through devices take the rest and give them back when the
//! device goes, so a VM that plugs and unplugs devices does not run out. Bookkeeping only;
//! the KVM calls are the caller's.

use std::collections::BTreeSet;

/// Every slot KVM offers is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("all {limit} KVM memory slots are in use")]
pub struct NoMemorySlot {
    /// How many slots KVM offers.
    pub limit: u32,
}

/// The free KVM memory-slot numbers.
#[derive(Debug)]
pub struct MemorySlots {
    /// Every slot at or above this one is unused.
    next: u32,
    /// KVM's number of slots (KVM_CAP_NR_MEMSLOTS).
    limit: u32,
    /// Slots below `next` given back.
    free: BTreeSet<u32>,
    /// The first slot handed out here; those below belong to guest RAM.
    first: u32,
}

impl MemorySlots {
    /// Slots `first..limit`; guest RAM holds `0..first`.
    pub fn new(first: u32, limit: u32) -> Self {
        MemorySlots {
            next: first,
            limit,
            free: BTreeSet::new(),
            first,
        }
    }

    /// The lowest free slot.
    pub fn allocate(&mut self) -> Result<u32, NoMemorySlot> {
        if let Some(slot) = self.free.pop_first() {
            return Ok(slot);
        }
        if self.next >= self.limit {
            return Err(NoMemorySlot { limit: self.limit });
        }
        let slot = self.next;
        self.next += 1;
        Ok(slot)
    }

    /// Gives `slot` back. Slots never handed out here are ignored.
    pub fn release(&mut self, slot: u32) {
        if (self.first..self.next).contains(&slot) {
            self.free.insert(slot);
        }
    }

    /// Slots handed out and not given back.
    pub fn in_use(&self) -> usize {
        (self.next - self.first) as usize - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_handed_out_lowest_first_and_reused() {
        let mut s = MemorySlots::new(3, 6);
        assert_eq!(s.allocate(), Ok(3));
        assert_eq!(s.allocate(), Ok(4));
        assert_eq!(s.allocate(), Ok(5));
        assert_eq!(s.allocate(), Err(NoMemorySlot { limit: 6 }));
        assert_eq!(s.in_use(), 3);
        s.release(4);
        s.release(3);
        // Guest RAM's slots and slots never handed out are not ours to give.
        s.release(0);
        s.release(9);
        assert_eq!(s.in_use(), 1);
        assert_eq!(s.allocate(), Ok(3));
        assert_eq!(s.allocate(), Ok(4));
        assert_eq!(s.allocate(), Err(NoMemorySlot { limit: 6 }));
    }
}
