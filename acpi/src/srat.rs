//! SRAT: processor, memory and Generic Initiator affinity.
//!
//! Memory and Generic Initiator structures come from `acpi_tables`; processor affinity
//! (Local APIC type 0 and x2APIC type 2) is not in that crate, so it is encoded here.
//!
//! Entry order is chosen so that Linux numbers its nodes like our proximity domains
//! wherever it can: Linux maps a proximity domain to the next free node id when it first
//! sees it, walking processor and GI entries in table order before any memory entry.

use acpi_tables::srat::{GenericInitiator, Handle, MemoryAffinity, SRAT};
use acpi_tables::Aml;
use zerocopy::{Immutable, IntoBytes};

use crate::error::Error;
use crate::topology::Topology;
use crate::{finish_table, OEM_REVISION, OEM_TABLE_ID};

/// SRAT revision 3 (ACPI 6.3+): 32-bit proximity domains everywhere. Linux reads only
/// the low 8 bits of processor and memory domains from revision 1 tables.
const SRAT_REVISION: u8 = 3;

/// APIC ids from 255 on need x2APIC structures (255 is the xAPIC broadcast id).
pub(crate) const X2APIC_THRESHOLD: u32 = 255;

/// SRAT Processor Local APIC/SAPIC Affinity Structure (type 0, 16 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalApicAffinity {
    kind: u8,
    length: u8,
    proximity_domain_lo: u8,
    apic_id: u8,
    flags: [u8; 4],
    local_sapic_eid: u8,
    proximity_domain_hi: [u8; 3],
    clock_domain: [u8; 4],
}

/// SRAT Processor Local x2APIC Affinity Structure (type 2, 24 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct X2ApicAffinity {
    kind: u8,
    length: u8,
    reserved0: [u8; 2],
    proximity_domain: [u8; 4],
    x2apic_id: [u8; 4],
    flags: [u8; 4],
    clock_domain: [u8; 4],
    reserved1: [u8; 4],
}

const AFFINITY_ENABLED: u32 = 1;

/// One processor affinity structure; which kind depends on the APIC id.
enum ProcessorAffinity {
    Local(LocalApicAffinity),
    X2Apic(X2ApicAffinity),
}

impl ProcessorAffinity {
    fn new(apic_id: u32, node: u32) -> Self {
        let pxm = node.to_le_bytes();
        match u8::try_from(apic_id) {
            Ok(id) if apic_id < X2APIC_THRESHOLD => ProcessorAffinity::Local(LocalApicAffinity {
                kind: 0,
                length: 16,
                proximity_domain_lo: pxm[0],
                apic_id: id,
                flags: AFFINITY_ENABLED.to_le_bytes(),
                local_sapic_eid: 0,
                proximity_domain_hi: [pxm[1], pxm[2], pxm[3]],
                clock_domain: [0; 4],
            }),
            _ => ProcessorAffinity::X2Apic(X2ApicAffinity {
                kind: 2,
                length: 24,
                reserved0: [0; 2],
                proximity_domain: pxm,
                x2apic_id: apic_id.to_le_bytes(),
                flags: AFFINITY_ENABLED.to_le_bytes(),
                clock_domain: [0; 4],
                reserved1: [0; 4],
            }),
        }
    }
}

/// An SRAT structure in emission order.
enum Entry {
    Processor { apic_id: u32, node: u32 },
    Initiator { device: usize, node: u32 },
    Memory { range: usize, node: u32 },
}

impl Entry {
    fn node(&self) -> u32 {
        match self {
            Entry::Processor { node, .. }
            | Entry::Initiator { node, .. }
            | Entry::Memory { node, .. } => *node,
        }
    }
}

/// Processor and GI entries sorted by node, then memory entries sorted by node.
fn ordered_entries(t: &Topology) -> Vec<Entry> {
    let mut first_pass: Vec<Entry> = Vec::new();
    for cpu in &t.cpus {
        if let Some(node) = cpu.node {
            first_pass.push(Entry::Processor {
                apic_id: cpu.apic_id,
                node,
            });
        }
    }
    for link in &t.generic_initiators {
        if let Some(device) = t.pci_devices.iter().position(|d| d.id == link.device) {
            first_pass.push(Entry::Initiator {
                device,
                node: link.node,
            });
        }
    }
    // Stable: within a node, CPUs keep their order and come before that node's GIs.
    first_pass.sort_by_key(Entry::node);
    let mut memory: Vec<Entry> = t
        .memory
        .iter()
        .enumerate()
        .filter_map(|(range, r)| r.node.map(|node| Entry::Memory { range, node }))
        .collect();
    memory.sort_by_key(|e| {
        let base = match e {
            Entry::Memory { range, .. } => t.memory.get(*range).map_or(0, |r| r.base),
            _ => 0,
        };
        (e.node(), base)
    });
    first_pass.extend(memory);
    first_pass
}

