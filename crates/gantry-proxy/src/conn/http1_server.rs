//! The client side's own HTTP/1.1 server, for the requests nearly all
//! traffic is: HTTP/1.1 without a body or an upgrade.
//!
//! - One loop per connection, in the connection's task: read until a
//!   request head is complete (`httparse`), build the `http::Request` (its
//!   URI and header values share the read buffer), call the proxy's
//!   handler (`listener::start`, `forward::handle`), write the answer's head and body, go on
//!   with the next request (pipelined bytes stay in the buffer).
//! - Everything else goes to hyper for the rest of the connection, with
//!   the bytes read so far put back in front ([`Prefixed`]): an HTTP/2
//!   preface, a request with a body or `Expect`, an upgrade, CONNECT,
//!   HTTP/1.0, and any head that does not parse or outgrows
//!   `max_header_size` (hyper answers those with its 400 or 431). The
//!   answers are the same either way; this path only costs less.
//! - Timers: one per connection, moved only when something is due sooner
//!   than it is set for. Idle (no request for `idle_timeout` since the last
//!   answer), slowloris (a head not complete `header_read_timeout` after
//!   its first bytes were seen), a stalled answer body (no frame for
//!   `idle_timeout`). A head that arrives whole in one read starts none.
//! - Answer framing: the `Content-Length` the answer has (the body must
//!   match it, else the connection is closed), or the body's exact size,
//!   or chunked. Trailers are sent only to a client that asked for them
//!   (`TE: trailers`). HEAD, 1xx, 204 and 304 answers have no body.
//! - Graceful shutdown: the worker's stop signal closes a connection that
//!   waits for a request; a busy one finishes its answer with
//!   `Connection: close`. The graceful watcher is held to the end, so the
//!   worker's shutdown waits for this connection as for hyper's.

use std::future::{Future, poll_fn};
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::conn::listener::Http;
use crate::request::headers::lists_token;
use crate::shared::Shared;
use crate::upstream::body::{RequestBody, ResponseBody};

/// Headers per request head, as hyper's server allows.
const MAX_HEADERS: usize = 100;
/// Read buffer growth step.
const READ_SIZE: usize = 8 * 1024;
/// Body chunks at least this large are written on their own instead of
/// being copied behind the head.
const COPY_LIMIT: usize = 8 * 1024;
/// Buffered answer bytes are written out at this size.
const FLUSH_AT: usize = 64 * 1024;

/// Serves one client connection: the own loop, then hyper if it hands off.
pub(crate) async fn serve<I>(
    io: I,
    peer: SocketAddr,
    over_tls: bool,
    shared: Arc<Shared>,
    http: Http,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Http {
        builder,
        watcher,
        stop,
    } = http;
    let mut conn = Conn::new(io, stop);
    let limits = Limits {
        idle: shared.config.idle_timeout,
        header_read: shared.config.header_read_timeout,
        max_head: shared
            .config
            .max_header_size
            .max(crate::config::MIN_HEADER_SIZE),
    };
    let peer_ip = crate::request::headers::ip_value(peer.ip());
    let mut last_answer = Instant::now();
    loop {
        let head = match conn.read_request(last_answer + limits.idle, &limits).await {
            Next::Request(head) => head,
            Next::Close => {
                let _ = conn.io.shutdown().await;
                return;
            }
            Next::Hyper => {
                let io = Prefixed {
                    prefix: conn.buf.freeze(),
                    io: conn.io,
                };
                return crate::conn::listener::serve_hyper(
                    io, peer, over_tls, shared, builder, watcher,
                )
                .await;
            }
            Next::Bad(why) => {
                tracing::debug!(%peer, error = why, "bad request head");
                shared
                    .routing
                    .registry
                    .bad_requests
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = conn.io.write_all(BAD_REQUEST).await;
                let _ = conn.io.shutdown().await;
                return;
            }
        };
        let Head {
            request,
            keep_alive,
            trailers,
        } = head;
        let is_head = request.method() == Method::HEAD;
        // `listener::handle`'s steps, without its async layer (each one
        // copies the request's state once more).
        let resp = match crate::conn::listener::start(&shared, &request, over_tls) {
            Err(answer) => *answer,
            Ok(finish) => {
                let mut security_headers = None;
                let mut resp = crate::request::forward::handle(
                    shared.clone(),
                    request,
                    peer,
                    peer_ip.clone(),
                    (over_tls, finish.https),
                    &mut security_headers,
                )
                .await;
                finish.apply(&mut resp, security_headers);
                resp
            }
        };
        let answer = Answer {
            is_head,
            keep_alive: keep_alive && !conn.stopped_now(),
            trailers,
        };
        if !conn.write_response(resp, answer, limits.idle).await {
            let _ = conn.io.shutdown().await;
            return;
        }
        last_answer = Instant::now();
    }
    // `watcher` is held to here: the worker's graceful shutdown waits.
}

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

