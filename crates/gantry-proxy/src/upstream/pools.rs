//! hyper's pooled upstream clients, for requests with a body or an
//! upgrade (the others take the own HTTP/1.1 client, `http1_client`, whose
//! pool is its own): one client per connect timeout, so a route's
//! `connect_timeout_ms` applies to its connection attempts. Each worker
//! thread keeps its own set ([`install`], [`client`]), so a request, its
//! client connection and its backend connection live on one thread; off
//! the workers, [`Clients`] in `Shared` holds the shared ones.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::ProxyConfig;
use crate::shared::Shared;
use crate::upstream::body::UpstreamBody;

// === impl Clients ===

pub(crate) type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// The pooled upstream client with this connect timeout.
pub(crate) fn upstream_client(config: &ProxyConfig, connect_timeout: Duration) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(crate::upstream::http1_client::IDLE_TIMEOUT)
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .http1_writev(false)
        .build(http)
}

/// Clients for connect timeouts other than the proxy's default, made on
/// first use and kept (a handful: one per distinct route setting).
#[derive(Default)]
pub(crate) struct Clients {
    by_timeout: Mutex<HashMap<Duration, UpstreamClient>>,
}

impl Clients {
    pub(crate) fn get(&self, config: &ProxyConfig, connect_timeout: Duration) -> UpstreamClient {
        let mut map = gantry_common::lock(&self.by_timeout);
        map.entry(connect_timeout)
            .or_insert_with(|| upstream_client(config, connect_timeout))
            .clone()
    }
}

// === a worker's own clients ===

/// This worker's upstream clients: the default one and one per other
/// connect timeout (a route's `connect_timeout_ms`).
struct WorkerClients {
    default_timeout: Duration,
    default: UpstreamClient,
    by_timeout: HashMap<Duration, UpstreamClient>,
}

thread_local! {
    static CLIENTS: RefCell<Option<WorkerClients>> = const { RefCell::new(None) };
}

/// Gives this thread (a worker) its own upstream clients.
pub(crate) fn install(config: &ProxyConfig) {
    CLIENTS.with(|c| {
        *c.borrow_mut() = Some(WorkerClients {
            default_timeout: config.connect_timeout,
            default: upstream_client(config, config.connect_timeout),
            by_timeout: HashMap::new(),
        });
    });
}

/// The upstream client for a request on this thread with this connect
/// timeout (`None`: the proxy's default): the worker's own, or the shared
/// ones off the workers.
pub(crate) fn client(shared: &Shared, connect_timeout: Option<Duration>) -> UpstreamClient {
    let own = CLIENTS.with(|c| {
        let mut c = c.borrow_mut();
        let c = c.as_mut()?;
        Some(match connect_timeout.filter(|t| *t != c.default_timeout) {
            None => c.default.clone(),
            Some(t) => c
                .by_timeout
                .entry(t)
                .or_insert_with(|| upstream_client(&shared.config, t))
                .clone(),
        })
    });
    own.unwrap_or_else(
        || match connect_timeout.filter(|t| *t != shared.config.connect_timeout) {
            None => shared.client.clone(),
            Some(t) => shared.route_clients.get(&shared.config, t),
        },
    )
}
