//! The missed-notification reconciler end to end: the real binary, the fake gateway (payments
//! that stay in process, notifications held back and sent when the test says), a real SQLite
//! file or PostgreSQL database, compressed timings. The store is inspected through the
//! `sidecar-store` crate, as the `notifications` CLI does.
//!
//! What the app receives is delivered by the journal's delivery worker: the reconciler
//! records its result in the journal (src/reconcile.rs, the contract with src/delivery.rs).

use std::time::Duration;

use ams_mock_gateway::PaymentStatus;
use sidecar_store::{
    pay_id, ListFilter, NotificationRecord, PayOutcome, PayRecord, Store, StoreConfig,
};

use crate::journal::{create_database, pg_admin_url};
use crate::support::*;

/// Compressed timings: inquire 300 ms after the pay answer, then every 200 ms, close after 3 s.
const FAST: &str =
    "reconcile_after = \"300ms\"\ninquiry_schedule = [\"200ms\"]\ndefault_close_after = \"3s\"\n";
/// No inquiry before the test has sent the notification.
const SLOW: &str =
    "reconcile_after = \"30s\"\ninquiry_schedule = [\"200ms\"]\ndefault_close_after = \"60s\"\n";
const MERCHANT: &str = "default";
const INQUIRY: &str = "/ams/api/v1/payments/inquiryPayment";
const CANCEL: &str = "/ams/api/v1/payments/cancel";
const NOTIFY_PATH: &str = "/alipay/notify";

struct Setup {
    rig: Rig,
    app: App,
    store: Store,
    _db_dir: Option<tempfile::TempDir>,
}

fn sqlite_store() -> (StoreConfig, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let section = format!("[store]\npath = {:?}\n", path.display().to_string());
    (StoreConfig::sqlite(path), section, dir)
}

fn tail(app: &App, store_section: &str, reconcile: &str) -> String {
    format!(
        "{}{store_section}[reconcile]\nenabled = true\n{reconcile}\n[log]\nformat = \"json\"\n",
        inbound_section(&app.url())
    )
}

fn open(config: &StoreConfig) -> Store {
    rt().block_on(Store::open(config))
        .unwrap_or_else(|e| panic!("open {}: {e}", config.display()))
}

impl Setup {
    /// A sidecar with `[store]` on a fresh SQLite file and `[reconcile]` with `reconcile`.
    fn start(reconcile: &str) -> Setup {
        let app = App::start(Behaviour::Ack);
        let (config, section, dir) = sqlite_store();
        let tail = tail(&app, &section, reconcile);
        let rig = rig(&tail);
        Setup {
            rig,
            app,
            store: open(&config),
            _db_dir: Some(dir),
        }
    }

    fn notify_url(&self) -> String {
        notify_url(&self.rig.sidecar)
    }

    /// A pay the gateway answers PAYMENT_IN_PROCESS/U, that ends as `outcome` says, and whose
    /// notification the gateway holds back (sent only by `notify_now`).
    fn pay_held(&self, id: &str, outcome: &str, extra: &str) {
        pay_held(self.rig.outbound, &self.notify_url(), id, outcome, extra);
    }

    fn record(&self, id: &str) -> Option<PayRecord> {
        record(&self.store, id)
    }

    fn closed(&self, id: &str) -> PayRecord {
        self.rig.eventually("the pay record is closed", || {
            self.record(id).filter(|r| r.outcome.is_some())
        })
    }
}

/// The rig (gateway and sidecar) with `tail` after `[admin]`.
fn rig(tail: &str) -> Rig {
    Rig::start(
        RigConfig {
            tail,
            ..Default::default()
        },
        one_notification_attempt,
        |_| {},
    )
}

/// The gateway sends each notification once when it is sent (the rigs' default sends none).
fn one_notification_attempt(cfg: &mut ams_mock_gateway::MockGatewayConfig) {
    cfg.notify_backoff = vec![Duration::ZERO];
}

fn notify_url(sidecar: &Sidecar) -> String {
    format!("http://{}{NOTIFY_PATH}", sidecar.addr("inbound"))
}

