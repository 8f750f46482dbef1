//! A small TOML tree that keeps the source span of every key and value.
//!
//! It is built once from `toml_edit`'s parse, survives merging (a merged tree
//! still points into the original file), and converts to `toml::Value` for
//! typed deserialization.
//!
//! A table keeps its entries sorted by key (TOML keys are unique in a table),
//! so a lookup is a binary search and merging an environment's table over the
//! base is one linear pass over both: a spec with 64k keys in
//! `[environments.big.env]` checks as fast as one with them in `[env]`.

use std::cmp::Ordering;
use std::ops::Range;

use toml_edit::{Item, Value};

/// Byte range in the source; `None` for values that have no text of their own
/// (implicit tables such as `environments` in `[environments.production]`).
pub(crate) type Span = Option<Range<usize>>;

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) span: Span,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Table(Table),
    Array(Vec<Node>),
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) key_span: Span,
    pub(crate) value: Node,
}

/// The entries of a table, sorted by key, each key once.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table(Vec<Entry>);

impl Table {
    /// Sorts `entries` by key; of two entries with the same key (which a
    /// parsed document never has) the last wins, as in a merge.
    pub(crate) fn new(mut entries: Vec<Entry>) -> Table {
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
        for e in entries {
            match out.last_mut() {
                Some(last) if last.key == e.key => *last = e,
                _ => out.push(e),
            }
        }
        Table(out)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Entry> {
        self.0
            .binary_search_by(|e| e.key.as_str().cmp(key))
            .ok()
            .and_then(|i| self.0.get(i))
    }

    pub(crate) fn retain(&mut self, keep: impl FnMut(&Entry) -> bool) {
        self.0.retain(keep);
    }
}

impl std::ops::Deref for Table {
    type Target = [Entry];

