//! Automatic pruning of the state store (`[store] retention`, issue 18 L3).
//!
//! A background service of every sidecar with a store: shortly after start and then every
//! [`PRUNE_EVERY`], it deletes delivered notifications and closed pay records that finished
//! longer than `retention` ago (default 30 days). Pending and dead notifications and open pay
//! records are never deleted (the rule is in `sidecar_store`'s `retention` module; the
//! `notifications prune` CLI applies the same one on demand). With PostgreSQL every replica
//! prunes; the deletes are idempotent, so that costs only a few statements.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::{IntCounterVec, Opts};

use crate::exchange::now_millis;
use crate::store::StateStore;

/// How often the store is pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The first pruning after start (not at once: start-up has other work).
const FIRST_AFTER: Duration = Duration::from_secs(2);

fn pruned_counter() -> &'static IntCounterVec {
    static C: OnceLock<IntCounterVec> = OnceLock::new();
    C.get_or_init(|| {
        let c = IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_store_pruned_total",
                "Rows deleted by retention ([store] retention), by kind: notifications (delivered), pays (closed pay records).",
            ),
            &["kind"],
        )
        .expect("the pruning counter's definition is valid");
        if let Err(e) = crate::metrics::metrics().register(Box::new(c.clone())) {
            tracing::error!(error = %e, "registering alipay_sidecar_store_pruned_total failed");
        }
        for kind in ["notifications", "pays"] {
            c.with_label_values(&[kind]);
        }
        c
    })
}

/// Registers `alipay_sidecar_store_pruned_total` (all series at zero).
pub fn register_metrics() {
    pruned_counter();
}

/// The pruning service.
#[derive(Debug)]
pub struct Pruner {
    store: Arc<StateStore>,
    retention: Duration,
}

impl Pruner {
    /// Prunes `store` of what finished more than `retention` ago.
    pub fn new(store: Arc<StateStore>, retention: Duration) -> Self {
        register_metrics();
        Self { store, retention }
    }

    /// One pruning (also what the first tick does).
    pub async fn prune_once(&self) {
        let age = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let before = now_millis().saturating_sub(age);
        match self
            .store
            .run(move |s| async move { s.prune(before, false).await })
            .await
        {
            Ok(n) => {
                let c = pruned_counter();
                c.with_label_values(&["notifications"])
                    .inc_by(n.notifications);
                c.with_label_values(&["pays"]).inc_by(n.pays);
                if n.notifications + n.pays > 0 {
                    tracing::info!(notifications = n.notifications, pays = n.pays, retention = %humantime::format_duration(self.retention), "store pruned: delivered notifications and closed pay records past the retention");
                }
            }
            Err(e) => {
                tracing::warn!(store = self.store.location(), error = %e, "pruning the store failed; trying again later")
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Pruner {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut wait = FIRST_AFTER;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            self.prune_once().await;
            wait = PRUNE_EVERY;
        }
    }
}
