//! The state of a vCPU before its first `KVM_RUN`: CPUID (KVM's supported set with this
//! vCPU's APIC id and the guest's topology: one thread per core, all cores in one
//! package), the MSRs a kernel expects a boot loader to have set, the FPU, the local APIC's
//! LINT pins, and — for the boot CPU only — the registers, segments and page tables its
//! kernel entry point expects. Also the host's physical address width.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
    CpuId, Msrs, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::boot::{
    BootEntry, KernelKind, BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_COUNT, PDE_START,
    PDPTE_START, PML4_START,
};

/// Why a vCPU cannot be given its initial state.
#[derive(Debug, thiserror::Error)]
pub enum VcpuSetupError {
    /// The APIC id, CPU index and CPU count do not make a topology: `cpu_index` must be
    /// below `cpu_count`, and `apic_id` must fit in the core-id bits `cpu_count` needs
    /// (below `cpu_count` rounded up to a power of two).
    #[error("vCPU {cpu_index}: APIC id {apic_id} and {cpu_count} CPUs make no topology")]
    Topology {
        /// The vCPU's index.
        cpu_index: u32,
        /// Its APIC id.
        apic_id: u32,
        /// The number of vCPUs.
        cpu_count: u32,
    },
    /// The in-kernel local APIC's id is not the APIC id asked for. KVM gives a vCPU the
    /// APIC id it was created with (`create_vcpu(id)`).
    #[error("the vCPU's local APIC has id {lapic_id} but APIC id {apic_id} was asked for: create the vCPU with its APIC id")]
    ApicIdMismatch {
        /// The APIC id asked for.
        apic_id: u32,
        /// The local APIC's id (its low 8 bits: the xAPIC id register).
        lapic_id: u32,
    },
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("cannot get the CPUID KVM supports")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// More CPUID entries than KVM takes.
    #[error("too many CPUID entries")]
    CpuidEntries(#[source] vmm_sys_util::fam::Error),
    /// `KVM_SET_CPUID2` failed.
    #[error("cannot set the vCPU's CPUID")]
    SetCpuid(#[source] kvm_ioctls::Error),
    /// The MSR list cannot be built.
    #[error("too many MSR entries")]
    MsrEntries(#[source] vmm_sys_util::fam::Error),
    /// `KVM_SET_MSRS` failed.
    #[error("cannot set the vCPU's MSRs")]
    SetMsrs(#[source] kvm_ioctls::Error),
    /// KVM stopped at an MSR it does not accept.
    #[error("KVM refused MSR {index:#x}: {written} of {total} MSRs were set")]
    MsrRejected {
        /// The first MSR KVM did not set.
        index: u32,
        /// How many were set.
        written: usize,
        /// How many there are.
        total: usize,
    },
    /// `KVM_SET_FPU` failed.
    #[error("cannot set the vCPU's FPU state")]
    SetFpu(#[source] kvm_ioctls::Error),
    /// `KVM_GET_LAPIC` failed (is there an in-kernel irqchip?).
    #[error(
        "cannot get the vCPU's local APIC (an in-kernel irqchip must be created before the vCPUs)"
    )]
    GetLapic(#[source] kvm_ioctls::Error),
    /// `KVM_SET_LAPIC` failed.
    #[error("cannot set the vCPU's local APIC")]
    SetLapic(#[source] kvm_ioctls::Error),
    /// `KVM_GET_SREGS` failed.
    #[error("cannot get the vCPU's special registers")]
    GetSregs(#[source] kvm_ioctls::Error),
    /// `KVM_SET_SREGS` failed.
    #[error("cannot set the vCPU's special registers")]
    SetSregs(#[source] kvm_ioctls::Error),
    /// `KVM_SET_REGS` failed.
    #[error("cannot set the vCPU's registers")]
    SetRegs(#[source] kvm_ioctls::Error),
    /// A boot structure cannot be written to guest memory.
    #[error("cannot write the boot {what} at {addr:#x}")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// Where.
        addr: u64,
        /// Why.
        #[source]
        source: GuestMemoryError,
    },
}

// MSR indices.
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// `IA32_MISC_ENABLE.FAST_STRING`.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// `IA32_MTRR_DEF_TYPE`: MTRRs enabled (bit 11), default type write-back (6).
const MTRR_ENABLE_DEFAULT_WB: u64 = (1 << 11) | 6;

// Control register and EFER bits.
const CR0_PE: u64 = 1;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// CPUID bits.
const CPUID_1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
const CPUID_1_EDX_HTT: u32 = 1 << 28;
/// Intel VMX (leaf 1 ECX).
const CPUID_1_ECX_VMX: u32 = 1 << 5;
/// AMD SVM (leaf 0x8000_0001 ECX).
const CPUID_8000_0001_ECX_SVM: u32 = 1 << 2;
/// Extended topology level types (leaf 0xB/0x1F `ECX[15:8]`).
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

// Local APIC registers (offsets into `kvm_lapic_state.regs`) and LVT delivery modes.
const APIC_ID: usize = 0x20;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_DELIVERY_MODE_MASK: u32 = 0x700;
const APIC_MODE_NMI: u32 = 4 << 8;
const APIC_MODE_EXTINT: u32 = 7 << 8;

/// x87 control word after `FNINIT`.
const FPU_FCW: u16 = 0x37f;
/// MXCSR at reset: all exceptions masked.
const FPU_MXCSR: u32 = 0x1f80;

/// What the VM's configuration says about all its vCPUs' CPUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestCpus {
    /// vCPUs in the guest.
    pub count: u32,
    /// Physical address bits (0x8000_0008 `EAX[7:0]`), at most what KVM reports.
    pub phys_bits: u8,
    /// Whether the guest may run VMs itself: `false` hides VMX and SVM.
    pub nested: bool,
}

/// The guest's CPU topology as one vCPU sees it.
#[derive(Clone, Copy, Debug)]
struct Topology {
    apic_id: u32,
    cpu_count: u32,
    /// Bits of the x2APIC id that number the cores (threads are 0 bits wide).
    core_bits: u32,
}

impl Topology {
    fn new(cpu_index: u32, apic_id: u32, cpu_count: u32) -> Result<Self, VcpuSetupError> {
        let core_bits = match cpu_count {
            0 | 1 => 0,
            n => u32::BITS - (n - 1).leading_zeros(),
        };
        if cpu_count == 0 || cpu_index >= cpu_count || apic_id.checked_shr(core_bits) != Some(0) {
            return Err(VcpuSetupError::Topology {
                cpu_index,
                apic_id,
                cpu_count,
            });
        }
        Ok(Topology {
            apic_id,
            cpu_count,
            core_bits,
        })
    }
}

/// Sets CPUID (from `kvm.get_supported_cpuid`, see below), MSRs (SYSENTER_CS/ESP/EIP,
/// STAR, LSTAR, CSTAR, SYSCALL_MASK, KERNEL_GS_BASE, TSC, MISC_ENABLE with fast strings,
/// MTRRdefType write-back enabled), the FPU (fcw 0x37f, mxcsr 0x1f80) and the local APIC
/// (LINT0 ExtINT, LINT1 NMI); and, if `boot` is given (the boot CPU), the registers,
/// segments and page tables for the entry:
///
/// - bzImage: 64-bit long mode, GDT at [`GDT_START`] (CS 0x10, DS/ES/FS/GS/SS 0x18, TR
///   0x08), an empty IDT at [`IDT_START`], page tables at [`PML4_START`] identity-mapping
///   the first 4 GiB with 2 MiB pages, CR0 PE|PG (caches on), CR4 PAE, EFER LME|LMA,
///   rip = entry, rsi = params, rsp = rbp = [`BOOT_STACK_POINTER`], rflags 2.
/// - PVH: 32-bit protected mode, paging off, flat 4 GiB CS/DS (same GDT slots),
///   rip = entry, rbx = params, rflags 2.
///
/// Application processors (`boot` = `None`) keep their reset registers: the kernel starts
/// them with INIT/SIPI through the in-kernel local APIC.
///
/// CPUID changes from KVM's supported set: leaf 1 `EBX[31:24]` = APIC id, `EBX[23:16]` =
/// `guest.count`, EDX HTT, ECX hypervisor bit and TSC deadline (if KVM has
/// `KVM_CAP_TSC_DEADLINE_TIMER`); leaves 0xB and 0x1F describe one thread per core and
/// `guest.count` cores in one package, EDX = the x2APIC id; leaf 4 (and AMD's 0x8000_001D)
/// cores per package and threads sharing each cache (one: every cache is per core); on AMD
/// 0x8000_0008 ECX core count and 0x8000_001E the extended APIC id; 0x8000_0008 `EAX[7:0]`
/// (and a non-zero `EAX[23:16]`) at most `guest.phys_bits`; VMX (leaf 1) and SVM
/// (0x8000_0001) cleared unless `guest.nested`; the KVM leaves 0x4000_0000.. as KVM
/// reports them.
///
/// The vCPU must have been created with `apic_id` as its KVM id (KVM gives its local APIC
/// that id) in a VM with an in-kernel irqchip, and must not have run yet.
pub fn configure_vcpu(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    cpu_index: u32,
    apic_id: u32,
    guest: GuestCpus,
    boot: Option<&BootEntry>,
) -> Result<(), VcpuSetupError> {
    let cpu_count = guest.count;
    let topology = Topology::new(cpu_index, apic_id, cpu_count)?;
    let lapic = vcpu.get_lapic().map_err(VcpuSetupError::GetLapic)?;
    let lapic_id = lapic_reg(&lapic, APIC_ID) >> 24;
    if lapic_id != apic_id & 0xff {
        return Err(VcpuSetupError::ApicIdMismatch { apic_id, lapic_id });
    }

    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VcpuSetupError::SupportedCpuid)?;
    let entries = patch_cpuid(
        supported.as_slice(),
        topology,
        kvm.check_extension(Cap::TscDeadlineTimer),
        guest,
    );
    let cpuid = CpuId::from_entries(&entries).map_err(VcpuSetupError::CpuidEntries)?;
    vcpu.set_cpuid2(&cpuid).map_err(VcpuSetupError::SetCpuid)?;

    set_msrs(vcpu)?;
    vcpu.set_fpu(&kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: FPU_MXCSR,
        ..Default::default()
    })
    .map_err(VcpuSetupError::SetFpu)?;

    if let Some(boot) = boot {
        setup_boot_registers(vcpu, mem, boot)?;
    }

    let mut lapic = vcpu.get_lapic().map_err(VcpuSetupError::GetLapic)?;
    let lvt0 = lapic_reg(&lapic, APIC_LVT0);
    let lvt1 = lapic_reg(&lapic, APIC_LVT1);
    set_lapic_reg(
        &mut lapic,
        APIC_LVT0,
        (lvt0 & !APIC_DELIVERY_MODE_MASK) | APIC_MODE_EXTINT,
    );
    set_lapic_reg(
        &mut lapic,
        APIC_LVT1,
        (lvt1 & !APIC_DELIVERY_MODE_MASK) | APIC_MODE_NMI,
    );
    vcpu.set_lapic(&lapic).map_err(VcpuSetupError::SetLapic)?;

    tracing::debug!(
        cpu_index,
        apic_id,
        cpu_count,
        boot = ?boot.map(|b| b.kind),
        "vCPU configured"
    );
    Ok(())
}

/// The host CPU's physical address bits (CPUID 0x8000_0008 `EAX[7:0]`) for laying out the
/// guest; a guest gets the same width. 36 if the CPU does not say.
pub fn host_phys_bits() -> u8 {
    // CPUID traps to the hypervisor when the VMM itself runs in a VM (several µs each
    // on a nested KVM), and the answer never changes: ask once.
    static BITS: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *BITS.get_or_init(|| {
        use std::arch::x86_64::__cpuid;
        if __cpuid(0x8000_0000).eax >= 0x8000_0008 {
            match (__cpuid(0x8000_0008).eax & 0xff) as u8 {
                0 => 36,
                bits => bits,
            }
        } else {
            36
        }
    })
}

/// An entry of a leaf whose subleaf (`index`) matters.
fn indexed_entry(
    function: u32,
    index: u32,
    eax: u32,
    ebx: u32,
    ecx: u32,
    edx: u32,
) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    }
}

/// KVM's supported CPUID with this vCPU's APIC id and the guest's topology.
fn patch_cpuid(
    supported: &[kvm_cpuid_entry2],
    topo: Topology,
    tsc_deadline: bool,
    guest: GuestCpus,
) -> Vec<kvm_cpuid_entry2> {
    let Topology {
        apic_id,
        cpu_count,
        core_bits,
    } = topo;
    let is_amd = supported.iter().any(|e| {
        e.function == 0
            && matches!(
                (e.ebx, e.edx, e.ecx),
                // "AuthenticAMD", "HygonGenuine"
                (0x6874_7541, 0x6974_6e65, 0x444d_4163) | (0x6f67_7948, 0x6e65_476e, 0x656e_6975)
            )
    });
    // Threads sharing each cache, minus one: every cache, L3 included, is per core, as
    // with QEMU's default of one socket per vCPU. An L3 shared by cores that NUMA puts in
    // different nodes makes Linux warn (topology_sane) and ignore the sharing, and which
    // vCPUs share a node is the configuration's choice, not the APIC ids'. (On AMD family
    // 17h models up to 0x1f Linux ignores these leaves and takes APIC id >> 3 as the LLC.)
    let sharing_minus_one = |_level: u32| 0u32;

    let mut out: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .filter(|e| e.function != 0xb && e.function != 0x1f)
        .copied()
        .collect();
    for e in &mut out {
        match e.function {
            // The topology leaves must be visible.
            0 => e.eax = e.eax.max(0xb),
            1 => {
                e.ebx = (e.ebx & 0xffff) | ((apic_id & 0xff) << 24) | (cpu_count.min(0xff) << 16);
                e.ecx |= CPUID_1_ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= CPUID_1_ECX_TSC_DEADLINE;
                }
                e.edx |= CPUID_1_EDX_HTT;
                if !guest.nested {
                    e.ecx &= !CPUID_1_ECX_VMX;
                }
            }
            0x8000_0001 if !guest.nested => e.ecx &= !CPUID_8000_0001_ECX_SVM,
            // Deterministic cache parameters (cache type 0: no more caches).
            4 if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                e.eax = (e.eax & 0x3fff)
                    | (sharing_minus_one(level) << 14)
                    | ((cpu_count - 1).min(0x3f) << 26);
            }
            0x8000_001d if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                e.eax = (e.eax & !(0xfff << 14)) | (sharing_minus_one(level) << 14);
            }
            0x8000_0008 => {
                // PhysAddrSize [7:0], never wider than KVM offers; GuestPhysAddrSize
                // [23:16] (0: same as [7:0]) likewise.
                let narrow = |bits: u32| match bits {
                    0 => 0,
                    b => b.min(u32::from(guest.phys_bits)),
                };
                let phys = narrow(e.eax & 0xff);
                let guest_phys = narrow((e.eax >> 16) & 0xff);
                e.eax = (e.eax & 0xff00_ff00) | phys | (guest_phys << 16);
                if is_amd {
                    // ApicIdCoreIdSize [15:12], NC (cores - 1) [7:0].
                    e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (cpu_count - 1).min(0xff);
                }
            }
            0x8000_001e => {
                // Extended APIC id; core id with one thread per core; node 0 of 1.
                e.eax = apic_id;
                e.ebx = (e.ebx & !0xffff) | (apic_id & 0xff);
                e.ecx &= !0x7ff;
            }
            _ => {}
        }
    }
    for leaf in [0xb, 0x1f] {
        out.push(indexed_entry(
            leaf,
            0,
            0,
            1,
            TOPOLOGY_LEVEL_SMT << 8,
            apic_id,
        ));
        out.push(indexed_entry(
            leaf,
            1,
            core_bits,
            cpu_count & 0xffff,
            (TOPOLOGY_LEVEL_CORE << 8) | 1,
            apic_id,
        ));
        // Level type 0: no more levels.
        out.push(indexed_entry(leaf, 2, 0, 0, 2, apic_id));
    }
    out
}

