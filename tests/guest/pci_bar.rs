//! `pci-bar`: reads (or writes, then reads) one 32-bit register of a PCI memory BAR from
//! inside a guest, through its sysfs resource file; or, in `node-memory` mode, proves a
//! NUMA node's RAM holds data. Part of the Linux judge's initramfs (`/bin/pci-bar`, built
//! by `scripts/guest-images.sh` with plain `rustc`, statically linked), used by
//! `scripts/judge-init.sh` to check passed-through devices and device memory.
//!
//! Usage: `pci-bar RESOURCE_FILE OFFSET [VALUE]`; OFFSET and VALUE in decimal or `0x` hex.
//! Prints the register's value as `0x%08x`. Exit status 1 on any error, 2 on bad usage.
//!
//! `pci-bar node-memory NODE MIB`: binds itself to NODE (set_mempolicy MPOL_BIND),
//! fills MIB MiB of fresh anonymous memory with a pattern (each page starting with
//! [`NODE_MEMORY_TAG`] and its index), reads it all back, and asks the kernel where the
//! pages are (move_pages: their node; /proc/self/pagemap: their physical frames). Prints
//! `pages=N on_node=K readback=ok|bad phys=0xLOW-0xHIGH`; exit status 1 unless every
//! page is on NODE and read back.
//!
//! Two modes play a hostile or busy guest for the fault tests
//! (`vmm/tests/faults_in_nested_host.rs`):
//! - `pci-bar hostile CONFIG_FILE RESOURCE_FILE SEED ROUNDS`: ROUNDS times, writes random
//!   bytes at random offsets of the device's config space (sysfs `config`), then puts the
//!   command register's memory bit and BAR0/BAR1 back so that BAR0 decodes where this
//!   program mapped it, then writes random words all over BAR0. The same SEED makes the
//!   same writes. Prints what it did as `config_writes=N config_failed=N bar_writes=N`.
//! - `pci-bar hammer`: forever, writes PCI config space of the host bridge 00:00.0
//!   through ports 0xCF8/0xCFC (its cache-line-size register, which no one uses) and the
//!   first serial port's scratch register (0x3FF), reading each back: nothing but
//!   trapped port I/O, as fast as the vCPU goes.
//!
//! Not a workspace crate (the workspace forbids `unsafe`): a guest tool that must map
//! device memory, with no dependencies, so `mmap`/`munmap`/`syscall`/`iopl` are declared
//! here against glibc.

use std::ffi::c_void;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

const PROT_READ: i32 = 1;
const PROT_WRITE: i32 = 2;
const MAP_SHARED: i32 = 1;
const MAP_FAILED: *mut c_void = !0usize as *mut c_void;
/// sysfs resource files map whole pages; x86's page size.
const PAGE: u64 = 4096;

extern "C" {
    fn mmap(addr: *mut c_void, len: usize, prot: i32, flags: i32, fd: i32, off: i64)
        -> *mut c_void;
    fn munmap(addr: *mut c_void, len: usize) -> i32;
    fn syscall(number: i64, ...) -> i64;
    fn iopl(level: i32) -> i32;
}

const MAP_PRIVATE: i32 = 2;
const MAP_ANONYMOUS: i32 = 0x20;
/// x86_64 system call numbers.
const SYS_SET_MEMPOLICY: i64 = 238;
const SYS_MOVE_PAGES: i64 = 279;
/// set_mempolicy's mode: allocate only from the given nodes.
const MPOL_BIND: i64 = 2;
/// What starts every page `node-memory` writes (then the page's index), so the bytes can
/// be found again in the device's memory from outside the guest.
const NODE_MEMORY_TAG: &[u8; 16] = b"TESSERA-DEVMEM-1";

