//! Crash safety of deploys: the control plane is killed with SIGKILL in
//! every phase a deploy can be in, then restarted on the same data dir.
//! Each time the deploy resumes or rolls back to a consistent state (the
//! right release serving, only its instances running, the environment's
//! lock free), and steady load through the proxy sees no failed request:
//! traffic is never routed to nothing.

mod support;

use std::time::Duration;

use support::TestServer;
use support::deploy::{Load, config, deploy_detached, get_via, release, serial, sets, wait_phase};

const BLUE_GREEN: &str = "strategy = \"blue-green\"\nrollback_window = \"1s\"";

/// One case: deploy a release built from this config, kill -9 the control
/// plane once the deploy is in `phase`, restart it, and check the end.
struct Case {
    phase: &'static str,
    deploy: &'static str,
    env: &'static str,
    extra: &'static str,
    outcome: &'static str,
    reason: &'static str,
    /// The new release serves afterwards (else the previous one still does).
    new_serves: bool,
    /// Once in `phase`, wait until this env data file holds this text.
    until: Option<(&'static str, &'static str)>,
}

struct Env {
    server: TestServer,
    port: u16,
    serving: (i64, String),
    version: u32,
    _proxy: support::ProxyProcess,
    _proxy_state: tempfile::TempDir,
}

impl Env {
    fn data(&self, file: &str) -> String {
        std::fs::read_to_string(
            self.server
                .data_dir()
                .join("envs/hello/production/data")
                .join(file),
        )
        .unwrap_or_default()
    }

    fn run(&mut self, case: &Case) -> serde_json::Value {
        self.version += 1;
        let v = format!("v{}", self.version);
        let toml = config(
            case.deploy,
            &format!("APP_VERSION = \"{v}\"\n{}", case.env),
            case.extra,
        );
        let r = release(&self.server, &toml);
        let load = Load::start(self.port);
        let id = deploy_detached(&self.server, r);
        let d = wait_phase(&self.server, id, case.phase);
        assert_eq!(
            d["phase"], case.phase,
            "the deploy of {v} never was in {}: {d:#}",
            case.phase
        );
        if let Some((file, text)) = case.until {
            support::eventually(
                &format!("`{text}` in {file}"),
                Duration::from_secs(30),
                Duration::from_millis(50),
                || match self.data(file) {
                    t if t.contains(text) => Ok(()),
                    t => Err(format!("{file} holds {t:?}")),
                },
            );
        }
        // The control plane stays down a moment, on purpose: the apps and
        // the load go on without it.
        self.server
            .kill9_and_restart_paused(|| std::thread::sleep(Duration::from_millis(300)));
        let d = wait_phase(&self.server, id, "done");
        let seen = load.finish();
        let ctx = format!("killed in {}: {d:#}", case.phase);
        assert_eq!(d["outcome"], case.outcome, "{ctx}");
        // Why it ended: the reason of a failure, the last line otherwise.
        let last = d["timeline"]
            .as_array()
            .and_then(|t| t.last())
            .map_or("", |e| e["message"].as_str().unwrap_or(""));
        let why = d["reason"].as_str().unwrap_or(last);
        assert!(why.contains(case.reason), "why it ended: {ctx}");
        assert_eq!(seen.failed + seen.injected, 0, "{ctx}\n{:?}", seen.samples);
        assert!(seen.ok > 0, "the load ran");
        if case.new_serves {
            self.serving = (r, v);
        }
        let body = get_via(self.port).1;
        assert!(
            body.contains(&format!("hello from {} ", self.serving.1)),
            "{} serves: {body}\n{ctx}",
            self.serving.1
        );
        assert_eq!(
            sets(&self.server),
            [format!("r{}", self.serving.0)],
            "only the serving release runs: {ctx}"
        );
        d
    }
}

