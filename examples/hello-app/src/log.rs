//! One-line-per-event logging to stdout (and stderr for errors), as JSON
//! (default) or plain text. Every line is written whole and flushed; write
//! errors (a closed pipe) are ignored rather than crashing the app.

use std::fmt::Write as _;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// A field value in a log line.
pub enum Val<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
    Null,
}

impl<'a> From<&'a str> for Val<'a> {
    fn from(s: &'a str) -> Self {
        Val::Str(s)
    }
}

impl<'a> From<&'a String> for Val<'a> {
    fn from(s: &'a String) -> Self {
        Val::Str(s)
    }
}

impl From<i64> for Val<'_> {
    fn from(n: i64) -> Self {
        Val::Int(n)
    }
}

impl From<u64> for Val<'_> {
    fn from(n: u64) -> Self {
        Val::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<u32> for Val<'_> {
    fn from(n: u32) -> Self {
        Val::Int(n.into())
    }
}

impl From<u16> for Val<'_> {
    fn from(n: u16) -> Self {
        Val::Int(n.into())
    }
}

impl From<f64> for Val<'_> {
    fn from(n: f64) -> Self {
        Val::Float(n)
    }
}

impl<'a, T: Into<Val<'a>>> From<Option<T>> for Val<'a> {
    fn from(o: Option<T>) -> Self {
        o.map_or(Val::Null, Into::into)
    }
}

pub struct Logger {
    pub json: bool,
    pub version: String,
    pub instance: String,
}

impl Logger {
    pub fn info(&self, msg: &str, fields: &[(&str, Val<'_>)]) {
        self.emit("info", msg, fields);
    }

    pub fn warn(&self, msg: &str, fields: &[(&str, Val<'_>)]) {
        self.emit("warn", msg, fields);
    }

    /// Errors go to stderr.
    pub fn error(&self, msg: &str, fields: &[(&str, Val<'_>)]) {
        self.emit("error", msg, fields);
    }

    pub fn emit(&self, level: &str, msg: &str, fields: &[(&str, Val<'_>)]) {
        let line = self.format(level, msg, fields);
        if level == "error" {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(line.as_bytes());
            let _ = err.flush();
        } else {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }

    pub fn format(&self, level: &str, msg: &str, fields: &[(&str, Val<'_>)]) -> String {
        let ts = rfc3339_now();
        let mut s = String::with_capacity(256);
        if self.json {
            s.push_str("{\"ts\":");
            json_str(&mut s, &ts);
            s.push_str(",\"level\":");
            json_str(&mut s, level);
            s.push_str(",\"msg\":");
            json_str(&mut s, msg);
            for (k, v) in fields {
                s.push(',');
                json_str(&mut s, k);
                s.push(':');
                match v {
                    Val::Str(v) => json_str(&mut s, v),
                    Val::Int(n) => {
                        let _ = write!(s, "{n}");
                    }
                    Val::Float(f) if f.is_finite() => {
                        let _ = write!(s, "{f:.3}");
                    }
                    Val::Float(_) | Val::Null => s.push_str("null"),
                }
            }
            s.push_str(",\"version\":");
            json_str(&mut s, &self.version);
            s.push_str(",\"instance\":");
            json_str(&mut s, &self.instance);
            s.push('}');
        } else {
            let _ = write!(s, "{ts} {:5} {msg}", level.to_ascii_uppercase());
            for (k, v) in fields {
                let _ = match v {
                    Val::Str(v) => write!(s, " {k}={v:?}"),
                    Val::Int(n) => write!(s, " {k}={n}"),
                    Val::Float(f) => write!(s, " {k}={f:.3}"),
                    Val::Null => write!(s, " {k}=-"),
                };
            }
            let _ = write!(s, " version={} instance={}", self.version, self.instance);
        }
        s.push('\n');
        s
    }
}

/// Appends `v` as a JSON string literal.
pub fn json_str(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `v` as a JSON string literal.
pub fn json_string(v: &str) -> String {
    let mut s = String::new();
    json_str(&mut s, v);
    s
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn now_parts() -> (i64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (i64::try_from(d.as_secs()).unwrap_or(0), d.subsec_millis())
}

/// Current time as `2024-05-01T12:34:56.789Z`.
pub fn rfc3339_now() -> String {
    let (secs, ms) = now_parts();
    rfc3339(secs, ms)
}

pub fn rfc3339(secs: i64, ms: u32) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Current time in the HTTP `Date` format: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date_now() -> String {
    http_date(now_parts().0)
}

pub fn http_date(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs.div_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let t = secs.rem_euclid(86_400);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_700_000_000, 123), "2023-11-14T22:13:20.123Z");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn escapes_json() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}é"), r#""a\"b\\c\nd\u0001é""#);
    }

    #[test]
    fn formats_json_lines() {
        let l = Logger {
            json: true,
            version: "v1".into(),
            instance: "0".into(),
        };
        let line = l.format(
            "info",
            "request",
            &[
                ("status", 200u16.into()),
                ("request_id", Val::Null),
                ("path", "/x".into()),
            ],
        );
        assert!(line.starts_with("{\"ts\":\""));
        assert!(line.ends_with(
            "\"level\":\"info\",\"msg\":\"request\",\"status\":200,\"request_id\":null,\
             \"path\":\"/x\",\"version\":\"v1\",\"instance\":\"0\"}\n"
        ));
    }
}