fn pay_held(
    outbound: std::net::SocketAddr,
    notify_url: &str,
    id: &str,
    outcome: &str,
    extra: &str,
) {
    let extra = format!(
        r#","paymentNotifyUrl":"{notify_url}","mockOutcome":"{outcome}","mockNotify":"none"{extra}"#
    );
    let r = pay(outbound, id, &extra);
    r.assert_status(200, "pay");
    assert_eq!(
        r.result_code(),
        ("U".to_string(), "PAYMENT_IN_PROCESS".to_string()),
        "the gateway answers in process"
    );
    assert_eq!(r.header("X-Alipay-Sidecar-Verified"), Some("true"));
}

fn record(store: &Store, id: &str) -> Option<PayRecord> {
    rt().block_on(store.pay(&pay_id(MERCHANT, id))).unwrap()
}

/// The journal's events about payment `id`.
fn events(store: &Store, id: &str) -> Vec<NotificationRecord> {
    rt().block_on(store.list(&ListFilter::default()))
        .unwrap()
        .into_iter()
        .filter(|e| e.business_id == id)
        .collect()
}

fn show(store: &Store, event_id: &str) -> NotificationRecord {
    rt().block_on(store.show(event_id)).unwrap().expect("event")
}

fn header<'a>(e: &'a NotificationRecord, name: &str) -> Option<&'a str> {
    e.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Requests the gateway received on `path` about payment `id`.
fn calls(gw: &ams_mock_gateway::MockGateway, path: &str, id: &str) -> usize {
    let needle = format!("\"{id}\"");
    gw.received()
        .iter()
        .filter(|r| r.target == path && String::from_utf8_lossy(&r.body).contains(&needle))
        .count()
}

fn outcomes(m: &Metrics, outcome: &str) -> f64 {
    m.sum(
        "alipay_sidecar_reconcile_outcomes_total",
        &[("outcome", outcome)],
    )
}

/// The app's requests marked as built from an inquiry.
fn reconciled(app: &App) -> Vec<Received> {
    app.received()
        .into_iter()
        .filter(|r| r.one("X-Alipay-Sidecar-Source") == Some("inquiryPayment"))
        .collect()
}

/// The reconciled event of payment `id`, once recorded: checked against the contract with
/// the journal (key path, headers, body mapping).
fn reconciled_event(s: &Setup, id: &str) -> NotificationRecord {
    let e = s
        .rig
        .eventually("the reconciled result is in the journal", || {
            events(&s.store, id).into_iter().next()
        });
    let e = show(&s.store, &e.event_id);
    assert_eq!(e.merchant, MERCHANT);
    assert_eq!(e.client_id, CLIENT_ID);
    assert_eq!(e.path, NOTIFY_PATH, "keyed by the path of paymentNotifyUrl");
    assert_eq!(e.notify_type, "PAYMENT_RESULT");
    assert_eq!(
        header(&e, "X-Alipay-Sidecar-Source"),
        Some("inquiryPayment")
    );
    assert_eq!(header(&e, "X-Alipay-Sidecar-Verified"), Some("true"));
    assert_eq!(
        header(&e, "Content-Type"),
        Some("application/json; charset=UTF-8")
    );
    assert_eq!(header(&e, "x-alipay-sidecar-deliver-path"), None);
    e
}

// ------------------------------------------------------------------------------------------

