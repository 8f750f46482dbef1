//! Reading and verifying the audit log. Admin only, unscoped.

use axum::Json;
use axum::extract::{Query, State};
use gantry_api::{AuditEntry, AuditVerify};
use serde::Deserialize;

use crate::auth::Admin;
use crate::error::ApiResult;
use crate::state::AppState;

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    /// Only entries at or after this time (ms since the epoch).
    since: Option<i64>,
    /// At most this many of the newest entries (default 100, max 10000).
    limit: Option<usize>,
}

pub(crate) async fn list(
    _: Admin,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Vec<AuditEntry>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let rows = state.db(move |s| s.list_audit(q.since, limit)).await?;
    Ok(Json(
        rows.into_iter()
            .map(|e| AuditEntry {
                seq: e.seq,
                at: e.at,
                actor: e.actor,
                action: e.action,
                target: e.target,
                params: e.params,
                outcome: e.outcome,
                hash: e.hash,
            })
            .collect(),
    ))
}

pub(crate) async fn verify(_: Admin, State(state): State<AppState>) -> ApiResult<AuditVerify> {
    let v = state.db(|s| s.verify_audit()).await?;
    Ok(Json(AuditVerify {
        ok: v.broken.is_none(),
        entries: v.entries,
        head_seq: v.head_seq,
        head_hash: v.head_hash,
        broken_at: v.broken.as_ref().map(|b| b.seq),
        reason: v.broken.map(|b| b.reason),
    }))
}
