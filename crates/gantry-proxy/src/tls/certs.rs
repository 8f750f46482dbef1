//! TLS termination: certificates (route files, ACME, the default one),
//! chosen by SNI; HTTP/1.1 or HTTP/2 chosen by ALPN; the ACME challenge
//! answers (HTTP-01 tokens, TLS-ALPN-01 certificates) that `acme` puts
//! here; `redirect_http`; the expiry metric and `/certs`.
//!
//! Certificate choice for an SNI name: the files certificate of a route
//! listing that exact host, then an ACME certificate for it, then a files
//! certificate of a `*.suffix` route host, then of a `*` route, then the
//! proxy's default certificate; else the handshake fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::ProxyConfig;
use crate::error::{ProxyError, TlsError};
use crate::routing::table::{Route, RouteTls, Table};
use crate::tls::x509::{CertInfo, cert_info};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A loaded certificate and what `/certs` tells about it.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) info: CertInfo,
}

/// One served certificate, as `GET /certs` lists it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CertStatus {
    /// The SNI name (or pattern) it is served for; `*default*` for the
    /// default certificate.
    pub(crate) host: String,
    /// `files`, `acme` or `default`.
    pub(crate) source: &'static str,
    pub(crate) serial: String,
    /// Unix seconds.
    pub(crate) not_before: i64,
    /// Unix seconds.
    pub(crate) not_after: i64,
}

#[derive(Debug, Default)]
struct Certs {
    /// Route files certificates by lower-cased host pattern.
    files: ArcSwap<HashMap<String, Arc<Loaded>>>,
    /// ACME certificates by exact host.
    acme: ArcSwap<HashMap<String, Arc<Loaded>>>,
    default: Option<Arc<Loaded>>,
}

impl Certs {
    fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let files = self.files.load();
            if let Some(c) = files.get(&name) {
                return Some(c.key.clone());
            }
            if let Some(c) = self.acme.load().get(&name) {
                return Some(c.key.clone());
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(c) = files.get(&format!("*.{parent}"))
            {
                return Some(c.key.clone());
            }
            if let Some(c) = files.get("*") {
                return Some(c.key.clone());
            }
        }
        self.default.as_ref().map(|c| c.key.clone())
    }
}

#[derive(Debug)]
struct Resolver(Arc<Certs>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.find(hello.server_name())
    }
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The proxy's TLS state, shared by the listeners, the admin API and the
/// ACME manager.
pub(crate) struct TlsState {
    certs: Arc<Certs>,
    server: Arc<ServerConfig>,
    /// HTTP-01: token → key authorization.
    http_challenges: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: host → challenge certificate.
    alpn_challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// Ids of routes with `redirect_http`.
    redirect: ArcSwap<HashSet<String>>,
    /// Exact hosts of ACME routes → contact email; the ACME manager
    /// watches it.
    pub(crate) acme_wanted: watch::Sender<BTreeMap<String, Option<String>>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    alpn: Vec<Vec<u8>>,
) -> Result<ServerConfig, rustls::Error> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = alpn;
    Ok(cfg)
}

/// Reads a PEM chain and key and checks that they belong together. The
/// error names the file at fault.
pub(crate) fn load_files(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let read = |p: &Path, what: &'static str| {
        read_pem_file(p).map_err(|source| TlsError::Read {
            what,
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert, "certificate")?;
    let key_pem = read(key, "private key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::CertPem {
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::KeyPem {
        path: key.to_path_buf(),
        source,
    })?;
    certified(chain, key_der).map_err(|e| TlsError::Mismatch {
        key: key.to_path_buf(),
        cert: cert.to_path_buf(),
        source: Box::new(e),
    })
}

/// The largest certificate or key file read: a chain of a few
/// certificates is a few KiB.
pub(crate) const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Reads a certificate or key file named by the table: only a regular
/// file (after symlinks) of at most [`MAX_PEM_FILE`] bytes. The table
/// comes from outside the proxy, and a path such as `/dev/zero`, a FIFO or
/// a huge file must be an error, not a read that never ends or fills the
/// memory; a FIFO or device is refused before it is opened (opening a
/// FIFO waits for a writer).
fn read_pem_file(p: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    let check = |meta: &std::fs::Metadata| {
        if !meta.is_file() {
            let kind = if meta.is_dir() {
                "a directory"
            } else {
                "a device, FIFO or socket"
            };
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("it is {kind}, not a regular file"),
            ));
        }
        if meta.len() > MAX_PEM_FILE {
            return Err(too_large(meta.len()));
        }
        Ok(())
    };
    fn too_large(len: u64) -> Error {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "it is {len} bytes; a PEM certificate or key file is at most {MAX_PEM_FILE} \
                 bytes (1 MiB)"
            ),
        )
    }
    check(&std::fs::metadata(p)?)?;
    let file = std::fs::File::open(p)?;
    // The file opened is the one checked, even if the path changed since.
    check(&file.metadata()?)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// A chain and key as a served certificate.
