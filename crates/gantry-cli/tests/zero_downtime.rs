//! Zero downtime across many deploys: steady load through the proxy while
//! the control plane does 20 blue-green deploys, 20 canary deploys, 10
//! automatic rollbacks of bad releases (readiness never passes, a 5xx
//! burst, high latency, a crash on start) and 10 manual rollbacks (half
//! while the previous set is still warm, half after the deploy finished).
//! No request may fail because of a switch; the bad canaries' own errors are
//! counted apart and must stop once they are rolled back.

mod support;

use std::time::Instant;

use support::deploy::{Load, config, deploy_detached, get_via, release, serial, sets, wait_phase};
use support::{TestServer, start_proxy};

const BLUE_GREEN: &str = "strategy = \"blue-green\"\nrollback_window = \"300ms\"";
const CANARY: &str = "strategy = \"canary\"\nsteps = [{ weight = 25, pause = \"1s\" }, { weight = 50, pause = \"1s\" }]";

struct Marathon {
    server: TestServer,
    port: u16,
    n: u32,
    tally: std::collections::BTreeMap<&'static str, u32>,
    /// The version each release answers with (its config's APP_VERSION).
    versions: std::collections::HashMap<i64, String>,
}

impl Marathon {
    fn build(&mut self, deploy: &str, env: &str) -> (i64, String) {
        self.n += 1;
        let v = format!("v{}", self.n);
        let toml = config(deploy, &format!("APP_VERSION = \"{v}\"\n{env}"), "");
        let r = release(&self.server, &toml);
        self.versions.insert(r, v.clone());
        (r, v)
    }

    fn deploy(&self, r: i64) -> support::Run {
        self.server.run(&[
            "deploy",
            "--env",
            "production",
            "--release",
            &r.to_string(),
            "--wait",
        ])
    }

    fn good(&mut self, kind: &'static str, strategy: &str) {
        let (r, v) = self.build(strategy, "");
        let out = self.deploy(r);
        assert_eq!(out.code, 0, "{kind} deploy of {v}: {out:?}");
        assert!(get_via(self.port).1.contains(&format!("hello from {v} ")));
        assert_eq!(sets(&self.server), [format!("r{r}")]);
        *self.tally.entry(kind).or_default() += 1;
    }

    /// A bad release: rolled back automatically; the serving one stays.
    fn bad(&mut self, kind: &'static str, strategy: &str, env: &str, why: &str) {
        let before = sets(&self.server);
        let (r, v) = self.build(strategy, env);
        let out = self.deploy(r);
        assert_eq!(out.code, 1, "bad release ({kind}) {v}: {out:?}");
        assert!(
            out.stdout.contains("rolled-back") && out.stdout.contains(why),
            "bad release ({kind}) {v}: {}",
            out.stdout
        );
        assert_eq!(sets(&self.server), before, "{kind}: only the old set runs");
        *self.tally.entry("automatic rollback").or_default() += 1;
    }

    /// `gantry rollback` while the deploy it undoes keeps the old set warm.
    fn warm_rollback(&mut self) {
        let before = sets(&self.server);
        let (r, _) = self.build("strategy = \"blue-green\"\nrollback_window = \"60s\"", "");
        let id = deploy_detached(&self.server, r);
        let d = wait_phase(&self.server, id, "warm");
        assert_eq!(d["phase"], "warm", "{d:#}");
        let t = Instant::now();
        let out = self.server.run(&["rollback", "--env", "production"]);
        eprintln!(
            "warm rollback took {:?} (the command, including its polling)",
            t.elapsed()
        );
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("aborted"), "{}", out.stdout);
        assert_eq!(sets(&self.server), before, "the previous release serves");
        *self.tally.entry("manual rollback").or_default() += 1;
    }

    /// `gantry rollback` after the deploy finished: the previous release
    /// is started again and gets the traffic through the gated path.
    fn cold_rollback(&mut self) {
        let list = self
            .server
            .run(&["--json", "deploys", "--env", "production"])
            .json();
        let succeeded: Vec<i64> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["outcome"] == "succeeded")
            .map(|d| d["release"].as_i64().unwrap())
            .collect();
        let current = succeeded[0];
        let previous = *succeeded.iter().find(|r| **r != current).unwrap();
        let out = self
            .server
            .run(&["rollback", "--env", "production", "--wait"]);
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(sets(&self.server), [format!("r{previous}")]);
        // With the config it ran with, not the latest applied one.
        let answer = get_via(self.port).1;
        assert!(
            answer.contains(&format!("hello from {} ", self.versions[&previous])),
            "{answer}"
        );
        *self.tally.entry("manual rollback").or_default() += 1;
    }
}

#[test]
fn sixty_deploys_and_rollbacks_under_load_fail_no_request() {
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
    let mut m = Marathon {
        server,
        port: proxy.port,
        n: 0,
        tally: Default::default(),
        versions: Default::default(),
    };
    m.good("first", BLUE_GREEN);
    let load = Load::start_n(m.port, 3);
    let mut injected_after_rollback = 0;
    for round in 0..10 {
        m.good("blue-green", BLUE_GREEN);
        m.good("canary", CANARY);
        match round % 4 {
            0 => m.bad(
                "readiness never passes",
                BLUE_GREEN,
                "FAIL_READINESS = \"1\"",
                "not ready",
            ),
            1 => {
                m.bad(
                    "5xx burst",
                    CANARY,
                    "ERROR_RATE = \"0.5\"",
                    "gate failed: error rate",
                );
                // The requests in flight to the canary as it was rolled
                // back are answered (and counted) first.
                load.settle();
                injected_after_rollback = load.seen().injected;
                assert!(
                    injected_after_rollback > 0,
                    "the bad canary's errors are seen"
                );
            }
            2 => m.bad(
                "high latency",
                CANARY,
                "LATENCY_MS = \"900\"",
                "gate failed: p99",
            ),
            _ => m.bad(
                "crash on start",
                BLUE_GREEN,
                "CRASH_ON_START = \"1\"",
                "rolled-back",
            ),
        }
        m.good("blue-green", BLUE_GREEN);
        m.good("canary", CANARY);
        if round % 2 == 0 {
            m.warm_rollback();
        } else {
            m.cold_rollback();
        }
        assert_eq!(
            load.seen().injected,
            injected_after_rollback,
            "no injected error once the bad canary was rolled back"
        );
        let seen = load.seen();
        assert_eq!(seen.failed, 0, "round {round}: {:?}", seen.samples);
    }
    let seen = load.finish();
    eprintln!("{:?} {seen:?}", m.tally);
    assert_eq!(seen.failed, 0, "{:?}", seen.samples);
    assert!(seen.ok > 1000, "the load ran: {seen:?}");
    assert_eq!(m.tally["blue-green"], 20);
    assert_eq!(m.tally["canary"], 20);
    assert_eq!(m.tally["automatic rollback"], 10);
    assert_eq!(m.tally["manual rollback"], 10);
    drop(proxy);
}
