//! Analysis gates: a set's metrics against thresholds.
//!
//! Definitions (per backend set, over the analysis window):
//! - error rate = 5xx responses / all responses;
//! - success rate = 1xx–3xx responses / all responses (so a release that
//!   answers 404 everywhere fails it even with no 5xx);
//! - p99 = the 99th percentile of response latency.
//!
//! Requests a client broke (bad framing, a body cut off, a read timeout)
//! are the client's fault: the proxy counts them apart, and they reach no
//! gate.
//!
//! No verdict is given before `min_requests` responses: the gates report
//! *pending*, never pass or fail on too little data.
//!
//! What the new set is held against ([`Baseline`]):
//! - `Stable` (the default): when the stable set was measured over the same
//!   window with at least `min_requests` responses, the new set is judged
//!   *relative* to it: error rate at most stable's + `max_error_rate`,
//!   success rate at least stable's − (1 − `min_success_rate`), p99 at most
//!   `p99_ratio` × stable's + `p99_margin`. So identical code on a busy
//!   machine, slow in both sets alike, is never rolled back. Without such a
//!   measurement (a first deploy, too little stable traffic) the absolute
//!   limits apply.
//! - `Absolute`: only the absolute limits (`max_error_rate`,
//!   `min_success_rate`, `max_p99`).
//! - `compare_to_stable` (kept from older specs): both, the tighter wins.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Requests of one backend set over the analysis window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SetMetrics {
    pub requests: u64,
    pub status_5xx: u64,
    /// 1xx, 2xx and 3xx.
    pub status_ok: u64,
    pub p99: Option<Duration>,
}

impl SetMetrics {
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.status_5xx as f64 / self.requests as f64)
    }
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.status_ok as f64 / self.requests as f64)
    }
}

/// What the new set's metrics are compared with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// The stable set over the same window when it can be measured, else
    /// the absolute limits.
    #[default]
    Stable,
    /// The absolute limits only.
    Absolute,
}

/// Plans stored before baselines existed were judged on absolute limits.
fn stored_baseline() -> Baseline {
    Baseline::Absolute
}

fn default_p99_ratio() -> f64 {
    1.5
}

