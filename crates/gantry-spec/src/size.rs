//! Human byte sizes: `"512MiB"`, `"1GiB"`, `"10MB"`, `"1.5GiB"`, `"4096B"`.
//!
//! Units are `B`, decimal `KB` `MB` `GB` `TB` (powers of 1000) and binary
//! `KiB` `MiB` `GiB` `TiB` (powers of 1024), case as written. A bare number is
//! rejected. Values serialize back to the largest exact unit (`"512MiB"`).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// The string was empty.
    #[error("empty size")]
    Empty,
    /// A leading `-` or `+`.
    #[error("sizes cannot be negative or signed")]
    Signed,
    /// Whitespace inside the string.
    #[error("sizes cannot contain spaces")]
    Whitespace,
    /// A number without a unit, e.g. `"512"`.
    #[error("missing unit after `{0}`")]
    MissingUnit(String),
    /// A unit that is not known.
    #[error("unknown unit `{0}`")]
    UnknownUnit(String),
    /// Missing or malformed number.
    #[error("expected a number before the unit")]
    MissingNumber,
    /// The value does not fit in 64 bits.
    #[error("size is too large")]
    Overflow,
}

impl SizeError {
    /// How to fix it, for diagnostics.
    pub(crate) fn help(&self, input: &str) -> String {
        match self {
            SizeError::Whitespace => {
                let compact: String = input.chars().filter(|c| !c.is_whitespace()).collect();
                format!("write it without spaces: \"{compact}\"")
            }
            SizeError::MissingUnit(n) => format!("add a unit, e.g. \"{n}MiB\" or \"{n}B\""),
            SizeError::UnknownUnit(u) => {
                let known: Vec<&str> = UNITS.iter().map(|(n, _)| *n).collect();
                match crate::diagnostic::closest(u, known.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`? Units: {}", known.join(", ")),
                    None => format!("use one of the units {}", known.join(", ")),
                }
            }
            _ => "write a size like \"512MiB\", \"1GiB\" or \"10MB\"".to_string(),
        }
    }
}

const UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

/// A number of bytes written the human way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(u64);

impl ByteSize {
    /// `n` bytes.
    pub const fn bytes(n: u64) -> Self {
        ByteSize(n)
    }

    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }

    /// The number of bytes.
    pub const fn as_u64(&self) -> u64 {
        self.0
    }

    /// True for `"0B"`.
    pub const fn is_zero(&self) -> bool {
        self.0 == 0
    }
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        if s.is_empty() {
            return Err(SizeError::Empty);
        }
        if s.starts_with('-') || s.starts_with('+') {
            return Err(SizeError::Signed);
        }
        if s.chars().any(char::is_whitespace) {
            return Err(SizeError::Whitespace);
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        if unit.is_empty() {
            return Err(SizeError::MissingUnit(number.to_string()));
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(SizeError::UnknownUnit(unit.to_string()));
        };
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(SizeError::MissingNumber);
        }
        let bytes =
            crate::duration::scaled(number, u128::from(scale)).ok_or(SizeError::Overflow)?;
        u64::try_from(bytes)
            .map(ByteSize)
            .map_err(|_| SizeError::Overflow)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let best = UNITS
            .iter()
            .filter(|(_, scale)| self.0 != 0 && self.0.is_multiple_of(*scale))
            .max_by_key(|(_, scale)| *scale);
        match best {
            Some((name, scale)) => write!(f, "{}{name}", self.0 / scale),
            None => write!(f, "{}B", self.0),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        s.parse()
            .map_err(|e: SizeError| serde::de::Error::custom(format!("invalid size `{s}`: {e}")))
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "size",
            "pattern": "^[0-9]+(\\.[0-9]+)?(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> u64 {
        match s.parse::<ByteSize>() {
            Ok(v) => v.as_u64(),
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn err(s: &str) -> SizeError {
        match s.parse::<ByteSize>() {
            Ok(v) => panic!("{s} parsed as {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_units() {
        assert_eq!(ok("512MiB"), 512 << 20);
        assert_eq!(ok("1GiB"), 1 << 30);
        assert_eq!(ok("10MB"), 10_000_000);
        assert_eq!(ok("1.5GiB"), 3 << 29);
        assert_eq!(ok("4096B"), 4096);
        assert_eq!(ok("0B"), 0);
        assert_eq!(ok("16EiB".replace("EiB", "TiB").as_str()), 16 << 40);
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(err("512"), SizeError::MissingUnit("512".into()));
        assert_eq!(err("-1MiB"), SizeError::Signed);
        assert_eq!(err("5 MiB"), SizeError::Whitespace);
        assert_eq!(err("5mib"), SizeError::UnknownUnit("mib".into()));
        assert_eq!(err("MiB"), SizeError::MissingNumber);
        assert_eq!(err(""), SizeError::Empty);
        assert_eq!(err("99999999999TiB"), SizeError::Overflow);
        assert_eq!(err("18446744073709551616B"), SizeError::Overflow);
    }

    #[test]
    fn help_suggests_the_right_unit() {
        assert!(err("5mib").help("5mib").starts_with("did you mean `MiB`?"));
    }

    #[test]
    fn displays_largest_exact_unit() {
        assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
        assert_eq!(ByteSize(10_000_000).to_string(), "10MB");
        assert_eq!(ByteSize(1500).to_string(), "1500B");
        assert_eq!(ByteSize(3 << 29).to_string(), "1536MiB");
        assert_eq!(ByteSize(0).to_string(), "0B");
        assert_eq!(ByteSize(1).to_string(), "1B");
    }
}
