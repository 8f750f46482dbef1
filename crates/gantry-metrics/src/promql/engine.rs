//! The evaluator: walks the parsed expression at one instant at a time.
//!
//! A range query is the instant evaluation repeated at every step, the
//! results gathered per label set; that is Prometheus's definition, and it
//! keeps one code path for both. Each selector reads the store once per
//! query, for the window all steps need ([`Selections`]); a step takes its
//! part by binary search.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use promql_parser::label::MatchOp as ParserMatchOp;
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{
    AtModifier, Expr, MatrixSelector, Offset, SubqueryExpr, VectorSelector,
};

use super::value::{Sample, Series, Value};
use super::{PromqlError, Queryable};
use crate::index::{MatchOp, Matcher};
use crate::is_stale_nan;
use crate::labels::{Labels, METRIC_NAME};

/// Prometheus's default lookback delta: 5 minutes.
pub const DEFAULT_LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// The most steps a range query may have, Prometheus's 11,000 points per
/// series; a subquery likewise.
pub const MAX_RANGE_STEPS: i64 = 11_000;

/// A subquery's step when it names none (`x[1h:]`): Prometheus's default
/// evaluation interval, 1 minute.
pub const DEFAULT_SUBQUERY_STEP_MS: i64 = 60 * 1000;

/// Evaluates expressions against a [`Queryable`].
pub struct Engine<'q, Q: Queryable + ?Sized> {
    pub(super) store: &'q Q,
    pub(super) lookback_ms: i64,
    subquery_step_ms: i64,
}

/// Where an evaluation stands: the instant, and the query's bounds for
/// `@ start()` and `@ end()`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ctx<'c> {
    pub(super) t: i64,
    pub(super) start: i64,
    pub(super) end: i64,
    /// The first and last instant this part of the expression is evaluated
    /// at: the query's, or a subquery's around it.
    window_start: i64,
    window_end: i64,
    selections: &'c Selections,
}

/// The series each selector of one query read, by the selector's address
/// in the expression (which outlives the query), and the steps evaluated
/// so far (range steps and subquery steps, nested ones multiplied).
#[derive(Debug, Default)]
pub(super) struct Selections {
    series: RefCell<HashMap<usize, Rc<Vec<Series>>>>,
    steps: std::cell::Cell<u64>,
}

/// The most evaluation steps one query may take, range and subquery steps
/// together (a subquery inside a range query takes its steps at every
/// step of the range).
pub const MAX_QUERY_STEPS: u64 = 1_000_000;

impl Selections {
    fn step(&self) -> Result<(), PromqlError> {
        let steps = self.steps.get() + 1;
        self.steps.set(steps);
        if steps > MAX_QUERY_STEPS {
            return Err(PromqlError::TooManySteps {
                limit: MAX_QUERY_STEPS,
            });
        }
        Ok(())
    }
}

impl<'q, Q: Queryable + ?Sized> Engine<'q, Q> {
    pub fn new(store: &'q Q) -> Self {
        Self {
            store,
            lookback_ms: DEFAULT_LOOKBACK_MS,
            subquery_step_ms: DEFAULT_SUBQUERY_STEP_MS,
        }
    }

    /// Another default subquery step (ms, at least 1).
    pub fn with_subquery_step_ms(mut self, step_ms: i64) -> Self {
        self.subquery_step_ms = step_ms.max(1);
        self
    }

    /// Another lookback delta (ms, at least 1).
    pub fn with_lookback_ms(mut self, lookback_ms: i64) -> Self {
        self.lookback_ms = lookback_ms.max(1);
        self
    }

    /// Evaluates `expr` at `t` (ms). Vector samples carry `t`.
    pub fn eval_instant(&self, expr: &Expr, t: i64) -> Result<Value, PromqlError> {
        let selections = Selections::default();
        let ctx = Ctx {
            t,
            start: t,
            end: t,
            window_start: t,
            window_end: t,
            selections: &selections,
        };
        Ok(match self.eval(expr, ctx)? {
            Value::Vector(samples) => Value::Vector(at_time(samples, t)),
            other => other,
        })
    }

