//! Handing a verified notification to the app: through the journal when there is one
//! (record, suppress a re-send the app already took, queue in store-and-forward mode), or
//! in line once (the replay window, one copy with the app at a time); and the request the
//! app receives.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use sidecar_store::EventKey;

use super::{AppRoute, Inbound, InboundMerchant};
use crate::config::{Acknowledge, Duplicates};
use crate::envelope::SidecarError;
use crate::exchange::{self, now_millis};
use crate::handler::{Marker, Refusal, Request, Stop};
use crate::headers::{
    CONFLICT_HEADER, DELIVER_QUERY_HEADER, EVENT_ID_HEADER, KEY_VERSION_HEADER, VERIFIED_HEADER,
};
use crate::journal::{self, Entry};
use crate::merchants::Selected;
use crate::paylock::{self, Holder, LockError, PaymentLease};
use crate::replay::{self, StillInFlight, Turn};
use crate::report::Report;
use crate::upstream::UpstreamClient;

/// What a verified notification brings to its delivery: the conflict mark the reconciler's
/// hook returned, and the payment's lock, held until the journal write.
pub(super) struct Hooked {
    pub(super) conflict: Option<String>,
    pub(super) lease: Option<PaymentLease>,
}

impl<A: UpstreamClient> Inbound<A> {
    /// The lock of the payment a verified PAYMENT_RESULT is about. `Ok(None)`: no lock
    /// (another type, no locks configured, or the store cannot be asked: then the journal is
    /// out of reach too and the notification flows as without it). A lock still busy after
    /// `forward_timeout` and a little more: 503, so that Alipay re-sends.
    pub(super) async fn lock_payment(
        &self,
        client_id: &str,
        body: &[u8],
    ) -> Result<Option<PaymentLease>, Refusal> {
        let Some(locks) = &self.locks else {
            return Ok(None);
        };
        let Some(id) = paylock::payment_of(body) else {
            return Ok(None);
        };
        let wait = self.policy.forward_timeout + IN_FLIGHT_MARGIN;
        match locks.lock(client_id, &id, Holder::Inbound, wait).await {
            Ok(lease) => Ok(Some(lease)),
            Err(e @ LockError::Busy { .. }) => {
                tracing::warn!(payment_request_id = %id, error = %e, "a PAYMENT_RESULT arrived while the sidecar kept working on its payment; not acknowledged, so Alipay re-sends it");
                let msg = "the sidecar is still working on this payment (a cancel or a delivery \
                           in flight); the notification was not acknowledged, so Alipay will \
                           re-send it";
                Err(Refusal::new(SidecarError::AppUnavailable, msg))
            }
            Err(e) => {
                tracing::warn!(payment_request_id = %id, error = %e, "the payment's lock could not be taken; going on without it");
                Ok(None)
            }
        }
    }

    /// Delivers a notification through the journal (when there is one and it verified):
    /// records it, suppresses a re-send the app already took, acknowledges a stored one in
    /// store-and-forward mode, and marks the in-line delivery's outcome. A store failure
    /// never stops an in-line delivery (the store must never be the reason a payment result
    /// is lost); in store-and-forward mode it is a 503, so that Alipay re-sends.
    pub(super) async fn deliver(
        &self,
        selected: &Selected<'_, InboundMerchant<A>>,
        n: Request,
        marker: Marker,
        key_version: Option<&str>,
        hooked: Hooked,
        report: &mut Report,
    ) -> Result<(ResponseHeader, Bytes), Stop> {
        let Hooked { conflict, lease } = hooked;
        let merchant = selected.merchant;
        let mut head = self.app_request(
            &merchant.route,
            &n.head,
            &n.target,
            marker,
            key_version,
            n.body.len(),
        )?;
        // before the journal copies the headers: a queued delivery carries the mark too
        if let Some(c) = conflict {
            head.insert_header(CONFLICT_HEADER, c.as_str())?;
        }
        let journal = match &self.journal {
            Some(j) if marker == Marker::Verified => j,
            None if marker == Marker::Verified => {
                return self.deliver_once(selected, n, head, report).await
            }
            _ => return self.forward(selected, n, head, report).await,
        };
        let (path, query) = split_target(&n.target);
        let key = EventKey::from_notification(&merchant.client_id, path, &n.body);
        let event_id = key.event_id();
        let _turn = self.take_turn(&merchant.name, &event_id).await?;
        let after_store = self.policy.acknowledge == Acknowledge::AfterStore;
        let now = now_millis();
        let entry = Entry {
            merchant: merchant.name.to_string(),
            key,
            body: n.body.clone(),
            headers: stored_headers(&head, query),
            now,
            deliver_at: after_store.then_some(now),
        };
        let m = journal::metrics();
        let recorded = journal.record(entry).await;
        // the payment's state is written: the lock is not held across the app's answer
        if let Some(lease) = lease {
            lease.release().await;
        }
        let recorded = match recorded {
            Ok(r) => r,
            Err(e) => {
                m.store_error("record");
                if after_store {
                    tracing::warn!(store = journal.location(), error = %e, event_id, "the notification could not be stored; answering 503 so that Alipay re-sends it");
                    report.detail = Some(e.to_string());
                    let msg = "the sidecar's store is unavailable; the notification was not \
                               acknowledged, so Alipay will re-send it";
                    return Err(Refusal::new(SidecarError::StoreUnavailable, msg).into());
                }
                tracing::warn!(store = journal.location(), error = %e, event_id, "the notification could not be recorded in the store; delivering it without de-duplication");
                head.insert_header(EVENT_ID_HEADER, event_id.as_str())?;
                return self.forward(selected, n, head, report).await;
            }
        };
        m.recorded(&merchant.name, recorded.inserted);
        if after_store {
            if !recorded.inserted {
                m.duplicate(&merchant.name);
            }
            tracing::debug!(
                event_id,
                first = recorded.inserted,
                "notification stored; acknowledged, the delivery worker delivers it"
            );
            return self.acknowledge(selected, &n.target, report).await;
        }
        if recorded.already_delivered && self.policy.duplicates == Duplicates::Suppress {
            m.duplicate(&merchant.name);
            tracing::info!(event_id, copies = recorded.seen_count, "re-send of a notification the app already took; acknowledged without delivering it again");
            return self.acknowledge(selected, &n.target, report).await;
        }
        head.insert_header(EVENT_ID_HEADER, event_id.as_str())?;
        let result = self.forward(selected, n, head, report).await;
        let now = now_millis();
        let outcome = match report.upstream.map(|u| u.status) {
            Some(s) if (200..300).contains(&s) => journal.delivered(&event_id, now).await,
            status => {
                let error = match status {
                    Some(s) => format!("the app answered HTTP {s}"),
                    None => report
                        .detail
                        .clone()
                        .unwrap_or_else(|| "the app did not answer".into()),
                };
                journal.failed(&event_id, &error, now).await
            }
        };
        if let Err(e) = outcome {
            let op = if report
                .upstream
                .is_some_and(|u| (200..300).contains(&u.status))
            {
                "mark_delivered"
            } else {
                "record_failure"
            };
            m.store_error(op);
            tracing::warn!(store = journal.location(), error = %e, event_id, "the delivery's outcome could not be recorded in the store");
        }
        result
    }

