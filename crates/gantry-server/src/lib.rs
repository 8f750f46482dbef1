//! The control plane (`gantry server`).
//!
//! It owns the store and serves the JSON API under `/api/v1` on a unix
//! socket in the data directory (mode 0600) and, optionally, on TCP. Request
//! path: routing → [`audit::record`] (mutating calls; it reads no body) →
//! [`auth::authenticate`] (headers only, so an unauthenticated body is never
//! read) → the handler, whose extractor checks role and environment. Every
//! error answer, axum's own rejections included, has the JSON shape of
//! [`error::ApiError`].
//! `/healthz` says the process is up; `/readyz` that the store answers with
//! a current schema. SIGTERM/SIGINT stop it gracefully: listeners close,
//! in-flight requests finish, the socket file is removed.
//!
//! The modules form layers; each imports only from the layers below it, so
//! there is no import circle:
//!
//! 1. `limits`, `paths` (the data directory's layout), `shell` (build,
//!    migration and hook commands);
//! 2. `error` ([`error::ApiError`]);
//! 3. `db` (store calls on the blocking pool), `fleet` (the instances);
//! 4. `build` (releases), `deployer` (the rollout executor);
//! 5. `state` (what the handlers share: store, fleet, deployer, proxy);
//! 6. `auth` (who calls);
//! 7. `audit` (the entry of every mutating call), `api` (the handlers).
#![forbid(unsafe_code)]

mod api;
mod audit;
mod auth;
mod build;
mod db;
mod deployer;
mod error;
mod fleet;
mod limits;
mod paths;
mod shell;
mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use gantry_api::Readiness;
use gantry_store::Store;

use crate::auth::Peer;
use crate::state::AppState;

use paths::LOCK_FILE;
pub use paths::SOCKET_FILE;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub data_dir: PathBuf,
    /// The unix socket; defaults to `<data_dir>/gantry.sock`.
    pub socket: Option<PathBuf>,
    /// Also serve the API on this TCP address (tokens required there).
    pub listen: Option<SocketAddr>,
    /// The secrets key, when given by environment variable.
    pub secret_key: Option<String>,
    /// The command that runs a shim, e.g. `["/usr/bin/gantry", "shim"]`.
    pub shim: Vec<std::ffi::OsString>,
    /// Ports handed to app instances.
    pub ports: std::ops::RangeInclusive<u16>,
    /// How often instance CPU and memory are stored.
    pub usage_interval: std::time::Duration,
    /// The edge proxy's admin socket; default `proxy/admin.sock` in the data dir.
    pub proxy_admin: Option<PathBuf>,
    /// Where the edge proxy serves users (for smoke checks through it).
    pub proxy_addr: Option<SocketAddr>,
    /// How long a deploy's lease lasts unrenewed.
    pub deploy_lease: std::time::Duration,
}

/// Where a started server listens.
#[derive(Debug, Clone)]
pub struct Listening {
    pub socket: PathBuf,
    pub tcp: Option<SocketAddr>,
}

/// The router, for a given store (the tests' entry point too).
fn app(state: AppState) -> Router {
    let api = api::routes()
        // The routes that take more (source bundles) set their own limit.
        .layer(axum::extract::DefaultBodyLimit::max(limits::MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ));
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(api)
        .fallback(|| async {
            error::ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint; the API lives under /api/v1",
            )
        })
        .with_state(state);
    // Around the whole router as one service (a `layer` on it would wrap
    // each route inside axum's own 405 handling, before `Allow` is set).
    Router::new()
        .fallback_service(router)
        .layer(axum::middleware::from_fn(error::json_errors))
}

