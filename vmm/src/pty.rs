//! A pseudo-terminal for the serial port's `Pty` mode: the VMM keeps the master, the
//! user attaches to the slave path it reports.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

/// Opens a new pty master (non-blocking: with no one attached, output is dropped rather
/// than stalling the vCPU) and returns it with the slave's path.
#[allow(unsafe_code)]
pub fn open() -> std::io::Result<(File, PathBuf)> {
    // SAFETY: posix_openpt returns a new fd or -1; nothing else is touched.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own; OwnedFd closes it on every path below.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: grantpt/unlockpt take the master fd we own.
    if unsafe { libc::grantpt(fd) } != 0 || unsafe { libc::unlockpt(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes at most name.len() bytes, NUL-terminated, into our buffer.
    if unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let path: Vec<u8> = name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok((
        File::from(master),
        PathBuf::from(String::from_utf8_lossy(&path).into_owned()),
    ))
}
