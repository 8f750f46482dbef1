//! Semantic checks, run once the structure is clean: rules that span several
//! keys or environments (declared secrets, notify channels, unique hosts,
//! probe kinds and their fields, ...). Each problem points at the key that
//! causes it, in the base table or in the environment table it comes from.

use std::collections::{BTreeMap, BTreeSet};

use crate::diagnostic::{did_you_mean, one_of};
use crate::model::{AppSpec, NotifyChannel, Probe, ProbeKind, Strategy, TlsMode};
use crate::tree::{Node, Seg, Span, path_string};
use crate::walk::{Issue, walk_root};

/// One resolved configuration: an environment (or the base when none is
/// declared), its merged tree and its typed spec.
pub(crate) struct Config<'a> {
    pub(crate) env: Option<&'a str>,
    pub(crate) merged: &'a Node,
    pub(crate) spec: &'a AppSpec,
}

/// Finds where a key of a merged configuration is written in the file.
pub(crate) struct Locator<'a> {
    pub(crate) base: &'a Node,
    pub(crate) environments: Option<&'a Node>,
}

impl Locator<'_> {
    /// Span and key path of `path` in `env`'s configuration: the environment
    /// table when it sets the key, else the base. Falls back to the nearest
    /// written ancestor for keys left at their defaults.
    pub(crate) fn locate(&self, env: Option<&str>, path: &[Seg]) -> (Span, String) {
        let over = env.and_then(|e| self.environments.and_then(|t| t.get(e)));
        for len in (0..=path.len()).rev() {
            let prefix = &path[..len];
            if let (Some(over), Some(env)) = (over, env)
                && let Some((_, span)) = over.at(prefix)
                && (len > 0 || span.is_some())
            {
                let mut full = vec![Seg::Key("environments".into()), Seg::Key(env.to_string())];
                full.extend_from_slice(prefix);
                return (span, path_string(&full));
            }
            if let Some((_, span)) = self.base.at(prefix)
                && len > 0
            {
                return (span, path_string(prefix));
            }
        }
        (None, String::new())
    }
}

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

/// Problems found in one configuration, before they are located.
struct Finding {
    path: Vec<Seg>,
    message: String,
    help: Option<String>,
}

fn finding(path: Vec<Seg>, message: impl Into<String>, help: Option<String>) -> Finding {
    Finding {
        path,
        message: message.into(),
        help,
    }
}

/// Where an undeclared secret is used, the environments that lack it, and a hint.
type Undeclared = (Span, Vec<String>, Option<String>);

