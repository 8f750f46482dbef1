//! `examples/hello-py` deploys with its own gantry.toml, as its README
//! says: config check and apply, build (the source tree is the release),
//! deploy through a real control plane and edge proxy, an answer through
//! the proxy.

mod support;

use std::path::Path;

use support::{OutputInTime, Run, TestServer, start_proxy};

/// `GET /` with `Host: host` through the proxy on `port`.
fn get(port: u16, host: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    support::status_and_body(&out)
}

#[test]
fn hello_py_deploys_with_its_own_gantry_toml() {
    let proxy_state = tempfile::tempdir().unwrap();
    let proxy = start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    let proxy_addr = format!("127.0.0.1:{}", proxy.port);
    let server = TestServer::start_with(&[
        "--proxy-admin",
        admin.to_str().unwrap(),
        "--proxy-addr",
        &proxy_addr,
    ]);
    let example = support::repo_root().join("examples/hello-py");
    // In the example's own directory, as a user would.
    let run = |dir: &Path, args: &[&str]| -> Run {
        Run::from(
            server
                .cmd()
                .current_dir(dir)
                .args(args)
                .output_in_time()
                .unwrap(),
        )
    };
    let r = run(&example, &["config", "check", "--env", "production"]);
    r.ok();
    assert!(r.stdout.contains("app `hello-py`"), "{}", r.stdout);
    run(&example, &["config", "apply", "--env", "production"]).ok();
    let r = run(&example, &["--json", "build", "--env", "production"]);
    r.ok();
    let release = r.json()["number"].as_i64().unwrap();
    let r = run(
        &example,
        &[
            "deploy",
            "--env",
            "production",
            "--release",
            &release.to_string(),
        ],
    );
    r.ok();
    assert!(r.stdout.contains("succeeded"), "{}", r.stdout);

    let (status, body) = get(proxy.port, "hello-py.localhost");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from v1 (instance "), "{body}");
    // Both instances answer through the proxy.
    let mut instances = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let (status, body) = get(proxy.port, "hello-py.localhost");
        assert_eq!(status, 200, "{body}");
        instances.insert(body);
        if instances.len() == 2 {
            break;
        }
    }
    assert_eq!(instances.len(), 2, "{instances:?}");
    let ps = run(&example, &["--json", "ps", "--env", "production"]);
    ps.ok();
    let ps = ps.json();
    let list = ps.as_array().unwrap();
    assert_eq!(list.len(), 2, "{ps:#}");
    assert!(list.iter().all(|i| i["ready"] == true), "{ps:#}");

    run(&example, &["stop", "--env", "production"]).ok();
    drop(proxy);
}
