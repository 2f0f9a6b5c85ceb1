//! One lock per payment (issue 22): a lease on `(client_id, paymentRequestId)` that every
//! path which changes a payment's state takes first: the inbound handler's journal write of a
//! PAYMENT_RESULT (with the reconciler's closing hook), the delivery worker's delivery of a
//! queued PAYMENT_RESULT, and the reconciler's recording of an inquired result and its cancel
//! at the close time. So a cancel is decided on the record as it is *under the lock*: a
//! SUCCESS recorded before it means no cancel is sent; a SUCCESS arriving while a cancel is in
//! flight waits for the cancel's answer to be recorded, then is delivered to the app marked
//! [`crate::hooks::CONFLICT_HEADER`]. Alipay's 2020 Java SDK guarded the same race with
//! `LockSupport.tryLock4PaymentStatusUpdate(paymentRequestId)` across nodes.
//!
//! Two halves: in-process ([`LocalLocks`], a keyed async mutex map whose entries are removed
//! when nobody holds or waits for them: bounded by the payments being worked, no leak), and,
//! with a PostgreSQL store, a session-level advisory lock on a 64-bit hash of the pair
//! (`sidecar_store::payment_lock_key`, on a small pool of its own) so that the lock holds
//! across replicas. SQLite is one process per file: the in-process half is the whole lock.
//!
//! A wait is bounded (by the caller; [`WORKER_WAIT`] for the background workers): what a caller does when the lock stays busy is its own
//! (the inbound handler answers 503 so that Alipay re-sends; the reconciler tries on its next
//! turn; the delivery worker on a later one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus::{IntCounterVec, IntGauge, Opts};
use tokio::sync::OwnedMutexGuard;

use crate::store::StateStore;

/// How long the reconciler and the delivery worker wait for a payment's lock before leaving
/// the payment to a later turn (their claim's lease covers this wait). The inbound handler
/// waits its `forward_timeout` and a little more, then answers 503 so that Alipay re-sends.
pub const WORKER_WAIT: Duration = Duration::from_secs(5);

/// Longest `paymentRequestId` locked (Alipay allows 64 characters).
const MAX_ID_LEN: usize = 256;

/// Gap between two tries of the PostgreSQL lock while another replica holds it.
const REMOTE_POLL: Duration = Duration::from_millis(25);

/// Who takes a payment's lock (the `holder` label of the metrics, and log lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    /// The inbound handler recording a PAYMENT_RESULT notification.
    Inbound,
    /// The delivery worker delivering a queued PAYMENT_RESULT.
    Delivery,
    /// The reconciler recording an inquired result, or cancelling.
    Reconcile,
    /// The backfill recording a recovered PAYMENT_RESULT.
    Backfill,
}

impl Holder {
    /// Every holder, for pre-registering metric labels.
    pub const ALL: [Holder; 4] = [
        Holder::Inbound,
        Holder::Delivery,
        Holder::Reconcile,
        Holder::Backfill,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Holder::Inbound => "inbound",
            Holder::Delivery => "delivery",
            Holder::Reconcile => "reconcile",
            Holder::Backfill => "backfill",
        }
    }
}

/// Why a payment's lock was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Another holder kept it for longer than the wait.
    #[error("payment {payment_request_id} is locked by another worker (waited {waited:?})")]
    Busy {
        payment_request_id: String,
        waited: Duration,
    },
    /// The PostgreSQL half could not be asked (the store is down).
    #[error("the payment lock could not be taken in the store: {0}")]
    Store(String),
}

/// Takes payments' locks. Implemented by [`LocalLocks`] (in-process only: SQLite, and the
/// reconciler's unit tests) and [`StoreLocks`] (in-process, then PostgreSQL).
#[async_trait]
pub trait PaymentLocks: Send + Sync + 'static {
    /// Waits (at most `wait`) until this caller holds the lock of
    /// `(client_id, payment_request_id)`.
    async fn lock(
        &self,
        client_id: &str,
        payment_request_id: &str,
        holder: Holder,
        wait: Duration,
    ) -> Result<PaymentLease, LockError>;
}

/// A held payment lock. [`PaymentLease::release`] frees it; dropping it frees it too (the
/// PostgreSQL half is then unlocked in the background).
pub struct PaymentLease {
    local: Option<LocalGuard>,
    remote: Option<(sidecar_store::AdvisoryLease, Arc<StateStore>)>,
}

impl std::fmt::Debug for PaymentLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentLease")
            .field("remote", &self.remote.is_some())
            .finish()
    }
}

impl PaymentLease {
    /// Frees the lock: the PostgreSQL half first (waiting for the unlock), then the
    /// in-process one.
    pub async fn release(mut self) {
        if let Some((lease, store)) = self.remote.take() {
            let _ = store.release_lock(lease).await;
        }
        self.local.take();
    }
}

