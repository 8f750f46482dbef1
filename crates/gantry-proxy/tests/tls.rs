//! The listener layer: TLS with certificates from files chosen by SNI,
//! ALPN, redirect to HTTPS, PROXY protocol, the connection cap. Real
//! sockets, real rustls clients, real backends.

mod support;
mod tls_support;

use std::net::SocketAddr;
use std::time::Duration;

use gantry_proxy::{AdminClient, Proxy, ProxyConfig, ProxyError};
use hyper::Method;
use support::{Backend, client, get, route, table};
use tls_support::{Ca, tls_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Running {
    plain: SocketAddr,
    tls: SocketAddr,
    admin: AdminClient,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), ProxyError>>,
}

impl Running {
    async fn start(mut config: ProxyConfig) -> Running {
        config.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
        let proxy = Proxy::bind(config).await.unwrap();
        let plain = proxy.local_addrs()[0];
        let tls = proxy.tls_addrs()[0];
        let admin = proxy.admin_client();
        let (stop, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(proxy.serve(async move {
            let _ = rx.await;
        }));
        Running {
            plain,
            tls,
            admin,
            stop,
            handle,
        }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.handle.await.unwrap().unwrap();
    }

    fn as_test_proxy_url(&self, path: &str) -> String {
        format!("http://{}{}", self.plain, path)
    }
}

async fn plain_get(addr: SocketAddr, host: &str, path: &str) -> (u16, hyper::HeaderMap, String) {
    let mut req = hyper::Request::new(http_body_util::Full::new(bytes::Bytes::new()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
    req.headers_mut().insert("host", host.parse().unwrap());
    let resp = client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_files_are_chosen_by_sni_and_alpn_picks_h2_or_http1() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let (a_crt, a_key, a_der) = ca.leaf(dir.path(), "a", &["a.test"]);
    let (b_crt, b_key, b_der) = ca.leaf(dir.path(), "b", &["*.b.test"]);
    let (d_crt, d_key, d_der) = ca.leaf(dir.path(), "default", &["default.test"]);
    let mut config = support::config(dir.path());
    config.tls_default_cert = Some(d_crt);
    config.tls_default_key = Some(d_key);
    let proxy = Running::start(config).await;
    let backend = Backend::start("app").await;
    let ra = route("a")
        .host("a.test")
        .to(backend.addr)
        .tls_files(&a_crt, &a_key);
    let rb = route("b")
        .host("*.b.test")
        .to(backend.addr)
        .tls_files(&b_crt, &b_key);
    proxy
        .admin
        .set_table(&table().route(ra).route(rb).build())
        .await
        .unwrap();
    let roots = [ca.der()];

    let r = tls_get(proxy.tls, &roots, "a.test", &[b"h2", b"http/1.1"], "/x")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(r.cert, a_der);
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");

    let r = tls_get(proxy.tls, &roots, "x.b.test", &[b"http/1.1"], "/y")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(r.cert, b_der);
    assert_eq!(r.json()["path"], "/y");

    // No route certificate for the name: the default one (and no route: 404).
    let r = tls_get(proxy.tls, &roots, "default.test", &[], "/")
        .await
        .unwrap();
    assert_eq!(r.cert, d_der);
    assert_eq!(r.status, 404);

    // Plain HTTP still works and says so.
    let (status, _, body) = plain_get(proxy.plain, "a.test", "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"x-forwarded-proto\":\"http\""), "{body}");

    // /certs and the expiry gauge.
    let (status, certs) = proxy.admin.raw(Method::GET, "/certs", None).await.unwrap();
    assert_eq!(status, 200);
    let certs: serde_json::Value = serde_json::from_slice(&certs).unwrap();
    let hosts: Vec<&str> = certs
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["*.b.test", "*default*", "a.test"]);
    assert!(certs[2]["not_after"].as_i64().unwrap() > certs[2]["not_before"].as_i64().unwrap());
    let metrics = proxy.admin.metrics().await.unwrap();
    assert!(
        metrics.contains("gantry_proxy_tls_cert_expiry_seconds{host=\"a.test\",source=\"files\"}"),
        "{metrics}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn bad_certificate_files_are_refused_naming_the_route_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let (a_crt, _a_key, _) = ca.leaf(dir.path(), "a", &["a.test"]);
    let (_, other_key, _) = ca.leaf(dir.path(), "other", &["other.test"]);
    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.key");
    // Found by fuzzing the table: paths that are no regular file, or a
    // huge one, were read to the end (`/dev/zero` never ends; a FIFO
    // waits for a writer forever).
    let huge = dir.path().join("huge.crt");
    std::fs::write(&huge, vec![b'-'; 1024 * 1024 + 1]).unwrap();
    let fifo = dir.path().join("fifo.key");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let proxy = Running::start(support::config(dir.path())).await;
    let backend = Backend::start("app").await;
    for (cert, key, needle) in [
        (
            a_crt.clone(),
            missing.clone(),
            format!("cannot read the private key file `{}`", missing.display()),
        ),
        (
            garbage.clone(),
            other_key.clone(),
            format!("`{}` has no `BEGIN CERTIFICATE` block", garbage.display()),
        ),
        (
            a_crt.clone(),
            other_key.clone(),
            format!(
                "`{}` does not fit the certificate file",
                other_key.display()
            ),
        ),
        (
            "/dev/zero".into(),
            other_key.clone(),
            "cannot read the certificate file `/dev/zero`: it is a device, FIFO or socket, \
             not a regular file"
                .to_string(),
        ),
        (
            a_crt.clone(),
            fifo.clone(),
            format!(
                "cannot read the private key file `{}`: it is a device, FIFO or socket",
                fifo.display()
            ),
        ),
        (
            dir.path().to_path_buf(),
            other_key.clone(),
            "it is a directory, not a regular file".to_string(),
        ),
        (
            huge.clone(),
            other_key.clone(),
            format!(
                "cannot read the certificate file `{}`: it is 1048577 bytes; a PEM certificate \
                 or key file is at most 1048576 bytes (1 MiB)",
                huge.display()
            ),
        ),
        (
            "relative.crt".into(),
            other_key.clone(),
            "path `relative.crt` must be absolute".to_string(),
        ),
    ] {
        let r = route("shop/prod")
            .host("a.test")
            .to(backend.addr)
            .tls_files(&cert, &key);
        let err = proxy
            .admin
            .set_table(&table().route(r).build())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("route `shop/prod`"), "{err}");
        assert!(err.contains(&needle), "missing {needle:?} in {err}");
    }
    // Wildcards cannot use ACME (HTTP-01/TLS-ALPN-01).
    let r = route("w").host("*.a.test").to(backend.addr).acme(None);
    let err = proxy
        .admin
        .set_table(&table().route(r).build())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("wildcards need DNS-01"), "{err}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_http_answers_308_except_acme_challenge_paths() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let (crt, key, _) = ca.leaf(dir.path(), "a", &["a.test"]);
    let proxy = Running::start(support::config(dir.path())).await;
    let backend = Backend::start("app").await;
    let ra = route("a")
        .host("a.test")
        .to(backend.addr)
        .redirect_http()
        .tls_files(&crt, &key);
    let rb = route("b").host("b.test").to(backend.addr);
    proxy
        .admin
        .set_table(&table().route(ra).route(rb).build())
        .await
        .unwrap();

    let (status, headers, _) = plain_get(proxy.plain, "a.test:8080", "/x/y?q=1&r=2").await;
    assert_eq!(status, 308);
    assert_eq!(headers["location"], "https://a.test/x/y?q=1&r=2");
    // ACME HTTP-01 paths are never redirected (none pending: the app answers).
    let (status, _, body) =
        plain_get(proxy.plain, "a.test", "/.well-known/acme-challenge/tok").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("/.well-known/acme-challenge/tok"), "{body}");
    // Other routes are not redirected; over TLS the route is served.
    let (status, _, _) = plain_get(proxy.plain, "b.test", "/").await;
    assert_eq!(status, 200);
    let r = tls_get(proxy.tls, &[ca.der()], "a.test", &[b"http/1.1"], "/z")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_names_the_https_port_when_it_is_not_443() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path());
    config.https_port = 8443;
    let proxy = Running::start(config).await;
    let backend = Backend::start("app").await;
    let ra = route("a").host("a.test").to(backend.addr).redirect_http();
    proxy
        .admin
        .set_table(&table().route(ra).build())
        .await
        .unwrap();
    let (status, headers, body) = plain_get(proxy.plain, "a.test:8080", "/p?q=1").await;
    assert_eq!(status, 308);
    assert_eq!(headers["location"], "https://a.test:8443/p?q=1");
    assert!(body.contains("https://a.test:8443/p?q=1"), "{body}");
    proxy.stop().await;
}

