//! `POST /_gantry/csp-report` on every route: the proxy receives the
//! browsers' Content-Security-Policy violation reports itself.
//!
//! Accepted bodies (at most [`MAX_REPORT_BYTES`]; larger → 413):
//! - `application/csp-report` (and `application/json`): the legacy
//!   `report-uri` form, `{"csp-report": {...}}`;
//! - `application/reports+json`: the Reporting API form (`report-to`), a
//!   non-empty array of `{"type": ..., "body": {...}, ...}`.
//!
//! Anything else is refused (400 malformed, 415 other media type, 405
//! other method) and not stored. Each report is counted
//! (`gantry_proxy_csp_reports_total{route}`), and per route, in memory and
//! bounded, the proxy keeps the last [`KEEP_REPORTS`] reports and a count
//! per kind of violation (directive, blocked URI, page; at most
//! [`MAX_VIOLATIONS`] kinds) for `GET /csp-reports?route=R` on the admin
//! socket ([`CspReports`]). The answer is 204.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use http_body_util::{BodyExt, Limited};
use hyper::header::{self, HeaderMap};
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::observe::access_log::format_time;

/// Largest report body accepted.
pub(crate) const MAX_REPORT_BYTES: usize = 64 << 10;
/// Reports kept per route (the most recent).
pub(crate) const KEEP_REPORTS: usize = 100;
/// A report kept whole is at most this large as JSON; a larger one is kept
/// as its summary fields only.
const MAX_KEPT_REPORT: usize = 8 << 10;
/// Distinct violations (directive, blocked URI, page) counted per route;
/// reports of further kinds count in `other_violations` only.
pub(crate) const MAX_VIOLATIONS: usize = 256;
/// Longest directive, URI or sample kept, in characters.
const MAX_FIELD: usize = 512;

/// One report as received (`GET /csp-reports`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CspReport {
    pub received_at: String,
    pub client_ip: IpAddr,
    /// `csp-report` (legacy `report-uri`) or `reports+json` (Reporting
    /// API `report-to`).
    pub format: String,
    /// The report as the browser sent it (one element of an array), or
    /// its summary fields with `"truncated": true` when it was larger
    /// than 8 KiB.
    pub report: serde_json::Value,
}

/// One kind of violation: the reports with the same directive, blocked
/// URI and page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CspViolation {
    /// The directive that blocked (or would block) the resource, e.g.
    /// `script-src-elem`.
    pub directive: String,
    /// What was blocked: a URL (without its query), or `inline`, `eval`,
    /// `trusted-types-sink`, ... as browsers name them.
    pub blocked_uri: String,
    /// The page (document URL without its query) the violation happened on.
    pub page: String,
    /// Reports of this kind since the proxy started.
    pub count: u64,
    /// `enforce` (blocked) or `report` (report-only: not blocked), as the
    /// last report said.
    pub disposition: String,
    /// The first characters of the blocked inline code, when the browser
    /// sent them (the CSP needs `'report-sample'` for that).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
    pub first_seen: String,
    pub last_seen: String,
}

/// `GET /csp-reports?route=R`: what a route's pages reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CspReports {
    pub route: String,
    /// Reports received since the proxy started.
    pub total: u64,
    /// Distinct violations, most reported first (at most 256 kinds).
    pub violations: Vec<CspViolation>,
    /// Reports of kinds past the first 256 (counted, not listed).
    #[serde(default)]
    pub other_violations: u64,
    /// The last 100 reports, oldest first.
    pub reports: Vec<CspReport>,
}

#[derive(Default)]
struct Kept {
    recent: VecDeque<CspReport>,
    violations: HashMap<(String, String, String), CspViolation>,
    other: u64,
}

/// A route's recent reports, their kinds and their count. Bounded: the
/// last [`KEEP_REPORTS`] reports (each at most 8 KiB), [`MAX_VIOLATIONS`]
/// kinds.
#[derive(Default)]
pub(crate) struct Reports {
    kept: Mutex<Kept>,
    total: AtomicU64,
}

impl Reports {
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// Everything kept, for the admin API.
    pub(crate) fn snapshot(&self, route: &str) -> CspReports {
        let kept = gantry_common::lock(&self.kept);
        let mut violations: Vec<CspViolation> = kept.violations.values().cloned().collect();
        let reports = kept.recent.iter().cloned().collect();
        let other_violations = kept.other;
        drop(kept);
        violations.sort_by(|a, b| {
            b.count.cmp(&a.count).then_with(|| {
                (&a.directive, &a.blocked_uri, &a.page).cmp(&(
                    &b.directive,
                    &b.blocked_uri,
                    &b.page,
                ))
            })
        });
        CspReports {
            route: route.to_string(),
            total: self.total(),
            violations,
            other_violations,
            reports,
        }
    }

