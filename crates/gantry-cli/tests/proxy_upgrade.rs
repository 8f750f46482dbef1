//! `gantry proxy upgrade`: the running proxy process hands its sockets to
//! a new process of the same binary, under steady keep-alive load, three
//! times in a row, without a failed request.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use support::{OutputInTime, alive, in_time};

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Connection-level errors before any response byte (the connection
    /// was closed as the request went out), retried on a new connection.
    retried: AtomicU64,
}

async fn connect(port: u16) -> std::io::Result<SendRequest<Empty<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One keep-alive client: sends `GET path` (Host `host`) in a loop until
/// `stop`, reconnecting when the proxy closed the connection; `once`:
/// a single request. Returns the last body.
async fn client(
    port: u16,
    host: &'static str,
    path: &'static str,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    once: bool,
) -> String {
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    let mut last = String::new();
    loop {
        if !once && stop.load(SeqCst) {
            return last;
        }
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match connect(port).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    eprintln!("connect failed: {e}");
                    counts.failed.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let s = sender.as_mut().unwrap();
        if s.ready().await.is_err() {
            sender = None; // closed gracefully before we sent anything
            continue;
        }
        let req = Request::get(path)
            .header("host", host)
            .body(Empty::new())
            .unwrap();
        match s.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                match resp.into_body().collect().await {
                    Ok(body) if status == 200 => {
                        counts.ok.fetch_add(1, SeqCst);
                        last = String::from_utf8_lossy(&body.to_bytes()).to_string();
                    }
                    Ok(body) => {
                        eprintln!("status {status}: {:?}", body.to_bytes());
                        counts.failed.fetch_add(1, SeqCst);
                    }
                    Err(e) => {
                        eprintln!("body error: {e}");
                        counts.failed.fetch_add(1, SeqCst);
                    }
                }
                if once {
                    return last;
                }
            }
            // The proxy closed the idle connection just as the request
            // went out: no response byte came; retry on a new connection
            // (what browsers do for idempotent requests).
            Err(e) if e.is_canceled() || e.is_incomplete_message() => {
                counts.retried.fetch_add(1, SeqCst);
                sender = None;
            }
            Err(e) => {
                eprintln!("request error: {e}");
                counts.failed.fetch_add(1, SeqCst);
                sender = None;
            }
        }
    }
}

/// One HTTPS request for `app` (HTTP/1.1, trusting `cert`); the body.
async fn tls_get(port: u16, cert: &[u8]) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert.to_vec()))
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("app".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "app")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).to_string()
}

