#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;

#[test]
fn every_role_compiles_in_every_mode() {
    for role in ThreadRole::ALL {
        for mismatch in [
            SeccompAction::Trap,
            SeccompAction::Log,
            SeccompAction::KillProcess,
        ] {
            let bpf = compile(role, mismatch.clone()).unwrap();
            assert!(!bpf.is_empty(), "{role} {mismatch:?}");
            // The kernel takes at most 4096 instructions per program (BPF_MAXINSNS).
            assert!(bpf.len() < 4096, "{role}: {} instructions", bpf.len());
        }
    }
}

#[test]
fn the_forbidden_syscall_is_in_no_filter() {
    for role in ThreadRole::ALL {
        assert!(
            !role.syscalls().contains(&FORBIDDEN_SYSCALL),
            "{role} allows the self-test's syscall"
        );
    }
}

#[test]
fn every_rule_says_why() {
    for role in ThreadRole::ALL {
        for allow in role.rules() {
            assert!(
                allow.why.len() >= 8,
                "{role}: syscall {} has no reason",
                allow.nr
            );
            if let Only::Arg(_, values) = allow.only {
                assert!(!values.is_empty(), "{role}: syscall {}", allow.nr);
                for (_, name) in values {
                    assert!(!name.is_empty());
                }
            }
        }
    }
}

#[test]
fn vcpus_and_serial_input_are_narrower_than_the_control_loop() {
    // They start under the control loop's filter: anything they need that it refuses
    // would be refused whatever their own filter says.
    let control = ThreadRole::Control.syscalls();
    for role in [ThreadRole::Vcpu, ThreadRole::SerialInput] {
        let extra: Vec<i64> = role.syscalls().difference(&control).copied().collect();
        assert!(
            extra.is_empty(),
            "{role} needs {extra:?} the control loop refuses"
        );
    }
    let ioctls = |role: ThreadRole| -> BTreeSet<u64> {
        role.rules()
            .filter(|a| a.nr == libc::SYS_ioctl)
            .flat_map(|a| match a.only {
                Only::Arg(_, values) => values.iter().map(|v| v.0).collect(),
                Only::Any => vec![],
            })
            .collect()
    };
    let control = ioctls(ThreadRole::Control);
    for role in [ThreadRole::Vcpu, ThreadRole::SerialInput] {
        let extra: Vec<String> = ioctls(role)
            .difference(&control)
            .map(|r| format!("{r:#x}"))
            .collect();
        assert!(
            extra.is_empty(),
            "{role} needs ioctls {extra:?} the control loop refuses"
        );
    }
}

#[test]
fn ioctl_numbers_match_the_kernel_headers() {
    // Spot checks against values in <linux/kvm.h> and <linux/vfio.h>.
    assert_eq!(io(KVMIO, 0x80), 0xae80); // KVM_RUN
    assert_eq!(io(KVMIO, 0x01), 0xae01); // KVM_CREATE_VM
    assert_eq!(
        iow(KVMIO, 0x46, size_of::<kb::kvm_userspace_memory_region>()),
        0x4020_ae46
    ); // KVM_SET_USER_MEMORY_REGION
    assert_eq!(iow(KVMIO, 0x76, size_of::<kb::kvm_irqfd>()), 0x4020_ae76); // KVM_IRQFD
    assert_eq!(
        iow(KVMIO, 0x6a, size_of::<kb::kvm_irq_routing>()),
        0x4008_ae6a
    );
    assert_eq!(ior(KVMIO, 0x81, size_of::<kb::kvm_regs>()), 0x8090_ae81); // KVM_GET_REGS
    assert_eq!(iowr(KVMIO, 0x05, size_of::<kb::kvm_cpuid2>()), 0xc008_ae05);
    assert_eq!(vfio(13), 0x3b71); // VFIO_IOMMU_MAP_DMA
    assert_eq!(vfio(6), 0x3b6a); // VFIO_GROUP_GET_DEVICE_FD
}

#[test]
fn modes_and_roles_parse_as_the_command_line_gives_them() {
    assert_eq!("true".parse(), Ok(SeccompMode::Enforce));
    assert_eq!("log".parse(), Ok(SeccompMode::Log));
    assert_eq!("false".parse(), Ok(SeccompMode::Off));
    assert!("errno"
        .parse::<SeccompMode>()
        .unwrap_err()
        .contains("not supported"));
    assert!("yes".parse::<SeccompMode>().is_err());
    for role in ThreadRole::ALL {
        assert_eq!(role.name().parse(), Ok(role));
    }
    assert!("signal".parse::<ThreadRole>().is_err());
}

#[test]
fn decimal_writes_numbers_without_allocating() {
    assert_eq!(decimal(0, &mut [0; 12]), b"0");
    assert_eq!(decimal(110, &mut [0; 12]), b"110");
    assert_eq!(decimal(-1, &mut [0; 12]), b"-1");
    assert_eq!(decimal(libc::c_int::MIN, &mut [0; 12]), b"-2147483648");
}

/// docs/security.md's table gives each role's syscall and ioctl-request counts: they
/// must be the filters' own (`cargo test -p tessera-vmm seccomp -- --nocapture` prints them).
#[test]
fn the_documented_syscall_counts_are_the_filters() {
    let doc = include_str!("../../../docs/security.md");
    for role in ThreadRole::ALL {
        let ioctls: usize = role
            .rules()
            .filter(|a| a.nr == libc::SYS_ioctl)
            .map(|a| match a.only {
                Only::Arg(_, v) => v.len(),
                Only::Any => 0,
            })
            .sum();
        let syscalls = role.syscalls().len();
        println!("{role}: {syscalls} syscalls, {ioctls} ioctl requests");
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", role.name())))
            .unwrap_or_else(|| panic!("docs/security.md has no row for {role}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(
            cells.get(3..5),
            Some(&[syscalls.to_string().as_str(), ioctls.to_string().as_str()][..]),
            "docs/security.md's row for {role}: {row}"
        );
    }
}
