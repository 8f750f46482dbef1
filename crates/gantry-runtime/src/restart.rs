//! Restart decisions, kept pure: an exit, the policy and the time in; what
//! to do out. The supervisor does the waiting and the spawning.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashLoop {
    /// More failures than this inside `window` is a crash loop.
    pub max_restarts: u32,
    pub window: Duration,
}

/// How an instance's process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    /// Exit code 0.
    Clean,
    /// A non-zero exit code.
    Code(i32),
    /// Killed by a signal (not by us, not the OOM killer).
    Signal(i32),
    /// Killed by the kernel for exceeding its memory limit.
    OutOfMemory,
    /// Restarted by Gantry because liveness failed.
    LivenessFailed,
    /// Gone while nobody watched (e.g. died while the control plane was down).
    Vanished,
}

impl ExitReason {
    pub fn is_failure(&self) -> bool {
        !matches!(self, ExitReason::Clean)
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Clean => write!(f, "exited with code 0"),
            ExitReason::Code(c) => write!(f, "exited with code {c}"),
            ExitReason::Signal(s) => write!(f, "killed by signal {s} ({})", signal_name(*s)),
            ExitReason::OutOfMemory => write!(f, "killed by the OOM killer (memory limit)"),
            ExitReason::LivenessFailed => write!(f, "restarted: liveness probe failed"),
            ExitReason::Vanished => write!(f, "gone while the control plane was down"),
        }
    }
}

pub(crate) fn signal_name(s: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(s).map_or("unknown", |s| s.as_str())
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Start again after this delay (the `attempt`-th restart in a row).
    Restart { after: Duration, attempt: u32 },
    /// Too many failures inside the window: stop restarting.
    CrashLoop { failures: usize, window: Duration },
    /// The policy says to leave it stopped.
    Stay,
}

/// The restart rules of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRules {
    pub policy: RestartPolicy,
    pub backoff: Backoff,
    pub crash_loop: CrashLoop,
}

/// Remembers recent failures of one instance.
#[derive(Debug, Default)]
pub struct RestartTracker {
    failures: VecDeque<Instant>,
    consecutive: u32,
}

impl RestartTracker {
    /// Decides what follows an exit at `now` after the process `ran_for`.
    /// `jitter` in [0, 1) spreads restarts of many instances (±20 %).
    pub fn decide(
        &mut self,
        rules: &RestartRules,
        exit: &ExitReason,
        ran_for: Duration,
        now: Instant,
        jitter: f64,
    ) -> Decision {
        let RestartRules {
            policy,
            backoff,
            crash_loop,
        } = *rules;
        // A run longer than the crash-loop window was healthy: start over.
        if ran_for >= crash_loop.window {
            self.consecutive = 0;
        }
        let failure = exit.is_failure();
        let restart = match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failure,
            RestartPolicy::Never => false,
        };
        if failure {
            self.failures.push_back(now);
            while self
                .failures
                .front()
                .is_some_and(|t| now.duration_since(*t) > crash_loop.window)
            {
                self.failures.pop_front();
            }
        }
        if !restart {
            return Decision::Stay;
        }
        if failure && self.failures.len() > crash_loop.max_restarts as usize {
            return Decision::CrashLoop {
                failures: self.failures.len(),
                window: crash_loop.window,
            };
        }
        let exp = self.consecutive.min(20);
        let base = backoff
            .initial
            .checked_mul(1u32 << exp)
            .unwrap_or(backoff.max)
            .min(backoff.max);
        let after = base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0));
        self.consecutive += 1;
        Decision::Restart {
            after,
            attempt: self.consecutive,
        }
    }

    /// Forgets the history (a new deploy or `gantry restart`).
    pub fn reset(&mut self) {
        self.failures.clear();
        self.consecutive = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
    };
    const L: CrashLoop = CrashLoop {
        max_restarts: 3,
        window: Duration::from_secs(60),
    };

    fn r(policy: RestartPolicy, crash_loop: CrashLoop) -> RestartRules {
        RestartRules {
            policy,
            backoff: B,
            crash_loop,
        }
    }

    fn after(d: &Decision) -> Duration {
        match d {
            Decision::Restart { after, .. } => *after,
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut t = RestartTracker::default();
        let now = Instant::now();
        let big = CrashLoop {
            max_restarts: 100,
            window: Duration::from_secs(60),
        };
        let mut delays = Vec::new();
        for i in 0..7 {
            let d = t.decide(
                &r(RestartPolicy::Always, big),
                &ExitReason::Code(1),
                Duration::from_millis(10),
                now + Duration::from_secs(i),
                0.5,
            );
            delays.push(after(&d).as_millis());
        }
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for j in [0.0, 0.999] {
            let mut t = RestartTracker::default();
            let d = t.decide(
                &r(RestartPolicy::Always, L),
                &ExitReason::Code(1),
                Duration::ZERO,
                Instant::now(),
                j,
            );
            let ms = after(&d).as_millis();
            assert!((80..=120).contains(&ms), "{ms}");
        }
    }

    #[test]
    fn crash_loop_after_max_failures_inside_window() {
        let mut t = RestartTracker::default();
        let start = Instant::now();
        for i in 0..3 {
            let d = t.decide(
                &r(RestartPolicy::Always, L),
                &ExitReason::Code(1),
                Duration::ZERO,
                start + Duration::from_secs(i),
                0.5,
            );
            assert!(matches!(d, Decision::Restart { .. }), "{d:?}");
        }
        let d = t.decide(
            &r(RestartPolicy::Always, L),
            &ExitReason::Code(1),
            Duration::ZERO,
            start + Duration::from_secs(3),
            0.5,
        );
        assert_eq!(
            d,
            Decision::CrashLoop {
                failures: 4,
                window: L.window
            }
        );
    }

    #[test]
    fn failures_outside_window_are_forgotten_and_long_runs_reset_backoff() {
        let mut t = RestartTracker::default();
        let start = Instant::now();
        for i in 0..3 {
            t.decide(
                &r(RestartPolicy::Always, L),
                &ExitReason::Code(1),
                Duration::ZERO,
                start + Duration::from_secs(i * 30),
                0.5,
            );
        }
        // The first failure (t=0) is out of the window at t=90.
        let d = t.decide(
            &r(RestartPolicy::Always, L),
            &ExitReason::Code(1),
            Duration::from_secs(61),
            start + Duration::from_secs(90),
            0.5,
        );
        assert_eq!(
            after(&d),
            Duration::from_millis(100),
            "long run resets the backoff"
        );
    }

    #[test]
    fn policies() {
        let now = Instant::now();
        let mut t = RestartTracker::default();
        assert_eq!(
            t.decide(
                &r(RestartPolicy::Never, L),
                &ExitReason::Code(1),
                Duration::ZERO,
                now,
                0.5
            ),
            Decision::Stay
        );
        assert_eq!(
            t.decide(
                &r(RestartPolicy::OnFailure, L),
                &ExitReason::Clean,
                Duration::ZERO,
                now,
                0.5
            ),
            Decision::Stay
        );
        assert!(matches!(
            t.decide(
                &r(RestartPolicy::OnFailure, L),
                &ExitReason::OutOfMemory,
                Duration::ZERO,
                now,
                0.5
            ),
            Decision::Restart { .. }
        ));
        assert!(matches!(
            t.decide(
                &r(RestartPolicy::Always, L),
                &ExitReason::Clean,
                Duration::ZERO,
                now,
                0.5
            ),
            Decision::Restart { .. }
        ));
        assert_eq!(
            ExitReason::Signal(9).to_string(),
            "killed by signal 9 (SIGKILL)"
        );
    }
}
