//! The boot protocol: loading a kernel (a bzImage, or an ELF vmlinux with a PVH entry
//! note) and an initramfs into guest memory, and writing the command line and the boot
//! parameters the kernel reads at its entry point (the bzImage zero page or the PVH
//! `hvm_start_info`). The parsing and the structures come from `linux-loader`.
//!
//! Low memory used for booting (all of it below the EBDA at
//! [`EBDA_START`], so clear of the reserved e820 area and of the
//! RSDP at [`RSDP_START`]):
//!
//! ```text
//! 0x500   .. 0x520    GDT: null, TSS (0x08), code (0x10 = __BOOT_CS), data (0x18 = __BOOT_DS)
//! 0x520   .. 0x528    IDT (one empty gate)
//! 0x7000  .. 0x8000   zero page (bzImage) or hvm_start_info + module list + memory map (PVH)
//! 0x8000  .. 0x8ff0   boot stack, growing down from 0x8ff0
//! 0x9000  .. 0xf000   page tables: PML4, PDPT, 4 PDs identity-mapping 4 GiB with 2 MiB pages
//! 0x20000 .. 0x21000  kernel command line
//! 0x100000 ..         kernel
//! ```

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::{Cmdline, Error as CmdlineError};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams, Error as ConfiguratorError};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{
    bzimage, elf, load_cmdline, BzImage, Elf, Error as LoaderError, KernelLoader, PvhBootCapability,
};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
    GuestMemoryRegion,
};

use crate::layout::{E820Kind, Range, EBDA_START, HIGH_RAM_START, MEM_32BIT_GAP_START, RSDP_START};

/// Guest physical address of the boot GDT.
pub const GDT_START: u64 = 0x500;
/// Guest physical address of the boot IDT.
pub const IDT_START: u64 = 0x520;
/// Guest physical address of the bzImage zero page (`boot_params`), and of the PVH
/// `hvm_start_info`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Guest physical address of the PVH module list (one entry: the initramfs).
pub const PVH_MODLIST_START: u64 = 0x7040;
/// Guest physical address of the PVH memory map (up to [`E820_MAX_ENTRIES`] entries).
pub const PVH_MEMMAP_START: u64 = 0x7100;
/// Initial stack pointer of the boot CPU (bzImage entry).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Guest physical address of the boot PML4.
pub const PML4_START: u64 = 0x9000;
/// Guest physical address of the boot PDPT.
pub const PDPTE_START: u64 = 0xa000;
/// Guest physical address of the first of the boot page directories.
pub const PDE_START: u64 = 0xb000;
/// How many boot page directories there are, each mapping 1 GiB with 2 MiB pages.
pub const PDE_COUNT: u64 = 4;
/// One past the last byte of the boot page tables.
pub const PAGE_TABLES_END: u64 = PDE_START + PDE_COUNT * 0x1000;
/// Guest physical address of the kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Most bytes the command line may take, its terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Where a bzImage is loaded (its protected-mode code; the 64-bit entry is 0x200 in).
pub const KERNEL_START: u64 = HIGH_RAM_START;
/// Most e820 entries the zero page (and the PVH memory map area) holds.
pub const E820_MAX_ENTRIES: usize = 128;

/// Offset of the 64-bit entry point (`startup_64`) from a bzImage's load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// The bzImage setup header's magic, "HdrS".
const BZIMAGE_HEADER_MAGIC: u32 = 0x5372_6448;
/// `xloadflags` bit: the kernel has the 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1;
/// Boot protocol 2.12, the first with `xloadflags` (and with `pref_address`, 2.10).
const BOOT_PROTOCOL_XLOADFLAGS: u16 = 0x020c;
/// `type_of_loader` for a boot loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `initrd_addr_max` the boot protocol implies before version 2.03.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// e820 type of usable RAM.
const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
const E820_RESERVED: u32 = 2;
/// e820 type of the ACPI tables' memory.
const E820_ACPI: u32 = 3;
const PAGE_SIZE: u64 = 0x1000;

// The boot structures are apart, in order, and below the EBDA (so below the RSDP too).
const _: () = {
    assert!(GDT_START + 4 * 8 <= IDT_START);
    assert!(IDT_START + 8 <= PVH_MODLIST_START);
    assert!(ZERO_PAGE_START + PAGE_SIZE <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER <= PML4_START);
    assert!(PDPTE_START == PML4_START + PAGE_SIZE && PDE_START == PDPTE_START + PAGE_SIZE);
    assert!(PAGE_TABLES_END <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(EBDA_START <= RSDP_START && KERNEL_START >= HIGH_RAM_START);
};

/// The boot protocol a kernel image is entered by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// A bzImage, entered at its 64-bit entry point with the zero page in RSI.
    BzImage,
    /// An ELF vmlinux with a PVH note, entered in 32-bit protected mode with the
    /// `hvm_start_info` in RBX.
    Pvh,
}

/// A kernel in guest memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadedKernel {
    /// The boot protocol.
    pub kind: KernelKind,
    /// 64-bit entry (bzImage: load addr + 0x200) or PVH 32-bit entry.
    pub entry: u64,
    /// End of the memory the kernel needs before it reads its memory map; the initramfs
    /// goes above. bzImage: where the kernel will run (its load address aligned up to
    /// `kernel_alignment`, at least `pref_address`) + `init_size`; ELF: the end of its
    /// last segment.
    pub end: u64,
    /// bzImage setup header, kept for boot_params.
    pub setup_header: Option<setup_header>,
}

