//! The missed-notification reconciler (`[reconcile]`, issue 13).
//!
//! Alipay's "接受支付 | 入口码支付" guide ends with the failure every merchant meets sooner or
//! later: the customer paid, but the PAYMENT_RESULT notification never arrived. Its fix is to
//! call `inquiryPayment` before the transaction's close time, keep inquiring while the status
//! is unclear, and call `cancel` on failure or timeout. The sidecar sees every outbound pay and
//! every inbound notification and holds the keys, so it does this once, for every app:
//!
//! 1. **Recording** ([`PayRecording`], the outbound handler's [`crate::hooks::PayHook`]): a
//!    verified pay answer that is not final (`result.resultStatus` `U`, or `resultCode`
//!    `PAYMENT_IN_PROCESS`) is recorded in the store *before* the answer goes back to the app,
//!    with its `paymentNotifyUrl` and its close time (`paymentExpireTime` of the pay request,
//!    else now + `default_close_after`); it is due at now + `reconcile_after`.
//! 2. **Closing** ([`PayCloser`], called by [`crate::inbound::Inbound`] after verification): a
//!    verified PAYMENT_RESULT with a final result (`S` or `F`) closes the record (outcome
//!    `notified`): no inquiry is made.
//! 3. **Inquiring** ([`Reconciler`], a background service): due records are claimed with a
//!    lease (one replica per record), `inquiryPayment` is called through the same outbound
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
//!
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

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use serde_json::{Map, Value};
use sidecar_store::{EventKey, NewNotification, NewPay, PayOutcome, PayOwner, PayRecord};

use crate::config::ReconcileConfig;
use crate::exchange::{now_millis, VERIFIED_HEADER};
use crate::handler::{Handler, Marker, Request};
use crate::hooks::{NotificationHook, PayHook};
use crate::metrics::{api_label, Direction};
use crate::outbound::{Outbound, MERCHANT_HEADER};
use crate::store::StateStore;
use crate::upstream::UpstreamClient;

/// Marks a delivery the sidecar built from an API answer instead of relaying Alipay's
/// notification (value `inquiryPayment`, also for the outcome of a cancel at expiry).
pub const SOURCE_HEADER: &str = "X-Alipay-Sidecar-Source";
/// Marks a verified PAYMENT_RESULT that contradicts a recorded outcome (declared beside the
/// hook that returns its value, [`crate::hooks`]).
pub use crate::hooks::CONFLICT_HEADER;
/// Internal header recorded with a reconciled event when `[reconcile] deliver_path` is set:
/// the journal's delivery worker delivers to that path instead of the notify path.
pub use crate::journal::DELIVER_PATH_HEADER;
/// The value of [`SOURCE_HEADER`].
pub const SOURCE_INQUIRY: &str = "inquiryPayment";

const INQUIRY_TAIL: &str = "v1/payments/inquiryPayment";
const CANCEL_TAIL: &str = "v1/payments/cancel";

/// Longest `paymentRequestId` recorded (Alipay allows 64 characters; a hostile or broken
/// body must not put megabytes into the store).
const MAX_ID_LEN: usize = 256;
/// Longest `paymentNotifyUrl` recorded.
const MAX_URL_LEN: usize = 2048;

// ---------------------------------------------------------------------------------------
// Metrics

/// The reconciler's metrics, registered in the sidecar's registry on first use
/// ([`init_metrics`] at start-up, so every series exists at zero before the first event).
struct ReconcileMetrics {
    open: IntGauge,
    outcomes: IntCounterVec,
    inquiries: IntCounterVec,
    cancels: IntCounterVec,
    recorded: IntCounter,
    store_errors: IntCounterVec,
    conflicts: IntCounterVec,
}

/// `result` label values of `alipay_sidecar_reconcile_inquiries_total`.
const INQUIRY_RESULTS: [&str; 5] = ["success", "fail", "not_final", "error", "refused"];
/// `result` label values of `alipay_sidecar_reconcile_cancels_total`.
const CANCEL_RESULTS: [&str; 3] = ["success", "error", "withheld"];
/// `recorded` label values of `alipay_sidecar_reconcile_conflicts_total`: the recorded
/// outcomes a later PAYMENT_RESULT can contradict.
const CONFLICT_OUTCOMES: [PayOutcome; 3] = [
    PayOutcome::Cancelled,
    PayOutcome::InquiredFail,
    PayOutcome::InquiredSuccess,
];
/// `op` label values of `alipay_sidecar_reconcile_store_errors_total`.
const STORE_OPS: [&str; 4] = ["record_pay", "close_pay", "work", "deliver"];

/// Registers the reconciler's metrics (all series at zero) in the process's set, as the
/// reconciler does when it starts: for checks that the dashboards and alerts only use names
/// the code exposes.
pub fn register_metrics() {
    metrics();
}

fn metrics() -> &'static ReconcileMetrics {
    static M: OnceLock<ReconcileMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = build_metrics().expect("the reconciler's metric definitions are valid");
        let registry = crate::metrics::metrics();
        for c in [
            Box::new(m.open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.outcomes.clone()),
            Box::new(m.inquiries.clone()),
            Box::new(m.cancels.clone()),
            Box::new(m.recorded.clone()),
            Box::new(m.store_errors.clone()),
            Box::new(m.conflicts.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::error!(error = %e, "registering a reconciler metric failed");
            }
        }
        for o in PayOutcome::ALL {
            m.outcomes.with_label_values(&[o.as_str()]);
        }
        for r in INQUIRY_RESULTS {
            m.inquiries.with_label_values(&[r]);
        }
        for r in CANCEL_RESULTS {
            m.cancels.with_label_values(&[r]);
        }
        for op in STORE_OPS {
            m.store_errors.with_label_values(&[op]);
        }
        for o in CONFLICT_OUTCOMES {
            m.conflicts.with_label_values(&[o.as_str()]);
        }
        m
    })
}