/// Runs every semantic check over all configurations.
pub(crate) fn check(
    configs: &[Config<'_>],
    locator: &Locator<'_>,
    schema: &serde_json::Value,
) -> Vec<Issue> {
    let mut issues = Vec::new();
    let many = configs.len() > 1;

    // Undeclared secrets, grouped so that one base key missing in every
    // environment is reported once.
    let mut undeclared: BTreeMap<(String, String), Undeclared> = BTreeMap::new();
    for c in configs {
        let declared: BTreeSet<&str> = c.spec.secrets.iter().map(|s| s.as_str()).collect();
        let found = walk_root(c.merged, schema);
        for use_ in found.secrets {
            if use_.path.first() == Some(&key("secrets")) || declared.contains(use_.name.as_str()) {
                continue;
            }
            let (span, path) = locator.locate(c.env, &use_.path);
            let help = did_you_mean(&use_.name, declared.iter().copied())
                .map(|d| format!("{d} Otherwise add \"{}\" to the top-level `secrets` list", use_.name))
                .or_else(|| Some(format!("add \"{}\" to the top-level `secrets` list and set it with `gantry secrets set`", use_.name)));
            let entry = undeclared
                .entry((path, use_.name.clone()))
                .or_insert_with(|| (span, Vec::new(), help));
            if let Some(env) = c.env {
                entry.1.push(env.to_string());
            }
        }
    }
    for ((path, name), (span, envs, help)) in undeclared {
        let suffix = if many && envs.len() < configs.len() {
            format!(" in environment {}", one_of(&envs))
        } else {
            String::new()
        };
        issues.push(Issue {
            span,
            path,
            message: format!("secret `{name}` is not declared{suffix}"),
            help,
        });
    }

    for c in configs {
        for f in check_one(c.spec) {
            let (span, path) = locator.locate(c.env, &f.path);
            issues.push(Issue {
                span,
                path,
                message: f.message,
                help: f.help,
            });
        }
    }

    issues.extend(duplicate_hosts(configs, locator));
    issues
}

/// Rules within one configuration.
fn check_one(spec: &AppSpec) -> Vec<Finding> {
    let mut out = Vec::new();

    // [env]
    let secrets: BTreeSet<&str> = spec.secrets.iter().map(|s| s.as_str()).collect();
    for name in spec.env.keys() {
        let path = vec![key("env"), key(name)];
        if name == "PORT" {
            out.push(finding(
                path.clone(),
                "`PORT` is set by gantry for each instance",
                Some("remove it; read the port from `PORT` in the app".to_string()),
            ));
        }
        let same_secret = spec
            .env
            .get(name)
            .is_some_and(|v| v.as_str() == format!("${{secret.{name}}}"));
        if !same_secret && secrets.contains(name.as_str()) {
            out.push(finding(
                path,
                format!("`{name}` is both a plain variable and a declared secret"),
                Some(format!(
                    "secrets are injected under their own name; remove `{name}` from [env]"
                )),
            ));
        }
    }

    // [run]
    let backoff = &spec.run.backoff;
    if backoff.initial > backoff.max {
        out.push(finding(
            vec![key("run"), key("backoff"), key("initial")],
            format!(
                "backoff starts at {} but its max is {}",
                backoff.initial, backoff.max
            ),
            Some("make `initial` at most `max`".to_string()),
        ));
    }

    // [health]
    check_probe(&spec.health.readiness, "readiness", &mut out);
    if let Some(p) = &spec.health.liveness {
        check_probe(p, "liveness", &mut out);
    }

    // [deploy]
    let deploy = &spec.deploy;
    match deploy.strategy {
        Strategy::Canary if deploy.steps.is_empty() => out.push(finding(
            vec![key("deploy"), key("strategy")],
            "the canary strategy needs `steps`",
            Some("add steps, e.g. `steps = [{ weight = 10, pause = \"5m\" }, { weight = 50, pause = \"10m\" }]`".to_string()),
        )),
        Strategy::BlueGreen if !deploy.steps.is_empty() => out.push(finding(
            vec![key("deploy"), key("steps")],
            "`steps` only apply to the canary strategy",
            Some("set `strategy = \"canary\"`, or remove `steps`".to_string()),
        )),
        _ => {}
    }
    for (i, pair) in deploy.steps.windows(2).enumerate() {
        if let [a, b] = pair
            && b.weight < a.weight
        {
            out.push(finding(
                vec![
                    key("deploy"),
                    key("steps"),
                    Seg::Index(i + 1),
                    key("weight"),
                ],
                format!("canary weight goes down from {} to {}", a.weight, b.weight),
                Some("canary steps must not decrease the canary's share of traffic".to_string()),
            ));
        }
    }
    for (i, smoke) in deploy.smoke.iter().enumerate() {
        if !smoke.path.starts_with('/') {
            out.push(finding(
                vec![key("deploy"), key("smoke"), Seg::Index(i), key("path")],
                format!("smoke check path `{}` must start with `/`", smoke.path),
                Some(format!("did you mean `/{}`?", smoke.path)),
            ));
        }
    }

    // [proxy]
    let proxy = &spec.proxy;
    if !proxy.path_prefix.starts_with('/') {
        out.push(finding(
            vec![key("proxy"), key("path_prefix")],
            format!("path prefix `{}` must start with `/`", proxy.path_prefix),
            Some(format!("did you mean `/{}`?", proxy.path_prefix)),
        ));
    }
    let tls = vec![key("proxy"), key("tls"), key("mode")];
    match proxy.tls.mode {
        TlsMode::Files => {
            for (field, value) in [("cert", &proxy.tls.cert), ("key", &proxy.tls.key)] {
                if value.is_none() {
                    out.push(finding(
                        tls.clone(),
                        format!("TLS mode `files` needs `{field}`"),
                        Some(format!(
                            "add `{field} = \"/path/to/{field}.pem\"` to [proxy.tls]"
                        )),
                    ));
                }
            }
        }
        TlsMode::Acme => {
            if proxy.tls.acme_email.is_none() {
                out.push(finding(
                    tls.clone(),
                    "TLS mode `acme` needs `acme_email`",
                    Some("add `acme_email = \"ops@example.com\"`: the ACME provider sends expiry warnings there".to_string()),
                ));
            }
            for (i, h) in proxy.hosts.iter().enumerate() {
                if h.is_wildcard() {
                    out.push(finding(
                        vec![key("proxy"), key("hosts"), Seg::Index(i)],
                        format!("ACME cannot issue a certificate for the wildcard host `{h}`"),
                        Some("use `mode = \"files\"` with a wildcard certificate, or list the host names".to_string()),
                    ));
                }
            }
        }
        TlsMode::Off => {}
    }
    if proxy.tls.mode != TlsMode::Off && proxy.hosts.is_empty() {
        out.push(finding(
            tls,
            "TLS needs at least one host in `proxy.hosts`",
            None,
        ));
    }

    // [notify]
    for (name, channel) in &spec.notify {
        let url = match channel {
            NotifyChannel::Webhook { url, .. } | NotifyChannel::Alertmanager { url, .. } => {
                Some(url)
            }
            _ => None,
        };
        if let Some(url) = url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            out.push(finding(
                vec![key("notify"), key(name), key("url")],
                format!("`{url}` is not an http:// or https:// URL"),
                None,
            ));
        }
        if let NotifyChannel::Email { to, from, .. } = channel {
            for (i, addr) in to.iter().enumerate() {
                if !addr.contains('@') {
                    out.push(finding(
                        vec![key("notify"), key(name), key("to"), Seg::Index(i)],
                        format!("`{addr}` is not an email address"),
                        None,
                    ));
                }
            }
            if !from.contains('@') {
                out.push(finding(
                    vec![key("notify"), key(name), key("from")],
                    format!("`{from}` is not an email address"),
                    None,
                ));
            }
        }
    }

    // [[alerts]]
    let channels: Vec<&str> = spec.notify.keys().map(String::as_str).collect();
    let mut names = BTreeSet::new();
    for (i, alert) in spec.alerts.iter().enumerate() {
        if !names.insert(alert.name.as_str()) {
            out.push(finding(
                vec![key("alerts"), Seg::Index(i), key("name")],
                format!("another alert is already named `{}`", alert.name),
                Some("alert names must be unique".to_string()),
            ));
        }
        for (j, ch) in alert.channels.iter().enumerate() {
            if !spec.notify.contains_key(ch) {
                let help = did_you_mean(ch, channels.iter().copied()).or_else(|| {
                    Some(if channels.is_empty() {
                        format!("declare it as a `[notify.{ch}]` table")
                    } else {
                        format!("declared channels: {}", one_of(&channels))
                    })
                });
                out.push(finding(
                    vec![key("alerts"), Seg::Index(i), key("channels"), Seg::Index(j)],
                    format!("unknown notify channel `{ch}`"),
                    help,
                ));
            }
        }
    }
    out
}

