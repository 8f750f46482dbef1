//! `gantry proxy` flags of the streaming features: `--metrics-listen`
//! serves Prometheus text over TCP; a bad `--websocket-drain-grace` is
//! refused with a clear message. PROXY protocol per listener
//! (`--proxy-protocol-on`), also across `gantry proxy upgrade`.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use support::{OutputInTime, ProxyProcess, START_DEADLINE};

#[test]
fn metrics_listen_serves_prometheus_text() {
    let state = tempfile::tempdir().unwrap();
    let (proxy, mut lines) = ProxyProcess::spawn(
        Command::new(support::BIN)
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
            .arg(state.path()),
    );
    let metrics_port: u16 = lines
        .find(START_DEADLINE, |line| {
            let a = line.trim().strip_prefix("metrics: http://")?;
            a.strip_suffix("/metrics")?.rsplit(':').next()?.parse().ok()
        })
        .unwrap_or_else(|e| panic!("the proxy printed no metrics address: {e}"));
    let (status, body) = support::http_get(metrics_port, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("# TYPE gantry_proxy_requests_total counter"),
        "{body}"
    );
    // The same families as the admin socket's /metrics: certificates and
    // connections too.
    assert!(
        body.contains("# TYPE gantry_proxy_tls_cert_expiry_seconds gauge"),
        "{body}"
    );
    assert!(
        body.contains("gantry_proxy_open_connections{worker=\"0\"} "),
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
        .output_in_time()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`soon` is not a duration"), "{err}");
}

#[test]
fn a_bad_https_port_is_refused() {
    for (port, says) in [("0", "0 is not in 1..=65535"), ("https", "invalid digit")] {
        let out = Command::new(support::BIN)
            .args(["proxy", "--https-port", port])
            .output_in_time()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--https-port <PORT>"), "{err}");
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn proxy_protocol_on_an_address_that_is_no_listener_is_refused() {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(support::BIN)
        .args(["proxy", "--listen", "127.0.0.1:0", "--access-log", "off"])
        .args(["--proxy-protocol-on", "10.0.0.5:8080", "--state-dir"])
        .arg(state.path())
        .output_in_time()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: PROXY protocol is configured for 10.0.0.5:8080"),
        "{err}"
    );
    assert!(err.contains("listen: 127.0.0.1:0"), "{err}");
    assert!(
        err.contains("add it with --listen/--tls-listen or drop it"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"));
}

/// Sends `bytes` to `addr`, reads until the proxy closes (5 s at most).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

/// The marked listener reads PROXY headers, the other one does not: with
/// no route, a request that got through the listener is answered 404.
fn check_per_listener(direct: SocketAddr, behind_lb: SocketAddr, when: &str) {
    let request = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let mut v1 = b"PROXY TCP4 203.0.113.5 127.0.0.2 40000 8080\r\n".to_vec();
    v1.extend_from_slice(request);
    let answer = exchange(behind_lb, &v1);
    assert!(answer.starts_with("HTTP/1.1 404"), "{when}: {answer}");
    assert_eq!(
        exchange(behind_lb, request),
        "",
        "{when}: no header, no answer"
    );
    let answer = exchange(direct, request);
    assert!(answer.starts_with("HTTP/1.1 404"), "{when}: {answer}");
    let answer = exchange(direct, &v1);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{when}: a PROXY line on the direct listener: {answer}"
    );
}

/// The successor of `gantry proxy upgrade` is started with the same
/// arguments and takes the sockets in listener order, so each listener
/// keeps its PROXY protocol setting.
#[test]
fn proxy_protocol_per_listener_survives_an_upgrade() {
    // Every proxy process of this test names it: killed with it.
    let state = support::ReapedDir::new();
    let (mut proxy, listen, marked) =
        two_listener_proxy(state.path(), &["--proxy-protocol-on", "127.0.0.2:0"]);
    let (direct, behind_lb) = (listen[0], listen[1]);
    assert_eq!(behind_lb.ip().to_string(), "127.0.0.2");
    // The start-up lines say which listener expects the header.
    assert_eq!(marked, behind_lb.to_string());
    check_per_listener(direct, behind_lb, "before the upgrade");

    let out = Command::new(support::BIN)
        .args(["proxy", "upgrade", "--admin-socket"])
        .arg(state.path().join("admin.sock"))
        .output_in_time()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_pid: u32 = stdout
        .trim()
        .rsplit_once("new pid ")
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
    let successor = Successor(new_pid);
    // The old process leaves (it has no open connection), so every
    // connection from now on reaches the new one.
    support::wait_within(
        &mut proxy.child,
        "the old proxy after the upgrade",
        Duration::from_secs(30),
    );
    check_per_listener(direct, behind_lb, "after the upgrade");
    drop(successor);
}

/// `gantry proxy` on 127.0.0.1:0 and 127.0.0.2:0 with `extra` flags; its
/// two bound addresses and its "PROXY protocol header expected on" line.
fn two_listener_proxy(
    state: &std::path::Path,
    extra: &[&str],
) -> (support::ProxyProcess, Vec<SocketAddr>, String) {
    let (proxy, mut lines) = ProxyProcess::spawn(
        Command::new(support::BIN)
            .args([
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--listen",
                "127.0.0.2:0",
            ])
            .args(extra)
            .args(["--access-log", "off", "--state-dir"])
            .arg(state),
    );
    let mut listen = Vec::new();
    let marked = lines
        .find(START_DEADLINE, |line| {
            if let Some(a) = line.trim().strip_prefix("listen: http://") {
                listen.push(a.parse::<SocketAddr>().unwrap());
            }
            line.trim()
                .strip_prefix("PROXY protocol header expected on: ")
                .map(str::to_string)
        })
        .unwrap_or_else(|e| panic!("the proxy printed no PROXY protocol line: {e}"));
    assert_eq!(listen.len(), 2, "{listen:?}");
    (proxy, listen, marked)
}

/// The upgraded proxy (not this test's child): stopped when dropped, also
/// when an assertion failed.
struct Successor(u32);

impl Drop for Successor {
    /// SIGTERM, then (after 10 s) SIGKILL: it is gone when this returns.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0 as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while support::alive(self.0) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if support::alive(self.0) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// `--proxy-protocol` marks every listener; with `--proxy-protocol-on`
/// naming one of them too, the union is used (no duplicate, no error).
#[test]
fn proxy_protocol_without_a_value_marks_every_listener() {
    let state = tempfile::tempdir().unwrap();
    let (proxy, listen, marked) = two_listener_proxy(
        state.path(),
        &["--proxy-protocol", "--proxy-protocol-on", "127.0.0.2:0"],
    );
    // Both listeners, once each.
    assert_eq!(marked, format!("{}, {}", listen[0], listen[1]));
    let request = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    for addr in listen {
        let mut v1 = b"PROXY TCP4 203.0.113.5 127.0.0.1 40000 80\r\n".to_vec();
        v1.extend_from_slice(request);
        let answer = exchange(addr, &v1);
        assert!(answer.starts_with("HTTP/1.1 404"), "{addr}: {answer}");
        assert_eq!(exchange(addr, request), "", "{addr}: no header, no answer");
    }
    drop(proxy);
}