struct Limits {
    idle: Duration,
    header_read: Duration,
    max_head: usize,
}

/// A parsed request and what its head says about the connection.
struct Head {
    request: Request<RequestBody>,
    keep_alive: bool,
    /// `TE: trailers`: the client takes trailers in a chunked answer.
    trailers: bool,
}

#[expect(
    clippy::large_enum_variant,
    reason = "one per request, moved once; a box would be an allocation per request"
)]
enum Next {
    Request(Head),
    /// EOF, an error, a timeout, or shutdown while idle.
    Close,
    /// Not for this path: hyper takes the connection.
    Hyper,
    /// A head that parsed but cannot become a request (a bad URI or
    /// header): 400, then close.
    Bad(&'static str),
}

struct Answer {
    is_head: bool,
    keep_alive: bool,
    trailers: bool,
}

/// The connection and its buffers, timer and stop signal.
struct Conn<I> {
    io: I,
    buf: BytesMut,
    out: Vec<u8>,
    /// Header (name, value) byte ranges of the head being built.
    ranges: Vec<[usize; 4]>,
    timer: Pin<Box<Sleep>>,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// For a look at the stop signal without waiting (no waker swap).
    stop_now: tokio::sync::watch::Receiver<bool>,
    stopped: bool,
}

enum Fill {
    Read(usize),
    Done,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    fn new(io: I, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        let stop_now = stop.clone();
        let mut stop = stop;
        Conn {
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
            out: Vec::with_capacity(1024),
            ranges: Vec::new(),
            // Set far out; moved nearer by the first wait.
            timer: Box::pin(tokio::time::sleep_until(far_future())),
            // A dropped sender counts as a stop too.
            stop: Box::pin(async move {
                let _ = stop.wait_for(|s| *s).await;
            }),
            stop_now,
            stopped: false,
        }
    }

    /// True once the worker's stop signal came.
    fn poll_stop(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.stopped && self.stop.as_mut().poll(cx).is_ready() {
            self.stopped = true;
        }
        self.stopped
    }

    /// The stop signal, without waiting for it.
    fn stopped_now(&mut self) -> bool {
        if !self.stopped && (*self.stop_now.borrow() || self.stop_now.has_changed().is_err()) {
            self.stopped = true;
        }
        self.stopped
    }

    /// True once `deadline` passed; else the timer wakes this task by then.
    fn poll_deadline(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        loop {
            if deadline < self.timer.deadline() {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            // The timer went off: for this deadline, or an earlier one.
            if Instant::now() >= deadline {
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
    }

    /// Reads more bytes, up to `deadline`; `Done` on a timeout, an error,
    /// or (if `idle`, waiting for a new request) the stop signal.
    async fn fill(&mut self, deadline: Instant, idle: bool) -> Fill {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        poll_fn(|cx| {
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
                Poll::Ready(Ok(n)) => return Poll::Ready(Fill::Read(n)),
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "client connection read failed");
                    return Poll::Ready(Fill::Done);
                }
                Poll::Pending => {}
            }
            if idle && self.poll_stop(cx) {
                return Poll::Ready(Fill::Done);
            }
            if self.poll_deadline(cx, deadline) {
                tracing::debug!(
                    idle,
                    "closing a client connection: no complete request in time"
                );
                return Poll::Ready(Fill::Done);
            }
            Poll::Pending
        })
        .await
    }

    /// The next request, once its head is complete.
    async fn read_request(&mut self, idle_deadline: Instant, limits: &Limits) -> Next {
        let mut started: Option<Instant> = None;
        loop {
            if !self.buf.is_empty() {
                match self.parse() {
                    Parsed::Complete(len, keep_alive, trailers) => {
                        return self.build(len, keep_alive, trailers);
                    }
                    Parsed::Hyper => return Next::Hyper,
                    Parsed::Partial if self.buf.len() >= limits.max_head => return Next::Hyper,
                    Parsed::Partial => {
                        started.get_or_insert_with(Instant::now);
                    }
                }
            }
            let (deadline, idle) = match started {
                Some(t) => (t + limits.header_read, false),
                None => (idle_deadline, true),
            };
            match self.fill(deadline, idle).await {
                Fill::Read(0) | Fill::Done => return Next::Close,
                Fill::Read(_) => {}
            }
        }
    }

    /// Parses the buffered head and decides whether this path takes it.
    fn parse(&mut self) -> Parsed {
        parse_head(&self.buf, &mut self.ranges)
    }

    /// Takes the parsed head out of the buffer as a request.
    fn build(&mut self, len: usize, keep_alive: bool, trailers: bool) -> Next {
        build_request(&mut self.buf, &self.ranges, len, keep_alive, trailers)
    }

