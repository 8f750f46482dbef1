//! Test builders: real backends, a real proxy, a real client, all on
//! 127.0.0.1:0.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gantry_proxy::{
    AdminClient, BackendSet, Maintenance, Proxy, ProxyConfig, ProxyError, RateLimit, Route,
    RouteTls, SecurityHeaders, Table,
};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

// === Backend ===

/// A small HTTP/1.1 app. Paths:
/// - `/hold...`: counts itself in `entered`, then waits for `release()`;
/// - `/upload`: stores the request body in `received`;
/// - `/stream`: sends `first`, waits for `release()`, sends `second`;
/// - anything else: JSON echo of backend name, method, path and headers.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub received: Arc<Mutex<Vec<u8>>>,
    entered: watch::Receiver<usize>,
    release: watch::Sender<bool>,
    task: JoinHandle<()>,
}

type BackendBody = BoxBody<Bytes, Infallible>;

struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

struct BackendState {
    name: String,
    received: Arc<Mutex<Vec<u8>>>,
    entered: watch::Sender<usize>,
    release: watch::Receiver<bool>,
}

async fn backend_handle(st: Arc<BackendState>, req: Request<Incoming>) -> Response<BackendBody> {
    let path = req.uri().path().to_string();
    if path.starts_with("/hold") {
        st.entered.send_modify(|n| *n += 1);
        let mut release = st.release.clone();
        let _ = release.wait_for(|r| *r).await.is_ok();
    }
    if path == "/upload" {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        *st.received.lock().unwrap() = body.to_vec();
        return Response::new(Full::new(Bytes::from(format!("{}", body.len()))).boxed());
    }
    if path == "/stream" {
        let (tx, rx) = mpsc::channel(4);
        let mut release = st.release.clone();
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"first")).await;
            let _ = release.wait_for(|r| *r).await.is_ok();
            let _ = tx.send(Bytes::from_static(b"second")).await;
        });
        return Response::new(ChannelBody(rx).boxed());
    }
    let mut headers = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .and_modify(|s: &mut String| {
                s.push_str(", ");
                s.push_str(v.to_str().unwrap_or("?"));
            })
            .or_insert_with(|| v.to_str().unwrap_or("?").to_string());
    }
    let echo = serde_json::json!({
        "backend": st.name,
        "method": req.method().as_str(),
        "path": path,
        "headers": headers,
    });
    let mut resp = Response::new(Full::new(Bytes::from(echo.to_string())).boxed());
    resp.headers_mut()
        .insert("x-backend", st.name.parse().unwrap());
    resp.headers_mut()
        .insert("keep-alive", "timeout=5".parse().unwrap());
    resp
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (entered_tx, entered) = watch::channel(0);
        let (release, release_rx) = watch::channel(false);
        let received = Arc::new(Mutex::new(Vec::new()));
        let st = Arc::new(BackendState {
            name: name.to_string(),
            received: received.clone(),
            entered: entered_tx,
            release: release_rx,
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(backend_handle(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            received,
            entered,
            release,
            task,
        }
    }

    /// Waits until `n` `/hold` requests have arrived; fails the test if
    /// they have not within [`EVENTUALLY`].
    pub async fn wait_entered(&self, n: usize) {
        let mut rx = self.entered.clone();
        let what = format!("{n} /hold request(s) to reach backend {}", self.name);
        within(&what, EVENTUALLY, rx.wait_for(|e| *e >= n))
            .await
            .expect("the backend's task is alive");
    }

    pub fn release(&self) {
        let _ = self.release.send(true);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address where nothing listens (connection refused).
/// An address nothing answers on, for good: a socket bound but never
/// listening (connections are refused), kept for the whole test process so
/// no other test's listener can take the port meanwhile.
pub fn dead_addr() -> SocketAddr {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = s.local_addr().unwrap();
    std::mem::forget(s);
    addr
}

// === Table builders ===
//
// A test states only what it varies:
//
//     table()
//         .route(route("hello/production").host("hello.test").to(backend.addr))
//         .route(route("api").host("api.test").prefix("/api").set(set("blue").to(a).weight(90))
//             .set(set("green").to(b).weight(10)))
//         .build()
//
// Defaults: table version 1; a route matches any host (`*`) on `/`, with no
// sets and every option off; a set has weight 100 and no instances.

/// A table builder; see [`table`].
#[derive(Debug, Clone)]
pub struct TableBuilder {
    table: Table,
}

/// An empty table, version 1.
pub fn table() -> TableBuilder {
    TableBuilder {
        table: Table {
            version: 1,
            routes: Vec::new(),
        },
    }
}

impl TableBuilder {
    pub fn version(mut self, version: u64) -> Self {
        self.table.version = version;
        self
    }

    /// Adds a route (a [`RouteBuilder`] or a built [`Route`]).
    pub fn route(mut self, route: impl Into<Route>) -> Self {
        self.table.routes.push(route.into());
        self
    }

    pub fn build(self) -> Table {
        self.table
    }
}

/// A route builder; see [`route`].
#[derive(Debug, Clone)]
pub struct RouteBuilder {
    route: Route,
    /// Whether `hosts` is still the default `["*"]`, which the first
    /// [`RouteBuilder::host`] replaces.
    any_host: bool,
}

/// A route with id `id` for any host (`*`) on `/`, no sets, every option
/// off.
pub fn route(id: &str) -> RouteBuilder {
    RouteBuilder {
        route: Route {
            id: id.to_string(),
            hosts: vec!["*".to_string()],
            path_prefix: "/".to_string(),
            sets: Vec::new(),
            maintenance: None,
            timeout_ms: None,
            compress: false,
            sticky: false,
            headers: None,
            rate_limit: None,
            max_body: None,
            connect_timeout_ms: None,
            tls: None,
            redirect_http: false,
        },
        any_host: true,
    }
}

impl RouteBuilder {
    /// Adds a host name (the first replaces the default `*`).
    pub fn host(mut self, host: &str) -> Self {
        if self.any_host {
            self.route.hosts.clear();
            self.any_host = false;
        }
        self.route.hosts.push(host.to_string());
        self
    }

    /// The route's hosts, exactly (an empty list is allowed, for tests of
    /// validation).
    pub fn hosts(mut self, hosts: &[&str]) -> Self {
        self.route.hosts = hosts.iter().map(|h| h.to_string()).collect();
        self.any_host = false;
        self
    }

    pub fn prefix(mut self, prefix: &str) -> Self {
        self.route.path_prefix = prefix.to_string();
        self
    }

    /// Shorthand for one set `s` with weight 100 and instance `addr`; each
    /// call adds an instance to that set.
    pub fn to(mut self, addr: SocketAddr) -> Self {
        match self.route.sets.iter_mut().find(|s| s.name == "s") {
            Some(s) => s.instances.push(addr.to_string()),
            None => self.route.sets.push(set("s").to(addr).build()),
        }
        self
    }

    /// Adds a backend set.
    pub fn set(mut self, set: SetBuilder) -> Self {
        self.route.sets.push(set.build());
        self
    }

    pub fn maintenance(mut self, message: &str, retry_after_secs: Option<u64>) -> Self {
        self.route.maintenance = Some(Maintenance {
            message: message.to_string(),
            retry_after_secs,
        });
        self
    }

    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.route.timeout_ms = Some(ms);
        self
    }

    pub fn connect_timeout_ms(mut self, ms: u64) -> Self {
        self.route.connect_timeout_ms = Some(ms);
        self
    }

    pub fn compress(mut self) -> Self {
        self.route.compress = true;
        self
    }

    pub fn sticky(mut self) -> Self {
        self.route.sticky = true;
        self
    }

    pub fn headers(mut self, headers: SecurityHeaders) -> Self {
        self.route.headers = Some(headers);
        self
    }

    pub fn rate_limit(mut self, requests_per_second: f64, burst: u32) -> Self {
        self.route.rate_limit = Some(RateLimit {
            requests_per_second,
            burst,
        });
        self
    }

    pub fn max_body(mut self, bytes: u64) -> Self {
        self.route.max_body = Some(bytes);
        self
    }

    pub fn tls(mut self, tls: RouteTls) -> Self {
        self.route.tls = Some(tls);
        self
    }

    /// TLS from certificate files.
    pub fn tls_files(self, cert: &Path, key: &Path) -> Self {
        self.tls(RouteTls::Files {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
    }

    /// TLS over ACME.
    pub fn acme(self, email: Option<&str>) -> Self {
        self.tls(RouteTls::Acme {
            email: email.map(str::to_string),
        })
    }

    pub fn redirect_http(mut self) -> Self {
        self.route.redirect_http = true;
        self
    }

    pub fn build(self) -> Route {
        self.route
    }
}

impl From<RouteBuilder> for Route {
    fn from(b: RouteBuilder) -> Route {
        b.build()
    }
}

/// A backend set builder; see [`set`].
#[derive(Debug, Clone)]
pub struct SetBuilder {
    set: BackendSet,
}

/// A set named `name`, weight 100, no instances.
pub fn set(name: &str) -> SetBuilder {
    SetBuilder {
        set: BackendSet {
            name: name.to_string(),
            weight: 100,
            instances: Vec::new(),
        },
    }
}

impl SetBuilder {
    /// Adds an instance.
    pub fn to(mut self, addr: SocketAddr) -> Self {
        self.set.instances.push(addr.to_string());
        self
    }

    /// Adds instances (all of `addrs`).
    pub fn instances(mut self, addrs: &[SocketAddr]) -> Self {
        self.set
            .instances
            .extend(addrs.iter().map(|a| a.to_string()));
        self
    }

    pub fn weight(mut self, weight: u32) -> Self {
        self.set.weight = weight;
        self
    }

    pub fn build(self) -> BackendSet {
        self.set
    }
}

// === Proxy ===

pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: AdminClient,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ProxyError>>>,
}

pub fn config(dir: &Path) -> ProxyConfig {
    let mut c = ProxyConfig::new(
        vec!["127.0.0.1:0".parse().unwrap()],
        dir.join("admin.sock"),
        dir.join("state"),
    );
    c.access_log = false;
    c
}

impl TestProxy {
    pub async fn start(dir: &Path) -> TestProxy {
        Self::start_with(config(dir)).await
    }

    pub async fn start_with(config: ProxyConfig) -> TestProxy {
        let proxy = Proxy::bind(config).await.unwrap();
        let addr = proxy.local_addrs()[0];
        let admin = proxy.admin_client();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(proxy.serve(async move {
            let _ = rx.await;
        }));
        TestProxy {
            addr,
            admin,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    pub async fn stop(mut self) -> Result<(), ProxyError> {
        self.stop.take().unwrap().send(()).unwrap();
        self.handle.take().unwrap().await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

// === Client ===

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The backend name of an echo answer.
    pub fn backend(&self) -> String {
        self.json()["backend"].as_str().unwrap().to_string()
    }

    /// A request header as the backend saw it.
    pub fn seen(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_string)
    }
}

pub async fn send(
    client: &TestClient,
    proxy: &TestProxy,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Resp {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = proxy.url(path).parse().unwrap();
    req.headers_mut().insert("host", host.parse().unwrap());
    for (k, v) in headers {
        req.headers_mut().append(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(client: &TestClient, proxy: &TestProxy, host: &str, path: &str) -> Resp {
    send(client, proxy, Method::GET, host, path, &[], Bytes::new()).await
}

/// How long [`eventually`] waits before it fails the test.
pub const EVENTUALLY: Duration = Duration::from_secs(10);

/// Polls `check` every 10 ms until it is true; fails the test naming `what`
/// if it is not within [`EVENTUALLY`].
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, EVENTUALLY, check).await
}

/// [`eventually`] with its own deadline.
pub async fn eventually_within<F, Fut>(what: &str, deadline: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_every(what, Duration::from_millis(10), deadline, check).await
}

/// Polls `check` every `interval` until it is true; fails the test naming
/// `what` if it is not within `deadline`.
pub async fn eventually_every<F, Fut>(
    what: &str,
    interval: Duration,
    deadline: Duration,
    mut check: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !check().await {
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(interval).await;
    }
}

/// Awaits `fut`, failing the test naming `what` if it takes longer than
/// `deadline`.
pub async fn within<T>(
    what: &str,
    deadline: Duration,
    fut: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(deadline, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {deadline:?} waiting for {what}"),
    }
}

// === External processes on free ports ===
//
// A process we do not control (pebble, Prometheus) takes its port as an
// argument. A port cannot be handed over bound, so each start is a guess
// that is checked: pick a port the kernel just called free, start the
// process, and wait until the process itself holds a socket on it (read
// from /proc, so a different process that took the port meanwhile is not
// mistaken for it). When it exits or does not bind in time, the caller
// retries with a new port, a bounded number of times.

/// How many times a caller starts an external process on new ports before
/// it gives up.
pub const PORT_ATTEMPTS: usize = 5;

/// A port that was free a moment ago: only a guess, for a process that
/// must be given its port. Check it with [`wait_bound`].
pub fn candidate_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A socket protocol in /proc/net.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// A listening TCP socket.
    Tcp,
    /// A bound UDP socket.
    Udp,
}

/// The inodes of the sockets bound to `port` on 127.0.0.1 or 0.0.0.0
/// (listening, for TCP).
fn socket_inodes(proto: Proto, port: u16) -> Vec<String> {
    let (file, listening) = match proto {
        Proto::Tcp => ("/proc/net/tcp", Some("0A")),
        Proto::Udp => ("/proc/net/udp", None),
    };
    let table = std::fs::read_to_string(file).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (ip, p) = cols.get(1)?.split_once(':')?;
            let ours = matches!(ip, "0100007F" | "00000000")
                && u16::from_str_radix(p, 16).ok()? == port
                && listening.is_none_or(|st| cols.get(3) == Some(&st));
            ours.then(|| cols.get(9).map(|s| s.to_string()))?
        })
        .collect()
}

/// Whether process `pid` holds a socket bound to `port` on 127.0.0.1
/// (or all addresses).
pub fn holds_port(pid: u32, proto: Proto, port: u16) -> bool {
    let inodes = socket_inodes(proto, port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let t = target.to_string_lossy();
            inodes.iter().any(|i| t == format!("socket:[{i}]"))
        })
    })
}

/// Waits until process `pid` holds every socket of `sockets`. Fails
/// (naming `what`) when `exited` reports the process gone, or after
/// `deadline`; the caller then retries on new ports.
pub async fn wait_bound(
    what: &str,
    pid: u32,
    mut exited: impl FnMut() -> Option<String>,
    sockets: &[(Proto, u16)],
    deadline: Duration,
) -> Result<(), String> {
    let start = tokio::time::Instant::now();
    loop {
        if sockets.iter().all(|(p, port)| holds_port(pid, *p, *port)) {
            return Ok(());
        }
        if let Some(status) = exited() {
            return Err(format!(
                "{what} exited ({status}) before binding {sockets:?}"
            ));
        }
        if start.elapsed() > deadline {
            return Err(format!(
                "{what} did not bind {sockets:?} within {deadline:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
