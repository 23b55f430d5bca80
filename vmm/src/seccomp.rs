//! Seccomp filters, one per thread role, kept here as data: which syscalls (and, for
//! `ioctl`, `prctl` and `sendto`, which requests) each kind of tessera thread may make,
//! each with why it needs it. Also owns installing them (`--seccomp true|false|log`) and
//! the SIGSYS handler that names the thread role and the syscall a filter refused.
//!
//! The roles are the threads tessera runs: the control loop (the main thread: VM
//! assembly, boots, hotplug, VFIO, mdev and host discovery), the API server (its thread
//! and any tokio blocking thread), the vCPUs, and the serial-input reader. Tessera has
//! no signal thread: its handlers (SIGTERM/SIGINT's wake-up byte, the vCPU kick, the
//! SIGSYS report) run on whichever thread the signal lands on, so their few syscalls are
//! in [`SIGNAL_HANDLERS`], part of every filter.
//!
//! Filters stack: a thread inherits its parent's at clone, and the kernel applies every
//! filter, the strictest answer winning. vCPU and serial-input threads are started by
//! the control loop after it is filtered, so they run under the control loop's filter
//! and their own; the control loop therefore allows what they need to filter
//! themselves (`prctl(PR_SET_NO_NEW_PRIVS)`, `seccomp`).
//!
//! The lists were found by running the nested end-to-end tests (boot, VFIO, mdev,
//! hotplug, the API) under `--seccomp log` and strace in the nested host
//! (docs/security.md says how to do it again).

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What `--seccomp` asks for, as Cloud Hypervisor's option does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// `true`: a syscall outside its thread's list kills the process with SIGSYS, after
    /// a line on standard error naming the thread role and the syscall number.
    #[default]
    Enforce,
    /// `log`: such a syscall is allowed, and the kernel logs it (audit type 1326,
    /// `SECCOMP_RET_LOG`), with the thread's name and the syscall number.
    Log,
    /// `false`: no filters.
    Off,
}

impl FromStr for SeccompMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "true" => Ok(SeccompMode::Enforce),
            "log" => Ok(SeccompMode::Log),
            "false" => Ok(SeccompMode::Off),
            "errno" => Err("`errno` is not supported: give true, false or log".into()),
            _ => Err(format!("`{s}` is not true, false or log")),
        }
    }
}

/// The kinds of thread tessera runs, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadRole {
    /// The main thread, which runs the control loop: VM assembly, boots, hotplug.
    Control,
    /// The API server's thread (and any blocking thread of its tokio runtime).
    Api,
    /// A vCPU thread: `KVM_RUN` and the device models its exits reach.
    Vcpu,
    /// The thread that types the host's input (stdin or a pty) into the serial port.
    SerialInput,
}

impl ThreadRole {
    /// Every role, in a fixed order.
    pub const ALL: [ThreadRole; 4] = [
        ThreadRole::Control,
        ThreadRole::Api,
        ThreadRole::Vcpu,
        ThreadRole::SerialInput,
    ];

    /// The role's name, as `--seccomp-selftest` takes it and messages print it.
    pub fn name(self) -> &'static str {
        match self {
            ThreadRole::Control => "control",
            ThreadRole::Api => "api",
            ThreadRole::Vcpu => "vcpu",
            ThreadRole::SerialInput => "serial-input",
        }
    }

    /// The syscalls this role may make, beyond [`SIGNAL_HANDLERS`] and [`EVERY_THREAD`].
    fn own_rules(self) -> &'static [Allow] {
        match self {
            ThreadRole::Control => CONTROL,
            ThreadRole::Api => API,
            ThreadRole::Vcpu => VCPU,
            ThreadRole::SerialInput => SERIAL_INPUT,
        }
    }

    /// Every rule of this role's filter.
    fn rules(self) -> impl Iterator<Item = &'static Allow> {
        SIGNAL_HANDLERS
            .iter()
            .chain(EVERY_THREAD)
            .chain(self.own_rules())
    }

    /// The syscall numbers this role's filter allows (some only with certain arguments).
    pub fn syscalls(self) -> BTreeSet<i64> {
        self.rules().map(|a| a.nr).collect()
    }
}

impl fmt::Display for ThreadRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ThreadRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ThreadRole::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("`{s}` is not control, api, vcpu or serial-input"))
    }
}

