//! One tokio task per instance: start (or adopt) the shim, watch the app,
//! probe it, sample its usage, restart it by policy, stop it gracefully.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::sleep;

use crate::limits::Limits;
use crate::probe::{self, ExecContext, ProbeSpec, ProbeState};
use crate::procfs;
use crate::restart::{Decision, ExitReason, RestartRules, RestartTracker};
use crate::shim::{self, ShimExit, ShimSpec, ShimState};

/// Everything needed to run one instance. Serializable: it is stored, so a
/// restarted control plane can adopt the instance with the same spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub app: String,
    pub env: String,
    /// The backend set (e.g. a release id), so sets of one env coexist.
    pub set: String,
    pub index: u32,
    /// A shell command line (see [`crate::cmdline`]).
    pub command: String,
    pub workdir: PathBuf,
    /// The app's environment without secret values; `PORT` is added.
    pub env_vars: BTreeMap<String, String>,
    /// Variables that carry secrets, as templates: `${secret.NAME}` stands
    /// for the value of secret `NAME`, filled in from the runtime's
    /// [`SecretSource`] each time the app starts (so the values are never
    /// stored with the spec). They are set on top of `env_vars`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    pub port: u16,
    pub readiness: Option<ProbeSpec>,
    pub liveness: Option<ProbeSpec>,
    pub restart: RestartRules,
    /// Signal number sent first on stop (15 = SIGTERM).
    pub stop_signal: i32,
    pub grace: Duration,
    pub limits: Limits,
    pub log_max_bytes: u64,
    pub log_keep: u32,
    /// How often CPU and memory are sampled.
    pub usage_interval: Duration,
}

impl InstanceSpec {
    /// `app.env.set.index`: unique per host, used for cgroups and dirs.
    pub fn id(&self) -> String {
        format!("{}.{}.{}.{}", self.app, self.env, self.set, self.index)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Starting,
    Running,
    /// Waiting before a restart.
    Backoff,
    /// Failed too often; waits for a restart command or a new deploy.
    CrashLoop,
    Stopping,
    Stopped,
    /// Exited and the policy says not to restart.
    Exited,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub phase: Phase,
    pub ready: bool,
    pub pid: Option<i32>,
    pub port: u16,
    pub started_at_ms: Option<i64>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub last_probe: Option<String>,
    /// Set when readiness failed its threshold (cleared when ready again).
    pub not_ready: Option<String>,
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    /// How limits are enforced ("cgroup v1", "rlimit (memory only)", "none").
    pub limits: Option<String>,
    /// The shim capturing the app's output, while the app runs: pid and
    /// start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim: Option<(i32, u64)>,
    /// The app's last lines of output (at most [`TAIL_LINES`], each cut at
    /// [`TAIL_LINE_CHARS`]), taken when it failed: exited with a failure,
    /// could not start, or was found not ready. Cleared when it is ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_tail: Vec<String>,
}

/// How many lines of output [`InstanceStatus::output_tail`] keeps.
pub const TAIL_LINES: usize = 10;
/// Longer lines of [`InstanceStatus::output_tail`] are cut, with `…`.
pub const TAIL_LINE_CHARS: usize = 200;

impl InstanceStatus {
    /// `reason`, followed by the app's last lines of output when there
    /// are any: what a failed start is reported with.
    pub fn with_output(&self, reason: String) -> String {
        if self.output_tail.is_empty() {
            return reason;
        }
        let mut out = reason;
        out.push_str("; its last output:");
        for l in &self.output_tail {
            out.push_str("\n  ");
            out.push_str(l);
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Started,
    StartFailed,
    Adopted,
    Ready,
    NotReady,
    LivenessFailed,
    Exited,
    OutOfMemory,
    Restarting,
    CrashLoop,
    Stopped,
    /// A stop did not get rid of every process of the instance.
    StopFailed,
    /// The shim of a running app died: the app is stopped and started again
    /// under a new shim.
    ShimLost,
}

/// How often the supervisor looks at the app's and the shim's processes.
pub const WATCH_EVERY: Duration = Duration::from_millis(50);

/// Whether the shim `pid` started at `ticks` (0: not recorded, by an older
/// shim) is alive.
fn shim_alive(pid: i32, ticks: u64) -> bool {
    if ticks == 0 {
        procfs::stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
    } else {
        procfs::is_alive(pid, ticks)
    }
}

/// A state change of an instance, with the reason in words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub instance: String,
    pub at_ms: i64,
    pub kind: EventKind,
    pub message: String,
}

enum Command {
    Stop(oneshot::Sender<Result<(), StillAlive>>),
    Restart(oneshot::Sender<()>),
}

/// A stop that did not stop: the instance's processes are still there.
/// Supervision goes on, and the next [`Instance::stop`] tries again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{instance}: {reason}")]
pub struct StopError {
    pub instance: String,
    pub reason: StillAlive,
}

/// What is left of an instance [`KILL_WAIT`] after its SIGKILL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} is still alive {} ms after SIGKILL (processes {members:?}); not stopped",
    if *.leader { format!("pid {pid}") } else { format!("pid {pid}'s group") },
    KILL_WAIT.as_millis()
)]
pub struct StillAlive {
    /// The app's pid, which is also its process group's id.
    pub pid: i32,
    /// Whether the app itself is still alive (else only others of its group).
    pub leader: bool,
    /// The live processes of the group, sorted.
    pub members: Vec<i32>,
}

