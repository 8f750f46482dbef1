//! Config versions: apply, show, history, diff, rollback.

use axum::Json;
use axum::extract::{Path, Query, State};
use gantry_api::{
    AppliedConfig, ApplyConfig, ConfigDetail, ConfigDiff, ConfigVersionInfo, RollbackConfig,
};
use gantry_store::config::{Applied, ConfigVersion};
use serde::Deserialize;

use crate::auth::{Deployer, Viewer};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Deserialize)]
pub(crate) struct AppEnv {
    app: String,
    env: String,
}

fn info(v: &ConfigVersion) -> ConfigVersionInfo {
    ConfigVersionInfo {
        app: v.app.clone(),
        env: v.env.clone(),
        version: v.version,
        author: v.author.clone(),
        created_at: v.created_at,
        hash: v.hash.clone(),
        note: v.note.clone(),
    }
}

fn applied(a: Applied) -> AppliedConfig {
    match a {
        Applied::New(v) => AppliedConfig {
            changed: true,
            version: info(&v),
        },
        Applied::Unchanged(v) => AppliedConfig {
            changed: false,
            version: info(&v),
        },
    }
}

/// Validates `source` as the config of `app` in `env`: every problem, with
/// locations, in one 422 answer.
fn validate(app: &str, env: &str, file_name: &str, source: &str) -> Result<(), ApiError> {
    let spec = gantry_spec::parse_str(file_name, source)
        .map_err(|d| ApiError::unprocessable(format!("the config has errors:\n{d}")))?;
    if spec.app_name() != app {
        return Err(ApiError::unprocessable(format!(
            "{file_name} is the config of app `{}`, not `{app}`; check `[app] name`",
            spec.app_name()
        )));
    }
    spec.resolve(env)
        .map_err(|d| ApiError::unprocessable(format!("the config has errors in `{env}`:\n{d}")))?;
    Ok(())
}

fn detail(v: ConfigVersion) -> ConfigDetail {
    // Stored versions were validated when applied; should a newer Gantry's
    // rules reject an old one, the source is still shown.
    let resolved = gantry_spec::parse_str(&v.file_name, &v.source)
        .ok()
        .and_then(|s| s.resolve(&v.env).ok())
        .map(|a| a.redacted_json())
        .unwrap_or(serde_json::Value::Null);
    ConfigDetail {
        version: info(&v),
        file_name: v.file_name,
        source: v.source,
        resolved,
    }
}

/// Room in the request for a spec of [`gantry_spec::MAX_SPEC_BYTES`] once
/// JSON-escaped (quotes, backslashes and newlines double).
const APPLY_BODY_LIMIT: usize = 4 * gantry_spec::MAX_SPEC_BYTES;

/// The body of an apply, read here rather than by `Json` so that a spec
/// over the size limit or not UTF-8 gets the spec's own error (the same as
/// `gantry config check`), not the extractor's.
async fn apply_body(body: axum::body::Body) -> Result<ApplyConfig, ApiError> {
    let limit = APPLY_BODY_LIMIT;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request is over {limit} bytes; a gantry.toml may be at most 1 MiB"),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| match std::str::from_utf8(&bytes) {
        Ok(_) => ApiError::bad_request(format!("the request is not a config to apply: {e}")),
        Err(u) => invalid_utf8(&bytes, u.valid_up_to()),
    })
}

/// Where in the spec the first byte that is not UTF-8 is, when it is in
/// `source`: the body is read again with a marker in its place.
fn invalid_utf8(bytes: &[u8], at: usize) -> ApiError {
    const MARK: char = '\u{FDD0}';
    let valid = String::from_utf8_lossy(&bytes[..at]);
    let marked = format!("{valid}{MARK}{}", String::from_utf8_lossy(&bytes[at..]));
    let spec = serde_json::from_str::<ApplyConfig>(&marked)
        .ok()
        .filter(|_| !valid.contains(MARK));
    let located = spec.and_then(|b| {
        let off = b.source.find(MARK)?;
        let text = [&b.source.as_bytes()[..off], &bytes[at..=at]].concat();
        gantry_spec::parse_bytes(&b.file_name, &text).err()
    });
    match located {
        Some(d) => ApiError::unprocessable(format!("the config has errors:\n{d}")),
        None => ApiError::bad_request(format!(
            "the request is not UTF-8 at byte offset {at}; a config to apply is UTF-8 JSON"
        )),
    }
}