#[test]
fn a_missed_notification_is_inquired_and_its_result_recorded_for_delivery() {
    let s = Setup::start(FAST);
    s.pay_held("rc-missed-1", "success_after:100ms", "");
    let open = s
        .record("rc-missed-1")
        .expect("recorded before the answer came back");
    assert_eq!(open.outcome, None);
    assert_eq!(open.client_id, CLIENT_ID);
    assert_eq!(
        open.payment_notify_url.as_deref(),
        Some(s.notify_url().as_str())
    );

    let closed = s.closed("rc-missed-1");
    assert_eq!(closed.outcome, Some(PayOutcome::InquiredSuccess));
    assert!(calls(&s.rig.gw, INQUIRY, "rc-missed-1") >= 1);
    let inquiry = s.rig.last_received(INQUIRY);
    assert!(
        inquiry.verified,
        "the inquiry was signed with the merchant key"
    );

    let e = reconciled_event(&s, "rc-missed-1");
    assert_eq!(
        (e.result_status.as_str(), e.result_code.as_str()),
        ("S", "SUCCESS")
    );
    let body: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
    assert_eq!(body["paymentRequestId"], "rc-missed-1");
    assert_eq!(body["paymentAmount"]["value"], "5800");
    assert!(body["paymentId"].is_string() && body["paymentTime"].is_string());

    let m = s.rig.scrape();
    assert_eq!(outcomes(&m, "inquired_success"), 1.0);
    assert_eq!(
        m.sum("alipay_sidecar_reconcile_pays_recorded_total", &[]),
        1.0
    );
    assert!(
        m.sum(
            "alipay_sidecar_reconcile_inquiries_total",
            &[("result", "success")]
        ) >= 1.0
    );
    // the inquiry counts like an app call: signed, verified, same metrics
    assert!(
        m.sum(
            "alipay_sidecar_requests_total",
            &[("api", "payments/inquiryPayment"), ("outcome", "verified")]
        ) >= 1.0
    );
}

#[test]
fn the_seeds_flow_one_reconciled_result_then_the_late_notification_is_not_delivered_again() {
    let s = Setup::start(FAST);
    s.pay_held("rc-seed-1", "success_after:100ms", "");
    let got = s.app.wait_received(1);
    assert_eq!(got.len(), 1, "{got:?}");
    let r = &got[0];
    assert_eq!(r.one("X-Alipay-Sidecar-Source"), Some("inquiryPayment"));
    assert_eq!(r.one("X-Alipay-Sidecar-Verified"), Some("true"));
    assert!(r
        .one("X-Alipay-Sidecar-Event-Id")
        .is_some_and(|id| id.starts_with("evt_")));
    assert_eq!(r.target, NOTIFY_PATH);
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["notifyType"], "PAYMENT_RESULT");
    assert_eq!(body["result"]["resultStatus"], "S");
    assert_eq!(body["paymentRequestId"], "rc-seed-1");

    // Alipay's late notification of the same result: acknowledged, not delivered again
    s.rig.gw.notify_now("rc-seed-1").unwrap();
    rt().block_on(s.rig.gw.notifications_settled());
    let attempts = s.rig.gw.notifications();
    let late: Vec<_> = attempts
        .iter()
        .filter(|a| a.payment_request_id == "rc-seed-1")
        .collect();
    assert!(late.last().is_some_and(|a| a.acknowledged), "{late:?}");
    assert_eq!(s.app.received().len(), 1, "delivered exactly once");
    assert_eq!(
        s.rig
            .scrape()
            .sum("alipay_sidecar_notifications_duplicate_total", &[]),
        1.0
    );
}

#[test]
fn a_notification_in_time_closes_the_record_and_nothing_is_inquired() {
    let s = Setup::start(SLOW);
    s.pay_held("rc-intime-1", "success_after:50ms", "");
    assert!(s.record("rc-intime-1").is_some_and(|r| r.outcome.is_none()));
    s.rig
        .eventually("the payment succeeded at the gateway", || {
            (s.rig.gw.payment_status("rc-intime-1") == Some(PaymentStatus::Success)).then_some(())
        });
    s.rig.gw.notify_now("rc-intime-1").unwrap();
    rt().block_on(s.rig.gw.notifications_settled());

    let closed = s.closed("rc-intime-1");
    assert_eq!(closed.outcome, Some(PayOutcome::Notified));
    assert_eq!(closed.inquiries, 0);
    assert_eq!(
        calls(&s.rig.gw, INQUIRY, "rc-intime-1"),
        0,
        "no inquiry at all"
    );
    assert_eq!(
        s.app.wait_received(1).len(),
        1,
        "Alipay's notification reached the app"
    );
    assert!(reconciled(&s.app).is_empty());
    let m = s.rig.scrape();
    assert_eq!(outcomes(&m, "notified"), 1.0);
    assert_eq!(outcomes(&m, "inquired_success"), 0.0);
}

