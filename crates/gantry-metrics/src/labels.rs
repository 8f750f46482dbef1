//! Label sets: what names a series.
//!
//! A [`Labels`] is a list of (name, value) pairs sorted by name, each name
//! once. The metric name is the label [`METRIC_NAME`] (`__name__`), as in
//! Prometheus. The rules, Prometheus's:
//!
//! - a label name matches `[a-zA-Z_][a-zA-Z0-9_]*`; names starting with `__`
//!   are reserved for Gantry and Prometheus (`__name__`), not refused here;
//! - the metric name matches `[a-zA-Z_:][a-zA-Z0-9_:]*`;
//! - a value is any UTF-8 text, and an empty value is the same as no label,
//!   so it is dropped;
//! - a name given twice is an error, whatever the values.
//!
//! [`Labels::stable_hash`] is FNV-1a over the pairs: the same on every
//! machine and in every version, so it can be written to disk.

use std::fmt;

/// The label that holds the metric name.
pub const METRIC_NAME: &str = "__name__";

/// Why a label set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("a label name is empty; names match [a-zA-Z_][a-zA-Z0-9_]*")]
    EmptyName,
    #[error("label name `{name}` is invalid: {reason}; names match [a-zA-Z_][a-zA-Z0-9_]*")]
    InvalidName { name: String, reason: &'static str },
    #[error("metric name `{0}` is invalid; metric names match [a-zA-Z_:][a-zA-Z0-9_:]*")]
    InvalidMetricName(String),
    #[error("label `{0}` is given twice")]
    Duplicate(String),
}

/// One (name, value) pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    pub name: String,
    pub value: String,
}

/// A valid label set, sorted by name. Build it with [`Labels::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// Validates and sorts `pairs`; pairs with an empty value are dropped.
    pub fn new<I, N, V>(pairs: I) -> Result<Self, LabelError>
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: Into<String>,
    {
        let mut labels = Vec::new();
        for (name, value) in pairs {
            let (name, value) = (name.into(), value.into());
            validate_name(&name)?;
            if name == METRIC_NAME && !value.is_empty() && !is_metric_name(&value) {
                return Err(LabelError::InvalidMetricName(value));
            }
            labels.push(Label { name, value });
        }
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(pair) = labels.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(LabelError::Duplicate(pair[0].name.clone()));
        }
        labels.retain(|l| !l.value.is_empty());
        Ok(Self(labels))
    }

    /// The empty set.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The value of `name`, if the set has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].value.as_str())
    }

    /// The metric name (`__name__`).
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    /// This set with `name` set to `value` (removed when `value` is empty).
    pub fn with(&self, name: &str, value: &str) -> Result<Self, LabelError> {
        Self::new(
            self.iter()
                .filter(|l| l.name != name)
                .map(|l| (l.name.as_str(), l.value.as_str()))
                .chain([(name, value)]),
        )
    }

    /// This set without the labels in `names`.
    pub fn without(&self, names: &[&str]) -> Self {
        Self(
            self.0
                .iter()
                .filter(|l| !names.contains(&l.name.as_str()))
                .cloned()
                .collect(),
        )
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A 64-bit FNV-1a hash of the pairs, stable across machines and
    /// versions. Names and values are separated by 0xff, a byte UTF-8 never
    /// uses, so `{a="bc"}` and `{ab="c"}` hash differently.
    pub fn stable_hash(&self) -> u64 {
        let mut h = FNV_OFFSET;
        for l in &self.0 {
            h = fnv1a(h, l.name.as_bytes());
            h = fnv1a(h, &[0xff]);
            h = fnv1a(h, l.value.as_bytes());
            h = fnv1a(h, &[0xff]);
        }
        h
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a Label;
    type IntoIter = std::slice::Iter<'a, Label>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Prometheus's notation: `name{a="x", b="y"}`, values escaped.
impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = self.metric_name() {
            f.write_str(name)?;
        }
        let mut rest = self.iter().filter(|l| l.name != METRIC_NAME).peekable();
        if rest.peek().is_none() && self.metric_name().is_some() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, l) in rest.enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}=\"", l.name)?;
            for c in l.value.chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '"' => f.write_str("\\\"")?,
                    '\n' => f.write_str("\\n")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")?;
        }
        f.write_str("}")
    }
}

/// Checks a label name against `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn validate_name(name: &str) -> Result<(), LabelError> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err(LabelError::EmptyName);
    };
    let invalid = |reason| LabelError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if first.is_ascii_digit() {
        return Err(invalid("it starts with a digit"));
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err(invalid(
            "it starts with a character other than a letter or _",
        ));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(invalid(
            "it has a character other than a letter, digit or _",
        ));
    }
    Ok(())
}

