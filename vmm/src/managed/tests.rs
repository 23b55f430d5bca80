//! The managed flows end to end on a fake host: each refusal comes before any change,
//! each change is recorded first and undone (record and all) when the device goes.

use tessera_api::config::DeviceConfig;

use super::testing::FakeHost;
use super::*;

const U1: &str = "9e4ae7a6-13a3-4b8b-8d7e-6d1f2c3b4a51";
const U2: &str = "9e4ae7a6-13a3-4b8b-8d7e-6d1f2c3b4a52";

fn managed(fake: &FakeHost) -> Managed {
    Managed::new(fake.host(), StateDir::new(fake.root().join("run/tessera")))
}

fn records(m: &Managed) -> Vec<String> {
    sysfs::dir_names(m.state().path())
        .into_iter()
        .filter(|n| n.ends_with(".json"))
        .collect()
}

fn mdev(parent: &str, t: &str, uuid: Option<&str>) -> DeviceConfig {
    DeviceConfig {
        mdev_parent: Some(parent.into()),
        mdev_type: Some(t.into()),
        uuid: uuid.map(String::from),
        ..DeviceConfig::default()
    }
}

fn err_of(m: &Managed, devices: &[DeviceConfig]) -> (String, String) {
    match m.prepare_all(devices) {
        Err(ManagedError::Device { field, message }) => (field, message),
        other => panic!("expected an input error, got {other:?}"),
    }
}

#[test]
fn mdev_is_created_recorded_and_removed() {
    let fake = FakeHost::new();
    fake.add_mdev_parent("mtty", &[("mtty-1", 2), ("mtty-2", 1)]);
    let m = managed(&fake);
    // By name, by sysfs path.
    let devices = [
        mdev("mtty", "mtty-2", Some(U1)),
        mdev("/sys/devices/virtual/mtty/mtty", "mtty-1", Some(U2)),
    ];
    let prepared = m.prepare_all(&devices).unwrap();
    assert_eq!(prepared.len(), 2);
    assert_eq!(prepared[0].device.path, fake.host().mdev_device(U1));
    assert!(fake.host().mdev_device(U1).exists());
    assert!(fake.host().mdev_device(U2).exists());
    assert_eq!(records(&m).len(), 2);
    drop(prepared);
    assert!(!fake.host().mdev_device(U1).exists());
    assert!(!fake.host().mdev_device(U2).exists());
    assert!(records(&m).is_empty());
}

#[test]
fn mdev_refusals_name_the_field_and_change_nothing() {
    let fake = FakeHost::new();
    fake.add_mdev_parent("mtty", &[("mtty-1", 1), ("mtty-2", 0)]);
    fake.add_mdev("mtty", "mtty-1", U2);
    let m = managed(&fake);

    let (f, msg) = err_of(&m, &[mdev("nosuch", "mtty-1", None)]);
    assert_eq!(f, "devices[0].mdev_parent");
    assert!(
        msg.contains("`nosuch` does not exist") && msg.contains("mtty"),
        "{msg}"
    );

    let (f, msg) = err_of(&m, &[mdev("mtty", "mtty-9", None)]);
    assert_eq!(f, "devices[0].mdev_type");
    assert!(msg.contains("its types: mtty-1, mtty-2"), "{msg}");

    let (f, msg) = err_of(&m, &[mdev("mtty", "mtty-2", None)]);
    assert_eq!(f, "devices[0].mdev_type");
    assert!(msg.contains("available_instances is 0"), "{msg}");

    let (f, msg) = err_of(&m, &[mdev("mtty", "mtty-1", Some(U2))]);
    assert_eq!(f, "devices[0].uuid");
    assert!(msg.contains("already in use"), "{msg}");

    // One instance left, two asked: refused before the first is created.
    let (f, msg) = err_of(
        &m,
        &[
            mdev("mtty", "mtty-1", Some(U1)),
            mdev("mtty", "mtty-1", None),
        ],
    );
    assert_eq!(f, "devices[1].mdev_type");
    assert!(msg.contains("asks for more"), "{msg}");

    // A PCI device is not a parent.
    fake.add_pci("0000:00:03.0", 5, Some("nvme"));
    let (f, msg) = err_of(&m, &[mdev("0000:00:03.0", "x", None)]);
    assert_eq!(f, "devices[0].mdev_parent");
    assert!(msg.contains("not an mdev parent"), "{msg}");

    assert!(!fake.host().mdev_device(U1).exists());
    assert!(records(&m).is_empty());
}

