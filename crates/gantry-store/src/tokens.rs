//! API tokens. Only a SHA-256 hash of each token is stored; the token itself
//! is shown once, at creation.
//!
//! A token reads `gantry_<id>_<secret>`: the id names it in listings and
//! revocations, the secret is 32 random bytes. Tokens are high-entropy, so a
//! plain hash (no password KDF) is the right tool.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::{Result, Store, StoreError, now_ms, sha256_hex};

/// A token's record (never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub role: String,
    /// The one environment it may act on, or `None` for all.
    pub env: Option<String>,
    pub description: String,
    pub created_at: i64,
    pub created_by: String,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// Why a presented token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejected {
    #[error("the token is not known")]
    Unknown,
    #[error("the token `{0}` was revoked")]
    Revoked(String),
    #[error("the token `{0}` has expired")]
    Expired(String),
}

const COLUMNS: &str =
    "id, role, env, description, created_at, created_by, expires_at, revoked_at, last_used_at";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        role: r.get(1)?,
        env: r.get(2)?,
        description: r.get(3)?,
        created_at: r.get(4)?,
        created_by: r.get(5)?,
        expires_at: r.get(6)?,
        revoked_at: r.get(7)?,
        last_used_at: r.get(8)?,
    })
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|e| StoreError::Invalid(format!("no randomness from the OS: {e}")))?;
    Ok(hex::encode(buf))
}

impl Store {
    /// Creates a token; returns its record and the token text (shown once).
    pub fn create_token(
        &self,
        role: &str,
        env: Option<&str>,
        expires_at: Option<i64>,
        description: &str,
        created_by: &str,
    ) -> Result<(TokenRecord, String)> {
        let id = random_hex(4)?;
        let token = format!("gantry_{id}_{}", random_hex(32)?);
        let rec = TokenRecord {
            id,
            role: role.to_string(),
            env: env.map(str::to_string),
            description: description.to_string(),
            created_at: now_ms(),
            created_by: created_by.to_string(),
            expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        self.conn().execute(
            "INSERT INTO tokens (id, hash, role, env, description, created_at, created_by, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                rec.id,
                sha256_hex(token.as_bytes()),
                rec.role,
                rec.env,
                rec.description,
                rec.created_at,
                rec.created_by,
                rec.expires_at
            ],
        )?;
        Ok((rec, token))
    }

    /// Looks a presented token up; accepts it only if known, not revoked and
    /// not expired at `now` (ms).
    pub fn authenticate_token(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Result<TokenRecord, TokenRejected>> {
        let conn = self.conn();
        let rec = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM tokens WHERE hash=?1"),
                [sha256_hex(token.as_bytes())],
                record,
            )
            .optional()?;
        let Some(rec) = rec else {
            return Ok(Err(TokenRejected::Unknown));
        };
        if rec.revoked_at.is_some() {
            return Ok(Err(TokenRejected::Revoked(rec.id)));
        }
        if rec.expires_at.is_some_and(|e| e <= now) {
            return Ok(Err(TokenRejected::Expired(rec.id)));
        }
        conn.execute(
            "UPDATE tokens SET last_used_at=?2 WHERE id=?1",
            params![rec.id, now],
        )?;
        Ok(Ok(rec))
    }

    /// All tokens, newest first.
    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM tokens ORDER BY created_at DESC, id"
        ))?;
        let rows = stmt.query_map([], record)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes a token by id. Revoking twice is an error that says so.
    pub fn revoke_token(&self, id: &str) -> Result<TokenRecord> {
        let conn = self.conn();
        let rec = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM tokens WHERE id=?1"),
                [id],
                record,
            )
            .optional()?
            .ok_or_else(|| {
                StoreError::NotFound(format!("no token with id `{id}`; see `gantry token list`"))
            })?;
        if rec.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "token `{id}` is already revoked"
            )));
        }
        let now = now_ms();
        conn.execute(
            "UPDATE tokens SET revoked_at=?2 WHERE id=?1",
            params![id, now],
        )?;
        Ok(TokenRecord {
            revoked_at: Some(now),
            ..rec
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (rec, token) = store
            .create_token("deployer", Some("prod"), None, "ci", "admin")
            .unwrap();
        assert!(token.starts_with(&format!("gantry_{}_", rec.id)));
        let ok = store.authenticate_token(&token, now_ms()).unwrap().unwrap();
        assert_eq!(
            (ok.role.as_str(), ok.env.as_deref()),
            ("deployer", Some("prod"))
        );
        assert_eq!(
            store.authenticate_token("gantry_x_y", now_ms()).unwrap(),
            Err(TokenRejected::Unknown)
        );
        store.revoke_token(&rec.id).unwrap();
        assert_eq!(
            store.authenticate_token(&token, now_ms()).unwrap(),
            Err(TokenRejected::Revoked(rec.id.clone()))
        );
        assert!(store.revoke_token(&rec.id).is_err());
        // The database holds the hash, not the token.
        let db = std::fs::read(dir.path().join("gantry.db-wal")).unwrap_or_default();
        assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()));
    }

    #[test]
    fn expired_token_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (rec, token) = store
            .create_token("viewer", None, Some(1_000), "", "admin")
            .unwrap();
        assert_eq!(
            store.authenticate_token(&token, 999).unwrap().map(|r| r.id),
            Ok(rec.id.clone())
        );
        assert_eq!(
            store.authenticate_token(&token, 1_000).unwrap(),
            Err(TokenRejected::Expired(rec.id))
        );
    }
}
