//! Diagnostics: one problem in a spec file, with its location and a fix.

use std::fmt;
use std::ops::Range;

/// One problem found in a spec file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    /// The file name as given to [`crate::parse_str`] or [`crate::load`].
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Dotted key path such as `health.readiness.interval` or `deploy.steps[1].weight`;
    /// empty for problems with the file as a whole.
    pub key_path: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.key_path.is_empty() {
            write!(f, "[{}] ", self.key_path)?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// All problems found in a spec file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// True when there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Iterate over the problems.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Turns byte offsets into 1-based line and column and collects diagnostics.
pub(crate) struct Reporter<'a> {
    file: &'a str,
    text: &'a str,
    line_starts: Vec<usize>,
    pub(crate) out: Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Reporter {
            file,
            text,
            line_starts,
            out: Vec::new(),
        }
    }

    /// 1-based (line, column) of a byte offset; columns count characters.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts.get(line).copied().unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, column + 1)
    }

    pub(crate) fn push(
        &mut self,
        span: Option<Range<usize>>,
        key_path: impl Into<String>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let (line, column) = span.map_or((1, 1), |s| self.position(s.start));
        self.out.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            key_path: key_path.into(),
            message: message.into(),
            help,
        });
    }

    /// Sorted by position, duplicates removed.
    pub(crate) fn finish(mut self) -> Vec<Diagnostic> {
        self.out.sort_by(|a, b| {
            (a.line, a.column, &a.key_path, &a.message).cmp(&(
                b.line,
                b.column,
                &b.key_path,
                &b.message,
            ))
        });
        self.out.dedup();
        self.out
    }
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn closest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// "did you mean `x`?" when there is a close candidate.
pub(crate) fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// `a`, `b` or `c` as a list of code spans.
pub(crate) fn one_of<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("`{}`", s.as_ref())).collect();
    quoted.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let r = Reporter::new("f", "a = 1\nbé = 2\n");
        assert_eq!(r.position(0), (1, 1));
        assert_eq!(r.position(6), (2, 1));
        assert_eq!(r.position(9), (2, 3));
        assert_eq!(r.position(1000), (3, 1));
    }

    #[test]
    fn display_matches_the_documented_form() {
        let d = Diagnostic {
            file: "gantry.toml".into(),
            line: 12,
            column: 3,
            key_path: "health.readiness".into(),
            message: "unknown key `intreval`".into(),
            help: Some("did you mean `interval`?".into()),
        };
        assert_eq!(
            d.to_string(),
            "gantry.toml:12:3: [health.readiness] unknown key `intreval`\n  help: did you mean `interval`?"
        );
        let file_level = Diagnostic {
            key_path: String::new(),
            help: None,
            ..d.clone()
        };
        assert_eq!(
            file_level.to_string(),
            "gantry.toml:12:3: unknown key `intreval`"
        );
        let all = Diagnostics(vec![d, file_level]);
        assert!(
            all.to_string()
                .contains("interval`?\n\ngantry.toml:12:3: unknown")
        );
    }

    #[test]
    fn suggestions_only_for_close_words() {
        assert_eq!(
            closest("intreval", ["interval", "timeout"]),
            Some("interval")
        );
        assert_eq!(closest("zzz", ["interval", "timeout"]), None);
    }
}
