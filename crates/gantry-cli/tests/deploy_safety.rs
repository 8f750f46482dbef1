//! Deploy safety under repeats and interference, under steady load: a
//! repeated deploy, a rollback in every phase, a migration longer than the
//! lease, a proxy table that keeps sending traffic to a set being stopped,
//! Ctrl-C of a command that follows a deploy, and gates that judge the code
//! against the stable set rather than the machine. No request may fail.

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::deploy::{Load, deploy_detached, get_via, release, serial, sets, show, wait_phase};
use support::{TestServer, start_proxy};

/// Production's config with `deploy` as `[deploy]`, `env` in `[env]` and
/// `analysis` added to `[analysis]`.
fn config(deploy: &str, env: &str, analysis: &str) -> String {
    format!(
        r#"
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
timeout = "250ms"
failure_threshold = 3

[deploy]
{deploy}

[analysis]
interval = "500ms"
min_requests = 10
{analysis}

[env]
{env}

[proxy]
hosts = ["hello.test"]
"#
    )
}

const BLUE_GREEN: &str = "strategy = \"blue-green\"\nrollback_window = \"1s\"";
const WARM_LONG: &str = "strategy = \"blue-green\"\nrollback_window = \"60s\"";
const CANARY_LONG: &str = "strategy = \"canary\"\nsteps = [{ weight = 30, pause = \"60s\" }]";

fn deploy_args(release: i64) -> Vec<String> {
    ["deploy", "--env", "production", "--release"]
        .iter()
        .map(|s| s.to_string())
        .chain([release.to_string()])
        .collect()
}

fn run(server: &TestServer, args: &[String]) -> support::Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    server.run(&args)
}

/// A second deploy of the running one's release, followed or detached, is
/// refused with the holder's deploy id, release and phase.
fn assert_refused(server: &TestServer, id: i64, release: i64, phase: &str) {
    for detach in [false, true] {
        let mut args = deploy_args(release);
        if detach {
            args.push("--detach".into());
        }
        let r = run(server, &args);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(
            r.stderr.contains(&format!(
                "hello/production is being deployed by deploy {id} of release {release} by "
            )) && r.stderr.contains(&format!("(phase {phase}, for ")),
            "{}",
            r.stderr
        );
    }
}

/// `gantry rollback` while deploy `id` runs: its abort, the live set takes
/// everything back.
fn roll_back(server: &TestServer, id: i64, live: &str) {
    let r = server.run(&["rollback", "--env", "production"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("aborting deploy {id}")),
        "{}",
        r.stdout
    );
    let d = wait_phase(server, id, "done");
    assert_eq!(d["outcome"], "aborted", "{d:#}");
    assert_eq!(sets(server), [live.to_string()]);
}

