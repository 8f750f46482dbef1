//! A disk that refuses gives a typed error naming the path, never a panic.
//! The tests run as root too, where permissions do not refuse anything, so
//! they put a file where a directory should be, a directory where a
//! segment should be, and `/dev/full` (every write fails with ENOSPC)
//! where a segment should be.

use gantry_metrics::wal::{Wal, WalError};
use gantry_metrics::{Head, Labels, Tsdb, WalOptions};
use std::error::Error;
use std::path::Path;
use std::time::Instant;

fn open_err(dir: &Path) -> WalError {
    Wal::open(dir, WalOptions::default(), &mut Head::new()).expect_err("the WAL cannot open")
}

/// The message names `path` and leaves the OS's words to the source.
fn assert_names(err: &WalError, op: &str, path: &Path) {
    let msg = err.to_string();
    assert!(
        matches!(err, WalError::Io { op: o, path: p, .. } if *o == op && p == path),
        "{err:?}"
    );
    assert_eq!(err.path(), Some(path));
    assert!(msg.contains(&format!("`{}`", path.display())), "{msg}");
    let source = err
        .source()
        .expect("the I/O error is the source")
        .to_string();
    assert!(!msg.contains(&source), "{msg} repeats its source {source}");
}

#[test]
fn a_file_where_the_wal_directory_should_be() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("wal");
    std::fs::write(&dir, "not a directory").expect("write");
    assert_names(&open_err(&dir), "create WAL directory", &dir);

    // A file where a parent directory should be.
    let dir = tmp.path().join("wal/metrics/wal");
    assert_names(&open_err(&dir), "create WAL directory", &dir);
}

#[test]
fn a_directory_where_a_segment_should_be() {
    let tmp = tempfile::tempdir().expect("tmp");
    let seg = tmp.path().join("00000001");
    std::fs::create_dir(&seg).expect("mkdir");
    assert_names(&open_err(tmp.path()), "read WAL segment", &seg);
}

#[test]
fn a_full_disk_fails_the_write_naming_the_segment() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        eprintln!("skipped: no /dev/full");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let seg = tmp.path().join("00000001");
    std::os::unix::fs::symlink(full, &seg).expect("symlink");
    let (mut db, report) = Tsdb::open(tmp.path(), WalOptions::default()).expect("open");
    assert_eq!(report.samples, 0);
    let up = Labels::new([("__name__", "up")]).expect("labels");
    db.append_batch([(&up, 1, 1.0)])
        .expect("buffered, not written yet");
    let err = db
        .wal_mut()
        .sync(Instant::now())
        .expect_err("the disk is full");
    assert_names(&err, "write WAL segment", &seg);
    assert!(err.is_disk_full(), "{err:?}");
}
