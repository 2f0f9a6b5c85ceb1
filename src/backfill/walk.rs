//! One walk of a merchant's notification event log: `inquireNotificationList` page after page
//! (`startingAfter` = the last page's `nextStartingAfter`) through [`PayApi`] (signed, answer
//! verified, like the reconciler's inquiries); each event's journal key is computed from
//! `notificationData` and an event the journal lacks is recorded for the delivery worker.
//!
//! A recovered PAYMENT_RESULT changes its payment's state (the journal, and the reconciler's
//! pay record through its closing hook), so it is recorded under the payment's lock
//! ([`crate::paylock`], holder `backfill`), like the inbound handler's write of the same
//! notification: never while a cancel of that payment is in flight. A lock still busy after
//! [`WORKER_WAIT`] leaves the event for the next walk (this walk ends incomplete, so the
//! cursor does not move past it).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use sidecar_store::{pay_id, EventKey};

use super::raw;
use crate::exchange::now_millis;
use crate::handler::Marker;
use crate::headers::{CONFLICT_HEADER, DELIVER_PATH_HEADER, VERIFIED_HEADER};
use crate::hooks::NotificationHook;
use crate::journal::{Entry, Journal};
use crate::paylock::{payment_of, Holder, LockError, PaymentLocks, WORKER_WAIT};
use crate::reconcile::{notify_path, Called, PayApi, SOURCE_HEADER};
use crate::store::StateStore;

/// The list API, after `/ams/api/` (or `/ams/sandbox/api/`).
pub const LIST_TAIL: &str = "v1/notification/inquireNotificationList";
/// The value of `X-Alipay-Sidecar-Source` on a recovered event.
pub const SOURCE_EVENT_LOG: &str = "inquireNotificationList";
/// Events asked per page.
pub const PAGE_LIMIT: u64 = 100;
/// A walk stops (incomplete) after this many pages: a bound against a gateway that never
/// says `hasMore: false`.
const MAX_PAGES: usize = 10_000;

/// Whose log is walked.
#[derive(Debug, Clone)]
pub struct Merchant {
    /// Name in the config.
    pub name: String,
    /// Its client id (the events of this client id).
    pub client_id: String,
}

/// Record missing events, or only count them (`--dry-run`, `audit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Record missing events for delivery (the worker, `notifications backfill`).
    Recover,
    /// Only look.
    Look,
}

/// What one walk found for one notify type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TypeCounts {
    /// Events in Alipay's log.
    pub at_alipay: u64,
    /// Already in the journal before this walk.
    pub journaled: u64,
    /// Of those, delivered to the app.
    pub delivered: u64,
    /// Not in the journal before this walk.
    pub missing: u64,
    /// Missing ones recorded now for delivery.
    pub recovered: u64,
    /// Missing ones that could not be recorded.
    pub failed: u64,
}

/// What one walk found.
#[derive(Debug, Clone, Default)]
pub struct Walk {
    /// By `notifyType`.
    pub by_type: BTreeMap<String, TypeCounts>,
    /// The walk reached the list's end (`hasMore` false).
    pub complete: bool,
    /// Why it stopped early, or why it must be walked again (a payment's lock was busy).
    pub error: Option<String>,
    /// An event to try again on the next walk (its payment's lock stayed busy).
    retry: Option<String>,
}

impl Walk {
    /// Events missing from the journal (before this walk), all types.
    pub fn missing(&self) -> u64 {
        self.by_type.values().map(|c| c.missing).sum()
    }
}

/// `2026-12-07T05:40:00Z` for UTC milliseconds.
pub fn iso_utc(ms: i64) -> String {
    let t = crate::protocol::format_iso8601(ms);
    t.strip_suffix("+00:00")
        .map(|s| format!("{s}Z"))
        .unwrap_or(t)
}

