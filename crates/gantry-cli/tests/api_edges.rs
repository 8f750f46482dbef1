//! The API at its edges, over real TCP and the unix socket with raw HTTP:
//! authentication is decided before a body is read, every mutating call is
//! audited whatever its outcome (401, 413, malformed JSON), and every error
//! answer has the API's JSON shape `{"error": "..."}`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;
use support::TestServer;

const SECRET: &str = "/api/v1/apps/hello/envs/production/secrets/BIG";
const MAX_JSON: usize = 4 * 1024 * 1024;

/// A connection to the server, over TCP or the unix socket.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn tcp(server: &TestServer) -> Self {
        let s = TcpStream::connect(server.api.trim_start_matches("http://")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Conn::Tcp(s)
    }

    fn unix(server: &TestServer) -> Self {
        let s = UnixStream::connect(&server.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Conn::Unix(s)
    }

    fn try_clone(&self) -> Self {
        match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone().unwrap()),
            Conn::Unix(s) => Conn::Unix(s.try_clone().unwrap()),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    /// The `error` of the API's JSON error shape; fails the test otherwise.
    #[track_caller]
    fn error(&self) -> String {
        assert!(
            self.content_type.starts_with("application/json"),
            "not JSON: {self:?}"
        );
        let v: Value =
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"));
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no `error` string: {self:?}"))
            .to_string()
    }
}

