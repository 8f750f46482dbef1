//! PromQL's functions.
//!
//! Every function but `last_over_time`, `sort` and `sort_desc` drops
//! `__name__`, as Prometheus does. A function over a range vector reads its
//! window `(start, end]` from the range selector it is given.

use std::collections::BTreeMap;

use promql_parser::label::MatchOp as ParserMatchOp;
use promql_parser::parser::{Call, Expr};

use super::engine::{Ctx, RangeSelection, check_unique, drop_name};
use super::value::{Sample, Series, Value};
use super::{Engine, PromqlError, Queryable};
use crate::labels::{Labels, METRIC_NAME};

/// The label of a classic histogram's bucket bound.
const BUCKET_LABEL: &str = "le";

impl<Q: Queryable + ?Sized> Engine<'_, Q> {
    /// Evaluates the arguments, then applies the function. Only this small
    /// frame is on the recursion path; the functions themselves are plain
    /// code over values.
    pub(super) fn call(&self, call: &Call, ctx: Ctx<'_>) -> Result<Value, PromqlError> {
        let name = call.func.name;
        let args: Vec<&Expr> = call.args.args.iter().map(|a| a.as_ref()).collect();
        let mut vals = Vec::with_capacity(args.len());
        for a in &args {
            vals.push(Some(match unparen(a) {
                Expr::MatrixSelector(_) | Expr::Subquery(_) => {
                    Arg::Range(self.range_arg(name, a, ctx)?)
                }
                _ => Arg::Value(self.eval(a, ctx)?),
            }));
        }
        let takes_range = call
            .func
            .arg_types
            .contains(&promql_parser::parser::value::ValueType::Matrix);
        if takes_range {
            call_range(name, vals, &args, ctx)
        } else {
            call_instant(name, vals, &args, ctx)
        }
    }

    pub(super) fn scalar_arg(
        &self,
        function: &str,
        e: &Expr,
        ctx: Ctx<'_>,
    ) -> Result<f64, PromqlError> {
        match self.eval(e, ctx)? {
            Value::Scalar(v) => Ok(v),
            other => Err(invalid(
                function,
                format!("expected a scalar, got a {}", other.type_name()),
            )),
        }
    }

    pub(super) fn vector_arg(
        &self,
        function: &str,
        e: &Expr,
        ctx: Ctx<'_>,
    ) -> Result<Vec<Sample>, PromqlError> {
        match self.eval(e, ctx)? {
            Value::Vector(samples) => Ok(samples),
            other => Err(invalid(
                function,
                format!("expected an instant vector, got a {}", other.type_name()),
            )),
        }
    }

    fn range_arg(
        &self,
        function: &str,
        e: &Expr,
        ctx: Ctx<'_>,
    ) -> Result<RangeSelection, PromqlError> {
        match e {
            Expr::MatrixSelector(ms) => self.select_range(ms, ctx),
            Expr::Paren(p) => self.range_arg(function, &p.expr, ctx),
            Expr::Subquery(sq) => self.subquery(sq, ctx),
            _ => Err(invalid(function, "expected a range vector selector".into())),
        }
    }
}

/// Argument `i` of a call to `name`, or the error that it is missing.
fn nth_arg<'e>(name: &str, args: &[&'e Expr], i: usize) -> Result<&'e Expr, PromqlError> {
    args.get(i)
        .copied()
        .ok_or_else(|| invalid(name, format!("argument {} is missing", i + 1)))
}

