//! The guest physical address map.
//!
//! ```text
//! 0            .. 3 GiB         RAM (low)
//! 3 GiB        .. 3.5 GiB       PCI 32-bit MMIO windows, split evenly between segments
//! 3.5 GiB      .. 3.75 GiB      ECAM, 1 MiB (bus 0) per segment
//! 0xfec0_0000                   I/O APIC
//! 0xfed0_1000                   GED event register
//! 0xfed0_2000                   PCI hotplug controller registers (PCIU/PCID/B0EJ/PSEG)
//! 0xfee0_0000                   local APIC
//! 4 GiB        .. RAM end       RAM (high)
//! 128 MiB-aligned after RAM,    device memory: passed-through BARs as node RAM, each
//!   at or above 4 GiB             at a 128 MiB boundary (Linux's memory section)
//! top of low RAM (below 1 MiB's  the ACPI tables but the RSDP, an e820 ACPI area
//! ...3 GiB, whichever is lower)    carved from the end of low RAM (`reserve_acpi`)
//! 1 GiB-aligned after those     PCI 64-bit MMIO windows, one per segment, up to the
//!                               guest's physical address width
//! ```
//! RAM zones are laid out in order from 0, a zone crossing 3 GiB continuing at 4 GiB,
//! so each zone is one or two ranges. The same zones always give the same addresses.

/// Start of the 32-bit hole below 4 GiB.
pub const MEM_32BIT_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit hole.
pub const MEM_32BIT_GAP_END: u64 = 1 << 32;
/// Total of the segments' 32-bit MMIO windows.
pub const MMIO32_START: u64 = MEM_32BIT_GAP_START;
/// Size of all 32-bit MMIO windows together.
pub const MMIO32_SIZE: u64 = 0x2000_0000;
/// ECAM base; segment `n`'s bus 0 is at `ECAM_START + n MiB`.
pub const ECAM_START: u64 = 0xe000_0000;
/// ECAM bytes per segment: one bus (a root bus without bridges).
pub const ECAM_SIZE_PER_SEGMENT: u64 = 1 << 20;
/// The most PCI segments the ECAM area holds.
pub const MAX_PCI_SEGMENTS: u16 = 256;
/// I/O APIC MMIO.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// GED event register (4 bytes).
pub const GED_START: u64 = 0xfed0_1000;
/// The ACPI PCI hotplug controller's register block; its length and register offsets
/// are the device model's (`tessera_devices::pci_hotplug`). A page of its own, after the GED.
pub const PCI_HOTPLUG_START: u64 = 0xfed0_2000;
/// Local APIC MMIO.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Where the RSDP goes (the BIOS area the kernel scans). The tables it points to are in
/// the ACPI area at the top of low RAM ([`GuestLayout::reserve_acpi`]), as firmware puts
/// them, so their size is bounded by RAM rather than by the 128 KiB BIOS area.
pub const RSDP_START: u64 = 0x000e_0000;
/// First byte of RAM the e820 map reports past the legacy hole (640 KiB..1 MiB).
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// End of conventional memory.
pub const EBDA_START: u64 = 0x9_fc00;
/// Size of each 64-bit MMIO window, unless the address width leaves less.
pub const MMIO64_SIZE_PER_SEGMENT: u64 = 64 << 30;

const GIB: u64 = 1 << 30;
const PAGE_SIZE: u64 = 4096;

/// A half-open range `[start, end)` of guest physical addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
}

impl Range {
    /// Bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// One segment's windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentWindows {
    /// ECAM for bus 0 (MCFG base for the segment).
    pub ecam: Range,
    /// 32-bit MMIO window for BARs.
    pub mmio32: Range,
    /// 64-bit MMIO window for BARs.
    pub mmio64: Range,
}

/// The kind of an e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM.
    Ram,
    /// Reserved.
    Reserved,
    /// ACPI tables (e820 type 3): RAM the guest leaves alone, holding its tables.
    Acpi,
}

/// The laid-out guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestLayout {
    /// Per zone, in the order given: its RAM ranges (one, or two if it crosses 3 GiB).
    pub zones: Vec<Vec<Range>>,
    /// Per device-memory BAR, in the order given: its guest range (RAM in the e820).
    pub device_memory: Vec<Range>,
    /// Per PCI segment: its windows.
    pub segments: Vec<SegmentWindows>,
    /// The e820 map: RAM and the reserved areas the guest must not use.
    pub e820: Vec<(Range, E820Kind)>,
}

