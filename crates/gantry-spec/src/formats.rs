//! The custom string formats of the schema and their validators.
//!
//! The JSON Schema marks strings with a `format` (`duration`, `size`,
//! `hostname`, `secret-name`, ...); the validator walks the schema and calls
//! [`check`] for each formatted string, so every rule lives here once.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::size::ByteSize;

/// A failed format check: what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FormatError {
    pub(crate) message: String,
    pub(crate) help: Option<String>,
}

fn fail(message: impl Into<String>, help: impl Into<Option<String>>) -> Result<(), FormatError> {
    Err(FormatError {
        message: message.into(),
        help: help.into(),
    })
}

/// What a value of this format looks like, for "expected ..." messages.
pub(crate) fn describe(format: &str) -> Option<&'static str> {
    Some(match format {
        "duration" | "duration-or-zero" => "a duration string like \"30s\"",
        "size" => "a size string like \"512MiB\"",
        "hostname" => "a host name string like \"app.example.com\"",
        "secret-name" => "a secret name string like \"DATABASE_URL\"",
        "label" => "a lowercase name string like \"web\"",
        "env-value" => "a string",
        "cron" => "a cron schedule string like \"0 3 * * *\"",
        "pause" => "a duration string like \"10m\" or \"approval\"",
        "env-pattern" => "a variable name or pattern string like \"LC_*\"",
        _ => return None,
    })
}

/// Checks `value` against a custom `format`; unknown formats pass.
/// `refs` receives the secret names a value refers to.
pub(crate) fn check(format: &str, value: &str, refs: &mut Vec<String>) -> Result<(), FormatError> {
    match format {
        "duration" => check_duration(value, false),
        "duration-or-zero" => check_duration(value, true),
        "pause" => {
            if value == "approval" {
                Ok(())
            } else {
                check_duration(value, false).map_err(|e| FormatError {
                    help: Some(match e.help {
                        Some(h) => {
                            format!("{h}; or write \"approval\" to wait for `gantry promote`")
                        }
                        None => "or write \"approval\" to wait for `gantry promote`".to_string(),
                    }),
                    ..e
                })
            }
        }
        "size" => match value.parse::<ByteSize>() {
            Ok(s) if s.is_zero() => fail("size must be greater than zero", None),
            Ok(_) => Ok(()),
            Err(e) => fail(format!("invalid size `{value}`: {e}"), Some(e.help(value))),
        },
        "hostname" => check_hostname(value),
        "secret-name" => {
            check_secret_name(value)?;
            refs.push(value.to_string());
            Ok(())
        }
        "label" => check_label(value),
        "env-value" => {
            near_miss_refs(value)?;
            for r in secret_refs_in(value) {
                match r {
                    Ok(name) => {
                        check_secret_name(&name).map_err(|e| FormatError {
                            message: format!("in `${{secret.{name}}}`: {}", e.message),
                            help: e.help,
                        })?;
                        refs.push(name);
                    }
                    Err(()) => {
                        return fail(
                            "unterminated secret reference `${secret.`",
                            Some("write `${secret.NAME}` with a closing `}`".to_string()),
                        );
                    }
                }
            }
            Ok(())
        }
        "env-name" => check_env_name(value),
        "env-pattern" => check_env_pattern(value),
        "cron" => check_cron(value),
        _ => Ok(()),
    }
}

fn check_duration(value: &str, zero_ok: bool) -> Result<(), FormatError> {
    match value.parse::<Duration>() {
        Ok(d) if d.is_zero() && !zero_ok => fail(
            "duration must be greater than zero",
            Some("use a positive duration like \"1s\"".to_string()),
        ),
        Ok(_) => Ok(()),
        Err(e) => fail(
            format!("invalid duration `{value}`: {e}"),
            Some(e.help(value)),
        ),
    }
}

