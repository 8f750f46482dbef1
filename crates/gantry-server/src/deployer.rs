//! The rollout executor: drives a `gantry_rollout::Deploy` with real work.
//!
//! One task per deploy. It feeds the machine inputs (work results, proxy
//! metrics every analysis interval, clock ticks, approve/abort) and carries
//! out the actions it returns. Traffic moves through the proxy's admin API:
//! the route `app/env` has the old release's set and the new one's, and
//! `SetWeight` rewrites their weights in one table swap. Sets are named
//! `r<release>`, or `r<release>-<deploy>` for a redeploy of a release whose
//! set still runs, so a deploy never starts, or stops, a set it does not own.
//!
//! What the executor guarantees (ARCHITECTURE.md's invariants):
//! - **Store before act.** A transition's new state and timeline are stored
//!   before any of its actions runs; while the store refuses (a full disk),
//!   the deploy holds: traffic stays as it is, only commands (abort,
//!   approve) reach the machine, and the cause shows in `gantry deploys`.
//!   Once a write succeeds, the stored decision is carried out.
//! - **A set that carries traffic is never stopped.** Before a set's
//!   instances are stopped, the proxy's served table must show the set at
//!   weight 0 or gone from the route; otherwise the executor rewrites the
//!   route and retries, and never stops the set meanwhile.
//! - **Actions that must happen are retried, not dropped.** A route change
//!   the proxy could not take (it is down, its disk is full), and a stop
//!   that did not stop everything, are retried with backoff; the cause is
//!   shown, and a command (abort) may change the decision meanwhile.
//! - **One deploy per environment.** The lease is the deploy's own (its id)
//!   and is renewed by a task of its own, whatever the executor is busy
//!   with (a migration, a readiness wait); a deploy that loses it stops
//!   acting at once and says why.
//! - **Every call that can hang has a deadline** (proxy admin calls,
//!   probes, smoke checks, hooks and migrations).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use gantry_common::lock;
use gantry_proxy::{AdminClient, AdminClientError, BackendSet, Route, Table};
use gantry_rollout::{
    Action, Baseline, Deploy, Gates, Input, Pause, Phase, Plan, SetMetrics, Step, Strategy,
};
use gantry_spec::AppSpec;
use gantry_spec::model;
use gantry_store::Store;
use gantry_store::deploys::{DeployRecord, Lease, NewDeploy};
use tokio::sync::{mpsc, watch};

use crate::db::db;
use crate::error::ApiError;
use crate::fleet::Fleet;

const TICK: Duration = Duration::from_millis(250);
/// Commands queued for one deploy at most (approve/abort are rare).
const COMMANDS: usize = 16;
/// Backoff of a retried action or store write.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Commands for a running deploy.
pub(crate) enum Command {
    Approve(String),
    Abort(String),
}

/// What a running deploy is held by, for `gantry deploys`.
#[derive(Debug, Clone)]
pub(crate) struct Hold {
    pub(crate) since: i64,
    pub(crate) cause: String,
    pub(crate) attempts: u32,
}

impl Hold {
    pub(crate) fn describe(&self, now: i64) -> String {
        format!(
            "holding for {} s (attempt {}): {}",
            now.saturating_sub(self.since) / 1000,
            self.attempts,
            self.cause
        )
    }
}

struct Running {
    tx: mpsc::Sender<Command>,
    hold: Arc<Mutex<Option<Hold>>>,
}

pub(crate) struct Deployer {
    store: Arc<Store>,
    fleet: Arc<Fleet>,
    proxy: AdminClient,
    /// Where the proxy serves users, for smoke checks after the switch.
    proxy_addr: Option<std::net::SocketAddr>,
    /// How long a deploy's lease lasts unrenewed.
    lease: Duration,
    /// One read-modify-write of the proxy's table at a time.
    table: tokio::sync::Mutex<()>,
    running: Mutex<HashMap<i64, Running>>,
}

/// What a deploy task needs to know, fixed at its start.
struct Job {
    id: i64,
    app: String,
    env: String,
    spec: AppSpec,
    plan: Plan,
    new_set: String,
    old_set: Option<String>,
    dir: PathBuf,
    secrets: Vec<(String, Vec<u8>)>,
    analysis_interval: Duration,
}

impl Job {
    fn route_id(&self) -> String {
        format!("{}/{}", self.app, self.env)
    }
}

/// Whether a failed admin call may succeed when repeated (the proxy is
/// down, slow, or could not persist), or is a refusal that will not change.
fn transient(e: &AdminClientError) -> bool {
    match e {
        AdminClientError::Api { status, .. } => *status >= 500,
        _ => true,
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
    let probes = probe
        .success_threshold
        .saturating_add(probe.failure_threshold);
    Plan {
        strategy,
        gates: Gates {
            max_error_rate: a.max_error_rate,
            min_success_rate: a.min_success_rate,
            max_p99: a.max_p99.as_std(),
            min_requests: u64::from(a.min_requests),
            compare_to_stable: a.compare_to_stable,
            baseline: match a.baseline {
                model::Baseline::Stable => Baseline::Stable,
                model::Baseline::Absolute => Baseline::Absolute,
            },
            p99_ratio: a.p99_ratio,
            p99_margin: a.p99_margin.as_std(),
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
        // Saturating: durations from a spec never overflow a deadline.
        ready_timeout: probe
            .startup_grace
            .as_std()
            .saturating_add(
                probe
                    .interval
                    .as_std()
                    .saturating_mul(probes.saturating_mul(4)),
            )
            .max(Duration::from_secs(30)),
    }
}

/// "deploy 12 of release 4 by alice (phase analyze, for 37 s)".
fn describe_holder(l: &Lease, now: i64) -> String {
    format!(
        "deploy {} of release {} by {} (phase {}, for {} s)",
        l.deploy_id.map_or("?".into(), |d| d.to_string()),
        l.release.map_or("?".into(), |r| r.to_string()),
        l.holder,
        l.phase.as_deref().unwrap_or("?"),
        now.saturating_sub(l.acquired_at) / 1000
    )
}

fn busy(app: &str, env: &str, l: &Lease, now: i64) -> ApiError {
    let warm = if l.phase.as_deref() == Some("warm") {
        " — it keeps the previous set warm for a quick rollback; `gantry approve` ends that window now"
    } else {
        ""
    };
    ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "{app}/{env} is being deployed by {}{warm}; wait for it (`gantry deploy --wait` queues behind it) or stop it with `gantry abort --env {env}`",
            describe_holder(l, now)
        ),
    )
}

/// What a carried-out action led to.
enum Done {
    /// It is done; the machine hears this (if anything).
    Then(Option<Input>),
    /// It could not be done now; it is tried again after a backoff.
    Retry(String),
}

