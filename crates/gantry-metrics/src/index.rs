//! The in-memory label index: series ids and postings lists.
//!
//! Every distinct [`Labels`] gets a [`SeriesId`], handed out in increasing
//! order. For each (name, value) the index keeps the *postings list*: the
//! ids of the series with that label, sorted, because ids only grow.
//!
//! A selector is a list of [`Matcher`]s, all of which a series must pass.
//! A label a series does not have counts as the empty value, as in
//! Prometheus, so `{env=""}` selects series without `env` and `{env!="x"}`
//! includes them. [`MemIndex::select`] therefore splits the matchers:
//!
//! - a matcher the empty value fails (`job="api"`, `job=~"a.+"`) needs the
//!   label: the union of the postings of the values it accepts, intersected
//!   with the other such unions;
//! - a matcher the empty value passes (`env!="prod"`, `env=~"|dev"`) keeps
//!   every series but those holding a value it refuses: that union is
//!   subtracted.
//!
//! With no matcher of the first kind the starting set is every series.
//! Regexes are anchored at both ends and `.` matches a newline, like
//! Prometheus's: `job=~"api"` does not match `api-2`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use regex::Regex;

use crate::labels::Labels;

/// A series' number in the index, in creation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId(pub u64);

impl SeriesId {
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// The four Prometheus label match operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`
    RegexMatch,
    /// `!~`
    RegexNoMatch,
}

impl fmt::Display for MatchOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::RegexMatch => "=~",
            MatchOp::RegexNoMatch => "!~",
        })
    }
}

/// Why a matcher could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MatcherError {
    #[error("invalid regex for label `{name}`: {pattern:?}: {message}")]
    InvalidRegex {
        name: String,
        pattern: String,
        message: String,
    },
}

/// One condition on one label: `name op "value"`.
#[derive(Debug, Clone)]
pub struct Matcher {
    op: MatchOp,
    name: String,
    value: String,
    re: Option<Regex>,
}

impl Matcher {
    /// Builds a matcher; `=~` and `!~` compile `value` as an anchored regex.
    pub fn new(
        op: MatchOp,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, MatcherError> {
        let (name, value) = (name.into(), value.into());
        let re = match op {
            MatchOp::Equal | MatchOp::NotEqual => None,
            MatchOp::RegexMatch | MatchOp::RegexNoMatch => Some(compile_anchored(&name, &value)?),
        };
        Ok(Self {
            op,
            name,
            value,
            re,
        })
    }

    /// `name="value"`, which cannot fail.
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            op: MatchOp::Equal,
            name: name.into(),
            value: value.into(),
            re: None,
        }
    }

    pub fn op(&self) -> MatchOp {
        self.op
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether a label value passes; `""` stands for a missing label.
    pub fn matches(&self, value: &str) -> bool {
        match (self.op, &self.re) {
            (MatchOp::Equal, _) => value == self.value,
            (MatchOp::NotEqual, _) => value != self.value,
            (MatchOp::RegexMatch, Some(re)) => re.is_match(value),
            (MatchOp::RegexNoMatch, Some(re)) => !re.is_match(value),
            // `new` always compiles the regex of these two.
            (MatchOp::RegexMatch | MatchOp::RegexNoMatch, None) => false,
        }
    }

    /// Whether a series passes this matcher.
    pub fn matches_labels(&self, labels: &Labels) -> bool {
        self.matches(labels.get(&self.name).unwrap_or(""))
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op, self.value)
    }
}

/// Compiles `^(?s:pattern)$`, after checking that `pattern` parses on its
/// own, so a pattern like `a)|(b` cannot escape the anchors.
fn compile_anchored(name: &str, pattern: &str) -> Result<Regex, MatcherError> {
    let invalid = |message: String| MatcherError::InvalidRegex {
        name: name.to_owned(),
        pattern: pattern.to_owned(),
        message,
    };
    regex_syntax::Parser::new()
        .parse(pattern)
        .map_err(|e| invalid(e.to_string()))?;
    Regex::new(&format!("^(?s:{pattern})$")).map_err(|e| invalid(e.to_string()))
}

/// Series ids, their label sets and the postings lists.
#[derive(Debug, Clone, Default)]
pub struct MemIndex {
    /// Label sets by id.
    series: Vec<Labels>,
    /// Ids by [`Labels::stable_hash`]; more than one only on a collision.
    by_hash: HashMap<u64, Vec<SeriesId>>,
    /// name → value → sorted ids.
    postings: BTreeMap<String, BTreeMap<String, Vec<SeriesId>>>,
}