impl Drop for PaymentLease {
    fn drop(&mut self) {
        if let Some((lease, store)) = self.remote.take() {
            drop(store.release_lock(lease));
        }
    }
}

/// The `paymentRequestId` of a PAYMENT_RESULT notification body (whatever its result): the
/// payment whose lock its journal write and its delivery take. `None` for other types, an
/// unreadable body, or an id longer than Alipay allows.
pub fn payment_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("notifyType")?.as_str()? != "PAYMENT_RESULT" {
        return None;
    }
    let id = v.get("paymentRequestId")?.as_str()?;
    (!id.is_empty() && id.len() <= MAX_ID_LEN).then(|| id.to_string())
}

// ---------------------------------------------------------------------------------------
// In-process

type Key = (String, String);

/// The in-process half: one async mutex per payment being worked or waited for, in a map
/// that drops an entry as soon as nobody holds or waits for it.
#[derive(Default)]
pub struct LocalLocks {
    map: Arc<Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>>,
}

/// A held in-process lock; removes its map entry on drop when nobody waits for it.
struct LocalGuard {
    guard: Option<OwnedMutexGuard<()>>,
    map: Arc<Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>>,
    key: Key,
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        self.guard.take();
        tidy(&self.map, &self.key);
    }
}

/// Removes `key`'s entry when the map holds the only reference (nobody holds or waits).
/// References are only cloned under the map's lock, so the count cannot rise meanwhile.
fn tidy(map: &Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>, key: &Key) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if map.get(key).is_some_and(|m| Arc::strong_count(m) == 1) {
        map.remove(key);
    }
}

impl LocalLocks {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process's one set (every path of the sidecar must share it).
    fn shared() -> Arc<LocalLocks> {
        static SHARED: OnceLock<Arc<LocalLocks>> = OnceLock::new();
        SHARED.get_or_init(|| Arc::new(LocalLocks::new())).clone()
    }

    /// Payments with a holder or a waiter now (the map's size; tests check it drains).
    pub fn entries(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Holders and waiters of one payment's lock now (tests wait for a contender with it).
    pub fn contenders(&self, client_id: &str, payment_request_id: &str) -> usize {
        let key = (client_id.to_string(), payment_request_id.to_string());
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key).map_or(0, |m| Arc::strong_count(m) - 1)
    }

    async fn take(
        &self,
        client_id: &str,
        payment_request_id: &str,
        wait: Duration,
    ) -> Result<LocalGuard, LockError> {
        let key = (client_id.to_string(), payment_request_id.to_string());
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let started = Instant::now();
        match tokio::time::timeout(wait, mutex.lock_owned()).await {
            Ok(guard) => Ok(LocalGuard {
                guard: Some(guard),
                map: self.map.clone(),
                key,
            }),
            Err(_) => {
                tidy(&self.map, &key);
                Err(LockError::Busy {
                    payment_request_id: payment_request_id.to_string(),
                    waited: started.elapsed(),
                })
            }
        }
    }
}

#[async_trait]
impl PaymentLocks for LocalLocks {
    async fn lock(
        &self,
        client_id: &str,
        payment_request_id: &str,
        holder: Holder,
        wait: Duration,
    ) -> Result<PaymentLease, LockError> {
        let _waiting = Waiting::start();
        let local = self
            .take(client_id, payment_request_id, wait)
            .await
            .inspect_err(|_| busy(holder))?;
        Ok(PaymentLease {
            local: Some(local),
            remote: None,
        })
    }
}

// ---------------------------------------------------------------------------------------
// With the store

/// The sidecar's locks: the process's in-process set, then, with PostgreSQL, the store's
/// advisory lock (polled every 25 ms while another replica holds it, within the same wait).
pub struct StoreLocks {
    local: Arc<LocalLocks>,
    store: Arc<StateStore>,
}

/// The payment locks of the sidecar on `store` (all paths share one in-process set).
pub fn for_store(store: &Arc<StateStore>) -> Arc<dyn PaymentLocks> {
    register_metrics();
    Arc::new(StoreLocks {
        local: LocalLocks::shared(),
        store: store.clone(),
    })
}

