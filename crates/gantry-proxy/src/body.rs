//! Phase 5: bodies, streamed both ways, never buffered.
//!
//! - [`UpstreamBody`] carries the client's request body to the backend. The
//!   client body sits in a shared slot, so when a connection attempt fails
//!   before any byte was taken, the proxy still holds the body and can retry
//!   on another instance.
//! - [`ResponseBody`] carries the backend's (or the proxy's own) answer to
//!   the client and owns the request's [`Guard`]: when the body ends or is
//!   dropped (client gone), the guard ends the in-flight count, the
//!   instance lease, and writes the access log line.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::{AccessLog, Entry, duration_ms, format_time};
use crate::balance::Lease;
use crate::stats::SetStats;

// === impl RequestBody ===

/// The client's request body: hyper's, or none at all (the proxy's own
/// HTTP/1.1 server, `serve1`, takes only requests without one).
pub(crate) enum RequestBody {
    Hyper(Incoming),
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

// === impl UpstreamBody ===

/// The request body, held where a failed attempt cannot take it away.
pub(crate) struct SharedBody {
    slot: Mutex<Option<RequestBody>>,
    sent: AtomicU64,
    /// Set once any frame was taken from the client body.
    touched: std::sync::atomic::AtomicBool,
    /// The route's `max_body`: past it the stream is cut (`limits`).
    limit: u64,
    exceeded: std::sync::atomic::AtomicBool,
}

impl SharedBody {
    pub(crate) fn new(body: RequestBody, limit: Option<u64>) -> Arc<SharedBody> {
        Arc::new(SharedBody {
            slot: Mutex::new(Some(body)),
            sent: AtomicU64::new(0),
            touched: std::sync::atomic::AtomicBool::new(false),
            limit: limit.unwrap_or(u64::MAX),
            exceeded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// True once the body grew past the route's `max_body` and was cut.
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded.load(Relaxed)
    }

    /// Bytes taken from the client body so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Relaxed)
    }

    /// True while no frame has been taken: another attempt may send it.
    pub(crate) fn untouched(&self) -> bool {
        !self.touched.load(Relaxed)
    }
}

pub(crate) struct UpstreamBody {
    shared: Arc<SharedBody>,
    stats: Arc<SetStats>,
}

impl UpstreamBody {
    pub(crate) fn new(shared: Arc<SharedBody>, stats: Arc<SetStats>) -> Self {
        UpstreamBody { shared, stats }
    }
}

/// The body is larger than the route's `max_body`.
#[derive(Debug, thiserror::Error)]
#[error("the request body exceeds the route's max_body of {0} bytes")]
pub(crate) struct BodyTooLarge(pub(crate) u64);

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let mut slot = this.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
        let Some(inner) = slot.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            this.shared.touched.store(true, Relaxed);
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                let sent = this.shared.sent.fetch_add(n, Relaxed) + n;
                this.stats.add_bytes_in(n);
                if sent > this.shared.limit {
                    this.shared.exceeded.store(true, Relaxed);
                    // Dropping the client body stops reading it.
                    *slot = None;
                    return Poll::Ready(Some(Err(BodyTooLarge(this.shared.limit).into())));
                }
            }
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

// === impl Guard ===

/// Everything the end of a request needs: counters and the log line.
pub(crate) struct Guard {
    pub(crate) start: Instant,
    pub(crate) time: SystemTime,
    pub(crate) request_id: String,
    pub(crate) method: hyper::Method,
    pub(crate) path: String,
    pub(crate) client_ip: IpAddr,
    pub(crate) route: Option<String>,
    set: Option<Arc<SetStats>>,
    pub(crate) instance: Option<SocketAddr>,
    pub(crate) lease: Option<Lease>,
    pub(crate) request_body: Option<Arc<SharedBody>>,
    /// Bytes (in, out) of an upgraded connection, for the log line only
    /// (`upgrade` counts them into the set's stats as they pass).
    pub(crate) tunnel_bytes: Option<(u64, u64)>,
    status: u16,
    bytes_out: u64,
    log: Arc<AccessLog>,
}

impl Guard {
    pub(crate) fn new(
        log: Arc<AccessLog>,
        method: hyper::Method,
        path: String,
        client_ip: IpAddr,
    ) -> Guard {
        Guard {
            start: Instant::now(),
            time: SystemTime::now(),
            request_id: String::new(),
            method,
            path,
            client_ip,
            route: None,
            set: None,
            instance: None,
            lease: None,
            request_body: None,
            tunnel_bytes: None,
            status: 0,
            bytes_out: 0,
            log,
        }
    }