fn check_secret_name(value: &str) -> Result<(), FormatError> {
    let valid = !value.is_empty()
        && value.len() <= 128
        && value.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && value
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if valid {
        return Ok(());
    }
    let fixed: String = value
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' => c,
            _ => '_',
        })
        .collect();
    let help = if !fixed.is_empty()
        && fixed.len() <= 128
        && !fixed.starts_with(|c: char| c.is_ascii_digit())
        && fixed != value
    {
        format!("secret names are upper-case environment variable names: did you mean `{fixed}`?")
    } else {
        "secret names are upper-case environment variable names like `DATABASE_URL` (A-Z, 0-9, `_`, not starting with a digit)".to_string()
    };
    fail(format!("invalid secret name `{value}`"), Some(help))
}

fn check_env_name(value: &str) -> Result<(), FormatError> {
    let valid = value.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        fail(
            format!("invalid environment variable name `{value}`"),
            Some("use letters, digits and `_`, not starting with a digit".to_string()),
        )
    }
}

/// A variable name, or a pattern of one with `*` standing for any run of
/// characters (`LC_*`), as in `run.inherit_env`.
fn check_env_pattern(value: &str) -> Result<(), FormatError> {
    let valid = !value.is_empty()
        && !value.starts_with(|c: char| c.is_ascii_digit())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*');
    if valid {
        Ok(())
    } else {
        fail(
            format!("invalid variable name or pattern `{value}`"),
            Some(
                "use letters, digits and `_`, not starting with a digit, and `*` for any \
                 characters (`LC_*`)"
                    .to_string(),
            ),
        )
    }
}

fn check_label(value: &str) -> Result<(), FormatError> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && !value.ends_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        return Ok(());
    }
    let fixed: String = value
        .trim()
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' | '-' => c,
            _ => '-',
        })
        .collect::<String>()
        .trim_matches('-')
        .to_string();
    let rule =
        "use lowercase letters, digits and `-`, starting with a letter, at most 63 characters";
    let help = if !fixed.is_empty()
        && fixed.len() <= 63
        && fixed != value
        && fixed.starts_with(|c: char| c.is_ascii_lowercase())
    {
        format!("{rule}: did you mean `{fixed}`?")
    } else {
        rule.to_string()
    };
    fail(format!("invalid name `{value}`"), Some(help))
}

fn check_hostname(value: &str) -> Result<(), FormatError> {
    let Some((why, rule)) = hostname_problem(value) else {
        return Ok(());
    };
    // A suggestion is only made when it is itself a valid host name.
    let help = match suggest_hostname(value) {
        Some(fixed) => {
            let mut rule = rule.chars();
            let first = rule.next().map(|c| c.to_ascii_uppercase());
            format!(
                "did you mean `{fixed}`? {}{}.",
                first.map(String::from).unwrap_or_default(),
                rule.as_str()
            )
        }
        None => rule,
    };
    fail(format!("invalid host name `{value}`: {why}"), Some(help))
}

/// What is wrong with a host name and the rule it breaks, or `None` when it
/// is valid.
fn hostname_problem(value: &str) -> Option<(String, String)> {
    let bad = |why: &str, rule: &str| Some((why.to_string(), rule.to_string()));
    let example = "write a name like `app.example.com`, or `*.example.com` for a wildcard";
    if value.contains("://") || value.contains('/') {
        return bad(
            "write the host name only",
            "the scheme goes away and the path belongs in `path_prefix`",
        );
    }
    if value.contains(':') {
        return bad(
            "host names cannot include a port",
            "the proxy's listen ports are set on the server",
        );
    }
    if value.chars().any(|c| c.is_ascii_uppercase()) {
        return bad(
            "host names are lowercase",
            "host names match in any case, and are written in lower case",
        );
    }
    let name = value.strip_prefix("*.").unwrap_or(value);
    if name.is_empty() || value.len() > 253 {
        return bad("must be 1 to 253 characters", example);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad(
                "empty label (two dots in a row, or a leading or trailing dot)",
                example,
            );
        }
        if label.len() > 63 {
            return bad(
                "a label is longer than 63 characters",
                "shorten each dot-separated part to 63 characters",
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad(
                "a label starts or ends with `-`",
                "labels start and end with a letter or digit",
            );
        }
        if label == "*" {
            return bad(
                "`*` is only allowed as the whole first label",
                "write a wildcard as `*.example.com`",
            );
        }
        if !label.is_ascii() {
            return bad(
                "only ASCII letters, digits, `-` and `.` are allowed",
                "write an international name in its punycode form (`xn--...`)",
            );
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return bad("only letters, digits, `-` and `.` are allowed", example);
        }
    }
    None
}

