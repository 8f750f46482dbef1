//! The routing table as the control plane submits it (JSON), and its
//! validation. The compiled, matchable form is in `router`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::error::TableError;
use crate::policy::rate_limit::RateLimit;
use crate::policy::security_headers::SecurityHeaders;

/// The whole routing table. Submitted with `PUT /table`, persisted, and
/// swapped in at once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    /// An opaque number the control plane may use to tell tables apart; the
    /// proxy only stores and echoes it.
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// Host names + a path prefix → one app environment with weighted sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Route id, e.g. `hello/production`; unique in the table. Metrics and
    /// drain status are keyed by it.
    pub id: String,
    /// Exact names (`app.example.com`), one-label wildcards
    /// (`*.example.com` matches `a.example.com`, not `a.b.example.com`
    /// nor `example.com`), or `*` for any host. Compared case-insensitively,
    /// without the port.
    pub hosts: Vec<String>,
    /// Path prefix, matched on segment boundaries: `/api` matches `/api`
    /// and `/api/x`, not `/apix`. Defaults to `/`.
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Backend sets; their weights add up to 100.
    #[serde(default)]
    pub sets: Vec<BackendSet>,
    /// When set, every request gets 503 with this message and Retry-After.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// Time to wait for the backend's response headers; the proxy's
    /// `response_timeout` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Compress compressible responses with brotli or gzip, as the client
    /// accepts (see the proxy's `compress` module for the rules).
    #[serde(default, skip_serializing_if = "is_false")]
    pub compress: bool,
    /// Sticky sessions: the proxy sets a `gantry_sticky` cookie naming the
    /// instance that answered, and sends later requests that carry it to
    /// that instance while it is in the table with weight above 0 and not
    /// ejected.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sticky: bool,
    /// Security headers added to the route's responses that lack them;
    /// none when absent (the control plane sends the spec's, strict by
    /// default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<SecurityHeaders>,
    /// Per-client-IP rate limit; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Largest request body in bytes (413 above it); unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u64>,
    /// Time to open a connection to an instance; the proxy's
    /// `connect_timeout` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// TLS for the route's hosts on the proxy's TLS listeners: certificate
    /// files, or certificates obtained over ACME. Absent: the hosts are
    /// served over TLS only with the proxy's default certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouteTls>,
    /// Answer plain-HTTP requests with 308 to the same host, path and
    /// query on `https://` (the default port 443; any port in the Host
    /// header is dropped). ACME HTTP-01 challenge paths are never
    /// redirected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect_http: bool,
}

/// Where a route's certificates come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RouteTls {
    /// A PEM certificate chain and its PEM private key (PKCS#8, PKCS#1 or
    /// SEC1), read by the proxy when the table is set. Served for every
    /// host of the route, chosen by SNI.
    Files {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
    /// Certificates obtained and renewed over ACME, one per exact host of
    /// the route (wildcards need DNS-01, which the proxy does not do).
    Acme {
        /// Contact address registered with the ACME account.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<String>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_prefix() -> String {
    "/".to_string()
}

/// One backend set (`stable`, `canary`, `blue`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSet {
    pub name: String,
    /// Share of the route's requests in percent, 0..=100.
    pub weight: u32,
    /// `IP:PORT` of each instance.
    #[serde(default)]
    pub instances: Vec<String>,
}

