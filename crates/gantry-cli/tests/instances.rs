//! Running app environments through the server and the CLI: start with
//! config, env and secrets; isolation between environments; ps, logs,
//! events, restart; kill -9 of the server with apps still serving and
//! re-adopted; port pool exhaustion; stop.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::TestServer;

const CONFIG: &str = r#"
secrets = ["SESSION_KEY"]

[app]
name = "hello"

[run]
command = "./hello-app"
instances = 2
grace_period = "5s"

[health.readiness]
kind = "http"
path = "/readiness"
interval = "300ms"
timeout = "200ms"

[env]
EXPOSE_ENV = "GREETING,DATA_DIR,SESSION_KEY,INSTANCE_ID"
GREETING = "hi ${secret.SESSION_KEY}"

[environments.staging]
env = { APP_VERSION = "staging-build" }

[environments.production]
"#;

/// A server with the example app's binary in ./app and the config applied
/// and secrets set for both environments.
fn setup(extra: &[&str]) -> TestServer {
    let server = TestServer::start_with(extra);
    let app_dir = server.dir.path().join("app");
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::copy(support::hello_app(), app_dir.join("hello-app")).unwrap();
    std::fs::write(server.dir.path().join("gantry.toml"), CONFIG).unwrap();
    for env in ["staging", "production"] {
        server.run(&["config", "apply", "--env", env]).ok();
        server
            .run_stdin(
                &["secrets", "set", "SESSION_KEY", "--env", env],
                &format!("key-{env}"),
            )
            .ok();
    }
    server
}

fn ps(server: &TestServer, env: &str) -> Vec<serde_json::Value> {
    server
        .run(&["--json", "ps", "--env", env])
        .json()
        .as_array()
        .unwrap()
        .clone()
}

fn wait_ready(server: &TestServer, env: &str, n: usize) -> Vec<serde_json::Value> {
    server.wait_ready(env, n)
}

fn get(port: u64, path: &str) -> (u16, String) {
    support::http_get(port as u16, path)
}

#[test]
fn environments_run_isolated_with_their_config_and_secrets() {
    let server = setup(&[]);
    let app_dir = server.dir.path().join("app");
    for env in ["staging", "production"] {
        let r = server.run(&["start", "--env", env, "--dir", app_dir.to_str().unwrap()]);
        r.ok();
        assert!(r.stdout.contains("started 2 instance(s)"), "{}", r.stdout);
    }
    let staging = wait_ready(&server, "staging", 2);
    let production = wait_ready(&server, "production", 2);
    let mut ports: Vec<u64> = staging
        .iter()
        .chain(&production)
        .map(|i| i["port"].as_u64().unwrap())
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(
        ports.len(),
        4,
        "no port shared across environments and instances"
    );

    let sp = staging[0]["port"].as_u64().unwrap();
    let pp = production[0]["port"].as_u64().unwrap();
    assert_eq!(get(sp, "/env/GREETING"), (200, "hi key-staging".into()));
    assert_eq!(get(pp, "/env/GREETING"), (200, "hi key-production".into()));
    assert_eq!(get(pp, "/env/SESSION_KEY").1, "key-production");
    assert!(
        get(sp, "/").1.contains("staging-build"),
        "per-environment override"
    );
    let sd = get(sp, "/env/DATA_DIR").1;
    let pd = get(pp, "/env/DATA_DIR").1;
    assert_ne!(sd, pd);
    assert!(sd.ends_with("envs/hello/staging/data"), "{sd}");
    assert!(std::path::Path::new(&pd).is_dir());
    let ids: Vec<String> = staging
        .iter()
        .map(|i| get(i["port"].as_u64().unwrap(), "/env/INSTANCE_ID").1)
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);

    // The data directory outlives the instances.
    let r = get(pp, "/data/keep.txt");
    assert_eq!(r.0, 404);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", pp as u16)).unwrap();
    write!(s, "POST /data/keep.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nkept").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    server.run(&["stop", "--env", "production"]).ok();
    assert!(ps(&server, "production").is_empty());
    assert_eq!(
        std::fs::read_to_string(std::path::Path::new(&pd).join("keep.txt")).unwrap(),
        "kept"
    );
    // Staging is untouched by production's stop.
    assert_eq!(wait_ready(&server, "staging", 2).len(), 2);

    // Human ps, events and logs.
    let r = server.run(&["ps"]);
    r.ok();
    assert!(
        r.stdout.contains("hello/staging/main#0") && r.stdout.contains("running ready"),
        "{}",
        r.stdout
    );
    let ev = server.run(&["events", "--env", "staging"]);
    assert!(
        ev.stdout.contains("started") && ev.stdout.contains("ready: GET /readiness → 200"),
        "{}",
        ev.stdout
    );
    let logs = server.run(&["logs", "--env", "staging", "-n", "500"]);
    logs.ok();
    assert!(
        logs.stdout.contains("stdout {") && logs.stdout.contains("/env/GREETING"),
        "{}",
        logs.stdout
    );
    assert!(!logs.stdout.contains("key-production"));

    // A second start of a running environment is refused with the way out.
    let r = server.run(&[
        "start",
        "--env",
        "staging",
        "--dir",
        app_dir.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("already running"), "{}", r.stderr);
    server.run(&["stop", "--env", "staging"]).ok();
}

