//! The fuzz smoke CI runs: each target for a short fixed-seed run (`FUZZ_SMOKE_CASES`,
//! default 10,000 cases; `scripts/fuzz.sh` runs the long ones), and every finding the
//! fuzzing made, minimized, as a regression test.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use arbitrary::Unstructured;
use tessera_acpi::{build, Placement};
use tessera_tests::acpica::judge_table;
use tessera_tests::fuzz::{self, find, generate, replay, smoke, unhex, Rng};

fn cases() -> u64 {
    std::env::var("FUZZ_SMOKE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

macro_rules! smoke_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                smoke(stringify!($name), cases());
            }
        )*
    };
}

smoke_tests!(
    vfio_config,
    pci_config_access,
    bus_ranges,
    serial,
    cmos,
    ged,
    acpi_power,
    pci_hotplug,
    api_http,
    cli_options,
    config_json,
    acpi_roundtrip,
);

#[test]
fn every_target_has_a_smoke_test() {
    // The macro list above and fuzz::TARGETS must not drift apart.
    assert_eq!(fuzz::TARGETS.len(), 12);
}

/// Replays `hex` on `target`; fails with the finding if it still panics.
fn regression(target: &str, hex: &str) {
    let target = find(target).unwrap();
    if let Err(finding) = replay(target, &[unhex(hex).unwrap()]) {
        fuzz::report(&finding);
        panic!("regression: {:?}", finding.kind);
    }
}

/// vfio_config, seed 1, case 4128 (issue 12 item 3): the guest sized a 64-bit BAR
/// (all ones) with memory decode on, so the device asked to move it to
/// 0xffff_ffff_f000_0000; the bus range moved, KVM refused the slot, the device kept
/// the old address: bus and device disagreed, and every later move failed with "no bus
/// range starts at ...". Fixed by moving the bus range and the mappings all or nothing
/// (`Bus::relocate_with`, `BarMappings::move_mappings`).
#[test]
fn regression_vfio_bar_sized_while_decoding_keeps_bookkeeping() {
    regression(
        "vfio_config",
        "fe000000000000000000000000000000000000000000000000000001000001000000000000000001000000\
         000000000100000080000001000000ff01000000ca0000000000000001000000783e00010000000000000001\
         00000040",
    );
}

/// pci_config_access, seed 9, case 2253: a 3-byte write at 0xCFD reached the function as
/// 3 bytes at byte 1 of a dword. `PciConfigIo` now drops what ECAM drops
/// (`config_io::tests::only_whole_lanes_inside_the_dword_reach_the_device`).
#[test]
fn regression_pci_config_io_drops_writes_across_lanes() {
    regression(
        "pci_config_access",
        "000000e0000000000000000000ef00000000000000000000000000000000000000000000000000000000\
         000000000000000000aa000000e100000000d99301",
    );
}

/// vfio_config, seed 9, case 250: the guest moved an I/O BAR (sized with decode on to
/// port 0xffff_ffc0) and the relocator moved the KVM slot of the memory BAR at guest
/// address 0xffff_fff0 with it, since only the numbers were compared. I/O BAR moves no
/// longer touch mappings (`vmm::vfio::Relocator`).
#[test]
fn regression_vfio_io_bar_move_leaves_memory_mappings_alone() {
    regression(
        "vfio_config",
        "00000000d7690000ae00000000000000010000000000000000010000000100000000000000000000000600\
         000000000000000000000000000000000000003900000000d4000000000000000000004c01000000c30000\
         00000000000000000000000000000000000000446600000030000000000000000000008cbf000000000000\
         000000000000000000000000000000000000007101000000db",
    );
}

/// A sample of the random topologies the acpi_roundtrip target builds, each table judged
/// by ACPICA (`iasl -d`, recompiled clean; data tables re-encode to our bytes).
#[test]
fn random_valid_topologies_pass_iasl() {
    let mut rng = Rng::new(0xac1ca);
    let mut input = Vec::new();
    let mut judged = 0;
    let mut tried = 0;
    while judged < 12 {
        tried += 1;
        assert!(tried < 100_000, "only {judged} topologies built");
        generate(&mut rng, 2048, &mut input);
        let Ok(topology) = fuzz::acpi::topology(&mut Unstructured::new(&input)) else {
            continue;
        };
        // Only topologies with NUMA content: those are what the round trip is about.
        if topology.nodes.is_empty() || !fuzz::acpi::round_trip(&topology) {
            continue;
        }
        let tables = build(&topology, Placement::default()).unwrap();
        for t in &tables.tables {
            if let Err(e) = judge_table(&t.signature, &t.bytes) {
                panic!(
                    "{}: {e}\ntopology: {}",
                    t.signature,
                    serde_json::to_string(&topology).unwrap()
                );
            }
        }
        judged += 1;
    }
}

/// config_json, found by honggfuzz: a float in an opaque (Cloud Hypervisor compatibility)
/// field read back one ULP off, so a config did not round-trip. serde_json now parses
/// floats exactly (`float_roundtrip` in the workspace's Cargo.toml).
#[test]
fn regression_config_floats_round_trip() {
    regression(
        "config_json",
        "fffa4e68191dcfaaff30333379797c797979797979797979797979797879797979797979",
    );
}

/// acpi_roundtrip, found by honggfuzz (overflow checks on): an HMAT locality structure
/// with huge initiator and target counts overflowed the size check in `decode_hmat`
/// (`acpi/tests/decode.rs::hmat_locality_counts_that_overflow_are_errors`).
#[test]
fn regression_hmat_counts_overflow() {
    regression("acpi_roundtrip", HMAT_OVERFLOW);
}

/// The honggfuzz input (151 bytes) for [`regression_hmat_counts_overflow`].
const HMAT_OVERFLOW: &str =
    "fad42d317f41c79a3d602c3c3a485454313d311bb89821032609e2f5a6eacdf6e20aa6eacd870a54c6010000\
     024000000000000000fffffffffffffff710bb403ad08c745cabdde347b42ec3f189006cefda7f254e7bd2b3\
     9b064ad7ea5279d40affffffffffffffff06251d5d525d259d648170735d267d2b65722d627574746f6eeeae\
     d1136e9485368300d90000108b1cc20000c139";
