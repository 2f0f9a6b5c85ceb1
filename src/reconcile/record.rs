//! Recording (the outbound side): a verified `payments/pay` answer that is not final is
//! recorded for reconciliation before the answer goes back to the app ([`PayRecording`], the
//! outbound handler's [`PayHook`]). The decision is pure ([`pending_pay`]); the write goes
//! through [`PayRecorder`] (the store in production, a fake in the handler's unit tests).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sidecar_store::NewPay;

use super::metrics::{metrics, register_metrics, store_error};
use super::result::{json_object, result_field, str_field};
use crate::config::ReconcileConfig;
use crate::exchange::now_millis;
use crate::hooks::PayHook;
use crate::metrics::api_label;
use crate::store::StateStore;

/// Longest `paymentRequestId` recorded (Alipay allows 64 characters; a hostile or broken
/// body must not put megabytes into the store).
const MAX_ID_LEN: usize = 256;

/// Longest `paymentNotifyUrl` recorded.
const MAX_URL_LEN: usize = 2048;

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

pub(super) fn add(now: i64, d: Duration) -> i64 {
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
        register_metrics();
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
}
