//! Certificates over ACME (RFC 8555) with `instant-acme`, for the hosts
//! of routes with `tls.mode = "acme"`.
//!
//! One manager task keeps a certificate for every such host: at start it
//! loads the persisted ones, then every `acme_check_interval` (and when the
//! table changes) it orders a certificate for each host that has none or
//! whose certificate is due for renewal (less than `acme_renew_before`, by
//! default a third of its lifetime, remains). A failed order is logged and
//! retried with exponential backoff (10 s doubling, at most 1 h). The
//! challenge is HTTP-01 (answered on the plain listeners) or TLS-ALPN-01
//! (answered on the TLS listeners), per `acme_challenge`.
//!
//! On disk, under `<state_dir>/acme/`: `account.json` (the account key and
//! URL, with the directory it belongs to; mode 0600), and per host
//! `<host>.crt` (the PEM chain) and `<host>.key` (mode 0600). Files are
//! replaced atomically (`gantry_common::write_atomic`: temp file, fsync,
//! rename, fsync the directory).
//!
//! The manager reads and writes these few small files with `std::fs` on
//! the async thread it runs on, deliberately: it runs on the control
//! runtime (with the admin socket and the metrics listener), never on a
//! worker that carries client traffic, and it touches the disk once per
//! certificate order or start, not per request.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{AcmeChallenge, ProxyConfig};
use crate::tls::certs::{Loaded, TlsState, certified};

const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// Seconds since the Unix epoch, as certificate validity is told.
fn now() -> i64 {
    gantry_common::now_ms() / 1000
}

