//! vCPU placement (`cpus.affinity`, as Cloud Hypervisor's): checking, before anything
//! is created, that every host CPU named is online and allowed to tessera, and pinning
//! a vCPU thread to its host CPUs (`sched_setaffinity` on the thread itself, before it
//! installs its own seccomp filter and before it first enters the guest).
//!
//! The configuration's own checks (vCPU ids below `max_vcpus`, no vCPU twice, no empty
//! CPU list) are `VmConfig::validate`'s; this module adds what needs the host.

use std::collections::BTreeMap;
use std::path::Path;

use tessera_api::config::{parse_node_set, VmConfig};

/// The largest CPU number a `cpu_set_t` holds, plus one.
const CPU_SETSIZE: u32 = libc::CPU_SETSIZE as u32;

/// Why the host cannot run a vCPU where the configuration pins it.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct AffinityError {
    /// The configuration entry at fault (`cpus.affinity[1].host_cpus`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The host CPUs each vCPU is pinned to, by vCPU index; empty without `cpus.affinity`.
pub fn pins(config: &VmConfig) -> BTreeMap<usize, Vec<u32>> {
    config
        .cpus
        .affinity
        .iter()
        .flatten()
        .map(|a| (a.vcpu as usize, a.host_cpus.clone()))
        .collect()
}

/// Checks every host CPU of `cpus.affinity` against this host: online
/// (`/sys/devices/system/cpu/online`) and in tessera's own allowed set (a `taskset` or
/// cpuset cgroup narrows it, and the kernel would then refuse the pinning).
pub fn check_host(config: &VmConfig) -> Result<(), AffinityError> {
    let allowed = allowed_cpus().map_err(|e| AffinityError {
        field: "cpus.affinity".into(),
        message: format!("cannot read tessera's allowed CPUs: {e}"),
    })?;
    check_host_at(config, Path::new("/"), &allowed)
}

/// [`check_host`] with sysfs under `root` and tessera's allowed CPUs given (tests use a
/// fake tree).
pub fn check_host_at(config: &VmConfig, root: &Path, allowed: &[u32]) -> Result<(), AffinityError> {
    let Some(affinity) = &config.cpus.affinity else {
        return Ok(());
    };
    if affinity.is_empty() {
        return Ok(());
    }
    let online_path = root.join("sys/devices/system/cpu/online");
    let online = std::fs::read_to_string(&online_path)
        .map_err(|e| e.to_string())
        .and_then(|text| parse_node_set(text.trim()))
        .map_err(|e| AffinityError {
            field: "cpus.affinity".into(),
            message: format!(
                "cannot read the host's online CPUs ({}): {e}",
                online_path.display()
            ),
        })?;
    for (i, a) in affinity.iter().enumerate() {
        let field = format!("cpus.affinity[{i}].host_cpus");
        for &cpu in &a.host_cpus {
            if !online.contains(&cpu) {
                return Err(AffinityError {
                    field,
                    message: format!(
                        "host CPU {cpu} is not online (online: {})",
                        online_text(&online)
                    ),
                });
            }
            if !allowed.contains(&cpu) {
                return Err(AffinityError {
                    field,
                    message: format!(
                        "host CPU {cpu} is online but tessera may not run on it (allowed: {}; \
                         a taskset or cpuset cgroup narrows it)",
                        online_text(allowed)
                    ),
                });
            }
        }
    }
    Ok(())
}

/// `0-3,8` for [0, 1, 2, 3, 8].
fn online_text(cpus: &[u32]) -> String {
    tessera_api::config::NodeSet::from_iter(cpus.iter().copied()).to_string()
}

/// The CPUs the calling thread may run on (`sched_getaffinity`).
#[allow(unsafe_code)]
fn allowed_cpus() -> std::io::Result<Vec<u32>> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a cpu_set_t of the size passed, written by the kernel.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads `set` within CPU_SETSIZE.
    Ok((0..CPU_SETSIZE)
        .filter(|&c| unsafe { libc::CPU_ISSET(c as usize, &set) })
        .collect())
}

/// Pins the calling thread to `cpus` (`sched_setaffinity(0, ...)`, the calling thread
/// only). CPUs at or beyond `CPU_SETSIZE` are refused by `VmConfig::validate`.
#[allow(unsafe_code)]
pub(crate) fn pin_current_thread(cpus: &[u32]) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= CPU_SETSIZE {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: `cpu` is below CPU_SETSIZE, so CPU_SET stays inside `set`.
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    }
    // SAFETY: `set` is a cpu_set_t of the size passed; the kernel only reads it.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use tessera_api::config::CpuAffinity;

    fn config(affinity: &[(u32, &[u32])]) -> VmConfig {
        let mut c = VmConfig::default();
        c.cpus.boot_vcpus = 4;
        c.cpus.max_vcpus = 4;
        c.cpus.affinity = Some(
            affinity
                .iter()
                .map(|(v, h)| CpuAffinity {
                    vcpu: *v,
                    host_cpus: h.to_vec(),
                })
                .collect(),
        );
        c
    }

    fn root(online: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let cpu = dir.path().join("sys/devices/system/cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(cpu.join("online"), format!("{online}\n")).unwrap();
        dir
    }

    #[test]
    fn online_and_allowed_cpus_pass() {
        let r = root("0-3");
        let c = config(&[(0, &[0, 1]), (1, &[2, 3])]);
        check_host_at(&c, r.path(), &[0, 1, 2, 3]).unwrap();
        assert_eq!(pins(&c).get(&1), Some(&vec![2, 3]));
    }

    #[test]
    fn an_offline_cpu_is_named() {
        let r = root("0-1,3");
        let e =
            check_host_at(&config(&[(0, &[0]), (1, &[2])]), r.path(), &[0, 1, 2, 3]).unwrap_err();
        assert_eq!(e.field, "cpus.affinity[1].host_cpus");
        assert_eq!(e.message, "host CPU 2 is not online (online: 0-1,3)");
    }

    #[test]
    fn a_cpu_outside_tesseras_set_is_named() {
        let r = root("0-3");
        let e = check_host_at(&config(&[(0, &[3])]), r.path(), &[0, 1]).unwrap_err();
        assert_eq!(e.field, "cpus.affinity[0].host_cpus");
        assert!(
            e.message
                .starts_with("host CPU 3 is online but tessera may not run on it (allowed: 0-1"),
            "{}",
            e.message
        );
    }

    #[test]
    fn no_affinity_needs_no_sysfs() {
        check_host_at(&VmConfig::default(), Path::new("/nonexistent"), &[]).unwrap();
    }

    #[test]
    fn a_thread_pins_itself() {
        let allowed = allowed_cpus().unwrap();
        let first = allowed[..1].to_vec();
        let seen = std::thread::spawn(move || {
            pin_current_thread(&first).unwrap();
            allowed_cpus().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen, allowed[..1]);
    }
}
