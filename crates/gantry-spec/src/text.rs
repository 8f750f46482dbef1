//! Checks on the text of a spec before and around the TOML parse: its size,
//! that it is UTF-8, and duplicate keys named with both places.

use std::ops::Range;

use crate::diagnostic::{Diagnostic, Diagnostics, Reporter};
use crate::tree::{Kind, Node, Seg, path_string};
use crate::walk::Issue;

/// The largest `gantry.toml` accepted, in bytes (1 MiB). `gantry config
/// check`, `gantry config apply` and the server's apply all refuse a larger
/// one, with the same message, because all of them call [`crate::parse_str`]
/// (or [`crate::load`] / [`crate::parse_bytes`], which call it).
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// The base name of a spec's file name, for messages.
fn base_name(file_name: &str) -> &str {
    file_name
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or(file_name)
}

/// `512 bytes`, `12.5 KiB`, `1.2 MiB`, to the nearest tenth (messages give
/// the exact count too, for a file just over the limit).
fn human_bytes(n: u64) -> String {
    let tenths = |unit: u64| {
        let t = (u128::from(n) * 10 + u128::from(unit) / 2) / u128::from(unit);
        format!("{}.{}", t / 10, t % 10)
    };
    if n < 1024 {
        format!("{n} bytes")
    } else if n < 1 << 20 {
        format!("{} KiB", tenths(1 << 10))
    } else {
        format!("{} MiB", tenths(1 << 20))
    }
}

/// A spec over [`MAX_SPEC_BYTES`]: "gantry.toml is 1.2 MiB (1300000 bytes);
/// the limit is 1 MiB".
pub(crate) fn check_size(file_name: &str, len: u64) -> Result<(), Diagnostics> {
    if len <= MAX_SPEC_BYTES as u64 {
        return Ok(());
    }
    Err(Diagnostics(vec![Diagnostic {
        file: file_name.to_string(),
        line: 1,
        column: 1,
        key_path: String::new(),
        message: format!(
            "{} is {} ({len} bytes); the limit is {}",
            base_name(file_name),
            human_bytes(len),
            human_bytes(MAX_SPEC_BYTES as u64).replace(".0 ", " "),
        ),
        help: Some(
            "a spec this large is usually generated: keep bulk data out of it (in files the app reads), or split the app"
                .to_string(),
        ),
    }]))
}

/// The text of a spec, or where its first byte that is not UTF-8 is: line,
/// column (in characters) and byte offset.
pub(crate) fn utf8<'b>(file_name: &str, bytes: &'b [u8]) -> Result<&'b str, Diagnostics> {
    let e = match std::str::from_utf8(bytes) {
        Ok(text) => return Ok(text),
        Err(e) => e,
    };
    let at = e.valid_up_to();
    let valid = std::str::from_utf8(&bytes[..at]).unwrap_or_default();
    let rep = Reporter::new(file_name, valid);
    let (line, column) = rep.position(at);
    let byte = bytes.get(at).copied().unwrap_or_default();
    Err(Diagnostics(vec![Diagnostic {
        file: file_name.to_string(),
        line,
        column,
        key_path: String::new(),
        message: format!(
            "invalid UTF-8 at byte offset {at} (byte 0x{byte:02X}): {} must be UTF-8 text",
            base_name(file_name)
        ),
        help: Some(format!(
            "save the file as UTF-8; if it was written as Latin-1, `iconv -f latin1 -t utf-8 {0} > {0}.utf8` converts it",
            base_name(file_name)
        )),
    }]))
}

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
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(12_800), "12.5 KiB");
        assert_eq!(human_bytes(1_300_000), "1.2 MiB");
        assert_eq!(human_bytes((1 << 20) + 1), "1.0 MiB");
        let err = check_size("dir/gantry.toml", 1_300_000).map_err(|d| d.to_string());
        assert_eq!(
            err.err().as_deref().and_then(|e| e.lines().next()),
            Some("dir/gantry.toml:1:1: gantry.toml is 1.2 MiB (1300000 bytes); the limit is 1 MiB")
        );
        assert!(check_size("gantry.toml", MAX_SPEC_BYTES as u64).is_ok());
    }

    #[test]
    fn the_first_bad_byte_is_located() {
        let bytes = b"[app]\nname = \"caf\xC3\xA9 \xE9t\xE9\"\n";
        let err = match utf8("gantry.toml", bytes) {
            Ok(_) => panic!("accepted Latin-1"),
            Err(d) => d.to_string(),
        };
        // Line 2 starts at byte 6; `name = "café ` is 13 characters and 14
        // bytes (é is two), so the bad byte is at offset 20, column 14.
        assert!(
            err.starts_with(
                "gantry.toml:2:14: invalid UTF-8 at byte offset 20 (byte 0xE9): gantry.toml must be UTF-8 text"
            ),
            "{err}"
        );
        assert!(utf8("g", "é ok".as_bytes()).is_ok());
        // A file cut in the middle of a character.
        let cut = utf8("g", &"é".as_bytes()[..1]).map_err(|d| d.to_string());
        assert!(
            cut.err()
                .is_some_and(|e| e.contains("byte offset 0 (byte 0xC3)"))
        );
    }

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
