//! `gantry demo`: the whole deploy path on a fresh data directory.
//!
//! Starts `gantry proxy` and `gantry server` as child processes, copies the
//! bundled example app, then runs the very commands a user would (each
//! printed before it runs): config apply, secrets, build, deploy to staging
//! and production, and a second release to production as a canary with the
//! live view, under a little synthetic traffic so the gates have data.
//! Stays up until Ctrl-C, then stops the apps and both processes.
//!
//! Ctrl-C (SIGINT or SIGTERM) at any point stops everything it started, in
//! order: the apps through the API (`gantry stop`), the server, whatever app
//! the API could not stop (a deploy was under way: its instances are found
//! from their `shim.json` in the demo's own data directory and their process
//! groups signalled), then the proxy. For that, every child runs in its own
//! process group, so the terminal's SIGINT reaches the demo alone, which
//! passes it on to the command of the moment. (Apps survive a dead control
//! plane by design, which is why the demo must stop them itself.)

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::ctx::Ctx;

/// Exit status after an interruption before the demo was up: 128 + SIGINT.
const EXIT_INTERRUPTED: u8 = 130;
/// How long a stopping server, proxy or app gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Port of the edge proxy (the app's address).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Port of the control plane's HTTP API.
    #[arg(long, default_value_t = 7400)]
    api_port: u16,
    /// The example app's source (default: examples/hello-app here or above).
    #[arg(long)]
    example: Option<PathBuf>,
    /// Exit after the canary instead of staying up (for scripts and tests).
    #[arg(long)]
    once: bool,
}

/// The demo was interrupted (Ctrl-C) before it was up.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// SIGINT and SIGTERM, caught from the start: they set a flag, wake the
/// waiting demo, and go on to the running step's process group.
struct Signals {
    interrupted: Arc<AtomicBool>,
    woken: std::sync::mpsc::Receiver<()>,
    /// The process group of the step that runs now, if any.
    step: Arc<Mutex<Option<i32>>>,
}

impl Signals {
    fn catch() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Registered before this returns, so no signal is missed.
        let (mut int, mut term) = {
            let _guard = rt.enter();
            (
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            )
        };
        let interrupted = Arc::new(AtomicBool::new(false));
        let step = Arc::new(Mutex::new(None::<i32>));
        let (tx, woken) = std::sync::mpsc::channel();
        let (flag, current) = (interrupted.clone(), step.clone());
        std::thread::spawn(move || {
            rt.block_on(async move {
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    flag.store(true, Ordering::SeqCst);
                    let pgid = *current.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(pg) = pgid {
                        let _ = killpg(Pid::from_raw(pg), Signal::SIGINT);
                    }
                    if tx.send(()).is_err() {
                        return;
                    }
                }
            });
        });
        Ok(Self {
            interrupted,
            woken,
            step,
        })
    }

    fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.interrupted() {
            return Err(Interrupted.into());
        }
        Ok(())
    }
}

/// What the demo started, stopped in order by [`Demo::shutdown`].
struct Demo {
    exe: PathBuf,
    data: PathBuf,
    signals: Signals,
    proxy: Option<Child>,
    server: Option<Child>,
    /// The app's source directory, once copied (where `gantry stop` runs).
    src: Option<PathBuf>,
}
fn find_example(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let mut dir = std::env::current_dir()?;
    loop {
        let candidate = dir.join("examples/hello-app");
        if candidate.join("gantry.toml").is_file() {
            return Ok(candidate);
        }
        if !dir.pop() {
            bail!(
                "cannot find examples/hello-app; run `gantry demo` inside the Gantry repository or pass --example DIR"
            );
        }
    }
}

/// Spawns `gantry <args>` in its own process group and waits for a stdout
/// line starting with `ready`.
fn spawn_ready(exe: &Path, args: &[String], data: &Path, ready: &str) -> anyhow::Result<Child> {
    let mut child = Command::new(exe)
        .args(args)
        .env("GANTRY_DATA_DIR", data)
        .env("GANTRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start gantry {}", args.join(" ")))?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with(ready) => break,
            Some(Ok(_)) => continue,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("gantry {} exited before it was ready", args.join(" "))
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(child)
}

/// SIGTERM to `child`, SIGKILL after [`STOP_GRACE`]; waits for it.
fn stop_child(child: &mut Child, what: &str) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                eprintln!("gantry demo: the {what} did not stop in time; killing it");
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

