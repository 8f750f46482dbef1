//! Releases: numbered per app, each naming a content-addressed artifact
//! (its digest). Two builds with identical outputs share one artifact.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::{Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub app: String,
    /// 1, 2, 3… per app.
    pub number: i64,
    /// `sha256:<hex>` of the artifact.
    pub digest: String,
    pub source_commit: Option<String>,
    pub author: String,
    pub created_at: i64,
    pub build_log: String,
}

fn release(r: &rusqlite::Row<'_>) -> rusqlite::Result<Release> {
    Ok(Release {
        app: r.get(0)?,
        number: r.get(1)?,
        digest: r.get(2)?,
        source_commit: r.get(3)?,
        author: r.get(4)?,
        created_at: r.get(5)?,
        build_log: r.get(6)?,
    })
}

const COLUMNS: &str = "app, number, digest, source_commit, author, created_at, build_log";

impl Store {
    /// Records a new release of `app` with the next number.
    pub fn add_release(
        &self,
        app: &str,
        digest: &str,
        source_commit: Option<&str>,
        author: &str,
        build_log: &str,
    ) -> Result<Release> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let number: i64 = tx.query_row(
            "SELECT coalesce(max(number), 0) + 1 FROM releases WHERE app=?1",
            [app],
            |r| r.get(0),
        )?;
        let rel = Release {
            app: app.into(),
            number,
            digest: digest.into(),
            source_commit: source_commit.map(str::to_string),
            author: author.into(),
            created_at: crate::now_ms(),
            build_log: build_log.into(),
        };
        tx.execute(
            &format!("INSERT INTO releases ({COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7)"),
            params![
                rel.app,
                rel.number,
                rel.digest,
                rel.source_commit,
                rel.author,
                rel.created_at,
                rel.build_log
            ],
        )?;
        tx.commit()?;
        Ok(rel)
    }

    pub fn release(&self, app: &str, number: i64) -> Result<Release> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM releases WHERE app=?1 AND number=?2"),
                params![app, number],
                release,
            )
            .optional()?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "app `{app}` has no release {number}; see `gantry releases`"
                ))
            })
    }

    /// Releases of an app, newest first.
    pub fn releases(&self, app: &str) -> Result<Vec<Release>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM releases WHERE app=?1 ORDER BY number DESC"
        ))?;
        let rows = stmt.query_map([app], release)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_are_numbered_per_app() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store
            .add_release("hello", "sha256:aa", Some("abc123"), "alice", "ok")
            .unwrap();
        let b = store
            .add_release("hello", "sha256:aa", None, "bob", "")
            .unwrap();
        let c = store
            .add_release("other", "sha256:bb", None, "bob", "")
            .unwrap();
        assert_eq!((a.number, b.number, c.number), (1, 2, 1));
        assert_eq!(store.release("hello", 1).unwrap(), a);
        assert_eq!(store.releases("hello").unwrap(), vec![b, a]);
        assert!(
            store
                .release("hello", 9)
                .unwrap_err()
                .to_string()
                .contains("gantry releases")
        );
    }
}