fn build_metrics() -> Result<ReconcileMetrics, prometheus::Error> {
    Ok(ReconcileMetrics {
        open: IntGauge::new(
            "alipay_sidecar_reconcile_open_pays",
            "Pay records waiting for a final result (the store's count, the same on every replica).",
        )?,
        outcomes: IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_reconcile_outcomes_total",
                "Pay records closed, by outcome: notified, inquired_success, inquired_fail, cancelled, expired.",
            ),
            &["outcome"],
        )?,
        inquiries: IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_reconcile_inquiries_total",
                "inquiryPayment calls made by the reconciler, by result: success, fail, not_final, error (no verified answer), refused (a verified answer about another payment, or naming none: not acted on).",
            ),
            &["result"],
        )?,
        cancels: IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_reconcile_cancels_total",
                "payments/cancel at the close time (cancel_on_expiry), by result: success, error, withheld (not called: no verified inquiry answer about the payment yet; it is inquired again).",
            ),
            &["result"],
        )?,
        recorded: IntCounter::new(
            "alipay_sidecar_reconcile_pays_recorded_total",
            "Pays whose verified answer was not final, recorded for reconciliation.",
        )?,
        store_errors: IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_reconcile_store_errors_total",
                "Store failures of the reconciler, by operation (record_pay, close_pay, work, deliver).",
            ),
            &["op"],
        )?,
        conflicts: IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_reconcile_conflicts_total",
                "Verified PAYMENT_RESULT notifications that contradict the outcome the sidecar recorded and delivered for the payment (delivered marked X-Alipay-Sidecar-Conflict), by recorded outcome: cancelled, inquired_fail, inquired_success.",
            ),
            &["recorded"],
        )?,
    })
}

/// Creates the reconciler's series at zero (called at start-up when `[reconcile]` is on).
pub fn init_metrics() {
    metrics();
}

fn count_outcome(o: PayOutcome) {
    metrics().outcomes.with_label_values(&[o.as_str()]).inc();
}

fn store_error(op: &'static str, error: &dyn std::fmt::Display) {
    metrics().store_errors.with_label_values(&[op]).inc();
    tracing::error!(op, error = %error, "reconciler: the state store failed");
}

// ---------------------------------------------------------------------------------------
// Pure parts

fn json_object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(o) => Some(o),
        _ => None,
    }
}

fn str_field<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    o.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn result_field<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    o.get("result")
        .and_then(Value::as_object)
        .and_then(|r| str_field(r, name))
}

/// Whether an answer body says the payment is not final yet: `result.resultStatus` `U`, or
/// `result.resultCode` `PAYMENT_IN_PROCESS`.
pub fn answer_not_final(answer: &[u8]) -> bool {
    json_object(answer).is_some_and(|o| {
        result_field(&o, "resultStatus") == Some("U")
            || result_field(&o, "resultCode") == Some("PAYMENT_IN_PROCESS")
    })
}

/// `paymentExpireTime` (ISO 8601 with an offset, e.g. `2024-05-01T12:00:00+08:00`) in UTC
/// milliseconds; `None` when absent or not such a time (then `default_close_after` applies).
pub fn parse_close_time(value: &str) -> Option<i64> {
    let v = value.trim();
    // the protocol's parser also takes epoch milliseconds; Alipay's field is ISO 8601 only
    if !v.contains('T') {
        return None;
    }
    crate::protocol::parse_request_time(v)
}

/// The timings of recording (from `[reconcile]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayTiming {
    /// No result notification this long after the pay answer → start inquiring.
    pub reconcile_after: Duration,
    /// Close time of a pay without `paymentExpireTime`.
    pub default_close_after: Duration,
}

impl PayTiming {
    /// The timings of `config`.
    pub fn from_config(config: &ReconcileConfig) -> Self {
        Self {
            reconcile_after: config.reconcile_after,
            default_close_after: config.default_close_after,
        }
    }
}

fn add(now: i64, d: Duration) -> i64 {
    now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A pay to record for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPay {
    pub merchant: String,
    pub client_id: String,
    pub payment_request_id: String,
    pub payment_notify_url: Option<String>,
    /// Alipay's `paymentId` in the pay answer, when it has one: inquiry answers must name it.
    pub payment_id: Option<String>,
    /// UTC ms.
    pub close_time: i64,
    /// UTC ms.
    pub reconcile_at: i64,
    /// UTC ms.
    pub now: i64,
}

/// Why a verified, not-final pay answer could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRecorded {
    /// The request body has no usable `paymentRequestId` (nothing to inquire by).
    NoPaymentRequestId,
}

/// The recording decision for one verified pay exchange (pure): `Ok(None)` when there is
/// nothing to record (not `payments/pay`, or a final answer), `Ok(Some(pay))` for a pay to
/// record, `Err` when it should be recorded but cannot be.
pub fn pending_pay(
    merchant: &str,
    client_id: &str,
    target: &str,
    request_body: &[u8],
    answer: &[u8],
    timing: PayTiming,
    now: i64,
) -> Result<Option<PendingPay>, NotRecorded> {
    if api_label(target) != "payments/pay" || !answer_not_final(answer) {
        return Ok(None);
    }
    let request = json_object(request_body).unwrap_or_default();
    let id = str_field(&request, "paymentRequestId")
        .filter(|id| id.len() <= MAX_ID_LEN)
        .ok_or(NotRecorded::NoPaymentRequestId)?;
    let close_time = str_field(&request, "paymentExpireTime")
        .and_then(parse_close_time)
        .unwrap_or_else(|| add(now, timing.default_close_after));
    Ok(Some(PendingPay {
        merchant: merchant.to_string(),
        client_id: client_id.to_string(),
        payment_request_id: id.to_string(),
        payment_notify_url: str_field(&request, "paymentNotifyUrl")
            .filter(|u| u.len() <= MAX_URL_LEN)
            .map(str::to_string),
        payment_id: json_object(answer)
            .as_ref()
            .and_then(|a| str_field(a, "paymentId"))
            .filter(|id| id.len() <= MAX_ID_LEN)
            .map(str::to_string),
        close_time,
        reconcile_at: add(now, timing.reconcile_after),
        now,
    }))
}

