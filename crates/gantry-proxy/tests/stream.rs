//! Streaming features end to end: WebSocket pass-through and its drain,
//! response compression, sticky sessions. Real backends, a real proxy and
//! real clients on 127.0.0.1.

mod support;

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// A generous bound for things that should take milliseconds; only there
/// so a broken build fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);

// === WebSocket ===

/// A WebSocket echo server: every text or binary message comes back,
/// prefixed with the server's name for text.
struct WsBackend {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl WsBackend {
    async fn start(name: &'static str) -> WsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        let reply = match msg {
                            Message::Text(t) => Message::text(format!("{name}: {t}")),
                            Message::Binary(b) => Message::Binary(b),
                            // tungstenite answers the close itself.
                            Message::Close(_) => continue,
                            _ => continue,
                        };
                        if ws.send(reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        WsBackend { addr, task }
    }
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_connect(proxy: &TestProxy, host: &str, path: &str) -> Ws {
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{host}{path}"), stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(resp.headers().contains_key("x-request-id"), "{resp:?}");
    ws
}

async fn next_message(ws: &mut Ws) -> Message {
    tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("no message")
        .expect("stream ended")
        .expect("websocket error")
}

#[tokio::test]
async fn websocket_echo_through_the_proxy_counts_in_flight_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("blue").await;
    let log = dir.path().join("access.log");
    let mut cfg = config(dir.path());
    cfg.access_log = true;
    cfg.access_log_path = Some(log.clone());
    let p = TestProxy::start_with(cfg).await;
    p.admin
        .set_table(
            &table()
                .route(
                    route("chat/production")
                        .host("chat.test")
                        .set(set("blue").to(backend.addr)),
                )
                .build(),
        )
        .await
        .unwrap();

    let mut ws = ws_connect(&p, "chat.test", "/socket").await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("blue: hello"));
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::binary(big));

    // The open WebSocket is in flight on its set.
    let stats = p.admin.stats().await.unwrap();
    let s = stats.set("chat/production", "blue").unwrap();
    assert_eq!(s.in_flight, 1);
    assert_eq!(s.requests.c1xx, 1);
    assert!(s.bytes_in > 200_000, "{s:?}");
    assert!(s.bytes_out > 200_000, "{s:?}");
    let metrics = p.admin.metrics().await.unwrap();
    assert!(
        metrics
            .contains("gantry_proxy_in_flight_requests{route=\"chat/production\",set=\"blue\"} 1"),
        "{metrics}"
    );

    // The close handshake goes through the tunnel both ways; then both
    // sides close and the tunnel ends.
    ws.close(None).await.unwrap();
    let closed = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(closed, "no close frame came back");
    drop(ws);
    eventually(
        "the closed WebSocket to leave chat/production blue",
        || async {
            p.admin
                .drained("chat/production", "blue")
                .await
                .unwrap()
                .in_flight
                == 0
        },
    )
    .await;
    // One access log line for the whole WebSocket, with its bytes.
    let mut line = serde_json::Value::Null;
    eventually("the WebSocket's access log line (status 101)", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("\"status\":101")) {
            line = serde_json::from_str(l).unwrap();
        }
        std::future::ready(!line.is_null())
    })
    .await;
    assert_eq!(line["route"], "chat/production");
    assert!(line["bytes"].as_u64().unwrap() > 200_000, "{line}");
    assert!(line["bytes_in"].as_u64().unwrap() > 200_000, "{line}");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_open_websockets_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("blue").await;
    let mut cfg = config(dir.path());
    cfg.websocket_drain_grace = Duration::from_millis(500);
    let p = TestProxy::start_with(cfg).await;
    p.admin
        .set_table(
            &table()
                .route(
                    route("chat/production")
                        .host("chat.test")
                        .set(set("blue").to(backend.addr)),
                )
                .build(),
        )
        .await
        .unwrap();
    let mut ws = ws_connect(&p, "chat.test", "/").await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("blue: hi"));
    // Stopping returns once the tunnel is closed...
    tokio::time::timeout(PATIENCE, p.stop())
        .await
        .expect("the proxy did not stop")
        .unwrap();
    // ...and the client sees its connection end.
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the WebSocket outlived the proxy");
}