/// Maintenance mode of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    pub message: String,
    /// Seconds for the `Retry-After` header; 300 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl Table {
    /// Parses JSON and validates; the error names the field at fault.
    pub fn from_json(bytes: &[u8]) -> Result<Table, TableError> {
        let table: Table = serde_json::from_slice(bytes).map_err(|e| TableError::Json {
            reason: e.to_string(),
        })?;
        table.validate()?;
        Ok(table)
    }

    /// Checks every rule; reports all problems at once.
    pub fn validate(&self) -> Result<(), TableError> {
        let mut problems = Vec::new();
        let mut ids = HashSet::new();
        let mut keys: HashMap<(String, String), &str> = HashMap::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = if route.id.is_empty() {
                format!("routes[{i}]")
            } else {
                format!("route `{}`", route.id)
            };
            if route.id.is_empty() {
                problems.push(format!("{at}: `id` is empty"));
            } else if !ids.insert(route.id.as_str()) {
                problems.push(format!(
                    "{at}: the id is used by more than one route; ids must be unique"
                ));
            }
            if route.hosts.is_empty() {
                problems.push(format!(
                    "{at}: `hosts` is empty; give at least one host name (or `*`)"
                ));
            }
            for host in &route.hosts {
                match normalize_host_pattern(host) {
                    Err(why) => problems.push(format!("{at}: host `{host}` {why}")),
                    Ok(h) => {
                        let key = (h, normalize_prefix(&route.path_prefix));
                        if let Some(other) = keys.insert(key, &route.id) {
                            problems.push(format!(
                                "{at}: host `{host}` with path prefix `{}` is already routed \
                                 by route `{other}`",
                                route.path_prefix
                            ));
                        }
                    }
                }
            }
            if !route.path_prefix.starts_with('/') {
                problems.push(format!(
                    "{at}: path_prefix `{}` must start with `/`",
                    route.path_prefix
                ));
            }
            if route.sets.is_empty() && route.maintenance.is_none() {
                problems.push(format!(
                    "{at}: no backend sets; add one, or put the route in maintenance"
                ));
            }
            let mut names = HashSet::new();
            let mut total = 0u64;
            for set in &route.sets {
                let sat = format!("{at}, set `{}`", set.name);
                if set.name.is_empty() {
                    problems.push(format!("{at}: a set has an empty name"));
                } else if !names.insert(set.name.as_str()) {
                    problems.push(format!("{sat}: the set name is used twice in this route"));
                }
                if set.weight > 100 {
                    problems.push(format!(
                        "{sat}: weight {} is out of range 0..=100",
                        set.weight
                    ));
                }
                total += u64::from(set.weight);
                if set.weight > 0 && set.instances.is_empty() {
                    problems.push(format!(
                        "{sat}: weight {} but no instances; give instances or weight 0",
                        set.weight
                    ));
                }
                let mut seen = HashSet::new();
                for inst in &set.instances {
                    match inst.parse::<SocketAddr>() {
                        Err(_) => problems.push(format!(
                            "{sat}: instance `{inst}` is not an IP:PORT address (e.g. \
                             `127.0.0.1:8080`)"
                        )),
                        Ok(a) if a.port() == 0 => {
                            problems.push(format!("{sat}: instance `{inst}` has port 0"))
                        }
                        Ok(a) => {
                            if !seen.insert(a) {
                                problems.push(format!("{sat}: instance `{inst}` is listed twice"));
                            }
                        }
                    }
                }
            }
            if !route.sets.is_empty() && total != 100 {
                problems.push(format!(
                    "{at}: set weights add up to {total}; they must add up to 100"
                ));
            }
            if let Some(m) = &route.maintenance
                && m.message.trim().is_empty()
            {
                problems.push(format!("{at}: maintenance message is empty"));
            }
            if route.timeout_ms == Some(0) {
                problems.push(format!("{at}: timeout_ms must be more than 0"));
            }
            if route.connect_timeout_ms == Some(0) {
                problems.push(format!("{at}: connect_timeout_ms must be more than 0"));
            }
            if let Some(h) = &route.headers {
                h.validate(&at, &mut problems);
            }
            if let Some(r) = &route.rate_limit {
                r.validate(&at, &mut problems);
            }
            crate::tls::certs::validate_route_tls(&at, route, &mut problems);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TableError::Invalid { problems })
        }
    }
}

/// Lower-cases and checks a host pattern: `*`, `*.suffix` or a name.
pub(crate) fn normalize_host_pattern(host: &str) -> Result<String, &'static str> {
    let h = host.trim().to_ascii_lowercase();
    if h == "*" {
        return Ok(h);
    }
    let name = h.strip_prefix("*.").unwrap_or(&h);
    if name.is_empty() {
        return Err("is empty");
    }
    if name.contains('*') {
        return Err("may only use `*` as its whole first label, as in `*.example.com`");
    }
    if name.contains(':') || name.contains('/') {
        return Err("must be a bare host name, without port, scheme or path");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err("has characters that are not allowed in a host name");
    }
    Ok(h)
}