#[test]
fn a_failed_later_device_undoes_the_earlier_ones() {
    let fake = FakeHost::new();
    fake.add_mdev_parent("mtty", &[("mtty-1", 2)]);
    fake.add_pci("0000:00:04.0", 7, None);
    let m = managed(&fake);
    // The PCI device's bind cannot take: vfio-pci is "unloaded" after planning.
    let plans = m
        .plan_all(&[
            mdev("mtty", "mtty-1", Some(U1)),
            DeviceConfig {
                managed: true,
                ..DeviceConfig::new("/sys/bus/pci/devices/0000:00:04.0")
            },
        ])
        .unwrap();
    assert_eq!(plans.len(), 2);
    std::fs::remove_dir_all(fake.root().join("sys/bus/pci/drivers/vfio-pci")).unwrap();
    let r = m.prepare_all(&[
        mdev("mtty", "mtty-1", Some(U1)),
        DeviceConfig {
            managed: true,
            ..DeviceConfig::new("/sys/bus/pci/devices/0000:00:04.0")
        },
    ]);
    assert!(r.is_err());
    assert!(!fake.host().mdev_device(U1).exists());
    assert!(records(&m).is_empty());
}

#[test]
fn mdevctl_defined_mdev_is_started_and_stopped() {
    let fake = FakeHost::new();
    fake.add_mdev_parent("mtty", &[("mtty-2", 1)]);
    fake.define_mdev(
        "mtty",
        U1,
        r#"{"mdev_type":"mtty-2","start":"manual","attrs":[]}"#,
    );
    let m = managed(&fake);
    let d = DeviceConfig {
        uuid: Some(U1.into()),
        ..DeviceConfig::default()
    };
    let p = m.prepare_all(std::slice::from_ref(&d)).unwrap();
    assert!(fake.host().mdev_device(U1).exists());
    drop(p);
    assert!(!fake.host().mdev_device(U1).exists());
    // Undefined: refused, naming uuid.
    let (f, msg) = err_of(
        &m,
        &[DeviceConfig {
            uuid: Some(U2.into()),
            ..DeviceConfig::default()
        }],
    );
    assert_eq!(f, "devices[0].uuid");
    assert!(msg.contains("no mdev"), "{msg}");
}

#[test]
fn managed_binding_goes_to_vfio_pci_and_back() {
    let fake = FakeHost::new();
    let dev = fake.add_pci("0000:00:03.0", 5, Some("nvme"));
    let bare = fake.add_pci("0000:00:05.0", 6, None);
    let m = managed(&fake);
    let devices = [
        DeviceConfig {
            managed: true,
            ..DeviceConfig::new("/sys/bus/pci/devices/0000:00:03.0")
        },
        DeviceConfig {
            managed: true,
            ..DeviceConfig::new("/sys/bus/pci/devices/0000:00:05.0")
        },
    ];
    let p = m.prepare_all(&devices).unwrap();
    assert_eq!(sysfs::driver_of(&dev).as_deref(), Some("vfio-pci"));
    assert_eq!(sysfs::driver_of(&bare).as_deref(), Some("vfio-pci"));
    let rec = std::fs::read_to_string(m.state().path().join(records(&m).first().unwrap())).unwrap();
    assert!(
        rec.contains("vfio_pci_binding") && rec.contains("\"nvme\""),
        "{rec}"
    );
    drop(p);
    assert_eq!(sysfs::driver_of(&dev).as_deref(), Some("nvme"));
    assert_eq!(
        sysfs::driver_of(&bare),
        None,
        "no driver before, none after"
    );
    assert_eq!(
        std::fs::read_to_string(dev.join("driver_override")).unwrap(),
        "",
        "driver_override cleared"
    );
    assert!(records(&m).is_empty());
}

