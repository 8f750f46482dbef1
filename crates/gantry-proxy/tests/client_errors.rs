//! A client's fault is not the backend's: requests the client broke (bad
//! chunk framing, a chunk size that overflows, bare LF, a body cut off, a
//! body that stops coming, a body over `max_body`) get a 4xx (or a closed
//! connection when no answer is possible) and count in the set's
//! `client_errors`, never in its status classes, which the rollout gates
//! read. Also the `Host` rules (400 for none or two) and the client
//! headers an untrusted client may not set (`Forwarded`, `X-Real-IP`).
//! Raw bytes on real sockets, a real proxy and real backends.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gantry_proxy::{SetStatsSnapshot, StatsSnapshot};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ROUTE: &str = "app/production";

/// A proxy with a short body read timeout and one route, `app.test`, all
/// of whose traffic goes to the set `canary`.
async fn canary_proxy(dir: &std::path::Path, canary: SocketAddr) -> TestProxy {
    let mut cfg = config(dir);
    cfg.body_read_timeout = Duration::from_millis(300);
    let p = TestProxy::start_with(cfg).await;
    let r = route(ROUTE)
        .host("app.test")
        .set(set("stable").to(canary).weight(0))
        .set(set("canary").to(canary))
        .max_body(4096);
    p.admin.set_table(&table().route(r).build()).await.unwrap();
    p
}

fn canary(stats: &StatsSnapshot) -> &SetStatsSnapshot {
    stats.set(ROUTE, "canary").expect("the canary set's stats")
}

/// Writes raw bytes, then reads until the proxy closes; the answer's
/// status (None: closed without an answer) and the whole text.
async fn exchange(
    proxy: SocketAddr,
    bytes: &[u8],
    then_close_write: bool,
) -> (Option<u16>, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let _ = s.write_all(bytes).await;
    if then_close_write {
        let _ = s.shutdown().await;
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = within(
            "the proxy to close the connection",
            EVENTUALLY,
            s.read(&mut buf),
        );
        match read.await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|t| t.get(..3))
        .and_then(|t| t.parse().ok());
    (status, text)
}

