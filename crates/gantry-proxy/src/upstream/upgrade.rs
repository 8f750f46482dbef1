//! WebSocket (any HTTP/1.1 `Upgrade`) pass-through.
//!
//! An HTTP/1.1 request with `Connection: upgrade` and an `Upgrade` header
//! keeps those two headers (every other hop-by-hop header is stripped as
//! usual) and goes to the chosen instance like any request. When the
//! instance answers `101 Switching Protocols`, the proxy answers the client
//! with that 101, takes both upgraded connections and copies bytes both
//! ways; an end of stream on one side is passed on to the other, and the
//! tunnel ends when both are done. Any other answer is passed on as a
//! normal response.
//!
//! The tunnel keeps the request's [`Guard`], so it counts in its set's
//! in-flight requests (and its instance's outstanding count) until it ends,
//! and `GET /drained` reports the set drained only once its tunnels are
//! closed. Bytes are counted as they pass (client → backend as `bytes_in`,
//! backend → client as `bytes_out`). When the set leaves the table, its
//! tunnels get `websocket_drain_grace` more, then the proxy closes both
//! connections (a plain TCP close: the proxy copies bytes and does not
//! parse WebSocket frames, so it cannot send a close frame). A stopping
//! proxy gives open tunnels the same grace (`Tunnels::shutdown`).
//!
//! WebSockets over HTTP/2 (RFC 8441 extended CONNECT, `:protocol
//! websocket`) are offered too: such a request goes to the backend as an
//! HTTP/1.1 upgrade (GET with `Upgrade: websocket` and a fresh
//! `Sec-WebSocket-Key`), and the backend's 101 becomes the 200 that
//! RFC 8441 asks for. Backends only ever see HTTP/1.1.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::observe::stats::SetStats;
use crate::request::headers::{X_REQUEST_ID, strip_hop_by_hop};
use crate::upstream::body::{Guard, ResponseBody};

/// An upgrade the client asked for, held until the backend answers.
pub(crate) struct Upgrade {
    protocol: HeaderValue,
    client: OnUpgrade,
    /// An HTTP/2 extended CONNECT: the client gets 200, not 101.
    h2: bool,
}

/// Takes the upgrade out of a request that asks for one (HTTP/1.1
/// `Upgrade`, or an HTTP/2 extended CONNECT for `websocket`, which it
/// turns into the HTTP/1.1 form); call before the hop-by-hop strip (it
/// removes `Upgrade`), then [`Upgrade::restore`] after it.
pub(crate) fn take(parts: &mut request::Parts) -> Option<Upgrade> {
    // hyper marks every request it could upgrade; most have no mark (and
    // the own HTTP/1.1 server passes no upgrade requests at all).
    parts.extensions.get::<OnUpgrade>()?;
    if parts.version == Version::HTTP_2 && parts.method == Method::CONNECT {
        let protocol = parts.extensions.get::<hyper::ext::Protocol>()?;
        if !protocol.as_str().eq_ignore_ascii_case("websocket") {
            return None;
        }
        let client = parts.extensions.remove::<OnUpgrade>()?;
        parts.method = Method::GET;
        parts.headers.insert(SEC_WEBSOCKET_KEY, websocket_key());
        return Some(Upgrade {
            protocol: HeaderValue::from_static("websocket"),
            client,
            h2: true,
        });
    }
    if parts.version != Version::HTTP_11 || !connection_has_upgrade(&parts.headers) {
        return None;
    }
    let protocol = parts.headers.get(header::UPGRADE)?.clone();
    let client = parts.extensions.remove::<OnUpgrade>()?;
    Some(Upgrade {
        protocol,
        client,
        h2: false,
    })
}

const SEC_WEBSOCKET_KEY: header::HeaderName = header::HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_ACCEPT: header::HeaderName =
    header::HeaderName::from_static("sec-websocket-accept");

/// A `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 4.1). It
/// only proves to the backend that this is a WebSocket handshake.
fn websocket_key() -> HeaderValue {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw: [u8; 16] = fastrand::u128(..).to_be_bytes();
    let mut out = Vec::with_capacity(24);
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn connection_has_upgrade(headers: &HeaderMap) -> bool {
    crate::request::headers::has_token(headers, header::CONNECTION, "upgrade")
}

fn set_upgrade_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Where the tunnel's drain deadline comes from.
pub(crate) struct Drain {
    pub(crate) retired: watch::Receiver<bool>,
    pub(crate) grace: Duration,
    pub(crate) tunnels: Arc<Tunnels>,
}

/// The open tunnels, so that a shutdown can give them
/// `websocket_drain_grace` to end and then close them.
pub(crate) struct Tunnels {
    open: watch::Sender<usize>,
    close: watch::Sender<bool>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            open: watch::Sender::new(0),
            close: watch::Sender::new(false),
        }
    }
}

/// One open tunnel, counted until dropped.
struct Open(Arc<Tunnels>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Tunnels {
    fn enter(self: &Arc<Self>) -> (Open, watch::Receiver<bool>) {
        self.open.send_modify(|n| *n += 1);
        (Open(self.clone()), self.close.subscribe())
    }

    /// Waits up to `grace` for the open tunnels to end, then closes the
    /// rest (and any that opens later) and waits for them to go.
    pub(crate) async fn shutdown(self: Arc<Self>, grace: Duration) {
        let mut open = self.open.subscribe();
        if tokio::time::timeout(grace, open.wait_for(|n| *n == 0))
            .await
            .is_ok()
        {
            return;
        }
        tracing::info!(
            open = *open.borrow(),
            "closing WebSocket connections still open at shutdown"
        );
        self.close.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), open.wait_for(|n| *n == 0)).await;
    }
}