    /// Writes the answer; true if the connection may serve another request.
    async fn write_response(
        &mut self,
        resp: Response<ResponseBody>,
        answer: Answer,
        idle: Duration,
    ) -> bool {
        let (parts, mut body) = resp.into_parts();
        let (framing, keep_alive) = encode_head(&mut self.out, &parts, &answer, &body);
        let mut written: u64 = 0;
        let mut trailer_block: Option<HeaderMap> = None;
        let ok = loop {
            let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    // Send what is ready, then wait for the body; a body
                    // that stalls for `idle` is cut.
                    if !self.flush_out().await {
                        break false;
                    }
                    let deadline = Instant::now() + idle;
                    let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                        Poll::Ready(f) => Poll::Ready(Some(f)),
                        Poll::Pending if self.poll_deadline(cx, deadline) => Poll::Ready(None),
                        Poll::Pending => Poll::Pending,
                    })
                    .await;
                    match next {
                        Some(f) => f,
                        None => {
                            tracing::debug!(?idle, "answer body stalled; closing the connection");
                            break false;
                        }
                    }
                }
            };
            let frame = match frame {
                None => break true,
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    // Send what came, then close: the client sees the cut.
                    tracing::debug!(error = %e, "answer body broke off");
                    let _ = self.flush_out().await;
                    break false;
                }
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailer_block = Some(t);
                    }
                    continue;
                }
            };
            if data.is_empty() || framing == Framing::None {
                continue;
            }
            written += data.len() as u64;
            if let Framing::Length(n) = framing
                && written > n
            {
                tracing::debug!(declared = n, "answer body longer than its Content-Length");
                break false;
            }
            if framing == Framing::Chunked {
                // Into the buffer, no string per chunk.
                let _ = write!(self.out, "{:x}\r\n", data.len());
            }
            if data.len() >= COPY_LIMIT {
                if !self.flush_out().await || !self.write(&data).await {
                    break false;
                }
            } else {
                self.out.extend_from_slice(&data);
            }
            if framing == Framing::Chunked {
                self.out.extend_from_slice(b"\r\n");
            }
            if self.out.len() >= FLUSH_AT && !self.flush_out().await {
                break false;
            }
        };
        if !ok {
            return false;
        }
        match framing {
            Framing::Chunked => {
                self.out.extend_from_slice(b"0\r\n");
                if answer.trailers
                    && let Some(t) = &trailer_block
                {
                    for (name, value) in t {
                        push_header(&mut self.out, name.as_str().as_bytes(), value.as_bytes());
                    }
                }
                self.out.extend_from_slice(b"\r\n");
            }
            Framing::Length(n) if written != n => {
                tracing::debug!(
                    declared = n,
                    written,
                    "answer body shorter than its Content-Length"
                );
                let _ = self.flush_out().await;
                return false;
            }
            _ => {}
        }
        if !self.flush_out().await {
            return false;
        }
        if self.out.capacity() > FLUSH_AT * 2 {
            self.out = Vec::with_capacity(1024);
        }
        keep_alive
    }

    async fn write(&mut self, bytes: &[u8]) -> bool {
        match self.io.write_all(bytes).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "client connection write failed");
                false
            }
        }
    }

    /// Writes the buffered answer bytes (and flushes a TLS stream).
    async fn flush_out(&mut self) -> bool {
        if !self.out.is_empty() {
            let r = self.io.write_all(&self.out).await;
            self.out.clear();
            if let Err(e) = r {
                tracing::debug!(error = %e, "client connection write failed");
                return false;
            }
        }
        self.io.flush().await.is_ok()
    }
}

/// Parses the head at the front of `buf` and decides whether this path
/// takes it. Records the header (name, value) byte ranges in `ranges` for
/// [`build_request`], the method and path last.
fn parse_head(buf: &[u8], ranges: &mut Vec<[usize; 4]>) -> Parsed {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    if req.version != Some(1) || req.method == Some("CONNECT") {
        return Parsed::Hyper;
    }
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    ranges.clear();
    let mut keep_alive = true;
    let mut trailers = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        if name.eq_ignore_ascii_case(b"content-length") {
            if value != b"0" {
                return Parsed::Hyper;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Parsed::Hyper;
        } else if name.eq_ignore_ascii_case(b"connection") {
            if lists_token(value, b"close") {
                keep_alive = false;
            }
            // Hop-by-hop, and read here: left out of the request unless
            // it names other headers (the hop-by-hop pass removes those).
            if crate::request::headers::only_connection_options(value) {
                continue;
            }
        } else if name.eq_ignore_ascii_case(b"keep-alive") {
            continue;
        } else if name.eq_ignore_ascii_case(b"te") && lists_token(value, b"trailers") {
            trailers = true;
        }
        let n = offset(name);
        let v = offset(value);
        ranges.push([n, n + name.len(), v, v + value.len()]);
    }
    // Method and path: kept as the first entry.
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Hyper;
    };
    let m = offset(method.as_bytes());
    let p = offset(path.as_bytes());
    ranges.push([m, m + method.len(), p, p + path.len()]);
    Parsed::Complete(len, keep_alive, trailers)
}

