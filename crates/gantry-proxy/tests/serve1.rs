//! The proxy's own HTTP/1.1 server side (`serve1`), spoken to byte by byte:
//! pipelining, keep-alive and `Connection: close`, answers framed by
//! length or chunked and flushed as they stream, HEAD, a request with a
//! body (hyper takes the connection over mid-way), a head that parses but
//! names no valid URI, graceful shutdown of idle and busy connections, an
//! answer body that stalls past the idle timeout, and connections spread
//! evenly over the workers (`spread`).

mod support;

use std::collections::HashMap;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    /// The body came chunked.
    chunked: bool,
}

/// Reads raw bytes off a client connection; `buf` keeps what was read
/// past the current answer.
struct Wire {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    async fn connect(p: &TestProxy) -> Wire {
        Wire {
            s: TcpStream::connect(p.addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// More bytes; false at EOF. Fails the test if the proxy sends
    /// nothing and keeps the connection open past [`EVENTUALLY`].
    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let read = within("bytes from the proxy", EVENTUALLY, self.s.read(&mut chunk));
        match read.await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).to_string();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.more().await, "EOF inside a line: {:?}", self.buf);
        }
    }

    async fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.more().await, "EOF inside a body");
        }
        self.buf.drain(..n).collect()
    }

    /// The head of the next answer.
    async fn head(&mut self) -> (u16, HashMap<String, String>) {
        let status_line = self.line().await;
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = HashMap::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return (status, headers);
            }
            let (k, v) = line.split_once(':').unwrap();
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }

    /// One chunk of a chunked body: its data (empty for the last) and, for
    /// the last, the trailer lines.
    async fn chunk(&mut self) -> (Vec<u8>, Vec<String>) {
        let size = self.line().await;
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            let mut trailers = Vec::new();
            loop {
                let line = self.line().await;
                if line.is_empty() {
                    return (Vec::new(), trailers);
                }
                trailers.push(line);
            }
        }
        let data = self.exact(size).await;
        assert_eq!(self.exact(2).await, b"\r\n");
        (data, Vec::new())
    }

    /// The next whole answer; `head_request` for an answer to HEAD.
    async fn answer(&mut self, head_request: bool) -> Answer {
        let (status, headers) = self.head().await;
        let mut body = Vec::new();
        let chunked = headers.get("transfer-encoding").map(String::as_str) == Some("chunked");
        if head_request || status == 204 || status == 304 {
        } else if chunked {
            loop {
                let (data, _) = self.chunk().await;
                if data.is_empty() {
                    break;
                }
                body.extend(data);
            }
        } else {
            let n: usize = headers["content-length"].parse().unwrap();
            body = self.exact(n).await;
        }
        Answer {
            status,
            headers,
            body,
            chunked,
        }
    }

    /// True once the proxy closed the connection (nothing more to read).
    async fn closed(&mut self) -> bool {
        while self.more().await {}
        self.buf.is_empty()
    }
}

fn json(a: &Answer) -> serde_json::Value {
    serde_json::from_slice(&a.body).unwrap()
}

async fn proxy(dir: &std::path::Path, backend: &Backend) -> TestProxy {
    proxy_with(config(dir), backend).await
}