/// `node-memory NODE MIB`: see the file's comment.
fn node_memory(node: u64, mib: u64) -> Result<String, String> {
    if node >= 64 {
        return Err(format!("node {node}: only nodes 0..63"));
    }
    let mask: u64 = 1 << node;
    // SAFETY: set_mempolicy reads one u64 of node mask (64 bits) from `mask`.
    let r = unsafe { syscall(SYS_SET_MEMPOLICY, MPOL_BIND, &mask as *const u64, 64i64) };
    if r != 0 {
        return Err(format!(
            "set_mempolicy: {}",
            std::io::Error::last_os_error()
        ));
    }
    let len = (mib << 20) as usize;
    // SAFETY: a fresh private anonymous mapping, unmapped below.
    let map = unsafe {
        mmap(
            std::ptr::null_mut(),
            len,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if map == MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    let pages = len / PAGE as usize;
    let words = PAGE as usize / 8;
    let base = map.cast::<u64>();
    let tag = u64::from_le_bytes(NODE_MEMORY_TAG[..8].try_into().unwrap_or_default());
    let tag2 = u64::from_le_bytes(NODE_MEMORY_TAG[8..].try_into().unwrap_or_default());
    let word = |page: usize, i: usize| -> u64 {
        match i {
            0 => tag,
            1 => tag2,
            2 => page as u64,
            _ => (page as u64) << 32 | i as u64,
        }
    };
    // SAFETY: every index is inside the mapping; volatile, so each write and read
    // reaches memory.
    unsafe {
        for page in 0..pages {
            for i in 0..words {
                base.add(page * words + i).write_volatile(word(page, i));
            }
        }
    }
    let mut bad = 0usize;
    // SAFETY: as above.
    unsafe {
        for page in 0..pages {
            for i in 0..words {
                if base.add(page * words + i).read_volatile() != word(page, i) {
                    bad += 1;
                }
            }
        }
    }
    let addresses: Vec<*mut c_void> = (0..pages)
        .map(|p| map.cast::<u8>().wrapping_add(p * PAGE as usize).cast())
        .collect();
    let mut status = vec![-1i32; pages];
    // SAFETY: move_pages with no target nodes only reports each page's node in `status`,
    // which has one entry per address.
    let r = unsafe {
        syscall(
            SYS_MOVE_PAGES,
            0i64,
            pages as i64,
            addresses.as_ptr(),
            std::ptr::null::<i32>(),
            status.as_mut_ptr(),
            0i64,
        )
    };
    if r < 0 {
        return Err(format!("move_pages: {}", std::io::Error::last_os_error()));
    }
    let on_node = status.iter().filter(|&&n| n as u64 == node).count();
    let frames = physical_frames(map as u64, pages)?;
    // SAFETY: the mapping made above, not used after this.
    unsafe { munmap(map, len) };
    let low = frames.iter().min().copied().unwrap_or(0) * PAGE;
    let high = frames.iter().max().map_or(0, |f| (f + 1) * PAGE);
    let readback = if bad == 0 { "ok" } else { "bad" };
    let line =
        format!("pages={pages} on_node={on_node} readback={readback} phys={low:#x}-{high:#x}");
    if bad != 0 || on_node != pages {
        return Err(line);
    }
    Ok(line)
}

/// The physical frame of each of `pages` pages from virtual address `start`, from
/// /proc/self/pagemap (bit 63: present; bits 0..=54: the frame, shown to root only).
fn physical_frames(start: u64, pages: usize) -> Result<Vec<u64>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
    f.seek(SeekFrom::Start(start / PAGE * 8))
        .map_err(|e| format!("pagemap: {e}"))?;
    let mut raw = vec![0u8; pages * 8];
    f.read_exact(&mut raw)
        .map_err(|e| format!("pagemap: {e}"))?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .filter(|e| e >> 63 == 1)
        .map(|e| e & ((1 << 55) - 1))
        .collect())
}

/// Config writes, and BAR0 writes, per round of `hostile`.
const WRITES_PER_ROUND: u32 = 64;
/// PCI command register: memory space decoding.
const COMMAND_MEMORY: u16 = 0x2;

/// xorshift64*: a reproducible stream of random numbers from a seed, without a crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // Never zero: xorshift would stay at zero.
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A shared mapping of a whole sysfs resource file, unmapped on drop.
struct Mapping {
    ptr: *mut c_void,
    len: usize,
}