/// Why the secret variables of an instance could not be filled in: its
/// start fails with this message.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("this runtime has no source of secret values")]
    NoSource,
    /// The [`SecretSource`] failed (its error is the cause).
    #[error("cannot read the secret values")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the secret source failed")]
    Panicked(#[source] tokio::task::JoinError),
    #[error(
        "secret `{name}` (for `{var}`) has no value in `{env}`; set it with `gantry secrets \
         set {name} --env {env}`"
    )]
    Missing {
        name: String,
        var: String,
        env: String,
    },
}

/// How long a stop waits for the process group to be gone after SIGKILL
/// before it reports that it failed.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Where the values of secrets come from when an app (re)starts: e.g.
/// decrypted from the store on demand, so they are never on disk in the
/// clear (see [`crate::secrets`]). Called on a blocking thread.
pub trait SecretSource: Send + Sync {
    /// The current values of the secrets of app environment `app`/`env`,
    /// by name.
    fn secrets(
        &self,
        app: &str,
        env: &str,
    ) -> Result<BTreeMap<String, String>, Box<dyn std::error::Error + Send + Sync>>;
}

/// At most one warning about dropped events per this much time.
pub const DROP_WARN_EVERY: Duration = Duration::from_secs(10);

/// Where the supervisors' events go: a bounded queue that never makes a
/// supervisor wait. When the queue is full the event is dropped and
/// counted ([`Runtime::dropped_events`]), with a warning at most once per
/// [`DROP_WARN_EVERY`].
#[derive(Clone)]
struct EventSink {
    tx: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
    /// When the last warning about dropped events was logged.
    warned: Arc<Mutex<Option<Instant>>>,
}

impl EventSink {
    fn send(&self, event: Event) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let mut warned = gantry_common::lock(&self.warned);
                if warned.is_none_or(|at| at.elapsed() >= DROP_WARN_EVERY) {
                    *warned = Some(Instant::now());
                    tracing::warn!(
                        dropped,
                        instance = %event.instance,
                        kind = ?event.kind,
                        "the runtime's event queue is full (nobody takes the events fast \
                         enough): events are dropped, {dropped} so far"
                    );
                }
            }
            // Nobody listens any more: nothing to tell.
            Err(TrySendError::Closed(_)) => {}
        }
    }
}

/// Starts and adopts instances. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    root: PathBuf,
    shim: Arc<Vec<OsString>>,
    events: EventSink,
    secrets: Option<Arc<dyn SecretSource>>,
}

impl Runtime {
    /// `root` holds one directory per instance; `shim` is the command that
    /// runs a shim, to which the instance directory is appended (e.g.
    /// `["/usr/bin/gantry", "shim"]`); events go to `events`, a bounded
    /// channel: a supervisor never waits for room in it, it drops the
    /// event instead (see [`Runtime::dropped_events`]).
    pub fn new(root: PathBuf, shim: Vec<OsString>, events: mpsc::Sender<Event>) -> Self {
        Self {
            root,
            shim: Arc::new(shim),
            events: EventSink {
                tx: events,
                dropped: Arc::new(AtomicU64::new(0)),
                warned: Arc::new(Mutex::new(None)),
            },
            secrets: None,
        }
    }

    /// How many events were dropped because the event channel was full,
    /// since this runtime was made (by any of its clones).
    pub fn dropped_events(&self) -> u64 {
        self.events.dropped.load(Ordering::Relaxed)
    }

    /// Fills in [`InstanceSpec::secret_env`] from `source`. Without one, an
    /// instance with secret variables cannot start.
    pub fn with_secrets(mut self, source: Arc<dyn SecretSource>) -> Self {
        self.secrets = Some(source);
        self
    }

    pub fn instance_dir(&self, spec: &InstanceSpec) -> PathBuf {
        self.env_dir(&spec.app, &spec.env)
            .join(format!("{}-{}", spec.set, spec.index))
    }

    /// The directory holding the instance directories (`<set>-<index>`) of
    /// an app environment, running or stopped.
    pub fn env_dir(&self, app: &str, env: &str) -> PathBuf {
        self.root.join(app).join(env)
    }

    /// Starts a new process for `spec` and supervises it.
    pub fn start(&self, spec: InstanceSpec) -> Instance {
        self.launch(spec, false)
    }

    /// Takes over an instance started by an earlier control plane: if its
    /// app is still the same process (pid and start time), it is watched
    /// again; otherwise it is handled as exited (and restarted by policy).
    pub fn adopt(&self, spec: InstanceSpec) -> Instance {
        self.launch(spec, true)
    }