/// Why seccomp filters could not be made or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A filter did not compile (a bug in the lists here).
    #[error("the {role} thread's seccomp filter does not compile: {source}")]
    Build {
        /// The role whose filter failed.
        role: ThreadRole,
        /// seccompiler's reason.
        source: seccompiler::BackendError,
    },
    /// The kernel refused a filter.
    #[error("installing the {role} thread's seccomp filter: {source}")]
    Apply {
        /// The role whose filter failed.
        role: ThreadRole,
        /// seccompiler's reason (prctl or seccomp's errno).
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
    /// [`init`] was called twice.
    #[error("seccomp was already set up")]
    AlreadyInitialized,
}

/// Which arguments a rule allows.
#[derive(Debug)]
enum Only {
    /// Any.
    Any,
    /// Argument `arg` (a 32-bit value: an ioctl request, a prctl option, flags) equal to
    /// one of `values`, each with its name.
    Arg(u8, &'static [(u64, &'static str)]),
}

/// One allowed syscall: its number, which arguments, and why tessera makes it.
#[derive(Debug)]
struct Allow {
    nr: i64,
    only: Only,
    #[allow(dead_code)] // Read by people and by the test that every rule says why.
    why: &'static str,
}

const fn any(nr: libc::c_long, why: &'static str) -> Allow {
    Allow {
        nr,
        only: Only::Any,
        why,
    }
}

const fn only(
    nr: libc::c_long,
    arg: u8,
    values: &'static [(u64, &'static str)],
    why: &'static str,
) -> Allow {
    Allow {
        nr,
        only: Only::Arg(arg, values),
        why,
    }
}

// ioctl request numbers (<asm-generic/ioctl.h>): dir << 30 | size << 16 | type << 8 | nr.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const fn io(ty: u64, nr: u64) -> u64 {
    ioc(0, ty, nr, 0)
}
const fn iow(ty: u64, nr: u64, size: usize) -> u64 {
    ioc(1, ty, nr, size)
}
const fn ior(ty: u64, nr: u64, size: usize) -> u64 {
    ioc(2, ty, nr, size)
}
const fn iowr(ty: u64, nr: u64, size: usize) -> u64 {
    ioc(3, ty, nr, size)
}

const KVMIO: u64 = 0xAE;
/// VFIO's ioctls are all `_IO(';', 100 + n)`: the argument's size is not encoded.
const VFIO_TYPE: u64 = b';' as u64;
const fn vfio(n: u64) -> u64 {
    io(VFIO_TYPE, 100 + n)
}

use kvm_bindings as kb;
use std::mem::size_of;

/// The one syscall the SIGSYS handler and `--seccomp-selftest` make on purpose because
/// no filter allows it (a unit test checks): `getppid`, harmless if it ever ran.
pub const FORBIDDEN_SYSCALL: libc::c_long = libc::SYS_getppid;

/// Syscalls of tessera's signal handlers, which run on any thread: in every filter.
const SIGNAL_HANDLERS: &[Allow] = &[
    any(
        libc::SYS_rt_sigreturn,
        "every signal handler returns through it",
    ),
    only(
        libc::SYS_sendto,
        3,
        &[(libc::MSG_DONTWAIT as u64, "MSG_DONTWAIT")],
        "signal-hook's SIGTERM/SIGINT handler sends one byte to the control loop's \
         wake-up socket, without blocking; also the API's replies (MSG_NOSIGNAL is added \
         where needed)",
    ),
    any(
        libc::SYS_write,
        "the SIGSYS handler writes its report to stderr; logs and serial output",
    ),
];

