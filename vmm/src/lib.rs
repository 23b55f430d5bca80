//! Tessera's VMM: turns a validated VM configuration into a VM. So far: the guest's
//! topology (memory layout, device placement, NUMA nodes and GI links) and the firmware
//! tables it gives; KVM assembly follows.

pub mod cli;
pub mod guest_topology;
pub mod memory;