/// Whether a certificate valid `not_before..not_after` should be renewed.
fn due(not_before: i64, not_after: i64, renew_before: Option<Duration>, now: i64) -> bool {
    let margin = match renew_before {
        Some(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        None => (not_after - not_before) / 3,
    };
    not_after.saturating_sub(now) < margin
}

/// Why a certificate could not be obtained (logged; the order is retried
/// with backoff).
#[derive(Debug, thiserror::Error)]
enum AcmeError {
    #[error("cannot create {}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use the ACME CA root {}", path.display())]
    CaRoot {
        path: PathBuf,
        source: instant_acme::Error,
    },
    #[error("cannot build the ACME client")]
    Client { source: instant_acme::Error },
    #[error("cannot restore the ACME account")]
    Restore { source: instant_acme::Error },
    #[error("cannot create an ACME account at {directory}")]
    CreateAccount {
        directory: String,
        source: instant_acme::Error,
    },
    #[error("cannot encode the ACME account")]
    EncodeAccount { source: serde_json::Error },
    #[error("cannot save the ACME account to {}", path.display())]
    SaveAccount {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A step of the order (RFC 8555 section 7.4) the server refused.
    #[error("{step}")]
    Order {
        step: &'static str,
        source: instant_acme::Error,
    },
    #[error("authorization is {status}")]
    Authorization { status: String },
    #[error("the ACME server offers no {kind} challenge")]
    NoChallenge { kind: String },
    #[error("the order is {status}{detail}")]
    OrderState { status: String, detail: String },
    #[error("the issued certificate is not usable")]
    Unusable { source: PemError },
    #[error("cannot save the certificate to {}", path.display())]
    SaveCertificate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make the TLS-ALPN-01 certificate")]
    AlpnCertificate { source: rcgen::Error },
    #[error("cannot use the TLS-ALPN-01 key")]
    AlpnKey { source: rustls::Error },
}

/// A PEM chain and key (issued, or persisted) that cannot be served.
#[derive(Debug, thiserror::Error)]
enum PemError {
    #[error("the chain is not valid PEM")]
    Chain {
        source: rustls::pki_types::pem::Error,
    },
    #[error("no certificate in the chain")]
    NoCertificate,
    #[error("the key is not valid PEM")]
    Key {
        source: rustls::pki_types::pem::Error,
    },
    #[error(transparent)]
    Certified(#[from] crate::error::TlsError),
}

fn load_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Loaded, PemError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PemError::Chain { source })?;
    if chain.is_empty() {
        return Err(PemError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| PemError::Key { source })?;
    Ok(certified(chain, key)?)
}

struct Manager {
    tls: Arc<TlsState>,
    config: ProxyConfig,
    dir: PathBuf,
    account: Option<Account>,
    /// Host → (next attempt, current backoff) after a failure.
    retry: HashMap<String, (Instant, Duration)>,
}

/// Runs the ACME manager until `stop` turns true.
pub(crate) async fn run(tls: Arc<TlsState>, config: ProxyConfig, mut stop: watch::Receiver<bool>) {
    let mut wanted = tls.acme_wanted.subscribe();
    let mut m = Manager {
        dir: config.state_dir.join("acme"),
        tls,
        config,
        account: None,
        retry: HashMap::new(),
    };
    loop {
        let hosts = wanted.borrow_and_update().clone();
        m.tls.retain_acme(&hosts);
        m.retry.retain(|h, _| hosts.contains_key(h));
        let mut wake = Instant::now() + m.config.acme_check_interval;
        for (host, email) in &hosts {
            if m.tls.acme_cert_info(host).is_none() {
                m.load_persisted(host);
            }
            let needed = m
                .tls
                .acme_cert_info(host)
                .is_none_or(|i| due(i.not_before, i.not_after, m.config.acme_renew_before, now()));
            if !needed {
                m.retry.remove(host);
                continue;
            }
            if let Some((at, _)) = m.retry.get(host)
                && *at > Instant::now()
            {
                wake = wake.min(*at);
                continue;
            }
            let result = tokio::select! {
                r = m.obtain(host, email.as_deref()) => r,
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => return,
            };
            match result {
                Ok(serial) => {
                    tracing::info!(%host, %serial, "ACME certificate obtained");
                    m.retry.remove(host);
                }
                Err(e) => {
                    let why = crate::error::chain(&e);
                    let backoff = m
                        .retry
                        .get(host)
                        .map_or(FIRST_BACKOFF, |(_, b)| (*b * 2).min(MAX_BACKOFF));
                    let at = Instant::now() + backoff;
                    m.retry.insert(host.clone(), (at, backoff));
                    wake = wake.min(at);
                    tracing::error!(%host, error = %why, retry_in = ?backoff, "cannot obtain an ACME certificate");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            r = wanted.changed() => if r.is_err() { return },
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => return,
        }
    }
}

impl Manager {
    fn cert_paths(&self, host: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{host}.crt")),
            self.dir.join(format!("{host}.key")),
        )
    }

    fn load_persisted(&self, host: &str) {
        let (crt, key) = self.cert_paths(host);
        let (Ok(c), Ok(k)) = (std::fs::read(&crt), std::fs::read(&key)) else {
            return;
        };
        match load_pem(&c, &k) {
            Ok(loaded) => {
                tracing::info!(%host, serial = %loaded.info.serial, "persisted ACME certificate loaded");
                self.tls.set_acme_cert(host, loaded);
            }
            Err(e) => {
                let error = crate::error::chain(&e);
                tracing::warn!(%host, path = %crt.display(), %error, "persisted ACME certificate unusable; ordering a new one")
            }
        }
    }

    fn ensure_dir(&self) -> Result<(), AcmeError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| AcmeError::Dir {
                path: self.dir.clone(),
                source,
            })
    }

    async fn account(&mut self, email: Option<&str>) -> Result<Account, AcmeError> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        self.ensure_dir()?;
        let builder = || match &self.config.acme_ca_root {
            Some(root) => Account::builder_with_root(root).map_err(|source| AcmeError::CaRoot {
                path: root.clone(),
                source,
            }),
            None => Account::builder().map_err(|source| AcmeError::Client { source }),
        };
        let path = self.dir.join("account.json");
        let directory = self.config.acme_directory.clone();
        if let Ok(bytes) = std::fs::read(&path) {
            match serde_json::from_slice::<StoredAccount>(&bytes) {
                Ok(stored) if stored.directory == directory => {
                    let account = builder()?
                        .from_credentials(stored.credentials)
                        .await
                        .map_err(|source| AcmeError::Restore { source })?;
                    self.account = Some(account.clone());
                    return Ok(account);
                }
                Ok(_) => {
                    tracing::info!(%directory, "ACME directory changed; creating a new account")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable ACME account file; creating a new account")
                }
            }
        }
        let contact = email.map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.clone(),
                None,
            )
            .await
            .map_err(|source| AcmeError::CreateAccount {
                directory: directory.clone(),
                source,
            })?;
        let json = serde_json::to_vec_pretty(&StoredAccount {
            directory,
            credentials,
        })
        .map_err(|source| AcmeError::EncodeAccount { source })?;
        gantry_common::write_atomic(&path, &json, 0o600)
            .map_err(|source| AcmeError::SaveAccount { path, source })?;
        tracing::info!(id = account.id(), "ACME account created");
        self.account = Some(account.clone());
        Ok(account)
    }

    /// Orders, validates, fetches and installs a certificate for `host`;
    /// returns its serial.
    async fn obtain(&mut self, host: &str, email: Option<&str>) -> Result<String, AcmeError> {
        let account = self.account(email).await?;
        let mut tokens = Vec::new();
        let result = self.order(&account, host, &mut tokens).await;
        for t in tokens {
            self.tls.set_http_challenge(&t, None);
        }
        self.tls.set_alpn_challenge(host, None);
        let (chain_pem, key_pem) = result?;
        let loaded = load_pem(chain_pem.as_bytes(), key_pem.as_bytes())
            .map_err(|source| AcmeError::Unusable { source })?;
        self.ensure_dir()?;
        let (crt, key) = self.cert_paths(host);
        gantry_common::write_atomic(&key, key_pem.as_bytes(), 0o600)
            .and_then(|()| gantry_common::write_atomic(&crt, chain_pem.as_bytes(), 0o644))
            .map_err(|source| AcmeError::SaveCertificate { path: crt, source })?;
        let serial = loaded.info.serial.clone();
        self.tls.set_acme_cert(host, loaded);
        Ok(serial)
    }

    async fn order(
        &self,
        account: &Account,
        host: &str,
        tokens: &mut Vec<String>,
    ) -> Result<(String, String), AcmeError> {
        let ids = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|source| AcmeError::Order {
                step: "new order",
                source,
            })?;
        let kind = match self.config.acme_challenge {
            AcmeChallenge::Http01 => ChallengeType::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.map_err(|source| AcmeError::Order {
                step: "authorization",
                source,
            })?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Authorization {
                        status: format!("{other:?}"),
                    });
                }
            }
            let mut ch = authz
                .challenge(kind.clone())
                .ok_or_else(|| AcmeError::NoChallenge {
                    kind: format!("{kind:?}"),
                })?;
            let ka = ch.key_authorization();
            match kind {
                ChallengeType::TlsAlpn01 => {
                    let cert = alpn_challenge_cert(host, ka.digest().as_ref())?;
                    self.tls.set_alpn_challenge(host, Some(cert));
                }
                _ => {
                    tokens.push(ch.token.clone());
                    self.tls
                        .set_http_challenge(&ch.token, Some(ka.as_str().to_string()));
                }
            }
            ch.set_ready().await.map_err(|source| AcmeError::Order {
                step: "challenge ready",
                source,
            })?;
        }
        let retries = RetryPolicy::default().timeout(Duration::from_secs(120));
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|source| AcmeError::Order {
                step: "waiting for validation",
                source,
            })?;
        if status != OrderStatus::Ready {
            let detail = order
                .state()
                .error
                .as_ref()
                .map(|p| format!(": {p:?}"))
                .unwrap_or_default();
            return Err(AcmeError::OrderState {
                status: format!("{status:?}"),
                detail,
            });
        }
        let key_pem = order.finalize().await.map_err(|source| AcmeError::Order {
            step: "finalize",
            source,
        })?;
        let chain_pem =
            order
                .poll_certificate(&retries)
                .await
                .map_err(|source| AcmeError::Order {
                    step: "certificate",
                    source,
                })?;
        Ok((chain_pem, key_pem))
    }
}