fn chunked(body: &str) -> Vec<u8> {
    format!("POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
        .into_bytes()
}

#[tokio::test]
async fn broken_request_bodies_are_client_errors_not_the_sets() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("canary").await;
    let p = canary_proxy(dir.path(), b.addr).await;

    // One good upload: the set's one answer.
    let (status, text) = exchange(
        p.addr,
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\
          Content-Length: 5\r\n\r\nhello",
        false,
    )
    .await;
    assert_eq!(status, Some(200), "{text}");

    // Broken chunk framing, three ways: 400 each.
    for (what, body) in [
        ("a chunk size that is not hex", "zz\r\nhello\r\n0\r\n\r\n"),
        (
            "a chunk size that overflows 64 bits",
            "1ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("bare LF line ends", "5\nhello\n0\n\n"),
        ("a chunk longer than its size", "2\r\nhello\r\n0\r\n\r\n"),
    ] {
        let (status, text) = exchange(p.addr, &chunked(body), false).await;
        assert_eq!(status, Some(400), "{what}: {text}");
        assert!(text.contains("framing is broken"), "{what}: {text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{what}: {text}"
        );
    }

    // A body the client cuts off (it closes its side): 400 if the answer
    // can still go out, else just a closed connection.
    let (status, text) = exchange(
        p.addr,
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\nonly ten b",
        true,
    )
    .await;
    assert!(matches!(status, None | Some(400)), "{text}");

    // A body that stops coming: 408 after the body read timeout.
    let (status, text) = exchange(
        p.addr,
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\nonly ten b",
        false,
    )
    .await;
    assert_eq!(status, Some(408), "{text}");
    assert!(text.contains("did not arrive in time"), "{text}");

    // Over max_body: declared (before the backend is asked), and
    // streamed past it.
    let (status, text) = exchange(
        p.addr,
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5000\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(status, Some(413), "{text}");
    let big = format!(
        "1000\r\n{}\r\n1000\r\n{}\r\n0\r\n\r\n",
        "x".repeat(4096),
        "y".repeat(4096)
    );
    let (status, text) = exchange(p.addr, &chunked(&big), false).await;
    assert_eq!(status, Some(413), "{text}");

    // The set answered one request; the eight the clients broke are its
    // client errors, by reason, and none is a 4xx or 5xx of the set.
    let stats = p.admin.stats().await.unwrap();
    let s = canary(&stats);
    assert_eq!(s.requests.total(), 1, "{s:?}");
    assert_eq!(s.requests.c2xx, 1, "{s:?}");
    assert_eq!(s.requests.c4xx + s.requests.c5xx, 0, "{s:?}");
    assert_eq!(s.recent.total(), 1, "{s:?}");
    assert_eq!(s.latency_ms.count, 1, "{s:?}");
    assert_eq!(s.client_errors.bad_framing, 4, "{s:?}");
    assert_eq!(s.client_errors.incomplete_body, 1, "{s:?}");
    assert_eq!(s.client_errors.body_timeout, 1, "{s:?}");
    assert_eq!(s.client_errors.body_too_large, 2, "{s:?}");
    assert_eq!(s.in_flight, 0, "{s:?}");
    let stable = stats.set(ROUTE, "stable").unwrap();
    assert_eq!(stable.requests.total() + stable.client_errors.total(), 0);

    let metrics = p.admin.metrics().await.unwrap();
    for (reason, n) in [
        ("bad_framing", 4),
        ("incomplete_body", 1),
        ("body_timeout", 1),
        ("body_too_large", 2),
    ] {
        let line = format!(
            "gantry_proxy_client_errors_total{{route=\"{ROUTE}\",set=\"canary\",reason=\"{reason}\"}} {n}"
        );
        assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
    }
    assert!(
        metrics.contains(&format!(
            "gantry_proxy_requests_total{{route=\"{ROUTE}\",set=\"canary\",class=\"5xx\"}} 0"
        )),
        "{metrics}"
    );
    p.stop().await.unwrap();
}

#[tokio::test]
async fn garbage_bodies_all_through_good_traffic_leave_the_canary_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("canary").await;
    let p = canary_proxy(dir.path(), b.addr).await;
    let garbage = [
        "zz\r\nhello\r\n0\r\n\r\n",
        "5\nhello\n0\n\n",
        "fffffffffffffffffffff\r\n",
        "3\r\nabc\r\nXYZ",
    ];
    let mut tasks = Vec::new();
    for i in 0..40 {
        let addr = p.addr;
        let body = garbage[i % garbage.len()];
        tasks.push(tokio::spawn(async move {
            // A valid first chunk, so the backend is already receiving.
            let bytes = chunked(&format!("4\r\nok..\r\n{body}"));
            let (status, text) = exchange(addr, &bytes, false).await;
            assert_eq!(status, Some(400), "{text}");
        }));
        let c = client();
        let url = p.url("/upload");
        tasks.push(tokio::spawn(async move {
            let mut req = Request::new(Full::new(Bytes::from_static(b"fine")));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = url.parse().unwrap();
            req.headers_mut()
                .insert("host", "app.test".parse().unwrap());
            let resp = c.request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let _ = resp.into_body().collect().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually("the canary set to have no request in flight", || async {
        canary(&p.admin.stats().await.unwrap()).in_flight == 0
    })
    .await;
    let stats = p.admin.stats().await.unwrap();
    let s = canary(&stats);
    assert_eq!(s.requests.c2xx, 40, "{s:?}");
    assert_eq!(s.requests.total(), 40, "{s:?}");
    assert_eq!(s.recent.total(), 40, "{s:?}");
    assert_eq!(s.client_errors.bad_framing, 40, "{s:?}");
    p.stop().await.unwrap();
}

/// A backend that reads a request body for at most `patience`, then
/// answers 500 (`/answer`) or drops the connection (`/drop`), as apps
/// with their own body timeout do.
async fn impatient_backend(patience: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| async move {
                        let drop_it = req.uri().path() == "/drop";
                        let read = tokio::time::timeout(patience, req.into_body().collect()).await;
                        if read.is_ok() {
                            return Ok(Response::new(Full::new(Bytes::from_static(b"read"))));
                        }
                        if drop_it {
                            return Err("gave up on the body");
                        }
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"too slow")));
                        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        Ok(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_backend_that_gives_up_on_a_stalled_client_body_is_not_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let backend = impatient_backend(Duration::from_millis(1500)).await;
    let mut cfg = config(dir.path());
    // Longer than the app's own patience: the app gives up first.
    cfg.body_read_timeout = Duration::from_secs(20);
    let p = TestProxy::start_with(cfg).await;
    p.admin
        .set_table(
            &table()
                .route(route(ROUTE).host("app.test").set(set("canary").to(backend)))
                .build(),
        )
        .await
        .unwrap();
    // The app answers 500 to the stalled body: passed on, counted as the
    // client's.
    let (status, text) = exchange(
        p.addr,
        b"POST /answer HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\nten bytes.",
        false,
    )
    .await;
    assert_eq!(status, Some(500), "{text}");
    // The app drops the connection: 408 to the client.
    let (status, text) = exchange(
        p.addr,
        b"POST /drop HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\nten bytes.",
        false,
    )
    .await;
    assert_eq!(status, Some(408), "{text}");
    // A client that sends its body in time gets the app's answer, counted
    // as the set's.
    let (status, text) = exchange(
        p.addr,
        b"POST /answer HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\
          Content-Length: 4\r\n\r\nfast",
        false,
    )
    .await;
    assert_eq!(status, Some(200), "{text}");

    let stats = p.admin.stats().await.unwrap();
    let s = canary(&stats);
    assert_eq!(s.requests.c5xx, 0, "{s:?}");
    assert_eq!(s.requests.total(), 1, "{s:?}");
    assert_eq!(s.client_errors.body_timeout, 2, "{s:?}");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_but_steady_upload_is_not_cut_by_the_response_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("canary").await;
    let mut cfg = config(dir.path());
    cfg.response_timeout = Duration::from_millis(400);
    cfg.body_read_timeout = Duration::from_secs(5);
    let p = TestProxy::start_with(cfg).await;
    p.admin
        .set_table(
            &table()
                .route(route(ROUTE).host("app.test").set(set("canary").to(b.addr)))
                .build(),
        )
        .await
        .unwrap();
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    // Ten bytes over about a second, longer than the response timeout:
    // it counts from the body's last byte.
    for _ in 0..10 {
        // The slow upload is what is tested.
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"x").await.unwrap();
    }
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\n10"), "{text}");
    let stats = p.admin.stats().await.unwrap();
    assert_eq!(canary(&stats).requests.c2xx, 1);
    p.stop().await.unwrap();
}

#[tokio::test]
async fn an_h2_client_that_breaks_its_body_is_a_client_error() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("canary").await;
    let p = canary_proxy(dir.path(), b.addr).await;
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    // A body stream that sends a few bytes, then fails: the client resets
    // the stream.
    let frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"part"))),
        Err(std::io::Error::other("the client gives up")),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let mut req = Request::new(body);
    *req.method_mut() = Method::POST;
    *req.uri_mut() = "http://app.test/upload".parse().unwrap();
    let _ = sender.send_request(req).await;
    // The stream ends on the proxy's side on its own time.
    eventually(
        "the cut-off upload to end: nothing in flight, one client error",
        || async {
            let stats = p.admin.stats().await.unwrap();
            let s = canary(&stats);
            s.in_flight == 0 && s.client_errors.total() == 1
        },
    )
    .await;
    let stats = p.admin.stats().await.unwrap();
    let s = canary(&stats);
    assert_eq!(s.client_errors.incomplete_body, 1, "{s:?}");
    assert_eq!(s.requests.total(), 0, "{s:?}");
    p.stop().await.unwrap();
}