/// Why a layout cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A zone of zero bytes.
    #[error("memory zone {index} is empty")]
    EmptyZone {
        /// Index of the zone.
        index: usize,
    },
    /// A zone that is not a whole number of 4 KiB pages.
    #[error("memory zone {index}: {size:#x} bytes is not a multiple of 4 KiB")]
    UnalignedZone {
        /// Index of the zone.
        index: usize,
        /// Its size.
        size: u64,
    },
    /// Too many segments for the ECAM area.
    #[error("{count} PCI segments, at most {max} fit")]
    TooManySegments {
        /// Requested.
        count: u16,
        /// The limit.
        max: u16,
    },
    /// The ACPI tables do not fit in low RAM above 1 MiB.
    #[error("the ACPI tables need {size:#x} bytes but low RAM above 1 MiB has {room:#x}")]
    AcpiTooLarge {
        /// Bytes the tables need (whole pages).
        size: u64,
        /// Low RAM there is.
        room: u64,
    },
    /// A device-memory BAR that is not a whole number of memory sections.
    #[error("device memory {index}: {size:#x} bytes is not a multiple of {align:#x}")]
    UnalignedDeviceMemory {
        /// Index in the order given.
        index: usize,
        /// Its size.
        size: u64,
        /// [`DEVICE_MEMORY_ALIGN`].
        align: u64,
    },
    /// RAM and 64-bit MMIO windows do not fit the guest's physical address width.
    #[error("{needed:#x} bytes of address space are needed but {phys_bits} physical address bits give {limit:#x}")]
    AddressSpace {
        /// End of the last thing to place.
        needed: u64,
        /// The guest's physical address width.
        phys_bits: u8,
        /// `1 << phys_bits`.
        limit: u64,
    },
}

impl GuestLayout {
    /// Carves `size` bytes (rounded up to whole pages) for the ACPI tables from the end of
    /// the low RAM above 1 MiB, marks them [`E820Kind::Acpi`], and returns the area.
    /// The top of low RAM is where firmware puts them, away from the kernel (loaded low)
    /// and the initramfs (placed below the area, since it only goes into e820 RAM).
    pub fn reserve_acpi(&mut self, size: u64) -> Result<Range, LayoutError> {
        let size = size.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE);
        let low = self
            .e820
            .iter_mut()
            .find(|(r, kind)| *kind == E820Kind::Ram && r.start == HIGH_RAM_START);
        let Some((ram, _)) = low else {
            return Err(LayoutError::AcpiTooLarge { size, room: 0 });
        };
        // Keep at least one page of RAM below, so the entry (and the kernel's 1 MiB) stay.
        if size.saturating_add(PAGE_SIZE) > ram.len() {
            return Err(LayoutError::AcpiTooLarge {
                size,
                room: ram.len().saturating_sub(PAGE_SIZE),
            });
        }
        let area = Range {
            start: ram.end - size,
            end: ram.end,
        };
        ram.end = area.start;
        if let Some(at) = self.e820.iter().position(|(r, _)| r.start > area.start) {
            self.e820.insert(at, (area, E820Kind::Acpi));
        } else {
            self.e820.push((area, E820Kind::Acpi));
        }
        Ok(area)
    }
}

/// Where device memory starts and what it is a multiple of: Linux's x86_64 memory
/// section (128 MiB), so no section spans RAM of two nodes.
pub const DEVICE_MEMORY_ALIGN: u64 = 128 << 20;

/// Lays out RAM zones (sizes in bytes, in order) and `segments` PCI segments for a guest
/// with `phys_bits` physical address bits.
pub fn lay_out(
    zone_sizes: &[u64],
    segments: u16,
    phys_bits: u8,
) -> Result<GuestLayout, LayoutError> {
    lay_out_with_device_memory(zone_sizes, &[], segments, phys_bits)
}

