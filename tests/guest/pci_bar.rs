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
//! Not a workspace crate (the workspace forbids `unsafe`): a guest tool that must map
//! device memory, with no dependencies, so `mmap`/`munmap`/`syscall` are declared here
//! against glibc.

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
        return Err(format!("set_mempolicy: {}", std::io::Error::last_os_error()));
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
    let line = format!("pages={pages} on_node={on_node} readback={readback} phys={low:#x}-{high:#x}");
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
    f.read_exact(&mut raw).map_err(|e| format!("pagemap: {e}"))?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .filter(|e| e >> 63 == 1)
        .map(|e| e & ((1 << 55) - 1))
        .collect())
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
    if let [_, mode, node, mib] = args.as_slice() {
        if mode == "node-memory" {
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
    }
    let (path, offset, value) = match args.as_slice() {
        [_, path, offset] => (path, parse(offset), None),
        [_, path, offset, value] => (path, parse(offset), Some(parse(value))),
        _ => {
            eprintln!("usage: pci-bar RESOURCE_FILE OFFSET [VALUE]");
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
