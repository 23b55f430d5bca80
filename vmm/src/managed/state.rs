//! Crash safety for host changes: before Tessera changes the host (creates an mdev, binds
//! a device to vfio-pci, writes a vGPU type) it writes a record of the change into the
//! state directory (default `/run/tessera`), fsync'd and renamed into place, and it
//! deletes the record once the change is undone. A record names its owner by pid *and*
//! the process's start time (`/proc/PID/stat` field 22), so a recycled pid is not taken
//! for the owner. [`StateDir::cleanup`], run at every start and by `tessera --cleanup`,
//! undoes the records whose owner is dead and never touches a live owner's.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::sysfs::Host;
use super::ManagedError;

/// Where records go unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/tessera";

/// One change Tessera made to the host, as much as is needed to undo it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "undo", rename_all = "snake_case")]
pub enum HostChange {
    /// An mdev was created (or an mdevctl-defined one started): undone by writing its
    /// `remove`.
    Mdev {
        /// The mdev's UUID.
        uuid: String,
        /// Its parent's sysfs directory, for the log.
        parent: PathBuf,
    },
    /// A PCI device was bound to vfio-pci through `driver_override`: undone by
    /// unbinding it, clearing `driver_override` and binding `previous_driver` again.
    VfioPciBinding {
        /// The device's PCI address.
        bdf: String,
        /// The driver it had, if any.
        previous_driver: Option<String>,
    },
    /// An NVIDIA SR-IOV VF was given a vGPU type: undone by writing 0 to
    /// `current_vgpu_type`.
    VgpuType {
        /// The VF's PCI address.
        bdf: String,
        /// The type written.
        vgpu_type: u32,
    },
}

impl HostChange {
    /// Undoes the change on `host`; a change already undone (the mdev gone, the driver
    /// back) is not an error, so undoing twice is harmless.
    pub fn undo(&self, host: &Host) -> Result<(), ManagedError> {
        match self {
            HostChange::Mdev { uuid, .. } => super::mdev::remove(host, uuid),
            HostChange::VfioPciBinding {
                bdf,
                previous_driver,
            } => super::binding::restore(host, bdf, previous_driver.as_deref()),
            HostChange::VgpuType { bdf, .. } => super::vgpu::clear(host, bdf),
        }
    }
}

impl std::fmt::Display for HostChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostChange::Mdev { uuid, parent } => {
                write!(f, "mdev {uuid} on {}", parent.display())
            }
            HostChange::VfioPciBinding {
                bdf,
                previous_driver,
            } => write!(
                f,
                "{bdf} bound to vfio-pci (was {})",
                previous_driver.as_deref().unwrap_or("no driver")
            ),
            HostChange::VgpuType { bdf, vgpu_type } => {
                write!(f, "{bdf} given vGPU type {vgpu_type}")
            }
        }
    }
}

/// A record file's contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The pid of the tessera that made the change.
    pub owner_pid: u32,
    /// Its start time (clock ticks after boot, `/proc/PID/stat` field 22).
    pub owner_start_time: u64,
    /// Order among the owner's records: undone newest first.
    pub seq: u64,
    /// The change and how to undo it.
    #[serde(flatten)]
    pub change: HostChange,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

/// A change that is recorded, and whose record goes when it is undone.
#[derive(Debug)]
pub struct RecordedChange {
    path: PathBuf,
    dir: PathBuf,
    change: HostChange,
}

impl RecordedChange {
    /// The change.
    pub fn change(&self) -> &HostChange {
        &self.change
    }

    /// Undoes the change and deletes its record. If undoing fails the record stays, for a
    /// later `tessera --cleanup` (or start) to try again.
    pub fn undo(self, host: &Host) -> Result<(), ManagedError> {
        self.change.undo(host)?;
        std::fs::remove_file(&self.path).map_err(|source| ManagedError::State {
            path: self.path.clone(),
            source,
        })?;
        sync_dir(&self.dir);
        tracing::info!("managed: undone: {}", self.change);
        Ok(())
    }
}

/// What a cleanup did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CleanupSummary {
    /// Changes of dead owners that were undone.
    pub undone: Vec<String>,
    /// Records left alone because their owner still runs.
    pub live: usize,
    /// Changes that could not be undone (their records stay), with why.
    pub failed: Vec<String>,
}

impl std::fmt::Display for CleanupSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} change(s) of dead tessera processes undone, {} failed, {} record(s) of live ones left alone",
            self.undone.len(),
            self.failed.len(),
            self.live
        )?;
        for u in &self.undone {
            write!(f, "\n  undone: {u}")?;
        }
        for u in &self.failed {
            write!(f, "\n  FAILED: {u}")?;
        }
        Ok(())
    }
}