#[test]
fn upgrade_three_times_under_keep_alive_load_loses_no_request() {
    // Every proxy process of this test names the state directory: the
    // upgraded ones (no children of the test) are killed with it if the
    // test fails.
    let state = support::ReapedDir::new();
    let backend = support::HelloApp::start(&[("APP_VERSION", "v1")]);
    let backend_port = backend.port;
    let (proxy, port, tls_port, cert) = support::start_proxy_with_tls(state.path(), "app");
    let socket = state.path().join("admin.sock");
    let admin = gantry_proxy::AdminClient::new(&socket);
    let table = gantry_proxy::Table::from_json(
        format!(
            r#"{{"version": 1, "routes": [
                {{"id": "hello/production", "hosts": ["app"],
                  "sets": [{{"name": "stable", "weight": 100, "instances": ["127.0.0.1:{backend_port}"]}}]}},
                {{"id": "hello/slow", "hosts": ["slow"],
                  "sets": [{{"name": "stable", "weight": 100, "instances": ["127.0.0.1:{backend_port}"]}}]}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    support::block_on(&rt, "PUT /table", admin.set_table(&table)).unwrap();

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut pid = proxy.child.id();
    let mut pids = vec![pid];
    let long = Duration::from_secs(60);
    let oks = |c: &Arc<Counts>| {
        let c = c.clone();
        move || format!("{} ok, {} failed", c.ok.load(SeqCst), c.failed.load(SeqCst))
    };
    // The whole upgrade sequence, within a deadline of its own.
    rt.block_on(in_time(
        "three upgrades under load",
        Duration::from_secs(300),
        String::new,
        async {
            // Wait for the app through the proxy.
            let probe = Arc::new(Counts::default());
            in_time("an answer through the proxy", long, oks(&probe), async {
                while probe.ok.load(SeqCst) == 0 {
                    client(port, "app", "/", probe.clone(), stop.clone(), true).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            let load: Vec<_> = (0..4)
                .map(|_| {
                    tokio::spawn(client(
                        port,
                        "app",
                        "/",
                        counts.clone(),
                        stop.clone(),
                        false,
                    ))
                })
                .collect();
            for round in 0..3 {
                let before = counts.ok.load(SeqCst);
                in_time("50 more answers under load", long, oks(&counts), async {
                    while counts.ok.load(SeqCst) < before + 50 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await;
                // A slow request in flight on the old process during the upgrade.
                let slow_counts = Arc::new(Counts::default());
                let slow = tokio::spawn(client(
                    port,
                    "slow",
                    "/slow?ms=1500",
                    slow_counts.clone(),
                    stop.clone(),
                    true,
                ));
                support::eventually_async(
                    "the slow request in flight on the proxy",
                    long,
                    Duration::from_millis(10),
                    || async {
                        let stats = admin.stats().await.unwrap();
                        match stats.set("hello/slow", "stable") {
                            Some(s) if s.in_flight >= 1 => Ok(()),
                            other => Err(format!("{other:?}")),
                        }
                    },
                )
                .await;
                let socket = socket.clone();
                let out = tokio::task::spawn_blocking(move || {
                    Command::new(support::BIN)
                        .args(["proxy", "upgrade", "--admin-socket"])
                        .arg(&socket)
                        .output_in_time()
                        .unwrap()
                })
                .await
                .unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout).to_string();
                assert!(
                    out.status.success(),
                    "round {round}: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let (old, new) = stdout
                    .trim()
                    .strip_prefix("proxy upgraded: old pid ")
                    .and_then(|r| r.split_once(", new pid "))
                    .map(|(o, n)| (o.parse::<u32>().unwrap(), n.parse::<u32>().unwrap()))
                    .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
                assert_eq!(
                    old, pid,
                    "round {round}: the upgrade was served by pid {old}"
                );
                assert_ne!(new, old);
                pid = new;
                pids.push(new);
                // The slow request on the old process completes.
                let body = slow.await.unwrap();
                assert_eq!(slow_counts.ok.load(SeqCst), 1, "round {round}");
                assert_eq!(slow_counts.failed.load(SeqCst), 0, "round {round}");
                assert!(body.contains("slept 1500 ms"), "{body}");
                // The old process exits once its connections are done.
                let old_pid = old;
                support::eventually_async(
                    "the old proxy process to exit",
                    long,
                    Duration::from_millis(20),
                    || async move {
                        match alive(old_pid) {
                            true => Err(format!("pid {old_pid} still runs")),
                            false => Ok(()),
                        }
                    },
                )
                .await;
            }
            let before = counts.ok.load(SeqCst);
            in_time(
                "50 more answers after the upgrades",
                long,
                oks(&counts),
                async {
                    while counts.ok.load(SeqCst) < before + 50 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            )
            .await;
            // The TLS listener was handed over too.
            let body = tls_get(tls_port, &cert).await;
            assert!(body.contains("hello"), "{body}");
            stop.store(true, SeqCst);
            for t in load {
                t.await.unwrap();
            }
        },
    ));
    let (ok, failed, retried) = (
        counts.ok.load(SeqCst),
        counts.failed.load(SeqCst),
        counts.retried.load(SeqCst),
    );
    eprintln!(
        "upgrade under load: {ok} requests ok, {failed} failed, {retried} retried after a \
         connection closed as the request went out; pids {pids:?}"
    );
    assert_eq!(failed, 0);
    // The old proxy sends `Connection: close` before it closes idle
    // connections: no client had to retry.
    assert_eq!(retried, 0, "requests that met a closing connection");
    assert!(ok >= 200);
    // The last process serves the table it loaded, and is stopped cleanly.
    assert!(alive(pid));
    let stats = support::block_on(&rt, "GET /stats", admin.stats()).unwrap();
    assert!(stats.set("hello/production", "stable").is_some());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    support::wait_gone(pid, "the last proxy after SIGTERM", Duration::from_secs(30));
    drop(proxy);
    drop(backend);
}

#[test]
fn tls_flags_reach_the_proxy_and_bad_files_are_named() {
    let state = tempfile::tempdir().unwrap();
    let missing = state.path().join("missing.crt");
    let out = Command::new(support::BIN)
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
        ])
        .arg("--tls-cert")
        .arg(&missing)
        .arg("--tls-key")
        .arg(state.path().join("missing.key"))
        .arg("--state-dir")
        .arg(state.path())
        .output_in_time()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot read the certificate file `{}`",
            missing.display()
        )),
        "{stderr}"
    );
    // --tls-cert needs --tls-key.
    let out = Command::new(support::BIN)
        .args(["proxy", "--tls-cert", "/x.crt", "--state-dir"])
        .arg(state.path())
        .output_in_time()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}