    fn launch(&self, spec: InstanceSpec, adopt: bool) -> Instance {
        let dir = self.instance_dir(&spec);
        let (status_tx, status_rx) = watch::channel(InstanceStatus {
            id: spec.id(),
            phase: Phase::Starting,
            ready: false,
            pid: None,
            port: spec.port,
            started_at_ms: None,
            restarts: 0,
            last_exit: None,
            last_probe: None,
            not_ready: None,
            cpu_percent: None,
            rss_bytes: None,
            limits: None,
            shim: None,
            output_tail: Vec::new(),
        });
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        let spec = Arc::new(spec);
        let sup = Supervisor {
            spec: spec.clone(),
            dir,
            shim: self.shim.clone(),
            secrets: self.secrets.clone(),
            events: self.events.clone(),
            status: status_tx,
            commands: cmd_rx,
            tracker: RestartTracker::default(),
        };
        tokio::spawn(sup.run(adopt));
        Instance {
            spec,
            status: status_rx,
            commands: cmd_tx,
        }
    }
}

/// A handle on a supervised instance. Dropping it leaves the instance
/// running and supervised.
#[derive(Clone)]
pub struct Instance {
    spec: Arc<InstanceSpec>,
    status: watch::Receiver<InstanceStatus>,
    commands: mpsc::Sender<Command>,
}

impl Instance {
    pub fn spec(&self) -> &InstanceSpec {
        &self.spec
    }

    /// The status. An app whose shim has died is never shown running: with
    /// nobody reading its output it is as good as stopped, and the
    /// supervisor, which notices within [`WATCH_EVERY`], is about to stop it
    /// and start it again under a new shim; until then it is `stopping`.
    pub fn status(&self) -> InstanceStatus {
        let mut s = self.status.borrow().clone();
        if s.phase == Phase::Running && s.shim.is_some_and(|(pid, ticks)| !shim_alive(pid, ticks)) {
            s.phase = Phase::Stopping;
            s.ready = false;
        }
        s
    }

    /// Waits until `pred` holds for the status (callers add a timeout).
    pub async fn wait_for(&self, pred: impl Fn(&InstanceStatus) -> bool) -> InstanceStatus {
        let mut rx = self.status.clone();
        let r = rx.wait_for(|s| pred(s)).await.map(|s| s.clone());
        r.unwrap_or_else(|_| self.status())
    }

