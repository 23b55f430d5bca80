//! The device manager: the one place devices come into the VM and go out of it, at boot
//! and later. `placement` decides where PCI devices go and their ids; `memory_slots`
//! hands out KVM memory slots.

pub mod memory_slots;
pub mod placement;