    /// Evaluates `expr` at `start`, `start + step`, … up to `end` (ms) and
    /// gathers the values per label set, sorted by labels; a scalar becomes
    /// a series with no labels.
    pub fn eval_range(
        &self,
        expr: &Expr,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Vec<Series>, PromqlError> {
        match expr.value_type() {
            ValueType::Scalar | ValueType::Vector => {}
            other => {
                return Err(PromqlError::InvalidRange(format!(
                    "the expression is a {other}, it must be a scalar or an instant vector"
                )));
            }
        }
        if step <= 0 {
            return Err(PromqlError::InvalidRange(format!(
                "step must be positive, got {step} ms"
            )));
        }
        if end < start {
            return Err(PromqlError::InvalidRange(format!(
                "end ({end} ms) is before start ({start} ms)"
            )));
        }
        let steps = (i128::from(end) - i128::from(start)) / i128::from(step) + 1;
        if steps > i128::from(MAX_RANGE_STEPS) {
            return Err(PromqlError::InvalidRange(format!(
                "{steps} steps exceed the maximum of {MAX_RANGE_STEPS}; use a larger step"
            )));
        }
        let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        let selections = Selections::default();
        let mut t = start;
        loop {
            let ctx = Ctx {
                t,
                start,
                end,
                window_start: start,
                window_end: end,
                selections: &selections,
            };
            selections.step()?;
            match self.eval(expr, ctx)? {
                Value::Scalar(v) => out.entry(Labels::empty()).or_default().push((t, v)),
                Value::Vector(samples) => {
                    for s in samples {
                        out.entry(s.labels).or_default().push((t, s.v));
                    }
                }
                other => {
                    return Err(PromqlError::InvalidRange(format!(
                        "the expression gave a {}, it must be a scalar or an instant vector",
                        other.type_name()
                    )));
                }
            }
            match t.checked_add(step) {
                Some(next) if next <= end => t = next,
                _ => break,
            }
        }
        Ok(out
            .into_iter()
            .map(|(labels, samples)| Series { labels, samples })
            .collect())
    }

    pub(super) fn eval(&self, expr: &Expr, ctx: Ctx<'_>) -> Result<Value, PromqlError> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, ctx),
            Expr::Unary(u) => match self.eval(&u.expr, ctx)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(samples) => {
                    let samples = samples
                        .into_iter()
                        .map(|s| Sample {
                            labels: drop_name(&s.labels),
                            t: ctx.t,
                            v: -s.v,
                        })
                        .collect();
                    Ok(Value::Vector(check_unique(samples)?))
                }
                other => Err(PromqlError::Unsupported(format!(
                    "unary minus on a {}",
                    other.type_name()
                ))),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.select_instant(vs, ctx)?)),
            Expr::MatrixSelector(ms) => Ok(Value::Matrix(self.select_range(ms, ctx)?.series)),
            Expr::Binary(b) => self.binary(b, ctx),
            Expr::Aggregate(a) => self.aggregate(a, ctx),
            Expr::Call(call) => self.call(call, ctx),
            Expr::Subquery(sq) => Ok(Value::Matrix(self.subquery(sq, ctx)?.series)),
            Expr::Extension(_) => Err(PromqlError::Unsupported("an extension expression".into())),
        }
    }

    /// The instant `t` a selector reads at: `@` pins it, `offset` moves it.
    fn reference_time(&self, vs: &VectorSelector, ctx: Ctx<'_>) -> i64 {
        self.reference_time_at(vs, ctx, ctx.t)
    }

    fn reference_time_at(&self, vs: &VectorSelector, ctx: Ctx<'_>, t: i64) -> i64 {
        shifted(&vs.at, &vs.offset, ctx, t)
    }

    /// `expr[range:step]` at `ctx.t`: the inner expression evaluated at
    /// every multiple of the step in `(t - range, t]` (after `@` and
    /// `offset`), gathered per label set.
    pub(super) fn subquery(
        &self,
        sq: &SubqueryExpr,
        ctx: Ctx<'_>,
    ) -> Result<RangeSelection, PromqlError> {
        let end = shifted(&sq.at, &sq.offset, ctx, ctx.t);
        let range = duration_ms(sq.range);
        let start = end.saturating_sub(range);
        let step = sq
            .step
            .map(duration_ms)
            .filter(|&s| s > 0)
            .unwrap_or(self.subquery_step_ms);
        let mut t = start.div_euclid(step).saturating_mul(step);
        if t <= start {
            t = t.saturating_add(step);
        }
        let points = (i128::from(end) - i128::from(t)) / i128::from(step) + 1;
        if points > i128::from(MAX_RANGE_STEPS) {
            return Err(PromqlError::InvalidArgument {
                function: "subquery".into(),
                message: format!(
                    "{points} steps exceed the maximum of {MAX_RANGE_STEPS}; use a larger step"
                ),
            });
        }
        let inner = Ctx {
            t,
            window_start: shifted(&sq.at, &sq.offset, ctx, ctx.window_start).saturating_sub(range),
            window_end: shifted(&sq.at, &sq.offset, ctx, ctx.window_end),
            ..ctx
        };
        let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        while t <= end {
            ctx.selections.step()?;
            match self.eval(&sq.expr, Ctx { t, ..inner })? {
                Value::Scalar(v) => out.entry(Labels::empty()).or_default().push((t, v)),
                Value::Vector(samples) => {
                    for s in samples {
                        out.entry(s.labels).or_default().push((t, s.v));
                    }
                }
                other => {
                    return Err(PromqlError::InvalidArgument {
                        function: "subquery".into(),
                        message: format!("expected an instant vector, got a {}", other.type_name()),
                    });
                }
            }
            match t.checked_add(step) {
                Some(next) => t = next,
                None => break,
            }
        }
        Ok(RangeSelection {
            series: out
                .into_iter()
                .map(|(labels, samples)| Series { labels, samples })
                .collect(),
            start,
            end,
            range,
        })
    }

    /// The series of `vs` with every sample any step of the query reads,
    /// `width` ms back from its reference time; from the store on first use.
    fn selected(
        &self,
        vs: &VectorSelector,
        width: i64,
        ctx: Ctx<'_>,
    ) -> Result<Rc<Vec<Series>>, PromqlError> {
        let key = std::ptr::from_ref(vs) as usize;
        if let Some(hit) = ctx.selections.series.borrow().get(&key) {
            return Ok(Rc::clone(hit));
        }
        let first = self.reference_time_at(vs, ctx, ctx.window_start);
        let last = self.reference_time_at(vs, ctx, ctx.window_end);
        let (lo, hi) = (first.min(last), first.max(last));
        let series = Rc::new(self.series(vs, lo.saturating_sub(width).saturating_add(1), hi)?);
        ctx.selections
            .series
            .borrow_mut()
            .insert(key, Rc::clone(&series));
        Ok(series)
    }

    fn series(
        &self,
        vs: &VectorSelector,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, PromqlError> {
        let groups = matcher_groups(vs)?;
        if groups.len() == 1 {
            return self.store.select(&groups[0], mint, maxt);
        }
        // `{a="x" or b="y"}`: the union, each series once.
        let mut all: BTreeMap<Labels, Series> = BTreeMap::new();
        for group in &groups {
            for s in self.store.select(group, mint, maxt)? {
                all.entry(s.labels.clone()).or_insert(s);
            }
        }
        Ok(all.into_values().collect())
    }

    /// Each series' newest sample in `(t - lookback, t]`, unless that sample
    /// is a staleness marker.
    pub(super) fn select_instant(
        &self,
        vs: &VectorSelector,
        ctx: Ctx<'_>,
    ) -> Result<Vec<Sample>, PromqlError> {
        let t = self.reference_time(vs, ctx);
        let mint = t.saturating_sub(self.lookback_ms).saturating_add(1);
        let mut out = Vec::new();
        for series in self.selected(vs, self.lookback_ms, ctx)?.iter() {
            let newer = series.samples.partition_point(|&(st, _)| st <= t);
            let Some(&(st, v)) = newer.checked_sub(1).and_then(|i| series.samples.get(i)) else {
                continue;
            };
            if st < mint || is_stale_nan(v) {
                continue;
            }
            out.push(Sample {
                labels: series.labels.clone(),
                t: st,
                v,
            });
        }
        Ok(out)
    }

    /// Every sample in `(t - range, t]` but staleness markers; series left
    /// with none are dropped.
    pub(super) fn select_range(
        &self,
        ms: &MatrixSelector,
        ctx: Ctx<'_>,
    ) -> Result<RangeSelection, PromqlError> {
        let end = self.reference_time(&ms.vs, ctx);
        let range = duration_ms(ms.range);
        let start = end.saturating_sub(range);
        let mut series = Vec::new();
        for s in self.selected(&ms.vs, range, ctx)?.iter() {
            let from = s.samples.partition_point(|&(t, _)| t <= start);
            let to = s.samples.partition_point(|&(t, _)| t <= end);
            let samples: Vec<(i64, f64)> = s
                .samples
                .get(from..to)
                .unwrap_or(&[])
                .iter()
                .copied()
                .filter(|&(_, v)| !is_stale_nan(v))
                .collect();
            if !samples.is_empty() {
                series.push(Series {
                    labels: s.labels.clone(),
                    samples,
                });
            }
        }
        Ok(RangeSelection {
            series,
            start,
            end,
            range,
        })
    }
}

