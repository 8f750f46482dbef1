//! `gantry check headers`: the real binary against a real `gantry proxy`
//! (its default policy passes) and a real backend without security
//! headers (fails), the proxy over HTTPS (HSTS graded), and an address
//! where nothing listens (exit 3). A report-only CSP (a warning), the
//! hashes of a page's inline scripts, the CSP reports of an environment
//! read through a real `gantry server` (`--reports`), and `gantry config
//! check`'s warning about an enforced CSP no page was checked against.

mod support;

use std::process::{Command, Stdio};

use support::{KillOnDrop, Lines, OutputInTime};

/// Python's http.server: a real backend that sends no security headers.
/// It picks its port (0) and says which once it listens.
fn plain_backend(dir: &std::path::Path) -> (KillOnDrop, u16) {
    std::fs::write(dir.join("index.html"), "<p>hello</p>").unwrap();
    let mut backend = KillOnDrop::new(
        Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 (apt-get install -y python3)"),
    );
    // `Serving HTTP on 127.0.0.1 port 43215 (http://127.0.0.1:43215/) ...`
    let port = Lines::new(backend.child().stdout.take().unwrap())
        .find(support::START_DEADLINE, |l| {
            l.split_once(" port ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|e| panic!("python3 http.server did not start: {e}"));
    (backend, port)
}

fn check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(support::BIN)
        .args(["check", "headers"])
        .args(args)
        .output_in_time()
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
    support::block_on(&rt, "PUT /table", admin.set_table(&table)).unwrap();

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
    support::block_on(&rt, "PUT /table", tls_admin.set_table(&table)).unwrap();
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

    // A port that is bound but does not listen: connecting is refused,
    // and nothing else can take the port meanwhile.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let nothing = format!("http://127.0.0.1:{}/", held.local_addr().unwrap().port());
    let (code, _, err) = check(&[&nothing]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot fetch"), "{err}");
    drop(proxy);
}

/// Sends one CSP report for `page` to the proxy, as a browser does.
fn post_report(port: u16, page: &str, blocked: &str) {
    use std::io::{Read, Write};
    let body = serde_json::json!({"csp-report": {
        "document-uri": page, "blocked-uri": blocked,
        "effective-directive": "script-src-elem", "violated-directive": "script-src-elem",
        "disposition": "report", "script-sample": "window.datasette = {}",
    }})
    .to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "POST /_gantry/csp-report HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\
         Content-Type: application/csp-report\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
}

#[test]
fn report_only_csp_its_reports_and_the_first_deploy_warning() {
    let www = tempfile::tempdir().unwrap();
    let (_backend, backend_port) = plain_backend(www.path());
    // A page with an inline script, as Datasette's pages have.
    std::fs::write(
        www.path().join("db.html"),
        "<html><head><script>alert('Hello, world.');</script>\
         <script src=\"/app.js\"></script></head><body>db</body></html>",
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let proxy = support::start_proxy(state.path());
    let admin_sock = state.path().join("admin.sock");
    let server = support::TestServer::start_with(&["--proxy-admin", admin_sock.to_str().unwrap()]);
    std::fs::write(
        server.dir.path().join("gantry.toml"),
        r#"[app]
name = "site"

[run]
command = "./site"

[proxy]
hosts = ["site.test"]

[environments.production]

[environments.staging.proxy]
hosts = ["staging.site.test"]

[environments.staging.proxy.headers]
csp_mode = "report-only"
"#,
    )
    .unwrap();

    // Report-only: nothing to warn about. Enforced, and the proxy has no
    // route for the environment (never deployed): a warning, exit 0.
    let run = server.run(&["config", "check", "gantry.toml", "--env", "staging"]);
    run.ok();
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    let run = server.run(&["config", "check", "gantry.toml", "--env", "production"]);
    run.ok();
    assert!(
        run.stderr.contains(
            "warning: environment `production` enforces a Content-Security-Policy no page has \
             been checked against"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("csp_mode = \"report-only\""),
        "{}",
        run.stderr
    );
    let json = server
        .run(&[
            "--json",
            "config",
            "check",
            "gantry.toml",
            "--env",
            "production",
        ])
        .json();
    assert_eq!(json["ok"], true);
    assert_eq!(json["warnings"].as_array().unwrap().len(), 1, "{json}");
    // The environment has no route yet: --reports says so.
    let run = server.run(&["check", "headers", "--reports", "--env", "production"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("has not been deployed"),
        "{}",
        run.stderr
    );

    // The route, report-only, as a deploy of that spec sets it.
    let table = gantry_proxy::Table::from_json(
        format!(
            r#"{{"version": 1, "routes": [{{"id": "site/production", "hosts": ["*"],
                 "headers": {{"csp_mode": "report-only"}},
                 "sets": [{{"name": "stable", "weight": 100,
                            "instances": ["127.0.0.1:{backend_port}"]}}]}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    support::block_on(
        &rt,
        "PUT /table",
        gantry_proxy::AdminClient::new(&admin_sock).set_table(&table),
    )
    .unwrap();

    // Graded against the staging policy (report-only): a warning, exit 0;
    // against production's (enforce): a failure. The page's inline
    // script has the hash the CSP spec gives for it.
    let page = format!("http://127.0.0.1:{}/db.html", proxy.port);
    let toml = server.dir.path().join("gantry.toml");
    let policy = ["--policy-from", toml.to_str().unwrap()];
    let (code, out, err) = check(&[
        &page,
        policy[0],
        policy[1],
        "--env",
        "staging",
        "--inline-hashes",
    ]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("WARN  Content-Security-Policy"), "{out}");
    assert!(out.contains("report-only"), "{out}");
    assert!(
        out.contains("script-src 'sha256-qznLcsROx4GACP2dm0UCKCzCG+HiZ1guq6ZZDob/Tng='"),
        "{out}"
    );
    assert!(!out.contains("app.js"), "{out}");
    let (code, out, err) = check(&[&page, policy[0], policy[1], "--env", "production"]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("FAIL  Content-Security-Policy     only Content-Security-Policy-Report-Only"),
        "{out}"
    );

    // Reports a browser sends: two for the same page (the query differs),
    // one for another page.
    post_report(proxy.port, "http://site.test/db?_sort=id", "inline");
    post_report(proxy.port, "http://site.test/db?_sort=name", "inline");
    post_report(proxy.port, "http://site.test/other", "eval");
    let run = server.run(&["check", "headers", "--reports", "--env", "production"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .contains("site/production: 3 CSP report(s), 2 kind(s) of violation"),
        "{}",
        run.stdout
    );
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("http://site.test/db"))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        words,
        [
            "2",
            "script-src-elem",
            "inline",
            "http://site.test/db",
            "report"
        ],
        "{line}"
    );
    assert!(
        run.stdout.contains("sample: window.datasette = {}"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("--inline-hashes"), "{}", run.stdout);
    let json = server
        .run(&[
            "--json",
            "check",
            "headers",
            "--reports",
            "--env",
            "production",
            "--app",
            "site",
        ])
        .json();
    assert_eq!(json["total"], 3);
    assert_eq!(json["violations"][0]["count"], 2);
    assert_eq!(json["violations"][0]["page"], "http://site.test/db");

    // Enforcing production now would block what its pages reported.
    let run = server.run(&["config", "check", "gantry.toml", "--env", "production"]);
    run.ok();
    assert!(
        run.stderr.contains("its pages violated 3 time(s)"),
        "{}",
        run.stderr
    );
    drop(proxy);
}
