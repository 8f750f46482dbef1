//! Which paths of a working copy `.gitignore` files ignore, for `gantry dev`.
//!
//! A small matcher instead of the `ignore` crate: `gantry dev` needs only
//! "is this path ignored?" for a tree it already walks, not a parallel
//! walker with globsets and regexes (five more crates in the binary). It
//! follows gitignore(5) for what working copies use:
//!
//! - `.gitignore` in every directory (patterns relative to it; a deeper file
//!   wins) and `.git/info/exclude`; the last matching line wins;
//! - blank lines and `#` comments, `\#` / `\!` / `\ ` escapes, trailing
//!   spaces dropped;
//! - `!pattern` re-includes; `dir/` matches directories only;
//! - a pattern with a `/` at its start or middle is anchored to its file's
//!   directory, one without matches a name at any depth;
//! - `*`, `?`, `[a-z]`, `[!abc]`, and `**` as `**/x`, `x/**` and `a/**/b`.
//!
//! Not supported: the user's global excludes file (`core.excludesFile`).
//! As in git, nothing inside an ignored directory can be re-included: the
//! caller checks every ancestor directory first ([`Rules::is_ignored`]).

use std::path::{Path, PathBuf};

/// One compiled line of an ignore file.
#[derive(Debug, Clone)]
struct Rule {
    /// The directory of the file it came from, relative to the root
    /// (empty for the root).
    base: PathBuf,
    tokens: Vec<Token>,
    negated: bool,
    dir_only: bool,
    /// Matches the path relative to `base`; otherwise the last name only.
    anchored: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Char(char),
    /// `?`: one character but `/`.
    One,
    /// `*`: any run of characters without `/`.
    Star,
    /// `**/`: nothing, or any run of whole directories (ending in `/`).
    Dirs,
    /// `**` elsewhere: any run of characters, `/` included.
    All,
    /// `[...]`: ranges, negated with a leading `!` or `^`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// The ignore rules of a tree, in the order they apply.
#[derive(Debug, Default, Clone)]
pub(super) struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// Adds the lines of one ignore file whose directory is `base`
    /// (relative to the root).
    pub(super) fn add(&mut self, base: &Path, text: &str) {
        self.rules
            .extend(text.lines().filter_map(|l| parse_line(base, l)));
    }

    /// Reads `dir/.gitignore` if there is one (`dir` relative to `root`).
    pub(super) fn add_file(&mut self, root: &Path, dir: &Path) {
        if let Ok(text) = std::fs::read_to_string(root.join(dir).join(".gitignore")) {
            self.add(dir, &text);
        }
    }

    /// Whether `rel` (relative to the root; a directory when `is_dir`)
    /// is ignored, itself or through one of its directories.
    pub(super) fn is_ignored(&self, rel: &Path, is_dir: bool) -> bool {
        let mut prefix = PathBuf::new();
        let parts: Vec<_> = rel.components().collect();
        for (i, c) in parts.iter().enumerate() {
            prefix.push(c);
            let last = i + 1 == parts.len();
            if self.matches(&prefix, !last || is_dir) {
                return true;
            }
        }
        false
    }

    /// The verdict of the last rule matching `rel` itself.
    fn matches(&self, rel: &Path, is_dir: bool) -> bool {
        let mut ignored = false;
        for r in &self.rules {
            if r.dir_only && !is_dir {
                continue;
            }
            let Ok(sub) = rel.strip_prefix(&r.base) else {
                continue;
            };
            let text = if r.anchored {
                sub.to_string_lossy()
            } else {
                match sub.file_name() {
                    Some(n) => n.to_string_lossy(),
                    None => continue,
                }
            };
            if !text.is_empty() && glob(&r.tokens, &text.chars().collect::<Vec<_>>()) {
                ignored = !r.negated;
            }
        }
        ignored
    }
}

fn parse_line(base: &Path, line: &str) -> Option<Rule> {
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    // Trailing spaces go unless escaped.
    let mut line = line.to_string();
    while line.ends_with(' ') && !line.ends_with("\\ ") {
        line.pop();
    }
    let (negated, mut pat) = match line.strip_prefix('!') {
        Some(rest) => (true, rest.to_string()),
        None => (false, line),
    };
    let dir_only = pat.ends_with('/') && !pat.ends_with("\\/");
    if dir_only {
        pat.pop();
    }
    let anchored = pat.trim_start_matches("**/").contains('/') || pat.starts_with('/');
    let pat = pat.strip_prefix('/').unwrap_or(&pat);
    if pat.is_empty() {
        return None;
    }
    Some(Rule {
        base: base.to_path_buf(),
        tokens: tokenize(pat),
        negated,
        dir_only,
        // `**/name` matches at any depth, like a bare `name`, but keeps its
        // `**` so that `**/a/b` still matches `x/a/b`.
        anchored: anchored || pat.starts_with("**/"),
    })
}

