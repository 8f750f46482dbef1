//! One accepted client connection, before and around HTTP: the PROXY
//! protocol header (when configured), the TLS handshake (on TLS
//! listeners), then HTTP: the proxy's own HTTP/1.1 server (`http1_server`),
//! which hands anything but plain body-less HTTP/1.1 requests to hyper's
//! HTTP/1.1 + HTTP/2 server; an `h2` ALPN goes to hyper directly. Also the answers the
//! proxy gives on the plain listener before routing: ACME HTTP-01 tokens
//! and `redirect_http`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::request::forward;
use crate::shared::Shared;
use crate::tls::certs::ACME_TLS_ALPN;
use crate::upstream::body::{RequestBody, ResponseBody};

/// Time a client gets for its PROXY header and for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const ACME_PATH: &str = "/.well-known/acme-challenge/";

/// How a traffic listener treats its connections.
#[derive(Clone, Copy)]
pub(crate) struct Kind {
    pub(crate) tls: bool,
    pub(crate) proxy_protocol: bool,
}

/// hyper's server for a connection, and the graceful-shutdown watcher
/// and stop signal of the worker that accepted it.
pub(crate) struct Http {
    pub(crate) builder: auto::Builder<TokioExecutor>,
    pub(crate) watcher: Watcher,
    pub(crate) stop: watch::Receiver<bool>,
}

/// Serves one accepted connection on its own task: PROXY header → TLS →
/// HTTP. `held` (the `max_connections` permit, the worker's open count) is
/// held until it ends.
pub(crate) fn accept_conn(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    shared: Arc<Shared>,
    http: Http,
    held: crate::runtime::spread::Held,
) {
    let _ = stream.set_nodelay(true);
    tokio::spawn(async move {
        let _held = held;
        let mut stream = stream;
        let mut peer = peer;
        if kind.proxy_protocol {
            match tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                crate::conn::proxy_protocol::read_proxy_header(&mut stream),
            )
            .await
            {
                Ok(Ok(Some(source))) => peer = source,
                Ok(Ok(None)) => {} // LOCAL / UNKNOWN: the connection's own address
                Ok(Err(why)) => {
                    tracing::debug!(%peer, error = %why, "no valid PROXY protocol header; closing");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no PROXY protocol header in time; closing");
                    return;
                }
            }
        }
        if !kind.tls {
            return crate::conn::http1_server::serve(stream, peer, false, shared, http).await;
        }
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let start = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS client hello failed");
                return;
            }
            Err(_) => return,
        };
        let config = shared.tls.config_for(&start.client_hello());
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(config)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        };
        if tls.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
            // TLS-ALPN-01 validation: the handshake was the answer.
            let mut tls = tls;
            let _ = tls.shutdown().await;
            return;
        }
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            return serve_hyper(tls, peer, true, shared, http.builder, http.watcher).await;
        }
        crate::conn::http1_server::serve(tls, peer, true, shared, http).await
    });
}

/// hyper's HTTP/1.1 + HTTP/2 server for the rest of a connection.
pub(crate) async fn serve_hyper<I>(
    io: I,
    peer: SocketAddr,
    over_tls: bool,
    shared: Arc<Shared>,
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer_ip = crate::request::headers::ip_value(peer.ip());
    let counters = shared.clone();
    // Idle client connections end after `idle_timeout` (`conn::idle`).
    let (io, activity) = crate::conn::idle::IdleIo::new(io, shared.config.idle_timeout);
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        let peer_ip = peer_ip.clone();
        let busy = activity.begin();
        async move {
            let req = req.map(RequestBody::Hyper);
            // Boxed: the request's state machine is a few KiB; boxed, hyper
            // moves a pointer instead of copying it on its way into the
            // connection task. (The own HTTP/1.1 server awaits it in place.)
            let resp = Box::pin(handle(shared, req, peer, peer_ip, over_tls)).await;
            drop(busy);
            Ok::<_, Infallible>(resp)
        }
    });
    // With upgrades: WebSocket pass-through (`upgrade`).
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        // A head hyper cannot parse was answered 400 (or 431) by hyper:
        // counted like the proxy's own refusals before routing.
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(|e| e.is_parse() || e.is_parse_too_large())
        {
            counters
                .routing
                .registry
                .bad_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}