/// The self-signed TLS-ALPN-01 certificate: the host as its only name and
/// the critical `acmeIdentifier` extension with the key authorization's
/// SHA-256 digest.
fn alpn_challenge_cert(
    host: &str,
    digest: &[u8],
) -> Result<Arc<rustls::sign::CertifiedKey>, AcmeError> {
    let err = |source: rcgen::Error| AcmeError::AlpnCertificate { source };
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(err)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|source| AcmeError::AlpnKey { source })?;
    // Not `certified`: its key check parses the certificate with webpki,
    // which refuses the critical acmeIdentifier extension.
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_alpn_challenge_certificate_is_made() {
        let cert = alpn_challenge_cert("a.example", &[7u8; 32]).unwrap();
        let der = cert.cert[0].as_ref();
        // The acmeIdentifier OID 1.3.6.1.5.5.7.1.31 and the digest.
        let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        assert!(der.windows(oid.len()).any(|w| w == oid));
        assert!(der.windows(32).any(|w| w == [7u8; 32]));
    }

    #[test]
    fn renewal_is_due_in_the_last_third_or_within_the_margin() {
        let day = 86_400;
        // 90-day certificate: due after day 60.
        assert!(!due(0, 90 * day, None, 59 * day));
        assert!(due(0, 90 * day, None, 61 * day));
        // An explicit margin wins.
        assert!(due(0, 90 * day, Some(Duration::from_secs(100 * 86_400)), 0));
        assert!(!due(
            0,
            90 * day,
            Some(Duration::from_secs(86_400)),
            88 * day
        ));
        assert!(due(
            0,
            90 * day,
            Some(Duration::from_secs(86_400)),
            90 * day
        ));
    }
}
