//! Request policy per route, between routing (phase 1) and forwarding:
//!
//! - the security-header policy added to every response of the route
//!   that lacks the header (the app's own header wins; `""` sends none);
//! - the checks run once a route is chosen, before a backend set is:
//!   the proxy's own CSP report endpoint (`csp_report`), the per-client
//!   rate limit (`rate_limit`), and a declared body over the route's
//!   `max_body` (413 before the backend is contacted). A body that grows
//!   past `max_body` while streaming is cut in `body`.
//!
//! The state that outlives tables (reports, counters, rate-limit buckets)
//! sits in a [`PolicyRegistry`] per route id, like the set counters in
//! `stats`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::csp_report::Reports;
use crate::rate_limit::{Limiter, RateLimit};
use crate::stats::escape_label;

/// The path the proxy answers itself on every route: CSP violation reports.
pub(crate) const CSP_REPORT_PATH: &str = "/_gantry/csp-report";

/// The default `Content-Security-Policy`: same-origin only, no plugins,
/// Trusted Types for scripts, reports to the proxy's own endpoint.
pub const DEFAULT_CSP: &str = "default-src 'self'; object-src 'none'; base-uri 'self'; \
     frame-ancestors 'none'; require-trusted-types-for 'script'; \
     report-uri /_gantry/csp-report; report-to gantry-csp";
/// The default `Reporting-Endpoints`: the `gantry-csp` group of
/// [`DEFAULT_CSP`]'s `report-to`.
pub const DEFAULT_REPORTING_ENDPOINTS: &str = "gantry-csp=\"/_gantry/csp-report\"";
/// The default `Strict-Transport-Security` (one year).
pub const DEFAULT_HSTS: &str = "max-age=31536000; includeSubDomains";

/// Whether browsers enforce a route's CSP or only report what it would
/// block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CspMode {
    /// `Content-Security-Policy`: violations are blocked (and reported).
    #[default]
    Enforce,
    /// `Content-Security-Policy-Report-Only`: violations are only
    /// reported, so pages keep working while the policy is tuned.
    ReportOnly,
}

impl CspMode {
    fn is_enforce(&self) -> bool {
        *self == CspMode::Enforce
    }

    /// The response header the CSP goes in.
    pub fn header_name(self) -> &'static str {
        match self {
            CspMode::Enforce => "content-security-policy",
            CspMode::ReportOnly => "content-security-policy-report-only",
        }
    }
}

/// Security headers of a route. Each is added to responses that lack it;
/// `""` sends none. Absent fields take the strict defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityHeaders {
    /// `Content-Security-Policy`.
    pub csp: String,
    /// Enforce `csp` or send it as `Content-Security-Policy-Report-Only`.
    /// Absent (as in tables persisted before it existed): enforce.
    #[serde(skip_serializing_if = "CspMode::is_enforce")]
    pub csp_mode: CspMode,
    /// `Reporting-Endpoints` (the groups a CSP `report-to` names).
    pub reporting_endpoints: String,
    /// `Strict-Transport-Security`, sent on HTTPS requests only.
    pub hsts: String,
    /// `X-Frame-Options`.
    pub frame_options: String,
    /// `X-Content-Type-Options`.
    pub content_type_options: String,
    /// `Referrer-Policy`.
    pub referrer_policy: String,
    /// `Permissions-Policy`.
    pub permissions_policy: String,
}

impl Default for SecurityHeaders {
    fn default() -> Self {
        SecurityHeaders {
            csp: DEFAULT_CSP.to_string(),
            csp_mode: CspMode::Enforce,
            reporting_endpoints: DEFAULT_REPORTING_ENDPOINTS.to_string(),
            hsts: DEFAULT_HSTS.to_string(),
            frame_options: "DENY".to_string(),
            content_type_options: "nosniff".to_string(),
            referrer_policy: "strict-origin-when-cross-origin".to_string(),
            permissions_policy: "camera=(), microphone=(), geolocation=()".to_string(),
        }
    }
}

