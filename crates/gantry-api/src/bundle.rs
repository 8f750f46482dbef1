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
}