// === Host ===

#[tokio::test]
async fn http11_requests_without_exactly_one_host_get_400() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("web").await;
    let p = TestProxy::start(dir.path()).await;
    // `*`: without the check, a request with no Host would be routed.
    p.admin
        .set_table(&table().route(route("any/production").to(b.addr)).build())
        .await
        .unwrap();
    let cases: [(&str, &[u8]); 5] = [
        // The proxy's own HTTP/1.1 server (no body).
        ("no Host", b"GET / HTTP/1.1\r\n\r\n"),
        (
            "two Hosts",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        ),
        // hyper's server (a body).
        (
            "no Host, with a body",
            b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
        ),
        (
            "two Hosts, with a body",
            b"POST /echo HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nContent-Length: 2\r\n\r\nhi",
        ),
        (
            "two Hosts in HTTP/1.0",
            b"GET / HTTP/1.0\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let (status, text) = exchange(p.addr, bytes, false).await;
        assert_eq!(status, Some(400), "{what}: {text}");
        assert!(text.contains("Host"), "{what}: {text}");
    }
    // One Host: served; HTTP/1.0 may leave it out.
    for bytes in [
        &b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.0\r\n\r\n",
    ] {
        let (status, text) = exchange(p.addr, bytes, false).await;
        assert_eq!(status, Some(200), "{text}");
    }
    // A head hyper refuses itself (two lengths): its 400, counted alike.
    let (status, text) = exchange(
        p.addr,
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        false,
    )
    .await;
    assert_eq!(status, Some(400), "{text}");
    eventually("6 bad requests counted", || async {
        p.admin.stats().await.unwrap().bad_requests == 6
    })
    .await;
    let stats = p.admin.stats().await.unwrap();
    let s = stats.set("any/production", "s").unwrap();
    assert_eq!(s.requests.total(), 2, "{s:?}");
    let metrics = p.admin.metrics().await.unwrap();
    assert!(
        metrics.contains("gantry_proxy_bad_requests_total 6"),
        "{metrics}"
    );
    p.stop().await.unwrap();
}

