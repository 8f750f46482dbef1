//! Binary operators: arithmetic (`+ - * / % ^ atan2`), comparison (`== !=
//! > < >= <=`, filtering or with `bool`), and the set operators `and`,
//! `or`, `unless`.
//!
//! Between two vectors, samples match on their labels without `__name__`,
//! or only on those `on(…)` names, or without those `ignoring(…)` names.
//! One-to-one matching needs every match group unique on both sides;
//! `group_left(…)` lets the left side have many per group (the right must
//! be unique) and copies the listed labels from the right, and
//! `group_right(…)` is the mirror image. Arithmetic and `bool` drop
//! `__name__`; a filtering comparison keeps the left side's value and
//! labels (between a vector and a scalar, the vector's).

use std::collections::{HashMap, HashSet};

use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::Side;
use super::engine::{Ctx, check_unique, drop_name, keep_only};
use super::value::{Sample, Value};
use super::{Engine, PromqlError, Queryable};
use crate::labels::{Labels, METRIC_NAME};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Arithmetic,
    Comparison,
    Set,
}

impl<Q: Queryable + ?Sized> Engine<'_, Q> {
    pub(super) fn binary(&self, b: &BinaryExpr, ctx: Ctx<'_>) -> Result<Value, PromqlError> {
        let op = b.op.to_string();
        let kind = match op.as_str() {
            "+" | "-" | "*" | "/" | "%" | "^" | "atan2" => Kind::Arithmetic,
            "==" | "!=" | ">" | "<" | ">=" | "<=" => Kind::Comparison,
            "and" | "or" | "unless" => Kind::Set,
            other => return Err(PromqlError::Unsupported(format!("the operator {other}"))),
        };
        let modifier = b.modifier.clone().unwrap_or_default();
        if modifier.fill_values.lhs.is_some() || modifier.fill_values.rhs.is_some() {
            return Err(PromqlError::Unsupported("fill modifiers".into()));
        }
        let lhs = self.eval(&b.lhs, ctx)?;
        let rhs = self.eval(&b.rhs, ctx)?;
        combine(op, kind, &modifier, lhs, rhs, ctx)
    }
}

/// The operator applied, out of the recursion path.
#[inline(never)]
fn combine(
    op: String,
    kind: Kind,
    modifier: &promql_parser::parser::BinModifier,
    lhs: Value,
    rhs: Value,
    ctx: Ctx<'_>,
) -> Result<Value, PromqlError> {
    {
        let want_bool = modifier.return_bool;
        let apply = |l: f64, r: f64| -> (f64, bool) {
            match kind {
                Kind::Arithmetic => (arithmetic(&op, l, r), true),
                _ => {
                    let keep = compare(&op, l, r);
                    if want_bool {
                        (if keep { 1.0 } else { 0.0 }, true)
                    } else {
                        (l, keep)
                    }
                }
            }
        };
        let drops_name = kind == Kind::Arithmetic || want_bool;
        match (lhs, rhs) {
            (Value::Scalar(l), Value::Scalar(r)) if kind != Kind::Set => {
                Ok(Value::Scalar(apply(l, r).0))
            }
            (Value::Vector(v), Value::Scalar(s)) if kind != Kind::Set => {
                vector_scalar(v, s, false, &apply, drops_name, ctx)
            }
            (Value::Scalar(s), Value::Vector(v)) if kind != Kind::Set => {
                vector_scalar(v, s, true, &apply, drops_name, ctx)
            }
            (Value::Vector(l), Value::Vector(r)) => {
                let matching = Matching::new(&modifier.matching);
                let out = if kind == Kind::Set {
                    set_operation(&op, l, r, &matching)
                } else {
                    vector_vector(l, r, &modifier.card, &matching, &apply, drops_name, ctx)?
                };
                Ok(Value::Vector(
                    out.into_iter().map(|s| Sample { t: ctx.t, ..s }).collect(),
                ))
            }
            (l, r) => Err(PromqlError::InvalidArgument {
                function: op,
                message: format!(
                    "not defined between a {} and a {}",
                    l.type_name(),
                    r.type_name()
                ),
            }),
        }
    }
}

fn arithmetic(op: &str, l: f64, r: f64) -> f64 {
    match op {
        "+" => l + r,
        "-" => l - r,
        "*" => l * r,
        "/" => l / r,
        "%" => l % r,
        "^" => l.powf(r),
        _ => l.atan2(r),
    }
}

/// NaN compares false to everything, `!=` included, as in Go.
fn compare(op: &str, l: f64, r: f64) -> bool {
    match op {
        "==" => l == r,
        "!=" => l != r && !l.is_nan() && !r.is_nan(),
        ">" => l > r,
        "<" => l < r,
        ">=" => l >= r,
        _ => l <= r,
    }
}

