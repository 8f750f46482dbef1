//! The Prometheus text exposition format (version 0.0.4), parsed: what a
//! scrape of a `/metrics` endpoint returns.
//!
//! ```text
//! # HELP http_requests_total Requests handled.
//! # TYPE http_requests_total counter
//! http_requests_total{method="GET",path="/"} 3 1700000000000
//! ```
//!
//! The rules, as Prometheus reads them:
//!
//! - One line each; blank lines are skipped, a `\r` before the `\n` is
//!   allowed. A line starting with `#` is a comment unless it is
//!   `# HELP name text` or `# TYPE name type`.
//! - HELP text escapes `\\` and `\n` (another backslash stays as it is);
//!   a label value escapes `\\`, `\"` and `\n` (another escape is an error).
//! - TYPE is `counter`, `gauge`, `histogram`, `summary` or `untyped`. A
//!   name gets at most one TYPE and one HELP line. A sample belongs to the
//!   family of its own name or, failing that, of its name less a suffix
//!   its type has (`_total`, `_created` for counters; `_bucket`, `_sum`,
//!   `_count`, `_created` for histograms; `_sum`, `_count`, `_created` for
//!   summaries); a sample of no declared family is untyped.
//! - A sample is `name{labels} value [timestamp]`: labels optional, a
//!   trailing comma allowed, blanks (spaces, tabs) between the parts; the
//!   value a float (`NaN`, `+Inf`, `-Inf` and exponents included); the
//!   timestamp integer milliseconds. Label names and metric names follow
//!   [`crate::labels`]'s rules, and an empty label value is no label.
//! - A histogram bucket needs an `le` label and a summary quantile a
//!   `quantile` label, each a float.
//!
//! A NaN read here is an ordinary NaN, never Prometheus's staleness
//! marker ([`crate::STALE_NAN_BITS`]), so a target cannot mark its own
//! series stale.
//!
//! Input is bytes (a scrape's body); anything wrong is an
//! [`ExpositionError`] with the line and column, never a panic, and more
//! samples than the `sample_limit` stops the parse with
//! [`ExpositionError::SampleLimit`] (Prometheus then fails the whole
//! scrape, and so should the caller). Not read: OpenMetrics (`# EOF`,
//! exemplars, `_created` as metadata) and Prometheus 3's quoted UTF-8
//! metric names (`{"my.metric"}`), which are an error here.

use crate::labels::{LabelError, Labels, METRIC_NAME, is_metric_name};
use std::collections::HashMap;
use std::fmt;

/// A metric family's type, from its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    #[default]
    Untyped,
}

impl MetricType {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
            MetricType::Untyped => "untyped",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "summary" => MetricType::Summary,
            "untyped" => MetricType::Untyped,
            _ => return None,
        })
    }

    /// The sample-name suffixes of a family of this type.
    fn suffixes(self) -> &'static [&'static str] {
        match self {
            MetricType::Counter => &["_total", "_created"],
            MetricType::Histogram => &["_bucket", "_sum", "_count", "_created"],
            MetricType::Summary => &["_sum", "_count", "_created"],
            MetricType::Gauge | MetricType::Untyped => &[],
        }
    }
}

impl fmt::Display for MetricType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// With `__name__`.
    pub labels: Labels,
    pub value: f64,
    /// Milliseconds, when the target gave one.
    pub timestamp: Option<i64>,
    /// Its family's type.
    pub kind: MetricType,
}

/// A family's metadata, from its HELP and TYPE lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub name: String,
    pub kind: MetricType,
    pub help: Option<String>,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// In the order of the input.
    pub samples: Vec<Sample>,
    /// Per family with a HELP or TYPE line, in the order first seen.
    pub metadata: Vec<Metadata>,
}

/// Limits for [`parse`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// At most this many samples (Prometheus's per-target `sample_limit`);
    /// `None` for no limit.
    pub sample_limit: Option<usize>,
}

/// Why an exposition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpositionError {
    #[error("line {line}, column {column}: {problem}")]
    Line {
        line: usize,
        column: usize,
        problem: Problem,
    },
    #[error("line {line}: more than {limit} samples, the target's sample_limit")]
    SampleLimit { line: usize, limit: usize },
}