#[tokio::test]
async fn an_h2_request_with_two_hosts_gets_400() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("web").await;
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(
            &table()
                .route(route("app/production").host("app.test").to(b.addr))
                .build(),
        )
        .await
        .unwrap();
    let c = h2_client();
    let r = send(
        &c,
        &p,
        Method::GET,
        "app.test",
        "/",
        &[("host", "evil.test")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("two Host headers"), "{}", r.text());
    // One Host, or only :authority: served.
    assert_eq!(get(&c, &p, "app.test", "/").await.status, StatusCode::OK);
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = "http://app.test/authority".parse().unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    p.stop().await.unwrap();
}

// === Forwarded, X-Real-IP ===

#[tokio::test]
async fn forwarded_and_x_real_ip_of_an_untrusted_client_do_not_reach_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("web").await;
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(
            &table()
                .route(route("app/production").host("app.test").to(b.addr))
                .build(),
        )
        .await
        .unwrap();
    let spoofed = "Forwarded: for=6.6.6.6;proto=https\r\nX-Real-IP: 6.6.6.6\r\n\
                   X-Forwarded-For: 6.6.6.6\r\n";
    // The own HTTP/1.1 server (no body) and hyper's (a body).
    for request in [
        format!("GET /echo HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n{spoofed}\r\n"),
        format!(
            "POST /echo HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n{spoofed}\
             Content-Length: 2\r\n\r\nhi"
        ),
    ] {
        let (status, text) = exchange(p.addr, request.as_bytes(), false).await;
        assert_eq!(status, Some(200), "{text}");
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        let echo: serde_json::Value = serde_json::from_str(body).unwrap();
        let seen = &echo["headers"];
        assert!(seen.get("forwarded").is_none(), "{seen}");
        assert_eq!(seen["x-real-ip"], "127.0.0.1", "{seen}");
        assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    }
    // h2.
    let r = send(
        &h2_client(),
        &p,
        Method::GET,
        "app.test",
        "/echo",
        &[("forwarded", "for=6.6.6.6"), ("x-real-ip", "6.6.6.6")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.seen("forwarded"), None);
    assert_eq!(r.seen("x-real-ip").as_deref(), Some("127.0.0.1"));
    p.stop().await.unwrap();
}

#[tokio::test]
async fn behind_a_trusted_proxy_forwarded_and_x_real_ip_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("web").await;
    let mut cfg = config(dir.path());
    cfg.trust_forwarded = true;
    let p = TestProxy::start_with(cfg).await;
    p.admin
        .set_table(
            &table()
                .route(route("app/production").host("app.test").to(b.addr))
                .build(),
        )
        .await
        .unwrap();
    let r = get_with(
        &p,
        &[("forwarded", "for=192.0.2.1"), ("x-real-ip", "192.0.2.1")],
    )
    .await;
    assert_eq!(r.seen("forwarded").as_deref(), Some("for=192.0.2.1"));
    assert_eq!(r.seen("x-real-ip").as_deref(), Some("192.0.2.1"));
    let r = get_with(&p, &[]).await;
    assert_eq!(r.seen("x-real-ip").as_deref(), Some("127.0.0.1"));
    p.stop().await.unwrap();
}

async fn get_with(p: &TestProxy, headers: &[(&str, &str)]) -> Resp {
    send(
        &client(),
        p,
        Method::GET,
        "app.test",
        "/echo",
        headers,
        Bytes::new(),
    )
    .await
}
