//! A real Prometheus server scrapes the proxy's metrics listener
//! (`metrics_listen`), and its query API sees the requests we sent.
//! Needs the `prometheus` binary (Debian package `prometheus`;
//! `scripts/test` installs it).

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use gantry_proxy::{AdminClient, Proxy, ProxyError};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use support::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound for Prometheus to start and scrape; only there so a broken
/// setup fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(180);

async fn http_get(c: &TestClient, url: &str) -> Option<(StatusCode, String)> {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = url.parse().unwrap();
    let resp = c.request(req).await.ok()?;
    let status = resp.status();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).to_string()))
}

struct Started {
    addr: SocketAddr,
    admin: AdminClient,
}

/// A proxy with a metrics listener on a free port.
async fn start_proxy(
    dir: &std::path::Path,
) -> (
    Started,
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<Result<(), ProxyError>>,
) {
    let mut cfg = config(dir);
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let proxy = Proxy::bind(cfg).await.unwrap();
    let metrics = proxy.metrics_addr().expect("metrics listener bound");
    let addr = proxy.local_addrs()[0];
    let admin = proxy.admin_client();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(proxy.serve(async move {
        let _ = rx.await;
    }));
    (Started { addr, admin }, metrics, tx, handle)
}

#[tokio::test]
async fn metrics_listener_serves_only_metrics_and_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, metrics, stop, handle) = start_proxy(dir.path()).await;
    let c = client();
    let (status, body) = http_get(&c, &format!("http://{metrics}/metrics"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("# TYPE gantry_proxy_requests_total counter"),
        "{body}"
    );
    let (status, body) = http_get(&c, &format!("http://{metrics}/healthz"))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    for path in ["/table", "/stats", "/drained?route=a&set=b"] {
        let (status, _) = http_get(&c, &format!("http://{metrics}{path}"))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

/// The Prometheus child, killed when dropped.
struct Prometheus {
    child: tokio::process::Child,
    url: String,
    log: std::path::PathBuf,
}

impl Prometheus {
    async fn start(dir: &std::path::Path, target: SocketAddr) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: gantry-proxy\n    scrape_interval: 1s\n    \
                 scrape_timeout: 1s\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let mut failures = Vec::new();
        // Prometheus takes its port as an argument: started on candidate
        // ports until it holds one itself.
        for _ in 0..PORT_ATTEMPTS {
            let port = candidate_port();
            let log_file = std::fs::File::create(&log).unwrap();
            let mut child = tokio::process::Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run `prometheus` ({e}); install it with `apt-get install prometheus` \
                         (scripts/test does)"
                    )
                });
            let pid = child.id().expect("prometheus is running");
            let bound = wait_bound(
                "prometheus",
                pid,
                || child.try_wait().ok().flatten().map(|s| s.to_string()),
                &[(Proto::Tcp, port)],
                // It binds its web port early in its start.
                Duration::from_secs(30),
            )
            .await;
            match bound {
                Ok(()) => {
                    return Prometheus {
                        child,
                        url: format!("http://127.0.0.1:{port}"),
                        log,
                    };
                }
                Err(why) => {
                    let _ = child.kill().await;
                    let out = std::fs::read_to_string(&log).unwrap_or_default();
                    failures.push(format!("{why}\n{out}"));
                }
            }
        }
        panic!(
            "prometheus did not start in {PORT_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `check` against Prometheus until it returns Some.
    async fn wait_for<T, F, Fut>(&mut self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let polled = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(v) = check().await {
                    return Ok(v);
                }
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Err(format!("prometheus exited with {status}"));
                }
                // Polled: Prometheus scrapes every second.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        match polled {
            Ok(Ok(v)) => v,
            Ok(Err(why)) => panic!("{what}: {why}\n{}", self.log()),
            Err(_) => panic!("{what}: gave up waiting\n{}", self.log()),
        }
    }
}