impl Mapping {
    /// Maps the whole of `path` (rounded up to pages), readable and writable.
    fn new(path: &str) -> Result<(std::fs::File, Mapping), String> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("{path}: {e}"))?;
        let size = file.metadata().map_err(|e| format!("{path}: {e}"))?.len();
        let len = usize::try_from(size.div_ceil(PAGE) * PAGE).map_err(|e| e.to_string())?;
        if len == 0 {
            return Err(format!("{path} is empty"));
        }
        // SAFETY: a fresh shared mapping of the file, unmapped on drop; nothing else
        // aliases it in this process.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                PROT_READ | PROT_WRITE,
                MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == MAP_FAILED {
            return Err(format!("mmap {path}: {}", std::io::Error::last_os_error()));
        }
        Ok((file, Mapping { ptr, len }))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, not used after this.
        unsafe { munmap(self.ptr, self.len) };
    }
}

/// `pci-bar hostile`: see the file's comment.
fn hostile(config: &str, resource: &str, seed: u64, rounds: u32) -> Result<String, String> {
    use std::os::unix::fs::FileExt;
    let cfg = OpenOptions::new()
        .read(true)
        .write(true)
        .open(config)
        .map_err(|e| format!("{config}: {e}"))?;
    let cfg_len = cfg.metadata().map_err(|e| format!("{config}: {e}"))?.len();
    let mut header = [0u8; 0x18];
    cfg.read_exact_at(&mut header, 0)
        .map_err(|e| format!("{config}: {e}"))?;
    let command = u16::from_le_bytes([header[4], header[5]]) | COMMAND_MEMORY;
    let bars = &header[0x10..0x18];
    let (_file, bar) = Mapping::new(resource)?;
    let size = std::fs::metadata(resource)
        .map_err(|e| format!("{resource}: {e}"))?
        .len();
    let mut rng = Rng::new(seed);
    let (mut config_writes, mut config_failed, mut bar_writes) = (0u32, 0u32, 0u32);
    for _ in 0..rounds {
        for _ in 0..WRITES_PER_ROUND {
            let width = [1u64, 2, 4][(rng.next() % 3) as usize];
            let offset = (rng.next() % cfg_len) & !(width - 1);
            let value = rng.next().to_le_bytes();
            let data = &value[..width as usize];
            config_writes += 1;
            if cfg.write_all_at(data, offset).is_err() {
                config_failed += 1;
            }
        }
        // BAR0 back where it was mapped, decoding: the BAR writes below reach the device.
        let restored = cfg
            .write_all_at(bars, 0x10)
            .and_then(|()| cfg.write_all_at(&command.to_le_bytes(), 4));
        if restored.is_err() {
            config_failed += 1;
        }
        for _ in 0..WRITES_PER_ROUND {
            let offset = (rng.next() % size) & !3;
            let value = rng.next() as u32;
            // SAFETY: `offset + 4 <= size <= bar.len`, 4-byte aligned, inside the mapping.
            unsafe {
                let reg = bar.ptr.cast::<u8>().add(offset as usize).cast::<u32>();
                reg.write_volatile(value);
                let _ = reg.read_volatile();
            }
            bar_writes += 1;
        }
    }
    Ok(format!(
        "config_writes={config_writes} config_failed={config_failed} bar_writes={bar_writes}"
    ))
}

/// `pci-bar hammer`: see the file's comment. Returns only if port I/O is refused.
fn hammer() -> String {
    // SAFETY: iopl only changes this process's I/O privilege level.
    if unsafe { iopl(3) } != 0 {
        return format!("iopl: {}", std::io::Error::last_os_error());
    }
    // Enable bit, bus 0, device 0, function 0, register 0x0c (cache line size).
    const HOST_BRIDGE_0C: u32 = 0x8000_000c;
    let mut n: u32 = 0;
    loop {
        n = n.wrapping_add(1);
        // SAFETY: port I/O to the PCI configuration ports and the serial scratch register,
        // allowed by iopl(3); none touches this process's memory.
        unsafe {
            core::arch::asm!("out dx, eax", in("dx") 0xcf8u16, in("eax") HOST_BRIDGE_0C, options(nomem, nostack, preserves_flags));
            core::arch::asm!("out dx, al", in("dx") 0xcfcu16, in("al") n as u8, options(nomem, nostack, preserves_flags));
            core::arch::asm!("in eax, dx", in("dx") 0xcfcu16, out("eax") _, options(nomem, nostack, preserves_flags));
            core::arch::asm!("out dx, al", in("dx") 0x3ffu16, in("al") n as u8, options(nomem, nostack, preserves_flags));
            core::arch::asm!("in al, dx", in("dx") 0x3ffu16, out("al") _, options(nomem, nostack, preserves_flags));
        }
    }
}