impl Deployer {
    pub(crate) fn new(
        store: Arc<Store>,
        fleet: Arc<Fleet>,
        proxy: AdminClient,
        proxy_addr: Option<std::net::SocketAddr>,
        lease: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            fleet,
            proxy,
            proxy_addr,
            lease: lease.max(Duration::from_millis(500)),
            table: tokio::sync::Mutex::new(()),
            running: Mutex::new(HashMap::new()),
        })
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    pub(crate) fn command(&self, id: i64, cmd: Command) -> Result<(), ApiError> {
        let running = lock(&self.running);
        let r = running.get(&id).ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("deploy {id} is not running; see `gantry deploys show {id}`"),
            )
        })?;
        r.tx.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "deploy {id} has {COMMANDS} commands waiting already; try again in a moment"
                ),
            ),
            mpsc::error::TrySendError::Closed(_) => ApiError::internal("the deploy task is gone"),
        })
    }

    /// What a running deploy is held by now (a store that refuses writes,
    /// a proxy that does not answer, a set that did not stop), if anything.
    pub(crate) fn holding(&self, id: i64) -> Option<String> {
        let running = lock(&self.running);
        let hold = lock(&running.get(&id)?.hold).clone()?;
        Some(hold.describe(gantry_store::now_ms()))
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

    async fn resume(self: &Arc<Self>, rec: DeployRecord) -> Result<(), ApiError> {
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
        // A migration or hook the dead control plane was running must not
        // run on beside what the deploy does next.
        if let Some(line) = crate::shell::stop_orphan(&command_marker(self.store.dir(), rec.id)) {
            let (id, phase, at) = (rec.id, rec.phase.clone(), gantry_store::now_ms());
            db(&self.store, move |s| {
                s.add_deploy_event(id, at, &phase, &line)
            })
            .await?;
        }
        // The crashed holder was this deploy: take its lease over.
        let (a, e, act, id, ttl) = (
            rec.app.clone(),
            rec.env.clone(),
            rec.actor.clone(),
            rec.id,
            self.lease_ms(),
        );
        db(&self.store, move |s| {
            s.take_over_lease(&a, &e, id, &act, ttl, gantry_store::now_ms())
        })
        .await?;
        let job = Job {
            id: rec.id,
            app: rec.app.clone(),
            env: rec.env.clone(),
            analysis_interval: spec.analysis.interval.as_std(),
            spec,
            old_set: rec.old_set_name().filter(|_| plan.has_previous),
            plan,
            new_set: rec.new_set_name(),
            dir: crate::paths::artifact_dir(self.store.dir(), &rel.digest),
            secrets,
        };
        self.spawn(job, state, Input::Resumed);
        Ok(())
    }

    fn spawn(self: &Arc<Self>, job: Job, state: Deploy, first: Input) {
        let (tx, rx) = mpsc::channel(COMMANDS);
        let hold = Arc::new(Mutex::new(None));
        lock(&self.running).insert(
            job.id,
            Running {
                tx,
                hold: hold.clone(),
            },
        );
        let me = self.clone();
        tokio::spawn(async move {
            let id = job.id;
            Exec::new(me.clone(), job, state, rx, hold).run(first).await;
            lock(&me.running).remove(&id);
        });
    }

    /// Starts deploying `release` to `app`/`env`; returns the deploy, or,
    /// when that release already serves with that config, the deploy that
    /// put it there and a note that nothing was done.
    pub(crate) async fn start(
        self: &Arc<Self>,
        app: &str,
        env: &str,
        release: i64,
        config_version: Option<i64>,
        actor: &str,
    ) -> Result<(DeployRecord, Option<String>), ApiError> {
        let (a, e) = (app.to_string(), env.to_string());
        let (version, secrets, rel, last, lease) = db(&self.store, move |s| {
            let last = s
                .deploys(Some((&a, &e)), 50)?
                .into_iter()
                .find(|d| d.outcome.as_deref() == Some("succeeded"));
            Ok((
                config_at(s, &a, &e, config_version)?,
                s.secret_values(&a, &e)?,
                s.release(&a, release)?,
                last,
                s.lease(&a, &e)?,
            ))
        })
        .await?;
        let now = gantry_store::now_ms();
        // Refused early with the holder (the transaction below checks again).
        if let Some(l) = lease.filter(|l| l.expires_at > now) {
            return Err(busy(app, env, &l, now));
        }
        let spec = gantry_spec::parse_str(&version.file_name, &version.source)
            .and_then(|s| s.resolve(env))
            .map_err(|d| ApiError::unprocessable(format!("the applied config has errors:\n{d}")))?;
        // What serves now: the last successful deploy's set, if it runs.
        let serving = last.filter(|d| {
            !self
                .fleet
                .set_status(app, env, &d.new_set_name())
                .is_empty()
        });
        if let Some(s) = &serving
            && s.release == release
            && s.config_version == Some(version.version)
        {
            let note = format!(
                "release {release} already serves {app}/{env} with config version {} (deploy {}); nothing to deploy. `gantry restart --env {env}` restarts its instances; a changed config (`gantry config apply`) deploys as a new set",
                version.version, s.id
            );
            return Ok((s.clone(), Some(note)));
        }
        let old_set = serving.as_ref().map(DeployRecord::new_set_name);
        let previous = serving.as_ref().map(|d| d.release);
        let plan = plan_for(&spec, old_set.is_some());
        self.check_route(app, env, &spec).await?;
        // Set names the new set must not take: every set that runs here.
        let mut taken: Vec<String> = self
            .fleet
            .list(Some((app, env)))
            .into_iter()
            .map(|i| i.set)
            .collect();
        taken.extend(old_set.clone());
        let state = Deploy::new(now);
        let (plan_json, state_json) = (
            serde_json::to_string(&plan).map_err(|e| ApiError::internal(e.to_string()))?,
            serde_json::to_string(&state).map_err(|e| ApiError::internal(e.to_string()))?,
        );
        let (a, e, act, ttl) = (
            app.to_string(),
            env.to_string(),
            actor.to_string(),
            self.lease_ms(),
        );
        let config_number = version.version;
        let old = old_set.clone();
        let begun = db(&self.store, move |s| {
            s.begin_deploy(
                &NewDeploy {
                    app: &a,
                    env: &e,
                    release,
                    previous_release: previous,
                    config_version: config_number,
                    actor: &act,
                    plan: &plan_json,
                    state: &state_json,
                    phase: "pending",
                    taken: &taken,
                    old_set: old.as_deref(),
                },
                ttl,
                gantry_store::now_ms(),
            )
        })
        .await?;
        let rec = match begun {
            Ok(rec) => rec,
            Err(held) => return Err(busy(app, env, &held, gantry_store::now_ms())),
        };
        let job = Job {
            id: rec.id,
            app: app.into(),
            env: env.into(),
            analysis_interval: spec.analysis.interval.as_std(),
            spec,
            plan,
            new_set: rec.new_set_name(),
            old_set,
            dir: crate::paths::artifact_dir(self.store.dir(), &rel.digest),
            secrets,
        };
        self.spawn(job, state, Input::Begin);
        Ok((rec, None))
    }

    /// Before a deploy starts: the proxy answers, and the environment's
    /// route fits in its table (no host another route already serves).
    async fn check_route(&self, app: &str, env: &str, spec: &AppSpec) -> Result<(), ApiError> {
        let mut table = self.proxy.table().await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the edge proxy does not answer on {} ({}); start it with `gantry proxy`",
                    self.proxy.socket().display(),
                    crate::error::chain(&e)
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
}

/// The weight `set` has in route `route` of `table`: `None` when the route
/// does not send to it at all (no route, no such set, or weight 0).
pub(crate) fn weight_in(table: &Table, route: &str, set: &str) -> Option<u32> {
    table
        .routes
        .iter()
        .find(|r| r.id == route)?
        .sets
        .iter()
        .find(|s| s.name == set)
        .map(|s| s.weight)
        .filter(|w| *w > 0)
}

/// Keeps a deploy's lease, renewed every quarter of its length on a task of
/// its own, so long work (a migration, a hook, a readiness wait) never lets
/// it lapse. Says on `lost` when another deploy holds it.
fn keep_lease<P: Plant>(
    plant: Arc<P>,
    job: &Job,
) -> (watch::Receiver<Option<String>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let (app, env, id) = (job.app.clone(), job.env.clone(), job.id);
    let ttl = plant.lease();
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let every = (ttl / 4).max(Duration::from_millis(100));
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match plant.renew_lease(&app, &env, id, ttl_ms).await {
                Ok(()) => {}
                Err(Renewal::Lost(why)) => {
                    let _ = tx.send(Some(why));
                    return;
                }
                // The store refuses writes (a full disk): the lease stays
                // this deploy's until another takes it, which needs the same
                // store; keep trying.
                Err(Renewal::Failed(why)) => {
                    tracing::warn!(deploy = id, error = %why, "cannot renew the deploy lease")
                }
            }
        }
    });
    (rx, task)
}

