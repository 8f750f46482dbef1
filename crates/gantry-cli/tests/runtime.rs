//! The process runtime against the real example app, with the real
//! `gantry shim`: probes, restarts, crash loops, OOM, graceful and forced
//! stops, process-group cleanup, logs, and adoption by a new control plane.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use gantry_runtime::limits::Limits;
use gantry_runtime::ports::PortPool;
use gantry_runtime::probe::{ProbeCheck, ProbeSpec};
use gantry_runtime::restart::{Backoff, CrashLoop, RestartPolicy, RestartRules};
use gantry_runtime::{Event, EventKind, Instance, InstanceSpec, Phase, Runtime};
use tokio::sync::mpsc;

fn http_probe(path: &str) -> ProbeSpec {
    ProbeSpec {
        check: ProbeCheck::Http {
            path: path.into(),
            status_min: 200,
            status_max: 299,
            body_contains: None,
            host: None,
        },
        port: None,
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        success_threshold: 1,
        failure_threshold: 2,
        startup_grace: Duration::ZERO,
    }
}

fn port() -> u16 {
    // One pool per test process would be the server's job; here the pool
    // still proves the port is free before use.
    static POOL: std::sync::Mutex<Option<PortPool>> = std::sync::Mutex::new(None);
    let mut pool = POOL.lock().unwrap();
    pool.get_or_insert_with(|| PortPool::new(31000..=31999))
        .allocate()
        .unwrap()
}

fn spec(name: &str, env: &[(&str, &str)]) -> InstanceSpec {
    let app = support::hello_app();
    let mut vars: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.insert("PATH".into(), "/usr/bin:/bin".into());
    vars.insert("LOG_FORMAT".into(), "json".into());
    InstanceSpec {
        app: "hello".into(),
        env: name.into(),
        set: "v1".into(),
        index: 0,
        command: app.display().to_string(),
        workdir: app.parent().unwrap().to_path_buf(),
        env_vars: vars,
        secret_env: BTreeMap::new(),
        port: port(),
        readiness: Some(http_probe("/readiness")),
        liveness: None,
        restart: RestartRules {
            policy: RestartPolicy::Always,
            backoff: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(400),
            },
            crash_loop: CrashLoop {
                max_restarts: 3,
                window: Duration::from_secs(60),
            },
        },
        stop_signal: 15,
        grace: Duration::from_secs(5),
        limits: Limits::default(),
        log_max_bytes: 1024 * 1024,
        log_keep: 2,
        usage_interval: Duration::from_millis(200),
    }
}

/// How many events the harness's channel holds (the tests read them as
/// they come; a few hundred at most).
const EVENTS: usize = 1024;

struct Harness {
    /// Its apps are killed when it is dropped: also when a test fails.
    root: support::ReapedDir,
    runtime: Runtime,
    events: mpsc::Receiver<Event>,
    seen: Vec<Event>,
}

impl Harness {
    fn new() -> Self {
        Self::in_dir(support::ReapedDir::new())
    }

    fn in_dir(root: support::ReapedDir) -> Self {
        Self::with_channel(root, EVENTS)
    }