/// Where and how the boot CPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// The boot protocol.
    pub kind: KernelKind,
    /// The first instruction.
    pub entry: u64,
    /// Zero page (bzImage: goes in RSI) or start_info (PVH: goes in RBX).
    pub params: u64,
}

/// Why a kernel or an initramfs cannot be loaded, or the boot parameters written.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The file cannot be opened, or is not a regular file.
    #[error("cannot open {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is neither a bzImage nor an ELF vmlinux with a PVH entry note.
    #[error("{} is not a kernel Tessera can boot: neither a bzImage nor an ELF vmlinux with a PVH entry note", path.display())]
    NotAKernel {
        /// The file.
        path: PathBuf,
    },
    /// A bzImage without the 64-bit entry point (a 32-bit kernel, or boot protocol
    /// older than 2.12).
    #[error("{} is a bzImage without a 64-bit entry point (boot protocol {version:#x}, xloadflags {xloadflags:#x})", path.display())]
    No64BitEntry {
        /// The file.
        path: PathBuf,
        /// Its boot protocol version.
        version: u16,
        /// Its `xloadflags`.
        xloadflags: u16,
    },
    /// The kernel was recognised but could not be copied into guest memory.
    #[error("cannot load the kernel {}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// What `linux-loader` reported.
        #[source]
        source: LoaderError,
    },
    /// The kernel needs memory up to `end` (contiguous RAM from where it is loaded) that
    /// the guest does not have.
    #[error("the kernel needs guest RAM from {start:#x} up to {end:#x}, but RAM from there ends at {ram_end:#x}")]
    KernelDoesNotFit {
        /// Where the kernel is loaded.
        start: u64,
        /// End of what it needs.
        end: u64,
        /// End of the RAM that is contiguous from `start`.
        ram_end: u64,
    },
    /// The initramfs cannot be read into guest memory.
    #[error("cannot read the initramfs {} into guest memory", path.display())]
    InitramfsRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: GuestMemoryError,
    },
    /// The initramfs does not fit between the kernel and the highest address it may use.
    #[error("the initramfs is {size:#x} bytes but only {room:#x} bytes of RAM are free for it between the kernel and its highest allowed address")]
    InitramfsTooLarge {
        /// Its size.
        size: u64,
        /// The room there is.
        room: u64,
    },
    /// The initramfs given to [`configure_boot`] is not in guest RAM.
    #[error("the initramfs at {addr:#x} ({size:#x} bytes) is not in guest RAM")]
    InitramfsNotInRam {
        /// Its address.
        addr: u64,
        /// Its size.
        size: u64,
    },
    /// The command line, with its NUL, is longer than [`CMDLINE_MAX_SIZE`].
    #[error("the kernel command line needs {size} bytes with its NUL, at most {max} fit")]
    CmdlineTooLong {
        /// Bytes needed, NUL included.
        size: usize,
        /// The limit, NUL included.
        max: usize,
    },
    /// The command line has characters a kernel command line cannot have (only printable
    /// ASCII may appear).
    #[error("invalid kernel command line")]
    InvalidCmdline(#[source] CmdlineError),
    /// The command line cannot be written to guest memory.
    #[error("cannot write the kernel command line at {CMDLINE_START:#x}")]
    CmdlineWrite(#[source] LoaderError),
    /// More e820 entries than the boot parameters hold.
    #[error("{count} e820 entries, at most {max} fit in the boot parameters")]
    TooManyE820Entries {
        /// Entries given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A bzImage [`LoadedKernel`] without its setup header.
    #[error("a bzImage kernel needs its setup header to write the zero page")]
    MissingSetupHeader,
    /// The boot parameters cannot be written to guest memory.
    #[error("cannot write the boot parameters at {ZERO_PAGE_START:#x}")]
    BootParams(#[source] ConfiguratorError),
}

/// Opens `path`, which must be a regular file.
fn open_regular(path: &Path) -> Result<File, BootError> {
    let open_err = |source| BootError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if meta.is_dir() {
        return Err(open_err(io::Error::from(io::ErrorKind::IsADirectory)));
    }
    if !meta.is_file() {
        return Err(open_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    Ok(file)
}

/// End of the usable RAM that is contiguous from `start` (`start` itself if `start` is not
/// RAM): backed by `mem` and RAM in the `e820` map the guest gets, so nothing is loaded
/// over the ACPI area or a reserved range.
fn usable_ram_end(mem: &GuestMemoryMmap, e820: &[(Range, E820Kind)], start: u64) -> u64 {
    let mut end = start;
    let mut ram: Vec<&Range> = e820
        .iter()
        .filter(|(_, kind)| *kind == E820Kind::Ram)
        .map(|(r, _)| r)
        .collect();
    ram.sort_unstable_by_key(|r| r.start);
    for r in ram {
        if r.start <= end && r.end > end {
            end = r.end;
        }
    }
    end.min(contiguous_ram_end(mem, start))
}

/// End of the RAM that is contiguous from `start` (`start` itself if `start` is not RAM).
fn contiguous_ram_end(mem: &GuestMemoryMmap, start: u64) -> u64 {
    let mut regions: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| {
            let base = r.start_addr().raw_value();
            (base, base.saturating_add(r.len()))
        })
        .collect();
    regions.sort_unstable();
    let mut end = start;
    for (base, region_end) in regions {
        if base <= end && region_end > end {
            end = region_end;
        }
    }
    end
}

/// Loads a bzImage or an ELF vmlinux with a PVH note; anything else →
/// [`BootError::NotAKernel`] naming the file; missing file → [`BootError::Open`].
///
/// A bzImage is loaded at [`KERNEL_START`]; an ELF where its program headers say. The
/// RAM the kernel needs (up to [`LoadedKernel::end`]) must be in `mem` and RAM in `e820`. An ELF without
/// a PVH note has been copied into guest memory by the time it is refused.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    e820: &[(Range, E820Kind)],
    path: &Path,
) -> Result<LoadedKernel, BootError> {
    let mut file = open_regular(path)?;
    let load_err = |source| BootError::Load {
        path: path.to_path_buf(),
        source,
    };
    let not_a_kernel = || BootError::NotAKernel {
        path: path.to_path_buf(),
    };

    let kernel = match BzImage::load(
        mem,
        Some(GuestAddress(KERNEL_START)),
        &mut file,
        Some(GuestAddress(HIGH_RAM_START)),
    ) {
        Ok(res) => {
            let hdr = res.setup_header.ok_or(BootError::MissingSetupHeader)?;
            bzimage_kernel(path, res.kernel_load.raw_value(), res.kernel_end, hdr)?
        }
        // No "HdrS" magic (or too short to have one): perhaps an ELF.
        Err(LoaderError::Bzimage(
            bzimage::Error::InvalidBzImage
            | bzimage::Error::ReadBzImageHeader
            | bzimage::Error::SeekBzImageHeader
            | bzimage::Error::SeekBzImageEnd,
        )) => {
            let res = match Elf::load(mem, None, &mut file, Some(GuestAddress(HIGH_RAM_START))) {
                Ok(res) => res,
                // Not a little-endian ELF64 with an entry in high memory.
                Err(LoaderError::Elf(
                    elf::Error::InvalidElfMagicNumber
                    | elf::Error::ReadElfHeader
                    | elf::Error::SeekElfStart
                    | elf::Error::BigEndianElfOnLittle
                    | elf::Error::InvalidProgramHeaderSize
                    | elf::Error::InvalidProgramHeaderOffset
                    | elf::Error::InvalidEntryAddress,
                )) => return Err(not_a_kernel()),
                Err(e) => return Err(load_err(e)),
            };
            let PvhBootCapability::PvhEntryPresent(entry) = res.pvh_boot_cap else {
                tracing::debug!(path = %path.display(), cap = %res.pvh_boot_cap, "ELF without a PVH entry");
                return Err(not_a_kernel());
            };
            LoadedKernel {
                kind: KernelKind::Pvh,
                entry: entry.raw_value(),
                end: res.kernel_end,
                setup_header: None,
            }
        }
        Err(e) => return Err(load_err(e)),
    };

    let start = match kernel.kind {
        KernelKind::BzImage => KERNEL_START,
        KernelKind::Pvh => kernel.entry,
    };
    let ram_end = usable_ram_end(mem, e820, start);
    if kernel.end > ram_end {
        return Err(BootError::KernelDoesNotFit {
            start,
            end: kernel.end,
            ram_end,
        });
    }
    tracing::debug!(
        path = %path.display(),
        kind = ?kernel.kind,
        entry = format_args!("{:#x}", kernel.entry),
        end = format_args!("{:#x}", kernel.end),
        "kernel loaded"
    );
    Ok(kernel)
}

/// Checks a loaded bzImage and works out its entry and the end of what it needs.
fn bzimage_kernel(
    path: &Path,
    load: u64,
    loaded_end: u64,
    hdr: setup_header,
) -> Result<LoadedKernel, BootError> {
    // Packed struct: copy the fields out.
    let (version, xloadflags) = (hdr.version, hdr.xloadflags);
    if version < BOOT_PROTOCOL_XLOADFLAGS || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::No64BitEntry {
            path: path.to_path_buf(),
            version,
            xloadflags,
        });
    }
    let (relocatable, align, pref, init_size) = (
        hdr.relocatable_kernel,
        u64::from(hdr.kernel_alignment),
        hdr.pref_address,
        u64::from(hdr.init_size),
    );
    // The decompressor moves itself to where the kernel will run and needs `init_size`
    // bytes from there: the load address rounded up to `kernel_alignment` if the kernel is
    // relocatable, but never below LOAD_PHYSICAL_ADDR (`pref_address`).
    let runs_at = if relocatable != 0 {
        load.div_ceil(align.max(1)).saturating_mul(align.max(1))
    } else {
        load
    }
    .max(pref);
    let end = runs_at.saturating_add(init_size).max(loaded_end);
    Ok(LoadedKernel {
        kind: KernelKind::BzImage,
        entry: load + BZIMAGE_64BIT_ENTRY_OFFSET,
        end,
        setup_header: Some(hdr),
    })
}

/// Places the initramfs page-aligned as high as possible below min(3 GiB gap, end of e820
/// RAM below 4 GiB, bzImage `initrd_addr_max`) and above `kernel.end`; errors if it doesn't fit
/// ([`BootError::InitramfsTooLarge`]). Returns its address and size.
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    e820: &[(Range, E820Kind)],
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<(u64, u64), BootError> {
    let mut file = open_regular(path)?;
    let size = file
        .metadata()
        .map_err(|source| BootError::Open {
            path: path.to_path_buf(),
            source,
        })?
        .len();

    let lowest = kernel.end.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE);
    let max_addr = match kernel.setup_header {
        Some(hdr) if hdr.version >= 0x0203 => u64::from(hdr.initrd_addr_max),
        Some(_) => DEFAULT_INITRD_ADDR_MAX,
        None => u64::MAX,
    };
    let limit = MEM_32BIT_GAP_START
        .min(usable_ram_end(mem, e820, lowest))
        .min(max_addr.saturating_add(1));
    let room = limit.saturating_sub(lowest);
    if size > room {
        return Err(BootError::InitramfsTooLarge { size, room });
    }
    let addr = (limit - size) / PAGE_SIZE * PAGE_SIZE;

    let read_err = |source| BootError::InitramfsRead {
        path: path.to_path_buf(),
        source,
    };
    let total = usize::try_from(size).map_err(|_| BootError::InitramfsTooLarge { size, room })?;
    let mut done = 0usize;
    while done < total {
        let n = mem
            .read_volatile_from(
                GuestAddress(addr).unchecked_add(done as u64),
                &mut file,
                total - done,
            )
            .map_err(read_err)?;
        if n == 0 {
            return Err(read_err(GuestMemoryError::PartialBuffer {
                expected: total,
                completed: done,
            }));
        }
        done += n;
    }
    tracing::debug!(
        path = %path.display(),
        addr = format_args!("{addr:#x}"),
        size = format_args!("{size:#x}"),
        "initramfs loaded"
    );
    Ok((addr, size))
}

