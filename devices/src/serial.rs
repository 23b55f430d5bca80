//! The COM1 16550A UART: vm-superio's `Serial` put on the port I/O bus, with its
//! interrupt delivered through an `EventFd` (registered by the VMM as an irqfd).

use std::io::{self, Write};

use tracing::{trace, warn};
use vm_superio::serial::{Error as SuperioError, NoEvents};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Number of consecutive I/O ports a 16550 decodes (its bus range length).
pub const SERIAL_PORT_LEN: u64 = 8;

/// The usual COM1 base port.
pub const COM1_PORT_BASE: u16 = 0x3f8;

/// A vm-superio [`Trigger`] that signals an `EventFd` (an irqfd on the VMM side).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Why input could not be handed to the guest.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The bytes were queued but the "received data" interrupt could not be raised.
    #[error("serial input queued but the interrupt could not be raised: {0}")]
    Interrupt(#[source] io::Error),
    /// The UART model reported an I/O error.
    #[error("serial I/O error: {0}")]
    Io(#[source] io::Error),
}

/// The writer type the UART transmits into.
type SerialOut = Box<dyn Write + Send>;

/// A 16550A UART occupying [`SERIAL_PORT_LEN`] ports.
///
/// Register offsets are those of the 16550 (0 = RBR/THR/DLL, 1 = IER/DLM, 2 = IIR/FCR,
/// 3 = LCR, 4 = MCR, 5 = LSR, 6 = MSR, 7 = SCR); vm-superio models them.
pub struct SerialDevice {
    /// The UART model.
    serial: Serial<EventFdTrigger, NoEvents, SerialOut>,
    /// Set after the first failed write to `out`, so a closed console logs once.
    out_failed: bool,
}

impl SerialDevice {
    /// A UART that raises `interrupt` and transmits what the guest writes into `out`.
    ///
    /// `out` is flushed after every byte; give it something that does not block for long
    /// (the vCPU that wrote the byte waits for it).
    pub fn new(interrupt: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            serial: Serial::new(EventFdTrigger(interrupt), out),
            out_failed: false,
        }
    }

    /// Bytes typed into the guest (host stdin / pty), as much as the FIFO takes; returns
    /// how many were queued.
    ///
    /// Returns `Ok(0)` when `bytes` is empty, when the receive FIFO is full (keep the rest
    /// and try again once the guest has read some; see [`Self::fifo_capacity`]) and while
    /// the guest has the UART in loopback mode. An error means the bytes were queued but
    /// the interrupt could not be raised.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, SerialError> {
        let queued = bytes.len().min(self.serial.fifo_capacity());
        match self.serial.enqueue_raw_bytes(bytes) {
            Ok(n) => Ok(n),
            Err(SuperioError::FullFifo) => Ok(0),
            Err(SuperioError::Trigger(e)) => {
                // vm-superio queued the bytes before it failed to raise the interrupt.
                warn!(queued, error = %e, "serial: input interrupt failed");
                Err(SerialError::Interrupt(e))
            }
            // enqueue_raw_bytes does no output today; keep the match total anyway.
            Err(SuperioError::IOError(e)) => Err(SerialError::Io(e)),
        }
    }

    /// Free space in the receive FIFO, in bytes (64 when empty).
    pub fn fifo_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// Reads one register.
    fn read_register(&mut self, offset: u64) -> u8 {
        match u8::try_from(offset) {
            Ok(offset) if u64::from(offset) < SERIAL_PORT_LEN => self.serial.read(offset),
            _ => 0xff,
        }
    }

    /// Writes one register, logging what the guest cannot be told about.
    fn write_register(&mut self, offset: u64, value: u8) {
        let Ok(offset) = u8::try_from(offset) else {
            return;
        };
        if u64::from(offset) >= SERIAL_PORT_LEN {
            return;
        }
        match self.serial.write(offset, value) {
            Ok(()) => {}
            Err(SuperioError::IOError(e)) => {
                if self.out_failed {
                    trace!(error = %e, "serial: output byte lost");
                } else {
                    self.out_failed = true;
                    warn!(error = %e, "serial: output failed; further lost bytes are not logged");
                }
            }
            Err(SuperioError::Trigger(e)) => warn!(error = %e, "serial: interrupt failed"),
            Err(SuperioError::FullFifo) => trace!("serial: loopback FIFO full"),
        }
    }
}

