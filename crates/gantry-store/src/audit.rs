//! The append-only, hash-chained audit log.
//!
//! Each row's `hash` is SHA-256 over its own fields and the previous row's
//! hash (the first row chains to 64 zeros). Editing a row breaks its hash;
//! deleting a middle row breaks the next row's link and leaves a gap in
//! `seq`. Deleting the newest rows leaves a valid but shorter chain, so the
//! head of the chain (last `seq` and `hash`) is also written, after every
//! append, to `audit.head` in the data directory — outside the table — and
//! [`Store::verify_audit`] compares the two.
//!
//! Triggers refuse UPDATE and DELETE on the table, so only someone editing
//! the file behind Gantry's back can change it; the chain is what catches
//! that. (Someone who can rewrite both the database and the head file can
//! forge a consistent chain; ship `audit.head` elsewhere to guard against
//! that.)

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::{Result, Store, StoreError, now_ms, sha256_hex, write_atomic};

/// File holding the chain's head, outside the database.
pub const HEAD_FILE: &str = "audit.head";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What to record: who did what to which thing, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAuditEntry {
    pub actor: String,
    pub action: String,
    pub target: String,
    /// JSON parameters, with secret values already removed.
    pub params: serde_json::Value,
    pub outcome: String,
}

/// One stored audit row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub params: serde_json::Value,
    pub outcome: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Result of [`Store::verify_audit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerification {
    /// Rows checked.
    pub entries: i64,
    /// `None` when the chain is intact; else the first broken link.
    pub broken: Option<BrokenLink>,
    /// The chain head as recorded in the table.
    pub head_seq: i64,
    pub head_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenLink {
    /// The sequence number where the chain first fails.
    pub seq: i64,
    pub reason: String,
}

fn row_hash(seq: i64, at: i64, e: &NewAuditEntry, params_text: &str, prev_hash: &str) -> String {
    let canonical = serde_json::json!([
        seq,
        at,
        e.actor,
        e.action,
        e.target,
        params_text,
        e.outcome,
        prev_hash
    ]);
    sha256_hex(canonical.to_string().as_bytes())
}

#[derive(Debug, PartialEq, Eq)]
struct Head {
    seq: i64,
    hash: String,
}

impl Store {
    fn read_head(&self) -> Result<Option<Head>> {
        let path = self.dir.join(HEAD_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let mut parts = text.split_whitespace();
        match (parts.next().and_then(|s| s.parse().ok()), parts.next()) {
            (Some(seq), Some(hash)) => Ok(Some(Head {
                seq,
                hash: hash.to_string(),
            })),
            _ => Err(StoreError::Invalid(format!(
                "{} is not `<seq> <hash>`; it was edited or damaged",
                path.display()
            ))),
        }
    }

    /// Appends an entry, extending the chain, and updates the head file.
    pub fn append_audit(&self, entry: &NewAuditEntry) -> Result<AuditEntry> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let (prev_seq, prev_hash): (i64, String) = tx
            .query_row(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok((0, GENESIS.to_string())),
                e => Err(e),
            })?;
        let seq = prev_seq + 1;
        let at = now_ms();
        let params_text = entry.params.to_string();
        let hash = row_hash(seq, at, entry, &params_text, &prev_hash);
        tx.execute(
            "INSERT INTO audit_log (seq, at, actor, action, target, params, outcome, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                seq,
                at,
                entry.actor,
                entry.action,
                entry.target,
                params_text,
                entry.outcome,
                prev_hash,
                hash
            ],
        )?;
        tx.commit()?;
        // Still under the connection lock, so heads are written in order.
        write_atomic(
            &self.dir.join(HEAD_FILE),
            format!("{seq} {hash}\n").as_bytes(),
            0o600,
        )?;
        Ok(AuditEntry {
            seq,
            at,
            actor: entry.actor.clone(),
            action: entry.action.clone(),
            target: entry.target.clone(),
            params: entry.params.clone(),
            outcome: entry.outcome.clone(),
            prev_hash,
            hash,
        })
    }

    /// Entries at or after `since` (ms), oldest first, at most `limit`.
    pub fn list_audit(&self, since: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, at, actor, action, target, params, outcome, prev_hash, hash
             FROM audit_log WHERE at >= ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![since.unwrap_or(0), limit as i64], |r| {
            let params_text: String = r.get(5)?;
            Ok(AuditEntry {
                seq: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                params: serde_json::from_str(&params_text)
                    .unwrap_or(serde_json::Value::String(params_text)),
                outcome: r.get(6)?,
                prev_hash: r.get(7)?,
                hash: r.get(8)?,
            })
        })?;
        let mut out: Vec<AuditEntry> = rows.collect::<rusqlite::Result<_>>()?;
        out.reverse();
        Ok(out)
    }

    /// Walks the whole chain and compares its end with the head file.
    pub fn verify_audit(&self) -> Result<AuditVerification> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, at, actor, action, target, params, outcome, prev_hash, hash
             FROM audit_log ORDER BY seq",
        )?;
        let mut rows = stmt.query([])?;
        let mut expected_seq = 1;
        let mut prev_hash = GENESIS.to_string();
        let mut entries = 0;
        let mut broken = None;
        while let Some(r) = rows.next()? {
            let seq: i64 = r.get(0)?;
            let params_text: String = r.get(5)?;
            let e = NewAuditEntry {
                actor: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                params: serde_json::Value::Null,
                outcome: r.get(6)?,
            };
            let at: i64 = r.get(1)?;
            let stored_prev: String = r.get(7)?;
            let stored_hash: String = r.get(8)?;
            entries += 1;
            let reason = if seq != expected_seq {
                Some(format!(
                    "entry {expected_seq} is missing (the next entry is {seq}): rows were deleted"
                ))
            } else if stored_prev != prev_hash {
                Some(format!(
                    "entry {seq} does not link to the entry before it: the chain was cut or rewritten"
                ))
            } else if row_hash(seq, at, &e, &params_text, &prev_hash) != stored_hash {
                Some(format!(
                    "entry {seq} does not match its hash: its content was edited"
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                broken = Some(BrokenLink {
                    seq: expected_seq.min(seq),
                    reason,
                });
                break;
            }
            expected_seq = seq + 1;
            prev_hash = stored_hash;
        }
        drop(rows);
        drop(stmt);
        drop(conn);
        let head_seq = expected_seq - 1;
        if broken.is_none() {
            broken = match self.read_head()? {
                None if head_seq > 0 => Some(BrokenLink {
                    seq: 1,
                    reason: format!(
                        "the head file {HEAD_FILE} is missing while the log has {head_seq} entries"
                    ),
                }),
                None => None,
                Some(h) if h.seq > head_seq => Some(BrokenLink {
                    seq: head_seq + 1,
                    reason: format!(
                        "the log ends at entry {head_seq} but its head file records entry {}: \
                         the newest entries were deleted",
                        h.seq
                    ),
                }),
                Some(h) if h.seq == head_seq && h.hash != prev_hash => Some(BrokenLink {
                    seq: head_seq,
                    reason: format!(
                        "entry {head_seq} differs from the one the head file recorded: the end \
                         of the chain was rewritten"
                    ),
                }),
                // The head lags the table only when a crash fell between the
                // commit and the head write; the chain itself is verified.
                Some(_) => None,
            };
        }
        Ok(AuditVerification {
            entries,
            broken,
            head_seq,
            head_hash: prev_hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn entry(n: usize) -> NewAuditEntry {
        NewAuditEntry {
            actor: "alice".into(),
            action: "config.apply".into(),
            target: format!("hello/prod#{n}"),
            params: serde_json::json!({ "n": n }),
            outcome: "ok".into(),
        }
    }

    fn filled(n: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..n {
            store.append_audit(&entry(i)).unwrap();
        }
        (dir, store)
    }

    /// Tampering "behind the server's back": a second connection that drops
    /// the append-only triggers first, as an attacker with the file would.
    fn tamper(dir: &std::path::Path, sql: &str) {
        let conn = Connection::open(dir.join(crate::DB_FILE)).unwrap();
        conn.execute_batch("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
            .unwrap();
        conn.execute_batch(sql).unwrap();
    }

    #[test]
    fn the_head_file_is_written_whole_with_mode_0600_and_no_temp_file_left() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, store) = filled(3);
        let head = dir.path().join(HEAD_FILE);
        let text = std::fs::read_to_string(&head).unwrap();
        let last = store.list_audit(None, 1).unwrap().pop().unwrap();
        assert_eq!(text, format!("3 {}\n", last.hash));
        let mode = std::fs::metadata(&head).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let temps: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(temps.is_empty(), "{temps:?}");
    }

    #[test]
    fn a_head_file_that_cannot_be_replaced_is_an_io_error_naming_it() {
        let (dir, store) = filled(1);
        let head = dir.path().join(HEAD_FILE);
        std::fs::remove_file(&head).unwrap();
        // A non-empty directory in its place: the rename over it fails.
        std::fs::create_dir_all(head.join("blocked")).unwrap();
        match store.append_audit(&entry(1)) {
            Err(StoreError::Io { path, .. }) => assert_eq!(path, head),
            other => panic!("expected an Io error naming the head file, got {other:?}"),
        }
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")),
            "the temp file was removed"
        );
    }

    #[test]
    fn intact_chain_verifies() {
        let (_dir, store) = filled(5);
        let v = store.verify_audit().unwrap();
        assert_eq!((v.entries, v.head_seq, v.broken), (5, 5, None));
        assert_eq!(
            store
                .list_audit(None, 3)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
    }

    #[test]
    fn triggers_refuse_update_and_delete() {
        let (dir, _store) = filled(2);
        let conn = Connection::open(dir.path().join(crate::DB_FILE)).unwrap();
        assert!(conn.execute("UPDATE audit_log SET actor='x'", []).is_err());
        assert!(conn.execute("DELETE FROM audit_log", []).is_err());
    }

    #[test]
    fn edited_row_is_caught() {
        let (dir, store) = filled(5);
        tamper(
            dir.path(),
            "UPDATE audit_log SET outcome='denied' WHERE seq=3",
        );
        let b = store.verify_audit().unwrap().broken.unwrap();
        assert_eq!(b.seq, 3);
        assert!(b.reason.contains("edited"), "{}", b.reason);
    }

    #[test]
    fn deleted_middle_row_is_caught() {
        let (dir, store) = filled(5);
        tamper(dir.path(), "DELETE FROM audit_log WHERE seq=2");
        let b = store.verify_audit().unwrap().broken.unwrap();
        assert_eq!(b.seq, 2);
        assert!(b.reason.contains("missing"), "{}", b.reason);
    }

    #[test]
    fn deleted_newest_rows_are_caught_by_the_head() {
        let (dir, store) = filled(5);
        tamper(dir.path(), "DELETE FROM audit_log WHERE seq>=4");
        let b = store.verify_audit().unwrap().broken.unwrap();
        assert_eq!(b.seq, 4);
        assert!(
            b.reason.contains("newest entries were deleted"),
            "{}",
            b.reason
        );
    }

    #[test]
    fn rewritten_last_row_with_recomputed_hash_is_caught_by_the_head() {
        let (dir, store) = filled(3);
        // Forge row 3 consistently (valid link and hash), but the head file
        // still holds the original hash.
        let last = store.list_audit(None, 1).unwrap().pop().unwrap();
        let forged = NewAuditEntry {
            outcome: "forged".into(),
            ..entry(2)
        };
        let h = row_hash(
            3,
            last.at,
            &forged,
            &last.params.to_string(),
            &last.prev_hash,
        );
        tamper(
            dir.path(),
            &format!("UPDATE audit_log SET outcome='forged', hash='{h}' WHERE seq=3"),
        );
        let b = store.verify_audit().unwrap().broken.unwrap();
        assert_eq!(b.seq, 3);
        assert!(b.reason.contains("rewritten"), "{}", b.reason);
    }
}