#[test]
fn at_the_close_time_without_cancel_on_expiry_the_record_expires() {
    let s = Setup::start(FAST);
    // paymentExpireTime 1.5 s from now, earlier than default_close_after (3 s)
    let expire = iso_from_now(1500);
    s.pay_held(
        "rc-expire-1",
        "never",
        &format!(r#","paymentExpireTime":"{expire}""#),
    );
    let open = s.record("rc-expire-1").unwrap();
    assert!(
        open.close_time - open.created_at <= 2000,
        "the close time is paymentExpireTime: {open:?}"
    );
    let closed = s.closed("rc-expire-1");
    assert_eq!(closed.outcome, Some(PayOutcome::Expired));
    assert!(calls(&s.rig.gw, INQUIRY, "rc-expire-1") >= 1);
    assert_eq!(calls(&s.rig.gw, CANCEL, "rc-expire-1"), 0);
    assert_eq!(
        s.rig.gw.payment_status("rc-expire-1"),
        Some(PaymentStatus::Processing)
    );
    assert!(
        events(&s.store, "rc-expire-1").is_empty(),
        "nothing to deliver"
    );
    assert!(s.app.received().is_empty());
    let m = s.rig.scrape();
    assert_eq!(outcomes(&m, "expired"), 1.0);
    assert!(
        m.sum(
            "alipay_sidecar_reconcile_inquiries_total",
            &[("result", "not_final")]
        ) >= 1.0
    );
}

/// `now + ms` as ISO 8601 with an offset (`paymentExpireTime`).
fn iso_from_now(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    alipay_sidecar::protocol::format_iso8601(now + ms)
}

#[test]
fn at_the_close_time_with_cancel_on_expiry_the_payment_is_cancelled_and_that_recorded() {
    let s = Setup::start(&format!("{FAST}cancel_on_expiry = true\n"));
    s.pay_held("rc-cancel-1", "never", "");
    let closed = s.closed("rc-cancel-1");
    assert_eq!(closed.outcome, Some(PayOutcome::Cancelled));
    assert_eq!(calls(&s.rig.gw, CANCEL, "rc-cancel-1"), 1);
    assert!(
        s.rig.last_received(CANCEL).verified,
        "the cancel was signed"
    );
    assert_eq!(
        s.rig.gw.payment_status("rc-cancel-1"),
        Some(PaymentStatus::Cancelled)
    );
    let e = reconciled_event(&s, "rc-cancel-1");
    assert_eq!(
        (e.result_status.as_str(), e.result_code.as_str()),
        ("F", "ORDER_IS_CANCELED")
    );
    let body: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
    assert!(body["cancelTime"].is_string() && body["paymentId"].is_string());
    let m = s.rig.scrape();
    assert_eq!(outcomes(&m, "cancelled"), 1.0);
    assert_eq!(
        m.sum(
            "alipay_sidecar_reconcile_cancels_total",
            &[("result", "success")]
        ),
        1.0
    );
}

#[test]
fn a_cancel_at_the_close_time_reaches_the_app_as_a_failed_payment_result() {
    let s = Setup::start(&format!("{FAST}cancel_on_expiry = true\n"));
    s.pay_held("rc-cancel-2", "never", "");
    let got = s.app.wait_received(1);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].one("X-Alipay-Sidecar-Source"),
        Some("inquiryPayment")
    );
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["result"]["resultStatus"], "F");
    assert_eq!(body["result"]["resultCode"], "ORDER_IS_CANCELED");
}