/// Sets the MSRs; every one of them must be taken.
fn set_msrs(vcpu: &VcpuFd) -> Result<(), VcpuSetupError> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_LSTAR, 0),
        (MSR_CSTAR, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_DEFAULT_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(VcpuSetupError::MsrEntries)?;
    let written = vcpu.set_msrs(&msrs).map_err(VcpuSetupError::SetMsrs)?;
    if written != entries.len() {
        return Err(VcpuSetupError::MsrRejected {
            index: entries.get(written).map_or(0, |e| e.index),
            written,
            total: entries.len(),
        });
    }
    Ok(())
}

/// A GDT descriptor.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0xf0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The segment register a descriptor loads, as KVM wants it (limit in bytes).
fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let g = bit(55);
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// GDT slot of the TSS (selector 0x08).
const GDT_TSS: u16 = 1;
/// GDT slot of the code segment (selector 0x10, Linux's `__BOOT_CS`).
const GDT_CODE: u16 = 2;
/// GDT slot of the data segment (selector 0x18, Linux's `__BOOT_DS`).
const GDT_DATA: u16 = 3;

/// Writes `bytes` to guest memory.
fn write_guest(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), VcpuSetupError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| VcpuSetupError::GuestMemory { what, addr, source })
}

/// The boot page tables: PML4, PDPT and [`PDE_COUNT`] page directories, contiguous from
/// [`PML4_START`], identity-mapping `PDE_COUNT` GiB with 2 MiB pages.
fn page_tables() -> Vec<u8> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    let mut tables = vec![0u64; 512 * (2 + PDE_COUNT as usize)];
    if let Some(pml4e) = tables.first_mut() {
        *pml4e = PDPTE_START | PRESENT_RW;
    }
    for (i, pdpte) in tables
        .iter_mut()
        .skip(512)
        .take(PDE_COUNT as usize)
        .enumerate()
    {
        *pdpte = (PDE_START + i as u64 * 0x1000) | PRESENT_RW;
    }
    for (i, pde) in tables.iter_mut().skip(1024).enumerate() {
        *pde = ((i as u64) << 21) | PRESENT_RW | PAGE_SIZE_2M;
    }
    tables.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// Registers, segments, GDT, IDT and (for long mode) page tables of the boot CPU.
