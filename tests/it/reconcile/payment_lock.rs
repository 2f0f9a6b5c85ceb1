//! Issue 22, one lock per payment: the cancel at the close time against a SUCCESS
//! notification, both ways, on the real binary with the fake gateway holding the cancel's
//! answer ([`ams_mock_gateway::MockGateway::hold_cancels`]) while the SUCCESS is sent; on a
//! real SQLite file, and on PostgreSQL with two replicas (the lock holds across them).
//! "The SUCCESS waits" is observed, not slept for: `alipay_sidecar_payment_lock_waiting`.

use super::*;
use crate::inbound::{alipay_key, signed, Notification};

const WAITING: &str = "alipay_sidecar_payment_lock_waiting";

/// Alipay's PAYMENT_RESULT S for `id`, signed with Alipay's key, to the notify path.
fn success(id: &str) -> (String, Notification) {
    let body = format!(
        r#"{{"notifyType":"PAYMENT_RESULT","result":{{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}},"paymentRequestId":"{id}","paymentAmount":{{"currency":"HKD","value":"5800"}}}}"#
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let time = alipay_sidecar::protocol::format_iso8601(now);
    let n = signed(&alipay_key(), "1", NOTIFY_PATH, CLIENT_ID, &time, &body);
    (body, n)
}

/// The app's requests with result status `status` about payment `id`.
fn results(app: &App, id: &str, status: &str) -> Vec<Received> {
    app.received()
        .into_iter()
        .filter(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body)
                .is_ok_and(|v| v["paymentRequestId"] == id && v["result"]["resultStatus"] == status)
        })
        .collect()
}

#[test]
fn a_success_recorded_before_the_close_time_means_no_cancel_is_sent() {
    let s = Setup::start(&format!("{FAST}cancel_on_expiry = true\n"));
    // the gateway keeps the payment in process (inquiries say PROCESSING): only Alipay's
    // notification says SUCCESS, before the close time
    s.pay_held("rc-lock-first", "never", "");
    let (body, n) = success("rc-lock-first");
    crate::journal::assert_success(
        &crate::journal::post(&s.rig.sidecar, &n),
        "the SUCCESS is acknowledged",
    );
    assert_eq!(
        s.closed("rc-lock-first").outcome,
        Some(PayOutcome::Notified)
    );
    // a second payment closing after the first: once it is cancelled, the reconciler has
    // passed the first one's close time
    s.pay_held("rc-lock-first-later", "never", "");
    assert_eq!(
        s.closed("rc-lock-first-later").outcome,
        Some(PayOutcome::Cancelled)
    );
    assert_eq!(
        calls(&s.rig.gw, CANCEL, "rc-lock-first"),
        0,
        "never cancelled"
    );
    assert_eq!(
        s.rig.gw.payment_status("rc-lock-first"),
        Some(PaymentStatus::Processing)
    );
    let got = results(&s.app, "rc-lock-first", "S");
    assert_eq!(got.len(), 1, "the SUCCESS reached the app once");
    assert_eq!(got[0].body, body.as_bytes());
    assert_eq!(got[0].one("X-Alipay-Sidecar-Conflict"), None);
    assert!(results(&s.app, "rc-lock-first", "F").is_empty());
}

