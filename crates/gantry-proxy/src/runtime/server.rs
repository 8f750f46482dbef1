//! Listeners, connections and graceful shutdown: the public entry point.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::admin::client::AdminClient;
use crate::admin::server::{self as admin, Admin};
use crate::config::ProxyConfig;
use crate::conn::listener::{Kind, accept_conn};
use crate::error::ProxyError;
use crate::observe::access_log::AccessLog;
use crate::routing::persist;
use crate::routing::router::Routing;
use crate::runtime::handoff::Upgrade;
use crate::runtime::spread::{Held, Moved, Spread};
use crate::shared::Shared;
use crate::tls::certs::TlsState;

/// A proxy whose sockets are bound and whose persisted table is loaded;
/// [`Proxy::serve`] runs it. Binding first lets callers (and tests) learn
/// the addresses before traffic starts.
pub struct Proxy {
    listeners: Vec<(TcpListener, Kind)>,
    local: Vec<SocketAddr>,
    tls_local: Vec<SocketAddr>,
    admin_listener: UnixListener,
    admin: Arc<Admin>,
    log_writer: Option<std::thread::JoinHandle<()>>,
    /// The `metrics_listen` listener and its bound address.
    metrics: Option<(TcpListener, SocketAddr)>,
    /// Each worker's inbox of connections placed on it (`spread`).
    inboxes: Vec<mpsc::Receiver<Moved>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("listen", &self.local)
            .field("admin_socket", &self.admin.shared.config.admin_socket)
            .finish_non_exhaustive()
    }
}

