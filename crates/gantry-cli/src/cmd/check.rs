//! `gantry check headers URL`: fetch a live URL and grade its security
//! headers against the app spec's policy (or the strict defaults).
//!
//! `http://` and `https://` URLs (rustls, the system's root certificates,
//! or `--ca-file` for a private CA). HSTS is graded on HTTPS only, so over
//! HTTP it is reported as skipped.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::ctx::{Ctx, block_on};
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Fetch a URL and report missing or weak security headers.
    ///
    /// Graded against the `[proxy.headers]` policy of a gantry.toml when
    /// `--policy-from` is given, else against Gantry's defaults. Exit 0 when
    /// every check passes, 1 when one fails, 3 when the URL cannot be fetched.
    ///
    /// Example: gantry check headers http://app.example.com/ --policy-from gantry.toml --env production
    Headers(HeadersArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct HeadersArgs {
    /// The page to fetch (`http://` or `https://`).
    url: String,
    /// Trust this PEM CA certificate (or self-signed certificate) for
    /// https, instead of the system's roots.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Grade against the security headers of this gantry.toml.
    #[arg(long, value_name = "FILE")]
    policy_from: Option<PathBuf>,
    /// The environment whose policy applies (with --policy-from).
    #[arg(long, value_name = "ENV", requires = "policy_from")]
    env: Option<String>,
}

pub(crate) fn run(ctx: &Ctx, c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Headers(a) => headers(ctx, a),
    }
}

/// One graded header.
#[derive(Debug, Serialize)]
struct Finding {
    header: &'static str,
    /// `pass`, `fail` or `skipped`.
    result: &'static str,
    message: String,
}

#[derive(Debug, Serialize)]
struct Report {
    url: String,
    status: u16,
    passed: bool,
    checks: Vec<Finding>,
}

