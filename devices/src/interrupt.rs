//! What a device model needs from the VMM to deliver interrupts without a trip through
//! userspace: GSIs, MSI routes and irqfds. The VMM implements [`InterruptRouter`] on top
//! of KVM (`KVM_SET_GSI_ROUTING`, `KVM_IRQFD`); device models only describe what they want,
//! so they stay testable without KVM.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// An MSI message as the guest programs it: where to write and what.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address, low dword.
    pub address_lo: u32,
    /// Message address, high dword (0 for a 32-bit MSI capability).
    pub address_hi: u32,
    /// Message data.
    pub data: u32,
}

/// Interrupt delivery the VMM provides to device models.
pub trait InterruptRouter: Send + Sync {
    /// A GSI no one else uses, for an MSI route.
    fn allocate_gsi(&self) -> io::Result<u32>;
    /// Gives `gsi` back; its route is removed.
    fn release_gsi(&self, gsi: u32);
    /// Routes `gsi` to the MSI `message`, replacing any previous route.
    fn set_msi_route(&self, gsi: u32, message: &MsiMessage) -> io::Result<()>;
    /// Makes a write to `fd` raise `gsi`.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
    /// Undoes [`Self::register_irqfd`].
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
    /// Makes a write to `fd` assert the level-triggered `gsi`; when the guest ends the
    /// interrupt (EOI), the line is lowered and `resample` is written, so the device can
    /// raise it again.
    fn register_resample_irqfd(&self, fd: &EventFd, resample: &EventFd, gsi: u32)
        -> io::Result<()>;
}
