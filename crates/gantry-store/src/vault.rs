//! Encryption of secret values at rest, with age (X25519).
//!
//! The key is an age identity, read from the environment variable the binary
//! names (`GANTRY_SECRET_KEY`) when set, else from `secret.key` in the data
//! directory (created with mode 0600 on first use).
//!
//! Key rotation is crash-safe: the new key is first written to
//! `secret.key.next`, every secret is re-encrypted to it in one transaction,
//! then the file is renamed over `secret.key`. While `secret.key.next` exists,
//! both keys decrypt, and [`crate::Store::open_with_key`] finishes an
//! interrupted rotation before anything else runs.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age::x25519::Identity;

/// File holding the age identity inside the data directory.
pub const KEY_FILE: &str = "secret.key";
/// File holding the identity of a rotation in progress.
pub const NEXT_KEY_FILE: &str = "secret.key.next";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("cannot read the secret key {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the secret key {origin} is not a valid age identity (expected `AGE-SECRET-KEY-1…`); \
         restore the original key file, or set the right key in GANTRY_SECRET_KEY"
    )]
    BadKey { origin: String },
    #[error(
        "the secret key {path} has mode {mode:o}; it must be readable by its owner only: run \
         `chmod 600 {path}`"
    )]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("encryption failed: {0}")]
    Encrypt(String),
    #[error(
        "cannot decrypt a stored secret with the current key ({0}); was the key file replaced, or \
         GANTRY_SECRET_KEY set to another key?"
    )]
    Decrypt(String),
    #[error(
        "the secret key comes from GANTRY_SECRET_KEY, so Gantry cannot replace it; rotate by \
         re-setting the secrets under a new key"
    )]
    KeyFromEnv,
}

/// Where the key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Env,
}

/// The loaded keys: the primary encrypts, all of them decrypt.
pub struct Vault {
    primary: Identity,
    others: Vec<Identity>,
    source: KeySource,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

pub(crate) fn parse_identity(text: &str, origin: &str) -> Result<Identity, VaultError> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    Identity::from_str(line).map_err(|_| VaultError::BadKey {
        origin: origin.to_string(),
    })
}

fn read_key_file(path: &Path) -> Result<Identity, VaultError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| VaultError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(VaultError::KeyMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| VaultError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_identity(&text, &path.display().to_string())
}

pub(crate) fn identity_file_text(id: &Identity) -> String {
    format!(
        "# Gantry secret key (age identity). Keep it: without it, stored secrets cannot be \
         decrypted.\n{}\n",
        id.to_string().expose_secret()
    )
}

impl Vault {
    /// Loads the key from `env_key` if given, else from the data directory,
    /// creating a new key file there if none exists.
    pub fn load(dir: &Path, env_key: Option<&str>) -> Result<Self, crate::StoreError> {
        if let Some(key) = env_key {
            let primary = parse_identity(key, "in GANTRY_SECRET_KEY")?;
            return Ok(Self {
                primary,
                others: Vec::new(),
                source: KeySource::Env,
            });
        }
        let path = dir.join(KEY_FILE);
        let primary = if path.exists() {
            read_key_file(&path)?
        } else {
            let id = Identity::generate();
            crate::write_atomic(&path, identity_file_text(&id).as_bytes(), 0o600)?;
            id
        };
        let next = dir.join(NEXT_KEY_FILE);
        let others = if next.exists() {
            vec![read_key_file(&next)?]
        } else {
            Vec::new()
        };
        Ok(Self {
            primary,
            others,
            source: KeySource::File(path),
        })
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    pub(crate) fn rotation_pending(&self) -> Option<&Identity> {
        self.others.first()
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        encrypt_to(&self.primary, plaintext)
    }

    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, VaultError> {
        use std::io::Read;
        let decryptor = age::Decryptor::new_buffered(ciphertext)
            .map_err(|e| VaultError::Decrypt(e.to_string()))?;
        let ids = std::iter::once(&self.primary)
            .chain(self.others.iter())
            .map(|i| i as &dyn age::Identity);
        let mut reader = decryptor
            .decrypt(ids)
            .map_err(|e| VaultError::Decrypt(e.to_string()))?;
        let mut out = Vec::new();
        reader
            .read_to_end(&mut out)
            .map_err(|e| VaultError::Decrypt(e.to_string()))?;
        Ok(out)
    }

    /// Makes `next` the primary key (after the store re-encrypted everything).
    pub(crate) fn promote(&mut self, next: Identity) {
        self.primary = next;
        self.others.clear();
    }
}

pub(crate) fn encrypt_to(id: &Identity, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
    age::encrypt(&id.to_public(), plaintext).map_err(|e| VaultError::Encrypt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_key_file_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::load(dir.path(), None).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let ct = vault.encrypt(b"hunter2").unwrap();
        assert!(!ct.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(vault.decrypt(&ct).unwrap(), b"hunter2");
        // Reloading uses the same key.
        let again = Vault::load(dir.path(), None).unwrap();
        assert_eq!(again.decrypt(&ct).unwrap(), b"hunter2");
    }

    #[test]
    fn refuses_world_readable_key_and_garbage_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        drop(Vault::load(dir.path(), None).unwrap());
        let path = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Vault::load(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        let err = Vault::load(dir.path(), Some("not-a-key"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("GANTRY_SECRET_KEY"), "{err}");
    }

    #[test]
    fn env_key_is_used_and_other_key_cannot_decrypt() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::generate();
        let key = id.to_string().expose_secret().to_string();
        let vault = Vault::load(dir.path(), Some(&key)).unwrap();
        assert_eq!(vault.source(), &KeySource::Env);
        assert!(!dir.path().join(KEY_FILE).exists());
        let ct = vault.encrypt(b"v").unwrap();
        let other = Vault::load(dir.path(), None).unwrap();
        let err = other.decrypt(&ct).unwrap_err().to_string();
        assert!(err.contains("cannot decrypt"), "{err}");
    }
}