#[test]
fn after_a_restart_an_overdue_record_is_worked() {
    let app = App::start(Behaviour::Ack);
    let (config, section, _dir) = sqlite_store();
    let tail = tail(
        &app,
        &section,
        "reconcile_after = \"1s\"\ninquiry_schedule = [\"200ms\"]\ndefault_close_after = \"60s\"\n",
    );
    let rig = rig(&tail);
    let store = open(&config);
    pay_held(
        rig.outbound,
        &notify_url(&rig.sidecar),
        "rc-restart-1",
        "success_after:50ms",
        "",
    );
    let Rig {
        gw,
        mut sidecar,
        dir,
        ..
    } = rig;
    sidecar.signal("KILL");
    sidecar.wait_exit(Duration::from_secs(10));
    let open = record(&store, "rc-restart-1").expect("recorded before the kill");
    assert_eq!(open.outcome, None, "killed before it was due");
    assert_eq!(calls(&gw, INQUIRY, "rc-restart-1"), 0);
    // wait until it is overdue, then start again on the same store
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        <= open.next_at
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let again = Sidecar::launch(&sidecar.config_path, &[], &[]);
    let closed = again.eventually("the overdue record is worked", || {
        record(&store, "rc-restart-1").filter(|r| r.outcome.is_some())
    });
    assert_eq!(closed.outcome, Some(PayOutcome::InquiredSuccess));
    assert_eq!(calls(&gw, INQUIRY, "rc-restart-1"), 1);
    drop(dir);
}

// ------------------------------------------------------------------------------------------
// Two replicas on one PostgreSQL

#[test]
fn two_replicas_on_postgres_share_pay_records_and_reconcile_each_once() {
    let Some(admin) = pg_admin_url("reconcile_replicas") else {
        return;
    };
    let url = create_database(&admin, "reconcile_replicas");
    let app = App::start(Behaviour::Ack);
    let section = format!("[store]\nurl = {url:?}\n");
    let tail = tail(&app, &section, FAST);
    // replica A with the gateway, replica B: same config, same gateway, same database
    let a = rig(&tail);
    let b = Sidecar::launch(&a.sidecar.config_path, &[], &[]);
    let store = open(&StoreConfig::postgres(url.clone()));

    // pay through A, Alipay's notification through B: B closes A's record
    pay_held(
        a.outbound,
        &notify_url(&b),
        "rc-pg-notified",
        "success_after:50ms",
        "",
    );
    a.eventually("the payment succeeded at the gateway", || {
        (a.gw.payment_status("rc-pg-notified") == Some(PaymentStatus::Success)).then_some(())
    });
    a.gw.notify_now("rc-pg-notified").unwrap();
    rt().block_on(a.gw.notifications_settled());
    let closed = a.eventually("B closes A's record", || {
        record(&store, "rc-pg-notified").filter(|r| r.outcome.is_some())
    });
    // the reconciler may have raced the notification (300 ms); either way exactly one outcome
    assert!(
        matches!(
            closed.outcome,
            Some(PayOutcome::Notified | PayOutcome::InquiredSuccess)
        ),
        "{closed:?}"
    );

    // a missed notification: both replicas reconcile, exactly one works the record
    let total = |m: Metrics| outcomes(&m, "inquired_success");
    let before = total(a.scrape()) + total(b.metrics());
    pay_held(
        a.outbound,
        &notify_url(&a.sidecar),
        "rc-pg-missed",
        "success_after:50ms",
        "",
    );
    let closed = a.eventually("the record is reconciled", || {
        record(&store, "rc-pg-missed").filter(|r| r.outcome.is_some())
    });
    assert_eq!(closed.outcome, Some(PayOutcome::InquiredSuccess));
    assert_eq!(
        calls(&a.gw, INQUIRY, "rc-pg-missed"),
        1,
        "one inquiry by one replica"
    );
    let evs = events(&store, "rc-pg-missed");
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].seen_count, 1, "recorded by one replica only");
    assert_eq!(total(a.scrape()) + total(b.metrics()) - before, 1.0);
}

// ------------------------------------------------------------------------------------------
// Issue 18: answers about the payment asked (M1), cancel only after a verified answer (L6),
// a late result that contradicts the recorded outcome (M2)

fn count(m: &Metrics, name: &str, result: &str) -> f64 {
    m.sum(name, &[("result", result)])
}

const INQUIRIES: &str = "alipay_sidecar_reconcile_inquiries_total";
const CANCELS: &str = "alipay_sidecar_reconcile_cancels_total";