/// Every `proxy_protocol` address must be a configured listen address:
/// a typo would otherwise leave the load balancer's listener reading PROXY
/// headers as requests, and the client addresses would be lost.
fn check_proxy_protocol(config: &ProxyConfig) -> Result<(), ProxyError> {
    let list = |addrs: &[SocketAddr]| {
        if addrs.is_empty() {
            "none".to_string()
        } else {
            addrs
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    for addr in &config.proxy_protocol {
        if !config.listen.contains(addr) && !config.tls_listen.contains(addr) {
            return Err(ProxyError::ProxyProtocolAddr {
                addr: *addr,
                listen: list(&config.listen),
                tls_listen: list(&config.tls_listen),
            });
        }
    }
    Ok(())
}

/// Binds, then serves until `shutdown` resolves; see [`Proxy::serve`].
pub async fn run(
    config: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ProxyError> {
    Proxy::bind(config).await?.serve(shutdown).await
}

impl Proxy {
    /// Creates the state directory (0700), loads the persisted table, binds
    /// the listeners and the admin socket (0600), opens the access log.
    pub async fn bind(config: ProxyConfig) -> Result<Proxy, ProxyError> {
        if config.listen.is_empty() && config.tls_listen.is_empty() {
            return Err(ProxyError::NoListener);
        }
        check_proxy_protocol(&config)?;
        // `std::fs` here is deliberate: binding runs once, before any
        // connection is served, so nothing waits behind these reads.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
            .map_err(|source| ProxyError::StateDir {
                path: config.state_dir.clone(),
                source,
            })?;
        let table = persist::load(&config.state_dir)?;
        tracing::info!(
            version = table.version,
            routes = table.routes.len(),
            "routing table loaded"
        );

        let tls = Arc::new(TlsState::new(&config)?);
        tls.table_changed(&table);

        // Started by an upgrade: the previous process' sockets.
        let mut inherited =
            crate::runtime::handoff::inherited(config.listen.len(), config.tls_listen.len())?;
        let mut taken = inherited
            .as_mut()
            .map(|i| std::mem::take(&mut i.traffic))
            .unwrap_or_default()
            .into_iter();
        let mut listeners = Vec::new();
        let mut local = Vec::new();
        let mut tls_local = Vec::new();
        for (addrs, over_tls) in [(&config.listen, false), (&config.tls_listen, true)] {
            for addr in addrs {
                let l = match taken.next() {
                    Some(l) => TcpListener::from_std(l),
                    None => TcpListener::bind(addr).await,
                }
                .map_err(|source| ProxyError::Listen {
                    addr: *addr,
                    source,
                })?;
                let bound = l.local_addr().map_err(|source| ProxyError::Listen {
                    addr: *addr,
                    source,
                })?;
                if over_tls { &mut tls_local } else { &mut local }.push(bound);
                let kind = Kind {
                    tls: over_tls,
                    // The configured address, not the bound one: port 0 stays 0.
                    proxy_protocol: config.proxy_protocol.contains(addr),
                };
                listeners.push((l, kind));
            }
        }
        let admin_listener = match inherited {
            Some(i) => {
                UnixListener::from_std(i.admin).map_err(|source| ProxyError::AdminSocket {
                    path: config.admin_socket.clone(),
                    source,
                })?
            }
            None => bind_admin(&config.admin_socket).await?,
        };
        let upgrade = Upgrade::new(
            &listeners.iter().map(|(l, _)| l).collect::<Vec<_>>(),
            config.listen.len(),
            &admin_listener,
            config.state_dir.clone(),
        )
        .map_err(|source| ProxyError::AdminSocket {
            path: config.admin_socket.clone(),
            source,
        })?;
        let metrics = crate::observe::metrics::bind(config.metrics_listen).await?;

        let (log, log_writer) = if !config.access_log {
            (AccessLog::off(), None)
        } else if let Some(path) = &config.access_log_path {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| ProxyError::AccessLog {
                    path: path.clone(),
                    source,
                })?;
            AccessLog::start(Box::new(f))
        } else {
            AccessLog::start(Box::new(std::io::stdout()))
        };

        let client = crate::upstream::pools::upstream_client(&config, config.connect_timeout);

        let (spread, inboxes) = Spread::new(crate::runtime::worker::count());
        let shared = Arc::new(Shared {
            routing: Routing::new(table, config.retired_stats_grace),
            client,
            route_clients: Default::default(),
            log: Arc::new(log),
            config: config.clone(),
            tunnels: Default::default(),
            tls,
            closing: Default::default(),
            spread,
        });
        let admin = Arc::new(Admin {
            shared,
            state_dir: config.state_dir.clone(),
            write: tokio::sync::Mutex::new(()),
            upgrade,
        });
        Ok(Proxy {
            listeners,
            local,
            tls_local,
            admin_listener,
            admin,
            log_writer,
            metrics,
            inboxes,
        })
    }

    /// The bound metrics listener address, when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, a)| *a)
    }

    /// The bound client-traffic addresses, in `listen` order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// The bound TLS addresses, in `tls_listen` order.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_local
    }

    pub fn admin_socket(&self) -> &Path {
        &self.admin.shared.config.admin_socket
    }

    /// A client for this proxy's admin socket.
    pub fn admin_client(&self) -> AdminClient {
        AdminClient::new(self.admin_socket())
    }

    /// Serves client traffic and the admin API until `shutdown` resolves;
    /// then stops accepting, lets open requests finish for up to
    /// `shutdown_timeout`, and removes the admin socket.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ProxyError> {
        let Proxy {
            listeners,
            local,
            tls_local,
            admin_listener,
            admin,
            log_writer,
            metrics,
            inboxes,
        } = self;
        let config = admin.shared.config.clone();
        let graceful = Arc::new(GracefulShutdown::new());
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut accepters = JoinSet::new();
        // Client traffic: one worker thread per core (`worker`), each on a
        // duplicate of every listener; `max_connections` is one cap for all.
        let cap = config
            .max_connections
            .map(|n| Arc::new(Semaphore::new(n.max(1))));
        let mut std_listeners = Vec::with_capacity(listeners.len());
        for (l, kind) in listeners {
            let addr = l
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            let l = l
                .into_std()
                .map_err(|source| ProxyError::Listen { addr, source })?;
            std_listeners.push((l, addr, kind));
        }
        let mut workers = crate::runtime::worker::start(
            std_listeners,
            inboxes,
            cap,
            admin.shared.clone(),
            stop_rx.clone(),
        )?;
        if let Some((listener, _)) = metrics {
            accepters.spawn(crate::observe::metrics::accept(
                listener,
                admin.shared.clone(),
                graceful.clone(),
                stop_rx.clone(),
            ));
        }
        let acme = tokio::spawn(crate::tls::acme::run(
            admin.shared.tls.clone(),
            config.clone(),
            stop_rx.clone(),
        ));
        accepters.spawn(accept_admin(
            admin_listener,
            admin.clone(),
            graceful.clone(),
            stop_rx,
        ));
        tracing::info!(listen = ?local, tls_listen = ?tls_local, admin_socket = %config.admin_socket.display(), "proxy serving");
        crate::runtime::handoff::notify_ready().await;

        let mut upgraded = admin.upgrade.done.subscribe();
        tokio::select! {
            _ = shutdown => {
                tracing::info!("proxy shutting down: no new connections; finishing open requests");
            }
            _ = async { upgraded.wait_for(|d| *d).await.is_ok() } => {
                // Both processes accept now. For a moment, this one answers
                // HTTP/1.1 with `Connection: close`: busy keep-alive clients
                // leave after a full response, so the graceful close below
                // finds idle connections only (no request lost in a race
                // with the close).
                admin.shared.closing.store(true, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(HANDOFF_LINGER.min(config.shutdown_timeout)).await;
                tracing::info!("handed over to the new proxy: no new connections; finishing open requests");
            }
        }
        let _ = stop_tx.send(true);
        admin.upgrade.close_sockets();
        let tunnels =
            tokio::spawn((admin.shared.tunnels.clone()).shutdown(config.websocket_drain_grace));
        while accepters.join_next().await.is_some() {}
        let _ = acme.await;
        // The workers finish their connections meanwhile.
        match Arc::try_unwrap(graceful) {
            Ok(graceful) => {
                if tokio::time::timeout(config.shutdown_timeout, graceful.shutdown())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        timeout = ?config.shutdown_timeout,
                        "admin or metrics requests still open after the shutdown timeout"
                    );
                }
            }
            Err(_) => tracing::warn!("connections still referenced at shutdown"),
        }
        workers.drained().await;
        let _ = tunnels.await;
        workers.finish().await;
        // After an upgrade the socket file belongs to the new process.
        if !admin.upgrade.handed_over() {
            let _ = std::fs::remove_file(&config.admin_socket);
        }
        // The last handle of the access log goes with `admin` (unless a
        // connection outlived the shutdown timeout); then the writer thread
        // drains its queue and ends.
        drop(admin);
        if let Some(writer) = log_writer {
            let joined = tokio::task::spawn_blocking(move || writer.join());
            if tokio::time::timeout(Duration::from_secs(2), joined)
                .await
                .is_err()
            {
                tracing::warn!("access log lines may be lost: requests still open at exit");
            }
        }
        Ok(())
    }
}

