//! Secrets: names and versions out, values only in.

use axum::Json;
use axum::extract::{Path, State};
use gantry_api::{KeyRotated, SecretInfo, SetSecret};

use crate::auth::{Admin, Viewer};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

fn info(s: gantry_store::secrets::SecretInfo) -> SecretInfo {
    SecretInfo {
        name: s.name,
        version: s.version,
        updated_at: s.updated_at,
        updated_by: s.updated_by,
    }
}

/// Secret names follow environment-variable rules, since that is how they
/// reach the app.
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!(
            "`{name}` is not a valid secret name: use upper-case letters, digits and `_`, not \
             starting with a digit (e.g. `DATABASE_URL`)"
        )))
    }
}

/// Why a value with a NUL byte is refused (it would reach the app as an
/// environment variable, which cannot hold one).
fn nul_message(name: &str, at: usize) -> String {
    format!(
        "the value for `{name}` contains a NUL byte (at byte {at}); secrets reach the app as \
         environment variables, which cannot hold one. Remove it, or store binary data \
         encoded (e.g. base64)"
    )
}

pub(crate) async fn list(
    _: Viewer,
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Vec<SecretInfo>> {
    let list = state.db(move |s| s.list_secrets(&app, &env)).await?;
    Ok(Json(list.into_iter().map(info).collect()))
}

pub(crate) async fn set(
    Admin(p): Admin,
    State(state): State<AppState>,
    Path((app, env, name)): Path<(String, String, String)>,
    Json(body): Json<SetSecret>,
) -> ApiResult<SecretInfo> {
    check_name(&name)?;
    if body.value.is_empty() {
        return Err(ApiError::unprocessable(format!(
            "the value for `{name}` is empty; to delete a secret use `gantry secrets rm {name}`"
        )));
    }
    if let Some(at) = body.value.find('\0') {
        return Err(ApiError::unprocessable(nul_message(&name, at)));
    }
    let rec = state
        .db(move |s| s.set_secret(&app, &env, &name, body.value.as_bytes(), &p.actor))
        .await?;
    Ok(Json(info(rec)))
}

pub(crate) async fn remove(
    _: Admin,
    State(state): State<AppState>,
    Path((app, env, name)): Path<(String, String, String)>,
) -> ApiResult<serde_json::Value> {
    let n = name.clone();
    state.db(move |s| s.remove_secret(&app, &env, &n)).await?;
    Ok(Json(serde_json::json!({ "removed": name })))
}

pub(crate) async fn rotate_key(_: Admin, State(state): State<AppState>) -> ApiResult<KeyRotated> {
    let reencrypted = state.db(|s| s.rotate_key()).await?;
    Ok(Json(KeyRotated { reencrypted }))
}
