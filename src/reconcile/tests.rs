//! The reconciler's state machine (work, expire, conclude, reschedule) and the closing hook,
//! against the in-memory fakes of `testing.rs`: no sockets, no database. Times are the wall
//! clock's (`now_millis`), so a record is "before" or "after" its close time by a wide margin
//! and a rescheduled time is checked between the clock read before and after the turn.

use std::sync::Arc;
use std::time::Duration;

use sidecar_store::{EventKey, PayOutcome};

use super::testing::{open_record, FakePayStore, ScriptedApi};
use super::*;

const HOUR: i64 = 3_600_000;
const SCHEDULE: [Duration; 2] = [Duration::from_secs(10), Duration::from_secs(30)];

fn config(cancel_on_expiry: bool, deliver_path: Option<&str>) -> ReconcileConfig {
    ReconcileConfig {
        reconcile_after: Duration::from_secs(60),
        inquiry_schedule: SCHEDULE.to_vec(),
        default_close_after: Duration::from_secs(1800),
        cancel_on_expiry,
        deliver_path: deliver_path.map(str::to_string),
    }
}

struct Rig {
    store: Arc<FakePayStore>,
    api: Arc<ScriptedApi>,
    reconciler: Reconciler,
}

fn rig(records: Vec<PayRecord>, answers: &[&str], config: ReconcileConfig) -> Rig {
    let store = Arc::new(FakePayStore::with(records));
    let api = Arc::new(ScriptedApi::verified(answers.iter().copied()));
    let reconciler = Reconciler::new(store.clone(), api.clone(), config, Duration::from_secs(5));
    Rig {
        store,
        api,
        reconciler,
    }
}

/// One turn; returns (records worked, clock before, clock after).
async fn turn(rig: &Rig) -> (usize, i64, i64) {
    let before = now_millis();
    let n = rig.reconciler.turn().await;
    (n, before, now_millis())
}

fn inquiry(status: &str, id: &str) -> String {
    format!(
        r#"{{"result":{{"resultCode":"SUCCESS","resultStatus":"S"}},"paymentStatus":"{status}","paymentRequestId":"{id}","paymentId":"2024X"}}"#
    )
}

const INQUIRY_FAILED: &str = r#"{"result":{"resultCode":"UNKNOWN_EXCEPTION","resultStatus":"U"}}"#;
const CANCEL_FAILED: &str = r#"{"result":{"resultCode":"PROCESS_FAIL","resultStatus":"F"}}"#;

fn cancel_ok(id: &str) -> String {
    format!(
        r#"{{"result":{{"resultCode":"SUCCESS","resultStatus":"S"}},"paymentRequestId":"{id}","paymentId":"2024X","cancelTime":"2024-05-01T12:30:00+08:00"}}"#
    )
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("json body")
}

fn header<'a>(entry: &'a Entry, name: &str) -> Option<&'a str> {
    entry
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn assert_between(value: i64, before: i64, after: i64, gap: Duration) {
    let gap = gap.as_millis() as i64;
    assert!(
        (before + gap..=after + gap).contains(&value),
        "{value} not in [{}, {}]",
        before + gap,
        after + gap
    );
}

#[tokio::test]
async fn a_final_inquiry_is_delivered_then_the_record_closed() {
    let open = open_record("p-1", now_millis() + HOUR);
    let rig = rig(
        vec![open],
        &[&inquiry("SUCCESS", "p-1")],
        config(true, None),
    );
    assert_eq!(turn(&rig).await.0, 1);

    let calls = rig.api.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].tail, INQUIRY_TAIL);
    assert_eq!(calls[0].merchant, "sg");
    assert_eq!(calls[0].client_id, "T_1");
    assert_eq!(
        json(calls[0].body.as_bytes()),
        serde_json::json!({"paymentRequestId": "p-1"})
    );

    let results = rig.store.results();
    assert_eq!(results.len(), 1, "one result recorded for delivery");
    let r = &results[0];
    assert_eq!(r.merchant, "sg");
    assert_eq!(json(&r.body)["result"]["resultStatus"], "S");
    assert_eq!(header(r, SOURCE_HEADER), Some(SOURCE_INQUIRY));
    assert_eq!(header(r, "x-alipay-sidecar-verified"), Some("true"));
    assert_eq!(header(r, DELIVER_PATH_HEADER), None);
    assert_eq!(r.deliver_at, Some(r.now), "due at once");
    // Alipay's own notification of that result (to the notify URL's path) is its duplicate
    assert_eq!(
        r.key.event_id(),
        EventKey::from_notification("T_1", "/alipay/notify", &r.body).event_id()
    );
    assert_eq!(
        rig.store.record("pay_p-1").outcome,
        Some(PayOutcome::InquiredSuccess)
    );
    // closed: the next turn has nothing to do and calls nobody
    assert_eq!(turn(&rig).await.0, 0);
    assert_eq!(rig.api.calls().len(), 1);
}