pub(crate) fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Loaded, TlsError> {
    let info = chain
        .first()
        .and_then(|c| cert_info(c))
        .ok_or(TlsError::NotX509)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|source| TlsError::UnsupportedKey { source })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|source| TlsError::KeysDiffer { source })?;
    Ok(Loaded {
        key: Arc::new(ck),
        info,
    })
}

/// Table validation of a route's `tls` (called by `Table::validate`).
pub(crate) fn validate_route_tls(at: &str, route: &Route, problems: &mut Vec<String>) {
    match &route.tls {
        None => {}
        Some(RouteTls::Files { cert, key }) => {
            for (what, p) in [("cert", cert), ("key", key)] {
                if !p.is_absolute() {
                    problems.push(format!(
                        "{at}: tls {what} path `{}` must be absolute",
                        p.display()
                    ));
                    return;
                }
            }
            if let Err(e) = load_files(cert, key) {
                problems.push(format!("{at}: tls: {}", crate::error::chain(&e)));
            }
        }
        Some(RouteTls::Acme { .. }) => {
            for h in &route.hosts {
                if h.contains('*') {
                    problems.push(format!(
                        "{at}: tls mode `acme` cannot get a certificate for `{h}`: wildcards \
                         need DNS-01, which this proxy does not do; list exact host names or \
                         use `files`"
                    ));
                }
            }
        }
    }
}

impl TlsState {
    pub(crate) fn new(config: &ProxyConfig) -> Result<TlsState, ProxyError> {
        let default = match (&config.tls_default_cert, &config.tls_default_key) {
            (Some(c), Some(k)) => Some(Arc::new(
                load_files(c, k).map_err(|source| ProxyError::Tls { source })?,
            )),
            (None, None) => None,
            _ => {
                return Err(ProxyError::Tls {
                    source: TlsError::DefaultPair,
                });
            }
        };
        let certs = Arc::new(Certs {
            default,
            ..Certs::default()
        });
        let server = server_config(
            Arc::new(Resolver(certs.clone())),
            vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        )
        .map_err(|source| ProxyError::Tls {
            source: TlsError::Config { source },
        })?;
        Ok(TlsState {
            certs,
            server: Arc::new(server),
            http_challenges: Mutex::default(),
            alpn_challenges: Mutex::default(),
            redirect: ArcSwap::default(),
            acme_wanted: watch::Sender::new(BTreeMap::new()),
        })
    }

    /// Applies a new table: route certificate files, `redirect_http`, and
    /// the hosts the ACME manager keeps certificates for.
    pub(crate) fn table_changed(&self, table: &Table) {
        let mut files = HashMap::new();
        let mut redirect = HashSet::new();
        let mut wanted = BTreeMap::new();
        for route in &table.routes {
            if route.redirect_http {
                redirect.insert(route.id.clone());
            }
            match &route.tls {
                None => {}
                Some(RouteTls::Files { cert, key }) => match load_files(cert, key) {
                    Ok(loaded) => {
                        let loaded = Arc::new(loaded);
                        for h in &route.hosts {
                            files.insert(h.trim().to_ascii_lowercase(), loaded.clone());
                        }
                    }
                    // Validated when the table was set; the files changed since.
                    Err(e) => {
                        let error = crate::error::chain(&e);
                        tracing::error!(route = %route.id, %error, "TLS certificate not loaded")
                    }
                },
                Some(RouteTls::Acme { email }) => {
                    for h in &route.hosts {
                        wanted.insert(h.trim().to_ascii_lowercase(), email.clone());
                    }
                }
            }
        }
        self.certs.files.store(Arc::new(files));
        self.redirect.store(Arc::new(redirect));
        self.acme_wanted.send_if_modified(|w| {
            let changed = *w != wanted;
            *w = wanted;
            changed
        });
    }

