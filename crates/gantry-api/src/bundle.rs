//! The source bundle a build uploads: a gzipped tar of the app directory,
//! without version-control metadata, build outputs or local state.

use std::io::{Read, Write};
use std::path::Path;

/// Directory names never put into a bundle.
pub const SKIPPED: &[&str] = &[
    ".git",
    ".gantry",
    "target",
    "node_modules",
    "__pycache__",
    ".venv",
];

/// Packs `dir` into a .tar.gz in memory.
pub fn pack(dir: &Path) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    add_dir(&mut tar, dir, Path::new(""))?;
    tar.into_inner()?.finish()
}

fn add_dir<W: Write>(tar: &mut tar::Builder<W>, root: &Path, rel: &Path) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let path = rel.join(&name);
        let ft = e.file_type()?;
        if ft.is_dir() {
            if SKIPPED.iter().any(|s| name == *s) {
                continue;
            }
            tar.append_dir(&path, root.join(&path))?;
            add_dir(tar, root, &path)?;
        } else if ft.is_file() || ft.is_symlink() {
            tar.append_path_with_name(root.join(&path), &path)?;
        }
    }
    Ok(())
}

/// Unpacks a bundle into `dest`, refusing entries that would land outside it.
pub fn unpack(bytes: impl Read, dest: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    archive.set_preserve_permissions(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        // `unpack_in` skips paths with `..` or a root, and returns false.
        if !entry.unpack_in(dest)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "bundle entry {} points outside the bundle",
                    entry.path()?.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The entry point for fuzzing: [`unpack`] on a byte slice, the way
/// `POST …/releases` runs it on an uploaded bundle. It must not panic,
/// whatever the input; the fuzz target (fuzz/fuzz_targets/bundle.rs)
/// calls it once per input. Not part of the crate's API (hidden from its
/// docs).
#[doc(hidden)]
pub mod fuzz {
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Unpacks `data` into a fresh directory `<tmp>/<unique>/dest`, then
    /// panics if anything landed beside `dest` (an entry that escaped
    /// it), and removes the directory.
    pub fn unpack(data: &[u8]) {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!(
            "gantry-fuzz-bundle-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let dest = root.join("dest");
        std::fs::create_dir_all(&dest).expect("cannot create the fuzzing directory");
        let _ = super::unpack(data, &dest);
        let beside: Vec<_> = std::fs::read_dir(&root)
            .expect("cannot list the fuzzing directory")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| n != "dest")
            .collect();
        remove(&root);
        assert!(beside.is_empty(), "entries escaped the bundle: {beside:?}");
    }

    /// Removes `dir`, first making every directory in it writable
    /// (a bundle can carry directories of mode 0).
    fn remove(dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_skips_local_state() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("gantry.toml"), "x").unwrap();
        std::fs::create_dir_all(src.path().join("src/deep")).unwrap();
        std::fs::write(src.path().join("src/deep/main.rs"), "fn main() {}").unwrap();
        std::fs::create_dir_all(src.path().join("target/release")).unwrap();
        std::fs::write(src.path().join("target/release/big"), "x").unwrap();
        std::fs::create_dir_all(src.path().join(".git")).unwrap();
        let bytes = pack(src.path()).unwrap();
        let dst = tempfile::tempdir().unwrap();
        unpack(&bytes[..], dst.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.path().join("src/deep/main.rs")).unwrap(),
            "fn main() {}"
        );
        assert!(dst.path().join("gantry.toml").exists());
        assert!(!dst.path().join("target").exists());
        assert!(!dst.path().join(".git").exists());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dst = tempfile::tempdir().unwrap();
        assert!(unpack(&b"not a tarball"[..], dst.path()).is_err());
    }

    #[test]
    fn fuzz_entry_point_unpacks_and_cleans_up() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("gantry.toml"), "x").unwrap();
        std::fs::create_dir_all(src.path().join("sub")).unwrap();
        let bytes = pack(src.path()).unwrap();
        for input in [&bytes[..], b"", b"\x1f\x8b", &bytes[..bytes.len() / 2]] {
            fuzz::unpack(input);
        }
    }
}