#[tokio::test]
async fn a_failed_payment_is_delivered_as_f_and_closed_inquired_fail() {
    let open = open_record("p-2", now_millis() + HOUR);
    let rig = rig(vec![open], &[&inquiry("FAIL", "p-2")], config(false, None));
    rig.reconciler.turn().await;
    let results = rig.store.results();
    assert_eq!(json(&results[0].body)["result"]["resultStatus"], "F");
    assert_eq!(
        rig.store.record("pay_p-2").outcome,
        Some(PayOutcome::InquiredFail)
    );
}

#[tokio::test]
async fn an_unclear_status_is_inquired_again_on_the_schedule() {
    let open = open_record("p-3", now_millis() + HOUR);
    let processing = inquiry("PROCESSING", "p-3");
    let rig = rig(vec![open], &[&processing, &processing], config(true, None));
    let (n, before, after) = turn(&rig).await;
    assert_eq!(n, 1, "rescheduled into the future: worked once per turn");
    let r = rig.store.record("pay_p-3");
    assert_eq!(r.outcome, None);
    assert_eq!(
        (r.inquiries, r.answers),
        (1, 1),
        "a verified answer about it"
    );
    assert_eq!(r.claim_owner, None, "the claim is released");
    assert_between(r.next_at, before, after, SCHEDULE[0]);
    assert!(rig.store.results().is_empty());

    // the second inquiry waits the second gap
    rig.store.make_due("pay_p-3");
    let (_, before, after) = turn(&rig).await;
    let r = rig.store.record("pay_p-3");
    assert_eq!(r.inquiries, 2);
    assert_between(r.next_at, before, after, SCHEDULE[1]);
}

#[tokio::test]
async fn an_inquiry_without_a_verified_answer_counts_no_answer() {
    let open = open_record("p-4", now_millis() + HOUR);
    let rig = rig(vec![open], &[INQUIRY_FAILED], config(true, None));
    let (_, before, after) = turn(&rig).await;
    let r = rig.store.record("pay_p-4");
    assert_eq!((r.inquiries, r.answers, r.outcome), (1, 0, None));
    assert_between(r.next_at, before, after, SCHEDULE[0]);
    // no answer at all (the gateway is down): the same
    let open = open_record("p-5", now_millis() + HOUR);
    let rig = super::tests::rig(vec![open], &[], config(true, None));
    rig.reconciler.turn().await;
    let r = rig.store.record("pay_p-5");
    assert_eq!((r.inquiries, r.answers, r.outcome), (1, 0, None));
}

#[tokio::test]
async fn an_answer_about_another_payment_is_refused() {
    let open = open_record("p-6", now_millis() + HOUR);
    let rig = rig(
        vec![open],
        &[&inquiry("SUCCESS", "p-other")],
        config(true, None),
    );
    rig.reconciler.turn().await;
    let r = rig.store.record("pay_p-6");
    assert_eq!((r.outcome, r.answers, r.inquiries), (None, 0, 1));
    assert!(rig.store.results().is_empty(), "nothing delivered");
}

#[tokio::test]
async fn at_the_close_time_without_cancel_on_expiry_the_record_expires() {
    let open = open_record("p-7", now_millis() - 1000);
    let rig = rig(
        vec![open],
        &[&inquiry("PROCESSING", "p-7")],
        config(false, None),
    );
    rig.reconciler.turn().await;
    assert_eq!(
        rig.api.tails(),
        [INQUIRY_TAIL],
        "inquired once more, no cancel"
    );
    assert_eq!(
        rig.store.record("pay_p-7").outcome,
        Some(PayOutcome::Expired)
    );
    assert!(rig.store.results().is_empty());
}