#[test]
fn apps_survive_kill_9_of_the_server_and_are_adopted() {
    let mut server = setup(&[]);
    let app_dir = server.dir.path().join("app");
    server
        .run(&[
            "start",
            "--env",
            "staging",
            "--dir",
            app_dir.to_str().unwrap(),
        ])
        .ok();
    let before = wait_ready(&server, "staging", 2);
    let pids: Vec<i64> = before.iter().map(|i| i["pid"].as_i64().unwrap()).collect();
    let port = before[0]["port"].as_u64().unwrap();

    server.kill9_and_restart_paused(|| {
        // While no control plane runs, the apps keep serving.
        assert_eq!(get(port, "/health").0, 200);
    });
    let after = wait_ready(&server, "staging", 2);
    let again: Vec<i64> = after.iter().map(|i| i["pid"].as_i64().unwrap()).collect();
    assert_eq!(pids, again, "the same processes, adopted");
    let ev = server.run(&["events", "--env", "staging"]);
    assert!(
        ev.stdout.contains(&format!("adopted pid {}", pids[0])),
        "{}",
        ev.stdout
    );

    // Supervision goes on: a killed app is restarted by the new server.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = ps(&server, "staging");
        if list[0]["ready"] == true && list[0]["pid"].as_i64() != Some(pids[0]) {
            assert_eq!(list[0]["restarts"], 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pid {} (killed) not replaced by a ready one within 20 s: {list:#?}",
            pids[0]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // `gantry restart` replaces every process.
    server.run(&["restart", "--env", "staging"]).ok();
    let restarted = wait_ready(&server, "staging", 2);
    assert!(
        restarted
            .iter()
            .all(|i| !pids.contains(&i["pid"].as_i64().unwrap()))
    );
    server.run(&["stop", "--env", "staging"]).ok();
}

#[test]
fn port_pool_exhaustion_is_a_clear_error() {
    let server = setup(&["--port-range", "39990-39992"]);
    let app_dir = server.dir.path().join("app");
    server
        .run(&[
            "start",
            "--env",
            "staging",
            "--dir",
            app_dir.to_str().unwrap(),
        ])
        .ok();
    let r = server.run(&[
        "start",
        "--env",
        "production",
        "--dir",
        app_dir.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("no free port left in the instance port range 39990-39992"),
        "{}",
        r.stderr
    );
    assert!(ps(&server, "production").is_empty(), "nothing half-started");
    server.run(&["stop", "--env", "staging"]).ok();
    server
        .run(&[
            "start",
            "--env",
            "production",
            "--dir",
            app_dir.to_str().unwrap(),
        ])
        .ok();
    server.run(&["stop", "--env", "production"]).ok();
}