/// Sends raw bytes, reads until the proxy closes (`Connection: close`).
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).to_string()
}

/// A PROXY protocol v2 header: PROXY command, TCP over IPv6 from
/// `source`:`port` to [::1]:80.
/// A v1 and a v2 PROXY header on `addr` each reach the backend (the echo
/// app) as the client address: 203.0.113.5 and 2001:db8::7.
async fn proxy_headers_give_the_client_address(addr: SocketAddr) {
    let request = b"GET /pp HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let mut v1 = b"PROXY TCP4 203.0.113.5 127.0.0.1 40000 80\r\n".to_vec();
    v1.extend_from_slice(request);
    let answer = raw_exchange(addr, &v1).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("\"x-forwarded-for\":\"203.0.113.5\""),
        "{answer}"
    );
    let mut v2 = proxy_v2_tcp6("2001:db8::7", 40001);
    v2.extend_from_slice(request);
    let answer = raw_exchange(addr, &v2).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("\"x-forwarded-for\":\"2001:db8::7\""),
        "{answer}"
    );
}

fn proxy_v2_tcp6(source: &str, port: u16) -> Vec<u8> {
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend([0x21, 0x21, 0x00, 36]); // PROXY, TCP over IPv6
    v2.extend(source.parse::<std::net::Ipv6Addr>().unwrap().octets());
    v2.extend("::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    v2.extend(port.to_be_bytes());
    v2.extend(80u16.to_be_bytes());
    v2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_headers_give_the_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path());
    // `Running::start` configures 127.0.0.1:0 for both the plain and the
    // TLS listener: both are marked.
    config.proxy_protocol = vec!["127.0.0.1:0".parse().unwrap()];
    let log = dir.path().join("access.log");
    config.access_log = true;
    config.access_log_path = Some(log.clone());
    let proxy = Running::start(config).await;
    let backend = Backend::start("app").await;
    let r = route("a").host("a.test").to(backend.addr);
    proxy
        .admin
        .set_table(&table().route(r).build())
        .await
        .unwrap();
    let request = b"GET /pp HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";

    proxy_headers_give_the_client_address(proxy.plain).await;

    // Without a header the connection is closed without an answer.
    let answer = raw_exchange(proxy.plain, request).await;
    assert_eq!(answer, "");
    let answer = raw_exchange(
        proxy.plain,
        b"PROXY TCP4 nonsense\r\nGET / HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(answer, "");

    // The TLS listener expects the header too (before the handshake).
    let mut s = TcpStream::connect(proxy.tls).await.unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 40002 443\r\n")
        .await
        .unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_support::client_config(&[], &[])));
    // No certificate is configured: the handshake fails after the header
    // was accepted (the proxy answered with a TLS alert, not a close).
    let err = connector
        .connect("a.test".try_into().unwrap(), s)
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("unexpected end of file"), "{err}");

    proxy.stop().await;
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("203.0.113.5"), "{log}");
    assert!(log.contains("2001:db8::7"), "{log}");
}

