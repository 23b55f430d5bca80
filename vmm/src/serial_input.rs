//! Typed input for the guest's serial port: one thread per host source (the process's
//! stdin, or a pty) reads it and types it into the UART of the boot that is running.
//!
//! Touches only its source and the UART a boot attaches. Between boots, and before the
//! first, no UART is attached: the thread then holds what it read and sleeps on a
//! condition variable until a boot attaches its UART, so nothing typed is lost or polled
//! for. The stdin reader lives as long as the process (stdin is the process's, and a
//! second reader would steal half the bytes); a pty's ends with its sink.

use std::io::Read;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tessera_devices::serial::SerialDevice;

/// The UART that typed input goes into, changed as boots come and go, and what the input
/// thread waits on while there is none.
#[derive(Default)]
pub(crate) struct InputTarget {
    state: Mutex<TargetState>,
    /// Signalled when a UART is attached or the source is closed.
    changed: Condvar,
}

#[derive(Default)]
struct TargetState {
    /// The running boot's UART, if a boot is running.
    uart: Option<Arc<Mutex<SerialDevice>>>,
    /// The sink that reads this source is gone: its thread ends.
    closed: bool,
}

/// A boot's UART as the target of typed input, for as long as this lives: dropping it
/// (the boot ends or fails) detaches the UART, and input waits for the next boot.
pub(crate) struct AttachedUart {
    target: Arc<InputTarget>,
    uart: Arc<Mutex<SerialDevice>>,
}

impl InputTarget {
    fn state(&self) -> MutexGuard<'_, TargetState> {
        // The state is two plain fields, valid whatever a panicking holder did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `uart` the target of typed input, handing it what was typed since the last
    /// boot ended, until the returned guard is dropped.
    pub(crate) fn attach(self: &Arc<Self>, uart: Arc<Mutex<SerialDevice>>) -> AttachedUart {
        self.state().uart = Some(uart.clone());
        self.changed.notify_all();
        AttachedUart {
            target: self.clone(),
            uart,
        }
    }

