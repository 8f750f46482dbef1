//! The deploy state machine with simulated time: every path from begin to
//! done, each failure's rollback, approvals, aborts, and crash recovery in
//! every phase.

use std::time::Duration;

use gantry_rollout::machine::Ms;
use gantry_rollout::{
    Action, Deploy, Gates, Inconclusive, Input, Outcome, Pause, Phase, Plan, SetMetrics, Step,
    Strategy,
};

const S: Ms = 1000;

fn canary() -> Plan {
    Plan {
        strategy: Strategy::Canary {
            steps: vec![
                Step {
                    weight: 10,
                    pause: Pause::For(Duration::from_secs(60)),
                },
                Step {
                    weight: 50,
                    pause: Pause::For(Duration::from_secs(60)),
                },
            ],
        },
        gates: Gates::default(),
        pre_hook: false,
        post_hook: false,
        build: true,
        migrate: true,
        migrate_rollback: true,
        smoke: true,
        require_approval: false,
        has_previous: true,
        ready_timeout: Duration::from_secs(120),
        // The walk-throughs feed no metrics; `pending_gates_*` covers `Wait`.
        inconclusive: Inconclusive::Continue,
    }
}

fn blue_green() -> Plan {
    Plan {
        strategy: Strategy::BlueGreen {
            rollback_window: Duration::from_secs(300),
        },
        ..canary()
    }
}

struct Sim {
    plan: Plan,
    d: Deploy,
    now: Ms,
    log: Vec<Action>,
}

impl Sim {
    fn new(plan: Plan) -> Self {
        Self {
            plan,
            d: Deploy::new(0),
            now: 0,
            log: Vec::new(),
        }
    }
    fn feed(&mut self, input: Input) -> Vec<Action> {
        // As the executor does: the state survives a serde round trip.
        let json = serde_json::to_string(&self.d).unwrap();
        self.d = serde_json::from_str(&json).unwrap();
        let a = self.d.handle(&self.plan, input, self.now);
        self.log.extend(a.clone());
        a
    }
    fn at(&mut self, secs: i64) -> &mut Self {
        self.now = secs * S;
        self
    }
    /// Only the actions that do something (no log lines).
    fn work(a: &[Action]) -> Vec<Action> {
        a.iter()
            .filter(|x| !matches!(x, Action::Log(_)))
            .cloned()
            .collect()
    }
    fn run_until_traffic(&mut self) {
        assert_eq!(Self::work(&self.feed(Input::Begin)), vec![Action::Build]);
        assert_eq!(
            Self::work(&self.feed(Input::Built {
                ok: true,
                detail: "sha256:ab".into()
            })),
            vec![Action::Migrate]
        );
        assert_eq!(
            Self::work(&self.feed(Input::Migrated {
                ok: true,
                detail: String::new()
            })),
            vec![Action::StartNew]
        );
        assert_eq!(
            Self::work(&self.feed(Input::Ready)),
            vec![Action::SmokeDirect]
        );
    }
}

fn good() -> Input {
    Input::Metrics {
        new: SetMetrics {
            requests: 500,
            status_5xx: 0,
            status_ok: 500,
            p99: Some(Duration::from_millis(40)),
        },
        old: None,
    }
}

fn bad() -> Input {
    Input::Metrics {
        new: SetMetrics {
            requests: 500,
            status_5xx: 60,
            status_ok: 440,
            p99: Some(Duration::from_millis(40)),
        },
        old: None,
    }
}

fn notify_failure(a: &[Action]) -> bool {
    a.iter()
        .any(|x| matches!(x, Action::Notify { failure: true, .. }))
}

