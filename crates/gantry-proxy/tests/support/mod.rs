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
use gantry_proxy::{AdminClient, BackendSet, Proxy, ProxyConfig, ProxyError, Route, Table};
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

    /// Waits until `n` `/hold` requests have arrived.
    pub async fn wait_entered(&self, n: usize) {
        let mut rx = self.entered.clone();
        let _ = rx.wait_for(|e| *e >= n).await.is_ok();
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

pub fn set(name: &str, weight: u32, instances: &[SocketAddr]) -> BackendSet {
    BackendSet {
        name: name.to_string(),
        weight,
        instances: instances.iter().map(|a| a.to_string()).collect(),
    }
}

pub fn route(id: &str, hosts: &[&str], prefix: &str, sets: Vec<BackendSet>) -> Route {
    Route {
        id: id.to_string(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        path_prefix: prefix.to_string(),
        sets,
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
    }
}

pub fn table(routes: Vec<Route>) -> Table {
    Table { version: 1, routes }
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

/// Polls `check` until it is true (no wall-time assertion: the test
/// harness' own timeout is the limit).
pub async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while !check().await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