async fn readyz(axum::extract::State(state): axum::extract::State<AppState>) -> impl IntoResponse {
    let result = state.db(|s| s.ready()).await;
    let body = Readiness {
        ready: result.is_ok(),
        schema_version: gantry_store::SCHEMA_VERSION,
        error: result.err().map(|e| e.message),
    };
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Opens the store, binds the listeners and serves until `shutdown`
/// resolves. `on_ready` is called once the listeners are bound.
pub async fn run(
    opts: ServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Listening),
) -> anyhow::Result<()> {
    gantry_store::create_private_dir(&opts.data_dir)?;
    let _lock = lock_data_dir(&opts.data_dir)?;
    let store = Store::open_with_key(&opts.data_dir, opts.secret_key.as_deref())
        .with_context(|| format!("cannot open the store in {}", opts.data_dir.display()))?;
    let owner_uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&opts.data_dir)?.uid()
    };
    let store = Arc::new(store);
    let fleet = fleet::Fleet::boot(
        store.clone(),
        &opts.data_dir,
        fleet::FleetOptions {
            shim: opts.shim.clone(),
            ports: opts.ports.clone(),
            usage_interval: opts.usage_interval,
            usage_retention: std::time::Duration::from_secs(24 * 3600),
        },
    )
    .context("cannot start the runtime")?;
    let proxy_admin = opts
        .proxy_admin
        .clone()
        .unwrap_or_else(|| opts.data_dir.join("proxy").join("admin.sock"));
    let proxy = gantry_proxy::AdminClient::new(proxy_admin);
    let deployer = deployer::Deployer::new(
        store.clone(),
        fleet.clone(),
        proxy.clone(),
        opts.proxy_addr,
        opts.deploy_lease,
    );
    let resumed = deployer
        .resume_all()
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    if resumed > 0 {
        tracing::info!(deploys = resumed, "resuming unfinished deploys");
    }
    let state = AppState {
        store,
        owner_uid,
        fleet,
        deployer,
        proxy,
    };
    let router = app(state);

    let socket = opts
        .socket
        .clone()
        .unwrap_or_else(|| opts.data_dir.join(SOCKET_FILE));
    let unix = bind_unix(&socket).await?;
    let tcp = match opts.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}; is the port in use?"))?,
        ),
        None => None,
    };
    let listening = Listening {
        socket: socket.clone(),
        tcp: tcp.as_ref().map(|l| l.local_addr()).transpose()?,
    };
    tracing::info!(socket = %socket.display(), tcp = ?listening.tcp, "gantry server ready");
    on_ready(&listening);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let unix_server = axum::serve(
        unix,
        router.clone().into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    let result = match tcp {
        Some(l) => {
            let tcp_server = axum::serve(l, router.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(stopped(stop_rx));
            tokio::try_join!(async { unix_server.await }, async { tcp_server.await }).map(|_| ())
        }
        None => unix_server.await,
    };
    let _ = std::fs::remove_file(&socket);
    tracing::info!("gantry server stopped");
    result.context("the API server failed")
}

/// Holds an exclusive lock on the data directory for the server's life, so
/// two servers never share one store.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another gantry server is already running on the data directory {}; stop it first, \
             or use another --data-dir",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Binds the API socket with mode 0600, replacing a stale socket file left
/// by a server that died.
async fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "a server is already answering on {}; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot create the socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    /// The layers of the crate's documentation, lowest first.
    const LAYERS: &[&[&str]] = &[
        &["limits", "paths", "shell"],
        &["error"],
        &["db", "fleet"],
        &["build", "deployer"],
        &["state"],
        &["auth"],
        &["audit", "api"],
    ];

    fn layer(module: &str) -> Option<usize> {
        LAYERS.iter().position(|l| l.contains(&module))
    }

    /// Every `crate::<module>` a source file names.
    fn imports(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
        found
    }

    #[test]
    fn modules_import_only_from_the_layers_below() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        let mut stack = vec![src.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
        let mut checked = 0;
        for f in files {
            let rel = f.strip_prefix(&src).unwrap();
            let module = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if module == "lib" {
                continue;
            }
            let own = layer(&module)
                .unwrap_or_else(|| panic!("module `{module}` is in no layer of the crate doc"));
            for used in imports(&std::fs::read_to_string(&f).unwrap()) {
                if used == module {
                    continue;
                }
                let theirs = layer(&used)
                    .unwrap_or_else(|| panic!("`{module}` uses `crate::{used}`, in no layer"));
                assert!(
                    theirs < own,
                    "`{}` (layer {own}) imports `crate::{used}` (layer {theirs})",
                    rel.display()
                );
                checked += 1;
            }
        }
        assert!(checked > 20, "only {checked} imports found");
    }
}
