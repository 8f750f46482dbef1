//! Upstream HTTP/1.1 for requests without a body: the request's own task
//! writes the request head and parses the answer, and the response body
//! reads the backend connection while the client connection polls it.
//!
//! Why by hand: with hyper-util's pooled client every request crossed two
//! HTTP/1 state machines and a channel: the request task handed the request
//! to the backend connection's own task, which wrote it, parsed the answer
//! and sent it back. The profile of `bench/proxy.sh` put about 40 % of the
//! proxy's user-space time there (see BENCHMARKS.md). Here a request costs
//! one write and usually one read, in the task that already runs.
//!
//! Scope: requests with no body and no upgrade, on a worker thread (the
//! pool is per worker, like the connections it holds). Everything else
//! (request bodies, WebSocket upgrades, the few requests served off the
//! workers) takes hyper's client in `forward`.
//!
//! - Parsing: `httparse` (hyper's own parser) for the status line and
//!   headers; the framing rules of RFC 9112 section 6.3 for the body:
//!   no body for HEAD, 1xx, 204 and 304; `Transfer-Encoding` ending in
//!   `chunked` → chunked (decoded here, trailers passed on as a trailers
//!   frame); other `Transfer-Encoding` → until close; `Content-Length`
//!   (every copy must agree) → that many bytes; neither → until close.
//!   Interim 1xx answers (100 Continue, 103 Early Hints) are skipped.
//! - Reuse: a connection goes back to the worker's pool only after a
//!   complete answer with nothing after it, when neither side said
//!   `Connection: close`. A body dropped early (client gone) closes it.
//! - Stale connections: a pooled connection is checked without a system
//!   call (the runtime already knows if the backend closed it); one that
//!   still fails before any byte of the answer came back is retried once
//!   on a new connection, for idempotent methods only.
//! - Idle connections are closed after [`IDLE_TIMEOUT`] (a sweep per
//!   worker), and at most `pool_max_idle_per_host` stay per instance (per
//!   worker, and apart from hyper's pool for requests with a body).
//! - A request that could not be written at all is sent again on a new
//!   connection whatever its method: the backend got nothing to act on.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Response, StatusCode, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::request::headers::tokens;

/// How long an unused backend connection stays in the pool.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response head (status line and headers) accepted from a
/// backend: hyper's client default, so that a request gets the same limit
/// whichever client carries it.
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Most headers in one response head (hyper's client default too).
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// What one read asks the kernel for at least.
const READ_SIZE: usize = 16 << 10;

// === errors ===

/// Why an exchange with a backend failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// No connection could be made: another instance may take the request.
    #[error("tcp connect error")]
    Connect(#[source] io::Error),
    #[error("tcp connect error: timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The request could not be written: the backend got nothing usable
    /// (at most an incomplete head), so any method may be sent again.
    #[error("the backend connection failed while sending the request")]
    Unsent(#[source] io::Error),
    /// The connection broke before any byte of the answer came back.
    #[error("the backend closed the connection before answering")]
    Closed(#[source] io::Error),
    /// The backend's answer is not valid HTTP/1.x.
    #[error("invalid answer from the backend")]
    Protocol(#[from] Invalid),
}

impl Error {
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_) | Error::ConnectTimeout(_))
    }
}

/// What is wrong with a backend's answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Invalid {
    #[error("the response head does not parse")]
    Head(#[source] httparse::Error),
    #[error("invalid header name `{0}`")]
    HeaderName(String),
    #[error("the response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the connection closed inside the response head")]
    ClosedInHead,
    #[error("reading the response head")]
    ReadHead(#[source] io::Error),
    #[error("101 Switching Protocols to a request without an upgrade")]
    Switching,
    #[error("invalid status {0}")]
    Status(u16),
    #[error("invalid value of header `{0}`")]
    HeaderValue(HeaderName),
    #[error("an HTTP/1.0 answer with Transfer-Encoding")]
    Http10TransferEncoding,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("conflicting Content-Length values")]
    ConflictingLengths,
    #[error("empty Content-Length")]
    EmptyContentLength,
    #[error("chunk-size line too long")]
    ChunkLineTooLong,
    #[error("invalid chunk size `{0}`")]
    ChunkSize(String),
    #[error("missing CRLF after chunk data")]
    ChunkEnd,
    #[error("trailer section larger than {MAX_HEAD} bytes")]
    TrailersTooLarge,
    #[error("invalid trailer section")]
    Trailers(#[source] httparse::Error),
}

// === the pool ===

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One worker's idle backend connections, by instance address.
struct Pool {
    /// Keys from the routing table: `fasthash`, not SipHash.
    idle: HashMap<SocketAddr, Vec<Idle>, crate::fasthash::Fast>,
    max_per_host: usize,
}

thread_local! {
    static POOL: RefCell<Option<Pool>> = const { RefCell::new(None) };
}

/// Gives this worker thread its pool, and starts the sweep that closes
/// connections idle for longer than [`IDLE_TIMEOUT`] (in the worker's
/// runtime, which must be running).
pub(crate) fn install(max_per_host: usize) {
    POOL.with(|p| {
        *p.borrow_mut() = Some(Pool {
            idle: HashMap::default(),
            max_per_host,
        })
    });
    tokio::spawn(async {
        let mut tick = tokio::time::interval(IDLE_TIMEOUT / 4);
        loop {
            tick.tick().await;
            sweep();
        }
    });
}

/// True on a thread with a pool (a worker).
pub(crate) fn available() -> bool {
    POOL.with(|p| p.borrow().is_some())
}

/// An idle connection to `addr` that is still open, if the pool has one.
fn take(addr: SocketAddr) -> Option<Conn> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.as_mut()?.idle.get_mut(&addr)?;
        let now = Instant::now();
        // The most recently used first: the likeliest to be open.
        while let Some(Idle { conn, since }) = list.pop() {
            if now.duration_since(since) < IDLE_TIMEOUT && conn.looks_open() {
                return Some(conn);
            }
        }
        None
    })
}

