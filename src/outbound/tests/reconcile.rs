//! `[reconcile]`: verified pays that are not final are recorded before the app gets the
//! answer; a store failure never costs the app its answer.

use super::*;

/// Remembers what it was asked to record; fails when told to.
#[derive(Default)]
struct Recorder {
    pays: Mutex<Vec<crate::reconcile::PendingPay>>,
    fail: bool,
}

#[async_trait::async_trait]
impl crate::reconcile::PayRecorder for Recorder {
    async fn record_pay(&self, pay: &crate::reconcile::PendingPay) -> Result<(), String> {
        self.pays.lock().unwrap().push(pay.clone());
        if self.fail {
            return Err("disk full".into());
        }
        Ok(())
    }
}

fn recording(
    policy: OutboundPolicy,
    gw: &Arc<Fake>,
    fail: bool,
) -> (Outbound<Arc<Fake>>, Arc<Recorder>) {
    let recorder = Arc::new(Recorder {
        fail,
        ..Recorder::default()
    });
    let timing = crate::reconcile::PayTiming {
        reconcile_after: Duration::from_secs(60),
        default_close_after: Duration::from_secs(1800),
    };
    let h = outbound_with(policy, CLIENT, None, gw).with_pay_recording(
        crate::reconcile::PayRecording::new(recorder.clone(), timing),
    );
    (h, recorder)
}

const IN_PROCESS: &[u8] =
    br#"{"result":{"resultCode":"PAYMENT_IN_PROCESS","resultStatus":"U","resultMessage":"payment in process"},"paymentRequestId":"p1"}"#;

#[tokio::test]
async fn a_verified_pay_answer_that_is_not_final_is_recorded_before_the_app_gets_it() {
    let gw = alipay(200, "1", IN_PROCESS);
    let (h, recorder) = recording(policy(), &gw, false);
    let reply = h.handle(pay(&[])).await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(&reply.body[..], IN_PROCESS, "relayed byte-exact");
    let pays = recorder.pays.lock().unwrap().clone();
    assert_eq!(pays.len(), 1, "recorded before the reply was returned");
    assert_eq!(pays[0].merchant, DEFAULT_MERCHANT);
    assert_eq!(pays[0].client_id, CLIENT);
    assert_eq!(pays[0].payment_request_id, "p1");
    assert_eq!(pays[0].reconcile_at - pays[0].now, 60_000);
    assert_eq!(pays[0].close_time - pays[0].now, 1_800_000);
}

#[tokio::test]
async fn final_unverified_or_other_answers_are_not_recorded() {
    // final answer
    let gw = alipay(
        200,
        "1",
        br#"{"result":{"resultCode":"SUCCESS","resultStatus":"S"}}"#,
    );
    let (h, recorder) = recording(policy(), &gw, false);
    assert_eq!(h.handle(pay(&[])).await.head.status.as_u16(), 200);
    // another API answering U
    let gw = alipay(200, "1", IN_PROCESS);
    let (h2, recorder2) = recording(policy(), &gw, false);
    let inquiry = request("/ams/api/v1/payments/inquiryPayment", &[], BODY);
    assert_eq!(h2.handle(inquiry).await.head.status.as_u16(), 200);
    // an unsigned U is withheld, never recorded
    let gw = canned(200, &[("Content-Type", "application/json")], IN_PROCESS);
    let (h3, recorder3) = recording(policy(), &gw, false);
    assert_eq!(h3.handle(pay(&[])).await.head.status.as_u16(), 502);
    // verification switched off: the answer is not verified, so not trusted
    let gw = canned(200, &[("Content-Type", "application/json")], IN_PROCESS);
    let mut off = policy();
    off.verify_responses = false;
    let (h4, recorder4) = recording(off, &gw, false);
    assert_eq!(h4.handle(pay(&[])).await.head.status.as_u16(), 200);
    for r in [recorder, recorder2, recorder3, recorder4] {
        assert!(r.pays.lock().unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_store_failure_does_not_cost_the_app_its_answer() {
    let gw = alipay(200, "1", IN_PROCESS);
    let (h, recorder) = recording(policy(), &gw, true);
    let reply = h.handle(pay(&[])).await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(&reply.body[..], IN_PROCESS);
    assert_eq!(marker(&reply), Some("true"));
    assert_eq!(recorder.pays.lock().unwrap().len(), 1, "it was tried");
}