/// Numbers this process's records, in the order they are made.
static NEXT_SEQ: AtomicU64 = AtomicU64::new(0);

/// The start time of process `pid` (field 22 of `/proc/PID/stat`), if it runs.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')': the
    // fields after it start after the last ')'. Field 3 is the first of them.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Whether the owner a record names still runs: the pid exists with the same start time.
fn owner_alive(pid: u32, start_time: u64) -> bool {
    process_start_time(pid) == Some(start_time)
}

/// fsyncs a directory, so a rename or unlink in it survives a host crash; best effort.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl StateDir {
    /// The state directory at `dir` (made when the first record is written).
    pub fn new(dir: impl Into<PathBuf>) -> StateDir {
        StateDir { dir: dir.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn state_err(&self, source: std::io::Error) -> ManagedError {
        ManagedError::State {
            path: self.dir.clone(),
            source,
        }
    }

    /// Writes the record of `change`, before the change is made: to a temporary file,
    /// fsync'd, renamed into place, the directory fsync'd. Only then may the caller make
    /// the change.
    pub fn record(&self, change: HostChange) -> Result<RecordedChange, ManagedError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.state_err(e))?;
        let owner_pid = std::process::id();
        let owner_start_time = process_start_time(owner_pid).ok_or_else(|| {
            self.state_err(std::io::Error::other(
                "cannot read this process's start time from /proc/self/stat",
            ))
        })?;
        let seq = NEXT_SEQ.fetch_add(1, Ordering::SeqCst);
        let record = Record {
            owner_pid,
            owner_start_time,
            seq,
            change,
        };
        let name = format!("{owner_pid}-{owner_start_time}-{seq:06}.json");
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let path = self.dir.join(&name);
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| self.state_err(std::io::Error::other(e)))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(ManagedError::State { path, source: e });
        }
        sync_dir(&self.dir);
        tracing::debug!("managed: recorded {} in {}", record.change, path.display());
        Ok(RecordedChange {
            path,
            dir: self.dir.clone(),
            change: record.change,
        })
    }

    /// Undoes every record whose owner is dead, newest first per owner, and deletes it;
    /// leaves live owners' records alone. A missing directory has nothing to clean. Two
    /// cleanups at once are serialized by a lock on the directory.
    pub fn cleanup(&self, host: &Host) -> Result<CleanupSummary, ManagedError> {
        let mut summary = CleanupSummary::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(summary),
            Err(e) => return Err(self.state_err(e)),
        };
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.dir.join(".lock"))
            .map_err(|e| self.state_err(e))?;
        // SAFETY: flock on a descriptor we own; released when `lock` is closed.
        #[allow(unsafe_code)]
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        if locked != 0 {
            return Err(self.state_err(std::io::Error::last_os_error()));
        }
        let mut dead: Vec<(Record, PathBuf)> = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') {
                // A temporary record: its owner died before the rename, so before the
                // change. Nothing to undo; the file goes once its owner is dead.
                if let Some(tmp) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) {
                    if !owner_of_name_alive(tmp) {
                        let _ = std::fs::remove_file(&path);
                    }
                }
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let record: Record = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    summary
                        .failed
                        .push(format!("{}: unreadable record: {e}", path.display()));
                    continue;
                }
            };
            if owner_alive(record.owner_pid, record.owner_start_time) {
                summary.live += 1;
            } else {
                dead.push((record, path));
            }
        }
        // Newest first, as a live owner would have undone them.
        dead.sort_by(|(a, _), (b, _)| {
            (a.owner_pid, a.owner_start_time, b.seq).cmp(&(b.owner_pid, b.owner_start_time, a.seq))
        });
        for (record, path) in dead {
            let what = format!("{} (pid {})", record.change, record.owner_pid);
            match record.change.undo(host) {
                Ok(()) => {
                    if let Err(e) = std::fs::remove_file(&path) {
                        summary
                            .failed
                            .push(format!("{what}: undone, but its record stays: {e}"));
                    } else {
                        tracing::warn!("managed: undid a dead tessera's change: {what}");
                        summary.undone.push(what);
                    }
                }
                Err(e) => {
                    tracing::error!("managed: cannot undo {what}: {e}");
                    summary.failed.push(format!("{what}: {e}"));
                }
            }
        }
        sync_dir(&self.dir);
        Ok(summary)
    }
}

