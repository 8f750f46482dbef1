//! An instance's life through a real server, at its rough edges: which of
//! the server's variables it inherits, what a failed start says, the logs
//! of a set that has stopped, the death of a shim, a stop that fails, and
//! secrets that never reach a file.

mod support;

use std::time::{Duration, Instant};

use support::TestServer;

/// A server with `toml` applied as production's config, the example app
/// copied to ./app; returns the server and the app directory.
fn setup(toml: &str) -> (TestServer, std::path::PathBuf) {
    let server = TestServer::start();
    let app_dir = server.dir.path().join("app");
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::copy(support::hello_app(), app_dir.join("hello-app")).unwrap();
    std::fs::write(server.dir.path().join("gantry.toml"), toml).unwrap();
    server.run(&["config", "apply", "--env", "production"]).ok();
    (server, app_dir)
}

fn config(run: &str, env: &str) -> String {
    format!(
        r#"
[app]
name = "hello"

[run]
{run}

[health.readiness]
kind = "http"
path = "/readiness"
interval = "200ms"
timeout = "200ms"

[env]
{env}
"#
    )
}

fn get(port: u64, path: &str) -> (u16, String) {
    support::http_get(port as u16, path)
}

#[test]
fn an_instance_inherits_only_the_listed_server_variables_and_a_custom_path_works() {
    // The test process (and so the server) has HOME and cargo's CARGO_PKG_*.
    assert!(std::env::var_os("HOME").is_some());
    assert_eq!(std::env::var("CARGO_PKG_NAME").as_deref(), Ok("gantry-cli"));
    let bin = tempfile::tempdir().unwrap();
    let toml = config(
        "command = \"hello-app\"\ninherit_env = [\"CARGO_PKG_*\"]",
        &format!(
            "EXPOSE_ENV = \"CARGO_PKG_NAME,HOME,PATH\"\nPATH = \"{}:/usr/bin:/bin\"",
            bin.path().display()
        ),
    );
    let (server, app_dir) = setup(&toml);
    // The command is found on the PATH that `[env]` sets, as in a venv.
    std::fs::copy(app_dir.join("hello-app"), bin.path().join("hello-app")).unwrap();
    server
        .run(&[
            "start",
            "--env",
            "production",
            "--dir",
            app_dir.to_str().unwrap(),
        ])
        .ok();
    let list = server.wait_ready("production", 1);
    let port = list[0]["port"].as_u64().unwrap();
    assert_eq!(
        get(port, "/env/CARGO_PKG_NAME"),
        (200, "gantry-cli".into()),
        "a pattern of inherit_env"
    );
    assert_eq!(get(port, "/env/HOME").0, 404, "not in inherit_env");
    assert_eq!(
        get(port, "/env/PATH").1,
        format!("{}:/usr/bin:/bin", bin.path().display())
    );
}

#[test]
fn by_default_an_instance_inherits_path_and_home_but_not_the_rest() {
    let (server, app_dir) = setup(&config(
        "command = \"./hello-app\"",
        "EXPOSE_ENV = \"CARGO_PKG_NAME,HOME\"",
    ));
    server
        .run(&[
            "start",
            "--env",
            "production",
            "--dir",
            app_dir.to_str().unwrap(),
        ])
        .ok();
    let list = server.wait_ready("production", 1);
    let port = list[0]["port"].as_u64().unwrap();
    assert_eq!(
        get(port, "/env/HOME").1,
        std::env::var("HOME").unwrap(),
        "HOME is in the default list"
    );
    assert_eq!(get(port, "/env/CARGO_PKG_NAME").0, 404);
}