/// The gate inputs of one set from the proxy's stats: counters and p99.
fn set_metrics(stats: &gantry_proxy::StatsSnapshot, route: &str, set: &str) -> Option<SetMetrics> {
    stats.set(route, set).map(gate_metrics)
}

/// Requests by class and p99, as the gates read them. Requests a client
/// broke are not in these classes (the proxy counts them apart). Odd
/// values in the answer (a negative or enormous p99) read as no p99.
fn gate_metrics(s: &gantry_proxy::SetStatsSnapshot) -> SetMetrics {
    let c = &s.requests;
    SetMetrics {
        requests: c
            .c1xx
            .saturating_add(c.c2xx)
            .saturating_add(c.c3xx)
            .saturating_add(c.c4xx)
            .saturating_add(c.c5xx),
        status_5xx: c.c5xx,
        status_ok: c.c1xx.saturating_add(c.c2xx).saturating_add(c.c3xx),
        p99: s
            .latency_ms
            .p99
            .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok()),
    }
}

fn delta(now: SetMetrics, base: SetMetrics) -> SetMetrics {
    SetMetrics {
        requests: now.requests.saturating_sub(base.requests),
        status_5xx: now.status_5xx.saturating_sub(base.status_5xx),
        status_ok: now.status_ok.saturating_sub(base.status_ok),
        p99: now.p99,
    }
}

/// Why a lease could not be renewed.
enum Renewal {
    /// Another deploy holds it (or nobody does): stop acting.
    Lost(String),
    /// The store failed; the lease is still this deploy's unless taken.
    Failed(String),
}