/// Whether the owner a record's file name (`PID-START-SEQ.json`) names still runs.
fn owner_of_name_alive(name: &str) -> bool {
    let mut parts = name.split('-');
    let pid = parts.next().and_then(|p| p.parse().ok());
    let start = parts.next().and_then(|s| s.parse().ok());
    match (pid, start) {
        (Some(pid), Some(start)) => owner_alive(pid, start),
        // Not ours to judge: keep it.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::managed::testing::FakeHost;

    #[test]
    fn start_time_of_this_process() {
        let me = std::process::id();
        let t = process_start_time(me).unwrap();
        assert!(owner_alive(me, t));
        assert!(
            !owner_alive(me, t + 1),
            "same pid, other start: a recycled pid"
        );
    }

    #[test]
    fn record_is_json_with_owner_kind_and_undo() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        let r = state
            .record(HostChange::Mdev {
                uuid: "u".into(),
                parent: "/p".into(),
            })
            .unwrap();
        let text = std::fs::read_to_string(&r.path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["owner_pid"], std::process::id());
        assert!(v["owner_start_time"].as_u64().unwrap() > 0);
        assert_eq!(v["kind"], "mdev");
        assert_eq!(v["undo"]["uuid"], "u");
        // No temporary file left behind.
        let names = crate::managed::sysfs::dir_names(&state.dir);
        assert_eq!(names.len(), 1, "{names:?}");
    }

    /// A reaped child's pid: dead (until the kernel recycles it, and then its start time
    /// differs).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    fn write_record(state: &StateDir, record: &Record) -> PathBuf {
        std::fs::create_dir_all(&state.dir).unwrap();
        let p = state.dir.join(format!(
            "{}-{}-{:06}.json",
            record.owner_pid, record.owner_start_time, record.seq
        ));
        std::fs::write(&p, serde_json::to_vec(record).unwrap()).unwrap();
        p
    }

    #[test]
    fn cleanup_undoes_dead_owners_and_leaves_live_ones() {
        let fake = FakeHost::new();
        fake.add_mdev_parent("mtty", &[("mtty-1", 2), ("mtty-2", 1)]);
        let dead_uuid = "11111111-2222-3333-4444-555555555555";
        let live_uuid = "66666666-2222-3333-4444-555555555555";
        fake.add_mdev("mtty", "mtty-1", dead_uuid);
        fake.add_mdev("mtty", "mtty-1", live_uuid);
        let state = StateDir::new(fake.root().join("run/tessera"));
        let me = std::process::id();
        let dead = write_record(
            &state,
            &Record {
                owner_pid: dead_pid(),
                owner_start_time: 1,
                seq: 0,
                change: HostChange::Mdev {
                    uuid: dead_uuid.into(),
                    parent: "/x".into(),
                },
            },
        );
        // The live process's pid but another start time: a recycled pid, so dead.
        let recycled = write_record(
            &state,
            &Record {
                owner_pid: me,
                owner_start_time: process_start_time(me).unwrap() + 7,
                seq: 1,
                change: HostChange::Mdev {
                    uuid: "77777777-2222-3333-4444-555555555555".into(),
                    parent: "/x".into(),
                },
            },
        );
        let live = state
            .record(HostChange::Mdev {
                uuid: live_uuid.into(),
                parent: "/x".into(),
            })
            .unwrap();
        let summary = state.cleanup(&fake.host()).unwrap();
        assert_eq!(summary.undone.len(), 2, "{summary}");
        assert_eq!(summary.live, 1);
        assert!(summary.failed.is_empty(), "{summary}");
        assert!(!dead.exists() && !recycled.exists());
        assert!(live.path.exists());
        assert!(!fake.host().mdev_device(dead_uuid).exists());
        assert!(fake.host().mdev_device(live_uuid).exists());
        // The live owner undoes its own.
        live.undo(&fake.host()).unwrap();
        assert!(!fake.host().mdev_device(live_uuid).exists());
        assert_eq!(
            state.cleanup(&fake.host()).unwrap(),
            CleanupSummary::default()
        );
    }

    #[test]
    fn cleanup_of_a_missing_dir_is_empty_and_a_bad_record_stays() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeHost::new();
        let state = StateDir::new(dir.path().join("none"));
        assert_eq!(
            state.cleanup(&fake.host()).unwrap(),
            CleanupSummary::default()
        );
        std::fs::create_dir_all(state.path()).unwrap();
        std::fs::write(state.path().join("1-2-000000.json"), "{").unwrap();
        let s = state.cleanup(&fake.host()).unwrap();
        assert_eq!(s.failed.len(), 1);
        assert!(state.path().join("1-2-000000.json").exists());
    }
}
