//! End-to-end tests: each starts the real binary on a free port and talks
//! HTTP to it over plain `TcpStream`s.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hello-app");

/// A running app, killed when dropped.
struct App {
    child: Child,
    port: u16,
    stdout: Option<mpsc::Receiver<String>>,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn command(port: u16, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts the app and waits until its port accepts connections.
fn start(env: &[(&str, &str)]) -> App {
    let port = free_port();
    let mut cmd = command(port, env);
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let app = App {
        child,
        port,
        stdout: Some(rx),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "app did not start listening");
        thread::sleep(Duration::from_millis(10));
    }
    app
}

impl App {
    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    fn get(&self, path: &str) -> Resp {
        let mut s = self.connect();
        send(&mut s, "GET", path, &[("Connection", "close")], b"");
        read_response(&mut BufReader::new(s)).expect("a response")
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "app did not exit in time");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a stdout line containing all of `needles`.
    fn log_line(&self, needles: &[&str]) -> String {
        let rx = self.stdout.as_ref().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("log line not seen");
            if needles.iter().all(|n| line.contains(n)) {
                return line;
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn send(s: &mut TcpStream, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).unwrap();
}

/// Reads one response; `None` on a clean EOF before it starts.
fn read_response(r: &mut BufReader<TcpStream>) -> Option<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .expect("every response has Content-Length");
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    Some(Resp {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    })
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hello-app-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn basic_endpoints() {
    let app = start(&[
        ("APP_VERSION", "v7"),
        ("INSTANCE_ID", "3"),
        ("EXPOSE_ENV", "GREETING, OTHER"),
        ("GREETING", "hi there"),
        ("SECRET", "nope"),
    ]);
    let r = app.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hello from v7 (instance 3)\n");
    assert_eq!(r.header("x-instance-id"), Some("3"));
    assert_eq!(app.get("/health").body, "ok\n");
    assert_eq!(app.get("/readiness").status, 200);
    let v = app.get("/version");
    assert_eq!(v.header("content-type"), Some("application/json"));
    let pid = app.child.id();
    assert!(
        v.body.starts_with(&format!(
            "{{\"version\":\"v7\",\"instance\":\"3\",\"pid\":{pid},\"started_at\":1"
        )),
        "{}",
        v.body
    );
    assert_eq!(app.get("/env/GREETING").body, "hi there");
    assert_eq!(app.get("/env/SECRET").status, 404);
    assert_eq!(app.get("/env/OTHER").status, 404, "listed but unset");
    assert_eq!(app.get("/nope").status, 404);
    assert_eq!(app.get("/status/502").status, 502);
    assert_eq!(app.get("/child").status, 404);
    assert_eq!(app.get("/data").status, 404, "DATA_DIR unset");
    let r = app.get("/slow?ms=50");
    assert_eq!((r.status, r.body.as_str()), (200, "slept 50 ms\n"));

    let mut s = app.connect();
    send(&mut s, "POST", "/", &[("Connection", "close")], b"x");
    let r = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.status, 405);

    let mut s = app.connect();
    send(&mut s, "HEAD", "/", &[("Connection", "close")], b"");
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.contains("Content-Length: 27\r\n"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n"), "HEAD has no body: {raw}");
}

#[test]
fn keep_alive_and_pipelining() {
    let app = start(&[]);
    let s = app.connect();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for _ in 0..5 {
        send(&mut w, "GET", "/", &[], b"");
        let resp = read_response(&mut r).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("connection"), None);
    }
    // Two requests in one write, and a body on a keep-alive request.
    let pipelined = "GET /health HTTP/1.1\r\nHost: t\r\n\r\n\
                     POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc\
                     GET /version HTTP/1.1\r\nHost: t\r\n\r\n";
    w.write_all(pipelined.as_bytes()).unwrap();
    assert_eq!(read_response(&mut r).unwrap().body, "ok\n");
    assert_eq!(read_response(&mut r).unwrap().status, 404);
    assert_eq!(read_response(&mut r).unwrap().status, 200);
    // `Connection: close` is honoured: answer, then EOF.
    send(&mut w, "GET", "/", &[("Connection", "close")], b"");
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(
        read_response(&mut r).is_none(),
        "server closed the connection"
    );

    // HTTP/1.0 closes by default.
    let mut s = app.connect();
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(
        raw.starts_with("HTTP/1.1 200 OK\r\n") && raw.ends_with("ok\n"),
        "{raw}"
    );
}

#[test]
fn malformed_requests_get_400_and_close() {
    let app = start(&[]);
    for bad in [
        "GARBAGE\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "\x00\x01\x02 \x7f\r\n\r\n",
    ] {
        let mut s = app.connect();
        s.write_all(bad.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let raw = String::from_utf8_lossy(&raw);
        assert!(raw.starts_with("HTTP/1.1 400 "), "{bad:?} -> {raw}");
        assert!(raw.contains("Connection: close\r\n"), "{raw}");
    }
    // Oversized head.
    let mut s = app.connect();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let _ = s.write_all(big.as_bytes());
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 431 "));
    // Still serving.
    assert_eq!(app.get("/health").status, 200);
}

#[test]
fn data_files_and_chunked_uploads() {
    let dir = temp_dir("data");
    let app = start(&[("DATA_DIR", dir.to_str().unwrap())]);
    let mut s = app.connect();
    let mut r = BufReader::new(s.try_clone().unwrap());
    send(&mut s, "POST", "/data/note.txt", &[], b"hello data");
    assert_eq!(read_response(&mut r).unwrap().status, 201);
    s.write_all(
        b"PUT /data/chunked.bin HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: y\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut r).unwrap().body, "stored 12 bytes\n");
    send(&mut s, "GET", "/data/chunked.bin", &[], b"");
    assert_eq!(read_response(&mut r).unwrap().body, "hello, world");
    send(&mut s, "GET", "/data/note.txt", &[], b"");
    assert_eq!(read_response(&mut r).unwrap().body, "hello data");
    send(&mut s, "GET", "/data", &[], b"");
    let list = read_response(&mut r).unwrap().body;
    assert!(
        list.contains(r#"{"name":"chunked.bin","size":12},{"name":"note.txt","size":10}"#),
        "{list}"
    );
    send(&mut s, "GET", "/data/missing", &[], b"");
    assert_eq!(read_response(&mut r).unwrap().status, 404);
    send(&mut s, "GET", "/data/a%2Fb", &[], b"");
    assert_eq!(read_response(&mut r).unwrap().status, 400);
    assert_eq!(std::fs::read(dir.join("note.txt")).unwrap(), b"hello data");
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn readiness_delay() {
    let app = start(&[("READY_DELAY_MS", "700")]);
    let r = app.get("/readiness");
    assert_eq!((r.status, r.body.as_str()), (503, "not ready\n"));
    assert_eq!(app.get("/health").status, 200, "live while not ready");
    thread::sleep(Duration::from_millis(900));
    let r = app.get("/readiness");
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));

    let app = start(&[("FAIL_READINESS", "1")]);
    assert_eq!(app.get("/readiness").status, 503);
}

#[test]
fn liveness_failure() {
    let app = start(&[("FAIL_LIVENESS_AFTER_MS", "300")]);
    assert_eq!(app.get("/health").status, 200);
    thread::sleep(Duration::from_millis(400));
    assert_eq!(app.get("/health").status, 500);
}

#[test]
fn crash_after_requests() {
    let mut app = start(&[("CRASH_AFTER_REQUESTS", "3")]);
    assert_eq!(app.get("/health").status, 200);
    assert_eq!(app.get("/version").status, 200);
    assert_eq!(
        app.get("/").status,
        200,
        "the 3rd request is still answered"
    );
    let status = app.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(3));
}

#[test]
fn error_rate() {
    let app = start(&[("ERROR_RATE", "0.25")]);
    let s = app.connect();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut errors = 0;
    for _ in 0..400 {
        send(&mut w, "GET", "/", &[], b"");
        match read_response(&mut r).unwrap().status {
            200 => {}
            500 => errors += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert!((80..=120).contains(&errors), "{errors} errors in 400");
    // Only `/` is affected.
    assert_eq!(app.get("/health").status, 200);
}

#[test]
fn latency_injection() {
    let app = start(&[("LATENCY_MS", "150"), ("LATENCY_JITTER_MS", "50")]);
    let t = Instant::now();
    assert_eq!(app.get("/").status, 200);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(150), "{took:?}");
    let t = Instant::now();
    assert_eq!(app.get("/health").status, 200);
    assert!(t.elapsed() < Duration::from_millis(150));
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    let mut app = start(&[]);
    let mut s = app.connect();
    send(&mut s, "GET", "/slow?ms=1500", &[], b"");
    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    app.signal("TERM");
    app.log_line(&["\"shutting down\"", "SIGTERM"]);
    // The listener is closed at once: new connections are refused.
    thread::sleep(Duration::from_millis(100));
    assert!(
        TcpStream::connect(("127.0.0.1", app.port)).is_err(),
        "new connections refused while draining"
    );
    let r = read_response(&mut BufReader::new(s)).expect("in-flight request completes");
    assert_eq!((r.status, r.body.as_str()), (200, "slept 1500 ms\n"));
    assert_eq!(r.header("connection"), Some("close"));
    let status = app.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    app.log_line(&["\"shutdown complete\""]);
}

#[test]
fn sigterm_when_idle_exits_quickly() {
    let mut app = start(&[]);
    // An idle keep-alive connection must not hold up the exit.
    let mut s = app.connect();
    send(&mut s, "GET", "/", &[], b"");
    let _idle = read_response(&mut BufReader::new(s.try_clone().unwrap())).unwrap();
    let t = Instant::now();
    app.signal("TERM");
    assert_eq!(app.wait_exit(Duration::from_secs(3)).code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[test]
fn ignore_sigterm() {
    let app = start(&[("IGNORE_SIGTERM", "1")]);
    app.signal("TERM");
    app.log_line(&["ignoring"]);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(app.get("/health").status, 200);
    // Drop sends SIGKILL.
}

#[test]
fn json_request_log_with_request_id() {
    let app = start(&[("APP_VERSION", "v9"), ("INSTANCE_ID", "2")]);
    app.log_line(&["\"msg\":\"listening\""]);
    let mut s = app.connect();
    send(
        &mut s,
        "GET",
        "/health",
        &[("X-Request-Id", "req-abc-123"), ("Connection", "close")],
        b"",
    );
    let r = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.header("x-request-id"), Some("req-abc-123"));
    let line = app.log_line(&["req-abc-123"]);
    for part in [
        "{\"ts\":\"",
        "\"level\":\"info\"",
        "\"msg\":\"request\"",
        "\"method\":\"GET\"",
        "\"path\":\"/health\"",
        "\"status\":200",
        "\"duration_ms\":",
        "\"request_id\":\"req-abc-123\"",
        "\"version\":\"v9\"",
        "\"instance\":\"2\"",
    ] {
        assert!(line.contains(part), "{part} missing from {line}");
    }
    assert!(line.ends_with('}'));
    app.get("/");
    let line = app.log_line(&["\"path\":\"/\""]);
    assert!(line.contains("\"request_id\":null"), "{line}");
}

#[test]
fn startup_failures() {
    let out = Command::new(BIN).env_remove("PORT").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORT is required"));

    let out = command(0, &[]).env("PORT", "http").output().unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = command(free_port(), &[("ERROR_RATE", "2")])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ERROR_RATE"));

    let out = command(free_port(), &[("CRASH_ON_START", "1")])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.is_empty());
}

#[test]
fn startup_delay() {
    let port = free_port();
    let mut child = command(port, &[("STARTUP_DELAY_MS", "500")])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    thread::sleep(Duration::from_millis(200));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "not bound yet"
    );
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(5));
        thread::sleep(Duration::from_millis(10));
    }
    assert!(t.elapsed() >= Duration::from_millis(450));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn spawn_child_in_same_process_group() {
    let app = start(&[("SPAWN_CHILD", "1")]);
    let r = app.get("/child");
    assert_eq!(r.status, 200);
    let pid: u32 = r
        .body
        .trim()
        .trim_start_matches("{\"pid\":")
        .trim_end_matches('}')
        .parse()
        .unwrap();
    let pgid = |pid: u32| -> String {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the ")" closing the command name: state ppid pgrp ...
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(2).unwrap().to_string()
    };
    assert_eq!(pgid(pid), pgid(app.child.id()));
    // Clean up the grandchild; the app itself is killed on drop.
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

#[test]
fn memory_knobs() {
    let app = start(&[("ALLOC_MB", "32"), ("LEAK_MB_PER_SEC", "8")]);
    let rss_kb = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", app.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let first = rss_kb();
    assert!(first >= 32 * 1024, "ALLOC_MB is resident: {first} kB");
    thread::sleep(Duration::from_millis(2100));
    let later = rss_kb();
    assert!(
        later >= first + 12 * 1024,
        "leaks over time: {first} -> {later} kB"
    );
}

#[test]
fn sustained_concurrent_load() {
    let app = start(&[]);
    let port = app.port;
    let workers: Vec<_> = (0..32)
        .map(|_| {
            thread::spawn(move || {
                let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                for _ in 0..200 {
                    send(&mut w, "GET", "/", &[], b"");
                    assert_eq!(read_response(&mut r).unwrap().status, 200);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}
