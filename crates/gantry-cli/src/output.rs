//! Human output helpers: times, tables, error chains.

use std::time::{Duration, UNIX_EPOCH};

/// `2026-11-21 22:44:04Z` for milliseconds since the epoch.
pub(crate) fn time(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.replacen('T', " ", 1)
}

/// Prints rows as aligned columns under a header.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// Prints a value as pretty JSON.
pub(crate) fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The error and its causes, one "caused by" per line. A cause that the
/// line before already spells out (an error that prints its source in its
/// own message) gets no line of its own.
pub(crate) fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    let mut before = out.clone();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !before.contains(&text) {
            out.push_str(&format!("\n  caused by: {text}"));
        }
        before = text;
    }
    out
}

/// Parses a human duration for a flag ("30d", "12h", "90m").
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); use e.g. `30d`, `12h` or `90m`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that prints its source in its own message, as the
    /// library crates' `thiserror` errors do.
    #[derive(Debug)]
    struct Listen {
        source: std::io::Error,
    }

    impl std::fmt::Display for Listen {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot listen on 127.0.0.1:80: {}", self.source)
        }
    }

    impl std::error::Error for Listen {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let e = anyhow::Error::new(Listen { source: io }).context("the proxy did not start");
        assert_eq!(
            error_chain(&e),
            "the proxy did not start\n  caused by: cannot listen on 127.0.0.1:80: Address already in use"
        );
        let e = anyhow::anyhow!("disk full").context("cannot write the table");
        assert_eq!(
            error_chain(&e),
            "cannot write the table\n  caused by: disk full"
        );
    }
}
