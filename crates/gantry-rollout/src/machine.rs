//! The deploy state machine.
//!
//! Phases, in order (each skipped when the plan has nothing for it):
//! pre-hook → build → migrate → start → smoke (direct, before traffic) →
//! traffic: canary steps (weight, then a pause with gates, or an approval)
//! or blue-green's one atomic switch → smoke (live) → warm (blue-green keeps
//! the old set ready for `rollback_window`) → drain → post-hook → done.
//!
//! Any failing gate, probe, migration or smoke check leads to *rolling
//! back*: weight 0 on the new set at once, stop it, run the migration's
//! rollback if the migration ran, notify. A failed build or migration ends
//! the deploy before anything changed for users.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::gates::{self, GateReport, Gates, SetMetrics, Status};

/// Milliseconds, from whatever clock the executor uses.
pub type Ms = i64;

/// A duration in [`Ms`], saturating: a huge duration from a spec never
/// wraps into a negative deadline.
fn ms(d: Duration) -> Ms {
    Ms::try_from(d.as_millis()).unwrap_or(Ms::MAX)
}

/// Time since `since`, never overflowing.
fn elapsed(now: Ms, since: Ms) -> Ms {
    now.saturating_sub(since)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pause {
    For(Duration),
    /// Until `gantry approve`.
    Approval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Share of requests (0–100) for the new set during this step.
    pub weight: u8,
    pub pause: Pause,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    BlueGreen { rollback_window: Duration },
    Canary { steps: Vec<Step> },
}

/// What this deploy involves (from the app spec and the current state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub strategy: Strategy,
    pub gates: Gates,
    pub pre_hook: bool,
    pub post_hook: bool,
    pub build: bool,
    pub migrate: bool,
    pub migrate_rollback: bool,
    pub smoke: bool,
    /// Pause before the new set takes all traffic, until approved.
    pub require_approval: bool,
    /// An old set serves now (false on an environment's first deploy).
    pub has_previous: bool,
    /// How long the new instances may take to become ready.
    pub ready_timeout: Duration,
    /// What a canary step does when it ends before the gates could judge.
    #[serde(default)]
    pub inconclusive: Inconclusive,
}

/// What a canary step does when it ends with too few requests to judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Inconclusive {
    /// Go on with the step until the gates decide, or `Approve`.
    #[default]
    Wait,
    Continue,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Pending,
    PreHook,
    Build,
    Migrate,
    Start,
    SmokeDirect,
    /// Canary step `step` (or blue-green's switch) is live; gates run.
    Analyze,
    AwaitApproval,
    SmokeLive,
    /// Blue-green: all traffic on the new set, old set kept warm.
    Warm,
    Drain,
    /// The old set is drained; its instances are being stopped.
    StopOld,
    PostHook,
    RollingBack,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Succeeded,
    RolledBack,
    Failed,
    Aborted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    Begin,
    HookDone {
        ok: bool,
        detail: String,
    },
    Built {
        ok: bool,
        detail: String,
    },
    Migrated {
        ok: bool,
        detail: String,
    },
    MigrationRolledBack {
        ok: bool,
        detail: String,
    },
    /// Every new instance is ready.
    Ready,
    /// A new instance failed to start or stay up.
    StartFailed {
        detail: String,
    },
    Smoke {
        ok: bool,
        detail: String,
    },
    Metrics {
        new: SetMetrics,
        old: Option<SetMetrics>,
    },
    Tick,
    Approve {
        by: String,
    },
    Abort {
        by: String,
    },
    /// The old set has no requests left in flight.
    Drained,
    /// The set a `StopOld` or `StopNew` named has no instance left.
    Stopped,
    /// The control plane restarted while this deploy was in `phase`.
    Resumed,
    /// Another deploy took the environment's lease: this one must stop
    /// acting at once, leaving traffic as it is.
    LeaseLost {
        detail: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    RunPreHook,
    RunPostHook,
    Build,
    Migrate,
    MigrateRollback,
    StartNew,
    /// Smoke checks against the new instances directly (no traffic yet).
    SmokeDirect,
    /// Smoke checks through the proxy after the switch.
    SmokeLive,
    /// `new` % of requests to the new set, the rest to the old one.
    SetWeight {
        new: u8,
    },
    DrainOld,
    StopOld,
    StopNew,
    Notify {
        failure: bool,
        message: String,
    },
    /// A line for the deploy's timeline.
    Log(String),
}

