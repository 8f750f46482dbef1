//! Analysis gates: a set's metrics against thresholds.
//!
//! Definitions (per backend set, over the analysis window):
//! - error rate = 5xx responses / all responses;
//! - success rate = 1xx–3xx responses / all responses (so a release that
//!   answers 404 everywhere fails it even with no 5xx);
//! - p99 = the 99th percentile of response latency.
//!
//! No verdict is given before `min_requests` responses: the gates report
//! *pending*, never pass or fail on too little data. With
//! `compare_to_stable`, a gate must also hold relative to the stable set:
//! error rate at most stable's + `max_error_rate`, success rate at least
//! stable's − (1 − `min_success_rate`), p99 at most 1.5 × stable's.

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

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gates {
    pub max_error_rate: f64,
    pub min_success_rate: f64,
    pub max_p99: Duration,
    pub min_requests: u64,
    pub compare_to_stable: bool,
}

impl Default for Gates {
    /// The seeds' defaults: error rate < 1 %, success rate > 99 %, p99 < 500 ms.
    fn default() -> Self {
        Self {
            max_error_rate: 0.01,
            min_success_rate: 0.99,
            max_p99: Duration::from_millis(500),
            min_requests: 50,
            compare_to_stable: false,
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

/// Evaluates the gates on `canary` (and against `stable` when asked).
pub fn evaluate(g: &Gates, canary: &SetMetrics, stable: Option<&SetMetrics>) -> GateReport {
    let enough = canary.requests >= g.min_requests;
    let mut results = vec![GateResult {
        name: "requests".into(),
        value: format!("{}", canary.requests),
        threshold: format!(">= {}", g.min_requests),
        status: if enough {
            Status::Pass
        } else {
            Status::Pending
        },
    }];
    let judge = |ok: bool| {
        if !enough {
            Status::Pending
        } else if ok {
            Status::Pass
        } else {
            Status::Fail
        }
    };
    let stable = stable.filter(|s| g.compare_to_stable && s.requests > 0);

    let er = canary.error_rate().unwrap_or(0.0);
    let mut er_limit = g.max_error_rate;
    if let Some(s) = stable.and_then(|s| s.error_rate()) {
        er_limit = er_limit.min(s + g.max_error_rate);
    }
    results.push(GateResult {
        name: "error rate".into(),
        value: pct(er),
        threshold: format!("<= {}", pct(er_limit)),
        status: judge(er <= er_limit),
    });

    let sr = canary.success_rate().unwrap_or(0.0);
    let mut sr_limit = g.min_success_rate;
    if let Some(s) = stable.and_then(|s| s.success_rate()) {
        sr_limit = sr_limit.max(s - (1.0 - g.min_success_rate));
    }
    results.push(GateResult {
        name: "success rate".into(),
        value: pct(sr),
        threshold: format!(">= {}", pct(sr_limit)),
        status: judge(sr >= sr_limit),
    });

    let mut p99_limit = g.max_p99;
    if let Some(sp) = stable.and_then(|s| s.p99) {
        p99_limit = p99_limit.min(sp.mul_f64(1.5).max(Duration::from_millis(1)));
    }
    let (value, ok) = match canary.p99 {
        Some(p) => (ms(p), p <= p99_limit),
        None => ("-".into(), true),
    };
    results.push(GateResult {
        name: "p99 latency".into(),
        value,
        threshold: format!("<= {}", ms(p99_limit)),
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
        let g = Gates::default();
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
        assert_eq!(r.failures(), "p99 latency 300 ms (limit <= 150 ms)");
        // Without comparison it passes.
        let r = evaluate(
            &Gates::default(),
            &m(1000, 0, 1000, 300),
            Some(&m(5000, 0, 5000, 100)),
        );
        assert_eq!(r.verdict(), Status::Pass);
    }
}
