//! `pci-bar`: reads (or writes, then reads) one 32-bit register of a PCI memory BAR from
//! inside a guest, through its sysfs resource file. Part of the Linux judge's initramfs
//! (`/bin/pci-bar`, built by `scripts/guest-images.sh` with plain `rustc`, statically
//! linked), used by `scripts/judge-init.sh` to check passed-through devices.
//!
//! Usage: `pci-bar RESOURCE_FILE OFFSET [VALUE]`; OFFSET and VALUE in decimal or `0x` hex.
//! Prints the register's value as `0x%08x`. Exit status 1 on any error, 2 on bad usage.
//!
//! Not a workspace crate (the workspace forbids `unsafe`): a guest tool that must map
//! device memory, with no dependencies, so `mmap`/`munmap` are declared here against glibc.

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
