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
//! 2. `error` ([`error::ApiError`], [`ServerError`]);
//! 3. `db` (store calls and other blocking work on the blocking pool);
//! 4. `fleet` (the instances), `metrics` (the embedded metrics store in
//!    `<data>/metrics/`, its maintenance and the proxy's scrapes);
//! 5. `build` (releases), `deployer` (the rollout executor);
//! 6. `state` (what the handlers share: store, fleet, deployer, proxy);
//! 7. `auth` (who calls);
//! 8. `audit` (the entry of every mutating call), `api` (the handlers).
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
mod metrics;
mod paths;
mod shell;
mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use gantry_api::Readiness;
use gantry_store::Store;

use crate::auth::Peer;
pub use crate::error::ServerError;
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
    /// How often the edge proxy's `/metrics` is scraped into the metrics store.
    pub metrics_interval: std::time::Duration,
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
) -> Result<(), ServerError> {
    // The data directory, its lock and the store (SQLite: schema
    // migrations, a key rotation to finish) on the blocking pool.
    let (dir, key) = (opts.data_dir.clone(), opts.secret_key.clone());
    let (_lock, store, owner_uid) = tokio::task::spawn_blocking(move || open_data_dir(&dir, key))
        .await
        .map_err(|source| ServerError::Task { source })??;
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
    .await?;
    let proxy_admin = opts
        .proxy_admin
        .clone()
        .unwrap_or_else(|| opts.data_dir.join("proxy").join("admin.sock"));
    let proxy = gantry_proxy::AdminClient::new(proxy_admin);
    // Tells the background loops (metrics) to stop once serving ends.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (metrics, metrics_running) = metrics::start(
        &opts.data_dir,
        proxy.clone(),
        opts.metrics_interval,
        stop_rx.clone(),
    )
    .await?;
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
        .map_err(|e| ServerError::Resume { message: e.message })?;
    if resumed > 0 {
        tracing::info!(deploys = resumed, "resuming unfinished deploys");
    }
    let state = AppState {
        store,
        owner_uid,
        fleet,
        deployer,
        proxy,
        metrics,
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
                .map_err(|source| ServerError::Listen { addr, source })?,
        ),
        None => None,
    };
    let listening = Listening {
        socket: socket.clone(),
        tcp: tcp
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
            .map_err(|source| ServerError::Serve { source })?,
    };
    tracing::info!(socket = %socket.display(), tcp = ?listening.tcp, "gantry server ready");
    on_ready(&listening);

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
    let _ = tokio::fs::remove_file(&socket).await;
    metrics_running.shutdown().await;
    tracing::info!("gantry server stopped");
    result.map_err(|source| ServerError::Serve { source })
}

/// Creates the data directory (0700), takes its lock and opens the store:
/// the blocking part of the start. Returns the lock (held for the server's
/// life), the store and the uid that owns the directory.
fn open_data_dir(
    dir: &Path,
    key: Option<String>,
) -> Result<(std::fs::File, Store, u32), ServerError> {
    use std::os::unix::fs::MetadataExt;
    let store_error = |source| ServerError::Store {
        dir: dir.to_path_buf(),
        source,
    };
    gantry_store::create_private_dir(dir).map_err(store_error)?;
    let lock = lock_data_dir(dir)?;
    let store = Store::open_with_key(dir, key.as_deref()).map_err(store_error)?;
    let owner = std::fs::metadata(dir)
        .map_err(|source| ServerError::Owner {
            dir: dir.to_path_buf(),
            source,
        })?
        .uid();
    Ok((lock, store, owner))
}

/// Holds an exclusive lock on the data directory for the server's life, so
/// two servers never share one store.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, ServerError> {
    let path = dir.join(LOCK_FILE);
    let lock_error = |source| ServerError::Lock {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_error)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::AlreadyRunning {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(lock_error(e)),
    }
}

/// Binds the API socket with mode 0600, replacing a stale socket file left
/// by a server that died.
async fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let path_buf = || path.to_path_buf();
    if tokio::fs::try_exists(path).await.unwrap_or(false) {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ServerError::SocketInUse { path: path_buf() });
        }
        tokio::fs::remove_file(path)
            .await
            .map_err(|source| ServerError::StaleSocket {
                path: path_buf(),
                source,
            })?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|source| ServerError::Socket {
        path: path_buf(),
        source,
    })?;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .await
        .map_err(|source| ServerError::SocketMode {
            path: path_buf(),
            source,
        })?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(data_dir: PathBuf, listen: Option<SocketAddr>) -> ServerOptions {
        ServerOptions {
            data_dir,
            socket: None,
            listen,
            secret_key: None,
            shim: vec!["/bin/false".into()],
            ports: 41000..=41009,
            usage_interval: std::time::Duration::from_secs(3600),
            proxy_admin: None,
            proxy_addr: None,
            deploy_lease: std::time::Duration::from_secs(60),
            metrics_interval: std::time::Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn a_taken_port_is_a_listen_error_caused_by_the_io_error() {
        let dir = tempfile::tempdir().unwrap();
        // Held for the whole test: the server cannot have it.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let opts = options(dir.path().join("data"), Some(addr));
        let err = run(opts, std::future::pending(), |_| {
            panic!("it cannot be ready")
        })
        .await
        .unwrap_err();
        let ServerError::Listen { addr: at, source } = &err else {
            panic!("expected a listen error, got {err:?}");
        };
        assert_eq!(*at, addr);
        assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        assert_eq!(
            err.to_string(),
            format!("cannot listen on {addr}; is the port in use?")
        );
        assert_eq!(
            error::chain(&err),
            format!("cannot listen on {addr}; is the port in use?: {source}")
        );
        drop(taken);
    }

    #[test]
    fn a_second_server_on_a_data_directory_is_refused_and_a_file_is_no_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = open_data_dir(&data, None).unwrap();
        match open_data_dir(&data, None) {
            Err(ServerError::AlreadyRunning { dir }) => assert_eq!(dir, data),
            other => panic!("expected AlreadyRunning, got {:?}", other.map(|_| ())),
        }
        drop(first);
        assert!(
            open_data_dir(&data, None).is_ok(),
            "free once the first is gone"
        );

        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = open_data_dir(&file, None).map(|_| ()).unwrap_err();
        assert!(matches!(err, ServerError::Store { .. }), "{err:?}");
        assert_eq!(
            error::chain(&err),
            format!(
                "cannot open the store in {0}: cannot use data directory {0}: {1}",
                file.display(),
                std::io::Error::from_raw_os_error(17) // EEXIST
            )
        );
    }

    /// The layers of the crate's documentation, lowest first.
    const LAYERS: &[&[&str]] = &[
        &["limits", "paths", "shell"],
        &["error"],
        &["db"],
        &["fleet", "metrics"],
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
