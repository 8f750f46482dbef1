//! Typed errors of the proxy's public API. A message names what failed
//! and never repeats its `source()`: whoever prints the error prints the
//! chain (the CLI; [`chain`] for the proxy's own log lines and answers).

use std::path::PathBuf;

/// A submitted or persisted routing table that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("the routing table is not valid JSON for this proxy: {reason}")]
    Json { reason: String },
    #[error("the routing table has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid { problems: Vec<String> },
}

/// Why the proxy could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the admin socket {}", path.display())]
    AdminSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another proxy already answers on the admin socket {}; stop it or pick another socket",
        path.display()
    )]
    AdminSocketInUse { path: PathBuf },
    #[error("cannot use the state directory {}", path.display())]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the persisted routing table {}", path.display())]
    ReadTable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the persisted routing table {} is not usable\n  hint: fix or remove the file; \
         the control plane will set the table again",
        path.display()
    )]
    BadTable { path: PathBuf, source: TableError },
    #[error("cannot persist the routing table to {}", path.display())]
    WriteTable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the access log {}", path.display())]
    AccessLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot take over from the previous proxy")]
    Upgrade { source: HandoffError },
    #[error("cannot set up TLS")]
    Tls { source: TlsError },
    #[error("the proxy has no listen address; give at least one")]
    NoListener,
    #[error(
        "PROXY protocol is configured for {addr}, but no listener has that address \
         (listen: {listen}; TLS listen: {tls_listen})\n  hint: add it with --listen/--tls-listen \
         or drop it (addresses must match as written, e.g. 0.0.0.0:8080 is not 127.0.0.1:8080)"
    )]
    ProxyProtocolAddr {
        /// The configured address that is no listener's.
        addr: std::net::SocketAddr,
        /// The plain listen addresses, comma-separated (`none` when empty).
        listen: String,
        /// The TLS listen addresses, comma-separated (`none` when empty).
        tls_listen: String,
    },
    #[error(
        "cannot start the proxy's worker threads\n  hint: check the process and thread limits \
         (ulimit -u)"
    )]
    Workers { source: std::io::Error },
}

/// A certificate and key that cannot be served. The message names the
/// file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} file `{}`", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the certificate file `{}` is not valid PEM", path.display())]
    CertPem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("the certificate file `{}` has no `BEGIN CERTIFICATE` block", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "the private key file `{}` has no usable PEM private key (PKCS#8, PKCS#1 or SEC1)",
        path.display()
    )]
    KeyPem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "the private key file `{}` does not fit the certificate file `{}`",
        key.display(),
        cert.display()
    )]
    Mismatch {
        key: PathBuf,
        cert: PathBuf,
        source: Box<TlsError>,
    },
    #[error("the first certificate is not valid X.509 DER")]
    NotX509,
    #[error("unsupported key")]
    UnsupportedKey { source: rustls::Error },
    #[error("key and certificate do not match")]
    KeysDiffer { source: rustls::Error },
    #[error("give both the default certificate and its key, or neither")]
    DefaultPair,
    #[error("the TLS settings are refused")]
    Config { source: rustls::Error },
}

/// Why a hitless upgrade (`gantry proxy upgrade`) did not happen, on
/// either side of it.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("GANTRY_PROXY_INHERIT=`{spec}` is not `<plain>,<tls>`")]
    Spec { spec: String },
    #[error(
        "the previous proxy handed over {plain} plain and {tls} TLS listeners, but this one is \
         configured with {want_plain} and {want_tls}"
    )]
    Counts {
        plain: usize,
        tls: usize,
        want_plain: usize,
        want_tls: usize,
    },
    #[error("expected {expected} inherited sockets (LISTEN_FDS), got {got}")]
    FdCount { expected: usize, got: usize },
    #[error("inherited socket {index}")]
    Socket {
        index: usize,
        source: std::io::Error,
    },
    #[error("inherited socket {index} is missing")]
    MissingSocket { index: usize },
    #[error("inherited admin socket")]
    AdminSocket { source: std::io::Error },
    #[error("the inherited admin socket is missing")]
    MissingAdminSocket,
    #[error("an upgrade is already running")]
    Running,
    #[error("this proxy has already handed over to a new process")]
    HandedOver,
    #[error("this proxy is shutting down")]
    ShuttingDown,
    #[error("cannot find the proxy's own binary")]
    OwnBinary { source: std::io::Error },
    #[error("cannot bind {}", path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot duplicate a listening socket")]
    Dup { source: std::io::Error },
    #[error("cannot pass the sockets")]
    PassSockets {
        source: command_fds::FdMappingCollision,
    },
    #[error("cannot start {}", exe.display())]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("unexpected readiness message {line:?}")]
    Readiness { line: String },
    #[error("waiting for the new proxy")]
    Wait { source: std::io::Error },
    #[error("the new proxy (pid {pid}) was not ready within {timeout:?}")]
    NotReady {
        pid: u32,
        timeout: std::time::Duration,
    },
    #[error(
        "the new proxy (pid {pid}) exited before it was ready ({status}); see its log; this \
         proxy keeps serving"
    )]
    Exited {
        pid: u32,
        status: std::process::ExitStatus,
    },
}

/// `e` and its sources, joined with `: `: an error as one line, for the
/// proxy's own log lines and admin answers.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_do_not_repeat_their_source_and_the_chain_has_it() {
        let io = || std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let errors: Vec<Box<dyn std::error::Error>> = vec![
            Box::new(ProxyError::Listen {
                addr: "127.0.0.1:80".parse().unwrap(),
                source: io(),
            }),
            Box::new(ProxyError::Tls {
                source: TlsError::Read {
                    what: "certificate",
                    path: "/x.pem".into(),
                    source: io(),
                },
            }),
            Box::new(ProxyError::Upgrade {
                source: HandoffError::Socket {
                    index: 2,
                    source: io(),
                },
            }),
            Box::new(ProxyError::Workers { source: io() }),
        ];
        for e in &errors {
            let source = e.source().expect("a source").to_string();
            assert!(!e.to_string().contains(&source), "{e}");
            assert!(chain(e.as_ref()).ends_with("Address already in use"));
        }
        assert_eq!(
            chain(errors[1].as_ref()),
            "cannot set up TLS: cannot read the certificate file `/x.pem`: Address already in use"
        );
    }
}