/// Walks event logs and records what the journal lacks.
pub struct Walker {
    store: Arc<StateStore>,
    api: Arc<dyn PayApi>,
    deliver_path: Option<String>,
    locks: Option<Arc<dyn PaymentLocks>>,
    hook: Option<Arc<dyn NotificationHook>>,
}

/// Why a missing event was not recorded.
enum NotRecorded {
    /// Its payment's lock stayed busy: tried again on the next walk.
    Busy(String),
    /// It cannot be recorded (counted `failed`).
    Failed(String),
}

impl Walker {
    /// A walker on `store` calling through `api`; `deliver_path` is `[reconcile] deliver_path`.
    pub fn new(store: Arc<StateStore>, api: Arc<dyn PayApi>, deliver_path: Option<String>) -> Self {
        Self {
            store,
            api,
            deliver_path,
            locks: None,
            hook: None,
        }
    }

    /// Records a recovered PAYMENT_RESULT under its payment's lock (see the module doc).
    pub fn with_locks(mut self, locks: Arc<dyn PaymentLocks>) -> Self {
        self.locks = Some(locks);
        self
    }

    /// Calls the reconciler's closing hook for a recovered notification (under its payment's
    /// lock), as the inbound handler does for one that arrived: a recovered SUCCESS closes the
    /// pay record, so no cancel is sent for it; a contradiction is delivered marked
    /// `X-Alipay-Sidecar-Conflict`.
    pub fn with_hook(mut self, hook: Option<Arc<dyn NotificationHook>>) -> Self {
        self.hook = hook;
        self
    }