/// What Rust's std, glibc and the allocator do on any thread.
const EVERY_THREAD: &[Allow] = &[
    // glibc's malloc reads /proc/sys/vm/overcommit_memory once per process, from the
    // first thread whose arena shrinks (arena.c, check_may_shrink_heap): that can be any
    // thread, so every filter lets it open files read-only, close-on-exec, as glibc does;
    // the control loop, which opens files for writing too, allows more below.
    only(
        libc::SYS_openat,
        2,
        &[(
            (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
            "O_RDONLY|O_CLOEXEC",
        )],
        "glibc's malloc reads /proc/sys/vm/overcommit_memory when an arena first shrinks",
    ),
    any(libc::SYS_read, "reading that file; eventfds; stdin"),
    any(libc::SYS_futex, "mutexes, condition variables, thread join"),
    any(libc::SYS_brk, "the allocator grows the heap"),
    any(libc::SYS_mmap, "the allocator's large blocks and arenas"),
    any(
        libc::SYS_munmap,
        "the allocator frees large blocks; thread stacks at exit",
    ),
    any(
        libc::SYS_mremap,
        "the allocator grows large blocks (Vec growth)",
    ),
    any(
        libc::SYS_mprotect,
        "glibc's arenas and thread stack guard pages",
    ),
    any(
        libc::SYS_madvise,
        "glibc frees a finished thread's stack and arena pages; guest RAM: THP advice, prefault",
    ),
    any(
        libc::SYS_rt_sigprocmask,
        "glibc blocks signals around thread exit",
    ),
    any(
        libc::SYS_sigaltstack,
        "std's stack-overflow handler: the alternate stack is removed at thread exit",
    ),
    any(
        libc::SYS_sched_yield,
        "spin locks and std::thread::yield_now",
    ),
    any(
        libc::SYS_clock_gettime,
        "Instant::now when the vDSO falls back to the syscall",
    ),
    any(libc::SYS_clock_nanosleep, "std::thread::sleep"),
    any(libc::SYS_nanosleep, "std::thread::sleep on older glibc"),
    any(
        libc::SYS_getrandom,
        "HashMap's random keys, seeded per thread",
    ),
    any(libc::SYS_close, "dropping files, eventfds, sockets"),
    any(
        libc::SYS_writev,
        "stderr and socket writes of several buffers",
    ),
    any(libc::SYS_exit, "a thread ends"),
    any(
        libc::SYS_exit_group,
        "the process ends (main's return, process::exit)",
    ),
    any(libc::SYS_gettid, "tracing and glibc's own thread id"),
];

/// The control loop: everything the VM's life needs. It also starts the vCPU and
/// serial-input threads, which run under this filter as well as their own.
const CONTROL: &[Allow] = &[
    // Files: the kernel, initramfs, sysfs (VFIO checks, host discovery, mdev), /dev/kvm,
    // /dev/vfio, the serial file or pty, the API socket file.
    any(libc::SYS_openat, "opening /dev/kvm, /dev/vfio/*, sysfs files, the kernel and initramfs, the serial file, /dev/ptmx"),
    any(libc::SYS_read, "reading the kernel, initramfs, sysfs, eventfds"),
    any(libc::SYS_pread64, "VFIO config space and region reads"),
    any(libc::SYS_pwrite64, "VFIO config space and region writes"),
    any(libc::SYS_lseek, "loading the kernel and initramfs"),
    any(libc::SYS_fstat, "file sizes (kernel, initramfs) and std's File metadata"),
    any(libc::SYS_newfstatat, "std::fs::metadata (sysfs, /proc/self/fd), host discovery"),
    any(libc::SYS_statx, "std::fs::metadata on newer glibc; host discovery"),
    any(libc::SYS_readlink, "sysfs links (iommu_group, driver) on x86_64's legacy call"),
    any(libc::SYS_readlinkat, "sysfs links: iommu_group, driver, mdev_type (host discovery)"),
    any(libc::SYS_getdents64, "listing sysfs directories (host discovery, mdev types, IOMMU groups)"),
    any(libc::SYS_fcntl, "std sets close-on-exec and non-blocking flags; dup of fds"),
    any(libc::SYS_dup, "cloning eventfds and files (try_clone)"),
    any(libc::SYS_write, "sysfs writes (mdev create/remove), eventfds, serial output"),
    any(libc::SYS_fsync, "managed mdevs: the state record under /run/tessera reaches the disk"),
    any(libc::SYS_fdatasync, "managed mdevs: the state record reaches the disk"),
    any(libc::SYS_unlink, "the API socket file is removed at exit (x86_64's legacy call)"),
    any(libc::SYS_unlinkat, "the API socket file at exit; managed mdevs' state records"),
    any(libc::SYS_renameat, "managed mdevs: a state record is replaced atomically"),
    any(libc::SYS_renameat2, "managed mdevs: a state record is replaced atomically (glibc's rename)"),
    any(libc::SYS_rename, "managed mdevs: a state record is replaced atomically (x86_64's legacy call)"),
    any(libc::SYS_mkdirat, "managed mdevs: the state directory /run/tessera"),
    any(libc::SYS_mkdir, "managed mdevs: the state directory (x86_64's legacy call)"),
    any(libc::SYS_getcwd, "relative paths in the configuration"),
    // Event loop.
    any(libc::SYS_epoll_create1, "the control loop's epoll"),
    any(libc::SYS_epoll_ctl, "adding the API, signal and VM event fds to the loop"),
    any(libc::SYS_epoll_wait, "the control loop waits for events"),
    any(libc::SYS_epoll_pwait, "the control loop waits (glibc's epoll_wait)"),
    any(libc::SYS_eventfd2, "VM events (reset, poweroff, hotplug), irqfds for MSI/MSI-X and INTx"),
    any(libc::SYS_recvfrom, "draining the signal wake-up socket"),
    any(libc::SYS_ppoll, "std's poll on stdin/pty readiness"),
    any(libc::SYS_poll, "std's poll (x86_64's legacy call)"),
    // Memory.
    any(libc::SYS_memfd_create, "guest RAM backing (shared memory zones)"),
    any(libc::SYS_ftruncate, "sizing guest RAM's memfd"),
    any(libc::SYS_mbind, "guest RAM zones bound to a host NUMA node (host_numa_node)"),
    any(libc::SYS_get_mempolicy, "checking a zone's host NUMA binding"),
    // Threads: vCPUs and the serial-input reader start here, and filter themselves.
    any(libc::SYS_clone, "starting vCPU, serial-input and guest-RAM prefault threads"),
    any(libc::SYS_clone3, "starting vCPU, serial-input and guest-RAM prefault threads (glibc 2.34+)"),
    any(libc::SYS_set_robust_list, "a new thread registers its robust futexes (under the parent's filter)"),
    any(libc::SYS_rseq, "a new thread registers restartable sequences (glibc 2.35+)"),
    any(libc::SYS_sched_getaffinity, "std::thread::available_parallelism; the host check of cpus.affinity"),
    any(libc::SYS_sched_setaffinity, "a vCPU thread pins itself (cpus.affinity) before its own filter, under this one"),
    only(
        libc::SYS_prctl,
        0,
        &[
            (libc::PR_SET_NAME as u64, "PR_SET_NAME"),
            (libc::PR_SET_NO_NEW_PRIVS as u64, "PR_SET_NO_NEW_PRIVS"),
        ],
        "a new thread names itself (vcpu0, serial-input) and, before its own filter, sets \
         no_new_privs, as seccomp requires",
    ),
    any(libc::SYS_seccomp, "a new thread adds its own, stricter, filter (filters only ever narrow)"),
    any(libc::SYS_rt_sigaction, "the vCPU kick signal's handler is registered at each boot"),
    any(libc::SYS_tgkill, "kicking a vCPU thread out of KVM_RUN (pause, stop)"),
    any(libc::SYS_getpid, "tgkill's process id"),
    // Serial: the pty for `--serial pty`.
    only(
        libc::SYS_ioctl,
        1,
        &[
            (libc::TCGETS, "TCGETS"),
            (libc::TIOCGPTN, "TIOCGPTN"),
            (libc::TIOCSPTLCK, "TIOCSPTLCK"),
            (libc::FIONBIO, "FIONBIO"),
            (libc::FIOCLEX, "FIOCLEX"),
            // KVM: /dev/kvm.
            (io(KVMIO, 0x00), "KVM_GET_API_VERSION"),
            (io(KVMIO, 0x01), "KVM_CREATE_VM"),
            (iowr(KVMIO, 0x02, size_of::<kb::kvm_msr_list>()), "KVM_GET_MSR_INDEX_LIST"),
            (io(KVMIO, 0x03), "KVM_CHECK_EXTENSION"),
            (io(KVMIO, 0x04), "KVM_GET_VCPU_MMAP_SIZE"),
            (iowr(KVMIO, 0x05, size_of::<kb::kvm_cpuid2>()), "KVM_GET_SUPPORTED_CPUID"),
            (iowr(KVMIO, 0x0a, size_of::<kb::kvm_msr_list>()), "KVM_GET_MSR_FEATURE_INDEX_LIST"),
            // KVM: the VM.
            (io(KVMIO, 0x41), "KVM_CREATE_VCPU"),
            (iow(KVMIO, 0x46, size_of::<kb::kvm_userspace_memory_region>()), "KVM_SET_USER_MEMORY_REGION: guest RAM, and BARs mapped or moved at hotplug"),
            (io(KVMIO, 0x47), "KVM_SET_TSS_ADDR"),
            (iow(KVMIO, 0x48, size_of::<u64>()), "KVM_SET_IDENTITY_MAP_ADDR"),
            (io(KVMIO, 0x60), "KVM_CREATE_IRQCHIP"),
            (iow(KVMIO, 0x61, size_of::<kb::kvm_irq_level>()), "KVM_IRQ_LINE"),
            (iow(KVMIO, 0x6a, size_of::<kb::kvm_irq_routing>()), "KVM_SET_GSI_ROUTING: MSI/MSI-X routes"),
            (iow(KVMIO, 0x76, size_of::<kb::kvm_irqfd>()), "KVM_IRQFD: device interrupts"),
            (iow(KVMIO, 0x77, size_of::<kb::kvm_pit_config>()), "KVM_CREATE_PIT2"),
            (iow(KVMIO, 0x79, size_of::<kb::kvm_ioeventfd>()), "KVM_IOEVENTFD"),
            (iow(KVMIO, 0xa3, size_of::<kb::kvm_enable_cap>()), "KVM_ENABLE_CAP (split irqchip, x2APIC)"),
            (iow(KVMIO, 0xa5, size_of::<kb::kvm_msi>()), "KVM_SIGNAL_MSI"),
            (iowr(KVMIO, 0xe0, size_of::<kb::kvm_create_device>()), "KVM_CREATE_DEVICE: the KVM-VFIO device"),
            (iow(KVMIO, 0xe1, size_of::<kb::kvm_device_attr>()), "KVM_SET_DEVICE_ATTR: VFIO groups added to and removed from the KVM-VFIO device"),
            // KVM: vCPU set-up before the threads start, and at reboot.
            (io(KVMIO, 0x80), "KVM_RUN: vCPU threads start under this filter (stacked under theirs)"),
            (ior(KVMIO, 0x81, size_of::<kb::kvm_regs>()), "KVM_GET_REGS"),
            (iow(KVMIO, 0x82, size_of::<kb::kvm_regs>()), "KVM_SET_REGS"),
            (ior(KVMIO, 0x83, size_of::<kb::kvm_sregs>()), "KVM_GET_SREGS"),
            (iow(KVMIO, 0x84, size_of::<kb::kvm_sregs>()), "KVM_SET_SREGS"),
            (iowr(KVMIO, 0x88, size_of::<kb::kvm_msrs>()), "KVM_GET_MSRS"),
            (iow(KVMIO, 0x89, size_of::<kb::kvm_msrs>()), "KVM_SET_MSRS"),
            (ior(KVMIO, 0x8c, size_of::<kb::kvm_fpu>()), "KVM_GET_FPU"),
            (iow(KVMIO, 0x8d, size_of::<kb::kvm_fpu>()), "KVM_SET_FPU"),
            (ior(KVMIO, 0x8e, size_of::<kb::kvm_lapic_state>()), "KVM_GET_LAPIC"),
            (iow(KVMIO, 0x8f, size_of::<kb::kvm_lapic_state>()), "KVM_SET_LAPIC"),
            (iow(KVMIO, 0x90, size_of::<kb::kvm_cpuid2>()), "KVM_SET_CPUID2"),
            (ior(KVMIO, 0x98, size_of::<kb::kvm_mp_state>()), "KVM_GET_MP_STATE"),
            (iow(KVMIO, 0x99, size_of::<kb::kvm_mp_state>()), "KVM_SET_MP_STATE"),
            (io(KVMIO, 0xa2), "KVM_SET_TSC_KHZ"),
            (io(KVMIO, 0xa3), "KVM_GET_TSC_KHZ"),
            // VFIO: container, groups, devices (open at boot and at hot-add, released at
            // hot-remove).
            (vfio(0), "VFIO_GET_API_VERSION"),
            (vfio(1), "VFIO_CHECK_EXTENSION"),
            (vfio(2), "VFIO_SET_IOMMU"),
            (vfio(3), "VFIO_GROUP_GET_STATUS"),
            (vfio(4), "VFIO_GROUP_SET_CONTAINER"),
            (vfio(5), "VFIO_GROUP_UNSET_CONTAINER"),
            (vfio(6), "VFIO_GROUP_GET_DEVICE_FD"),
            (vfio(7), "VFIO_DEVICE_GET_INFO"),
            (vfio(8), "VFIO_DEVICE_GET_REGION_INFO"),
            (vfio(9), "VFIO_DEVICE_GET_IRQ_INFO"),
            (vfio(10), "VFIO_DEVICE_SET_IRQS: MSI/MSI-X/INTx eventfds"),
            (vfio(11), "VFIO_DEVICE_RESET"),
            (vfio(12), "VFIO_IOMMU_GET_INFO (container) / VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"),
            (vfio(13), "VFIO_IOMMU_MAP_DMA: guest RAM mapped for DMA"),
            (vfio(14), "VFIO_IOMMU_UNMAP_DMA"),
            (vfio(17), "VFIO_DEVICE_FEATURE"),
        ],
        "KVM and VFIO requests of VM assembly and hotplug; terminal requests of the pty",
    ),
];

/// The API server: accept, read and answer requests on the Unix socket; hand them to the
/// control loop through a channel and an eventfd.
const API: &[Allow] = &[
    any(libc::SYS_accept4, "a client connects"),
    any(libc::SYS_read, "reading requests; the runtime's eventfd"),
    any(libc::SYS_recvfrom, "reading requests"),
    any(libc::SYS_epoll_create1, "tokio's reactor"),
    any(libc::SYS_epoll_ctl, "tokio registers each connection"),
    any(libc::SYS_epoll_wait, "tokio waits for events"),
    any(
        libc::SYS_epoll_pwait,
        "tokio waits for events (glibc's epoll_wait)",
    ),
    any(libc::SYS_eventfd2, "tokio's waker"),
    any(
        libc::SYS_fcntl,
        "non-blocking and close-on-exec flags on accepted sockets",
    ),
    any(libc::SYS_shutdown, "closing a connection"),
    any(libc::SYS_getsockopt, "SO_ERROR on a failed socket"),
    any(libc::SYS_sched_getaffinity, "tokio sizes its blocking pool"),
    only(
        libc::SYS_ioctl,
        1,
        &[(libc::FIONBIO, "FIONBIO"), (libc::FIOCLEX, "FIOCLEX")],
        "std and tokio set sockets non-blocking and close-on-exec",
    ),
    // tokio's blocking pool threads start from here and filter themselves.
    any(libc::SYS_clone, "tokio starts a blocking-pool thread"),
    any(
        libc::SYS_clone3,
        "tokio starts a blocking-pool thread (glibc 2.34+)",
    ),
    any(
        libc::SYS_set_robust_list,
        "a new thread registers its robust futexes",
    ),
    any(
        libc::SYS_rseq,
        "a new thread registers restartable sequences",
    ),
    only(
        libc::SYS_prctl,
        0,
        &[
            (libc::PR_SET_NAME as u64, "PR_SET_NAME"),
            (libc::PR_SET_NO_NEW_PRIVS as u64, "PR_SET_NO_NEW_PRIVS"),
        ],
        "a blocking-pool thread names itself and sets no_new_privs before its filter",
    ),
    any(libc::SYS_seccomp, "a blocking-pool thread adds its filter"),
];

/// A vCPU: `KVM_RUN` and what its exits reach in the device models (eventfd writes for
/// interrupts, VFIO region reads and writes for BARs, serial output), pausing.
const VCPU: &[Allow] = &[
    only(
        libc::SYS_ioctl,
        1,
        &[
            (io(KVMIO, 0x80), "KVM_RUN"),
            (
                iow(KVMIO, 0x61, size_of::<kb::kvm_irq_level>()),
                "KVM_IRQ_LINE: the serial port's and GED's interrupts",
            ),
            (iow(KVMIO, 0xa5, size_of::<kb::kvm_msi>()), "KVM_SIGNAL_MSI"),
            (
                iow(KVMIO, 0x6a, size_of::<kb::kvm_irq_routing>()),
                "KVM_SET_GSI_ROUTING: the guest programs MSI/MSI-X",
            ),
            (
                vfio(10),
                "VFIO_DEVICE_SET_IRQS: the guest enables or masks MSI/MSI-X",
            ),
            (
                iow(KVMIO, 0x76, size_of::<kb::kvm_irqfd>()),
                "KVM_IRQFD: the guest enables MSI/MSI-X",
            ),
            (
                iow(KVMIO, 0x46, size_of::<kb::kvm_userspace_memory_region>()),
                "KVM_SET_USER_MEMORY_REGION: the guest moves a BAR",
            ),
            (libc::TCGETS, "TCGETS"),
        ],
        "running the vCPU, and the interrupt changes a guest's register write makes",
    ),
    any(libc::SYS_read, "eventfds"),
    any(
        libc::SYS_pread64,
        "VFIO BAR and config space reads the guest makes",
    ),
    any(
        libc::SYS_pwrite64,
        "VFIO BAR and config space writes the guest makes",
    ),
    any(
        libc::SYS_eventfd2,
        "MSI/MSI-X vectors the guest enables get an eventfd",
    ),
    any(
        libc::SYS_dup,
        "cloning an eventfd when the guest enables a vector",
    ),
    any(libc::SYS_fcntl, "close-on-exec on a cloned eventfd"),
    any(
        libc::SYS_tgkill,
        "a triple fault or reset stops the other vCPUs",
    ),
    any(libc::SYS_getpid, "tgkill's process id"),
];

/// The serial-input thread: read stdin or the pty, put bytes into the UART (whose
/// interrupt is an eventfd write).
const SERIAL_INPUT: &[Allow] = &[
    any(libc::SYS_read, "reading stdin or the pty"),
    only(
        libc::SYS_ioctl,
        1,
        &[
            (
                iow(KVMIO, 0x61, size_of::<kb::kvm_irq_level>()),
                "KVM_IRQ_LINE: the UART raises its interrupt",
            ),
            (libc::TCGETS, "TCGETS"),
        ],
        "the UART's interrupt",
    ),
];

/// How every thread is to be filtered: the mode and the compiled filters.
struct Setup {
    mode: SeccompMode,
    selftest: Option<ThreadRole>,
    filters: BTreeMap<ThreadRole, BpfProgram>,
}

static SETUP: OnceLock<Setup> = OnceLock::new();

thread_local! {
    /// The calling thread's role, once filtered: what the SIGSYS handler reports. A
    /// const-initialised `Copy` cell without a destructor, so reading it in a signal
    /// handler touches no lock and allocates nothing.
    static ROLE: Cell<Option<ThreadRole>> = const { Cell::new(None) };
}

/// Compiles `role`'s filter: a listed syscall is allowed, anything else gets `mismatch`.
pub fn compile(role: ThreadRole, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { role, source };
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut unconditional = BTreeSet::new();
    for allow in role.rules() {
        match allow.only {
            Only::Any => {
                unconditional.insert(allow.nr);
                map.entry(allow.nr).or_default();
            }
            Only::Arg(arg, values) => {
                let rules = map.entry(allow.nr).or_default();
                for &(value, _) in values {
                    let condition = SeccompCondition::new(
                        arg,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Eq,
                        value,
                    )
                    .map_err(build)?;
                    rules.push(SeccompRule::new(vec![condition]).map_err(build)?);
                }
            }
        }
    }
    // An empty rule list allows the syscall whatever its arguments.
    for nr in unconditional {
        map.insert(nr, Vec::new());
    }
    let filter =
        SeccompFilter::new(map, mismatch, SeccompAction::Allow, target_arch()).map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

#[cfg(target_arch = "x86_64")]
fn target_arch() -> TargetArch {
    TargetArch::x86_64
}

#[cfg(target_arch = "aarch64")]
fn target_arch() -> TargetArch {
    TargetArch::aarch64
}

/// Sets up seccomp for the process, once, before any thread is filtered: compiles every
/// role's filter and, under [`SeccompMode::Enforce`], installs the SIGSYS handler that
/// reports a refused syscall. `selftest` is a test hook (`--seccomp-selftest`): that
/// role's thread makes [`FORBIDDEN_SYSCALL`] right after its filter is on.
pub fn init(mode: SeccompMode, selftest: Option<ThreadRole>) -> Result<(), SeccompError> {
    let mismatch = match mode {
        SeccompMode::Enforce => Some(SeccompAction::Trap),
        SeccompMode::Log => Some(SeccompAction::Log),
        SeccompMode::Off => None,
    };
    let mut filters = BTreeMap::new();
    if let Some(mismatch) = mismatch {
        for role in ThreadRole::ALL {
            filters.insert(role, compile(role, mismatch.clone())?);
        }
    }
    if mode == SeccompMode::Enforce {
        install_sigsys_handler()?;
    }
    SETUP
        .set(Setup {
            mode,
            selftest,
            filters,
        })
        .map_err(|_| SeccompError::AlreadyInitialized)
}

/// The mode [`init`] set, if it was called.
pub fn mode() -> Option<SeccompMode> {
    SETUP.get().map(|s| s.mode)
}

/// Filters the calling thread as `role`. Does nothing under `--seccomp false`, or when
/// [`init`] was never called (the library's tests).
pub fn apply_to_current_thread(role: ThreadRole) -> Result<(), SeccompError> {
    let Some(setup) = SETUP.get() else {
        return Ok(());
    };
    let Some(filter) = setup.filters.get(&role) else {
        return Ok(());
    };
    ROLE.with(|r| r.set(Some(role)));
    seccompiler::apply_filter(filter).map_err(|source| SeccompError::Apply { role, source })?;
    tracing::debug!("seccomp: the {role} thread is filtered ({:?})", setup.mode);
    if setup.selftest == Some(role) {
        selftest(role, setup.mode);
    }
    Ok(())
}

/// `--seccomp-selftest ROLE`: makes the syscall no filter allows. Under `true` the
/// process dies here (SIGSYS); under `log` the kernel logs it and this says so.
fn selftest(role: ThreadRole, mode: SeccompMode) {
    eprintln!(
        "tessera: seccomp self-test: the {role} thread makes syscall {FORBIDDEN_SYSCALL}, \
         which its filter does not allow"
    );
    // SAFETY: getppid takes no arguments and changes nothing.
    #[allow(unsafe_code)]
    unsafe {
        libc::syscall(FORBIDDEN_SYSCALL)
    };
    eprintln!(
        "tessera: seccomp self-test: the {role} thread survived syscall {FORBIDDEN_SYSCALL} \
         (--seccomp {})",
        match mode {
            SeccompMode::Enforce => "true",
            SeccompMode::Log => "log",
            SeccompMode::Off => "false",
        }
    );
}

/// `siginfo_t` as the kernel fills it for SIGSYS (`_sigsys` in the union), x86_64 and
/// aarch64 layout.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// `si_code` of a SIGSYS a seccomp filter raised.
const SYS_SECCOMP: libc::c_int = 1;

#[allow(unsafe_code)]
fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is valid (no flags, empty mask); we then set the handler
    // and SA_SIGINFO, and sigaction only reads it.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        if libc::sigemptyset(&mut action.sa_mask) != 0
            || libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0
        {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Reports the refused syscall on stderr, then makes the process die of SIGSYS: it makes
/// [`FORBIDDEN_SYSCALL`] while SIGSYS is blocked (as it is inside its own handler), and
/// the kernel, finding the signal blocked, resets it to its default action (core dump)
/// and delivers it. Only async-signal-safe work: a stack buffer, `write`, the syscall.
#[allow(unsafe_code)]
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; for SIGSYS its
    // union is `_sigsys`, which SigsysInfo lays out.
    let (code, nr) = unsafe {
        let info = &*(info as *const SigsysInfo);
        (info.code, info.syscall)
    };
    if code != SYS_SECCOMP {
        // Someone sent SIGSYS by hand: not ours to report.
        return;
    }
    let role = ROLE
        .try_with(|r| r.get())
        .ok()
        .flatten()
        .map_or("unknown", ThreadRole::name);
    let mut buf = [0u8; 256];
    let mut len = 0;
    for part in [
        "tessera: seccomp: the ".as_bytes(),
        role.as_bytes(),
        b" thread made syscall ",
        decimal(nr, &mut [0u8; 12]),
        b", which its filter does not allow (see /usr/include/x86_64-linux-gnu/asm/unistd_64.h); \
          killing the process\n",
    ] {
        for &b in part {
            if let Some(slot) = buf.get_mut(len) {
                *slot = b;
                len += 1;
            }
        }
    }
    // SAFETY: write and syscall are async-signal-safe; buf outlives the call.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::syscall(FORBIDDEN_SYSCALL);
    }
}

/// `n` in decimal, into `out`, without allocating (for the signal handler).
fn decimal(n: libc::c_int, out: &mut [u8; 12]) -> &[u8] {
    let negative = n < 0;
    let mut v = i64::from(n).unsigned_abs();
    let mut i = out.len();
    loop {
        i -= 1;
        if let Some(slot) = out.get_mut(i) {
            *slot = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || i == 1 {
            break;
        }
    }
    if negative {
        i -= 1;
        if let Some(slot) = out.get_mut(i) {
            *slot = b'-';
        }
    }
    out.get(i..).unwrap_or_default()
}

#[cfg(test)]
mod tests;