#[tokio::test]
async fn websocket_over_h2_extended_connect() {
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("blue").await;
    let plain_backend = Backend::start("plain").await;
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(
            &table()
                .route(
                    route("chat/production")
                        .host("chat.test")
                        .set(set("blue").to(backend.addr)),
                )
                .route(
                    route("plain/production")
                        .host("plain.test")
                        .to(plain_backend.addr),
                )
                .build(),
        )
        .await
        .unwrap();
    let tcp = TcpStream::connect(p.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    // One ordinary request first, so that the proxy's SETTINGS (which
    // allow extended CONNECT) have arrived.
    let plain = Request::get("http://nothing.test/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = sender.send_request(plain).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let connect = |url: &str| {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(url)
            .header("sec-websocket-version", "13")
            .body(Empty::<Bytes>::new())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        req
    };
    // A backend that does not speak WebSocket answers 200: the client gets
    // 502, not a tunnel to nowhere.
    let resp = sender
        .send_request(connect("http://plain.test/socket"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&text).contains("instead of switching protocols"),
        "{text:?}"
    );

    let resp = sender
        .send_request(connect("http://chat.test/socket"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{resp:?}");
    assert!(!resp.headers().contains_key("sec-websocket-accept"));
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    ws.send(Message::text("over h2")).await.unwrap();
    let reply = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply, Message::text("blue: over h2"));
    let stats = p.admin.stats().await.unwrap();
    assert_eq!(stats.set("chat/production", "blue").unwrap().in_flight, 1);
    drop(ws);
    eventually(
        "the dropped WebSocket to leave chat/production blue",
        || async {
            p.admin
                .drained("chat/production", "blue")
                .await
                .unwrap()
                .in_flight
                == 0
        },
    )
    .await;
    p.stop().await.unwrap();
}

#[tokio::test]
async fn a_removed_sets_websocket_is_closed_after_the_grace_and_only_then_drained() {
    let dir = tempfile::tempdir().unwrap();
    let (blue, green) = (
        WsBackend::start("blue").await,
        WsBackend::start("green").await,
    );
    let mut config = config(dir.path());
    // Long enough that the checks right after the swap run well within it
    // on a loaded machine.
    config.websocket_drain_grace = Duration::from_secs(4);
    let p = TestProxy::start_with(config).await;
    let with = |name: &str, addr| {
        table()
            .route(
                route("chat/production")
                    .host("chat.test")
                    .set(set(name).to(addr)),
            )
            .build()
    };
    p.admin.set_table(&with("blue", blue.addr)).await.unwrap();
    let mut ws = ws_connect(&p, "chat.test", "/").await;
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("blue: one"));

    p.admin.set_table(&with("green", green.addr)).await.unwrap();
    let status = p.admin.drained("chat/production", "blue").await.unwrap();
    assert!(!status.in_table);
    assert_eq!(status.in_flight, 1);
    assert!(!status.drained, "{status:?}");
    // Still open and still talking to blue during the grace.
    ws.send(Message::text("two")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("blue: two"));
    // New WebSockets go to green.
    let mut ws2 = ws_connect(&p, "chat.test", "/").await;
    ws2.send(Message::text("x")).await.unwrap();
    assert_eq!(next_message(&mut ws2).await, Message::text("green: x"));

    // After the grace the proxy closes the tunnel.
    let end = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the drained WebSocket was not closed");
    eventually("set blue of chat/production to drain", || async {
        p.admin
            .drained("chat/production", "blue")
            .await
            .unwrap()
            .drained
    })
    .await;
    // Green's WebSocket is untouched.
    ws2.send(Message::text("y")).await.unwrap();
    assert_eq!(next_message(&mut ws2).await, Message::text("green: y"));
    let green_status = p.admin.drained("chat/production", "green").await.unwrap();
    assert_eq!(green_status.in_flight, 1);
    drop(ws2);
    p.stop().await.unwrap();
}

/// Reads one HTTP/1.1 response with a Content-Length body from `s`.
async fn read_response(s: &mut TcpStream) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return (status, body);
            }
        }
        let n = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
            .await
            .expect("no response")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn an_upgrade_the_backend_declines_is_an_ordinary_response() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("plain").await;
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(
            &table()
                .route(
                    route("app/production")
                        .host("app.test")
                        .set(set("blue").to(backend.addr)),
                )
                .build(),
        )
        .await
        .unwrap();
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, body) = read_response(&mut s).await;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    // The backend saw the upgrade headers (kept despite being hop-by-hop).
    assert_eq!(seen["headers"]["upgrade"], "websocket");
    assert_eq!(seen["headers"]["connection"], "upgrade");
    assert!(seen["headers"]["sec-websocket-key"].is_string());
    // The connection goes on as plain HTTP/1.1.
    s.write_all(b"GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let (status, body) = read_response(&mut s).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"/next\""), "{body}");
    eventually("nothing in flight on app/production blue", || async {
        p.admin
            .drained("app/production", "blue")
            .await
            .unwrap()
            .in_flight
            == 0
    })
    .await;
    p.stop().await.unwrap();
}

