//! `gantry dev`: the development environment in the foreground. Builds,
//! runs the app's instances under the same runtime as production (probes,
//! restarts, limits, log capture), prints their logs and events, and on any
//! change under the app directory rebuilds and restarts them (debounced).
//!
//! It needs no server: it is a local loop over one working copy, and keeps
//! its state in `.gantry/` next to `gantry.toml`. Secrets come from the
//! shell's environment variables of the same names.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use gantry_runtime::ports::PortPool;
use gantry_runtime::{Instance, InstanceSpec, Runtime};
use notify::Watcher;

use crate::ctx::Ctx;

/// Directories whose changes never trigger a restart.
const IGNORED: &[&str] = &[
    ".gantry",
    ".git",
    "target",
    "node_modules",
    "__pycache__",
    ".venv",
];
const DEBOUNCE: Duration = Duration::from_millis(300);

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The app's gantry.toml.
    #[arg(default_value = "gantry.toml")]
    path: PathBuf,
    /// The environment to run (default: `development`).
    #[arg(long, default_value = "development")]
    env: String,
    /// Run without watching for changes.
    #[arg(long)]
    no_watch: bool,
}

pub(crate) fn run(_ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let path = std::fs::canonicalize(&args.path).with_context(|| {
        format!(
            "cannot find {}; run `gantry dev` in the app's directory",
            args.path.display()
        )
    })?;
    let app_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(dev_loop(path, app_dir, args.env, !args.no_watch))
}

async fn dev_loop(
    path: PathBuf,
    app_dir: PathBuf,
    env: String,
    watch: bool,
) -> anyhow::Result<ExitCode> {
    let state = app_dir.join(".gantry");
    std::fs::create_dir_all(state.join("data"))?;
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let runtime = Runtime::new(
        state.join("instances"),
        vec![std::env::current_exe()?.into_os_string(), "shim".into()],
        ev_tx,
    );
    tokio::spawn(async move {
        while let Some(e) = ev_rx.recv().await {
            eprintln!(
                "gantry: {} {}",
                e.instance.rsplit('.').next().unwrap_or(""),
                e.message
            );
        }
    });
    let (change_tx, mut change_rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let _watcher = if watch {
        let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Reads (of gantry.toml by this very loop, say) are not changes.
            if let Some(ev) = res
                .ok()
                .filter(|e| !matches!(e.kind, notify::EventKind::Access(_)))
            {
                for p in ev.paths {
                    let _ = change_tx.send(p);
                }
            }
        })
        .context("cannot watch the app directory")?;
        w.watch(&app_dir, notify::RecursiveMode::Recursive)
            .with_context(|| format!("cannot watch {}", app_dir.display()))?;
        Some(w)
    } else {
        None
    };
    // Persistent streams: a signal that arrives while the loop is busy
    // (building, stopping) is kept until the loop looks again.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut ports = PortPool::new(30000..=30999);
    loop {
        let instances = match start(&path, &app_dir, &env, &runtime, &mut ports).await {
            Ok(i) => i,
            Err(e) => {
                eprintln!("gantry: {e:#}\ngantry: waiting for a change to try again");
                Vec::new()
            }
        };
        let mut tails: Vec<Tail> = instances
            .iter()
            .map(|i| Tail::new(runtime.instance_dir(i.spec()), i.spec().index))
            .collect();
        let changed = loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    for t in &mut tails { t.print_new(); }
                }
                Some(p) = change_rx.recv() => {
                    if relevant(&app_dir, &p) { break Some(p); }
                }
                _ = int.recv() => break None,
                _ = term.recv() => break None,
            }
        };
        for t in &mut tails {
            t.print_new();
        }
        stop_all(&instances, &mut ports).await;
        let Some(first) = changed else {
            eprintln!("gantry: stopped");
            return Ok(ExitCode::SUCCESS);
        };
        // Debounce: wait until relevant changes have been quiet for a moment.
        let mut quiet_at = tokio::time::Instant::now() + DEBOUNCE;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(quiet_at) => break,
                Some(p) = change_rx.recv() => {
                    if relevant(&app_dir, &p) {
                        quiet_at = tokio::time::Instant::now() + DEBOUNCE;
                    }
                }
            }
        }
        let shown = first
            .strip_prefix(&app_dir)
            .unwrap_or(&first)
            .display()
            .to_string();
        eprintln!("gantry: change in {shown}: rebuilding and restarting");
    }
}