/// [`lay_out`] with device memory: BARs of `device_memory` bytes each (multiples of
/// [`DEVICE_MEMORY_ALIGN`]) placed in order after RAM, at or above 4 GiB, before the
/// 64-bit windows.
pub fn lay_out_with_device_memory(
    zone_sizes: &[u64],
    device_memory: &[u64],
    segments: u16,
    phys_bits: u8,
) -> Result<GuestLayout, LayoutError> {
    if segments > MAX_PCI_SEGMENTS {
        return Err(LayoutError::TooManySegments {
            count: segments,
            max: MAX_PCI_SEGMENTS,
        });
    }
    let limit = 1u64.checked_shl(u32::from(phys_bits)).unwrap_or(u64::MAX);
    let too_big = |needed: u64| LayoutError::AddressSpace {
        needed,
        phys_bits,
        limit,
    };

    let mut zones = Vec::with_capacity(zone_sizes.len());
    let mut next = 0u64;
    for (index, &size) in zone_sizes.iter().enumerate() {
        if size == 0 {
            return Err(LayoutError::EmptyZone { index });
        }
        if size % 4096 != 0 {
            return Err(LayoutError::UnalignedZone { index, size });
        }
        let mut ranges = Vec::with_capacity(2);
        let mut left = size;
        while left > 0 {
            if next == MEM_32BIT_GAP_START {
                next = MEM_32BIT_GAP_END;
            }
            let room = if next < MEM_32BIT_GAP_START {
                MEM_32BIT_GAP_START - next
            } else {
                u64::MAX - next
            };
            let take = left.min(room);
            let end = next.checked_add(take).ok_or_else(|| too_big(u64::MAX))?;
            ranges.push(Range { start: next, end });
            next = end;
            left -= take;
        }
        zones.push(ranges);
    }
    let ram_end = next;

    let mut device_ranges = Vec::with_capacity(device_memory.len());
    let mut next =
        ram_end.max(MEM_32BIT_GAP_END).div_ceil(DEVICE_MEMORY_ALIGN) * DEVICE_MEMORY_ALIGN;
    for (index, &size) in device_memory.iter().enumerate() {
        if size == 0 || size % DEVICE_MEMORY_ALIGN != 0 {
            return Err(LayoutError::UnalignedDeviceMemory {
                index,
                size,
                align: DEVICE_MEMORY_ALIGN,
            });
        }
        let end = next.checked_add(size).ok_or_else(|| too_big(u64::MAX))?;
        device_ranges.push(Range { start: next, end });
        next = end;
    }
    let used_end = device_ranges.last().map_or(ram_end, |r| r.end);

    let count = u64::from(segments);
    let mmio32_each = MMIO32_SIZE.checked_div(count).unwrap_or(0) & !0xfffff;
    let mmio64_base = used_end.max(MEM_32BIT_GAP_END).div_ceil(GIB) * GIB;
    // Share what the address width leaves, up to the default size, 1 GiB aligned.
    let mmio64_each = (limit
        .saturating_sub(mmio64_base)
        .checked_div(count)
        .unwrap_or(0)
        & !(GIB - 1))
        .min(MMIO64_SIZE_PER_SEGMENT);
    if segments > 0 && mmio64_each == 0 {
        return Err(too_big(
            mmio64_base.saturating_add(GIB.saturating_mul(count)),
        ));
    }
    if used_end > limit {
        return Err(too_big(used_end));
    }
    let segments = (0..count)
        .map(|n| SegmentWindows {
            ecam: Range {
                start: ECAM_START + n * ECAM_SIZE_PER_SEGMENT,
                end: ECAM_START + (n + 1) * ECAM_SIZE_PER_SEGMENT,
            },
            mmio32: Range {
                start: MMIO32_START + n * mmio32_each,
                end: MMIO32_START + (n + 1) * mmio32_each,
            },
            mmio64: Range {
                start: mmio64_base + n * mmio64_each,
                end: mmio64_base + (n + 1) * mmio64_each,
            },
        })
        .collect();

    let mut e820 = Vec::new();
    let low_end = ram_end.min(MEM_32BIT_GAP_START);
    // Conventional memory, then the EBDA/BIOS hole (where the RSDP lives), then the rest.
    e820.push((
        Range {
            start: 0,
            end: EBDA_START.min(low_end),
        },
        E820Kind::Ram,
    ));
    if low_end > HIGH_RAM_START {
        e820.push((
            Range {
                start: EBDA_START,
                end: HIGH_RAM_START,
            },
            E820Kind::Reserved,
        ));
        e820.push((
            Range {
                start: HIGH_RAM_START,
                end: low_end,
            },
            E820Kind::Ram,
        ));
    }
    let reserved_ecam_end = ECAM_START + count * ECAM_SIZE_PER_SEGMENT;
    if count > 0 {
        e820.push((
            Range {
                start: ECAM_START,
                end: reserved_ecam_end,
            },
            E820Kind::Reserved,
        ));
    }
    if ram_end > MEM_32BIT_GAP_END {
        e820.push((
            Range {
                start: MEM_32BIT_GAP_END,
                end: ram_end,
            },
            E820Kind::Ram,
        ));
    }
    for r in &device_ranges {
        e820.push((*r, E820Kind::Ram));
    }
    Ok(GuestLayout {
        zones,
        device_memory: device_ranges,
        segments,
        e820,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn two_small_zones_sit_back_to_back_from_zero() {
        let l = lay_out(&[256 * MIB, 256 * MIB], 1, 40).unwrap();
        assert_eq!(
            l.zones[0],
            vec![Range {
                start: 0,
                end: 256 * MIB
            }]
        );
        assert_eq!(
            l.zones[1],
            vec![Range {
                start: 256 * MIB,
                end: 512 * MIB
            }]
        );
        assert_eq!(
            l.e820,
            vec![
                (
                    Range {
                        start: 0,
                        end: EBDA_START
                    },
                    E820Kind::Ram
                ),
                (
                    Range {
                        start: EBDA_START,
                        end: HIGH_RAM_START
                    },
                    E820Kind::Reserved
                ),
                (
                    Range {
                        start: HIGH_RAM_START,
                        end: 512 * MIB
                    },
                    E820Kind::Ram
                ),
                (
                    Range {
                        start: ECAM_START,
                        end: ECAM_START + MIB
                    },
                    E820Kind::Reserved
                ),
            ]
        );
        let s = l.segments[0];
        assert_eq!(
            s.mmio32,
            Range {
                start: MMIO32_START,
                end: MMIO32_START + MMIO32_SIZE
            }
        );
        assert_eq!(s.mmio64.start, 4 * GIB);
        assert_eq!(s.mmio64.len(), MMIO64_SIZE_PER_SEGMENT);
    }

    #[test]
    fn a_zone_crossing_3_gib_continues_at_4_gib() {
        let l = lay_out(&[2 * GIB, 2 * GIB], 2, 46).unwrap();
        assert_eq!(
            l.zones[1],
            vec![
                Range {
                    start: 2 * GIB,
                    end: 3 * GIB
                },
                Range {
                    start: 4 * GIB,
                    end: 5 * GIB
                }
            ]
        );
        assert_eq!(
            l.e820.last(),
            Some(&(
                Range {
                    start: 4 * GIB,
                    end: 5 * GIB
                },
                E820Kind::Ram
            ))
        );
        // Windows: split evenly, never overlapping RAM or each other.
        assert_eq!(l.segments[1].mmio32.start, l.segments[0].mmio32.end);
        assert_eq!(l.segments[0].mmio64.start, 5 * GIB);
        assert_eq!(l.segments[1].ecam.start, ECAM_START + MIB);
    }

    #[test]
    fn everything_stays_clear_of_the_interrupt_controllers() {
        let l = lay_out(&[GIB], MAX_PCI_SEGMENTS, 46).unwrap();
        let last = l.segments.last().unwrap();
        assert!(last.ecam.end <= IOAPIC_START);
        assert!(last.mmio32.end <= ECAM_START);
    }

    #[test]
    fn the_address_width_bounds_ram_and_windows() {
        assert!(matches!(
            lay_out(&[GIB], 1, 31),
            Err(LayoutError::AddressSpace { .. })
        ));
        let l = lay_out(&[GIB], 2, 36).unwrap();
        assert!(l.segments[1].mmio64.end <= 1 << 36);
        assert!(matches!(
            lay_out(&[80 * GIB], 1, 36),
            Err(LayoutError::AddressSpace { .. })
        ));
    }

    #[test]
    fn bad_zones_and_counts() {
        assert_eq!(
            lay_out(&[0], 1, 40),
            Err(LayoutError::EmptyZone { index: 0 })
        );
        assert!(matches!(
            lay_out(&[MIB + 1], 1, 40),
            Err(LayoutError::UnalignedZone { .. })
        ));
        assert!(matches!(
            lay_out(&[MIB], 257, 40),
            Err(LayoutError::TooManySegments { .. })
        ));
    }

    #[test]
    fn the_acpi_area_is_carved_from_the_top_of_low_ram() {
        let mut l = lay_out(&[256 * MIB, 256 * MIB], 1, 40).unwrap();
        let area = l.reserve_acpi(5000).unwrap();
        assert_eq!(
            area,
            Range {
                start: 512 * MIB - 8192,
                end: 512 * MIB
            }
        );
        let ram = |start, end| (Range { start, end }, E820Kind::Ram);
        assert_eq!(l.e820[2], ram(HIGH_RAM_START, 512 * MIB - 8192));
        assert_eq!(l.e820[3], (area, E820Kind::Acpi));
        // The zones (and so the SRAT's memory ranges) still cover it.
        assert_eq!(l.zones[1][0].end, 512 * MIB);

        // Above 3 GiB of RAM it sits just below the 32-bit gap, before the high RAM entry.
        let mut l = lay_out(&[4 * GIB], 1, 40).unwrap();
        let area = l.reserve_acpi(4096).unwrap();
        assert_eq!(area.end, MEM_32BIT_GAP_START);
        let kinds: Vec<E820Kind> = l.e820.iter().map(|e| e.1).collect();
        assert_eq!(
            kinds,
            [
                E820Kind::Ram,
                E820Kind::Reserved,
                E820Kind::Ram,
                E820Kind::Acpi,
                E820Kind::Reserved,
                E820Kind::Ram
            ]
        );
        assert!(l.e820.windows(2).all(|w| w[0].0.end <= w[1].0.start));
    }

    #[test]
    fn device_memory_follows_ram_above_4_gib_before_the_windows() {
        let l = lay_out_with_device_memory(&[512 * MIB], &[128 * MIB, 256 * MIB], 1, 40).unwrap();
        let a = Range {
            start: 4 * GIB,
            end: 4 * GIB + 128 * MIB,
        };
        let b = Range {
            start: a.end,
            end: a.end + 256 * MIB,
        };
        assert_eq!(l.device_memory, vec![a, b]);
        assert_eq!(
            l.e820[l.e820.len() - 2..],
            [(a, E820Kind::Ram), (b, E820Kind::Ram)]
        );
        assert_eq!(l.segments[0].mmio64.start, 5 * GIB);
        // After high RAM, at the next 128 MiB boundary.
        let l = lay_out_with_device_memory(&[3 * GIB + 4 * MIB], &[128 * MIB], 1, 40).unwrap();
        assert_eq!(l.device_memory[0].start, 4 * GIB + 128 * MIB);
        assert!(l.e820.windows(2).all(|w| w[0].0.end <= w[1].0.start));
        assert_eq!(
            lay_out_with_device_memory(&[GIB], &[64 * MIB], 1, 40),
            Err(LayoutError::UnalignedDeviceMemory {
                index: 0,
                size: 64 * MIB,
                align: DEVICE_MEMORY_ALIGN
            })
        );
        assert!(matches!(
            lay_out_with_device_memory(&[GIB], &[128 * MIB], 1, 32),
            Err(LayoutError::AddressSpace { .. })
        ));
    }

    #[test]
    fn acpi_tables_bigger_than_low_ram_are_refused() {
        let mut l = lay_out(&[2 * MIB], 1, 40).unwrap();
        assert_eq!(
            l.reserve_acpi(MIB),
            Err(LayoutError::AcpiTooLarge {
                size: MIB,
                room: MIB - 4096
            })
        );
        assert_eq!(l, lay_out(&[2 * MIB], 1, 40).unwrap());
        // No RAM above 1 MiB at all.
        let mut l = lay_out(&[MIB], 1, 40).unwrap();
        assert!(l.reserve_acpi(4096).is_err());
    }
}
