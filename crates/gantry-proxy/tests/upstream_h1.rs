//! The proxy's own upstream HTTP/1.1 path (requests without a body)
//! against a raw TCP backend that answers exactly the bytes each test
//! needs: chunked bodies with trailers, bodies delimited by close, HEAD,
//! 204, interim 100 answers, connection reuse, a pooled connection the
//! backend closed, broken answers.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// A backend that reads request heads and answers by path with fixed bytes.
struct RawBackend {
    addr: std::net::SocketAddr,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// Every request head received, in order.
    heads: Arc<Mutex<Vec<String>>>,
}

impl RawBackend {
    async fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (connections.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, h.clone()));
            }
        });
        RawBackend {
            addr,
            connections,
            heads,
        }
    }
}

async fn serve(mut stream: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let mut served_here = 0;
    loop {
        // One request head (these requests carry no body).
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        heads.lock().await.push(head.clone());
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or_default().to_string();
        let path = words.next().unwrap_or_default().to_string();
        served_here += 1;
        let big_head;
        let answer: &[u8] = match path.as_str() {
            "/chunked" => {
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n\
                  5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-checksum: 7\r\n\r\n"
            }
            "/until-close" => {
                let _ = stream
                    .write_all(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end")
                    .await;
                return;
            }
            "/len" if method == "HEAD" => b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
            "/no-content" => b"HTTP/1.1 204 No Content\r\n\r\n",
            "/interim" => {
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
                  HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            }
            "/close-header" => {
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye",
                    )
                    .await;
                return;
            }
            // The second request on a connection: closed without an answer,
            // as a backend does when its keep-alive timeout races the request.
            "/flaky" if served_here > 1 => return,
            "/garbage" => b"NOT HTTP AT ALL\r\n\r\n",
            // Both framings: Transfer-Encoding wins, the length is wrong.
            "/te-and-cl" => {
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n0\r\n\r\n"
            }
            "/http10-te" => {
                b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n0\r\n\r\n"
            }
            "/te-head" if method == "HEAD" => {
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            }
            "/not-modified" => b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
            "/big-head" => {
                big_head = format!(
                    "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
                    "a".repeat(500_000)
                );
                big_head.as_bytes()
            }
            // Answered, then the connection is closed while idle.
            "/then-close" => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                return;
            }
            "/short" => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly a part")
                    .await;
                return;
            }
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok",
        };
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

async fn proxy_to(backend: &RawBackend, dir: &std::path::Path) -> TestProxy {
    let p = TestProxy::start(dir).await;
    p.admin
        .set_table(&table().route(route("raw/prod").to(backend.addr)).build())
        .await
        .unwrap();
    p
}

async fn request(c: &TestClient, p: &TestProxy, method: Method, path: &str) -> Resp {
    send(c, p, method, "raw.test", path, &[], Bytes::new()).await
}

