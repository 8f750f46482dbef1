//! Typed errors of the proxy's public API.

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
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the admin socket {}: {source}", path.display())]
    AdminSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another proxy already answers on the admin socket {}; stop it or pick another socket",
        path.display()
    )]
    AdminSocketInUse { path: PathBuf },
    #[error("cannot use the state directory {}: {source}", path.display())]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the persisted routing table {}: {source}", path.display())]
    ReadTable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the persisted routing table {} is not usable: {source}\n  hint: fix or remove the file; \
         the control plane will set the table again",
        path.display()
    )]
    BadTable { path: PathBuf, source: TableError },
    #[error("cannot persist the routing table to {}: {source}", path.display())]
    WriteTable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the access log {}: {source}", path.display())]
    AccessLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot take over from the previous proxy: {reason}")]
    Upgrade { reason: String },
    #[error("TLS: {reason}")]
    Tls { reason: String },
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
        "cannot start the proxy's worker threads: {source}\n  hint: check the process and \
         thread limits (ulimit -u)"
    )]
    Workers { source: std::io::Error },
}
