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