/// The host name most likely meant by `value`: without scheme, user, port
/// and path, lower case, `_` and other stray characters as `-`, without
/// empty labels and stray dots or dashes. `None` unless the result is a
/// valid host name different from `value`.
fn suggest_hostname(value: &str) -> Option<String> {
    let mut v = value.trim();
    if let Some((_, rest)) = v.split_once("://") {
        v = rest;
    }
    v = v.split(['/', '?', '#']).next().unwrap_or_default();
    if let Some((_, host)) = v.rsplit_once('@') {
        v = host;
    }
    v = v.split(':').next().unwrap_or_default();
    let lower = v.to_ascii_lowercase();
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    // A `*` elsewhere or a non-ASCII letter (an international name is
    // written in punycode, `xn--...`) has no one likely meaning.
    if name.contains('*') || !name.is_ascii() {
        return None;
    }
    let labels: Vec<String> = name
        .split('.')
        .map(|label| {
            label
                .chars()
                .map(|c| {
                    if c.is_ascii_lowercase() || c.is_ascii_digit() {
                        c
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
                .trim_matches('-')
                .to_string()
        })
        .filter(|label| !label.is_empty())
        .collect();
    let mut fixed = labels.join(".");
    if wildcard {
        fixed.insert_str(0, "*.");
    }
    (fixed != value && hostname_problem(&fixed).is_none()).then_some(fixed)
}

const CRON_FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];
const CRON_MACROS: [&str; 6] = [
    "@hourly",
    "@daily",
    "@midnight",
    "@weekly",
    "@monthly",
    "@yearly",
];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn check_cron(value: &str) -> Result<(), FormatError> {
    let help = || {
        Some("write five fields `minute hour day-of-month month day-of-week`, e.g. \"0 3 * * *\" for 03:00 daily, or @daily, @hourly, @weekly, @monthly".to_string())
    };
    let v = value.trim();
    if v.starts_with('@') {
        return if CRON_MACROS.contains(&v) {
            Ok(())
        } else {
            fail(format!("unknown cron shorthand `{v}`"), help())
        };
    }
    let fields: Vec<&str> = v.split_whitespace().collect();
    if fields.len() != 5 {
        return fail(
            format!("a cron schedule has 5 fields, found {}", fields.len()),
            help(),
        );
    }
    for (field, &(name, lo, hi)) in fields.iter().zip(CRON_FIELDS.iter()) {
        let names: &[&str] = match name {
            "month" => &MONTHS,
            "day of week" => &DAYS,
            _ => &[],
        };
        if !cron_field_ok(field, lo, hi, names) {
            return fail(
                format!(
                    "invalid cron {name} field `{field}` (allowed: {lo}-{hi}, `*`, lists, ranges and `/step`)"
                ),
                help(),
            );
        }
    }
    Ok(())
}

fn cron_field_ok(field: &str, lo: u32, hi: u32, names: &[&str]) -> bool {
    let value = |s: &str| -> Option<u32> {
        if let Ok(n) = s.parse::<u32>() {
            return (lo..=hi).contains(&n).then_some(n);
        }
        let lower = s.to_ascii_lowercase();
        let pos = names.iter().position(|n| *n == lower)?;
        u32::try_from(pos).ok().map(|p| p + lo)
    };
    field.split(',').all(|part| {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        if let Some(step) = step
            && !step.parse::<u32>().is_ok_and(|s| s >= 1 && s <= hi.max(1))
        {
            return false;
        }
        if range == "*" {
            return true;
        }
        match range.split_once('-') {
            Some((a, b)) => matches!((value(a), value(b)), (Some(a), Some(b)) if a <= b),
            None => value(range).is_some(),
        }
    })
}

/// Secret references `${secret.NAME}` in a string, in order; `Err` for an
/// unterminated one.
pub(crate) fn secret_refs_in(value: &str) -> Vec<Result<String, ()>> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${secret.") {
        let after = &rest[start + "${secret.".len()..];
        match after.find('}') {
            Some(end) => {
                out.push(Ok(after[..end].to_string()));
                rest = &after[end + 1..];
            }
            None => {
                out.push(Err(()));
                break;
            }
        }
    }
    out
}

/// `${secrets.NAME}`, `${SECRET.NAME}`, `${secret:NAME}`, `${ secret.NAME }`
/// and the like: meant as a secret reference, but not one, so the text would
/// reach the app as it is written. Other `${...}` (e.g. `${HOME}`) stay
/// literal.
fn near_miss_refs(value: &str) -> Result<(), FormatError> {
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let (inner, closed) = match after.find('}') {
            Some(end) => (&after[..end], true),
            None => (after, false),
        };
        rest = if closed {
            &after[inner.len() + 1..]
        } else {
            ""
        };
        if inner.starts_with("secret.") {
            continue;
        }
        let Some((word, name)) = inner.trim().split_once(['.', ':']) else {
            continue;
        };
        // One letter off (`secrets`, `secert`, `scret`), not a word of its
        // own such as `secure` or `select`.
        if strsim::osa_distance(&word.trim().to_ascii_lowercase(), "secret") > 1 {
            continue;
        }
        let name = name.trim();
        let name_like =
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let rule =
            "A secret is referenced as `${secret.NAME}`, with `secret` in lower case and no spaces";
        let help = if name_like {
            format!(
                "did you mean `${{secret.{}}}`? {rule}",
                name.to_ascii_uppercase()
            )
        } else {
            rule.to_string()
        };
        let shown = if closed {
            format!("${{{inner}}}")
        } else {
            format!("${{{inner}")
        };
        return fail(
            format!("`{shown}` is not a secret reference, so the app would get it as written"),
            Some(help),
        );
    }
    Ok(())
}

