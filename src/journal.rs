//! The notification journal as the inbound handler and the delivery worker need it (issue
//! 13): record a verified notification, report what the app answered, count what happened.
//!
//! Why traits: the inbound handler ([`crate::inbound::Inbound`]) decides, per notification,
//! between delivering, suppressing a re-send, acknowledging after the commit and letting the
//! notification flow past a broken store. Every one of those branches is unit-tested against
//! an in-memory journal, without sockets or a database; [`StateStore`] is the production
//! implementation (crate `sidecar-store`, on the store's own runtime). The delivery worker
//! ([`crate::delivery`]) takes the queued rows through [`DeliveryQueue`] for the same reason:
//! its state machine (deliver, retry on the schedule, dead at `max_delivery_age`) is
//! unit-tested against an in-memory queue.
//!
//! What is recorded: the de-duplication key ([`EventKey::from_notification`]: client id, the
//! notify path without its query, `notifyType`, the business id, the result), the exact body
//! bytes, and the headers a later delivery carries (what the app would have received in line,
//! minus `Host` and the framing). The event id, `X-Alipay-Sidecar-Event-Id`, is derived from
//! the key alone, so it is the same on every re-send, every replica and after a restart.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::{IntCounterVec, Opts};
use sidecar_store::{Delivery, EventKey, NewNotification, Recorded, StoreError};

use crate::store::StateStore;

// re-exported for the delivery worker and the reconciler, which name them here; the names
// live in crate::headers

/// One verified notification to record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The merchant's name in the config.
    pub merchant: String,
    /// The de-duplication key.
    pub key: EventKey,
    /// The exact body bytes (delivered as they are).
    pub body: Bytes,
    /// The headers a later delivery carries.
    pub headers: Vec<(String, String)>,
    /// Now, UTC milliseconds.
    pub now: i64,
    /// Store-and-forward: queue it for the delivery worker at this time.
    pub deliver_at: Option<i64>,
}

/// The journal the inbound handler writes to.
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Where the store is (no password), for log lines.
    fn location(&self) -> &str;

    /// Records the notification, or finds the event already recorded (a re-send).
    async fn record(&self, entry: Entry) -> Result<Recorded, StoreError>;

    /// The app answered 2xx for this event: later re-sends are duplicates.
    async fn delivered(&self, event_id: &str, now: i64) -> Result<(), StoreError>;

    /// An in-line delivery failed (Alipay re-sends it): count it and keep the error.
    async fn failed(&self, event_id: &str, error: &str, now: i64) -> Result<(), StoreError>;
}

#[async_trait]
impl Journal for StateStore {
    fn location(&self) -> &str {
        StateStore::location(self)
    }

    async fn record(&self, entry: Entry) -> Result<Recorded, StoreError> {
        self.run(move |store| async move {
            store
                .record_notification(&NewNotification {
                    merchant: &entry.merchant,
                    key: &entry.key,
                    body: &entry.body,
                    headers: &entry.headers,
                    now: entry.now,
                    deliver_at: entry.deliver_at,
                })
                .await
        })
        .await
    }

    async fn delivered(&self, event_id: &str, now: i64) -> Result<(), StoreError> {
        let id = event_id.to_string();
        self.run(move |store| async move { store.mark_delivered(&id, now).await.map(drop) })
            .await
    }

    async fn failed(&self, event_id: &str, error: &str, now: i64) -> Result<(), StoreError> {
        let (id, error) = (event_id.to_string(), error.to_string());
        self.run(move |store| async move {
            store
                .record_attempt_failure(&id, &error, None, now)
                .await
                .map(drop)
        })
        .await
    }
}

/// The queue of deliveries the delivery worker works.
#[async_trait]
pub trait DeliveryQueue: Send + Sync + 'static {
    /// Where the store is (no password), for log lines.
    fn location(&self) -> &str;

    /// Claims up to `limit` due rows for `owner` for `lease` (one replica per row).
    async fn claim_due(
        &self,
        now: i64,
        owner: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// The app answered 2xx: delivered (releases the claim).
    async fn mark_delivered(&self, event_id: &str, now: i64) -> Result<(), StoreError>;

    /// An attempt failed: the next one at `next_at` (releases the claim).
    async fn retry_at(
        &self,
        event_id: &str,
        error: &str,
        next_at: i64,
        now: i64,
    ) -> Result<(), StoreError>;

    /// `max_delivery_age` passed: dead (releases the claim).
    async fn mark_dead(&self, event_id: &str, error: &str, now: i64) -> Result<(), StoreError>;
}

#[async_trait]
impl DeliveryQueue for StateStore {
    fn location(&self) -> &str {
        StateStore::location(self)
    }

    async fn claim_due(
        &self,
        now: i64,
        owner: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let owner = owner.to_string();
        self.run(move |s| async move { s.claim_due_deliveries(now, &owner, lease, limit).await })
            .await
    }

    async fn mark_delivered(&self, event_id: &str, now: i64) -> Result<(), StoreError> {
        Journal::delivered(self, event_id, now).await
    }

    async fn retry_at(
        &self,
        event_id: &str,
        error: &str,
        next_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let (id, error) = (event_id.to_string(), error.to_string());
        self.run(move |s| async move {
            s.record_attempt_failure(&id, &error, Some(next_at), now)
                .await
                .map(drop)
        })
        .await
    }

