//! The rollout executor: drives a `gantry_rollout::Deploy` with real work.
//!
//! One task per deploy. It feeds the machine inputs (work results, proxy
//! metrics every analysis interval, clock ticks, approve/abort) and carries
//! out the actions it returns, after saving the new state and the timeline
//! to the store. Traffic moves through the proxy's admin API: the route
//! `app/env` has the old release's set and the new one's, and `SetWeight`
//! rewrites their weights in one table swap. Sets are named `r<release>`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_proxy::{AdminClient, BackendSet, Route};
use gantry_rollout::{Action, Deploy, Gates, Input, Pause, Plan, SetMetrics, Step, Strategy};
use gantry_spec::AppSpec;
use gantry_spec::model;
use gantry_store::Store;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::fleet::Fleet;

const TICK: Duration = Duration::from_millis(250);
const LEASE_MS: i64 = 60_000;

/// Commands for a running deploy.
pub(crate) enum Command {
    Approve(String),
    Abort(String),
}

pub(crate) struct Deployer {
    store: Arc<Store>,
    fleet: Arc<Fleet>,
    proxy: AdminClient,
    /// Where the proxy serves users, for smoke checks after the switch.
    proxy_addr: Option<std::net::SocketAddr>,
    /// One read-modify-write of the proxy's table at a time.
    table: tokio::sync::Mutex<()>,
    running: Mutex<HashMap<i64, mpsc::UnboundedSender<Command>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a deploy task needs to know, fixed at its start.
struct Job {
    id: i64,
    app: String,
    env: String,
    holder: String,
    spec: AppSpec,
    plan: Plan,
    new_set: String,
    old_set: Option<String>,
    dir: PathBuf,
    secrets: Vec<(String, Vec<u8>)>,
    analysis_interval: Duration,
}

fn db<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> gantry_store::Result<T> + Send + 'static,
) -> impl std::future::Future<Output = Result<T, ApiError>> {
    let store = store.clone();
    async move {
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(ApiError::from)
    }
}

pub(crate) fn plan_for(spec: &AppSpec, has_previous: bool) -> Plan {
    let d = &spec.deploy;
    let a = &spec.analysis;
    let strategy = match d.strategy {
        model::Strategy::BlueGreen => Strategy::BlueGreen {
            rollback_window: d.rollback_window.as_std(),
        },
        model::Strategy::Canary => Strategy::Canary {
            steps: d
                .steps
                .iter()
                .map(|s| Step {
                    weight: s.weight,
                    pause: match s.pause {
                        gantry_spec::Pause::For(p) => Pause::For(p.as_std()),
                        gantry_spec::Pause::Approval => Pause::Approval,
                    },
                })
                .collect(),
        },
    };
    let probe = &spec.health.readiness;
    Plan {
        strategy,
        gates: Gates {
            max_error_rate: a.max_error_rate,
            min_success_rate: a.min_success_rate,
            max_p99: a.max_p99.as_std(),
            min_requests: u64::from(a.min_requests),
            compare_to_stable: a.compare_to_stable,
        },
        pre_hook: d.hooks.pre_deploy.is_some(),
        post_hook: d.hooks.post_deploy.is_some(),
        build: false,
        migrate: spec.migrate.command.is_some(),
        migrate_rollback: spec.migrate.rollback.is_some(),
        smoke: !d.smoke.is_empty(),
        require_approval: d.require_approval,
        has_previous,
        inconclusive: match a.inconclusive {
            model::Inconclusive::Wait => gantry_rollout::Inconclusive::Wait,
            model::Inconclusive::Continue => gantry_rollout::Inconclusive::Continue,
            model::Inconclusive::Rollback => gantry_rollout::Inconclusive::Rollback,
        },
        ready_timeout: (probe.startup_grace.as_std()
            + probe.interval.as_std() * (probe.success_threshold + probe.failure_threshold) * 4)
            .max(Duration::from_secs(30)),
    }
}