/// Waits until the reconciler withheld the cancel of a payment past its close time at least
/// `n` times (it keeps inquiring), and returns the metrics then.
fn withheld(s: &Setup, n: f64) -> Metrics {
    s.rig
        .eventually("the cancel at the close time is withheld", || {
            let m = s.rig.scrape();
            (count(&m, CANCELS, "withheld") >= n).then_some(m)
        })
}

/// Nothing about `id` was closed, cancelled or delivered.
fn untouched(s: &Setup, id: &str) {
    let open = s.record(id).expect("recorded");
    assert_eq!(open.outcome, None, "still open: {open:?}");
    assert_eq!(open.answers, 0, "no verified answer about it: {open:?}");
    assert_eq!(calls(&s.rig.gw, CANCEL, id), 0, "never cancelled");
    assert_eq!(s.rig.gw.payment_status(id), Some(PaymentStatus::Processing));
    assert!(
        events(&s.store, id).is_empty(),
        "nothing recorded for the app"
    );
    assert!(s.app.received().is_empty(), "the app got nothing");
}

#[test]
fn a_replayed_answer_about_another_payment_is_refused_and_nothing_is_cancelled_on_it() {
    let s = Setup::start(&format!("{FAST}cancel_on_expiry = true\n"));
    // a paid payment: its genuinely signed inquiry answer is what the gateway replays
    pay(s.rig.outbound, "rc-m1-paid", "").assert_status(200, "pay");
    assert_eq!(
        s.rig.gw.payment_status("rc-m1-paid"),
        Some(PaymentStatus::Success)
    );
    s.rig
        .gw
        .set_inquiry_answer(Some(ams_mock_gateway::InquiryAnswer::AboutPayment(
            "rc-m1-paid".into(),
        )));
    s.pay_held("rc-m1-x", "never", "");
    assert!(
        s.record("rc-m1-x").is_some_and(|r| r.payment_id.is_some()),
        "the pay answer's paymentId is recorded"
    );
    // past the close time (3 s) with only answers about the other payment
    let m = withheld(&s, 2.0);
    assert!(count(&m, INQUIRIES, "refused") >= 2.0);
    assert_eq!(count(&m, INQUIRIES, "success"), 0.0);
    assert_eq!(outcomes(&m, "inquired_success"), 0.0);
    assert_eq!(outcomes(&m, "cancelled"), 0.0);
    assert_eq!(count(&m, CANCELS, "success"), 0.0);
    untouched(&s, "rc-m1-x");
    assert!(
        calls(&s.rig.gw, INQUIRY, "rc-m1-x") >= 3,
        "it keeps inquiring"
    );
    let logs = s.rig.sidecar.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("not about the payment asked")
                && l.contains("rc-m1-paid")
                && l.contains("WARN")),
        "a warn line names both payments:\n{logs}"
    );
    // the truth again: the first verified answer about the payment (PROCESSING) allows the
    // cancel, and the app hears of it
    s.rig.gw.set_inquiry_answer(None);
    assert_eq!(s.closed("rc-m1-x").outcome, Some(PayOutcome::Cancelled));
    let got = s.app.wait_received(1);
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["paymentRequestId"], "rc-m1-x");
    assert_eq!(body["result"]["resultCode"], "ORDER_IS_CANCELED");
}

#[test]
fn a_signed_success_naming_no_payment_is_refused() {
    let s = Setup::start(FAST);
    s.rig
        .gw
        .set_inquiry_answer(Some(ams_mock_gateway::InquiryAnswer::SuccessWithoutIds));
    s.pay_held("rc-m1-noid", "never", "");
    // cancel_on_expiry = false: at the close time the record expires, never inquired_success
    let closed = s.closed("rc-m1-noid");
    assert_eq!(closed.outcome, Some(PayOutcome::Expired));
    let m = s.rig.scrape();
    assert!(count(&m, INQUIRIES, "refused") >= 1.0);
    assert_eq!(count(&m, INQUIRIES, "success"), 0.0);
    assert_eq!(outcomes(&m, "inquired_success"), 0.0);
    assert!(events(&s.store, "rc-m1-noid").is_empty());
    assert!(s.app.received().is_empty(), "the app got no verified S");
}