#[test]
fn repeats_and_rollbacks_in_every_phase_never_stop_the_live_set() {
    let _serial = serial();
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
    let r1 = release(&server, &config(BLUE_GREEN, "APP_VERSION = \"v1\"", ""));
    let mut first = deploy_args(r1);
    first.push("--wait".into());
    run(&server, &first).ok();
    let load = Load::start_n(proxy.port, 2);

    // The release that serves, deployed again (twice): a no-op that says so.
    for _ in 0..2 {
        let r = run(&server, &deploy_args(r1));
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            r.stdout.contains(&format!(
                "release {r1} already serves hello/production with config version 1 (deploy 1); nothing to deploy"
            )) && r.stdout.contains("`gantry restart --env production` restarts"),
            "{}",
            r.stdout
        );
        assert_eq!(sets(&server), ["r1"]);
    }
    // With a changed config it is a real redeploy, as a set of its own.
    let changed = config(BLUE_GREEN, "APP_VERSION = \"v1b\"", "");
    std::fs::write(server.dir.path().join("gantry.toml"), &changed).unwrap();
    server.run(&["config", "apply", "--env", "production"]).ok();
    let r = run(&server, &first);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("replacing set r1, release 1") && r.stdout.contains("deploy 2 succeeded"),
        "{}",
        r.stdout
    );
    assert_eq!(sets(&server), ["r1-2"]);
    assert!(get_via(proxy.port).1.contains("hello from v1b"));
    let live = "r1-2";

    // During `start` (the new instances take 3 s to be ready).
    let r2 = release(
        &server,
        &config(
            CANARY_LONG,
            "APP_VERSION = \"v2\"\nREADY_DELAY_MS = \"3000\"",
            "",
        )
        .replace("failure_threshold = 3", "failure_threshold = 30"),
    );
    let id = deploy_detached(&server, r2);
    wait_phase(&server, id, "start");
    assert_refused(&server, id, r2, "start");
    assert!(get_via(proxy.port).1.contains("hello from v1b"));
    roll_back(&server, id, live);

    // During a canary step.
    let r3 = release(&server, &config(CANARY_LONG, "APP_VERSION = \"v3\"", ""));
    let id = deploy_detached(&server, r3);
    let d = wait_phase(&server, id, "analyze");
    assert_eq!(d["weight"], 30, "{d:#}");
    assert_refused(&server, id, r3, "analyze");
    roll_back(&server, id, live);

    // During blue-green's warm window: `gantry deploy` returned at the
    // switch; the window runs in the server, holding the lease.
    let r4 = release(&server, &config(WARM_LONG, "APP_VERSION = \"v4\"", ""));
    let r = run(&server, &deploy_args(r4));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("release {r4} takes all traffic")),
        "{}",
        r.stdout
    );
    let id = r4 + 1; // deploys 1-2 above, then one per release
    let d = wait_phase(&server, id, "warm");
    assert_eq!(d["phase"], "warm", "{d:#}");
    assert!(d["warm_until"].as_i64().is_some(), "{d:#}");
    assert!(get_via(proxy.port).1.contains("hello from v4"));
    assert_refused(&server, id, r4, "warm");
    let r = run(&server, &deploy_args(r1));
    assert!(
        r.stderr.contains("`gantry approve` ends that window now"),
        "{}",
        r.stderr
    );
    roll_back(&server, id, live);
    assert!(get_via(proxy.port).1.contains("hello from v1b"));

    // Deliberately, the load goes on a moment after the last rollback.
    std::thread::sleep(Duration::from_millis(300));
    let seen = load.finish();
    assert_eq!(
        seen.failed + seen.injected,
        0,
        "failed requests: {:?}",
        seen.samples
    );
    assert!(seen.ok > 100, "the load ran ({} requests)", seen.ok);
}

#[test]
fn a_migration_longer_than_the_lease_keeps_the_environment() {
    let _serial = serial();
    let proxy_state = tempfile::tempdir().unwrap();
    let proxy = start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    // A 1 s lease: unrenewed, it would lapse four times over the migration.
    let server = TestServer::start_with(&[
        "--proxy-admin",
        admin.to_str().unwrap(),
        "--deploy-lease",
        "1s",
    ]);
    let r1 = release(&server, &config(BLUE_GREEN, "APP_VERSION = \"v1\"", ""));
    let mut first = deploy_args(r1);
    first.push("--wait".into());
    run(&server, &first).ok();
    // Built first: building applies a release's config, and the deploy of
    // release 3 (with its migration) runs with the config current then.
    let r3 = release(&server, &config(BLUE_GREEN, "APP_VERSION = \"v3\"", ""));
    let toml = config(BLUE_GREEN, "APP_VERSION = \"v2\"", "")
        + "\n[migrate]\ncommand = \"sleep 5\"\ntimeout = \"30s\"\n";
    let r2 = release(&server, &toml);
    let id = deploy_detached(&server, r2);
    wait_phase(&server, id, "migrate");
    // Deliberately three lease lengths: an unrenewed lease would have
    // lapsed by now.
    std::thread::sleep(Duration::from_millis(3000));
    // Still the migrating deploy's, three lease lengths in.
    let r = run(&server, &deploy_args(r3));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("is being deployed by deploy {id} of release {r2}"))
            && r.stderr.contains("(phase migrate, for "),
        "{}",
        r.stderr
    );
    let d = wait_phase(&server, id, "done");
    assert_eq!(d["outcome"], "succeeded", "{d:#}");
    assert!(get_via(proxy.port).1.contains("hello from v2"));
}

