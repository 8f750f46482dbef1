//! Request policy per route, between routing (phase 1) and forwarding:
//!
//! - `security_headers`: the security-header policy added to every
//!   response of the route that lacks the header (the app's own header
//!   wins; `""` sends none);
//! - the checks run once a route is chosen, before a backend set is
//!   (here, [`RoutePolicy::check`]): the proxy's own CSP report endpoint
//!   (`csp_report`), the per-client rate limit (`rate_limit`), and a
//!   declared body over the route's `max_body` (413 before the backend is
//!   contacted). A body that grows past `max_body` while streaming is cut
//!   in `upstream::body`.
//!
//! The state that outlives tables (reports, counters, rate-limit buckets)
//! sits in a [`PolicyRegistry`] per route id, like the set counters in
//! `observe::stats`.

pub(crate) mod csp_report;
pub(crate) mod rate_limit;
pub(crate) mod security_headers;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyper::header::{self, HeaderMap};
use hyper::{Method, StatusCode};

use crate::observe::stats::escape_label;
use crate::policy::csp_report::Reports;
use crate::policy::rate_limit::{Limiter, RateLimit};
pub(crate) use security_headers::CompiledHeaders;

/// The path the proxy answers itself on every route: CSP violation reports.
pub(crate) const CSP_REPORT_PATH: &str = "/_gantry/csp-report";

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
        let mut routes = gantry_common::lock(&self.routes);
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
        let routes = gantry_common::lock(&self.routes);
        routes.get(id).cloned()
    }

    fn all(&self) -> Vec<Arc<RouteState>> {
        let routes = gantry_common::lock(&self.routes);
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
    use hyper::header::HeaderValue;

    use super::*;

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
}