/// An instant query's single value, when there is exactly one series.
async fn query_one(c: &TestClient, prom: &str, q: &str) -> Option<String> {
    let url = format!("{prom}/api/v1/query?query={}", encode(q));
    let (status, body) = http_get(c, &url).await?;
    if status != StatusCode::OK {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let result = v["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str().map(str::to_string)
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_requests_latency_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("web").await;
    let (p, metrics, stop, handle) = start_proxy(dir.path()).await;
    p.admin
        .set_table(
            &table()
                .route(
                    route("app/web")
                        .host("app.test")
                        .set(set("blue").to(backend.addr)),
                )
                .build(),
        )
        .await
        .unwrap();
    let mut prom = Prometheus::start(dir.path(), metrics).await;
    let c = client();
    let base = prom.url.clone();

    // The target is scraped without errors.
    let targets_url = format!("{base}/api/v1/targets");
    let c2 = c.clone();
    prom.wait_for("target health up", || {
        let (c, url) = (c2.clone(), targets_url.clone());
        async move {
            let (status, body) = http_get(&c, &url).await?;
            if status != StatusCode::OK {
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let t = &v["data"]["activeTargets"][0];
            let error = t["lastError"].as_str().unwrap_or("");
            assert!(
                error.is_empty(),
                "Prometheus reports a scrape error: {error}"
            );
            (t["health"] == "up").then_some(())
        }
    })
    .await;

    const N_GET: u64 = 25;
    for i in 0..N_GET {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = format!("http://{}/item/{i}", p.addr).parse().unwrap();
        req.headers_mut()
            .insert("host", "app.test".parse().unwrap());
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
    }
    // Request bodies: 3 uploads of 1000 bytes.
    for _ in 0..3 {
        let mut req = Request::new(Full::new(Bytes::from(vec![b'x'; 1000])));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = format!("http://{}/upload", p.addr).parse().unwrap();
        req.headers_mut()
            .insert("host", "app.test".parse().unwrap());
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
    }
    const N: u64 = N_GET + 3;
    let q = "sum(gantry_proxy_requests_total{route=\"app/web\"})";
    let c3 = c.clone();
    let b = base.clone();
    prom.wait_for("the scraped request count", || {
        let (c, b) = (c3.clone(), b.clone());
        async move { (query_one(&c, &b, q).await? == N.to_string()).then_some(()) }
    })
    .await;
    let q2 = "gantry_proxy_requests_total{route=\"app/web\",set=\"blue\",class=\"2xx\"}";
    assert_eq!(query_one(&c, &base, q2).await.as_deref(), Some("28"));
    let qi = "gantry_proxy_request_bytes_total{route=\"app/web\",set=\"blue\"}";
    assert_eq!(query_one(&c, &base, qi).await.as_deref(), Some("3000"));

    // The latency histogram works with histogram_quantile.
    let hq = "histogram_quantile(0.9, sum by (le) \
              (gantry_proxy_request_duration_seconds_bucket{route=\"app/web\"}))";
    let p90: f64 = query_one(&c, &base, hq)
        .await
        .expect("histogram_quantile returned no series")
        .parse()
        .unwrap();
    assert!(p90.is_finite() && p90 > 0.0, "{p90}");

    // Bytes out per route and set, as the proxy counted them.
    let out = p.admin.stats().await.unwrap();
    let bytes_out = out.set("app/web", "blue").unwrap().bytes_out;
    assert!(bytes_out > 0);
    let qb = "gantry_proxy_response_bytes_total{route=\"app/web\",set=\"blue\"}";
    let c4 = c.clone();
    let b = base.clone();
    prom.wait_for("the scraped byte count", || {
        let (c, b) = (c4.clone(), b.clone());
        async move { (query_one(&c, &b, qb).await? == bytes_out.to_string()).then_some(()) }
    })
    .await;

    // Prometheus' own linter finds nothing to say about the exposition.
    let (_, text) = http_get(&c, &format!("http://{metrics}/metrics"))
        .await
        .unwrap();
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (package prometheus) runs");
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );

    drop(prom);
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}