    fn store(&self, reports: Vec<CspReport>) {
        let mut kept = gantry_common::lock(&self.kept);
        for mut r in reports {
            let v = Summary::of(&r.report, r.format == "csp-report");
            let key = (v.directive.clone(), v.blocked_uri.clone(), v.page.clone());
            let room = kept.violations.len() < MAX_VIOLATIONS;
            match kept.violations.get_mut(&key) {
                Some(seen) => {
                    seen.count += 1;
                    seen.last_seen.clone_from(&r.received_at);
                    seen.disposition = v.disposition.clone();
                    if v.sample.is_some() {
                        seen.sample.clone_from(&v.sample);
                    }
                }
                None if room => {
                    kept.violations.insert(
                        key,
                        CspViolation {
                            directive: v.directive.clone(),
                            blocked_uri: v.blocked_uri.clone(),
                            page: v.page.clone(),
                            count: 1,
                            disposition: v.disposition.clone(),
                            sample: v.sample.clone(),
                            first_seen: r.received_at.clone(),
                            last_seen: r.received_at.clone(),
                        },
                    );
                }
                None => kept.other += 1,
            }
            if serde_json::to_vec(&r.report).map_or(usize::MAX, |b| b.len()) > MAX_KEPT_REPORT {
                r.report = serde_json::json!({
                    "truncated": true,
                    "directive": v.directive,
                    "blocked_uri": v.blocked_uri,
                    "page": v.page,
                    "disposition": v.disposition,
                });
            }
            if kept.recent.len() >= KEEP_REPORTS {
                kept.recent.pop_front();
            }
            kept.recent.push_back(r);
            self.total.fetch_add(1, Relaxed);
        }
    }
}

/// The fields of a report that say what was violated, from either form.
struct Summary {
    directive: String,
    blocked_uri: String,
    page: String,
    disposition: String,
    sample: Option<String>,
}

impl Summary {
    fn of(report: &serde_json::Value, legacy: bool) -> Summary {
        let (body, names) = if legacy {
            (
                &report["csp-report"],
                [
                    "effective-directive",
                    "violated-directive",
                    "blocked-uri",
                    "document-uri",
                    "script-sample",
                ],
            )
        } else {
            (
                &report["body"],
                [
                    "effectiveDirective",
                    "violatedDirective",
                    "blockedURL",
                    "documentURL",
                    "sample",
                ],
            )
        };
        let field = |name: &str| {
            body.get(name)
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty())
        };
        // An old browser's `violated-directive` is the whole directive
        // (`script-src 'self'`): its name is the first word.
        let directive = field(names[0])
            .or_else(|| field(names[1]))
            .and_then(|d| d.split_whitespace().next())
            .unwrap_or("unknown");
        let page = field(names[3])
            .or_else(|| report.get("url").and_then(|u| u.as_str()))
            .unwrap_or("");
        Summary {
            directive: clip(directive),
            blocked_uri: clip(without_query(field(names[2]).unwrap_or("unknown"))),
            page: clip(without_query(page)),
            disposition: clip(field("disposition").unwrap_or("enforce")),
            sample: field(names[4]).map(clip),
        }
    }
}

/// A URL without its query and fragment (they may carry tokens, and would
/// make every visit a kind of its own).
fn without_query(url: &str) -> &str {
    url.find(['?', '#']).map_or(url, |i| &url[..i])
}

fn clip(s: &str) -> String {
    s.chars().take(MAX_FIELD).collect()
}

/// Why a report was not taken: status and a sentence for the page.
pub(crate) type Refused = (StatusCode, String);

/// Reads, checks and stores the reports of one request; the number stored.
pub(crate) async fn receive(
    reports: &Reports,
    method: &Method,
    headers: &HeaderMap,
    body: crate::upstream::body::RequestBody,
    client_ip: IpAddr,
) -> Result<usize, Refused> {
    if method != Method::POST {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on the CSP report endpoint; browsers POST reports"),
        ));
    }
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let legacy = match media.as_str() {
        "application/csp-report" | "application/json" => true,
        "application/reports+json" => false,
        other => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Type `{other}` is not a CSP report; send \
                     application/csp-report or application/reports+json"
                ),
            ));
        }
    };
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("A CSP report may be at most {MAX_REPORT_BYTES} bytes."),
        )
    };
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_REPORT_BYTES as u64)
    {
        return Err(too_large());
    }
    let bytes = match Limited::new(body, MAX_REPORT_BYTES).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("Cannot read the report body: {e}"),
            ));
        }
    };
    let parsed = parse(&bytes, legacy).map_err(|why| {
        (
            StatusCode::BAD_REQUEST,
            format!("Malformed CSP report: {why}"),
        )
    })?;
    let received_at = format_time(SystemTime::now());
    let format = if legacy { "csp-report" } else { "reports+json" };
    let n = parsed.len();
    reports.store(
        parsed
            .into_iter()
            .map(|report| CspReport {
                received_at: received_at.clone(),
                client_ip,
                format: format.to_string(),
                report,
            })
            .collect(),
    );
    Ok(n)
}