// === impl SecretName ===

/// The name of a secret (upper-case environment variable style, e.g.
/// `DATABASE_URL`), never its value. Secrets are declared in the top-level
/// `secrets` list and set with `gantry secrets set`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretName(pub String);

impl SecretName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for SecretName {
    fn schema_name() -> Cow<'static, str> {
        "SecretName".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "secret-name",
            "pattern": "^[A-Z_][A-Z0-9_]*$",
        })
    }
}

// === impl HostName ===

/// A host name the proxy routes to this app: exact (`app.example.com`) or a
/// wildcard for one level of subdomains (`*.example.com`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HostName(pub String);

impl HostName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `*.example.com`.
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for HostName {
    fn schema_name() -> Cow<'static, str> {
        "HostName".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "hostname" })
    }
}

// === impl EnvValue ===

/// The value of an environment variable: a literal, or text that references
/// secrets as `${secret.NAME}` (the whole value or embedded).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EnvValue(pub String);

impl EnvValue {
    /// The raw text, references unexpanded.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Names of the secrets this value references.
    pub fn secret_refs(&self) -> Vec<String> {
        secret_refs_in(&self.0)
            .into_iter()
            .filter_map(Result::ok)
            .collect()
    }
}

impl JsonSchema for EnvValue {
    fn schema_name() -> Cow<'static, str> {
        "EnvValue".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "env-value" })
    }
}

// === impl Pause ===

/// How long a canary step waits before moving on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// Wait this long while analysis runs.
    For(Duration),
    /// Wait until someone runs `gantry promote`.
    Approval,
}