/// Reads one response (headers, then `Content-Length` bytes of body).
fn read_answer(conn: &mut Conn) -> Answer {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = conn
            .read(&mut byte)
            .unwrap_or_else(|e| panic!("no answer ({e}); got {:?}", String::from_utf8_lossy(&raw)));
        assert!(
            n == 1,
            "connection closed before an answer: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let len: usize = header("content-length").parse().unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).unwrap();
    Answer {
        status,
        content_type: header("content-type"),
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Sends a request head and `body` (written from another thread, errors
/// ignored, so a server that stops reading cannot block the test), then
/// reads the answer.
fn call(mut conn: Conn, method: &str, path: &str, headers: &[&str], body: Vec<u8>) -> Answer {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: gantry\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    let mut writer = conn.try_clone();
    std::thread::spawn(move || {
        let _ = writer.write_all(&body);
    });
    read_answer(&mut conn)
}

/// The audit entries for `target` (the path after `/api/v1/`), oldest first.
fn audit_for(server: &TestServer, target: &str) -> Vec<Value> {
    let r = server.run(&["--json", "audit", "--limit", "10000"]);
    r.ok();
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == target)
        .cloned()
        .collect()
}

#[test]
fn an_unauthenticated_big_body_is_refused_before_it_is_read_and_audited() {
    let server = TestServer::start();
    let declared = 10 * 1024 * 1024;
    for (conn, auth, over) in [
        // No token over TCP.
        (Conn::tcp(&server), None, "tcp"),
        // A wrong token on the socket (its owner would be the local admin).
        (
            Conn::unix(&server),
            Some("Authorization: Bearer gantry_not_a_token"),
            "unix",
        ),
    ] {
        let mut conn = conn;
        let mut head = format!(
            "PUT {SECRET} HTTP/1.1\r\nHost: gantry\r\nContent-Type: application/json\r\n\
             Content-Length: {declared}\r\n"
        );
        if let Some(a) = auth {
            head.push_str(a);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        conn.write_all(head.as_bytes()).unwrap();
        // Only the first 64 KiB of the declared 10 MiB is ever sent: an
        // answer proves the server decided without the rest.
        conn.write_all(&vec![b' '; 64 * 1024]).unwrap();
        let a = read_answer(&mut conn);
        assert_eq!(a.status, 401, "{over}: {a:?}");
        assert!(a.error().contains("token"), "{over}: {a:?}");
    }
    let entries = audit_for(&server, "apps/hello/envs/production/secrets/BIG");
    assert_eq!(entries.len(), 2, "one entry per refused call: {entries:#?}");
    for e in &entries {
        assert_eq!(e["action"], "secret.set", "{e}");
        assert!(
            e["outcome"]
                .as_str()
                .unwrap()
                .starts_with("401 Unauthorized"),
            "{e}"
        );
        assert!(e["actor"].as_str().unwrap().starts_with("anonymous"), "{e}");
        assert_eq!(e["params"]["content_length"], declared, "{e}");
        assert_eq!(e["params"]["body"], "not read", "{e}");
    }
    server.run(&["audit", "verify"]).ok();
}

#[test]
fn a_body_over_the_limit_is_413_in_json_and_audited() {
    let server = TestServer::start();
    let token = server.token("admin", None);
    let auth = format!("Authorization: Bearer {token}");
    // A valid JSON object just over the limit: the server reads all of it.
    let mut body = br#"{"value":""#.to_vec();
    body.resize(MAX_JSON + 1024, b'a');
    body.extend_from_slice(br#""}"#);
    for (conn, headers) in [
        (
            Conn::tcp(&server),
            vec!["Content-Type: application/json", auth.as_str()],
        ),
        (Conn::unix(&server), vec!["Content-Type: application/json"]),
    ] {
        let a = call(conn, "PUT", SECRET, &headers, body.clone());
        assert_eq!(a.status, 413, "{a:?}");
        assert!(a.error().contains("too large"), "{a:?}");
    }
    let entries = audit_for(&server, "apps/hello/envs/production/secrets/BIG");
    assert_eq!(entries.len(), 2, "{entries:#?}");
    for e in &entries {
        let outcome = e["outcome"].as_str().unwrap();
        assert!(outcome.starts_with("413 Payload Too Large: "), "{e}");
        assert!(outcome.contains("too large"), "{e}");
        assert!(
            e["params"].as_str().unwrap().contains("not kept"),
            "the value is not kept: {e}"
        );
    }
    let actors: Vec<&str> = entries
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert!(actors[0].starts_with("token:"), "{actors:?}");
    assert!(actors[1].starts_with("local:"), "{actors:?}");
    server.run(&["audit", "verify"]).ok();
}

#[test]
fn malformed_and_mistyped_json_are_json_errors_and_audited() {
    let server = TestServer::start();
    let token = server.token("admin", None);
    let auth = format!("Authorization: Bearer {token}");
    let json = "Content-Type: application/json";
    let cases: [(Conn, Vec<&str>, &str, u16, &str); 4] = [
        (
            Conn::tcp(&server),
            vec![json, &auth],
            r#"{"value": "#,
            400,
            "parse",
        ),
        (
            Conn::unix(&server),
            vec![json],
            r#"{"value": "#,
            400,
            "parse",
        ),
        (
            Conn::unix(&server),
            vec![json],
            r#"{"value": 5}"#,
            422,
            "invalid type",
        ),
        (
            Conn::unix(&server),
            vec!["Content-Type: text/plain"],
            "hunter2",
            415,
            "Content-Type: application/json",
        ),
    ];
    let n = cases.len();
    for (conn, headers, body, status, needle) in cases {
        let a = call(conn, "PUT", SECRET, &headers, body.as_bytes().to_vec());
        assert_eq!(a.status, status, "{body}: {a:?}");
        assert!(a.error().contains(needle), "{body}: {a:?}");
    }
    let entries = audit_for(&server, "apps/hello/envs/production/secrets/BIG");
    assert_eq!(entries.len(), n, "one entry per call: {entries:#?}");
    assert_eq!(
        entries[0]["params"], "<10 bytes, not JSON>",
        "{:#}",
        entries[0]
    );
    assert!(
        entries[0]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("400 Bad Request: Failed to parse"),
        "{:#}",
        entries[0]
    );
    assert!(
        entries[2]["outcome"].as_str().unwrap().starts_with("422"),
        "{:#}",
        entries[2]
    );
    assert!(
        entries[3]["outcome"].as_str().unwrap().starts_with("415"),
        "{:#}",
        entries[3]
    );
    let all = server.run(&["--json", "audit", "--limit", "10000"]).stdout;
    assert!(
        !all.contains("hunter2"),
        "a refused body never reaches the log"
    );
}

#[test]
fn unknown_routes_and_wrong_methods_answer_json_errors() {
    let server = TestServer::start();
    let token = server.token("viewer", None);
    let auth = format!("Authorization: Bearer {token}");
    let check =
        |conn: Conn, method: &str, path: &str, headers: &[&str], status: u16, words: &str| {
            let a = call(conn, method, path, headers, Vec::new());
            assert_eq!(a.status, status, "{method} {path}: {a:?}");
            assert!(a.error().contains(words), "{method} {path}: {a:?}");
        };
    check(
        Conn::tcp(&server),
        "POST",
        "/api/v1/nope",
        &[],
        404,
        "/api/v1",
    );
    check(Conn::unix(&server), "GET", "/nope", &[], 404, "/api/v1");
    check(
        Conn::unix(&server),
        "DELETE",
        "/api/v1/whoami",
        &[],
        405,
        "DELETE is not allowed on /api/v1/whoami; it accepts GET, HEAD",
    );
    check(
        Conn::tcp(&server),
        "POST",
        "/api/v1/apps",
        &[&auth],
        405,
        "it accepts GET",
    );
    check(
        Conn::tcp(&server),
        "POST",
        "/healthz",
        &[],
        405,
        "POST is not allowed on /healthz",
    );
    // A path parameter that does not parse (a deploy id).
    check(
        Conn::unix(&server),
        "GET",
        "/api/v1/apps/hello/envs/production/deploys/x",
        &[],
        400,
        "Cannot parse",
    );
    // The 405 of a mutating call is audited, with the methods it accepts.
    let entries = audit_for(&server, "whoami");
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert!(
        entries[0]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("405 Method Not Allowed: DELETE is not allowed"),
        "{:#}",
        entries[0]
    );
}
