//! Tessera's VMM: turns a VM configuration into a running VM. `cli` reads the command
//! line, `guest_topology` decides where everything goes, `memory` maps guest RAM,
//! `device_manager` brings devices in and out for the VM's life (`vfio` checks, opens and
//! maps passed-through ones; `irq_routing` keeps KVM's GSI routing table), `device_memory`
//! sizes the BARs that become node RAM; `vm` assembles and runs one boot (`vcpu` runs its vCPUs); `console` and `serial_input` are the serial
//! port's host side, which outlives boots; the `tessera` binary drives them through
//! `control`. `host` reads what the host offers for passthrough (`vmm.host-devices`);
//! `seccomp` holds each thread's syscall filter; `affinity` pins vCPU threads.

pub mod affinity;
pub mod cli;
pub mod console;
pub mod control;
pub mod device_manager;
pub mod device_memory;
pub mod guest_topology;
pub mod host;
pub mod irq_routing;
pub mod managed;
pub mod memory;
pub mod pty;
pub mod seccomp;
mod serial_input;
mod vcpu;
pub mod vfio;
pub mod vm;
