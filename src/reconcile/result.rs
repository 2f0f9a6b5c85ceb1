//! What a verified answer says (pure): the reading of inquiryPayment and cancel answers, the
//! PAYMENT_RESULT bodies the sidecar builds from them, and the rules of when to inquire again
//! and when a cancel is allowed. No store, no gateway: every rule here is a value in, a value
//! out, unit-tested below.

use std::time::Duration;

use serde_json::{Map, Value};
use sidecar_store::PayOutcome;

pub(super) fn json_object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(o) => Some(o),
        _ => None,
    }
}

pub(super) fn str_field<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    o.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

pub(super) fn result_field<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    o.get("result")
        .and_then(Value::as_object)
        .and_then(|r| str_field(r, name))
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

#[cfg(test)]
mod tests {
    use super::*;
    use sidecar_store::EventKey;

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
