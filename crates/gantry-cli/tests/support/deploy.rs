//! Deploy-test support: releases built from the example app, requests
//! through the proxy, steady load that classifies every answer, and waiting
//! for a deploy's phase.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::TestServer;

/// Deploy tests each run a control plane, a proxy, several app processes and
/// steady load; they run one at a time so they measure the product, not the
/// machine's contention.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds a release from a directory holding the example app and `toml`,
/// after applying `toml` as production's config. Returns its number.
pub fn release(server: &TestServer, toml: &str) -> i64 {
    let dir = server.dir.path().join("src");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(super::hello_app(), dir.join("hello-app")).unwrap();
    std::fs::write(dir.join("gantry.toml"), toml).unwrap();
    std::fs::write(server.dir.path().join("gantry.toml"), toml).unwrap();
    server.run(&["config", "apply", "--env", "production"]).ok();
    let r = server.run(&[
        "--json",
        "build",
        "--env",
        "production",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    r.ok();
    r.json()["number"].as_i64().unwrap()
}

/// Production's config: two instances, `deploy` as the `[deploy]` table,
/// `env` added to `[env]`, `extra` appended (more tables).
pub fn config(deploy: &str, env: &str, extra: &str) -> String {
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

[env]
{env}

[proxy]
hosts = ["hello.test"]

{extra}
"#
    )
}

/// `GET path` with `Host: hello.test` through the proxy on `port`, on a new
/// connection; the status (0 when there was no HTTP answer) and the body.
pub fn get_path(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, "connect failed".into());
    };
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: hello.test\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return (0, "write failed".into());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    super::status_and_body(&out)
}

pub fn get_via(port: u16) -> (u16, String) {
    get_path(port, "/")
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub ok: u64,
    /// Answers other than 200 that the app did not make on purpose: what
    /// a switch must never cause.
    pub failed: u64,
    /// 500s a release made on purpose (`ERROR_RATE`): a bad canary's own.
    pub injected: u64,
    /// The first few failures and injected errors, for messages.
    pub samples: Vec<String>,
}

/// Steady load through the proxy on `port`: one request at a time on new
/// connections, with a short pause between.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    injected: Arc<AtomicU64>,
    samples: Arc<Mutex<Vec<String>>>,
    /// Per client: how many requests it has finished.
    done: Vec<Arc<AtomicU64>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

/// One load client: requests until `stop`, counting each answer.
fn client(
    port: u16,
    stop: &AtomicBool,
    ok: &AtomicU64,
    failed: &AtomicU64,
    injected: &AtomicU64,
    samples: &Mutex<Vec<String>>,
    done: &AtomicU64,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && n < 2_000_000 {
        n += 1;
        let (status, body) = get_via(port);
        // Counted at the end of the round, once the answer is classified.
        let _finished = Finished(done);
        if status == 200 {
            ok.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        if status == 500 && body.starts_with("injected error") {
            injected.fetch_add(1, Ordering::Relaxed);
        } else {
            failed.fetch_add(1, Ordering::Relaxed);
        }
        let mut m = samples.lock().unwrap();
        if m.len() < 20 {
            m.push(format!("{status} {}", body.trim()));
        }
    }
}

impl Load {
    pub fn start(port: u16) -> Self {
        Self::start_n(port, 1)
    }

    /// `clients` threads, each one request at a time.
    pub fn start_n(port: u16, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let injected = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let done: Vec<Arc<AtomicU64>> = (0..clients.max(1)).map(|_| Arc::default()).collect();
        let handles: Vec<_> = done
            .iter()
            .map(|d| {
                let (s, o, f, i, m, d) = (
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    injected.clone(),
                    samples.clone(),
                    d.clone(),
                );
                std::thread::spawn(move || client(port, &s, &o, &f, &i, &m, &d))
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            injected,
            samples,
            done,
            handles,
        }
    }

    /// Waits (up to 30 s) until every client has finished a request it
    /// started after this call: every request that was in flight when it
    /// was called has been answered and counted.
    #[track_caller]
    pub fn settle(&self) {
        let before: Vec<u64> = self.done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
        super::eventually(
            "every load client to finish a request started after now",
            Duration::from_secs(30),
            Duration::from_millis(5),
            || {
                let now: Vec<u64> = self.done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
                // One more may be the request in flight at the call.
                if now.iter().zip(&before).all(|(n, b)| *n >= b + 2) {
                    Ok(())
                } else {
                    Err(format!(
                        "requests finished per client: {before:?} then {now:?}"
                    ))
                }
            },
        );
    }

    /// The counts so far, the load going on.
    pub fn seen(&self) -> Seen {
        Seen {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            injected: self.injected.load(Ordering::Relaxed),
            samples: self.samples.lock().unwrap().clone(),
        }
    }

    pub fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            h.join().unwrap();
        }
        self.seen()
    }
}

/// Counts a finished request when dropped: after its answer is counted.
struct Finished<'a>(&'a AtomicU64);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `deploys show ID --env production --json`.
pub fn show(server: &TestServer, id: i64) -> serde_json::Value {
    show_run(server, id).json()
}

fn show_run(server: &TestServer, id: i64) -> super::Run {
    server.run(&[
        "--json",
        "deploys",
        "--env",
        "production",
        "show",
        &id.to_string(),
    ])
}

/// `deploys show ID --json` once the deploy is in phase `want` or finished.
pub fn wait_phase(server: &TestServer, id: i64, want: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = show_run(server, id);
        // The deploy may not exist yet.
        let d = if r.code == 0 {
            r.json()
        } else {
            serde_json::Value::Null
        };
        if d["phase"] == want || d["outcome"].is_string() {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "deploy {id} never reached phase {want} or an end within 60 s; it is: {d:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a deploy of `release` to production in the background; its id.
pub fn deploy_detached(server: &TestServer, release: i64) -> i64 {
    let out = server.run(&[
        "--json",
        "deploy",
        "--env",
        "production",
        "--release",
        &release.to_string(),
        "--detach",
    ]);
    out.ok();
    out.json()["id"].as_i64().unwrap()
}

/// The sets of production's instances.
pub fn sets(server: &TestServer) -> Vec<String> {
    let ps = server.run(&["--json", "ps", "--env", "production"]).json();
    let mut sets: Vec<String> = ps
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["set"].as_str().unwrap_or("").to_string())
        .collect();
    sets.sort();
    sets.dedup();
    sets
}
