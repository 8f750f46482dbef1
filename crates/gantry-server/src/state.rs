//! Shared state of the API handlers: the top of the module tree (see the
//! crate's documentation), which nothing below the handlers imports.

use std::sync::Arc;

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
    /// The embedded metrics store and its scrape targets.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

impl AppState {
    /// Runs a store call on the blocking pool ([`crate::db::db`]).
    pub(crate) async fn db<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, gantry_store::StoreError> + Send + 'static,
    {
        crate::db::db(&self.store, f).await
    }
}
