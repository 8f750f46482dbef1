//! Human output helpers: times, tables, error chains.

use std::time::{Duration, UNIX_EPOCH};

use gantry_api::ClientError;

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

/// The error and its causes, one "caused by" per line, each once and in
/// order, then the hint of an API client error (what to do next), if any.
/// Gantry's errors never repeat their cause in their own message; an
/// outside error that shows its source as all of its own message (rusqlite
/// does) would read the same twice, so a cause exactly like the line before
/// is left out.
pub(crate) fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    let mut before = out.clone();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if text != before {
            out.push_str(&format!("\n  caused by: {text}"));
        }
        before = text;
    }
    if let Some(hint) = e
        .chain()
        .find_map(|c| c.downcast_ref::<ClientError>())
        .and_then(ClientError::hint)
    {
        out.push_str(&format!("\n  hint: {hint}"));
    }
    out
}

/// A flag's value that does not parse: the message says what was given
/// and what to write instead (clap shows it after the flag's name).
#[derive(Debug)]
pub(crate) struct BadValue(pub(crate) String);

impl std::fmt::Display for BadValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadValue {}

/// Parses a human duration for a flag ("30d", "12h", "90m").
pub(crate) fn parse_duration(s: &str) -> Result<Duration, BadValue> {
    humantime::parse_duration(s).map_err(|e| {
        BadValue(format!(
            "`{s}` is not a duration ({e}); use e.g. `30d`, `12h` or `90m`"
        ))
    })
}

/// The first `n` characters of `s` (an id or a hash shortened for a
/// table), whatever `s` holds: never a slice that could fall inside a
/// character or past the end.
pub(crate) fn short(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose message says what failed and whose `source()` says
    /// why, as Gantry's library errors do.
    #[derive(Debug)]
    struct Listen {
        source: std::io::Error,
    }

    impl std::fmt::Display for Listen {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot listen on 127.0.0.1:80")
        }
    }

    impl std::error::Error for Listen {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    /// An outside error that shows its source as its whole message.
    #[derive(Debug)]
    struct Echo(std::io::Error);

    impl std::fmt::Display for Echo {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fmt(f)
        }
    }

    impl std::error::Error for Echo {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn every_cause_once_in_order() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let e = anyhow::Error::new(Listen { source: io }).context("the proxy did not start");
        assert_eq!(
            error_chain(&e),
            "the proxy did not start\n  caused by: cannot listen on 127.0.0.1:80\n  caused by: \
             Address already in use"
        );
        let e = anyhow::anyhow!("disk full").context("cannot write the table");
        assert_eq!(
            error_chain(&e),
            "cannot write the table\n  caused by: disk full"
        );
        // A cause that merely contains the line before is its own line: no
        // substring matching.
        let e = anyhow::anyhow!("the table").context("the table is locked");
        assert_eq!(
            error_chain(&e),
            "the table is locked\n  caused by: the table"
        );
        let io = std::io::Error::other("database is locked");
        let e = anyhow::Error::new(Echo(io)).context("cannot apply the config");
        assert_eq!(
            error_chain(&e),
            "cannot apply the config\n  caused by: database is locked"
        );
    }

    #[test]
    fn an_unreachable_server_gets_its_cause_then_the_hint() {
        let e = anyhow::Error::new(ClientError::Connect {
            endpoint: gantry_api::Endpoint::Unix("/data/gantry.sock".into()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(
            error_chain(&e),
            "cannot reach the Gantry server at unix:/data/gantry.sock\n  caused by: entity not \
             found\n  hint: start it with `gantry server`, or point --server / GANTRY_SERVER at it"
        );
    }

    #[test]
    fn short_never_cuts_inside_a_character_or_past_the_end() {
        assert_eq!(short("0123456789abcdef", 12), "0123456789ab");
        assert_eq!(short("abc", 12), "abc");
        assert_eq!(short("", 12), "");
        assert_eq!(short("ééé", 2), "éé");
    }

    #[test]
    fn a_bad_duration_says_what_to_write() {
        let e = parse_duration("soon").unwrap_err();
        assert!(
            e.to_string().starts_with("`soon` is not a duration ("),
            "{e}"
        );
        assert!(
            e.to_string().ends_with("use e.g. `30d`, `12h` or `90m`"),
            "{e}"
        );
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
    }
}
