//! Redaction for `gantry config show` and the API.
//!
//! References to secrets (`${secret.NAME}`, `url_secret = "NAME"`) are names,
//! not values, and are shown as they are. Literals that could hold a
//! credential are replaced by `<redacted>`: [env] values whose name looks like
//! a credential, and the password or query string of any URL.

use crate::formats::EnvValue;
use crate::model::{AppSpec, BackupDestination, NotifyChannel};

/// Shown in place of a literal credential.
pub(crate) const REDACTED: &str = "<redacted>";

const CREDENTIAL_WORDS: &[&str] = &[
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASS",
    "TOKEN",
    "KEY",
    "CREDENTIAL",
    "AUTH",
    "PRIVATE",
    "DSN",
    "COOKIE",
    "SESSION",
    "SIGNATURE",
    "CERT",
];

/// True when an environment variable of this name probably holds a credential.
pub(crate) fn looks_like_credential(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| CREDENTIAL_WORDS.contains(&word))
}

/// `scheme://user:<redacted>@host/path?<redacted>` for URLs with a password
/// or query; other text unchanged.
pub(crate) fn redact_url(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_string();
    };
    let (scheme, rest) = text.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, _)) => format!("{path}?{REDACTED}"),
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

fn redact_env_value(name: &str, value: &EnvValue) -> EnvValue {
    let text = value.as_str();
    if value.secret_refs().is_empty() && looks_like_credential(name) && !text.is_empty() {
        return EnvValue(REDACTED.to_string());
    }
    // Redact the URL parts of the literal text, keeping references intact.
    if text.contains("://") && !text.contains("${secret.") {
        return EnvValue(redact_url(text));
    }
    value.clone()
}

/// A copy of `spec` with literal credentials replaced.
pub(crate) fn redacted(spec: &AppSpec) -> AppSpec {
    let mut out = spec.clone();
    for (name, value) in out.env.iter_mut() {
        *value = redact_env_value(name, value);
    }
    for channel in out.notify.values_mut() {
        match channel {
            NotifyChannel::Webhook { url, .. } | NotifyChannel::Alertmanager { url, .. } => {
                *url = redact_url(url)
            }
            _ => {}
        }
    }
    if let Some(backup) = out.backup.as_mut()
        && let BackupDestination::S3 {
            endpoint: Some(endpoint),
            ..
        } = &mut backup.destination
    {
        *endpoint = redact_url(endpoint);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_passwords_and_queries() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/app"),
            "postgres://app:<redacted>@db:5432/app"
        );
        assert_eq!(
            redact_url("https://hooks.example.com/x?token=abc"),
            "https://hooks.example.com/x?<redacted>"
        );
        assert_eq!(
            redact_url("https://example.com/path"),
            "https://example.com/path"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn credential_names() {
        assert!(looks_like_credential("API_KEY"));
        assert!(looks_like_credential("GITHUB_TOKEN"));
        assert!(looks_like_credential("db_password"));
        assert!(!looks_like_credential("LOG_LEVEL"));
        assert!(!looks_like_credential("KEYBOARD_LAYOUT"));
    }

    #[test]
    fn references_stay_and_literals_go() {
        let keep = EnvValue("${secret.SESSION_KEY}".into());
        assert_eq!(redact_env_value("SESSION_KEY", &keep), keep);
        let literal = EnvValue("s3cr3t".into());
        assert_eq!(redact_env_value("API_TOKEN", &literal).as_str(), REDACTED);
        let plain = EnvValue("info".into());
        assert_eq!(redact_env_value("LOG_LEVEL", &plain), plain);
        let url = EnvValue("redis://:pw@cache:6379".into());
        assert_eq!(
            redact_env_value("CACHE_URL", &url).as_str(),
            "redis://:<redacted>@cache:6379"
        );
    }
}
