//! `gantry proxy` as its own process: routes set over the admin socket,
//! traffic to a real app, the table kept across a restart, clean SIGTERM.

mod support;

use std::time::Duration;

fn start_proxy(state: &std::path::Path) -> (support::ProxyProcess, u16) {
    let p = support::start_proxy(state);
    let port = p.port;
    (p, port)
}

#[test]
fn proxy_process_routes_persists_and_stops_cleanly() {
    let state = tempfile::tempdir().unwrap();
    let backend = support::HelloApp::start(&[("APP_VERSION", "v7")]);
    let backend_port = backend.port;
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
    support::block_on(&rt, "PUT /table", admin.set_table(&table)).unwrap();
    // The app listens (it said so); the proxy has the table (it answered).
    let got = support::http_get(port, "/");
    assert_eq!(got.0, 200, "{got:?}");
    assert!(got.1.contains("hello from v7"), "{}", got.1);

    // SIGTERM: exit 0; a new proxy on the same state dir has the table.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(proxy.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = support::wait_within(
        &mut proxy.child,
        "the proxy after SIGTERM",
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(0));
    let (proxy, port) = start_proxy(state.path());
    let got = support::http_get(port, "/");
    assert_eq!(got.0, 200, "{got:?}");
    let stats = support::block_on(&rt, "GET /stats", admin.stats()).unwrap();
    assert!(
        serde_json::to_string(&stats)
            .unwrap()
            .contains("hello/production")
    );
    drop(proxy);
    drop(backend);
}
