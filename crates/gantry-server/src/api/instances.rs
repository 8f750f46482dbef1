//! Running app environments: start, stop, restart, ps, logs, events.

use axum::Json;
use axum::extract::{Path, Query, State};
use gantry_api::{EventInfo, InstanceInfo, LogLines, StartEnv};
use serde::Deserialize;

use crate::auth::{Deployer, Viewer};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Starts the environment's instances from its applied config.
pub(crate) async fn start(
    _: Deployer,
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
    Json(body): Json<StartEnv>,
) -> ApiResult<Vec<InstanceInfo>> {
    let (a, e) = (app.clone(), env.clone());
    let (version, secrets) = state
        .db(move |s| Ok((s.current_config(&a, &e)?, s.secret_values(&a, &e)?)))
        .await?;
    let spec = gantry_spec::parse_str(&version.file_name, &version.source)
        .and_then(|s| s.resolve(&env))
        .map_err(|d| ApiError::unprocessable(format!("the applied config has errors:\n{d}")))?;
    let dir = match (body.release, body.dir) {
        (Some(n), None) => {
            let a = app.clone();
            let rel = state.db(move |s| s.release(&a, n)).await?;
            crate::paths::artifact_dir(state.store.dir(), &rel.digest)
        }
        (None, Some(d)) => d.into(),
        _ => {
            return Err(ApiError::unprocessable(
                "give exactly one of `release` (a built release) or `dir` (a local directory)",
            ));
        }
    };
    let list = state.fleet.start(&app, &env, &spec, dir, secrets).await?;
    Ok(Json(list))
}

pub(crate) async fn stop(
    _: Deployer,
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<serde_json::Value> {
    let n = state.fleet.stop(&app, &env).await?;
    Ok(Json(serde_json::json!({ "stopped": n })))
}

pub(crate) async fn restart(
    _: Deployer,
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<serde_json::Value> {
    let n = state.fleet.restart(&app, &env).await?;
    Ok(Json(serde_json::json!({ "restarted": n })))
}

pub(crate) async fn list_env(
    _: Viewer,
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Vec<InstanceInfo>> {
    Ok(Json(state.fleet.list(Some((&app, &env)))))
}

pub(crate) async fn list_all(
    _: Viewer,
    State(state): State<AppState>,
) -> ApiResult<Vec<InstanceInfo>> {
    Ok(Json(state.fleet.list(None)))
}

#[derive(Deserialize)]
pub(crate) struct LogsQuery {
    /// At most this many lines (default 100, max 10000).
    lines: Option<usize>,
    /// Only lines after this RFC 3339 time (for following).
    after: Option<String>,
    /// The instances of this release (its sets `r<N>`, `r<N>-…`), running
    /// or stopped, instead of the running ones.
    release: Option<i64>,
}

pub(crate) async fn logs(
    _: Viewer,
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<LogLines> {
    let n = q.lines.unwrap_or(100).clamp(1, 10_000);
    let fleet = state.fleet.clone();
    let (a, e) = (app.clone(), env.clone());
    // Reads the instances' log files: on the blocking pool.
    let lines =
        crate::db::blocking(move || fleet.logs(&a, &e, n, q.after.as_deref(), q.release)).await?;
    match (lines, q.release) {
        (Some(lines), _) => Ok(Json(LogLines { lines })),
        (None, release) => Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!(
                "release {} has no instances with logs in {app}/{env} (the logs of the last {} \
                 stopped sets are kept); see `gantry deploys --env {env}`",
                release.unwrap_or_default(),
                crate::fleet::KEEP_STOPPED_SETS
            ),
        )),
    }
}

#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    limit: Option<usize>,
}

pub(crate) async fn events(
    _: Viewer,
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Vec<EventInfo>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let rows = state.db(move |s| s.events(&app, &env, limit)).await?;
    Ok(Json(
        rows.into_iter()
            .map(|e| EventInfo {
                id: e.id,
                at: e.at,
                instance: e.instance,
                kind: e.kind,
                message: e.message,
            })
            .collect(),
    ))
}