impl ExpositionError {
    /// The 1-based line at fault.
    pub fn line(&self) -> usize {
        match self {
            ExpositionError::Line { line, .. } | ExpositionError::SampleLimit { line, .. } => *line,
        }
    }
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the line is not UTF-8")]
    NotUtf8,
    #[error("expected a metric name, found {0}")]
    ExpectedMetricName(Found),
    #[error("expected a label name, found {0}")]
    ExpectedLabelName(Found),
    #[error("expected `=` after label `{label}`, found {found}")]
    ExpectedEquals { label: String, found: Found },
    #[error("expected `\"` to open the value of label `{label}`, found {found}")]
    ExpectedQuote { label: String, found: Found },
    #[error("the value of label `{label}` has no closing `\"`")]
    UnterminatedValue { label: String },
    #[error(
        "the value of label `{label}` has an invalid escape `\\{escape}`; only \\\\, \\\" and \\n are allowed"
    )]
    InvalidEscape { label: String, escape: char },
    #[error("expected `,` or `}}` after the value of label `{label}`, found {found}")]
    ExpectedCommaOrBrace { label: String, found: Found },
    #[error("expected a value after the metric, found {0}")]
    ExpectedValue(Found),
    #[error("`{0}` is not a number")]
    InvalidValue(String),
    #[error("`{0}` is not a timestamp (integer milliseconds)")]
    InvalidTimestamp(String),
    #[error("unexpected `{0}` after the sample")]
    TrailingText(String),
    #[error("{0}")]
    Label(LabelError),
    #[error("`# {0}` needs a metric name")]
    MissingName(&'static str),
    #[error("`# TYPE {name}` needs a type: counter, gauge, histogram, summary or untyped")]
    MissingType { name: String },
    #[error("`{kind}` is not a metric type (counter, gauge, histogram, summary or untyped)")]
    UnknownType { kind: String },
    #[error("a second TYPE line for `{name}`")]
    DuplicateType { name: String },
    #[error("a second HELP line for `{name}`")]
    DuplicateHelp { name: String },
    #[error("histogram bucket `{name}` has no `le` label")]
    MissingLe { name: String },
    #[error("summary `{name}` has no `quantile` label")]
    MissingQuantile { name: String },
    #[error("label `{label}` of `{name}` is `{value}`, not a number")]
    InvalidBound {
        name: String,
        label: &'static str,
        value: String,
    },
}

/// What was found where something else was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    End,
    Char(char),
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::End => f.write_str("the end of the line"),
            Found::Char(c) => write!(f, "`{}`", c.escape_debug()),
        }
    }
}

#[derive(Debug, Default)]
struct Family {
    kind: Option<MetricType>,
    help: bool,
    /// Index in `Exposition::metadata`.
    meta: usize,
}

/// Parses a text exposition.
pub fn parse(input: &[u8], options: &ParseOptions) -> Result<Exposition, ExpositionError> {
    let mut out = Exposition::default();
    let mut families: HashMap<String, Family> = HashMap::new();
    for (i, raw) in input.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|e| ExpositionError::Line {
            line: line_no,
            column: column_at(raw, e.valid_up_to()),
            problem: Problem::NotUtf8,
        })?;
        let at = |pos: usize, problem: Problem| ExpositionError::Line {
            line: line_no,
            column: line[..pos].chars().count() + 1,
            problem,
        };
        let mut cur = Cursor { s: line, pos: 0 };
        cur.blanks();
        match cur.peek() {
            None => continue,
            Some('#') => {
                comment(&mut cur, &mut out, &mut families).map_err(|(p, e)| at(p, e))?;
            }
            Some(_) => {
                let sample = sample(&mut cur, &families).map_err(|(p, e)| at(p, e))?;
                if let Some(limit) = options.sample_limit
                    && out.samples.len() >= limit
                {
                    return Err(ExpositionError::SampleLimit {
                        line: line_no,
                        limit,
                    });
                }
                out.samples.push(sample);
            }
        }
    }
    Ok(out)
}

fn column_at(raw: &[u8], byte: usize) -> usize {
    String::from_utf8_lossy(&raw[..byte]).chars().count() + 1
}

type LineResult<T> = Result<T, (usize, Problem)>;

