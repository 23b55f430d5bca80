//! `tessera`: runs one VM from command-line options in Cloud Hypervisor's style or from
//! a JSON configuration file, or prints the firmware tables a configuration gives.
//!
//! Exit status: 0 when the guest powers off or the VMM is stopped by SIGTERM/SIGINT,
//! 1 when the configuration or the host refuses the VM (the message names the field).

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use tessera_api::config::VmConfig;
use tessera_api::server::VmAction;
use tessera_vmm::cli::VmArgs;
use tessera_vmm::control::{Control, LoopExit};

/// Runs one VM that gives its guest the true topology of its devices.
#[derive(Parser, Debug)]
#[command(name = "tessera", version)]
struct Args {
    /// A JSON VM configuration (Cloud Hypervisor's VmConfig shape) instead of the options below.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kernel", "cpus", "memory", "memory_zone", "numa", "device", "generic_initiator", "platform", "serial"])]
    config: Option<PathBuf>,
    /// Write the ACPI tables the configuration gives into DIR (one SIG.dat each) and exit.
    #[arg(long, value_name = "DIR")]
    dump_acpi: Option<PathBuf>,
    /// Serve the HTTP API on this Unix socket (PATH, or fd=N for an inherited listener).
    /// With VM options too, the VM is created and booted at once; without, it waits for
    /// vm.create and vm.boot.
    #[arg(long, value_name = "PATH|fd=N")]
    api_socket: Option<String>,
    /// bzImage or ELF vmlinux (PVH).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs image.
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// boot=N[,max=N]
    #[arg(long)]
    cpus: Option<String>,
    /// size=SIZE[,shared=on,hugepages=on,hugepage_size=SIZE,prefault=on]
    #[arg(long)]
    memory: Option<String>,
    /// id=ID,size=SIZE[,host_numa_node=N,shared=on,hugepages=on,hugepage_size=SIZE,prefault=on] (repeatable)
    #[arg(long)]
    memory_zone: Vec<String>,
    /// guest_numa_id=N[,cpus=[..],memory_zones=[..],distances=[N@D,..],pci_segments=[..],device_id=ID] (repeatable)
    #[arg(long)]
    numa: Vec<String>,
    /// device=ID,node=N | device=ID,nodes=2-9: Generic Initiator links (repeatable)
    #[arg(long)]
    generic_initiator: Vec<String>,
    /// path=/sys/bus/pci/devices/BDF[,id=ID,pci_segment=N,pci_device_id=N] (repeatable)
    #[arg(long)]
    device: Vec<String>,
    /// num_pci_segments=N
    #[arg(long)]
    platform: Option<String>,
    /// off | null | tty | pty | file=PATH
    #[arg(long)]
    serial: Option<String>,
}

/// Whether any option describing a VM was given.
fn has_vm_options(args: &Args) -> bool {
    args.config.is_some() || args.kernel.is_some()
}

fn config_from(args: &Args) -> Result<VmConfig> {
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--config: cannot read {}", path.display()))?;
        return serde_json::from_str(&text).with_context(|| {
            format!(
                "--config: {} is not a valid VM configuration",
                path.display()
            )
        });
    }
    let vm = VmArgs {
        kernel: args.kernel.clone(),
        initramfs: args.initramfs.clone(),
        cmdline: args.cmdline.clone(),
        cpus: args.cpus.clone(),
        memory: args.memory.clone(),
        memory_zones: args.memory_zone.clone(),
        numa: args.numa.clone(),
        generic_initiators: args.generic_initiator.clone(),
        devices: args.device.clone(),
        platform: args.platform.clone(),
        serial: args.serial.clone(),
    };
    Ok(vm.to_config()?)
}

fn dump_acpi(config: &VmConfig, dir: &std::path::Path) -> Result<()> {
    let topology =
        tessera_vmm::guest_topology::guest_topology(config, tessera_arch::vcpu::host_phys_bits())?;
    let tables = tessera_acpi::build(
        &topology.acpi,
        tessera_acpi::Placement {
            rsdp_address: tessera_arch::layout::RSDP_START,
            tables_address: tessera_arch::layout::RSDP_START + 0x40,
        },
    )?;
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

fn run(args: &Args) -> Result<()> {
    if let Some(socket) = &args.api_socket {
        return run_api(args, socket);
    }
    let config = config_from(args)?;
    if let Some(dir) = &args.dump_acpi {
        return dump_acpi(&config, dir);
    }
    // The same control loop as under the API, ending with the guest.
    let kvm = kvm_ioctls::Kvm::new().context("cannot open /dev/kvm")?;
    let stop_rx = signal_pipe()?;
    let wake = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?;
    // No API: nothing is ever sent, but the sender must live for the loop to keep going.
    let (_no_api, no_requests) = std::sync::mpsc::channel();
    let mut control = Control::new(kvm, Some(config))?.exit_on_poweroff();
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
fn run_api(args: &Args, socket: &str) -> Result<()> {
    use std::os::fd::FromRawFd;
    let (listener, path) = match socket.strip_prefix("fd=") {
        Some(fd) => {
            let fd: i32 = fd.parse().context("--api-socket fd=N: N is not a number")?;
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
        None => {
            let path = PathBuf::from(socket);
            (tessera_api::server::bind(&path)?, Some(path))
        }
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

    let initial = if has_vm_options(args) {
        Some(config_from(args)?)
    } else {
        None
    };
    let kvm = kvm_ioctls::Kvm::new().context("cannot open /dev/kvm")?;
    let stop_rx = signal_pipe()?;
    let wake = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?;
    let wake_api = wake.try_clone()?;
    let (to_vmm, from_api) = std::sync::mpsc::channel();
    let shutdown = std::sync::Arc::new(tokio::sync::Notify::new());
    let shutdown_api = shutdown.clone();
    // Made before the server starts, so that its first requests find a snapshot.
    let mut control = Control::new(kvm, initial.clone())?;
    let published = control.published();
    let server = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || -> Result<()> {
            // One thread for every connection. The server answers vmm.ping, vm.info and
            // vm.acpi itself, from the control loop's snapshot, and hands only the rest
            // to the loop, so it has little work per request: on a pool of workers,
            // waking one another and passing tasks between them cost more than the work,
            // and took CPU time from the vCPUs and the clients.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors about the configuration already start with the field they are about.
            eprintln!("tessera: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
