//! The missed-notification reconciler (`[reconcile]`, issue 13).
//!
//! Alipay's "接受支付 | 入口码支付" guide ends with the failure every merchant meets sooner or
//! later: the customer paid, but the PAYMENT_RESULT notification never arrived. Its fix is to
//! call `inquiryPayment` before the transaction's close time, keep inquiring while the status
//! is unclear, and call `cancel` on failure or timeout. The sidecar sees every outbound pay and
//! every inbound notification and holds the keys, so it does this once, for every app:
//!
//! 1. **Recording** ([`PayRecording`], `record.rs`, the outbound handler's
//!    [`crate::hooks::PayHook`]): a verified pay answer that is not final (`result.resultStatus` `U`, or `resultCode`
//!    `PAYMENT_IN_PROCESS`) is recorded in the store *before* the answer goes back to the app,
//!    with its `paymentNotifyUrl` and its close time (`paymentExpireTime` of the pay request,
//!    else now + `default_close_after`); it is due at now + `reconcile_after`.
//! 2. **Closing** ([`PayCloser`], `close.rs`, the inbound handler's [`NotificationHook`]): a
//!    verified PAYMENT_RESULT with a final result (`S` or `F`) closes the record (outcome
//!    `notified`): no inquiry is made.
//! 3. **Inquiring** ([`Reconciler`], this file, a background service): due records are
//!    claimed with a lease (one replica per record), `inquiryPayment` is called through the same outbound
//!    handler the listeners use (signed, answer verified, same metrics and log line), and a
//!    final status is recorded in the notification journal as a PAYMENT_RESULT built from the
//!    verified answer ([`payment_result_body`]); the journal's delivery worker delivers it
//!    to the app like a notification, marked `X-Alipay-Sidecar-Source: inquiryPayment`. Its
//!    de-duplication key is the one Alipay's own notification of that result has (same client
//!    id, the path of `paymentNotifyUrl`, same type, `paymentRequestId` and result), so
//!    whichever of the two comes second is a duplicate. An unclear status is inquired again
//!    after the next gap of `inquiry_schedule` (the last gap repeats) until the close time.
//! 4. **Expiry**: at the close time the record is inquired once more; still not final → with
//!    `cancel_on_expiry` `payments/cancel` is called (verified) and its outcome delivered the
//!    same way ([`cancelled_body`]), else the record ends `expired` (logged, counted).
//! 5. **Trust** (issue 18): an answer is acted on only when it is about the payment asked
//!    ([`about_payment`]: same `paymentRequestId`, and the pay answer's `paymentId` when it had
//!    one); a replayed answer about another payment is refused and counted. The cancel at the
//!    close time waits for at least one verified answer about the payment ([`cancel_allowed`]);
//!    until then the record is inquired again and the withheld cancel counted. A later verified
//!    PAYMENT_RESULT that contradicts a recorded outcome ([`conflict`]) reaches the app marked
//!    [`CONFLICT_HEADER`].
//!
//! The JSON of requests and answers is parsed only to read fields; what is forwarded is never
//! re-serialised. The bodies the sidecar builds itself (the inquiry and cancel requests, the
//! reconciled PAYMENT_RESULT) are built with `serde_json` from the verified values.
//!
//! # Layout
//!
//! `mod.rs` the service and its wiring ([`Wiring`], [`service`]); `record.rs` recording;
//! `close.rs` closing; `result.rs` what a verified answer says (pure); `store.rs` the
//! [`PayStore`] trait the service and the hooks write through; `call.rs` the [`PayApi`] trait
//! of the gateway calls; `metrics.rs` the `alipay_sidecar_reconcile_*` families. The state
//! machine below is unit-tested against in-memory fakes of both traits (`tests.rs`,
//! `testing.rs`). Imports run one way: the handlers know only [`crate::hooks`]; this module
//! drives [`crate::outbound`]'s handler and is imported only by the wiring (and the demo, for
//! the names of its headers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};
use sidecar_store::{EventKey, PayOutcome, PayRecord};

use crate::config::ReconcileConfig;
use crate::exchange::now_millis;
use crate::handler::Marker;
use crate::headers::VERIFIED_HEADER;
use crate::hooks::NotificationHook;
use crate::journal::Entry;
use crate::outbound::Outbound;
use crate::paylock::{self, Holder, LocalLocks, PaymentLease, PaymentLocks, WORKER_WAIT};
use crate::store::StateStore;
use crate::upstream::UpstreamClient;