/// After a hand-off, how long the old proxy keeps serving with
/// `Connection: close` before it stops accepting and closes idle
/// connections.
const HANDOFF_LINGER: Duration = Duration::from_secs(1);

/// Binds the admin socket with mode 0600, replacing a stale socket file
/// but never a live proxy's.
async fn bind_admin(path: &Path) -> Result<UnixListener, ProxyError> {
    let err = |source| ProxyError::AdminSocket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(err)?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ProxyError::AdminSocketInUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

fn backoff_on_accept_error(e: &std::io::Error) -> Duration {
    tracing::warn!(error = %e, "accept failed");
    Duration::from_millis(50)
}

/// hyper's server settings for client connections (used for what the
/// own HTTP/1.1 server hands over, and for h2).
fn http_builder(config: &ProxyConfig) -> auto::Builder<TokioExecutor> {
    let max_header_size = config.max_header_size.max(crate::config::MIN_HEADER_SIZE);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(max_header_size)
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_size).unwrap_or(u32::MAX))
        // RFC 8441 WebSockets over h2 (`upgrade`).
        .enable_connect_protocol();
    builder
}

/// One worker's accept loop on one listener. Through `spread` (the spread
/// and this worker's index), a connection goes to the worker with the
/// fewest open connections and is counted there.
pub(crate) async fn accept_traffic(
    listener: TcpListener,
    kind: Kind,
    cap: Option<Arc<Semaphore>>,
    shared: Arc<Shared>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
    (spread, me): (Arc<Spread>, usize),
) {
    let builder = http_builder(&shared.config);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tokio::time::sleep(backoff_on_accept_error(&e)).await;
                    continue;
                }
            },
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => return,
        };
        // At `max_connections`, this connection waits (unread) for one to
        // end, and this listener accepts no more meanwhile: further ones
        // wait in the kernel's accept queue. (A permit is not taken before
        // `accept`: listeners sharing the cap would hold permits idle.)
        let permit = match &cap {
            None => None,
            Some(cap) => tokio::select! {
                p = cap.clone().acquire_owned() => p.ok(),
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => return,
            },
        };
        let placed = spread.place(me);
        let to = placed.worker();
        let mut held = Held::new(permit, placed);
        let mut stream = stream;
        if to != me {
            match move_to_worker(&spread, (me, to), stream, peer, kind, held) {
                None => continue,
                // Its worker is stopping or stuck: served here.
                Some(back) => (stream, held) = back,
            }
        }
        let http = crate::conn::listener::Http {
            builder: builder.clone(),
            watcher: graceful.watcher(),
            stop: stop.clone(),
        };
        accept_conn(stream, peer, kind, shared.clone(), http, held);
    }
}

