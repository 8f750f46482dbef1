//! API tokens: create (shown once), list, revoke. Admin only, unscoped.

use axum::Json;
use axum::extract::{Path, State};
use gantry_api::{CreateToken, Role, TokenCreated, TokenInfo};
use gantry_store::tokens::TokenRecord;

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

fn info(r: TokenRecord) -> Result<TokenInfo, ApiError> {
    let role: Role = r
        .role
        .parse()
        .map_err(|e: gantry_api::UnknownRole| ApiError::internal(format!("token {}: {e}", r.id)))?;
    Ok(TokenInfo {
        id: r.id,
        role,
        env: r.env,
        description: r.description,
        created_at: r.created_at,
        created_by: r.created_by,
        expires_at: r.expires_at,
        revoked_at: r.revoked_at,
        last_used_at: r.last_used_at,
    })
}

pub(crate) async fn create(
    Admin(p): Admin,
    State(state): State<AppState>,
    Json(body): Json<CreateToken>,
) -> ApiResult<TokenCreated> {
    if body.expires_in_secs == Some(0) {
        return Err(ApiError::unprocessable(
            "expiry must be in the future, e.g. `--expires 30d`",
        ));
    }
    let expires_at = body.expires_in_secs.map(|s| {
        gantry_common::now_ms().saturating_add((s.min(i64::MAX as u64 / 1000) as i64) * 1000)
    });
    let (rec, token) = state
        .db(move |s| {
            s.create_token(
                body.role.as_str(),
                body.env.as_deref(),
                expires_at,
                &body.description,
                &p.actor,
            )
        })
        .await?;
    Ok(Json(TokenCreated {
        token,
        info: info(rec)?,
    }))
}

pub(crate) async fn list(_: Admin, State(state): State<AppState>) -> ApiResult<Vec<TokenInfo>> {
    let list = state.db(|s| s.list_tokens()).await?;
    Ok(Json(list.into_iter().map(info).collect::<Result<_, _>>()?))
}

pub(crate) async fn revoke(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<TokenInfo> {
    let rec = state.db(move |s| s.revoke_token(&id)).await?;
    Ok(Json(info(rec)?))
}
