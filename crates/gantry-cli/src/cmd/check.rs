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

use gantry_api::client::seg;
use gantry_spec::model::CspMode;

use crate::ctx::{Ctx, block_on, resolve_app};
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Fetch a URL and report missing or weak security headers, or (with
    /// --reports) list the CSP violations an environment's pages reported.
    ///
    /// Graded against the `[proxy.headers]` policy of a gantry.toml when
    /// `--policy-from` is given, else against Gantry's defaults. A CSP in
    /// `report-only` mode is a warning (it blocks nothing). Exit 0 when
    /// every check passes, 1 when one fails, 3 when the URL cannot be fetched.
    ///
    /// With --reports: the kinds of violation (directive, blocked URI,
    /// page, count) the proxy received on the environment's route, from
    /// the server. Exit 0 when there are none, 1 when there are some, 3
    /// when the server cannot be reached.
    ///
    /// Example: gantry check headers http://app.example.com/ --policy-from gantry.toml --env production
    ///
    /// Example: gantry check headers --reports --env staging
    Headers(HeadersArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct HeadersArgs {
    /// The page to fetch (`http://` or `https://`).
    #[arg(required_unless_present = "reports")]
    url: Option<String>,
    /// Trust this PEM CA certificate (or self-signed certificate) for
    /// https, instead of the system's roots.
    #[arg(long, value_name = "PEM", conflicts_with = "reports")]
    ca_file: Option<PathBuf>,
    /// Grade against the security headers of this gantry.toml.
    #[arg(long, value_name = "FILE", conflicts_with = "reports")]
    policy_from: Option<PathBuf>,
    /// The environment: whose policy applies (with --policy-from), or
    /// whose reports to list (with --reports).
    #[arg(long, value_name = "ENV")]
    env: Option<String>,
    /// List the CSP violation reports the environment's pages sent to the
    /// proxy, instead of fetching a URL (needs --env and a server).
    #[arg(long, requires = "env", conflicts_with = "url")]
    reports: bool,
    /// With --reports: the app (default: read from ./gantry.toml).
    #[arg(long, requires = "reports")]
    app: Option<String>,
    /// Also print the CSP hash (`'sha256-...'`) of each inline `<script>`
    /// and `<style>` of the page, to allow them in `script-src` /
    /// `style-src` instead of `'unsafe-inline'`.
    #[arg(long, conflicts_with = "reports")]
    inline_hashes: bool,
}

pub(crate) fn run(ctx: &Ctx, c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Headers(a) if a.reports => reports(ctx, a),
        Command::Headers(a) => headers(ctx, a),
    }
}

/// The CSP reports of an app environment, from the server.
fn fetch_reports(ctx: &Ctx, app: &str, env: &str) -> anyhow::Result<gantry_proxy::CspReports> {
    let client = ctx.client()?;
    let path = format!("/api/v1/apps/{}/envs/{}/csp-reports", seg(app), seg(env));
    Ok(block_on(client.get(&path))?)
}

/// `check headers --reports`: the kinds of violation, most reported first.
fn reports(ctx: &Ctx, a: HeadersArgs) -> anyhow::Result<ExitCode> {
    let env = a.env.unwrap_or_default();
    let app = resolve_app(a.app, std::path::Path::new("gantry.toml"))?;
    let r = fetch_reports(ctx, &app, &env)?;
    if ctx.json {
        output::json(&r)?;
    } else if r.violations.is_empty() && r.other_violations == 0 {
        println!(
            "{}: no CSP violation reported (since the proxy started)",
            r.route
        );
        println!(
            "  A page reports only once a browser has loaded it; open the app's pages, then ask \
             again."
        );
    } else {
        println!(
            "{}: {} CSP report(s), {} kind(s) of violation",
            r.route,
            r.total,
            r.violations.len()
        );
        let width = |f: fn(&gantry_proxy::CspViolation) -> &str, title: &str| {
            r.violations
                .iter()
                .map(|v| f(v).chars().count())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
                .min(60)
        };
        let (wd, wb, wp) = (
            width(|v| &v.directive, "DIRECTIVE"),
            width(|v| &v.blocked_uri, "BLOCKED"),
            width(|v| &v.page, "PAGE"),
        );
        println!(
            "  {:>6}  {:<wd$}  {:<wb$}  {:<wp$}  DISPOSITION",
            "COUNT", "DIRECTIVE", "BLOCKED", "PAGE"
        );
        for v in &r.violations {
            println!(
                "  {:>6}  {:<wd$}  {:<wb$}  {:<wp$}  {}",
                v.count, v.directive, v.blocked_uri, v.page, v.disposition
            );
            if let Some(sample) = &v.sample {
                // One line: a sample is page text (markup, newlines).
                let one: String = sample
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                println!("          sample: {}", one.trim());
            }
        }
        if r.other_violations > 0 {
            println!(
                "  ... and {} report(s) of further kinds (the proxy lists 256 kinds)",
                r.other_violations
            );
        }
        if r.violations.iter().any(|v| v.blocked_uri == "inline") {
            println!(
                "  inline: allow each inline <script> (or <style>) by its hash in `script-src` \
                 (`style-src`): `gantry check headers URL --inline-hashes` prints them for a \
                 page."
            );
        }
        if r.violations
            .iter()
            .any(|v| v.blocked_uri == "trusted-types-sink")
        {
            println!(
                "  trusted-types-sink: the page writes strings into DOM sinks (innerHTML, ...); \
                 give it a Trusted Types policy, or drop `require-trusted-types-for 'script'` \
                 from `csp`."
            );
        }
    }
    Ok(if r.violations.is_empty() && r.other_violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// For `gantry config check --env ENV`: warnings (not errors) about the
/// environment's CSP, and notes on what could not be checked.
///
/// The rule: an enforced CSP is unchecked until pages have been served
/// behind it and reported nothing. So it warns when the CSP is enforced
/// and the environment's route is not in the proxy (it has never been
/// deployed, or the proxy lost its table): its first deploy would enforce
/// a policy no page has been checked against; and when pages of the
/// environment have reported violations (which the enforced CSP blocks).
pub(crate) fn csp_warnings(
    ctx: &Ctx,
    spec: &gantry_spec::Spec,
    env: &str,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let resolved = spec.resolve(env).map_err(|d| anyhow::anyhow!("{d}"))?;
    let h = &resolved.proxy.headers;
    if h.csp.is_empty() || h.csp_mode == CspMode::ReportOnly {
        return Ok((Vec::new(), Vec::new()));
    }
    let try_first = format!(
        "  help: set `csp_mode = \"report-only\"` under [environments.{env}.proxy.headers], \
         deploy, open the app's pages, read `gantry check headers --reports --env {env}`, allow \
         what they need (see README, \"Content-Security-Policy: from report-only to \
         enforced\"), then enforce"
    );
    match fetch_reports(ctx, spec.app_name(), env) {
        Ok(r) if r.total == 0 => Ok((Vec::new(), Vec::new())),
        Ok(r) => {
            let top = r
                .violations
                .first()
                .map(|v| {
                    format!(
                        " (most often: `{}` against `{}` on {}, {} time(s))",
                        v.directive, v.blocked_uri, v.page, v.count
                    )
                })
                .unwrap_or_default();
            Ok((
                vec![format!(
                    "environment `{env}` enforces a Content-Security-Policy that its pages \
                     violated {} time(s){top}: enforced, it blocks those\n  help: see them with \
                     `gantry check headers --reports --env {env}`, and allow what the pages need",
                    r.total
                )],
                Vec::new(),
            ))
        }
        Err(e) => match e.downcast_ref::<gantry_api::ClientError>() {
            Some(gantry_api::ClientError::Api { status: 404, .. }) => Ok((
                vec![format!(
                    "environment `{env}` enforces a Content-Security-Policy no page has been \
                     checked against: it has never been deployed (the proxy has no route for \
                     it), and a CSP that blocks the app's inline scripts breaks its pages\n\
                     {try_first}"
                )],
                Vec::new(),
            )),
            Some(gantry_api::ClientError::Connect { .. } | gantry_api::ClientError::Api { .. }) => {
                Ok((
                    Vec::new(),
                    vec![format!(
                        "note: the CSP reports of `{env}` could not be read ({}), so whether its \
                         enforced CSP was checked against its pages was not checked",
                        first_line(&format!("{e:#}"))
                    )],
                ))
            }
            _ => Err(e),
        },
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// One graded header.
#[derive(Debug, Serialize)]
struct Finding {
    header: &'static str,
    /// `pass`, `fail`, `warn` (passes, but weaker than it should be) or
    /// `skipped`.
    result: &'static str,
    message: String,
}

#[derive(Debug, Serialize)]
struct Report {
    url: String,
    status: u16,
    passed: bool,
    checks: Vec<Finding>,
    /// With --inline-hashes.
    #[serde(skip_serializing_if = "Option::is_none")]
    inline_hashes: Option<Vec<InlineHash>>,
}

/// An inline `<script>` or `<style>` of a page and its CSP source
/// expression.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct InlineHash {
    /// `script` or `style`.
    element: &'static str,
    /// The directive that allows it: `script-src` or `style-src`.
    directive: &'static str,
    /// `'sha256-<base64>'`, as written in the CSP.
    hash: String,
    /// The first characters of its text.
    start: String,
}

fn headers(ctx: &Ctx, a: HeadersArgs) -> anyhow::Result<ExitCode> {
    if a.env.is_some() && a.policy_from.is_none() {
        bail!("--env names the environment whose policy applies; give --policy-from FILE too");
    }
    let url = a.url.unwrap_or_default();
    let policy = match &a.policy_from {
        Some(path) => {
            let spec = gantry_spec::load(path).map_err(|d| anyhow::anyhow!("{d}"))?;
            let env = a.env.as_deref().unwrap_or("production");
            let app = spec.resolve(env).map_err(|d| anyhow::anyhow!("{d}"))?;
            app.proxy.headers.clone()
        }
        None => gantry_spec::model::SecurityHeaders::default(),
    };
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL (e.g. http://app.example.com/)"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => bail!("`{url}` must start with http:// or https://"),
    };
    let tls = tls_config(a.ca_file.as_deref())?;
    let fetched = block_on(fetch(uri, tls));
    let (status, got, page) = match fetched {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot fetch {url}: {}", output::error_chain(&e));
            return Ok(ExitCode::from(3));
        }
    };
    let checks = grade(&got, https, &policy);
    let passed = checks.iter().all(|c| c.result != "fail");
    let report = Report {
        url,
        status,
        passed,
        checks,
        inline_hashes: a.inline_hashes.then(|| inline_hashes(&page)),
    };
    if ctx.json {
        output::json(&report)?;
    } else {
        println!("{} (HTTP {})", report.url, report.status);
        for c in &report.checks {
            let mark = match c.result {
                "pass" => "PASS",
                "fail" => "FAIL",
                "warn" => "WARN",
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
        if let Some(hashes) = &report.inline_hashes {
            if hashes.is_empty() {
                println!("no inline <script> or <style> on this page");
            }
            for h in hashes {
                println!(
                    "  {:<10} {}  <{}> {}",
                    h.directive, h.hash, h.element, h.start
                );
            }
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

/// The largest page body kept (for --inline-hashes).
const MAX_PAGE: usize = 8 << 20;

async fn fetch(
    uri: hyper::Uri,
    tls: Option<rustls::ClientConfig>,
) -> anyhow::Result<(u16, HeaderMap, Bytes)> {
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
    // Read the body so the answer is complete (kept up to MAX_PAGE).
    let body = http_body_util::Limited::new(body, MAX_PAGE);
    let page = match tokio::time::timeout(Duration::from_secs(15), body.collect()).await {
        Ok(Ok(c)) => c.to_bytes(),
        _ => Bytes::new(),
    };
    Ok((status, parts.headers, page))
}

/// The inline `<script>` (JavaScript ones: no `src`, a script type) and
/// `<style>` elements of an HTML page, with the hash a CSP allows each one
/// by: SHA-256 of its text as written between the tags.
fn inline_hashes(page: &[u8]) -> Vec<InlineHash> {
    use sha2::{Digest, Sha256};
    let lower = page.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut at = 0;
    while at < lower.len() {
        let next = [(&b"<script"[..], "script"), (b"<style", "style")]
            .into_iter()
            .filter_map(|(tag, name)| find(&lower[at..], tag).map(|i| (at + i, tag.len(), name)))
            .min_by_key(|(i, _, _)| *i);
        let Some((start, tag_len, element)) = next else {
            break;
        };
        let after = start + tag_len;
        // `<scripts>` or `<styled>` are other tags.
        if !lower
            .get(after)
            .is_some_and(|b| b.is_ascii_whitespace() || *b == b'>' || *b == b'/')
        {
            at = after;
            continue;
        }
        let Some(open_end) = find(&lower[after..], b">").map(|i| after + i) else {
            break;
        };
        let attrs = String::from_utf8_lossy(&lower[after..open_end]).to_string();
        let close = format!("</{element}");
        let Some(text_end) =
            find(&lower[open_end + 1..], close.as_bytes()).map(|i| open_end + 1 + i)
        else {
            break;
        };
        at = text_end + close.len();
        let text = &page[open_end + 1..text_end];
        if element == "script" && (attr(&attrs, "src").is_some() || !javascript(&attrs)) {
            continue;
        }
        if text.is_empty() {
            continue;
        }
        let start_text: String = String::from_utf8_lossy(text)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(40)
            .collect();
        out.push(InlineHash {
            element,
            directive: if element == "script" {
                "script-src"
            } else {
                "style-src"
            },
            hash: format!("'sha256-{}'", base64(&Sha256::digest(text))),
            start: start_text,
        });
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of attribute `name` in a (lower-cased) open tag's
/// attributes; `Some("")` for one without a value.
fn attr(attrs: &str, name: &str) -> Option<String> {
    let mut rest = attrs;
    while let Some(i) = rest.find(name) {
        let tail = &rest[i + name.len()..];
        let starts = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_ascii_whitespace());
        let ends = tail
            .chars()
            .next()
            .is_none_or(|c| c == '=' || c == '/' || c.is_ascii_whitespace());
        if starts && ends {
            let Some(v) = tail.trim_start().strip_prefix('=') else {
                return Some(String::new());
            };
            let v = v.trim_start();
            let value = match v.chars().next() {
                Some(q @ ('"' | '\'')) => v[1..].split(q).next().unwrap_or(""),
                _ => v.split_whitespace().next().unwrap_or(""),
            };
            return Some(value.to_string());
        }
        rest = tail;
    }
    None
}

/// A `<script>` whose `type` makes it JavaScript (none, a JavaScript MIME
/// type, or `module`); others are data blocks that no CSP checks.
fn javascript(attrs: &str) -> bool {
    match attr(attrs, "type") {
        None => true,
        Some(t) => {
            let t = t.trim();
            t.is_empty()
                || t == "module"
                || matches!(
                    t,
                    "text/javascript"
                        | "application/javascript"
                        | "text/ecmascript"
                        | "application/ecmascript"
                        | "application/x-javascript"
                )
        }
    }
}

/// Standard base64 with padding (RFC 4648), as CSP hashes are written.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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

    // Content-Security-Policy: enforced, or report-only when the policy
    // says so (then graded the same, and a warning: it blocks nothing).
    let enforced = value("content-security-policy");
    let report_only = value("content-security-policy-report-only");
    let graded_report_only =
        enforced.is_none() && report_only.is_some() && policy.csp_mode == CspMode::ReportOnly;
    let csp = if graded_report_only {
        report_only.clone()
    } else {
        enforced.clone()
    };
    let csp_dirs = csp.as_deref().map(directives).unwrap_or_default();
    let dir = |name: &str| csp_dirs.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    if !policy.csp.is_empty() {
        let mut problems = Vec::new();
        if csp.is_none() && report_only.is_some() {
            problems.push(
                "only Content-Security-Policy-Report-Only: violations are reported, not \
                 blocked"
                    .to_string(),
            );
        } else if csp.is_none() {
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
        if graded_report_only && problems.is_empty() {
            out.push(Finding {
                header: "Content-Security-Policy",
                result: "warn",
                message: "strict, but report-only: violations are reported, not blocked; \
                          enforce it once `gantry check headers --reports` shows none"
                    .to_string(),
            });
        } else {
            push(&mut out, "Content-Security-Policy", problems, "strict");
        }
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
    fn base64_matches_rfc_4648() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn inline_scripts_and_styles_are_hashed_others_are_not() {
        let page = br#"<html><head><style>body { color: red }</style>
            <script src="/app.js"></script>
            <SCRIPT>alert('Hello, world.');</SCRIPT>
            <script type="application/json">{"not": "code"}</script>
            <script type="module" defer>import "/m.js";</script>
            <scripts>no</scripts><stylesheet>no</stylesheet>
            </head></html>"#;
        let h = inline_hashes(page);
        let got: Vec<(&str, &str)> = h.iter().map(|h| (h.element, h.start.as_str())).collect();
        assert_eq!(
            got,
            [
                ("style", "body { color: red }"),
                ("script", "alert('Hello, world.');"),
                ("script", "import \"/m.js\";"),
            ]
        );
        // The example of the CSP spec (CSP Level 3, "hash-source").
        assert_eq!(
            h[1].hash,
            "'sha256-qznLcsROx4GACP2dm0UCKCzCG+HiZ1guq6ZZDob/Tng='"
        );
        assert_eq!(h[1].directive, "script-src");
        assert_eq!(h[0].directive, "style-src");
    }

    #[test]
    fn a_report_only_csp_warns_when_the_policy_says_so_and_fails_otherwise() {
        let mut policy = gantry_spec::model::SecurityHeaders::default();
        let got = map(&[(
            "content-security-policy-report-only",
            gantry_proxy::DEFAULT_CSP,
        )]);
        let f = grade(&got, false, &policy);
        assert_eq!(f[0].result, "fail");
        assert!(f[0].message.contains("Report-Only"), "{}", f[0].message);
        policy.csp_mode = CspMode::ReportOnly;
        let f = grade(&got, false, &policy);
        assert_eq!(
            (f[0].header, f[0].result),
            ("Content-Security-Policy", "warn")
        );
        // Weak, report-only or not: a failure.
        let weak = map(&[(
            "content-security-policy-report-only",
            "default-src 'self' 'unsafe-inline'",
        )]);
        assert_eq!(grade(&weak, false, &policy)[0].result, "fail");
        // Enforced although the policy only asks to report: passes.
        let strict = map(&[("content-security-policy", gantry_proxy::DEFAULT_CSP)]);
        assert_eq!(grade(&strict, false, &policy)[0].result, "pass");
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