impl SecurityHeaders {
    /// (field name, header, value) of each non-HSTS header, then HSTS.
    fn fields(&self) -> [(&'static str, HeaderName, &str); 7] {
        [
            (
                "csp",
                HeaderName::from_static(self.csp_mode.header_name()),
                &self.csp,
            ),
            (
                "reporting_endpoints",
                HeaderName::from_static("reporting-endpoints"),
                &self.reporting_endpoints,
            ),
            (
                "frame_options",
                header::X_FRAME_OPTIONS,
                &self.frame_options,
            ),
            (
                "content_type_options",
                header::X_CONTENT_TYPE_OPTIONS,
                &self.content_type_options,
            ),
            (
                "referrer_policy",
                header::REFERRER_POLICY,
                &self.referrer_policy,
            ),
            (
                "permissions_policy",
                HeaderName::from_static("permissions-policy"),
                &self.permissions_policy,
            ),
            ("hsts", header::STRICT_TRANSPORT_SECURITY, &self.hsts),
        ]
    }

    /// Every value must be a valid header value (visible ASCII, spaces and
    /// tabs; no line breaks).
    pub(crate) fn validate(&self, at: &str, problems: &mut Vec<String>) {
        for (field, name, value) in self.fields() {
            if !value.is_empty() && HeaderValue::from_str(value).is_err() {
                problems.push(format!(
                    "{at}: headers.{field} is not a valid `{name}` header value ({value:?}); \
                     use visible ASCII on one line, or \"\" to send no `{name}`"
                ));
            }
        }
    }
}

/// A route's headers, parsed once per table.
pub(crate) struct CompiledHeaders {
    always: Vec<(HeaderName, HeaderValue)>,
    hsts: Option<HeaderValue>,
}

impl CompiledHeaders {
    pub(crate) fn compile(h: &SecurityHeaders) -> CompiledHeaders {
        let mut always = Vec::new();
        let mut hsts = None;
        for (_, name, value) in h.fields() {
            // Validated with the table; a bad value is skipped, never sent.
            let Ok(v) = HeaderValue::from_str(value) else {
                continue;
            };
            if value.is_empty() {
                continue;
            }
            if name == header::STRICT_TRANSPORT_SECURITY {
                hsts = Some(v);
            } else {
                always.push((name, v));
            }
        }
        CompiledHeaders { always, hsts }
    }

    /// Adds each header the response lacks; HSTS only when `https`.
    pub(crate) fn apply(&self, headers: &mut HeaderMap, https: bool) {
        for (name, value) in &self.always {
            // One lookup: the app's own header wins.
            if let hyper::header::Entry::Vacant(slot) = headers.entry(name) {
                slot.insert(value.clone());
            }
        }
        if https
            && let Some(v) = &self.hsts
            && !headers.contains_key(header::STRICT_TRANSPORT_SECURITY)
        {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
        }
    }
}

// === impl PolicyRegistry ===

/// Per-route state that outlives tables.
pub(crate) struct RouteState {
    pub(crate) id: String,
    pub(crate) reports: Reports,
    pub(crate) limiter: Limiter,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) body_too_large: AtomicU64,
}

/// Every route id ever seen. Locked on table swaps and admin reads only.
#[derive(Default)]
pub(crate) struct PolicyRegistry {
    routes: Mutex<HashMap<String, Arc<RouteState>>>,
}

impl PolicyRegistry {
    pub(crate) fn route(&self, id: &str) -> Arc<RouteState> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(RouteState {
                    id: id.to_string(),
                    reports: Reports::default(),
                    limiter: Limiter::new(),
                    rate_limited: AtomicU64::new(0),
                    body_too_large: AtomicU64::new(0),
                })
            })
            .clone()
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<RouteState>> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.get(id).cloned()
    }

    fn all(&self) -> Vec<Arc<RouteState>> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = routes.values().cloned().collect();
        drop(routes);
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// This module's Prometheus lines, appended to `stats`' output.
    pub(crate) fn render_prometheus(&self, out: &mut String) {
        let all = self.all();
        type Counter = fn(&RouteState) -> u64;
        let series: [(&str, &str, Counter); 3] = [
            (
                "gantry_proxy_csp_reports_total",
                "CSP violation reports received, by route.",
                |r| r.reports.total(),
            ),
            (
                "gantry_proxy_rate_limited_total",
                "Requests refused with 429 by the per-client rate limit, by route.",
                |r| r.rate_limited.load(Relaxed),
            ),
            (
                "gantry_proxy_body_too_large_total",
                "Requests refused with 413 because the body exceeded the route's max_body.",
                |r| r.body_too_large.load(Relaxed),
            ),
        ];
        for (name, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for r in &all {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\"}} {}",
                    escape_label(&r.id),
                    value(r)
                );
            }
        }
    }
}

// === request checks ===

/// A route's request policy, compiled with the table.
pub(crate) struct RoutePolicy {
    pub(crate) headers: Option<Arc<CompiledHeaders>>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) max_body: Option<u64>,
    pub(crate) state: Arc<RouteState>,
}

/// What the checks decided.
pub(crate) enum Check {
    /// Go on to a backend set.
    Pass,
    /// Answer with the proxy's own page.
    Refuse {
        status: StatusCode,
        detail: String,
        retry_after: Option<u64>,
    },
    /// The CSP report endpoint: `csp_report::receive` answers.
    CspReport,
}