#[test]
fn canary_walks_its_steps_and_promotes() {
    let mut s = Sim::new(canary());
    s.run_until_traffic();
    let a = s.feed(Input::Smoke {
        ok: true,
        detail: "4/4 passed".into(),
    });
    assert_eq!(Sim::work(&a), vec![Action::SetWeight { new: 10 }]);
    assert_eq!(s.d.phase, Phase::Analyze);
    s.at(30).feed(good());
    assert!(
        Sim::work(&s.feed(Input::Tick)).is_empty(),
        "still inside the 60 s pause"
    );
    let a = s.at(60).feed(Input::Tick);
    assert_eq!(Sim::work(&a), vec![Action::SetWeight { new: 50 }]);
    s.at(90).feed(good());
    let a = s.at(120).feed(Input::Tick);
    assert_eq!(
        Sim::work(&a),
        vec![Action::SetWeight { new: 100 }, Action::SmokeLive]
    );
    let a = s.feed(Input::Smoke {
        ok: true,
        detail: String::new(),
    });
    assert_eq!(Sim::work(&a), vec![Action::DrainOld]);
    let a = s.at(125).feed(Input::Drained);
    assert_eq!(Sim::work(&a), vec![Action::StopOld]);
    assert_eq!(
        s.d.phase,
        Phase::StopOld,
        "done only once the old set stopped"
    );
    let a = s.feed(Input::Stopped);
    assert_eq!(
        Sim::work(&a),
        vec![Action::Notify {
            failure: false,
            message: "deployed".into()
        }]
    );
    assert_eq!(s.d.outcome, Some(Outcome::Succeeded));
    assert!(s.d.is_done());
    assert!(s.feed(Input::Tick).is_empty(), "done is final");
}

#[test]
fn failing_gate_sets_weight_zero_at_once_and_rolls_the_migration_back() {
    let mut s = Sim::new(canary());
    s.run_until_traffic();
    s.feed(Input::Smoke {
        ok: true,
        detail: String::new(),
    });
    s.at(60).feed(Input::Tick);
    assert_eq!(s.d.weight, 50);
    let a = s.at(70).feed(bad());
    assert_eq!(
        Sim::work(&a),
        vec![Action::SetWeight { new: 0 }, Action::StopNew]
    );
    assert_eq!(s.d.phase, Phase::RollingBack);
    let a = s.feed(Input::Stopped);
    assert_eq!(Sim::work(&a), vec![Action::MigrateRollback]);
    assert!(
        s.d.reason
            .as_deref()
            .unwrap()
            .starts_with("gate failed: error rate 12.00 %"),
        "{:?}",
        s.d.reason
    );
    let a = s.feed(Input::MigrationRolledBack {
        ok: true,
        detail: String::new(),
    });
    assert!(notify_failure(&a));
    assert_eq!(s.d.outcome, Some(Outcome::RolledBack));
}

fn few_requests() -> Input {
    Input::Metrics {
        new: SetMetrics {
            requests: 3,
            status_5xx: 3,
            status_ok: 0,
            p99: None,
        },
        old: None,
    }
}

#[test]
fn pending_gates_never_roll_back_and_hold_the_step_until_they_decide() {
    let mut s = Sim::new(Plan {
        inconclusive: Inconclusive::Wait,
        ..canary()
    });
    s.run_until_traffic();
    s.feed(Input::Smoke {
        ok: true,
        detail: String::new(),
    });
    assert!(Sim::work(&s.at(10).feed(few_requests())).is_empty());
    assert_eq!(s.d.phase, Phase::Analyze);
    // The step's time is up, the gates undecided: the step goes on.
    let a = s.at(60).feed(Input::Tick);
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::Log(l) if l.contains("cannot judge yet (3 requests"))),
        "{a:?}"
    );
    assert!(Sim::work(&a).is_empty(), "no weight change: {a:?}");
    assert!(Sim::work(&s.at(500).feed(Input::Tick)).is_empty());
    assert_eq!((s.d.weight, s.d.held), (10, true));
    // Enough requests, all good: the next step.
    let a = s.at(501).feed(Input::Metrics {
        new: SetMetrics {
            requests: 60,
            status_5xx: 0,
            status_ok: 60,
            p99: Some(Duration::from_millis(20)),
        },
        old: None,
    });
    assert_eq!(Sim::work(&a), vec![Action::SetWeight { new: 50 }]);
    assert!(!s.d.held);

    // Held again at 50 %; `gantry approve` moves on with the gates undecided.
    s.at(520).feed(few_requests());
    s.at(561).feed(Input::Tick);
    assert!(s.d.held);
    let a = s.feed(Input::Approve { by: "ops".into() });
    assert!(
        Sim::work(&a).contains(&Action::SetWeight { new: 100 }),
        "{a:?}"
    );

    // Held, then a failing verdict: rolled back.
    let mut s = Sim::new(Plan {
        inconclusive: Inconclusive::Wait,
        ..canary()
    });
    s.run_until_traffic();
    s.feed(Input::Smoke {
        ok: true,
        detail: String::new(),
    });
    s.at(60).feed(Input::Tick);
    assert!(s.d.held);
    let a = s.at(70).feed(bad());
    assert_eq!(Sim::work(&a)[0], Action::SetWeight { new: 0 });
}

