//! Guest RAM: one anonymous mapping per laid-out range, with each zone's options
//! (shared, hugepages, prefault, host NUMA binding, KSM merging, swap reservation) and
//! the VM's THP choice, checked against what the host can give before anything is
//! mapped, and registered with KVM as one slot per range.

use std::path::Path;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use tessera_api::config::{MemoryZoneConfig, VmConfig};
use tessera_arch::layout::GuestLayout;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

/// Why guest RAM could not be set up; `field` names the configuration entry.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host cannot give what a zone asks for.
    #[error("{field}: {message}")]
    Host {
        /// `memory.size` or `memory.zones[i]...`.
        field: String,
        /// What the host lacks.
        message: String,
    },
    /// mmap, mbind or madvise failed.
    #[error("{field}: {what} failed: {source}")]
    Os {
        /// The zone.
        field: String,
        /// The call.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// KVM refused a memory slot.
    #[error("registering guest RAM at {base:#x} with KVM: {source}")]
    Kvm {
        /// Guest address of the range.
        base: u64,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// vm-memory refused the set of regions.
    #[error("assembling guest memory: {0}")]
    Regions(String),
}

impl MemoryError {
    /// The configuration field at fault.
    pub fn field(&self) -> String {
        match self {
            MemoryError::Host { field, .. } | MemoryError::Os { field, .. } => field.clone(),
            MemoryError::Kvm { .. } | MemoryError::Regions(_) => "memory".into(),
        }
    }
}

/// The options of zone `i`, or of the whole `memory` section without zones, with the
/// field path errors should name.
fn zone_options(config: &VmConfig, zone: usize) -> (MemoryZoneConfig, String) {
    match config.memory.zones.get(zone) {
        Some(z) => (z.clone(), format!("memory.zones[{zone}]")),
        None => {
            let m = &config.memory;
            (
                MemoryZoneConfig {
                    id: String::new(),
                    size: m.size,
                    shared: m.shared,
                    hugepages: m.hugepages,
                    hugepage_size: m.hugepage_size,
                    prefault: m.prefault,
                    reserve: m.reserve,
                    mergeable: m.mergeable,
                    ..MemoryZoneConfig::default()
                },
                "memory".into(),
            )
        }
    }
}

/// Checks that the host can give every zone what it asks for: enough available memory
/// (or free hugepages of the size asked), and the host NUMA nodes named.
pub fn check_host(config: &VmConfig, layout: &GuestLayout) -> Result<(), MemoryError> {
    check_host_at(config, layout, Path::new("/"))
}

/// [`check_host`] reading /proc and /sys under `root` (tests use a fake tree).
pub fn check_host_at(
    config: &VmConfig,
    layout: &GuestLayout,
    root: &Path,
) -> Result<(), MemoryError> {
    let available_kb = meminfo_kb(root, "MemAvailable").unwrap_or(0);
    let mut plain_total = 0u64;
    let mut huge_wanted: std::collections::BTreeMap<u64, (u64, String)> = Default::default();
    for zone in 0..layout.zones.len() {
        let (z, field) = zone_options(config, zone);
        if let Some(node) = z.host_numa_node {
            if !root
                .join(format!("sys/devices/system/node/node{node}"))
                .exists()
            {
                return Err(MemoryError::Host {
                    field: format!("{field}.host_numa_node"),
                    message: format!("the host has no NUMA node {node}"),
                });
            }
        }
        if z.hugepages {
            let size = match z.hugepage_size {
                Some(s) => s,
                None => meminfo_kb(root, "Hugepagesize").unwrap_or(2048) * 1024,
            };
            if size == 0 || z.size % size != 0 {
                return Err(MemoryError::Host {
                    field: format!("{field}.size"),
                    message: format!(
                        "{} bytes is not a whole number of {size}-byte hugepages",
                        z.size
                    ),
                });
            }
            let entry = huge_wanted.entry(size).or_insert((0, field.clone()));
            entry.0 += z.size / size;
        } else {
            plain_total = plain_total.saturating_add(z.size);
            if plain_total / 1024 > available_kb {
                return Err(MemoryError::Host {
                    field,
                    message: format!(
                        "guest RAM needs {} MiB but the host has {} MiB available",
                        plain_total >> 20,
                        available_kb >> 10
                    ),
                });
            }
        }
    }
    for (size, (pages, field)) in huge_wanted {
        let free_path = root.join(format!(
            "sys/kernel/mm/hugepages/hugepages-{}kB/free_hugepages",
            size / 1024
        ));
        let free: u64 = std::fs::read_to_string(&free_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if free < pages {
            return Err(MemoryError::Host {
                field: format!("{field}.hugepages"),
                message: format!(
                    "needs {pages} free {} KiB hugepages, the host has {free}",
                    size / 1024
                ),
            });
        }
    }
    Ok(())
}

fn meminfo_kb(root: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(root.join("proc/meminfo")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Alignment of guest RAM in this process. A range whose host address is 2 MiB aligned
/// like its guest address can be backed by transparent huge pages that KVM's nested page
/// tables and the IOMMU map with 2 MiB entries; misaligned, every 4 KiB page is mapped on
/// its own, which made DMA-mapping guest RAM for VFIO twice as slow as QEMU's.
const RAM_ALIGN: usize = 2 << 20;

/// Guest RAM: the regions, and the mappings behind them, unmapped when this is dropped.
/// Clones of the regions (`GuestMemoryMmap` is shared) must not outlive it.
pub struct GuestRam {
    memory: std::mem::ManuallyDrop<GuestMemoryMmap>,
    /// Our own mappings, as (address, length).
    mappings: Vec<(usize, usize)>,
}

impl std::ops::Deref for GuestRam {
    type Target = GuestMemoryMmap;
    fn deref(&self) -> &GuestMemoryMmap {
        &self.memory
    }
}

impl Drop for GuestRam {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: `memory` is not used again; the regions go before their mappings.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.memory) };
        for &(addr, len) in &self.mappings {
            // SAFETY: the mapping was made by `map_aligned` with this length, and the
            // regions that pointed into it are gone.
            unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        }
    }
}

/// An anonymous mapping of `len` bytes at a [`RAM_ALIGN`]-aligned address: a larger
/// reservation, the mapping placed over its aligned part, the slack given back.
#[allow(unsafe_code)]
fn map_aligned(len: usize, flags: libc::c_int) -> std::io::Result<*mut u8> {
    let reserve = len
        .checked_add(RAM_ALIGN)
        .ok_or_else(|| std::io::Error::other("too large"))?;
    // SAFETY: a new private reservation with no access; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let base = base as usize;
    let aligned = base.next_multiple_of(RAM_ALIGN);
    // SAFETY: MAP_FIXED over [aligned, aligned + len), which lies inside the reservation
    // we own, so no other mapping is replaced.
    let addr = unsafe {
        libc::mmap(
            aligned as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    let result = if addr == libc::MAP_FAILED {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(aligned as *mut u8)
    };
    let (head, tail_start) = match result {
        Ok(_) => (aligned - base, aligned + len),
        // Give the whole reservation back.
        Err(_) => (reserve, base + reserve),
    };
    // SAFETY: unmapping only the unused parts of our own reservation.
    unsafe {
        if head > 0 {
            libc::munmap(base as *mut libc::c_void, head);
        }
        if base + reserve > tail_start {
            libc::munmap(tail_start as *mut libc::c_void, base + reserve - tail_start);
        }
    }
    result
}

/// Maps guest RAM for the laid-out zones. Call [`check_host`] first.
pub fn allocate(config: &VmConfig, layout: &GuestLayout) -> Result<GuestRam, MemoryError> {
    let mut own = GuestRam {
        memory: std::mem::ManuallyDrop::new(GuestMemoryMmap::default()),
        mappings: Vec::new(),
    };
    let mut regions = Vec::new();
    for (zone, ranges) in layout.zones.iter().enumerate() {
        let (z, field) = zone_options(config, zone);
        for r in ranges {
            let len = usize::try_from(r.len()).map_err(|_| MemoryError::Host {
                field: field.clone(),
                message: "does not fit this host's address space".into(),
            })?;
            let mut flags = libc::MAP_ANONYMOUS;
            // Without `reserve`, as in CH: the kernel does not set swap aside for the
            // whole of guest RAM up front, so a guest larger than free memory plus swap
            // can start (and is only in trouble if it really touches all of it).
            if !z.reserve {
                flags |= libc::MAP_NORESERVE;
            }
            flags |= if z.shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
            if z.hugepages {
                flags |= libc::MAP_HUGETLB;
                if let Some(size) = z.hugepage_size {
                    flags |= (size.trailing_zeros() as i32) << libc::MAP_HUGE_SHIFT;
                }
            }
            let mut builder = MmapRegionBuilder::new(len)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(flags)
                .with_hugetlbfs(z.hugepages);
            // hugetlbfs pages are aligned by the kernel; other RAM is aligned here.
            if !z.hugepages {
                let addr = map_aligned(len, flags).map_err(|source| MemoryError::Os {
                    field: field.clone(),
                    what: "mmap",
                    source,
                })?;
                own.mappings.push((addr as usize, len));
                // SAFETY: `addr` is a live mapping of `len` bytes owned by `own`, which
                // outlives the region (see GuestRam).
                #[allow(unsafe_code)]
                {
                    builder = unsafe { builder.with_raw_mmap_pointer(addr) };
                }
            }
            let mapping = builder.build().map_err(|e| MemoryError::Os {
                field: field.clone(),
                what: "mmap",
                source: std::io::Error::other(e.to_string()),
            })?;
            if let Some(node) = z.host_numa_node {
                bind_to_node(mapping.as_ptr(), len, node).map_err(|source| MemoryError::Os {
                    field: format!("{field}.host_numa_node"),
                    what: "mbind",
                    source,
                })?;
            }
            // Before prefaulting, so the pages it faults in follow the advice.
            if !z.hugepages && !config.memory.thp {
                advise(mapping.as_ptr(), len, libc::MADV_NOHUGEPAGE).map_err(|source| {
                    MemoryError::Os {
                        field: "memory.thp".into(),
                        what: "madvise(MADV_NOHUGEPAGE)",
                        source,
                    }
                })?;
            } else if !z.hugepages {
                // As Cloud Hypervisor does: with THP in `madvise` mode (or defrag only for
                // advised ranges) the kernel backs guest RAM with huge pages only when asked.
                // A kernel without THP refuses the advice; guest RAM then works in 4 KiB pages.
                if let Err(e) = advise(mapping.as_ptr(), len, libc::MADV_HUGEPAGE) {
                    tracing::warn!("{field}: madvise(MADV_HUGEPAGE) failed ({e}): no huge pages");
                }
            }
            if z.mergeable {
                advise(mapping.as_ptr(), len, libc::MADV_MERGEABLE).map_err(|source| {
                    MemoryError::Os {
                        field: format!("{field}.mergeable"),
                        what: "madvise(MADV_MERGEABLE) (is the host kernel built with KSM?)",
                        source,
                    }
                })?;
            }
            if z.prefault {
                populate(mapping.as_ptr() as usize, len, populate_unit(z.hugepages)).map_err(
                    |source| MemoryError::Os {
                        field: format!("{field}.prefault"),
                        what: "madvise(MADV_POPULATE_WRITE)",
                        source,
                    },
                )?;
            }
            let region = GuestRegionMmap::new(mapping, GuestAddress(r.start))
                .ok_or_else(|| MemoryError::Regions(format!("range {:#x} overflows", r.start)))?;
            regions.push(region);
        }
    }
    let memory =
        GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Regions(e.to_string()))?;
    *own.memory = memory;
    Ok(own)
}

/// Binds a mapping's pages to one host NUMA node (strictly, moving any already there).
#[allow(unsafe_code)]
fn bind_to_node(addr: *mut u8, len: usize, node: u32) -> std::io::Result<()> {
    const MPOL_BIND: libc::c_long = 2;
    const MPOL_MF_STRICT: libc::c_long = 1;
    const MPOL_MF_MOVE: libc::c_long = 2;
    let words = node as usize / 64 + 1;
    let mut mask = vec![0u64; words];
    if let Some(w) = mask.get_mut(node as usize / 64) {
        *w |= 1 << (node % 64);
    }
    // SAFETY: mbind only changes the policy of pages in [addr, addr + len), a mapping we
    // own; the mask outlives the call and holds `words * 64` bits, the maxnode given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr as libc::c_long,
            len as libc::c_long,
            MPOL_BIND,
            mask.as_ptr() as libc::c_long,
            (words * 64) as libc::c_long,
            MPOL_MF_STRICT | MPOL_MF_MOVE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// madvise(2) on a whole mapping.
#[allow(unsafe_code)]
fn advise(addr: *mut u8, len: usize, advice: libc::c_int) -> std::io::Result<()> {
    // SAFETY: madvise on a mapping we own; the advice used here (MADV_NOHUGEPAGE,
    // MADV_MERGEABLE) changes how the kernel backs the pages, never their contents.
    let rc = unsafe { libc::madvise(addr.cast(), len, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// At most this many threads fault guest RAM in at once.
const MAX_POPULATE_THREADS: usize = 16;

/// The unit a prefault splits a mapping at, so no page is shared by two threads: 2 MiB
/// (a transparent huge page), or 1 GiB for hugetlbfs, whose pages may be that large.
fn populate_unit(hugetlbfs: bool) -> usize {
    if hugetlbfs {
        1 << 30
    } else {
        RAM_ALIGN
    }
}

/// Faults in every page of all guest RAM now, on several threads: for VFIO, whose
/// DMA map pins (so faults in, one page after the other on one thread) every page anyway,
/// so faulting them in first costs no memory and divides the time by the CPUs there are.
/// Returns how many threads the largest region used.
pub fn populate_all(memory: &GuestMemoryMmap) -> std::io::Result<usize> {
    use vm_memory::GuestMemoryRegion as _;
    let mut most = 1;
    for r in memory.iter() {
        let len = usize::try_from(r.len()).map_err(std::io::Error::other)?;
        let threads = populate(
            r.as_ptr() as usize,
            len,
            populate_unit(r.is_hugetlbfs() == Some(true)),
        )?;
        most = most.max(threads);
    }
    Ok(most)
}

/// Faults in every page of a mapping now rather than at first guest touch, splitting it
/// at multiples of `unit` over up to one thread per CPU: the kernel zeroes each page as
/// it faults it in, the whole cost of prefaulting, and that scales with CPUs. Returns the
/// number of threads used.
fn populate(addr: usize, len: usize, unit: usize) -> std::io::Result<usize> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cpus.min(MAX_POPULATE_THREADS).min(len / unit).max(1);
    let chunk = len.div_ceil(threads).next_multiple_of(unit);
    if threads == 1 || chunk >= len {
        populate_range(addr, len)?;
        return Ok(1);
    }
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..len)
            .step_by(chunk)
            .map(|offset| {
                scope.spawn(move || populate_range(addr + offset, chunk.min(len - offset)))
            })
            .collect();
        let spawned = workers.len();
        for worker in workers {
            worker
                .join()
                .map_err(|_| std::io::Error::other("a prefault thread panicked"))??;
        }
        Ok(spawned)
    })
}

/// MADV_POPULATE_WRITE over one range of a mapping.
#[allow(unsafe_code)]
fn populate_range(addr: usize, len: usize) -> std::io::Result<()> {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    // SAFETY: madvise on (part of) a mapping we own; MADV_POPULATE_WRITE only faults
    // pages in, never changes their contents.
    let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, MADV_POPULATE_WRITE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Registers every region as a KVM memory slot (slot = region index).
///
/// The caller keeps `memory` alive at least as long as `vm`.
#[allow(unsafe_code)]
pub fn register(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in memory.iter().enumerate() {
        let base = region.start_addr().0;
        let host = region.as_ptr() as u64;
        let slot_region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: base,
            memory_size: region.len(),
            userspace_addr: host,
        };
        // SAFETY: the slot points at a mapping owned by `memory`, which the caller keeps
        // alive for as long as the VM, and which no other slot covers.
        unsafe { vm.set_user_memory_region(slot_region) }
            .map_err(|source| MemoryError::Kvm { base, source })?;
    }
    Ok(())
}