/// Takes the head `parse_head` found (`len` bytes, `ranges`) out of `buf`
/// as a request.
fn build_request(
    buf: &mut BytesMut,
    ranges: &[[usize; 4]],
    len: usize,
    keep_alive: bool,
    trailers: bool,
) -> Next {
    let head = buf.split_to(len).freeze();
    let Some(&[m0, m1, p0, p1]) = ranges.last() else {
        return Next::Bad("no request line");
    };
    let Ok(method) = Method::from_bytes(&head[m0..m1]) else {
        return Next::Bad("bad method");
    };
    let Ok(uri) = Uri::from_maybe_shared(head.slice(p0..p1)) else {
        return Next::Bad("bad request target");
    };
    let headers = &ranges[..ranges.len() - 1];
    let mut map = HeaderMap::with_capacity(headers.len() + 7);
    for &[n0, n1, v0, v1] in headers {
        let Ok(name) = HeaderName::from_bytes(&head[n0..n1]) else {
            return Next::Bad("bad header name");
        };
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(v0..v1)) else {
            return Next::Bad("bad header value");
        };
        map.append(name, value);
    }
    let mut request = Request::new(RequestBody::Empty);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    Next::Request(Head {
        request,
        keep_alive,
        trailers,
    })
}

/// For `fuzz`: the head parser on `data` as the start of a connection,
/// every complete head in turn, and the request phase 1 then reads: its
/// host, as routing normalizes it. How many requests this path took.
pub(crate) fn fuzz_heads(data: &[u8]) -> usize {
    let mut buf = BytesMut::from(data);
    let mut ranges = Vec::new();
    let mut requests = 0;
    loop {
        let Parsed::Complete(len, keep_alive, trailers) = parse_head(&buf, &mut ranges) else {
            return requests;
        };
        let Next::Request(head) = build_request(&mut buf, &ranges, len, keep_alive, trailers)
        else {
            return requests;
        };
        requests += 1;
        let req = &head.request;
        if let Ok(Some(host)) =
            crate::request::headers::request_host(req.version(), req.headers(), req.uri())
            && let Ok(host) = host.to_str()
        {
            let _ = crate::routing::router::normalize_request_host(host);
        }
    }
}

enum Parsed {
    /// Head length, keep-alive, `TE: trailers`.
    Complete(usize, bool, bool),
    Partial,
    Hyper,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Writes the status line and headers into `out`; the body's framing, and
/// whether the connection stays open (not if the answer says
/// `Connection: close`, as the proxy's own answers may).
fn encode_head(
    out: &mut Vec<u8>,
    parts: &hyper::http::response::Parts,
    answer: &Answer,
    body: &ResponseBody,
) -> (Framing, bool) {
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length = None;
    let mut date = false;
    let mut close = false;
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING {
            // The framing is this side's to choose.
            continue;
        }
        if name == header::CONTENT_LENGTH {
            length = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        } else if name == header::DATE {
            date = true;
        } else if name == header::CONNECTION {
            close |= lists_token(value.as_bytes(), b"close");
        }
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let no_body = answer.is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::None
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        let _ = write!(out, "content-length: {n}\r\n");
        Framing::Length(n)
    } else {
        push_header(out, b"transfer-encoding", b"chunked");
        Framing::Chunked
    };
    if !date {
        DATE.with(|d| push_header(out, b"date", &d.now()));
    }
    let keep_alive = answer.keep_alive && !close;
    if !keep_alive && !close {
        push_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn far_future() -> Instant {
    // About 30 years, as tokio's own "never".
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

/// The `Date` header value, formatted once a second per thread.
struct DateCache {
    at: std::cell::Cell<u64>,
    value: std::cell::RefCell<Bytes>,
}

thread_local! {
    static DATE: DateCache = const {
        DateCache {
            at: std::cell::Cell::new(u64::MAX),
            value: std::cell::RefCell::new(Bytes::new()),
        }
    };
}

impl DateCache {
    fn now(&self) -> Bytes {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.at.get() != secs {
            self.at.set(secs);
            *self.value.borrow_mut() = Bytes::from(httpdate::fmt_http_date(now));
        }
        self.value.borrow().clone()
    }
}

// === impl Prefixed ===

/// A connection with bytes already read from it put back in front.
pub(crate) struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