/// `# HELP`, `# TYPE` or a comment.
fn comment(
    cur: &mut Cursor<'_>,
    out: &mut Exposition,
    families: &mut HashMap<String, Family>,
) -> LineResult<()> {
    cur.bump(); // '#'
    // `#HELP`, without a blank, is a comment, and so is `# HELPING`.
    if !cur.blanks() {
        return Ok(());
    }
    let keyword = match cur.word() {
        "HELP" => "HELP",
        "TYPE" => "TYPE",
        _ => return Ok(()),
    };
    let blank = cur.blanks();
    let name_at = cur.pos;
    if !blank || cur.peek().is_none() {
        return Err((name_at, Problem::MissingName(keyword)));
    }
    let name = cur.metric_name();
    if name.is_empty() {
        return match cur.peek() {
            None => Err((name_at, Problem::MissingName(keyword))),
            Some(c) => Err((name_at, Problem::ExpectedMetricName(Found::Char(c)))),
        };
    }
    let after_name = cur.pos;
    let blank = cur.blanks();
    if !blank && cur.peek().is_some() {
        let c = cur.peek().map_or(Found::End, Found::Char);
        return Err((after_name, Problem::ExpectedMetricName(c)));
    }
    let next_meta = out.metadata.len();
    let family = families.entry(name.to_owned()).or_insert_with(|| Family {
        meta: next_meta,
        ..Family::default()
    });
    if family.meta == next_meta {
        out.metadata.push(Metadata {
            name: name.to_owned(),
            kind: MetricType::Untyped,
            help: None,
        });
    }
    let meta = &mut out.metadata[family.meta];
    if keyword == "HELP" {
        if family.help {
            return Err((
                name_at,
                Problem::DuplicateHelp {
                    name: name.to_owned(),
                },
            ));
        }
        family.help = true;
        meta.help = Some(unescape_help(cur.rest()));
    } else {
        let kind_at = cur.pos;
        let kind = cur.rest().trim_end_matches([' ', '\t']);
        if kind.is_empty() {
            return Err((
                kind_at,
                Problem::MissingType {
                    name: name.to_owned(),
                },
            ));
        }
        let Some(kind) = MetricType::parse(kind) else {
            return Err((
                kind_at,
                Problem::UnknownType {
                    kind: kind.to_owned(),
                },
            ));
        };
        if family.kind.is_some() {
            return Err((
                name_at,
                Problem::DuplicateType {
                    name: name.to_owned(),
                },
            ));
        }
        family.kind = Some(kind);
        meta.kind = kind;
    }
    Ok(())
}

fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// `name{labels} value [timestamp]`.
fn sample(cur: &mut Cursor<'_>, families: &HashMap<String, Family>) -> LineResult<Sample> {
    let name_at = cur.pos;
    let name = cur.metric_name();
    if name.is_empty() {
        let found = cur.peek().map_or(Found::End, Found::Char);
        return Err((name_at, Problem::ExpectedMetricName(found)));
    }
    let mut pairs: Vec<(String, String)> = vec![(METRIC_NAME.to_owned(), name.to_owned())];
    cur.blanks();
    if cur.peek() == Some('{') {
        cur.bump();
        labels(cur, &mut pairs)?;
        cur.blanks();
    }
    let value_at = cur.pos;
    let value_text = cur.word();
    if value_text.is_empty() {
        let found = cur.peek().map_or(Found::End, Found::Char);
        return Err((value_at, Problem::ExpectedValue(found)));
    }
    let value = parse_value(value_text)
        .ok_or_else(|| (value_at, Problem::InvalidValue(value_text.to_owned())))?;
    cur.blanks();
    let mut timestamp = None;
    let ts_at = cur.pos;
    let ts_text = cur.word();
    if !ts_text.is_empty() {
        let t = ts_text
            .parse::<i64>()
            .map_err(|_| (ts_at, Problem::InvalidTimestamp(ts_text.to_owned())))?;
        timestamp = Some(t);
        cur.blanks();
    }
    if !cur.rest().is_empty() {
        return Err((cur.pos, Problem::TrailingText(cur.rest().to_owned())));
    }

    let kind = family_kind(name, families);
    let bound = match kind {
        MetricType::Histogram if name.ends_with("_bucket") => Some("le"),
        MetricType::Summary if families.contains_key(name) => Some("quantile"),
        _ => None,
    };
    if let Some(label) = bound {
        let value = pairs
            .iter()
            .find(|(n, _)| n == label)
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty());
        match value {
            None => {
                let problem = if label == "le" {
                    Problem::MissingLe {
                        name: name.to_owned(),
                    }
                } else {
                    Problem::MissingQuantile {
                        name: name.to_owned(),
                    }
                };
                return Err((name_at, problem));
            }
            Some(v) if parse_value(v).is_none() => {
                return Err((
                    name_at,
                    Problem::InvalidBound {
                        name: name.to_owned(),
                        label,
                        value: v.clone(),
                    },
                ));
            }
            _ => {}
        }
    }
    let labels = Labels::new(pairs).map_err(|e| (name_at, Problem::Label(e)))?;
    Ok(Sample {
        labels,
        value,
        timestamp,
        kind,
    })
}

