//! The proxy's one config struct; every field documented.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How to run the proxy. Build with [`ProxyConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Addresses for client traffic (HTTP/1.1 and h2c on the same socket).
    /// Port 0 picks a free port; [`crate::Proxy::local_addrs`] tells which.
    pub listen: Vec<SocketAddr>,
    /// The admin API's unix socket (created with mode 0600).
    pub admin_socket: PathBuf,
    /// Where the routing table is persisted (`table.json`).
    pub state_dir: PathBuf,
    /// Write one JSON line per request.
    pub access_log: bool,
    /// Append access log lines to this file instead of stdout.
    pub access_log_path: Option<PathBuf>,
    /// Keep the client's `X-Forwarded-For/Proto/Host` (appending to
    /// `X-Forwarded-For`) instead of replacing them. Only for a proxy that
    /// sits behind another trusted proxy. Rate limits then count the last
    /// `X-Forwarded-For` address as the client.
    pub trust_forwarded: bool,
    /// Time to open a TCP connection to a backend instance.
    pub connect_timeout: Duration,
    /// Default time to wait for a backend's response headers (a route's
    /// `timeout_ms` overrides it); then 504.
    pub response_timeout: Duration,
    /// Extra time the requests of a set removed from the table get for their
    /// response headers; then 504.
    pub drain_timeout: Duration,
    /// On shutdown, how long open requests may still run.
    pub shutdown_timeout: Duration,
    /// Consecutive connect failures after which an instance is ejected.
    pub eject_after_failures: u32,
    /// How long an ejected instance gets no requests before it is tried again.
    pub eject_cooloff: Duration,
    /// Idle keep-alive connections kept per backend instance. Should cover
    /// the peak number of concurrent requests to one instance (h2 clients
    /// multiplex many streams, each of which needs its own HTTP/1.1
    /// upstream connection); below that, connections are closed after use
    /// and reopened on the next burst. Idle ones are closed after 60 s.
    /// Per worker thread (one per core) and per client: each worker keeps
    /// its own pools, and body-less requests (the proxy's own HTTP/1.1
    /// client) and requests with a body (hyper's) pool separately.
    pub pool_max_idle_per_host: usize,
    /// A client must send its whole request head (HTTP/1.1) within this
    /// after it starts, or between keep-alive requests; then the
    /// connection is closed (slowloris protection).
    pub header_read_timeout: Duration,
    /// A client that sends no byte of its request body for this long gets
    /// 408 (nginx's `client_body_timeout`); the request counts as a client
    /// error, not as the backend set's. The response timeout of a request
    /// with a body counts from the body's last byte.
    pub body_read_timeout: Duration,
    /// A client connection with no byte moving and no request waiting for
    /// its response is closed after this (HTTP/1.1 keep-alive and HTTP/2).
    /// For HTTP/1.1, hyper's header read timeout also runs while a
    /// keep-alive connection waits for its next request: the shorter of
    /// the two applies there.
    pub idle_timeout: Duration,
    /// Largest request head in bytes: HTTP/1.1 request line + headers
    /// (431 above it, then the connection closes; at least 8192), HTTP/2
    /// header list (431 for the stream; beyond 4× this, h2 ends the whole
    /// connection with GOAWAY ENHANCE_YOUR_CALM).
    pub max_header_size: usize,
    /// How long a WebSocket (or other HTTP/1.1 `Upgrade`) tunnel of a set
    /// removed from the table may stay open; then the proxy closes both
    /// connections, and the set can report drained. At shutdown, open
    /// tunnels get the same time before they are closed.
    pub websocket_drain_grace: Duration,
    /// An extra TCP listener that serves only `GET /metrics` (Prometheus
    /// text) and `GET /healthz`, for a Prometheus server to scrape. The
    /// admin socket serves `/metrics` too. None (the default): no listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Addresses for TLS traffic (HTTP/1.1 and HTTP/2 chosen by ALPN; the
    /// certificate chosen by SNI, see [`crate::RouteTls`]).
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain served when no route's certificate matches the
    /// SNI name (or the client sent none). Without it such handshakes fail.
    pub tls_default_cert: Option<PathBuf>,
    /// PEM private key of `tls_default_cert`.
    pub tls_default_key: Option<PathBuf>,
    /// ACME directory URL for routes with `tls.mode = "acme"` (default:
    /// Let's Encrypt production).
    pub acme_directory: String,
    /// PEM root certificate to trust for the ACME server's own HTTPS
    /// instead of the system roots (a test CA such as pebble's).
    pub acme_ca_root: Option<PathBuf>,
    /// Which ACME challenge the proxy answers: HTTP-01 on the plain
    /// listeners, or TLS-ALPN-01 on the TLS listeners.
    pub acme_challenge: AcmeChallenge,
    /// How often certificates are checked for renewal (and failed orders
    /// retried, with backoff on top).
    pub acme_check_interval: Duration,
    /// Renew when less than this remains; `None`: when less than a third of
    /// the certificate's lifetime remains.
    pub acme_renew_before: Option<Duration>,
    /// The listen addresses (from `listen` or `tls_listen`, compared as
    /// configured, not as bound) whose connections must start with a PROXY
    /// protocol (v1 or v2) header, e.g. the one behind a load balancer that
    /// sends it; its source address is then the client's. On a TLS
    /// listener the header comes before the handshake. Connections there
    /// without a valid header are closed; on the other listeners a PROXY
    /// header is not read (it is just a bad request). An address that is no
    /// listener's is a startup error ([`crate::ProxyError::ProxyProtocolAddr`]).
    /// An address with port 0 marks every listener configured with it.
    /// Empty (the default): no listener reads PROXY headers.
    pub proxy_protocol: Vec<SocketAddr>,
    /// At most this many client connections (plain + TLS) at once; further
    /// ones wait in the kernel's accept queue. `None`: no cap.
    pub max_connections: Option<usize>,
    /// How long the counters of a backend set that left the table stay
    /// (in `/stats` and `/metrics`) once nothing is in flight on it; then
    /// they are dropped, so many deploys do not grow the proxy's memory.
    /// Longer than the control plane's analysis interval, so it still
    /// reads a retired set's last counts.
    pub retired_stats_grace: Duration,
    /// The port in the `Location` of a route's HTTP → HTTPS redirect (left
    /// out of the URL when 443). Set it when clients reach the TLS listener
    /// on another port, e.g. 8443.
    pub https_port: u16,
}