    fn deref(&self) -> &[Entry] {
        &self.0
    }
}

/// One pass over two sorted tables: every key of `base` and `over` once, in
/// order, with `both` called for keys in both. `cmp` compares keys; it is
/// called at most `base.len() + over.len()` times (the test counts).
fn merge_sorted(
    base: &[Entry],
    over: &[Entry],
    mut cmp: impl FnMut(&str, &str) -> Ordering,
    mut both: impl FnMut(&Entry, &Entry) -> Entry,
) -> Vec<Entry> {
    let mut out = Vec::with_capacity(base.len() + over.len());
    let (mut b, mut o) = (base.iter().peekable(), over.iter().peekable());
    loop {
        let next = match (b.peek(), o.peek()) {
            (Some(x), Some(y)) => match cmp(&x.key, &y.key) {
                Ordering::Less => b.next().cloned(),
                Ordering::Greater => o.next().cloned(),
                Ordering::Equal => match (b.next(), o.next()) {
                    (Some(x), Some(y)) => Some(both(x, y)),
                    _ => None,
                },
            },
            (Some(_), None) => b.next().cloned(),
            (None, Some(_)) => o.next().cloned(),
            (None, None) => None,
        };
        match next {
            Some(e) => out.push(e),
            None => return out,
        }
    }
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

impl Node {
    pub(crate) fn from_item(item: &Item) -> Option<Node> {
        match item {
            Item::None => None,
            Item::Value(v) => Some(Node::from_value(v)),
            Item::Table(t) => Some(Node {
                span: t.span(),
                kind: Kind::Table(Table::new(
                    t.iter()
                        .filter_map(|(k, v)| {
                            Some(Entry {
                                key: k.to_string(),
                                key_span: t.key(k).and_then(toml_edit::Key::span),
                                value: Node::from_item(v)?,
                            })
                        })
                        .collect(),
                )),
            }),
            Item::ArrayOfTables(a) => Some(Node {
                span: a.span(),
                kind: Kind::Array(
                    a.iter()
                        .map(|t| Node {
                            span: t.span(),
                            kind: Kind::Table(Table::new(
                                t.iter()
                                    .filter_map(|(k, v)| {
                                        Some(Entry {
                                            key: k.to_string(),
                                            key_span: t.key(k).and_then(toml_edit::Key::span),
                                            value: Node::from_item(v)?,
                                        })
                                    })
                                    .collect(),
                            )),
                        })
                        .collect(),
                ),
            }),
        }
    }

    fn from_value(v: &Value) -> Node {
        let span = v.span();
        let kind = match v {
            Value::String(s) => Kind::String(s.value().clone()),
            Value::Integer(i) => Kind::Integer(*i.value()),
            Value::Float(f) => Kind::Float(*f.value()),
            Value::Boolean(b) => Kind::Boolean(*b.value()),
            Value::Datetime(d) => Kind::Datetime(d.value().to_string()),
            Value::Array(a) => Kind::Array(a.iter().map(Node::from_value).collect()),
            Value::InlineTable(t) => Kind::Table(Table::new(
                t.iter()
                    .map(|(k, v)| Entry {
                        key: k.to_string(),
                        key_span: t.key(k).and_then(toml_edit::Key::span),
                        value: Node::from_value(v),
                    })
                    .collect(),
            )),
        };
        Node { kind, span }
    }

    pub(crate) fn empty_table() -> Node {
        Node {
            kind: Kind::Table(Table::default()),
            span: None,
        }
    }

    /// The entries, sorted by key, if this is a table.
    pub(crate) fn entries(&self) -> Option<&[Entry]> {
        match &self.kind {
            Kind::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The entry for `key`, if this is a table that has it.
    pub(crate) fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.kind {
            Kind::Table(t) => t.get(key),
            _ => None,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    /// The node at `path` and the span best pointing at it (its value, or
    /// its key when the value has no span of its own).
    pub(crate) fn at(&self, path: &[Seg]) -> Option<(&Node, Span)> {
        let mut node = self;
        let mut span = self.span.clone();
        for seg in path {
            match (seg, &node.kind) {
                (Seg::Key(k), Kind::Table(_)) => {
                    let e = node.entry(k)?;
                    span = e.value.span.clone().or_else(|| e.key_span.clone());
                    node = &e.value;
                }
                (Seg::Index(i), Kind::Array(items)) => {
                    node = items.get(*i)?;
                    span = node.span.clone().or(span);
                }
                _ => return None,
            }
        }
        Some((node, span))
    }

    /// A short name of the TOML type and the value, for messages:
    /// `integer 30`, `string "x"`, `table`.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            Kind::Table(_) => "a table".to_string(),
            Kind::Array(_) => "an array".to_string(),
            Kind::String(s) => {
                let shown: String = s.chars().take(40).collect();
                let ellipsis = if s.chars().count() > 40 { "..." } else { "" };
                format!("string \"{shown}{ellipsis}\"")
            }
            Kind::Integer(i) => format!("integer {i}"),
            Kind::Float(f) => format!("float {f}"),
            Kind::Boolean(b) => format!("boolean {b}"),
            Kind::Datetime(d) => format!("datetime {d}"),
        }
    }

    pub(crate) fn to_toml(&self) -> toml::Value {
        match &self.kind {
            Kind::Table(entries) => toml::Value::Table(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_toml()))
                    .collect(),
            ),
            Kind::Array(items) => toml::Value::Array(items.iter().map(Node::to_toml).collect()),
            Kind::String(s) => toml::Value::String(s.clone()),
            Kind::Integer(i) => toml::Value::Integer(*i),
            Kind::Float(f) => toml::Value::Float(*f),
            Kind::Boolean(b) => toml::Value::Boolean(*b),
            Kind::Datetime(d) => d
                .parse()
                .map_or_else(|_| toml::Value::String(d.clone()), toml::Value::Datetime),
        }
    }

    /// Deep merge: tables merge key by key, everything else in `over`
    /// replaces what is in `self`. Linear in the size of both trees.
    pub(crate) fn merged(&self, over: &Node) -> Node {
        match (&self.kind, &over.kind) {
            (Kind::Table(base), Kind::Table(top)) => {
                let entries = merge_sorted(base, top, str::cmp, |b, o| Entry {
                    key: o.key.clone(),
                    key_span: o.key_span.clone(),
                    value: b.value.merged(&o.value),
                });
                Node {
                    kind: Kind::Table(Table(entries)),
                    span: over.span.clone().or_else(|| self.span.clone()),
                }
            }
            _ => over.clone(),
        }
    }

    /// This table without `key`.
    pub(crate) fn without(&self, key: &str) -> Node {
        match &self.kind {
            Kind::Table(entries) => Node {
                kind: Kind::Table(Table(
                    entries.iter().filter(|e| e.key != key).cloned().collect(),
                )),
                span: self.span.clone(),
            },
            _ => self.clone(),
        }
    }
}

/// `a.b[2]."odd key"` — a key path for humans.
pub(crate) fn path_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push('"');
                    out.push_str(&k.replace('\\', "\\\\").replace('"', "\\\""));
                    out.push('"');
                }
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> Node {
        match toml_edit::Document::parse(text) {
            Ok(doc) => Node::from_item(doc.as_item()).unwrap_or_else(Node::empty_table),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn merge_is_deep_for_tables_and_replaces_arrays_and_scalars() {
        let base =
            tree("[a]\nx = 1\ny = [1, 2]\n[a.inner]\nkeep = true\nchange = 1\n[b]\nz = 's'\n");
        let over = tree("[a]\ny = [3]\n[a.inner]\nchange = 2\n[c]\nnew = 1\n");
        let merged = base.merged(&over).to_toml();
        let expected: toml::Value = match toml::from_str(
            "[a]\nx = 1\ny = [3]\n[a.inner]\nkeep = true\nchange = 2\n[b]\nz = 's'\n[c]\nnew = 1\n",
        ) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(merged, expected);
    }

    #[test]
    fn a_scalar_can_replace_a_table_and_back() {
        let base = tree("a = { x = 1 }\nb = 2\n");
        let over = tree("a = 5\nb = { y = 1 }\n");
        assert_eq!(
            base.merged(&over).to_toml().to_string(),
            "{ a = 5, b = { y = 1 } }"
        );
    }

    #[test]
    fn merged_nodes_keep_their_source_spans() {
        let text = "[a]\nx = 1\n[env.a]\ny = 2\n";
        let t = tree(text);
        let over = t
            .get("env")
            .and_then(|e| e.get("a"))
            .cloned()
            .unwrap_or_else(Node::empty_table);
        let merged = t
            .without("env")
            .get("a")
            .cloned()
            .unwrap_or_else(Node::empty_table)
            .merged(&over);
        let (_, span) = merged
            .at(&[Seg::Key("y".into())])
            .unwrap_or((&merged, None));
        assert_eq!(span.map(|s| &text[s]), Some("2"));
    }

    fn entries(keys: impl IntoIterator<Item = String>) -> Vec<Entry> {
        keys.into_iter()
            .map(|key| Entry {
                key,
                key_span: None,
                value: Node {
                    kind: Kind::Boolean(true),
                    span: None,
                },
            })
            .collect()
    }

    /// The merge of an environment's table over the base compares each key
    /// at most once: linear, whatever the sizes and however they overlap.
    #[test]
    fn merging_tables_is_linear_in_their_sizes() {
        let n = 1 << 16;
        let cases = [
            (0, n),     // everything in the override (`[environments.big.env]`)
            (n, 0),     // everything in the base (`[env]`)
            (n, n),     // the same keys in both
            (n / 2, n), // half of them new
        ];
        for (base_n, over_n) in cases {
            let base = Table::new(entries((0..base_n).map(|i| format!("K{i:05}"))));
            let over = Table::new(entries(
                (0..over_n).map(|i| format!("K{:05}", (i + base_n / 2) % n)),
            ));
            let mut compared = 0usize;
            let merged = merge_sorted(
                &base,
                &over,
                |a, b| {
                    compared += 1;
                    a.cmp(b)
                },
                |_, o| o.clone(),
            );
            assert!(
                compared <= base.len() + over.len(),
                "{compared} comparisons for {} + {} keys",
                base.len(),
                over.len()
            );
            assert!(merged.windows(2).all(|w| w[0].key < w[1].key));
            let distinct: std::collections::BTreeSet<&str> = base
                .iter()
                .chain(over.iter())
                .map(|e| e.key.as_str())
                .collect();
            assert_eq!(merged.len(), distinct.len());
        }
    }

    #[test]
    fn tables_find_keys_in_any_order_written() {
        let t = tree("z = 1\na = 2\nm = { y = 1, b = 2 }\n");
        let keys: Vec<&str> = t
            .entries()
            .unwrap_or_default()
            .iter()
            .map(|e| e.key.as_str())
            .collect();
        assert_eq!(keys, ["a", "m", "z"]);
        assert!(t.get("z").is_some() && t.get("q").is_none());
        assert!(t.get("m").and_then(|m| m.get("y")).is_some());
    }

    #[test]
    fn key_paths_quote_odd_keys() {
        let p = [
            Seg::Key("notify".into()),
            Seg::Key("a.b".into()),
            Seg::Index(2),
        ];
        assert_eq!(path_string(&p), "notify.\"a.b\"[2]");
    }
}