/// hyper's path through the proxy for one request; the own HTTP/1.1
/// server (`http1_server`) takes the same steps without this async layer.
async fn handle(
    shared: Arc<Shared>,
    req: Request<RequestBody>,
    peer: SocketAddr,
    peer_ip: HeaderValue,
    over_tls: bool,
) -> Response<ResponseBody> {
    let finish = match start(&shared, &req, over_tls) {
        Ok(finish) => finish,
        Err(answer) => return *answer,
    };
    let mut security_headers = None;
    let mut resp = forward::handle(
        shared,
        req,
        peer,
        peer_ip,
        (over_tls, finish.https),
        &mut security_headers,
    )
    .await;
    finish.apply(&mut resp, security_headers);
    resp
}

/// What the answer of a forwarded request still needs.
pub(crate) struct Finish {
    pub(crate) https: bool,
    /// `Connection: close` (HTTP/1.x while a successor proxy takes over).
    close: bool,
}

impl Finish {
    /// The route's security headers (phase 1 records them; every answer of
    /// the route, the backend's or the proxy's own, gets them) and the
    /// hand-off's `Connection: close`.
    pub(crate) fn apply(
        self,
        resp: &mut Response<ResponseBody>,
        security_headers: Option<Arc<crate::policy::CompiledHeaders>>,
    ) {
        if let Some(h) = security_headers {
            h.apply(resp.headers_mut(), self.https);
        }
        if self.close && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

/// Before routing: the proxy's own answer (plain HTTP: ACME HTTP-01, the
/// redirect to HTTPS), or what the forwarded answer will need.
pub(crate) fn start(
    shared: &Shared,
    req: &Request<RequestBody>,
    over_tls: bool,
) -> Result<Finish, Box<Response<ResponseBody>>> {
    // Boxed: rare, and the answer is large.
    if !over_tls && let Some(resp) = before_routing(shared, req) {
        return Err(Box::new(resp));
    }
    // Read at the start: a request that began before the hand-off ends
    // long before the linger does.
    let close = req.version() <= hyper::Version::HTTP_11
        && shared.closing.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Finish {
        https: forward::https(over_tls, req),
        close,
    })
}

/// Plain HTTP only: the ACME HTTP-01 answer, or the redirect to HTTPS.
fn before_routing(shared: &Shared, req: &Request<RequestBody>) -> Option<Response<ResponseBody>> {
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix(ACME_PATH) {
        if let Some(key_auth) = shared.tls.http_challenge(token) {
            let mut resp = Response::new(ResponseBody::full(key_auth, None));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            return Some(resp);
        }
        return None;
    }
    if !shared.tls.any_redirects() {
        return None;
    }
    // No or two hosts: not redirected, `forward` answers 400.
    let host = crate::request::headers::request_host(req.version(), req.headers(), req.uri())
        .ok()??
        .to_str()
        .ok()?
        .to_string();
    let router = shared.routing.load();
    let route = router.find(&host, path)?;
    if !shared.tls.redirects(&route.id) {
        return None;
    }
    let bare = strip_port(&host);
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = match shared.config.https_port {
        443 => format!("https://{bare}{pq}"),
        port => format!("https://{bare}:{port}{pq}"),
    };
    let location = HeaderValue::from_str(&url).ok()?;
    let mut resp = Response::new(ResponseBody::full(
        format!("308 Permanent Redirect\n\nThis site is served over HTTPS: {url}\n"),
        None,
    ));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, location);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Some(resp)
}

/// `host:port` → `host`; `[::1]:80` → `[::1]`: the host as it goes into
/// the redirect URL (an IPv6 literal keeps its brackets there, which
/// `gantry_common::split_host_port` takes off).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("a.example:"), "a.example");
    }
}