mod call;
mod close;
mod metrics;
mod record;
mod result;
mod store;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use call::{Called, OutboundApi, PayApi, CANCEL_TAIL, INQUIRY_TAIL};
pub use close::{conflict, final_payment_result, PayCloser};
pub use metrics::register_metrics;
use metrics::{count_outcome, metrics, store_error};
use record::add;
pub use record::{
    answer_not_final, parse_close_time, pending_pay, NotRecorded, PayRecorder, PayRecording,
    PayTiming, PendingPay,
};
pub use result::{
    about_payment, cancel_allowed, cancelled_body, next_inquiry, notify_path, payment_result_body,
    Asked, Inquired,
};
use result::{json_object, result_field};
pub use store::{Closed, PayStore};

pub(crate) use crate::headers::{DELIVER_PATH_HEADER, SOURCE_HEADER};
/// The value of [`SOURCE_HEADER`].
pub const SOURCE_INQUIRY: &str = "inquiryPayment";

// ---------------------------------------------------------------------------------------
// Wiring

/// What `[reconcile]` adds to the sidecar: the hooks handed to the outbound and inbound
/// handlers, and (through [`service`]) the background reconciler. Built once by the server.
#[derive(Clone)]
pub struct Wiring {
    config: ReconcileConfig,
    store: Arc<StateStore>,
    recording: PayRecording,
}

impl Wiring {
    /// `[reconcile]` on the sidecar's store; `None` when either is absent (the config refuses
    /// `[reconcile]` without a store, `[outbound]` and `[inbound]`).
    pub fn new(config: Option<&ReconcileConfig>, store: Option<&Arc<StateStore>>) -> Option<Self> {
        let (config, store) = (config?, store?);
        register_metrics();
        Some(Self {
            recording: PayRecording::new(store.clone(), PayTiming::from_config(config)),
            config: config.clone(),
            store: store.clone(),
        })
    }

    /// The outbound handler's [`crate::hooks::PayHook`]: records pays that are not final.
    pub fn pay_hook(&self) -> PayRecording {
        self.recording.clone()
    }

    /// The inbound handler's [`NotificationHook`]: closes records on a final PAYMENT_RESULT.
    pub fn notification_hook(&self) -> Arc<dyn NotificationHook> {
        Arc::new(PayCloser::new(self.store.clone()))
    }
}

/// The reconciler as a background service of the server: its gateway calls go through
/// `outbound` (a handler of every merchant, on the merchants' gateway clients: signed,
/// verified, counted like the app's); `request_timeout` is `[outbound]`'s.
pub fn service<G: UpstreamClient>(
    wiring: &Wiring,
    outbound: Outbound<G>,
    request_timeout: Duration,
) -> GenBackgroundService<Reconciler> {
    let r = &wiring.config;
    let reconciler = Reconciler::new(
        wiring.store.clone(),
        Arc::new(OutboundApi::new(outbound)),
        r.clone(),
        request_timeout,
    )
    .with_locks(paylock::for_store(&wiring.store));
    tracing::info!(reconcile_after = %humantime::format_duration(r.reconcile_after), default_close_after = %humantime::format_duration(r.default_close_after), cancel_on_expiry = r.cancel_on_expiry, "missed-notification reconciler on");
    background_service("reconciler", reconciler)
}

// ---------------------------------------------------------------------------------------
// The reconciler

/// The background service that works due pay records (see the module doc).
pub struct Reconciler {
    store: Arc<dyn PayStore>,
    api: Arc<dyn PayApi>,
    config: ReconcileConfig,
    owner: String,
    lease: Duration,
    tick: Duration,
    /// One lock per payment (issue 22): taken before recording an inquired result and around
    /// the cancel at the close time.
    locks: Arc<dyn PaymentLocks>,
}

/// After the close time, a failed cancel is retried for this many gaps (the last of
/// `inquiry_schedule`), then the record ends `expired`.
const CANCEL_ATTEMPTS: u32 = 5;