#[test]
fn a_success_sent_while_the_cancel_is_in_flight_waits_and_reaches_the_app_marked() {
    let s = Setup::start(&format!("{FAST}cancel_on_expiry = true\n"));
    s.rig.gw.hold_cancels(true);
    s.pay_held("rc-lock-race", "never", "");
    s.rig.eventually(
        "the cancel at the close time is held at the gateway",
        || (s.rig.gw.cancels_held() == 1).then_some(()),
    );
    // the customer paid at the last moment: Alipay's SUCCESS goes out during the cancel
    s.rig
        .gw
        .complete_payment("rc-lock-race", ams_mock_gateway::PaymentResult::Success)
        .unwrap();
    s.rig.gw.notify_now("rc-lock-race").unwrap();
    s.rig
        .eventually("the SUCCESS waits for the payment's lock", || {
            (s.rig.scrape().sum(WAITING, &[]) >= 1.0).then_some(())
        });
    assert!(
        results(&s.app, "rc-lock-race", "S").is_empty(),
        "not delivered before the cancel's answer is recorded"
    );
    assert_eq!(s.record("rc-lock-race").unwrap().outcome, None);

    s.rig.gw.hold_cancels(false);
    // the cancel's answer is recorded...
    assert_eq!(
        s.closed("rc-lock-race").outcome,
        Some(PayOutcome::Cancelled)
    );
    // ...and the SUCCESS delivered, marked as contradicting it
    let got = s.rig.eventually("the SUCCESS reaches the app", || {
        Some(results(&s.app, "rc-lock-race", "S")).filter(|v| !v.is_empty())
    });
    assert_eq!(
        got[0].one("X-Alipay-Sidecar-Conflict"),
        Some("recorded=cancelled")
    );
    rt().block_on(s.rig.gw.notifications_settled());
    let attempts: Vec<_> = s
        .rig
        .gw
        .notifications()
        .into_iter()
        .filter(|a| a.payment_request_id == "rc-lock-race")
        .collect();
    assert!(
        attempts.iter().any(|a| a.status == Some(200)),
        "Alipay's notification was acknowledged: {attempts:?}"
    );
    // the sidecar's F (the cancel) reaches the app too; every S it got is marked
    s.rig.eventually("the cancel's F reaches the app", || {
        Some(results(&s.app, "rc-lock-race", "F")).filter(|v| !v.is_empty())
    });
    for r in results(&s.app, "rc-lock-race", "S") {
        assert_eq!(
            r.one("X-Alipay-Sidecar-Conflict"),
            Some("recorded=cancelled")
        );
    }
    assert_eq!(s.rig.scrape().sum(WAITING, &[]), 0.0);
}

#[test]
fn on_postgres_the_lock_holds_across_two_replicas() {
    let Some(admin) = pg_admin_url("payment_lock_replicas") else {
        return;
    };
    let url = create_database(&admin, "payment_lock_replicas");
    let app = App::start(Behaviour::Ack);
    let section = format!("[store]\nurl = {url:?}\n");
    let tail = tail(&app, &section, &format!("{FAST}cancel_on_expiry = true\n"));
    let a = rig(&tail);
    let b = Sidecar::launch(&a.sidecar.config_path, &[], &[]);
    let store = open(&StoreConfig::postgres(url.clone()));

    a.gw.hold_cancels(true);
    pay_held(
        a.outbound,
        &notify_url(&a.sidecar),
        "rc-lock-pg",
        "never",
        "",
    );
    a.eventually("one replica's cancel is held at the gateway", || {
        (a.gw.cancels_held() == 1).then_some(())
    });
    // the SUCCESS reaches both replicas: whichever sent the cancel, the other one waits on
    // the PostgreSQL half of the lock
    let (_, n) = success("rc-lock-pg");
    let posts: Vec<_> = [a.sidecar.addr("inbound"), b.addr("inbound")]
        .into_iter()
        .map(|addr| {
            let n = n.clone();
            std::thread::spawn(move || {
                let headers: Vec<(&str, &str)> = n
                    .headers
                    .iter()
                    .map(|(x, y)| (x.as_str(), y.as_str()))
                    .collect();
                request(addr, "POST", &n.uri, &headers, &n.body).unwrap()
            })
        })
        .collect();
    a.eventually("replica A's SUCCESS waits", || {
        (a.scrape().sum(WAITING, &[]) >= 1.0).then_some(())
    });
    b.eventually("replica B's SUCCESS waits", || {
        (b.metrics().sum(WAITING, &[]) >= 1.0).then_some(())
    });
    assert_eq!(record(&store, "rc-lock-pg").unwrap().outcome, None);
    assert!(results(&app, "rc-lock-pg", "S").is_empty());

    a.gw.hold_cancels(false);
    for p in posts {
        crate::journal::assert_success(&p.join().unwrap(), "the SUCCESS is acknowledged");
    }
    let closed = a.eventually("the record is closed", || {
        record(&store, "rc-lock-pg").filter(|r| r.outcome.is_some())
    });
    assert_eq!(closed.outcome, Some(PayOutcome::Cancelled));
    assert_eq!(calls(&a.gw, CANCEL, "rc-lock-pg"), 1, "one cancel");
    let got = results(&app, "rc-lock-pg", "S");
    assert!(!got.is_empty(), "the SUCCESS reached the app");
    for r in got {
        assert_eq!(
            r.one("X-Alipay-Sidecar-Conflict"),
            Some("recorded=cancelled")
        );
    }
}
