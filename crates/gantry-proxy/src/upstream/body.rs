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

use std::future::Future as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::observe::access_log::{AccessLog, Entry, duration_ms, format_time};
use crate::observe::stats::{ClientFault, SetStats, clock};
use crate::routing::balance::Lease;
use tokio::time::Sleep;

// === impl RequestBody ===

/// The client's request body: hyper's, or none at all (the proxy's own
/// HTTP/1.1 server, `conn::http1_server`, takes only requests without one).
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

/// How long the proxy waits for a client's body before the backend's
/// failure or answer counts as the client's doing (the client had sent
/// nothing for this long): see [`SharedBody::stalled`].
const STALL: Duration = Duration::from_secs(1);

/// The request body, held where a failed attempt cannot take it away.
///
/// It also tells whose fault a request that went wrong while its body
/// streamed is: the client's ([`ClientFault`]: a body error from the
/// client's side, its read timeout, `max_body`) or the backend's.
pub(crate) struct SharedBody {
    slot: Mutex<Option<RequestBody>>,
    sent: AtomicU64,
    /// Set once any frame was taken from the client body.
    touched: AtomicBool,
    /// The route's `max_body`: past it the stream is cut.
    limit: u64,
    /// The longest wait for the client's next body bytes.
    read_timeout: Duration,
    /// The client's fault that ended the body ([`ClientFault`] as u8; 0:
    /// none).
    fault: AtomicU8,
    /// The client's body has ended (or there was none).
    finished: AtomicBool,
    /// When the body last moved (a frame, its end, or its start), µs on
    /// `stats::clock`.
    progress_us: AtomicU64,
    /// Since when the proxy has been waiting for body bytes the client has
    /// not sent, µs on `stats::clock` plus 1; 0 while it is not waiting.
    waiting_us: AtomicU64,
}

fn now_us() -> u64 {
    u64::try_from(clock().as_micros()).unwrap_or(u64::MAX)
}

impl SharedBody {
    pub(crate) fn new(
        body: RequestBody,
        limit: Option<u64>,
        read_timeout: Duration,
    ) -> Arc<SharedBody> {
        let finished = body.is_end_stream();
        Arc::new(SharedBody {
            slot: Mutex::new(Some(body)),
            sent: AtomicU64::new(0),
            touched: AtomicBool::new(false),
            limit: limit.unwrap_or(u64::MAX),
            read_timeout,
            fault: AtomicU8::new(0),
            finished: AtomicBool::new(finished),
            // Only requests with a body read it.
            progress_us: AtomicU64::new(if finished { 0 } else { now_us() }),
            waiting_us: AtomicU64::new(0),
        })
    }

    /// Bytes taken from the client body so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Relaxed)
    }

    /// True while no frame has been taken: another attempt may send it.
    pub(crate) fn untouched(&self) -> bool {
        !self.touched.load(Relaxed)
    }

    /// The client's fault that ended the body, if one did.
    pub(crate) fn fault(&self) -> Option<ClientFault> {
        ClientFault::from_u8(self.fault.load(Relaxed))
    }

    /// True while the client's body has neither ended nor failed: the
    /// request is not over on the client's side yet.
    pub(crate) fn in_progress(&self) -> bool {
        !self.finished.load(Relaxed) && self.fault.load(Relaxed) == 0
    }

    /// True when the proxy has been waiting at least [`STALL`] (or the
    /// read timeout, if shorter) for body bytes the client has not sent.
    pub(crate) fn stalled(&self) -> bool {
        let since = self.waiting_us.load(Relaxed);
        since != 0
            && self.in_progress()
            && Duration::from_micros(now_us().saturating_sub(since - 1))
                >= STALL.min(self.read_timeout)
    }

    /// When a backend's answer is due at the earliest: `timeout` after the
    /// body last moved. The response timeout counts from the end of the
    /// request body, as a body that still streams is not the backend's
    /// delay.
    pub(crate) fn response_due(&self, timeout: Duration) -> Option<tokio::time::Instant> {
        let at = self.progress_us.load(Relaxed);
        if at == 0 {
            return None;
        }
        let ago = clock().saturating_sub(Duration::from_micros(at));
        tokio::time::Instant::now()
            .checked_sub(ago)
            .map(|t| t + timeout)
    }

    /// True while the proxy waits for the client (not the backend) to
    /// move the body.
    pub(crate) fn waiting_on_client(&self) -> bool {
        self.waiting_us.load(Relaxed) != 0 && self.in_progress()
    }

    fn moved(&self) {
        self.waiting_us.store(0, Relaxed);
        self.progress_us.store(now_us(), Relaxed);
    }

    fn fail(&self, slot: &mut Option<RequestBody>, fault: ClientFault) -> ClientBodyError {
        // Dropping the client body stops reading it.
        *slot = None;
        self.waiting_us.store(0, Relaxed);
        self.fault.store(fault as u8, Relaxed);
        ClientBodyError(fault, self.limit, self.read_timeout)
    }
}

/// The client's body failed by the client's fault.
#[derive(Debug)]
pub(crate) struct ClientBodyError(ClientFault, u64, Duration);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            ClientFault::BadFraming => f.write_str("the client's request body framing is broken"),
            ClientFault::IncompleteBody => {
                f.write_str("the client closed before its request body was complete")
            }
            ClientFault::BodyTimeout => write!(
                f,
                "the client sent no request body bytes for {} ms",
                self.2.as_millis()
            ),
            ClientFault::BodyTooLarge => write!(
                f,
                "the request body exceeds the route's max_body of {} bytes",
                self.1
            ),
        }
    }
}

