//! The sidecar's handle on its state store (`[store]`, crate `sidecar-store`).
//!
//! Why a runtime of its own: pingora runs every listener and background service on its own
//! tokio runtime, while a PostgreSQL connection is a tokio socket registered with the runtime
//! that opened it, and the pool spawns its maintenance tasks on the runtime current at
//! creation. Running every store call on one dedicated runtime (two worker threads, alive for
//! the whole process) means a connection is never polled from a runtime that did not open it,
//! whichever listener asks. A call from a handler costs one task hand-off.
//!
//! # PostgreSQL down (issue 18 L5)
//!
//! The store must never be the reason a payment result is lost, nor make every notification
//! wait. So, for PostgreSQL:
//! * **fail fast**: a call waits at most `[store] timeout` (default 2 s) for a connection;
//!   once a call found the store unavailable, it is marked *down* and every later call fails
//!   at once (no wait) until a probe on the store's runtime (every [`PROBE_EVERY`]) reaches it
//!   again. While down, notifications flow in line without the journal (in-line mode), or get
//!   503 `SIDECAR_STORE_UNAVAILABLE` with `acknowledge = "after-store"` (fail closed: Alipay
//!   re-sends);
//! * **start without it**: a sidecar started while PostgreSQL is unreachable starts anyway
//!   (a WARN line), down, and opens (and migrates) the store when the probe reaches it;
//! * it says so: `alipay_sidecar_store_up` (1/0) and the `/readyz` body.
//!
//! Other open errors (login refused, no such database, a schema from a newer version, an
//! SQLite folder missing) are configuration errors: the sidecar does not start (exit 2).
//! SQLite is a local file: a busy or failing file is not "down" and is not probed; each call
//! reports its own error.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use prometheus::IntGauge;
use sidecar_store::{Store, StoreError};

use crate::config::StoreConfig;

/// How often a down store is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The open store, shared by the inbound handler, the delivery worker, the reconciler and the
/// admin endpoints (`SidecarState::store`).
pub struct StateStore {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Runtime,
}

struct Inner {
    config: sidecar_store::StoreConfig,
    timeout: Duration,
    location: String,
    /// `None` while a PostgreSQL store that was unreachable at start has not been opened.
    store: RwLock<Option<Store>>,
    /// PostgreSQL found unavailable: calls fail at once until the probe reaches it.
    down: AtomicBool,
    /// The probe task is running.
    probing: AtomicBool,
    /// PostgreSQL: the connections that hold payment locks (`crate::paylock`), opened on
    /// first use.
    lock_pool: OnceLock<Option<sidecar_store::PaymentLockPool>>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("location", &self.inner.location)
            .field("up", &self.is_up())
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

/// `alipay_sidecar_store_up`: 1 while the store answers, 0 while it is down.
fn up_gauge() -> &'static IntGauge {
    static G: OnceLock<IntGauge> = OnceLock::new();
    G.get_or_init(|| {
        let g = IntGauge::new(
            "alipay_sidecar_store_up",
            "1 while the state store answers, 0 while it is unreachable (notifications then flow in line without the journal, or get 503 with acknowledge = after-store).",
        )
        .expect("the store gauge's definition is valid");
        if let Err(e) = crate::metrics::metrics().register(Box::new(g.clone())) {
            tracing::error!(error = %e, "registering alipay_sidecar_store_up failed");
        }
        g
    })
}

/// Registers `alipay_sidecar_store_up` (for checks that dashboards and alerts only use names
/// the code exposes).
pub fn register_metrics() {
    up_gauge();
}

fn runtime() -> Result<tokio::runtime::Runtime, StoreError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("store")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Unavailable {
            op: "start the store runtime",
            detail: e.to_string(),
        })
}

/// What `check-config` checks of `[store]`: the checks `run` makes before it opens the store
/// ([`sidecar_store::check_store`]: the same code, writing nothing). `Ok(Some(warning))`: a
/// PostgreSQL server that does not answer, which `run` starts without.
pub fn check(config: &StoreConfig, timeout: Duration) -> Result<Option<String>, StoreError> {
    let runtime = runtime()?;
    match runtime.block_on(sidecar_store::check_store(&backend(config), timeout)) {
        Ok(()) => Ok(None),
        Err(e @ StoreError::PostgresUnreachable { .. }) => Ok(Some(format!(
            "{e}; run starts without the store and opens it when it answers"
        ))),
        Err(e) => Err(e),
    }
}

impl StateStore {
    /// Opens and migrates the store on its own runtime; any failure is an error (the
    /// `notifications` CLI). Blocking: call it at start-up or from a CLI command, not from
    /// inside another runtime's task.
    pub fn open(config: &StoreConfig, timeout: Duration) -> Result<Arc<StateStore>, StoreError> {
        let runtime = runtime()?;
        let cfg = backend(config);
        let store = runtime.block_on(Store::open_with_timeout(&cfg, timeout))?;
        Ok(Self::with(runtime, cfg, timeout, Some(store)))
    }

    /// [`StateStore::open`] for the server: a PostgreSQL store that is unreachable now is not
    /// an error; the sidecar starts with the store down and opens it when it comes back (see
    /// the module doc). Every other failure is returned.
    pub fn open_or_later(
        config: &StoreConfig,
        timeout: Duration,
    ) -> Result<Arc<StateStore>, StoreError> {
        let runtime = runtime()?;
        let cfg = backend(config);
        let store = match runtime.block_on(Store::open_with_timeout(&cfg, timeout)) {
            Ok(store) => Some(store),
            Err(e @ StoreError::PostgresUnreachable { .. }) => {
                tracing::warn!(store = %cfg.display(), error = %e, "the state store is unreachable at start; starting without it (notifications flow in line without de-duplication, or get 503 with acknowledge = after-store) and opening it when it answers");
                None
            }
            Err(e) => return Err(e),
        };
        let s = Self::with(runtime, cfg, timeout, store);
        if s.inner.store.read().map(|g| g.is_none()).unwrap_or(true) {
            s.mark_down();
        }
        Ok(s)
    }

