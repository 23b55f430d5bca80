//! Cloud Hypervisor's own documentation, run through `tessera`'s command line: every
//! `cloud-hypervisor` command line and option example of CH's README.md and docs/ (at
//! ae44c2971, v54) that uses only the flags Tessera has (`--kernel`, `--initramfs`,
//! `--cmdline`, `--cpus`, `--memory`, `--memory-zone`, `--numa`, `--device`,
//! `--platform`, `--serial`, `--console`, `--api-socket`), exactly as the page writes it.
//! Each either gives the configuration the page says it means, in a VM Tessera accepts,
//! or is refused with the name of what Tessera lacks (the outcome is part of the table,
//! so a change either way fails here).
//!
//! A full command line has its program (`./target/debug/cloud-hypervisor`) replaced by
//! `tessera`; an option fragment (CH's docs show most options alone) runs after
//! `tessera --kernel /k`, since CH too needs a payload. Nothing runs a guest: paths are
//! not opened.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use clap::Parser;
use tessera_api::config::{ConsoleMode, NumaDistance, VmConfig};
use tessera_vmm::cli::{ApiSocket, Args};
use tessera_vmm::guest_topology::guest_topology;

const GIB: u64 = 1 << 30;

/// What a documented example does in Tessera.
enum Outcome {
    /// Parses into a VM Tessera accepts (or, with no VM options, into the API socket
    /// alone); the function checks the configuration is what the page says.
    Runs(fn(&Args, Option<&VmConfig>)),
    /// Parses into what the page says (checked), but Tessera refuses the VM: the error
    /// contains the text (a rule CH does not have, or an example CH also refuses).
    Refused(&'static str, fn(&VmConfig)),
    /// Uses a key Tessera lacks: parsing fails with the text.
    Lacks(&'static str),
}

struct Example {
    /// The page and line, in CH's tree.
    doc: &'static str,
    text: &'static str,
    outcome: Outcome,
}

use Outcome::{Lacks, Refused, Runs};

/// Splits a shell command line: whitespace, `"..."` and `'...'` quoting, `\` line
/// continuations. (What CH's examples use; no expansions.)
fn shell_words(text: &str) -> Vec<String> {
    let text = text.replace("\\\n", " ");
    let (mut words, mut word, mut quote, mut in_word) = (Vec::new(), String::new(), None, false);
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `tessera`'s argv for an example.
fn argv(text: &str) -> Vec<String> {
    let words = shell_words(text);
    let mut argv = vec!["tessera".to_string()];
    match words.iter().position(|w| w.ends_with("cloud-hypervisor")) {
        Some(program) => argv.extend(words[program + 1..].iter().cloned()),
        None => {
            argv.extend(["--kernel".into(), "/k".into()]);
            argv.extend(words);
        }
    }
    argv
}

fn api_socket_is(a: &Args, c: Option<&VmConfig>, path: &str) {
    assert!(c.is_none(), "no VM: the API waits for vm.create");
    let socket = ApiSocket::parse(a.api_socket.as_deref().unwrap()).unwrap();
    assert_eq!(socket, ApiSocket::Path(path.into()));
}

/// The live-migration source VM of docs/live_migration.md.
fn migration_source(a: &Args, c: Option<&VmConfig>, socket: &str) {
    let c = c.unwrap();
    assert_eq!(c.serial.mode, ConsoleMode::Tty);
    assert_eq!(c.console.mode, ConsoleMode::Off);
    assert_eq!((c.cpus.boot_vcpus, c.cpus.max_vcpus), (2, 2));
    assert_eq!(c.memory.size, 4 * GIB);
    assert_eq!(c.payload.kernel, Some("/var/images/linux".into()));
    assert_eq!(c.payload.initramfs, Some("/var/images/initrd".into()));
    assert_eq!(c.payload.cmdline.as_deref(), Some("console=ttyS0"));
    let s = ApiSocket::parse(a.api_socket.as_deref().unwrap()).unwrap();
    assert_eq!(s, ApiSocket::Path(socket.into()));
}

fn one_zone(c: &VmConfig) -> &tessera_api::config::MemoryZoneConfig {
    assert_eq!(c.memory.size, 0);
    assert_eq!(c.memory.zones.len(), 1);
    let z = &c.memory.zones[0];
    assert_eq!((z.id.as_str(), z.size), ("mem0", GIB));
    z
}

fn distances(c: &VmConfig) -> Vec<Vec<u8>> {
    // The SLIT the guest gets. The fragments give no memory zones and leave vCPUs out,
    // which Tessera refuses with NUMA nodes (CH does not): a zone per node and every
    // vCPU in node 0 complete them.
    let mut c = c.clone();
    c.memory.size = 0;
    for n in &mut c.numa {
        let id = format!("z{}", n.guest_numa_id);
        c.memory.zones.push(tessera_api::config::MemoryZoneConfig {
            id: id.clone(),
            size: 64 << 20,
            ..Default::default()
        });
        n.memory_zones = vec![id];
        n.cpus.clear();
    }
    c.numa[0].cpus = (0..c.cpus.boot_vcpus).collect();
    guest_topology(&c, 40).unwrap().acpi.distances.unwrap()
}

fn d(destination: u32, distance: u32) -> NumaDistance {
    NumaDistance {
        destination,
        distance,
    }
}

const EXAMPLES: &[Example] = &[
    // Full command lines.
    Example {
        doc: "docs/api.md:58",
        text: "$ ./target/debug/cloud-hypervisor --api-socket path=/tmp/cloud-hypervisor.sock",
        outcome: Runs(|a, c| api_socket_is(a, c, "/tmp/cloud-hypervisor.sock")),
    },
    Example {
        doc: "docs/api.md:118",
        text: "$ ./target/debug/cloud-hypervisor --api-socket /tmp/cloud-hypervisor.sock",
        outcome: Runs(|a, c| api_socket_is(a, c, "/tmp/cloud-hypervisor.sock")),
    },
    Example {
        doc: "docs/live_migration.md:29",
        text: "$ target/release/cloud-hypervisor --api-socket=/tmp/api2",
        outcome: Runs(|a, c| api_socket_is(a, c, "/tmp/api2")),
    },
    Example {
        doc: "docs/live_migration.md:88 (and :160)",
        text: "dst $ cloud-hypervisor --api-socket /tmp/api",
        outcome: Runs(|a, c| api_socket_is(a, c, "/tmp/api")),
    },
    Example {
        doc: "docs/live_migration.md:334",
        text: "dst $ cloud-hypervisor --api-socket /tmp/api-rcv",
        outcome: Runs(|a, c| api_socket_is(a, c, "/tmp/api-rcv")),
    },
    Example {
        doc: "docs/snapshot_restore.md:79 (and :152, :250)",
        text: "./cloud-hypervisor --api-socket /tmp/cloud-hypervisor.sock",
        outcome: Runs(|a, c| api_socket_is(a, c, "/tmp/cloud-hypervisor.sock")),
    },
    Example {
        doc: "docs/live_migration.md:108 (and :174)",
        text: r#"src $ cloud-hypervisor \
        --serial tty --console off \
        --cpus boot=2 --memory size=4G \
        --kernel /var/images/linux \
        --initramfs /var/images/initrd \
        --cmdline "console=ttyS0" \
        --api-socket /tmp/api"#,
        outcome: Runs(|a, c| migration_source(a, c, "/tmp/api")),
    },
    Example {
        doc: "docs/live_migration.md:346",
        text: r#"src $ cloud-hypervisor \
        --serial tty --console off \
        --cpus boot=2 --memory size=4G \
        --kernel /var/images/linux \
        --initramfs /var/images/initrd \
        --cmdline "console=ttyS0" \
        --api-socket /tmp/api-src"#,
        outcome: Runs(|a, c| migration_source(a, c, "/tmp/api-src")),
    },
    // Every README.md example needs virtio-block (and most virtio-net).
    Example {
        doc: "README.md:174",
        text: "$ ./cloud-hypervisor \\\n\t--kernel ./hypervisor-fw \\\n\t--disk path=focal-server-cloudimg-amd64.raw path=/tmp/ubuntu-cloudinit.img \\\n\t--cpus boot=4 \\\n\t--memory size=1024M \\\n\t--net \"tap=,mac=,ip=,mask=\" \\\n\t--serial tty \\\n\t--console off",
        outcome: Lacks("--disk: Tessera has no virtio-block devices yet"),
    },
    // docs/cpu.md
    Example {
        doc: "docs/cpu.md:44",
        text: "--cpus boot=2",
        outcome: Runs(|_, c| {
            let c = c.unwrap();
            assert_eq!((c.cpus.boot_vcpus, c.cpus.max_vcpus), (2, 2));
        }),
    },
    Example {
        doc: "docs/cpu.md:67",
        text: "--cpus max=3",
        outcome: Refused("vCPU hotplug is not supported yet", |c| {
            assert_eq!((c.cpus.boot_vcpus, c.cpus.max_vcpus), (1, 3));
        }),
    },
    Example {
        doc: "docs/cpu.md:101",
        text: "--cpus boot=2,topology=1:1:2:1",
        outcome: Lacks("topology: Tessera gives the guest one thread per core"),
    },
    Example {
        doc: "docs/cpu.md:119",
        text: "--cpus kvm_hyperv=on",
        outcome: Lacks("kvm_hyperv: Tessera has no Hyper-V enlightenments"),
    },
    Example {
        doc: "docs/cpu.md:135",
        text: "--cpus max_phys_bits=40",
        outcome: Runs(|_, c| assert_eq!(c.unwrap().cpus.max_phys_bits, 40)),
    },
    Example {
        doc: "docs/cpu.md:187",
        text: "--cpus boot=3,affinity=[0@[2,3],1@[0,1]]",
        outcome: Runs(|_, c| {
            let a = c.unwrap().cpus.affinity.clone().unwrap();
            assert_eq!((a[1].vcpu, a[1].host_cpus.clone()), (1, vec![0, 1]));
        }),
    },
    Example {
        doc: "docs/cpu.md:210",
        text: "--cpus features=amx",
        outcome: Lacks("features: Tessera does not enable AMX"),
    },
    Example {
        doc: "docs/cpu.md:223",
        text: "--cpus nested=on",
        outcome: Runs(|_, c| assert!(c.unwrap().cpus.nested)),
    },
    Example {
        doc: "docs/cpu.md:250",
        text: "--cpus boot=2,core_scheduling=vm",
        outcome: Runs(|_, c| {
            let c = c.unwrap();
            assert_eq!(c.cpus.boot_vcpus, 2);
            assert_eq!(c.cpus.core_scheduling, tessera_api::config::CoreScheduling::Vm);
        }),
    },
    // docs/memory.md, --memory
    Example {
        doc: "docs/memory.md:44",
        text: "--memory size=1G",
        outcome: Runs(|_, c| assert_eq!(c.unwrap().memory.size, GIB)),
    },
    Example {
        doc: "docs/memory.md:62",
        text: "--memory size=1G,mergeable=on",
        outcome: Runs(|_, c| assert!(c.unwrap().memory.mergeable)),
    },
    Example {
        doc: "docs/memory.md:74",
        text: "--memory size=1G,hotplug_method=acpi",
        outcome: Runs(|_, c| {
            let m = &c.unwrap().memory;
            assert_eq!((m.size, m.hotplug_method), (GIB, tessera_api::config::HotplugMethod::Acpi));
        }),
    },
    Example {
        doc: "docs/memory.md:86",
        text: "--memory size=1G,hotplug_size=1G",
        outcome: Lacks("hotplug_size: Tessera has no memory hotplug"),
    },
    Example {
        doc: "docs/memory.md:107",
        text: "--memory size=1G,hotplug_method=virtio-mem,hotplug_size=1G,hotplugged_size=512M",
        outcome: Lacks("hotplug_method: Tessera has no virtio-mem device"),
    },
    Example {
        doc: "docs/memory.md:128",
        text: "--memory size=1G,shared=on",
        outcome: Runs(|_, c| {
            let m = &c.unwrap().memory;
            assert_eq!((m.size, m.shared), (GIB, true));
        }),
    },
    Example {
        doc: "docs/memory.md:155",
        text: "--memory size=1G,hugepages=on,hugepage_size=2M",
        outcome: Runs(|_, c| {
            let m = &c.unwrap().memory;
            assert_eq!((m.hugepages, m.hugepage_size), (true, Some(2 << 20)));
        }),
    },
    Example {
        doc: "docs/memory.md:180",
        text: "--memory size=1G,prefault=on",
        outcome: Runs(|_, c| assert!(c.unwrap().memory.prefault)),
    },
    Example {
        doc: "docs/memory.md:206",
        text: "--memory size=1G,hugepages=on,reserve=on",
        outcome: Runs(|_, c| {
            let m = &c.unwrap().memory;
            assert!(m.hugepages && m.reserve);
        }),
    },
    Example {
        doc: "docs/memory.md:225",
        text: "--memory size=1G,thp=on",
        outcome: Runs(|_, c| assert!(c.unwrap().memory.thp)),
    },
    // docs/memory.md, --memory-zone
    Example {
        doc: "docs/memory.md:278 (and :293)",
        text: "--memory size=0\n--memory-zone id=mem0,size=1G",
        outcome: Runs(|_, c| {
            one_zone(c.unwrap());
        }),
    },
    Example {
        doc: "docs/memory.md:314",
        text: "--memory size=0\n--memory-zone id=mem0,size=1G,file=/foo/bar",
        outcome: Lacks("file: Tessera backs zones with anonymous memory"),
    },
    Example {
        doc: "docs/memory.md:336",
        text: "--memory size=0\n--memory-zone id=mem0,size=1G,shared=on",
        outcome: Runs(|_, c| assert!(one_zone(c.unwrap()).shared)),
    },
    Example {
        doc: "docs/memory.md:364",
        text: "--memory size=0\n--memory-zone id=mem0,size=1G,hugepages=on,hugepage_size=2M",
        outcome: Runs(|_, c| {
            let z = one_zone(c.unwrap());
            assert_eq!((z.hugepages, z.hugepage_size), (true, Some(2 << 20)));
        }),
    },
    Example {
        doc: "docs/memory.md:391",
        text: "--memory size=0\n--memory-zone id=mem0,size=1G,host_numa_node=0",
        outcome: Runs(|_, c| assert_eq!(one_zone(c.unwrap()).host_numa_node, Some(0))),
    },
    Example {
        doc: "docs/memory.md:406",
        text: "--memory size=0,hotplug_method=virtio-mem\n--memory-zone id=mem0,size=1G,hotplug_size=1G",
        outcome: Lacks("hotplug_method: Tessera has no virtio-mem device"),
    },
    Example {
        doc: "docs/memory.md:428",
        text: "--memory size=0,hotplug_method=virtio-mem\n--memory-zone id=mem0,size=1G,hotplug_size=1G,hotplugged_size=512M",
        outcome: Lacks("hotplug_method: Tessera has no virtio-mem device"),
    },
    Example {
        doc: "docs/memory.md:454",
        text: "--memory size=0\n--memory-zone id=mem0,size=1G,prefault=on",
        outcome: Runs(|_, c| assert!(one_zone(c.unwrap()).prefault)),
    },
    Example {
        doc: "docs/memory.md:482",
        text: "--memory size=0\n--memory-zone id=mem0,size=1G,hugepages=on,reserve=on",
        outcome: Runs(|_, c| {
            let z = one_zone(c.unwrap());
            assert!(z.hugepages && z.reserve);
        }),
    },
    Example {
        doc: "docs/memory.md:496",
        text: "--memory size=2G,mergeable=off\n--memory-zone id=hotplug,size=0,hotplug_size=8G,mergeable=on",
        outcome: Lacks("hotplug_size: Tessera has no memory hotplug"),
    },
    Example {
        doc: "docs/memory.md:510",
        text: "--memory size=0\n--memory-zone id=mem0,size=1G,mergeable=on",
        outcome: Runs(|_, c| assert!(one_zone(c.unwrap()).mergeable)),
    },
    // docs/memory.md, --numa
    Example {
        doc: "docs/memory.md:549",
        text: "--numa guest_numa_id=0,cpus=[0-1],memory_zones=mem0",
        // A fragment: the zone and the second vCPU are not in it.
        outcome: Refused("vCPU 1 does not exist", |c| {
            assert_eq!(c.numa[0].cpus, [0, 1]);
            assert_eq!(c.numa[0].memory_zones, ["mem0"]);
        }),
    },
    Example {
        doc: "docs/memory.md:582",
        text: "--cpus boot=8\n--numa guest_numa_id=0,cpus=[1-3,7] guest_numa_id=1,cpus=[0,4-6]",
        // CH lets RAM outside zones belong to no node; Tessera wants every byte in one.
        outcome: Refused("with NUMA nodes, RAM must come from memory zones", |c| {
            assert_eq!(c.cpus.boot_vcpus, 8);
            assert_eq!(c.numa[0].cpus, [1, 2, 3, 7]);
            assert_eq!(c.numa[1].cpus, [0, 4, 5, 6]);
        }),
    },
    Example {
        doc: "docs/memory.md:622",
        text: "--numa guest_numa_id=0,distances=[1@15,2@25] guest_numa_id=1,distances=[0@15,2@20] guest_numa_id=2,distances=[0@25,1@20]",
        // CH lets vCPUs and RAM be in no node; Tessera wants each in one.
        outcome: Refused("vCPU 0 is in no node", |c| {
            assert_eq!(c.numa[0].distances, [d(1, 15), d(2, 25)]);
            assert_eq!(
                distances(c),
                [vec![10, 15, 25], vec![15, 10, 20], vec![25, 20, 10]]
            );
        }),
    },
    Example {
        doc: "docs/memory.md:625",
        text: "--numa guest_numa_id=0,distances=[1@15,2@25] guest_numa_id=1,distances=[2@20]",
        // "Results in the same topology: 0↔1=15, 0↔2=25, 1↔2=20" (the page): node 2
        // is not declared by this fragment, so it stands in a 3-node VM here.
        outcome: Refused("node 2 does not exist", |c| {
            assert_eq!(c.numa.len(), 2);
            let mut c = c.clone();
            c.numa.push(tessera_api::config::NumaConfig {
                guest_numa_id: 2,
                ..Default::default()
            });
            assert_eq!(
                distances(&c),
                [vec![10, 15, 25], vec![15, 10, 20], vec![25, 20, 10]]
            );
        }),
    },
    Example {
        doc: "docs/memory.md:629",
        text: "--numa guest_numa_id=0,cpus=[0-1],memory_zones=mem0,distances=[1@15]\n--numa guest_numa_id=1,cpus=[2-3],memory_zones=mem1",
        // A fragment: without its --cpus boot=4 and zones.
        outcome: Refused("vCPU 1 does not exist", |c| {
            assert_eq!(c.numa[1].cpus, [2, 3]);
            assert_eq!(distances(c), [vec![10, 15], vec![15, 10]]);
        }),
    },
    Example {
        doc: "docs/memory.md:656",
        text: "--numa guest_numa_id=0,memory_zones=mem0 guest_numa_id=1,memory_zones=mem0",
        // The page's example of what is invalid: one zone in two nodes. (As a fragment
        // it lacks the zone too; with it, the point the page makes.)
        outcome: Refused("no memory zone is called `mem0`", |c| {
            assert_eq!(c.numa[1].memory_zones, ["mem0"]);
            let mut c = c.clone();
            c.memory.size = 0;
            c.memory.zones.push(tessera_api::config::MemoryZoneConfig {
                id: "mem0".into(),
                size: GIB,
                ..Default::default()
            });
            c.numa[0].cpus = vec![0];
            let e = c.validate().unwrap_err();
            assert_eq!(e.to_string(), "numa[1].memory_zones[0]: zone `mem0` is already in numa[0]");
        }),
    },
    Example {
        doc: "docs/memory.md:664",
        text: "--memory size=0\n--memory-zone id=mem0,size=1G id=mem1,size=1G id=mem2,size=1G\n--numa guest_numa_id=0,memory_zones=[mem0,mem2] guest_numa_id=1,memory_zones=mem1",
        // CH leaves a vCPU outside every node; Tessera wants each in one.
        outcome: Refused("vCPU 0 is in no node", |c| {
            assert_eq!(c.memory.zones.len(), 3);
            assert_eq!(c.numa[0].memory_zones, ["mem0", "mem2"]);
            assert_eq!(c.numa[1].memory_zones, ["mem1"]);
        }),
    },
    Example {
        doc: "docs/memory.md:693",
        text: "--cpus boot=4\n--memory size=0\n--memory-zone id=mem0,size=2G id=mem1,size=2G\n\
               --numa guest_numa_id=0,cpus=[0-1],memory_zones=mem0,distances=[1@20,2@25]\n\
               --numa guest_numa_id=1,cpus=[2-3],memory_zones=mem1,distances=[0@20,2@30]\n\
               --numa guest_numa_id=2,device_id=gpu0,distances=[0@25,1@30]\n\
               --device id=gpu0,path=/sys/bus/pci/devices/0000:01:00.0,iommu=on",
        // A vIOMMU.
        outcome: Lacks("--device: iommu: Tessera has no virtio-iommu"),
    },
    Example {
        doc: "docs/memory.md:716",
        text: "--platform num_pci_segments=2\n--memory-zone size=16G,host_numa_node=0,id=mem0\n\
               --memory-zone size=16G,host_numa_node=1,id=mem1\n\
               --numa guest_numa_id=0,memory_zones=mem0,pci_segments=[0]\n\
               --numa guest_numa_id=1,memory_zones=mem1,pci_segments=[1]",
        // A fragment without `--memory size=0`, which zones need (in CH too).
        outcome: Refused("must be 0 when memory zones are given", |c| {
            assert_eq!(c.platform.num_pci_segments, 2);
            assert_eq!(c.memory.zones[1].host_numa_node, Some(1));
            assert_eq!(c.memory.zones[1].size, 16 * GIB);
            assert_eq!(c.numa[1].pci_segments, [1]);
        }),
    },
    // docs/vfio.md
    Example {
        doc: "docs/vfio.md:100",
        text: "--device path=/sys/bus/pci/devices/0000:01:00.0/ path=/sys/bus/pci/devices/0000:02:00.0/",
        outcome: Runs(|_, c| {
            let c = c.unwrap();
            assert_eq!(c.devices.len(), 2);
            assert_eq!(
                c.devices[1].path,
                std::path::PathBuf::from("/sys/bus/pci/devices/0000:02:00.0/")
            );
        }),
    },
    Example {
        doc: "docs/vfio.md:144",
        text: "--device path=/sys/bus/pci/devices/0000:01:00.0/,x_nv_gpudirect_clique=0",
        outcome: Lacks("x_nv_gpudirect_clique: Tessera does not add NVIDIA's GPUDirect clique"),
    },
    Example {
        doc: "docs/vfio.md:170",
        text: "--device path=/sys/bus/pci/devices/0000:01:00.0/,x_exclude_mmap_bars=[2]",
        outcome: Runs(|_, c| assert_eq!(c.unwrap().devices[0].x_exclude_mmap_bars, vec![2])),
    },
    Example {
        doc: "docs/vfio.md:193",
        text: "--platform num_pci_segments=2\n\
               --pci-segment pci_segment=0,mmio32_aperture_weight=2\n\
               --pci-segment pci_segment=1,mmio32_aperture_weight=1",
        outcome: Lacks("--pci-segment: Tessera has no per-segment aperture settings"),
    },
];

/// Runs one example; `Err` says how its outcome differs from the table's.
fn run(e: &Example) -> Result<(), String> {
    let argv = argv(e.text);
    let parsed = Args::try_parse_from(&argv)
        .map_err(|err| err.to_string())
        .and_then(|a| a.check().map(|()| a).map_err(|err| err.to_string()))
        .and_then(|a| {
            let c = a.vm_config().map_err(|err| err.to_string())?;
            Ok((a, c))
        });
    match (&e.outcome, parsed) {
        (Runs(check), Ok((a, c))) => {
            if let Some(c) = &c {
                guest_topology(c, 40).map_err(|err| err.to_string())?;
            }
            check(&a, c.as_ref());
            Ok(())
        }
        (Refused(words, check), Ok((_, Some(c)))) => match guest_topology(&c, 40) {
            Ok(_) => Err("accepted".into()),
            Err(err) if err.to_string().contains(words) => {
                check(&c);
                Ok(())
            }
            Err(err) => Err(err.to_string()),
        },
        (Lacks(words), Err(err)) if err.contains(words) => Ok(()),
        (_, Err(err)) => Err(err),
        (_, Ok(_)) => Err("parsed".into()),
    }
}

#[test]
fn cloud_hypervisors_documented_examples() {
    let failures: Vec<String> = EXAMPLES
        .iter()
        .filter_map(|e| {
            run(e)
                .err()
                .map(|err| format!("{} `{}`: {err}", e.doc, argv(e.text)[1..].join(" ")))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shell_words_as_the_examples_need() {
    assert_eq!(
        shell_words("a \\\n  --cmdline \"console=ttyS0 root=/dev/vda1\" 'b c'"),
        ["a", "--cmdline", "console=ttyS0 root=/dev/vda1", "b c"]
    );
}