/// The ACME challenge type the proxy answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcmeChallenge {
    /// `http-01`: `GET /.well-known/acme-challenge/<token>` on a plain
    /// listener (the ACME server connects to port 80 in production).
    #[default]
    Http01,
    /// `tls-alpn-01`: a challenge certificate for the `acme-tls/1` ALPN
    /// protocol on a TLS listener (port 443 in production).
    TlsAlpn01,
}

/// hyper refuses a smaller HTTP/1.1 read buffer.
pub(crate) const MIN_HEADER_SIZE: usize = 8192;

impl ProxyConfig {
    /// A config with the defaults: access log on (stdout), 2 s connect
    /// timeout, 30 s response timeout, 30 s drain and shutdown timeouts,
    /// ejection after 3 connect failures for 10 s, up to 512 idle
    /// connections per instance, 10 s to send request headers, 30 s
    /// between request body bytes, 90 s idle
    /// timeout for client connections, 64 KiB request heads, 30 s WebSocket
    /// drain grace, no metrics listener, no PROXY protocol, redirects to
    /// HTTPS on port 443, counters of retired sets kept 5 min.
    pub fn new(listen: Vec<SocketAddr>, admin_socket: PathBuf, state_dir: PathBuf) -> Self {
        Self {
            listen,
            admin_socket,
            state_dir,
            access_log: true,
            access_log_path: None,
            trust_forwarded: false,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            eject_after_failures: 3,
            eject_cooloff: Duration::from_secs(10),
            pool_max_idle_per_host: 512,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_header_size: 64 << 10,
            websocket_drain_grace: Duration::from_secs(30),
            metrics_listen: None,
            tls_listen: Vec::new(),
            tls_default_cert: None,
            tls_default_key: None,
            acme_directory: "https://acme-v02.api.letsencrypt.org/directory".to_string(),
            acme_ca_root: None,
            acme_challenge: AcmeChallenge::Http01,
            acme_check_interval: Duration::from_secs(3600),
            acme_renew_before: None,
            proxy_protocol: Vec::new(),
            max_connections: None,
            https_port: 443,
            retired_stats_grace: Duration::from_secs(300),
        }
    }
}
