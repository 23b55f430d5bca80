//! The peer VMMs' binaries that tests run beside or against Tessera: Cloud Hypervisor's
//! own API client, `ch-remote`, which must drive Tessera unchanged.

use std::path::{Path, PathBuf};

/// Where `ch-remote` was looked for, and how to get one, when none was found.
#[derive(Debug, thiserror::Error)]
#[error(
    "no ch-remote: set CH_REMOTE to Cloud Hypervisor's ch-remote, put it on PATH, or keep \
     ../shared/peers/cloud-hypervisor/ beside the checkout (looked at: {looked}). Get one from \
     Cloud Hypervisor's release binaries, or build it from its source with \
     `cargo build --release -p cloud-hypervisor --bin ch-remote`"
)]
pub struct NoChRemote {
    /// The places tried, in order.
    pub looked: String,
}

/// Cloud Hypervisor's `ch-remote`: `$CH_REMOTE`, else `ch-remote` on `PATH`, else
/// `../shared/peers/cloud-hypervisor/ch-remote` beside the checkout.
pub fn ch_remote() -> Result<PathBuf, NoChRemote> {
    let mut looked = Vec::new();
    if let Some(path) = std::env::var_os("CH_REMOTE") {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
        looked.push(format!("CH_REMOTE={}", path.display()));
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let path = dir.join("ch-remote");
        if is_executable(&path) {
            return Ok(path);
        }
    }
    looked.push("PATH".to_owned());
    let shared = shared_dir().join("peers/cloud-hypervisor/ch-remote");
    if is_executable(&shared) {
        return Ok(shared);
    }
    looked.push(shared.display().to_string());
    Err(NoChRemote {
        looked: looked.join(", "),
    })
}

/// `../shared` beside the checkout (the workspace's parent directory).
pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