    /// True when some route redirects plain HTTP (checked before looking
    /// up the route of every plain request).
    pub(crate) fn any_redirects(&self) -> bool {
        !self.redirect.load().is_empty()
    }

    pub(crate) fn redirects(&self, route_id: &str) -> bool {
        self.redirect.load().contains(route_id)
    }

    /// Installs (or replaces) the ACME certificate of `host`.
    pub(crate) fn set_acme_cert(&self, host: &str, loaded: Loaded) {
        let mut map = HashMap::clone(&self.certs.acme.load());
        map.insert(host.to_string(), Arc::new(loaded));
        self.certs.acme.store(Arc::new(map));
    }

    /// Stops serving ACME certificates of hosts no route wants any more
    /// (their files stay on disk for a route that comes back).
    pub(crate) fn retain_acme(&self, wanted: &BTreeMap<String, Option<String>>) {
        let map = self.certs.acme.load();
        if map.keys().any(|h| !wanted.contains_key(h)) {
            let kept = map
                .iter()
                .filter(|(h, _)| wanted.contains_key(*h))
                .map(|(h, c)| (h.clone(), c.clone()))
                .collect();
            self.certs.acme.store(Arc::new(kept));
        }
    }

    pub(crate) fn acme_cert_info(&self, host: &str) -> Option<CertInfo> {
        self.certs.acme.load().get(host).map(|c| c.info.clone())
    }

    pub(crate) fn set_http_challenge(&self, token: &str, key_auth: Option<String>) {
        let mut m = self
            .http_challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match key_auth {
            Some(k) => m.insert(token.to_string(), k),
            None => m.remove(token),
        };
    }

    /// The key authorization for an HTTP-01 token, when one is pending.
    pub(crate) fn http_challenge(&self, token: &str) -> Option<String> {
        self.http_challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    pub(crate) fn set_alpn_challenge(&self, host: &str, cert: Option<Arc<CertifiedKey>>) {
        let mut m = self
            .alpn_challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match cert {
            Some(c) => m.insert(host.to_string(), c),
            None => m.remove(host),
        };
    }

    /// The server config for a handshake: the TLS-ALPN-01 challenge
    /// certificate when the client asks for `acme-tls/1` and one is
    /// pending for its SNI name, else the normal one.
    pub(crate) fn config_for(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        let wants_acme = hello
            .alpn()
            .is_some_and(|mut a| a.any(|p| p == ACME_TLS_ALPN));
        if wants_acme
            && let Some(name) = hello.server_name()
            && let Some(cert) = self
                .alpn_challenges
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name.to_ascii_lowercase())
                .cloned()
        {
            match server_config(Arc::new(Fixed(cert)), vec![ACME_TLS_ALPN.to_vec()]) {
                Ok(c) => return Arc::new(c),
                Err(e) => tracing::error!(error = %e, "cannot build the TLS-ALPN-01 config"),
            }
        }
        self.server.clone()
    }

    /// Every served certificate, sorted by host.
    pub(crate) fn statuses(&self) -> Vec<CertStatus> {
        let mut out = Vec::new();
        let mut push = |host: &str, source, c: &Loaded| {
            out.push(CertStatus {
                host: host.to_string(),
                source,
                serial: c.info.serial.clone(),
                not_before: c.info.not_before,
                not_after: c.info.not_after,
            })
        };
        for (h, c) in self.certs.files.load().iter() {
            push(h, "files", c);
        }
        for (h, c) in self.certs.acme.load().iter() {
            push(h, "acme", c);
        }
        if let Some(c) = &self.certs.default {
            push("*default*", "default", c);
        }
        out.sort_by(|a, b| (&a.host, a.source).cmp(&(&b.host, b.source)));
        out
    }

    /// Prometheus lines: the expiry of every served certificate.
    pub(crate) fn prometheus(&self) -> String {
        let mut s = String::from(
            "# HELP gantry_proxy_tls_cert_expiry_seconds Expiry (notAfter) of a served TLS \
             certificate, Unix seconds.\n# TYPE gantry_proxy_tls_cert_expiry_seconds gauge\n",
        );
        for c in self.statuses() {
            s.push_str(&format!(
                "gantry_proxy_tls_cert_expiry_seconds{{host=\"{}\",source=\"{}\"}} {}\n",
                c.host.replace('\\', "\\\\").replace('"', "\\\""),
                c.source,
                c.not_after
            ));
        }
        s
    }
}
