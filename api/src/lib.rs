//! Tessera's API types. The VM configuration here is what `tessera --config FILE`, the
//! `tessera` command-line flags and the HTTP API's `vm.create` all produce; the VMM
//! validates it against the host and assembles the VM from it.
//!
//! The JSON follows Cloud Hypervisor's `VmConfig` for the fields the two share, so CH
//! clients can drive Tessera; what CH lacks (Generic Initiator links) is added in the
//! same style.

pub mod config;