/// The functions of instant vectors and scalars.
#[inline(never)]
fn call_instant(
    name: &str,
    mut vals: Vec<Option<Arg>>,
    args: &[&Expr],
    ctx: Ctx<'_>,
) -> Result<Value, PromqlError> {
    let arg = |i: usize| nth_arg(name, args, i);
    let out = match name {
        "time" => return Ok(Value::Scalar(ctx.t as f64 / 1000.0)),
        "vector" => {
            let v = take_scalar(name, &mut vals, 0)?;
            return Ok(Value::Vector(vec![Sample {
                labels: Labels::empty(),
                t: ctx.t,
                v,
            }]));
        }
        "scalar" => {
            let samples = take_vector(name, &mut vals, 0)?;
            return Ok(Value::Scalar(match samples.as_slice() {
                [one] => one.v,
                _ => f64::NAN,
            }));
        }
        "abs" | "ceil" | "floor" | "sqrt" | "exp" | "ln" | "log2" | "log10" | "sgn" => {
            let f: fn(f64) -> f64 = match name {
                "abs" => f64::abs,
                "ceil" => f64::ceil,
                "floor" => f64::floor,
                "sqrt" => f64::sqrt,
                "exp" => f64::exp,
                "ln" => f64::ln,
                "log2" => f64::log2,
                "log10" => f64::log10,
                _ => sgn,
            };
            map_values(take_vector(name, &mut vals, 0)?, ctx, f)
        }
        "round" => {
            let to_nearest = if vals.len() > 1 {
                take_scalar(name, &mut vals, 1)?
            } else {
                1.0
            };
            // Dividing by the inverse keeps 0.1 steps exact more often.
            let inverse = 1.0 / to_nearest;
            map_values(take_vector(name, &mut vals, 0)?, ctx, |v| {
                (v * inverse + 0.5).floor() / inverse
            })
        }
        "clamp" | "clamp_min" | "clamp_max" => {
            let samples = take_vector(name, &mut vals, 0)?;
            let (lo, hi) = match name {
                "clamp" => (
                    take_scalar(name, &mut vals, 1)?,
                    take_scalar(name, &mut vals, 2)?,
                ),
                "clamp_min" => (take_scalar(name, &mut vals, 1)?, f64::INFINITY),
                _ => (f64::NEG_INFINITY, take_scalar(name, &mut vals, 1)?),
            };
            if hi < lo {
                return Ok(Value::Vector(Vec::new()));
            }
            map_values(samples, ctx, |v| nan_max(lo, nan_min(hi, v)))
        }
        "timestamp" => {
            let samples = take_vector(name, &mut vals, 0)?;
            samples
                .into_iter()
                .map(|s| Sample {
                    labels: drop_name(&s.labels),
                    t: ctx.t,
                    v: s.t as f64 / 1000.0,
                })
                .collect()
        }
        "sort" | "sort_desc" => {
            let mut samples = take_vector(name, &mut vals, 0)?;
            // NaN last either way.
            samples.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                (false, false) if name == "sort" => a.v.total_cmp(&b.v),
                (false, false) => b.v.total_cmp(&a.v),
            });
            return Ok(Value::Vector(samples));
        }
        "histogram_quantile" => {
            let q = take_scalar(name, &mut vals, 0)?;
            histogram_quantile(q, take_vector(name, &mut vals, 1)?, ctx)
        }
        "label_replace" => {
            let samples = take_vector(name, &mut vals, 0)?;
            let dst = take_string(name, &mut vals, 1)?;
            let replacement = take_string(name, &mut vals, 2)?;
            let src = take_string(name, &mut vals, 3)?;
            let pattern = take_string(name, &mut vals, 4)?;
            label_replace(samples, &dst, &replacement, &src, &pattern)?
        }
        "label_join" => {
            let samples = take_vector(name, &mut vals, 0)?;
            let dst = take_string(name, &mut vals, 1)?;
            let sep = take_string(name, &mut vals, 2)?;
            let mut sources = Vec::new();
            for i in 3..vals.len() {
                sources.push(take_string(name, &mut vals, i)?);
            }
            crate::labels::validate_name(&dst)?;
            let mut out = Vec::with_capacity(samples.len());
            for s in samples {
                let joined: Vec<&str> = sources
                    .iter()
                    .map(|src| s.labels.get(src).unwrap_or(""))
                    .collect();
                let labels = s.labels.with(&dst, &joined.join(&sep))?;
                out.push(Sample { labels, ..s });
            }
            out
        }
        "absent" => {
            let e = arg(0)?;
            if !take_vector(name, &mut vals, 0)?.is_empty() {
                return Ok(Value::Vector(Vec::new()));
            }
            vec![Sample {
                labels: absent_labels(e)?,
                t: ctx.t,
                v: 1.0,
            }]
        }
        other => return Err(PromqlError::Unsupported(format!("the function {other}"))),
    };
    Ok(Value::Vector(check_unique(out)?))
}

