//! `tessera`: runs one VM from command-line options in Cloud Hypervisor's style or from
//! a JSON configuration file, or prints the firmware tables a configuration gives.
//!
//! Exit status: 0 when the guest powers off or the VMM is stopped by SIGTERM/SIGINT,
//! 1 when the configuration or the host refuses the VM (the message names the field or
//! option), 2 for a usage error (clap's: an unknown flag, or a Cloud Hypervisor flag
//! for a feature Tessera lacks).

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use tessera_api::config::VmConfig;
use tessera_api::server::VmAction;
use tessera_vmm::cli::{ApiSocket, Args};
use tessera_vmm::control::{Control, LoopExit};
use tessera_vmm::managed::{CleanupSummary, Host, Managed, StateDir};
use tessera_vmm::seccomp::{self, ThreadRole};

/// The VM to run without an API socket: one is needed.
fn required_config(args: &Args) -> Result<VmConfig> {
    args.vm_config()?.context(
        "payload.kernel: a kernel is required: give --kernel (or --config FILE), \
         or --api-socket to wait for vm.create",
    )
}

fn dump_acpi(config: &VmConfig, dir: &std::path::Path) -> Result<()> {
    let topology =
        tessera_vmm::guest_topology::guest_topology(config, tessera_arch::vcpu::host_phys_bits())?;
    let tables = topology.acpi_tables()?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--dump-acpi: cannot create {}", dir.display()))?;
    for t in tables.iter() {
        let path = dir.join(format!("{}.dat", t.signature));
        std::fs::write(&path, &t.bytes)
            .with_context(|| format!("--dump-acpi: writing {}", path.display()))?;
        println!(
            "{} {:#x} {} bytes -> {}",
            t.signature,
            t.address,
            t.bytes.len(),
            path.display()
        );
    }
    Ok(())
}

/// The host's managed-device side, with `--state-dir`.
fn managed(args: &Args) -> Managed {
    let root = args.host_root.clone().unwrap_or_else(|| "/".into());
    Managed::new(Host::real(root), StateDir::new(&args.state_dir))
}

/// Undoes what dead tessera processes left on the host: at every start, and for
/// `--cleanup`. A live tessera's changes are never touched.
fn cleanup(managed: &Managed) -> Result<CleanupSummary> {
    let summary = managed.cleanup().with_context(|| {
        format!(
            "--state-dir {}: cleaning up after dead tessera processes",
            managed.state().path().display()
        )
    })?;
    if !summary.undone.is_empty() || !summary.failed.is_empty() {
        tracing::warn!("cleanup: {summary}");
    }
    Ok(summary)
}

fn run(args: &Args) -> Result<()> {
    if args.cleanup {
        let summary = cleanup(&managed(args))?;
        println!("tessera --cleanup: {summary}");
        return Ok(());
    }
    args.check()?;
    if let Some(dir) = &args.dump_acpi {
        if args.api_socket.is_none() {
            return dump_acpi(&required_config(args)?, dir);
        }
    }
    // Before this tessera changes anything: what a crashed one left is undone first. A
    // state directory that cannot be read does not stop a VM that changes nothing.
    let managed = managed(args);
    if let Err(e) = cleanup(&managed) {
        tracing::warn!("{e:#}");
    }
    if let Some(socket) = &args.api_socket {
        return run_api(args, &ApiSocket::parse(socket)?, managed);
    }
    let config = required_config(args)?;
    seccomp::init(args.seccomp, args.seccomp_selftest)?;
    // The same control loop as under the API, ending with the guest.
    let kvm = kvm_ioctls::Kvm::new().context("cannot open /dev/kvm")?;
    let stop_rx = signal_pipe()?;
    let wake = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?;
    // No API: nothing is ever sent, but the sender must live for the loop to keep going.
    let (_no_api, no_requests) = std::sync::mpsc::channel();
    let mut control = Control::new(kvm, Some(config))?.managed(managed);
    if !args.no_shutdown {
        control = control.exit_on_poweroff();
    }
    // From here on the main thread is the control loop; the vCPU and serial-input
    // threads it starts inherit its filter and add their own.
    seccomp::apply_to_current_thread(ThreadRole::Control)?;
    if let Err(e) = control.handle(VmAction::Boot) {
        anyhow::bail!("{}", e.error);
    }
    if control.run(&no_requests, &wake, &stop_rx)? == LoopExit::Signal {
        eprintln!("tessera: stopped by signal, guest shut down");
    }
    Ok(())
}

/// A socket that becomes readable when SIGTERM or SIGINT arrives.
fn signal_pipe() -> Result<UnixStream> {
    let (stop_rx, stop_tx) = UnixStream::pair().context("creating the signal pipe")?;
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::low_level::pipe::register(signal, stop_tx.try_clone()?)
            .context("registering signal handlers")?;
    }
    stop_rx.set_nonblocking(true)?;
    Ok(stop_rx)
}

