//! Binding the API's Unix socket: a stale socket left by a dead VMM is replaced, a live
//! one or any other file is refused, and the socket is only ever reachable as mode 0600.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::BindError;

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BindError {
    let path = path.to_owned();
    move |source| BindError::Io { op, path, source }
}

/// Binds the API socket at `path`.
///
/// The parent directory must exist. If `path` is a socket a server answers on, this
/// fails with [`BindError::InUse`] ("another process is listening on PATH"); a stale
/// socket (connection refused) is removed and replaced; anything else at `path` is
/// refused with [`BindError::NotSocket`]. The socket is bound in a private (0700)
/// directory next to `path`, made 0600, and only then renamed into place, so no one
/// can connect to it while it has the umask's mode.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let dir = match path.parent() {
        Some(d) if d.as_os_str().is_empty() => Path::new("."),
        Some(d) => d,
        None => Path::new("/"),
    };
    if !dir.is_dir() {
        return Err(BindError::NoDirectory {
            path: path.to_owned(),
            dir: dir.to_owned(),
        });
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(BindError::InUse {
                    path: path.to_owned(),
                })
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                fs::remove_file(path).map_err(io("remove stale socket", path))?
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("connect to existing socket", path)(e)),
        },
        Ok(_) => {
            return Err(BindError::NotSocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect", path)(e)),
    }

    let private = private_dir(dir, path);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io("create directory", &private))?;
    let tmp = private.join("api.sock");
    let result = bind_private(&tmp, path);
    // The private directory is empty after the rename, or holds a socket that failed.
    let _ = fs::remove_file(&tmp);
    let _ = fs::remove_dir(&private);
    result
}

fn bind_private(tmp: &Path, path: &Path) -> Result<UnixListener, BindError> {
    let listener = UnixListener::bind(tmp).map_err(io("bind", tmp))?;
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o600)).map_err(io("chmod", tmp))?;
    if fs::symlink_metadata(path).is_ok() {
        // Someone took the path since we looked; do not clobber it.
        return Err(BindError::InUse {
            path: path.to_owned(),
        });
    }
    fs::rename(tmp, path).map_err(io("rename socket into place", path))?;
    Ok(listener)
}

fn private_dir(dir: &Path, path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()))
}