/// Returns a connection after a complete exchange (off a worker: closes it).
fn put(conn: Conn) {
    POOL.with(|p| {
        if let Some(p) = p.borrow_mut().as_mut() {
            let max = p.max_per_host;
            let list = p.idle.entry(conn.addr).or_default();
            if list.len() < max {
                list.push(Idle {
                    conn,
                    since: Instant::now(),
                });
            }
        }
    });
}

fn sweep() {
    POOL.with(|p| {
        if let Some(p) = p.borrow_mut().as_mut() {
            let now = Instant::now();
            for list in p.idle.values_mut() {
                list.retain(|i| now.duration_since(i.since) < IDLE_TIMEOUT && i.conn.looks_open());
            }
            p.idle.retain(|_, list| !list.is_empty());
        }
    });
}

// === a connection ===

/// A backend connection and what was read from it but not used yet.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    addr: SocketAddr,
}

impl Conn {
    async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, Error> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Error::Connect(e)),
            Err(_) => return Err(Error::ConnectTimeout(timeout)),
        };
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            addr,
        })
    }

    /// False when the backend closed the idle connection (or sent bytes
    /// nobody asked for). No system call unless the runtime saw the socket
    /// become readable.
    fn looks_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more into `buf`; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

// === one exchange ===

/// The parts of a request the backend gets.
pub(crate) struct Head<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a PathAndQuery,
    /// Already rewritten for the backend (hop-by-hop headers gone).
    pub(crate) headers: &'a HeaderMap,
    /// The instance's `host:port`: the Host of a request that had none.
    pub(crate) authority: &'a str,
}

/// Sends a request without a body to `addr` and reads the answer's head;
/// the body streams from the connection as the returned body is polled.
/// A pooled connection that turns out closed is retried once on a new
/// connection when `retry_stale` (idempotent methods).
pub(crate) async fn send(
    addr: SocketAddr,
    connect_timeout: Duration,
    head: Head<'_>,
    retry_stale: bool,
) -> Result<Response<Body>, Error> {
    let mut wire = Vec::with_capacity(512);
    encode(&head, &mut wire);
    let head_only = *head.method == Method::HEAD;
    if let Some(conn) = take(addr) {
        match exchange(conn, &wire, head_only).await {
            Err(Error::Closed(e)) if !retry_stale => return Err(Error::Closed(e)),
            Err(Error::Closed(e) | Error::Unsent(e)) => {
                tracing::debug!(%addr, error = %e, "pooled backend connection was closed; retrying on a new one");
            }
            other => return other,
        }
    }
    // Boxed: most requests find a pooled connection, and the connect state
    // would make every request's future larger.
    let conn = Box::pin(Conn::connect(addr, connect_timeout)).await?;
    exchange(conn, &wire, head_only).await
}

