//! The vCPU threads of one boot: starting them, the `KVM_RUN` loop that sends PIO/MMIO
//! exits to the buses, pause and resume, exit counters, and stopping them.
//!
//! Touches only the vCPU fds, the two buses and the reset event it is given; a triple
//! fault writes that event, as the power device does for a reset.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use tessera_devices::bus::Bus;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::vm::{VmError, VmEvents};

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal used to kick vCPU threads out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// The running vCPU threads of one boot; dropping them stops and joins every thread.
pub(crate) struct Vcpus {
    threads: Vec<JoinHandle<Result<(), String>>>,
    control: Arc<VcpuControl>,
}

/// What the VM shares with its vCPU threads: stop and pause requests, and counters.
struct VcpuControl {
    stop: AtomicBool,
    paused: Mutex<bool>,
    resumed: Condvar,
    /// vCPU threads currently parked by a pause.
    parked: AtomicUsize,
    counters: Vec<VcpuCounters>,
}

/// Exits one vCPU has taken, by kind.
#[derive(Default)]
struct VcpuCounters {
    io: AtomicU64,
    mmio: AtomicU64,
    other: AtomicU64,
}

impl VcpuControl {
    fn new(vcpus: usize) -> Self {
        VcpuControl {
            stop: AtomicBool::new(false),
            paused: Mutex::new(false),
            resumed: Condvar::new(),
            parked: AtomicUsize::new(0),
            counters: (0..vcpus).map(|_| VcpuCounters::default()).collect(),
        }
    }

    /// Parks the calling vCPU thread while a pause is requested.
    fn park_if_paused(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if !*paused {
            return;
        }
        self.parked.fetch_add(1, Ordering::SeqCst);
        while *paused && !self.stop.load(Ordering::SeqCst) {
            paused = self.resumed.wait(paused).unwrap_or_else(|e| e.into_inner());
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }

    fn set_paused(&self, value: bool) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = value;
        self.resumed.notify_all();
    }
}