/// Whether `name` matches `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ls(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().copied()).expect("valid labels")
    }

    #[test]
    fn labels_are_sorted_and_empty_values_dropped() {
        let l = ls(&[("job", "api"), ("__name__", "up"), ("env", ""), ("a", "1")]);
        let names: Vec<&str> = l.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "a", "job"]);
        assert_eq!(l.get("job"), Some("api"));
        assert_eq!(l.get("env"), None);
        assert_eq!(l.metric_name(), Some("up"));
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn names_follow_prometheus_rules() {
        for good in ["a", "_", "__name__", "job_2", "A_b"] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        assert_eq!(validate_name(""), Err(LabelError::EmptyName));
        for bad in ["2xx", "a-b", "a.b", "é", "a b", "a:b"] {
            let err = validate_name(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
        assert_eq!(
            validate_name("2xx").map_err(|e| e.to_string()),
            Err("label name `2xx` is invalid: it starts with a digit; names match [a-zA-Z_][a-zA-Z0-9_]*".to_owned())
        );
        assert!(is_metric_name("http_requests:rate5m"));
        assert!(is_metric_name(":a"));
        assert!(!is_metric_name("5m"));
        assert!(!is_metric_name(""));
        assert_eq!(
            Labels::new([("__name__", "a-b")]),
            Err(LabelError::InvalidMetricName("a-b".into()))
        );
        assert_eq!(
            Labels::new([("a", "1"), ("b", "2"), ("a", "1")]),
            Err(LabelError::Duplicate("a".into()))
        );
        // A name given twice is refused even when one value is empty.
        assert_eq!(
            Labels::new([("a", ""), ("a", "1")]),
            Err(LabelError::Duplicate("a".into()))
        );
    }

    #[test]
    fn values_may_be_any_text() {
        let l = ls(&[("path", "/a b\n\"c\"\\é")]);
        assert_eq!(l.get("path"), Some("/a b\n\"c\"\\é"));
        assert_eq!(l.to_string(), r#"{path="/a b\n\"c\"\\é"}"#);
    }

    #[test]
    fn display_uses_prometheus_notation() {
        assert_eq!(ls(&[("__name__", "up")]).to_string(), "up");
        assert_eq!(
            ls(&[("job", "x"), ("__name__", "up"), ("env", "prod")]).to_string(),
            r#"up{env="prod", job="x"}"#
        );
        assert_eq!(Labels::empty().to_string(), "{}");
    }

    #[test]
    fn with_and_without() {
        let l = ls(&[("__name__", "up"), ("job", "x")]);
        assert_eq!(
            l.with("env", "prod"),
            Ok(ls(&[("__name__", "up"), ("job", "x"), ("env", "prod")]))
        );
        assert_eq!(
            l.with("job", "y"),
            Ok(ls(&[("__name__", "up"), ("job", "y")]))
        );
        assert_eq!(l.with("job", ""), Ok(ls(&[("__name__", "up")])));
        assert!(l.with("bad-name", "1").is_err());
        assert_eq!(l.without(&["__name__"]), ls(&[("job", "x")]));
    }

    #[test]
    fn stable_hash_is_stable_and_order_independent() {
        // Published FNV-1a test vectors.
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        // Fixed values: a change here breaks ids stored on disk.
        assert_eq!(Labels::empty().stable_hash(), 0xcbf2_9ce4_8422_2325);
        let up = ls(&[("__name__", "up"), ("job", "api")]);
        assert_eq!(up.stable_hash(), 0x352a_a4b1_5fa2_8bb6);
        assert_eq!(
            ls(&[("job", "api"), ("__name__", "up")]).stable_hash(),
            up.stable_hash()
        );
        assert_ne!(
            ls(&[("a", "bc")]).stable_hash(),
            ls(&[("ab", "c")]).stable_hash()
        );
        assert_ne!(
            ls(&[("a", "b"), ("c", "d")]).stable_hash(),
            ls(&[("a", "bc"), ("d", "x")]).stable_hash()
        );
    }

    #[test]
    fn random_label_sets_hash_equal_exactly_when_equal() {
        let mut rng = fastrand::Rng::with_seed(5);
        let names = ["a", "b", "job", "__name__", "instance"];
        let values = ["", "x", "y", "up", "a1"];
        let mut seen = std::collections::HashMap::new();
        for _ in 0..5_000 {
            let mut pairs = Vec::new();
            for name in names {
                if rng.bool() {
                    pairs.push((name, values[rng.usize(0..values.len())]));
                }
            }
            rng.shuffle(&mut pairs);
            let l = Labels::new(pairs).expect("valid");
            let prev = seen.entry(l.stable_hash()).or_insert_with(|| l.clone());
            assert_eq!(*prev, l);
        }
    }
}