#[tokio::test]
async fn at_the_close_time_the_payment_is_cancelled_and_that_delivered() {
    let mut open = open_record("p-8", now_millis() - 1000);
    open.answers = 1;
    let rig = rig(
        vec![open],
        &[&inquiry("PROCESSING", "p-8"), &cancel_ok("p-8")],
        config(true, None),
    );
    rig.reconciler.turn().await;
    assert_eq!(rig.api.tails(), [INQUIRY_TAIL, CANCEL_TAIL]);
    assert_eq!(
        json(rig.api.calls()[1].body.as_bytes()),
        serde_json::json!({"paymentRequestId": "p-8"})
    );
    let results = rig.store.results();
    assert_eq!(results.len(), 1);
    let body = json(&results[0].body);
    assert_eq!(body["result"]["resultCode"], "ORDER_IS_CANCELED");
    assert_eq!(body["cancelTime"], "2024-05-01T12:30:00+08:00");
    assert_eq!(
        rig.store.record("pay_p-8").outcome,
        Some(PayOutcome::Cancelled)
    );
}

#[tokio::test]
async fn the_cancel_waits_for_a_verified_answer_about_the_payment() {
    // no answer before, none now: withheld, inquired again after the last gap
    let open = open_record("p-9", now_millis() - 1000);
    let rig = rig(vec![open], &[INQUIRY_FAILED], config(true, None));
    let (_, before, after) = turn(&rig).await;
    assert_eq!(rig.api.tails(), [INQUIRY_TAIL], "no cancel");
    let r = rig.store.record("pay_p-9");
    assert_eq!((r.outcome, r.answers), (None, 0));
    assert_between(r.next_at, before, after, SCHEDULE[1]);

    // no answer before, a verified one now: the cancel goes ahead
    let open = open_record("p-10", now_millis() - 1000);
    let rig = super::tests::rig(
        vec![open],
        &[&inquiry("PROCESSING", "p-10"), &cancel_ok("p-10")],
        config(true, None),
    );
    rig.reconciler.turn().await;
    assert_eq!(rig.api.tails(), [INQUIRY_TAIL, CANCEL_TAIL]);
    assert_eq!(
        rig.store.record("pay_p-10").outcome,
        Some(PayOutcome::Cancelled)
    );
}

#[tokio::test]
async fn a_failed_cancel_is_retried_then_the_record_expires() {
    // just after the close time: tried again after the last gap
    let mut open = open_record("p-11", now_millis() - 1000);
    open.answers = 1;
    let rig = rig(
        vec![open],
        &[&inquiry("PROCESSING", "p-11"), CANCEL_FAILED],
        config(true, None),
    );
    let (_, before, after) = turn(&rig).await;
    let r = rig.store.record("pay_p-11");
    assert_eq!(r.outcome, None);
    assert_between(r.next_at, before, after, SCHEDULE[1]);

    // long after it (more than CANCEL_ATTEMPTS gaps): given up, expired, nothing delivered
    let mut old = open_record("p-12", now_millis() - HOUR);
    old.answers = 1;
    let rig = super::tests::rig(
        vec![old],
        &[&inquiry("PROCESSING", "p-12"), CANCEL_FAILED],
        config(true, None),
    );
    rig.reconciler.turn().await;
    assert_eq!(rig.api.tails(), [INQUIRY_TAIL, CANCEL_TAIL]);
    assert_eq!(
        rig.store.record("pay_p-12").outcome,
        Some(PayOutcome::Expired)
    );
    assert!(rig.store.results().is_empty());
}

#[tokio::test]
async fn a_cancel_answer_about_another_payment_is_not_acted_on() {
    let mut open = open_record("p-13", now_millis() - 1000);
    open.answers = 1;
    let rig = rig(
        vec![open],
        &[&inquiry("PROCESSING", "p-13"), &cancel_ok("p-other")],
        config(true, None),
    );
    rig.reconciler.turn().await;
    assert_eq!(rig.store.record("pay_p-13").outcome, None, "not cancelled");
    assert!(rig.store.results().is_empty());
}

#[tokio::test]
async fn a_result_that_cannot_be_recorded_leaves_the_record_claimed() {
    let open = open_record("p-14", now_millis() + HOUR);
    let rig = rig(
        vec![open],
        &[&inquiry("SUCCESS", "p-14")],
        config(true, None),
    );
    rig.store
        .results_broken
        .store(true, std::sync::atomic::Ordering::SeqCst);
    rig.reconciler.turn().await;
    let r = rig.store.record("pay_p-14");
    assert_eq!(r.outcome, None, "not closed without its result recorded");
    assert!(r.claim_owner.is_some(), "claimed until the lease runs out");
    assert_eq!(r.inquiries, 0, "not rescheduled either");
}