/// `/api/` and `/api` are the same prefix.
pub(crate) fn normalize_prefix(prefix: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        "/".to_string()
    } else {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str, hosts: &[&str], prefix: &str, sets: Vec<BackendSet>) -> Route {
        Route {
            id: id.into(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            path_prefix: prefix.into(),
            sets,
            maintenance: None,
            timeout_ms: None,
            compress: false,
            sticky: false,
            headers: None,
            rate_limit: None,
            max_body: None,
            connect_timeout_ms: None,
            tls: None,
            redirect_http: false,
        }
    }

    fn set(name: &str, weight: u32, inst: &[&str]) -> BackendSet {
        BackendSet {
            name: name.into(),
            weight,
            instances: inst.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_good_table_validates() {
        let t = Table {
            version: 1,
            routes: vec![route(
                "hello/production",
                &["hello.example.com", "*.example.com"],
                "/",
                vec![
                    set("stable", 90, &["127.0.0.1:4000"]),
                    set("canary", 10, &["127.0.0.1:4001"]),
                ],
            )],
        };
        t.validate().unwrap();
        let json = serde_json::to_vec(&t).unwrap();
        assert_eq!(Table::from_json(&json).unwrap(), t);
    }

    #[test]
    fn every_problem_is_reported() {
        let t = Table {
            version: 0,
            routes: vec![
                route(
                    "a",
                    &["x.example.com"],
                    "/api",
                    vec![
                        set("stable", 90, &["127.0.0.1:4000", "nope"]),
                        set("canary", 20, &[]),
                    ],
                ),
                route(
                    "a",
                    &["X.example.com", "bad*.com"],
                    "/api/",
                    vec![set("s", 100, &["127.0.0.1:1"])],
                ),
            ],
        };
        let err = t.validate().unwrap_err().to_string();
        for needle in [
            "`nope` is not an IP:PORT",
            "add up to 110",
            "weight 20 but no instances",
            "ids must be unique",
            "already routed by route `a`",
            "`bad*.com` may only use `*`",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in {err}");
        }
    }

    #[test]
    fn tls_and_redirect_in_json() {
        let t = Table::from_json(
            br#"{"routes":[{"id":"a","hosts":["a.example"],"redirect_http":true,
                "tls":{"mode":"acme","email":"ops@a.example"},
                "sets":[{"name":"s","weight":100,"instances":["127.0.0.1:1"]}]}]}"#,
        )
        .unwrap();
        assert!(t.routes[0].redirect_http);
        assert_eq!(
            t.routes[0].tls,
            Some(RouteTls::Acme {
                email: Some("ops@a.example".into())
            })
        );
        let err = Table::from_json(
            br#"{"routes":[{"id":"a","hosts":["a.example"],"tls":{"mode":"files","cert":"/nope.crt"},
                "sets":[{"name":"s","weight":100,"instances":["127.0.0.1:1"]}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("missing field `key`"), "{err}");
        let err = Table::from_json(
            br#"{"routes":[{"id":"a","hosts":["a.example"],"tls":{"mode":"magic"},
                "sets":[{"name":"s","weight":100,"instances":["127.0.0.1:1"]}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("magic"), "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_rate_limits_are_refused() {
        let err = Table::from_json(br#"{"routes":[],"rotues":[]}"#).unwrap_err();
        assert!(err.to_string().contains("rotues"), "{err}");
        let mut r = route("a", &["*"], "/", vec![set("s", 100, &["127.0.0.1:1"])]);
        r.rate_limit = Some(RateLimit {
            requests_per_second: 0.0,
            burst: 0,
        });
        let err = Table {
            version: 0,
            routes: vec![r],
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("route `a`: rate_limit.requests_per_second"),
            "{err}"
        );
        assert!(err.contains("route `a`: rate_limit.burst"), "{err}");
    }
}