#[test]
fn inconclusive_steps_continue_or_roll_back_as_configured() {
    for (policy, next) in [
        (Inconclusive::Continue, Some(50)),
        (Inconclusive::Rollback, Some(0)),
    ] {
        let mut s = Sim::new(Plan {
            inconclusive: policy,
            ..canary()
        });
        s.run_until_traffic();
        s.feed(Input::Smoke {
            ok: true,
            detail: String::new(),
        });
        s.at(10).feed(few_requests());
        let a = s.at(60).feed(Input::Tick);
        assert_eq!(
            Sim::work(&a).first(),
            next.map(|new| Action::SetWeight { new }).as_ref(),
            "{policy:?}: {a:?}"
        );
        if policy == Inconclusive::Rollback {
            assert!(
                s.d.reason
                    .as_deref()
                    .is_some_and(|r| r.contains("too few requests to judge the canary (3, ")),
                "{:?}",
                s.d.reason
            );
        }
    }
}

#[test]
fn failures_before_traffic() {
    // Build fails: nothing else happens.
    let mut s = Sim::new(canary());
    s.feed(Input::Begin);
    let a = s.feed(Input::Built {
        ok: false,
        detail: "exit 101".into(),
    });
    assert_eq!(
        Sim::work(&a),
        vec![Action::Notify {
            failure: true,
            message: "build failed: exit 101".into()
        }]
    );
    assert_eq!(s.d.outcome, Some(Outcome::Failed));

    // Migration fails: no rollback of it, old release untouched.
    let mut s = Sim::new(canary());
    s.feed(Input::Begin);
    s.feed(Input::Built {
        ok: true,
        detail: String::new(),
    });
    let a = s.feed(Input::Migrated {
        ok: false,
        detail: "syntax error".into(),
    });
    assert!(!a.contains(&Action::MigrateRollback) && !a.contains(&Action::StartNew));
    assert_eq!(s.d.outcome, Some(Outcome::Failed));

    // Never ready: stop the new set, roll the migration back; weights untouched.
    let mut s = Sim::new(canary());
    s.feed(Input::Begin);
    s.feed(Input::Built {
        ok: true,
        detail: String::new(),
    });
    s.feed(Input::Migrated {
        ok: true,
        detail: String::new(),
    });
    assert!(Sim::work(&s.at(119).feed(Input::Tick)).is_empty());
    let a = s.at(120).feed(Input::Tick);
    assert_eq!(Sim::work(&a), vec![Action::StopNew]);
    let a = s.feed(Input::Stopped);
    assert_eq!(Sim::work(&a), vec![Action::MigrateRollback]);
    assert!(
        s.d.reason
            .as_deref()
            .unwrap()
            .contains("not ready within 120 s")
    );

    // Smoke fails before traffic.
    let mut s = Sim::new(Plan {
        migrate: false,
        ..canary()
    });
    s.feed(Input::Begin);
    s.feed(Input::Built {
        ok: true,
        detail: String::new(),
    });
    s.feed(Input::Ready);
    let a = s.feed(Input::Smoke {
        ok: false,
        detail: "GET /health → 500".into(),
    });
    assert_eq!(Sim::work(&a), vec![Action::StopNew]);
    assert_eq!(s.d.outcome, None, "not done before the new set stopped");
    s.feed(Input::Stopped);
    assert_eq!(s.d.outcome, Some(Outcome::RolledBack));
}

