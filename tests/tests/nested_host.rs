//! The nested test host works: in L1, `/dev/kvm` is usable, the NVMe and edu devices sit
//! alone in their IOMMU groups and bind to vfio-pci, and a KVM guest (L2, the Linux
//! judge's kernel, run by the host's QEMU) boots with edu passed through and reports.
//! Every later end-to-end test (our VMM in L1) stands on this.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use tessera_tests::linux_judge::{images, parse_report};
use tessera_tests::nested;

#[test]
fn l1_has_kvm_and_vfio_and_boots_an_l2_guest() {
    let judge = images().unwrap();
    let script = format!(
        r#"set -e
test -c /dev/kvm
for dev in 0000:00:03.0 0000:00:04.0; do
    group=$(basename "$(readlink /sys/bus/pci/devices/$dev/iommu_group)")
    echo "l1: $dev group $group members $(ls /sys/kernel/iommu_groups/$group/devices | tr '\n' ' ')"
    echo vfio-pci > /sys/bus/pci/devices/$dev/driver_override
    echo $dev > /sys/bus/pci/drivers_probe
    echo "l1: $dev driver $(basename "$(readlink /sys/bus/pci/devices/$dev/driver)")"
    test -c /dev/vfio/$group
done
in-host qemu-system-x86_64 -enable-kvm -cpu host -smp 1 -m 256 -nographic -no-reboot \
    -nic none -vga none -kernel {vmlinuz} -initrd {initramfs} \
    -append "console=ttyS0 panic=-1 loglevel=4" \
    -device vfio-pci,host=0000:00:04.0,addr=0x5
"#,
        vmlinuz = judge.vmlinuz.display(),
        initramfs = judge.initramfs.display(),
    );
    let run = nested::run(&script, &[]).unwrap();
    assert_eq!(run.status, 0, "L1 script failed:\n{}", run.console);
    for dev in ["0000:00:03.0", "0000:00:04.0"] {
        assert!(
            run.console.contains(&format!("l1: {dev} driver vfio-pci")),
            "{dev} not bound to vfio-pci:\n{}",
            run.console
        );
        // Alone in its group: the only member listed is the device itself.
        let line = run
            .console
            .lines()
            .find(|l| l.contains(&format!("l1: {dev} group")))
            .unwrap();
        assert!(
            line.trim_end().ends_with(&format!("members {dev}")),
            "{line}"
        );
    }
    // L2's serial output came through L1's console: the judge's report, with the
    // passed-through edu device at the address L1's QEMU gave it.
    let l2 = parse_report(&run.console)
        .unwrap()
        .unwrap_or_else(|| panic!("no L2 report in L1's console:\n{}", run.console));
    assert_eq!(l2.online, vec![0]);
    assert!(
        l2.pci_numa.contains_key("0000:00:05.0"),
        "edu not in L2: {:?}",
        l2.pci_numa.keys()
    );
}