#[test]
fn a_stop_whose_records_cannot_be_removed_is_an_error_and_a_retry_finishes_it() {
    let (server, app_dir) = setup(&config("command = \"./hello-app\"\ninstances = 2", ""));
    server
        .run(&[
            "start",
            "--env",
            "production",
            "--dir",
            app_dir.to_str().unwrap(),
        ])
        .ok();
    let list = server.wait_ready("production", 2);
    let pids: Vec<i32> = list
        .iter()
        .map(|i| i["pid"].as_i64().unwrap() as i32)
        .collect();
    // The store refuses to forget instances, as on a full disk.
    server
        .sqlite(
            "CREATE TRIGGER refuse BEFORE DELETE ON instances \
             BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
        )
        .ok();
    let r = server.run(&["stop", "--env", "production"]);
    assert_ne!(r.code, 0, "a stop that could not finish is not a success");
    assert!(
        r.stderr.contains("hello.production.main.0, hello.production.main.1 stopped, but their records could not be removed")
            && r.stderr.contains("database or disk is full")
            && r.stderr.contains("stop again to retry"),
        "{}",
        r.stderr
    );
    for pid in &pids {
        assert!(!support_alive(*pid), "the processes did stop");
    }
    // Still known, as stopped, so nothing is lost and a retry can finish.
    let ps = server.run(&["--json", "ps", "--env", "production"]).json();
    let phases: Vec<&str> = ps
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["stopped", "stopped"], "{ps:#}");
    assert_eq!(
        server
            .sqlite("SELECT count(*) FROM instances;")
            .stdout
            .trim(),
        "2"
    );
    server.sqlite("DROP TRIGGER refuse;").ok();
    let r = server.run(&["stop", "--env", "production"]);
    r.ok();
    assert!(r.stdout.contains("stopped 2 instance(s)"), "{}", r.stdout);
    assert_eq!(
        server
            .sqlite("SELECT count(*) FROM instances;")
            .stdout
            .trim(),
        "0"
    );
    let r = server.run(&["stop", "--env", "production"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("has no running instances"),
        "{}",
        r.stderr
    );
}

fn support_alive(pid: i32) -> bool {
    gantry_runtime::procfs::stat(pid).is_some_and(|s| s.state != 'Z')
}

/// Whether `pid`'s parent is a live `gantry shim`, i.e. someone captures
/// its output.
fn captured(pid: i32) -> bool {
    let Some(ppid) = gantry_runtime::procfs::stat(pid).map(|s| s.ppid) else {
        return false;
    };
    let cmdline = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap_or_default();
    support_alive(ppid) && String::from_utf8_lossy(&cmdline).contains("\0shim\0")
}