impl std::error::Error for ClientBodyError {}

/// Which client fault a body error from the client's side is: broken
/// framing (hyper's chunked decoder refuses it as invalid input or data),
/// else a body cut off (EOF, reset, an h2 stream the client ended).
fn classify(e: &hyper::Error) -> ClientFault {
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                    ClientFault::BadFraming
                }
                _ => ClientFault::IncompleteBody,
            };
        }
        source = inner.source();
    }
    ClientFault::IncompleteBody
}

pub(crate) struct UpstreamBody {
    shared: Arc<SharedBody>,
    stats: Arc<SetStats>,
    /// The body read timeout, made on the first wait; `armed` while a
    /// wait runs.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl UpstreamBody {
    pub(crate) fn new(shared: Arc<SharedBody>, stats: Arc<SetStats>) -> Self {
        UpstreamBody {
            shared,
            stats,
            timer: None,
            armed: false,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let shared = &*this.shared;
        let mut slot = gantry_common::lock(&shared.slot);
        let Some(inner) = slot.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Pending => {
                // Waiting on the client from here, up to the read timeout.
                let _ = shared
                    .waiting_us
                    .compare_exchange(0, now_us() + 1, Relaxed, Relaxed);
                let deadline = tokio::time::Instant::now() + shared.read_timeout;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.armed {
                    timer.as_mut().reset(deadline);
                    this.armed = true;
                }
                if timer.as_mut().poll(cx).is_ready() {
                    let e = shared.fail(&mut slot, ClientFault::BodyTimeout);
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.armed = false;
                shared.moved();
                shared.finished.store(true, Relaxed);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "the client's request body failed");
                let e = shared.fail(&mut slot, classify(&e));
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.armed = false;
                shared.touched.store(true, Relaxed);
                shared.moved();
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    let sent = shared.sent.fetch_add(n, Relaxed) + n;
                    this.stats.add_bytes_in(n);
                    if sent > shared.limit {
                        let e = shared.fail(&mut slot, ClientFault::BodyTooLarge);
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
                if inner.is_end_stream() {
                    shared.finished.store(true, Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let slot = gantry_common::lock(&self.shared.slot);
        match slot.as_ref() {
            Some(b) if b.is_end_stream() => {
                self.shared.finished.store(true, Relaxed);
                true
            }
            Some(_) => false,
            // Failed (see `fault`): nothing more to send.
            None => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let slot = gantry_common::lock(&self.shared.slot);
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
    /// The client broke the request: it counts as a client error, not in
    /// the set's status classes.
    fault: Option<ClientFault>,
    /// The latency of an answer that came while the client's body was
    /// still in progress: whether it counts as the set's answer or as a
    /// client error is known only when the request ends.
    deferred: Option<std::time::Duration>,
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
            fault: None,
            deferred: None,
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

    /// The request is the client's fault: its answer counts as a client
    /// error of the set (see [`Guard::respond`]).
    pub(crate) fn client_error(&mut self, fault: ClientFault) {
        self.fault = Some(fault);
    }

    /// Records the response status and the latency to it, or a client
    /// error: when [`Guard::client_error`] said so, or when the answer is
    /// an error that came while the proxy had been waiting for the
    /// client's body (`SharedBody::stalled`). An answer that comes while
    /// the client's body is still in progress is recorded when the
    /// request ends, as a client error if the client broke the body.
    pub(crate) fn respond(&mut self, status: u16) {
        self.status = status;
        let Some(s) = &self.set else {
            return;
        };
        if let Some(f) = self.fault {
            s.record_client_error(f);
            return;
        }
        let latency = self.start.elapsed();
        if let Some(b) = &self.request_body
            && b.in_progress()
        {
            if status >= 400 && b.stalled() {
                self.fault = Some(ClientFault::BodyTimeout);
                s.record_client_error(ClientFault::BodyTimeout);
            } else {
                self.deferred = Some(latency);
            }
            return;
        }
        s.record_response(status, latency);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(s) = &self.set {
            let body = self.request_body.as_deref();
            if let Some(latency) = self.deferred.take() {
                match body.and_then(SharedBody::fault) {
                    Some(f) => s.record_client_error(f),
                    None => s.record_response(self.status, latency),
                }
            } else if self.status == 0
                && let Some(b) = body
                && (b.fault().is_some() || b.in_progress())
            {
                // No answer at all (the client's connection or stream
                // ended first) while its body was broken or unfinished.
                s.record_client_error(b.fault().unwrap_or(ClientFault::IncompleteBody));
            }
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
/// HTTP/1.1 path (`http1_client`).
pub(crate) enum Upstream {
    Hyper(Incoming),
    H1(crate::upstream::http1_client::Body),
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
    Compressed(Box<crate::upstream::compress::Compressed>),
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
    pub(crate) fn compress(self, coding: crate::upstream::compress::Coding) -> Self {
        match self.inner {
            Inner::Upstream(body) => ResponseBody {
                inner: Inner::Compressed(Box::new(crate::upstream::compress::Compressed::new(
                    body, coding,
                ))),
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
