//! Guest RAM: refused before anything is mapped when the host cannot give it, mapped per
//! laid-out range otherwise, and registered with KVM one slot per range.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use std::path::Path;

use tessera_api::config::{MemoryZoneConfig, VmConfig};
use tessera_arch::layout::lay_out;
use tessera_vmm::memory::{allocate, check_host_at, register};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

const MIB: u64 = 1 << 20;

fn zone(id: &str, size: u64) -> MemoryZoneConfig {
    MemoryZoneConfig {
        id: id.into(),
        size,
        shared: false,
        hugepages: false,
        hugepage_size: None,
        host_numa_node: None,
        prefault: false,
        ..MemoryZoneConfig::default()
    }
}

fn config(zones: Vec<MemoryZoneConfig>) -> VmConfig {
    let mut c: VmConfig = serde_json::from_str(r#"{"payload": {"kernel": "/k"}}"#).unwrap();
    c.memory.size = 0;
    c.memory.zones = zones;
    c
}

/// A fake /proc/meminfo and /sys tree.
fn host(available_mib: u64, nodes: &[u32], free_2m_pages: u64) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let p = root.path();
    std::fs::create_dir_all(p.join("proc")).unwrap();
    std::fs::write(
        p.join("proc/meminfo"),
        format!(
            "MemTotal: 99999999 kB\nMemAvailable: {} kB\nHugepagesize: 2048 kB\n",
            available_mib * 1024
        ),
    )
    .unwrap();
    for n in nodes {
        std::fs::create_dir_all(p.join(format!("sys/devices/system/node/node{n}"))).unwrap();
    }
    let hp = p.join("sys/kernel/mm/hugepages/hugepages-2048kB");
    std::fs::create_dir_all(&hp).unwrap();
    std::fs::write(hp.join("free_hugepages"), format!("{free_2m_pages}\n")).unwrap();
    root
}

fn check(c: &VmConfig, root: &Path) -> Result<(), tessera_vmm::memory::MemoryError> {
    let sizes: Vec<u64> = c.memory.zones.iter().map(|z| z.size).collect();
    check_host_at(c, &lay_out(&sizes, 1, 40).unwrap(), root)
}

#[test]
fn more_memory_than_the_host_has_is_refused_naming_the_zone() {
    let h = host(1024, &[0], 0);
    let c = config(vec![zone("m0", 512 * MIB), zone("m1", 768 * MIB)]);
    let e = check(&c, h.path()).unwrap_err();
    assert_eq!(e.field(), "memory.zones[1]");
    assert!(
        e.to_string()
            .contains("needs 1280 MiB but the host has 1024 MiB available"),
        "{e}"
    );
    check(&config(vec![zone("m0", 512 * MIB)]), h.path()).unwrap();
}

#[test]
fn a_missing_host_numa_node_is_refused() {
    let h = host(4096, &[0], 0);
    let mut c = config(vec![zone("m0", 64 * MIB)]);
    c.memory.zones[0].host_numa_node = Some(3);
    let e = check(&c, h.path()).unwrap_err();
    assert_eq!(e.field(), "memory.zones[0].host_numa_node");
    assert!(e.to_string().contains("no NUMA node 3"), "{e}");
}

#[test]
fn hugepages_must_be_free_and_divide_the_zone() {
    let h = host(4096, &[0], 16);
    let mut c = config(vec![zone("m0", 64 * MIB)]);
    c.memory.zones[0].hugepages = true;
    let e = check(&c, h.path()).unwrap_err();
    assert_eq!(e.field(), "memory.zones[0].hugepages");
    assert!(
        e.to_string()
            .contains("needs 32 free 2048 KiB hugepages, the host has 16"),
        "{e}"
    );
    c.memory.zones[0].size = 32 * MIB;
    check(&c, h.path()).unwrap();
    c.memory.zones[0].size = 33 * MIB;
    assert_eq!(
        check(&c, h.path()).unwrap_err().field(),
        "memory.zones[0].size"
    );
}

#[test]
fn ram_is_mapped_per_range_and_registered_with_kvm() {
    // Two zones, the second crossing the 3 GiB gap: three ranges, three slots.
    let c = config(vec![zone("m0", 2048 * MIB), zone("m1", 2048 * MIB)]);
    let layout = lay_out(&[2048 * MIB, 2048 * MIB], 1, 40).unwrap();
    let mem = allocate(&c, &layout).unwrap();
    let ranges: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
    assert_eq!(
        ranges,
        vec![
            (0, 2048 * MIB),
            (2048 * MIB, 1024 * MIB),
            (4096 * MIB, 1024 * MIB)
        ]
    );
    // Host addresses are 2 MiB aligned like the guest's, so huge pages can back them.
    for r in mem.iter() {
        let host = r.get_host_address(MemoryRegionAddress(0)).unwrap() as usize;
        assert_eq!(host % (2 << 20), 0, "region at {:#x}", r.start_addr().0);
    }
    mem.write_obj(0xfeed_u32, GuestAddress(4096 * MIB + 8))
        .unwrap();
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(4096 * MIB + 8)).unwrap(),
        0xfeed
    );

    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm is needed for this test");
    let vm = kvm.create_vm().unwrap();
    register(&vm, &mem).unwrap();
}