    /// Walks `m`'s events created from `from` to `to` (UTC ms), newest first.
    pub async fn walk(&self, m: &Merchant, from: i64, to: i64, mode: Mode) -> Walk {
        let mut walk = Walk::default();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut body = serde_json::json!({
                "eventCreateTimeFrom": iso_utc(from),
                // whole seconds on the wire: round the end up, so an event of the last
                // second is not left out
                "eventCreateTimeTo": iso_utc(to.saturating_add(999)),
                "limit": PAGE_LIMIT,
            });
            if let Some(a) = &after {
                body["startingAfter"] = Value::String(a.clone());
            }
            let answer = match self
                .api
                .call(&m.name, &m.client_id, LIST_TAIL, body.to_string())
                .await
            {
                Called::Verified(b) => b,
                Called::Failed(why) => {
                    walk.error = Some(why);
                    return walk;
                }
            };
            let (events, next) = match page(&answer) {
                Ok(p) => p,
                Err(why) => {
                    walk.error = Some(why);
                    return walk;
                }
            };
            for (notify_type, data) in events {
                self.event(m, &notify_type, &answer[data], mode, &mut walk)
                    .await;
            }
            match next {
                Some(n) if after.as_deref() != Some(n.as_str()) => after = Some(n),
                Some(_) => {
                    walk.error = Some("the gateway repeated nextStartingAfter".into());
                    return walk;
                }
                None => {
                    // reached the end; with an event left for later, not complete: the
                    // cursor stays and the next walk covers it again
                    walk.complete = walk.retry.is_none();
                    walk.error = walk.retry.take();
                    return walk;
                }
            }
        }
        walk.error = Some(format!("more than {MAX_PAGES} pages"));
        walk
    }

    async fn event(
        &self,
        m: &Merchant,
        notify_type: &str,
        data: &[u8],
        mode: Mode,
        walk: &mut Walk,
    ) {
        let counts = walk.by_type.entry(notify_type.to_string()).or_default();
        counts.at_alipay += 1;
        let key = EventKey::from_notification(&m.client_id, "", data);
        let found = {
            let key = key.clone();
            self.store
                .run(move |s| async move { s.journaled(&key).await })
                .await
        };
        match found {
            Ok(Some(j)) => {
                counts.journaled += 1;
                if j.status == "delivered" {
                    counts.delivered += 1;
                }
                if mode == Mode::Recover {
                    super::metrics::count(&m.name, notify_type, "journaled");
                }
                return;
            }
            Ok(None) => counts.missing += 1,
            Err(e) => {
                counts.missing += 1;
                counts.failed += 1;
                tracing::warn!(merchant = %m.name, error = %e, "backfill: the journal lookup failed");
                if mode == Mode::Recover {
                    super::metrics::count(&m.name, notify_type, "failed");
                }
                return;
            }
        }
        if mode == Mode::Look {
            return;
        }
        match self.record(m, key, data).await {
            Ok(Some(event_id)) => {
                counts.recovered += 1;
                super::metrics::count(&m.name, notify_type, "recovered");
                tracing::warn!(merchant = %m.name, notify_type, %event_id, "backfill: a notification Alipay's log has was missing from the journal (its delivery to the sidecar failed); recorded for delivery to the app");
            }
            Ok(None) => {
                counts.journaled += 1;
                super::metrics::count(&m.name, notify_type, "journaled");
            }
            Err(NotRecorded::Busy(why)) => {
                counts.failed += 1;
                tracing::warn!(merchant = %m.name, notify_type, error = %why, "backfill: the payment of a missing notification is being worked on; the next walk records it");
                walk.retry.get_or_insert(why);
            }
            Err(NotRecorded::Failed(why)) => {
                counts.failed += 1;
                super::metrics::count(&m.name, notify_type, "failed");
                tracing::error!(merchant = %m.name, notify_type, error = %why, "backfill: a missing notification could not be recorded");
            }
        }
    }

    /// Records a missing event for delivery now, under its payment's lock when it is a
    /// PAYMENT_RESULT; `Ok(None)` when it was recorded meanwhile (by the webhook, the
    /// reconciler or another replica).
    async fn record(
        &self,
        m: &Merchant,
        key: EventKey,
        data: &[u8],
    ) -> Result<Option<String>, NotRecorded> {
        let path = match &self.deliver_path {
            Some(p) => Some(p.clone()),
            None => self.pay_notify_path(m, data).await,
        };
        let Some(path) = path else {
            return Err(NotRecorded::Failed("its notify path is unknown (no pay record with a paymentNotifyUrl); set [reconcile] deliver_path".into()));
        };
        let lease = match (&self.locks, payment_of(data)) {
            (Some(locks), Some(id)) => {
                match locks
                    .lock(&m.client_id, &id, Holder::Backfill, WORKER_WAIT)
                    .await
                {
                    Ok(lease) => Some(lease),
                    Err(e @ LockError::Busy { .. }) => {
                        return Err(NotRecorded::Busy(e.to_string()))
                    }
                    // the store cannot be asked: the journal write below fails the same way
                    Err(e) => {
                        tracing::debug!(payment_request_id = %id, error = %e, "backfill: the payment's lock could not be taken; recording without it");
                        None
                    }
                }
            }
            _ => None,
        };
        let recorded = self.record_locked(m, key, path, data).await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        recorded.map_err(NotRecorded::Failed)
    }

    /// The journal write of [`Walker::record`] (with the payment's lock held, when it has one).
    async fn record_locked(
        &self,
        m: &Merchant,
        key: EventKey,
        path: String,
        data: &[u8],
    ) -> Result<Option<String>, String> {
        let conflict = match &self.hook {
            Some(h) => h.verified(&m.name, data).await,
            None => None,
        };
        let key = EventKey { path, ..key };
        let now = now_millis();
        let mut headers = vec![
            (SOURCE_HEADER.to_string(), SOURCE_EVENT_LOG.to_string()),
            (
                VERIFIED_HEADER.to_string(),
                Marker::Verified.as_str().to_string(),
            ),
            (
                "Content-Type".to_string(),
                "application/json; charset=UTF-8".to_string(),
            ),
        ];
        if let Some(p) = &self.deliver_path {
            headers.push((DELIVER_PATH_HEADER.to_string(), p.clone()));
        }
        if let Some(c) = conflict {
            headers.push((CONFLICT_HEADER.to_string(), c));
        }
        let entry = Entry {
            merchant: m.name.clone(),
            key,
            body: bytes::Bytes::copy_from_slice(data),
            headers,
            now,
            deliver_at: Some(now),
        };
        let recorded = Journal::record(&*self.store, entry)
            .await
            .map_err(|e| e.to_string())?;
        Ok(recorded.inserted.then_some(recorded.event_id))
    }

    /// The path of the `paymentNotifyUrl` of the merchant's recorded pay this event is about.
    async fn pay_notify_path(&self, m: &Merchant, data: &[u8]) -> Option<String> {
        let json: Value = serde_json::from_slice(data).ok()?;
        let id = json.get("paymentRequestId")?.as_str()?.to_string();
        let pid = pay_id(&m.name, &id);
        let rec = self
            .store
            .run(move |s| async move { s.pay(&pid).await })
            .await
            .ok()??;
        rec.payment_notify_url.as_deref().and_then(notify_path)
    }
}