fn check_probe(p: &Probe, which: &str, out: &mut Vec<Finding>) {
    let at = |k: &str| vec![key("health"), key(which), key(k)];
    let kind = match p.kind {
        ProbeKind::Http => "http",
        ProbeKind::Tcp => "tcp",
        ProbeKind::Exec => "exec",
    };
    let only = |field: &str, for_kind: &str| {
        finding(
            at(field),
            format!(
                "`{field}` only applies to {for_kind} probes, and this probe's kind is `{kind}`"
            ),
            Some(format!("remove `{field}`, or set `kind = \"{for_kind}\"`")),
        )
    };
    if p.kind != ProbeKind::Http {
        if p.path.is_some() {
            out.push(only("path", "http"));
        }
        if p.body_contains.is_some() {
            out.push(only("body_contains", "http"));
        }
    }
    if p.kind != ProbeKind::Exec && p.command.is_some() {
        out.push(only("command", "exec"));
    }
    if p.kind == ProbeKind::Exec && p.command.is_none() {
        out.push(finding(
            vec![key("health"), key(which)],
            "an exec probe needs `command`",
            Some("add `command = \"...\"`; exit status 0 means healthy".to_string()),
        ));
    }
    if let Some(path) = &p.path
        && p.kind == ProbeKind::Http
        && !path.starts_with('/')
    {
        out.push(finding(
            at("path"),
            format!("probe path `{path}` must start with `/`"),
            Some(format!("did you mean `/{path}`?")),
        ));
    }
    if p.expect_status.min > p.expect_status.max {
        out.push(finding(
            vec![key("health"), key(which), key("expect_status")],
            format!(
                "status range {}..{} is empty",
                p.expect_status.min, p.expect_status.max
            ),
            Some("make `min` at most `max`".to_string()),
        ));
    }
    if p.timeout > p.interval {
        out.push(finding(
            at("timeout"),
            format!(
                "probe timeout {} is longer than its interval {}",
                p.timeout, p.interval
            ),
            Some("make `timeout` at most `interval`".to_string()),
        ));
    }
}

/// A host may route to one environment only.
fn duplicate_hosts(configs: &[Config<'_>], locator: &Locator<'_>) -> Vec<Issue> {
    let mut users: BTreeMap<&str, Vec<(&str, usize)>> = BTreeMap::new();
    for c in configs {
        let Some(env) = c.env else { continue };
        for (i, h) in c.spec.proxy.hosts.iter().enumerate() {
            users.entry(h.as_str()).or_default().push((env, i));
        }
    }
    let mut out: Vec<Issue> = Vec::new();
    for (host, list) in users {
        let envs: BTreeSet<&str> = list.iter().map(|(e, _)| *e).collect();
        if envs.len() < 2 {
            continue;
        }
        let names: Vec<&str> = envs.iter().copied().collect();
        let mut seen_paths = BTreeSet::new();
        for (env, i) in &list {
            let (span, path) =
                locator.locate(Some(env), &[key("proxy"), key("hosts"), Seg::Index(*i)]);
            if !seen_paths.insert(path.clone()) {
                continue;
            }
            out.push(Issue {
                span,
                path,
                message: format!("host `{host}` is used by more than one environment: {}", one_of(&names)),
                help: Some("a host routes to one environment; set `proxy.hosts` in each `[environments.<name>]` table".to_string()),
            });
        }
    }
    out
}
