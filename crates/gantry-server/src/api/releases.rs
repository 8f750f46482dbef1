//! Releases: build one from an uploaded source bundle; list them.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use gantry_api::ReleaseInfo;
use gantry_store::releases::Release;
use serde::Deserialize;

use crate::auth::{Deployer, Viewer};
use crate::error::ApiResult;
use crate::state::AppState;

pub(crate) fn info(r: Release) -> ReleaseInfo {
    ReleaseInfo {
        app: r.app,
        number: r.number,
        digest: r.digest,
        source_commit: r.source_commit,
        author: r.author,
        created_at: r.created_at,
        build_log: r.build_log,
    }
}

#[derive(Deserialize)]
pub(crate) struct BuildQuery {
    /// The source's VCS commit, if any.
    commit: Option<String>,
}

/// Builds a release from the gzipped tar in the body, with the
/// environment's build config.
pub(crate) async fn build(
    Deployer(p): Deployer,
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
    Query(q): Query<BuildQuery>,
    body: Bytes,
) -> ApiResult<ReleaseInfo> {
    let r = crate::build::build_release(&state.store, &app, &env, body, q.commit, &p.actor).await?;
    Ok(Json(info(r)))
}

pub(crate) async fn list(
    _: Viewer,
    State(state): State<AppState>,
    Path((app, _env)): Path<(String, String)>,
) -> ApiResult<Vec<ReleaseInfo>> {
    let rows = state.db(move |s| s.releases(&app)).await?;
    Ok(Json(rows.into_iter().map(info).collect()))
}
