//! `gantry proxy` flags of the streaming features: `--metrics-listen`
//! serves Prometheus text over TCP; a bad `--websocket-drain-grace` is
//! refused with a clear message.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn metrics_listen_serves_prometheus_text() {
    let state = tempfile::tempdir().unwrap();
    let child = Command::new(support::BIN)
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--access-log",
            "off",
            "--metrics-listen",
            "127.0.0.1:0",
            "--websocket-drain-grace",
            "5s",
            "--state-dir",
        ])
        .arg(state.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gantry proxy");
    let mut proxy = support::ProxyProcess { child, port: 0 };
    let mut lines = BufReader::new(proxy.child.stdout.take().unwrap()).lines();
    let metrics_port: u16 = loop {
        let line = lines.next().expect("proxy printed its addresses").unwrap();
        if let Some(a) = line.trim().strip_prefix("metrics: http://") {
            let addr = a.strip_suffix("/metrics").unwrap();
            break addr.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let (status, body) = support::http_get(metrics_port, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("# TYPE gantry_proxy_requests_total counter"),
        "{body}"
    );
    let (status, _) = support::http_get(metrics_port, "/table");
    assert_eq!(status, 404);
    drop(proxy);
}

#[test]
fn a_bad_drain_grace_is_refused() {
    let out = Command::new(support::BIN)
        .args(["proxy", "--websocket-drain-grace", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`soon` is not a duration"), "{err}");
}