fn relevant(app_dir: &Path, p: &Path) -> bool {
    let rel = p.strip_prefix(app_dir).unwrap_or(p);
    !rel.components()
        .any(|c| IGNORED.iter().any(|i| c.as_os_str() == *i))
}

async fn stop_all(instances: &[Instance], ports: &mut PortPool) {
    for i in instances {
        if let Err(e) = i.stop().await {
            eprintln!("gantry: {e}");
        }
        ports.release(i.spec().port);
    }
}

async fn start(
    path: &Path,
    app_dir: &Path,
    env: &str,
    runtime: &Runtime,
    ports: &mut PortPool,
) -> anyhow::Result<Vec<Instance>> {
    let spec = gantry_spec::load(path).map_err(|d| anyhow::anyhow!("{d}"))?;
    let names = spec.environment_names();
    if !names.is_empty() && !names.iter().any(|n| n == env) {
        bail!(
            "{} declares no [environments.{env}]; add one, or pass --env with one of: {}",
            path.display(),
            names.join(", ")
        );
    }
    let resolved = spec.resolve(env).map_err(|d| anyhow::anyhow!("{d}"))?;
    if let Some(cmd) = &resolved.build.command {
        eprintln!("gantry: building: {cmd}");
        let workdir = resolved
            .build
            .workdir
            .as_ref()
            .map_or(app_dir.to_path_buf(), |w| app_dir.join(w));
        let status = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(workdir)
            .status()
            .await
            .with_context(|| format!("cannot run the build command `{cmd}`"))?;
        if !status.success() {
            bail!("the build command `{cmd}` failed ({status})");
        }
    }
    let app_vars = resolved
        .render_env(|name| std::env::var(name).ok())
        .map_err(|gantry_spec::MissingSecret(name)| {
            anyhow::anyhow!(
                "secret `{name}` is referenced; in development it comes from your shell: `export {name}=...`"
            )
        })?;
    let vars = gantry_runtime::instance_env(
        spec.app_name(),
        env,
        &app_dir.join(".gantry/data"),
        &resolved.run.inherited_env(),
        app_vars,
    );
    let workdir = resolved
        .run
        .workdir
        .as_ref()
        .map_or(app_dir.to_path_buf(), |w| app_dir.join(w));
    let mut instances = Vec::new();
    for index in 0..resolved.run.instances {
        let port = ports.allocate()?;
        let mut env_vars = vars.clone();
        env_vars.insert("INSTANCE_ID".into(), index.to_string());
        let s = InstanceSpec {
            app: spec.app_name().into(),
            env: env.into(),
            set: "dev".into(),
            index,
            command: resolved.run.command.clone(),
            workdir: workdir.clone(),
            env_vars,
            secret_env: Default::default(),
            port,
            readiness: None,
            liveness: None,
            restart: gantry_runtime::restart::RestartRules {
                policy: gantry_runtime::restart::RestartPolicy::OnFailure,
                backoff: gantry_runtime::restart::Backoff {
                    initial: Duration::from_millis(500),
                    max: Duration::from_secs(5),
                },
                crash_loop: gantry_runtime::restart::CrashLoop {
                    max_restarts: 5,
                    window: Duration::from_secs(60),
                },
            },
            stop_signal: 15,
            grace: Duration::from_secs(5),
            limits: Default::default(),
            log_max_bytes: 10 * 1024 * 1024,
            log_keep: 1,
            usage_interval: Duration::ZERO,
        };
        eprintln!(
            "gantry: {} ({env}) #{index} → http://127.0.0.1:{port}",
            spec.app_name()
        );
        instances.push(runtime.start(s));
    }
    Ok(instances)
}

/// Follows one instance's log file from where it was when it started.
struct Tail {
    path: PathBuf,
    offset: u64,
    index: u32,
}

impl Tail {
    fn new(dir: PathBuf, index: u32) -> Self {
        let path = dir.join(gantry_runtime::logs::LOG_FILE);
        let offset = std::fs::metadata(&path).map_or(0, |m| m.len());
        Self {
            path,
            offset,
            index,
        }
    }

    fn print_new(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        let len = f.metadata().map_or(0, |m| m.len());
        if len < self.offset {
            self.offset = 0; // rotated
        }
        if len == self.offset || f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = String::new();
        if f.read_to_string(&mut buf).is_ok() {
            // Only whole lines; the rest waits for the next round.
            let end = buf.rfind('\n').map_or(0, |i| i + 1);
            for line in buf[..end].lines() {
                let text = line.splitn(3, ' ').nth(2).unwrap_or(line);
                println!("#{} {text}", self.index);
            }
            self.offset += end as u64;
        }
    }
}
