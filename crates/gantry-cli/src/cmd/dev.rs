//! `gantry dev`: the development environment in the foreground. Builds,
//! runs the app's instances under the same runtime as production (probes,
//! restarts, limits, log capture), prints their logs and events, and on any
//! change under the app directory rebuilds and restarts them (debounced).
//!
//! It needs no server: it is a local loop over one working copy, and keeps
//! its state in `.gantry/` next to `gantry.toml`. Secrets come from the
//! shell's environment variables of the same names.
//!
//! Each instance keeps its port, so its URL, across restarts. What is
//! watched: every directory of the tree except `.gantry/` (the app's data
//! and log directories), what the tree's `.gitignore` files ignore (see
//! [`gitignore`]) and a few conventional build and tool directories
//! ([`BUILT_IN`]); each directory has its own, non-recursive watch, so an
//! ignored `target/` or `node_modules/` costs none. A restart names the
//! file that changed.

mod gitignore;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use gantry_runtime::ports::PortPool;
use gantry_runtime::{Instance, InstanceSpec, Runtime};
use notify::Watcher;

use crate::ctx::Ctx;

/// Ignored in every tree, before its own `.gitignore` lines (which may
/// re-include them with `!`): tool and build directories, editor swap files.
const BUILT_IN: &str =
    ".git/\ntarget/\nnode_modules/\n__pycache__/\n.venv/\n*.swp\n*.swx\n*~\n.#*\n";
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
    // Bounded, as the runtime wants it: printed as they come, so it does
    // not fill up unless the terminal stalls (then events are dropped).
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::channel(1024);
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
    let mut tree = if watch {
        Some(Tree::watch(&app_dir, &state, change_tx)?)
    } else {
        None
    };
    // Persistent streams: a signal that arrives while the loop is busy
    // (building, stopping) is kept until the loop looks again.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut ports = Ports {
        pool: PortPool::new(30000..=30999),
        by_index: Vec::new(),
    };
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
                    // File reads: this worker thread may block meanwhile.
                    tokio::task::block_in_place(|| for t in &mut tails { t.print_new(); });
                }
                Some(p) = change_rx.recv() => {
                    if tree.as_mut().is_some_and(|t| t.relevant(&p)) { break Some(p); }
                }
                _ = int.recv() => break None,
                _ = term.recv() => break None,
            }
        };
        tokio::task::block_in_place(|| {
            for t in &mut tails {
                t.print_new();
            }
        });
        for i in &instances {
            if let Err(e) = i.stop().await {
                eprintln!("gantry: {e}");
            }
        }
        let Some(first) = changed else {
            eprintln!("gantry: stopped");
            return Ok(ExitCode::SUCCESS);
        };
        // Debounce: wait until relevant changes have been quiet for a moment.
        let mut others = std::collections::BTreeSet::new();
        let mut quiet_at = tokio::time::Instant::now() + DEBOUNCE;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(quiet_at) => break,
                Some(p) = change_rx.recv() => {
                    if tree.as_mut().is_some_and(|t| t.relevant(&p)) {
                        if p != first {
                            others.insert(p);
                        }
                        quiet_at = tokio::time::Instant::now() + DEBOUNCE;
                    }
                }
            }
        }
        let shown = |p: &Path| p.strip_prefix(&app_dir).unwrap_or(p).display().to_string();
        let more = match others.len() {
            0 => String::new(),
            1 => format!(" (and {})", shown(others.first().map_or(&first, |p| p))),
            n => format!(" (and {n} more files)"),
        };
        eprintln!(
            "gantry: change in {}{more}: rebuilding and restarting",
            shown(&first)
        );
    }
}

/// Each instance's port, kept across restarts so its URL stays the same.
struct Ports {
    pool: PortPool,
    by_index: Vec<u16>,
}

impl Ports {
    /// The port of instance `index`: the one it had, while it is free.
    fn get(&mut self, index: usize) -> anyhow::Result<u16> {
        if let Some(&port) = self.by_index.get(index) {
            if gantry_runtime::ports::is_free(port) {
                return Ok(port);
            }
            let new = self.pool.allocate()?;
            eprintln!(
                "gantry: port {port} of #{index} is taken by another process now; #{index} moves to {new}"
            );
            self.pool.release(port);
            self.by_index[index] = new;
            return Ok(new);
        }
        let port = self.pool.allocate()?;
        self.by_index.push(port);
        Ok(port)
    }

    /// Forgets the ports of instances past `count` (fewer instances now).
    fn keep(&mut self, count: usize) {
        for port in self.by_index.drain(count.min(self.by_index.len())..) {
            self.pool.release(port);
        }
    }
}

/// The watched directories of the app's tree and its ignore rules.
struct Tree {
    root: PathBuf,
    /// `.gantry/`: the app's data and logs; never watched.
    state: PathBuf,
    rules: gitignore::Rules,
    watcher: notify::RecommendedWatcher,
    watched: std::collections::BTreeSet<PathBuf>,
}

