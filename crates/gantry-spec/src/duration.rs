//! Human durations: `"30s"`, `"5m"`, `"1h30m"`, `"250ms"`, `"1.5h"`, `"7d"`.
//!
//! A duration is one or more `<number><unit>` parts with no spaces, where the
//! unit is one of `ms`, `s`, `m`, `h`, `d` and the number may have a decimal
//! fraction. A bare number is rejected (is `10` seconds or minutes?), and so is
//! a sign. Values serialize back to a canonical human string (`"1h30m"`).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("empty duration")]
    Empty,
    /// A leading `-` or `+`.
    #[error("durations cannot be negative or signed")]
    Signed,
    /// Whitespace inside the string.
    #[error("durations cannot contain spaces")]
    Whitespace,
    /// A number without a unit, e.g. `"10"`.
    #[error("missing unit after `{0}`")]
    MissingUnit(String),
    /// A unit that is not one of `ms`, `s`, `m`, `h`, `d`.
    #[error("unknown unit `{0}`")]
    UnknownUnit(String),
    /// A unit without a number, or a malformed number.
    #[error("expected a number before `{0}`")]
    MissingNumber(String),
    /// The value does not fit.
    #[error("duration is too large")]
    Overflow,
    /// Longer than [`Duration::MAX`], the bound of every duration in a spec.
    #[error("duration is longer than {}", Duration::MAX)]
    TooLong,
}

impl DurationError {
    /// How to fix it, for diagnostics.
    pub(crate) fn help(&self, input: &str) -> String {
        match self {
            DurationError::Whitespace => {
                let compact: String = input.chars().filter(|c| !c.is_whitespace()).collect();
                format!("write it without spaces: \"{compact}\"")
            }
            DurationError::MissingUnit(n) => {
                format!("add a unit, e.g. \"{n}s\" for seconds or \"{n}m\" for minutes")
            }
            _ => {
                "write a duration like \"250ms\", \"30s\", \"5m\", \"1h30m\" or \"7d\"".to_string()
            }
        }
    }
}

const NANOS_PER_MS: u128 = 1_000_000;
const UNITS: &[(&str, u128)] = &[
    ("ms", NANOS_PER_MS),
    ("s", 1_000 * NANOS_PER_MS),
    ("m", 60 * 1_000 * NANOS_PER_MS),
    ("h", 3_600 * 1_000 * NANOS_PER_MS),
    ("d", 86_400 * 1_000 * NANOS_PER_MS),
];

/// A span of time written the human way; serializes back to a canonical string.
///
/// A parsed duration is at most [`Duration::MAX`], and each field of the
/// spec has a tighter bound (`maxDuration` in the JSON Schema, checked by
/// validation), so a consumer can add one to an `Instant` or multiply it
/// by a small count without overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

impl Duration {
    /// The longest duration any spec field may hold: 3650 days (10 years).
    pub const MAX: Duration = Duration::from_secs(3650 * 86_400);

    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    /// The standard library value.
    pub const fn as_std(&self) -> std::time::Duration {
        self.0
    }

    /// True for `"0s"`.
    pub const fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = Duration(parse(s)?);
        if d > Duration::MAX {
            return Err(DurationError::TooLong);
        }
        Ok(d)
    }
}

/// True when `s` is a duration longer than `max` (or too large to hold at
/// all); false for anything else, including text that is not a duration.
pub(crate) fn longer_than(s: &str, max: Duration) -> bool {
    match parse(s) {
        Ok(d) => d > max.0,
        Err(e) => e == DurationError::Overflow,
    }
}

fn parse(input: &str) -> Result<std::time::Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') || s.starts_with('+') {
        return Err(DurationError::Signed);
    }
    if s.chars().any(char::is_whitespace) {
        return Err(DurationError::Whitespace);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(number.to_string()));
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(DurationError::UnknownUnit(unit.to_string()));
        };
        let nanos = scaled(number, scale).ok_or_else(|| {
            if number.is_empty() || number.matches('.').count() > 1 || number == "." {
                DurationError::MissingNumber(unit.to_string())
            } else {
                DurationError::Overflow
            }
        })?;
        total = total.checked_add(nanos).ok_or(DurationError::Overflow)?;
        rest = next;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| DurationError::Overflow)?;
    // `total % 1e9` is below 1e9 and so fits in u32.
    let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| DurationError::Overflow)?;
    Ok(std::time::Duration::new(secs, nanos))
}

/// `number` (digits with an optional `.fraction`) times `scale`, in nanoseconds,
/// truncated below a nanosecond. `None` when malformed or too large.
pub(crate) fn scaled(number: &str, scale: u128) -> Option<u128> {
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int_value: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut total = int_value.checked_mul(scale)?;
    // Fractions beyond 18 digits carry no information at nanosecond precision.
    let frac = &frac[..frac.len().min(18)];
    if !frac.is_empty() {
        let frac_value: u128 = frac.parse().ok()?;
        let denom = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
        total = total.checked_add(frac_value.checked_mul(scale)? / denom)?;
    }
    if total > u128::from(u64::MAX) * 1_000_000_000 {
        return None;
    }
    Some(total)
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        for &(name, scale) in UNITS.iter().rev() {
            let n = nanos / scale;
            if n > 0 {
                write!(f, "{n}{name}")?;
                nanos -= n * scale;
            }
        }
        if nanos > 0 {
            // Below a millisecond: show it as a fraction of a millisecond.
            let frac = format!("{:06}", nanos);
            write!(f, "0.{}ms", frac.trim_end_matches('0'))?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(|e: DurationError| {
            serde::de::Error::custom(format!("invalid duration `{s}`: {e}"))
        })
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "duration",
            "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h|d))+$",
        })
    }
}

