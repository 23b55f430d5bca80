//! HMAT: memory proximity attributes and latency/bandwidth from initiators to targets.
//!
//! Uses `acpi_tables::hmat`, around two of its gaps: it writes revision 1 (ACPI 6.2
//! semantics, which Linux reads differently) where the structures it encodes are those
//! of revision 2, and its `set_entry_value` indexes rows by the initiator count instead
//! of the target count (see [`entry_position`]).

use std::collections::BTreeMap;

use acpi_tables::hmat::{
    Associativity, CacheLevel, DataType, LocalityType, MemoryProximityDomain, MemorySideCache,
    MinTransferSize, SystemLocality, WritePolicy, HMAT,
};
use acpi_tables::Aml;

use crate::error::Error;
use crate::topology::{HmatCacheAssociativity, HmatCacheWritePolicy, HmatDataType, Topology};
use crate::validate::Facts;
use crate::{finish_table, OEM_REVISION, OEM_TABLE_ID};

/// HMAT revision 2 (ACPI 6.3+), the layout `acpi_tables` encodes.
const HMAT_REVISION: u8 = 2;

/// The largest entry: 0xFFFF means "unreachable".
const MAX_ENTRY: u64 = 0xfffe;

/// Builds the HMAT, or `None` when the topology gives no HMAT values.
pub(crate) fn build(t: &Topology, facts: &Facts) -> Result<Option<Vec<u8>>, Error> {
    if t.hmat.is_empty() {
        return Ok(None);
    }
    let initiators: Vec<u32> = facts.initiator_nodes().into_iter().collect();
    let targets: Vec<u32> = facts.memory_nodes.iter().copied().collect();
    // Node → position in the initiator and target lists.
    let mut initiator_pos: Vec<Option<usize>> = vec![None; t.nodes.len()];
    for (i, &n) in initiators.iter().enumerate() {
        if let Some(c) = initiator_pos.get_mut(n as usize) {
            *c = Some(i);
        }
    }
    let mut target_pos: Vec<Option<usize>> = vec![None; t.nodes.len()];
    for (j, &n) in targets.iter().enumerate() {
        if let Some(r) = target_pos.get_mut(n as usize) {
            *r = Some(j);
        }
    }

    let mut hmat = HMAT::new(crate::oem_id(t), OEM_TABLE_ID, OEM_REVISION);
    for &target in &targets {
        // A memory node with its own CPUs names them as its attached initiator, as QEMU
        // does; for other memory nodes Linux derives the best initiators from the
        // locality data below.
        if facts.cpu_nodes.contains(&target) {
            hmat.add_memory_proximity(MemoryProximityDomain::new(target, target));
        }
    }

    for (&data_type, (base, values)) in &facts.hmat {
        let base = *base;
        let mut sllbi = SystemLocality::new(
            LocalityType::Memory,
            data_type_code(data_type),
            MinTransferSize::SizeByteAligned,
            base,
            initiators.len(),
            targets.len(),
        );
        for (i, &node) in initiators.iter().enumerate() {
            sllbi.set_initiator_value(i, node);
        }
        for (j, &node) in targets.iter().enumerate() {
            sllbi.set_target_value(j, node);
        }
        // Every entry is written: 0 ("not provided") where the topology says nothing,
        // instead of the crate's default 0xFFFF ("unreachable").
        let mut entries = vec![0u16; initiators.len() * targets.len()];
        for &(init, targ, value) in values {
            let i = initiator_pos.get(init as usize).copied().flatten();
            let j = target_pos.get(targ as usize).copied().flatten();
            if let (Some(i), Some(j)) = (i, j) {
                if let Some(e) = entries.get_mut(i * targets.len() + j) {
                    // base_unit() guarantees value / base <= 0xFFFE.
                    *e = (value / base) as u16;
                }
            }
        }
        for (i, chunk) in entries.chunks(targets.len().max(1)).enumerate() {
            for (j, &entry) in chunk.iter().enumerate() {
                let (a, b) = entry_position(i, j, initiators.len(), targets.len());
                sllbi.set_entry_value(a, b, entry);
            }
        }
        hmat.add_system_locality(sllbi);
    }

    for c in &t.hmat_caches {
        // Validation made the node's levels run 1..=n: n is its highest.
        let total = t
            .hmat_caches
            .iter()
            .filter(|o| o.node == c.node)
            .map(|o| o.level)
            .max()
            .unwrap_or(c.level);
        hmat.add_memory_side_cache(MemorySideCache::new(
            c.node,
            c.size,
            cache_level(total),
            cache_level(c.level),
            match c.associativity {
                HmatCacheAssociativity::None => Associativity::None,
                HmatCacheAssociativity::Direct => Associativity::DirectMapped,
                HmatCacheAssociativity::Complex => Associativity::Complex,
            },
            match c.policy {
                HmatCacheWritePolicy::None => WritePolicy::None,
                HmatCacheWritePolicy::WriteBack => WritePolicy::Writeback,
                HmatCacheWritePolicy::WriteThrough => WritePolicy::Writethrough,
            },
            c.line,
        ));
    }

    let mut out = Vec::new();
    hmat.to_aml_bytes(&mut out);
    finish_table(out, HMAT_REVISION).map(Some)
}