/// Everything the executor does to the world (the store, the proxy, the
/// fleet, commands, the clock) behind one trait, so its decisions are
/// unit-tested against a fake (see the tests below). [`Deployer`] is the
/// real one.
trait Plant: Send + Sync + 'static {
    /// Wall-clock milliseconds (the machine's time).
    fn now_ms(&self) -> i64;
    fn lease(&self) -> Duration;
    fn proxy_addr(&self) -> Option<std::net::SocketAddr>;
    /// Stores a deploy's state and timeline lines in one transaction.
    fn save(
        &self,
        id: i64,
        state: String,
        phase: String,
        outcome: Option<String>,
        lines: Vec<(i64, String)>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Appends a timeline line, best effort.
    fn note(
        &self,
        id: i64,
        at: i64,
        phase: String,
        line: String,
    ) -> impl Future<Output = ()> + Send;
    fn renew_lease(
        &self,
        app: &str,
        env: &str,
        id: i64,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<(), Renewal>> + Send;
    /// The proxy's served table.
    fn table(&self) -> impl Future<Output = Result<Table, AdminClientError>> + Send;
    /// One read-modify-write of the proxy's table (one at a time).
    fn update_table<F: FnOnce(&mut Table) + Send>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<(), AdminClientError>> + Send;
    fn stats(
        &self,
    ) -> impl Future<Output = Result<gantry_proxy::StatsSnapshot, AdminClientError>> + Send;
    /// Whether `set` of `route` has nothing in flight and takes no traffic.
    fn drained(
        &self,
        route: &str,
        set: &str,
    ) -> impl Future<Output = Result<bool, AdminClientError>> + Send;
    fn set_status(
        &self,
        app: &str,
        env: &str,
        set: &str,
    ) -> Vec<(u16, gantry_runtime::InstanceStatus)>;
    fn start_set(&self, job: &Job) -> impl Future<Output = Result<(), String>> + Send;
    /// `Ok(0)`: nothing of it ran; `Err`: not (all) stopped.
    fn stop_set(
        &self,
        app: &str,
        env: &str,
        set: &str,
    ) -> impl Future<Output = Result<usize, String>> + Send;
    /// A migration or hook: whether it succeeded, and its summary.
    fn run_command(
        &self,
        job: &Job,
        cmd: &str,
        timeout: Duration,
    ) -> impl Future<Output = (bool, String)> + Send;
}

impl Plant for Deployer {
    fn now_ms(&self) -> i64 {
        gantry_store::now_ms()
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    fn proxy_addr(&self) -> Option<std::net::SocketAddr> {
        self.proxy_addr
    }

    async fn save(
        &self,
        id: i64,
        state: String,
        phase: String,
        outcome: Option<String>,
        lines: Vec<(i64, String)>,
    ) -> Result<(), String> {
        db(&self.store, move |s| {
            s.save_deploy(id, &state, &phase, outcome.as_deref(), &lines)
        })
        .await
        .map_err(|e| e.message)
    }

    async fn note(&self, id: i64, at: i64, phase: String, line: String) {
        let _ = db(&self.store, move |s| {
            s.add_deploy_event(id, at, &phase, &line)
        })
        .await;
    }

    async fn renew_lease(&self, app: &str, env: &str, id: i64, ttl_ms: i64) -> Result<(), Renewal> {
        let (a, e) = (app.to_string(), env.to_string());
        db(&self.store, move |s| {
            s.renew_lease(&a, &e, id, ttl_ms, gantry_store::now_ms())
        })
        .await
        .map_err(|e| {
            if e.status == StatusCode::CONFLICT {
                Renewal::Lost(e.message)
            } else {
                Renewal::Failed(e.message)
            }
        })
    }

    async fn table(&self) -> Result<Table, AdminClientError> {
        self.proxy.table().await
    }

    async fn update_table<F: FnOnce(&mut Table) + Send>(
        &self,
        f: F,
    ) -> Result<(), AdminClientError> {
        let _one = self.table.lock().await;
        let mut table = self.proxy.table().await?;
        f(&mut table);
        table.version += 1;
        self.proxy.set_table(&table).await
    }

    async fn stats(&self) -> Result<gantry_proxy::StatsSnapshot, AdminClientError> {
        self.proxy.stats().await
    }

    async fn drained(&self, route: &str, set: &str) -> Result<bool, AdminClientError> {
        self.proxy.drained(route, set).await.map(|s| s.drained)
    }

    fn set_status(
        &self,
        app: &str,
        env: &str,
        set: &str,
    ) -> Vec<(u16, gantry_runtime::InstanceStatus)> {
        self.fleet.set_status(app, env, set)
    }

    async fn start_set(&self, job: &Job) -> Result<(), String> {
        self.fleet
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
            .map(|_| ())
            .map_err(|e| e.message)
    }

    async fn stop_set(&self, app: &str, env: &str, set: &str) -> Result<usize, String> {
        match self.fleet.stop_set(app, env, Some(set)).await {
            Ok(n) => Ok(n),
            // Nothing of it runs (stopped already, e.g. a repeat after a
            // crash): stopping is idempotent.
            Err(e) if e.status == StatusCode::NOT_FOUND => Ok(0),
            Err(e) => Err(e.message),
        }
    }

    async fn run_command(&self, job: &Job, cmd: &str, timeout: Duration) -> (bool, String) {
        Deployer::run_command(self, job, cmd, timeout).await
    }
}

/// One deploy's run: the machine, the actions of stored transitions still
/// to carry out, and what the gates measure.
struct Exec<P: Plant> {
    plant: Arc<P>,
    job: Job,
    d: Deploy,
    rx: mpsc::Receiver<Command>,
    hold: Arc<Mutex<Option<Hold>>>,
    /// Inputs for the machine, in order.
    queue: VecDeque<Input>,
    /// Actions of stored transitions, not carried out yet.
    pending: VecDeque<Action>,
    /// A transition computed but not stored yet: its timeline lines.
    unsaved: Option<Vec<(i64, String)>>,
    /// The state last stored.
    saved: String,
    backoff: Duration,
    /// Counters at the last weight change (gates judge the change since).
    baseline: Option<SetMetrics>,
    baseline_old: Option<SetMetrics>,
    /// The old set before the switch: from the deploy's first reading, and
    /// the latest; what blue-green's warm window compares with, as the old
    /// set then takes no requests.
    old_first: Option<SetMetrics>,
    old_latest: Option<SetMetrics>,
    last_metrics: tokio::time::Instant,
    draining: bool,
}

impl<P: Plant> Exec<P> {
    fn new(
        plant: Arc<P>,
        job: Job,
        d: Deploy,
        rx: mpsc::Receiver<Command>,
        hold: Arc<Mutex<Option<Hold>>>,
    ) -> Self {
        let saved = serde_json::to_string(&d).unwrap_or_default();
        let draining = d.phase == Phase::Drain;
        Self {
            plant,
            job,
            d,
            rx,
            hold,
            queue: VecDeque::new(),
            pending: VecDeque::new(),
            unsaved: None,
            saved,
            backoff: BACKOFF_FIRST,
            baseline: None,
            baseline_old: None,
            old_first: None,
            old_latest: None,
            last_metrics: tokio::time::Instant::now(),
            draining,
        }
    }

    async fn run(mut self, first: Input) {
        let (mut lost, keeper) = keep_lease(self.plant.clone(), &self.job);
        self.queue.push_back(first);
        loop {
            let why = lost.borrow_and_update().clone();
            if let Some(why) = why {
                // Stop acting: nothing pending runs, the machine ends.
                self.pending.clear();
                self.queue.clear();
                tracing::error!(deploy = self.job.id, "{why}");
                self.transition(Input::LeaseLost { detail: why });
                lost = watch::channel(None).1;
            }
            if let Some(logs) = self.unsaved.take() {
                if let Err(cause) = self.save(&logs).await {
                    self.unsaved = Some(logs);
                    self.wait(format!("cannot store the deploy's state: {cause}"))
                        .await;
                    continue;
                }
                self.resolved().await;
            }
            if let Some(action) = self.pending.front().cloned() {
                match self.act(action).await {
                    Done::Then(next) => {
                        self.pending.pop_front();
                        self.resolved().await;
                        self.queue.extend(next);
                    }
                    Done::Retry(cause) => self.wait(cause).await,
                }
                continue;
            }
            if self.d.is_done() {
                break;
            }
            let input = match self.queue.pop_front() {
                Some(i) => i,
                None => self.next_input().await,
            };
            self.transition(input);
        }
        keeper.abort();
    }

    /// Feeds the machine one input; its actions wait until it is stored.
    fn transition(&mut self, input: Input) {
        let now = self.plant.now_ms();
        let phase = self.d.phase;
        let actions = self.d.handle(&self.job.plan, input, now);
        let mut logs = Vec::new();
        let mut work = Vec::new();
        for a in actions {
            match a {
                Action::Log(m) => logs.push((now, m)),
                a => work.push(a),
            }
        }
        // A command taken during a hold moves the machine on: what was
        // pending belonged to the phase it left (a retried weight change a
        // rollback replaces), so the new decision replaces it.
        let mut earlier = self.unsaved.take().unwrap_or_default();
        if !work.is_empty() && self.d.phase != phase && !self.pending.is_empty() {
            let what = if earlier.is_empty() {
                format!("{} pending action(s)", self.pending.len())
            } else {
                earlier
                    .drain(..)
                    .map(|(_, m)| m)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            logs.insert(
                0,
                (
                    now,
                    format!(
                        "not carried out, replaced by the next decision ({} phase): {what}",
                        phase_name(phase)
                    ),
                ),
            );
            self.pending.clear();
        }
        self.pending.extend(work);
        let state = serde_json::to_string(&self.d).unwrap_or_default();
        earlier.extend(logs);
        if state != self.saved || !earlier.is_empty() {
            self.unsaved = Some(earlier);
        }
    }

    /// Stores the machine's state and `logs` in one transaction.
    async fn save(&mut self, logs: &[(i64, String)]) -> Result<(), String> {
        let state = serde_json::to_string(&self.d).map_err(|e| e.to_string())?;
        let phase = phase_name(self.d.phase);
        let outcome = self
            .d
            .outcome
            .and_then(|o| serde_json::to_value(o).ok())
            .and_then(|v| v.as_str().map(str::to_string));
        self.plant
            .save(self.job.id, state.clone(), phase, outcome, logs.to_vec())
            .await?;
        self.saved = state;
        Ok(())
    }

    /// After a hold: clears it and notes in the timeline how long it lasted.
    async fn resolved(&mut self) {
        self.backoff = BACKOFF_FIRST;
        let Some(h) = lock(&self.hold).take() else {
            return;
        };
        let now = self.plant.now_ms();
        let line = format!(
            "held {} s ({} attempts): {}; carried on",
            now.saturating_sub(h.since) / 1000,
            h.attempts,
            h.cause
        );
        tracing::info!(deploy = self.job.id, "{line}");
        self.plant
            .note(self.job.id, now, phase_name(self.d.phase), line)
            .await;
    }

    /// Holds for a backoff with `cause` shown; a command that comes in
    /// meanwhile goes to the machine (so `gantry abort` works on a held
    /// deploy).
    async fn wait(&mut self, cause: String) {
        {
            let mut h = lock(&self.hold);
            match h.as_mut() {
                Some(h) => {
                    h.attempts += 1;
                    h.cause = cause;
                }
                None => {
                    tracing::warn!(deploy = self.job.id, "holding: {cause}");
                    *h = Some(Hold {
                        since: self.plant.now_ms(),
                        cause,
                        attempts: 1,
                    });
                }
            }
        }
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            Some(cmd) = self.rx.recv() => {
                let input = command_input(cmd);
                self.transition(input);
            }
            _ = tokio::time::sleep(pause) => {}
        }
    }

    /// The next input when none is queued: a command, or after a tick what
    /// the fleet and the proxy say, then the tick itself.
    async fn next_input(&mut self) -> Input {
        tokio::select! {
            Some(cmd) = self.rx.recv() => command_input(cmd),
            _ = tokio::time::sleep(TICK) => {
                self.observe().await;
                // The clock advances every tick, whatever else came in
                // (metrics every tick must not starve a step's or a warm
                // window's end).
                self.queue.push_back(Input::Tick);
                self.queue.pop_front().unwrap_or(Input::Tick)
            }
        }
    }

    /// Between inputs: readiness of new instances, drain status, metrics.
    async fn observe(&mut self) {
        let job = &self.job;
        match self.d.phase {
            Phase::Start => {
                let st = self.plant.set_status(&job.app, &job.env, &job.new_set);
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
                    self.queue.push_back(Input::StartFailed { detail: bad });
                } else if !st.is_empty() && st.iter().all(|(_, s)| s.ready) {
                    self.queue.push_back(Input::Ready);
                }
                self.observe_old_before_switch().await;
            }
            Phase::SmokeDirect => self.observe_old_before_switch().await,
            Phase::Drain if self.draining => {
                if let Some(old) = &job.old_set {
                    if self
                        .plant
                        .drained(&job.route_id(), old)
                        .await
                        .unwrap_or(false)
                    {
                        self.queue.push_back(Input::Drained);
                    }
                } else {
                    self.queue.push_back(Input::Drained);
                }
            }
            Phase::Analyze | Phase::AwaitApproval | Phase::Warm => {
                let route = job.route_id();
                let Ok(stats) = self.plant.stats().await else {
                    return;
                };
                let now_new = set_metrics(&stats, &route, &job.new_set).unwrap_or_default();
                let now_old = job
                    .old_set
                    .as_deref()
                    .and_then(|o| set_metrics(&stats, &route, o));
                let base = *self.baseline.get_or_insert(now_new);
                let base_old = *self.baseline_old.get_or_insert(now_old.unwrap_or_default());
                let new = delta(now_new, base);
                // A stable set that serves is measured even before the
                // proxy counted a request of it (the gates then wait).
                let mut old = job
                    .old_set
                    .as_ref()
                    .map(|_| delta(now_old.unwrap_or_default(), base_old));
                // The warm window sends the old set nothing: compare with
                // what it served just before the switch, or, with no such
                // reading (resumed after a restart), on absolute limits.
                if self.d.phase == Phase::Warm
                    && old.is_none_or(|o| o.requests < job.plan.gates.min_requests)
                {
                    old = match (self.old_first, self.old_latest) {
                        (Some(first), Some(latest)) => Some(delta(latest, first)),
                        _ => None,
                    };
                }
                // Judge early when errors pile up; otherwise every interval.
                let due = self.last_metrics.elapsed() >= job.analysis_interval
                    || (new.requests >= job.plan.gates.min_requests && new.status_5xx > 0);
                if due {
                    self.last_metrics = tokio::time::Instant::now();
                    self.queue.push_back(Input::Metrics { new, old });
                }
            }
            _ => {}
        }
    }

    /// Reads the old set while it still takes all traffic (blue-green's
    /// reference for the warm window).
    async fn observe_old_before_switch(&mut self) {
        let Some(old) = self.job.old_set.clone() else {
            return;
        };
        if !matches!(self.job.plan.strategy, Strategy::BlueGreen { .. }) {
            return;
        }
        if let Ok(stats) = self.plant.stats().await
            && let Some(m) = set_metrics(&stats, &self.job.route_id(), &old)
        {
            self.old_first.get_or_insert(m);
            self.old_latest = Some(m);
        }
    }

    /// Carries out one action of a stored transition.
    async fn act(&mut self, action: Action) -> Done {
        let job = &self.job;
        match action {
            Action::Log(_) => Done::Then(None),
            Action::Notify { failure, message } => {
                if failure {
                    tracing::warn!(deploy = job.id, "{message}");
                } else {
                    tracing::info!(deploy = job.id, "{message}");
                }
                Done::Then(None)
            }
            Action::Build => Done::Then(Some(Input::Built {
                ok: true,
                detail: "prebuilt release".into(),
            })),
            Action::RunPreHook | Action::RunPostHook => {
                let cmd = if matches!(action, Action::RunPreHook) {
                    job.spec.deploy.hooks.pre_deploy.clone()
                } else {
                    job.spec.deploy.hooks.post_deploy.clone()
                };
                let (ok, detail) = self
                    .plant
                    .run_command(
                        job,
                        cmd.as_deref().unwrap_or("true"),
                        Duration::from_secs(600),
                    )
                    .await;
                Done::Then(Some(Input::HookDone { ok, detail }))
            }
            Action::Migrate => {
                let cmd = job
                    .spec
                    .migrate
                    .command
                    .clone()
                    .unwrap_or_else(|| "true".into());
                let (ok, detail) = self
                    .plant
                    .run_command(job, &cmd, job.spec.migrate.timeout.as_std())
                    .await;
                Done::Then(Some(Input::Migrated { ok, detail }))
            }
            Action::MigrateRollback => {
                let cmd = job
                    .spec
                    .migrate
                    .rollback
                    .clone()
                    .unwrap_or_else(|| "true".into());
                let (ok, detail) = self
                    .plant
                    .run_command(job, &cmd, job.spec.migrate.timeout.as_std())
                    .await;
                Done::Then(Some(Input::MigrationRolledBack { ok, detail }))
            }
            Action::StartNew => match self.plant.start_set(job).await {
                Ok(()) => Done::Then(None),
                Err(detail) => Done::Then(Some(Input::StartFailed { detail })),
            },
            Action::SmokeLive if self.plant.proxy_addr().is_some() => {
                // After the switch, through the proxy, as users reach it.
                let port = self.plant.proxy_addr().map_or(0, |a| a.port());
                let route = route_for(&job.app, &job.env, &job.spec, Vec::new());
                let host = route.hosts.first().cloned();
                let (ok, detail) = smoke(&job.spec.deploy.smoke, &[port], host.as_deref()).await;
                Done::Then(Some(Input::Smoke { ok, detail }))
            }
            Action::SmokeDirect | Action::SmokeLive => {
                let ports: Vec<u16> = self
                    .plant
                    .set_status(&job.app, &job.env, &job.new_set)
                    .iter()
                    .map(|(p, _)| *p)
                    .collect();
                let (ok, detail) = smoke(&job.spec.deploy.smoke, &ports, None).await;
                Done::Then(Some(Input::Smoke { ok, detail }))
            }
            Action::SetWeight { new } => self.set_weight(new).await,
            Action::DrainOld => {
                match self.route(&[(job.new_set.clone(), 100)]).await {
                    Ok(()) => {
                        self.draining = true;
                        Done::Then(None)
                    }
                    Err(e) if transient(&e) => Done::Retry(format!(
                        "cannot move the last traffic off the old set: {}",
                        crate::error::chain(&e)
                    )),
                    // A refusal that repeating will not change; the old set
                    // is still stopped only once the proxy sends it nothing.
                    Err(e) => {
                        tracing::error!(deploy = job.id, error = %crate::error::chain(&e), "cannot set the route");
                        self.draining = true;
                        Done::Then(None)
                    }
                }
            }
            Action::StopOld => match job.old_set.clone() {
                Some(old) => self.stop(&old).await,
                None => Done::Then(Some(Input::Stopped)),
            },
            Action::StopNew => {
                let new = job.new_set.clone();
                self.stop(&new).await
            }
        }
    }

    async fn set_weight(&mut self, new: u8) -> Done {
        let job = &self.job;
        let decided = self.plant.now_ms();
        match self.route(&weights(job, new)).await {
            Ok(()) => {
                self.baseline = None;
                self.baseline_old = None;
                // After the fact, so it never delays the switch.
                let at = self.plant.now_ms();
                let split = match &job.old_set {
                    Some(old) if new < 100 => {
                        format!("{new} % to {}, {} % to {old}", job.new_set, 100 - new)
                    }
                    _ if new == 0 => format!("nothing to {}", job.new_set),
                    _ => format!("all to {}", job.new_set),
                };
                let line = format!(
                    "traffic: {split} (the proxy applied it {} ms after the decision was stored)",
                    at - decided
                );
                self.plant
                    .note(job.id, at, phase_name(self.d.phase), line)
                    .await;
                Done::Then(None)
            }
            Err(e) if transient(&e) => Done::Retry(format!(
                "the proxy did not take the route change to {new} %: {}",
                crate::error::chain(&e)
            )),
            // The machine rolls back from any phase with traffic.
            Err(e) => {
                tracing::error!(deploy = job.id, error = %crate::error::chain(&e), "cannot set the route");
                Done::Then(Some(Input::StartFailed {
                    detail: format!(
                        "the proxy refused the route change: {}",
                        crate::error::chain(&e)
                    ),
                }))
            }
        }
    }

    /// Stops `set`, only once the proxy's served table sends it nothing
    /// (the invariant); a stop that left instances behind is retried, never
    /// reported as done.
    async fn stop(&mut self, set: &str) -> Done {
        let job = &self.job;
        let route = job.route_id();
        let table = match self.plant.table().await {
            Ok(t) => t,
            Err(e) => {
                return Done::Retry(format!(
                    "cannot confirm with the proxy that {set} takes no traffic ({}); not stopping it",
                    crate::error::chain(&e)
                ));
            }
        };
        if let Some(w) = weight_in(&table, &route, set) {
            // Take it out of the route first; stop only once confirmed.
            let rest = weights(job, self.d.weight)
                .into_iter()
                .filter(|(name, _)| name != set)
                .collect::<Vec<_>>();
            let fix = if rest.iter().any(|(_, w)| *w > 0) {
                self.route(&rest).await
            } else {
                self.remove_route().await
            };
            return Done::Retry(match fix {
                Ok(()) => format!(
                    "the proxy still sent {w} % of {route} to {set}; the route was rewritten without it, not stopping it until the proxy confirms"
                ),
                Err(e) => format!(
                    "the proxy still sends {w} % of {route} to {set} and did not take the route without it ({}); not stopping it",
                    crate::error::chain(&e)
                ),
            });
        }
        match self.plant.stop_set(&job.app, &job.env, set).await {
            Ok(_) => Done::Then(Some(Input::Stopped)),
            Err(e) => Done::Retry(format!("stopping {set} failed: {e}")),
        }
    }

    /// Sets the job's route to `sets` (name, weight) with the instances the
    /// fleet has for them, in one read-modify-write of the table.
    async fn route(&self, sets: &[(String, u32)]) -> Result<(), AdminClientError> {
        let job = &self.job;
        let backends: Vec<BackendSet> = sets
            .iter()
            .map(|(name, weight)| BackendSet {
                name: name.clone(),
                weight: *weight,
                instances: self
                    .plant
                    .set_status(&job.app, &job.env, name)
                    .iter()
                    .map(|(p, _)| format!("127.0.0.1:{p}"))
                    .collect(),
            })
            .collect();
        let route = route_for(&job.app, &job.env, &job.spec, backends);
        self.plant
            .update_table(move |t| {
                t.routes.retain(|r| r.id != route.id);
                t.routes.push(route);
            })
            .await
    }

    /// Takes the job's route out of the proxy's table (a first deploy that
    /// rolls back leaves the host as it found it: unrouted).
    async fn remove_route(&self) -> Result<(), AdminClientError> {
        let id = self.job.route_id();
        self.plant
            .update_table(move |t| t.routes.retain(|r| r.id != id))
            .await
    }
}

fn command_input(cmd: Command) -> Input {
    match cmd {
        Command::Approve(by) => Input::Approve { by },
        Command::Abort(by) => Input::Abort { by },
    }
}

fn phase_name(p: Phase) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The route's sets and weights with `new` % on the new set: the old set
/// takes the rest; a set at weight 0 leaves the route (a first deploy's new
/// set is all there is).
fn weights(job: &Job, new: u8) -> Vec<(String, u32)> {
    let mut sets = Vec::new();
    if let Some(old) = &job.old_set {
        sets.push((old.clone(), 100 - u32::from(new.min(100))));
    }
    if new > 0 || job.old_set.is_none() {
        sets.push((
            job.new_set.clone(),
            if job.old_set.is_none() {
                100
            } else {
                u32::from(new.min(100))
            },
        ));
    }
    sets
}

impl Deployer {
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
        let release = |set: &str| {
            set.trim_start_matches('r')
                .split('-')
                .next()
                .unwrap_or_default()
                .to_string()
        };
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
            csp_mode: match h.csp_mode {
                model::CspMode::Enforce => gantry_proxy::CspMode::Enforce,
                model::CspMode::ReportOnly => gantry_proxy::CspMode::ReportOnly,
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(p99: Option<f64>, counts: [u64; 5]) -> gantry_proxy::SetStatsSnapshot {
        gantry_proxy::SetStatsSnapshot {
            route: "a/b".into(),
            set: "r1".into(),
            in_table: true,
            weight: Some(100),
            in_flight: 0,
            requests: gantry_proxy::ClassCounts {
                c1xx: counts[0],
                c2xx: counts[1],
                c3xx: counts[2],
                c4xx: counts[3],
                c5xx: counts[4],
            },
            recent: Default::default(),
            client_errors: Default::default(),
            latency_ms: gantry_proxy::LatencySummary {
                count: 1,
                p50: None,
                p90: None,
                p99,
            },
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    #[test]
    fn odd_latencies_from_the_proxy_read_as_no_p99_and_counts_never_overflow() {
        for odd in [-1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300] {
            let m = gate_metrics(&snapshot(Some(odd), [0, 1, 0, 0, 0]));
            assert_eq!(m.p99, None, "{odd}");
        }
        let m = gate_metrics(&snapshot(Some(12.5), [u64::MAX, 1, 0, 3, 2]));
        assert_eq!(m.p99, Some(Duration::from_micros(12_500)));
        assert_eq!(
            (m.requests, m.status_5xx, m.status_ok),
            (u64::MAX, 2, u64::MAX)
        );
    }

    fn spec() -> AppSpec {
        gantry_spec::parse_str(
            "gantry.toml",
            "[app]\nname = \"hello\"\n[run]\ncommand = \"./hello\"\n",
        )
        .and_then(|s| s.resolve("prod"))
        .expect("a minimal spec")
    }

    fn table(sets: &[(&str, u32)]) -> Table {
        Table {
            version: 1,
            routes: vec![Route {
                sets: sets
                    .iter()
                    .map(|(n, w)| BackendSet {
                        name: (*n).into(),
                        weight: *w,
                        instances: vec!["127.0.0.1:9".into()],
                    })
                    .collect(),
                ..route_for("hello", "prod", &spec(), Vec::new())
            }],
        }
    }

    #[test]
    fn a_set_carries_traffic_only_with_a_weight_in_its_own_route() {
        let t = table(&[("r1", 70), ("r2", 30)]);
        assert_eq!(weight_in(&t, "hello/prod", "r2"), Some(30));
        assert_eq!(
            weight_in(&table(&[("r1", 100), ("r2", 0)]), "hello/prod", "r2"),
            None
        );
        assert_eq!(weight_in(&t, "hello/prod", "r3"), None, "not in the route");
        assert_eq!(weight_in(&t, "hello/staging", "r2"), None, "another route");
        assert_eq!(weight_in(&Table::default(), "hello/prod", "r1"), None);
    }

    // === The executor against a fake world ===

    use std::collections::BTreeMap as Map;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A fake proxy, fleet and store, in memory, recording what was done in
    /// order. The proxy serves `table`; each `stats` call counts 50 requests
    /// for every set with weight in it (5xx for the `bad` ones).
    struct Fake {
        start: tokio::time::Instant,
        table: Mutex<Table>,
        sets: Mutex<Map<String, Vec<u16>>>,
        traffic: Mutex<Map<String, (u64, u64)>>,
        bad: Mutex<Vec<String>>,
        log: Mutex<Vec<String>>,
        /// The store refuses writes.
        full: AtomicBool,
        /// The proxy does not answer.
        down: AtomicBool,
        /// The proxy refuses tables (a 400).
        refuse: AtomicBool,
        /// The proxy keeps sending this set this weight, whatever it is told.
        stale: Mutex<Option<(String, u32)>>,
        lost: Mutex<Option<String>>,
    }

    impl Fake {
        fn new(sets: &[(&str, u32)]) -> Arc<Self> {
            Arc::new(Self {
                start: tokio::time::Instant::now(),
                table: Mutex::new(table(sets)),
                sets: Mutex::new(
                    sets.iter()
                        .enumerate()
                        .map(|(i, (n, _))| ((*n).to_string(), vec![30000 + i as u16]))
                        .collect(),
                ),
                traffic: Mutex::new(Map::new()),
                bad: Mutex::new(Vec::new()),
                log: Mutex::new(Vec::new()),
                full: AtomicBool::new(false),
                down: AtomicBool::new(false),
                refuse: AtomicBool::new(false),
                stale: Mutex::new(None),
                lost: Mutex::new(None),
            })
        }
        fn log(&self, line: String) {
            lock(&self.log).push(line);
        }
        fn logged(&self) -> Vec<String> {
            lock(&self.log).clone()
        }
        fn down_error() -> AdminClientError {
            AdminClientError::Transport {
                reason: "the fake proxy is down".into(),
            }
        }
        fn weights(&self) -> String {
            let t = lock(&self.table);
            t.routes
                .iter()
                .flat_map(|r| r.sets.iter().map(|s| format!("{}={}", s.name, s.weight)))
                .collect::<Vec<_>>()
                .join(",")
        }
    }

    fn status(port: u16) -> gantry_runtime::InstanceStatus {
        gantry_runtime::InstanceStatus {
            id: format!("i{port}"),
            phase: gantry_runtime::Phase::Running,
            ready: true,
            pid: Some(1),
            port,
            started_at_ms: Some(0),
            restarts: 0,
            last_exit: None,
            last_probe: None,
            not_ready: None,
            cpu_percent: None,
            rss_bytes: None,
            limits: None,
            shim: None,
            output_tail: Vec::new(),
        }
    }

    impl Plant for Fake {
        fn now_ms(&self) -> i64 {
            1_000_000 + self.start.elapsed().as_millis() as i64
        }
        fn lease(&self) -> Duration {
            Duration::from_secs(4)
        }
        fn proxy_addr(&self) -> Option<std::net::SocketAddr> {
            None
        }
        async fn save(
            &self,
            _id: i64,
            _state: String,
            phase: String,
            _outcome: Option<String>,
            _lines: Vec<(i64, String)>,
        ) -> Result<(), String> {
            if self.full.load(Ordering::SeqCst) {
                return Err("database or disk is full".into());
            }
            self.log(format!("saved {phase}"));
            Ok(())
        }
        async fn note(&self, _id: i64, _at: i64, _phase: String, line: String) {
            if !self.full.load(Ordering::SeqCst) {
                self.log(format!("note {line}"));
            }
        }
        async fn renew_lease(&self, _: &str, _: &str, _: i64, _: i64) -> Result<(), Renewal> {
            match lock(&self.lost).clone() {
                Some(why) => Err(Renewal::Lost(why)),
                None => Ok(()),
            }
        }
        async fn table(&self) -> Result<Table, AdminClientError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(Self::down_error());
            }
            Ok(lock(&self.table).clone())
        }
        async fn update_table<F: FnOnce(&mut Table) + Send>(
            &self,
            f: F,
        ) -> Result<(), AdminClientError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(Self::down_error());
            }
            if self.refuse.load(Ordering::SeqCst) {
                return Err(AdminClientError::Api {
                    status: 400,
                    message: "refused".into(),
                });
            }
            {
                let mut t = lock(&self.table);
                f(&mut t);
                if let Some((set, w)) = lock(&self.stale).clone()
                    && let Some(r) = t.routes.first_mut()
                {
                    r.sets.retain(|s| s.name != set);
                    r.sets.push(BackendSet {
                        name: set,
                        weight: w,
                        instances: vec!["127.0.0.1:9".into()],
                    });
                }
            }
            self.log(format!("table {}", self.weights()));
            Ok(())
        }
        async fn stats(&self) -> Result<gantry_proxy::StatsSnapshot, AdminClientError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(Self::down_error());
            }
            let live: Vec<String> = lock(&self.table)
                .routes
                .iter()
                .flat_map(|r| {
                    r.sets
                        .iter()
                        .filter(|s| s.weight > 0)
                        .map(|s| s.name.clone())
                })
                .collect();
            let bad = lock(&self.bad).clone();
            let mut traffic = lock(&self.traffic);
            for set in live {
                let t = traffic.entry(set.clone()).or_default();
                if bad.contains(&set) {
                    t.1 += 50;
                } else {
                    t.0 += 50;
                }
            }
            Ok(gantry_proxy::StatsSnapshot {
                window_secs: 60,
                unrouted_requests: 0,
                maintenance_responses: 0,
                bad_requests: 0,
                sets: traffic
                    .iter()
                    .map(|(set, (ok, bad))| {
                        let mut s = snapshot(Some(10.0), [0, *ok, 0, 0, *bad]);
                        s.route = "hello/prod".into();
                        s.set = set.clone();
                        s
                    })
                    .collect(),
                instances: Vec::new(),
            })
        }
        async fn drained(&self, _route: &str, set: &str) -> Result<bool, AdminClientError> {
            Ok(weight_in(&self.table().await?, "hello/prod", set).is_none())
        }
        fn set_status(
            &self,
            _app: &str,
            _env: &str,
            set: &str,
        ) -> Vec<(u16, gantry_runtime::InstanceStatus)> {
            lock(&self.sets)
                .get(set)
                .map(|ports| ports.iter().map(|p| (*p, status(*p))).collect())
                .unwrap_or_default()
        }
        async fn start_set(&self, job: &Job) -> Result<(), String> {
            lock(&self.sets).insert(job.new_set.clone(), vec![31000, 31001]);
            self.log(format!("start {}", job.new_set));
            Ok(())
        }
        async fn stop_set(&self, _app: &str, _env: &str, set: &str) -> Result<usize, String> {
            // What the invariant forbids, seen from the fleet's side.
            if weight_in(&lock(&self.table), "hello/prod", set).is_some() {
                self.log(format!("STOPPED {set} WITH TRAFFIC"));
            }
            let n = lock(&self.sets).remove(set).map_or(0, |p| p.len());
            self.log(format!("stop {set}"));
            Ok(n)
        }
        async fn run_command(&self, _job: &Job, cmd: &str, _timeout: Duration) -> (bool, String) {
            self.log(format!("run {cmd}"));
            (true, format!("`{cmd}` ok"))
        }
    }

    fn canary_job() -> Job {
        let spec = gantry_spec::parse_str(
            "gantry.toml",
            "[app]\nname = \"hello\"\n[run]\ncommand = \"./hello\"\n\
             [deploy]\nstrategy = \"canary\"\nsteps = [{ weight = 10, pause = \"2s\" }, { weight = 50, pause = \"2s\" }]\n\
             [analysis]\ninterval = \"500ms\"\nmin_requests = 10\n",
        )
        .and_then(|s| s.resolve("prod"))
        .expect("the canary spec");
        Job {
            id: 7,
            app: "hello".into(),
            env: "prod".into(),
            analysis_interval: spec.analysis.interval.as_std(),
            plan: plan_for(&spec, true),
            spec,
            new_set: "r2".into(),
            old_set: Some("r1".into()),
            dir: "/".into(),
            secrets: Vec::new(),
        }
    }

    /// Runs a deploy of `job` against `fake` on its own task.
    fn run(
        fake: &Arc<Fake>,
        job: Job,
    ) -> (
        mpsc::Sender<Command>,
        Arc<Mutex<Option<Hold>>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::channel(COMMANDS);
        let hold = Arc::new(Mutex::new(None));
        let exec = Exec::new(
            fake.clone(),
            job,
            Deploy::new(fake.now_ms()),
            rx,
            hold.clone(),
        );
        (tx, hold, tokio::spawn(exec.run(Input::Begin)))
    }

    /// Waits (on the paused clock) until `f` holds; panics with the log.
    async fn until(fake: &Fake, what: &str, f: impl Fn(&[String]) -> bool) {
        for _ in 0..2000 {
            if f(&fake.logged()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never {what}: {:#?}", fake.logged());
    }

    fn has(log: &[String], line: &str) -> bool {
        log.iter().any(|l| l == line)
    }

    #[tokio::test(start_paused = true)]
    async fn every_action_follows_the_save_of_its_transition() {
        let fake = Fake::new(&[("r1", 100)]);
        let (_tx, _hold, task) = run(&fake, canary_job());
        task.await.unwrap();
        let log = fake.logged();
        let acts: Vec<&str> = log
            .iter()
            .filter(|l| !l.starts_with("note"))
            .map(String::as_str)
            .collect();
        // Each action comes after the save of the phase that decided it.
        let expect = [
            "saved start",
            "start r2",
            "saved analyze",
            "table r1=90,r2=10",
            "saved analyze",
            "table r1=50,r2=50",
            "saved drain",
            "table r1=0,r2=100",
            "table r2=100",
            "saved stop-old",
            "stop r1",
            "saved done",
        ];
        let mut at = 0;
        for want in expect {
            let found = acts[at..].iter().position(|a| *a == want);
            assert!(
                found.is_some(),
                "`{want}` missing after step {at}: {acts:#?}"
            );
            at += found.unwrap_or(0) + 1;
        }
        assert!(!log.iter().any(|l| l.contains("WITH TRAFFIC")), "{log:#?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_refuses_writes_holds_everything_and_an_abort_replaces_the_decision() {
        let fake = Fake::new(&[("r1", 100)]);
        let (tx, hold, task) = run(&fake, canary_job());
        until(&fake, "took the first step", |l| {
            has(l, "table r1=90,r2=10")
        })
        .await;
        fake.full.store(true, Ordering::SeqCst);
        // The step ends after 2 s; its decision (50 %) cannot be stored.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let cause = lock(&hold).clone().map(|h| h.cause).unwrap_or_default();
        assert!(
            cause.contains("cannot store the deploy's state: database or disk is full"),
            "{cause}"
        );
        assert!(
            !has(&fake.logged(), "table r1=50,r2=50"),
            "acted on an unstored decision"
        );
        tx.send(Command::Abort("alice".into())).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(fake.weights(), "r1=90,r2=10", "still holding");
        assert!(lock(&fake.sets).contains_key("r2"));
        fake.full.store(false, Ordering::SeqCst);
        task.await.unwrap();
        let log = fake.logged();
        assert!(!has(&log, "table r1=50,r2=50"), "{log:#?}");
        let back = log
            .iter()
            .position(|l| l == "table r1=100")
            .expect("traffic back");
        let stop = log.iter().position(|l| l == "stop r2").expect("r2 stopped");
        assert!(back < stop, "{log:#?}");
        assert!(
            log.iter()
                .any(|l| l.starts_with("note held ") && l.ends_with("carried on")),
            "{log:#?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_set_the_served_table_routes_to_is_never_stopped() {
        let fake = Fake::new(&[("r1", 100)]);
        lock(&fake.bad).push("r2".into());
        let (_tx, hold, task) = run(&fake, canary_job());
        until(&fake, "took the first step", |l| {
            has(l, "table r1=90,r2=10")
        })
        .await;
        // The proxy keeps sending r2 traffic whatever it is told.
        *lock(&fake.stale) = Some(("r2".into(), 10));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let log = fake.logged();
        assert!(!has(&log, "stop r2"), "{log:#?}");
        let cause = lock(&hold).clone().map(|h| h.cause).unwrap_or_default();
        assert!(
            cause.contains("to r2") && cause.contains("not stopping it"),
            "{cause}"
        );
        *lock(&fake.stale) = None;
        task.await.unwrap();
        let log = fake.logged();
        assert!(has(&log, "stop r2"), "{log:#?}");
        assert!(!log.iter().any(|l| l.contains("WITH TRAFFIC")), "{log:#?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_proxy_that_does_not_answer_is_waited_for_and_a_refusal_rolls_back() {
        // Down: the first step's weight change is retried, not dropped.
        let fake = Fake::new(&[("r1", 100)]);
        fake.down.store(true, Ordering::SeqCst);
        let (_tx, hold, task) = run(&fake, canary_job());
        until(&fake, "started r2", |l| has(l, "start r2")).await;
        tokio::time::sleep(Duration::from_secs(20)).await;
        let h = lock(&hold).clone().expect("holding");
        assert!(
            h.attempts > 3 && h.cause.contains("did not take the route change to 10 %"),
            "{h:?}"
        );
        fake.down.store(false, Ordering::SeqCst);
        task.await.unwrap();
        assert!(has(&fake.logged(), "stop r1"), "{:#?}", fake.logged());

        // Refused (a 4xx): no retry, the machine rolls back.
        let fake = Fake::new(&[("r1", 100)]);
        fake.refuse.store(true, Ordering::SeqCst);
        let (_tx, _hold, task) = run(&fake, canary_job());
        until(&fake, "tried to stop r2", |l| {
            l.iter().any(|x| x.starts_with("saved rolling-back"))
        })
        .await;
        fake.refuse.store(false, Ordering::SeqCst);
        task.await.unwrap();
        let log = fake.logged();
        assert!(has(&log, "stop r2") && !has(&log, "stop r1"), "{log:#?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_stops_the_deploy_where_it_is() {
        let fake = Fake::new(&[("r1", 100)]);
        let (_tx, _hold, task) = run(&fake, canary_job());
        until(&fake, "took the first step", |l| {
            has(l, "table r1=90,r2=10")
        })
        .await;
        *lock(&fake.lost) = Some("deploy 8 by bob holds it".into());
        task.await.unwrap();
        let log = fake.logged();
        let after: Vec<&String> = log
            .iter()
            .skip_while(|l| *l != "table r1=90,r2=10")
            .skip(1)
            .filter(|l| !l.starts_with("note") && !l.starts_with("saved analyze"))
            .collect();
        assert_eq!(after, [&"saved done".to_string()], "{log:#?}");
        assert_eq!(fake.weights(), "r1=90,r2=10", "traffic left as it was");
    }
}