#[test]
fn without_a_verified_answer_the_close_time_cancels_nothing_and_alerts() {
    let s = Setup::start(&format!("{FAST}cancel_on_expiry = true\n"));
    s.rig
        .gw
        .set_inquiry_answer(Some(ams_mock_gateway::InquiryAnswer::Unsigned));
    s.pay_held("rc-l6-x", "never", "");
    let m = withheld(&s, 2.0);
    assert!(
        count(&m, INQUIRIES, "error") >= 2.0,
        "unsigned: no verified answer"
    );
    assert_eq!(count(&m, CANCELS, "success"), 0.0);
    assert_eq!(outcomes(&m, "cancelled") + outcomes(&m, "expired"), 0.0);
    untouched(&s, "rc-l6-x");
    let logs = s.rig.sidecar.logs();
    assert!(
        logs.lines().any(
            |l| l.contains("no verified inquiry answer about this payment") && l.contains("ERROR")
        ),
        "an error line says why it does not cancel:\n{logs}"
    );
    // signed again: cancelled at the next turn
    s.rig.gw.set_inquiry_answer(None);
    let closed = s.closed("rc-l6-x");
    assert_eq!(closed.outcome, Some(PayOutcome::Cancelled));
    assert_eq!(calls(&s.rig.gw, CANCEL, "rc-l6-x"), 1);
}

#[test]
fn a_late_success_after_the_cancel_reaches_the_app_marked_as_a_conflict() {
    use crate::inbound::{alipay_key, signed};
    let s = Setup::start(&format!("{FAST}cancel_on_expiry = true\n"));
    s.pay_held("rc-m2-x", "never", "");
    assert_eq!(s.closed("rc-m2-x").outcome, Some(PayOutcome::Cancelled));
    let first = s.app.wait_received(1);
    let f: serde_json::Value = serde_json::from_slice(&first[0].body).unwrap();
    assert_eq!(f["result"]["resultStatus"], "F", "the app got F first");
    assert_eq!(first[0].one("X-Alipay-Sidecar-Conflict"), None);

    // Alipay's late PAYMENT_RESULT S for the same payment (the customer paid at the last
    // moment), signed with Alipay's key
    let body = format!(
        r#"{{"notifyType":"PAYMENT_RESULT","result":{{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}},"paymentRequestId":"rc-m2-x","paymentId":"{}","paymentAmount":{{"currency":"HKD","value":"5800"}}}}"#,
        f["paymentId"].as_str().unwrap_or("2024X")
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let time = alipay_sidecar::protocol::format_iso8601(now);
    let n = signed(&alipay_key(), "1", NOTIFY_PATH, CLIENT_ID, &time, &body);
    let r = crate::journal::post(&s.rig.sidecar, &n);
    crate::journal::assert_success(&r, "the late S is acknowledged");
    let got = s.app.wait_received(2);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1].body, body.as_bytes(), "delivered as Alipay sent it");
    assert_eq!(
        got[1].one("X-Alipay-Sidecar-Conflict"),
        Some("recorded=cancelled")
    );
    assert_eq!(got[1].one("X-Alipay-Sidecar-Verified"), Some("true"));
    let m = s.rig.scrape();
    assert_eq!(
        m.sum(
            "alipay_sidecar_reconcile_conflicts_total",
            &[("recorded", "cancelled")]
        ),
        1.0
    );
    let logs = s.rig.sidecar.logs();
    assert!(
        logs.lines().any(|l| l.contains("contradicts the outcome")
            && l.contains("rc-m2-x")
            && l.contains("WARN")),
        "a warn line:\n{logs}"
    );
    // the recorded outcome stays: the merchant must inquire (the cancel refunded it)
    assert_eq!(
        s.record("rc-m2-x").unwrap().outcome,
        Some(PayOutcome::Cancelled)
    );
}
mod payment_lock;
