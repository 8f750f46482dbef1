//! The embedded metrics store's status. Viewer, unscoped.

use axum::Json;
use axum::extract::State;
use gantry_api::MetricsStatus;

use crate::auth::Viewer;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// `GET /api/v1/metrics/status`: series, samples, bytes, blocks and each
/// scrape target's last scrape.
pub(crate) async fn status(_: Viewer, State(state): State<AppState>) -> ApiResult<MetricsStatus> {
    let status = state.metrics.status().await.map_err(|e| {
        tracing::error!(error = %e, "metrics status task failed");
        ApiError::internal("the metrics store's status could not be read; see the server's log")
    })?;
    Ok(Json(status))
}