/// A range selector's series and the window they were read from.
#[derive(Debug)]
pub(super) struct RangeSelection {
    pub(super) series: Vec<Series>,
    /// The window is `(start, end]`, ms.
    pub(super) start: i64,
    pub(super) end: i64,
    pub(super) range: i64,
}

/// The selector's matchers in our index's terms, the metric name included;
/// one list per `or` alternative.
fn matcher_groups(vs: &VectorSelector) -> Result<Vec<Vec<Matcher>>, PromqlError> {
    let convert = |list: &[promql_parser::label::Matcher]| -> Result<Vec<Matcher>, PromqlError> {
        let mut out = Vec::with_capacity(list.len() + 1);
        if let Some(name) = &vs.name {
            out.push(Matcher::equal(METRIC_NAME, name.clone()));
        }
        for m in list {
            let op = match m.op {
                ParserMatchOp::Equal => MatchOp::Equal,
                ParserMatchOp::NotEqual => MatchOp::NotEqual,
                ParserMatchOp::Re(_) => MatchOp::RegexMatch,
                ParserMatchOp::NotRe(_) => MatchOp::RegexNoMatch,
            };
            out.push(Matcher::new(op, m.name.clone(), m.value.clone())?);
        }
        Ok(out)
    };
    if vs.matchers.or_matchers.is_empty() {
        return Ok(vec![convert(&vs.matchers.matchers)?]);
    }
    vs.matchers
        .or_matchers
        .iter()
        .map(|group| {
            let mut all = vs.matchers.matchers.clone();
            all.extend(group.iter().cloned());
            convert(&all)
        })
        .collect()
}