/// The `paymentRequestId` of a notification that reports a final payment result
/// (`notifyType` PAYMENT_RESULT, `result.resultStatus` `S` or `F`); `None` otherwise.
pub fn final_payment_result(body: &[u8]) -> Option<String> {
    final_result(body).map(|(id, _)| id)
}

/// [`final_payment_result`] with the result status (`"S"` or `"F"`).
fn final_result(body: &[u8]) -> Option<(String, &'static str)> {
    let o = json_object(body)?;
    if str_field(&o, "notifyType") != Some("PAYMENT_RESULT") {
        return None;
    }
    let status = match result_field(&o, "resultStatus") {
        Some("S") => "S",
        Some("F") => "F",
        _ => return None,
    };
    str_field(&o, "paymentRequestId").map(|id| (id.to_string(), status))
}

/// What a verified inquiryPayment answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inquired {
    /// `paymentStatus` SUCCESS or FAIL: the PAYMENT_RESULT body to deliver, and the outcome.
    Final { body: Vec<u8>, outcome: PayOutcome },
    /// An answer about this payment whose status is not final (PROCESSING, PENDING,
    /// CANCELLED, …): the payment is known to Alipay and still open.
    NotFinal(String),
    /// The inquiry itself did not succeed (`result.resultStatus` not `S`, or no JSON object):
    /// it says nothing about the payment.
    Failed(String),
    /// Signed, but not an answer about the payment asked (issue 18 M1): its
    /// `paymentRequestId` is absent or another one, or its `paymentId` is not the one the pay
    /// answer gave. A replayed answer about another payment would otherwise close this one.
    Refused(String),
}

/// The payment an inquiry asked about: the `paymentRequestId` asked, and Alipay's
/// `paymentId` when the pay answer had one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked<'a> {
    pub payment_request_id: &'a str,
    pub payment_id: Option<&'a str>,
}

/// Whether `answer` (a JSON object) is about the payment `asked` (pure, issue 18 M1): its
/// `paymentRequestId` must be present and equal; when the `paymentId` is known, the answer's
/// must be present and equal too. `Err` says why not.
pub fn about_payment(answer: &Map<String, Value>, asked: Asked<'_>) -> Result<(), String> {
    let shown = |v: Option<&Value>| match v {
        None | Some(Value::Null) => "none".to_string(),
        // a hostile answer must not put a megabyte into one log line
        Some(v) => v.to_string().chars().take(80).collect(),
    };
    let field = |name: &str| answer.get(name).and_then(Value::as_str);
    if field("paymentRequestId") != Some(asked.payment_request_id) {
        return Err(format!(
            "the answer is about paymentRequestId {}, not {:?}",
            shown(answer.get("paymentRequestId")),
            asked.payment_request_id
        ));
    }
    if let Some(known) = asked.payment_id {
        if field("paymentId") != Some(known) {
            return Err(format!(
                "the answer is about paymentId {}, not {known:?} (the pay answer's)",
                shown(answer.get("paymentId"))
            ));
        }
    }
    Ok(())
}

/// The fields copied from the inquiry answer into the reconciled PAYMENT_RESULT.
const COPIED: [&str; 5] = [
    "paymentRequestId",
    "paymentId",
    "paymentAmount",
    "paymentCreateTime",
    "paymentTime",
];

/// Maps a verified inquiryPayment answer (pure; see the mapping table in docs/notifications.md). First the
/// answer must be about the payment asked ([`about_payment`]), else it is
/// [`Inquired::Refused`]. `paymentStatus` SUCCESS → `result`
/// `{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}`; FAIL →
/// `resultStatus` `F` with the answer's `paymentResultCode`/`paymentResultMessage`; anything
/// else is not final. `paymentRequestId`, `paymentId`, `paymentAmount`, `paymentCreateTime`,
/// `paymentTime` are copied when present.
pub fn payment_result_body(answer: &[u8], asked: Asked<'_>) -> Inquired {
    let Some(o) = json_object(answer) else {
        return Inquired::Failed("the answer is not a JSON object".into());
    };
    if result_field(&o, "resultStatus") != Some("S") {
        return Inquired::Failed(format!(
            "the inquiry did not succeed ({}/{})",
            result_field(&o, "resultStatus").unwrap_or("-"),
            result_field(&o, "resultCode").unwrap_or("-")
        ));
    }
    if let Err(why) = about_payment(&o, asked) {
        return Inquired::Refused(why);
    }
    let status = str_field(&o, "paymentStatus").unwrap_or("");
    let (result, outcome) = match status {
        "SUCCESS" => (
            result_object("SUCCESS", "S", "success"),
            PayOutcome::InquiredSuccess,
        ),
        "FAIL" => (
            result_object(
                str_field(&o, "paymentResultCode").unwrap_or("PROCESS_FAIL"),
                "F",
                str_field(&o, "paymentResultMessage").unwrap_or("the payment failed"),
            ),
            PayOutcome::InquiredFail,
        ),
        other => return Inquired::NotFinal(format!("paymentStatus {other:?}")),
    };
    let mut fields = vec![
        ("notifyType", Value::from("PAYMENT_RESULT").to_string()),
        ("result", result),
    ];
    for name in COPIED {
        if let Some(v) = o.get(name).filter(|v| !v.is_null()) {
            fields.push((name, v.to_string()));
        }
    }
    Inquired::Final {
        body: ordered(&fields).into_bytes(),
        outcome,
    }
}