impl MemIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// An index of `series` (ids their positions) with postings read
    /// from disk, name → value → sorted ids, each id below `series.len()`.
    pub(crate) fn from_parts(
        series: Vec<Labels>,
        postings: BTreeMap<String, BTreeMap<String, Vec<SeriesId>>>,
    ) -> Self {
        let mut by_hash: HashMap<u64, Vec<SeriesId>> = HashMap::new();
        for (i, labels) in series.iter().enumerate() {
            by_hash
                .entry(labels.stable_hash())
                .or_default()
                .push(SeriesId(i as u64));
        }
        Self {
            series,
            by_hash,
            postings,
        }
    }

    /// Every (name, value) and its sorted ids, for writing a block.
    pub(crate) fn postings_lists(&self) -> impl Iterator<Item = (&str, &str, &[SeriesId])> {
        self.postings.iter().flat_map(|(name, values)| {
            values
                .iter()
                .map(move |(value, ids)| (name.as_str(), value.as_str(), ids.as_slice()))
        })
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// The id of `labels`, if indexed.
    pub fn get(&self, labels: &Labels) -> Option<SeriesId> {
        self.by_hash
            .get(&labels.stable_hash())?
            .iter()
            .copied()
            .find(|id| self.series[id.index()] == *labels)
    }

    /// The id of `labels`, adding the series if it is new; the flag says
    /// whether it was added.
    pub fn get_or_insert(&mut self, labels: &Labels) -> (SeriesId, bool) {
        if let Some(id) = self.get(labels) {
            return (id, false);
        }
        let id = SeriesId(self.series.len() as u64);
        self.by_hash
            .entry(labels.stable_hash())
            .or_default()
            .push(id);
        for l in labels {
            self.postings
                .entry(l.name.clone())
                .or_default()
                .entry(l.value.clone())
                .or_default()
                .push(id);
        }
        self.series.push(labels.clone());
        (id, true)
    }

    /// The label set of `id`.
    pub fn labels(&self, id: SeriesId) -> Option<&Labels> {
        self.series.get(id.index())
    }

    /// The sorted ids of the series with `name="value"`.
    pub fn postings(&self, name: &str, value: &str) -> &[SeriesId] {
        self.postings
            .get(name)
            .and_then(|values| values.get(value))
            .map_or(&[], Vec::as_slice)
    }

    /// Every label name, sorted.
    pub fn label_names(&self) -> impl Iterator<Item = &str> {
        self.postings.keys().map(String::as_str)
    }

    /// Every value of `name`, sorted.
    pub fn label_values(&self, name: &str) -> impl Iterator<Item = &str> {
        self.postings
            .get(name)
            .into_iter()
            .flat_map(|values| values.keys().map(String::as_str))
    }

    /// The sorted ids of the series that pass every matcher.
    pub fn select(&self, matchers: &[Matcher]) -> Vec<SeriesId> {
        let mut required: Vec<Vec<SeriesId>> = Vec::new();
        let mut excluded: Vec<Vec<SeriesId>> = Vec::new();
        for m in matchers {
            if m.matches("") {
                // Every series except those holding a value `m` refuses.
                excluded.push(self.union_where(&m.name, |v| !m.matches(v)));
            } else if m.op == MatchOp::Equal {
                required.push(self.postings(&m.name, &m.value).to_vec());
            } else {
                required.push(self.union_where(&m.name, |v| m.matches(v)));
            }
        }
        // Smallest first, so the running intersection shrinks fastest.
        required.sort_by_key(Vec::len);
        let mut result = match required.split_first() {
            None => (0..self.series.len() as u64).map(SeriesId).collect(),
            Some((first, rest)) => rest.iter().fold(first.clone(), |acc, p| intersect(&acc, p)),
        };
        if !excluded.is_empty() && !result.is_empty() {
            result = difference(&result, &union(excluded.iter().map(Vec::as_slice)));
        }
        result
    }

    /// The union of the postings of the values of `name` that pass `keep`.
    fn union_where(&self, name: &str, keep: impl Fn(&str) -> bool) -> Vec<SeriesId> {
        let Some(values) = self.postings.get(name) else {
            return Vec::new();
        };
        union(
            values
                .iter()
                .filter(|(v, _)| keep(v))
                .map(|(_, ids)| ids.as_slice()),
        )
    }
}

// === sorted postings lists ===

/// The ids in both sorted lists.
pub fn intersect(a: &[SeriesId], b: &[SeriesId]) -> Vec<SeriesId> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// The ids in any of the sorted lists, sorted and without repeats.
pub fn union<'a>(lists: impl IntoIterator<Item = &'a [SeriesId]>) -> Vec<SeriesId> {
    let mut lists = lists.into_iter();
    let Some(first) = lists.next() else {
        return Vec::new();
    };
    let mut acc = first.to_vec();
    for list in lists {
        acc = merge(&acc, list);
    }
    acc
}

