//! The sidecar's handle on its state store (`[store]`, crate `sidecar-store`).
//!
//! Why a runtime of its own: pingora runs every listener and background service on its own
//! tokio runtime, while a PostgreSQL connection is a tokio socket registered with the runtime
//! that opened it, and the pool spawns its maintenance tasks on the runtime current at
//! creation. Running every store call on one dedicated runtime (two worker threads, alive for
//! the whole process) means a connection is never polled from a runtime that did not open it,
//! whichever listener asks. A call from a handler costs one task hand-off.

use std::future::Future;
use std::sync::Arc;

use sidecar_store::{Store, StoreError};

use crate::config::StoreConfig;

/// The open store, shared by the inbound handler, the delivery worker, the reconciler and the
/// admin endpoints (`SidecarState::store`).
pub struct StateStore {
    store: Store,
    runtime: tokio::runtime::Runtime,
    location: String,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("location", &self.location)
            .finish()
    }
}

/// The crate's form of `[store]`.
pub fn backend(config: &StoreConfig) -> sidecar_store::StoreConfig {
    match config {
        StoreConfig::Sqlite(path) => sidecar_store::StoreConfig::sqlite(path),
        StoreConfig::Postgres(url) => sidecar_store::StoreConfig::postgres(url),
    }
}

impl StateStore {
    /// Opens and migrates the store on its own runtime. Blocking: call it at start-up (or
    /// from a CLI command), not from inside another runtime's task.
    pub fn open(config: &StoreConfig) -> Result<Arc<StateStore>, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable {
                op: "start the store runtime",
                detail: e.to_string(),
            })?;
        let cfg = backend(config);
        let location = cfg.display();
        let store = runtime.block_on(Store::open(&cfg))?;
        Ok(Arc::new(StateStore {
            store,
            runtime,
            location,
        }))
    }

    /// Where the store is (no password), for log lines.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Runs `op` on the store's runtime and waits for it from any runtime (or none).
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Store) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.store.clone();
        match self.runtime.spawn(async move { op(store).await }).await {
            Ok(result) => result,
            Err(e) => Err(StoreError::Unavailable {
                op: "run a store task",
                detail: e.to_string(),
            }),
        }
    }

    /// [`StateStore::run`] for synchronous callers (CLI commands, start-up).
    pub fn block_on<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Store) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.runtime.block_on(op(self.store.clone()))
    }
}
