//! `gantry check headers`: the real binary against a real `gantry proxy`
//! (its default policy passes) and a real backend without security
//! headers (fails), the proxy over HTTPS (HSTS graded), and an address
//! where nothing listens (exit 3).

mod support;

use std::process::{Child, Command, Stdio};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Python's http.server: a real backend that sends no security headers.
fn plain_backend(dir: &std::path::Path) -> (Killed, u16) {
    std::fs::write(dir.join("index.html"), "<p>hello</p>").unwrap();
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 (apt-get install -y python3)");
    let backend = Killed(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (backend, port);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("python3 http.server did not start on port {port}");
}

fn check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(support::BIN)
        .args(["check", "headers"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn check_headers_passes_behind_the_proxy_and_fails_without_it() {
    let www = tempfile::tempdir().unwrap();
    let (_backend, backend_port) = plain_backend(www.path());
    let state = tempfile::tempdir().unwrap();
    let proxy = support::start_proxy(state.path());
    let table = gantry_proxy::Table::from_json(
        format!(
            r#"{{"version": 1, "routes": [{{"id": "site/production", "hosts": ["*"],
                 "headers": {{}},
                 "sets": [{{"name": "stable", "weight": 100,
                            "instances": ["127.0.0.1:{backend_port}"]}}]}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    let admin = gantry_proxy::AdminClient::new(state.path().join("admin.sock"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(admin.set_table(&table)).unwrap();

    let via_proxy = format!("http://127.0.0.1:{}/", proxy.port);
    let (code, out, err) = check(&[&via_proxy]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("PASS  Content-Security-Policy"), "{out}");
    assert!(out.contains("SKIP  Strict-Transport-Security"), "{out}");
    assert!(out.contains("all security headers pass"), "{out}");

    let direct = format!("http://127.0.0.1:{backend_port}/");
    let (code, out, err) = check(&[&direct]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("FAIL  Content-Security-Policy"), "{out}");
    assert!(out.contains("FAIL  X-Frame-Options"), "{out}");

    let (code, out, _) = check(&["--json", &direct]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["passed"], false);
    assert_eq!(report["status"], 200);
    assert_eq!(report["checks"][0]["header"], "Content-Security-Policy");
    assert_eq!(report["checks"][0]["result"], "fail");

    // Graded against a spec's policy: one that sends none of these
    // headers asks for none of them; one that asks for a CSP fails.
    let app = tempfile::tempdir().unwrap();
    let toml = app.path().join("gantry.toml");
    std::fs::write(
        &toml,
        r#"[app]
name = "site"

[run]
command = "./site"

[proxy.headers]
csp = ""
hsts = ""
frame_options = ""
referrer_policy = ""
permissions_policy = ""
content_type_options = ""

[environments.production]

[environments.staging.proxy.headers]
csp = "default-src 'self'; object-src 'none'"
"#,
    )
    .unwrap();
    let policy = ["--policy-from", toml.to_str().unwrap()];
    let (code, out, err) = check(&[&direct, policy[0], policy[1], "--env", "production"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let (code, out, err) = check(&[&direct, policy[0], policy[1], "--env", "staging"]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("FAIL  Content-Security-Policy"), "{out}");
    assert!(!out.contains("X-Frame-Options"), "{out}");

    // Over HTTPS (the proxy's TLS listener, a self-signed certificate
    // trusted with --ca-file): HSTS is graded too, and passes.
    let tls_state = tempfile::tempdir().unwrap();
    let (tls_proxy, _, tls_port, _) = support::start_proxy_with_tls(tls_state.path(), "localhost");
    let tls_admin = gantry_proxy::AdminClient::new(tls_state.path().join("admin.sock"));
    rt.block_on(tls_admin.set_table(&table)).unwrap();
    let ca = tls_state.path().join("app.crt");
    let via_https = format!("https://localhost:{tls_port}/");
    let (code, out, err) = check(&[&via_https, "--ca-file", ca.to_str().unwrap()]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("PASS  Strict-Transport-Security"), "{out}");
    // Without trusting the certificate: it cannot be fetched.
    let (code, _, err) = check(&[&via_https]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot fetch"), "{err}");
    drop(tls_proxy);

    let nothing = format!("http://127.0.0.1:{}/", free_port());
    let (code, _, err) = check(&[&nothing]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot fetch"), "{err}");
    drop(proxy);
}