/// The functions of range vectors.
#[inline(never)]
fn call_range(
    name: &str,
    mut vals: Vec<Option<Arg>>,
    args: &[&Expr],
    ctx: Ctx<'_>,
) -> Result<Value, PromqlError> {
    let arg = |i: usize| nth_arg(name, args, i);
    let out = match name {
        "absent_over_time" => {
            let e = arg(0)?;
            if !take_range(name, &mut vals, 0)?.series.is_empty() {
                return Ok(Value::Vector(Vec::new()));
            }
            vec![Sample {
                labels: absent_labels(e)?,
                t: ctx.t,
                v: 1.0,
            }]
        }
        "rate" | "increase" | "delta" => {
            let sel = take_range(name, &mut vals, 0)?;
            let (counter, per_second) = match name {
                "rate" => (true, true),
                "increase" => (true, false),
                _ => (false, false),
            };
            over_range(&sel, ctx, |s| {
                extrapolated_rate(&s.samples, &sel, counter, per_second)
            })
        }
        "irate" | "idelta" => {
            let sel = take_range(name, &mut vals, 0)?;
            let per_second = name == "irate";
            over_range(&sel, ctx, |s| instant_rate(&s.samples, per_second))
        }
        "deriv" => {
            let sel = take_range(name, &mut vals, 0)?;
            over_range(&sel, ctx, |s| {
                let first = s.samples.first()?.0;
                linear_regression(&s.samples, first).map(|(slope, _)| slope)
            })
        }
        "predict_linear" => {
            let sel = take_range(name, &mut vals, 0)?;
            let ahead = take_scalar(name, &mut vals, 1)?;
            over_range(&sel, ctx, |s| {
                linear_regression(&s.samples, ctx.t)
                    .map(|(slope, intercept)| intercept + slope * ahead)
            })
        }
        "quantile_over_time" => {
            let q = take_scalar(name, &mut vals, 0)?;
            let sel = take_range(name, &mut vals, 1)?;
            over_range(&sel, ctx, |s| {
                Some(quantile(q, s.samples.iter().map(|&(_, v)| v).collect()))
            })
        }
        "last_over_time" => {
            let sel = take_range(name, &mut vals, 0)?;
            return Ok(Value::Vector(
                sel.series
                    .into_iter()
                    .filter_map(|s| {
                        let &(_, v) = s.samples.last()?;
                        Some(Sample {
                            labels: s.labels,
                            t: ctx.t,
                            v,
                        })
                    })
                    .collect(),
            ));
        }
        "avg_over_time" | "min_over_time" | "max_over_time" | "sum_over_time"
        | "count_over_time" | "stddev_over_time" | "stdvar_over_time" | "present_over_time"
        | "changes" | "resets" => {
            let sel = take_range(name, &mut vals, 0)?;
            over_range(&sel, ctx, |s| {
                let values = s.samples.iter().map(|&(_, v)| v);
                Some(match name {
                    "avg_over_time" => values.sum::<f64>() / s.samples.len() as f64,
                    "min_over_time" => values.reduce(nan_aware_min)?,
                    "max_over_time" => values.reduce(nan_aware_max)?,
                    "sum_over_time" => values.sum(),
                    "count_over_time" => s.samples.len() as f64,
                    "stddev_over_time" => variance(values).sqrt(),
                    "stdvar_over_time" => variance(values),
                    "present_over_time" => 1.0,
                    "changes" => s
                        .samples
                        .windows(2)
                        .filter(|w| !(w[0].1 == w[1].1 || w[0].1.is_nan() && w[1].1.is_nan()))
                        .count() as f64,
                    _ => s.samples.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64,
                })
            })
        }
        other => return Err(PromqlError::Unsupported(format!("the function {other}"))),
    };
    Ok(Value::Vector(check_unique(out)?))
}

/// An evaluated argument: a value, or a range selector's window.
enum Arg {
    Value(Value),
    Range(RangeSelection),
}

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}

fn take(name: &str, vals: &mut [Option<Arg>], i: usize) -> Result<Arg, PromqlError> {
    vals.get_mut(i)
        .and_then(Option::take)
        .ok_or_else(|| invalid(name, format!("argument {} is missing", i + 1)))
}