// === compression ===

/// Body of `/big`: compressible, but not trivially (so a broken stream
/// would show).
fn big_text() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..20_000u32 {
        out.extend_from_slice(
            format!("line {i}: the quick brown fox {}\n", i * 7919 % 1000).as_bytes(),
        );
    }
    out
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn content_handle(req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let (content_type, body, extra): (&str, Vec<u8>, Option<(&str, &str)>) = match path.as_str() {
        "/big" | "/big.json" => {
            // Streamed in small chunks, without Content-Length.
            let text = big_text();
            let chunks: Vec<Result<Frame<Bytes>, Infallible>> = text
                .chunks(1000)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let stream = futures_util::stream::iter(chunks);
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            let ct = if path == "/big" {
                "text/plain; charset=utf-8"
            } else {
                "application/json"
            };
            resp.headers_mut()
                .insert("content-type", ct.parse().unwrap());
            resp.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
            return resp;
        }
        "/image" => ("image/png", vec![7u8; 50_000], None),
        "/encoded" => (
            "text/plain",
            b"pretend-this-is-gzip".repeat(100),
            Some(("content-encoding", "gzip")),
        ),
        "/small" => ("text/plain", b"tiny".to_vec(), None),
        _ => ("text/plain", b"not found".to_vec(), None),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    resp.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    if let Some((k, v)) = extra {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    resp
}

async fn start_content_backend() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req| async move {
                    Ok::<_, Infallible>(content_handle(req).await)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn unbrotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli_decompressor::Decompressor::new(b, 4096)
        .read_to_end(&mut out)
        .unwrap();
    out
}

async fn get_with(c: &TestClient, p: &TestProxy, host: &str, path: &str, ae: &str) -> Resp {
    send(
        c,
        p,
        Method::GET,
        host,
        path,
        &[("accept-encoding", ae)],
        Bytes::new(),
    )
    .await
}

fn header<'a>(r: &'a Resp, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn compression_streams_gzip_and_br_and_leaves_the_rest_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _task) = start_content_backend().await;
    let p = TestProxy::start(dir.path()).await;
    let zipped = route("site/production")
        .host("site.test")
        .to(addr)
        .compress();
    let plain = route("plain/production").host("plain.test").to(addr);
    p.admin
        .set_table(&table().route(zipped).route(plain).build())
        .await
        .unwrap();
    let c = client();
    let original = big_text();

    // gzip, with br refused by q=0.
    let r = get_with(&c, &p, "site.test", "/big", "br;q=0, gzip").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(header(&r, "content-encoding"), Some("gzip"));
    assert_eq!(header(&r, "content-length"), None);
    assert_eq!(header(&r, "vary"), Some("Accept-Encoding"));
    assert_eq!(header(&r, "etag"), Some("W/\"v1\""));
    assert!(r.body.len() < original.len() / 3, "{}", r.body.len());
    assert_eq!(gunzip(&r.body), original);

    // br preferred when both are fine.
    let r = get_with(&c, &p, "site.test", "/big.json", "gzip, deflate, br").await;
    assert_eq!(header(&r, "content-encoding"), Some("br"));
    assert_eq!(unbrotli(&r.body), original);

    // The bytes counted out are the compressed ones.
    let stats = p.admin.stats().await.unwrap();
    let s = stats.set("site/production", "s").unwrap();
    assert!(s.bytes_out < original.len() as u64, "{s:?}");

    // Everything refused by q=0: sent as it is (still Vary).
    let r = get_with(&c, &p, "site.test", "/big", "gzip;q=0, br;q=0").await;
    assert_eq!(header(&r, "content-encoding"), None);
    assert_eq!(header(&r, "vary"), Some("Accept-Encoding"));
    assert_eq!(r.body.to_vec(), original);
    let r = get(&c, &p, "site.test", "/big").await;
    assert_eq!(header(&r, "content-encoding"), None);
    assert_eq!(r.body.to_vec(), original);

    // Not compressible, already encoded, tiny, or a HEAD: untouched.
    let r = get_with(&c, &p, "site.test", "/image", "gzip, br").await;
    assert_eq!(header(&r, "content-encoding"), None);
    assert_eq!(header(&r, "vary"), None);
    assert_eq!(header(&r, "content-length"), Some("50000"));
    assert_eq!(r.body.len(), 50_000);
    let r = get_with(&c, &p, "site.test", "/encoded", "gzip, br").await;
    assert_eq!(header(&r, "content-encoding"), Some("gzip"));
    assert_eq!(r.body.to_vec(), b"pretend-this-is-gzip".repeat(100));
    let r = get_with(&c, &p, "site.test", "/small", "gzip, br").await;
    assert_eq!(header(&r, "content-encoding"), None);
    assert_eq!(r.text(), "tiny");
    let r = send(
        &c,
        &p,
        Method::HEAD,
        "site.test",
        "/big",
        &[("accept-encoding", "gzip")],
        Bytes::new(),
    )
    .await;
    assert_eq!(header(&r, "content-encoding"), None);

    // A route without `compress` never compresses.
    let r = get_with(&c, &p, "plain.test", "/big", "gzip, br").await;
    assert_eq!(header(&r, "content-encoding"), None);
    assert_eq!(header(&r, "vary"), None);
    assert_eq!(r.body.to_vec(), original);

    // h2 clients get the same.
    let r = get_with(&h2_client(), &p, "site.test", "/big", "gzip").await;
    assert_eq!(header(&r, "content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&r.body), original);
    p.stop().await.unwrap();
}

// === sticky sessions ===

fn sticky_cookie(r: &Resp) -> Option<String> {
    let v = r.headers.get("set-cookie")?.to_str().unwrap().to_string();
    assert!(v.starts_with("gantry_sticky="), "{v}");
    assert!(v.ends_with("; Path=/; HttpOnly; SameSite=Lax"), "{v}");
    Some(v.split(';').next().unwrap().to_string())
}

#[tokio::test]
async fn sticky_cookie_pins_one_instance_until_its_set_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c3) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let p = TestProxy::start(dir.path()).await;
    let sticky_route = |set_name: &str| {
        let r = route("shop/production")
            .host("shop.test")
            .set(set(set_name).to(a.addr).to(b.addr).to(c3.addr))
            .sticky();
        table().route(r).build()
    };
    p.admin.set_table(&sticky_route("blue")).await.unwrap();
    let c = client();

    let first = get(&c, &p, "shop.test", "/").await;
    let cookie = sticky_cookie(&first).expect("no sticky cookie on the first answer");
    assert!(!cookie.contains("127.0.0.1"), "{cookie}");
    let pinned = first.backend();
    for _ in 0..50 {
        let r = send(
            &c,
            &p,
            Method::GET,
            "shop.test",
            "/",
            &[("cookie", &cookie)],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.backend(), pinned);
        assert_eq!(sticky_cookie(&r), None, "a valid cookie is not replaced");
    }

    // Without the cookie, requests spread.
    let mut seen = HashSet::new();
    for _ in 0..60 {
        let r = get(&c, &p, "shop.test", "/").await;
        assert!(sticky_cookie(&r).is_some());
        seen.insert(r.backend());
    }
    assert!(seen.len() > 1, "{seen:?}");

    // A made-up token is ignored and replaced.
    let r = send(
        &c,
        &p,
        Method::GET,
        "shop.test",
        "/",
        &[("cookie", "gantry_sticky=0123456789abcdef")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(sticky_cookie(&r).is_some());

    // The set leaves the table: the cookie no longer pins, and is replaced.
    p.admin.set_table(&sticky_route("green")).await.unwrap();
    let r = send(
        &c,
        &p,
        Method::GET,
        "shop.test",
        "/",
        &[("cookie", &cookie)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let new_cookie = sticky_cookie(&r).expect("the stale cookie was not replaced");
    assert_ne!(new_cookie, cookie);
    let again = send(
        &c,
        &p,
        Method::GET,
        "shop.test",
        "/",
        &[("cookie", &new_cookie)],
        Bytes::new(),
    )
    .await;
    assert_eq!(again.backend(), r.backend());
    assert_eq!(sticky_cookie(&again), None);
    p.stop().await.unwrap();
}

/// A small HTTP server that answers its name and can be killed, keep-alive
/// connections included.
struct Killable {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Killable {
    async fn start(name: &'static str) -> Killable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns.spawn(async move {
                    // No keep-alive: every request connects anew, so a
                    // killed server refuses at once (no stale pooled
                    // connection to break a request).
                    let svc = hyper::service::service_fn(move |_req| async move {
                        let mut resp = Response::new(Full::new(Bytes::from(name)));
                        resp.headers_mut()
                            .insert("connection", "close".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Killable { addr, task }
    }

    /// Closes the listener and every connection.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

#[tokio::test]
async fn a_pinned_instance_that_dies_loses_its_clients_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let servers = [
        Killable::start("k1").await,
        Killable::start("k2").await,
        Killable::start("k3").await,
    ];
    let mut cfg = config(dir.path());
    cfg.eject_after_failures = 1;
    cfg.eject_cooloff = Duration::from_secs(600);
    let p = TestProxy::start_with(cfg).await;
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let r = route("shop/production")
        .host("shop.test")
        .set(set("blue").instances(&addrs))
        .sticky();
    p.admin.set_table(&table().route(r).build()).await.unwrap();
    let c = client();
    let first = get(&c, &p, "shop.test", "/").await;
    let cookie = sticky_cookie(&first).unwrap();
    let pinned = first.text();

    let mut servers = Vec::from(servers);
    let i = ["k1", "k2", "k3"]
        .iter()
        .position(|n| *n == pinned)
        .unwrap();
    servers.remove(i).kill().await;

    // The pinned instance refuses: another answers (a GET is retried) and
    // the client gets a new cookie; the instance is now ejected, so the
    // old cookie no longer pins.
    for _ in 0..3 {
        let r = send(
            &c,
            &p,
            Method::GET,
            "shop.test",
            "/",
            &[("cookie", &cookie)],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_ne!(r.text(), pinned);
        let new_cookie = sticky_cookie(&r).expect("no new cookie");
        assert_ne!(new_cookie, cookie);
    }
    let stats = p.admin.stats().await.unwrap();
    let dead = stats
        .instances
        .iter()
        .find(|x| x.address == addrs[i])
        .unwrap();
    assert!(dead.ejected, "{dead:?}");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn response_bytes_count_while_the_body_streams() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("app").await;
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(
            &table()
                .route(
                    route("app/production")
                        .host("app.test")
                        .set(set("blue").to(backend.addr)),
                )
                .build(),
        )
        .await
        .unwrap();
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = p.url("/stream").parse().unwrap();
    req.headers_mut()
        .insert("host", "app.test".parse().unwrap());
    let resp = client().request(req).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first");
    // Mid-stream: the bytes already sent show in the stats.
    let stats = p.admin.stats().await.unwrap();
    let s = stats.set("app/production", "blue").unwrap();
    assert_eq!((s.in_flight, s.bytes_out), (1, 5), "{s:?}");
    backend.release();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"second");
    eventually(
        "the streamed response counted: nothing in flight, 11 bytes out",
        || async {
            let stats = p.admin.stats().await.unwrap();
            let s = stats.set("app/production", "blue").unwrap();
            s.in_flight == 0 && s.bytes_out == 11
        },
    )
    .await;
    p.stop().await.unwrap();
}
