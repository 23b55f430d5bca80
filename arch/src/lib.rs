//! Tessera's x86_64 platform definitions: where RAM, ECAM, PCI MMIO windows and the
//! interrupt controllers sit in the guest's physical address space, and the e820 map
//! the guest is told. Pure: no KVM, no I/O.

pub mod layout;
