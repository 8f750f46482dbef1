//! Deploys: start, list, show (live state and timeline), approve, abort.

use axum::Json;
use axum::extract::{Path, State};
use gantry_api::{DeployInfo, GateInfo, StartDeploy, TimelineEntry};
use gantry_store::deploys::DeployRecord;

use crate::auth::{Deployer, Viewer};
use crate::deployer::Command;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

fn info(d: DeployRecord, timeline: Vec<TimelineEntry>) -> DeployInfo {
    let state: Option<gantry_rollout::Deploy> = serde_json::from_str(&d.state).ok();
    DeployInfo {
        id: d.id,
        app: d.app,
        env: d.env,
        release: d.release,
        previous_release: d.previous_release,
        config_version: d.config_version,
        actor: d.actor,
        phase: d.phase,
        outcome: d.outcome,
        reason: state.as_ref().and_then(|s| s.reason.clone()),
        weight: state.as_ref().map_or(0, |s| s.weight),
        instances: 0,
        ready: 0,
        gates: state
            .and_then(|s| s.last_gates)
            .map(|g| {
                g.results
                    .into_iter()
                    .map(|r| GateInfo {
                        name: r.name,
                        value: r.value,
                        threshold: r.threshold,
                        status: serde_json::to_value(r.status)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        created_at: d.created_at,
        finished_at: d.finished_at,
        timeline,
    }
}

pub(crate) async fn start(
    Deployer(p): Deployer,
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
    Json(body): Json<StartDeploy>,
) -> ApiResult<DeployInfo> {
    let id = state
        .deployer
        .start(&app, &env, body.release, body.config_version, &p.actor)
        .await?;
    let d = state.db(move |s| s.deploy(id)).await?;
    Ok(Json(info(d, Vec::new())))
}

pub(crate) async fn list(
    _: Viewer,
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Vec<DeployInfo>> {
    let rows = state
        .db(move |s| s.deploys(Some((&app, &env)), 100))
        .await?;
    Ok(Json(
        rows.into_iter().map(|d| info(d, Vec::new())).collect(),
    ))
}

pub(crate) async fn show(
    _: Viewer,
    State(state): State<AppState>,
    Path((app, env, id)): Path<(String, String, i64)>,
) -> ApiResult<DeployInfo> {
    let (d, events) = state
        .db(move |s| Ok((s.deploy(id)?, s.deploy_events(id)?)))
        .await?;
    if d.app != app || d.env != env {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!("deploy {id} is not a deploy of {app}/{env}"),
        ));
    }
    let timeline = events
        .into_iter()
        .map(|e| TimelineEntry {
            at: e.at,
            phase: e.phase,
            message: e.message,
        })
        .collect();
    let mut info = info(d, timeline);
    if info.outcome.is_none() {
        let set = state
            .fleet
            .set_status(&info.app, &info.env, &format!("r{}", info.release));
        info.instances = u32::try_from(set.len()).unwrap_or(u32::MAX);
        info.ready = u32::try_from(set.iter().filter(|(_, s)| s.ready).count()).unwrap_or(0);
    }
    Ok(Json(info))
}

async fn command(
    state: &AppState,
    app: String,
    env: String,
    id: i64,
    cmd: Command,
) -> ApiResult<serde_json::Value> {
    let d = state.db(move |s| s.deploy(id)).await?;
    if d.app != app || d.env != env {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!("deploy {id} is not a deploy of {app}/{env}"),
        ));
    }
    state.deployer.command(id, cmd)?;
    Ok(Json(serde_json::json!({ "deploy": id })))
}

pub(crate) async fn approve(
    Deployer(p): Deployer,
    State(state): State<AppState>,
    Path((app, env, id)): Path<(String, String, i64)>,
) -> ApiResult<serde_json::Value> {
    command(&state, app, env, id, Command::Approve(p.actor)).await
}

pub(crate) async fn abort(
    Deployer(p): Deployer,
    State(state): State<AppState>,
    Path((app, env, id)): Path<(String, String, i64)>,
) -> ApiResult<serde_json::Value> {
    command(&state, app, env, id, Command::Abort(p.actor)).await
}
