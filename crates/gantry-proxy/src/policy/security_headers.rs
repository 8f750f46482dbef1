//! The security headers of a route: the policy the table states
//! ([`SecurityHeaders`], strict by default) and its compiled form, added to
//! every answer of the route that lacks them (the app's own header wins;
//! `""` sends none; HSTS on HTTPS requests only).

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

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
    /// The CSP (enforced or report-only), and the form sent over plain
    /// HTTP when it differs (see [`without_report_to`]).
    csp: Option<(HeaderName, HeaderValue, Option<HeaderValue>)>,
    hsts: Option<HeaderValue>,
}

/// A CSP's `report-to` directives taken out, when it also has a
/// `report-uri`. Browsers that know `report-to` ignore `report-uri`, but
/// deliver `report-to` reports (the Reporting API) only from secure
/// origins: over plain HTTP a page with both reports nothing at all (seen
/// with Chromium 156 on Datasette's pages). Without `report-to` they send
/// `report-uri` reports, over HTTP too.
fn without_report_to(csp: &str) -> Option<String> {
    let directive = |d: &str| {
        d.split_ascii_whitespace()
            .next()
            .map(str::to_ascii_lowercase)
    };
    let parts: Vec<&str> = csp.split(';').collect();
    let has = |name: &str| parts.iter().any(|d| directive(d).as_deref() == Some(name));
    if !has("report-uri") || !has("report-to") {
        return None;
    }
    Some(
        parts
            .into_iter()
            .filter(|d| directive(d).as_deref() != Some("report-to"))
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    )
}

impl CompiledHeaders {
    pub(crate) fn compile(h: &SecurityHeaders) -> CompiledHeaders {
        let mut always = Vec::new();
        let mut csp = None;
        let mut hsts = None;
        for (field, name, value) in h.fields() {
            // Validated with the table; a bad value is skipped, never sent.
            let Ok(v) = HeaderValue::from_str(value) else {
                continue;
            };
            if value.is_empty() {
                continue;
            }
            if name == header::STRICT_TRANSPORT_SECURITY {
                hsts = Some(v);
            } else if field == "csp" {
                let plain = without_report_to(value).and_then(|p| HeaderValue::from_str(&p).ok());
                csp = Some((name, v, plain));
            } else {
                always.push((name, v));
            }
        }
        CompiledHeaders { always, csp, hsts }
    }

    /// Adds each header the response lacks; HSTS only when `https`.
    pub(crate) fn apply(&self, headers: &mut HeaderMap, https: bool) {
        if let Some((name, value, plain)) = &self.csp
            && let hyper::header::Entry::Vacant(slot) = headers.entry(name)
        {
            let v = match plain {
                Some(p) if !https => p,
                _ => value,
            };
            slot.insert(v.clone());
        }
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
        assert_eq!(
            resp[header::CONTENT_SECURITY_POLICY],
            DEFAULT_CSP.replace("; report-to gantry-csp", "")
        );
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
        CompiledHeaders::compile(&h).apply(&mut resp, true);
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
    fn over_plain_http_a_csp_reports_through_report_uri_alone() {
        let c = CompiledHeaders::compile(&SecurityHeaders::default());
        let mut https = HeaderMap::new();
        c.apply(&mut https, true);
        assert_eq!(https[header::CONTENT_SECURITY_POLICY], DEFAULT_CSP);
        let mut plain = HeaderMap::new();
        c.apply(&mut plain, false);
        let sent = plain[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(sent.contains("report-uri /_gantry/csp-report"), "{sent}");
        assert!(!sent.contains("report-to"), "{sent}");
        assert!(
            sent.starts_with("default-src 'self'; object-src 'none'"),
            "{sent}"
        );
        // Only when both are there; directive names are case-insensitive.
        assert_eq!(without_report_to("default-src 'self'; report-to g"), None);
        assert_eq!(without_report_to("default-src 'self'; report-uri /r"), None);
        assert_eq!(
            without_report_to("default-src 'self';REPORT-TO g ; Report-Uri /r;").as_deref(),
            Some("default-src 'self'; Report-Uri /r")
        );
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