impl Default for Pause {
    fn default() -> Self {
        Pause::For(Duration::from_secs(600))
    }
}

impl fmt::Display for Pause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pause::For(d) => d.fmt(f),
            Pause::Approval => f.write_str("approval"),
        }
    }
}

impl Serialize for Pause {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Pause {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        if s == "approval" {
            return Ok(Pause::Approval);
        }
        s.parse::<Duration>().map(Pause::For).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid pause `{s}`: {e}; expected a duration or \"approval\""
            ))
        })
    }
}

impl JsonSchema for Pause {
    fn schema_name() -> Cow<'static, str> {
        "Pause".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "pause" })
    }
}

/// Schema of a lowercase name (app, environment, notify channel).
pub(crate) fn label_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "format": "label" })
}

/// Schema of a cron schedule.
pub(crate) fn cron_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "format": "cron" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(format: &str, v: &str) {
        let mut refs = Vec::new();
        if let Err(e) = check(format, v, &mut refs) {
            panic!("{format} {v}: {e:?}");
        }
    }

    fn err(format: &str, v: &str) -> FormatError {
        let mut refs = Vec::new();
        match check(format, v, &mut refs) {
            Ok(()) => panic!("{format} {v} passed"),
            Err(e) => e,
        }
    }

    #[test]
    fn hostnames() {
        ok("hostname", "hello.localhost");
        ok("hostname", "*.example.com");
        ok("hostname", "localhost");
        assert!(
            err("hostname", "Hello.com")
                .help
                .is_some_and(|h| h.contains("hello.com"))
        );
        assert!(err("hostname", "a..b").message.contains("empty label"));
        assert!(err("hostname", "a.com:80").message.contains("port"));
        assert!(
            err("hostname", "https://a.com/x")
                .help
                .is_some_and(|h| h.contains("`a.com`"))
        );
        assert!(err("hostname", "a.*.com").message.contains("`*`"));
        assert!(err("hostname", "a_b.com").message.contains("only letters"));
    }

    fn suggestion(v: &str) -> Option<String> {
        let help = err("hostname", v).help.unwrap_or_default();
        let fixed = help.strip_prefix("did you mean `")?.split('`').next()?;
        Some(fixed.to_string())
    }

    #[test]
    fn a_suggested_host_name_is_itself_valid() {
        let typos = [
            ("Foo_Bar.example.com", Some("foo-bar.example.com")),
            (
                "https://App.Example.com:8443/login?x=1",
                Some("app.example.com"),
            ),
            ("http://A_B.com/x", Some("a-b.com")),
            ("user@app.example.com", Some("app.example.com")),
            ("exmaple..com", Some("exmaple.com")),
            (".app.example.com.", Some("app.example.com")),
            ("app.example.com:80", Some("app.example.com")),
            ("-app-.example.com", Some("app.example.com")),
            ("app example.com", Some("app-example.com")),
            ("*.Example.COM", Some("*.example.com")),
            ("café.example.com", None),
            ("https://", None),
            ("a.*.com", None),
            (&"x".repeat(64), None),
            ("http://___/", None),
        ];
        for (typo, expected) in typos {
            let got = suggestion(typo);
            assert_eq!(got.as_deref(), expected, "{typo}");
            if let Some(fixed) = got {
                ok("hostname", &fixed);
            }
        }
    }

    /// Whatever the input, a suggested host name passes the check it is
    /// suggested by.
    #[test]
    fn host_name_suggestions_are_valid_for_random_input() {
        let alphabet: Vec<char> = "aZ9-_.:/@*?# é".chars().collect();
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if let Some(fixed) = suggest_hostname(&s) {
                assert!(hostname_problem(&fixed).is_none(), "{s:?} -> {fixed:?}");
                assert_ne!(fixed, s);
            }
        }
    }

    #[test]
    fn secret_names_and_refs() {
        ok("secret-name", "DATABASE_URL");
        assert!(
            err("secret-name", "database-url")
                .help
                .is_some_and(|h| h.contains("`DATABASE_URL`"))
        );
        let mut refs = Vec::new();
        assert!(
            check(
                "env-value",
                "postgres://u:${secret.PW}@h/${secret.DB}",
                &mut refs
            )
            .is_ok()
        );
        assert_eq!(refs, ["PW", "DB"]);
        assert!(
            err("env-value", "${secret.lower}")
                .message
                .contains("invalid secret name")
        );
        assert!(
            err("env-value", "x ${secret.OPEN")
                .message
                .contains("unterminated")
        );
        ok("env-value", "${HOME} stays literal");
        ok(
            "env-value",
            "${user.name}, ${a:b}, ${ sec.X }, ${secure.X}, ${select.X} stay literal",
        );
        for broken in ["${ secret. }", "${secret:}", "${secrets.a-b}"] {
            let e = err("env-value", broken);
            assert!(
                e.message.contains("is not a secret reference"),
                "{broken}: {e:?}"
            );
            assert!(
                e.help
                    .is_some_and(|h| h.starts_with("A secret is referenced as"))
            );
        }
        for (typo, fixed) in [
            ("${secrets.DB}", "${secret.DB}"),
            ("x=${SECRET.DB};", "${secret.DB}"),
            ("${Secret.DB}", "${secret.DB}"),
            ("${secret:DB}", "${secret.DB}"),
            ("${ secret.DB }", "${secret.DB}"),
            ("${secert.DB}", "${secret.DB}"),
            ("${secrets.db_url}", "${secret.DB_URL}"),
            ("open ${secrets.DB", "${secret.DB}"),
        ] {
            let e = err("env-value", typo);
            assert!(
                e.message.contains("is not a secret reference"),
                "{typo}: {e:?}"
            );
            assert!(
                e.help
                    .as_deref()
                    .is_some_and(|h| h.starts_with(&format!("did you mean `{fixed}`?"))),
                "{typo}: {e:?}"
            );
            // The suggestion is itself a valid reference.
            let suggested = e
                .help
                .as_deref()
                .and_then(|h| h.split('`').nth(1))
                .unwrap_or_default();
            ok("env-value", suggested);
        }
    }

    /// Names and secret names, like host names, are only suggested when
    /// the suggestion passes the same check.
    #[test]
    fn suggested_names_are_valid() {
        for (format, typo) in [
            ("label", "Hello_App"),
            ("label", "a-".repeat(40).as_str()),
            ("label", "web app"),
            ("secret-name", "database-url"),
            ("secret-name", "k".repeat(200).as_str()),
        ] {
            let help = err(format, typo).help.unwrap_or_default();
            if let Some(fixed) = help
                .split_once("did you mean `")
                .and_then(|(_, rest)| rest.split('`').next())
            {
                ok(format, fixed);
            }
        }
    }

    #[test]
    fn labels_and_cron() {
        ok("label", "hello-app");
        assert!(
            err("label", "Hello_App")
                .help
                .is_some_and(|h| h.contains("`hello-app`"))
        );
        assert!(err("label", "1abc").message.contains("invalid name"));
        ok("cron", "0 3 * * *");
        ok("cron", "*/15 0-6 1,15 jan-jun mon-fri");
        ok("cron", "@daily");
        assert!(err("cron", "0 3 * *").message.contains("5 fields"));
        assert!(err("cron", "61 * * * *").message.contains("minute"));
        assert!(err("cron", "@sometimes").message.contains("shorthand"));
    }

    #[test]
    fn durations_and_pauses() {
        ok("duration", "30s");
        ok("duration-or-zero", "0s");
        assert!(err("duration", "0s").message.contains("greater than zero"));
        ok("pause", "approval");
        ok("pause", "10m");
        assert!(
            err("pause", "forever")
                .help
                .is_some_and(|h| h.contains("approval"))
        );
        assert!(err("size", "0B").message.contains("greater than zero"));
    }
}
