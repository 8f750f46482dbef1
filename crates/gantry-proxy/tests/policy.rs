//! The request policy end to end: security headers, the CSP report
//! endpoint, per-client rate limits, size limits and slow clients. Real
//! proxy, real backends, real sockets.

mod support;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use gantry_proxy::{CspMode, DEFAULT_CSP, SecurityHeaders};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use support::*;

/// [`DEFAULT_CSP`] as sent over plain HTTP: without its `report-to`.
fn plain_http_csp() -> String {
    DEFAULT_CSP.replace("; report-to gantry-csp", "")
}
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A backend that sets its own `X-Frame-Options` and CSP on `/own`.
async fn own_headers_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"hello")));
                        if req.uri().path() == "/own" {
                            let h = resp.headers_mut();
                            h.insert("x-frame-options", "SAMEORIGIN".parse().unwrap());
                            h.insert(
                                "content-security-policy",
                                "default-src 'none'".parse().unwrap(),
                            );
                        }
                        Ok::<_, Infallible>(resp)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// One HTTP/1.1 request from a client socket bound to `source`.
async fn send_from(
    source: IpAddr,
    proxy: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> Resp {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let stream = socket.connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::new(Full::new(Bytes::from_static(body)));
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().unwrap();
    req.headers_mut()
        .insert("host", "app.test".parse().unwrap());
    for (k, v) in headers {
        req.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn localhost() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// Reads from a raw connection until EOF or an error; what was read.
/// Fails the test if the proxy keeps the connection open past
/// [`EVENTUALLY`].
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match within(
            "the proxy to close the connection",
            EVENTUALLY,
            stream.read(&mut buf),
        )
        .await
        {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

// === security headers ===

#[tokio::test]
async fn security_headers_are_added_unless_the_app_sends_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let backend = own_headers_backend().await;
    let p = TestProxy::start(dir.path()).await;
    let r = route("app/web")
        .host("app.test")
        .to(backend)
        .headers(SecurityHeaders {
            referrer_policy: String::new(),
            ..SecurityHeaders::default()
        });
    p.admin.set_table(&table().route(r).build()).await.unwrap();
    let c = client();

    let resp = get(&c, &p, "app.test", "/").await;
    assert_eq!(resp.status, StatusCode::OK);
    let h = &resp.headers;
    // Over plain HTTP the CSP reports through `report-uri` alone: browsers
    // deliver `report-to` reports only from secure origins, and ignore
    // `report-uri` when `report-to` is there (over HTTPS both are sent:
    // tls.rs).
    assert_eq!(h["content-security-policy"], plain_http_csp());
    let csp = h["content-security-policy"].to_str().unwrap();
    for part in [
        "require-trusted-types-for 'script'",
        "report-uri /_gantry/csp-report",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("report-to"), "{csp}");
    assert_eq!(
        h["reporting-endpoints"],
        "gantry-csp=\"/_gantry/csp-report\""
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h.contains_key("permissions-policy"));
    assert!(!h.contains_key("referrer-policy"), "\"\" disables it");
    assert!(
        !h.contains_key("strict-transport-security"),
        "no HSTS over plain HTTP"
    );

    // The app's own headers win.
    let own = get(&c, &p, "app.test", "/own").await;
    assert_eq!(own.headers["x-frame-options"], "SAMEORIGIN");
    assert_eq!(own.headers["content-security-policy"], "default-src 'none'");
    assert_eq!(own.headers["x-content-type-options"], "nosniff");

    // The proxy's own pages of the route get them too.
    let r = route("app/web")
        .host("app.test")
        .to(dead_addr())
        .headers(SecurityHeaders::default());
    p.admin.set_table(&table().route(r).build()).await.unwrap();
    let bad = get(&c, &p, "app.test", "/").await;
    assert_eq!(bad.status, StatusCode::BAD_GATEWAY);
    assert_eq!(bad.headers["x-frame-options"], "DENY");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_header_values_are_refused_naming_the_route() {
    let dir = tempfile::tempdir().unwrap();
    let p = TestProxy::start(dir.path()).await;
    let r = route("app/web")
        .host("app.test")
        .to(dead_addr())
        .headers(SecurityHeaders {
            csp: "default-src 'self'\nX-Injected: yes".into(),
            ..SecurityHeaders::default()
        });
    let err = p
        .admin
        .set_table(&table().route(r).build())
        .await
        .unwrap_err();
    let err = err.to_string();
    assert!(err.contains("route `app/web`: headers.csp"), "{err}");
    assert!(err.contains("not a valid"), "{err}");
    p.stop().await.unwrap();
}

// === CSP reports ===

#[tokio::test]
async fn csp_reports_are_received_counted_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("web").await;
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(
            &table()
                .route(route("app/web").host("app.test").to(backend.addr))
                .build(),
        )
        .await
        .unwrap();
    let c = client();
    let post = |ctype: &'static str, body: Vec<u8>| {
        let c = c.clone();
        let p = &p;
        async move {
            send(
                &c,
                p,
                Method::POST,
                "app.test",
                "/_gantry/csp-report",
                &[("content-type", ctype)],
                Bytes::from(body),
            )
            .await
        }
    };
    let legacy = br#"{"csp-report":{"document-uri":"http://app.test/","violated-directive":"script-src-elem","blocked-uri":"inline"}}"#;
    let r = post("application/csp-report", legacy.to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let api = br#"[{"type":"csp-violation","age":10,"url":"http://app.test/","body":{"blockedURL":"eval","effectiveDirective":"script-src"}},
                   {"type":"csp-violation","age":3,"url":"http://app.test/x","body":{"blockedURL":"trusted-types-sink"}}]"#;
    let r = post("application/reports+json", api.to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());

    // Malformed, too large, wrong type or method: refused, not stored.
    let r = post("application/csp-report", b"{\"nope\":1}".to_vec()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("Malformed CSP report"), "{}", r.text());
    let r = post("application/reports+json", b"not json".to_vec()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let mut big = b"{\"csp-report\":{\"x\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 70 << 10));
    big.extend(b"\"}}");
    let r = post("application/csp-report", big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = post("text/plain", legacy.to_vec()).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = get(&c, &p, "app.test", "/_gantry/csp-report").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    let (status, body) = p
        .admin
        .raw(Method::GET, "/csp-reports?route=app%2Fweb", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(listed["total"], 3);
    let reports = listed["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 3);
    assert_eq!(reports[0]["format"], "csp-report");
    assert_eq!(
        reports[0]["report"]["csp-report"]["violated-directive"],
        "script-src-elem"
    );
    assert_eq!(
        reports[2]["report"]["body"]["blockedURL"],
        "trusted-types-sink"
    );

    let metrics = p.admin.metrics().await.unwrap();
    assert!(
        metrics.contains("gantry_proxy_csp_reports_total{route=\"app/web\"} 3"),
        "{metrics}"
    );
    // The reports never reached the app, nor counted as its requests.
    let stats = p.admin.stats().await.unwrap();
    assert!(
        stats
            .set("app/web", "s")
            .is_none_or(|s| s.requests.total() == 0)
    );
    let (status, _) = p
        .admin
        .raw(Method::GET, "/csp-reports?route=nope", None)
        .await
        .unwrap();
    assert_eq!(status, 404);
    p.stop().await.unwrap();
}

#[tokio::test]
async fn report_only_csp_is_sent_and_its_reports_are_summed_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let backend = own_headers_backend().await;
    let p = TestProxy::start(dir.path()).await;
    let r = route("app/staging")
        .host("app.test")
        .to(backend)
        .headers(SecurityHeaders {
            csp_mode: CspMode::ReportOnly,
            ..SecurityHeaders::default()
        });
    p.admin.set_table(&table().route(r).build()).await.unwrap();
    let c = client();
    let page = get(&c, &p, "app.test", "/").await;
    assert_eq!(
        page.headers["content-security-policy-report-only"],
        plain_http_csp()
    );
    assert!(!page.headers.contains_key("content-security-policy"));
    // The table reads back with its mode.
    let back = p.admin.table().await.unwrap();
    assert_eq!(
        back.routes[0].headers.as_ref().unwrap().csp_mode,
        CspMode::ReportOnly
    );

    // What a browser sends for two inline scripts of one page (the query
    // differs: one kind) and an eval on another.
    for (doc, blocked) in [
        ("http://app.test/db?_sort=id", "inline"),
        ("http://app.test/db?_sort=name", "inline"),
        ("http://app.test/other", "eval"),
    ] {
        let report = serde_json::json!({"csp-report": {
            "document-uri": doc, "blocked-uri": blocked,
            "effective-directive": "script-src-elem",
            "violated-directive": "script-src-elem",
            "disposition": "report",
        }});
        let r = send(
            &c,
            &p,
            Method::POST,
            "app.test",
            "/_gantry/csp-report",
            &[("content-type", "application/csp-report")],
            Bytes::from(report.to_string()),
        )
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    }
    let reports = p.admin.csp_reports("app/staging").await.unwrap();
    assert_eq!(reports.total, 3);
    assert_eq!(reports.reports.len(), 3);
    assert_eq!(reports.violations.len(), 2, "{:?}", reports.violations);
    let top = &reports.violations[0];
    assert_eq!(top.count, 2);
    assert_eq!(top.page, "http://app.test/db");
    assert_eq!(top.blocked_uri, "inline");
    assert_eq!(top.directive, "script-src-elem");
    assert_eq!(top.disposition, "report");
    assert_eq!(reports.violations[1].blocked_uri, "eval");
    let err = p.admin.csp_reports("nope/staging").await.unwrap_err();
    assert!(err.to_string().contains("no route `nope/staging`"), "{err}");
    p.stop().await.unwrap();
}

// === rate limits ===

#[tokio::test]
async fn rate_limit_per_client_ip_with_retry_after_and_refill() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("web").await;
    let p = TestProxy::start(dir.path()).await;
    // One token every 2 s: even on a slow machine a burst of 10
    // requests outruns the refill.
    let r = route("app/web")
        .host("app.test")
        .to(backend.addr)
        .rate_limit(0.5, 3);
    p.admin.set_table(&table().route(r).build()).await.unwrap();

    let one = localhost();
    let two: IpAddr = "127.0.0.2".parse().unwrap();
    let mut statuses = Vec::new();
    let mut limited = None;
    // A burst well over the limit: the first 3 pass (a refill during a
    // slow burst may let another through), the rest get 429.
    for _ in 0..10 {
        let r = send_from(one, p.addr, Method::GET, "/", &[], b"").await;
        statuses.push(r.status);
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
        }
    }
    assert!(
        statuses[..3].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(refused >= 1, "{statuses:?}");
    let limited = limited.unwrap();
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let id = limited.headers["x-request-id"].to_str().unwrap();
    assert!(limited.text().contains(id), "{}", limited.text());
    assert!(
        limited.text().contains("Too many requests"),
        "{}",
        limited.text()
    );

    // Another client address has its own bucket.
    let other = send_from(two, p.addr, Method::GET, "/", &[], b"").await;
    assert_eq!(other.status, StatusCode::OK);

    // Tokens refill: the first client gets through again.
    // Polled every 100 ms: the bucket refills one token in 2 s.
    eventually_every(
        "the first client's bucket to refill",
        Duration::from_millis(100),
        EVENTUALLY,
        || async {
            send_from(one, p.addr, Method::GET, "/", &[], b"")
                .await
                .status
                == StatusCode::OK
        },
    )
    .await;

    let metrics = p.admin.metrics().await.unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("gantry_proxy_rate_limited_total{route=\"app/web\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let counted: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(counted >= refused, "{line}");
    p.stop().await.unwrap();
}

// === limits ===

#[tokio::test]
async fn oversized_request_head_gets_431() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("web").await;
    let mut cfg = config(dir.path());
    cfg.max_header_size = 16 << 10;
    let p = TestProxy::start_with(cfg).await;
    p.admin
        .set_table(
            &table()
                .route(route("app/web").host("app.test").to(backend.addr))
                .build(),
        )
        .await
        .unwrap();
    // Under the limit: served.
    let small = "a".repeat(8 << 10);
    let r = send_from(
        localhost(),
        p.addr,
        Method::GET,
        "/",
        &[("x-big", &small)],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let big = "a".repeat(64 << 10);
    let req = format!("GET / HTTP/1.1\r\nhost: app.test\r\nx-big: {big}\r\n\r\n");
    // The proxy may answer and close before it read everything.
    let _ = s.write_all(req.as_bytes()).await;
    let answer = String::from_utf8_lossy(&read_to_close(&mut s).await).to_string();
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "expected 431, got {answer:?}"
    );
    p.stop().await.unwrap();
}

#[tokio::test]
async fn bodies_over_max_body_get_413() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("web").await;
    let p = TestProxy::start(dir.path()).await;
    let limited = route("app/web")
        .host("app.test")
        .to(backend.addr)
        .max_body(64 << 10);
    let unreachable = route("app/dead")
        .host("dead.test")
        .to(dead_addr())
        .max_body(1024);
    p.admin
        .set_table(&table().route(limited).route(unreachable).build())
        .await
        .unwrap();
    let c = client();

    // Within the limit: the app gets it.
    let ok = send(
        &c,
        &p,
        Method::POST,
        "app.test",
        "/upload",
        &[],
        Bytes::from(vec![b'x'; 60 << 10]),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.text(), (60 << 10).to_string());

    // A declared length over the limit: 413 before the backend is
    // contacted (this route's backend is down: a contact would be 502).
    let r = send(
        &c,
        &p,
        Method::POST,
        "dead.test",
        "/upload",
        &[],
        Bytes::from(vec![b'x'; 2048]),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert!(
        r.text().contains("larger than route `app/dead` accepts"),
        "{}",
        r.text()
    );

    // A chunked body that grows past the limit while streaming.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let chunk = vec![b'y'; 40 << 10];
    let mut req = b"POST /upload HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\n\
          transfer-encoding: chunked\r\n\r\n"
        .to_vec();
    for _ in 0..2 {
        req.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend(&chunk);
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    let _ = s.write_all(&req).await;
    let answer = String::from_utf8_lossy(&read_to_close(&mut s).await).to_string();
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "expected 413, got {answer:?}"
    );
    assert!(backend.received.lock().unwrap().len() <= 60 << 10);

    let metrics = p.admin.metrics().await.unwrap();
    assert!(
        metrics.contains("gantry_proxy_body_too_large_total{route=\"app/web\"} 1"),
        "{metrics}"
    );
    p.stop().await.unwrap();
}

#[tokio::test]
async fn slow_request_headers_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("web").await;
    let mut cfg = config(dir.path());
    cfg.header_read_timeout = Duration::from_millis(500);
    let p = TestProxy::start_with(cfg).await;
    p.admin
        .set_table(
            &table()
                .route(route("app/web").host("app.test").to(backend.addr))
                .build(),
        )
        .await
        .unwrap();
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\n")
        .await
        .unwrap();
    // A slowloris client: one header line at a time, never the end of the
    // head. The proxy must close the connection long before the 600 lines.
    let mut closed = false;
    for i in 0..600 {
        // The slowness is what is tested.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => panic!("unexpected answer {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
    assert!(closed, "a slow client kept its connection");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn idle_client_connections_are_closed_but_waiting_requests_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("web").await;
    let mut cfg = config(dir.path());
    cfg.idle_timeout = Duration::from_millis(300);
    cfg.header_read_timeout = Duration::from_secs(60);
    let p = TestProxy::start_with(cfg).await;
    p.admin
        .set_table(
            &table()
                .route(route("app/web").host("app.test").to(backend.addr))
                .build(),
        )
        .await
        .unwrap();

    // A request that waits for the backend longer than the idle timeout
    // is answered.
    let addr = p.addr;
    let held =
        tokio::spawn(
            async move { send_from(localhost(), addr, Method::GET, "/hold", &[], b"").await },
        );
    backend.wait_entered(1).await;
    // Kept waiting three idle timeouts: the wait is what is tested.
    tokio::time::sleep(Duration::from_millis(900)).await;
    backend.release();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);

    // A keep-alive connection with nothing to do is closed.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&read_to_close(&mut s).await).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(!answer.contains("connection: close"), "{answer:?}");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn hsts_is_sent_on_https_requests_only() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("web").await;
    let p = TestProxy::start(dir.path()).await;
    let r = route("app/web")
        .host("app.test")
        .to(backend.addr)
        .headers(SecurityHeaders::default());
    p.admin.set_table(&table().route(r).build()).await.unwrap();
    // An HTTP/2 request whose `:scheme` is https (what a TLS listener
    // hands over): HSTS is added.
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = "https://app.test/".parse().unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["strict-transport-security"],
        gantry_proxy::DEFAULT_HSTS
    );
    // The same over plain http: none.
    let plain = get(&client(), &p, "app.test", "/").await;
    assert!(!plain.headers.contains_key("strict-transport-security"));
    p.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_h2_header_list_gets_431() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("web").await;
    let mut cfg = config(dir.path());
    cfg.max_header_size = 16 << 10;
    let p = TestProxy::start_with(cfg).await;
    p.admin
        .set_table(
            &table()
                .route(route("app/web").host("app.test").to(backend.addr))
                .build(),
        )
        .await
        .unwrap();
    let c = h2_client();
    // Over the limit (but under 4× it, past which h2 ends the whole
    // connection with GOAWAY ENHANCE_YOUR_CALM): 431 for this stream.
    let big = "a".repeat(20 << 10);
    let r = send(
        &c,
        &p,
        Method::GET,
        "app.test",
        "/",
        &[("x-big", &big)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // The connection stays usable for a request of normal size.
    let ok = get(&c, &p, "app.test", "/").await;
    assert_eq!(ok.status, StatusCode::OK);
    p.stop().await.unwrap();
}

#[tokio::test]
async fn a_route_connect_timeout_uses_its_own_client() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("web").await;
    let p = TestProxy::start(dir.path()).await;
    let r = route("app/web")
        .host("app.test")
        .to(backend.addr)
        .connect_timeout_ms(1234);
    let dead = route("app/dead")
        .host("dead.test")
        .to(dead_addr())
        .connect_timeout_ms(1234);
    p.admin
        .set_table(&table().route(r).route(dead).build())
        .await
        .unwrap();
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &p, "app.test", "/").await.backend(), "web");
    }
    let r = get(&c, &p, "dead.test", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.text().contains("Cannot connect"), "{}", r.text());

    let zero = route("app/web")
        .host("app.test")
        .to(backend.addr)
        .connect_timeout_ms(0);
    let err = p
        .admin
        .set_table(&table().route(zero).build())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("connect_timeout_ms must be more than 0"),
        "{err}"
    );
    p.stop().await.unwrap();
}