impl Deployer {
    pub(crate) fn new(
        store: Arc<Store>,
        fleet: Arc<Fleet>,
        proxy: AdminClient,
        proxy_addr: Option<std::net::SocketAddr>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            fleet,
            proxy,
            proxy_addr,
            table: tokio::sync::Mutex::new(()),
            running: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn command(&self, id: i64, cmd: Command) -> Result<(), ApiError> {
        let running = lock(&self.running);
        let tx = running.get(&id).ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::CONFLICT,
                format!("deploy {id} is not running; see `gantry deploys show {id}`"),
            )
        })?;
        tx.send(cmd)
            .map_err(|_| ApiError::internal("the deploy task is gone"))
    }

    /// Picks up every deploy a previous control plane left unfinished: the
    /// machine decides from the phase it was in (resume where traffic moved,
    /// roll back where it did not).
    pub(crate) async fn resume_all(self: &Arc<Self>) -> Result<usize, ApiError> {
        let unfinished = db(&self.store, |s| s.unfinished_deploys()).await?;
        let n = unfinished.len();
        for rec in unfinished {
            let id = rec.id;
            if let Err(e) = self.resume(rec).await {
                tracing::error!(deploy = id, error = %e.message, "cannot resume the deploy");
            }
        }
        Ok(n)
    }

    async fn resume(
        self: &Arc<Self>,
        rec: gantry_store::deploys::DeployRecord,
    ) -> Result<(), ApiError> {
        let bad = |e: serde_json::Error| ApiError::internal(format!("deploy {}: {e}", rec.id));
        let plan: Plan = serde_json::from_str(&rec.plan).map_err(bad)?;
        let state: Deploy = serde_json::from_str(&rec.state).map_err(bad)?;
        let (a, e, n) = (rec.app.clone(), rec.env.clone(), rec.release);
        let pinned = rec.config_version;
        let (version, secrets, rel) = db(&self.store, move |s| {
            Ok((
                // The config it started with, whatever was applied since.
                config_at(s, &a, &e, pinned)?,
                s.secret_values(&a, &e)?,
                s.release(&a, n)?,
            ))
        })
        .await?;
        let spec = gantry_spec::parse_str(&version.file_name, &version.source)
            .and_then(|s| s.resolve(&rec.env))
            .map_err(|d| ApiError::unprocessable(format!("{d}")))?;
        let holder = format!("{} (deploy of release {})", rec.actor, rec.release);
        // A migration or hook the dead control plane was running must not
        // run on beside what the deploy does next.
        if let Some(line) = crate::shell::stop_orphan(&command_marker(self.store.dir(), rec.id)) {
            let (id, phase, at) = (rec.id, rec.phase.clone(), gantry_store::now_ms());
            db(&self.store, move |s| {
                s.add_deploy_event(id, at, &phase, &line)
            })
            .await?;
        }
        let (a, e, h, id) = (rec.app.clone(), rec.env.clone(), holder.clone(), rec.id);
        // The crashed holder was us: take the lease over.
        db(&self.store, move |s| {
            s.release_lease(&a, &e, &h)?;
            s.acquire_lease(&a, &e, &h, Some(id), LEASE_MS, gantry_store::now_ms())
                .map(|_| ())
        })
        .await?;
        let job = Job {
            id: rec.id,
            app: rec.app.clone(),
            env: rec.env.clone(),
            holder,
            analysis_interval: spec.analysis.interval.as_std(),
            spec,
            old_set: rec
                .previous_release
                .map(|r| format!("r{r}"))
                .filter(|_| plan.has_previous),
            plan,
            new_set: format!("r{}", rec.release),
            dir: crate::build::artifact_dir(self.store.dir(), &rel.digest),
            secrets,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.running).insert(rec.id, tx);
        let me = self.clone();
        tokio::spawn(async move {
            let id = job.id;
            me.run_from(job, state, rx, Input::Resumed).await;
            lock(&me.running).remove(&id);
        });
        Ok(())
    }

    /// Starts deploying `release` to `app`/`env`; returns the deploy id.
    pub(crate) async fn start(
        self: &Arc<Self>,
        app: &str,
        env: &str,
        release: i64,
        config_version: Option<i64>,
        actor: &str,
    ) -> Result<i64, ApiError> {
        let (a, e) = (app.to_string(), env.to_string());
        let (version, secrets, rel, last) = db(&self.store, move |s| {
            let last = s
                .deploys(Some((&a, &e)), 50)?
                .into_iter()
                .find(|d| d.outcome.as_deref() == Some("succeeded"));
            Ok((
                config_at(s, &a, &e, config_version)?,
                s.secret_values(&a, &e)?,
                s.release(&a, release)?,
                last,
            ))
        })
        .await?;
        let spec = gantry_spec::parse_str(&version.file_name, &version.source)
            .and_then(|s| s.resolve(env))
            .map_err(|d| ApiError::unprocessable(format!("the applied config has errors:\n{d}")))?;
        let previous = last.map(|d| d.release).filter(|r| *r != release);
        let old_set = previous.map(|r| format!("r{r}"));
        let has_previous = old_set
            .as_ref()
            .is_some_and(|s| !self.fleet.set_status(app, env, s).is_empty());
        let plan = plan_for(&spec, has_previous);
        self.check_route(app, env, &spec).await?;
        let holder = format!("{actor} (deploy of release {release})");
        let now = gantry_store::now_ms();
        let (a, e, h) = (app.to_string(), env.to_string(), holder.clone());
        let lease = db(&self.store, move |s| {
            s.acquire_lease(&a, &e, &h, None, LEASE_MS, now)
        })
        .await?;
        if let Err(held) = lease {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                format!(
                    "{app}/{env} is being deployed by {} (deploy {}, for {} s); wait for it or `gantry abort`",
                    held.holder,
                    held.deploy_id.map_or("?".into(), |d| d.to_string()),
                    (now - held.acquired_at) / 1000
                ),
            ));
        }
        let state = Deploy::new(now);
        let (plan_json, state_json) = (
            serde_json::to_string(&plan).map_err(|e| ApiError::internal(e.to_string()))?,
            serde_json::to_string(&state).map_err(|e| ApiError::internal(e.to_string()))?,
        );
        let (a, e, act) = (app.to_string(), env.to_string(), actor.to_string());
        let config_number = version.version;
        let rec = db(&self.store, move |s| {
            s.create_deploy(
                &a,
                &e,
                release,
                previous,
                config_number,
                &act,
                &plan_json,
                &state_json,
                "pending",
            )
        })
        .await?;
        let (a, e, h, id) = (app.to_string(), env.to_string(), holder.clone(), rec.id);
        db(&self.store, move |s| {
            s.acquire_lease(&a, &e, &h, Some(id), LEASE_MS, gantry_store::now_ms())
                .map(|_| ())
        })
        .await?;
        let job = Job {
            id: rec.id,
            app: app.into(),
            env: env.into(),
            holder,
            analysis_interval: spec.analysis.interval.as_std(),
            spec,
            plan,
            new_set: format!("r{release}"),
            old_set: old_set.filter(|_| has_previous),
            dir: crate::build::artifact_dir(self.store.dir(), &rel.digest),
            secrets,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.running).insert(rec.id, tx);
        let me = self.clone();
        tokio::spawn(async move {
            let id = job.id;
            me.run(job, state, rx).await;
            lock(&me.running).remove(&id);
        });
        Ok(rec.id)
    }

    async fn run(&self, job: Job, d: Deploy, rx: mpsc::UnboundedReceiver<Command>) {
        self.run_from(job, d, rx, Input::Begin).await;
    }

    async fn run_from(
        &self,
        job: Job,
        mut d: Deploy,
        mut rx: mpsc::UnboundedReceiver<Command>,
        first: Input,
    ) {
        let mut queue: std::collections::VecDeque<Input> = [first].into();
        let mut baseline: Option<SetMetrics> = None;
        let mut baseline_old: Option<SetMetrics> = None;
        let mut last_metrics = Instant::now();
        let mut last_lease = Instant::now();
        let mut draining = d.phase == gantry_rollout::Phase::Drain;
        while !d.is_done() {
            let input = match queue.pop_front() {
                Some(i) => i,
                None => {
                    tokio::select! {
                        Some(cmd) = rx.recv() => match cmd {
                            Command::Approve(by) => Input::Approve { by },
                            Command::Abort(by) => Input::Abort { by },
                        },
                        _ = tokio::time::sleep(TICK) => {
                            if last_lease.elapsed() > Duration::from_secs(10) {
                                last_lease = Instant::now();
                                let (a, e, h) = (job.app.clone(), job.env.clone(), job.holder.clone());
                                let _ = db(&self.store, move |s| s.renew_lease(&a, &e, &h, LEASE_MS, gantry_store::now_ms())).await;
                            }
                            self.observe(&job, &d, &mut queue, &mut baseline, &mut baseline_old, &mut last_metrics, draining).await;
                            // The clock advances every tick, whatever else
                            // came in (metrics every tick must not starve a
                            // step's or a warm window's end).
                            queue.push_back(Input::Tick);
                            queue.pop_front().unwrap_or(Input::Tick)
                        }
                    }
                }
            };
            let now = gantry_store::now_ms();
            let actions = d.handle(&job.plan, input, now);
            // The new state is stored before anything acts on it.
            let logs: Vec<(i64, String)> = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Log(m) => Some((now, m.clone())),
                    _ => None,
                })
                .collect();
            let state = serde_json::to_string(&d).unwrap_or_default();
            let phase = serde_json::to_value(d.phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let outcome = d
                .outcome
                .and_then(|o| serde_json::to_value(o).ok())
                .and_then(|v| v.as_str().map(str::to_string));
            let (id, holder, saved_phase) = (job.id, job.holder.clone(), phase.clone());
            if let Err(e) = db(&self.store, move |s| {
                s.save_deploy_as(id, &state, &phase, outcome.as_deref(), &logs, Some(&holder))
            })
            .await
            {
                tracing::error!(deploy = id, error = %e.message, "cannot save the deploy state");
            }
            for action in actions {
                if let Action::SetWeight { .. } = action {
                    baseline = None;
                    baseline_old = None;
                }
                if let Action::DrainOld = action {
                    draining = true;
                }
                let weight = match action {
                    Action::SetWeight { new } => Some(new),
                    _ => None,
                };
                let next = self.act(&job, action).await;
                if let (Some(w), None) = (weight, &next) {
                    // After the fact, so it never delays the switch.
                    let at = gantry_store::now_ms();
                    let split = match &job.old_set {
                        Some(old) if w < 100 => {
                            format!("{w} % to {}, {} % to {old}", job.new_set, 100 - w)
                        }
                        _ => format!("all to {}", job.new_set),
                    };
                    let line = format!(
                        "traffic: {split} (the proxy applied it {} ms after the decision)",
                        at - now
                    );
                    let (id, phase) = (job.id, saved_phase.clone());
                    let _ = db(&self.store, move |s| {
                        s.add_deploy_event(id, at, &phase, &line)
                    })
                    .await;
                }
                if let Some(next) = next {
                    queue.push_back(next);
                }
            }
        }
        let (a, e, h) = (job.app.clone(), job.env.clone(), job.holder.clone());
        let _ = db(&self.store, move |s| s.release_lease(&a, &e, &h)).await;
    }

    /// Between inputs: readiness of new instances, drain status, metrics.
    #[allow(clippy::too_many_arguments)]
    async fn observe(
        &self,
        job: &Job,
        d: &Deploy,
        queue: &mut std::collections::VecDeque<Input>,
        baseline: &mut Option<SetMetrics>,
        baseline_old: &mut Option<SetMetrics>,
        last_metrics: &mut Instant,
        draining: bool,
    ) {
        use gantry_rollout::Phase;
        match d.phase {
            Phase::Start => {
                let st = self.fleet.set_status(&job.app, &job.env, &job.new_set);
                if let Some(bad) = st.iter().find_map(|(_, s)| {
                    s.not_ready
                        .clone()
                        .map(|w| format!("{} not ready: {w}", s.id))
                        .or_else(|| {
                            (s.restarts > 0 || s.last_exit.is_some()).then(|| {
                                format!(
                                    "{} {}",
                                    s.id,
                                    s.last_exit.clone().unwrap_or_else(|| "restarted".into())
                                )
                            })
                        })
                        .map(|why| s.with_output(why))
                }) {
                    queue.push_back(Input::StartFailed { detail: bad });
                } else if !st.is_empty() && st.iter().all(|(_, s)| s.ready) {
                    queue.push_back(Input::Ready);
                }
            }
            Phase::Drain if draining => {
                if let Some(old) = &job.old_set {
                    let route = format!("{}/{}", job.app, job.env);
                    if self
                        .proxy
                        .drained(&route, old)
                        .await
                        .is_ok_and(|s| s.drained)
                    {
                        queue.push_back(Input::Drained);
                    }
                } else {
                    queue.push_back(Input::Drained);
                }
            }
            Phase::Analyze | Phase::AwaitApproval | Phase::Warm => {
                let route = format!("{}/{}", job.app, job.env);
                let Ok(stats) = self.proxy.stats().await else {
                    return;
                };
                let read = |set: &str| {
                    stats.set(&route, set).map(|s| SetMetrics {
                        requests: s.requests.c1xx
                            + s.requests.c2xx
                            + s.requests.c3xx
                            + s.requests.c4xx
                            + s.requests.c5xx,
                        status_5xx: s.requests.c5xx,
                        status_ok: s.requests.c1xx + s.requests.c2xx + s.requests.c3xx,
                        p99: s
                            .latency_ms
                            .p99
                            .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
                    })
                };
                let now_new = read(&job.new_set).unwrap_or_default();
                let now_old = job.old_set.as_deref().and_then(read);
                let base = *baseline.get_or_insert(now_new);
                let base_old = baseline_old.get_or_insert(now_old.unwrap_or_default());
                let delta = |now: SetMetrics, base: SetMetrics| SetMetrics {
                    requests: now.requests.saturating_sub(base.requests),
                    status_5xx: now.status_5xx.saturating_sub(base.status_5xx),
                    status_ok: now.status_ok.saturating_sub(base.status_ok),
                    p99: now.p99,
                };
                let new = delta(now_new, base);
                // Judge early when errors pile up; otherwise every interval.
                let due = last_metrics.elapsed() >= job.analysis_interval
                    || (new.requests >= job.plan.gates.min_requests && new.status_5xx > 0);
                if due {
                    *last_metrics = Instant::now();
                    queue.push_back(Input::Metrics {
                        new,
                        old: now_old.map(|o| delta(o, *base_old)),
                    });
                }
            }
            _ => {}
        }
    }

    /// Carries out one action; returns the input it produces, if any.
    async fn act(&self, job: &Job, action: Action) -> Option<Input> {
        match action {
            Action::Log(_) => None,
            Action::Notify { failure, message } => {
                if failure {
                    tracing::warn!(deploy = job.id, "{message}");
                } else {
                    tracing::info!(deploy = job.id, "{message}");
                }
                None
            }
            Action::Build => Some(Input::Built {
                ok: true,
                detail: "prebuilt release".into(),
            }),
            Action::RunPreHook | Action::RunPostHook => {
                let cmd = if matches!(action, Action::RunPreHook) {
                    job.spec.deploy.hooks.pre_deploy.clone()
                } else {
                    job.spec.deploy.hooks.post_deploy.clone()
                };
                let (ok, detail) = self
                    .run_command(
                        job,
                        cmd.as_deref().unwrap_or("true"),
                        Duration::from_secs(600),
                    )
                    .await;
                Some(Input::HookDone { ok, detail })
            }
            Action::Migrate => {
                let cmd = job
                    .spec
                    .migrate
                    .command
                    .clone()
                    .unwrap_or_else(|| "true".into());
                let (ok, detail) = self
                    .run_command(job, &cmd, job.spec.migrate.timeout.as_std())
                    .await;
                Some(Input::Migrated { ok, detail })
            }
            Action::MigrateRollback => {
                let cmd = job
                    .spec
                    .migrate
                    .rollback
                    .clone()
                    .unwrap_or_else(|| "true".into());
                let (ok, detail) = self
                    .run_command(job, &cmd, job.spec.migrate.timeout.as_std())
                    .await;
                Some(Input::MigrationRolledBack { ok, detail })
            }
            Action::StartNew => {
                match self
                    .fleet
                    .start_set(
                        &job.app,
                        &job.env,
                        &job.new_set,
                        &job.spec,
                        job.dir.clone(),
                        job.secrets.clone(),
                        false,
                    )
                    .await
                {
                    Ok(_) => None,
                    Err(e) => Some(Input::StartFailed { detail: e.message }),
                }
            }
            Action::SmokeLive if self.proxy_addr.is_some() => {
                // After the switch, through the proxy, as users reach it.
                let port = self.proxy_addr.map_or(0, |a| a.port());
                let route = route_for(&job.app, &job.env, &job.spec, Vec::new());
                let host = route.hosts.first().cloned();
                let (ok, detail) = smoke(&job.spec.deploy.smoke, &[port], host.as_deref()).await;
                Some(Input::Smoke { ok, detail })
            }
            Action::SmokeDirect | Action::SmokeLive => {
                let ports: Vec<u16> = self
                    .fleet
                    .set_status(&job.app, &job.env, &job.new_set)
                    .iter()
                    .map(|(p, _)| *p)
                    .collect();
                let (ok, detail) = smoke(&job.spec.deploy.smoke, &ports, None).await;
                Some(Input::Smoke { ok, detail })
            }
            Action::SetWeight { new } => {
                let mut sets = Vec::new();
                if let Some(old) = &job.old_set {
                    sets.push((old.clone(), 100 - u32::from(new)));
                }
                if new > 0 || job.old_set.is_none() {
                    sets.push((
                        job.new_set.clone(),
                        if job.old_set.is_none() {
                            100
                        } else {
                            u32::from(new)
                        },
                    ));
                }
                match self.route(job, &sets).await {
                    Ok(()) => None,
                    // The machine rolls back from any phase with traffic.
                    Err(e) => {
                        tracing::error!(deploy = job.id, error = %e, "cannot set the route");
                        Some(Input::StartFailed {
                            detail: format!("the proxy refused the route change: {e}"),
                        })
                    }
                }
            }
            Action::DrainOld => {
                if let Err(e) = self.route(job, &[(job.new_set.clone(), 100)]).await {
                    tracing::error!(deploy = job.id, error = %e, "cannot set the route");
                }
                None
            }
            // Stopping a set with no instance left (a repeat after a
            // crash) is done already.
            Action::StopOld => {
                if let Some(old) = &job.old_set {
                    let _ = self.fleet.stop_set(&job.app, &job.env, Some(old)).await;
                }
                Some(Input::Stopped)
            }
            Action::StopNew => {
                let _ = self
                    .fleet
                    .stop_set(&job.app, &job.env, Some(&job.new_set))
                    .await;
                Some(Input::Stopped)
            }
        }
    }

    /// Sets the route of the job's app environment to `sets` (name, weight).
    async fn route(&self, job: &Job, sets: &[(String, u32)]) -> Result<(), String> {
        let _one = self.table.lock().await;
        let mut table = self.proxy.table().await.map_err(|e| e.to_string())?;
        let backends = sets
            .iter()
            .map(|(name, weight)| BackendSet {
                name: name.clone(),
                weight: *weight,
                instances: self
                    .fleet
                    .set_status(&job.app, &job.env, name)
                    .iter()
                    .map(|(p, _)| format!("127.0.0.1:{p}"))
                    .collect(),
            })
            .collect();
        replace_route(
            &mut table,
            route_for(&job.app, &job.env, &job.spec, backends),
        );
        self.proxy
            .set_table(&table)
            .await
            .map_err(|e| e.to_string())
    }

    /// Before a deploy starts: the proxy answers, and the environment's
    /// route fits in its table (no host another route already serves).
    async fn check_route(&self, app: &str, env: &str, spec: &AppSpec) -> Result<(), ApiError> {
        let mut table = self.proxy.table().await.map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the edge proxy does not answer on {} ({e}); start it with `gantry proxy`",
                    self.proxy.socket().display()
                ),
            )
        })?;
        let probe = BackendSet {
            name: "new".into(),
            weight: 100,
            instances: vec!["127.0.0.1:1".into()],
        };
        replace_route(&mut table, route_for(app, env, spec, vec![probe]));
        table.validate().map_err(|e| {
            ApiError::unprocessable(format!(
                "the route of {app}/{env} does not fit the proxy's table: {e}"
            ))
        })
    }

    /// Runs a migration or hook in the release's directory with the app's
    /// environment and the deploy's context.
    async fn run_command(&self, job: &Job, cmd: &str, timeout: Duration) -> (bool, String) {
        let data = self.fleet.env_data_dir(&job.app, &job.env);
        let _ = std::fs::create_dir_all(&data);
        let mut env =
            match crate::fleet::app_env(&job.app, &job.env, &job.spec, &job.secrets, &data) {
                Ok(env) => env,
                Err(e) => return (false, e.message),
            };
        let release = |set: &str| set.trim_start_matches('r').to_string();
        env.insert("GANTRY_DEPLOY_ID".into(), job.id.to_string());
        env.insert("GANTRY_RELEASE".into(), release(&job.new_set));
        env.insert(
            "GANTRY_PREVIOUS_RELEASE".into(),
            job.old_set.as_deref().map(release).unwrap_or_default(),
        );
        let marker = command_marker(self.store.dir(), job.id);
        if let Some(parent) = marker.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let out =
            crate::shell::run_marked(cmd, &job.dir, Some(env), timeout, 2000, Some(&marker)).await;
        (out.ok, out.summary(cmd))
    }
}