    /// Waits until no other copy of `key` is being delivered (L4), up to the app's timeout
    /// and a little more; a copy still stuck after that gets a 503, so Alipay re-sends it.
    async fn take_turn(&self, merchant: &str, key: &str) -> Result<Turn, Stop> {
        let wait = self.policy.forward_timeout + IN_FLIGHT_MARGIN;
        match self.in_flight.enter(key, wait).await {
            Ok(turn) => {
                if turn.waited {
                    replay::metrics().waited(merchant);
                    tracing::info!(key, "a copy of a notification arrived while another copy was with the app; it waited for that delivery");
                }
                Ok(turn)
            }
            Err(StillInFlight) => {
                let msg = "another copy of this notification is still being delivered to the \
                           app; this one was not acknowledged, so Alipay will re-send it";
                Err(Refusal::new(SidecarError::AppUnavailable, msg).into())
            }
        }
    }

    /// Without a journal: an exact copy of a notification the app already took is
    /// acknowledged, not delivered again (the replay window, M5); a copy arriving while
    /// another is with the app waits for it (L4).
    async fn deliver_once(
        &self,
        selected: &Selected<'_, InboundMerchant<A>>,
        n: Request,
        head: RequestHeader,
        report: &mut Report,
    ) -> Result<(ResponseHeader, Bytes), Stop> {
        let hex = report.content_sha256.clone().unwrap_or_default();
        let (Some(window), Some(digest)) = (&self.replays, replay::digest_from_hex(&hex)) else {
            return self.forward(selected, n, head, report).await;
        };
        let merchant = &selected.merchant.name;
        let _turn = self.take_turn(merchant, &hex).await?;
        if window.seen(&digest) {
            replay::metrics().replayed(merchant);
            tracing::info!(content_sha256 = %hex, "exact copy of a notification the app already took; acknowledged without delivering it again");
            return self.acknowledge(selected, &n.target, report).await;
        }
        let result = self.forward(selected, n, head, report).await;
        if report
            .upstream
            .is_some_and(|u| (200..300).contains(&u.status))
        {
            window.remember(digest);
        }
        result
    }

    /// The request to the app: same headers (minus hop-by-hop and any `X-Alipay-Sidecar-*`),
    /// the sidecar's markers, the app's Host, the mapped path with the query kept.
    fn app_request(
        &self,
        route: &AppRoute,
        received: &RequestHeader,
        target: &str,
        marker: Marker,
        key_version: Option<&str>,
        len: usize,
    ) -> pingora::Result<RequestHeader> {
        let (path, query) = split_target(target);
        let app_target = route.target(path, query);
        let mut req = RequestHeader::build(
            "POST",
            app_target.as_bytes(),
            Some(received.headers.len() + 4),
        )?;
        exchange::forward_request_headers(received, &mut req, &[])?;
        req.insert_header("Host", route.authority.as_str())?;
        req.insert_header("Content-Length", len.to_string())?;
        req.insert_header(VERIFIED_HEADER, marker.as_str())?;
        if let Some(v) = key_version {
            req.insert_header(KEY_VERSION_HEADER, v)?;
        }
        Ok(req)
    }
}

/// How much longer than the app's timeout a copy waits for another copy's delivery (the
/// journal's writes around it).
const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(5);

/// `path?query` → (`path`, `query`).
fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    }
}

/// The headers a later delivery of this notification carries: those of the in-line request
/// to the app (`Host` and the framing are the delivery's own), plus the query of the notify
/// URL as an internal header.
fn stored_headers(head: &RequestHeader, query: Option<&str>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = head
        .headers
        .iter()
        .filter(|(name, _)| *name != http::header::HOST && *name != http::header::CONTENT_LENGTH)
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    if let Some(q) = query {
        out.push((DELIVER_QUERY_HEADER.to_string(), q.to_string()));
    }
    out
}