#[tokio::test]
async fn deliver_path_keys_and_routes_a_result_without_a_notify_url() {
    let mut open = open_record("p-15", now_millis() + HOUR);
    open.payment_notify_url = None;
    let rig = rig(
        vec![open.clone()],
        &[&inquiry("SUCCESS", "p-15")],
        config(true, Some("/app/results")),
    );
    rig.reconciler.turn().await;
    let results = rig.store.results();
    assert_eq!(
        header(&results[0], DELIVER_PATH_HEADER),
        Some("/app/results")
    );
    assert_eq!(
        results[0].key.event_id(),
        EventKey::from_notification("T_1", "/app/results", &results[0].body).event_id()
    );

    // neither: closed, but nothing can be delivered
    open.id = "pay_p-16".into();
    open.payment_request_id = "p-16".into();
    let rig = super::tests::rig(
        vec![open],
        &[&inquiry("SUCCESS", "p-16")],
        config(true, None),
    );
    rig.reconciler.turn().await;
    assert!(rig.store.results().is_empty());
    assert_eq!(
        rig.store.record("pay_p-16").outcome,
        Some(PayOutcome::InquiredSuccess)
    );
}

#[tokio::test]
async fn a_store_out_of_reach_ends_the_turn_without_calls() {
    let open = open_record("p-17", now_millis() + HOUR);
    let rig = rig(
        vec![open],
        &[&inquiry("SUCCESS", "p-17")],
        config(true, None),
    );
    rig.store
        .broken
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(rig.reconciler.turn().await, 0);
    assert!(rig.api.calls().is_empty());
}

fn notification(status: &str, id: &str) -> Vec<u8> {
    format!(r#"{{"notifyType":"PAYMENT_RESULT","result":{{"resultStatus":"{status}"}},"paymentRequestId":"{id}"}}"#).into_bytes()
}

#[tokio::test]
async fn a_final_notification_closes_the_record_and_flags_a_contradiction() {
    let store = Arc::new(FakePayStore::with([
        open_record("p-20", now_millis() + HOUR),
        open_record("p-21", now_millis() + HOUR),
    ]));
    let closer = PayCloser::new(store.clone());
    // open → notified, no conflict
    assert_eq!(
        closer.verified("sg", &notification("S", "p-20")).await,
        None
    );
    assert_eq!(store.record("pay_p-20").outcome, Some(PayOutcome::Notified));
    // another merchant's, a not-final one: nothing closed
    assert_eq!(
        closer.verified("other", &notification("S", "p-21")).await,
        None
    );
    assert_eq!(
        closer.verified("sg", &notification("U", "p-21")).await,
        None
    );
    assert_eq!(store.record("pay_p-21").outcome, None);
    // closed before as cancelled, then Alipay says S: the app is told
    store
        .finish("pay_p-21", PayOutcome::Cancelled, 1)
        .await
        .unwrap();
    assert_eq!(
        closer
            .verified("sg", &notification("S", "p-21"))
            .await
            .as_deref(),
        Some("recorded=cancelled")
    );
    assert_eq!(
        closer.verified("sg", &notification("F", "p-21")).await,
        None
    );
    // a store failure: the notification flows unmarked
    store
        .broken
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        closer.verified("sg", &notification("S", "p-21")).await,
        None
    );
}

// ---- issue 22: one lock per payment, the cancel/SUCCESS race both ways ----

use crate::paylock::{Holder, LocalLocks, PaymentLocks};

const WAIT: Duration = Duration::from_secs(30);

fn success_notification(id: &str) -> String {
    format!(
        r#"{{"notifyType":"PAYMENT_RESULT","result":{{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}},"paymentRequestId":"{id}","paymentId":"2024X"}}"#
    )
}

/// A record past its close time with a verified answer before (a cancel is allowed), the
/// reconciler on `locks`, the inquiry answering PROCESSING then the cancel succeeding.
fn racing(
    id: &str,
    locks: Arc<LocalLocks>,
) -> (Arc<FakePayStore>, Arc<ScriptedApi>, Arc<Reconciler>) {
    let mut open = open_record(id, now_millis() - 1000);
    open.answers = 1;
    let store = Arc::new(FakePayStore::with([open]));
    let api = Arc::new(ScriptedApi::verified([
        inquiry("PROCESSING", id).as_str(),
        cancel_ok(id).as_str(),
    ]));
    let reconciler = Reconciler::new(
        store.clone(),
        api.clone(),
        config(true, None),
        Duration::from_secs(5),
    )
    .with_locks(locks);
    (store, api, Arc::new(reconciler))
}

