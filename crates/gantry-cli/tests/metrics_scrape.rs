//! The embedded metrics store, wired into a real `gantry server`: it
//! scrapes a real `gantry proxy` every `--metrics-interval`, `gantry
//! metrics status` shows the series and the target up; a proxy that dies
//! turns the target down with a reason naming its socket while the server
//! keeps serving; a restart on the same data directory replays the WAL.

mod support;

use std::time::Duration;

use support::{TestServer, eventually};

/// `gantry --json metrics status`, parsed.
fn status(server: &TestServer) -> Result<serde_json::Value, String> {
    let r = server.run(&["--json", "metrics", "status"]);
    if r.code != 0 {
        return Err(format!("exit {}: {}", r.code, r.stderr));
    }
    serde_json::from_str(&r.stdout).map_err(|e| format!("{e}: {}", r.stdout))
}

fn proxy_target(s: &serde_json::Value) -> serde_json::Value {
    s["targets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["job"] == "gantry-proxy").cloned())
        .unwrap_or_default()
}

#[test]
fn the_proxy_is_scraped_marked_down_when_it_dies_and_its_series_survive_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let proxy = support::start_proxy(state.path());
    let admin_sock = state.path().join("admin.sock");
    let mut server = TestServer::start_with(&[
        "--proxy-admin",
        admin_sock.to_str().unwrap(),
        "--metrics-interval",
        "200ms",
    ]);
    for _ in 0..3 {
        let (code, _) = support::http_get(proxy.port, "/");
        assert_eq!(code, 404, "no route yet");
    }

    // Up, with the proxy's series (more than the scrape's own three).
    let up = eventually(
        "the proxy target up with its series",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let s = status(&server)?;
            let t = proxy_target(&s);
            if t["up"] == true && s["series"].as_u64().unwrap_or(0) > 3 {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        },
    );
    let t = proxy_target(&up);
    assert!(t["samples_scraped"].as_u64().unwrap() > 0, "{up}");
    assert!(t["last_scrape"].as_i64().is_some(), "{up}");
    assert!(t["last_error"].is_null(), "{up}");
    assert!(up["samples"].as_u64().unwrap() > 3, "{up}");

    // The human form says the same.
    let human = server.run(&["metrics", "status"]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(human.stdout.contains("series:"), "{}", human.stdout);
    assert!(
        human.stdout.contains("gantry-proxy") && human.stdout.contains(" up "),
        "{}",
        human.stdout
    );

    // The proxy dies: down, with a reason naming its socket.
    drop(proxy);
    let down = eventually(
        "the proxy target down",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let s = status(&server)?;
            let t = proxy_target(&s);
            if t["up"] == false && t["last_error"].is_string() {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        },
    );
    let reason = proxy_target(&down)["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains(admin_sock.to_str().unwrap()),
        "the reason names the socket: {reason}"
    );
    assert_eq!(
        server.run(&["whoami"]).code,
        0,
        "the server keeps serving; its log:\n{}",
        server.log.lock().unwrap()
    );
    let before = down["series"].as_u64().unwrap();

    // A restart on the same data directory replays the WAL.
    assert_eq!(server.stop(), Some(0), "a clean stop");
    server.kill9_and_restart_paused(|| {});
    let after = status(&server).unwrap();
    assert!(
        after["series"].as_u64().unwrap() >= before && before > 3,
        "series before the restart {before}, after: {after}"
    );
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains("metrics store open"), "{log}");
}
