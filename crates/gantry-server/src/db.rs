//! Blocking work off the async threads: every store call (SQLite is
//! synchronous) and file-system work that is more than a small bounded
//! call runs on tokio's blocking pool.

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

/// Runs `f` on the blocking pool (file-system walks, copies, removals).
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a blocking task failed: {e}")))
}