impl RoutePolicy {
    /// Runs before a backend set is chosen.
    pub(crate) fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        client_ip: IpAddr,
        route_id: &str,
    ) -> Check {
        if let Some(rate) = &self.rate_limit
            && let Err(wait) = self.state.limiter.check(client_ip, rate, Instant::now())
        {
            self.state.rate_limited.fetch_add(1, Relaxed);
            return Check::Refuse {
                status: StatusCode::TOO_MANY_REQUESTS,
                detail: format!(
                    "Too many requests from {client_ip} on route `{route_id}` (limit: {} per \
                     second, bursts of {}). Retry in {wait} s.",
                    rate.requests_per_second, rate.burst
                ),
                retry_after: Some(wait),
            };
        }
        // After the rate limit: a client cannot flood the reports either.
        if path == CSP_REPORT_PATH {
            return Check::CspReport;
        }
        if let Some(max) = self.max_body
            && let Some(len) = declared_length(headers)
            && len > max
        {
            self.state.body_too_large.fetch_add(1, Relaxed);
            return Check::Refuse {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                detail: format!(
                    "The {method} request body ({len} bytes) is larger than route \
                     `{route_id}` accepts ({max} bytes)."
                ),
                retry_after: None,
            };
        }
        Check::Pass
    }
}

/// The client a rate limit counts: the peer, or, behind a trusted proxy
/// (`trust_forwarded`), the last `X-Forwarded-For` address (the one that
/// proxy added) when it is a valid IP.
pub(crate) fn client_ip(headers: &HeaderMap, peer: IpAddr, trust_forwarded: bool) -> IpAddr {
    if !trust_forwarded {
        return peer;
    }
    headers
        .get_all(header::HeaderName::from_static("x-forwarded-for"))
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|ip| ip.trim().parse().ok())
        .unwrap_or(peer)
}

/// The request's `Content-Length`, when it is one valid number.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_headers_win_empty_disables_hsts_only_on_https() {
        let h = SecurityHeaders {
            referrer_policy: String::new(),
            ..SecurityHeaders::default()
        };
        let c = CompiledHeaders::compile(&h);
        let mut resp = HeaderMap::new();
        resp.insert(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("SAMEORIGIN"),
        );
        c.apply(&mut resp, false);
        assert_eq!(resp[header::X_FRAME_OPTIONS], "SAMEORIGIN");
        assert_eq!(resp[header::CONTENT_SECURITY_POLICY], DEFAULT_CSP);
        assert!(!resp.contains_key(header::REFERRER_POLICY));
        assert!(!resp.contains_key(header::STRICT_TRANSPORT_SECURITY));
        c.apply(&mut resp, true);
        assert_eq!(resp[header::STRICT_TRANSPORT_SECURITY], DEFAULT_HSTS);
    }

    #[test]
    fn report_only_sends_the_csp_under_its_own_name() {
        let h = SecurityHeaders {
            csp_mode: CspMode::ReportOnly,
            ..SecurityHeaders::default()
        };
        let mut resp = HeaderMap::new();
        CompiledHeaders::compile(&h).apply(&mut resp, false);
        assert_eq!(resp["content-security-policy-report-only"], DEFAULT_CSP);
        assert!(!resp.contains_key(header::CONTENT_SECURITY_POLICY));
        // Old persisted tables have no mode: enforce; and enforce is not
        // written out, so such tables stay as they were.
        let old: SecurityHeaders =
            serde_json::from_str(r#"{"csp": "default-src 'self'"}"#).unwrap();
        assert_eq!(old.csp_mode, CspMode::Enforce);
        let json = serde_json::to_value(SecurityHeaders::default()).unwrap();
        assert!(json.get("csp_mode").is_none(), "{json}");
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["csp_mode"], "report-only");
    }

    #[test]
    fn client_ip_behind_a_trusted_proxy() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(client_ip(&h, peer, true), peer);
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 2.2.2.2"),
        );
        assert_eq!(client_ip(&h, peer, false), peer);
        assert_eq!(
            client_ip(&h, peer, true),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(client_ip(&h, peer, true), peer);
    }

    #[test]
    fn invalid_values_are_named() {
        let h = SecurityHeaders {
            csp: "default-src 'self'\r\nX-Evil: 1".into(),
            ..SecurityHeaders::default()
        };
        let mut problems = Vec::new();
        h.validate("route `a`", &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("route `a`: headers.csp"),
            "{problems:?}"
        );
    }
}
