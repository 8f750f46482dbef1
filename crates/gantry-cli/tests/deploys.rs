//! Deploys end to end: the control plane, the edge proxy and the example
//! app as real processes; steady load through the proxy while releases are
//! deployed (first deploy, blue-green), and bad releases are rolled back
//! automatically (readiness never passes; a canary answering 5xx).

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::deploy::{Load, get_via, release, serial, wait_phase};
use support::{TestServer, start_proxy};

/// Production's config with a smoke check, and staging on its own host.
fn config(strategy: &str, extra_env: &str) -> String {
    support::deploy::config(strategy, extra_env, SMOKE_AND_STAGING)
}

const SMOKE_AND_STAGING: &str = "[[deploy.smoke]]
path = \"/health\"
expect_status = 200

[environments.staging]
proxy = { hosts = [\"staging.hello.test\"] }

[environments.production]
";

const BLUE_GREEN: &str = "strategy = \"blue-green\"\nrollback_window = \"1s\"";
const CANARY: &str = "strategy = \"canary\"\nsteps = [{ weight = 50, pause = \"20s\" }]";

#[test]
fn deploys_switch_with_zero_failures_and_bad_releases_roll_back() {
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

    // First deploy: straight to 100 %.
    let r1 = release(&server, &config(BLUE_GREEN, "APP_VERSION = \"v1\""));
    let out = server.run(&[
        "deploy",
        "--env",
        "production",
        "--release",
        &r1.to_string(),
        "--wait",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("deploy 1 succeeded"), "{}", out.stdout);
    assert!(get_via(proxy.port).1.contains("hello from v1"));

    // Blue-green to v2 under load: zero failed requests. The command
    // returns once traffic is on v2 and says how long v1 stays warm; the
    // warm window runs on in the server.
    let r2 = release(&server, &config(BLUE_GREEN, "APP_VERSION = \"v2\""));
    let load = Load::start(proxy.port);
    let out = server.run(&[
        "deploy",
        "--env",
        "production",
        "--release",
        &r2.to_string(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(
            "release 2 takes all traffic of hello/production; release 1 stays warm until"
        ) && out
            .stdout
            .contains("`gantry rollback --env production` moves the traffic back at once"),
        "{}",
        out.stdout
    );
    let d = wait_phase(&server, 2, "done");
    assert_eq!(d["outcome"], "succeeded", "{d:#}");
    // Deliberately, the load goes on a moment after the old set stopped.
    std::thread::sleep(Duration::from_millis(300));
    let seen = load.finish();
    let (ok, failed, failures) = (seen.ok, seen.failed + seen.injected, seen.samples);
    assert!(
        out.stdout.contains("replacing set r1, release 1"),
        "{}",
        out.stdout
    );
    assert_eq!(failed, 0, "failed requests during the switch: {failures:?}");
    assert!(ok > 50, "the load ran ({ok} requests)");
    assert!(get_via(proxy.port).1.contains("hello from v2"));
    // Smoke checks: on the new instances before traffic, through the proxy after.
    let show = server.run(&["deploys", "--env", "production", "show", "2"]);
    assert!(
        show.stdout
            .contains("smoke: 2 smoke checks passed on the new instances directly"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout
            .contains("smoke: 1 smoke checks passed through the proxy (Host hello.test)"),
        "{}",
        show.stdout
    );
    let ps = server.run(&["--json", "ps", "--env", "production"]).json();
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .all(|i| i["set"] == format!("r{r2}")),
        "old set stopped: {ps:#}"
    );

    // A release whose readiness never passes: rolled back, v2 keeps serving.
    let r3 = release(
        &server,
        &config(BLUE_GREEN, "APP_VERSION = \"v3\"\nFAIL_READINESS = \"1\""),
    );
    let load = Load::start(proxy.port);
    let out = server.run(&[
        "deploy",
        "--env",
        "production",
        "--release",
        &r3.to_string(),
        "--wait",
    ]);
    let seen = load.finish();
    let (failed, failures) = (seen.failed + seen.injected, seen.samples);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("rolled-back") && out.stdout.contains("not ready"),
        "{}",
        out.stdout
    );
    assert_eq!(failed, 0, "{failures:?}");
    assert!(get_via(proxy.port).1.contains("hello from v2"));

    // A canary answering 5xx: the gate fails, weight back to 0 at once.
    let r4 = release(
        &server,
        &config(CANARY, "APP_VERSION = \"v4\"\nERROR_RATE = \"0.5\""),
    );
    let load = Load::start(proxy.port);
    let out = server.run(&[
        "deploy",
        "--env",
        "production",
        "--release",
        &r4.to_string(),
        "--wait",
    ]);
    // Deliberately, the load goes on half a second after the rollback.
    std::thread::sleep(Duration::from_millis(500));
    let seen = load.finish();
    let (ok, failed, failures) = (seen.ok, seen.failed + seen.injected, seen.samples);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("gate failed: error rate"),
        "{}",
        out.stdout
    );
    assert!(failed > 0, "the bad canary's own errors are seen");
    assert!(
        failures.iter().all(|f| f.starts_with("500")),
        "only the canary's 500s: {failures:?}"
    );
    assert!(ok > failed);
    // After the rollback, no more errors: half a second of load, on
    // purpose.
    let after = Load::start(proxy.port);
    std::thread::sleep(Duration::from_millis(500));
    let seen = after.finish();
    let (ok, failed, failures) = (seen.ok, seen.failed + seen.injected, seen.samples);
    assert_eq!(failed, 0, "{failures:?}");
    assert!(ok > 0);

    // History.
    let list = server
        .run(&["--json", "deploys", "--env", "production"])
        .json();
    let outcomes: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["rolled-back", "rolled-back", "succeeded", "succeeded"]
    );
    // The list shows each phase's duration.
    let human = server.run(&["deploys", "--env", "production"]);
    assert!(
        human.stdout.contains("PHASES")
            && human.stdout.contains("warm ")
            && human.stdout.contains("start "),
        "{}",
        human.stdout
    );
    let show = server.run(&["deploys", "--env", "production", "show", "4"]);
    assert!(
        show.stdout.contains("canary step 1/1: 50 %"),
        "{}",
        show.stdout
    );
    drop(proxy);
}

#[test]
fn a_deploy_survives_kill_9_of_the_control_plane() {
    let _serial = serial();
    let proxy_state = tempfile::tempdir().unwrap();
    let proxy = start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    let mut server = TestServer::start_with(&["--proxy-admin", admin.to_str().unwrap()]);
    let r1 = release(&server, &config(BLUE_GREEN, "APP_VERSION = \"v1\""));
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

    // Killed while the canary waits for approval: it resumes there, with
    // traffic as it was, and finishes once approved.
    let canary = "strategy = \"canary\"\nsteps = [{ weight = 30, pause = \"approval\" }]";
    let r2 = release(&server, &config(canary, "APP_VERSION = \"v2\""));
    let out = server.run(&[
        "--json",
        "deploy",
        "--env",
        "production",
        "--release",
        &r2.to_string(),
        "--detach",
    ]);
    let id = out.json()["id"].as_i64().unwrap();
    let d = wait_phase(&server, id, "await-approval");
    assert_eq!(d["weight"], 30);
    // The environment is locked meanwhile: a second deploy is refused with
    // the holder, the deploy id and the age.
    let r = server.run(&[
        "deploy",
        "--env",
        "production",
        "--release",
        &r1.to_string(),
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!(
            "hello/production is being deployed by deploy {id} of release {r2} by local:uid="
        )) && r.stderr.contains("(phase await-approval, for "),
        "{}",
        r.stderr
    );
    let load = Load::start(proxy.port);
    // The control plane stays down a moment, on purpose: traffic flows on.
    server.kill9_and_restart_paused(|| std::thread::sleep(Duration::from_millis(200)));
    let d = wait_phase(&server, id, "await-approval");
    assert_eq!(
        (d["phase"].as_str(), d["weight"].as_i64()),
        (Some("await-approval"), Some(30)),
        "{d:#}"
    );
    server.run(&["approve", "--env", "production"]).ok();
    let d = wait_phase(&server, id, "done");
    let seen = load.finish();
    let (failed, failures) = (seen.failed + seen.injected, seen.samples);
    assert_eq!(d["outcome"], "succeeded", "{d:#}");
    assert_eq!(failed, 0, "{failures:?}");
    assert!(get_via(proxy.port).1.contains("hello from v2"));
    let show = server.run(&["deploys", "--env", "production", "show", &id.to_string()]);
    assert!(
        show.stdout
            .contains("the control plane restarted; resuming at 30 %"),
        "{}",
        show.stdout
    );

    // Killed while the new instances start: rolled back, v2 untouched.
    let r3 = release(
        &server,
        &config(
            BLUE_GREEN,
            "APP_VERSION = \"v3\"\nSTARTUP_DELAY_MS = \"3000\"",
        ),
    );
    let out = server.run(&[
        "--json",
        "deploy",
        "--env",
        "production",
        "--release",
        &r3.to_string(),
        "--detach",
    ]);
    let id = out.json()["id"].as_i64().unwrap();
    wait_phase(&server, id, "start");
    server.kill9_and_restart_paused(|| {});
    let d = wait_phase(&server, id, "done");
    assert_eq!(d["outcome"], "rolled-back", "{d:#}");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("restarted before traffic moved"),
        "{d:#}"
    );
    assert!(get_via(proxy.port).1.contains("hello from v2"));
    let ps = server.run(&["--json", "ps", "--env", "production"]).json();
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .all(|i| i["set"] == format!("r{r2}")),
        "{ps:#}"
    );
    drop(proxy);
}