/// The labels after `{`, through `}`.
fn labels(cur: &mut Cursor<'_>, pairs: &mut Vec<(String, String)>) -> LineResult<()> {
    loop {
        cur.blanks();
        if cur.peek() == Some('}') {
            cur.bump();
            return Ok(());
        }
        let name_at = cur.pos;
        let name = cur.label_name();
        if name.is_empty() {
            let found = cur.peek().map_or(Found::End, Found::Char);
            return Err((name_at, Problem::ExpectedLabelName(found)));
        }
        let label = name.to_owned();
        cur.blanks();
        if cur.peek() != Some('=') {
            let found = cur.peek().map_or(Found::End, Found::Char);
            return Err((cur.pos, Problem::ExpectedEquals { label, found }));
        }
        cur.bump();
        cur.blanks();
        if cur.peek() != Some('"') {
            let found = cur.peek().map_or(Found::End, Found::Char);
            return Err((cur.pos, Problem::ExpectedQuote { label, found }));
        }
        cur.bump();
        let value = label_value(cur, &label)?;
        pairs.push((label.clone(), value));
        cur.blanks();
        match cur.peek() {
            Some(',') => {
                cur.bump();
            }
            Some('}') => {
                cur.bump();
                return Ok(());
            }
            other => {
                let found = other.map_or(Found::End, Found::Char);
                return Err((cur.pos, Problem::ExpectedCommaOrBrace { label, found }));
            }
        }
    }
}

/// A label value after its opening quote, through the closing one.
fn label_value(cur: &mut Cursor<'_>, label: &str) -> LineResult<String> {
    let mut value = String::new();
    loop {
        let at = cur.pos;
        match cur.bump() {
            None => {
                return Err((
                    at,
                    Problem::UnterminatedValue {
                        label: label.to_owned(),
                    },
                ));
            }
            Some('"') => return Ok(value),
            Some('\\') => match cur.bump() {
                Some('\\') => value.push('\\'),
                Some('"') => value.push('"'),
                Some('n') => value.push('\n'),
                Some(escape) => {
                    return Err((
                        at,
                        Problem::InvalidEscape {
                            label: label.to_owned(),
                            escape,
                        },
                    ));
                }
                None => {
                    return Err((
                        at,
                        Problem::UnterminatedValue {
                            label: label.to_owned(),
                        },
                    ));
                }
            },
            Some(c) => value.push(c),
        }
    }
}

/// A float as Prometheus writes them: decimal, exponent, `NaN`, `±Inf`
/// (any case), never the staleness marker.
fn parse_value(s: &str) -> Option<f64> {
    // Rust's parser also takes "infinity"; Go's does too. It takes no
    // hex floats and no underscores, which expositions do not use.
    let v: f64 = s.parse().ok()?;
    Some(if v.is_nan() { f64::NAN } else { v })
}

