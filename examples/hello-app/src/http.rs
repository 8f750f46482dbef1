//! A small, strict HTTP/1.1 request reader and response writer over a
//! blocking `TcpStream`.
//!
//! Supports keep-alive and pipelining (bytes after one request stay buffered
//! for the next), `Content-Length` and chunked request bodies,
//! `Expect: 100-continue`, and HEAD. Anything malformed is reported as a
//! [`ReadError::Bad`] so the caller can answer 400 and close.

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted (either framing).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// Most header fields accepted in one request.
const MAX_HEADERS: usize = 100;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the client wants the connection kept open afterwards.
    pub keep_alive: bool,
}

impl Request {
    /// First value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Value of a query parameter (no percent-decoding; not needed here).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection cleanly between requests.
    Closed,
    /// No bytes arrived within the read timeout; `partial` says whether a
    /// request had been started.
    Timeout { partial: bool },
    /// A socket error.
    Io(io::Error),
    /// Malformed or unacceptable request: answer with this status and close.
    Bad(u16, &'static str),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// The parts of a request head, before the body is read.
pub struct Head {
    pub method: String,
    pub path: String,
    pub query: String,
    pub minor: u8,
    pub headers: Vec<(String, String)>,
}

/// Body framing of a request.
enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// A buffered connection.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Reads more bytes into the buffer. Returns the number read (0 = EOF).
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Blocks until at least one byte of a next request is buffered.
    /// Leading empty lines (allowed between requests) are skipped.
    pub fn wait_for_request(&mut self) -> Result<(), ReadError> {
        loop {
            let skip = self
                .buf
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            self.buf.drain(..skip);
            if !self.buf.is_empty() {
                return Ok(());
            }
            match self.fill() {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => return Err(ReadError::Timeout { partial: false }),
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Reads more bytes while inside a request: EOF and timeouts are errors.
    fn fill_inside(&mut self) -> Result<(), ReadError> {
        match self.fill() {
            Ok(0) => Err(ReadError::Bad(400, "connection closed mid-request")),
            Ok(_) => Ok(()),
            Err(e) if is_timeout(&e) => Err(ReadError::Timeout { partial: true }),
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// Reads and parses a request head. Call after [`Conn::wait_for_request`].
    pub fn read_head(&mut self) -> Result<Head, ReadError> {
        let mut scanned = 0;
        let end = loop {
            if let Some(end) = find_head_end(&self.buf, scanned) {
                break end;
            }
            scanned = self.buf.len().saturating_sub(3);
            if self.buf.len() > MAX_HEAD {
                return Err(ReadError::Bad(431, "request head too large"));
            }
            self.fill_inside()?;
        };
        if end > MAX_HEAD {
            return Err(ReadError::Bad(431, "request head too large"));
        }
        let head = parse_head(&self.buf[..end]);
        self.buf.drain(..end);
        head
    }

    /// Reads the body a head announces, answering `100 Continue` first when
    /// the client asked for it.
    pub fn read_body(&mut self, head: Head) -> Result<Request, ReadError> {
        let framing = framing(&head.headers)?;
        let wants_continue = head.minor >= 1
            && header(&head.headers, "expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        let has_body = !matches!(framing, Framing::None | Framing::Length(0));
        if wants_continue && has_body && self.buf.is_empty() {
            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = match framing {
            Framing::None => Vec::new(),
            Framing::Length(n) => self.read_exact_body(n)?,
            Framing::Chunked => self.read_chunked()?,
        };
        let keep_alive = wants_keep_alive(head.minor, &head.headers);
        Ok(Request {
            method: head.method,
            path: head.path,
            query: head.query,
            minor: head.minor,
            headers: head.headers,
            body,
            keep_alive,
        })
    }

    fn read_exact_body(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < n {
            self.fill_inside()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads one line (without its line ending), at most `max` bytes long.
    fn read_line(&mut self, max: usize) -> Result<String, ReadError> {
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let pos = scanned + pos;
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return String::from_utf8(line).map_err(|_| ReadError::Bad(400, "non-UTF-8 line"));
            }
            scanned = self.buf.len();
            if scanned > max {
                return Err(ReadError::Bad(400, "line too long"));
            }
            self.fill_inside()?;
        }
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line(1024)?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            if size_hex.is_empty()
                || size_hex.len() > 8
                || !size_hex.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(ReadError::Bad(400, "bad chunk size"));
            }
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| ReadError::Bad(400, "bad chunk size"))?;
            if size == 0 {
                // Trailer fields until an empty line; ignored.
                let mut total = 0;
                loop {
                    let t = self.read_line(MAX_HEAD)?;
                    total += t.len();
                    if t.is_empty() {
                        return Ok(body);
                    }
                    if total > MAX_HEAD {
                        return Err(ReadError::Bad(431, "trailers too large"));
                    }
                }
            }
            if body.len() + size > MAX_BODY {
                return Err(ReadError::Bad(413, "request body too large"));
            }
            while self.buf.len() < size + 2 {
                self.fill_inside()?;
            }
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(ReadError::Bad(400, "chunk not followed by CRLF"));
            }
            self.buf.drain(..size + 2);
        }
    }
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Index just past the empty line ending a head, searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_head(raw: &[u8]) -> Result<Head, ReadError> {
    let text =
        std::str::from_utf8(raw).map_err(|_| ReadError::Bad(400, "non-UTF-8 request head"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(400, "malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(ReadError::Bad(400, "malformed method"));
    }
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.len() == 8 && v.starts_with("HTTP/") => {
            return Err(ReadError::Bad(505, "HTTP version not supported"));
        }
        _ => return Err(ReadError::Bad(400, "malformed HTTP version")),
    };
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ReadError::Bad(400, "malformed request target"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Bad(400, "malformed header line"));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(ReadError::Bad(400, "malformed header name"));
        }
        if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(ReadError::Bad(400, "control character in header value"));
        }
        if headers.len() >= MAX_HEADERS {
            return Err(ReadError::Bad(431, "too many header fields"));
        }
        headers.push((
            name.to_string(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    if minor == 1 && header(&headers, "host").is_none() {
        return Err(ReadError::Bad(400, "missing Host header"));
    }
    Ok(Head {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        minor,
        headers,
    })
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn wants_keep_alive(minor: u8, headers: &[(String, String)]) -> bool {
    if has_token(headers, "connection", "close") {
        false
    } else if minor == 0 {
        has_token(headers, "connection", "keep-alive")
    } else {
        true
    }
}

fn framing(headers: &[(String, String)]) -> Result<Framing, ReadError> {
    let te: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let mut length: Option<usize> = None;
    for (_, v) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        for item in v.split(',') {
            let item = item.trim();
            if item.is_empty() || item.len() > 18 || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ReadError::Bad(400, "invalid Content-Length"));
            }
            let n: usize = item
                .parse()
                .map_err(|_| ReadError::Bad(400, "invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ReadError::Bad(400, "conflicting Content-Length"));
            }
            length = Some(n);
        }
    }
    if !te.is_empty() {
        // Both framings at once is a request-smuggling vector: refuse it.
        if length.is_some() {
            return Err(ReadError::Bad(
                400,
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if !te.last().is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            return Err(ReadError::Bad(400, "unsupported Transfer-Encoding"));
        }
        return Ok(Framing::Chunked);
    }
    match length {
        Some(n) if n > MAX_BODY => Err(ReadError::Bad(413, "request body too large")),
        Some(n) => Ok(Framing::Length(n)),
        None => Ok(Framing::None),
    }
}

/// A response to write.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Self {
        let mut body: String = body.into();
        body.push('\n');
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    pub fn json(status: u16, body: impl Into<String>) -> Self {
        let mut body: String = body.into();
        body.push('\n');
        Response::new(status, "application/json", body)
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Serialises the response. `keep_alive` picks the `Connection` header;
    /// `head_only` leaves the body out (for HEAD) but keeps its length.
    pub fn to_bytes(&self, minor: u8, keep_alive: bool, head_only: bool, date: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            date,
            self.content_type,
            self.body.len()
        );
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if minor == 0 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Head, ReadError> {
        parse_head(raw.as_bytes())
    }

    #[test]
    fn parses_a_simple_head() {
        let h = head("GET /a/b?x=1&y HTTP/1.1\r\nHost: x\r\nX-Request-Id:  abc \r\n\r\n").unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/a/b");
        assert_eq!(h.query, "x=1&y");
        assert_eq!(h.minor, 1);
        assert_eq!(header(&h.headers, "x-request-id"), Some("abc"));
    }

    #[test]
    fn rejects_malformed_heads() {
        for raw in [
            "GET\r\n\r\n",
            "GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nbad name: v\r\n\r\n",
            "GET nopath HTTP/1.1\r\nHost: x\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / FTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(matches!(head(raw), Err(ReadError::Bad(400, _))), "{raw:?}");
        }
        assert!(matches!(
            head("GET / HTTP/2.0\r\n\r\n"),
            Err(ReadError::Bad(505, _))
        ));
    }

    #[test]
    fn keep_alive_rules() {
        let h = |v: &str| vec![("Connection".to_string(), v.to_string())];
        assert!(wants_keep_alive(1, &[]));
        assert!(!wants_keep_alive(1, &h("close")));
        assert!(!wants_keep_alive(1, &h("Upgrade, Close")));
        assert!(!wants_keep_alive(0, &[]));
        assert!(wants_keep_alive(0, &h("keep-alive")));
    }

    #[test]
    fn framing_rules() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert!(matches!(framing(&h(&[])), Ok(Framing::None)));
        assert!(matches!(
            framing(&h(&[("Content-Length", "12")])),
            Ok(Framing::Length(12))
        ));
        assert!(matches!(
            framing(&h(&[("Content-Length", "12, 12")])),
            Ok(Framing::Length(12))
        ));
        assert!(framing(&h(&[("Content-Length", "-1")])).is_err());
        assert!(framing(&h(&[("Content-Length", "1"), ("content-length", "2")])).is_err());
        assert!(matches!(
            framing(&h(&[("Transfer-Encoding", "chunked")])),
            Ok(Framing::Chunked)
        ));
        assert!(framing(&h(&[("Transfer-Encoding", "gzip")])).is_err());
        assert!(
            framing(&h(&[
                ("Transfer-Encoding", "chunked"),
                ("Content-Length", "3")
            ]))
            .is_err()
        );
        assert!(matches!(
            framing(&h(&[("Content-Length", "999999999999")])),
            Err(ReadError::Bad(413, _))
        ));
    }

    #[test]
    fn finds_head_end_with_either_line_ending() {
        assert_eq!(find_head_end(b"GET / HTTP/1.0\r\n\r\nrest", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.0\n\nrest", 0), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.0\r\nA: b\r\n", 0), None);
    }

    #[test]
    fn serialises_responses() {
        let r = Response::text(200, "hi").with_header("X-A", "b");
        let s = String::from_utf8(r.to_bytes(1, false, false, "D")).unwrap();
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\nDate: D\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 3\r\nConnection: close\r\nX-A: b\r\n\r\nhi\n"
        );
        let s = String::from_utf8(r.to_bytes(1, true, true, "D")).unwrap();
        assert!(s.ends_with("Content-Length: 3\r\nX-A: b\r\n\r\n"));
    }
}