#[test]
fn promote_ships_the_same_release_and_rollback_brings_the_previous_back() {
    let _serial = serial();
    let proxy_state = tempfile::tempdir().unwrap();
    let proxy = start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    let server = TestServer::start_with(&["--proxy-admin", admin.to_str().unwrap()]);
    let toml = config(BLUE_GREEN, "APP_VERSION = \"v1\"");
    let r1 = release(&server, &toml);
    // `release` applied the config to production; staging needs it too.
    server.run(&["config", "apply", "--env", "staging"]).ok();
    let r = server.run(&["promote", "--from", "staging", "--to", "production"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("`staging` has no successfully deployed release"),
        "{}",
        r.stderr
    );
    server
        .run(&[
            "deploy",
            "--env",
            "staging",
            "--release",
            &r1.to_string(),
            "--wait",
        ])
        .ok();
    let r = server.run(&["promote", "--from", "staging", "--to", "production"]);
    r.ok();
    assert!(
        r.stdout.contains(&format!(
            "promoting release {r1} from staging to production"
        )),
        "{}",
        r.stdout
    );
    let list = server
        .run(&["--json", "deploys", "--env", "production"])
        .json();
    assert_eq!(list[0]["release"], r1, "the same release, not a rebuild");
    assert_eq!(
        server
            .run(&["--json", "releases", "--env", "production"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let r2 = release(&server, &config(BLUE_GREEN, "APP_VERSION = \"v2\""));
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
    assert!(get_via(proxy.port).1.contains("hello from v2"));
    let r = server.run(&["rollback", "--env", "production", "--wait"]);
    r.ok();
    assert!(
        r.stdout
            .contains(&format!("rolling production back to release {r1}")),
        "{}",
        r.stdout
    );
    let ps = server.run(&["--json", "ps", "--env", "production"]).json();
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .all(|i| i["set"] == format!("r{r1}")),
        "{ps:#}"
    );
    drop(proxy);
}

fn config_with(extra_env: &str, migrate: &str, pre_hook: &str) -> String {
    format!(
        r#"
[app]
name = "hello"

[run]
command = "./hello-app"
instances = 1

[health.readiness]
kind = "http"
path = "/readiness"
interval = "300ms"
timeout = "250ms"
failure_threshold = 3

[deploy]
strategy = "blue-green"
rollback_window = "1s"

[deploy.hooks]
pre_deploy = "{pre_hook}"
post_deploy = "echo post $GANTRY_RELEASE >> $DATA_DIR/hooks.log"

[migrate]
command = "{migrate}"
rollback = "echo rollback $GANTRY_RELEASE >> $DATA_DIR/migrations.log"

[env]
{extra_env}

[proxy]
hosts = ["hello.test"]
"#
    )
}

#[test]
fn migrations_and_hooks_run_and_roll_back() {
    let _serial = serial();
    let proxy_state = tempfile::tempdir().unwrap();
    let proxy = start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    let server = TestServer::start_with(&["--proxy-admin", admin.to_str().unwrap()]);
    let data = server.data_dir().join("envs/hello/production/data");
    let migrate = "echo migrate $GANTRY_RELEASE >> $DATA_DIR/migrations.log";
    let pre = "echo pre $GANTRY_RELEASE prev=$GANTRY_PREVIOUS_RELEASE >> $DATA_DIR/hooks.log";
    let read = |f: &str| std::fs::read_to_string(data.join(f)).unwrap_or_default();

    let r1 = release(&server, &config_with("APP_VERSION = \"v1\"", migrate, pre));
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
    assert_eq!(read("migrations.log"), "migrate 1\n");
    assert_eq!(read("hooks.log"), "pre 1 prev=\npost 1\n");

    // Migrated, then never ready: the migration's rollback runs.
    let r2 = release(
        &server,
        &config_with("APP_VERSION = \"v2\"\nFAIL_READINESS = \"1\"", migrate, pre),
    );
    let out = server.run(&[
        "deploy",
        "--env",
        "production",
        "--release",
        &r2.to_string(),
        "--wait",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(read("migrations.log"), "migrate 1\nmigrate 2\nrollback 2\n");
    assert!(
        out.stdout.contains("migration rolled back"),
        "{}",
        out.stdout
    );
    assert!(get_via(proxy.port).1.contains("hello from v1"));

    // A failing migration stops the deploy; nothing new starts.
    let r3 = release(
        &server,
        &config_with("APP_VERSION = \"v3\"", "echo boom; exit 7", pre),
    );
    let out = server.run(&[
        "deploy",
        "--env",
        "production",
        "--release",
        &r3.to_string(),
        "--wait",
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("migration failed, the old release serves untouched"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("boom"),
        "the migration's output is in the timeline: {}",
        out.stdout
    );
    let ps = server.run(&["--json", "ps", "--env", "production"]).json();
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .all(|i| i["set"] == format!("r{r1}")),
        "{ps:#}"
    );

    // A failing pre-deploy hook stops it before the migration.
    let r4 = release(
        &server,
        &config_with("APP_VERSION = \"v4\"", migrate, "exit 1"),
    );
    let out = server.run(&[
        "deploy",
        "--env",
        "production",
        "--release",
        &r4.to_string(),
        "--wait",
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("pre-deploy hook failed"),
        "{}",
        out.stdout
    );
    assert!(!read("migrations.log").contains("migrate 4"));
    assert!(get_via(proxy.port).1.contains("hello from v1"));
    drop(proxy);
}

#[test]
fn a_second_deploy_waits_for_the_lease_with_wait() {
    let _serial = serial();
    let proxy_state = tempfile::tempdir().unwrap();
    let proxy = start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    let server = TestServer::start_with(&["--proxy-admin", admin.to_str().unwrap()]);
    let r1 = release(&server, &config(BLUE_GREEN, "APP_VERSION = \"v1\""));
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
    let canary = "strategy = \"canary\"\nsteps = [{ weight = 30, pause = \"approval\" }]";
    let r2 = release(&server, &config(canary, "APP_VERSION = \"v2\""));
    let id = server
        .run(&[
            "--json",
            "deploy",
            "--env",
            "production",
            "--release",
            &r2.to_string(),
            "--detach",
        ])
        .json()["id"]
        .as_i64()
        .unwrap();
    wait_phase(&server, id, "await-approval");
    let mut waiting = support::KillOnDrop::new(
        server
            .cmd()
            .args([
                "deploy",
                "--env",
                "production",
                "--release",
                &r1.to_string(),
                "--wait",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let _stdout = support::Lines::new(waiting.child().stdout.take().unwrap());
    let mut stderr = support::Lines::new(waiting.child().stderr.take().unwrap());
    // The second deploy is waiting for the lease before the first ends.
    stderr.expect("waiting for it to finish", Duration::from_secs(30));
    server
        .run(&["approve", "--env", "production", &id.to_string()])
        .ok();
    assert_eq!(wait_phase(&server, id, "done")["outcome"], "succeeded");
    // The waiting deploy got the lease; it pauses for approval too (the
    // environment's config asks for it).
    wait_phase(&server, id + 1, "await-approval");
    server
        .run(&["approve", "--env", "production", &(id + 1).to_string()])
        .ok();
    let status = waiting.wait_within("the waiting deploy", support::COMMAND_DEADLINE);
    stderr.take_to_end(Duration::from_secs(10));
    let stderr = stderr.seen.join("\n");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("waiting for it to finish"), "{stderr}");
    assert_eq!(wait_phase(&server, id, "done")["outcome"], "succeeded");
    let ps = server.run(&["--json", "ps", "--env", "production"]).json();
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .all(|i| i["set"] == format!("r{r1}")),
        "the waiting deploy ran after: {ps:#}"
    );
    drop(proxy);
}

#[test]
fn a_deploy_is_refused_when_the_proxy_is_down_or_the_host_is_taken() {
    let _serial = serial();
    let proxy_state = tempfile::tempdir().unwrap();
    let admin = proxy_state.path().join("admin.sock");
    let server = TestServer::start_with(&["--proxy-admin", admin.to_str().unwrap()]);
    // No environments declared: staging and production share `hello.test`.
    let toml = config(BLUE_GREEN, "APP_VERSION = \"v1\"").replace("[environments.staging]\nproxy = { hosts = [\"staging.hello.test\"] }\n\n[environments.production]\n", "");
    let r1 = release(&server, &toml);
    let r = server.run(&[
        "deploy",
        "--env",
        "production",
        "--release",
        &r1.to_string(),
        "--wait",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("the edge proxy does not answer"),
        "{}",
        r.stderr
    );
    let proxy = start_proxy(proxy_state.path());
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
    server.run(&["config", "apply", "--env", "staging"]).ok();
    let r = server.run(&[
        "deploy",
        "--env",
        "staging",
        "--release",
        &r1.to_string(),
        "--wait",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("does not fit the proxy's table")
            && r.stderr
                .contains("already routed by route `hello/production`"),
        "{}",
        r.stderr
    );
    assert!(get_via(proxy.port).1.contains("hello from v1"));
    drop(proxy);
}
