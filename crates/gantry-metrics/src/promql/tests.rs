//! Engine tests on a [`Head`] filled with known samples. Expected values
//! are worked out by hand from Prometheus's documented semantics; the
//! arithmetic is in the comments.

use super::*;
use crate::STALE_NAN_BITS;
use crate::labels::Labels;

const S: i64 = 1000;

/// `name{k="v", …}` from pairs.
fn ls(name: &str, pairs: &[(&str, &str)]) -> Labels {
    Labels::new(
        pairs
            .iter()
            .copied()
            .chain((!name.is_empty()).then_some(("__name__", name))),
    )
    .expect("valid labels")
}

/// A head with the given series; sample times in seconds.
fn head(series: &[(Labels, Vec<(i64, f64)>)]) -> Head {
    let mut h = Head::new();
    for (labels, samples) in series {
        for &(t, v) in samples {
            h.append(labels, t * S, v).expect("append");
        }
    }
    h
}

fn stale() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// The fixture most tests share:
/// - `gauge{i="a"}`: 1 at 0 s, 2 at 60 s, 3 at 120 s;
/// - `gauge{i="b"}`: 10 at 0 s, 20 at 60 s, stale at 90 s;
/// - `other{i="a", job="x"}`: 7 at 30 s.
fn fixture() -> Head {
    head(&[
        (
            ls("gauge", &[("i", "a")]),
            vec![(0, 1.0), (60, 2.0), (120, 3.0)],
        ),
        (
            ls("gauge", &[("i", "b")]),
            vec![(0, 10.0), (60, 20.0), (90, stale())],
        ),
        (ls("other", &[("i", "a"), ("job", "x")]), vec![(30, 7.0)]),
    ])
}

fn instant(h: &Head, q: &str, t: i64) -> Value {
    let expr = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
    Engine::new(h)
        .eval_instant(&expr, t)
        .unwrap_or_else(|e| panic!("{q}: {e}"))
}

/// The vector `q` gives at `t`, as (labels in Prometheus notation, value),
/// sorted by labels.
fn vector(h: &Head, q: &str, t: i64) -> Vec<(String, f64)> {
    match instant(h, q, t) {
        Value::Vector(samples) => {
            assert!(samples.iter().all(|s| s.t == t), "{q}: sample times");
            let mut out: Vec<(String, f64)> = samples
                .into_iter()
                .map(|s| (s.labels.to_string(), s.v))
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        }
        other => panic!("{q}: expected a vector, got {other:?}"),
    }
}

fn scalar(h: &Head, q: &str, t: i64) -> f64 {
    match instant(h, q, t) {
        Value::Scalar(v) => v,
        other => panic!("{q}: expected a scalar, got {other:?}"),
    }
}

fn eval_err(h: &Head, q: &str, t: i64) -> PromqlError {
    let expr = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
    match Engine::new(h).eval_instant(&expr, t) {
        Err(e) => e,
        Ok(v) => panic!("{q}: expected an error, got {v:?}"),
    }
}

fn v(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
    pairs.iter().map(|(l, v)| ((*l).to_owned(), *v)).collect()
}

/// Relative closeness, for values computed through divisions.
fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn assert_close(got: &[(String, f64)], want: &[(String, f64)]) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.0, w.0, "got {got:?}, want {want:?}");
        assert!(
            close(g.1, w.1) || (g.1.is_nan() && w.1.is_nan()),
            "got {got:?}, want {want:?}"
        );
    }
}

// === selectors ===