#[test]
fn blue_green_switches_atomically_keeps_warm_then_drains() {
    let mut s = Sim::new(blue_green());
    s.run_until_traffic();
    let a = s.feed(Input::Smoke {
        ok: true,
        detail: String::new(),
    });
    assert_eq!(
        Sim::work(&a),
        vec![Action::SetWeight { new: 100 }, Action::SmokeLive]
    );
    s.feed(Input::Smoke {
        ok: true,
        detail: String::new(),
    });
    assert_eq!(s.d.phase, Phase::Warm);
    // Inside the window, a failing gate switches back at once.
    let mut early = Sim {
        plan: s.plan.clone(),
        d: s.d.clone(),
        now: s.now,
        log: vec![],
    };
    let a = early.at(100).feed(bad());
    assert_eq!(Sim::work(&a)[0], Action::SetWeight { new: 0 });
    // Otherwise the window passes and the old set drains.
    s.at(200).feed(good());
    assert!(Sim::work(&s.at(299).feed(Input::Tick)).is_empty());
    assert_eq!(
        Sim::work(&s.at(300).feed(Input::Tick)),
        vec![Action::DrainOld]
    );
}

#[test]
fn approvals_pause_until_approved() {
    let mut s = Sim::new(Plan {
        require_approval: true,
        ..canary()
    });
    s.run_until_traffic();
    s.feed(Input::Smoke {
        ok: true,
        detail: String::new(),
    });
    s.at(60).feed(Input::Tick);
    let a = s.at(120).feed(Input::Tick);
    assert!(
        Sim::work(&a).is_empty(),
        "no promotion without approval: {a:?}"
    );
    assert_eq!(s.d.phase, Phase::AwaitApproval);
    assert_eq!(s.d.weight, 50);
    // Gates still run while waiting.
    s.feed(good());
    let a = s.at(4000).feed(Input::Approve { by: "alice".into() });
    assert_eq!(
        Sim::work(&a),
        vec![Action::SetWeight { new: 100 }, Action::SmokeLive]
    );

    // An approval step inside the canary.
    let plan = Plan {
        strategy: Strategy::Canary {
            steps: vec![Step {
                weight: 25,
                pause: Pause::Approval,
            }],
        },
        ..canary()
    };
    let mut s = Sim::new(plan);
    s.run_until_traffic();
    s.feed(Input::Smoke {
        ok: true,
        detail: String::new(),
    });
    assert_eq!((s.d.phase, s.d.weight), (Phase::AwaitApproval, 25));
    assert!(Sim::work(&s.at(99999).feed(Input::Tick)).is_empty());
    let a = s.feed(Input::Approve { by: "bob".into() });
    assert_eq!(
        Sim::work(&a),
        vec![Action::SetWeight { new: 100 }, Action::SmokeLive]
    );
}

#[test]
fn abort_restores_the_previous_state_in_every_phase() {
    // During build: nothing to undo.
    let mut s = Sim::new(canary());
    s.feed(Input::Begin);
    let a = s.feed(Input::Abort { by: "alice".into() });
    assert_eq!(
        Sim::work(&a),
        vec![Action::Notify {
            failure: true,
            message: "aborted by alice".into()
        }]
    );
    assert_eq!(s.d.outcome, Some(Outcome::Aborted));

    // During the migration: wait for it, then undo it.
    let mut s = Sim::new(canary());
    s.feed(Input::Begin);
    s.feed(Input::Built {
        ok: true,
        detail: String::new(),
    });
    assert!(Sim::work(&s.feed(Input::Abort { by: "alice".into() })).is_empty());
    let a = s.feed(Input::Migrated {
        ok: true,
        detail: String::new(),
    });
    assert_eq!(Sim::work(&a), vec![Action::StopNew]);
    let a = s.feed(Input::Stopped);
    assert_eq!(Sim::work(&a), vec![Action::MigrateRollback]);
    s.feed(Input::MigrationRolledBack {
        ok: true,
        detail: String::new(),
    });
    assert_eq!(s.d.outcome, Some(Outcome::Aborted));

    // Mid-canary: weight 0, stop, migration rollback.
    let mut s = Sim::new(canary());
    s.run_until_traffic();
    s.feed(Input::Smoke {
        ok: true,
        detail: String::new(),
    });
    let a = s.feed(Input::Abort { by: "alice".into() });
    assert_eq!(
        Sim::work(&a),
        vec![Action::SetWeight { new: 0 }, Action::StopNew]
    );
    let a = s.feed(Input::Stopped);
    assert_eq!(Sim::work(&a), vec![Action::MigrateRollback]);
    s.feed(Input::MigrationRolledBack {
        ok: true,
        detail: String::new(),
    });
    assert_eq!(s.d.outcome, Some(Outcome::Aborted));
}

