//! In-memory fakes of the reconciler's two traits (compiled for tests only): a [`PayStore`]
//! with the store's claim, reschedule and close semantics, and a [`PayApi`] that answers from
//! a script and keeps every call. The state machine's tests (`tests.rs`) run against them,
//! without sockets or a database.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sidecar_store::{NotificationStatus, PayOutcome, PayRecord, Recorded, StoreError};

use super::call::{Called, PayApi};
use super::store::{Closed, PayStore};
use crate::journal::Entry;

fn down() -> StoreError {
    StoreError::Unavailable {
        op: "fake",
        detail: "the fake store is down".into(),
    }
}

/// An open record of merchant `sg` (client id `T_1`, notify URL
/// `https://shop.example/alipay/notify?x=1`), due now, closing at `close_time`.
pub(super) fn open_record(payment_request_id: &str, close_time: i64) -> PayRecord {
    PayRecord {
        id: format!("pay_{payment_request_id}"),
        merchant: "sg".into(),
        client_id: "T_1".into(),
        payment_request_id: payment_request_id.into(),
        payment_notify_url: Some("https://shop.example/alipay/notify?x=1".into()),
        close_time,
        created_at: 0,
        outcome: None,
        finished_at: None,
        next_at: 0,
        inquiries: 0,
        claim_owner: None,
        claim_until: None,
        payment_id: None,
        answers: 0,
    }
}

/// An in-memory [`PayStore`]. `broken` fails every call; `results_broken` fails only the
/// recording of results in the journal.
#[derive(Default)]
pub(super) struct FakePayStore {
    records: Mutex<Vec<PayRecord>>,
    results: Mutex<Vec<Entry>>,
    pub(super) broken: AtomicBool,
    pub(super) results_broken: AtomicBool,
}

impl FakePayStore {
    pub(super) fn with(records: impl IntoIterator<Item = PayRecord>) -> Self {
        let store = Self::default();
        store.records.lock().unwrap().extend(records);
        store
    }

    /// The record `id` as it is now.
    pub(super) fn record(&self, id: &str) -> PayRecord {
        let records = self.records.lock().unwrap();
        records
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .unwrap_or_else(|| panic!("no record {id}"))
    }

    /// Makes the record `id` due now (as if its next inquiry time had come).
    pub(super) fn make_due(&self, id: &str) {
        let mut records = self.records.lock().unwrap();
        if let Some(r) = records.iter_mut().find(|r| r.id == id) {
            r.next_at = 0;
        }
    }

    /// The results recorded for delivery, in order.
    pub(super) fn results(&self) -> Vec<Entry> {
        self.results.lock().unwrap().clone()
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(down());
        }
        Ok(())
    }
}