/// The request head in HTTP/1.1 wire form.
fn encode(head: &Head<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host = false;
    let mut length = false;
    for (name, value) in head.headers {
        if name == header::COOKIE {
            continue; // joined below
        }
        host |= name == header::HOST;
        length |= name == header::CONTENT_LENGTH;
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    // HTTP/2 clients may split cookies over several fields; HTTP/1.1
    // wants one (RFC 9113 section 8.2.3).
    let mut cookies = head.headers.get_all(header::COOKIE).iter();
    if let Some(first) = cookies.next() {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(first.as_bytes());
        for more in cookies {
            out.extend_from_slice(b"; ");
            out.extend_from_slice(more.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    if !host {
        line(out, b"host", head.authority.as_bytes());
    }
    // Servers may refuse a body-less POST without a length (411).
    if !length && matches!(*head.method, Method::POST | Method::PUT | Method::PATCH) {
        line(out, b"content-length", b"0");
    }
    out.extend_from_slice(b"\r\n");
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head: its length in `buf` and what it says.
struct Parsed {
    len: usize,
    status: u16,
    http10: bool,
    /// Names and the value ranges in `buf`.
    fields: Vec<(HeaderName, usize, usize)>,
    /// Seen while parsing, so framing needs no lookups in the map.
    transfer_encoding: bool,
    content_length: bool,
    connection_close: bool,
    connection_keep_alive: bool,
}

fn parse_head(buf: &[u8]) -> Result<Option<Parsed>, Error> {
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut r,
        buf,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Invalid::Head(e).into()),
    };
    let base = buf.as_ptr().addr();
    let mut fields = Vec::with_capacity(r.headers.len());
    let (mut te, mut cl, mut close, mut keep_alive) = (false, false, false, false);
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Invalid::HeaderName(h.name.to_string()))?;
        if name == header::TRANSFER_ENCODING {
            te = true;
        } else if name == header::CONTENT_LENGTH {
            cl = true;
        } else if name == header::CONNECTION {
            close |= crate::request::headers::lists_token(h.value, b"close");
            keep_alive |= crate::request::headers::lists_token(h.value, b"keep-alive");
            // Hop-by-hop: left out of the map unless it names other headers
            // (which the hop-by-hop pass then removes), so the common
            // `Connection: keep-alive` costs no removal later.
            if crate::request::headers::only_connection_options(h.value) {
                continue;
            }
        } else if name.as_str() == "keep-alive" {
            continue;
        }
        let start = h.value.as_ptr().addr() - base;
        fields.push((name, start, start + h.value.len()));
    }
    Ok(Some(Parsed {
        len,
        status: r.code.unwrap_or(0),
        http10: r.version == Some(0),
        fields,
        transfer_encoding: te,
        content_length: cl,
        connection_close: close,
        connection_keep_alive: keep_alive,
    }))
}

async fn exchange(mut conn: Conn, wire: &[u8], head_only: bool) -> Result<Response<Body>, Error> {
    if let Err(e) = conn.stream.write_all(wire).await {
        return Err(Error::Unsent(e));
    }
    let mut answered = !conn.buf.is_empty();
    let parsed = loop {
        if !conn.buf.is_empty()
            && let Some(p) = final_head(&mut conn.buf)?
        {
            break p;
        }
        match conn.fill().await {
            Ok(0) if !answered => {
                return Err(Error::Closed(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => return Err(Invalid::ClosedInHead.into()),
            Ok(_) => answered = true,
            Err(e) if !answered => return Err(Error::Closed(e)),
            Err(e) => return Err(Invalid::ReadHead(e).into()),
        }
    };
    let AnswerHead {
        status,
        headers,
        framing,
        keep_alive,
    } = answer_head(&mut conn.buf, parsed, head_only)?;
    let body = match framing {
        Framing::Len(n) if n <= conn.buf.len() as u64 => {
            // The whole body came with the head (the common case).
            let data = conn.buf.split_to(n as usize).freeze();
            if keep_alive && conn.buf.is_empty() {
                put(conn);
            }
            Body(Kind::Full((!data.is_empty()).then_some(data)))
        }
        framing => Body(Kind::Stream(Stream {
            conn: Some(conn),
            framing,
            keep_alive,
        })),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.version_mut() = Version::HTTP_11;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// The final (not interim) answer head at the front of `buf`, once it is
/// complete: interim answers (100 Continue, 103 Early Hints) before it are
/// taken out of `buf` and skipped.
fn final_head(buf: &mut BytesMut) -> Result<Option<Parsed>, Error> {
    loop {
        match parse_head(buf)? {
            Some(p) if (100..200).contains(&p.status) && p.status != 101 => {
                let _ = buf.split_to(p.len);
            }
            Some(p) if p.len > MAX_HEAD => return Err(Invalid::HeadTooLarge.into()),
            Some(p) => return Ok(Some(p)),
            None if buf.len() > MAX_HEAD => return Err(Invalid::HeadTooLarge.into()),
            None => return Ok(None),
        }
    }
}

/// What an answer's head says.
struct AnswerHead {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    /// The connection may carry another request after this answer.
    keep_alive: bool,
}

/// Takes the final answer head `parsed` out of `buf` and reads its status,
/// headers and body framing (RFC 9112 section 6.3).
fn answer_head(buf: &mut BytesMut, parsed: Parsed, head_only: bool) -> Result<AnswerHead, Error> {
    if parsed.status == 101 {
        return Err(Invalid::Switching.into());
    }
    let status = StatusCode::from_u16(parsed.status).map_err(|_| Invalid::Status(parsed.status))?;
    let raw = buf.split_to(parsed.len).freeze();
    // Room for what the proxy adds to an answer (request id, security
    // headers, a sticky cookie) without growing the map.
    let mut headers = HeaderMap::with_capacity(parsed.fields.len() + 8);
    let (te, cl) = (parsed.transfer_encoding, parsed.content_length);
    for (name, start, end) in parsed.fields {
        let value = HeaderValue::from_maybe_shared(raw.slice(start..end))
            .map_err(|_| Invalid::HeaderValue(name.clone()))?;
        headers.append(name, value);
    }

    let mut keep_alive = if parsed.http10 {
        parsed.connection_keep_alive
    } else {
        !parsed.connection_close
    };
    let framing =
        if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Len(0)
        } else if te && parsed.http10 {
            // RFC 9112 section 6.1: the framing is faulty (hyper refuses it too).
            return Err(Invalid::Http10TransferEncoding.into());
        } else if te {
            if cl {
                keep_alive = false; // both: Transfer-Encoding wins, then close
            }
            if last_coding_is_chunked(&headers) {
                Framing::Chunked(Chunked::default())
            } else {
                keep_alive = false;
                Framing::Close
            }
        } else if cl {
            Framing::Len(content_length(&headers)?)
        } else {
            keep_alive = false;
            Framing::Close
        };
    Ok(AnswerHead {
        status,
        headers,
        framing,
        keep_alive,
    })
}

fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    tokens(headers, header::TRANSFER_ENCODING)
        .last()
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
}

/// Every `Content-Length` (and every item of a list) must be the same number.
fn content_length(headers: &HeaderMap) -> Result<u64, Error> {
    let mut found = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for item in v.as_bytes().split(|b| *b == b',') {
            let item = item.trim_ascii();
            // `let else`, not `ok_or`: an `Invalid` made eagerly is dropped
            // on every valid header, a call on each answer's path.
            let Some(n) = std::str::from_utf8(item)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                return Err(Invalid::ContentLength.into());
            };
            if found.is_some_and(|f| f != n) {
                return Err(Invalid::ConflictingLengths.into());
            }
            found = Some(n);
        }
    }
    match found {
        Some(n) => Ok(n),
        None => Err(Invalid::EmptyContentLength.into()),
    }
}

// === the response body ===

/// A backend's response body, read as the client takes it.
pub(crate) struct Body(Kind);

enum Kind {
    /// Read with the head.
    Full(Option<Bytes>),
    Stream(Stream),
}

struct Stream {
    /// `None` once the body ended (the connection went back to the pool or
    /// was closed).
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
}

enum Framing {
    /// Bytes still to come.
    Len(u64),
    Chunked(Chunked),
    /// Until the backend closes the connection.
    Close,
}

impl Stream {
    /// The body is complete: the connection may serve another request.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            put(conn);
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.framing {
                Framing::Len(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Len(rest) if !conn.buf.is_empty() => {
                    let n = (*rest).min(conn.buf.len() as u64);
                    let data = conn.buf.split_to(n as usize).freeze();
                    *rest -= n;
                    if *rest == 0 {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close if !conn.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                }
                Framing::Chunked(c) => match c.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(t)) => {
                        self.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::End) => {
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::More) => {}
                    Err(why) => {
                        self.conn = None;
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            why,
                        ))));
                    }
                },
                Framing::Len(_) | Framing::Close => {}
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if matches!(self.framing, Framing::Close) => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection before the end of the body",
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().0 {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(s) => s.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(b) => b.is_none(),
            Kind::Stream(s) => s.conn.is_none() || matches!(s.framing, Framing::Len(0)),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(Stream {
                framing: Framing::Len(n),
                ..
            }) => SizeHint::with_exact(*n),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

// === chunked transfer coding (RFC 9112 section 7.1) ===

#[derive(Default)]
struct Chunked {
    state: ChunkState,
}

#[derive(Default, Debug, PartialEq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Bytes of the current chunk still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
    Done,
}