fn setup_boot_registers(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    boot: &BootEntry,
) -> Result<(), VcpuSetupError> {
    let code = match boot.kind {
        // 64-bit code: G, L, P, S, execute/read accessed.
        KernelKind::BzImage => gdt_entry(0xa09b, 0, 0xfffff),
        // 32-bit code: G, D, P, S, execute/read accessed.
        KernelKind::Pvh => gdt_entry(0xc09b, 0, 0xfffff),
    };
    let gdt = [
        0,
        // Busy TSS, base 0, limit 0x67.
        gdt_entry(0x008b, 0, 0x67),
        code,
        // Data: G, B, P, S, read/write accessed.
        gdt_entry(0xc093, 0, 0xfffff),
    ];
    let gdt_bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    write_guest(mem, "GDT", GDT_START, &gdt_bytes)?;
    write_guest(mem, "IDT", IDT_START, &0u64.to_le_bytes())?;

    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(VcpuSetupError::GetSregs)?;
    let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), GDT_DATA);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (gdt_bytes.len() - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = segment_from_gdt(code, GDT_CODE);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt_entry(0x008b, 0, 0x67), GDT_TSS);

    let regs = match boot.kind {
        KernelKind::BzImage => {
            write_guest(mem, "page tables", PML4_START, &page_tables())?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_PG) & !(CR0_CD | CR0_NW);
            sregs.efer |= EFER_LME | EFER_LMA;
            kvm_regs {
                rflags: 2,
                rip: boot.entry,
                rsi: boot.params,
                rsp: BOOT_STACK_POINTER,
                rbp: BOOT_STACK_POINTER,
                ..Default::default()
            }
        }
        KernelKind::Pvh => {
            sregs.cr0 = (sregs.cr0 | CR0_PE) & !(CR0_PG | CR0_CD | CR0_NW);
            sregs.cr4 = 0;
            sregs.efer &= !(EFER_LME | EFER_LMA);
            kvm_regs {
                rflags: 2,
                rip: boot.entry,
                rbx: boot.params,
                ..Default::default()
            }
        }
    };
    vcpu.set_sregs(&sregs).map_err(VcpuSetupError::SetSregs)?;
    vcpu.set_regs(&regs).map_err(VcpuSetupError::SetRegs)?;
    Ok(())
}