/// Kills the shim of production's only instance with SIGKILL; then, until
/// the instance is ready again under a new shim, checks every `gantry ps`
/// that shows it running has a live shim. Returns the new pid.
fn kill_the_shim_and_watch(server: &TestServer) -> i32 {
    let list = server.wait_ready("production", 1);
    let pid = list[0]["pid"].as_i64().unwrap() as i32;
    let shim = gantry_runtime::procfs::stat(pid).unwrap().ppid;
    assert!(captured(pid), "pid {pid} runs under its shim {shim}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_not_running = false;
    loop {
        let ps = server.run(&["--json", "ps", "--env", "production"]).json();
        let i = &ps[0];
        let now_pid = i["pid"].as_i64().map(|p| p as i32);
        if i["phase"] == "running" {
            let p = now_pid.unwrap();
            assert!(captured(p), "shown running with no shim: {i:#}");
            if p != pid && i["ready"] == true {
                assert!(!support_alive(pid), "the old app {pid} was stopped");
                assert!(seen_not_running || !support_alive(shim));
                return p;
            }
        } else {
            seen_not_running = true;
        }
        assert!(
            Instant::now() < deadline,
            "not back under a new shim: {i:#}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_app_whose_shim_is_killed_is_restarted_under_a_new_one_before_and_after_adoption() {
    let (mut server, app_dir) = setup(&config("command = \"./hello-app\"", ""));
    server
        .run(&[
            "start",
            "--env",
            "production",
            "--dir",
            app_dir.to_str().unwrap(),
        ])
        .ok();
    let first = kill_the_shim_and_watch(&server);
    // A new control plane adopts the app; its shim dies: the same again.
    server.kill9_and_restart_paused(|| {});
    let list = server.wait_ready("production", 1);
    assert_eq!(list[0]["pid"].as_i64(), Some(i64::from(first)), "adopted");
    let second = kill_the_shim_and_watch(&server);
    assert_ne!(first, second);

    let events = server
        .run(&["--json", "events", "--env", "production"])
        .json();
    let lost: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "shim-lost")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(lost.len(), 2, "{events:#}");
    assert!(
        lost[1].contains(&format!("of pid {first} is gone")),
        "{lost:?}"
    );
    // The app's output is captured again.
    let port = server.wait_ready("production", 1)[0]["port"]
        .as_u64()
        .unwrap();
    get(port, "/version");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = server.run(&["logs", "--env", "production"]);
        if logs.stdout.contains("/version") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no /version request in the logs within 10 s: {}",
            logs.stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_release_that_cannot_start_says_why_and_stopped_sets_keep_their_logs() {
    use support::deploy::{config, release, serial};
    let _serial = serial();
    let proxy_state = tempfile::tempdir().unwrap();
    let _proxy = support::start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    let server = TestServer::start_with(&["--proxy-admin", admin.to_str().unwrap()]);
    let bg = "strategy = \"blue-green\"\nrollback_window = \"1s\"";
    let deploy = |n: i64| {
        server.run(&[
            "deploy",
            "--env",
            "production",
            "--release",
            &n.to_string(),
            "--wait",
        ])
    };
    let r1 = release(&server, &config(bg, "APP_VERSION = \"v1\"", ""));
    deploy(r1).ok();

    // A release whose command is not there: the deploy says what it said.
    let bad = config(bg, "", "").replace(
        "command = \"./hello-app\"",
        "command = \"echo booting; datasette serve\"",
    );
    let r2 = release(&server, &bad);
    let out = deploy(r2);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("a new instance failed: hello.production.r{r2}."))
            && out
                .stdout
                .contains("exited with code 127; its last output:")
            && out.stdout.contains("\n  booting")
            && out.stdout.contains("exec: datasette: not found"),
        "{}",
        out.stdout
    );
    // Its set is stopped, and its logs are still there.
    let logs = server.run(&["logs", "--env", "production", "--release", &r2.to_string()]);
    logs.ok();
    assert!(
        logs.stdout.contains("stdout booting")
            && logs
                .stdout
                .contains("stderr /bin/sh: 1: exec: datasette: not found"),
        "{}",
        logs.stdout
    );
    assert!(
        !logs.stdout.contains("listening"),
        "only release {r2}'s lines"
    );

    // Release 1 is replaced by 3: once stopped, its logs stay readable too.
    // (`--wait`: `gantry deploy` returns at the switch, while release 1
    // is still warm; the deploy ends once it is stopped.)
    let r3 = release(&server, &config(bg, "APP_VERSION = \"v3\"", ""));
    server
        .run(&[
            "deploy",
            "--env",
            "production",
            "--release",
            &r3.to_string(),
            "--wait",
        ])
        .ok();
    let sets = support::deploy::sets(&server);
    assert_eq!(sets, [format!("r{r3}")]);
    let logs = server.run(&["logs", "--env", "production", "--release", &r1.to_string()]);
    logs.ok();
    assert!(logs.stdout.contains("listening"), "{}", logs.stdout);
    assert!(logs.stdout.contains("shutdown complete"), "{}", logs.stdout);
    // Without --release: the running instances only.
    let logs = server.run(&["logs", "--env", "production"]);
    assert!(
        !logs.stdout.contains("shutdown complete"),
        "{}",
        logs.stdout
    );

    let none = server.run(&["logs", "--env", "production", "--release", "99"]);
    assert_ne!(none.code, 0);
    assert!(
        none.stderr
            .contains("release 99 has no instances with logs in hello/production"),
        "{}",
        none.stderr
    );
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(files_containing(&p, needle));
        } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
            found.push(p);
        }
    }
    found
}

