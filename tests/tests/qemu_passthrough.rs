//! VFIO passthrough end to end with QEMU as the VMM in the nested test host: L1 binds its
//! NVMe (00:03.0) and edu (00:04.0) devices to vfio-pci with `scripts/l1-vfio.sh`,
//! creates an mtty mediated device, and the host's QEMU boots the Linux judge as L2 under
//! L1's KVM with all three passed through. L2's device report (`judge.devices=1`) must
//! show each device working: NVMe reads back what it wrote, with MSI-X interrupts; edu
//! answers its ID and liveness registers; mtty loops a line back. This is the reference
//! our VMM's passthrough is held to, and proof that the host and images support it.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::path::Path;

use tessera_tests::linux_judge::{images, parse_device_report};
use tessera_tests::nested;

const MDEV_UUID: &str = "6f3c1c9e-2d4b-4c5e-9a7b-7e55e2a00001";

#[test]
fn qemu_passes_nvme_edu_and_mtty_through_to_l2() {
    let judge = images().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let script = format!(
        r#"set -e
. "$HOST{repo}/scripts/l1-vfio.sh"
t0=$(cut -d' ' -f1 /proc/uptime)
for dev in 00:03.0 00:04.0; do
    group=$(vfio_bind $dev)
    echo "l1: $dev group $group driver $(driver_of $dev)"
done
mdev=$(mtty_create {uuid})
echo "l1: mdev $mdev group $(basename "$(readlink $mdev/iommu_group)")"
# The ICH9 functions share one group; with i2c_i801 bound there it is not viable.
group=$(group_of 00:1f.3)
for dev in $(ls /sys/kernel/iommu_groups/$group/devices); do
    echo "l1: group $group member $dev driver $(driver_of $dev)"
done
if vfio_bind 00:1e.7 2>/run/err; then exit 1; fi
echo "l1: vfio_bind of a missing device: $(cat /run/err)"

status=0
in-host timeout 100 qemu-system-x86_64 -accel kvm -cpu host -smp 1 -m 256 -nographic \
    -no-reboot -nic none -vga none -kernel {vmlinuz} -initrd {initramfs} \
    -append "console=ttyS0 panic=-1 loglevel=4 judge.devices=1" \
    -device vfio-pci,host=0000:00:03.0 -device vfio-pci,host=0000:00:04.0 \
    -device vfio-pci,sysfsdev=$mdev </dev/null || status=$?
echo "l1: qemu exited with $status after $t0..$(cut -d' ' -f1 /proc/uptime)s of L1 uptime"
for dev in 00:03.0 00:04.0; do
    echo "l1: after qemu: $dev driver $(driver_of $dev)"
done
[ -d "$mdev" ] && echo "l1: after qemu: mdev {uuid} exists"
# The rest of the library: give edu back and remove the mdev.
vfio_unbind 00:04.0
echo "l1: unbound: 00:04.0 driver $(driver_of 00:04.0) override $(cat /sys/bus/pci/devices/0000:00:04.0/driver_override)"
mtty_remove {uuid}
[ -e "$mdev" ] || echo "l1: mdev {uuid} removed"
exit $status
"#,
        repo = repo.display(),
        uuid = MDEV_UUID,
        vmlinuz = judge.vmlinuz.display(),
        initramfs = judge.initramfs.display(),
    );
    let run = nested::run(&script, &[]).unwrap();
    let console = &run.console;
    // Kept in the test's output: the record of what QEMU and L2 did.
    println!("{console}");
    assert_eq!(run.status, 0, "L1 script or QEMU failed:\n{console}");
    for line in [
        "l1: 00:03.0 group 3 driver vfio-pci",
        "l1: 00:04.0 group 4 driver vfio-pci",
        "l1: group 5 member 0000:00:1f.3 driver i801_smbus",
        "l1: after qemu: 00:03.0 driver vfio-pci",
        "l1: after qemu: 00:04.0 driver vfio-pci",
        "l1: unbound: 00:04.0 driver none override (null)",
        &format!("l1: mdev /sys/bus/mdev/devices/{MDEV_UUID} group"),
        &format!("l1: after qemu: mdev {MDEV_UUID} exists"),
        &format!("l1: mdev {MDEV_UUID} removed"),
        "l1: vfio_bind of a missing device: l1-vfio: no PCI device 0000:00:1e.7",
    ] {
        assert!(console.contains(line), "missing {line:?} in:\n{console}");
    }

    let report = parse_device_report(console)
        .unwrap()
        .unwrap_or_else(|| panic!("no device report from L2:\n{console}"));
    let one = |kind: &str| {
        let bdfs = report.devices(kind);
        assert_eq!(bdfs.len(), 1, "{kind} devices in L2: {bdfs:?}\n{console}");
        bdfs[0].to_string()
    };
    let nvme = one("nvme");
    assert_eq!(report.field("nvme", &nvme, "driver"), Some("nvme"));
    assert!(report.is_ok("nvme", &nvme, "rw"), "{report:#?}");
    assert!(
        report.number("nvme", &nvme, "msix_vectors").unwrap() >= 2,
        "{report:#?}"
    );
    assert!(
        report.number("nvme", &nvme, "msix_interrupts").unwrap() > 0,
        "{report:#?}"
    );
    let edu = one("edu");
    assert_eq!(report.number("edu", &edu, "id"), Some(0x0100_00ed));
    assert!(report.is_ok("edu", &edu, "liveness"), "{report:#?}");
    let mtty = one("mtty");
    assert!(
        report
            .field("mtty", &mtty, "tty")
            .is_some_and(|t| t.starts_with("ttyS")),
        "{report:#?}"
    );
    assert!(report.is_ok("mtty", &mtty, "loopback"), "{report:#?}");
}