/// The environment's config at `version`, or its current one.
fn config_at(
    s: &Store,
    app: &str,
    env: &str,
    version: Option<i64>,
) -> gantry_store::Result<gantry_store::config::ConfigVersion> {
    match version {
        Some(v) => s.config_version(app, env, v),
        None => s.current_config(app, env),
    }
}

/// Where a deploy's running migration or hook is recorded (see `shell`).
fn command_marker(data_dir: &std::path::Path, deploy: i64) -> PathBuf {
    data_dir.join("deploys").join(format!("{deploy}.command"))
}

/// The proxy route of an app environment: its hosts (or
/// `<env>.<app>.localhost`) and path prefix, with `sets`.
fn route_for(app: &str, env: &str, spec: &AppSpec, sets: Vec<BackendSet>) -> Route {
    // A zero duration means "no timeout" nowhere in the proxy: at least 1 ms.
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    let h = &spec.proxy.headers;
    let hosts: Vec<String> = if spec.proxy.hosts.is_empty() {
        vec![format!("{env}.{app}.localhost")]
    } else {
        spec.proxy
            .hosts
            .iter()
            .map(|h| h.as_str().to_string())
            .collect()
    };
    Route {
        id: format!("{app}/{env}"),
        hosts,
        path_prefix: if spec.proxy.path_prefix.is_empty() {
            "/".into()
        } else {
            spec.proxy.path_prefix.clone()
        },
        sets,
        maintenance: None,
        timeout_ms: Some(millis(spec.proxy.timeouts.response.as_std())),
        connect_timeout_ms: Some(millis(spec.proxy.timeouts.connect.as_std())),
        compress: spec.proxy.compress,
        sticky: spec.proxy.sticky_sessions,
        headers: Some(gantry_proxy::SecurityHeaders {
            csp: h.csp.clone(),
            reporting_endpoints: h.reporting_endpoints.clone(),
            hsts: h.hsts.clone(),
            frame_options: h.frame_options.clone(),
            content_type_options: h.content_type_options.clone(),
            referrer_policy: h.referrer_policy.clone(),
            permissions_policy: h.permissions_policy.clone(),
        }),
        rate_limit: spec.proxy.rate_limit.map(|r| gantry_proxy::RateLimit {
            requests_per_second: r.requests_per_second,
            burst: r.burst,
        }),
        max_body: (!spec.proxy.max_body.is_zero()).then(|| spec.proxy.max_body.as_u64()),
        tls: match spec.proxy.tls.mode {
            model::TlsMode::Off => None,
            model::TlsMode::Files => Some(gantry_proxy::RouteTls::Files {
                cert: spec.proxy.tls.cert.clone().unwrap_or_default().into(),
                key: spec.proxy.tls.key.clone().unwrap_or_default().into(),
            }),
            model::TlsMode::Acme => Some(gantry_proxy::RouteTls::Acme {
                email: spec.proxy.tls.acme_email.clone(),
            }),
        },
        redirect_http: spec.proxy.redirect_http,
    }
}

