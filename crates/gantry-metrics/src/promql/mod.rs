//! PromQL: expressions parsed by the `promql-parser` crate, evaluated here.
//!
//! The design:
//!
//! - **[`Queryable`]** is all the engine reads: `select(matchers, mint,
//!   maxt)` gives the series passing every matcher with their samples in
//!   `[mint, maxt]` (milliseconds, both ends included), sorted by time. The
//!   [`Head`] implements it; blocks will too, and a merge of both.
//! - **[`Engine::eval_instant`]`(expr, t)`** evaluates at one instant `t`
//!   (ms) and gives a [`Value`]: a scalar, an instant vector, a range vector
//!   (matrix) or a string. **[`Engine::eval_range`]`(expr, start, end,
//!   step)`** evaluates the expression at every step from `start` to `end`
//!   and gives one series per label set (a matrix), as Prometheus's
//!   `query_range` does; only scalar and instant-vector expressions are
//!   allowed there.
//! - **Selection** follows Prometheus 3: an instant selector at `t` takes
//!   each series' newest sample in `(t - lookback, t]` with a lookback delta
//!   of 5 minutes ([`DEFAULT_LOOKBACK_MS`]); a range selector `x[r]` takes
//!   every sample in `(t - r, t]`. `offset d` moves `t` back by `d`, and
//!   `@ ts` / `@ start()` / `@ end()` pins it first.
//! - **Staleness**: a staleness marker ([`crate::is_stale_nan`]) ends a
//!   series: when it is the newest sample in the lookback window the series
//!   has no value at `t`, and markers are never part of a range vector.
//! - **Names**: functions and arithmetic drop `__name__` where Prometheus
//!   drops it (everything but comparisons without `bool`, set operators,
//!   `last_over_time`, `sort`); two results left with the same labels are a
//!   typed error, like Prometheus's.
//! - **Errors** are a [`PromqlError`]: a parse error carries the message the
//!   parser gives (promql-parser 0.11 reports no position), evaluation
//!   errors are typed (many-to-many matching, an unsupported function, a
//!   range query over a range vector, …). No input panics: expressions
//!   longer than [`MAX_QUERY_BYTES`] or nested deeper than [`MAX_DEPTH`]
//!   are refused, so neither the parser nor the evaluator can run out of
//!   stack.
//!
//! Rates (`rate`, `increase`, `delta`) extrapolate like Prometheus 3: to a
//! range boundary when the first or last sample lies within 1.1 average
//! sample intervals of it, else by half an interval, and a counter never
//! below zero. Prometheus 2 differs for samples exactly on the left
//! boundary (its ranges are closed) and in the order of the two
//! extrapolation limits.
//!
//! A subquery `expr[range:step]` evaluates `expr` at the multiples of the
//! step (1 minute when omitted) in `(t - range, t]`, giving a range vector.
//!
//! Not yet: native histograms, `count_values`, `limitk` and
//! `limit_ratio`, `fill` modifiers, and some functions (the date
//! functions, `holt_winters`, the trigonometric ones, …); each is a typed
//! [`PromqlError::Unsupported`].

mod aggregate;
mod binary;
mod engine;
mod functions;
mod value;

#[cfg(test)]
mod tests;

pub use engine::{
    DEFAULT_LOOKBACK_MS, DEFAULT_SUBQUERY_STEP_MS, Engine, MAX_QUERY_STEPS, MAX_RANGE_STEPS,
};
pub use value::{Sample, Series, Value};

pub use promql_parser::parser::Expr;

use crate::chunk::ChunkError;
use crate::head::Head;
use crate::index::{Matcher, MatcherError};
use crate::labels::LabelError;

/// The longest expression [`parse`] takes, 16 KiB: the parser recurses,
/// and this bound keeps it well inside a thread's stack.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// The deepest nesting [`parse`] takes (parentheses, calls, operators):
/// the evaluator recurses too.
pub const MAX_DEPTH: usize = 128;

/// Parses a PromQL expression of at most [`MAX_QUERY_BYTES`] and
/// [`MAX_DEPTH`] levels.
pub fn parse(query: &str) -> Result<Expr, PromqlError> {
    let refuse = |message: String| {
        PromqlError::Parse(ParseError {
            query: query.to_owned(),
            message,
        })
    };
    if query.len() > MAX_QUERY_BYTES {
        return Err(refuse(format!(
            "the expression is {} bytes long, more than the {MAX_QUERY_BYTES} allowed",
            query.len()
        )));
    }
    let expr = promql_parser::parser::parse(query).map_err(refuse)?;
    let depth = depth(&expr);
    if depth > MAX_DEPTH {
        return Err(refuse(format!(
            "the expression is nested {depth} levels deep, more than the {MAX_DEPTH} allowed"
        )));
    }
    Ok(expr)
}