    /// Stops gracefully (stop signal, grace period, then SIGKILL to the
    /// whole process group) and ends supervision. An error means something
    /// of the instance is still alive [`KILL_WAIT`] after the SIGKILL: it
    /// stays supervised, and calling `stop` again tries again. Stopping an
    /// instance that is already stopped is fine.
    pub async fn stop(&self) -> Result<(), StopError> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Stop(tx)).await.is_err() {
            // Supervision is over: it was stopped before.
            return Ok(());
        }
        match rx.await {
            Ok(Err(reason)) => Err(StopError {
                instance: self.spec.id(),
                reason,
            }),
            Ok(Ok(())) | Err(_) => Ok(()),
        }
    }

    /// Restarts now, and forgets the crash-loop history.
    pub async fn restart(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Restart(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// A running app as the supervisor knows it.
struct Running {
    state: ShimState,
    started: Instant,
    /// The app's whole environment, secrets included (in memory only), for
    /// exec probes.
    env: BTreeMap<String, String>,
}

enum Outcome {
    Exited(ExitReason),
    /// The app runs, but its shim is gone.
    ShimLost,
    Stop(oneshot::Sender<Result<(), StillAlive>>),
    Restart(oneshot::Sender<()>),
}

/// What asked for the app to be stopped.
enum Ask {
    Stop(oneshot::Sender<Result<(), StillAlive>>),
    Restart(oneshot::Sender<()>),
    /// The supervisor itself, for an app whose shim died.
    ShimLost,
}

/// After [`Supervisor::stop_run`].
enum AfterStop {
    Stopped,
    Restart,
    /// No handle is left to ask again.
    Gone,
}

struct Supervisor {
    spec: Arc<InstanceSpec>,
    dir: PathBuf,
    shim: Arc<Vec<OsString>>,
    secrets: Option<Arc<dyn SecretSource>>,
    events: EventSink,
    status: watch::Sender<InstanceStatus>,
    commands: mpsc::Receiver<Command>,
    tracker: RestartTracker,
}

impl Supervisor {
    fn event(&self, kind: EventKind, message: String) {
        tracing::info!(instance = %self.spec.id(), ?kind, "{message}");
        self.events.send(Event {
            instance: self.spec.id(),
            at_ms: crate::now_ms(),
            kind,
            message,
        });
    }

    fn update(&self, f: impl FnOnce(&mut InstanceStatus)) {
        self.status.send_modify(f);
    }

    async fn run(mut self, adopt: bool) {
        let mut adopting = adopt;
        loop {
            let started = if std::mem::take(&mut adopting) {
                self.adopt().await
            } else {
                self.spawn().await
            };
            let outcome = match &started {
                Ok(run) => self.monitor(run).await,
                Err(reason) => Outcome::Exited(reason.clone()),
            };
            let ran_for = started
                .as_ref()
                .map_or(Duration::ZERO, |r| r.started.elapsed());
            let reason = match outcome {
                Outcome::Stop(reply) => {
                    let after = match &started {
                        Ok(run) => self.stop_run(run, Ask::Stop(reply)).await,
                        Err(_) => {
                            self.stopped();
                            let _ = reply.send(Ok(()));
                            AfterStop::Stopped
                        }
                    };
                    match after {
                        AfterStop::Stopped | AfterStop::Gone => return,
                        AfterStop::Restart => {
                            self.tracker.reset();
                            self.update(|s| s.restarts += 1);
                            continue;
                        }
                    }
                }
                Outcome::Restart(reply) => {
                    let after = match &started {
                        Ok(run) => self.stop_run(run, Ask::Restart(reply)).await,
                        Err(_) => {
                            let _ = reply.send(());
                            AfterStop::Restart
                        }
                    };
                    match after {
                        AfterStop::Stopped | AfterStop::Gone => return,
                        AfterStop::Restart => {
                            self.tracker.reset();
                            self.update(|s| s.restarts += 1);
                            continue;
                        }
                    }
                }
                Outcome::ShimLost => {
                    let after = match &started {
                        Ok(run) => self.stop_run(run, Ask::ShimLost).await,
                        Err(_) => AfterStop::Restart,
                    };
                    match after {
                        AfterStop::Stopped | AfterStop::Gone => return,
                        // Not the app's failure: no backoff, no crash count.
                        AfterStop::Restart => {
                            self.update(|s| s.restarts += 1);
                            continue;
                        }
                    }
                }
                Outcome::Exited(reason) => reason,
            };
            let tail = if reason.is_failure() {
                self.output_tail().await
            } else {
                Vec::new()
            };
            self.update(|s| {
                s.ready = false;
                s.pid = None;
                s.shim = None;
                s.last_exit = Some(reason.to_string());
                s.output_tail = tail;
            });
            let jitter = jitter();
            let rules = self.spec.restart;
            match self
                .tracker
                .decide(&rules, &reason, ran_for, Instant::now(), jitter)
            {
                Decision::Restart { after, attempt } => {
                    self.event(
                        EventKind::Restarting,
                        format!("{reason}; restart {attempt} in {} ms", after.as_millis()),
                    );
                    self.update(|s| s.phase = Phase::Backoff);
                    tokio::select! {
                        _ = sleep(after) => {}
                        cmd = self.commands.recv() => match cmd {
                            Some(Command::Stop(reply)) => {
                                self.update(|s| s.phase = Phase::Stopped);
                                let _ = reply.send(Ok(()));
                                return;
                            }
                            Some(Command::Restart(reply)) => {
                                self.tracker.reset();
                                let _ = reply.send(());
                            }
                            None => sleep(after).await,
                        },
                    }
                    self.update(|s| s.restarts += 1);
                }
                Decision::CrashLoop { failures, window } => {
                    self.event(
                        EventKind::CrashLoop,
                        format!(
                            "{reason}; {failures} failures within {} s: crash loop, not restarting \
                             until `gantry restart` or the next deploy",
                            window.as_secs()
                        ),
                    );
                    self.update(|s| s.phase = Phase::CrashLoop);
                    if !self.wait_for_restart().await {
                        return;
                    }
                }
                Decision::Stay => {
                    self.update(|s| s.phase = Phase::Exited);
                    if !self.wait_for_restart().await {
                        return;
                    }
                }
            }
        }
    }

    fn stopped(&self) {
        self.update(|s| {
            s.phase = Phase::Stopped;
            s.ready = false;
            s.pid = None;
            s.shim = None;
        });
    }

    /// Stops the running app for `ask`. When the stop fails, the asker
    /// hears so, and the app stays supervised as `stopping` until the next
    /// command, which tries again (a restart too: it must stop first).
    async fn stop_run(&mut self, run: &Running, ask: Ask) -> AfterStop {
        let mut ask = ask;
        loop {
            let result = self.stop_process(run, !matches!(ask, Ask::ShimLost)).await;
            match (result, ask) {
                (Ok(()), Ask::Stop(reply)) => {
                    self.stopped();
                    let _ = reply.send(Ok(()));
                    return AfterStop::Stopped;
                }
                (Ok(()), Ask::Restart(reply)) => {
                    let _ = reply.send(());
                    return AfterStop::Restart;
                }
                (Ok(()), Ask::ShimLost) => return AfterStop::Restart,
                (Err(e), asked) => {
                    self.event(EventKind::StopFailed, e.to_string());
                    self.update(|s| {
                        s.phase = Phase::Stopping;
                        s.ready = false;
                    });
                    match asked {
                        Ask::Stop(reply) => {
                            let _ = reply.send(Err(e));
                        }
                        Ask::Restart(reply) => {
                            let _ = reply.send(());
                        }
                        Ask::ShimLost => {}
                    }
                    ask = match self.commands.recv().await {
                        Some(Command::Stop(reply)) => Ask::Stop(reply),
                        Some(Command::Restart(reply)) => Ask::Restart(reply),
                        None => return AfterStop::Gone,
                    };
                }
            }
        }
    }

    /// Parks until a command: true to start again, false when stopped.
    async fn wait_for_restart(&mut self) -> bool {
        match self.commands.recv().await {
            Some(Command::Restart(reply)) => {
                self.tracker.reset();
                let _ = reply.send(());
                self.update(|s| s.restarts += 1);
                true
            }
            Some(Command::Stop(reply)) => {
                self.update(|s| s.phase = Phase::Stopped);
                let _ = reply.send(Ok(()));
                false
            }
            // Every handle is gone: nobody can ask for a restart any more.
            None => false,
        }
    }

    /// The app's last lines of output, without their timestamps, bounded
    /// ([`TAIL_LINES`], [`TAIL_LINE_CHARS`]); what the shim said when
    /// there are none (it could not start the app). Read on a blocking
    /// thread: the log files may be large.
    async fn output_tail(&self) -> Vec<String> {
        let dir = self.dir.clone();
        blocking(move || output_tail(&dir))
            .await
            .unwrap_or_default()
    }

    /// The variables of [`InstanceSpec::secret_env`] with the secrets'
    /// current values filled in (never `PORT`).
    async fn secret_vars(&self) -> Result<BTreeMap<String, String>, SecretsError> {
        if self.spec.secret_env.is_empty() {
            return Ok(BTreeMap::new());
        }
        let Some(source) = self.secrets.clone() else {
            return Err(SecretsError::NoSource);
        };
        let (app, env) = (self.spec.app.clone(), self.spec.env.clone());
        let values = tokio::task::spawn_blocking(move || source.secrets(&app, &env))
            .await
            .map_err(SecretsError::Panicked)?
            .map_err(SecretsError::Source)?;
        let mut vars = BTreeMap::new();
        for (k, template) in &self.spec.secret_env {
            let v = crate::secrets::render(template, &values).map_err(|missing| {
                SecretsError::Missing {
                    name: missing.0,
                    var: k.clone(),
                    env: self.spec.env.clone(),
                }
            })?;
            vars.insert(k.clone(), v);
        }
        vars.remove("PORT");
        Ok(vars)
    }

    /// What the shim writes down: the environment without secret values.
    fn shim_spec(&self) -> ShimSpec {
        let mut env = self.spec.env_vars.clone();
        env.insert("PORT".into(), self.spec.port.to_string());
        ShimSpec {
            id: self.spec.id(),
            command: self.spec.command.clone(),
            stop_signal: self.spec.stop_signal,
            workdir: self.spec.workdir.clone(),
            env,
            limits: self.spec.limits,
            log_max_bytes: self.spec.log_max_bytes,
            log_keep: self.spec.log_keep,
        }
    }

    async fn spawn(&mut self) -> Result<Running, ExitReason> {
        self.update(|s| s.phase = Phase::Starting);
        let secret = match self.secret_vars().await {
            Ok(v) => v,
            Err(e) => {
                self.event(EventKind::StartFailed, crate::error_chain(&e));
                return Err(ExitReason::Code(127));
            }
        };
        let dir = self.dir.clone();
        let shim_spec = self.shim_spec();
        let prepared = blocking({
            let dir = dir.clone();
            move || {
                std::fs::create_dir_all(&dir)?;
                let _ = std::fs::remove_file(dir.join(shim::STATE_FILE));
                let _ = std::fs::remove_file(dir.join(shim::EXIT_FILE));
                std::fs::write(dir.join(shim::SPEC_FILE), serde_json::to_vec(&shim_spec)?)
            }
        })
        .await
        .unwrap_or_else(|| Err(std::io::Error::other("the blocking thread failed")));
        if let Err(e) = prepared {
            self.event(
                EventKind::StartFailed,
                format!("cannot prepare {}: {e}", dir.display()),
            );
            return Err(ExitReason::Code(127));
        }
        let Some((program, args)) = self.shim.split_first() else {
            self.event(EventKind::StartFailed, "no shim command configured".into());
            return Err(ExitReason::Code(127));
        };
        // The shim gets only PATH of this process's environment (never its
        // secret key), and the secret variables on its stdin, not in a file
        // or its arguments.
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .arg(&dir)
            .env_clear()
            .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(false);
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                self.event(
                    EventKind::StartFailed,
                    format!("cannot start the shim: {e}"),
                );
                return Err(ExitReason::Code(127));
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            let bytes = serde_json::to_vec(&secret).unwrap_or_default();
            // A shim that died before reading is seen below.
            let _ = stdin.write_all(&bytes).await;
            drop(stdin);
        }
        let mut env = self.shim_spec().env;
        env.extend(secret);
        // Reap the shim whenever it exits, so it never lingers as a zombie.
        let mut reaped = tokio::spawn(async move { child.wait().await });
        let deadline = Instant::now() + Duration::from_secs(10);
        let state_file = dir.join(shim::STATE_FILE);
        loop {
            if let Some(state) = read_json::<ShimState>(&state_file).await {
                let message = format!(
                    "started pid {} on port {} (`{}`; limits: {})",
                    state.app_pid,
                    self.spec.port,
                    self.spec.command,
                    state.enforced.describe()
                );
                self.event(EventKind::Started, message);
                self.running(&state);
                return Ok(Running {
                    state,
                    started: Instant::now(),
                    env,
                });
            }
            if reaped.is_finished() || Instant::now() > deadline {
                let log = dir.join(shim::SHIM_LOG);
                let why = blocking(move || std::fs::read_to_string(log).ok())
                    .await
                    .flatten()
                    .unwrap_or_else(|| "the shim exited without a word".into());
                self.event(EventKind::StartFailed, why.trim().to_string());
                if !reaped.is_finished() {
                    reaped.abort();
                }
                return Err(ExitReason::Code(127));
            }
            tokio::select! {
                _ = sleep(Duration::from_millis(10)) => {}
                _ = &mut reaped => {}
            }
        }
    }

    fn running(&self, state: &ShimState) {
        let (pid, at, limits) = (
            state.app_pid,
            state.started_at_ms,
            state.enforced.describe(),
        );
        let shim = (state.shim_pid, state.shim_start_ticks);
        self.update(|s| {
            s.phase = Phase::Running;
            s.pid = Some(pid);
            s.shim = Some(shim);
            s.started_at_ms = Some(at);
            s.limits = Some(limits.to_string());
        });
    }

    async fn adopt(&mut self) -> Result<Running, ExitReason> {
        let state: Option<ShimState> = read_json(&self.dir.join(shim::STATE_FILE)).await;
        match state {
            Some(state) if procfs::is_alive(state.app_pid, state.app_start_ticks) => {
                self.event(
                    EventKind::Adopted,
                    format!("adopted pid {} on port {}", state.app_pid, self.spec.port),
                );
                self.running(&state);
                let age =
                    Duration::from_millis((crate::now_ms() - state.started_at_ms).max(0) as u64);
                let mut env = self.shim_spec().env;
                match self.secret_vars().await {
                    Ok(secret) => env.extend(secret),
                    Err(e) => tracing::warn!(
                        instance = %self.spec.id(),
                        "exec probes run without the secret variables: {}",
                        crate::error_chain(&e)
                    ),
                }
                Ok(Running {
                    state,
                    started: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
                    env,
                })
            }
            Some(state) => {
                let reason = self
                    .exit_reason(state.app_pid)
                    .await
                    .unwrap_or(ExitReason::Vanished);
                self.event(
                    EventKind::Exited,
                    format!(
                        "pid {} {reason} while the control plane was down",
                        state.app_pid
                    ),
                );
                Err(reason)
            }
            None => {
                self.event(
                    EventKind::Exited,
                    "no running process found to adopt".into(),
                );
                Err(ExitReason::Vanished)
            }
        }
    }

    async fn exit_reason(&self, app_pid: i32) -> Option<ExitReason> {
        let exit: ShimExit = read_json(&self.dir.join(shim::EXIT_FILE)).await?;
        if exit.app_pid != app_pid {
            return None;
        }
        Some(if exit.oom {
            ExitReason::OutOfMemory
        } else if let Some(sig) = exit.signal {
            ExitReason::Signal(sig)
        } else {
            match exit.code {
                Some(0) => ExitReason::Clean,
                Some(c) => ExitReason::Code(c),
                None => ExitReason::Vanished,
            }
        })
    }

    /// Waits up to `limit` for the shim's exit record of `pid`.
    async fn await_exit_reason(&self, pid: i32, limit: Duration) -> ExitReason {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(r) = self.exit_reason(pid).await {
                return r;
            }
            if Instant::now() > deadline {
                return ExitReason::Vanished;
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    async fn monitor(&mut self, run: &Running) -> Outcome {
        let spec = self.spec.clone();
        let pid = run.state.app_pid;
        let exec = ExecContext {
            workdir: spec.workdir.clone(),
            env: run.env.clone(),
        };
        let mut ready = ProbeState::default();
        let mut live = ProbeState::default();
        let now = tokio::time::Instant::now();
        let mut next_ready = now;
        // Liveness is not even asked inside its grace: only failures could
        // come of it, and those would not count.
        let grace = spec
            .liveness
            .as_ref()
            .map_or(Duration::ZERO, |l| l.startup_grace);
        let mut next_live = now + grace.saturating_sub(run.started.elapsed());
        let mut next_usage = now;
        let mut last_cpu: Option<(u64, Instant)> = None;
        let cgroup = run.state.enforced.cgroup_dir().map(Path::to_path_buf);
        let far = Duration::from_secs(86_400 * 365);
        if spec.readiness.is_none() {
            self.update(|s| s.ready = true);
        }
        loop {
            tokio::select! {
                _ = sleep(WATCH_EVERY) => {
                    if !procfs::is_alive(pid, run.state.app_start_ticks) {
                        let reason = self.await_exit_reason(pid, Duration::from_secs(3)).await;
                        let kind = if reason == ExitReason::OutOfMemory { EventKind::OutOfMemory } else { EventKind::Exited };
                        self.event(kind, format!("pid {pid} {reason}"));
                        return Outcome::Exited(reason);
                    }
                    // The shim outlives its app (it records the exit), so a
                    // live app without its shim is one nobody captures.
                    if !shim_alive(run.state.shim_pid, run.state.shim_start_ticks) {
                        self.update(|s| {
                            s.phase = Phase::Stopping;
                            s.ready = false;
                        });
                        self.event(
                            EventKind::ShimLost,
                            format!(
                                "the shim (pid {}) of pid {pid} is gone, so nothing captures its \
                                 output: stopping it to start it again under a new shim",
                                run.state.shim_pid
                            ),
                        );
                        return Outcome::ShimLost;
                    }
                }
                _ = tokio::time::sleep_until(next_ready), if spec.readiness.is_some() => {
                    let Some(p) = &spec.readiness else { continue };
                    next_ready = tokio::time::Instant::now() + p.interval;
                    let r = probe::run_once(p, spec.port, &exec).await;
                    let changed = ready.observe_since_start(p, &r, run.started.elapsed());
                    let detail = r.detail.clone();
                    self.update(|s| s.last_probe = Some(format!("readiness: {detail}")));
                    match changed {
                        Some(true) => {
                            self.update(|s| {
                                s.ready = true;
                                s.not_ready = None;
                                s.output_tail.clear();
                            });
                            self.event(EventKind::Ready, format!("ready: {}", r.detail));
                        }
                        Some(false) => {
                            let why = r.detail.clone();
                            let tail = self.output_tail().await;
                            self.update(|s| {
                                s.ready = false;
                                s.not_ready = Some(why);
                                s.output_tail = tail;
                            });
                            self.event(EventKind::NotReady, format!("not ready: {}", r.detail));
                        }
                        None => {}
                    }
                }
                _ = tokio::time::sleep_until(next_live), if spec.liveness.is_some() => {
                    let Some(p) = &spec.liveness else { continue };
                    next_live = tokio::time::Instant::now() + p.interval;
                    let r = probe::run_once(p, spec.port, &exec).await;
                    if live.observe_since_start(p, &r, run.started.elapsed()) == Some(false) {
                        self.event(EventKind::LivenessFailed, format!("liveness failed: {}", r.detail));
                        if let Err(e) = self.stop_process(run, true).await {
                            self.event(EventKind::StopFailed, e.to_string());
                        }
                        return Outcome::Exited(ExitReason::LivenessFailed);
                    }
                }
                _ = tokio::time::sleep_until(next_usage) => {
                    next_usage = tokio::time::Instant::now() + if spec.usage_interval.is_zero() { far } else { spec.usage_interval };
                    // A scan of /proc (or of the cgroup's members): off
                    // the async thread.
                    let cgroup = cgroup.clone();
                    let Some(u) = blocking(move || procfs::group_usage(pid, cgroup.as_deref())).await else {
                        continue;
                    };
                    let now = Instant::now();
                    let cpu = last_cpu.map(|(ticks, at)| {
                        let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                        (u.cpu_ticks.saturating_sub(ticks) as f64 / procfs::clock_ticks_per_sec() as f64) / secs * 100.0
                    });
                    last_cpu = Some((u.cpu_ticks, now));
                    self.update(|s| {
                        s.rss_bytes = Some(u.rss_bytes);
                        if cpu.is_some() { s.cpu_percent = cpu; }
                    });
                }
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Stop(reply)) => return Outcome::Stop(reply),
                    Some(Command::Restart(reply)) => return Outcome::Restart(reply),
                    // No handle left: keep supervising; nobody can stop it now
                    // but the process itself.
                    None => {
                        let reason = self.watch_until_exit(pid, run.state.app_start_ticks).await;
                        return Outcome::Exited(reason);
                    }
                },
            }
        }
    }

    async fn watch_until_exit(&self, pid: i32, start: u64) -> ExitReason {
        while procfs::is_alive(pid, start) {
            sleep(Duration::from_millis(100)).await;
        }
        self.await_exit_reason(pid, Duration::from_secs(3)).await
    }

    /// Stop signal to the process group, wait up to the grace period, then
    /// SIGKILL the group and wait (at most [`KILL_WAIT`]) until every
    /// process of it is gone; an error says what is still alive.
    /// Without `exit_record`, the shim is gone and no exit record will come.
    async fn stop_process(&self, run: &Running, exit_record: bool) -> Result<(), StillAlive> {
        let pid = run.state.app_pid;
        let start = run.state.app_start_ticks;
        if !procfs::is_alive(pid, start) {
            // It exited on its own; the shim has killed what was left.
            return Ok(());
        }
        self.update(|s| {
            s.phase = Phase::Stopping;
            s.ready = false;
        });
        let group = Pid::from_raw(pid);
        let sig = Signal::try_from(self.spec.stop_signal).unwrap_or(Signal::SIGTERM);
        let t0 = Instant::now();
        let _ = killpg(group, sig);
        let deadline = t0 + self.spec.grace;
        while procfs::is_alive(pid, start) && Instant::now() < deadline {
            sleep(Duration::from_millis(20)).await;
        }
        let forced = procfs::is_alive(pid, start);
        let took = t0.elapsed();
        // SIGKILL to whatever is left of the group, the app itself if it
        // outlived the grace period.
        let _ = killpg(group, Signal::SIGKILL);
        let killed_at = Instant::now();
        let left = loop {
            // The group is looked at only while its leader is ours or just
            // gone: a group id is not reused while any member lives.
            let leader = procfs::is_alive(pid, start);
            // Every process of /proc, not only the cgroup's: a stop must
            // not miss one. A scan: off the async thread.
            let members: Vec<i32> =
                blocking(move || procfs::group(pid, None).iter().map(|s| s.pid).collect())
                    .await
                    .unwrap_or_default();
            if !leader && members.is_empty() {
                break None;
            }
            if killed_at.elapsed() > KILL_WAIT {
                break Some((leader, members));
            }
            sleep(Duration::from_millis(20)).await;
        };
        if let Some((leader, mut members)) = left {
            members.sort_unstable();
            return Err(StillAlive {
                pid,
                leader,
                members,
            });
        }
        let how = if forced {
            format!(
                "did not stop within the {} ms grace period after {}; killed with SIGKILL",
                self.spec.grace.as_millis(),
                sig.as_str()
            )
        } else {
            format!("stopped by {} after {} ms", sig.as_str(), took.as_millis())
        };
        if exit_record {
            let _ = self.await_exit_reason(pid, Duration::from_secs(3)).await;
        }
        self.event(EventKind::Stopped, format!("pid {pid} {how}"));
        Ok(())
    }
}

/// Runs `f`, file system work, on a blocking thread, so it never holds up
/// an async one; `None` if that thread panicked.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// [`shim::read_json`] on a blocking thread.
async fn read_json<T: serde::de::DeserializeOwned + Send + 'static>(path: &Path) -> Option<T> {
    let path = path.to_path_buf();
    blocking(move || shim::read_json(&path)).await.flatten()
}