fn take_scalar(name: &str, vals: &mut [Option<Arg>], i: usize) -> Result<f64, PromqlError> {
    match take(name, vals, i)? {
        Arg::Value(Value::Scalar(v)) => Ok(v),
        Arg::Value(other) => Err(invalid(
            name,
            format!("expected a scalar, got a {}", other.type_name()),
        )),
        Arg::Range(_) => Err(invalid(
            name,
            "expected a scalar, got a range vector".into(),
        )),
    }
}

fn take_vector(name: &str, vals: &mut [Option<Arg>], i: usize) -> Result<Vec<Sample>, PromqlError> {
    match take(name, vals, i)? {
        Arg::Value(Value::Vector(v)) => Ok(v),
        Arg::Value(other) => Err(invalid(
            name,
            format!("expected an instant vector, got a {}", other.type_name()),
        )),
        Arg::Range(_) => Err(invalid(
            name,
            "expected an instant vector, got a range vector".into(),
        )),
    }
}

fn take_string(name: &str, vals: &mut [Option<Arg>], i: usize) -> Result<String, PromqlError> {
    match take(name, vals, i)? {
        Arg::Value(Value::String(s)) => Ok(s),
        Arg::Value(other) => Err(invalid(
            name,
            format!("expected a string, got a {}", other.type_name()),
        )),
        Arg::Range(_) => Err(invalid(
            name,
            "expected a string, got a range vector".into(),
        )),
    }
}

fn take_range(
    name: &str,
    vals: &mut [Option<Arg>],
    i: usize,
) -> Result<RangeSelection, PromqlError> {
    match take(name, vals, i)? {
        Arg::Range(sel) => Ok(sel),
        Arg::Value(other) => Err(invalid(
            name,
            format!(
                "expected a range vector selector, got a {}",
                other.type_name()
            ),
        )),
    }
}

fn invalid(function: &str, message: String) -> PromqlError {
    PromqlError::InvalidArgument {
        function: function.to_owned(),
        message,
    }
}

/// `f` of every value, the name dropped.
fn map_values(samples: Vec<Sample>, ctx: Ctx<'_>, f: impl Fn(f64) -> f64) -> Vec<Sample> {
    samples
        .into_iter()
        .map(|s| Sample {
            labels: drop_name(&s.labels),
            t: ctx.t,
            v: f(s.v),
        })
        .collect()
}

/// `f` of every series of a range, the name dropped; `None` leaves the
/// series out.
fn over_range(
    sel: &RangeSelection,
    ctx: Ctx<'_>,
    f: impl Fn(&Series) -> Option<f64>,
) -> Vec<Sample> {
    sel.series
        .iter()
        .filter_map(|s| {
            Some(Sample {
                labels: drop_name(&s.labels),
                t: ctx.t,
                v: f(s)?,
            })
        })
        .collect()
}

fn sgn(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        v // 0, -0 and NaN stay.
    }
}

/// Maximum that is NaN when either is (Go's `math.Max`).
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Minimum that is NaN when either is (Go's `math.Min`).
fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// The running maximum of `*_over_time` and `max`: a NaN is replaced by
/// any number, so the result is NaN only when every value is.
pub(super) fn nan_aware_max(cur: f64, v: f64) -> f64 {
    if v > cur || cur.is_nan() { v } else { cur }
}

/// The running minimum, NaN only when every value is.
pub(super) fn nan_aware_min(cur: f64, v: f64) -> f64 {
    if v < cur || cur.is_nan() { v } else { cur }
}

/// Population variance, by Welford's method.
pub(super) fn variance(values: impl Iterator<Item = f64>) -> f64 {
    let (mut n, mut mean, mut m2) = (0.0, 0.0, 0.0);
    for v in values {
        n += 1.0;
        let d = v - mean;
        mean += d / n;
        m2 += d * (v - mean);
    }
    m2 / n
}

/// The φ-quantile of `values`, interpolating between the two nearest
/// ranks: rank φ·(n−1) in the sorted values. NaN for no values or φ NaN,
/// −∞ below 0, +∞ above 1.
pub(super) fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(f64::total_cmp);
    let rank = q * (values.len() - 1) as f64;
    let lower = rank.floor();
    let weight = rank - lower;
    let lo = lower as usize;
    let hi = (lo + 1).min(values.len() - 1);
    values[lo] * (1.0 - weight) + values[hi] * weight
}