/// The reports of a body: one for the legacy form, one per array element
/// for the Reporting API form.
fn parse(bytes: &[u8], legacy: bool) -> Result<Vec<serde_json::Value>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    if legacy {
        if value.get("csp-report").is_some_and(|r| r.is_object()) {
            return Ok(vec![value]);
        }
        return Err("expected an object with a `csp-report` object".to_string());
    }
    let serde_json::Value::Array(items) = value else {
        return Err("expected a JSON array of reports".to_string());
    };
    if items.is_empty() {
        return Err("the array of reports is empty".to_string());
    }
    for (i, item) in items.iter().enumerate() {
        let typed = item.get("type").is_some_and(|t| t.is_string());
        let body = item.get("body").is_some_and(|b| b.is_object());
        if !(typed && body) {
            return Err(format!(
                "report {i} lacks a string `type` and an object `body`"
            ));
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_refuses_others() {
        let legacy = br#"{"csp-report":{"document-uri":"https://a.test/","violated-directive":"script-src"}}"#;
        assert_eq!(parse(legacy, true).unwrap().len(), 1);
        let api = br#"[{"type":"csp-violation","age":1,"url":"https://a.test/","body":{"blockedURL":"inline"}},
                       {"type":"csp-violation","body":{}}]"#;
        assert_eq!(parse(api, false).unwrap().len(), 2);
        assert!(parse(b"{}", true).is_err());
        assert!(parse(b"[]", false).is_err());
        assert!(parse(br#"[{"type":"x"}]"#, false).is_err());
        assert!(parse(b"nope", true).unwrap_err().contains("not JSON"));
    }

    fn legacy(page: &str, blocked: &str) -> CspReport {
        CspReport {
            received_at: "t".to_string(),
            client_ip: "127.0.0.1".parse().unwrap(),
            format: "csp-report".to_string(),
            report: serde_json::json!({"csp-report": {
                "document-uri": page, "blocked-uri": blocked,
                "violated-directive": "script-src-elem 'self'",
                "disposition": "report", "script-sample": "alert(1)"
            }}),
        }
    }

    #[test]
    fn ring_keeps_the_most_recent_and_kinds_are_bounded() {
        let r = Reports::default();
        for i in 0..(KEEP_REPORTS + 5) {
            r.store(vec![legacy(
                &format!("https://a.test/{i}?token=secret"),
                "inline",
            )]);
        }
        let snap = r.snapshot("a/production");
        assert_eq!(snap.reports.len(), KEEP_REPORTS);
        assert_eq!(
            snap.reports[0].report["csp-report"]["document-uri"],
            "https://a.test/5?token=secret"
        );
        assert_eq!(snap.total, (KEEP_REPORTS + 5) as u64);
        assert_eq!(snap.violations.len(), KEEP_REPORTS + 5);
        let v = &snap.violations[0];
        assert_eq!(v.directive, "script-src-elem");
        assert_eq!(v.blocked_uri, "inline");
        assert!(!v.page.contains('?'), "{v:?}");
        assert_eq!(v.disposition, "report");
        assert_eq!(v.sample.as_deref(), Some("alert(1)"));

        // Past MAX_VIOLATIONS kinds: counted, not listed.
        for i in 0..MAX_VIOLATIONS {
            r.store(vec![legacy(&format!("https://b.test/{i}"), "inline")]);
        }
        let snap = r.snapshot("a/production");
        assert_eq!(snap.violations.len(), MAX_VIOLATIONS);
        assert_eq!(snap.other_violations, (KEEP_REPORTS + 5) as u64);
        // A kind seen again counts on, most reported first.
        r.store(vec![legacy("https://b.test/7", "inline")]);
        let snap = r.snapshot("a/production");
        assert_eq!(snap.violations[0].page, "https://b.test/7");
        assert_eq!(snap.violations[0].count, 2);
    }

    #[test]
    fn both_forms_summarize_alike_and_large_reports_are_cut() {
        let api = serde_json::json!({"type": "csp-violation", "url": "https://a.test/p?q",
            "body": {"effectiveDirective": "script-src-elem", "blockedURL": "inline",
                     "documentURL": "https://a.test/p?q", "disposition": "enforce",
                     "originalPolicy": "x".repeat(10_000)}});
        let r = Reports::default();
        r.store(vec![CspReport {
            received_at: "t".to_string(),
            client_ip: "127.0.0.1".parse().unwrap(),
            format: "reports+json".to_string(),
            report: api,
        }]);
        let snap = r.snapshot("a/production");
        let v = &snap.violations[0];
        assert_eq!(
            (
                v.directive.as_str(),
                v.blocked_uri.as_str(),
                v.page.as_str()
            ),
            ("script-src-elem", "inline", "https://a.test/p")
        );
        assert_eq!(snap.reports[0].report["truncated"], true);
    }
}
