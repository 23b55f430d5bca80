//! The KVM GSI routing table: the in-kernel irqchip's default routes plus the MSI routes
//! device models ask for through [`InterruptRouter`], and their irqfds.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use tessera_devices::interrupt::{InterruptRouter, MsiMessage};
use vmm_sys_util::eventfd::EventFd;

/// The KVM GSI routing table: the in-kernel irqchip's default routes plus one MSI route
/// per live vector. KVM replaces the whole table on every change, so it is kept here.
pub struct KvmInterruptRouter {
    vm: Arc<VmFd>,
    state: Mutex<RouterState>,
}

struct RouterState {
    msi: BTreeMap<u32, MsiMessage>,
    free: BTreeSet<u32>,
    next: u32,
}

/// GSIs 0..=23 are the I/O APIC's; MSI routes start above them.
const FIRST_MSI_GSI: u32 = 24;
/// KVM's limit on routing entries.
const MAX_GSI: u32 = 4095;

impl KvmInterruptRouter {
    /// A router for `vm`, whose irqchip is in the kernel.
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmInterruptRouter {
            vm,
            state: Mutex::new(RouterState {
                msi: BTreeMap::new(),
                free: BTreeSet::new(),
                next: FIRST_MSI_GSI,
            }),
        }
    }

    fn commit(&self, state: &RouterState) -> io::Result<()> {
        let mut entries = Vec::new();
        let irqchip = |gsi: u32, chip: u32, pin: u32| {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            e.u.irqchip.irqchip = chip;
            e.u.irqchip.pin = pin;
            e
        };
        // KVM's defaults (irq_comm.c): the PICs and the I/O APIC for 0..=15, the I/O APIC
        // alone for 16..=23.
        for gsi in 0..24 {
            entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
            if gsi < 16 {
                let chip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                entries.push(irqchip(gsi, chip, gsi % 8));
            }
        }
        for (&gsi, m) in &state.msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = m.address_lo;
            e.u.msi.address_hi = m.address_hi;
            e.u.msi.data = m.data;
            entries.push(e);
        }
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("GSI routing table: {e:?}")))?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

impl InterruptRouter for KvmInterruptRouter {
    fn allocate_gsi(&self) -> io::Result<u32> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(gsi) = s.free.pop_first() {
            return Ok(gsi);
        }
        if s.next > MAX_GSI {
            return Err(io::Error::other("no GSI left for MSI routes"));
        }
        let gsi = s.next;
        s.next += 1;
        Ok(gsi)
    }

    fn release_gsi(&self, gsi: u32) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.msi.remove(&gsi).is_some() {
            let _ = self.commit(&s);
        }
        s.free.insert(gsi);
    }

    fn set_msi_route(&self, gsi: u32, message: &MsiMessage) -> io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.msi.insert(gsi, *message);
        self.commit(&s)
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()> {
        self.vm
            .register_irqfd(fd, gsi)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()> {
        self.vm
            .unregister_irqfd(fd, gsi)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn register_resample_irqfd(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> io::Result<()> {
        self.vm
            .register_irqfd_with_resample(fd, resample, gsi)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}
