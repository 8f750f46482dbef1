//! `/api/v1`: the routes, one module per resource. Every handler states the
//! role it needs in its signature (see [`crate::auth`]).

mod audit_log;
mod config;
mod csp;
mod deploys;
mod instances;
mod metrics;
mod releases;
mod secrets;
mod tokens;

use axum::Json;
use axum::Router;
use axum::routing::{get, post, put};
use gantry_api::{AppEnvSummary, WhoAmI};

use crate::auth::{Principal, Viewer};
use crate::error::ApiResult;
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/apps", get(apps))
        .route(
            "/api/v1/apps/{app}/envs/{env}/config",
            get(config::current).put(config::apply),
        )
        .route(
            "/api/v1/apps/{app}/envs/{env}/config/versions",
            get(config::history),
        )
        .route(
            "/api/v1/apps/{app}/envs/{env}/config/versions/{version}",
            get(config::version),
        )
        .route(
            "/api/v1/apps/{app}/envs/{env}/config/diff",
            get(config::diff),
        )
        .route(
            "/api/v1/apps/{app}/envs/{env}/config/rollback",
            post(config::rollback),
        )
        .route("/api/v1/apps/{app}/envs/{env}/secrets", get(secrets::list))
        .route(
            "/api/v1/apps/{app}/envs/{env}/secrets/{name}",
            put(secrets::set).delete(secrets::remove),
        )
        .route("/api/v1/secrets/rotate-key", post(secrets::rotate_key))
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/api/v1/instances", get(instances::list_all))
        .route(
            "/api/v1/apps/{app}/envs/{env}/instances",
            get(instances::list_env),
        )
        .route(
            "/api/v1/apps/{app}/envs/{env}/start",
            post(instances::start),
        )
        .route("/api/v1/apps/{app}/envs/{env}/stop", post(instances::stop))
        .route(
            "/api/v1/apps/{app}/envs/{env}/restart",
            post(instances::restart),
        )
        .route("/api/v1/apps/{app}/envs/{env}/logs", get(instances::logs))
        .route(
            "/api/v1/apps/{app}/envs/{env}/events",
            get(instances::events),
        )
        .route(
            "/api/v1/apps/{app}/envs/{env}/releases",
            get(releases::list)
                .post(releases::build)
                .layer(axum::extract::DefaultBodyLimit::max(
                    crate::limits::MAX_BUNDLE,
                )),
        )
        .route(
            "/api/v1/apps/{app}/envs/{env}/deploys",
            get(deploys::list).post(deploys::start),
        )
        .route(
            "/api/v1/apps/{app}/envs/{env}/deploys/{id}",
            get(deploys::show),
        )
        .route(
            "/api/v1/apps/{app}/envs/{env}/deploys/{id}/approve",
            post(deploys::approve),
        )
        .route(
            "/api/v1/apps/{app}/envs/{env}/deploys/{id}/abort",
            post(deploys::abort),
        )
        .route(
            "/api/v1/apps/{app}/envs/{env}/csp-reports",
            get(csp::reports),
        )
        .route("/api/v1/audit", get(audit_log::list))
        .route("/api/v1/audit/verify", get(audit_log::verify))
        .route("/api/v1/metrics/status", get(metrics::status))
}

async fn whoami(axum::Extension(p): axum::Extension<Principal>) -> ApiResult<WhoAmI> {
    Ok(Json(WhoAmI {
        actor: p.actor,
        role: p.role,
        env: p.env,
    }))
}

/// App environments with a config (an unscoped endpoint, like all without
/// `{env}`).
async fn apps(
    _: Viewer,
    axum::extract::State(state): axum::extract::State<AppState>,
) -> ApiResult<Vec<AppEnvSummary>> {
    let envs = state.db(|s| s.app_envs()).await?;
    Ok(Json(
        envs.into_iter()
            .map(|e| AppEnvSummary {
                app: e.app,
                env: e.env,
                config_version: e.version,
                updated_at: e.updated_at,
                updated_by: e.author,
            })
            .collect(),
    ))
}
