//! Test harnesses shared by Tessera's integration and end-to-end tests.
//!
//! Each harness drives a judge that no one here wrote: ACPICA's `iasl`/`acpiexec`
//! for table bytes, and a real Linux kernel for what a guest makes of them, booted
//! directly under QEMU (`linux_judge`) or as L2 inside the nested test host (`nested`);
//! and a client no one here wrote for the API, Cloud Hypervisor's `ch-remote` (`peers`).
//! The fuzz targets and their runner are in `fuzz`.

pub mod acpica;
pub mod fuzz;
pub mod linux_judge;
pub mod nested;
pub mod peers;
pub mod topologies;
