//! Tessera's ACPI tables: a plain topology description in, x86_64 firmware table bytes out.
//!
//! The crate is pure: no KVM, no I/O. [`build`] validates a [`Topology`] and returns the
//! table set (RSDP, XSDT, FADT, DSDT, MADT, and where they apply MCFG, SRAT, SLIT, HMAT)
//! laid out at the guest addresses a [`Placement`] gives. rust-vmm's `acpi_tables` encodes
//! what it covers; the gaps (SRAT processor affinity, x2APIC and NMI MADT entries,
//! asymmetric SLIT, HMAT revision and entry indexing) are filled in the table modules.

pub mod decode;
mod dsdt;
mod error;
mod fadt;
mod hmat;
mod madt;
mod pci_hotplug;
mod slit;
mod srat;
mod topology;
mod validate;

pub use dsdt::S5_SLEEP_TYPE;
pub use error::Error;
pub use slit::DEFAULT_REMOTE_DISTANCE;
pub use srat::linux_node_numbering;
pub use topology::*;
pub use validate::{validate, MAX_NODES, MAX_SEGMENTS};

use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

/// OEM table id in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"TESSERA ";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;

/// Where the tables go in guest physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Address of the RSDP (on x86, 16-byte aligned inside 0xE0000..0xFFFFF so the
    /// kernel's legacy scan finds it).
    pub rsdp_address: u64,
    /// Address of the first table; the others follow, 8-byte aligned.
    pub tables_address: u64,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            rsdp_address: 0x000e_0000,
            tables_address: 0x000e_0040,
        }
    }
}

/// One encoded table at its guest address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// `RSDP` for the root pointer, otherwise the 4-character signature (`APIC` is the MADT,
    /// `FACP` the FADT).
    pub signature: String,
    /// Guest physical address.
    pub address: u64,
    /// The table's bytes, checksummed.
    pub bytes: Vec<u8>,
}

/// The complete table set for one topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// The root pointer.
    pub rsdp: Table,
    /// Every other table in address order; the XSDT is last.
    pub tables: Vec<Table>,
}

impl AcpiTables {
    /// The table with this signature (`RSDP` included).
    pub fn get(&self, signature: &str) -> Option<&Table> {
        std::iter::once(&self.rsdp)
            .chain(&self.tables)
            .find(|t| t.signature == signature)
    }

    /// Every table, RSDP first.
    pub fn iter(&self) -> impl Iterator<Item = &Table> {
        std::iter::once(&self.rsdp).chain(&self.tables)
    }
}

/// Validates the topology and builds every table it implies.
pub fn build(topology: &Topology, placement: Placement) -> Result<AcpiTables, Error> {
    let facts = validate::check(topology)?;

    let mut tables: Vec<Table> = Vec::new();
    let mut next = placement.tables_address;
    let mut place = |signature: &str, bytes: Vec<u8>, tables: &mut Vec<Table>| -> u64 {
        let address = next;
        next = align8(next + bytes.len() as u64);
        tables.push(Table {
            signature: signature.to_string(),
            address,
            bytes,
        });
        address
    };

    let dsdt_address = place("DSDT", dsdt::build(topology)?, &mut tables);
    place("FACP", fadt::build(topology, dsdt_address)?, &mut tables);
    place("APIC", madt::build(topology)?, &mut tables);
    if let Some(mcfg) = fadt::build_mcfg(topology)? {
        place("MCFG", mcfg, &mut tables);
    }
    if let Some(srat) = srat::build(topology)? {
        place("SRAT", srat, &mut tables);
    }
    if let Some(slit) = slit::build(topology)? {
        place("SLIT", slit, &mut tables);
    }
    if let Some(hmat) = hmat::build(topology, &facts)? {
        place("HMAT", hmat, &mut tables);
    }

    let mut xsdt = XSDT::new(oem_id(topology), OEM_TABLE_ID, OEM_REVISION);
    // The DSDT is reached through the FADT, not listed in the XSDT.
    for t in tables.iter().filter(|t| t.signature != "DSDT") {
        xsdt.add_entry(t.address);
    }
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let xsdt_address = place("XSDT", xsdt_bytes, &mut tables);

    let mut rsdp_bytes = Vec::new();
    Rsdp::new(oem_id(topology), xsdt_address).to_aml_bytes(&mut rsdp_bytes);
    Ok(AcpiTables {
        rsdp: Table {
            signature: "RSDP".into(),
            address: placement.rsdp_address,
            bytes: rsdp_bytes,
        },
        tables,
    })
}

fn align8(x: u64) -> u64 {
    x.saturating_add(7) & !7
}

/// The topology's OEM id, space padded to six bytes (validated to be 1..=6 ASCII chars).
pub(crate) fn oem_id(t: &Topology) -> [u8; 6] {
    let mut id = [b' '; 6];
    for (slot, byte) in id.iter_mut().zip(t.platform.oem_id.bytes()) {
        *slot = byte;
    }
    id
}

/// Sets a finished table's revision, length and checksum in its header.
///
/// Every table goes through here so that structures appended after `acpi_tables`
/// encoded its part are counted, and revisions the crate writes too low are raised.
pub(crate) fn finish_table(mut bytes: Vec<u8>, revision: u8) -> Result<Vec<u8>, Error> {
    let signature = String::from_utf8_lossy(bytes.get(0..4).unwrap_or_default()).into_owned();
    let too_large = || Error::TableTooLarge {
        signature: signature.clone(),
        len: bytes.len() as u64,
    };
    let len = u32::try_from(bytes.len()).map_err(|_| too_large())?;
    if len < 36 {
        return Err(too_large());
    }
    let mut put = |offset: usize, value: &[u8]| {
        if let Some(dst) = bytes.get_mut(offset..offset + value.len()) {
            dst.copy_from_slice(value);
        }
    };
    put(4, &len.to_le_bytes());
    put(8, &[revision, 0]);
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    if let Some(checksum) = bytes.get_mut(9) {
        *checksum = 0u8.wrapping_sub(sum);
    }
    Ok(bytes)
}