/// The last lines of output in instance directory `dir` (see
/// [`Supervisor::output_tail`]).
fn output_tail(dir: &Path) -> Vec<String> {
    let mut lines: Vec<String> = crate::logs::tail(dir, TAIL_LINES)
        .into_iter()
        .map(|l| {
            // `<time> <stream> <text>`: keep the text.
            l.splitn(3, ' ').nth(2).unwrap_or("").to_string()
        })
        .collect();
    if lines.iter().all(|l| l.trim().is_empty()) {
        lines = std::fs::read_to_string(dir.join(shim::SHIM_LOG))
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default();
        let skip = lines.len().saturating_sub(TAIL_LINES);
        lines.drain(..skip);
    }
    lines
        .into_iter()
        .map(|l| match l.char_indices().nth(TAIL_LINE_CHARS) {
            Some((at, _)) => format!("{}…", &l[..at]),
            None => l,
        })
        .collect()
}

fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> Event {
        Event {
            instance: format!("a.e.s.{n}"),
            at_ms: 0,
            kind: EventKind::Started,
            message: String::new(),
        }
    }

    #[test]
    fn a_full_event_queue_drops_and_counts_and_never_waits() {
        let (tx, mut rx) = mpsc::channel(2);
        let runtime = Runtime::new("/nonexistent".into(), Vec::new(), tx);
        let sink = runtime.events.clone();
        // Nobody reads: the first two wait in the queue, the rest are
        // dropped, and every send returns at once.
        for n in 0..5 {
            sink.send(event(n));
        }
        assert_eq!(runtime.dropped_events(), 3);
        assert_eq!(rx.try_recv().unwrap().instance, "a.e.s.0");
        // Room again: the next event gets through.
        sink.send(event(5));
        assert_eq!(runtime.dropped_events(), 3);
        assert_eq!(rx.try_recv().unwrap().instance, "a.e.s.1");
        assert_eq!(rx.try_recv().unwrap().instance, "a.e.s.5");
        // A closed channel is not a full one: nothing counted.
        drop(rx);
        sink.send(event(6));
        assert_eq!(runtime.dropped_events(), 3);
    }

    #[test]
    fn a_stop_that_left_processes_says_which() {
        let e = StillAlive {
            pid: 42,
            leader: false,
            members: vec![43, 44],
        };
        assert_eq!(
            e.to_string(),
            "pid 42's group is still alive 5000 ms after SIGKILL (processes [43, 44]); not stopped"
        );
        let e = StopError {
            instance: "a.e.s.0".into(),
            reason: StillAlive { leader: true, ..e },
        };
        assert_eq!(
            e.to_string(),
            "a.e.s.0: pid 42 is still alive 5000 ms after SIGKILL (processes [43, 44]); not stopped"
        );
        assert!(std::error::Error::source(&e).is_none(), "said once");
    }
}