impl Tree {
    /// Watches every directory of `root` that is not ignored, each on its
    /// own; changes go to `tx`.
    fn watch(
        root: &Path,
        state: &Path,
        tx: tokio::sync::mpsc::UnboundedSender<PathBuf>,
    ) -> anyhow::Result<Self> {
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Reads (of gantry.toml by this very loop, say) are not changes.
            if let Some(ev) = res
                .ok()
                .filter(|e| !matches!(e.kind, notify::EventKind::Access(_)))
            {
                for p in ev.paths {
                    let _ = tx.send(p);
                }
            }
        })
        .context("cannot watch the app directory")?;
        let mut tree = Self {
            root: root.to_path_buf(),
            state: state.to_path_buf(),
            rules: gitignore::Rules::default(),
            watcher,
            watched: Default::default(),
        };
        tree.load_rules();
        tree.add_dir(root)
            .with_context(|| format!("cannot watch {}", root.display()))?;
        Ok(tree)
    }

    /// The built-in rules, `.git/info/exclude` and every `.gitignore` of
    /// the directories that are not ignored.
    fn load_rules(&mut self) {
        let mut rules = gitignore::Rules::default();
        rules.add(Path::new(""), BUILT_IN);
        if let Ok(text) = std::fs::read_to_string(self.root.join(".git/info/exclude")) {
            rules.add(Path::new(""), &text);
        }
        let mut stack = vec![PathBuf::new()];
        while let Some(dir) = stack.pop() {
            rules.add_file(&self.root, &dir);
            let Ok(entries) = std::fs::read_dir(self.root.join(&dir)) else {
                continue;
            };
            for e in entries.flatten() {
                let rel = dir.join(e.file_name());
                if e.file_type().is_ok_and(|t| t.is_dir())
                    && self.root.join(&rel) != self.state
                    && !rules.is_ignored(&rel, true)
                {
                    stack.push(rel);
                }
            }
        }
        self.rules = rules;
    }

    /// Whether `abs` is inside the tree and not ignored.
    fn counts(&self, abs: &Path, is_dir: bool) -> bool {
        let Ok(rel) = abs.strip_prefix(&self.root) else {
            return false;
        };
        !abs.starts_with(&self.state) && !self.rules.is_ignored(rel, is_dir)
    }

    /// Watches `dir` and the directories under it that count.
    fn add_dir(&mut self, dir: &Path) -> notify::Result<()> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            if self.watched.contains(&d) {
                continue;
            }
            match self.watcher.watch(&d, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(d.clone());
                }
                // Gone again before it could be watched: nothing to watch.
                Err(e) if d != self.root && !d.exists() => {
                    tracing::debug!(error = %e, dir = %d.display(), "not watched");
                    continue;
                }
                Err(e) => return Err(e),
            }
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) && self.counts(&p, true) {
                    stack.push(p);
                }
            }
        }
        Ok(())
    }

    /// Whether a change at `abs` should restart the app. A new directory
    /// that counts is watched from now on; a changed `.gitignore` reloads
    /// the rules (and, being a change, restarts the app).
    fn relevant(&mut self, abs: &Path) -> bool {
        let is_dir = abs.is_dir();
        if !abs.exists() {
            // A removed directory lost its watches; one made again gets new ones.
            self.watched.retain(|d| !d.starts_with(abs));
        }
        if !self.counts(abs, is_dir) {
            return false;
        }
        if abs.file_name().is_some_and(|n| n == ".gitignore") {
            self.load_rules();
            let stale: Vec<PathBuf> = self
                .watched
                .iter()
                .filter(|d| *d != &self.root && !self.counts(d, true))
                .cloned()
                .collect();
            for d in stale {
                let _ = self.watcher.unwatch(&d);
                self.watched.remove(&d);
            }
        }
        if is_dir && let Err(e) = self.add_dir(abs) {
            eprintln!("gantry: cannot watch {}: {e}", abs.display());
        }
        true
    }
}

async fn start(
    path: &Path,
    app_dir: &Path,
    env: &str,
    runtime: &Runtime,
    ports: &mut Ports,
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
    ports.keep(resolved.run.instances as usize);
    for index in 0..resolved.run.instances {
        let port = ports.get(index as usize)?;
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

    /// Prints the whole lines added since the last call. Output that is
    /// not UTF-8 is shown lossily (`�` for what does not decode).
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
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_ok() {
            // Only whole lines; the rest waits for the next round. A line
            // ends at a `\n`, which is never part of a multi-byte character.
            let end = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            for line in String::from_utf8_lossy(&buf[..end]).lines() {
                let text = line.splitn(3, ' ').nth(2).unwrap_or(line);
                println!("#{} {text}", self.index);
            }
            self.offset += end as u64;
        }
    }
}
