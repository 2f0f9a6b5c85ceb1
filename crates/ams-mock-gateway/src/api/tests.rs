//! The store's API calls, without sockets.

use super::*;

fn stamp() -> Stamp {
    Stamp {
        now: "2024-05-01T12:34:57+08:00".into(),
        date: "20240501".into(),
    }
}

fn ctx() -> PayContext<'static> {
    static SUCCESS: PaymentOutcome = PaymentOutcome::Success;
    PayContext {
        client_id: "T_1",
        notify: NotifyMode::Immediate,
        outcome: &SUCCESS,
        tampered: false,
    }
}

fn call_out(store: &mut Store, route: &str, body: &str) -> (Value, Option<Effect>) {
    let out = store.call(route, body.as_bytes(), &stamp(), &ctx());
    (
        serde_json::from_slice(&out.body).expect("json body"),
        out.effect,
    )
}

fn call(store: &mut Store, route: &str, body: &str) -> Value {
    call_out(store, route, body).0
}

fn pay(id: &str, extra: &str) -> String {
    format!(
        r#"{{"paymentRequestId":"{id}","paymentAmount":{{"currency":"HKD","value":"100"}},"paymentNotifyUrl":"http://127.0.0.1:9/n"{extra}}}"#
    )
}

fn inquiry(s: &mut Store, id: &str) -> Value {
    call(
        s,
        "inquiryPayment",
        &format!(r#"{{"paymentRequestId":"{id}"}}"#),
    )
}

fn notification(s: &Store, id: &str) -> Result<Value, ControlError> {
    s.notification(id)
        .map(|(_, job)| serde_json::from_slice(&job.body).unwrap())
}

#[test]
fn processing_payment_settles_once_and_inquiry_follows() {
    let mut s = Store::default();
    let (answer, effect) = call_out(
        &mut s,
        "pay",
        &pay("p1", r#","mockOutcome":"success_after:5s""#),
    );
    assert_eq!(answer["result"]["resultCode"], "PAYMENT_IN_PROCESS");
    assert_eq!(answer["result"]["resultStatus"], "U");
    assert!(answer["paymentId"].is_string() && answer.get("paymentTime").is_none());
    assert_eq!(
        effect,
        Some(Effect::SettleAfter {
            request_id: "p1".into(),
            after: Duration::from_secs(5),
            result: PaymentResult::Success
        })
    );
    let inq = inquiry(&mut s, "p1");
    assert_eq!(inq["paymentStatus"], "PROCESSING");
    assert_eq!(inq["paymentResultCode"], "PAYMENT_IN_PROCESS");
    assert!(inq.get("paymentTime").is_none());
    assert_eq!(
        notification(&s, "p1"),
        Err(ControlError::NotFinal("p1".into()))
    );
    // A replay still answers U and starts nothing.
    let (again, effect) = call_out(&mut s, "pay", &pay("p1", ""));
    assert_eq!(again["result"]["resultStatus"], "U");
    assert_eq!(effect, None);

    s.settle("p1", &PaymentResult::Success, &stamp()).unwrap();
    let inq = inquiry(&mut s, "p1");
    assert_eq!(inq["paymentStatus"], "SUCCESS");
    assert_eq!(inq["paymentResultCode"], "SUCCESS");
    assert_eq!(inq["paymentTime"], "2024-05-01T12:34:57+08:00");
    let n = notification(&s, "p1").unwrap();
    assert_eq!(n["notifyType"], "PAYMENT_RESULT");
    assert_eq!(n["result"]["resultStatus"], "S");
    assert_eq!(n["paymentTime"], "2024-05-01T12:34:57+08:00");
    assert_eq!(
        s.settle("p1", &PaymentResult::Fail { code: "X".into() }, &stamp()),
        Err(ControlError::AlreadyFinal {
            id: "p1".into(),
            status: PaymentStatus::Success
        })
    );
    assert_eq!(
        call(&mut s, "pay", &pay("p1", ""))["result"]["resultStatus"],
        "S"
    );
}

#[test]
fn failed_payment_reports_its_code() {
    let mut s = Store::default();
    call(
        &mut s,
        "pay",
        &pay("p2", r#","mockOutcome":"fail_after:1s:ORDER_IS_CLOSED""#),
    );
    s.settle(
        "p2",
        &PaymentResult::Fail {
            code: "ORDER_IS_CLOSED".into(),
        },
        &stamp(),
    )
    .unwrap();
    let inq = inquiry(&mut s, "p2");
    assert_eq!(
        inq["result"]["resultStatus"], "S",
        "the inquiry itself worked"
    );
    assert_eq!(inq["paymentStatus"], "FAIL");
    assert_eq!(inq["paymentResultCode"], "ORDER_IS_CLOSED");
    assert!(inq["paymentResultMessage"].is_string());
    assert!(inq.get("paymentTime").is_none());
    let n = notification(&s, "p2").unwrap();
    assert_eq!(
        n["result"],
        serde_json::json!({"resultCode":"ORDER_IS_CLOSED","resultStatus":"F","resultMessage":"The order is closed."})
    );
    assert!(n.get("paymentTime").is_none());
    let refund = call(
        &mut s,
        "refund",
        &format!(
            r#"{{"refundRequestId":"r","paymentId":{},"refundAmount":{{"currency":"HKD","value":"1"}}}}"#,
            inq["paymentId"]
        ),
    );
    assert_eq!(refund["result"]["resultCode"], "PROCESS_FAIL");
}

#[test]
fn cancel_closes_processing_and_paid_payments() {
    let mut s = Store::default();
    call(&mut s, "pay", &pay("p3", r#","mockOutcome":"never""#));
    let c = call(&mut s, "cancel", r#"{"paymentRequestId":"p3"}"#);
    assert_eq!(c["result"]["resultStatus"], "S");
    assert_eq!(inquiry(&mut s, "p3")["paymentStatus"], "CANCELLED");
    assert_eq!(
        notification(&s, "p3"),
        Err(ControlError::Cancelled("p3".into()))
    );
    assert!(matches!(
        s.settle("p3", &PaymentResult::Success, &stamp()),
        Err(ControlError::AlreadyFinal {
            status: PaymentStatus::Cancelled,
            ..
        })
    ));
    assert_eq!(
        call(&mut s, "pay", &pay("p3", ""))["result"]["resultCode"],
        "ORDER_IS_CANCELED"
    );

    // Paid, then cancelled: CANCELLED, but its (late) notification still reports the payment.
    call(&mut s, "pay", &pay("p4", r#","mockNotify":"none""#));
    assert_eq!(s.notification("p4").unwrap().0, NotifyMode::Held);
    call(&mut s, "cancel", r#"{"paymentRequestId":"p4"}"#);
    assert_eq!(s.status("p4"), Some(PaymentStatus::Cancelled));
    assert_eq!(
        notification(&s, "p4").unwrap()["result"]["resultStatus"],
        "S"
    );
}

#[test]
fn unusable_switches_are_param_illegal() {
    let mut s = Store::default();
    for extra in [
        r#","mockNotify":"sometimes""#,
        r#","mockNotify":5"#,
        r#","mockOutcome":"success_after:forever""#,
    ] {
        let (answer, effect) = call_out(&mut s, "pay", &pay("bad", extra));
        assert_eq!(answer["result"]["resultCode"], "PARAM_ILLEGAL", "{extra}");
        assert!(effect.is_none());
    }
    assert_eq!(s.status("bad"), None);
    let (_, effect) = call_out(&mut s, "pay", &pay("late", r#","mockNotify":"late:2s""#));
    assert_eq!(effect, Some(Effect::Final("late".into())));
    assert_eq!(
        s.notification("late").unwrap().0,
        NotifyMode::Late(Duration::from_secs(2))
    );
}

#[test]
fn result_comes_first_in_alipay_order() {
    assert_eq!(
        envelope("X", Status::F, "m"),
        r#"{"result":{"resultCode":"X","resultStatus":"F","resultMessage":"m"}}"#
    );
}

#[test]
fn refunds_are_limited_to_the_paid_amount() {
    let mut s = Store::default();
    let pay = call(
        &mut s,
        "pay",
        r#"{"paymentRequestId":"p1","paymentAmount":{"currency":"HKD","value":"100"}}"#,
    );
    let pid = pay["paymentId"].as_str().unwrap().to_string();
    assert_eq!(pid.len(), 32);
    let r = |s: &mut Store, id: &str, v: &str| {
        call(
            s,
            "refund",
            &format!(
                r#"{{"refundRequestId":"{id}","paymentId":"{pid}","refundAmount":{{"currency":"HKD","value":"{v}"}}}}"#
            ),
        )["result"]["resultCode"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(r(&mut s, "r1", "60"), "SUCCESS");
    assert_eq!(r(&mut s, "r2", "41"), "REFUND_AMOUNT_EXCEED");
    assert_eq!(r(&mut s, "r2", "40"), "SUCCESS");
    assert_eq!(r(&mut s, "r1", "60"), "SUCCESS");
    assert_eq!(r(&mut s, "r1", "61"), "REPEAT_REQ_INCONSISTENT");
}