#[derive(Debug)]
enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// `buf` holds no complete next item: read more.
    More,
}

impl Chunked {
    /// Takes the next item from the front of `buf`.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Invalid> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let window = &buf[..buf.len().min(MAX_CHUNK_LINE)];
                    let Some(nl) = window.iter().position(|b| *b == b'\n') else {
                        if buf.len() >= MAX_CHUNK_LINE {
                            return Err(Invalid::ChunkLineTooLong);
                        }
                        return Ok(Decoded::More);
                    };
                    let line = &buf[..nl];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let digits = line
                        .split(|b| *b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii();
                    if digits.is_empty()
                        || digits.len() > 15
                        || !digits.iter().all(u8::is_ascii_hexdigit)
                    {
                        return Err(Invalid::ChunkSize(
                            String::from_utf8_lossy(digits).into_owned(),
                        ));
                    }
                    let size = digits.iter().fold(0u64, |n, d| {
                        n * 16 + u64::from((*d as char).to_digit(16).unwrap_or(0))
                    });
                    let _ = buf.split_to(nl + 1);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(rest) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let n = rest.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    self.state = if n == rest {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(rest - n)
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.starts_with(b"\r\n") {
                        let _ = buf.split_to(2);
                    } else if buf.starts_with(b"\n") {
                        let _ = buf.split_to(1);
                    } else if buf.is_empty() || buf[..] == b"\r"[..] {
                        return Ok(Decoded::More);
                    } else {
                        return Err(Invalid::ChunkEnd);
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    for end in [&b"\r\n"[..], b"\n"] {
                        if buf.starts_with(end) {
                            let _ = buf.split_to(end.len());
                            self.state = ChunkState::Done;
                            return Ok(Decoded::End);
                        }
                    }
                    if buf.is_empty() || buf[..] == b"\r"[..] {
                        return Ok(Decoded::More);
                    }
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    return match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut map = HeaderMap::with_capacity(fields.len());
                            for f in fields {
                                let name = HeaderName::from_bytes(f.name.as_bytes());
                                let value = HeaderValue::from_bytes(f.value);
                                if let (Ok(name), Ok(value)) = (name, value) {
                                    map.append(name, value);
                                }
                            }
                            let _ = buf.split_to(len);
                            self.state = ChunkState::Done;
                            Ok(Decoded::Trailers(map))
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                            Err(Invalid::TrailersTooLarge)
                        }
                        Ok(httparse::Status::Partial) => Ok(Decoded::More),
                        Err(e) => Err(Invalid::Trailers(e)),
                    };
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

// === for `fuzz` ===

/// The answer parser on `data` as what a backend sent: the final head, its
/// framing, then the body it frames. The status and the body bytes read,
/// or `None` for an answer refused before its body.
pub(crate) fn fuzz_answer(data: &[u8], head_only: bool) -> Option<(u16, usize)> {
    let mut buf = BytesMut::from(data);
    let parsed = final_head(&mut buf).ok()??;
    let head = answer_head(&mut buf, parsed, head_only).ok()?;
    let body = match head.framing {
        Framing::Len(n) => buf
            .split_to(usize::try_from(n).unwrap_or(usize::MAX).min(buf.len()))
            .len(),
        Framing::Chunked(mut c) => {
            let mut n = 0;
            while let Ok(d @ (Decoded::Data(_) | Decoded::Trailers(_))) = c.decode(&mut buf) {
                if let Decoded::Data(d) = d {
                    n += d.len();
                }
            }
            n
        }
        Framing::Close => buf.len(),
    };
    Some((head.status.as_u16(), body))
}

/// The chunked decoder on `data` fed `step` bytes at a time: the data
/// bytes of a complete body; `None` for a broken or incomplete one.
pub(crate) fn fuzz_chunked(data: &[u8], step: usize) -> Option<usize> {
    let mut c = Chunked::default();
    let mut buf = BytesMut::new();
    let mut rest = data;
    let mut n = 0;
    loop {
        match c.decode(&mut buf).ok()? {
            Decoded::Data(d) => n += d.len(),
            Decoded::Trailers(_) => {}
            Decoded::End => return Some(n),
            Decoded::More if rest.is_empty() => return None,
            Decoded::More => {
                let (now, later) = rest.split_at(step.max(1).min(rest.len()));
                buf.extend_from_slice(now);
                rest = later;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes; the data and trailers.
    fn decode_in_steps(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), String> {
        let mut c = Chunked::default();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match c.decode(&mut buf).map_err(|e| e.to_string())? {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((data, trailers)),
                Decoded::More => {
                    if fed == wire.len() {
                        return Err("ran out of input".into());
                    }
                    let n = step.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5\r\nhello\r\n1;ext=\"x\"\r\n \r\nA\r\n0123456789\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, trailers) = decode_in_steps(wire, step).unwrap();
            assert_eq!(data, b"hello 0123456789", "step {step}");
            assert!(trailers.is_none());
        }
    }

    #[test]
    fn trailers_are_passed_on() {
        let wire = b"3\r\nabc\r\n0\r\nx-checksum: 42\r\nx-more: yes\r\n\r\n";
        for step in [1, 5, wire.len()] {
            let (data, trailers) = decode_in_steps(wire, step).unwrap();
            assert_eq!(data, b"abc");
            let t = trailers.expect("trailers");
            assert_eq!(t["x-checksum"], "42");
            assert_eq!(t["x-more"], "yes");
        }
    }

    #[test]
    fn bad_chunked_input_is_an_error_not_a_panic() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"0\r\nbad header line without colon\r\n\r\n",
        ] {
            assert!(
                decode_in_steps(bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode_in_steps(&long, 4096).is_err());
    }

    #[test]
    fn requests_are_encoded_with_one_cookie_field_and_a_host() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        headers.append("x-two", HeaderValue::from_static("1"));
        headers.append("x-two", HeaderValue::from_static("2"));
        let path = PathAndQuery::from_static("/p?q=1");
        let mut out = Vec::new();
        encode(
            &Head {
                method: &Method::POST,
                path: &path,
                headers: &headers,
                authority: "127.0.0.1:9",
            },
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /p?q=1 HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("\r\ncookie: a=1; b=2\r\n"), "{text}");
        assert!(text.contains("\r\nx-two: 1\r\nx-two: 2\r\n"), "{text}");
        assert!(text.contains("\r\nhost: 127.0.0.1:9\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 0\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn content_lengths_must_agree_and_chunked_must_come_last() {
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("12, 12"));
        assert_eq!(content_length(&h).unwrap(), 12);
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("13"));
        assert!(content_length(&h).is_err());
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("-1"));
        assert!(content_length(&h).is_err());
        let mut h = HeaderMap::new();
        h.append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert!(last_coding_is_chunked(&h));
        h.append(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        assert!(!last_coding_is_chunked(&h));
    }
}