#[test]
fn secrets_stay_off_disk_through_deploys_adoption_and_restarts() {
    use support::deploy::{config, release, serial};
    let _serial = serial();
    // An age key of our own, as GANTRY_SECRET_KEY (taken from a throwaway
    // server's key file).
    let key = {
        let scratch = TestServer::start();
        let text = std::fs::read_to_string(scratch.data_dir().join("secret.key")).unwrap();
        text.lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .unwrap()
            .to_string()
    };
    let proxy_state = tempfile::tempdir().unwrap();
    let _proxy = support::start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    let mut server = TestServer::start_in_with_env(
        tempfile::tempdir().unwrap(),
        &[
            "--proxy-admin",
            admin.to_str().unwrap(),
            "--port-range",
            "30400-30449",
        ],
        &[("GANTRY_SECRET_KEY", &key)],
    );
    assert!(!server.data_dir().join("secret.key").exists());
    const PW: &str = "pw-7f3a9c1e-never-on-disk";
    let toml = format!(
        "secrets = [\"PW\"]\n{}",
        config(
            "strategy = \"blue-green\"\nrollback_window = \"1s\"",
            "EXPOSE_ENV = \"PW,DATABASE_URL\"\nDATABASE_URL = \"postgres://u:${secret.PW}@h/db\"",
            "",
        )
    );
    let r1 = release(&server, &toml);
    server
        .run_stdin(&["secrets", "set", "PW", "--env", "production"], PW)
        .ok();
    server
        .run(&[
            "deploy",
            "--env",
            "production",
            "--release",
            &r1.to_string(),
            "--wait",
        ])
        .ok();
    let r2 = release(
        &server,
        &toml.replace("[env]\n", "[env]\nAPP_VERSION = \"v2\"\n"),
    );
    server
        .run(&[
            "deploy",
            "--env",
            "production",
            "--release",
            &r2.to_string(),
            "--wait",
        ])
        .ok();
    let check = |server: &TestServer| {
        let list = server.wait_ready("production", 2);
        for i in &list {
            let port = i["port"].as_u64().unwrap();
            assert_eq!(get(port, "/env/PW"), (200, PW.to_string()));
            assert_eq!(
                get(port, "/env/DATABASE_URL").1,
                format!("postgres://u:{PW}@h/db")
            );
            // The shim's arguments and environment carry neither the secret
            // nor the key (the app's own environment has the secret: that
            // is what it is for).
            let pid = i["pid"].as_i64().unwrap() as i32;
            let shim = gantry_runtime::procfs::stat(pid).unwrap().ppid;
            for f in ["cmdline", "environ"] {
                let b = std::fs::read(format!("/proc/{shim}/{f}")).unwrap();
                let has = |n: &[u8]| b.windows(n.len()).any(|w| w == n);
                assert!(!has(PW.as_bytes()), "the shim's {f} has the secret");
                assert!(!has(key.as_bytes()), "the shim's {f} has the key");
            }
        }
        list
    };
    let before = check(&server);

    // A new control plane adopts the instances; one crashes and restarts:
    // the value comes from the store again.
    server.kill9_and_restart_paused(|| {});
    let list = check(&server);
    assert_eq!(list[0]["pid"], before[0]["pid"], "adopted");
    let pid = list[0]["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = server.wait_ready("production", 2);
        if list[0]["pid"].as_i64() != Some(i64::from(pid)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid}, killed, not replaced within 20 s: {list:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    check(&server);
    // SQLite's WAL and database, instance directories and logs: nowhere,
    // while the server runs and after it stopped.
    let scan = |server: &TestServer| {
        for needle in [PW, &format!("u:{PW}@h")] {
            assert_eq!(
                files_containing(&server.data_dir(), needle.as_bytes()),
                Vec::<std::path::PathBuf>::new(),
                "files holding the secret"
            );
        }
    };
    assert!(server.data_dir().join("gantry.db-wal").exists());
    scan(&server);
    server.stop();
    scan(&server);
    assert!(
        !server.log.lock().unwrap().contains(PW),
        "the server's own log"
    );
}