pub(crate) async fn apply(
    Deployer(p): Deployer,
    State(state): State<AppState>,
    Path(AppEnv { app, env }): Path<AppEnv>,
    body: axum::body::Body,
) -> ApiResult<AppliedConfig> {
    let body = apply_body(body).await?;
    validate(&app, &env, &body.file_name, &body.source)?;
    let a = state
        .db(move |s| {
            s.apply_config(
                &app,
                &env,
                &body.file_name,
                &body.source,
                &p.actor,
                &body.note,
            )
        })
        .await?;
    Ok(Json(applied(a)))
}

pub(crate) async fn current(
    _: Viewer,
    State(state): State<AppState>,
    Path(AppEnv { app, env }): Path<AppEnv>,
) -> ApiResult<ConfigDetail> {
    let v = state.db(move |s| s.current_config(&app, &env)).await?;
    Ok(Json(detail(v)))
}

pub(crate) async fn history(
    _: Viewer,
    State(state): State<AppState>,
    Path(AppEnv { app, env }): Path<AppEnv>,
) -> ApiResult<Vec<ConfigVersionInfo>> {
    let versions = state.db(move |s| s.config_history(&app, &env)).await?;
    Ok(Json(versions.iter().map(info).collect()))
}

pub(crate) async fn version(
    _: Viewer,
    State(state): State<AppState>,
    Path((app, env, version)): Path<(String, String, i64)>,
) -> ApiResult<ConfigDetail> {
    let v = state
        .db(move |s| s.config_version(&app, &env, version))
        .await?;
    Ok(Json(detail(v)))
}

#[derive(Deserialize)]
pub(crate) struct DiffQuery {
    from: i64,
    to: i64,
}

pub(crate) async fn diff(
    _: Viewer,
    State(state): State<AppState>,
    Path(AppEnv { app, env }): Path<AppEnv>,
    Query(q): Query<DiffQuery>,
) -> ApiResult<ConfigDiff> {
    let (a, b) = state
        .db(move |s| {
            Ok((
                s.config_version(&app, &env, q.from)?,
                s.config_version(&app, &env, q.to)?,
            ))
        })
        .await?;
    let diff = similar::TextDiff::from_lines(&a.source, &b.source)
        .unified_diff()
        .context_radius(3)
        .header(
            &format!("version {} ({})", a.version, a.author),
            &format!("version {} ({})", b.version, b.author),
        )
        .to_string();
    let diff = if a.source == b.source {
        String::new()
    } else {
        diff
    };
    Ok(Json(ConfigDiff {
        from: a.version,
        to: b.version,
        diff,
    }))
}

/// Applies the source of an earlier version again, as a new version.
pub(crate) async fn rollback(
    Deployer(p): Deployer,
    State(state): State<AppState>,
    Path(AppEnv { app, env }): Path<AppEnv>,
    Json(body): Json<RollbackConfig>,
) -> ApiResult<AppliedConfig> {
    let (a2, e2) = (app.clone(), env.clone());
    let old = state
        .db(move |s| s.config_version(&a2, &e2, body.version))
        .await?;
    validate(&app, &env, &old.file_name, &old.source)?;
    let note = format!("rollback to version {}", old.version);
    let a = state
        .db(move |s| s.apply_config(&app, &env, &old.file_name, &old.source, &p.actor, &note))
        .await?;
    Ok(Json(applied(a)))
}