fn parse(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn run(path: &str, offset: u64, value: Option<u32>) -> Result<u32, String> {
    if offset & 3 != 0 {
        return Err(format!("offset {offset:#x} is not 32-bit aligned"));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(value.is_some())
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    let size = file.metadata().map_err(|e| format!("{path}: {e}"))?.len();
    if offset + 4 > size {
        return Err(format!(
            "offset {offset:#x} is outside the {size:#x}-byte BAR"
        ));
    }
    let base = offset & !(PAGE - 1);
    let prot = if value.is_some() {
        PROT_READ | PROT_WRITE
    } else {
        PROT_READ
    };
    // SAFETY: a fresh shared mapping of one page of the file, unmapped below; nothing
    // else aliases it in this process.
    let map = unsafe {
        mmap(
            std::ptr::null_mut(),
            PAGE as usize,
            prot,
            MAP_SHARED,
            file.as_raw_fd(),
            base as i64,
        )
    };
    if map == MAP_FAILED {
        return Err(format!(
            "mmap {path} at {base:#x}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // Device registers: exactly one 32-bit access each, never merged or elided.
    let reg = map
        .cast::<u8>()
        .wrapping_add((offset - base) as usize)
        .cast::<u32>();
    // SAFETY: `reg` is 4-byte aligned and inside the mapped page (checked above).
    let read = unsafe {
        if let Some(v) = value {
            reg.write_volatile(v);
        }
        reg.read_volatile()
    };
    // SAFETY: the mapping made above, not used after this.
    unsafe { munmap(map, PAGE as usize) };
    Ok(read)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.as_slice() {
        [_, mode, node, mib] if mode == "node-memory" => {
            let (Some(node), Some(mib)) = (parse(node), parse(mib)) else {
                eprintln!("usage: pci-bar node-memory NODE MIB");
                return ExitCode::from(2);
            };
            return match node_memory(node, mib) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("{e}");
                    ExitCode::FAILURE
                }
            };
        }
        [_, mode, config, resource, seed, rounds] if mode == "hostile" => {
            let (Some(seed), Some(rounds)) = (parse(seed), parse(rounds)) else {
                eprintln!("pci-bar: bad seed or rounds");
                return ExitCode::from(2);
            };
            let rounds = u32::try_from(rounds).unwrap_or(u32::MAX);
            return match hostile(config, resource, seed, rounds) {
                Ok(done) => {
                    println!("{done}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pci-bar: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        [_, mode] if mode == "hammer" => {
            eprintln!("pci-bar: {}", hammer());
            return ExitCode::FAILURE;
        }
        _ => {}
    }
    let (path, offset, value) = match args.as_slice() {
        [_, path, offset] => (path, parse(offset), None),
        [_, path, offset, value] => (path, parse(offset), Some(parse(value))),
        _ => {
            eprintln!(
                "usage: pci-bar RESOURCE_FILE OFFSET [VALUE] | \
                 pci-bar node-memory NODE MIB | \
                 pci-bar hostile CONFIG_FILE RESOURCE_FILE SEED ROUNDS | pci-bar hammer"
            );
            return ExitCode::from(2);
        }
    };
    let Some(offset) = offset else {
        eprintln!("pci-bar: bad offset");
        return ExitCode::from(2);
    };
    let value = match value.map(|v| v.and_then(|v| u32::try_from(v).ok())) {
        None => None,
        Some(Some(v)) => Some(v),
        Some(None) => {
            eprintln!("pci-bar: bad value (32 bits)");
            return ExitCode::from(2);
        }
    };
    match run(path, offset, value) {
        Ok(v) => {
            println!("{v:#010x}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pci-bar: {e}");
            ExitCode::FAILURE
        }
    }
}
