//! Config versions: every applied `gantry.toml` per app and environment.
//!
//! A version keeps the whole source text, so any version can be shown, diffed
//! against another, or applied again (a rollback is recorded as a new
//! version whose note names the version it restored).

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::{Result, Store, StoreError, now_ms, sha256_hex};

/// One stored config version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigVersion {
    pub app: String,
    pub env: String,
    pub version: i64,
    pub author: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// SHA-256 of `source`.
    pub hash: String,
    pub file_name: String,
    pub source: String,
    pub note: String,
}

/// What [`Store::apply_config`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A new version was stored.
    New(ConfigVersion),
    /// The source is identical to the current version; nothing was stored.
    Unchanged(ConfigVersion),
}

/// An app environment and its current config version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppEnv {
    pub app: String,
    pub env: String,
    pub version: i64,
    pub updated_at: i64,
    pub author: String,
}

const COLUMNS: &str = "app, env, version, author, created_at, hash, file_name, source, note";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConfigVersion> {
    Ok(ConfigVersion {
        app: r.get(0)?,
        env: r.get(1)?,
        version: r.get(2)?,
        author: r.get(3)?,
        created_at: r.get(4)?,
        hash: r.get(5)?,
        file_name: r.get(6)?,
        source: r.get(7)?,
        note: r.get(8)?,
    })
}

impl Store {
    /// Stores `source` as the next version for `app`/`env`, unless it equals
    /// the current version.
    pub fn apply_config(
        &self,
        app: &str,
        env: &str,
        file_name: &str,
        source: &str,
        author: &str,
        note: &str,
    ) -> Result<Applied> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let hash = sha256_hex(source.as_bytes());
        let current = tx
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM config_versions WHERE app=?1 AND env=?2 \
                     ORDER BY version DESC LIMIT 1"
                ),
                params![app, env],
                row,
            )
            .optional()?;
        if let Some(cur) = current.as_ref().filter(|c| c.hash == hash) {
            return Ok(Applied::Unchanged(cur.clone()));
        }
        let version = current.map_or(1, |c| c.version + 1);
        let v = ConfigVersion {
            app: app.to_string(),
            env: env.to_string(),
            version,
            author: author.to_string(),
            created_at: now_ms(),
            hash,
            file_name: file_name.to_string(),
            source: source.to_string(),
            note: note.to_string(),
        };
        tx.execute(
            &format!("INSERT INTO config_versions ({COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"),
            params![
                v.app,
                v.env,
                v.version,
                v.author,
                v.created_at,
                v.hash,
                v.file_name,
                v.source,
                v.note
            ],
        )?;
        tx.commit()?;
        Ok(Applied::New(v))
    }

    /// The newest version for `app`/`env`.
    pub fn current_config(&self, app: &str, env: &str) -> Result<ConfigVersion> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM config_versions WHERE app=?1 AND env=?2 \
                     ORDER BY version DESC LIMIT 1"
                ),
                params![app, env],
                row,
            )
            .optional()?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "no config applied for app `{app}` in environment `{env}`; apply one with \
                     `gantry config apply --env {env}`"
                ))
            })
    }

    /// One version for `app`/`env`.
    pub fn config_version(&self, app: &str, env: &str, version: i64) -> Result<ConfigVersion> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM config_versions WHERE app=?1 AND env=?2 AND version=?3"
                ),
                params![app, env, version],
                row,
            )
            .optional()?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "config version {version} does not exist for app `{app}` in environment \
                     `{env}`; see `gantry config history --env {env}`"
                ))
            })
    }

    /// All versions for `app`/`env`, newest first.
    pub fn config_history(&self, app: &str, env: &str) -> Result<Vec<ConfigVersion>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM config_versions WHERE app=?1 AND env=?2 ORDER BY version DESC"
        ))?;
        let rows = stmt.query_map(params![app, env], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every app environment that has a config, with its current version.
    pub fn app_envs(&self) -> Result<Vec<AppEnv>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT app, env, version, created_at, author FROM config_versions c \
             WHERE version = (SELECT max(version) FROM config_versions d \
                              WHERE d.app = c.app AND d.env = c.env) \
             ORDER BY app, env",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AppEnv {
                app: r.get(0)?,
                env: r.get(1)?,
                version: r.get(2)?,
                updated_at: r.get(3)?,
                author: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_identical_source_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let Applied::New(v1) = store
            .apply_config("hello", "prod", "gantry.toml", "a = 1\n", "alice", "")
            .unwrap()
        else {
            panic!("first apply must store a version")
        };
        assert_eq!(v1.version, 1);
        let again = store
            .apply_config("hello", "prod", "gantry.toml", "a = 1\n", "bob", "")
            .unwrap();
        assert_eq!(again, Applied::Unchanged(v1.clone()));
        let Applied::New(v2) = store
            .apply_config("hello", "prod", "gantry.toml", "a = 2\n", "bob", "")
            .unwrap()
        else {
            panic!("changed source must store a version")
        };
        assert_eq!(v2.version, 2);
        assert_eq!(v2.author, "bob");
        // Other environments count separately.
        let Applied::New(s1) = store
            .apply_config("hello", "staging", "gantry.toml", "a = 2\n", "bob", "")
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(s1.version, 1);
        assert_eq!(store.current_config("hello", "prod").unwrap(), v2);
        assert_eq!(store.config_version("hello", "prod", 1).unwrap(), v1);
        let hist = store.config_history("hello", "prod").unwrap();
        assert_eq!(
            hist.iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![2, 1]
        );
        let envs = store.app_envs().unwrap();
        assert_eq!(envs.len(), 2);
        assert_eq!((envs[0].env.as_str(), envs[0].version), ("prod", 2));
        let err = store.config_version("hello", "prod", 9).unwrap_err();
        assert!(err.to_string().contains("gantry config history"), "{err}");
    }
}