fn replace_route(table: &mut gantry_proxy::Table, route: Route) {
    table.routes.retain(|r| r.id != route.id);
    table.routes.push(route);
    table.version += 1;
}

/// Runs every smoke check against every port; the first failure wins.
async fn smoke(checks: &[model::SmokeCheck], ports: &[u16], host: Option<&str>) -> (bool, String) {
    let mut passed = 0;
    for port in ports {
        for c in checks {
            let started = Instant::now();
            let r = gantry_runtime::probe::run_once(
                &gantry_runtime::probe::ProbeSpec {
                    check: gantry_runtime::probe::ProbeCheck::Http {
                        path: c.path.clone(),
                        status_min: c.expect_status,
                        status_max: c.expect_status,
                        body_contains: c.body_contains.clone(),
                        host: host.map(str::to_string),
                    },
                    port: None,
                    interval: Duration::from_secs(1),
                    timeout: c.max_latency.map_or(Duration::from_secs(5), |d| d.as_std()),
                    success_threshold: 1,
                    failure_threshold: 1,
                    startup_grace: Duration::ZERO,
                },
                *port,
                &gantry_runtime::probe::ExecContext {
                    workdir: "/".into(),
                    env: BTreeMap::new(),
                },
            )
            .await;
            if !r.ok {
                return (false, format!("port {port}: {}", r.detail));
            }
            if let Some(max) = c.max_latency
                && started.elapsed() > max.as_std()
            {
                return (
                    false,
                    format!(
                        "port {port}: {} (slower than {} ms)",
                        r.detail,
                        max.as_std().as_millis()
                    ),
                );
            }
            passed += 1;
        }
    }
    let via = host.map_or("on the new instances directly".to_string(), |h| {
        format!("through the proxy (Host {h})")
    });
    (true, format!("{passed} smoke checks passed {via}"))
}
