//! Bounded over time: many deploys leave the proxy's memory and its
//! `/metrics` series flat.
//!
//! The proxy runs as a process of its own (this test binary started again
//! with `--ignored --exact proxy_process`), so its RSS, read from
//! `/proc/<pid>/status`, is the proxy's alone, not the test's backends and
//! clients. The test drives it as the control plane does: through its
//! admin socket, one blue-green deploy after another, each with a real
//! backend instance (a new port every time) that gets real requests.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use gantry_proxy::{AdminClient, Proxy, Table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

mod support;
use support::{SetBuilder, route, set, table};

const CHILD_ENV: &str = "GANTRY_PROXY_TEST_CHILD_DIR";

/// The proxy process: run by `bounded_over_a_thousand_deploys` only (it
/// sets the directory); serves until its stdin closes.
#[test]
#[ignore = "the proxy process of bounded_over_a_thousand_deploys"]
fn proxy_process() {
    let dir = std::env::var(CHILD_ENV).expect("started by bounded_over_a_thousand_deploys");
    let dir = std::path::PathBuf::from(dir);
    let mut config = support::config(&dir);
    // Retired sets leave the registry as soon as they have drained (5 min
    // in production).
    config.retired_stats_grace = Duration::ZERO;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let proxy = Proxy::bind(config).await.unwrap();
        println!("listening {}", proxy.local_addrs()[0]);
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
        });
        proxy
            .serve(async move {
                let _ = stdin_closed.await;
            })
            .await
            .unwrap();
    });
}

/// The proxy process; killed when dropped (a failed test leaves nothing).
struct ProxyProcess {
    child: Child,
    addr: SocketAddr,
    admin: AdminClient,
}

impl ProxyProcess {
    fn start(dir: &std::path::Path) -> ProxyProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "proxy_process", "--nocapture"])
            .env(CHILD_ENV, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // The harness' own lines come first; the proxy's says where it is.
        // Read on a thread that keeps reading its output, so it never
        // blocks on a full pipe.
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("listening ") {
                    let _ = tx.send(a.to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the proxy process did not say where it listens within 60 s (or ended)")
            .parse()
            .unwrap();
        ProxyProcess {
            child,
            addr,
            admin: AdminClient::new(dir.join("admin.sock")),
        }
    }

    /// VmRSS, KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One instance of a release: answers every request with `ok` and closes
/// the connection, as an app that is stopped after its set drains leaves
/// no connection behind (the proxy's pool would otherwise hold idle
/// connections to every old instance until its 60 s idle timeout, which is
/// time-bounded, not what this test measures).
struct Instance {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Instance {
    async fn start() -> Instance {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Instance { addr, task }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The samples lines of a Prometheus text (its series), not the comments.
fn series(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

fn deploy_table(version: u64, sets: Vec<SetBuilder>) -> Table {
    let route = sets
        .into_iter()
        .fold(route("hello/production"), |r, s| r.set(s));
    table().version(version).route(route).build()
}

/// 1,000 blue-green deploys of one route, each a new set `r<N>` on a new
/// instance: the table gets `r<N>` at 100 beside `r<N-1>` at 0, a few
/// requests go to `r<N>`, then `r<N-1>` leaves the table (drained). After
/// a warm-up of 100 deploys and at the end, the proxy's `/metrics` has the
/// same number of series (41: a retired set's are dropped once it
/// drained, an instance's once no table lists it), and its RSS grew by
/// less than 2 MiB (measured: +44 KiB). With the sets kept (a grace of an
/// hour), every deploy added 31 series for good (3,141 after 100 deploys,
/// 31,041 after 1,000) and the RSS grew by 13.1 MiB over the 900 deploys
/// (~15 KiB each). About 40 s in a debug build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_over_a_thousand_deploys() {
    const DEPLOYS: u64 = 1_000;
    const WARM_UP: u64 = 100;
    const REQUESTS: usize = 3;
    /// RSS growth allowed after the warm-up. Allocator arenas and the
    /// pools settle in the warm-up; what is left is noise (seen: +44 KiB),
    /// far below what keeping every set would add (13.1 MiB).
    const RSS_MARGIN_KIB: u64 = 2 * 1024;

    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::start(dir.path());
    let client = support::client();
    let url: hyper::Uri = format!("http://{}/", proxy.addr).parse().unwrap();

    let mut current = Instance::start().await;
    proxy
        .admin
        .set_table(&deploy_table(0, vec![set("r0").to(current.addr)]))
        .await
        .unwrap();
    let mut at_warm_up = None;
    for n in 1..=DEPLOYS {
        let next = Instance::start().await;
        let (old, new) = (format!("r{}", n - 1), format!("r{n}"));
        proxy
            .admin
            .set_table(&deploy_table(
                2 * n - 1,
                vec![
                    set(&old).to(current.addr).weight(0),
                    set(&new).to(next.addr),
                ],
            ))
            .await
            .unwrap();
        for _ in 0..REQUESTS {
            let mut req = hyper::Request::new(http_body_util::Full::new(Bytes::new()));
            *req.uri_mut() = url.clone();
            let resp = client.request(req).await.unwrap();
            assert_eq!(resp.status(), 200, "deploy {n}");
            let body = http_body_util::BodyExt::collect(resp.into_body()).await;
            assert_eq!(body.unwrap().to_bytes(), "ok");
        }
        // As the control plane does before it retires a set.
        support::eventually(&format!("set {old} to drain"), || async {
            proxy
                .admin
                .drained("hello/production", &old)
                .await
                .is_ok_and(|d| d.drained)
        })
        .await;
        proxy
            .admin
            .set_table(&deploy_table(2 * n, vec![set(&new).to(next.addr)]))
            .await
            .unwrap();
        current = next;
        if n == WARM_UP || n == DEPLOYS {
            let metrics = proxy.admin.metrics().await.unwrap();
            let stats = proxy.admin.stats().await.unwrap();
            assert_eq!(stats.sets.len(), 1, "deploy {n}: only r{n} is kept");
            assert_eq!(stats.instances.len(), 1, "deploy {n}: only r{n}'s instance");
            let served = stats.set("hello/production", &new).unwrap();
            assert_eq!(served.requests.c2xx, REQUESTS as u64);
            let sample = (series(&metrics), proxy.rss_kib());
            eprintln!(
                "after {n} deploys: {} series, RSS {} KiB",
                sample.0, sample.1
            );
            if n == WARM_UP {
                at_warm_up = Some(sample);
            }
        }
    }
    let (series_before, rss_before) = at_warm_up.unwrap();
    let metrics = proxy.admin.metrics().await.unwrap();
    assert_eq!(series(&metrics), series_before, "{metrics}");
    let rss_after = proxy.rss_kib();
    assert!(
        rss_after <= rss_before + RSS_MARGIN_KIB,
        "RSS grew from {rss_before} KiB to {rss_after} KiB over {} deploys",
        DEPLOYS - WARM_UP
    );
}
