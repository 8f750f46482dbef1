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
/// The longest any one proxy admin call may take before the deploy treats
/// the proxy as not answering.
const PROXY_CALL: Duration = Duration::from_secs(10);
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

/// A proxy admin call with a deadline: a stuck admin socket becomes an
/// error the deploy holds on and reports, never a hang.
async fn within<T>(
    call: impl std::future::Future<Output = Result<T, AdminClientError>>,
) -> Result<T, AdminClientError> {
    match tokio::time::timeout(PROXY_CALL, call).await {
        Ok(r) => r,
        Err(_) => Err(AdminClientError::Transport {
            reason: format!("the proxy did not answer within {} s", PROXY_CALL.as_secs()),
        }),
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
            Exec::new(&me, job, state, rx, hold).run(first).await;
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
        let mut table = within(self.proxy.table()).await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
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
fn keep_lease(
    store: Arc<Store>,
    job: &Job,
    ttl: Duration,
) -> (watch::Receiver<Option<String>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let (app, env, id) = (job.app.clone(), job.env.clone(), job.id);
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let every = (ttl / 4).max(Duration::from_millis(100));
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let (a, e) = (app.clone(), env.clone());
            match db(&store, move |s| {
                s.renew_lease(&a, &e, id, ttl_ms, gantry_store::now_ms())
            })
            .await
            {
                Ok(()) => {}
                Err(e) if e.status == StatusCode::CONFLICT => {
                    let _ = tx.send(Some(e.message));
                    return;
                }
                // The store refuses writes (a full disk): the lease stays
                // this deploy's until another takes it, which needs the same
                // store; keep trying.
                Err(e) => {
                    tracing::warn!(deploy = id, error = %e.message, "cannot renew the deploy lease")
                }
            }
        }
    });
    (rx, task)
}

/// The gate inputs of one set from the proxy's stats: counters and p99.
/// Odd values in the answer (a NaN or negative p99) read as no p99.
fn set_metrics(stats: &gantry_proxy::StatsSnapshot, route: &str, set: &str) -> Option<SetMetrics> {
    stats.set(route, set).map(|s| SetMetrics {
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
            .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok()),
    })
}

fn delta(now: SetMetrics, base: SetMetrics) -> SetMetrics {
    SetMetrics {
        requests: now.requests.saturating_sub(base.requests),
        status_5xx: now.status_5xx.saturating_sub(base.status_5xx),
        status_ok: now.status_ok.saturating_sub(base.status_ok),
        p99: now.p99,
    }
}

/// One deploy's run: the machine, the actions of stored transitions still
/// to carry out, and what the gates measure.
struct Exec<'a> {
    me: &'a Deployer,
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
    last_metrics: Instant,
    draining: bool,
}

impl<'a> Exec<'a> {
    fn new(
        me: &'a Deployer,
        job: Job,
        d: Deploy,
        rx: mpsc::Receiver<Command>,
        hold: Arc<Mutex<Option<Hold>>>,
    ) -> Self {
        let saved = serde_json::to_string(&d).unwrap_or_default();
        let draining = d.phase == Phase::Drain;
        Self {
            me,
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
            last_metrics: Instant::now(),
            draining,
        }
    }

    async fn run(mut self, first: Input) {
        let (mut lost, keeper) = keep_lease(self.me.store.clone(), &self.job, self.me.lease);
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
        let now = gantry_store::now_ms();
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
        let (id, st, lines) = (self.job.id, state.clone(), logs.to_vec());
        db(&self.me.store, move |s| {
            s.save_deploy(id, &st, &phase, outcome.as_deref(), &lines)
        })
        .await
        .map_err(|e| e.message)?;
        self.saved = state;
        Ok(())
    }