/// The e820 type number of a kind.
fn e820_type(kind: E820Kind) -> u32 {
    match kind {
        E820Kind::Ram => E820_RAM,
        E820Kind::Reserved => E820_RESERVED,
        E820Kind::Acpi => E820_ACPI,
    }
}

/// Writes the command line at [`CMDLINE_START`] (at most [`CMDLINE_MAX_SIZE`] bytes with
/// its NUL, else [`BootError::CmdlineTooLong`]) and the boot parameters: for a bzImage the
/// zero page at [`ZERO_PAGE_START`] with the setup header, `type_of_loader` 0xff,
/// `cmd_line_ptr`/`cmdline_size`, `ramdisk_image`/`ramdisk_size` and the e820 table from
/// `e820` (at most [`E820_MAX_ENTRIES`]); for PVH an `hvm_start_info` at the same address
/// with the memory map at [`PVH_MEMMAP_START`] and, if there is an initramfs, a module
/// list at [`PVH_MODLIST_START`]. Returns where the boot CPU must start.
pub fn configure_boot(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &str,
    initramfs: Option<(u64, u64)>,
    e820: &[(Range, E820Kind)],
) -> Result<BootEntry, BootError> {
    if e820.len() > E820_MAX_ENTRIES {
        return Err(BootError::TooManyE820Entries {
            count: e820.len(),
            max: E820_MAX_ENTRIES,
        });
    }
    if let Some((addr, size)) = initramfs {
        let in_ram = usize::try_from(size)
            .is_ok_and(|len| size == 0 || mem.check_range(GuestAddress(addr), len));
        if !in_ram {
            return Err(BootError::InitramfsNotInRam { addr, size });
        }
    }
    let cmdline_len = write_cmdline(mem, cmdline)?;

    match kernel.kind {
        KernelKind::BzImage => {
            let hdr = kernel.setup_header.ok_or(BootError::MissingSetupHeader)?;
            let kernel_max = hdr.cmdline_size;
            if u64::from(kernel_max) < cmdline_len as u64 {
                tracing::warn!(
                    len = cmdline_len,
                    kernel_max,
                    "the kernel command line is longer than the kernel takes; it will be cut"
                );
            }
            let mut params = boot_params {
                hdr,
                ..Default::default()
            };
            params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
            params.hdr.header = BZIMAGE_HEADER_MAGIC;
            // Both fit: CMDLINE_START and CMDLINE_MAX_SIZE are small.
            params.hdr.cmd_line_ptr = CMDLINE_START as u32;
            params.hdr.cmdline_size = cmdline_len as u32;
            if let Some((addr, size)) = initramfs {
                params.hdr.ramdisk_image = addr as u32;
                params.ext_ramdisk_image = (addr >> 32) as u32;
                params.hdr.ramdisk_size = size as u32;
                params.ext_ramdisk_size = (size >> 32) as u32;
            }
            for (slot, (range, kind)) in params.e820_table.iter_mut().zip(e820) {
                *slot = boot_e820_entry {
                    addr: range.start,
                    size: range.end.saturating_sub(range.start),
                    r#type: e820_type(*kind),
                };
            }
            // At most E820_MAX_ENTRIES (128), checked above.
            params.e820_entries = e820.len() as u8;
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
                &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
                mem,
            )
            .map_err(BootError::BootParams)?;
        }
        KernelKind::Pvh => {
            let memmap: Vec<hvm_memmap_table_entry> = e820
                .iter()
                .map(|(range, kind)| hvm_memmap_table_entry {
                    addr: range.start,
                    size: range.end.saturating_sub(range.start),
                    type_: e820_type(*kind),
                    reserved: 0,
                })
                .collect();
            let mut start_info = hvm_start_info {
                magic: XEN_HVM_START_MAGIC_VALUE,
                version: 1,
                cmdline_paddr: CMDLINE_START,
                memmap_paddr: PVH_MEMMAP_START,
                // At most E820_MAX_ENTRIES (128), checked above.
                memmap_entries: memmap.len() as u32,
                ..Default::default()
            };
            let modules: Vec<hvm_modlist_entry> = initramfs
                .map(|(paddr, size)| hvm_modlist_entry {
                    paddr,
                    size,
                    cmdline_paddr: 0,
                    reserved: 0,
                })
                .into_iter()
                .collect();
            if !modules.is_empty() {
                start_info.nr_modules = modules.len() as u32;
                start_info.modlist_paddr = PVH_MODLIST_START;
            }
            let mut params = BootParams::new(&start_info, GuestAddress(ZERO_PAGE_START));
            params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
            if !modules.is_empty() {
                params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
            }
            PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
                .map_err(BootError::BootParams)?;
        }
    }
    let entry = BootEntry {
        kind: kernel.kind,
        entry: kernel.entry,
        params: ZERO_PAGE_START,
    };
    tracing::debug!(
        ?entry,
        e820_entries = e820.len(),
        ?initramfs,
        "boot parameters written"
    );
    Ok(entry)
}