/// Schema for a duration field where `"0s"` is allowed.
pub(crate) fn zero_allowed_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "format": "duration-or-zero",
        "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h|d))+$",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> std::time::Duration {
        match s.parse::<Duration>() {
            Ok(d) => d.as_std(),
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn err(s: &str) -> DurationError {
        match s.parse::<Duration>() {
            Ok(d) => panic!("{s} parsed as {d:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_common_forms() {
        use std::time::Duration as D;
        assert_eq!(ok("30s"), D::from_secs(30));
        assert_eq!(ok("5m"), D::from_secs(300));
        assert_eq!(ok("1h30m"), D::from_secs(5400));
        assert_eq!(ok("250ms"), D::from_millis(250));
        assert_eq!(ok("1.5h"), D::from_secs(5400));
        assert_eq!(ok("0.5s"), D::from_millis(500));
        assert_eq!(ok("7d"), D::from_secs(7 * 86400));
        assert_eq!(ok("1m1s1ms"), D::from_millis(61_001));
        assert_eq!(ok(" 10s "), D::from_secs(10));
    }

    #[test]
    fn zero_parses_and_is_zero() {
        assert!(ok("0s").is_zero());
        assert!("0ms".parse::<Duration>().is_ok_and(|d| d.is_zero()));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(err("-5s"), DurationError::Signed);
        assert_eq!(err("+5s"), DurationError::Signed);
        assert_eq!(err("10"), DurationError::MissingUnit("10".into()));
        assert_eq!(err("5 m"), DurationError::Whitespace);
        assert_eq!(err(""), DurationError::Empty);
        assert_eq!(err("5x"), DurationError::UnknownUnit("x".into()));
        assert_eq!(err("5sec"), DurationError::UnknownUnit("sec".into()));
        assert_eq!(err("s"), DurationError::MissingNumber("s".into()));
        assert_eq!(err("1.2.3s"), DurationError::MissingNumber("s".into()));
        assert_eq!(err("1h30"), DurationError::MissingUnit("30".into()));
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        assert_eq!(
            err("99999999999999999999999999999999999999999d"),
            DurationError::Overflow
        );
        assert_eq!(err("213503982334602d"), DurationError::Overflow);
        assert_eq!(
            err(&format!("{}s{}s", u64::MAX, u64::MAX)),
            DurationError::Overflow
        );
    }

    #[test]
    fn the_longest_duration_is_ten_years() {
        assert_eq!(Duration::MAX.to_string(), "3650d");
        assert_eq!(ok("3650d"), Duration::MAX.as_std());
        assert_eq!(err("3650d1ms"), DurationError::TooLong);
        assert_eq!(err("18446744073709551615s"), DurationError::TooLong);
        assert_eq!(err("1000000000h"), DurationError::TooLong);
        assert_eq!(err("99999999999999999999999ms"), DurationError::Overflow);
        assert!(longer_than("2d", Duration::from_secs(86_400)));
        assert!(!longer_than("1d", Duration::from_secs(86_400)));
        assert!(longer_than("99999999999999999999999ms", Duration::MAX));
        assert!(!longer_than("approval", Duration::MAX));
        // Every parsed duration can be added to now and multiplied by the
        // largest probe thresholds without overflow.
        let d = ok("3650d");
        assert!(std::time::Instant::now().checked_add(d * 200 * 4).is_some());
    }

    /// Random strings over the duration alphabet never panic the parser or
    /// the display, and what parses displays back to the same value.
    #[test]
    fn random_input_never_panics_and_round_trips() {
        let alphabet: Vec<char> = "0123456789.msdh+- x9".chars().collect();
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut parsed = 0;
        for _ in 0..50_000 {
            let len = (next() % 40) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if let Ok(d) = s.parse::<Duration>() {
                parsed += 1;
                assert!(d <= Duration::MAX, "{s}");
                assert_eq!(d.to_string().parse::<Duration>(), Ok(d), "{s}");
            }
            let _ = longer_than(&s, Duration::MAX);
        }
        assert!(parsed > 100, "only {parsed} random strings parsed");
        // Long runs of digits, with and without fractions, in every unit.
        for unit in ["ms", "s", "m", "h", "d"] {
            for digits in [19, 20, 21, 39, 40, 41, 200] {
                let n = "9".repeat(digits);
                for s in [
                    format!("{n}{unit}"),
                    format!("1.{n}{unit}"),
                    format!("{n}.{n}{unit}"),
                ] {
                    let _ = s.parse::<Duration>();
                    let _ = longer_than(&s, Duration::MAX);
                }
            }
        }
    }

    #[test]
    fn displays_canonically() {
        let show = |s: &str| ok(s).into_iter_display();
        assert_eq!(show("90m"), "1h30m");
        assert_eq!(show("1500ms"), "1s500ms");
        assert_eq!(show("0s"), "0s");
        assert_eq!(show("1.5h"), "1h30m");
        assert_eq!(show("2d"), "2d");
        assert_eq!(
            Duration::from(std::time::Duration::from_nanos(1_500)).to_string(),
            "0.0015ms"
        );
    }

    #[test]
    fn round_trips_through_display() {
        for s in ["30s", "1h30m", "250ms", "7d1h", "0s"] {
            let d: Duration = match s.parse() {
                Ok(d) => d,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(d.to_string().parse::<Duration>(), Ok(d));
        }
    }

    trait Show {
        fn into_iter_display(self) -> String;
    }
    impl Show for std::time::Duration {
        fn into_iter_display(self) -> String {
            Duration(self).to_string()
        }
    }
}
