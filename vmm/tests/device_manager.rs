//! The device manager on this host's KVM, without VFIO devices (those exist only in the
//! nested host): it puts the platform and PCI configuration space on buses that take
//! devices while shared, and a device that cannot come in leaves its slot, its id and the
//! VM as they were.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use std::sync::Arc;

use tessera_api::config::{DeviceConfig, VmConfig};
use tessera_vmm::console::SerialSink;
use tessera_vmm::device_manager::memory_slots::MemorySlots;
use tessera_vmm::device_manager::{DeviceError, DeviceManager};
use tessera_vmm::guest_topology::guest_topology;
use tessera_vmm::memory::{allocate, register};
use tessera_vmm::vm::VmEvents;
use vm_memory::GuestMemoryBackend;

fn config() -> VmConfig {
    let mut c: VmConfig = serde_json::from_str(
        r#"{"payload": {"kernel": "/k"}, "memory": {"size": 67108864},
            "serial": {"mode": "Null"}, "platform": {"num_pci_segments": 2},
            "devices": [{"path": "/nonexistent/a", "id": "a", "pci_device_id": 4}]}"#,
    )
    .unwrap();
    c.cpus.max_phys_bits = 40;
    c
}

#[test]
fn devices_that_cannot_come_in_leave_everything_as_it_was() {
    let c = config();
    let topology = guest_topology(&c, 40).unwrap();
    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm is needed for this test");
    let vm = Arc::new(kvm.create_vm().unwrap());
    vm.create_irq_chip().unwrap();
    let ram = allocate(&c, &topology.layout).unwrap();
    register(&vm, &ram).unwrap();
    let serial = SerialSink::open(&c).unwrap();
    let events = VmEvents::new().unwrap();
    let mut dm = DeviceManager::new(
        &vm,
        &ram,
        &topology.layout,
        topology.slots.clone(),
        MemorySlots::new(ram.num_regions() as u32, 32),
        topology.device_memory.clone(),
        &serial,
        &events,
    )
    .unwrap();

    // Configuration space answers on both segments' ECAM windows and on 0xCF8/0xCFC.
    let ecam = |seg: usize| topology.layout.segments[seg].ecam.start;
    let mut id = [0u8; 4];
    assert!(dm.mmio().read(ecam(0), &mut id));
    assert_eq!(u32::from_le_bytes(id), 0x0008_1b36, "the host bridge");
    assert!(dm.mmio().read(ecam(1), &mut id));
    assert_eq!(u32::from_le_bytes(id), u32::MAX, "segment 1 is empty");
    assert!(dm.pio().write(0xcf8, &0x8000_0000u32.to_le_bytes()));
    assert!(dm.pio().read(0xcfc, &mut id));
    assert_eq!(u32::from_le_bytes(id), 0x0008_1b36);

    let before = dm.slots().clone();
    assert_eq!(before.bdf_of("a").unwrap().to_string(), "0000:00:04.0");
    // The configured device: its host check fails, its reserved slot stays reserved.
    let e = dm.add_device(&c.devices[0]).unwrap_err();
    assert!(
        matches!(&e, DeviceError::Device { field, .. } if field == "path"),
        "{e}"
    );
    assert!(
        e.to_string().contains("/nonexistent/a does not exist"),
        "{e}"
    );
    // A new device, pinned and not: nothing is placed, no id generated stays taken.
    for pinned in [Some(9), None] {
        let d = DeviceConfig {
            pci_segment: 1,
            pci_device_id: pinned,
            ..DeviceConfig::new("/nonexistent/b")
        };
        assert!(dm.add_device(&d).is_err());
    }
    assert_eq!(dm.slots(), &before);
    assert!(dm.devices().is_empty());
    assert!(matches!(dm.remove_device("a"), Err(DeviceError::NotFound(id)) if id == "a"));
    // The buses are as they were: only the platform and configuration space.
    assert!(!dm.mmio().read(0xc000_0000, &mut id), "no BAR was placed");
}