/// A proxy on 0.0.0.0:80 for direct clients and on 10.0.0.5:8080 behind a
/// load balancer, in small: two plain listeners, only the second one
/// expects PROXY headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_only_on_the_listeners_configured_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path());
    // Two configured addresses that differ (both port 0): 127.0.0.2 is
    // loopback too on Linux.
    let direct: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let behind_lb: SocketAddr = "127.0.0.2:0".parse().unwrap();
    config.listen = vec![direct, behind_lb];
    config.proxy_protocol = vec![behind_lb];
    let log = dir.path().join("access.log");
    config.access_log = true;
    config.access_log_path = Some(log.clone());
    let proxy = Proxy::bind(config).await.unwrap();
    let (direct, behind_lb) = (proxy.local_addrs()[0], proxy.local_addrs()[1]);
    assert_eq!(behind_lb.ip().to_string(), "127.0.0.2");
    let admin = proxy.admin_client();
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(proxy.serve(async move {
        let _ = rx.await;
    }));
    let backend = Backend::start("app").await;
    let r = route("a").host("a.test").to(backend.addr);
    admin.set_table(&table().route(r).build()).await.unwrap();
    let request = b"GET /pp HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";

    // Behind the load balancer: v1 and v2 headers give the client address.
    proxy_headers_give_the_client_address(behind_lb).await;
    // There, a connection without a header is closed without an answer.
    let answer = raw_exchange(behind_lb, request).await;
    assert_eq!(answer, "");

    // Direct clients: a plain request works, with the connection's address.
    let answer = raw_exchange(direct, request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("\"x-forwarded-for\":\"127.0.0.1\""),
        "{answer}"
    );
    // A PROXY line there is no header but a bad request line: 400 (or a
    // close), and its address is never taken as the client's.
    let mut spoofed = b"PROXY TCP4 198.51.100.66 127.0.0.1 40003 80\r\n".to_vec();
    spoofed.extend_from_slice(request);
    let answer = raw_exchange(direct, &spoofed).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    assert!(!answer.contains("198.51.100.66"), "{answer}");
    // Nor is a v2 header.
    let mut spoofed = proxy_v2_tcp6("2001:db8::66", 40004);
    spoofed.extend_from_slice(request);
    let answer = raw_exchange(direct, &spoofed).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    assert!(!answer.contains("2001:db8::66"), "{answer}");

    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("203.0.113.5"), "{log}");
    assert!(log.contains("2001:db8::7"), "{log}");
    assert!(!log.contains("198.51.100.66"), "{log}");
    assert!(!log.contains("2001:db8::66"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_protocol_address_that_is_no_listener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path());
    config.proxy_protocol = vec!["127.0.0.1:8443".parse().unwrap()];
    let err = Proxy::bind(config).await.unwrap_err();
    assert!(
        matches!(&err, ProxyError::ProxyProtocolAddr { addr, .. } if addr.port() == 8443),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("127.0.0.1:8443"), "{msg}");
    assert!(
        msg.contains("add it with --listen/--tls-listen or drop it"),
        "{msg}"
    );
    // Nothing was created or bound: the state directory does not exist.
    assert!(!dir.path().join("state").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_above_max_connections_wait_for_a_free_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path());
    config.max_connections = Some(1);
    let proxy = Running::start(config).await;
    let backend = Backend::start("app").await;
    let r = route("a").host("a.test").to(backend.addr);
    proxy
        .admin
        .set_table(&table().route(r).build())
        .await
        .unwrap();

    // A holds the only slot: its request waits in the backend.
    let mut a = TcpStream::connect(proxy.plain).await.unwrap();
    a.write_all(b"GET /hold HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    backend.wait_entered(1).await;
    // B connects (the kernel queues it) but is not served while A is open.
    let mut b = TcpStream::connect(proxy.plain).await.unwrap();
    b.write_all(b"GET /b HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), b.read(&mut buf)).await;
    assert!(early.is_err(), "B was served above the cap: {early:?}");
    let stats = proxy.admin.stats().await.unwrap();
    let json = serde_json::to_value(&stats).unwrap().to_string();
    assert!(!json.contains("\"/b\""), "{json}");

    // A finishes and closes; B gets its turn.
    backend.release();
    let mut out = Vec::new();
    a.read_to_end(&mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    drop(a);
    let mut out = Vec::new();
    b.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"path\":\"/b\""), "{text}");
    // Unused helper check.
    let _ = proxy.as_test_proxy_url("/");
    let _ = get;
    proxy.stop().await;
}
