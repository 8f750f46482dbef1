//! The embedded runtime: each instance of an app environment is a native
//! process, supervised.
//!
//! Shape of it:
//! - [`Runtime::start`] / [`Runtime::adopt`] give an [`Instance`] handle,
//!   backed by one tokio task per instance ([`supervisor`]).
//! - The task starts a **shim** (`gantry shim DIR`, [`shim`]), which runs
//!   the app's command line (`/bin/sh -c`, with `exec` before its last
//!   command so the app is the process signalled and waited for:
//!   [`cmdline`]) in its own process group and session, under its limits
//!   ([`limits`]: cgroup v2, else v1, else rlimits), captures its output
//!   with timestamps into rotated files ([`logs`]), and records the app's
//!   pid, start time and exit in the instance directory. Because the pipes
//!   end in the shim, apps outlive the control plane; on restart the control
//!   plane re-adopts them by pid *and* start time ([`procfs`]), so a reused
//!   pid is never taken for ours.
//! - Probes ([`probe`]) gate readiness and trigger liveness restarts;
//!   restarts follow the policy with capped, jittered exponential backoff
//!   and stop in a crash-loop state ([`restart`], pure and unit-tested).
//! - Ports come from one host-wide pool, verified free by binding ([`ports`]).
//! - Every state change is an [`Event`] with a reason, sent to the caller.
//! - Secret values are never written down: specs carry templates, filled in
//!   from a [`SecretSource`] at each start and handed to the shim on its
//!   stdin ([`secrets`]).
//!
//! The driver boundary is [`Runtime`]'s methods and the serializable
//! [`InstanceSpec`]; a container driver would implement the same.
#![forbid(unsafe_code)]

pub mod cmdline;
pub mod limits;
pub mod logs;
pub mod ports;
pub mod probe;
pub mod procfs;
pub mod restart;
pub mod secrets;
pub mod shim;
pub mod supervisor;

pub use supervisor::{
    Event, EventKind, Instance, InstanceSpec, InstanceStatus, Phase, Runtime, SecretSource,
    StopError,
};

/// The environment every instance starts from: the variables of this
/// process that `inherit` names (names, or patterns with `*`: `LC_*`; the
/// spec's `run.inherit_env`), then Gantry's own (`GANTRY_APP`,
/// `GANTRY_ENV`, `DATA_DIR`), then `app_vars` (the app's `[env]` and
/// secrets) on top.
pub fn instance_env<S: AsRef<str>>(
    app: &str,
    env: &str,
    data_dir: &std::path::Path,
    inherit: &[S],
    app_vars: std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    let mut vars = inherited(std::env::vars(), inherit);
    vars.insert("GANTRY_APP".into(), app.into());
    vars.insert("GANTRY_ENV".into(), env.into());
    vars.insert("DATA_DIR".into(), data_dir.display().to_string());
    vars.extend(app_vars);
    vars
}

/// The variables of `from` whose names match one of `patterns`.
fn inherited<S: AsRef<str>>(
    from: impl Iterator<Item = (String, String)>,
    patterns: &[S],
) -> std::collections::BTreeMap<String, String> {
    from.filter(|(k, _)| patterns.iter().any(|p| glob_match(p.as_ref(), k)))
        .collect()
}

/// Whether `name` matches `pattern`, where `*` stands for any run of
/// characters (possibly empty) and everything else for itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole name.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Milliseconds since the Unix epoch: the one clock of every crate
/// (`gantry_common::now_ms`), re-exported for the runtime's users.
pub use gantry_common::now_ms;

/// `e` and each of its sources, joined with `: ` (every error type's
/// Display says only its own part).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `2026-11-21T22:44:04.123Z` for milliseconds since the epoch.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn inherits_only_the_matching_variables() {
        for (p, n, want) in [
            ("PATH", "PATH", true),
            ("PATH", "PATHX", false),
            ("PATH", "XPATH", false),
            ("LC_*", "LC_ALL", true),
            ("LC_*", "LC_", true),
            ("LC_*", "LANG", false),
            ("*_URL", "DATABASE_URL", true),
            ("A*B*C", "AxxBxxC", true),
            ("A*B*C", "AxxCxxB", false),
            ("AB*B", "AB", false),
            ("*", "ANY", true),
        ] {
            assert_eq!(super::glob_match(p, n), want, "{p} ~ {n}");
        }
        let server = [
            ("PATH", "/venv/bin:/usr/bin"),
            ("HOME", "/home/g"),
            ("LC_ALL", "C.UTF-8"),
            ("GANTRY_SECRET_KEY", "AGE-SECRET-KEY-1..."),
            ("VIRTUAL_ENV", "/venv"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let got = super::inherited(server.clone().into_iter(), &["PATH", "LC_*"]);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            ["LC_ALL", "PATH"],
            "never the server's key"
        );
        let none: &[&str] = &[];
        assert!(super::inherited(server.into_iter(), none).is_empty());
    }

    #[test]
    fn formats_times() {
        assert_eq!(super::rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339_ms(1_795_302_244_123),
            "2026-11-21T23:04:04.123Z"
        );
        assert_eq!(
            super::rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
