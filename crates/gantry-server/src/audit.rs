//! The audit layer: every mutating API call (any method but GET/HEAD),
//! allowed or not, appends one entry to the hash-chained audit log with the
//! actor, the action (named from the matched route), the target (the
//! request path), the parameters with secret-bearing fields removed, and the
//! outcome. Handlers cannot forget to audit, because they never do it.

use axum::body::{Body, to_bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gantry_store::audit::NewAuditEntry;
use serde_json::Value;

use crate::auth::Actor;
use crate::error::{ApiError, ErrorMessage};
use crate::state::AppState;

/// Bodies larger than this are refused before they reach a handler.
const MAX_BODY: usize = 4 * 1024 * 1024;

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
    let target = req
        .uri()
        .path()
        .strip_prefix("/api/v1/")
        .unwrap_or(req.uri().path())
        .to_string();
    let query = req.uri().query().map(str::to_string);
    let is_json = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/json"));
    if !is_json {
        // Uploads (source bundles) stream through; the audit notes their size.
        let mut params = serde_json::json!({
            "content_length": req
                .headers()
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok()),
        });
        if let (Some(q), Value::Object(map)) = (query, &mut params) {
            map.insert("query".into(), Value::String(q));
        }
        let resp = next.run(req).await;
        return finish(state, method, route, target, params, resp).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {MAX_BODY} bytes"),
            )
            .into_response();
        }
    };
    let mut params = if bytes.is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice::<Value>(&bytes)
            .map(sanitize)
            .unwrap_or_else(|_| Value::String(format!("<{} bytes, not JSON>", bytes.len())))
    };
    if let (Some(q), Value::Object(map)) = (query, &mut params) {
        map.insert("query".into(), Value::String(q));
    }
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    finish(state, method, route, target, params, resp).await
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