/// The type of the family a sample name belongs to.
fn family_kind(name: &str, families: &HashMap<String, Family>) -> MetricType {
    if let Some(kind) = families.get(name).and_then(|f| f.kind) {
        return kind;
    }
    for suffix in ["_total", "_bucket", "_sum", "_count", "_created"] {
        let Some(base) = name.strip_suffix(suffix) else {
            continue;
        };
        if let Some(kind) = families.get(base).and_then(|f| f.kind)
            && kind.suffixes().contains(&suffix)
        {
            return kind;
        }
    }
    MetricType::Untyped
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    /// Skips spaces and tabs; whether there were any.
    fn blanks(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// Up to the next blank or the end.
    fn word(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(|c| c != ' ' && c != '\t') {
            self.bump();
        }
        &self.s[start..self.pos]
    }

    fn take_while(&mut self, first: fn(char) -> bool, rest: fn(char) -> bool) -> &'a str {
        let start = self.pos;
        if self.peek().is_some_and(first) {
            self.bump();
            while self.peek().is_some_and(rest) {
                self.bump();
            }
        }
        &self.s[start..self.pos]
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`, possibly empty.
    fn metric_name(&mut self) -> &'a str {
        let name = self.take_while(
            |c| c.is_ascii_alphabetic() || c == '_' || c == ':',
            |c| c.is_ascii_alphanumeric() || c == '_' || c == ':',
        );
        debug_assert!(name.is_empty() || is_metric_name(name));
        name
    }

    /// `[a-zA-Z_][a-zA-Z0-9_]*`, possibly empty.
    fn label_name(&mut self) -> &'a str {
        self.take_while(
            |c| c.is_ascii_alphabetic() || c == '_',
            |c| c.is_ascii_alphanumeric() || c == '_',
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &str) -> ExpositionError {
        parse(input.as_bytes(), &ParseOptions::default()).expect_err(input)
    }

    fn one(input: &str) -> Sample {
        let mut exp = parse(input.as_bytes(), &ParseOptions::default()).expect(input);
        assert_eq!(exp.samples.len(), 1, "{input}");
        exp.samples.remove(0)
    }

    #[test]
    fn malformed_lines_are_typed_errors_with_line_and_column() {
        use Problem as P;
        let cases: Vec<(&str, usize, usize, Problem)> = vec![
            (
                "ok 1\n{a=\"b\"} 1",
                2,
                1,
                P::ExpectedMetricName(Found::Char('{')),
            ),
            ("9bad 1", 1, 1, P::ExpectedMetricName(Found::Char('9'))),
            ("m{1=\"x\"} 1", 1, 3, P::ExpectedLabelName(Found::Char('1'))),
            ("m{,} 1", 1, 3, P::ExpectedLabelName(Found::Char(','))),
            (
                "m{a \"x\"} 1",
                1,
                5,
                P::ExpectedEquals {
                    label: "a".into(),
                    found: Found::Char('"'),
                },
            ),
            (
                "m{a=x} 1",
                1,
                5,
                P::ExpectedQuote {
                    label: "a".into(),
                    found: Found::Char('x'),
                },
            ),
            (
                "m{a=\"x} 1",
                1,
                10,
                P::UnterminatedValue { label: "a".into() },
            ),
            (
                "m{a=\"x\\",
                1,
                7,
                P::UnterminatedValue { label: "a".into() },
            ),
            (
                "m{a=\"\\t\"} 1",
                1,
                6,
                P::InvalidEscape {
                    label: "a".into(),
                    escape: 't',
                },
            ),
            (
                "m{a=\"x\" b=\"y\"} 1",
                1,
                9,
                P::ExpectedCommaOrBrace {
                    label: "a".into(),
                    found: Found::Char('b'),
                },
            ),
            (
                "m{a=\"x\"",
                1,
                8,
                P::ExpectedCommaOrBrace {
                    label: "a".into(),
                    found: Found::End,
                },
            ),
            ("m", 1, 2, P::ExpectedValue(Found::End)),
            ("m{} ", 1, 5, P::ExpectedValue(Found::End)),
            ("m one", 1, 3, P::InvalidValue("one".into())),
            ("m 1 1.5", 1, 5, P::InvalidTimestamp("1.5".into())),
            (
                "m 1 99999999999999999999",
                1,
                5,
                P::InvalidTimestamp("99999999999999999999".into()),
            ),
            ("m 1 2 3", 1, 7, P::TrailingText("3".into())),
            (
                "m{a=\"1\",a=\"2\"} 1",
                1,
                1,
                P::Label(LabelError::Duplicate("a".into())),
            ),
            (
                "m{__name__=\"n\"} 1",
                1,
                1,
                P::Label(LabelError::Duplicate("__name__".into())),
            ),
            ("# HELP", 1, 7, P::MissingName("HELP")),
            ("# TYPE   ", 1, 10, P::MissingName("TYPE")),
            ("# TYPE m", 1, 9, P::MissingType { name: "m".into() }),
            (
                "# TYPE m gauges",
                1,
                10,
                P::UnknownType {
                    kind: "gauges".into(),
                },
            ),
            (
                "# TYPE m gauge\n# TYPE m counter",
                2,
                8,
                P::DuplicateType { name: "m".into() },
            ),
            (
                "# HELP m a\n\n# HELP m b",
                3,
                8,
                P::DuplicateHelp { name: "m".into() },
            ),
            (
                "# TYPE h histogram\nh_bucket 1",
                2,
                1,
                P::MissingLe {
                    name: "h_bucket".into(),
                },
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"\"} 1",
                2,
                1,
                P::MissingLe {
                    name: "h_bucket".into(),
                },
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"big\"} 1",
                2,
                1,
                P::InvalidBound {
                    name: "h_bucket".into(),
                    label: "le",
                    value: "big".into(),
                },
            ),
            (
                "# TYPE s summary\ns 1",
                2,
                1,
                P::MissingQuantile { name: "s".into() },
            ),
            // Columns count characters, not bytes.
            ("m{é=\"x\"} 1", 1, 3, P::ExpectedLabelName(Found::Char('é'))),
        ];
        for (input, line, column, problem) in cases {
            let e = err(input);
            assert_eq!(
                e,
                ExpositionError::Line {
                    line,
                    column,
                    problem
                },
                "{input:?}"
            );
            assert_eq!(e.line(), line);
        }
        let e = err("ok 1\nm{a=\"x\" b=\"y\"} 1");
        assert_eq!(
            e.to_string(),
            "line 2, column 9: expected `,` or `}` after the value of label `a`, found `b`"
        );
    }

    #[test]
    fn invalid_utf8_names_its_line_and_column() {
        let e = parse(b"ok 1\nm{a=\"\xff\"} 1\n", &ParseOptions::default()).expect_err("utf8");
        assert_eq!(
            e,
            ExpositionError::Line {
                line: 2,
                column: 6,
                problem: Problem::NotUtf8
            }
        );
    }

    #[test]
    fn values_timestamps_and_escapes() {
        for (text, bits) in [
            ("NaN", f64::NAN.to_bits()),
            ("nan", f64::NAN.to_bits()),
            ("+Inf", f64::INFINITY.to_bits()),
            ("-Inf", f64::NEG_INFINITY.to_bits()),
            ("-0", (-0.0f64).to_bits()),
            ("1e3", 1000f64.to_bits()),
            (".5", 0.5f64.to_bits()),
            ("-1.5E-3", (-1.5e-3f64).to_bits()),
            ("1.7976931348623157e308", f64::MAX.to_bits()),
        ] {
            let s = one(&format!("m {text}"));
            assert_eq!(s.value.to_bits(), bits, "{text}");
            assert!(!crate::is_stale_nan(s.value));
        }
        // The staleness marker's own bits, written out, are not it either.
        let s = one("m NaN");
        assert_ne!(s.value.to_bits(), crate::STALE_NAN_BITS);

        let s = one("m{a=\"x\\\\y\\\"z\\nw\"} 1 -9223372036854775808");
        assert_eq!(s.labels.get("a"), Some("x\\y\"z\nw"));
        assert_eq!(s.timestamp, Some(i64::MIN));

        let exp = parse(
            b"# HELP m a \\\\ b \\n c \\t d \\",
            &ParseOptions::default(),
        )
        .expect("help");
        assert_eq!(
            exp.metadata[0].help.as_deref(),
            Some("a \\ b \n c \\t d \\")
        );
        // Blank lines, blanks around parts, a trailing comma, `{}`.
        let exp = parse(
            b"\n  \n\tm {  a = \"1\" , } 1 \n n{} 2\n",
            &ParseOptions::default(),
        )
        .expect("blanks");
        assert_eq!(exp.samples.len(), 2);
    }

    #[test]
    fn types_reach_their_suffixed_samples_only() {
        let exp = parse(
            b"# TYPE c counter\nc_total 1\nc_sum 1\n# TYPE g gauge\ng_total 1\n",
            &ParseOptions::default(),
        )
        .expect("parse");
        let kinds: Vec<_> = exp.samples.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                MetricType::Counter,
                MetricType::Untyped,
                MetricType::Untyped
            ]
        );
    }

    #[test]
    fn garbage_never_panics() {
        let valid = "# HELP h_x Help \\n.\n# TYPE h histogram\nh_bucket{le=\"1\",a=\"\\\"\"} 1 5\n\
                     h_sum 2\n# TYPE s summary\ns{quantile=\"0.5\"} NaN\nm{a=\"é\"} +Inf\n";
        let bytes = valid.as_bytes();
        for cut in 0..=bytes.len() {
            let _ = parse(&bytes[..cut], &ParseOptions::default());
        }
        let mut rng = fastrand::Rng::with_seed(14);
        let alphabet = b"#{}=\",\\ \t\n\rabc_:09.eE+-InfNa\xc3\xa9\xff";
        for round in 0..20_000 {
            let input: Vec<u8> = if round % 2 == 0 {
                (0..rng.usize(0..60))
                    .map(|_| alphabet[rng.usize(..alphabet.len())])
                    .collect()
            } else {
                let mut b = bytes.to_vec();
                for _ in 0..rng.usize(1..4) {
                    let i = rng.usize(..b.len());
                    b[i] = alphabet[rng.usize(..alphabet.len())];
                }
                b
            };
            let limit = ParseOptions {
                sample_limit: Some(rng.usize(0..4)),
            };
            let _ = parse(&input, &limit);
            let _ = parse(&input, &ParseOptions::default());
        }
    }
}
