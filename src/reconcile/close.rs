//! Closing (the inbound side): a verified PAYMENT_RESULT with a final result closes the
//! merchant's pay record (outcome `notified`, no inquiry made); one that contradicts the
//! outcome of an already closed record is marked for the app ([`crate::headers::CONFLICT_HEADER`]).

use std::sync::Arc;

use async_trait::async_trait;
use sidecar_store::PayOutcome;

use super::metrics::{count_outcome, metrics, register_metrics, store_error};
use super::result::{json_object, result_field, str_field};
use super::store::{Closed, PayStore};
use crate::exchange::now_millis;
use crate::hooks::NotificationHook;

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

/// The value of [`crate::headers::CONFLICT_HEADER`] for a verified PAYMENT_RESULT with `result.resultStatus`
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

/// Closes the merchant's pay record when a final PAYMENT_RESULT arrives (outcome `notified`),
/// and recognises one that contradicts the outcome of an already closed record.
pub struct PayCloser {
    store: Arc<dyn PayStore>,
}

impl std::fmt::Debug for PayCloser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayCloser").finish_non_exhaustive()
    }
}

impl PayCloser {
    /// Closes records in `store`.
    pub fn new(store: Arc<dyn PayStore>) -> Self {
        register_metrics();
        Self { store }
    }
}

#[async_trait]
impl NotificationHook for PayCloser {
    async fn verified(&self, merchant: &str, body: &[u8]) -> Option<String> {
        let (id, status) = final_result(body)?;
        match self.store.close_notified(merchant, &id, now_millis()).await {
            Ok(Closed::Now) => {
                count_outcome(PayOutcome::Notified);
                tracing::info!(merchant, payment_request_id = %id, "reconcile: the result notification arrived; record closed");
                None
            }
            Ok(Closed::Before(recorded)) => {
                let value = conflict(status, recorded)?;
                metrics()
                    .conflicts
                    .with_label_values(&[recorded.as_str()])
                    .inc();
                tracing::warn!(merchant, payment_request_id = %id, result_status = status, recorded = recorded.as_str(), "reconcile: Alipay's payment result contradicts the outcome the sidecar recorded and delivered; delivered marked X-Alipay-Sidecar-Conflict: the app must inquire the payment (a cancel of a paid payment refunds it)");
                Some(value)
            }
            Ok(Closed::NotRecorded) => None,
            Err(e) => {
                store_error("close_pay", &e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::result::cancelled_body;

    fn parsed(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).unwrap()
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
}