async fn proxy_with(cfg: gantry_proxy::ProxyConfig, backend: &Backend) -> TestProxy {
    let p = TestProxy::start_with(cfg).await;
    p.admin
        .set_table(
            &table()
                .route(route("app/web").host("app.test").to(backend.addr))
                .build(),
        )
        .await
        .unwrap();
    p
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("web").await;
    let p = proxy(dir.path(), &b).await;
    let mut w = Wire::connect(&p).await;
    // Three requests in one write.
    w.send(
        b"GET /one HTTP/1.1\r\nhost: app.test\r\n\r\n\
          GET /two?x=1 HTTP/1.1\r\nhost: app.test\r\nx-a: 1\r\nx-a: 2\r\n\r\n\
          GET /three HTTP/1.1\r\nhost: app.test\r\n\r\n",
    )
    .await;
    for (path, seen_a) in [("/one", None), ("/two", Some("1, 2")), ("/three", None)] {
        let a = w.answer(false).await;
        assert_eq!(a.status, 200);
        assert!(!a.chunked);
        assert!(a.headers.contains_key("date"));
        let echo = json(&a);
        assert_eq!(echo["path"], path);
        assert_eq!(echo["headers"]["x-a"].as_str(), seen_a);
        assert!(echo["headers"]["x-request-id"].is_string());
        assert!(!a.headers.contains_key("connection"));
    }
    // Still open: a fourth request on the same connection.
    w.send(b"GET /four HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await;
    assert_eq!(json(&w.answer(false).await)["path"], "/four");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn connection_close_ends_the_connection_after_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("web").await;
    let p = proxy(dir.path(), &b).await;
    let mut w = Wire::connect(&p).await;
    w.send(b"GET / HTTP/1.1\r\nhost: app.test\r\nconnection: keep-alive, close\r\n\r\n")
        .await;
    let a = w.answer(false).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["connection"], "close");
    assert!(w.closed().await);
    p.stop().await.unwrap();
}