/// A 32-bit local APIC register (0 if `offset` is out of the page).
fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    if let Some(regs) = lapic.regs.get(offset..offset + 4) {
        for (b, r) in bytes.iter_mut().zip(regs) {
            *b = *r as u8;
        }
    }
    u32::from_le_bytes(bytes)
}

/// Sets a 32-bit local APIC register (nothing if `offset` is out of the page).
fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    if let Some(regs) = lapic.regs.get_mut(offset..offset + 4) {
        for (r, b) in regs.iter_mut().zip(value.to_le_bytes()) {
            *r = b as std::os::raw::c_char;
        }
    }
}

#[cfg(test)]
mod tests {
    use kvm_ioctls::VmFd;

    use super::*;
    use crate::boot::{KERNEL_START, ZERO_PAGE_START};

    /// `count` vCPUs with the host's CPUID as KVM offers it: no narrowing, VMX/SVM as
    /// the host has them.
    fn host(count: u32) -> GuestCpus {
        GuestCpus {
            count,
            phys_bits: u8::MAX,
            nested: true,
        }
    }

    fn kvm() -> Kvm {
        Kvm::new().unwrap_or_else(|e| {
            panic!("these tests need /dev/kvm (read/write) and do not skip without it: {e}")
        })
    }

    /// A VM with an in-kernel irqchip and `count` vCPUs (ids 0..count).
    fn vm_with_vcpus(kvm: &Kvm, count: u64) -> (VmFd, Vec<VcpuFd>) {
        let vm = kvm.create_vm().unwrap();
        vm.set_tss_address(0xfffb_d000).unwrap();
        vm.create_irq_chip().unwrap();
        let vcpus = (0..count).map(|id| vm.create_vcpu(id).unwrap()).collect();
        (vm, vcpus)
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    fn cpuid_entry(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("no CPUID leaf {function:#x}.{index}"))
    }

