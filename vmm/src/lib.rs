//! Tessera's VMM: turns a VM configuration into a running VM. `cli` reads the command
//! line, `guest_topology` decides where everything goes, `memory` maps guest RAM, `vfio`
//! checks, opens and maps passed-through devices, `irq_routing` keeps KVM's GSI routing
//! table, `vm` assembles and runs one boot; the `tessera` binary drives them.

pub mod cli;
pub mod control;
pub mod guest_topology;
pub mod irq_routing;
pub mod memory;
pub mod pty;
pub mod vfio;
pub mod vm;