/// The value of [`CONFLICT_HEADER`] for a verified PAYMENT_RESULT with `result.resultStatus`
/// `status` about a payment whose record was closed with `recorded` (pure, issue 18 M2):
/// `recorded=<outcome>` when the result contradicts what the sidecar already delivered to the
/// app — S after the sidecar cancelled the payment or found it failed, F after it found it
/// paid — else `None` (`notified` and `expired` delivered no result of the sidecar's own).
pub fn conflict(status: &str, recorded: PayOutcome) -> Option<String> {
    let contradicts = match status {
        "S" => matches!(recorded, PayOutcome::Cancelled | PayOutcome::InquiredFail),
        "F" => recorded == PayOutcome::InquiredSuccess,
        _ => false,
    };
    contradicts.then(|| format!("recorded={}", recorded.as_str()))
}

/// A JSON object with `fields` (name, value already JSON) in this order: the order Alipay's
/// own notifications use (`notifyType`, `result`, then the ids), easier to read in logs than
/// `serde_json`'s sorted maps.
fn ordered(fields: &[(&str, String)]) -> String {
    let inner: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{}:{value}", Value::from(*name)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// `{"resultCode":…,"resultStatus":…,"resultMessage":…}`.
fn result_object(code: &str, status: &str, message: &str) -> String {
    ordered(&[
        ("resultCode", Value::from(code).to_string()),
        ("resultStatus", Value::from(status).to_string()),
        ("resultMessage", Value::from(message).to_string()),
    ])
}

/// The PAYMENT_RESULT delivered after a successful `payments/cancel` at the close time
/// (pure): `result` `{"resultCode":"ORDER_IS_CANCELED","resultStatus":"F",…}` — the code
/// Alipay itself answers for a payment that was cancelled (a pay retried with the same
/// `paymentRequestId` gets it) — with `paymentRequestId`, `paymentId` and `cancelTime` of the
/// verified cancel answer. Alipay sends no PAYMENT_RESULT for a payment cancelled before it
/// was paid, so this is the app's only word that the payment is closed.
pub fn cancelled_body(cancel_answer: &[u8], payment_request_id: &str) -> Vec<u8> {
    let o = json_object(cancel_answer).unwrap_or_default();
    let id = payment_request_id;
    let mut fields = vec![
        ("notifyType", Value::from("PAYMENT_RESULT").to_string()),
        (
            "result",
            result_object(
                "ORDER_IS_CANCELED",
                "F",
                "no final result before the close time: the sidecar cancelled the payment (payments/cancel)",
            ),
        ),
        ("paymentRequestId", Value::from(id).to_string()),
    ];
    for name in ["paymentId", "cancelTime"] {
        if let Some(v) = o.get(name).filter(|v| !v.is_null()) {
            fields.push((name, v.to_string()));
        }
    }
    ordered(&fields).into_bytes()
}

/// Whether the reconciler may cancel a payment at its close time (pure, issue 18 L6): only
/// after at least one verified inquiry answer about that very payment (`answers` recorded
/// before, or `answered_now` in this turn). Unsigned, badly signed or foreign answers say
/// nothing about the payment: cancelling on them would let whoever controls the path (or a
/// broken key) cancel paid orders.
pub fn cancel_allowed(answers: i64, answered_now: bool) -> bool {
    answers > 0 || answered_now
}

/// When a record whose inquiry was not final is worked next: after the `inquiries`-th gap
/// of `schedule` (the last one repeats), never after the close time (the delivery worker's
/// schedule rule, with the close time as the deadline).
pub fn next_inquiry(schedule: &[Duration], inquiries: i64, now: i64, close_time: i64) -> i64 {
    crate::schedule::next_attempt_at(schedule, inquiries, now, close_time.max(now))
}

/// The path part of `paymentNotifyUrl` (its host is ignored; the query is not part of the
/// event key, as for a notification Alipay posts).
pub fn notify_path(url: &str) -> Option<String> {
    let uri: http::Uri = url.trim().parse().ok()?;
    let path = uri.path();
    path.starts_with('/').then(|| path.to_string())
}

// ---------------------------------------------------------------------------------------
// Recording (outbound)

/// Where a pay to reconcile is recorded: the store in production ([`StateStore`]), a fake in
/// the outbound handler's unit tests.
#[async_trait]
pub trait PayRecorder: Send + Sync + 'static {
    /// Commits the record (idempotent on merchant + paymentRequestId).
    async fn record_pay(&self, pay: &PendingPay) -> Result<(), String>;
}