fn default_p99_margin() -> Duration {
    Duration::from_millis(50)
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gates {
    pub max_error_rate: f64,
    pub min_success_rate: f64,
    pub max_p99: Duration,
    pub min_requests: u64,
    /// Both the absolute and the relative limits, the tighter winning.
    pub compare_to_stable: bool,
    #[serde(default = "stored_baseline")]
    pub baseline: Baseline,
    /// Relative p99 limit: `p99_ratio` × stable's p99 + `p99_margin`.
    #[serde(default = "default_p99_ratio")]
    pub p99_ratio: f64,
    #[serde(default = "default_p99_margin")]
    pub p99_margin: Duration,
}

impl Default for Gates {
    /// The seeds' defaults: error rate < 1 %, success rate > 99 %, p99 <
    /// 500 ms, or relative to the stable set when it is measured: at most
    /// 1 point more errors, p99 within 1.5 × stable's + 50 ms.
    fn default() -> Self {
        Self {
            max_error_rate: 0.01,
            min_success_rate: 0.99,
            max_p99: Duration::from_millis(500),
            min_requests: 50,
            compare_to_stable: false,
            baseline: Baseline::Stable,
            p99_ratio: default_p99_ratio(),
            p99_margin: default_p99_margin(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Not enough requests yet to judge.
    Pending,
}

/// One gate's current value against its threshold, for the live view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub name: String,
    /// Human: "0.4 %", "212 ms", "37 requests".
    pub value: String,
    pub threshold: String,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    pub results: Vec<GateResult>,
}

impl GateReport {
    pub fn verdict(&self) -> Status {
        if self.results.iter().any(|r| r.status == Status::Fail) {
            Status::Fail
        } else if self.results.iter().any(|r| r.status == Status::Pending) {
            Status::Pending
        } else {
            Status::Pass
        }
    }

    /// The request count the gates saw, as shown.
    pub fn requests(&self) -> &str {
        self.results
            .iter()
            .find(|r| r.name == "requests")
            .map_or("?", |r| r.value.as_str())
    }

    /// The failing gates in words, e.g. "error rate 4.2 % > 1.0 %".
    pub fn failures(&self) -> String {
        self.results
            .iter()
            .filter(|r| r.status == Status::Fail)
            .map(|r| format!("{} {} (limit {})", r.name, r.value, r.threshold))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// `d × ratio + margin`, saturating (never a panic on odd inputs).
fn scaled(d: Duration, ratio: f64, margin: Duration) -> Duration {
    let ratio = if ratio.is_finite() && ratio > 0.0 {
        ratio
    } else {
        1.0
    };
    Duration::try_from_secs_f64(d.as_secs_f64() * ratio)
        .unwrap_or(Duration::MAX)
        .saturating_add(margin)
}

/// Evaluates the gates on `canary`, against `stable` (the stable set over
/// the same window) as [`Gates::baseline`] says.
pub fn evaluate(g: &Gates, canary: &SetMetrics, stable: Option<&SetMetrics>) -> GateReport {
    // Relative limits need a stable set measured with as many requests as
    // the canary needs; until it is, the gates wait for it (they never fall
    // back to absolute limits while a stable set serves). Both absolute and
    // relative with compare_to_stable.
    let min = g.min_requests.max(1);
    let (relative, absolute, stable_short) = if g.compare_to_stable {
        (stable.filter(|s| s.requests > 0), true, None)
    } else {
        match (g.baseline, stable) {
            (Baseline::Stable, Some(s)) if s.requests >= min => (Some(s), false, None),
            (Baseline::Stable, Some(s)) => (None, true, Some(s.requests)),
            (Baseline::Stable, None) | (Baseline::Absolute, _) => (None, true, None),
        }
    };
    let enough = canary.requests >= g.min_requests && stable_short.is_none();
    let mut results = vec![GateResult {
        name: "requests".into(),
        value: format!("{}", canary.requests),
        threshold: format!(">= {}", g.min_requests),
        status: if canary.requests >= g.min_requests {
            Status::Pass
        } else {
            Status::Pending
        },
    }];
    if let Some(n) = stable_short {
        results.push(GateResult {
            name: "stable requests".into(),
            value: format!("{n}"),
            threshold: format!(">= {min}"),
            status: Status::Pending,
        });
    }
    let judge = |ok: bool| {
        if !enough {
            Status::Pending
        } else if ok {
            Status::Pass
        } else {
            Status::Fail
        }
    };

    let er = canary.error_rate().unwrap_or(0.0);
    let mut er_limit: Option<f64> = absolute.then_some(g.max_error_rate);
    let mut er_note = String::new();
    if let Some(s) = relative.and_then(|s| s.error_rate()) {
        let rel = s + g.max_error_rate;
        if er_limit.is_none_or(|a| rel < a) {
            er_note = format!(" (stable {} + {})", pct(s), pct(g.max_error_rate));
            er_limit = Some(rel);
        }
    }
    let er_limit = er_limit.unwrap_or(g.max_error_rate);
    results.push(GateResult {
        name: "error rate".into(),
        value: pct(er),
        threshold: format!("<= {}{er_note}", pct(er_limit)),
        status: judge(er <= er_limit),
    });

    let sr = canary.success_rate().unwrap_or(0.0);
    let mut sr_limit: Option<f64> = absolute.then_some(g.min_success_rate);
    let mut sr_note = String::new();
    if let Some(s) = relative.and_then(|s| s.success_rate()) {
        let rel = s - (1.0 - g.min_success_rate);
        if sr_limit.is_none_or(|a| rel > a) {
            sr_note = format!(" (stable {} − {})", pct(s), pct(1.0 - g.min_success_rate));
            sr_limit = Some(rel);
        }
    }
    let sr_limit = sr_limit.unwrap_or(g.min_success_rate);
    results.push(GateResult {
        name: "success rate".into(),
        value: pct(sr),
        threshold: format!(">= {}{sr_note}", pct(sr_limit)),
        status: judge(sr >= sr_limit),
    });

    let mut p99_limit: Option<Duration> = absolute.then_some(g.max_p99);
    let mut p99_note = String::new();
    if let Some(sp) = relative.and_then(|s| s.p99) {
        let rel = if g.compare_to_stable {
            // The older, stricter comparison: 1.5 × stable's.
            sp.mul_f64(1.5).max(Duration::from_millis(1))
        } else {
            scaled(sp, g.p99_ratio, g.p99_margin)
        };
        if p99_limit.is_none_or(|a| rel < a) {
            p99_note = if g.compare_to_stable {
                format!(" (1.5 × stable {})", ms(sp))
            } else {
                format!(
                    " ({} × stable {} + {})",
                    g.p99_ratio,
                    ms(sp),
                    ms(g.p99_margin)
                )
            };
            p99_limit = Some(rel);
        }
    }
    let p99_limit = p99_limit.unwrap_or(g.max_p99);
    let (value, ok) = match canary.p99 {
        Some(p) => (ms(p), p <= p99_limit),
        None => ("-".into(), true),
    };
    results.push(GateResult {
        name: "p99 latency".into(),
        value,
        threshold: format!("<= {}{p99_note}", ms(p99_limit)),
        status: judge(ok),
    });
    GateReport { results }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(requests: u64, s5: u64, ok: u64, p99_ms: u64) -> SetMetrics {
        SetMetrics {
            requests,
            status_5xx: s5,
            status_ok: ok,
            p99: Some(Duration::from_millis(p99_ms)),
        }
    }

    #[test]
    fn pending_until_min_requests() {
        let r = evaluate(&Gates::default(), &m(49, 49, 0, 9000), None);
        assert_eq!(r.verdict(), Status::Pending, "{r:?}");
        assert!(r.results.iter().all(|g| g.status != Status::Fail));
    }

    #[test]
    fn healthy_canary_passes_and_each_gate_can_fail_alone() {
        let g = Gates {
            baseline: Baseline::Absolute,
            ..Gates::default()
        };
        assert_eq!(
            evaluate(&g, &m(1000, 5, 995, 120), None).verdict(),
            Status::Pass
        );
        let r = evaluate(&g, &m(1000, 20, 980, 120), None);
        assert_eq!(r.verdict(), Status::Fail);
        assert_eq!(
            r.failures(),
            "error rate 2.00 % (limit <= 1.00 %); success rate 98.00 % (limit >= 99.00 %)"
        );
        // 404s everywhere: no 5xx, but the success rate catches it.
        let r = evaluate(&g, &m(1000, 0, 500, 120), None);
        assert_eq!(r.failures(), "success rate 50.00 % (limit >= 99.00 %)");
        let r = evaluate(&g, &m(1000, 0, 1000, 800), None);
        assert_eq!(r.failures(), "p99 latency 800 ms (limit <= 500 ms)");
    }

    #[test]
    fn comparison_to_stable_tightens_limits() {
        let g = Gates {
            compare_to_stable: true,
            ..Gates::default()
        };
        // Stable is fast (p99 100 ms): a canary at 300 ms passes the absolute
        // gate but not 1.5 × stable.
        let r = evaluate(&g, &m(1000, 0, 1000, 300), Some(&m(5000, 0, 5000, 100)));
        assert_eq!(
            r.failures(),
            "p99 latency 300 ms (limit <= 150 ms (1.5 × stable 100 ms))"
        );
        // Absolute only, it passes.
        let r = evaluate(
            &Gates {
                baseline: Baseline::Absolute,
                ..Gates::default()
            },
            &m(1000, 0, 1000, 300),
            Some(&m(5000, 0, 5000, 100)),
        );
        assert_eq!(r.verdict(), Status::Pass);
    }

    #[test]
    fn by_default_a_measured_stable_set_is_the_baseline() {
        let g = Gates::default();
        // A busy machine: both sets slow (p99 700 ms vs 650 ms) and a few
        // errors in both. The absolute limits would roll identical code
        // back; judged against stable it passes.
        let busy_stable = m(5000, 100, 4900, 650);
        let busy_canary = m(1000, 25, 975, 700);
        assert_eq!(
            evaluate(&g, &busy_canary, Some(&busy_stable)).verdict(),
            Status::Pass,
            "{:?}",
            evaluate(&g, &busy_canary, Some(&busy_stable))
        );
        assert_eq!(
            evaluate(
                &Gates {
                    baseline: Baseline::Absolute,
                    ..g
                },
                &busy_canary,
                Some(&busy_stable)
            )
            .verdict(),
            Status::Fail
        );
        // Worse code is still caught: p99 over 1.5 × 650 + 50 = 1025 ms, and
        // errors 1 point above stable's 2 %.
        let r = evaluate(&g, &m(1000, 0, 1000, 1100), Some(&busy_stable));
        assert_eq!(
            r.failures(),
            "p99 latency 1100 ms (limit <= 1025 ms (1.5 × stable 650 ms + 50 ms))"
        );
        let r = evaluate(&g, &m(1000, 31, 969, 600), Some(&busy_stable));
        assert!(
            r.failures()
                .starts_with("error rate 3.10 % (limit <= 3.00 %"),
            "{r:?}"
        );
        // Too little stable traffic to measure it yet: the gates wait for
        // it, rather than judge identical code on absolute limits.
        let r = evaluate(&g, &busy_canary, Some(&m(30, 0, 30, 600)));
        assert_eq!(r.verdict(), Status::Pending, "{r:?}");
        assert!(
            r.results
                .iter()
                .any(|x| x.name == "stable requests" && x.value == "30")
        );
        // No stable set (a first deploy): the absolute limits.
        assert_eq!(evaluate(&g, &busy_canary, None).verdict(), Status::Fail);
    }

    #[test]
    fn odd_ratios_and_huge_latencies_never_panic() {
        for ratio in [f64::NAN, f64::INFINITY, -1.0, 0.0, 1e300] {
            let g = Gates {
                p99_ratio: ratio,
                ..Gates::default()
            };
            let stable = SetMetrics {
                p99: Some(Duration::MAX),
                ..m(100, 0, 100, 0)
            };
            let r = evaluate(&g, &m(100, 0, 100, 10), Some(&stable));
            assert_eq!(r.verdict(), Status::Pass, "ratio {ratio}");
        }
    }

    #[test]
    fn plans_stored_before_baselines_keep_absolute_limits() {
        let old = r#"{"max_error_rate":0.01,"min_success_rate":0.99,"max_p99":{"secs":0,"nanos":500000000},"min_requests":50,"compare_to_stable":false}"#;
        let g: Gates = serde_json::from_str(old).unwrap();
        assert_eq!(
            (g.baseline, g.p99_ratio, g.p99_margin),
            (Baseline::Absolute, 1.5, Duration::from_millis(50))
        );
    }
}
