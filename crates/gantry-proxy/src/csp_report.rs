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
//! (`gantry_proxy_csp_reports_total{route}`) and the last [`KEEP_REPORTS`]
//! per route are kept in memory for `GET /csp-reports?route=R` on the
//! admin socket. The answer is 204.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use http_body_util::{BodyExt, Limited};
use hyper::header::{self, HeaderMap};
use hyper::{Method, StatusCode};
use serde::Serialize;

use crate::access_log::format_time;

/// Largest report body accepted.
pub(crate) const MAX_REPORT_BYTES: usize = 64 << 10;
/// Reports kept per route (the most recent).
pub(crate) const KEEP_REPORTS: usize = 100;

/// One stored report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StoredReport {
    pub(crate) received_at: String,
    pub(crate) client_ip: IpAddr,
    /// `csp-report` (legacy) or `reports+json` (Reporting API).
    pub(crate) format: &'static str,
    /// The report as the browser sent it (one element of an array).
    pub(crate) report: serde_json::Value,
}

/// A route's recent reports and their count.
#[derive(Default)]
pub(crate) struct Reports {
    recent: Mutex<VecDeque<StoredReport>>,
    total: AtomicU64,
}

impl Reports {
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// Oldest first.
    pub(crate) fn recent(&self) -> Vec<StoredReport> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().cloned().collect()
    }

    fn store(&self, reports: Vec<StoredReport>) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for r in reports {
            if recent.len() >= KEEP_REPORTS {
                recent.pop_front();
            }
            recent.push_back(r);
            self.total.fetch_add(1, Relaxed);
        }
    }
}

/// Why a report was not taken: status and a sentence for the page.
pub(crate) type Refused = (StatusCode, String);

/// Reads, checks and stores the reports of one request; the number stored.
pub(crate) async fn receive(
    reports: &Reports,
    method: &Method,
    headers: &HeaderMap,
    body: crate::body::RequestBody,
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
            .map(|report| StoredReport {
                received_at: received_at.clone(),
                client_ip,
                format,
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

    #[test]
    fn ring_keeps_the_most_recent() {
        let r = Reports::default();
        for i in 0..(KEEP_REPORTS + 5) {
            r.store(vec![StoredReport {
                received_at: String::new(),
                client_ip: "127.0.0.1".parse().unwrap(),
                format: "csp-report",
                report: serde_json::json!(i),
            }]);
        }
        let recent = r.recent();
        assert_eq!(recent.len(), KEEP_REPORTS);
        assert_eq!(recent[0].report, serde_json::json!(5));
        assert_eq!(r.total(), (KEEP_REPORTS + 5) as u64);
    }
}