impl Reconciler {
    /// A reconciler on `store`, calling the gateway through `api`. `request_timeout` is the
    /// outbound one: a claim's lease outlasts an inquiry plus a cancel with it.
    pub fn new(
        store: Arc<dyn PayStore>,
        api: Arc<dyn PayApi>,
        config: ReconcileConfig,
        request_timeout: Duration,
    ) -> Self {
        register_metrics();
        let smallest = config
            .inquiry_schedule
            .iter()
            .copied()
            .chain([config.reconcile_after])
            .min()
            .unwrap_or(Duration::from_secs(1));
        let tick = (smallest / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
        Self {
            store,
            api,
            config,
            owner: crate::schedule::claim_owner(),
            // an inquiry, the wait for the payment's lock, a cancel
            lease: request_timeout * 2 + WORKER_WAIT + Duration::from_secs(10),
            tick,
            locks: Arc::new(LocalLocks::new()),
        }
    }

    /// Takes payments' locks from `locks` (the sidecar's, shared with the inbound handler and
    /// the delivery worker) instead of a set of its own.
    pub fn with_locks(mut self, locks: Arc<dyn PaymentLocks>) -> Self {
        self.locks = locks;
        self
    }

    /// The payment's lock, or `None` (logged) when it stays busy or cannot be taken: the
    /// record stays claimed and is worked again once the claim's lease runs out.
    async fn lock(&self, rec: &PayRecord) -> Option<PaymentLease> {
        match self
            .locks
            .lock(
                &rec.client_id,
                &rec.payment_request_id,
                Holder::Reconcile,
                WORKER_WAIT,
            )
            .await
        {
            Ok(lease) => Some(lease),
            Err(e) => {
                tracing::warn!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, error = %e, "reconcile: the payment's lock could not be taken; trying again once the claim's lease runs out");
                None
            }
        }
    }

    /// Works every due record once (one claim at a time, so the lease covers one record's
    /// turn). Returns how many were worked.
    pub async fn turn(&self) -> usize {
        let mut worked = 0;
        loop {
            let record = match self
                .store
                .claim_due(now_millis(), &self.owner, self.lease)
                .await
            {
                Ok(Some(record)) => record,
                Ok(None) => return worked,
                Err(e) => {
                    store_error("work", &e);
                    return worked;
                }
            };
            self.work(&record).await;
            worked += 1;
        }
    }

    async fn refresh_gauge(&self) {
        match self.store.open_count().await {
            Ok(n) => metrics().open.set(n),
            Err(e) => tracing::debug!(error = %e, "reconcile: counting open records failed"),
        }
    }

