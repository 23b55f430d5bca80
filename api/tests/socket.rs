//! `bind`: a stale socket is replaced, a live one refused naming its path, a non-socket
//! left alone, and the new socket is mode 0600 with nothing else left behind.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};

use tessera_api::server::{bind, BindError};

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_new_socket_is_0600_and_accepts_connections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let listener = bind(&path).unwrap();
    let meta = fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(entries(dir.path()), vec!["api.sock"], "no temporary left");
    let _client = UnixStream::connect(&path).unwrap();
    listener.accept().unwrap();
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    drop(UnixListener::bind(&path).unwrap()); // a VMM that died: the file stays
    assert!(UnixStream::connect(&path).is_err());
    let listener = bind(&path).unwrap();
    let _client = UnixStream::connect(&path).unwrap();
    listener.accept().unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn a_live_socket_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let first = bind(&path).unwrap();
    let err = bind(&path).unwrap_err();
    assert!(matches!(err, BindError::InUse { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("another process is listening on {}", path.display())
    );
    // The first server's socket is untouched.
    let _client = UnixStream::connect(&path).unwrap();
    first.accept().unwrap();
    assert_eq!(entries(dir.path()), vec!["api.sock"]);
}

#[test]
fn a_file_that_is_not_a_socket_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    fs::write(&path, "precious").unwrap();
    let err = bind(&path).unwrap_err();
    assert!(matches!(err, BindError::NotSocket { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "precious");

    let sub = dir.path().join("a-directory");
    fs::create_dir(&sub).unwrap();
    assert!(matches!(bind(&sub), Err(BindError::NotSocket { .. })));
}

#[test]
fn the_directory_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("api.sock");
    let err = bind(&path).unwrap_err();
    assert!(matches!(err, BindError::NoDirectory { .. }), "{err:?}");
    assert!(err.to_string().contains("missing"), "{err}");
}
