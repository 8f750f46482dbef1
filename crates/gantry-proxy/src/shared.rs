//! What every request shares: the table and its registries, the upstream
//! clients off the workers, the access log, the config, the TLS state, the
//! open WebSocket tunnels and the workers' connection counts. Made once by
//! `Proxy::bind`; every connection task holds an `Arc` of it. Below the code
//! that uses it (request path, connections, admin, metrics), so none of
//! those needs another to reach it.

use std::sync::Arc;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::config::ProxyConfig;
use crate::observe::access_log::AccessLog;
use crate::routing::router::Routing;
use crate::upstream::body::UpstreamBody;

/// What every request shares.
pub(crate) struct Shared {
    pub(crate) routing: Routing,
    pub(crate) client: Client<HttpConnector, UpstreamBody>,
    /// Clients for routes with their own `connect_timeout_ms`.
    pub(crate) route_clients: crate::upstream::pools::Clients,
    pub(crate) log: Arc<AccessLog>,
    pub(crate) config: ProxyConfig,
    /// Open WebSocket tunnels, closed at shutdown.
    pub(crate) tunnels: Arc<crate::upstream::upgrade::Tunnels>,
    pub(crate) tls: Arc<crate::tls::certs::TlsState>,
    /// Set once a successor proxy serves (hitless upgrade): HTTP/1.1
    /// answers carry `Connection: close`, so clients move to new
    /// connections after a complete response instead of having an idle
    /// keep-alive connection closed under a request they are sending.
    pub(crate) closing: std::sync::atomic::AtomicBool,
    /// The workers' open connections, and their inboxes (`spread`).
    pub(crate) spread: Arc<crate::runtime::spread::Spread>,
}

impl Shared {
    /// `GET /metrics` (admin socket and metrics listener alike): requests,
    /// policies, certificates, connections.
    pub(crate) fn prometheus(&self) -> String {
        let mut out = self.routing.prometheus();
        out.push_str(&self.tls.prometheus());
        self.spread.render_prometheus(&mut out);
        out
    }
}