    /// A harness whose event channel holds `capacity` events.
    fn with_channel(root: support::ReapedDir, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        let runtime = Runtime::new(
            root.path().join("instances"),
            vec![support::BIN.into(), "shim".into()],
            tx,
        );
        Self {
            root,
            runtime,
            events: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (up to 20 s) for an event of `kind`; returns it.
    async fn expect(&mut self, kind: EventKind) -> Event {
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let e = self.events.recv().await.expect("event channel open");
                self.seen.push(e.clone());
                if e.kind == kind {
                    return e;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no {kind:?} event; saw {:#?}", self.seen))
    }
}

async fn wait(
    i: &Instance,
    what: &str,
    pred: impl Fn(&gantry_runtime::InstanceStatus) -> bool,
) -> gantry_runtime::InstanceStatus {
    tokio::time::timeout(Duration::from_secs(20), i.wait_for(pred))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", i.status()))
}

fn get(port: u16, path: &str) -> (u16, String) {
    support::http_get(port, path)
}

fn alive(pid: i32) -> bool {
    gantry_runtime::procfs::stat(pid).is_some_and(|s| s.state != 'Z')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_with_env_and_port_serves_logs_and_stops_gracefully() {
    let mut h = Harness::new();
    let s = spec(
        "basic",
        &[("EXPOSE_ENV", "GREETING"), ("GREETING", "hi there")],
    );
    let port = s.port;
    let i = h.runtime.start(s);
    h.expect(EventKind::Started).await;
    let ready = h.expect(EventKind::Ready).await;
    assert!(
        ready
            .message
            .starts_with("ready: GET /readiness → 200 after "),
        "{}",
        ready.message
    );
    assert_eq!(get(port, "/env/GREETING"), (200, "hi there".into()));
    assert_eq!(
        get(port, "/env/PORT").0,
        404,
        "only EXPOSE_ENV names are shown"
    );
    let st = wait(&i, "usage sample", |s| {
        s.rss_bytes.is_some_and(|r| r > 0) && s.cpu_percent.is_some()
    })
    .await;
    assert_eq!(st.phase, Phase::Running);
    assert!(st.ready);
    assert!(
        st.last_probe
            .as_deref()
            .unwrap()
            .contains("GET /readiness → 200")
    );

    // Logs: the app's JSON line for our request, timestamped, with its id.
    let dir = h.runtime.instance_dir(i.spec());
    let line = support::eventually_async(
        "the log line of the request",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let dir = dir.clone();
            async move {
                let lines = gantry_runtime::logs::tail(&dir, 50);
                lines
                    .iter()
                    .find(|l| l.contains(&format!("req-{port}")) && l.contains("/env/GREETING"))
                    .cloned()
                    .ok_or_else(|| format!("{lines:#?}"))
            }
        },
    )
    .await;
    assert!(
        line.starts_with("20") && line.contains(" stdout {"),
        "{line}"
    );

    let pid = st.pid.unwrap();
    i.stop().await.unwrap();
    let stopped = h.expect(EventKind::Stopped).await;
    assert!(
        stopped.message.contains("stopped by SIGTERM after"),
        "{}",
        stopped.message
    );
    assert!(!alive(pid));
    assert_eq!(i.status().phase, Phase::Stopped);
    drop(h.root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_that_never_passes_keeps_the_instance_out() {
    let mut h = Harness::new();
    let i = h
        .runtime
        .start(spec("notready", &[("FAIL_READINESS", "1")]));
    h.expect(EventKind::Started).await;
    let e = h.expect(EventKind::NotReady).await;
    assert!(
        e.message.contains("GET /readiness → 503 after"),
        "{}",
        e.message
    );
    let st = i.status();
    assert!(!st.ready);
    assert_eq!(st.phase, Phase::Running, "not ready is not a crash");
    assert!(!h.seen.iter().any(|e| e.kind == EventKind::Ready));
    i.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_failure_restarts_the_process() {
    let mut h = Harness::new();
    let mut s = spec("liveness", &[("FAIL_LIVENESS_AFTER_MS", "300")]);
    s.liveness = Some(http_probe("/health"));
    let i = h.runtime.start(s);
    let first = h.expect(EventKind::Started).await;
    let e = h.expect(EventKind::LivenessFailed).await;
    assert!(e.message.contains("GET /health → 500"), "{}", e.message);
    let r = h.expect(EventKind::Restarting).await;
    assert!(
        r.message
            .starts_with("restarted: liveness probe failed; restart 1 in"),
        "{}",
        r.message
    );
    let second = h.expect(EventKind::Started).await;
    assert_ne!(first.message, second.message, "a new pid");
    assert!(i.status().restarts >= 1);
    i.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backs_off_then_stops_restarting() {
    let mut h = Harness::new();
    let i = h
        .runtime
        .start(spec("crashloop", &[("CRASH_ON_START", "1")]));
    let mut delays = Vec::new();
    for _ in 0..3 {
        let e = h.expect(EventKind::Restarting).await;
        assert!(
            e.message.starts_with("exited with code 1; restart"),
            "{}",
            e.message
        );
        let ms: u64 = e
            .message
            .rsplit(" in ")
            .next()
            .unwrap()
            .trim_end_matches(" ms")
            .parse()
            .unwrap();
        delays.push(ms);
    }
    assert!(
        delays[0] < delays[1] && delays[1] < delays[2],
        "backoff grows: {delays:?}"
    );
    let e = h.expect(EventKind::CrashLoop).await;
    assert!(
        e.message.contains("4 failures within 60 s: crash loop"),
        "{}",
        e.message
    );
    let st = wait(&i, "crash loop", |s| s.phase == Phase::CrashLoop).await;
    assert_eq!(st.last_exit.as_deref(), Some("exited with code 1"));
    // Nothing more happens on its own: a deliberate wait, longer than the
    // longest backoff (400 ms), in which a restart would have come...
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !h.events
            .try_recv()
            .is_ok_and(|e| e.kind == EventKind::Started)
    );
    // ...until an explicit restart.
    i.restart().await;
    h.expect(EventKind::Started).await;
    i.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kill_is_reported_as_oom() {
    let mut h = Harness::new();
    let mut s = spec("oom", &[("ALLOC_MB", "256")]);
    s.limits = Limits {
        memory_bytes: Some(64 * 1024 * 1024),
        cpu: Some(0.5),
    };
    s.restart.policy = RestartPolicy::Never;
    let i = h.runtime.start(s);
    let started = h.expect(EventKind::Started).await;
    assert!(
        !started.message.contains("limits: none"),
        "{}",
        started.message
    );
    let e = h.expect(EventKind::OutOfMemory).await;
    assert!(e.message.contains("OOM"), "{}", e.message);
    let st = wait(&i, "exited", |s| s.phase == Phase::Exited).await;
    assert_eq!(
        st.last_exit.as_deref(),
        Some("killed by the OOM killer (memory limit)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_sigterm_is_followed_by_sigkill_and_children_die_too() {
    let mut h = Harness::new();
    let mut s = spec("stubborn", &[("IGNORE_SIGTERM", "1"), ("SPAWN_CHILD", "1")]);
    s.grace = Duration::from_millis(500);
    let port = s.port;
    let i = h.runtime.start(s);
    h.expect(EventKind::Ready).await;
    let (status, body) = get(port, "/child");
    assert_eq!(status, 200, "{body}");
    let child: i32 = body
        .split(':')
        .nth(1)
        .unwrap()
        .trim_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap();
    assert!(alive(child));
    let pid = i.status().pid.unwrap();
    i.stop().await.unwrap();
    let e = h.expect(EventKind::Stopped).await;
    assert!(
        e.message.contains(
            "did not stop within the 500 ms grace period after SIGTERM; killed with SIGKILL"
        ),
        "{}",
        e.message
    );
    assert!(!alive(pid));
    // The child was in the app's process group: a stop is done only once
    // the whole group is gone.
    assert!(!alive(child), "child {child} outlived the stop");
    // Stopping again is fine: nothing is left to stop.
    i.stop().await.unwrap();
}

#[test]
fn instances_survive_the_control_plane_and_are_adopted() {
    let root = support::ReapedDir::new();
    let s = spec("adopt", &[]);
    let port = s.port;
    // Control plane #1 starts the instance, then dies (its runtime and
    // every task dropped, as with kill -9).
    let (pid, root) = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut h = Harness::in_dir(root);
        let pid = support::block_on(&rt, "control plane #1", async {
            let i = h.runtime.start(s.clone());
            h.expect(EventKind::Ready).await;
            i.status().pid.unwrap()
        });
        drop(rt);
        (pid, h.root)
    };
    assert!(alive(pid), "the app outlives the control plane");
    assert_eq!(get(port, "/health").0, 200);

    // Control plane #2 adopts it: same pid, supervised again.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut h = Harness::in_dir(root);
    support::block_on(&rt, "control plane #2", async {
        let i = h.runtime.adopt(s.clone());
        let e = h.expect(EventKind::Adopted).await;
        assert_eq!(e.message, format!("adopted pid {pid} on port {port}"));
        wait(&i, "ready after adoption", |s| s.ready).await;
        // It dies: the new control plane restarts it.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let e = h.expect(EventKind::Exited).await;
        assert_eq!(e.message, format!("pid {pid} killed by signal 9 (SIGKILL)"));
        h.expect(EventKind::Started).await;
        let st = wait(&i, "restarted", |s| {
            s.ready && s.pid.is_some_and(|p| p != pid)
        })
        .await;
        assert_ne!(st.pid, Some(pid));
        i.stop().await.unwrap();
    });
}

#[test]
fn an_instance_that_died_while_down_is_restarted_and_a_reused_pid_is_not_adopted() {
    let root = support::ReapedDir::new();
    let s = spec("reused", &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut h = Harness::in_dir(root);
    let dir = h.runtime.instance_dir(&s);
    std::fs::create_dir_all(&dir).unwrap();
    // A state file naming a live process that is not ours: this test's own
    // pid, with another start time, as after a reboot and pid reuse.
    let me = std::process::id() as i32;
    let state = gantry_runtime::shim::ShimState {
        shim_pid: me,
        shim_start_ticks: 0,
        app_pid: me,
        app_start_ticks: 1,
        started_at_ms: 0,
        enforced: gantry_runtime::limits::Enforced::None,
    };
    std::fs::write(dir.join("shim.json"), serde_json::to_vec(&state).unwrap()).unwrap();
    support::block_on(&rt, "the adoption", async {
        let i = h.runtime.adopt(s);
        let e = h.expect(EventKind::Exited).await;
        assert!(
            e.message.starts_with(&format!("pid {me} "))
                && e.message.ends_with("while the control plane was down"),
            "{}",
            e.message
        );
        assert!(!h.seen.iter().any(|e| e.kind == EventKind::Adopted));
        h.expect(EventKind::Started).await;
        let st = wait(&i, "ready", |s| s.ready).await;
        assert_ne!(st.pid, Some(me));
        i.stop().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_app_is_supervised_the_same_way() {
    let mut h = Harness::new();
    let mut s = spec("python", &[]);
    let py = support::repo_root().join("examples/hello-py");
    s.command = "python3 app.py".into();
    s.workdir = py;
    let port = s.port;
    let i = h.runtime.start(s);
    h.expect(EventKind::Ready).await;
    let (status, body) = get(port, "/");
    assert_eq!(status, 200);
    assert!(body.contains("hello"), "{body}");
    i.stop().await.unwrap();
    let e = h.expect(EventKind::Stopped).await;
    assert!(e.message.contains("stopped by SIGTERM"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_failures_inside_the_startup_grace_do_not_count() {
    // The app binds its port only after 5 s; readiness asks every second,
    // and a single failure would call it not ready.
    let mut h = Harness::new();
    let mut probe = http_probe("/readiness");
    probe.interval = Duration::from_secs(1);
    probe.failure_threshold = 1;
    let mut graced = spec("slow-graced", &[("STARTUP_DELAY_MS", "5000")]);
    graced.readiness = Some(ProbeSpec {
        startup_grace: Duration::from_secs(8),
        ..probe.clone()
    });
    let mut bare = spec("slow-bare", &[("STARTUP_DELAY_MS", "5000")]);
    bare.readiness = Some(probe);
    let graced = h.runtime.start(graced);
    let bare = h.runtime.start(bare);
    // Without a grace the first refused probe counts...
    let st = wait(&bare, "not ready without a grace", |s| {
        s.not_ready.is_some()
    })
    .await;
    assert!(
        st.not_ready.as_deref().unwrap().contains("connect refused"),
        "{st:?}"
    );
    // ...with one, the same app becomes ready and is never called not ready.
    let st = wait(&graced, "ready or not ready", |s| {
        s.ready || s.not_ready.is_some()
    })
    .await;
    assert!(st.ready, "{st:?}");
    assert_eq!(st.not_ready, None);
    let id = graced.spec().id();
    while h.expect(EventKind::Ready).await.instance != id {}
    assert!(
        !h.seen
            .iter()
            .any(|e| e.instance == id && e.kind == EventKind::NotReady),
        "{:#?}",
        h.seen
    );
    graced.stop().await.unwrap();
    bare.stop().await.unwrap();
}

/// Runs `command` in `workdir` until ready, then stops it; returns the
/// harness's Stopped event, the app's pid while it ran, its command line
/// (from /proc), its log and its exit record.
async fn run_and_stop(
    h: &mut Harness,
    name: &str,
    command: &str,
    workdir: &std::path::Path,
    readiness: &str,
    env: &[(&str, &str)],
    check: impl FnOnce(u16),
) -> (Event, String, Vec<String>, gantry_runtime::shim::ShimExit) {
    let mut s = spec(name, env);
    s.command = command.into();
    s.workdir = workdir.to_path_buf();
    s.readiness = Some(http_probe(readiness));
    let port = s.port;
    let i = h.runtime.start(s);
    let st = wait(&i, "ready", |s| s.ready).await;
    check(port);
    let pid = st.pid.unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default();
    i.stop().await.unwrap();
    let stopped = loop {
        let e = h.expect(EventKind::Stopped).await;
        if e.instance == i.spec().id() {
            break e;
        }
    };
    assert!(!alive(pid));
    let dir = h.runtime.instance_dir(i.spec());
    let exit: gantry_runtime::shim::ShimExit =
        gantry_runtime::shim::read_json(&dir.join("exit.json")).expect("exit record");
    (
        stopped,
        cmdline,
        gantry_runtime::logs::tail(&dir, 100),
        exit,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compound_command_line_runs_and_the_app_itself_gets_the_stop_signal() {
    let mut h = Harness::new();
    let app = support::hello_app();
    let app_dir = app.parent().unwrap().to_path_buf();

    // `cd sub && …`: the directory changes, and python (not the shell) is
    // the process: it dies of the SIGTERM itself, and the record says so.
    let site = tempfile::tempdir().unwrap();
    std::fs::create_dir(site.path().join("sub")).unwrap();
    std::fs::write(site.path().join("sub/index.html"), "hello from sub").unwrap();
    let (stopped, cmdline, _, exit) = run_and_stop(
        &mut h,
        "cd-and",
        "cd sub && python3 -m http.server --bind 127.0.0.1 $PORT",
        site.path(),
        "/",
        &[],
        |port| assert_eq!(get(port, "/"), (200, "hello from sub".into())),
    )
    .await;
    assert!(cmdline.starts_with("python3 -m http.server"), "{cmdline}");
    assert!(
        stopped.message.contains("stopped by SIGTERM"),
        "{}",
        stopped.message
    );
    assert_eq!(
        (exit.code, exit.signal),
        (None, Some(15)),
        "the app's own exit"
    );

    // `A=1 ./server`: the assignment reaches the app; it shuts down
    // gracefully and exits 0.
    let (stopped, cmdline, log, exit) = run_and_stop(
        &mut h,
        "assign",
        "GREETING='hi there' ./hello-app",
        &app_dir,
        "/readiness",
        &[("EXPOSE_ENV", "GREETING")],
        |port| assert_eq!(get(port, "/env/GREETING"), (200, "hi there".into())),
    )
    .await;
    assert!(cmdline.starts_with("./hello-app"), "{cmdline}");
    assert!(
        stopped.message.contains("stopped by SIGTERM"),
        "{}",
        stopped.message
    );
    assert!(
        log.iter().any(|l| l.contains("shutdown complete")),
        "{log:#?}"
    );
    assert_eq!((exit.code, exit.signal), (Some(0), None));

    // `echo start; exec ./server`: the line's own exec is kept.
    let (stopped, cmdline, log, exit) = run_and_stop(
        &mut h,
        "echo-exec",
        "echo start; exec ./hello-app",
        &app_dir,
        "/readiness",
        &[],
        |_| {},
    )
    .await;
    assert!(cmdline.starts_with("./hello-app"), "{cmdline}");
    assert!(log.iter().any(|l| l.ends_with(" stdout start")), "{log:#?}");
    assert!(
        log.iter().any(|l| l.contains("shutdown complete")),
        "{log:#?}"
    );
    assert!(
        stopped.message.contains("stopped by SIGTERM"),
        "{}",
        stopped.message
    );
    assert_eq!((exit.code, exit.signal), (Some(0), None));

    // A loop cannot be exec'ed: the shell stays, but waits for the app's
    // graceful shutdown instead of dying first (and does not loop again).
    let (stopped, cmdline, log, exit) = run_and_stop(
        &mut h,
        "loop",
        "while true; do ./hello-app; done",
        &app_dir,
        "/readiness",
        &[],
        |_| {},
    )
    .await;
    assert!(cmdline.starts_with("/bin/sh -c"), "{cmdline}");
    assert!(
        stopped.message.contains("stopped by SIGTERM"),
        "{}",
        stopped.message
    );
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("shutdown complete"))
            .count(),
        1,
        "{log:#?}"
    );
    assert_eq!((exit.code, exit.signal), (Some(0), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_keeps_the_last_lines_of_output() {
    let h = Harness::new();
    let mut s = spec("notfound", &[]);
    s.command = "echo booting; echo \"$(printf 'x%.0s' $(seq 1 500))\"; datasette serve".into();
    s.restart.policy = RestartPolicy::Never;
    let i = h.runtime.start(s);
    let st = wait(&i, "exited", |s| s.phase == Phase::Exited).await;
    assert_eq!(st.last_exit.as_deref(), Some("exited with code 127"));
    // stdout and stderr are two pipes: their lines may interleave either way.
    let has = |want: &str| st.output_tail.iter().any(|l| l == want);
    assert!(has("booting"), "{st:?}");
    assert!(has("/bin/sh: 1: exec: datasette: not found"), "{st:?}");
    assert_eq!(st.output_tail.len(), 3, "{st:?}");
    // Long lines are cut.
    let long = st
        .output_tail
        .iter()
        .find(|l| l.starts_with("xxx"))
        .unwrap();
    assert_eq!(
        long.chars().count(),
        gantry_runtime::supervisor::TAIL_LINE_CHARS + 1
    );
    assert!(long.ends_with('…'), "{long}");
    let reason = st.with_output("hello.notfound.v1.0 exited with code 127".into());
    assert!(
        reason.starts_with("hello.notfound.v1.0 exited with code 127; its last output:\n  "),
        "{reason}"
    );
    assert!(
        reason.contains("\n  /bin/sh: 1: exec: datasette: not found"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_whose_shim_dies_is_stopped_and_started_under_a_new_shim() {
    let mut h = Harness::new();
    let s = spec("shimdeath", &[]);
    let port = s.port;
    let i = h.runtime.start(s);
    let st = wait(&i, "ready", |s| s.ready).await;
    let (pid, (shim, _)) = (st.pid.unwrap(), st.shim.unwrap());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    support::eventually_async(
        "the killed shim to be gone",
        Duration::from_secs(10),
        Duration::from_millis(5),
        || async {
            match alive(shim) {
                true => Err(format!("{shim} is alive")),
                false => Ok(()),
            }
        },
    )
    .await;
    // From the moment the shim is gone, the app is not shown running.
    let now = i.status();
    assert_ne!(now.phase, Phase::Running, "{now:?}");
    assert!(!now.ready);
    let e = h.expect(EventKind::ShimLost).await;
    assert!(
        e.message
            .starts_with(&format!("the shim (pid {shim}) of pid {pid} is gone")),
        "{}",
        e.message
    );
    let stopped = h.expect(EventKind::Stopped).await;
    assert!(stopped.message.starts_with(&format!("pid {pid} ")));
    h.expect(EventKind::Started).await;
    let st = wait(&i, "ready under a new shim", |s| {
        s.ready && s.pid.is_some_and(|p| p != pid)
    })
    .await;
    assert!(!alive(pid), "the old app is gone");
    let (new_shim, _) = st.shim.unwrap();
    assert_ne!(new_shim, shim);
    assert!(alive(new_shim));
    assert_eq!(st.restarts, 1);
    // Its output is captured again.
    assert_eq!(get(port, "/health").0, 200);
    i.stop().await.unwrap();
}

/// A source of secret values that counts how often it is asked, and whose
/// values the test can change.
struct Secrets {
    values: std::sync::Mutex<BTreeMap<String, String>>,
    asked: std::sync::atomic::AtomicUsize,
}

impl gantry_runtime::SecretSource for Secrets {
    fn secrets(
        &self,
        app: &str,
        env: &str,
    ) -> Result<BTreeMap<String, String>, Box<dyn std::error::Error + Send + Sync>> {
        assert_eq!((app, env), ("hello", "secret"));
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(self.values.lock().unwrap().clone())
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_reach_the_app_from_the_source_and_never_a_file() {
    let source = std::sync::Arc::new(Secrets {
        values: std::sync::Mutex::new(BTreeMap::from([("PW".into(), "s3cr3t-one".into())])),
        asked: Default::default(),
    });
    let mut h = Harness::new();
    h.runtime = h.runtime.clone().with_secrets(source.clone());
    let mut s = spec("secret", &[("EXPOSE_ENV", "PW,DATABASE_URL")]);
    s.secret_env = BTreeMap::from([
        ("PW".into(), "${secret.PW}".into()),
        (
            "DATABASE_URL".into(),
            "postgres://u:${secret.PW}@h/db".into(),
        ),
    ]);
    let port = s.port;
    let i = h.runtime.start(s);
    let st = wait(&i, "ready", |s| s.ready).await;
    assert_eq!(get(port, "/env/PW"), (200, "s3cr3t-one".into()));
    assert_eq!(
        get(port, "/env/DATABASE_URL").1,
        "postgres://u:s3cr3t-one@h/db"
    );
    // Neither the shim's arguments nor its environment carry it.
    let (shim, _) = st.shim.unwrap();
    for f in ["cmdline", "environ"] {
        let b = std::fs::read(format!("/proc/{shim}/{f}")).unwrap();
        assert!(!b.windows(10).any(|w| w == b"s3cr3t-one"), "shim {f}");
    }
    // A crash: the restart asks the source again, and gets today's value.
    *source.values.lock().unwrap() = BTreeMap::from([("PW".into(), "s3cr3t-two".into())]);
    let pid = st.pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait(&i, "restarted", |s| {
        s.ready && s.pid.is_some_and(|p| p != pid)
    })
    .await;
    assert_eq!(get(port, "/env/PW"), (200, "s3cr3t-two".into()));
    assert_eq!(source.asked.load(std::sync::atomic::Ordering::SeqCst), 2);
    for secret in ["s3cr3t-one", "s3cr3t-two"] {
        assert_eq!(
            files_containing(h.root.path(), secret.as_bytes()),
            Vec::<std::path::PathBuf>::new(),
            "{secret} is in a file"
        );
    }
    // The shim's spec on disk has no secret variable at all.
    let dir = h.runtime.instance_dir(i.spec());
    let spec_json = std::fs::read_to_string(dir.join("spec.json")).unwrap();
    assert!(!spec_json.contains("postgres://"), "{spec_json}");
    i.stop().await.unwrap();

    // A secret without a value: a start failure that names it.
    *source.values.lock().unwrap() = BTreeMap::new();
    let mut s = spec("secret", &[]);
    s.index = 1;
    s.secret_env = BTreeMap::from([("PW".into(), "${secret.PW}".into())]);
    s.restart.policy = RestartPolicy::Never;
    let i = h.runtime.start(s);
    let e = loop {
        let e = h.expect(EventKind::StartFailed).await;
        if e.instance == i.spec().id() {
            break e;
        }
    };
    assert!(
        e.message
            .starts_with("secret `PW` (for `PW`) has no value in `secret`; set it with"),
        "{}",
        e.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_event_channel_never_holds_up_supervision() {
    // Nobody reads the events, and the channel holds 4: a crash-looping
    // app makes many more. The supervisor drops and counts them, and goes
    // on restarting the app up to its crash loop, as it would otherwise.
    let h = Harness::with_channel(support::ReapedDir::new(), 4);
    let i = h.runtime.start(spec("unread", &[("CRASH_ON_START", "1")]));
    let st = wait(&i, "crash loop", |s| s.phase == Phase::CrashLoop).await;
    assert_eq!(st.restarts, 3, "{st:?}");
    let dropped = h.runtime.dropped_events();
    assert!(dropped >= 4, "dropped {dropped}");
    // Commands still work: an explicit restart starts it again, and it
    // crashes and is restarted again (with more events dropped).
    i.restart().await;
    wait(&i, "a restart after the explicit one", |s| s.restarts >= 5).await;
    assert!(h.runtime.dropped_events() > dropped);
    i.stop().await.unwrap();
    assert_eq!(i.status().phase, Phase::Stopped);
    drop(h.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_of_an_instance_in_its_own_cgroup_is_sampled() {
    // With limits the instance has a cgroup of its own (as root), whose
    // members are the ones sampled; without one, /proc is scanned.
    let mut h = Harness::new();
    let mut s = spec("usage", &[]);
    s.limits = Limits {
        memory_bytes: Some(256 * 1024 * 1024),
        cpu: None,
    };
    let i = h.runtime.start(s);
    let started = h.expect(EventKind::Started).await;
    let st = wait(&i, "a usage sample", |s| {
        s.rss_bytes.is_some_and(|r| r > 0) && s.cpu_percent.is_some()
    })
    .await;
    assert!(st.cpu_percent.unwrap() >= 0.0, "{st:?}");
    let state: gantry_runtime::shim::ShimState =
        gantry_runtime::shim::read_json(&h.runtime.instance_dir(i.spec()).join("shim.json"))
            .expect("shim.json");
    match state.enforced.cgroup_dir() {
        // The members of its cgroup, the ones sampled, are its processes.
        Some(dir) => {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
            assert!(
                procs.lines().any(|p| p == st.pid.unwrap().to_string()),
                "{procs}"
            );
        }
        None => eprintln!("no cgroup here ({}): /proc was scanned", started.message),
    }
    i.stop().await.unwrap();
}
