//! Shared state of the API handlers.

use std::sync::Arc;

use axum::http::StatusCode;
use gantry_store::Store;

use crate::error::ApiError;

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Arc<Store>,
    /// The uid that owns the data directory; only it is trusted on the
    /// unix socket without a token.
    pub(crate) owner_uid: u32,
    pub(crate) fleet: Arc<crate::fleet::Fleet>,
    pub(crate) deployer: Arc<crate::deployer::Deployer>,
    /// The edge proxy's admin API (read-only calls; the deployer owns the
    /// table).
    pub(crate) proxy: gantry_proxy::AdminClient,
}

impl AppState {
    /// Runs a store call on the blocking pool (SQLite is synchronous).
    pub(crate) async fn db<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, gantry_store::StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(ApiError::from)
    }
}