impl BusDevice for SerialDevice {
    /// Byte registers; a wider access is split into byte accesses to consecutive ports,
    /// as an ISA bus does.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in (0u64..).zip(data.iter_mut()) {
            *byte = offset
                .checked_add(i)
                .map_or(0xff, |port| self.read_register(port));
        }
    }

    /// Byte registers; a wider access is split into byte accesses to consecutive ports.
    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &byte) in (0u64..).zip(data.iter()) {
            if let Some(port) = offset.checked_add(i) {
                self.write_register(port, byte);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const THR: u64 = 0;
    const RBR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const LSR: u64 = 5;
    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;
    const LSR_DR: u8 = 0x01;
    const LSR_THRE_TEMT: u8 = 0x60;

    /// A writer the test can look into.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer that always fails.
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn setup() -> (SerialDevice, EventFd, SharedBuf) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let out = SharedBuf::default();
        let dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        (dev, irq, out)
    }

    fn read_reg(dev: &mut SerialDevice, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    fn fired(irq: &EventFd) -> bool {
        match irq.read() {
            Ok(n) => n > 0,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("eventfd read: {e}"),
        }
    }

    #[test]
    fn thr_bytes_reach_the_writer() {
        let (mut dev, irq, out) = setup();
        for &b in b"hi\n" {
            dev.write(THR, &[b]);
        }
        assert_eq!(*out.0.lock().unwrap(), b"hi\n");
        // No interrupt: IER is clear.
        assert!(!fired(&irq));
        // With DLAB set, offset 0 is the divisor latch, not THR.
        dev.write(LCR, &[0x80]);
        dev.write(0, &[0x01]);
        assert_eq!(read_reg(&mut dev, 0), 0x01);
        dev.write(LCR, &[0x03]);
        assert_eq!(*out.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn lsr_reports_transmitter_empty_and_data_ready() {
        let (mut dev, _irq, _out) = setup();
        assert_eq!(read_reg(&mut dev, LSR), LSR_THRE_TEMT);
        assert_eq!(dev.enqueue_input(b"x").unwrap(), 1);
        assert_eq!(read_reg(&mut dev, LSR), LSR_THRE_TEMT | LSR_DR);
        assert_eq!(read_reg(&mut dev, RBR), b'x');
        assert_eq!(read_reg(&mut dev, LSR), LSR_THRE_TEMT);
    }

    #[test]
    fn enabling_thre_interrupt_fires_eventfd() {
        let (mut dev, irq, _out) = setup();
        assert!(!fired(&irq));
        dev.write(IER, &[IER_THRE]);
        assert!(fired(&irq));
        // IIR says THR empty (id 0b001 in bits 3:1), with the 16550A FIFO bits.
        assert_eq!(read_reg(&mut dev, IIR) & 0x0f, 0x02);
        // Each transmitted byte raises it again once IIR was read.
        dev.write(THR, b"a");
        assert!(fired(&irq));
    }

    #[test]
    fn input_bytes_are_readable_at_rbr() {
        let (mut dev, irq, _out) = setup();
        dev.write(IER, &[IER_RDA]);
        assert!(!fired(&irq), "no data yet: no interrupt");
        assert_eq!(dev.enqueue_input(b"ok").unwrap(), 2);
        assert!(fired(&irq));
        assert_eq!(read_reg(&mut dev, RBR), b'o');
        assert_eq!(read_reg(&mut dev, RBR), b'k');
        assert_eq!(read_reg(&mut dev, LSR) & LSR_DR, 0);
    }

    #[test]
    fn input_stops_at_fifo_capacity() {
        let (mut dev, _irq, _out) = setup();
        let cap = dev.fifo_capacity();
        assert_eq!(cap, 64);
        let input: Vec<u8> = (0..100u8).collect();
        assert_eq!(dev.enqueue_input(&input).unwrap(), cap);
        assert_eq!(dev.fifo_capacity(), 0);
        assert_eq!(dev.enqueue_input(&input).unwrap(), 0);
        assert_eq!(dev.enqueue_input(&[]).unwrap(), 0);
        assert_eq!(read_reg(&mut dev, RBR), 0);
        assert_eq!(dev.enqueue_input(&[200]).unwrap(), 1);
    }

    #[test]
    fn wide_access_is_split_into_bytes() {
        let (mut dev, _irq, _out) = setup();
        // Scratch register (7) and LSR (5) through one 3-byte read starting at 5.
        dev.write(7, &[0x5a]);
        let mut data = [0u8; 3];
        dev.read(5, &mut data);
        assert_eq!(data[0], LSR_THRE_TEMT);
        assert_eq!(data[2], 0x5a);
    }

    #[test]
    fn broken_output_does_not_stop_the_device() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(Broken));
        dev.write(IER, &[IER_THRE]);
        assert!(fired(&irq));
        read_reg(&mut dev, IIR);
        dev.write(THR, b"a");
        dev.write(THR, b"b");
        // THRE is still signalled: the guest must not hang on a lost console.
        assert!(fired(&irq));
        assert_eq!(read_reg(&mut dev, LSR), LSR_THRE_TEMT);
    }
}
