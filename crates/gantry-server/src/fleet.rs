//! The control plane's side of the runtime: which instances run for which
//! app environment, on which ports, recorded in the store *before* they
//! start, so a restarted control plane adopts them (see `gantry-runtime`).
//! Runtime events are stored as they come; usage is sampled into the store.
//!
//! Secret values are never in an instance's record (nor in any file): the
//! variables that carry one are stored as templates, and the runtime asks
//! [`StoreSecrets`] for the values, decrypted from the store, each time it
//! starts the app (see `gantry_runtime::secrets`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use gantry_api::{InstanceInfo, LogLine};
use gantry_common::lock;
use gantry_runtime::limits::Limits;
use gantry_runtime::ports::PortPool;
use gantry_runtime::probe::{ProbeCheck, ProbeSpec};
use gantry_runtime::restart::{Backoff, CrashLoop, RestartPolicy, RestartRules};
use gantry_runtime::{Event, Instance, InstanceSpec, Runtime, SecretSource};
use gantry_spec::AppSpec;
use gantry_spec::model::{self, ProbeKind, StopSignal};
use gantry_store::Store;
use gantry_store::instances::{InstanceRecord, UsageSample};
use tokio::sync::mpsc;

use crate::db::{blocking, db};
use crate::error::{ApiError, ServerError, chain};

/// The backend set started by `gantry start` (releases bring their own).
const MAIN_SET: &str = "main";

/// How many stopped sets of an environment keep their instance directories
/// (and so their logs, for `gantry logs --release N`); older ones are
/// removed when another set stops.
pub(crate) const KEEP_STOPPED_SETS: usize = 5;

pub(crate) struct FleetOptions {
    /// Command that runs a shim (the instance dir is appended).
    pub(crate) shim: Vec<OsString>,
    pub(crate) ports: RangeInclusive<u16>,
    pub(crate) usage_interval: Duration,
    /// How long usage samples are kept.
    pub(crate) usage_retention: Duration,
}

struct Running {
    app: String,
    env: String,
    set: String,
    instance: Instance,
}

pub(crate) struct Fleet {
    runtime: Runtime,
    store: Arc<Store>,
    data_dir: PathBuf,
    running: Mutex<BTreeMap<String, Running>>,
    ports: Mutex<PortPool>,
    /// One start/stop/restart at a time.
    busy: tokio::sync::Mutex<()>,
}

