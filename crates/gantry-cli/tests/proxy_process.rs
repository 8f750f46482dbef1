//! `gantry proxy` as its own process: routes set over the admin socket,
//! traffic to a real app, the table kept across a restart, clean SIGTERM.

mod support;

use std::process::{Child, Command, Stdio};

fn start_proxy(state: &std::path::Path) -> (support::ProxyProcess, u16) {
    let p = support::start_proxy(state);
    let port = p.port;
    (p, port)
}

fn app(port: u16, version: &str) -> Child {
    Command::new(support::hello_app())
        .env("PORT", port.to_string())
        .env("APP_VERSION", version)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn proxy_process_routes_persists_and_stops_cleanly() {
    let state = tempfile::tempdir().unwrap();
    let backend_port = free_port();
    let mut backend = app(backend_port, "v7");
    let (mut proxy, port) = start_proxy(state.path());
    let table = gantry_proxy::Table::from_json(
        format!(
            r#"{{"version": 1, "routes": [{{"id": "hello/production", "hosts": ["*"],
                 "sets": [{{"name": "stable", "weight": 100, "instances": ["127.0.0.1:{backend_port}"]}}]}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    let admin = gantry_proxy::AdminClient::new(state.path().join("admin.sock"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(admin.set_table(&table)).unwrap();
    // The app may still be binding: retry briefly.
    let mut got = (0, String::new());
    for _ in 0..100 {
        got = support::http_get(port, "/");
        if got.0 == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(got.0, 200, "{got:?}");
    assert!(got.1.contains("hello from v7"), "{}", got.1);

    // SIGTERM: exit 0; a new proxy on the same state dir has the table.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(proxy.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(proxy.child.wait().unwrap().code(), Some(0));
    let (proxy, port) = start_proxy(state.path());
    let got = support::http_get(port, "/");
    assert_eq!(got.0, 200, "{got:?}");
    let stats = rt.block_on(admin.stats()).unwrap();
    assert!(
        serde_json::to_string(&stats)
            .unwrap()
            .contains("hello/production")
    );
    drop(proxy);
    backend.kill().unwrap();
    let _ = backend.wait();
}