fn merge(a: &[SeriesId], b: &[SeriesId]) -> Vec<SeriesId> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len() + b.len());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The ids of sorted `a` that are not in sorted `b`.
pub fn difference(a: &[SeriesId], b: &[SeriesId]) -> Vec<SeriesId> {
    let mut j = 0;
    let mut out = Vec::with_capacity(a.len());
    for &id in a {
        while j < b.len() && b[j] < id {
            j += 1;
        }
        if b.get(j) != Some(&id) {
            out.push(id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn m(op: MatchOp, name: &str, value: &str) -> Matcher {
        Matcher::new(op, name, value).expect("valid matcher")
    }

    fn ls(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().copied()).expect("valid labels")
    }

    fn sample_index() -> (MemIndex, Vec<Labels>) {
        let sets = vec![
            ls(&[("__name__", "up"), ("job", "api"), ("env", "prod")]),
            ls(&[("__name__", "up"), ("job", "api-2"), ("env", "staging")]),
            ls(&[("__name__", "up"), ("job", "db")]),
            ls(&[
                ("__name__", "requests_total"),
                ("job", "api"),
                ("code", "200"),
            ]),
            ls(&[
                ("__name__", "requests_total"),
                ("job", "api"),
                ("code", "500"),
            ]),
        ];
        let mut idx = MemIndex::new();
        for s in &sets {
            idx.get_or_insert(s);
        }
        (idx, sets)
    }

    fn ids(v: &[u64]) -> Vec<SeriesId> {
        v.iter().copied().map(SeriesId).collect()
    }

    #[test]
    fn ids_are_stable_and_postings_sorted() {
        let (mut idx, sets) = sample_index();
        assert_eq!(idx.len(), 5);
        assert_eq!(idx.get_or_insert(&sets[2]), (SeriesId(2), false));
        assert_eq!(idx.get(&sets[4]), Some(SeriesId(4)));
        assert_eq!(idx.get(&ls(&[("job", "none")])), None);
        assert_eq!(idx.labels(SeriesId(1)), Some(&sets[1]));
        assert_eq!(idx.postings("job", "api"), ids(&[0, 3, 4]).as_slice());
        assert_eq!(idx.postings("job", "nope"), &[]);
        assert_eq!(
            idx.label_names().collect::<Vec<_>>(),
            ["__name__", "code", "env", "job"]
        );
        assert_eq!(
            idx.label_values("job").collect::<Vec<_>>(),
            ["api", "api-2", "db"]
        );
        assert_eq!(idx.label_values("nope").count(), 0);
    }

    #[test]
    fn matchers_follow_prometheus_semantics() {
        let (idx, _) = sample_index();
        let sel = |ms: &[Matcher]| idx.select(ms);
        use MatchOp::*;
        assert_eq!(sel(&[m(Equal, "job", "api")]), ids(&[0, 3, 4]));
        // Regexes are anchored: `api` does not match `api-2`.
        assert_eq!(sel(&[m(RegexMatch, "job", "api")]), ids(&[0, 3, 4]));
        assert_eq!(sel(&[m(RegexMatch, "job", "api.*")]), ids(&[0, 1, 3, 4]));
        assert_eq!(sel(&[m(RegexMatch, "job", "ap")]), ids(&[]));
        // A missing label is the empty value.
        assert_eq!(sel(&[m(Equal, "env", "")]), ids(&[2, 3, 4]));
        assert_eq!(sel(&[m(NotEqual, "env", "")]), ids(&[0, 1]));
        assert_eq!(sel(&[m(NotEqual, "env", "prod")]), ids(&[1, 2, 3, 4]));
        assert_eq!(sel(&[m(RegexMatch, "env", "|prod")]), ids(&[0, 2, 3, 4]));
        assert_eq!(
            sel(&[m(RegexNoMatch, "env", "prod|staging")]),
            ids(&[2, 3, 4])
        );
        assert_eq!(sel(&[m(RegexNoMatch, "env", ".*")]), ids(&[]));
        assert_eq!(sel(&[m(RegexNoMatch, "env", ".+")]), ids(&[2, 3, 4]));
        // Several matchers: all must pass.
        assert_eq!(
            sel(&[
                m(Equal, "__name__", "requests_total"),
                m(RegexMatch, "code", "5.."),
            ]),
            ids(&[4])
        );
        assert_eq!(
            sel(&[m(Equal, "__name__", "up"), m(NotEqual, "job", "db")]),
            ids(&[0, 1])
        );
        assert_eq!(sel(&[]), ids(&[0, 1, 2, 3, 4]));
        // `.` matches a newline, as in Prometheus.
        let mut idx = MemIndex::new();
        idx.get_or_insert(&ls(&[("msg", "a\nb")]));
        assert_eq!(idx.select(&[m(RegexMatch, "msg", "a.b")]), ids(&[0]));
    }

    #[test]
    fn bad_regexes_are_errors_and_cannot_escape_the_anchors() {
        let err = Matcher::new(MatchOp::RegexMatch, "job", "a(").expect_err("unclosed");
        assert!(
            err.to_string()
                .starts_with("invalid regex for label `job`: \"a(\""),
            "{err}"
        );
        assert!(Matcher::new(MatchOp::RegexMatch, "job", "a)|(b").is_err());
        assert!(Matcher::new(MatchOp::RegexNoMatch, "job", "*").is_err());
        // `=` and `!=` take any value literally.
        assert!(Matcher::new(MatchOp::Equal, "job", "a(").is_ok());
        assert_eq!(
            m(MatchOp::RegexMatch, "a", "x|y").to_string(),
            r#"a=~"x|y""#
        );
    }

    #[test]
    fn postings_operations_match_sets() {
        let mut rng = fastrand::Rng::with_seed(11);
        let random_list = |rng: &mut fastrand::Rng| {
            let n = rng.usize(0..40);
            let set: BTreeSet<u64> = (0..n).map(|_| rng.u64(0..60)).collect();
            set.into_iter().map(SeriesId).collect::<Vec<_>>()
        };
        for _ in 0..2_000 {
            let a = random_list(&mut rng);
            let b = random_list(&mut rng);
            let c = random_list(&mut rng);
            let (sa, sb, sc): (BTreeSet<_>, BTreeSet<_>, BTreeSet<_>) = (
                a.iter().copied().collect(),
                b.iter().copied().collect(),
                c.iter().copied().collect(),
            );
            assert_eq!(
                intersect(&a, &b),
                sa.intersection(&sb).copied().collect::<Vec<_>>()
            );
            assert_eq!(
                difference(&a, &b),
                sa.difference(&sb).copied().collect::<Vec<_>>()
            );
            let all: BTreeSet<_> = sa
                .union(&sb)
                .copied()
                .collect::<BTreeSet<_>>()
                .union(&sc)
                .copied()
                .collect();
            assert_eq!(
                union([a.as_slice(), b.as_slice(), c.as_slice()]),
                all.into_iter().collect::<Vec<_>>()
            );
        }
        assert_eq!(union(std::iter::empty()), Vec::<SeriesId>::new());
    }

    #[test]
    fn select_matches_brute_force() {
        let names = ["__name__", "job", "env", "code"];
        let values = ["", "a", "b", "ab", "ba", "a\nb", "abc"];
        let patterns = [
            "",
            "a",
            "a.*",
            ".*",
            ".+",
            "a|b",
            "b.",
            "|a",
            "(ab|ba)c?",
            "[ab]+",
        ];
        use MatchOp::*;
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut idx = MemIndex::new();
            let mut sets = Vec::new();
            for _ in 0..rng.usize(0..60) {
                let mut pairs: Vec<(&str, &str)> = Vec::new();
                for name in names {
                    if rng.bool() {
                        let v = values[rng.usize(0..values.len())];
                        // A metric name holds no newline.
                        let v = if name == "__name__" && v.contains('\n') {
                            "x"
                        } else {
                            v
                        };
                        pairs.push((name, v));
                    }
                }
                let labels = Labels::new(pairs).expect("valid");
                if idx.get_or_insert(&labels).1 {
                    sets.push(labels);
                }
            }
            assert_eq!(idx.len(), sets.len());
            for _ in 0..30 {
                let matchers: Vec<Matcher> = (0..rng.usize(0..4))
                    .map(|_| {
                        let name = names[rng.usize(0..names.len())];
                        match rng.u8(0..4) {
                            0 => m(Equal, name, values[rng.usize(0..values.len())]),
                            1 => m(NotEqual, name, values[rng.usize(0..values.len())]),
                            2 => m(RegexMatch, name, patterns[rng.usize(0..patterns.len())]),
                            _ => m(RegexNoMatch, name, patterns[rng.usize(0..patterns.len())]),
                        }
                    })
                    .collect();
                let expect: Vec<SeriesId> = sets
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| matchers.iter().all(|m| m.matches_labels(l)))
                    .map(|(i, _)| SeriesId(i as u64))
                    .collect();
                assert_eq!(idx.select(&matchers), expect, "seed {seed} {matchers:?}");
            }
        }
    }
}