    /// Ends the input thread: it reads no more and drops what it holds.
    pub(crate) fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.uart = None;
        drop(state);
        self.changed.notify_all();
    }

    fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// The attached UART, waiting (asleep) until there is one; `None` once closed.
    fn wait_for_uart(&self) -> Option<Arc<Mutex<SerialDevice>>> {
        let mut state = self.state();
        loop {
            if state.closed {
                return None;
            }
            if let Some(uart) = &state.uart {
                return Some(uart.clone());
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for AttachedUart {
    fn drop(&mut self) {
        let mut state = self.target.state();
        // Only this boot's UART: never one a later boot has attached.
        if state
            .uart
            .as_ref()
            .is_some_and(|u| Arc::ptr_eq(u, &self.uart))
        {
            state.uart = None;
        }
    }
}

/// The target of the process's stdin, whose one reader thread starts on first use.
pub(crate) fn stdin_input() -> Arc<InputTarget> {
    static STDIN: OnceLock<Arc<InputTarget>> = OnceLock::new();
    STDIN
        .get_or_init(|| {
            let target = Arc::new(InputTarget::default());
            if let Err(e) = spawn_forwarder(std::io::stdin(), target.clone()) {
                tracing::warn!("no serial input: {e}");
            }
            target
        })
        .clone()
}

/// Starts the thread that forwards `input` into `target`'s UART until `input` ends or
/// `target` is closed.
pub(crate) fn spawn_forwarder(
    input: impl Read + Send + 'static,
    target: Arc<InputTarget>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("serial-input".into())
        .spawn(move || forward_input(input, &target))
}

/// Forwards bytes from `input` (the VMM's stdin, or the pty) into the attached UART,
/// holding back what the 64-byte FIFO cannot take yet, or all of it while no UART is
/// attached.
fn forward_input(mut input: impl Read, target: &InputTarget) {
    if let Err(e) = crate::seccomp::apply_to_current_thread(crate::seccomp::ThreadRole::SerialInput)
    {
        // Reading unfiltered would be the hole the filters close: no input instead.
        tracing::error!("serial input stopped: {e}");
        return;
    }
    let mut buf = [0u8; 256];
    loop {
        if target.is_closed() {
            return;
        }
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
            let Some(device) = target.wait_for_uart() else {
                return;
            };
            let queued = device
                .lock()
                .map_or(0, |mut d| d.enqueue_input(pending).unwrap_or(0));
            pending = pending.get(queued..).unwrap_or_default();
            if !pending.is_empty() {
                // The FIFO is full: the guest reads it at its own pace.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;
    use tessera_devices::bus::BusDevice;
    use vmm_sys_util::eventfd::EventFd;

    fn uart() -> Arc<Mutex<SerialDevice>> {
        let irq = EventFd::new(0).unwrap();
        Arc::new(Mutex::new(SerialDevice::new(
            irq,
            Box::new(std::io::sink()),
        )))
    }

    /// What the guest would read from the UART's receive FIFO, until it is empty.
    fn received(uart: &Arc<Mutex<SerialDevice>>) -> Vec<u8> {
        let mut dev = uart.lock().unwrap();
        let mut bytes = Vec::new();
        while dev.fifo_capacity() < 64 {
            let mut b = [0u8];
            dev.read(0, &mut b);
            bytes.push(b[0]);
        }
        bytes
    }

    /// Waits, for at most 10 s, until `done` holds.
    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn wait_for_bytes(uart: &Arc<Mutex<SerialDevice>>, n: usize) {
        wait_until("the bytes never reached the UART", || {
            uart.lock().unwrap().fifo_capacity() <= 64 - n
        });
    }

    /// The typing end of a source, and what the forwarder has done with the other end.
    struct Typist {
        keys: UnixStream,
        /// The reading thread, as `PID/task/TID` under /proc.
        reader: Arc<Mutex<Option<String>>>,
        /// The bytes it has read.
        read: Arc<AtomicUsize>,
    }

    /// A source that records which thread reads it and how many bytes it has given.
    struct Watched {
        inner: UnixStream,
        reader: Arc<Mutex<Option<String>>>,
        read: Arc<AtomicUsize>,
    }

    impl Read for Watched {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            // /proc/thread-self is the calling thread's own /proc/PID/task/TID.
            let me = std::fs::read_link("/proc/thread-self").unwrap();
            *self.reader.lock().unwrap() = Some(me.display().to_string());
            let n = self.inner.read(buf)?;
            self.read.fetch_add(n, Ordering::SeqCst);
            Ok(n)
        }
    }

    impl Typist {
        /// A forwarder thread into `target`, reading what this typist types.
        fn start(target: &Arc<InputTarget>) -> (Typist, JoinHandle<()>) {
            let (keys, inner) = UnixStream::pair().unwrap();
            let (reader, read) = (Arc::new(Mutex::new(None)), Arc::new(AtomicUsize::new(0)));
            let source = Watched {
                inner,
                reader: reader.clone(),
                read: read.clone(),
            };
            let thread = spawn_forwarder(source, target.clone()).unwrap();
            (Typist { keys, reader, read }, thread)
        }

        /// Types `bytes` and waits until the forwarder has read them.
        fn type_in(&mut self, bytes: &[u8]) {
            let total = self.read.load(Ordering::SeqCst) + bytes.len();
            self.keys.write_all(bytes).unwrap();
            wait_until("the thread never read the input", || {
                self.read.load(Ordering::SeqCst) >= total
            });
        }

        /// The times the reading thread has gone to sleep of its own accord.
        fn reader_sleeps(&self) -> u64 {
            let task = self.reader.lock().unwrap().clone().unwrap();
            std::fs::read_to_string(format!("/proc/{task}/status"))
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        }
    }

    fn join(thread: JoinHandle<()>) {
        wait_until("the input thread outlived its use", || thread.is_finished());
        thread.join().unwrap();
    }

    #[test]
    fn input_typed_with_no_uart_waits_asleep_and_reaches_the_next_uart() {
        let target = Arc::new(InputTarget::default());
        let (mut typist, thread) = Typist::start(&target);
        typist.type_in(b"ls\n");
        // Holding bytes with no UART to take them, the thread must sleep until one is
        // attached, not wake to look for one (it used to, every 5 ms: 40 times here).
        std::thread::sleep(Duration::from_millis(20));
        let before = typist.reader_sleeps();
        std::thread::sleep(Duration::from_millis(200));
        let woken = typist.reader_sleeps() - before;
        assert!(
            woken <= 2,
            "the input thread woke {woken} times with no UART"
        );

        let uart = uart();
        let _attached = target.attach(uart.clone());
        wait_for_bytes(&uart, 3);
        assert_eq!(received(&uart), b"ls\n");
        drop(typist);
        join(thread);
    }

    #[test]
    fn a_stopped_boot_s_uart_gets_no_more_input() {
        let target = Arc::new(InputTarget::default());
        let (mut typist, thread) = Typist::start(&target);
        let first = uart();
        let attached = target.attach(first.clone());
        typist.type_in(b"a");
        wait_for_bytes(&first, 1);
        // The boot ends: what is typed now is for the next boot, not lost in this UART.
        drop(attached);
        typist.type_in(b"b");
        let second = uart();
        let _attached = target.attach(second.clone());
        wait_for_bytes(&second, 1);
        assert_eq!(received(&first), b"a");
        assert_eq!(received(&second), b"b");
        drop(typist);
        join(thread);
    }

    #[test]
    fn detaching_an_old_boot_leaves_a_newer_uart_attached() {
        let target = Arc::new(InputTarget::default());
        let old = target.attach(uart());
        let new = uart();
        let _new = target.attach(new.clone());
        drop(old);
        let current = target.state().uart.clone().unwrap();
        assert!(Arc::ptr_eq(&current, &new));
    }

    /// A pty master that no one has opened: every read is EAGAIN.
    struct Unattached;

    impl Read for Unattached {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::EAGAIN))
        }
    }

    #[test]
    fn closing_a_source_ends_its_thread() {
        // A pty no one has opened, as a deleted VM's sink leaves it.
        let target = Arc::new(InputTarget::default());
        let thread = spawn_forwarder(Unattached, target.clone()).unwrap();
        target.close();
        join(thread);

        // A source that holds bytes, asleep waiting for a UART.
        let target = Arc::new(InputTarget::default());
        let (mut typist, thread) = Typist::start(&target);
        typist.type_in(b"x");
        target.close();
        join(thread);
    }

    #[test]
    fn the_process_has_one_stdin_reader() {
        assert!(Arc::ptr_eq(&stdin_input(), &stdin_input()));
    }
}
