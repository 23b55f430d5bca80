//! The serial port's host side: where the guest's UART output goes (`SerialSink`, opened
//! once per VM configuration so a reboot keeps writing to the same place) and the thread
//! that types the host's input (stdin or the pty) into the current boot's UART.
//!
//! Touches only the host end it opens (stdout, a file, a pty) and the UART a boot hands
//! it; it knows nothing of KVM or the buses.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_api::config::{ConsoleMode, VmConfig};
use tessera_devices::serial::SerialDevice;

use crate::vm::VmError;

/// Where the serial port's bytes go, opened once per VMM so a reboot keeps writing to
/// the same place.
pub struct SerialSink {
    pub(crate) out: Option<Arc<Mutex<Box<dyn Write + Send>>>>,
    /// The UART of the boot in progress, which input is typed into.
    pub(crate) current: Arc<Mutex<Option<Arc<Mutex<SerialDevice>>>>>,
    /// The pseudo-terminal created for `Pty` mode, reported to the user.
    pub pty: Option<PathBuf>,
}

/// Forwards bytes from `input` (the VMM's stdin, or the pty) into the current boot's
/// UART for as long as the VMM runs, holding back what the 64-byte FIFO cannot take yet.
fn forward_input(
    mut input: impl std::io::Read + Send + 'static,
    current: Arc<Mutex<Option<Arc<Mutex<SerialDevice>>>>>,
) {
    let spawned = std::thread::Builder::new()
        .name("serial-input".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // A pty master reads EAGAIN until someone attaches, then EIO when
                    // they leave; wait and try again.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EIO)) => {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("serial input stopped: {e}");
                        return;
                    }
                };
                let mut pending = buf.get(..n).unwrap_or_default();
                while !pending.is_empty() {
                    let device = current.lock().ok().and_then(|c| c.clone());
                    let queued = match device {
                        Some(d) => d
                            .lock()
                            .map_or(0, |mut d| d.enqueue_input(pending).unwrap_or(0)),
                        None => 0,
                    };
                    pending = pending.get(queued..).unwrap_or_default();
                    if !pending.is_empty() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no serial input: {e}");
    }
}

impl SerialSink {
    /// Opens what the configuration's serial mode asks for.
    pub fn open(config: &VmConfig) -> Result<Self, VmError> {
        let s = &config.serial;
        let out: Option<Box<dyn Write + Send>> = match s.mode {
            ConsoleMode::Off => None,
            ConsoleMode::Null => Some(Box::new(std::io::sink())),
            ConsoleMode::Tty => {
                let current = Arc::new(Mutex::new(None));
                forward_input(std::io::stdin(), current.clone());
                return Ok(SerialSink {
                    out: Some(Arc::new(Mutex::new(Box::new(std::io::stdout())))),
                    current,
                    pty: None,
                });
            }
            ConsoleMode::File => {
                let path = s.file.clone().unwrap_or_default();
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| VmError::Serial(format!("cannot open {}: {e}", path.display())))?;
                Some(Box::new(f))
            }
            ConsoleMode::Pty => {
                let (master, path) = crate::pty::open()
                    .map_err(|e| VmError::Serial(format!("cannot create a pty: {e}")))?;
                let reader = master
                    .try_clone()
                    .map_err(|e| VmError::Serial(format!("cannot clone the pty: {e}")))?;
                let current = Arc::new(Mutex::new(None));
                forward_input(reader, current.clone());
                return Ok(SerialSink {
                    out: Some(Arc::new(Mutex::new(Box::new(master)))),
                    current,
                    pty: Some(path),
                });
            }
            ConsoleMode::Socket => {
                return Err(VmError::Serial(
                    "Socket mode is not supported yet; use tty, pty, file or null".into(),
                ))
            }
        };
        Ok(SerialSink {
            out: out.map(|o| Arc::new(Mutex::new(o))),
            current: Arc::new(Mutex::new(None)),
            pty: None,
        })
    }
}

/// A writer that forwards to the shared sink, so each boot's serial device can own one.
pub(crate) struct SharedWriter(pub(crate) Arc<Mutex<Box<dyn Write + Send>>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut w) => w.write(buf),
            Err(_) => Err(std::io::Error::other("serial sink poisoned")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.lock() {
            Ok(mut w) => w.flush(),
            Err(_) => Err(std::io::Error::other("serial sink poisoned")),
        }
    }
}
