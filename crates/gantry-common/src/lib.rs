//! The few helpers every Gantry crate shares, so each exists once:
//! [`write_atomic`] (the one durable way to write a file), [`now_ms`] (the
//! one wall clock in milliseconds), [`lock`] (the one poison-tolerant mutex
//! lock) and [`split_host_port`] (the one `host[:port]` splitter). No
//! dependencies beyond `std`.
#![forbid(unsafe_code)]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes `bytes` to `path` so that, whatever happens (a crash, a kill -9,
/// a power cut), `path` holds either its old content or the new one, in
/// full: a temporary file in the same directory, written and fsynced, then
/// renamed over `path`, then the directory fsynced so the rename itself is
/// durable. The file gets `mode` (e.g. `0o600`). On any error the temporary
/// file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{}` names no file", path.display()),
        )
    })?;
    // Unique per process and call, so two writers never share a temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.{}.{seq}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Some file systems cannot fsync a directory (EINVAL); the rename is
    // then as durable as they make it.
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.raw_os_error() != Some(22) => Err(e),
        _ => Ok(()),
    }
}

/// Milliseconds since the Unix epoch (0 for a clock set before it; the
/// largest value for one past the year 292 million).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Locks `m`, taking over a lock poisoned by a thread that panicked while
/// holding it: Gantry's mutexes guard plain data that every holder leaves
/// consistent between statements, so the data is still good.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Splits `host[:port]` (and `[v6]:port`, `[v6]`) into the host, without
/// brackets, and the port when there is a valid one. A bare IPv6 address
/// (`::1`) is all host. What follows the last `:` must be a port number
/// for it to count as one.
pub fn split_host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, tail)) => (host, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        // Two or more colons without brackets: an IPv6 address.
        Some((host, _)) if host.contains(':') => (s, None),
        Some((host, port)) => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (s, None),
        },
        None => (s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomic_replaces_in_full_with_the_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["head"]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.json");
        write_atomic(&path, b"old", 0o644).unwrap();
        // The target is a directory now: the rename fails.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("inner")).unwrap();
        assert!(write_atomic(&blocked, b"new", 0o644).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")),
            "the temp file was removed"
        );
        assert!(write_atomic(Path::new("/"), b"x", 0o644).is_err());
    }

    #[test]
    fn now_ms_is_after_2026() {
        assert!(now_ms() > 1_767_225_600_000);
    }

    #[test]
    fn a_poisoned_lock_is_taken_over() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison");
        })
        .join();
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }

    #[test]
    fn host_port_splitting() {
        for (input, host, port) in [
            ("example.com", "example.com", None),
            ("example.com:8080", "example.com", Some(8080)),
            ("Example.com:0", "Example.com", Some(0)),
            ("example.com:http", "example.com:http", None),
            ("example.com:99999", "example.com:99999", None),
            ("127.0.0.1:443", "127.0.0.1", Some(443)),
            ("[::1]:8443", "::1", Some(8443)),
            ("[::1]", "::1", None),
            ("[::1]x", "::1", None),
            ("::1", "::1", None),
            ("fe80::1:80", "fe80::1:80", None),
            ("[::1", "[::1", None),
            ("", "", None),
            (":80", "", Some(80)),
        ] {
            assert_eq!(split_host_port(input), (host, port), "{input}");
        }
    }
}
