//! The serial port's host side: where the guest's UART output goes (`SerialSink`, opened
//! once per VM configuration so a reboot keeps writing to the same place) and which
//! source of typed input (stdin or the pty, see `serial_input`) feeds each boot's UART.
//!
//! Touches only the host end it opens (stdout, a file, a pty) and the UART a boot hands
//! it; it knows nothing of KVM or the buses.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tessera_api::config::{ConsoleMode, VmConfig};
use tessera_devices::serial::SerialDevice;

use crate::serial_input::{spawn_forwarder, stdin_input, AttachedUart, InputTarget};
use crate::vm::VmError;

/// Where the serial port's bytes go, opened once per VM configuration (at its first boot,
/// kept until `vm.delete`) so a reboot keeps writing to the same place, and where its
/// typed input comes from.
pub struct SerialSink {
    pub(crate) out: Option<Arc<Mutex<Box<dyn Write + Send>>>>,
    /// Where typed input goes: stdin's target (shared by every `Tty` sink the process
    /// opens), this sink's pty's, or none.
    input: Option<Arc<InputTarget>>,
    /// Whether `input` is this sink's own (the pty's), to be closed with it.
    owns_input: bool,
    /// The pseudo-terminal created for `Pty` mode, reported to the user.
    pub pty: Option<PathBuf>,
}

impl SerialSink {
    /// Opens what the configuration's serial mode asks for.
    pub fn open(config: &VmConfig) -> Result<Self, VmError> {
        let s = &config.serial;
        let out: Option<Box<dyn Write + Send>> = match s.mode {
            ConsoleMode::Off => None,
            ConsoleMode::Null => Some(Box::new(std::io::sink())),
            ConsoleMode::Tty => {
                return Ok(SerialSink {
                    out: Some(Arc::new(Mutex::new(Box::new(std::io::stdout())))),
                    input: Some(stdin_input()),
                    owns_input: false,
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
                let input = Arc::new(InputTarget::default());
                if let Err(e) = spawn_forwarder(reader, input.clone()) {
                    tracing::warn!("no serial input: {e}");
                }
                return Ok(SerialSink {
                    out: Some(Arc::new(Mutex::new(Box::new(master)))),
                    input: Some(input),
                    owns_input: true,
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
            input: None,
            owns_input: false,
            pty: None,
        })
    }

    /// Types input into `uart`, a boot's, until the returned guard is dropped; `None`
    /// when this sink has no input.
    pub(crate) fn attach_input(&self, uart: Arc<Mutex<SerialDevice>>) -> Option<AttachedUart> {
        self.input.as_ref().map(|input| input.attach(uart))
    }
}

impl Drop for SerialSink {
    fn drop(&mut self) {
        // The pty's reader ends with the sink; stdin's stays for the next VM.
        if let (true, Some(input)) = (self.owns_input, &self.input) {
            input.close();
        }
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
