//! Checks on the text of a spec before and around the TOML parse: duplicate
//! keys named with both places.

use std::ops::Range;

use crate::diagnostic::Reporter;
use crate::tree::{Kind, Node, Seg, path_string};
use crate::walk::Issue;

/// At most this many duplicate keys are named; more are rare and the file
/// is re-parsed once per duplicate.
const MAX_DUPLICATES: usize = 32;

/// toml_edit's message for a key set twice (it names neither the key nor the
/// first place).
pub(crate) fn is_duplicate_key(e: &toml_edit::TomlError) -> bool {
    e.message().starts_with("duplicate key")
}

/// One key set twice: where the second one is, and its name.
struct Duplicate {
    marker: String,
    name: String,
    span: Range<usize>,
}

/// Renames made to the text, to map positions in the renamed text back.
#[derive(Default)]
struct Renames(Vec<(usize, usize, usize)>);

impl Renames {
    /// Records that `len` bytes at `start` (in the original text) became
    /// `new_len` bytes.
    fn add(&mut self, start: usize, len: usize, new_len: usize) {
        let at = self.0.partition_point(|(s, _, _)| *s < start);
        self.0.insert(at, (start, len, new_len));
    }

    /// The original offset of `offset` in the renamed text.
    fn original(&self, offset: usize) -> usize {
        let (mut grown, mut shrunk) = (0usize, 0usize);
        for &(start, len, new_len) in &self.0 {
            let renamed_start = start + grown - shrunk;
            if offset < renamed_start {
                break;
            }
            if offset < renamed_start + new_len {
                return start;
            }
            grown += new_len;
            shrunk += len;
        }
        (offset + shrunk).saturating_sub(grown)
    }
}

/// Every key set twice, found by renaming each second occurrence the
/// parser reports to a unique marker and parsing again; each is reported
/// with its key path and the place of the first. A syntax error that is not
/// a duplicate, met on the way, is reported too.
pub(crate) fn duplicate_keys(
    rep: &Reporter<'_>,
    text: &str,
    first: &toml_edit::TomlError,
) -> Vec<Issue> {
    let mut renamed = text.to_string();
    let mut renames = Renames::default();
    let mut dups: Vec<Duplicate> = Vec::new();
    let mut error = Some(first.clone());
    let mut tree = None;
    while let Some(e) = error.take() {
        let span = e.span().filter(|_| is_duplicate_key(&e));
        let Some(span) = span.filter(|_| dups.len() < MAX_DUPLICATES) else {
            // Not a duplicate (or too many): report it as it is.
            error = Some(e);
            break;
        };
        let Some(raw) = renamed.get(span.clone()).map(str::to_string) else {
            break;
        };
        if dups.iter().any(|d| d.marker == raw.trim()) {
            // Renaming did not resolve it (a dotted key into a table defined
            // with a header): name the key without the rest.
            tree = None;
            break;
        }
        let name = raw
            .trim()
            .parse::<toml_edit::Key>()
            .map_or_else(|_| raw.trim().to_string(), |k| k.get().to_string());
        let mut marker = format!("gantry-duplicate-{}", dups.len());
        while text.contains(&marker) {
            marker.push('x');
        }
        let start = renames.original(span.start);
        renames.add(start, span.len(), marker.len());
        renamed.replace_range(span, &marker);
        dups.push(Duplicate {
            marker,
            name,
            span: start..start + raw.len(),
        });
        match toml_edit::Document::parse(renamed.as_str()) {
            Ok(doc) => {
                tree = Node::from_item(doc.as_item());
            }
            Err(next) => error = Some(next),
        }
    }

    let mut out = Vec::new();
    for d in &dups {
        let found = tree.as_ref().and_then(|t| find_marker(t, &d.marker));
        let (path, first_span, is_table) = match &found {
            Some((path, parent)) => {
                let mut full = path.clone();
                full.push(Seg::Key(d.name.clone()));
                let first = parent
                    .entry(&d.name)
                    .and_then(|e| e.key_span.clone().or_else(|| e.value.span.clone()))
                    .map(|s| renames.original(s.start));
                let is_table = parent
                    .entry(&d.marker)
                    .is_some_and(|e| matches!(e.value.kind, Kind::Table(_)));
                (path_string(&full), first, is_table)
            }
            None => (String::new(), None, false),
        };
        let first = first_span.map(|at| {
            let (line, column) = rep.position(at);
            format!("line {line}, column {column}")
        });
        let message = match (is_table, first) {
            (true, Some(at)) => format!("table `[{path}]` is defined twice: first at {at}"),
            (true, None) => format!("table `[{path}]` is defined twice"),
            (false, Some(at)) => format!("duplicate key `{}`: it is already set at {at}", d.name),
            (false, None) => format!("duplicate key `{}`: it is already set above", d.name),
        };
        let help = if is_table {
            format!(
                "a table is defined once: move these keys into the first `[{path}]`, or remove one of them"
            )
        } else {
            "a key is set once per table: keep one of the two".to_string()
        };
        out.push(Issue {
            span: Some(d.span.clone()),
            path,
            message,
            help: Some(help),
        });
    }
    if let Some(e) = error {
        let span = e.span().map(|s| {
            let start = renames.original(s.start);
            start..start.max(renames.original(s.end))
        });
        out.push(Issue {
            span,
            path: String::new(),
            message: format!("invalid TOML: {}", e.message().trim()),
            help: Some(
                "fix the TOML syntax first; other problems are reported once the file parses"
                    .to_string(),
            ),
        });
    }
    out
}

/// The path of the table holding the entry named `marker`, and that table.
fn find_marker<'n>(node: &'n Node, marker: &str) -> Option<(Vec<Seg>, &'n Node)> {
    fn go<'n>(node: &'n Node, marker: &str, path: &mut Vec<Seg>) -> Option<&'n Node> {
        match &node.kind {
            Kind::Table(entries) => {
                if node.entry(marker).is_some() {
                    return Some(node);
                }
                for e in entries.iter() {
                    path.push(Seg::Key(e.key.clone()));
                    if let Some(found) = go(&e.value, marker, path) {
                        return Some(found);
                    }
                    path.pop();
                }
                None
            }
            Kind::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    if let Some(found) = go(item, marker, path) {
                        return Some(found);
                    }
                    path.pop();
                }
                None
            }
            _ => None,
        }
    }
    let mut path = Vec::new();
    go(node, marker, &mut path).map(|parent| (path, parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renamed_offsets_map_back() {
        let mut r = Renames::default();
        // "ab = 1\nab = 2" -> "ab = 1\nMARKER = 2" (2 bytes became 6 at 7).
        r.add(7, 2, 6);
        assert_eq!(r.original(0), 0);
        assert_eq!(r.original(7), 7);
        assert_eq!(r.original(10), 7);
        assert_eq!(r.original(13), 9);
        // A second rename before the first: 1 byte became 4 at 2.
        r.add(2, 1, 4);
        assert_eq!(r.original(1), 1);
        assert_eq!(r.original(4), 2);
        assert_eq!(r.original(6), 3);
        assert_eq!(r.original(10), 7);
        assert_eq!(r.original(16), 9);
    }
}
