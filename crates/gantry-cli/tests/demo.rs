//! `gantry demo --once`: the README's main job, end to end.

mod support;

#[test]
fn the_demo_deploys_the_example_and_ships_a_canary() {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, api) = (free(), free());
    let out = std::process::Command::new(support::BIN)
        .args([
            "demo",
            "--once",
            "--port",
            &port.to_string(),
            "--api-port",
            &api.to_string(),
        ])
        .current_dir(support::repo_root())
        .env_remove("GANTRY_DATA_DIR")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "deploy 1 succeeded",
        "deploy 2 succeeded",
        "canary step 1/2: 20 %",
        "deploy 3 succeeded",
        "Gantry is running the example app.",
        &format!("http://127.0.0.1:{port}/"),
        "stopped 2 instance(s) of hello/production",
    ] {
        assert!(stdout.contains(needle), "missing `{needle}` in:\n{stdout}");
    }
}
