//! How secret values reach an app without ever being written down.
//!
//! A secret's value lives encrypted in the control plane's store, and in
//! the clear only in memory: in the control plane while it starts an app,
//! in the shim until it has started it, and in the app's own environment
//! (where the app wants it; as visible as any environment variable is).
//! Nothing the runtime writes holds a value:
//!
//! - [`InstanceSpec`](crate::InstanceSpec) (stored by the control plane, so
//!   a new one can adopt the instance) keeps the variables that carry a
//!   secret apart, in `secret_env`, as **templates**: `${secret.NAME}` for a
//!   secret injected under its name, `postgres://u:${secret.PW}@h/db` for
//!   an `[env]` value that embeds one. A variable whose value renders a
//!   secret is as sensitive as the secret, so it is treated the same.
//! - Each time the supervisor starts the app (first start, restart after a
//!   crash or liveness failure, restart under a new shim, and after the
//!   control plane restarted and adopted it) it asks its
//!   [`SecretSource`](crate::supervisor::SecretSource) for the current
//!   values (the control plane's decrypts them from the store on demand),
//!   fills in the templates with [`render`], and writes the result as JSON
//!   to the new shim's **stdin**, then closes it. The shim reads it to the
//!   end before anything else and puts it in the app's environment only.
//! - The shim's `spec.json` holds the environment without those variables;
//!   its arguments are the instance directory; its own environment is only
//!   `PATH` (never the control plane's, which may hold `GANTRY_SECRET_KEY`).
//!
//! So a restart long after the control plane itself restarted needs no
//! copy of a value anywhere: the store and the key are enough. A restart
//! uses the secret's value at that time (after `gantry secrets set`, the
//! next restart or deploy picks the new value up).

use std::collections::BTreeMap;

/// A template names a secret that has no value: the first such name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret `{0}` has no value")]
pub struct NoValue(pub String);

/// `template` with every `${secret.NAME}` replaced by `values[NAME]`, in
/// one pass (a value that itself contains `${secret.…}` stays as it is).
/// The error names the first secret without a value.
pub fn render(template: &str, values: &BTreeMap<String, String>) -> Result<String, NoValue> {
    const OPEN: &str = "${secret.";
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find(OPEN) {
        let after = &rest[at + OPEN.len()..];
        let Some(end) = after.find('}') else {
            break;
        };
        let name = &after[..end];
        let value = values.get(name).ok_or_else(|| NoValue(name.to_string()))?;
        out.push_str(&rest[..at]);
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `value` refers to a secret (so it must be treated as one).
pub fn refers_to_secret(value: &str) -> bool {
    value.contains("${secret.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled_in_once() {
        let values: BTreeMap<String, String> = [("PW", "s3cr3t"), ("TRICKY", "${secret.PW}")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        assert_eq!(render("${secret.PW}", &values).unwrap(), "s3cr3t");
        assert_eq!(
            render("postgres://u:${secret.PW}@h/db?x=${secret.PW}", &values).unwrap(),
            "postgres://u:s3cr3t@h/db?x=s3cr3t"
        );
        assert_eq!(
            render("${secret.TRICKY}", &values).unwrap(),
            "${secret.PW}",
            "a value is not rendered again"
        );
        assert_eq!(
            render("plain $HOME ${x}", &values).unwrap(),
            "plain $HOME ${x}"
        );
        assert_eq!(
            render("a ${secret.GONE} b", &values).unwrap_err(),
            NoValue("GONE".into())
        );
        assert!(refers_to_secret("u:${secret.PW}@h"));
        assert!(!refers_to_secret("${PW}"));
    }
}