/// Builds the SRAT, or `None` for a topology without NUMA nodes.
pub(crate) fn build(t: &Topology) -> Result<Option<Vec<u8>>, Error> {
    if t.nodes.is_empty() {
        return Ok(None);
    }
    // acpi_tables' SRAT cannot hold processor affinity, and its structures keep
    // insertion order by kind; take its (empty) header and append ours in our order.
    let mut out = Vec::new();
    SRAT::new(crate::oem_id(t), OEM_TABLE_ID, OEM_REVISION).to_aml_bytes(&mut out);
    for entry in ordered_entries(t) {
        match entry {
            Entry::Processor { apic_id, node } => match ProcessorAffinity::new(apic_id, node) {
                ProcessorAffinity::Local(s) => out.extend_from_slice(s.as_bytes()),
                ProcessorAffinity::X2Apic(s) => out.extend_from_slice(s.as_bytes()),
            },
            Entry::Initiator { device, node } => {
                if let Some(d) = t.pci_devices.get(device) {
                    let handle = Handle::Pci {
                        segment: d.bdf.segment,
                        bus: d.bdf.bus,
                        device: d.bdf.device,
                        function: d.bdf.function,
                    };
                    GenericInitiator::new(node, handle)
                        .enabled()
                        .to_aml_bytes(&mut out);
                }
            }
            Entry::Memory { range, node } => {
                if let Some(r) = t.memory.get(range) {
                    let mut m = MemoryAffinity::new(node, r.base, r.size);
                    if r.enabled {
                        m = m.enabled();
                    }
                    if r.hotpluggable {
                        m = m.hotpluggable();
                    }
                    if r.non_volatile {
                        m = m.nonvolatile();
                    }
                    m.to_aml_bytes(&mut out);
                }
            }
        }
    }
    finish_table(out, SRAT_REVISION).map(Some)
}

/// Predicts Linux's node numbering for this topology: `(proximity domain, Linux node)`
/// pairs in proximity-domain order, `None` where Linux will not know the domain at all
/// (a node with no CPU, no enabled memory range and no Generic Initiator).
///
/// The numbering is the identity whenever every node that has only memory comes after
/// every node with CPUs or Generic Initiators.
pub fn linux_node_numbering(t: &Topology) -> Vec<(u32, Option<u32>)> {
    let mut assigned: Vec<Option<u32>> = vec![None; t.nodes.len()];
    let mut next = 0u32;
    for entry in ordered_entries(t) {
        // Disabled memory ranges are skipped by Linux before it maps the domain.
        if let Entry::Memory { range, .. } = entry {
            if !t.memory.get(range).is_some_and(|r| r.enabled) {
                continue;
            }
        }
        if let Some(slot) = assigned.get_mut(entry.node() as usize) {
            if slot.is_none() {
                *slot = Some(next);
                next += 1;
            }
        }
    }
    assigned
        .into_iter()
        .enumerate()
        .map(|(pxm, node)| (pxm as u32, node))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_apic_affinity_layout() {
        let ProcessorAffinity::Local(s) = ProcessorAffinity::new(3, 0x0102_0304) else {
            panic!("expected a Local APIC structure");
        };
        assert_eq!(
            s.as_bytes(),
            &[0, 16, 0x04, 3, 1, 0, 0, 0, 0, 0x03, 0x02, 0x01, 0, 0, 0, 0]
        );
    }

    #[test]
    fn x2apic_affinity_layout() {
        let ProcessorAffinity::X2Apic(s) = ProcessorAffinity::new(300, 7) else {
            panic!("expected an x2APIC structure");
        };
        assert_eq!(
            s.as_bytes(),
            &[2, 24, 0, 0, 7, 0, 0, 0, 0x2c, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert!(matches!(
            ProcessorAffinity::new(255, 0),
            ProcessorAffinity::X2Apic(_)
        ));
    }
}