#[test]
fn instant_selector_takes_the_newest_sample_in_the_lookback_window() {
    let h = fixture();
    assert_eq!(vector(&h, "gauge", 150 * S), v(&[(r#"gauge{i="a"}"#, 3.0)]));
    // At 60 s both series have a sample exactly at t: included.
    assert_eq!(
        vector(&h, "gauge", 60 * S),
        v(&[(r#"gauge{i="a"}"#, 2.0), (r#"gauge{i="b"}"#, 20.0)])
    );
    assert_eq!(
        vector(&h, "gauge", 60 * S - 1),
        v(&[(r#"gauge{i="a"}"#, 1.0), (r#"gauge{i="b"}"#, 10.0)])
    );
    // The window is (t - 5m, t]: at 420 s the sample at 120 s is out.
    assert_eq!(
        vector(&h, "gauge", 420 * S - 1),
        v(&[(r#"gauge{i="a"}"#, 3.0)])
    );
    assert_eq!(vector(&h, "gauge", 420 * S), v(&[]));
    assert_eq!(vector(&h, "gauge", -1), v(&[]));
    // A shorter lookback delta: (t - 30 s, t].
    let expr = parse("gauge").expect("parse");
    let got = Engine::new(&h)
        .with_lookback_ms(30 * S)
        .eval_instant(&expr, 150 * S - 1)
        .expect("eval");
    assert!(matches!(got, Value::Vector(s) if s.len() == 1 && s[0].v == 3.0));
    let got = Engine::new(&h)
        .with_lookback_ms(30 * S)
        .eval_instant(&expr, 150 * S)
        .expect("eval");
    assert_eq!(got, Value::Vector(vec![]));
}

#[test]
fn a_staleness_marker_ends_the_series() {
    let h = fixture();
    // gauge{i="b"} went stale at 90 s.
    assert_eq!(
        vector(&h, r#"gauge{i="b"}"#, 89 * S),
        v(&[(r#"gauge{i="b"}"#, 20.0)])
    );
    assert_eq!(vector(&h, r#"gauge{i="b"}"#, 90 * S), v(&[]));
    assert_eq!(vector(&h, r#"gauge{i="b"}"#, 200 * S), v(&[]));
    // A sample after the marker revives it.
    let mut h = fixture();
    h.append(&ls("gauge", &[("i", "b")]), 100 * S, 5.0)
        .expect("append");
    assert_eq!(
        vector(&h, r#"gauge{i="b"}"#, 100 * S),
        v(&[(r#"gauge{i="b"}"#, 5.0)])
    );
}

#[test]
fn the_four_matchers() {
    let h = fixture();
    let t = 60 * S;
    assert_eq!(
        vector(&h, r#"gauge{i="a"}"#, t),
        v(&[(r#"gauge{i="a"}"#, 2.0)])
    );
    assert_eq!(
        vector(&h, r#"gauge{i!="a"}"#, t),
        v(&[(r#"gauge{i="b"}"#, 20.0)])
    );
    assert_eq!(
        vector(&h, r#"{i=~"a|b", __name__=~"g.*"}"#, t),
        v(&[(r#"gauge{i="a"}"#, 2.0), (r#"gauge{i="b"}"#, 20.0)])
    );
    // Regexes are anchored: "a" does not match "ab" and `.` is needed.
    assert_eq!(vector(&h, r#"gauge{i=~"."}"#, t).len(), 2);
    assert_eq!(vector(&h, r#"gauge{i=~"a."}"#, t), v(&[]));
    assert_eq!(
        vector(&h, r#"{i!~"b", __name__!=""}"#, t),
        v(&[(r#"gauge{i="a"}"#, 2.0), (r#"other{i="a", job="x"}"#, 7.0)])
    );
    // A missing label is the empty value.
    assert_eq!(
        vector(&h, r#"{job="", i="a"}"#, t),
        v(&[(r#"gauge{i="a"}"#, 2.0)])
    );
    assert_eq!(
        vector(&h, r#"{job=~"x|y"}"#, t),
        v(&[(r#"other{i="a", job="x"}"#, 7.0)])
    );
    // `or` between matcher groups.
    assert_eq!(
        vector(&h, r#"{job="x" or i="b"}"#, t),
        v(&[(r#"gauge{i="b"}"#, 20.0), (r#"other{i="a", job="x"}"#, 7.0)])
    );
}

#[test]
fn offset_and_at_move_the_reference_time() {
    let h = fixture();
    // At 150 s, offset 1m reads at 90 s: i="a" is 2, i="b" is stale.
    assert_eq!(
        vector(&h, "gauge offset 1m", 150 * S),
        v(&[(r#"gauge{i="a"}"#, 2.0)])
    );
    // A negative offset reads later.
    assert_eq!(
        vector(&h, "gauge offset -1m", 60 * S),
        v(&[(r#"gauge{i="a"}"#, 3.0)])
    );
    // `@ 70` reads at 70 s whatever the evaluation time; offset on top.
    assert_eq!(
        vector(&h, "gauge @ 70", 1_000 * S),
        v(&[(r#"gauge{i="a"}"#, 2.0), (r#"gauge{i="b"}"#, 20.0)])
    );
    assert_eq!(
        vector(&h, "gauge @ 70 offset 11s", 1_000 * S),
        v(&[(r#"gauge{i="a"}"#, 1.0), (r#"gauge{i="b"}"#, 10.0)])
    );
    // `@ end()` in a range query is the end at every step.
    let expr = parse(r#"gauge{i="a"} @ end()"#).expect("parse");
    let got = Engine::new(&h)
        .eval_range(&expr, 0, 120 * S, 60 * S)
        .expect("eval");
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].samples,
        vec![(0, 3.0), (60 * S, 3.0), (120 * S, 3.0)]
    );
    let expr = parse(r#"gauge{i="a"} @ start()"#).expect("parse");
    let got = Engine::new(&h)
        .eval_range(&expr, 60 * S, 120 * S, 60 * S)
        .expect("eval");
    assert_eq!(got[0].samples, vec![(60 * S, 2.0), (120 * S, 2.0)]);
}

#[test]
fn range_selector_takes_the_left_open_window_without_markers() {
    let h = fixture();
    // (0, 120 s]: the sample at 0 s is out.
    match instant(&h, r#"gauge[2m]"#, 120 * S) {
        Value::Matrix(series) => {
            assert_eq!(series.len(), 2);
            assert_eq!(series[0].labels, ls("gauge", &[("i", "a")]));
            assert_eq!(series[0].samples, vec![(60 * S, 2.0), (120 * S, 3.0)]);
            // The staleness marker at 90 s is not a sample of the range.
            assert_eq!(series[1].samples, vec![(60 * S, 20.0)]);
        }
        other => panic!("{other:?}"),
    }
    // offset: (0, 60 s] at 120 s minus 1m.
    match instant(&h, r#"gauge{i="a"}[1m] offset 1m"#, 120 * S) {
        Value::Matrix(series) => assert_eq!(series[0].samples, vec![(60 * S, 2.0)]),
        other => panic!("{other:?}"),
    }
    // A range with no samples gives no series.
    assert_eq!(
        instant(&h, r#"gauge{i="b"}[10s]"#, 100 * S),
        Value::Matrix(vec![])
    );
}

#[test]
fn literals_parentheses_and_unary_minus() {
    let h = fixture();
    assert_eq!(scalar(&h, "1.5", 0), 1.5);
    assert_eq!(scalar(&h, "-(2)", 0), -2.0);
    assert_eq!(scalar(&h, "0x10", 0), 16.0);
    assert_eq!(scalar(&h, "1e3", 0), 1000.0);
    assert!(scalar(&h, "NaN", 0).is_nan());
    assert_eq!(scalar(&h, "-Inf", 0), f64::NEG_INFINITY);
    assert_eq!(instant(&h, r#""a\nb""#, 0), Value::String("a\nb".into()));
    assert_eq!(
        vector(&h, "((gauge))", 150 * S),
        v(&[(r#"gauge{i="a"}"#, 3.0)])
    );
    // Unary minus drops the metric name.
    assert_eq!(vector(&h, "-gauge", 150 * S), v(&[(r#"{i="a"}"#, -3.0)]));
    assert_eq!(vector(&h, "--gauge", 150 * S), v(&[(r#"{i="a"}"#, 3.0)]));
    // …and two series left with the same labels are an error.
    let h2 = head(&[
        (ls("a", &[("i", "1")]), vec![(0, 1.0)]),
        (ls("b", &[("i", "1")]), vec![(0, 2.0)]),
    ]);
    assert!(matches!(
        eval_err(&h2, r#"-{i="1"}"#, 0),
        PromqlError::DuplicateLabelset { labels } if labels == r#"{i="1"}"#
    ));
}

#[test]
fn range_queries_step_through_the_instants() {
    let h = fixture();
    let expr = parse("gauge").expect("parse");
    let got = Engine::new(&h)
        .eval_range(&expr, 0, 180 * S, 60 * S)
        .expect("eval");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].labels, ls("gauge", &[("i", "a")]));
    assert_eq!(
        got[0].samples,
        vec![(0, 1.0), (60 * S, 2.0), (120 * S, 3.0), (180 * S, 3.0)]
    );
    // i="b" ends at its staleness marker.
    assert_eq!(got[1].samples, vec![(0, 10.0), (60 * S, 20.0)]);
    // A scalar is one series without labels.
    let expr = parse("2.5").expect("parse");
    let got = Engine::new(&h)
        .eval_range(&expr, 0, 20 * S, 10 * S)
        .expect("eval");
    assert_eq!(
        got,
        vec![Series {
            labels: Labels::empty(),
            samples: vec![(0, 2.5), (10 * S, 2.5), (20 * S, 2.5)]
        }]
    );
    let engine = Engine::new(&h);
    let range_err = |q: &str, start, end, step| {
        let expr = parse(q).expect("parse");
        match engine.eval_range(&expr, start, end, step) {
            Err(PromqlError::InvalidRange(msg)) => msg,
            other => panic!("{q}: {other:?}"),
        }
    };
    assert!(range_err("gauge[1m]", 0, 60 * S, S).contains("matrix"));
    assert!(range_err(r#""s""#, 0, 60 * S, S).contains("string"));
    assert!(range_err("gauge", 0, 60 * S, 0).contains("step"));
    assert!(range_err("gauge", 60 * S, 0, S).contains("before start"));
    assert!(range_err("gauge", 0, 11_000 * S, S).contains("11000"));
    // The extremes of i64 neither overflow nor loop forever.
    let expr = parse("gauge offset 1m").expect("parse");
    let got = engine
        .eval_range(&expr, i64::MAX - 10, i64::MAX, 5)
        .expect("eval");
    assert!(got.is_empty());
    let got = engine.eval_instant(&expr, i64::MIN).expect("eval");
    assert_eq!(got, Value::Vector(vec![]));
}

// === functions ===

/// Counters and gauges for the functions, samples every 10 s:
/// - `c{k="up"}`: 100, 110, 120, 130, 140, 150 at 10 … 60 s;
/// - `c{k="reset"}`: 100, 110, 5, 15, 25, 35 at 10 … 60 s (a reset at 30 s);
/// - `c{k="young"}`: 1, 11, 21 at 40, 50, 60 s;
/// - `c{k="ends"}`: 100, 110, 120 at 10, 20, 30 s;
/// - `c{k="one"}`: 5 at 60 s;
/// - `temp{room="a"}`: 3, 1, 4, 1, 5 at 10 … 50 s;
/// - `neg{a="x"}`: −2.5 at 10 s; `frac`: 2.71234 at 10 s.
fn counters() -> Head {
    let every_10s = |vals: &[f64], from: i64| -> Vec<(i64, f64)> {
        vals.iter()
            .enumerate()
            .map(|(i, &v)| (from + 10 * i as i64, v))
            .collect()
    };
    head(&[
        (
            ls("c", &[("k", "up")]),
            every_10s(&[100.0, 110.0, 120.0, 130.0, 140.0, 150.0], 10),
        ),
        (
            ls("c", &[("k", "reset")]),
            every_10s(&[100.0, 110.0, 5.0, 15.0, 25.0, 35.0], 10),
        ),
        (
            ls("c", &[("k", "young")]),
            every_10s(&[1.0, 11.0, 21.0], 40),
        ),
        (
            ls("c", &[("k", "ends")]),
            every_10s(&[100.0, 110.0, 120.0], 10),
        ),
        (ls("c", &[("k", "one")]), vec![(60, 5.0)]),
        (
            ls("temp", &[("room", "a")]),
            every_10s(&[3.0, 1.0, 4.0, 1.0, 5.0], 10),
        ),
        (ls("neg", &[("a", "x")]), vec![(10, -2.5)]),
        (ls("frac", &[]), vec![(10, 2.71234)]),
    ])
}

#[test]
fn rate_increase_and_delta_extrapolate_like_prometheus() {
    let h = counters();
    let t = 65 * S; // window (5 s, 65 s]
    // k="up": samples 10…60 s, change 50 over 50 s; 5 s to either end is
    // under 1.1 × the 10 s average, so both ends extrapolate fully:
    // 50 × (50 + 5 + 5) / 50 = 60; rate 60 / 60 s = 1.
    // k="reset": 35 − 100 + 110 (the reset) = 45, × 1.2 = 54; rate 0.9.
    // k="young": 40…60 s, change 20; 35 s to the start is over the
    // threshold, so half an interval (5 s), but the zero point is only
    // 20 × 1/20 = 1 s back: 20 × (20 + 1 + 5) / 20 = 26; rate 26/60.
    // k="ends": 10…30 s, change 20; 35 s to the end → 5 s:
    // 20 × (20 + 5 + 5) / 20 = 30; rate 0.5.
    // k="one": a single sample, no result.
    assert_close(
        &vector(&h, "increase(c[1m])", t),
        &v(&[
            (r#"{k="ends"}"#, 30.0),
            (r#"{k="reset"}"#, 54.0),
            (r#"{k="up"}"#, 60.0),
            (r#"{k="young"}"#, 26.0),
        ]),
    );
    assert_close(
        &vector(&h, "rate(c[1m])", t),
        &v(&[
            (r#"{k="ends"}"#, 0.5),
            (r#"{k="reset"}"#, 0.9),
            (r#"{k="up"}"#, 1.0),
            (r#"{k="young"}"#, 26.0 / 60.0),
        ]),
    );
    // delta takes no resets and no zero point: k="reset" is
    // (35 − 100) × 1.2 = −78; k="young" (20 + 5 + 5) / 20 × 20 = 30.
    assert_close(
        &vector(&h, r#"delta(c{k=~"reset|young"}[1m])"#, t),
        &v(&[(r#"{k="reset"}"#, -78.0), (r#"{k="young"}"#, 30.0)]),
    );
    // offset moves the window: at 85 s offset 20 s it is again (5, 65].
    assert_close(
        &vector(&h, r#"rate(c{k="up"}[1m] offset 20s)"#, 85 * S),
        &v(&[(r#"{k="up"}"#, 1.0)]),
    );
}

#[test]
fn irate_and_idelta_use_the_last_two_samples() {
    let h = counters();
    // k="up" at 65 s: (150 − 140) / 10 s.
    assert_close(
        &vector(&h, r#"irate(c{k="up"}[1m])"#, 65 * S),
        &v(&[(r#"{k="up"}"#, 1.0)]),
    );
    // k="reset" at 35 s: 110 → 5 is a reset, so the increase is 5: 0.5/s.
    assert_close(
        &vector(&h, r#"irate(c{k="reset"}[1m])"#, 35 * S),
        &v(&[(r#"{k="reset"}"#, 0.5)]),
    );
    assert_close(
        &vector(&h, r#"idelta(c{k="reset"}[1m])"#, 35 * S),
        &v(&[(r#"{k="reset"}"#, -105.0)]),
    );
    assert_eq!(vector(&h, r#"irate(c{k="one"}[1m])"#, 65 * S), v(&[]));
}

#[test]
fn over_time_functions() {
    let h = counters();
    let t = 50 * S; // temp: 3, 1, 4, 1, 5
    let one = |q: &str| {
        let got = vector(&h, q, t);
        assert_eq!(got.len(), 1, "{q}: {got:?}");
        assert_eq!(got[0].0, r#"{room="a"}"#, "{q}");
        got[0].1
    };
    assert_eq!(one("avg_over_time(temp[1m])"), 2.8);
    assert_eq!(one("min_over_time(temp[1m])"), 1.0);
    assert_eq!(one("max_over_time(temp[1m])"), 5.0);
    assert_eq!(one("sum_over_time(temp[1m])"), 14.0);
    assert_eq!(one("count_over_time(temp[1m])"), 5.0);
    // Sorted 1, 1, 3, 4, 5: rank 0.5 × 4 = 2 → 3; rank 3.6 → 4 × 0.4 + 5 × 0.6.
    assert_eq!(one("quantile_over_time(0.5, temp[1m])"), 3.0);
    assert!(close(one("quantile_over_time(0.9, temp[1m])"), 4.6));
    assert_eq!(one("quantile_over_time(2, temp[1m])"), f64::INFINITY);
    // Mean 2.8; squared deviations 0.04 + 3.24 + 1.44 + 3.24 + 4.84 = 12.8.
    assert!(close(one("stdvar_over_time(temp[1m])"), 2.56));
    assert!(close(one("stddev_over_time(temp[1m])"), 1.6));
    assert_eq!(one("changes(temp[1m])"), 4.0);
    assert_eq!(one("resets(temp[1m])"), 2.0);
    assert_eq!(one("present_over_time(temp[1m])"), 1.0);
    // (20 s, 50 s]: 4, 1, 5.
    assert_eq!(one("min_over_time(temp[30s])"), 1.0);
    assert!(close(one("avg_over_time(temp[30s])"), 10.0 / 3.0));
    // last_over_time keeps the name.
    assert_eq!(
        vector(&h, "last_over_time(temp[1m])", t),
        v(&[(r#"temp{room="a"}"#, 5.0)])
    );
    assert_eq!(vector(&h, "absent_over_time(temp[1m])", t), v(&[]));
    assert_eq!(
        vector(&h, r#"absent_over_time(nope{job="j"}[1m])"#, t),
        v(&[(r#"{job="j"}"#, 1.0)])
    );
}

#[test]
fn max_and_min_over_time_skip_nan_unless_all_nan() {
    let h = head(&[
        (
            ls("g", &[("s", "mixed")]),
            vec![(10, f64::NAN), (20, 2.0), (30, f64::NAN)],
        ),
        (ls("g", &[("s", "nan")]), vec![(10, f64::NAN)]),
    ]);
    let got = vector(&h, "max_over_time(g[1m])", 30 * S);
    assert_eq!(got[0], (r#"{s="mixed"}"#.to_owned(), 2.0));
    assert!(got[1].1.is_nan());
    let got = vector(&h, "min_over_time(g[1m])", 30 * S);
    assert_eq!(got[0], (r#"{s="mixed"}"#.to_owned(), 2.0));
}

#[test]
fn math_and_clamp() {
    let h = counters();
    let t = 30 * S;
    assert_eq!(vector(&h, "abs(neg)", t), v(&[(r#"{a="x"}"#, 2.5)]));
    assert_eq!(vector(&h, "ceil(neg)", t), v(&[(r#"{a="x"}"#, -2.0)]));
    assert_eq!(vector(&h, "floor(neg)", t), v(&[(r#"{a="x"}"#, -3.0)]));
    // Ties round up: −2.5 → −2.
    assert_eq!(vector(&h, "round(neg)", t), v(&[(r#"{a="x"}"#, -2.0)]));
    assert_eq!(vector(&h, "round(frac, 0.01)", t), v(&[("{}", 2.71)]));
    assert_eq!(vector(&h, "round(frac, 2)", t), v(&[("{}", 2.0)]));
    assert_eq!(
        vector(&h, "clamp(neg, -1, 1)", t),
        v(&[(r#"{a="x"}"#, -1.0)])
    );
    assert_eq!(
        vector(&h, "clamp_min(neg, 0)", t),
        v(&[(r#"{a="x"}"#, 0.0)])
    );
    assert_eq!(
        vector(&h, "clamp_max(neg, -3)", t),
        v(&[(r#"{a="x"}"#, -3.0)])
    );
    assert_eq!(vector(&h, "clamp(neg, 2, 1)", t), v(&[]));
    assert_eq!(vector(&h, "sgn(neg)", t), v(&[(r#"{a="x"}"#, -1.0)]));
}

#[test]
fn scalar_vector_time_timestamp_absent() {
    let h = counters();
    let t = 30 * S;
    assert_eq!(scalar(&h, "scalar(neg)", t), -2.5);
    assert!(scalar(&h, "scalar(c)", t).is_nan()); // several series
    assert!(scalar(&h, "scalar(nope)", t).is_nan());
    assert_eq!(vector(&h, "vector(3)", t), v(&[("{}", 3.0)]));
    assert_eq!(vector(&h, "vector(time())", t), v(&[("{}", 30.0)]));
    assert_eq!(scalar(&h, "time()", 65_500), 65.5);
    // The sample of neg is from 10 s.
    assert_eq!(vector(&h, "timestamp(neg)", t), v(&[(r#"{a="x"}"#, 10.0)]));
    assert_eq!(
        vector(&h, "timestamp(abs(neg))", t),
        v(&[(r#"{a="x"}"#, 30.0)])
    );
    assert_eq!(vector(&h, "absent(neg)", t), v(&[]));
    assert_eq!(vector(&h, "absent(nope)", t), v(&[("{}", 1.0)]));
    // Only `=` matchers give labels, and a label matched twice gives none.
    assert_eq!(
        vector(&h, r#"absent(nope{job="a", x=~"y", k="1", k="2"})"#, t),
        v(&[(r#"{job="a"}"#, 1.0)])
    );
}

/// Classic histogram buckets, at 10 s:
/// - job="api": le 0.1 → 10, 0.5 → 30, 1 → 40, +Inf → 50;
/// - job="bad": le 0.1 → 10, 0.5 → 8 (falls), +Inf → 20;
/// - job="noinf": le 1 → 5;
/// - job="neg": le −1 → 4, 1 → 8, +Inf → 8.
fn histograms() -> Head {
    let bucket = |job: &str, le: &str, v: f64| {
        (ls("lat_bucket", &[("job", job), ("le", le)]), vec![(10, v)])
    };
    head(&[
        bucket("api", "0.1", 10.0),
        bucket("api", "0.5", 30.0),
        bucket("api", "1", 40.0),
        bucket("api", "+Inf", 50.0),
        bucket("bad", "0.1", 10.0),
        bucket("bad", "0.5", 8.0),
        bucket("bad", "+Inf", 20.0),
        bucket("noinf", "1", 5.0),
        bucket("neg", "-1", 4.0),
        bucket("neg", "1", 8.0),
        bucket("neg", "+Inf", 8.0),
    ])
}

#[test]
fn histogram_quantile_interpolates_within_buckets() {
    let h = histograms();
    let t = 20 * S;
    let q = |phi: &str, job: &str| {
        let got = vector(
            &h,
            &format!(r#"histogram_quantile({phi}, lat_bucket{{job="{job}"}})"#),
            t,
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, format!(r#"{{job="{job}"}}"#));
        got[0].1
    };
    // api: 50 observations. φ=0.5 → rank 25, in (0.1, 0.5] holding 20 of
    // them, 15 in: 0.1 + 0.4 × 15/20 = 0.4.
    assert!(close(q("0.5", "api"), 0.4));
    // φ=0.1 → rank 5 in the first bucket, from 0: 0.1 × 5/10.
    assert!(close(q("0.1", "api"), 0.05));
    // φ=0.9 → rank 45, past the last finite bucket: its bound, 1.
    assert_eq!(q("0.9", "api"), 1.0);
    assert_eq!(q("0", "api"), 0.0);
    assert_eq!(q("1", "api"), 1.0);
    assert_eq!(q("1.5", "api"), f64::INFINITY);
    assert_eq!(q("-1", "api"), f64::NEG_INFINITY);
    assert!(q("NaN", "api").is_nan());
    // bad: counts forced monotonic to 10, 10, 20. φ=0.5 → rank 10 → the
    // first bucket: 0.1 × 10/10; φ=0.75 → rank 15 → +Inf → 0.5.
    assert!(close(q("0.5", "bad"), 0.1));
    assert_eq!(q("0.75", "bad"), 0.5);
    // noinf: no +Inf bucket → NaN.
    assert!(q("0.5", "noinf").is_nan());
    // neg: a first bucket bound ≤ 0 is returned as is; φ=0.75 → rank 6
    // in (−1, 1]: −1 + 2 × 2/4 = 0.
    assert_eq!(q("0.25", "neg"), -1.0);
    assert!(close(q("0.75", "neg"), 0.0));
    // All jobs at once, grouped without le and the name.
    assert_eq!(
        vector(&h, "histogram_quantile(0.5, lat_bucket)", t).len(),
        4
    );
}

#[test]
fn bucket_quantile_merges_equal_bounds_and_float_noise() {
    use super::functions::bucket_quantile;
    // Two buckets with bound 1 add up: 0.5 → 3, 1 → 4 + 2, +Inf → 6.
    // φ=0.5 → rank 3 → (0, 0.5]: 0.5.
    let merged = bucket_quantile(
        0.5,
        vec![(1.0, 4.0), (0.5, 3.0), (1.0, 2.0), (f64::INFINITY, 6.0)],
    );
    // After merging: 0.5 → 3, 1 → 6, +Inf → 6: rank 3 → 0.5 × 3/3.
    assert_eq!(merged, 0.5);
    // 1e-13 below the previous count is noise, not a fall.
    let noisy = bucket_quantile(
        0.5,
        vec![(1.0, 10.0), (2.0, 10.0 - 1e-12), (f64::INFINITY, 20.0)],
    );
    assert_eq!(noisy, 1.0 * 10.0 / 10.0);
    // Only +Inf: fewer than two buckets.
    assert!(bucket_quantile(0.5, vec![(f64::INFINITY, 3.0)]).is_nan());
    // No observations.
    assert!(bucket_quantile(0.5, vec![(1.0, 0.0), (f64::INFINITY, 0.0)]).is_nan());
    assert!(bucket_quantile(0.5, vec![]).is_nan());
}

#[test]
fn function_errors_are_typed() {
    let h = counters();
    let h2 = head(&[
        (ls("a", &[("i", "1")]), vec![(0, 1.0)]),
        (ls("b", &[("i", "1")]), vec![(0, 2.0)]),
    ]);
    assert!(matches!(
        eval_err(&h2, r#"abs({i="1"})"#, 0),
        PromqlError::DuplicateLabelset { .. }
    ));
    assert!(matches!(
        eval_err(&h, "day_of_month(c)", 0),
        PromqlError::Unsupported(f) if f.contains("day_of_month")
    ));
    assert!(matches!(
        eval_err(&h, "temp[1y:1s]", 0),
        PromqlError::InvalidArgument { function, .. } if function == "subquery"
    ));
}

// === aggregations ===

/// At 10 s:
/// - `req{job="api", inst="1", code="200"}` 10, `{api, 2, 200}` 20,
///   `{api, 1, 500}` 1, `{db, 1, 200}` 5, `{db, 2, 200}` 7;
/// - `errors{job="api", inst="1"}` 2, `{api, 2}` 4;
/// - `total{job="api", inst="1"}` 10, `{api, 2}` 40, `{db, 1}` 5;
/// - `team_info{job="api", team="core"}` 1.
fn services() -> Head {
    let at10 = |name: &str, pairs: &[(&str, &str)], v: f64| (ls(name, pairs), vec![(10, v)]);
    head(&[
        at10(
            "req",
            &[("job", "api"), ("inst", "1"), ("code", "200")],
            10.0,
        ),
        at10(
            "req",
            &[("job", "api"), ("inst", "2"), ("code", "200")],
            20.0,
        ),
        at10(
            "req",
            &[("job", "api"), ("inst", "1"), ("code", "500")],
            1.0,
        ),
        at10("req", &[("job", "db"), ("inst", "1"), ("code", "200")], 5.0),
        at10("req", &[("job", "db"), ("inst", "2"), ("code", "200")], 7.0),
        at10("errors", &[("job", "api"), ("inst", "1")], 2.0),
        at10("errors", &[("job", "api"), ("inst", "2")], 4.0),
        at10("total", &[("job", "api"), ("inst", "1")], 10.0),
        at10("total", &[("job", "api"), ("inst", "2")], 40.0),
        at10("total", &[("job", "db"), ("inst", "1")], 5.0),
        at10("team_info", &[("job", "api"), ("team", "core")], 1.0),
    ])
}

#[test]
fn sum_avg_min_max_count_with_by_and_without() {
    let h = services();
    let t = 20 * S;
    assert_eq!(vector(&h, "sum(req)", t), v(&[("{}", 43.0)]));
    assert_eq!(
        vector(&h, "sum by (job) (req)", t),
        v(&[(r#"{job="api"}"#, 31.0), (r#"{job="db"}"#, 12.0)])
    );
    assert_eq!(
        vector(&h, "sum(req) by (job)", t),
        v(&[(r#"{job="api"}"#, 31.0), (r#"{job="db"}"#, 12.0)])
    );
    // without drops the name too.
    assert_eq!(
        vector(&h, "sum without (inst) (req)", t),
        v(&[
            (r#"{code="200", job="api"}"#, 30.0),
            (r#"{code="200", job="db"}"#, 12.0),
            (r#"{code="500", job="api"}"#, 1.0),
        ])
    );
    // by a label some series lack: they group under its absence.
    assert_eq!(
        vector(&h, "count by (code) ({job=~\".+\"})", t),
        v(&[
            (r#"{code="200"}"#, 4.0),
            (r#"{code="500"}"#, 1.0),
            ("{}", 6.0), // errors, total, team_info
        ])
    );
    assert_close(
        &vector(&h, "avg by (job) (req)", t),
        &v(&[(r#"{job="api"}"#, 31.0 / 3.0), (r#"{job="db"}"#, 6.0)]),
    );
    assert_eq!(
        vector(&h, "min by (job) (req)", t),
        v(&[(r#"{job="api"}"#, 1.0), (r#"{job="db"}"#, 5.0)])
    );
    assert_eq!(
        vector(&h, "max by (job) (req)", t),
        v(&[(r#"{job="api"}"#, 20.0), (r#"{job="db"}"#, 7.0)])
    );
    assert_eq!(
        vector(&h, "group by (job) (req)", t),
        v(&[(r#"{job="api"}"#, 1.0), (r#"{job="db"}"#, 1.0)])
    );
    // by (__name__) keeps the name.
    assert_eq!(
        vector(&h, "count by (__name__) (req)", t),
        v(&[("req", 5.0)])
    );
    assert_eq!(vector(&h, "sum(nope)", t), v(&[]));
}

#[test]
fn stddev_stdvar_and_quantile() {
    let h = services();
    let t = 20 * S;
    // api: 10, 20, 1: E[x²] − E[x]² = 501/3 − 961/9 = 542/9. db: 5, 7 → 1.
    assert_close(
        &vector(&h, "stdvar by (job) (req)", t),
        &v(&[(r#"{job="api"}"#, 542.0 / 9.0), (r#"{job="db"}"#, 1.0)]),
    );
    assert_close(
        &vector(&h, "stddev by (job) (req)", t),
        &v(&[
            (r#"{job="api"}"#, (542.0f64 / 9.0).sqrt()),
            (r#"{job="db"}"#, 1.0),
        ]),
    );
    // Sorted 1, 5, 7, 10, 20: rank 0.5 × 4 = 2 → 7.
    assert_eq!(vector(&h, "quantile(0.5, req)", t), v(&[("{}", 7.0)]));
    // api 1, 10, 20 → 10; db 5, 7, rank 0.5 → 6.
    assert_eq!(
        vector(&h, "quantile by (job) (0.5, req)", t),
        v(&[(r#"{job="api"}"#, 10.0), (r#"{job="db"}"#, 6.0)])
    );
    assert_eq!(
        vector(&h, "quantile(-0.5, req)", t),
        v(&[("{}", f64::NEG_INFINITY)])
    );
}

#[test]
fn topk_and_bottomk_keep_whole_samples() {
    let h = services();
    let t = 20 * S;
    // Largest first, labels whole (the name too).
    let got = match instant(&h, "topk(2, req)", t) {
        Value::Vector(s) => s,
        other => panic!("{other:?}"),
    };
    let got: Vec<(String, f64)> = got
        .into_iter()
        .map(|s| (s.labels.to_string(), s.v))
        .collect();
    assert_eq!(
        got,
        v(&[
            (r#"req{code="200", inst="2", job="api"}"#, 20.0),
            (r#"req{code="200", inst="1", job="api"}"#, 10.0),
        ])
    );
    assert_eq!(
        vector(&h, "topk by (job) (1, req)", t),
        v(&[
            (r#"req{code="200", inst="2", job="api"}"#, 20.0),
            (r#"req{code="200", inst="2", job="db"}"#, 7.0),
        ])
    );
    assert_eq!(
        vector(&h, "bottomk by (job) (1, req)", t),
        v(&[
            (r#"req{code="200", inst="1", job="db"}"#, 5.0),
            (r#"req{code="500", inst="1", job="api"}"#, 1.0),
        ])
    );
    assert_eq!(vector(&h, "topk(0, req)", t), v(&[]));
    assert_eq!(vector(&h, "topk(10, req)", t).len(), 5);
    // 1.9 is taken as 1.
    assert_eq!(vector(&h, "bottomk(1.9, req)", t).len(), 1);
}

#[test]
fn aggregations_skip_nan_for_min_and_max_and_sort_it_last() {
    let h = head(&[
        (ls("g", &[("s", "a")]), vec![(10, f64::NAN)]),
        (ls("g", &[("s", "b")]), vec![(10, 3.0)]),
        (ls("g", &[("s", "c")]), vec![(10, 1.0)]),
    ]);
    let t = 10 * S;
    assert_eq!(vector(&h, "max(g)", t), v(&[("{}", 3.0)]));
    assert_eq!(vector(&h, "min(g)", t), v(&[("{}", 1.0)]));
    assert!(vector(&h, "sum(g)", t)[0].1.is_nan());
    assert_eq!(vector(&h, "topk(1, g)", t), v(&[(r#"g{s="b"}"#, 3.0)]));
    assert_eq!(vector(&h, "bottomk(1, g)", t), v(&[(r#"g{s="c"}"#, 1.0)]));
    assert!(matches!(
        eval_err(&h, "topk(NaN, g)", t),
        PromqlError::InvalidArgument { .. }
    ));
    assert!(matches!(
        eval_err(&h, r#"count_values("v", g)"#, t),
        PromqlError::Unsupported(_)
    ));
}

// === binary operators ===

#[test]
fn scalar_arithmetic_and_comparison() {
    let h = services();
    assert_eq!(scalar(&h, "1 + 2 * 3", 0), 7.0);
    assert_eq!(scalar(&h, "(1 + 2) * 3", 0), 9.0);
    // ^ is right-associative: 2 ^ 9.
    assert_eq!(scalar(&h, "2 ^ 3 ^ 2", 0), 512.0);
    assert_eq!(scalar(&h, "7 % 3", 0), 1.0);
    assert_eq!(scalar(&h, "-7 % 3", 0), -1.0);
    assert_eq!(scalar(&h, "1 / 0", 0), f64::INFINITY);
    assert!(scalar(&h, "0 / 0", 0).is_nan());
    assert_eq!(scalar(&h, "1 atan2 1", 0), 1f64.atan2(1.0));
    assert_eq!(scalar(&h, "5 > bool 3", 0), 1.0);
    assert_eq!(scalar(&h, "5 <= bool 3", 0), 0.0);
    assert_eq!(scalar(&h, "NaN == bool NaN", 0), 0.0);
    assert_eq!(scalar(&h, "NaN != bool NaN", 0), 0.0);
    assert_eq!(scalar(&h, "time() - 10", 30 * S), 20.0);
}

#[test]
fn vector_and_scalar() {
    let h = services();
    let t = 20 * S;
    // Arithmetic drops the name.
    assert_eq!(
        vector(&h, r#"req{code="500"} * 2"#, t),
        v(&[(r#"{code="500", inst="1", job="api"}"#, 2.0)])
    );
    assert_eq!(
        vector(&h, r#"2 - req{code="500"}"#, t),
        v(&[(r#"{code="500", inst="1", job="api"}"#, 1.0)])
    );
    // A comparison filters and keeps names and the vector's values,
    // whichever side the scalar is on.
    let over_6 = v(&[
        (r#"req{code="200", inst="1", job="api"}"#, 10.0),
        (r#"req{code="200", inst="2", job="api"}"#, 20.0),
        (r#"req{code="200", inst="2", job="db"}"#, 7.0),
    ]);
    assert_eq!(vector(&h, "req > 6", t), over_6);
    assert_eq!(vector(&h, "6 < req", t), over_6);
    // bool keeps every sample as 0 or 1 and drops the name.
    assert_eq!(
        vector(&h, r#"req{job="db"} > bool 6"#, t),
        v(&[
            (r#"{code="200", inst="1", job="db"}"#, 0.0),
            (r#"{code="200", inst="2", job="db"}"#, 1.0),
        ])
    );
    assert_eq!(vector(&h, r#"sum(req) / 43"#, t), v(&[("{}", 1.0)]));
}

#[test]
fn vector_matching_one_to_one() {
    let h = services();
    let t = 20 * S;
    // errors and total match on {job, inst}; total{db} has no partner.
    assert_close(
        &vector(&h, "errors / total", t),
        &v(&[
            (r#"{inst="1", job="api"}"#, 0.2),
            (r#"{inst="2", job="api"}"#, 0.1),
        ]),
    );
    // A comparison keeps the left side (with its name).
    assert_eq!(
        vector(&h, "total > errors", t),
        v(&[
            (r#"total{inst="1", job="api"}"#, 10.0),
            (r#"total{inst="2", job="api"}"#, 40.0),
        ])
    );
    assert_eq!(vector(&h, "errors > total", t), v(&[]));
    assert_eq!(
        vector(&h, "errors < bool total", t),
        v(&[
            (r#"{inst="1", job="api"}"#, 1.0),
            (r#"{inst="2", job="api"}"#, 1.0)
        ])
    );
    // on() keeps only those labels in the result; ignoring() drops them.
    assert_eq!(
        vector(&h, r#"errors{inst="1"} + on(job) total{inst="2"}"#, t),
        v(&[(r#"{job="api"}"#, 42.0)])
    );
    assert_eq!(
        vector(
            &h,
            r#"errors{inst="1"} + ignoring(inst) total{inst="2"}"#,
            t
        ),
        v(&[(r#"{job="api"}"#, 42.0)])
    );
    // An empty side gives nothing, not an error.
    assert_eq!(vector(&h, "nope + on(job) total", t), v(&[]));
}

#[test]
fn vector_matching_many_to_one_and_one_to_many() {
    let h = services();
    let t = 20 * S;
    // Each request count over its job's total: api 31, db 12.
    assert_close(
        &vector(
            &h,
            r#"req{job="api"} / on(job) group_left sum by (job) (req)"#,
            t,
        ),
        &v(&[
            (r#"{code="200", inst="1", job="api"}"#, 10.0 / 31.0),
            (r#"{code="200", inst="2", job="api"}"#, 20.0 / 31.0),
            (r#"{code="500", inst="1", job="api"}"#, 1.0 / 31.0),
        ]),
    );
    // group_left(team) copies team from the one side.
    let with_team = v(&[
        (r#"{inst="1", job="api", team="core"}"#, 2.0),
        (r#"{inst="2", job="api", team="core"}"#, 4.0),
    ]);
    assert_eq!(
        vector(&h, "errors * on(job) group_left(team) team_info", t),
        with_team
    );
    // group_right is the mirror image.
    assert_eq!(
        vector(&h, "team_info * on(job) group_right(team) errors", t),
        with_team
    );
    // A filtering comparison with group_right keeps the left side's value
    // and the right side's labels.
    assert_eq!(
        vector(&h, "team_info < on(job) group_right errors", t),
        v(&[
            (r#"errors{inst="1", job="api"}"#, 1.0),
            (r#"errors{inst="2", job="api"}"#, 1.0),
        ])
    );
}

#[test]
fn set_operators() {
    let h = services();
    let t = 20 * S;
    assert_eq!(
        vector(&h, "errors and total", t),
        v(&[
            (r#"errors{inst="1", job="api"}"#, 2.0),
            (r#"errors{inst="2", job="api"}"#, 4.0),
        ])
    );
    assert_eq!(
        vector(&h, "total unless errors", t),
        v(&[(r#"total{inst="1", job="db"}"#, 5.0)])
    );
    assert_eq!(
        vector(&h, "errors or total", t),
        v(&[
            (r#"errors{inst="1", job="api"}"#, 2.0),
            (r#"errors{inst="2", job="api"}"#, 4.0),
            (r#"total{inst="1", job="db"}"#, 5.0),
        ])
    );
    assert_eq!(
        vector(&h, r#"errors and on(job) total{job="db"}"#, t),
        v(&[])
    );
    assert_eq!(
        vector(&h, r#"total and on(inst) errors{inst="2"}"#, t),
        v(&[(r#"total{inst="2", job="api"}"#, 40.0)])
    );
    // Many on both sides is fine for set operators.
    assert_eq!(vector(&h, "req and on(job) req", t).len(), 5);
    // absent() of an aggregation has no labels to give.
    assert_eq!(
        vector(&h, r#"absent(sum(nope{job="a"}))"#, t),
        v(&[("{}", 1.0)])
    );
    assert_eq!(
        vector(&h, "sqrt(errors * 0 + 16)", t),
        v(&[
            (r#"{inst="1", job="api"}"#, 4.0),
            (r#"{inst="2", job="api"}"#, 4.0)
        ])
    );
}

#[test]
fn matching_errors_are_typed() {
    let h = services();
    let t = 20 * S;
    // total has two series with inst="1": the right side is not unique.
    match eval_err(&h, "errors / on(inst) total", t) {
        PromqlError::ManyToMany { side, group } => {
            assert_eq!(side, Side::Right);
            assert_eq!(group, r#"{inst="1"}"#);
        }
        other => panic!("{other:?}"),
    }
    match eval_err(&h, "total * on(inst) group_right errors", t) {
        PromqlError::ManyToMany { side, .. } => assert_eq!(side, Side::Left),
        other => panic!("{other:?}"),
    }
    // Several on the left for one on the right needs group_left.
    assert!(matches!(
        eval_err(&h, r#"req{job="api"} / on(job) sum by (job) (req)"#, t),
        PromqlError::ManyToOneImplicit { group } if group == r#"{job="api"}"#
    ));
    // group_left whose results collide once the name is dropped.
    let h2 = head(&[
        (ls("x", &[("a", "1"), ("b", "1")]), vec![(0, 1.0)]),
        (ls("y", &[("a", "1"), ("b", "1")]), vec![(0, 2.0)]),
        (ls("one", &[("a", "1")]), vec![(0, 3.0)]),
    ]);
    assert!(matches!(
        eval_err(&h2, r#"{__name__=~"x|y"} * on(a) group_left one"#, 0),
        PromqlError::GroupingNotUnique { labels } if labels == r#"{a="1", b="1"}"#
    ));
    // …and vector-scalar arithmetic likewise.
    assert!(matches!(
        eval_err(&h2, r#"{__name__=~"x|y"} * 2"#, 0),
        PromqlError::DuplicateLabelset { .. }
    ));
    // The message names the fix.
    let msg = eval_err(&h, "errors / on(inst) total", t).to_string();
    assert!(msg.contains("many-to-many matching not allowed"), "{msg}");
}

// === errors ===

#[test]
fn parse_errors_carry_the_parsers_message() {
    for (q, message) in [
        ("sum(rate(x[5m]) by (a)", "unclosed left parenthesis"),
        ("foo{", "unexpected end of input inside braces"),
        (
            "rate(foo)",
            "expected type matrix in call to function 'rate', got vector",
        ),
        ("\"abc", "unterminated quoted string \""),
    ] {
        match parse(q) {
            Err(PromqlError::Parse(e)) => {
                assert_eq!(e.query, q);
                assert_eq!(e.message, message, "{q}");
                assert_eq!(e.to_string(), format!("cannot parse `{q}`: {message}"));
            }
            other => panic!("{q}: {other:?}"),
        }
    }
}

/// Valid expressions to cut and mutate.
const CORPUS: &[&str] = &[
    "gauge",
    r#"gauge{i=~"a|b", i!="c"}[1m] offset 30s"#,
    r#"sum by (job) (rate(c{k!~"x.*"}[1m]))"#,
    "histogram_quantile(0.9, sum by (le, job) (rate(lat_bucket[5m])))",
    "errors / on(job) group_left(team) team_info",
    "topk(2, req) or bottomk(1, req) unless req > bool 3",
    "clamp(abs(-neg), 0, 1) ^ 2 % 3 atan2 time()",
    "quantile_over_time(0.5, temp[1m] @ 50) - scalar(vector(1))",
    "absent(nope{job=\"a\"}) and count without (inst) (req)",
    "round(timestamp(gauge offset -1m), 0.1) != 5",
    "max_over_time(deriv(x[5m])[10m:1m])",
    r#"label_replace(up, "a", "$1", "b", "(.*)")"#,
];

const TOKENS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    "=",
    "!=",
    "=~",
    "!~",
    "+",
    "-",
    "*",
    "/",
    "%",
    "^",
    "==",
    ">",
    "<=",
    " bool ",
    " and ",
    " or ",
    " unless ",
    " on(",
    " ignoring(",
    " group_left",
    " group_right(",
    " by (",
    " without (",
    " offset ",
    " @ ",
    "start()",
    "5m",
    "1s",
    "0",
    "-1",
    "1e308",
    "NaN",
    "Inf",
    "0.5",
    "\"",
    "\"a\"",
    "gauge",
    "c",
    "req",
    "le",
    "job",
    "__name__",
    "rate(",
    "sum(",
    "topk(",
    "histogram_quantile(",
    "time()",
    "vector(",
    "scalar(",
    "absent(",
    ":",
    "#",
    "\\",
    "é",
    "\n",
];

#[test]
fn random_and_mutated_expressions_never_panic() {
    let mut rng = fastrand::Rng::with_seed(14);
    let heads = [fixture(), counters(), services(), histograms()];
    let mut parsed = 0;
    for round in 0..20_000 {
        let q = if round % 3 == 0 {
            // Random tokens.
            (0..rng.usize(1..12))
                .map(|_| TOKENS[rng.usize(0..TOKENS.len())])
                .collect::<String>()
        } else {
            // A corpus entry, mutated: tokens inserted, bytes cut.
            let mut q: Vec<char> = CORPUS[rng.usize(0..CORPUS.len())].chars().collect();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(0..=q.len());
                match rng.u8(0..3) {
                    0 => {
                        let tok = TOKENS[rng.usize(0..TOKENS.len())];
                        q.splice(at..at, tok.chars());
                    }
                    1 if at < q.len() => {
                        let end = (at + rng.usize(1..4)).min(q.len());
                        q.drain(at..end);
                    }
                    _ => q.truncate(at),
                }
            }
            q.into_iter().collect()
        };
        let h = &heads[round % heads.len()];
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let Ok(expr) = parse(&q) else {
                return false;
            };
            let engine = Engine::new(h);
            let _ = engine.eval_instant(&expr, 40 * S);
            let _ = engine.eval_range(&expr, 0, 120 * S, 15 * S);
            true
        }));
        match outcome {
            Ok(true) => parsed += 1,
            Ok(false) => {}
            Err(_) => panic!("panicked on {q:?}"),
        }
    }
    // The mutations keep a fair share valid, so evaluation is exercised.
    assert!(parsed > 2_000, "only {parsed} parsed");
}

#[test]
fn deep_nesting_and_huge_queries_are_errors_not_stack_overflows() {
    let h = fixture();
    let refused = |q: &str, what: &str| match parse(q) {
        Err(PromqlError::Parse(e)) => assert!(e.message.contains(what), "{e}"),
        other => panic!("{other:?}"),
    };
    let n = MAX_DEPTH;
    refused(
        &format!("{}1{}", "(".repeat(n), ")".repeat(n)),
        "levels deep",
    );
    refused(&format!("{}gauge", "-".repeat(n)), "levels deep");
    refused(&format!("1{}", " + 1".repeat(n)), "levels deep");
    refused(
        &format!("{}gauge{}", "abs(".repeat(n), ")".repeat(n)),
        "levels deep",
    );
    refused(&format!("1{}", "+1".repeat(MAX_QUERY_BYTES)), "bytes long");
    refused(&"(".repeat(MAX_QUERY_BYTES + 1), "bytes long");
    // Just within the limits, in a thread with a small stack, it evaluates.
    let run = |q: String, want: f64| {
        let h = h.clone();
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || assert_eq!(scalar(&h, &q, 0), want))
            .expect("spawn")
            .join()
            .expect("no overflow");
    };
    let n = MAX_DEPTH - 1;
    run(format!("{}1{}", "(".repeat(n), ")".repeat(n)), 1.0);
    run(format!("1{}", " + 1".repeat(n - 1)), n as f64);
    run(format!("{}1", "-".repeat(n - 1)), 1.0);
    run(
        format!(
            r#"scalar({}gauge{{i="a"}}{})"#,
            "abs(".repeat(n - 2),
            ")".repeat(n - 2)
        ),
        1.0,
    );
    run(
        format!(
            r#"scalar({}gauge{{i="a"}}{})"#,
            "sum(".repeat(n - 2),
            ")".repeat(n - 2)
        ),
        1.0,
    );
    run(
        format!(
            r#"scalar({}gauge{{i="a"}})"#,
            "gauge{i=\"a\"} * ".repeat(n - 2)
        ),
        1.0,
    );
}

// === range queries read each selector once ===

/// A store that counts its selects.
struct Counting<'h> {
    head: &'h Head,
    selects: std::cell::Cell<usize>,
}

impl Queryable for Counting<'_> {
    fn select(
        &self,
        matchers: &[crate::index::Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, PromqlError> {
        self.selects.set(self.selects.get() + 1);
        Queryable::select(self.head, matchers, mint, maxt)
    }
}

#[test]
fn a_range_query_equals_its_instant_queries_and_reads_each_selector_once() {
    let h = counters();
    let mut f = fixture();
    // Both fixtures in one head, for expressions across them.
    for s in Head::select(&h, &[crate::index::Matcher::equal("k", "up")], 0, i64::MAX) {
        for sample in s.samples() {
            let (t, v) = sample.expect("sample");
            f.append(s.labels, t, v).expect("append");
        }
    }
    for (q, selectors) in [
        ("gauge", 1),
        ("rate(c[30s]) + on() group_left gauge{i=\"a\"}", 2),
        ("gauge offset 20s @ 100 - gauge offset -15s", 2),
        (
            "sum_over_time(c[25s] offset 5s) / on() group_left count(gauge)",
            2,
        ),
        ("gauge{i=\"b\"} or c", 2),
        (
            "max_over_time(gauge[1m:15s]) - on(i) min_over_time(gauge[1m:15s] @ 100 offset 1m)",
            2,
        ),
    ] {
        let expr = parse(q).expect("parse");
        let store = Counting {
            head: &f,
            selects: std::cell::Cell::new(0),
        };
        let engine = Engine::new(&store);
        let (start, end, step) = (-30 * S, 200 * S, 5 * S);
        let range = engine.eval_range(&expr, start, end, step).expect("range");
        assert_eq!(store.selects.get(), selectors, "{q}");
        // The same, one instant at a time.
        let mut by_labels: std::collections::BTreeMap<Labels, Vec<(i64, f64)>> =
            std::collections::BTreeMap::new();
        let mut t = start;
        while t <= end {
            match engine.eval_instant(&expr, t).expect("instant") {
                Value::Vector(samples) => {
                    for s in samples {
                        by_labels.entry(s.labels).or_default().push((t, s.v));
                    }
                }
                other => panic!("{other:?}"),
            }
            t += step;
        }
        let instants: Vec<Series> = by_labels
            .into_iter()
            .map(|(labels, samples)| Series { labels, samples })
            .collect();
        assert!(!instants.is_empty(), "{q}");
        assert_eq!(range, instants, "{q}");
    }
}

#[test]
fn label_replace_and_label_join() {
    let h = fixture();
    let t = 150 * S; // only gauge{i="a"} = 3
    assert_eq!(
        vector(&h, r#"label_replace(gauge, "dst", "x-$1", "i", "(.*)")"#, t),
        v(&[(r#"gauge{dst="x-a", i="a"}"#, 3.0)])
    );
    // Named groups; the regex is anchored, so "a" alone does not match "ab".
    assert_eq!(
        vector(
            &h,
            r#"label_replace(gauge, "dst", "${x}!", "i", "(?P<x>a)")"#,
            t
        ),
        v(&[(r#"gauge{dst="a!", i="a"}"#, 3.0)])
    );
    assert_eq!(
        vector(&h, r#"label_replace(gauge, "dst", "$1", "i", "z")"#, t),
        v(&[(r#"gauge{i="a"}"#, 3.0)])
    );
    // An empty result removes the label.
    assert_eq!(
        vector(&h, r#"label_replace(gauge, "i", "", "i", ".*")"#, t),
        v(&[("gauge", 3.0)])
    );
    assert!(matches!(
        eval_err(&h, r#"label_replace(gauge, "dst", "", "i", "(")"#, t),
        PromqlError::InvalidArgument { .. }
    ));
    assert!(matches!(
        eval_err(&h, r#"label_replace(gauge, "1dst", "", "i", ".*")"#, t),
        PromqlError::Label(_)
    ));
    // Two series made equal is an error.
    assert!(matches!(
        eval_err(
            &h,
            r#"label_replace(gauge, "i", "same", "i", ".*")"#,
            60 * S
        ),
        PromqlError::DuplicateLabelset { .. }
    ));
    assert_eq!(
        vector(
            &h,
            r#"label_join(other, "both", "-", "i", "job", "none")"#,
            60 * S
        ),
        v(&[(r#"other{both="a-x-", i="a", job="x"}"#, 7.0)])
    );
}

#[test]
fn deriv_and_predict_linear_fit_a_line() {
    let h = counters();
    let t = 50 * S;
    // temp 3, 1, 4, 1, 5 at 10…50 s: x̄ = 30 s, ȳ = 2.8;
    // Σ(x−x̄)(y−ȳ) = −4 + 18 + 0 − 18 + 44 = 40, Σ(x−x̄)² = 1000: 0.04/s.
    assert_close(
        &vector(&h, "deriv(temp[1m])", t),
        &v(&[(r#"{room="a"}"#, 0.04)]),
    );
    // At t the line is at 2.8 + 0.04 × 20 = 3.6; 100 s later 7.6.
    assert_close(
        &vector(&h, "predict_linear(temp[1m], 100)", t),
        &v(&[(r#"{room="a"}"#, 7.6)]),
    );
    assert_close(
        &vector(&h, r#"deriv(c{k="up"}[1m])"#, 65 * S),
        &v(&[(r#"{k="up"}"#, 1.0)]),
    );
    // A constant series has slope 0 exactly; one sample, no result.
    let flat = head(&[(ls("f", &[]), vec![(10, 0.1), (20, 0.1), (30, 0.1)])]);
    assert_eq!(vector(&flat, "deriv(f[1m])", 30 * S), v(&[("{}", 0.0)]));
    assert_eq!(vector(&h, r#"deriv(c{k="one"}[1m])"#, 65 * S), v(&[]));
}

#[test]
fn subqueries_evaluate_at_the_multiples_of_their_step() {
    let h = counters();
    // temp 3, 1, 4, 1, 5 at 10…50 s. At 50 s, [30s:10s] is (20, 50]:
    // 30, 40, 50 s → 4, 1, 5.
    match instant(&h, "temp[30s:10s]", 50 * S) {
        Value::Matrix(series) => {
            assert_eq!(series.len(), 1);
            assert_eq!(series[0].labels, ls("temp", &[("room", "a")]));
            assert_eq!(
                series[0].samples,
                vec![(30 * S, 4.0), (40 * S, 1.0), (50 * S, 5.0)]
            );
        }
        other => panic!("{other:?}"),
    }
    let one = |q: &str, t: i64| {
        let got = vector(&h, q, t);
        assert_eq!(got.len(), 1, "{q}: {got:?}");
        got[0].1
    };
    assert_eq!(one("max_over_time(temp[30s:10s])", 50 * S), 5.0);
    assert_eq!(one("min_over_time(temp[30s:10s])", 50 * S), 1.0);
    // At 45 s: 20, 30, 40 s → 1, 4, 1.
    assert_eq!(one("sum_over_time(temp[30s:10s])", 45 * S), 6.0);
    // offset and @ move the subquery's end.
    assert_eq!(one("max_over_time(temp[30s:10s] offset 10s)", 60 * S), 5.0);
    assert_eq!(one("sum_over_time(temp[30s:10s] @ 45)", 500 * S), 6.0);
    // A subquery of a function of a range: rate(c{k="up"}[30s]) is 1/s at
    // 50 and 60 s (three samples 10 s apart, 10 s to extrapolate at the
    // start, none at the end: 20 × 30/20 / 30 s).
    assert!(close(
        one(r#"max_over_time(rate(c{k="up"}[30s])[20s:10s])"#, 65 * S),
        1.0
    ));
    // Nested subqueries multiply their steps: 10,000 × 10,000 is refused.
    assert!(matches!(
        eval_err(&h, "max_over_time(max_over_time(temp[10000s:1s])[10000s:1s])", 0),
        PromqlError::TooManySteps { limit } if limit == MAX_QUERY_STEPS
    ));
    // Without a step, the engine's default: 1 minute, here 10 s.
    let expr = parse("count_over_time(temp[3m:])").expect("parse");
    let got = Engine::new(&h)
        .with_subquery_step_ms(10 * S)
        .eval_instant(&expr, 50 * S)
        .expect("eval");
    assert!(matches!(got, Value::Vector(s) if s.len() == 1 && s[0].v == 5.0));
    // With the 1 minute default, (−130 s, 50 s] has −120, −60 and 0 s,
    // before the first sample.
    assert_eq!(vector(&h, "count_over_time(temp[3m:])", 50 * S), v(&[]));
}