    /// The request now counts as in flight on this set.
    pub(crate) fn enter_set(&mut self, stats: Arc<SetStats>) {
        stats.begin();
        self.set = Some(stats);
    }

    /// Undoes [`Guard::enter_set`].
    pub(crate) fn leave_set(&mut self) {
        if let Some(s) = self.set.take() {
            s.end();
        }
    }

    /// Records the response status and the latency to it.
    pub(crate) fn respond(&mut self, status: u16) {
        self.status = status;
        if let Some(s) = &self.set {
            s.record_response(status, self.start.elapsed());
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(s) = &self.set {
            s.end();
        }
        self.lease.take();
        if self.log.enabled() {
            self.log.log(&Entry {
                time: format_time(self.time),
                request_id: &self.request_id,
                route: self.route.as_deref(),
                set: self.set.as_deref().map(|s| s.set.as_str()),
                instance: self.instance,
                method: self.method.as_str(),
                path: &self.path,
                status: self.status,
                duration_ms: duration_ms(self.start.elapsed()),
                bytes: self.tunnel_bytes.map_or(self.bytes_out, |(_, out)| out),
                bytes_in: match self.tunnel_bytes {
                    Some((bytes_in, _)) => bytes_in,
                    None => self.request_body.as_ref().map_or(0, |b| b.sent()),
                },
                client_ip: self.client_ip,
            });
        }
    }
}

// === impl Upstream ===

/// A backend's response body: from hyper's client, or from the proxy's own
/// HTTP/1.1 path (`h1`).
pub(crate) enum Upstream {
    Hyper(Incoming),
    H1(crate::h1::Body),
}

impl Body for Upstream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Upstream::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(BoxError::from))),
            Upstream::H1(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Upstream::Hyper(b) => b.is_end_stream(),
            Upstream::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Upstream::Hyper(b) => b.size_hint(),
            Upstream::H1(b) => b.size_hint(),
        }
    }
}

// === impl ResponseBody ===

enum Inner {
    Upstream(Upstream),
    /// The upstream body, compressed as it streams (`compress`).
    Compressed(Box<crate::compress::Compressed>),
    Full(Option<Bytes>),
}

/// What a broken response stream reports (hyper then aborts the
/// connection or stream, so the client sees a truncated answer).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body sent to the client.
pub(crate) struct ResponseBody {
    inner: Inner,
    guard: Option<Guard>,
}

impl ResponseBody {
    pub(crate) fn upstream(body: Upstream, guard: Guard) -> Self {
        ResponseBody {
            inner: Inner::Upstream(body),
            guard: Some(guard),
        }
    }

    /// Compresses an upstream body with `coding` (other bodies are left
    /// as they are).
    pub(crate) fn compress(self, coding: crate::compress::Coding) -> Self {
        match self.inner {
            Inner::Upstream(body) => ResponseBody {
                inner: Inner::Compressed(Box::new(crate::compress::Compressed::new(body, coding))),
                guard: self.guard,
            },
            inner => ResponseBody {
                inner,
                guard: self.guard,
            },
        }
    }

    pub(crate) fn full(bytes: impl Into<Bytes>, guard: Option<Guard>) -> Self {
        let bytes = bytes.into();
        ResponseBody {
            inner: Inner::Full((!bytes.is_empty()).then_some(bytes)),
            guard,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled: Poll<Option<Result<Frame<Bytes>, BoxError>>> = match &mut this.inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx),
            Inner::Compressed(c) => c
                .poll_data(cx)
                .map(|o| o.map(|r| r.map(Frame::data).map_err(BoxError::from))),
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(g)) = (frame.data_ref(), this.guard.as_mut()) {
                    let n = data.len() as u64;
                    g.bytes_out += n;
                    // Counted as they go, so long streams show in the
                    // stats before they end.
                    if let Some(s) = &g.set {
                        s.add_bytes_out(n);
                    }
                }
            }
            // The end (or a broken backend stream): the request is over.
            Poll::Ready(_) => {
                this.guard.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Compressed(_) => false,
            Inner::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Compressed(_) => SizeHint::default(),
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