    /// After a hold: clears it and notes in the timeline how long it lasted.
    async fn resolved(&mut self) {
        self.backoff = BACKOFF_FIRST;
        let Some(h) = lock(&self.hold).take() else {
            return;
        };
        let now = gantry_store::now_ms();
        let line = format!(
            "held {} s ({} attempts): {}; carried on",
            now.saturating_sub(h.since) / 1000,
            h.attempts,
            h.cause
        );
        tracing::info!(deploy = self.job.id, "{line}");
        let (id, phase) = (self.job.id, phase_name(self.d.phase));
        let _ = db(&self.me.store, move |s| {
            s.add_deploy_event(id, now, &phase, &line)
        })
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
                        since: gantry_store::now_ms(),
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
                let st = self.me.fleet.set_status(&job.app, &job.env, &job.new_set);
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
                    if within(self.me.proxy.drained(&job.route_id(), old))
                        .await
                        .is_ok_and(|s| s.drained)
                    {
                        self.queue.push_back(Input::Drained);
                    }
                } else {
                    self.queue.push_back(Input::Drained);
                }
            }
            Phase::Analyze | Phase::AwaitApproval | Phase::Warm => {
                let route = job.route_id();
                let Ok(stats) = within(self.me.proxy.stats()).await else {
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
                    self.last_metrics = Instant::now();
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
        if let Ok(stats) = within(self.me.proxy.stats()).await
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
                    .me
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
                    .me
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
                    .me
                    .run_command(job, &cmd, job.spec.migrate.timeout.as_std())
                    .await;
                Done::Then(Some(Input::MigrationRolledBack { ok, detail }))
            }
            Action::StartNew => {
                match self
                    .me
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
                    Ok(_) => Done::Then(None),
                    Err(e) => Done::Then(Some(Input::StartFailed { detail: e.message })),
                }
            }
            Action::SmokeLive if self.me.proxy_addr.is_some() => {
                // After the switch, through the proxy, as users reach it.
                let port = self.me.proxy_addr.map_or(0, |a| a.port());
                let route = route_for(&job.app, &job.env, &job.spec, Vec::new());
                let host = route.hosts.first().cloned();
                let (ok, detail) = smoke(&job.spec.deploy.smoke, &[port], host.as_deref()).await;
                Done::Then(Some(Input::Smoke { ok, detail }))
            }
            Action::SmokeDirect | Action::SmokeLive => {
                let ports: Vec<u16> = self
                    .me
                    .fleet
                    .set_status(&job.app, &job.env, &job.new_set)
                    .iter()
                    .map(|(p, _)| *p)
                    .collect();
                let (ok, detail) = smoke(&job.spec.deploy.smoke, &ports, None).await;
                Done::Then(Some(Input::Smoke { ok, detail }))
            }
            Action::SetWeight { new } => self.set_weight(new).await,
            Action::DrainOld => {
                match self.me.route(job, &[(job.new_set.clone(), 100)]).await {
                    Ok(()) => {
                        self.draining = true;
                        Done::Then(None)
                    }
                    Err(e) if transient(&e) => {
                        Done::Retry(format!("cannot move the last traffic off the old set: {e}"))
                    }
                    // A refusal that repeating will not change; the old set
                    // is still stopped only once the proxy sends it nothing.
                    Err(e) => {
                        tracing::error!(deploy = job.id, error = %e, "cannot set the route");
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
        let decided = gantry_store::now_ms();
        match self.me.route(job, &weights(job, new)).await {
            Ok(()) => {
                self.baseline = None;
                self.baseline_old = None;
                // After the fact, so it never delays the switch.
                let at = gantry_store::now_ms();
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
                let (id, phase) = (job.id, phase_name(self.d.phase));
                let _ = db(&self.me.store, move |s| {
                    s.add_deploy_event(id, at, &phase, &line)
                })
                .await;
                Done::Then(None)
            }
            Err(e) if transient(&e) => Done::Retry(format!(
                "the proxy did not take the route change to {new} %: {e}"
            )),
            // The machine rolls back from any phase with traffic.
            Err(e) => {
                tracing::error!(deploy = job.id, error = %e, "cannot set the route");
                Done::Then(Some(Input::StartFailed {
                    detail: format!("the proxy refused the route change: {e}"),
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
        let table = match within(self.me.proxy.table()).await {
            Ok(t) => t,
            Err(e) => {
                return Done::Retry(format!(
                    "cannot confirm with the proxy that {set} takes no traffic ({e}); not stopping it"
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
                self.me.route(job, &rest).await
            } else {
                self.me.remove_route(job).await
            };
            return Done::Retry(match fix {
                Ok(()) => format!(
                    "the proxy still sent {w} % of {route} to {set}; the route was rewritten without it, not stopping it until the proxy confirms"
                ),
                Err(e) => format!(
                    "the proxy still sends {w} % of {route} to {set} and did not take the route without it ({e}); not stopping it"
                ),
            });
        }
        match self.me.fleet.stop_set(&job.app, &job.env, Some(set)).await {
            Ok(_) => Done::Then(Some(Input::Stopped)),
            // Nothing of it runs (stopped already, e.g. a repeat after a
            // crash): stopping is idempotent.
            Err(e) if e.status == StatusCode::NOT_FOUND => Done::Then(Some(Input::Stopped)),
            Err(e) => Done::Retry(format!("stopping {set} failed: {}", e.message)),
        }
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
    /// Sets the route of the job's app environment to `sets` (name, weight).
    async fn route(&self, job: &Job, sets: &[(String, u32)]) -> Result<(), AdminClientError> {
        let _one = self.table.lock().await;
        let mut table = within(self.proxy.table()).await?;
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
        within(self.proxy.set_table(&table)).await
    }

    /// Takes the job's route out of the proxy's table (a first deploy that
    /// rolls back leaves the host as it found it: unrouted).
    async fn remove_route(&self, job: &Job) -> Result<(), AdminClientError> {
        let _one = self.table.lock().await;
        let mut table = within(self.proxy.table()).await?;
        let id = job.route_id();
        table.routes.retain(|r| r.id != id);
        table.version += 1;
        within(self.proxy.set_table(&table)).await
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