    fn with(
        runtime: tokio::runtime::Runtime,
        config: sidecar_store::StoreConfig,
        timeout: Duration,
        store: Option<Store>,
    ) -> Arc<StateStore> {
        up_gauge().set(1);
        let location = config.display();
        Arc::new(StateStore {
            inner: Arc::new(Inner {
                config,
                timeout,
                location,
                store: RwLock::new(store),
                down: AtomicBool::new(false),
                probing: AtomicBool::new(false),
                lock_pool: OnceLock::new(),
            }),
            runtime,
        })
    }

    /// Where the store is (no password), for log lines.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// Whether the store answers (false while PostgreSQL is down: calls fail at once).
    pub fn is_up(&self) -> bool {
        !self.inner.down.load(Ordering::SeqCst)
    }

    fn unavailable(&self) -> StoreError {
        StoreError::Unavailable {
            op: "use the store",
            detail: format!(
                "{} is unreachable; probing it every {}s",
                self.inner.location,
                PROBE_EVERY.as_secs()
            ),
        }
    }

    /// Runs `op` on the store's runtime and waits for it from any runtime (or none). While
    /// the store is down, fails at once.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Store) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        if !self.is_up() {
            return Err(self.unavailable());
        }
        let Some(store) = self.current() else {
            return Err(self.unavailable());
        };
        let result = match self.runtime.spawn(async move { op(store).await }).await {
            Ok(result) => result,
            Err(e) => Err(StoreError::Unavailable {
                op: "run a store task",
                detail: e.to_string(),
            }),
        };
        if let Err(e) = &result {
            if e.is_unavailable() && self.is_postgres() {
                self.mark_down();
            }
        }
        result
    }

    /// [`StateStore::run`] for synchronous callers (CLI commands, start-up).
    pub fn block_on<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Store) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let Some(store) = self.current() else {
            return Err(self.unavailable());
        };
        self.runtime.block_on(op(store))
    }

    fn current(&self) -> Option<Store> {
        self.inner.store.read().ok().and_then(|g| g.clone())
    }

    /// One try at the PostgreSQL advisory lock of `key` (`crate::paylock`): `Ok(None)` when
    /// another session holds it. The lease must be released (or dropped) through
    /// [`StateStore::release_lock`], on the store's runtime. SQLite: always `Ok(None)`; do
    /// not call it then.
    pub async fn try_payment_lock(
        &self,
        key: i64,
    ) -> Result<Option<sidecar_store::AdvisoryLease>, StoreError> {
        let inner = self.inner.clone();
        self.run(move |store| async move {
            let pool = inner
                .lock_pool
                .get_or_init(|| store.payment_lock_pool(inner.timeout));
            match pool {
                Some(pool) => pool.try_lock(key).await,
                None => Ok(None),
            }
        })
        .await
    }

    /// Unlocks `lease` on the store's runtime (its connection lives there); a failure closes
    /// the connection, which frees the lock too. Awaiting the handle waits for the unlock;
    /// dropping it lets the unlock run on its own (from a `Drop`).
    pub fn release_lock(&self, lease: sidecar_store::AdvisoryLease) -> tokio::task::JoinHandle<()> {
        self.runtime.spawn(async move {
            if let Err(e) = lease.release().await {
                tracing::debug!(error = %e, "releasing a payment lock failed; its connection was closed, which frees it");
            }
        })
    }

    /// Whether the store is PostgreSQL (shared by replicas).
    pub fn is_postgres(&self) -> bool {
        matches!(
            self.inner.config,
            sidecar_store::StoreConfig::Postgres { .. }
        )
    }

    /// Marks the store down (calls fail at once) and starts the probe that marks it up again.
    fn mark_down(&self) {
        if !self.inner.down.swap(true, Ordering::SeqCst) {
            up_gauge().set(0);
            tracing::warn!(store = %self.inner.location, probe_every_s = PROBE_EVERY.as_secs(), "the state store is unavailable; store calls fail at once until it answers again");
        }
        if self.inner.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = self.inner.clone();
        self.runtime.spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                if inner.probe().await {
                    inner.probing.store(false, Ordering::SeqCst);
                    inner.down.store(false, Ordering::SeqCst);
                    up_gauge().set(1);
                    tracing::info!(store = %inner.location, "the state store answers again");
                    return;
                }
            }
        });
    }
}

impl Inner {
    /// One probe: a `SELECT 1` on the open store, or opening (and migrating) it when it was
    /// unreachable at start.
    async fn probe(&self) -> bool {
        let current = self.store.read().ok().and_then(|g| g.clone());
        match current {
            Some(store) => tokio::time::timeout(self.timeout * 2, store.ping())
                .await
                .is_ok_and(|r| r.is_ok()),
            None => {
                let opened = tokio::time::timeout(
                    self.timeout * 4,
                    Store::open_with_timeout(&self.config, self.timeout),
                )
                .await;
                match opened {
                    Ok(Ok(store)) => {
                        if let Ok(mut g) = self.store.write() {
                            *g = Some(store);
                        }
                        tracing::info!(store = %self.location, "state store open (it was unreachable at start)");
                        true
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(store = %self.location, error = %e, "the state store is still unreachable");
                        false
                    }
                    Err(_) => false,
                }
            }
        }
    }
}
