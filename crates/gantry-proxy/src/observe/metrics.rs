//! The optional TCP metrics listener (`metrics_listen`): `GET /metrics`
//! (Prometheus text, the same as the admin socket's) and `GET /healthz`,
//! nothing else, so a Prometheus server can scrape the proxy without
//! reaching the admin API.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::ProxyError;
use crate::shared::Shared;

/// Binds the metrics listener when one is configured.
pub(crate) async fn bind(
    addr: Option<SocketAddr>,
) -> Result<Option<(TcpListener, SocketAddr)>, ProxyError> {
    let Some(addr) = addr else { return Ok(None) };
    let err = |source| ProxyError::Listen { addr, source };
    // SO_REUSEPORT: during a hitless upgrade the new process binds it while
    // the old one still listens (the metrics socket is not handed over).
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseport(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    let listener = socket.listen(128).map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok(Some((listener, local)))
}

fn handle<B>(shared: &Shared, req: &Request<B>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        resp
    };
    let plain = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            shared.prometheus(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into(), plain),
        (_, "/metrics" | "/healthz") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed here; use GET\n", req.method()),
            plain,
        ),
        (_, path) => text(
            StatusCode::NOT_FOUND,
            format!("no `{path}` here: this listener serves only /metrics and /healthz\n"),
            plain,
        ),
    }
}

/// Serves the metrics listener until `stop`.
pub(crate) async fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => return,
        };
        let shared = shared.clone();
        let svc = service_fn(move |req| {
            let resp = handle(&shared, &req);
            async move { Ok::<_, Infallible>(resp) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(10))
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}
