//! The host's sysfs (and `/etc/mdevctl.d`) as the managed-device code sees it: every path
//! is taken under an injectable root, and every write goes through a [`SysfsWriter`], so
//! tests run the whole flow on a fake tree with a fake kernel. Only the few reads managed
//! devices need live here; host discovery (`crate::host`) reads under the same root.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Writes a value to a sysfs attribute: the one way managed devices change the host.
pub trait SysfsWriter: Send + Sync + fmt::Debug {
    /// Writes `value` to the attribute at `path` (already under the root).
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()>;
}

/// The kernel's sysfs: an attribute is opened for writing (never created) and written in
/// one call, which is how sysfs takes a value.
#[derive(Debug)]
pub struct KernelSysfs;

impl SysfsWriter for KernelSysfs {
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(value.as_bytes())
    }
}

/// The host as managed devices see it: a root and a writer.
#[derive(Clone, Debug)]
pub struct Host {
    root: PathBuf,
    writer: Arc<dyn SysfsWriter>,
}

impl Host {
    /// The host under `root` (`/`; a fake tree for tests: `tessera --host-root`), written
    /// through the kernel's sysfs.
    pub fn real(root: impl Into<PathBuf>) -> Host {
        Host::new(root, Arc::new(KernelSysfs))
    }

    /// A host whose `/` is `root`, changed through `writer`.
    pub fn new(root: impl Into<PathBuf>, writer: Arc<dyn SysfsWriter>) -> Host {
        Host {
            root: root.into(),
            writer,
        }
    }

    /// The root everything is under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `abs` (an absolute host path such as `/sys/bus/pci`) under the root. A path that
    /// already lies under the root is returned as it is.
    pub fn path(&self, abs: impl AsRef<Path>) -> PathBuf {
        let abs = abs.as_ref();
        if self.root == Path::new("/") || abs.starts_with(&self.root) {
            return abs.to_path_buf();
        }
        self.root.join(abs.strip_prefix("/").unwrap_or(abs))
    }

    /// Writes `value` to the attribute `path` (under the root already).
    pub fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        tracing::debug!("sysfs: {} <- {:?}", path.display(), value.trim_end());
        self.writer.write(path, value)
    }

    /// `/sys/bus/pci/devices/BDF` under the root.
    pub fn pci_device(&self, bdf: &str) -> PathBuf {
        self.path("/sys/bus/pci/devices").join(bdf)
    }

    /// `/sys/bus/mdev/devices/UUID` under the root.
    pub fn mdev_device(&self, uuid: &str) -> PathBuf {
        self.path("/sys/bus/mdev/devices").join(uuid)
    }
}

/// The name of the symlink `link` points at (a driver, a subsystem, a group), if any.
pub fn link_name(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The driver a device (its sysfs directory) is bound to, if any.
pub fn driver_of(device: &Path) -> Option<String> {
    link_name(&device.join("driver"))
}

/// An attribute's contents, trimmed; `None` if it cannot be read.
pub fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The entries of a directory, sorted by name; empty if it cannot be read.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Whether `s` is a full PCI address, `SSSS:BB:DD.F`.
pub fn is_bdf(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b.get(4) == Some(&b':')
        && b.get(7) == Some(&b':')
        && b.get(10) == Some(&b'.')
        && s.chars()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
        && matches!(b.get(11), Some(b'0'..=b'7'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf() {
        assert!(is_bdf("0000:00:02.0"));
        assert!(is_bdf("0000:af:1f.7"));
        assert!(!is_bdf("00:02.0"));
        assert!(!is_bdf("0000:00:02.8"));
        assert!(!is_bdf("mtty"));
    }

    #[test]
    fn paths_under_the_root() {
        let h = Host::new("/tmp/fake", Arc::new(KernelSysfs));
        assert_eq!(h.path("/sys/bus"), PathBuf::from("/tmp/fake/sys/bus"));
        assert_eq!(h.path("/tmp/fake/sys"), PathBuf::from("/tmp/fake/sys"));
        let real = Host::new("/", Arc::new(KernelSysfs));
        assert_eq!(real.path("/sys/bus"), PathBuf::from("/sys/bus"));
    }
}
