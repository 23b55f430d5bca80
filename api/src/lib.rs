//! Tessera's API. The VM configuration here is what `tessera --config FILE`, the
//! `tessera` command-line flags and the HTTP API's `vm.create` all produce; the VMM
//! validates it against the host and assembles the VM from it. [`server`] is the HTTP
//! API on a Unix socket, which parses requests into typed actions for the VMM.
//!
//! The JSON follows Cloud Hypervisor's `VmConfig` for the fields the two share, so CH
//! clients can drive Tessera; what CH lacks (Generic Initiator links) is added in the
//! same style.

pub mod config;
pub mod error;
mod routes;
pub mod server;
mod socket;
pub mod types;
