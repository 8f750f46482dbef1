//! `gantry demo`: the whole deploy path on a fresh data directory.
//!
//! Starts `gantry proxy` and `gantry server` as child processes, copies the
//! bundled example app, then runs the very commands a user would (each
//! printed before it runs): config apply, secrets, build, deploy to staging
//! and production, and a second release to production as a canary with the
//! live view, under a little synthetic traffic so the gates have data.
//! Stays up until Ctrl-C, then stops the apps and both processes.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::ctx::Ctx;

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

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
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

/// Spawns `gantry <args>` and waits for a stdout line starting with `ready`.
fn spawn_ready(exe: &Path, args: &[String], data: &Path, ready: &str) -> anyhow::Result<Child> {
    let mut child = Command::new(exe)
        .args(args)
        .env("GANTRY_DATA_DIR", data)
        .env("GANTRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start gantry {}", args.join(" ")))?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with(ready) => break,
            Some(Ok(_)) => continue,
            _ => bail!("gantry {} exited before it was ready", args.join(" ")),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(child)
}

/// Runs `gantry <args>` in `cwd` like a user would, printing it first.
fn step(
    exe: &Path,
    data: &Path,
    cwd: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<()> {
    println!("\n$ gantry {}", args.join(" "));
    let mut child = Command::new(exe)
        .args(args)
        .env("GANTRY_DATA_DIR", data)
        .env_remove("GANTRY_SERVER")
        .env_remove("GANTRY_TOKEN")
        .current_dir(cwd)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`gantry {}` failed ({status})", args.join(" "));
    }
    Ok(())
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
    let exe = std::env::current_exe()?;
    let example = find_example(args.example)?;
    let data = std::env::temp_dir().join(format!("gantry-demo-{}", std::process::id()));
    std::fs::create_dir_all(&data)?;
    println!("Gantry demo: data directory {}", data.display());
    let proxy = spawn_ready(
        &exe,
        &[
            "proxy".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", args.port),
            "--access-log".into(),
            "off".into(),
        ],
        &data,
        "gantry proxy ready",
    )?;
    let mut children = Children(vec![proxy]);
    let server = spawn_ready(
        &exe,
        &[
            "server".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", args.api_port),
        ],
        &data,
        "gantry server ready",
    )?;
    children.0.push(server);

    let src = data.join("hello-app");
    copy_source(&example, &src)?;
    std::fs::write(src.join("gantry.toml"), demo_config("v1"))?;
    let key = format!("demo-{}", gantry_runtime::now_ms());
    let run = |a: &[&str]| step(&exe, &data, &src, a, None);
    run(&["config", "check"])?;
    for env in ["staging", "production"] {
        step(
            &exe,
            &data,
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

    println!(
        "\nGantry is running the example app.\n  \
         app (production): curl -H 'Host: hello.localhost' http://127.0.0.1:{port}/   (or http://hello.localhost:{port}/)\n  \
         app (staging):    curl -H 'Host: staging.hello.localhost' http://127.0.0.1:{port}/\n  \
         API:              http://127.0.0.1:{api}/api/v1  (tokens: GANTRY_DATA_DIR={data} gantry token create --role viewer)\n  \
         dashboard:        not built yet (it comes with the dashboard issue)\n  \
         try:              GANTRY_DATA_DIR={data} gantry deploys --env production --app hello",
        port = args.port,
        api = args.api_port,
        data = data.display()
    );
    if !args.once {
        println!("Ctrl-C stops everything.");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    for env in ["staging", "production"] {
        let _ = step(&exe, &data, &src, &["stop", "--env", env], None);
    }
    drop(children);
    Ok(ExitCode::SUCCESS)
}