/// How deep the expression tree is, walked without recursion.
fn depth(expr: &Expr) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(expr, 1)];
    while let Some((e, d)) = stack.pop() {
        deepest = deepest.max(d);
        match e {
            Expr::Aggregate(a) => {
                stack.push((&a.expr, d + 1));
                if let Some(p) = &a.param {
                    stack.push((p, d + 1));
                }
            }
            Expr::Unary(u) => stack.push((&u.expr, d + 1)),
            Expr::Binary(b) => {
                stack.push((&b.lhs, d + 1));
                stack.push((&b.rhs, d + 1));
            }
            Expr::Paren(p) => stack.push((&p.expr, d + 1)),
            Expr::Subquery(s) => stack.push((&s.expr, d + 1)),
            Expr::Call(c) => stack.extend(c.args.args.iter().map(|a| (a.as_ref(), d + 1))),
            Expr::NumberLiteral(_)
            | Expr::StringLiteral(_)
            | Expr::VectorSelector(_)
            | Expr::MatrixSelector(_)
            | Expr::Extension(_) => {}
        }
    }
    deepest
}

/// An expression the parser refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse `{query}`: {message}")]
pub struct ParseError {
    /// The expression as given.
    pub query: String,
    /// The parser's words, e.g. `unclosed left parenthesis`.
    pub message: String,
}

/// Which operand of a binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Left => "left",
            Side::Right => "right",
        })
    }
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum PromqlError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("cannot read a chunk of the store")]
    Storage(#[from] ChunkError),
    /// The on-disk store failed to answer a selection.
    #[error("cannot read the store")]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Matcher(#[from] MatcherError),
    #[error(transparent)]
    Label(#[from] LabelError),
    /// Part of PromQL this engine does not evaluate yet.
    #[error("{0} is not supported yet")]
    Unsupported(String),
    /// A function given an argument of the wrong kind or value.
    #[error("{function}: {message}")]
    InvalidArgument { function: String, message: String },
    /// `query_range` over an expression that is not a scalar or an instant
    /// vector, or with a bad start, end or step.
    #[error("invalid range query: {0}")]
    InvalidRange(String),
    /// The query would take more evaluation steps than allowed
    /// ([`MAX_QUERY_STEPS`]): nested subqueries or a subquery in a long
    /// range query with small steps.
    #[error(
        "the query needs more than {limit} evaluation steps; use larger steps or shorter ranges"
    )]
    TooManySteps { limit: u64 },
    /// Two series of a result with the same labels (after `__name__` was
    /// dropped, say).
    #[error("vector cannot contain metrics with the same labelset: {labels}")]
    DuplicateLabelset { labels: String },
    /// Vector matching found two series with the same matching labels on
    /// the side that must be unique.
    #[error(
        "found duplicate series for the match group {group} on the {side} hand-side of the operation; many-to-many matching not allowed: matching labels must be unique on one side"
    )]
    ManyToMany { side: Side, group: String },
    /// One-to-one matching found several series on the left for one on the
    /// right: the query needs `group_left` or `group_right`.
    #[error(
        "multiple matches for labels {group}: many-to-one matching must be explicit (group_left/group_right)"
    )]
    ManyToOneImplicit { group: String },
    /// `group_left`/`group_right` produced two results with the same labels.
    #[error("multiple matches for labels {labels}: grouping labels must ensure unique matches")]
    GroupingNotUnique { labels: String },
}

/// What the engine reads: series by matchers, with samples in a range.
pub trait Queryable {
    /// The series passing every matcher that have a sample in `[mint,
    /// maxt]` (ms), each with those samples in time order.
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, PromqlError>;
}

impl Queryable for crate::db::Db {
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, PromqlError> {
        Ok(crate::db::Db::select(self, matchers, mint, maxt)?
            .into_iter()
            .map(|s| Series {
                labels: s.labels,
                samples: s.samples,
            })
            .collect())
    }
}

impl Queryable for Head {
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, PromqlError> {
        Head::select(self, matchers, mint, maxt)
            .map(|s| {
                Ok(Series {
                    labels: s.labels.clone(),
                    samples: s.samples().collect::<Result<_, _>>()?,
                })
            })
            .collect()
    }
}