/// The `VmFlags` of the mapping holding `addr` in this process, from /proc/self/smaps:
/// the kernel's own record of how it backs the memory.
fn vm_flags(addr: usize) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let holds = |l: &str| {
        let range = l.split_whitespace().next().unwrap_or_default();
        let Some((a, b)) = range.split_once('-') else {
            return false;
        };
        match (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
            (Ok(a), Ok(b)) => (a..b).contains(&addr),
            _ => false,
        }
    };
    let mut lines = smaps.lines().skip_while(|l| !holds(l));
    assert!(lines.next().is_some(), "no mapping holds {addr:#x}");
    lines
        .find_map(|l| l.strip_prefix("VmFlags:"))
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// The `Rss:` in KiB of the mapping holding `addr` in this process, from /proc/self/smaps.
fn rss_kib(addr: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut lines = smaps.lines().skip_while(|l| {
        let range = l.split_whitespace().next().unwrap_or_default();
        !range.split_once('-').is_some_and(|(a, b)| {
            matches!((usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)),
                (Ok(a), Ok(b)) if (a..b).contains(&addr))
        })
    });
    assert!(lines.next().is_some(), "no mapping holds {addr:#x}");
    lines
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn guest_ram_is_faulted_in_whole_before_a_dma_map() {
    let c = config(vec![zone("m0", 64 * MIB)]);
    let layout = lay_out(&[64 * MIB], 1, 40).unwrap();
    let mem = allocate(&c, &layout).unwrap();
    let host = mem
        .iter()
        .next()
        .unwrap()
        .get_host_address(MemoryRegionAddress(0))
        .unwrap() as usize;
    assert!(rss_kib(host) < 64 * 1024, "not faulted in before");
    let threads = tessera_vmm::memory::populate_all(&mem).unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(threads, cpus.min(16), "one thread per CPU for 64 MiB");
    assert_eq!(rss_kib(host), 64 * 1024, "every page resident after");
    // And the contents are the guest's zeroed RAM, writable.
    mem.write_obj(7_u64, GuestAddress(64 * MIB - 8)).unwrap();
    assert_eq!(mem.read_obj::<u64>(GuestAddress(64 * MIB - 8)).unwrap(), 7);
}

/// The flags of each mapping of `c`'s RAM (one zone of 64 MiB, or `memory.size`).
fn flags_of(c: &VmConfig) -> Vec<Vec<String>> {
    let layout = lay_out(&[64 * MIB], 1, 40).unwrap();
    let mem = allocate(c, &layout).unwrap();
    mem.iter()
        .map(|r| vm_flags(r.get_host_address(MemoryRegionAddress(0)).unwrap() as usize))
        .collect()
}

#[test]
fn thp_mergeable_and_reserve_reach_the_kernel() {
    let has = |flags: &[Vec<String>], f: &str| flags.iter().all(|v| v.iter().any(|x| x == f));
    let none = |flags: &[Vec<String>], f: &str| flags.iter().all(|v| v.iter().all(|x| x != f));

    // CH's defaults: THP asked for (MADV_HUGEPAGE: "hg"), no KSM, no swap reservation
    // (MAP_NORESERVE: "nr").
    let mut c = config(vec![zone("m0", 64 * MIB)]);
    let flags = flags_of(&c);
    assert!(none(&flags, "nh") && has(&flags, "hg"), "{flags:?}");
    assert!(none(&flags, "mg"), "{flags:?}");
    assert!(has(&flags, "nr"), "{flags:?}");

    c.memory.thp = false;
    c.memory.zones[0].mergeable = true;
    c.memory.zones[0].reserve = true;
    let flags = flags_of(&c);
    assert!(
        has(&flags, "nh"),
        "thp: false is MADV_NOHUGEPAGE: {flags:?}"
    );
    assert!(has(&flags, "mg"), "mergeable is MADV_MERGEABLE: {flags:?}");
    assert!(none(&flags, "nr"), "reserve drops MAP_NORESERVE: {flags:?}");

    // Without zones the same options come from `memory` itself.
    let mut c: VmConfig = serde_json::from_str(
        r#"{"payload": {"kernel": "/k"},
            "memory": {"size": 67108864, "mergeable": true, "reserve": true, "thp": false}}"#,
    )
    .unwrap();
    let flags = flags_of(&c);
    assert!(
        has(&flags, "nh") && has(&flags, "mg") && none(&flags, "nr"),
        "{flags:?}"
    );
    // With zones, a zone's own `mergeable` and `reserve` count, as in CH.
    c.memory.size = 0;
    c.memory.zones = vec![zone("m0", 64 * MIB)];
    let flags = flags_of(&c);
    assert!(
        none(&flags, "mg") && has(&flags, "nr") && has(&flags, "nh"),
        "{flags:?}"
    );
}