    /// One turn of one claimed record: inquire; final → deliver and close; else at the close
    /// time expire (cancel or not), before it reschedule. An answer that is not about this
    /// payment is refused ([`Inquired::Refused`]); the cancel at the close time waits for at
    /// least one verified answer about the payment ([`cancel_allowed`]).
    async fn work(&self, rec: &PayRecord) {
        let now = now_millis();
        let inquiry = serde_json::json!({"paymentRequestId": rec.payment_request_id}).to_string();
        let asked = Asked {
            payment_request_id: &rec.payment_request_id,
            payment_id: rec.payment_id.as_deref(),
        };
        let mut answered = false;
        let why = match self.call(rec, INQUIRY_TAIL, inquiry).await {
            Called::Verified(answer) => match payment_result_body(&answer, asked) {
                Inquired::Final { body, outcome } => {
                    let label = if outcome == PayOutcome::InquiredSuccess {
                        "success"
                    } else {
                        "fail"
                    };
                    metrics().inquiries.with_label_values(&[label]).inc();
                    if let Some(lease) = self.lock(rec).await {
                        self.conclude(rec, Some(body), outcome).await;
                        lease.release().await;
                    }
                    return;
                }
                Inquired::NotFinal(why) => {
                    metrics().inquiries.with_label_values(&["not_final"]).inc();
                    answered = true;
                    why
                }
                Inquired::Failed(why) => {
                    metrics().inquiries.with_label_values(&["not_final"]).inc();
                    why
                }
                Inquired::Refused(why) => {
                    metrics().inquiries.with_label_values(&["refused"]).inc();
                    tracing::warn!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, reason = %why, "reconcile: a verified inquiry answer is not about the payment asked; refused, not acted on");
                    why
                }
            },
            Called::Failed(why) => {
                metrics().inquiries.with_label_values(&["error"]).inc();
                why
            }
        };
        if now >= rec.close_time {
            if !self.config.cancel_on_expiry || cancel_allowed(rec.answers, answered) {
                self.expire(rec, &why).await;
                return;
            }
            metrics().cancels.with_label_values(&["withheld"]).inc();
            let next = add(now, self.last_gap());
            tracing::error!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, status = %why, inquiries = rec.inquiries + 1, "reconcile: close time passed, but no verified inquiry answer about this payment yet; not cancelling on an unverified status, inquiring again (check the gateway, the keys and alipay_sidecar_reconcile_inquiries_total)");
            self.reschedule(rec, next, answered).await;
            return;
        }
        let next = next_inquiry(
            &self.config.inquiry_schedule,
            rec.inquiries,
            now,
            rec.close_time,
        );
        tracing::info!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, inquiries = rec.inquiries + 1, status = %why, next_in_ms = next - now, "reconcile: no final status yet");
        self.reschedule(rec, next, answered).await;
    }

    /// The last gap of `inquiry_schedule` (the one that repeats).
    fn last_gap(&self) -> Duration {
        self.config
            .inquiry_schedule
            .last()
            .copied()
            .unwrap_or(Duration::from_secs(30))
    }

    async fn reschedule(&self, rec: &PayRecord, next: i64, answered: bool) {
        match self
            .store
            .reschedule(&rec.id, &self.owner, next, answered)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(payment_request_id = %rec.payment_request_id, "reconcile: the record was closed or taken over meanwhile")
            }
            Err(e) => store_error("work", &e),
        }
    }

    /// The close time passed without a final status.
    async fn expire(&self, rec: &PayRecord, why: &str) {
        if !self.config.cancel_on_expiry {
            tracing::warn!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, status = %why, "reconcile: close time passed without a final status; giving up (cancel_on_expiry = false): inquire or cancel it yourself");
            self.conclude(rec, None, PayOutcome::Expired).await;
            return;
        }
        // Under the payment's lock from the re-read to the recorded answer: a SUCCESS recorded
        // before means no cancel; one arriving meanwhile waits for the cancel's answer to be
        // recorded, then reaches the app marked as a conflict (issue 22).
        let Some(lease) = self.lock(rec).await else {
            return;
        };
        self.cancel(rec).await;
        lease.release().await;
    }

    /// Re-reads the record, then cancels the payment (the caller holds its lock).
    async fn cancel(&self, rec: &PayRecord) {
        match self
            .store
            .closed_outcome(&rec.merchant, &rec.payment_request_id)
            .await
        {
            Ok(None) => {}
            Ok(Some(outcome)) => {
                tracing::info!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, outcome = outcome.as_str(), "reconcile: the record was closed meanwhile (a result arrived); no cancel sent");
                return;
            }
            Err(e) => {
                // fail closed: never cancel on a record that could not be read
                store_error("work", &e);
                return;
            }
        }
        let body = serde_json::json!({"paymentRequestId": rec.payment_request_id}).to_string();
        let asked = Asked {
            payment_request_id: &rec.payment_request_id,
            payment_id: rec.payment_id.as_deref(),
        };
        let failed = match self.call(rec, CANCEL_TAIL, body).await {
            Called::Verified(answer)
                if result_field(&json_object(&answer).unwrap_or_default(), "resultStatus")
                    == Some("S")
                    && about_payment(&json_object(&answer).unwrap_or_default(), asked).is_err() =>
            {
                let why = about_payment(&json_object(&answer).unwrap_or_default(), asked)
                    .err()
                    .unwrap_or_default();
                tracing::warn!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, reason = %why, "reconcile: a verified cancel answer is not about the payment asked; refused, not acted on");
                format!("cancel answer refused: {why}")
            }
            Called::Verified(answer)
                if result_field(&json_object(&answer).unwrap_or_default(), "resultStatus")
                    == Some("S") =>
            {
                metrics().cancels.with_label_values(&["success"]).inc();
                tracing::warn!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, "reconcile: close time passed without a final status; payment cancelled");
                let delivered = cancelled_body(&answer, &rec.payment_request_id);
                self.conclude(rec, Some(delivered), PayOutcome::Cancelled)
                    .await;
                return;
            }
            Called::Verified(answer) => format!(
                "cancel answered {}/{}",
                result_field(&json_object(&answer).unwrap_or_default(), "resultStatus")
                    .unwrap_or("-"),
                result_field(&json_object(&answer).unwrap_or_default(), "resultCode")
                    .unwrap_or("-")
            ),
            Called::Failed(why) => why,
        };
        metrics().cancels.with_label_values(&["error"]).inc();
        // keep trying (inquire again, then cancel) for a few more gaps, then give up
        let gap = self.last_gap();
        let now = now_millis();
        if now > add(rec.close_time, gap * CANCEL_ATTEMPTS) {
            tracing::error!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, error = %failed, "reconcile: cancelling at the close time failed repeatedly; giving up (expired): cancel it yourself");
            self.conclude(rec, None, PayOutcome::Expired).await;
        } else {
            tracing::warn!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, error = %failed, "reconcile: cancelling at the close time failed; trying again");
            self.reschedule(rec, add(now, gap), true).await;
        }
    }

    /// Delivers `body` (when there is one) through the journal, then closes the record with
    /// `outcome`. A store failure leaves the record claimed: the lease runs out and the next
    /// turn (any replica) inquires again.
    async fn conclude(&self, rec: &PayRecord, body: Option<Vec<u8>>, outcome: PayOutcome) {
        let now = now_millis();
        if let Some(body) = body {
            if let Err(e) = self.record_delivery(rec, body, now).await {
                store_error("deliver", &e);
                return;
            }
        }
        match self.store.finish(&rec.id, outcome, now).await {
            Ok(true) => {
                count_outcome(outcome);
                tracing::info!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, outcome = outcome.as_str(), "reconcile: record closed");
            }
            Ok(false) => {}
            Err(e) => store_error("work", &e),
        }
    }

    /// Records the reconciled result in the notification journal, due now: the delivery
    /// worker delivers it like a notification (see the module doc).
    async fn record_delivery(
        &self,
        rec: &PayRecord,
        body: Vec<u8>,
        now: i64,
    ) -> Result<(), String> {
        let key_path = rec
            .payment_notify_url
            .as_deref()
            .and_then(notify_path)
            .or_else(|| self.config.deliver_path.clone());
        let Some(key_path) = key_path else {
            tracing::warn!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, "reconcile: the pay had no paymentNotifyUrl and [reconcile] deliver_path is not set; the result cannot be delivered");
            return Ok(());
        };
        let key = EventKey::from_notification(&rec.client_id, &key_path, &body);
        let mut headers = vec![
            (SOURCE_HEADER.to_string(), SOURCE_INQUIRY.to_string()),
            (
                VERIFIED_HEADER.to_string(),
                Marker::Verified.as_str().to_string(),
            ),
            (
                "Content-Type".to_string(),
                "application/json; charset=UTF-8".to_string(),
            ),
        ];
        if let Some(p) = &self.config.deliver_path {
            headers.push((DELIVER_PATH_HEADER.to_string(), p.clone()));
        }
        let entry = Entry {
            merchant: rec.merchant.clone(),
            key,
            body: body.into(),
            headers,
            now,
            deliver_at: Some(now),
        };
        let recorded = self
            .store
            .record_result(entry)
            .await
            .map_err(|e| e.to_string())?;
        if recorded.inserted {
            tracing::info!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, event_id = %recorded.event_id, "reconcile: result recorded for delivery to the app");
        } else {
            tracing::info!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, event_id = %recorded.event_id, "reconcile: the same result was already recorded (Alipay's notification came first); not delivered again");
        }
        Ok(())
    }

    /// Calls `tail` for the record's merchant through [`PayApi`].
    async fn call(&self, rec: &PayRecord, tail: &str, body: String) -> Called {
        self.api
            .call(&rec.merchant, &rec.client_id, tail, body)
            .await
    }
}

#[async_trait]
impl BackgroundService for Reconciler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tracing::info!(owner = %self.owner, tick_ms = self.tick.as_millis() as u64, lease_s = self.lease.as_secs(), "reconciler started");
        let mut interval = tokio::time::interval(self.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_gauge: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = interval.tick() => {}
            }
            if last_gauge.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                self.refresh_gauge().await;
                last_gauge = Some(Instant::now());
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                n = self.turn() => {
                    if n > 0 {
                        self.refresh_gauge().await;
                        last_gauge = Some(Instant::now());
                    }
                }
            }
        }
    }
}