#[async_trait]
impl PaymentLocks for StoreLocks {
    async fn lock(
        &self,
        client_id: &str,
        payment_request_id: &str,
        holder: Holder,
        wait: Duration,
    ) -> Result<PaymentLease, LockError> {
        let _waiting = Waiting::start();
        let started = Instant::now();
        let local = self
            .local
            .take(client_id, payment_request_id, wait)
            .await
            .inspect_err(|_| busy(holder))?;
        if !self.store.is_postgres() {
            return Ok(PaymentLease {
                local: Some(local),
                remote: None,
            });
        }
        let key = sidecar_store::payment_lock_key(client_id, payment_request_id);
        loop {
            match self.store.try_payment_lock(key).await {
                Ok(Some(lease)) => {
                    return Ok(PaymentLease {
                        local: Some(local),
                        remote: Some((lease, self.store.clone())),
                    })
                }
                Ok(None) if started.elapsed() < wait => tokio::time::sleep(REMOTE_POLL).await,
                Ok(None) => {
                    busy(holder);
                    return Err(LockError::Busy {
                        payment_request_id: payment_request_id.to_string(),
                        waited: started.elapsed(),
                    });
                }
                Err(e) => return Err(LockError::Store(e.to_string())),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Metrics

struct LockMetrics {
    waiting: IntGauge,
    busy: IntCounterVec,
}

fn lock_metrics() -> &'static LockMetrics {
    static M: OnceLock<LockMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let waiting = IntGauge::new(
            "alipay_sidecar_payment_lock_waiting",
            "Callers waiting now for a payment's lock (issue 22: one lock per payment).",
        )
        .expect("the payment lock gauge's definition is valid");
        let busy = IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_payment_lock_busy_total",
                "Payment locks not taken within the wait, by who asked (the inbound handler then answers 503 so that Alipay re-sends; the reconciler and the delivery worker try again later).",
            ),
            &["holder"],
        )
        .expect("the payment lock counter's definition is valid");
        for h in Holder::ALL {
            busy.with_label_values(&[h.as_str()]);
        }
        let registry = crate::metrics::metrics();
        for c in [
            Box::new(waiting.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(busy.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::error!(error = %e, "registering a payment lock metric failed");
            }
        }
        LockMetrics { waiting, busy }
    })
}

/// Registers `alipay_sidecar_payment_lock_*` (every series at zero).
pub fn register_metrics() {
    lock_metrics();
}

fn busy(holder: Holder) {
    lock_metrics()
        .busy
        .with_label_values(&[holder.as_str()])
        .inc();
    tracing::warn!(
        holder = holder.as_str(),
        "a payment's lock stayed busy for the whole wait"
    );
}

/// Counts a caller in `alipay_sidecar_payment_lock_waiting` until it holds the lock or gives up.
struct Waiting;

impl Waiting {
    fn start() -> Self {
        lock_metrics().waiting.inc();
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        lock_metrics().waiting.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn one_holder_per_payment_and_entries_are_removed_when_free() {
        let locks = Arc::new(LocalLocks::new());
        let a = locks
            .lock("T_1", "p-1", Holder::Reconcile, W)
            .await
            .unwrap();
        // another payment, or the same id of another client: not blocked
        let b = locks.lock("T_1", "p-2", Holder::Inbound, W).await.unwrap();
        let c = locks.lock("T_2", "p-1", Holder::Inbound, W).await.unwrap();
        assert_eq!(locks.entries(), 3);
        // the same payment waits until the holder releases
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.lock("T_1", "p-1", Holder::Inbound, W).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        a.release().await;
        let d = waiter.await.unwrap().unwrap();
        drop((b, c));
        assert_eq!(locks.entries(), 1, "only p-1 is held");
        d.release().await;
        assert_eq!(locks.entries(), 0, "no entry left: the map does not grow");
    }

    #[tokio::test]
    async fn a_wait_is_bounded_and_leaves_no_entry() {
        let locks = LocalLocks::new();
        let held = locks
            .lock("T_1", "p-1", Holder::Reconcile, W)
            .await
            .unwrap();
        let short = Duration::from_millis(50);
        let busy = locks
            .lock("T_1", "p-1", Holder::Inbound, short)
            .await
            .unwrap_err();
        assert!(
            matches!(busy, LockError::Busy { ref payment_request_id, .. } if payment_request_id == "p-1")
        );
        assert_eq!(locks.entries(), 1);
        drop(held);
        assert_eq!(locks.entries(), 0);
        // free again
        locks.lock("T_1", "p-1", Holder::Inbound, W).await.unwrap();
    }

    #[test]
    fn only_payment_results_name_a_payment_to_lock() {
        let p = |s: &str| payment_of(s.as_bytes());
        assert_eq!(
            p(
                r#"{"notifyType":"PAYMENT_RESULT","paymentRequestId":"p-1","result":{"resultStatus":"U"}}"#
            ),
            Some("p-1".into())
        );
        assert_eq!(
            p(r#"{"notifyType":"REFUND_RESULT","paymentRequestId":"p-1"}"#),
            None
        );
        assert_eq!(p(r#"{"notifyType":"PAYMENT_RESULT"}"#), None);
        assert_eq!(
            p(r#"{"notifyType":"PAYMENT_RESULT","paymentRequestId":""}"#),
            None
        );
        let long = format!(
            r#"{{"notifyType":"PAYMENT_RESULT","paymentRequestId":"{}"}}"#,
            "x".repeat(300)
        );
        assert_eq!(p(&long), None);
        assert_eq!(p("not json"), None);
    }
}