#[test]
fn binding_refuses_a_group_that_is_not_viable() {
    let fake = FakeHost::new();
    fake.add_pci("0000:01:00.0", 9, Some("nvme"));
    fake.add_pci("0000:01:00.1", 9, Some("snd_hda_intel"));
    let m = managed(&fake);
    let (f, msg) = err_of(
        &m,
        &[DeviceConfig {
            managed: true,
            ..DeviceConfig::new("/sys/bus/pci/devices/0000:01:00.0")
        }],
    );
    assert_eq!(f, "devices[0].path");
    assert!(
        msg.contains("IOMMU group 9 is not viable")
            && msg.contains("0000:01:00.1 (bound to snd_hda_intel)"),
        "{msg}"
    );
    // Nothing rebound, nothing recorded.
    let dev = fake.root().join("sys/bus/pci/devices/0000:01:00.0");
    assert_eq!(sysfs::driver_of(&dev).as_deref(), Some("nvme"));
    assert!(records(&m).is_empty());
}

#[test]
fn a_crash_after_binding_is_undone_by_cleanup() {
    let fake = FakeHost::new();
    let dev = fake.add_pci("0000:00:03.0", 5, Some("nvme"));
    let m = managed(&fake);
    let p = m
        .prepare_all(&[DeviceConfig {
            managed: true,
            ..DeviceConfig::new("/sys/bus/pci/devices/0000:00:03.0")
        }])
        .unwrap();
    // A kill -9: nothing is undone, the record stays. Forget the changes, and rewrite
    // the record as a dead process's.
    std::mem::forget(p);
    let name = records(&m).pop().unwrap();
    let path = m.state().path().join(&name);
    let mut rec: state::Record = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // Our pid with another start time: not us.
    rec.owner_start_time += 1;
    std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
    assert_eq!(sysfs::driver_of(&dev).as_deref(), Some("vfio-pci"));
    let s = m.cleanup().unwrap();
    assert_eq!(s.undone.len(), 1, "{s}");
    assert_eq!(sysfs::driver_of(&dev).as_deref(), Some("nvme"));
    assert!(records(&m).is_empty());
}

#[test]
fn vgpu_type_is_written_and_cleared() {
    let fake = FakeHost::new();
    let vf = fake.add_nvidia_vf(
        "0000:41:00.4",
        30,
        "ID    : vGPU Name\n557   : NVIDIA L40-1Q\n558   : NVIDIA L40-2Q\n",
    );
    let m = managed(&fake);
    let d = |t| DeviceConfig {
        vgpu_type: Some(t),
        ..DeviceConfig::new("/sys/bus/pci/devices/0000:41:00.4")
    };
    let (f, msg) = err_of(&m, &[d(999)]);
    assert_eq!(f, "devices[0].vgpu_type");
    assert!(
        msg.contains("557 (NVIDIA L40-1Q), 558 (NVIDIA L40-2Q)"),
        "{msg}"
    );
    let p = m.prepare_all(&[d(558)]).unwrap();
    let current = vf.join("nvidia/current_vgpu_type");
    assert_eq!(std::fs::read_to_string(&current).unwrap(), "558");
    drop(p);
    assert_eq!(std::fs::read_to_string(&current).unwrap(), "0");
    assert!(records(&m).is_empty());
    // A VF that is not one.
    fake.add_pci("0000:41:00.5", 31, Some("nvme"));
    let (f, msg) = err_of(
        &m,
        &[DeviceConfig {
            vgpu_type: Some(1),
            ..DeviceConfig::new("/sys/bus/pci/devices/0000:41:00.5")
        }],
    );
    assert_eq!(f, "devices[0].vgpu_type");
    assert!(msg.contains("not an NVIDIA SR-IOV vGPU VF"), "{msg}");
}

#[test]
fn generated_uuids_are_written_back() {
    let mut devices = vec![mdev("mtty", "mtty-1", None), DeviceConfig::new("/x")];
    name_mdevs(&mut devices);
    assert!(tessera_api::config::is_uuid(
        devices[0].uuid.as_deref().unwrap()
    ));
    assert_eq!(devices[1].uuid, None);
}