impl Fleet {
    /// Adopts every recorded instance and starts the event and usage pumps.
    pub(crate) async fn boot(
        store: Arc<Store>,
        data_dir: &Path,
        opts: FleetOptions,
    ) -> Result<Arc<Self>, ServerError> {
        let s = store.clone();
        let records = tokio::task::spawn_blocking(move || s.instances(None))
            .await
            .map_err(|source| ServerError::Task { source })?
            .map_err(|source| ServerError::Adopt { source })?;
        // Bounded: a supervisor drops (and counts) an event rather than
        // wait for room, so a slow store never holds up supervision.
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let runtime = Runtime::new(data_dir.join("instances"), opts.shim, tx)
            .with_secrets(Arc::new(StoreSecrets(store.clone())));
        let fleet = Arc::new(Self {
            runtime,
            store: store.clone(),
            data_dir: data_dir.to_path_buf(),
            running: Mutex::new(BTreeMap::new()),
            ports: Mutex::new(PortPool::new(opts.ports)),
            busy: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(pump_events(store.clone(), rx));
        for rec in records {
            let spec: InstanceSpec = match serde_json::from_str(&rec.spec) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(instance = %rec.id, error = %e, "stored instance spec unreadable; not adopted");
                    continue;
                }
            };
            lock(&fleet.ports).reserve(rec.port);
            let instance = fleet.runtime.adopt(spec);
            lock(&fleet.running).insert(
                rec.id.clone(),
                Running {
                    app: rec.app,
                    env: rec.env,
                    set: rec.set_name,
                    instance,
                },
            );
        }
        let f = fleet.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(opts.usage_interval).await;
                f.sample_usage(opts.usage_retention).await;
            }
        });
        Ok(fleet)
    }

    async fn sample_usage(&self, keep: Duration) {
        let now = gantry_common::now_ms();
        let samples: Vec<UsageSample> = lock(&self.running)
            .iter()
            .filter_map(|(id, r)| {
                let s = r.instance.status();
                s.pid.map(|_| UsageSample {
                    instance: id.clone(),
                    at: now,
                    cpu_percent: s.cpu_percent,
                    rss_bytes: s.rss_bytes.map(|b| b as i64),
                })
            })
            .collect();
        let store = self.store.clone();
        let keep_ms = keep.as_millis() as i64;
        let _ = tokio::task::spawn_blocking(move || store.record_usage(&samples, keep_ms)).await;
    }

    /// The persistent data directory of an app environment.
    pub(crate) fn env_data_dir(&self, app: &str, env: &str) -> PathBuf {
        self.data_dir.join("envs").join(app).join(env).join("data")
    }

    /// Starts the instances of an app environment from its config
    /// (`gantry start`: the environment must have none running).
    pub(crate) async fn start(
        &self,
        app: &str,
        env: &str,
        spec: &AppSpec,
        dir: PathBuf,
        secrets: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<InstanceInfo>, ApiError> {
        self.start_set(app, env, MAIN_SET, spec, dir, secrets, true)
            .await
    }

    /// Starts backend set `set` of an app environment. With `exclusive`,
    /// refuses when any set of the environment runs; otherwise only when
    /// this set does.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start_set(
        &self,
        app: &str,
        env: &str,
        set: &str,
        spec: &AppSpec,
        dir: PathBuf,
        secrets: Vec<(String, Vec<u8>)>,
        exclusive: bool,
    ) -> Result<Vec<InstanceInfo>, ApiError> {
        let _busy = self.busy.lock().await;
        if lock(&self.running)
            .values()
            .any(|r| r.app == app && r.env == env && (exclusive || r.set == set))
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "{app}/{env} is already running; use `gantry restart --env {env}` or `gantry stop --env {env}` first"
                ),
            ));
        }
        let data = self.env_data_dir(app, env);
        let (d, dd) = (dir.clone(), data.clone());
        blocking(move || {
            if !d.is_absolute() || !d.is_dir() {
                return Err(ApiError::unprocessable(format!(
                    "`{}` is not an existing absolute directory to run the app in",
                    d.display()
                )));
            }
            std::fs::create_dir_all(&dd).map_err(|e| {
                ApiError::internal(format!("cannot create {}: {}", dd.display(), chain(&e)))
            })
        })
        .await??;
        let (env_vars, secret_env) = instance_env_split(app, env, spec, &secrets, &data)?;
        let count = spec.run.instances;
        let mut specs = Vec::new();
        {
            let mut ports = lock(&self.ports);
            for index in 0..count {
                match ports.allocate() {
                    Ok(port) => specs.push(instance_spec(
                        app,
                        env,
                        set,
                        index,
                        port,
                        spec,
                        &dir,
                        &env_vars,
                        &secret_env,
                    )),
                    Err(e) => {
                        for s in &specs {
                            ports.release(s.port);
                        }
                        return Err(ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            e.to_string(),
                        ));
                    }
                }
            }
        }
        let now = gantry_common::now_ms();
        let records = specs
            .iter()
            .map(|s| {
                Ok(InstanceRecord {
                    id: s.id(),
                    app: app.into(),
                    env: env.into(),
                    set_name: s.set.clone(),
                    idx: i64::from(s.index),
                    port: s.port,
                    spec: serde_json::to_string(s)
                        .map_err(|e| ApiError::internal(e.to_string()))?,
                    created_at: now,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        // Recorded before started: a crash in between leaves records that
        // the next control plane adopts (as exited) and starts.
        let store = self.store.clone();
        let recorded = tokio::task::spawn_blocking(move || store.add_instances(&records))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if let Err(e) = recorded {
            let mut ports = lock(&self.ports);
            for s in &specs {
                ports.release(s.port);
            }
            return Err(e.into());
        }
        let mut running = lock(&self.running);
        for s in specs {
            let id = s.id();
            let instance = self.runtime.start(s);
            running.insert(
                id,
                Running {
                    app: app.into(),
                    env: env.into(),
                    set: set.into(),
                    instance,
                },
            );
        }
        drop(running);
        Ok(self.list(Some((app, env))))
    }

    /// Stops every instance of an app environment gracefully and forgets
    /// them (`gantry stop`): NOT_FOUND when none runs.
    pub(crate) async fn stop(&self, app: &str, env: &str) -> Result<usize, ApiError> {
        match self.stop_set(app, env, None).await? {
            0 => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "{app}/{env} has no running instances; start them with `gantry start --env {env}`"
                ),
            )),
            n => Ok(n),
        }
    }

    /// Stops one backend set (or all of them) of an app environment and
    /// forgets its instances. `Ok(0)`: nothing to stop (none runs, e.g. it
    /// was stopped before). `Ok(n)`: `n` stopped and forgotten. `Err`: some
    /// are still alive, or their records could not be removed; the error
    /// names them, they stay in the fleet (and in the store), and calling
    /// this again retries them.
    pub(crate) async fn stop_set(
        &self,
        app: &str,
        env: &str,
        set: Option<&str>,
    ) -> Result<usize, ApiError> {
        let _busy = self.busy.lock().await;
        let stopping: Vec<(String, Instance)> = lock(&self.running)
            .iter()
            .filter(|(_, r)| r.app == app && r.env == env && set.is_none_or(|s| r.set == s))
            .map(|(id, r)| (id.clone(), r.instance.clone()))
            .collect();
        if stopping.is_empty() {
            return Ok(0);
        }
        let handles: Vec<_> = stopping
            .iter()
            .map(|(_, i)| {
                let i = i.clone();
                tokio::spawn(async move { i.stop().await })
            })
            .collect();
        let mut stopped = Vec::new();
        let mut failed = Vec::new();
        for ((id, i), h) in stopping.into_iter().zip(handles) {
            match h.await {
                Ok(Ok(())) => stopped.push((id, i)),
                Ok(Err(e)) => failed.push(e.to_string()),
                Err(e) => failed.push(format!("{id}: {e}")),
            }
        }
        let ids: Vec<String> = stopped.iter().map(|(id, _)| id.clone()).collect();
        let removed = db(&self.store, move |s| s.remove_instance_ids(&ids)).await;
        let n = stopped.len();
        match removed {
            Ok(_) => {
                let mut running = lock(&self.running);
                let mut ports = lock(&self.ports);
                for (id, i) in &stopped {
                    running.remove(id);
                    ports.release(i.spec().port);
                }
            }
            Err(e) => {
                // Stopped, but still recorded: kept, so a retry removes them
                // (their stop is then a no-op) and a new control plane does
                // not adopt what the old one was told is gone.
                let ids: Vec<&str> = stopped.iter().map(|(id, _)| id.as_str()).collect();
                failed.push(format!(
                    "{} stopped, but their records could not be removed: {}",
                    ids.join(", "),
                    e.message
                ));
            }
        }
        if failed.is_empty() {
            let live: Vec<PathBuf> = lock(&self.running)
                .values()
                .map(|r| self.runtime.instance_dir(r.instance.spec()))
                .collect();
            let env_dir = self.runtime.env_dir(app, env);
            // Removing directories (logs of up to tens of MiB): off the
            // runtime, and best effort (the stop itself is done).
            let _ = blocking(move || prune_stopped_sets(&env_dir, &live, KEEP_STOPPED_SETS)).await;
            return Ok(n);
        }
        Err(ApiError::internal(format!(
            "could not stop every instance of {app}/{env}{}: {}; stop again to retry",
            set.map(|s| format!(" set {s}")).unwrap_or_default(),
            failed.join("; ")
        )))
    }

    /// The statuses of one backend set.
    pub(crate) fn set_status(
        &self,
        app: &str,
        env: &str,
        set: &str,
    ) -> Vec<(u16, gantry_runtime::InstanceStatus)> {
        lock(&self.running)
            .values()
            .filter(|r| r.app == app && r.env == env && r.set == set)
            .map(|r| (r.instance.spec().port, r.instance.status()))
            .collect()
    }

    /// Restarts every instance of an app environment (one after another, so
    /// some stay up) and clears crash loops.
    pub(crate) async fn restart(&self, app: &str, env: &str) -> Result<usize, ApiError> {
        let _busy = self.busy.lock().await;
        let instances: Vec<Instance> = lock(&self.running)
            .values()
            .filter(|r| r.app == app && r.env == env)
            .map(|r| r.instance.clone())
            .collect();
        if instances.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "{app}/{env} has no instances to restart; start them with `gantry start --env {env}`"
                ),
            ));
        }
        for i in &instances {
            i.restart().await;
        }
        Ok(instances.len())
    }

    pub(crate) fn list(&self, filter: Option<(&str, &str)>) -> Vec<InstanceInfo> {
        lock(&self.running)
            .iter()
            .filter(|(_, r)| filter.is_none_or(|(a, e)| r.app == a && r.env == e))
            .map(|(id, r)| {
                let s = r.instance.status();
                InstanceInfo {
                    id: id.clone(),
                    app: r.app.clone(),
                    env: r.env.clone(),
                    set: r.set.clone(),
                    index: r.instance.spec().index,
                    phase: serde_json::to_value(s.phase)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    ready: s.ready,
                    pid: s.pid,
                    port: s.port,
                    started_at: s.started_at_ms,
                    restarts: s.restarts,
                    last_exit: s.last_exit,
                    last_probe: s.last_probe,
                    cpu_percent: s.cpu_percent,
                    rss_bytes: s.rss_bytes,
                    limits: s.limits,
                }
            })
            .collect()
    }

    /// The last `n` log lines of an app environment's instances, merged by
    /// time, only those after `after` (an RFC 3339 time) if given: of the
    /// running instances, or with `release`, of every instance of that
    /// release's sets (`r<N>`, `r<N>-…`), running or stopped (as long as
    /// their directories are kept: [`KEEP_STOPPED_SETS`]). `None` when no
    /// instance of the release is known.
    pub(crate) fn logs(
        &self,
        app: &str,
        env: &str,
        n: usize,
        after: Option<&str>,
        release: Option<i64>,
    ) -> Option<Vec<LogLine>> {
        let dirs: Vec<(String, PathBuf)> = match release {
            None => lock(&self.running)
                .iter()
                .filter(|(_, r)| r.app == app && r.env == env)
                .map(|(id, r)| (id.clone(), self.runtime.instance_dir(r.instance.spec())))
                .collect(),
            Some(number) => {
                let dirs: Vec<(String, PathBuf)> = instance_dirs(&self.runtime.env_dir(app, env))
                    .into_iter()
                    .filter(|(set, _, _)| is_release_set(set, number))
                    .map(|(set, index, dir)| (format!("{app}.{env}.{set}.{index}"), dir))
                    .collect();
                if dirs.is_empty() {
                    return None;
                }
                dirs
            }
        };
        let mut lines: Vec<LogLine> = dirs
            .iter()
            .flat_map(|(id, dir)| {
                gantry_runtime::logs::tail(dir, n)
                    .into_iter()
                    .filter_map(|l| {
                        let mut parts = l.splitn(3, ' ');
                        let at = parts.next()?.to_string();
                        let stream = parts.next()?.to_string();
                        let text = parts.next().unwrap_or("").to_string();
                        Some(LogLine {
                            instance: id.clone(),
                            at,
                            stream,
                            text,
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|l| after.is_none_or(|a| l.at.as_str() > a))
            .collect();
        lines.sort_by(|a, b| a.at.cmp(&b.at));
        let skip = lines.len().saturating_sub(n);
        Some(lines.split_off(skip))
    }
}

/// Whether backend set `set` runs release `number`: `r<N>`, or `r<N>-…`
/// for a redeploy of the same release.
fn is_release_set(set: &str, number: i64) -> bool {
    let name = format!("r{number}");
    set == name || set.strip_prefix(&name).is_some_and(|r| r.starts_with('-'))
}

/// The instance directories (`<set>-<index>`) under an environment's
/// directory: set, index and path.
fn instance_dirs(env_dir: &Path) -> Vec<(String, u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(env_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (set, index) = name.rsplit_once('-')?;
            Some((set.to_string(), index.parse().ok()?, e.path()))
        })
        .collect()
}

/// Removes the instance directories of all but the `keep` most recently
/// used stopped sets of an environment; `live` are the directories of
/// running instances, never removed (nor is any other directory of their
/// sets).
fn prune_stopped_sets(env_dir: &Path, live: &[PathBuf], keep: usize) {
    let mut sets: BTreeMap<String, (std::time::SystemTime, Vec<PathBuf>, bool)> = BTreeMap::new();
    for (set, _, dir) in instance_dirs(env_dir) {
        let used = [dir.join(gantry_runtime::logs::LOG_FILE), dir.clone()]
            .iter()
            .find_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .unwrap_or(std::time::UNIX_EPOCH);
        let is_live = live.contains(&dir);
        let entry = sets
            .entry(set)
            .or_insert((std::time::UNIX_EPOCH, Vec::new(), false));
        entry.0 = entry.0.max(used);
        entry.1.push(dir);
        entry.2 |= is_live;
    }
    let mut stopped: Vec<(std::time::SystemTime, Vec<PathBuf>)> = sets
        .into_values()
        .filter(|(_, _, is_live)| !is_live)
        .map(|(used, dirs, _)| (used, dirs))
        .collect();
    stopped.sort_by_key(|s| std::cmp::Reverse(s.0));
    for (_, dirs) in stopped.into_iter().skip(keep) {
        for dir in dirs {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an old instance directory");
            }
        }
    }
}

/// How many runtime events wait for the store at most; the runtime drops
/// (and counts) what comes while the queue is full.
const EVENT_QUEUE: usize = 4096;

/// Stores the runtime's events as they come, one at a time; one that
/// cannot be stored is logged with the store's error, and the next is
/// tried.
async fn pump_events(store: Arc<Store>, mut rx: mpsc::Receiver<Event>) {
    while let Some(e) = rx.recv().await {
        // Instance ids are `app.env.set.index`; app and env names have no dots.
        let mut parts = e.instance.splitn(3, '.');
        let (app, env) = (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        );
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let instance = e.instance.clone();
        let stored = db(&store, move |s| {
            s.append_event(e.at_ms, &app, &env, &e.instance, &kind, &e.message)
        })
        .await;
        if let Err(err) = stored {
            tracing::error!(%instance, error = %err.message, "could not store a runtime event");
        }
    }
}

/// The runtime's source of secret values: decrypted from the store when an
/// app starts.
struct StoreSecrets(Arc<Store>);

impl SecretSource for StoreSecrets {
    fn secrets(
        &self,
        app: &str,
        env: &str,
    ) -> Result<BTreeMap<String, String>, Box<dyn std::error::Error + Send + Sync>> {
        let values = self.0.secret_values(app, env)?;
        Ok(values
            .into_iter()
            .filter_map(|(name, v)| Some((name, String::from_utf8(v).ok()?)))
            .collect())
    }
}

type Vars = BTreeMap<String, String>;

/// An instance's environment in two parts: the variables without secrets
/// (the runtime's base and `[env]`), and those that carry one (declared
/// secrets, `[env]` values with `${secret.NAME}`) as templates for the
/// runtime to fill in. `secrets` only checks that every reference has a
/// value now.
fn instance_env_split(
    app: &str,
    env: &str,
    spec: &AppSpec,
    secrets: &[(String, Vec<u8>)],
    data: &Path,
) -> Result<(Vars, Vars), ApiError> {
    app_env(app, env, spec, secrets, data)?;
    let templates = spec
        .render_env(|name| Some(format!("${{secret.{name}}}")))
        .map_err(|gantry_spec::MissingSecret(name)| {
            ApiError::internal(format!("secret `{name}` cannot be referenced"))
        })?;
    let (secret, plain): (BTreeMap<_, _>, BTreeMap<_, _>) = templates
        .into_iter()
        .partition(|(_, v)| gantry_runtime::secrets::refers_to_secret(v));
    let plain = gantry_runtime::instance_env(app, env, data, &spec.run.inherited_env(), plain);
    Ok((plain, secret))
}

/// The app's environment: the runtime's base, the config's `[env]` with
/// secret references filled in, and every declared secret by name.
pub(crate) fn app_env(
    app: &str,
    env: &str,
    spec: &AppSpec,
    secrets: &[(String, Vec<u8>)],
    data: &Path,
) -> Result<BTreeMap<String, String>, ApiError> {
    let vars = spec
        .render_env(|name| {
            secrets
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
        })
        .map_err(|gantry_spec::MissingSecret(name)| {
            ApiError::unprocessable(format!(
                "secret `{name}` has no (UTF-8) value in `{env}`; set it with `gantry secrets set {name} --env {env}`"
            ))
        })?;
    Ok(gantry_runtime::instance_env(
        app,
        env,
        data,
        &spec.run.inherited_env(),
        vars,
    ))
}

fn probe(p: &model::Probe) -> ProbeSpec {
    let check = match p.kind {
        ProbeKind::Http => ProbeCheck::Http {
            path: p.path.clone().unwrap_or_else(|| "/".into()),
            status_min: p.expect_status.min,
            status_max: p.expect_status.max,
            body_contains: p.body_contains.clone(),
            host: None,
        },
        ProbeKind::Tcp => ProbeCheck::Tcp,
        ProbeKind::Exec => ProbeCheck::Exec {
            command: p.command.clone().unwrap_or_else(|| "true".into()),
        },
    };
    ProbeSpec {
        check,
        port: p.port,
        interval: p.interval.as_std(),
        timeout: p.timeout.as_std(),
        success_threshold: p.success_threshold,
        failure_threshold: p.failure_threshold,
        startup_grace: p.startup_grace.as_std(),
    }
}

#[allow(clippy::too_many_arguments)]
fn instance_spec(
    app: &str,
    env: &str,
    set: &str,
    index: u32,
    port: u16,
    spec: &AppSpec,
    dir: &Path,
    env_vars: &BTreeMap<String, String>,
    secret_env: &BTreeMap<String, String>,
) -> InstanceSpec {
    let run = &spec.run;
    let mut vars = env_vars.clone();
    vars.insert("INSTANCE_ID".into(), index.to_string());
    let workdir = match &run.workdir {
        Some(w) => dir.join(w),
        None => dir.to_path_buf(),
    };
    InstanceSpec {
        app: app.into(),
        env: env.into(),
        set: set.into(),
        index,
        command: run.command.clone(),
        workdir,
        env_vars: vars,
        secret_env: secret_env.clone(),
        port,
        readiness: Some(probe(&spec.health.readiness)),
        liveness: spec.health.liveness.as_ref().map(probe),
        restart: RestartRules {
            policy: match run.restart {
                model::RestartPolicy::Always => RestartPolicy::Always,
                model::RestartPolicy::OnFailure => RestartPolicy::OnFailure,
                model::RestartPolicy::Never => RestartPolicy::Never,
            },
            backoff: Backoff {
                initial: run.backoff.initial.as_std(),
                max: run.backoff.max.as_std(),
            },
            crash_loop: CrashLoop {
                max_restarts: run.crash_loop.max_restarts,
                window: run.crash_loop.window.as_std(),
            },
        },
        stop_signal: match run.stop_signal {
            StopSignal::Sigterm => 15,
            StopSignal::Sigint => 2,
            StopSignal::Sigquit => 3,
            StopSignal::Sighup => 1,
            StopSignal::Sigusr1 => 10,
            StopSignal::Sigusr2 => 12,
        },
        grace: run.grace_period.as_std(),
        limits: Limits {
            memory_bytes: (!run.limits.memory.is_zero()).then(|| run.limits.memory.as_u64()),
            cpu: (run.limits.cpu > 0.0).then_some(run.limits.cpu),
        },
        log_max_bytes: 10 * 1024 * 1024,
        log_keep: 3,
        usage_interval: Duration::from_secs(5),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(instance: &str, message: &str) -> Event {
        serde_json::from_value(serde_json::json!({
            "instance": instance,
            "at_ms": 1_000,
            "kind": "started",
            "message": message,
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn events_through_the_bounded_queue_are_stored_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let (tx, rx) = mpsc::channel::<Event>(EVENT_QUEUE);
        assert_eq!(tx.max_capacity(), EVENT_QUEUE);
        let pump = tokio::spawn(pump_events(store.clone(), rx));
        for i in 0..3 {
            tx.send(event(
                &format!("hello.production.main.{i}"),
                &format!("pid {i}"),
            ))
            .await
            .unwrap();
        }
        drop(tx);
        pump.await.unwrap();
        let mut stored: Vec<(String, String, String)> = store
            .events("hello", "production", 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.instance, e.kind, e.message))
            .collect();
        stored.sort();
        assert_eq!(
            stored,
            (0..3)
                .map(|i| (
                    format!("hello.production.main.{i}"),
                    "started".to_string(),
                    format!("pid {i}")
                ))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn release_sets_are_matched_by_name() {
        assert!(is_release_set("r4", 4));
        assert!(is_release_set("r4-17", 4));
        assert!(!is_release_set("r41", 4));
        assert!(!is_release_set("r41-2", 4));
        assert!(!is_release_set("main", 4));
        assert!(!is_release_set("r", 4));
    }

    #[test]
    fn only_the_newest_stopped_sets_keep_their_directories() {
        let root = tempfile::tempdir().unwrap();
        let env = root.path();
        let t0 = std::time::SystemTime::now() - Duration::from_secs(3600);
        // Sets r1..r6, two instances each, used in that order; r1 runs.
        for n in 1..=6u64 {
            for i in 0..2 {
                let dir = env.join(format!("r{n}-{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                let log = dir.join(gantry_runtime::logs::LOG_FILE);
                std::fs::write(&log, "x").unwrap();
                std::fs::File::options()
                    .write(true)
                    .open(&log)
                    .unwrap()
                    .set_modified(t0 + Duration::from_secs(60 * n))
                    .unwrap();
            }
        }
        std::fs::create_dir_all(env.join("not-an-instance")).unwrap();
        let live = vec![env.join("r1-0")];
        prune_stopped_sets(env, &live, 3);
        let mut left: Vec<String> = instance_dirs(env)
            .into_iter()
            .map(|(s, i, _)| format!("{s}-{i}"))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "r1-0", "r1-1", "r4-0", "r4-1", "r5-0", "r5-1", "r6-0", "r6-1"
            ],
            "the running set, and the three newest stopped ones"
        );
        assert!(env.join("not-an-instance").is_dir());
    }
}