    /// Walks the guest page tables like the MMU would (4-level, 2 MiB or 4 KiB pages).
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let read = |a: u64| -> u64 { mem.read_obj(GuestAddress(a)).unwrap() };
        let addr_mask = 0x000f_ffff_ffff_f000u64;
        let pml4e = read((cr3 & addr_mask) + ((va >> 39) & 511) * 8);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = read((pml4e & addr_mask) + ((va >> 30) & 511) * 8);
        if pdpte & 1 == 0 {
            return None;
        }
        if pdpte & 0x80 != 0 {
            return Some((pdpte & 0x000f_ffff_c000_0000) | (va & 0x3fff_ffff));
        }
        let pde = read((pdpte & addr_mask) + ((va >> 21) & 511) * 8);
        if pde & 1 == 0 {
            return None;
        }
        if pde & 0x80 != 0 {
            return Some((pde & 0x000f_ffff_ffe0_0000) | (va & 0x1f_ffff));
        }
        let pte = read((pde & addr_mask) + ((va >> 12) & 511) * 8);
        (pte & 1 != 0).then_some((pte & addr_mask) | (va & 0xfff))
    }

    fn msr_values(vcpu: &VcpuFd, indices: &[u32]) -> Vec<u64> {
        let entries: Vec<kvm_msr_entry> = indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).unwrap();
        assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), indices.len());
        msrs.as_slice().iter().map(|e| e.data).collect()
    }

    fn check_common(kvm: &Kvm, vcpu: &VcpuFd, apic_id: u32, cpu_count: u32) {
        let cpuid = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
        let leaf1 = cpuid_entry(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 24, apic_id);
        assert_eq!((leaf1.ebx >> 16) & 0xff, cpu_count);
        assert_ne!(leaf1.ecx & CPUID_1_ECX_HYPERVISOR, 0);
        assert_ne!(leaf1.edx & CPUID_1_EDX_HTT, 0);
        assert_eq!(
            leaf1.ecx & CPUID_1_ECX_TSC_DEADLINE != 0,
            kvm.check_extension(Cap::TscDeadlineTimer)
        );
        for leaf in [0xb, 0x1f] {
            let smt = cpuid_entry(&cpuid, leaf, 0);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, apic_id));
            let core = cpuid_entry(&cpuid, leaf, 1);
            let bits = u32::BITS - (cpu_count - 1).leading_zeros();
            assert_eq!(
                (core.eax, core.ebx, core.ecx, core.edx),
                (bits, cpu_count, 0x201, apic_id)
            );
            let end = cpuid_entry(&cpuid, leaf, 2);
            assert_eq!((end.ecx >> 8) & 0xff, 0);
            assert_eq!(end.edx, apic_id);
        }
        // The KVM leaves are KVM's.
        let kvm_leaf = cpuid_entry(&cpuid, 0x4000_0000, 0);
        let sig: Vec<u8> = [kvm_leaf.ebx, kvm_leaf.ecx, kvm_leaf.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&sig[..9], b"KVMKVMKVM");
        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        assert_eq!(
            cpuid_entry(&cpuid, 0x4000_0001, 0).eax,
            cpuid_entry(&supported, 0x4000_0001, 0).eax
        );

        let values = msr_values(
            vcpu,
            &[
                MSR_IA32_SYSENTER_CS,
                MSR_IA32_SYSENTER_ESP,
                MSR_IA32_SYSENTER_EIP,
                MSR_STAR,
                MSR_LSTAR,
                MSR_CSTAR,
                MSR_SYSCALL_MASK,
                MSR_KERNEL_GS_BASE,
                MSR_IA32_MISC_ENABLE,
                MSR_MTRR_DEF_TYPE,
            ],
        );
        assert_eq!(&values[..8], &[0; 8]);
        assert_ne!(values[8] & MISC_ENABLE_FAST_STRING, 0);
        assert_eq!(values[9], 0x806);

        assert_eq!(vcpu.get_fpu().unwrap().fcw, 0x37f);
        // KVM_GET_FPU reports MXCSR as 0 on this host's KVM; the XSAVE area has it (FXSAVE
        // layout: MXCSR is the 32-bit word at byte 24).
        assert_eq!(vcpu.get_xsave().unwrap().region[6], 0x1f80);

        let lapic = vcpu.get_lapic().unwrap();
        assert_eq!(lapic_reg(&lapic, APIC_ID) >> 24, apic_id);
        assert_eq!(
            lapic_reg(&lapic, APIC_LVT0) & APIC_DELIVERY_MODE_MASK,
            7 << 8
        );
        assert_eq!(
            lapic_reg(&lapic, APIC_LVT1) & APIC_DELIVERY_MODE_MASK,
            4 << 8
        );
    }

    #[test]
    fn boot_cpu_enters_long_mode_and_the_ap_stays_in_reset() {
        let kvm = kvm();
        let (_vm, vcpus) = vm_with_vcpus(&kvm, 2);
        let mem = memory();
        let boot = BootEntry {
            kind: KernelKind::BzImage,
            entry: KERNEL_START + 0x200,
            params: ZERO_PAGE_START,
        };
        configure_vcpu(&kvm, &vcpus[0], &mem, 0, 0, host(2), Some(&boot)).unwrap();
        configure_vcpu(&kvm, &vcpus[1], &mem, 1, 1, host(2), None).unwrap();

        let s = vcpus[0].get_sregs().unwrap();
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.cr0 & (CR0_CD | CR0_NW), 0);
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(
            (s.cs.l, s.cs.db, s.cs.selector, s.cs.present),
            (1, 0, 0x10, 1)
        );
        for seg in [s.ds, s.es, s.ss, s.fs, s.gs] {
            assert_eq!((seg.selector, seg.base, seg.limit), (0x18, 0, 0xffff_ffff));
        }
        assert_eq!((s.tr.selector, s.tr.type_, s.tr.limit), (0x08, 0xb, 0x67));
        assert_eq!((s.gdt.base, s.gdt.limit), (GDT_START, 31));
        assert_eq!((s.idt.base, s.idt.limit), (IDT_START, 7));
        let r = vcpus[0].get_regs().unwrap();
        assert_eq!(r.rip, KERNEL_START + 0x200);
        assert_eq!(r.rsi, ZERO_PAGE_START);
        assert_eq!((r.rsp, r.rbp, r.rflags), (0x8ff0, 0x8ff0, 2));

        // The GDT in memory is what the segment registers hold.
        let code: u64 = mem.read_obj(GuestAddress(GDT_START + 0x10)).unwrap();
        assert_eq!(segment_from_gdt(code, 2), s.cs);
        // Identity mapping of the first 4 GiB.
        for va in [
            0u64,
            0x7000,
            0x1234_5678,
            0x100_0200,
            0xbfff_ffff,
            0xffff_f000,
        ] {
            assert_eq!(translate(&mem, s.cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, s.cr3, 1 << 32), None);

        // The AP keeps its reset state.
        let s = vcpus[1].get_sregs().unwrap();
        assert_eq!(s.cr0 & CR0_PE, 0);
        assert_eq!(s.cs.selector, 0xf000);
        assert_eq!(vcpus[1].get_regs().unwrap().rip, 0xfff0);

        check_common(&kvm, &vcpus[0], 0, 2);
        check_common(&kvm, &vcpus[1], 1, 2);
    }

    #[test]
    fn pvh_boot_cpu_enters_32bit_protected_mode() {
        let kvm = kvm();
        let (_vm, vcpus) = vm_with_vcpus(&kvm, 1);
        let mem = memory();
        let boot = BootEntry {
            kind: KernelKind::Pvh,
            entry: 0x100_0850,
            params: ZERO_PAGE_START,
        };
        configure_vcpu(&kvm, &vcpus[0], &mem, 0, 0, host(1), Some(&boot)).unwrap();
        let s = vcpus[0].get_sregs().unwrap();
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG | CR0_CD | CR0_NW), CR0_PE);
        assert_eq!(s.cr4, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), 0);
        assert_eq!(
            (s.cs.l, s.cs.db, s.cs.base, s.cs.limit),
            (0, 1, 0, 0xffff_ffff)
        );
        assert_eq!((s.ds.db, s.ds.base, s.ds.limit), (1, 0, 0xffff_ffff));
        let r = vcpus[0].get_regs().unwrap();
        assert_eq!((r.rip, r.rbx, r.rflags), (0x100_0850, ZERO_PAGE_START, 2));
        check_common(&kvm, &vcpus[0], 0, 1);
    }

    #[test]
    fn bad_topologies_and_apic_ids() {
        let kvm = kvm();
        let (_vm, vcpus) = vm_with_vcpus(&kvm, 2);
        let mem = memory();
        for (index, apic_id, count) in [(0, 0, 0), (2, 0, 2), (1, 2, 2), (0, 1, 1)] {
            assert!(
                matches!(
                    configure_vcpu(&kvm, &vcpus[0], &mem, index, apic_id, host(count), None),
                    Err(VcpuSetupError::Topology { .. })
                ),
                "{index} {apic_id} {count}"
            );
        }
        // vCPU 1's local APIC has id 1.
        assert!(matches!(
            configure_vcpu(&kvm, &vcpus[1], &mem, 1, 0, host(2), None),
            Err(VcpuSetupError::ApicIdMismatch {
                apic_id: 0,
                lapic_id: 1
            })
        ));
    }

    #[test]
    fn no_irqchip_is_a_clear_error() {
        let kvm = kvm();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let err = configure_vcpu(&kvm, &vcpu, &memory(), 0, 0, host(1), None).unwrap_err();
        assert!(matches!(err, VcpuSetupError::GetLapic(_)), "{err:?}");
    }

    #[test]
    fn topology_leaves_for_many_cpus() {
        let supported = [
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0x10,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xff02_0800,
                ..Default::default()
            },
            // L1 data and L3 caches.
            kvm_cpuid_entry2 {
                function: 4,
                index: 0,
                eax: 0x21,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 4,
                index: 1,
                eax: 0x63,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 4,
                index: 2,
                ..Default::default()
            },
            // A stale topology leaf is replaced.
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 7,
                ..Default::default()
            },
        ];
        let topo = Topology::new(4, 37, 48).unwrap();
        let out = patch_cpuid(&supported, topo, false, host(48));
        let find = |f: u32, i: u32| {
            *out.iter()
                .find(|e| e.function == f && e.index == i)
                .unwrap()
        };
        assert_eq!(find(1, 0).ebx, (37 << 24) | (48 << 16) | 0x0800);
        assert_eq!(find(4, 0).eax, 0x21 | (47 << 26));
        // L3 per core, like every cache: no threads share it.
        assert_eq!(find(4, 1).eax, 0x63 | (47 << 26));
        assert_eq!(find(4, 2).eax, 0);
        assert_eq!(find(0xb, 1).eax, 6);
        assert_eq!(find(0xb, 1).ebx, 48);
        assert!(!out.iter().any(|e| e.function == 0xb && e.index == 7));
        assert_eq!(out.iter().filter(|e| e.function == 0x1f).count(), 3);
        assert!(Topology::new(0, 64, 48).is_err());
        assert!(Topology::new(0, 63, 48).is_ok());
    }

    #[test]
    fn phys_bits_are_narrowed_and_nesting_hidden() {
        let supported = [
            kvm_cpuid_entry2 {
                function: 1,
                ecx: CPUID_1_ECX_VMX | 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x8000_0001,
                ecx: CPUID_8000_0001_ECX_SVM | 1,
                ..Default::default()
            },
            // 48 physical bits, 57 linear, 48 guest-physical.
            kvm_cpuid_entry2 {
                function: 0x8000_0008,
                eax: 0x0030_3930,
                ..Default::default()
            },
        ];
        let topo = Topology::new(0, 0, 1).unwrap();
        let find =
            |out: &[kvm_cpuid_entry2], f: u32| *out.iter().find(|e| e.function == f).unwrap();
        let narrow = GuestCpus {
            count: 1,
            phys_bits: 40,
            nested: false,
        };
        let out = patch_cpuid(&supported, topo, false, narrow);
        assert_eq!(find(&out, 0x8000_0008).eax, 0x0028_3928);
        assert_eq!(find(&out, 1).ecx & (CPUID_1_ECX_VMX | 1), 1);
        assert_eq!(find(&out, 0x8000_0001).ecx, 1);
        // Never wider than KVM offers; nesting kept as offered.
        let out = patch_cpuid(&supported, topo, false, host(1));
        assert_eq!(find(&out, 0x8000_0008).eax, 0x0030_3930);
        assert_ne!(find(&out, 1).ecx & CPUID_1_ECX_VMX, 0);
        assert_eq!(find(&out, 0x8000_0001).ecx, CPUID_8000_0001_ECX_SVM | 1);
        // A zero GuestPhysAddrSize stays zero (it means "as PhysAddrSize").
        let mut zero = supported;
        zero[2].eax = 0x3030;
        let out = patch_cpuid(&zero, topo, false, narrow);
        assert_eq!(find(&out, 0x8000_0008).eax, 0x3028);
    }

    #[test]
    fn the_guest_cpuid_reaches_a_real_vcpu() {
        let kvm = kvm();
        let (_vm, vcpus) = vm_with_vcpus(&kvm, 1);
        let guest = GuestCpus {
            count: 1,
            phys_bits: 39,
            nested: false,
        };
        configure_vcpu(&kvm, &vcpus[0], &memory(), 0, 0, guest, None).unwrap();
        let cpuid = vcpus[0].get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let offered = cpuid_entry(&supported, 0x8000_0008, 0).eax & 0xff;
        assert_eq!(
            cpuid_entry(&cpuid, 0x8000_0008, 0).eax & 0xff,
            offered.min(39)
        );
        assert_eq!(cpuid_entry(&cpuid, 1, 0).ecx & CPUID_1_ECX_VMX, 0);
        assert_eq!(
            cpuid_entry(&cpuid, 0x8000_0001, 0).ecx & CPUID_8000_0001_ECX_SVM,
            0
        );
        check_common(&kvm, &vcpus[0], 0, 1);
    }

    #[test]
    fn host_phys_bits_is_plausible() {
        let bits = host_phys_bits();
        assert!((36..=52).contains(&bits), "{bits}");
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let line = cpuinfo
            .lines()
            .find(|l| l.starts_with("address sizes"))
            .unwrap();
        assert!(line.contains(&format!(": {bits} bits physical")), "{line}");
    }
}