/// The events of one page (notify type, span of `notificationData` in `answer`) and the
/// next cursor when `hasMore`.
#[allow(clippy::type_complexity)]
fn page(answer: &[u8]) -> Result<(Vec<(String, std::ops::Range<usize>)>, Option<String>), String> {
    let json: Value = serde_json::from_slice(answer)
        .map_err(|e| format!("inquireNotificationList answer is not JSON ({e})"))?;
    let status = json
        .pointer("/result/resultStatus")
        .and_then(Value::as_str)
        .unwrap_or("");
    if status != "S" {
        return Err(format!(
            "inquireNotificationList answered {}/{}",
            status,
            json.pointer("/result/resultCode")
                .and_then(Value::as_str)
                .unwrap_or("-")
        ));
    }
    let list = json
        .get("notifications")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let spans = match raw::member(answer, 0..answer.len(), "notifications") {
        Some(arr) => raw::items(answer, arr).ok_or("notifications is not an array")?,
        None => Vec::new(),
    };
    if spans.len() != list.len() {
        return Err("notifications could not be read".into());
    }
    let mut events = Vec::with_capacity(list.len());
    for (item, span) in list.iter().zip(spans) {
        let data_span = raw::member(answer, span, "notificationData")
            .filter(|_| item.get("notificationData").is_some_and(Value::is_object))
            .ok_or("an event has no notificationData object")?;
        let notify_type = item
            .get("notifyType")
            .and_then(Value::as_str)
            .or_else(|| {
                item.pointer("/notificationData/notifyType")
                    .and_then(Value::as_str)
            })
            .unwrap_or("")
            .to_string();
        events.push((notify_type, data_span));
    }
    let more = json
        .get("hasMore")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let next = json
        .get("nextStartingAfter")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    match (more, next) {
        (true, Some(n)) => Ok((events, Some(n))),
        (true, None) => Err("hasMore without nextStartingAfter".into()),
        (false, _) => Ok((events, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_page_byte_exact() {
        let a = br#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},"notifications":[{"eventId":"e1","notifyType":"REFUND_RESULT","eventCreateTime":"2026-12-07T05:40:00Z","deliveryStatus":"FAILED","notificationData":{"notifyType":"REFUND_RESULT","z":"1","a":"2"}}],"hasMore":true,"nextStartingAfter":"e1"}"#;
        let (ev, next) = page(a).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, "REFUND_RESULT");
        assert_eq!(
            &a[ev[0].1.clone()],
            br#"{"notifyType":"REFUND_RESULT","z":"1","a":"2"}"#
        );
        assert_eq!(next.as_deref(), Some("e1"));
        let f = br#"{"result":{"resultCode":"PARAM_ILLEGAL","resultStatus":"F"}}"#;
        assert!(page(f).unwrap_err().contains("PARAM_ILLEGAL"));
        let last = br#"{"result":{"resultStatus":"S"},"notifications":[],"hasMore":false}"#;
        assert_eq!(page(last).unwrap(), (vec![], None));
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
    }
}
