//! The one way the control plane calls the store from async code: on the
//! blocking pool, since SQLite is synchronous.

use std::sync::Arc;

use gantry_store::{Store, StoreError};

use crate::error::ApiError;

/// Runs a store call on the blocking pool; a store error becomes the API
/// error it maps to.
pub(crate) async fn db<T, F>(store: &Arc<Store>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::from)
}