fn vector_scalar(
    samples: Vec<Sample>,
    scalar: f64,
    scalar_left: bool,
    apply: &dyn Fn(f64, f64) -> (f64, bool),
    drops_name: bool,
    ctx: Ctx<'_>,
) -> Result<Value, PromqlError> {
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        let (mut v, keep) = if scalar_left {
            apply(scalar, s.v)
        } else {
            apply(s.v, scalar)
        };
        if !keep {
            continue;
        }
        // A filter keeps the vector's value, whichever side it is on.
        if !drops_name {
            v = s.v;
        }
        out.push(Sample {
            labels: if drops_name {
                drop_name(&s.labels)
            } else {
                s.labels
            },
            t: ctx.t,
            v,
        });
    }
    Ok(Value::Vector(check_unique(out)?))
}

/// How two vectors' samples are matched.
struct Matching {
    on: Option<Vec<String>>,
    ignoring: Vec<String>,
}

impl Matching {
    fn new(m: &Option<LabelModifier>) -> Self {
        match m {
            Some(LabelModifier::Include(on)) => Self {
                on: Some(on.labels.clone()),
                ignoring: Vec::new(),
            },
            Some(LabelModifier::Exclude(ign)) => Self {
                on: None,
                ignoring: ign.labels.clone(),
            },
            None => Self {
                on: None,
                ignoring: Vec::new(),
            },
        }
    }

    /// The match group of a series.
    fn signature(&self, labels: &Labels) -> Labels {
        match &self.on {
            Some(on) => keep_only(labels, on),
            None => {
                let mut names: Vec<&str> = self.ignoring.iter().map(String::as_str).collect();
                names.push(METRIC_NAME);
                labels.without(&names)
            }
        }
    }
}

fn set_operation(op: &str, lhs: Vec<Sample>, rhs: Vec<Sample>, m: &Matching) -> Vec<Sample> {
    match op {
        "and" => {
            let right: HashSet<Labels> = rhs.iter().map(|s| m.signature(&s.labels)).collect();
            lhs.into_iter()
                .filter(|s| right.contains(&m.signature(&s.labels)))
                .collect()
        }
        "unless" => {
            let right: HashSet<Labels> = rhs.iter().map(|s| m.signature(&s.labels)).collect();
            lhs.into_iter()
                .filter(|s| !right.contains(&m.signature(&s.labels)))
                .collect()
        }
        _ => {
            let left: HashSet<Labels> = lhs.iter().map(|s| m.signature(&s.labels)).collect();
            let mut out = lhs;
            out.extend(
                rhs.into_iter()
                    .filter(|s| !left.contains(&m.signature(&s.labels))),
            );
            out
        }
    }
}

fn vector_vector(
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    card: &VectorMatchCardinality,
    m: &Matching,
    apply: &dyn Fn(f64, f64) -> (f64, bool),
    drops_name: bool,
    ctx: Ctx<'_>,
) -> Result<Vec<Sample>, PromqlError> {
    if lhs.is_empty() || rhs.is_empty() {
        return Ok(Vec::new());
    }
    let (include, one_to_one, swapped) = match card {
        VectorMatchCardinality::ManyToOne(ls) => (ls.labels.clone(), false, false),
        VectorMatchCardinality::OneToMany(ls) => (ls.labels.clone(), false, true),
        _ => (Vec::new(), true, false),
    };
    // The "one" side, by match group; it must be unique.
    let (many, one) = if swapped { (rhs, lhs) } else { (lhs, rhs) };
    let one_side = if swapped { Side::Left } else { Side::Right };
    let mut groups: HashMap<Labels, Sample> = HashMap::with_capacity(one.len());
    for s in one {
        let sig = m.signature(&s.labels);
        if groups.contains_key(&sig) {
            return Err(PromqlError::ManyToMany {
                side: one_side,
                group: sig.to_string(),
            });
        }
        groups.insert(sig, s);
    }
    let mut matched: HashSet<Labels> = HashSet::new();
    let mut produced: HashSet<Labels> = HashSet::new();
    let mut out = Vec::new();
    for s in many {
        let sig = m.signature(&s.labels);
        let Some(o) = groups.get(&sig) else {
            continue;
        };
        let (l, r) = if swapped { (o.v, s.v) } else { (s.v, o.v) };
        let (v, keep) = apply(l, r);
        if !keep {
            continue;
        }
        let mut labels = if drops_name {
            drop_name(&s.labels)
        } else {
            s.labels.clone()
        };
        if one_to_one {
            labels = match &m.on {
                Some(on) => keep_only(&labels, on),
                None => {
                    let names: Vec<&str> = m.ignoring.iter().map(String::as_str).collect();
                    labels.without(&names)
                }
            };
            if !matched.insert(sig.clone()) {
                return Err(PromqlError::ManyToOneImplicit {
                    group: sig.to_string(),
                });
            }
        } else {
            for name in &include {
                labels = match o.labels.get(name) {
                    Some(value) => labels.with(name, value)?,
                    None => labels.without(&[name.as_str()]),
                };
            }
            if !produced.insert(labels.clone()) {
                return Err(PromqlError::GroupingNotUnique {
                    labels: labels.to_string(),
                });
            }
        }
        out.push(Sample {
            labels,
            t: ctx.t,
            v,
        });
    }
    Ok(out)
}