fn headers(ctx: &Ctx, a: HeadersArgs) -> anyhow::Result<ExitCode> {
    let policy = match &a.policy_from {
        Some(path) => {
            let spec = gantry_spec::load(path).map_err(|d| anyhow::anyhow!("{d}"))?;
            let env = a.env.as_deref().unwrap_or("production");
            let app = spec.resolve(env).map_err(|d| anyhow::anyhow!("{d}"))?;
            app.proxy.headers.clone()
        }
        None => gantry_spec::model::SecurityHeaders::default(),
    };
    let uri: hyper::Uri = a
        .url
        .parse()
        .with_context(|| format!("`{}` is not a URL (e.g. http://app.example.com/)", a.url))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => bail!("`{}` must start with http:// or https://", a.url),
    };
    let tls = tls_config(a.ca_file.as_deref())?;
    let fetched = block_on(fetch(uri, tls));
    let (status, got) = match fetched {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot fetch {}: {}", a.url, output::error_chain(&e));
            return Ok(ExitCode::from(3));
        }
    };
    let checks = grade(&got, https, &policy);
    let passed = checks.iter().all(|c| c.result != "fail");
    let report = Report {
        url: a.url,
        status,
        passed,
        checks,
    };
    if ctx.json {
        output::json(&report)?;
    } else {
        println!("{} (HTTP {})", report.url, report.status);
        for c in &report.checks {
            let mark = match c.result {
                "pass" => "PASS",
                "fail" => "FAIL",
                _ => "SKIP",
            };
            println!("  {mark}  {:<27} {}", c.header, c.message);
        }
        let failed = report.checks.iter().filter(|c| c.result == "fail").count();
        if passed {
            println!("all security headers pass");
        } else {
            println!("{failed} check(s) failed");
        }
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// TLS client settings trusting only `ca_file`'s certificates; none: the
/// system's roots (loaded by the connector).
fn tls_config(ca_file: Option<&std::path::Path>) -> anyhow::Result<Option<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let Some(path) = ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the CA file `{}`", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.with_context(|| format!("`{}` is not a PEM certificate file", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("`{}`: unusable certificate", path.display()))?;
    }
    if roots.is_empty() {
        bail!("`{}` holds no certificate", path.display());
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(Some(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS set-up")?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

async fn fetch(
    uri: hyper::Uri,
    tls: Option<rustls::ClientConfig>,
) -> anyhow::Result<(u16, HeaderMap)> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match tls {
        Some(config) => builder.with_tls_config(config),
        None => builder
            .with_native_roots()
            .context("cannot load the system's root certificates; pass --ca-file")?,
    };
    let connector = builder.https_or_http().enable_http1().build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let mut req = hyper::Request::new(Empty::new());
    *req.uri_mut() = uri;
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("gantry-check-headers"),
    );
    let resp = tokio::time::timeout(Duration::from_secs(15), client.request(req))
        .await
        .context("no answer within 15 s")??;
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    // Read (and drop) the body so the answer is complete.
    let _ = tokio::time::timeout(Duration::from_secs(15), body.collect()).await;
    Ok((status, parts.headers))
}

/// The directives of a CSP: (lower-cased name, values).
fn directives(csp: &str) -> Vec<(String, Vec<String>)> {
    csp.split(';')
        .filter_map(|d| {
            let mut words = d.split_whitespace();
            let name = words.next()?.to_ascii_lowercase();
            Some((name, words.map(str::to_string).collect()))
        })
        .collect()
}

fn grade(
    got: &HeaderMap,
    https: bool,
    policy: &gantry_spec::model::SecurityHeaders,
) -> Vec<Finding> {
    let value = |name: &str| {
        got.get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
    };
    let mut out = Vec::new();
    let push = |out: &mut Vec<Finding>, header: &'static str, problems: Vec<String>, ok: &str| {
        out.push(if problems.is_empty() {
            Finding {
                header,
                result: "pass",
                message: ok.to_string(),
            }
        } else {
            Finding {
                header,
                result: "fail",
                message: problems.join("; "),
            }
        });
    };

    // Content-Security-Policy.
    let csp = value("content-security-policy");
    let csp_dirs = csp.as_deref().map(directives).unwrap_or_default();
    let dir = |name: &str| csp_dirs.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    if !policy.csp.is_empty() {
        let mut problems = Vec::new();
        if csp.is_none() {
            problems.push("missing".to_string());
        } else {
            let default_none = dir("default-src").is_some_and(|v| v == &["'none'"]);
            if dir("default-src").is_none() {
                problems.push("no `default-src`".to_string());
            }
            if !default_none && dir("object-src").is_none_or(|v| v != &["'none'"]) {
                problems.push("`object-src` is not 'none'".to_string());
            }
            let wants_tt = directives(&policy.csp)
                .iter()
                .any(|(n, _)| n == "require-trusted-types-for");
            if wants_tt && dir("require-trusted-types-for").is_none() {
                problems.push("no `require-trusted-types-for 'script'`".to_string());
            }
            if let Some(script) = dir("script-src").or_else(|| dir("default-src")) {
                for weak in ["'unsafe-inline'", "'unsafe-eval'"] {
                    if script.iter().any(|s| s.eq_ignore_ascii_case(weak)) {
                        problems.push(format!("script-src allows {weak}"));
                    }
                }
            }
        }
        push(&mut out, "Content-Security-Policy", problems, "strict");
    }

    // Strict-Transport-Security, on HTTPS only.
    if !policy.hsts.is_empty() {
        if !https {
            out.push(Finding {
                header: "Strict-Transport-Security",
                result: "skipped",
                message: "plain HTTP: browsers ignore HSTS here".to_string(),
            });
        } else {
            let mut problems = Vec::new();
            match value("strict-transport-security") {
                None => problems.push("missing".to_string()),
                Some(v) => {
                    let max_age = v.split(';').find_map(|p| {
                        let (k, val) = p.trim().split_once('=')?;
                        k.trim()
                            .eq_ignore_ascii_case("max-age")
                            .then(|| val.trim().trim_matches('"').parse::<u64>().ok())?
                    });
                    match max_age {
                        Some(a) if a >= 31_536_000 => {}
                        Some(a) => problems.push(format!("max-age={a} is under one year")),
                        None => problems.push("no valid max-age".to_string()),
                    }
                }
            }
            push(
                &mut out,
                "Strict-Transport-Security",
                problems,
                "at least one year",
            );
        }
    }

    // X-Frame-Options, or CSP frame-ancestors.
    if !policy.frame_options.is_empty() {
        let mut problems = Vec::new();
        match value("x-frame-options") {
            None if dir("frame-ancestors").is_none() => {
                problems.push("missing, and the CSP has no `frame-ancestors`".to_string())
            }
            None => {}
            Some(v) => {
                let v = v.trim().to_ascii_uppercase();
                if v != "DENY" && v != "SAMEORIGIN" {
                    problems.push(format!("`{v}` is neither DENY nor SAMEORIGIN"));
                }
            }
        }
        push(&mut out, "X-Frame-Options", problems, "framing restricted");
    }

    if !policy.content_type_options.is_empty() {
        let ok = value("x-content-type-options")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("nosniff"));
        let problems = if ok {
            vec![]
        } else {
            vec!["missing or not `nosniff`".to_string()]
        };
        push(&mut out, "X-Content-Type-Options", problems, "nosniff");
    }

    if !policy.referrer_policy.is_empty() {
        let problems = match value("referrer-policy") {
            None => vec!["missing".to_string()],
            Some(v) if v.to_ascii_lowercase().contains("unsafe-url") => {
                vec!["`unsafe-url` leaks full URLs to other sites".to_string()]
            }
            Some(_) => vec![],
        };
        push(&mut out, "Referrer-Policy", problems, "set");
    }

    if !policy.permissions_policy.is_empty() {
        let problems = if value("permissions-policy").is_some() {
            vec![]
        } else {
            vec!["missing".to_string()]
        };
        push(&mut out, "Permissions-Policy", problems, "set");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    fn failed(f: &[Finding]) -> Vec<&str> {
        f.iter()
            .filter(|c| c.result == "fail")
            .map(|c| c.header)
            .collect()
    }

    #[test]
    fn spec_defaults_are_the_proxy_defaults() {
        let spec = gantry_spec::model::SecurityHeaders::default();
        assert_eq!(spec.csp, gantry_proxy::DEFAULT_CSP);
        assert_eq!(spec.hsts, gantry_proxy::DEFAULT_HSTS);
        assert_eq!(
            spec.reporting_endpoints,
            gantry_proxy::DEFAULT_REPORTING_ENDPOINTS
        );
        let proxy = gantry_proxy::SecurityHeaders::default();
        assert_eq!(spec.frame_options, proxy.frame_options);
        assert_eq!(spec.referrer_policy, proxy.referrer_policy);
        assert_eq!(spec.permissions_policy, proxy.permissions_policy);
        assert_eq!(spec.content_type_options, proxy.content_type_options);
    }

    #[test]
    fn weak_headers_fail_and_strict_ones_pass() {
        let policy = gantry_spec::model::SecurityHeaders::default();
        let weak = map(&[
            (
                "content-security-policy",
                "default-src 'self'; script-src 'self' 'unsafe-inline'",
            ),
            ("strict-transport-security", "max-age=600"),
            ("referrer-policy", "unsafe-url"),
        ]);
        let f = grade(&weak, true, &policy);
        assert_eq!(
            failed(&f),
            [
                "Content-Security-Policy",
                "Strict-Transport-Security",
                "X-Frame-Options",
                "X-Content-Type-Options",
                "Referrer-Policy",
                "Permissions-Policy"
            ]
        );
        let csp = &f[0].message;
        assert!(
            csp.contains("object-src") && csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert!(csp.contains("require-trusted-types-for"), "{csp}");

        let strict = map(&[
            ("content-security-policy", gantry_proxy::DEFAULT_CSP),
            ("strict-transport-security", gantry_proxy::DEFAULT_HSTS),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("permissions-policy", "camera=()"),
        ]);
        // frame-ancestors in the CSP stands in for X-Frame-Options.
        assert!(failed(&grade(&strict, true, &policy)).is_empty());
    }
}