#[test]
fn a_deploy_killed_in_any_phase_ends_consistent_with_traffic_served() {
    let _serial = serial();
    let proxy_state = tempfile::tempdir().unwrap();
    let proxy = support::start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    let proxy_addr = format!("127.0.0.1:{}", proxy.port);
    let server = TestServer::start_with(&[
        "--proxy-admin",
        admin.to_str().unwrap(),
        "--proxy-addr",
        &proxy_addr,
    ]);
    let r1 = release(&server, &config(BLUE_GREEN, "APP_VERSION = \"v1\"", ""));
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
    let port = proxy.port;
    let mut env = Env {
        server,
        port,
        serving: (r1, "v1".into()),
        version: 1,
        _proxy: proxy,
        _proxy_state: proxy_state,
    };

    // Before anything changed: the deploy fails, nothing moved.
    env.run(&Case {
        phase: "pre-hook",
        deploy: "strategy = \"blue-green\"\nrollback_window = \"1s\"\nhooks = { pre_deploy = \"sleep 60\" }",
        env: "",
        extra: "",
        outcome: "failed",
        reason: "before anything changed",
        new_serves: false,
        until: None,
    });

    // During a migration: its command is stopped, then rolled back.
    let d = env.run(&Case {
        phase: "migrate",
        deploy: BLUE_GREEN,
        env: "",
        extra: "[migrate]\ncommand = \"echo started >> $DATA_DIR/migrate.log; sleep 60; echo finished >> $DATA_DIR/migrate.log\"\nrollback = \"echo rollback $GANTRY_RELEASE >> $DATA_DIR/migrate.log\"",
        outcome: "rolled-back",
        reason: "during the migration",
        new_serves: false,
        until: Some(("migrate.log", "started")),
    });
    let id = d["id"].as_i64().unwrap().to_string();
    assert_eq!(
        env.data("migrate.log"),
        format!("started\nrollback {}\n", d["release"]),
        "the orphaned migration was stopped before its rollback ran"
    );
    let show = env
        .server
        .run(&["deploys", "--env", "production", "show", &id]);
    assert!(
        show.stdout
            .contains("left running by the control plane that died"),
        "{}",
        show.stdout
    );

    // Smoke checks on the new instances, before traffic: rolled back.
    env.run(&Case {
        phase: "smoke-direct",
        deploy: BLUE_GREEN,
        env: "",
        extra: "[[deploy.smoke]]\npath = \"/slow?ms=3000\"\nmax_latency = \"20s\"",
        outcome: "rolled-back",
        reason: "before traffic moved",
        new_serves: false,
        until: None,
    });

    // A canary step with traffic on both sets: resumed at its weight.
    let d = env.run(&Case {
        phase: "analyze",
        deploy: "strategy = \"canary\"\nsteps = [{ weight = 50, pause = \"4s\" }]",
        env: "",
        extra: "",
        outcome: "succeeded",
        reason: "",
        new_serves: true,
        until: None,
    });
    let id = d["id"].as_i64().unwrap().to_string();
    let show = env
        .server
        .run(&["deploys", "--env", "production", "show", &id]);
    assert!(
        show.stdout
            .contains("the control plane restarted; resuming at 50 %"),
        "{}",
        show.stdout
    );

    // Smoke checks through the proxy after the switch: run again.
    env.run(&Case {
        phase: "smoke-live",
        deploy: BLUE_GREEN,
        env: "",
        extra: "[[deploy.smoke]]\npath = \"/slow?ms=3000\"\nmax_latency = \"20s\"",
        outcome: "succeeded",
        reason: "",
        new_serves: true,
        until: None,
    });

    // Blue-green's warm window: resumed at 100 %, then the old set drains.
    env.run(&Case {
        phase: "warm",
        deploy: "strategy = \"blue-green\"\nrollback_window = \"5s\"",
        env: "",
        extra: "",
        outcome: "succeeded",
        reason: "",
        new_serves: true,
        until: None,
    });

    // The old set draining (slow requests hold it): drained again, and
    // the slow requests in flight across the kill all complete.
    {
        let port = env.port;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let slow = std::thread::spawn(move || {
            let mut requests = Vec::new();
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                requests.push(std::thread::spawn(move || {
                    support::deploy::get_path(port, "/slow?ms=4000").0
                }));
                std::thread::sleep(Duration::from_millis(300));
            }
            requests
                .into_iter()
                .map(|r| r.join().unwrap())
                .collect::<Vec<u16>>()
        });
        env.run(&Case {
            phase: "drain",
            deploy: "strategy = \"blue-green\"\nrollback_window = \"500ms\"",
            env: "",
            extra: "",
            outcome: "succeeded",
            reason: "",
            new_serves: true,
            until: None,
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let answers = slow.join().unwrap();
        assert!(answers.len() > 5, "{answers:?}");
        assert!(
            answers.iter().all(|s| *s == 200),
            "slow requests across the drain and the kill: {answers:?}"
        );
    }

    // The post-deploy hook: the deploy succeeded already; not run again.
    env.run(&Case {
        phase: "post-hook",
        deploy: "strategy = \"blue-green\"\nrollback_window = \"1s\"\nhooks = { post_deploy = \"echo post >> $DATA_DIR/post.log; sleep 60\" }",
        env: "",
        extra: "",
        outcome: "succeeded",
        reason: "during the post-deploy hook",
        new_serves: true,
        until: Some(("post.log", "post")),
    });
    assert_eq!(env.data("post.log"), "post\n");

    // Rolling back (a release that never gets ready, whose migration's
    // rollback is slow): the rollback runs again and completes.
    env.run(&Case {
        phase: "rolling-back",
        deploy: BLUE_GREEN,
        env: "FAIL_READINESS = \"1\"",
        extra: "[migrate]\ncommand = \"true\"\nrollback = \"echo rb-start >> $DATA_DIR/rb.log; sleep 4; echo rb-end >> $DATA_DIR/rb.log\"",
        outcome: "rolled-back",
        reason: "not ready",
        new_serves: false,
        until: Some(("rb.log", "rb-start")),
    });
    assert_eq!(
        env.data("rb.log"),
        "rb-start\nrb-start\nrb-end\n",
        "the interrupted rollback was stopped and run again to its end"
    );

    // The environment is not left locked: one more deploy goes through.
    let r = release(
        &env.server,
        &config(BLUE_GREEN, "APP_VERSION = \"final\"", ""),
    );
    env.server
        .run(&[
            "deploy",
            "--env",
            "production",
            "--release",
            &r.to_string(),
            "--wait",
        ])
        .ok();
    assert!(get_via(env.port).1.contains("hello from final "));
}
