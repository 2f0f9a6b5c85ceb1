//! The pay records as the reconciler needs them, as a trait: the reconciler's state machine
//! (work, expire, conclude, reschedule) and the closing hook are unit-tested against an
//! in-memory fake (`reconcile::testing`), without sockets or a database; [`StateStore`] is
//! the production implementation (crate `sidecar-store`, on the store's own runtime), the way
//! [`crate::journal::Journal`] is the inbound handler's.

use std::time::Duration;

use async_trait::async_trait;
use sidecar_store::{PayOutcome, PayOwner, PayRecord, Recorded, StoreError};

use crate::journal::{Entry, Journal};
use crate::store::StateStore;

/// What closing a pay record on a final PAYMENT_RESULT found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The record was open and is now closed (outcome `notified`).
    Now,
    /// The record was closed before, with this outcome.
    Before(PayOutcome),
    /// No record of this payment (not reconciled, or pruned).
    NotRecorded,
}

/// The pay records and the notification journal, as the reconciler uses them.
#[async_trait]
pub trait PayStore: Send + Sync + 'static {
    /// Claims one due open record for `owner` for `lease` (one replica per record).
    async fn claim_due(
        &self,
        now: i64,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<PayRecord>, StoreError>;

    /// Open records (the `alipay_sidecar_reconcile_open_pays` gauge).
    async fn open_count(&self) -> Result<i64, StoreError>;

    /// Releases `owner`'s claim with the next inquiry at `next_at` (one more inquiry, one more
    /// verified answer when `answered`). False when the record was closed or taken over.
    async fn reschedule(
        &self,
        id: &str,
        owner: &str,
        next_at: i64,
        answered: bool,
    ) -> Result<bool, StoreError>;

    /// Closes a worked record with `outcome`. False when it was closed meanwhile.
    async fn finish(&self, id: &str, outcome: PayOutcome, now: i64) -> Result<bool, StoreError>;

    /// Closes `merchant`'s record of `payment_request_id` as `notified`.
    async fn close_notified(
        &self,
        merchant: &str,
        payment_request_id: &str,
        now: i64,
    ) -> Result<Closed, StoreError>;

    /// Records a reconciled result in the notification journal (the delivery worker delivers
    /// it), or finds the same event already recorded.
    async fn record_result(&self, entry: Entry) -> Result<Recorded, StoreError>;

    /// The outcome `merchant`'s record of `payment_request_id` was closed with; `None` while
    /// it is open (or when there is none). Read under the payment's lock just before a cancel.
    async fn closed_outcome(
        &self,
        merchant: &str,
        payment_request_id: &str,
    ) -> Result<Option<PayOutcome>, StoreError>;
}

#[async_trait]
impl PayStore for StateStore {
    async fn claim_due(
        &self,
        now: i64,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<PayRecord>, StoreError> {
        let owner = owner.to_string();
        let mut claimed = self
            .run(move |s| async move { s.claim_due_pays(now, &owner, lease, 1).await })
            .await?;
        Ok((!claimed.is_empty()).then(|| claimed.remove(0)))
    }

    async fn open_count(&self) -> Result<i64, StoreError> {
        self.run(|s| async move { s.open_pay_count().await }).await
    }

    async fn reschedule(
        &self,
        id: &str,
        owner: &str,
        next_at: i64,
        answered: bool,
    ) -> Result<bool, StoreError> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.run(move |s| async move {
            s.reschedule_pay_answered(&id, &owner, next_at, answered)
                .await
        })
        .await
    }

    async fn finish(&self, id: &str, outcome: PayOutcome, now: i64) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.run(move |s| async move { s.finish_pay(&id, outcome, now).await })
            .await
    }

    async fn close_notified(
        &self,
        merchant: &str,
        payment_request_id: &str,
        now: i64,
    ) -> Result<Closed, StoreError> {
        let (merchant, key) = (merchant.to_string(), payment_request_id.to_string());
        self.run(move |store| async move {
            let owner = PayOwner::Merchant(&merchant);
            if store
                .close_pay(owner, &key, PayOutcome::Notified, now)
                .await?
            {
                return Ok(Closed::Now);
            }
            Ok(match store.closed_pay_outcome(owner, &key).await? {
                Some(recorded) => Closed::Before(recorded),
                None => Closed::NotRecorded,
            })
        })
        .await
    }

    async fn record_result(&self, entry: Entry) -> Result<Recorded, StoreError> {
        Journal::record(self, entry).await
    }

    async fn closed_outcome(
        &self,
        merchant: &str,
        payment_request_id: &str,
    ) -> Result<Option<PayOutcome>, StoreError> {
        let (merchant, key) = (merchant.to_string(), payment_request_id.to_string());
        self.run(move |store| async move {
            store
                .closed_pay_outcome(PayOwner::Merchant(&merchant), &key)
                .await
        })
        .await
    }
}