/// One data type's values in table units: the base unit, and (initiator, target, value)
/// with latencies in picoseconds and bandwidths in MB/s, each a multiple of the base.
pub(crate) type Encoded = (u64, Vec<(u32, u32, u64)>);

/// Groups the topology's HMAT values by data type and picks each type's base unit;
/// fails when a type's values cannot share one (validation runs this too).
pub(crate) fn encoded_values(t: &Topology) -> Result<BTreeMap<HmatDataType, Encoded>, Error> {
    let mut by_type: BTreeMap<HmatDataType, Vec<(u32, u32, u64)>> = BTreeMap::new();
    for e in &t.hmat {
        let value = if e.data_type.is_latency() {
            // Latencies are given in ns; the table's base unit is picoseconds.
            e.value
                .checked_mul(1000)
                .ok_or_else(|| range_error(e.data_type, e.value, e.value))?
        } else {
            e.value
        };
        by_type
            .entry(e.data_type)
            .or_default()
            .push((e.initiator, e.target, value));
    }
    by_type
        .into_iter()
        .map(|(data_type, values)| Ok((data_type, (base_unit(data_type, &values)?, values))))
        .collect()
}

/// Arguments for `SystemLocality::set_entry_value` that land on row-major position
/// `initiator * targets + target`. The crate computes `a * initiators + b`, which is
/// right only when there are as many initiators as targets; solving for the flat
/// position keeps the crate's encoder and puts each value where ACPI wants it.
fn entry_position(
    initiator: usize,
    target: usize,
    initiators: usize,
    targets: usize,
) -> (usize, usize) {
    let flat = initiator * targets + target;
    let stride = initiators.max(1);
    (flat / stride, flat % stride)
}

/// The largest base unit that divides every value and keeps every entry in 16 bits.
fn base_unit(data_type: HmatDataType, values: &[(u32, u32, u64)]) -> Result<u64, Error> {
    let gcd = values.iter().fold(0u64, |g, &(_, _, v)| gcd(g, v));
    let min = values.iter().map(|v| v.2).min().unwrap_or(0);
    let max = values.iter().map(|v| v.2).max().unwrap_or(0);
    if gcd == 0 || max / gcd > MAX_ENTRY {
        let scale = if data_type.is_latency() { 1000 } else { 1 };
        return Err(range_error(data_type, min / scale, max / scale));
    }
    Ok(gcd)
}

fn range_error(data_type: HmatDataType, min: u64, max: u64) -> Error {
    let name = match data_type {
        HmatDataType::AccessLatency => "access_latency",
        HmatDataType::ReadLatency => "read_latency",
        HmatDataType::WriteLatency => "write_latency",
        HmatDataType::AccessBandwidth => "access_bandwidth",
        HmatDataType::ReadBandwidth => "read_bandwidth",
        HmatDataType::WriteBandwidth => "write_bandwidth",
    };
    Error::HmatRange {
        data_type: name.into(),
        min,
        max,
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn cache_level(level: u8) -> CacheLevel {
    match level {
        1 => CacheLevel::One,
        2 => CacheLevel::Two,
        3 => CacheLevel::Three,
        _ => CacheLevel::None,
    }
}

fn data_type_code(d: HmatDataType) -> DataType {
    match d {
        HmatDataType::AccessLatency => DataType::AccessLatency,
        HmatDataType::ReadLatency => DataType::ReadLatency,
        HmatDataType::WriteLatency => DataType::WriteLatency,
        HmatDataType::AccessBandwidth => DataType::AccessBandwidth,
        HmatDataType::ReadBandwidth => DataType::ReadBandwidth,
        HmatDataType::WriteBandwidth => DataType::WriteBandwidth,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_position_is_row_major_for_any_shape() {
        for (ni, nt) in [(1, 1), (2, 5), (5, 2), (3, 3), (18, 2)] {
            let mut sllbi = SystemLocality::new(
                LocalityType::Memory,
                DataType::AccessLatency,
                MinTransferSize::SizeByteAligned,
                1,
                ni,
                nt,
            );
            for i in 0..ni {
                for j in 0..nt {
                    let (a, b) = entry_position(i, j, ni, nt);
                    sllbi.set_entry_value(a, b, (i * 100 + j) as u16);
                }
            }
            let mut bytes = Vec::new();
            sllbi.to_aml_bytes(&mut bytes);
            let entries = &bytes[32 + 4 * (ni + nt)..];
            for i in 0..ni {
                for j in 0..nt {
                    let at = 2 * (i * nt + j);
                    let v = u16::from_le_bytes([entries[at], entries[at + 1]]);
                    assert_eq!(v as usize, i * 100 + j, "shape {ni}x{nt} at ({i},{j})");
                }
            }
        }
    }

    #[test]
    fn base_unit_is_the_gcd_and_rejects_wide_ranges() {
        let v = |x: &[u64]| x.iter().map(|&v| (0, 0, v)).collect::<Vec<_>>();
        assert_eq!(
            base_unit(HmatDataType::AccessBandwidth, &v(&[200, 300])).unwrap(),
            100
        );
        assert!(matches!(
            base_unit(HmatDataType::AccessBandwidth, &v(&[1, 70_000])),
            Err(Error::HmatRange { .. })
        ));
    }
}