#[async_trait]
impl PayRecorder for StateStore {
    async fn record_pay(&self, pay: &PendingPay) -> Result<(), String> {
        let pay = pay.clone();
        self.run(move |store| async move {
            store
                .record_pay(&NewPay {
                    merchant: &pay.merchant,
                    client_id: &pay.client_id,
                    payment_request_id: &pay.payment_request_id,
                    payment_notify_url: pay.payment_notify_url.as_deref(),
                    payment_id: pay.payment_id.as_deref(),
                    close_time: pay.close_time,
                    reconcile_at: pay.reconcile_at,
                    now: pay.now,
                })
                .await
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
}

/// What the outbound handler needs to record pays: the recorder and the timings.
#[derive(Clone)]
pub struct PayRecording {
    recorder: Arc<dyn PayRecorder>,
    timing: PayTiming,
}

impl std::fmt::Debug for PayRecording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayRecording")
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

impl PayRecording {
    /// Records through `recorder` with `timing`.
    pub fn new(recorder: Arc<dyn PayRecorder>, timing: PayTiming) -> Self {
        init_metrics();
        Self { recorder, timing }
    }
}

#[async_trait]
impl PayHook for PayRecording {
    /// Called by the outbound handler once a verified answer is ready and before it goes
    /// back to the app. A store failure is logged and counted; the app gets its answer anyway.
    async fn after_verified_answer(
        &self,
        merchant: &str,
        client_id: &str,
        target: &str,
        request_body: &[u8],
        answer: &[u8],
    ) {
        let now = now_millis();
        match pending_pay(
            merchant,
            client_id,
            target,
            request_body,
            answer,
            self.timing,
            now,
        ) {
            Ok(None) => {}
            Ok(Some(pay)) => match self.recorder.record_pay(&pay).await {
                Ok(()) => {
                    metrics().recorded.inc();
                    tracing::info!(merchant, payment_request_id = %pay.payment_request_id, close_time = %crate::protocol::format_iso8601(pay.close_time), "reconcile: pay not final, recorded");
                }
                Err(e) => store_error("record_pay", &format!("recording pay {} of merchant {merchant} failed: {e}; it will not be reconciled", pay.payment_request_id)),
            },
            Err(NotRecorded::NoPaymentRequestId) => {
                tracing::warn!(merchant, "reconcile: a pay answer is not final but its request has no usable paymentRequestId; it cannot be reconciled");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Closing (inbound)

/// Closes the merchant's pay record when a final PAYMENT_RESULT arrives (outcome `notified`),
/// and recognises one that contradicts the outcome of an already closed record.
#[derive(Debug)]
pub struct PayCloser {
    store: Arc<StateStore>,
}

impl PayCloser {
    /// Closes records in `store`.
    pub fn new(store: Arc<StateStore>) -> Self {
        init_metrics();
        Self { store }
    }
}

#[async_trait]
impl NotificationHook for PayCloser {
    async fn verified(&self, merchant: &str, body: &[u8]) -> Option<String> {
        let (id, status) = final_result(body)?;
        let owner = merchant.to_string();
        let key = id.clone();
        let closed = self
            .store
            .run(move |store| async move {
                let now = now_millis();
                let owner = PayOwner::Merchant(&owner);
                if store
                    .close_pay(owner, &key, PayOutcome::Notified, now)
                    .await?
                {
                    return Ok(Ok(()));
                }
                store.closed_pay_outcome(owner, &key).await.map(Err)
            })
            .await;
        match closed {
            Ok(Ok(())) => {
                count_outcome(PayOutcome::Notified);
                tracing::info!(merchant, payment_request_id = %id, "reconcile: the result notification arrived; record closed");
                None
            }
            Ok(Err(Some(recorded))) => {
                let value = conflict(status, recorded)?;
                metrics()
                    .conflicts
                    .with_label_values(&[recorded.as_str()])
                    .inc();
                tracing::warn!(merchant, payment_request_id = %id, result_status = status, recorded = recorded.as_str(), "reconcile: Alipay's payment result contradicts the outcome the sidecar recorded and delivered; delivered marked X-Alipay-Sidecar-Conflict: the app must inquire the payment (a cancel of a paid payment refunds it)");
                Some(value)
            }
            Ok(Err(None)) => None,
            Err(e) => {
                store_error("close_pay", &e);
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The reconciler

/// The background service that works due pay records (see the module doc).
pub struct Reconciler<G> {
    store: Arc<StateStore>,
    outbound: Outbound<G>,
    config: ReconcileConfig,
    owner: String,
    lease: Duration,
    tick: Duration,
}

/// What one gateway call through the outbound handler gave.
enum Called {
    /// A 200 answer whose signature verified: its body.
    Verified(Bytes),
    /// Anything else, with what to log.
    Failed(String),
}

impl<G: UpstreamClient> Reconciler<G> {
    /// A reconciler on `store`, calling the gateway through `outbound` (a handler serving
    /// every merchant: the call names its merchant in [`MERCHANT_HEADER`]). `request_timeout`
    /// is the outbound one: a claim's lease outlasts an inquiry plus a cancel with it.
    pub fn new(
        store: Arc<StateStore>,
        outbound: Outbound<G>,
        config: ReconcileConfig,
        request_timeout: Duration,
    ) -> Self {
        init_metrics();
        let mut random = [0u8; 6];
        let _ = getrandom::fill(&mut random);
        let owner = format!(
            "{}-{}",
            std::process::id(),
            random
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
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
            outbound,
            config,
            owner,
            lease: request_timeout * 2 + Duration::from_secs(10),
            tick,
        }
    }

    /// Works every due record once (one claim at a time, so the lease covers one record's
    /// turn). Returns how many were worked.
    pub async fn turn(&self) -> usize {
        let mut worked = 0;
        loop {
            let (owner, lease) = (self.owner.clone(), self.lease);
            let claimed = self
                .store
                .run(move |s| async move { s.claim_due_pays(now_millis(), &owner, lease, 1).await })
                .await;
            let record = match claimed {
                Ok(mut v) if !v.is_empty() => v.remove(0),
                Ok(_) => return worked,
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
        match self
            .store
            .run(|s| async move { s.open_pay_count().await })
            .await
        {
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
                    self.conclude(rec, Some(body), outcome).await;
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
        let (id, owner) = (rec.id.clone(), self.owner.clone());
        match self
            .store
            .run(move |s| async move { s.reschedule_pay_answered(&id, &owner, next, answered).await })
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
        let id = rec.id.clone();
        match self
            .store
            .run(move |s| async move { s.finish_pay(&id, outcome, now).await })
            .await
        {
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
        let merchant = rec.merchant.clone();
        let recorded = self
            .store
            .run(move |s| async move {
                s.record_notification(&NewNotification {
                    merchant: &merchant,
                    key: &key,
                    body: &body,
                    headers: &headers,
                    now,
                    deliver_at: Some(now),
                })
                .await
            })
            .await
            .map_err(|e| e.to_string())?;
        if recorded.inserted {
            tracing::info!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, event_id = %recorded.event_id, "reconcile: result recorded for delivery to the app");
        } else {
            tracing::info!(merchant = %rec.merchant, payment_request_id = %rec.payment_request_id, event_id = %recorded.event_id, "reconcile: the same result was already recorded (Alipay's notification came first); not delivered again");
        }
        Ok(())
    }

    /// Calls `tail` (after `/ams/api/` or, for a `SANDBOX_` client id, `/ams/sandbox/api/`)
    /// for the record's merchant through the outbound handler, recording the request's
    /// metrics and log line as the listeners do. The handler's head checks are not run: they
    /// guard the listener against what an app (or a browser) sends (`Host`, browser headers,
    /// `allowed_path_prefixes`), while this request is built by the sidecar itself.
    async fn call(&self, rec: &PayRecord, tail: &str, body: String) -> Called {
        let base = if rec.client_id.starts_with("SANDBOX_") {
            "/ams/sandbox/api/"
        } else {
            "/ams/api/"
        };
        let target = format!("{base}{tail}");
        let mut head = match RequestHeader::build("POST", target.as_bytes(), Some(3)) {
            Ok(h) => h,
            Err(e) => return Called::Failed(e.to_string()),
        };
        let headers = [
            ("Content-Type", "application/json; charset=UTF-8"),
            (MERCHANT_HEADER, rec.merchant.as_str()),
        ];
        for (name, value) in headers {
            if let Err(e) = head.insert_header(name, value) {
                return Called::Failed(format!("building the {tail} request: {e}"));
            }
        }
        let start = Instant::now();
        let reply = self
            .outbound
            .handle(Request {
                head,
                target,
                body: Bytes::from(body),
                local_addr: None,
            })
            .await;
        crate::adapter::record(Direction::Outbound, start, &reply.report);
        let verified = reply
            .head
            .headers
            .get(VERIFIED_HEADER)
            .is_some_and(|v| v.as_bytes() == Marker::Verified.as_str().as_bytes());
        if reply.head.status.as_u16() == 200 && verified {
            Called::Verified(reply.body)
        } else {
            Called::Failed(format!(
                "{tail}: HTTP {} {}",
                reply.head.status.as_u16(),
                reply
                    .report
                    .detail
                    .as_deref()
                    .or(reply.report.error.map(|e| e.code()))
                    .unwrap_or("(not verified)")
            ))
        }
    }
}

/// After the close time, a failed cancel is retried for this many gaps (the last of
/// `inquiry_schedule`), then the record ends `expired`.
const CANCEL_ATTEMPTS: u32 = 5;

#[async_trait]
impl<G: UpstreamClient> BackgroundService for Reconciler<G> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const PAY: &str = "/ams/api/v1/payments/pay";
    const TIMING: PayTiming = PayTiming {
        reconcile_after: Duration::from_secs(60),
        default_close_after: Duration::from_secs(1800),
    };
    const NOW: i64 = 1_714_538_096_000; // 2024-05-01T04:34:56Z

    fn decide(
        target: &str,
        request: &str,
        answer: &str,
    ) -> Result<Option<PendingPay>, NotRecorded> {
        pending_pay(
            "sg",
            "T_1",
            target,
            request.as_bytes(),
            answer.as_bytes(),
            TIMING,
            NOW,
        )
    }

    const IN_PROCESS: &str = r#"{"result":{"resultCode":"PAYMENT_IN_PROCESS","resultStatus":"U","resultMessage":"payment in process"}}"#;

    #[test]
    fn only_not_final_pay_answers_are_recorded() {
        let req = r#"{"paymentRequestId":"p-1","paymentNotifyUrl":"https://shop.example/alipay/notify?x=1"}"#;
        let pay = decide(PAY, req, IN_PROCESS).unwrap().unwrap();
        assert_eq!(
            pay,
            PendingPay {
                merchant: "sg".into(),
                client_id: "T_1".into(),
                payment_request_id: "p-1".into(),
                payment_notify_url: Some("https://shop.example/alipay/notify?x=1".into()),
                payment_id: None,
                close_time: NOW + 1_800_000,
                reconcile_at: NOW + 60_000,
                now: NOW,
            }
        );
        // sandbox path too; U alone, or PAYMENT_IN_PROCESS alone
        let u = r#"{"result":{"resultCode":"UNKNOWN_EXCEPTION","resultStatus":"U"}}"#;
        assert!(decide("/ams/sandbox/api/v1/payments/pay", req, u)
            .unwrap()
            .is_some());
        let code_only = r#"{"result":{"resultCode":"PAYMENT_IN_PROCESS"}}"#;
        assert!(decide(PAY, req, code_only).unwrap().is_some());
        // final answers, other APIs, unreadable answers: nothing
        let s = r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S"}}"#;
        let f = r#"{"result":{"resultCode":"USER_BALANCE_NOT_ENOUGH","resultStatus":"F"}}"#;
        assert_eq!(decide(PAY, req, s), Ok(None));
        assert_eq!(decide(PAY, req, f), Ok(None));
        assert_eq!(decide(PAY, req, "not json"), Ok(None));
        assert_eq!(
            decide("/ams/api/v1/payments/inquiryPayment", req, IN_PROCESS),
            Ok(None)
        );
        assert_eq!(
            decide("/ams/api/v1/payments/payX", req, IN_PROCESS),
            Ok(None)
        );
        // no id: cannot be recorded
        assert_eq!(
            decide(PAY, "{}", IN_PROCESS),
            Err(NotRecorded::NoPaymentRequestId)
        );
        assert_eq!(
            decide(PAY, "[1]", IN_PROCESS),
            Err(NotRecorded::NoPaymentRequestId)
        );
        let long = format!(r#"{{"paymentRequestId":"{}"}}"#, "x".repeat(300));
        assert_eq!(
            decide(PAY, &long, IN_PROCESS),
            Err(NotRecorded::NoPaymentRequestId)
        );
    }

    #[test]
    fn the_close_time_is_payment_expire_time_else_the_default() {
        let req = r#"{"paymentRequestId":"p","paymentExpireTime":"2024-05-01T12:44:56+08:00"}"#;
        let pay = decide(PAY, req, IN_PROCESS).unwrap().unwrap();
        assert_eq!(pay.close_time, NOW + 10 * 60_000);
        assert_eq!(parse_close_time("2024-05-01T04:34:56Z"), Some(NOW));
        assert_eq!(parse_close_time("2024-05-01T12:34:56+0800"), Some(NOW));
        for bad in ["", "1714538096000", "tomorrow", "2024-05-01"] {
            assert_eq!(parse_close_time(bad), None, "{bad}");
        }
        let req = r#"{"paymentRequestId":"p","paymentExpireTime":"soon"}"#;
        let pay = decide(PAY, req, IN_PROCESS).unwrap().unwrap();
        assert_eq!(pay.close_time, NOW + 1_800_000);
    }

    #[test]
    fn final_payment_results_close_records() {
        let n = |s: &str| final_payment_result(s.as_bytes());
        assert_eq!(
            n(
                r#"{"notifyType":"PAYMENT_RESULT","result":{"resultStatus":"S"},"paymentRequestId":"p"}"#
            ),
            Some("p".into())
        );
        assert_eq!(
            n(
                r#"{"notifyType":"PAYMENT_RESULT","result":{"resultStatus":"F"},"paymentRequestId":"p"}"#
            ),
            Some("p".into())
        );
        assert_eq!(
            n(
                r#"{"notifyType":"PAYMENT_RESULT","result":{"resultStatus":"U"},"paymentRequestId":"p"}"#
            ),
            None
        );
        assert_eq!(
            n(
                r#"{"notifyType":"PAYMENT_PENDING","result":{"resultStatus":"S"},"paymentRequestId":"p"}"#
            ),
            None
        );
        assert_eq!(
            n(r#"{"notifyType":"PAYMENT_RESULT","result":{"resultStatus":"S"}}"#),
            None
        );
        assert_eq!(n("garbage"), None);
    }

    fn parsed(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn a_successful_inquiry_maps_to_the_payment_result_alipay_sends() {
        let answer = br#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},"paymentStatus":"SUCCESS","paymentResultCode":"SUCCESS","paymentRequestId":"p-1","paymentId":"2024X","paymentAmount":{"currency":"SGD","value":"100"},"paymentCreateTime":"2024-05-01T12:00:00+08:00","paymentTime":"2024-05-01T12:00:05+08:00","extra":"dropped"}"#;
        let Inquired::Final { body, outcome } =
            payment_result_body(answer, asked("p-1", Some("2024X")))
        else {
            panic!("final");
        };
        assert_eq!(outcome, PayOutcome::InquiredSuccess);
        assert_eq!(
            parsed(&body),
            serde_json::json!({
                "notifyType": "PAYMENT_RESULT",
                "result": {"resultCode": "SUCCESS", "resultStatus": "S", "resultMessage": "success"},
                "paymentRequestId": "p-1",
                "paymentId": "2024X",
                "paymentAmount": {"currency": "SGD", "value": "100"},
                "paymentCreateTime": "2024-05-01T12:00:00+08:00",
                "paymentTime": "2024-05-01T12:00:05+08:00",
            })
        );
        assert!(
            body.starts_with(br#"{"notifyType":"PAYMENT_RESULT","result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},"paymentRequestId":"p-1""#),
            "{}",
            String::from_utf8_lossy(&body)
        );
        // Alipay's own notification of the same result has the same event key
        let alipay = br#"{"notifyType":"PAYMENT_RESULT","result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},"paymentRequestId":"p-1","paymentId":"2024X"}"#;
        assert_eq!(
            EventKey::from_notification("T_1", "/alipay/notify", &body).event_id(),
            EventKey::from_notification("T_1", "/alipay/notify", alipay).event_id()
        );
    }

    #[test]
    fn a_failed_inquiry_carries_the_payment_result_code() {
        let answer = br#"{"result":{"resultCode":"SUCCESS","resultStatus":"S"},"paymentStatus":"FAIL","paymentResultCode":"USER_BALANCE_NOT_ENOUGH","paymentResultMessage":"not enough","paymentRequestId":"p-2"}"#;
        let Inquired::Final { body, outcome } = payment_result_body(answer, asked("p-2", None))
        else {
            panic!("final");
        };
        assert_eq!(outcome, PayOutcome::InquiredFail);
        let v = parsed(&body);
        assert_eq!(
            v["result"],
            serde_json::json!({"resultCode":"USER_BALANCE_NOT_ENOUGH","resultStatus":"F","resultMessage":"not enough"})
        );
        assert_eq!(v["paymentRequestId"], "p-2");
        assert!(v.get("paymentTime").is_none());
    }

    #[test]
    fn unclear_or_failed_inquiries_are_not_final() {
        for answer in [
            r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S"},"paymentStatus":"PROCESSING","paymentRequestId":"p"}"#,
            r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S"},"paymentStatus":"CANCELLED","paymentRequestId":"p"}"#,
            r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S"},"paymentRequestId":"p"}"#,
            r#"{"result":{"resultCode":"ORDER_NOT_EXIST","resultStatus":"F"},"paymentStatus":"SUCCESS"}"#,
            r#"{"result":{"resultCode":"UNKNOWN_EXCEPTION","resultStatus":"U"}}"#,
            "[]",
        ] {
            assert!(
                matches!(
                    payment_result_body(answer.as_bytes(), asked("p", None)),
                    Inquired::NotFinal(_) | Inquired::Failed(_)
                ),
                "{answer}"
            );
        }
    }

    fn asked(id: &'static str, payment_id: Option<&'static str>) -> Asked<'static> {
        Asked {
            payment_request_id: id,
            payment_id,
        }
    }

    #[test]
    fn the_pay_answers_payment_id_is_recorded() {
        let req = r#"{"paymentRequestId":"p-1"}"#;
        let answer = r#"{"result":{"resultCode":"PAYMENT_IN_PROCESS","resultStatus":"U"},"paymentId":"2024X"}"#;
        let pay = decide(PAY, req, answer).unwrap().unwrap();
        assert_eq!(pay.payment_id.as_deref(), Some("2024X"));
        let long = format!(
            r#"{{"result":{{"resultStatus":"U"}},"paymentId":"{}"}}"#,
            "9".repeat(300)
        );
        assert_eq!(decide(PAY, req, &long).unwrap().unwrap().payment_id, None);
    }

    /// Issue 18 M1: a signed answer about another payment, or naming none, is refused.
    #[test]
    fn answers_about_another_payment_are_refused() {
        let success = |ids: &str| {
            format!(
                r#"{{"result":{{"resultCode":"SUCCESS","resultStatus":"S"}},"paymentStatus":"SUCCESS"{ids}}}"#
            )
        };
        let refused = |answer: &str, a: Asked<'_>| {
            matches!(
                payment_result_body(answer.as_bytes(), a),
                Inquired::Refused(_)
            )
        };
        // another paymentRequestId (a replayed answer), none at all, a non-string one
        assert!(refused(
            &success(r#","paymentRequestId":"p-other","paymentId":"2024Y""#),
            asked("p-1", None)
        ));
        assert!(refused(&success(""), asked("p-1", None)));
        assert!(refused(
            &success(r#","paymentRequestId":null"#),
            asked("p-1", None)
        ));
        assert!(refused(
            &success(r#","paymentRequestId":1"#),
            asked("p-1", None)
        ));
        // the right paymentRequestId but another paymentId than the pay answer's, or none
        assert!(refused(
            &success(r#","paymentRequestId":"p-1","paymentId":"2024Y""#),
            asked("p-1", Some("2024X"))
        ));
        assert!(refused(
            &success(r#","paymentRequestId":"p-1""#),
            asked("p-1", Some("2024X"))
        ));
        // not-final answers about another payment are refused too (they would count as answers)
        let processing = r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S"},"paymentStatus":"PROCESSING","paymentRequestId":"p-other"}"#;
        assert!(refused(processing, asked("p-1", None)));
        // the payment asked: accepted; paymentId unknown → only paymentRequestId matters
        let ok = success(r#","paymentRequestId":"p-1","paymentId":"2024X""#);
        assert!(matches!(
            payment_result_body(ok.as_bytes(), asked("p-1", Some("2024X"))),
            Inquired::Final { .. }
        ));
        assert!(matches!(
            payment_result_body(ok.as_bytes(), asked("p-1", None)),
            Inquired::Final { .. }
        ));
        // the reason names both ids, bounded
        let long = success(&format!(r#","paymentRequestId":"{}""#, "x".repeat(10_000)));
        let Inquired::Refused(why) = payment_result_body(long.as_bytes(), asked("p-1", None))
        else {
            panic!("refused");
        };
        assert!(why.len() < 200 && why.contains("p-1"), "{why}");
    }

    /// Issue 18 L6.
    #[test]
    fn a_cancel_needs_a_verified_answer_about_the_payment() {
        assert!(!cancel_allowed(0, false));
        assert!(cancel_allowed(0, true));
        assert!(cancel_allowed(3, false));
    }

    /// Issue 18 M2.
    #[test]
    fn results_that_contradict_the_recorded_outcome_are_conflicts() {
        assert_eq!(
            conflict("S", PayOutcome::Cancelled).as_deref(),
            Some("recorded=cancelled")
        );
        assert_eq!(
            conflict("S", PayOutcome::InquiredFail).as_deref(),
            Some("recorded=inquired_fail")
        );
        assert_eq!(
            conflict("F", PayOutcome::InquiredSuccess).as_deref(),
            Some("recorded=inquired_success")
        );
        for (status, o) in [
            ("S", PayOutcome::InquiredSuccess),
            ("F", PayOutcome::Cancelled),
            ("F", PayOutcome::InquiredFail),
            ("S", PayOutcome::Notified),
            ("F", PayOutcome::Notified),
            ("S", PayOutcome::Expired),
            ("U", PayOutcome::Cancelled),
        ] {
            assert_eq!(conflict(status, o), None, "{status} after {o:?}");
        }
        assert_eq!(final_result(br#"{"notifyType":"PAYMENT_RESULT","result":{"resultStatus":"S"},"paymentRequestId":"p"}"#), Some(("p".into(), "S")));
    }

    #[test]
    fn a_cancel_is_delivered_as_a_failed_payment_result() {
        let answer = br#"{"result":{"resultCode":"SUCCESS","resultStatus":"S"},"paymentId":"2024X","paymentRequestId":"p-3","cancelTime":"2024-05-01T12:30:00+08:00"}"#;
        let v = parsed(&cancelled_body(answer, "p-3"));
        assert_eq!(v["notifyType"], "PAYMENT_RESULT");
        assert_eq!(v["result"]["resultStatus"], "F");
        assert_eq!(v["result"]["resultCode"], "ORDER_IS_CANCELED");
        assert_eq!(v["paymentRequestId"], "p-3");
        assert_eq!(v["paymentId"], "2024X");
        assert_eq!(v["cancelTime"], "2024-05-01T12:30:00+08:00");
        assert_eq!(
            final_payment_result(&cancelled_body(b"{}", "p-4")),
            Some("p-4".into())
        );
    }

    #[test]
    fn inquiries_follow_the_schedule_and_stop_at_the_close_time() {
        let s = [Duration::from_secs(3), Duration::from_secs(5)];
        assert_eq!(next_inquiry(&s, 0, 1000, 100_000), 4000);
        assert_eq!(next_inquiry(&s, 1, 1000, 100_000), 6000);
        assert_eq!(
            next_inquiry(&s, 7, 1000, 100_000),
            6000,
            "the last gap repeats"
        );
        assert_eq!(
            next_inquiry(&s, 7, 1000, 2000),
            2000,
            "never after the close time"
        );
    }

    #[test]
    fn notify_paths_ignore_host_and_query() {
        assert_eq!(
            notify_path("https://shop.example:8443/alipay/notify?a=1").as_deref(),
            Some("/alipay/notify")
        );
        assert_eq!(notify_path("http://127.0.0.1:9/n").as_deref(), Some("/n"));
        assert_eq!(
            notify_path("/relative/path").as_deref(),
            Some("/relative/path")
        );
        assert_eq!(notify_path("not a url"), None);
    }
}