impl Demo {
    /// Runs `gantry <args>` in `cwd` like a user would, printing it first.
    /// It runs in its own process group, which a Ctrl-C reaches through
    /// [`Signals`].
    fn step(&self, cwd: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
        self.signals.check()?;
        println!("\n$ gantry {}", args.join(" "));
        let mut child = self.command(cwd, args, stdin.is_some())?;
        *self.signals.step.lock().unwrap_or_else(|e| e.into_inner()) = Some(child.id() as i32);
        // A signal between the spawn and the line above still stops it.
        if self.signals.interrupted() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGINT);
        }
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let _ = pipe.write_all(text.as_bytes());
        }
        let status = child.wait();
        *self.signals.step.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.signals.check()?;
        let status = status?;
        if !status.success() {
            bail!("`gantry {}` failed ({status})", args.join(" "));
        }
        Ok(())
    }

    fn command(&self, cwd: &Path, args: &[&str], stdin: bool) -> anyhow::Result<Child> {
        Command::new(&self.exe)
            .args(args)
            .env("GANTRY_DATA_DIR", &self.data)
            .env_remove("GANTRY_SERVER")
            .env_remove("GANTRY_TOKEN")
            .current_dir(cwd)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot run gantry {}", args.join(" ")))
    }

    /// Stops everything, in order: the apps through the API, the server,
    /// any app left (a deploy was running), the proxy. Signals that arrive
    /// meanwhile do not cut it short.
    fn shutdown(&mut self) {
        if let (Some(src), true) = (&self.src, self.server.is_some()) {
            for env in ["staging", "production"] {
                println!("\n$ gantry stop --env {env}");
                let _ = self
                    .command(src, &["stop", "--env", env], false)
                    .and_then(|mut c| Ok(c.wait()?));
            }
        }
        if let Some(mut server) = self.server.take() {
            stop_child(&mut server, "server");
        }
        let left = stop_recorded_apps(&self.data.join("instances"));
        if left > 0 {
            println!("stopped {left} more app process(es) that a running deploy had started");
        }
        if let Some(mut proxy) = self.proxy.take() {
            stop_child(&mut proxy, "proxy");
        }
    }
}

