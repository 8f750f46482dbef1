//! The routing table on disk: `<state_dir>/table.json`, replaced
//! atomically (write a temp file, fsync, rename, fsync the directory), so a
//! crash leaves either the old or the new table, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::ProxyError;
use crate::routing::table::Table;

const FILE: &str = "table.json";

pub(crate) fn table_path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The persisted table, or an empty one when none was saved yet.
pub(crate) fn load(state_dir: &Path) -> Result<Table, ProxyError> {
    let path = table_path(state_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Table::default()),
        Err(source) => return Err(ProxyError::ReadTable { path, source }),
    };
    Table::from_json(&bytes).map_err(|source| ProxyError::BadTable { path, source })
}

pub(crate) fn save(state_dir: &Path, table: &Table) -> Result<(), ProxyError> {
    let path = table_path(state_dir);
    let tmp = state_dir.join(format!(".{FILE}.tmp"));
    let write_err = |source| ProxyError::WriteTable {
        path: path.clone(),
        source,
    };
    let mut json = serde_json::to_vec_pretty(table).map_err(|e| write_err(e.into()))?;
    json.push(b'\n');
    let mut f = std::fs::File::create(&tmp).map_err(write_err)?;
    f.write_all(&json).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(write_err)?;
    if let Ok(dir) = std::fs::File::open(state_dir) {
        // Makes the rename durable; not all filesystems support it.
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Table::default());
        let t = Table {
            version: 7,
            routes: vec![],
        };
        save(dir.path(), &t).unwrap();
        assert_eq!(load(dir.path()).unwrap(), t);
        std::fs::write(table_path(dir.path()), b"{").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("table.json"), "{err}");
    }
}