/// Writes the command line at [`CMDLINE_START`]; returns its length without the NUL.
fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<usize, BootError> {
    let trimmed = cmdline.trim();
    let size = trimmed.len().saturating_add(1);
    if size > CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong {
            size,
            max: CMDLINE_MAX_SIZE,
        });
    }
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::InvalidCmdline)?;
    cl.insert_str(trimmed).map_err(|e| match e {
        CmdlineError::TooLarge => BootError::CmdlineTooLong {
            size,
            max: CMDLINE_MAX_SIZE,
        },
        e => BootError::InvalidCmdline(e),
    })?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(BootError::CmdlineWrite)?;
    Ok(trimmed.len())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;

    use super::*;
    use crate::layout::{lay_out, GuestLayout, EBDA_START};

    const MIB: u64 = 1 << 20;

    /// The judge images directory, from `scripts/guest-images.sh` (cached; builds them if
    /// missing).
    fn judge_dir() -> PathBuf {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/guest-images.sh");
            let out = Command::new("bash")
                .arg(&script)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
            let stdout = String::from_utf8_lossy(&out.stdout);
            let dir = stdout.lines().map(str::trim).rfind(|l| !l.is_empty());
            match (out.status.success(), dir) {
                (true, Some(dir)) => PathBuf::from(dir),
                _ => panic!(
                    "{} failed ({}): {}",
                    script.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        })
        .clone()
    }

    fn vmlinuz() -> PathBuf {
        judge_dir().join("vmlinuz")
    }

    fn initramfs() -> PathBuf {
        judge_dir().join("initramfs.cpio.gz")
    }

    fn guest(sizes: &[u64]) -> (GuestLayout, GuestMemoryMmap) {
        let layout = lay_out(sizes, 1, 40).unwrap();
        let ranges: Vec<(GuestAddress, usize)> = layout
            .zones
            .iter()
            .flatten()
            .map(|r| (GuestAddress(r.start), r.len() as usize))
            .collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges).unwrap();
        (layout, mem)
    }

    fn read_u8(mem: &GuestMemoryMmap, a: u64) -> u8 {
        mem.read_obj(GuestAddress(a)).unwrap()
    }
    fn read_u16(mem: &GuestMemoryMmap, a: u64) -> u16 {
        mem.read_obj(GuestAddress(a)).unwrap()
    }
    fn read_u32(mem: &GuestMemoryMmap, a: u64) -> u32 {
        mem.read_obj(GuestAddress(a)).unwrap()
    }
    fn read_u64(mem: &GuestMemoryMmap, a: u64) -> u64 {
        mem.read_obj(GuestAddress(a)).unwrap()
    }

    fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        f
    }

    /// Pseudo-random bytes (xorshift), so the test needs no RNG crate.
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    /// A minimal ELF64 x86-64 executable: one PT_LOAD at `paddr` (0x100 bytes of file,
    /// 0x2000 in memory) and a PT_NOTE with the note `note_type` whose descriptor is `desc`.
    fn tiny_elf(paddr: u64, note_type: u32, desc: u32) -> Vec<u8> {
        let mut f = vec![0u8; 0x1100];
        let put = |f: &mut Vec<u8>, off: usize, bytes: &[u8]| {
            f[off..off + bytes.len()].copy_from_slice(bytes);
        };
        put(&mut f, 0, &[0x7f, b'E', b'L', b'F', 2, 1, 1]);
        put(&mut f, 16, &2u16.to_le_bytes()); // e_type EXEC
        put(&mut f, 18, &0x3eu16.to_le_bytes()); // e_machine x86-64
        put(&mut f, 20, &1u32.to_le_bytes()); // e_version
        put(&mut f, 24, &paddr.to_le_bytes()); // e_entry
        put(&mut f, 32, &64u64.to_le_bytes()); // e_phoff
        put(&mut f, 52, &64u16.to_le_bytes()); // e_ehsize
        put(&mut f, 54, &56u16.to_le_bytes()); // e_phentsize
        put(&mut f, 56, &2u16.to_le_bytes()); // e_phnum
        put(&mut f, 58, &64u16.to_le_bytes()); // e_shentsize
        let phdr = |p_type: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
            let mut p = Vec::new();
            p.extend_from_slice(&p_type.to_le_bytes());
            p.extend_from_slice(&5u32.to_le_bytes()); // R+X
            p.extend_from_slice(&off.to_le_bytes());
            p.extend_from_slice(&addr.to_le_bytes()); // vaddr
            p.extend_from_slice(&addr.to_le_bytes()); // paddr
            p.extend_from_slice(&filesz.to_le_bytes());
            p.extend_from_slice(&memsz.to_le_bytes());
            p.extend_from_slice(&4u64.to_le_bytes());
            p
        };
        put(&mut f, 64, &phdr(1, 0x1000, paddr, 0x100, 0x2000));
        put(&mut f, 120, &phdr(4, 0x200, 0, 20, 20));
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes()); // namesz
        note.extend_from_slice(&4u32.to_le_bytes()); // descsz
        note.extend_from_slice(&note_type.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&desc.to_le_bytes());
        put(&mut f, 0x200, &note);
        put(&mut f, 0x1000, &[0xf4; 0x100]); // hlt
        f
    }

    #[test]
    fn boot_structures_stay_clear_of_the_bios_area_and_each_other() {
        let areas = [
            (GDT_START, GDT_START + 4 * 8),
            (IDT_START, IDT_START + 8),
            (ZERO_PAGE_START, ZERO_PAGE_START + 0x1000),
            (BOOT_STACK_POINTER - 0xff0, BOOT_STACK_POINTER),
            (PML4_START, PAGE_TABLES_END),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
        ];
        for (i, a) in areas.iter().enumerate() {
            assert!(a.1 <= EBDA_START, "{a:x?}");
            for b in &areas[i + 1..] {
                assert!(a.1 <= b.0 || b.1 <= a.0, "{a:x?} overlaps {b:x?}");
            }
        }
        // The PVH tables sit inside the zero page.
        let start_info_end = ZERO_PAGE_START + std::mem::size_of::<hvm_start_info>() as u64;
        assert!(start_info_end <= PVH_MODLIST_START);
        assert!(
            PVH_MODLIST_START + std::mem::size_of::<hvm_modlist_entry>() as u64 <= PVH_MEMMAP_START
        );
        assert!(
            PVH_MEMMAP_START
                + (E820_MAX_ENTRIES * std::mem::size_of::<hvm_memmap_table_entry>()) as u64
                <= ZERO_PAGE_START + 0x1000
        );
    }

    #[test]
    fn loads_the_debian_bzimage() {
        let (layout, mem) = guest(&[512 * MIB]);
        let k = load_kernel(&mem, &layout.e820, &vmlinuz()).unwrap();
        assert_eq!(k.kind, KernelKind::BzImage);
        assert_eq!(k.entry, KERNEL_START + 0x200);
        let hdr = k.setup_header.unwrap();
        let (magic, version, xlf, code32, init_size, align, pref, reloc) = (
            hdr.header,
            hdr.version,
            hdr.xloadflags,
            hdr.code32_start,
            hdr.init_size,
            hdr.kernel_alignment,
            hdr.pref_address,
            hdr.relocatable_kernel,
        );
        assert_eq!(magic, 0x5372_6448);
        assert!(version >= 0x20c, "{version:#x}");
        assert_ne!(xlf & 1, 0);
        assert_eq!(u64::from(code32), KERNEL_START);
        assert!(init_size > 0);
        // The kernel runs at max(aligned load address, pref_address) and needs init_size.
        assert_eq!(reloc, 1);
        let runs_at = (KERNEL_START.div_ceil(u64::from(align)) * u64::from(align)).max(pref);
        assert_eq!(k.end, runs_at + u64::from(init_size));
        assert!(k.end > KERNEL_START + u64::from(init_size));

        // The protected-mode code is in memory at KERNEL_START.
        let image = std::fs::read(vmlinuz()).unwrap();
        let setup = (usize::from(image[0x1f1]) + 1) * 512;
        let mut got = vec![0u8; 4096];
        mem.read_slice(&mut got, GuestAddress(KERNEL_START))
            .unwrap();
        assert_eq!(got, image[setup..setup + 4096]);
    }

    #[test]
    fn writes_the_zero_page_cmdline_and_initramfs() {
        let (layout, mem) = guest(&[512 * MIB]);
        let k = load_kernel(&mem, &layout.e820, &vmlinuz()).unwrap();
        let (addr, size) = load_initramfs(&mem, &layout.e820, &initramfs(), &k).unwrap();
        let file = std::fs::read(initramfs()).unwrap();
        assert_eq!(size, file.len() as u64);
        assert_eq!(addr % 4096, 0);
        assert!(addr >= k.end);
        // As high as possible: the end of RAM is 512 MiB, below the gap and initrd_addr_max.
        assert_eq!(addr, (512 * MIB - size) / 4096 * 4096);
        let mut got = vec![0u8; file.len()];
        mem.read_slice(&mut got, GuestAddress(addr)).unwrap();
        assert_eq!(got, file);

        let cmdline = "console=ttyS0 reboot=k panic=1 -- init-arg";
        let entry = configure_boot(&mem, &k, cmdline, Some((addr, size)), &layout.e820).unwrap();
        assert_eq!(
            entry,
            BootEntry {
                kind: KernelKind::BzImage,
                entry: KERNEL_START + 0x200,
                params: ZERO_PAGE_START
            }
        );

        // The zero page, byte by byte (offsets from Documentation/arch/x86/zero-page.rst).
        let zp = ZERO_PAGE_START;
        assert_eq!(read_u16(&mem, zp + 0x1fe), 0xaa55); // boot_flag
        assert_eq!(read_u32(&mem, zp + 0x202), 0x5372_6448); // header
        assert_eq!(read_u8(&mem, zp + 0x210), 0xff); // type_of_loader
        assert_eq!(read_u32(&mem, zp + 0x214) as u64, KERNEL_START); // code32_start
        assert_eq!(read_u32(&mem, zp + 0x218) as u64, addr); // ramdisk_image
        assert_eq!(read_u32(&mem, zp + 0x21c) as u64, size); // ramdisk_size
        assert_eq!(read_u32(&mem, zp + 0x228) as u64, CMDLINE_START); // cmd_line_ptr
        assert_eq!(read_u32(&mem, zp + 0x238) as usize, cmdline.len()); // cmdline_size
        assert_eq!(read_u32(&mem, zp + 0x0c0), 0); // ext_ramdisk_image
        assert_eq!(read_u32(&mem, zp + 0x0c4), 0); // ext_ramdisk_size
        let n = read_u8(&mem, zp + 0x1e8); // e820_entries
        assert_eq!(usize::from(n), layout.e820.len());
        for (i, (range, kind)) in layout.e820.iter().enumerate() {
            let e = zp + 0x2d0 + 20 * i as u64;
            assert_eq!(read_u64(&mem, e), range.start);
            assert_eq!(read_u64(&mem, e + 8), range.len());
            let ty = match kind {
                E820Kind::Ram => 1,
                E820Kind::Reserved => 2,
                E820Kind::Acpi => 3,
            };
            assert_eq!(read_u32(&mem, e + 16), ty);
        }
        assert_eq!(read_u64(&mem, zp + 0x2d0 + 8), EBDA_START);

        let mut got = vec![0u8; cmdline.len() + 1];
        mem.read_slice(&mut got, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&got[..cmdline.len()], cmdline.as_bytes());
        assert_eq!(got[cmdline.len()], 0);
    }

    #[test]
    fn files_that_are_not_kernels() {
        let (layout, mem) = guest(&[512 * MIB]);
        let random = temp_file(&noise(64 * 1024, 0x1234_5678_9abc_def1));
        for path in [random.path().to_path_buf(), initramfs()] {
            let err = load_kernel(&mem, &layout.e820, &path).unwrap_err();
            assert!(
                matches!(&err, BootError::NotAKernel { path: named } if named == &path),
                "{}: {err:?}",
                path.display()
            );
            assert!(err.to_string().contains(&path.display().to_string()));
        }
        // An ELF without a PVH note is no use either.
        let elf = temp_file(&tiny_elf(0x100_0000, 5, 0));
        assert!(matches!(
            load_kernel(&mem, &layout.e820, elf.path()),
            Err(BootError::NotAKernel { .. })
        ));
        // Nor a short file, or an empty one.
        let short = temp_file(b"\x7fELF");
        assert!(matches!(
            load_kernel(&mem, &layout.e820, short.path()),
            Err(BootError::NotAKernel { .. })
        ));
        let empty = temp_file(b"");
        assert!(matches!(
            load_kernel(&mem, &layout.e820, empty.path()),
            Err(BootError::NotAKernel { .. })
        ));
    }

    #[test]
    fn missing_files_and_directories_cannot_be_opened() {
        let (layout, mem) = guest(&[512 * MIB]);
        let missing = Path::new("/nonexistent/tessera/vmlinuz");
        match load_kernel(&mem, &layout.e820, missing) {
            Err(BootError::Open { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_kernel(&mem, &layout.e820, dir.path()),
            Err(BootError::Open { .. })
        ));
        let k = load_kernel(&mem, &layout.e820, &vmlinuz()).unwrap();
        assert!(matches!(
            load_initramfs(&mem, &layout.e820, missing, &k),
            Err(BootError::Open { .. })
        ));
    }

    #[test]
    fn command_line_limits() {
        let (layout, mem) = guest(&[512 * MIB]);
        let k = load_kernel(&mem, &layout.e820, &vmlinuz()).unwrap();
        let longest = "x".repeat(CMDLINE_MAX_SIZE - 1);
        configure_boot(&mem, &k, &longest, None, &layout.e820).unwrap();
        assert_eq!(read_u8(&mem, CMDLINE_START + longest.len() as u64), 0);
        match configure_boot(&mem, &k, &format!("{longest}y"), None, &layout.e820) {
            Err(BootError::CmdlineTooLong { size, max }) => {
                assert_eq!((size, max), (CMDLINE_MAX_SIZE + 1, CMDLINE_MAX_SIZE));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            configure_boot(&mem, &k, "console=ttyS0\nroot=/dev/vda", None, &layout.e820),
            Err(BootError::InvalidCmdline(_))
        ));
        // No initramfs: the ramdisk fields stay zero.
        configure_boot(&mem, &k, "", None, &layout.e820).unwrap();
        assert_eq!(read_u32(&mem, ZERO_PAGE_START + 0x218), 0);
        assert_eq!(read_u32(&mem, ZERO_PAGE_START + 0x21c), 0);
        assert_eq!(read_u8(&mem, CMDLINE_START), 0);
    }

    #[test]
    fn e820_table_limit() {
        let (layout, mem) = guest(&[512 * MIB]);
        let k = load_kernel(&mem, &layout.e820, &vmlinuz()).unwrap();
        let entry = |i: u64| {
            (
                Range {
                    start: i * 0x1000,
                    end: (i + 1) * 0x1000,
                },
                E820Kind::Ram,
            )
        };
        let full: Vec<_> = (0..E820_MAX_ENTRIES as u64).map(entry).collect();
        configure_boot(&mem, &k, "", None, &full).unwrap();
        assert_eq!(read_u8(&mem, ZERO_PAGE_START + 0x1e8), 128);
        let too_many: Vec<_> = (0..E820_MAX_ENTRIES as u64 + 1).map(entry).collect();
        assert!(matches!(
            configure_boot(&mem, &k, "", None, &too_many),
            Err(BootError::TooManyE820Entries {
                count: 129,
                max: 128
            })
        ));
    }

    #[test]
    fn initramfs_too_large_for_ram() {
        let (layout, mem) = guest(&[512 * MIB]);
        let k = load_kernel(&mem, &layout.e820, &vmlinuz()).unwrap();
        // Sparse: costs no disk.
        let big = tempfile::NamedTempFile::new().unwrap();
        big.as_file().set_len(600 * MIB).unwrap();
        match load_initramfs(&mem, &layout.e820, big.path(), &k) {
            Err(BootError::InitramfsTooLarge { size, room }) => {
                assert_eq!(size, 600 * MIB);
                assert_eq!(room, 512 * MIB - k.end.div_ceil(4096) * 4096);
            }
            other => panic!("{other:?}"),
        }
        // A just-fitting one goes right above the kernel.
        let room = 512 * MIB - k.end.div_ceil(4096) * 4096;
        big.as_file().set_len(room).unwrap();
        let (addr, size) = load_initramfs(&mem, &layout.e820, big.path(), &k).unwrap();
        assert_eq!((addr, size), (k.end.div_ceil(4096) * 4096, room));
        assert!(matches!(
            configure_boot(&mem, &k, "", Some((512 * MIB - 4096, 8192)), &[]),
            Err(BootError::InitramfsNotInRam { .. })
        ));
    }

    #[test]
    fn initramfs_stays_below_the_32bit_gap_and_initrd_addr_max() {
        // 4 GiB of RAM: 3 GiB below the gap; the Debian kernel allows initrds up to 2 GiB.
        let (layout, mem) = guest(&[4 << 30]);
        let k = load_kernel(&mem, &layout.e820, &vmlinuz()).unwrap();
        let max = k.setup_header.map(|h| h.initrd_addr_max).unwrap();
        let (addr, size) = load_initramfs(&mem, &layout.e820, &initramfs(), &k).unwrap();
        let limit = (u64::from(max) + 1).min(MEM_32BIT_GAP_START);
        assert_eq!(addr, (limit - size) / 4096 * 4096);
    }

    #[test]
    fn a_kernel_bigger_than_ram_does_not_fit() {
        let (layout, mem) = guest(&[32 * MIB]);
        assert!(matches!(
            load_kernel(&mem, &layout.e820, &vmlinuz()),
            Err(BootError::KernelDoesNotFit { .. })
        ));
    }

    #[test]
    fn pvh_elf_with_initramfs() {
        let (layout, mem) = guest(&[512 * MIB]);
        let elf = temp_file(&tiny_elf(0x100_0000, 18, 0x100_0040));
        let k = load_kernel(&mem, &layout.e820, elf.path()).unwrap();
        assert_eq!(
            k,
            LoadedKernel {
                kind: KernelKind::Pvh,
                entry: 0x100_0040,
                end: 0x100_2000,
                setup_header: None
            }
        );
        assert_eq!(read_u8(&mem, 0x100_0000), 0xf4);
        let (addr, size) = load_initramfs(&mem, &layout.e820, &initramfs(), &k).unwrap();
        assert_eq!(addr, (512 * MIB - size) / 4096 * 4096);
        let entry =
            configure_boot(&mem, &k, "console=hvc0", Some((addr, size)), &layout.e820).unwrap();
        assert_eq!(
            entry,
            BootEntry {
                kind: KernelKind::Pvh,
                entry: 0x100_0040,
                params: ZERO_PAGE_START
            }
        );
        let si: hvm_start_info = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let (magic, version, nr_modules, modlist, cmdline, memmap, entries) = (
            si.magic,
            si.version,
            si.nr_modules,
            si.modlist_paddr,
            si.cmdline_paddr,
            si.memmap_paddr,
            si.memmap_entries,
        );
        assert_eq!((magic, version), (0x336e_c578, 1));
        assert_eq!((nr_modules, modlist), (1, PVH_MODLIST_START));
        assert_eq!(cmdline, CMDLINE_START);
        assert_eq!(memmap, PVH_MEMMAP_START);
        assert_eq!(entries as usize, layout.e820.len());
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        let (paddr, msize) = (m.paddr, m.size);
        assert_eq!((paddr, msize), (addr, size));
        for (i, (range, kind)) in layout.e820.iter().enumerate() {
            let e: hvm_memmap_table_entry = mem
                .read_obj(GuestAddress(PVH_MEMMAP_START + 24 * i as u64))
                .unwrap();
            let (a, s, t) = (e.addr, e.size, e.type_);
            assert_eq!((a, s), (range.start, range.len()));
            assert_eq!(t, e820_type(*kind));
        }
        let mut got = vec![0u8; 13];
        mem.read_slice(&mut got, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&got, b"console=hvc0\0");

        // Without an initramfs there is no module list.
        configure_boot(&mem, &k, "", None, &layout.e820).unwrap();
        let si: hvm_start_info = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let (nr_modules, modlist) = (si.nr_modules, si.modlist_paddr);
        assert_eq!((nr_modules, modlist), (0, 0));
    }

    #[test]
    fn the_debian_vmlinux_boots_by_pvh() {
        // scripts/guest-images.sh extracts it from the bzImage.
        let vmlinux = judge_dir().join("vmlinux");
        let (layout, mem) = guest(&[512 * MIB]);
        let k = load_kernel(&mem, &layout.e820, &vmlinux).unwrap();
        assert_eq!(k.kind, KernelKind::Pvh);
        assert!(k.setup_header.is_none());
        // CONFIG_PHYSICAL_START is 16 MiB; the PVH entry is in the kernel's first segment.
        assert!(k.entry > 0x100_0000 && k.entry < k.end, "{k:x?}");
        assert!(k.end > 0x200_0000 && k.end < 256 * MIB, "{k:x?}");
    }
}