#[async_trait]
impl PayStore for FakePayStore {
    async fn claim_due(
        &self,
        now: i64,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<PayRecord>, StoreError> {
        self.check()?;
        let mut records = self.records.lock().unwrap();
        let due = records.iter_mut().find(|r| {
            r.outcome.is_none() && r.next_at <= now && r.claim_until.is_none_or(|u| u < now)
        });
        Ok(due.map(|r| {
            r.claim_owner = Some(owner.to_string());
            r.claim_until = Some(now + lease.as_millis() as i64);
            r.clone()
        }))
    }

    async fn open_count(&self) -> Result<i64, StoreError> {
        self.check()?;
        let records = self.records.lock().unwrap();
        Ok(records.iter().filter(|r| r.outcome.is_none()).count() as i64)
    }

    async fn reschedule(
        &self,
        id: &str,
        owner: &str,
        next_at: i64,
        answered: bool,
    ) -> Result<bool, StoreError> {
        self.check()?;
        let mut records = self.records.lock().unwrap();
        let Some(r) = records
            .iter_mut()
            .find(|r| r.id == id && r.outcome.is_none() && r.claim_owner.as_deref() == Some(owner))
        else {
            return Ok(false);
        };
        r.next_at = next_at;
        r.inquiries += 1;
        r.answers += i64::from(answered);
        r.claim_owner = None;
        r.claim_until = None;
        Ok(true)
    }

    async fn finish(&self, id: &str, outcome: PayOutcome, now: i64) -> Result<bool, StoreError> {
        self.check()?;
        let mut records = self.records.lock().unwrap();
        let Some(r) = records
            .iter_mut()
            .find(|r| r.id == id && r.outcome.is_none())
        else {
            return Ok(false);
        };
        r.outcome = Some(outcome);
        r.finished_at = Some(now);
        r.claim_owner = None;
        r.claim_until = None;
        Ok(true)
    }

    async fn close_notified(
        &self,
        merchant: &str,
        payment_request_id: &str,
        now: i64,
    ) -> Result<Closed, StoreError> {
        self.check()?;
        let mut records = self.records.lock().unwrap();
        let found = records
            .iter_mut()
            .find(|r| r.merchant == merchant && r.payment_request_id == payment_request_id);
        Ok(match found {
            None => Closed::NotRecorded,
            Some(r) => match r.outcome {
                Some(o) => Closed::Before(o),
                None => {
                    r.outcome = Some(PayOutcome::Notified);
                    r.finished_at = Some(now);
                    Closed::Now
                }
            },
        })
    }

    async fn record_result(&self, entry: Entry) -> Result<Recorded, StoreError> {
        self.check()?;
        if self.results_broken.load(Ordering::SeqCst) {
            return Err(down());
        }
        let event_id = entry.key.event_id();
        let mut results = self.results.lock().unwrap();
        let copies = results
            .iter()
            .filter(|e| e.key.event_id() == event_id)
            .count() as i64;
        let first_seen = entry.now;
        if copies == 0 {
            results.push(entry);
        }
        Ok(Recorded {
            event_id,
            status: NotificationStatus::Pending,
            first_seen,
            inserted: copies == 0,
            already_delivered: false,
            seen_count: copies + 1,
        })
    }

    async fn closed_outcome(
        &self,
        merchant: &str,
        payment_request_id: &str,
    ) -> Result<Option<PayOutcome>, StoreError> {
        self.check()?;
        let records = self.records.lock().unwrap();
        Ok(records
            .iter()
            .find(|r| r.merchant == merchant && r.payment_request_id == payment_request_id)
            .and_then(|r| r.outcome))
    }
}

/// One call the fake API received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Call {
    pub(super) merchant: String,
    pub(super) client_id: String,
    pub(super) tail: String,
    pub(super) body: String,
}

/// A [`PayApi`] answering each call with the next scripted answer (a verified body, or a
/// failure when the script is out).
#[derive(Default)]
pub(super) struct ScriptedApi {
    script: Mutex<VecDeque<Called>>,
    calls: Mutex<Vec<Call>>,
    /// A call to this tail waits for [`ScriptedApi::release`] (a gateway holding its answer).
    held: Mutex<Option<String>>,
    reached: tokio::sync::Notify,
    released: tokio::sync::Notify,
}

impl ScriptedApi {
    /// Answers with these verified bodies, in order.
    pub(super) fn verified<'a>(answers: impl IntoIterator<Item = &'a str>) -> Self {
        let api = Self::default();
        api.script.lock().unwrap().extend(
            answers
                .into_iter()
                .map(|a| Called::Verified(Bytes::copy_from_slice(a.as_bytes()))),
        );
        api
    }

    /// The calls made so far.
    pub(super) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The tails called so far.
    pub(super) fn tails(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.tail).collect()
    }

    /// From now on a call to `tail` holds its answer until [`ScriptedApi::release`].
    pub(super) fn hold(&self, tail: &str) {
        *self.held.lock().unwrap() = Some(tail.to_string());
    }

    /// Returns once a held call has arrived (and waits for its release).
    pub(super) async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the held call answer.
    pub(super) fn release(&self) {
        self.released.notify_one();
    }
}

#[async_trait]
impl PayApi for ScriptedApi {
    async fn call(&self, merchant: &str, client_id: &str, tail: &str, body: String) -> Called {
        self.calls.lock().unwrap().push(Call {
            merchant: merchant.into(),
            client_id: client_id.into(),
            tail: tail.into(),
            body,
        });
        let held = self.held.lock().unwrap().as_deref() == Some(tail);
        if held {
            self.reached.notify_one();
            self.released.notified().await;
        }
        self.script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Called::Failed("HTTP 504 (no verified answer)".into()))
    }
}