#[tokio::test]
async fn head_answers_have_no_body_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("web").await;
    let p = proxy(dir.path(), &b).await;
    let mut w = Wire::connect(&p).await;
    w.send(b"HEAD /h HTTP/1.1\r\nhost: app.test\r\n\r\nGET /g HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await;
    let head = w.answer(true).await;
    assert_eq!(head.status, 200);
    // The next bytes are the GET's answer, not a body of the HEAD's.
    let get = w.answer(false).await;
    assert_eq!(json(&get)["path"], "/g");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn a_streamed_answer_is_chunked_and_each_part_sent_as_it_comes() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("web").await;
    let p = proxy(dir.path(), &b).await;
    let mut w = Wire::connect(&p).await;
    w.send(b"GET /stream HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await;
    let (status, headers) = w.head().await;
    assert_eq!(status, 200);
    assert_eq!(headers["transfer-encoding"], "chunked");
    assert!(!headers.contains_key("content-length"));
    // The first part arrives while the backend still holds the second.
    assert_eq!(w.chunk().await.0, b"first");
    b.release();
    assert_eq!(w.chunk().await.0, b"second");
    assert_eq!(w.chunk().await, (Vec::new(), Vec::new()));
    // And the connection serves on.
    w.send(b"GET /after HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await;
    assert_eq!(json(&w.answer(false).await)["path"], "/after");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_with_a_body_is_served_on_the_same_connection_by_hyper() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("web").await;
    let p = proxy(dir.path(), &b).await;
    let mut w = Wire::connect(&p).await;
    w.send(b"GET /before HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await;
    assert_eq!(json(&w.answer(false).await)["path"], "/before");
    // A body, chunked, with a plain GET pipelined right behind it.
    w.send(
        b"POST /upload HTTP/1.1\r\nhost: app.test\r\ntransfer-encoding: chunked\r\n\r\n\
          3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n\
          GET /after HTTP/1.1\r\nhost: app.test\r\n\r\n",
    )
    .await;
    let up = w.answer(false).await;
    assert_eq!(up.status, 200);
    assert_eq!(up.body, b"7");
    assert_eq!(b.received.lock().unwrap().as_slice(), b"abcdefg");
    assert_eq!(json(&w.answer(false).await)["path"], "/after");
    // A declared length too.
    w.send(b"PUT /upload HTTP/1.1\r\nhost: app.test\r\ncontent-length: 2\r\n\r\nhi")
        .await;
    assert_eq!(w.answer(false).await.body, b"2");
    assert_eq!(b.received.lock().unwrap().as_slice(), b"hi");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn a_head_that_names_no_valid_uri_gets_400_and_the_connection_closes() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("web").await;
    let p = proxy(dir.path(), &b).await;
    let mut w = Wire::connect(&p).await;
    // Token characters throughout (so the head parses), but no URI.
    w.send(b"GET http://[oops/ HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await;
    let a = w.answer(false).await;
    assert_eq!(a.status, 400);
    assert!(w.closed().await);
    // And a request line that does not parse at all: hyper's 400.
    let mut w = Wire::connect(&p).await;
    w.send(b"GET /a b c HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await;
    assert_eq!(w.answer(false).await.status, 400);
    p.stop().await.unwrap();
}

/// `gantry_proxy_open_connections` per worker, from the admin metrics.
async fn open_per_worker(p: &TestProxy) -> Vec<u64> {
    let text = p.admin.metrics().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("gantry_proxy_open_connections{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// Waits (5 s at most) until the open connections add up to `total`.
async fn until_open(p: &TestProxy, total: u64) -> Vec<u64> {
    for _ in 0..500 {
        let open = open_per_worker(p).await;
        if open.iter().sum::<u64>() == total {
            return open;
        }
        // The poll interval (no event tells a connection was counted).
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!(
        "open connections never added up to {total}: {:?}",
        open_per_worker(p).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_evenly_over_the_workers_and_served_there() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("web").await;
    let p = proxy(dir.path(), &b).await;
    let workers = open_per_worker(&p).await.len();
    assert!(workers >= 1);
    // A burst of connections: whichever worker accepts them, each goes to
    // the one with the fewest open.
    let mut wires = Vec::new();
    for _ in 0..24 {
        wires.push(Wire::connect(&p).await);
    }
    let open = until_open(&p, 24).await;
    let (min, max) = (open.iter().min().unwrap(), open.iter().max().unwrap());
    // Two workers placing at the same instant may both pick the same one.
    assert!(max - min <= 2, "uneven: {open:?}");
    // Every connection, moved or not, is served (twice: keep-alive).
    for w in &mut wires {
        w.send(
            b"GET /a HTTP/1.1\r\nhost: app.test\r\n\r\nGET /b HTTP/1.1\r\nhost: app.test\r\n\r\n",
        )
        .await;
    }
    for w in &mut wires {
        assert_eq!(json(&w.answer(false).await)["path"], "/a");
        assert_eq!(json(&w.answer(false).await)["path"], "/b");
    }
    // Closed connections leave the counts.
    wires.truncate(10);
    until_open(&p, 10).await;
    drop(wires);
    until_open(&p, 0).await;
    p.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_lets_busy_ones_finish() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("web").await;
    let p = proxy(dir.path(), &b).await;
    let mut idle = Wire::connect(&p).await;
    idle.send(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n").await;
    assert_eq!(idle.answer(false).await.status, 200);
    let mut busy = Wire::connect(&p).await;
    busy.send(b"GET /hold HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await;
    b.wait_entered(1).await;

    let stopped = tokio::spawn(p.stop());
    // The idle connection is closed without an answer.
    assert!(idle.closed().await);
    // The busy one gets its answer, marked as the last, then EOF.
    b.release();
    let a = busy.answer(false).await;
    assert_eq!(a.status, 200);
    assert_eq!(json(&a)["path"], "/hold");
    assert_eq!(a.headers["connection"], "close");
    assert!(busy.closed().await);
    stopped.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_answer_body_that_stalls_past_the_idle_timeout_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("web").await;
    let mut cfg = config(dir.path());
    cfg.idle_timeout = std::time::Duration::from_millis(300);
    let p = proxy_with(cfg, &b).await;
    let mut w = Wire::connect(&p).await;
    w.send(b"GET /stream HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await;
    let (status, headers) = w.head().await;
    assert_eq!(status, 200);
    assert_eq!(headers["transfer-encoding"], "chunked");
    assert_eq!(w.chunk().await.0, b"first");
    // The backend holds the rest for good: the proxy closes the connection
    // without the last chunk (the client sees a cut answer, not a whole one).
    assert!(w.closed().await);
    b.release();
    p.stop().await.unwrap();
}
