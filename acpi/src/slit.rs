//! SLIT: the node distance matrix.
//!
//! `acpi_tables::slit::SLIT` lays out the table but only sets distances symmetrically;
//! ACPI and Linux allow asymmetric matrices, so each entry is written into its bytes here.

use acpi_tables::slit::SLIT;
use acpi_tables::Aml;

use crate::error::Error;
use crate::topology::Topology;
use crate::{finish_table, OEM_REVISION, OEM_TABLE_ID};

/// Header (36) + locality count (8).
const ENTRIES_OFFSET: usize = 44;

/// Distance between distinct nodes when the topology gives no matrix (Linux's default).
pub const DEFAULT_REMOTE_DISTANCE: u8 = 20;

/// Builds the SLIT, or `None` for a topology without NUMA nodes.
pub(crate) fn build(t: &Topology) -> Result<Option<Vec<u8>>, Error> {
    let n = t.nodes.len();
    if n == 0 {
        return Ok(None);
    }
    let len = (ENTRIES_OFFSET as u64).saturating_add((n as u64).saturating_mul(n as u64));
    if len > u64::from(u32::MAX) {
        return Err(Error::TableTooLarge {
            signature: "SLIT".into(),
            len,
        });
    }
    let mut out = Vec::with_capacity(len as usize);
    SLIT::new(crate::oem_id(t), OEM_TABLE_ID, OEM_REVISION, n as u32).to_aml_bytes(&mut out);
    if let Some(entries) = out.get_mut(ENTRIES_OFFSET..) {
        for (i, row) in entries.chunks_exact_mut(n).enumerate() {
            for (j, entry) in row.iter_mut().enumerate() {
                *entry = distance(t, i, j);
            }
        }
    }
    finish_table(out, 1).map(Some)
}

/// The distance the SLIT gives from node `i` to node `j`.
pub(crate) fn distance(t: &Topology, i: usize, j: usize) -> u8 {
    match &t.distances {
        Some(m) => m.get(i).and_then(|row| row.get(j)).copied().unwrap_or(0),
        None if i == j => 10,
        None => DEFAULT_REMOTE_DISTANCE,
    }
}
