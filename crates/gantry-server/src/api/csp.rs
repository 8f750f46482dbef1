//! CSP violation reports of an app environment, as its route in the edge
//! proxy received them (`gantry check headers --reports`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gantry_proxy::{AdminClientError, CspReports};

use crate::auth::Viewer;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// `GET /api/v1/apps/{app}/envs/{env}/csp-reports`: the kinds of
/// violation (directive, blocked URI, page, count) and the last reports.
pub(crate) async fn reports(
    _: Viewer,
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<CspReports> {
    let route = format!("{app}/{env}");
    match state.proxy.csp_reports(&route).await {
        Ok(r) => Ok(Json(r)),
        Err(AdminClientError::Api { status: 404, .. }) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "the proxy has no route `{route}`: the environment has not been deployed (or the \
                 proxy's table was reset since); deploy it, open its pages, then ask again"
            ),
        )),
        Err(e @ AdminClientError::Connect { .. }) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::error::chain(&e),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!(
                "cannot read the CSP reports of `{route}` from the proxy: {}",
                crate::error::chain(&e)
            ),
        )),
    }
}