/// `rate`, `increase` and `delta`: the change over the samples, counter
/// resets added back for counters, extrapolated towards the window's ends.
///
/// Each end is extrapolated to the boundary when the nearest sample lies
/// within 1.1 average intervals of it, else by half an interval (the series
/// is taken to start or end there). A counter is not extrapolated below
/// zero: the start moves no further back than where the line through the
/// samples meets 0.
fn extrapolated_rate(
    samples: &[(i64, f64)],
    sel: &RangeSelection,
    counter: bool,
    per_second: bool,
) -> Option<f64> {
    let (&(first_t, first_v), &(last_t, last_v)) = (samples.first()?, samples.last()?);
    if samples.len() < 2 {
        return None;
    }
    let mut change = last_v - first_v;
    if counter {
        for w in samples.windows(2) {
            if w[1].1 < w[0].1 {
                change += w[0].1;
            }
        }
    }
    let secs = |a: i64, b: i64| (i128::from(a) - i128::from(b)) as f64 / 1000.0;
    let sampled = secs(last_t, first_t);
    let average = sampled / (samples.len() - 1) as f64;
    let threshold = average * 1.1;
    let mut to_start = secs(first_t, sel.start);
    let mut to_end = secs(sel.end, last_t);
    if to_start >= threshold {
        to_start = average / 2.0;
    }
    if counter && change > 0.0 && first_v >= 0.0 {
        let to_zero = sampled * (first_v / change);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = average / 2.0;
    }
    let mut factor = (sampled + to_start + to_end) / sampled;
    if per_second {
        factor /= sel.range as f64 / 1000.0;
    }
    Some(change * factor)
}

/// `irate` and `idelta`: from the last two samples. For `irate` a drop is a
/// counter reset, and the later value is the increase.
fn instant_rate(samples: &[(i64, f64)], per_second: bool) -> Option<f64> {
    let [.., (t0, v0), (t1, v1)] = samples else {
        return None;
    };
    let interval = i128::from(*t1) - i128::from(*t0);
    if interval == 0 {
        return None;
    }
    if !per_second {
        return Some(v1 - v0);
    }
    let increase = if v1 < v0 { *v1 } else { v1 - v0 };
    Some(increase / (interval as f64 / 1000.0))
}

/// The labels `absent(sel)` reports: the selector's equality matchers but
/// the name, a label matched twice left out.
fn absent_labels(e: &Expr) -> Result<Labels, PromqlError> {
    let vs = match e {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        Expr::Paren(p) => return absent_labels(&p.expr),
        _ => return Ok(Labels::empty()),
    };
    let mut seen: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    for m in &vs.matchers.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        let entry = seen.entry(m.name.as_str());
        match (entry, &m.op) {
            (std::collections::btree_map::Entry::Vacant(slot), ParserMatchOp::Equal) => {
                slot.insert(Some(m.value.as_str()));
            }
            (std::collections::btree_map::Entry::Vacant(slot), _) => {
                slot.insert(None);
            }
            (std::collections::btree_map::Entry::Occupied(mut slot), _) => {
                slot.insert(None);
            }
        }
    }
    Ok(Labels::new(
        seen.into_iter()
            .filter_map(|(name, value)| Some((name, value?))),
    )?)
}

/// `histogram_quantile(q, buckets)` over classic `le` buckets: the buckets
/// grouped by their labels without `le` and `__name__`, one quantile each.
/// Samples without a parsable `le` are skipped.
fn histogram_quantile(q: f64, samples: Vec<Sample>, ctx: Ctx<'_>) -> Vec<Sample> {
    let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for s in samples {
        let Some(upper) = s.labels.get(BUCKET_LABEL).and_then(parse_bound) else {
            continue;
        };
        groups
            .entry(s.labels.without(&[BUCKET_LABEL, METRIC_NAME]))
            .or_default()
            .push((upper, s.v));
    }
    groups
        .into_iter()
        .map(|(labels, buckets)| Sample {
            labels,
            t: ctx.t,
            v: bucket_quantile(q, buckets),
        })
        .collect()
}

