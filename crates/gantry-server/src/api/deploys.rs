//! Deploys: start, list, show (live state and timeline), approve, abort.

use axum::Json;
use axum::extract::{Path, State};
use gantry_api::{DeployInfo, GateInfo, PhaseTime, StartDeploy, TimelineEntry};
use gantry_store::deploys::DeployRecord;

use crate::auth::{Deployer, Viewer};
use crate::deployer::Command;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

fn info(d: DeployRecord, timeline: Vec<TimelineEntry>) -> DeployInfo {
    let state: Option<gantry_rollout::Deploy> = serde_json::from_str(&d.state).ok();
    let plan: Option<gantry_rollout::Plan> = serde_json::from_str(&d.plan).ok();
    let warm_until = match (&state, plan.map(|p| p.strategy)) {
        (Some(s), Some(gantry_rollout::Strategy::BlueGreen { rollback_window }))
            if s.phase == gantry_rollout::Phase::Warm =>
        {
            Some(
                s.phase_since
                    .saturating_add(i64::try_from(rollback_window.as_millis()).unwrap_or(i64::MAX)),
            )
        }
        _ => None,
    };
    let (new_set, old_set) = (d.new_set_name(), d.old_set_name());
    DeployInfo {
        new_set,
        old_set,
        warm_until,
        holding: None,
        noop: None,
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
        phases: phase_times(d.created_at, d.finished_at, &timeline),
        created_at: d.created_at,
        finished_at: d.finished_at,
        timeline,
    }
}

fn timeline(events: Vec<gantry_store::deploys::DeployEvent>) -> Vec<TimelineEntry> {
    events
        .into_iter()
        .map(|e| TimelineEntry {
            at: e.at,
            phase: e.phase,
            message: e.message,
        })
        .collect()
}

/// Each phase's duration from the timeline: a phase lasts from its first
/// line to the next phase's first line (the last one until the deploy
/// ended, or until now while it runs). `done` has no duration.
fn phase_times(
    created_at: i64,
    finished_at: Option<i64>,
    timeline: &[TimelineEntry],
) -> Vec<PhaseTime> {
    let mut starts: Vec<(String, i64)> = Vec::new();
    for e in timeline {
        if starts.last().is_none_or(|(p, _)| *p != e.phase) {
            starts.push((e.phase.clone(), e.at));
        }
    }
    let end = finished_at.unwrap_or_else(gantry_common::now_ms);
    let mut out = Vec::new();
    // Before the first line: pending.
    if let Some((_, first)) = starts.first()
        && *first > created_at
    {
        out.push(PhaseTime {
            phase: "pending".into(),
            ms: first - created_at,
        });
    }
    for (i, (phase, at)) in starts.iter().enumerate() {
        if phase == "done" {
            break;
        }
        let next = starts.get(i + 1).map_or(end, |(_, t)| *t);
        out.push(PhaseTime {
            phase: phase.clone(),
            ms: (next - at).max(0),
        });
    }
    out
}

pub(crate) async fn start(
    Deployer(p): Deployer,
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
    Json(body): Json<StartDeploy>,
) -> ApiResult<DeployInfo> {
    let (d, noop) = state
        .deployer
        .start(&app, &env, body.release, body.config_version, &p.actor)
        .await?;
    let mut i = info(d, Vec::new());
    i.noop = noop;
    Ok(Json(i))
}

pub(crate) async fn list(
    _: Viewer,
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Vec<DeployInfo>> {
    let rows = state
        .db(move |s| {
            let deploys = s.deploys(Some((&app, &env)), 100)?;
            // One query for all their timelines (ids are ascending in time;
            // other environments' events in the range are skipped below).
            let (first, last) = (
                deploys.last().map_or(0, |d| d.id),
                deploys.first().map_or(0, |d| d.id),
            );
            Ok((deploys, s.deploy_events_from(first, last)?))
        })
        .await?;
    let (deploys, events) = rows;
    let mut by_deploy: std::collections::HashMap<i64, Vec<_>> = std::collections::HashMap::new();
    for (id, e) in events {
        by_deploy.entry(id).or_default().push(e);
    }
    Ok(Json(
        deploys
            .into_iter()
            .map(|d| {
                let events = by_deploy.remove(&d.id).unwrap_or_default();
                let mut i = info(d, timeline(events));
                // The list carries phase durations, not whole timelines.
                i.timeline = Vec::new();
                i.holding = state.deployer.holding(i.id);
                i
            })
            .collect(),
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
    let mut info = info(d, timeline(events));
    if info.outcome.is_none() {
        info.holding = state.deployer.holding(info.id);
        let set = state.fleet.set_status(&info.app, &info.env, &info.new_set);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn e(at: i64, phase: &str) -> TimelineEntry {
        TimelineEntry {
            at,
            phase: phase.into(),
            message: String::new(),
        }
    }

    #[test]
    fn phase_times_run_from_a_phase_s_first_line_to_the_next_phase_s() {
        let t = [
            e(110, "start"),
            e(1110, "analyze"),
            e(1500, "analyze"),
            e(9110, "drain"),
            e(9200, "stop-old"),
            e(9300, "done"),
        ];
        let times = phase_times(100, Some(9300), &t);
        let got: Vec<(&str, i64)> = times.iter().map(|p| (p.phase.as_str(), p.ms)).collect();
        assert_eq!(
            got.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>(),
            ["pending", "start", "analyze", "drain", "stop-old"]
        );
        assert_eq!(
            got.iter().map(|(_, ms)| *ms).collect::<Vec<_>>(),
            [10, 1000, 8000, 90, 100]
        );
        // While running, the current phase lasts until now.
        let running = phase_times(100, None, &t[..2]);
        assert!(
            running
                .last()
                .is_some_and(|p| p.phase == "analyze" && p.ms > 0)
        );
    }
}