/// Sits between the control plane and the proxy's admin socket and, while
/// `stale` is on, makes the proxy keep sending 50 % of production's route to
/// `set`: every table the control plane puts that drops `set` (or gives it
/// weight 0) gets it back before the real proxy applies it, as a proxy that
/// applied an old table would. Everything else passes through unchanged.
struct Interposer {
    socket: std::path::PathBuf,
    /// Tables rewritten so far.
    rewritten: Arc<std::sync::atomic::AtomicU64>,
    /// While set, every call is accepted and never answered: a stuck
    /// proxy (the connections stay open).
    stuck: Arc<AtomicBool>,
}

fn interpose(
    real: std::path::PathBuf,
    dir: &std::path::Path,
    set: String,
    stale: Arc<AtomicBool>,
) -> Interposer {
    use std::io::{BufRead, BufReader, Read, Write};
    let socket = dir.join("interposer.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let rewritten = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = rewritten.clone();
    let stuck = Arc::new(AtomicBool::new(false));
    let hang = stuck.clone();
    std::thread::spawn(move || {
        // The set's last instances the control plane routed to.
        let mut known: Option<serde_json::Value> = None;
        // Calls taken while stuck, never answered.
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            if hang.load(Ordering::SeqCst) {
                held.push(conn);
                continue;
            }
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let request_line = head.lines().next().unwrap_or("").to_string();
            if request_line.starts_with("PUT /table")
                && let Ok(mut table) = serde_json::from_slice::<serde_json::Value>(&body)
            {
                if let Some(route) = table["routes"]
                    .as_array_mut()
                    .and_then(|r| r.iter_mut().find(|r| r["id"] == "hello/production"))
                {
                    let sets = route["sets"].as_array_mut().unwrap();
                    let live = sets
                        .iter()
                        .find(|s| s["name"] == set.as_str() && s["weight"].as_u64() > Some(0));
                    match live {
                        Some(s) => known = Some(s.clone()),
                        None if stale.load(Ordering::SeqCst) => {
                            if let Some(mut s) = known.clone() {
                                sets.retain(|x| x["name"] != set.as_str());
                                for other in sets.iter_mut() {
                                    other["weight"] = 50.into();
                                }
                                s["weight"] = 50.into();
                                sets.push(s);
                                count.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        None => {}
                    }
                }
                body = serde_json::to_vec(&table).unwrap();
            }
            let Ok(mut up) = std::os::unix::net::UnixStream::connect(&real) else {
                continue;
            };
            let _ = write!(
                up,
                "{request_line}\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = up.write_all(&body);
            let mut answer = Vec::new();
            let _ = up.read_to_end(&mut answer);
            let mut conn = conn;
            let _ = conn.write_all(&answer);
        }
    });
    Interposer {
        socket,
        rewritten,
        stuck,
    }
}

#[test]
fn a_set_the_proxy_still_sends_traffic_to_is_never_stopped() {
    let _serial = serial();
    let proxy_state = tempfile::tempdir().unwrap();
    let proxy = start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    let stale = Arc::new(AtomicBool::new(true));
    // Release 2 is the canary below.
    let between = interpose(
        admin.clone(),
        proxy_state.path(),
        "r2".into(),
        stale.clone(),
    );
    let server = TestServer::start_with(&["--proxy-admin", between.socket.to_str().unwrap()]);
    let r1 = release(&server, &config(BLUE_GREEN, "APP_VERSION = \"v1\"", ""));
    let mut first = deploy_args(r1);
    first.push("--wait".into());
    run(&server, &first).ok();
    // A canary that fails its gates (half its answers are 500s) and rolls
    // back: weight 0, then its set stops, but the proxy keeps sending it
    // half of the traffic. If the set were stopped, requests would fail.
    let bad = "strategy = \"canary\"\nsteps = [{ weight = 50, pause = \"60s\" }]";
    let r2 = release(
        &server,
        &config(bad, "APP_VERSION = \"v2\"\nERROR_RATE = \"0.5\"", ""),
    );
    assert_eq!(r2, 2);
    let load = Load::start_n(proxy.port, 2);
    let id = deploy_detached(&server, r2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while between.rewritten.load(Ordering::SeqCst) < 3 {
        assert!(
            Instant::now() < deadline,
            "the rollback never tried to take r2 out 3 times within 60 s ({} so far): {:#}",
            between.rewritten.load(Ordering::SeqCst),
            show(&server, id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Deliberately two more seconds of retries: a set that were stopped
    // despite the proxy's table would be stopped by now.
    std::thread::sleep(Duration::from_secs(2));
    let d = show(&server, id);
    assert_eq!(d["phase"], "rolling-back", "{d:#}");
    assert!(d["outcome"].is_null(), "{d:#}");
    assert!(
        d["holding"].as_str().is_some_and(
            |h| h.contains("of hello/production to r2") && h.contains("not stopping it")
        ),
        "{d:#}"
    );
    assert!(
        sets(&server).contains(&"r2".to_string()),
        "a set the proxy routes to was stopped"
    );
    // The proxy takes the control plane's table again: r2 leaves the
    // route, and only then stops.
    stale.store(false, Ordering::SeqCst);
    let d = wait_phase(&server, id, "done");
    assert_eq!(d["outcome"], "rolled-back", "{d:#}");
    assert_eq!(sets(&server), ["r1"]);
    let timeline = d["timeline"].to_string();
    assert!(
        timeline.contains("not stopping it") && timeline.contains("carried on"),
        "{timeline}"
    );
    // Deliberately, the load goes on a moment after the rollback.
    std::thread::sleep(Duration::from_millis(300));
    let seen = load.finish();
    assert_eq!(seen.failed, 0, "failed requests: {:?}", seen.samples);
    assert!(seen.injected > 0, "the bad canary answered");
}

#[test]
fn a_stuck_proxy_makes_the_deploy_hold_and_say_so_never_hang() {
    let _serial = serial();
    let proxy_state = tempfile::tempdir().unwrap();
    let proxy = start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    // No set is ever put back: the interposer only passes calls through,
    // or, while stuck, takes them and never answers.
    let between = interpose(
        admin,
        proxy_state.path(),
        "none".into(),
        Arc::new(AtomicBool::new(false)),
    );
    let server = TestServer::start_with(&["--proxy-admin", between.socket.to_str().unwrap()]);
    let r1 = release(&server, &config(BLUE_GREEN, "APP_VERSION = \"v1\"", ""));
    let mut first = deploy_args(r1);
    first.push("--wait".into());
    run(&server, &first).ok();
    let r2 = release(&server, &config(BLUE_GREEN, "APP_VERSION = \"v2\"", ""));
    let load = Load::start_n(proxy.port, 2);
    let id = deploy_detached(&server, r2);
    // The proxy stops answering while the new set starts: the switch's
    // table calls are accepted and never answered.
    between.stuck.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(90);
    let held = loop {
        let d = show(&server, id);
        if d["holding"]
            .as_str()
            .is_some_and(|h| h.contains("did not answer") && h.contains("within 10 s"))
        {
            break d;
        }
        assert!(
            d["outcome"].is_null(),
            "the deploy ended while the proxy was stuck: {d:#}"
        );
        assert!(
            Instant::now() < deadline,
            "the deploy never said it holds on a proxy that does not answer within 90 s: {d:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Held, not ended, and nothing stopped: the live set still serves.
    assert!(held["outcome"].is_null(), "{held:#}");
    assert!(
        sets(&server).contains(&"r1".to_string()),
        "the live set was stopped while the proxy could not confirm the switch"
    );
    let listed = server.run(&["deploys", "--env", "production"]);
    listed.ok();
    assert!(
        listed.stdout.contains("did not answer"),
        "`gantry deploys` does not show why the deploy holds: {}",
        listed.stdout
    );
    // The proxy answers again: the deploy carries on to its end.
    between.stuck.store(false, Ordering::SeqCst);
    let d = wait_phase(&server, id, "done");
    assert_eq!(d["outcome"], "succeeded", "{d:#}");
    assert_eq!(sets(&server), ["r2"]);
    assert!(
        d["timeline"].to_string().contains("did not answer"),
        "the timeline does not record the hold: {d:#}"
    );
    let seen = load.finish();
    assert_eq!(seen.failed, 0, "failed requests: {:?}", seen.samples);
    assert!(seen.ok > 0);
}

#[test]
fn ctrl_c_stops_following_never_the_deploy() {
    let _serial = serial();
    let proxy_state = tempfile::tempdir().unwrap();
    let proxy = start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    let server = TestServer::start_with(&["--proxy-admin", admin.to_str().unwrap()]);
    let r1 = release(&server, &config(BLUE_GREEN, "APP_VERSION = \"v1\"", ""));
    let mut first = deploy_args(r1);
    first.push("--wait".into());
    run(&server, &first).ok();
    let r2 = release(
        &server,
        &config(
            BLUE_GREEN,
            "APP_VERSION = \"v2\"\nREADY_DELAY_MS = \"2000\"",
            "",
        )
        .replace("failure_threshold = 3", "failure_threshold = 30"),
    );
    let child = server
        .cmd()
        .args(deploy_args(r2))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // Stopped (SIGKILL) if the test fails before it is waited for.
    let child = support::KillOnDrop::new(child);
    wait_phase(&server, 2, "start");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = support::wait_output(
        child.into_inner(),
        "the followed deploy after Ctrl-C",
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(
            "stopped following deploy 2 (Ctrl-C); the deploy goes on in the server, unchanged"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let d = wait_phase(&server, 2, "done");
    assert_eq!(d["outcome"], "succeeded", "{d:#}");
    assert!(get_via(proxy.port).1.contains("hello from v2"));
}

#[test]
fn gates_judge_the_code_against_the_stable_set_not_the_machine() {
    let _serial = serial();
    let proxy_state = tempfile::tempdir().unwrap();
    let proxy = start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    let server = TestServer::start_with(&["--proxy-admin", admin.to_str().unwrap()]);
    // A slow app (as on a loaded machine): p99 over the absolute 500 ms in
    // every release, old and new alike.
    let slow = "LATENCY_MS = \"600\"";
    let canary = "strategy = \"canary\"\nsteps = [{ weight = 50, pause = \"3s\" }]";
    let r1 = release(
        &server,
        &config(BLUE_GREEN, &format!("APP_VERSION = \"v1\"\n{slow}"), ""),
    );
    let mut first = deploy_args(r1);
    first.push("--wait".into());
    run(&server, &first).ok();
    let load = Load::start_n(proxy.port, 8);
    // The same code again: judged against the stable set, it goes through.
    let r2 = release(
        &server,
        &config(canary, &format!("APP_VERSION = \"v2\"\n{slow}"), ""),
    );
    let mut args = deploy_args(r2);
    args.push("--wait".into());
    let r = run(&server, &args);
    assert_eq!(r.code, 0, "{r:?}");
    let show = server
        .run(&["--json", "deploys", "--env", "production", "show", "2"])
        .json();
    assert_eq!(show["outcome"], "succeeded", "{show:#}");
    // Judged on absolute limits, identical code is rolled back.
    let r3 = release(
        &server,
        &config(
            canary,
            &format!("APP_VERSION = \"v3\"\n{slow}"),
            "baseline = \"absolute\"",
        ),
    );
    let mut args = deploy_args(r3);
    args.push("--wait".into());
    let r = run(&server, &args);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("gate failed: p99 latency") && r.stdout.contains("(limit <= 500 ms)"),
        "{}",
        r.stdout
    );
    // Worse code is caught relative to stable: 3× slower.
    let r4 = release(
        &server,
        &config(canary, "APP_VERSION = \"v4\"\nLATENCY_MS = \"1800\"", ""),
    );
    let mut args = deploy_args(r4);
    args.push("--wait".into());
    let r = run(&server, &args);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("gate failed: p99 latency") && r.stdout.contains("× stable"),
        "{}",
        r.stdout
    );
    let seen = load.finish();
    assert_eq!(seen.failed, 0, "failed requests: {:?}", seen.samples);
}

/// A hostile client: POSTs with broken chunked bodies (bad chunk syntax, a
/// chunk-size overflow, bare LF, a body cut off) until `stop`.
fn garbage_bodies(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let bodies: [&[u8]; 4] = [
            b"zz\r\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\n0\n\n",
            b"10\r\nhel",
        ];
        let mut sent = 0u64;
        while !stop.load(Ordering::SeqCst) {
            for body in bodies {
                let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let _ = s.write_all(
                    b"POST / HTTP/1.1\r\nHost: hello.test\r\nTransfer-Encoding: chunked\r\n\r\n",
                );
                let _ = s.write_all(body);
                // The cut-off body ends with the client going away.
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut answer = Vec::new();
                let _ = s.read_to_end(&mut answer);
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        sent
    })
}

#[test]
fn garbage_from_a_client_all_through_a_canary_cannot_roll_it_back() {
    let _serial = serial();
    let proxy_state = tempfile::tempdir().unwrap();
    let proxy = start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    let server = TestServer::start_with(&["--proxy-admin", admin.to_str().unwrap()]);
    let r1 = release(&server, &config(BLUE_GREEN, "APP_VERSION = \"v1\"", ""));
    let mut first = deploy_args(r1);
    first.push("--wait".into());
    run(&server, &first).ok();
    let canary = "strategy = \"canary\"\nsteps = [{ weight = 50, pause = \"4s\" }]";
    // The error and success gates are what the garbage must not trip; the
    // p99 gate gets a wide margin, so a stall of this busy machine during
    // the step (one slow answer is the p99 of a few hundred) cannot roll
    // the canary back either.
    let r2 = release(
        &server,
        &config(canary, "APP_VERSION = \"v2\"", "p99_margin = \"10s\""),
    );
    let load = Load::start_n(proxy.port, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let hostile = garbage_bodies(proxy.port, stop.clone());
    let mut args = deploy_args(r2);
    args.push("--wait".into());
    let r = run(&server, &args);
    stop.store(true, Ordering::SeqCst);
    let sent = hostile.join().unwrap();
    assert_eq!(r.code, 0, "{r:?}");
    let d = server
        .run(&["--json", "deploys", "--env", "production", "show", "2"])
        .json();
    assert_eq!(d["outcome"], "succeeded", "{d:#}");
    let gate = |name: &str| {
        d["gates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == name)
            .map(|g| g["value"].as_str().unwrap().to_string())
    };
    assert_eq!(gate("error rate").as_deref(), Some("0.00 %"), "{d:#}");
    assert_eq!(gate("success rate").as_deref(), Some("100.00 %"), "{d:#}");
    // The proxy counted them, as the client's.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stats = rt
        .block_on(async {
            tokio::time::timeout(
                support::CALL_DEADLINE,
                gantry_proxy::AdminClient::new(&admin).stats(),
            )
            .await
        })
        .expect("GET /stats in time")
        .unwrap();
    let broken: u64 = ["r1", "r2"]
        .iter()
        .filter_map(|s| stats.set("hello/production", s))
        .map(|s| s.client_errors.total())
        .sum();
    assert!(sent > 20 && broken > 20, "sent {sent}, counted {broken}");
    let canary = stats.set("hello/production", "r2").unwrap();
    assert_eq!(canary.requests.c5xx, 0, "{canary:?}");
    assert!(canary.client_errors.total() > 0, "{canary:?}");
    let seen = load.finish();
    assert_eq!(seen.failed, 0, "failed requests: {:?}", seen.samples);
}
