//! The routing table on disk: `<state_dir>/table.json`, replaced
//! atomically (`gantry_common::write_atomic`: write a temp file, fsync,
//! rename, fsync the directory), so a crash leaves either the old or the
//! new table, never half of one.

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

/// Replaces the persisted table with `table`, durably
/// (`gantry_common::write_atomic`).
pub(crate) fn save(state_dir: &Path, table: &Table) -> Result<(), ProxyError> {
    let path = table_path(state_dir);
    let mut json = serde_json::to_vec_pretty(table).map_err(|e| ProxyError::WriteTable {
        path: path.clone(),
        source: e.into(),
    })?;
    json.push(b'\n');
    gantry_common::write_atomic(&path, &json, 0o644)
        .map_err(|source| ProxyError::WriteTable { path, source })
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