fn tokenize(pat: &str) -> Vec<Token> {
    let chars: Vec<char> = pat.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() => {
                out.push(Token::Char(chars[i + 1]));
                i += 2;
                continue;
            }
            '*' if chars.get(i + 1) == Some(&'*')
                && (i == 0 || chars[i - 1] == '/')
                && matches!(chars.get(i + 2), None | Some('/')) =>
            {
                if chars.get(i + 2) == Some(&'/') {
                    out.push(Token::Dirs);
                    i += 3;
                } else {
                    out.push(Token::All);
                    i += 2;
                }
                continue;
            }
            '*' => {
                // Runs of `*` not forming `**` act as one.
                if out.last() != Some(&Token::Star) {
                    out.push(Token::Star);
                }
            }
            '?' => out.push(Token::One),
            '[' => {
                if let Some((class, next)) = parse_class(&chars, i) {
                    out.push(class);
                    i = next;
                    continue;
                }
                out.push(Token::Char('['));
            }
            c => out.push(Token::Char(c)),
        }
        i += 1;
    }
    out
}

/// `[...]` starting at `start`; the class and the index after `]`, or
/// `None` when it is not closed (then `[` is literal).
fn parse_class(chars: &[char], start: usize) -> Option<(Token, usize)> {
    let mut i = start + 1;
    let negated = matches!(chars.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    while i < chars.len() {
        let c = chars[i];
        if c == ']' && !first {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        first = false;
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|e| *e != ']') {
            ranges.push((c, chars[i + 2]));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    None
}

/// Whether `text` matches all of `tokens` (backtracking; patterns and
/// paths are short).
fn glob(tokens: &[Token], text: &[char]) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return text.is_empty();
    };
    match first {
        Token::Char(c) => text.first() == Some(c) && glob(rest, &text[1..]),
        Token::One => text.first().is_some_and(|c| *c != '/') && glob(rest, &text[1..]),
        Token::Class { negated, ranges } => {
            text.first().is_some_and(|c| {
                *c != '/' && ranges.iter().any(|(a, b)| a <= c && c <= b) != *negated
            }) && glob(rest, &text[1..])
        }
        Token::Star => (0..=text.len())
            .take_while(|&n| n == 0 || text[n - 1] != '/')
            .any(|n| glob(rest, &text[n..])),
        Token::All => (0..=text.len()).any(|n| glob(rest, &text[n..])),
        Token::Dirs => {
            glob(rest, text)
                || (1..=text.len())
                    .filter(|&n| text[n - 1] == '/')
                    .any(|n| glob(rest, &text[n..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Rules {
        let mut r = Rules::default();
        r.add(Path::new(""), text);
        r
    }

    #[track_caller]
    fn check(r: &Rules, path: &str, is_dir: bool, expect: bool) {
        assert_eq!(
            r.is_ignored(Path::new(path), is_dir),
            expect,
            "{path} (dir: {is_dir})"
        );
    }

    #[test]
    fn names_match_at_any_depth_and_slashes_anchor() {
        let r = rules("*.log\n/build\ndocs/out\n# comment\n\n");
        check(&r, "app.log", false, true);
        check(&r, "sub/deep/x.log", false, true);
        check(&r, "app.logs", false, false);
        check(&r, "build", true, true);
        check(&r, "build/a.o", false, true);
        check(&r, "src/build", true, false);
        check(&r, "docs/out/index.html", false, true);
        check(&r, "x/docs/out", true, false);
        check(&r, "# comment", false, false);
    }

    #[test]
    fn directory_only_patterns_and_negation() {
        let r = rules("logs/\n*.tmp\n!keep.tmp\n");
        check(&r, "logs", false, false);
        check(&r, "logs", true, true);
        check(&r, "logs/today.txt", false, true);
        check(&r, "a/logs/x", false, true);
        check(&r, "x.tmp", false, true);
        check(&r, "keep.tmp", false, false);
        // Nothing inside an ignored directory comes back.
        let r = rules("out/\n!out/keep\n");
        check(&r, "out/keep", false, true);
    }

    #[test]
    fn double_stars_classes_and_escapes() {
        let r = rules("**/cache\na/**/z\nlib/**\n[Bb]in/\n*.py[co]\n\\#x\nf?o\n");
        check(&r, "cache", true, true);
        check(&r, "p/q/cache", false, true);
        check(&r, "a/z", false, true);
        check(&r, "a/b/c/z", false, true);
        check(&r, "b/a/z", false, false);
        check(&r, "lib/x/y", false, true);
        check(&r, "lib", true, false);
        check(&r, "Bin/x", false, true);
        check(&r, "bin", true, true);
        check(&r, "cin", true, false);
        check(&r, "m.pyc", false, true);
        check(&r, "m.py", false, false);
        check(&r, "#x", false, true);
        check(&r, "foo", false, true);
        check(&r, "f/o", false, false);
        let r = rules("[!a]x\n");
        check(&r, "bx", false, true);
        check(&r, "ax", false, false);
    }

    #[test]
    fn a_deeper_file_applies_to_its_directory_and_wins() {
        let mut r = rules("*.gen\n");
        r.add(Path::new("sub"), "!keep.gen\n/local\n");
        check(&r, "x.gen", false, true);
        check(&r, "sub/keep.gen", false, false);
        check(&r, "keep.gen", false, true);
        check(&r, "sub/local", false, true);
        check(&r, "local", false, false);
    }

    #[test]
    fn trailing_spaces_are_dropped_unless_escaped() {
        let r = rules("a.txt   \nb\\ \n");
        check(&r, "a.txt", false, true);
        check(&r, "b ", false, true);
    }
}
