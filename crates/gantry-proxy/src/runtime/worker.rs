//! Per-core workers: the threads that carry client traffic.
//!
//! The proxy starts one OS thread per core (`std::thread::available_parallelism`),
//! each running its own single-threaded tokio runtime, like nginx's worker
//! processes. Every worker accepts on every client listener (`server`'s
//! `accept_traffic`, unchanged, one copy per worker and listener) and
//! serves the connections it accepted from start to end on its own thread,
//! with its OWN upstream clients (connection pools, see `upstream::pools`): a
//! client connection, its requests, the backend connections they use and
//! the tasks that drive those connections all live on one thread, so a
//! request costs no cross-thread wake-up and no work-stealing scheduler.
//!
//! The listening sockets are not multiplied: each address has one socket,
//! and every worker registers a duplicate descriptor of it (`try_clone`);
//! the kernel hands each new connection to one of the workers waiting on
//! it. One socket per address keeps a listener hand-off to another process
//! simple. The accepting worker then places the connection on the worker
//! with the fewest open connections (`spread`), which serves it from then
//! on.
//!
//! What stays shared: the routing table (`ArcSwap`), the per-set stats
//! (atomics), the access log queue, the WebSocket tunnel registry and the
//! graceful-shutdown watcher. The admin socket and the metrics listener
//! stay on the runtime that calls [`Proxy::serve`](crate::Proxy::serve).
//!
//! Shutdown: the stop signal ends every worker's accept loops; each worker
//! then tells its open connections to finish (its own graceful-shutdown
//! watcher: connections poll it, so it is not shared across threads) and
//! waits for them up to `shutdown_timeout`; the workers keep running
//! (WebSocket tunnels get their grace) until `serve` tells them to finish;
//! a worker then drops its runtime (cancelling what is left) and its
//! thread ends.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::conn::listener::Kind;
use crate::error::ProxyError;
use crate::shared::Shared;

/// The running workers.
pub(crate) struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Closed (every sender dropped) once every worker stopped accepting
    /// and its connections ended (or `shutdown_timeout` passed).
    draining: mpsc::Receiver<()>,
    /// `true`: open connections are done (or given up on); stop.
    finish: watch::Sender<bool>,
}

/// How many workers: one per core.
pub(crate) fn count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Starts the workers; each accepts on every listener until `stop`.
pub(crate) fn start(
    listeners: Vec<(std::net::TcpListener, SocketAddr, Kind)>,
    inboxes: Vec<mpsc::Receiver<crate::runtime::spread::Moved>>,
    cap: Option<Arc<Semaphore>>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<Workers, ProxyError> {
    let n = inboxes.len();
    let spread = &shared.spread;
    let mut inboxes = inboxes.into_iter();
    let (drained_tx, draining) = mpsc::channel::<()>(1);
    let (finish, finish_rx) = watch::channel(false);
    let mut threads = Vec::with_capacity(n);
    for w in 0..n {
        let mut own = Vec::with_capacity(listeners.len());
        for (l, addr, kind) in &listeners {
            let dup = l.try_clone().map_err(|source| ProxyError::Listen {
                addr: *addr,
                source,
            })?;
            own.push((dup, *addr, *kind));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| ProxyError::Workers { source })?;
        let shared = shared.clone();
        let cap = cap.clone();
        let stop = stop.clone();
        let spread = (spread.clone(), w);
        // With one worker nothing is ever moved (but it still counts).
        let inbox = inboxes.next().filter(|_| n > 1);
        let drained_tx = drained_tx.clone();
        let mut finish_rx = finish_rx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("gantry-proxy-{w}"))
            .spawn(move || {
                runtime.block_on(async move {
                    crate::runtime::shard::enter(w);
                    crate::upstream::pools::install(&shared.config);
                    crate::upstream::http1_client::install(shared.config.pool_max_idle_per_host);
                    // Per worker: its connections poll it, so it is never
                    // shared across threads.
                    let graceful = Arc::new(GracefulShutdown::new());
                    let mut accepters = tokio::task::JoinSet::new();
                    for (l, addr, kind) in own {
                        match TcpListener::from_std(l) {
                            Ok(l) => {
                                accepters.spawn(crate::runtime::server::accept_traffic(
                                    l,
                                    kind,
                                    cap.clone(),
                                    shared.clone(),
                                    graceful.clone(),
                                    stop.clone(),
                                    spread.clone(),
                                ));
                            }
                            Err(e) => {
                                tracing::error!(%addr, error = %e, "worker cannot register the listener");
                            }
                        }
                    }
                    if let Some(inbox) = inbox {
                        accepters.spawn(crate::runtime::server::take_moved(
                            inbox,
                            shared.clone(),
                            graceful.clone(),
                            stop.clone(),
                        ));
                    }
                    drop(spread);
                    let shutdown_timeout = shared.config.shutdown_timeout;
                    drop((shared, stop));
                    while accepters.join_next().await.is_some() {}
                    match Arc::try_unwrap(graceful) {
                        Ok(graceful) => {
                            if tokio::time::timeout(shutdown_timeout, graceful.shutdown())
                                .await
                                .is_err()
                            {
                                tracing::warn!(
                                    timeout = ?shutdown_timeout,
                                    "requests still open after the shutdown timeout; closing them"
                                );
                            }
                        }
                        Err(_) => tracing::warn!("connections still referenced at shutdown"),
                    }
                    drop(drained_tx);
                    let _ = finish_rx.wait_for(|f| *f).await;
                });
                // Dropping the runtime cancels whatever outlived the
                // shutdown timeout.
                drop(runtime);
            })
            .map_err(|source| ProxyError::Workers { source })?;
        threads.push(thread);
    }
    Ok(Workers {
        threads,
        draining,
        finish,
    })
}

impl Workers {
    /// Waits until every worker stopped accepting (after the stop signal)
    /// and its open connections ended, or `shutdown_timeout` passed.
    pub(crate) async fn drained(&mut self) {
        while self.draining.recv().await.is_some() {}
    }

    /// Tells the workers to end and waits for their threads.
    pub(crate) async fn finish(self) {
        let _ = self.finish.send(true);
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let _ = joined.await;
    }
}
