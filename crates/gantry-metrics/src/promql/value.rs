//! What an expression evaluates to.

use crate::labels::Labels;

/// One series' value at one instant. `t` is the evaluation time, except
/// straight out of an instant selector, where it is the sample's own time
/// (which `timestamp()` reads); results of [`super::Engine::eval_instant`]
/// always carry the evaluation time.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub t: i64,
    pub v: f64,
}

/// One series' samples in a range, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

/// The four PromQL result types.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    /// An instant vector.
    Vector(Vec<Sample>),
    /// A range vector: from a range selector, or a range query's result.
    Matrix(Vec<Series>),
    String(String),
}

impl Value {
    /// The type's name as Prometheus's API spells it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
            Value::String(_) => "string",
        }
    }
}
