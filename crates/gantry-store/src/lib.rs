//! Gantry's persistence: one SQLite database (WAL) under the data directory.
//!
//! This is the only crate that touches SQLite. Everything the control plane
//! remembers goes through [`Store`]:
//!
//! - schema migrations, applied at open; a database written by a newer Gantry
//!   is refused instead of being "upgraded" backwards ([`migrations`]);
//! - config versions per app and environment ([`config`]);
//! - secrets, stored only as age ciphertext ([`secrets`], keys in [`vault`]);
//! - API tokens, stored only as SHA-256 hashes ([`tokens`]);
//! - the append-only, hash-chained audit log, whose head also lives in a file
//!   outside the database so that truncation is detected ([`audit`]).
//!
//! The store is synchronous; the server calls it from blocking tasks. A single
//! connection behind a mutex is plenty for a control plane, and keeps every
//! multi-statement change trivially serialised.
#![forbid(unsafe_code)]

pub mod audit;
pub mod config;
pub mod deploys;
pub mod instances;
mod migrations;
pub mod releases;
pub mod secrets;
pub mod tokens;
pub mod vault;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

pub use migrations::SCHEMA_VERSION;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "gantry.db";

/// Everything that can go wrong in the store, each variant saying what to do.
/// A variant's cause is its `source()`, never repeated in its message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the data directory {path} was written by a newer Gantry (schema version {found}, this \
         binary knows up to {known}); run the newer gantry binary, or restore a backup made by \
         this version"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("schema migration failed: {0}")]
    Migration(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Vault(#[from] vault::VaultError),
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The control plane's database.
pub struct Store {
    dir: PathBuf,
    conn: Mutex<Connection>,
    vault: std::sync::RwLock<vault::Vault>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, applying pending schema
    /// migrations, with the secret key from the data directory.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_key(dir, None)
    }

    /// Opens the store; `env_key` is the age identity given by environment
    /// variable, if any (it then takes precedence over the key file).
    /// Refuses a database written by a newer Gantry, and finishes a key
    /// rotation that was interrupted.
    pub fn open_with_key(dir: &Path, env_key: Option<&str>) -> Result<Self> {
        create_private_dir(dir)?;
        let path = dir.join(DB_FILE);
        let mut conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::apply(&mut conn, &path)?;
        let vault = vault::Vault::load(dir, env_key)?;
        let store = Self {
            dir: dir.to_path_buf(),
            conn: Mutex::new(conn),
            vault: std::sync::RwLock::new(vault),
        };
        store.finish_interrupted_rotation()?;
        Ok(store)
    }

    /// The data directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks that the database answers and its schema is current (`/readyz`).
    pub fn ready(&self) -> Result<()> {
        let conn = self.conn();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::Migration(format!(
                "schema version is {version}, expected {SCHEMA_VERSION}"
            )));
        }
        Ok(())
    }

    fn vault(&self) -> std::sync::RwLockReadGuard<'_, vault::Vault> {
        self.vault.read().unwrap_or_else(|e| e.into_inner())
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A poisoned lock only means another thread panicked mid-call; SQLite
        // rolled back whatever transaction it had open, so the connection is
        // still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|source| StoreError::DataDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `bytes` to `path` durably with `mode` ([`gantry_common::write_atomic`]:
/// temp file, fsync, rename, fsync the directory), as a store error that
/// names the file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    gantry_common::write_atomic(path, bytes, mode).map_err(|source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Milliseconds since the Unix epoch, the store's one time unit
/// (Gantry's one clock, [`gantry_common::now_ms`]).
pub use gantry_common::now_ms;

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_fresh_dir_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = Store::open(&data).unwrap();
        store.ready().unwrap();
        drop(store);
        let store = Store::open(&data).unwrap();
        store.ready().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn no_message_repeats_its_cause() {
        let io = || std::io::Error::other("the disk said no");
        let errors: Vec<StoreError> = vec![
            StoreError::DataDir {
                path: "/d".into(),
                source: io(),
            },
            StoreError::Io {
                path: "/d/audit.head".into(),
                source: io(),
            },
            StoreError::Vault(vault::VaultError::Read {
                path: "/d/secret.key".into(),
                source: io(),
            }),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(13),
                Some("database or disk is full".into()),
            )),
        ];
        for e in errors {
            let cause = std::error::Error::source(&e)
                .unwrap_or_else(|| panic!("{e:?} has a cause"))
                .to_string();
            assert!(!e.to_string().contains(&cause), "{e} repeats {cause}");
        }
        // A real one: a data directory that is a file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = Store::open(&file)
            .err()
            .expect("a file is no data directory");
        assert_eq!(
            e.to_string(),
            format!("cannot use data directory {}", file.display())
        );
        let io = std::error::Error::source(&e)
            .and_then(|c| c.downcast_ref::<std::io::Error>())
            .expect("the io error is the cause");
        assert_eq!(io.kind(), std::io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 3)
            .unwrap();
        drop(conn);
        let err = Store::open(dir.path()).err().expect("must refuse");
        let msg = err.to_string();
        assert!(
            matches!(err, StoreError::NewerSchema { found, known, .. } if found == SCHEMA_VERSION + 3 && known == SCHEMA_VERSION),
            "{msg}"
        );
        assert!(msg.contains("written by a newer Gantry"), "{msg}");
    }

    #[test]
    fn migrates_from_empty_to_current() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let conn = store.conn();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        for table in [
            "config_versions",
            "secrets",
            "tokens",
            "audit_log",
            "instances",
            "events",
            "usage_samples",
            "releases",
            "deploys",
            "deploy_events",
            "env_leases",
        ] {
            let n: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?1",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "table {table} missing");
        }
    }
}
