//! Tessera's x86_64 platform: where RAM, ECAM, PCI MMIO windows and the interrupt
//! controllers sit in the guest's physical address space and the e820 map the guest is
//! told (`layout`, pure), how a kernel and its initramfs are put in guest memory with their
//! boot parameters (`boot`), the reset-vector stub that stands in for a BIOS (`firmware`),
//! and the state each vCPU starts in (`vcpu`, through KVM).

pub mod boot;
pub mod firmware;
pub mod layout;
pub mod vcpu;