/// The persisted state of one deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deploy {
    pub phase: Phase,
    pub phase_since: Ms,
    /// Index of the current canary step.
    pub step: usize,
    /// Share of traffic on the new set now.
    pub weight: u8,
    pub migrated: bool,
    pub approved: bool,
    pub abort_requested: bool,
    pub outcome: Option<Outcome>,
    /// Why it rolled back or failed.
    pub reason: Option<String>,
    /// Outcome to report once rolling back has finished.
    rollback_outcome: Option<Outcome>,
    pub last_gates: Option<GateReport>,
    /// The current step's time is up but its gates have not decided yet.
    #[serde(default)]
    pub held: bool,
}

impl Deploy {
    pub fn new(now: Ms) -> Self {
        Self {
            phase: Phase::Pending,
            phase_since: now,
            step: 0,
            weight: 0,
            migrated: false,
            approved: false,
            abort_requested: false,
            outcome: None,
            reason: None,
            rollback_outcome: None,
            last_gates: None,
            held: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    fn enter(&mut self, phase: Phase, now: Ms, out: &mut Vec<Action>, note: impl Into<String>) {
        self.phase = phase;
        self.phase_since = now;
        out.push(Action::Log(note.into()));
    }

    fn finish(&mut self, outcome: Outcome, now: Ms, out: &mut Vec<Action>, message: String) {
        self.outcome = Some(outcome);
        let failure = outcome != Outcome::Succeeded;
        if failure && self.reason.is_none() {
            self.reason = Some(message.clone());
        }
        self.enter(Phase::Done, now, out, format!("done: {message}"));
        out.push(Action::Notify { failure, message });
    }

    /// Handles one input at time `now`; returns what to do next. Inputs
    /// that make no sense in the current phase are ignored (they may be
    /// stale results from before a restart).
    pub fn handle(&mut self, plan: &Plan, input: Input, now: Ms) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase == Phase::Done {
            return out;
        }
        match (self.phase, input) {
            (_, Input::Abort { by }) => self.abort(plan, now, by, &mut out),
            (_, Input::LeaseLost { detail }) => self.finish(
                Outcome::Failed,
                now,
                &mut out,
                format!("stopped acting: {detail}; traffic was left as it was"),
            ),
            (_, Input::Resumed) => self.resume(plan, now, &mut out),
            (Phase::Pending, Input::Begin) => {
                if plan.pre_hook {
                    self.enter(Phase::PreHook, now, &mut out, "pre-deploy hook");
                    out.push(Action::RunPreHook);
                } else {
                    self.build(plan, now, &mut out);
                }
            }
            (Phase::PreHook, Input::HookDone { ok, detail }) => {
                if ok {
                    self.build(plan, now, &mut out);
                } else {
                    self.finish(
                        Outcome::Failed,
                        now,
                        &mut out,
                        format!("pre-deploy hook failed: {detail}"),
                    );
                }
            }
            (Phase::Build, Input::Built { ok, detail }) => {
                if ok {
                    self.migrate(plan, now, &mut out);
                } else {
                    self.finish(
                        Outcome::Failed,
                        now,
                        &mut out,
                        format!("build failed: {detail}"),
                    );
                }
            }
            (Phase::Migrate, Input::Migrated { ok, detail }) => {
                if !ok {
                    self.finish(
                        Outcome::Failed,
                        now,
                        &mut out,
                        format!("migration failed, the old release serves untouched: {detail}"),
                    );
                } else {
                    self.migrated = true;
                    if self.abort_requested {
                        self.rollback(plan, now, Outcome::Aborted, "aborted".into(), &mut out);
                    } else {
                        self.start(now, &mut out);
                    }
                }
            }
            (Phase::Start, Input::Ready) => {
                if plan.smoke {
                    self.enter(
                        Phase::SmokeDirect,
                        now,
                        &mut out,
                        "smoke checks on the new instances",
                    );
                    out.push(Action::SmokeDirect);
                } else {
                    self.traffic(plan, now, &mut out);
                }
            }
            (
                Phase::Start
                | Phase::SmokeDirect
                | Phase::Analyze
                | Phase::AwaitApproval
                | Phase::SmokeLive
                | Phase::Warm,
                Input::StartFailed { detail },
            ) => {
                self.rollback(
                    plan,
                    now,
                    Outcome::RolledBack,
                    format!("a new instance failed: {detail}"),
                    &mut out,
                );
            }
            (Phase::Start, Input::Tick)
                if elapsed(now, self.phase_since) >= ms(plan.ready_timeout) =>
            {
                let reason = format!(
                    "the new instances were not ready within {} s",
                    plan.ready_timeout.as_secs()
                );
                self.rollback(plan, now, Outcome::RolledBack, reason, &mut out);
            }
            (Phase::SmokeDirect, Input::Smoke { ok, detail }) => {
                if ok {
                    out.push(Action::Log(format!("smoke: {detail}")));
                    self.traffic(plan, now, &mut out);
                } else {
                    self.rollback(
                        plan,
                        now,
                        Outcome::RolledBack,
                        format!("smoke check failed before traffic: {detail}"),
                        &mut out,
                    );
                }
            }
            (Phase::Analyze | Phase::AwaitApproval | Phase::Warm, Input::Metrics { new, old }) => {
                let report = gates::evaluate(&plan.gates, &new, old.as_ref());
                let verdict = report.verdict();
                let failures = report.failures();
                self.last_gates = Some(report);
                if verdict == Status::Fail {
                    self.rollback(
                        plan,
                        now,
                        Outcome::RolledBack,
                        format!("gate failed: {failures}"),
                        &mut out,
                    );
                } else if self.held && verdict == Status::Pass {
                    out.push(Action::Log("the gates passed".into()));
                    self.held = false;
                    self.next_step(plan, now, &mut out);
                }
            }
            (Phase::Analyze, Input::Tick) if !self.held => {
                if let Some(Pause::For(d)) = self.current_pause(plan)
                    && elapsed(now, self.phase_since) >= ms(d)
                {
                    let requests = match &self.last_gates {
                        Some(g) if g.verdict() != Status::Pending => None,
                        Some(g) => Some(g.requests().to_string()),
                        None => Some("no".to_string()),
                    };
                    match (requests, plan.inconclusive) {
                        (None, _) => self.next_step(plan, now, &mut out),
                        (Some(n), Inconclusive::Wait) => {
                            self.held = true;
                            out.push(Action::Log(format!(
                                "the step is over but the gates cannot judge yet ({n} requests, {} needed); it goes on until they do — `gantry approve` moves on anyway, `gantry abort` rolls back",
                                plan.gates.min_requests
                            )));
                        }
                        (Some(n), Inconclusive::Continue) => {
                            out.push(Action::Log(format!(
                                "gates inconclusive at the end of the step ({n} requests, {} needed); continuing as configured",
                                plan.gates.min_requests
                            )));
                            self.next_step(plan, now, &mut out);
                        }
                        (Some(n), Inconclusive::Rollback) => self.rollback(
                            plan,
                            now,
                            Outcome::RolledBack,
                            format!(
                                "too few requests to judge the canary ({n}, {} needed)",
                                plan.gates.min_requests
                            ),
                            &mut out,
                        ),
                    }
                }
            }
            (Phase::Analyze, Input::Approve { by }) if self.held => {
                out.push(Action::Log(format!(
                    "approved by {by} with the gates undecided; next step"
                )));
                self.held = false;
                self.next_step(plan, now, &mut out);
            }
            (Phase::AwaitApproval, Input::Approve { by }) => {
                self.approved = true;
                out.push(Action::Log(format!("approved by {by}")));
                self.next_step(plan, now, &mut out);
            }
            (Phase::Warm, Input::Approve { by }) => {
                out.push(Action::Log(format!("{by} ended the rollback window early")));
                self.drain(plan, now, &mut out);
            }
            (Phase::SmokeLive, Input::Smoke { ok, detail }) => {
                if ok {
                    out.push(Action::Log(format!("smoke: {detail}")));
                    self.after_switch(plan, now, &mut out);
                } else {
                    self.rollback(
                        plan,
                        now,
                        Outcome::RolledBack,
                        format!("smoke check failed after the switch: {detail}"),
                        &mut out,
                    );
                }
            }
            (Phase::Warm, Input::Tick) => {
                if let Strategy::BlueGreen { rollback_window } = plan.strategy
                    && elapsed(now, self.phase_since) >= ms(rollback_window)
                {
                    self.drain(plan, now, &mut out);
                }
            }
            (Phase::Drain, Input::Drained) => {
                self.enter(Phase::StopOld, now, &mut out, "stop the old set");
                out.push(Action::StopOld);
            }
            (Phase::StopOld, Input::Stopped) => {
                if plan.post_hook {
                    self.enter(Phase::PostHook, now, &mut out, "post-deploy hook");
                    out.push(Action::RunPostHook);
                } else {
                    self.finish(Outcome::Succeeded, now, &mut out, "deployed".into());
                }
            }
            (Phase::PostHook, Input::HookDone { ok, detail }) => {
                if !ok {
                    let message = format!("post-deploy hook failed (the release stays): {detail}");
                    out.push(Action::Log(message.clone()));
                    out.push(Action::Notify {
                        failure: true,
                        message,
                    });
                }
                self.finish(Outcome::Succeeded, now, &mut out, "deployed".into());
            }
            (Phase::RollingBack, Input::Stopped) => {
                if self.migrated && plan.migrate_rollback {
                    out.push(Action::Log("rolling back the migration".into()));
                    out.push(Action::MigrateRollback);
                } else {
                    let outcome = self.rollback_outcome.unwrap_or(Outcome::RolledBack);
                    let reason = self.reason.clone().unwrap_or_default();
                    self.finish(outcome, now, &mut out, format!("rolled back: {reason}"));
                }
            }
            (Phase::RollingBack, Input::MigrationRolledBack { ok, detail }) => {
                let outcome = self.rollback_outcome.unwrap_or(Outcome::RolledBack);
                let reason = self.reason.clone().unwrap_or_default();
                let message = if ok {
                    format!("rolled back ({reason}); migration rolled back")
                } else {
                    format!("rolled back ({reason}); the migration rollback FAILED: {detail}")
                };
                self.finish(outcome, now, &mut out, message);
            }
            _ => {}
        }
        out
    }

    fn current_pause(&self, plan: &Plan) -> Option<Pause> {
        match &plan.strategy {
            Strategy::Canary { steps } => steps.get(self.step).map(|s| s.pause),
            Strategy::BlueGreen { .. } => None,
        }
    }

    fn build(&mut self, plan: &Plan, now: Ms, out: &mut Vec<Action>) {
        if plan.build {
            self.enter(Phase::Build, now, out, "build");
            out.push(Action::Build);
        } else {
            self.migrate(plan, now, out);
        }
    }

    fn migrate(&mut self, plan: &Plan, now: Ms, out: &mut Vec<Action>) {
        if plan.migrate {
            self.enter(Phase::Migrate, now, out, "migrate");
            out.push(Action::Migrate);
        } else {
            self.start(now, out);
        }
    }

    fn start(&mut self, now: Ms, out: &mut Vec<Action>) {
        self.enter(Phase::Start, now, out, "start the new instances");
        out.push(Action::StartNew);
    }

    /// Before any traffic moves: first deploy, blue-green switch, or the
    /// first canary step.
    fn traffic(&mut self, plan: &Plan, now: Ms, out: &mut Vec<Action>) {
        if !plan.has_previous {
            self.set_weight(100, out);
            return self.switched(plan, now, out);
        }
        match &plan.strategy {
            Strategy::BlueGreen { .. } => {
                if plan.require_approval && !self.approved {
                    self.enter(
                        Phase::AwaitApproval,
                        now,
                        out,
                        "waiting for approval to switch (gantry approve)",
                    );
                } else {
                    self.set_weight(100, out);
                    self.switched(plan, now, out);
                }
            }
            Strategy::Canary { .. } => {
                self.step = 0;
                self.apply_step(plan, now, out);
            }
        }
    }

    fn apply_step(&mut self, plan: &Plan, now: Ms, out: &mut Vec<Action>) {
        let Strategy::Canary { steps } = &plan.strategy else {
            return;
        };
        let Some(step) = steps.get(self.step).copied() else {
            return self.promote(plan, now, out);
        };
        if step.weight >= 100 {
            return self.promote(plan, now, out);
        }
        self.set_weight(step.weight, out);
        self.last_gates = None;
        let n = steps.len();
        match step.pause {
            Pause::For(d) => self.enter(
                Phase::Analyze,
                now,
                out,
                format!(
                    "canary step {}/{n}: {} % for {} s",
                    self.step + 1,
                    step.weight,
                    d.as_secs()
                ),
            ),
            Pause::Approval => self.enter(
                Phase::AwaitApproval,
                now,
                out,
                format!(
                    "canary step {}/{n}: {} % until approved (gantry approve)",
                    self.step + 1,
                    step.weight
                ),
            ),
        }
    }

    fn next_step(&mut self, plan: &Plan, now: Ms, out: &mut Vec<Action>) {
        match &plan.strategy {
            Strategy::Canary { .. } if self.weight < 100 => {
                self.step += 1;
                self.apply_step(plan, now, out);
            }
            _ => {
                self.set_weight(100, out);
                self.switched(plan, now, out);
            }
        }
    }

    /// All traffic to the new set (after approval if required).
    fn promote(&mut self, plan: &Plan, now: Ms, out: &mut Vec<Action>) {
        if plan.require_approval && !self.approved {
            self.enter(
                Phase::AwaitApproval,
                now,
                out,
                "waiting for approval to promote to 100 % (gantry approve)",
            );
            return;
        }
        self.set_weight(100, out);
        self.switched(plan, now, out);
    }

    fn set_weight(&mut self, w: u8, out: &mut Vec<Action>) {
        self.weight = w;
        out.push(Action::SetWeight { new: w });
    }

    fn switched(&mut self, plan: &Plan, now: Ms, out: &mut Vec<Action>) {
        if plan.smoke {
            self.enter(Phase::SmokeLive, now, out, "smoke checks after the switch");
            out.push(Action::SmokeLive);
        } else {
            self.after_switch(plan, now, out);
        }
    }

    fn after_switch(&mut self, plan: &Plan, now: Ms, out: &mut Vec<Action>) {
        match plan.strategy {
            Strategy::BlueGreen { rollback_window }
                if plan.has_previous && !rollback_window.is_zero() =>
            {
                self.last_gates = None;
                self.enter(
                    Phase::Warm,
                    now,
                    out,
                    format!(
                        "live; old set kept warm for {} s",
                        rollback_window.as_secs()
                    ),
                );
            }
            _ => self.drain(plan, now, out),
        }
    }

    fn drain(&mut self, plan: &Plan, now: Ms, out: &mut Vec<Action>) {
        if plan.has_previous {
            self.enter(Phase::Drain, now, out, "drain the old set");
            out.push(Action::DrainOld);
        } else if plan.post_hook {
            self.enter(Phase::PostHook, now, out, "post-deploy hook");
            out.push(Action::RunPostHook);
        } else {
            self.finish(Outcome::Succeeded, now, out, "deployed".into());
        }
    }

    fn rollback(
        &mut self,
        plan: &Plan,
        now: Ms,
        outcome: Outcome,
        reason: String,
        out: &mut Vec<Action>,
    ) {
        self.reason = Some(reason.clone());
        self.rollback_outcome = Some(outcome);
        // Traffic first: the old set takes everything again, at once.
        if plan.has_previous && self.weight > 0 {
            self.set_weight(0, out);
        }
        // Then the new set stops, then the migration's rollback (if it
        // ran); the deploy ends only once both are done, so a crash in
        // between resumes them.
        self.enter(
            Phase::RollingBack,
            now,
            out,
            format!("rolling back: {reason}"),
        );
        out.push(Action::StopNew);
    }

    fn abort(&mut self, plan: &Plan, now: Ms, by: String, out: &mut Vec<Action>) {
        let reason = format!("aborted by {by}");
        match self.phase {
            Phase::Pending | Phase::PreHook | Phase::Build => {
                self.finish(Outcome::Aborted, now, out, reason);
            }
            // The migration's result decides: it may have changed the data.
            Phase::Migrate => {
                self.abort_requested = true;
                self.reason = Some(reason.clone());
                out.push(Action::Log(format!(
                    "{reason}; rolling back once the migration ends"
                )));
            }
            Phase::RollingBack => {}
            Phase::Drain | Phase::StopOld | Phase::PostHook => {
                out.push(Action::Log(format!("{reason} ignored: the new release already took all traffic and the old set is draining")));
            }
            _ => self.rollback(plan, now, Outcome::Aborted, reason, out),
        }
    }

    /// After a control-plane crash in `self.phase`.
    fn resume(&mut self, plan: &Plan, now: Ms, out: &mut Vec<Action>) {
        let restarted = "the control plane restarted";
        match self.phase {
            Phase::Pending | Phase::PreHook | Phase::Build => {
                self.finish(
                    Outcome::Failed,
                    now,
                    out,
                    format!("{restarted} before anything changed; deploy again"),
                );
            }
            // Whether the migration finished is unknown: assume it ran, so
            // its rollback runs (migrations must make that safe).
            Phase::Migrate => {
                self.migrated = true;
                self.rollback(
                    plan,
                    now,
                    Outcome::RolledBack,
                    format!("{restarted} during the migration"),
                    out,
                );
            }
            // No user traffic reached the new set yet: roll back.
            Phase::Start | Phase::SmokeDirect => {
                self.rollback(
                    plan,
                    now,
                    Outcome::RolledBack,
                    format!("{restarted} before traffic moved"),
                    out,
                );
            }
            // Traffic is shifted: put the weights back as recorded, restart
            // the step's clock, go on.
            Phase::Analyze | Phase::AwaitApproval | Phase::Warm => {
                out.push(Action::SetWeight { new: self.weight });
                self.phase_since = now;
                out.push(Action::Log(format!(
                    "{restarted}; resuming at {} %",
                    self.weight
                )));
            }
            Phase::SmokeLive => {
                out.push(Action::SetWeight { new: self.weight });
                out.push(Action::Log(format!("{restarted}; smoke checks again")));
                out.push(Action::SmokeLive);
                self.phase_since = now;
            }
            Phase::Drain => {
                out.push(Action::SetWeight { new: 100 });
                out.push(Action::DrainOld);
            }
            Phase::PostHook => {
                self.finish(
                    Outcome::Succeeded,
                    now,
                    out,
                    format!(
                        "deployed ({restarted} during the post-deploy hook; it did not run again)"
                    ),
                );
            }
            Phase::StopOld => out.push(Action::StopOld),
            Phase::RollingBack => {
                if plan.has_previous {
                    out.push(Action::SetWeight { new: 0 });
                }
                out.push(Action::Log(format!("{restarted}; rolling back again")));
                out.push(Action::StopNew);
            }
            Phase::Done => {}
        }
    }
}