/// Stops every app recorded under `dir` (the demo's own instances) that
/// still runs: SIGTERM to its process group, SIGKILL after
/// [`STOP_GRACE`]; then waits for its shim. Returns how many ran.
fn stop_recorded_apps(dir: &Path) -> usize {
    let mut states = Vec::new();
    find_shim_states(dir, &mut states);
    let running: Vec<gantry_runtime::shim::ShimState> = states
        .into_iter()
        .filter(|s| gantry_runtime::procfs::is_alive(s.app_pid, s.app_start_ticks))
        .collect();
    for s in &running {
        let _ = killpg(Pid::from_raw(s.app_pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    let gone = |s: &gantry_runtime::shim::ShimState| {
        !gantry_runtime::procfs::is_alive(s.app_pid, s.app_start_ticks)
            && gantry_runtime::procfs::stat(s.shim_pid).is_none_or(|p| matches!(p.state, 'Z' | 'X'))
    };
    while !running.iter().all(gone) {
        if Instant::now() >= deadline {
            for s in running.iter().filter(|s| !gone(s)) {
                if gantry_runtime::procfs::is_alive(s.app_pid, s.app_start_ticks) {
                    let _ = killpg(Pid::from_raw(s.app_pid), Signal::SIGKILL);
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    running.len()
}

fn find_shim_states(dir: &Path, out: &mut Vec<gantry_runtime::shim::ShimState>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            find_shim_states(&p, out);
        } else if p
            .file_name()
            .is_some_and(|n| n == gantry_runtime::shim::STATE_FILE)
            && let Some(s) = gantry_runtime::shim::read_json(&p)
        {
            out.push(s);
        }
    }
}

fn demo_config(version: &str) -> String {
    format!(
        r#"# The demo's app spec: the bundled example with short canary steps.
secrets = ["SESSION_KEY"]

[app]
name = "hello"
description = "Gantry's example app"

[build]
command = "cargo build --release --locked"
outputs = ["target/release/hello-app"]

[run]
command = "./hello-app"
instances = 2

[health.readiness]
kind = "http"
path = "/readiness"
interval = "500ms"
timeout = "400ms"

[health.liveness]
kind = "http"
path = "/health"
interval = "5s"

[deploy]
strategy = "canary"
steps = [{{ weight = 20, pause = "8s" }}, {{ weight = 50, pause = "8s" }}]

[[deploy.smoke]]
path = "/health"
expect_status = 200

[analysis]
interval = "2s"
min_requests = 20

[env]
APP_VERSION = "{version}"

[environments.staging]
proxy = {{ hosts = ["staging.hello.localhost"] }}

[environments.production]
proxy = {{ hosts = ["hello.localhost"] }}
"#
    )
}

fn copy_source(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let name = e.file_name();
        if gantry_api::bundle::SKIPPED.iter().any(|s| name == *s) {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        if e.file_type()?.is_dir() {
            copy_source(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

pub(crate) fn run(_ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let signals = Signals::catch()?;
    let exe = std::env::current_exe()?;
    let example = find_example(args.example.clone())?;
    let data = std::env::temp_dir().join(format!("gantry-demo-{}", std::process::id()));
    std::fs::create_dir_all(&data)?;
    println!("Gantry demo: data directory {}", data.display());
    let mut demo = Demo {
        exe,
        data,
        signals,
        proxy: None,
        server: None,
        src: None,
    };
    let outcome = scenario(&mut demo, &args, &example);
    if outcome.as_ref().is_err_and(|e| e.is::<Interrupted>()) {
        println!("\nInterrupted: stopping everything the demo started.");
    }
    demo.shutdown();
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.is::<Interrupted>() => {
            println!("Everything the demo started is stopped.");
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
        Err(e) => Err(e),
    }
}

fn scenario(demo: &mut Demo, args: &Args, example: &Path) -> anyhow::Result<()> {
    let data = demo.data.clone();
    demo.proxy = Some(spawn_ready(
        &demo.exe,
        &[
            "proxy".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", args.port),
            "--access-log".into(),
            "off".into(),
        ],
        &data,
        "gantry proxy ready",
    )?);
    demo.signals.check()?;
    demo.server = Some(spawn_ready(
        &demo.exe,
        &[
            "server".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", args.api_port),
            // Scraped often enough that the demo's metrics step shows them.
            "--metrics-interval".into(),
            "2s".into(),
        ],
        &data,
        "gantry server ready",
    )?);
    demo.signals.check()?;

    let src = data.join("hello-app");
    copy_source(example, &src)?;
    std::fs::write(src.join("gantry.toml"), demo_config("v1"))?;
    demo.src = Some(src.clone());
    let key = format!("demo-{}", gantry_common::now_ms());
    let run = |a: &[&str]| demo.step(&src, a, None);
    run(&["config", "check"])?;
    for env in ["staging", "production"] {
        demo.step(
            &src,
            &["secrets", "set", "SESSION_KEY", "--env", env],
            Some(&key),
        )?;
        run(&["config", "apply", "--env", env])?;
    }
    run(&["build", "--env", "production"])?;
    run(&["deploy", "--env", "staging", "--release", "1"])?;
    run(&["deploy", "--env", "production", "--release", "1"])?;

    // Version 2, shipped to production as a canary under some traffic.
    std::fs::write(src.join("gantry.toml"), demo_config("v2"))?;
    run(&["config", "apply", "--env", "production"])?;
    run(&["build", "--env", "production"])?;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, port) = (stop.clone(), args.port);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    let _ = write!(
                        s,
                        "GET / HTTP/1.1\r\nHost: hello.localhost\r\nConnection: close\r\n\r\n"
                    );
                    let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    };
    let canary = run(&["deploy", "--env", "production", "--release", "2"]);
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();
    canary?;
    run(&["ps"])?;
    // What the control plane has scraped from the proxy meanwhile.
    run(&["metrics", "status"])?;

    println!(
        "\nGantry is running the example app.\n  \
         app (production): curl -H 'Host: hello.localhost' http://127.0.0.1:{port}/   (or http://hello.localhost:{port}/)\n  \
         app (staging):    curl -H 'Host: staging.hello.localhost' http://127.0.0.1:{port}/\n  \
         API:              http://127.0.0.1:{api}/api/v1  (tokens: GANTRY_DATA_DIR={data} gantry token create --role viewer)\n  \
         dashboard:        not built yet (it comes with the dashboard issue)\n  \
         metrics:          GANTRY_DATA_DIR={data} gantry metrics status\n  \
         try:              GANTRY_DATA_DIR={data} gantry deploys --env production --app hello",
        port = args.port,
        api = args.api_port,
        data = data.display()
    );
    if !args.once {
        println!("Ctrl-C stops everything.");
        let _ = std::io::stdout().flush();
        // Woken by the first SIGINT or SIGTERM (or never, if the signal
        // thread is gone, which it is not while the demo runs).
        let _ = demo.signals.woken.recv();
        println!("\nStopping everything the demo started.");
    }
    Ok(())
}