#[test]
fn first_deploy_goes_straight_to_full_traffic_and_never_drains() {
    let mut s = Sim::new(Plan {
        has_previous: false,
        migrate: false,
        smoke: false,
        build: false,
        ..canary()
    });
    assert_eq!(Sim::work(&s.feed(Input::Begin)), vec![Action::StartNew]);
    let a = s.feed(Input::Ready);
    assert_eq!(
        Sim::work(&a),
        vec![
            Action::SetWeight { new: 100 },
            Action::Notify {
                failure: false,
                message: "deployed".into()
            }
        ]
    );
}

#[test]
fn hooks_run_around_the_deploy() {
    let mut s = Sim::new(Plan {
        pre_hook: true,
        post_hook: true,
        migrate: false,
        smoke: false,
        ..blue_green()
    });
    assert_eq!(Sim::work(&s.feed(Input::Begin)), vec![Action::RunPreHook]);
    let a = s.feed(Input::HookDone {
        ok: false,
        detail: "exit 1".into(),
    });
    assert!(notify_failure(&a));
    assert_eq!(s.d.outcome, Some(Outcome::Failed));

    let mut s = Sim::new(Plan {
        pre_hook: true,
        post_hook: true,
        migrate: false,
        smoke: false,
        ..blue_green()
    });
    s.feed(Input::Begin);
    s.feed(Input::HookDone {
        ok: true,
        detail: String::new(),
    });
    s.feed(Input::Built {
        ok: true,
        detail: String::new(),
    });
    s.feed(Input::Ready);
    s.feed(Input::Approve { by: "ops".into() }); // end the warm window now
    let a = s.feed(Input::Drained);
    assert_eq!(Sim::work(&a), vec![Action::StopOld]);
    let a = s.feed(Input::Stopped);
    assert_eq!(Sim::work(&a), vec![Action::RunPostHook]);
    s.feed(Input::HookDone {
        ok: true,
        detail: String::new(),
    });
    assert_eq!(s.d.outcome, Some(Outcome::Succeeded));
}

