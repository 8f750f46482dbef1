//! The audit layer: every mutating API call (any method but GET/HEAD),
//! allowed or not, appends one entry to the hash-chained audit log with the
//! actor, the action (named from the matched route), the target (the
//! request path), the parameters with secret-bearing fields removed, and the
//! outcome. Handlers cannot forget to audit, because they never do it.
//!
//! The layer reads no body itself: the caller is authenticated from the
//! headers first, so an unauthenticated upload is refused (401) unread, and
//! the handler's own extractor reads a JSON body through a tap that keeps a
//! copy for the entry. An answer that is not the API's JSON error shape
//! (axum's rejections: malformed JSON, 413, 405) is turned into it before
//! the outcome is recorded.

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use gantry_store::audit::NewAuditEntry;
use http_body_util::BodyExt;
use serde_json::Value;

use crate::auth::Actor;
use crate::error::ErrorMessage;
use crate::limits::MAX_BODY;
use crate::state::AppState;

/// Field names whose values never reach the audit log.
const SECRET_FIELDS: &[&str] = &["value", "token", "password", "secret", "key"];

pub(crate) fn action_name(method: &Method, route: &str) -> String {
    let known = match (method.as_str(), route) {
        ("PUT", "/api/v1/apps/{app}/envs/{env}/config") => "config.apply",
        ("POST", "/api/v1/apps/{app}/envs/{env}/config/rollback") => "config.rollback",
        ("PUT", "/api/v1/apps/{app}/envs/{env}/secrets/{name}") => "secret.set",
        ("DELETE", "/api/v1/apps/{app}/envs/{env}/secrets/{name}") => "secret.remove",
        ("POST", "/api/v1/secrets/rotate-key") => "secrets.rotate_key",
        ("POST", "/api/v1/apps/{app}/envs/{env}/start") => "instances.start",
        ("POST", "/api/v1/apps/{app}/envs/{env}/releases") => "release.build",
        ("POST", "/api/v1/apps/{app}/envs/{env}/deploys") => "deploy.start",
        ("POST", "/api/v1/apps/{app}/envs/{env}/deploys/{id}/approve") => "deploy.approve",
        ("POST", "/api/v1/apps/{app}/envs/{env}/deploys/{id}/abort") => "deploy.abort",
        ("POST", "/api/v1/apps/{app}/envs/{env}/stop") => "instances.stop",
        ("POST", "/api/v1/apps/{app}/envs/{env}/restart") => "instances.restart",
        ("POST", "/api/v1/tokens") => "token.create",
        ("DELETE", "/api/v1/tokens/{id}") => "token.revoke",
        _ => "",
    };
    if known.is_empty() {
        format!("{method} {route}")
    } else {
        known.to_string()
    }
}

/// Replaces secret-bearing fields, and swaps a config source for its hash
/// (the source is stored as a config version already).
pub(crate) fn sanitize(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    if SECRET_FIELDS.contains(&k.to_ascii_lowercase().as_str()) {
                        (k, Value::String("<redacted>".into()))
                    } else if k == "source" {
                        let text = v.as_str().unwrap_or_default();
                        (
                            "source_sha256".to_string(),
                            Value::String(gantry_store::sha256_hex(text.as_bytes())),
                        )
                    } else {
                        (k, sanitize(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(sanitize).collect()),
        other => other,
    }
}

pub(crate) async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let path = req.uri().path().to_string();
    let target = path.strip_prefix("/api/v1/").unwrap_or(&path).to_string();
    let query = req.uri().query().map(str::to_string);
    let content_length = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let is_json = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/json"));
    // Nothing is read here: authentication (the next layer) decides from the
    // headers alone, and the handler reads the body through this tap, which
    // keeps a copy of a JSON body for the entry.
    let tap = Tap::default();
    let req = if is_json {
        let (parts, body) = req.into_parts();
        let t = tap.clone();
        let body = Body::new(body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                t.keep(data);
            }
            frame
        }));
        Request::from_parts(parts, body)
    } else {
        req
    };
    let resp = next.run(req).await;
    let resp = crate::error::json_error(resp, &method, &path).await;
    let mut params = if is_json {
        tap.params(content_length)
    } else {
        // Uploads (source bundles) stream through; the audit notes their size.
        serde_json::json!({ "content_length": content_length })
    };
    if let (Some(q), Value::Object(map)) = (query, &mut params) {
        map.insert("query".into(), Value::String(q));
    }
    finish(state, method, route, target, params, resp).await
}

/// A copy of the first [`MAX_BODY`] bytes of a JSON body, as the handler
/// reads it.
#[derive(Clone, Default)]
struct Tap(Arc<Mutex<Tapped>>);

#[derive(Default)]
struct Tapped {
    bytes: Vec<u8>,
    /// Every byte read, kept or not.
    total: u64,
}

impl Tap {
    fn keep(&self, data: &Bytes) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        t.total += data.len() as u64;
        let room = MAX_BODY.saturating_sub(t.bytes.len());
        t.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }

    /// The entry's parameters: the sanitized JSON, or what the body was
    /// when it is not JSON, too large, or was never read (the call was
    /// refused first).
    fn params(&self, content_length: Option<u64>) -> Value {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if t.total == 0 {
            return match content_length {
                Some(n) if n > 0 => serde_json::json!({ "content_length": n, "body": "not read" }),
                _ => Value::Object(Default::default()),
            };
        }
        if t.total > t.bytes.len() as u64 {
            return Value::String(format!("<more than {MAX_BODY} bytes, not kept>"));
        }
        serde_json::from_slice::<Value>(&t.bytes)
            .map(sanitize)
            .unwrap_or_else(|_| Value::String(format!("<{} bytes, not JSON>", t.bytes.len())))
    }
}

/// Appends the entry for a finished call and passes the response on.
async fn finish(
    state: AppState,
    method: Method,
    route: String,
    target: String,
    params: Value,
    resp: Response,
) -> Response {
    let status = resp.status();
    let outcome = if status.is_success() {
        "ok".to_string()
    } else {
        let why = resp
            .extensions()
            .get::<ErrorMessage>()
            .map(|m| m.0.clone())
            .unwrap_or_default();
        format!(
            "{} {}: {why}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
    };
    let entry = NewAuditEntry {
        actor: resp
            .extensions()
            .get::<Actor>()
            .map(|a| a.0.clone())
            .unwrap_or_else(|| "unknown".into()),
        action: action_name(&method, &route),
        target,
        params,
        outcome,
    };
    if let Err(e) = state.db(move |s| s.append_audit(&entry)).await {
        // The change itself already happened; a lost audit entry is loud.
        tracing::error!(error = %e.message, "could not append to the audit log");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_removes_secret_fields_at_any_depth() {
        let v = serde_json::json!({
            "value": "hunter2",
            "source": "x = 1",
            "nested": [{ "Token": "t", "role": "viewer" }],
        });
        let s = sanitize(v);
        assert_eq!(s["value"], "<redacted>");
        assert_eq!(s["nested"][0]["Token"], "<redacted>");
        assert_eq!(s["nested"][0]["role"], "viewer");
        assert!(s.get("source").is_none());
        assert_eq!(s["source_sha256"], gantry_store::sha256_hex(b"x = 1"));
        assert!(!s.to_string().contains("hunter2"));
    }
}
