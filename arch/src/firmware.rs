//! The only firmware a guest gets: a real-mode stub at the x86 reset vector.
//!
//! Linux reboots a hardware-reduced ACPI machine without EFI by jumping to the BIOS
//! reset vector (F000:FFF0) in real mode (`machine_real_restart`), which is also its
//! last resort after the ACPI reset register and the keyboard controller. There is no
//! BIOS here, so the stub does what the ACPI reset register does: it writes the reset
//! value to the reset port, and the VMM reboots the VM.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Physical address of the reset vector (CS base 0xF0000 + IP 0xFFF0).
pub const RESET_VECTOR: u64 = 0xffff0;

/// Why the stub could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing the reset vector stub at {RESET_VECTOR:#x}: {0}")]
pub struct FirmwareError(#[from] vm_memory::GuestMemoryError);

/// The stub's code: `mov al, value; mov dx, port; out dx, al; hlt; jmp $-1`.
pub fn reset_stub(port: u16, value: u8) -> [u8; 9] {
    let [lo, hi] = port.to_le_bytes();
    [0xb0, value, 0xba, lo, hi, 0xee, 0xf4, 0xeb, 0xfd]
}

/// Writes the stub at [`RESET_VECTOR`].
pub fn write_reset_vector(
    mem: &GuestMemoryMmap,
    port: u16,
    value: u8,
) -> Result<(), FirmwareError> {
    mem.write_slice(&reset_stub(port, value), GuestAddress(RESET_VECTOR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::{Kvm, VcpuExit};
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn the_stub_is_the_documented_code() {
        assert_eq!(
            reset_stub(0x3c0, 1),
            [0xb0, 0x01, 0xba, 0xc0, 0x03, 0xee, 0xf4, 0xeb, 0xfd]
        );
    }

    /// Runs the stub on a real vCPU from the reset state a guest jumps to: the first
    /// exit must be the reset write.
    #[test]
    #[allow(unsafe_code)]
    fn a_vcpu_at_the_reset_vector_writes_the_reset_value() {
        let kvm = Kvm::new().expect("/dev/kvm is needed for this test");
        let vm = kvm.create_vm().unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        for (slot, r) in mem.iter().enumerate() {
            let region = kvm_bindings::kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
            };
            // SAFETY: the region belongs to `mem`, which outlives the VM in this test.
            unsafe { vm.set_user_memory_region(region) }.unwrap();
        }
        write_reset_vector(&mem, 0x3c0, 1).unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.cs.selector = 0xf000;
        sregs.cs.base = 0xf0000;
        vcpu.set_sregs(&sregs).unwrap();
        let mut regs = vcpu.get_regs().unwrap();
        regs.rip = 0xfff0;
        regs.rflags = 2;
        vcpu.set_regs(&regs).unwrap();
        match vcpu.run().unwrap() {
            VcpuExit::IoOut(port, data) => assert_eq!((port, data.to_vec()), (0x3c0, vec![1])),
            other => panic!("expected the reset write, got {other:?}"),
        }
    }
}
