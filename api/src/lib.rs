//! Tessera's API. The VM configuration here is what `tessera --config FILE`, the
//! `tessera` command-line flags and the HTTP API's `vm.create` all produce; the VMM
//! validates it against the host and assembles the VM from it. [`server`] is the HTTP
//! API on a Unix socket, which parses requests into typed actions for the VMM;
//! [`client`] speaks to it, and [`options`] parses the hot-plug requests' CH-style
//! option strings, for `tessera-ctl`.
//!
//! The JSON is Cloud Hypervisor's `VmConfig`, every field of it (those Tessera cannot
//! honour accepted at CH's default only), so CH clients can drive Tessera; what CH lacks
//! (Generic Initiator links) is added in the same style.

pub mod client;
pub mod config;
pub mod error;
pub mod options;
mod routes;
pub mod server;
mod socket;
pub mod types;