/// Serves the API on `socket` while the control loop runs the VM; removes the socket on
/// every way out.
fn run_api(args: &Args, socket: &ApiSocket, managed: Managed) -> Result<()> {
    use std::os::fd::FromRawFd;
    let (listener, path) = match socket {
        &ApiSocket::Fd(fd) => {
            // Taking ownership of a descriptor that is not ours would be undefined
            // behaviour: check it is open and is a socket first.
            use std::os::unix::fs::FileTypeExt;
            let meta = std::fs::metadata(format!("/proc/self/fd/{fd}"))
                .with_context(|| format!("--api-socket fd={fd}: no such open descriptor"))?;
            if !meta.file_type().is_socket() {
                anyhow::bail!("--api-socket fd={fd}: the descriptor is not a socket");
            }
            // SAFETY: the caller handed us this listening socket's descriptor to own.
            #[allow(unsafe_code)]
            let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
            (listener, None)
        }
        ApiSocket::Path(path) => (tessera_api::server::bind(path)?, Some(path.clone())),
    };
    // Remove the socket file however this function returns.
    struct RemoveOnDrop(Option<PathBuf>);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            if let Some(p) = &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let _cleanup = RemoveOnDrop(path);

    let initial = args.vm_config()?;
    seccomp::init(args.seccomp, args.seccomp_selftest)?;
    let kvm = kvm_ioctls::Kvm::new().context("cannot open /dev/kvm")?;
    let stop_rx = signal_pipe()?;
    let wake = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?;
    let wake_api = wake.try_clone()?;
    let (to_vmm, from_api) = std::sync::mpsc::channel();
    let shutdown = std::sync::Arc::new(tokio::sync::Notify::new());
    let shutdown_api = shutdown.clone();
    // Made before the server starts, so that its first requests find a snapshot.
    let mut control = Control::new(kvm, initial.clone())?
        .eject_timeout(std::time::Duration::from_secs(args.eject_timeout))
        .managed(managed);
    let published = control.published();
    let server = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || -> Result<()> {
            seccomp::apply_to_current_thread(ThreadRole::Api)?;
            // One thread for every connection. The server answers vmm.ping, vm.info and
            // vm.acpi itself, from the control loop's snapshot, and hands only the rest
            // to the loop, so it has little work per request: on a pool of workers,
            // waking one another and passing tasks between them cost more than the work,
            // and took CPU time from the vCPUs and the clients.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // A blocking-pool thread (none today) inherits this thread's filter;
                // it adds its own so that it, too, reports as the API's.
                .on_thread_start(|| {
                    if let Err(e) = seccomp::apply_to_current_thread(ThreadRole::Api) {
                        tracing::error!("{e}");
                    }
                })
                .build()?;
            runtime.block_on(async move {
                let (tx, mut rx) = tokio::sync::mpsc::channel(64);
                // Requests go to the control loop's std channel; the eventfd wakes it.
                tokio::spawn(async move {
                    while let Some(request) = rx.recv().await {
                        if to_vmm.send(request).is_err() {
                            break;
                        }
                        let _ = wake_api.write(1);
                    }
                });
                tessera_api::server::serve(listener, tx, published, async move {
                    shutdown_api.notified().await
                })
                .await
            })?;
            Ok(())
        })?;

    // From here on the main thread is the control loop (see run()).
    seccomp::apply_to_current_thread(ThreadRole::Control)?;
    if initial.is_some() {
        if let Err(e) = control.handle(VmAction::Boot) {
            shutdown.notify_one();
            let _ = server.join();
            anyhow::bail!("{}", e.error);
        }
    }
    let exit = control.run(&from_api, &wake, &stop_rx);
    // Requests still queued, or sent from now on, are answered 503 at once instead of
    // waiting out the server's grace period for an answer that cannot come.
    drop(from_api);
    shutdown.notify_one();
    match server.join() {
        Ok(result) => result?,
        Err(_) => anyhow::bail!("the API thread panicked"),
    }
    let exit = exit?;
    tracing::info!("VMM exiting: {exit:?}");
    Ok(())
}

/// Logs go to stderr, or to `--log-file` (created or truncated, as CH does); the level
/// is `-v`'s, else `TESSERA_LOG`'s (`LEVEL` or `TARGET=LEVEL,...`), else warnings.
/// `Targets` rather than `EnvFilter`: the same directives without span and regex
/// filters, and without the regex engine, which was a tenth of the binary's code.
fn init_logging(args: &Args) -> Result<()> {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let directives = match args.log_level() {
        Some(level) => level.to_string(),
        None => std::env::var("TESSERA_LOG").unwrap_or_else(|_| "warn".to_string()),
    };
    // The parse error's text repeats its source's: keep only the first.
    let filter: Targets = directives.parse().map_err(|e| {
        anyhow::anyhow!(
            "TESSERA_LOG={directives:?} is not a log filter ({e}); e.g. `info`, or `tessera_vmm=debug,warn`"
        )
    })?;
    let writer = match &args.log_file {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("--log-file: cannot create {}", path.display()))?;
            BoxMakeWriter::new(std::sync::Mutex::new(file))
        }
        None => BoxMakeWriter::new(std::io::stderr),
    };
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(writer))
        .with(filter)
        .init();
    Ok(())
}

/// The command line, with QEMU's `-uuid` read as `--uuid`: NVIDIA's vGPU manager finds
/// the VM's UUID in the VMM's command line by QEMU's spelling, so that is the one to type.
fn args() -> Args {
    Args::parse_from(std::env::args_os().map(|a| {
        if a == "-uuid" {
            std::ffi::OsString::from("--uuid")
        } else {
            a
        }
    }))
}

fn main() -> ExitCode {
    let args = args();
    match init_logging(&args).and_then(|()| run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors about the configuration already start with the field they are about.
            eprintln!("tessera: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
