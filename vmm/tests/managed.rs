//! Managed devices against the real binary on a fake host tree (`--host-root`, the
//! test hook): each bad request is refused with status 1 and a message naming the field,
//! before any change (no record, nothing written); `tessera --cleanup` undoes a dead
//! tessera's records and leaves a live one's. The real flows run in L1
//! (managed_in_nested_host.rs).

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
const U1: &str = "9e4ae7a6-13a3-4b8b-8d7e-6d1f2c3b4a51";
const U2: &str = "9e4ae7a6-13a3-4b8b-8d7e-6d1f2c3b4a52";

/// A fake host: an mtty parent with mtty-1 (1 left) and mtty-2 (none left), an existing
/// mdev U2, an NVMe with no driver alone in group 3, and a GPU sharing group 9 with its
/// audio function bound to snd_hda_intel.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let f = Fake { dir };
        let parent = f.mk("sys/devices/virtual/mtty/mtty");
        for (t, n) in [("mtty-1", 1), ("mtty-2", 0)] {
            let td = parent.join("mdev_supported_types").join(t);
            std::fs::create_dir_all(td.join("devices")).unwrap();
            std::fs::write(td.join("available_instances"), format!("{n}\n")).unwrap();
            std::fs::write(td.join("create"), "").unwrap();
        }
        f.mk("sys/class/mdev_bus");
        symlink(&parent, f.root().join("sys/class/mdev_bus/mtty")).unwrap();
        let m = f.mk(&format!("sys/bus/mdev/devices/{U2}"));
        std::fs::write(m.join("remove"), "").unwrap();
        for d in ["vfio-pci", "nvme", "snd_hda_intel"] {
            f.mk(&format!("sys/bus/pci/drivers/{d}"));
        }
        f.pci("0000:00:03.0", 3, None);
        f.pci("0000:01:00.0", 9, None);
        f.pci("0000:01:00.1", 9, Some("snd_hda_intel"));
        f
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn mk(&self, rel: &str) -> PathBuf {
        let p = self.root().join(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn pci(&self, bdf: &str, group: u32, driver: Option<&str>) {
        let dev = self.mk(&format!("sys/bus/pci/devices/{bdf}"));
        symlink(self.root().join("sys/bus/pci"), dev.join("subsystem")).unwrap();
        std::fs::write(dev.join("driver_override"), "(null)\n").unwrap();
        let g = self.mk(&format!("sys/kernel/iommu_groups/{group}/devices"));
        symlink(&dev, g.join(bdf)).unwrap();
        symlink(g.parent().unwrap(), dev.join("iommu_group")).unwrap();
        if let Some(d) = driver {
            symlink(
                self.root().join("sys/bus/pci/drivers").join(d),
                dev.join("driver"),
            )
            .unwrap();
        }
    }

    fn state(&self) -> PathBuf {
        self.root().join("state")
    }

    fn tessera(&self, args: &[&str]) -> (i32, String, String) {
        let state = self.state();
        let out = Command::new(TESSERA)
            .arg("--host-root")
            .arg(self.root())
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Boots with one `--device`; it must be refused naming `field` and saying `words`,
    /// with nothing written to the host or the state directory.
    fn refused(&self, device: &str, field: &str, words: &str) {
        let k = judge_kernel();
        let (status, _, err) = self.tessera(&["--kernel", &k, "--device", device]);
        assert_eq!(status, 1, "{device}: {err}");
        assert!(err.contains(field), "{device} must name {field}: {err}");
        assert!(err.contains(words), "{device} must say `{words}`: {err}");
        let records: Vec<_> = std::fs::read_dir(self.state())
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .into_iter()
            .collect();
        assert!(
            records.iter().all(|n| *n == 0),
            "{device}: a record was left"
        );
        let create = self
            .root()
            .join("sys/devices/virtual/mtty/mtty/mdev_supported_types/mtty-1/create");
        assert_eq!(std::fs::read_to_string(create).unwrap(), "", "{device}");
        let over = self
            .root()
            .join("sys/bus/pci/devices/0000:01:00.0/driver_override");
        assert_eq!(
            std::fs::read_to_string(over).unwrap(),
            "(null)\n",
            "{device}"
        );
    }
}

fn judge_kernel() -> String {
    tessera_tests::linux_judge::images()
        .unwrap()
        .vmlinuz
        .display()
        .to_string()
}

#[test]
fn bad_managed_devices_are_refused_before_any_change() {
    let f = Fake::new();
    f.refused(
        "mdev_parent=nosuch,mdev_type=mtty-1",
        "devices[0].mdev_parent",
        "`nosuch` does not exist; this host's mdev parents: mtty",
    );
    f.refused(
        "mdev_parent=/sys/devices/virtual/mtty/mtty,mdev_type=mtty-9",
        "devices[0].mdev_type",
        "`mtty-9` is not an mdev type of /sys/devices/virtual/mtty/mtty; its types: mtty-1, mtty-2",
    );
    f.refused(
        "mdev_parent=mtty,mdev_type=mtty-2",
        "devices[0].mdev_type",
        "available_instances is 0",
    );
    f.refused(
        &format!("mdev_parent=mtty,mdev_type=mtty-1,uuid={U2}"),
        "devices[0].uuid",
        &format!("mdev {U2} is already in use"),
    );
    f.refused(&format!("uuid={U1}"), "devices[0].uuid", "is defined in");
    f.refused(
        "path=/sys/bus/pci/devices/0000:01:00.0,managed=on",
        "devices[0].path",
        "IOMMU group 9 is not viable: 0000:01:00.1 (bound to snd_hda_intel)",
    );
    f.refused(
        "path=/sys/bus/pci/devices/0000:00:03.0,vgpu_type=558",
        "devices[0].vgpu_type",
        "not an NVIDIA SR-IOV vGPU VF",
    );
    // A vGPU needs the VM's UUID, for NVIDIA's vGPU manager.
    let vf = f.mk("sys/bus/pci/devices/0000:41:00.4/nvidia");
    std::fs::write(
        vf.join("creatable_vgpu_types"),
        "ID : Name\n558 : NVIDIA L40-2Q\n",
    )
    .unwrap();
    std::fs::write(vf.join("current_vgpu_type"), "0\n").unwrap();
    f.refused(
        "path=/sys/bus/pci/devices/0000:41:00.4,vgpu_type=558",
        "platform.uuid",
        "an NVIDIA vGPU (vgpu_type) needs the VM's UUID: give tessera -uuid UUID",
    );
    assert_eq!(
        std::fs::read_to_string(vf.join("current_vgpu_type")).unwrap(),
        "0\n"
    );
    // Fields that do not go together are refused while the options are read.
    let (status, _, err) = f.tessera(&["--kernel", "/x", "--device", "mdev_parent=mtty"]);
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("mdev_type"), "{err}");
}

fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

#[test]
fn cleanup_undoes_a_dead_tesseras_changes_and_leaves_a_live_ones() {
    let f = Fake::new();
    std::fs::create_dir_all(f.state()).unwrap();
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let record = |pid: u32, start: u64, uuid: &str| {
        serde_json::json!({
            "owner_pid": pid, "owner_start_time": start, "seq": 0,
            "kind": "mdev", "undo": {"uuid": uuid, "parent": "/sys/devices/virtual/mtty/mtty"}
        })
        .to_string()
    };
    std::fs::write(
        f.state().join(format!("{dead}-1-000000.json")),
        record(dead, 1, U2),
    )
    .unwrap();
    let me = std::process::id();
    let live = f
        .state()
        .join(format!("{me}-{}-000000.json", start_time(me)));
    std::fs::write(&live, record(me, start_time(me), U1)).unwrap();
    let (status, out, err) = f.tessera(&["--cleanup"]);
    assert_eq!(status, 0, "{err}");
    assert!(
        out.contains("1 change(s) of dead tessera processes undone, 0 failed, 1 record(s) of live ones left alone"),
        "{out}"
    );
    assert!(out.contains(&format!("undone: mdev {U2}")), "{out}");
    // The dead one's mdev was removed (its `remove` written), its record deleted; the
    // live one's record stays.
    let remove = f.root().join(format!("sys/bus/mdev/devices/{U2}/remove"));
    assert_eq!(std::fs::read_to_string(remove).unwrap(), "1");
    assert!(!f.state().join(format!("{dead}-1-000000.json")).exists());
    assert!(live.exists());
}