/// Kill -9 in each phase, then restart: the machine resumes where traffic
/// moved, rolls back where it did not, and never asks for weight on a set
/// that is stopped.
#[test]
fn resume_after_a_crash_in_every_phase_is_consistent() {
    // Drive a canary deploy and snapshot the state at each phase.
    let mut s = Sim::new(Plan {
        pre_hook: true,
        post_hook: true,
        ..canary()
    });
    let mut snapshots = vec![(s.d.phase, s.d.clone())];
    let script = vec![
        Input::Begin,
        Input::HookDone {
            ok: true,
            detail: String::new(),
        },
        Input::Built {
            ok: true,
            detail: String::new(),
        },
        Input::Migrated {
            ok: true,
            detail: String::new(),
        },
        Input::Ready,
        Input::Smoke {
            ok: true,
            detail: String::new(),
        },
        Input::Tick, // at 60 s: step 2
        Input::Tick, // at 120 s: promote → smoke live
        Input::Smoke {
            ok: true,
            detail: String::new(),
        },
        Input::Drained,
        Input::Stopped,
    ];
    for (i, input) in script.into_iter().enumerate() {
        s.at(60 * i as i64);
        s.feed(input);
        snapshots.push((s.d.phase, s.d.clone()));
    }
    let phases: Vec<Phase> = snapshots.iter().map(|(p, _)| *p).collect();
    for p in [
        Phase::PreHook,
        Phase::Build,
        Phase::Migrate,
        Phase::Start,
        Phase::SmokeDirect,
        Phase::Analyze,
        Phase::SmokeLive,
        Phase::Drain,
        Phase::StopOld,
        Phase::PostHook,
    ] {
        assert!(phases.contains(&p), "{p:?} not reached: {phases:?}");
    }
    for (phase, state) in snapshots {
        let mut d = state.clone();
        let plan = Plan {
            pre_hook: true,
            post_hook: true,
            ..canary()
        };
        let a = d.handle(&plan, Input::Resumed, 10_000 * S);
        let work = Sim::work(&a);
        match phase {
            Phase::Pending | Phase::PreHook | Phase::Build => {
                assert_eq!(d.outcome, Some(Outcome::Failed), "{phase:?}");
                assert!(!work.iter().any(|x| matches!(x, Action::SetWeight { .. })));
            }
            Phase::Migrate | Phase::Start | Phase::SmokeDirect => {
                assert!(work.contains(&Action::StopNew), "{phase:?}: {work:?}");
                assert_eq!(d.phase, Phase::RollingBack, "{phase:?}");
                // The migration's rollback runs once the new set stopped.
                let a = d.handle(&plan, Input::Stopped, 10_001 * S);
                assert_eq!(Sim::work(&a), vec![Action::MigrateRollback], "{phase:?}");
                assert!(
                    !work
                        .iter()
                        .any(|x| matches!(x, Action::SetWeight { new } if *new > 0))
                );
            }
            Phase::Analyze | Phase::SmokeLive => {
                assert_eq!(
                    work[0],
                    Action::SetWeight { new: state.weight },
                    "{phase:?}"
                );
                assert!(state.weight > 0);
                assert!(!work.contains(&Action::StopNew));
            }
            Phase::Drain => {
                assert_eq!(work, vec![Action::SetWeight { new: 100 }, Action::DrainOld])
            }
            Phase::StopOld => assert_eq!(work, vec![Action::StopOld]),
            Phase::PostHook => assert_eq!(d.outcome, Some(Outcome::Succeeded)),
            Phase::Done => assert!(work.is_empty()),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_lost_lease_ends_the_deploy_with_no_action_on_traffic() {
    let mut s = Sim::new(canary());
    s.run_until_traffic();
    s.feed(Input::Smoke {
        ok: true,
        detail: String::new(),
    });
    assert_eq!(s.d.weight, 10);
    let a = s.at(20).feed(Input::LeaseLost {
        detail: "deploy 9 by bob took the lease of hello/prod".into(),
    });
    assert_eq!(
        Sim::work(&a),
        vec![Action::Notify {
            failure: true,
            message: "stopped acting: deploy 9 by bob took the lease of hello/prod; traffic was left as it was".into()
        }],
        "no weight change, no stop: the lease's new holder owns the route now"
    );
    assert_eq!(s.d.outcome, Some(Outcome::Failed));
    assert!(s.feed(Input::Abort { by: "x".into() }).is_empty());
}

#[test]
fn huge_durations_saturate_instead_of_wrapping() {
    // A step or timeout near u64::MAX seconds never ends early through a
    // wrapped cast, and never panics.
    let mut plan = canary();
    plan.strategy = Strategy::Canary {
        steps: vec![Step {
            weight: 10,
            pause: Pause::For(Duration::MAX),
        }],
    };
    plan.ready_timeout = Duration::MAX;
    let mut s = Sim::new(plan);
    s.run_until_traffic();
    s.now = Ms::MAX - 1;
    assert!(
        Sim::work(&s.feed(Input::Tick)).is_empty(),
        "not ready yet, but not timed out: {:?}",
        s.d.phase
    );
    s.feed(Input::Smoke {
        ok: true,
        detail: String::new(),
    });
    assert_eq!(s.d.phase, Phase::Analyze);
    s.feed(good());
    s.now = Ms::MAX;
    // The step lasts Ms::MAX: only at the very end of time does it move.
    let a = s.feed(Input::Tick);
    assert!(a.iter().all(|x| !matches!(x, Action::StopNew)), "{a:?}");
    // A clock that jumps backwards does not underflow either.
    s.now = Ms::MIN;
    s.feed(Input::Tick);
}