/// The instant `t` becomes under `@` (pinning it) and `offset` (moving
/// it back).
fn shifted(at: &Option<AtModifier>, offset: &Option<Offset>, ctx: Ctx<'_>, t: i64) -> i64 {
    let base = match at {
        None => t,
        Some(AtModifier::Start) => ctx.start,
        Some(AtModifier::End) => ctx.end,
        Some(AtModifier::At(time)) => system_time_ms(*time),
    };
    match offset {
        None => base,
        Some(Offset::Pos(d)) => base.saturating_sub(duration_ms(*d)),
        Some(Offset::Neg(d)) => base.saturating_add(duration_ms(*d)),
    }
}

/// A duration in ms, saturating at `i64::MAX`.
pub(super) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A time as ms since the epoch; before it is negative.
fn system_time_ms(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => duration_ms(d),
        Err(e) => duration_ms(e.duration()).saturating_neg(),
    }
}

/// `labels` without `__name__`.
pub(super) fn drop_name(labels: &Labels) -> Labels {
    labels.without(&[METRIC_NAME])
}

/// `labels` with only the labels in `names`.
pub(super) fn keep_only(labels: &Labels, names: &[String]) -> Labels {
    let others: Vec<&str> = labels
        .iter()
        .map(|l| l.name.as_str())
        .filter(|n| !names.iter().any(|k| k == n))
        .collect();
    labels.without(&others)
}

/// Every sample stamped with the evaluation time.
fn at_time(mut samples: Vec<Sample>, t: i64) -> Vec<Sample> {
    for s in &mut samples {
        s.t = t;
    }
    samples
}

/// Refuses a vector with two samples of the same labels.
pub(super) fn check_unique(samples: Vec<Sample>) -> Result<Vec<Sample>, PromqlError> {
    let mut seen = std::collections::HashSet::with_capacity(samples.len());
    for s in &samples {
        if !seen.insert(&s.labels) {
            return Err(PromqlError::DuplicateLabelset {
                labels: s.labels.to_string(),
            });
        }
    }
    Ok(samples)
}