#[tokio::test]
async fn framings_of_the_answer_are_read_right() {
    let dir = tempfile::tempdir().unwrap();
    let b = RawBackend::start().await;
    let p = proxy_to(&b, dir.path()).await;
    let c = client();

    let r = request(&c, &p, Method::GET, "/chunked").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "hello world");

    let r = request(&c, &p, Method::GET, "/until-close").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "until the end");

    let r = request(&c, &p, Method::HEAD, "/len").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-length"], "1000");
    assert!(r.body.is_empty());

    let r = request(&c, &p, Method::GET, "/no-content").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());

    let r = request(&c, &p, Method::GET, "/interim").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "ok");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn trailers_of_a_chunked_answer_reach_an_h2_client() {
    let dir = tempfile::tempdir().unwrap();
    let b = RawBackend::start().await;
    let p = proxy_to(&b, dir.path()).await;
    let c = h2_client();
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = p.url("/chunked").parse().unwrap();
    req.headers_mut()
        .insert("host", "raw.test".parse().unwrap());
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-checksum"], "7");
    assert_eq!(collected.to_bytes(), "hello world");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn trailers_reach_an_http1_client_only_if_it_asks_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let b = RawBackend::start().await;
    let p = proxy_to(&b, dir.path()).await;
    for (te, trailer) in [("te: trailers\r\n", true), ("", false)] {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        let req =
            format!("GET /chunked HTTP/1.1\r\nhost: raw.test\r\n{te}connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer).to_string();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        let expected = if trailer {
            "5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 7\r\n\r\n"
        } else {
            "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        };
        assert_eq!(body, expected);
    }
    p.stop().await.unwrap();
}

#[tokio::test]
async fn backend_connections_are_reused_unless_closed() {
    let dir = tempfile::tempdir().unwrap();
    let b = RawBackend::start().await;
    let p = proxy_to(&b, dir.path()).await;
    let c = client();
    // One client connection, sequential requests: one backend connection
    // (a client connection stays on one worker, and so does its pool).
    for _ in 0..20 {
        let r = request(&c, &p, Method::GET, "/ok").await;
        assert_eq!(r.text(), "ok");
    }
    // HEAD (with a length or chunked), 204 and 304 have no body and leave
    // the connection reusable.
    request(&c, &p, Method::HEAD, "/len").await;
    let r = request(&c, &p, Method::HEAD, "/te-head").await;
    assert_eq!(r.status, StatusCode::OK);
    request(&c, &p, Method::GET, "/no-content").await;
    let r = request(&c, &p, Method::GET, "/not-modified").await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    assert_eq!(request(&c, &p, Method::GET, "/ok").await.text(), "ok");
    assert_eq!(b.connections.load(Ordering::SeqCst), 1);

    // `Connection: close` from the backend: the next request needs a new one.
    let r = request(&c, &p, Method::GET, "/close-header").await;
    assert_eq!(r.text(), "bye");
    let r = request(&c, &p, Method::GET, "/ok").await;
    assert_eq!(r.text(), "ok");
    assert_eq!(b.connections.load(Ordering::SeqCst), 2);
    p.stop().await.unwrap();
}

#[tokio::test]
async fn pooled_connections_the_backend_closed_are_noticed_or_retried() {
    let dir = tempfile::tempdir().unwrap();
    let b = RawBackend::start().await;
    let p = proxy_to(&b, dir.path()).await;
    let c = client();
    // The first /flaky of a connection is answered, the second is cut.
    let r = request(&c, &p, Method::GET, "/flaky").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = request(&c, &p, Method::GET, "/flaky").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(b.connections.load(Ordering::SeqCst), 2);
    let flaky = b
        .heads
        .lock()
        .await
        .iter()
        .filter(|h| h.starts_with("GET /flaky"))
        .count();
    assert_eq!(flaky, 3, "the cut request was sent again once");

    // A POST is not retried: it may have had an effect.
    let r = request(&c, &p, Method::POST, "/flaky").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.text().contains("broke off the request"), "{}", r.text());
    let posts: Vec<String> = b
        .heads
        .lock()
        .await
        .iter()
        .filter(|h| h.starts_with("POST /flaky"))
        .cloned()
        .collect();
    assert_eq!(posts.len(), 1);
    // A body-less POST still says its length.
    assert!(posts[0].contains("content-length: 0\r\n"), "{}", posts[0]);

    // A connection the backend closed while it sat idle in the pool is
    // noticed before a request is written to it, so even a POST (never
    // retried) goes through on a new connection.
    let before = b.connections.load(Ordering::SeqCst);
    assert_eq!(
        request(&c, &p, Method::GET, "/then-close").await.text(),
        "ok"
    );
    // Time for the proxy's event loop to see the close (no request waits
    // on that connection, and the proxy shows its idle pool nowhere, so
    // no event or poll can tell it): the one sleep a poll cannot replace.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = request(&c, &p, Method::POST, "/ok").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(b.connections.load(Ordering::SeqCst), before + 2);
    p.stop().await.unwrap();
}

#[tokio::test]
async fn broken_or_ambiguous_answers_are_refused_or_corrected_never_hung() {
    let dir = tempfile::tempdir().unwrap();
    let b = RawBackend::start().await;
    let p = proxy_to(&b, dir.path()).await;
    let c = client();
    let r = request(&c, &p, Method::GET, "/garbage").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.headers.contains_key("x-request-id"));

    // The head was fine, the body ends early: the client sees the stream
    // break (before or after the head reached it: the proxy may not have
    // flushed it yet), never a complete short answer.
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = p.url("/short").parse().unwrap();
    req.headers_mut()
        .insert("host", "raw.test".parse().unwrap());
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        match c.request(req).await {
            Err(_) => "no answer",
            Ok(resp) => {
                assert_eq!(resp.status(), StatusCode::OK);
                match resp.into_body().collect().await {
                    Err(_) => "broken body",
                    Ok(b) => panic!("a cut body arrived as complete: {:?}", b.to_bytes()),
                }
            }
        }
    })
    .await
    .expect("the client hung on a cut answer");
    assert!(["no answer", "broken body"].contains(&outcome));

    // Framing the proxy refuses or corrects.
    let r = request(&c, &p, Method::GET, "/http10-te").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    let r = request(&c, &p, Method::GET, "/big-head").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    // Transfer-Encoding and a wrong Content-Length: the whole chunked body
    // arrives, and the wrong length is not passed on.
    let r = request(&c, &p, Method::GET, "/te-and-cl").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "hello");
    assert_ne!(
        r.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"3"[..])
    );

    // And the proxy still serves.
    assert_eq!(request(&c, &p, Method::GET, "/ok").await.text(), "ok");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn cookies_split_by_an_h2_client_reach_the_backend_as_one_field() {
    let dir = tempfile::tempdir().unwrap();
    let b = RawBackend::start().await;
    let p = proxy_to(&b, dir.path()).await;
    let c = h2_client();
    let r = send(
        &c,
        &p,
        Method::GET,
        "raw.test",
        "/ok",
        &[("cookie", "a=1"), ("cookie", "b=2")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.text(), "ok");
    let heads = b.heads.lock().await;
    let head = heads.last().unwrap();
    assert!(head.contains("\r\ncookie: a=1; b=2\r\n"), "{head}");
    assert!(head.contains("\r\nhost: raw.test\r\n"), "{head}");
    assert!(head.starts_with("GET /ok HTTP/1.1\r\n"), "{head}");
    drop(heads);
    p.stop().await.unwrap();
}