impl Vcpus {
    /// Starts one thread per configured vCPU, dispatching exits to `pio` and `mmio`; a
    /// triple fault fires the guest's reset event. A vCPU in `pins` runs only on those
    /// host CPUs, from before its first guest instruction. Returns once every thread
    /// has pinned and filtered itself; fails with none left running.
    pub(crate) fn start(
        vcpu_fds: Vec<VcpuFd>,
        pins: &BTreeMap<usize, Vec<u32>>,
        pio: &Arc<Bus>,
        mmio: &Arc<Bus>,
        events: &VmEvents,
    ) -> Result<Vcpus, VmError> {
        register_signal_handler(kick_signal(), kick_handler).map_err(|e| VmError::Os {
            what: "registering the vCPU kick signal",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        let control = Arc::new(VcpuControl::new(vcpu_fds.len()));
        let mut vcpus = Vec::with_capacity(vcpu_fds.len());
        // Each thread says here whether it could pin and filter itself.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, Result<(), String>)>();
        for (index, vcpu) in vcpu_fds.into_iter().enumerate() {
            let (pio, mmio, ctl) = (pio.clone(), mmio.clone(), control.clone());
            let pin = pins.get(&index).cloned();
            let ready = ready_tx.clone();
            let spawned = events
                .reset
                .try_clone()
                .map_err(|source| VmError::Os {
                    what: "cloning the reset event",
                    source,
                })
                .and_then(|reset| {
                    std::thread::Builder::new()
                        .name(format!("vcpu{index}"))
                        .spawn(move || {
                            let setup = setup_thread(pin.as_deref());
                            let _ = ready.send((index, setup.clone()));
                            // Gone once said: a thread that dies before saying then
                            // ends the wait instead of keeping it open.
                            drop(ready);
                            setup?;
                            run_vcpu(index, vcpu, &pio, &mmio, &ctl, &reset)
                        })
                        .map_err(|source| VmError::Os {
                            what: "spawning a vCPU thread",
                            source,
                        })
                });
            match spawned {
                Ok(h) => vcpus.push(h),
                Err(e) => {
                    // Nothing may keep running: stop the vCPUs already started.
                    stop_vcpus(&control, &mut vcpus);
                    return Err(e);
                }
            }
        }
        drop(ready_tx);
        for _ in 0..vcpus.len() {
            let failed = match ready_rx.recv() {
                Ok((_, Ok(()))) => continue,
                Ok((index, Err(message))) => VmError::VcpuRun {
                    index: index as u32,
                    message,
                },
                // Every sender gone without a word: a thread died before it could say.
                Err(_) => VmError::VcpuRun {
                    index: 0,
                    message: "a vCPU thread ended before it was set up".into(),
                },
            };
            stop_vcpus(&control, &mut vcpus);
            return Err(failed);
        }
        Ok(Vcpus {
            threads: vcpus,
            control,
        })
    }

    /// Stops every vCPU at the next exit and waits until all are parked.
    pub(crate) fn pause(&self) -> Result<(), VmError> {
        self.control.set_paused(true);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.control.parked.load(Ordering::SeqCst) < self.threads.len() {
            for h in &self.threads {
                let _ = h.kill(kick_signal());
            }
            if std::time::Instant::now() > deadline {
                self.control.set_paused(false);
                return Err(VmError::VcpuRun {
                    index: 0,
                    message: "vCPUs did not stop within 5 s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Lets paused vCPUs run again.
    pub(crate) fn resume(&self) {
        self.control.set_paused(false);
    }

    /// Exits taken per vCPU: `{"vcpu0": {"io_exits": N, "mmio_exits": N, "other_exits": N}}`.
    pub(crate) fn counters(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.control
            .counters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let values = [
                    ("io_exits", c.io.load(Ordering::Relaxed)),
                    ("mmio_exits", c.mmio.load(Ordering::Relaxed)),
                    ("other_exits", c.other.load(Ordering::Relaxed)),
                ];
                (
                    format!("vcpu{i}"),
                    values
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                )
            })
            .collect()
    }

    /// Reports a vCPU thread that has stopped on its own (an error), stopping the rest.
    pub(crate) fn check(&mut self) -> Result<(), VmError> {
        let Some(index) = self.threads.iter().position(|h| h.is_finished()) else {
            return Ok(());
        };
        let handle = self.threads.remove(index);
        let result = handle.join();
        stop_vcpus(&self.control, &mut self.threads);
        Err(VmError::VcpuRun {
            index: index as u32,
            message: match result {
                Ok(Err(m)) => m,
                Ok(Ok(())) => "stopped unexpectedly".into(),
                Err(_) => "panicked".into(),
            },
        })
    }
}

impl Drop for Vcpus {
    fn drop(&mut self) {
        stop_vcpus(&self.control, &mut self.threads);
    }
}

/// Stops and joins vCPU threads: sets the flag, wakes parked ones, then kicks each out of
/// KVM_RUN until it has exited (a kick that lands just before KVM_RUN would be lost).
fn stop_vcpus(control: &VcpuControl, vcpus: &mut Vec<JoinHandle<Result<(), String>>>) {
    control.stop.store(true, Ordering::SeqCst);
    control.set_paused(false);
    for handle in vcpus.drain(..) {
        while !handle.is_finished() {
            if handle.kill(kick_signal()).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Err(e) = handle.join() {
            tracing::error!("a vCPU thread panicked: {e:?}");
        }
    }
}

/// What a vCPU thread does before its first `KVM_RUN`: pin itself to its host CPUs
/// (under the control loop's filter, which it inherited and which allows
/// `sched_setaffinity`), then install its own filter, which does not.
fn setup_thread(pin: Option<&[u32]>) -> Result<(), String> {
    if let Some(cpus) = pin {
        crate::affinity::pin_current_thread(cpus).map_err(|e| {
            format!(
                "pinning to host CPUs {}: {e}",
                tessera_api::config::NodeSet::from_iter(cpus.iter().copied())
            )
        })?;
    }
    crate::seccomp::apply_to_current_thread(crate::seccomp::ThreadRole::Vcpu)
        .map_err(|e| e.to_string())
}

fn run_vcpu(
    index: usize,
    mut vcpu: VcpuFd,
    pio: &Bus,
    mmio: &Bus,
    control: &VcpuControl,
    reset_evt: &EventFd,
) -> Result<(), String> {
    let no_counters = VcpuCounters::default();
    let counters = control.counters.get(index).unwrap_or(&no_counters);
    loop {
        if control.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        control.park_if_paused();
        if control.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                counters.io.fetch_add(1, Ordering::Relaxed);
                if !pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                counters.io.fetch_add(1, Ordering::Relaxed);
                pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                counters.mmio.fetch_add(1, Ordering::Relaxed);
                if !mmio.read(addr, data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                counters.mmio.fetch_add(1, Ordering::Relaxed);
                mmio.write(addr, data);
            }
            Ok(VcpuExit::Hlt) => {}
            // A triple fault: PC hardware resets, so do we.
            Ok(VcpuExit::Shutdown) => {
                tracing::warn!("vCPU {index}: triple fault (KVM_EXIT_SHUTDOWN); resetting the VM");
                reset_evt.write(1).map_err(|e| e.to_string())?;
                return Ok(());
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Err(format!(
                    "KVM_RUN failed entry (reason {reason:#x}, cpu {cpu})"
                ))
            }
            Ok(VcpuExit::InternalError) => return Err("KVM internal error".into()),
            Ok(other) => {
                counters.other.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("unhandled vCPU exit {other:?}");
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        }
    }
}