/// A bucket bound: a float, `+Inf` included.
fn parse_bound(le: &str) -> Option<f64> {
    le.trim().parse::<f64>().ok()
}

/// The φ-quantile from cumulative buckets (upper bound, count), assuming
/// observations spread evenly inside a bucket and a lower bound of 0 for
/// the first bucket when its upper bound is positive.
///
/// - NaN for φ NaN, for fewer than two distinct bounds, no `+Inf` bucket or
///   no observations; −∞ for φ < 0, +∞ for φ > 1;
/// - buckets with the same bound are added up; counts within a relative
///   1e-12 of the one before count as equal, and a count below an earlier
///   one is raised to it (the counts must not fall as bounds rise);
/// - a quantile in the `+Inf` bucket is the highest finite bound, and one
///   in a first bucket whose bound is ≤ 0 is that bound.
pub(super) fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Same bound: one bucket.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (upper, count) in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == upper => last.1 += count,
            _ => merged.push((upper, count)),
        }
    }
    // Float noise, then the monotonic envelope.
    let mut reference = merged[0].1;
    for b in merged.iter_mut().skip(1) {
        let diff = (b.1 - reference).abs();
        if diff == 0.0 {
            continue;
        }
        if diff / b.1 <= 1e-12 {
            b.1 = reference;
        } else {
            reference = b.1;
        }
    }
    let mut highest = merged[0].1;
    for b in merged.iter_mut().skip(1) {
        if b.1 > highest {
            highest = b.1;
        } else if b.1 < highest {
            b.1 = highest;
        }
    }
    let n = merged.len();
    if n < 2 {
        return f64::NAN;
    }
    let observations = merged[n - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged[..n - 1]
        .iter()
        .position(|&(_, count)| count >= rank)
        .unwrap_or(n - 1);
    if b == n - 1 {
        return merged[n - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let end = merged[b].0;
    let mut count = merged[b].1;
    let mut start = 0.0;
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// `label_replace`: where `src`'s value matches the anchored `pattern`,
/// `dst` becomes `replacement` with `$1`, `${name}` expanded (removed when
/// that is empty); other samples pass unchanged. The name is kept.
fn label_replace(
    samples: Vec<Sample>,
    dst: &str,
    replacement: &str,
    src: &str,
    pattern: &str,
) -> Result<Vec<Sample>, PromqlError> {
    let re = regex::Regex::new(&format!("^(?s:{pattern})$")).map_err(|e| {
        invalid(
            "label_replace",
            format!("invalid regular expression {pattern:?}: {e}"),
        )
    })?;
    crate::labels::validate_name(dst)?;
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        let value = s.labels.get(src).unwrap_or("");
        let Some(caps) = re.captures(value) else {
            out.push(s);
            continue;
        };
        let mut new = String::new();
        caps.expand(replacement, &mut new);
        let labels = s.labels.with(dst, &new)?;
        out.push(Sample { labels, ..s });
    }
    Ok(out)
}

/// Least squares through the samples, time in seconds from `at`:
/// (slope per second, value at `at`). Constant values give slope 0 exactly.
fn linear_regression(samples: &[(i64, f64)], at: i64) -> Option<(f64, f64)> {
    if samples.len() < 2 {
        return None;
    }
    let first = samples[0].1;
    if samples.iter().all(|&(_, v)| v == first) {
        return Some((0.0, first));
    }
    let n = samples.len() as f64;
    let (mut sx, mut sy, mut sxy, mut sxx) = (0.0, 0.0, 0.0, 0.0);
    for &(t, v) in samples {
        let x = (i128::from(t) - i128::from(at)) as f64 / 1000.0;
        sx += x;
        sy += v;
        sxy += x * v;
        sxx += x * x;
    }
    let cov = sxy - sx * sy / n;
    let var = sxx - sx * sx / n;
    let slope = cov / var;
    let intercept = sy / n - slope * sx / n;
    Some((slope, intercept))
}
