//! The spec's size limit and encoding check are one rule on every way in:
//! `gantry config check`, `gantry config apply`, and the server's apply API
//! for a client that is not the CLI.

mod support;

use std::io::{Read, Write};
use std::process::Command;

use support::{BIN, OutputInTime, TestServer, status_and_body};

const GOOD: &str = "[app]\nname = \"limits\"\n\n[run]\ncommand = \"./limits\"\n";

/// A valid spec padded with a comment to exactly `len` bytes.
fn padded(len: usize) -> String {
    let mut text = String::from(GOOD);
    text.push('#');
    text.push_str(&"x".repeat(len - text.len() - 1));
    text.push('\n');
    text
}

/// `GOOD` with a Latin-1 `ü` (0xFC) in an [env] value on line 7, column 15.
fn latin1() -> (Vec<u8>, usize) {
    let mut bytes = GOOD.as_bytes().to_vec();
    bytes.extend_from_slice(b"[env]\nGREETING = \"gr\xFC\xDF gott\"\n");
    (bytes, GOOD.len() + "[env]\nGREETING = \"gr".len())
}

/// A PUT of `body` to the config of limits/production over TCP; the status
/// and the body of the answer.
fn put_config(server: &TestServer, token: &str, body: &[u8]) -> (u16, String) {
    let addr = server.api.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(
        s,
        "PUT /api/v1/apps/limits/envs/production/config HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    status_and_body(&String::from_utf8_lossy(&out))
}

/// `{"file_name": "gantry.toml", "source": <source>}` with `source`'s bytes
/// written raw (invalid UTF-8 included), as a careless client would.
fn raw_json(source: &[u8]) -> Vec<u8> {
    let mut body = b"{\"file_name\":\"gantry.toml\",\"source\":\"".to_vec();
    for &b in source {
        match b {
            b'"' => body.extend_from_slice(b"\\\""),
            b'\\' => body.extend_from_slice(b"\\\\"),
            b'\n' => body.extend_from_slice(b"\\n"),
            _ => body.push(b),
        }
    }
    body.extend_from_slice(b"\"}");
    body
}

#[test]
fn check_apply_and_the_api_refuse_the_same_oversized_and_non_utf8_specs() {
    let server = TestServer::start();
    let path = server.dir.path().join("gantry.toml");
    let too_big = "gantry.toml is 1.2 MiB (1258291 bytes); the limit is 1 MiB";

    // At the limit: fine everywhere.
    std::fs::write(&path, padded(gantry_spec::MAX_SPEC_BYTES)).unwrap();
    server.run(&["config", "check"]).ok();
    server.run(&["config", "apply", "--env", "production"]).ok();

    // Over it: the same sentence from check, apply and the API.
    std::fs::write(&path, padded(1_258_291)).unwrap();
    let check = server.run(&["config", "check"]);
    assert_eq!(check.code, 1, "{}", check.stderr);
    assert!(check.stderr.contains(too_big), "{}", check.stderr);
    let apply = server.run(&["config", "apply", "--env", "production"]);
    assert_ne!(apply.code, 0, "{}", apply.stdout);
    assert!(apply.stderr.contains(too_big), "{}", apply.stderr);
    let token = server.token("admin", None);
    let (status, body) = put_config(&server, &token, &raw_json(padded(1_258_291).as_bytes()));
    assert_eq!(status, 422, "{body}");
    assert!(body.contains(too_big), "{body}");

    // Not UTF-8: line, column and byte offset of the first bad byte.
    let (bytes, offset) = latin1();
    std::fs::write(&path, &bytes).unwrap();
    let located = format!(
        "gantry.toml:7:15: invalid UTF-8 at byte offset {offset} (byte 0xFC): gantry.toml must be UTF-8 text"
    );
    let check = server.run(&["config", "check"]);
    assert_eq!(check.code, 1, "{}", check.stderr);
    assert!(check.stderr.contains(&located), "{}", check.stderr);
    let apply = server.run(&["config", "apply", "--env", "production"]);
    assert_ne!(apply.code, 0, "{}", apply.stdout);
    assert!(apply.stderr.contains(&located), "{}", apply.stderr);
    let (status, body) = put_config(&server, &token, &raw_json(&bytes));
    assert_eq!(status, 422, "{body}");
    assert!(body.contains(&located), "{body}");

    // Nothing of this was stored: the applied version is still the first.
    let h = server.run(&[
        "--json",
        "config",
        "history",
        "--env",
        "production",
        "--app",
        "limits",
    ]);
    h.ok();
    assert_eq!(h.json().as_array().map(Vec::len), Some(1), "{}", h.stdout);
}

#[test]
fn check_refuses_an_oversized_file_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.toml");
    std::fs::write(&path, padded(3 << 20)).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&path)
        .env("GANTRY_DATA_DIR", "/nonexistent-gantry-test")
        .output_in_time()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("gantry.toml is 3.0 MiB (3145728 bytes); the limit is 1 MiB"),
        "{stderr}"
    );
}