/// Sends a connection accepted by worker `me` to worker `to`, where it was
/// placed. `None` when sent (or lost: a socket that cannot leave this
/// reactor is closed); the connection back, registered and counted here
/// again, when that worker's inbox is closed or full.
fn move_to_worker(
    spread: &Spread,
    (me, to): (usize, usize),
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    held: Held,
) -> Option<(TcpStream, Held)> {
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot move a connection to another worker; closing it");
            return None;
        }
    };
    let back = spread
        .send(
            to,
            Moved {
                stream,
                peer,
                kind,
                held,
            },
        )
        .err()?;
    let Moved {
        stream, mut held, ..
    } = back;
    held.move_to(me);
    match TcpStream::from_std(stream) {
        Ok(s) => Some((s, held)),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot register a connection; closing it");
            None
        }
    }
}

/// A worker's inbox: serves the connections other workers placed on it.
/// At the stop it closes, serves what was already sent, and ends (a later
/// send fails, and the sender serves the connection itself).
pub(crate) async fn take_moved(
    mut inbox: mpsc::Receiver<Moved>,
    shared: Arc<Shared>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = http_builder(&shared.config);
    let serve = |moved: Moved, stop: &watch::Receiver<bool>| {
        let Moved {
            stream,
            peer,
            kind,
            held,
        } = moved;
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                let http = crate::conn::listener::Http {
                    builder: builder.clone(),
                    watcher: graceful.watcher(),
                    stop: stop.clone(),
                };
                accept_conn(stream, peer, kind, shared.clone(), http, held);
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot register a moved connection; closing it");
            }
        }
    };
    loop {
        tokio::select! {
            moved = inbox.recv() => match moved {
                Some(moved) => serve(moved, &stop),
                None => return,
            },
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => break,
        }
    }
    inbox.close();
    while let Ok(moved) = inbox.try_recv() {
        serve(moved, &stop);
    }
}

async fn accept_admin(
    listener: UnixListener,
    admin: Arc<Admin>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tokio::time::sleep(backoff_on_accept_error(&e)).await;
                    continue;
                }
            },
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => return,
        };
        let admin = admin.clone();
        let svc = service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin::handle(admin, req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &[&str], tls: &[&str], pp: &[&str]) -> ProxyConfig {
        let addrs = |a: &[&str]| a.iter().map(|s| s.parse().unwrap()).collect::<Vec<_>>();
        let mut c = ProxyConfig::new(
            addrs(listen),
            "/nonexistent/a.sock".into(),
            "/nonexistent".into(),
        );
        c.tls_listen = addrs(tls);
        c.proxy_protocol = addrs(pp);
        c
    }

    #[test]
    fn proxy_protocol_addresses_must_be_listeners() {
        let ok = config(
            &["0.0.0.0:80", "10.0.0.5:8080"],
            &["0.0.0.0:443"],
            &["10.0.0.5:8080", "0.0.0.0:443"],
        );
        assert!(check_proxy_protocol(&ok).is_ok());
        assert!(check_proxy_protocol(&config(&["0.0.0.0:80"], &[], &[])).is_ok());

        let bad = config(&["0.0.0.0:80"], &[], &["127.0.0.1:80"]);
        let msg = check_proxy_protocol(&bad).unwrap_err().to_string();
        assert!(msg.contains("127.0.0.1:80"), "{msg}");
        assert!(
            msg.contains("listen: 0.0.0.0:80; TLS listen: none"),
            "{msg}"
        );
        assert!(msg.contains("--listen/--tls-listen or drop it"), "{msg}");
    }

    /// A worker whose inbox is full (it is stuck): the accepting worker
    /// gets the connection back, registered with its own reactor and
    /// counted on itself, and serves it; nothing is dropped.
    #[tokio::test]
    async fn a_connection_for_a_full_inbox_is_served_where_it_was_accepted() {
        let (spread, _inboxes) = Spread::new(2);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let kind = Kind {
            tls: false,
            proxy_protocol: false,
        };
        // Fill worker 1's inbox (nobody takes from it).
        let mut clients = Vec::new();
        let mut served_here = 0;
        for _ in 0..crate::runtime::spread::INBOX + 3 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (stream, peer) = listener.accept().await.unwrap();
            let held = Held::new(None, spread.place(1));
            if let Some((mut back, held)) =
                move_to_worker(&spread, (0, 1), stream, peer, kind, held)
            {
                served_here += 1;
                drop(held);
                // Still a live connection, on this runtime.
                use tokio::io::AsyncWriteExt as _;
                back.write_all(b"x").await.unwrap();
            }
        }
        assert_eq!(served_here, 3);
    }
}
