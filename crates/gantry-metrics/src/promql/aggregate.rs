//! Aggregation operators: `sum`, `avg`, `min`, `max`, `count`, `group`,
//! `stddev`, `stdvar`, `quantile`, `topk`, `bottomk`, with `by` or
//! `without`.
//!
//! A group is the labels `by` keeps, or all but those `without` names and
//! `__name__`; with neither, one group. The result has one sample per
//! group with the group's labels, in the order groups are first seen;
//! `topk` and `bottomk` instead keep the chosen samples whole, largest (or
//! smallest) first within each group, NaN last.

use std::collections::HashMap;

use promql_parser::parser::{AggregateExpr, LabelModifier};

use super::engine::{Ctx, keep_only};
use super::functions::{nan_aware_max, nan_aware_min, quantile, variance};
use super::value::{Sample, Value};
use super::{Engine, PromqlError, Queryable};
use crate::labels::{Labels, METRIC_NAME};

impl<Q: Queryable + ?Sized> Engine<'_, Q> {
    pub(super) fn aggregate(
        &self,
        agg: &AggregateExpr,
        ctx: Ctx<'_>,
    ) -> Result<Value, PromqlError> {
        let op = agg.op.to_string();
        let param = match &agg.param {
            Some(p) if op != "count_values" => Some(self.scalar_arg(&op, p, ctx)?),
            _ => None,
        };
        let samples = self.vector_arg(&op, &agg.expr, ctx)?;
        aggregate_samples(agg, op, param, samples, ctx)
    }
}

/// The aggregation proper, out of the recursion path.
#[inline(never)]
fn aggregate_samples(
    agg: &AggregateExpr,
    op: String,
    param: Option<f64>,
    samples: Vec<Sample>,
    ctx: Ctx<'_>,
) -> Result<Value, PromqlError> {
    {
        let key = |labels: &Labels| -> Labels {
            match &agg.modifier {
                None => Labels::empty(),
                Some(LabelModifier::Include(by)) => keep_only(labels, &by.labels),
                Some(LabelModifier::Exclude(without)) => {
                    let mut names: Vec<&str> = without.labels.iter().map(String::as_str).collect();
                    names.push(METRIC_NAME);
                    labels.without(&names)
                }
            }
        };
        // Groups in first-seen order.
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let mut groups: Vec<(Labels, Vec<Sample>)> = Vec::new();
        for s in samples {
            let k = key(&s.labels);
            let i = *index.entry(k.clone()).or_insert_with(|| {
                groups.push((k, Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push(s);
        }
        let one = |labels: Labels, v: f64| Sample {
            labels,
            t: ctx.t,
            v,
        };
        let mut out = Vec::with_capacity(groups.len());
        for (labels, members) in groups {
            let values = || members.iter().map(|s| s.v);
            match op.as_str() {
                "sum" => out.push(one(labels, values().sum())),
                "avg" => out.push(one(labels, values().sum::<f64>() / members.len() as f64)),
                "count" => out.push(one(labels, members.len() as f64)),
                "group" => out.push(one(labels, 1.0)),
                "min" => out.push(one(
                    labels,
                    values().reduce(nan_aware_min).unwrap_or(f64::NAN),
                )),
                "max" => out.push(one(
                    labels,
                    values().reduce(nan_aware_max).unwrap_or(f64::NAN),
                )),
                "stddev" => out.push(one(labels, variance(values()).sqrt())),
                "stdvar" => out.push(one(labels, variance(values()))),
                "quantile" => out.push(one(
                    labels,
                    quantile(param.unwrap_or(f64::NAN), values().collect()),
                )),
                "topk" | "bottomk" => {
                    let k = param.unwrap_or(f64::NAN);
                    if k.is_nan() {
                        return Err(PromqlError::InvalidArgument {
                            function: op,
                            message: "k is NaN".into(),
                        });
                    }
                    if k < 1.0 {
                        continue;
                    }
                    let k = if k >= members.len() as f64 {
                        members.len()
                    } else {
                        k as usize
                    };
                    let mut members = members;
                    let top = op == "topk";
                    // Stable: equal values keep their input order.
                    members.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        (false, false) if top => b.v.total_cmp(&a.v),
                        (false, false) => a.v.total_cmp(&b.v),
                    });
                    out.extend(
                        members
                            .into_iter()
                            .take(k)
                            .map(|s| Sample { t: ctx.t, ..s }),
                    );
                }
                other => {
                    return Err(PromqlError::Unsupported(format!("the aggregation {other}")));
                }
            }
        }
        Ok(Value::Vector(out))
    }
}
