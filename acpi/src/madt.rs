//! MADT: local APICs (x2APIC where ids need it), I/O APICs, overrides and LINT1 NMI.
//!
//! `acpi_tables::madt` encodes the Local APIC and I/O APIC structures; x2APIC, interrupt
//! source override and NMI structures are not in it and are encoded here.

use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::{Aml, AmlSink};
use zerocopy::{Immutable, IntoBytes};

use crate::error::Error;
use crate::srat::X2APIC_THRESHOLD;
use crate::topology::Topology;
use crate::{finish_table, OEM_REVISION, OEM_TABLE_ID};

/// MADT revision 5 (ACPI 6.3+).
const MADT_REVISION: u8 = 5;

/// Local APIC flags: Enabled.
const LOCAL_APIC_ENABLED: u32 = 1;

/// Processor Local x2APIC Structure (type 9, 16 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalX2Apic {
    kind: u8,
    length: u8,
    reserved: [u8; 2],
    x2apic_id: [u8; 4],
    flags: [u8; 4],
    processor_uid: [u8; 4],
}

/// Interrupt Source Override Structure (type 2, 10 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    kind: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: [u8; 4],
    flags: [u8; 2],
}

/// Local APIC NMI Structure (type 4, 6 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalApicNmi {
    kind: u8,
    length: u8,
    processor_uid: u8,
    flags: [u8; 2],
    lint: u8,
}

/// Local x2APIC NMI Structure (type 0xA, 12 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalX2ApicNmi {
    kind: u8,
    length: u8,
    flags: [u8; 2],
    processor_uid: [u8; 4],
    lint: u8,
    reserved: [u8; 3],
}

macro_rules! encode_as_bytes {
    ($($t:ty),*) => {$(
        impl Aml for $t {
            fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
                sink.vec(self.as_bytes());
            }
        }
    )*};
}
encode_as_bytes!(
    LocalX2Apic,
    InterruptSourceOverride,
    LocalApicNmi,
    LocalX2ApicNmi
);

/// Builds the MADT. A CPU's ACPI processor UID is its index in `cpus`.
pub(crate) fn build(t: &Topology) -> Result<Vec<u8>, Error> {
    let p = &t.platform;
    let mut madt = MADT::new(
        crate::oem_id(t),
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(p.lapic_address),
    );
    let mut any_x2apic = false;
    for (index, cpu) in t.cpus.iter().enumerate() {
        match (u8::try_from(cpu.apic_id), u8::try_from(index)) {
            (Ok(apic_id), Ok(uid)) if cpu.apic_id < X2APIC_THRESHOLD && uid < 0xff => {
                madt.add_structure(ProcessorLocalApic::new(
                    uid,
                    apic_id,
                    EnabledStatus::Enabled,
                ));
            }
            _ => {
                any_x2apic = true;
                madt.add_structure(LocalX2Apic {
                    kind: 9,
                    length: 16,
                    reserved: [0; 2],
                    x2apic_id: cpu.apic_id.to_le_bytes(),
                    flags: LOCAL_APIC_ENABLED.to_le_bytes(),
                    processor_uid: (index as u32).to_le_bytes(),
                });
            }
        }
    }
    for io in &p.ioapics {
        madt.add_structure(IoApic::new(io.id, io.address, io.gsi_base));
    }
    for o in &p.interrupt_overrides {
        madt.add_structure(InterruptSourceOverride {
            kind: 2,
            length: 10,
            bus: 0,
            source: o.source,
            gsi: o.gsi.to_le_bytes(),
            flags: o.flags.to_le_bytes(),
        });
    }
    // LINT1 is wired to NMI on every processor, as on PC hardware.
    madt.add_structure(LocalApicNmi {
        kind: 4,
        length: 6,
        processor_uid: 0xff,
        flags: [0; 2],
        lint: 1,
    });
    if any_x2apic {
        madt.add_structure(LocalX2ApicNmi {
            kind: 0xa,
            length: 12,
            flags: [0; 2],
            processor_uid: u32::MAX.to_le_bytes(),
            lint: 1,
            reserved: [0; 3],
        });
    }
    let mut out = Vec::new();
    madt.to_aml_bytes(&mut out);
    finish_table(out, MADT_REVISION)
}
