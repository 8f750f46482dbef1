//! Secret values per app and environment, encrypted with the [`crate::vault`].
//!
//! Values leave this module only through [`Store::secret_values`], which the
//! runtime uses to inject them as environment variables. Listings carry names
//! and versions, never values.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::vault::{self, KeySource, NEXT_KEY_FILE, VaultError};
use crate::{Result, Store, StoreError, now_ms, write_atomic};

/// A secret's metadata (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub app: String,
    pub env: String,
    pub name: String,
    /// Starts at 1, incremented by each `set`.
    pub version: i64,
    pub updated_at: i64,
    pub updated_by: String,
}

fn info(r: &rusqlite::Row<'_>) -> rusqlite::Result<SecretInfo> {
    Ok(SecretInfo {
        app: r.get(0)?,
        env: r.get(1)?,
        name: r.get(2)?,
        version: r.get(3)?,
        updated_at: r.get(4)?,
        updated_by: r.get(5)?,
    })
}

impl Store {
    /// Sets (or replaces) a secret, returning its new metadata. A value with
    /// a NUL byte is refused ([`StoreError::Invalid`]).
    pub fn set_secret(
        &self,
        app: &str,
        env: &str,
        name: &str,
        value: &[u8],
        actor: &str,
    ) -> Result<SecretInfo> {
        // Values become environment variables of the app, which end at a NUL.
        if let Some(at) = value.iter().position(|b| *b == 0) {
            return Err(StoreError::Invalid(format!(
                "the value for secret `{name}` contains a NUL byte (at byte {at}); environment \
                 variables cannot hold one, so the app could never receive it"
            )));
        }
        let ciphertext = self.vault().encrypt(value)?;
        let conn = self.conn();
        let now = now_ms();
        conn.execute(
            "INSERT INTO secrets (app, env, name, version, ciphertext, updated_at, updated_by)
             VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6)
             ON CONFLICT (app, env, name) DO UPDATE SET
                version = version + 1, ciphertext = excluded.ciphertext,
                updated_at = excluded.updated_at, updated_by = excluded.updated_by",
            params![app, env, name, ciphertext, now, actor],
        )?;
        Ok(conn.query_row(
            "SELECT app, env, name, version, updated_at, updated_by FROM secrets
             WHERE app=?1 AND env=?2 AND name=?3",
            params![app, env, name],
            info,
        )?)
    }

    /// Names and versions of the secrets of an app environment, by name.
    pub fn list_secrets(&self, app: &str, env: &str) -> Result<Vec<SecretInfo>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT app, env, name, version, updated_at, updated_by FROM secrets
             WHERE app=?1 AND env=?2 ORDER BY name",
        )?;
        let rows = stmt.query_map(params![app, env], info)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Removes a secret; an error if it does not exist.
    pub fn remove_secret(&self, app: &str, env: &str, name: &str) -> Result<()> {
        let n = self.conn().execute(
            "DELETE FROM secrets WHERE app=?1 AND env=?2 AND name=?3",
            params![app, env, name],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "secret `{name}` is not set for app `{app}` in environment `{env}`; see \
                 `gantry secrets list --env {env}`"
            )));
        }
        Ok(())
    }

    /// Decrypted values of every secret of an app environment (for
    /// injection into app processes only; never for an API answer).
    pub fn secret_values(&self, app: &str, env: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let rows: Vec<(String, Vec<u8>)> = {
            let conn = self.conn();
            let mut stmt = conn.prepare(
                "SELECT name, ciphertext FROM secrets WHERE app=?1 AND env=?2 ORDER BY name",
            )?;
            let rows = stmt.query_map(params![app, env], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let vault = self.vault();
        rows.into_iter()
            .map(|(name, ct)| Ok((name, vault.decrypt(&ct)?)))
            .collect()
    }

    /// Whether one secret has a value, without decrypting it.
    pub fn secret_exists(&self, app: &str, env: &str, name: &str) -> Result<bool> {
        Ok(self
            .conn()
            .query_row(
                "SELECT 1 FROM secrets WHERE app=?1 AND env=?2 AND name=?3",
                params![app, env, name],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Generates a new key, re-encrypts every secret to it and makes it the
    /// key. Returns how many secrets were re-encrypted.
    pub fn rotate_key(&self) -> Result<usize> {
        if *self.vault().source() == KeySource::Env {
            return Err(VaultError::KeyFromEnv.into());
        }
        let next = age::x25519::Identity::generate();
        write_atomic(
            &self.dir.join(NEXT_KEY_FILE),
            vault::identity_file_text(&next).as_bytes(),
            0o600,
        )?;
        // Reload so the vault knows the pending key, then finish.
        self.load_pending_key()?;
        self.finish_interrupted_rotation()
    }

    fn load_pending_key(&self) -> Result<()> {
        let reloaded = vault::Vault::load(&self.dir, None)?;
        *self.vault.write().unwrap_or_else(|e| e.into_inner()) = reloaded;
        Ok(())
    }

    /// If a rotation is pending (`secret.key.next` exists), re-encrypts
    /// everything to the next key and makes it the key. Idempotent.
    pub(crate) fn finish_interrupted_rotation(&self) -> Result<usize> {
        let mut vault = self.vault.write().unwrap_or_else(|e| e.into_inner());
        let Some(next) = vault.rotation_pending().cloned() else {
            return Ok(0);
        };
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let rows: Vec<(String, String, String, Vec<u8>)> = {
            let mut stmt = tx.prepare("SELECT app, env, name, ciphertext FROM secrets")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let count = rows.len();
        for (app, env, name, ct) in rows {
            let plain = vault.decrypt(&ct)?;
            let fresh = vault::encrypt_to(&next, &plain)?;
            tx.execute(
                "UPDATE secrets SET ciphertext=?4 WHERE app=?1 AND env=?2 AND name=?3",
                params![app, env, name, fresh],
            )?;
        }
        tx.commit()?;
        let key = self.dir.join(vault::KEY_FILE);
        std::fs::rename(self.dir.join(NEXT_KEY_FILE), &key)
            .map_err(|source| StoreError::Io { path: key, source })?;
        vault.promote(next);
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_list_remove_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store
            .set_secret("hello", "prod", "DB_URL", b"pg://x", "alice")
            .unwrap();
        assert_eq!(a.version, 1);
        let b = store
            .set_secret("hello", "prod", "DB_URL", b"pg://y", "bob")
            .unwrap();
        assert_eq!((b.version, b.updated_by.as_str()), (2, "bob"));
        store
            .set_secret("hello", "staging", "DB_URL", b"pg://s", "bob")
            .unwrap();
        let list = store.list_secrets("hello", "prod").unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            store.secret_values("hello", "prod").unwrap(),
            vec![("DB_URL".to_string(), b"pg://y".to_vec())]
        );
        assert!(store.secret_exists("hello", "staging", "DB_URL").unwrap());
        store.remove_secret("hello", "prod", "DB_URL").unwrap();
        assert!(store.list_secrets("hello", "prod").unwrap().is_empty());
        let err = store.remove_secret("hello", "prod", "DB_URL").unwrap_err();
        assert!(err.to_string().contains("gantry secrets list"), "{err}");
        // The database file never holds the plaintext.
        drop(store);
        let db = std::fs::read(dir.path().join(crate::DB_FILE)).unwrap();
        let wal = std::fs::read(dir.path().join("gantry.db-wal")).unwrap_or_default();
        for bytes in [db, wal] {
            assert!(!bytes.windows(6).any(|w| w == b"pg://s"));
        }
    }

    #[test]
    fn a_value_with_a_nul_byte_is_refused_and_nothing_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let err = store
            .set_secret("a", "e", "BIN", b"ab\0cd", "t")
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("NUL byte (at byte 2)"), "{err}");
        assert!(!store.secret_exists("a", "e", "BIN").unwrap());
    }

    #[test]
    fn rotate_key_reencrypts_and_old_key_no_longer_decrypts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_secret("a", "e", "ONE", b"1", "t").unwrap();
        store.set_secret("a", "e", "TWO", b"2", "t").unwrap();
        let old_key = std::fs::read_to_string(dir.path().join(vault::KEY_FILE)).unwrap();
        assert_eq!(store.rotate_key().unwrap(), 2);
        let new_key = std::fs::read_to_string(dir.path().join(vault::KEY_FILE)).unwrap();
        assert_ne!(old_key, new_key);
        assert!(!dir.path().join(NEXT_KEY_FILE).exists());
        assert_eq!(store.secret_values("a", "e").unwrap().len(), 2);
        drop(store);
        // Reopen with the new key file: values intact.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.secret_values("a", "e").unwrap(),
            vec![("ONE".into(), b"1".to_vec()), ("TWO".into(), b"2".to_vec())]
        );
        drop(store);
        // The old key alone can no longer read them.
        let old = old_key.lines().last().unwrap().to_string();
        let store = Store::open_with_key(dir.path(), Some(&old)).unwrap();
        assert!(store.secret_values("a", "e").is_err());
    }

    #[test]
    fn interrupted_rotation_is_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_secret("a", "e", "ONE", b"1", "t").unwrap();
        drop(store);
        // Simulate a crash right after the next key was written.
        let next = age::x25519::Identity::generate();
        write_atomic(
            &dir.path().join(NEXT_KEY_FILE),
            vault::identity_file_text(&next).as_bytes(),
            0o600,
        )
        .unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!dir.path().join(NEXT_KEY_FILE).exists());
        assert_eq!(store.secret_values("a", "e").unwrap()[0].1, b"1");
    }

    #[test]
    fn env_key_cannot_be_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let id = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let store = Store::open_with_key(dir.path(), Some(id.to_string().expose_secret())).unwrap();
        let err = store.rotate_key().unwrap_err().to_string();
        assert!(err.contains("GANTRY_SECRET_KEY"), "{err}");
    }
}