    async fn mark_dead(&self, event_id: &str, error: &str, now: i64) -> Result<(), StoreError> {
        let (id, error) = (event_id.to_string(), error.to_string());
        self.run(move |s| async move { s.mark_dead(&id, &error, now).await.map(drop) })
            .await
    }
}

/// `Arc<StateStore>` is what the sidecar state holds.
pub fn from_store(store: &Arc<StateStore>) -> Arc<dyn Journal> {
    store.clone()
}

/// How a queued delivery ended (`alipay_sidecar_deliveries_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The app answered 2xx.
    Delivered,
    /// The app did not take it; another attempt is scheduled.
    Failed,
    /// `max_delivery_age` passed: given up (`notifications retry --dead` revives it).
    Dead,
}

impl DeliveryOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Failed => "failed",
            DeliveryOutcome::Dead => "dead",
        }
    }
}

/// The journal's metrics, registered in the sidecar's one registry on first use (at start-up
/// when a store is configured, so the series exist before the first event).
#[derive(Debug)]
pub struct JournalMetrics {
    recorded: IntCounterVec,
    duplicates: IntCounterVec,
    store_errors: IntCounterVec,
    deliveries: IntCounterVec,
}

impl JournalMetrics {
    fn new() -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        Ok(Self {
            recorded: counter(
                "alipay_sidecar_notifications_recorded_total",
                "Verified notifications recorded in the journal; copy=first for a new event, \
                 resend for another copy of a recorded one.",
                &["merchant", "copy"],
            )?,
            duplicates: counter(
                "alipay_sidecar_notifications_duplicate_total",
                "Re-sends of an event the app already took (or, with acknowledge = after-store, \
                 already stored), acknowledged by the sidecar without a new delivery.",
                &["merchant"],
            )?,
            store_errors: counter(
                "alipay_sidecar_store_errors_total",
                "Store operations that failed (the notification then flowed without the \
                 journal, or got 503 with acknowledge = after-store).",
                &["op"],
            )?,
            deliveries: counter(
                "alipay_sidecar_deliveries_total",
                "Queued deliveries (store-and-forward, replays, reconciled results) by outcome.",
                &["merchant", "outcome"],
            )?,
        })
    }

    /// One recorded copy.
    pub fn recorded(&self, merchant: &str, first: bool) {
        let copy = if first { "first" } else { "resend" };
        self.recorded.with_label_values(&[merchant, copy]).inc();
    }

    /// One suppressed re-send.
    pub fn duplicate(&self, merchant: &str) {
        self.duplicates.with_label_values(&[merchant]).inc();
    }

    /// One failed store operation (`op` is a fixed name).
    pub fn store_error(&self, op: &'static str) {
        self.store_errors.with_label_values(&[op]).inc();
    }

    /// One queued delivery attempt.
    pub fn delivery(&self, merchant: &str, outcome: DeliveryOutcome) {
        self.deliveries
            .with_label_values(&[merchant, outcome.as_str()])
            .inc();
    }

    /// Creates the series of `merchants` at zero (an alert on `increase(...) > 0` must see
    /// the first duplicate, dead delivery or store error).
    pub fn register_merchants<'a>(&self, merchants: impl IntoIterator<Item = &'a str>) {
        for m in merchants {
            self.duplicates.with_label_values(&[m]);
            for first in ["first", "resend"] {
                self.recorded.with_label_values(&[m, first]);
            }
            for o in [
                DeliveryOutcome::Delivered,
                DeliveryOutcome::Failed,
                DeliveryOutcome::Dead,
            ] {
                self.deliveries.with_label_values(&[m, o.as_str()]);
            }
        }
        for op in STORE_OPS {
            self.store_errors.with_label_values(&[op]);
        }
    }
}

/// The `op` label values of `alipay_sidecar_store_errors_total`.
pub const STORE_OPS: [&str; 4] = ["record", "mark_delivered", "record_failure", "claim"];

/// The process-wide journal metrics.
pub fn metrics() -> &'static JournalMetrics {
    static M: OnceLock<JournalMetrics> = OnceLock::new();
    M.get_or_init(|| {
        // Only a definition bug in this file can fail; the unit tests build the set.
        let m = JournalMetrics::new().unwrap_or_else(|e| panic!("journal metrics: {e}"));
        for c in [&m.recorded, &m.duplicates, &m.store_errors, &m.deliveries] {
            if let Err(e) = crate::metrics::metrics().register(Box::new(c.clone())) {
                tracing::error!(error = %e, "registering a journal metric failed");
            }
        }
        m
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_defined_and_documented() {
        let m = JournalMetrics::new().expect("definitions");
        m.register_merchants(["default"]);
        let readme = include_str!("../docs/notifications.md");
        for name in [
            "alipay_sidecar_notifications_recorded_total",
            "alipay_sidecar_notifications_duplicate_total",
            "alipay_sidecar_store_errors_total",
            "alipay_sidecar_deliveries_total",
        ] {
            assert!(
                readme.contains(name),
                "docs/notifications.md does not document {name}"
            );
        }
    }
}