/// The inbound path of a verified PAYMENT_RESULT: the payment's lock, then the closing hook
/// (the journal write follows under the same lock); returns the conflict mark.
async fn inbound_success(
    locks: Arc<LocalLocks>,
    store: Arc<FakePayStore>,
    id: String,
) -> Option<String> {
    let lease = locks
        .lock("T_1", &id, Holder::Inbound, WAIT)
        .await
        .expect("the inbound path gets the lock");
    let conflict = PayCloser::new(store)
        .verified("sg", success_notification(&id).as_bytes())
        .await;
    lease.release().await;
    conflict
}

#[tokio::test]
async fn a_success_recorded_before_the_cancel_means_no_cancel_is_sent() {
    let locks = Arc::new(LocalLocks::new());
    let (store, api, reconciler) = racing("p-20", locks.clone());
    // the inquiry is in flight (the record is claimed) when Alipay's SUCCESS arrives
    api.hold(INQUIRY_TAIL);
    let turn = tokio::spawn({
        let r = reconciler.clone();
        async move { r.turn().await }
    });
    api.reached().await;
    let conflict = inbound_success(locks.clone(), store.clone(), "p-20".into()).await;
    assert_eq!(conflict, None, "nothing recorded before: no conflict");
    assert_eq!(store.record("pay_p-20").outcome, Some(PayOutcome::Notified));
    // the inquiry answers PROCESSING past the close time: the reconciler would cancel, but
    // re-reads the record under the lock and finds the SUCCESS
    api.release();
    turn.await.unwrap();
    assert_eq!(api.tails(), [INQUIRY_TAIL], "no cancel sent");
    assert_eq!(store.record("pay_p-20").outcome, Some(PayOutcome::Notified));
    assert!(
        store.results().is_empty(),
        "nothing of the sidecar's own delivered"
    );
    assert_eq!(locks.entries(), 0, "every lock released");
}

#[tokio::test]
async fn a_success_arriving_while_the_cancel_is_in_flight_waits_and_is_marked_a_conflict() {
    let locks = Arc::new(LocalLocks::new());
    let (store, api, reconciler) = racing("p-21", locks.clone());
    api.hold(CANCEL_TAIL);
    let turn = tokio::spawn({
        let r = reconciler.clone();
        async move { r.turn().await }
    });
    api.reached().await;
    // the cancel is in flight under the payment's lock; Alipay's SUCCESS arrives now
    let inbound = tokio::spawn(inbound_success(locks.clone(), store.clone(), "p-21".into()));
    for _ in 0..100_000 {
        if locks.contenders("T_1", "p-21") >= 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        locks.contenders("T_1", "p-21"),
        2,
        "the reconciler holds, the SUCCESS waits"
    );
    assert!(
        !inbound.is_finished(),
        "the SUCCESS waits for the cancel's answer"
    );
    assert_eq!(
        store.record("pay_p-21").outcome,
        None,
        "not closed by it yet"
    );
    api.release();
    turn.await.unwrap();
    let conflict = inbound.await.unwrap();
    // the cancel's answer is recorded (and delivered as the sidecar's F)...
    assert_eq!(api.tails(), [INQUIRY_TAIL, CANCEL_TAIL]);
    assert_eq!(
        store.record("pay_p-21").outcome,
        Some(PayOutcome::Cancelled)
    );
    let results = store.results();
    assert_eq!(results.len(), 1);
    assert_eq!(
        json(&results[0].body)["result"]["resultCode"],
        "ORDER_IS_CANCELED"
    );
    // ...and the SUCCESS goes on to the app marked: it contradicts the recorded cancel
    assert_eq!(conflict.as_deref(), Some("recorded=cancelled"));
    assert_eq!(locks.entries(), 0);
}

#[tokio::test]
async fn a_busy_lock_leaves_the_record_claimed_and_sends_nothing() {
    let locks = Arc::new(LocalLocks::new());
    let (store, api, reconciler) = racing("p-22", locks.clone());
    // something else holds the payment for longer than the reconciler waits
    let held = locks
        .lock("T_1", "p-22", Holder::Delivery, WAIT)
        .await
        .unwrap();
    tokio::time::pause();
    let turn = tokio::spawn({
        let r = reconciler.clone();
        async move { r.turn().await }
    });
    turn.await.unwrap();
    tokio::time::resume();
    assert_eq!(api.tails(), [INQUIRY_TAIL], "no cancel without the lock");
    let r = store.record("pay_p-22");
    assert_eq!(r.outcome, None);
    assert!(
        r.claim_owner.is_some(),
        "left claimed: worked again after the lease"
    );
    drop(held);
}