impl Upgrade {
    /// Puts `Connection: upgrade` and the client's `Upgrade` back on the
    /// request to the backend.
    pub(crate) fn restore(&self, headers: &mut HeaderMap) {
        set_upgrade_headers(headers, self.protocol.clone());
    }

    /// The backend answered the upgrade request. When it switched
    /// protocols, answers the client (101, or 200 for h2) and starts the
    /// tunnel, which owns `guard` until it ends. An h2 client whose
    /// backend answered 2xx without switching gets 502 (a 2xx would open
    /// a tunnel to nowhere). Any other answer is handed back, to be sent
    /// as an ordinary response.
    #[allow(clippy::result_large_err)]
    pub(crate) fn answer(
        self,
        resp: Response<Incoming>,
        guard: Guard,
        stats: Arc<SetStats>,
        request_id: Option<&HeaderValue>,
        drain: Drain,
    ) -> Result<Response<ResponseBody>, (Response<Incoming>, Guard)> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(self.tunnel(resp, guard, stats, request_id, drain));
        }
        if self.h2 && resp.status().is_success() {
            let id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
            return Ok(crate::request::pages::page(
                StatusCode::BAD_GATEWAY,
                id,
                &format!(
                    "The backend answered the WebSocket request with {} instead of switching \
                     protocols.",
                    resp.status()
                ),
                None,
                Some(guard),
            ));
        }
        Err((resp, guard))
    }

    fn tunnel(
        self,
        mut resp: Response<Incoming>,
        mut guard: Guard,
        stats: Arc<SetStats>,
        request_id: Option<&HeaderValue>,
        drain: Drain,
    ) -> Response<ResponseBody> {
        let backend = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        let protocol = parts
            .headers
            .get(header::UPGRADE)
            .cloned()
            .unwrap_or(self.protocol);
        strip_hop_by_hop(&mut parts.headers);
        if self.h2 {
            // RFC 8441: a 200 without the HTTP/1.1 handshake headers.
            parts.headers.remove(SEC_WEBSOCKET_ACCEPT);
            parts.status = StatusCode::OK;
        } else {
            set_upgrade_headers(&mut parts.headers, protocol);
            parts.status = StatusCode::SWITCHING_PROTOCOLS;
        }
        if !parts.headers.contains_key(X_REQUEST_ID)
            && let Some(v) = request_id
        {
            parts.headers.insert(X_REQUEST_ID, v.clone());
        }
        parts.version = Version::default();
        guard.respond(parts.status.as_u16());
        let client = self.client;
        let (open, mut close) = drain.tunnels.enter();
        tokio::spawn(async move {
            let _open = open;
            // Ends the in-flight count, the lease and logs, when the tunnel
            // is over.
            let mut guard = guard;
            let (client, backend) = match tokio::try_join!(client, backend) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            let mut client = Counted {
                io: TokioIo::new(client),
                stats,
                bytes_in: 0,
                bytes_out: 0,
            };
            let mut backend = TokioIo::new(backend);
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "upgraded connection ended with an error");
                    }
                }
                _ = async { close.wait_for(|c| *c).await.is_ok() } => {
                    tracing::info!("closing an upgraded connection (WebSocket) at shutdown");
                }
                _ = crate::request::forward::drain_deadline(drain.retired, drain.grace) => {
                    tracing::info!(
                        grace = ?drain.grace,
                        "closing an upgraded connection (WebSocket) of a set removed from the table"
                    );
                }
            }
            guard.tunnel_bytes = Some((client.bytes_in, client.bytes_out));
            // Dropping both ends closes both connections; then the guard
            // ends the request.
            drop((client, backend));
            drop(guard);
        });
        Response::from_parts(parts, ResponseBody::full(bytes::Bytes::new(), None))
    }
}

/// The client side of a tunnel, counting bytes into the set's stats as
/// they pass: reads are the client's bytes (in), writes the backend's
/// (out).
struct Counted<T> {
    io: T,
    stats: Arc<SetStats>,
    bytes_in: u64,
    bytes_out: u64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = (buf.filled().len() - before) as u64;
            this.bytes_in += n;
            this.stats.add_bytes_in(n);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.bytes_out += n as u64;
            this.stats.add_bytes_out(n as u64);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_keys_are_base64_of_16_bytes() {
        let k = websocket_key();
        let k = k.to_str().unwrap();
        assert_eq!(k.len(), 24, "{k}");
        assert!(k.ends_with("=="), "{k}");
        assert_ne!(k, websocket_key().to_str().unwrap());
    }

    #[test]
    fn only_h1_requests_with_connection_upgrade_qualify() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!connection_has_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(connection_has_upgrade(&h));
        let (mut parts, ()) = hyper::Request::builder()
            .version(Version::HTTP_2)
            .body(())
            .unwrap()
            .into_parts();
        parts.headers = h;
        assert!(take(&mut parts).is_none());
    }
}
